//! Inbound TCP: connections to the pod, redirected to the inbound listener. Each is judged
//! against the pod's ingress policy, then relayed to the address it was sent to.

use std::net::SocketAddr;

use palisade_policy::policy::Direction;
use palisade_policy::ports::Protocol;
use tokio::net::{TcpListener, TcpStream};

use crate::judge::{FlowInfo, Judge};
use crate::original_dst::original_dst;
use crate::splice::reset_on_close;
use crate::tcp;

/// Serves the inbound listener forever.
pub async fn serve(listener: TcpListener, judge: Judge) {
    tcp::serve(listener, "inbound", judge, handle).await
}

async fn handle(judge: Judge, client: TcpStream, src: SocketAddr) {
    // A connection that was not redirected to us, or that is aimed at one of our own
    // ports, would make the proxy relay into itself: refuse it.
    let dst = match original_dst(&client) {
        Ok(dst) if !judge.config().is_own_port(dst.port()) => dst,
        _ => {
            reset_on_close(&client);
            return;
        }
    };
    // The app is reached at the address the client aimed at, so that a server listening
    // only on loopback stays out of reach, as it would be without palisade.
    let flow = FlowInfo {
        direction: Direction::Ingress,
        protocol: Protocol::Tcp,
        src,
        dst,
        service: None,
    };
    tcp::forward(&judge, flow, client).await
}
