/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Structures shared between the kernel-side programs and userspace.
 *
 * This is the one place these layouts are written down: the Rust side gets
 * them from bindgen (ebpf/build.rs), never by retyping. Every map key and
 * value, and every counter index, lives here. Changing a layout means bumping
 * STRAKE_MAP_LAYOUT_VERSION so the agent pins the new maps beside the old ones
 * instead of reinterpreting old bytes.
 */
#ifndef STRAKE_SHARED_H
#define STRAKE_SHARED_H

#include <linux/types.h>

#define STRAKE_MAP_LAYOUT_VERSION 1

/* Capacity defaults; the agent may override max_entries at load time. */
#define STRAKE_MAX_ENDPOINTS 16384

/* Value of st_endpoints, keyed by the pod's IPv4 address (network order). */
struct endpoint_info {
	__u32 ifindex;   /* host-side veth, in the node's netns */
	__u32 flags;     /* STRAKE_EP_F_* */
	__u8 pod_mac[6]; /* the pod's eth0: destination MAC on delivery */
	__u8 host_mac[6];/* the host-side veth: source MAC on delivery */
	__u32 endpoint_id;  /* compact per-node id, stable for the endpoint's life */
	__u32 identity;     /* security identity (policy) */
};

/* The endpoint's source address was checked at attach time; spoofed sources
 * from it are dropped. Set for every CNI-attached pod. */
#define STRAKE_EP_F_ANTISPOOF (1U << 0)

/* Per-CPU packet counters, index into st_counters. Userspace sums CPUs. */
enum strake_counter {
	STRAKE_CNT_FWD_LOCAL = 0,   /* redirected into a local pod (redirect_peer) */
	STRAKE_CNT_FWD_FIB,         /* routed by bpf_fib_lookup + bpf_redirect */
	STRAKE_CNT_FWD_NEIGH,       /* routed, neighbour resolved by bpf_redirect_neigh */
	STRAKE_CNT_PASS_STACK,      /* handed to the kernel stack (no fast path) */
	STRAKE_CNT_PASS_NON_IPV4,   /* ARP, IPv6, ...: not ours to judge */
	STRAKE_CNT_DROP_MALFORMED,  /* truncated or invalid IPv4 header */
	STRAKE_CNT_DROP_SPOOFED,    /* pod sent with a source address not its own */
	STRAKE_CNT_TO_POD,          /* entered a pod through the host stack */
	STRAKE_CNT_MAX,
};

struct counter_value {
	__u64 packets;
	__u64 bytes;
};

#endif
