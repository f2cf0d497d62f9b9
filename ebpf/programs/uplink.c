/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tc on the node's uplink (after xdp.c has seen the frame).
 *
 *   from_wire  TCX ingress: packets arriving from the fabric. Direct-return
 *              IPIP for a local backend is unwrapped and DNATed; replies of
 *              load-balanced flows to local clients get their service address
 *              back; everything for a local pod goes straight into it. The
 *              rest is the node's own traffic and goes to the stack untouched.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "ctx_skb.h"
#include "counters.h"
#include "encap.h"
#include "forward.h"
#include "lb.h"
#include "policy.h"
#include "skb.h"

/* IPIP from a load-balancing node for a local backend (direct return). */
static __always_inline int dsr_deliver(struct __sk_buff *skb, struct packet *p)
{
	const struct endpoint_info *ep;
	struct flow_key fk;
	struct ct_entry ct = { .flags = STRAKE_CT_F_DSR };
	struct backend_info be;
	struct l4 l4;
	int port;

	be.addr = p->ip->daddr;
	port = skb_decap_ipip(skb, p->ip);
	if (port < 0 || skb_parse_ipv4(skb, p) != PARSE_OK ||
	    parse_l4(p, (void *)(long)skb->data_end, &l4) != L4_OK)
		return TC_ACT_SHOT;
	be.port = port;
	count(STRAKE_CNT_LB_DECAP, skb->len);
	fk.saddr = p->ip->saddr;
	fk.daddr = p->ip->daddr;
	fk.sport = l4.sport;
	fk.dport = l4.dport;
	fk.proto = l4.proto;
	__builtin_memset(fk.pad, 0, sizeof(fk.pad));
	/* The reply leaves from here straight to the client, as the service. */
	lb_remember_reply(&fk, &be, &ct, fk.saddr, fk.sport);
	if (lb_rewrite(skb, &l4, 1, fk.daddr, be.addr, fk.dport, be.port) || skb_parse_ipv4(skb, p) != PARSE_OK)
		return TC_ACT_SHOT;
	ep = lookup_endpoint(p->ip->daddr);
	if (!ep || policy_ingress(p, (void *)(long)skb->data_end, ep, skb->len) == POLICY_DROP)
		return TC_ACT_SHOT;
	return deliver_local(skb, p, ep);
}

SEC("classifier")
int from_wire(struct __sk_buff *skb)
{
	const struct endpoint_info *dst;
	struct packet p;
	struct l4 l4;

	/* Malformed or non-IPv4 frames on the uplink are the node's business:
	 * the stack accounts for and drops what it cannot use. */
	if (skb_parse_ipv4(skb, &p) != PARSE_OK)
		return TC_ACT_OK;

	dst = lookup_endpoint(p.ip->daddr);
	if (!dst)
		return TC_ACT_OK;
	if (p.ip->protocol == IPPROTO_IPIP && !p.fragment)
		return dsr_deliver(skb, &p);
	if (parse_l4(&p, (void *)(long)skb->data_end, &l4) == L4_OK) {
		int v = lb_reverse(skb, &p, &l4);

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
	if (policy_ingress(&p, (void *)(long)skb->data_end, dst, skb->len) == POLICY_DROP)
		return TC_ACT_SHOT;
	return deliver_local(skb, &p, dst);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
