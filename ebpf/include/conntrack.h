/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The connection table: one LRU map, st_ct, for every flow state the
 * programs keep (load balancing, NAT, policy), as Cilium keeps one CT for
 * all three. Entries are told apart by their key's kind (shared.h):
 *
 *   STRAKE_CT_SERVICE  the flow as the client sent it to a frontend:
 *                      backend, frontend, NAT port; pins the flow
 *   STRAKE_CT_REPLY    its reply as it leaves the backend (or comes back to
 *                      the node's SNAT port): what to put back
 *   STRAKE_CT_POLICY+d a flow endpoint `owner`'s policy let through in
 *                      direction d, and what it was judged on
 *
 * Every entry carries the time of its last packet (coarse seconds, written
 * at most once a second) and the TCP flags seen, so the agent's sweep can
 * tell live flows from finished ones.
 */
#ifndef STRAKE_CONNTRACK_H
#define STRAKE_CONNTRACK_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "maps.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, STRAKE_CT_SIZE);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} st_ct SEC(".maps");

/* CLOCK_MONOTONIC in seconds, from the coarse clock: cheap, and exact
 * enough for timeouts counted in seconds. */
static __always_inline __u32 ct_now(void)
{
	return bpf_ktime_get_coarse_ns() / 1000000000ULL;
}

static __always_inline void ct_key_of(struct ct_key *k, const struct flow_key *f, __u8 kind, __u32 owner)
{
	k->flow = *f;
	k->owner = owner;
	k->kind = kind;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
}

/* An entry, marked seen now; `refreshed` says whether the mark moved (the
 * first packet of the flow in this second): once-a-second work goes there. */
static __always_inline struct ct_entry *ct_lookup_refresh(const struct ct_key *k, int *refreshed)
{
	struct ct_entry *e = bpf_map_lookup_elem(&st_ct, k);

	*refreshed = 0;
	if (e) {
		__u32 now = ct_now();

		/* One write a second at most: the entry's cache line is
		 * shared by every CPU the flow's packets land on. */
		if (e->last_seen != now) {
			e->last_seen = now;
			*refreshed = 1;
		}
	}
	return e;
}

static __always_inline struct ct_entry *ct_lookup(const struct ct_key *k)
{
	int refreshed;

	return ct_lookup_refresh(k, &refreshed);
}

/*
 * Records the TCP flags of a packet of `e`'s flow: `reverse` when it goes
 * the other way from the one the entry's key names. The agent's sweep reads
 * them for the flow's timeout (userspace/datapath/src/conntrack.rs): SYN only,
 * established, or closing (a reset, or a FIN each way). A new SYN on a
 * closed flow (its 5-tuple reused) starts it over: then 1 is returned, for
 * the caller to start the flow's other entry over too. Written only on change.
 */
static __always_inline int ct_observe(struct ct_entry *e, __u8 proto, __u8 tcp_flags, int reverse)
{
	__u8 seen = 0, tcp;

	int restart = 0;

	if (proto != IPPROTO_TCP)
		return 0;
	if (tcp_flags & STRAKE_TCP_SYN)
		seen |= (tcp_flags & STRAKE_TCP_ACK) ? STRAKE_CT_TCP_SYNACK : STRAKE_CT_TCP_SYN;
	else if (tcp_flags & STRAKE_TCP_ACK)
		seen |= STRAKE_CT_TCP_ESTABLISHED;
	if (tcp_flags & STRAKE_TCP_FIN)
		seen |= reverse ? STRAKE_CT_TCP_FIN_REV : STRAKE_CT_TCP_FIN_FWD;
	if (tcp_flags & STRAKE_TCP_RST)
		seen |= STRAKE_CT_TCP_RST;
	tcp = e->tcp;
	if (seen == STRAKE_CT_TCP_SYN &&
	    (tcp & (STRAKE_CT_TCP_RST | STRAKE_CT_TCP_FIN_FWD | STRAKE_CT_TCP_FIN_REV))) {
		tcp = 0;
		restart = 1;
	}
	if ((tcp | seen) != e->tcp)
		e->tcp = tcp | seen;
	return restart;
}

/* Inserts `e`, seen now. `flags`: BPF_ANY, or BPF_NOEXIST to claim a key. */
static __always_inline int ct_insert(const struct ct_key *k, struct ct_entry *e, __u64 flags)
{
	e->last_seen = ct_now();
	return bpf_map_update_elem(&st_ct, k, e, flags);
}

#endif
