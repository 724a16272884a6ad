//! The strict reader of HTTP/1 requests in front of hyper. hyper (through httparse) is
//! lenient where RFC 9112 lets a recipient be, and servers behind a proxy may be lenient in
//! other ways; every such difference lets a request mean one thing to the proxy and another
//! to the app. So each request head is held until it is complete, checked, and only then
//! given to hyper, and bodies are followed through their framing so that the next head is
//! found where hyper will find it.
//!
//! Refused: a bare LF line ending, obsolete line folding, anything httparse refuses, both
//! `Content-Length` and `Transfer-Encoding`, several `Content-Length`s (or a list), one that
//! is not a number, a `Transfer-Encoding` other than `chunked` (or on HTTP/1.0), an invalid
//! chunk (size, extension or line ending), heads over the size or header count limits.
//! After a request that asks for an upgrade, the bytes are passed unread (hyper still
//! parses the next request when the upgrade does not happen).

use std::fmt;
use std::mem::MaybeUninit;

/// How many header fields a head may have for them to be parsed on the stack.
const STACK_HEADERS: usize = 128;

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A line of the head or of a chunk ends with LF alone.
    BareLf,
    /// The head is larger than the limit.
    HeadTooLarge,
    /// The head has more header fields than the limit.
    TooManyHeaders,
    /// httparse refused the head (obsolete folding, spaces before a colon, bad tokens...).
    Malformed(&'static str),
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndChunked,
    /// Several `Content-Length` fields or values.
    SeveralLengths,
    /// A `Content-Length` that is not a number.
    BadLength,
    /// A `Transfer-Encoding` other than a single `chunked`, or one on HTTP/1.0.
    BadTransferEncoding,
    /// A chunk whose size, extension or line ending is invalid.
    BadChunk,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::BareLf => f.write_str("a line ends with a bare LF"),
            Violation::HeadTooLarge => f.write_str("the request head is too large"),
            Violation::TooManyHeaders => f.write_str("the request has too many header fields"),
            Violation::Malformed(what) => write!(f, "malformed request head: {what}"),
            Violation::LengthAndChunked => f.write_str("both Content-Length and Transfer-Encoding"),
            Violation::SeveralLengths => f.write_str("several Content-Length values"),
            Violation::BadLength => f.write_str("a Content-Length that is not a number"),
            Violation::BadTransferEncoding => f.write_str("a Transfer-Encoding other than chunked"),
            Violation::BadChunk => f.write_str("an invalid chunk"),
        }
    }
}

/// Where the reader is in the request stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a head.
    Head,
    /// In a body of known length, this many bytes left.
    Body(u64),
    /// Reading a chunk size (the value so far, digits seen).
    ChunkSize(u64, u8),
    /// In the extension of a chunk of this size, up to the CR.
    ChunkExt(u64),
    /// After the CR of the size line of a chunk of this size.
    ChunkSizeLf(u64),
    /// In a chunk's data, this many bytes left.
    ChunkData(u64),
    /// After a chunk's data: expecting CR.
    ChunkDataCr,
    /// After a chunk's data and CR: expecting LF.
    ChunkDataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// After the CR of a trailer line (`true`: the final empty line).
    TrailerLf(bool),
    /// After an upgrade request: bytes pass unread.
    Opaque,
}

/// Checks a stream of HTTP/1 requests as it arrives; see the module's documentation.
#[derive(Debug)]
pub struct Gate {
    state: State,
    /// The head being collected.
    held: Vec<u8>,
    /// Bytes checked and ready for hyper.
    ready: Vec<u8>,
    /// Bytes of trailers so far (bounded like a head).
    trailer_bytes: usize,
    max_head: usize,
    max_headers: usize,
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Token => "invalid method or target",
        httparse::Error::Version => "invalid HTTP version",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Status => "invalid status",
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

impl Gate {
    /// A reader allowing heads of `max_head` bytes and `max_headers` fields.
    pub fn new(max_head: usize, max_headers: usize) -> Self {
        Self {
            state: State::Head,
            held: Vec::new(),
            ready: Vec::new(),
            trailer_bytes: 0,
            max_head,
            max_headers,
        }
    }

    /// Bytes checked so far, to hand to hyper.
    pub fn ready(&mut self) -> &mut Vec<u8> {
        &mut self.ready
    }

    /// Whether the reader is between requests or inside a head (not in a body).
    pub fn at_head(&self) -> bool {
        self.state == State::Head
    }

    /// Checks `input`, the next bytes from the client.
    pub fn push(&mut self, mut input: &[u8]) -> Result<(), Violation> {
        while !input.is_empty() {
            let used = match self.state {
                State::Opaque => {
                    self.ready.extend_from_slice(input);
                    input.len()
                }
                State::Head => self.head(input)?,
                State::Body(left) | State::ChunkData(left) => {
                    let n = left.min(input.len() as u64) as usize;
                    self.ready.extend_from_slice(&input[..n]);
                    let left = left - n as u64;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), l) => State::Body(l),
                        (_, 0) => State::ChunkDataCr,
                        (_, l) => State::ChunkData(l),
                    };
                    n
                }
                _ => {
                    self.chunk_byte(input[0])?;
                    self.ready.push(input[0]);
                    1
                }
            };
            input = &input[used..];
        }
        Ok(())
    }

    /// One byte of chunked framing (sizes, line endings, trailers).
    fn chunk_byte(&mut self, b: u8) -> Result<(), Violation> {
        self.state = match (self.state, b) {
            (State::ChunkSize(v, n), _) if hex(b).is_some() => {
                if n >= 15 {
                    return Err(Violation::BadChunk);
                }
                State::ChunkSize(v << 4 | hex(b).unwrap_or(0), n + 1)
            }
            (State::ChunkSize(_, 0), _) => return Err(Violation::BadChunk),
            (State::ChunkSize(v, _), b';') => State::ChunkExt(v),
            (State::ChunkSize(v, _) | State::ChunkExt(v), b'\r') => State::ChunkSizeLf(v),
            (State::ChunkSize(..) | State::ChunkExt(_), b'\n') => return Err(Violation::BareLf),
            (State::ChunkExt(v), b) if b == b'\t' || (b' '..0x7f).contains(&b) => {
                State::ChunkExt(v)
            }
            (State::ChunkSizeLf(0), b'\n') => {
                self.trailer_bytes = 0;
                State::TrailerStart
            }
            (State::ChunkSizeLf(v), b'\n') => State::ChunkData(v),
            (State::ChunkDataCr, b'\r') => State::ChunkDataLf,
            (State::ChunkDataLf, b'\n') => State::ChunkSize(0, 0),
            (State::TrailerStart, b'\r') => State::TrailerLf(true),
            // Obsolete folding in trailers, or a line that starts empty.
            (State::TrailerStart, b' ' | b'\t' | b'\n') => return Err(Violation::BadChunk),
            (State::Trailer, b'\r') => State::TrailerLf(false),
            (State::Trailer, b'\n') => return Err(Violation::BareLf),
            (State::TrailerStart | State::Trailer, _) => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > self.max_head {
                    return Err(Violation::HeadTooLarge);
                }
                State::Trailer
            }
            (State::TrailerLf(true), b'\n') => State::Head,
            (State::TrailerLf(false), b'\n') => State::TrailerStart,
            _ => return Err(Violation::BadChunk),
        };
        Ok(())
    }

    /// Collects head bytes; checks the head once it is complete. Returns how many bytes of
    /// `input` it took. Byte by byte, so that the outcome does not depend on how the bytes
    /// were split into reads.
    fn head(&mut self, input: &[u8]) -> Result<usize, Violation> {
        for (i, &b) in input.iter().enumerate() {
            if b == b'\n' && self.held.last() != Some(&b'\r') {
                return Err(Violation::BareLf);
            }
            self.held.push(b);
            if self.held.len() > self.max_head {
                return Err(Violation::HeadTooLarge);
            }
            if b != b'\n' {
                continue;
            }
            if self.held == b"\r\n" {
                // An empty line before a request line is allowed (RFC 9112 section 2.2).
                self.ready.append(&mut self.held);
            } else if self.held.ends_with(b"\r\n\r\n") {
                self.check_head()?;
                self.ready.append(&mut self.held);
                return Ok(i + 1);
            }
        }
        Ok(input.len())
    }

    /// Parses a complete head and sets the body's framing.
    fn check_head(&mut self) -> Result<(), Violation> {
        // The fields on the stack when the limit allows (it does by default): a head is
        // checked per request, and a heap block of this size costs more than the parse.
        let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        let mut heap = Vec::new();
        let fields = if self.max_headers <= STACK_HEADERS {
            &mut stack[..self.max_headers]
        } else {
            heap.resize_with(self.max_headers, MaybeUninit::uninit);
            &mut heap[..]
        };
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(&self.held, fields) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(Violation::Malformed("incomplete")),
            Err(httparse::Error::TooManyHeaders) => return Err(Violation::TooManyHeaders),
            Err(e) => return Err(Violation::Malformed(parse_error(e))),
        }
        let http10 = req.version == Some(0);
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut upgrade = req.method == Some("CONNECT");
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let text = std::str::from_utf8(h.value).map_err(|_| Violation::BadLength)?;
                if length.is_some() || text.contains(',') {
                    return Err(Violation::SeveralLengths);
                }
                let text = text.trim_matches([' ', '\t']);
                if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 18 {
                    return Err(Violation::BadLength);
                }
                length = text.parse().ok();
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let value = std::str::from_utf8(h.value).unwrap_or_default();
                if chunked
                    || http10
                    || !value
                        .trim_matches([' ', '\t'])
                        .eq_ignore_ascii_case("chunked")
                {
                    return Err(Violation::BadTransferEncoding);
                }
                chunked = true;
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        self.state = match (length, chunked) {
            (Some(_), true) => return Err(Violation::LengthAndChunked),
            _ if upgrade => State::Opaque,
            (_, true) => State::ChunkSize(0, 0),
            (Some(n), false) if n > 0 => State::Body(n),
            _ => State::Head,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; what was let through, or the violation.
    fn run(input: &[u8], step: usize) -> Result<Vec<u8>, Violation> {
        let mut gate = Gate::new(8192, 100);
        for piece in input.chunks(step) {
            gate.push(piece)?;
        }
        Ok(std::mem::take(gate.ready()))
    }

    fn every_split(input: &[u8]) -> Result<Vec<u8>, Violation> {
        let whole = run(input, input.len().max(1));
        for step in [1, 2, 3, 7] {
            assert_eq!(run(input, step), whole, "split in pieces of {step}");
        }
        whole
    }

    #[test]
    fn good_requests_pass_whole() {
        let reqs: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nab\ncdGET / HTTP/1.1\r\n\r\n",
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nab\ncd\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x00\x01\nanything",
        ];
        for r in reqs {
            assert_eq!(
                every_split(r).as_deref(),
                Ok(*r),
                "{}",
                String::from_utf8_lossy(r)
            );
        }
    }

    #[test]
    fn a_head_is_held_until_complete() {
        let mut gate = Gate::new(8192, 100);
        gate.push(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap();
        assert!(gate.ready().is_empty());
        gate.push(b"\r\n").unwrap();
        assert_eq!(gate.ready().len(), 27);
    }

    #[test]
    fn what_is_refused() {
        let cases: &[(&[u8], Violation)] = &[
            // Found by the fuzzer: empty lines first, split byte by byte, once ended "the head".
            (b"\r\n\r\n\x05POS / HTTP/1.1\r\n\r\n", Violation::Malformed("invalid method or target")),
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", Violation::BareLf),
            (b"GET / HTTP/1.1\r\nHost: a\n\n", Violation::BareLf),
            (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", Violation::Malformed("invalid header name")),
            (b"GET / HTTP/1.1\r\nX : a\r\n\r\n", Violation::Malformed("invalid header name")),
            (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", Violation::LengthAndChunked),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", Violation::LengthAndChunked),
            (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", Violation::SeveralLengths),
            (b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n", Violation::SeveralLengths),
            (b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n", Violation::BadLength),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Violation::BadTransferEncoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Violation::BadTransferEncoding),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Violation::BadTransferEncoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n", Violation::BadChunk),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc", Violation::BareLf),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX", Violation::BadChunk),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n", Violation::BadChunk),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\n\r\n", Violation::BareLf),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\r\n folded\r\n\r\n", Violation::BadChunk),
        ];
        for (input, want) in cases {
            assert_eq!(
                every_split(input).as_ref().err(),
                Some(want),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn limits() {
        let mut gate = Gate::new(64, 3);
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(64));
        assert_eq!(gate.push(big.as_bytes()), Err(Violation::HeadTooLarge));
        let mut gate = Gate::new(8192, 3);
        let many = b"GET / HTTP/1.1\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\n\r\n";
        assert_eq!(gate.push(many), Err(Violation::TooManyHeaders));
    }

    #[test]
    fn a_request_hidden_in_a_body_is_found_as_the_next_request() {
        // The chunked body ends at `0\r\n\r\n`: what follows is the next request, which the
        // gate hands to hyper as a head of its own (and the proxy judges it).
        let mut gate = Gate::new(8192, 100);
        gate.push(b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n")
            .unwrap();
        assert!(gate.at_head());
        assert!(
            !String::from_utf8_lossy(gate.ready()).contains("admin"),
            "held until complete"
        );
    }
}
