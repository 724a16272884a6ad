//! End-to-end: labs of real network namespaces, iptables, proxies and a controller. Each
//! test builds its own lab (unique names, removed on drop, even when the test fails) and
//! checks what a user would: what gets through, what does not, what the proxy logs and
//! counts. Needs root, iptables and setpriv (scripts/test installs what is missing).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;

use common::{eventually, logged, metric};
use palisade::lab::{agent, Lab, LabOptions, Observed, ProxyOptions};
use palisade_policy::ports::Protocol;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const BINARY: &str = env!("CARGO_BIN_EXE_palisade");

fn options(paths: &[&str]) -> LabOptions {
    LabOptions {
        paths: paths.iter().map(PathBuf::from).collect(),
        respect_injection: false,
        binary: PathBuf::from(BINARY),
        hold: Duration::from_secs(2),
        log_allowed: false,
        dns_grace: Duration::from_secs(60),
    }
}

fn lab(paths: &[&str]) -> Lab {
    Lab::start(options(paths)).expect("building the lab (needs root)")
}

fn differences(observed: &[Observed]) -> Vec<String> {
    observed
        .iter()
        .filter(|o| o.differs())
        .map(|o| {
            let f = &o.expected;
            format!(
                "{} -> {} {}/{} over {}: expected {}, observed the opposite",
                f.from,
                f.to,
                f.port,
                f.protocol,
                f.family,
                if f.allowed { "allowed" } else { "denied" }
            )
        })
        .collect()
}

/// Probes every flow and asserts each behaved as simulated; returns how many were denied,
/// so callers can check the lab was not trivially open.
fn assert_as_simulated(lab: &Lab) -> usize {
    let observed = lab.probe_all().expect("probing");
    let differ = differences(&observed);
    assert!(
        differ.is_empty(),
        "flows differ from simulate:\n{}",
        differ.join("\n")
    );
    observed
        .iter()
        .filter(|o| o.observed == Some(false))
        .count()
}

fn ip_of(lab: &Lab, pod: &str, v6: bool) -> IpAddr {
    let (ns, name) = pod.split_once('/').unwrap();
    let p = lab.cluster().pod(ns, name).unwrap();
    *p.ips
        .iter()
        .find(|ip| ip.is_ipv6() == v6)
        .expect("the pod has such an address")
}

#[test]
fn three_tier_example_holds_for_real() {
    let lab = lab(&["examples/three-tier"]);
    let denied = assert_as_simulated(&lab);
    assert!(
        denied >= 10,
        "the three-tier policies deny most flows; only {denied} were denied"
    );
}

#[test]
fn denied_flows_are_logged_with_their_reason() {
    let lab = lab(&["tests/lab/pair"]);
    assert!(!lab.probe("x/c", "x/b", 80, Protocol::Tcp).unwrap());
    assert!(!lab.probe("x/c", "x/b", 81, Protocol::Udp).unwrap());
    assert!(lab.probe("x/a", "x/b", 80, Protocol::Tcp).unwrap());
    let tcp = logged(&lab, "x/b", |l| l["protocol"] == "TCP");
    assert_eq!(tcp["action"], "deny");
    assert_eq!(tcp["direction"], "ingress");
    assert_eq!(tcp["reason"], "no-rule-matched");
    assert_eq!(tcp["dst"], "10.60.0.2:80");
    assert!(tcp["src"].as_str().unwrap().starts_with("10.60.0.3:"));
    assert!(
        tcp["detail"]
            .as_str()
            .unwrap()
            .contains("isolated by x/b-from-a"),
        "{tcp}"
    );
    logged(&lab, "x/b", |l| {
        l["protocol"] == "UDP" && l["action"] == "deny"
    });
    let log = lab.flow_log("x/b");
    // Allowed flows are not logged by default; denied ones are counted by action.
    assert!(log.iter().all(|l| l["action"] != "allow"));
    assert!(
        metric(
            &lab,
            "x/b",
            "palisade_flows_total",
            &["action=\"deny\"", "direction=\"inbound\""]
        ) >= 2.0
    );
    assert!(metric(&lab, "x/b", "palisade_flows_total", &["action=\"allow\""]) >= 1.0);
    assert!(metric(&lab, "x/b", "palisade_policy_version", &[]) > 0.0);
}

#[test]
fn a_service_address_is_judged_against_the_backend_it_reaches() {
    let lab = lab(&["tests/lab/service"]);
    let vip = |port| SocketAddr::new("10.96.61.10".parse().unwrap(), port);
    // The client's egress allows the api pod on 8080: the Service's port 80 leads there.
    assert!(lab
        .probe_addr("shop/client", vip(80), Protocol::Tcp, "shop/api")
        .unwrap());
    assert!(lab
        .probe_addr("shop/client", vip(53), Protocol::Udp, "shop/api")
        .unwrap());
    // `other` reaches the Service too, but the api pod's ingress refuses it.
    assert!(!lab
        .probe_addr("shop/other", vip(80), Protocol::Tcp, "shop/api")
        .unwrap());
    // The api pod judged the backend's port.
    logged(&lab, "shop/api", |l| {
        l["src"].as_str().unwrap().starts_with("10.61.0.3:") && l["dst"] == "10.61.0.1:8080"
    });
    assert_as_simulated(&lab);
}

#[test]
fn the_outbound_proxy_picks_the_backend_and_never_lets_a_cluster_ip_through_unjudged() {
    let lab = lab(&["tests/lab/service"]);
    lab.write_manifest(
        "zz-client-egress.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client-to-api-8080, namespace: shop}\n\
         spec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n  \
         - to: [{podSelector: {matchLabels: {app: api}}}]\n    ports: [{port: 80}]\n",
    )
    .unwrap();
    // Now the egress rule names the Service's port, 80, which is not the backend's: denied.
    let vip = SocketAddr::new("10.96.61.10".parse().unwrap(), 80);
    let denied = eventually(Duration::from_secs(3), || {
        !lab.probe_addr("shop/client", vip, Protocol::Tcp, "shop/api")
            .unwrap()
    });
    assert!(
        denied.is_some(),
        "a rule on the Service port must not allow the backend port"
    );
    let line = logged(&lab, "shop/client", |l| l["action"] == "deny");
    assert_eq!(line["service"], "shop/api");
    assert_eq!(line["dst"], "10.61.0.1:8080");
}

#[test]
fn audit_mode_lets_would_deny_flows_through_and_counts_them() {
    let lab = lab(&["tests/lab/audit"]);
    assert_as_simulated(&lab);
    // A namespace in audit mode, under a deny-all: passes, logged and counted as would-deny.
    assert!(lab.probe("y/a", "y/b", 80, Protocol::Tcp).unwrap());
    let line = logged(&lab, "y/b", |l| l["direction"] == "ingress");
    assert_eq!(line["action"], "would-deny");
    assert!(
        metric(
            &lab,
            "y/b",
            "palisade_flows_total",
            &["action=\"would-deny\""]
        ) >= 1.0
    );
    // A staged deny-all in an enforcing namespace: passes too, and says why.
    assert!(lab.probe("y/a", "z/c", 80, Protocol::Tcp).unwrap());
    let staged = logged(&lab, "z/c", |l| l["direction"] == "ingress");
    assert_eq!(staged["action"], "would-deny");
    assert_eq!(staged["reason"], "staged-no-rule-matched");
}

#[test]
fn a_policy_change_reaches_open_and_new_connections_within_a_second() {
    let lab = lab(&["tests/lab/pair"]);
    let b = SocketAddr::new(ip_of(&lab, "x/b", false), 80);
    let ns = lab.netns("x/a").unwrap();
    lab.runtime().block_on(async {
        let (mut open, name) = agent::open(ns, b).await.expect("a may reach b");
        assert_eq!(name, "x/b");
        // The connection works before the change: the server echoes.
        open.get_mut().write_all(b"ping\n").await.unwrap();
        let mut line = String::new();
        open.read_line(&mut line).await.unwrap();
        assert_eq!(line, "ping\n");

        lab.write_manifest("zz-deny.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {name: b-from-a, namespace: x}\nspec: {podSelector: {matchLabels: {app: b}}}\n")
            .unwrap();
        let changed = Instant::now();
        // The open connection is cut off: reading ends (reset or end of stream).
        let mut buf = String::new();
        let cut = tokio::time::timeout(Duration::from_secs(1), open.read_line(&mut buf)).await;
        assert!(
            matches!(cut, Ok(Ok(0)) | Ok(Err(_))),
            "the open connection must be closed within a second of the change: {cut:?}"
        );
        assert!(changed.elapsed() < Duration::from_secs(1));
    });
    assert!(
        !lab.probe("x/a", "x/b", 80, Protocol::Tcp).unwrap(),
        "new connections are denied"
    );
    assert!(metric(&lab, "x/b", "palisade_flows_closed_by_policy_total", &[]) >= 1.0);
    logged(&lab, "x/b", |l| l["event"] == "closed-by-policy");
}

#[test]
fn the_last_policy_stays_in_force_while_the_controller_is_away() {
    let mut lab = lab(&["tests/lab/pair"]);
    lab.stop_controller();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        assert!(
            lab.probe("x/a", "x/b", 80, Protocol::Tcp).unwrap(),
            "allowed flows keep flowing"
        );
        assert!(
            !lab.probe("x/c", "x/b", 80, Protocol::Tcp).unwrap(),
            "denied flows stay denied"
        );
    }
    // Changed while the controller is away, applied once it is back: proxies reconnect.
    lab.write_manifest("zz-open.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: b-from-a, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress: [{}]\n")
        .unwrap();
    assert!(
        !lab.probe("x/c", "x/b", 80, Protocol::Tcp).unwrap(),
        "no controller, no change"
    );
    lab.start_controller().unwrap();
    let applied = eventually(Duration::from_secs(10), || {
        lab.probe("x/c", "x/b", 80, Protocol::Tcp).unwrap()
    });
    assert!(
        applied.is_some(),
        "the proxy resynchronises when the controller returns"
    );
    assert!(metric(&lab, "x/b", "palisade_policy_stream_errors_total", &[]) >= 1.0);
}

#[test]
fn a_pod_whose_proxy_is_down_fails_closed_never_open() {
    let mut lab = lab(&["tests/lab/pair"]);
    assert!(lab.probe("x/a", "x/b", 80, Protocol::Tcp).unwrap());
    assert!(lab.probe("x/b", "x/a", 80, Protocol::Tcp).unwrap());
    lab.stop_proxy("x/b");
    // Inbound and outbound, TCP and UDP, allowed by policy or not: nothing passes.
    assert!(!lab.probe("x/a", "x/b", 80, Protocol::Tcp).unwrap());
    assert!(!lab.probe("x/a", "x/b", 81, Protocol::Udp).unwrap());
    assert!(!lab.probe("x/b", "x/a", 80, Protocol::Tcp).unwrap());
    assert!(!lab.probe("x/b", "x/a", 81, Protocol::Udp).unwrap());
    lab.start_proxy("x/b").unwrap();
    assert!(lab.probe("x/a", "x/b", 80, Protocol::Tcp).unwrap());
    assert!(lab.probe("x/b", "x/a", 81, Protocol::Udp).unwrap());
    assert!(!lab.probe("x/c", "x/b", 80, Protocol::Tcp).unwrap());
}

// ---- tests/lab/bypass: two injected pods (guarded, pinger) and two plain ones ----

/// The lab of tests/lab/bypass, where only guarded and pinger have a proxy.
fn bypass_lab() -> Lab {
    Lab::start(LabOptions {
        respect_injection: true,
        ..options(&["tests/lab/bypass"])
    })
    .expect("building the lab (needs root)")
}

fn addr(lab: &Lab, pod: &str, v6: bool, port: u16) -> SocketAddr {
    SocketAddr::new(ip_of(lab, pod, v6), port)
}

/// Runs an iptables tool of the pod's variant (nft, else legacy: what `palisade init`
/// picked) with `args`; whether it succeeded.
fn iptables(lab: &Lab, pod: &str, v6: bool, args: &[&str]) -> bool {
    let tool = if v6 { "ip6tables" } else { "iptables" };
    ["nft", "legacy"].iter().any(|variant| {
        lab.netns(pod)
            .unwrap()
            .command(&format!("{tool}-{variant}"))
            .arg("-w")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Packets the final DROP of one of a pod's filter chains has dropped so far.
fn dropped(lab: &Lab, pod: &str, v6: bool, chain: &str) -> u64 {
    let tool = if v6 { "ip6tables" } else { "iptables" };
    let wanted = format!("-A {chain} -j DROP");
    for variant in ["nft", "legacy"] {
        let out = lab
            .netns(pod)
            .unwrap()
            .command(&format!("{tool}-{variant}-save"))
            .args(["-c", "-t", "filter"])
            .output()
            .expect("iptables-save");
        let text = String::from_utf8_lossy(&out.stdout);
        // `[packets:bytes] -A CHAIN -j DROP`
        if let Some(line) = text.lines().find(|l| l.ends_with(&wanted)) {
            let packets = line.trim_start_matches('[').split(':').next().unwrap();
            return packets.parse().expect("a packet count");
        }
    }
    panic!("{pod}: no `{wanted}` rule")
}

/// Runs a command in a pod's (or the node's) namespace; it must succeed.
fn run_in(ns: &palisade::lab::netns::Netns, program: &str, args: &[&str]) -> String {
    let out = ns.command(program).args(args).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends a probe of `kind` from `from` to `to`, sniffing at `to`: whether it was received
/// there.
fn received(lab: &Lab, from: &str, to: &str, v6: bool, kind: Probe) -> bool {
    use palisade::lab::raw::{self, Sniffer};
    let dst = ip_of(lab, to, v6);
    let token = raw::token();
    let protocol = match kind {
        Probe::Echo if v6 => raw::ICMPV6,
        Probe::Echo => raw::ICMP,
        Probe::Protocol(n) => n,
    };
    let sniffer = Sniffer::open(lab.netns(to).unwrap(), v6, protocol).expect("a raw socket");
    let source = lab.netns(from).unwrap();
    // A send the source's own firewall refuses fails (EPERM): not received either.
    let _ = match kind {
        Probe::Echo => raw::ping(source, dst, &token, Duration::ZERO).map(drop),
        Probe::Protocol(n) => raw::send(source, dst, n, &token),
    };
    sniffer.saw(&token, Duration::from_millis(600))
}

#[derive(Clone, Copy, Debug)]
enum Probe {
    /// An ICMP (or ICMPv6) echo request.
    Echo,
    /// A datagram of this IP protocol.
    Protocol(u8),
}

/// An IP protocol number nobody uses (RFC 3692: for experiments).
const EXPERIMENTAL: u8 = 253;

/// Whether `from` gets an echo reply from `to`.
fn pings(lab: &Lab, from: &str, to: IpAddr) -> bool {
    use palisade::lab::raw;
    raw::ping(
        lab.netns(from).unwrap(),
        to,
        &raw::token(),
        Duration::from_secs(1),
    )
    .unwrap_or(false)
}

#[test]
fn other_ip_protocols_are_dropped_in_and_out_except_echo_where_allowed_and_the_node() {
    let lab = bypass_lab();
    for v6 in [false, true] {
        let family = if v6 { "IPv6" } else { "IPv4" };
        for kind in [Probe::Echo, Probe::Protocol(EXPERIMENTAL)] {
            let what = format!("{kind:?} over {family}");
            // Out of guarded to a plain pod: only guarded's own rules can stop it.
            let out_before = dropped(&lab, "x/guarded", v6, "PALISADE_FILTER_OUT");
            assert!(
                received(&lab, "x/plain-a", "x/plain-b", v6, kind),
                "{what}: control plain-a -> plain-b not received"
            );
            assert!(
                !received(&lab, "x/guarded", "x/plain-b", v6, kind),
                "{what}: guarded -> plain-b received"
            );
            assert!(
                dropped(&lab, "x/guarded", v6, "PALISADE_FILTER_OUT") > out_before,
                "{what}: guarded's drop rule did not count it"
            );
            // Into guarded from a plain pod: only guarded's own rules can stop it.
            let in_before = dropped(&lab, "x/guarded", v6, "PALISADE_FILTER_IN");
            assert!(
                !received(&lab, "x/plain-a", "x/guarded", v6, kind),
                "{what}: plain-a -> guarded received"
            );
            assert!(
                dropped(&lab, "x/guarded", v6, "PALISADE_FILTER_IN") > in_before,
                "{what}: guarded's drop rule did not count it"
            );
        }
        // pinger asks for echo: it passes both ways, and nothing else does.
        let what = format!("over {family}");
        assert!(
            received(&lab, "x/plain-a", "x/pinger", v6, Probe::Echo),
            "echo {what}: plain-a -> pinger not received"
        );
        assert!(
            pings(&lab, "x/plain-a", ip_of(&lab, "x/pinger", v6)),
            "echo {what}: pinger did not answer plain-a"
        );
        assert!(
            pings(&lab, "x/pinger", ip_of(&lab, "x/plain-b", v6)),
            "echo {what}: pinger got no answer from plain-b"
        );
        for (from, to) in [("x/pinger", "x/plain-b"), ("x/plain-a", "x/pinger")] {
            assert!(
                !received(&lab, from, to, v6, Probe::Protocol(EXPERIMENTAL)),
                "protocol 253 {what}: {from} -> {to} received"
            );
        }
        // Both ends must allow it: pinger's echo is dropped by guarded.
        assert!(
            !received(&lab, "x/pinger", "x/guarded", v6, Probe::Echo),
            "echo {what}: pinger -> guarded received"
        );
        // The node is reached and reaches the pod with any protocol.
        let node_ip = *lab
            .node_ips()
            .iter()
            .find(|ip| ip.is_ipv6() == v6)
            .expect("a node address of each family");
        let guarded = ip_of(&lab, "x/guarded", v6);
        let node = lab.node();
        let token = palisade::lab::raw::token();
        let sniffer =
            palisade::lab::raw::Sniffer::open(lab.netns("x/guarded").unwrap(), v6, EXPERIMENTAL)
                .unwrap();
        palisade::lab::raw::send(node, guarded, EXPERIMENTAL, &token).unwrap();
        assert!(
            sniffer.saw(&token, Duration::from_millis(600)),
            "protocol 253 {what}: node -> guarded not received"
        );
        assert!(
            palisade::lab::raw::ping(node, guarded, &token, Duration::from_secs(1)).unwrap(),
            "echo {what}: guarded did not answer its node"
        );
        assert!(
            pings(&lab, "x/guarded", node_ip),
            "echo {what}: guarded got no answer from its node"
        );
    }
}

/// A server outside the cluster, behind a router whose link to it has a smaller MTU than
/// the pods' (1280 bytes): the router, not the node, tells senders of larger packets.
struct BeyondARouter {
    _router: palisade::lab::netns::Netns,
    _far: palisade::lab::netns::Netns,
    v4: SocketAddr,
    v6: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl BeyondARouter {
    /// Answers `ok` to each connection once it has read `BIG` bytes.
    const BIG: usize = 16_000;

    fn new(lab: &Lab) -> BeyondARouter {
        use palisade::lab::netns::{veth, Netns};
        let router = Netns::new("pal-rt").unwrap();
        let far = Netns::new("pal-far").unwrap();
        veth(lab.node(), "rt0", &router, "up0").unwrap();
        veth(&router, "down0", &far, "eth0").unwrap();
        run_in(
            &router,
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        );
        let node = lab.node();
        for (ns, args) in [
            (node, "addr add 10.98.0.1/30 dev rt0"),
            (node, "-6 addr add fd00:98::1/64 dev rt0 nodad"),
            (node, "route add 10.99.0.0/24 via 10.98.0.2"),
            (node, "-6 route add fd00:99::/64 via fd00:98::2"),
            (&router, "addr add 10.98.0.2/30 dev up0"),
            (&router, "-6 addr add fd00:98::2/64 dev up0 nodad"),
            (&router, "route add default via 10.98.0.1"),
            (&router, "-6 route add default via fd00:98::1"),
            (&router, "addr add 10.99.0.1/24 dev down0"),
            (&router, "-6 addr add fd00:99::1/64 dev down0 nodad"),
            (&router, "link set down0 mtu 1280"),
            (&far, "addr add 10.99.0.2/24 dev eth0"),
            (&far, "-6 addr add fd00:99::2/64 dev eth0 nodad"),
            (&far, "route add default via 10.99.0.1"),
            (&far, "-6 route add default via fd00:99::1"),
        ] {
            ns.ip(&args.split(' ').collect::<Vec<_>>()).unwrap();
        }
        let v4: SocketAddr = "10.99.0.2:80".parse().unwrap();
        let v6: SocketAddr = "[fd00:99::2]:80".parse().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        for at in [v4, v6] {
            let listener = far
                .run(move || std::net::TcpListener::bind(at))
                .unwrap()
                .unwrap();
            listener.set_nonblocking(true).unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || serve_big(listener, &stop));
        }
        BeyondARouter {
            _router: router,
            _far: far,
            v4,
            v6,
            stop,
        }
    }
}

impl Drop for BeyondARouter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn serve_big(listener: std::net::TcpListener, stop: &std::sync::atomic::AtomicBool) {
    use std::io::{Read, Write};
    let start = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Relaxed)
        && start.elapsed() < Duration::from_secs(120)
    {
        match listener.accept() {
            Ok((mut s, _)) => {
                std::thread::spawn(move || {
                    s.set_nonblocking(false)?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    let mut buf = vec![0u8; BeyondARouter::BIG];
                    s.read_exact(&mut buf)?;
                    s.write_all(b"ok\n")
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// From inside `pod`, sends `BIG` bytes to `dst` and waits for its `ok`.
fn big_transfer(lab: &Lab, pod: &str, dst: SocketAddr) -> bool {
    use std::io::{Read, Write};
    lab.netns(pod)
        .unwrap()
        .run(move || -> std::io::Result<bool> {
            let mut s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.set_write_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(&vec![b'x'; BeyondARouter::BIG])?;
            let mut answer = [0u8; 3];
            s.read_exact(&mut answer)?;
            Ok(&answer == b"ok\n")
        })
        .unwrap()
        .unwrap_or(false)
}

#[test]
fn icmp_errors_about_an_allowed_connection_are_delivered() {
    let lab = bypass_lab();
    let far = BeyondARouter::new(&lab);
    let guarded = lab.netns("x/guarded").unwrap();
    for (dst, v6) in [(far.v4, false), (far.v6, true)] {
        let flag = if v6 { "-6" } else { "-4" };
        let related = if v6 {
            "-p ipv6-icmp -m conntrack --ctstate RELATED -j RETURN"
        } else {
            "-p icmp -m conntrack --ctstate RELATED -j RETURN"
        };
        let flush = || run_in(guarded, "ip", &[flag, "route", "flush", "cache"]);
        // The proxy's segments are too big for the router's link: the router's "too big"
        // message, about a connection the policy allows, is what lets the bytes through.
        assert!(
            big_transfer(&lab, "x/guarded", dst),
            "{dst}: the transfer failed"
        );
        let route = run_in(
            guarded,
            "ip",
            &[flag, "route", "get", &dst.ip().to_string()],
        );
        assert!(
            route.contains("mtu 1280"),
            "{dst}: no path MTU learnt: {route}"
        );

        // Without the rule that lets such errors in, the same transfer stalls.
        let mut args = vec!["-D", "PALISADE_FILTER_IN"];
        args.extend(related.split(' '));
        assert!(iptables(&lab, "x/guarded", v6, &args), "deleting {related}");
        flush();
        let before = dropped(&lab, "x/guarded", v6, "PALISADE_FILTER_IN");
        assert!(
            !big_transfer(&lab, "x/guarded", dst),
            "{dst}: passed without the rule"
        );
        assert!(dropped(&lab, "x/guarded", v6, "PALISADE_FILTER_IN") > before);

        // palisade init run again puts it back.
        lab.install_rules("x/guarded").unwrap();
        flush();
        assert!(
            big_transfer(&lab, "x/guarded", dst),
            "{dst}: failed once repaired"
        );
    }
}

#[test]
fn ipv6_neighbour_discovery_keeps_working_between_injected_pods() {
    let lab = bypass_lab();
    let pinger = addr(&lab, "x/pinger", true, 80);
    let flush_all = || {
        for ns in [
            lab.netns("x/guarded").unwrap(),
            lab.netns("x/pinger").unwrap(),
            lab.node(),
        ] {
            run_in(ns, "ip", &["-6", "neigh", "flush", "all"]);
        }
    };
    let guarded = lab.netns("x/guarded").unwrap();
    flush_all();
    assert!(
        lab.probe_addr("x/guarded", pinger, Protocol::Tcp, "x/pinger")
            .unwrap(),
        "guarded -> pinger over IPv6 after the neighbours were forgotten"
    );
    // Neighbour discovery ran after palisade init: the gateway was found again.
    let neighbours = run_in(guarded, "ip", &["-6", "neigh", "show"]);
    assert!(
        neighbours.contains("fe80::1 dev eth0 lladdr"),
        "{neighbours}"
    );

    // Without the rule that lets neighbour advertisements in, IPv6 stops.
    let advert = "-p ipv6-icmp -m icmp6 --icmpv6-type 136 -m hl --hl-eq 255 -j RETURN";
    let mut args = vec!["-D", "PALISADE_FILTER_IN"];
    args.extend(advert.split(' '));
    assert!(iptables(&lab, "x/guarded", true, &args));
    flush_all();
    assert!(
        !lab.probe_addr("x/guarded", pinger, Protocol::Tcp, "x/pinger")
            .unwrap(),
        "IPv6 worked without neighbour advertisements"
    );
    lab.install_rules("x/guarded").unwrap();
    flush_all();
    assert!(lab
        .probe_addr("x/guarded", pinger, Protocol::Tcp, "x/pinger")
        .unwrap());
}

/// The peers `pod`'s app saw on `port`/`protocol` since `since` calls.
fn callers(lab: &Lab, pod: &str, protocol: Protocol, since: usize) -> Vec<IpAddr> {
    lab.calls_to(pod)
        .into_iter()
        .skip(since)
        .filter(|c| c.protocol == protocol)
        .map(|c| c.peer.ip())
        .collect()
}

#[test]
fn the_app_sees_its_clients_own_addresses_through_one_and_two_hops() {
    let mut lab = bypass_lab();
    // The proxy runs as uid 2190 with NET_RAW only in its bounding set and as the binary's
    // permitted file capability, as on a cluster: it raised the capability itself.
    assert!(
        lab.proxy_log("x/guarded")
            .contains("CAP_NET_RAW raised from the permitted set"),
        "{}",
        lab.proxy_log("x/guarded")
    );
    assert_eq!(
        metric(&lab, "x/guarded", "palisade_inbound_transparent", &[]),
        1.0
    );
    for v6 in [false, true] {
        // plain-a has no proxy (one hop: guarded's); pinger has one (two hops).
        for client in ["x/plain-a", "x/pinger"] {
            for (protocol, port) in [(Protocol::Tcp, 80), (Protocol::Udp, 81)] {
                let since = lab.calls_to("x/guarded").len();
                let dst = addr(&lab, "x/guarded", v6, port);
                assert!(lab.probe_addr(client, dst, protocol, "x/guarded").unwrap());
                let seen = callers(&lab, "x/guarded", protocol, since);
                let want = ip_of(&lab, client, v6);
                assert!(
                    !seen.is_empty() && seen.iter().all(|ip| *ip == want),
                    "{client} -> {dst} {protocol}: the app saw {seen:?}, not {want}"
                );
            }
        }
    }
    // A client on the very port the kernel picks first for the proxy's connection (bind
    // prefers odd ports): the proxy takes another, or its connection would be the client's
    // own in conntrack's eyes.
    run_in(
        lab.netns("x/guarded").unwrap(),
        "sysctl",
        &["-qw", "net.ipv4.ip_local_port_range=40000 40001"],
    );
    let since = lab.calls_to("x/guarded").len();
    let from = SocketAddr::new(ip_of(&lab, "x/plain-a", false), 40001);
    let to = addr(&lab, "x/guarded", false, 80);
    let name = lab
        .netns("x/plain-a")
        .unwrap()
        .run(move || -> io::Result<String> {
            use socket2::{Domain, Socket, Type};
            use std::io::Read;
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.bind(&from.into())?;
            socket.connect_timeout(&to.into(), Duration::from_secs(2))?;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut buf = [0u8; 64];
            let n = (&socket).read(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
        })
        .unwrap();
    assert_eq!(name.ok().as_deref(), Some("x/guarded"), "from port 40001");
    let seen: Vec<SocketAddr> = lab.calls_to("x/guarded")[since..]
        .iter()
        .map(|c| c.peer)
        .collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].ip(), from.ip());
    assert_ne!(seen[0].port(), 40001, "{seen:?}");
    assert_eq!(
        metric(
            &lab,
            "x/guarded",
            "palisade_inbound_source_fallbacks_total",
            &[]
        ),
        0.0
    );

    // Without CAP_NET_RAW, TCP comes from the pod's own address, said once; UDP, which
    // needs the capability too, stays dropped.
    let bare = ProxyOptions {
        net_raw: false,
        ..options(&[]).proxy()
    };
    lab.start_proxy_with("x/guarded", &bare).unwrap();
    lab.wait_ready(Duration::from_secs(10)).unwrap();
    for v6 in [false, true] {
        let since = lab.calls_to("x/guarded").len();
        let dst = addr(&lab, "x/guarded", v6, 80);
        assert!(lab
            .probe_addr("x/plain-a", dst, Protocol::Tcp, "x/guarded")
            .unwrap());
        assert_eq!(callers(&lab, "x/guarded", Protocol::Tcp, since), [dst.ip()]);
        let udp = addr(&lab, "x/guarded", v6, 81);
        assert!(!lab
            .probe_addr("x/plain-a", udp, Protocol::Udp, "x/guarded")
            .unwrap());
    }
    assert_eq!(
        metric(&lab, "x/guarded", "palisade_inbound_transparent", &[]),
        0.0
    );
    assert_eq!(
        metric(
            &lab,
            "x/guarded",
            "palisade_inbound_source_fallbacks_total",
            &["reason=\"no-capability\""]
        ),
        2.0
    );
    let log = lab.proxy_log("x/guarded");
    assert!(log.contains("CAP_NET_RAW is not permitted"), "{log}");
    assert_eq!(
        log.matches("cannot connect to the app from the clients' own addresses")
            .count(),
        1,
        "{log}"
    );
}

/// Runs python3 inside a pod as `uid`, connecting to `dst`; whether it read the name.
fn connect_as(lab: &Lab, pod: &str, uid: u32, dst: SocketAddr, udp: bool) -> bool {
    let script = if udp {
        "import socket,sys\ns=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.settimeout(0.5)\nfor _ in range(3):\n  s.sendto(b'x',(sys.argv[1],int(sys.argv[2])))\n  \
         try:\n    print(s.recv(100).decode()); break\n  except OSError: pass\n"
    } else {
        "import socket,sys\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=2)\nprint(s.recv(100).decode())\n"
    };
    let out = lab
        .netns(pod)
        .unwrap()
        .command_as("python3", uid)
        .args(["-c", script, &dst.ip().to_string(), &dst.port().to_string()])
        .output()
        .expect("python3");
    out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// Whether `pod`'s flow log has a line with this action, reason and destination.
fn logged_deny(lab: &Lab, pod: &str, reason: &str, src: Option<IpAddr>, dst: SocketAddr) -> bool {
    eventually(Duration::from_secs(2), || {
        lab.flow_log(pod).iter().any(|l| {
            l["action"] == "deny"
                && l["reason"] == reason
                && l["dst"] == dst.to_string()
                && src.is_none_or(|ip| {
                    l["src"]
                        .as_str()
                        .and_then(|s| s.parse::<SocketAddr>().ok())
                        .is_some_and(|s| s.ip() == ip)
                })
        })
    })
    .is_some()
}

#[test]
fn bypass_attempts_fail() {
    let lab = bypass_lab();
    for v6 in [false, true] {
        // Only the proxy's uid skips the redirect. plain-a has no proxy, so guarded's
        // egress policy is all that stands between guarded and plain-a.
        for (udp, port) in [(false, 80), (true, 81)] {
            let denied = addr(&lab, "x/plain-a", v6, port);
            let allowed = addr(&lab, "x/plain-b", v6, port);
            assert!(
                connect_as(&lab, "x/guarded", 2190, denied, udp),
                "control: the proxy's uid reaches {denied} (udp {udp})"
            );
            assert!(
                connect_as(&lab, "x/guarded", 1000, allowed, udp),
                "control: uid 1000 reaches {allowed} through the proxy (udp {udp})"
            );
            assert!(
                !connect_as(&lab, "x/guarded", 1000, denied, udp),
                "uid 1000 reached {denied} (udp {udp})"
            );
            assert!(
                logged_deny(&lab, "x/guarded", "no-rule-matched", None, denied),
                "no deny of {denied} in guarded's flow log: {:?}",
                lab.flow_log("x/guarded")
            );
        }
        // Inbound likewise, over both families and protocols: plain-b has no proxy, so
        // guarded's ingress policy alone refuses it, while plain-a gets in.
        for (protocol, port) in [(Protocol::Tcp, 80), (Protocol::Udp, 81)] {
            let dst = addr(&lab, "x/guarded", v6, port);
            assert!(lab
                .probe_addr("x/plain-a", dst, protocol, "x/guarded")
                .unwrap());
            let plain_a = addr(&lab, "x/plain-a", v6, port);
            assert!(lab
                .probe_addr("x/plain-b", plain_a, protocol, "x/plain-a")
                .unwrap());
            assert!(!lab
                .probe_addr("x/plain-b", dst, protocol, "x/guarded")
                .unwrap());
            let from = ip_of(&lab, "x/plain-b", v6);
            assert!(
                logged_deny(&lab, "x/guarded", "no-rule-matched", Some(from), dst),
                "no deny of {from} -> {dst} in guarded's flow log"
            );
        }
        // Nobody reaches the proxy's own ports in a pod, even where ingress is open
        // (pinger is not isolated): the proxy refuses and says why. The same port on a
        // pod without a proxy answers.
        let served = addr(&lab, "x/plain-b", v6, 7402);
        assert!(lab
            .probe_addr("x/plain-a", served, Protocol::Tcp, "x/plain-b")
            .unwrap());
        let open = addr(&lab, "x/pinger", v6, 80);
        assert!(lab
            .probe_addr("x/plain-a", open, Protocol::Tcp, "x/pinger")
            .unwrap());
        for port in [7401, 7402, 7403, 7490] {
            let dst = addr(&lab, "x/pinger", v6, port);
            let reached = lab
                .runtime()
                .block_on(agent::open(lab.netns("x/plain-a").unwrap(), dst));
            assert!(reached.is_err(), "plain-a reached {dst}");
            assert!(
                logged_deny(&lab, "x/pinger", "proxy-port", None, dst),
                "no proxy-port refusal of {dst} in pinger's flow log"
            );
        }
        // Nor does the pod's own app, which reaches the proxy's loopback listeners
        // unredirected; its own port on loopback answers it.
        let loopback = if v6 {
            IpAddr::from(Ipv6Addr::LOCALHOST)
        } else {
            Ipv4Addr::LOCALHOST.into()
        };
        let pinger = lab.netns("x/pinger").unwrap();
        let own_app = SocketAddr::new(loopback, 80);
        assert!(
            lab.runtime().block_on(agent::open(pinger, own_app)).is_ok(),
            "pinger's app did not reach its own {own_app}"
        );
        for port in [7401, 7403] {
            let dst = SocketAddr::new(loopback, port);
            let reached = lab.runtime().block_on(agent::open(pinger, dst));
            assert!(reached.is_err(), "pinger's app reached its proxy's {dst}");
            assert!(
                logged_deny(&lab, "x/pinger", "proxy-port", None, dst),
                "no proxy-port refusal of {dst} in pinger's flow log"
            );
        }
    }
}

/// `GET path` over HTTP/1.0 from inside `pod` to `dst`: the status code and the body, or
/// the error connecting.
fn http_get(lab: &Lab, pod: &str, dst: SocketAddr, path: &str) -> io::Result<(String, String)> {
    use std::io::{Read, Write};
    let request = format!("GET {path} HTTP/1.0\r\nHost: scrape\r\n\r\n");
    lab.netns(pod)
        .unwrap()
        .run(move || {
            let mut s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(request.as_bytes())?;
            let mut response = String::new();
            s.read_to_string(&mut response)?;
            let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
            let status = head.lines().next().unwrap_or_default();
            Ok((
                status.split(' ').nth(1).unwrap_or(status).to_owned(),
                body.to_owned(),
            ))
        })
        .unwrap()
}

#[test]
fn prometheus_scrapes_the_proxy_from_outside_the_pod_while_its_policy_refuses_the_rest() {
    let lab = lab(&["tests/lab/pair"]);
    // b admits only a on 80/TCP and 81/UDP. c scrapes b's metrics over both families, as
    // Prometheus would from another pod; only /metrics is served there.
    for v6 in [false, true] {
        let metrics = addr(&lab, "x/b", v6, 7491);
        let (status, body) = http_get(&lab, "x/c", metrics, "/metrics").unwrap();
        assert_eq!(status, "200", "{body}");
        assert!(body.contains("palisade_policy_version"), "{body}");
        let (status, body) = http_get(&lab, "x/c", metrics, "/policy").unwrap();
        assert_eq!(status, "404", "/policy is not served: {body}");
        assert!(body.contains("serves /metrics only"), "{body}");
        assert!(!body.contains("b-from-a"), "{body}");
        // The admin port stays the pod's own: the proxy takes the connection and closes it
        // without a word.
        let admin = addr(&lab, "x/b", v6, 7490);
        let answer = http_get(&lab, "x/c", admin, "/policy");
        assert!(
            answer.as_ref().is_err() || answer.as_ref().is_ok_and(|(s, _)| s.is_empty()),
            "c reached b's admin port {admin}: {answer:?}"
        );
        assert!(
            logged_deny(&lab, "x/b", "proxy-port", None, admin),
            "no proxy-port refusal of {admin} in b's flow log"
        );
        // The policy still refuses c everywhere else, with its reason; a still gets in.
        let app = addr(&lab, "x/b", v6, 80);
        assert!(!lab.probe_addr("x/c", app, Protocol::Tcp, "x/b").unwrap());
        assert!(
            logged_deny(
                &lab,
                "x/b",
                "no-rule-matched",
                Some(ip_of(&lab, "x/c", v6)),
                app
            ),
            "no deny of c -> {app} in b's flow log"
        );
        assert!(lab.probe_addr("x/a", app, Protocol::Tcp, "x/b").unwrap());
    }
    // The scrapes never met the pod's policy: no refusal of port 7491 was logged.
    assert!(
        !lab.flow_log("x/b")
            .iter()
            .any(|l| l["dst"].as_str().is_some_and(|d| d.ends_with(":7491"))),
        "{:?}",
        lab.flow_log("x/b")
    );
}

#[test]
fn a_flood_past_the_descriptor_limit_leaves_the_proxy_serving() {
    let mut lab = lab(&["tests/lab/pair"]);
    let limited = ProxyOptions {
        max_files: Some(64),
        ..options(&[]).proxy()
    };
    lab.start_proxy_with("x/b", &limited).unwrap();
    lab.wait_ready(Duration::from_secs(10)).unwrap();
    let b = SocketAddr::new(ip_of(&lab, "x/b", false), 80);
    let ns = lab.netns("x/a").unwrap();
    lab.runtime().block_on(async {
        // Each relayed connection costs the proxy two sockets and two pipes: 100 of them
        // are far past 64 descriptors. Held open, bounded in count and time.
        let opens =
            (0..100).map(|_| tokio::time::timeout(Duration::from_secs(1), agent::open(ns, b)));
        let held: Vec<_> = futures_util::future::join_all(opens)
            .await
            .into_iter()
            .filter_map(|r| r.ok()?.ok())
            .collect();
        assert!(
            held.len() < 100,
            "the limit must bite for this test to mean anything"
        );
        drop(held);
    });
    let recovered = eventually(Duration::from_secs(5), || {
        lab.probe("x/a", "x/b", 80, Protocol::Tcp).unwrap()
    });
    assert!(
        recovered.is_some(),
        "the proxy serves again once descriptors are free"
    );
    assert!(metric(&lab, "x/b", "palisade_listener_errors_total", &[]) >= 1.0);
    assert!(
        !lab.probe("x/c", "x/b", 80, Protocol::Tcp).unwrap(),
        "and still enforces"
    );
}

#[test]
fn clients_that_send_nothing_do_not_stall_the_proxy() {
    let lab = lab(&["tests/lab/pair"]);
    let b = SocketAddr::new(ip_of(&lab, "x/b", false), 80);
    let ns = lab.netns("x/a").unwrap();
    let silent: Vec<_> = (0..200)
        .filter_map(|_| {
            ns.run(move || std::net::TcpStream::connect_timeout(&b, Duration::from_secs(1)))
                .ok()?
                .ok()
        })
        .collect();
    assert!(
        silent.len() > 150,
        "the silent clients connected: {}",
        silent.len()
    );
    for _ in 0..5 {
        assert!(lab.probe("x/a", "x/b", 80, Protocol::Tcp).unwrap());
        assert!(!lab.probe("x/c", "x/b", 80, Protocol::Tcp).unwrap());
    }
    drop(silent);
}

/// A controller (TLS with the lab's certificate, any token) that sends one good policy,
/// then garbage, on every stream.
fn serve_bad_stream(lab: &Lab, pod: &str, then: &'static [u8]) -> io::Result<()> {
    use palisade_policy::compile::Compiler;
    use palisade_policy::wire::{self, Sent};
    let (ns, name) = pod.split_once('/').unwrap();
    let target = lab.cluster().pod(ns, name).unwrap();
    let compiler = Compiler::new(lab.cluster());
    let body = std::sync::Arc::new(compiler.body(target));
    let services = compiler
        .service_entries()
        .iter()
        .map(|(k, e)| wire::service(k, Some(e)))
        .collect();
    let update = Sent::default()
        .next(
            7,
            &body,
            |id| compiler.set(id).cloned(),
            |id| compiler.map(id).cloned(),
            services,
        )
        .unwrap();
    let good = wire::encode(&update);
    let credentials = lab.credentials();
    let mut tls =
        palisade_controller::tls::CertFiles::new(credentials.cert.clone(), credentials.key.clone())
            .map_err(io::Error::other)?
            .server_config();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tls = std::sync::Arc::new(tls);
    let node_ip = target.host_ips[0];
    let listener = lab
        .node()
        .run(move || std::net::TcpListener::bind((node_ip, 7443)))??;
    listener.set_nonblocking(true)?;
    let _inside = lab.runtime().enter();
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    lab.runtime().spawn(async move {
        use http_body_util::{BodyExt, Full};
        use hyper::service::service_fn;
        while let Ok((stream, _)) = listener.accept().await {
            let Ok(stream) = acceptor.accept(stream).await else {
                continue;
            };
            let good = good.clone();
            let service = service_fn(move |_req| {
                let mut body = good.clone();
                body.extend_from_slice(then);
                async move {
                    let mut r = hyper::Response::new(Full::new(bytes::Bytes::from(body)).boxed());
                    r.headers_mut().insert(
                        "content-type",
                        hyper::header::HeaderValue::from_static(wire::MEDIA_TYPE),
                    );
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    Ok(())
}

#[test]
fn a_controller_that_sends_garbage_changes_nothing() {
    let mut lab = lab(&["tests/lab/pair"]);
    lab.stop_controller();
    serve_bad_stream(
        &lab,
        "x/b",
        // A frame of five bytes that are not MessagePack.
        b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1",
    )
    .expect("the fake controller");
    let errors = eventually(Duration::from_secs(5), || {
        metric(
            &lab,
            "x/b",
            "palisade_policy_stream_errors_total",
            &["reason=\"malformed\""],
        ) >= 1.0
    });
    assert!(errors.is_some(), "the proxy notices the malformed message");
    for _ in 0..3 {
        assert!(lab.probe("x/a", "x/b", 80, Protocol::Tcp).unwrap());
        assert!(!lab.probe("x/c", "x/b", 80, Protocol::Tcp).unwrap());
    }
    assert!(lab.exited_proxies().is_empty(), "no proxy crashed");
    let (status, body) = lab.admin("x/b", "/policy").unwrap();
    assert_eq!(status, 200);
    let policy: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(policy["version"], 7, "the last good policy stays in force");
}

#[test]
fn a_port_allowed_only_under_l7_rules_refuses_what_it_cannot_judge() {
    let lab = lab(&["tests/lab/pair"]);
    lab.write_manifest(
        "zz-http.yaml",
        "apiVersion: palisade.dev/v1alpha1\nkind: PalisadePolicy\nmetadata: {name: b-http-from-c, namespace: x}\n\
         spec:\n  endpointSelector: {matchLabels: {app: b}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: c}}]\n    \
         toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{method: GET, path: \"/.*\"}]}}]\n",
    )
    .unwrap();
    let b = SocketAddr::new(ip_of(&lab, "x/b", false), 80);
    let ns = lab.netns("x/c").unwrap();
    // c is allowed to b only by HTTP rules: a real request passes, bytes that are not HTTP
    // are refused and logged (c was denied before the change, for another reason).
    let inspected = eventually(Duration::from_secs(3), || {
        lab.runtime().block_on(agent::probe_http(ns, b, "x/b"))
    });
    assert!(inspected.is_some(), "{:?}", lab.flow_log("x/b"));
    assert!(!lab.probe("x/c", "x/b", 80, Protocol::Tcp).unwrap());
    let line = logged(&lab, "x/b", |l| l["reason"] == "not-http");
    assert_eq!(line["action"], "deny");
    assert!(
        line["detail"]
            .as_str()
            .unwrap()
            .contains("neither HTTP/1 nor HTTP/2"),
        "{line}"
    );
    // a is allowed by an L4 rule on the same port: that allows the connection outright.
    assert!(lab.probe("x/a", "x/b", 80, Protocol::Tcp).unwrap());

    // TLS server names are not checked yet: a connection only they allow is refused.
    lab.write_manifest(
        "zz-http.yaml",
        "apiVersion: palisade.dev/v1alpha1\nkind: PalisadePolicy\nmetadata: {name: b-http-from-c, namespace: x}\n\
         spec:\n  endpointSelector: {matchLabels: {app: b}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: c}}]\n    \
         toPorts: [{ports: [{port: \"80\", protocol: TCP}], serverNames: [b.example]}]\n",
    )
    .unwrap();
    let refused = eventually(Duration::from_secs(3), || {
        assert!(!lab.probe("x/c", "x/b", 80, Protocol::Tcp).unwrap());
        lab.flow_log("x/b")
            .iter()
            .any(|l| l["reason"] == "l7-not-inspected")
    });
    assert!(refused.is_some(), "{:?}", lab.flow_log("x/b"));
    assert!(lab.probe("x/a", "x/b", 80, Protocol::Tcp).unwrap());
}

#[test]
fn before_its_first_policy_a_proxy_holds_new_flows_then_applies_its_fail_mode() {
    let mut lab = lab(&["tests/lab/pair"]);
    lab.stop_controller();
    let quick = ProxyOptions {
        hold: Duration::from_millis(300),
        ..options(&[]).proxy()
    };
    // No policy arrives: after the hold, fail closed denies even what the policy allows.
    lab.start_proxy_with("x/b", &quick).unwrap();
    assert!(!lab.probe("x/a", "x/b", 80, Protocol::Tcp).unwrap());
    // The flow log is written by a thread of its own: give it a moment.
    let logged = eventually(Duration::from_secs(2), || {
        lab.flow_log("x/b")
            .iter()
            .any(|l| l["reason"] == "no-policy" && l["action"] == "deny")
    });
    assert!(logged.is_some(), "{:?}", lab.flow_log("x/b"));
    // Fail open lets everything through, even what the policy would deny.
    let open = ProxyOptions {
        fail_open: true,
        ..quick
    };
    lab.start_proxy_with("x/b", &open).unwrap();
    assert!(lab.probe("x/c", "x/b", 80, Protocol::Tcp).unwrap());
    // A flow held while the policy is on its way is judged by it once it arrives.
    let patient = ProxyOptions {
        hold: Duration::from_secs(8),
        ..quick
    };
    lab.start_proxy_with("x/b", &patient).unwrap();
    let b = SocketAddr::new(ip_of(&lab, "x/b", false), 80);
    let held = lab
        .netns("x/a")
        .unwrap()
        .run(move || std::net::TcpStream::connect_timeout(&b, Duration::from_secs(2)))
        .unwrap()
        .expect("the proxy accepts the connection and holds it");
    std::thread::sleep(Duration::from_millis(300));
    lab.start_controller().unwrap();
    held.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    // The agent answers once the client has spoken (it tells raw probes from HTTP).
    std::io::Write::write_all(&mut &held, b"hello\n").unwrap();
    let mut name = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&held), &mut name).unwrap();
    assert_eq!(
        name.trim_end(),
        "x/b",
        "the held flow goes through once its policy allows it"
    );
}

#[test]
fn with_respect_injection_only_pods_that_ask_get_a_proxy() {
    let mut opts = options(&["tests/lab/injection"]);
    opts.respect_injection = true;
    let lab = Lab::start(opts).unwrap();
    let injected: Vec<&str> = lab.injected().iter().map(String::as_str).collect();
    assert_eq!(injected, ["inj/labelled", "plain/asks"]);
    // The pod without a proxy enforces nothing, as in a cluster: its deny-all is a gap
    // the lab shows, not a failure.
    assert!(lab
        .probe("inj/labelled", "plain/skipped", 80, Protocol::Tcp)
        .unwrap());
    assert!(!lab
        .probe("plain/skipped", "plain/asks", 80, Protocol::Tcp)
        .unwrap());
    assert!(!lab
        .probe("plain/skipped", "inj/labelled", 80, Protocol::Tcp)
        .unwrap());
    assert_as_simulated(&lab);
}

#[test]
fn nothing_in_the_lab_has_a_route_out() {
    let lab = lab(&["tests/lab/pair"]);
    // Asking the kernel for a route sends nothing anywhere.
    let route = lab
        .node()
        .command("ip")
        .args(["route", "get", "192.0.2.1"])
        .output()
        .unwrap();
    assert!(
        !route.status.success(),
        "the node has no route outside the lab"
    );
    assert!(String::from_utf8_lossy(&route.stderr).contains("unreachable"));
    let links = lab
        .node()
        .command("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    let names: Vec<String> = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter_map(|l| Some(l.split(": ").nth(1)?.split('@').next()?.to_owned()))
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n == "lo" || n == "br0" || n.starts_with('p')),
        "only loopback, the bridge and pod veths: {names:?}"
    );
}

#[test]
fn the_lab_command_prints_simulate_shaped_json_and_cleans_up_even_when_interrupted() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let out = Command::new(BINARY)
        .args(["lab", "tests/lab/pair", "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let flows = json["flows"].as_array().unwrap();
    assert_eq!(
        flows.len(),
        36,
        "3 pods, to each pod (itself included), 2 ports, IPv4 and IPv6"
    );
    let keys: Vec<&str> = flows[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["allowed", "egress", "family", "from", "ingress", "port", "protocol", "to"]
    );
    let denied: Vec<String> = flows
        .iter()
        .filter(|f| f["allowed"] == false)
        .map(|f| format!("{} {} {} {}", f["from"], f["to"], f["port"], f["family"]))
        .collect();
    assert_eq!(
        denied,
        [
            "\"x/c\" \"x/b\" 80 \"IPv4\"",
            "\"x/c\" \"x/b\" 80 \"IPv6\"",
            "\"x/c\" \"x/b\" 81 \"IPv4\"",
            "\"x/c\" \"x/b\" 81 \"IPv6\""
        ]
    );

    let mut child = Command::new(BINARY)
        .args(["lab", "tests/lab/pair", "--keep"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !line.contains("up until Ctrl-C") && Instant::now() < deadline {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
    }
    assert!(line.contains("up until Ctrl-C"), "the lab came up: {line}");
    let ours = || {
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&list.stdout)
            .lines()
            .filter(|l| l.starts_with(&format!("plab-{pid}-")))
            .count()
    };
    assert_eq!(ours(), 4, "a node and three pods");
    // SAFETY: kill(2) with a child's pid.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(ours(), 0, "every namespace is removed on Ctrl-C");
    assert!(!std::env::temp_dir()
        .join(format!("palisade-lab-{pid}-0"))
        .exists());
}
