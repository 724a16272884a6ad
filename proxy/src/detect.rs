//! What protocol a connection speaks, from its first bytes: HTTP/1.x, HTTP/2 with prior
//! knowledge, a TLS ClientHello, or something else. The bytes read to decide are given back
//! in front of the stream ([`Prefixed`]), so that whatever serves the connection next reads
//! it from its first byte.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// The connection preface of HTTP/2 with prior knowledge (RFC 9113 section 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest HTTP/1 method detection waits for before deciding it is not HTTP.
const MAX_METHOD: usize = 24;
/// A TLS record's header: type, version, length.
const TLS_HEADER: usize = 5;
/// The largest TLS record (plaintext limit plus the expansion TLS 1.2 allows).
const MAX_TLS_RECORD: usize = 16384 + 2048;

/// The first TLS record of a connection, a handshake record holding the ClientHello (or
/// its start, when it spans several records). Its server name is read from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The whole record, header included.
    pub record: Bytes,
}

impl ClientHello {
    /// The handshake message the record carries, after the record header.
    pub fn handshake(&self) -> &[u8] {
        &self.record[TLS_HEADER..]
    }
}

/// What a connection speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// A request line of HTTP/1.0 or 1.1 (a method token and a space).
    Http1,
    /// The HTTP/2 connection preface.
    Http2,
    /// A TLS handshake record with a ClientHello.
    Tls(ClientHello),
    /// Anything else.
    Other,
}

impl Detected {
    /// A short name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Detected::Http1 => "http1",
            Detected::Http2 => "http2",
            Detected::Tls(_) => "tls",
            Detected::Other => "other",
        }
    }
}

/// Why nothing could be detected.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The client sent too little within the wait.
    #[error("the client sent {0} bytes and then nothing within the wait")]
    Timeout(usize),
    /// The client closed the connection first.
    #[error("the client closed the connection after {0} bytes")]
    Closed(usize),
    /// Reading failed.
    #[error("reading the first bytes failed: {0}")]
    Io(#[from] io::Error),
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Decides from the bytes seen so far; `None` while more are needed to tell.
pub fn classify(bytes: &[u8]) -> Option<Detected> {
    let first = *bytes.first()?;
    if first == b'P' && bytes.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(bytes) {
        return None;
    }
    if bytes.starts_with(H2_PREFACE) {
        return Some(Detected::Http2);
    }
    if first == 0x16 {
        return Some(tls(bytes)?.map_or(Detected::Other, Detected::Tls));
    }
    let token = bytes.iter().take_while(|&&b| is_tchar(b)).count();
    match bytes.get(token) {
        Some(b' ') if token > 0 => Some(Detected::Http1),
        None if token < MAX_METHOD => None,
        _ => Some(Detected::Other),
    }
}

/// A TLS handshake record: `None` while incomplete, `Some(None)` when it is not a
/// ClientHello record.
fn tls(bytes: &[u8]) -> Option<Option<ClientHello>> {
    if bytes.len() < TLS_HEADER + 1 {
        // Enough to reject a record that is not TLS as early as possible.
        let plausible = bytes.get(1).is_none_or(|&major| major == 3);
        return if plausible { None } else { Some(None) };
    }
    let len = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
    if bytes[1] != 3 || len == 0 || len > MAX_TLS_RECORD || bytes[TLS_HEADER] != 1 {
        return Some(None);
    }
    if bytes.len() < TLS_HEADER + len {
        return None;
    }
    Some(Some(ClientHello {
        record: Bytes::copy_from_slice(&bytes[..TLS_HEADER + len]),
    }))
}

/// Reads the first bytes of `stream` until [`classify`] decides, waiting at most `wait`;
/// the protocol, and the stream with the bytes read put back in front.
pub async fn detect<S: AsyncRead + Unpin>(
    mut stream: S,
    wait: Duration,
) -> Result<(Detected, Prefixed<S>), DetectError> {
    let mut buf = BytesMut::with_capacity(1024);
    let reading = async {
        loop {
            if let Some(d) = classify(&buf) {
                return Ok(d);
            }
            if buf.len() >= TLS_HEADER + MAX_TLS_RECORD {
                return Ok(Detected::Other);
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(DetectError::Closed(buf.len()));
            }
        }
    };
    let detected = match tokio::time::timeout(wait, reading).await {
        Ok(r) => r?,
        Err(_) => return Err(DetectError::Timeout(buf.len())),
    };
    Ok((
        detected,
        Prefixed {
            prefix: buf.freeze(),
            inner: stream,
        },
    ))
}

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// The stream itself, and what was read from it that was not consumed.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

write_through!(Prefixed, inner);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(
            classify(b"get /"),
            Some(Detected::Http1),
            "hyper refuses it later"
        );
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
            Some(Detected::Http1)
        );
        assert_eq!(classify(b"POST /x"), Some(Detected::Http1));
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Detected::Other));
        assert_eq!(classify(b"\x00\x01"), Some(Detected::Other));
        assert_eq!(classify(b" GET /"), Some(Detected::Other));
        assert_eq!(classify(&[b'A'; 30]), Some(Detected::Other));
        assert_eq!(classify(b"\x16\x03\x01\x00\x05\x01\x00\x00"), None);
        assert_eq!(classify(b"\x16\x01"), Some(Detected::Other));
        assert_eq!(
            classify(b"\x16\x03\x01\x00\x05\x02abcd"),
            Some(Detected::Other)
        );
        let hello = b"\x16\x03\x01\x00\x04\x01abc";
        match classify(hello) {
            Some(Detected::Tls(h)) => assert_eq!(h.handshake(), b"\x01abc"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_bytes_read_are_given_back() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        drop(client);
        let (d, mut s) = detect(server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(d, Detected::Http1);
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn silence_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        let r = detect(server, Duration::from_millis(50)).await;
        assert!(matches!(r, Err(DetectError::Timeout(0))), "{r:?}");
    }
}
