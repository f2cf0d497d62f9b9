/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Flow hashing for backend selection. Deterministic and seeded identically on
 * every node (lb_config.hash_seed), so any node picks the same backend for
 * the same flow from the same Maglev table: a flow that moves between load
 * balancers (ECMP changes, a node failing) keeps its backend.
 */
#ifndef STRAKE_HASH_H
#define STRAKE_HASH_H

#include <linux/types.h>

/* A 32-bit finalizer (MurmurHash3's fmix32): every input bit moves every
 * output bit, which is what spreads similar 5-tuples across a table. */
static __always_inline __u32 mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 flow_hash(__u32 saddr, __u32 daddr, __u32 ports, __u32 proto, __u32 seed)
{
	__u32 h = mix32(seed ^ proto);

	h = mix32(h ^ saddr);
	h = mix32(h ^ daddr);
	return mix32(h ^ ports);
}

#endif
