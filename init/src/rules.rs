//! The rules themselves: for one config and one family, every chain, rule and jump of
//! ours, written exactly as iptables-save prints them so that `--verify` compares text.
//!
//! - nat: inbound TCP to the inbound port, outbound TCP to the outbound port, DNS to the
//!   DNS port; the proxy's own traffic, loopback and skipped ports/CIDRs pass.
//! - mangle: every other UDP through the proxy with TPROXY. Outbound UDP is marked, the
//!   mark routes it back in through `lo` ([`crate::routes`]), and TPROXY hands it to the
//!   outbound port; inbound UDP is handed to the inbound port.
//! - filter: SCTP dropped, since it cannot be relayed in user space (fail closed).

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
/// SCTP dropping (filter, from INPUT and OUTPUT).
pub const FILTER: &str = "PALISADE_FILTER";

/// Every rule of ours for `family`, in the shape of a parsed iptables-save output.
pub fn build(config: &Config, family: Family) -> Saved {
    Saved {
        tables: vec![nat(config, family), mangle(config, family), filter()],
    }
}

fn table(name: &str, chains: &[&str], rules: Vec<Rule>) -> Table {
    Table {
        name: name.to_string(),
        chains: chains.iter().map(|c| c.to_string()).collect(),
        rules,
    }
}

/// The DNS servers of this family, as iptables-save prints them (`/32`, `/128`).
fn dns_servers(config: &Config, family: Family) -> Vec<IpNet> {
    config
        .dns_servers
        .iter()
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
    for server in dns_servers(config, family) {
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
        format!("-m conntrack --ctdir REPLY -m connmark --mark {mark:#x} -j RETURN"),
    ));
    // DNS goes to the DNS listener through the nat table, unmarked.
    for server in dns_servers(config, family) {
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
    table("mangle", &[UDP_IN, UDP_OUT], rules)
}

fn filter() -> Table {
    let rules = vec![
        Rule::new("INPUT", format!("-j {FILTER}")),
        Rule::new("OUTPUT", format!("-j {FILTER}")),
        Rule::new(FILTER, "-p sctp -j DROP"),
    ];
    table("filter", &[FILTER], rules)
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
:PALISADE_UDP_IN - [0:0]
:PALISADE_UDP_OUT - [0:0]
-A PREROUTING -p udp -j PALISADE_UDP_IN
-A OUTPUT -p udp -j PALISADE_UDP_OUT
-A PALISADE_UDP_IN -i lo -p udp -m mark --mark 0x2190 -j TPROXY --on-port 7401 --on-ip 0.0.0.0 --tproxy-mark 0x2190/0xffffffff
-A PALISADE_UDP_IN -i lo -j RETURN
-A PALISADE_UDP_IN -m conntrack --ctdir REPLY -j RETURN
-A PALISADE_UDP_IN -p udp -m udp --dport 22 -j RETURN
-A PALISADE_UDP_IN -p udp -m udp --dport 8000:8100 -j RETURN
-A PALISADE_UDP_IN -p udp -j TPROXY --on-port 7402 --on-ip 0.0.0.0 --tproxy-mark 0x2190/0xffffffff
-A PALISADE_UDP_OUT -o lo -m owner --uid-owner 2190 -m conntrack --ctdir ORIGINAL -j CONNMARK --set-xmark 0x2190/0xffffffff
-A PALISADE_UDP_OUT -m owner --uid-owner 2190 -j RETURN
-A PALISADE_UDP_OUT -o lo -j RETURN
-A PALISADE_UDP_OUT -m conntrack --ctdir REPLY -m connmark --mark 0x2190 -j RETURN
-A PALISADE_UDP_OUT -d 10.96.0.10/32 -p udp -m udp --dport 53 -j RETURN
-A PALISADE_UDP_OUT -d 169.254.169.254/32 -j RETURN
-A PALISADE_UDP_OUT -p udp -m udp --dport 9000 -j RETURN
-A PALISADE_UDP_OUT -j MARK --set-xmark 0x2190/0xffffffff
COMMIT
*filter
:PALISADE_FILTER - [0:0]
-A INPUT -j PALISADE_FILTER
-A OUTPUT -j PALISADE_FILTER
-A PALISADE_FILTER -p sctp -j DROP
COMMIT
";
        assert_eq!(build(&sample(), Family::V4).render(), expected);
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
        let text = build(&Config::default(), Family::V4).render();
        assert!(!text.contains("--dport"), "{text}");
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("-A PALISADE_OUTPUT"))
                .count(),
            3
        );
    }
}
