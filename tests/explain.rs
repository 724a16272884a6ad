//! `palisade explain NS/POD PATH...` on the three-tier example: the pod's policies and
//! rules in words, and its flows exactly as `simulate` judges them.

mod cli;

use std::collections::BTreeSet;

use cli::{palisade, stdout};
use serde_json::Value;

#[test]
fn the_frontend_in_words() {
    let out = palisade(&["explain", "production/frontend", "examples/three-tier"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for expected in [
        "production/frontend (10.10.1.20, on node 192.168.56.11)\nenforce mode; injected (palisade.dev/inject)\n",
        "egress: isolated by production/allow-dns, production/default-deny, production/frontend-egress\n  it may reach:\n",
        "    - pods k8s-app=kube-dns in namespaces kubernetes.io/metadata.name=kube-system (now: kube-system/coredns) on 53/UDP, 53/TCP\n      NetworkPolicy production/allow-dns rule 0 (examples/three-tier/policies.yaml:",
        "    - pods app=api in namespace production (now: production/api) on 8080/TCP\n",
        "  production/default-deny allows nothing by itself; it isolates production/frontend\n",
        "ingress: isolated by production/default-deny, production/frontend-ingress\n  may reach it:\n    - every pod in namespaces kubernetes.io/metadata.name=ingress-nginx (now: ingress-nginx/controller) on 80/TCP\n",
        "  to\n    ingress-nginx/controller  80/TCP X  443/TCP X\n    kube-system/coredns       53/TCP .  53/UDP .\n    production/api            8080/TCP .\n    production/postgres       5432/TCP X\n",
        "  from\n    ingress-nginx/controller  80/TCP .\n    kube-system/coredns       80/TCP X\n",
    ] {
        assert!(text.contains(expected), "missing:\n{expected}\nin:\n{text}");
    }
}

#[test]
fn a_pod_no_policy_selects_is_open_both_ways() {
    let text = stdout(&palisade(&[
        "explain",
        "kube-system/coredns",
        "examples/three-tier",
    ]));
    assert!(
        text.contains("egress: not isolated: it may reach every address on every port\n"),
        "{text}"
    );
    assert!(
        text.contains("ingress: not isolated: every address may reach it on every port\n"),
        "{text}"
    );
    assert!(text.contains("NOT injected"), "{text}");
}

#[test]
fn http_rules_are_spelt_out() {
    let text = stdout(&palisade(&[
        "explain",
        "production/api",
        "examples/seed-patterns",
    ]));
    assert!(
        text.contains("on 8080/TCP (only HTTP GET /api/v1/.*; POST /api/v1/orders)\n      CiliumNetworkPolicy production/api-l7-policy rule 0"),
        "{text}"
    );
}

/// `from -> to PROTO/port allowed?` for a simulate-shaped flow.
fn key(f: &Value) -> String {
    format!("{} {}", cli::flow_key(f), f["allowed"])
}

#[test]
fn its_flows_are_simulates_flows_from_and_to_it() {
    for pod in ["production/api", "ingress-nginx/controller"] {
        let doc: Value = serde_json::from_str(&stdout(&palisade(&[
            "explain",
            pod,
            "examples/three-tier",
            "-o",
            "json",
        ])))
        .unwrap();
        assert_eq!(doc["pod"], pod);
        let mine: BTreeSet<String> = doc["flows"].as_array().unwrap().iter().map(key).collect();
        let sim: Value = serde_json::from_str(&stdout(&palisade(&[
            "simulate",
            "examples/three-tier",
            "-o",
            "json",
        ])))
        .unwrap();
        let expected: BTreeSet<String> = sim["flows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["from"] == pod || f["to"] == pod)
            .map(key)
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(mine, expected, "{pod}");
    }
}

#[test]
fn an_unknown_pod_is_bad_input_with_the_pods_listed() {
    let out = palisade(&["explain", "production/nope", "examples/three-tier"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no pod production/nope in the manifests"),
        "{err}"
    );
    assert!(err.contains("production/frontend"), "{err}");
}
