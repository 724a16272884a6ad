//! One model for every policy kind: NetworkPolicy, PalisadePolicy and CiliumNetworkPolicy
//! all read into a [`Policy`] made of [`Rule`]s, so that they add up the same way.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::fqdn::NamePattern;
use crate::http::HttpRules;
use crate::peer::Peer;
use crate::ports::PortSpec;
use crate::selector::LabelSelector;

/// The API kind a policy was written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PolicyKind {
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
    /// `palisade.dev/v1alpha1` PalisadePolicy.
    PalisadePolicy,
    /// `cilium.io/v2` CiliumNetworkPolicy.
    CiliumNetworkPolicy,
}

impl PolicyKind {
    /// The kind as manifests spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NetworkPolicy => "NetworkPolicy",
            Self::PalisadePolicy => "PalisadePolicy",
            Self::CiliumNetworkPolicy => "CiliumNetworkPolicy",
        }
    }
}

/// Names a policy: its kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyId {
    /// The kind.
    pub kind: PolicyKind,
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl fmt::Display for PolicyId {
    /// `namespace/name`, the way users name policies.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A traffic direction, seen from the pod a policy selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Connections to the pod.
    Ingress,
    /// Connections from the pod.
    Egress,
}

impl Direction {
    /// `ingress` or `egress`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a part of a policy is written in its manifest, so that what is said about it
/// (`lint`) can point at the exact field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The field's path in its object, e.g. `spec.egress[0].to[1]`.
    pub field: String,
    /// The field's line (1-based; 0 when unknown, as for objects that come from the API).
    pub line: u32,
}

/// Where a policy was read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// The file; empty when the policy did not come from a file.
    pub file: Arc<str>,
    /// The pod selector (`spec.podSelector`, or `endpointSelector` under `spec` or `specs[i]`).
    pub selector: Origin,
}

/// A policy of any kind, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Which policy this is.
    pub id: PolicyId,
    /// Where it was written.
    pub source: Source,
    /// The pods of the policy's namespace it applies to.
    pub pod_selector: LabelSelector,
    /// `Some` when the policy affects ingress (isolating the pods it selects), with the rules
    /// that allow; `Some(vec![])` allows nothing.
    pub ingress: Option<Vec<Rule>>,
    /// The same for egress.
    pub egress: Option<Vec<Rule>>,
    /// Staged with `palisade.dev/mode: audit`: judged and logged, never enforced.
    pub audit: bool,
}

impl Policy {
    /// The rules for a direction, if the policy affects it.
    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// One rule: it allows a connection whose peer matches one of `peers` and whose port matches
/// one of `ports`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// `None` matches every peer; otherwise the peers, any of which may match (possibly
    /// none, for a CiliumNetworkPolicy rule that names no peer and no port).
    pub peers: Option<Vec<Peer>>,
    /// Empty matches every port and protocol.
    pub ports: Vec<PortRule>,
    /// Where the rule is written.
    pub origin: Origin,
    /// Where each of `peers` is written, in the same order.
    pub peer_origins: Vec<Origin>,
    /// `requireSNI` (PalisadePolicy): whether a connection this rule allows through a
    /// `toFQDNs` name must name an allowed name resolved to its address in its TLS server
    /// name (or HTTP `Host`); `None` takes the pod's default.
    pub require_sni: Option<bool>,
}

impl Rule {
    /// The rule's ports in words: `53/UDP, 53/TCP`, or `every port`.
    pub fn ports_in_words(&self) -> String {
        if self.ports.is_empty() {
            return "every port".to_owned();
        }
        let words: Vec<String> = self.ports.iter().map(|p| p.spec.to_string()).collect();
        words.join(", ")
    }

    /// Where peer `index` is written (the rule's own place if it is not known).
    pub fn peer_origin(&self, index: usize) -> &Origin {
        self.peer_origins.get(index).unwrap_or(&self.origin)
    }
}

/// A port a rule allows, and what it asks of the traffic on it.
#[derive(Debug, Clone, PartialEq)]
pub struct PortRule {
    /// The port.
    pub spec: PortSpec,
    /// What the rule asks beyond L4.
    pub l7: L7,
    /// Where the port is written.
    pub origin: Origin,
}

/// What a rule asks of a connection beyond its peer and port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct L7 {
    /// HTTP requests allowed on the port; `None` allows any traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Arc<HttpRules>>,
    /// DNS names that may be queried through the port (`rules.dns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Arc<[NamePattern]>>,
    /// TLS server names the ClientHello must carry (`serverNames`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_names: Option<Arc<[String]>>,
}

impl L7 {
    /// Whether the rule asks nothing beyond L4.
    pub fn is_empty(&self) -> bool {
        self.http.is_none() && self.dns.is_none() && self.server_names.is_none()
    }
}
