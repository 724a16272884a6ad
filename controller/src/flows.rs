//! Recent flows: proxies post batches of flow records (on the policy stream's port, with
//! their pod's token, for their own pod only); the controller names each record's ends
//! (pod and workload, from the pods it knows) and keeps the most recent ones in a window
//! bounded by count and by age. The window is served as NDJSON on a listener of its own,
//! which is meant for loopback (`kubectl port-forward` reaches it, as `hubble observe`
//! reaches Hubble): `GET /v1/flows?namespace=&pod=&verdict=&policy=&port=&since=` lists
//! what is kept, `&follow=true` then streams new records as they come, `&summary=true`
//! groups them by source and destination workload, port, verdict and policy.
//!
//! Each replica keeps only its own proxies' flows: readers merge every replica's.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use palisade_policy::cluster::Pod;
use palisade_policy::flows::{
    decode, summarize, Endpoint, Filter, FlowBatch, FlowRecord, READ_PATH,
};
use palisade_policy::policy::Direction;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use crate::metrics;

/// How many records the window keeps by default.
pub const DEFAULT_RECORDS: usize = 20_000;
/// How long the window keeps a record by default.
pub const DEFAULT_AGE: Duration = Duration::from_secs(3600);
/// How many new records a follower may fall behind before it misses some.
const FOLLOW_QUEUE: usize = 4096;
/// The largest batch a proxy may post.
pub const MAX_BATCH_BYTES: usize = 8 << 20;

/// The window's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Records kept, at most (the oldest go first).
    pub records: usize,
    /// How long a record is kept.
    pub age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            records: DEFAULT_RECORDS,
            age: DEFAULT_AGE,
        }
    }
}

/// Every pod's addresses, to name the ends of a flow.
#[derive(Default)]
pub struct Directory {
    inner: RwLock<DirectoryInner>,
}

#[derive(Default)]
struct DirectoryInner {
    by_ip: HashMap<IpAddr, Arc<Endpoint>>,
    by_pod: HashMap<String, (Arc<Endpoint>, Vec<IpAddr>)>,
}

impl Directory {
    /// Records a pod as it is now, or forgets it (`None`).
    pub fn update(&self, key: &str, pod: Option<&Pod>) {
        let mut d = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some((_, ips)) = d.by_pod.remove(key) {
            for ip in ips {
                if d.by_ip.get(&ip).is_some_and(|e| e.key() == key) {
                    d.by_ip.remove(&ip);
                }
            }
        }
        let Some(pod) = pod else { return };
        let end = Arc::new(Endpoint::of(pod));
        // A host-network pod's addresses are its node's, shared by many pods.
        let ips = if pod.host_network {
            Vec::new()
        } else {
            pod.ips.clone()
        };
        for ip in &ips {
            d.by_ip.insert(*ip, end.clone());
        }
        d.by_pod.insert(key.to_owned(), (end, ips));
    }

    fn by_ip(&self, ip: IpAddr) -> Option<Endpoint> {
        let d = self.inner.read().unwrap_or_else(|e| e.into_inner());
        d.by_ip.get(&ip.to_canonical()).map(|e| (**e).clone())
    }

    fn by_pod(&self, key: &str) -> Option<Endpoint> {
        let d = self.inner.read().unwrap_or_else(|e| e.into_inner());
        d.by_pod.get(key).map(|(e, _)| (**e).clone())
    }
}

struct Stored {
    at: SystemTime,
    record: Arc<FlowRecord>,
    line: Bytes,
}

#[derive(Default)]
struct Kept {
    records: VecDeque<Stored>,
    bytes: usize,
}

/// The most recent flow records of this replica's proxies.
pub struct Window {
    limits: Limits,
    kept: Mutex<Kept>,
    new: broadcast::Sender<(Arc<FlowRecord>, Bytes)>,
}

fn line_of(record: &FlowRecord) -> Bytes {
    // Serialising our own plain structs cannot fail.
    let mut line = serde_json::to_vec(record).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// What one stored record costs, roughly: its line and its parsed form.
fn cost(line: &Bytes) -> usize {
    2 * line.len() + std::mem::size_of::<FlowRecord>() + std::mem::size_of::<Stored>()
}

impl Window {
    /// An empty window.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            kept: Mutex::default(),
            new: broadcast::channel(FOLLOW_QUEUE).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a batch from the proxy of `pod` (as its token proved), naming each record's
    /// ends; returns how many records were kept.
    pub fn add(
        &self,
        pod: &str,
        batch: FlowBatch,
        directory: &Directory,
        now: SystemTime,
    ) -> usize {
        if batch.dropped > 0 {
            ::metrics::counter!(metrics::FLOW_RECORDS, "result" => "dropped-by-proxy")
                .increment(batch.dropped);
        }
        let (ns, name) = pod.split_once('/').unwrap_or(("", pod));
        let own = directory.by_pod(pod).unwrap_or_else(|| Endpoint {
            namespace: ns.to_owned(),
            pod: name.to_owned(),
            workload: name.to_owned(),
        });
        let n = batch.records.len();
        let stored: Vec<Stored> = batch
            .records
            .into_iter()
            .map(|mut r| {
                pod.clone_into(&mut r.pod);
                let other = directory.by_ip(r.peer());
                (r.source, r.destination) = match r.direction {
                    Direction::Egress => (Some(own.clone()), other),
                    Direction::Ingress => (other, Some(own.clone())),
                };
                let line = line_of(&r);
                Stored {
                    at: now,
                    record: Arc::new(r),
                    line,
                }
            })
            .collect();
        let mut kept = self.lock();
        for s in stored {
            // No follower is not an error.
            let _ = self.new.send((s.record.clone(), s.line.clone()));
            kept.bytes += cost(&s.line);
            kept.records.push_back(s);
        }
        self.evict(&mut kept, now);
        ::metrics::counter!(metrics::FLOW_RECORDS, "result" => "kept").increment(n as u64);
        n
    }

    /// Drops what is too old, then the oldest past the count.
    fn evict(&self, kept: &mut Kept, now: SystemTime) {
        let evicted = |kept: &mut Kept, reason: &'static str| {
            let Some(s) = kept.records.pop_front() else {
                return;
            };
            kept.bytes -= cost(&s.line);
            ::metrics::counter!(metrics::FLOW_EVICTED, "reason" => reason).increment(1);
        };
        while kept
            .records
            .front()
            .is_some_and(|s| now.duration_since(s.at).unwrap_or_default() > self.limits.age)
        {
            evicted(kept, "age");
        }
        while kept.records.len() > self.limits.records {
            evicted(kept, "count");
        }
        ::metrics::gauge!(metrics::FLOW_WINDOW_RECORDS).set(kept.records.len() as f64);
        ::metrics::gauge!(metrics::FLOW_WINDOW_BYTES).set(kept.bytes as f64);
    }

    /// The kept records `filter` asks for, received since `since` ago, oldest first.
    pub fn recent(
        &self,
        filter: &Filter,
        since: Option<Duration>,
        now: SystemTime,
    ) -> Vec<(Arc<FlowRecord>, Bytes)> {
        let mut kept = self.lock();
        self.evict(&mut kept, now);
        kept.records
            .iter()
            .filter(|s| since.is_none_or(|d| now.duration_since(s.at).unwrap_or_default() <= d))
            .filter(|s| filter.matches(&s.record))
            .map(|s| (s.record.clone(), s.line.clone()))
            .collect()
    }

    /// How many records are kept, and roughly how many bytes they take.
    pub fn size(&self) -> (usize, usize) {
        let kept = self.lock();
        (kept.records.len(), kept.bytes)
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text)).boxed());
    *r.status_mut() = status;
    r
}

/// What a read asks for.
#[derive(Debug, Default)]
struct Query {
    filter: Filter,
    since: Option<Duration>,
    follow: bool,
    summary: bool,
}

fn yes(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("{key}={value:?}: expected true or false")),
    }
}

fn query(text: &str) -> Result<Query, String> {
    let mut q = Query::default();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value).ok_or_else(|| format!("{key}: malformed value"))?;
        if q.filter.set(key, &value)? {
            continue;
        }
        match key {
            "since" => {
                q.since = Some(
                    humantime::parse_duration(&value)
                        .map_err(|e| format!("since={value:?}: {e} (e.g. 5m)"))?,
                )
            }
            "follow" => q.follow = yes(key, &value)?,
            "summary" => q.summary = yes(key, &value)?,
            _ => {
                return Err(format!(
                    "unknown parameter {key:?}: use namespace, pod, verdict, policy, port, since, follow, summary"
                ))
            }
        }
    }
    if q.follow && q.summary {
        return Err("follow and summary do not go together".into());
    }
    Ok(q)
}

fn ndjson(body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

fn read(req: &Request<Incoming>, window: &Arc<Window>) -> Response<Body> {
    if req.uri().path() != READ_PATH {
        return plain(
            StatusCode::NOT_FOUND,
            format!("not found: ask for {READ_PATH}?namespace=&pod=&verdict=&policy=&port=&since=&follow=&summary=\n"),
        );
    }
    if req.method() != http::Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    let q = match query(req.uri().query().unwrap_or_default()) {
        Ok(q) => q,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // Subscribe before reading the window, so nothing falls between the two.
    let new = window.new.subscribe();
    let recent = window.recent(&q.filter, q.since, SystemTime::now());
    if q.summary {
        let groups = summarize(recent.iter().map(|(r, _)| &**r));
        let mut text = Vec::new();
        for g in groups {
            // Serialising our own plain structs cannot fail.
            text.extend(serde_json::to_vec(&g).unwrap_or_default());
            text.push(b'\n');
        }
        return ndjson(Full::new(Bytes::from(text)).boxed());
    }
    let mut text = Vec::new();
    for (_, line) in &recent {
        text.extend_from_slice(line);
    }
    if !q.follow {
        return ndjson(Full::new(Bytes::from(text)).boxed());
    }
    let first = futures_util::stream::once(async move { Ok(Frame::data(Bytes::from(text))) });
    let rest = futures_util::stream::unfold((new, q.filter), |(mut rx, filter)| async move {
        loop {
            match rx.recv().await {
                Ok((r, line)) if filter.matches(&r) => {
                    return Some((Ok::<_, Infallible>(Frame::data(line)), (rx, filter)))
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    ::metrics::counter!(metrics::FLOW_FOLLOW_MISSED).increment(n);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    ndjson(StreamBody::new(futures_util::StreamExt::chain(first, rest)).boxed())
}

/// Serves the window (see the module's documentation) forever.
pub async fn serve(listener: TcpListener, window: Arc<Window>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let window = window.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let r = read(&req, &window);
            async move { Ok::<_, Infallible>(r) }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::ports::Protocol;
    use palisade_policy::verdict::Action;

    fn record(dst: &str) -> FlowRecord {
        FlowRecord {
            time: "t".into(),
            pod: "forged/by-the-proxy".into(),
            direction: Direction::Egress,
            action: Action::Deny,
            protocol: Protocol::Tcp,
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: dst.parse().unwrap(),
            service: None,
            reason: "no-rule-matched".into(),
            policies: vec![],
            http: None,
            count: 1,
            source: None,
            destination: None,
            name: None,
        }
    }

    fn batch(dsts: &[&str]) -> FlowBatch {
        FlowBatch {
            records: dsts.iter().map(|d| record(d)).collect(),
            dropped: 0,
        }
    }

    fn pod(ns: &str, name: &str, ip: &str) -> Pod {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\n\
             spec: {{containers: [{{name: c}}]}}\nstatus: {{podIP: {ip}}}\n"
        );
        let mut cluster = palisade_policy::cluster::Cluster::default();
        let mut report = palisade_policy::manifest::Report::default();
        palisade_policy::manifest::load_str(&mut cluster, "pod.yaml", &text, &mut report);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        cluster.pods.into_iter().next().unwrap()
    }

    #[test]
    fn the_window_keeps_the_newest_records_within_its_count_and_age() {
        let window = Window::new(Limits {
            records: 3,
            age: Duration::from_secs(60),
        });
        let directory = Directory::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let all = Filter::default();
        window.add("a/x", batch(&["10.0.0.2:1", "10.0.0.2:2"]), &directory, t0);
        window.add(
            "a/x",
            batch(&["10.0.0.2:3", "10.0.0.2:4"]),
            &directory,
            t0 + Duration::from_secs(30),
        );
        let ports = |since, now| -> Vec<u16> {
            window
                .recent(&all, since, now)
                .iter()
                .map(|(r, _)| r.dst.port())
                .collect()
        };
        let now = t0 + Duration::from_secs(31);
        assert_eq!(
            ports(None, now),
            vec![2, 3, 4],
            "the oldest goes past the count"
        );
        assert_eq!(window.size().0, 3);
        assert!(window.size().1 > 0, "the bytes are counted");
        assert_eq!(
            ports(Some(Duration::from_secs(5)), now),
            vec![3, 4],
            "since"
        );
        // Past the age of the first batch only its records go; past both, all do.
        assert_eq!(ports(None, t0 + Duration::from_secs(61)), vec![3, 4]);
        assert_eq!(ports(None, t0 + Duration::from_secs(91)), Vec::<u16>::new());
        assert_eq!(window.size(), (0, 0), "memory is given back");
    }

    #[test]
    fn records_name_their_ends_and_the_reporting_pod_from_the_token_not_the_batch() {
        let window = Window::new(Limits::default());
        let directory = Directory::default();
        let web = pod("shop", "web-1", "10.0.0.1");
        directory.update("shop/web-1", Some(&web));
        directory.update("data/db-0", Some(&pod("data", "db-0", "10.0.0.2")));
        let now = SystemTime::now();
        window.add(
            "shop/web-1",
            batch(&["10.0.0.2:5432", "192.0.2.9:443"]),
            &directory,
            now,
        );
        let got = window.recent(&Filter::default(), None, now);
        let (to_db, outside) = (&got[0].0, &got[1].0);
        assert_eq!(to_db.pod, "shop/web-1");
        assert_eq!(to_db.source.as_ref().unwrap().workload, "web-1");
        assert_eq!(to_db.destination.as_ref().unwrap().key(), "data/db-0");
        assert_eq!(
            outside.destination, None,
            "an address no pod has stays an address"
        );
        // A pod that is gone no longer names its address.
        directory.update("data/db-0", None);
        window.add("shop/web-1", batch(&["10.0.0.2:5432"]), &directory, now);
        let got = window.recent(&Filter::default(), None, now);
        assert_eq!(got[2].0.destination, None);
        // Each record is kept with its NDJSON line.
        let line: FlowRecord = serde_json::from_slice(&got[0].1).unwrap();
        assert_eq!(&line, &*got[0].0);
    }

    #[test]
    fn read_queries_are_checked() {
        assert!(query("namespace=shop&since=5m&follow=true").is_ok());
        assert!(query("verdict=maybe").unwrap_err().contains("maybe"));
        assert!(query("since=soon").unwrap_err().contains("since"));
        assert!(query("colour=red").unwrap_err().contains("colour"));
        assert!(query("follow&summary").unwrap_err().contains("together"));
    }
}
