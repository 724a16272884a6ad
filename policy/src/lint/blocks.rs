//! Address blocks that hold more, or less, than their authors think: pod addresses, a
//! Service's ClusterIP, the cloud metadata service.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::{pod_list, Check, Context, Finding};
use crate::cluster::Pod;
use crate::compiled::Flow;
use crate::peer::{IpBlock, Peer};
use crate::policy::{Direction, Policy, PolicyId, Rule};
use crate::ports::Protocol;
use crate::verdict::{decide, Action, Reason};

/// The cloud metadata service: AWS, GCP, Azure and others on 169.254.169.254, AWS also on
/// fd00:ec2::254. It answers HTTP on port 80.
const METADATA: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

pub(super) fn check(cx: &Context<'_>, out: &mut Vec<Finding>) {
    for policy in &cx.cluster.policies {
        for dir in [Direction::Ingress, Direction::Egress] {
            for rule in policy.rules(dir).unwrap_or_default() {
                for (i, peer) in rule.peers.iter().flatten().enumerate() {
                    if let Peer::IpBlock(b) = peer {
                        holds_pods(cx, policy, dir, rule, i, b, out);
                    }
                }
            }
        }
    }
    cloud_metadata(cx, out);
}

/// The smallest network that holds every address of `ips` (all of one family).
fn covering(ips: &[IpAddr]) -> Option<IpNet> {
    let first = *ips.first()?;
    let bits = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
        IpAddr::V6(v6) => u128::from(v6),
    };
    let diff = ips
        .iter()
        .fold(0u128, |acc, ip| acc | (bits(*ip) ^ bits(first)));
    let common = diff.leading_zeros() as u8;
    let prefix = if first.is_ipv4() {
        common.min(32)
    } else {
        common.min(128)
    };
    IpNet::new(first, prefix).ok().map(|n| n.trunc())
}

fn holds_pods(
    cx: &Context<'_>,
    policy: &Policy,
    dir: Direction,
    rule: &Rule,
    index: usize,
    block: &IpBlock,
    out: &mut Vec<Finding>,
) {
    let pods: Vec<&Pod> = cx
        .cluster
        .pods
        .iter()
        .filter(|p| !p.host_network && p.ips.iter().any(|ip| block.contains(*ip)))
        .collect();
    let nodes: Vec<IpAddr> = cx
        .cluster
        .node_ips()
        .into_iter()
        .filter(|ip| block.contains(*ip))
        .collect();
    if pods.is_empty() {
        cluster_ip(cx, policy, rule, index, block, nodes.is_empty(), out);
        return;
    }
    let ports = rule.ports_in_words();
    let nodes = match nodes.len() {
        0 => String::new(),
        1 => " and of 1 node".to_owned(),
        n => format!(" and of {n} nodes"),
    };
    let effect = match dir {
        Direction::Ingress => "lets them in",
        Direction::Egress => "lets the selected pods reach them",
    };
    // Every pod address of the block's family, to suggest leaving the pod network out.
    let family: Vec<IpAddr> = cx
        .cluster
        .pods
        .iter()
        .filter(|p| !p.host_network)
        .flat_map(|p| p.ips.iter().copied())
        .filter(|ip| ip.is_ipv4() == block.cidr.addr().is_ipv4())
        .collect();
    let except = covering(&family)
        .filter(|n| block.cidr.contains(n) && n.prefix_len() > block.cidr.prefix_len());
    let fix = match except {
        Some(net) => format!(
            "to mean addresses outside the cluster, leave the pod network out:\n\
             ipBlock:\n\
             \x20 cidr: {}\n\
             \x20 except:\n\
             \x20 - {net}\n\
             and name the pods you want with podSelector and namespaceSelector",
            block.cidr
        ),
        None => "to mean addresses outside the cluster, add the pod network to `except`; name \
                 the pods you want with podSelector and namespaceSelector"
            .to_owned(),
    };
    out.push(Finding::at(
        Check::IpBlockHoldsPods,
        policy,
        rule.peer_origin(index),
        format!(
            "ipBlock {block} holds the addresses of {} pods ({}){nodes}: on {ports} this rule {effect}, \
             whatever their labels",
            pods.len(),
            pod_list(pods.iter().copied())
        ),
        fix,
    ));
}

/// An ipBlock that holds a Service's ClusterIP and no pod or node address: it was aimed at
/// the Service, and matches nothing.
fn cluster_ip(
    cx: &Context<'_>,
    policy: &Policy,
    rule: &Rule,
    index: usize,
    block: &IpBlock,
    no_nodes: bool,
    out: &mut Vec<Finding>,
) {
    let Some((service, ip)) = cx.cluster.services.iter().find_map(|s| {
        s.cluster_ips
            .iter()
            .find(|ip| block.contains(**ip))
            .map(|ip| (s, ip))
    }) else {
        return;
    };
    if !no_nodes {
        return;
    }
    out.push(Finding::at(
        Check::IpBlockClusterIp,
        policy,
        rule.peer_origin(index),
        format!(
            "ipBlock {block} holds {ip}, the ClusterIP of Service {}/{}, and no pod or node: \
             connections to the Service are judged against the pod they reach, so this peer \
             matches none of them",
            service.namespace, service.name
        ),
        "allow the pods behind the Service with podSelector and namespaceSelector, or the \
         addresses of its endpoints with ipBlock"
            .into(),
    ));
}

/// Egress rules that let pods reach the metadata service on port 80.
fn cloud_metadata(cx: &Context<'_>, out: &mut Vec<Finding>) {
    /// A rule and peer: (policy, rule index, peer index).
    type At = (PolicyId, u32, Option<u32>);
    // Pods and the address they reach, by the rule and peer that let them through.
    let mut by_rule: BTreeMap<At, (Vec<&Pod>, IpAddr)> = BTreeMap::new();
    for (i, pod) in cx.cluster.pods.iter().enumerate() {
        if pod.host_network {
            continue;
        }
        let compiled = &cx.compiled[i];
        for ip in METADATA {
            let flow = Flow {
                direction: Direction::Egress,
                peer: ip,
                port: 80,
                protocol: Protocol::Tcp,
                names: &[],
            };
            let verdict = decide(compiled, &flow);
            let Reason::Rule {
                policy, rule, peer, ..
            } = verdict.reason
            else {
                continue;
            };
            if verdict.action != Action::Allow {
                continue;
            }
            let id = compiled.egress.policies[policy as usize].id.clone();
            let entry = by_rule.entry((id, rule, peer)).or_insert((Vec::new(), ip));
            if !entry.0.iter().any(|p| p.key() == pod.key()) {
                entry.0.push(pod);
            }
        }
    }
    for ((id, rule_index, peer), (pods, ip)) in by_rule {
        let Some(policy) = cx.cluster.policy(&id) else {
            continue;
        };
        let Some(rule) = policy
            .rules(Direction::Egress)
            .and_then(|r| r.get(rule_index as usize))
        else {
            continue;
        };
        let (origin, peer) = match peer {
            Some(p) => (
                rule.peer_origin(p as usize),
                rule.peers.as_ref().and_then(|ps| ps.get(p as usize)),
            ),
            None => (&rule.origin, None),
        };
        let host = if ip.is_ipv4() { "32" } else { "128" };
        let fix = match peer {
            Some(Peer::IpBlock(b)) => format!(
                "leave the metadata service out of the block:\n\
                 ipBlock:\n\
                 \x20 cidr: {}\n\
                 \x20 except:\n\
                 {}\x20 - {ip}/{host}",
                b.cidr,
                b.except
                    .iter()
                    .map(|e| format!("  - {e}\n"))
                    .collect::<String>()
            ),
            _ => format!(
                "name the destinations instead of every address, e.g. an ipBlock with cidr \
                 0.0.0.0/0 and except [{ip}/{host}]"
            ),
        };
        out.push(Finding::at(
            Check::CloudMetadata,
            policy,
            origin,
            format!(
                "this rule lets {} reach {ip} on 80/TCP, the cloud metadata service, which hands \
                 out the node's credentials",
                pod_list(pods.iter().copied())
            ),
            fix,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;

    fn shop() -> String {
        ns("shop", "")
            + &pod("shop/web", "app=web", "10.30.1.1", "80")
            + &pod("shop/db", "app=db", "10.30.2.1", "5432")
    }

    fn web_egress(to: &str, ports: &str) -> String {
        netpol(
            "shop/web-out",
            &format!(
                "  podSelector: {{matchLabels: {{app: web}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{to}]\n{ports}"
            ),
        )
    }

    #[test]
    fn an_ipblock_holding_pods_is_flagged_with_the_pod_network_to_leave_out() {
        let text = shop()
            + &web_egress(
                "{ipBlock: {cidr: 10.0.0.0/8}}",
                "    ports: [{port: 443}]\n",
            );
        let found = findings(Check::IpBlockHoldsPods, &text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].field, "spec.egress[0].to[0]");
        assert!(
            found[0].message.contains(
                "ipBlock 10.0.0.0/8 holds the addresses of 2 pods (shop/db, shop/web): on 443/TCP \
                 this rule lets the selected pods reach them"
            ),
            "{}",
            found[0].message
        );
        assert!(found[0].fix.contains("- 10.30.0.0/"), "{}", found[0].fix);
    }

    #[test]
    fn an_ipblock_outside_the_pods_is_fine() {
        let text = shop()
            + &web_egress(
                "{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8, 192.168.0.0/16]}}",
                "    ports: [{port: 443}]\n",
            );
        assert_eq!(findings(Check::IpBlockHoldsPods, &text), vec![]);
    }

    #[test]
    fn egress_to_every_address_on_port_80_reaches_the_metadata_service() {
        let text =
            shop() + &web_egress("{ipBlock: {cidr: 0.0.0.0/0}}", "    ports: [{port: 80}]\n");
        let found = findings(Check::CloudMetadata, &text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].field, "spec.egress[0].to[0]");
        assert!(
            found[0]
                .message
                .contains("lets shop/web reach 169.254.169.254 on 80/TCP"),
            "{}",
            found[0].message
        );
        assert!(
            found[0].fix.contains("- 169.254.169.254/32"),
            "{}",
            found[0].fix
        );
    }

    #[test]
    fn the_metadata_service_excepted_or_another_port_is_fine() {
        let excepted = shop()
            + &web_egress(
                "{ipBlock: {cidr: 0.0.0.0/0, except: [169.254.169.254/32]}}",
                "    ports: [{port: 80}]\n",
            );
        assert_eq!(findings(Check::CloudMetadata, &excepted), vec![]);
        let https_only =
            shop() + &web_egress("{ipBlock: {cidr: 0.0.0.0/0}}", "    ports: [{port: 443}]\n");
        assert_eq!(findings(Check::CloudMetadata, &https_only), vec![]);
    }

    #[test]
    fn an_ipblock_aimed_at_a_cluster_ip_is_flagged() {
        let service =
            "apiVersion: v1\nkind: Service\nmetadata: {name: kubernetes, namespace: default}\n\
                       spec: {clusterIP: 10.96.0.1, ports: [{port: 443}]}\n---\n";
        let text = shop()
            + service
            + &web_egress(
                "{ipBlock: {cidr: 10.96.0.1/32}}",
                "    ports: [{port: 443}]\n",
            );
        let found = findings(Check::IpBlockClusterIp, &text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0]
            .message
            .contains("the ClusterIP of Service default/kubernetes"));
        let text = shop()
            + service
            + &web_egress(
                "{ipBlock: {cidr: 10.97.0.1/32}}",
                "    ports: [{port: 443}]\n",
            );
        assert_eq!(findings(Check::IpBlockClusterIp, &text), vec![]);
    }

    #[test]
    fn covering_finds_the_common_prefix() {
        let ips: Vec<IpAddr> = ["10.30.1.1", "10.30.2.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(covering(&ips), Some("10.30.0.0/22".parse().unwrap()));
        assert_eq!(covering(&ips[..1]), Some("10.30.1.1/32".parse().unwrap()));
    }
}
