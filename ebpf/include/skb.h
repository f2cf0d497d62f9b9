/* SPDX-License-Identifier: Apache-2.0 */
/* tc-side access to packet headers. */
#ifndef STRAKE_SKB_H
#define STRAKE_SKB_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "parse.h"

/*
 * Parse an skb's headers. Headers normally sit in the linear area; when they
 * do not (some GSO or tunnelled skbs), pull them in once and parse again, so a
 * packet is only called malformed when it really is.
 */
static __always_inline int skb_parse_ipv4(struct __sk_buff *skb, struct packet *p)
{
	int ret = parse_ipv4((void *)(long)skb->data, (void *)(long)skb->data_end, p);

	if (ret != PARSE_MALFORMED || skb->len <= skb->data_end - skb->data)
		return ret;
	if (bpf_skb_pull_data(skb, skb->len < STRAKE_PULL_LEN ? skb->len : STRAKE_PULL_LEN))
		return PARSE_MALFORMED;
	return parse_ipv4((void *)(long)skb->data, (void *)(long)skb->data_end, p);
}

#endif
