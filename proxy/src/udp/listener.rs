//! The transparent listeners: UDP sockets TPROXY hands the pod's datagrams to, and reading
//! each datagram's original destination.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use socket2::{Domain, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// A transparent UDP socket that reports each datagram's original destination.
pub fn bind_transparent(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = transparent_socket(addr)?;
    let (level, option) = match addr {
        SocketAddr::V4(_) => (libc::SOL_IP, libc::IP_RECVORIGDSTADDR),
        SocketAddr::V6(_) => (libc::SOL_IPV6, libc::IPV6_RECVORIGDSTADDR),
    };
    set_int(&socket, level, option, 1)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// A transparent, non-blocking UDP socket that may bind a foreign address (not bound yet).
fn transparent_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    match addr {
        SocketAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
        SocketAddr::V6(_) => {
            socket.set_only_v6(true)?;
            socket.set_ip_transparent_v6(true)?;
        }
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn set_int(
    socket: &Socket,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Receives one datagram: its length, its source, and the destination it was sent to.
pub(super) async fn recv_original(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, SocketAddr)> {
    socket
        .async_io(Interest::READABLE, || {
            recvmsg_original(socket.as_raw_fd(), buf)
        })
        .await
}

fn recvmsg_original(fd: i32, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, SocketAddr)> {
    let mut name = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = name.as_mut_ptr().cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // The field's type differs between C libraries (size_t in glibc, socklen_t in musl).
    msg.msg_controllen = size_of::<[u64; 16]>() as _;
    // SAFETY: every pointer in `msg` refers to a buffer that outlives the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: recvmsg filled `name` with `msg_namelen` bytes of a socket address.
    let src =
        unsafe { sockaddr_to_std(name.as_ptr().cast(), msg.msg_namelen) }.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "datagram without a source address",
            )
        })?;
    let mut dst = None;
    // SAFETY: the CMSG_* macros walk the control buffer recvmsg filled, within controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            let is_v4 = c.cmsg_level == libc::SOL_IP && c.cmsg_type == libc::IP_ORIGDSTADDR;
            let is_v6 = c.cmsg_level == libc::SOL_IPV6 && c.cmsg_type == libc::IPV6_ORIGDSTADDR;
            if is_v4 || is_v6 {
                #[allow(clippy::unnecessary_cast)] // u32 in musl
                let len = c.cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                dst = sockaddr_to_std(libc::CMSG_DATA(cmsg).cast(), len as libc::socklen_t);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let dst = dst.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "datagram without its original destination",
        )
    })?;
    Ok((n as usize, src, dst))
}

/// Reads a `sockaddr_in` or `sockaddr_in6`.
///
/// # Safety
/// `addr` must point to at least `len` readable bytes.
unsafe fn sockaddr_to_std(addr: *const libc::sockaddr, len: libc::socklen_t) -> Option<SocketAddr> {
    let family = if len as usize >= size_of::<libc::sa_family_t>() {
        // SAFETY: at least the family field is readable (checked above).
        unsafe { (*addr).sa_family as libc::c_int }
    } else {
        return None;
    };
    match family {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: family and length say this is a sockaddr_in; it may be unaligned.
            let a = unsafe { std::ptr::read_unaligned(addr.cast::<libc::sockaddr_in>()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: family and length say this is a sockaddr_in6; it may be unaligned.
            let a = unsafe { std::ptr::read_unaligned(addr.cast::<libc::sockaddr_in6>()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
