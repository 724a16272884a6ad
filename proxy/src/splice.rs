//! Moving bytes between two sockets, in both directions at once. Each direction starts by
//! copying through a small buffer, which suits requests and responses: one read and one
//! write per message. When a read fills the buffer, the direction is carrying a bulk
//! transfer and moves to splice(2), from the socket into a pipe and from the pipe into the
//! other socket, without the bytes passing through user space. Pipes are kept for the next
//! connection, since making and closing them costs system calls; when none can be had
//! (e.g. out of descriptors), the direction keeps copying.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    /// From the first stream to the second.
    pub forward: u64,
    /// From the second stream to the first.
    pub backward: u64,
}

/// How much one splice call may move: what a pipe holds by default (16 pages).
const PIPE_CAPACITY: usize = 1 << 16;
/// How many idle pipes are kept (two descriptors each).
const POOL_MAX: usize = 64;

/// Idle, empty pipes.
static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

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
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Self { read, write })
    }

    /// An idle pipe from the pool, or a new one.
    fn take() -> io::Result<Self> {
        let pooled = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
        pooled.map_or_else(Self::new, Ok)
    }

    /// Keeps an empty pipe for the next connection.
    fn give_back(self) {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(self);
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

/// The copy buffer: a read that fills it marks a bulk transfer, which moves to splice.
const COPY_BUF: usize = 8192;

/// Moves one direction until `from` reaches end of stream, then ends `to`'s writing side,
/// unless the other direction has ended already (`ended`): closing both then ends both.
/// Returns the bytes moved, and the pipe it spliced through, empty, if it used one.
async fn one_way(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    ended: &AtomicBool,
) -> io::Result<(u64, Option<Pipe>)> {
    let mut total = 0u64;
    let mut buf = [0u8; COPY_BUF];
    let pipe = loop {
        // tokio's read treats a short read as the socket drained, so waiting for the next
        // message costs no failed system call.
        let n = from.read(&mut buf).await?;
        if n == 0 {
            end(&mut to, ended).await;
            return Ok((total, None));
        }
        to.write_all(&buf[..n]).await?;
        total += n as u64;
        if n == COPY_BUF {
            if let Ok(pipe) = Pipe::take() {
                break pipe;
            }
        }
    };
    let (src, dst) = (from.as_ref(), to.as_ref());
    loop {
        // The pipe is empty here, so EAGAIN can only mean the socket has nothing to read.
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                splice(src.as_raw_fd(), pipe.write.as_raw_fd(), PIPE_CAPACITY)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            end(&mut to, ended).await;
            return Ok((total, Some(pipe)));
        }
        // The pipe holds `n` bytes, so EAGAIN can only mean the socket is full.
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), dst.as_raw_fd(), left)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
}

/// Ends the writing side of `to`, unless the other direction ended first.
async fn end(to: &mut WriteHalf<'_>, ended: &AtomicBool) {
    if !ended.swap(true, Ordering::Relaxed) {
        // The peer may be gone already; there is nothing to do about that here.
        let _ = to.shutdown().await;
    }
}

/// Relays both directions between `a` and `b` until both have ended; an error in either
/// direction ends both.
pub async fn relay(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<Moved> {
    let ended = AtomicBool::new(false);
    let (ra, wa) = a.split();
    let (rb, wb) = b.split();
    let ((forward, p), (backward, q)) =
        tokio::try_join!(one_way(ra, wb, &ended), one_way(rb, wa, &ended))?;
    // Both directions ended cleanly, so their pipes are empty. (On an error, a pipe may
    // hold bytes: it is dropped instead.)
    p.into_iter().chain(q).for_each(Pipe::give_back);
    Ok(Moved { forward, backward })
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
