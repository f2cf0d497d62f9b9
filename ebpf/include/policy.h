/* SPDX-License-Identifier: Apache-2.0 */
/*
 * NetworkPolicy enforcement, stateful.
 *
 * A check judges one packet for one endpoint in one direction, by the flow
 * as that endpoint sees it (a client sees the service address, a backend its
 * real peer):
 *   1. an ICMP error about a flow the endpoint has (RELATED) passes;
 *   2. a reply of a flow the endpoint allowed the other way passes;
 *   3. a packet of a flow already allowed this way passes;
 *   4. anything else is new: allowed if an exemption covers it (trust.h:
 *      decided by who handed the packet over, never by its addresses or
 *      ports alone), if the endpoint is not isolated for this direction, or
 *      if st_policy allows (the endpoint's identity, class of the real
 *      remote address, direction, protocol, real port); remembered if so.
 * Remembered flows (conntrack.h, kind STRAKE_CT_POLICY + direction, owned by
 * the endpoint) carry the policy generation that judged them; after any
 * policy change (the agent bumps the generation) a flow is judged again at
 * its next packet and, if no longer allowed, kept as revoked: dropped both
 * ways until a later change allows it again. The work per
 * packet is a fixed number of hash and LPM lookups, whatever the number of
 * policies.
 */
#ifndef STRAKE_POLICY_H
#define STRAKE_POLICY_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "conntrack.h"
#include "counters.h"
#include "l4.h"
#include "maps.h"
#include "node.h"
#include "parse.h"
#include "trust.h"

struct icmp_head {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 id; /* echo request/reply; unused for errors */
	__be16 sequence;
};

enum policy_verdict_code {
	POLICY_ALLOW = 0,
	POLICY_DROP,
};

/* The policy view of a packet. For ICMP echo the identifier stands in for a
 * port (request: source side; reply: destination side, so a reply is the
 * reverse of its request). For an ICMP error, `related` holds the flow it
 * quotes. Non-first fragments have no ports: they are judged with port 0,
 * which only rules without ports allow. */
struct pol_tuple {
	struct flow_key flow;
	struct flow_key related;
	int is_related;
	__u8 tcp_flags;
};

/* What a new flow is judged on: the real remote side. */
struct pol_judge {
	__be32 remote;
	__be16 port;
	__be16 remote_port; /* ingress: the remote's source port */
	__u8 proto;
};

static __always_inline int policy_tuple(struct packet *p, void *data_end, struct pol_tuple *t)
{
	struct iphdr *ip = p->ip;

	__builtin_memset(t, 0, sizeof(*t));
	t->flow.saddr = ip->saddr;
	t->flow.daddr = ip->daddr;
	t->flow.proto = ip->protocol;
	if (p->later_fragment)
		return 0;
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
		struct l4 l4;

		if (parse_l4(p, data_end, &l4) != L4_OK)
			return -1;
		t->flow.sport = l4.sport;
		t->flow.dport = l4.dport;
		t->tcp_flags = l4.tcp_flags;
		return 0;
	}
	if (ip->protocol == IPPROTO_SCTP) {
		/* The common header starts with the two ports, as TCP's does. */
		__be16 *ports = p->l4;

		if ((void *)(ports + 2) > data_end)
			return -1;
		t->flow.sport = ports[0];
		t->flow.dport = ports[1];
		return 0;
	}
	if (ip->protocol == IPPROTO_ICMP) {
		struct icmp_head *ic = p->l4;

		if ((void *)(ic + 1) > data_end)
			return -1;
		if (ic->type == ICMP_ECHO) {
			t->flow.sport = ic->id;
		} else if (ic->type == ICMP_ECHOREPLY) {
			t->flow.dport = ic->id;
		} else if (ic->type == ICMP_DEST_UNREACH || ic->type == ICMP_TIME_EXCEEDED ||
			   ic->type == ICMP_PARAMETERPROB) {
			struct iphdr *in = (void *)(ic + 1);
			__be16 *ports = (void *)(in + 1);

			/* Not enough quoted to name a flow: plain ICMP. */
			if ((void *)(ports + 2) > data_end || in->ihl != 5)
				return 0;
			t->related.saddr = in->saddr;
			t->related.daddr = in->daddr;
			t->related.proto = in->protocol;
			if (in->protocol == IPPROTO_TCP || in->protocol == IPPROTO_UDP) {
				t->related.sport = ports[0];
				t->related.dport = ports[1];
			}
			t->is_related = 1;
		}
	}
	return 0;
}

static __always_inline void judge_of(const struct flow_key *f, __u8 dir, struct pol_judge *j)
{
	j->remote = dir == STRAKE_DIR_INGRESS ? f->saddr : f->daddr;
	j->port = f->dport;
	j->remote_port = f->sport;
	j->proto = f->proto;
}

static __always_inline __u32 ipcache_class(__be32 addr)
{
	struct ipcache_key k = { .prefixlen = 32, .addr = addr };
	__u32 *c = bpf_map_lookup_elem(&st_ipcache, &k);

	return c ? *c : 0;
}

static __always_inline __u32 policy_generation(void)
{
	__u32 zero = 0;
	struct pol_config *c = bpf_map_lookup_elem(&st_pol_config, &zero);

	return c ? c->generation : 0;
}

/* Whether the rules let `ep` (address `self`) have a new flow judged `j`. */
static __always_inline int policy_rules_allow(const struct endpoint_info *ep, __u8 dir, __be32 self,
					      const struct pol_judge *j, __u32 *rule_id)
{
	__u32 isolated = dir == STRAKE_DIR_INGRESS ? STRAKE_EP_F_INGRESS_ISOLATED : STRAKE_EP_F_EGRESS_ISOLATED;
	struct policy_key k = {
		.prefixlen = STRAKE_POLICY_KEY_BITS,
		.data = {
			.identity = ep->identity,
			.direction = dir,
			.proto = j->proto,
			.port = j->port,
		},
	};
	struct policy_verdict *v;

	*rule_id = 0;
	if (!(ep->flags & isolated))
		return 1;
	k.data.class_id = ipcache_class(j->remote);
	v = bpf_map_lookup_elem(&st_policy, &k);
	if (!v)
		return 0;
	*rule_id = v->rule_id;
	return 1;
}

static __always_inline void policy_count_drop(const struct endpoint_info *ep, __u8 dir, __u32 bytes)
{
	__u32 idx = (ep->endpoint_id % STRAKE_MAX_ENDPOINT_IDS) * STRAKE_POL_DROP_SLOTS + dir;
	struct counter_value *v = bpf_map_lookup_elem(&st_pol_drops, &idx);

	if (v) {
		v->packets++;
		v->bytes += bytes;
	}
	count(dir == STRAKE_DIR_INGRESS ? STRAKE_CNT_POLICY_DROP_INGRESS : STRAKE_CNT_POLICY_DROP_EGRESS, bytes);
}

/* A remembered flow, judged again if policies changed since it was last
 * judged. A revoked flow stays revoked until a later change allows it. */
static __always_inline int policy_revalidate(const struct endpoint_info *ep, const struct ct_key *k,
					     struct ct_entry *e, __be32 self, __u32 gen)
{
	struct pol_judge j = {
		.remote = e->judged_remote,
		.port = e->judged_port,
		.remote_port = k->flow.sport,
		.proto = k->flow.proto,
	};
	__u32 rule;
	int ok;

	/* Exempt flows owe nothing to the rules [Exemptions]. */
	if (e->exempt || e->generation == gen)
		return !e->revoked;
	ok = policy_rules_allow(ep, k->kind - STRAKE_CT_POLICY, self, &j, &rule);
	if (!ok && !e->revoked)
		count(STRAKE_CNT_POLICY_REVOKED, 0);
	e->generation = gen;
	e->rule_id = rule;
	e->revoked = !ok;
	return ok;
}

static __always_inline void flow_reverse(const struct flow_key *f, struct flow_key *r)
{
	r->saddr = f->daddr;
	r->daddr = f->saddr;
	r->sport = f->dport;
	r->dport = f->sport;
	r->proto = f->proto;
	__builtin_memset(r->pad, 0, sizeof(r->pad));
}

/*
 * Judges a packet for endpoint `ep` (address `self`) in direction `dir`.
 * `t` is the flow as the endpoint sees it; `j` what a new flow is judged on
 * (the same, unless a service translated the destination); `origin` who
 * handed it over (enum strake_origin), which alone decides exemptions.
 */
static __always_inline int policy_check(const struct pol_tuple *t, const struct pol_judge *j,
					const struct endpoint_info *ep, __u8 dir, __be32 self, __u32 bytes,
					int origin)
{
	struct ct_key k = { .owner = ep->endpoint_id };
	struct ct_entry *e, ne = {};
	__u32 gen = policy_generation();
	__u32 rule = 0;
	int ok;

	/* 1. An ICMP error about a flow this endpoint has. */
	if (t->is_related) {
		k.flow = t->related;
		k.kind = STRAKE_CT_POLICY + !dir;
		e = ct_lookup(&k);
		if (e && policy_revalidate(ep, &k, e, self, gen))
			return POLICY_ALLOW;
	}
	/* 2. A reply of a flow allowed the other way. */
	flow_reverse(&t->flow, &k.flow);
	k.kind = STRAKE_CT_POLICY + !dir;
	e = ct_lookup(&k);
	if (e) {
		ct_observe(e, t->flow.proto, t->tcp_flags, 1);
	} else {
		/* 3. A flow already allowed this way. */
		k.flow = t->flow;
		k.kind = STRAKE_CT_POLICY + dir;
		e = ct_lookup(&k);
		if (e)
			ct_observe(e, t->flow.proto, t->tcp_flags, 0);
	}
	if (e) {
		ok = policy_revalidate(ep, &k, e, self, gen);
	} else {
		/* 4. New. Exempt flows are remembered as such even where nothing
		 * isolates the endpoint yet, so a later policy does not cut them. */
		ne.exempt = policy_exempt(dir, self, j->remote, origin);
		ok = ne.exempt || policy_rules_allow(ep, dir, self, j, &rule);
		if (ok) {
			ne.generation = gen;
			ne.rule_id = ne.exempt ? 0 : rule;
			ne.judged_remote = j->remote;
			ne.judged_port = j->port;
			ct_observe(&ne, t->flow.proto, t->tcp_flags, 0);
			if (ct_insert(&k, &ne, BPF_ANY))
				count(STRAKE_CNT_CT_INSERT_FAILED, 0);
		}
	}
	if (!ok) {
		policy_count_drop(ep, dir, bytes);
		return POLICY_DROP;
	}
	return POLICY_ALLOW;
}

/* The ingress check for a packet about to enter a local pod, on the packet
 * as the pod will see it. */
static __always_inline int policy_ingress(struct packet *p, void *data_end, const struct endpoint_info *ep,
					  __u32 bytes, int origin)
{
	struct pol_tuple t;
	struct pol_judge j;

	/* Flows are remembered even for endpoints no policy isolates: when one
	 * later does, their established flows are judged in the direction they
	 * were opened, not mistaken for new ones coming the other way. */
	if (policy_tuple(p, data_end, &t) < 0) {
		count(STRAKE_CNT_DROP_MALFORMED, bytes);
		return POLICY_DROP;
	}
	judge_of(&t.flow, STRAKE_DIR_INGRESS, &j);
	return policy_check(&t, &j, ep, STRAKE_DIR_INGRESS, p->ip->daddr, bytes, origin);
}

#endif
