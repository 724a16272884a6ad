//! Whether IPv6 is up in this network namespace, which decides `--ipv6 auto`.

use std::fs;

/// `--ipv6`: whether to install the ip6tables rules and IPv6 routes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ipv6Mode {
    /// When IPv6 is up here.
    #[default]
    Auto,
    /// Always; failing to install them is an error.
    On,
    /// Never.
    Off,
}

impl Ipv6Mode {
    /// Whether the IPv6 rules are to be installed, reading this namespace for `Auto`.
    pub fn enabled(self) -> bool {
        match self {
            Ipv6Mode::On => true,
            Ipv6Mode::Off => false,
            Ipv6Mode::Auto => ipv6_up(),
        }
    }
}

/// Whether IPv6 is up in the calling thread's network namespace: not disabled, and some
/// interface holds an IPv6 address. Loopback's `::1` counts: an address can appear on any
/// interface later (SLAAC), and rules installed for nothing cost nothing.
pub fn ipv6_up() -> bool {
    let disabled = fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6").ok();
    let addresses = fs::read_to_string("/proc/thread-self/net/if_inet6")
        .or_else(|_| fs::read_to_string("/proc/net/if_inet6"))
        .ok();
    is_up(disabled.as_deref(), addresses.as_deref())
}

/// The decision of [`ipv6_up`] from the two files' contents (`None`: missing, as on a
/// kernel without IPv6).
pub fn is_up(disable_ipv6: Option<&str>, if_inet6: Option<&str>) -> bool {
    let enabled = disable_ipv6.is_some_and(|s| s.trim() == "0");
    let has_address = if_inet6.is_some_and(|s| s.lines().any(|l| !l.trim().is_empty()));
    enabled && has_address
}

#[cfg(test)]
mod tests {
    use super::*;

    const LO: &str = "00000000000000000000000000000001 01 80 10 80       lo\n";

    #[test]
    fn up_only_when_enabled_and_addressed() {
        assert!(is_up(Some("0\n"), Some(LO)));
        assert!(!is_up(Some("1\n"), Some(LO)));
        assert!(!is_up(Some("0\n"), Some("")));
        assert!(!is_up(None, None));
    }
}
