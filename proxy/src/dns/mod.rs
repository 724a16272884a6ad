//! The DNS proxy. Queries the pod sends to its resolvers are redirected here, over UDP and
//! TCP. Each query is judged as the pod's egress to its resolver (a Service's backend, for
//! a cluster DNS Service), and its name against the DNS rules (`rules.dns`) of the rules
//! that allow that flow; an allowed query goes to the resolver over the same transport.
//! The answer is read (hickory-proto), what it resolved is learned into the pod's
//! [`cache::DnsCache`], and only then does it reach the app, unchanged, so that the app's
//! first connection to a fresh address finds it learned.
//!
//! A query no rule allows is dropped (UDP) or its connection reset (TCP), as any denied
//! flow; a query whose name the DNS rules refuse is answered `NXDOMAIN` (or `REFUSED`) by
//! the proxy. Both are written to the flow log with the name and why.

pub mod cache;
pub mod message;
pub mod resolve;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use palisade_policy::fqdn;
use palisade_policy::ports::Protocol;
use palisade_policy::verdict::{decide, decide_dns, dns_rules, Action, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::config::Refusal;
use crate::flowlog::{DnsEntry, Extra};
use crate::judge::{FlowInfo, Judge, Line};
use crate::metrics;
use crate::splice::reset_on_close;
use crate::{tcp, udp};
use message::Question;

/// The largest DNS message (over UDP with EDNS, and over TCP).
const MAX_MESSAGE: usize = 65_535;
/// How long a DNS-over-TCP connection may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(30);
/// How often expired records are swept from the cache.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// What becomes of a query.
enum Admission {
    /// Forward it to the resolver: the verdict, when a policy gave it.
    Forward(Action, Option<Verdict>),
    /// Answer it with these bytes (a refusal).
    Answer(Vec<u8>),
    /// Drop it (UDP) or reset the connection (TCP): no rule allows the flow.
    Drop,
}

/// Serves the UDP DNS listener forever.
pub async fn serve_udp(socket: UdpSocket, judge: Judge) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, app) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                ::metrics::counter!(metrics::LISTENER_ERRORS, "listener" => "dns", "reason" => "recv").increment(1);
                tracing::debug!(error = %e, "cannot receive a DNS query");
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let (socket, judge) = (socket.clone(), judge.clone());
        tokio::spawn(async move {
            if let Err(e) = answer_udp(&judge, &socket, app, &query).await {
                tracing::debug!(%app, error = %e, "DNS query not answered");
            }
        });
    }
}

/// Sweeps expired records from the pod's cache forever.
pub async fn sweep(judge: Judge) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        judge.dns().sweep(Instant::now());
    }
}

/// The resolver a UDP query from `app` goes to: the first of the app's address family.
fn upstream(judge: &Judge, app: SocketAddr) -> Option<IpAddr> {
    let upstreams = &judge.config().dns_upstreams;
    upstreams
        .iter()
        .find(|r| r.is_ipv4() == app.is_ipv4())
        .or(upstreams.first())
        .copied()
}

async fn answer_udp(
    judge: &Judge,
    socket: &UdpSocket,
    app: SocketAddr,
    bytes: &[u8],
) -> io::Result<()> {
    let Some(resolver) = upstream(judge, app) else {
        return Ok(());
    };
    let q = match message::question(bytes) {
        Ok(q) => q,
        Err(e) => {
            count(Counted::Malformed);
            tracing::debug!(%app, error = %e, "malformed DNS query");
            if let Some(id) = message::id_of(bytes) {
                socket.send_to(&message::format_error(id), app).await?;
            }
            return Ok(());
        }
    };
    let Some(flow) = judge
        .outbound_flow(app, SocketAddr::new(resolver, 53), Protocol::Udp)
        .await
    else {
        return Ok(());
    };
    let (action, verdict) = match admit(judge, &flow, &q).await {
        Admission::Forward(action, verdict) => (action, verdict),
        Admission::Answer(refusal) => {
            socket.send_to(&refusal, app).await?;
            return Ok(());
        }
        Admission::Drop => return Ok(()),
    };
    let upstream = udp::connected(flow.dst).await?;
    upstream.send(bytes).await?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let exchange = async {
        loop {
            let n = upstream.recv(&mut buf).await?;
            // Datagrams that answer another query (a late or forged one) are ignored.
            if !matches!(
                message::answer(&q, &buf[..n]),
                Err(message::AnswerError::Mismatch)
            ) {
                return Ok::<usize, io::Error>(n);
            }
        }
    };
    let n = match tokio::time::timeout(judge.config().dns.timeout, exchange).await {
        Ok(r) => r?,
        Err(_) => {
            count(Counted::Failed);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the resolver did not answer",
            ));
        }
    };
    let answer = &buf[..n];
    learn(judge, &flow, &q, (action, verdict), answer);
    socket.send_to(answer, app).await?;
    Ok(())
}

/// Serves the TCP DNS listener forever.
pub async fn serve_tcp(listener: TcpListener, judge: Judge) {
    tcp::serve(listener, "dns", judge, |judge, client, src| async move {
        if let Err(e) = answer_tcp(&judge, client, src).await {
            tracing::debug!(%src, error = %e, "DNS over TCP ended");
        }
    })
    .await
}

async fn read_frame(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

async fn write_frame(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a DNS message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

async fn answer_tcp(judge: &Judge, mut client: TcpStream, src: SocketAddr) -> io::Result<()> {
    let Some(asked) = tcp::redirected_dst(judge, &client, src) else {
        reset_on_close(&client);
        return Ok(());
    };
    let Some(flow) = judge.outbound_flow(src, asked, Protocol::Tcp).await else {
        reset_on_close(&client);
        return Ok(());
    };
    let mut upstream: Option<TcpStream> = None;
    loop {
        let query = match tokio::time::timeout(TCP_IDLE, read_frame(&mut client)).await {
            Ok(Ok(Some(q))) => q,
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(e),
        };
        let q = match message::question(&query) {
            Ok(q) => q,
            Err(e) => {
                count(Counted::Malformed);
                tracing::debug!(%src, error = %e, "malformed DNS query");
                match message::id_of(&query) {
                    Some(id) => {
                        write_frame(&mut client, &message::format_error(id)).await?;
                        continue;
                    }
                    None => return Ok(()),
                }
            }
        };
        let (action, verdict) = match admit(judge, &flow, &q).await {
            Admission::Forward(action, verdict) => (action, verdict),
            Admission::Answer(refusal) => {
                write_frame(&mut client, &refusal).await?;
                continue;
            }
            Admission::Drop => {
                reset_on_close(&client);
                return Ok(());
            }
        };
        let answer = match exchange_tcp(judge, &flow, &mut upstream, &query).await {
            Ok(a) => a,
            Err(e) => {
                count(Counted::Failed);
                reset_on_close(&client);
                return Err(e);
            }
        };
        learn(judge, &flow, &q, (action, verdict), &answer);
        write_frame(&mut client, &answer).await?;
    }
}

/// Sends a query over the connection to the resolver (opened on first use, and once
/// more if the resolver closed it since) and reads its answer.
async fn exchange_tcp(
    judge: &Judge,
    flow: &FlowInfo,
    upstream: &mut Option<TcpStream>,
    query: &[u8],
) -> io::Result<Vec<u8>> {
    let timeout = judge.config().dns.timeout;
    for attempt in 0..2 {
        let reused = upstream.is_some();
        let stream = match upstream {
            Some(s) => s,
            None => upstream.insert(tcp::connect(judge, flow.dst).await?),
        };
        let result = tokio::time::timeout(timeout, async {
            write_frame(stream, query).await?;
            read_frame(stream).await
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the resolver did not answer"))?;
        match result {
            Ok(Some(answer)) => return Ok(answer),
            // A kept connection the resolver closed: once more on a new one.
            Ok(None) | Err(_) if reused && attempt == 0 => *upstream = None,
            Ok(None) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the resolver closed the connection",
                ))
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("the resolver closed the connection twice"))
}

/// What the queries metric counts.
#[derive(Clone, Copy)]
enum Counted {
    Allowed,
    Denied,
    Refused,
    Malformed,
    Failed,
}

fn count(v: Counted) {
    let label = match v {
        Counted::Allowed => "allowed",
        Counted::Denied => "denied",
        Counted::Refused => "refused",
        Counted::Malformed => "malformed",
        Counted::Failed => "failed",
    };
    ::metrics::counter!(metrics::DNS_QUERIES, "verdict" => label).increment(1);
}

fn dns_entry<'a>(q: &'a Question, rcode: Option<ResponseCode>) -> DnsEntry<'a> {
    DnsEntry {
        query: fqdn::display(&q.name),
        qtype: q.qtype.to_string(),
        rcode: rcode.map(|c| format!("{c:?}")),
    }
}

/// Judges a query: the flow to the resolver, then its name against the DNS rules.
async fn admit(judge: &Judge, flow: &FlowInfo, q: &Question) -> Admission {
    let Some(snapshot) = judge.state().wait(judge.config().hold).await else {
        let j = judge.without_policy(flow);
        metrics::counter_flow(flow, j.action);
        count(if j.action.passes() {
            Counted::Allowed
        } else {
            Counted::Denied
        });
        if j.action == Action::Deny || judge.logs_allowed() {
            judge.log(flow, &j, None);
        }
        return match j.action.passes() {
            true => Admission::Forward(j.action, None),
            false => Admission::Drop,
        };
    };
    let policy = &snapshot.policy;
    let f = flow.as_flow();
    let verdict = decide_dns(policy, &f, &q.name);
    metrics::counter_flow(flow, verdict.action);
    if verdict.action.passes() {
        count(Counted::Allowed);
        if verdict.action == Action::WouldDeny {
            write(
                judge,
                flow,
                q,
                verdict.action,
                verdict.reason.to_string(),
                format!(
                    ": {}; let through in audit mode",
                    verdict.describe(policy, &f)
                ),
                snapshot.version,
                None,
            );
        }
        return Admission::Forward(verdict.action, Some(verdict));
    }
    let connection = decide(policy, &f);
    if !connection.action.passes() {
        count(Counted::Denied);
        write(
            judge,
            flow,
            q,
            Action::Deny,
            verdict.reason.to_string(),
            format!(
                " to {}: {}; without an egress rule allowing UDP and TCP \
                 53 to its DNS server the pod cannot resolve names",
                flow.dst,
                verdict.describe(policy, &f)
            ),
            snapshot.version,
            None,
        );
        return Admission::Drop;
    }
    // The flow to the resolver is allowed, but only by rules whose DNS rules refuse the name.
    count(Counted::Refused);
    let code = match judge.config().dns.refuse_with {
        Refusal::NxDomain => ResponseCode::NXDomain,
        Refusal::Refused => ResponseCode::Refused,
    };
    write(
        judge,
        flow,
        q,
        Action::Deny,
        verdict.reason.to_string(),
        format!(
            ": no DNS rule of the rules allowing {} allows the name \
             (they allow {}); answered {code:?}",
            flow.dst,
            dns_rules(policy, &f).join(", ")
        ),
        snapshot.version,
        Some(code),
    );
    Admission::Answer(message::refusal(q, code))
}

#[allow(clippy::too_many_arguments)]
fn write(
    judge: &Judge,
    flow: &FlowInfo,
    q: &Question,
    action: Action,
    reason: String,
    detail: String,
    version: u64,
    rcode: Option<ResponseCode>,
) {
    judge.write_log(
        flow,
        Line {
            action,
            reason,
            detail: format!(
                "DNS query for {} ({}){detail}",
                fqdn::display(&q.name),
                q.qtype
            ),
            policy_version: Some(version),
            event: None,
            fqdn: None,
            extra: Some(Extra::Dns(dns_entry(q, rcode))),
        },
    );
}

/// Learns what an answer resolved, before it is released to the app; logs the query when
/// allowed queries are logged.
fn learn(
    judge: &Judge,
    flow: &FlowInfo,
    q: &Question,
    (action, verdict): (Action, Option<Verdict>),
    bytes: &[u8],
) {
    let answer = match message::answer(q, bytes) {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(name = %q.name, error = %e, "an answer the proxy cannot read; passed on");
            return;
        }
    };
    let now = Instant::now();
    for (name, ips) in &answer.resolved {
        judge.dns().learn(name, ips, now);
    }
    let (Action::Allow, Some(verdict), Some(snapshot), true) = (
        action,
        verdict,
        judge.state().current(),
        judge.logs_allowed(),
    ) else {
        return;
    };
    let learned: usize = answer.resolved.first().map_or(0, |(_, ips)| ips.len());
    write(
        judge,
        flow,
        q,
        action,
        verdict.reason.to_string(),
        format!(
            " forwarded to {}{}, {learned} addresses learned; {}",
            flow.dst,
            if answer.truncated {
                ", answer truncated"
            } else {
                ""
            },
            verdict.describe(&snapshot.policy, &flow.as_flow())
        ),
        snapshot.version,
        Some(answer.code),
    );
}
