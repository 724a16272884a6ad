//! `palisade init` in fresh network namespaces: idempotency, `--verify`, `--cleanup`,
//! `--dry-run`, both iptables variants, IPv6, and isolation before the proxy listens.
//!
//! Needs root (CI runs as root). Every test makes its own namespaces, which delete
//! themselves on drop; traffic goes only between namespaces the test created.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use palisade::lab::netns::{veth, Netns};
use palisade::lab::raw;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

/// Deterministic DNS servers, rather than the host's resolv.conf.
const DNS: &str = "--dns-servers=10.96.0.10,fd00::a";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const UDP_WAIT: Duration = Duration::from_millis(300);

fn fresh() -> Netns {
    Netns::new("pal-init").expect("creating a network namespace (needs root)")
}

fn init(ns: &Netns, args: &[&str]) -> Output {
    ns.command(BIN)
        .arg("init")
        .args(args)
        .output()
        .expect("running palisade init")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn init_ok(ns: &Netns, args: &[&str]) -> String {
    let out = init(ns, args);
    assert!(
        out.status.success(),
        "palisade init {args:?} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs a program inside `ns` and returns its standard output; it must succeed.
#[track_caller]
fn run_ok(ns: &Netns, program: &str, args: &[&str]) -> String {
    let out = ns
        .command(program)
        .args(args)
        .output()
        .expect("running a tool");
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `iptables-MODE-save` (or ip6tables) inside `ns`.
fn save(ns: &Netns, tool: &str, mode: &str) -> String {
    run_ok(ns, &format!("{tool}-{mode}-save"), &[])
}

/// Our share of iptables-save output, per table: chain declarations, jumps into our
/// chains, and the rules of our chains in order. Written here independently of the crate.
#[derive(Debug, Default, PartialEq, Eq)]
struct Ours {
    declared: Vec<String>,
    jumps: Vec<String>,
    rules: Vec<String>,
}

fn ours(save_or_restore: &str) -> BTreeMap<String, Ours> {
    let mut tables: BTreeMap<String, Ours> = BTreeMap::new();
    let mut table = String::new();
    for line in save_or_restore.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name.to_string();
            continue;
        }
        // The restore input inserts jumps (`-I CHAIN N spec`); iptables-save shows them
        // as `-A CHAIN spec`.
        let line = match line.strip_prefix("-I ") {
            Some(rest) => {
                let mut words = rest.splitn(3, ' ');
                let (chain, _position, spec) = (
                    words.next().unwrap(),
                    words.next().unwrap(),
                    words.next().unwrap(),
                );
                format!("-A {chain} {spec}")
            }
            None => line.to_string(),
        };
        let entry = tables.entry(table.clone()).or_default();
        if line.starts_with(":PALISADE_") {
            entry
                .declared
                .push(line.split_whitespace().next().unwrap().to_string());
        } else if line.starts_with("-A PALISADE_") {
            entry.rules.push(line);
        } else if line.starts_with("-A ") && line.contains("-j PALISADE_") {
            entry.jumps.push(line);
        }
    }
    tables.retain(|_, o| *o != Ours::default());
    for o in tables.values_mut() {
        o.declared.sort();
        o.jumps.sort();
        // iptables-save lists chains by name; within a chain, order is kept.
        o.rules
            .sort_by_key(|r| r.split_whitespace().nth(1).unwrap_or_default().to_string());
    }
    tables
}

/// The part of a dry run for one family (`IPv4` or `IPv6`).
fn dry_run_section(dry_run: &str, family: &str) -> String {
    let mut section = String::new();
    let mut inside = false;
    for line in dry_run.lines() {
        if line.starts_with('#') {
            inside = line.starts_with(&format!("# {family} rules"));
            continue;
        }
        if inside {
            section.push_str(line);
            section.push('\n');
        }
    }
    section
}

fn ip_rules(ns: &Netns, flag: &str) -> String {
    run_ok(ns, "ip", &[flag, "rule", "show"])
}

fn count_our_ip_rules(ns: &Netns, flag: &str) -> usize {
    ip_rules(ns, flag)
        .lines()
        .filter(|l| l.starts_with("2190:") && l.contains("fwmark 0x2190 lookup 2190"))
        .count()
}

fn idempotent(mode: &str) {
    let ns = fresh();
    let args = [
        DNS,
        "--skip-inbound-ports=22,8000-8100",
        "--iptables-mode",
        mode,
    ];
    init_ok(&ns, &args);
    let first = (save(&ns, "iptables", mode), save(&ns, "ip6tables", mode));
    init_ok(&ns, &args);
    let second = (save(&ns, "iptables", mode), save(&ns, "ip6tables", mode));
    assert!(
        !ours(&first.0).is_empty(),
        "no IPv4 rules of ours:\n{}",
        first.0
    );
    assert!(
        !ours(&first.1).is_empty(),
        "no IPv6 rules of ours (lo has ::1):\n{}",
        first.1
    );
    assert_eq!(
        ours(&first.0),
        ours(&second.0),
        "IPv4 rules changed on a second run"
    );
    assert_eq!(
        ours(&first.1),
        ours(&second.1),
        "IPv6 rules changed on a second run"
    );
    for o in ours(&second.0).values().chain(ours(&second.1).values()) {
        let mut jumps = o.jumps.clone();
        jumps.dedup();
        assert_eq!(jumps, o.jumps, "a jump was added twice");
    }
    assert_eq!(count_our_ip_rules(&ns, "-4"), 1, "{}", ip_rules(&ns, "-4"));
    assert_eq!(count_our_ip_rules(&ns, "-6"), 1, "{}", ip_rules(&ns, "-6"));
    // And the other variant holds nothing: rules live in one place only.
    let other = if mode == "nft" { "legacy" } else { "nft" };
    assert!(ours(&save(&ns, "iptables", other)).is_empty());
}

#[test]
fn idempotent_legacy() {
    idempotent("legacy");
}

#[test]
fn idempotent_nft() {
    idempotent("nft");
}

#[test]
fn auto_mode_keeps_to_the_variant_that_holds_rules() {
    let ns = fresh();
    init_ok(&ns, &[DNS, "--iptables-mode=legacy"]);
    // Auto now finds rules in legacy only, so a re-run and a verify use legacy.
    init_ok(&ns, &[DNS]);
    init_ok(&ns, &[DNS, "--verify"]);
    assert!(ours(&save(&ns, "iptables", "nft")).is_empty());
}

fn verify(mode: &str) {
    let ns = fresh();
    let args = [DNS, "--iptables-mode", mode];
    init_ok(&ns, &args);
    let out = init(&ns, &[&args[..], &["--verify"]].concat());
    assert!(
        out.status.success(),
        "verify after init: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // Delete one of our rules by hand.
    run_ok(
        &ns,
        &format!("iptables-{mode}"),
        &[
            "-w",
            "-t",
            "nat",
            "-D",
            "PALISADE_OUTPUT",
            "-o",
            "lo",
            "-j",
            "RETURN",
        ],
    );
    let out = init(&ns, &[&args[..], &["--verify"]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(report.contains("IPv4 rules differ"), "{report}");
    assert!(
        report.contains("- -A PALISADE_OUTPUT -o lo -j RETURN"),
        "{report}"
    );
    assert!(!report.contains("IPv6"), "only IPv4 was changed: {report}");

    // Delete our ip rule too: verify names it.
    run_ok(&ns, "ip", &["-6", "rule", "del", "pref", "2190"]);
    let out = init(&ns, &[&args[..], &["--verify"]].concat());
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stdout);
    assert!(
        report.contains("IPv6: the rule `fwmark 0x2190 lookup 2190 pref 2190` is missing"),
        "{report}"
    );

    // Running init again repairs everything.
    init_ok(&ns, &args);
    init_ok(&ns, &[&args[..], &["--verify"]].concat());

    // Someone deletes the rule that lets neighbour advertisements in: verify names it.
    run_ok(
        &ns,
        &format!("ip6tables-{mode}"),
        &[
            "-w",
            "-D",
            "PALISADE_FILTER_IN",
            "-p",
            "ipv6-icmp",
            "-m",
            "icmp6",
            "--icmpv6-type",
            "136",
            "-m",
            "hl",
            "--hl-eq",
            "255",
            "-j",
            "RETURN",
        ],
    );
    let out = init(&ns, &[&args[..], &["--verify"]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(
        report.contains(
            "   *filter\n - -A PALISADE_FILTER_IN -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m hl --hl-eq 255 -j RETURN\n"
        ),
        "{report}"
    );
    assert!(!report.contains("IPv4"), "only IPv6 was changed: {report}");
    // And a rule added by hand, ahead of the final drop.
    run_ok(
        &ns,
        &format!("iptables-{mode}"),
        &[
            "-w",
            "-I",
            "PALISADE_FILTER_OUT",
            "1",
            "-p",
            "icmp",
            "-j",
            "RETURN",
        ],
    );
    let report = text(&init(&ns, &[&args[..], &["--verify"]].concat()).stdout);
    assert!(
        report.contains(" + -A PALISADE_FILTER_OUT -p icmp -j RETURN\n"),
        "{report}"
    );
    init_ok(&ns, &args);
    init_ok(&ns, &[&args[..], &["--verify"]].concat());
}

#[test]
fn verify_legacy() {
    verify("legacy");
}

#[test]
fn verify_nft() {
    verify("nft");
}

#[test]
fn verify_without_rules_fails() {
    let ns = fresh();
    let out = init(&ns, &[DNS, "--iptables-mode=nft", "--verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("- -A PALISADE_INBOUND -p tcp -j REDIRECT --to-ports 7402"));
}

fn cleanup(mode: &str) {
    let ns = fresh();
    let iptables = format!("iptables-{mode}");
    let ip6tables = format!("ip6tables-{mode}");
    // Someone else's rules, chains and routes, there before us.
    run_ok(
        &ns,
        &iptables,
        &[
            "-w",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            "192.0.2.1/32",
            "-j",
            "ACCEPT",
        ],
    );
    run_ok(&ns, &iptables, &["-w", "-N", "FOREIGN"]);
    run_ok(
        &ns,
        &iptables,
        &["-w", "-A", "FOREIGN", "-p", "sctp", "-j", "ACCEPT"],
    );
    run_ok(&ns, &iptables, &["-w", "-A", "INPUT", "-j", "FOREIGN"]);
    run_ok(
        &ns,
        &ip6tables,
        &[
            "-w",
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-p",
            "udp",
            "-j",
            "ACCEPT",
        ],
    );
    run_ok(
        &ns,
        "ip",
        &[
            "rule", "add", "fwmark", "0x1", "lookup", "100", "pref", "100",
        ],
    );
    run_ok(
        &ns,
        "ip",
        &[
            "route",
            "add",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            "100",
        ],
    );
    let foreign = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("-A") || l.starts_with(":FOREIGN"))
            .map(str::to_string)
            .collect()
    };
    let before = (
        foreign(&save(&ns, "iptables", mode)),
        foreign(&save(&ns, "ip6tables", mode)),
    );

    init_ok(&ns, &[DNS, "--iptables-mode", mode]);
    assert!(!ours(&save(&ns, "iptables", mode)).is_empty());
    init_ok(&ns, &["--iptables-mode", mode, "--cleanup"]);

    let after = (save(&ns, "iptables", mode), save(&ns, "ip6tables", mode));
    for saved in [&after.0, &after.1] {
        assert!(
            !saved.contains("PALISADE"),
            "something of ours is left:\n{saved}"
        );
    }
    assert_eq!(
        before,
        (foreign(&after.0), foreign(&after.1)),
        "foreign rules changed"
    );
    for flag in ["-4", "-6"] {
        assert!(
            !ip_rules(&ns, flag).contains("2190"),
            "{}",
            ip_rules(&ns, flag)
        );
        let table = run_ok(&ns, "ip", &[flag, "route", "show", "table", "2190"]);
        assert!(table.trim().is_empty(), "route left in table 2190: {table}");
    }
    assert!(ip_rules(&ns, "-4").contains("100:\tfrom all fwmark 0x1 lookup 100"));
    assert!(run_ok(&ns, "ip", &["route", "show", "table", "100"]).contains("local default dev lo"));

    // Cleaning up again finds nothing and succeeds.
    init_ok(&ns, &["--iptables-mode", mode, "--cleanup"]);
}

#[test]
fn cleanup_legacy() {
    cleanup("legacy");
}

#[test]
fn cleanup_nft() {
    cleanup("nft");
}

fn dry_run_matches_installed(mode: &str) {
    let ns = fresh();
    let args = [
        DNS,
        "--skip-inbound-ports=22,8000-8100",
        "--skip-outbound-ports=9000",
        "--skip-outbound-cidrs=169.254.169.254,fd00:ec2::/32",
        "--node-ips=192.168.1.10,fd00::10",
        "--allow-icmp",
        "--iptables-mode",
        mode,
    ];
    let dry = init_ok(&ns, &[&args[..], &["--dry-run"]].concat());
    // A dry run changes nothing.
    assert!(ours(&save(&ns, "iptables", mode)).is_empty());
    init_ok(&ns, &args);
    for (family, tool) in [("IPv4", "iptables"), ("IPv6", "ip6tables")] {
        let planned = ours(&dry_run_section(&dry, family));
        assert!(
            !planned.is_empty(),
            "no {family} section in the dry run:\n{dry}"
        );
        let installed = ours(&save(&ns, tool, mode));
        assert_eq!(
            planned, installed,
            "{family}: dry run and installed rules differ"
        );
    }
    let routes: Vec<&str> = dry.lines().filter(|l| l.starts_with("ip ")).collect();
    assert_eq!(
        routes,
        [
            "ip -4 rule add fwmark 0x2190 lookup 2190 pref 2190",
            "ip -4 route replace local 0.0.0.0/0 dev lo table 2190",
            "ip -6 rule add fwmark 0x2190 lookup 2190 pref 2190",
            "ip -6 route replace local ::/0 dev lo table 2190",
        ]
    );
}

#[test]
fn dry_run_matches_installed_legacy() {
    dry_run_matches_installed("legacy");
}

#[test]
fn dry_run_matches_installed_nft() {
    dry_run_matches_installed("nft");
}

/// The filter table of one family's section of a dry run.
fn filter_section(dry_run: &str, family: &str) -> String {
    let section = dry_run_section(dry_run, family);
    let start = section.find("*filter\n").expect("a filter table");
    section[start..].to_string()
}

#[test]
fn dry_run_shows_what_other_protocols_meet() {
    let ns = fresh();
    let dry = init_ok(
        &ns,
        &[
            "--dry-run",
            "--dns-servers=none",
            "--ipv6=on",
            "--node-ips=192.168.1.10,fd00::10",
            "--allow-icmp",
        ],
    );
    assert_eq!(
        filter_section(&dry, "IPv4"),
        "*filter
:PALISADE_FILTER_IN - [0:0]
:PALISADE_FILTER_OUT - [0:0]
-I INPUT 1 ! -p tcp -j PALISADE_FILTER_IN
-I OUTPUT 1 ! -p tcp -j PALISADE_FILTER_OUT
-A PALISADE_FILTER_IN -p udp -j RETURN
-A PALISADE_FILTER_IN -i lo -j RETURN
-A PALISADE_FILTER_IN -s 192.168.1.10/32 -j RETURN
-A PALISADE_FILTER_IN -p icmp -m conntrack --ctstate RELATED -j RETURN
-A PALISADE_FILTER_IN -p icmp -m icmp --icmp-type 8 -j RETURN
-A PALISADE_FILTER_IN -p icmp -m icmp --icmp-type 0 -m conntrack --ctstate ESTABLISHED -j RETURN
-A PALISADE_FILTER_IN -j DROP
-A PALISADE_FILTER_OUT -p udp -j RETURN
-A PALISADE_FILTER_OUT -o lo -j RETURN
-A PALISADE_FILTER_OUT -d 192.168.1.10/32 -j RETURN
-A PALISADE_FILTER_OUT -p icmp -m conntrack --ctstate RELATED -j RETURN
-A PALISADE_FILTER_OUT -p icmp -m icmp --icmp-type 8 -j RETURN
-A PALISADE_FILTER_OUT -p icmp -m icmp --icmp-type 0 -m conntrack --ctstate ESTABLISHED -j RETURN
-A PALISADE_FILTER_OUT -j DROP
COMMIT
"
    );
    assert_eq!(
        filter_section(&dry, "IPv6"),
        "*filter
:PALISADE_FILTER_IN - [0:0]
:PALISADE_FILTER_OUT - [0:0]
-I INPUT 1 ! -p tcp -j PALISADE_FILTER_IN
-I OUTPUT 1 ! -p tcp -j PALISADE_FILTER_OUT
-A PALISADE_FILTER_IN -p udp -j RETURN
-A PALISADE_FILTER_IN -i lo -j RETURN
-A PALISADE_FILTER_IN -s fd00::10/128 -j RETURN
-A PALISADE_FILTER_IN -p ipv6-icmp -m conntrack --ctstate RELATED -j RETURN
-A PALISADE_FILTER_IN -p ipv6-icmp -m icmp6 --icmpv6-type 134 -m hl --hl-eq 255 -j RETURN
-A PALISADE_FILTER_IN -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m hl --hl-eq 255 -j RETURN
-A PALISADE_FILTER_IN -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m hl --hl-eq 255 -j RETURN
-A PALISADE_FILTER_IN -p ipv6-icmp -m icmp6 --icmpv6-type 137 -m hl --hl-eq 255 -j RETURN
-A PALISADE_FILTER_IN -p ipv6-icmp -m icmp6 --icmpv6-type 130 -m hl --hl-eq 1 -j RETURN
-A PALISADE_FILTER_IN -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j RETURN
-A PALISADE_FILTER_IN -p ipv6-icmp -m icmp6 --icmpv6-type 129 -m conntrack --ctstate ESTABLISHED -j RETURN
-A PALISADE_FILTER_IN -j DROP
-A PALISADE_FILTER_OUT -p udp -j RETURN
-A PALISADE_FILTER_OUT -o lo -j RETURN
-A PALISADE_FILTER_OUT -d fd00::10/128 -j RETURN
-A PALISADE_FILTER_OUT -p ipv6-icmp -m conntrack --ctstate RELATED -j RETURN
-A PALISADE_FILTER_OUT -p ipv6-icmp -m icmp6 --icmpv6-type 133 -m hl --hl-eq 255 -j RETURN
-A PALISADE_FILTER_OUT -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m hl --hl-eq 255 -j RETURN
-A PALISADE_FILTER_OUT -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m hl --hl-eq 255 -j RETURN
-A PALISADE_FILTER_OUT -p ipv6-icmp -m icmp6 --icmpv6-type 131 -m hl --hl-eq 1 -j RETURN
-A PALISADE_FILTER_OUT -p ipv6-icmp -m icmp6 --icmpv6-type 132 -m hl --hl-eq 1 -j RETURN
-A PALISADE_FILTER_OUT -p ipv6-icmp -m icmp6 --icmpv6-type 143 -m hl --hl-eq 1 -j RETURN
-A PALISADE_FILTER_OUT -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j RETURN
-A PALISADE_FILTER_OUT -p ipv6-icmp -m icmp6 --icmpv6-type 129 -m conntrack --ctstate ESTABLISHED -j RETURN
-A PALISADE_FILTER_OUT -j DROP
COMMIT
"
    );
    // The replies of the app to connections the proxy opens from a client's address are
    // routed back to the proxy.
    let mangle = dry_run_section(&dry, "IPv6");
    for rule in [
        "-I OUTPUT 2 -p tcp -j PALISADE_TCP_OUT",
        "-A PALISADE_TCP_OUT -m connmark --mark 0x2190 -m conntrack --ctdir REPLY -j MARK --set-xmark 0x2190/0xffffffff",
        "-A PALISADE_TCP_OUT -o lo -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m owner --uid-owner 2190 -m addrtype ! --src-type LOCAL -j CONNMARK --set-xmark 0x2190/0xffffffff",
    ] {
        assert!(mangle.contains(rule), "{rule} missing from\n{mangle}");
    }
}

#[test]
fn an_older_palisade_filter_chain_is_replaced() {
    let ns = fresh();
    // What palisade init installed before every other protocol was dropped.
    run_ok(&ns, "iptables-nft", &["-w", "-N", "PALISADE_FILTER"]);
    run_ok(
        &ns,
        "iptables-nft",
        &["-w", "-A", "PALISADE_FILTER", "-p", "sctp", "-j", "DROP"],
    );
    for chain in ["INPUT", "OUTPUT"] {
        run_ok(
            &ns,
            "iptables-nft",
            &["-w", "-I", chain, "1", "-j", "PALISADE_FILTER"],
        );
    }
    init_ok(&ns, &[DNS, "--iptables-mode=nft"]);
    let saved = save(&ns, "iptables", "nft");
    assert!(!saved.contains("PALISADE_FILTER "), "{saved}");
    assert!(!saved.contains("-j PALISADE_FILTER\n"), "{saved}");
    init_ok(&ns, &[DNS, "--iptables-mode=nft", "--verify"]);
}

#[test]
fn bad_options_are_named() {
    let ns = fresh();
    let out = init(&ns, &["--dry-run", "--skip-inbound-ports=80,http"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--skip-inbound-ports: `http`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn options_come_from_the_environment() {
    let ns = fresh();
    let out = ns
        .command(BIN)
        .args(["init", "--dry-run"])
        .env("PALISADE_SKIP_OUTBOUND_PORTS", "5432, 6000-6010")
        .env("PALISADE_DNS_SERVERS", "none")
        .env("PALISADE_IPV6", "off")
        .env("PALISADE_INBOUND_PORT", "15006")
        .env("PALISADE_NODE_IPS", "10.0.0.7, 10.0.0.8")
        .env("PALISADE_ALLOW_ICMP", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dry = text(&out.stdout);
    for rule in [
        "-A PALISADE_FILTER_IN -s 10.0.0.7/32 -j RETURN",
        "-A PALISADE_FILTER_OUT -d 10.0.0.8/32 -j RETURN",
        "-A PALISADE_FILTER_IN -p icmp -m icmp --icmp-type 8 -j RETURN",
    ] {
        assert!(dry.contains(rule), "{rule} missing from\n{dry}");
    }
    // An annotation set to false gives no echo.
    let off = ns
        .command(BIN)
        .args(["init", "--dry-run", "--ipv6=off", "--dns-servers=none"])
        .env("PALISADE_ALLOW_ICMP", "false")
        .output()
        .unwrap();
    assert!(off.status.success(), "{}", text(&off.stderr));
    assert!(!text(&off.stdout).contains("--icmp-type"));
    let bad = ns
        .command(BIN)
        .args(["init", "--dry-run"])
        .env("PALISADE_NODE_IPS", "node-1")
        .output()
        .unwrap();
    assert!(
        text(&bad.stderr).contains("--node-ips: `node-1` is not an IP address"),
        "{}",
        text(&bad.stderr)
    );
    assert!(
        dry.contains("-A PALISADE_OUTPUT -p tcp -m tcp --dport 6000:6010 -j RETURN"),
        "{dry}"
    );
    assert!(
        dry.contains("-A PALISADE_UDP_OUT -p udp -m udp --dport 5432 -j RETURN"),
        "{dry}"
    );
    assert!(dry.contains("-j REDIRECT --to-ports 15006"), "{dry}");
    assert!(
        !dry.contains("--dport 53") && !dry.contains("IPv6"),
        "{dry}"
    );
}

// ---- isolation before the proxy listens ----

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
}

/// Sends up to three datagrams from a fresh socket in `from` and reports whether any
/// reached `receiver` within the bounded wait.
fn udp_arrives(from: &Netns, to: SocketAddr, receiver: &UdpSocket) -> bool {
    // Drop what earlier probes left queued, so only this probe's datagrams count.
    receiver.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    while receiver.recv_from(&mut buf).is_ok() {}
    receiver.set_nonblocking(false).unwrap();
    from.run(|| {
        let socket = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap();
        for _ in 0..3 {
            // A send can fail (no route, or dropped); either way nothing arrives.
            let _ = socket.send_to(b"probe", to);
        }
    })
    .unwrap();
    receiver.set_read_timeout(Some(UDP_WAIT)).unwrap();
    receiver.recv_from(&mut buf).is_ok()
}

#[track_caller]
fn assert_refused(result: io::Result<TcpStream>, what: &str) {
    match result {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("{what}: expected connection refused, got {e}"),
        Ok(_) => panic!("{what}: expected connection refused, but it connected"),
    }
}

/// A pod and a peer joined by a veth, no other routes.
struct Pair {
    pod: Netns,
    peer: Netns,
}

fn pair(subnet: &str) -> Pair {
    let pod = fresh();
    let peer = fresh();
    veth(&pod, "eth0", &peer, "peer0").unwrap();
    pod.ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", "eth0"])
        .unwrap();
    peer.ip(&["addr", "add", &format!("{subnet}.2/24"), "dev", "peer0"])
        .unwrap();
    Pair { pod, peer }
}

fn isolation(mode: &str) {
    let Pair { pod, peer } = pair("10.77.0");
    let pod_app: SocketAddr = "10.77.0.1:8080".parse().unwrap();
    let peer_tcp: SocketAddr = "10.77.0.2:9000".parse().unwrap();
    let peer_udp: SocketAddr = "10.77.0.2:9001".parse().unwrap();
    let pod_udp: SocketAddr = "10.77.0.1:8081".parse().unwrap();

    // Plain listeners (this process runs as root, not as the proxy's uid).
    let app = pod
        .run(|| TcpListener::bind("0.0.0.0:8080"))
        .unwrap()
        .unwrap();
    let app_udp = pod.run(|| UdpSocket::bind(pod_udp)).unwrap().unwrap();
    let server = peer.run(|| TcpListener::bind(peer_tcp)).unwrap().unwrap();
    let server_udp = peer.run(|| UdpSocket::bind(peer_udp)).unwrap().unwrap();

    // Before init everything flows, so what fails afterwards fails because of the rules.
    peer.run(|| connect(pod_app))
        .unwrap()
        .expect("peer -> pod before init");
    pod.run(|| connect(peer_tcp))
        .unwrap()
        .expect("pod -> peer before init");
    assert!(
        udp_arrives(&pod, peer_udp, &server_udp),
        "UDP pod -> peer before init"
    );
    assert!(
        udp_arrives(&peer, pod_udp, &app_udp),
        "UDP peer -> pod before init"
    );

    init_ok(&pod, &["--dns-servers=none", "--iptables-mode", mode]);

    // Inbound TCP is redirected to 7402, where nobody listens: refused, never passed.
    assert_refused(
        peer.run(|| connect(pod_app)).unwrap(),
        "peer -> pod app after init",
    );
    // Outbound TCP is redirected to 7401: refused.
    assert_refused(
        pod.run(|| connect(peer_tcp)).unwrap(),
        "pod -> peer after init",
    );
    // UDP both ways goes to TPROXY without a socket: dropped.
    assert!(
        !udp_arrives(&pod, peer_udp, &server_udp),
        "UDP pod -> peer passed"
    );
    assert!(
        !udp_arrives(&peer, pod_udp, &app_udp),
        "UDP peer -> pod passed"
    );

    // The proxy's uid is not redirected: it reaches the peer.
    let out = pod
        .command_as("timeout", 2190)
        .args([
            "5",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/10.77.0.2/9000 && echo connected",
        ])
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout).trim(),
        "connected",
        "uid 2190 -> peer: {}",
        text(&out.stderr)
    );
    // And the same from another uid is refused.
    let out = pod
        .command_as("timeout", 1000)
        .args([
            "5",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/10.77.0.2/9000 && echo connected",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "uid 1000 reached the peer");

    // Loopback inside the pod works.
    pod.run(|| connect("127.0.0.1:8080".parse().unwrap()))
        .unwrap()
        .expect("loopback in the pod");
    drop((app, app_udp, server, server_udp));
}

#[test]
fn isolation_before_the_proxy_nft() {
    isolation("nft");
}

#[test]
fn isolation_before_the_proxy_legacy() {
    isolation("legacy");
}

/// Whether a datagram of `kind` (an IP protocol, or echo when `None`) sent from `from`
/// to `to` is received in `at`.
fn other_protocol_arrives(
    from: &Netns,
    at: &Netns,
    to: std::net::IpAddr,
    protocol: Option<u8>,
) -> bool {
    let v6 = to.is_ipv6();
    let token = raw::token();
    let listening = protocol.unwrap_or(if v6 { raw::ICMPV6 } else { raw::ICMP });
    let sniffer = raw::Sniffer::open(at, v6, listening).unwrap();
    // A send refused by the sender's own rules fails: not received either.
    let _ = match protocol {
        Some(p) => raw::send(from, to, p, &token),
        None => raw::ping(from, to, &token, Duration::ZERO).map(drop),
    };
    sniffer.saw(&token, UDP_WAIT)
}

#[test]
fn other_protocols_pass_only_with_the_node_and_echo_when_allowed() {
    let Pair { pod, peer } = pair("10.79.0");
    let pod_ip: std::net::IpAddr = "10.79.0.1".parse().unwrap();
    let peer_ip: std::net::IpAddr = "10.79.0.2".parse().unwrap();
    let both = |echo: bool, proto: bool, what: &str| {
        assert_eq!(
            other_protocol_arrives(&peer, &pod, pod_ip, None),
            echo,
            "{what}: echo in"
        );
        assert_eq!(
            other_protocol_arrives(&pod, &peer, peer_ip, None),
            echo,
            "{what}: echo out"
        );
        assert_eq!(
            other_protocol_arrives(&peer, &pod, pod_ip, Some(253)),
            proto,
            "{what}: 253 in"
        );
        assert_eq!(
            other_protocol_arrives(&pod, &peer, peer_ip, Some(253)),
            proto,
            "{what}: 253 out"
        );
    };
    both(true, true, "before init");
    init_ok(&pod, &["--dns-servers=none"]);
    both(false, false, "after init");
    // Echo answered both ways once the pod allows it, and nothing else.
    init_ok(&pod, &["--dns-servers=none", "--allow-icmp"]);
    both(true, false, "with --allow-icmp");
    assert!(raw::ping(&peer, pod_ip, &raw::token(), Duration::from_secs(1)).unwrap());
    assert!(raw::ping(&pod, peer_ip, &raw::token(), Duration::from_secs(1)).unwrap());
    // The peer as the pod's node: every protocol, both ways.
    init_ok(&pod, &["--dns-servers=none", "--node-ips=10.79.0.2"]);
    both(true, true, "with the peer as node");
    init_ok(
        &pod,
        &["--dns-servers=none", "--node-ips=10.79.0.2", "--verify"],
    );
}

// ---- IPv6 ----

#[test]
fn ipv6_address_means_ip6tables_rules() {
    let Pair { pod, peer } = pair("10.78.0");
    pod.ip(&["-6", "addr", "add", "fd00:78::1/64", "dev", "eth0", "nodad"])
        .unwrap();
    peer.ip(&[
        "-6",
        "addr",
        "add",
        "fd00:78::2/64",
        "dev",
        "peer0",
        "nodad",
    ])
    .unwrap();
    let peer_tcp: SocketAddr = "[fd00:78::2]:9000".parse().unwrap();
    let server = peer.run(|| TcpListener::bind(peer_tcp)).unwrap().unwrap();
    pod.run(|| connect(peer_tcp))
        .unwrap()
        .expect("pod -> peer over IPv6 before init");

    init_ok(&pod, &[DNS]);

    // IPv6 is no way around the proxy.
    assert_refused(
        pod.run(|| connect(peer_tcp)).unwrap(),
        "pod -> peer over IPv6 after init",
    );
    drop(server);
    let saved = save(&pod, "ip6tables", "nft");
    let o = ours(&saved);
    assert!(
        o["nat"]
            .rules
            .contains(&"-A PALISADE_INBOUND -p tcp -j REDIRECT --to-ports 7402".to_string()),
        "{saved}"
    );
    assert!(
        o["mangle"].rules.iter().any(|r| r.contains("--on-ip ::")),
        "{saved}"
    );
    assert_eq!(count_our_ip_rules(&pod, "-6"), 1);
}

#[test]
fn ipv6_on_installs_and_off_does_not() {
    let ns = fresh();
    init_ok(&ns, &[DNS, "--ipv6=off", "--iptables-mode=nft"]);
    assert!(ours(&save(&ns, "ip6tables", "nft")).is_empty());
    assert_eq!(count_our_ip_rules(&ns, "-6"), 0);
    init_ok(&ns, &[DNS, "--ipv6=on", "--iptables-mode=nft"]);
    assert!(!ours(&save(&ns, "ip6tables", "nft")).is_empty());
    assert_eq!(count_our_ip_rules(&ns, "-6"), 1);
}

/// A folder whose PATH offers the IPv4 tools and `ip`, but no ip6tables.
struct NoIp6tables(PathBuf);

impl NoIp6tables {
    fn new() -> NoIp6tables {
        let dir = std::env::temp_dir().join(format!(
            "palisade-no-ip6tables-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for tool in [
            "iptables-nft-save",
            "iptables-nft-restore",
            "iptables-legacy-save",
            "iptables-legacy-restore",
            "ip",
        ] {
            let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(|d| PathBuf::from(d).join(tool))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("{tool} not found"));
            std::os::unix::fs::symlink(found, dir.join(tool)).unwrap();
        }
        NoIp6tables(dir)
    }
}

impl Drop for NoIp6tables {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn ipv6_up_without_ip6tables_fails() {
    let ns = fresh();
    let path = NoIp6tables::new();
    for ipv6 in ["--ipv6=auto", "--ipv6=on"] {
        let out = ns
            .command(BIN)
            .args(["init", DNS, ipv6])
            .env("PATH", &path.0)
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{ipv6}: init succeeded without ip6tables: {stderr}"
        );
        assert!(
            stderr.contains("IPv6") && stderr.contains("ip6tables-nft"),
            "{stderr}"
        );
    }
    // With IPv6 off, the IPv4 tools are enough.
    let out = ns
        .command(BIN)
        .args(["init", DNS, "--ipv6=off"])
        .env("PATH", &path.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}
