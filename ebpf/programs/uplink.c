/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Programs on the node's uplink (the interface toward other nodes).
 *
 *   from_wire  TCX ingress: packets arriving from the fabric. Those for a
 *              local pod go straight into its netns; everything else is the
 *              node's own traffic and goes to the stack untouched.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "counters.h"
#include "forward.h"
#include "skb.h"

SEC("classifier")
int from_wire(struct __sk_buff *skb)
{
	const struct endpoint_info *dst;
	struct packet p;

	/* Malformed or non-IPv4 frames on the uplink are the node's business:
	 * the stack accounts for and drops what it cannot use. */
	if (skb_parse_ipv4(skb, &p) != PARSE_OK)
		return TC_ACT_OK;

	dst = lookup_endpoint(p.ip->daddr);
	if (dst)
		return deliver_local(skb, &p, dst);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
