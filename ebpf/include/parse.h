/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Packet parsing over a [data, data_end) window, shared by tc and XDP entry
 * points. It validates exactly what the caller will read: a frame that is too
 * short or an IPv4 header that lies about its length is MALFORMED, and callers
 * drop it rather than guess where it should go.
 */
#ifndef STRAKE_PARSE_H
#define STRAKE_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>

#include "consts.h"

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_IPV4,  /* not ours to judge: ARP, IPv6, VLAN, ... */
	PARSE_MALFORMED, /* truncated or invalid: drop */
};

struct packet {
	struct ethhdr *eth;
	struct iphdr *ip;
	void *l4;        /* first byte after the IPv4 header (may equal data_end) */
	__u32 l4_off;    /* offset of l4 from the frame start */
	__u8 fragment;   /* 1 if part of a fragmented datagram */
	__u8 later_fragment; /* 1 if a non-first fragment: no L4 header inside */
};

static __always_inline int parse_ipv4(void *data, void *data_end, struct packet *p)
{
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u32 hlen;

	if ((void *)(eth + 1) > data_end)
		return PARSE_MALFORMED;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4;

	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return PARSE_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_MALFORMED;
	hlen = ip->ihl * 4;
	if ((void *)ip + hlen > data_end)
		return PARSE_MALFORMED;

	p->eth = eth;
	p->ip = ip;
	p->l4 = (void *)ip + hlen;
	p->l4_off = sizeof(*eth) + hlen;
	p->fragment = (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) != 0;
	p->later_fragment = (ip->frag_off & bpf_htons(IP_OFFSET)) != 0;
	return PARSE_OK;
}

/* The kernel's ip_decrease_ttl(): RFC 1624 incremental checksum update. */
static __always_inline void ipv4_decrease_ttl(struct iphdr *ip)
{
	__u32 check = ip->check;

	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xFFFF));
	ip->ttl--;
}

#endif
