//! What inbound and outbound TCP share: accepting without falling over when descriptors run
//! out, opening the connection a flow is relayed to (inbound, from the client's own
//! address), and relaying an allowed connection for as long as the policy keeps allowing it.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use palisade_policy::policy::Direction;
use palisade_policy::ports::Protocol;
use palisade_policy::verdict::Action;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::judge::{FlowInfo, Judge, L7Need};
use crate::metrics;
use crate::original_dst::original_dst;
use crate::splice::{self, reset_on_close};
use crate::{http, sni};

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
    // Accepted connections inherit TCP_NODELAY from the listener (see `tcp_listener`).
    accept_loop(listener, name, |stream, peer| {
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
    match j.l7 {
        // Only rules with HTTP conditions allow it: each request is judged.
        L7Need::Http => {
            let host_check = j.verdict.is_some_and(|v| v.inspect.sni);
            return http::serve(judge, flow, client, host_check).await;
        }
        // Only rules requiring SNI allow it: the server name is checked first.
        L7Need::Sni => return sni::serve(judge, flow, client).await,
        // Every other connection is relayed unread.
        _ => {}
    }
    match open_upstream(judge, &flow).await {
        Ok(upstream) => relay(judge, &flow, j.action, false, client, upstream).await,
        Err(e) => {
            tracing::debug!(src = %flow.src, dst = %flow.dst, error = %e, "cannot reach the destination");
            reset_on_close(&client);
        }
    }
}

/// Where a connection the pod opened was going, from its redirection. A connection that
/// reached one of the proxy's own listeners unredirected (the app connected to it on
/// loopback) has nowhere to go: it is refused, and logged as `proxy-port`.
pub fn redirected_dst(judge: &Judge, client: &TcpStream, src: SocketAddr) -> Option<SocketAddr> {
    let dst = original_dst(client, src).ok()?;
    if judge.config().is_own_listener(dst) {
        judge.refuse_own_port(&FlowInfo::new(Direction::Egress, Protocol::Tcp, src, dst));
        return None;
    }
    Some(dst)
}

/// Opens the connection an allowed flow is relayed to: an inbound one from the client's
/// own address, so that the app sees who called it; an outbound one from the pod's.
pub async fn open_upstream(judge: &Judge, flow: &FlowInfo) -> io::Result<TcpStream> {
    match flow.direction {
        Direction::Ingress => connect_as(judge, flow.src, flow.dst).await,
        Direction::Egress => connect(judge, flow.dst).await,
    }
}

/// Connects to `dst` within the configured time.
pub async fn connect(judge: &Judge, dst: SocketAddr) -> io::Result<TcpStream> {
    connect_within(judge, TcpStream::connect(dst)).await
}

async fn connect_within(
    judge: &Judge,
    connecting: impl std::future::Future<Output = io::Result<TcpStream>>,
) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(judge.config().connect_timeout, connecting)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Whether sockets may take another address than the pod's (`IP_TRANSPARENT`, which needs
/// CAP_NET_RAW or CAP_NET_ADMIN). Cleared, and said once, when the kernel refuses.
static TRANSPARENT: AtomicBool = AtomicBool::new(true);

/// Checks at start that the proxy may connect to the app from its clients' addresses, and
/// says so (log and metric) when it may not.
pub fn check_transparent() {
    let may = Socket::new(Domain::IPV4, Type::STREAM, None)
        .is_ok_and(|socket| socket.set_ip_transparent_v4(true).is_ok());
    if may {
        ::metrics::gauge!(metrics::INBOUND_TRANSPARENT).set(1.0);
    } else {
        cannot_be_transparent();
    }
}

fn cannot_be_transparent() {
    if TRANSPARENT.swap(false, Ordering::Relaxed) {
        ::metrics::gauge!(metrics::INBOUND_TRANSPARENT).set(0.0);
        tracing::warn!(
            "cannot connect to the app from the clients' own addresses (IP_TRANSPARENT needs \
             CAP_NET_RAW); the app will see every inbound connection coming from the pod's \
             own address"
        );
    }
}

/// Connects to the app at `dst` from the client's own address. Falls back to the pod's
/// address, counted by reason, when the proxy lacks the capability or that address
/// cannot be bound (every port of it in use).
pub async fn connect_as(
    judge: &Judge,
    client: SocketAddr,
    dst: SocketAddr,
) -> io::Result<TcpStream> {
    let reason = if TRANSPARENT.load(Ordering::Relaxed) {
        match transparent_socket(client, dst) {
            Ok(socket) => return connect_within(judge, socket.connect(dst)).await,
            Err(Fallback::NoCapability) => {
                cannot_be_transparent();
                "no-capability"
            }
            Err(Fallback::Bind(e)) => {
                tracing::debug!(%client, error = %e, "cannot bind the client's address; connecting from the pod's");
                "bind"
            }
        }
    } else {
        "no-capability"
    };
    ::metrics::counter!(metrics::INBOUND_SOURCE_FALLBACKS, "reason" => reason).increment(1);
    connect(judge, dst).await
}

/// Why a connection to the app cannot come from the client's address.
enum Fallback {
    /// The kernel refused `IP_TRANSPARENT`.
    NoCapability,
    /// The socket could not be made or bound.
    Bind(io::Error),
}

/// A socket bound to the client's address (any port but the client's own), ready to
/// connect to `dst`. The app's replies, addressed to the client, come back to it through
/// the mark and route `palisade init` installs.
fn transparent_socket(client: SocketAddr, dst: SocketAddr) -> Result<TcpSocket, Fallback> {
    let first = bind_transparent(client, dst)?;
    let port = first
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.port());
    if port != Some(client.port()) {
        return Ok(TcpSocket::from_std_stream(first.into()));
    }
    // The client's own port would give the same addresses and ports as the client's
    // connection, which conntrack already redirects to the proxy: take another. The first
    // socket holds that port while the second binds.
    let second = bind_transparent(client, dst)?;
    drop(first);
    Ok(TcpSocket::from_std_stream(second.into()))
}

/// A non-blocking TCP socket (made so, not set so later: one system call less) bound to
/// the client's address (a port the kernel picks), which need not be an address of the pod.
fn bind_transparent(client: SocketAddr, dst: SocketAddr) -> Result<Socket, Fallback> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM.nonblocking(), None)
        .map_err(Fallback::Bind)?;
    let transparent = match client {
        SocketAddr::V4(_) => socket.set_ip_transparent_v4(true),
        SocketAddr::V6(_) => socket.set_ip_transparent_v6(true),
    };
    match transparent {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
            return Err(Fallback::NoCapability)
        }
        r => r.map_err(Fallback::Bind)?,
    }
    // Any port; a link-local address keeps its interface.
    let mut local = client;
    local.set_port(0);
    socket.bind(&local.into()).map_err(Fallback::Bind)?;
    Ok(socket)
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
/// `checked`: what the connection carries was checked when it started (its server name),
/// so a policy asking for that check does not cut it.
pub async fn relay(
    judge: &Judge,
    flow: &FlowInfo,
    action: Action,
    checked: bool,
    mut client: TcpStream,
    mut upstream: TcpStream,
) {
    let _open = OpenGuard::new(flow.label(), "TCP");
    let mut policies = judge.policies();
    let moved = {
        let relay = splice::relay(&mut client, &mut upstream);
        tokio::select! {
            moved = relay => Some(moved),
            _ = judge.until_denied(flow, checked, &mut policies) => None,
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
