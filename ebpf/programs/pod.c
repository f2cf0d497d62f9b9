/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Programs on the host side of a pod's veth.
 *
 *   from_pod  TCX ingress: every packet the pod sends.
 *   to_pod    TCX egress:  packets the host stack delivers into the pod.
 *
 * A packet from a pod is checked for spoofing, then either redirected straight
 * into another local pod or routed toward another node by the FIB, skipping
 * the host stack; anything the fast path cannot decide goes to the stack.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "counters.h"
#include "forward.h"
#include "skb.h"

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

	dst = lookup_endpoint(p.ip->daddr);
	if (dst)
		return deliver_local(skb, &p, dst);
	return fib_forward(skb, &p);
}

SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	count(STRAKE_CNT_TO_POD, skb->len);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
