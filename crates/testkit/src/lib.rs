//! Test support for poolgate.
