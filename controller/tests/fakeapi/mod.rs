//! A test server that answers as the Kubernetes API server does, for the parts the
//! controller uses, written from the API reference ("API Concepts: efficient detection of
//! changes", "Watch bookmarks", "Resource versions", and the TokenReview API):
//!
//! - a list (`GET /api/v1/pods`) answers a `...List` whose `metadata.resourceVersion` is the
//!   collection's version at that moment;
//! - a watch (`?watch=true&resourceVersion=N`) streams one JSON event per line
//!   (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`) of every change after `N`; when `N` is
//!   older than the oldest change kept, it answers one `ERROR` event holding a `Status`
//!   with code 410 (`Expired`), and the client must list again;
//! - a BOOKMARK event carries only the object's kind and `metadata.resourceVersion`;
//! - `fieldSelector=metadata.name=X` keeps only that object;
//! - `POST .../tokenreviews` answers the review of the token from a table of known tokens;
//! - `GET` and `PATCH` of one cluster-scoped object (`/api/v1/namespaces/x`): a PATCH with
//!   `Content-Type: application/merge-patch+json` merges its body as RFC 7386 says, stores
//!   the result with a new resourceVersion (watches see `MODIFIED`) and answers it; an
//!   unknown object is a 404 `NotFound` Status;
//! - a namespaced list (`/apis/G/V/namespaces/NS/leases`) keeps that namespace's objects,
//!   and `labelSelector=key` or `key=value` those whose labels match;
//! - a list of a custom resource (a group not ending in `.k8s.io`) whose
//!   CustomResourceDefinition (`plural.group`) is not stored answers 404 `NotFound`, as for
//!   any resource the server does not serve;
//! - `GET .../pods/NAME/portforward?ports=P` upgrades to a WebSocket with subprotocol
//!   `v4.channel.k8s.io` (Kubernetes' "port forwarding" streaming protocol): channel 0
//!   carries the port's data and channel 1 its errors, each message starting with its
//!   channel's byte, and each channel's first message is the port number (2 bytes,
//!   little-endian); the data goes to the address the test says the pod's port is at.
//!
//! The test drives it: put and delete objects, send bookmarks, drop every watch in the
//! middle of its stream, forget the history (so that old versions are "too old").

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::mpsc;

type Body = BoxBody<Bytes, Infallible>;

/// What a token reviews as.
#[derive(Clone, Debug)]
pub enum TokenAnswer {
    /// A ServiceAccount token bound to a pod.
    Pod {
        namespace: String,
        name: String,
        uid: String,
    },
    /// Not authenticated, with this error.
    Invalid(String),
    /// A valid token that names no pod (a plain ServiceAccount token).
    Unbound { namespace: String },
}

struct Watch {
    collection: String,
    name: Option<String>,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Versions at or below this one are too old to watch from.
    compacted: u64,
    /// Objects by (collection, namespace, name).
    objects: BTreeMap<(String, String, String), Value>,
    /// Changes kept: (rv, collection, type, object).
    history: Vec<(u64, String, &'static str, Value)>,
    watches: Vec<Watch>,
    tokens: HashMap<String, TokenAnswer>,
    /// Every request: (method, path and query).
    requests: Vec<(String, String)>,
    /// Every TokenReview request body.
    reviews: Vec<Value>,
    /// Every PATCH: (path, content type, body).
    patches: Vec<(String, String, Value)>,
    /// Where each `namespace/pod:port` is served, for port-forwards.
    forwards: HashMap<String, SocketAddr>,
}

/// The fake API server.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    pub addr: SocketAddr,
}

/// The collection an object of this apiVersion and kind is in: `/api/v1/pods`.
fn collection(object: &Value) -> String {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let plural = match kind {
        "NetworkPolicy" => "networkpolicies".to_owned(),
        "CiliumNetworkPolicy" => "ciliumnetworkpolicies".to_owned(),
        "PalisadePolicy" => "palisadepolicies".to_owned(),
        "CustomResourceDefinition" => "customresourcedefinitions".to_owned(),
        k => format!("{}s", k.to_ascii_lowercase()),
    };
    if api_version == "v1" {
        format!("/api/v1/{plural}")
    } else {
        format!("/apis/{api_version}/{plural}")
    }
}

fn key(object: &Value) -> (String, String, String) {
    let meta = &object["metadata"];
    (
        collection(object),
        meta["namespace"].as_str().unwrap_or_default().to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}

fn event(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl FakeApi {
    /// Starts serving on a free loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = FakeApi {
            state: Arc::new(Mutex::new(State {
                rv: 100,
                ..State::default()
            })),
            addr: listener.local_addr().unwrap(),
        };
        let served = api.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let api = served.clone();
                let service = service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.respond(req).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades(),
                );
            }
        });
        api
    }

    /// Writes a kubeconfig for this server in `dir` (a token user, as a cluster's would
    /// be) and returns its path, for the CLI's `KUBECONFIG`.
    // Only the CLI's tests run the binary.
    #[allow(dead_code)]
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"http://{}\"}}}}]\n\
                 users: [{{name: u, user: {{token: t}}}}]\n\
                 contexts: [{{name: fake, context: {{cluster: fake, user: u}}}}]\ncurrent-context: fake\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        let url: http::Uri = format!("http://{}", self.addr).parse().unwrap();
        let config = kube::Config::new(url);
        kube::Client::try_from(config).unwrap()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Creates or replaces an object, with a new resourceVersion (and a UID when it has
    /// none), and tells the watches.
    pub fn put(&self, mut object: Value) {
        let mut s = self.lock();
        s.rv += 1;
        let rv = s.rv;
        let k = key(&object);
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{}-{rv}", k.2));
        }
        let kind = if s.objects.contains_key(&k) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.objects.insert(k.clone(), object.clone());
        s.history.push((rv, k.0.clone(), kind, object.clone()));
        notify(&mut s, &k, kind, &object);
    }

    /// Deletes an object; its last state goes out with a new resourceVersion.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        let mut s = self.lock();
        let probe = json!({"apiVersion": api_version, "kind": kind,
                           "metadata": {"namespace": namespace, "name": name}});
        let k = key(&probe);
        let Some(mut object) = s.objects.remove(&k) else {
            panic!("no {k:?} to delete")
        };
        s.rv += 1;
        let rv = s.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.history.push((rv, k.0.clone(), "DELETED", object.clone()));
        notify(&mut s, &k, "DELETED", &object);
    }

    /// Sends every watch a BOOKMARK at the current resourceVersion.
    pub fn bookmark(&self) {
        let mut s = self.lock();
        let rv = s.rv.to_string();
        s.watches.retain(|w| {
            let kind = kind_of(&w.collection);
            w.tx.send(event(
                "BOOKMARK",
                &json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": rv}}),
            ))
            .is_ok()
        });
    }

    /// Ends every watch in the middle of its stream.
    pub fn drop_watches(&self) {
        self.lock().watches.clear();
    }

    /// Forgets the history: a watch from any version handed out so far gets 410 Gone.
    pub fn compact(&self) {
        let mut s = self.lock();
        s.rv += 1;
        s.compacted = s.rv;
        s.history.clear();
    }

    /// Says how a token reviews.
    pub fn token(&self, token: &str, answer: TokenAnswer) {
        self.lock().tokens.insert(token.to_owned(), answer);
    }

    /// The requests so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock()
            .requests
            .iter()
            .map(|(m, p)| format!("{m} {p}"))
            .collect()
    }

    /// The TokenReview requests so far.
    pub fn reviews(&self) -> Vec<Value> {
        self.lock().reviews.clone()
    }

    /// Port-forwards to port `port` of pod `namespace/name` reach `to`.
    // Only the CLI's tests (the root crate's tests/flows.rs) port-forward.
    #[allow(dead_code)]
    pub fn forward(&self, namespace: &str, name: &str, port: u16, to: SocketAddr) {
        self.lock()
            .forwards
            .insert(format!("{namespace}/{name}:{port}"), to);
    }

    /// The PATCH requests so far: path, content type and body.
    pub fn patches(&self) -> Vec<(String, String, Value)> {
        self.lock().patches.clone()
    }

    /// An object as stored, by collection path, namespace and name.
    pub fn object(&self, collection: &str, namespace: &str, name: &str) -> Value {
        self.lock().objects[&(collection.to_owned(), namespace.to_owned(), name.to_owned())].clone()
    }

    async fn respond(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().to_string();
        let path = req.uri().path().to_owned();
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), percent_decode(v)))
            .collect();
        self.lock().requests.push((
            method.clone(),
            format!("{path}?{}", req.uri().query().unwrap_or_default()),
        ));
        if method == "POST" && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let review: Value = serde_json::from_slice(&body).unwrap();
            return self.review(review);
        }
        if path.ends_with("/portforward") {
            return self.port_forward(req, &path, &query);
        }
        if let Some(answer) = self.one_object(req, &method, &path).await {
            return answer;
        }
        if method != "GET" {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &status(405, "MethodNotAllowed", "not here"),
            );
        }
        let name = query
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
            .map(str::to_owned);
        if query.get("watch").map(String::as_str) == Some("true") {
            let from: u64 = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            return self.watch(path, name, from);
        }
        // `/api/v1/namespaces/NS/pods`: the collection `/api/v1/pods`, in namespace NS.
        let (path, namespace) = match path.split_once("/namespaces/") {
            Some((head, rest)) => match rest.split_once('/') {
                Some((ns, plural)) => (format!("{head}/{plural}"), Some(ns.to_owned())),
                None => (path, None),
            },
            None => (path, None),
        };
        let selector = query.get("labelSelector").map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (l.clone(), None),
        });
        let labelled = |o: &Value| {
            selector.as_ref().is_none_or(|(k, v)| {
                let got = &o["metadata"]["labels"][k];
                !got.is_null() && v.as_ref().is_none_or(|v| got == v.as_str())
            })
        };
        let s = self.lock();
        if let Some(crd) = custom_resource_definition(&path) {
            let installed = s.objects.keys().any(|(c, _, n)| {
                c == "/apis/apiextensions.k8s.io/v1/customresourcedefinitions" && *n == crd
            });
            if !installed {
                // What an API server answers for a resource it does not serve.
                return json_response(
                    StatusCode::NOT_FOUND,
                    &status(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    ),
                );
            }
        }
        let items: Vec<Value> = s
            .objects
            .iter()
            .filter(|((c, ns, n), o)| {
                *c == path
                    && name.as_ref().is_none_or(|x| x == n)
                    && namespace.as_ref().is_none_or(|x| x == ns)
                    && labelled(o)
            })
            .map(|(_, o)| {
                // List items carry no kind or apiVersion: the list says them.
                let mut o = o.clone();
                if let Some(m) = o.as_object_mut() {
                    m.remove("kind");
                    m.remove("apiVersion");
                }
                o
            })
            .collect();
        let kind = format!("{}List", kind_of(&path));
        json_response(
            StatusCode::OK,
            &json!({"kind": kind, "apiVersion": "v1",
                    "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
        )
    }

    /// A port-forward: upgrades to the WebSocket protocol and relays the port's channel
    /// to the address the test gave.
    fn port_forward(
        &self,
        req: Request<Incoming>,
        path: &str,
        query: &HashMap<String, String>,
    ) -> Response<Body> {
        let pod = path
            .trim_start_matches("/api/v1/namespaces/")
            .trim_end_matches("/portforward")
            .replace("/pods/", "/");
        let port: u16 = query
            .get("ports")
            .and_then(|p| p.parse().ok())
            .expect("one port");
        let Some(to) = self.lock().forwards.get(&format!("{pod}:{port}")).copied() else {
            return json_response(
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", &format!("pods {pod:?} not found")),
            );
        };
        let offered = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(offered.contains("v4.channel.k8s.io"), "{offered}");
        let key = req.headers()["sec-websocket-key"].as_bytes().to_owned();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
        tokio::spawn(async move {
            use futures_util::SinkExt as _;
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            use tokio_tungstenite::tungstenite::{protocol::Role, Message};
            let upgraded = hyper::upgrade::on(req).await.unwrap();
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                None,
            )
            .await;
            let [lo, hi] = port.to_le_bytes();
            for channel in [0u8, 1] {
                ws.send(Message::binary(vec![channel, lo, hi]))
                    .await
                    .unwrap();
            }
            let Ok(tcp) = tokio::net::TcpStream::connect(to).await else {
                let _ = ws
                    .send(Message::binary(b"\x01connection refused".to_vec()))
                    .await;
                return;
            };
            let (mut read, mut write) = tcp.into_split();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                tokio::select! {
                    n = read.read(&mut buf[1..]) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            buf[0] = 0;
                            if ws.send(Message::binary(buf[..=n].to_vec())).await.is_err() {
                                break;
                            }
                        }
                    },
                    m = ws.next() => match m {
                        Some(Ok(Message::Binary(data))) if data.first() == Some(&0) => {
                            if write.write_all(&data[1..]).await.is_err() {
                                break;
                            }
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => {}
                    },
                }
            }
            let _ = ws.close(None).await;
        });
        let mut r = Response::new(Full::new(Bytes::new()).boxed());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("sec-websocket-accept", accept.parse().unwrap());
        h.insert(
            "sec-websocket-protocol",
            "v4.channel.k8s.io".parse().unwrap(),
        );
        r
    }

    /// GET or PATCH of one cluster-scoped object; `None` when the path is not one.
    async fn one_object(
        &self,
        req: Request<Incoming>,
        method: &str,
        path: &str,
    ) -> Option<Response<Body>> {
        let (collection, name) = path.rsplit_once('/')?;
        let key = (collection.to_owned(), String::new(), name.to_owned());
        let object = {
            let s = self.lock();
            let cluster_scoped = s
                .objects
                .keys()
                .any(|(c, ns, _)| c == collection && ns.is_empty());
            if !cluster_scoped {
                return None;
            }
            s.objects.get(&key).cloned()
        };
        let Some(mut object) = object else {
            return Some(json_response(
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", &format!("{name:?} not found")),
            ));
        };
        match method {
            "GET" => Some(json_response(StatusCode::OK, &object)),
            "PATCH" => {
                let content_type = req
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let patch: Value = serde_json::from_slice(&body).unwrap();
                self.lock()
                    .patches
                    .push((path.to_owned(), content_type.clone(), patch.clone()));
                if content_type != "application/merge-patch+json" {
                    return Some(json_response(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        &status(415, "UnsupportedMediaType", "merge patches only here"),
                    ));
                }
                json_patch::merge(&mut object, &patch);
                self.put(object);
                Some(json_response(StatusCode::OK, &self.lock().objects[&key]))
            }
            _ => None,
        }
    }

    fn watch(&self, collection: String, name: Option<String>, from: u64) -> Response<Body> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = self.lock();
        if from < s.compacted {
            let message = format!("too old resource version: {from} ({})", s.compacted);
            let _ = tx.send(event("ERROR", &status(410, "Expired", &message)));
            drop(tx);
        } else {
            for (rv, c, kind, object) in &s.history {
                let n = object["metadata"]["name"].as_str().unwrap_or_default();
                if *rv > from && *c == collection && name.as_deref().is_none_or(|x| x == n) {
                    let _ = tx.send(event(kind, object));
                }
            }
            s.watches.push(Watch {
                collection,
                name,
                tx,
            });
        }
        let frames = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
            .map(|b| Ok::<_, Infallible>(Frame::data(b)));
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(frames)));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    }

    fn review(&self, review: Value) -> Response<Body> {
        let token = review["spec"]["token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut s = self.lock();
        s.reviews.push(review.clone());
        let answer = s.tokens.get(&token).cloned();
        let audiences = review["spec"]["audiences"].clone();
        let status = match answer {
            Some(TokenAnswer::Pod {
                namespace,
                name,
                uid,
            }) => json!({
                "authenticated": true,
                "audiences": audiences,
                "user": {
                    "username": format!("system:serviceaccount:{namespace}:default"),
                    "uid": "sa-uid",
                    "groups": ["system:serviceaccounts", "system:authenticated"],
                    "extra": {
                        "authentication.kubernetes.io/pod-name": [name],
                        "authentication.kubernetes.io/pod-uid": [uid],
                    },
                },
            }),
            Some(TokenAnswer::Unbound { namespace }) => json!({
                "authenticated": true,
                "audiences": audiences,
                "user": {"username": format!("system:serviceaccount:{namespace}:default")},
            }),
            Some(TokenAnswer::Invalid(error)) => json!({"authenticated": false, "error": error}),
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        json_response(
            StatusCode::CREATED,
            &json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {"creationTimestamp": null}, "spec": review["spec"], "status": status}),
        )
    }
}

fn notify(s: &mut State, k: &(String, String, String), kind: &str, object: &Value) {
    let line = event(kind, object);
    s.watches.retain(|w| {
        if w.collection != k.0 || w.name.as_ref().is_some_and(|n| *n != k.2) {
            return !w.tx.is_closed();
        }
        w.tx.send(line.clone()).is_ok()
    });
}

/// The CustomResourceDefinition (`plural.group`) that serves a collection, `None` for the
/// built-in groups (the core group and `*.k8s.io`).
fn custom_resource_definition(collection: &str) -> Option<String> {
    let mut parts = collection.strip_prefix("/apis/")?.split('/');
    let (group, _version, plural) = (parts.next()?, parts.next()?, parts.next()?);
    (!group.ends_with(".k8s.io")).then(|| format!("{plural}.{group}"))
}

fn kind_of(collection: &str) -> String {
    let plural = collection.rsplit('/').next().unwrap_or_default();
    match plural {
        "networkpolicies" => "NetworkPolicy".into(),
        "ciliumnetworkpolicies" => "CiliumNetworkPolicy".into(),
        "palisadepolicies" => "PalisadePolicy".into(),
        "customresourcedefinitions" => "CustomResourceDefinition".into(),
        "endpointslices" => "EndpointSlice".into(),
        p => {
            let singular = p.strip_suffix('s').unwrap_or(p);
            let mut c = singular.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
