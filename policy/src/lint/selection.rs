//! Which pods policies select: none at all, or pods that nothing enforces them in.

use std::collections::BTreeMap;

use super::{pod_list, word_list, Check, Context, Finding};
use crate::cluster::{Pod, INJECT_KEY};
use crate::policy::Policy;

pub(super) fn check(cx: &Context<'_>, out: &mut Vec<Finding>) {
    // Namespace -> (the first policy selecting an unprotected pod, every such policy, pods).
    let mut unprotected: BTreeMap<&str, (&Policy, Vec<String>, Vec<&Pod>)> = BTreeMap::new();
    for policy in &cx.cluster.policies {
        let selected: Vec<&Pod> = cx.selected(policy).map(|(_, p)| p).collect();
        if selected.is_empty() {
            if cx.has_pods(&policy.id.namespace) {
                out.push(selects_no_pod(cx, policy));
            }
            continue;
        }
        for pod in selected {
            if pod.host_network || !cx.cluster.pod_asks_for_injection(pod) {
                let entry = unprotected
                    .entry(pod.namespace.as_str())
                    .or_insert_with(|| (policy, Vec::new(), Vec::new()));
                let name = policy.id.to_string();
                if !entry.1.contains(&name) {
                    entry.1.push(name);
                }
                if !entry.2.iter().any(|p| p.key() == pod.key()) {
                    entry.2.push(pod);
                }
            }
        }
    }
    for (namespace, (first, policies, pods)) in unprotected {
        let host: Vec<&Pod> = pods.iter().copied().filter(|p| p.host_network).collect();
        let plain: Vec<&Pod> = pods.iter().copied().filter(|p| !p.host_network).collect();
        let mut parts = Vec::new();
        if !plain.is_empty() {
            parts.push(format!(
                "{} not injected (no {INJECT_KEY}: enabled on the pod or its namespace), so no \
                 palisade proxy runs there",
                pod_list(plain.iter().copied())
            ));
        }
        if !host.is_empty() {
            parts.push(format!(
                "{} on the node's network (hostNetwork), where no sidecar can isolate a pod",
                pod_list(host.iter().copied())
            ));
        }
        out.push(Finding::at(
            Check::NotInjected,
            first,
            &first.source.selector,
            format!(
                "policies {} select pods that nothing enforces them in: {}",
                word_list(&policies),
                parts.join("; ")
            ),
            format!(
                "label the namespace and restart its pods: kubectl label namespace {namespace} \
                 {INJECT_KEY}=enabled (or annotate single pods {INJECT_KEY}: enabled)"
            ),
        ));
    }
}

fn selects_no_pod(cx: &Context<'_>, policy: &Policy) -> Finding {
    let ns = &policy.id.namespace;
    let here = cx
        .cluster
        .pods
        .iter()
        .filter(|p| p.namespace == *ns)
        .count();
    let elsewhere: Vec<&Pod> = cx
        .cluster
        .pods
        .iter()
        .filter(|p| p.namespace != *ns && policy.pod_selector.matches(&p.labels))
        .collect();
    let mut message = format!(
        "the selector {} matches none of the {here} pods of namespace {ns} in the manifests",
        policy.pod_selector
    );
    if !elsewhere.is_empty() {
        message.push_str(&format!(
            "; it would match {} in other namespaces, but a policy selects pods of its own \
             namespace only",
            pod_list(elsewhere.iter().copied())
        ));
    }
    Finding::at(
        Check::SelectsNoPod,
        policy,
        &policy.source.selector,
        message,
        "check the selector's labels against the pods' (kubectl get pods --show-labels), or \
         move the policy to the namespace of the pods it is for"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;

    const DENY_IN: &str = "  podSelector: {}\n  policyTypes: [Ingress]\n";

    #[test]
    fn a_policy_that_selects_no_pod_is_flagged() {
        let text = ns("a", "")
            + &ns("b", "")
            + &pod("a/web", "app=web", "10.0.0.1", "80")
            + &pod("b/api", "app=api", "10.0.0.2", "80")
            + &netpol(
                "a/api-in",
                "  podSelector: {matchLabels: {app: api}}\n  policyTypes: [Ingress]\n",
            );
        let found = findings(Check::SelectsNoPod, &text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].message.contains(
                "matches none of the 1 pods of namespace a in the manifests; it would match b/api"
            ),
            "{}",
            found[0].message
        );
        let fine =
            ns("a", "") + &pod("a/web", "app=web", "10.0.0.1", "80") + &netpol("a/all", DENY_IN);
        assert_eq!(findings(Check::SelectsNoPod, &fine), vec![]);
    }

    #[test]
    fn a_namespace_without_pods_in_the_manifests_is_not_judged() {
        let text = ns("a", "") + &netpol("a/deny", DENY_IN);
        assert_eq!(findings(Check::SelectsNoPod, &text), vec![]);
    }

    #[test]
    fn selected_pods_without_the_sidecar_are_flagged() {
        // Namespace `plain` does not ask for injection; one of its pods asks by annotation.
        let plain_ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n---\n";
        let injected_pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: plain, \
             annotations: {palisade.dev/inject: enabled}}\nspec: {containers: [{name: c}]}\n\
             status: {podIP: 10.0.0.2}\n---\n";
        let host_pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: h, namespace: plain}\n\
             spec: {hostNetwork: true, containers: [{name: c}]}\nstatus: {podIP: 192.168.0.1}\n---\n";
        let text = plain_ns.to_owned()
            + &pod("plain/a", "app=a", "10.0.0.1", "80")
            + injected_pod
            + host_pod
            + &netpol("plain/deny", DENY_IN);
        let found = findings(Check::NotInjected, &text);
        assert_eq!(found.len(), 1, "{found:?}");
        let m = &found[0].message;
        assert!(m.contains("policies plain/deny select pods"), "{m}");
        assert!(m.contains("plain/a not injected"), "{m}");
        assert!(m.contains("plain/h on the node's network"), "{m}");
        assert!(!m.contains("plain/b"), "{m}");
        assert!(found[0]
            .fix
            .contains("kubectl label namespace plain palisade.dev/inject=enabled"));
    }

    #[test]
    fn injected_pods_are_fine() {
        let text =
            ns("a", "") + &pod("a/web", "app=web", "10.0.0.1", "80") + &netpol("a/deny", DENY_IN);
        assert_eq!(findings(Check::NotInjected, &text), vec![]);
    }
}
