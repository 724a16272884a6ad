//! The verdict on a flow: allowed or not, and why. The proxy, `simulate` and `check` all
//! judge through these functions.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cluster::is_loopback;
use crate::compiled::{Flow, Mode, PodPolicy, RuleMatch, Side};
use crate::http::Request;
use crate::policy::PolicyId;

/// What happens to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
    /// Denied by policy, but let through because of audit mode.
    WouldDeny,
}

impl Action {
    /// Whether the flow goes through.
    pub fn passes(self) -> bool {
        self != Action::Deny
    }

    /// The action on a flow that both `self` and `other` judged (the source's egress and
    /// the destination's ingress): a denial on either side wins, then audit.
    pub fn and(self, other: Action) -> Action {
        match (self, other) {
            (Action::Deny, _) | (_, Action::Deny) => Action::Deny,
            (Action::WouldDeny, _) | (_, Action::WouldDeny) => Action::WouldDeny,
            _ => Action::Allow,
        }
    }

    /// `allow`, `deny` or `would-deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::WouldDeny => "would-deny",
        }
    }
}

/// Why a verdict is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Reason {
    /// The pod talking to itself (its own address or loopback).
    Local,
    /// The pod's own node, which is always allowed.
    Node,
    /// No enforced policy selects the pod in this direction.
    NotIsolated,
    /// A rule allowed it.
    Rule {
        /// Index of the policy in the side's policies.
        policy: u32,
        /// Index of the rule in the policy.
        rule: u32,
        /// Index of the peer in the rule; `None` when the rule takes every peer.
        peer: Option<u32>,
        /// For a `toFQDNs` peer, the index in the flow's names of the DNS name that
        /// allowed the address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<u32>,
        /// Index of the HTTP rule that allowed a request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http: Option<u32>,
    },
    /// The pod is isolated and no rule allowed it.
    NoRuleMatched,
    /// Only staged policies select the pod, and none of their rules allowed it.
    StagedNoRuleMatched,
}

/// What the content of a connection must be checked for, when only rules with L7
/// conditions allow it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inspect {
    /// HTTP requests, against `rules.http`.
    pub http: bool,
    /// DNS query names, against `rules.dns`.
    pub dns: bool,
    /// The TLS server name, against `serverNames`.
    pub tls: bool,
    /// The TLS server name (or each HTTP request's `Host`), which must be a name allowed
    /// by the rule and resolved to the address (`requireSNI`).
    pub sni: bool,
}

impl Inspect {
    fn of(m: &RuleMatch<'_>, policy: &PodPolicy) -> Self {
        let l7 = m.l7();
        Self {
            http: l7.is_some_and(|l7| l7.http.is_some()),
            dns: l7.is_some_and(|l7| l7.dns.is_some()),
            tls: l7.is_some_and(|l7| l7.server_names.is_some()),
            sni: m.needs_sni(policy),
        }
    }

    /// Whether anything must be checked.
    pub fn any(self) -> bool {
        self.http || self.dns || self.tls || self.sni
    }
}

/// A verdict on a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// What happens.
    pub action: Action,
    /// Why.
    pub reason: Reason,
    /// What the connection's content must be checked for: set when only rules with L7
    /// conditions allow it.
    pub inspect: Inspect,
}

impl Verdict {
    fn allow(reason: Reason) -> Self {
        Self {
            action: Action::Allow,
            reason,
            inspect: Inspect::default(),
        }
    }

    fn from_match(m: &RuleMatch<'_>, policy: &PodPolicy, http: Option<u32>) -> Self {
        Self {
            action: Action::Allow,
            reason: Reason::Rule {
                policy: m.rule.policy,
                rule: m.rule.rule,
                peer: m.peer,
                name: m.name,
                http,
            },
            inspect: Inspect::of(m, policy),
        }
    }

    /// The DNS name (normalized) through which a `toFQDNs` rule allowed the flow.
    pub fn name<'a>(&self, flow: &Flow<'a>) -> Option<&'a str> {
        match self.reason {
            Reason::Rule { name: Some(i), .. } => flow.names.get(i as usize).map(|n| &**n),
            _ => None,
        }
    }

    /// Says in words why, naming policies as `namespace/name`.
    pub fn describe(&self, policy: &PodPolicy, flow: &Flow<'_>) -> String {
        let side = policy.side(flow.direction);
        let dir = flow.direction;
        let isolating = || {
            side.policies
                .iter()
                .map(|p| p.id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self.reason {
            Reason::Local => "the pod's own address".into(),
            Reason::Node => "the pod's own node".into(),
            Reason::NotIsolated => format!("no policy isolates {dir} of {}", policy.pod),
            Reason::Rule {
                policy: p,
                rule,
                peer,
                http,
                ..
            } => {
                let id = &side.policies[p as usize].id;
                let mut s = format!("allowed by {} {id}, {dir} rule {rule}", id.kind.as_str());
                if let Some(peer) = peer {
                    s.push_str(&format!(", peer {peer}"));
                }
                if let Some(name) = self.name(flow) {
                    s.push_str(&format!(" (DNS name {})", crate::fqdn::display(name)));
                }
                if let Some(h) = http {
                    s.push_str(&format!(", http rule {h}"));
                }
                s
            }
            Reason::NoRuleMatched => format!(
                "{dir} of {} is isolated by {} and no rule allows it",
                policy.pod,
                isolating()
            ),
            Reason::StagedNoRuleMatched => format!(
                "{dir} of {} is isolated only by staged policies ({}) and none of their rules allows it",
                policy.pod,
                isolating()
            ),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Local => f.write_str("local"),
            Reason::Node => f.write_str("node"),
            Reason::NotIsolated => f.write_str("not-isolated"),
            Reason::Rule { .. } => f.write_str("rule"),
            Reason::NoRuleMatched => f.write_str("no-rule-matched"),
            Reason::StagedNoRuleMatched => f.write_str("staged-no-rule-matched"),
        }
    }
}

impl Side {
    /// Every rule that matches the flow, in order.
    pub fn matches<'p>(&'p self, flow: &'p Flow<'p>) -> impl Iterator<Item = RuleMatch<'p>> + 'p {
        self.rules
            .iter()
            .enumerate()
            .filter_map(move |(index, rule)| {
                let port = rule.match_port(flow)?;
                let hit = rule.match_peer(flow)?;
                Some(RuleMatch {
                    index,
                    rule,
                    peer: hit.peer,
                    name: hit.name,
                    port,
                })
            })
    }

    /// Whether an enforced policy isolates the pod in this direction.
    pub fn isolated(&self) -> bool {
        self.policies.iter().any(|p| !p.audit)
    }

    fn is_staged(&self, m: &RuleMatch<'_>) -> bool {
        self.policies[m.rule.policy as usize].audit
    }
}

/// What decides before any rule: the pod's own traffic and its node.
fn before_rules(policy: &PodPolicy, flow: &Flow<'_>) -> Option<Verdict> {
    if is_loopback(flow.peer) || policy.ips.contains(&flow.peer) {
        return Some(Verdict::allow(Reason::Local));
    }
    if policy.host_ips.contains(&flow.peer) {
        return Some(Verdict::allow(Reason::Node));
    }
    if policy.side(flow.direction).policies.is_empty() {
        return Some(Verdict::allow(Reason::NotIsolated));
    }
    None
}

/// The verdict when no enforced rule allowed the flow.
fn no_rule(policy: &PodPolicy, side: &Side, staged_allowed: bool) -> Verdict {
    let (action, reason) = if side.isolated() {
        let action = match policy.mode {
            Mode::Enforce => Action::Deny,
            Mode::Audit => Action::WouldDeny,
        };
        (action, Reason::NoRuleMatched)
    } else if staged_allowed {
        (Action::Allow, Reason::NotIsolated)
    } else {
        (Action::WouldDeny, Reason::StagedNoRuleMatched)
    };
    Verdict {
        action,
        reason,
        inspect: Inspect::default(),
    }
}

/// Judges a new connection (or UDP flow) of the pod.
pub fn decide(policy: &PodPolicy, flow: &Flow<'_>) -> Verdict {
    if let Some(v) = before_rules(policy, flow) {
        return v;
    }
    let side = policy.side(flow.direction);
    let mut conditional = None;
    let mut staged_allowed = false;
    for m in side.matches(flow) {
        if side.is_staged(&m) {
            staged_allowed = true;
            continue;
        }
        let v = Verdict::from_match(&m, policy, None);
        // A rule that asks nothing of the content allows the connection outright.
        if !v.inspect.any() {
            return v;
        }
        conditional.get_or_insert(v);
    }
    conditional.unwrap_or_else(|| no_rule(policy, side, staged_allowed))
}

/// Judges one DNS query of the pod, for `name` (normalized), on a flow to its DNS server:
/// allowed when a rule allows the flow without DNS rules, or the DNS rules of a matching
/// port allow the name. Rules with other L7 conditions (HTTP) allow no DNS query.
pub fn decide_dns(policy: &PodPolicy, flow: &Flow<'_>, name: &str) -> Verdict {
    if let Some(v) = before_rules(policy, flow) {
        return v;
    }
    let side = policy.side(flow.direction);
    let mut staged_allowed = false;
    for m in side.matches(flow) {
        let allowed = match m.l7() {
            None => true,
            Some(l7) => match &l7.dns {
                Some(patterns) => patterns.iter().any(|p| p.matches(name)),
                None => false,
            },
        };
        match allowed {
            true if side.is_staged(&m) => staged_allowed = true,
            true => {
                return Verdict {
                    inspect: Inspect::default(),
                    ..Verdict::from_match(&m, policy, None)
                }
            }
            false => {}
        }
    }
    no_rule(policy, side, staged_allowed)
}

/// The DNS rules a query must satisfy on the flow (those a refused query failed), in
/// words, each once.
pub fn dns_rules(policy: &PodPolicy, flow: &Flow<'_>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in policy.side(flow.direction).matches(flow) {
        for p in m.l7().and_then(|l7| l7.dns.as_deref()).unwrap_or_default() {
            let s = p.to_string();
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

/// Judges one HTTP request on a connection: allowed when a rule allows the connection
/// without HTTP conditions, or one of the HTTP rules of a matching port allows the request.
pub fn decide_http(policy: &PodPolicy, flow: &Flow<'_>, request: &impl Request) -> Verdict {
    if let Some(v) = before_rules(policy, flow) {
        return v;
    }
    let side = policy.side(flow.direction);
    let mut staged_allowed = false;
    for m in side.matches(flow) {
        let http = match m.l7().and_then(|l7| l7.http.as_deref()) {
            None => Some(None),
            Some(rules) => rules.first_match(request).map(Some),
        };
        match http {
            Some(_) if side.is_staged(&m) => staged_allowed = true,
            Some(h) => {
                return Verdict {
                    inspect: Inspect::default(),
                    ..Verdict::from_match(&m, policy, h)
                }
            }
            None => {}
        }
    }
    no_rule(policy, side, staged_allowed)
}

/// The enforced policies with HTTP rules on the flow's port that a request must satisfy
/// (those a denied request failed), each once, in order.
pub fn http_policies<'p>(policy: &'p PodPolicy, flow: &'p Flow<'p>) -> Vec<&'p PolicyId> {
    let side = policy.side(flow.direction);
    let mut ids: Vec<&PolicyId> = Vec::new();
    for m in side.matches(flow) {
        let id = &side.policies[m.rule.policy as usize].id;
        if m.l7().is_some_and(|l7| l7.http.is_some()) && !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use super::*;
    use crate::cluster::Cluster;
    use crate::compile::Compiler;
    use crate::fqdn::normalize;
    use crate::manifest::{load_str, Report};
    use crate::policy::Direction;
    use crate::ports::Protocol;

    const PODS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: n, annotations: {palisade.dev/require-sni: 'true'}}
---
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: n, labels: {app: app}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: own, namespace: n, labels: {app: own}, annotations: {palisade.dev/require-sni: 'false'}}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
status: {podIP: 10.0.0.53}
";

    fn compile(policies: &str, pod: &str) -> (PodPolicy, Report) {
        let mut cluster = Cluster::default();
        let mut report = Report::default();
        load_str(
            &mut cluster,
            "t.yaml",
            &format!("{PODS}---\n{policies}"),
            &mut report,
        );
        cluster.finish();
        let p = cluster.pod("n", pod).unwrap();
        (Compiler::new(&cluster).compile(p), report)
    }

    fn egress<'a>(peer: &str, port: u16, protocol: Protocol, names: &'a [Arc<str>]) -> Flow<'a> {
        Flow {
            direction: Direction::Egress,
            peer: peer.parse::<IpAddr>().unwrap(),
            port,
            protocol,
            names,
        }
    }

    fn names(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|n| Arc::from(normalize(n))).collect()
    }

    const FQDN: &str = "
apiVersion: palisade.dev/v1alpha1
kind: PalisadePolicy
metadata: {name: github, namespace: n}
spec:
  endpointSelector: {}
  egress:
  - toFQDNs: [{matchName: api.github.com}, {matchPattern: '*.githubusercontent.com'}]
    toPorts: [{ports: [{port: '443'}]}]
  - toFQDNs: [{matchName: open.example.com}]
    requireSNI: false
    toPorts: [{ports: [{port: '443'}]}]
";

    #[test]
    fn an_address_is_allowed_through_a_name_the_pod_resolved_and_the_name_is_told() {
        let (policy, report) = compile(FQDN, "own");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let resolved = names(&["cdn.example.net", "raw.githubusercontent.com"]);
        let flow = egress("203.0.113.7", 443, Protocol::Tcp, &resolved);
        let v = decide(&policy, &flow);
        assert_eq!(v.action, Action::Allow);
        assert_eq!(v.name(&flow), Some("raw.githubusercontent.com."));
        assert!(!v.inspect.any(), "the pod says require-sni: false");
        assert!(
            v.describe(&policy, &flow)
                .contains("DNS name raw.githubusercontent.com"),
            "{}",
            v.describe(&policy, &flow)
        );
        // Same address and port, no name resolved to it (or another port): denied.
        let none = egress("203.0.113.7", 443, Protocol::Tcp, &[]);
        assert_eq!(decide(&policy, &none).action, Action::Deny);
        let other = names(&["cdn.example.net"]);
        assert_eq!(
            decide(&policy, &egress("203.0.113.7", 443, Protocol::Tcp, &other)).action,
            Action::Deny
        );
        assert_eq!(
            decide(
                &policy,
                &egress("203.0.113.7", 80, Protocol::Tcp, &resolved)
            )
            .action,
            Action::Deny
        );
    }

    #[test]
    fn require_sni_comes_from_the_namespace_and_a_rule_can_turn_it_off() {
        let (policy, _) = compile(FQDN, "app");
        assert!(policy.require_sni);
        let resolved = names(&["api.github.com", "open.example.com"]);
        let flow = egress("203.0.113.7", 443, Protocol::Tcp, &resolved);
        // The rule without requireSNI of its own takes the namespace's default... but the
        // second rule turns it off, and a rule asking nothing allows outright.
        let v = decide(&policy, &flow);
        assert_eq!(v.action, Action::Allow);
        assert!(!v.inspect.sni, "{v:?}");
        assert_eq!(v.name(&flow), Some("open.example.com."));

        let only_github = names(&["api.github.com"]);
        let flow = egress("203.0.113.7", 443, Protocol::Tcp, &only_github);
        let v = decide(&policy, &flow);
        assert_eq!(v.action, Action::Allow);
        assert!(v.inspect.sni, "api.github.com's rule requires SNI");
        // The ClientHello's name decides: the allowed name passes, another does not.
        let sni = flow.only_name(&normalize("API.github.com"));
        assert_eq!(decide(&policy, &sni).action, Action::Allow);
        let other = flow.only_name(&normalize("evil.example.com"));
        assert_eq!(decide(&policy, &other).action, Action::Deny);
    }

    #[test]
    fn require_sni_is_palisade_s_own_field() {
        let cnp = FQDN
            .replace("palisade.dev/v1alpha1", "cilium.io/v2")
            .replace("PalisadePolicy", "CiliumNetworkPolicy");
        let (_, report) = compile(&cnp, "app");
        let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("requireSNI") && e.contains("PalisadePolicy")),
            "{errors:?}"
        );
        let (_, report) = compile(
            "apiVersion: palisade.dev/v1alpha1\nkind: PalisadePolicy\nmetadata: {name: p, namespace: n}\n\
             spec:\n  endpointSelector: {}\n  egress:\n  - toCIDR: [10.0.0.0/8]\n    requireSNI: true\n",
            "app",
        );
        let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
        assert!(errors.iter().any(|e| e.contains("toFQDNs")), "{errors:?}");
    }

    const DNS: &str = "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns, namespace: n}
spec:
  endpointSelector: {matchLabels: {app: app}}
  egress:
  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: '53', protocol: UDP}, {port: '53', protocol: TCP}]
      rules:
        dns: [{matchPattern: '*.n.svc.cluster.local'}, {matchName: api.github.com}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: any-name, namespace: n}
spec:
  podSelector: {matchLabels: {app: own}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 53, protocol: UDP}]
";

    #[test]
    fn dns_rules_restrict_the_names_a_pod_may_look_up() {
        let (policy, report) = compile(DNS, "app");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let flow = egress("10.0.0.53", 53, Protocol::Udp, &[]);
        let v = decide(&policy, &flow);
        assert_eq!(v.action, Action::Allow);
        assert!(v.inspect.dns);
        for ok in ["backend.n.svc.cluster.local.", "API.GitHub.com"] {
            assert_eq!(
                decide_dns(&policy, &flow, &normalize(ok)).action,
                Action::Allow,
                "{ok}"
            );
        }
        for refused in [
            "evil.example.com.",
            "backend.other.svc.cluster.local.",
            "github.com.",
        ] {
            let v = decide_dns(&policy, &flow, &normalize(refused));
            assert_eq!(v.action, Action::Deny, "{refused}");
            assert_eq!(v.reason, Reason::NoRuleMatched);
        }
        assert_eq!(
            dns_rules(&policy, &flow),
            vec![
                "*.n.svc.cluster.local".to_owned(),
                "api.github.com".to_owned()
            ]
        );
        // Another server is not the rule's peer: nothing allows the query.
        let elsewhere = egress("192.0.2.1", 53, Protocol::Udp, &[]);
        assert_eq!(
            decide_dns(&policy, &elsewhere, "api.github.com.").action,
            Action::Deny
        );

        // A rule on port 53 without DNS rules allows every name.
        let (own, _) = compile(DNS, "own");
        let v = decide_dns(&own, &elsewhere, "anything.example.");
        assert_eq!(v.action, Action::Allow);
    }
}
