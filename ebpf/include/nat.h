/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Address translation: rewriting a packet's addresses and ports (over the
 * context of ctx_skb.h / ctx_xdp.h: include one first), and allocating SNAT
 * ports. A SNAT port is claimed by inserting the reply entry it implies
 * into the connection table with BPF_NOEXIST: the table is the allocator,
 * so a port is free again exactly when its reply entry is gone.
 */
#ifndef STRAKE_NAT_H
#define STRAKE_NAT_H

#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "conntrack.h"
#include "l4.h"

/* Rewrites the destination (`dst`) or source address and port, fixing the
 * IPv4 and transport checksums. For ICMP echo (l4.h, parse_l4_echo) the
 * port is the identifier, and the ICMP checksum covers no addresses. */
static __always_inline int nat_rewrite(ctx_t *ctx, const struct l4 *l4, int dst, __be32 old_addr, __be32 new_addr,
				       __be16 old_port, __be16 new_port)
{
	int icmp = l4->proto == IPPROTO_ICMP;
	__u32 addr_off = dst ? IP_DADDR_OFF : IP_SADDR_OFF;
	__u32 port_off = l4->off + (icmp ? 4 : dst ? 2 : 0);

	if (old_addr != new_addr) {
		if (!icmp &&
		    ctx_l4_csum_replace(ctx, l4->csum_off, old_addr, new_addr, l4->csum_flags | BPF_F_PSEUDO_HDR | 4))
			return -1;
		if (ctx_l3_csum_replace(ctx, IP_CHECK_OFF, old_addr, new_addr))
			return -1;
		if (ctx_store_u32(ctx, addr_off, new_addr))
			return -1;
	}
	if (old_port != new_port) {
		if (ctx_l4_csum_replace(ctx, l4->csum_off, old_port, new_port, l4->csum_flags | 2))
			return -1;
		if (ctx_store_u16(ctx, port_off, new_port))
			return -1;
	}
	return 0;
}

struct nat_claim {
	struct ct_key rk;  /* the reply entry's key; its destination port is tried */
	struct ct_entry re;
	__u32 hash;
	__u32 range;
	__u16 min;
	__be16 port;
};

/* The port of try `i` of a flow hashed `h`: every try a fresh hash of
 * both (murmur3's finalizer), so two flows' tries are independent. A fixed
 * stride from a hashed start made every flow walk the same cycle, and taken
 * ports clustered as in linear probing: at 77 % use, runs of more than the
 * 128 tries already failed new flows. */
static __always_inline __u32 nat_try_hash(__u32 h, __u32 i)
{
	__u32 x = h + i * 0x9e3779b9U;

	x ^= x >> 16;
	x *= 0x85ebca6bU;
	x ^= x >> 13;
	x *= 0xc2b2ae35U;
	x ^= x >> 16;
	return x;
}

/* One try (a bpf_loop callback): 1 stops the loop, with the port claimed. */
static long nat_try_port(__u32 i, void *arg)
{
	struct nat_claim *c = arg;
	__u16 candidate;

	if (c->range == 0)
		return 1;
	candidate = c->min + nat_try_hash(c->hash, i) % c->range;
	c->rk.flow.dport = bpf_htons(candidate);
	/* Look first: a failed insert into a full LRU map still evicts an
	 * entry to make room for it. */
	if (bpf_map_lookup_elem(&st_ct, &c->rk))
		return 0;
	if (ct_insert(&c->rk, &c->re, BPF_NOEXIST))
		return 0; /* another CPU took it this instant */
	c->port = c->rk.flow.dport;
	return 1;
}

/*
 * Claims a port in [min, max] (host order) for a translated flow: the port
 * becomes `rk`'s destination port and `re` is inserted under it. `hash`
 * picks where to start, so a flow tries the same ports on every node.
 * Returns the port (network order) through `port`; -1 if every try was
 * taken (STRAKE_SNAT_TRIES of them: allocation keeps working with 90 % of
 * the range in use).
 */
static __always_inline int nat_claim_port(__u16 min, __u16 max, __u32 hash, struct ct_key *rk,
					  struct ct_entry *re, __be16 *port)
{
	struct nat_claim c = {
		.rk = *rk,
		.re = *re,
		.hash = hash,
		.range = (__u32)max - min + 1,
		.min = min,
		.port = 0,
	};

	if (max < min || c.range > 65535)
		return -1;
	bpf_loop(STRAKE_SNAT_TRIES, nat_try_port, &c, 0);
	if (!c.port)
		return -1;
	rk->flow.dport = c.port;
	*port = c.port;
	return 0;
}

#endif
