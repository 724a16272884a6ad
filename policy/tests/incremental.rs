//! The compiler kept up to date change by change gives every pod the policy a compiler
//! built from scratch gives it, and names every pod, set and map whose value changed.
//!
//! A small cluster (three namespaces, a dozen pods, two nodes) goes through a few hundred
//! random changes: pods added, removed, relabelled, moved, given other addresses and
//! ports; namespaces relabelled or put in audit mode; policies of every kind added,
//! edited and removed; Services and EndpointSlices. After each batch every pod's compiled
//! policy is compared with a fresh compile of the same objects.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use palisade_policy::cluster::Cluster;
use palisade_policy::compile::Compiler;
use palisade_policy::compiled::{IpSet, NamedPortMap, PodPolicy};
use palisade_policy::manifest::{read_str, Object, ObjectKey, Read};
use palisade_policy::wire::{self, Held, Sent};

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

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const NAMESPACES: [&str; 3] = ["a", "b", "c"];
const APPS: [&str; 3] = ["web", "api", "db"];
const TEAMS: [&str; 2] = ["red", "blue"];

fn object(text: &str) -> Object {
    let mut entries = read_str(text);
    assert_eq!(entries.len(), 1, "{text}");
    match entries.remove(0).read {
        Read::Object { object, .. } => object,
        other => panic!("{other:?} in\n{text}"),
    }
}

fn namespace(rng: &mut Rng, name: &str) -> String {
    let mode = if rng.below(6) == 0 {
        ", annotations: {palisade.dev/mode: audit}"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{team: {}}}{mode}}}\n",
        rng.pick(&TEAMS)
    )
}

fn pod(rng: &mut Rng, ns: &str, name: &str) -> String {
    // Few addresses, so that pods sometimes share one (a pod replaced by another).
    let ip = format!("10.0.0.{}", 1 + rng.below(14));
    let host = format!("192.168.0.{}", 1 + rng.below(2));
    let mut ports = vec!["{containerPort: 8080, name: http}".to_owned()];
    if rng.below(2) == 0 {
        ports.push(format!(
            "{{containerPort: {}, name: metrics}}",
            9000 + rng.below(3)
        ));
    }
    let host_network = rng.below(12) == 0;
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {}}}}}\n\
         spec: {{hostNetwork: {host_network}, containers: [{{name: c, ports: [{}]}}]}}\n\
         status: {{podIP: {ip}, hostIP: {host}}}\n",
        rng.pick(&APPS),
        ports.join(", ")
    )
}

fn peer(rng: &mut Rng) -> String {
    match rng.below(5) {
        0 => format!("{{podSelector: {{matchLabels: {{app: {}}}}}}}", rng.pick(&APPS)),
        1 => format!(
            "{{namespaceSelector: {{matchLabels: {{team: {}}}}}}}",
            rng.pick(&TEAMS)
        ),
        2 => format!(
            "{{namespaceSelector: {{matchLabels: {{team: {}}}}}, podSelector: {{matchLabels: {{app: {}}}}}}}",
            rng.pick(&TEAMS),
            rng.pick(&APPS)
        ),
        3 => "{ipBlock: {cidr: 10.0.0.0/29}}".to_owned(),
        _ => "{podSelector: {}}".to_owned(),
    }
}

fn network_policy(rng: &mut Rng, ns: &str, name: &str) -> String {
    let port = match rng.below(3) {
        0 => "http",
        1 => "metrics",
        _ => "8080",
    };
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: {}}}}}\n  policyTypes: [Ingress, Egress]\n\
         \x20 ingress:\n  - from: [{}]\n    ports: [{{port: {port}}}]\n\
         \x20 egress:\n  - to: [{}, {}]\n    ports: [{{port: {port}}}]\n",
        rng.pick(&APPS),
        peer(rng),
        peer(rng),
        peer(rng),
    )
}

fn cilium_policy(rng: &mut Rng, ns: &str, name: &str) -> String {
    let entity = rng.pick(&["cluster", "world", "host"]);
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         specs:\n- endpointSelector: {{matchLabels: {{app: {}}}}}\n  ingress:\n  - fromEntities: [{entity}]\n\
         - endpointSelector: {{}}\n  egress:\n  - toEndpoints: [{{matchLabels: {{app: {}}}}}]\n    toPorts: [{{ports: [{{port: http}}]}}]\n",
        rng.pick(&APPS),
        rng.pick(&APPS),
    )
}

fn service(rng: &mut Rng, ns: &str, name: &str, index: u64) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{clusterIP: 10.96.0.{index}, selector: {{app: {}}}, ports: [{{name: web, port: 80, targetPort: http}}]}}\n",
        rng.pick(&APPS)
    )
}

fn slice(rng: &mut Rng, ns: &str, service: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-x, namespace: {ns}, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\nports: [{{name: web, port: 8080}}]\nendpoints: [{{addresses: [10.0.0.{}]}}]\n",
        1 + rng.below(14)
    )
}

/// The objects as they are now, to compile from scratch.
#[derive(Default)]
struct World {
    objects: BTreeMap<ObjectKey, Object>,
}

impl World {
    fn cluster(&self) -> Cluster {
        let mut cluster = Cluster::default();
        for o in self.objects.values() {
            cluster.add(o.clone());
        }
        cluster.finish();
        cluster
    }
}

fn random_change(rng: &mut Rng, world: &World) -> (ObjectKey, Option<Object>) {
    let ns = rng.pick(&NAMESPACES);
    let n = rng.below(4);
    let text = match rng.below(20) {
        0..=7 => pod(rng, ns, &format!("p{n}")),
        8..=9 => namespace(rng, ns),
        10..=12 => network_policy(rng, ns, &format!("np{n}")),
        13 => cilium_policy(rng, ns, &format!("cnp{n}")),
        14 => {
            let index = 10 * (rng.below(3) + 1) + n;
            service(rng, ns, &format!("s{n}"), index)
        }
        15 => slice(rng, ns, &format!("s{n}")),
        _ => {
            // Remove something that exists.
            let keys: Vec<&ObjectKey> = world.objects.keys().collect();
            let key = keys[rng.below(keys.len() as u64) as usize].clone();
            return (key, None);
        }
    };
    let object = object(&text);
    (object.key().expect("a key"), Some(object))
}

fn compiled_all(compiler: &Compiler, cluster: &Cluster) -> HashMap<String, PodPolicy> {
    cluster
        .pods
        .iter()
        .map(|p| (p.key(), compiler.compile(p)))
        .collect()
}

#[test]
fn kept_up_to_date_equals_compiled_from_scratch() {
    let mut rng = Rng(7);
    let mut world = World::default();
    let mut live = Compiler::default();
    let mut before: HashMap<String, PodPolicy> = HashMap::new();
    let mut sets_before: BTreeMap<u32, Arc<IpSet>> = BTreeMap::new();
    let mut maps_before: BTreeMap<u32, Arc<NamedPortMap>> = BTreeMap::new();
    // A stream per pod, as the controller and the pod's proxy keep it.
    let mut streams: HashMap<String, (Sent, Held, u64)> = HashMap::new();
    let mut bytes = 0;
    for step in 0..400 {
        let batch = 1 + rng.below(3);
        for _ in 0..batch {
            let (key, object) = random_change(&mut rng, &world);
            match object {
                Some(o) => {
                    live.apply(o.clone());
                    world.objects.insert(key, o);
                }
                None => {
                    live.remove(&key);
                    world.objects.remove(&key);
                }
            }
        }
        let changes = live.take_changes();
        let cluster = world.cluster();
        let fresh = Compiler::new(&cluster);
        let now = compiled_all(&live, &cluster);
        assert_eq!(now, compiled_all(&fresh, &cluster), "step {step}");

        // Every pod whose policy is different is named, and so is every set and map
        // whose content changed under the same id.
        for (pod, policy) in &now {
            let body = live.body(live.pod(pod).unwrap());
            let body_before = before.get(pod);
            if body_before != Some(policy) && !changes.pods.contains(pod) {
                for id in body.sets() {
                    let set = live.set(id).unwrap();
                    assert!(
                        changes.sets.contains(&id) || sets_before.get(&id) == Some(set),
                        "step {step}: set {id} of {pod} changed unannounced"
                    );
                }
                for id in body.maps() {
                    let map = live.map(id).unwrap();
                    assert!(
                        changes.maps.contains(&id) || maps_before.get(&id) == Some(map),
                        "step {step}: map {id} of {pod} changed unannounced"
                    );
                }
                assert!(
                    !changes.services.is_empty()
                        || body_before.map(|b| &b.services) == Some(&policy.services),
                    "step {step}: the services of {pod} changed unannounced"
                );
            }
        }
        // What each proxy rebuilds from its stream is the pod's policy.
        for (pod, policy) in &now {
            let body = Arc::new(live.body(live.pod(pod).unwrap()));
            let (sent, held, version) = streams.entry(pod.clone()).or_default();
            let services = if *version == 0 {
                live.service_entries()
                    .iter()
                    .map(|(k, e)| wire::service(k, Some(e)))
                    .collect()
            } else {
                changes
                    .services
                    .iter()
                    .map(|k| wire::service(k, live.service(k).map(|e| &e[..])))
                    .collect()
            };
            *version = step + 1;
            let update = sent.next(
                *version,
                &body,
                |id| live.set(id).cloned(),
                |id| live.map(id).cloned(),
                services,
            );
            if let Some(update) = update {
                let frame = wire::encode(&update);
                bytes += frame.len();
                let got = held.apply(wire::decode(&frame).unwrap()).unwrap().unwrap();
                assert_eq!(got.policy, *policy, "step {step}: the stream of {pod}");
            }
        }
        streams.retain(|pod, _| now.contains_key(pod));
        let gone: BTreeSet<&String> = before.keys().filter(|k| !now.contains_key(*k)).collect();
        for pod in gone {
            assert!(
                changes.pods.contains(pod),
                "step {step}: {pod} left unannounced"
            );
        }
        for id in &changes.dropped_sets {
            assert!(live.set(*id).is_none());
        }
        sets_before = now
            .keys()
            .flat_map(|p| live.body(live.pod(p).unwrap()).sets())
            .map(|id| (id, live.set(id).unwrap().clone()))
            .collect();
        maps_before = now
            .keys()
            .flat_map(|p| live.body(live.pod(p).unwrap()).maps())
            .map(|id| (id, live.map(id).unwrap().clone()))
            .collect();
        before = now;
    }
    assert!(bytes > 0);
}

#[test]
fn one_pods_labels_recompile_that_pod_alone() {
    let mut world = World::default();
    let mut rng = Rng(11);
    let mut live = Compiler::default();
    for ns in NAMESPACES {
        for text in [namespace(&mut rng, ns), network_policy(&mut rng, ns, "np")] {
            let o = object(&text);
            world.objects.insert(o.key().unwrap(), o.clone());
            live.apply(o);
        }
        for i in 0..4 {
            let o = object(&pod(&mut rng, ns, &format!("p{i}")));
            live.apply(o);
        }
    }
    live.take_changes();
    let relabelled = object(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p0, namespace: b, labels: {app: other}}\n\
         spec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.99, hostIP: 192.168.0.1}\n",
    );
    live.apply(relabelled);
    let changes = live.take_changes();
    assert_eq!(
        changes.pods.iter().collect::<Vec<_>>(),
        ["b/p0"],
        "only the pod itself is compiled again"
    );
}
