//! The flow log: one JSON line per denied flow (and per allowed flow on request), on
//! standard output, written by a thread of its own so that a slow reader never stalls
//! traffic; lines that cannot be queued are dropped and counted.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::SystemTime;

use palisade_policy::policy::Direction;
use palisade_policy::ports::Protocol;
use serde::Serialize;

use crate::metrics;

/// One line of the flow log.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// When the verdict was given (RFC 3339, UTC).
    pub time: String,
    /// `namespace/name` of the pod.
    pub pod: &'a str,
    /// `ingress` or `egress`.
    pub direction: Direction,
    /// `allow`, `deny` or `would-deny`.
    pub action: &'static str,
    /// The protocol.
    pub protocol: Protocol,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port (the backend, for a Service).
    pub dst: SocketAddr,
    /// `namespace/name` of the Service the pod asked for, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<&'a str>,
    /// The reason's kind (`rule`, `no-rule-matched`, `node`, ...).
    pub reason: String,
    /// The reason in words.
    pub detail: String,
    /// Version of the policy the verdict used (absent before the first policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
    /// Why the flow ended, when logged at its end (closed by a new policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'static str>,
    /// The DNS name through which a `toFQDNs` rule allowed the destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<&'a str>,
    /// The HTTP request or DNS query judged (one line per request or query).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Extra<'a>>,
}

/// What a line is about beyond the flow.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Extra<'a> {
    /// An HTTP request on an inspected connection.
    Request(RequestEntry<'a>),
    /// A DNS query through the DNS proxy.
    Dns(DnsEntry<'a>),
    /// A TLS ClientHello (or HTTP `Host`) checked against the names resolved to the address.
    Sni(SniEntry<'a>),
}

/// The part of a flow log line that describes one DNS query.
#[derive(Debug, Serialize)]
pub struct DnsEntry<'a> {
    /// The name asked for, as people write it.
    pub query: &'a str,
    /// The record type asked for (`A`, `AAAA`, ...).
    pub qtype: String,
    /// The answer's response code (`NoError`, `NXDomain`, ...), the server's or the
    /// proxy's own; absent when no answer was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rcode: Option<String>,
}

/// The part of a flow log line that describes a checked server name.
#[derive(Debug, Serialize)]
pub struct SniEntry<'a> {
    /// The TLS server name, or the HTTP `Host` (absent when the connection named none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<&'a str>,
}

/// The part of a flow log line that describes one HTTP request.
#[derive(Debug, Serialize)]
pub struct RequestEntry<'a> {
    /// `HTTP/1.1` or `HTTP/2`.
    pub http: &'static str,
    /// The method.
    pub method: &'a str,
    /// The path as judged and forwarded (normalised; as sent when it was refused).
    pub path: &'a str,
    /// The host the request named, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<&'a str>,
    /// The response's status: the app's, or the proxy's own 400/403/502.
    pub status: u16,
    /// `namespace/name` of the policy whose rule allowed it, or of those whose HTTP rules
    /// did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<&'a str>,
    /// The index of the rule that allowed it, in its policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    /// The index of the HTTP rule that allowed it, in its port's `rules.http`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_rule: Option<u32>,
}

/// Where flow log lines go.
#[derive(Clone)]
pub struct FlowLog {
    tx: mpsc::SyncSender<String>,
    log_allowed: bool,
}

impl FlowLog {
    /// Starts the writer thread.
    pub fn start(log_allowed: bool) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<String>(4096);
        std::thread::Builder::new()
            .name("flow-log".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                while let Ok(line) = rx.recv() {
                    let _ = writeln!(out, "{line}");
                    // Flush when nothing else is queued, so lines show up promptly.
                    while let Ok(more) = rx.try_recv() {
                        let _ = writeln!(out, "{more}");
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(Self { tx, log_allowed })
    }

    /// Whether allowed flows are logged too.
    pub fn logs_allowed(&self) -> bool {
        self.log_allowed
    }

    /// Queues a line.
    pub fn write(&self, entry: &Entry<'_>) {
        let Ok(line) = serde_json::to_string(entry) else {
            return;
        };
        if self.tx.try_send(line).is_err() {
            ::metrics::counter!(metrics::FLOW_LOG_DROPPED).increment(1);
        }
    }
}

/// The time now in RFC 3339 with milliseconds.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
