/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The load balancer's health checks across nodes [Health checks, in
 * docs/threat-model.md]. Every agent probes every backend, and a policy
 * isolating a backend must not make it look dead to the other nodes. So a
 * probe is recognised by what nobody else can produce:
 *
 *   probing node   the agent's probe sockets carry SO_MARK hc_mark (setting
 *                  a mark needs CAP_NET_ADMIN; a pod's marks are scrubbed
 *                  when its packets leave its namespace). to_wire wraps a
 *                  marked probe routed via another cluster node (a pod of
 *                  that node's block) in IPIP from the node's address to the
 *                  backend pod, and remembers the reply it expects
 *                  (st_hc_probes), so its XDP never takes that reply for
 *                  NodePort traffic. Probes of anything else (a node's own
 *                  address, a host outside the cluster) leave plain.
 *   backend node   from_wire admits a probe only as IPIP from a cluster
 *                  node's address (anti-spoofed like every wire source)
 *                  whose inner packet is that node probing this very pod,
 *                  and remembers it (st_hc_flows) so the pod's answer
 *                  passes its egress policy. A plain packet from the same
 *                  address and port is judged by the policies like any
 *                  other.
 *
 * Local backends need none of this: the agent's probe leaves this node's
 * own stack, which policy_exempt() already lets in.
 */
#ifndef STRAKE_HEALTHCHECK_H
#define STRAKE_HEALTHCHECK_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "counters.h"
#include "l4.h"
#include "maps.h"
#include "parse.h"
#include "trust.h"

/* Whether `port` (network order) is one of the agents' probe source ports. */
static __always_inline int hc_port(__be16 port)
{
	__u32 zero = 0;
	struct pol_config *c = bpf_map_lookup_elem(&st_pol_config, &zero);
	__u16 p = bpf_ntohs(port);

	return c && c->health_sport_min && p >= c->health_sport_min && p <= c->health_sport_max;
}

static __always_inline int hc_fresh(const __u64 *last)
{
	return last && bpf_ktime_get_ns() - *last < STRAKE_HC_FLOW_LIFETIME_NS;
}

/* The probing node's XDP: a reply to one of this node's probes. */
static __always_inline int hc_probe_reply(const struct packet *p, const struct l4 *l4)
{
	struct flow_key k = {
		.saddr = p->ip->saddr,
		.daddr = p->ip->daddr,
		.sport = l4->sport,
		.dport = l4->dport,
		.proto = l4->proto,
	};

	if (l4->proto != IPPROTO_TCP || !hc_port(l4->dport))
		return 0;
	return hc_fresh(bpf_map_lookup_elem(&st_hc_probes, &k));
}

/* A local pod's packet answering a health check it was sent. `f` is the
 * pod's packet as it sent it. */
static __always_inline int hc_answer(const struct flow_key *f)
{
	struct flow_key k = {
		.saddr = f->daddr,
		.daddr = f->saddr,
		.sport = f->dport,
		.dport = f->sport,
		.proto = f->proto,
	};

	if (f->proto != IPPROTO_TCP)
		return 0;
	return hc_fresh(bpf_map_lookup_elem(&st_hc_flows, &k));
}

#ifdef STRAKE_CTX_SKB
#include "encap.h"
#include "skb.h"

/*
 * The inner packet of IPIP from cluster node `outer_src` to a local pod:
 * a health check if it is that node probing the pod from a probe port.
 * Remembered until its reset (probes close with one) or the lifetime.
 */
static __always_inline int hc_admit(const struct packet *p, void *data_end, const struct l4 *l4, __be32 outer_src)
{
	struct tcphdr *t = p->l4;
	struct flow_key k = {
		.saddr = p->ip->saddr,
		.daddr = p->ip->daddr,
		.sport = l4->sport,
		.dport = l4->dport,
		.proto = IPPROTO_TCP,
	};
	__u64 now = bpf_ktime_get_ns();

	if (l4->proto != IPPROTO_TCP || p->ip->saddr != outer_src || !hc_port(l4->sport))
		return 0;
	if ((void *)(t + 1) > data_end)
		return 0;
	if (t->rst)
		bpf_map_delete_elem(&st_hc_flows, &k);
	else
		bpf_map_update_elem(&st_hc_flows, &k, &now, BPF_ANY);
	return 1;
}

/* Whether `daddr` is routed via another cluster node (not that node
 * itself): a pod of its block, which only that node can unwrap for. */
static __always_inline int hc_behind_node(struct __sk_buff *skb, __be32 saddr, __be32 daddr)
{
	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.ipv4_src = saddr,
		.ipv4_dst = daddr,
		.ifindex = skb->ifindex,
	};

	if (bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT | BPF_FIB_LOOKUP_SKIP_NEIGH) !=
	    BPF_FIB_LKUP_RET_SUCCESS)
		return 0;
	/* The lookup wrote the next hop over the destination. */
	return fib.ipv4_dst != daddr && bpf_map_lookup_elem(&st_cluster_nodes, &fib.ipv4_dst) != 0;
}

/* to_wire: wraps one of the agent's probes for the backend's node. Anything
 * not marked, not from the node's address, or not for a pod behind another
 * node leaves as it is. -1: the packet is half-wrapped and must not leave. */
static __always_inline int hc_wrap(struct __sk_buff *skb)
{
	const struct trust_config *tc = trust_config();
	__u32 zero = 0;
	const struct lb_config *lc = bpf_map_lookup_elem(&st_lb_config, &zero);
	struct packet p;
	struct l4 l4;
	__u64 now;

	if (!skb->mark || !tc || !tc->hc_mark || skb->mark != tc->hc_mark || !lc)
		return 0;
	if (skb_parse_ipv4(skb, &p) != PARSE_OK || p.fragment ||
	    parse_l4(&p, (void *)(long)skb->data_end, &l4) != L4_OK || l4.proto != IPPROTO_TCP ||
	    p.ip->saddr != lc->node_addr || !hc_behind_node(skb, p.ip->saddr, p.ip->daddr))
		return 0;
	{
		struct flow_key reply = {
			.saddr = p.ip->daddr,
			.daddr = p.ip->saddr,
			.sport = l4.dport,
			.dport = l4.sport,
			.proto = IPPROTO_TCP,
		};

		now = bpf_ktime_get_ns();
		bpf_map_update_elem(&st_hc_probes, &reply, &now, BPF_ANY);
	}
	switch (encap_ipip(skb, p.ip->saddr, p.ip->daddr, 0)) {
	case -1:
		return 0; /* untouched: leaves plain, and policy judges it there */
	case -2:
		return -1;
	}
	count(STRAKE_CNT_HC_ENCAP, skb->len);
	return 0;
}
#endif

#endif
