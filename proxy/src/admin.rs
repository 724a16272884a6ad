//! The admin server, on loopback only: `/live`, `/ready` (once a first policy arrived),
//! `/metrics` (Prometheus), `/policy` (the policy in force, as JSON) and `/dns` (the pod's
//! DNS cache: each name, its addresses, their TTL left and open connections, as JSON). And
//! the metrics listener, on the pod's addresses for Prometheus: `/metrics` and nothing
//! else, since what the policy allows and the names the pod resolved are the pod's own.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::dns::cache::DnsCache;
use crate::state::PolicyState;

/// Serves the admin endpoints forever.
pub async fn serve(
    listener: TcpListener,
    state: PolicyState,
    dns: Arc<DnsCache>,
    metrics: Option<PrometheusHandle>,
) {
    accept(listener, move |req| {
        respond(req, &state, &dns, metrics.as_ref())
    })
    .await
}

/// Serves `/metrics` alone forever (every other path is 404).
pub async fn serve_metrics(listener: TcpListener, metrics: Option<PrometheusHandle>) {
    accept(listener, move |req| match req.uri().path() {
        "/metrics" => prometheus(metrics.as_ref()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: this port serves /metrics only\n",
            PLAIN,
        ),
    })
    .await
}

/// Answers every request of every connection with `answer`.
async fn accept<F>(listener: TcpListener, answer: F)
where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let answer = answer.clone();
        let service = service_fn(move |req| {
            let response = answer(&req);
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

const PLAIN: &str = "text/plain; charset=utf-8";

fn prometheus(metrics: Option<&PrometheusHandle>) -> Response<Full<Bytes>> {
    match metrics {
        Some(m) => text(StatusCode::OK, m.render(), "text/plain; version=0.0.4"),
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics unavailable\n",
            PLAIN,
        ),
    }
}

fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn respond(
    req: &Request<Incoming>,
    state: &PolicyState,
    dns: &DnsCache,
    metrics: Option<&PrometheusHandle>,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n", PLAIN),
        "/ready" => match state.current() {
            Some(s) => text(
                StatusCode::OK,
                format!("ready: policy version {}\n", s.version),
                PLAIN,
            ),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no policy yet\n",
                PLAIN,
            ),
        },
        "/metrics" => prometheus(metrics),
        "/policy" => match state.current() {
            Some(s) => match serde_json::to_vec_pretty(&*s) {
                Ok(json) => text(StatusCode::OK, json, "application/json"),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), PLAIN),
            },
            None => text(StatusCode::SERVICE_UNAVAILABLE, "no policy yet\n", PLAIN),
        },
        "/dns" => match serde_json::to_vec_pretty(&dns.list(Instant::now())) {
            Ok(json) => text(StatusCode::OK, json, "application/json"),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), PLAIN),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /live, /ready, /metrics, /policy or /dns\n",
            PLAIN,
        ),
    }
}
