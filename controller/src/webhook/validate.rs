//! Policy validation at admission: a PalisadePolicy or CiliumNetworkPolicy goes through the
//! same reading as a manifest given to `palisade simulate`, so `kubectl apply` of a bad one
//! fails with the message `simulate` would print. NetworkPolicies, which the API server
//! validates itself, are admitted with warnings about the usual mistakes.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::DynamicObject;
use palisade_policy::document::Node;
use palisade_policy::manifest::{read_object, Read};
use serde_json::Value;

/// The cloud metadata address, which a catch-all egress rule also opens.
const METADATA_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// What the validating webhook answers.
pub fn validate(req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let response = AdmissionResponse::from(req);
    if matches!(req.operation, Operation::Delete | Operation::Connect) {
        return response;
    }
    let Some(object) = &req.object else {
        return response;
    };
    let mut json = match serde_json::to_value(object) {
        Ok(v) => v,
        Err(e) => return response.deny(format!("cannot read the object: {e}")),
    };
    // The API server may leave the namespace to the request.
    if let (Some(ns), Some(meta)) = (&req.namespace, json.get_mut("metadata")) {
        if meta.get("namespace").is_none() {
            meta["namespace"] = Value::String(ns.clone());
        }
    }
    match read_object(&Node::from_json(&json)) {
        Read::Invalid { what, errors } => {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| match e.path.as_str() {
                    "" => format!("{what}: {}", e.message),
                    path => format!("{what}: {path}: {}", e.message),
                })
                .collect();
            response.deny(lines.join("\n"))
        }
        _ => {
            let warnings = match json.get("kind").and_then(Value::as_str) {
                Some("NetworkPolicy") => network_policy_advice(&json),
                _ => Vec::new(),
            };
            let mut response = response;
            if !warnings.is_empty() {
                response.warnings = Some(warnings);
            }
            response
        }
    }
}

/// The usual NetworkPolicy mistakes that one object shows on its own.
pub fn network_policy_advice(np: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let spec = &np["spec"];
    for (direction, key) in [("ingress", "from"), ("egress", "to")] {
        let rules = spec[direction]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (i, rule) in rules.iter().enumerate() {
            let peers = rule[key].as_array().map(Vec::as_slice).unwrap_or_default();
            let only = |k: &str| {
                peers
                    .iter()
                    .any(|p| p.get(k).is_some() && p.as_object().is_some_and(|o| o.len() == 1))
            };
            if only("namespaceSelector") && only("podSelector") {
                out.push(format!(
                    "spec.{direction}[{i}].{key}: a namespaceSelector entry and a separate \
                     podSelector entry are two peers (OR), not one (AND); to mean \"these pods \
                     in those namespaces\" put both selectors in one entry"
                ));
            }
            for (j, peer) in peers.iter().enumerate() {
                let labels = peer["namespaceSelector"]["matchLabels"].as_object();
                if labels.is_some_and(|l| l.contains_key("name")) {
                    out.push(format!(
                        "spec.{direction}[{i}].{key}[{j}].namespaceSelector: namespaces have no \
                         \"name\" label unless someone set it; select on \
                         kubernetes.io/metadata.name, which every namespace has"
                    ));
                }
                let block = &peer["ipBlock"];
                let everything = matches!(block["cidr"].as_str(), Some("0.0.0.0/0"));
                let excepted = block["except"].as_array().is_some_and(|e| {
                    e.iter().filter_map(Value::as_str).any(|c| {
                        c.parse::<Ipv4Net>()
                            .is_ok_and(|n| n.contains(&METADATA_ADDRESS))
                    })
                });
                if direction == "egress" && everything && !excepted {
                    out.push(format!(
                        "spec.egress[{i}].to[{j}].ipBlock: 0.0.0.0/0 also opens the cloud \
                         metadata address {METADATA_ADDRESS}; add it to except unless the pods \
                         need it"
                    ));
                }
            }
        }
    }
    out
}
