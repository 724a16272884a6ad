//! The controller's address, in every form users write it: `https://[fd00::1]:7443`,
//! `https://controller.palisade-system.svc:7443`, `controller:7443`, `[fd00::1]:7443`,
//! `10.0.0.1`. The policy stream is TLS: `https://` or no scheme; `http://` is refused.
//! Parsed once at start, so that a bad address stops the proxy with a clear message rather
//! than failing every reconnection; printed back with brackets around IPv6 literals, the
//! only form a URL allows.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// The port of the controller's policy stream, used when the address names none.
pub const DEFAULT_PORT: u16 = 7443;

/// The controller's host: an address, or a name resolved at each connection (so that a
/// Service's DNS name follows the controller when it moves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
    /// A DNS name, lower case.
    Name(String),
}

/// Where the controller's policy stream is: host and port (the scheme is always `https`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerAddress {
    host: Host,
    port: u16,
}

/// Why a controller address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("controller address {value:?}: {reason}")]
pub struct AddressError {
    value: String,
    reason: String,
}

impl ControllerAddress {
    /// The address of a controller at `ip`, port `port`.
    pub fn new(ip: IpAddr, port: u16) -> Self {
        Self {
            host: Host::Ip(ip),
            port,
        }
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` as a URL's authority and a `Host` header write it (`[fd00::1]:7443`).
    pub fn authority(&self) -> String {
        match &self.host {
            Host::Ip(ip) => SocketAddr::new(*ip, self.port).to_string(),
            Host::Name(name) => format!("{name}:{}", self.port),
        }
    }
}

impl fmt::Display for ControllerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}", self.authority())
    }
}

impl FromStr for ControllerAddress {
    type Err = AddressError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let refuse = |reason: &str| AddressError {
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let text = value.trim();
        let rest = match text.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("http") => {
                return Err(refuse(
                    "the policy stream is TLS: write https:// (the proxy checks the controller's certificate)",
                ))
            }
            Some(_) => return Err(refuse("only https:// is supported")),
            None => text,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(refuse(
                "give the scheme, host and port only (no path: the proxy adds its own)",
            ));
        }
        if rest.contains('@') {
            return Err(refuse("user names and passwords are not supported"));
        }
        if rest.parse::<Ipv6Addr>().is_ok() {
            // Without brackets, a last group of digits may be the port or part of the
            // address: say both readings.
            let suggestion = match rest.rsplit_once(':') {
                Some((ip, port))
                    if ip.parse::<Ipv6Addr>().is_ok() && port.parse::<u16>().is_ok() =>
                {
                    format!("https://[{ip}]:{port} (or https://[{rest}]:{DEFAULT_PORT})")
                }
                _ => format!("https://[{rest}]:{DEFAULT_PORT}"),
            };
            return Err(AddressError {
                value: value.to_owned(),
                reason: format!("write an IPv6 address in brackets, with its port: {suggestion}"),
            });
        }
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (ip, after) = inner
                .split_once(']')
                .ok_or_else(|| refuse("an IPv6 address opened with `[` needs its `]`"))?;
            let ip: Ipv6Addr = ip
                .parse()
                .map_err(|_| refuse("the part in brackets is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| {
                    refuse("after the `]` of an IPv6 address comes `:` and the port")
                })?),
            };
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            };
            if host.contains(':') {
                return Err(refuse(
                    "write an IPv6 address in brackets, like https://[fd00::1]:7443",
                ));
            }
            (
                parse_host(host)
                    .ok_or_else(|| refuse("the host is not an address or a DNS name"))?,
                port,
            )
        };
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(refuse("the port must be a number from 1 to 65535")),
                Ok(p) => p,
            },
        };
        Ok(Self { host, port })
    }
}

/// An IPv4 literal or a DNS name (RFC 1123 labels).
fn parse_host(host: &str) -> Option<Host> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Some(Host::Ip(IpAddr::V4(ip)));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    // A name whose labels are all digits would be a mistyped IPv4 address.
    let numeric = name
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()));
    (name.len() <= 253 && name.split('.').all(label_ok) && !numeric)
        .then(|| Host::Name(name.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> ControllerAddress {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    #[test]
    fn every_form_users_write_is_understood_and_printed_back_as_a_url() {
        for (written, printed) in [
            ("https://[fd00::1]:7443", "https://[fd00::1]:7443"),
            ("https://[fd00:10::1]:7443/", "https://[fd00:10::1]:7443"),
            ("[fd00::1]:8000", "https://[fd00::1]:8000"),
            ("[fd00::1]", "https://[fd00::1]:7443"),
            ("https://10.0.0.1:7443", "https://10.0.0.1:7443"),
            ("10.0.0.1:9000", "https://10.0.0.1:9000"),
            ("10.0.0.1", "https://10.0.0.1:7443"),
            (
                "HTTPS://Controller.Palisade-System.svc:7443",
                "https://controller.palisade-system.svc:7443",
            ),
            ("controller:7443", "https://controller:7443"),
            (
                "controller.palisade-system.svc.",
                "https://controller.palisade-system.svc:7443",
            ),
            (" https://10.0.0.1:7443 ", "https://10.0.0.1:7443"),
        ] {
            assert_eq!(parsed(written).to_string(), printed, "{written}");
            // What is printed parses back to the same address.
            assert_eq!(parsed(printed), parsed(written), "{printed}");
        }
    }

    #[test]
    fn ipv6_addresses_get_brackets_in_the_authority() {
        let a = ControllerAddress::new("fd00:10::1".parse().unwrap(), 7443);
        assert_eq!(a.authority(), "[fd00:10::1]:7443");
        assert_eq!(a.to_string(), "https://[fd00:10::1]:7443");
        let b = ControllerAddress::new("10.0.0.1".parse().unwrap(), 7443);
        assert_eq!(b.authority(), "10.0.0.1:7443");
        assert_eq!(parsed("name:1").host(), &Host::Name("name".into()));
        assert_eq!(parsed("name:1").port(), 1);
    }

    #[test]
    fn ambiguous_and_bad_addresses_are_refused_with_the_fix() {
        for (bad, says) in [
            // The bug of issue 6: is 7443 a port or the last group of the address?
            ("https://fd00:10::1:7443", "https://[fd00:10::1]:7443 (or"),
            ("fd00::1", "in brackets"),
            ("https://fd00::1]:7443", "in brackets"),
            ("http://10.0.0.1:7443", "the policy stream is TLS"),
            ("grpc://10.0.0.1:7443", "only https://"),
            ("https://10.0.0.1:7443/v1", "no path"),
            ("https://user@10.0.0.1:7443", "user names"),
            ("https://[fd00::1:7443", "needs its `]`"),
            ("https://[10.0.0.1]:7443", "not an IPv6 address"),
            ("https://[fd00::1]7443", "comes `:`"),
            ("https://10.0.0.1:0", "1 to 65535"),
            ("https://10.0.0.1:70000", "1 to 65535"),
            ("https://10.0.0.1:", "1 to 65535"),
            ("https://10.0.0.999:7443", "not an address or a DNS name"),
            ("https://under_score:7443", "not an address or a DNS name"),
            ("https://:7443", "not an address or a DNS name"),
            ("", "not an address or a DNS name"),
        ] {
            let err = bad.parse::<ControllerAddress>().unwrap_err().to_string();
            assert!(
                err.contains(says) && err.contains(&format!("{bad:?}")),
                "{bad:?}: {err}"
            );
        }
    }
}
