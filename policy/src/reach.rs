//! Everything that applies to one pod: per direction, the policies that select it, each of
//! their rules in words (peers with the pods they match now, ports with their HTTP, DNS and
//! TLS conditions), and every flow from and to the pod as `simulate` judges it.
//! `palisade explain` prints this.

use std::net::IpAddr;

use serde::Serialize;

use crate::cluster::{Cluster, Pod};
use crate::compiled::Mode;
use crate::policy::{Direction, PortRule, Rule};
use crate::simulate::{compile_all, pair, SimFlow};

/// One pod, and everything that applies to it.
#[derive(Debug, Clone, Serialize)]
pub struct PodReach {
    /// `namespace/name`.
    pub pod: String,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// Its node's addresses, whose traffic is always allowed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node: Vec<IpAddr>,
    /// Enforce, or audit (denials logged as would-deny and let through).
    pub mode: Mode,
    /// Whether it asks for palisade's sidecar (pod annotation or namespace label).
    pub injected: bool,
    /// Whether it runs on the node's network, where no policy isolates it.
    pub host_network: bool,
    /// Connections from the pod.
    pub egress: DirectionReach,
    /// Connections to the pod.
    pub ingress: DirectionReach,
    /// Every flow from the pod to the ports other pods declare, and from other pods to the
    /// ports it declares, judged on both sides (the shape `simulate -o json` prints).
    pub flows: Vec<SimFlow>,
}

/// One direction of the pod.
#[derive(Debug, Clone, Serialize)]
pub struct DirectionReach {
    /// Which direction.
    pub direction: Direction,
    /// Whether an enforced policy isolates the pod in this direction (otherwise everything
    /// is allowed).
    pub isolated: bool,
    /// The policies that select the pod for this direction.
    pub policies: Vec<PolicyReach>,
}

/// A policy that selects the pod, and its rules for one direction.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyReach {
    /// `namespace/name`.
    pub name: String,
    /// Its kind.
    pub kind: &'static str,
    /// Staged with `palisade.dev/mode: audit`: judged and logged, never enforced.
    pub staged: bool,
    /// The file it was read from.
    pub file: String,
    /// Its rules for the direction; none means it allows nothing by itself.
    pub rules: Vec<RuleReach>,
}

/// One rule in words.
#[derive(Debug, Clone, Serialize)]
pub struct RuleReach {
    /// Index in the policy's `ingress` or `egress`.
    pub index: usize,
    /// The line it is written on.
    pub line: u32,
    /// Its peers; `None` means every peer, any address.
    pub peers: Option<Vec<PeerReach>>,
    /// Its ports; empty means every port of every protocol.
    pub ports: Vec<PortReach>,
}

/// One peer in words, with the pods it matches now.
#[derive(Debug, Clone, Serialize)]
pub struct PeerReach {
    /// The peer, as `check` words it.
    pub text: String,
    /// `namespace/name` of the pods it matches in these manifests.
    pub pods: Vec<String>,
}

/// One port in words, with what it asks beyond L4.
#[derive(Debug, Clone, Serialize)]
pub struct PortReach {
    /// The port, as `check` words it.
    pub text: String,
    /// HTTP requests allowed on it (when it has HTTP rules).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<String>,
    /// DNS names that may be asked through it (`rules.dns`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// TLS server names the connection must name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
}

fn port(p: &PortRule) -> PortReach {
    let words = |items: Option<Vec<String>>| items.unwrap_or_default();
    PortReach {
        text: p.spec.to_string(),
        http: words(
            p.l7.http
                .as_ref()
                .map(|r| r.rules().iter().map(|h| h.to_string()).collect()),
        ),
        dns: words(
            p.l7.dns
                .as_ref()
                .map(|r| r.iter().map(|n| n.to_string()).collect()),
        ),
        server_names: words(p.l7.server_names.as_ref().map(|n| n.to_vec())),
    }
}

fn rule(cluster: &Cluster, index: usize, r: &Rule) -> RuleReach {
    RuleReach {
        index,
        line: r.origin.line,
        peers: r.peers.as_ref().map(|peers| {
            peers
                .iter()
                .map(|p| PeerReach {
                    text: p.to_string(),
                    pods: p.pods(cluster).into_iter().map(Pod::key).collect(),
                })
                .collect()
        }),
        ports: r.ports.iter().map(port).collect(),
    }
}

/// Everything that applies to `pod`, which must be one of `cluster.pods`.
pub fn reach(cluster: &Cluster, pod: &Pod) -> PodReach {
    let policies = compile_all(cluster);
    let index = cluster
        .pods
        .iter()
        .position(|p| p.key() == pod.key())
        .unwrap_or_default();
    let own = &policies[index];
    let direction = |direction: Direction| {
        let side = own.side(direction);
        DirectionReach {
            direction,
            isolated: side.isolated(),
            policies: side
                .policies
                .iter()
                .filter_map(|pref| cluster.policy(&pref.id))
                .map(|p| PolicyReach {
                    name: p.id.to_string(),
                    kind: p.id.kind.as_str(),
                    staged: p.audit,
                    file: p.source.file.to_string(),
                    rules: p
                        .rules(direction)
                        .unwrap_or_default()
                        .iter()
                        .enumerate()
                        .map(|(i, r)| rule(cluster, i, r))
                        .collect(),
                })
                .collect(),
        }
    };
    let mut flows = Vec::new();
    for (j, other) in cluster.pods.iter().enumerate() {
        if j != index {
            flows.extend(pair((pod, own), (other, &policies[j])));
            flows.extend(pair((other, &policies[j]), (pod, own)));
        }
    }
    PodReach {
        pod: pod.key(),
        ips: pod.ips.clone(),
        node: pod.host_ips.clone(),
        mode: own.mode,
        injected: cluster.pod_asks_for_injection(pod),
        host_network: pod.host_network,
        egress: direction(Direction::Egress),
        ingress: direction(Direction::Ingress),
        flows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::tests::{cluster, dns, netpol, ns, pod};
    use crate::simulate::simulate;

    fn shop() -> Cluster {
        let text = ns("shop", "")
            + &dns()
            + &pod("shop/web", "app=web", "10.0.0.1", "80")
            + &pod("shop/api", "app=api", "10.0.0.2", "http:8080")
            + &netpol(
                "shop/api-in",
                "  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: http}]\n",
            );
        cluster(&text)
    }

    #[test]
    fn a_pod_sees_the_policies_that_select_it_and_the_pods_its_peers_match() {
        let c = shop();
        let api = c.pod("shop", "api").unwrap();
        let r = reach(&c, api);
        assert!(r.ingress.isolated);
        assert!(!r.egress.isolated);
        assert!(r.egress.policies.is_empty());
        let p = &r.ingress.policies[0];
        assert_eq!(p.name, "shop/api-in");
        assert_eq!(p.file, "test.yaml");
        let rule = &p.rules[0];
        let peers = rule.peers.as_ref().unwrap();
        assert_eq!(peers[0].text, "pods app=web in namespace shop");
        assert_eq!(peers[0].pods, vec!["shop/web"]);
        assert_eq!(rule.ports[0].text, "http/TCP");
        assert!(rule.line > 0);
    }

    #[test]
    fn its_flows_are_exactly_simulates_flows_from_and_to_it() {
        let c = shop();
        let api = c.pod("shop", "api").unwrap();
        let mut mine = reach(&c, api).flows;
        let mut expected: Vec<SimFlow> = simulate(&c)
            .flows
            .into_iter()
            .filter(|f| f.from == "shop/api" || f.to == "shop/api")
            .collect();
        let key = |f: &SimFlow| (f.from.clone(), f.to.clone(), f.protocol, f.port);
        mine.sort_by_key(key);
        expected.sort_by_key(key);
        assert_eq!(mine, expected);
        let allowed: Vec<String> = mine
            .iter()
            .filter(|f| f.allowed)
            .map(|f| format!("{} -> {} {}", f.from, f.to, f.port))
            .collect();
        assert_eq!(
            allowed,
            vec![
                "shop/api -> kube-system/coredns 53",
                "shop/api -> kube-system/coredns 53",
                "shop/api -> shop/web 80",
                "shop/web -> shop/api 8080",
            ]
        );
    }
}
