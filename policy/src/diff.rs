//! What a change to the manifests does to reachability: the flows it opens, the flows it
//! closes, and those whose audit-mode verdict changed, from two simulations. `palisade diff`
//! prints this, so that a policy change is reviewed as reachability rather than YAML.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::cluster::Cluster;
use crate::ports::Protocol;
use crate::simulate::{compile_all, pair, SideVerdict, SimFlow, Simulation};
use crate::verdict::Action;

/// A flow's verdict in one version: what happens, and each side's part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdicts {
    /// `allow`, `deny` or `would-deny`.
    pub action: Action,
    /// The source pod's egress.
    pub egress: SideVerdict,
    /// The destination pod's ingress.
    pub ingress: SideVerdict,
}

impl Verdicts {
    fn of(f: &SimFlow) -> Self {
        Self {
            action: f.action(),
            egress: f.egress.clone(),
            ingress: f.ingress.clone(),
        }
    }
}

/// A flow whose verdict differs between the two versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowChange {
    /// `namespace/name` of the source pod.
    pub from: String,
    /// `namespace/name` of the destination pod.
    pub to: String,
    /// The destination port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// The verdict in the old version.
    pub before: Verdicts,
    /// The verdict in the new version.
    pub after: Verdicts,
}

/// Every difference between two simulations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FlowDiff {
    /// Flows that pass now and were denied before.
    pub opened: Vec<FlowChange>,
    /// Flows denied now that passed before.
    pub closed: Vec<FlowChange>,
    /// Flows that pass in both versions, but are allowed in one and let through only by
    /// audit mode (`would-deny`) in the other: enforcing changes their fate.
    pub audit: Vec<FlowChange>,
    /// Flows of pods or ports that only the new version has.
    pub added: Vec<SimFlow>,
    /// Flows of pods or ports that only the old version has.
    pub removed: Vec<SimFlow>,
    /// How many flows both versions judge the same.
    pub unchanged: usize,
}

impl FlowDiff {
    /// Whether the two versions judge every flow alike, and have the same flows.
    pub fn is_empty(&self) -> bool {
        self.opened.is_empty()
            && self.closed.is_empty()
            && self.audit.is_empty()
            && self.added.is_empty()
            && self.removed.is_empty()
    }
}

/// A flow's identity: from, to, protocol, port.
type Key<'a> = (&'a str, &'a str, Protocol, u16);

fn key(f: &SimFlow) -> Key<'_> {
    (&f.from, &f.to, f.protocol, f.port)
}

impl FlowDiff {
    /// Files one flow judged in both versions.
    fn compare(&mut self, b: &SimFlow, a: &SimFlow) {
        let (was, now) = (b.action(), a.action());
        if was == now {
            self.unchanged += 1;
            return;
        }
        let change = FlowChange {
            from: a.from.clone(),
            to: a.to.clone(),
            port: a.port,
            protocol: a.protocol,
            before: Verdicts::of(b),
            after: Verdicts::of(a),
        };
        match (was.passes(), now.passes()) {
            (false, true) => self.opened.push(change),
            (true, false) => self.closed.push(change),
            _ => self.audit.push(change),
        }
    }
}

/// The differences between `old` and `new`, each list in the order of the flows' identity.
pub fn diff(old: &Simulation, new: &Simulation) -> FlowDiff {
    let before: BTreeMap<Key<'_>, &SimFlow> = old.flows.iter().map(|f| (key(f), f)).collect();
    let after: BTreeMap<Key<'_>, &SimFlow> = new.flows.iter().map(|f| (key(f), f)).collect();
    let mut out = FlowDiff::default();
    for (k, a) in &after {
        match before.get(k) {
            Some(b) => out.compare(b, a),
            None => out.added.push((*a).clone()),
        }
    }
    out.removed = before
        .iter()
        .filter(|(k, _)| !after.contains_key(*k))
        .map(|(_, f)| (*f).clone())
        .collect();
    out
}

/// The differences between the flows of two clusters, as [`diff`] of their simulations
/// gives them, judged pair by pair so that neither simulation is ever held whole: a
/// large cluster's simulation holds millions of flows, its change a handful.
pub fn diff_clusters(old: &Cluster, new: &Cluster) -> FlowDiff {
    let (old_policies, new_policies) = (compile_all(old), compile_all(new));
    let old_index: HashMap<String, usize> = old
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| (p.key(), i))
        .collect();
    let new_index: HashMap<String, usize> = new
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| (p.key(), i))
        .collect();
    let mut out = FlowDiff::default();
    for (i, from) in new.pods.iter().enumerate() {
        for (j, to) in new.pods.iter().enumerate() {
            if i == j {
                continue;
            }
            let after = pair((from, &new_policies[i]), (to, &new_policies[j]));
            let before = match (old_index.get(&from.key()), old_index.get(&to.key())) {
                (Some(&oi), Some(&oj)) => pair(
                    (&old.pods[oi], &old_policies[oi]),
                    (&old.pods[oj], &old_policies[oj]),
                ),
                _ => Vec::new(),
            };
            for a in &after {
                match before.iter().find(|b| key(b) == key(a)) {
                    Some(b) => out.compare(b, a),
                    None => out.added.push(a.clone()),
                }
            }
            out.removed.extend(
                before
                    .into_iter()
                    .filter(|b| !after.iter().any(|a| key(a) == key(b))),
            );
        }
    }
    // Pairs with an end that only the old version has.
    for (i, from) in old.pods.iter().enumerate() {
        for (j, to) in old.pods.iter().enumerate() {
            let gone = !new_index.contains_key(&from.key()) || !new_index.contains_key(&to.key());
            if i != j && gone {
                out.removed
                    .extend(pair((from, &old_policies[i]), (to, &old_policies[j])));
            }
        }
    }
    for list in [&mut out.opened, &mut out.closed, &mut out.audit] {
        list.sort_by(|a, b| {
            (&a.from, &a.to, a.protocol, a.port).cmp(&(&b.from, &b.to, b.protocol, b.port))
        });
    }
    for list in [&mut out.added, &mut out.removed] {
        list.sort_by(|a, b| key(a).cmp(&key(b)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::tests::{cluster, netpol, ns, pod};
    use crate::simulate::simulate;

    fn shop(extra: &str) -> Cluster {
        let text = ns("shop", "")
            + &pod("shop/web", "app=web", "10.0.0.1", "80")
            + &pod("shop/api", "app=api", "10.0.0.2", "8080,9090")
            + extra;
        cluster(&text)
    }

    /// The diff of two clusters' simulations, checked against the pair-by-pair diff.
    fn both(old: &Cluster, new: &Cluster) -> FlowDiff {
        let d = diff(&simulate(old), &simulate(new));
        assert_eq!(diff_clusters(old, new), d);
        d
    }

    const API_FROM_WEB: &str = "  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 8080}]\n";

    #[test]
    fn a_new_policy_closes_what_it_no_longer_allows() {
        let old = shop("");
        let new = shop(&netpol("shop/api-in", API_FROM_WEB));
        let d = both(&old, &new);
        let closed: Vec<String> = d
            .closed
            .iter()
            .map(|c| format!("{} -> {} {}", c.from, c.to, c.port))
            .collect();
        assert_eq!(closed, vec!["shop/web -> shop/api 9090"]);
        assert_eq!(d.closed[0].after.action, Action::Deny);
        assert_eq!(d.closed[0].after.ingress.policies, vec!["shop/api-in"]);
        assert!(d.opened.is_empty() && d.audit.is_empty() && d.added.is_empty());
        // Reversed, the same flow opens.
        let back = both(&new, &old);
        assert_eq!(back.opened.len(), 1);
        assert!(back.closed.is_empty());
        assert_eq!(d.unchanged, simulate(&old).flows.len() - 1);
    }

    #[test]
    fn audit_mode_moves_denials_to_would_deny() {
        let enforced = shop(&netpol("shop/api-in", API_FROM_WEB));
        let audited = shop(
            &(netpol("shop/api-in", API_FROM_WEB)
                + "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {palisade.dev/inject: enabled}, annotations: {palisade.dev/mode: audit}}\n---\n"),
        );
        let d = both(&enforced, &audited);
        // Denied before, let through by audit now: it opens, with its would-deny verdict.
        assert_eq!(d.opened.len(), 1, "{d:?}");
        assert_eq!(d.opened[0].after.action, Action::WouldDeny);
        assert!(d.closed.is_empty() && d.audit.is_empty());
        // In audit mode, a rule that now allows the flow changes only its audit verdict.
        let allowed = shop(
            &(netpol("shop/api-in", API_FROM_WEB)
                + &netpol("shop/api-metrics", "  podSelector: {matchLabels: {app: api}}
  ingress:
  - ports: [{port: 9090}]
")
                + "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, annotations: {palisade.dev/mode: audit}}\n---\n"),
        );
        let d = both(&audited, &allowed);
        assert!(d.opened.is_empty() && d.closed.is_empty(), "{d:?}");
        assert_eq!(d.audit.len(), 1, "{d:?}");
        assert_eq!(
            (d.audit[0].before.action, d.audit[0].after.action),
            (Action::WouldDeny, Action::Allow)
        );
    }

    #[test]
    fn flows_of_new_pods_are_added_not_opened() {
        let old = shop("");
        let new = shop(&pod("shop/db", "app=db", "10.0.0.3", "5432"));
        let d = both(&old, &new);
        assert!(d.opened.is_empty() && d.closed.is_empty());
        // db's one port from web and api, and api's two and web's one from db.
        assert_eq!(d.added.len(), 5, "{:?}", d.added);
        assert_eq!(both(&new, &old).removed.len(), 5);
        assert!(both(&old, &old).is_empty());
    }
}
