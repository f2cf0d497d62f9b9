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

/* ---- NetworkPolicy ---- */

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, STRAKE_MAX_IPCACHE);
	__type(key, struct ipcache_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, STRAKE_MAX_POLICY);
	__type(key, struct policy_key);
	__type(value, struct policy_verdict);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pol_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_pol_config SEC(".maps");

/* Policy drops per endpoint (index: shared.h, STRAKE_POL_DROP_SLOTS). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STRAKE_MAX_ENDPOINT_IDS * STRAKE_POL_DROP_SLOTS);
	__type(key, __u32);
	__type(value, struct counter_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_pol_drops SEC(".maps");

/* ---- Load balancing ---- */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STRAKE_MAX_FRONTENDS);
	__type(key, struct svc_key);
	__type(value, struct svc_info);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STRAKE_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend_info);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STRAKE_MAX_SLOTS);
	__type(key, struct slot_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_slots SEC(".maps");

/* Maglev lookup tables, one inner array per backend set, sized per set
 * (BPF_F_INNER_MAP) and filled through mmap (BPF_F_MMAPABLE). Userspace
 * swaps a whole table at once by replacing the outer entry. */
struct maglev_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, STRAKE_MAGLEV_DEFAULT_SIZE);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, STRAKE_MAX_BACKEND_SETS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct maglev_table);
} st_maglev SEC(".maps");

/* The connection table st_ct is conntrack.h's. */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, STRAKE_CT_SIZE);
	__type(key, struct affinity_key);
	__type(value, struct affinity_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_affinity SEC(".maps");

/* This node's own addresses (NodePort frontends answer on each). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __be32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_node_addrs SEC(".maps");

/* Every cluster node's InternalIP, this one's included: the agents' backend
 * health checks come from these (see policy_health_check). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STRAKE_MAX_CLUSTER_NODES);
	__type(key, __be32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_cluster_nodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_lb_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STRAKE_MAX_FRONTENDS);
	__type(key, __u32);
	__type(value, struct lb_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_fe_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STRAKE_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct lb_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_be_stats SEC(".maps");

/* Per frontend: new flows refused on the packet path (reject.h). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STRAKE_MAX_FRONTENDS);
	__type(key, __u32);
	__type(value, struct counter_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_fe_reject SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, STRAKE_MAX_LB_SOURCES);
	__type(key, struct lb_source_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_lb_sources SEC(".maps");

/* ---- Masquerade (masq.h) ---- */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct masq_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_masq_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, STRAKE_MAX_MASQ_SKIP);
	__type(key, struct ipcache_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_masq_skip SEC(".maps");

/* ---- Trust (docs/threat-model.md) ---- */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct trust_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_trust SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STRAKE_MAX_BACKENDS);
	__type(key, struct dsr_target_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_dsr_targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, STRAKE_MAX_HC_FLOWS);
	__type(key, struct flow_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_hc_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, STRAKE_MAX_HC_FLOWS);
	__type(key, struct flow_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_hc_probes SEC(".maps");

#endif
