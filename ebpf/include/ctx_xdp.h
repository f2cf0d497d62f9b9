/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The packet context at XDP (struct xdp_md): direct writes and checksum
 * arithmetic (csum.h); frames here carry complete checksums.
 * Include exactly one of ctx_skb.h / ctx_xdp.h before the headers written
 * over ctx_t (nat.h, lb.h, forward.h, encap.h).
 */
#ifndef STRAKE_CTX_H
#define STRAKE_CTX_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "counters.h"
#include "csum.h"
#include "parse.h"

#define STRAKE_CTX_XDP 1

typedef struct xdp_md ctx_t;

#define CTX_PASS XDP_PASS
#define CTX_DROP XDP_DROP
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
	/* Not data_end - data: clang narrows that to a 32-bit spill of a
	 * packet pointer, which the verifier refuses. */
	return bpf_xdp_get_buff_len(ctx);
}

static __always_inline int ctx_store_u32(ctx_t *ctx, __u32 off, __u32 v)
{
	void *d = ctx_data(ctx) + (off & 0x1ff);

	if (d + sizeof(v) > ctx_data_end(ctx))
		return -1;
	__builtin_memcpy(d, &v, sizeof(v));
	return 0;
}

static __always_inline int ctx_store_u16(ctx_t *ctx, __u32 off, __u16 v)
{
	void *d = ctx_data(ctx) + (off & 0x1ff);

	if (d + sizeof(v) > ctx_data_end(ctx))
		return -1;
	__builtin_memcpy(d, &v, sizeof(v));
	return 0;
}

static __always_inline __u16 *ctx_csum_field(ctx_t *ctx, __u32 off)
{
	__u16 *f = ctx_data(ctx) + (off & 0x1ff);

	if ((void *)(f + 1) > ctx_data_end(ctx))
		return 0;
	return f;
}

static __always_inline int ctx_l3_csum_replace(ctx_t *ctx, __u32 off, __u32 from, __u32 to)
{
	__u16 *f = ctx_csum_field(ctx, off);

	if (!f)
		return -1;
	csum_replace4(f, from, to);
	return 0;
}

static __always_inline int ctx_l4_csum_replace(ctx_t *ctx, __u32 off, __u32 from, __u32 to, __u64 flags)
{
	__u16 *f = ctx_csum_field(ctx, off);

	if (!f)
		return -1;
	/* UDP without a checksum stays without one. */
	if ((flags & BPF_F_MARK_MANGLED_0) && *f == 0)
		return 0;
	if ((flags & 0xf) == 4)
		csum_replace4(f, from, to);
	else
		csum_replace2(f, (__u16)from, (__u16)to);
	if ((flags & BPF_F_MARK_MANGLED_0) && *f == 0)
		*f = 0xffff;
	return 0;
}

static __always_inline int ctx_parse_ipv4(ctx_t *ctx, struct packet *p)
{
	return parse_ipv4(ctx_data(ctx), ctx_data_end(ctx), p);
}

static __always_inline __u32 ctx_ingress_ifindex(ctx_t *ctx)
{
	return ctx->ingress_ifindex;
}

/* Out of `ifindex`, the frame's MACs already set: back out of the port it
 * came in on is XDP_TX. */
static __always_inline int ctx_redirect(ctx_t *ctx, __u32 ifindex)
{
	if (ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(ifindex, 0);
}

/*
 * A translated frame whose next hop has no neighbour entry: XDP cannot
 * resolve one, and the stack would drop the frame (its source is often this
 * node's own address after SNAT: a martian on arrival), never resolving the
 * neighbour, so every retry of the flow would be lost the same way. Marked in
 * the frame's metadata, which only XDP can write, it goes up to tc ingress
 * (uplink.c, from_wire), which routes it with bpf_redirect_neigh. A driver
 * without XDP metadata leaves it to the stack, as before.
 */
static __always_inline int ctx_redirect_neigh(ctx_t *ctx, struct packet *p, __u32 ifindex, __be32 nh)
{
	__u32 *meta;
	void *data;

	(void)p;
	(void)ifindex;
	(void)nh;
	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(*meta)))
		goto stack;
	meta = (void *)(long)ctx->data_meta;
	data = (void *)(long)ctx->data;
	if ((void *)(meta + 1) > data)
		goto stack;
	*meta = STRAKE_META_ROUTE;
	count(STRAKE_CNT_XDP_NEIGH_TO_TC, ctx_len(ctx));
	return XDP_PASS;
stack:
	count(STRAKE_CNT_PASS_STACK, ctx_len(ctx));
	return XDP_PASS;
}

#endif
