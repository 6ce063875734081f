//! Test support for poolgate.

pub mod pg;
