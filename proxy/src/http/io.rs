//! The client's side of an inspected connection: bytes counted as activity (for the idle
//! timeout) and, for HTTP/1, read through the strict [`Gate`].

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::gate::{Gate, Violation};
use crate::config::HttpLimits;

/// When bytes last moved on a connection.
#[derive(Clone)]
pub struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    /// Activity starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since bytes last moved.
    pub fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A stream whose reads and writes count as activity.
pub struct Tracked<S> {
    inner: S,
    activity: Activity,
}

impl<S> Tracked<S> {
    /// Tracks `inner`.
    pub fn new(inner: S, activity: Activity) -> Self {
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if r.is_ready() {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if r.is_ready() {
            self.activity.touch();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if r.is_ready() {
            self.activity.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What hyper reads after a refused head: not a request line (a NUL where the method
/// goes), so hyper answers `400 Bad Request` and closes the connection.
const REFUSED: &[u8] = b"\0 / HTTP/1.1\r\n\r\n";

/// How much one read of the client's stream takes at most.
const READ_SIZE: usize = 8 * 1024;

/// A client stream read through the [`Gate`]: hyper sees only checked bytes. When the gate
/// refuses a head, hyper is handed [`REFUSED`] (so it answers 400), then the end of the
/// stream; when it refuses a body, the end of the stream (the request fails, and the proxy
/// answers 400 if it has not answered yet).
pub struct Gated<S> {
    inner: S,
    gate: Gate,
    /// How much of the gate's checked bytes hyper has read.
    taken: usize,
    refused: Option<&'static [u8]>,
    violation: Arc<Mutex<Option<Violation>>>,
}

impl<S> Gated<S> {
    /// Reads `inner` through a gate with these limits, reporting a refusal to `violation`.
    pub fn new(inner: S, limits: &HttpLimits, violation: Arc<Mutex<Option<Violation>>>) -> Self {
        Self {
            inner,
            gate: Gate::new(limits.max_head_bytes, limits.max_headers),
            taken: 0,
            refused: None,
            violation,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gated<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let ready = this.gate.ready();
            if this.taken < ready.len() {
                let n = (ready.len() - this.taken).min(buf.remaining());
                buf.put_slice(&ready[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == ready.len() {
                    ready.clear();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(rest) = this.refused.as_mut() {
                let n = rest.len().min(buf.remaining());
                buf.put_slice(&rest[..n]);
                *rest = &rest[n..];
                return Poll::Ready(Ok(()));
            }
            // Read on the stack: an idle connection holds no read buffer of its own.
            let mut bytes = [MaybeUninit::<u8>::uninit(); READ_SIZE];
            let mut scratch = ReadBuf::uninit(&mut bytes);
            match Pin::new(&mut this.inner).poll_read(cx, &mut scratch) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if scratch.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
            }
            let at_head = this.gate.at_head();
            if let Err(v) = this.gate.push(scratch.filled()) {
                // Bytes before the refusal were checked and are still handed over.
                this.refused = Some(if at_head || this.gate.at_head() {
                    REFUSED
                } else {
                    b""
                });
                if let Ok(mut slot) = this.violation.lock() {
                    slot.get_or_insert(v);
                }
            }
        }
    }
}

write_through!(Gated, inner);
