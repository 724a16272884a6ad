//! Moving bytes between two sockets without copying them through user space: splice(2)
//! from one socket into a pipe and from the pipe into the other, in both directions at
//! once. Pipes are kept for the next connection, since making and closing two of them per
//! connection costs six system calls. Falls back to an ordinary copy when no pipe can be
//! had (e.g. out of descriptors).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

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

/// The size asked for each pipe: a large pipe moves bulk transfers in fewer calls, and
/// takes memory only while data sits in it. (1 MiB is the default most a process may ask.)
const PIPE_SIZE: libc::c_int = 1 << 20;
/// How many idle pipes are kept (two descriptors each).
const POOL_MAX: usize = 64;

/// Idle, empty pipes.
static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// How many bytes it holds.
    capacity: usize,
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
        // SAFETY: fcntl on a descriptor owned above. When the kernel refuses the size, the
        // pipe keeps its default, which F_GETPIPE_SZ reports.
        let capacity = unsafe {
            let set = libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
            if set > 0 {
                set
            } else {
                libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
            }
        };
        Ok(Self {
            read,
            write,
            capacity: usize::try_from(capacity).unwrap_or(0).max(4096),
        })
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

/// Moves one direction until `from` reaches end of stream, then ends `to`'s writing side,
/// unless the other direction has ended already (`ended`): closing both then ends both.
/// The pipe is empty when this returns `Ok`.
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    ended: &AtomicBool,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        // The pipe is empty here, so EAGAIN can only mean the socket has nothing to read.
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe.write.as_raw_fd(), pipe.capacity)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            if !ended.swap(true, Ordering::Relaxed) {
                shutdown_write(to);
            }
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
    let pipes = Pipe::take().and_then(|p| Pipe::take().map(|q| (p, q)));
    match pipes {
        Ok((p, q)) => {
            let ended = AtomicBool::new(false);
            let (forward, backward) =
                tokio::try_join!(one_way(a, b, &p, &ended), one_way(b, a, &q, &ended))?;
            // Both directions ended cleanly, so both pipes are empty. (On an error, a pipe
            // may hold bytes: it is dropped instead.)
            p.give_back();
            q.give_back();
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
