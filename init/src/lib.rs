//! palisade-init: the rules that make every TCP and UDP flow of a pod go through its proxy.
//!
//! `palisade init` runs this in the pod's network namespace before any other container:
//! it builds the iptables/ip6tables rules ([`rules`]) and the routes that divert UDP
//! ([`routes`]), applies them with `iptables-restore --noflush` ([`apply`]), and can
//! verify or remove them. The rules isolate the pod from the first instant: a redirect
//! to a port nobody listens on is refused and a TPROXY with no socket drops, so nothing
//! passes before the proxy is up.
//!
//! This crate must never touch a chain, jump, rule or route that is not its own (all of
//! ours are named `PALISADE_*`, plus one `ip rule` and one route table), never flush a
//! whole table, and never leave IPv6 open when it was asked to close it: failing is
//! always better than a bypass. It holds no async runtime and no policy logic.

pub mod apply;
pub mod command;
pub mod config;
pub mod drift;
pub mod error;
pub mod iptables;
pub mod ipv6;
pub mod restore;
pub mod routes;
pub mod rules;
pub mod saved;

pub use config::{Config, Family, PortRange};
pub use error::Error;
