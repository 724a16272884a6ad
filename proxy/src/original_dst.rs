//! Where a redirected connection was going before iptables sent it to us.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

/// The destination the client at `peer` aimed at (`SO_ORIGINAL_DST` /
/// `IP6T_SO_ORIGINAL_DST`; the peer's family is the socket's, so no `getsockname` is
/// needed). A connection that was not redirected reports the listener's own address, which
/// callers refuse as one of the proxy's own ports ([`crate::Config::is_own_listener`]).
pub fn original_dst(stream: &TcpStream, peer: SocketAddr) -> io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let addr = if peer.is_ipv4() {
        sock.original_dst_v4()?
    } else {
        sock.original_dst_v6()?
    };
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "original destination is not an IP address",
        )
    })
}
