//! The agent in each lab pod: it serves every TCP and UDP port the pod declares, answering
//! with the pod's name (on TCP, HTTP/1.1 and HTTP/2 with prior knowledge get an HTTP
//! answer, anything else the name and an echo of what follows, so a connection can be held
//! open) and recording who called (as an app's access log would), and probes other pods
//! from inside its pod. Its sockets are opened inside the pod's namespace and served from
//! the lab's own runtime.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_policy::ports::Protocol;
use palisade_proxy::detect::{detect, Detected};
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

use super::netns::Netns;

/// How long a TCP probe waits for the answer.
pub const TCP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a UDP probe waits for an answer to each of its tries.
pub const UDP_TRY: Duration = Duration::from_millis(400);
/// How many datagrams a UDP probe sends before it gives up.
pub const UDP_TRIES: u32 = 3;

/// Opens a socket of `kind` inside `ns`, non-blocking, bound to `bind` when given.
fn socket_in(ns: &Netns, ip: IpAddr, kind: Type, bind: Option<SocketAddr>) -> io::Result<Socket> {
    ns.run(move || {
        let s = Socket::new(Domain::for_address(SocketAddr::new(ip, 0)), kind, None)?;
        s.set_nonblocking(true)?;
        if ip.is_ipv6() {
            s.set_only_v6(true)?;
        }
        if let Some(addr) = bind {
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
        }
        Ok(s)
    })?
}

/// One connection (TCP) or datagram (UDP) a server in the lab received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// `namespace/name` of the pod whose server received it.
    pub pod: String,
    /// The port it was received on.
    pub port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Who the server saw calling: the peer address of the accepted connection, or the
    /// source of the datagram.
    pub peer: SocketAddr,
}

/// The most recent calls the lab's servers received (the oldest are forgotten past
/// [`Peers::KEPT`]), shared by every server of a lab.
#[derive(Debug, Clone, Default)]
pub struct Peers(Arc<Mutex<VecDeque<Accepted>>>);

impl Peers {
    /// How many calls are kept.
    pub const KEPT: usize = 4096;

    fn record(&self, accepted: Accepted) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() == Self::KEPT {
            seen.pop_front();
        }
        seen.push_back(accepted);
    }

    /// The calls kept, oldest first.
    pub fn all(&self) -> Vec<Accepted> {
        let seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().cloned().collect()
    }
}

fn any(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// Serves `port`/`protocol` in `ns` for every address family of `ips`, answering with
/// `name` and recording each caller in `peers`. Must be called inside the lab's runtime.
pub fn serve(
    ns: &Netns,
    ips: &[IpAddr],
    port: u16,
    protocol: Protocol,
    name: &str,
    peers: &Peers,
) -> io::Result<()> {
    let mut families: Vec<IpAddr> = ips.iter().map(|ip| any(*ip)).collect();
    families.dedup();
    for family in families {
        let addr = SocketAddr::new(family, port);
        match protocol {
            Protocol::Tcp => {
                let socket = socket_in(ns, family, Type::STREAM, Some(addr))?;
                socket.listen(1024)?;
                let listener = TcpListener::from_std(socket.into())?;
                let (pod, peers) = (name.to_owned(), peers.clone());
                let name: Arc<str> = Arc::from(name);
                tokio::spawn(async move {
                    while let Ok((stream, peer)) = listener.accept().await {
                        peers.record(Accepted {
                            pod: pod.clone(),
                            port,
                            protocol,
                            peer,
                        });
                        tokio::spawn(answer(stream, name.clone()));
                    }
                });
            }
            Protocol::Udp => {
                let socket =
                    UdpSocket::from_std(socket_in(ns, family, Type::DGRAM, Some(addr))?.into())?;
                let reply = name.to_owned();
                let peers = peers.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    while let Ok((_, from)) = socket.recv_from(&mut buf).await {
                        peers.record(Accepted {
                            pod: reply.clone(),
                            port,
                            protocol,
                            peer: from,
                        });
                        let _ = socket.send_to(reply.as_bytes(), from).await;
                    }
                });
            }
            // SCTP cannot be relayed by the proxy; the lab does not serve or probe it.
            Protocol::Sctp => {}
        }
    }
    Ok(())
}

/// Whether a connection from inside `ns` to `dst` reaches the pod named `expect`.
pub async fn probe(ns: &Netns, dst: SocketAddr, protocol: Protocol, expect: &str) -> bool {
    match protocol {
        Protocol::Tcp => open(ns, dst).await.is_ok_and(|(_, name)| name == expect),
        Protocol::Udp => probe_udp(ns, dst)
            .await
            .is_ok_and(|answer| answer == expect),
        Protocol::Sctp => false,
    }
}

/// Whether a DNS query from inside `ns` to `dst` (a DNS server) gets an answer.
pub async fn probe_dns(ns: &Netns, dst: SocketAddr, protocol: Protocol) -> bool {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut m = Message::query();
    m.metadata.id = 0x2190;
    m.metadata.recursion_desired = true;
    let Ok(name) = Name::from_ascii("kube-dns.kube-system.svc.cluster.local.") else {
        return false;
    };
    m.add_query(Query::query(name, RecordType::A));
    let Ok(query) = m.to_vec() else { return false };
    let exchange = async {
        let answer = match protocol {
            Protocol::Udp => {
                let socket = UdpSocket::from_std(
                    socket_in(
                        ns,
                        dst.ip(),
                        Type::DGRAM,
                        Some(SocketAddr::new(any(dst.ip()), 0)),
                    )?
                    .into(),
                )?;
                socket.connect(dst).await?;
                socket.send(&query).await?;
                let mut buf = vec![0u8; 4096];
                let n = socket.recv(&mut buf).await?;
                buf.truncate(n);
                buf
            }
            _ => {
                let mut stream = connect(ns, dst).await?;
                let mut framed = (query.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&query);
                stream.write_all(&framed).await?;
                let mut len = [0u8; 2];
                stream.read_exact(&mut len).await?;
                let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                stream.read_exact(&mut buf).await?;
                buf
            }
        };
        Ok::<_, io::Error>(Message::from_vec(&answer).is_ok_and(|a| a.metadata.id == 0x2190))
    };
    tokio::time::timeout(TCP_TIMEOUT, exchange)
        .await
        .is_ok_and(|r| r.unwrap_or(false))
}

/// Connects from inside `ns` to `dst`, says hello and reads the server's name line; the
/// connection stays open (the server echoes what is sent next).
pub async fn open(ns: &Netns, dst: SocketAddr) -> io::Result<(BufReader<TcpStream>, String)> {
    open_within(ns, dst, TCP_TIMEOUT).await
}

/// The line a raw probe starts with: not HTTP, so the agent answers with its name.
const HELLO: &str = "hello\n";

/// [`open`], giving up after `timeout`.
pub async fn open_within(
    ns: &Netns,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<(BufReader<TcpStream>, String)> {
    let exchange = async {
        let mut stream = BufReader::new(connect(ns, dst).await?);
        stream.get_mut().write_all(HELLO.as_bytes()).await?;
        let mut name = String::new();
        if stream.read_line(&mut name).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // The agent echoes the hello after its name; it is not the caller's to read.
        let mut echo = String::new();
        stream.read_line(&mut echo).await?;
        if echo != HELLO {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "no echo"));
        }
        Ok((stream, name.trim_end().to_owned()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// A TCP connection from inside `ns` to `dst`.
pub async fn connect(ns: &Netns, dst: SocketAddr) -> io::Result<TcpStream> {
    let socket = socket_in(ns, dst.ip(), Type::STREAM, None)?;
    TcpSocket::from_std_stream(socket.into()).connect(dst).await
}

/// Whether an HTTP/1.1 `GET /` from inside `ns` reaches `dst`: answered by the pod named
/// `expect`, or refused by a proxy's HTTP rules (403), which means the connection itself
/// was allowed and inspected.
pub async fn probe_http(ns: &Netns, dst: SocketAddr, expect: &str) -> bool {
    let exchange = async {
        let stream = connect(ns, dst).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(conn);
        let req = http::Request::get("/")
            .header(http::header::HOST, dst.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(io::Error::other)?;
        let response = sender.send_request(req).await.map_err(io::Error::other)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(io::Error::other)?;
        let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
        io::Result::Ok(
            (status == http::StatusCode::OK && text.trim_end() == expect)
                || (status == http::StatusCode::FORBIDDEN && text.starts_with("palisade:")),
        )
    };
    matches!(
        tokio::time::timeout(TCP_TIMEOUT, exchange).await,
        Ok(Ok(true))
    )
}

/// How long the agent waits for a client's first bytes once it started sending.
const FIRST_BYTES: Duration = Duration::from_secs(10);
/// How long a client may stay silent before the agent speaks first (a raw probe that
/// waits for the name).
const SILENT_CLIENT: Duration = Duration::from_millis(200);

/// Answers one TCP connection: HTTP/1.1 and HTTP/2 with prior knowledge get an HTTP
/// answer ([`http_answer`]); anything else gets the pod's name, then an echo of all it sends.
async fn answer(stream: TcpStream, name: Arc<str>) {
    // A client silent at first is a raw probe of the older kind, which waits for the name:
    // it gets it (and the echo) without detection.
    let mut first = [0u8; 1];
    if tokio::time::timeout(SILENT_CLIENT, stream.peek(&mut first))
        .await
        .is_err()
    {
        return raw_answer(stream, &name, &[]).await;
    }
    let Ok((detected, stream)) = detect(stream, FIRST_BYTES).await else {
        return;
    };
    let service = {
        let name = name.clone();
        service_fn(move |req| http_answer(req, name.clone()))
    };
    match detected {
        Detected::Http1 => {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        }
        Detected::Http2 => {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
        _ => {
            let (prefix, stream) = stream.into_parts();
            raw_answer(stream, &name, &prefix).await;
        }
    }
}

/// The raw answer: the pod's name, then an echo of everything the client sends (starting
/// with what was read to detect the protocol).
async fn raw_answer(mut stream: TcpStream, name: &str, read: &[u8]) {
    let reply = format!("{name}\n");
    if stream.write_all(reply.as_bytes()).await.is_ok() && stream.write_all(read).await.is_ok() {
        let (mut r, mut w) = stream.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    }
}

type AnswerBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// The agent's HTTP answer, for any method and path: `200` with the pod's name. It reads
/// the request's body first (counting it, never keeping it: `x-received-bytes`) and reports
/// the request's trailers (`x-request-trailers`). A gRPC request gets a gRPC answer: the
/// name as one message, then trailers with `grpc-status: 0`. An upgrade request gets
/// `101` and an echo of the upgraded stream.
async fn http_answer(
    mut req: http::Request<Incoming>,
    name: Arc<str>,
) -> Result<http::Response<AnswerBody>, hyper::Error> {
    if req.headers().contains_key(http::header::UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let protocol = req.headers()[http::header::UPGRADE].clone();
        let mut r = http::Response::new(Empty::new().map_err(|e| match e {}).boxed());
        *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert(http::header::UPGRADE, protocol);
        r.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        return Ok(r);
    }
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let mut body = req.into_body();
    let mut received = 0u64;
    let mut trailers = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            received += data.len() as u64;
        } else if let Some(t) = frame.trailers_ref() {
            for (k, v) in t {
                trailers.push(format!("{k}={}", String::from_utf8_lossy(v.as_bytes())));
            }
        }
    }
    let mut response = if grpc {
        let mut message = vec![0u8];
        message.extend_from_slice(&(name.len() as u32).to_be_bytes());
        message.extend_from_slice(name.as_bytes());
        let mut end = http::HeaderMap::new();
        end.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = futures_util::stream::iter([
            Ok::<_, hyper::Error>(Frame::data(Bytes::from(message))),
            Ok(Frame::trailers(end)),
        ]);
        let mut r = http::Response::new(StreamBody::new(frames).boxed());
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        r
    } else {
        http::Response::new(
            Full::new(Bytes::from(format!("{name}\n")))
                .map_err(|e| match e {})
                .boxed(),
        )
    };
    let h = response.headers_mut();
    h.insert("x-received-bytes", received.into());
    if let Ok(v) = http::HeaderValue::from_str(&trailers.join(",")) {
        h.insert("x-request-trailers", v);
    }
    Ok(response)
}

async fn probe_udp(ns: &Netns, dst: SocketAddr) -> io::Result<String> {
    let socket = socket_in(
        ns,
        dst.ip(),
        Type::DGRAM,
        Some(SocketAddr::new(any(dst.ip()), 0)),
    )?;
    let socket = UdpSocket::from_std(socket.into())?;
    socket.connect(dst).await?;
    let mut buf = [0u8; 512];
    for _ in 0..UDP_TRIES {
        socket.send(b"probe").await?;
        if let Ok(Ok(n)) = tokio::time::timeout(UDP_TRY, socket.recv(&mut buf)).await {
            return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    Err(io::ErrorKind::TimedOut.into())
}

/// Asks a proxy's admin server (on the pod's loopback) for `path`; the status and body.
pub async fn admin_get(ns: &Netns, path: &str) -> io::Result<(u16, String)> {
    let addr: SocketAddr = (Ipv4Addr::LOCALHOST, 7490).into();
    let socket = TcpSocket::from_std_stream(socket_in(ns, addr.ip(), Type::STREAM, None)?.into());
    let exchange = async {
        let mut stream = socket.connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}
