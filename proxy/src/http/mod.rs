//! HTTP inspection, for connections that only rules with HTTP conditions allow. The
//! connection's protocol is detected from its first bytes; HTTP/1.x and HTTP/2 with prior
//! knowledge are served by hyper on the client's side and forwarded by hyper over the
//! connection the proxy opens to the original destination, request by request: each is
//! normalised, judged by the policy crate, and forwarded or answered by the proxy itself
//! (`403`, `400`). Anything else (TLS included) is refused and logged with its reason.

mod clock;
pub mod gate;
mod io;
mod request;
mod upstream;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use palisade_policy::verdict::Action;
use tokio::net::TcpStream;

use crate::detect::{detect, DetectError, Detected, Prefixed};
use crate::judge::{FlowInfo, Judge};
use crate::metrics;
use crate::splice::reset_on_close;
use clock::{HeadClock, HeadTimer};
use gate::Violation;
use io::{Activity, Gated, Tracked};
use upstream::Upstream;

/// The HTTP version a connection speaks, on both sides of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0 or 1.1.
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
}

impl Version {
    fn as_str(self) -> &'static str {
        match self {
            Version::Http1 => "HTTP/1.1",
            Version::Http2 => "HTTP/2",
        }
    }
}

/// What every request of one inspected connection shares.
struct Connection {
    judge: Judge,
    flow: FlowInfo,
    /// Each request's `Host` must be a name the pod resolved to the address (`requireSNI`).
    host_check: bool,
    version: Version,
    upstream: Upstream,
    /// What the strict HTTP/1 reader refused, to answer and log once hyper is done.
    violation: Arc<Mutex<Option<Violation>>>,
    /// Requests waiting for their response head.
    waiting: AtomicUsize,
    /// The counter of the last request's outcome.
    counted: request::LastCounter,
    activity: Activity,
}

/// Inspects an allowed connection that only rules with HTTP conditions allow, until it
/// ends or a new policy denies it outright. `host_check`: each request's `Host` must also
/// be a name the pod resolved to the address (`requireSNI`).
pub async fn serve(judge: &Judge, flow: FlowInfo, client: TcpStream, host_check: bool) {
    let limits = &judge.config().http;
    let detected = detect(client, limits.detect_timeout).await;
    let (version, stream) = match detected {
        Ok((Detected::Http1, stream)) => (Version::Http1, stream),
        Ok((Detected::Http2, stream)) => (Version::Http2, stream),
        Ok((other, stream)) => {
            count_inspected(&flow, other.as_str());
            let what = match other {
                Detected::Tls(_) => "a TLS ClientHello",
                _ => "bytes that are neither HTTP/1 nor HTTP/2",
            };
            refuse(judge, &flow, other.as_str(), what);
            let (_, client) = stream.into_parts();
            reset_on_close(&client);
            return;
        }
        Err(e) => {
            count_inspected(&flow, "silent");
            let detail = e.to_string();
            refuse(judge, &flow, "silent", &detail);
            if let DetectError::Timeout(_) = e {
                tracing::debug!(src = %flow.src, "no HTTP within the detection wait");
            }
            return;
        }
    };
    serve_detected(judge, flow, version, stream, host_check).await
}

/// Inspects a connection whose first bytes were read and found to be HTTP.
pub async fn serve_detected(
    judge: &Judge,
    flow: FlowInfo,
    version: Version,
    stream: Prefixed<TcpStream>,
    host_check: bool,
) {
    let limits = &judge.config().http;
    count_inspected(
        &flow,
        match version {
            Version::Http1 => "http1",
            Version::Http2 => "http2",
        },
    );
    let upstream = match Upstream::connect(judge, &flow, version).await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(src = %flow.src, dst = %flow.dst, error = %e, "cannot reach the destination");
            let (_, client) = stream.into_parts();
            reset_on_close(&client);
            return;
        }
    };
    let conn = Arc::new(Connection {
        judge: judge.clone(),
        flow,
        host_check,
        version,
        upstream,
        violation: Arc::default(),
        waiting: AtomicUsize::new(0),
        counted: Default::default(),
        activity: Activity::new(),
    });
    let _open = crate::tcp::OpenGuard::new(conn.flow.label(), "TCP");
    let mut policies = judge.policies();
    let service = {
        let conn = conn.clone();
        service_fn(move |req| request::handle(conn.clone(), req))
    };
    let tracked = Tracked::new(stream, conn.activity.clone());
    let head_clock = Arc::new(HeadClock::new());
    let serving = async {
        let result = match version {
            Version::Http1 => {
                let gated = Gated::new(tracked, limits, conn.violation.clone());
                http1::Builder::new()
                    .timer(HeadTimer(head_clock.clone()))
                    .header_read_timeout(limits.header_timeout)
                    .max_headers(limits.max_headers)
                    // Bounds what one connection buffers (hyper's default is ~400 KiB); the
                    // gate already bounds heads to max_head_bytes.
                    .max_buf_size(limits.max_head_bytes + 16 * 1024)
                    .serve_connection(TokioIo::new(gated), service)
                    .with_upgrades()
                    .await
            }
            Version::Http2 => {
                http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_header_list_size(limits.max_head_bytes as u32)
                    .keep_alive_interval(Some(Duration::from_secs(30)))
                    .serve_connection(TokioIo::new(tracked), service)
                    .await
            }
        };
        if let Err(e) = result {
            conn.connection_error(&e);
        }
    };
    tokio::select! {
        _ = serving => {}
        _ = judge.until_denied(&conn.flow, true, &mut policies) => {}
        _ = idle(&conn, limits.idle_timeout, (version == Version::Http1).then_some((&*head_clock, limits.header_timeout))) => {
            tracing::debug!(src = %conn.flow.src, "inspected connection idle; closed");
        }
    }
    if let Some(v) = conn.violation.lock().ok().and_then(|mut v| v.take()) {
        conn.log_violation(&v);
    }
}

/// Resolves once no byte moved for `limit` while no request waited for its response. On
/// the way, wakes an HTTP/1 head whose time ran out (`head`: its clock and limit).
async fn idle(conn: &Connection, limit: Duration, head: Option<(&HeadClock, Duration)>) {
    loop {
        let quiet = conn.activity.quiet_for();
        if quiet >= limit && conn.waiting.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut wait = limit.saturating_sub(quiet).max(Duration::from_millis(100));
        if let Some((clock, head_limit)) = head {
            wait = wait.min(clock.next_check(head_limit));
        }
        tokio::time::sleep(wait).await;
    }
}

fn count_inspected(flow: &FlowInfo, protocol: &'static str) {
    ::metrics::counter!(metrics::INSPECTED, "direction" => flow.label(), "protocol" => protocol)
        .increment(1);
}

/// Logs a connection refused because it does not speak HTTP (it was allowed only by HTTP
/// rules), and counts it as a denied request-less flow.
fn refuse(judge: &Judge, flow: &FlowInfo, what: &'static str, detail: &str) {
    judge.log_refusal(
        flow,
        "not-http",
        format!(
            "only rules with HTTP conditions allow this connection, and it sent {detail} ({what}); refused"
        ),
        None,
    );
}

impl Connection {
    /// Logs what ended the connection when it is worth knowing.
    fn connection_error(&self, e: &hyper::Error) {
        if e.is_parse() || e.is_parse_too_large() || e.is_parse_version_h2() {
            self.judge.log_refusal(
                &self.flow,
                "bad-request",
                format!("refused with 400: {e}"),
                None,
            );
            request::count(&self.flow, Action::Deny, 400);
        } else if e.is_timeout() {
            tracing::debug!(src = %self.flow.src, "a request head took too long; closed");
        } else {
            tracing::debug!(src = %self.flow.src, error = %e, "inspected connection ended");
        }
    }

    fn log_violation(&self, v: &Violation) {
        self.judge.log_refusal(
            &self.flow,
            "bad-request",
            format!("refused with 400: {v}"),
            None,
        );
        request::count(&self.flow, Action::Deny, 400);
    }
}
