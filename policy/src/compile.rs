//! Compiling cluster state into each pod's policy, and keeping it compiled as the cluster
//! changes.
//!
//! A pod's policy is compiled into a body that names the address sets and named-port maps
//! it shares with other pods by id ([`ById`]); each set and map exists once, in the
//! compiler's tables, whoever uses it. A change touches only what it can affect: a pod's
//! labels move its addresses in or out of the sets whose selectors pick it, and recompile
//! that pod alone; a policy recompiles the pods of its namespace it selects (old or new);
//! a namespace's labels move its pods in or out of the sets that select namespaces. The
//! offline tools use the same compiler once ([`Compiler::new`] then [`Compiler::compile`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use crate::cluster::{Cluster, EndpointSlice, Namespace, Pod, Service, NAMESPACE_NAME_LABEL};
use crate::compiled::{
    ById, CompiledPeer, CompiledPort, CompiledRule, IpSet, MapId, Mode, NamedPortMap, PeerMatch,
    PodPolicy, PolicyRef, PortMatch, ServiceEntry, ServiceTable, SetId, Side,
};
use crate::manifest::{policy_object, Object, ObjectKey, ObjectKind};
use crate::peer::{Entity, Namespaces, Peer};
use crate::policy::{Direction, Policy, PolicyId, PortRule};
use crate::ports::{PortRef, Protocol};
use crate::selector::{LabelSelector, Labels};

/// When one batch changes more than this share (1/N) of the pods, every set is rebuilt
/// whole rather than moved pod by pod.
const REBUILD_SHARE: usize = 8;

/// What an address set holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SetKey {
    /// The pods (not on the node's network) a selector picks in some namespaces.
    Pods(Namespaces, LabelSelector),
    /// Every pod and node of the cluster.
    Cluster,
    /// One node's addresses: Cilium's `host` for the pods on it.
    Node(Vec<IpAddr>),
}

/// What a named-port map holds: where a port name leads on every pod that declares it, or
/// only on the pods of some sets (those a rule can reach).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MapKey {
    name: String,
    protocol: Option<Protocol>,
    within: Option<Vec<SetId>>,
}

/// Shared objects by key, each with an id that never changes and is never reused, and a
/// count of its users.
struct Table<K, V> {
    ids: HashMap<K, u32>,
    entries: HashMap<u32, TableEntry<K, V>>,
    next: u32,
}

struct TableEntry<K, V> {
    key: K,
    value: Arc<V>,
    users: usize,
}

impl<K, V> Default for Table<K, V> {
    fn default() -> Self {
        Self {
            ids: HashMap::new(),
            entries: HashMap::new(),
            next: 0,
        }
    }
}

impl<K: Clone + Eq + Hash, V: PartialEq> Table<K, V> {
    /// The id of `key`, made with `make` if nobody used it yet; one more user. Also says
    /// whether it is new.
    fn acquire(&mut self, key: &K, make: impl FnOnce() -> V) -> (u32, bool) {
        if let Some(&id) = self.ids.get(key) {
            if let Some(e) = self.entries.get_mut(&id) {
                e.users += 1;
                return (id, false);
            }
        }
        self.next += 1;
        let id = self.next;
        self.ids.insert(key.clone(), id);
        self.entries.insert(
            id,
            TableEntry {
                key: key.clone(),
                value: Arc::new(make()),
                users: 1,
            },
        );
        (id, true)
    }

    /// One user less; returns whether the object is gone.
    fn release(&mut self, id: u32) -> bool {
        let Some(e) = self.entries.get_mut(&id) else {
            return false;
        };
        e.users -= 1;
        if e.users > 0 {
            return false;
        }
        if let Some(e) = self.entries.remove(&id) {
            self.ids.remove(&e.key);
        }
        true
    }

    fn get(&self, id: u32) -> Option<&Arc<V>> {
        self.entries.get(&id).map(|e| &e.value)
    }

    fn id(&self, key: &K) -> Option<u32> {
        self.ids.get(key).copied()
    }

    /// Replaces an object's value; returns whether it changed.
    fn replace(&mut self, id: u32, value: V) -> bool {
        match self.entries.get_mut(&id) {
            Some(e) if *e.value != value => {
                e.value = Arc::new(value);
                true
            }
            _ => false,
        }
    }

    /// The value to change in place (copied first if a reader holds it).
    fn value_mut(&mut self, id: u32) -> Option<&mut V>
    where
        V: Clone,
    {
        self.entries
            .get_mut(&id)
            .map(|e| Arc::make_mut(&mut e.value))
    }

    fn keys(&self) -> Vec<(u32, K)> {
        self.entries
            .iter()
            .map(|(&id, e)| (id, e.key.clone()))
            .collect()
    }
}

/// A peer as far as it can be compiled without knowing the selected pod.
#[derive(Debug, Clone)]
enum PeerTemplate {
    Ready(CompiledPeer<ById>),
    /// Cilium's `host`: the selected pod's own node.
    Host(u32),
}

/// A policy with its peers resolved to shared sets.
struct PolicyEntry {
    policy: Policy,
    /// Each rule's peers, ingress first.
    peers: [Vec<Option<Vec<PeerTemplate>>>; 2],
    /// The named-port maps of egress ports, by (rule, port).
    maps: HashMap<(usize, usize), MapId>,
    /// Every set and map it uses, to let go of them when it goes.
    held_sets: Vec<SetId>,
    held_maps: Vec<MapId>,
}

/// What one batch of changes did: which pods to compile again, which shared objects
/// changed. Look the new values up in the compiler.
#[derive(Debug, Default)]
pub struct Changes {
    /// `namespace/name` of the pods whose policy may have changed, or which are gone.
    pub pods: BTreeSet<String>,
    /// Sets that are new or changed.
    pub sets: BTreeSet<SetId>,
    /// Sets nobody uses any more.
    pub dropped_sets: BTreeSet<SetId>,
    /// Named-port maps that are new or changed.
    pub maps: BTreeSet<MapId>,
    /// Named-port maps nobody uses any more.
    pub dropped_maps: BTreeSet<MapId>,
    /// `namespace/name` of the Services whose entries changed, or which are gone.
    pub services: BTreeSet<String>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
            && self.sets.is_empty()
            && self.dropped_sets.is_empty()
            && self.maps.is_empty()
            && self.dropped_maps.is_empty()
            && self.services.is_empty()
    }
}

/// What changed since the last batch.
#[derive(Default)]
struct Pending {
    /// Pods changed, with their version before the batch (`None`: they are new).
    pods: HashMap<String, Option<Pod>>,
    /// Namespaces changed, with their version before the batch.
    namespaces: HashMap<String, Option<Namespace>>,
    /// Policy objects changed, with their new policies (`None`: removed).
    policies: BTreeMap<ObjectKey, Option<Vec<Policy>>>,
    /// Services whose entries must be made again.
    services: BTreeSet<(String, String)>,
    changes: Changes,
}

/// The cluster's objects, every policy's shared sets and maps, and what changed since the
/// last batch.
pub struct Compiler {
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<String, Pod>,
    pods_by_ns: HashMap<String, BTreeSet<String>>,
    pods_by_ip: HashMap<IpAddr, BTreeSet<String>>,
    /// How many pods name each node.
    nodes: HashMap<IpAddr, usize>,
    policies: BTreeMap<PolicyId, PolicyEntry>,
    policies_by_ns: HashMap<String, BTreeSet<PolicyId>>,
    policy_objects: HashMap<ObjectKey, Vec<PolicyId>>,
    services: BTreeMap<(String, String), Service>,
    slices: BTreeMap<(String, String), EndpointSlice>,
    slices_by_service: HashMap<(String, String), BTreeSet<String>>,
    sets: Table<SetKey, IpSet>,
    maps: Table<MapKey, NamedPortMap>,
    service_entries: BTreeMap<String, Arc<Vec<ServiceEntry>>>,
    service_table: Arc<ServiceTable>,
    pending: Pending,
}

impl Default for Compiler {
    fn default() -> Self {
        let mut sets = Table::default();
        // Pods without a node share the empty node set; it is never let go.
        sets.acquire(&SetKey::Node(Vec::new()), IpSet::default);
        Self {
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            pods_by_ns: HashMap::new(),
            pods_by_ip: HashMap::new(),
            nodes: HashMap::new(),
            policies: BTreeMap::new(),
            policies_by_ns: HashMap::new(),
            policy_objects: HashMap::new(),
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            slices_by_service: HashMap::new(),
            sets,
            maps: Table::default(),
            service_entries: BTreeMap::new(),
            service_table: Arc::default(),
            pending: Pending::default(),
        }
    }
}

fn pod_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The port `name` has on `pod` for `protocol` (or any protocol).
fn declared_port(pod: &Pod, name: &str, protocol: Option<Protocol>) -> Option<u16> {
    pod.ports
        .iter()
        .find(|c| c.name.as_deref() == Some(name) && protocol.is_none_or(|p| p == c.protocol))
        .map(|c| c.port)
}

impl Compiler {
    /// Compiles a whole cluster, as the offline tools read it.
    pub fn new(cluster: &Cluster) -> Self {
        let mut compiler = Self::default();
        for (_, object) in cluster.objects() {
            compiler.apply(object);
        }
        compiler.take_changes();
        compiler
    }

    /// Adds an object, or replaces the object with the same key.
    pub fn apply(&mut self, object: Object) {
        match object {
            Object::Namespace(n) => {
                if self.namespaces.get(&n.name) != Some(&n) {
                    let old = self.namespaces.insert(n.name.clone(), n.clone());
                    self.pending.namespaces.entry(n.name).or_insert(old);
                }
            }
            Object::Pod(p) => {
                let key = p.key();
                if self.pods.get(&key) != Some(&p) {
                    // The new node first: a node set its last pod moves off and back on
                    // keeps its id.
                    self.hold_node(&p.host_ips, true);
                    let old = self.pods.insert(key.clone(), p);
                    if let Some(old) = &old {
                        self.index_pod(&key, old, false);
                        self.hold_node(&old.host_ips, false);
                    }
                    let new = self.pods[&key].clone();
                    self.index_pod(&key, &new, true);
                    self.pending.pods.entry(key).or_insert(old);
                }
            }
            Object::Service(s) => {
                let key = (s.namespace.clone(), s.name.clone());
                if self.services.get(&key) != Some(&s) {
                    self.services.insert(key.clone(), s);
                    self.pending.services.insert(key);
                }
            }
            Object::EndpointSlice(s) => {
                let key = (s.namespace.clone(), s.name.clone());
                if self.slices.get(&key) != Some(&s) {
                    self.remove_slice(&key);
                    if let Some(service) = &s.service {
                        let svc = (s.namespace.clone(), service.clone());
                        self.slices_by_service
                            .entry(svc.clone())
                            .or_default()
                            .insert(s.name.clone());
                        self.pending.services.insert(svc);
                    }
                    self.slices.insert(key, s);
                }
            }
            Object::Policies(policies) => {
                if let Some(key) = policies.first().map(|p| policy_object(&p.id)) {
                    let same = self.policy_objects.get(&key).is_some_and(|ids| {
                        ids.len() == policies.len()
                            && ids.iter().zip(&policies).all(|(id, p)| {
                                self.policies.get(id).is_some_and(|e| e.policy == *p)
                            })
                    });
                    if !same || self.pending.policies.contains_key(&key) {
                        self.pending.policies.insert(key, Some(policies));
                    }
                }
            }
        }
    }

    /// Removes the object with this key, if there is one.
    pub fn remove(&mut self, key: &ObjectKey) {
        match key.kind {
            ObjectKind::Namespace => {
                if let Some(old) = self.namespaces.remove(&key.name) {
                    self.pending
                        .namespaces
                        .entry(key.name.clone())
                        .or_insert(Some(old));
                }
            }
            ObjectKind::Pod => {
                let k = pod_key(&key.namespace, &key.name);
                if let Some(old) = self.pods.remove(&k) {
                    self.index_pod(&k, &old, false);
                    self.hold_node(&old.host_ips, false);
                    self.pending.pods.entry(k).or_insert(Some(old));
                }
            }
            ObjectKind::Service => {
                let k = (key.namespace.clone(), key.name.clone());
                if self.services.remove(&k).is_some() {
                    self.pending.services.insert(k);
                }
            }
            ObjectKind::EndpointSlice => {
                self.remove_slice(&(key.namespace.clone(), key.name.clone()));
            }
            ObjectKind::Policy(_) => {
                self.pending.policies.insert(key.clone(), None);
            }
        }
    }

    fn remove_slice(&mut self, key: &(String, String)) {
        let Some(old) = self.slices.remove(key) else {
            return;
        };
        if let Some(service) = old.service {
            let svc = (old.namespace, service);
            if let Some(names) = self.slices_by_service.get_mut(&svc) {
                names.remove(&old.name);
                if names.is_empty() {
                    self.slices_by_service.remove(&svc);
                }
            }
            self.pending.services.insert(svc);
        }
    }

    /// Adds a pod to the indexes, or takes it out.
    fn index_pod(&mut self, key: &str, pod: &Pod, add: bool) {
        fn index<K: Hash + Eq>(map: &mut HashMap<K, BTreeSet<String>>, k: K, v: &str, add: bool) {
            if add {
                map.entry(k).or_default().insert(v.to_owned());
            } else if let Some(set) = map.get_mut(&k) {
                set.remove(v);
                if set.is_empty() {
                    map.remove(&k);
                }
            }
        }
        index(&mut self.pods_by_ns, pod.namespace.clone(), key, add);
        for &ip in &pod.ips {
            index(&mut self.pods_by_ip, ip, key, add);
        }
        for &host in &pod.host_ips {
            let count = self.nodes.entry(host).or_default();
            if add {
                *count += 1;
            } else {
                *count -= 1;
                if *count == 0 {
                    self.nodes.remove(&host);
                }
            }
        }
    }

    /// Takes a pod's hold on its node's set, or lets go of it: every pod holds its node's
    /// set, so that its policy can name it.
    fn hold_node(&mut self, host: &[IpAddr], hold: bool) {
        if host.is_empty() {
            return;
        }
        let node = SetKey::Node(host.to_vec());
        if hold {
            let (id, new) = self.sets.acquire(&node, || IpSet::new(host.to_vec()));
            if new {
                self.pending.changes.sets.insert(id);
            }
        } else if let Some(id) = self.sets.id(&node) {
            if self.sets.release(id) {
                self.pending.changes.dropped_sets.insert(id);
            }
        }
    }

    /// The labels of a namespace, declared or implied.
    fn namespace_labels(&self, name: &str) -> Labels {
        match self.namespaces.get(name) {
            Some(n) => n.labels.clone(),
            None => Namespace::implicit(name).labels,
        }
    }

    fn namespace_matches(&self, selector: &LabelSelector, name: &str) -> bool {
        match self.namespaces.get(name) {
            Some(n) => selector.matches(&n.labels),
            None => selector.matches(&Labels::from([(
                NAMESPACE_NAME_LABEL.to_owned(),
                name.to_owned(),
            )])),
        }
    }

    /// Whether a pod belongs in a selector's set.
    fn picks(&self, namespaces: &Namespaces, selector: &LabelSelector, pod: &Pod) -> bool {
        !pod.host_network
            && match namespaces {
                Namespaces::Named(ns) => *ns == pod.namespace,
                Namespaces::Matching(sel) => self.namespace_matches(sel, &pod.namespace),
            }
            && selector.matches(&pod.labels)
    }

    fn pods_of<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods_by_ns
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
    }

    /// A set's addresses, computed from scratch.
    fn set_content(&self, key: &SetKey) -> IpSet {
        match key {
            SetKey::Pods(namespaces, selector) => {
                let namespaces: Vec<&String> = match namespaces {
                    Namespaces::Named(ns) => vec![ns],
                    Namespaces::Matching(sel) => self
                        .pods_by_ns
                        .keys()
                        .filter(|ns| self.namespace_matches(sel, ns))
                        .collect(),
                };
                IpSet::new(
                    namespaces
                        .into_iter()
                        .flat_map(|ns| self.pods_of(ns))
                        .filter(|p| !p.host_network && selector.matches(&p.labels))
                        .flat_map(|p| p.ips.iter().copied())
                        .collect(),
                )
            }
            SetKey::Cluster => IpSet::new(
                self.pods_by_ip
                    .keys()
                    .chain(self.nodes.keys())
                    .copied()
                    .collect(),
            ),
            SetKey::Node(ips) => IpSet::new(ips.clone()),
        }
    }

    /// Whether another pod than `except` that a selector picks has `ip`.
    fn picked_elsewhere(
        &self,
        namespaces: &Namespaces,
        selector: &LabelSelector,
        ip: IpAddr,
        except: &str,
    ) -> bool {
        self.pods_by_ip.get(&ip).into_iter().flatten().any(|k| {
            k != except
                && self
                    .pods
                    .get(k)
                    .is_some_and(|p| self.picks(namespaces, selector, p))
        })
    }

    /// Moves one changed pod's addresses in and out of the sets.
    fn move_pod(&mut self, key: &str, old: Option<&Pod>, new: Option<&Pod>) {
        let mut edits: Vec<(SetId, Vec<IpAddr>, Vec<IpAddr>)> = Vec::new();
        for (id, set_key) in self.sets.keys() {
            let SetKey::Pods(namespaces, selector) = &set_key else {
                continue;
            };
            let before = old.filter(|p| self.picks(namespaces, selector, p));
            let after = new.filter(|p| self.picks(namespaces, selector, p));
            let before_ips = before.map_or(&[][..], |p| &p.ips[..]);
            let after_ips = after.map_or(&[][..], |p| &p.ips[..]);
            if before_ips == after_ips {
                continue;
            }
            let removed = before_ips
                .iter()
                .copied()
                .filter(|ip| {
                    !after_ips.contains(ip)
                        && !self.picked_elsewhere(namespaces, selector, *ip, key)
                })
                .collect();
            edits.push((id, removed, after_ips.to_vec()));
        }
        if let Some(id) = self.sets.id(&SetKey::Cluster) {
            let mut removed = Vec::new();
            let mut added = Vec::new();
            for p in old.into_iter().chain(new) {
                for ip in p.ips.iter().chain(&p.host_ips) {
                    if self.pods_by_ip.contains_key(ip) || self.nodes.contains_key(ip) {
                        added.push(*ip);
                    } else {
                        removed.push(*ip);
                    }
                }
            }
            edits.push((id, removed, added));
        }
        for (id, removed, added) in edits {
            let Some(set) = self.sets.value_mut(id) else {
                continue;
            };
            let mut changed = false;
            for ip in removed {
                changed |= set.remove(ip);
            }
            for ip in added {
                changed |= set.insert(ip);
            }
            if changed {
                self.pending.changes.sets.insert(id);
            }
        }
    }

    /// Moves a changed namespace's pods in and out of the sets that select namespaces.
    fn move_namespace(&mut self, name: &str, old: Option<&Namespace>) {
        let old_labels = match old {
            Some(n) => n.labels.clone(),
            None => Namespace::implicit(name).labels,
        };
        let new_labels = self.namespace_labels(name);
        if old_labels == new_labels {
            return;
        }
        for (id, set_key) in self.sets.keys() {
            let SetKey::Pods(Namespaces::Matching(sel), _) = &set_key else {
                continue;
            };
            if sel.matches(&old_labels) != sel.matches(&new_labels) {
                let content = self.set_content(&set_key);
                if self.sets.replace(id, content) {
                    self.pending.changes.sets.insert(id);
                }
            }
        }
    }

    /// Makes every set again from scratch.
    fn rebuild_sets(&mut self) {
        for (id, key) in self.sets.keys() {
            let content = self.set_content(&key);
            if self.sets.replace(id, content) {
                self.pending.changes.sets.insert(id);
            }
        }
    }

    /// The id of a set, made if nobody used it yet; one more user.
    fn acquire_set(&mut self, key: SetKey) -> SetId {
        let content = match self.sets.id(&key) {
            Some(_) => None,
            None => Some(self.set_content(&key)),
        };
        let (id, new) = self.sets.acquire(&key, || content.unwrap_or_default());
        if new {
            self.pending.changes.sets.insert(id);
        }
        id
    }

    /// The id of a named-port map, made if nobody used it yet; one more user.
    fn acquire_map(&mut self, key: MapKey) -> MapId {
        let content = match self.maps.id(&key) {
            Some(_) => None,
            None => Some(self.map_content(&key)),
        };
        let (id, new) = self.maps.acquire(&key, || content.unwrap_or_default());
        if new {
            self.pending.changes.maps.insert(id);
        }
        id
    }

    /// Resolves a policy's peers and named ports to shared sets and maps.
    fn enter_policy(&mut self, policy: Policy) -> PolicyEntry {
        let mut held_sets = Vec::new();
        let mut peers: [Vec<Option<Vec<PeerTemplate>>>; 2] = [Vec::new(), Vec::new()];
        for (d, dir) in [Direction::Ingress, Direction::Egress]
            .into_iter()
            .enumerate()
        {
            for rule in policy.rules(dir).unwrap_or_default() {
                let Some(list) = &rule.peers else {
                    peers[d].push(None);
                    continue;
                };
                let mut templates = Vec::with_capacity(list.len());
                for (i, peer) in list.iter().enumerate() {
                    let index = i as u32;
                    let set = match peer {
                        Peer::Pods { namespaces, pods } => {
                            Some(SetKey::Pods(namespaces.clone(), pods.clone()))
                        }
                        Peer::Entity(Entity::Cluster | Entity::World) => Some(SetKey::Cluster),
                        _ => None,
                    };
                    let set = set.map(|key| {
                        let id = self.acquire_set(key);
                        held_sets.push(id);
                        id
                    });
                    let matches = match (peer, set) {
                        (Peer::Entity(Entity::Host), _) => {
                            templates.push(PeerTemplate::Host(index));
                            continue;
                        }
                        (Peer::Entity(Entity::World), Some(id)) => PeerMatch::NotIps(id),
                        (_, Some(id)) => PeerMatch::Ips(id),
                        (Peer::IpBlock(b), None) => PeerMatch::Block(b.clone()),
                        (Peer::Fqdn(names), None) => PeerMatch::Names(names.as_slice().into()),
                        (_, None) => PeerMatch::Any,
                    };
                    templates.push(PeerTemplate::Ready(CompiledPeer { index, matches }));
                }
                peers[d].push(Some(templates));
            }
        }
        let mut maps = HashMap::new();
        let mut held_maps = Vec::new();
        for (ri, rule) in policy.egress.iter().flatten().enumerate() {
            for (xi, port) in rule.ports.iter().enumerate() {
                let Some(PortRef::Name(name)) = &port.spec.port else {
                    continue;
                };
                // A rule whose peers are all sets of pods can only reach those pods: its
                // map holds only them. Others (an ipBlock may match any pod) get every pod
                // that declares the name.
                let within = peers[1][ri].as_ref().and_then(|templates| {
                    let mut ids: Vec<SetId> = templates
                        .iter()
                        .map(|t| match t {
                            PeerTemplate::Ready(CompiledPeer {
                                matches: PeerMatch::Ips(id),
                                ..
                            }) => Some(*id),
                            _ => None,
                        })
                        .collect::<Option<_>>()?;
                    ids.sort_unstable();
                    ids.dedup();
                    Some(ids)
                });
                let id = self.acquire_map(MapKey {
                    name: name.clone(),
                    protocol: port.spec.protocol,
                    within,
                });
                held_maps.push(id);
                maps.insert((ri, xi), id);
            }
        }
        PolicyEntry {
            policy,
            peers,
            maps,
            held_sets,
            held_maps,
        }
    }

    fn leave_policy(&mut self, entry: PolicyEntry) {
        for id in entry.held_maps {
            if self.maps.release(id) {
                self.pending.changes.dropped_maps.insert(id);
            }
        }
        for id in entry.held_sets {
            if self.sets.release(id) {
                self.pending.changes.dropped_sets.insert(id);
            }
        }
    }

    /// A named-port map, computed from scratch.
    fn map_content(&self, key: &MapKey) -> NamedPortMap {
        let pairs = |pod: &Pod| -> Vec<(IpAddr, u16)> {
            match declared_port(pod, &key.name, key.protocol) {
                Some(port) if !pod.host_network => pod.ips.iter().map(|&ip| (ip, port)).collect(),
                _ => Vec::new(),
            }
        };
        match &key.within {
            None => NamedPortMap::new(self.pods.values().flat_map(pairs).collect()),
            Some(ids) => {
                let ips: BTreeSet<IpAddr> = ids
                    .iter()
                    .filter_map(|id| self.sets.get(*id))
                    .flat_map(|s| s.as_slice().iter().copied())
                    .collect();
                NamedPortMap::new(
                    ips.into_iter()
                        .filter_map(|ip| {
                            self.pods_by_ip
                                .get(&ip)?
                                .iter()
                                .filter_map(|k| self.pods.get(k))
                                .filter(|p| !p.host_network)
                                .find_map(|p| declared_port(p, &key.name, key.protocol))
                                .map(|port| (ip, port))
                        })
                        .collect(),
                )
            }
        }
    }

    /// A Service's entries, computed from scratch.
    fn service_content(&self, service: &Service) -> Vec<ServiceEntry> {
        let key = (service.namespace.clone(), service.name.clone());
        let slices: Vec<&EndpointSlice> = self
            .slices_by_service
            .get(&key)
            .into_iter()
            .flatten()
            .filter_map(|name| self.slices.get(&(service.namespace.clone(), name.clone())))
            .collect();
        let mut out = Vec::new();
        for port in &service.ports {
            let backends = service.backends(port, &slices, self.pods_of(&service.namespace));
            for &ip in &service.cluster_ips {
                out.push(ServiceEntry {
                    ip,
                    port: port.port,
                    protocol: port.protocol,
                    service: pod_key(&service.namespace, &service.name),
                    backends: backends
                        .iter()
                        .filter(|b| b.ip.is_ipv4() == ip.is_ipv4())
                        .map(|b| (b.ip, b.port))
                        .collect(),
                });
            }
        }
        out
    }

    /// Works out everything the changes since the last batch affect, and says what
    /// changed.
    pub fn take_changes(&mut self) -> Changes {
        let Pending {
            pods,
            namespaces,
            policies,
            services,
            changes,
        } = std::mem::take(&mut self.pending);
        // Set and map edits below record themselves in `self.pending.changes`.
        self.pending.changes = changes;
        let mut dirty: BTreeSet<String> = BTreeSet::new();

        // Sets: move the changed pods and namespaces, or rebuild when much changed.
        let many = pods.len() > self.pods.len() / REBUILD_SHARE + 1;
        if many {
            self.rebuild_sets();
        } else {
            for (key, old) in &pods {
                let new = self.pods.get(key).cloned();
                self.move_pod(key, old.as_ref(), new.as_ref());
            }
        }
        for (name, old) in &namespaces {
            if !many {
                self.move_namespace(name, old.as_ref());
            }
            // A namespace's mode reaches every pod in it.
            dirty.extend(self.pods_by_ns.get(name).into_iter().flatten().cloned());
        }
        let changed_names: HashSet<String> = pods
            .iter()
            .flat_map(|(k, old)| old.iter().chain(self.pods.get(k)))
            .flat_map(|p| p.ports.iter().filter_map(|c| c.name.clone()))
            .collect();
        dirty.extend(pods.keys().cloned());

        // Policies: enter the new ones before letting go of the old, so that the sets
        // they share stay as they are.
        for (key, new) in policies {
            let old_ids = self.policy_objects.remove(&key).unwrap_or_default();
            let mut old_entries = Vec::new();
            for id in &old_ids {
                if let Some(set) = self.policies_by_ns.get_mut(&id.namespace) {
                    set.remove(id);
                }
                if let Some(e) = self.policies.remove(id) {
                    old_entries.push(e);
                }
            }
            let mut selectors: Vec<(String, LabelSelector)> = old_entries
                .iter()
                .map(|e| (e.policy.id.namespace.clone(), e.policy.pod_selector.clone()))
                .collect();
            let mut new_ids = Vec::new();
            for policy in new.into_iter().flatten() {
                selectors.push((policy.id.namespace.clone(), policy.pod_selector.clone()));
                let id = policy.id.clone();
                let entry = self.enter_policy(policy);
                self.policies_by_ns
                    .entry(id.namespace.clone())
                    .or_default()
                    .insert(id.clone());
                self.policies.insert(id.clone(), entry);
                new_ids.push(id);
            }
            for e in old_entries {
                self.leave_policy(e);
            }
            if !new_ids.is_empty() {
                self.policy_objects.insert(key, new_ids);
            }
            for (ns, selector) in selectors {
                dirty.extend(
                    self.pods_of(&ns)
                        .filter(|p| selector.matches(&p.labels))
                        .map(Pod::key),
                );
            }
        }
        let mut changes = std::mem::take(&mut self.pending.changes);

        // Named-port maps: those of names changed pods declare, and those within sets that
        // changed.
        for (id, key) in self.maps.keys() {
            let affected = many
                || changed_names.contains(&key.name)
                || key
                    .within
                    .as_ref()
                    .is_some_and(|ids| ids.iter().any(|s| changes.sets.contains(s)));
            if affected && !changes.maps.contains(&id) {
                let content = self.map_content(&key);
                if self.maps.replace(id, content) {
                    changes.maps.insert(id);
                }
            }
        }

        // Services: those changed, and those whose selector picks a changed pod.
        let mut services = services;
        for (key, old) in &pods {
            for pod in old.iter().chain(self.pods.get(key)) {
                let ns = pod.namespace.clone();
                for ((sns, sname), svc) in self
                    .services
                    .range((ns.clone(), String::new())..)
                    .take_while(|((sns, _), _)| *sns == ns)
                {
                    if svc.selects(pod) {
                        services.insert((sns.clone(), sname.clone()));
                    }
                }
            }
        }
        for (ns, name) in services {
            let key = pod_key(&ns, &name);
            let entries = self
                .services
                .get(&(ns, name))
                .map(|s| self.service_content(s));
            let changed = match entries {
                Some(e) => {
                    if self.service_entries.get(&key).map(|x| &**x) == Some(&e) {
                        false
                    } else {
                        self.service_entries.insert(key.clone(), Arc::new(e));
                        true
                    }
                }
                None => self.service_entries.remove(&key).is_some(),
            };
            if changed {
                changes.services.insert(key);
            }
        }
        if !changes.services.is_empty() {
            self.service_table = Arc::new(ServiceTable::new(
                self.service_entries
                    .values()
                    .flat_map(|e| e.iter().cloned())
                    .collect(),
            ));
        }

        changes.sets.retain(|id| !changes.dropped_sets.contains(id));
        changes.maps.retain(|id| !changes.dropped_maps.contains(id));
        changes.pods = dirty;
        changes
    }

    /// A pod the compiler holds, by `namespace/name`.
    pub fn pod(&self, key: &str) -> Option<&Pod> {
        self.pods.get(key)
    }

    /// An address set, by id.
    pub fn set(&self, id: SetId) -> Option<&Arc<IpSet>> {
        self.sets.get(id)
    }

    /// A named-port map, by id.
    pub fn map(&self, id: MapId) -> Option<&Arc<NamedPortMap>> {
        self.maps.get(id)
    }

    /// A Service's entries, by `namespace/name`.
    pub fn service(&self, key: &str) -> Option<&Arc<Vec<ServiceEntry>>> {
        self.service_entries.get(key)
    }

    /// Every Service's entries, by `namespace/name`.
    pub fn service_entries(&self) -> &BTreeMap<String, Arc<Vec<ServiceEntry>>> {
        &self.service_entries
    }

    /// The Service table every pod's policy carries.
    pub fn services(&self) -> &Arc<ServiceTable> {
        &self.service_table
    }

    /// Compiles one pod's policy with every shared set, map and the Service table in place.
    pub fn compile(&self, pod: &Pod) -> PodPolicy {
        // A body names only ids of the tables, it is made from them; an id missing all the
        // same would stand for an empty set or map.
        self.body(pod)
            .resolve(
                |id| Some(self.sets.get(id).cloned().unwrap_or_default()),
                |id| Some(self.maps.get(id).cloned().unwrap_or_default()),
                self.service_table.clone(),
            )
            .expect("lookups that always answer cannot miss an id")
    }

    /// Compiles one pod's policy, naming shared sets and maps by id.
    pub fn body(&self, pod: &Pod) -> PodPolicy<ById> {
        let mut ingress = Side::default();
        let mut egress = Side::default();
        // A pod on the node's network cannot be given a proxy: nothing isolates it.
        let ids: Vec<&PolicyId> = match pod.host_network {
            true => Vec::new(),
            false => self
                .policies_by_ns
                .get(&pod.namespace)
                .into_iter()
                .flatten()
                .collect(),
        };
        // A pod of the compiler has its node's set; another pod gets the empty node set.
        let node = self
            .sets
            .id(&SetKey::Node(pod.host_ips.clone()))
            .or_else(|| self.sets.id(&SetKey::Node(Vec::new())))
            .unwrap_or_default();
        for id in ids {
            let Some(entry) = self.policies.get(id) else {
                continue;
            };
            let policy = &entry.policy;
            if !policy.pod_selector.matches(&pod.labels) {
                continue;
            }
            for (d, dir) in [Direction::Ingress, Direction::Egress]
                .into_iter()
                .enumerate()
            {
                let Some(rules) = policy.rules(dir) else {
                    continue;
                };
                let side = match dir {
                    Direction::Ingress => &mut ingress,
                    Direction::Egress => &mut egress,
                };
                let policy_index = side.policies.len() as u32;
                side.policies.push(PolicyRef {
                    id: policy.id.clone(),
                    audit: policy.audit,
                });
                for (ri, rule) in rules.iter().enumerate() {
                    let peers = entry.peers[d][ri].as_ref().map(|templates| {
                        templates
                            .iter()
                            .map(|t| match t {
                                PeerTemplate::Ready(p) => p.clone(),
                                PeerTemplate::Host(index) => CompiledPeer {
                                    index: *index,
                                    matches: PeerMatch::Ips(node),
                                },
                            })
                            .collect()
                    });
                    side.rules.push(CompiledRule {
                        policy: policy_index,
                        rule: ri as u32,
                        peers,
                        ports: rule
                            .ports
                            .iter()
                            .enumerate()
                            .map(|(xi, p)| self.port(entry, p, dir, pod, (ri, xi)))
                            .collect(),
                        require_sni: rule.require_sni,
                    });
                }
            }
        }
        let audit = |a: &Labels| {
            a.get(crate::cluster::MODE_ANNOTATION)
                .is_some_and(|m| m == "audit")
        };
        let audit = audit(&pod.annotations)
            || self
                .namespaces
                .get(&pod.namespace)
                .is_some_and(|n| audit(&n.annotations));
        PodPolicy {
            pod: pod.key(),
            ips: pod.ips.clone(),
            host_ips: pod.host_ips.clone(),
            mode: if audit { Mode::Audit } else { Mode::Enforce },
            ingress,
            egress,
            services: (),
            require_sni: pod.requires_sni(self.namespaces.get(&pod.namespace)),
        }
    }

    fn port(
        &self,
        entry: &PolicyEntry,
        p: &PortRule,
        dir: Direction,
        pod: &Pod,
        at: (usize, usize),
    ) -> CompiledPort<ById> {
        let mut protocol = p.spec.protocol;
        let ports = match &p.spec.port {
            None => PortMatch::Any,
            Some(PortRef::Number(n)) => PortMatch::Range(*n, p.spec.end_port.unwrap_or(*n)),
            // Ingress: the destination is the selected pod itself.
            Some(PortRef::Name(name)) if dir == Direction::Ingress => {
                let declared = pod.ports.iter().find(|c| {
                    c.name.as_deref() == Some(name) && protocol.is_none_or(|p| p == c.protocol)
                });
                match declared {
                    Some(c) => {
                        protocol = Some(c.protocol);
                        PortMatch::Range(c.port, c.port)
                    }
                    None => PortMatch::Nothing,
                }
            }
            // Egress: the destination is the peer, whichever pod it is.
            Some(PortRef::Name(_)) => match entry.maps.get(&at) {
                Some(id) => PortMatch::Named(*id),
                None => PortMatch::Nothing,
            },
        };
        CompiledPort {
            protocol,
            ports,
            l7: p.l7.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{load_str, Report};

    fn pod(name: &str, app: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: n, labels: {{app: {app}}}}}\n\
             spec: {{containers: [{{name: c, ports: [{{containerPort: 8080, name: http}}]}}]}}\n\
             status: {{podIP: {ip}}}\n---\n"
        )
    }

    fn named_map_len(policy_peer: &str) -> usize {
        let mut text = pod("web", "web", "10.0.0.1")
            + &pod("api", "api", "10.0.0.2")
            + &pod("db", "db", "10.0.0.3");
        text += &format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: n}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  egress:\n  - to: [{policy_peer}]\n    ports: [{{port: http}}]\n"
        );
        let mut cluster = Cluster::default();
        let mut report = Report::default();
        load_str(&mut cluster, "t.yaml", &text, &mut report);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        cluster.finish();
        let web = cluster.pod("n", "web").unwrap();
        let compiled = Compiler::new(&cluster).compile(web);
        match &compiled.egress.rules[0].ports[0].ports {
            PortMatch::Named(map) => (1..=3)
                .filter(|i| map.get(format!("10.0.0.{i}").parse().unwrap()).is_some())
                .count(),
            other => panic!("a named port: {other:?}"),
        }
    }

    #[test]
    fn a_named_port_map_holds_only_the_pods_the_rule_can_reach() {
        assert_eq!(named_map_len("{podSelector: {matchLabels: {app: api}}}"), 1);
        // An ipBlock may match any pod: every pod that declares the name is kept.
        assert_eq!(named_map_len("{ipBlock: {cidr: 10.0.0.0/8}}"), 3);
    }
}
