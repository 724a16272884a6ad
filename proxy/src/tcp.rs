//! What inbound and outbound TCP share: accepting without falling over when descriptors run
//! out, and relaying an allowed connection for as long as the policy keeps allowing it.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use palisade_policy::verdict::Action;
use tokio::net::{TcpListener, TcpStream};

use crate::judge::{FlowInfo, Judge};
use crate::metrics;
use crate::splice::{self, reset_on_close};

/// Accepts connections forever, handing each to `handle`. When the process runs out of
/// descriptors or memory, it pauses briefly instead of spinning, and says so at most once a
/// second; connections already open carry on.
pub async fn accept_loop<F>(listener: TcpListener, name: &'static str, handle: F)
where
    F: Fn(TcpStream, SocketAddr),
{
    let mut last_warning: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => handle(stream, peer),
            Err(e) => {
                ::metrics::counter!(metrics::LISTENER_ERRORS, "listener" => name, "reason" => "accept").increment(1);
                let exhausted = matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    tracing::warn!(listener = name, error = %e, "cannot accept connections");
                    last_warning = Some(Instant::now());
                }
                if exhausted {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Serves a listener forever, each connection handled by `handle` on a task of its own.
pub async fn serve<F, Fut>(listener: TcpListener, name: &'static str, judge: Judge, handle: F)
where
    F: Fn(Judge, TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    accept_loop(listener, name, |stream, peer| {
        let _ = stream.set_nodelay(true);
        tokio::spawn(handle(judge.clone(), stream, peer));
    })
    .await
}

/// Judges a new connection and relays it to `flow.dst` for as long as the policy allows
/// it; a denied connection, or one whose destination cannot be reached, is reset.
pub async fn forward(judge: &Judge, flow: FlowInfo, client: TcpStream) {
    let j = judge.judge(&flow).await;
    if j.action == Action::Deny {
        reset_on_close(&client);
        return;
    }
    match connect(judge, flow.dst).await {
        Ok(upstream) => relay(judge, &flow, j.action, client, upstream).await,
        Err(e) => {
            tracing::debug!(src = %flow.src, dst = %flow.dst, error = %e, "cannot reach the destination");
            reset_on_close(&client);
        }
    }
}

/// Connects to `dst` within the configured time.
pub async fn connect(judge: &Judge, dst: SocketAddr) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(judge.config().connect_timeout, TcpStream::connect(dst))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Keeps one open-flow gauge up for as long as it lives.
pub struct OpenGuard(&'static str, &'static str);

impl OpenGuard {
    /// Counts one more open flow.
    pub fn new(direction: &'static str, protocol: &'static str) -> Self {
        ::metrics::gauge!(metrics::OPEN, "direction" => direction, "protocol" => protocol)
            .increment(1.0);
        Self(direction, protocol)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        ::metrics::gauge!(metrics::OPEN, "direction" => self.0, "protocol" => self.1)
            .decrement(1.0);
    }
}

/// Relays an allowed connection until it ends, re-judging it whenever a new policy
/// arrives and cutting it off (with resets both ways) if that policy denies it.
pub async fn relay(
    judge: &Judge,
    flow: &FlowInfo,
    action: Action,
    mut client: TcpStream,
    mut upstream: TcpStream,
) {
    let _open = OpenGuard::new(flow.label(), "TCP");
    let mut policies = judge.policies();
    let moved = {
        let relay = splice::relay(&mut client, &mut upstream);
        tokio::select! {
            moved = relay => Some(moved),
            _ = judge.until_denied(flow, &mut policies) => None,
        }
    };
    match moved {
        Some(Ok(moved)) => {
            metrics::count_bytes(flow, action, moved.forward + moved.backward);
        }
        Some(Err(e)) => {
            tracing::debug!(error = %e, src = %flow.src, dst = %flow.dst, "relay ended")
        }
        None => {
            reset_on_close(&client);
            reset_on_close(&upstream);
        }
    }
}
