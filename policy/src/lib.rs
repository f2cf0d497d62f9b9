//! Kubernetes NetworkPolicy for strake: the API's semantics ([`model`],
//! [`selector`]), compiled into address classes and verdict entries the
//! programs look up in O(1) ([`compile`]), and explained rule by rule
//! ([`explain`]).

pub mod compile;
pub mod explain;
pub mod model;
pub mod selector;
