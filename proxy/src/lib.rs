//! palisade-proxy: the sidecar that enforces one pod's policy. It takes the pod's traffic
//! as iptables redirects it (inbound and outbound TCP, UDP through TPROXY, DNS), judges each
//! new flow with the policy crate, relays what is allowed and refuses the rest.
//!
//! It must never decide anything itself (every verdict comes from `palisade_policy`), never
//! let a flow through unjudged, and never stop enforcing: when the controller is gone it
//! keeps the last policy it had.

/// Implements `AsyncWrite` for a wrapper `$t<S>` by writing straight to its field `$f`:
/// wrappers that change only how a stream is read.
macro_rules! write_through {
    ($t:ident, $f:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $t<S> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$f).poll_write(cx, buf)
            }
            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$f).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.$f.is_write_vectored()
            }
            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$f).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$f).poll_shutdown(cx)
            }
        }
    };
}

pub mod admin;
pub mod capability;
pub mod client;
pub mod config;
pub mod controller_address;
pub mod detect;
pub mod dns;
pub mod flowlog;
pub mod http;
pub mod inbound;
pub mod judge;
pub mod metrics;
pub mod original_dst;
pub mod outbound;
pub mod report;
pub mod sni;
pub mod splice;
pub mod state;
pub mod tcp;
pub mod udp;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use palisade_policy::policy::Direction;
use tokio::net::{TcpListener, TcpSocket, UdpSocket};

pub use config::{Config, FailMode};
use flowlog::FlowLog;
use judge::Judge;
use state::PolicyState;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct ListenError {
    what: &'static str,
    addr: SocketAddr,
    #[source]
    source: io::Error,
}

fn tcp_listener(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let err = |source| ListenError { what, addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    // Accepted connections inherit it: no system call per connection to set it.
    socket.set_nodelay(true).map_err(err)?;
    if addr.is_ipv6() {
        socket2::SockRef::from(&socket)
            .set_only_v6(true)
            .map_err(err)?;
    }
    socket.bind(addr).map_err(err)?;
    socket.listen(4096).map_err(err)
}

/// Whether this network namespace has IPv6.
fn ipv6_up() -> bool {
    std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// Raises the soft limit on open files to the hard limit: every relayed connection costs
/// two sockets and two pipes.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a live local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Runs the proxy until the process ends. Fails only if a TCP listener cannot be opened;
/// UDP listeners that cannot be opened (no CAP_NET_RAW) are reported, and the pod's UDP
/// then stays dropped by iptables.
pub async fn run(config: Config) -> Result<(), ListenError> {
    raise_fd_limit();
    let metrics = metrics::install();
    let config = Arc::new(config);
    let state = PolicyState::default();
    let log = FlowLog::start(config.log_allowed).map_err(|source| ListenError {
        what: "flow log",
        addr: config.admin,
        source,
    })?;
    let reporter = config.flow_reports.then(report::Reporter::default);
    let judge = Judge::new(config.clone(), state.clone(), log, reporter.clone());

    tcp::check_transparent();
    let ipv6 = ipv6_up();
    let raw = match udp::RawSender::open(ipv6) {
        Ok(raw) => Some(Arc::new(raw)),
        Err(e) => {
            tracing::error!(
                error = %e,
                "cannot open raw sockets (they need CAP_NET_RAW); the pod's UDP other than DNS stays dropped"
            );
            None
        }
    };
    let mut families: Vec<(IpAddr, IpAddr)> =
        vec![(Ipv4Addr::UNSPECIFIED.into(), Ipv4Addr::LOCALHOST.into())];
    if ipv6 {
        families.push((Ipv6Addr::UNSPECIFIED.into(), Ipv6Addr::LOCALHOST.into()));
    }
    for (any, loopback) in families {
        // Outbound and DNS traffic is redirected from the pod itself, to loopback.
        let outbound = tcp_listener("outbound", SocketAddr::new(loopback, config.outbound_port))?;
        let inbound = tcp_listener("inbound", SocketAddr::new(any, config.inbound_port))?;
        let dns_tcp = tcp_listener("dns", SocketAddr::new(loopback, config.dns_port))?;
        let dns_udp = UdpSocket::bind(SocketAddr::new(loopback, config.dns_port))
            .await
            .map_err(|source| ListenError {
                what: "dns",
                addr: SocketAddr::new(loopback, config.dns_port),
                source,
            })?;
        tokio::spawn(outbound::serve(outbound, judge.clone()));
        tokio::spawn(inbound::serve(inbound, judge.clone()));
        tokio::spawn(dns::serve_tcp(dns_tcp, judge.clone()));
        tokio::spawn(dns::serve_udp(dns_udp, judge.clone()));
        if let Some(port) = config.metrics_port {
            let listener = tcp_listener("metrics", SocketAddr::new(any, port))?;
            tokio::spawn(admin::serve_metrics(listener, metrics.clone()));
        }
        let Some(raw) = &raw else { continue };
        for (direction, port) in [
            (Direction::Egress, config.outbound_port),
            (Direction::Ingress, config.inbound_port),
        ] {
            let addr = SocketAddr::new(any, port);
            match udp::bind_transparent(addr) {
                Ok(socket) => {
                    tokio::spawn(udp::serve(socket, direction, judge.clone(), raw.clone()));
                }
                Err(e) => tracing::error!(
                    %addr, error = %e,
                    "cannot open the transparent UDP listener (it needs CAP_NET_RAW); \
                     the pod's UDP other than DNS stays dropped"
                ),
            }
        }
    }
    tokio::spawn(dns::sweep(judge.clone()));
    if config.dns.resolve_names {
        tokio::spawn(dns::resolve::run(judge.clone()));
    }
    let admin = tcp_listener("admin", config.admin)?;
    tokio::spawn(admin::serve(
        admin,
        state.clone(),
        judge.dns().clone(),
        metrics,
    ));
    tracing::info!(pod = %config.pod, controllers = %config.controllers.iter().map(ToString::to_string).collect::<Vec<_>>().join(","), "proxy started");
    let link = client::Link::default();
    if let Some(reporter) = reporter {
        tokio::spawn(reporter.run(config.clone(), link.clone()));
    }
    client::run_linked(config, state, link).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections a listener accepts carry TCP_NODELAY without setting it on each.
    #[tokio::test]
    async fn accepted_connections_inherit_nodelay() {
        let listener = tcp_listener("test", (Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
        assert!(
            !client.nodelay().unwrap(),
            "the positive control: a fresh socket has none"
        );
    }
}
