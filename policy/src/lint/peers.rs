//! Peers that do not pick what they seem to: namespace selectors on labels nobody set, a
//! namespace selector and a pod selector ORed where they read ANDed, and pod selectors
//! looking in the wrong namespace.

use super::{pod_list, Check, Context, Finding};
use crate::cluster::NAMESPACE_NAME_LABEL;
use crate::peer::{Namespaces, Peer};
use crate::policy::{Direction, Policy, PolicyKind, Rule};
use crate::selector::LabelSelector;

pub(super) fn check(cx: &Context<'_>, out: &mut Vec<Finding>) {
    for policy in &cx.cluster.policies {
        for dir in [Direction::Ingress, Direction::Egress] {
            for rule in policy.rules(dir).unwrap_or_default() {
                let Some(peers) = &rule.peers else { continue };
                or_not_and(cx, policy, dir, rule, peers, out);
                for (i, peer) in peers.iter().enumerate() {
                    if let Peer::Pods { namespaces, pods } = peer {
                        unknown_namespace_labels(cx, policy, rule, i, namespaces, out);
                        pods_in_other_namespace(cx, policy, dir, rule, i, namespaces, pods, out);
                    }
                }
            }
        }
    }
}

/// `{matchLabels: {k: v}}` as YAML flow, for fixes.
fn selector_yaml(s: &LabelSelector) -> String {
    let labels: Vec<String> = s
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let exprs: Vec<String> = s
        .match_expressions
        .iter()
        .map(|r| {
            let values = if r.values.is_empty() {
                String::new()
            } else {
                format!(", values: [{}]", r.values.join(", "))
            };
            format!(
                "{{key: {}, operator: {}{values}}}",
                r.key,
                r.operator.as_str()
            )
        })
        .collect();
    let mut parts = Vec::new();
    if !labels.is_empty() {
        parts.push(format!("matchLabels: {{{}}}", labels.join(", ")));
    }
    if !exprs.is_empty() {
        parts.push(format!("matchExpressions: [{}]", exprs.join(", ")));
    }
    format!("{{{}}}", parts.join(", "))
}

/// A namespaceSelector-only peer and a podSelector-only peer in the same list.
fn or_not_and(
    cx: &Context<'_>,
    policy: &Policy,
    dir: Direction,
    rule: &Rule,
    peers: &[Peer],
    out: &mut Vec<Finding>,
) {
    let own = Namespaces::Named(policy.id.namespace.clone());
    let namespaces_only = peers.iter().position(
        |p| matches!(p, Peer::Pods { namespaces, pods } if pods.is_empty() && *namespaces != own),
    );
    let pods_only = peers.iter().position(
        |p| matches!(p, Peer::Pods { namespaces, pods } if !pods.is_empty() && *namespaces == own),
    );
    let (Some(n), Some(p)) = (namespaces_only, pods_only) else {
        return;
    };
    let (first, second) = (n.min(p), n.max(p));
    let (Peer::Pods { namespaces, .. }, Peer::Pods { pods, .. }) = (&peers[n], &peers[p]) else {
        return;
    };
    let ports = rule.ports_in_words();
    let verb = match dir {
        Direction::Ingress => "lets in",
        Direction::Egress => "lets the pods reach",
    };
    let message = format!(
        "{} and {} are two peers, so they are ORed: on {ports} this rule {verb} {} (now: {}) \
         OR {} (now: {}), not only pods {pods} in those namespaces",
        rule.peer_origin(first).field,
        rule.peer_origin(second).field,
        peers[n],
        pod_list(peers[n].pods(cx.cluster)),
        peers[p],
        pod_list(peers[p].pods(cx.cluster)),
    );
    let anded = Peer::Pods {
        namespaces: namespaces.clone(),
        pods: pods.clone(),
    };
    let fix = match (policy.id.kind, namespaces) {
        (PolicyKind::NetworkPolicy, Namespaces::Matching(sel)) => format!(
            "if you meant {anded} (now: {}), write both selectors in one peer (no dash before \
             podSelector):\n\
             - namespaceSelector: {}\n\
             \x20 podSelector: {}",
            pod_list(anded.pods(cx.cluster)),
            selector_yaml(sel),
            selector_yaml(pods),
        ),
        _ => format!(
            "if you meant {anded} (now: {}), put the namespace label and the pod labels in one \
             endpoint selector",
            pod_list(anded.pods(cx.cluster)),
        ),
    };
    out.push(Finding::at(
        Check::OrNotAnd,
        policy,
        rule.peer_origin(p),
        message,
        fix,
    ));
}

/// A namespace selector that no namespace of the manifests matches.
fn unknown_namespace_labels(
    cx: &Context<'_>,
    policy: &Policy,
    rule: &Rule,
    index: usize,
    namespaces: &Namespaces,
    out: &mut Vec<Finding>,
) {
    let Namespaces::Matching(sel) = namespaces else {
        return;
    };
    let all = || cx.cluster.namespaces.values();
    if sel.is_empty() || all().any(|n| sel.matches(&n.labels)) {
        return;
    }
    let missing: Vec<String> = sel
        .match_labels
        .iter()
        .filter(|(k, v)| !all().any(|n| n.labels.get(k) == Some(v)))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let what = if missing.is_empty() {
        format!("no namespace in the manifests matches {sel}")
    } else {
        format!(
            "no namespace in the manifests has the label {}",
            missing.join(", ")
        )
    };
    // A label value that is a namespace's name is almost always meant as that name.
    let named: Vec<&str> = sel
        .match_labels
        .iter()
        .filter(|(k, _)| k != NAMESPACE_NAME_LABEL)
        .filter_map(|(_, v)| cx.cluster.namespace(v).map(|n| n.name.as_str()))
        .collect();
    let fix = match named.as_slice() {
        [name] => format!(
            "select the namespace by the label the API server sets on every namespace:\n\
             namespaceSelector:\n\
             \x20 matchLabels:\n\
             \x20   {NAMESPACE_NAME_LABEL}: {name}\n\
             or label it yourself: kubectl label namespace {name} {}",
            missing.first().map_or("KEY=VALUE", String::as_str)
        ),
        _ => format!(
            "select namespaces by {NAMESPACE_NAME_LABEL} (set on every namespace by the API \
             server), or add the label to the namespaces you mean"
        ),
    };
    out.push(Finding::at(
        Check::UnknownNamespaceLabels,
        policy,
        rule.peer_origin(index),
        format!("{what}: this peer matches nothing"),
        fix,
    ));
}

/// A pod selector confined to one namespace whose labels only pods of other namespaces have.
#[allow(clippy::too_many_arguments)]
fn pods_in_other_namespace(
    cx: &Context<'_>,
    policy: &Policy,
    dir: Direction,
    rule: &Rule,
    index: usize,
    namespaces: &Namespaces,
    pods: &LabelSelector,
    out: &mut Vec<Finding>,
) {
    let Namespaces::Named(ns) = namespaces else {
        return;
    };
    let peer = Peer::Pods {
        namespaces: namespaces.clone(),
        pods: pods.clone(),
    };
    if pods.is_empty() || !peer.pods(cx.cluster).is_empty() {
        return;
    }
    let elsewhere: Vec<_> = cx
        .cluster
        .pods
        .iter()
        .filter(|p| !p.host_network && p.namespace != *ns && pods.matches(&p.labels))
        .collect();
    let Some(first) = elsewhere.first() else {
        return;
    };
    let mut other_namespaces: Vec<&str> = elsewhere.iter().map(|p| p.namespace.as_str()).collect();
    other_namespaces.dedup();
    let verb = match dir {
        Direction::Ingress => "let them in",
        Direction::Egress => "reach them",
    };
    let fix = match policy.id.kind {
        PolicyKind::NetworkPolicy => format!(
            "to {verb}, add a namespaceSelector to the same peer (no dash):\n\
             - namespaceSelector:\n\
             \x20   matchLabels:\n\
             \x20     {NAMESPACE_NAME_LABEL}: {}\n\
             \x20 podSelector: {}",
            first.namespace,
            selector_yaml(pods)
        ),
        _ => format!(
            "to {verb}, add k8s:io.kubernetes.pod.namespace: {} to the endpoint selector",
            first.namespace
        ),
    };
    out.push(Finding::at(
        Check::PodsInOtherNamespace,
        policy,
        rule.peer_origin(index),
        format!(
            "pods {pods} are looked for in namespace {ns} only, where no pod has these labels; \
             pods with them run in {} ({})",
            other_namespaces.join(", "),
            pod_list(elsewhere.iter().copied())
        ),
        fix,
    ));
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;

    fn cluster_text() -> String {
        ns("shop", "") + &dns() + &pod("shop/web", "app=web", "10.0.0.1", "80")
    }

    fn egress_to(peers: &str) -> String {
        netpol(
            "shop/p",
            &format!(
                "  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n{peers}    ports: [{{port: 53, protocol: UDP}}, {{port: 53, protocol: TCP}}]\n"
            ),
        )
    }

    #[test]
    fn two_peers_that_read_as_one_are_flagged_with_what_they_allow() {
        let text = cluster_text()
            + &egress_to(
                "    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}\n    - podSelector: {matchLabels: {k8s-app: kube-dns}}\n",
            );
        let found = findings(Check::OrNotAnd, &text);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.field, "spec.egress[0].to[1]");
        assert!(
            f.message.contains(
                "every pod in namespaces kubernetes.io/metadata.name=kube-system (now: kube-system/coredns) \
                 OR pods k8s-app=kube-dns in namespace shop (now: none)"
            ),
            "{}",
            f.message
        );
        assert!(
            f.fix
                .contains("  podSelector: {matchLabels: {k8s-app: kube-dns}}"),
            "{}",
            f.fix
        );
    }

    #[test]
    fn cilium_endpoint_selectors_are_judged_alike() {
        let policy = |endpoints: &str| {
            format!(
                "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: dns, namespace: shop}}\n\
                 spec:\n  endpointSelector: {{}}\n  egress:\n  - toEndpoints: [{endpoints}]\n    toPorts: [{{ports: [{{port: \"53\", protocol: UDP}}]}}]\n---\n"
            )
        };
        let two = policy(
            "{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system}}, {matchLabels: {k8s-app: kube-dns}}",
        );
        let found = findings(Check::OrNotAnd, &(cluster_text() + &two));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].object, "CiliumNetworkPolicy shop/dns");
        assert_eq!(found[0].field, "spec.egress[0].toEndpoints[1]");
        assert!(
            found[0].fix.contains("one endpoint selector"),
            "{}",
            found[0].fix
        );
        let one = policy(
            "{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}",
        );
        assert_eq!(findings(Check::OrNotAnd, &(cluster_text() + &one)), vec![]);
        assert_eq!(
            findings(Check::PodsInOtherNamespace, &(cluster_text() + &one)),
            vec![]
        );
    }

    #[test]
    fn one_peer_with_both_selectors_is_fine() {
        let text = cluster_text()
            + &egress_to(
                "    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}\n      podSelector: {matchLabels: {k8s-app: kube-dns}}\n",
            );
        assert_eq!(findings(Check::OrNotAnd, &text), vec![]);
    }

    #[test]
    fn a_namespace_selector_on_a_label_nobody_set_is_flagged() {
        let text = cluster_text()
            + &egress_to("    - namespaceSelector: {matchLabels: {name: kube-system}}\n");
        let found = findings(Check::UnknownNamespaceLabels, &text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].message.contains("has the label name=kube-system"),
            "{}",
            found[0].message
        );
        assert!(
            found[0]
                .fix
                .contains("kubernetes.io/metadata.name: kube-system"),
            "{}",
            found[0].fix
        );
    }

    #[test]
    fn a_namespace_label_that_exists_is_fine() {
        let text = ns("shop", "")
            + &ns("kube-system", "name=kube-system")
            + &pod(
                "kube-system/coredns",
                "k8s-app=kube-dns",
                "10.0.9.53",
                "53/UDP,53/TCP",
            )
            + &pod("shop/web", "app=web", "10.0.0.1", "80")
            + &egress_to("    - namespaceSelector: {matchLabels: {name: kube-system}}\n");
        assert_eq!(findings(Check::UnknownNamespaceLabels, &text), vec![]);
    }

    #[test]
    fn a_pod_selector_looking_in_the_wrong_namespace_is_flagged() {
        let text =
            cluster_text() + &egress_to("    - podSelector: {matchLabels: {k8s-app: kube-dns}}\n");
        let found = findings(Check::PodsInOtherNamespace, &text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].message.contains(
                "pods k8s-app=kube-dns are looked for in namespace shop only, where no pod has these \
                 labels; pods with them run in kube-system (kube-system/coredns)"
            ),
            "{}",
            found[0].message
        );
        assert!(found[0]
            .fix
            .contains("kubernetes.io/metadata.name: kube-system"));
    }

    #[test]
    fn a_pod_selector_that_matches_at_home_is_fine() {
        let text = cluster_text() + &egress_to("    - podSelector: {matchLabels: {app: web}}\n");
        assert_eq!(findings(Check::PodsInOtherNamespace, &text), vec![]);
    }
}
