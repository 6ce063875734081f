//! The poolgate control plane.
