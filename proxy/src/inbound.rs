//! Inbound TCP: connections to the pod, redirected to the inbound listener. Each is judged
//! against the pod's ingress policy, then relayed to the address it was sent to, from the
//! client's own address (see [`tcp::open_upstream`]).

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
    // A connection that was not redirected was aimed at the listener itself: its own
    // address is where it was going (and is refused below, as the proxy's own port).
    let Ok(dst) = original_dst(&client, src).or_else(|_| client.local_addr()) else {
        reset_on_close(&client);
        return;
    };
    // The app is reached at the address the client aimed at, so that a server listening
    // only on loopback stays out of reach, as it would be without palisade; and from the
    // client's own address, so that the app sees who called it.
    let flow = FlowInfo::new(Direction::Ingress, Protocol::Tcp, src, dst);
    // Nobody outside the pod gets to speak to one of the proxy's own ports.
    if judge.config().is_own_port(dst.port()) {
        judge.refuse_own_port(&flow);
        reset_on_close(&client);
        return;
    }
    tcp::forward(&judge, flow, client).await
}
