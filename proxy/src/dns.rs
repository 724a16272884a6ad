//! DNS: queries the pod sends to its resolvers over UDP are redirected here. Each is judged
//! as the pod's egress to the resolver (a Service's backend, for a cluster DNS Service),
//! then forwarded, and the answer returned. DNS over TCP is ordinary outbound TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use palisade_policy::ports::Protocol;
use palisade_policy::verdict::Action;
use tokio::net::UdpSocket;

use crate::judge::Judge;
use crate::metrics;
use crate::udp;

/// How long a resolver may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest DNS message over UDP (EDNS allows up to 64 KiB).
const MAX_MESSAGE: usize = 65_535;

/// Serves the UDP DNS listener forever.
pub async fn serve(socket: UdpSocket, judge: Judge) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, app) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                ::metrics::counter!(metrics::LISTENER_ERRORS, "listener" => "dns", "reason" => "recv").increment(1);
                tracing::debug!(error = %e, "cannot receive a DNS query");
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let (socket, judge) = (socket.clone(), judge.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(&judge, &socket, app, &query).await {
                tracing::debug!(%app, error = %e, "DNS query not answered");
            }
        });
    }
}

async fn answer(
    judge: &Judge,
    socket: &UdpSocket,
    app: SocketAddr,
    query: &[u8],
) -> std::io::Result<()> {
    let upstreams = &judge.config().dns_upstreams;
    let Some(&resolver) = upstreams
        .iter()
        .find(|r| r.is_ipv4() == app.is_ipv4())
        .or(upstreams.first())
    else {
        return Ok(());
    };
    let asked = SocketAddr::new(resolver, 53);
    let Some(flow) = judge.outbound_flow(app, asked, Protocol::Udp).await else {
        return Ok(());
    };
    if judge.judge(&flow).await.action == Action::Deny {
        return Ok(());
    }
    let upstream = udp::connected(flow.dst).await?;
    upstream.send(query).await?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let n = tokio::time::timeout(ANSWER_TIMEOUT, upstream.recv(&mut buf))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "resolver did not answer")
        })??;
    socket.send_to(&buf[..n], app).await?;
    Ok(())
}
