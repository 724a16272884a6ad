//! What `palisade init` is told: the proxy's uid and ports, what to skip, the DNS servers,
//! the pod's node and whether the pod answers ICMP echo.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use ipnet::IpNet;

use crate::Error;

/// An IP family: each gets its own rule set (iptables or ip6tables) and its own routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4: iptables, `ip -4`.
    V4,
    /// IPv6: ip6tables, `ip -6`.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// Whether `ip` is of this family.
    pub fn holds(self, ip: IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }

    /// The unspecified address, as iptables-save prints TPROXY's `--on-ip`.
    pub fn any_addr(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0",
            Family::V6 => "::",
        }
    }

    /// The whole address space, for the local route of diverted UDP.
    pub fn everything(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0/0",
            Family::V6 => "::/0",
        }
    }

    /// `-4` or `-6`, for `ip`.
    pub fn ip_flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    /// The prefix of the iptables tools' names: `iptables` or `ip6tables`.
    pub fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// A port or an inclusive range of ports (`8080`, `8000-8100`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    /// The first port.
    pub first: u16,
    /// The last port, `first` for a single port.
    pub last: u16,
}

impl FromStr for PortRange {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (first, last) = match s.split_once(['-', ':']) {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if first > last {
            return Err("the range ends before it starts");
        }
        Ok(PortRange { first, last })
    }
}

fn port(s: &str) -> Result<u16, &'static str> {
    match s.trim().parse::<u16>() {
        Ok(0) => Err("port 0 is not a port"),
        Ok(p) => Ok(p),
        Err(_) => Err("ports are numbers from 1 to 65535"),
    }
}

/// As iptables-save prints `--dport`: `8080` or `8000:8100`.
impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// Everything the rules depend on. `Default` holds the values of DESIGN.md.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The proxy's uid: its own traffic is never redirected.
    pub proxy_uid: u32,
    /// Where outbound TCP (and diverted outbound UDP) goes.
    pub outbound_port: u16,
    /// Where inbound TCP and UDP goes.
    pub inbound_port: u16,
    /// Where DNS (UDP and TCP 53 to the DNS servers) goes.
    pub dns_port: u16,
    /// The proxy's metrics port (`/metrics` only), left out of inbound redirection so that
    /// Prometheus reaches it whatever the pod's policy says, as Istio leaves 15020 out.
    /// `None`: no such port.
    pub metrics_port: Option<u16>,
    /// Inbound ports that reach the app directly.
    pub skip_inbound_ports: Vec<PortRange>,
    /// Outbound ports that leave directly.
    pub skip_outbound_ports: Vec<PortRange>,
    /// Outbound destinations that are reached directly.
    pub skip_outbound_cidrs: Vec<IpNet>,
    /// Addresses whose port-53 traffic goes to the DNS listener.
    pub dns_servers: Vec<IpAddr>,
    /// The firewall mark of diverted UDP, and the mark TPROXY sets.
    pub mark: u32,
    /// The route table (and `ip rule` preference) that delivers marked packets locally.
    pub route_table: u32,
    /// The pod's node (`status.hostIPs`): every protocol passes to and from it.
    pub node_ips: Vec<IpAddr>,
    /// Let ICMP echo (ping) in and out, when the pod's annotation asks for it.
    pub allow_icmp: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            proxy_uid: 2190,
            outbound_port: 7401,
            inbound_port: 7402,
            dns_port: 7403,
            metrics_port: Some(7491),
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
            dns_servers: Vec::new(),
            mark: 0x2190,
            route_table: 2190,
            node_ips: Vec::new(),
            allow_icmp: false,
        }
    }
}

/// Splits list options: each item may itself hold several, separated by commas or spaces
/// (annotations are written `80, 443`). Empty items are ignored.
fn items(values: &[String]) -> impl Iterator<Item = &str> {
    values
        .iter()
        .flat_map(|v| v.split([',', ' ', '\t', '\n']))
        .filter(|s| !s.is_empty())
}

/// Parses a list of ports and ranges given to `option`.
pub fn parse_ports(option: &'static str, values: &[String]) -> Result<Vec<PortRange>, Error> {
    items(values)
        .map(|item| {
            item.parse().map_err(|reason| Error::BadPort {
                option,
                value: item.to_string(),
                reason,
            })
        })
        .collect()
}

/// Parses a list of CIDRs given to `option`; a bare address is a single host. Host bits
/// are cleared, as iptables does (`10.1.2.3/16` is `10.1.0.0/16`).
pub fn parse_cidrs(option: &'static str, values: &[String]) -> Result<Vec<IpNet>, Error> {
    items(values)
        .map(|item| {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => item
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| Error::BadCidr {
                        option,
                        value: item.to_string(),
                    })?,
            };
            Ok(net.trunc())
        })
        .collect()
}

/// Parses `--dns-servers`: addresses, or `none` for none. `Ok(None)` when nothing was
/// given, meaning: read them from resolv.conf.
pub fn parse_dns_servers(values: &[String]) -> Result<Option<Vec<IpAddr>>, Error> {
    let list: Vec<&str> = items(values).collect();
    if list.is_empty() {
        return Ok(None);
    }
    if list.iter().any(|s| s.eq_ignore_ascii_case("none")) {
        return Ok(Some(Vec::new()));
    }
    list.iter()
        .map(|s| {
            parse_ip(s).ok_or_else(|| Error::BadDnsServer {
                value: s.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Parses `--node-ips`: addresses, each once (an IPv6 zone is dropped).
pub fn parse_node_ips(values: &[String]) -> Result<Vec<IpAddr>, Error> {
    let mut ips = Vec::new();
    for item in items(values) {
        let ip = parse_ip(item).ok_or_else(|| Error::BadNodeIp {
            value: item.to_string(),
        })?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

/// An address as written in resolv.conf or status.hostIPs; an IPv6 zone (`fe80::1%eth0`)
/// is dropped.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.split('%').next().unwrap_or(s);
    s.parse().ok()
}

/// The `nameserver` addresses of a resolv.conf, in order, without duplicates.
pub fn resolv_conf_nameservers(text: &str) -> Vec<IpAddr> {
    let mut servers = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        if let Some(ip) = words.next().and_then(parse_ip) {
            if !servers.contains(&ip) {
                servers.push(ip);
            }
        }
    }
    servers
}

/// Reads the nameservers of the resolv.conf at `path`. A missing file means none.
pub fn read_resolv_conf(path: &Path) -> Result<Vec<IpAddr>, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(resolv_conf_nameservers(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(Error::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ports_and_ranges() {
        let ports = parse_ports(
            "--skip-inbound-ports",
            &strings(&["22, 8000-8100", "9000:9001"]),
        )
        .unwrap();
        let shown: Vec<String> = ports.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["22", "8000:8100", "9000:9001"]);
    }

    #[test]
    fn bad_ports_are_named() {
        for bad in ["0", "70000", "http", "90-80", "1-"] {
            let err = parse_ports("--skip-outbound-ports", &strings(&[bad])).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("--skip-outbound-ports") && text.contains(bad),
                "{text}"
            );
        }
    }

    #[test]
    fn empty_lists_are_empty() {
        assert!(parse_ports("--skip-inbound-ports", &strings(&["", " , "]))
            .unwrap()
            .is_empty());
        assert_eq!(parse_dns_servers(&strings(&[""])).unwrap(), None);
    }

    #[test]
    fn cidrs_are_truncated_and_hosts_get_a_prefix() {
        let nets = parse_cidrs(
            "--skip-outbound-cidrs",
            &strings(&["10.1.2.3/16", "1.2.3.4,fd00::1"]),
        )
        .unwrap();
        let shown: Vec<String> = nets.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.1.0.0/16", "1.2.3.4/32", "fd00::1/128"]);
        assert!(parse_cidrs("--skip-outbound-cidrs", &strings(&["10.0.0.0/33"])).is_err());
    }

    #[test]
    fn dns_servers_none_and_list() {
        assert_eq!(
            parse_dns_servers(&strings(&["none"])).unwrap(),
            Some(vec![])
        );
        let got = parse_dns_servers(&strings(&["10.96.0.10,fd00::a"]))
            .unwrap()
            .unwrap();
        assert_eq!(
            got,
            [
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00::a".parse().unwrap()
            ]
        );
        assert!(parse_dns_servers(&strings(&["dns.example"])).is_err());
    }

    #[test]
    fn node_ips_of_both_families() {
        let got = parse_node_ips(&strings(&["192.168.1.10,fd00::10", " 192.168.1.10"])).unwrap();
        assert_eq!(
            got,
            [
                "192.168.1.10".parse::<IpAddr>().unwrap(),
                "fd00::10".parse().unwrap()
            ]
        );
        assert!(parse_node_ips(&strings(&[""])).unwrap().is_empty());
        let err = parse_node_ips(&strings(&["node-1"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--node-ips") && err.contains("node-1"),
            "{err}"
        );
    }

    #[test]
    fn resolv_conf() {
        let text = "# comment\nsearch default.svc.cluster.local\nnameserver 10.96.0.10\n\
                    nameserver fe80::1%eth0\nnameserver 10.96.0.10\noptions ndots:5\n";
        let got = resolv_conf_nameservers(text);
        assert_eq!(
            got,
            [
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }
}
