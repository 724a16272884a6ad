//! Who a rule lets in or out: pods chosen by labels, IP blocks, DNS names, entities.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, Namespace, Pod};
use crate::fqdn::NamePattern;
use crate::selector::LabelSelector;

/// An `ipBlock`: the addresses inside `cidr` and outside every `except` CIDR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpBlock {
    /// The block.
    pub cidr: IpNet,
    /// Holes in the block.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<IpNet>,
}

impl IpBlock {
    /// Whether `ip` is in the block and in none of its holes.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)?;
        for e in &self.except {
            write!(f, " except {e}")?;
        }
        Ok(())
    }
}

/// Which namespaces a pod peer looks in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Namespaces {
    /// One namespace by name: the policy's own, for a `podSelector` alone.
    Named(String),
    /// Every namespace whose labels match.
    Matching(LabelSelector),
}

impl Namespaces {
    /// Whether the peer looks in namespace `ns`.
    pub fn matches(&self, ns: &Namespace) -> bool {
        match self {
            Namespaces::Named(name) => ns.name == *name,
            Namespaces::Matching(sel) => sel.matches(&ns.labels),
        }
    }
}

/// A Cilium entity: a well-known group of peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// Every peer, inside the cluster or not.
    All,
    /// Every address that is neither a pod nor a node of the cluster.
    World,
    /// Every pod and node of the cluster.
    Cluster,
    /// The pod's own node.
    Host,
}

impl Entity {
    /// Parses the entity as CiliumNetworkPolicy spells it.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "all" => Self::All,
            "world" => Self::World,
            "cluster" => Self::Cluster,
            "host" => Self::Host,
            _ => return None,
        })
    }

    /// The entity as CiliumNetworkPolicy spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::World => "world",
            Self::Cluster => "cluster",
            Self::Host => "host",
        }
    }
}

/// One entry of a rule's `from` or `to`.
#[derive(Debug, Clone, PartialEq)]
pub enum Peer {
    /// Pods matching `pods`, in the namespaces `namespaces` picks.
    Pods {
        /// Where to look.
        namespaces: Namespaces,
        /// Which pods there.
        pods: LabelSelector,
    },
    /// Addresses in a block.
    IpBlock(IpBlock),
    /// Addresses the pod resolved from a matching DNS name (egress only).
    Fqdn(Vec<NamePattern>),
    /// A Cilium entity.
    Entity(Entity),
}

impl Peer {
    /// The pods of `cluster` the peer matches now (pods on the node's network are not pods
    /// to a policy). Names and the world match no pod; the host is a node.
    pub fn pods<'c>(&self, cluster: &'c Cluster) -> Vec<&'c Pod> {
        let pods = cluster.pods.iter().filter(|p| !p.host_network);
        match self {
            Peer::Pods {
                namespaces,
                pods: sel,
            } => pods
                .filter(|p| sel.matches(&p.labels))
                .filter(|p| {
                    cluster
                        .namespace(&p.namespace)
                        .is_some_and(|n| namespaces.matches(n))
                })
                .collect(),
            Peer::IpBlock(b) => pods
                .filter(|p| p.ips.iter().any(|ip| b.contains(*ip)))
                .collect(),
            Peer::Entity(Entity::All | Entity::Cluster) => pods.collect(),
            Peer::Entity(Entity::World | Entity::Host) | Peer::Fqdn(_) => Vec::new(),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Pods { namespaces, pods } => {
                let pods = if pods.is_empty() {
                    "every pod".to_string()
                } else {
                    format!("pods {pods}")
                };
                match namespaces {
                    Namespaces::Named(ns) => write!(f, "{pods} in namespace {ns}"),
                    Namespaces::Matching(s) if s.is_empty() => {
                        write!(f, "{pods} in every namespace")
                    }
                    Namespaces::Matching(s) => write!(f, "{pods} in namespaces {s}"),
                }
            }
            Peer::IpBlock(b) => write!(f, "ipBlock {b}"),
            Peer::Fqdn(names) => {
                f.write_str("names ")?;
                for (i, n) in names.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{n}")?;
                }
                Ok(())
            }
            Peer::Entity(e) => write!(f, "entity {}", e.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn except_punches_holes() {
        let b = IpBlock {
            cidr: "10.0.0.0/8".parse().unwrap(),
            except: vec!["10.1.0.0/16".parse().unwrap()],
        };
        assert!(b.contains("10.2.3.4".parse().unwrap()));
        assert!(!b.contains("10.1.3.4".parse().unwrap()));
        assert!(!b.contains("11.0.0.1".parse().unwrap()));
        assert!(!b.contains("::1".parse().unwrap()));
    }
}
