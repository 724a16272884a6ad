//! What the proxy is told at start: who it serves, where its controller is, its ports.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::controller_address::ControllerAddress;

/// What to do with new flows when no policy has arrived in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Deny them (the default: no policy, no traffic).
    #[default]
    Closed,
    /// Allow them.
    Open,
}

/// The proxy's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `namespace/name` of the pod served.
    pub pod: String,
    /// The pod's own addresses, known before any policy (from the downward API).
    pub pod_ips: Vec<IpAddr>,
    /// The pod's node, its addresses of every family, known before any policy: its traffic
    /// is always allowed.
    pub node_ips: Vec<IpAddr>,
    /// Where the controller's policy stream is, e.g. `https://[fd00::1]:7443`; several are
    /// tried in turn, and so is every address a name resolves to.
    pub controllers: Vec<ControllerAddress>,
    /// The CA that signs the controller's certificate: PEM text (the injector puts it in
    /// the environment) or a file, read at every connection.
    pub ca: CaSource,
    /// The pod's projected ServiceAccount token (audience `palisade`), read at every
    /// connection, so that a rotated token is used.
    pub token_file: PathBuf,
    /// Port of the outbound listener (TCP on loopback; UDP, transparent).
    pub outbound_port: u16,
    /// Port of the inbound listener (TCP and UDP).
    pub inbound_port: u16,
    /// Port of the DNS listener.
    pub dns_port: u16,
    /// Where the admin server listens (`/ready`, `/live`, `/metrics`, `/policy`).
    pub admin: SocketAddr,
    /// Port of the metrics listener, on every address of the pod (both families), which
    /// serves `/metrics` only, for Prometheus; init leaves it out of redirection. `None`:
    /// no such listener.
    pub metrics_port: Option<u16>,
    /// How long new flows wait for a first policy before the fail mode applies.
    pub hold: Duration,
    /// What happens after `hold`.
    pub fail_mode: FailMode,
    /// Resolvers DNS queries are forwarded to (from /etc/resolv.conf by default).
    pub dns_upstreams: Vec<IpAddr>,
    /// Log allowed flows too, not only denied ones.
    pub log_allowed: bool,
    /// Report flows to the controller (`palisade flows`, `rollout status`); off only to
    /// measure what reporting costs.
    pub flow_reports: bool,
    /// How long an idle UDP session is kept.
    pub udp_idle: Duration,
    /// How long a connect to a destination may take.
    pub connect_timeout: Duration,
    /// HTTP inspection's limits and timeouts.
    pub http: HttpLimits,
    /// Ports never inspected (`palisade.dev/opaque-ports`): a connection to one that only
    /// rules with HTTP conditions allow is refused.
    pub opaque_ports: Vec<u16>,
    /// The DNS proxy's options.
    pub dns: DnsOptions,
}

/// How the DNS proxy answers and learns.
#[derive(Debug, Clone)]
pub struct DnsOptions {
    /// The cache's bounds and grace period.
    pub limits: crate::dns::cache::Limits,
    /// The answer to a query that DNS rules refuse.
    pub refuse_with: Refusal,
    /// How long a resolver may take to answer.
    pub timeout: Duration,
    /// Resolve the policy's `matchName` names at start and when their TTL runs out.
    pub resolve_names: bool,
}

impl Default for DnsOptions {
    fn default() -> Self {
        Self {
            limits: Default::default(),
            refuse_with: Refusal::NxDomain,
            timeout: Duration::from_secs(5),
            resolve_names: true,
        }
    }
}

/// The response code of a query DNS rules refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `NXDOMAIN`: the name does not exist, so a search-list walk moves on at once (musl
    /// stops at the first other error).
    NxDomain,
    /// `REFUSED`.
    Refused,
}

/// Where the controller's CA comes from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// PEM text.
    Pem(String),
    /// A PEM file.
    File(PathBuf),
}

/// What protects the proxy from slow or huge requests on inspected connections.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// How long detection waits for the first bytes of a connection.
    pub detect_timeout: Duration,
    /// How long a client may take to send a request head (HTTP/1; also how long an idle
    /// keep-alive connection waits for its next request).
    pub header_timeout: Duration,
    /// How long a connection may stay without any byte moving and no request waiting.
    pub idle_timeout: Duration,
    /// The largest request head, in bytes (HTTP/1 head; HTTP/2 header list).
    pub max_head_bytes: usize,
    /// The most header fields in a request (HTTP/1).
    pub max_headers: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            detect_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_head_bytes: 64 * 1024,
            max_headers: 100,
        }
    }
}

impl Config {
    /// Whether `port` is one of the proxy's own listeners: a flow to it is never relayed,
    /// so that nobody can loop the proxy into itself.
    pub fn is_own_port(&self, port: u16) -> bool {
        port == self.outbound_port
            || port == self.inbound_port
            || port == self.dns_port
            || port == self.admin.port()
            || Some(port) == self.metrics_port
    }

    /// Whether `dst` is one of the proxy's own listeners in this pod (loopback or one of
    /// the pod's addresses): what a connection that was not redirected reports as its
    /// original destination.
    pub fn is_own_listener(&self, dst: SocketAddr) -> bool {
        self.is_own_port(dst.port()) && (dst.ip().is_loopback() || self.pod_ips.contains(&dst.ip()))
    }
}

/// The nameservers of a resolv.conf text.
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_read_from_resolv_conf() {
        let text = "search svc.cluster.local\nnameserver 10.96.0.10\n# nameserver 1.1.1.1\nnameserver fe80::1%eth0\noptions ndots:5\n";
        let got = nameservers(text);
        assert_eq!(
            got,
            vec![
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }

    /// What a connection that was not redirected reports (a listener's own address) is
    /// told apart from a redirected one to another host's port of the same number.
    #[test]
    fn own_listeners_are_the_proxy_ports_on_loopback_and_the_pod_addresses() {
        let config = Config {
            pod: "x/a".into(),
            pod_ips: vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            node_ips: Vec::new(),
            controllers: Vec::new(),
            ca: CaSource::Pem(String::new()),
            token_file: PathBuf::new(),
            outbound_port: 7401,
            inbound_port: 7402,
            dns_port: 7403,
            admin: "127.0.0.1:7490".parse().unwrap(),
            metrics_port: Some(7491),
            hold: Duration::ZERO,
            fail_mode: FailMode::Closed,
            dns_upstreams: Vec::new(),
            log_allowed: false,
            flow_reports: true,
            udp_idle: Duration::ZERO,
            connect_timeout: Duration::ZERO,
            http: HttpLimits::default(),
            opaque_ports: Vec::new(),
            dns: DnsOptions::default(),
        };
        let own = |s: &str| config.is_own_listener(s.parse().unwrap());
        for ours in [
            "127.0.0.1:7401",
            "[::1]:7403",
            "10.0.0.5:7402",
            "[fd00::5]:7491",
        ] {
            assert!(own(ours), "{ours}");
        }
        // Another host's 7401 is a destination like any other; so is our own app's port.
        for theirs in [
            "10.0.0.9:7401",
            "[fd00::9]:7490",
            "127.0.0.1:8080",
            "10.0.0.5:80",
        ] {
            assert!(!own(theirs), "{theirs}");
        }
    }
}
