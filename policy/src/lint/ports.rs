//! Ports that do not do what they seem to: named ports nobody declares, and L7 conditions
//! that an L4-only rule on the same port makes moot.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{pod_list, Check, Context, Finding};
use crate::cluster::Pod;
use crate::compiled::Flow;
use crate::peer::{Entity, Peer};
use crate::policy::{Direction, Policy, PortRule, Rule};
use crate::ports::{PortRef, Protocol};
use crate::verdict::{decide, Reason};

/// Stands for "some address outside the cluster" when a rule's peer is a DNS name or the
/// world: TEST-NET-1 and the IPv6 documentation prefix, never a real host.
const OUTSIDE: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
];

pub(super) fn check(cx: &Context<'_>, out: &mut Vec<Finding>) {
    for policy in &cx.cluster.policies {
        for dir in [Direction::Ingress, Direction::Egress] {
            for (ri, rule) in policy.rules(dir).unwrap_or_default().iter().enumerate() {
                for port in &rule.ports {
                    if let Some(PortRef::Name(name)) = &port.spec.port {
                        unknown_named_port(cx, policy, dir, rule, port, name, out);
                    }
                }
                l7_overridden(cx, policy, dir, ri, rule, out);
            }
        }
    }
}

/// Whether a pod declares the port name (for the protocol, when one is given).
fn declares(pod: &Pod, name: &str, protocol: Option<Protocol>) -> bool {
    pod.ports
        .iter()
        .any(|c| c.name.as_deref() == Some(name) && protocol.is_none_or(|p| p == c.protocol))
}

fn unknown_named_port(
    cx: &Context<'_>,
    policy: &Policy,
    dir: Direction,
    rule: &Rule,
    port: &PortRule,
    name: &str,
    out: &mut Vec<Finding>,
) {
    let protocol = port.spec.protocol;
    // The destinations a named port is resolved on: the selected pods for ingress, the
    // pods the rule can reach for egress.
    let (destinations, whose): (Vec<&Pod>, &str) = match dir {
        Direction::Ingress => {
            if !cx.has_pods(&policy.id.namespace) {
                return;
            }
            let selected: Vec<&Pod> = cx.selected(policy).map(|(_, p)| p).collect();
            if selected.is_empty() {
                return; // `selects-no-pod` says so.
            }
            (selected, "the pods the policy selects")
        }
        Direction::Egress => {
            let mut reachable: Vec<&Pod> = match &rule.peers {
                None => Peer::Entity(Entity::All).pods(cx.cluster),
                Some(peers) => peers.iter().flat_map(|p| p.pods(cx.cluster)).collect(),
            };
            reachable.sort_by_key(|p| p.key());
            reachable.dedup_by_key(|p| p.key());
            (reachable, "the pods this rule can reach")
        }
    };
    if destinations.iter().any(|p| declares(p, name, protocol)) {
        return;
    }
    let proto = protocol.map_or(String::new(), |p| format!(" for {p}"));
    let message = if destinations.is_empty() {
        format!(
            "port {name:?}{proto} is a named port, which only a pod can declare, and this rule \
             reaches no pod: it matches nothing"
        )
    } else {
        let declared: BTreeSet<String> = destinations
            .iter()
            .flat_map(|p| &p.ports)
            .map(|c| match &c.name {
                Some(n) => format!("{n} ({}/{})", c.port, c.protocol),
                None => format!("{}/{} (unnamed)", c.port, c.protocol),
            })
            .collect();
        format!(
            "no pod among {whose} ({}) declares a container port named {name:?}{proto}; \
             they declare: {}",
            pod_list(destinations.iter().copied()),
            if declared.is_empty() {
                "no ports".to_owned()
            } else {
                declared.into_iter().collect::<Vec<_>>().join(", ")
            }
        )
    };
    out.push(Finding::at(
        Check::UnknownNamedPort,
        policy,
        &port.origin,
        message,
        format!(
            "name the container port {name:?} in the pods' spec (containers[].ports[].name), \
             or write the port number"
        ),
    ));
}

/// Addresses that stand for a peer: its pods, an address of its block, or one outside.
fn stand_ins(cx: &Context<'_>, peer: &Peer) -> Vec<(IpAddr, String)> {
    match peer {
        Peer::Pods { .. } | Peer::Entity(Entity::Cluster) => peer
            .pods(cx.cluster)
            .into_iter()
            .filter_map(|p| Some((*p.ips.first()?, p.key())))
            .collect(),
        Peer::IpBlock(b) => {
            let pods: Vec<(IpAddr, String)> = peer
                .pods(cx.cluster)
                .into_iter()
                .filter_map(|p| Some((*p.ips.first()?, p.key())))
                .collect();
            let outside = OUTSIDE
                .into_iter()
                .chain([b.cidr.network(), b.cidr.broadcast()])
                .find(|ip| b.contains(*ip));
            pods.into_iter()
                .chain(outside.map(|ip| (ip, format!("{ip} (in {b})"))))
                .collect()
        }
        Peer::Fqdn(_) | Peer::Entity(Entity::World | Entity::All) => OUTSIDE
            .into_iter()
            .map(|ip| (ip, format!("addresses outside the cluster ({ip})")))
            .collect(),
        Peer::Entity(Entity::Host) => Vec::new(),
    }
}

/// A rule whose ports carry L7 conditions (or whose peers are DNS names) on a flow that
/// another rule allows without any: `decide` picks the L4-only rule, so the conditions never
/// apply to that flow.
fn l7_overridden(
    cx: &Context<'_>,
    policy: &Policy,
    dir: Direction,
    rule_index: usize,
    rule: &Rule,
    out: &mut Vec<Finding>,
) {
    let l7_ports: Vec<&PortRule> = rule.ports.iter().filter(|p| !p.l7.is_empty()).collect();
    let fqdn = rule
        .peers
        .iter()
        .flatten()
        .position(|p| matches!(p, Peer::Fqdn(_)));
    if l7_ports.is_empty() && fqdn.is_none() {
        return;
    }
    // The flows the conditions were written for: (peer address, its name, port, protocol).
    let peers: Vec<(IpAddr, String)> = match &rule.peers {
        None => stand_ins(cx, &Peer::Entity(Entity::All))
            .into_iter()
            .chain(stand_ins(cx, &Peer::Entity(Entity::Cluster)))
            .collect(),
        Some(peers) => peers.iter().flat_map(|p| stand_ins(cx, p)).collect(),
    };
    let conditioned: Vec<&PortRule> = if l7_ports.is_empty() {
        rule.ports.iter().collect()
    } else {
        l7_ports
    };
    let mut overridden: Vec<(String, String, String)> = Vec::new();
    for (i, pod) in cx.selected(policy) {
        let compiled = &cx.compiled[i];
        for (ip, peer_name) in &peers {
            for port in &conditioned {
                let protocol = port.spec.protocol.unwrap_or(Protocol::Tcp);
                // The destination's port number: a numbered port, or the named port of the
                // destination pod (the selected pod for ingress).
                let number = match (&port.spec.port, dir) {
                    (Some(PortRef::Number(n)), _) => Some(*n),
                    (Some(PortRef::Name(name)), Direction::Ingress) => {
                        pod.named_port(name, protocol)
                    }
                    (Some(PortRef::Name(name)), Direction::Egress) => cx
                        .cluster
                        .pods
                        .iter()
                        .find(|p| p.ips.first() == Some(ip))
                        .and_then(|p| p.named_port(name, protocol)),
                    (None, _) => Some(80),
                };
                let Some(number) = number else { continue };
                let flow = Flow {
                    direction: dir,
                    peer: *ip,
                    port: number,
                    protocol,
                    names: &[],
                };
                let verdict = decide(compiled, &flow);
                let Reason::Rule {
                    policy: p, rule: r, ..
                } = verdict.reason
                else {
                    continue;
                };
                let by = &compiled.side(dir).policies[p as usize].id;
                let same_rule = *by == policy.id && r as usize == rule_index;
                if verdict.inspect.any() || same_rule {
                    continue;
                }
                overridden.push((
                    pod.key(),
                    format!("{peer_name} on {number}/{protocol}"),
                    format!("{} {by}, {dir} rule {r}", by.kind.as_str()),
                ));
            }
        }
    }
    let Some((pod, flow, by)) = overridden.first() else {
        return;
    };
    let what = if fqdn.is_some() && conditioned.iter().all(|p| p.l7.is_empty()) {
        "its DNS names (toFQDNs)"
    } else {
        "its HTTP rules, DNS names or TLS server names"
    };
    let more = match overridden.len() {
        1 => String::new(),
        n => format!(" (and {} more flows)", n - 1),
    };
    let at = match fqdn {
        Some(i) if conditioned.iter().all(|p| p.l7.is_empty()) => rule.peer_origin(i),
        _ => &conditioned[0].origin,
    };
    out.push(Finding::at(
        Check::L7Overridden,
        policy,
        at,
        format!(
            "{what} restrict nothing for {pod} with {flow}{more}: {by} allows that without \
             conditions, and policies add up"
        ),
        format!(
            "narrow {by} so that it no longer covers this peer and port (or remove it); the \
             conditions here then decide"
        ),
    ));
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;

    fn shop() -> String {
        ns("shop", "")
            + &pod("shop/web", "app=web", "10.0.0.1", "http:80")
            + &pod("shop/api", "app=api", "10.0.0.2", "http:8080")
    }

    fn api_from_web(port: &str) -> String {
        netpol(
            "shop/api-in",
            &format!(
                "  podSelector: {{matchLabels: {{app: api}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: web}}}}}}]\n    ports: [{{port: {port}}}]\n"
            ),
        )
    }

    #[test]
    fn an_ingress_port_name_the_selected_pods_lack_is_flagged() {
        let found = findings(Check::UnknownNamedPort, &(shop() + &api_from_web("web")));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].field, "spec.ingress[0].ports[0]");
        assert!(
            found[0]
                .message
                .contains("no pod among the pods the policy selects (shop/api) declares a container port named \"web\" for TCP; they declare: http (8080/TCP)"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn a_declared_port_name_is_fine() {
        assert_eq!(
            findings(Check::UnknownNamedPort, &(shop() + &api_from_web("http"))),
            vec![]
        );
    }

    #[test]
    fn an_egress_port_name_the_peers_lack_is_flagged() {
        let egress = |port: &str| {
            netpol(
                "shop/web-out",
                &format!(
                    "  podSelector: {{matchLabels: {{app: web}}}}\n  egress:\n  - to: [{{podSelector: {{matchLabels: {{app: api}}}}}}]\n    ports: [{{port: {port}}}]\n"
                ),
            )
        };
        let found = findings(Check::UnknownNamedPort, &(shop() + &egress("grpc")));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0]
            .message
            .contains("the pods this rule can reach (shop/api)"));
        assert_eq!(
            findings(Check::UnknownNamedPort, &(shop() + &egress("http"))),
            vec![]
        );
    }

    fn http_rule() -> String {
        "apiVersion: palisade.dev/v1alpha1\nkind: PalisadePolicy\nmetadata: {name: api-l7, namespace: shop}\n\
         spec:\n  endpointSelector: {matchLabels: {app: api}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: web}}]\n    toPorts:\n    - ports: [{port: \"8080\", protocol: TCP}]\n      rules:\n        http: [{method: GET, path: /api/.*}]\n---\n".into()
    }

    #[test]
    fn http_rules_under_an_l4_allow_are_flagged() {
        let text = shop() + &http_rule() + &api_from_web("8080");
        let found = findings(Check::L7Overridden, &text);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.object, "PalisadePolicy shop/api-l7");
        assert_eq!(f.field, "spec.ingress[0].toPorts[0].ports[0]");
        assert!(
            f.message.contains(
                "restrict nothing for shop/api with shop/web on 8080/TCP: NetworkPolicy shop/api-in, ingress rule 0 allows that"
            ),
            "{}",
            f.message
        );
    }

    #[test]
    fn http_rules_alone_are_fine() {
        assert_eq!(
            findings(Check::L7Overridden, &(shop() + &http_rule())),
            vec![]
        );
        // An L4 rule on another port does not override them either.
        let text = shop() + &http_rule() + &api_from_web("9090");
        assert_eq!(findings(Check::L7Overridden, &text), vec![]);
    }

    #[test]
    fn fqdn_rules_under_an_open_egress_are_flagged() {
        let fqdn = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: gh, namespace: shop}\n\
             spec:\n  endpointSelector: {matchLabels: {app: web}}\n  egress:\n  - toFQDNs: [{matchName: api.github.com}]\n    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n---\n";
        let open = netpol(
            "shop/web-out",
            "  podSelector: {matchLabels: {app: web}}\n  egress:\n  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]\n    ports: [{port: 443}]\n",
        );
        let found = findings(Check::L7Overridden, &(shop() + fqdn + &open));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].field, "spec.egress[0].toFQDNs");
        assert!(
            found[0]
                .message
                .starts_with("its DNS names (toFQDNs) restrict nothing"),
            "{}",
            found[0].message
        );
        assert_eq!(findings(Check::L7Overridden, &(shop() + fqdn)), vec![]);
    }
}
