//! The large cluster palisade's benchmarks run on, generated deterministically: 10,000
//! pods in 100 namespaces on 20 nodes, and 1,000 NetworkPolicies (10 per namespace) of the
//! shapes real clusters use; optionally one Service per app of each namespace. Shared by
//! `policy/benches/compile.rs` and `controller/benches/streams.rs`.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};

use palisade_policy::cluster::{
    Cluster, Namespace, Pod, Service, ServicePort, NAMESPACE_NAME_LABEL,
};
use palisade_policy::peer::{IpBlock, Namespaces, Peer};
use palisade_policy::policy::{Origin, Policy, PolicyId, PolicyKind, PortRule, Rule, Source, L7};
use palisade_policy::ports::{ContainerPort, PortRef, PortSpec, Protocol};
use palisade_policy::selector::{LabelSelector, Labels, Operator, Requirement};

pub const NAMESPACES: usize = 100;
pub const PODS_PER_NAMESPACE: usize = 100;
pub const NODES: u32 = 20;
const APPS: u64 = 20;
const TEAMS: usize = 10;
const TIERS: [&str; 3] = ["web", "api", "db"];
/// Pod addresses start after this one.
pub const POD_NET: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 0);
/// Node addresses start after this one.
pub const NODE_NET: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 0);

/// SplitMix64: small, seedable, and the same on every machine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector::from_labels(pairs.iter().copied())
}

fn requirement(key: &str, operator: Operator, values: &[&str]) -> Requirement {
    Requirement {
        key: key.into(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

fn namespace_name(i: usize) -> String {
    match i {
        0 => "kube-system".into(),
        _ => format!("ns-{i:02}"),
    }
}

fn container_port(name: &str, port: u16, protocol: Protocol) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        port,
        protocol,
    }
}

fn port(protocol: Protocol, port: u16) -> PortRule {
    port_range(protocol, port, None)
}

fn port_range(protocol: Protocol, port: u16, end_port: Option<u16>) -> PortRule {
    PortRule {
        spec: PortSpec {
            protocol: Some(protocol),
            port: Some(PortRef::Number(port)),
            end_port,
        },
        l7: L7::default(),
        origin: Origin::default(),
    }
}

fn named_port(name: &str) -> PortRule {
    PortRule {
        spec: PortSpec {
            protocol: Some(Protocol::Tcp),
            port: Some(PortRef::Name(name.into())),
            end_port: None,
        },
        l7: L7::default(),
        origin: Origin::default(),
    }
}

/// A `podSelector` peer alone: pods of the policy's namespace.
fn pods_here(ns: &str, pods: LabelSelector) -> Peer {
    Peer::Pods {
        namespaces: Namespaces::Named(ns.into()),
        pods,
    }
}

/// A `namespaceSelector` peer, with a `podSelector` in the same entry (`{}` for every pod).
fn pods_in(namespaces: LabelSelector, pods: LabelSelector) -> Peer {
    Peer::Pods {
        namespaces: Namespaces::Matching(namespaces),
        pods,
    }
}

fn block(cidr: &str, except: &[&str]) -> Peer {
    Peer::IpBlock(IpBlock {
        cidr: cidr.parse().expect("a valid CIDR"),
        except: except
            .iter()
            .map(|e| e.parse().expect("a valid CIDR"))
            .collect(),
    })
}

fn rule(peers: Vec<Peer>, ports: Vec<PortRule>) -> Rule {
    Rule {
        peers: Some(peers),
        ports,
        origin: Origin::default(),
        peer_origins: Vec::new(),
        require_sni: None,
    }
}

fn policy(
    ns: &str,
    name: &str,
    pod_selector: LabelSelector,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
) -> Policy {
    Policy {
        id: PolicyId {
            kind: PolicyKind::NetworkPolicy,
            namespace: ns.into(),
            name: name.into(),
        },
        source: Source::default(),
        pod_selector,
        ingress,
        egress,
        audit: false,
    }
}

/// The ten policies of one namespace.
fn namespace_policies(ns: &str, rng: &mut Rng) -> Vec<Policy> {
    let app = |rng: &mut Rng| format!("app-{}", rng.below(APPS));
    let team = |rng: &mut Rng| format!("team-{}", rng.below(TEAMS as u64));
    let (app_a, app_b) = (app(rng), app(rng));
    let (team_a, team_b, team_c) = (team(rng), team(rng), team(rng));
    vec![
        // Default deny, both directions.
        policy(ns, "default-deny", sel(&[]), Some(vec![]), Some(vec![])),
        // Every pod may resolve names through kube-dns.
        policy(
            ns,
            "allow-dns",
            sel(&[]),
            None,
            Some(vec![rule(
                vec![pods_in(
                    sel(&[(NAMESPACE_NAME_LABEL, "kube-system")]),
                    sel(&[("k8s-app", "kube-dns")]),
                )],
                vec![port(Protocol::Udp, 53), port(Protocol::Tcp, 53)],
            )]),
        ),
        // Web pods take HTTP from every pod of the namespace.
        policy(
            ns,
            "web-from-namespace",
            sel(&[("tier", "web")]),
            Some(vec![rule(
                vec![pods_here(ns, sel(&[]))],
                vec![port(Protocol::Tcp, 80)],
            )]),
            None,
        ),
        // API pods take the named port `http` from web pods of the namespace.
        policy(
            ns,
            "api-from-web",
            sel(&[("tier", "api")]),
            Some(vec![rule(
                vec![pods_here(ns, sel(&[("tier", "web")]))],
                vec![named_port("http")],
            )]),
            None,
        ),
        // API pods take HTTP from two teams' namespaces (two entries: OR).
        policy(
            ns,
            "api-from-teams",
            sel(&[("tier", "api")]),
            Some(vec![rule(
                vec![
                    pods_in(sel(&[("team", &team_a)]), sel(&[])),
                    pods_in(sel(&[("team", &team_b)]), sel(&[])),
                ],
                vec![port(Protocol::Tcp, 80)],
            )]),
            None,
        ),
        // Databases take connections from API pods of some teams' namespaces (one entry: AND).
        policy(
            ns,
            "db-from-api",
            sel(&[("tier", "db")]),
            Some(vec![rule(
                vec![pods_in(
                    LabelSelector {
                        match_labels: vec![],
                        match_expressions: vec![requirement(
                            "team",
                            Operator::In,
                            &[&team_a, &team_c],
                        )],
                    },
                    sel(&[("tier", "api")]),
                )],
                vec![named_port("postgres")],
            )]),
            None,
        ),
        // Scrapers outside the cluster read metrics, except from one subnet.
        policy(
            ns,
            "metrics-from-monitoring",
            LabelSelector {
                match_labels: vec![],
                match_expressions: vec![requirement("app", Operator::Exists, &[])],
            },
            Some(vec![rule(
                vec![block("172.16.0.0/12", &["172.16.5.0/24", "172.20.0.0/16"])],
                vec![named_port("metrics")],
            )]),
            None,
        ),
        // One app takes a port range from every pod of the namespace but databases.
        policy(
            ns,
            "app-range",
            sel(&[("app", &app_a)]),
            Some(vec![rule(
                vec![pods_here(
                    ns,
                    LabelSelector {
                        match_labels: vec![],
                        match_expressions: vec![requirement("tier", Operator::NotIn, &["db"])],
                    },
                )],
                vec![
                    port_range(Protocol::Tcp, 8000, Some(8999)),
                    port_range(Protocol::Udp, 9000, Some(9100)),
                ],
            )]),
            None,
        ),
        // API pods reach databases anywhere, on the destination's named port.
        policy(
            ns,
            "api-to-db",
            sel(&[("tier", "api")]),
            None,
            Some(vec![rule(
                vec![pods_in(sel(&[]), sel(&[("tier", "db")]))],
                vec![named_port("postgres")],
            )]),
        ),
        // Web pods and one app reach the internet on 443, and API pods of the namespace.
        policy(
            ns,
            "web-egress",
            LabelSelector {
                match_labels: vec![],
                match_expressions: vec![requirement("app", Operator::In, &[&app_a, &app_b])],
            },
            None,
            Some(vec![
                rule(
                    vec![block(
                        "0.0.0.0/0",
                        &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
                    )],
                    vec![port(Protocol::Tcp, 443)],
                ),
                rule(
                    vec![pods_here(ns, sel(&[("tier", "api")]))],
                    vec![named_port("http")],
                ),
            ]),
        ),
    ]
}

/// The generated cluster, finished.
pub fn cluster() -> Cluster {
    let mut rng = Rng(0x005e_ed0f_9a11_5ade);
    let mut cluster = Cluster::default();
    let mut next_ip = u32::from(POD_NET);
    for n in 0..NAMESPACES {
        let name = namespace_name(n);
        let team = format!("team-{}", n % TEAMS);
        let env = if n % 3 == 0 { "staging" } else { "prod" };
        cluster.namespaces.insert(
            name.clone(),
            Namespace {
                labels: labels(&[(NAMESPACE_NAME_LABEL, &name), ("team", &team), ("env", env)]),
                name: name.clone(),
                annotations: Labels::new(),
            },
        );
        for p in 0..PODS_PER_NAMESPACE {
            next_ip += 1;
            let mut pod = Pod {
                namespace: name.clone(),
                name: format!("pod-{p:03}"),
                labels: Labels::new(),
                annotations: Labels::new(),
                ips: vec![IpAddr::V4(Ipv4Addr::from(next_ip))],
                host_ips: vec![IpAddr::V4(Ipv4Addr::from(
                    u32::from(NODE_NET) + 1 + rng.below(NODES.into()) as u32,
                ))],
                host_network: false,
                ports: vec![],
            };
            if n == 0 && p < 2 {
                pod.labels = labels(&[("k8s-app", "kube-dns")]);
                pod.ports = vec![
                    container_port("dns", 53, Protocol::Udp),
                    container_port("dns-tcp", 53, Protocol::Tcp),
                ];
            } else {
                let tier = *rng.pick(&TIERS);
                pod.labels =
                    labels(&[("app", &format!("app-{}", rng.below(APPS))), ("tier", tier)]);
                pod.ports = vec![
                    container_port("http", 80, Protocol::Tcp),
                    container_port("metrics", 8080, Protocol::Tcp),
                ];
                if tier == "db" {
                    pod.ports
                        .push(container_port("postgres", 5432, Protocol::Tcp));
                }
            }
            cluster.pods.push(pod);
        }
        cluster.policies.extend(namespace_policies(&name, &mut rng));
    }
    cluster.finish();
    assert_eq!(cluster.pods.len(), NAMESPACES * PODS_PER_NAMESPACE);
    assert_eq!(cluster.policies.len(), NAMESPACES * 10);
    cluster
}

/// The same cluster with one Service per app of each namespace (port 80 to the named port
/// `http`). The timed cluster has none; this shows what Services add, since every compiled
/// policy carries the cluster's whole Service table.
pub fn with_services(mut cluster: Cluster) -> Cluster {
    let mut apps: Vec<(String, String)> = cluster
        .pods
        .iter()
        .filter_map(|p| Some((p.namespace.clone(), p.labels.get("app")?.clone())))
        .collect();
    apps.sort();
    apps.dedup();
    for (i, (namespace, app)) in apps.into_iter().enumerate() {
        cluster.services.push(Service {
            name: app.clone(),
            namespace,
            cluster_ips: vec![IpAddr::V4(Ipv4Addr::from(
                u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32,
            ))],
            selector: Some(labels(&[("app", &app)])),
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Protocol::Tcp,
                target_port: PortRef::Name("http".into()),
            }],
        });
    }
    cluster.finish();
    cluster
}

/// A typical pod: the first API pod of a namespace in the middle (six of the namespace's
/// ten policies select it).
pub fn typical_pod(cluster: &Cluster) -> &Pod {
    cluster
        .pods
        .iter()
        .find(|p| p.namespace == "ns-42" && p.labels.get("tier").is_some_and(|t| t == "api"))
        .expect("ns-42 has an API pod")
}
