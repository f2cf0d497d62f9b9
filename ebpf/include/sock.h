/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Maps of the socket-level load balancer (programs/sock.c). The frontends,
 * backend sets, Maglev tables, affinity and health state are the packet
 * path's own maps (maps.h): one state, two places to apply it.
 */
#ifndef STRAKE_SOCK_H
#define STRAKE_SOCK_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "shared.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, STRAKE_CT_SIZE);
	__type(key, struct sock_rev_key);
	__type(value, struct sock_rev_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_sock_rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, STRAKE_CT_SIZE);
	__type(key, struct sock_fwd_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_sock_fwd SEC(".maps");

/* Network namespaces (by netns cookie) whose sockets keep the VIP on the
 * wire: pods annotated lb.strake.dev/socket-lb: "false". Their Service
 * traffic is translated per packet on the pod's veth, as before. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STRAKE_MAX_ENDPOINTS);
	__type(key, __u64);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_sock_optout SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STRAKE_MAX_FRONTENDS);
	__type(key, __u32);
	__type(value, struct sock_lb_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_fe_sock_stat SEC(".maps");

#endif
