//! `LabHost`: a lab-only kind for hosts outside the cluster ("the internet" of a lab).
//! Each gets a namespace of its own with its addresses, routed through the node like a
//! pod and with no route beyond the lab, an agent serving its TCP ports, and DNS records
//! in the lab's DNS server:
//!
//! ```yaml
//! apiVersion: lab.palisade.dev/v1
//! kind: LabHost
//! metadata: {name: github}
//! spec:
//!   names: [api.github.com, github.com]   # A/AAAA records for every address
//!   addresses: [203.0.113.10]
//!   ports: [443, 80]                       # TCP ports its agent serves
//!   ttl: 30                                # the records' TTL in seconds (default 30)
//!   cnames: {www.github.com: github.com}   # CNAME records, alias: target
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use palisade_policy::document::{parse_stream, Node, Value};

/// The kind's name in manifests.
pub const KIND: &str = "LabHost";
/// The TTL of a host's records when it gives none.
const DEFAULT_TTL: u32 = 30;

/// A host outside the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabHost {
    /// `metadata.name`.
    pub name: String,
    /// The DNS names that resolve to its addresses.
    pub names: Vec<String>,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// The TCP ports it serves.
    pub ports: Vec<u16>,
    /// The TTL of its records.
    pub ttl: u32,
    /// CNAME records: alias and target.
    pub cnames: Vec<(String, String)>,
}

impl LabHost {
    /// How it answers probes (as a pod answers with `namespace/name`).
    pub fn key(&self) -> String {
        format!("labhost/{}", self.name)
    }
}

fn strings(node: Option<&Node>, what: &str) -> anyhow::Result<Vec<String>> {
    match node.map(|n| &n.value) {
        None => Ok(Vec::new()),
        Some(Value::Seq(items)) => items
            .iter()
            .map(|i| match &i.value {
                Value::Str(s) => Ok(s.clone()),
                Value::Int(n) => Ok(n.to_string()),
                other => bail!(
                    "line {}: {what}: {} is not a string",
                    i.line,
                    other.type_name()
                ),
            })
            .collect(),
        Some(other) => bail!("{what}: a list is expected, not {}", other.type_name()),
    }
}

fn host(node: &Node) -> anyhow::Result<LabHost> {
    let name = node
        .get("metadata")
        .and_then(|m| m.get_str("name"))
        .ok_or_else(|| anyhow!("metadata.name is required"))?
        .to_owned();
    let spec = node
        .get("spec")
        .ok_or_else(|| anyhow!("spec is required"))?;
    let in_spec = |field: &str| format!("LabHost {name}: spec.{field}");
    let names = strings(spec.get("names"), &in_spec("names"))?;
    let addresses = strings(spec.get("addresses"), &in_spec("addresses"))?
        .iter()
        .map(|a| {
            a.parse()
                .map_err(|_| anyhow!("{}: {a:?} is not an address", in_spec("addresses")))
        })
        .collect::<anyhow::Result<Vec<IpAddr>>>()?;
    if addresses.is_empty() {
        bail!("{}: at least one address is required", in_spec("addresses"));
    }
    let ports = strings(spec.get("ports"), &in_spec("ports"))?
        .iter()
        .map(|p| {
            p.parse()
                .map_err(|_| anyhow!("{}: {p:?} is not a port", in_spec("ports")))
        })
        .collect::<anyhow::Result<Vec<u16>>>()?;
    let ttl = match spec.get("ttl").map(|n| &n.value) {
        None => DEFAULT_TTL,
        Some(Value::Int(n)) => {
            u32::try_from(*n).map_err(|_| anyhow!("{}: out of range", in_spec("ttl")))?
        }
        Some(other) => bail!(
            "{}: seconds are expected, not {}",
            in_spec("ttl"),
            other.type_name()
        ),
    };
    let cnames = match spec.get("cnames").map(|n| &n.value) {
        None => Vec::new(),
        Some(Value::Map(m)) => m
            .iter()
            .map(|(alias, target)| match &target.value {
                Value::Str(t) => Ok((alias.clone(), t.clone())),
                _ => bail!("{}: {alias}: a name is expected", in_spec("cnames")),
            })
            .collect::<anyhow::Result<_>>()?,
        Some(other) => bail!(
            "{}: a mapping is expected, not {}",
            in_spec("cnames"),
            other.type_name()
        ),
    };
    Ok(LabHost {
        name,
        names,
        addresses,
        ports,
        ttl,
        cnames,
    })
}

/// Every `LabHost` in these manifest files; an invalid one is an error naming its file.
pub fn read(files: &[PathBuf]) -> anyhow::Result<Vec<LabHost>> {
    let mut hosts = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        hosts.extend(read_str(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?);
    }
    Ok(hosts)
}

/// Every `LabHost` of a manifest text (several documents, `kind: List` read item by item).
pub fn read_str(text: &str) -> anyhow::Result<Vec<LabHost>> {
    let mut hosts = Vec::new();
    for doc in parse_stream(text) {
        let Ok(Some(node)) = doc.root else { continue };
        let mut objects = vec![&node];
        if let Some(Node {
            value: Value::Seq(items),
            ..
        }) = node.get("items")
        {
            objects.extend(items.iter());
        }
        for obj in objects {
            if obj.get_str("kind") == Some(KIND) {
                hosts.push(host(obj).map_err(|e| anyhow!("line {}: {e}", obj.line))?);
            }
        }
    }
    Ok(hosts)
}

/// Every `LabHost` under these paths (files or folders).
pub fn read_paths(paths: &[PathBuf]) -> anyhow::Result<Vec<LabHost>> {
    let mut files = Vec::new();
    for p in paths {
        files.extend(palisade_controller::folder::manifest_files(Path::new(p))?);
    }
    read(&files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lab_host_is_read_with_its_defaults() {
        let hosts = read_str(
            "apiVersion: lab.palisade.dev/v1
kind: LabHost
metadata: {name: gh}
spec:
  names: [api.github.com]
  addresses: [203.0.113.10, '2001:db8::10']
  ports: [443]
  cnames: {www.github.com: api.github.com}
---
kind: Pod
metadata: {name: p}
",
        )
        .unwrap();
        assert_eq!(
            hosts,
            vec![LabHost {
                name: "gh".into(),
                names: vec!["api.github.com".into()],
                addresses: vec![
                    "203.0.113.10".parse().unwrap(),
                    "2001:db8::10".parse().unwrap()
                ],
                ports: vec![443],
                ttl: 30,
                cnames: vec![("www.github.com".into(), "api.github.com".into())],
            }]
        );
        assert_eq!(hosts[0].key(), "labhost/gh");
    }

    #[test]
    fn a_bad_lab_host_is_named() {
        let err = read_str("kind: LabHost\nmetadata: {name: x}\nspec: {addresses: [nope]}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("LabHost x: spec.addresses") && err.contains("nope"),
            "{err}"
        );
    }
}
