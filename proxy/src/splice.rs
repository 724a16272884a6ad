//! Moving bytes between two sockets without copying them through user space: splice(2)
//! from one socket into a pipe and from the pipe into the other, in both directions at
//! once. Falls back to an ordinary copy when no pipe can be had (e.g. out of descriptors).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    /// From the first stream to the second.
    pub forward: u64,
    /// From the second stream to the first.
    pub backward: u64,
}

/// How much one splice call may move: a pipe holds 64 KiB by default.
const CHUNK: usize = 1 << 16;

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        unsafe {
            Ok(Self {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            })
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on descriptors the caller keeps open for the call's duration.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Moves one direction until `from` reaches end of stream, then shuts `to` for writing.
async fn one_way(from: &TcpStream, to: &TcpStream, pipe: Pipe) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        // The pipe is empty here, so EAGAIN can only mean the socket has nothing to read.
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            shutdown_write(to);
            return Ok(total);
        }
        // The pipe holds `n` bytes, so EAGAIN can only mean the socket is full.
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
}

fn shutdown_write(s: &TcpStream) {
    // The peer may be gone already; there is nothing to do about that here.
    let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
}

/// Relays both directions between `a` and `b` until both have ended; an error in either
/// direction ends both.
pub async fn relay(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<Moved> {
    let pipes = Pipe::new().and_then(|p| Pipe::new().map(|q| (p, q)));
    match pipes {
        Ok((p, q)) => {
            let (forward, backward) = tokio::try_join!(one_way(a, b, p), one_way(b, a, q))?;
            Ok(Moved { forward, backward })
        }
        Err(_) => {
            let (forward, backward) = tokio::io::copy_bidirectional(a, b).await?;
            Ok(Moved { forward, backward })
        }
    }
}

/// Makes closing the connection send a reset rather than a graceful end, so that the peer
/// learns at once that it was refused or cut off.
pub fn reset_on_close(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A relay between two loopback connections carries bytes both ways, and ends of
    /// stream pass through.
    #[tokio::test]
    async fn relays_both_ways_and_passes_end_of_stream() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut near, _) = listener.accept().await.unwrap();
        let mut far_client = TcpStream::connect(addr).await.unwrap();
        let (mut far, _) = listener.accept().await.unwrap();

        let relay = tokio::spawn(async move { relay(&mut near, &mut far).await });
        let big = vec![7u8; 1 << 20];
        client.write_all(&big).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        far_client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), big.len());
        far_client.write_all(b"pong").await.unwrap();
        far_client.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong");
        let moved = relay.await.unwrap().unwrap();
        assert_eq!((moved.forward, moved.backward), (1 << 20, 4));
    }
}
