//! End-to-end: labs of real network namespaces, iptables, proxies and a controller. Each
//! test builds its own lab (unique names, removed on drop, even when the test fails) and
//! checks what a user would: what gets through, what does not, what the proxy logs and
//! counts. Needs root, iptables and setpriv (scripts/test installs what is missing).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

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

/// A metric's value from a proxy's /metrics, summed over label sets containing `labels`.
fn metric(lab: &Lab, pod: &str, name: &str, labels: &[&str]) -> f64 {
    let (status, body) = lab.admin(pod, "/metrics").expect("admin server");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The first line of a pod's flow log that `matches`, waiting a little for the proxy's
/// flow log thread, which writes after the verdict.
fn logged(lab: &Lab, pod: &str, matches: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let mut found = None;
    eventually(Duration::from_secs(2), || {
        found = lab.flow_log(pod).into_iter().find(&matches);
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no such line in {pod}'s flow log: {:?}", lab.flow_log(pod)))
}

/// Polls `check` every 20 ms until it holds or `within` passes; the time it took.
fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
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

#[test]
fn bypass_attempts_fail() {
    let lab = lab(&["tests/lab/pair"]);
    let b4 = ip_of(&lab, "x/b", false);
    let b6 = ip_of(&lab, "x/b", true);
    // Another uid than the proxy's gets no way around it, whatever the port looks like.
    for port in [80, 7401, 7402, 7403, 7490] {
        assert!(
            !connect_as(&lab, "x/c", 1000, SocketAddr::new(b4, port), false),
            "uid 1000 to b:{port}"
        );
    }
    assert!(
        !connect_as(&lab, "x/c", 1000, SocketAddr::new(b4, 81), true),
        "uid 1000, UDP"
    );
    // IPv6 is enforced like IPv4: denied for c, allowed for a.
    assert!(!lab
        .probe_addr("x/c", SocketAddr::new(b6, 80), Protocol::Tcp, "x/b")
        .unwrap());
    assert!(!lab
        .probe_addr("x/c", SocketAddr::new(b6, 81), Protocol::Udp, "x/b")
        .unwrap());
    assert!(lab
        .probe_addr("x/a", SocketAddr::new(b6, 80), Protocol::Tcp, "x/b")
        .unwrap());
    assert!(lab
        .probe_addr("x/a", SocketAddr::new(b6, 81), Protocol::Udp, "x/b")
        .unwrap());
    // UDP to a denied peer is dropped.
    assert!(!lab.probe("x/c", "x/b", 81, Protocol::Udp).unwrap());
    // The proxy's own ports cannot be reached from another pod, even where ingress is open
    // (a is not isolated): nobody gets to speak to a listener directly.
    let a4 = ip_of(&lab, "x/a", false);
    for port in [7401, 7402, 7403, 7490] {
        let reached = lab.runtime().block_on(agent::open(
            lab.netns("x/c").unwrap(),
            SocketAddr::new(a4, port),
        ));
        assert!(reached.is_err(), "c reached a's proxy port {port}");
    }
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

/// A controller that sends one good policy, then garbage, on every stream.
fn serve_bad_stream(lab: &Lab, pod: &str, then: &'static [u8]) -> io::Result<()> {
    use palisade_policy::compile::Compiler;
    use palisade_policy::compiled::Versioned;
    let (ns, name) = pod.split_once('/').unwrap();
    let target = lab.cluster().pod(ns, name).unwrap();
    let policy = Compiler::new(lab.cluster()).compile(target);
    let mut good = serde_json::to_vec(&Versioned { version: 7, policy }).unwrap();
    good.push(b'\n');
    let node_ip = target.host_ips[0];
    let listener = lab
        .node()
        .run(move || std::net::TcpListener::bind((node_ip, 7443)))??;
    listener.set_nonblocking(true)?;
    let _inside = lab.runtime().enter();
    let listener = tokio::net::TcpListener::from_std(listener)?;
    lab.runtime().spawn(async move {
        use http_body_util::{BodyExt, Full};
        use hyper::service::service_fn;
        while let Ok((stream, _)) = listener.accept().await {
            let good = good.clone();
            let service = service_fn(move |_req| {
                let mut body = good.clone();
                body.extend_from_slice(then);
                async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        Full::new(bytes::Bytes::from(body)).boxed(),
                    ))
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
        b"{\"version\": 8, \"policy\": \"not a policy\"}\nthis is not json\n",
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
fn a_port_allowed_only_under_http_rules_is_refused_until_content_is_inspected() {
    let lab = lab(&["tests/lab/pair"]);
    lab.write_manifest(
        "zz-http.yaml",
        "apiVersion: palisade.dev/v1alpha1\nkind: PalisadePolicy\nmetadata: {name: b-http-from-c, namespace: x}\n\
         spec:\n  endpointSelector: {matchLabels: {app: b}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: c}}]\n    \
         toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{method: GET, path: \"/.*\"}]}}]\n",
    )
    .unwrap();
    // c is allowed to b only by HTTP rules, which the proxy does not inspect yet: refused,
    // never let through whole. (c was denied before the change too, for another reason.)
    let refused = eventually(Duration::from_secs(3), || {
        assert!(!lab.probe("x/c", "x/b", 80, Protocol::Tcp).unwrap());
        lab.flow_log("x/b")
            .iter()
            .any(|l| l["reason"] == "l7-not-inspected")
    });
    assert!(
        refused.is_some(),
        "the refusal is logged with its reason: {:?}",
        lab.flow_log("x/b")
    );
    assert!(!lab.probe("x/c", "x/b", 80, Protocol::Tcp).unwrap());
    // a is allowed by an L4 rule on the same port: that allows the connection outright.
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
    assert_eq!(flows.len(), 12, "3 pods, 2 others each, 2 ports");
    let keys: Vec<&str> = flows[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["allowed", "egress", "from", "ingress", "port", "protocol", "to"]
    );
    let denied: Vec<String> = flows
        .iter()
        .filter(|f| f["allowed"] == false)
        .map(|f| format!("{} {}", f["from"], f["port"]))
        .collect();
    assert_eq!(denied, ["\"x/c\" 80", "\"x/c\" 81"]);

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
