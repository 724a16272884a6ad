//! `palisade check`: exit 0 allowed, 1 denied, 2 bad input; the explanation names the
//! policy and rule that decided. Fixture: tests/check-input/shop.yaml.

use std::process::{Command, Output};

fn check(args: &[&str]) -> (Option<i32>, String) {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["check", "tests/check-input"])
        .args(args)
        .output()
        .expect("run palisade");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "no errors or notices expected: {stderr}");
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

const TO_API: [&str; 6] = [
    "--from",
    "shop/frontend",
    "--to",
    "shop/api",
    "--port",
    "http",
];

#[test]
fn http_rule_allows_a_matching_request() {
    let (code, out) = check(
        &[
            &TO_API[..],
            &["--method", "GET", "--path", "/api/v1/orders"],
        ]
        .concat(),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("allowed by PalisadePolicy shop/api-l7, ingress rule 0, peer 0, http rule 0"),
        "{out}"
    );
    let (code, out) = check(
        &[
            &TO_API[..],
            &["--method", "POST", "--path", "/api/v1/orders"],
        ]
        .concat(),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("http rule 1"), "{out}");
}

#[test]
fn http_rule_denies_other_methods_and_paths() {
    for (method, path) in [
        ("DELETE", "/api/v1/orders"),
        ("POST", "/api/v1/orders/7"),
        ("GET", "/admin"),
    ] {
        let (code, out) = check(&[&TO_API[..], &["--method", method, "--path", path]].concat());
        assert_eq!(code, Some(1), "{method} {path}: {out}");
        assert!(out.contains("ingress of shop/api: DENIED"), "{out}");
    }
}

#[test]
fn a_peer_the_rule_does_not_name_is_denied_at_l4() {
    let (code, out) = check(&[
        "--from",
        "shop/ci-runner",
        "--to",
        "shop/api",
        "--port",
        "8080",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("rule 0: pods app=frontend in namespace shop; 8080/TCP: peer does not match"),
        "{out}"
    );
}

#[test]
fn connection_allowed_only_under_l7_conditions_says_so() {
    let (code, out) = check(&TO_API);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("only with L7 conditions"), "{out}");
}

#[test]
fn fqdn_rule_needs_the_resolved_name() {
    let to_github = [
        "--from",
        "shop/ci-runner",
        "--to",
        "140.82.112.3",
        "--port",
        "443",
    ];
    let (code, out) = check(&[&to_github[..], &["--host", "API.github.com."]].concat());
    assert_eq!(
        code,
        Some(0),
        "names compare case-insensitively without the trailing dot: {out}"
    );
    let (code, _) = check(&[&to_github[..], &["--host", "raw.githubusercontent.com"]].concat());
    assert_eq!(code, Some(0), "*.githubusercontent.com matches one label");
    let (code, _) = check(&[&to_github[..], &["--host", "a.b.githubusercontent.com"]].concat());
    assert_eq!(code, Some(1), "* does not span labels");
    let (code, out) = check(&to_github);
    assert_eq!(
        code,
        Some(1),
        "an address resolved from no allowed name is denied: {out}"
    );
    let (code, _) = check(&[
        "--from",
        "shop/ci-runner",
        "--to",
        "140.82.112.3",
        "--port",
        "80",
        "--host",
        "api.github.com",
    ]);
    assert_eq!(code, Some(1), "the rule's port still applies");
}

#[test]
fn a_service_address_is_judged_against_its_backend() {
    let (code, out) = check(&[
        "--from",
        "shop/frontend",
        "--to",
        "10.96.0.10",
        "--port",
        "80",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("10.96.0.10 is Service shop/api"), "{out}");
    // targetPort `http` resolves to the backend pod's container port 8080.
    assert!(
        out.contains("-> shop/api (10.20.0.1) port 8080/TCP"),
        "{out}"
    );
}

#[test]
fn traffic_from_the_node_and_to_itself_is_always_allowed() {
    let (code, out) = check(&[
        "--from",
        "192.168.20.1",
        "--to",
        "shop/api",
        "--port",
        "8080",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("the pod's own node"), "{out}");
    let (code, out) = check(&["--from", "shop/api", "--to", "shop/api", "--port", "8080"]);
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn json_output_carries_the_verdict_and_each_side() {
    let (code, out) = check(
        &[
            &TO_API[..],
            &["--method", "DELETE", "--path", "/", "-o", "json"],
        ]
        .concat(),
    );
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let a = &v[0];
    assert_eq!(a["allowed"], false);
    assert_eq!(a["action"], "deny");
    assert_eq!(a["ingress"]["action"], "deny");
    assert_eq!(a["egress"]["action"], "allow");
    assert_eq!(a["ingress"]["policies"][0]["name"], "shop/api-l7");
}

#[test]
fn bad_arguments_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args([
            "check",
            "tests/check-input",
            "--from",
            "shop/frontend",
            "--to",
            "shop/api",
            "--port",
            "nope",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("declares no TCP port named \"nope\""));
}

/// `check` on the dual-stack conformance model with case 041 (x/a may reach 0.0.0.0/4
/// only: every IPv4 pod but x/b, no IPv6 address).
fn check_dual_stack(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args([
            "check",
            "tests/conformance/model.yaml",
            "tests/conformance/cases/041-egress-ipblock-except.yaml",
            "--from",
            "x/a",
            "--port",
            "80",
        ])
        .args(args)
        .output()
        .expect("run palisade");
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn a_dual_stack_pod_named_by_name_is_judged_over_each_family() {
    let (code, out) = check_dual_stack(&["--to", "y/a"]);
    assert_eq!(code, Some(1), "denied over IPv6: {out}");
    assert!(
        out.contains("x/a (10.1.1.1) -> y/a (10.1.2.1) port 80/TCP")
            && out.contains("x/a (fd00:1::1:1) -> y/a (fd00:1::2:1) port 80/TCP"),
        "{out}"
    );
    let verdicts: Vec<&str> = out.lines().filter(|l| l.starts_with("verdict:")).collect();
    assert_eq!(verdicts, ["verdict: allowed", "verdict: DENIED"], "{out}");
    // Named by one of its addresses, a pod is judged over that one only.
    let (code, out) = check_dual_stack(&["--to", "10.1.2.1"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("fd00"), "{out}");
    let (code, _) = check_dual_stack(&["--to", "fd00:1::2:1"]);
    assert_eq!(code, Some(1));
}

/// `check --host` judges toFQDNs rules as if the source resolved the name to the
/// destination, with the proxy's matching, and names the DNS name that allowed it.
#[test]
fn host_names_the_dns_name_that_allowed_an_address() {
    let run = |args: &[&str]| {
        let out: Output = Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args([
                "check",
                "tests/lab/fqdn",
                "--from",
                "shop/client",
                "--port",
                "443",
            ])
            .args(args)
            .output()
            .expect("run palisade");
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    let (code, out) = run(&["--to", "203.0.113.10", "--host", "API.GitHub.com."]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("(DNS name api.github.com)"), "{out}");
    let (code, out) = run(&["--to", "203.0.113.30", "--host", "one.wild.test"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("(DNS name one.wild.test)"), "{out}");
    // One label deeper than *.wild.test allows, no name at all, another port: denied.
    let (code, out) = run(&["--to", "203.0.113.31", "--host", "x.y.wild.test"]);
    assert_eq!(code, Some(1), "{out}");
    let (code, out) = run(&["--to", "203.0.113.10"]);
    assert_eq!(code, Some(1), "{out}");
}
