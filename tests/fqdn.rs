//! End-to-end: FQDN egress in a lab with a real DNS server (dnsmasq) behind the cluster's
//! DNS Service, hosts outside the cluster (LabHosts), and apps that resolve names with
//! glibc (Python's getaddrinfo, the pod's resolv.conf and search list) and then connect,
//! as real apps do. Every refusal stands next to a control that passes, and is checked by
//! the proxy's reason in the flow log. Needs root, iptables, setpriv, dnsmasq, python3.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

mod common;

use common::{eventually, flows, logged, metric};
use palisade::lab::{Lab, LabOptions};

const BINARY: &str = env!("CARGO_BIN_EXE_palisade");

/// An app: resolves NAME with getaddrinfo, connects to PORT (at ADDRESS if given, else the
/// first address), sends a TLS ClientHello naming SNI (OpenSSL's, from Python's ssl) or a
/// raw hello line, and prints what it saw as JSON.
const APP: &str = r#"
import json, socket, ssl, sys
name, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
addr = sys.argv[4] if len(sys.argv) > 4 else None
out = {}
try:
    infos = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)
    out["addresses"] = sorted({i[4][0] for i in infos})
except socket.gaierror as e:
    out["error"] = "resolve: %s" % e
    print(json.dumps(out)); sys.exit(0)
if mode == "resolve":
    print(json.dumps(out)); sys.exit(0)
try:
    s = socket.create_connection((addr or out["addresses"][0], port), timeout=3)
    if mode.startswith("tls:"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname=mode[4:])
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        s.sendall(outgoing.read())
    elif mode.startswith("http:"):
        s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % mode[5:]).encode())
    else:
        s.sendall(b"hello\n")
    out["reply"] = s.recv(200).split(b"\n")[0].decode("latin1")
except OSError as e:
    out["error"] = "connect: %s" % e
print(json.dumps(out))
"#;

fn lab() -> Lab {
    Lab::start(LabOptions {
        paths: vec![PathBuf::from("tests/lab/fqdn")],
        respect_injection: false,
        binary: PathBuf::from(BINARY),
        hold: Duration::from_secs(2),
        log_allowed: true,
        dns_grace: Duration::from_secs(2),
    })
    .expect("building the lab (needs root, dnsmasq)")
}

/// Runs the app in `pod` with `args` (and environment `env`); its JSON.
fn app(lab: &Lab, pod: &str, env: &[(&str, &str)], args: &[&str]) -> serde_json::Value {
    let out: Output = lab
        .command(pod, "python3")
        .unwrap()
        .arg("-c")
        .arg(APP)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("python3");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "app in {pod} {args:?}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn reply(v: &serde_json::Value) -> &str {
    v["reply"].as_str().unwrap_or("")
}

fn addresses(v: &serde_json::Value) -> Vec<String> {
    v["addresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn fqdn_egress_end_to_end() {
    let lab = lab();
    let client = "shop/client";

    // The proxy resolved the policy's matchName names itself, before any app asked.
    assert!(
        eventually(Duration::from_secs(10), || {
            lab.admin(client, "/dns")
                .is_ok_and(|(_, body)| body.contains("api.github.com"))
        })
        .is_some(),
        "api.github.com in the cache: {:?}",
        lab.admin(client, "/dns")
    );

    // An allowed name: reachable on 443, not on 80, and the flow log names the name.
    let ok = app(&lab, client, &[], &["api.github.com", "443", "raw"]);
    assert_eq!(addresses(&ok), ["203.0.113.10"], "{ok}");
    assert_eq!(reply(&ok), "labhost/github", "{ok}");
    let line = logged(&lab, client, |l| {
        l["dst"] == "203.0.113.10:443" && l["action"] == "allow" && l["fqdn"].is_string()
    });
    assert_eq!(line["fqdn"], "api.github.com");
    // The flow record the proxy reported carries the name, and `palisade flows` filters by it.
    let dir = lab.workdir().to_str().unwrap().to_owned();
    let mut named = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            named = flows(&dir, &["--name", "api.github.com"]);
            !named.is_empty()
        })
        .is_some(),
        "no flow named api.github.com: {:?}",
        flows(&dir, &[])
    );
    assert!(
        named.iter().all(|r| r["name"] == "api.github.com"
            && r["dst"] == "203.0.113.10:443"
            && r["action"] == "allow"),
        "{named:?}"
    );
    assert!(
        !flows(&dir, &["--name", "**.github.com"]).is_empty(),
        "a pattern matches it too"
    );
    assert!(flows(&dir, &["--name", "*.wild.test"]).is_empty());
    let text = std::process::Command::new(BINARY)
        .args(["flows", "--lab", &dir, "--name", "api.github.com"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("ALLOW (egress of shop/client"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    assert!(
        String::from_utf8_lossy(&text.stdout).contains(" name api.github.com"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    let port80 = app(&lab, client, &[], &["api.github.com", "80", "raw"]);
    assert_eq!(reply(&port80), "", "{port80}");
    logged(&lab, client, |l| {
        l["dst"] == "203.0.113.10:80" && l["action"] == "deny" && l["reason"] == "no-rule-matched"
    });

    // A wildcard within one label, and a leading **. across several.
    assert_eq!(
        reply(&app(&lab, client, &[], &["one.wild.test", "443", "raw"])),
        "labhost/wild"
    );
    assert_eq!(
        reply(&app(&lab, client, &[], &["a.b.deep.test", "443", "raw"])),
        "labhost/wild"
    );
    let nested = app(&lab, client, &[], &["x.y.wild.test", "443", "raw"]);
    assert_eq!(addresses(&nested), ["203.0.113.31"], "resolved, {nested}");
    assert_eq!(reply(&nested), "", "*.wild.test is one label: {nested}");
    logged(&lab, client, |l| {
        l["dst"] == "203.0.113.31:443" && l["action"] == "deny"
    });

    // A CNAME chain: the alias is allowed, the address at the chain's end is reached.
    let chain = app(&lab, client, &[], &["www.shop.test", "443", "raw"]);
    assert_eq!(addresses(&chain), ["203.0.113.40"], "{chain}");
    assert_eq!(reply(&chain), "labhost/edge", "{chain}");
    let line = logged(&lab, client, |l| {
        l["dst"] == "203.0.113.40:443" && l["action"] == "allow"
    });
    assert_eq!(line["fqdn"], "www.shop.test");
    // Flows allowed through another name carry that name, and the filter tells them apart.
    assert!(
        eventually(Duration::from_secs(10), || {
            flows(&dir, &["--name", "*.wild.test"])
                .iter()
                .any(|r| r["name"] == "one.wild.test" && r["dst"] == "203.0.113.30:443")
        })
        .is_some(),
        "{:?}",
        flows(&dir, &[])
    );
    // A refused flow was allowed by no name.
    assert!(flows(&dir, &["--verdict", "denied"])
        .iter()
        .all(|r| r["name"].is_null()));

    // DNS over TCP (glibc's use-vc), through the DNS Service to the DNS pod.
    let tcp = app(
        &lab,
        client,
        &[("RES_OPTIONS", "use-vc")],
        &["one.wild.test", "443", "resolve"],
    );
    assert_eq!(addresses(&tcp), ["203.0.113.30"], "{tcp}");
    let line = logged(&lab, client, |l| {
        l["query"] == "one.wild.test" && l["protocol"] == "TCP"
    });
    assert_eq!(line["service"], "kube-system/kube-dns", "{line}");

    // A UDP answer too large for 512 bytes comes truncated; glibc asks again over TCP, and
    // the proxy learns all 40 addresses from that answer.
    let many = app(
        &lab,
        client,
        &[],
        &["many.test", "443", "raw", "198.51.100.40"],
    );
    assert_eq!(addresses(&many).len(), 40, "{many}");
    assert_eq!(reply(&many), "labhost/many", "{many}");
    logged(&lab, client, |l| {
        l["query"] == "many.test" && l["protocol"] == "UDP"
    });
    logged(&lab, client, |l| {
        l["query"] == "many.test" && l["protocol"] == "TCP"
    });

    // Two names share one address; the rule requires SNI: the allowed name passes, the
    // other is refused, at the same address, on the same connection shape.
    let allowed = app(
        &lab,
        client,
        &[],
        &["allowed.cdn.test", "443", "tls:allowed.cdn.test"],
    );
    assert_eq!(reply(&allowed), "labhost/cdn", "{allowed}");
    let other = app(
        &lab,
        client,
        &[],
        &["other.cdn.test", "443", "tls:other.cdn.test"],
    );
    assert_eq!(addresses(&other), ["203.0.113.20"], "{other}");
    assert_eq!(reply(&other), "", "{other}");
    let line = logged(&lab, client, |l| l["reason"] == "sni-not-allowed");
    assert_eq!(line["sni"], "other.cdn.test", "{line}");
    assert!(
        metric(
            &lab,
            client,
            "palisade_sni_checks_total",
            &["action=\"deny\""]
        ) >= 1.0
    );
    // Plain HTTP at that address must name an allowed name in its Host.
    let http_ok = app(
        &lab,
        client,
        &[],
        &["allowed.cdn.test", "443", "http:allowed.cdn.test"],
    );
    assert!(reply(&http_ok).starts_with("HTTP/1.1 200"), "{http_ok}");
    let http_other = app(
        &lab,
        client,
        &[],
        &["allowed.cdn.test", "443", "http:other.cdn.test"],
    );
    assert!(
        reply(&http_other).starts_with("HTTP/1.1 403"),
        "{http_other}"
    );
    let line = logged(&lab, client, |l| {
        l["host"] == "other.cdn.test" && l["status"] == 403
    });
    assert_eq!(line["action"], "deny", "{line}");

    // Once TTL (1 s) and grace (2 s) ran out, the shared address is refused to a name the
    // app still holds; resolving the allowed name again lets it through again.
    std::thread::sleep(Duration::from_secs(4));
    let stale = app(
        &lab,
        client,
        &[],
        &["localhost", "443", "tls:allowed.cdn.test", "203.0.113.20"],
    );
    assert_eq!(reply(&stale), "", "{stale}");
    logged(&lab, client, |l| {
        l["dst"] == "203.0.113.20:443" && l["action"] == "deny" && l["reason"] == "no-rule-matched"
    });
    let again = app(
        &lab,
        client,
        &[],
        &["allowed.cdn.test", "443", "tls:allowed.cdn.test"],
    );
    assert_eq!(reply(&again), "labhost/cdn", "{again}");

    // DNS rules: a Service of shop and api.github.com resolve (through the search list for
    // the short name); another name gets NXDOMAIN at once, with the proxy's reason.
    let restricted = "shop/restricted";
    let svc = app(&lab, restricted, &[], &["backend", "8080", "resolve"]);
    assert_eq!(addresses(&svc), ["10.96.1.20"], "{svc}");
    let gh = app(&lab, restricted, &[], &["api.github.com", "443", "raw"]);
    assert_eq!(reply(&gh), "labhost/github", "{gh}");
    let refused = app(&lab, restricted, &[], &["one.wild.test.", "443", "resolve"]);
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("resolve")),
        "{refused}"
    );
    let line = logged(&lab, restricted, |l| {
        l["query"] == "one.wild.test" && l["action"] == "deny"
    });
    assert_eq!(line["rcode"], "NXDomain", "{line}");
    assert!(
        metric(
            &lab,
            restricted,
            "palisade_dns_queries_total",
            &["verdict=\"refused\""]
        ) >= 1.0
    );

    // The DNS trap: egress denied with no DNS rule; the lookup fails, and the flow log
    // says why. The control: the same lookup from shop/client above succeeded.
    let trapped = app(
        &lab,
        "locked/lockdown",
        &[],
        &["api.github.com.", "443", "resolve"],
    );
    assert!(
        trapped["error"]
            .as_str()
            .is_some_and(|e| e.contains("resolve")),
        "{trapped}"
    );
    let line = logged(&lab, "locked/lockdown", |l| l["query"] == "api.github.com");
    assert_eq!(line["action"], "deny");
    assert_eq!(line["reason"], "no-rule-matched");
    assert!(
        line["detail"]
            .as_str()
            .is_some_and(|d| d.contains("cannot resolve names")),
        "{line}"
    );

    // Visibility: the cache is listed, queries and names are counted.
    let (_, cache) = lab.admin(client, "/dns").unwrap();
    for name in ["api.github.com", "www.shop.test", "edge.test", "many.test"] {
        assert!(cache.contains(name), "{name} in {cache}");
    }
    assert!(
        metric(
            &lab,
            client,
            "palisade_dns_queries_total",
            &["verdict=\"allowed\""]
        ) >= 6.0
    );
    assert!(metric(&lab, client, "palisade_dns_names", &[]) >= 4.0);
}
