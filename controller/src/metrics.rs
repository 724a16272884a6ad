//! The controller's Prometheus metrics, served with a health check on their own address.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Policy streams open now.
pub const STREAMS: &str = "palisade_controller_streams";
/// Pods with a compiled policy.
pub const PODS: &str = "palisade_controller_pods";
/// Reads of the source, by result (`ok`, `invalid`: some objects were rejected).
pub const RELOADS: &str = "palisade_controller_reloads_total";
/// Objects rejected by the last read.
pub const INVALID: &str = "palisade_controller_invalid_objects";
/// Seconds to compile every pod's policy.
pub const COMPILE_SECONDS: &str = "palisade_controller_compile_seconds";
/// Pod policies that changed, over all reads.
pub const CHANGES: &str = "palisade_controller_policy_changes_total";

/// Admission requests answered, by webhook (`inject`, `validate`) and result (`injected`,
/// `left`, `refused`, `allowed`, `warned`, `error`).
pub const WEBHOOK_REQUESTS: &str = "palisade_webhook_requests_total";

/// Installs the global recorder.
pub fn install() -> Option<PrometheusHandle> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder).ok()?;
    ::metrics::describe_gauge!(STREAMS, "Policy streams open now");
    ::metrics::describe_gauge!(PODS, "Pods with a compiled policy");
    ::metrics::describe_counter!(RELOADS, "Reads of the source, by result");
    ::metrics::describe_gauge!(
        INVALID,
        "Objects rejected by the last read (their last valid version stays)"
    );
    ::metrics::describe_histogram!(
        COMPILE_SECONDS,
        ::metrics::Unit::Seconds,
        "Time to compile every pod's policy"
    );
    ::metrics::describe_counter!(CHANGES, "Pod policies that changed");
    ::metrics::describe_counter!(
        WEBHOOK_REQUESTS,
        "Admission requests answered, by webhook and result"
    );
    Some(handle)
}

/// Serves `/metrics` and `/healthz` forever.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let handle = handle.clone();
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (status, body) = match req.uri().path() {
                "/metrics" => (StatusCode::OK, handle.render()),
                "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
                _ => (
                    StatusCode::NOT_FOUND,
                    "not found: try /metrics or /healthz\n".to_owned(),
                ),
            };
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            async move { Ok::<_, Infallible>(r) }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
