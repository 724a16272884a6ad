//! The rules themselves: for one config and one family, every chain, rule and jump of
//! ours, written exactly as iptables-save prints them so that `--verify` compares text.
//!
//! - nat: inbound TCP to the inbound port, outbound TCP to the outbound port, DNS to the
//!   DNS port; the proxy's own traffic, loopback and skipped ports/CIDRs pass.
//! - mangle: every other UDP through the proxy with TPROXY. Outbound UDP is marked, the
//!   mark routes it back in through `lo` ([`crate::routes`]), and TPROXY hands it to the
//!   outbound port; inbound UDP is handed to the inbound port.
//!   TCP the inbound proxy opens to the app from the client's own address
//!   (`IP_TRANSPARENT`) is connmarked, so that the app's replies, addressed to that
//!   client, get the mark too and are routed back in through `lo` to the proxy.
//! - filter: everything that is neither TCP nor UDP is dropped, in and out, except
//!   loopback, ICMP/ICMPv6 errors about a tracked connection (conntrack RELATED), IPv6
//!   neighbour discovery and MLD, traffic with the pod's node, and ICMP echo when the pod
//!   allows it. TCP and UDP pass here because nat and mangle send them to the proxy.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{Config, Family};
use crate::saved::{Rule, Saved, Table};

/// Inbound TCP (nat, from PREROUTING).
pub const INBOUND: &str = "PALISADE_INBOUND";
/// Outbound TCP and DNS (nat, from OUTPUT).
pub const OUTPUT: &str = "PALISADE_OUTPUT";
/// Inbound and diverted outbound UDP (mangle, from PREROUTING).
pub const UDP_IN: &str = "PALISADE_UDP_IN";
/// Outbound UDP marking (mangle, from OUTPUT).
pub const UDP_OUT: &str = "PALISADE_UDP_OUT";
/// TCP the inbound proxy opens from the client's address, and the app's replies to it
/// (mangle, from OUTPUT).
pub const TCP_OUT: &str = "PALISADE_TCP_OUT";
/// Other protocols coming in (filter, from INPUT).
pub const FILTER_IN: &str = "PALISADE_FILTER_IN";
/// Other protocols going out (filter, from OUTPUT).
pub const FILTER_OUT: &str = "PALISADE_FILTER_OUT";

/// ICMPv6 types a pod receives so that IPv6 works: router advertisement (134),
/// neighbour solicitation (135) and advertisement (136), redirect (137). Each only with
/// hop limit 255, which RFC 4861 requires and which proves it was sent on the link.
pub const ND_IN: [u8; 4] = [134, 135, 136, 137];
/// ICMPv6 types a pod sends for IPv6 to work: router solicitation (133), neighbour
/// solicitation (135; duplicate address detection too) and advertisement (136). Never a
/// router advertisement or a redirect: a pod that sent those could reroute its neighbours
/// (CVE-2020-10749).
pub const ND_OUT: [u8; 3] = [133, 135, 136];
/// MLD queries a pod receives (130), hop limit 1: switches that snoop multicast forward
/// neighbour solicitations only to ports that answered them.
pub const MLD_IN: [u8; 1] = [130];
/// MLD reports (131, and version 2's 143) and done (132) a pod sends, hop limit 1.
pub const MLD_OUT: [u8; 3] = [131, 132, 143];

/// Every rule of ours for `family`, in the shape of a parsed iptables-save output.
pub fn build(config: &Config, family: Family) -> Saved {
    Saved {
        tables: vec![
            nat(config, family),
            mangle(config, family),
            filter(config, family),
        ],
    }
}

fn table(name: &str, chains: &[&str], rules: Vec<Rule>) -> Table {
    Table {
        name: name.to_string(),
        chains: chains.iter().map(|c| c.to_string()).collect(),
        rules,
    }
}

/// The addresses of this family, as iptables-save prints them (`/32`, `/128`).
fn hosts(ips: &[IpAddr], family: Family) -> Vec<IpNet> {
    ips.iter()
        .copied()
        .filter(|ip| family.holds(*ip))
        .map(IpNet::from)
        .collect()
}

/// The skipped CIDRs of this family.
fn skipped_cidrs(config: &Config, family: Family) -> Vec<IpNet> {
    config
        .skip_outbound_cidrs
        .iter()
        .copied()
        .filter(|net| {
            matches!(
                (family, net),
                (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
            )
        })
        .collect()
}

fn nat(config: &Config, family: Family) -> Table {
    let uid = config.proxy_uid;
    let mut rules = vec![
        Rule::new("PREROUTING", format!("-p tcp -j {INBOUND}")),
        Rule::new("OUTPUT", format!("-j {OUTPUT}")),
    ];
    if let Some(port) = config.metrics_port {
        rules.push(Rule::new(
            INBOUND,
            format!("-p tcp -m tcp --dport {port} -j RETURN"),
        ));
    }
    for port in &config.skip_inbound_ports {
        rules.push(Rule::new(
            INBOUND,
            format!("-p tcp -m tcp --dport {port} -j RETURN"),
        ));
    }
    rules.push(Rule::new(
        INBOUND,
        format!("-p tcp -j REDIRECT --to-ports {}", config.inbound_port),
    ));

    rules.push(Rule::new(
        OUTPUT,
        format!("-m owner --uid-owner {uid} -j RETURN"),
    ));
    for server in hosts(&config.dns_servers, family) {
        for proto in ["udp", "tcp"] {
            rules.push(Rule::new(
                OUTPUT,
                format!(
                    "-d {server} -p {proto} -m {proto} --dport 53 -j REDIRECT --to-ports {}",
                    config.dns_port
                ),
            ));
        }
    }
    rules.push(Rule::new(OUTPUT, "-o lo -j RETURN"));
    for net in skipped_cidrs(config, family) {
        rules.push(Rule::new(OUTPUT, format!("-d {net} -j RETURN")));
    }
    for port in &config.skip_outbound_ports {
        rules.push(Rule::new(
            OUTPUT,
            format!("-p tcp -m tcp --dport {port} -j RETURN"),
        ));
    }
    rules.push(Rule::new(
        OUTPUT,
        format!("-p tcp -j REDIRECT --to-ports {}", config.outbound_port),
    ));
    table("nat", &[INBOUND, OUTPUT], rules)
}

fn mangle(config: &Config, family: Family) -> Table {
    let uid = config.proxy_uid;
    let mark = config.mark;
    let any = family.any_addr();
    let mut rules = vec![
        Rule::new("PREROUTING", format!("-p udp -j {UDP_IN}")),
        Rule::new("OUTPUT", format!("-p udp -j {UDP_OUT}")),
        Rule::new("OUTPUT", format!("-p tcp -j {TCP_OUT}")),
    ];

    // The pod's own outbound UDP, marked in UDP_OUT and routed back in through lo. TPROXY
    // refuses a rule without `-p udp`, even in a chain only UDP reaches.
    rules.push(Rule::new(
        UDP_IN,
        format!(
            "-i lo -p udp -m mark --mark {mark:#x} -j TPROXY --on-port {} --on-ip {any} \
             --tproxy-mark {mark:#x}/0xffffffff",
            config.outbound_port
        ),
    ));
    rules.push(Rule::new(UDP_IN, "-i lo -j RETURN"));
    // Replies to flows the proxy itself opened.
    rules.push(Rule::new(UDP_IN, "-m conntrack --ctdir REPLY -j RETURN"));
    for port in &config.skip_inbound_ports {
        rules.push(Rule::new(
            UDP_IN,
            format!("-p udp -m udp --dport {port} -j RETURN"),
        ));
    }
    rules.push(Rule::new(
        UDP_IN,
        format!(
            "-p udp -j TPROXY --on-port {} --on-ip {any} --tproxy-mark {mark:#x}/0xffffffff",
            config.inbound_port
        ),
    ));

    // Inbound UDP sessions the proxy relayed to the app, so that the app's replies pass.
    rules.push(Rule::new(
        UDP_OUT,
        format!(
            "-o lo -m owner --uid-owner {uid} -m conntrack --ctdir ORIGINAL \
             -j CONNMARK --set-xmark {mark:#x}/0xffffffff"
        ),
    ));
    rules.push(Rule::new(
        UDP_OUT,
        format!("-m owner --uid-owner {uid} -j RETURN"),
    ));
    rules.push(Rule::new(UDP_OUT, "-o lo -j RETURN"));
    rules.push(Rule::new(
        UDP_OUT,
        format!("-m connmark --mark {mark:#x} -m conntrack --ctdir REPLY -j RETURN"),
    ));
    // DNS goes to the DNS listener through the nat table, unmarked.
    for server in hosts(&config.dns_servers, family) {
        rules.push(Rule::new(
            UDP_OUT,
            format!("-d {server} -p udp -m udp --dport 53 -j RETURN"),
        ));
    }
    for net in skipped_cidrs(config, family) {
        rules.push(Rule::new(UDP_OUT, format!("-d {net} -j RETURN")));
    }
    for port in &config.skip_outbound_ports {
        rules.push(Rule::new(
            UDP_OUT,
            format!("-p udp -m udp --dport {port} -j RETURN"),
        ));
    }
    rules.push(Rule::new(
        UDP_OUT,
        format!("-j MARK --set-xmark {mark:#x}/0xffffffff"),
    ));

    // The app's replies to a connection the inbound proxy opened from a client's address
    // are addressed to that client: the mark routes them back in through lo, to the
    // proxy's socket, rather than out to the client. Every TCP packet the pod sends
    // crosses this chain, so each rule tests its cheapest, most selective match first: the
    // connection's mark (unmarked connections, nearly all, stop there), and the SYN (the
    // mark is set once per connection, on its first packet).
    rules.push(Rule::new(
        TCP_OUT,
        format!(
            "-m connmark --mark {mark:#x} -m conntrack --ctdir REPLY \
             -j MARK --set-xmark {mark:#x}/0xffffffff"
        ),
    ));
    // Only connections from an address that is not the pod's own: the proxy's other
    // connections, and the fallback from the pod's address, need nothing.
    rules.push(Rule::new(
        TCP_OUT,
        format!(
            "-o lo -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m owner --uid-owner {uid} \
             -m addrtype ! --src-type LOCAL -j CONNMARK --set-xmark {mark:#x}/0xffffffff"
        ),
    ));
    table("mangle", &[UDP_IN, UDP_OUT, TCP_OUT], rules)
}

/// ICMP's protocol name and match, as iptables-save prints them, for a family.
fn icmp(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::V4 => ("icmp", "-m icmp --icmp-type"),
        Family::V6 => ("ipv6-icmp", "-m icmp6 --icmpv6-type"),
    }
}

/// One side of the filter: `chain` for packets coming in (`-i`, `-s`) or going out.
fn filter_side(config: &Config, family: Family, incoming: bool) -> Vec<Rule> {
    let (chain, iface, peer) = if incoming {
        (FILTER_IN, "-i", "-s")
    } else {
        (FILTER_OUT, "-o", "-d")
    };
    let (proto, icmp_type) = icmp(family);
    // TCP never enters the chain (see [`filter`]); UDP returns first: with TCP, nearly all
    // the traffic, and the proxy judges both.
    let mut rules = vec![
        Rule::new(chain, "-p udp -j RETURN"),
        Rule::new(chain, format!("{iface} lo -j RETURN")),
    ];
    for node in hosts(&config.node_ips, family) {
        rules.push(Rule::new(chain, format!("{peer} {node} -j RETURN")));
    }
    // Errors about a connection conntrack knows (unreachable, too big, time exceeded,
    // parameter problem): without them path MTU discovery and fast failure break.
    rules.push(Rule::new(
        chain,
        format!("-p {proto} -m conntrack --ctstate RELATED -j RETURN"),
    ));
    if family == Family::V6 {
        let (nd, mld): (&[u8], &[u8]) = if incoming {
            (&ND_IN, &MLD_IN)
        } else {
            (&ND_OUT, &MLD_OUT)
        };
        for (types, hop_limit) in [(nd, 255), (mld, 1)] {
            for kind in types {
                rules.push(Rule::new(
                    chain,
                    format!("-p {proto} {icmp_type} {kind} -m hl --hl-eq {hop_limit} -j RETURN"),
                ));
            }
        }
    }
    if config.allow_icmp {
        let (request, reply) = match family {
            Family::V4 => (8, 0),
            Family::V6 => (128, 129),
        };
        rules.push(Rule::new(
            chain,
            format!("-p {proto} {icmp_type} {request} -j RETURN"),
        ));
        rules.push(Rule::new(
            chain,
            format!("-p {proto} {icmp_type} {reply} -m conntrack --ctstate ESTABLISHED -j RETURN"),
        ));
    }
    rules.push(Rule::new(chain, "-j DROP"));
    rules
}

fn filter(config: &Config, family: Family) -> Table {
    // TCP is not even tested in the chain: one rule less for each of its packets.
    let mut rules = vec![
        Rule::new("INPUT", format!("! -p tcp -j {FILTER_IN}")),
        Rule::new("OUTPUT", format!("! -p tcp -j {FILTER_OUT}")),
    ];
    rules.extend(filter_side(config, family, true));
    rules.extend(filter_side(config, family, false));
    table("filter", &[FILTER_IN, FILTER_OUT], rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_cidrs, parse_ports};

    fn sample() -> Config {
        let s = |v: &str| vec![v.to_string()];
        Config {
            skip_inbound_ports: parse_ports("--skip-inbound-ports", &s("22,8000-8100")).unwrap(),
            skip_outbound_ports: parse_ports("--skip-outbound-ports", &s("9000")).unwrap(),
            skip_outbound_cidrs: parse_cidrs(
                "--skip-outbound-cidrs",
                &s("169.254.169.254,fd00:ec2::/32"),
            )
            .unwrap(),
            dns_servers: vec!["10.96.0.10".parse().unwrap(), "fd00::a".parse().unwrap()],
            ..Config::default()
        }
    }

    #[test]
    fn ipv4_rules_are_exactly_these() {
        let expected = "\
*nat
:PALISADE_INBOUND - [0:0]
:PALISADE_OUTPUT - [0:0]
-A PREROUTING -p tcp -j PALISADE_INBOUND
-A OUTPUT -j PALISADE_OUTPUT
-A PALISADE_INBOUND -p tcp -m tcp --dport 7491 -j RETURN
-A PALISADE_INBOUND -p tcp -m tcp --dport 22 -j RETURN
-A PALISADE_INBOUND -p tcp -m tcp --dport 8000:8100 -j RETURN
-A PALISADE_INBOUND -p tcp -j REDIRECT --to-ports 7402
-A PALISADE_OUTPUT -m owner --uid-owner 2190 -j RETURN
-A PALISADE_OUTPUT -d 10.96.0.10/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 7403
-A PALISADE_OUTPUT -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 7403
-A PALISADE_OUTPUT -o lo -j RETURN
-A PALISADE_OUTPUT -d 169.254.169.254/32 -j RETURN
-A PALISADE_OUTPUT -p tcp -m tcp --dport 9000 -j RETURN
-A PALISADE_OUTPUT -p tcp -j REDIRECT --to-ports 7401
COMMIT
*mangle
:PALISADE_TCP_OUT - [0:0]
:PALISADE_UDP_IN - [0:0]
:PALISADE_UDP_OUT - [0:0]
-A PREROUTING -p udp -j PALISADE_UDP_IN
-A OUTPUT -p udp -j PALISADE_UDP_OUT
-A OUTPUT -p tcp -j PALISADE_TCP_OUT
-A PALISADE_TCP_OUT -m connmark --mark 0x2190 -m conntrack --ctdir REPLY -j MARK --set-xmark 0x2190/0xffffffff
-A PALISADE_TCP_OUT -o lo -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m owner --uid-owner 2190 -m addrtype ! --src-type LOCAL -j CONNMARK --set-xmark 0x2190/0xffffffff
-A PALISADE_UDP_IN -i lo -p udp -m mark --mark 0x2190 -j TPROXY --on-port 7401 --on-ip 0.0.0.0 --tproxy-mark 0x2190/0xffffffff
-A PALISADE_UDP_IN -i lo -j RETURN
-A PALISADE_UDP_IN -m conntrack --ctdir REPLY -j RETURN
-A PALISADE_UDP_IN -p udp -m udp --dport 22 -j RETURN
-A PALISADE_UDP_IN -p udp -m udp --dport 8000:8100 -j RETURN
-A PALISADE_UDP_IN -p udp -j TPROXY --on-port 7402 --on-ip 0.0.0.0 --tproxy-mark 0x2190/0xffffffff
-A PALISADE_UDP_OUT -o lo -m owner --uid-owner 2190 -m conntrack --ctdir ORIGINAL -j CONNMARK --set-xmark 0x2190/0xffffffff
-A PALISADE_UDP_OUT -m owner --uid-owner 2190 -j RETURN
-A PALISADE_UDP_OUT -o lo -j RETURN
-A PALISADE_UDP_OUT -m connmark --mark 0x2190 -m conntrack --ctdir REPLY -j RETURN
-A PALISADE_UDP_OUT -d 10.96.0.10/32 -p udp -m udp --dport 53 -j RETURN
-A PALISADE_UDP_OUT -d 169.254.169.254/32 -j RETURN
-A PALISADE_UDP_OUT -p udp -m udp --dport 9000 -j RETURN
-A PALISADE_UDP_OUT -j MARK --set-xmark 0x2190/0xffffffff
COMMIT
*filter
:PALISADE_FILTER_IN - [0:0]
:PALISADE_FILTER_OUT - [0:0]
-A INPUT ! -p tcp -j PALISADE_FILTER_IN
-A OUTPUT ! -p tcp -j PALISADE_FILTER_OUT
-A PALISADE_FILTER_IN -p udp -j RETURN
-A PALISADE_FILTER_IN -i lo -j RETURN
-A PALISADE_FILTER_IN -p icmp -m conntrack --ctstate RELATED -j RETURN
-A PALISADE_FILTER_IN -j DROP
-A PALISADE_FILTER_OUT -p udp -j RETURN
-A PALISADE_FILTER_OUT -o lo -j RETURN
-A PALISADE_FILTER_OUT -p icmp -m conntrack --ctstate RELATED -j RETURN
-A PALISADE_FILTER_OUT -j DROP
COMMIT
";
        assert_eq!(build(&sample(), Family::V4).render(), expected);
    }

    /// The filter rules of one chain, without the chain name.
    fn chain_rules(text: &str, chain: &str) -> Vec<String> {
        let prefix = format!("-A {chain} ");
        text.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn ipv6_keeps_neighbour_discovery_and_mld_but_never_lets_a_pod_act_as_a_router() {
        let text = build(&Config::default(), Family::V6).render();
        assert_eq!(
            chain_rules(&text, FILTER_IN),
            [
                "-p udp -j RETURN",
                "-i lo -j RETURN",
                "-p ipv6-icmp -m conntrack --ctstate RELATED -j RETURN",
                "-p ipv6-icmp -m icmp6 --icmpv6-type 134 -m hl --hl-eq 255 -j RETURN",
                "-p ipv6-icmp -m icmp6 --icmpv6-type 135 -m hl --hl-eq 255 -j RETURN",
                "-p ipv6-icmp -m icmp6 --icmpv6-type 136 -m hl --hl-eq 255 -j RETURN",
                "-p ipv6-icmp -m icmp6 --icmpv6-type 137 -m hl --hl-eq 255 -j RETURN",
                "-p ipv6-icmp -m icmp6 --icmpv6-type 130 -m hl --hl-eq 1 -j RETURN",
                "-j DROP",
            ]
        );
        let out = chain_rules(&text, FILTER_OUT);
        assert_eq!(
            out,
            [
                "-p udp -j RETURN",
                "-o lo -j RETURN",
                "-p ipv6-icmp -m conntrack --ctstate RELATED -j RETURN",
                "-p ipv6-icmp -m icmp6 --icmpv6-type 133 -m hl --hl-eq 255 -j RETURN",
                "-p ipv6-icmp -m icmp6 --icmpv6-type 135 -m hl --hl-eq 255 -j RETURN",
                "-p ipv6-icmp -m icmp6 --icmpv6-type 136 -m hl --hl-eq 255 -j RETURN",
                "-p ipv6-icmp -m icmp6 --icmpv6-type 131 -m hl --hl-eq 1 -j RETURN",
                "-p ipv6-icmp -m icmp6 --icmpv6-type 132 -m hl --hl-eq 1 -j RETURN",
                "-p ipv6-icmp -m icmp6 --icmpv6-type 143 -m hl --hl-eq 1 -j RETURN",
                "-j DROP",
            ]
        );
        // Router advertisements and redirects may come in from the node, never go out.
        assert!(!out
            .iter()
            .any(|r| r.contains("type 134") || r.contains("type 137")));
        // Echo is not among them unless the pod asks.
        assert!(!text.contains("type 128"), "{text}");
    }

    #[test]
    fn the_node_passes_with_every_protocol_in_its_own_family() {
        let config = Config {
            node_ips: vec!["192.168.1.10".parse().unwrap(), "fd00::10".parse().unwrap()],
            ..Config::default()
        };
        for (family, node, other) in [
            (Family::V4, "192.168.1.10/32", "fd00::10"),
            (Family::V6, "fd00::10/128", "192.168.1.10"),
        ] {
            let text = build(&config, family).render();
            let incoming = chain_rules(&text, FILTER_IN);
            let outgoing = chain_rules(&text, FILTER_OUT);
            assert!(incoming.contains(&format!("-s {node} -j RETURN")), "{text}");
            assert!(outgoing.contains(&format!("-d {node} -j RETURN")), "{text}");
            assert!(!text.contains(other), "{text}");
            // Before the final drop, which stays last.
            assert_eq!(incoming.last().map(String::as_str), Some("-j DROP"));
            assert_eq!(outgoing.last().map(String::as_str), Some("-j DROP"));
        }
    }

    #[test]
    fn allow_icmp_lets_echo_requests_and_their_replies_through_both_ways() {
        let config = Config {
            allow_icmp: true,
            ..Config::default()
        };
        for (family, echo) in [
            (
                Family::V4,
                [
                    "-p icmp -m icmp --icmp-type 8 -j RETURN",
                    "-p icmp -m icmp --icmp-type 0 -m conntrack --ctstate ESTABLISHED -j RETURN",
                ],
            ),
            (
                Family::V6,
                [
                    "-p ipv6-icmp -m icmp6 --icmpv6-type 128 -j RETURN",
                    "-p ipv6-icmp -m icmp6 --icmpv6-type 129 -m conntrack --ctstate ESTABLISHED -j RETURN",
                ],
            ),
        ] {
            let text = build(&config, family).render();
            for chain in [FILTER_IN, FILTER_OUT] {
                let rules = chain_rules(&text, chain);
                let n = rules.len();
                assert_eq!(rules[n - 3..n - 1], echo, "{chain}:\n{text}");
                assert_eq!(rules[n - 1], "-j DROP");
            }
        }
        let without = build(&Config::default(), Family::V4).render();
        assert!(!without.contains("--icmp-type"), "{without}");
    }

    #[test]
    fn ipv6_rules_use_ipv6_addresses_only() {
        let text = build(&sample(), Family::V6).render();
        assert!(text.contains("-A PALISADE_OUTPUT -d fd00::a/128 -p udp -m udp --dport 53 -j REDIRECT --to-ports 7403\n"));
        assert!(text.contains("-A PALISADE_OUTPUT -d fd00:ec2::/32 -j RETURN\n"));
        assert!(text.contains("-A PALISADE_UDP_OUT -d fd00:ec2::/32 -j RETURN\n"));
        assert!(text.contains("--on-port 7402 --on-ip :: --tproxy-mark 0x2190/0xffffffff\n"));
        assert!(
            !text.contains("10.96.0.10") && !text.contains("169.254"),
            "{text}"
        );
    }

    #[test]
    fn options_change_ports_uid_and_mark() {
        let config = Config {
            proxy_uid: 1337,
            outbound_port: 15001,
            inbound_port: 15006,
            dns_port: 15053,
            mark: 0x539,
            dns_servers: vec!["10.0.0.10".parse().unwrap()],
            ..Config::default()
        };
        let text = build(&config, Family::V4).render();
        for needle in [
            "--uid-owner 1337 -j RETURN",
            "-j REDIRECT --to-ports 15001",
            "-j REDIRECT --to-ports 15006",
            "--dport 53 -j REDIRECT --to-ports 15053",
            "-m mark --mark 0x539 -j TPROXY --on-port 15001 --on-ip 0.0.0.0 --tproxy-mark 0x539/0xffffffff",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }

    #[test]
    fn without_dns_servers_or_skips_the_chains_are_minimal() {
        let config = Config {
            metrics_port: None,
            ..Config::default()
        };
        let text = build(&config, Family::V4).render();
        assert!(!text.contains("--dport"), "{text}");
        // The metrics port alone, by default.
        let text = build(&Config::default(), Family::V4).render();
        let ports: Vec<&str> = text.lines().filter(|l| l.contains("--dport")).collect();
        assert_eq!(
            ports,
            ["-A PALISADE_INBOUND -p tcp -m tcp --dport 7491 -j RETURN"]
        );
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("-A PALISADE_OUTPUT"))
                .count(),
            3
        );
    }
}
