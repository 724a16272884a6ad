//! Core Kubernetes objects: metadata, label selectors, Namespace, Pod, Service,
//! EndpointSlice.

use std::net::IpAddr;

use super::field::Field;
use crate::cluster::{
    Endpoint, EndpointPort, EndpointSlice, Namespace, Pod, Service, ServicePort,
    NAMESPACE_NAME_LABEL,
};
use crate::ports::{ContainerPort, PortRef};
use crate::selector::{LabelSelector, Labels, Operator, Requirement};

/// The identity and labels every object carries.
pub(crate) struct Meta {
    pub name: String,
    pub namespace: String,
    pub labels: Labels,
    pub annotations: Labels,
}

/// Reads `metadata`, validating label keys and values.
pub(crate) fn meta(obj: &Field<'_>) -> Meta {
    let m = obj.get("metadata");
    let name = m.get("name").required_str().unwrap_or_default().to_owned();
    let namespace = m.get("namespace").str().unwrap_or("default").to_owned();
    let labels_field = m.get("labels");
    let labels = labels_field.string_map();
    for (k, v) in &labels {
        check_label(&labels_field.get(k), k, v);
    }
    Meta {
        name,
        namespace,
        labels,
        annotations: m.get("annotations").string_map(),
    }
}

fn check_label(field: &Field<'_>, key: &str, value: &str) {
    if let Err(e) = check_label_key(key) {
        field.error(e);
    }
    if let Err(e) = check_label_value(value) {
        field.error(e);
    }
}

/// Checks a label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters.
pub(crate) fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Err(format!(
                "label key {key:?}: the prefix must be a DNS subdomain (lower-case letters, digits, '-' and '.')"
            ));
        }
    }
    if name.is_empty() || !is_label_name(name) {
        return Err(format!(
            "label key {key:?}: the name must be at most 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a label value: empty, or like a label name.
pub(crate) fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "label value {value:?} must be at most 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        ))
    }
}

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Reads a `LabelSelector`; missing is the empty selector.
pub(crate) fn selector(f: &Field<'_>) -> LabelSelector {
    selector_with(f, &|k| k)
}

/// Reads a `LabelSelector` whose keys `key` rewrites (dropping Cilium's `k8s:` source
/// prefixes) before they are checked.
pub(crate) fn selector_with(f: &Field<'_>, key: &dyn Fn(&str) -> &str) -> LabelSelector {
    f.only(&["matchLabels", "matchExpressions"], "a label selector");
    let labels_field = f.get("matchLabels");
    let match_labels: Vec<(String, String)> = labels_field
        .string_map()
        .into_iter()
        .map(|(k, v)| (key(&k).to_owned(), v))
        .collect();
    for (k, v) in &match_labels {
        check_label(&labels_field.get(k), k, v);
    }
    let mut match_expressions = Vec::new();
    for e in f.get("matchExpressions").items() {
        e.only(
            &["key", "operator", "values"],
            "a label selector requirement",
        );
        let key = key(e.get("key").required_str().unwrap_or_default());
        if let Err(msg) = check_label_key(key) {
            e.get("key").error(msg);
        }
        let op_field = e.get("operator");
        let Some(op) = op_field.required_str() else {
            continue;
        };
        let Some(operator) = Operator::parse(op) else {
            op_field.error(format!(
                "{op:?} is not an operator: use In, NotIn, Exists or DoesNotExist"
            ));
            continue;
        };
        let values_field = e.get("values");
        let values: Vec<String> = values_field
            .strings()
            .into_iter()
            .map(|(_, s)| s.to_owned())
            .collect();
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                values_field.error(format!("{op} needs at least one value"));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                values_field.error(format!("{op} takes no values"));
            }
            _ => {}
        }
        for (vf, v) in values_field.strings() {
            if let Err(msg) = check_label_value(v) {
                vf.error(msg);
            }
        }
        match_expressions.push(Requirement {
            key: key.to_owned(),
            operator,
            values,
        });
    }
    LabelSelector {
        match_labels,
        match_expressions,
    }
}

pub(crate) fn namespace(obj: &Field<'_>) -> Namespace {
    let meta = meta(obj);
    let mut labels = meta.labels;
    // The API server sets this label on every namespace, whatever the manifest says.
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), meta.name.clone());
    Namespace {
        name: meta.name,
        labels,
        annotations: meta.annotations,
    }
}

fn ip(f: &Field<'_>) -> Option<IpAddr> {
    let s = f.str()?;
    match s.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            f.error(format!("{s:?} is not an IP address"));
            None
        }
    }
}

pub(crate) fn pod(obj: &Field<'_>) -> Pod {
    let meta = meta(obj);
    let spec = obj.get("spec");
    let status = obj.get("status");
    let mut ports = Vec::new();
    for c in spec.get("containers").items() {
        for p in c.get("ports").items() {
            let number = p.get("containerPort");
            if !number.is_set() {
                number.error("is required");
            }
            let Some(port) = number.port_number() else {
                continue;
            };
            let name = p.get("name").str().map(str::to_owned);
            if let Some(n) = &name {
                if !crate::ports::is_valid_port_name(n) {
                    p.get("name").error(format!(
                        "{n:?} is not a port name (at most 15 lower-case letters, digits and '-', \
                         with at least one letter)"
                    ));
                }
            }
            ports.push(ContainerPort {
                name,
                port,
                protocol: p.get("protocol").protocol(),
            });
        }
    }
    Pod {
        namespace: meta.namespace,
        name: meta.name,
        labels: meta.labels,
        annotations: meta.annotations,
        ips: addresses(&status, "podIPs", "podIP"),
        host_ips: addresses(&status, "hostIPs", "hostIP"),
        host_network: spec.get("hostNetwork").bool().unwrap_or(false),
        ports,
    }
}

/// The addresses of a status list field (`podIPs`, `hostIPs`: `[{ip: ...}]`) with its
/// single-address field (`podIP`, `hostIP`) first, the primary one.
fn addresses(status: &Field<'_>, list: &str, single: &str) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = status
        .get(list)
        .items()
        .iter()
        .filter_map(|i| ip(&i.get("ip")))
        .collect();
    if let Some(primary) = ip(&status.get(single)) {
        ips.retain(|a| *a != primary);
        ips.insert(0, primary);
    }
    ips
}

pub(crate) fn service(obj: &Field<'_>) -> Service {
    let meta = meta(obj);
    let spec = obj.get("spec");
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    let ips_field = spec.get("clusterIPs");
    let single = spec.get("clusterIP");
    for f in ips_field.items().iter().chain(std::iter::once(&single)) {
        match f.str() {
            None | Some("None") | Some("") => {}
            Some(_) => {
                if let Some(a) = ip(f) {
                    if !cluster_ips.contains(&a) {
                        cluster_ips.push(a);
                    }
                }
            }
        }
    }
    let selector_field = spec.get("selector");
    let selector = selector_field.is_set().then(|| selector_field.string_map());
    let mut ports = Vec::new();
    for p in spec.get("ports").items() {
        let Some(port) = ({
            let f = p.get("port");
            if !f.is_set() {
                f.error("is required");
            }
            f.port_number()
        }) else {
            continue;
        };
        let target_port = match p.get("targetPort") {
            t if t.is_set() => t.port_ref(false),
            _ => Some(PortRef::Number(port)),
        };
        let Some(target_port) = target_port else {
            continue;
        };
        ports.push(ServicePort {
            name: p.get("name").str().map(str::to_owned),
            port,
            protocol: p.get("protocol").protocol(),
            target_port,
        });
    }
    Service {
        namespace: meta.namespace,
        name: meta.name,
        cluster_ips,
        selector,
        ports,
    }
}

pub(crate) fn endpoint_slice(obj: &Field<'_>) -> EndpointSlice {
    let meta = meta(obj);
    let mut ports = Vec::new();
    for p in obj.get("ports").items() {
        let Some(port) = p.get("port").port_number() else {
            continue;
        };
        ports.push(EndpointPort {
            name: p
                .get("name")
                .str()
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
            port,
            protocol: p.get("protocol").protocol(),
        });
    }
    let endpoints = obj
        .get("endpoints")
        .items()
        .iter()
        .map(|e| Endpoint {
            addresses: e.get("addresses").items().iter().filter_map(ip).collect(),
            ready: e.get("conditions").get("ready").bool().unwrap_or(true),
        })
        .collect();
    EndpointSlice {
        service: meta.labels.get("kubernetes.io/service-name").cloned(),
        namespace: meta.namespace,
        name: meta.name,
        ports,
        endpoints,
    }
}
