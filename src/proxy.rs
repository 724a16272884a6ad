//! `palisade proxy`: the sidecar. Options come from flags or from the environment the
//! injector sets (`PALISADE_*`, and the downward API's pod name, namespace and addresses).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use palisade_proxy::capability::NetRaw;
use palisade_proxy::config::{CaSource, DnsOptions, HttpLimits, Refusal};
use palisade_proxy::controller_address::ControllerAddress;
use palisade_proxy::dns::cache::Limits;
use palisade_proxy::{Config, FailMode};

/// Arguments of `palisade proxy`.
#[derive(clap::Args)]
pub struct Args {
    /// The pod served, as NAMESPACE/NAME.
    #[arg(long, env = "PALISADE_POD")]
    pod: String,
    /// The pod's addresses, comma-separated (traffic to them is the pod's own).
    #[arg(long, env = "PALISADE_POD_IPS", value_delimiter = ',')]
    pod_ips: Vec<IpAddr>,
    /// The pod's node addresses, comma-separated (the downward API's `status.hostIPs`):
    /// their traffic is always allowed, even before a first policy.
    #[arg(long, env = "PALISADE_NODE_IPS", value_delimiter = ',')]
    node_ips: Vec<IpAddr>,
    /// The node's primary address (`status.hostIP`); added to --node-ips. Kept for
    /// injectors that set only this.
    #[arg(long, env = "PALISADE_HOST_IP")]
    host_ip: Option<IpAddr>,
    /// The controller's policy stream: `https://HOST:PORT`, `HOST:PORT` or `HOST`, where
    /// HOST is a DNS name, an IPv4 address or an IPv6 address in brackets
    /// (`https://[fd00::1]:7443`); the port defaults to 7443. Several, comma-separated, are
    /// tried in turn, and so is every address a name resolves to.
    #[arg(
        long,
        env = "PALISADE_CONTROLLER",
        required = true,
        value_delimiter = ','
    )]
    controller: Vec<ControllerAddress>,
    /// The CA that signs the controller's certificate, as PEM text (the injector sets it).
    #[arg(long, env = "PALISADE_CA", conflicts_with = "ca_file")]
    ca: Option<String>,
    /// The CA that signs the controller's certificate, as a PEM file.
    #[arg(
        long,
        env = "PALISADE_CA_FILE",
        default_value = "/var/run/secrets/palisade/ca.crt"
    )]
    ca_file: PathBuf,
    /// The pod's projected ServiceAccount token (audience palisade), read again at every
    /// connection so that a rotated token is used.
    #[arg(
        long,
        env = "PALISADE_TOKEN_FILE",
        default_value = "/var/run/secrets/palisade/token"
    )]
    token_file: PathBuf,
    /// Port of the outbound listener.
    #[arg(long, env = "PALISADE_OUTBOUND_PORT", default_value_t = 7401)]
    outbound_port: u16,
    /// Port of the inbound listener.
    #[arg(long, env = "PALISADE_INBOUND_PORT", default_value_t = 7402)]
    inbound_port: u16,
    /// Port of the DNS listener.
    #[arg(long, env = "PALISADE_DNS_PORT", default_value_t = 7403)]
    dns_port: u16,
    /// Address of the admin server (/ready, /live, /metrics, /policy).
    #[arg(long, env = "PALISADE_ADMIN", default_value = "127.0.0.1:7490")]
    admin: SocketAddr,
    /// Port of the metrics listener on the pod's addresses (/metrics only, for Prometheus;
    /// `palisade init --metrics-port` leaves it out of redirection); 0: none.
    #[arg(long, env = "PALISADE_METRICS_PORT", default_value_t = 7491)]
    metrics_port: u16,
    /// How long new flows wait for a first policy before the fail mode applies.
    #[arg(long, env = "PALISADE_HOLD", default_value = "5s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// What happens to new flows when no policy arrived in time.
    #[arg(long, env = "PALISADE_FAIL_MODE", value_enum, default_value_t = Fail::Closed)]
    fail_mode: Fail,
    /// Resolvers DNS queries go to, comma-separated (default: /etc/resolv.conf's).
    #[arg(long, env = "PALISADE_DNS_UPSTREAMS", value_delimiter = ',')]
    dns_upstreams: Vec<IpAddr>,
    /// Log allowed flows too, not only denied ones.
    #[arg(long, env = "PALISADE_LOG_ALLOWED")]
    log_allowed: bool,
    /// Do not report flows to the controller (palisade flows, rollout status and generate
    /// then see none of this pod's): for measuring what reporting costs (bench/run
    /// --reporting-cost).
    #[arg(long, env = "PALISADE_NO_FLOW_REPORTS")]
    no_flow_reports: bool,
    /// How long an idle UDP session is kept.
    #[arg(long, env = "PALISADE_UDP_IDLE", default_value = "60s", value_parser = humantime::parse_duration)]
    udp_idle: Duration,
    /// How long a connection to a destination may take to open.
    #[arg(long, env = "PALISADE_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// How long HTTP detection waits for a connection's first bytes.
    #[arg(long, env = "PALISADE_HTTP_DETECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    http_detect_timeout: Duration,
    /// How long a client may take to send an HTTP/1 request head (and an idle keep-alive
    /// connection may wait for its next request).
    #[arg(long, env = "PALISADE_HTTP_HEADER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    http_header_timeout: Duration,
    /// How long an inspected connection may stay with no byte moving and no request waiting.
    #[arg(long, env = "PALISADE_HTTP_IDLE_TIMEOUT", default_value = "300s", value_parser = humantime::parse_duration)]
    http_idle_timeout: Duration,
    /// The largest HTTP request head (or HTTP/2 header list), in bytes.
    #[arg(long, env = "PALISADE_HTTP_MAX_HEAD_BYTES", default_value_t = 65536)]
    http_max_head_bytes: usize,
    /// The most header fields in an HTTP/1 request.
    #[arg(long, env = "PALISADE_HTTP_MAX_HEADERS", default_value_t = 100)]
    http_max_headers: usize,
    /// Ports never inspected (the pod's `palisade.dev/opaque-ports`, comma-separated).
    #[arg(long, env = "PALISADE_OPAQUE_PORTS", value_delimiter = ',')]
    opaque_ports: Vec<u16>,
    /// How long a DNS record keeps allowing new connections after its TTL ran out.
    #[arg(long, env = "PALISADE_DNS_GRACE", default_value = "60s", value_parser = humantime::parse_duration)]
    dns_grace: Duration,
    /// The most names the pod's DNS cache keeps.
    #[arg(long, env = "PALISADE_DNS_MAX_NAMES", default_value_t = 10_000)]
    dns_max_names: usize,
    /// The most addresses the DNS cache keeps per name.
    #[arg(long, env = "PALISADE_DNS_MAX_IPS_PER_NAME", default_value_t = 50)]
    dns_max_ips_per_name: usize,
    /// The answer to a query whose name DNS rules refuse.
    #[arg(long, env = "PALISADE_DNS_REFUSE_WITH", value_enum, default_value_t = RefuseWith::Nxdomain)]
    dns_refuse_with: RefuseWith,
    /// How long a resolver may take to answer a forwarded query.
    #[arg(long, env = "PALISADE_DNS_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    dns_timeout: Duration,
    /// Do not resolve the policy's matchName names at start and on TTL expiry.
    #[arg(long, env = "PALISADE_DNS_NO_RESOLVE")]
    dns_no_resolve: bool,
    /// Worker threads; 1 runs everything on one thread, the leanest for a sidecar.
    #[arg(long, env = "PALISADE_THREADS", default_value_t = 1)]
    threads: usize,
}

/// The response code of refused DNS queries, as the command line spells it.
#[derive(Clone, Copy, clap::ValueEnum)]
enum RefuseWith {
    /// NXDOMAIN: the name does not exist (search lists move on at once).
    Nxdomain,
    /// REFUSED.
    Refused,
}

/// The fail mode, as the command line spells it.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Fail {
    /// Deny new flows.
    Closed,
    /// Allow new flows.
    Open,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::logging::init();
    // Before the runtime starts its threads, which inherit this thread's capabilities.
    match palisade_proxy::capability::raise_net_raw() {
        Ok(NetRaw::Raised) => tracing::info!("CAP_NET_RAW raised from the permitted set"),
        Ok(NetRaw::Effective) => {}
        Ok(NetRaw::Missing) => tracing::warn!(
            "CAP_NET_RAW is not permitted: UDP other than DNS stays dropped and the app sees \
             inbound connections from the pod's own address (add NET_RAW to the container and \
             leave privilege escalation allowed so the binary's file capability applies)"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise CAP_NET_RAW"),
    }
    let dns_upstreams = if args.dns_upstreams.is_empty() {
        std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| palisade_proxy::config::nameservers(&t))
            .unwrap_or_default()
    } else {
        args.dns_upstreams
    };
    let config = Config {
        pod: args.pod,
        pod_ips: args.pod_ips,
        node_ips: {
            let mut ips = args.node_ips;
            ips.extend(args.host_ip.filter(|ip| !ips.contains(ip)));
            ips
        },
        controllers: args.controller,
        ca: match args.ca {
            Some(pem) => CaSource::Pem(pem),
            None => CaSource::File(args.ca_file),
        },
        token_file: args.token_file,
        outbound_port: args.outbound_port,
        inbound_port: args.inbound_port,
        dns_port: args.dns_port,
        admin: args.admin,
        metrics_port: (args.metrics_port != 0).then_some(args.metrics_port),
        hold: args.hold,
        fail_mode: match args.fail_mode {
            Fail::Closed => FailMode::Closed,
            Fail::Open => FailMode::Open,
        },
        dns_upstreams,
        log_allowed: args.log_allowed,
        flow_reports: !args.no_flow_reports,
        udp_idle: args.udp_idle,
        connect_timeout: args.connect_timeout,
        http: HttpLimits {
            detect_timeout: args.http_detect_timeout,
            header_timeout: args.http_header_timeout,
            idle_timeout: args.http_idle_timeout,
            max_head_bytes: args.http_max_head_bytes,
            max_headers: args.http_max_headers,
        },
        opaque_ports: args.opaque_ports,
        dns: DnsOptions {
            limits: Limits {
                max_names: args.dns_max_names.max(1),
                max_ips_per_name: args.dns_max_ips_per_name.max(1),
                grace: args.dns_grace,
            },
            refuse_with: match args.dns_refuse_with {
                RefuseWith::Nxdomain => Refusal::NxDomain,
                RefuseWith::Refused => Refusal::Refused,
            },
            timeout: args.dns_timeout,
            resolve_names: !args.dns_no_resolve,
        },
    };
    let runtime = crate::logging::runtime(args.threads)?;
    runtime
        .block_on(palisade_proxy::run(config))
        .context("the proxy stopped")?;
    Ok(ExitCode::SUCCESS)
}
