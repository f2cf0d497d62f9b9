/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Where a packet comes from, and what that lets it do. Every exemption the
 * programs grant is decided here, on something the sender cannot forge;
 * docs/threat-model.md says why each one holds (section names in brackets).
 */
#ifndef STRAKE_TRUST_H
#define STRAKE_TRUST_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "maps.h"
#include "node.h"

/* Who handed a packet to a policy check. */
enum strake_origin {
	ORIGIN_POD,  /* a local pod's own packet, its source checked against its veth */
	ORIGIN_HOST, /* made by this node's stack (skb->ingress_ifindex 0) */
	ORIGIN_WIRE, /* anything else: the uplink, or forwarded by the stack */
};

static __always_inline const struct trust_config *trust_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&st_trust, &zero);
}

/*
 * Traffic NetworkPolicy never blocks [Exemptions]. `self` is the endpoint,
 * `remote` the other side. Only the origin makes these unforgeable: a
 * packet from the wire claiming the node's or the hairpin address gets
 * nothing here (and from_wire drops it first).
 */
static __always_inline int policy_exempt(__u8 dir, __be32 self, __be32 remote, int origin)
{
	if (origin == ORIGIN_POD)
		/* A pod reaching itself, directly or through a Service (then our
		 * own rewrite gave it the hairpin source) [Exemptions: self]. */
		return remote == self || remote == bpf_htonl(STRAKE_HAIRPIN_ADDR_HOST);
	if (origin == ORIGIN_HOST)
		/* The node reaching its pods: kubelet's probes [Exemptions: node]. */
		return dir == STRAKE_DIR_INGRESS && is_node_addr(remote);
	return 0;
}

/* A source address that never arrives from the wire [Uplink anti-spoof]:
 * this node's own addresses, the hairpin and gateway addresses, a local
 * pod's. */
static __always_inline int wire_source_impossible(__be32 saddr)
{
	return is_node_addr(saddr) || saddr == bpf_htonl(STRAKE_HAIRPIN_ADDR_HOST) ||
	       saddr == bpf_htonl(STRAKE_POD_GATEWAY_HOST) || lookup_endpoint(saddr) != 0;
}

/*
 * Whether `saddr` may arrive on the uplink for local delivery. from_wire
 * delivers with bpf_redirect_peer, past the stack's rp_filter, so it does
 * the stack's check itself (as Calico's eBPF data plane does): the route
 * back to the source (a FIB lookup from the interface it came in on) must
 * exist, and in strict mode leave by that interface.
 */
static __always_inline int wire_source_ok(struct __sk_buff *skb, __be32 saddr, __be32 daddr)
{
	const struct trust_config *cfg = trust_config();
	__u32 rpf = cfg ? cfg->rpf : STRAKE_RPF_STRICT;
	struct bpf_fib_lookup fib = {};
	int rc;

	if (wire_source_impossible(saddr))
		return 0;
	if (rpf == STRAKE_RPF_OFF)
		return 1;
	fib.family = AF_INET;
	fib.ipv4_src = daddr;
	fib.ipv4_dst = saddr;
	fib.ifindex = skb->ingress_ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_SKIP_NEIGH);
	/* FRAG_NEEDED is about this packet's size, not the route. */
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return 0; /* blackhole (this node's pod block), unreachable, no route */
	return rpf == STRAKE_RPF_LOOSE || fib.ifindex == skb->ingress_ifindex;
}

/* ARP from a pod passes only in its own name (or as a probe, sender 0):
 * the host's neighbour entries on a pod's veth are the pod's alone. */
struct arp_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 oper;
	__u8 sha[ETH_ALEN];
	__be32 spa;
	__u8 tha[ETH_ALEN];
	__be32 tpa;
} __attribute__((packed));

static __always_inline int pod_arp_ok(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arp_ipv4 *arp = (void *)(eth + 1);
	const struct endpoint_info *ep;

	if ((void *)(arp + 1) > end || eth->h_proto != bpf_htons(ETH_P_ARP) ||
	    arp->ptype != bpf_htons(ETH_P_IP) || arp->hlen != ETH_ALEN || arp->plen != 4)
		return 0;
	if (arp->spa == 0)
		return 1;
	ep = lookup_endpoint(arp->spa);
	return ep && ep->ifindex == skb->ifindex;
}

/*
 * Direct-return IPIP [DSR]: accepted only from a cluster node, and only for
 * a frontend this node knows with the outer destination as one of its local
 * backends. `vip`/`vport` are the inner destination, `backend`/`bport` the
 * outer destination and the port the outer IP ID carries.
 */
static __always_inline int dsr_target_known(__be32 vip, __be16 vport, __u8 proto, __be32 backend, __be16 bport)
{
	struct dsr_target_key k = {
		.vip = vip,
		.backend = backend,
		.vport = vport,
		.bport = bport,
		.proto = proto,
	};

	if (bpf_map_lookup_elem(&st_dsr_targets, &k))
		return 1;
	/* NodePort: the client sent to the balancing node's address. */
	if (!bpf_map_lookup_elem(&st_cluster_nodes, &vip))
		return 0;
	k.vip = 0;
	return bpf_map_lookup_elem(&st_dsr_targets, &k) != 0;
}

#endif
