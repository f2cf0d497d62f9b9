/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The routing fast path, written once over ctx_t (include ctx_skb.h or
 * ctx_xdp.h first): route toward another node with bpf_fib_lookup +
 * bpf_redirect (XDP_TX back out of the port a frame came in on), and at tc
 * deliver to a local pod with bpf_redirect_peer. Whenever the fast path
 * cannot decide, the packet goes to the kernel stack (CTX_PASS), which
 * routes it the slow but correct way. A next hop without a neighbour entry
 * is resolved by bpf_redirect_neigh (at XDP: by tc, ctx_xdp.h).
 */
#ifndef STRAKE_FORWARD_H
#define STRAKE_FORWARD_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "counters.h"
#include "maps.h"
#include "parse.h"

static __always_inline int fib_forward(ctx_t *ctx, struct packet *p)
{
	struct bpf_fib_lookup fib = {};
	int rc;

	if (p->ip->ttl <= 1) {
		/* Let the stack send ICMP time exceeded. */
		count(STRAKE_CNT_PASS_STACK, ctx_len(ctx));
		return CTX_PASS;
	}

	fib.family = AF_INET;
	fib.tos = p->ip->tos;
	fib.l4_protocol = p->ip->protocol;
	/* 0, not ip->tot_len: the kernel then checks MTU with GSO in mind; with
	 * the real length every 64 KiB GSO skb reports FRAG_NEEDED (docs/kernel-notes.md). */
	fib.tot_len = 0;
	fib.ipv4_src = p->ip->saddr;
	fib.ipv4_dst = p->ip->daddr;
	fib.ifindex = ctx_ingress_ifindex(ctx);

	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		ipv4_decrease_ttl(p->ip);
		__builtin_memcpy(p->eth->h_dest, fib.dmac, ETH_ALEN);
		__builtin_memcpy(p->eth->h_source, fib.smac, ETH_ALEN);
		count(STRAKE_CNT_FWD_FIB, ctx_len(ctx));
		return ctx_redirect(ctx, fib.ifindex);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		/* the lookup wrote the next hop to ipv4_dst */
		return ctx_redirect_neigh(ctx, p, fib.ifindex, fib.ipv4_dst);
	/* Local destination, blackhole, unreachable, forwarding off, ...:
	 * the stack knows what to do (deliver, ICMP error, drop). */
	count(STRAKE_CNT_PASS_STACK, ctx_len(ctx));
	return CTX_PASS;
}

#ifdef STRAKE_CTX_SKB
/* Redirect straight into the pod's netns, skipping the host veth's egress. */
static __always_inline int deliver_local(struct __sk_buff *skb, struct packet *p,
					 const struct endpoint_info *ep)
{
	if (p->ip->ttl <= 1) {
		/* Let the stack send ICMP time exceeded. */
		count(STRAKE_CNT_PASS_STACK, skb->len);
		return TC_ACT_OK;
	}
	ipv4_decrease_ttl(p->ip);
	__builtin_memcpy(p->eth->h_dest, ep->pod_mac, ETH_ALEN);
	__builtin_memcpy(p->eth->h_source, ep->host_mac, ETH_ALEN);
	count(STRAKE_CNT_FWD_LOCAL, skb->len);
	return bpf_redirect_peer(ep->ifindex, 0);
}
#endif

#endif
