//! BGP for strake, Calico's way: every node runs BIRD (Debian's `bird2`),
//! and the agent configures it from Kubernetes-shaped resources. Nothing
//! here speaks BGP itself.
//!
//! - [`model`]: the `bgp.strake.dev/v1` resources (`BGPConfiguration`,
//!   `BGPPeer`) and node settings, refused field by field when wrong;
//! - [`sessions`]: which sessions a node holds (mesh, peers by label,
//!   route reflectors);
//! - [`announce`]: which Service addresses a node announces;
//! - [`node`]: a node's BGP desired state from the cluster state;
//! - [`bird`]: BIRD's configuration for a node, rendered from all of that;
//! - [`control`], [`show`]: BIRD's control socket, and what its `show`
//!   commands say about sessions and routes.
//!
//! docs/bgp.md is the design.

pub mod announce;
pub mod bird;
pub mod control;
pub mod model;
pub mod node;
pub mod sessions;
pub mod show;

pub use bird::{Announcement, BirdLog, NodeBird};
pub use control::Control;
pub use model::{BgpConfig, BgpNode, BgpPeer, InvalidResource, PeerTarget};
pub use sessions::{plan, Origin, Session, SessionPlan};
