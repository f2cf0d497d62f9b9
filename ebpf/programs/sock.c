/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Socket-level load balancing: cgroup sock_addr hooks, attached at the
 * agent's --cgroup-root, so every process below it (the node's host-network
 * clients and the pods' processes) reaches a Service without any packet
 * being translated.
 *
 *   connect4      TCP and UDP connect() to a frontend: the socket is
 *                 connected to a backend instead
 *   sendmsg4      unconnected UDP sendto()/sendmsg() to a frontend: the
 *                 datagram goes to the socket's backend for that frontend
 *   recvmsg4      a datagram from that backend reads as from the frontend
 *   getpeername4  the application sees the frontend as its peer
 *
 * Frontends, backend sets, Maglev tables, affinity and health are the
 * packet path's (lb_frontend, lb_select in service.h). A frontend without an
 * eligible backend refuses at once: connect() and sendto() fail with
 * ECONNREFUSED, as kube-proxy's reject rule makes them. Sockets of network
 * namespaces in st_sock_optout are left alone: their traffic keeps the VIP
 * on the wire and is translated per packet.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/socket.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "service.h"
#include "sock.h"

#define SOCK_ALLOW 1
#define SOCK_REFUSE 0
#ifndef AF_INET
#define AF_INET 2
#endif
#define ECONNREFUSED 111

static __always_inline struct sock_lb_stats *sock_stats(__u32 frontend_id)
{
	return bpf_map_lookup_elem(&st_fe_sock_stat, &frontend_id);
}

/* The frontend a socket address names: an exact frontend, or a NodePort
 * on one of this node's addresses or on loopback (127.0.0.0/8, as
 * kube-proxy's iptables mode with route_localnet allows). */
static __always_inline struct svc_info *sock_frontend(__be32 daddr, __be16 dport, __u8 proto)
{
	struct svc_key k = { .addr = daddr, .port = dport, .proto = proto };
	struct svc_info *svc = lb_frontend(daddr, dport, proto);

	if (svc)
		return svc;
	if ((bpf_ntohl(daddr) >> 24) != 127)
		return 0;
	k.addr = 0;
	return bpf_map_lookup_elem(&st_services, &k);
}

/* Backend of a new socket (or datagram) to `svc`. The 5-tuple is not known
 * yet (no source port before connect), so the flow hash is over the socket
 * cookie and the frontend: Maglev spreads sockets over the set, and a socket
 * keeps its backend for as long as the table does. ClientIP affinity takes
 * the client to be the socket's network namespace (a pod, or the host). */
static __always_inline const struct backend_info *sock_pick(struct bpf_sock_addr *ctx, const struct svc_info *svc,
							    __u64 cookie, __u32 *bid)
{
	struct flow_key fk = {
		.saddr = (__u32)bpf_get_netns_cookie(ctx), /* the client, for affinity */
		.daddr = ctx->user_ip4 ^ (__u32)cookie,
		.sport = (__u16)(cookie >> 32),
		.dport = (__u16)ctx->user_port,
		.proto = (__u8)ctx->protocol,
	};

	struct lb_choice c;

	if (lb_select(svc, &fk, LB_SEL_INSIDE, &c))
		return 0;
	*bid = c.ct.backend_id;
	return c.be;
}

static __always_inline int sock_translate(struct bpf_sock_addr *ctx, int connect)
{
	__u8 proto = (__u8)ctx->protocol;
	__be32 vip = ctx->user_ip4;
	__be16 vport = (__be16)ctx->user_port;
	const struct backend_info *be = 0;
	struct sock_lb_stats *st;
	struct svc_info *svc;
	__u64 netns, cookie;
	__u32 bid = 0;
	__u32 *pinned;

	if (ctx->user_family != AF_INET || (proto != IPPROTO_TCP && proto != IPPROTO_UDP))
		return SOCK_ALLOW;
	svc = sock_frontend(vip, vport, proto);
	if (!svc)
		return SOCK_ALLOW;
	netns = bpf_get_netns_cookie(ctx);
	if (bpf_map_lookup_elem(&st_sock_optout, &netns))
		return SOCK_ALLOW;
	cookie = bpf_get_socket_cookie(ctx);
	st = sock_stats(svc->frontend_id);

	struct sock_fwd_key fwk = { .cookie = cookie, .vip = vip, .vport = vport, .proto = proto };

	if (proto == IPPROTO_UDP) {
		pinned = bpf_map_lookup_elem(&st_sock_fwd, &fwk);
		if (pinned) {
			bid = *pinned;
			be = bpf_map_lookup_elem(&st_backends, &bid);
			/* A backend that left or went unhealthy: pick again. */
			if (be && !(be->flags & STRAKE_BE_F_ACTIVE))
				be = 0;
		}
	}
	if (!be)
		be = sock_pick(ctx, svc, cookie, &bid);
	if (!be) {
		if (st)
			st->refused++;
		bpf_set_retval(-ECONNREFUSED);
		return SOCK_REFUSE;
	}
	if (proto == IPPROTO_UDP)
		bpf_map_update_elem(&st_sock_fwd, &fwk, &bid, BPF_ANY);

	struct sock_rev_key rk = { .cookie = cookie, .backend = be->addr, .bport = be->port, .proto = proto };
	struct sock_rev_entry re = {
		.vip = vip,
		.vport = vport,
		.frontend_id = svc->frontend_id,
		.backend_id = bid,
	};

	bpf_map_update_elem(&st_sock_rev, &rk, &re, BPF_ANY);
	ctx->user_ip4 = be->addr;
	ctx->user_port = (__u32)be->port;
	if (st) {
		if (connect)
			st->connects++;
		else
			st->datagrams++;
	}
	return SOCK_ALLOW;
}

/* A backend's address back to the frontend the socket asked for. */
static __always_inline int sock_reverse(struct bpf_sock_addr *ctx)
{
	struct sock_rev_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.backend = ctx->user_ip4,
		.bport = (__be16)ctx->user_port,
		.proto = (__u8)ctx->protocol,
	};
	struct sock_rev_entry *re;

	if (ctx->user_family != AF_INET)
		return SOCK_ALLOW;
	re = bpf_map_lookup_elem(&st_sock_rev, &rk);
	if (re) {
		ctx->user_ip4 = re->vip;
		ctx->user_port = (__u32)re->vport;
	}
	return SOCK_ALLOW;
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx)
{
	return sock_translate(ctx, 1);
}

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_translate(ctx, 0);
}

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx);
}

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
