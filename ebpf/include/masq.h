/* SPDX-License-Identifier: Apache-2.0 */
/*
 * BPF masquerade: a pod's flow to a destination outside the cluster (not in
 * st_masq_skip: the cluster's pod ranges, its nodes, the configured
 * non-masquerade CIDRs; not one of this node's addresses) leaves with the
 * node's address, as an nftables MASQUERADE rule would, which the fast path
 * skips. TCP, UDP and ICMP echo (the identifier as the port, l4.h).
 *
 * It lives in the one connection table (conntrack.h): a service entry keyed
 * by the flow as the pod sent it (STRAKE_CT_F_MASQ, the port it got) and a
 * reply entry keyed by the reply as it comes back to the node's port, which
 * lb_reverse (lb.h) turns back to the pod wherever it meets it (XDP or tc
 * on the uplink). The port is claimed with the reply entry from the
 * masquerade range (nat.h), so the sweep frees it with the flow. Only
 * flows the pod opens: answers to flows from outside (a host that routes to
 * the pod ranges itself, by BGP say) leave as they are.
 */
#ifndef STRAKE_MASQ_H
#define STRAKE_MASQ_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "conntrack.h"
#include "counters.h"
#include "hash.h"
#include "l4.h"
#include "lb.h"
#include "maps.h"
#include "nat.h"
#include "node.h"
#include "service.h"

static __always_inline const struct masq_config *masq_config(void)
{
	__u32 k = 0;
	const struct masq_config *c = bpf_map_lookup_elem(&st_masq_config, &k);

	return c && c->enabled ? c : 0;
}

static __always_inline int masq_skipped(__be32 daddr)
{
	struct ipcache_key k = { .prefixlen = 32, .addr = daddr };

	return bpf_map_lookup_elem(&st_masq_skip, &k) != 0 || is_node_addr(daddr);
}

/* The reply entry of masqueraded flow `fk` (as the pod sent it): the reply
 * comes from the destination to the node's `port`. */
static __always_inline void masq_reply_of(const struct flow_key *fk, __be32 node, __be16 port, struct ct_key *rk,
					  struct ct_entry *re)
{
	struct flow_key r = {
		.saddr = fk->daddr,
		.daddr = node,
		.sport = fk->dport,
		.dport = port,
		.proto = fk->proto,
	};

	ct_key_of(rk, &r, STRAKE_CT_REPLY, 0);
	__builtin_memset(re, 0, sizeof(*re));
	re->vip = fk->daddr;
	re->vport = fk->dport;
	re->client = fk->saddr;
	re->cport = fk->sport;
	re->flags = STRAKE_CT_F_SNAT | STRAKE_CT_F_MASQ;
}

/* The reply entry of a known flow went missing (LRU, a sweep's race): put
 * back, as lb_restore_reply does; a port another flow took is counted lost. */
static __always_inline void masq_restore_reply(const struct flow_key *fk, __be32 node, __be16 port, int restarted)
{
	struct ct_key rk;
	struct ct_entry re, *r;

	masq_reply_of(fk, node, port, &rk, &re);
	r = bpf_map_lookup_elem(&st_ct, &rk);
	if (r) {
		if (restarted)
			r->tcp = 0;
		return;
	}
	if (ct_insert(&rk, &re, BPF_NOEXIST) == 0)
		count(STRAKE_CNT_CT_REPLY_RESTORED, 0);
	else
		count(STRAKE_CNT_CT_INSERT_FAILED, 0);
}

/*
 * A packet from outside the cluster (a source masquerade would not skip)
 * into local pod at `p->ip->daddr`: its flow is remembered, keyed as the
 * pod's replies go, so that they leave as they are. (Linux's MASQUERADE
 * likewise translates only the connections a pod opens.)
 */
static __always_inline void masq_note_inbound(ctx_t *ctx, struct packet *p)
{
	struct flow_key fk;
	struct ct_key k;
	struct ct_entry *e, ct = {};
	struct l4 l4;

	if (!masq_config() || p->fragment || masq_skipped(p->ip->saddr))
		return;
	if (parse_l4(p, ctx_data_end(ctx), &l4) != L4_OK)
		return;
	fk.saddr = p->ip->daddr;
	fk.daddr = p->ip->saddr;
	fk.sport = l4.dport;
	fk.dport = l4.sport;
	fk.proto = l4.proto;
	fk.pad[0] = fk.pad[1] = fk.pad[2] = 0;
	ct_key_of(&k, &fk, STRAKE_CT_SERVICE, 0);
	e = ct_lookup(&k);
	if (e) {
		ct_observe(e, fk.proto, l4.tcp_flags, 1);
		return;
	}
	/* A TCP flow starts with a SYN: anything else without an entry is a
	 * reply (of a masqueraded flow whose service entry is gone) or a
	 * stray, not a flow from outside. */
	if (fk.proto == IPPROTO_TCP && (l4.tcp_flags & (STRAKE_TCP_SYN | STRAKE_TCP_ACK)) != STRAKE_TCP_SYN)
		return;
	ct.flags = STRAKE_CT_F_INBOUND;
	ct_observe(&ct, fk.proto, l4.tcp_flags, 1);
	if (ct_insert(&k, &ct, BPF_NOEXIST))
		count(STRAKE_CNT_CT_INSERT_FAILED, 0);
}

/*
 * A pod's packet leaving the node untranslated (its source still the pod's
 * own) toward `p->ip->daddr`: masqueraded if it leaves the cluster.
 * LB_NONE: left alone; LB_FORWARD: rewritten, re-parse and route it;
 * LB_DROP: no port free for a new flow, or a rewrite failed.
 */
static __always_inline int masq_egress(ctx_t *ctx, struct packet *p)
{
	const struct masq_config *mc = masq_config();
	const struct lb_config *cfg;
	struct flow_key fk;
	struct ct_key k;
	struct ct_entry *e, ct = {};
	struct l4 l4;
	__u32 bytes = ctx_len(ctx);
	__be32 node;
	__be16 port;
	int refreshed, restarted;

	if (!mc || p->fragment)
		return LB_NONE;
	cfg = lb_config();
	if (!cfg || !cfg->node_addr || masq_skipped(p->ip->daddr))
		return LB_NONE;
	/* An echo reply is no flow of the pod's own: left alone. */
	if (parse_l4_or_echo(p, ctx_data_end(ctx), &l4) != L4_OK || (l4.proto == IPPROTO_ICMP && l4.sport == 0))
		return LB_NONE;
	node = cfg->node_addr;
	flow_of(p, &l4, &fk);
	ct_key_of(&k, &fk, STRAKE_CT_SERVICE, 0);
	e = ct_lookup_refresh(&k, &refreshed);
	if (e) {
		/* An answer to a flow from outside (masq_note_inbound). */
		if (!(e->flags & STRAKE_CT_F_MASQ)) {
			ct_observe(e, fk.proto, l4.tcp_flags, 0);
			return LB_NONE;
		}
		restarted = ct_observe(e, fk.proto, l4.tcp_flags, 0);
		port = e->nat_port;
		if (refreshed || restarted)
			masq_restore_reply(&fk, node, port, restarted);
	} else {
		struct ct_key rk;
		struct ct_entry re;
		__u32 h = flow_hash(fk.saddr, fk.daddr, ((__u32)fk.sport << 16) | fk.dport, fk.proto,
				    cfg->hash_seed);

		masq_reply_of(&fk, node, 0, &rk, &re);
		if (nat_claim_port(mc->port_min, mc->port_max, h, &rk, &re, &port)) {
			count(STRAKE_CNT_MASQ_PORTS_FULL, bytes);
			return LB_DROP;
		}
		ct.flags = STRAKE_CT_F_SNAT | STRAKE_CT_F_MASQ;
		ct.nat_port = port;
		ct_observe(&ct, fk.proto, l4.tcp_flags, 0);
		if (ct_insert(&k, &ct, BPF_ANY))
			count(STRAKE_CNT_CT_INSERT_FAILED, 0);
	}
	if (nat_rewrite(ctx, &l4, 0, fk.saddr, node, fk.sport, port))
		return LB_DROP;
	count(STRAKE_CNT_MASQ_TRANSLATED, bytes);
	return LB_FORWARD;
}

#endif
