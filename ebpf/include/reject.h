/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Refusing a flow to a Service port without endpoints on the packet path,
 * as kube-proxy's REJECT rule does: the client's packet is turned, in
 * place, into its answer, so a connect() fails at once instead of waiting
 * for its timeout. Written once over ctx_t (include ctx_skb.h or ctx_xdp.h
 * first); the caller sends the frame back where it came from.
 *
 *   TCP  a RST from the frontend (RFC 9293 3.10.7.1: seq from the ACK it
 *        answers, or an ACK of everything the segment carried)
 *   UDP  ICMP port unreachable from the frontend, quoting the datagram's
 *        IPv4 header and first 8 bytes (RFC 792)
 *
 * Never answered: a RST (RFC 9293), a datagram with IPv4 options (the
 * quote is a fixed 28 bytes: it is dropped instead, counted as having no
 * backend). Unlike the kernel's own ICMP, these answers are not rate
 * limited: each costs the sender one packet of its own, the same size or
 * smaller.
 */
#ifndef STRAKE_REJECT_H
#define STRAKE_REJECT_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "csum.h"
#include "l4.h"
#include "maps.h"

#define ICMP_PORT_UNREACH 3
#define REJECT_TTL 64
#define REJECT_QUOTE 28 /* the datagram's IPv4 header (no options) + 8 bytes */

struct reject_icmp {
	__u8 type;
	__u8 code;
	__u16 check;
	__u32 unused;
};

/* Frames built on the stack: `pad` puts the IPv4 header on a 4-byte
 * boundary (the verifier refuses misaligned stack access). */
struct reject_rst {
	__u8 pad[2];
	struct ethhdr eth;
	struct iphdr ip;
	struct tcphdr tcp;
};

struct reject_unreach {
	__u8 pad[2];
	struct ethhdr eth;
	struct iphdr ip;
	struct reject_icmp icmp;
	__u8 quote[REJECT_QUOTE];
};

#define REJECT_RST_LEN (sizeof(struct reject_rst) - 2)
#define REJECT_UNREACH_LEN (sizeof(struct reject_unreach) - 2)

/* One's complement sum of `n` 16-bit words. */
static __always_inline __u32 csum_words(const __u16 *w, int n)
{
	__u32 s = 0;

#pragma unroll
	for (int i = 0; i < n; i++)
		s += w[i];
	return s;
}

/* The answer's Ethernet and IPv4 headers: back from where the packet went. */
static __always_inline void reject_headers(struct ethhdr *eth, struct iphdr *ip, const struct packet *p,
					   __u8 proto, __u16 l4_len)
{
	__builtin_memcpy(eth->h_dest, p->eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, p->eth->h_dest, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(sizeof(struct iphdr) + l4_len);
	ip->id = 0;
	ip->frag_off = bpf_htons(IP_DF);
	ip->ttl = REJECT_TTL;
	ip->protocol = proto;
	ip->check = 0;
	ip->saddr = p->ip->daddr;
	ip->daddr = p->ip->saddr;
	ip->check = ipv4_header_csum((__u16 *)ip);
}

/* The RST answering TCP segment `t`; -1: not to be answered. */
static __always_inline int reject_build_rst(const struct packet *p, const struct tcphdr *t, void *data_end,
					    struct reject_rst *r)
{
	__u32 seg_len;
	__u32 s;

	if ((void *)(t + 1) > data_end || t->rst)
		return -1;
	seg_len = bpf_ntohs(p->ip->tot_len) - p->ip->ihl * 4 - t->doff * 4 + t->syn + t->fin;
	__builtin_memset(r, 0, sizeof(*r));
	reject_headers(&r->eth, &r->ip, p, IPPROTO_TCP, sizeof(struct tcphdr));
	r->tcp.source = t->dest;
	r->tcp.dest = t->source;
	r->tcp.doff = 5;
	r->tcp.rst = 1;
	if (t->ack) {
		r->tcp.seq = t->ack_seq;
	} else {
		r->tcp.ack = 1;
		r->tcp.ack_seq = bpf_htonl(bpf_ntohl(t->seq) + seg_len);
	}
	/* Pseudo-header (addresses, protocol, length), then the header. */
	s = csum_words((__u16 *)&r->ip.saddr, 4);
	s += bpf_htons(IPPROTO_TCP) + bpf_htons(sizeof(struct tcphdr));
	s += csum_words((__u16 *)&r->tcp, sizeof(struct tcphdr) / 2);
	r->tcp.check = ~csum_fold32(s);
	return 0;
}

/* ICMP port unreachable for the datagram in `p`; -1: not to be answered. */
static __always_inline int reject_build_unreach(const struct packet *p, void *data_end, struct reject_unreach *r)
{
	__u32 s;

	if (p->ip->ihl != 5 || (void *)p->ip + REJECT_QUOTE > data_end)
		return -1;
	__builtin_memset(r, 0, sizeof(*r));
	reject_headers(&r->eth, &r->ip, p, IPPROTO_ICMP, sizeof(struct reject_icmp) + REJECT_QUOTE);
	r->icmp.type = ICMP_DEST_UNREACH;
	r->icmp.code = ICMP_PORT_UNREACH;
	__builtin_memcpy(r->quote, p->ip, REJECT_QUOTE);
	s = csum_words((__u16 *)&r->icmp, (sizeof(struct reject_icmp) + REJECT_QUOTE) / 2);
	r->icmp.check = ~csum_fold32(s);
	return 0;
}

#ifdef STRAKE_CTX_XDP
/* The frame becomes `len` bytes of `buf`. */
static __always_inline int reject_write(struct xdp_md *ctx, const void *buf, __u32 len)
{
	int delta = (int)len - (int)bpf_xdp_get_buff_len(ctx);
	void *data;

	if (delta < 0 && bpf_xdp_adjust_tail(ctx, delta))
		return -1;
	if (delta > 0 && bpf_xdp_adjust_head(ctx, -delta))
		return -1;
	data = (void *)(long)ctx->data;
	if (data + len > (void *)(long)ctx->data_end)
		return -1;
	__builtin_memcpy(data, buf, len);
	return 0;
}
#endif

#ifdef STRAKE_CTX_SKB
static __always_inline int reject_write(struct __sk_buff *skb, const void *buf, __u32 len)
{
	if (bpf_skb_change_tail(skb, len, 0))
		return -1;
	return bpf_skb_store_bytes(skb, 0, buf, len, 0);
}
#endif

static __always_inline void reject_account(__u32 frontend_id, __u32 bytes)
{
	struct counter_value *v = bpf_map_lookup_elem(&st_fe_reject, &frontend_id);

	if (v) {
		v->packets++;
		v->bytes += bytes;
	}
}

/*
 * Turns the packet (`l4`: TCP or UDP, first fragment or whole) into its
 * refusal. 0: the frame is the answer, to send back out where the packet
 * came in; -1: nothing to answer with (drop it). Packet pointers are
 * invalid after, either way.
 */
static __always_inline int reject(ctx_t *ctx, struct packet *p, const struct l4 *l4)
{
	void *data_end = ctx_data_end(ctx);

	if (l4->proto == IPPROTO_TCP) {
		struct reject_rst r;

		if (reject_build_rst(p, p->l4, data_end, &r))
			return -1;
		return reject_write(ctx, &r.eth, REJECT_RST_LEN);
	}
	if (l4->proto == IPPROTO_UDP) {
		struct reject_unreach r;

		if (reject_build_unreach(p, data_end, &r))
			return -1;
		return reject_write(ctx, &r.eth, REJECT_UNREACH_LEN);
	}
	return -1;
}

#endif
