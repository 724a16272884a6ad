//! Probes below TCP and UDP, through raw sockets: ICMP and ICMPv6 echo, datagrams of any
//! other IP protocol, and a sniffer that sees them arrive. What shows that an injected pod
//! drops every protocol but TCP and UDP, and that echo passes where a pod allows it.
//!
//! A raw socket receives its protocol's packets after the namespace's firewall has let
//! them in, so a sniffer at the destination sees exactly what was delivered.

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::netns::Netns;

/// IP protocol numbers of ICMP and ICMPv6.
pub const ICMP: u8 = 1;
/// See [`ICMP`].
pub const ICMPV6: u8 = 58;

/// A raw socket in a namespace receiving one IP protocol of one family.
pub struct Sniffer {
    socket: Socket,
}

fn raw_socket(ns: &Netns, v6: bool, protocol: u8) -> io::Result<Socket> {
    ns.run(move || {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        Socket::new(domain, Type::RAW, Some(Protocol::from(i32::from(protocol))))
    })?
}

impl Sniffer {
    /// Receives, from now on, every packet of IP `protocol` (of IPv6 when `v6`) delivered
    /// to `ns`.
    pub fn open(ns: &Netns, v6: bool, protocol: u8) -> io::Result<Sniffer> {
        Ok(Sniffer {
            socket: raw_socket(ns, v6, protocol)?,
        })
    }

    /// Whether a packet carrying `token` arrives within `within`.
    pub fn saw(&self, token: &[u8], within: Duration) -> bool {
        let deadline = Instant::now() + within;
        wait_for(&self.socket, deadline, |packet| contains(packet, token))
    }
}

/// Reads packets until one satisfies `wanted` or `deadline` passes.
fn wait_for(socket: &Socket, deadline: Instant, wanted: impl Fn(&[u8]) -> bool) -> bool {
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match (&*socket).read(&mut buf) {
            Ok(n) if wanted(&buf[..n]) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A payload no other probe of this process carries.
pub fn token() -> Vec<u8> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "palisade-probe-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
    .into_bytes()
}

/// The ones'-complement checksum ICMPv4 carries (ICMPv6's is computed by the kernel).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one echo request carrying `token` from `ns` to `dst` (ICMP or ICMPv6 by its
/// family) and reports whether the matching echo reply came back within `within`.
pub fn ping(ns: &Netns, dst: IpAddr, token: &[u8], within: Duration) -> io::Result<bool> {
    let v6 = dst.is_ipv6();
    let socket = raw_socket(ns, v6, if v6 { ICMPV6 } else { ICMP })?;
    let (request, reply) = if v6 { (128u8, 129u8) } else { (8, 0) };
    // Type, code, checksum, identifier, sequence number, then the token.
    let mut message = vec![request, 0, 0, 0, 0x21, 0x90, 0, 1];
    message.extend_from_slice(token);
    if !v6 {
        let sum = checksum(&message);
        message[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    socket.send_to(&message, &SocketAddr::new(dst, 0).into())?;
    let deadline = Instant::now() + within;
    Ok(wait_for(&socket, deadline, |packet| {
        // An IPv4 raw socket reads the IP header too; an IPv6 one starts at ICMPv6.
        let icmp = if v6 {
            packet
        } else {
            let header = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
            packet.get(header..).unwrap_or_default()
        };
        icmp.first() == Some(&reply) && contains(icmp, token)
    }))
}

/// Sends one datagram of IP `protocol` carrying `token` from `ns` to `dst`.
pub fn send(ns: &Netns, dst: IpAddr, protocol: u8, token: &[u8]) -> io::Result<()> {
    let socket = raw_socket(ns, dst.is_ipv6(), protocol)?;
    socket.send_to(token, &SocketAddr::new(dst, 0).into())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_checksum_of_a_known_echo_request() {
        // An echo request with identifier 1, sequence 1 and no data: 0x0800 + 0x0001 +
        // 0x0001 = 0x0802, complemented.
        assert_eq!(checksum(&[8, 0, 0, 0, 0, 1, 0, 1]), !0x0802);
        // An odd length is padded with a zero byte.
        assert_eq!(checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(token(), token());
        assert!(contains(b"xxpalisade-yy", b"palisade"));
        assert!(!contains(b"palisad", b"palisade"));
    }
}
