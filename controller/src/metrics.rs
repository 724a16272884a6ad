//! The controller's Prometheus metrics, served with a health check on their own address.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::store::Store;

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
/// Stream requests refused, by reason (`no-token`, `invalid-token`, `wrong-pod`, ...).
pub const REFUSED: &str = "palisade_controller_streams_refused_total";
/// Bytes sent on policy streams.
pub const STREAM_BYTES: &str = "palisade_controller_stream_bytes_total";
/// Errors of the Kubernetes watches, by kind (each is retried with backoff).
pub const WATCH_ERRORS: &str = "palisade_controller_watch_errors_total";
/// Admission requests answered, by webhook (`inject`, `validate`) and result (`injected`,
/// `left`, `refused`, `allowed`, `warned`, `error`).
pub const WEBHOOK_REQUESTS: &str = "palisade_webhook_requests_total";
/// Messages sent on policy streams.
pub const STREAM_MESSAGES: &str = "palisade_controller_stream_messages_total";
/// Seconds from a change reaching the controller to its message handed to a proxy's
/// stream (batching, compiling, waking the stream, encoding), per stream it changed.
pub const PUSH_SECONDS: &str = "palisade_controller_push_seconds";

/// Buckets of [`PUSH_SECONDS`]: a histogram, so that replicas can be aggregated.
const PUSH_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Flow records taken from proxies' batches, by result (`kept`; `dropped-by-proxy`: what
/// proxies could not queue).
pub const FLOW_RECORDS: &str = "palisade_controller_flow_records_total";
/// Flow records that left the window, by reason (`age`, `count`).
pub const FLOW_EVICTED: &str = "palisade_controller_flow_records_evicted_total";
/// Flow records in the window now.
pub const FLOW_WINDOW_RECORDS: &str = "palisade_controller_flow_window_records";
/// Bytes the window's records take, roughly.
pub const FLOW_WINDOW_BYTES: &str = "palisade_controller_flow_window_bytes";
/// New flow records a follower (`flows --follow`) missed because it fell behind.
pub const FLOW_FOLLOW_MISSED: &str = "palisade_controller_flow_follow_missed_total";

/// Installs the global recorder (once per process: later calls get the same handle, so
/// that several controllers of one process, as tests run them, all serve it).
pub fn install() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE.get_or_init(install_once).clone()
}

fn install_once() -> Option<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(PUSH_SECONDS.to_owned()), PUSH_BUCKETS)
        .ok()?
        .build_recorder();
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
        REFUSED,
        "Policy stream requests refused, by reason (no-token, invalid-token, wrong-audience, not-bound, wrong-pod, wrong-uid, unknown-pod, review-failed, starting, tls)"
    );
    ::metrics::describe_counter!(STREAM_BYTES, "Bytes sent on policy streams");
    ::metrics::describe_counter!(
        WEBHOOK_REQUESTS,
        "Admission requests answered, by webhook and result"
    );
    ::metrics::describe_counter!(
        WATCH_ERRORS,
        "Errors of the Kubernetes watches, by kind; each is retried with backoff"
    );
    ::metrics::describe_counter!(STREAM_MESSAGES, "Messages sent on policy streams");
    ::metrics::describe_histogram!(
        PUSH_SECONDS,
        ::metrics::Unit::Seconds,
        "Time from a change reaching the controller to its message handed to a proxy's stream"
    );
    ::metrics::describe_counter!(
        FLOW_RECORDS,
        "Flow records taken from proxies' batches, by result (kept, dropped-by-proxy)"
    );
    ::metrics::describe_counter!(
        FLOW_EVICTED,
        "Flow records that left the window, by reason (age, count)"
    );
    ::metrics::describe_gauge!(FLOW_WINDOW_RECORDS, "Flow records in the window now");
    ::metrics::describe_gauge!(
        FLOW_WINDOW_BYTES,
        ::metrics::Unit::Bytes,
        "Memory the window's flow records take, roughly"
    );
    ::metrics::describe_counter!(
        FLOW_FOLLOW_MISSED,
        "New flow records a follower missed because it fell behind"
    );
    Some(handle)
}

/// Serves `/metrics`, `/healthz` (the process answers) and `/readyz` (policies are served:
/// the source was read whole once) forever.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, store: Arc<Store>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let (handle, store) = (handle.clone(), store.clone());
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (status, body) = match req.uri().path() {
                "/metrics" => (StatusCode::OK, handle.render()),
                "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
                "/readyz" if store.ready() => (StatusCode::OK, "ready\n".to_owned()),
                "/readyz" => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the cluster is not read yet\n".to_owned(),
                ),
                _ => (
                    StatusCode::NOT_FOUND,
                    "not found: try /metrics, /healthz or /readyz\n".to_owned(),
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
