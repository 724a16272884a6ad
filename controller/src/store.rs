//! Every pod's compiled policy, versioned. A new cluster state is compiled whole; a pod's
//! version moves only when its policy actually changed, and only its proxy is woken.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use palisade_policy::cluster::Cluster;
use palisade_policy::compile::Compiler;
use tokio::sync::watch;

/// One pod's policy as it goes on the wire: a JSON line, and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The version.
    pub version: u64,
    /// `{"version":..,"policy":..}\n`.
    pub json: Bytes,
}

/// A pod's latest policy line, `None` while the pod is unknown.
pub type Latest = Option<Arc<Line>>;

/// The compiled policies of every pod, and the channels their proxies listen on.
pub struct Store {
    inner: Mutex<Inner>,
}

struct Inner {
    next_version: u64,
    /// The policy without its version, to tell whether it changed.
    bodies: HashMap<String, Bytes>,
    channels: HashMap<String, watch::Sender<Latest>>,
}

impl Default for Store {
    fn default() -> Self {
        // Versions start at the time in milliseconds, so they keep increasing when the
        // controller restarts and proxies see a newer version than the one they hold.
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        Self {
            inner: Mutex::new(Inner {
                next_version: start,
                bodies: HashMap::new(),
                channels: HashMap::new(),
            }),
        }
    }
}

impl Store {
    /// Compiles every pod of `cluster` and publishes the policies that changed. Pods that
    /// left the cluster keep their last policy on the wire (their proxies are fail static).
    /// Returns how many pods' policies changed.
    pub fn update(&self, cluster: &Cluster) -> usize {
        let compiler = Compiler::new(cluster);
        let compiled: Vec<(String, Bytes)> = cluster
            .pods
            .iter()
            .map(|pod| {
                let policy = compiler.compile(pod);
                // A compiled policy is plain data (no maps with non-string keys, no floats):
                // serializing it cannot fail.
                let body = serde_json::to_vec(&policy).expect("a compiled policy serializes");
                (pod.key(), Bytes::from(body))
            })
            .collect();
        let mut inner = self.lock();
        let mut changed = 0;
        for (pod, body) in compiled {
            if inner.bodies.get(&pod) == Some(&body) {
                continue;
            }
            inner.next_version += 1;
            let version = inner.next_version;
            let json = line(version, &body);
            inner.bodies.insert(pod.clone(), body);
            let line = Some(Arc::new(Line { version, json }));
            match inner.channels.get(&pod) {
                Some(tx) => {
                    tx.send_replace(line);
                }
                None => {
                    inner.channels.insert(pod, watch::channel(line).0);
                }
            }
            changed += 1;
        }
        changed
    }

    /// A receiver of the pod's policy lines; the pod may not be known yet.
    pub fn subscribe(&self, pod: &str) -> watch::Receiver<Latest> {
        let mut inner = self.lock();
        inner
            .channels
            .entry(pod.to_owned())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// How many pods have a policy.
    pub fn pods(&self) -> usize {
        self.lock().bodies.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Puts the version in front of an already serialized policy, without parsing it again.
fn line(version: u64, policy: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(policy.len() + 40);
    out.extend_from_slice(format!("{{\"version\":{version},\"policy\":").as_bytes());
    out.extend_from_slice(policy);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::compiled::Versioned;
    use palisade_policy::manifest::{load_str, Report};

    fn cluster(policy: &str) -> Cluster {
        let mut c = Cluster::default();
        let mut r = Report::default();
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: x, labels: {{app: a}}}}\nstatus: {{podIP: 10.0.0.1}}\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: b, namespace: x}}\nstatus: {{podIP: 10.0.0.2}}\n---\n{policy}"
        );
        load_str(&mut c, "test.yaml", &text, &mut r);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        c.finish();
        c
    }

    const DENY_A: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: d, namespace: x}\nspec: {podSelector: {matchLabels: {app: a}}}\n";

    #[test]
    fn only_changed_pods_get_a_new_version() {
        let store = Store::default();
        assert_eq!(store.update(&cluster("")), 2);
        let a = store.subscribe("x/a");
        let b = store.subscribe("x/b");
        let (va, vb) = (
            a.borrow().clone().unwrap().version,
            b.borrow().clone().unwrap().version,
        );
        assert_eq!(store.update(&cluster("")), 0, "same state, no change");
        assert_eq!(store.update(&cluster(DENY_A)), 1, "only x/a is selected");
        let a2 = a.borrow().clone().unwrap();
        assert!(a2.version > va && a2.version > vb);
        assert_eq!(b.borrow().clone().unwrap().version, vb);
        let parsed: Versioned = serde_json::from_slice(&a2.json).unwrap();
        assert_eq!(parsed.version, a2.version);
        assert_eq!(parsed.policy.pod, "x/a");
        assert_eq!(parsed.policy.ingress.policies[0].id.name, "d");
    }

    #[test]
    fn a_pod_can_be_asked_for_before_it_exists() {
        let store = Store::default();
        let rx = store.subscribe("x/a");
        assert!(rx.borrow().is_none());
        store.update(&cluster(""));
        assert_eq!(rx.borrow().clone().unwrap().json.last(), Some(&b'\n'));
    }
}
