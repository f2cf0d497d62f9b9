/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Programs on the host side of a pod's veth.
 *
 *   from_pod  TCX ingress: every packet the pod sends.
 *   to_pod    TCX egress:  packets the host stack delivers into the pod.
 *
 * A packet from a pod is checked for spoofing; a reply of a load-balanced
 * flow gets its service address back, a packet to a service goes to its
 * backend; then it is redirected straight into a local pod or routed toward
 * another node by the FIB, skipping the host stack. Anything the fast path
 * cannot decide goes to the stack.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "ctx_skb.h"
#include "counters.h"
#include "forward.h"
#include "lb.h"
#include "skb.h"

/* Service translation and reply translation; LB_DROP or a parsed packet. */
static __always_inline int translate(struct __sk_buff *skb, struct packet *p, int services)
{
	struct l4 l4;
	int v;

	switch (parse_l4(p, (void *)(long)skb->data_end, &l4)) {
	case L4_OK:
		break;
	case L4_TRUNCATED:
		count(STRAKE_CNT_DROP_MALFORMED, skb->len);
		return LB_DROP;
	default:
		return LB_NONE; /* ICMP, later fragments: routed as they are */
	}
	v = lb_reverse(skb, p, &l4);
	if (v == LB_NONE && services)
		v = lb_from_pod(skb, p, &l4);
	if (v == LB_DONE && skb_parse_ipv4(skb, p) != PARSE_OK)
		return LB_DROP;
	return v;
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	const struct endpoint_info *src, *dst;
	struct packet p;

	switch (skb_parse_ipv4(skb, &p)) {
	case PARSE_NOT_IPV4:
		count(STRAKE_CNT_PASS_NON_IPV4, skb->len);
		return TC_ACT_OK;
	case PARSE_MALFORMED:
		count(STRAKE_CNT_DROP_MALFORMED, skb->len);
		return TC_ACT_SHOT;
	}

	/* A pod may only send from its own address, and only on its own veth. */
	src = lookup_endpoint(p.ip->saddr);
	if (!src || src->ifindex != skb->ifindex) {
		count(STRAKE_CNT_DROP_SPOOFED, skb->len);
		return TC_ACT_SHOT;
	}

	if (translate(skb, &p, 1) == LB_DROP)
		return TC_ACT_SHOT;

	dst = lookup_endpoint(p.ip->daddr);
	if (dst)
		return deliver_local(skb, &p, dst);
	return fib_forward(skb, &p);
}

SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	struct packet p;

	count(STRAKE_CNT_TO_POD, skb->len);
	/* Replies that took the stack's path still need their service address. */
	if (skb_parse_ipv4(skb, &p) == PARSE_OK && translate(skb, &p, 0) == LB_DROP)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
