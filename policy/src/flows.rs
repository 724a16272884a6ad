//! Flow records: what proxies report to the controller about the flows they judged, how
//! their ends are named (pod, workload, or address), and how readers (`palisade flows`,
//! `rollout status`, `generate`) filter and group them. The proxies, the controller and
//! the CLI share these types, so a record reads the same everywhere.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::cluster::Pod;
use crate::fqdn::{normalize, NamePattern};
use crate::policy::Direction;
use crate::ports::Protocol;
use crate::verdict::Action;

/// Where proxies post their batches: `/v1/flows/{namespace}/{name}`, the reporting pod.
pub const REPORT_PATH: &str = "/v1/flows/";
/// Where the controller serves its window (NDJSON): `/v1/flows?filters`.
pub const READ_PATH: &str = "/v1/flows";

/// One flow (or, for allowed flows, a count of like flows) as a proxy judged it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// When the proxy judged it (the first of a count), RFC 3339.
    pub time: String,
    /// `namespace/name` of the pod whose proxy judged it (the controller sets it from the
    /// token, never from the batch).
    #[serde(default)]
    pub pod: String,
    /// The side of that pod.
    pub direction: Direction,
    /// `allow`, `deny` or `would-deny`.
    pub action: Action,
    /// The protocol.
    pub protocol: Protocol,
    /// The source address and port (port 0 in a count: clients' ports differ).
    pub src: SocketAddr,
    /// The destination address and port (the backend, for a Service).
    pub dst: SocketAddr,
    /// `namespace/name` of the Service the pod asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The reason's kind (`rule`, `no-rule-matched`, `l7-not-inspected`, ...).
    pub reason: String,
    /// The policy that allowed it, or those that isolate the pod and allowed nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// The HTTP request judged, on an inspected connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRecord>,
    /// How many flows this record stands for (allowed flows are counted, not listed).
    #[serde(default = "one")]
    pub count: u64,
    /// The source, as the controller names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Endpoint>,
    /// The destination, as the controller names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Endpoint>,
    /// The DNS name through which a `toFQDNs` rule allowed the connection (egress): the
    /// name the pod resolved to `dst`, without its final dot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn one() -> u64 {
    1
}

/// The HTTP request of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRecord {
    /// The method.
    pub method: String,
    /// The path.
    pub path: String,
    /// The host the request named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The response's status.
    pub status: u16,
}

/// A batch of records, as a proxy posts it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FlowBatch {
    /// The records.
    pub records: Vec<FlowRecord>,
    /// Records the proxy dropped since its last batch (its queue was full).
    #[serde(default)]
    pub dropped: u64,
}

/// One end of a flow as the controller knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// Its workload: [`workload_of`].
    pub workload: String,
}

impl Endpoint {
    /// The end of a flow that `pod` is.
    pub fn of(pod: &Pod) -> Self {
        Self {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            workload: workload_of(pod),
        }
    }

    /// `namespace/pod`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }
}

/// The workload a pod belongs to, for grouping: its `app.kubernetes.io/name`, `app` or
/// `k8s-app` label, else its name without the suffixes controllers add (a ReplicaSet's
/// hash and a pod's random tail, or a StatefulSet's ordinal).
pub fn workload_of(pod: &Pod) -> String {
    for key in ["app.kubernetes.io/name", "app", "k8s-app"] {
        if let Some(v) = pod.labels.get(key) {
            return v.clone();
        }
    }
    let generated = |part: &str, min: usize| {
        part.len() >= min
            && part.len() <= 10
            && part
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
            && part.chars().any(|c| c.is_ascii_digit())
    };
    let mut parts: Vec<&str> = pod.name.split('-').collect();
    // `web-7d9f8c6b5-x2k4q` (Deployment), `web-x2k4q` (DaemonSet, Job), `db-0` (StatefulSet).
    if parts.len() > 1 && parts.last().is_some_and(|p| p.parse::<u32>().is_ok()) {
        parts.pop();
    } else {
        if parts.len() > 1
            && parts
                .last()
                .is_some_and(|p| p.len() == 5 && generated(p, 5))
        {
            parts.pop();
        }
        if parts.len() > 1 && parts.last().is_some_and(|p| generated(p, 8)) {
            parts.pop();
        }
    }
    parts.join("-")
}

impl FlowRecord {
    /// The other end's address, as the pod's policy saw it.
    pub fn peer(&self) -> IpAddr {
        match self.direction {
            Direction::Ingress => self.src.ip(),
            Direction::Egress => self.dst.ip(),
        }
    }

    /// Names an end: `namespace/workload` for a known pod, else the address.
    fn end_name(end: Option<&Endpoint>, addr: SocketAddr) -> String {
        match end {
            Some(e) => format!("{}/{}", e.namespace, e.workload),
            None => addr.ip().to_string(),
        }
    }

    /// What a summary groups this record under.
    pub fn group(&self) -> GroupKey {
        GroupKey {
            source: Self::end_name(self.source.as_ref(), self.src),
            destination: Self::end_name(self.destination.as_ref(), self.dst),
            port: self.dst.port(),
            protocol: self.protocol,
            direction: self.direction,
            action: self.action,
            policies: self.policies.join(","),
            name: self.name.clone().unwrap_or_default(),
        }
    }
}

/// Which records a reader asks for. Every field left out matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Flows from or to a pod of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Flows from or to this pod (`namespace/name`, or a name in `namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// `allow`, `deny`, `would-deny`, or `denied` (both refusals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Flows whose record names this policy (`namespace/name`, or a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Flows to this destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Flows a `toFQDNs` rule allowed through a DNS name this `matchPattern` matches (a
    /// name, or `*.example.com`, `**.example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The verdicts a filter may name.
pub const VERDICTS: [&str; 4] = ["allow", "deny", "would-deny", "denied"];

impl Filter {
    /// Whether `record` is one asked for.
    pub fn matches(&self, record: &FlowRecord) -> bool {
        let ends = [record.source.as_ref(), record.destination.as_ref()];
        if let Some(ns) = &self.namespace {
            if !ends.iter().flatten().any(|e| &e.namespace == ns) {
                return false;
            }
        }
        if let Some(pod) = &self.pod {
            let hit = |e: &&Endpoint| match pod.split_once('/') {
                Some((ns, name)) => e.namespace == ns && e.pod == name,
                None => {
                    e.pod == *pod && self.namespace.as_ref().is_none_or(|ns| &e.namespace == ns)
                }
            };
            if !ends.iter().flatten().any(hit) {
                return false;
            }
        }
        if let Some(v) = &self.verdict {
            let ok = match v.as_str() {
                "denied" => record.action != Action::Allow,
                v => record.action.as_str() == v,
            };
            if !ok {
                return false;
            }
        }
        if let Some(p) = &self.policy {
            let hit = |name: &String| match p.contains('/') {
                true => name == p,
                false => name.rsplit_once('/').is_some_and(|(_, n)| n == p),
            };
            if !record.policies.iter().any(hit) {
                return false;
            }
        }
        if let Some(pattern) = &self.name {
            // Checked when the filter was set: a pattern that does not parse matches nothing.
            let pattern = NamePattern::pattern(pattern);
            let hit = |name: &String| pattern.as_ref().is_ok_and(|p| p.matches(&normalize(name)));
            if !record.name.as_ref().is_some_and(hit) {
                return false;
            }
        }
        self.port.is_none_or(|port| record.dst.port() == port)
    }

    /// The filter as query parameters (`key=value&...`, values percent-encoded).
    pub fn query(&self) -> String {
        let mut out = Vec::new();
        let mut add = |k: &str, v: &str| out.push(format!("{k}={}", encode(v)));
        if let Some(v) = &self.namespace {
            add("namespace", v);
        }
        if let Some(v) = &self.pod {
            add("pod", v);
        }
        if let Some(v) = &self.verdict {
            add("verdict", v);
        }
        if let Some(v) = &self.policy {
            add("policy", v);
        }
        if let Some(v) = self.port {
            add("port", &v.to_string());
        }
        if let Some(v) = &self.name {
            add("name", v);
        }
        out.join("&")
    }

    /// Sets the field a query parameter names; an error says which parameter is wrong.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        let value = value.to_owned();
        match key {
            "namespace" => self.namespace = Some(value),
            "pod" => self.pod = Some(value),
            "verdict" if VERDICTS.contains(&value.as_str()) => self.verdict = Some(value),
            "verdict" => {
                return Err(format!(
                    "verdict {value:?} is not one of {}",
                    VERDICTS.join(", ")
                ))
            }
            "policy" => self.policy = Some(value),
            "name" => {
                NamePattern::pattern(&value).map_err(|e| format!("name {value:?}: {e}"))?;
                self.name = Some(value)
            }
            "port" => {
                self.port = Some(
                    value
                        .parse()
                        .map_err(|_| format!("port {value:?} is not a port number"))?,
                )
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Percent-encodes a query value (everything but unreserved characters and `/`).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded query value (`+` is a space); `None` when it is malformed.
pub fn decode(value: &str) -> Option<String> {
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// What a summary line groups flows by: source and destination (workload or address),
/// port, protocol, side, verdict and policies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupKey {
    /// `namespace/workload`, or the address.
    pub source: String,
    /// `namespace/workload`, or the address.
    pub destination: String,
    /// The destination port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// The side that judged.
    pub direction: Direction,
    /// The verdict.
    pub action: Action,
    /// The policies, comma-separated.
    pub policies: String,
    /// The DNS name that allowed the flows (empty: none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// One line of a summary: a group, how many flows it holds, and its first and last
/// records' times and pods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// What the flows share.
    #[serde(flatten)]
    pub key: GroupKey,
    /// How many flows.
    pub count: u64,
    /// The first record's time.
    pub first: String,
    /// The last record's time.
    pub last: String,
    /// `namespace/name` of a source pod and a destination pod seen in the group, when they
    /// are pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// See `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// Groups records (in the order they came) by [`FlowRecord::group`].
pub fn summarize<'a>(records: impl IntoIterator<Item = &'a FlowRecord>) -> Vec<Group> {
    let mut groups: BTreeMap<GroupKey, Group> = BTreeMap::new();
    for r in records {
        let key = r.group();
        let g = groups.entry(key.clone()).or_insert_with(|| Group {
            key,
            count: 0,
            first: r.time.clone(),
            last: r.time.clone(),
            from: r.source.as_ref().map(Endpoint::key),
            to: r.destination.as_ref().map(Endpoint::key),
        });
        g.count += r.count;
        g.last.clone_from(&r.time);
    }
    groups.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: Default::default(),
            ips: Vec::new(),
            host_ips: Vec::new(),
            host_network: false,
            ports: Vec::new(),
        }
    }

    fn record(from: &Pod, to: &Pod, port: u16, action: Action) -> FlowRecord {
        FlowRecord {
            time: "2026-01-01T00:00:00.000Z".into(),
            pod: from.key(),
            direction: Direction::Egress,
            action,
            protocol: Protocol::Tcp,
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: SocketAddr::new("10.0.0.2".parse().unwrap(), port),
            service: None,
            reason: "no-rule-matched".into(),
            policies: vec![format!("{}/default-deny", from.namespace)],
            http: None,
            count: 1,
            source: Some(Endpoint::of(from)),
            destination: Some(Endpoint::of(to)),
            name: None,
        }
    }

    #[test]
    fn workloads_are_named_by_label_or_by_name_without_generated_suffixes() {
        assert_eq!(workload_of(&pod("a", "x-1", &[("app", "web")])), "web");
        assert_eq!(workload_of(&pod("a", "web-7d9f8c6b5-x2k4q", &[])), "web");
        assert_eq!(
            workload_of(&pod("a", "node-agent-x2k4q", &[])),
            "node-agent"
        );
        assert_eq!(workload_of(&pod("a", "db-0", &[])), "db");
        assert_eq!(workload_of(&pod("a", "frontend", &[])), "frontend");
        assert_eq!(workload_of(&pod("a", "my-api", &[])), "my-api");
    }

    #[test]
    fn filters_match_either_end_and_each_field() {
        let web = pod("shop", "web-1", &[("app", "web")]);
        let db = pod("data", "db-0", &[]);
        let r = record(&web, &db, 5432, Action::WouldDeny);
        let f = |q: &[(&str, &str)]| {
            let mut f = Filter::default();
            for (k, v) in q {
                assert!(f.set(k, v).unwrap(), "{k}");
            }
            f.matches(&r)
        };
        assert!(f(&[]));
        assert!(f(&[("namespace", "data")]) && f(&[("namespace", "shop")]));
        assert!(!f(&[("namespace", "other")]));
        assert!(f(&[("pod", "data/db-0")]) && f(&[("pod", "web-1")]));
        assert!(!f(&[("pod", "shop/db-0")]));
        assert!(!f(&[("namespace", "shop"), ("pod", "db-0")]));
        assert!(f(&[("verdict", "would-deny")]) && f(&[("verdict", "denied")]));
        assert!(!f(&[("verdict", "allow")]) && !f(&[("verdict", "deny")]));
        assert!(f(&[("policy", "default-deny")]) && f(&[("policy", "shop/default-deny")]));
        assert!(!f(&[("policy", "data/default-deny")]));
        assert!(f(&[("port", "5432")]) && !f(&[("port", "80")]));
        // Only flows a DNS name allowed have a name.
        assert!(!f(&[("name", "**.example.com")]));
        let mut named = r.clone();
        named.name = Some("api.example.com".into());
        let g = |q: &str| {
            let mut f = Filter::default();
            f.set("name", q).unwrap();
            f.matches(&named)
        };
        assert!(g("api.example.com") && g("API.example.com.") && g("*.example.com"));
        assert!(g("**.com") && !g("example.com") && !g("*.github.com"));
        let mut bad = Filter::default();
        assert!(bad.set("name", "a..b").unwrap_err().contains("a..b"));
        assert!(bad.set("verdict", "maybe").unwrap_err().contains("maybe"));
        assert!(bad.set("port", "http").unwrap_err().contains("http"));
        assert!(!bad.set("colour", "red").unwrap());
    }

    #[test]
    fn a_filter_survives_its_query() {
        let f = Filter {
            namespace: Some("shop".into()),
            pod: Some("shop/web 1".into()),
            verdict: Some("would-deny".into()),
            policy: Some("a&b".into()),
            port: Some(80),
            name: Some("**.example.com".into()),
        };
        let mut back = Filter::default();
        for pair in f.query().split('&') {
            let (k, v) = pair.split_once('=').unwrap();
            back.set(k, &decode(v).unwrap()).unwrap();
        }
        assert_eq!(back, f);
    }

    #[test]
    fn summaries_group_replicas_of_a_workload_and_add_counts() {
        let web1 = pod("shop", "web-1", &[("app", "web")]);
        let web2 = pod("shop", "web-2", &[("app", "web")]);
        let db = pod("data", "db-0", &[]);
        let mut allowed = record(&web2, &db, 5432, Action::Allow);
        allowed.count = 7;
        let records = [
            record(&web1, &db, 5432, Action::WouldDeny),
            record(&web2, &db, 5432, Action::WouldDeny),
            allowed,
        ];
        let groups = summarize(&records);
        assert_eq!(groups.len(), 2, "{groups:#?}");
        let denied = groups
            .iter()
            .find(|g| g.key.action == Action::WouldDeny)
            .unwrap();
        assert_eq!(denied.count, 2);
        assert_eq!(denied.key.source, "shop/web");
        assert_eq!(denied.key.destination, "data/db");
        assert_eq!(denied.from.as_deref(), Some("shop/web-1"));
        let allowed = groups
            .iter()
            .find(|g| g.key.action == Action::Allow)
            .unwrap();
        assert_eq!(allowed.count, 7);
    }
}
