//! End-to-end: HTTP rules enforced per request by real proxies in a lab (seed 003's
//! api-l7-policy and more, tests/lab/http). Each refusal stands next to a positive control
//! on the same port, and the proxy's flow log says why. Needs root (scripts/test).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
mod common;

use common::{eventually, logged, metric};
use palisade::lab::{agent, Lab, LabOptions};
use palisade_policy::ports::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BINARY: &str = env!("CARGO_BIN_EXE_palisade");
const API: &str = "production/api";

fn lab() -> Lab {
    Lab::start(LabOptions {
        paths: vec![PathBuf::from("tests/lab/http")],
        respect_injection: false,
        binary: PathBuf::from(BINARY),
        hold: Duration::from_secs(2),
        log_allowed: true,
        dns_grace: Duration::from_secs(60),
    })
    .expect("building the lab (needs root)")
}

fn addr(lab: &Lab, pod: &str, port: u16) -> SocketAddr {
    let (ns, name) = pod.split_once('/').unwrap();
    SocketAddr::new(lab.cluster().pod(ns, name).unwrap().ips[0], port)
}

/// Sends `bytes` on a new connection from `from` and reads until the other end closes;
/// bounded in time.
fn raw(lab: &Lab, from: &str, dst: SocketAddr, bytes: &[u8]) -> String {
    let ns = lab.netns(from).unwrap();
    lab.runtime().block_on(async {
        let exchange = async {
            let mut s = agent::connect(ns, dst).await?;
            s.write_all(bytes).await?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await?;
            std::io::Result::Ok(String::from_utf8_lossy(&out).into_owned())
        };
        match tokio::time::timeout(Duration::from_secs(5), exchange).await {
            Ok(Ok(text)) => text,
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => "timed out".to_owned(),
        }
    })
}

/// The status codes of every response in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn h1(lab: &Lab, from: &str, dst: SocketAddr) -> Sender {
    let stream = agent::connect(lab.netns(from).unwrap(), dst).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn get(method: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "api")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn send(s: &mut Sender, req: Request<Full<Bytes>>) -> (StatusCode, String) {
    s.ready().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), s.send_request(req))
        .await
        .expect("bounded")
        .expect("a response");
    let status = r.status();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn the_seed_rules_judge_each_request_on_one_keep_alive_connection() {
    let lab = lab();
    let api = addr(&lab, API, 8080);
    lab.runtime().block_on(async {
        let mut c = h1(&lab, "production/frontend", api).await;
        assert_eq!(
            send(&mut c, get("GET", "/api/v1/orders")).await,
            (StatusCode::OK, "production/api\n".into())
        );
        let (status, body) = send(&mut c, get("POST", "/api/v1/admin")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(
            body,
            "palisade: POST /api/v1/admin is not allowed by production/api-l7-policy (ingress of production/api)\n"
        );
        // The same connection serves the next request.
        assert_eq!(send(&mut c, get("GET", "/api/v1/items")).await.0, StatusCode::OK);
        let mut post = get("POST", "/api/v1/orders");
        *post.body_mut() = Full::new(Bytes::from_static(b"{\"id\":1}"));
        assert_eq!(send(&mut c, post).await.0, StatusCode::OK);
    });
    let denied = logged(&lab, API, |l| l["method"] == "POST" && l["status"] == 403);
    assert_eq!(denied["action"], "deny");
    assert_eq!(denied["reason"], "no-rule-matched");
    assert_eq!(denied["path"], "/api/v1/admin");
    assert_eq!(denied["host"], "api");
    assert_eq!(denied["policy"], "production/api-l7-policy");
    assert_eq!(denied["direction"], "ingress");
    assert_eq!(denied["http"], "HTTP/1.1");
    let allowed = logged(&lab, API, |l| {
        l["path"] == "/api/v1/orders" && l["method"] == "POST"
    });
    assert_eq!(allowed["action"], "allow");
    assert_eq!(allowed["status"], 200);
    assert_eq!(allowed["policy"], "production/api-l7-policy");
    assert_eq!(
        (allowed["rule"].as_u64(), allowed["http_rule"].as_u64()),
        (Some(0), Some(1))
    );
    let label = ["direction=\"inbound\"", "action=\"deny\"", "status=\"403\""];
    assert_eq!(
        metric(&lab, API, "palisade_http_requests_total", &label),
        1.0
    );
    let label = [
        "direction=\"inbound\"",
        "action=\"allow\"",
        "status=\"200\"",
    ];
    assert_eq!(
        metric(&lab, API, "palisade_http_requests_total", &label),
        3.0
    );

    // Pipelined requests are answered in order, the denied one in its place.
    let text = raw(&lab, "production/frontend", api,
        b"GET /api/v1/a HTTP/1.1\r\nHost: api\r\n\r\nDELETE /api/v1/a HTTP/1.1\r\nHost: api\r\n\r\nGET /api/v1/b HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
    assert_eq!(statuses(&text), [200, 403, 200], "{text}");

    // Expect: 100-continue: an allowed request gets 100 then the app's answer; a denied one
    // gets 403 at once, and its body is never asked for.
    let ns = lab.netns("production/frontend").unwrap();
    lab.runtime().block_on(async {
        let mut s = agent::connect(ns, api).await.unwrap();
        s.write_all(b"POST /api/v1/orders HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n").await.unwrap();
        let mut buf = vec![0; 256];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 100 Continue\r\n"), "{}", String::from_utf8_lossy(&buf[..n]));
        s.write_all(b"hello").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200") && text.contains("x-received-bytes: 5"), "{text}");
    });
    let text = raw(&lab, "production/frontend", api,
        b"PUT /api/v1/orders HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n");
    assert_eq!(statuses(&text), [403], "{text}");

    // other is allowed nothing: refused at the connection, as before.
    assert!(!lab.runtime().block_on(agent::probe_http(
        lab.netns("production/other").unwrap(),
        api,
        API
    )));

    // The L4-only port of the same pod is relayed unread: no inspection counted for it.
    let inspected = || metric(&lab, API, "palisade_inspected_connections_total", &[]);
    let before = inspected();
    assert!(lab
        .probe("production/frontend", API, 9090, Protocol::Tcp)
        .unwrap());
    let text = raw(
        &lab,
        "production/frontend",
        addr(&lab, API, 9090),
        b"GET /admin HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        statuses(&text),
        [200],
        "any request passes an L4 port: {text}"
    );
    assert_eq!(inspected(), before, "9090 is not inspected");

    // Audit mode: the would-be denied request passes, logged as would-deny.
    lab.write_manifest("zz-audit.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: production, annotations: {palisade.dev/mode: audit}}\n").unwrap();
    let mut text = String::new();
    eventually(Duration::from_secs(5), || {
        text = raw(
            &lab,
            "production/frontend",
            api,
            b"DELETE /api/v1/orders HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
        );
        statuses(&text) == [200]
    });
    assert_eq!(statuses(&text), [200], "{text}");
    let line = logged(&lab, API, |l| {
        l["method"] == "DELETE" && l["action"] == "would-deny"
    });
    assert_eq!(line["status"], 200);
}

#[test]
fn http2_streams_and_grpc_are_judged_one_by_one() {
    let lab = lab();
    let ns = lab.netns("production/frontend").unwrap();
    let api = addr(&lab, API, 8080);
    lab.runtime().block_on(async {
        let stream = agent::connect(ns, api).await.unwrap();
        let (sender, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let paths = ["/api/v1/a", "/api/v1/b", "/admin", "/api/v1/c", "/api/v1/d"];
        let streams = paths.iter().map(|p| {
            let mut s = sender.clone();
            let req = Request::get(format!("http://api{p}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            async move {
                let r = s.send_request(req).await.unwrap();
                let status = r.status();
                let body = r.into_body().collect().await.unwrap().to_bytes();
                (status, body)
            }
        });
        let answers = tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::future::join_all(streams),
        )
        .await
        .unwrap();
        for (p, (status, body)) in paths.iter().zip(&answers) {
            if *p == "/admin" {
                assert_eq!(*status, StatusCode::FORBIDDEN);
                assert!(body.starts_with(
                    b"palisade: GET /admin is not allowed by production/api-l7-policy"
                ));
            } else {
                assert_eq!(
                    (*status, &body[..]),
                    (StatusCode::OK, &b"production/api\n"[..]),
                    "{p}"
                );
            }
        }
    });
    let line = logged(&lab, API, |l| l["path"] == "/admin");
    assert_eq!(
        (line["http"].as_str(), line["status"].as_u64()),
        (Some("HTTP/2"), Some(403))
    );

    // gRPC: a path rule on /package.Service/Method; trailers cross both ways.
    let grpc = addr(&lab, API, 50051);
    lab.runtime().block_on(async {
        let stream = agent::connect(ns, grpc).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let call = |method: &str| {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-client-trailer", "yes".parse().unwrap());
            let frames = futures_util::stream::iter([
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(
                    b"\0\0\0\0\x02hi",
                ))),
                Ok(Frame::trailers(trailers)),
            ]);
            let req = Request::post(format!("http://api:50051/orders.v1.Orders/{method}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(StreamBody::new(frames))
                .unwrap();
            let mut s = sender.clone();
            async move { s.send_request(req).await.unwrap() }
        };
        let ok = call("Get").await;
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()["x-request-trailers"], "x-client-trailer=yes");
        let collected = ok.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert!(collected.to_bytes().ends_with(b"production/api"));
        let denied = call("Delete").await;
        assert_eq!(denied.status(), StatusCode::FORBIDDEN);
        assert_eq!(denied.headers()["grpc-status"], "7", "PERMISSION_DENIED");
        assert!(
            denied.headers()["grpc-message"]
                .to_str()
                .unwrap()
                .contains("POST%20/orders.v1.Orders/Delete")
                || denied.headers()["grpc-message"]
                    .to_str()
                    .unwrap()
                    .contains("POST /orders.v1.Orders/Delete")
        );
    });
}

#[test]
fn upgrades_and_big_uploads_stream_through() {
    let lab = lab();
    let api = addr(&lab, API, 8080);
    let ns = lab.netns("production/frontend").unwrap();
    // A WebSocket upgrade on an allowed path is judged, then the upgraded stream spliced.
    lab.runtime().block_on(async {
        let mut s = agent::connect(ns, api).await.unwrap();
        s.write_all(b"GET /api/v1/stream HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
        let mut buf = vec![0; 512];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await.unwrap().unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s.write_all(b"\x81\x04ping").await.unwrap();
        let mut echo = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut echo)).await.unwrap().unwrap();
        assert_eq!(&echo, b"\x81\x04ping");
    });
    let text = raw(&lab, "production/frontend", api, b"GET /ws HTTP/1.1\r\nHost: api\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n");
    assert_eq!(statuses(&text), [403], "{text}");

    // 100 MB chunked, streamed: the proxy's memory stays flat during the upload.
    let pid = lab.proxy_pid(API).expect("api has a proxy");
    let rss = move || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .strip_suffix(" kB")?
                    .parse()
                    .ok()
            })
            .unwrap()
    };
    let before = rss();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss());
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    const MB: usize = 1 << 20;
    let started = Instant::now();
    let (status, received) = lab.runtime().block_on(async {
        let stream = agent::connect(ns, api).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let chunk = Bytes::from(vec![b'x'; MB]);
        let frames = futures_util::stream::iter(
            (0..100).map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone()))),
        );
        let req = Request::post("/api/v1/orders")
            .header("host", "api")
            .body(StreamBody::new(frames))
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
            .await
            .expect("bounded")
            .unwrap();
        (
            r.status(),
            r.headers()["x-received-bytes"].to_str().unwrap().to_owned(),
        )
    });
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(received, (100 * MB).to_string());
    eprintln!(
        "100 MB upload in {:?}; proxy RSS {before} kB before, peak {peak} kB",
        started.elapsed()
    );
    assert!(
        peak < before + 8 * 1024,
        "the proxy's RSS grew from {before} kB to {peak} kB during a 100 MB upload"
    );
}

#[test]
fn egress_rules_with_http_conditions_are_judged_by_the_clients_proxy() {
    let lab = lab();
    let api = addr(&lab, API, 8080);
    lab.runtime().block_on(async {
        let mut c = h1(&lab, "production/batch", api).await;
        let mut ok = get("GET", "/reports/7");
        ok.headers_mut()
            .insert("x-team", "analytics".parse().unwrap());
        assert_eq!(send(&mut c, ok).await.0, StatusCode::OK);
        let (status, body) = send(&mut c, get("GET", "/reports/7")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "no X-Team");
        assert!(
            body.contains("production/batch-egress (egress of production/batch)"),
            "{body}"
        );
        let mut wrong = get("GET", "/reports/7");
        wrong
            .headers_mut()
            .insert("x-team", "sales".parse().unwrap());
        assert_eq!(
            send(&mut c, wrong).await.0,
            StatusCode::FORBIDDEN,
            "another team"
        );
        let mut deeper = get("GET", "/reports/7/raw");
        deeper
            .headers_mut()
            .insert("x-team", "analytics".parse().unwrap());
        assert_eq!(
            send(&mut c, deeper).await.0,
            StatusCode::FORBIDDEN,
            "the template takes one segment"
        );
    });
    let line = logged(&lab, "production/batch", |l| l["status"] == 403);
    assert_eq!(line["direction"], "egress");
    assert_eq!(line["policy"], "production/batch-egress");
    // The API's own proxy saw only the allowed request: it allows batch at L4, unread.
    assert!(
        lab.flow_log(API).iter().all(|l| l["path"].is_null()),
        "{:?}",
        lab.flow_log(API)
    );
}

#[test]
fn evasions_are_refused_next_to_their_positive_controls() {
    let lab = lab();
    let api = addr(&lab, API, 8080);
    let exchange = |request: &str| raw(&lab, "production/frontend", api, request.as_bytes());
    let close = "Host: api\r\nConnection: close\r\n\r\n";
    // (refused request, its status, positive control, what the flow log says)
    let cases: Vec<(String, u16, String, &str)> = vec![
        (format!("GET /api/v1/../admin HTTP/1.1\r\n{close}"), 403, format!("GET /api/v1/x/../y HTTP/1.1\r\n{close}"), "/api/admin"),
        (format!("GET //admin HTTP/1.1\r\n{close}"), 403, format!("GET //api/v1/x HTTP/1.1\r\n{close}"), "/admin"),
        (format!("GET /api/v1/%2e%2e/admin HTTP/1.1\r\n{close}"), 403, format!("GET /api/v1/%61 HTTP/1.1\r\n{close}"), "/api/admin"),
        (format!("GET /api/v1/a%2Fb HTTP/1.1\r\n{close}"), 400, format!("GET /api/v1/a%3Ab HTTP/1.1\r\n{close}"), "encoded /"),
        (format!("Get /api/v1/x HTTP/1.1\r\n{close}"), 403, format!("GET /api/v1/x HTTP/1.1\r\n{close}"), "Get"),
        (
            "POST /api/v1/orders HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n".into(),
            400,
            "POST /api/v1/orders HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n".into(),
            "both Content-Length and Transfer-Encoding",
        ),
        (
            "POST /api/v1/orders HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".into(),
            400,
            "POST /api/v1/orders HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".into(),
            "several Content-Length",
        ),
        (
            "POST /api/v1/orders HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".into(),
            400,
            "POST /api/v1/orders HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into(),
            "invalid chunk",
        ),
        (format!("GET /api/v1/x HTTP/1.1\r\nX-A: b\r\n c\r\n{close}"), 400, format!("GET /api/v1/x HTTP/1.1\r\nX-A: b c\r\n{close}"), "malformed"),
        ("GET /api/v1/x HTTP/1.1\nHost: api\nConnection: close\n\n".into(), 400, format!("GET /api/v1/x HTTP/1.1\r\n{close}"), "bare LF"),
        (
            "GET http://evil.example/api/v1/x HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n".into(),
            400,
            "GET http://api/api/v1/x HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n".into(),
            "authority disagrees with Host",
        ),
    ];
    for (refused, status, control, says) in &cases {
        let text = exchange(control);
        assert_eq!(
            statuses(&text),
            [200],
            "positive control {control:?}: {text}"
        );
        let text = exchange(refused);
        assert_eq!(statuses(&text), [*status], "{refused:?}: {text}");
        assert!(
            !text.contains("production/api\n"),
            "{refused:?} reached the app: {text}"
        );
        logged(&lab, API, |l| {
            l["action"] == "deny"
                && (l["path"].as_str() == Some(says)
                    || l["method"].as_str() == Some(says)
                    || l["detail"].as_str().is_some_and(|d| d.contains(says)))
        });
    }
    // A second request hidden after a chunked body's end is a request of its own: judged,
    // and refused.
    let text = exchange("POST /api/v1/orders HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nDELETE /api/v1/orders HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
    assert_eq!(statuses(&text), [200, 403], "{text}");
    logged(&lab, API, |l| l["method"] == "DELETE" && l["status"] == 403);
    // The query string is not part of the path: it cannot satisfy a path rule either.
    let text = exchange(&format!("GET /admin?/api/v1/x HTTP/1.1\r\n{close}"));
    assert_eq!(statuses(&text), [403], "{text}");
}

#[test]
fn an_opaque_port_is_never_inspected_so_http_rules_cannot_allow_it() {
    let lab = Lab::start(LabOptions {
        paths: vec![PathBuf::from("tests/lab/opaque")],
        respect_injection: false,
        binary: PathBuf::from(BINARY),
        hold: Duration::from_secs(2),
        log_allowed: false,
        dns_grace: Duration::from_secs(60),
    })
    .expect("building the lab (needs root)");
    let ns = lab.netns("o/client").unwrap();
    let server = |port| addr(&lab, "o/server", port);
    assert!(lab
        .runtime()
        .block_on(agent::probe_http(ns, server(8080), "o/server")));
    assert!(!lab
        .runtime()
        .block_on(agent::probe_http(ns, server(8443), "o/server")));
    let line = logged(&lab, "o/server", |l| l["dst"] == "10.62.0.1:8443");
    assert_eq!(line["reason"], "l7-not-inspected");
    assert!(
        line["detail"]
            .as_str()
            .unwrap()
            .contains("port 8443 is opaque"),
        "{line}"
    );
}

#[test]
fn the_lab_probes_ports_with_http_rules_with_real_requests() {
    let lab = lab();
    let observed = lab.probe_all().expect("probing");
    let differ: Vec<String> = observed
        .iter()
        .filter(|o| o.differs())
        .map(|o| {
            format!(
                "{} -> {} {}: expected {}",
                o.expected.from, o.expected.to, o.expected.port, o.expected.allowed
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "flows differ from simulate:\n{}",
        differ.join("\n")
    );
    let http: Vec<_> = observed.iter().filter(|o| o.expected.http()).collect();
    assert_eq!(
        http.len(),
        3,
        "frontend -> api 8080 and 50051, batch -> api 8080"
    );
    assert!(http.iter().all(|o| o.observed == Some(true)));
    // Each was a request the proxies judged (GET / is allowed by no HTTP rule: 403).
    logged(&lab, API, |l| l["path"] == "/" && l["status"] == 403);
    logged(&lab, "production/batch", |l| {
        l["path"] == "/" && l["status"] == 403
    });
}
