/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Service load balancing, written once for tc and XDP over the context in
 * ctx_skb.h / ctx_xdp.h (include one of them first).
 *
 *   frontend lookup   (addr, port, proto) in st_services; NodePort frontends
 *                     match any of this node's addresses (key addr 0)
 *   flow pinning      st_ct keeps every flow on the backend it started with,
 *                     so table changes never move established flows
 *   new flows         ClientIP affinity first, then the set's Maglev table
 *                     (or a random slot)
 *   rewrites          by offset, checksums through the context's helpers;
 *                     st_rnat remembers how to turn replies back
 */
#ifndef STRAKE_LB_H
#define STRAKE_LB_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "counters.h"
#include "hash.h"
#include "l4.h"
#include "maps.h"
#include "node.h"

#define IP_OFF ETH_HLEN
#define IP_CHECK_OFF (IP_OFF + __builtin_offsetof(struct iphdr, check))
#define IP_SADDR_OFF (IP_OFF + __builtin_offsetof(struct iphdr, saddr))
#define IP_DADDR_OFF (IP_OFF + __builtin_offsetof(struct iphdr, daddr))

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

/* A backend for a new flow of `svc`. */
static __always_inline int lb_pick(const struct svc_info *svc, const struct flow_key *fk, __u32 *backend_id)
{
	const struct lb_config *cfg = lb_config();
	struct affinity_key ak = { .client = fk->saddr, .frontend_id = svc->frontend_id };
	__u64 now = 0;
	__u32 *b;

	if (svc->count == 0)
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
	if (svc->table_size) {
		void *table = bpf_map_lookup_elem(&st_maglev, &svc->set_id);
		__u32 hash = flow_hash(fk->saddr, fk->daddr, ((__u32)fk->sport << 16) | fk->dport,
				       fk->proto, cfg ? cfg->hash_seed : 0);
		__u32 idx = hash % svc->table_size;

		if (table)
			b = bpf_map_lookup_elem(table, &idx);
	}
	/* The random scheduler; or a Maglev set whose table is not in yet, or
	 * was just swapped for one of another size (the agent installs tables
	 * before it updates the service): pick among the set's slots. */
	if (!b && svc->count) {
		struct slot_key sk = { .set_id = svc->set_id, .slot = bpf_get_prandom_u32() % svc->count };

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

/* The backend a flow is pinned to; picks and reports `created` for a new one
 * (or when the pinned backend is gone). */
static __always_inline const struct backend_info *lb_flow(const struct flow_key *fk, const struct svc_info *svc,
							  struct ct_entry *ct, int *created)
{
	struct ct_entry *e = bpf_map_lookup_elem(&st_ct, fk);
	const struct backend_info *be;
	__u32 bid;

	*created = 0;
	if (e) {
		be = bpf_map_lookup_elem(&st_backends, &e->backend_id);
		if (be) {
			*ct = *e;
			return be;
		}
	}
	if (lb_pick(svc, fk, &bid))
		return 0;
	be = bpf_map_lookup_elem(&st_backends, &bid);
	if (!be)
		return 0;
	ct->backend_id = bid;
	ct->frontend_id = svc->frontend_id;
	ct->flags = 0;
	ct->nat_port = 0;
	ct->pad = 0;
	*created = 1;
	return be;
}

/* Rewrites the destination (or source) address and port, fixing the IPv4
 * and transport checksums. */
static __always_inline int lb_rewrite(ctx_t *ctx, const struct l4 *l4, int dst, __be32 old_addr, __be32 new_addr,
				      __be16 old_port, __be16 new_port)
{
	__u32 addr_off = dst ? IP_DADDR_OFF : IP_SADDR_OFF;
	__u32 port_off = l4->off + (dst ? 2 : 0);

	if (old_addr != new_addr) {
		if (ctx_l4_csum_replace(ctx, l4->csum_off, old_addr, new_addr, l4->csum_flags | BPF_F_PSEUDO_HDR | 4))
			return -1;
		if (ctx_l3_csum_replace(ctx, IP_CHECK_OFF, old_addr, new_addr))
			return -1;
		if (ctx_store_u32(ctx, addr_off, new_addr))
			return -1;
	}
	if (old_port != new_port) {
		if (ctx_l4_csum_replace(ctx, l4->csum_off, old_port, new_port, l4->csum_flags | 2))
			return -1;
		if (ctx_store_u16(ctx, port_off, new_port))
			return -1;
	}
	return 0;
}

/* Records how replies of a translated flow are turned back. */
static __always_inline void lb_remember_reply(const struct flow_key *fk, const struct backend_info *be,
					      const struct ct_entry *ct, __be32 reply_daddr, __be16 reply_dport)
{
	struct flow_key rk = {
		.saddr = be->addr,
		.daddr = reply_daddr,
		.sport = be->port,
		.dport = reply_dport,
		.proto = fk->proto,
	};
	struct rnat_entry re = {
		.vip = fk->daddr,
		.vport = fk->dport,
		.client = fk->saddr,
		.cport = fk->sport,
		.frontend_id = ct->frontend_id,
		.backend_id = ct->backend_id,
		.flags = ct->flags,
	};

	bpf_map_update_elem(&st_rnat, &rk, &re, BPF_ANY);
}

enum lb_verdict {
	LB_NONE = 0, /* not service traffic: carry on */
	LB_DONE,     /* translated: re-parse before touching the packet again */
	LB_DROP,
};

/*
 * East-west: a pod sends to a service. DNAT to the flow's backend; the reply
 * passes this node (its client's gateway) or the client's, where
 * lb_reverse() turns it back. A pod reaching itself is also SNATed to
 * STRAKE_HAIRPIN_ADDR so its reply leaves the pod to be turned back.
 */
static __always_inline int lb_from_pod(ctx_t *ctx, struct packet *p, const struct l4 *l4)
{
	struct flow_key fk = {
		.saddr = p->ip->saddr,
		.daddr = p->ip->daddr,
		.sport = l4->sport,
		.dport = l4->dport,
		.proto = l4->proto,
	};
	const struct backend_info *be;
	struct svc_info *svc;
	struct ct_entry ct;
	__u32 bytes = ctx_len(ctx);
	__be32 baddr;
	__be16 bport;
	int created;

	svc = lb_frontend(fk.daddr, fk.dport, fk.proto);
	if (!svc)
		return LB_NONE;
	if (p->fragment) {
		count(STRAKE_CNT_LB_FRAGMENT, bytes);
		return LB_DROP;
	}
	be = lb_flow(&fk, svc, &ct, &created);
	if (!be) {
		count(STRAKE_CNT_LB_NO_BACKEND, bytes);
		return LB_DROP;
	}
	baddr = be->addr;
	bport = be->port;
	if (baddr == fk.saddr)
		ct.flags |= STRAKE_CT_F_HAIRPIN;
	if (created) {
		bpf_map_update_elem(&st_ct, &fk, &ct, BPF_ANY);
		if (ct.flags & STRAKE_CT_F_HAIRPIN)
			lb_remember_reply(&fk, be, &ct, bpf_htonl(STRAKE_HAIRPIN_ADDR_HOST), fk.sport);
		else
			lb_remember_reply(&fk, be, &ct, fk.saddr, fk.sport);
	}
	lb_account(ct.frontend_id, ct.backend_id, bytes, created);
	if (lb_rewrite(ctx, l4, 1, fk.daddr, baddr, fk.dport, bport))
		return LB_DROP;
	if ((ct.flags & STRAKE_CT_F_HAIRPIN) &&
	    lb_rewrite(ctx, l4, 0, fk.saddr, bpf_htonl(STRAKE_HAIRPIN_ADDR_HOST), fk.sport, fk.sport))
		return LB_DROP;
	count(STRAKE_CNT_LB_TRANSLATED, bytes);
	return LB_DONE;
}

/*
 * A reply of a translated flow, seen anywhere on its way back: the source
 * becomes the service address again (and, for SNAT and hairpin, the
 * destination the original client).
 */
static __always_inline int lb_reverse(ctx_t *ctx, struct packet *p, const struct l4 *l4)
{
	struct flow_key rk = {
		.saddr = p->ip->saddr,
		.daddr = p->ip->daddr,
		.sport = l4->sport,
		.dport = l4->dport,
		.proto = l4->proto,
	};
	struct rnat_entry *r = bpf_map_lookup_elem(&st_rnat, &rk);
	struct rnat_entry re;
	__u32 bytes = ctx_len(ctx);

	if (!r)
		return LB_NONE;
	re = *r;
	if (lb_rewrite(ctx, l4, 0, rk.saddr, re.vip, rk.sport, re.vport))
		return LB_DROP;
	if ((re.flags & (STRAKE_CT_F_SNAT | STRAKE_CT_F_HAIRPIN)) &&
	    lb_rewrite(ctx, l4, 1, rk.daddr, re.client, rk.dport, re.cport))
		return LB_DROP;
	lb_account(re.frontend_id, re.backend_id, bytes, 0);
	count(STRAKE_CNT_LB_REVERSED, bytes);
	return LB_DONE;
}

#endif
