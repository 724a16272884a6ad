//! The policy stream: one HTTP/2 request over TLS to the controller, presenting the pod's
//! token, answered by a resync of the pod's policy and then by what changed (see
//! [`palisade_policy::wire`]). The controller's certificate must be signed by the CA the
//! proxy was given. When the stream breaks or carries anything malformed, the proxy keeps
//! the policy it has (fail static), drops the stream, and reconnects with backoff, to the
//! next controller address: every replica serves, so losing one costs a reconnection.

use std::hash::BuildHasher;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use palisade_policy::compiled::stream_path;
use palisade_policy::wire::{self, Held, WireError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use crate::config::{CaSource, Config};
use crate::controller_address::{ControllerAddress, Host};
use crate::metrics;
use crate::state::PolicyState;

/// The first delay before reconnecting.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest delay between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long connecting to the controller (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The controller's address is unusable.
    #[error("controller address {0:?}: {1}")]
    Address(String, &'static str),
    /// No connection could be made.
    #[error("cannot connect to the controller at {0}: {1}")]
    Connect(SocketAddr, #[source] io::Error),
    /// TLS failed: the CA cannot be read, or the controller's certificate is not signed by
    /// it or not for the name connected to.
    #[error("TLS with the controller: {0}")]
    Tls(String),
    /// The pod's token cannot be read.
    #[error("cannot read the token {path}: {source}")]
    Token {
        /// The token file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
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
    /// A message that cannot be taken.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A body that is not a policy stream.
    #[error("the controller answered with {0:?}, not a policy stream")]
    ContentType(String),
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
            Self::Connect(..) => "connect",
            Self::Tls(_) => "tls",
            Self::Token { .. } => "token",
            Self::Http(_) => "http",
            Self::Status { status, .. } if *status == StatusCode::UNAUTHORIZED => "unauthorized",
            Self::Status { status, .. } if *status == StatusCode::FORBIDDEN => "forbidden",
            Self::Status { .. } => "status",
            Self::Wire(WireError::TooLarge(_)) => "too-large",
            Self::Wire(_) | Self::ContentType(_) => "malformed",
            Self::WrongPod { .. } => "wrong-pod",
        }
    }
}

/// The name the controller's certificate must be for.
fn server_name(address: &ControllerAddress) -> Result<ServerName<'static>, StreamError> {
    match address.host() {
        Host::Ip(ip) => Ok(ServerName::IpAddress((*ip).into())),
        Host::Name(name) => ServerName::try_from(name.clone())
            .map_err(|_| StreamError::Address(address.to_string(), "not a DNS name")),
    }
}

/// Every address to try, in order: each controller's, a name giving all it resolves to
/// (resolved at each round, so that a Service's name follows the controller).
async fn candidates(config: &Config) -> Vec<(ControllerAddress, SocketAddr)> {
    let mut out = Vec::new();
    for c in &config.controllers {
        match c.host() {
            Host::Ip(ip) => out.push((c.clone(), SocketAddr::new(*ip, c.port()))),
            Host::Name(name) => {
                let resolved = tokio::net::lookup_host((name.as_str(), c.port())).await;
                match resolved {
                    Ok(addrs) => out.extend(addrs.map(|a| (c.clone(), a))),
                    Err(e) => {
                        tracing::warn!(controller = %c, error = %e, "cannot resolve the controller")
                    }
                }
            }
        }
    }
    out
}

fn tls_config(config: &Config) -> Result<Arc<ClientConfig>, StreamError> {
    let (what, certs): (String, Result<Vec<CertificateDer<'static>>, _>) = match &config.ca {
        CaSource::Pem(text) => (
            "the CA (PALISADE_CA)".into(),
            CertificateDer::pem_slice_iter(text.as_bytes()).collect(),
        ),
        CaSource::File(path) => (
            format!("CA file {}", path.display()),
            CertificateDer::pem_file_iter(path).and_then(|i| i.collect()),
        ),
    };
    let tls = |e: String| StreamError::Tls(format!("{what}: {e}"));
    let mut roots = RootCertStore::empty();
    for cert in certs.map_err(|e| tls(e.to_string()))? {
        roots.add(cert).map_err(|e| tls(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(tls("holds no certificate".into()));
    }
    let mut c =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| StreamError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(c))
}

/// The connection a policy stream holds open to a controller, which flow reports share so
/// that they reach the replica the proxy streams from, with the same TLS and token.
#[derive(Clone)]
pub struct Connection {
    /// The controller's address, as the stream's requests name it.
    pub target: ControllerAddress,
    /// Sends requests on the connection.
    pub sender: http2::SendRequest<Full<Bytes>>,
}

/// The current connection to the controller, if the stream is up.
#[derive(Clone, Default)]
pub struct Link(Arc<watch::Sender<Option<Connection>>>);

impl Link {
    /// Wakes on each new connection (and when it goes).
    pub fn subscribe(&self) -> watch::Receiver<Option<Connection>> {
        self.0.subscribe()
    }
}

/// Keeps the pod's policy up to date, forever.
pub async fn run(config: Arc<Config>, state: PolicyState) {
    run_linked(config, state, Link::default()).await;
}

/// Keeps the pod's policy up to date, forever, sharing each connection through `link`.
pub async fn run_linked(config: Arc<Config>, state: PolicyState, link: Link) {
    let mut delay = MIN_BACKOFF;
    let random = std::collections::hash_map::RandomState::new();
    let mut next = 0usize;
    for attempt in 0u64.. {
        let mut received = false;
        let targets = candidates(&config).await;
        let result = match targets.get(next % targets.len().max(1)) {
            None => Err(StreamError::Address(
                config
                    .controllers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                "no address to connect to",
            )),
            Some((target, addr)) => {
                let r = stream(&config, target, *addr, &state, &link, &mut received).await;
                link.0.send_replace(None);
                r
            }
        };
        match result {
            Ok(()) => tracing::info!("policy stream ended; reconnecting"),
            Err(e) => {
                ::metrics::counter!(metrics::STREAM_ERRORS, "reason" => e.reason()).increment(1);
                tracing::warn!(error = %e, "policy stream failed; keeping the last policy and reconnecting");
            }
        }
        // The next attempt goes to the next address: the one that failed may be a replica
        // that is gone.
        next = next.wrapping_add(1);
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
    target: &ControllerAddress,
    addr: SocketAddr,
    state: &PolicyState,
    link: &Link,
    received: &mut bool,
) -> Result<(), StreamError> {
    let tls = tls_config(config)?;
    let token =
        std::fs::read_to_string(&config.token_file).map_err(|source| StreamError::Token {
            path: config.token_file.display().to_string(),
            source,
        })?;
    let connect = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| StreamError::Connect(addr, e))?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(tls)
            .connect(server_name(target)?, tcp)
            .await
            .map_err(|e| StreamError::Tls(format!("{addr}: {e}")))
    };
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| StreamError::Connect(addr, io::ErrorKind::TimedOut.into()))??;
    let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .handshake::<_, Full<Bytes>>(TokioIo::new(tls))
        .await?;
    let driver = tokio::spawn(connection);
    link.0.send_replace(Some(Connection {
        target: target.clone(),
        sender: sender.clone(),
    }));
    let result = async {
        let authority = target.authority();
        let request = Request::get(format!("{target}{}", stream_path(&config.pod)))
            .header(http::header::ACCEPT, wire::MEDIA_TYPE)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            )
            .body(Full::new(Bytes::new()))
            .map_err(|_| StreamError::Address(authority.clone(), "cannot build a request"))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
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
        if content_type != wire::MEDIA_TYPE {
            return Err(StreamError::ContentType(content_type));
        }
        tracing::info!(controller = %addr, "policy stream open");
        let mut held = Held::default();
        let mut pending = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(len) = wire::frame_len(&pending)? {
                let frame = pending.split_to(len);
                accept(config, state, &mut held, &frame)?;
                *received = true;
            }
        }
        Ok(())
    }
    .await;
    driver.abort();
    result
}

/// Takes one message of the stream; a new policy for this pod goes in force.
fn accept(
    config: &Config,
    state: &PolicyState,
    held: &mut Held,
    frame: &[u8],
) -> Result<(), StreamError> {
    let update = wire::decode(frame)?;
    let Some(snapshot) = held.apply(update)? else {
        return Ok(());
    };
    if snapshot.policy.pod != config.pod {
        return Err(StreamError::WrongPod {
            got: snapshot.policy.pod,
            want: config.pod.clone(),
        });
    }
    ::metrics::gauge!(metrics::POLICY_VERSION).set(snapshot.version as f64);
    ::metrics::counter!(metrics::POLICY_UPDATES).increment(1);
    tracing::info!(version = snapshot.version, "policy updated");
    state.set(snapshot);
    Ok(())
}
