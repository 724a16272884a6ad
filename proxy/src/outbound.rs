//! Outbound TCP: the pod's connections, redirected to the outbound listener. A connection
//! to a Service's ClusterIP goes to a backend the proxy picks itself, and is judged against
//! that backend pod; every connection is judged against the pod's egress policy.

use std::net::SocketAddr;

use palisade_policy::policy::Direction;
use palisade_policy::ports::Protocol;
use palisade_policy::verdict::Action;
use tokio::net::{TcpListener, TcpStream};

use crate::judge::{FlowInfo, Judge};
use crate::original_dst::original_dst;
use crate::splice::reset_on_close;
use crate::tcp;

/// Serves the outbound listener forever.
pub async fn serve(listener: TcpListener, judge: Judge) {
    tcp::accept_loop(listener, "outbound", |stream, peer| {
        let judge = judge.clone();
        tokio::spawn(async move { handle(judge, stream, peer).await });
    })
    .await
}

async fn handle(judge: Judge, client: TcpStream, src: SocketAddr) {
    let _ = client.set_nodelay(true);
    let asked = match original_dst(&client) {
        Ok(dst) if !(judge.config().is_own_port(dst.port()) && is_self(&judge, dst)) => dst,
        _ => {
            reset_on_close(&client);
            return;
        }
    };
    let Some((dst, service)) = judge.route(asked, Protocol::Tcp) else {
        // A Service port with no backend refuses, as kube-proxy's REJECT rule does.
        reset_on_close(&client);
        return;
    };
    let flow = FlowInfo {
        direction: Direction::Egress,
        protocol: Protocol::Tcp,
        src,
        dst,
        service,
    };
    let j = judge.judge(&flow).await;
    if j.action == Action::Deny {
        reset_on_close(&client);
        return;
    }
    match tcp::connect(&judge, dst).await {
        Ok(upstream) => tcp::relay(&judge, &flow, j.action, client, upstream).await,
        Err(e) => {
            tracing::debug!(%src, %dst, error = %e, "cannot reach the destination");
            reset_on_close(&client);
        }
    }
}

/// Whether `dst` is this pod itself (loopback or one of its addresses).
fn is_self(judge: &Judge, dst: SocketAddr) -> bool {
    dst.ip().is_loopback() || judge.config().pod_ips.contains(&dst.ip())
}
