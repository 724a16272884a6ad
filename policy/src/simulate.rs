//! Every pod-to-pod flow of a cluster and its verdict: what `palisade simulate` prints and
//! what `palisade lab` expects to observe. A flow between dual-stack pods is judged once
//! per address family, since policies can treat the two addresses differently (an
//! `ipBlock` names addresses of one family).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, Family, Pod};
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
    /// Only rules with HTTP conditions let the connection through: its proxy judges each
    /// request (`check --method --path` judges one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http: bool,
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
    /// The address family: the flow goes between the two pods' addresses of this family
    /// (IPv4 when a flows file leaves it out).
    #[serde(default)]
    pub family: Family,
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
    /// Whether a proxy on either side judges the connection's HTTP requests.
    pub fn http(&self) -> bool {
        self.egress.http || self.ingress.http
    }

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
    /// Every flow, sorted by from, to, protocol, port and family.
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
        http: verdict.action.passes() && verdict.inspect.http,
    }
}

/// Judges one flow between two pods whose policies are compiled, between their addresses
/// of `family`; `None` when one of them has no address of that family.
pub fn judge(
    from: (&Pod, &PodPolicy),
    to: (&Pod, &PodPolicy),
    port: u16,
    protocol: Protocol,
    family: Family,
) -> Option<SimFlow> {
    let to_ip = to.0.ip_of(family)?;
    let from_ip = from.0.ip_of(family)?;
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
        family,
        allowed: egress.allowed && ingress.allowed,
        egress,
        ingress,
    })
}

/// Every flow from one pod to the ports another declares, by protocol, port and family.
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
        .flat_map(|(protocol, port)| {
            Family::ALL
                .into_iter()
                .filter_map(move |family| judge(from, to, port, protocol, family))
        })
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

/// Every ordered pair of distinct pods, on every port the destination declares, in every
/// family both pods have an address of.
pub fn simulate(cluster: &Cluster) -> Simulation {
    flows(cluster, false)
}

/// [`simulate`], plus each pod's flows to itself (always allowed: what `palisade lab`
/// probes to check that nothing breaks them).
pub fn simulate_with_self(cluster: &Cluster) -> Simulation {
    flows(cluster, true)
}

fn flows(cluster: &Cluster, with_self: bool) -> Simulation {
    let policies = compile_all(cluster);
    let mut flows = Vec::new();
    for (i, from) in cluster.pods.iter().enumerate() {
        for (j, to) in cluster.pods.iter().enumerate() {
            if i != j || with_self {
                flows.extend(pair((from, &policies[i]), (to, &policies[j])));
            }
        }
    }
    flows.sort_by(|a, b| {
        (&a.from, &a.to, a.protocol.as_str(), a.port, a.family).cmp(&(
            &b.from,
            &b.to,
            b.protocol.as_str(),
            b.port,
            b.family,
        ))
    });
    Simulation { flows }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{load_str, Report};

    /// Pods in namespace `n` serving TCP 80, with the given addresses (primary first).
    fn cluster(pods: &[(&str, &[&str])], policy: &str) -> Cluster {
        let mut text = String::new();
        for (name, ips) in pods {
            let list: Vec<String> = ips.iter().map(|ip| format!("{{ip: \"{ip}\"}}")).collect();
            text += &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: n, labels: {{app: {name}}}}}\n\
                 spec: {{containers: [{{name: c, ports: [{{containerPort: 80}}]}}]}}\n\
                 status: {{podIP: \"{}\", podIPs: [{}]}}\n---\n",
                ips[0],
                list.join(", ")
            );
        }
        text += policy;
        let mut cluster = Cluster::default();
        let mut report = Report::default();
        load_str(&mut cluster, "t.yaml", &text, &mut report);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        cluster.finish();
        cluster
    }

    fn verdicts(sim: &Simulation) -> Vec<(String, String, Family, bool)> {
        sim.flows
            .iter()
            .map(|f| (f.from.clone(), f.to.clone(), f.family, f.allowed))
            .collect()
    }

    #[test]
    fn a_dual_stack_pod_is_judged_on_each_of_its_addresses() {
        // a may reach b's IPv4 address only: its IPv6 path must show denied.
        let c = cluster(
            &[("a", &["10.0.0.1", "fd00::1"]), ("b", &["10.0.0.2", "fd00::2"])],
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: n}\n\
             spec:\n  podSelector: {matchLabels: {app: a}}\n  policyTypes: [Egress]\n  \
             egress: [{to: [{ipBlock: {cidr: 10.0.0.0/24}}]}]\n",
        );
        let sim = simulate(&c);
        let s = |x: &str| format!("n/{x}");
        assert_eq!(
            verdicts(&sim),
            [
                (s("a"), s("b"), Family::V4, true),
                (s("a"), s("b"), Family::V6, false),
                (s("b"), s("a"), Family::V4, true),
                (s("b"), s("a"), Family::V6, true),
            ]
        );
        let denied = &sim.flows[1];
        assert_eq!(denied.egress.policies, ["n/p"]);
        assert!(denied.ingress.allowed);
    }

    #[test]
    fn pods_of_different_families_have_no_flow_and_single_stack_pods_have_one() {
        let c = cluster(
            &[
                ("v4", &["10.0.0.1"]),
                ("v6", &["fd00::2"]),
                ("both", &["fd00::3", "10.0.0.3"]),
            ],
            "",
        );
        let sim = simulate(&c);
        let s = |x: &str| format!("n/{x}");
        assert_eq!(
            verdicts(&sim),
            [
                (s("both"), s("v4"), Family::V4, true),
                (s("both"), s("v6"), Family::V6, true),
                (s("v4"), s("both"), Family::V4, true),
                (s("v6"), s("both"), Family::V6, true),
            ]
        );
        // The JSON names the family of each flow.
        let json = serde_json::to_value(&sim).unwrap();
        assert_eq!(json["flows"][0]["family"], "IPv4");
        assert_eq!(json["flows"][1]["family"], "IPv6");
    }

    #[test]
    fn flows_to_self_are_allowed_whatever_the_policies() {
        let c = cluster(
            &[("a", &["10.0.0.1", "fd00::1"])],
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: n}\n\
             spec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n",
        );
        assert!(simulate(&c).flows.is_empty());
        let with_self = simulate_with_self(&c);
        assert_eq!(
            verdicts(&with_self),
            [
                ("n/a".into(), "n/a".into(), Family::V4, true),
                ("n/a".into(), "n/a".into(), Family::V6, true),
            ]
        );
    }
}
