//! One request on an inspected connection: checked, normalised, judged by the policy crate,
//! then forwarded to the app or answered by the proxy (`400`, `403`), logged and counted.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ::metrics::Counter;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use palisade_policy::compiled::Flow;
use palisade_policy::fqdn;
use palisade_policy::http::path::normalize;
use palisade_policy::http::Request as Judged;
use palisade_policy::verdict::{decide_http, http_policies, Action, Reason, Verdict};

use super::{Connection, Version};
use crate::flowlog::{Extra, RequestEntry};
use crate::judge::{FlowInfo, Line};
use crate::metrics;
use crate::state::Snapshot;

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

/// The counter of requests with this outcome.
fn counter(flow: &FlowInfo, action: Action, status: u16) -> Counter {
    ::metrics::counter!(
        metrics::HTTP_REQUESTS,
        "direction" => flow.label(),
        "action" => action.as_str(),
        "status" => status.to_string()
    )
}

/// Counts a request.
pub fn count(flow: &FlowInfo, action: Action, status: u16) {
    counter(flow, action, status).increment(1);
}

/// The counter of the outcome a connection's requests had last: the next ones mostly have
/// the same, and looking a counter up by its labels costs more than judging the request.
#[derive(Default)]
pub struct LastCounter(Mutex<Option<(Action, u16, Counter)>>);

impl LastCounter {
    fn count(&self, flow: &FlowInfo, action: Action, status: u16) {
        let Ok(mut last) = self.0.lock() else {
            return count(flow, action, status);
        };
        match &*last {
            Some((a, s, c)) if *a == action && *s == status => c.increment(1),
            _ => {
                let c = counter(flow, action, status);
                c.increment(1);
                *last = Some((action, status, c));
            }
        }
    }
}

/// The host a request names, without port, lower case: the authority of an absolute
/// target (HTTP/1) or `:authority` (HTTP/2), else `Host`. `Err` when both are given and
/// disagree, which the proxy refuses.
fn host_of<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Result<Option<Cow<'a, str>>, &'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (None, _) => None,
        (Some(one), None) => Some(one.to_str().map_err(|_| "a Host that is not text")?),
        (Some(_), Some(_)) => return Err("several Host headers"),
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

/// How a request was decided, kept as it is until a flow log line needs it in words (an
/// allowed request is only counted, unless allowed requests are logged).
enum Outcome {
    /// Refused with 400 before any rule.
    Refused(String),
    /// Judged by the policy.
    Judged {
        verdict: Verdict,
        snapshot: Arc<Snapshot>,
        /// What happened after the verdict, when it is worth saying (the app did not answer).
        after: Option<String>,
    },
}

impl Outcome {
    fn action(&self) -> Action {
        match self {
            Outcome::Refused(_) => Action::Deny,
            Outcome::Judged { verdict, .. } => verdict.action,
        }
    }
}

/// The policy whose rule allowed a request, or the policies whose HTTP rules it failed;
/// the rule and HTTP rule that allowed it.
fn deciders(
    verdict: &Verdict,
    snapshot: &Snapshot,
    flow: &Flow<'_>,
) -> (Option<String>, Option<u32>, Option<u32>) {
    match verdict.reason {
        Reason::Rule {
            policy, rule, http, ..
        } => {
            let side = snapshot.policy.side(flow.direction);
            (
                Some(side.policies[policy as usize].id.to_string()),
                Some(rule),
                http,
            )
        }
        _ => {
            let ids: Vec<String> = http_policies(&snapshot.policy, flow)
                .iter()
                .map(|id| id.to_string())
                .collect();
            ((!ids.is_empty()).then(|| ids.join(", ")), None, None)
        }
    }
}

/// The request as the flow log shows it.
struct Seen {
    method: Method,
    path: String,
    host: Option<String>,
}

async fn judge_and_forward(conn: &Connection, mut req: Request<Incoming>) -> Response<Body> {
    let mut seen = Seen {
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        host: None,
    };
    let refuse = |why: String, seen: &Seen| {
        let body = format!("palisade: bad request: {why}\n");
        conn.finish(seen, &Outcome::Refused(why), 400);
        text(StatusCode::BAD_REQUEST, body, true, false)
    };
    match host_of(req.uri(), req.headers()) {
        Ok(h) => seen.host = h.map(Cow::into_owned),
        Err(why) => return refuse(why.to_owned(), &seen),
    }
    let normalized = match normalize(&seen.path) {
        Ok(Cow::Borrowed(_)) => false,
        Ok(Cow::Owned(p)) => {
            seen.path = p;
            true
        }
        Err(e) => return refuse(e.to_string(), &seen),
    };
    let Some(snapshot) = conn.judge.state().current() else {
        // A connection is inspected only once a policy judged it; there is always one.
        return refuse("no policy".into(), &seen);
    };
    let named;
    let mut flow = conn.flow.as_flow();
    if conn.host_check {
        // requireSNI: the request is judged as naming its Host only.
        named = seen
            .host
            .as_deref()
            .map(fqdn::normalize)
            .unwrap_or_default();
        flow = flow.only_name(&named);
    }
    let view = View {
        method: seen.method.as_str(),
        path: &seen.path,
        query: req.uri().query(),
        host: seen.host.as_deref(),
        headers: req.headers(),
    };
    let verdict = decide_http(&snapshot.policy, &flow, &view);
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if verdict.action == Action::Deny {
        let (policies, _, _) = deciders(&verdict, &snapshot, &flow);
        let body = format!(
            "palisade: {} {} is not allowed by {} ({} of {})\n",
            seen.method,
            seen.path,
            policies.as_deref().unwrap_or("any policy"),
            flow.direction,
            snapshot.policy.pod,
        );
        let outcome = Outcome::Judged {
            verdict,
            snapshot,
            after: None,
        };
        conn.finish(&seen, &outcome, 403);
        return text(StatusCode::FORBIDDEN, body, false, grpc);
    }
    // What is judged is what the app gets: the normalised path, in origin form for HTTP/1.
    // Most requests already are (and keep their target as it came).
    let absolute = req.uri().scheme().is_some() || req.uri().authority().is_some();
    if normalized || (conn.version == Version::Http1 && absolute) {
        let target = match req.uri().query() {
            Some(q) => format!("{}?{q}", seen.path),
            None => seen.path.clone(),
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
    }
    let upgrade = (conn.version == Version::Http1 && req.headers().contains_key(header::UPGRADE))
        .then(|| hyper::upgrade::on(&mut req));
    let mut response = match conn.upstream.send(req).await {
        Ok(r) => r,
        Err(e) => {
            let (status, why) = if conn.violation.lock().is_ok_and(|v| v.is_some()) {
                let why = "the request's body was refused".to_owned();
                (StatusCode::BAD_REQUEST, why)
            } else {
                (
                    StatusCode::BAD_GATEWAY,
                    format!("the app did not answer: {e}"),
                )
            };
            let body = format!("palisade: {why}\n");
            let outcome = Outcome::Judged {
                verdict,
                snapshot,
                after: Some(why),
            };
            conn.finish(&seen, &outcome, status.as_u16());
            return text(status, body, true, grpc);
        }
    };
    let outcome = Outcome::Judged {
        verdict,
        snapshot,
        after: None,
    };
    conn.finish(&seen, &outcome, response.status().as_u16());
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
    fn finish(&self, seen: &Seen, outcome: &Outcome, status: u16) {
        let action = outcome.action();
        self.counted.count(&self.flow, action, status);
        if action == Action::Allow && !self.judge.logs_allowed() {
            return;
        }
        let flow = self.flow.as_flow();
        let (reason, detail, version, (policy, rule, http_rule)) = match outcome {
            Outcome::Refused(why) => (
                "bad-request".to_owned(),
                format!("refused with 400: {why}"),
                self.judge.state().current().map(|s| s.version),
                (None, None, None),
            ),
            Outcome::Judged {
                verdict,
                snapshot,
                after,
            } => {
                let mut detail = verdict.describe(&snapshot.policy, &flow);
                if let Some(after) = after {
                    detail = format!("{detail}; {after}");
                }
                (
                    verdict.reason.to_string(),
                    detail,
                    Some(snapshot.version),
                    deciders(verdict, snapshot, &flow),
                )
            }
        };
        self.judge.write_log(
            &self.flow,
            Line {
                action,
                reason,
                detail,
                policy_version: version,
                event: None,
                fqdn: None,
                extra: Some(Extra::Request(RequestEntry {
                    http: self.version.as_str(),
                    method: seen.method.as_str(),
                    path: &seen.path,
                    host: seen.host.as_deref(),
                    status,
                    policy: policy.as_deref(),
                    rule,
                    http_rule,
                })),
            },
        );
    }
}
