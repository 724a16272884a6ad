//! The policy stream: one HTTP/2 request to the controller, answered by the pod's policy and
//! then a new one on every change, one JSON document per line. When the stream breaks or
//! carries anything malformed, the proxy keeps the policy it has (fail static), drops the
//! stream, and reconnects with backoff.

use std::hash::BuildHasher;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use palisade_policy::compiled::{stream_path, Versioned};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::controller_address::Host;
use crate::metrics;
use crate::state::PolicyState;

/// The first delay before reconnecting.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest delay between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The largest policy message accepted.
const MAX_MESSAGE: usize = 64 << 20;
/// How long connecting to the controller may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The controller's address is unusable.
    #[error("controller address {0:?}: {1}")]
    Address(String, &'static str),
    /// No connection could be made.
    #[error("cannot connect to the controller: {0}")]
    Connect(#[source] io::Error),
    /// HTTP/2 failed (including the keep-alive noticing a dead controller).
    #[error("HTTP/2 with the controller failed: {0}")]
    Http(#[from] hyper::Error),
    /// The controller refused the request.
    #[error("the controller answered {status}: {body}")]
    Status {
        /// The status.
        status: StatusCode,
        /// What it said.
        body: String,
    },
    /// A message that is not a policy.
    #[error("malformed policy message: {0}")]
    Malformed(#[source] serde_json::Error),
    /// A message too large to be a policy.
    #[error("policy message larger than {MAX_MESSAGE} bytes")]
    TooLarge,
    /// A policy for another pod.
    #[error("the controller sent the policy of {got}, not of {want}")]
    WrongPod {
        /// The pod the message was for.
        got: String,
        /// This proxy's pod.
        want: String,
    },
}

impl StreamError {
    /// The label this error is counted under.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Address(..) => "address",
            Self::Connect(_) => "connect",
            Self::Http(_) => "http",
            Self::Status { .. } => "status",
            Self::Malformed(_) => "malformed",
            Self::TooLarge => "too-large",
            Self::WrongPod { .. } => "wrong-pod",
        }
    }
}

/// Keeps the pod's policy up to date, forever.
pub async fn run(config: Arc<Config>, state: PolicyState) {
    let mut delay = MIN_BACKOFF;
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0u64.. {
        let mut received = false;
        match stream(&config, &state, &mut received).await {
            Ok(()) => tracing::info!("policy stream ended; reconnecting"),
            Err(e) => {
                ::metrics::counter!(metrics::STREAM_ERRORS, "reason" => e.reason()).increment(1);
                tracing::warn!(error = %e, "policy stream failed; keeping the last policy and reconnecting");
            }
        }
        if received {
            delay = MIN_BACKOFF;
        }
        // Up to half the delay again, so that proxies restarted together spread out.
        let jitter = random.hash_one(attempt) % (delay.as_millis() as u64 / 2 + 1);
        tokio::time::sleep(delay + Duration::from_millis(jitter)).await;
        delay = (delay * 2).min(MAX_BACKOFF);
    }
}

/// One stream, until it ends; `received` is set once a policy arrived on it.
async fn stream(
    config: &Config,
    state: &PolicyState,
    received: &mut bool,
) -> Result<(), StreamError> {
    let port = config.controller.port();
    let connecting = async {
        match config.controller.host() {
            Host::Ip(ip) => TcpStream::connect(SocketAddr::new(*ip, port)).await,
            // Resolved at every connection, so that a Service name follows the controller.
            Host::Name(name) => TcpStream::connect((name.as_str(), port)).await,
        }
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| StreamError::Connect(io::ErrorKind::TimedOut.into()))?
        .map_err(StreamError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await?;
    let driver = tokio::spawn(connection);
    let result = async {
        let request = Request::get(format!("{}{}", config.controller, stream_path(&config.pod)))
            .header(http::header::ACCEPT, "application/x-ndjson")
            .body(Empty::new())
            .map_err(|_| {
                StreamError::Address(config.controller.to_string(), "cannot build a request")
            })?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let mut body = response.into_body();
        if status != StatusCode::OK {
            let text = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(StreamError::Status {
                status,
                body: String::from_utf8_lossy(&text[..text.len().min(512)])
                    .trim()
                    .to_owned(),
            });
        }
        let mut pending = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line = pending.split_to(end + 1);
                accept(config, state, &line[..end])?;
                *received = true;
            }
            if pending.len() > MAX_MESSAGE {
                return Err(StreamError::TooLarge);
            }
        }
        Ok(())
    }
    .await;
    driver.abort();
    result
}

/// Takes one line of the stream as the new policy, if it is one for this pod.
fn accept(config: &Config, state: &PolicyState, line: &[u8]) -> Result<(), StreamError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let message: Versioned = serde_json::from_slice(line).map_err(StreamError::Malformed)?;
    if message.policy.pod != config.pod {
        return Err(StreamError::WrongPod {
            got: message.policy.pod,
            want: config.pod.clone(),
        });
    }
    ::metrics::gauge!(metrics::POLICY_VERSION).set(message.version as f64);
    ::metrics::counter!(metrics::POLICY_UPDATES).increment(1);
    tracing::info!(version = message.version, "policy updated");
    state.set(message);
    Ok(())
}
