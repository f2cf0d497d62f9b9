/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Service selection: which frontend a destination is, and which backend a
 * flow to it goes to. No packet in sight (no ctx_t), so every hook calls the
 * same code: tc and XDP on the packet path, and a cgroup sock_addr program
 * at connect().
 *
 *   frontend lookup   (addr, port, proto) in st_services; NodePort frontends
 *                     match any of this node's addresses (key addr 0)
 *   flow pinning      the flow's STRAKE_CT_SERVICE entry keeps it on the
 *                     backend it started with, so table changes never move
 *                     established flows
 *   new flows         ClientIP affinity first, then the set's Maglev table
 *                     (or a random slot)
 */
#ifndef STRAKE_SERVICE_H
#define STRAKE_SERVICE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "conntrack.h"
#include "hash.h"
#include "maps.h"
#include "node.h"

static __always_inline const struct lb_config *lb_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&st_lb_config, &zero);
}

static __always_inline struct svc_info *lb_frontend(__be32 daddr, __be16 dport, __u8 proto)
{
	struct svc_key k = { .addr = daddr, .port = dport, .proto = proto };
	struct svc_info *svc = bpf_map_lookup_elem(&st_services, &k);

	if (svc)
		return svc;
	if (!is_node_addr(daddr))
		return 0;
	k.addr = 0; /* NodePort */
	return bpf_map_lookup_elem(&st_services, &k);
}

static __always_inline void lb_account(__u32 frontend_id, __u32 backend_id, __u32 bytes, int new_flow)
{
	struct lb_stats *s = bpf_map_lookup_elem(&st_fe_stats, &frontend_id);

	if (s) {
		s->packets++;
		s->bytes += bytes;
		s->new_flows += new_flow;
	}
	s = bpf_map_lookup_elem(&st_be_stats, &backend_id);
	if (s) {
		s->packets++;
		s->bytes += bytes;
		s->new_flows += new_flow;
	}
}

/* A backend for a new flow of `svc`, from the set of clients outside the
 * cluster (set_id) or inside it (inside_set_id). */
static __always_inline int lb_pick(const struct svc_info *svc, const struct flow_key *fk, int inside,
				   __u32 *backend_id)
{
	const struct lb_config *cfg = lb_config();
	struct affinity_key ak = { .client = fk->saddr, .frontend_id = svc->frontend_id };
	__u32 set_id = inside ? svc->inside_set_id : svc->set_id;
	__u32 count = inside ? svc->inside_count : svc->count;
	__u32 table_size = inside ? svc->inside_table_size : svc->table_size;
	__u64 now = 0;
	__u32 *b;

	if (count == 0)
		return -1;
	if (svc->affinity_timeout) {
		struct affinity_entry *a = bpf_map_lookup_elem(&st_affinity, &ak);

		now = bpf_ktime_get_ns();
		if (a && now - a->last_used_ns < (__u64)svc->affinity_timeout * 1000000000ULL) {
			struct backend_info *be = bpf_map_lookup_elem(&st_backends, &a->backend_id);

			if (be && (be->flags & STRAKE_BE_F_ACTIVE)) {
				a->last_used_ns = now;
				*backend_id = a->backend_id;
				return 0;
			}
		}
	}
	b = 0;
	if (table_size) {
		void *table = bpf_map_lookup_elem(&st_maglev, &set_id);
		__u32 hash = flow_hash(fk->saddr, fk->daddr, ((__u32)fk->sport << 16) | fk->dport,
				       fk->proto, cfg ? cfg->hash_seed : 0);
		__u32 idx = hash % table_size;

		if (table)
			b = bpf_map_lookup_elem(table, &idx);
	}
	/* The random scheduler; or a Maglev set whose table is not in yet, or
	 * was just swapped for one of another size (the agent installs tables
	 * before it updates the service): pick among the set's slots. */
	if (!b && count) {
		struct slot_key sk = { .set_id = set_id, .slot = bpf_get_prandom_u32() % count };

		b = bpf_map_lookup_elem(&st_slots, &sk);
	}
	if (!b)
		return -1;
	*backend_id = *b;
	if (svc->affinity_timeout) {
		struct affinity_entry ne = { .backend_id = *b, .last_used_ns = now };

		bpf_map_update_elem(&st_affinity, &ak, &ne, BPF_ANY);
	}
	return 0;
}

/* What lb_select() decided for a flow. */
struct lb_choice {
	const struct backend_info *be;
	struct ct_entry ct; /* the flow's service entry: as found, or to insert if `created` */
	struct ct_entry *entry; /* the entry in st_ct when found */
	int created;
	int refreshed; /* found, and its first packet this second */
	int restarted; /* found closed, and a new SYN reuses its 5-tuple */
};

/* lb_select() flags. */
#define LB_SEL_PINNED 1 /* a packet's flow: keep it on the backend its entry pins */
#define LB_SEL_INSIDE 2 /* the client is inside the cluster: svc_info's inside set */

/*
 * The backend for flow `fk` to frontend `svc`: the one its service entry
 * pins (LB_SEL_PINNED, while that backend exists), else a new pick, then
 * `created` says the caller should insert c->ct. -1: no backend to take it.
 */
static __always_inline int lb_select(const struct svc_info *svc, const struct flow_key *fk, __u32 flags,
				     struct lb_choice *c)
{
	__u32 bid;

	c->created = 0;
	c->refreshed = 0;
	c->restarted = 0;
	c->entry = 0;
	if (flags & LB_SEL_PINNED) {
		struct ct_key k;
		struct ct_entry *e;

		ct_key_of(&k, fk, STRAKE_CT_SERVICE, 0);
		e = ct_lookup_refresh(&k, &c->refreshed);
		if (e) {
			c->be = bpf_map_lookup_elem(&st_backends, &e->backend_id);
			if (c->be) {
				c->entry = e;
				c->ct = *e;
				return 0;
			}
		}
	}
	if (lb_pick(svc, fk, flags & LB_SEL_INSIDE, &bid))
		return -1;
	c->be = bpf_map_lookup_elem(&st_backends, &bid);
	if (!c->be)
		return -1;
	__builtin_memset(&c->ct, 0, sizeof(c->ct));
	c->ct.backend_id = bid;
	c->ct.frontend_id = svc->frontend_id;
	c->created = 1;
	c->refreshed = 0;
	return 0;
}

/* Records a packet's TCP flags on the flow's service entry (the one found,
 * or the one about to be inserted). */
static __always_inline void lb_observe(struct lb_choice *c, __u8 proto, __u8 tcp_flags)
{
	c->restarted = ct_observe(c->entry ? c->entry : &c->ct, proto, tcp_flags, 0);
}

#endif
