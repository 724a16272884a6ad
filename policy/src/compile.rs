//! Compiling cluster state into each pod's policy. Peers are resolved once per distinct
//! selector and shared by every pod whose policy names them, so compiling every pod of a
//! large cluster costs little more than compiling one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::cluster::{Cluster, Endpoints, Pod};
use crate::compiled::{
    CompiledPeer, CompiledPort, CompiledRule, IpSet, Mode, NamedPortMap, PeerMatch, PodPolicy,
    PolicyRef, PortMatch, ServiceEntry, ServiceTable, Side,
};
use crate::peer::{Entity, Namespaces, Peer};
use crate::policy::{Direction, PortRule};
use crate::ports::{PortRef, Protocol};
use crate::selector::LabelSelector;

/// A peer as far as it can be compiled without knowing the selected pod.
#[derive(Debug, Clone)]
enum PeerTemplate {
    Ready(CompiledPeer),
    /// Cilium's `host`: the selected pod's own node.
    Host(u32),
}

type RuleTemplate = Option<Vec<PeerTemplate>>;

/// Compiles pods' policies against one snapshot of the cluster.
pub struct Compiler<'c> {
    cluster: &'c Cluster,
    /// Indexes of the policies of each namespace.
    policies_by_ns: HashMap<&'c str, Vec<usize>>,
    /// For each policy, its ingress and egress rules' peers.
    peers: Vec<[Vec<RuleTemplate>; 2]>,
    /// Named ports of egress rules by (policy, rule, port) index, resolved against the pods
    /// the rule can reach.
    named_ports: HashMap<(usize, usize, usize), Arc<NamedPortMap>>,
    services: Arc<ServiceTable>,
}

impl<'c> Compiler<'c> {
    /// Resolves every policy's peers against the cluster.
    pub fn new(cluster: &'c Cluster) -> Self {
        let mut pods_by_ns: HashMap<&str, Vec<&Pod>> = HashMap::new();
        for pod in cluster.pods.iter().filter(|p| !p.host_network) {
            pods_by_ns.entry(&pod.namespace).or_default().push(pod);
        }
        let mut policies_by_ns: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, p) in cluster.policies.iter().enumerate() {
            policies_by_ns.entry(&p.id.namespace).or_default().push(i);
        }
        let cluster_ips = Arc::new(IpSet::new(
            cluster
                .pods
                .iter()
                .flat_map(|p| p.ips.iter().copied())
                .chain(cluster.node_ips())
                .collect(),
        ));

        let mut resolver = Resolver {
            cluster,
            pods_by_ns: &pods_by_ns,
            cache: HashMap::new(),
        };
        let peers: Vec<[Vec<RuleTemplate>; 2]> = cluster
            .policies
            .iter()
            .map(|policy| {
                [Direction::Ingress, Direction::Egress].map(|dir| {
                    let rules = policy.rules(dir).unwrap_or_default();
                    rules
                        .iter()
                        .map(|rule| {
                            rule.peers.as_ref().map(|peers| {
                                peers
                                    .iter()
                                    .enumerate()
                                    .map(|(i, p)| resolver.peer(i as u32, p, &cluster_ips))
                                    .collect()
                            })
                        })
                        .collect()
                })
            })
            .collect();

        let named_ports = egress_named_ports(cluster, &peers);
        Self {
            cluster,
            policies_by_ns,
            peers,
            named_ports,
            services: Arc::new(service_table(cluster)),
        }
    }

    /// The service table every pod's policy carries.
    pub fn services(&self) -> &Arc<ServiceTable> {
        &self.services
    }

    /// Compiles the policy of one pod of the cluster.
    pub fn compile(&self, pod: &Pod) -> PodPolicy {
        let mut ingress = Side::default();
        let mut egress = Side::default();
        // A pod on the node's network cannot be given a proxy: nothing isolates it.
        let indexes = match pod.host_network {
            true => &[][..],
            false => self
                .policies_by_ns
                .get(pod.namespace.as_str())
                .map_or(&[][..], Vec::as_slice),
        };
        for &pi in indexes {
            let policy = &self.cluster.policies[pi];
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
                    let peers = self.peers[pi][d][ri]
                        .as_ref()
                        .map(|templates| templates.iter().map(|t| instantiate(t, pod)).collect());
                    side.rules.push(CompiledRule {
                        policy: policy_index,
                        rule: ri as u32,
                        peers,
                        ports: rule
                            .ports
                            .iter()
                            .enumerate()
                            .map(|(xi, p)| self.port(p, dir, pod, (pi, ri, xi)))
                            .collect(),
                    });
                }
            }
        }
        PodPolicy {
            pod: pod.key(),
            ips: pod.ips.clone(),
            host_ips: pod.host_ips.clone(),
            mode: if self.cluster.pod_in_audit_mode(pod) {
                Mode::Audit
            } else {
                Mode::Enforce
            },
            ingress,
            egress,
            services: self.services.clone(),
        }
    }

    fn port(
        &self,
        p: &PortRule,
        dir: Direction,
        pod: &Pod,
        at: (usize, usize, usize),
    ) -> CompiledPort {
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
            Some(PortRef::Name(_)) => match self.named_ports.get(&at) {
                Some(map) => PortMatch::Named(map.clone()),
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

fn instantiate(t: &PeerTemplate, pod: &Pod) -> CompiledPeer {
    match t {
        PeerTemplate::Ready(p) => p.clone(),
        PeerTemplate::Host(index) => CompiledPeer {
            index: *index,
            matches: PeerMatch::Ips(Arc::new(IpSet::new(pod.host_ips.clone()))),
        },
    }
}

/// Resolves selector peers to address sets, once per distinct selector.
struct Resolver<'a, 'c> {
    cluster: &'c Cluster,
    pods_by_ns: &'a HashMap<&'c str, Vec<&'c Pod>>,
    cache: HashMap<(Namespaces, LabelSelector), Arc<IpSet>>,
}

impl Resolver<'_, '_> {
    fn peer(&mut self, index: u32, peer: &Peer, cluster_ips: &Arc<IpSet>) -> PeerTemplate {
        let matches = match peer {
            Peer::Pods { namespaces, pods } => {
                let key = (namespaces.clone(), pods.clone());
                let set = match self.cache.get(&key) {
                    Some(set) => set.clone(),
                    None => {
                        let set = Arc::new(self.pods(namespaces, pods));
                        self.cache.insert(key, set.clone());
                        set
                    }
                };
                PeerMatch::Ips(set)
            }
            Peer::IpBlock(b) => PeerMatch::Block(b.clone()),
            Peer::Fqdn(names) => PeerMatch::Names(names.as_slice().into()),
            Peer::Entity(Entity::All) => PeerMatch::Any,
            Peer::Entity(Entity::Cluster) => PeerMatch::Ips(cluster_ips.clone()),
            Peer::Entity(Entity::World) => PeerMatch::NotIps(cluster_ips.clone()),
            Peer::Entity(Entity::Host) => return PeerTemplate::Host(index),
        };
        PeerTemplate::Ready(CompiledPeer { index, matches })
    }

    fn pods(&self, namespaces: &Namespaces, selector: &LabelSelector) -> IpSet {
        let in_ns = |ns: &str| -> Vec<IpAddr> {
            self.pods_by_ns
                .get(ns)
                .into_iter()
                .flatten()
                .filter(|p| selector.matches(&p.labels))
                .flat_map(|p| p.ips.iter().copied())
                .collect()
        };
        let ips = match namespaces {
            Namespaces::Named(ns) => in_ns(ns),
            Namespaces::Matching(sel) => self
                .cluster
                .namespaces
                .values()
                .filter(|n| sel.matches(&n.labels))
                .flat_map(|n| in_ns(&n.name))
                .collect(),
        };
        IpSet::new(ips)
    }
}

/// The named ports of every egress rule. A rule whose peers are all sets of pods can only
/// reach those pods, so its map holds only them; other rules (with an ipBlock, say, which
/// may match any pod) get the map of every pod that declares the name.
fn egress_named_ports(
    cluster: &Cluster,
    peers: &[[Vec<RuleTemplate>; 2]],
) -> HashMap<(usize, usize, usize), Arc<NamedPortMap>> {
    let mut everywhere: HashMap<(&str, Option<Protocol>), Arc<NamedPortMap>> = HashMap::new();
    let mut out = HashMap::new();
    for (pi, policy) in cluster.policies.iter().enumerate() {
        for (ri, rule) in policy.egress.iter().flatten().enumerate() {
            for (xi, port) in rule.ports.iter().enumerate() {
                let Some(PortRef::Name(name)) = &port.spec.port else {
                    continue;
                };
                let all = everywhere
                    .entry((name.as_str(), port.spec.protocol))
                    .or_insert_with(|| Arc::new(named_port_map(cluster, name, port.spec.protocol)))
                    .clone();
                let sets: Option<Vec<&IpSet>> = peers[pi][1][ri].as_ref().and_then(|templates| {
                    templates
                        .iter()
                        .map(|t| match t {
                            PeerTemplate::Ready(CompiledPeer {
                                matches: PeerMatch::Ips(set),
                                ..
                            }) => Some(&**set),
                            _ => None,
                        })
                        .collect()
                });
                // Look the rule's peers up in the map: they are usually far fewer.
                let map = match sets {
                    Some(sets) => Arc::new(all.only(sets.iter().flat_map(|s| s.as_slice()))),
                    None => all,
                };
                out.insert((pi, ri, xi), map);
            }
        }
    }
    out
}

/// Where a port name leads on every pod that declares it (for `protocol`, or any).
fn named_port_map(cluster: &Cluster, name: &str, protocol: Option<Protocol>) -> NamedPortMap {
    NamedPortMap::new(
        cluster
            .pods
            .iter()
            .filter(|p| !p.host_network)
            .flat_map(|pod| {
                let port = pod
                    .ports
                    .iter()
                    .find(|c| {
                        c.name.as_deref() == Some(name) && protocol.is_none_or(|p| p == c.protocol)
                    })
                    .map(|c| c.port);
                pod.ips
                    .iter()
                    .filter_map(move |ip| port.map(|port| (*ip, port)))
            })
            .collect(),
    )
}

fn service_table(cluster: &Cluster) -> ServiceTable {
    let endpoints = Endpoints::new(cluster);
    let mut entries = Vec::new();
    for svc in &cluster.services {
        for port in &svc.ports {
            let backends: Vec<(IpAddr, u16)> = endpoints
                .backends(svc, port)
                .into_iter()
                .map(|b| (b.ip, b.port))
                .collect();
            for &ip in &svc.cluster_ips {
                entries.push(ServiceEntry {
                    ip,
                    port: port.port,
                    protocol: port.protocol,
                    service: format!("{}/{}", svc.namespace, svc.name),
                    backends: backends
                        .iter()
                        .copied()
                        .filter(|(b, _)| b.is_ipv4() == ip.is_ipv4())
                        .collect(),
                });
            }
        }
    }
    ServiceTable::new(entries)
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
