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

use palisade_policy::cluster::{Cluster, Pod};
use palisade_policy::compile::Compiler;
use palisade_policy::compiled::{Flow, PodPolicy};
use palisade_policy::policy::Direction;
use palisade_policy::ports::Protocol;
use palisade_policy::verdict::{decide, Action};

mod generated;

use generated::*;

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
