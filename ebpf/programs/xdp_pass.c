/* SPDX-License-Identifier: Apache-2.0 */
/*
 * xdp_pass, for a veth that must take frames another veth sends with XDP_TX
 * or XDP_REDIRECT (a lab fabric port): a veth only polls for those frames
 * when it runs an XDP program itself (docs/kernel-notes.md). A real NIC needs none.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
