//! The kernel-side programs of strake, compiled from `ebpf/programs/*.c` at
//! build time, and the Rust view of the structures they share with userspace.

use aya::include_bytes_aligned;

/// Bindings generated from `include/shared.h`: map keys and values, counter
/// indices, capacity defaults.
#[allow(non_camel_case_types, non_upper_case_globals, dead_code)]
pub mod shared {
    include!(concat!(env!("OUT_DIR"), "/shared.rs"));

    // SAFETY: plain C structs of integers with no padding-sensitive invariants;
    // any bit pattern is a valid value.
    unsafe impl aya::Pod for endpoint_info {}
    unsafe impl aya::Pod for counter_value {}
}

/// Programs on the host side of each pod's veth: `from_pod` (ingress) and
/// `to_pod` (egress).
pub static POD_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pod.o"));

/// Programs on the node's uplink: `from_wire` (ingress).
pub static UPLINK_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/uplink.o"));

/// Names of the per-CPU counters, indexed like `st_counters`.
pub const COUNTER_NAMES: [(&str, u32); shared::STRAKE_CNT_MAX as usize] = [
    ("fwd_local", shared::STRAKE_CNT_FWD_LOCAL),
    ("fwd_fib", shared::STRAKE_CNT_FWD_FIB),
    ("fwd_neigh", shared::STRAKE_CNT_FWD_NEIGH),
    ("pass_stack", shared::STRAKE_CNT_PASS_STACK),
    ("pass_non_ipv4", shared::STRAKE_CNT_PASS_NON_IPV4),
    ("drop_malformed", shared::STRAKE_CNT_DROP_MALFORMED),
    ("drop_spoofed", shared::STRAKE_CNT_DROP_SPOOFED),
    ("to_pod", shared::STRAKE_CNT_TO_POD),
];
