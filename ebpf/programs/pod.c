/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Programs on the host side of a pod's veth.
 *
 *   from_pod  TCX ingress: every packet the pod sends.
 *   to_pod    TCX egress:  packets the host stack delivers into the pod.
 *
 * A pod speaks IPv4 and ARP in its own name, nothing else (strake has no
 * IPv6 yet: router advertisements and the like never reach the node).
 * A packet from a pod is checked for spoofing; a reply of a load-balanced
 * flow gets its service address back, a packet to a service goes to its
 * backend; then it is redirected straight into a local pod or routed toward
 * another node by the FIB, skipping the host stack, with the node's address
 * if it leaves the cluster (masq.h). Anything the fast path
 * cannot decide goes to the stack.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "ctx_skb.h"
#include "counters.h"
#include "forward.h"
#include "healthcheck.h"
#include "lb.h"
#include "masq.h"
#include "policy.h"
#include "skb.h"
#include "trust.h"

/* A local pod's packet on its way into a local pod: ingress policy, then
 * straight into its namespace. */
static __always_inline int deliver(struct __sk_buff *skb, struct packet *p, const struct endpoint_info *ep)
{
	if (policy_ingress(p, (void *)(long)skb->data_end, ep, skb->len, ORIGIN_POD) == POLICY_DROP)
		return TC_ACT_SHOT;
	return deliver_local(skb, p, ep);
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	const struct endpoint_info *src, *dst;
	void *data_end;
	struct pol_tuple seen, judged;
	struct pol_judge j;
	struct packet p;
	struct l4 l4;
	int v = LB_NONE;

	switch (skb_parse_ipv4(skb, &p)) {
	case PARSE_NOT_IPV4:
		if (pod_arp_ok(skb)) {
			count(STRAKE_CNT_PASS_NON_IPV4, skb->len);
			return TC_ACT_OK;
		}
		/* IPv6 (router advertisements: CVE-2020-10749), VLAN tags, ...
		 * [Pods] */
		count(STRAKE_CNT_DROP_NOT_IPV4, skb->len);
		return TC_ACT_SHOT;
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

	/* The flow as the pod sees it (before any translation). */
	data_end = (void *)(long)skb->data_end;
	if (policy_tuple(&p, data_end, &seen) < 0) {
		count(STRAKE_CNT_DROP_MALFORMED, skb->len);
		return TC_ACT_SHOT;
	}
	judge_of(&seen.flow, STRAKE_DIR_EGRESS, &j);

	/* Services: a reply of a balanced flow gets the service address back; a
	 * packet to a service goes to its backend, and egress policy judges the
	 * backend, not the service address. */
	if (parse_l4(&p, data_end, &l4) == L4_OK) {
		v = lb_reverse(skb, &p, &l4);
		if (v == LB_NONE) {
			v = lb_from_pod(skb, &p, &l4);
			/* A Service without endpoints: the refusal goes back into
			 * the pod that asked. */
			if (v == LB_REJECT)
				return bpf_redirect_peer(skb->ifindex, 0);
			if (v == LB_DONE) {
				if (skb_parse_ipv4(skb, &p) != PARSE_OK ||
				    policy_tuple(&p, (void *)(long)skb->data_end, &judged) < 0)
					return TC_ACT_SHOT;
				judge_of(&judged.flow, STRAKE_DIR_EGRESS, &j);
			}
		} else if (v == LB_DONE && skb_parse_ipv4(skb, &p) != PARSE_OK) {
			return TC_ACT_SHOT;
		}
		if (v == LB_DROP)
			return TC_ACT_SHOT;
	}

	/* The answer to a health check another node's agent sent this pod
	 * through health-check IPIP [Health checks]. */
	if (!hc_answer(&seen.flow) &&
	    policy_check(&seen, &j, src, STRAKE_DIR_EGRESS, seen.flow.saddr, skb->len, ORIGIN_POD) == POLICY_DROP)
		return TC_ACT_SHOT;

	dst = lookup_endpoint(p.ip->daddr);
	if (dst)
		return deliver(skb, &p, dst);
	/* Out of the cluster, a flow of the pod's own (its source untouched:
	 * not a backend's reply) leaves with the node's address [masq.h]. */
	if (p.ip->saddr == seen.flow.saddr) {
		v = masq_egress(skb, &p);
		if (v == LB_DROP || (v == LB_FORWARD && skb_parse_ipv4(skb, &p) != PARSE_OK))
			return TC_ACT_SHOT;
	}
	return fib_forward(skb, &p);
}

SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	const struct endpoint_info *ep;
	struct packet p;
	struct l4 l4;
	int v;

	count(STRAKE_CNT_TO_POD, skb->len);
	if (skb_parse_ipv4(skb, &p) != PARSE_OK)
		return TC_ACT_OK;
	/* Replies that took the stack's path still need their service address. */
	if (parse_l4(&p, (void *)(long)skb->data_end, &l4) == L4_OK) {
		v = lb_reverse(skb, &p, &l4);
		if (v == LB_DROP || (v == LB_DONE && skb_parse_ipv4(skb, &p) != PARSE_OK))
			return TC_ACT_SHOT;
	}
	ep = lookup_endpoint(p.ip->daddr);
	/* Only what this node's stack made itself has no ingress interface;
	 * what it forwards (from the wire, from other pods) is judged as is
	 * [Exemptions: node]. */
	if (ep && policy_ingress(&p, (void *)(long)skb->data_end, ep, skb->len,
				 skb->ingress_ifindex ? ORIGIN_WIRE : ORIGIN_HOST) == POLICY_DROP)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
