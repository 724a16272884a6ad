//! `networking.k8s.io/v1` NetworkPolicy, validated as the API server validates it and with
//! its `policyTypes` defaulting.

use ipnet::IpNet;

use super::field::Field;
use super::kube::{self, Meta};
use crate::peer::{IpBlock, Namespaces, Peer};
use crate::policy::{Origin, Policy, PolicyId, PolicyKind, PortRule, Rule, Source, L7};
use crate::ports::{PortRef, PortSpec};

pub(crate) fn network_policy(obj: &Field<'_>, meta: &Meta, audit: bool) -> Policy {
    obj.only(
        &["apiVersion", "kind", "metadata", "spec", "status"],
        "a NetworkPolicy",
    );
    let spec = obj.get("spec");
    spec.only(
        &["podSelector", "policyTypes", "ingress", "egress"],
        "a NetworkPolicy spec",
    );
    let selector_field = spec.get("podSelector");
    let pod_selector = kube::selector(&selector_field);
    let ns = meta.namespace.as_str();

    let ingress_field = spec.get("ingress");
    let egress_field = spec.get("egress");
    let ingress: Vec<Rule> = ingress_field
        .items()
        .iter()
        .map(|r| rule(r, "from", ns))
        .collect();
    let egress: Vec<Rule> = egress_field
        .items()
        .iter()
        .map(|r| rule(r, "to", ns))
        .collect();

    // What the API server does when `policyTypes` is empty: Ingress always, Egress when
    // there is at least one egress rule.
    let types_field = spec.get("policyTypes");
    let (mut affects_ingress, mut affects_egress) = (false, false);
    let types = types_field.strings();
    if types.is_empty() {
        affects_ingress = true;
        affects_egress = !egress.is_empty();
    }
    for (f, t) in types {
        let seen = match t {
            "Ingress" => std::mem::replace(&mut affects_ingress, true),
            "Egress" => std::mem::replace(&mut affects_egress, true),
            other => {
                f.error(format!(
                    "{other:?} is not a policy type: use Ingress or Egress"
                ));
                false
            }
        };
        if seen {
            f.error(format!("{t} is listed twice"));
        }
    }

    Policy {
        id: PolicyId {
            kind: PolicyKind::NetworkPolicy,
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
        },
        source: Source {
            file: Default::default(),
            selector: selector_field.origin(),
        },
        pod_selector,
        ingress: affects_ingress.then_some(ingress),
        egress: affects_egress.then_some(egress),
        audit,
    }
}

fn rule(r: &Field<'_>, peers_key: &str, ns: &str) -> Rule {
    r.only(&[peers_key, "ports"], "a rule");
    let peers_field = r.get(peers_key);
    let (peers, peer_origins): (Vec<Peer>, Vec<Origin>) = peers_field
        .items()
        .iter()
        .filter_map(|p| Some((peer(p, ns)?, p.origin())))
        .unzip();
    let ports = r.get("ports").items().iter().filter_map(port).collect();
    Rule {
        // A missing or empty `from`/`to` matches every peer.
        peers: (!peers_field.items().is_empty()).then_some(peers),
        ports,
        origin: r.origin(),
        peer_origins,
        require_sni: None,
    }
}

fn peer(p: &Field<'_>, ns: &str) -> Option<Peer> {
    p.only(&["podSelector", "namespaceSelector", "ipBlock"], "a peer");
    let pods = p.get("podSelector");
    let namespaces = p.get("namespaceSelector");
    let block = p.get("ipBlock");
    if block.is_set() {
        // Read the block even when the peer is malformed, so that its own errors show too.
        let parsed = ip_block(&block);
        if pods.is_set() || namespaces.is_set() {
            p.error(
                "ipBlock cannot be combined with podSelector or namespaceSelector in one peer; \
                 write them as two peers",
            );
            return None;
        }
        return parsed.map(Peer::IpBlock);
    }
    if !pods.is_set() && !namespaces.is_set() {
        p.error("a peer needs podSelector, namespaceSelector or ipBlock");
        return None;
    }
    Some(Peer::Pods {
        namespaces: if namespaces.is_set() {
            Namespaces::Matching(kube::selector(&namespaces))
        } else {
            Namespaces::Named(ns.to_owned())
        },
        pods: kube::selector(&pods),
    })
}

/// Reads `{cidr, except}`; every `except` must lie strictly inside `cidr`.
pub(crate) fn ip_block(f: &Field<'_>) -> Option<IpBlock> {
    f.only(&["cidr", "except"], "an ipBlock");
    let cidr_field = f.get("cidr");
    let cidr = cidr(&cidr_field, cidr_field.required_str()?)?;
    let mut except = Vec::new();
    for (ef, s) in f.get("except").strings() {
        let Some(e) = self::cidr(&ef, s) else {
            continue;
        };
        if e.addr().is_ipv4() != cidr.addr().is_ipv4()
            || !cidr.contains(&e)
            || e.prefix_len() <= cidr.prefix_len()
        {
            ef.error(format!(
                "{e} is not strictly inside the block's cidr {cidr}"
            ));
            continue;
        }
        except.push(e);
    }
    Some(IpBlock { cidr, except })
}

/// Parses a CIDR (host bits are cleared, as the API server does); a bare address is not a
/// CIDR.
pub(crate) fn cidr(f: &Field<'_>, s: &str) -> Option<IpNet> {
    match s.parse::<IpNet>() {
        Ok(net) => Some(net.trunc()),
        Err(_) => {
            let hint = if s.parse::<std::net::IpAddr>().is_ok() {
                " (add a prefix length, e.g. /32 or /128)"
            } else {
                ""
            };
            f.error(format!("{s:?} is not a CIDR{hint}"));
            None
        }
    }
}

fn port(p: &Field<'_>) -> Option<PortRule> {
    p.only(&["protocol", "port", "endPort"], "a port");
    let protocol = p.get("protocol").protocol();
    let port_field = p.get("port");
    let port = port_field.port_ref(false);
    if port_field.is_set() && port.is_none() {
        return None;
    }
    let end_field = p.get("endPort");
    let end_port = end_field.port_number();
    if end_field.is_set() {
        let end = end_port?;
        match &port {
            Some(PortRef::Number(start)) if end < *start => {
                end_field.error(format!("endPort {end} is below port {start}"));
                return None;
            }
            Some(PortRef::Number(_)) => {}
            Some(PortRef::Name(_)) => {
                end_field.error("endPort needs a numeric port, not a named one");
                return None;
            }
            None => {
                end_field.error("endPort needs port");
                return None;
            }
        }
    }
    Some(PortRule {
        spec: PortSpec {
            protocol: Some(protocol),
            port,
            end_port,
        },
        l7: L7::default(),
        origin: p.origin(),
    })
}
