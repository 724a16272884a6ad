//! The verdict on a flow: allowed or not, and why. The proxy, `simulate` and `check` all
//! judge through these functions.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cluster::is_loopback;
use crate::compiled::{Flow, Mode, PodPolicy, RuleMatch, Side};
use crate::http::Request;
use crate::policy::{PolicyId, L7};

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
}

impl Inspect {
    fn of(l7: Option<&L7>) -> Self {
        l7.map_or_else(Self::default, |l7| Self {
            http: l7.http.is_some(),
            dns: l7.dns.is_some(),
            tls: l7.server_names.is_some(),
        })
    }

    /// Whether anything must be checked.
    pub fn any(self) -> bool {
        self.http || self.dns || self.tls
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

    fn from_match(m: &RuleMatch<'_>, http: Option<u32>) -> Self {
        Self {
            action: Action::Allow,
            reason: Reason::Rule {
                policy: m.rule.policy,
                rule: m.rule.rule,
                peer: m.peer,
                http,
            },
            inspect: Inspect::of(m.l7()),
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
            } => {
                let id = &side.policies[p as usize].id;
                let mut s = format!("allowed by {} {id}, {dir} rule {rule}", id.kind.as_str());
                if let Some(peer) = peer {
                    s.push_str(&format!(", peer {peer}"));
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
                let peer = rule.match_peer(flow)?;
                Some(RuleMatch {
                    index,
                    rule,
                    peer,
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
    let mut l7_match = None;
    let mut staged_allowed = false;
    for m in side.matches(flow) {
        if side.is_staged(&m) {
            staged_allowed = true;
        } else if m.l7().is_none() {
            return Verdict::from_match(&m, None);
        } else {
            l7_match.get_or_insert(m);
        }
    }
    match l7_match {
        Some(m) => Verdict::from_match(&m, None),
        None => no_rule(policy, side, staged_allowed),
    }
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
                    ..Verdict::from_match(&m, h)
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
