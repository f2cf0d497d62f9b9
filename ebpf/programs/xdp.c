/* SPDX-License-Identifier: Apache-2.0 */
/*
 * XDP on the node's uplink: north-south load balancing (NodePort,
 * LoadBalancer, externalIPs) before the kernel allocates an skb.
 *
 * A frame's journey:
 *   1. not IPv4 TCP/UDP, or a later fragment: not ours, up it goes
 *   2. to this node's address: the reply of an SNATed flow is turned back
 *      and routed to its client (a masqueraded one's goes up to tc, for
 *      its pod); the answer to one of this node's health
 *      probes goes up to the agent, whatever NodePort its port may also be
 *   3. to an external frontend (lb.h, lb_from_outside): a local backend's
 *      flow goes up translated (tc delivers it into the pod); a remote
 *      backend's leaves again, SNATed or wrapped for direct return
 *      (a Service without endpoints: refused, reject.h, back out the port)
 *   4. anything else passes, untouched
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "ctx_xdp.h"
#include "forward.h"
#include "healthcheck.h"
#include "lb.h"
#include "parse.h"

/* A translated frame out toward its next hop. */
static __always_inline int route(struct xdp_md *ctx)
{
	struct packet p;

	if (ctx_parse_ipv4(ctx, &p) != PARSE_OK)
		return XDP_DROP;
	/* A masqueraded flow's reply, now for a local pod: tc delivers it
	 * (XDP cannot redirect into a pod's veth, whose peer runs no XDP). */
	if (lookup_endpoint(p.ip->daddr))
		return XDP_PASS;
	return fib_forward(ctx, &p);
}

SEC("xdp")
int xdp_lb(struct xdp_md *ctx)
{
	struct packet p;
	struct l4 l4;
	int v;

	if (ctx_parse_ipv4(ctx, &p) != PARSE_OK || parse_l4(&p, ctx_data_end(ctx), &l4) != L4_OK)
		return XDP_PASS;

	if (is_node_addr(p.ip->daddr)) {
		v = lb_reverse(ctx, &p, &l4);
		if (v == LB_DROP)
			return XDP_DROP;
		if (v == LB_DONE)
			return route(ctx);
		if (hc_probe_reply(&p, &l4))
			return XDP_PASS;
	}

	switch (lb_from_outside(ctx, &p, &l4)) {
	case LB_DROP:
		return XDP_DROP;
	case LB_REJECT:
		return XDP_TX;
	case LB_FORWARD:
		return route(ctx);
	default:
		return XDP_PASS;
	}
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
