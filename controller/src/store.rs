//! What the streams serve: every pod's compiled policy, the address sets, named-port maps
//! and Services they share, and a version. The compile loop publishes each batch of
//! changes here; only the pods whose policy, or a set or map their policy names, changed
//! are woken (every pod when a Service changed), and each of their streams works out what
//! to send from what it sent before.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use palisade_policy::compile::{Changes, Compiler};
use palisade_policy::compiled::{ById, IpSet, MapId, NamedPortMap, PodPolicy, SetId};
use palisade_policy::wire::{Sent, ServicePorts, Update};
use tokio::sync::watch;

/// How many Service changes are kept for streams that are behind; a stream further behind
/// starts again from a resync.
const SERVICE_LOG: usize = 4096;

/// How many versions keep the time their changes reached the controller (a stream further
/// behind records no push latency).
const RECEIVED_LOG: usize = 256;

/// The compiled policies of every pod, and the channels their streams wait on.
pub struct Store {
    inner: RwLock<Published>,
    /// Every pod's addresses, to name the ends of reported flows.
    pub directory: crate::flows::Directory,
}

struct Published {
    version: u64,
    /// Whether the source has read everything once: until then nothing is served, so that
    /// no proxy gets a policy compiled from half the cluster.
    ready: bool,
    pods: HashMap<String, Arc<PodPolicy<ById>>>,
    sets: HashMap<SetId, Arc<IpSet>>,
    maps: HashMap<MapId, Arc<NamedPortMap>>,
    /// The pods whose policy names each set and map.
    set_users: HashMap<SetId, HashSet<String>>,
    map_users: HashMap<MapId, HashSet<String>>,
    services: BTreeMap<String, Arc<ServicePorts>>,
    /// Services changed, with the version that changed them, oldest first.
    service_log: VecDeque<(u64, String)>,
    /// Streams that saw a version before this one have missed Service changes.
    service_log_since: u64,
    channels: HashMap<String, watch::Sender<u64>>,
    /// When the changes behind the latest versions reached the controller, newest last.
    received: VecDeque<(u64, Instant)>,
}

/// Where a stream is: what it sent, and the version whose Services it has.
#[derive(Default)]
pub struct Cursor {
    sent: Sent,
    services_at: Option<u64>,
}

impl Cursor {
    /// Whether the stream has sent its first message (later ones are pushes of changes).
    pub fn started(&self) -> bool {
        self.services_at.is_some()
    }
}

/// What one publication did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Publication {
    /// Pods whose policy body changed.
    pub policies: usize,
    /// Pods woken (their body, a set or map they name, or the Services changed).
    pub woken: usize,
}

impl Default for Store {
    fn default() -> Self {
        // Versions start at the time in milliseconds, so they keep increasing when the
        // controller restarts and proxies see a newer version than the one they hold.
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        Self {
            inner: RwLock::new(Published {
                version: start,
                ready: false,
                pods: HashMap::new(),
                sets: HashMap::new(),
                maps: HashMap::new(),
                set_users: HashMap::new(),
                map_users: HashMap::new(),
                services: BTreeMap::new(),
                service_log: VecDeque::new(),
                service_log_since: start,
                channels: HashMap::new(),
                received: VecDeque::new(),
            }),
            directory: crate::flows::Directory::default(),
        }
    }
}

fn index(users: &mut HashMap<u32, HashSet<String>>, ids: &[u32], pod: &str, add: bool) {
    for id in ids {
        if add {
            users.entry(*id).or_default().insert(pod.to_owned());
        } else if let Some(u) = users.get_mut(id) {
            u.remove(pod);
            if u.is_empty() {
                users.remove(id);
            }
        }
    }
}

impl Store {
    /// Publishes what a batch changed, as the compiler now has it. The pods' policies are
    /// compiled before the lock is taken.
    /// `received` is when the first change of the batch reached the controller.
    pub fn publish(
        &self,
        compiler: &Compiler,
        changes: &Changes,
        received: Instant,
    ) -> Publication {
        for key in &changes.pods {
            self.directory.update(key, compiler.pod(key));
        }
        let bodies: Vec<(String, Option<PodPolicy<ById>>)> = changes
            .pods
            .iter()
            .map(|k| (k.clone(), compiler.pod(k).map(|p| compiler.body(p))))
            .collect();
        let mut inner = self.write();
        let p = &mut *inner;
        p.version += 1;
        let version = p.version;
        p.received.push_back((version, received));
        if p.received.len() > RECEIVED_LOG {
            p.received.pop_front();
        }
        let mut woken: HashSet<String> = HashSet::new();
        let mut policies = 0;
        for (pod, body) in bodies {
            let old = p.pods.get(&pod);
            if old.map(|b| &**b) == body.as_ref() {
                continue;
            }
            policies += 1;
            if let Some(old) = p.pods.remove(&pod) {
                index(&mut p.set_users, &old.sets(), &pod, false);
                index(&mut p.map_users, &old.maps(), &pod, false);
            }
            if let Some(body) = body {
                index(&mut p.set_users, &body.sets(), &pod, true);
                index(&mut p.map_users, &body.maps(), &pod, true);
                p.pods.insert(pod.clone(), Arc::new(body));
            }
            woken.insert(pod);
        }
        for id in &changes.sets {
            if let Some(set) = compiler.set(*id) {
                p.sets.insert(*id, set.clone());
                woken.extend(p.set_users.get(id).into_iter().flatten().cloned());
            }
        }
        for id in &changes.dropped_sets {
            p.sets.remove(id);
        }
        for id in &changes.maps {
            if let Some(map) = compiler.map(*id) {
                p.maps.insert(*id, map.clone());
                woken.extend(p.map_users.get(id).into_iter().flatten().cloned());
            }
        }
        for id in &changes.dropped_maps {
            p.maps.remove(id);
        }
        if !changes.services.is_empty() {
            for key in &changes.services {
                match compiler.service(key) {
                    Some(e) => p
                        .services
                        .insert(key.clone(), Arc::new(ServicePorts::new(e))),
                    None => p.services.remove(key),
                };
                p.service_log.push_back((version, key.clone()));
            }
            while p.service_log.len() > SERVICE_LOG {
                if let Some((v, _)) = p.service_log.pop_front() {
                    p.service_log_since = v;
                }
            }
            woken.extend(p.pods.keys().cloned());
        }
        let woken_count = woken.len();
        for pod in woken {
            if let Some(tx) = p.channels.get(&pod) {
                tx.send_replace(version);
            }
        }
        // Channels nobody listens to, of pods that are gone, go too.
        p.channels
            .retain(|pod, tx| tx.receiver_count() > 0 || p.pods.contains_key(pod));
        Publication {
            policies,
            woken: woken_count,
        }
    }

    /// Starts serving: the source has read everything once.
    pub fn set_ready(&self) {
        let mut inner = self.write();
        inner.ready = true;
        let version = inner.version;
        for tx in inner.channels.values() {
            tx.send_replace(version);
        }
    }

    /// Whether the source has read everything once.
    pub fn ready(&self) -> bool {
        self.read().ready
    }

    /// A receiver woken whenever the pod's stream may have something to send; the pod may
    /// not be known yet.
    pub fn subscribe(&self, pod: &str) -> watch::Receiver<u64> {
        let mut inner = self.write();
        let version = inner.version;
        inner
            .channels
            .entry(pod.to_owned())
            .or_insert_with(|| watch::channel(version).0)
            .subscribe()
    }

    /// What a stream must send next to bring its proxy up to date; `None` when there is
    /// nothing (or nothing yet: the pod is unknown, or the source is not read yet).
    pub fn next_update(&self, pod: &str, cursor: &mut Cursor) -> Option<Update> {
        let (version, body, sets, maps, services) = {
            let p = self.read();
            if !p.ready {
                return None;
            }
            let body = p.pods.get(pod)?.clone();
            let services_changed = |since: u64| {
                let mut keys: Vec<&String> = p
                    .service_log
                    .iter()
                    .rev()
                    .take_while(|(v, _)| *v > since)
                    .map(|(_, k)| k)
                    .collect();
                keys.sort();
                keys.dedup();
                keys.into_iter()
                    .map(|k| (k.clone(), p.services.get(k).cloned()))
                    .collect::<Vec<_>>()
            };
            let services = match cursor.services_at {
                Some(at) if at >= p.service_log_since => services_changed(at),
                // First message, or too far behind to catch up: everything again.
                _ => {
                    cursor.sent = Sent::default();
                    p.services
                        .iter()
                        .map(|(k, e)| (k.clone(), Some(e.clone())))
                        .collect()
                }
            };
            cursor.services_at = Some(p.version);
            let sets: HashMap<SetId, Arc<IpSet>> = body
                .sets()
                .into_iter()
                .filter_map(|id| Some((id, p.sets.get(&id)?.clone())))
                .collect();
            let maps: HashMap<MapId, Arc<NamedPortMap>> = body
                .maps()
                .into_iter()
                .filter_map(|id| Some((id, p.maps.get(&id)?.clone())))
                .collect();
            (p.version, body, sets, maps, services)
        };
        cursor.sent.next(
            version,
            &body,
            |id| sets.get(&id).cloned(),
            |id| maps.get(&id).cloned(),
            services,
        )
    }

    /// When the changes behind `version` reached the controller, if it is recent.
    pub fn received(&self, version: u64) -> Option<Instant> {
        let p = self.read();
        let i = p.received.partition_point(|(v, _)| *v < version);
        p.received
            .get(i)
            .filter(|(v, _)| *v == version)
            .map(|(_, t)| *t)
    }

    /// How many pods have a policy.
    pub fn pods(&self) -> usize {
        self.read().pods.len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Published> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Published> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::cluster::Cluster;
    use palisade_policy::manifest::{load_str, Report};
    use palisade_policy::wire::Held;

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

    fn load(compiler: &mut Compiler, cluster: &Cluster) -> Changes {
        for (_, o) in cluster.objects() {
            compiler.apply(o);
        }
        compiler.take_changes()
    }

    #[test]
    fn only_changed_pods_are_woken_and_get_a_new_version() {
        let store = Store::default();
        let mut compiler = Compiler::default();
        let changes = load(&mut compiler, &cluster(""));
        assert_eq!(
            store.publish(&compiler, &changes, Instant::now()).policies,
            2
        );
        let mut a = store.subscribe("x/a");
        let mut b = store.subscribe("x/b");
        assert!(
            store.next_update("x/a", &mut Cursor::default()).is_none(),
            "nothing is served before the source is read"
        );
        store.set_ready();
        let (mut ca, mut cb) = (Cursor::default(), Cursor::default());
        let (mut ha, mut hb) = (Held::default(), Held::default());
        let first = store.next_update("x/a", &mut ca).unwrap();
        assert!(first.resync);
        let va = ha.apply(first).unwrap().unwrap().version;
        hb.apply(store.next_update("x/b", &mut cb).unwrap())
            .unwrap();
        assert!(store.next_update("x/a", &mut ca).is_none(), "nothing new");
        a.borrow_and_update();
        b.borrow_and_update();

        let changes = load(&mut compiler, &cluster(DENY_A));
        assert_eq!(
            store.publish(&compiler, &changes, Instant::now()).policies,
            1,
            "only x/a is selected"
        );
        assert!(a.has_changed().unwrap());
        assert!(!b.has_changed().unwrap(), "x/b is not woken");
        let update = store.next_update("x/a", &mut ca).unwrap();
        assert!(!update.resync);
        let got = ha.apply(update).unwrap().unwrap();
        assert!(got.version > va);
        assert_eq!(got.policy.ingress.policies[0].id.name, "d");
        assert!(store.next_update("x/b", &mut cb).is_none());
    }

    #[test]
    fn a_pod_can_be_asked_for_before_it_exists() {
        let store = Store::default();
        store.set_ready();
        let mut rx = store.subscribe("x/a");
        assert!(store.next_update("x/a", &mut Cursor::default()).is_none());
        let mut compiler = Compiler::default();
        let changes = load(&mut compiler, &cluster(""));
        store.publish(&compiler, &changes, Instant::now());
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert!(store.next_update("x/a", &mut Cursor::default()).is_some());
    }
}
