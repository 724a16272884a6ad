//! `palisade flows` against a cluster: the controller replicas come from their Leases, each
//! is reached by a port-forward through the Kubernetes API (the project's test API server,
//! with the real kube client, the WebSocket streaming protocol included), and their flows
//! are merged: each replica keeps only its own proxies' flows.

#[path = "../controller/tests/fakeapi/mod.rs"]
#[allow(dead_code)]
mod fakeapi;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fakeapi::FakeApi;
use palisade_controller::flows::{serve, Directory, Limits, Window};
use palisade_policy::flows::{FlowBatch, FlowRecord};
use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_palisade");
const NAMESPACE: &str = "palisade-system";

fn lease(pod: &str, renewed: SystemTime) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": format!("replica-{pod}"), "namespace": NAMESPACE,
                        "labels": {"palisade.dev/controller-replica": "true"}},
           "spec": {"holderIdentity": pod, "leaseDurationSeconds": 30,
                    "renewTime": humantime::format_rfc3339_micros(renewed).to_string()}})
}

fn record(action: &str, port: u16) -> FlowRecord {
    serde_json::from_value(json!({
        "time": "2026-01-01T00:00:00.000Z", "direction": "egress", "action": action,
        "protocol": "TCP", "src": "10.0.0.1:40000", "dst": format!("10.0.0.2:{port}"),
        "reason": "no-rule-matched"}))
    .unwrap()
}

/// A replica's flows server holding one record from `pod`'s proxy, on loopback.
async fn replica(pod: &str, action: &str, port: u16) -> SocketAddr {
    let window = Arc::new(Window::new(Limits::default()));
    let batch = FlowBatch {
        records: vec![record(action, port)],
        dropped: 0,
    };
    window.add(pod, batch, &Directory::default(), SystemTime::now());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, window));
    addr
}

/// Runs the CLI with a kubeconfig for the test API server.
async fn palisade(kubeconfig: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let (kubeconfig, args) = (
        kubeconfig.to_owned(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    tokio::task::spawn_blocking(move || {
        let out = Command::new(BINARY)
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_merges_every_live_replica_through_port_forwards() {
    let api = FakeApi::start().await;
    let now = SystemTime::now();
    // Two live replicas and one whose Lease lapsed ten minutes ago: it is not asked.
    for (pod, ago, action, port) in [
        ("ctl-0", 1, "deny", 80),
        ("ctl-1", 2, "would-deny", 5432),
        ("ctl-gone", 600, "deny", 9999),
    ] {
        api.put(lease(pod, now - Duration::from_secs(ago)));
        let served = replica(&format!("shop/app-{pod}"), action, port).await;
        api.forward(NAMESPACE, pod, 9091, served);
    }
    let dir = std::env::temp_dir().join(format!("palisade-flows-kube-{}", std::process::id()));
    let kubeconfig = api.kubeconfig(&dir);

    let (code, out, err) = palisade(&kubeconfig, &["flows", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let mut got: Vec<(String, String)> = out
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            (
                r["pod"].as_str().unwrap().to_owned(),
                r["dst"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("shop/app-ctl-0".into(), "10.0.0.2:80".into()),
            ("shop/app-ctl-1".into(), "10.0.0.2:5432".into()),
        ],
        "both live replicas' flows, merged; none from the lapsed one"
    );
    let forwards: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.contains("/portforward"))
        .collect();
    assert_eq!(forwards.len(), 2, "{forwards:?}");
    assert!(forwards.iter().all(|r| r
        .starts_with(&format!("GET /api/v1/namespaces/{NAMESPACE}/pods/ctl-"))
        && r.ends_with("ports=9091")));

    // Filters go to every replica.
    let (code, out, _) = palisade(&kubeconfig, &["flows", "--verdict", "would-deny"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("10.0.0.2 5432/TCP WOULD-DENY"), "{out}");

    // A namespace without replicas says so.
    let (code, _, err) = palisade(
        &kubeconfig,
        &["flows", "--controller-namespace", "elsewhere"],
    )
    .await;
    assert_eq!(code, 2);
    assert!(
        err.contains("no live controller replica in namespace elsewhere"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
