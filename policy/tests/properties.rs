//! Properties of the policy crate, checked on random inputs against formulations written
//! here straight from the Kubernetes definitions: label selectors, `ipBlock` matching, and
//! the ingress verdict for a tiny random cluster read from manifests.
//!
//! Alphabets are small on purpose, so that keys, values and addresses collide often and
//! both outcomes of every property are exercised (`generators_are_not_vacuous` checks it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};

use palisade_policy::cluster::{Cluster, NAMESPACE_NAME_LABEL};
use palisade_policy::compile::Compiler;
use palisade_policy::compiled::Flow;
use palisade_policy::manifest::{load_str, Report};
use palisade_policy::peer::IpBlock;
use palisade_policy::policy::Direction;
use palisade_policy::ports::Protocol;
use palisade_policy::selector::{LabelSelector, Labels, Operator, Requirement};
use palisade_policy::verdict::{decide, Action};

/// Label keys and, for each, the values it may take.
type Alphabet = &'static [(&'static str, &'static [&'static str])];

/// Pod labels.
const POD_LABELS: Alphabet = &[
    ("app", &["a", "b", "c"]),
    ("tier", &["web", "db"]),
    ("env", &["prod", "qa"]),
];

/// Namespace labels: the name label every namespace carries, and a label users set.
const NS_LABELS: Alphabet = &[
    (NAMESPACE_NAME_LABEL, &["x", "y"]),
    ("team", &["red", "blue"]),
];

const NAMESPACES: [&str; 2] = ["x", "y"];

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------------------

/// Labels: each key of the alphabet present two times in three, with one of its values.
fn labels(alphabet: Alphabet) -> impl Strategy<Value = Labels> {
    let each: Vec<_> = alphabet
        .iter()
        .map(|&(key, values)| {
            prop::option::weighted(2.0 / 3.0, prop::sample::select(values))
                .prop_map(move |v| v.map(|v| (key.to_owned(), v.to_owned())))
        })
        .collect();
    each.prop_map(|pairs| pairs.into_iter().flatten().collect())
}

fn operator() -> impl Strategy<Value = Operator> {
    prop::sample::select(vec![
        Operator::In,
        Operator::NotIn,
        Operator::Exists,
        Operator::DoesNotExist,
    ])
}

/// A requirement as the API server accepts it: `In`/`NotIn` with at least one value (and
/// sometimes a value the key never takes), `Exists`/`DoesNotExist` with none.
fn requirement(alphabet: Alphabet) -> impl Strategy<Value = Requirement> {
    (0..alphabet.len(), operator()).prop_flat_map(move |(k, operator)| {
        let (key, known) = alphabet[k];
        let mut pool: Vec<&'static str> = known.to_vec();
        pool.push("unused");
        let values = match operator {
            Operator::In | Operator::NotIn => prop::sample::subsequence(pool, 1..=2).boxed(),
            Operator::Exists | Operator::DoesNotExist => Just(Vec::new()).boxed(),
        };
        values.prop_map(move |values| Requirement {
            key: key.to_owned(),
            operator,
            values: values.into_iter().map(str::to_owned).collect(),
        })
    })
}

/// A selector of up to `max` matchLabels pairs and `max` requirements.
fn selector(alphabet: Alphabet, max: usize) -> impl Strategy<Value = LabelSelector> {
    (
        // matchLabels is a map in the API: one value per key.
        prop::collection::btree_map(
            (0..alphabet.len()).prop_map(move |k| alphabet[k].0),
            any::<prop::sample::Index>(),
            0..=max,
        ),
        prop::collection::vec(requirement(alphabet), 0..=max),
    )
        .prop_map(move |(pairs, match_expressions)| LabelSelector {
            match_labels: pairs
                .into_iter()
                .map(|(key, i)| {
                    let values = alphabet
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, v)| *v)
                        .unwrap_or(&[]);
                    // Sometimes a value no object carries.
                    let value = i.get(&[values, &["unused"]].concat()).to_string();
                    (key.to_owned(), value)
                })
                .collect(),
            match_expressions,
        })
}

/// The Kubernetes definition, spelled out: every matchLabels pair is present with its value,
/// and every requirement holds.
fn selector_matches_by_definition(selector: &LabelSelector, labels: &Labels) -> bool {
    let has = |key: &str| labels.iter().any(|(k, _)| k == key);
    let value_of = |key: &str| {
        labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    };
    let pairs_hold = selector
        .match_labels
        .iter()
        .all(|(key, value)| value_of(key) == Some(value.as_str()));
    let requirements_hold = selector.match_expressions.iter().all(|r| {
        let in_values = |v: &str| r.values.iter().any(|x| x == v);
        match r.operator {
            Operator::In => has(&r.key) && in_values(value_of(&r.key).unwrap_or_default()),
            Operator::NotIn => !has(&r.key) || !in_values(value_of(&r.key).unwrap_or_default()),
            Operator::Exists => has(&r.key),
            Operator::DoesNotExist => !has(&r.key),
        }
    });
    pairs_hold && requirements_hold
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn selector_matches_as_kubernetes_defines(sel in selector(POD_LABELS, 2), labels in labels(POD_LABELS)) {
        prop_assert_eq!(sel.matches(&labels), selector_matches_by_definition(&sel, &labels), "selector {}", sel);
    }

    #[test]
    fn empty_selector_matches_everything(labels in labels(POD_LABELS)) {
        prop_assert!(LabelSelector::default().matches(&labels));
    }

    /// `lint` calls a rule redundant on the strength of `implies`: it must never say yes
    /// when some label set matches the narrower selector and not the broader one.
    #[test]
    fn implies_is_sound(
        narrow in selector(POD_LABELS, 2),
        broad in selector(POD_LABELS, 2),
        labels in labels(POD_LABELS),
    ) {
        if narrow.implies(&broad) && selector_matches_by_definition(&narrow, &labels) {
            prop_assert!(
                selector_matches_by_definition(&broad, &labels),
                "{} implies {}, but {:?} matches only the first", narrow, broad, labels
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// ipBlock
// ---------------------------------------------------------------------------------------

fn mask4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// A block: a network of random prefix length with its host bits cleared, and up to three
/// `except` networks strictly inside it (longer prefix, same network bits).
fn ip_block_v4() -> impl Strategy<Value = IpBlock> {
    (any::<u32>(), 0u8..=32).prop_flat_map(|(bits, prefix)| {
        let net = bits & mask4(prefix);
        let except = if prefix == 32 {
            Just(Vec::new()).boxed()
        } else {
            prop::collection::vec((any::<u32>(), prefix + 1..=32), 0..=3)
                .prop_map(move |holes| {
                    holes
                        .into_iter()
                        .map(|(bits, len)| {
                            let addr = (net | (bits & !mask4(prefix))) & mask4(len);
                            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap())
                        })
                        .collect()
                })
                .boxed()
        };
        except.prop_map(move |except| IpBlock {
            cidr: IpNet::V4(Ipv4Net::new(Ipv4Addr::from(net), prefix).unwrap()),
            except,
        })
    })
}

fn ip_block_v6() -> impl Strategy<Value = IpBlock> {
    (any::<u128>(), 0u8..=128).prop_flat_map(|(bits, prefix)| {
        let net = bits & mask6(prefix);
        let except = if prefix == 128 {
            Just(Vec::new()).boxed()
        } else {
            prop::collection::vec((any::<u128>(), prefix + 1..=128), 0..=3)
                .prop_map(move |holes| {
                    holes
                        .into_iter()
                        .map(|(bits, len)| {
                            let addr = (net | (bits & !mask6(prefix))) & mask6(len);
                            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), len).unwrap())
                        })
                        .collect()
                })
                .boxed()
        };
        except.prop_map(move |except| IpBlock {
            cidr: IpNet::V6(Ipv6Net::new(Ipv6Addr::from(net), prefix).unwrap()),
            except,
        })
    })
}

fn ip_block() -> impl Strategy<Value = IpBlock> {
    prop_oneof![ip_block_v4(), ip_block_v6()]
}

/// Flips some of the lowest `width` bits of `base` (`width` may reach past the block's host
/// bits, so that addresses just outside it come up too).
fn near(base: u128, bits: u128, width: u32) -> u128 {
    base ^ (bits & u128::MAX.checked_shr(128 - width).unwrap_or(0))
}

fn addr_like(family_v4: bool, value: u128) -> IpAddr {
    if family_v4 {
        IpAddr::V4(Ipv4Addr::from(value as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(value))
    }
}

fn bits_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// A block and an address to test against it: mostly near the block or one of its holes,
/// sometimes anywhere, sometimes of the other family (IPv4-mapped IPv6 included).
fn block_and_addr() -> impl Strategy<Value = (IpBlock, IpAddr)> {
    ip_block().prop_flat_map(|block| {
        let v4 = block.cidr.addr().is_ipv4();
        let width_max: u32 = if v4 { 32 } else { 128 };
        let host_bits = width_max - u32::from(block.cidr.prefix_len());
        let mut bases = vec![bits_of(block.cidr.addr())];
        bases.extend(block.except.iter().map(|e| bits_of(e.addr())));
        let near_something = (
            prop::sample::select(bases),
            any::<u128>(),
            0..=(host_bits + 2).min(width_max),
        )
            .prop_map(move |(base, bits, width)| addr_like(v4, near(base, bits, width)));
        let anywhere = any::<u128>().prop_map(move |bits| addr_like(v4, bits));
        let in_block_v4 = bits_of(block.cidr.addr()) as u32;
        let other_family = prop_oneof![
            any::<u128>().prop_map(move |bits| addr_like(!v4, bits)),
            // The same block address seen through the other family's eyes.
            Just(if v4 {
                IpAddr::V6(Ipv4Addr::from(in_block_v4).to_ipv6_mapped())
            } else {
                IpAddr::V4(Ipv4Addr::from(in_block_v4))
            }),
        ];
        let addr = prop_oneof![6 => near_something, 1 => anywhere, 1 => other_family];
        (Just(block), addr)
    })
}

/// `ip & mask == net` for the block, and not so for every except, on integers.
fn block_contains_by_definition(block: &IpBlock, ip: IpAddr) -> bool {
    fn in_net(net: &IpNet, ip: IpAddr) -> bool {
        match (net, ip) {
            (IpNet::V4(n), IpAddr::V4(a)) => {
                u32::from(a) & mask4(n.prefix_len()) == u32::from(n.network())
            }
            (IpNet::V6(n), IpAddr::V6(a)) => {
                u128::from(a) & mask6(n.prefix_len()) == u128::from(n.network())
            }
            // An IPv4 block never holds an IPv6 address, nor the reverse.
            _ => false,
        }
    }
    in_net(&block.cidr, ip) && block.except.iter().all(|e| !in_net(e, ip))
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn ip_block_contains_as_defined((block, ip) in block_and_addr()) {
        prop_assert_eq!(block.contains(ip), block_contains_by_definition(&block, ip), "{} ∋ {}?", block, ip);
    }
}

// ---------------------------------------------------------------------------------------
// End to end: manifests → cluster → compiled policy → ingress verdict
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct TinyPod {
    ns: usize,
    labels: Labels,
}

/// The peer of the policy's one ingress rule.
#[derive(Debug, Clone)]
enum TinyPeer {
    /// `podSelector` alone: pods of the policy's namespace.
    Pods(LabelSelector),
    /// `namespaceSelector` and `podSelector` in one entry: both must match.
    NamespacesAndPods(LabelSelector, LabelSelector),
}

#[derive(Debug, Clone)]
struct TinyCluster {
    ns_labels: [Labels; 2],
    pods: Vec<TinyPod>,
    policy_ns: usize,
    selects: LabelSelector,
    from: TinyPeer,
    /// `ports: [{port: 80}]` when set; every port otherwise.
    only_port_80: bool,
}

fn tiny_cluster() -> impl Strategy<Value = TinyCluster> {
    let team = || prop::option::of(prop::sample::select(&["red", "blue"][..]));
    let pod = (0..2usize, labels(POD_LABELS)).prop_map(|(ns, labels)| TinyPod { ns, labels });
    let from = prop_oneof![
        selector(POD_LABELS, 1).prop_map(TinyPeer::Pods),
        (selector(NS_LABELS, 1), selector(POD_LABELS, 1))
            .prop_map(|(n, p)| TinyPeer::NamespacesAndPods(n, p)),
    ];
    (
        team(),
        team(),
        prop::collection::vec(pod, 3..=6),
        0..2usize,
        selector(POD_LABELS, 1),
        from,
        any::<bool>(),
    )
        .prop_map(
            |(team_x, team_y, pods, policy_ns, selects, from, only_port_80)| {
                let ns_labels =
                    [(NAMESPACES[0], team_x), (NAMESPACES[1], team_y)].map(|(name, team)| {
                        let mut labels =
                            Labels::from([(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned())]);
                        labels.extend(team.map(|t| ("team".to_owned(), t.to_owned())));
                        labels
                    });
                TinyCluster {
                    ns_labels,
                    pods,
                    policy_ns,
                    selects,
                    from,
                    only_port_80,
                }
            },
        )
}

fn pod_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10 + i as u8))
}

fn selector_json(s: &LabelSelector) -> Value {
    let labels: serde_json::Map<String, Value> = s
        .match_labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let exprs: Vec<Value> = s
        .match_expressions
        .iter()
        .map(|r| match r.operator {
            Operator::In | Operator::NotIn => {
                json!({"key": r.key, "operator": r.operator.as_str(), "values": r.values})
            }
            Operator::Exists | Operator::DoesNotExist => {
                json!({"key": r.key, "operator": r.operator.as_str()})
            }
        })
        .collect();
    json!({"matchLabels": labels, "matchExpressions": exprs})
}

/// The manifests of the tiny cluster, as one stream (JSON documents are YAML documents).
fn manifests(c: &TinyCluster) -> String {
    let mut docs = Vec::new();
    for (i, name) in NAMESPACES.iter().enumerate() {
        let mut labels = c.ns_labels[i].clone();
        labels.remove(NAMESPACE_NAME_LABEL);
        docs.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}));
    }
    for (i, p) in c.pods.iter().enumerate() {
        docs.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p{i}"), "namespace": NAMESPACES[p.ns], "labels": p.labels},
            "spec": {"containers": [{"name": "main", "image": "x"}]},
            "status": {"podIP": pod_ip(i).to_string(), "hostIP": "192.168.0.1"},
        }));
    }
    let peer = match &c.from {
        TinyPeer::Pods(p) => json!({"podSelector": selector_json(p)}),
        TinyPeer::NamespacesAndPods(n, p) => {
            json!({"namespaceSelector": selector_json(n), "podSelector": selector_json(p)})
        }
    };
    let mut rule = json!({"from": [peer]});
    if c.only_port_80 {
        rule["ports"] = json!([{"port": 80}]);
    }
    docs.push(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "np", "namespace": NAMESPACES[c.policy_ns]},
        "spec": {"podSelector": selector_json(&c.selects), "ingress": [rule]},
    }));
    docs.iter().map(|d| format!("---\n{d}\n")).collect()
}

/// Whether a connection from pod `a` to pod `b` on `port` passes `b`'s ingress, from the
/// NetworkPolicy definition.
fn ingress_allowed_by_definition(c: &TinyCluster, a: usize, b: usize, port: u16) -> bool {
    let (pa, pb) = (&c.pods[a], &c.pods[b]);
    let isolated = pb.ns == c.policy_ns && selector_matches_by_definition(&c.selects, &pb.labels);
    if !isolated || a == b {
        return true;
    }
    let peer_matches = match &c.from {
        TinyPeer::Pods(p) => pa.ns == c.policy_ns && selector_matches_by_definition(p, &pa.labels),
        TinyPeer::NamespacesAndPods(n, p) => {
            selector_matches_by_definition(n, &c.ns_labels[pa.ns])
                && selector_matches_by_definition(p, &pa.labels)
        }
    };
    peer_matches && (!c.only_port_80 || port == 80)
}

/// Every (from, to, port, verdict) of the tiny cluster, as the crate decides it.
fn ingress_verdicts(c: &TinyCluster) -> Vec<(usize, usize, u16, Action)> {
    let mut cluster = Cluster::default();
    let mut report = Report::default();
    load_str(&mut cluster, "tiny.yaml", &manifests(c), &mut report);
    assert!(
        !report.has_errors(),
        "{:?}\n{}",
        report.errors,
        manifests(c)
    );
    cluster.finish();
    let compiler = Compiler::new(&cluster);
    let mut out = Vec::new();
    for b in 0..c.pods.len() {
        let pod = cluster
            .pod(NAMESPACES[c.pods[b].ns], &format!("p{b}"))
            .expect("pod was loaded");
        let policy = compiler.compile(pod);
        for a in 0..c.pods.len() {
            for port in [80, 81] {
                let flow = Flow {
                    direction: Direction::Ingress,
                    peer: pod_ip(a),
                    port,
                    protocol: Protocol::Tcp,
                    names: &[],
                };
                out.push((a, b, port, decide(&policy, &flow).action));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(config(500))]

    #[test]
    fn ingress_verdict_follows_the_selectors(c in tiny_cluster()) {
        for (a, b, port, action) in ingress_verdicts(&c) {
            let expected = ingress_allowed_by_definition(&c, a, b, port);
            prop_assert_eq!(
                action,
                if expected { Action::Allow } else { Action::Deny },
                "p{} -> p{} port {}\n{}", a, b, port, manifests(&c)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The generators exercise both outcomes of each property
// ---------------------------------------------------------------------------------------

/// The share of `n` generated values for which `f` holds.
fn share<S: Strategy>(strategy: S, n: usize, f: impl Fn(&S::Value) -> bool) -> f64 {
    let mut runner = TestRunner::deterministic();
    let hits = (0..n)
        .filter(|_| {
            f(&strategy
                .new_tree(&mut runner)
                .expect("strategy generates")
                .current())
        })
        .count();
    hits as f64 / n as f64
}

#[test]
fn generators_are_not_vacuous() {
    let matched = share(
        (selector(POD_LABELS, 2), labels(POD_LABELS)),
        2000,
        |(s, l)| selector_matches_by_definition(s, l),
    );
    assert!(
        (0.15..0.85).contains(&matched),
        "selectors matched {matched:.2} of the time"
    );

    // `implies` must answer yes often enough for its soundness test to mean something.
    let implied = share(
        (selector(POD_LABELS, 2), selector(POD_LABELS, 2)),
        2000,
        |(a, b)| a.implies(b) && !b.is_empty(),
    );
    assert!(
        implied > 0.02,
        "a selector implied another non-empty one {implied:.3} of the time"
    );

    let contained = share(block_and_addr(), 2000, |(b, ip)| {
        block_contains_by_definition(b, *ip)
    });
    assert!(
        (0.15..0.85).contains(&contained),
        "blocks held the address {contained:.2} of the time"
    );
    let in_a_hole = share(block_and_addr(), 2000, |(b, ip)| {
        b.cidr.contains(ip) && b.except.iter().any(|e| e.contains(ip))
    });
    assert!(
        in_a_hole > 0.05,
        "addresses fell in an except {in_a_hole:.2} of the time"
    );

    let denied = share(tiny_cluster(), 300, |c| {
        (0..c.pods.len())
            .any(|a| (0..c.pods.len()).any(|b| !ingress_allowed_by_definition(c, a, b, 80)))
    });
    let isolated_and_allowed = share(tiny_cluster(), 300, |c| {
        (0..c.pods.len()).any(|a| {
            (0..c.pods.len()).any(|b| {
                a != b
                    && c.pods[b].ns == c.policy_ns
                    && selector_matches_by_definition(&c.selects, &c.pods[b].labels)
                    && ingress_allowed_by_definition(c, a, b, 80)
            })
        })
    });
    assert!(denied > 0.2, "clusters with a denied flow: {denied:.2}");
    assert!(
        isolated_and_allowed > 0.1,
        "clusters where a rule allowed a flow: {isolated_and_allowed:.2}"
    );
}

#[test]
fn mask_helpers_agree_with_ipnet() {
    let n: Ipv4Net = "10.1.0.0/16".parse().unwrap();
    assert_eq!(mask4(16), u32::from(n.netmask()));
    assert_eq!(mask4(0), 0);
    assert_eq!(mask6(0), 0);
    assert_eq!(mask6(128), u128::MAX);
}
