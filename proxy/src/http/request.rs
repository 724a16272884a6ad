//! One request on an inspected connection: checked, normalised, judged by the policy crate,
//! then forwarded to the app or answered by the proxy (`400`, `403`), logged and counted.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use palisade_policy::http::path::normalize;
use palisade_policy::http::Request as Judged;
use palisade_policy::verdict::{decide_http, http_policies, Action, Reason};

use super::{Connection, Version};
use crate::flowlog::RequestEntry;
use crate::judge::FlowInfo;
use crate::metrics;

/// A response body: the app's, streamed, or the proxy's own short text.
pub type Body = Either<Incoming, Full<Bytes>>;

/// The request as rules see it.
struct View<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    host: Option<&'a str>,
    headers: &'a HeaderMap,
}

impl Judged for View<'_> {
    fn method(&self) -> &str {
        self.method
    }
    fn path(&self) -> &str {
        self.path
    }
    fn query(&self) -> Option<&str> {
        self.query
    }
    fn host(&self) -> Option<&str> {
        self.host
    }
    fn header_values(&self, name: &str) -> impl Iterator<Item = &[u8]> {
        self.headers.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

/// Counts a request.
pub fn count(flow: &FlowInfo, action: Action, status: u16) {
    ::metrics::counter!(
        metrics::HTTP_REQUESTS,
        "direction" => flow.label(),
        "action" => action.as_str(),
        "status" => status.to_string()
    )
    .increment(1);
}

/// The host a request names, without port, lower case: the authority of an absolute
/// target (HTTP/1) or `:authority` (HTTP/2), else `Host`. `Err` when both are given and
/// disagree, which the proxy refuses.
fn host_of<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Result<Option<Cow<'a, str>>, &'static str> {
    let header = match headers.get_all(header::HOST).iter().collect::<Vec<_>>()[..] {
        [] => None,
        [one] => Some(one.to_str().map_err(|_| "a Host that is not text")?),
        _ => return Err("several Host headers"),
    };
    let authority = uri.authority().map(|a| a.as_str());
    let name = match (authority, header) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => {
            return Err("a target whose authority disagrees with Host")
        }
        (Some(a), _) => a,
        (None, Some(h)) => h,
        (None, None) => return Ok(None),
    };
    let without_port = match name.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => name,
    };
    Ok(Some(
        if without_port.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(without_port.to_ascii_lowercase())
        } else {
            Cow::Borrowed(without_port)
        },
    ))
}

/// Handles one request; never fails (every failure is a response).
pub async fn handle(
    conn: Arc<Connection>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    conn.waiting.fetch_add(1, Ordering::Relaxed);
    let response = judge_and_forward(&conn, req).await;
    conn.waiting.fetch_sub(1, Ordering::Relaxed);
    Ok(response)
}

async fn judge_and_forward(conn: &Connection, mut req: Request<Incoming>) -> Response<Body> {
    let method = req.method().as_str().to_owned();
    let raw_path = req.uri().path().to_owned();
    let refuse = |why: String, path: &str, host: Option<&str>| {
        let version = conn.judge.state().current().map_or(0, |s| s.version);
        conn.finish_with(
            Action::Deny,
            "bad-request",
            format!("refused with 400: {why}"),
            &method,
            path,
            host,
            400,
            (None, None, None),
            version,
        );
        text(
            StatusCode::BAD_REQUEST,
            format!("palisade: bad request: {why}\n"),
            true,
            false,
        )
    };
    let host = match host_of(req.uri(), req.headers()) {
        Ok(h) => h.map(Cow::into_owned),
        Err(why) => return refuse(why.to_owned(), &raw_path, None),
    };
    let path = match normalize(&raw_path) {
        Ok(p) => p.into_owned(),
        Err(e) => return refuse(e.to_string(), &raw_path, host.as_deref()),
    };
    let Some(snapshot) = conn.judge.state().current() else {
        // A connection is inspected only once a policy judged it; there is always one.
        return refuse("no policy".into(), &path, host.as_deref());
    };
    let flow = conn.flow.as_flow();
    let view = View {
        method: &method,
        path: &path,
        query: req.uri().query(),
        host: host.as_deref(),
        headers: req.headers(),
    };
    let verdict = decide_http(&snapshot.policy, &flow, &view);
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let (policy, rule, http_rule) = match verdict.reason {
        Reason::Rule {
            policy, rule, http, ..
        } => (
            Some(
                snapshot.policy.side(flow.direction).policies[policy as usize]
                    .id
                    .to_string(),
            ),
            Some(rule),
            http,
        ),
        _ => {
            let ids: Vec<String> = http_policies(&snapshot.policy, &flow)
                .iter()
                .map(|id| id.to_string())
                .collect();
            ((!ids.is_empty()).then(|| ids.join(", ")), None, None)
        }
    };
    let detail = verdict.describe(&snapshot.policy, &flow);
    let reason = verdict.reason.to_string();
    if verdict.action == Action::Deny {
        let body = format!(
            "palisade: {method} {path} is not allowed by {} ({} of {})\n",
            policy.as_deref().unwrap_or("any policy"),
            flow.direction,
            snapshot.policy.pod,
        );
        conn.finish_with(
            verdict.action,
            &reason,
            detail,
            &method,
            &path,
            host.as_deref(),
            403,
            (policy, rule, http_rule),
            snapshot.version,
        );
        return text(StatusCode::FORBIDDEN, body, false, grpc);
    }
    // What is judged is what the app gets: the normalised path, in origin form for HTTP/1.
    let target = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = PathAndQuery::try_from(target).ok();
    if conn.version == Version::Http1 {
        parts.scheme = None;
        parts.authority = None;
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    let upgrade = (conn.version == Version::Http1 && req.headers().contains_key(header::UPGRADE))
        .then(|| hyper::upgrade::on(&mut req));
    let result = conn.upstream.send(req).await;
    let mut response = match result {
        Ok(r) => r,
        Err(e) => {
            let refused_body = conn.violation.lock().is_ok_and(|v| v.is_some());
            let (status, why) = if refused_body {
                (
                    StatusCode::BAD_REQUEST,
                    "the request's body was refused".to_owned(),
                )
            } else {
                (
                    StatusCode::BAD_GATEWAY,
                    format!("the app did not answer: {e}"),
                )
            };
            conn.finish_with(
                verdict.action,
                &reason,
                format!("{detail}; {why}"),
                &method,
                &path,
                host.as_deref(),
                status.as_u16(),
                (policy, rule, http_rule),
                snapshot.version,
            );
            return text(status, format!("palisade: {why}\n"), true, grpc);
        }
    };
    let status = response.status().as_u16();
    conn.finish_with(
        verdict.action,
        &reason,
        detail,
        &method,
        &path,
        host.as_deref(),
        status,
        (policy, rule, http_rule),
        snapshot.version,
    );
    if let (Some(client), StatusCode::SWITCHING_PROTOCOLS) = (upgrade, response.status()) {
        let app = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(client, app) {
                Ok((client, app)) => {
                    let mut client = hyper_util::rt::TokioIo::new(client);
                    let mut app = hyper_util::rt::TokioIo::new(app);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut app).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
    }
    response.map(Either::Left)
}

/// The proxy's own answer: a short text, or for gRPC the status in the headers
/// (`PERMISSION_DENIED` for 403) with no body.
fn text(status: StatusCode, body: String, close: bool, grpc: bool) -> Response<Body> {
    let content = if grpc {
        Bytes::new()
    } else {
        Bytes::from(body.clone())
    };
    let mut r = Response::new(Either::Right(Full::new(content)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if grpc {
        let code = if status == StatusCode::FORBIDDEN {
            "7"
        } else {
            "13"
        };
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static(code));
        let message: String = body
            .trim_end()
            .bytes()
            .map(|b| match b {
                b' '..=b'~' if b != b'%' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&message) {
            h.insert("grpc-message", v);
        }
    } else {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    if close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

impl Connection {
    /// Logs (denied and would-deny always, allowed on request) and counts a request.
    #[allow(clippy::too_many_arguments)]
    fn finish_with(
        &self,
        action: Action,
        reason: &str,
        detail: String,
        method: &str,
        path: &str,
        host: Option<&str>,
        status: u16,
        (policy, rule, http_rule): (Option<String>, Option<u32>, Option<u32>),
        policy_version: u64,
    ) {
        count(&self.flow, action, status);
        if action == Action::Allow && !self.judge.logs_allowed() {
            return;
        }
        self.judge.write_log(
            &self.flow,
            action,
            reason.to_owned(),
            detail,
            Some(policy_version),
            None,
            Some(RequestEntry {
                http: self.version.as_str(),
                method,
                path,
                host,
                status,
                policy,
                rule,
                http_rule,
            }),
        );
    }
}
