//! Protocols and the ports a rule names: numbers, ranges and named ports.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A transport protocol NetworkPolicy can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP, the default.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Every protocol, in the order tables print them.
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// Parses `TCP`, `UDP` or `SCTP` (the API's spelling; lower case is accepted too).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The protocol as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port as a rule names it: a number, or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    /// A port number.
    Number(u16),
    /// A container port's name, resolved against the destination pod.
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(n) => f.write_str(n),
        }
    }
}

/// One entry of a rule's `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// The protocol; `None` matches every protocol (CiliumNetworkPolicy's `ANY`).
    pub protocol: Option<Protocol>,
    /// The port; `None` matches every port of the protocol.
    pub port: Option<PortRef>,
    /// With a numeric `port`, the last port of the range `port..=end_port`.
    pub end_port: Option<u16>,
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.port, self.end_port) {
            (None, _) => f.write_str("any port")?,
            (Some(p), Some(end)) => write!(f, "{p}-{end}")?,
            (Some(p), None) => write!(f, "{p}")?,
        }
        match self.protocol {
            Some(p) => write!(f, "/{p}"),
            None => f.write_str("/any protocol"),
        }
    }
}

/// A port a container declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    /// The port's name, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port number.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

/// Whether `name` is a valid port name (Kubernetes' IANA_SVC_NAME): at most 15 characters
/// of `a-z`, `0-9` and `-`, at least one letter, no `-` at either end nor two in a row.
pub fn is_valid_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_follow_iana_svc_name() {
        for ok in ["http", "serve-80", "a", "dns-tcp", "abcdefghijklmno"] {
            assert!(is_valid_port_name(ok), "{ok}");
        }
        for bad in [
            "",
            "80",
            "-http",
            "http-",
            "ht--tp",
            "HTTP",
            "abcdefghijklmnop",
            "h_p",
        ] {
            assert!(!is_valid_port_name(bad), "{bad}");
        }
    }

    #[test]
    fn protocol_parses_the_api_spelling() {
        assert_eq!(Protocol::parse("TCP"), Some(Protocol::Tcp));
        assert_eq!(Protocol::parse("sctp"), Some(Protocol::Sctp));
        assert_eq!(Protocol::parse("ICMP"), None);
    }
}
