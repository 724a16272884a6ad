//! How long palisade takes to compile every pod's policy of a large cluster, and to judge
//! one flow against a compiled policy.
//!
//! The cluster is generated deterministically: 10,000 pods in 100 namespaces on 20 nodes,
//! and 1,000 NetworkPolicies (10 per namespace) of the shapes real clusters use. Targets:
//! compiling every pod ≤ 1 s, one decision ≤ 1 µs (median).
//!
//! Run with `cargo bench -p palisade-policy --bench compile`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

use palisade_policy::cluster::{
    Cluster, Namespace, Pod, Service, ServicePort, NAMESPACE_NAME_LABEL,
};
use palisade_policy::compile::Compiler;
use palisade_policy::compiled::{Flow, PodPolicy};
use palisade_policy::peer::{IpBlock, Namespaces, Peer};
use palisade_policy::policy::{
    Direction, Origin, Policy, PolicyId, PolicyKind, PortRule, Rule, Source, L7,
};
use palisade_policy::ports::{ContainerPort, PortRef, PortSpec, Protocol};
use palisade_policy::selector::{LabelSelector, Labels, Operator, Requirement};
use palisade_policy::verdict::{decide, Action};

const NAMESPACES: usize = 100;
const PODS_PER_NAMESPACE: usize = 100;
const NODES: u32 = 20;
const APPS: u64 = 20;
const TEAMS: usize = 10;
const TIERS: [&str; 3] = ["web", "api", "db"];
/// Pod addresses start after this one.
const POD_NET: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 0);
/// Node addresses start after this one.
const NODE_NET: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 0);

/// SplitMix64: small, seedable, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
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
fn cluster() -> Cluster {
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
fn with_services(mut cluster: Cluster) -> Cluster {
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

/// Flows to and from one pod: to and from other pods (of its namespace, of any, databases
/// and DNS servers), addresses outside the cluster and nodes, each on ports that such a
/// peer is likely to be reached on, so that many flows are allowed and many denied.
fn flows(cluster: &Cluster, of: &Pod, n: usize, rng: &mut Rng) -> Vec<Flow<'static>> {
    let same_ns: Vec<&Pod> = cluster
        .pods
        .iter()
        .filter(|p| p.namespace == of.namespace)
        .collect();
    let dbs: Vec<&Pod> = cluster
        .pods
        .iter()
        .filter(|p| p.labels.get("tier").is_some_and(|t| t == "db"))
        .collect();
    let dns: Vec<&Pod> = cluster
        .pods
        .iter()
        .filter(|p| p.labels.contains_key("k8s-app"))
        .collect();
    let outside = |rng: &mut Rng| {
        IpAddr::V4(Ipv4Addr::new(
            172,
            16 + rng.below(8) as u8,
            rng.below(8) as u8,
            7,
        ))
    };
    let internet = |rng: &mut Rng| IpAddr::V4(Ipv4Addr::new(8, 8, rng.below(256) as u8, 8));
    let node = |rng: &mut Rng| {
        IpAddr::V4(Ipv4Addr::from(
            u32::from(NODE_NET) + 1 + rng.below(NODES.into()) as u32,
        ))
    };
    (0..n)
        .map(|_| {
            let direction = if rng.chance(50) {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            let (peer, ports): (IpAddr, &[u16]) = match (direction, rng.below(100)) {
                (Direction::Ingress, 0..=34) => (
                    rng.pick(&same_ns).ips[0],
                    &[80, 80, 80, 8080, 5432, 8500, 22],
                ),
                (Direction::Ingress, 35..=69) => {
                    (rng.pick(&cluster.pods).ips[0], &[80, 80, 8080, 5432, 8500])
                }
                (Direction::Ingress, 70..=89) => (outside(rng), &[8080, 8080, 443]),
                (Direction::Ingress, 90..=94) => (internet(rng), &[80, 8080]),
                (Direction::Ingress, _) => (node(rng), &[8080]),
                (Direction::Egress, 0..=29) => (rng.pick(&dbs).ips[0], &[5432, 5432, 80]),
                (Direction::Egress, 30..=44) => (rng.pick(&dns).ips[0], &[53, 53, 80]),
                (Direction::Egress, 45..=59) => (rng.pick(&cluster.pods).ips[0], &[80, 5432, 8080]),
                (Direction::Egress, 60..=69) => (rng.pick(&same_ns).ips[0], &[80, 8500, 9050]),
                (Direction::Egress, 70..=89) => (internet(rng), &[443, 443, 80]),
                (Direction::Egress, _) => (outside(rng), &[443, 8080]),
            };
            let port = *rng.pick(ports);
            let protocol = if matches!(port, 53 | 9050) && rng.chance(70) {
                Protocol::Udp
            } else {
                Protocol::Tcp
            };
            Flow {
                direction,
                peer,
                port,
                protocol,
                names: &[],
            }
        })
        .collect()
}

/// A typical pod: the first API pod of a namespace in the middle (six of the namespace's
/// ten policies select it).
fn typical_pod(cluster: &Cluster) -> &Pod {
    cluster
        .pods
        .iter()
        .find(|p| p.namespace == "ns-42" && p.labels.get("tier").is_some_and(|t| t == "api"))
        .expect("ns-42 has an API pod")
}

fn compile_all(cluster: &Cluster) -> Vec<PodPolicy> {
    let compiler = Compiler::new(cluster);
    cluster.pods.iter().map(|p| compiler.compile(p)).collect()
}

fn json_size(policy: &PodPolicy) -> usize {
    serde_json::to_vec(policy)
        .expect("a compiled policy serializes")
        .len()
}

/// Prints what is not a timing: the cluster's shape, how many flows pass, and how large
/// compiled policies are once serialized.
fn print_facts(
    cluster: &Cluster,
    policies: &[PodPolicy],
    typical: &PodPolicy,
    flows: &[Flow<'_>],
    across: &[(usize, Flow<'_>)],
) {
    let started = Instant::now();
    let _ = compile_all(cluster);
    eprintln!(
        "cluster: {} pods, {} namespaces, {} policies, {} nodes; one full compile (cold): {:?}",
        cluster.pods.len(),
        cluster.namespaces.len(),
        cluster.policies.len(),
        cluster.node_ips().len(),
        started.elapsed()
    );
    let rules = |p: &PodPolicy| p.ingress.rules.len() + p.egress.rules.len();
    eprintln!(
        "typical pod {}: {} ingress and {} egress policies, {} rules; serialized with serde_json: {} bytes \
         (ingress {} B, egress {} B)",
        typical.pod,
        typical.ingress.policies.len(),
        typical.egress.policies.len(),
        rules(typical),
        json_size(typical),
        serde_json::to_vec(&typical.ingress).map_or(0, |v| v.len()),
        serde_json::to_vec(&typical.egress).map_or(0, |v| v.len()),
    );
    let mut sizes: Vec<usize> = policies.iter().step_by(25).map(json_size).collect();
    sizes.sort_unstable();
    eprintln!(
        "serialized sizes over {} pods: min {} B, median {} B, max {} B",
        sizes.len(),
        sizes[0],
        sizes[sizes.len() / 2],
        sizes[sizes.len() - 1]
    );
    let count = |dir: Direction, action: Action| {
        flows
            .iter()
            .filter(|f| f.direction == dir && decide(typical, f).action == action)
            .count()
    };
    eprintln!(
        "decide flows: {} total; ingress {} allowed / {} denied; egress {} allowed / {} denied",
        flows.len(),
        count(Direction::Ingress, Action::Allow),
        count(Direction::Ingress, Action::Deny),
        count(Direction::Egress, Action::Allow),
        count(Direction::Egress, Action::Deny),
    );
    let allowed = across
        .iter()
        .filter(|(p, f)| decide(&policies[*p], f).action == Action::Allow)
        .count();
    eprintln!("flows across pods: {} allowed of {}", allowed, across.len());

    let cluster = with_services(cluster.clone());
    let started = Instant::now();
    let compiler = Compiler::new(&cluster);
    let new_took = started.elapsed();
    let policies: Vec<PodPolicy> = cluster.pods.iter().map(|p| compiler.compile(p)).collect();
    eprintln!(
        "with {} Services: Compiler::new {:?}, every pod {:?}; typical pod serialized: {} bytes",
        cluster.services.len(),
        new_took,
        started.elapsed(),
        json_size(&compiler.compile(typical_pod(&cluster))),
    );
    drop(policies);
}

fn benches(c: &mut Criterion) {
    let cluster = cluster();
    let policies = compile_all(&cluster);
    let typical_pod = typical_pod(&cluster);
    let typical = Compiler::new(&cluster).compile(typical_pod);
    let mut rng = Rng(42);
    let typical_flows = flows(&cluster, typical_pod, 1024, &mut rng);
    // Flows of every pod, each with the index of the pod's policy, to judge across pods too.
    let across: Vec<(usize, Flow<'static>)> = (0..4096)
        .map(|_| {
            let i = rng.below(policies.len() as u64) as usize;
            let flow = flows(&cluster, &cluster.pods[i], 1, &mut rng)[0];
            (i, flow)
        })
        .collect();
    print_facts(&cluster, &policies, &typical, &typical_flows, &across);

    let mut compile = c.benchmark_group("compile");
    compile
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    compile.bench_function("every pod (Compiler::new + compile × 10,000)", |b| {
        b.iter(|| compile_all(black_box(&cluster)))
    });
    compile.bench_function("Compiler::new", |b| {
        b.iter(|| Compiler::new(black_box(&cluster)))
    });
    let compiler = Compiler::new(&cluster);
    compile.bench_function("compile one typical pod", |b| {
        b.iter(|| compiler.compile(black_box(typical_pod)))
    });
    compile.finish();

    let mut group = c.benchmark_group("decide");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("typical pod, 1024 rotating flows", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % typical_flows.len();
            decide(black_box(&typical), black_box(&typical_flows[i]))
        })
    });
    group.bench_function("4096 rotating (pod, flow) pairs", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % across.len();
            let (p, flow) = &across[i];
            decide(black_box(&policies[*p]), black_box(flow))
        })
    });
    group.finish();
}

criterion_group! {
    name = compile;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(compile);
