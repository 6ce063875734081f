//! Test support for poolgate.

pub mod mock;
pub mod pg;
