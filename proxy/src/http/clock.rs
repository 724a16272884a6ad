//! The clock of hyper's HTTP/1 head timeout (`header_read_timeout`). hyper arms its timer
//! for every request head; with tokio's timer that is an entry put into the timer wheel
//! and taken out again per request, for a deadline that almost never passes. This clock
//! arms nothing per request: hyper still decides when a head's time starts and stops (so
//! the timeout means exactly what it means with tokio's timer), each deadline is noted in
//! the connection's [`HeadClock`], and the connection's watcher, which sleeps anyway for
//! the idle timeout, wakes hyper when the deadline passes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use hyper::rt::{Sleep, Timer};

/// No deadline armed.
const NONE: u64 = u64::MAX;

/// The earliest head deadline of one connection, and who waits for it.
pub struct HeadClock {
    start: Instant,
    /// Milliseconds from `start`, rounded up; [`NONE`] when nothing is armed.
    deadline_ms: AtomicU64,
    waker: AtomicWaker,
}

impl HeadClock {
    /// A clock with nothing armed.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            deadline_ms: AtomicU64::new(NONE),
            waker: AtomicWaker::new(),
        }
    }

    /// How long until the armed deadline, if one is; one that passed wakes its waiter (it
    /// finds its time up when polled) and is disarmed.
    pub fn check(&self) -> Option<Duration> {
        let deadline = self.deadline_ms.load(Ordering::Acquire);
        if deadline == NONE {
            return None;
        }
        let now = self.start.elapsed().as_millis() as u64;
        if now < deadline {
            return Some(Duration::from_millis(deadline - now));
        }
        self.deadline_ms.store(NONE, Ordering::Release);
        self.waker.wake();
        None
    }

    /// How long the connection's watcher may sleep before it checks again: to the armed
    /// deadline, else at most `limit` (a deadline armed meanwhile is at least that far
    /// away, so each one is found before it passes).
    pub fn next_check(&self, limit: Duration) -> Duration {
        self.check().unwrap_or(limit)
    }

    fn arm(&self, deadline: Instant, cx: &Context<'_>) {
        self.waker.register(cx.waker());
        let since = deadline.saturating_duration_since(self.start);
        let ms = since.as_nanos().div_ceil(1_000_000) as u64;
        self.deadline_ms.fetch_min(ms, Ordering::AcqRel);
    }
}

/// hyper's [`Timer`] for one HTTP/1 connection's head timeout.
#[derive(Clone)]
pub struct HeadTimer(pub Arc<HeadClock>);

/// A head deadline: ready once it passed; until then, armed on the clock when polled.
struct HeadSleep {
    clock: Arc<HeadClock>,
    deadline: Instant,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        self.clock.arm(self.deadline, cx);
        Poll::Pending
    }
}

impl Sleep for HeadSleep {}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadSleep {
            clock: self.0.clone(),
            deadline,
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<HeadSleep>() {
            Some(mut s) => s.deadline = deadline,
            None => *sleep = self.sleep_until(deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn a_passed_deadline_wakes_the_head_and_a_later_one_waits() {
        let clock = Arc::new(HeadClock::new());
        let timer = HeadTimer(clock.clone());
        let mut sleep = timer.sleep(Duration::from_millis(30));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        let left = clock.check().expect("armed");
        assert!(left <= Duration::from_millis(31), "{left:?}");
        tokio::time::sleep(left).await;
        assert_eq!(clock.check(), None, "passed, so disarmed");
        assert!(sleep.as_mut().poll(&mut cx).is_ready());
        timer.reset(&mut sleep, Instant::now() + Duration::from_secs(60));
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        assert!(clock.check().expect("armed again") > Duration::from_secs(59));
    }

    /// hyper's server on this clock, watched as the proxy watches it, on one connection
    /// from a client that sends `parts` with `gap` between them; what it read back and
    /// how long after the start the server closed the connection.
    async fn serve_one(parts: &[&[u8]], gap: Duration, limit: Duration) -> (String, Duration) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let clock = Arc::new(HeadClock::new());
        let serving = http1::Builder::new()
            .timer(HeadTimer(clock.clone()))
            .header_read_timeout(limit)
            .serve_connection(
                TokioIo::new(server),
                hyper::service::service_fn(|_| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                }),
            );
        let start = Instant::now();
        let server = tokio::spawn(async move {
            tokio::select! {
                r = serving => (r.is_err(), start.elapsed()),
                _ = async { loop { tokio::time::sleep(clock.next_check(limit)).await } } => {
                    (false, start.elapsed())
                }
            }
        });
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            if client.write_all(part).await.is_err() {
                break;
            }
        }
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut out));
        read.await.expect("the server closes the connection").ok();
        let (timed_out, closed) = server.await.unwrap();
        assert!(timed_out, "hyper ended the connection with an error");
        (String::from_utf8_lossy(&out).into_owned(), closed)
    }

    #[tokio::test]
    async fn a_slow_head_is_cut_at_the_limit_and_a_timely_one_served() {
        let limit = Duration::from_millis(400);
        // A head whose second half comes 1 s after its first: closed at the limit (no byte
        // arrives then: the watcher wakes hyper), unanswered.
        let slow: &[&[u8]] = &[b"GET / HTTP/1.1\r\n", b"Host: a\r\n\r\n"];
        let (out, closed) = serve_one(slow, Duration::from_secs(1), limit).await;
        assert_eq!(out, "");
        assert!(
            closed >= limit && closed < Duration::from_millis(700),
            "{closed:?}"
        );
        // The positive control: a head sent within the limit is answered; the connection
        // then waits for the next head, and is closed once the limit passes with none.
        let timely: &[&[u8]] = &[b"GET / HTTP/1.1\r\n", b"Host: a\r\n\r\n"];
        let (out, closed) = serve_one(timely, Duration::from_millis(200), limit).await;
        assert!(
            out.starts_with("HTTP/1.1 200 OK") && out.ends_with("ok"),
            "{out}"
        );
        assert!(
            closed >= Duration::from_millis(600) && closed < Duration::from_millis(1000),
            "{closed:?}"
        );
    }
}
