/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Map definitions. Every map is pinned by name under the agent's bpffs root
 * (LIBBPF_PIN_BY_NAME), so all program objects of a node share one instance
 * and the data plane outlives the agent. Names are at most 15 characters
 * (BPF_OBJ_NAME_LEN) and carry the st_ prefix.
 */
#ifndef STRAKE_MAPS_H
#define STRAKE_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "shared.h"

/* Local endpoints by pod IPv4 address. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STRAKE_MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STRAKE_CNT_MAX);
	__type(key, __u32);
	__type(value, struct counter_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_counters SEC(".maps");

#endif
