//! Flow reports: the proxy posts what it judged to the controller it streams its policy
//! from, on the same HTTP/2 connection (same CA, same token): allowed-flow counts once a
//! second, refused flows [`GATHER`] after the first of a batch (so that `palisade flows
//! --follow` shows them at once, and a burst still goes as one batch). Refused and would-deny flows go one record each; allowed flows
//! are counted per source, destination, port and policy, so the controller sees what
//! flows happen without one record per connection. Everything waits in bounded memory:
//! what does not fit is dropped and counted, and no flow ever waits for a report.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use palisade_policy::flows::{FlowBatch, FlowRecord, HttpRecord, REPORT_PATH};
use palisade_policy::fqdn;
use palisade_policy::policy::Direction;
use palisade_policy::ports::Protocol;
use palisade_policy::verdict::{Action, Reason};
use tokio::sync::Notify;

use crate::client::Link;
use crate::config::Config;
use crate::flowlog::{self, RequestEntry};
use crate::judge::{FlowInfo, Judgement};
use crate::metrics;

/// Records (refused flows) that may wait for the next batch, at most.
pub const MAX_RECORDS: usize = 4096;
/// Distinct allowed flows counted between two batches, at most.
pub const MAX_COUNTS: usize = 4096;
/// How long a batch waits for more records after the first refused flow.
pub const GATHER: Duration = Duration::from_millis(50);
/// How often a batch goes.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// How long posting a batch may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// What allowed flows are counted under: direction, protocol, source address, destination
/// address and port, the allowing policy and the DNS name that allowed it (by the hashes of
/// the policy's id and of the name, so that counting a flow never allocates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CountKey {
    direction: Direction,
    protocol: Protocol,
    src: IpAddr,
    dst: SocketAddr,
    policy: u64,
    name: u64,
}

#[derive(Default)]
struct Pending {
    records: Vec<FlowRecord>,
    counts: HashMap<CountKey, FlowRecord>,
    dropped: u64,
}

/// Where the judge leaves flow records for the controller.
#[derive(Clone)]
pub struct Reporter {
    pending: Arc<Mutex<Pending>>,
    wake: Arc<Notify>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Reporter {
    fn default() -> Self {
        Self {
            pending: Arc::default(),
            wake: Arc::default(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

fn dropped(reason: &'static str, n: u64) {
    if n > 0 {
        ::metrics::counter!(metrics::FLOW_RECORDS_DROPPED, "reason" => reason).increment(n);
    }
}

impl Reporter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts an allowed flow.
    pub fn count(&self, flow: &FlowInfo, j: &Judgement) {
        let allowing = match (&j.verdict, &j.snapshot) {
            (Some(v), Some(s)) => match v.reason {
                Reason::Rule { policy, .. } => s
                    .policy
                    .side(flow.direction)
                    .policies
                    .get(policy as usize)
                    .map(|p| &p.id),
                _ => None,
            },
            _ => None,
        };
        let name = j.verdict.as_ref().and_then(|v| v.name(&flow.as_flow()));
        let key = CountKey {
            direction: flow.direction,
            protocol: flow.protocol,
            src: flow.src.ip(),
            dst: flow.dst,
            policy: allowing.map_or(0, |id| self.hasher.hash_one(id)),
            name: name.map_or(0, |n| self.hasher.hash_one(n)),
        };
        let mut pending = self.lock();
        if let Some(r) = pending.counts.get_mut(&key) {
            r.count += 1;
            return;
        }
        if pending.counts.len() >= MAX_COUNTS {
            pending.dropped += 1;
            drop(pending);
            dropped("queue-full", 1);
            return;
        }
        let record = FlowRecord {
            time: flowlog::now(),
            pod: String::new(),
            direction: flow.direction,
            action: Action::Allow,
            protocol: flow.protocol,
            // Clients' ports differ from one connection to the next.
            src: SocketAddr::new(flow.src.ip(), 0),
            dst: flow.dst,
            service: flow.service.as_deref().map(str::to_owned),
            reason: j
                .verdict
                .as_ref()
                .map_or("no-policy".to_owned(), |v| v.reason.to_string()),
            policies: allowing.map(ToString::to_string).into_iter().collect(),
            http: None,
            count: 1,
            source: None,
            destination: None,
            name: name.map(|n| fqdn::display(n).to_owned()),
        };
        pending.counts.insert(key, record);
    }

    /// Queues the record of a refused (or would-deny) flow or request; `policies` are the
    /// policies that refused it.
    pub fn record(
        &self,
        flow: &FlowInfo,
        action: Action,
        reason: &str,
        policies: Vec<String>,
        request: Option<&RequestEntry<'_>>,
    ) {
        let mut pending = self.lock();
        if pending.records.len() >= MAX_RECORDS {
            pending.dropped += 1;
            drop(pending);
            dropped("queue-full", 1);
            return;
        }
        pending.records.push(FlowRecord {
            time: flowlog::now(),
            pod: String::new(),
            direction: flow.direction,
            action,
            protocol: flow.protocol,
            src: flow.src,
            dst: flow.dst,
            service: flow.service.as_deref().map(str::to_owned),
            reason: reason.to_owned(),
            policies,
            http: request.map(|r| HttpRecord {
                method: r.method.to_owned(),
                path: r.path.to_owned(),
                host: r.host.map(str::to_owned),
                status: r.status,
            }),
            count: 1,
            source: None,
            destination: None,
            // Refused flows were allowed by no name.
            name: None,
        });
        if pending.records.len() == 1 {
            self.wake.notify_one();
        }
    }

    /// Takes what waits, as one batch.
    fn take(&self) -> FlowBatch {
        let mut pending = self.lock();
        let p = std::mem::take(&mut *pending);
        let mut records = p.records;
        records.extend(p.counts.into_values());
        FlowBatch {
            records,
            dropped: p.dropped,
        }
    }

    /// Posts batches to the controller the policy stream is connected to, forever.
    pub async fn run(self, config: Arc<Config>, link: Link) {
        let mut connection = link.subscribe();
        loop {
            let woken = tokio::select! {
                () = tokio::time::sleep(INTERVAL) => false,
                () = self.wake.notified() => true,
            };
            if woken {
                tokio::time::sleep(GATHER).await;
            }
            let waiting = {
                let p = self.lock();
                p.records.len() + p.counts.len()
            };
            if waiting == 0 {
                continue;
            }
            // Without a connection, records wait (bounded) for the next one.
            let Some(conn) = connection.borrow_and_update().clone() else {
                continue;
            };
            let batch = self.take();
            let n = batch.records.len() as u64;
            let result = tokio::time::timeout(POST_TIMEOUT, post(&config, conn, &batch)).await;
            let outcome = match result {
                Ok(Ok(())) => "sent",
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, records = n, "cannot report flows to the controller; dropped them");
                    dropped("send-failed", n);
                    "failed"
                }
                Err(_) => {
                    tracing::warn!(records = n, "reporting flows timed out; dropped them");
                    dropped("send-failed", n);
                    "failed"
                }
            };
            ::metrics::counter!(metrics::FLOW_BATCHES, "result" => outcome).increment(1);
        }
    }
}

/// Why a batch was not taken.
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("cannot read the token {0}: {1}")]
    Token(String, std::io::Error),
    #[error("cannot build the request: {0}")]
    Request(#[from] http::Error),
    #[error("HTTP/2: {0}")]
    Http(#[from] hyper::Error),
    #[error("the controller answered {0}: {1}")]
    Status(StatusCode, String),
}

async fn post(
    config: &Config,
    conn: crate::client::Connection,
    batch: &FlowBatch,
) -> Result<(), PostError> {
    let token = std::fs::read_to_string(&config.token_file)
        .map_err(|e| PostError::Token(config.token_file.display().to_string(), e))?;
    // Serialising our own plain structs cannot fail.
    let body = serde_json::to_vec(batch).unwrap_or_default();
    let request = Request::post(format!("{}{REPORT_PATH}{}", conn.target, config.pod))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.trim()),
        )
        .body(Full::new(Bytes::from(body)))?;
    let mut sender = conn.sender;
    let response = sender.send_request(request).await?;
    let status = response.status();
    if status != StatusCode::OK {
        let text = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(PostError::Status(
            status,
            String::from_utf8_lossy(&text[..text.len().min(512)])
                .trim()
                .to_owned(),
        ));
    }
    Ok(())
}
