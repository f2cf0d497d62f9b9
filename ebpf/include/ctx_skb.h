/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The packet context at tc (struct __sk_buff). Rewrites go through the
 * kernel's helpers, which keep skb checksum state right (CHECKSUM_PARTIAL
 * from local senders, CHECKSUM_COMPLETE from NICs). Every helper invalidates
 * packet pointers, so callers address the packet by offset.
 * Include exactly one of ctx_skb.h / ctx_xdp.h before the headers written
 * over ctx_t (nat.h, lb.h, forward.h, encap.h).
 */
#ifndef STRAKE_CTX_H
#define STRAKE_CTX_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "counters.h"
#include "parse.h"
#include "skb.h"

#define STRAKE_CTX_SKB 1

typedef struct __sk_buff ctx_t;

#define CTX_PASS TC_ACT_OK
#define CTX_DROP TC_ACT_SHOT
static __always_inline void *ctx_data(ctx_t *ctx)
{
	return (void *)(long)ctx->data;
}

static __always_inline void *ctx_data_end(ctx_t *ctx)
{
	return (void *)(long)ctx->data_end;
}

static __always_inline __u32 ctx_len(ctx_t *ctx)
{
	return ctx->len;
}

static __always_inline int ctx_store_u32(ctx_t *ctx, __u32 off, __u32 v)
{
	return bpf_skb_store_bytes(ctx, off, &v, sizeof(v), 0);
}

static __always_inline int ctx_store_u16(ctx_t *ctx, __u32 off, __u16 v)
{
	return bpf_skb_store_bytes(ctx, off, &v, sizeof(v), 0);
}

static __always_inline int ctx_l3_csum_replace(ctx_t *ctx, __u32 off, __u32 from, __u32 to)
{
	return bpf_l3_csum_replace(ctx, off, from, to, sizeof(to));
}

/* flags: size (2 or 4) | BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 */
static __always_inline int ctx_l4_csum_replace(ctx_t *ctx, __u32 off, __u32 from, __u32 to, __u64 flags)
{
	return bpf_l4_csum_replace(ctx, off, from, to, flags);
}

static __always_inline int ctx_parse_ipv4(ctx_t *ctx, struct packet *p)
{
	return skb_parse_ipv4(ctx, p);
}

/* The interface the packet arrived on (0: made by this node's stack). */
static __always_inline __u32 ctx_ingress_ifindex(ctx_t *ctx)
{
	return ctx->ingress_ifindex;
}

/* Out of `ifindex` (its egress), the frame's MACs already set. */
static __always_inline int ctx_redirect(ctx_t *ctx, __u32 ifindex)
{
	return bpf_redirect(ifindex, 0);
}

/* Routed out of `ifindex` to next hop `nh`, whose neighbour the kernel
 * resolves (and fills the MACs). */
static __always_inline int ctx_redirect_neigh(ctx_t *ctx, struct packet *p, __u32 ifindex, __be32 nh)
{
	struct bpf_redir_neigh n = {
		.nh_family = AF_INET,
		.ipv4_nh = nh,
	};

	ipv4_decrease_ttl(p->ip);
	count(STRAKE_CNT_FWD_NEIGH, ctx_len(ctx));
	return bpf_redirect_neigh(ifindex, &n, sizeof(n), 0);
}

/* Whether XDP marked this frame for routing here (ctx_xdp.h,
 * ctx_redirect_neigh): metadata only an XDP program can have written. */
static __always_inline int ctx_xdp_asked_route(ctx_t *ctx)
{
	__u32 *meta = (void *)(long)ctx->data_meta;

	if ((void *)(meta + 1) > (void *)(long)ctx->data)
		return 0;
	return *meta == STRAKE_META_ROUTE;
}

#endif
