//! `palisade status` against an API server of the test's own, answering lists as the
//! Kubernetes API reference describes them (`kind: XList`, `metadata.resourceVersion`,
//! a `Status` 404 for a resource whose CRD is not installed), and taking a controller
//! replica's heartbeat Lease through a server-side apply PATCH, as the real one would.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use palisade_controller::heartbeat::{self, Replica};
use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_palisade");

type Leases = Arc<Mutex<BTreeMap<String, Value>>>;

fn list(kind: &str, api_version: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": "1042"}, "items": items})
}

fn pod(
    ns: &str,
    name: &str,
    labels: Value,
    annotations: Value,
    proxy: Option<(&str, bool)>,
) -> Value {
    let mut status = json!({"phase": "Running", "podIP": "10.0.0.9", "containerStatuses": [
        {"name": "app", "ready": true, "restartCount": 0, "image": "app:1", "imageID": "", "started": true}
    ]});
    if let Some((list, ready)) = proxy {
        let s = json!({"name": "palisade-proxy", "ready": ready, "restartCount": 0, "image": "palisade:1", "imageID": "", "started": true});
        match status[list].as_array_mut() {
            Some(l) => l.push(s),
            None => status[list] = json!([s]),
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "resourceVersion": "7", "labels": labels, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        "status": status})
}

fn namespace(name: &str, labels: Value, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "3", "labels": labels, "annotations": annotations}})
}

fn answer(method: &http::Method, path: &str, body: &[u8], leases: &Leases) -> (u16, Value) {
    let lease_prefix = "/apis/coordination.k8s.io/v1/namespaces/palisade-system/leases";
    match (method.as_str(), path) {
        ("GET", "/api/v1/namespaces") => (
            200,
            list(
                "NamespaceList",
                "v1",
                vec![
                    namespace(
                        "shop",
                        json!({"palisade.dev/inject": "enabled"}),
                        json!({"palisade.dev/mode": "audit"}),
                    ),
                    namespace("web", json!({}), json!({})),
                    namespace("quiet", json!({}), json!({})),
                    namespace("palisade-system", json!({}), json!({})),
                ],
            ),
        ),
        ("GET", "/api/v1/pods") => (
            200,
            list(
                "PodList",
                "v1",
                vec![
                    // A native sidecar reports among the init containers.
                    pod(
                        "shop",
                        "a",
                        json!({"app": "a"}),
                        json!({}),
                        Some(("initContainerStatuses", true)),
                    ),
                    // Selected by shop's deny-all, no proxy: nothing enforces it.
                    pod("shop", "b", json!({"app": "b"}), json!({}), None),
                    // A proxy that is not ready yet enforces nothing either.
                    pod(
                        "shop",
                        "e",
                        json!({"app": "e"}),
                        json!({}),
                        Some(("initContainerStatuses", false)),
                    ),
                    // The fallback: a regular container.
                    pod(
                        "web",
                        "c",
                        json!({"app": "c"}),
                        json!({"palisade.dev/inject": "enabled"}),
                        Some(("containerStatuses", true)),
                    ),
                    // No policy selects it: no gap.
                    pod("web", "d", json!({"app": "d"}), json!({}), None),
                    pod("quiet", "q", json!({"app": "q"}), json!({}), None),
                ],
            ),
        ),
        ("GET", "/apis/networking.k8s.io/v1/networkpolicies") => (
            200,
            list(
                "NetworkPolicyList",
                "networking.k8s.io/v1",
                vec![
                    json!({"metadata": {"name": "deny-all", "namespace": "shop", "resourceVersion": "5"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
                ],
            ),
        ),
        ("GET", "/apis/palisade.dev/v1alpha1/palisadepolicies") => (
            200,
            list(
                "PalisadePolicyList",
                "palisade.dev/v1alpha1",
                vec![
                    json!({"metadata": {"name": "only-c", "namespace": "web", "resourceVersion": "6"}, "spec": {"endpointSelector": {"matchLabels": {"app": "c"}}, "ingress": [{"fromEntities": ["cluster"]}]}}),
                ],
            ),
        ),
        ("GET", p) if p == lease_prefix => {
            let items = leases.lock().unwrap().values().cloned().collect();
            (200, list("LeaseList", "coordination.k8s.io/v1", items))
        }
        ("PATCH", p) if p.starts_with(lease_prefix) => {
            let mut lease: Value = serde_json::from_slice(body).unwrap();
            lease["metadata"]["resourceVersion"] = json!("99");
            let name = p.rsplit('/').next().unwrap().to_owned();
            leases.lock().unwrap().insert(name, lease.clone());
            (200, lease)
        }
        (_, p) => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("the server could not find the requested resource ({p})"), "reason": "NotFound", "details": {}, "code": 404}),
        ),
    }
}

async fn serve(listener: tokio::net::TcpListener, leases: Leases, seen: Arc<Mutex<Vec<String>>>) {
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let (leases, seen) = (leases.clone(), seen.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (leases, seen) = (leases.clone(), seen.clone());
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.unwrap().to_bytes();
                    seen.lock()
                        .unwrap()
                        .push(format!("{} {}", parts.method, parts.uri));
                    let (code, value) = answer(&parts.method, parts.uri.path(), &body, &leases);
                    let mut r = http::Response::new(Full::new(Bytes::from(value.to_string())));
                    *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
                    r.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[test]
fn status_shows_injection_proxies_gaps_and_replicas() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let leases: Leases = Arc::default();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(serve(listener, leases.clone(), seen.clone()));

    // A live replica renews its Lease through the API, as the controller does.
    let client = runtime.block_on(async {
        let config = kube::Config::new(url.parse().unwrap());
        kube::Client::try_from(config).unwrap()
    });
    let live = Replica {
        namespace: "palisade-system".into(),
        pod: "palisade-controller-7c9-x1".into(),
        pod_uid: Some("uid-x1".into()),
    };
    runtime.spawn(heartbeat::run(client, live, || (12, 340)));
    let start = Instant::now();
    while leases.lock().unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no heartbeat: {:?}",
            seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let patches: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.starts_with("PATCH"))
        .cloned()
        .collect();
    assert!(
        patches[0].contains("fieldManager=palisade-controller"),
        "{patches:?}"
    );
    // A replica that stopped renewing five minutes ago.
    let old =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(300);
    let stale = Replica {
        namespace: "palisade-system".into(),
        pod: "palisade-controller-7c9-x0".into(),
        pod_uid: None,
    };
    let lease = serde_json::to_value(heartbeat::lease(&stale, 3, 300, MicroTime(old))).unwrap();
    leases.lock().unwrap().insert(
        "palisade-controller-palisade-controller-7c9-x0".into(),
        lease,
    );

    let dir = std::env::temp_dir().join(format!("palisade-status-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: t, cluster: {{server: \"{url}\"}}}}]\n\
         users: [{{name: t, user: {{token: test-token}}}}]\ncontexts: [{{name: t, context: {{cluster: t, user: t}}}}]\ncurrent-context: t\n"
    )).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(BINARY)
            .arg("status")
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap()
    };

    let out = run(&["-o", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A selected pod without a proxy: exit 1.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["namespaces"],
        json!([
            {"name": "shop", "injection": "namespace", "mode": "audit", "pods": 3, "proxied": 1, "unenforced": ["shop/b", "shop/e"]},
            {"name": "web", "injection": "annotated pods", "mode": "enforce", "pods": 2, "proxied": 1, "unenforced": []},
        ])
    );
    let replicas = status["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2);
    assert_eq!(replicas[0]["pod"], "palisade-controller-7c9-x0");
    assert_eq!(replicas[0]["alive"], false);
    assert!(replicas[0]["renewed_seconds_ago"].as_i64().unwrap() >= 300);
    assert_eq!(replicas[1]["pod"], "palisade-controller-7c9-x1");
    assert_eq!(replicas[1]["alive"], true);
    assert_eq!(replicas[1]["streams"], 12);
    assert_eq!(replicas[1]["pods"], 340);

    let table = String::from_utf8(run(&[]).stdout).unwrap();
    let line = |start: &str| {
        table
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line {start} in\n{table}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("shop "), "shop namespace audit 3 1 shop/b, shop/e");
    assert_eq!(line("web "), "web annotated pods enforce 2 1 -");
    assert!(!table.contains("quiet"), "{table}");
    assert!(line("palisade-controller-7c9-x1").starts_with("palisade-controller-7c9-x1 12 340"));
    assert!(line("palisade-controller-7c9-x0").ends_with("(gone)"));
    // The replicas' Leases were asked for by their label.
    assert!(
        seen.lock().unwrap().iter().any(|r| r
            .starts_with("GET /apis/coordination.k8s.io/v1/namespaces/palisade-system/leases?")
            && r.contains("labelSelector=palisade.dev%2Fcontroller-replica")),
        "{:?}",
        seen.lock().unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
