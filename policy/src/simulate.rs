//! Every pod-to-pod flow of a cluster and its verdict: what `palisade simulate` prints and
//! what `palisade lab` expects to observe.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, Pod};
use crate::compile::Compiler;
use crate::compiled::{Flow, PodPolicy};
use crate::policy::Direction;
use crate::ports::Protocol;
use crate::verdict::{decide, Action, Reason};

/// One side's part of a flow's verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideVerdict {
    /// Whether this side lets the flow through.
    pub allowed: bool,
    /// Whether an enforced policy isolates the pod in this direction.
    pub isolated: bool,
    /// `namespace/name` of the policies whose rules allowed it (when allowed), or of those
    /// that isolate the pod (when not).
    pub policies: Vec<String>,
    /// The verdict's action (`would-deny` in audit mode); not part of the JSON.
    #[serde(skip)]
    pub action: Option<Action>,
}

/// A flow from one pod to a port of another, judged by both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimFlow {
    /// `namespace/name` of the source pod.
    pub from: String,
    /// `namespace/name` of the destination pod.
    pub to: String,
    /// The destination port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// Whether the flow goes through: both sides let it.
    pub allowed: bool,
    /// The source pod's egress (may be left out of a flows file that only says `allowed`).
    #[serde(default)]
    pub egress: SideVerdict,
    /// The destination pod's ingress (likewise).
    #[serde(default)]
    pub ingress: SideVerdict,
}

impl SimFlow {
    /// Whether either side let the flow through only because of audit mode.
    pub fn would_deny(&self) -> bool {
        self.action() == Action::WouldDeny
    }

    /// What happens to the flow, both sides considered: `would-deny` when it passes only
    /// because of audit mode. Flows read from JSON carry no side actions: `allowed` says it
    /// all, and it wins over the sides when they disagree.
    pub fn action(&self) -> Action {
        // `allowed` is what happened (a lab's flows keep the sides it expected); the sides
        // only tell an audit-mode pass from a plain one.
        match (self.egress.action, self.ingress.action) {
            (Some(e), Some(i)) if e.and(i).passes() == self.allowed => e.and(i),
            _ if self.allowed => Action::Allow,
            _ => Action::Deny,
        }
    }
}

/// The JSON document `simulate --output json` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Simulation {
    /// Every flow, sorted by from, to, protocol and port.
    pub flows: Vec<SimFlow>,
}

/// The verdict of one side, with the policies behind it, the way `simulate` reports it.
pub fn side_verdict(policy: &PodPolicy, flow: &Flow<'_>) -> SideVerdict {
    let verdict = decide(policy, flow);
    let side = policy.side(flow.direction);
    let mut policies: Vec<String> = match verdict.reason {
        // Every policy with a rule that allows it, not only the first.
        Reason::Rule { .. } => side
            .matches(flow)
            .filter(|m| !side.policies[m.rule.policy as usize].audit)
            .map(|m| side.policies[m.rule.policy as usize].id.to_string())
            .collect(),
        Reason::NoRuleMatched | Reason::StagedNoRuleMatched => {
            side.policies.iter().map(|p| p.id.to_string()).collect()
        }
        Reason::Local | Reason::Node | Reason::NotIsolated => Vec::new(),
    };
    policies.dedup();
    SideVerdict {
        allowed: verdict.action.passes(),
        isolated: side.isolated(),
        policies,
        action: Some(verdict.action),
    }
}

/// Judges one flow between two pods whose policies are compiled.
pub fn judge(
    from: (&Pod, &PodPolicy),
    to: (&Pod, &PodPolicy),
    port: u16,
    protocol: Protocol,
) -> Option<SimFlow> {
    let to_ip = *to.0.ips.first()?;
    let from_ip = from.0.ip_like(to_ip)?;
    let egress = Flow {
        direction: Direction::Egress,
        peer: to_ip,
        port,
        protocol,
        names: &[],
    };
    let ingress = Flow {
        direction: Direction::Ingress,
        peer: from_ip,
        ..egress
    };
    let egress = side_verdict(from.1, &egress);
    let ingress = side_verdict(to.1, &ingress);
    Some(SimFlow {
        from: from.0.key(),
        to: to.0.key(),
        port,
        protocol,
        allowed: egress.allowed && ingress.allowed,
        egress,
        ingress,
    })
}

/// Every flow from one pod to the ports another declares, by protocol and port.
pub fn pair(from: (&Pod, &PodPolicy), to: (&Pod, &PodPolicy)) -> Vec<SimFlow> {
    pair_where(from, to, &|_, _| true)
}

/// The flows of [`pair`] on the ports `keep` accepts.
pub fn pair_where(
    from: (&Pod, &PodPolicy),
    to: (&Pod, &PodPolicy),
    keep: &dyn Fn(Protocol, u16) -> bool,
) -> Vec<SimFlow> {
    let mut ports: Vec<(Protocol, u16)> =
        to.0.ports
            .iter()
            .map(|p| (p.protocol, p.port))
            .filter(|(proto, port)| keep(*proto, *port))
            .collect();
    ports.sort_by_key(|(proto, port)| (proto.as_str(), *port));
    ports.dedup();
    ports
        .into_iter()
        .filter_map(|(protocol, port)| judge(from, to, port, protocol))
        .collect()
}

/// Every pod's compiled policy, in `cluster.pods` order.
pub fn compile_all(cluster: &Cluster) -> Vec<Arc<PodPolicy>> {
    let compiler = Compiler::new(cluster);
    cluster
        .pods
        .iter()
        .map(|p| Arc::new(compiler.compile(p)))
        .collect()
}

/// Every ordered pair of distinct pods, on every port the destination declares.
pub fn simulate(cluster: &Cluster) -> Simulation {
    let policies = compile_all(cluster);
    let mut flows = Vec::new();
    for (i, from) in cluster.pods.iter().enumerate() {
        for (j, to) in cluster.pods.iter().enumerate() {
            if i != j {
                flows.extend(pair((from, &policies[i]), (to, &policies[j])));
            }
        }
    }
    flows.sort_by(|a, b| {
        (&a.from, &a.to, a.protocol.as_str(), a.port).cmp(&(
            &b.from,
            &b.to,
            b.protocol.as_str(),
            b.port,
        ))
    });
    Simulation { flows }
}
