/* SPDX-License-Identifier: Apache-2.0 */
#ifndef STRAKE_COUNTERS_H
#define STRAKE_COUNTERS_H

#include "maps.h"

static __always_inline void count(__u32 idx, __u32 bytes)
{
	struct counter_value *v = bpf_map_lookup_elem(&st_counters, &idx);

	if (v) {
		/* Per-CPU slot: no atomics needed. */
		v->packets++;
		v->bytes += bytes;
	}
}

#endif
