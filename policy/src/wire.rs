//! The policy stream's messages: what the controller sends a proxy, and how both sides
//! keep track of it.
//!
//! A stream opens with a resync: the pod's policy, every address set and named-port map
//! it names, and every Service. After that, an update carries only what changed: a set's
//! added and removed addresses, a new policy body, a changed Service. Sets and maps are
//! named by ids that are valid on one stream only, so a proxy that reconnects (to the same
//! controller or another replica) starts from a resync again. Each message is a MessagePack
//! document (field names kept, so that fields can be added), preceded by its length as a
//! 4-byte big-endian number. IPv4 addresses travel as the differences between successive
//! sorted addresses, which MessagePack writes in one or two bytes for pods of a cluster.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::compiled::{
    ById, IpSet, MapId, MissingId, NamedPortMap, PodPolicy, ServiceEntry, ServiceTable, SetId,
    Versioned,
};
use crate::ports::Protocol;

/// The media type of the stream's body.
pub const MEDIA_TYPE: &str = "application/vnd.palisade.policy.v1+msgpack";
/// The largest message a proxy accepts.
pub const MAX_MESSAGE: usize = 64 << 20;

/// One message of the stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// The controller's version of the policy after this update; it only grows on a stream.
    pub version: u64,
    /// Everything the proxy holds is replaced by this message (the first of every stream).
    #[serde(default)]
    pub resync: bool,
    /// Address sets that are new, changed or dropped.
    #[serde(default)]
    pub sets: Vec<(SetId, Change<Addresses>)>,
    /// Named-port maps that are new, changed or dropped.
    #[serde(default)]
    pub maps: Vec<(MapId, Change<PortPairs>)>,
    /// Services that are new or changed (whole) or gone (`None`), by `namespace/name`.
    #[serde(default)]
    pub services: Vec<(String, Option<Arc<ServicePorts>>)>,
    /// The pod's policy, when it changed.
    #[serde(default)]
    pub policy: Option<PodPolicy<ById>>,
}

/// How a shared object changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Change<T> {
    /// The whole object (new, or cheaper to send whole).
    Full(T),
    /// What was added and what was removed.
    Diff {
        /// Added.
        added: T,
        /// Removed.
        removed: T,
    },
    /// Nobody on this stream uses the object any more.
    Dropped,
}

/// Sorted addresses, compactly: IPv4 ones as the differences between successive ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    /// The first IPv4 address as a number, then the difference to each next one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    v4: Vec<u32>,
    /// IPv6 addresses, each as its high and low 64 bits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    v6: Vec<(u64, u64)>,
}

impl Addresses {
    /// These addresses, which must be sorted.
    pub fn new<'a>(sorted: impl IntoIterator<Item = &'a IpAddr>) -> Self {
        let mut out = Self::default();
        let mut last = 0u32;
        for ip in sorted {
            match ip {
                IpAddr::V4(v4) => {
                    let n = u32::from(*v4);
                    out.v4.push(n.wrapping_sub(last));
                    last = n;
                }
                IpAddr::V6(v6) => {
                    let n = u128::from(*v6);
                    out.v6.push(((n >> 64) as u64, n as u64));
                }
            }
        }
        out
    }

    /// The addresses, sorted.
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut out = Vec::with_capacity(self.v4.len() + self.v6.len());
        let mut last = 0u32;
        for d in &self.v4 {
            last = last.wrapping_add(*d);
            out.push(IpAddr::V4(Ipv4Addr::from(last)));
        }
        out.extend(
            self.v6.iter().map(|(hi, lo)| {
                IpAddr::V6(Ipv6Addr::from((u128::from(*hi) << 64) | u128::from(*lo)))
            }),
        );
        out
    }
}

/// A named-port map, compactly: the addresses that have each port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortPairs(Vec<(u16, Addresses)>);

impl PortPairs {
    /// These pairs.
    pub fn new(pairs: &[(IpAddr, u16)]) -> Self {
        let mut by_port: BTreeMap<u16, Vec<IpAddr>> = BTreeMap::new();
        for (ip, port) in pairs {
            by_port.entry(*port).or_default().push(*ip);
        }
        Self(
            by_port
                .into_iter()
                .map(|(port, mut ips)| {
                    ips.sort_unstable();
                    (port, Addresses::new(&ips))
                })
                .collect(),
        )
    }

    /// The pairs, sorted by address.
    pub fn pairs(&self) -> Vec<(IpAddr, u16)> {
        let mut out: Vec<(IpAddr, u16)> = self
            .0
            .iter()
            .flat_map(|(port, a)| a.ips().into_iter().map(move |ip| (ip, *port)))
            .collect();
        out.sort_unstable();
        out
    }
}

/// A Service's entries, compactly: its ClusterIPs once, then each port with the backends
/// of every family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePorts {
    ips: Vec<IpAddr>,
    ports: Vec<(u16, Protocol, PortPairs)>,
}

impl ServicePorts {
    /// The compact form of one Service's entries.
    pub fn new(entries: &[ServiceEntry]) -> Self {
        let mut ips: Vec<IpAddr> = Vec::new();
        type Backends = Vec<(IpAddr, u16)>;
        let mut ports: Vec<(u16, Protocol, Backends)> = Vec::new();
        for e in entries {
            if !ips.contains(&e.ip) {
                ips.push(e.ip);
            }
            match ports
                .iter_mut()
                .find(|(p, proto, _)| *p == e.port && *proto == e.protocol)
            {
                Some((_, _, backends)) => backends.extend(&e.backends),
                None => ports.push((e.port, e.protocol, e.backends.clone())),
            }
        }
        Self {
            ips,
            ports: ports
                .into_iter()
                .map(|(port, protocol, mut backends)| {
                    backends.sort_unstable();
                    backends.dedup();
                    (port, protocol, PortPairs::new(&backends))
                })
                .collect(),
        }
    }

    /// The entries of the Service named `service`, as the compiler makes them: for each
    /// port, one per ClusterIP, with the backends of its family.
    pub fn entries(&self, service: &str) -> Vec<ServiceEntry> {
        let mut out = Vec::new();
        for (port, protocol, backends) in &self.ports {
            let backends = backends.pairs();
            for ip in &self.ips {
                out.push(ServiceEntry {
                    ip: *ip,
                    port: *port,
                    protocol: *protocol,
                    service: service.to_owned(),
                    backends: backends
                        .iter()
                        .copied()
                        .filter(|(b, _)| b.is_ipv4() == ip.is_ipv4())
                        .collect(),
                });
            }
        }
        out
    }
}

/// A Service as an update carries it: `None` when it is gone.
pub fn service(key: &str, entries: Option<&[ServiceEntry]>) -> (String, Option<Arc<ServicePorts>>) {
    (
        key.to_owned(),
        entries.map(|e| Arc::new(ServicePorts::new(e))),
    )
}

/// What is in `a` and not in `b`, both sorted.
fn minus<T: Ord + Copy>(a: &[T], b: &[T]) -> Vec<T> {
    let mut out = Vec::new();
    let mut j = 0;
    for x in a {
        while j < b.len() && b[j] < *x {
            j += 1;
        }
        if j >= b.len() || b[j] != *x {
            out.push(*x);
        }
    }
    out
}

/// How a set changed from `old` to `new`: a diff, or the whole set when that is smaller.
pub fn set_change(old: &IpSet, new: &IpSet) -> Change<Addresses> {
    let added = minus(new.as_slice(), old.as_slice());
    let removed = minus(old.as_slice(), new.as_slice());
    if added.len() + removed.len() >= new.len() {
        Change::Full(Addresses::new(new.as_slice()))
    } else {
        Change::Diff {
            added: Addresses::new(&added),
            removed: Addresses::new(&removed),
        }
    }
}

/// How a named-port map changed from `old` to `new`.
pub fn map_change(old: &NamedPortMap, new: &NamedPortMap) -> Change<PortPairs> {
    let added = minus(new.pairs(), old.pairs());
    let removed = minus(old.pairs(), new.pairs());
    if added.len() + removed.len() >= new.pairs().len() {
        Change::Full(PortPairs::new(new.pairs()))
    } else {
        Change::Diff {
            added: PortPairs::new(&added),
            removed: PortPairs::new(&removed),
        }
    }
}

/// Why a message cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Not a message of this protocol.
    #[error("malformed policy message: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
    /// Larger than [`MAX_MESSAGE`].
    #[error("policy message of {0} bytes, larger than {MAX_MESSAGE}")]
    TooLarge(usize),
    /// The stream did not begin with a resync.
    #[error("the stream's first message is not a resync")]
    NoResync,
    /// The version went back.
    #[error("policy version {got} after {had}: versions only grow on a stream")]
    Backwards {
        /// The version held.
        had: u64,
        /// The version received.
        got: u64,
    },
    /// A change to a set or map that was never sent.
    #[error("a change to {0}, which was never sent")]
    Unknown(String),
    /// A policy naming a set or map that was never sent.
    #[error(transparent)]
    Missing(#[from] MissingId),
}

/// Frames an update for the stream: its length, then the message.
pub fn encode(update: &Update) -> Vec<u8> {
    let mut out = vec![0; 4];
    // Addresses in the policy body are written as text, as JSON would: serde reads
    // flattened fields back only in that form. The bulk of addresses is in `Addresses`.
    let mut serializer = rmp_serde::Serializer::new(&mut out)
        .with_struct_map()
        .with_human_readable();
    // Serializing plain data into a Vec cannot fail: no I/O, every map key is a string or
    // an integer.
    update
        .serialize(&mut serializer)
        .expect("an update serializes");
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// The length of the first frame of `buf` (its 4-byte header included), once all of it is
/// there; `Ok(None)` while more bytes are needed.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_MESSAGE {
        return Err(WireError::TooLarge(len));
    }
    Ok((buf.len() >= len + 4).then_some(len + 4))
}

/// Reads one frame (header included) made by [`encode`].
pub fn decode(frame: &[u8]) -> Result<Update, WireError> {
    let body = frame.get(4..).unwrap_or_default();
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(body).with_human_readable();
    Ok(Update::deserialize(&mut deserializer)?)
}

/// What a proxy holds from its stream.
#[derive(Debug, Default)]
pub struct Held {
    version: Option<u64>,
    sets: HashMap<SetId, Arc<IpSet>>,
    maps: HashMap<MapId, Arc<NamedPortMap>>,
    services: BTreeMap<String, Arc<ServicePorts>>,
    table: Arc<ServiceTable>,
    policy: Option<PodPolicy<ById>>,
}

impl Held {
    /// Takes one update; returns the pod's whole policy once there is one. On an error the
    /// stream must be dropped: what is held is then incomplete.
    pub fn apply(&mut self, update: Update) -> Result<Option<Versioned>, WireError> {
        match self.version {
            None if !update.resync => return Err(WireError::NoResync),
            Some(had) if update.version < had => {
                return Err(WireError::Backwards {
                    had,
                    got: update.version,
                })
            }
            _ => {}
        }
        if update.resync {
            *self = Self::default();
        }
        self.version = Some(update.version);
        for (id, change) in update.sets {
            let new = match change {
                Change::Dropped => {
                    self.sets.remove(&id);
                    continue;
                }
                Change::Full(a) => IpSet::new(a.ips()),
                Change::Diff { added, removed } => {
                    let old = self
                        .sets
                        .get(&id)
                        .ok_or_else(|| WireError::Unknown(format!("address set {id}")))?;
                    let mut set = IpSet::clone(old);
                    for ip in removed.ips() {
                        set.remove(ip);
                    }
                    for ip in added.ips() {
                        set.insert(ip);
                    }
                    set
                }
            };
            self.sets.insert(id, Arc::new(new));
        }
        for (id, change) in update.maps {
            let new = match change {
                Change::Dropped => {
                    self.maps.remove(&id);
                    continue;
                }
                Change::Full(p) => NamedPortMap::new(p.pairs()),
                Change::Diff { added, removed } => {
                    let old = self
                        .maps
                        .get(&id)
                        .ok_or_else(|| WireError::Unknown(format!("named-port map {id}")))?;
                    let removed = removed.pairs();
                    let mut pairs = minus(old.pairs(), &removed);
                    pairs.extend(added.pairs());
                    NamedPortMap::new(pairs)
                }
            };
            self.maps.insert(id, Arc::new(new));
        }
        if !update.services.is_empty() {
            for (key, entries) in update.services {
                match entries {
                    Some(e) => self.services.insert(key, e),
                    None => self.services.remove(&key),
                };
            }
            self.table = Arc::new(ServiceTable::new(
                self.services
                    .iter()
                    .flat_map(|(k, s)| s.entries(k))
                    .collect(),
            ));
        }
        if let Some(policy) = update.policy {
            self.policy = Some(policy);
        }
        let Some(body) = &self.policy else {
            return Ok(None);
        };
        let policy = body.resolve(
            |id| self.sets.get(&id).cloned(),
            |id| self.maps.get(&id).cloned(),
            self.table.clone(),
        )?;
        Ok(Some(Versioned {
            version: update.version,
            policy,
        }))
    }
}

/// What the controller sent one proxy, to send it only what changed next time.
#[derive(Debug, Default)]
pub struct Sent {
    started: bool,
    sets: HashMap<SetId, Arc<IpSet>>,
    maps: HashMap<MapId, Arc<NamedPortMap>>,
    policy: Option<Arc<PodPolicy<ById>>>,
}

impl Sent {
    /// The update that brings the proxy to `policy` with the sets and maps it names as
    /// `set` and `map` give them, and `services` (every Service on the first update, those
    /// that changed since the last one after); `None` when the proxy holds all that already.
    pub fn next(
        &mut self,
        version: u64,
        policy: &Arc<PodPolicy<ById>>,
        set: impl Fn(SetId) -> Option<Arc<IpSet>>,
        map: impl Fn(MapId) -> Option<Arc<NamedPortMap>>,
        services: Vec<(String, Option<Arc<ServicePorts>>)>,
    ) -> Option<Update> {
        let resync = !self.started;
        let mut update = Update {
            version,
            resync,
            services,
            ..Update::default()
        };
        let mut sets = HashMap::new();
        for id in policy.sets() {
            let Some(new) = set(id) else { continue };
            match self.sets.get(&id) {
                Some(old) if Arc::ptr_eq(old, &new) || old == &new => {}
                Some(old) => update.sets.push((id, set_change(old, &new))),
                None => update
                    .sets
                    .push((id, Change::Full(Addresses::new(new.as_slice())))),
            }
            sets.insert(id, new);
        }
        let mut maps = HashMap::new();
        for id in policy.maps() {
            let Some(new) = map(id) else { continue };
            match self.maps.get(&id) {
                Some(old) if Arc::ptr_eq(old, &new) || old == &new => {}
                Some(old) => update.maps.push((id, map_change(old, &new))),
                None => update
                    .maps
                    .push((id, Change::Full(PortPairs::new(new.pairs())))),
            }
            maps.insert(id, new);
        }
        update.sets.extend(
            self.sets
                .keys()
                .filter(|id| !sets.contains_key(id))
                .map(|id| (*id, Change::Dropped)),
        );
        update.maps.extend(
            self.maps
                .keys()
                .filter(|id| !maps.contains_key(id))
                .map(|id| (*id, Change::Dropped)),
        );
        if self.policy.as_ref() != Some(policy) {
            update.policy = Some(PodPolicy::clone(policy));
            self.policy = Some(policy.clone());
        }
        self.sets = sets;
        self.maps = maps;
        self.started = true;
        let empty = update.sets.is_empty()
            && update.maps.is_empty()
            && update.services.is_empty()
            && update.policy.is_none();
        (resync || !empty).then_some(update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ips: &[&str]) -> IpSet {
        IpSet::new(ips.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn addresses_survive_the_wire_in_order() {
        let s = set(&[
            "10.0.0.3",
            "10.0.0.1",
            "fd00::1",
            "192.168.1.1",
            "::ffff:1.2.3.4",
        ]);
        let a = Addresses::new(s.as_slice());
        let bytes = rmp_serde::to_vec_named(&a).unwrap();
        let back: Addresses = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back.ips(), s.as_slice());
        // Successive pod addresses take one byte each.
        let many: Vec<IpAddr> = (1..=100u32)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a40_0000 + i)))
            .collect();
        let n = rmp_serde::to_vec_named(&Addresses::new(&many))
            .unwrap()
            .len();
        assert!(n < 120, "{n} bytes for 100 successive addresses");
    }

    #[test]
    fn a_set_change_is_a_diff_when_that_is_smaller() {
        let old = set(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]);
        let new = set(&["10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5"]);
        let Change::Diff { added, removed } = set_change(&old, &new) else {
            panic!("a diff")
        };
        assert_eq!(added.ips(), set(&["10.0.0.5"]).as_slice());
        assert_eq!(removed.ips(), set(&["10.0.0.3"]).as_slice());
        assert!(matches!(
            set_change(&old, &set(&["10.9.9.9"])),
            Change::Full(_)
        ));
    }

    #[test]
    fn services_come_back_as_the_compiler_made_them() {
        let entries: Vec<ServiceEntry> = ["10.96.0.1", "fd00::1"]
            .iter()
            .flat_map(|ip| {
                [(80, Protocol::Tcp), (53, Protocol::Udp)].map(|(port, protocol)| {
                    let ip: IpAddr = ip.parse().unwrap();
                    let backends = [("10.0.0.1", 8080), ("10.0.0.2", 8080), ("fd00::5", 8080)]
                        .iter()
                        .map(|(b, p)| (b.parse::<IpAddr>().unwrap(), *p))
                        .filter(|(b, _)| b.is_ipv4() == ip.is_ipv4())
                        .collect();
                    ServiceEntry {
                        ip,
                        port,
                        protocol,
                        service: "ns/web".into(),
                        backends,
                    }
                })
            })
            .collect();
        let mut sorted = entries.clone();
        sorted.sort_by_key(|e| (e.port, e.protocol, e.ip));
        let mut back = ServicePorts::new(&entries).entries("ns/web");
        back.sort_by_key(|e| (e.port, e.protocol, e.ip));
        assert_eq!(back, sorted);
    }

    #[test]
    fn a_proxy_that_missed_the_resync_refuses_the_stream() {
        let mut held = Held::default();
        let update = Update {
            version: 3,
            ..Update::default()
        };
        assert!(matches!(held.apply(update), Err(WireError::NoResync)));
    }

    #[test]
    fn frames_are_delimited_and_size_checked() {
        let update = Update {
            version: 9,
            resync: true,
            ..Update::default()
        };
        let frame = encode(&update);
        assert_eq!(frame_len(&frame[..3]).unwrap(), None);
        assert_eq!(frame_len(&frame[..frame.len() - 1]).unwrap(), None);
        assert_eq!(frame_len(&frame).unwrap(), Some(frame.len()));
        assert_eq!(decode(&frame).unwrap(), update);
        assert!(matches!(
            frame_len(&[0xff, 0xff, 0xff, 0xff]),
            Err(WireError::TooLarge(_))
        ));
    }
}
