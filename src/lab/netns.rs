//! Network namespaces that remove themselves: the substrate of `palisade lab` and of the
//! end-to-end tests.
