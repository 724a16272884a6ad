//! Where a redirected connection was going before iptables sent it to us.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

/// The destination the client aimed at (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`). Fails
/// for a connection that was not redirected.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr()?;
    let addr = if local.is_ipv4() {
        sock.original_dst_v4()?
    } else {
        sock.original_dst_v6()?
    };
    let dst = addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "original destination is not an IP address",
        )
    })?;
    // Without NAT the kernel reports the listener's own address: not a redirect.
    if dst == local {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "connection was not redirected",
        ));
    }
    Ok(dst)
}
