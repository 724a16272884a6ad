//! What can go wrong in `palisade init`, each with what failed and what the tool said.

use std::io;
use std::path::PathBuf;

/// An error of palisade-init.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A port list option holds something that is not a port or a range.
    #[error("{option}: `{value}` is not a port or a port range like 8080 or 8000-8100 ({reason})")]
    BadPort {
        /// The option, like `--skip-inbound-ports`.
        option: &'static str,
        /// The offending item.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A CIDR list option holds something that is not an address or a CIDR.
    #[error("{option}: `{value}` is not an IP address or CIDR like 10.0.0.0/8 or fd00::/8")]
    BadCidr {
        /// The option, like `--skip-outbound-cidrs`.
        option: &'static str,
        /// The offending item.
        value: String,
    },
    /// `--dns-servers` holds something that is not an address.
    #[error("--dns-servers: `{value}` is not an IP address (give addresses, or `none`)")]
    BadDnsServer {
        /// The offending item.
        value: String,
    },
    /// `--node-ips` holds something that is not an address.
    #[error("--node-ips: `{value}` is not an IP address (give the node's addresses, as in status.hostIPs)")]
    BadNodeIp {
        /// The offending item.
        value: String,
    },
    /// A file could not be read.
    #[error("could not read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A program could not be started at all.
    #[error("could not run `{command}`: {source} (is it installed and on PATH?)")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: io::Error,
    },
    /// A program ran and failed.
    #[error("`{command}` failed ({status}):\n{output}")]
    Failed {
        /// The command line.
        command: String,
        /// How it ended, like `exit status: 1`.
        status: String,
        /// What it printed, with context (for iptables-restore, the line it refused).
        output: String,
    },
    /// Neither iptables variant works in this namespace.
    #[error("no working iptables in this network namespace:\n  legacy: {legacy}\n  nft: {nft}")]
    NoBackend {
        /// Why iptables-legacy-save failed.
        legacy: Box<Error>,
        /// Why iptables-nft-save failed.
        nft: Box<Error>,
    },
    /// IPv6 rules were required (IPv6 is up, or `--ipv6 on`) and could not be installed.
    #[error(
        "IPv6 is enabled here (IPv6 is up in this network namespace, or --ipv6 on) but the \
         ip6tables rules could not be installed; refusing to leave an IPv6 bypass: {0}"
    )]
    Ipv6Required(Box<Error>),
}
