//! UDP through TPROXY. iptables hands the pod's UDP to two transparent listeners, outbound
//! and inbound, keeping each datagram's original destination. Every (source, destination)
//! pair becomes a session, judged once when it starts and again on every new policy, and
//! ended after it idles.
//!
//! Outbound, the proxy sends to the destination from a socket of its own, and answers the
//! app as the address the app wrote to. Inbound, it relays to the app as the real client;
//! the app's replies then leave directly (iptables lets replies to sessions the proxy
//! relayed through, and only those). Both are sent through raw sockets ([`raw`]).
//!
//! Transparent listeners and raw sockets need CAP_NET_RAW. Without it, the listeners
//! cannot be opened and iptables drops the pod's UDP (other than DNS): it fails closed.

mod listener;
mod raw;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use palisade_policy::policy::Direction;
use palisade_policy::ports::Protocol;
use palisade_policy::verdict::Action;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::judge::{FlowInfo, Judge};
use crate::metrics;
use crate::tcp::OpenGuard;
pub use listener::bind_transparent;
use listener::recv_original;
pub use raw::RawSender;

/// The largest datagram relayed.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams queued per session while it is judged or its socket is busy.
const QUEUE: usize = 64;

/// A socket of the proxy's own, connected to `dst` (the proxy's traffic is not redirected).
pub async fn connected(dst: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = match dst {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(dst).await?;
    Ok(socket)
}

/// What the listener knows of a (source, destination) pair.
enum Session {
    /// Judged allowed, or being judged: datagrams go to its task.
    Open(mpsc::Sender<Bytes>),
    /// Denied: drop its datagrams until then, without judging or logging each again.
    Denied(Instant),
}

type Key = (SocketAddr, SocketAddr);

/// How many new sessions start between sweeps of ended and expired ones.
const SWEEP_EVERY: u32 = 1024;

/// The sessions of one listener.
#[derive(Clone, Default)]
struct Sessions(Arc<Mutex<Table>>);

#[derive(Default)]
struct Table {
    sessions: HashMap<Key, Session>,
    started: u32,
}

impl Sessions {
    /// Delivers a datagram to its session; `Some(receiver)` when a new session must start.
    fn deliver(&self, key: Key, datagram: Bytes) -> Option<mpsc::Receiver<Bytes>> {
        let mut table = self.lock();
        match table.sessions.get(&key) {
            Some(Session::Open(tx)) if !tx.is_closed() => {
                // A full queue means the session cannot keep up: drop, as a network would.
                let _ = tx.try_send(datagram);
                None
            }
            Some(Session::Denied(until)) if *until > Instant::now() => None,
            _ => {
                // Denials are remembered for a while; without a sweep, datagrams from ever
                // new source ports would grow the table for good.
                table.started = table.started.wrapping_add(1);
                if table.started.is_multiple_of(SWEEP_EVERY) {
                    let now = Instant::now();
                    table.sessions.retain(|_, s| match s {
                        Session::Open(tx) => !tx.is_closed(),
                        Session::Denied(until) => *until > now,
                    });
                }
                let (tx, rx) = mpsc::channel(QUEUE);
                let _ = tx.try_send(datagram);
                table.sessions.insert(key, Session::Open(tx));
                Some(rx)
            }
        }
    }

    fn deny(&self, key: Key, until: Instant) {
        self.lock().sessions.insert(key, Session::Denied(until));
    }

    fn end(&self, key: Key) {
        let mut table = self.lock();
        if matches!(table.sessions.get(&key), Some(Session::Open(_))) {
            table.sessions.remove(&key);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves a transparent listener forever: `direction` says whose side it is.
pub async fn serve(socket: UdpSocket, direction: Direction, judge: Judge, raw: Arc<RawSender>) {
    let sessions = Sessions::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let name = match direction {
        Direction::Ingress => "inbound-udp",
        Direction::Egress => "outbound-udp",
    };
    loop {
        let (n, src, dst) = match recv_original(&socket, &mut buf).await {
            Ok(r) => r,
            Err(e) => {
                ::metrics::counter!(metrics::LISTENER_ERRORS, "listener" => name, "reason" => "recv").increment(1);
                tracing::debug!(listener = name, error = %e, "cannot receive");
                continue;
            }
        };
        let key = (src, dst);
        if let Some(rx) = sessions.deliver(key, Bytes::copy_from_slice(&buf[..n])) {
            let (judge, sessions, raw) = (judge.clone(), sessions.clone(), raw.clone());
            tokio::spawn(async move {
                let result = match direction {
                    Direction::Egress => outbound(&judge, &sessions, &raw, key, rx).await,
                    Direction::Ingress => inbound(&judge, &sessions, &raw, key, rx).await,
                };
                if let Err(e) = result {
                    ::metrics::counter!(metrics::LISTENER_ERRORS, "listener" => name, "reason" => "session").increment(1);
                    tracing::debug!(%src, %dst, error = %e, "UDP session failed");
                }
                sessions.end(key);
            });
        }
    }
}

/// Judges a new session: its action and open-flow count while it lasts, or `None` when it
/// is denied (and remembered as such).
async fn open(
    judge: &Judge,
    sessions: &Sessions,
    key: Key,
    flow: &FlowInfo,
) -> Option<(Action, OpenGuard)> {
    let j = judge.judge(flow).await;
    if j.action == Action::Deny {
        sessions.deny(key, Instant::now() + judge.config().udp_idle);
        return None;
    }
    Some((j.action, OpenGuard::new(flow.label(), "UDP")))
}

async fn outbound(
    judge: &Judge,
    sessions: &Sessions,
    raw: &RawSender,
    key: Key,
    mut rx: mpsc::Receiver<Bytes>,
) -> io::Result<()> {
    let (app, asked) = key;
    let Some(flow) = judge.outbound_flow(app, asked, Protocol::Udp).await else {
        return Ok(());
    };
    let Some((action, _open)) = open(judge, sessions, key, &flow).await else {
        return Ok(());
    };
    let upstream = connected(flow.dst).await?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut policies = judge.policies();
    let mut bytes = 0u64;
    let idle = judge.config().udp_idle;
    loop {
        let n = tokio::select! {
            d = rx.recv() => match d {
                Some(d) => upstream.send(&d).await?,
                None => break,
            },
            r = upstream.recv(&mut buf) => {
                // Answers come from the address the app wrote to (a ClusterIP, say).
                let n = r?;
                raw.send(asked, app, &buf[..n])?;
                n
            }
            _ = tokio::time::sleep(idle) => break,
            _ = judge.until_denied(&flow, false, &mut policies) => break,
        };
        bytes += n as u64;
    }
    metrics::count_bytes(&flow, action, bytes);
    Ok(())
}

async fn inbound(
    judge: &Judge,
    sessions: &Sessions,
    raw: &RawSender,
    key: Key,
    mut rx: mpsc::Receiver<Bytes>,
) -> io::Result<()> {
    let (client, dst) = key;
    let flow = FlowInfo::new(Direction::Ingress, Protocol::Udp, client, dst);
    if judge.config().is_own_port(dst.port()) {
        judge.refuse_own_port(&flow);
        sessions.deny(key, Instant::now() + judge.config().udp_idle);
        return Ok(());
    }
    let Some((action, _open)) = open(judge, sessions, key, &flow).await else {
        return Ok(());
    };
    let mut policies = judge.policies();
    let mut bytes = 0u64;
    let idle = judge.config().udp_idle;
    loop {
        let n = tokio::select! {
            d = rx.recv() => match d {
                // The app sees the real client; its replies leave directly.
                Some(d) => { raw.send(client, dst, &d)?; d.len() }
                None => break,
            },
            _ = tokio::time::sleep(idle) => break,
            _ = judge.until_denied(&flow, false, &mut policies) => break,
        };
        bytes += n as u64;
    }
    metrics::count_bytes(&flow, action, bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> Key {
        (
            SocketAddr::from(([10, 0, 0, 1], port)),
            SocketAddr::from(([10, 0, 0, 2], 53)),
        )
    }

    #[test]
    fn expired_denials_and_ended_sessions_are_swept() {
        let sessions = Sessions::default();
        for port in 1..=3000u16 {
            let rx = sessions.deliver(key(port), Bytes::from_static(b"x"));
            assert!(rx.is_some(), "a new pair starts a session");
            // Denied until now: expired at once.
            sessions.deny(key(port), Instant::now());
        }
        let left = sessions.lock().sessions.len();
        assert!(left < SWEEP_EVERY as usize, "swept down to {left}");
    }

    #[test]
    fn a_denied_pair_is_not_judged_again_until_its_denial_expires() {
        let sessions = Sessions::default();
        assert!(sessions.deliver(key(1), Bytes::new()).is_some());
        sessions.deny(key(1), Instant::now() + std::time::Duration::from_secs(60));
        assert!(sessions.deliver(key(1), Bytes::new()).is_none());
        sessions.deny(key(1), Instant::now());
        assert!(sessions.deliver(key(1), Bytes::new()).is_some());
    }
}
