/* SPDX-License-Identifier: Apache-2.0 */
/*
 * IPIP, over the context of ctx_skb.h / ctx_xdp.h (include one first).
 *
 * Direct server return: the load-balancing node wraps the client's packet
 * (untouched, still addressed to the service) in an outer IPv4 header to
 * the backend pod's address; the outer IP ID carries the backend port. The
 * backend's node unwraps it (this kernel has no ipip device, so it is done
 * in BPF), DNATs to the backend, and the reply goes straight from there to
 * the client with the service address as its source. The agent's health
 * checks of remote pods travel the same way (healthcheck.h).
 */
#ifndef STRAKE_ENCAP_H
#define STRAKE_ENCAP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "csum.h"

/* The outer header for `inner`, from `src` to `dst`, IP ID `id`. */
static __always_inline void ipip_outer(struct iphdr *outer, const struct iphdr *inner, __be32 src, __be32 dst,
				       __be16 id)
{
	outer->version = 4;
	outer->ihl = 5;
	outer->tos = inner->tos;
	outer->tot_len = bpf_htons(bpf_ntohs(inner->tot_len) + sizeof(struct iphdr));
	outer->id = id;
	outer->frag_off = bpf_htons(IP_DF);
	outer->ttl = STRAKE_ENCAP_TTL;
	outer->protocol = IPPROTO_IPIP;
	outer->check = 0;
	outer->saddr = src;
	outer->daddr = dst;
	outer->check = ipv4_header_csum((__u16 *)outer);
}

#ifdef STRAKE_CTX_XDP
/* Wraps the frame's IPv4 packet in IPIP; packet pointers are invalid after. */
static __always_inline int encap_ipip(struct xdp_md *ctx, __be32 src, __be32 dst, __be16 id)
{
	struct ethhdr eth;
	struct iphdr *outer, *inner;
	void *data, *end;

	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + sizeof(eth) > end)
		return -1;
	__builtin_memcpy(&eth, data, sizeof(eth));
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
		return -1;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	outer = data + sizeof(eth);
	inner = (void *)(outer + 1);
	if ((void *)(inner + 1) > end)
		return -1;
	__builtin_memcpy(data, &eth, sizeof(eth));
	ipip_outer(outer, inner, src, dst, id);
	return 0;
}
#endif

#ifdef STRAKE_CTX_SKB
/* Wraps the skb's IPv4 packet in IPIP. -1 before the room is made: the
 * packet is untouched; -2 after: it is half-wrapped and must not leave. */
static __always_inline int encap_ipip(struct __sk_buff *skb, __be32 src, __be32 dst, __be16 id)
{
	struct iphdr inner, outer;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &inner, sizeof(inner)))
		return -1;
	ipip_outer(&outer, &inner, src, dst, id);
	if (bpf_skb_adjust_room(skb, sizeof(outer), BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4))
		return -1;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0))
		return -2;
	return 0;
}

/* Strips the outer header; returns the backend port it carried, or -1. */
static __always_inline int skb_decap_ipip(struct __sk_buff *skb, struct iphdr *outer)
{
	__be16 port = outer->id;

	if (bpf_skb_adjust_room(skb, -(int)sizeof(struct iphdr), BPF_ADJ_ROOM_MAC, 0))
		return -1;
	return port;
}
#endif

#endif
