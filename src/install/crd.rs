//! The PalisadePolicy CRD: its OpenAPI v3 schema lists every field the policy crate reads
//! (policy/src/manifest/cilium.rs), with types and enums, so `kubectl explain` documents
//! them. Every object also keeps unknown fields: the API server must not prune a field
//! palisade refuses (`toServices`, a misspelt `toPort`...), because pruning it would
//! silently widen the policy; the validating webhook and the controller reject it instead,
//! naming the field.

use palisade_policy::manifest::{UNSUPPORTED_EGRESS_FIELDS, UNSUPPORTED_INGRESS_FIELDS};
use serde_json::{json, Map, Value};

/// The CRD's name.
pub const NAME: &str = "palisadepolicies.palisade.dev";

fn object(description: &str, properties: Vec<(&str, Value)>) -> Value {
    let props: Map<String, Value> = properties
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    json!({
        "type": "object",
        "description": description,
        "properties": props,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

fn array(description: &str, items: Value) -> Value {
    json!({"type": "array", "description": description, "items": items})
}

fn string(description: &str) -> Value {
    json!({"type": "string", "description": description})
}

fn strings(description: &str) -> Value {
    array(description, json!({"type": "string"}))
}

fn string_map(description: &str) -> Value {
    json!({"type": "object", "description": description, "additionalProperties": {"type": "string"}})
}

/// A field palisade reads only to refuse it, kept whole so the refusal can name it.
fn refused(what: &str) -> Value {
    json!({
        "description": format!("{what}: not supported by palisade; a policy that sets it is refused"),
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

fn selector(description: &str) -> Value {
    object(
        description,
        vec![
            ("matchLabels", string_map("Labels the endpoint must carry (k8s: and any: prefixes are dropped; k8s:io.kubernetes.pod.namespace names the namespace).")),
            (
                "matchExpressions",
                array(
                    "Label requirements, all of which must hold.",
                    object(
                        "A label requirement.",
                        vec![
                            ("key", string("The label key.")),
                            ("operator", json!({"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]})),
                            ("values", strings("The values for In and NotIn.")),
                        ],
                    ),
                ),
            ),
        ],
    )
}

fn fqdn(description: &str) -> Value {
    object(
        description,
        vec![
            ("matchName", string("An exact DNS name.")),
            ("matchPattern", string("A pattern: `*` matches within one label, a leading `**.` any number of labels.")),
        ],
    )
}

fn port_rules() -> Value {
    object(
        "Ports, and the L7 rules that apply on them.",
        vec![
            (
                "ports",
                array(
                    "Ports; none means every port.",
                    object(
                        "A port or range.",
                        vec![
                            ("port", json!({"x-kubernetes-int-or-string": true, "description": "A number, a named port, or 0 for every port."})),
                            ("endPort", json!({"type": "integer", "minimum": 1, "maximum": 65535, "description": "The last port of a range starting at port."})),
                            ("protocol", json!({"type": "string", "enum": ["TCP", "UDP", "SCTP", "ANY"]})),
                        ],
                    ),
                ),
            ),
            (
                "rules",
                object(
                    "L7 rules.",
                    vec![
                        (
                            "http",
                            array(
                                "HTTP requests allowed; any of them.",
                                object(
                                    "An HTTP rule: every field set must match (anchored regular expressions).",
                                    vec![
                                        ("method", string("Request method, a regular expression.")),
                                        ("path", string("Request path, a regular expression.")),
                                        ("host", string("Host header, a regular expression.")),
                                        ("headers", strings("Headers that must be present, as `Name` or `Name: value`.")),
                                        ("headerMatches", refused("headerMatches")),
                                    ],
                                ),
                            ),
                        ),
                        ("dns", array("DNS names the pod may look up.", fqdn("A DNS name or pattern."))),
                        ("kafka", refused("kafka rules")),
                        ("l7proto", refused("l7proto")),
                        ("l7", refused("l7 rules")),
                    ],
                ),
            ),
            ("serverNames", strings("TLS server names (SNI) allowed.")),
            ("originatingTLS", refused("originatingTLS")),
            ("terminatingTLS", refused("terminatingTLS")),
            ("listener", refused("listener")),
        ],
    )
}

fn cidr_set(description: &str) -> Value {
    array(
        description,
        object(
            "A CIDR and the ranges cut out of it.",
            vec![
                ("cidr", string("An IPv4 or IPv6 CIDR.")),
                ("except", strings("CIDRs inside cidr that are excluded.")),
                ("cidrGroupRef", refused("cidrGroupRef")),
                ("cidrGroupSelector", refused("cidrGroupSelector")),
            ],
        ),
    )
}

fn entities() -> Value {
    array(
        "Entities: all, world, cluster, host.",
        json!({"type": "string", "enum": ["all", "world", "cluster", "host"]}),
    )
}

fn rule(ingress: bool) -> Value {
    let (endpoints, cidr, cidr_set_key, ents) = if ingress {
        ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities")
    } else {
        ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities")
    };
    let mut props = vec![
        (
            endpoints,
            array("Pods, by labels.", selector("An endpoint selector.")),
        ),
        (cidr, strings("CIDRs.")),
        (cidr_set_key, cidr_set("CIDRs with exceptions.")),
        (ents, entities()),
        (
            "toPorts",
            array("Ports (and L7 rules); none means every port.", port_rules()),
        ),
    ];
    let refused_keys: &[&str] = if ingress {
        &UNSUPPORTED_INGRESS_FIELDS
    } else {
        &UNSUPPORTED_EGRESS_FIELDS
    };
    if !ingress {
        props.push((
            "toFQDNs",
            array(
                "DNS names, learned from the pod's own lookups.",
                fqdn("A DNS name or pattern."),
            ),
        ));
        props.push((
            "requireSNI",
            json!({"type": "boolean", "description": "Connections allowed through toFQDNs names must carry an allowed name resolved to their address in the TLS server name (or HTTP Host); default: the annotation palisade.dev/require-sni on the pod or its namespace."}),
        ));
    }
    props.extend(refused_keys.iter().map(|k| (*k, refused(k))));
    object(
        if ingress {
            "An ingress rule: traffic from any listed peer on any listed port."
        } else {
            "An egress rule: traffic to any listed peer on any listed port."
        },
        props,
    )
}

fn spec() -> Value {
    object(
        "The policy: which pods it selects, and what it lets in and out.",
        vec![
            (
                "endpointSelector",
                selector("The pods of this namespace the policy applies to."),
            ),
            (
                "ingress",
                array("What may reach the selected pods.", rule(true)),
            ),
            (
                "egress",
                array("What the selected pods may reach.", rule(false)),
            ),
            (
                "enableDefaultDeny",
                object(
                    "Whether rules in a direction isolate the pods (default: yes).",
                    vec![
                        ("ingress", json!({"type": "boolean"})),
                        ("egress", json!({"type": "boolean"})),
                    ],
                ),
            ),
            ("description", string("Free text.")),
            (
                "labels",
                json!({"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "description": "Labels of the rule, kept as written."}),
            ),
            ("ingressDeny", refused("ingressDeny")),
            ("egressDeny", refused("egressDeny")),
            ("nodeSelector", refused("nodeSelector")),
        ],
    )
}

/// The CustomResourceDefinition of PalisadePolicy.
pub fn definition() -> Value {
    let schema = json!({
        "type": "object",
        "description": "A PalisadePolicy: a CiliumNetworkPolicy-shaped policy (L3/L4, HTTP and FQDN rules) enforced by palisade's proxies. The annotation palisade.dev/mode: audit stages it: judged and logged, never enforced.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec(),
            "specs": array("Several policies in one object, each like spec.", spec()),
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
    });
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": NAME, "labels": super::labels("policy")},
        "spec": {
            "group": "palisade.dev",
            "scope": "Namespaced",
            "names": {
                "kind": "PalisadePolicy",
                "listKind": "PalisadePolicyList",
                "plural": "palisadepolicies",
                "singular": "palisadepolicy",
                "shortNames": ["ppol"],
            },
            "versions": [{
                "name": "v1alpha1",
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": schema},
                "additionalPrinterColumns": [
                    {"name": "Mode", "type": "string", "jsonPath": ".metadata.annotations.palisade\\.dev/mode"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
            }],
        },
    })
}
