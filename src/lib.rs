//! The parts of the `palisade` binary that its integration tests use too.

pub mod lab;
pub mod matrix;
