//! Egress isolation with no DNS allowance: the first thing a default-deny breaks.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use super::{pod_list, word_list, Check, Context, Finding, Severity};
use crate::cluster::{Family, Pod};
use crate::compiled::Flow;
use crate::policy::{Direction, PolicyId};
use crate::ports::Protocol;
use crate::simulate::{judge, SimFlow};
use crate::verdict::{decide, Action, Reason};

/// The label kubeadm, EKS and GKE give cluster DNS pods.
const DNS_LABEL: (&str, &str) = ("k8s-app", "kube-dns");

/// How a pod fares with DNS, and what to point at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// UDP 53 does not get through, so lookups fail; the policies isolating the pods.
    None(Vec<PolicyId>),
    /// UDP 53 gets through (by this policy's rule, when one allowed it), TCP 53 does not:
    /// large answers fail.
    UdpOnly(PolicyId, Option<u32>),
}

/// The cluster's DNS pods: those labelled `k8s-app=kube-dns`, else those of `kube-system`
/// that declare 53/UDP.
fn dns_pods<'c>(cx: &Context<'c>) -> Vec<(usize, &'c Pod)> {
    let pods = || cx.cluster.pods.iter().enumerate();
    let labelled: Vec<_> = pods()
        .filter(|(_, p)| p.labels.get(DNS_LABEL.0).is_some_and(|v| v == DNS_LABEL.1))
        .collect();
    if !labelled.is_empty() {
        return labelled;
    }
    pods()
        .filter(|(_, p)| {
            p.namespace == "kube-system"
                && p.ports
                    .iter()
                    .any(|c| c.port == 53 && c.protocol == Protocol::Udp)
        })
        .collect()
}

pub(super) fn check(cx: &Context<'_>, out: &mut Vec<Finding>) {
    let servers = dns_pods(cx);
    // Pods by outcome, with what refused them.
    let mut groups: BTreeMap<Outcome, (Vec<&Pod>, String)> = BTreeMap::new();
    for (i, pod) in cx.cluster.pods.iter().enumerate() {
        let policy = &cx.compiled[i];
        if pod.host_network || policy.egress.policies.is_empty() {
            continue;
        }
        let isolating = || {
            policy
                .egress
                .policies
                .iter()
                .map(|p| p.id.clone())
                .collect()
        };
        let (outcome, detail) = if servers.is_empty() {
            // No DNS pod to judge against: is port 53 open to anyone at all?
            let any_rule = |protocol| {
                let flow = Flow {
                    direction: Direction::Egress,
                    peer: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    port: 53,
                    protocol,
                    names: &[],
                };
                policy
                    .egress
                    .rules
                    .iter()
                    .any(|r| r.match_port(&flow).is_some())
            };
            if any_rule(Protocol::Udp) || any_rule(Protocol::Tcp) {
                continue;
            }
            (
                Outcome::None(isolating()),
                "no rule of theirs allows port 53 to anyone (the manifests hold no DNS pod)".into(),
            )
        } else {
            // DNS works when some DNS pod takes the query: say which one, or keep one
            // refusal to say which side refused.
            let through = |protocol| -> Result<&Pod, SimFlow> {
                let mut refused = None;
                for &(j, server) in &servers {
                    let Some(f) = Family::ALL.into_iter().find_map(|family| {
                        judge(
                            (pod, policy),
                            (server, &cx.compiled[j]),
                            53,
                            protocol,
                            family,
                        )
                    }) else {
                        continue;
                    };
                    if f.action() == Action::Allow {
                        return Ok(server);
                    }
                    refused.get_or_insert(f);
                }
                refused.map_or(Ok(pod), Err)
            };
            match (through(Protocol::Udp), through(Protocol::Tcp)) {
                (Ok(_), Ok(_)) => continue,
                (Ok(server), Err(_)) => {
                    let flow = Flow {
                        direction: Direction::Egress,
                        peer: server
                            .ips
                            .first()
                            .copied()
                            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                        port: 53,
                        protocol: Protocol::Udp,
                        names: &[],
                    };
                    let outcome = match decide(policy, &flow).reason {
                        Reason::Rule {
                            policy: p, rule, ..
                        } => Outcome::UdpOnly(
                            policy.egress.policies[p as usize].id.clone(),
                            Some(rule),
                        ),
                        _ => Outcome::UdpOnly(policy.egress.policies[0].id.clone(), None),
                    };
                    (outcome, String::new())
                }
                (Err(f), tcp) => {
                    let side = if f.egress.action != Some(Action::Allow) {
                        match tcp {
                            Ok(_) => "their egress allows TCP 53 but not UDP 53, which resolvers \
                                      ask first"
                                .to_owned(),
                            Err(_) => "their own egress allows no DNS".to_owned(),
                        }
                    } else {
                        format!(
                            "the ingress of {} refuses them (isolated by {})",
                            f.to,
                            f.ingress.policies.join(", ")
                        )
                    };
                    (Outcome::None(isolating()), side)
                }
            }
        };
        groups
            .entry(outcome)
            .or_insert_with(|| (Vec::new(), detail))
            .0
            .push(pod);
    }

    let servers_words = pod_list(servers.iter().map(|(_, p)| *p));
    let dns_ns = servers
        .first()
        .map_or("kube-system", |(_, p)| p.namespace.as_str());
    for (outcome, (pods, detail)) in groups {
        let pods = pod_list(pods.iter().copied());
        match outcome {
            Outcome::None(policies) => {
                // Point at the first policy that isolates them; name them all.
                let Some(first) = policies.first().and_then(|id| cx.cluster.policy(id)) else {
                    continue;
                };
                let names: Vec<String> = policies.iter().map(|p| p.to_string()).collect();
                out.push(Finding::at(
                    Check::NoDns,
                    first,
                    &first.source.selector,
                    format!(
                        "egress of {pods} is isolated by {} and no rule lets them reach DNS \
                         ({servers_words} on 53/UDP): {detail}",
                        word_list(&names),
                    ),
                    format!(
                        "allow DNS in an egress policy that selects them, for example:\n\
                         egress:\n\
                         - to:\n\
                         \x20 - namespaceSelector:\n\
                         \x20     matchLabels:\n\
                         \x20       kubernetes.io/metadata.name: {dns_ns}\n\
                         \x20   podSelector:\n\
                         \x20     matchLabels:\n\
                         \x20       {}: {}\n\
                         \x20 ports:\n\
                         \x20 - protocol: UDP\n\
                         \x20   port: 53\n\
                         \x20 - protocol: TCP\n\
                         \x20   port: 53",
                        DNS_LABEL.0, DNS_LABEL.1
                    ),
                ));
            }
            Outcome::UdpOnly(id, rule) => {
                let Some(policy) = cx.cluster.policy(&id) else {
                    continue;
                };
                let origin = rule
                    .and_then(|r| policy.egress.as_ref()?.get(r as usize))
                    .map_or(&policy.source.selector, |r| &r.origin);
                out.push(
                    Finding::at(
                        Check::NoDns,
                        policy,
                        origin,
                        format!(
                            "this rule lets {pods} reach DNS ({servers_words}) on 53/UDP, and \
                             no rule on 53/TCP: answers too large for UDP are retried over TCP, \
                             and those lookups fail"
                        ),
                        "allow TCP 53 next to UDP 53:\n\
                         ports:\n\
                         - protocol: UDP\n\
                         \x20 port: 53\n\
                         - protocol: TCP\n\
                         \x20 port: 53"
                            .into(),
                    )
                    .with_severity(Severity::Warning),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;

    fn app() -> String {
        ns("shop", "") + &dns() + &pod("shop/web", "app=web", "10.0.0.1", "80")
    }

    const DENY_EGRESS: &str = "  podSelector: {}\n  policyTypes: [Egress]\n";

    #[test]
    fn egress_deny_all_without_dns_is_an_error() {
        let found = findings(Check::NoDns, &(app() + &netpol("shop/deny", DENY_EGRESS)));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].severity, Severity::Error);
        assert_eq!(found[0].object, "NetworkPolicy shop/deny");
        assert!(
            found[0]
                .message
                .contains("egress of shop/web is isolated by shop/deny")
                && found[0].message.contains("kube-system/coredns"),
            "{}",
            found[0].message
        );
        assert!(
            found[0].fix.contains("k8s-app: kube-dns"),
            "{}",
            found[0].fix
        );
    }

    #[test]
    fn a_dns_rule_silences_it() {
        let text = app() + &netpol("shop/deny", DENY_EGRESS) + &allow_dns("shop");
        assert_eq!(findings(Check::NoDns, &text), vec![]);
    }

    #[test]
    fn udp_without_tcp_is_a_warning() {
        let udp_only = netpol(
            "shop/dns-udp",
            "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {}\n      podSelector: {matchLabels: {k8s-app: kube-dns}}\n    ports: [{port: 53, protocol: UDP}]\n",
        );
        let found = findings(Check::NoDns, &(app() + &udp_only));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].severity, Severity::Warning);
        assert_eq!(found[0].field, "spec.egress[0]");
        assert!(
            found[0]
                .message
                .starts_with("this rule lets shop/web reach DNS (kube-system/coredns) on 53/UDP, and no rule on 53/TCP"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn dns_refused_by_the_dns_pod_itself_is_named() {
        let lock_dns = netpol(
            "kube-system/lock",
            "  podSelector: {}\n  policyTypes: [Ingress]\n",
        );
        let text = app() + &netpol("shop/deny", DENY_EGRESS) + &allow_dns("shop") + &lock_dns;
        let found = findings(Check::NoDns, &text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0]
                .message
                .contains("the ingress of kube-system/coredns refuses them"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn pods_whose_egress_is_not_isolated_are_left_alone() {
        let ingress_only = netpol("shop/in", "  podSelector: {}\n  policyTypes: [Ingress]\n");
        assert_eq!(findings(Check::NoDns, &(app() + &ingress_only)), vec![]);
    }
}
