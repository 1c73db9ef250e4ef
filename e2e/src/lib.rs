//! Harness of the end-to-end tests: each test gets its own namespace on the cluster that
//! `e2e/run-tests` started, with the example Tasks and a SecurePipeline applied, and deletes it at the end.

pub mod chart;
mod cluster;
pub mod kms;
mod namespace;
pub mod real_node;
mod registry;
mod releases;

pub use cluster::*;
pub use namespace::*;
pub use registry::*;
pub use releases::*;
