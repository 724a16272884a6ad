//! HTTP inspection (placeholder while the module is written).
pub mod gate;
