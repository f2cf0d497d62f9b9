/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Service load balancing on the packet path, written once for tc and XDP
 * over the context in ctx_skb.h / ctx_xdp.h (include one of them first).
 * Which backend a flow goes to is service.h's (lb_select, shared with the
 * socket hooks); this is what each hook does with the packet:
 *
 *   lb_from_pod      east-west: a pod sends to a frontend
 *   lb_from_outside  north-south: a client outside sends to an external
 *                    frontend (NodePort, LoadBalancer, externalIP)
 *   lb_from_dsr      direct return: the client's packet, unwrapped at the
 *                    backend's node
 *   lb_reverse       a reply of a translated flow, wherever it passes
 *   lb_no_backend    a new flow no backend can take: refused or dropped
 *
 * A translated flow leaves two entries in the connection table: its service
 * entry (the flow as the client sent it) and its reply entry (the reply as
 * it leaves the backend), which says what to put back.
 */
#ifndef STRAKE_LB_H
#define STRAKE_LB_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "conntrack.h"
#include "counters.h"
#include "encap.h"
#include "l4.h"
#include "nat.h"
#include "reject.h"
#include "service.h"

enum lb_verdict {
	LB_NONE = 0, /* not service traffic: carry on */
	LB_DONE,     /* translated for delivery on this node: re-parse before touching the packet again */
	LB_FORWARD,  /* translated (or wrapped) for another node: re-parse and route it */
	LB_DROP,
	LB_REJECT,   /* the packet became its refusal (reject.h): send it back where it came from */
};

static __always_inline void flow_of(const struct packet *p, const struct l4 *l4, struct flow_key *fk)
{
	fk->saddr = p->ip->saddr;
	fk->daddr = p->ip->daddr;
	fk->sport = l4->sport;
	fk->dport = l4->dport;
	fk->proto = l4->proto;
	fk->pad[0] = fk->pad[1] = fk->pad[2] = 0;
}

/* The reply entry of flow `fk` (as the client sent it) to backend `be`: the
 * reply leaves the backend for `reply_daddr`:`reply_dport`. */
static __always_inline void lb_reply_of(const struct flow_key *fk, const struct backend_info *be,
					const struct ct_entry *ct, __be32 reply_daddr, __be16 reply_dport,
					struct ct_key *rk, struct ct_entry *re)
{
	struct flow_key r = {
		.saddr = be->addr,
		.daddr = reply_daddr,
		.sport = be->port,
		.dport = reply_dport,
		.proto = fk->proto,
	};

	ct_key_of(rk, &r, STRAKE_CT_REPLY, 0);
	__builtin_memset(re, 0, sizeof(*re));
	re->vip = fk->daddr;
	re->vport = fk->dport;
	re->client = fk->saddr;
	re->cport = fk->sport;
	re->frontend_id = ct->frontend_id;
	re->backend_id = ct->backend_id;
	re->flags = ct->flags;
}

/*
 * A flow's reply entry went missing while its service entry stayed (the LRU
 * evicted it, or a sweep raced the flow's return): put it back, so the two
 * never disagree for longer than a second. Checked on the first packet of
 * each second (c->refreshed). A SNAT port another flow took meanwhile is not
 * stolen back: the flow is lost, and counted. A flow started over (a new
 * SYN on its closed 5-tuple) starts its reply entry's TCP flags over too.
 */
static __always_inline void lb_restore_reply(const struct flow_key *fk, const struct lb_choice *c,
					     __be32 reply_daddr, __be16 reply_dport)
{
	struct ct_key rk;
	struct ct_entry re, *r;

	if (!c->refreshed && !c->restarted)
		return;
	lb_reply_of(fk, c->be, &c->ct, reply_daddr, reply_dport, &rk, &re);
	r = bpf_map_lookup_elem(&st_ct, &rk);
	if (r) {
		if (c->restarted)
			r->tcp = 0;
		return;
	}
	if (ct_insert(&rk, &re, BPF_NOEXIST) == 0)
		count(STRAKE_CNT_CT_REPLY_RESTORED, 0);
	else
		count(STRAKE_CNT_CT_INSERT_FAILED, 0);
}

/* Records how replies of a translated flow are turned back. */
static __always_inline void lb_remember_reply(const struct flow_key *fk, const struct backend_info *be,
					      const struct ct_entry *ct, __be32 reply_daddr, __be16 reply_dport)
{
	struct ct_key rk;
	struct ct_entry re;

	lb_reply_of(fk, be, ct, reply_daddr, reply_dport, &rk, &re);
	ct_insert(&rk, &re, BPF_ANY);
}

/* A new flow to `svc` that no backend can take: refused, as kube-proxy
 * does, when the Service has no usable endpoint anywhere; else (a Local
 * scope with endpoints on other nodes only, a backend gone between two
 * map writes) dropped. */
static __always_inline int lb_no_backend(ctx_t *ctx, struct packet *p, const struct l4 *l4,
					 const struct svc_info *svc, __u32 bytes)
{
	__u32 frontend_id = svc->frontend_id;

	if (svc->flags & STRAKE_SVC_F_REJECT) {
		if (reject(ctx, p, l4) == 0) {
			count(STRAKE_CNT_LB_REJECTED, bytes);
			reject_account(frontend_id, bytes);
			return LB_REJECT;
		}
	}
	count(STRAKE_CNT_LB_NO_BACKEND, bytes);
	return LB_DROP;
}

static __always_inline void lb_pin(const struct flow_key *fk, struct ct_entry *ct)
{
	struct ct_key k;

	ct_key_of(&k, fk, STRAKE_CT_SERVICE, 0);
	if (ct_insert(&k, ct, BPF_ANY))
		count(STRAKE_CNT_CT_INSERT_FAILED, 0);
}

/*
 * East-west: a pod sends to a service. DNAT to the flow's backend; the reply
 * passes this node (its client's gateway) or the client's, where
 * lb_reverse() turns it back. A pod reaching itself is also SNATed to
 * STRAKE_HAIRPIN_ADDR so its reply leaves the pod to be turned back.
 */
static __always_inline int lb_from_pod(ctx_t *ctx, struct packet *p, const struct l4 *l4)
{
	struct flow_key fk;
	struct lb_choice c;
	struct svc_info *svc;
	__u32 bytes = ctx_len(ctx);
	__be32 baddr;
	__be16 bport;

	flow_of(p, l4, &fk);
	svc = lb_frontend(fk.daddr, fk.dport, fk.proto);
	if (!svc)
		return LB_NONE;
	if (p->fragment) {
		count(STRAKE_CNT_LB_FRAGMENT, bytes);
		return LB_DROP;
	}
	if (lb_select(svc, &fk, LB_SEL_PINNED | LB_SEL_INSIDE, &c))
		return lb_no_backend(ctx, p, l4, svc, bytes);
	lb_observe(&c, fk.proto, l4->tcp_flags);
	baddr = c.be->addr;
	bport = c.be->port;
	if (baddr == fk.saddr)
		c.ct.flags |= STRAKE_CT_F_HAIRPIN;
	if (c.created) {
		lb_pin(&fk, &c.ct);
		if (c.ct.flags & STRAKE_CT_F_HAIRPIN)
			lb_remember_reply(&fk, c.be, &c.ct, bpf_htonl(STRAKE_HAIRPIN_ADDR_HOST), fk.sport);
		else
			lb_remember_reply(&fk, c.be, &c.ct, fk.saddr, fk.sport);
	} else {
		lb_restore_reply(&fk, &c, (c.ct.flags & STRAKE_CT_F_HAIRPIN) ? bpf_htonl(STRAKE_HAIRPIN_ADDR_HOST)
									   : fk.saddr,
				 fk.sport);
	}
	lb_account(c.ct.frontend_id, c.ct.backend_id, bytes, c.created);
	if (nat_rewrite(ctx, l4, 1, fk.daddr, baddr, fk.dport, bport))
		return LB_DROP;
	if ((c.ct.flags & STRAKE_CT_F_HAIRPIN) &&
	    nat_rewrite(ctx, l4, 0, fk.saddr, bpf_htonl(STRAKE_HAIRPIN_ADDR_HOST), fk.sport, fk.sport))
		return LB_DROP;
	count(STRAKE_CNT_LB_TRANSLATED, bytes);
	return LB_DONE;
}

/* loadBalancerSourceRanges: whether `client` is in one of the frontend's. */
static __always_inline int lb_source_allowed(__u32 frontend_id, __be32 client)
{
	struct lb_source_key k = { .prefixlen = 64, .frontend_id = frontend_id, .addr = client };

	return bpf_map_lookup_elem(&st_lb_sources, &k) != 0;
}

/* SNAT of a new north-south flow to a remote backend: a port on this node's
 * address, unique for the backend, claimed with the flow's reply entry. */
static __always_inline int lb_snat(const struct lb_config *cfg, const struct flow_key *fk, struct lb_choice *c)
{
	__u32 h = flow_hash(fk->saddr, fk->daddr, ((__u32)fk->sport << 16) | fk->dport, fk->proto, cfg->hash_seed);
	struct ct_key rk;
	struct ct_entry re;

	c->ct.flags |= STRAKE_CT_F_SNAT;
	lb_reply_of(fk, c->be, &c->ct, cfg->node_addr, 0, &rk, &re);
	return nat_claim_port(cfg->snat_port_min, cfg->snat_port_max, h, &rk, &re, &c->ct.nat_port);
}

/*
 * North-south, at the uplink: a client outside sends to an external
 * frontend (from within its loadBalancerSourceRanges, if it has any).
 *   local backend   DNAT; LB_DONE: delivered here (the reply passes this
 *                   node and is turned back)
 *   remote, DSR     IPIP to the backend; LB_FORWARD
 *   remote, SNAT    DNAT + SNAT to this node; LB_FORWARD; the reply comes
 *                   back here and is turned back
 */
static __always_inline int lb_from_outside(ctx_t *ctx, struct packet *p, const struct l4 *l4)
{
	const struct lb_config *cfg = lb_config();
	struct flow_key fk;
	struct lb_choice c;
	struct svc_info *svc;
	__u32 bytes = ctx_len(ctx);
	__be32 baddr;
	__be16 bport;

	flow_of(p, l4, &fk);
	svc = lb_frontend(fk.daddr, fk.dport, fk.proto);
	if (!svc || !(svc->flags & STRAKE_SVC_F_EXTERNAL) || !cfg)
		return LB_NONE;
	if ((svc->flags & STRAKE_SVC_F_SOURCE_RANGES) && !lb_source_allowed(svc->frontend_id, fk.saddr)) {
		count(STRAKE_CNT_LB_SOURCE_DENIED, bytes);
		return LB_DROP;
	}
	if (p->fragment) {
		count(STRAKE_CNT_LB_FRAGMENT, bytes);
		return LB_DROP;
	}
	if (lb_select(svc, &fk, LB_SEL_PINNED, &c))
		return lb_no_backend(ctx, p, l4, svc, bytes);
	lb_observe(&c, fk.proto, l4->tcp_flags);
	baddr = c.be->addr;
	bport = c.be->port;

	if (c.be->flags & STRAKE_BE_F_LOCAL) {
		if (c.created) {
			lb_pin(&fk, &c.ct);
			lb_remember_reply(&fk, c.be, &c.ct, fk.saddr, fk.sport);
		} else {
			lb_restore_reply(&fk, &c, fk.saddr, fk.sport);
		}
		lb_account(c.ct.frontend_id, c.ct.backend_id, bytes, c.created);
		if (nat_rewrite(ctx, l4, 1, fk.daddr, baddr, fk.dport, bport))
			return LB_DROP;
		count(STRAKE_CNT_LB_TRANSLATED, bytes);
		return LB_DONE;
	}

	if (svc->flags & STRAKE_SVC_F_DSR) {
		if (c.created) {
			c.ct.flags |= STRAKE_CT_F_DSR;
			lb_pin(&fk, &c.ct);
		}
		lb_account(c.ct.frontend_id, c.ct.backend_id, bytes, c.created);
		if (encap_ipip(ctx, cfg->node_addr, baddr, bport))
			return LB_DROP;
		count(STRAKE_CNT_LB_ENCAP, bytes);
		return LB_FORWARD;
	}

	if (c.created) {
		if (lb_snat(cfg, &fk, &c)) {
			count(STRAKE_CNT_LB_SNAT_FULL, bytes);
			return LB_DROP;
		}
		lb_pin(&fk, &c.ct);
	} else {
		lb_restore_reply(&fk, &c, cfg->node_addr, c.ct.nat_port);
	}
	lb_account(c.ct.frontend_id, c.ct.backend_id, bytes, c.created);
	if (nat_rewrite(ctx, l4, 1, fk.daddr, baddr, fk.dport, bport) ||
	    nat_rewrite(ctx, l4, 0, fk.saddr, cfg->node_addr, fk.sport, c.ct.nat_port))
		return LB_DROP;
	count(STRAKE_CNT_LB_TRANSLATED, bytes);
	return LB_FORWARD;
}

/*
 * Direct return, at the backend's node: the client's packet, unwrapped from
 * the balancing node's IPIP (the caller checked it may be), for local
 * backend `backend`:`bport`. DNAT to it; the reply leaves from here
 * straight to the client, as the service.
 */
static __always_inline int lb_from_dsr(ctx_t *ctx, struct packet *p, const struct l4 *l4, __be32 backend,
				       __be16 bport)
{
	struct ct_entry ct = { .flags = STRAKE_CT_F_DSR };
	struct backend_info be = { .addr = backend, .port = bport };
	struct flow_key fk;

	flow_of(p, l4, &fk);
	lb_remember_reply(&fk, &be, &ct, fk.saddr, fk.sport);
	if (nat_rewrite(ctx, l4, 1, fk.daddr, be.addr, fk.dport, be.port))
		return LB_DROP;
	return LB_DONE;
}

/*
 * A reply of a translated flow, seen anywhere on its way back: the source
 * becomes the service address again (and, for SNAT and hairpin, the
 * destination the original client). A masqueraded flow's reply (masq.h)
 * keeps its source and gets its pod back as the destination.
 */
static __always_inline int lb_reverse(ctx_t *ctx, struct packet *p, const struct l4 *l4)
{
	struct flow_key f;
	struct ct_key rk;
	struct ct_entry *r, re;
	__u32 bytes = ctx_len(ctx);

	flow_of(p, l4, &f);
	ct_key_of(&rk, &f, STRAKE_CT_REPLY, 0);
	r = ct_lookup(&rk);
	if (!r)
		return LB_NONE;
	ct_observe(r, f.proto, l4->tcp_flags, 1);
	re = *r;
	/* The flow's end, seen from the backend's side, goes on its service
	 * entry too: a new SYN from the client then knows the 5-tuple is free
	 * to start over (rare packets: one more lookup is cheap here). */
	if (l4->tcp_flags & (STRAKE_TCP_FIN | STRAKE_TCP_RST)) {
		struct flow_key sf = {
			.saddr = re.client,
			.daddr = re.vip,
			.sport = re.cport,
			.dport = re.vport,
			.proto = f.proto,
		};
		struct ct_key sk;
		struct ct_entry *se;

		ct_key_of(&sk, &sf, STRAKE_CT_SERVICE, 0);
		se = bpf_map_lookup_elem(&st_ct, &sk);
		if (se)
			ct_observe(se, f.proto, l4->tcp_flags, 1);
	}
	if (nat_rewrite(ctx, l4, 0, f.saddr, re.vip, f.sport, re.vport))
		return LB_DROP;
	if ((re.flags & (STRAKE_CT_F_SNAT | STRAKE_CT_F_HAIRPIN)) &&
	    nat_rewrite(ctx, l4, 1, f.daddr, re.client, f.dport, re.cport))
		return LB_DROP;
	if (re.flags & STRAKE_CT_F_MASQ) {
		count(STRAKE_CNT_MASQ_REVERSED, bytes);
		return LB_DONE;
	}
	lb_account(re.frontend_id, re.backend_id, bytes, 0);
	count(STRAKE_CNT_LB_REVERSED, bytes);
	return LB_DONE;
}

#endif
