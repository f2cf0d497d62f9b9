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
    unsafe impl aya::Pod for masq_config {}
    unsafe impl aya::Pod for counter_value {}
    unsafe impl aya::Pod for svc_key {}
    unsafe impl aya::Pod for svc_info {}
    unsafe impl aya::Pod for backend_info {}
    unsafe impl aya::Pod for slot_key {}
    unsafe impl aya::Pod for flow_key {}
    unsafe impl aya::Pod for ct_key {}
    unsafe impl aya::Pod for ct_entry {}
    unsafe impl aya::Pod for affinity_key {}
    unsafe impl aya::Pod for affinity_entry {}
    unsafe impl aya::Pod for lb_stats {}
    unsafe impl aya::Pod for lb_config {}
    unsafe impl aya::Pod for ipcache_key {}
    unsafe impl aya::Pod for policy_key {}
    unsafe impl aya::Pod for policy_key_data {}
    unsafe impl aya::Pod for policy_verdict {}
    unsafe impl aya::Pod for pol_config {}
    unsafe impl aya::Pod for trust_config {}
    unsafe impl aya::Pod for dsr_target_key {}
    unsafe impl aya::Pod for sock_rev_key {}
    unsafe impl aya::Pod for sock_rev_entry {}
    unsafe impl aya::Pod for sock_fwd_key {}
    unsafe impl aya::Pod for sock_lb_stats {}
}

/// Programs on the host side of each pod's veth: `from_pod` (ingress) and
/// `to_pod` (egress).
pub static POD_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pod.o"));

/// tc programs on the node's uplink: `from_wire` (ingress), `to_wire` (egress).
pub static UPLINK_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/uplink.o"));

/// XDP program on the node's uplink: `xdp_lb` (north-south load balancing).
pub static XDP_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp.o"));

/// `xdp_pass`, for veth peers that must take XDP_TX frames (lab fabric ports).
pub static XDP_PASS_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_pass.o"));

/// Socket-level load balancing, cgroup sock_addr hooks at the agent's
/// `--cgroup-root`: `sock_connect4`, `sock_sendmsg4`, `sock_recvmsg4`,
/// `sock_getpeername4`.
pub static SOCK_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock.o"));

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
    ("lb_translated", shared::STRAKE_CNT_LB_TRANSLATED),
    ("lb_reversed", shared::STRAKE_CNT_LB_REVERSED),
    ("lb_no_backend", shared::STRAKE_CNT_LB_NO_BACKEND),
    ("lb_fragment", shared::STRAKE_CNT_LB_FRAGMENT),
    ("lb_snat_full", shared::STRAKE_CNT_LB_SNAT_FULL),
    ("lb_encap", shared::STRAKE_CNT_LB_ENCAP),
    ("lb_decap", shared::STRAKE_CNT_LB_DECAP),
    (
        "policy_drop_ingress",
        shared::STRAKE_CNT_POLICY_DROP_INGRESS,
    ),
    ("policy_drop_egress", shared::STRAKE_CNT_POLICY_DROP_EGRESS),
    ("policy_revoked", shared::STRAKE_CNT_POLICY_REVOKED),
    ("drop_spoofed_wire", shared::STRAKE_CNT_DROP_SPOOFED_WIRE),
    ("drop_not_ipv4", shared::STRAKE_CNT_DROP_NOT_IPV4),
    (
        "drop_untrusted_encap",
        shared::STRAKE_CNT_DROP_UNTRUSTED_ENCAP,
    ),
    ("hc_encap", shared::STRAKE_CNT_HC_ENCAP),
    ("hc_decap", shared::STRAKE_CNT_HC_DECAP),
    ("lb_rejected", shared::STRAKE_CNT_LB_REJECTED),
    ("lb_source_denied", shared::STRAKE_CNT_LB_SOURCE_DENIED),
    ("ct_insert_failed", shared::STRAKE_CNT_CT_INSERT_FAILED),
    ("ct_reply_restored", shared::STRAKE_CNT_CT_REPLY_RESTORED),
    ("xdp_neigh_to_tc", shared::STRAKE_CNT_XDP_NEIGH_TO_TC),
    ("masq_translated", shared::STRAKE_CNT_MASQ_TRANSLATED),
    ("masq_reversed", shared::STRAKE_CNT_MASQ_REVERSED),
    ("masq_ports_full", shared::STRAKE_CNT_MASQ_PORTS_FULL),
];
