//! The one capability the proxy uses, `CAP_NET_RAW` (transparent and raw sockets), made
//! effective at start.
//!
//! In a cluster the proxy runs as uid 2190, and container runtimes give a non-root process
//! no capability of its own: the image's binary carries `CAP_NET_RAW` as a *permitted* file
//! capability (not effective, so that the controller, which drops every capability, can
//! run the same binary). A permitted capability does nothing until the process raises it
//! into its effective set, which this does, once, before any thread is started: threads
//! inherit their creator's capabilities.

use caps::{CapSet, Capability};

/// What [`raise_net_raw`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetRaw {
    /// Already effective (root, or granted as an ambient capability).
    Effective,
    /// Permitted only, and now raised into the effective set.
    Raised,
    /// Not permitted: the container does not add `NET_RAW`, or `no_new_privs` kept the
    /// file capability from applying.
    Missing,
}

/// Makes `CAP_NET_RAW` effective for this thread and every thread it starts afterwards,
/// if the process is permitted to hold it.
pub fn raise_net_raw() -> Result<NetRaw, caps::errors::CapsError> {
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_NET_RAW)? {
        return Ok(NetRaw::Effective);
    }
    if !caps::has_cap(None, CapSet::Permitted, Capability::CAP_NET_RAW)? {
        return Ok(NetRaw::Missing);
    }
    caps::raise(None, CapSet::Effective, Capability::CAP_NET_RAW)?;
    Ok(NetRaw::Raised)
}
