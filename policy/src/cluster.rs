//! The cluster state policies are compiled against: namespaces, pods, services, endpoint
//! slices and policies, however they were read.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use crate::policy::{Policy, PolicyId};
use crate::ports::{ContainerPort, PortRef, Protocol};
use crate::selector::Labels;

/// The label every namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Annotation that puts a namespace, pod or policy in audit mode.
pub const MODE_ANNOTATION: &str = "palisade.dev/mode";
/// Pod annotation, or namespace label, that asks for the sidecar (value `enabled`).
pub const INJECT_KEY: &str = "palisade.dev/inject";
/// Annotation (`"true"`) on a namespace or pod that makes its `toFQDNs` rules require the
/// allowed name in the TLS server name or HTTP `Host`, unless a rule says otherwise.
pub const REQUIRE_SNI_ANNOTATION: &str = "palisade.dev/require-sni";

/// A namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// The name.
    pub name: String,
    /// The labels, `kubernetes.io/metadata.name` included.
    pub labels: Labels,
    /// The annotations.
    pub annotations: Labels,
}

impl Namespace {
    /// A namespace no manifest declared: only its name label.
    pub fn implicit(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            labels: Labels::from([(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned())]),
            annotations: Labels::new(),
        }
    }
}

/// A pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// The labels.
    pub labels: Labels,
    /// The annotations.
    pub annotations: Labels,
    /// `status.podIPs` (or `status.podIP`), primary first.
    pub ips: Vec<IpAddr>,
    /// `status.hostIPs` (or `status.hostIP`), primary first: the node the pod runs on.
    pub host_ips: Vec<IpAddr>,
    /// Whether the pod uses the node's network namespace.
    pub host_network: bool,
    /// The ports its containers declare.
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The number a named container port has for `protocol`, if the pod declares it.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }

    /// The pod's address of `family`, if it has one.
    pub fn ip_of(&self, family: Family) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| Family::of(*ip) == family)
    }

    /// The pod's address in the family of `like` (its primary address if it has none).
    pub fn ip_like(&self, like: IpAddr) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == like.is_ipv4())
            .or_else(|| self.ips.first().copied())
    }

    /// Whether `toFQDNs` rules require SNI by default for the pod: its own annotation, or
    /// else that of its namespace (`namespace`), says `"true"`.
    pub fn requires_sni(&self, namespace: Option<&Namespace>) -> bool {
        let own = |a: &Labels| a.get(REQUIRE_SNI_ANNOTATION).map(|v| v == "true");
        own(&self.annotations)
            .or_else(|| namespace.and_then(|n| own(&n.annotations)))
            .unwrap_or(false)
    }
}

/// An IP family. A dual-stack pod is reached on each of its addresses, and policies can
/// treat them differently (an `ipBlock` is of one family), so each family is judged apart.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum Family {
    /// IPv4.
    #[default]
    #[serde(rename = "IPv4")]
    V4,
    /// IPv6.
    #[serde(rename = "IPv6")]
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of `ip` (an IPv4-mapped IPv6 address is IPv6: that is how it travels).
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// `IPv4` or `IPv6`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name (required when a Service has several).
    pub name: Option<String>,
    /// The port on the ClusterIP.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// The backend port: a number, or a container port name.
    pub target_port: PortRef,
}

/// A Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// `spec.clusterIPs` (empty for a headless Service).
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.selector`; `None` when endpoints are managed by hand.
    pub selector: Option<Labels>,
    /// The ports.
    pub ports: Vec<ServicePort>,
}

/// A port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPort {
    /// Matches the Service port's name.
    pub name: Option<String>,
    /// The backend port number.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

/// An endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// Whether it is ready to serve (unset counts as ready).
    pub ready: bool,
}

/// An EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// The Service it belongs to (`kubernetes.io/service-name`).
    pub service: Option<String>,
    /// The ports.
    pub ports: Vec<EndpointPort>,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// One backend a Service port leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    /// The backend's address.
    pub ip: IpAddr,
    /// The backend's port.
    pub port: u16,
}

/// Everything policies are compiled against.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// Namespaces by name, declared or implied.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Pods, sorted by namespace and name.
    pub pods: Vec<Pod>,
    /// Services, sorted by namespace and name.
    pub services: Vec<Service>,
    /// EndpointSlices.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Policies of every kind, sorted by kind, namespace and name.
    pub policies: Vec<Policy>,
}

/// Where addresses are assigned from when a pod has none: 198.18.0.0/15, reserved for
/// benchmarking networks (RFC 2544), so that it is never a real host's address.
const ASSIGN_FROM: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);

impl Cluster {
    /// Sorts objects, keeps the last of objects that share an identity (as applying the
    /// manifests in order would), and declares implicitly every namespace objects name.
    pub fn finish(&mut self) {
        fn last_wins<T, K: Ord>(items: &mut Vec<T>, key: impl Fn(&T) -> K) {
            // A stable sort keeps equal keys in the order they were added; keep the last.
            items.sort_by_key(&key);
            let mut out: Vec<T> = Vec::with_capacity(items.len());
            for item in items.drain(..) {
                if out.last().is_some_and(|prev| key(prev) == key(&item)) {
                    out.pop();
                }
                out.push(item);
            }
            *items = out;
        }
        last_wins(&mut self.pods, |p| (p.namespace.clone(), p.name.clone()));
        last_wins(&mut self.services, |s| {
            (s.namespace.clone(), s.name.clone())
        });
        last_wins(&mut self.endpoint_slices, |s| {
            (s.namespace.clone(), s.name.clone())
        });
        last_wins(&mut self.policies, |p| p.id.clone());
        let named: BTreeSet<String> = self
            .pods
            .iter()
            .map(|p| p.namespace.clone())
            .chain(self.services.iter().map(|s| s.namespace.clone()))
            .chain(self.policies.iter().map(|p| p.id.namespace.clone()))
            .collect();
        for ns in named {
            self.namespaces
                .entry(ns.clone())
                .or_insert_with(|| Namespace::implicit(&ns));
        }
    }

    /// Gives every pod without an address one that no other object uses, from a range
    /// reserved for benchmarking networks (198.18.0.0/15), deterministically.
    pub fn assign_missing_ips(&mut self) {
        let used: BTreeSet<IpAddr> = self
            .pods
            .iter()
            .flat_map(|p| p.ips.iter().chain(&p.host_ips).copied())
            .chain(
                self.services
                    .iter()
                    .flat_map(|s| s.cluster_ips.iter().copied()),
            )
            .collect();
        let mut next = u32::from(ASSIGN_FROM);
        for pod in self.pods.iter_mut().filter(|p| p.ips.is_empty()) {
            let ip = loop {
                next += 1;
                let ip = IpAddr::V4(Ipv4Addr::from(next));
                // Skip .0 and .255 so that no assigned address looks like a network or
                // broadcast address in a /24.
                if !used.contains(&ip) && !matches!(next & 0xff, 0 | 255) {
                    break ip;
                }
            };
            pod.ips.push(ip);
        }
    }

    /// The namespace named `name` (declared or implied).
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    /// The pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods
            .binary_search_by(|p| (p.namespace.as_str(), p.name.as_str()).cmp(&(namespace, name)))
            .ok()
            .map(|i| &self.pods[i])
    }

    /// The policy `id`.
    pub fn policy(&self, id: &PolicyId) -> Option<&Policy> {
        self.policies
            .binary_search_by(|p| p.id.cmp(id))
            .ok()
            .map(|i| &self.policies[i])
    }

    /// The nodes: every `hostIPs` address a pod names.
    pub fn node_ips(&self) -> BTreeSet<IpAddr> {
        self.pods
            .iter()
            .flat_map(|p| p.host_ips.iter().copied())
            .collect()
    }

    /// Whether a pod asks for palisade's sidecar: its annotation `palisade.dev/inject:
    /// enabled`, or the label `palisade.dev/inject=enabled` on its namespace.
    pub fn pod_asks_for_injection(&self, pod: &Pod) -> bool {
        let enabled = |m: &Labels| m.get(INJECT_KEY).is_some_and(|v| v == "enabled");
        enabled(&pod.annotations)
            || self
                .namespace(&pod.namespace)
                .is_some_and(|n| enabled(&n.labels))
    }

    /// Whether a namespace or pod asks for audit mode.
    pub fn pod_in_audit_mode(&self, pod: &Pod) -> bool {
        let audit = |a: &Labels| a.get(MODE_ANNOTATION).is_some_and(|m| m == "audit");
        audit(&pod.annotations)
            || self
                .namespace(&pod.namespace)
                .is_some_and(|n| audit(&n.annotations))
    }
}

impl Service {
    /// Whether the Service's selector picks `pod` (a Service without a selector, or with an
    /// empty one, picks no pod: its endpoints are managed by hand).
    pub fn selects(&self, pod: &Pod) -> bool {
        self.selector.as_ref().is_some_and(|s| {
            !s.is_empty()
                && pod.namespace == self.namespace
                && s.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
        })
    }

    /// Where one port of the Service leads, found as the endpoints controller finds it: from
    /// its EndpointSlices when it has any, otherwise from the pods its selector picks (of
    /// `pods`, the pods of its namespace).
    pub fn backends<'a>(
        &self,
        port: &ServicePort,
        slices: &[&EndpointSlice],
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Vec<Backend> {
        let mut out = BTreeSet::new();
        if !slices.is_empty() {
            for slice in slices {
                let Some(ep_port) = slice
                    .ports
                    .iter()
                    .find(|p| p.name == port.name && p.protocol == port.protocol)
                else {
                    continue;
                };
                for ep in slice.endpoints.iter().filter(|e| e.ready) {
                    out.extend(ep.addresses.iter().map(|&ip| Backend {
                        ip,
                        port: ep_port.port,
                    }));
                }
            }
        } else {
            for pod in pods.into_iter().filter(|p| self.selects(p)) {
                let target = match &port.target_port {
                    PortRef::Number(n) => Some(*n),
                    PortRef::Name(name) => pod.named_port(name, port.protocol),
                };
                if let Some(target) = target {
                    out.extend(pod.ips.iter().map(|&ip| Backend { ip, port: target }));
                }
            }
        }
        out.into_iter().collect()
    }
}

/// Whether an address is one a pod reaches itself by, whatever its own addresses are.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}
