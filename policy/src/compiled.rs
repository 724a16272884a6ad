//! One pod's compiled policy: what its proxy receives. Selectors are gone, peers are sets of
//! addresses, named ports are numbers; everything a verdict needs and nothing else.
//!
//! The address sets and named-port maps a policy uses are shared with other pods. A policy
//! holds them in place ([`Inline`], what verdicts are computed on) or names them by id
//! ([`ById`], what the controller keeps per pod and the stream sends, each set once).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::fqdn::NamePattern;
use crate::peer::IpBlock;
use crate::policy::{Direction, PolicyId, L7};
use crate::ports::Protocol;

/// Names an address set shared by the pods whose policies use it.
pub type SetId = u32;
/// Names a named-port map shared by the pods whose policies use it.
pub type MapId = u32;

/// How a compiled policy holds the address sets and named-port maps it shares.
pub trait Shared: Clone + fmt::Debug + PartialEq + Send + Sync + 'static {
    /// An address set.
    type Set: Clone + fmt::Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync;
    /// A named-port map.
    type PortMap: Clone + fmt::Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync;
    /// The cluster's Service table.
    type Services: Clone
        + fmt::Debug
        + Default
        + PartialEq
        + Serialize
        + DeserializeOwned
        + Send
        + Sync;
}

/// Shared objects held in place: what verdicts are computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inline;

impl Shared for Inline {
    type Set = Arc<IpSet>;
    type PortMap = Arc<NamedPortMap>;
    type Services = Arc<ServiceTable>;
}

/// Shared objects named by id; the Service table is not part of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ById;

impl Shared for ById {
    type Set = SetId;
    type PortMap = MapId;
    type Services = ();
}

/// A sorted set of addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IpSet(Vec<IpAddr>);

impl IpSet {
    /// The set of these addresses.
    pub fn new(mut ips: Vec<IpAddr>) -> Self {
        ips.sort_unstable();
        ips.dedup();
        Self(ips)
    }

    /// Whether `ip` is in the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.binary_search(&ip).is_ok()
    }

    /// The addresses, sorted.
    pub fn as_slice(&self) -> &[IpAddr] {
        &self.0
    }

    /// How many addresses the set has.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `ip`; returns whether it was new.
    pub fn insert(&mut self, ip: IpAddr) -> bool {
        match self.0.binary_search(&ip) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, ip);
                true
            }
        }
    }

    /// Removes `ip`; returns whether it was there.
    pub fn remove(&mut self, ip: IpAddr) -> bool {
        match self.0.binary_search(&ip) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }
}

/// Destination ports a named port stands for, by destination address (egress rules name a
/// port of the peer pod, which differs from pod to pod).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NamedPortMap(Vec<(IpAddr, u16)>);

impl NamedPortMap {
    /// The map of these pairs (an address has one port per name and protocol).
    pub fn new(mut pairs: Vec<(IpAddr, u16)>) -> Self {
        pairs.sort_unstable();
        pairs.dedup_by_key(|p| p.0);
        Self(pairs)
    }

    /// The port the name has on `ip`, if `ip` is a pod that declares it.
    pub fn get(&self, ip: IpAddr) -> Option<u16> {
        self.0
            .binary_search_by(|(a, _)| a.cmp(&ip))
            .ok()
            .map(|i| self.0[i].1)
    }

    /// The pairs, sorted by address.
    pub fn pairs(&self) -> &[(IpAddr, u16)] {
        &self.0
    }
}

/// What a compiled peer matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", bound = "")]
pub enum PeerMatch<S: Shared = Inline> {
    /// Any address.
    Any,
    /// Exactly these addresses (pods a selector picked; nodes).
    Ips(S::Set),
    /// Addresses in a block.
    Block(IpBlock),
    /// Any address except these (Cilium's `world`: not a pod or node).
    NotIps(S::Set),
    /// Addresses the pod resolved from a matching name (FQDN egress).
    Names(Arc<[NamePattern]>),
}

/// A compiled peer and its position in the rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct CompiledPeer<S: Shared = Inline> {
    /// Index of the peer in the rule's `from`/`to`.
    pub index: u32,
    /// What it matches.
    #[serde(flatten)]
    pub matches: PeerMatch<S>,
}

/// Which port numbers a compiled port matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", bound = "")]
pub enum PortMatch<S: Shared = Inline> {
    /// Every port.
    Any,
    /// `from..=to`.
    Range(u16, u16),
    /// A named port of the destination pod, looked up by its address.
    Named(S::PortMap),
    /// A named port that no destination has: matches nothing.
    Nothing,
}

/// A compiled port of a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct CompiledPort<S: Shared = Inline> {
    /// `None` for every protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// The ports.
    pub ports: PortMatch<S>,
    /// What the rule asks beyond L4 on this port.
    #[serde(default, skip_serializing_if = "L7::is_empty")]
    pub l7: L7,
}

impl CompiledPort {
    /// Whether a connection to `port`/`protocol` on `dest` matches.
    pub fn matches(&self, dest: IpAddr, port: u16, protocol: Protocol) -> bool {
        self.protocol.is_none_or(|p| p == protocol)
            && match &self.ports {
                PortMatch::Any => true,
                PortMatch::Range(from, to) => (*from..=*to).contains(&port),
                PortMatch::Named(map) => map.get(dest) == Some(port),
                PortMatch::Nothing => false,
            }
    }
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct CompiledRule<S: Shared = Inline> {
    /// Index of its policy in [`Side::policies`].
    pub policy: u32,
    /// Index of the rule in its policy's `ingress` or `egress`.
    pub rule: u32,
    /// `None` matches every peer.
    pub peers: Option<Vec<CompiledPeer<S>>>,
    /// Empty matches every port.
    pub ports: Vec<CompiledPort<S>>,
    /// `requireSNI` of the rule; `None` takes the pod's default ([`PodPolicy::require_sni`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_sni: Option<bool>,
}

/// A policy that selects the pod in one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    /// Which policy.
    pub id: PolicyId,
    /// Staged: judged and logged, never enforced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
}

/// One direction of a pod's policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Side<S: Shared = Inline> {
    /// The policies selecting the pod for this direction; none means not isolated.
    pub policies: Vec<PolicyRef>,
    /// Their rules, in policy order.
    pub rules: Vec<CompiledRule<S>>,
}

impl<S: Shared> Default for Side<S> {
    fn default() -> Self {
        Self {
            policies: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// The address a pod's peer is judged by, and the names the pod resolved to it.
#[derive(Debug, Clone, Copy)]
pub struct Flow<'a> {
    /// Which side of the pod the connection is on.
    pub direction: Direction,
    /// The other end: the source for ingress, the destination for egress.
    pub peer: IpAddr,
    /// The destination port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// DNS names the pod resolved to `peer` and that are still valid (egress), normalized
    /// (see [`crate::fqdn::normalize`]).
    pub names: &'a [Arc<str>],
}

impl<'a> Flow<'a> {
    /// The same flow with only `name` among its resolved names (none when the pod did not
    /// resolve `name` to the peer): what a connection naming `name` (its TLS server name
    /// or HTTP `Host`) is judged as when its rule requires that.
    pub fn only_name(&self, name: &str) -> Flow<'a> {
        let names = match self.names.iter().position(|n| **n == *name) {
            Some(i) => &self.names[i..=i],
            None => &[],
        };
        Flow { names, ..*self }
    }
}

/// How a rule matched a flow.
#[derive(Debug, Clone, Copy)]
pub struct RuleMatch<'p> {
    /// The rule's index in [`Side::rules`].
    pub index: usize,
    /// The rule.
    pub rule: &'p CompiledRule,
    /// The peer that matched; `None` when the rule matches every peer.
    pub peer: Option<u32>,
    /// For a `toFQDNs` peer, the index in [`Flow::names`] of the name that matched.
    pub name: Option<u32>,
    /// The port that matched; `None` when the rule matches every port.
    pub port: Option<&'p CompiledPort>,
}

impl RuleMatch<'_> {
    /// What the matched port asks beyond L4 (nothing when the rule matches every port).
    pub fn l7(&self) -> Option<&L7> {
        self.port.map(|p| &p.l7).filter(|l7| !l7.is_empty())
    }

    /// Whether the connection must name the DNS name it was allowed through (TLS server
    /// name or HTTP `Host`): it matched a `toFQDNs` peer of a rule that requires SNI.
    pub fn needs_sni(&self, policy: &PodPolicy) -> bool {
        self.name.is_some() && self.rule.require_sni.unwrap_or(policy.require_sni)
    }
}

/// Which peer of a rule matched a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerHit {
    /// The peer's index; `None` when the rule takes every peer.
    pub peer: Option<u32>,
    /// For a `toFQDNs` peer, the index in [`Flow::names`] of the first name it allows.
    pub name: Option<u32>,
}

impl CompiledRule {
    /// Which peer of the rule matches the flow's peer, `None` when none does.
    pub fn match_peer(&self, flow: &Flow<'_>) -> Option<PeerHit> {
        let Some(peers) = &self.peers else {
            return Some(PeerHit {
                peer: None,
                name: None,
            });
        };
        peers.iter().find_map(|p| {
            let name = match &p.matches {
                PeerMatch::Any => None,
                PeerMatch::Ips(set) => set.contains(flow.peer).then_some(None)?,
                PeerMatch::Block(b) => b.contains(flow.peer).then_some(None)?,
                PeerMatch::NotIps(set) => (!set.contains(flow.peer)).then_some(None)?,
                PeerMatch::Names(patterns) => Some(
                    flow.names
                        .iter()
                        .position(|n| patterns.iter().any(|p| p.matches(n)))?
                        as u32,
                ),
            };
            Some(PeerHit {
                peer: Some(p.index),
                name,
            })
        })
    }

    /// Which port of the rule matches: `Some(None)` when the rule takes every port.
    pub fn match_port(&self, flow: &Flow<'_>) -> Option<Option<&CompiledPort>> {
        if self.ports.is_empty() {
            return Some(None);
        }
        // An L4-only port wins over one with L7 rules: it allows the connection outright.
        let mut found = None;
        // Named ports are left unresolved only in egress rules, where the destination is
        // the peer; ingress rules have them resolved against the pod itself.
        for p in self
            .ports
            .iter()
            .filter(|p| p.matches(flow.peer, flow.port, flow.protocol))
        {
            if p.l7.is_empty() {
                return Some(Some(p));
            }
            found.get_or_insert(p);
        }
        found.map(Some)
    }
}

/// One backend choice for a Service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// The ClusterIP.
    pub ip: IpAddr,
    /// The Service port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// `namespace/name` of the Service.
    pub service: String,
    /// Where connections go, as `(address, port)` pairs.
    pub backends: Vec<(IpAddr, u16)>,
}

/// Every Service port of the cluster, for the outbound proxy to pick backends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServiceTable(Vec<ServiceEntry>);

impl ServiceTable {
    /// The table of these entries.
    pub fn new(mut entries: Vec<ServiceEntry>) -> Self {
        entries.sort_by_key(|e| (e.ip, e.port, e.protocol));
        Self(entries)
    }

    /// The Service port at `ip:port`, if `ip` is a ClusterIP.
    pub fn lookup(&self, ip: IpAddr, port: u16, protocol: Protocol) -> Option<&ServiceEntry> {
        self.0
            .binary_search_by(|e| (e.ip, e.port, e.protocol).cmp(&(ip, port, protocol)))
            .ok()
            .map(|i| &self.0[i])
    }

    /// Whether `ip` is a ClusterIP of any Service.
    pub fn is_service_ip(&self, ip: IpAddr) -> bool {
        let start = self.0.partition_point(|e| e.ip < ip);
        self.0.get(start).is_some_and(|e| e.ip == ip)
    }

    /// Every entry.
    pub fn entries(&self) -> &[ServiceEntry] {
        &self.0
    }
}

/// Audit or enforce, for a whole pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny what is not allowed.
    #[default]
    Enforce,
    /// Judge as in enforce mode, but let everything through and log would-deny.
    Audit,
}

/// Everything one pod's proxy needs to judge its flows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct PodPolicy<S: Shared = Inline> {
    /// `namespace/name`.
    pub pod: String,
    /// The pod's own addresses: traffic to them is never judged.
    pub ips: Vec<IpAddr>,
    /// The pod's node, its addresses of every family: traffic from and to it is always
    /// allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ips: Vec<IpAddr>,
    /// The pod's mode (from its own or its namespace's annotation).
    pub mode: Mode,
    /// Connections to the pod.
    pub ingress: Side<S>,
    /// Connections from the pod.
    pub egress: Side<S>,
    /// Service ports, to pick the backend an outbound connection to a ClusterIP reaches.
    #[serde(default)]
    pub services: S::Services,
    /// Whether rules allowing connections through `toFQDNs` names require the name in the
    /// TLS server name (or HTTP `Host`) unless they say otherwise (annotation
    /// `palisade.dev/require-sni: "true"` on the pod or its namespace).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_sni: bool,
}

impl<S: Shared> PodPolicy<S> {
    /// The side for a direction.
    pub fn side(&self, direction: Direction) -> &Side<S> {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// An id a policy names that no set or map of the tables it is resolved against has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MissingId {
    /// An address set.
    #[error("the policy names address set {0}, which was never sent")]
    Set(SetId),
    /// A named-port map.
    #[error("the policy names named-port map {0}, which was never sent")]
    PortMap(MapId),
}

impl PodPolicy<ById> {
    /// The policy with every set and map it names looked up, and the Service table.
    pub fn resolve(
        &self,
        set: impl Fn(SetId) -> Option<Arc<IpSet>>,
        map: impl Fn(MapId) -> Option<Arc<NamedPortMap>>,
        services: Arc<ServiceTable>,
    ) -> Result<PodPolicy, MissingId> {
        let set = |id| set(id).ok_or(MissingId::Set(id));
        let side = |side: &Side<ById>| -> Result<Side, MissingId> {
            let rules = side
                .rules
                .iter()
                .map(|r| {
                    let peers = match &r.peers {
                        None => None,
                        Some(peers) => Some(
                            peers
                                .iter()
                                .map(|p| {
                                    let matches = match &p.matches {
                                        PeerMatch::Any => PeerMatch::Any,
                                        PeerMatch::Ips(id) => PeerMatch::Ips(set(*id)?),
                                        PeerMatch::Block(b) => PeerMatch::Block(b.clone()),
                                        PeerMatch::NotIps(id) => PeerMatch::NotIps(set(*id)?),
                                        PeerMatch::Names(n) => PeerMatch::Names(n.clone()),
                                    };
                                    Ok(CompiledPeer {
                                        index: p.index,
                                        matches,
                                    })
                                })
                                .collect::<Result<_, MissingId>>()?,
                        ),
                    };
                    let ports = r
                        .ports
                        .iter()
                        .map(|p| {
                            let ports = match &p.ports {
                                PortMatch::Any => PortMatch::Any,
                                PortMatch::Range(a, b) => PortMatch::Range(*a, *b),
                                PortMatch::Named(id) => {
                                    PortMatch::Named(map(*id).ok_or(MissingId::PortMap(*id))?)
                                }
                                PortMatch::Nothing => PortMatch::Nothing,
                            };
                            Ok(CompiledPort {
                                protocol: p.protocol,
                                ports,
                                l7: p.l7.clone(),
                            })
                        })
                        .collect::<Result<_, MissingId>>()?;
                    Ok(CompiledRule {
                        policy: r.policy,
                        rule: r.rule,
                        peers,
                        ports,
                        require_sni: r.require_sni,
                    })
                })
                .collect::<Result<_, MissingId>>()?;
            Ok(Side {
                policies: side.policies.clone(),
                rules,
            })
        };
        Ok(PodPolicy {
            pod: self.pod.clone(),
            ips: self.ips.clone(),
            host_ips: self.host_ips.clone(),
            mode: self.mode,
            ingress: side(&self.ingress)?,
            egress: side(&self.egress)?,
            services,
            require_sni: self.require_sni,
        })
    }

    /// Every address set the policy names, each once.
    pub fn sets(&self) -> Vec<SetId> {
        let mut out: Vec<SetId> = [&self.ingress, &self.egress]
            .into_iter()
            .flat_map(|s| &s.rules)
            .flat_map(|r| r.peers.iter().flatten())
            .filter_map(|p| match p.matches {
                PeerMatch::Ips(id) | PeerMatch::NotIps(id) => Some(id),
                _ => None,
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Every named-port map the policy names, each once.
    pub fn maps(&self) -> Vec<MapId> {
        let mut out: Vec<MapId> = [&self.ingress, &self.egress]
            .into_iter()
            .flat_map(|s| &s.rules)
            .flat_map(|r| &r.ports)
            .filter_map(|p| match p.ports {
                PortMatch::Named(id) => Some(id),
                _ => None,
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// A pod's whole policy and its version, as the proxy holds it and shows it on `/policy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Versioned {
    /// Increases with every change the controller makes.
    pub version: u64,
    /// The policy.
    pub policy: PodPolicy,
}

/// The path a proxy asks for its pod's policy stream on: `/v1/policy/{namespace}/{name}`.
pub fn stream_path(pod: &str) -> String {
    format!("/v1/policy/{pod}")
}
