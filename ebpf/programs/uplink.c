/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tc on the node's uplink.
 *
 *   from_wire  TCX ingress (after xdp.c has seen the frame): packets from
 *              the fabric. A frame XDP translated but could not route (its
 *              next hop unresolved, ctx_xdp.h) is routed here. Where XDP
 *              does not serve the uplink, north-south Services are
 *              balanced here first, as xdp.c would (north_south). Whatever is for a local pod is checked against
 *              where it came from first (the stack's rp_filter never sees
 *              it: it goes straight into the pod). IPIP for a local pod is
 *              a health check from a cluster node's agent or direct return
 *              from a balancing node, and nothing else; replies of
 *              load-balanced flows to local clients get their service
 *              address back, and replies of masqueraded flows (masq.h)
 *              their pod; then ingress policy and into the pod. The rest
 *              is the node's own traffic and goes to the stack untouched.
 *   to_wire    TCX egress: wraps the agent's health checks of pods on other
 *              nodes (healthcheck.h); everything else leaves untouched.
 *
 * docs/threat-model.md says what each check stands against.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "ctx_skb.h"
#include "counters.h"
#include "encap.h"
#include "forward.h"
#include "healthcheck.h"
#include "lb.h"
#include "masq.h"
#include "policy.h"
#include "skb.h"
#include "trust.h"

static __always_inline int untrusted_encap(struct __sk_buff *skb)
{
	count(STRAKE_CNT_DROP_UNTRUSTED_ENCAP, skb->len);
	return TC_ACT_SHOT;
}

/* Direct return [DSR]: the client's packet, unwrapped, for `backend` (the
 * outer destination) on `bport` (the outer IP ID). It may only name a
 * frontend this node knows with that backend among its local ones, so the
 * reply entry it leaves holds nothing the sender chose but the client's own
 * address and port. */
static __always_inline int dsr_deliver(struct __sk_buff *skb, struct packet *p, const struct l4 *l4,
				       __be32 backend, __be16 bport)
{
	const struct endpoint_info *ep;

	if (wire_source_impossible(p->ip->saddr) ||
	    !dsr_target_known(p->ip->daddr, l4->dport, l4->proto, backend, bport))
		return untrusted_encap(skb);
	count(STRAKE_CNT_LB_DECAP, skb->len);
	if (lb_from_dsr(skb, p, l4, backend, bport) != LB_DONE || skb_parse_ipv4(skb, p) != PARSE_OK)
		return TC_ACT_SHOT;
	ep = lookup_endpoint(p->ip->daddr);
	if (!ep || policy_ingress(p, (void *)(long)skb->data_end, ep, skb->len, ORIGIN_WIRE) == POLICY_DROP)
		return TC_ACT_SHOT;
	return deliver_local(skb, p, ep);
}

/* IPIP for a local pod: only from a cluster node's address (anti-spoofed
 * like any source by then). */
static __always_inline int encap_deliver(struct __sk_buff *skb, struct packet *p)
{
	const struct endpoint_info *ep;
	__be32 outer_src = p->ip->saddr, outer_dst = p->ip->daddr;
	struct l4 l4;
	int port;

	if (!bpf_map_lookup_elem(&st_cluster_nodes, &outer_src))
		return untrusted_encap(skb);
	port = skb_decap_ipip(skb, p->ip);
	if (port < 0 || skb_parse_ipv4(skb, p) != PARSE_OK ||
	    parse_l4(p, (void *)(long)skb->data_end, &l4) != L4_OK) {
		count(STRAKE_CNT_DROP_MALFORMED, skb->len);
		return TC_ACT_SHOT;
	}
	if (p->ip->daddr != outer_dst)
		return dsr_deliver(skb, p, &l4, outer_dst, port);
	/* Addressed to the pod itself inside and out: a health check, or
	 * nothing [Health checks]. */
	if (!hc_admit(p, (void *)(long)skb->data_end, &l4, outer_src))
		return untrusted_encap(skb);
	ep = lookup_endpoint(outer_dst);
	if (!ep)
		return TC_ACT_SHOT;
	count(STRAKE_CNT_HC_DECAP, skb->len);
	return deliver_local(skb, p, ep);
}

/* The tc fallback of xdp.c, where XDP does not serve the uplink: the same
 * north-south steps (lb.h) in the same order. Returns 1 with the packet's
 * verdict in *act when it is done with the packet; 0 to carry on as
 * from_wire (p re-parsed if the packet changed: a flow translated for a
 * local backend is delivered by the rest of from_wire, as XDP passes it up
 * to it). */
static __always_inline int north_south(struct __sk_buff *skb, struct packet *p, int *act)
{
	const struct lb_config *cfg = lb_config();
	struct l4 l4;
	int v;

	if (!cfg || !(cfg->flags & STRAKE_LB_F_TC_NORTH_SOUTH) ||
	    parse_l4(p, (void *)(long)skb->data_end, &l4) != L4_OK)
		return 0;
	if (is_node_addr(p->ip->daddr)) {
		v = lb_reverse(skb, p, &l4);
		if (v == LB_DROP) {
			*act = TC_ACT_SHOT;
			return 1;
		}
		if (v == LB_DONE) {
			*act = skb_parse_ipv4(skb, p) == PARSE_OK ? fib_forward(skb, p) : TC_ACT_SHOT;
			return 1;
		}
		if (hc_probe_reply(p, &l4)) {
			*act = TC_ACT_OK;
			return 1;
		}
	}
	switch (lb_from_outside(skb, p, &l4)) {
	case LB_NONE:
		return 0;
	case LB_DROP:
		*act = TC_ACT_SHOT;
		return 1;
	case LB_REJECT:
		*act = bpf_redirect(skb->ifindex, 0);
		return 1;
	case LB_FORWARD:
		*act = skb_parse_ipv4(skb, p) == PARSE_OK ? fib_forward(skb, p) : TC_ACT_SHOT;
		return 1;
	default: /* LB_DONE */
		if (skb_parse_ipv4(skb, p) == PARSE_OK)
			return 0;
		*act = TC_ACT_SHOT;
		return 1;
	}
}

SEC("classifier")
int from_wire(struct __sk_buff *skb)
{
	const struct endpoint_info *dst;
	struct packet p;
	struct l4 l4;
	int v;

	/* Malformed or non-IPv4 frames on the uplink are the node's business:
	 * the stack accounts for and drops what it cannot use. */
	if (skb_parse_ipv4(skb, &p) != PARSE_OK)
		return TC_ACT_OK;
	if (ctx_xdp_asked_route(skb))
		return fib_forward(skb, &p);
	if (north_south(skb, &p, &v))
		return v;

	dst = lookup_endpoint(p.ip->daddr);
	if (!dst) {
		/* To this node: the reply of a masqueraded flow that XDP left
		 * (ICMP echo; all of them without XDP) goes to its pod. */
		if (!is_node_addr(p.ip->daddr) || parse_l4_or_echo(&p, (void *)(long)skb->data_end, &l4) != L4_OK)
			return TC_ACT_OK;
		v = lb_reverse(skb, &p, &l4);
		if (v == LB_NONE)
			return TC_ACT_OK;
		if (v == LB_DROP || skb_parse_ipv4(skb, &p) != PARSE_OK)
			return TC_ACT_SHOT;
		dst = lookup_endpoint(p.ip->daddr);
		if (!dst)
			return fib_forward(skb, &p);
	}
	/* [Uplink anti-spoof] */
	if (!wire_source_ok(skb, p.ip->saddr, p.ip->daddr)) {
		count(STRAKE_CNT_DROP_SPOOFED_WIRE, skb->len);
		return TC_ACT_SHOT;
	}
	if (p.ip->protocol == IPPROTO_IPIP && !p.fragment)
		return encap_deliver(skb, &p);
	masq_note_inbound(skb, &p);
	if (parse_l4(&p, (void *)(long)skb->data_end, &l4) == L4_OK) {
		v = lb_reverse(skb, &p, &l4);
		if (v == LB_DROP)
			return TC_ACT_SHOT;
		if (v == LB_DONE) {
			if (skb_parse_ipv4(skb, &p) != PARSE_OK)
				return TC_ACT_SHOT;
			dst = lookup_endpoint(p.ip->daddr);
			if (!dst)
				return TC_ACT_OK;
		}
	}
	if (policy_ingress(&p, (void *)(long)skb->data_end, dst, skb->len, ORIGIN_WIRE) == POLICY_DROP)
		return TC_ACT_SHOT;
	return deliver_local(skb, &p, dst);
}

SEC("classifier")
int to_wire(struct __sk_buff *skb)
{
	return hc_wrap(skb) ? TC_ACT_SHOT : TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
