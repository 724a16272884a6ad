//! palisade-policy: everything palisade decides, and nothing that moves bytes.
//!
//! It reads manifests into a [`cluster::Cluster`], compiles one pod's policy from it
//! ([`compile::Compiler`]) into the form a proxy receives ([`compiled::PodPolicy`]), and
//! judges flows against that ([`verdict::decide`]). `palisade simulate`, `palisade check`
//! and the proxy all judge through the same functions, and so do the reviews built on them:
//! [`lint`] (the usual mistakes), [`reach`] (everything about one pod, for `explain`) and
//! [`diff`] (the flows a change opens and closes).
//!
//! This crate must never do I/O, spawn, sleep or read a clock: it is pure and synchronous,
//! so that every policy question can be tested without a network.

pub mod cluster;
pub mod compile;
pub mod compiled;
pub mod diff;
pub mod document;
pub mod explain;
pub mod flows;
pub mod fqdn;
pub mod generate;
pub mod http;
pub mod lint;
pub mod manifest;
pub mod peer;
pub mod policy;
pub mod ports;
pub mod reach;
pub mod selector;
pub mod simulate;
pub mod verdict;
pub mod wire;
