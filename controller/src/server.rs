//! The policy stream server: HTTP/2, one long response per proxy on
//! `/v1/policy/{namespace}/{name}`, carrying the pod's policy now and after every change.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::StreamExt;

use crate::metrics;
use crate::store::Store;

type Body = BoxBody<Bytes, Infallible>;

/// Serves policy streams forever.
pub async fn serve(listener: TcpListener, store: Arc<Store>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a proxy's connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let store = store.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = respond(&req, &store);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(std::time::Duration::from_secs(10))
                .keep_alive_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "policy stream connection ended");
            }
        });
    }
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text)).boxed());
    *r.status_mut() = status;
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

fn respond(req: &Request<Incoming>, store: &Store) -> Response<Body> {
    let Some(pod) = req.uri().path().strip_prefix("/v1/policy/") else {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: ask for /v1/policy/{namespace}/{name}\n".into(),
        );
    };
    if pod.split('/').count() != 2 || pod.split('/').any(str::is_empty) {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("{pod:?} is not namespace/name\n"),
        );
    }
    tracing::debug!(%pod, "proxy connected");
    // The body ends (and the receiver goes) when the proxy goes away.
    let guard = StreamGuard::new();
    let lines = WatchStream::new(store.subscribe(pod)).filter_map(move |latest| {
        let _ = &guard;
        latest.map(|line| Ok::<_, Infallible>(Frame::data(line.json.clone())))
    });
    let mut r = Response::new(StreamBody::new(lines).boxed());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}
