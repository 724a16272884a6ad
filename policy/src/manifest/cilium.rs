//! PalisadePolicy and CiliumNetworkPolicy: the L3/L4, HTTP and FQDN subset of the
//! CiliumNetworkPolicy shape. A field palisade does not enforce is an error, never ignored:
//! ignoring it could make a policy allow more than its author meant.

use std::sync::Arc;

use super::field::Field;
use super::kube::{self, Meta};
use super::netpol;
use crate::cluster::NAMESPACE_NAME_LABEL;
use crate::fqdn::NamePattern;
use crate::http::{Anchored, HeaderMatch, HttpRule, HttpRules, PathPattern};
use crate::peer::{Entity, IpBlock, Namespaces, Peer};
use crate::policy::{Direction, Origin, Policy, PolicyId, PolicyKind, PortRule, Rule, Source, L7};
use crate::ports::{PortRef, PortSpec, Protocol};
use crate::selector::{LabelSelector, Requirement};

/// The pod label Cilium uses for a pod's namespace.
const POD_NAMESPACE_KEY: &str = "io.kubernetes.pod.namespace";
/// The prefix Cilium uses for a namespace's labels.
const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// Fields of a CiliumNetworkPolicy ingress rule that palisade refuses rather than ignore.
pub const UNSUPPORTED_INGRESS_FIELDS: [&str; 6] = [
    "fromRequires",
    "fromServices",
    "fromGroups",
    "fromNodes",
    "icmps",
    "authentication",
];
/// Fields of an egress rule that palisade refuses rather than ignore.
pub const UNSUPPORTED_EGRESS_FIELDS: [&str; 6] = [
    "toRequires",
    "toServices",
    "toGroups",
    "toNodes",
    "icmps",
    "authentication",
];

pub(crate) fn policy(obj: &Field<'_>, meta: &Meta, kind: PolicyKind, audit: bool) -> Vec<Policy> {
    obj.only(
        &["apiVersion", "kind", "metadata", "spec", "specs", "status"],
        kind.as_str(),
    );
    let mut specs: Vec<Field<'_>> = obj.get("specs").items();
    let spec = obj.get("spec");
    if spec.is_set() {
        specs.insert(0, spec);
    }
    if specs.is_empty() {
        obj.get("spec").error("is required");
    }
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let name = if i == 0 && obj.get("spec").is_set() {
                meta.name.clone()
            } else {
                format!("{}#{}", meta.name, i)
            };
            one_spec(
                spec,
                meta,
                PolicyId {
                    kind,
                    namespace: meta.namespace.clone(),
                    name,
                },
                audit,
            )
        })
        .collect()
}

fn one_spec(spec: &Field<'_>, meta: &Meta, id: PolicyId, audit: bool) -> Policy {
    spec.only(
        &[
            "endpointSelector",
            "ingress",
            "egress",
            "enableDefaultDeny",
            "description",
            "labels",
            "ingressDeny",
            "egressDeny",
            "nodeSelector",
        ],
        "a policy spec",
    );
    for unsupported in ["ingressDeny", "egressDeny", "nodeSelector"] {
        let f = spec.get(unsupported);
        if f.is_set() {
            f.error(format!(
                "{unsupported} is not supported by palisade; remove it"
            ));
        }
    }
    let sel = spec.get("endpointSelector");
    if !sel.is_set() {
        sel.error("is required");
    }
    let (ns_selector, pod_selector) = endpoints(&sel, &meta.namespace);
    if ns_selector != Namespaces::Named(meta.namespace.clone()) {
        sel.error("endpointSelector selects pods of the policy's own namespace only");
    }
    let default_deny = spec.get("enableDefaultDeny");
    default_deny.only(&["ingress", "egress"], "enableDefaultDeny");
    let section = |dir: Direction| -> Option<Vec<Rule>> {
        let field = spec.get(dir.as_str());
        let rules: Vec<Rule> = field
            .items()
            .iter()
            .map(|r| rule(r, dir, &meta.namespace, id.kind))
            .collect();
        // As in Cilium: a direction is isolated when the policy has rules for it, unless
        // enableDefaultDeny turns that off (then the rules only add what they allow).
        let isolates = !rules.is_empty() && default_deny.get(dir.as_str()).bool().unwrap_or(true);
        isolates.then_some(rules)
    };
    let ingress = section(Direction::Ingress);
    let egress = section(Direction::Egress);
    Policy {
        id,
        source: Source {
            file: Default::default(),
            selector: sel.origin(),
        },
        pod_selector,
        ingress,
        egress,
        audit,
    }
}

fn rule(r: &Field<'_>, dir: Direction, ns: &str, kind: PolicyKind) -> Rule {
    let (endpoints_key, cidr_key, cidr_set_key, entities_key) = match dir {
        Direction::Ingress => ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"),
        Direction::Egress => ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities"),
    };
    let mut known = vec![
        endpoints_key,
        cidr_key,
        cidr_set_key,
        entities_key,
        "toPorts",
    ];
    if dir == Direction::Egress {
        known.extend(["toFQDNs", "requireSNI"]);
    }
    let unsupported: &[&str] = match dir {
        Direction::Ingress => &UNSUPPORTED_INGRESS_FIELDS,
        Direction::Egress => &UNSUPPORTED_EGRESS_FIELDS,
    };
    for key in unsupported {
        let f = r.get(key);
        if f.is_set() {
            f.error(format!("{key} is not supported by palisade; remove it or express it with {endpoints_key}, {cidr_key} or {entities_key}"));
        }
    }
    known.extend_from_slice(unsupported);
    r.only(&known, "a rule");

    let mut peers = Vec::new();
    let mut peer_origins = Vec::new();
    let mut named_any_peer = false;
    let mut add = |peer: Peer, at: &Field<'_>| {
        peers.push(peer);
        peer_origins.push(at.origin());
    };
    for e in r.get(endpoints_key).items() {
        named_any_peer = true;
        let (namespaces, pods) = endpoints(&e, ns);
        add(Peer::Pods { namespaces, pods }, &e);
    }
    for (f, s) in r.get(cidr_key).strings() {
        named_any_peer = true;
        if let Some(cidr) = netpol::cidr(&f, s) {
            let block = IpBlock {
                cidr,
                except: Vec::new(),
            };
            add(Peer::IpBlock(block), &f);
        }
    }
    for f in r.get(cidr_set_key).items() {
        named_any_peer = true;
        f.only(
            &["cidr", "except", "cidrGroupRef", "cidrGroupSelector"],
            "a CIDR set entry",
        );
        for key in ["cidrGroupRef", "cidrGroupSelector"] {
            if f.get(key).is_set() {
                f.get(key).error(format!(
                    "{key} is not supported by palisade; write the cidr"
                ));
            }
        }
        if let Some(block) = netpol::ip_block(&f) {
            add(Peer::IpBlock(block), &f);
        }
    }
    for (f, s) in r.get(entities_key).strings() {
        named_any_peer = true;
        match Entity::parse(s) {
            Some(e) => add(Peer::Entity(e), &f),
            None => f.error(format!(
                "{s:?} is not an entity palisade supports: use all, world, cluster or host"
            )),
        }
    }
    if dir == Direction::Egress {
        let fqdns = r.get("toFQDNs");
        let names: Vec<NamePattern> = fqdns.items().iter().filter_map(fqdn).collect();
        if fqdns.is_set() {
            named_any_peer = true;
            add(Peer::Fqdn(names), &fqdns);
        }
    }
    let to_ports = r.get("toPorts");
    let ports: Vec<PortRule> = to_ports.items().iter().flat_map(port_group).collect();
    let sni = r.get("requireSNI");
    let require_sni = match (sni.is_set(), kind) {
        (false, _) => None,
        (true, PolicyKind::PalisadePolicy) => {
            if !r.get("toFQDNs").is_set() {
                sni.error("applies to toFQDNs peers: give the rule toFQDNs, or remove it");
            }
            sni.bool()
        }
        (true, _) => {
            sni.error("requireSNI is palisade's own field: write the policy as a PalisadePolicy");
            None
        }
    };
    Rule {
        // As in Cilium: a rule that names ports but no peer applies to every peer; a rule
        // that names neither allows nothing.
        peers: if named_any_peer {
            Some(peers)
        } else if to_ports.is_set() {
            None
        } else {
            Some(Vec::new())
        },
        ports,
        origin: r.origin(),
        peer_origins,
        require_sni,
    }
}

/// Drops Cilium's label source prefix (`k8s:`, `any:`).
fn strip_source(key: &str) -> &str {
    key.strip_prefix("k8s:")
        .or_else(|| key.strip_prefix("any:"))
        .unwrap_or(key)
}

/// The namespace label a Cilium pod-label key stands for, if it is one.
fn namespace_key(key: &str) -> Option<&str> {
    if key == POD_NAMESPACE_KEY {
        Some(NAMESPACE_NAME_LABEL)
    } else {
        key.strip_prefix(NAMESPACE_LABELS_PREFIX)
    }
}

/// Reads an endpoint selector, splitting out the namespace constraints Cilium writes as pod
/// labels (`io.kubernetes.pod.namespace`, `io.cilium.k8s.namespace.labels.*`).
fn endpoints(f: &Field<'_>, ns: &str) -> (Namespaces, LabelSelector) {
    let all = kube::selector_with(f, &strip_source);
    let mut pods = LabelSelector::default();
    let mut namespaces = LabelSelector::default();
    let check_pod_key = |key: &str| {
        if key.starts_with("io.cilium.") || key.starts_with("reserved:") {
            f.error(format!("label {key:?} is not supported by palisade"));
        }
    };
    for (k, v) in all.match_labels {
        match namespace_key(&k) {
            Some(nk) => namespaces.match_labels.push((nk.to_owned(), v)),
            None => {
                check_pod_key(&k);
                pods.match_labels.push((k, v));
            }
        }
    }
    for r in all.match_expressions {
        match namespace_key(&r.key) {
            Some(nk) => namespaces.match_expressions.push(Requirement {
                key: nk.to_owned(),
                ..r
            }),
            None => {
                check_pod_key(&r.key);
                pods.match_expressions.push(r);
            }
        }
    }
    let namespaces = match namespaces.match_labels.as_slice() {
        _ if namespaces.is_empty() => Namespaces::Named(ns.to_owned()),
        [(k, v)] if k == NAMESPACE_NAME_LABEL && namespaces.match_expressions.is_empty() => {
            Namespaces::Named(v.clone())
        }
        _ => Namespaces::Matching(namespaces),
    };
    (namespaces, pods)
}

fn fqdn(f: &Field<'_>) -> Option<NamePattern> {
    f.only(&["matchName", "matchPattern"], "a toFQDNs entry");
    let (name, pattern) = (f.get("matchName"), f.get("matchPattern"));
    let result = match (name.str(), pattern.str()) {
        (Some(n), None) => NamePattern::name(n).map_err(|e| (name, e)),
        (None, Some(p)) => NamePattern::pattern(p).map_err(|e| (pattern, e)),
        _ => Err((
            f.clone(),
            "needs exactly one of matchName and matchPattern".to_owned(),
        )),
    };
    result.map_err(|(field, e)| field.error(e)).ok()
}

/// Reads one `toPorts` entry: its ports, each carrying the entry's L7 rules.
fn port_group(g: &Field<'_>) -> Vec<PortRule> {
    g.only(
        &[
            "ports",
            "rules",
            "serverNames",
            "originatingTLS",
            "terminatingTLS",
            "listener",
        ],
        "a toPorts entry",
    );
    for key in ["originatingTLS", "terminatingTLS", "listener"] {
        if g.get(key).is_set() {
            g.get(key)
                .error(format!("{key} is not supported by palisade; remove it"));
        }
    }
    let l7 = l7(g);
    let specs: Vec<(PortSpec, Origin)> = match g.get("ports").list() {
        Some(ports) if !ports.is_empty() => ports
            .iter()
            .filter_map(|p| Some((port(p)?, p.origin())))
            .collect(),
        _ => vec![(
            PortSpec {
                protocol: None,
                port: None,
                end_port: None,
            },
            g.origin(),
        )],
    };
    specs
        .into_iter()
        .map(|(spec, origin)| PortRule {
            spec,
            l7: l7.clone(),
            origin,
        })
        .collect()
}

fn port(p: &Field<'_>) -> Option<PortSpec> {
    p.only(&["port", "endPort", "protocol"], "a port");
    let protocol = match p.get("protocol").str() {
        None | Some("ANY") => None,
        Some(s) => match Protocol::parse(s) {
            Some(proto) if s == proto.as_str() => Some(proto),
            _ => {
                p.get("protocol").error(format!(
                    "{s:?} is not a protocol: use TCP, UDP, SCTP or ANY"
                ));
                return None;
            }
        },
    };
    let port_field = p.get("port");
    let port = match port_field.port_ref(true) {
        // Port "0" means every port in Cilium.
        None if port_field.str() == Some("0")
            || matches!(port_field.value(), Some(crate::document::Value::Int(0))) =>
        {
            None
        }
        None if port_field.is_set() => return None,
        other => other,
    };
    let end_field = p.get("endPort");
    let end_port = if end_field.is_set() {
        let end = end_field.port_number()?;
        match &port {
            Some(PortRef::Number(start)) if end >= *start => Some(end),
            Some(PortRef::Number(start)) => {
                end_field.error(format!("endPort {end} is below port {start}"));
                return None;
            }
            _ => {
                end_field.error("endPort needs a numeric port");
                return None;
            }
        }
    } else {
        None
    };
    Some(PortSpec {
        protocol,
        port,
        end_port,
    })
}

fn l7(g: &Field<'_>) -> L7 {
    let rules = g.get("rules");
    rules.only(&["http", "dns", "kafka", "l7proto", "l7"], "toPorts rules");
    for key in ["kafka", "l7proto", "l7"] {
        if rules.get(key).is_set() {
            rules.get(key).error(format!(
                "{key} rules are not supported by palisade; remove them"
            ));
        }
    }
    let http_field = rules.get("http");
    let http = http_field.list().and_then(|items| {
        HttpRules::new(items.iter().map(http_rule).collect())
            .map(Arc::new)
            .map_err(|e| http_field.error(e))
            .ok()
    });
    let dns = rules.get("dns").list().map(|items| {
        items
            .iter()
            .filter_map(fqdn)
            .collect::<Arc<[NamePattern]>>()
    });
    let server_names = g.get("serverNames").list().map(|items| {
        items
            .iter()
            .filter_map(|f| {
                let s = f.str()?;
                match NamePattern::name(s) {
                    Ok(_) => Some(crate::fqdn::normalize(s)),
                    Err(e) => {
                        f.error(e);
                        None
                    }
                }
            })
            .collect::<Arc<[String]>>()
    });
    L7 {
        http,
        dns,
        server_names,
    }
}

fn http_rule(h: &Field<'_>) -> HttpRule {
    h.only(
        &["method", "path", "host", "headers", "headerMatches"],
        "an HTTP rule",
    );
    let regex = |key: &str| {
        let f = h.get(key);
        let s = f.str()?;
        Anchored::new(s)
            .map_err(|e| f.error(format!("{s:?} is not a regular expression: {e}")))
            .ok()
    };
    let path = h.get("path");
    let mut headers: Vec<HeaderMatch> = h
        .get("headers")
        .strings()
        .into_iter()
        .filter_map(|(f, s)| HeaderMatch::parse(s).map_err(|e| f.error(e)).ok())
        .collect();
    for m in h.get("headerMatches").list().unwrap_or_default() {
        m.only(
            &["name", "value", "mismatch", "secret"],
            "a headerMatches entry",
        );
        for key in ["mismatch", "secret"] {
            if m.get(key).is_set() {
                m.get(key).error(format!(
                    "{key} is not supported by palisade (a mismatch always denies); remove it"
                ));
            }
        }
        let Some(name) = m.get("name").str() else {
            m.get("name").error("a headerMatches entry needs a name");
            continue;
        };
        match HeaderMatch::new(name, m.get("value").str()) {
            Ok(hm) => headers.push(hm),
            Err(e) => m.get("name").error(e),
        }
    }
    HttpRule {
        method: regex("method"),
        path: path.str().and_then(|s| {
            PathPattern::new(s)
                .map_err(|e| {
                    path.error(format!(
                        "{s:?} is not a regular expression or path template: {e}"
                    ))
                })
                .ok()
        }),
        host: regex("host"),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_prefixes_are_dropped() {
        assert_eq!(strip_source("k8s:app"), "app");
        assert_eq!(strip_source("any:app"), "app");
        assert_eq!(strip_source("app"), "app");
    }
}
