//! `palisade lint`: the mistakes that cost NetworkPolicy authors hours, found before they
//! reach a cluster. Each finding names the policy, the file, line and field it is about, what
//! the policy really does, why that matters and how to fix it. One module per family of
//! findings; they all judge through the same compiled policies and `decide` as `simulate`.

mod blocks;
mod dns;
mod peers;
mod ports;
mod redundant;
pub mod sarif;
mod selection;

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::cluster::{Cluster, Pod};
use crate::compiled::PodPolicy;
use crate::manifest::ObjectError;
use crate::policy::{Origin, Policy, PolicyId};
use crate::simulate::compile_all;

/// How much a finding matters. The order is from the least to the most serious.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nothing is wrong with the traffic.
    Note,
    /// Very likely not what the author meant.
    Warning,
    /// Breaks the traffic the policy was written for, leaves pods unprotected, or opens
    /// secrets: fix before applying.
    Error,
}

impl Severity {
    /// `note`, `warning` or `error`: SARIF's levels, spelt the same.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `lint` looks for: one variant per kind of finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// An object that could not be read.
    InvalidObject,
    /// Pods isolated for egress with no way to reach DNS.
    NoDns,
    /// A namespaceSelector on labels no namespace has.
    UnknownNamespaceLabels,
    /// A namespaceSelector and a podSelector in two peers, where one peer was meant.
    OrNotAnd,
    /// A podSelector alone whose labels exist only in other namespaces.
    PodsInOtherNamespace,
    /// A named port that no pod it could apply to declares.
    UnknownNamedPort,
    /// An ipBlock that holds pod addresses.
    IpBlockHoldsPods,
    /// An ipBlock aimed at a Service's ClusterIP.
    IpBlockClusterIp,
    /// Egress open to the cloud metadata address.
    CloudMetadata,
    /// A policy that selects no pod.
    SelectsNoPod,
    /// Pods selected by policies that nothing enforces.
    NotInjected,
    /// HTTP, DNS-name, TLS-name or FQDN conditions that an L4-only rule makes moot.
    L7Overridden,
    /// A rule that allows nothing another rule does not already allow.
    RedundantRule,
}

impl Check {
    /// Every check, in the order they are documented.
    pub const ALL: [Check; 13] = [
        Check::InvalidObject,
        Check::NoDns,
        Check::UnknownNamespaceLabels,
        Check::OrNotAnd,
        Check::PodsInOtherNamespace,
        Check::UnknownNamedPort,
        Check::IpBlockHoldsPods,
        Check::IpBlockClusterIp,
        Check::CloudMetadata,
        Check::SelectsNoPod,
        Check::NotInjected,
        Check::L7Overridden,
        Check::RedundantRule,
    ];

    /// The check's identifier, as `--skip`, JSON and SARIF name it.
    pub fn id(self) -> &'static str {
        match self {
            Check::InvalidObject => "invalid-object",
            Check::NoDns => "no-dns",
            Check::UnknownNamespaceLabels => "unknown-namespace-labels",
            Check::OrNotAnd => "or-not-and",
            Check::PodsInOtherNamespace => "pods-in-other-namespace",
            Check::UnknownNamedPort => "unknown-named-port",
            Check::IpBlockHoldsPods => "ipblock-holds-pods",
            Check::IpBlockClusterIp => "ipblock-cluster-ip",
            Check::CloudMetadata => "cloud-metadata",
            Check::SelectsNoPod => "selects-no-pod",
            Check::NotInjected => "not-injected",
            Check::L7Overridden => "l7-overridden",
            Check::RedundantRule => "redundant-rule",
        }
    }

    /// The check named `id`.
    pub fn from_id(id: &str) -> Option<Check> {
        Check::ALL.into_iter().find(|c| c.id() == id)
    }

    /// How serious its findings usually are (a finding may say otherwise).
    pub fn severity(self) -> Severity {
        match self {
            Check::InvalidObject | Check::NoDns | Check::CloudMetadata => Severity::Error,
            Check::RedundantRule => Severity::Note,
            _ => Severity::Warning,
        }
    }

    /// What the check finds, in one line.
    pub fn title(self) -> &'static str {
        match self {
            Check::InvalidObject => "an object palisade cannot read",
            Check::NoDns => "egress isolation with no DNS allowance",
            Check::UnknownNamespaceLabels => "a namespaceSelector on labels no namespace has",
            Check::OrNotAnd => {
                "a namespaceSelector and a podSelector in two peers (OR) that read like one (AND)"
            }
            Check::PodsInOtherNamespace => {
                "a podSelector alone whose labels exist only in other namespaces"
            }
            Check::UnknownNamedPort => "a named port that no pod it applies to declares",
            Check::IpBlockHoldsPods => "an ipBlock that holds pod addresses",
            Check::IpBlockClusterIp => "an ipBlock aimed at a Service's ClusterIP",
            Check::CloudMetadata => "egress open to the cloud metadata service",
            Check::SelectsNoPod => "a policy that selects no pod",
            Check::NotInjected => "pods selected by policies but not injected",
            Check::L7Overridden => {
                "HTTP or FQDN conditions on a port that an L4-only rule already allows"
            }
            Check::RedundantRule => "a rule made redundant by a broader one",
        }
    }

    /// Why findings of this check matter.
    pub fn why(self) -> &'static str {
        match self {
            Check::InvalidObject => {
                "An invalid object is left out: palisade enforces the rest, and this object's \
                 rules do not exist until it is fixed."
            }
            Check::NoDns => {
                "Once a policy isolates a pod's egress, only what a rule allows goes out, DNS \
                 included. Without DNS every lookup fails, so every connection by name fails, \
                 even to destinations the policies allow."
            }
            Check::UnknownNamespaceLabels => {
                "A namespaceSelector matches namespace labels, never names. The API server sets \
                 only kubernetes.io/metadata.name on a namespace; a selector on any other label \
                 matches nothing until someone adds that label, so the rule allows nothing."
            }
            Check::OrNotAnd => {
                "Two entries of a from/to list are two peers, and peers are ORed: the rule \
                 allows every pod of the selected namespaces, plus the selected pods of the \
                 policy's own namespace. A namespaceSelector and a podSelector ANDed must sit \
                 in one entry (one dash)."
            }
            Check::PodsInOtherNamespace => {
                "A podSelector without a namespaceSelector picks pods of the policy's own \
                 namespace only. Pods with these labels run only in other namespaces, so the \
                 rule matches nothing."
            }
            Check::UnknownNamedPort => {
                "A named port is resolved against the destination pod's container ports. \
                 When no pod it could apply to declares that name (with that protocol), the \
                 port matches nothing and the rule allows nothing."
            }
            Check::IpBlockHoldsPods => {
                "An ipBlock matches any address in it, pod addresses included, whatever the \
                 pods' labels: a rule written for outside addresses also opens the pods in the \
                 block. Pod addresses change with every restart, so selectors are the way to \
                 name pods."
            }
            Check::IpBlockClusterIp => {
                "A connection to a Service is judged against the pod it reaches (kube-proxy \
                 and palisade's proxy translate the ClusterIP first), so an ipBlock holding \
                 only a ClusterIP matches nothing."
            }
            Check::CloudMetadata => {
                "169.254.169.254 (and fd00:ec2::254 on AWS) is the cloud metadata service, \
                 which hands out the node's credentials to whoever asks. Egress to every \
                 address on port 80 includes it."
            }
            Check::SelectsNoPod => {
                "A policy whose pod selector matches no pod does nothing; often its labels \
                 are misspelt or belong to another namespace."
            }
            Check::NotInjected => {
                "palisade enforces policies in each pod's sidecar. A pod without the sidecar \
                 (no palisade.dev/inject) or on the node's network is not isolated by \
                 palisade, whatever the policies that select it say."
            }
            Check::L7Overridden => {
                "Policies add up: when another rule allows the same peer and port without \
                 conditions, the connection is allowed whole and the HTTP rules, DNS names, TLS \
                 server names or FQDNs of this rule never restrict anything."
            }
            Check::RedundantRule => {
                "Every connection this rule allows is allowed by a broader rule too: removing \
                 it changes nothing, and keeping it suggests a restriction that does not exist."
            }
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl Serialize for Check {
    /// As its identifier.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

/// One thing `lint` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What kind of finding.
    pub check: Check,
    /// How serious.
    pub severity: Severity,
    /// The file the object was read from (empty when not from a file).
    pub file: String,
    /// The line of `field` (0 when unknown).
    pub line: u32,
    /// `Kind namespace/name`.
    pub object: String,
    /// The field's path in the object, e.g. `spec.egress[0].to[1]`.
    pub field: String,
    /// What is wrong here, and what the policy really does.
    pub message: String,
    /// Why it matters.
    pub why: &'static str,
    /// How to fix it (may hold a YAML snippet over several lines).
    pub fix: String,
}

impl Finding {
    /// A finding about `field` of `policy`, with the check's own severity.
    fn at(check: Check, policy: &Policy, origin: &Origin, message: String, fix: String) -> Self {
        Finding {
            check,
            severity: check.severity(),
            file: policy.source.file.to_string(),
            line: origin.line,
            object: object_name(&policy.id),
            field: origin.field.clone(),
            message,
            why: check.why(),
            fix,
        }
    }

    /// The same finding with another severity.
    fn with_severity(self, severity: Severity) -> Self {
        Finding { severity, ..self }
    }

    /// A finding for an object the manifest reader rejected.
    pub fn invalid(e: &ObjectError) -> Self {
        Finding {
            check: Check::InvalidObject,
            severity: Severity::Error,
            file: e.file.clone(),
            line: e.line,
            object: e.what.clone().unwrap_or_default(),
            field: e.path.clone(),
            message: e.message.clone(),
            why: Check::InvalidObject.why(),
            fix: "correct the field as the message says; `palisade simulate` reads the same way"
                .into(),
        }
    }
}

/// `Kind namespace/name`.
fn object_name(id: &PolicyId) -> String {
    format!("{} {id}", id.kind.as_str())
}

/// Everything the checks share: the cluster, and every pod's compiled policy.
pub(crate) struct Context<'c> {
    cluster: &'c Cluster,
    /// The compiled policy of each pod, in `cluster.pods` order.
    compiled: Vec<Arc<PodPolicy>>,
}

impl<'c> Context<'c> {
    fn new(cluster: &'c Cluster) -> Self {
        Self {
            cluster,
            compiled: compile_all(cluster),
        }
    }

    /// The pods a policy selects, with their index in `cluster.pods`.
    fn selected<'a>(&'a self, policy: &'a Policy) -> impl Iterator<Item = (usize, &'c Pod)> + 'a {
        self.cluster.pods.iter().enumerate().filter(move |(_, p)| {
            p.namespace == policy.id.namespace && policy.pod_selector.matches(&p.labels)
        })
    }

    /// Whether the manifests hold any pod of `namespace`: checks that speak of the pods a
    /// policy selects say nothing about namespaces whose pods are not in the manifests.
    fn has_pods(&self, namespace: &str) -> bool {
        self.cluster.pods.iter().any(|p| p.namespace == namespace)
    }
}

/// Names in words: `a, b, c, d and 4 more`, or `none`.
fn word_list(names: &[String]) -> String {
    const SHOWN: usize = 4;
    match names.len() {
        0 => "none".into(),
        n if n <= SHOWN => names.join(", "),
        n => format!("{} and {} more", names[..SHOWN].join(", "), n - SHOWN),
    }
}

/// Pods in words: `a, b, c, d and 4 more`, or `none`.
fn pod_list<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> String {
    word_list(&pods.into_iter().map(Pod::key).collect::<Vec<_>>())
}

/// Every finding about the policies of `cluster`, sorted by file, line and check.
pub fn lint(cluster: &Cluster) -> Vec<Finding> {
    let cx = Context::new(cluster);
    let mut out = Vec::new();
    dns::check(&cx, &mut out);
    peers::check(&cx, &mut out);
    ports::check(&cx, &mut out);
    blocks::check(&cx, &mut out);
    selection::check(&cx, &mut out);
    redundant::check(&cx, &mut out);
    out.sort_by(|a, b| {
        (&a.file, a.line, a.check, &a.field, &a.message)
            .cmp(&(&b.file, b.line, b.check, &b.field, &b.message))
    });
    out.dedup();
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::manifest::{load_str, Report};

    /// A cluster read from one manifest stream, which must be valid.
    pub(crate) fn cluster(text: &str) -> Cluster {
        let mut cluster = Cluster::default();
        let mut report = Report::default();
        load_str(&mut cluster, "test.yaml", text, &mut report);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        cluster.finish();
        cluster.assign_missing_ips();
        cluster
    }

    /// The findings of one check on a manifest stream.
    pub(crate) fn findings(check: Check, text: &str) -> Vec<Finding> {
        lint(&cluster(text))
            .into_iter()
            .filter(|f| f.check == check)
            .collect()
    }

    /// Labels written `k=v,k=v`, as YAML mapping entries.
    fn yaml_labels(labels: &str) -> Vec<String> {
        labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').expect("k=v");
                format!("{k}: {v}")
            })
            .collect()
    }

    /// A namespace with labels (`k=v,k=v`), injected so that `not-injected` stays quiet.
    pub(crate) fn ns(name: &str, labels: &str) -> String {
        let mut labels = yaml_labels(labels);
        labels.push("palisade.dev/inject: enabled".into());
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{}}}}}\n---\n",
            labels.join(", ")
        )
    }

    /// A pod with labels (`k=v,k=v`), an address and container ports (`80`, `53/UDP`,
    /// `http:8080`).
    pub(crate) fn pod(key: &str, labels: &str, ip: &str, ports: &str) -> String {
        let (namespace, name) = key.split_once('/').expect("ns/name");
        let labels = yaml_labels(labels);
        let ports: Vec<String> = ports
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (name, rest) = match p.split_once(':') {
                    Some((n, r)) => (Some(n), r),
                    None => (None, p),
                };
                let (number, protocol) = rest.split_once('/').unwrap_or((rest, "TCP"));
                let name = name.map(|n| format!(", name: {n}")).unwrap_or_default();
                format!("{{containerPort: {number}, protocol: {protocol}{name}}}")
            })
            .collect();
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{{}}}}}\n\
             spec: {{containers: [{{name: c, ports: [{}]}}]}}\nstatus: {{podIP: {ip}, hostIP: 192.168.0.1}}\n---\n",
            labels.join(", "),
            ports.join(", ")
        )
    }

    /// Cluster DNS, in `kube-system`, open to everyone.
    pub(crate) fn dns() -> String {
        ns("kube-system", "")
            + &pod(
                "kube-system/coredns",
                "k8s-app=kube-dns",
                "10.0.9.53",
                "53/UDP,53/TCP",
            )
    }

    /// A NetworkPolicy in `namespace` with `spec` (YAML, indented by two).
    pub(crate) fn netpol(key: &str, spec: &str) -> String {
        let (namespace, name) = key.split_once('/').expect("ns/name");
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}---\n"
        )
    }

    /// Egress to DNS for every pod of `namespace`, written right.
    pub(crate) fn allow_dns(namespace: &str) -> String {
        netpol(
            &format!("{namespace}/allow-dns"),
            "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}\n      podSelector: {matchLabels: {k8s-app: kube-dns}}\n    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]\n",
        )
    }

    #[test]
    fn check_ids_round_trip_and_are_unique() {
        for c in Check::ALL {
            assert_eq!(Check::from_id(c.id()), Some(c));
        }
        let mut ids: Vec<&str> = Check::ALL.iter().map(|c| c.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), Check::ALL.len());
    }

    #[test]
    fn findings_point_at_the_file_line_and_field() {
        let text = ns("a", "")
            + &pod("a/web", "app=web", "10.0.0.1", "80")
            + &netpol(
                "a/ghost",
                "  podSelector: {matchLabels: {app: wbe}}\n  policyTypes: [Ingress]\n",
            );
        let found = findings(Check::SelectsNoPod, &text);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.file, "test.yaml");
        assert_eq!(f.object, "NetworkPolicy a/ghost");
        assert_eq!(f.field, "spec.podSelector");
        // The policy starts after the namespace (4 lines) and the pod (5 lines).
        let line = text
            .lines()
            .position(|l| l.contains("app: wbe"))
            .expect("the selector's line") as u32
            + 1;
        assert_eq!(f.line, line);
    }
}
