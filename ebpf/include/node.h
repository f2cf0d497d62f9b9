/* SPDX-License-Identifier: Apache-2.0 */
/* This node's own addresses. */
#ifndef STRAKE_NODE_H
#define STRAKE_NODE_H

#include "maps.h"

static __always_inline int is_node_addr(__be32 addr)
{
	return bpf_map_lookup_elem(&st_node_addrs, &addr) != 0;
}

#endif
