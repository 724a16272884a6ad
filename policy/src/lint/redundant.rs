//! Rules that allow nothing a broader rule does not already allow. Judged on the rules'
//! text (selectors implying selectors, blocks inside blocks, ports inside ranges), so that
//! two rules are never called redundant only because today's pods happen to fit both.

use super::{Check, Context, Finding};
use crate::cluster::Cluster;
use crate::peer::{Entity, IpBlock, Namespaces, Peer};
use crate::policy::{Direction, Policy, PortRule, Rule, L7};

pub(super) fn check(cx: &Context<'_>, out: &mut Vec<Finding>) {
    let policies = &cx.cluster.policies;
    for (pi, narrow) in policies.iter().enumerate() {
        for dir in [Direction::Ingress, Direction::Egress] {
            for (ri, rule) in narrow.rules(dir).unwrap_or_default().iter().enumerate() {
                if rule.peers.as_ref().is_some_and(Vec::is_empty) {
                    continue; // allows nothing at all
                }
                let broader = policies.iter().enumerate().find_map(|(qi, wide)| {
                    applies_wherever(narrow, wide).then_some(())?;
                    wide.rules(dir)?
                        .iter()
                        .enumerate()
                        .find(|&(rj, other)| {
                            (qi, rj) != (pi, ri)
                                && within(cx.cluster, rule, other)
                                // Of two equivalent rules, only the later one is redundant.
                                && (!within(cx.cluster, other, rule) || (qi, rj) < (pi, ri))
                        })
                        .map(|(rj, other)| (wide, rj, other))
                });
                let Some((wide, rj, other)) = broader else {
                    continue;
                };
                let which = if wide.id == narrow.id {
                    format!("rule {rj} of the same policy")
                } else {
                    format!(
                        "{} {}, {dir} rule {rj} ({}:{})",
                        wide.id.kind.as_str(),
                        wide.id,
                        wide.source.file,
                        other.origin.line
                    )
                };
                out.push(Finding::at(
                    Check::RedundantRule,
                    narrow,
                    &rule.origin,
                    format!("everything this {dir} rule allows, {which} allows too"),
                    "remove this rule, or narrow the broader one if it allows more than you \
                     meant"
                        .into(),
                ));
            }
        }
    }
}

/// Whether `wide` applies to every pod `narrow` applies to, and is enforced whenever
/// `narrow` is.
fn applies_wherever(narrow: &Policy, wide: &Policy) -> bool {
    narrow.id.namespace == wide.id.namespace
        && narrow.pod_selector.implies(&wide.pod_selector)
        && (narrow.audit || !wide.audit)
}

/// Whether every connection `narrow` allows, `wide` allows too.
fn within(cluster: &Cluster, narrow: &Rule, wide: &Rule) -> bool {
    let peers = match (&narrow.peers, &wide.peers) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(n), Some(w)) => n
            .iter()
            .all(|a| w.iter().any(|b| peer_within(cluster, a, b))),
    };
    let ports = match (narrow.ports.is_empty(), wide.ports.is_empty()) {
        (_, true) => true,
        (true, false) => false,
        (false, false) => narrow
            .ports
            .iter()
            .all(|a| wide.ports.iter().any(|b| port_within(a, b))),
    };
    peers && ports
}

fn peer_within(cluster: &Cluster, a: &Peer, b: &Peer) -> bool {
    match (a, b) {
        (_, Peer::Entity(Entity::All)) => true,
        (Peer::Pods { .. }, Peer::Entity(Entity::Cluster)) => true,
        (
            Peer::Pods {
                namespaces: na,
                pods: pa,
            },
            Peer::Pods {
                namespaces: nb,
                pods: pb,
            },
        ) => namespaces_within(cluster, na, nb) && pa.implies(pb),
        (Peer::IpBlock(x), Peer::IpBlock(y)) => block_within(x, y),
        (Peer::Fqdn(x), Peer::Fqdn(y)) => x
            .iter()
            .all(|n| y.iter().any(|m| m.to_string() == n.to_string())),
        (Peer::Entity(x), Peer::Entity(y)) => x == y,
        _ => false,
    }
}

fn namespaces_within(cluster: &Cluster, a: &Namespaces, b: &Namespaces) -> bool {
    match (a, b) {
        (Namespaces::Named(x), Namespaces::Named(y)) => x == y,
        (Namespaces::Named(x), Namespaces::Matching(sel)) => {
            cluster.namespace(x).is_some_and(|n| sel.matches(&n.labels))
        }
        (Namespaces::Matching(x), Namespaces::Matching(y)) => x.implies(y),
        (Namespaces::Matching(_), Namespaces::Named(_)) => false,
    }
}

/// Whether every address of `x` is in `y`.
fn block_within(x: &IpBlock, y: &IpBlock) -> bool {
    y.cidr.contains(&x.cidr)
        && y.except.iter().all(|hole| {
            // The hole must miss x, or lie in one of x's own holes.
            !(hole.contains(&x.cidr) || x.cidr.contains(hole))
                || x.except.iter().any(|e| e.contains(hole))
        })
}

fn port_within(a: &PortRule, b: &PortRule) -> bool {
    use crate::ports::PortRef::{Name, Number};
    let protocol = b.spec.protocol.is_none() || a.spec.protocol == b.spec.protocol;
    let ports = match (&a.spec.port, &b.spec.port) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(Number(x)), Some(Number(y))) => {
            let x_end = a.spec.end_port.unwrap_or(*x);
            let y_end = b.spec.end_port.unwrap_or(*y);
            y <= x && x_end <= y_end
        }
        (Some(Name(x)), Some(Name(y))) => x == y,
        _ => false,
    };
    protocol && ports && l7_within(&a.l7, &b.l7)
}

/// Whether `b`'s conditions let through everything `a`'s do. L7 conditions overridden by
/// an L4-only rule are `l7-overridden`'s to report; here they must be written the same.
fn l7_within(a: &L7, b: &L7) -> bool {
    if b.is_empty() {
        return a.is_empty();
    }
    fn words<T: ToString>(x: Option<&[T]>) -> Option<Vec<String>> {
        x.map(|v| v.iter().map(T::to_string).collect())
    }
    let http = |l7: &L7| words(l7.http.as_deref().map(crate::http::HttpRules::rules));
    http(a) == http(b)
        && words(a.dns.as_deref()) == words(b.dns.as_deref())
        && a.server_names == b.server_names
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;

    fn shop() -> String {
        ns("shop", "")
            + &pod("shop/web", "app=web,tier=front", "10.0.0.1", "80")
            + &pod("shop/api", "app=api", "10.0.0.2", "8080")
    }

    #[test]
    fn a_rule_inside_a_broader_one_is_flagged() {
        let text = shop()
            + &netpol(
                "shop/api-in",
                "  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from: [{podSelector: {}}]\n    ports: [{port: 8000, endPort: 9000}]\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 8080}]\n",
            );
        let found = findings(Check::RedundantRule, &text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].field, "spec.ingress[1]");
        assert_eq!(
            found[0].message,
            "everything this ingress rule allows, rule 0 of the same policy allows too"
        );
    }

    #[test]
    fn a_broader_rule_in_a_policy_for_more_pods_counts() {
        let text = shop()
            + &netpol(
                "shop/all-in",
                "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {}}]\n",
            )
            + &netpol(
                "shop/api-in",
                "  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 8080}]\n",
            );
        let found = findings(Check::RedundantRule, &text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].object, "NetworkPolicy shop/api-in");
        assert!(
            found[0]
                .message
                .contains("NetworkPolicy shop/all-in, ingress rule 0 (test.yaml:"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn rules_that_only_overlap_are_fine() {
        let text = shop()
            + &netpol(
                "shop/api-in",
                "  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 8080}]\n  - from: [{podSelector: {matchLabels: {tier: front}}}]\n    ports: [{port: 8080}, {port: 9090}]\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/24]}}]\n  - from: [{ipBlock: {cidr: 10.0.0.0/16}}]\n",
            );
        // web's labels hold tier=front, but the selectors' text does not say so.
        assert_eq!(findings(Check::RedundantRule, &text), vec![]);
    }

    #[test]
    fn of_two_identical_rules_the_later_is_flagged() {
        let rule =
            "  - from: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 8080}]\n";
        let text = shop()
            + &netpol(
                "shop/api-in",
                &format!("  podSelector: {{matchLabels: {{app: api}}}}\n  ingress:\n{rule}{rule}"),
            );
        let found = findings(Check::RedundantRule, &text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].field, "spec.ingress[1]");
    }

    #[test]
    fn blocks_and_their_holes() {
        let b = |cidr: &str, except: &[&str]| IpBlock {
            cidr: cidr.parse().unwrap(),
            except: except.iter().map(|e| e.parse().unwrap()).collect(),
        };
        assert!(block_within(&b("10.1.0.0/16", &[]), &b("10.0.0.0/8", &[])));
        assert!(!block_within(&b("10.0.0.0/8", &[]), &b("10.1.0.0/16", &[])));
        assert!(block_within(
            &b("10.1.0.0/16", &[]),
            &b("10.0.0.0/8", &["10.2.0.0/16"])
        ));
        assert!(!block_within(
            &b("10.1.0.0/16", &[]),
            &b("10.0.0.0/8", &["10.1.2.0/24"])
        ));
        assert!(block_within(
            &b("10.1.0.0/16", &["10.1.2.0/23"]),
            &b("10.0.0.0/8", &["10.1.2.0/24"])
        ));
        assert!(!block_within(
            &b("10.1.0.0/16", &[]),
            &b("10.0.0.0/8", &["10.0.0.0/9"])
        ));
    }
}
