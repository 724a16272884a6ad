//! Sending a UDP datagram from any address and port, through a raw socket: how the proxy
//! answers the app as the destination it wrote to, and relays to the app as the real
//! client. Binding a socket to those addresses instead would collide with any local socket
//! bound to the same port on the wildcard address.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Raw sockets, one per address family (IPv6 only where the namespace has it).
pub struct RawSender {
    v4: OwnedFd,
    v6: Option<OwnedFd>,
}

fn raw_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl RawSender {
    /// Opens the raw sockets (this needs CAP_NET_RAW).
    pub fn open(ipv6: bool) -> io::Result<Self> {
        Ok(Self {
            v4: raw_socket(libc::AF_INET)?,
            v6: if ipv6 {
                Some(raw_socket(libc::AF_INET6)?)
            } else {
                None
            },
        })
    }

    /// Sends `payload` from `src` to `dst` (both of one family). A full socket buffer drops
    /// the datagram, as a network would.
    pub fn send(&self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> io::Result<()> {
        let udp_len = u16::try_from(8 + payload.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "datagram too large"))?;
        let mut header = [0u8; 48];
        let (fd, len) = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = u16::try_from(20 + udp_len as usize).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "datagram too large")
                })?;
                header[0] = 0x45;
                header[2..4].copy_from_slice(&total.to_be_bytes());
                header[6] = 0x40; // don't fragment
                header[8] = 64; // TTL
                header[9] = libc::IPPROTO_UDP as u8;
                // The kernel fills in the IPv4 header checksum and identification.
                header[12..16].copy_from_slice(&s.octets());
                header[16..20].copy_from_slice(&d.octets());
                let mut sum = sum16(&s.octets())
                    + sum16(&d.octets())
                    + libc::IPPROTO_UDP as u32
                    + udp_len as u32;
                write_udp(
                    &mut header[20..28],
                    src.port(),
                    dst.port(),
                    udp_len,
                    &mut sum,
                    payload,
                );
                (self.v4.as_raw_fd(), 28)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let fd = self
                    .v6
                    .as_ref()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "no IPv6 here"))?;
                header[0] = 0x60;
                header[4..6].copy_from_slice(&udp_len.to_be_bytes());
                header[6] = libc::IPPROTO_UDP as u8;
                header[7] = 64; // hop limit
                header[8..24].copy_from_slice(&s.octets());
                header[24..40].copy_from_slice(&d.octets());
                let mut sum = sum16(&s.octets())
                    + sum16(&d.octets())
                    + libc::IPPROTO_UDP as u32
                    + udp_len as u32;
                write_udp(
                    &mut header[40..48],
                    src.port(),
                    dst.port(),
                    udp_len,
                    &mut sum,
                    payload,
                );
                (fd.as_raw_fd(), 48)
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "mixed address families",
                ))
            }
        };
        send_parts(fd, dst, &header[..len], payload)
    }
}

/// Writes a UDP header, its checksum covering the pseudo-header sum `sum` already holds.
fn write_udp(out: &mut [u8], sport: u16, dport: u16, len: u16, sum: &mut u32, payload: &[u8]) {
    out[0..2].copy_from_slice(&sport.to_be_bytes());
    out[2..4].copy_from_slice(&dport.to_be_bytes());
    out[4..6].copy_from_slice(&len.to_be_bytes());
    *sum += sum16(&out[0..6]) + sum16(payload);
    let mut folded = *sum;
    while folded > 0xffff {
        folded = (folded & 0xffff) + (folded >> 16);
    }
    let checksum = match !(folded as u16) {
        // A computed checksum of zero is sent as all ones (zero means "none").
        0 => 0xffff,
        c => c,
    };
    out[6..8].copy_from_slice(&checksum.to_be_bytes());
}

/// The ones'-complement sum of big-endian 16-bit words (an odd last byte padded with 0),
/// not yet folded.
fn sum16(bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    let mut sum: u32 = chunks
        .by_ref()
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    sum
}

fn send_parts(fd: i32, dst: SocketAddr, header: &[u8], payload: &[u8]) -> io::Result<()> {
    let sockaddr = socket2::SockAddr::from(SocketAddr::new(dst.ip(), 0));
    let mut iov = [
        libc::iovec {
            iov_base: header.as_ptr() as *mut _,
            iov_len: header.len(),
        },
        libc::iovec {
            iov_base: payload.as_ptr() as *mut _,
            iov_len: payload.len(),
        },
    ];
    // SAFETY: an all-zero msghdr is valid; the fields set point at live buffers, which
    // sendmsg only reads.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = sockaddr.as_ptr() as *mut _;
    msg.msg_namelen = sockaddr.len();
    msg.msg_iov = iov.as_mut_ptr();
    // size_t in glibc, int in musl.
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: see above; the call does not retain any pointer.
    if unsafe { libc::sendmsg(fd, &msg, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The UDP checksum of a known datagram (computed by hand with the RFC 768 rules).
    #[test]
    fn checksum_matches_a_known_datagram() {
        let (s, d) = ([10u8, 0, 0, 1], [10u8, 0, 0, 2]);
        let payload = b"hi";
        let mut header = [0u8; 8];
        let mut sum = sum16(&s) + sum16(&d) + 17 + 10;
        write_udp(&mut header, 1000, 2000, 10, &mut sum, payload);
        // Sum of everything, checksum included, folds to 0xffff when the checksum is right.
        let mut all = sum16(&s) + sum16(&d) + 17 + 10 + sum16(&header) + sum16(payload);
        while all > 0xffff {
            all = (all & 0xffff) + (all >> 16);
        }
        assert_eq!(all, 0xffff);
        assert_ne!(&header[6..8], &[0, 0]);
    }

    #[test]
    fn odd_lengths_are_padded() {
        assert_eq!(sum16(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }
}
