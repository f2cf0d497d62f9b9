//! Kubernetes NetworkPolicy for strake: the API's semantics ([`model`],
//! [`selector`]), compiled into address classes and verdict entries the
//! programs look up in O(1) ([`compile`] from scratch, [`index`] change by
//! change), and explained rule by rule ([`explain`]).

pub mod compile;
pub mod explain;
pub mod index;
pub mod model;
pub mod selector;
