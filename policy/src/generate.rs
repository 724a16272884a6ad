//! Least-privilege NetworkPolicies proposed from the flows that happened: a default deny
//! for the namespace, and for each workload (the pods that share one set of labels) an
//! ingress rule per group of peers it was reached from and an egress rule per group of peers
//! it reached, on exactly the ports seen. Selectors are the fewest labels that pick exactly
//! the workload's pods. [`verify`] reads the proposal back as manifests and judges every flow
//! again, so that what is proposed is what was observed.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::cluster::{Cluster, Pod, NAMESPACE_NAME_LABEL};
use crate::diff::{diff, FlowDiff};
use crate::manifest::{load_str, ObjectError, Report};
use crate::ports::Protocol;
use crate::selector::{LabelSelector, Labels, Operator, Requirement};
use crate::simulate::{simulate, SideVerdict, SimFlow, Simulation};
use crate::verdict::Action;

/// Label keys that usually name a workload, tried first for selectors.
const WORKLOAD_KEYS: [&str; 6] = [
    "app.kubernetes.io/name",
    "app",
    "k8s-app",
    "name",
    "app.kubernetes.io/component",
    "component",
];

/// Policies proposed for one namespace.
#[derive(Debug, Clone)]
pub struct Proposal {
    /// The namespace.
    pub namespace: String,
    /// The NetworkPolicies, as manifests.
    pub policies: Vec<Value>,
}

impl Proposal {
    /// The policies as a YAML stream, ready for `kubectl apply -f -`.
    pub fn yaml(&self) -> String {
        crate::document::to_yaml(&self.policies)
    }
}

/// A workload: a namespace and the labels its pods share.
type Workload = (String, Labels);

fn workload(pod: &Pod) -> Workload {
    (pod.namespace.clone(), pod.labels.clone())
}

/// The fewest labels of `labels` that, among the pods of `namespace`, pick exactly the pods
/// with these labels; failing that (another pod has every one of them and more), all of
/// them and `DoesNotExist` for what the other pods have in excess.
fn selector(cluster: &Cluster, namespace: &str, labels: &Labels) -> LabelSelector {
    let others: BTreeSet<&Labels> = cluster
        .pods
        .iter()
        .filter(|p| p.namespace == namespace && !p.host_network && p.labels != *labels)
        .map(|p| &p.labels)
        .collect();
    let exact = |sel: &LabelSelector| others.iter().all(|o| !sel.matches(o));
    let mut keys: Vec<&str> = WORKLOAD_KEYS
        .iter()
        .copied()
        .filter(|k| labels.contains_key(*k))
        .collect();
    keys.extend(
        labels
            .keys()
            .map(String::as_str)
            .filter(|k| !WORKLOAD_KEYS.contains(k)),
    );
    let of = |subset: &[&str]| {
        LabelSelector::from_labels(subset.iter().map(|k| (*k, labels[*k].as_str())))
    };
    for (i, a) in keys.iter().enumerate() {
        let one = of(&[a]);
        if exact(&one) {
            return one;
        }
        for b in &keys[i + 1..] {
            let two = of(&[a, b]);
            if exact(&two) {
                return two;
            }
        }
    }
    let mut sel = of(&keys);
    for other in others {
        if !sel.matches(other) {
            continue;
        }
        if let Some(extra) = other.keys().find(|k| !labels.contains_key(*k)) {
            let r = Requirement {
                key: extra.clone(),
                operator: Operator::DoesNotExist,
                values: Vec::new(),
            };
            if !sel.match_expressions.contains(&r) {
                sel.match_expressions.push(r);
            }
        }
    }
    sel
}

fn selector_json(sel: &LabelSelector) -> Value {
    let mut out = serde_json::Map::new();
    if !sel.match_labels.is_empty() {
        let labels: serde_json::Map<String, Value> = sel
            .match_labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        out.insert("matchLabels".into(), Value::Object(labels));
    }
    if !sel.match_expressions.is_empty() {
        let exprs: Vec<Value> = sel
            .match_expressions
            .iter()
            .map(|r| json!({"key": r.key, "operator": r.operator.as_str()}))
            .collect();
        out.insert("matchExpressions".into(), Value::Array(exprs));
    }
    Value::Object(out)
}

/// The peer that picks workload `w`, seen from a policy of `namespace`.
fn peer(cluster: &Cluster, namespace: &str, w: &Workload) -> Value {
    let pods = selector_json(&selector(cluster, &w.0, &w.1));
    if w.0 == namespace {
        json!({"podSelector": pods})
    } else {
        json!({
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: w.0}},
            "podSelector": pods,
        })
    }
}

/// A DNS label from a label value or pod name.
fn dns_label(s: &str) -> String {
    let mut out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out = out.trim_matches('-').to_owned();
    if out.is_empty() {
        out.push_str("pods");
    }
    out
}

/// Ports seen, per peer workload, for one direction of one workload.
type Seen = BTreeMap<Workload, BTreeSet<(Protocol, u16)>>;

/// Rules for one direction: one per set of ports, naming every peer seen on exactly it.
fn rules(cluster: &Cluster, namespace: &str, seen: &Seen, peers_key: &str) -> Vec<Value> {
    let mut by_ports: BTreeMap<&BTreeSet<(Protocol, u16)>, Vec<Value>> = BTreeMap::new();
    for (w, ports) in seen {
        by_ports
            .entry(ports)
            .or_default()
            .push(peer(cluster, namespace, w));
    }
    by_ports
        .into_iter()
        .map(|(ports, peers)| {
            let ports: Vec<Value> = ports
                .iter()
                .map(|(protocol, port)| json!({"protocol": protocol.as_str(), "port": port}))
                .collect();
            json!({peers_key: peers, "ports": ports})
        })
        .collect()
}

/// A short name for a workload: the value of its one-label selector, else its first pod's.
fn workload_name(cluster: &Cluster, w: &Workload) -> String {
    match selector(cluster, &w.0, &w.1).match_labels.as_slice() {
        [(_, value)] => dns_label(value),
        _ => cluster
            .pods
            .iter()
            .find(|p| workload(p) == *w)
            .map_or_else(|| "pods".to_owned(), |p| dns_label(&p.name)),
    }
}

/// A NetworkPolicy named `name` for workload `w`, allowing what `ingress` and `egress` saw.
fn policy(
    cluster: &Cluster,
    name: &str,
    w: &Workload,
    ingress: Option<&Seen>,
    egress: Option<&Seen>,
) -> Value {
    let namespace = w.0.as_str();
    let mut spec = serde_json::Map::new();
    spec.insert(
        "podSelector".into(),
        selector_json(&selector(cluster, namespace, &w.1)),
    );
    let mut types = Vec::new();
    if let Some(seen) = ingress {
        types.push("Ingress");
        spec.insert(
            "ingress".into(),
            json!(rules(cluster, namespace, seen, "from")),
        );
    }
    if let Some(seen) = egress {
        types.push("Egress");
        spec.insert(
            "egress".into(),
            json!(rules(cluster, namespace, seen, "to")),
        );
    }
    spec.insert("policyTypes".into(), json!(types));
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": Value::Object(spec),
    })
}

/// The smallest NetworkPolicies that let `flow` through: for each side that refuses it (or
/// would, in audit mode), a policy selecting that side's workload with one rule naming the
/// other side's workload on the flow's port. What `rollout status` proposes for a
/// would-deny flow; empty when both sides allow it or an end is not a pod of `cluster`.
pub fn allow(cluster: &Cluster, flow: &SimFlow) -> Vec<Value> {
    let pod = |key: &str| {
        let (ns, name) = key.split_once('/')?;
        cluster.pod(ns, name).filter(|p| !p.host_network)
    };
    let (Some(from), Some(to)) = (pod(&flow.from), pod(&flow.to)) else {
        return Vec::new();
    };
    let (wf, wt) = (workload(from), workload(to));
    let name = format!(
        "allow-{}-to-{}-{}-{}",
        workload_name(cluster, &wf),
        workload_name(cluster, &wt),
        flow.protocol.as_str().to_ascii_lowercase(),
        flow.port
    );
    let one = |peer: &Workload| -> Seen {
        Seen::from([(peer.clone(), BTreeSet::from([(flow.protocol, flow.port)]))])
    };
    let refuses = |s: &SideVerdict| s.action.map_or(!s.allowed, |a| a != Action::Allow);
    let mut out = Vec::new();
    if refuses(&flow.egress) {
        let name = format!("{name}-egress");
        out.push(policy(cluster, &name, &wf, None, Some(&one(&wt))));
    }
    if refuses(&flow.ingress) {
        let name = format!("{name}-ingress");
        out.push(policy(cluster, &name, &wt, Some(&one(&wf)), None));
    }
    out
}

/// Proposes the policies of `namespace` that allow exactly the flows `observed` allowed (or
/// let through in audit mode), for the pods of `cluster`. Flows of pods that are not in
/// `cluster` are ignored.
pub fn propose(cluster: &Cluster, observed: &Simulation, namespace: &str) -> Proposal {
    let pod = |key: &str| -> Option<&Pod> {
        let (ns, name) = key.split_once('/')?;
        cluster.pod(ns, name).filter(|p| !p.host_network)
    };
    // Per workload of the namespace: what it was reached from, and what it reached.
    let mut ingress: BTreeMap<Workload, Seen> = BTreeMap::new();
    let mut egress: BTreeMap<Workload, Seen> = BTreeMap::new();
    for f in observed.flows.iter().filter(|f| f.allowed) {
        let (Some(from), Some(to)) = (pod(&f.from), pod(&f.to)) else {
            continue;
        };
        let port = (f.protocol, f.port);
        if to.namespace == namespace {
            ingress
                .entry(workload(to))
                .or_default()
                .entry(workload(from))
                .or_default()
                .insert(port);
        }
        if from.namespace == namespace {
            egress
                .entry(workload(from))
                .or_default()
                .entry(workload(to))
                .or_default()
                .insert(port);
        }
    }
    let mut policies = vec![json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "generated-default-deny", "namespace": namespace},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    })];
    let workloads: BTreeSet<&Workload> = ingress.keys().chain(egress.keys()).collect();
    let mut names = BTreeSet::new();
    for w in workloads {
        let base = format!("generated-{}", workload_name(cluster, w));
        let mut name = base.clone();
        let mut n = 2;
        while !names.insert(name.clone()) {
            name = format!("{base}-{n}");
            n += 1;
        }
        policies.push(policy(cluster, &name, w, ingress.get(w), egress.get(w)));
    }
    Proposal {
        namespace: namespace.to_owned(),
        policies,
    }
}

/// The cluster with the namespace's policies replaced by the proposal, read back from its
/// YAML as any manifest is, and how its flows differ from `observed` (empty when the
/// proposal reproduces every observed verdict).
pub fn verify(
    cluster: &Cluster,
    proposal: &Proposal,
    observed: &Simulation,
) -> Result<(Cluster, FlowDiff), Vec<ObjectError>> {
    let mut next = cluster.clone();
    next.policies
        .retain(|p| p.id.namespace != proposal.namespace);
    let mut report = Report::default();
    load_str(&mut next, "generated.yaml", &proposal.yaml(), &mut report);
    if report.has_errors() {
        return Err(report.errors);
    }
    next.finish();
    let known: BTreeSet<(&str, &str)> = observed
        .flows
        .iter()
        .map(|f| (f.from.as_str(), f.to.as_str()))
        .collect();
    // Judge only the pairs that were observed (a lab leaves SCTP out, say).
    let mut judged = simulate(&next);
    judged
        .flows
        .retain(|f| known.contains(&(f.from.as_str(), f.to.as_str())));
    let d = diff(observed, &judged);
    Ok((next, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::tests::{cluster, dns, netpol, ns, pod};

    fn shop() -> String {
        ns("shop", "")
            + &ns("edge", "")
            + &dns()
            + &pod("edge/lb", "app=lb", "10.0.1.1", "443")
            + &pod("shop/web-1", "app=web,tier=front", "10.0.0.1", "80")
            + &pod("shop/web-2", "app=web,tier=front", "10.0.0.2", "80")
            + &pod("shop/api", "app=api,tier=back", "10.0.0.3", "8080")
            + &pod("shop/db", "app=db,tier=back", "10.0.0.4", "5432")
    }

    /// What the shop does when it works: lb -> web -> api -> db, DNS for everyone.
    fn wanted() -> String {
        netpol(
            "shop/all",
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 8080}]\n  - from: [{podSelector: {matchLabels: {app: api}}}]\n    ports: [{port: 5432}]\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: edge}}}]\n    ports: [{port: 80}]\n  egress:\n  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]\n    ports: [{port: 53, protocol: UDP}]\n  - to: [{podSelector: {matchLabels: {app: api}}}]\n    ports: [{port: 8080}]\n  - to: [{podSelector: {matchLabels: {app: db}}}]\n    ports: [{port: 5432}]\n",
        )
    }

    #[test]
    fn the_proposal_reproduces_what_was_observed() {
        let observed = simulate(&cluster(&(shop() + &wanted())));
        let bare = cluster(&shop());
        let proposal = propose(&bare, &observed, "shop");
        let (_, d) = verify(&bare, &proposal, &observed).unwrap();
        assert!(d.is_empty(), "{d:#?}\n{}", proposal.yaml());
        // A default deny and one policy per workload that talked.
        let names: Vec<&str> = proposal
            .policies
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "generated-default-deny",
                "generated-api",
                "generated-db",
                "generated-web"
            ]
        );
        let yaml = proposal.yaml();
        assert!(yaml.contains("app: web"), "{yaml}");
        assert!(
            !yaml.contains("tier"),
            "one label picks each workload: {yaml}"
        );
    }

    #[test]
    fn selectors_pick_exactly_the_workload() {
        let text = ns("a", "")
            + &pod("a/x", "app=x", "10.0.0.1", "80")
            + &pod("a/x-canary", "app=x,track=canary", "10.0.0.2", "80")
            + &pod("a/y", "app=y,track=canary", "10.0.0.3", "80");
        let c = cluster(&text);
        let x = c.pod("a", "x").unwrap();
        let canary = c.pod("a", "x-canary").unwrap();
        // app=x would take the canary too: it needs DoesNotExist on track.
        assert_eq!(selector(&c, "a", &x.labels).to_string(), "app=x,!track");
        assert_eq!(
            selector(&c, "a", &canary.labels).to_string(),
            "app=x,track=canary"
        );
    }

    #[test]
    fn replicas_seen_differently_cannot_be_told_apart() {
        let mut observed = simulate(&cluster(&(shop() + &wanted())));
        // web-2 was never seen calling the API (it had no traffic): the proposal allows it
        // anyway, since it carries web-1's labels.
        observed
            .flows
            .iter_mut()
            .filter(|f| f.from == "shop/web-2" && f.to == "shop/api")
            .for_each(|f| f.allowed = false);
        let bare = cluster(&shop());
        let (_, d) = verify(&bare, &propose(&bare, &observed, "shop"), &observed).unwrap();
        let opened: Vec<String> = d
            .opened
            .iter()
            .map(|c| format!("{} -> {}", c.from, c.to))
            .collect();
        assert_eq!(opened, ["shop/web-2 -> shop/api"]);
        assert!(d.closed.is_empty());
    }

    #[test]
    fn allowing_one_refused_flow_opens_it_and_nothing_else() {
        let c = cluster(&(shop() + &wanted()));
        let before = simulate(&c);
        let refused = before
            .flows
            .iter()
            .find(|f| f.from == "shop/db" && f.to == "shop/web-1")
            .expect("db -> web-1 is judged");
        assert!(!refused.allowed);
        let policies = allow(&c, refused);
        // Both sides refuse it: one policy each.
        assert_eq!(policies.len(), 2, "{policies:#?}");
        assert_eq!(
            policies[0]["metadata"]["name"],
            "allow-db-to-web-tcp-80-egress"
        );
        assert_eq!(
            policies[1]["metadata"]["name"],
            "allow-db-to-web-tcp-80-ingress"
        );
        let mut next = c.clone();
        let mut report = Report::default();
        load_str(
            &mut next,
            "allow.yaml",
            &crate::document::to_yaml(&policies),
            &mut report,
        );
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        next.finish();
        let d = diff(&before, &simulate(&next));
        let opened: Vec<String> = d
            .opened
            .iter()
            .map(|c| format!("{} -> {} {}", c.from, c.to, c.port))
            .collect();
        // The flow, and the same flow to web-1's replica: a policy cannot tell them apart.
        assert_eq!(
            opened,
            ["shop/db -> shop/web-1 80", "shop/db -> shop/web-2 80"]
        );
        assert!(d.closed.is_empty() && d.audit.is_empty());
        // An allowed flow needs nothing.
        let fine = before.flows.iter().find(|f| f.allowed).unwrap();
        assert!(allow(&c, fine).is_empty());
    }

    #[test]
    fn other_namespaces_keep_their_policies() {
        let edge_policy = netpol(
            "edge/lb-in",
            "  podSelector: {}\n  policyTypes: [Ingress]\n",
        );
        let observed = simulate(&cluster(&(shop() + &wanted() + &edge_policy)));
        let bare = cluster(&(shop() + &edge_policy));
        let proposal = propose(&bare, &observed, "shop");
        let (next, d) = verify(&bare, &proposal, &observed).unwrap();
        assert!(d.is_empty(), "{d:#?}");
        assert!(next
            .policies
            .iter()
            .any(|p| p.id.to_string() == "edge/lb-in"));
    }
}
