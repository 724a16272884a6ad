//! The policy stream server: HTTP/2 over TLS, one long response per proxy on
//! `/v1/policy/{namespace}/{name}`, carrying a resync of the pod's policy and then what
//! changed, as [`palisade_policy::wire`] frames them. A request must carry the pod's token
//! (`Authorization: Bearer`); it is answered 401 (no valid token), 403 (a token for another
//! pod) or 503 (the controller cannot tell yet) with a message that says why.
//!
//! The same connection takes the proxy's flow reports: `POST /v1/flows/{namespace}/{name}`
//! with the same token, accepted only for the pod the token is bound to (see
//! [`crate::flows`]).

use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use palisade_policy::flows::{FlowBatch, REPORT_PATH};
use palisade_policy::wire;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::{authorize, Authenticator, PodUids, Refusal};
use crate::flows::{Window, MAX_BATCH_BYTES};
use crate::metrics;
use crate::store::{Cursor, Store};

type Body = BoxBody<Bytes, Infallible>;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the stream server needs.
pub struct Streams {
    /// The policies.
    pub store: Arc<Store>,
    /// How tokens are checked.
    pub auth: Authenticator,
    /// The pods' UIDs, when the controller knows them (from the API).
    pub uids: Option<Arc<PodUids>>,
    /// How long a stream lasts before the proxy must reconnect (and present its token
    /// again, and spread over the replicas again); a tenth more or less at random.
    pub max_age: Duration,
    /// Where proxies' flow reports go.
    pub flows: Arc<Window>,
}

/// Serves policy streams forever.
pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>, streams: Arc<Streams>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a proxy's connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, streams) = (acceptor.clone(), streams.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    ::metrics::counter!(metrics::REFUSED, "reason" => "tls").increment(1);
                    tracing::info!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    ::metrics::counter!(metrics::REFUSED, "reason" => "tls").increment(1);
                    return;
                }
            };
            let service = service_fn(move |req| {
                let streams = streams.clone();
                async move { Ok::<_, Infallible>(respond(req, &streams).await) }
            });
            if let Err(e) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "policy stream connection ended");
            }
        });
    }
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn refuse(pod: &str, refusal: Refusal) -> Response<Body> {
    ::metrics::counter!(metrics::REFUSED, "reason" => refusal.reason).increment(1);
    tracing::info!(%pod, status = %refusal.status, reason = refusal.reason, "{}", refusal.message);
    let mut r = plain(refusal.status, format!("{}\n", refusal.message));
    if refusal.status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"palisade\""),
        );
    }
    r
}

/// Policy streams open now, for the replica's heartbeat.
static OPEN_STREAMS: AtomicUsize = AtomicUsize::new(0);

/// How many policy streams this replica serves now.
pub fn open_streams() -> usize {
    OPEN_STREAMS.load(Ordering::Relaxed)
}

/// Counts an open stream for as long as the response body lives.
struct StreamGuard;

impl StreamGuard {
    fn new() -> Self {
        ::metrics::gauge!(metrics::STREAMS).increment(1.0);
        OPEN_STREAMS.fetch_add(1, Ordering::Relaxed);
        StreamGuard
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        ::metrics::gauge!(metrics::STREAMS).decrement(1.0);
        OPEN_STREAMS.fetch_sub(1, Ordering::Relaxed);
    }
}

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    let value = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

async fn respond(req: Request<Incoming>, streams: &Streams) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let (pod, report) = match (
        path.strip_prefix("/v1/policy/"),
        path.strip_prefix(REPORT_PATH),
    ) {
        (Some(pod), _) => (pod, false),
        (_, Some(pod)) => (pod, true),
        _ => {
            return plain(
                StatusCode::NOT_FOUND,
                format!("not found: ask for /v1/policy/{{namespace}}/{{name}} or POST {REPORT_PATH}{{namespace}}/{{name}}\n"),
            )
        }
    };
    if report != (req.method() == http::Method::POST) {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET a policy stream, POST flow reports\n".into(),
        );
    }
    if pod.split('/').count() != 2 || pod.split('/').any(str::is_empty) {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("{pod:?} is not namespace/name\n"),
        );
    }
    let Some(token) = bearer(&req) else {
        return refuse(
            pod,
            Refusal::unauthenticated(
                "no-token",
                "no bearer token: the proxy must present its pod's ServiceAccount token \
                 (audience palisade) as Authorization: Bearer",
            ),
        );
    };
    let identity = match streams.auth.authenticate(token).await {
        Ok(id) => id,
        Err(refusal) => return refuse(pod, refusal),
    };
    if !report && !streams.store.ready() {
        return refuse(
            pod,
            Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: "starting",
                message: "the controller has not read the whole cluster yet; retry".into(),
            },
        );
    }
    if let Err(refusal) = authorize(&identity, pod, streams.uids.as_ref()) {
        return refuse(pod, refusal);
    }
    if report {
        return take_report(req, pod, streams).await;
    }
    tracing::debug!(%pod, "proxy connected");
    let store = streams.store.clone();
    let rx = store.subscribe(pod);
    let spread = RandomState::new().hash_one(pod) % 201;
    let ends = tokio::time::Instant::now() + streams.max_age.mul_f64(0.9 + spread as f64 / 1000.0);
    let state = (
        store,
        pod.to_owned(),
        rx,
        Cursor::default(),
        StreamGuard::new(),
    );
    // The body ends (and the receiver goes) when the proxy goes away, or at its age.
    let frames = futures_util::stream::unfold(
        state,
        move |(store, pod, mut rx, mut cursor, guard)| async move {
            loop {
                let woken_by = *rx.borrow_and_update();
                let pushed = cursor.started();
                if let Some(update) = store.next_update(&pod, &mut cursor) {
                    if let Some(received) = store.received(woken_by).filter(|_| pushed) {
                        ::metrics::histogram!(metrics::PUSH_SECONDS)
                            .record(received.elapsed().as_secs_f64());
                    }
                    let frame = wire::encode(&update);
                    ::metrics::counter!(metrics::STREAM_BYTES).increment(frame.len() as u64);
                    ::metrics::counter!(metrics::STREAM_MESSAGES).increment(1);
                    let frame = Ok::<_, Infallible>(Frame::data(Bytes::from(frame)));
                    return Some((frame, (store, pod, rx, cursor, guard)));
                }
                tokio::select! {
                    changed = rx.changed() => changed.ok()?,
                    () = tokio::time::sleep_until(ends) => return None,
                }
            }
        },
    );
    let mut r = Response::new(StreamBody::new(frames).boxed());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(wire::MEDIA_TYPE),
    );
    r
}

/// Takes a proxy's batch of flow records, for the pod its token proved.
async fn take_report(req: Request<Incoming>, pod: &str, streams: &Streams) -> Response<Body> {
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BATCH_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the batch (at most {MAX_BATCH_BYTES} bytes): {e}\n"),
            )
        }
    };
    let batch: FlowBatch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            tracing::info!(%pod, error = %e, "malformed flow batch");
            return plain(StatusCode::BAD_REQUEST, format!("not a flow batch: {e}\n"));
        }
    };
    let kept = streams.flows.add(
        pod,
        batch,
        &streams.store.directory,
        std::time::SystemTime::now(),
    );
    plain(StatusCode::OK, format!("kept {kept} records\n"))
}
