//! Outbound TCP: the pod's connections, redirected to the outbound listener. A connection
//! to a Service's ClusterIP goes to a backend the proxy picks itself, and is judged against
//! that backend pod; every connection is judged against the pod's egress policy.

use std::net::SocketAddr;

use palisade_policy::ports::Protocol;
use tokio::net::{TcpListener, TcpStream};

use crate::judge::Judge;
use crate::splice::reset_on_close;
use crate::tcp;

/// Serves the outbound listener (and the DNS listener's TCP side) forever.
pub async fn serve(listener: TcpListener, judge: Judge) {
    tcp::serve(listener, "outbound", judge, handle).await
}

async fn handle(judge: Judge, client: TcpStream, src: SocketAddr) {
    let Some(asked) = tcp::redirected_dst(&judge, &client, src) else {
        reset_on_close(&client);
        return;
    };
    let Some(flow) = judge.outbound_flow(src, asked, Protocol::Tcp).await else {
        // A Service port with no backend refuses, as kube-proxy's REJECT rule does.
        reset_on_close(&client);
        return;
    };
    tcp::forward(&judge, flow, client).await
}
