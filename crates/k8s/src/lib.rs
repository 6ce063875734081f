//! poolgate on Kubernetes: the `poolgate.dev/v1alpha1` CRDs (`UpstreamAccount`, `PlatformKey`),
//! the controller that reconciles them into the store on the control-plane leader, leader
//! election on a `coordination.k8s.io` Lease, and the CRD YAML generator behind `poolgate crdgen`.

pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod error;
pub mod lease;

pub use error::Error;
