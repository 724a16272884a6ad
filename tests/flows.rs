//! `palisade flows` against a cluster: the controller replicas come from their Leases, each
//! is reached by a port-forward through the Kubernetes API (the project's test API server,
//! with the real kube client, the WebSocket streaming protocol included), and their flows
//! are merged: each replica keeps only its own proxies' flows. `palisade rollout status`
//! on a cluster, without manifests, writes its suggestions for the cluster the API holds.

#[allow(dead_code)]
mod common;
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
    serve_records(pod, vec![record(action, port)], &Directory::default()).await
}

/// A replica's flows server holding `records` from `pod`'s proxy, their ends named by
/// `directory`, on loopback.
async fn serve_records(pod: &str, records: Vec<FlowRecord>, directory: &Directory) -> SocketAddr {
    let window = Arc::new(Window::new(Limits::default()));
    let batch = FlowBatch {
        records,
        dropped: 0,
    };
    window.add(pod, batch, directory, SystemTime::now());
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

/// `rollout status` with no manifests reads the cluster from the API: each would-deny
/// group gets the smallest NetworkPolicy that allows it, written for the pods the API holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_status_suggests_policies_for_the_cluster_the_api_holds() {
    let api = FakeApi::start().await;
    let pod = |name: &str, app: &str, ip: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
               "spec": {"containers": [{"name": "c", "image": "i",
                                        "ports": [{"containerPort": 5432, "protocol": "TCP"}]}]},
               "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
    };
    api.put(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop"},
                     "annotations": {"palisade.dev/mode": "audit"}}}));
    api.put(pod("web-1", "web", "10.0.0.1"));
    api.put(pod("db-0", "db", "10.0.0.2"));
    api.put(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny", "namespace": "shop"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    );
    api.put(lease("ctl-0", SystemTime::now()));
    // The replica names the ends from the same cluster, as its controller would.
    let (cluster, _) = palisade_controller::kubernetes::load_cluster(&api.client())
        .await
        .unwrap();
    let directory = Directory::default();
    for p in &cluster.pods {
        directory.update(&p.key(), Some(p));
    }
    let mut would_deny: FlowRecord = serde_json::from_value(json!({
        "time": "2026-01-01T00:00:00.000Z", "direction": "ingress", "action": "would-deny",
        "protocol": "TCP", "src": "10.0.0.1:40000", "dst": "10.0.0.2:5432",
        "reason": "no-rule-matched", "policies": ["shop/default-deny"]}))
    .unwrap();
    would_deny.count = 3;
    let served = serve_records("shop/db-0", vec![would_deny], &directory).await;
    api.forward(NAMESPACE, "ctl-0", 9091, served);
    let dir = std::env::temp_dir().join(format!("palisade-rollout-kube-{}", std::process::id()));
    let kubeconfig = api.kubeconfig(&dir);

    let (code, out, err) =
        palisade(&kubeconfig, &["rollout", "status", "shop", "-o", "json"]).await;
    assert_eq!(code, 1, "not ready: {out}{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    let flows = status["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 1, "{status:#}");
    let f = &flows[0];
    assert_eq!(
        (f["source"].as_str(), f["destination"].as_str()),
        (Some("shop/web"), Some("shop/db"))
    );
    assert_eq!(f["count"], 3);
    common::assert_suggests(&f["suggestion"], "shop", "web", "db", 5432);

    let (code, out, _) = palisade(&kubeconfig, &["rollout", "status", "shop"]).await;
    assert_eq!(code, 1);
    assert!(out.contains("the smallest change that allows it:"), "{out}");
    assert!(out.contains("kind: NetworkPolicy"), "{out}");
    assert!(!out.contains("no suggested policy"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}
