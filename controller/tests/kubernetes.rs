//! The controller with the real kube client against a test server that answers as the
//! Kubernetes API server does (see `fakeapi`): compiled policies follow every change,
//! through bookmarks, a watch dropped mid-stream, a 410 Gone that forces a relist, and a
//! CRD that appears later; the policy stream refuses every token but the pod's own, checked
//! by TokenReview; and a proxy survives the loss of a controller replica.

mod client;
mod fakeapi;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fakeapi::{FakeApi, TokenAnswer};
use http_body_util::{BodyExt, Empty, Full};
use palisade_controller::auth::PodUids;
use palisade_controller::store::{Cursor, Store};
use palisade_controller::{kubernetes, source, Config, Source};
use palisade_policy::compiled::{PeerMatch, PodPolicy};
use palisade_policy::wire::Held;
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};

/// Polls `check` until it holds or `within` passes.
async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const WAIT: Duration = Duration::from_secs(20);

fn namespace(name: &str, team: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, "team": team}},
           "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

fn pod(ns: &str, name: &str, app: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
           "spec": {"containers": [{"name": "app", "image": "app:1",
                                    "ports": [{"containerPort": 80, "name": "http", "protocol": "TCP"}]}],
                    "nodeName": "node-1"},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.168.0.1"}})
}

fn network_policy(ns: &str, name: &str, selects: &str, from: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"podSelector": {"matchLabels": {"app": selects}},
                    "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": from}}}],
                                 "ports": [{"port": 80, "protocol": "TCP"}]}]}})
}

fn crd(group: &str, kind: &str, plural: &str, version: &str) -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": format!("{plural}.{group}")},
           "spec": {"group": group, "scope": "Namespaced",
                    "names": {"kind": kind, "plural": plural, "listKind": format!("{kind}List"), "singular": kind.to_lowercase()},
                    "versions": [{"name": version, "served": true, "storage": true,
                                  "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
           "status": {"conditions": [{"type": "Established", "status": "True"}],
                      "acceptedNames": {"kind": kind, "plural": plural}, "storedVersions": [version]}})
}

fn cilium_policy(ns: &str, name: &str, selects: &str, from: &str) -> Value {
    json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"endpointSelector": {"matchLabels": {"app": selects}},
                    "ingress": [{"fromEndpoints": [{"matchLabels": {"app": from}}]}]}})
}

/// The controller's source and compile loop on the fake API; the store they fill.
fn start_source(api: &FakeApi) -> (Arc<Store>, Arc<PodUids>) {
    let store = Arc::new(Store::default());
    let uids = Arc::new(PodUids::default());
    let events = source::start(store.clone()).unwrap();
    tokio::spawn(kubernetes::watch(api.client(), events, uids.clone()));
    (store, uids)
}

/// The policy a proxy of `pod` would hold after a resync.
fn policy(store: &Store, pod: &str) -> Option<PodPolicy> {
    let update = store.next_update(pod, &mut Cursor::default())?;
    Some(Held::default().apply(update).unwrap()?.policy)
}

/// The policies selecting `pod` for ingress, and the addresses each rule's first peer
/// allows.
fn ingress(store: &Store, pod: &str) -> Vec<(String, Vec<String>)> {
    let Some(p) = policy(store, pod) else {
        return vec![];
    };
    p.ingress
        .rules
        .iter()
        .map(|r| {
            let name = p.ingress.policies[r.policy as usize].id.name.clone();
            let ips = match r.peers.as_ref().and_then(|p| p.first()).map(|p| &p.matches) {
                Some(PeerMatch::Ips(set)) => set.as_slice().iter().map(IpAddr::to_string).collect(),
                other => vec![format!("{other:?}")],
            };
            (name, ips)
        })
        .collect()
}

fn rule(name: &str, ips: &[&str]) -> (String, Vec<String>) {
    (name.into(), ips.iter().map(|s| s.to_string()).collect())
}

async fn expect(store: &Store, pod: &str, want: Vec<(String, Vec<String>)>, step: &str) {
    let ok = eventually(WAIT, || ingress(store, pod) == want).await;
    assert!(
        ok,
        "{step}: {pod} has {:?}, expected {want:?}",
        ingress(store, pod)
    );
}

fn base(api: &FakeApi) {
    api.put(namespace("x", "red"));
    api.put(pod("x", "a", "a", "10.0.0.1"));
    api.put(pod("x", "b", "b", "10.0.0.2"));
    api.put(pod("x", "c", "c", "10.0.0.3"));
    api.put(network_policy("x", "b-from-a", "b", "a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_policies_follow_the_api_through_bookmarks_drops_410_and_crds() {
    let api = FakeApi::start().await;
    base(&api);
    let (store, uids) = start_source(&api);
    assert!(
        eventually(WAIT, || store.ready()).await,
        "the first lists complete"
    );
    expect(
        &store,
        "x/b",
        vec![rule("b-from-a", &["10.0.0.1"])],
        "listed",
    )
    .await;
    assert!(uids.get("x/b").is_some_and(|u| u.starts_with("uid-b-")));

    // A watch event: c takes a's label.
    api.put(pod("x", "c", "a", "10.0.0.3"));
    expect(
        &store,
        "x/b",
        vec![rule("b-from-a", &["10.0.0.1", "10.0.0.3"])],
        "modified",
    )
    .await;

    // A bookmark moves the watch's version on; the next change still arrives.
    api.bookmark();
    api.put(pod("x", "d", "a", "10.0.0.4"));
    expect(
        &store,
        "x/b",
        vec![rule("b-from-a", &["10.0.0.1", "10.0.0.3", "10.0.0.4"])],
        "after a bookmark",
    )
    .await;

    // Watches dropped mid-stream resume from their last version: a change made while they
    // were gone arrives, and nothing is listed again.
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    api.drop_watches();
    api.delete("v1", "Pod", "x", "d");
    expect(
        &store,
        "x/b",
        vec![rule("b-from-a", &["10.0.0.1", "10.0.0.3"])],
        "after a drop",
    )
    .await;
    let lists_after = api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    assert_eq!(
        lists_before, lists_after,
        "a dropped watch resumes without a list"
    );

    // The history is compacted and every watch dropped; c is deleted meanwhile, and its
    // event is gone with the history. The watches get 410 Gone and list again, and the
    // relist takes c out.
    api.compact();
    api.drop_watches();
    api.delete("v1", "Pod", "x", "c");
    expect(
        &store,
        "x/b",
        vec![rule("b-from-a", &["10.0.0.1"])],
        "after a 410 and a relist",
    )
    .await;
    let relisted = api
        .requests()
        .iter()
        .skip(lists_after)
        .any(|r| r.starts_with("GET /api/v1/pods?") && !r.contains("watch=true"));
    assert!(relisted, "410 Gone forces a new list: {:?}", api.requests());
    assert!(
        uids.get("x/c").is_none(),
        "the deleted pod's UID is forgotten"
    );

    // An invalid change is refused; the last valid version stays in force.
    let mut bad = network_policy("x", "b-from-a", "b", "c");
    bad["spec"]["ingress"][0]["ports"][0]["port"] = json!(70000);
    api.put(bad);
    api.put(pod("x", "e", "b", "10.0.0.5"));
    expect(
        &store,
        "x/e",
        vec![rule("b-from-a", &["10.0.0.1"])],
        "after an invalid edit",
    )
    .await;
    expect(
        &store,
        "x/b",
        vec![rule("b-from-a", &["10.0.0.1"])],
        "after an invalid edit",
    )
    .await;

    // CiliumNetworkPolicies are not watched before their CRD exists; once it is there,
    // they are.
    assert!(!api
        .requests()
        .iter()
        .any(|r| r.contains("/apis/cilium.io/v2/ciliumnetworkpolicies")));
    api.put(crd(
        "cilium.io",
        "CiliumNetworkPolicy",
        "ciliumnetworkpolicies",
        "v2",
    ));
    api.put(cilium_policy("x", "b-from-e", "b", "b"));
    expect(
        &store,
        "x/b",
        vec![
            rule("b-from-a", &["10.0.0.1"]),
            rule("b-from-e", &["10.0.0.2", "10.0.0.5"]),
        ],
        "a CRD installed later",
    )
    .await;

    // The CRD goes: its policies go with it.
    api.delete(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "",
        "ciliumnetworkpolicies.cilium.io",
    );
    expect(
        &store,
        "x/b",
        vec![rule("b-from-a", &["10.0.0.1"])],
        "the CRD removed",
    )
    .await;
}

/// A free port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA and a certificate for 127.0.0.1 in `dir`; returns (ca, cert, key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let g = palisade_controller::tls::generate(vec!["127.0.0.1".into()]).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, g.ca).unwrap();
    std::fs::write(&paths.1, g.cert).unwrap();
    std::fs::write(&paths.2, g.key).unwrap();
    paths
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("palisade-kube-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A controller replica on its own runtime, so that dropping it kills it whole.
struct Replica {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    metrics: SocketAddr,
    flows: SocketAddr,
}

impl Replica {
    fn start(api: &FakeApi, cert: &Path, key: &Path) -> Replica {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_at(api, cert, key, addr, Duration::from_secs(1800))
    }

    fn start_at(
        api: &FakeApi,
        cert: &Path,
        key: &Path,
        addr: SocketAddr,
        max_stream_age: Duration,
    ) -> Replica {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let flows: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = Config {
            source: Source::Kubernetes,
            listen: addr,
            metrics: Some(metrics),
            flows: Some(flows),
            flow_window: Default::default(),
            tls_cert: cert.to_owned(),
            tls_key: key.to_owned(),
            tokens: None,
            max_stream_age,
            webhook: None,
            heartbeat: None,
        };
        let client = api.client();
        runtime.spawn(async move {
            if let Err(e) = palisade_controller::run_with(config, Some(client)).await {
                panic!("the controller stopped: {e}");
            }
        });
        Replica {
            runtime: Some(runtime),
            addr,
            metrics,
            flows,
        }
    }

    fn kill(&mut self) {
        if let Some(r) = self.runtime.take() {
            r.shutdown_background();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP/2 connection to the stream server over TLS, trusting `ca`.
async fn h2(addr: SocketAddr, ca: &Path) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends `method path` with `token` and `body` to the stream server; returns the status
/// and, unless it is a 200 to a GET (a stream that does not end), the body.
async fn call(
    addr: SocketAddr,
    ca: &Path,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut sender = h2(addr, ca).await;
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("https://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let response = sender
        .send_request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    if status == 200 && method == "GET" {
        return (status, String::new());
    }
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Asks the stream server for a pod's policy with `token`; returns the status and, for a
/// refusal, the body.
async fn ask(addr: SocketAddr, ca: &Path, pod: &str, token: Option<&str>) -> (u16, String) {
    call(addr, ca, "GET", &format!("/v1/policy/{pod}"), token, "").await
}

async fn metrics(addr: SocketAddr) -> String {
    get(addr, "/metrics").await
}

/// The body of a plain HTTP GET.
async fn get(addr: SocketAddr, path: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "x")
        .body(Empty::new())
        .unwrap();
    let body = sender
        .send_request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await;
    String::from_utf8_lossy(&body.unwrap().to_bytes()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_serves_a_pod_only_its_own_policy_with_its_own_token() {
    let api = FakeApi::start().await;
    base(&api);
    let dir = temp_dir("auth");
    let (ca, cert, key) = certificates(&dir);
    let replica = Replica::start(&api, &cert, &key);
    // Wait for the controller to be ready (the first lists complete).
    let (status, _) = loop {
        let answer = match tokio::net::TcpStream::connect(replica.addr).await {
            Ok(_) => ask(replica.addr, &ca, "x/b", None).await,
            Err(_) => (0, String::new()),
        };
        if answer.0 != 0 {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 401, "no token");
    let b_uid = api_uid(&api, "x", "b");
    api.token(
        "good",
        TokenAnswer::Pod {
            namespace: "x".into(),
            name: "b".into(),
            uid: b_uid.clone(),
        },
    );
    api.token(
        "old-pod",
        TokenAnswer::Pod {
            namespace: "x".into(),
            name: "b".into(),
            uid: "uid-of-an-earlier-b".into(),
        },
    );
    api.token("expired", TokenAnswer::Invalid("token has expired".into()));
    api.token(
        "of-a",
        TokenAnswer::Pod {
            namespace: "x".into(),
            name: "a".into(),
            uid: api_uid(&api, "x", "a"),
        },
    );
    api.token(
        "unbound",
        TokenAnswer::Unbound {
            namespace: "x".into(),
        },
    );

    let mut good = (0, String::new());
    for _ in 0..200 {
        good = ask(replica.addr, &ca, "x/b", Some("good")).await;
        if good.0 != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(good.0, 200, "the pod's own token: {}", good.1);

    let cases = [
        (None, 401, "no bearer token"),
        (Some("not-a-token"), 401, "invalid bearer token"),
        (Some("expired"), 401, "token has expired"),
        (Some("of-a"), 403, "issued for pod x/a"),
        (Some("old-pod"), 403, "earlier pod x/b"),
        (
            Some("unbound"),
            403,
            "not a ServiceAccount token bound to a pod",
        ),
    ];
    for (token, status, says) in cases {
        let (got, body) = ask(replica.addr, &ca, "x/b", token).await;
        assert_eq!(got, status, "{token:?}: {body}");
        assert!(body.contains(says), "{token:?}: {body}");
    }
    // Every review asked for the palisade audience, with the token presented.
    let reviews = api.reviews();
    assert!(reviews.iter().any(|r| r["spec"]["token"] == "expired"));
    for r in &reviews {
        assert_eq!(r["spec"]["audiences"], json!(["palisade"]), "{r}");
        assert_eq!(r["kind"], "TokenReview");
        assert_eq!(r["apiVersion"], "authentication.k8s.io/v1");
    }
    // Refusals are counted by reason.
    let m = metrics(replica.metrics).await;
    for reason in [
        "no-token",
        "invalid-token",
        "wrong-pod",
        "wrong-uid",
        "not-bound",
    ] {
        assert!(
            m.lines().any(
                |l| l.starts_with("palisade_controller_streams_refused_total")
                    && l.contains(&format!("reason=\"{reason}\""))
            ),
            "{reason} counted:\n{m}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn api_uid(api: &FakeApi, ns: &str, name: &str) -> String {
    api.object("/api/v1/pods", ns, name)["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A stream client of pod x/b (the proxy's, without its listeners).
fn proxy(controllers: &[SocketAddr], ca: &Path, token: &Path) -> palisade_proxy::Config {
    client::config(
        "x/b",
        vec!["10.0.0.2".parse().unwrap()],
        controllers,
        ca,
        token,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_at_its_age_and_the_proxy_presents_its_token_again() {
    let api = FakeApi::start().await;
    base(&api);
    let dir = temp_dir("age");
    let (ca, cert, key) = certificates(&dir);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _replica = Replica::start_at(&api, &cert, &key, addr, Duration::from_secs(1));
    let token = dir.join("token");
    std::fs::write(&token, "aging").unwrap();
    let uid = api_uid(&api, "x", "b");
    api.token(
        "aging",
        TokenAnswer::Pod {
            namespace: "x".into(),
            name: "b".into(),
            uid,
        },
    );
    let state = palisade_proxy::state::PolicyState::default();
    tokio::spawn(palisade_proxy::client::run(
        Arc::new(proxy(&[addr], &ca, &token)),
        state.clone(),
    ));
    let reviews = || {
        api.reviews()
            .iter()
            .filter(|r| r["spec"]["token"] == "aging")
            .count()
    };
    assert!(eventually(WAIT, || state.current().is_some()).await);
    let first = reviews();
    assert!(
        eventually(WAIT, || reviews() >= first + 2).await,
        "streams of a one-second age end and the token is reviewed again"
    );
    assert!(
        state.current().is_some(),
        "the policy stays in force meanwhile"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_survives_the_loss_of_a_replica() {
    let api = FakeApi::start().await;
    base(&api);
    let dir = temp_dir("replicas");
    let (ca, cert, key) = certificates(&dir);
    let mut one = Replica::start(&api, &cert, &key);
    let two = Replica::start(&api, &cert, &key);
    let token = dir.join("token");
    std::fs::write(&token, "b-token").unwrap();
    api.token(
        "b-token",
        TokenAnswer::Pod {
            namespace: "x".into(),
            name: "b".into(),
            uid: api_uid(&api, "x", "b"),
        },
    );
    let config = proxy(&[one.addr, two.addr], &ca, &token);
    let state = palisade_proxy::state::PolicyState::default();
    tokio::spawn(palisade_proxy::client::run(Arc::new(config), state.clone()));
    let has = |ips: &[&str]| {
        let want: Vec<IpAddr> = ips.iter().map(|s| s.parse().unwrap()).collect();
        state.current().is_some_and(|s| {
            matches!(
                s.policy.ingress.rules.first().and_then(|r| r.peers.as_ref()?.first()).map(|p| &p.matches),
                Some(PeerMatch::Ips(set)) if set.as_slice() == want
            )
        })
    };
    assert!(
        eventually(WAIT, || has(&["10.0.0.1"])).await,
        "the first policy arrives"
    );
    // A change on the open stream is pushed, and its latency timed in a histogram (whose
    // buckets, unlike a summary's quantiles, let replicas be aggregated).
    api.put(pod("x", "d", "a", "10.0.0.4"));
    assert!(eventually(WAIT, || has(&["10.0.0.1", "10.0.0.4"])).await);
    let m = metrics(one.metrics).await;
    let count = |name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        count("palisade_controller_push_seconds_count") >= 1.0,
        "a push was timed: {m}"
    );
    assert_eq!(
        count("palisade_controller_push_seconds_bucket{le=\"+Inf\"}"),
        count("palisade_controller_push_seconds_count"),
        "{m}"
    );
    api.put(pod("x", "d", "z", "10.0.0.4"));
    assert!(eventually(WAIT, || has(&["10.0.0.1"])).await);

    // One replica dies mid-stream; the proxy keeps its policy meanwhile, reconnects to the
    // other, and follows the next change from there.
    one.kill();
    assert!(state.current().is_some(), "the policy stays in force");
    api.put(pod("x", "c", "a", "10.0.0.3"));
    assert!(
        eventually(WAIT, || has(&["10.0.0.1", "10.0.0.3"])).await,
        "the change arrives through the other replica"
    );
    // The token is rotated and the old one expires; the other replica goes and the first
    // comes back: the proxy reconnects with the new token.
    std::fs::write(&token, "b-token-2").unwrap();
    api.token(
        "b-token-2",
        TokenAnswer::Pod {
            namespace: "x".into(),
            name: "b".into(),
            uid: api_uid(&api, "x", "b"),
        },
    );
    api.token("b-token", TokenAnswer::Invalid("token has expired".into()));
    let first = one.addr;
    drop(two);
    let _back = Replica::start_at(&api, &cert, &key, first, Duration::from_secs(1800));
    api.put(pod("x", "c", "c", "10.0.0.3"));
    assert!(
        eventually(WAIT, || has(&["10.0.0.1"])).await,
        "the change arrives through the restarted replica, with the rotated token"
    );
    assert!(
        api.reviews()
            .iter()
            .any(|r| r["spec"]["token"] == "b-token-2"),
        "the new token was presented"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_reports_are_taken_only_for_the_pod_the_token_is_bound_to() {
    let api = FakeApi::start().await;
    base(&api);
    let dir = temp_dir("flows");
    let (ca, cert, key) = certificates(&dir);
    let replica = Replica::start(&api, &cert, &key);
    api.token(
        "b",
        TokenAnswer::Pod {
            namespace: "x".into(),
            name: "b".into(),
            uid: api_uid(&api, "x", "b"),
        },
    );
    api.token(
        "a",
        TokenAnswer::Pod {
            namespace: "x".into(),
            name: "a".into(),
            uid: api_uid(&api, "x", "a"),
        },
    );
    // Ready once b's own policy is served.
    let mut ready = false;
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(replica.addr).await.is_ok()
            && ask(replica.addr, &ca, "x/b", Some("b")).await.0 == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the controller serves x/b");
    // b's proxy refused a connection to c; the batch claims another pod, which is ignored.
    let batch = json!({"records": [{
        "time": "2026-01-01T00:00:00.000Z", "pod": "x/c", "direction": "egress",
        "action": "deny", "protocol": "TCP", "src": "10.0.0.2:40000", "dst": "10.0.0.3:80",
        "reason": "no-rule-matched", "policies": ["x/b-egress"]}]})
    .to_string();
    let post = |token: Option<&'static str>, body: String| {
        let ca = ca.clone();
        async move { call(replica.addr, &ca, "POST", "/v1/flows/x/b", token, &body).await }
    };
    for (token, status, says) in [
        (None, 401, "no bearer token"),
        (Some("not-a-token"), 401, "not valid"),
        (Some("a"), 403, "issued for pod x/a"),
    ] {
        let (got, body) = post(token, batch.clone()).await;
        assert_eq!(got, status, "{token:?}: {body}");
        assert!(body.contains(says), "{token:?}: {body}");
    }
    assert_eq!(
        get(replica.flows, "/v1/flows").await,
        "",
        "nothing was kept"
    );
    let (got, body) = post(Some("b"), "{not json".into()).await;
    assert_eq!(got, 400, "{body}");
    assert!(body.contains("not a flow batch"), "{body}");

    let (got, body) = post(Some("b"), batch.clone()).await;
    assert_eq!((got, body.as_str()), (200, "kept 1 records\n"));
    let kept = get(replica.flows, "/v1/flows").await;
    let records: Vec<Value> = kept
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{kept}");
    let r = &records[0];
    assert_eq!(r["pod"], "x/b", "the token's pod, not the batch's claim");
    assert_eq!(
        r["source"],
        json!({"namespace": "x", "pod": "b", "workload": "b"})
    );
    assert_eq!(
        r["destination"],
        json!({"namespace": "x", "pod": "c", "workload": "c"})
    );
    // a's own token reports for a; readers filter.
    let (got, _) = call(
        replica.addr,
        &ca,
        "POST",
        "/v1/flows/x/a",
        Some("a"),
        &batch,
    )
    .await;
    assert_eq!(got, 200);
    assert_eq!(get(replica.flows, "/v1/flows").await.lines().count(), 2);
    let of_a = get(replica.flows, "/v1/flows?pod=x/a").await;
    assert_eq!(of_a.lines().count(), 1, "{of_a}");
    assert!(get(replica.flows, "/v1/flows?verdict=maybe")
        .await
        .contains("maybe"));
    let m = metrics(replica.metrics).await;
    assert!(
        m.lines()
            .any(|l| l == "palisade_controller_flow_window_records 2"),
        "{m}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_sets_a_namespace_mode_with_a_merge_patch_through_the_api() {
    let api = FakeApi::start().await;
    base(&api);
    let before = kubernetes::set_namespace_mode(api.client(), "x", "audit")
        .await
        .unwrap();
    assert_eq!(before, None);
    let ns = api.object("/api/v1/namespaces", "", "x");
    assert_eq!(ns["metadata"]["annotations"]["palisade.dev/mode"], "audit");
    assert_eq!(ns["metadata"]["labels"]["team"], "red", "the rest is kept");
    let before = kubernetes::set_namespace_mode(api.client(), "x", "enforce")
        .await
        .unwrap();
    assert_eq!(before.as_deref(), Some("audit"));
    let ns = api.object("/api/v1/namespaces", "", "x");
    assert_eq!(
        ns["metadata"]["annotations"]["palisade.dev/mode"],
        "enforce"
    );
    let patches = api.patches();
    assert_eq!(patches.len(), 2);
    let (path, content_type, body) = &patches[1];
    assert_eq!(path, "/api/v1/namespaces/x");
    assert_eq!(content_type, "application/merge-patch+json");
    assert_eq!(
        body,
        &json!({"metadata": {"annotations": {"palisade.dev/mode": "enforce"}}}),
        "only the annotation"
    );
    let e = kubernetes::set_namespace_mode(api.client(), "absent", "enforce")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("namespace absent"), "{e}");
    assert!(e.to_string().contains("not found"), "{e}");
    assert_eq!(
        api.patches().len(),
        2,
        "nothing patched for an unknown namespace"
    );
}

/// The same objects through the API and in a manifest file give the same cluster: every
/// flow judged alike, the same invalid object reported (by kind, namespace, name and field,
/// with no file), a completed pod left out, and a CRD kind the API does not serve skipped
/// with a notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_cluster_reads_the_api_as_a_folder_of_the_same_manifests() {
    let api = FakeApi::start().await;
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "selector": {"app": "web"},
                 "ports": [{"port": 8080, "targetPort": "http", "protocol": "TCP"}]}});
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.1.2"]}],
        "ports": [{"name": "", "port": 80, "protocol": "TCP"}]});
    let invalid = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "typo", "namespace": "shop"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}});
    let palisade = json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "PalisadePolicy",
        "metadata": {"name": "db-from-web", "namespace": "data"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "db"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web", "k8s:io.kubernetes.pod.namespace": "shop"}}],
                              "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}});
    let objects = vec![
        namespace("shop", "red"),
        namespace("data", "blue"),
        pod("shop", "web-1", "web", "10.0.1.2"),
        pod("shop", "api-1", "api", "10.0.1.3"),
        pod("data", "db-0", "db", "10.0.2.2"),
        service,
        slice,
        network_policy("shop", "web-from-api", "web", "api"),
        invalid,
        palisade,
    ];
    for o in &objects {
        api.put(o.clone());
    }
    api.put(crd(
        "palisade.dev",
        "PalisadePolicy",
        "palisadepolicies",
        "v1alpha1",
    ));
    // A pod that ran to completion: its address may be another pod's already.
    let mut done = pod("shop", "job-1", "job", "10.0.1.2");
    done["status"]["phase"] = json!("Succeeded");
    api.put(done);

    let (cluster, report) = kubernetes::load_cluster(&api.client()).await.unwrap();
    let dir = temp_dir("load-cluster");
    let file = dir.join("cluster.json");
    std::fs::write(
        &file,
        json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string(),
    )
    .unwrap();
    let (folder, folder_report) = palisade_controller::folder::load(&[file]);

    let pods: Vec<String> = cluster.pods.iter().map(|p| p.key()).collect();
    assert_eq!(pods, ["data/db-0", "shop/api-1", "shop/web-1"]);
    let policies: Vec<String> = cluster.policies.iter().map(|p| p.id.to_string()).collect();
    assert_eq!(policies.len(), 2, "{policies:?}");
    let judged = |c| serde_json::to_value(palisade_policy::simulate::simulate(c)).unwrap();
    let flows = judged(&cluster);
    assert!(flows["flows"].as_array().unwrap().len() > 4, "{flows:#}");
    assert_eq!(flows, judged(&folder), "the API and the file judge alike");
    assert!(
        flows["flows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["from"] == "shop/web-1" && f["to"] == "data/db-0" && f["allowed"] == true),
        "the PalisadePolicy is in force"
    );

    let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    let in_file: Vec<String> = folder_report
        .errors
        .iter()
        .map(|e| {
            format!(
                "{}: {}: {}",
                e.what.as_deref().unwrap_or(""),
                e.path,
                e.message
            )
        })
        .collect();
    assert_eq!(errors, in_file, "the same message, without a file and line");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("NetworkPolicy shop/typo: spec.ingress[0].from[0].ipBlock.cidr: "),
        "{errors:?}"
    );
    let notices: Vec<String> = report.notices.iter().map(|n| n.to_string()).collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(
        notices[0].starts_with("skipped CiliumNetworkPolicy: ")
            && notices[0].contains("cilium.io/v2/ciliumnetworkpolicies"),
        "{notices:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
