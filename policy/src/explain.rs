//! One flow explained: every policy that selects each side, each of its rules, whether the
//! rule's peers and ports match, and the verdict. `palisade check` prints this.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::cluster::Cluster;
use crate::compiled::{Flow, PodPolicy};
use crate::fqdn;
use crate::http::PlainRequest;
use crate::policy::{Direction, Rule};
use crate::ports::Protocol;
use crate::verdict::{decide, decide_http, Action, Verdict};

/// The whole explanation of one flow.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The source.
    pub from: End,
    /// The destination (after picking a Service backend, when the flow is to a ClusterIP).
    pub to: End,
    /// The destination port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// Whether the flow goes through.
    pub allowed: bool,
    /// `allow`, `deny` or `would-deny`.
    pub action: Action,
    /// The source pod's egress, when the source is a pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<SideExplanation>,
    /// The destination pod's ingress, when the destination is a pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<SideExplanation>,
}

/// One end of the flow.
#[derive(Debug, Clone, Serialize)]
pub struct End {
    /// `namespace/name` when it is a pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The address.
    pub ip: IpAddr,
}

/// One side's verdict, with every policy that had a say.
#[derive(Debug, Clone, Serialize)]
pub struct SideExplanation {
    /// `namespace/name` of the pod.
    pub pod: String,
    /// Which side.
    pub direction: Direction,
    /// What this side does.
    pub action: Action,
    /// Why, in words.
    pub reason: String,
    /// The connection is allowed only by rules with L7 conditions.
    pub l7: bool,
    /// The policies selecting the pod in this direction.
    pub policies: Vec<PolicyExplanation>,
}

/// A policy selecting the pod, and how each of its rules fared.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyExplanation {
    /// `namespace/name`.
    pub name: String,
    /// Its kind.
    pub kind: &'static str,
    /// Staged with `palisade.dev/mode: audit`.
    pub staged: bool,
    /// Its rules for this direction.
    pub rules: Vec<RuleExplanation>,
}

/// One rule and whether it matched.
#[derive(Debug, Clone, Serialize)]
pub struct RuleExplanation {
    /// Index in the policy's `ingress` or `egress`.
    pub index: u32,
    /// Its peers in words; `None` means every peer.
    pub peers: Option<Vec<String>>,
    /// Its ports in words (empty means every port).
    pub ports: Vec<String>,
    /// Index of the peer that matched, or `every` when the rule takes every peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_matched: Option<String>,
    /// Whether a port matched.
    pub port_matched: bool,
    /// The HTTP rules of the matched port, in words, when it has some.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<String>,
    /// TLS server names the matched port requires, when it does.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
}

/// What to judge.
pub struct Question<'a> {
    /// The source: a pod's policy, or just an address.
    pub from: (Option<&'a PodPolicy>, IpAddr),
    /// The destination: a pod's policy, or just an address.
    pub to: (Option<&'a PodPolicy>, IpAddr),
    /// The destination port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// An HTTP request on the connection, if one is asked about.
    pub request: Option<&'a PlainRequest>,
    /// The DNS names the source resolved to the destination.
    pub names: &'a [Arc<str>],
}

/// Judges the question's flow on both sides and explains it.
pub fn explain(cluster: &Cluster, q: &Question<'_>) -> Explanation {
    let egress = q.from.0.map(|policy| {
        let flow = Flow {
            direction: Direction::Egress,
            peer: q.to.1,
            port: q.port,
            protocol: q.protocol,
            names: q.names,
        };
        side(cluster, policy, &flow, q.request)
    });
    let ingress = q.to.0.map(|policy| {
        let flow = Flow {
            direction: Direction::Ingress,
            peer: q.from.1,
            port: q.port,
            protocol: q.protocol,
            names: &[],
        };
        side(cluster, policy, &flow, q.request)
    });
    let [e, i] = [&egress, &ingress].map(|s| s.as_ref().map_or(Action::Allow, |s| s.action));
    let action = e.and(i);
    Explanation {
        from: End {
            pod: q.from.0.map(|p| p.pod.clone()),
            ip: q.from.1,
        },
        to: End {
            pod: q.to.0.map(|p| p.pod.clone()),
            ip: q.to.1,
        },
        port: q.port,
        protocol: q.protocol,
        allowed: action.passes(),
        action,
        egress,
        ingress,
    }
}

fn side(
    cluster: &Cluster,
    policy: &PodPolicy,
    flow: &Flow<'_>,
    request: Option<&PlainRequest>,
) -> SideExplanation {
    let connection = decide(policy, flow);
    let verdict: Verdict = match request {
        Some(req) if connection.inspect.http => decide_http(policy, flow, req),
        _ => connection,
    };
    let side = policy.side(flow.direction);
    let policies = side
        .policies
        .iter()
        .enumerate()
        .map(|(pi, pref)| {
            let model = cluster.policies.iter().find(|p| p.id == pref.id);
            let rules = side
                .rules
                .iter()
                .filter(|r| r.policy as usize == pi)
                .map(|r| {
                    let model_rule: Option<&Rule> = model
                        .and_then(|m| m.rules(flow.direction))
                        .and_then(|rs| rs.get(r.rule as usize));
                    let port = r.match_port(flow);
                    let matched_port = port.flatten();
                    RuleExplanation {
                        index: r.rule,
                        peers: model_rule
                            .and_then(|m| m.peers.as_ref())
                            .map(|ps| ps.iter().map(|p| p.to_string()).collect()),
                        ports: model_rule
                            .map(|m| m.ports.iter().map(|p| p.spec.to_string()).collect())
                            .unwrap_or_default(),
                        peer_matched: r.match_peer(flow).map(|hit| {
                            let peer = hit
                                .peer
                                .map_or_else(|| "every".to_owned(), |i| i.to_string());
                            match hit.name.and_then(|i| flow.names.get(i as usize)) {
                                Some(name) => format!("{peer} (DNS name {})", fqdn::display(name)),
                                None => peer,
                            }
                        }),
                        port_matched: port.is_some(),
                        http: matched_port
                            .and_then(|p| p.l7.http.as_ref())
                            .map(|rules| rules.rules().iter().map(|h| h.to_string()).collect())
                            .unwrap_or_default(),
                        server_names: matched_port
                            .and_then(|p| p.l7.server_names.as_ref())
                            .map(|n| n.to_vec())
                            .unwrap_or_default(),
                    }
                })
                .collect();
            PolicyExplanation {
                name: pref.id.to_string(),
                kind: pref.id.kind.as_str(),
                staged: pref.audit,
                rules,
            }
        })
        .collect();
    SideExplanation {
        pod: policy.pod.clone(),
        direction: flow.direction,
        action: verdict.action,
        reason: verdict.describe(policy, flow),
        l7: connection.inspect.any(),
        policies,
    }
}
