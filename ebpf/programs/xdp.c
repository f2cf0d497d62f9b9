/* SPDX-License-Identifier: Apache-2.0 */
/*
 * XDP on the node's uplink: north-south load balancing (NodePort,
 * LoadBalancer, externalIPs) before the kernel allocates an skb.
 *
 *   xdp_lb  for a frontend marked external:
 *             local backend   DNAT, pass up (tc delivers into the pod; the
 *                             reply passes this node and is turned back)
 *             remote, DSR     IPIP to the backend, out the same port
 *             remote, SNAT    DNAT + SNAT to this node, out the same port;
 *                             the reply comes back here and is turned back
 *           anything else passes, untouched; so do replies to this
 *           node's health checks (healthcheck.h), whatever NodePort
 *           their port may also be.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "ctx_xdp.h"
#include "counters.h"
#include "encap.h"
#include "healthcheck.h"
#include "lb.h"
#include "parse.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* Routes a rewritten frame: out the port it came in on when the FIB says so
 * (XDP_TX), another port (redirect), or the stack when the neighbour is not
 * resolved yet (it routes the rewritten packet the slow way). */
static __always_inline int xdp_route(struct xdp_md *ctx)
{
	struct bpf_fib_lookup fib = {};
	struct packet p;
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	int rc;

	if (parse_ipv4(data, end, &p) != PARSE_OK)
		return XDP_DROP;
	if (p.ip->ttl <= 1)
		return XDP_PASS;
	fib.family = AF_INET;
	fib.tos = p.ip->tos;
	fib.l4_protocol = p.ip->protocol;
	fib.ipv4_src = p.ip->saddr;
	fib.ipv4_dst = p.ip->daddr;
	fib.ifindex = ctx->ingress_ifindex;
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return XDP_PASS;
	ipv4_decrease_ttl(p.ip);
	__builtin_memcpy(p.eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(p.eth->h_source, fib.smac, ETH_ALEN);
	if (fib.ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(fib.ifindex, 0);
}

/* SNAT: a port on this node's address for the flow, unique for the backend. */
static __always_inline int snat_port(const struct lb_config *cfg, const struct flow_key *fk,
				     const struct backend_info *be, struct rnat_entry *re, __be16 *port)
{
	__u32 range = cfg->snat_port_max - cfg->snat_port_min + 1;
	__u32 h = flow_hash(fk->saddr, fk->daddr, ((__u32)fk->sport << 16) | fk->dport, fk->proto, cfg->hash_seed);

	if (range == 0 || range > 65535)
		return -1;
#pragma unroll
	for (int i = 0; i < 8; i++) {
		__u16 candidate = cfg->snat_port_min + (h + i * 7919) % range;
		struct flow_key rk = {
			.saddr = be->addr,
			.daddr = cfg->node_addr,
			.sport = be->port,
			.dport = bpf_htons(candidate),
			.proto = fk->proto,
		};

		if (bpf_map_update_elem(&st_rnat, &rk, re, BPF_NOEXIST) == 0) {
			*port = rk.dport;
			return 0;
		}
	}
	return -1;
}

static __always_inline int lb_from_outside(struct xdp_md *ctx, struct packet *p, const struct l4 *l4)
{
	struct flow_key fk = {
		.saddr = p->ip->saddr,
		.daddr = p->ip->daddr,
		.sport = l4->sport,
		.dport = l4->dport,
		.proto = l4->proto,
	};
	const struct lb_config *cfg = lb_config();
	const struct backend_info *be;
	struct svc_info *svc;
	struct ct_entry ct;
	__u32 bytes = ctx_len(ctx);
	__be32 baddr;
	__be16 bport;
	int created;

	svc = lb_frontend(fk.daddr, fk.dport, fk.proto);
	if (!svc || !(svc->flags & STRAKE_SVC_F_EXTERNAL) || !cfg)
		return XDP_PASS;
	if (p->fragment) {
		count(STRAKE_CNT_LB_FRAGMENT, bytes);
		return XDP_DROP;
	}
	be = lb_flow(&fk, svc, &ct, &created);
	if (!be) {
		count(STRAKE_CNT_LB_NO_BACKEND, bytes);
		return XDP_DROP;
	}
	baddr = be->addr;
	bport = be->port;

	if (be->flags & STRAKE_BE_F_LOCAL) {
		if (created) {
			bpf_map_update_elem(&st_ct, &fk, &ct, BPF_ANY);
			lb_remember_reply(&fk, be, &ct, fk.saddr, fk.sport);
		}
		lb_account(ct.frontend_id, ct.backend_id, bytes, created);
		if (lb_rewrite(ctx, l4, 1, fk.daddr, baddr, fk.dport, bport))
			return XDP_DROP;
		count(STRAKE_CNT_LB_TRANSLATED, bytes);
		return XDP_PASS;
	}

	if (svc->flags & STRAKE_SVC_F_DSR) {
		if (created) {
			ct.flags |= STRAKE_CT_F_DSR;
			bpf_map_update_elem(&st_ct, &fk, &ct, BPF_ANY);
		}
		lb_account(ct.frontend_id, ct.backend_id, bytes, created);
		if (xdp_encap_ipip(ctx, cfg->node_addr, baddr, bport))
			return XDP_DROP;
		count(STRAKE_CNT_LB_ENCAP, bytes);
		return xdp_route(ctx);
	}

	if (created) {
		struct rnat_entry re = {
			.vip = fk.daddr,
			.vport = fk.dport,
			.client = fk.saddr,
			.cport = fk.sport,
			.frontend_id = ct.frontend_id,
			.backend_id = ct.backend_id,
			.flags = STRAKE_CT_F_SNAT,
		};

		if (snat_port(cfg, &fk, be, &re, &ct.nat_port)) {
			count(STRAKE_CNT_LB_SNAT_FULL, bytes);
			return XDP_DROP;
		}
		ct.flags |= STRAKE_CT_F_SNAT;
		bpf_map_update_elem(&st_ct, &fk, &ct, BPF_ANY);
	}
	lb_account(ct.frontend_id, ct.backend_id, bytes, created);
	if (lb_rewrite(ctx, l4, 1, fk.daddr, baddr, fk.dport, bport) ||
	    lb_rewrite(ctx, l4, 0, fk.saddr, cfg->node_addr, fk.sport, ct.nat_port))
		return XDP_DROP;
	count(STRAKE_CNT_LB_TRANSLATED, bytes);
	return xdp_route(ctx);
}

SEC("xdp")
int xdp_lb(struct xdp_md *ctx)
{
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	struct packet p;
	struct l4 l4;
	int v;

	/* Not ours to judge (non-IPv4, malformed, ICMP, later fragments): the
	 * tc program and the stack see them as they came. */
	if (parse_ipv4(data, end, &p) != PARSE_OK || parse_l4(&p, end, &l4) != L4_OK)
		return XDP_PASS;

	/* A reply of an SNATed flow, back at this node's address; or the
	 * answer to one of this node's probes, for the agent. */
	if (is_node_addr(p.ip->daddr)) {
		v = lb_reverse(ctx, &p, &l4);
		if (v == LB_DROP)
			return XDP_DROP;
		if (v == LB_DONE)
			return xdp_route(ctx);
		if (hc_probe_reply(&p, &l4))
			return XDP_PASS;
	}
	return lb_from_outside(ctx, &p, &l4);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
