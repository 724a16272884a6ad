//! `palisade lab`: a mini-cluster in network namespaces, built from manifests.

pub mod netns;
