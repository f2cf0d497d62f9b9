/* SPDX-License-Identifier: Apache-2.0 */
/* Transport headers: where the ports and the checksum are. */
#ifndef STRAKE_L4_H
#define STRAKE_L4_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include "parse.h"

struct l4 {
	__u32 off;      /* offset of the L4 header in the frame */
	__u32 csum_off; /* offset of its checksum */
	__u64 csum_flags; /* BPF_F_MARK_MANGLED_0 for UDP (0 = no checksum) */
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags; /* TCP: the flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10); 0 otherwise */
};

enum l4_result {
	L4_OK = 0,
	L4_OTHER,     /* not TCP or UDP (ICMP, ...) */
	L4_NO_HEADER, /* a non-first fragment */
	L4_TRUNCATED, /* TCP/UDP header cut short */
};

static __always_inline int parse_l4(struct packet *p, void *data_end, struct l4 *l4)
{
	l4->proto = p->ip->protocol;
	l4->off = p->l4_off;
	l4->tcp_flags = 0;
	if (p->later_fragment)
		return L4_NO_HEADER;
	if (l4->proto == IPPROTO_TCP) {
		struct tcphdr *t = p->l4;

		if ((void *)(t + 1) > data_end)
			return L4_TRUNCATED;
		l4->sport = t->source;
		l4->dport = t->dest;
		l4->csum_off = l4->off + __builtin_offsetof(struct tcphdr, check);
		l4->csum_flags = 0;
		l4->tcp_flags = ((__u8 *)t)[13];
		return L4_OK;
	}
	if (l4->proto == IPPROTO_UDP) {
		struct udphdr *u = p->l4;

		if ((void *)(u + 1) > data_end)
			return L4_TRUNCATED;
		l4->sport = u->source;
		l4->dport = u->dest;
		l4->csum_off = l4->off + __builtin_offsetof(struct udphdr, check);
		l4->csum_flags = BPF_F_MARK_MANGLED_0;
		return L4_OK;
	}
	return L4_OTHER;
}

/*
 * ICMP echo as a flow with ports (masq.h): the identifier stands in for a
 * port, on the source side of a request and the destination side of a
 * reply (as policy.h sees it), so a reply is the reverse of its request.
 * Other ICMP: L4_OTHER.
 */
static __always_inline int parse_l4_echo(struct packet *p, void *data_end, struct l4 *l4)
{
	__u8 *h = p->l4;
	__be16 id;

	l4->proto = p->ip->protocol;
	l4->off = p->l4_off;
	l4->tcp_flags = 0;
	if (l4->proto != IPPROTO_ICMP)
		return L4_OTHER;
	if (p->later_fragment)
		return L4_NO_HEADER;
	if ((void *)(h + 8) > data_end)
		return L4_TRUNCATED;
	if (h[1] != 0 || (h[0] != ICMP_ECHO && h[0] != ICMP_ECHOREPLY))
		return L4_OTHER;
	__builtin_memcpy(&id, h + 4, sizeof(id));
	l4->sport = h[0] == ICMP_ECHO ? id : 0;
	l4->dport = h[0] == ICMP_ECHO ? 0 : id;
	l4->csum_off = l4->off + 2;
	l4->csum_flags = 0;
	return L4_OK;
}

/* TCP, UDP, or ICMP echo. */
static __always_inline int parse_l4_or_echo(struct packet *p, void *data_end, struct l4 *l4)
{
	int r = parse_l4(p, data_end, l4);

	return r == L4_OTHER ? parse_l4_echo(p, data_end, l4) : r;
}

#endif
