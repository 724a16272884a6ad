//! The app's side of an inspected connection: hyper's client over the connection the proxy
//! opens to the original destination, in the client's HTTP version. An HTTP/1 connection
//! the app closed between requests is opened again for the next one.

use std::io;
use std::net::SocketAddr;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Mutex;

use super::Version;
use crate::judge::{FlowInfo, Judge};
use crate::tcp::open_upstream;

enum Sender {
    Http1(http1::SendRequest<Incoming>),
    Http2(http2::SendRequest<Incoming>),
}

/// Where allowed requests go.
pub struct Upstream {
    judge: Judge,
    flow: FlowInfo,
    version: Version,
    sender: Mutex<Sender>,
}

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The destination could not be reached again.
    #[error("cannot reach {0}: {1}")]
    Connect(SocketAddr, io::Error),
    /// The exchange failed (the app closed, or the request's body broke off).
    #[error("{0}")]
    Exchange(#[from] hyper::Error),
}

/// Opens a connection to the flow's destination the way the proxy opens every upstream
/// connection (inbound: from the client's own address).
async fn open(judge: &Judge, flow: &FlowInfo, version: Version) -> Result<Sender, ForwardError> {
    let stream = open_upstream(judge, flow)
        .await
        .map_err(|e| ForwardError::Connect(flow.dst, e))?;
    let io = TokioIo::new(stream);
    Ok(match version {
        Version::Http1 => {
            let (sender, conn) = http1::handshake(io).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream HTTP/1 connection ended");
                }
            });
            Sender::Http1(sender)
        }
        Version::Http2 => {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            Sender::Http2(sender)
        }
    })
}

impl Upstream {
    /// Opens the connection to the flow's destination.
    pub async fn connect(
        judge: &Judge,
        flow: &FlowInfo,
        version: Version,
    ) -> Result<Self, ForwardError> {
        Ok(Self {
            sender: Mutex::new(open(judge, flow, version).await?),
            judge: judge.clone(),
            flow: flow.clone(),
            version,
        })
    }

    /// Forwards a request and returns the app's response head (its body streams).
    pub async fn send(&self, req: Request<Incoming>) -> Result<Response<Incoming>, ForwardError> {
        let response = {
            let mut sender = self.sender.lock().await;
            let closed = match &*sender {
                Sender::Http1(s) => s.is_closed(),
                Sender::Http2(s) => s.is_closed(),
            };
            if closed {
                *sender = open(&self.judge, &self.flow, self.version).await?;
            }
            // HTTP/1 sends one request at a time (hyper's server asks for the next only
            // once this response is done); HTTP/2 multiplexes on a clone of the sender.
            match &mut *sender {
                Sender::Http1(s) => {
                    s.ready().await?;
                    futures_util::future::Either::Left(s.send_request(req))
                }
                Sender::Http2(s) => {
                    let mut s = s.clone();
                    futures_util::future::Either::Right(async move {
                        s.ready().await?;
                        s.send_request(req).await
                    })
                }
            }
        };
        Ok(response.await?)
    }
}
