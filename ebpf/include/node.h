/* SPDX-License-Identifier: Apache-2.0 */
/* This node's own addresses and its local endpoints. */
#ifndef STRAKE_NODE_H
#define STRAKE_NODE_H

#include "maps.h"

static __always_inline int is_node_addr(__be32 addr)
{
	return bpf_map_lookup_elem(&st_node_addrs, &addr) != 0;
}

static __always_inline const struct endpoint_info *lookup_endpoint(__be32 addr)
{
	__u32 key = addr;

	return bpf_map_lookup_elem(&st_endpoints, &key);
}

#endif
