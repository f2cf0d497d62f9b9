/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Incremental Internet checksum updates (RFC 1624), for contexts without the
 * kernel's checksum helpers (XDP). Frames reaching XDP carry complete
 * checksums (a NIC verified or computed them), so plain arithmetic is right.
 */
#ifndef STRAKE_CSUM_H
#define STRAKE_CSUM_H

#include <linux/types.h>

static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* HC' = ~(~HC + ~m + m'), on 16-bit words of the changed field. */
static __always_inline void csum_replace4(__u16 *sum, __u32 from, __u32 to)
{
	__u32 s = (__u16)~*sum;

	s += (__u16)~from + (__u16)~(from >> 16);
	s += (__u16)to + (__u16)(to >> 16);
	*sum = ~csum_fold32(s);
}

static __always_inline void csum_replace2(__u16 *sum, __u16 from, __u16 to)
{
	__u32 s = (__u16)~*sum;

	s += (__u16)~from + to;
	*sum = ~csum_fold32(s);
}

/* Checksum of a 20-byte IPv4 header (no options), for headers we build. */
static __always_inline __u16 ipv4_header_csum(const __u16 *w)
{
	__u32 s = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		s += w[i];
	return ~csum_fold32(s);
}

#endif
