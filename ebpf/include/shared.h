/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Structures shared between the kernel-side programs and userspace.
 *
 * This is the one place these layouts are written down: the Rust side gets
 * them from bindgen (ebpf/build.rs), never by retyping. Every map key and
 * value, and every counter index, lives here. Changing a layout means bumping
 * STRAKE_MAP_LAYOUT_VERSION so the agent pins the new maps beside the old ones
 * instead of reinterpreting old bytes.
 */
#ifndef STRAKE_SHARED_H
#define STRAKE_SHARED_H

#include <linux/types.h>

#define STRAKE_MAP_LAYOUT_VERSION 5

/* Map names, as maps.h defines them (a test checks both agree): userspace
 * opens and sizes the pinned maps by these, never by retyped strings. */
#define STRAKE_MAP_ENDPOINTS "st_endpoints"
#define STRAKE_MAP_COUNTERS "st_counters"
#define STRAKE_MAP_IPCACHE "st_ipcache"
#define STRAKE_MAP_POLICY "st_policy"
#define STRAKE_MAP_POL_CONFIG "st_pol_config"
#define STRAKE_MAP_POL_DROPS "st_pol_drops"
#define STRAKE_MAP_SERVICES "st_services"
#define STRAKE_MAP_BACKENDS "st_backends"
#define STRAKE_MAP_SLOTS "st_slots"
#define STRAKE_MAP_MAGLEV "st_maglev"
#define STRAKE_MAP_CT "st_ct"
#define STRAKE_MAP_AFFINITY "st_affinity"
#define STRAKE_MAP_NODE_ADDRS "st_node_addrs"
#define STRAKE_MAP_CLUSTER_NODES "st_cluster_nodes"
#define STRAKE_MAP_LB_CONFIG "st_lb_config"
#define STRAKE_MAP_FE_STATS "st_fe_stats"
#define STRAKE_MAP_BE_STATS "st_be_stats"
#define STRAKE_MAP_TRUST "st_trust"
#define STRAKE_MAP_DSR_TARGETS "st_dsr_targets"
#define STRAKE_MAP_HC_FLOWS "st_hc_flows"
#define STRAKE_MAP_HC_PROBES "st_hc_probes"
#define STRAKE_MAP_SOCK_REV "st_sock_rev"
#define STRAKE_MAP_SOCK_FWD "st_sock_fwd"
#define STRAKE_MAP_SOCK_OPTOUT "st_sock_optout"
#define STRAKE_MAP_FE_SOCK_STATS "st_fe_sock_stat"
#define STRAKE_MAP_FE_REJECT "st_fe_reject"
#define STRAKE_MAP_LB_SOURCES "st_lb_sources"
#define STRAKE_MAP_MASQ_CONFIG "st_masq_config"
#define STRAKE_MAP_MASQ_SKIP "st_masq_skip"

/* Capacity defaults; the agent may override max_entries at load time. */
#define STRAKE_MAX_ENDPOINTS 16384
#define STRAKE_MAX_CLUSTER_NODES 8192
#define STRAKE_MAX_FRONTENDS 65536   /* service addresses (VIP/NodePort/LB/externalIP x port) */
#define STRAKE_MAX_BACKENDS 65536
#define STRAKE_MAX_BACKEND_SETS 65536
#define STRAKE_MAX_SLOTS (STRAKE_MAX_BACKEND_SETS * 4)
#define STRAKE_CT_SIZE 524288 /* st_ct: service, reply and policy entries together */
#define STRAKE_MAGLEV_DEFAULT_SIZE 16381
#define STRAKE_MAX_IPCACHE 131072
#define STRAKE_MAX_POLICY 1048576
#define STRAKE_MAX_ENDPOINT_IDS 16384
#define STRAKE_MAX_HC_FLOWS 65536      /* health checks in flight, to or from this node */

/* Value of st_endpoints, keyed by the pod's IPv4 address (network order). */
struct endpoint_info {
	__u32 ifindex;   /* host-side veth, in the node's netns */
	__u32 flags;     /* STRAKE_EP_F_* */
	__u8 pod_mac[6]; /* the pod's eth0: destination MAC on delivery */
	__u8 host_mac[6];/* the host-side veth: source MAC on delivery */
	__u32 endpoint_id;  /* compact per-node id, stable for the endpoint's life */
	/* Policy identity: what st_policy is keyed by (policy.h,
	 * policy_rules_allow reads it). Pods the same policies select share
	 * one, so a pod's ADD writes this one field instead of a verdict set
	 * of its own; layout 3 added it back for that. */
	__u32 identity;
};

/* The endpoint's source address was checked at attach time; spoofed sources
 * from it are dropped. Set for every CNI-attached pod. */
#define STRAKE_EP_F_ANTISPOOF (1U << 0)
/* Some NetworkPolicy selects the pod for that direction: traffic not allowed
 * by a rule is dropped. */
#define STRAKE_EP_F_INGRESS_ISOLATED (1U << 1)
#define STRAKE_EP_F_EGRESS_ISOLATED (1U << 2)

/* ---- Load balancing -------------------------------------------------- */

/* A service frontend: address, port and protocol a client sends to. */
struct svc_key {
	__be32 addr;  /* ClusterIP, external IP, LoadBalancer IP; 0 = NodePort on any node address */
	__be16 port;  /* network order */
	__u8 proto;   /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 pad;
};

struct svc_info {
	__u32 frontend_id;      /* index of per-frontend counters */
	__u32 set_id;           /* backend set used for new flows (Maglev table, slots) */
	__u32 count;            /* eligible backends: slots 0..count-1 of the set */
	__u32 table_size;       /* Maglev table size M; 0 = random scheduler */
	__u32 affinity_timeout; /* seconds; 0 = no ClientIP session affinity */
	__u32 flags;            /* STRAKE_SVC_F_* */
	/* The set clients inside the cluster (pods, the node's own processes)
	 * get: the internal traffic policy's. It differs from set_id only for
	 * an externalTrafficPolicy Local external frontend, which from inside
	 * reaches every endpoint, as kube-proxy short-circuits pod and node
	 * traffic to external destinations to the Service's cluster chain. */
	__u32 inside_set_id;
	__u32 inside_count;
	__u32 inside_table_size;
};

#define STRAKE_SVC_F_EXTERNAL (1U << 0) /* reachable from outside: NodePort, LoadBalancer, externalIP */
#define STRAKE_SVC_F_DSR (1U << 1)      /* external traffic to remote backends by IPIP direct return */
#define STRAKE_SVC_F_LOCAL (1U << 2)    /* traffic policy Local: the set holds this node's backends only, no SNAT */
/* No usable endpoint anywhere in the cluster: new flows on the packet path
 * are refused (TCP RST, ICMP port unreachable; reject.h), as kube-proxy's
 * REJECT. Without it an empty set drops (a Local scope with endpoints on
 * other nodes only, as kube-proxy's "has no local endpoints" DROP). */
#define STRAKE_SVC_F_REJECT (1U << 3)
/* loadBalancerSourceRanges: only clients in the frontend's ranges
 * (st_lb_sources) reach it from outside; the rest are dropped at XDP. */
#define STRAKE_SVC_F_SOURCE_RANGES (1U << 4)

/* st_lb_sources (LPM): a frontend's loadBalancerSourceRanges. The
 * frontend id always matches in full: prefixlen = 32 + the range's. */
struct lb_source_key {
	__u32 prefixlen;
	__u32 frontend_id;
	__be32 addr;
};

#define STRAKE_MAX_LB_SOURCES 65536

struct backend_info {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 flags; /* STRAKE_BE_F_* */
};

#define STRAKE_BE_F_LOCAL (1U << 0)  /* runs on this node */
#define STRAKE_BE_F_ACTIVE (1U << 1) /* ready, healthy, not terminating: may take new flows */

/* One slot of a backend set: slot i of set s -> backend id. Random and
 * weighted-random scheduling pick a slot; weights are repeated slots. */
struct slot_key {
	__u32 set_id;
	__u32 slot;
};

/* A flow as its first packet saw it (the client's view). */
struct flow_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/*
 * st_ct: the one connection table (conntrack.h). Load balancing, NAT and
 * policy each keep their entries here, told apart by `kind` (and, for
 * policy, the endpoint that owns them): one table to size, one LRU order,
 * one sweep.
 */
enum strake_ct_kind {
	STRAKE_CT_SERVICE = 0,  /* a flow to a frontend, as the client sent it: its backend */
	STRAKE_CT_REPLY = 1,    /* that flow's reply as it leaves the backend: what to put back */
	STRAKE_CT_POLICY = 2,   /* + direction: a flow an endpoint's policy let through */
};

struct ct_key {
	struct flow_key flow;
	__u32 owner; /* STRAKE_CT_POLICY: the endpoint id; 0 otherwise */
	__u8 kind;   /* enum strake_ct_kind (+ direction for policy) */
	__u8 pad[3];
};

struct ct_entry {
	__u32 last_seen; /* CLOCK_MONOTONIC seconds of the last packet (coarse) */
	__u32 flags;     /* STRAKE_CT_F_* */
	__u8 tcp;        /* STRAKE_CT_TCP_*: TCP flags seen on the flow */
	/* Policy: a flow judged no longer allowed stays as a tombstone. */
	__u8 revoked;
	/* Policy: admitted by an exemption (docs/threat-model.md,
	 * "Exemptions"), not by a rule: judging it again needs no rule. */
	__u8 exempt;
	__u8 pad;
	/* Service and reply entries. */
	__u32 frontend_id;
	__u32 backend_id;
	__be32 vip;       /* reply: the address the client sent to */
	__be32 client;    /* reply, SNAT and hairpin: the client's address */
	__be16 vport;     /* reply: the port the client sent to */
	__be16 cport;     /* reply, SNAT and hairpin: the client's port */
	__be16 nat_port;  /* service, SNAT: the node port the flow was given */
	/* Policy entries: the generation that judged the flow last, the rule
	 * that allowed it, and what it was judged on (the real remote address
	 * and destination port, after service translation). */
	__be16 judged_port;
	__be32 judged_remote;
	__u32 generation;
	__u32 rule_id;
};

#define STRAKE_CT_F_SNAT (1U << 0) /* source rewritten to the node's address */
#define STRAKE_CT_F_DSR (1U << 1)  /* sent by IPIP to the backend's node */
#define STRAKE_CT_F_HAIRPIN (1U << 2) /* a pod reaching itself: source rewritten to STRAKE_HAIRPIN_ADDR */
/* Masquerade (masq.h): a pod's flow out of the cluster, its source
 * rewritten to the node's address (with STRAKE_CT_F_SNAT). Its service
 * entry is keyed by the flow as the pod sent it; backend and frontend 0. */
#define STRAKE_CT_F_MASQ (1U << 3)
/* A flow from outside the cluster into a pod, keyed as the pod's replies
 * go: they are answers, never masqueraded (masq.h). */
#define STRAKE_CT_F_INBOUND (1U << 4)

/* TCP flags a flow has shown, in either direction. */
#define STRAKE_CT_TCP_SYN (1U << 0)
#define STRAKE_CT_TCP_SYNACK (1U << 1)
#define STRAKE_CT_TCP_ESTABLISHED (1U << 2)
#define STRAKE_CT_TCP_FIN_FWD (1U << 3)
#define STRAKE_CT_TCP_FIN_REV (1U << 4)
#define STRAKE_CT_TCP_RST (1U << 5)

/* Source address of hairpinned flows (a pod reaching itself through a
 * Service): the reply must leave the pod to be translated back. Link-local,
 * as Cilium's 169.254.42.1. Network order is built by the programs. */
#define STRAKE_HAIRPIN_ADDR_HOST 0xa9fe2a01 /* 169.254.42.1 */

/* st_affinity: ClientIP session affinity. */
struct affinity_key {
	__be32 client;
	__u32 frontend_id;
};

struct affinity_entry {
	__u32 backend_id;
	__u32 pad;
	__u64 last_used_ns;
};

struct lb_stats {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
};

/* st_lb_config[0]: node-wide settings the programs need. */
struct lb_config {
	__be32 node_addr;      /* this node's InternalIP: SNAT source, DSR outer source */
	__u32 hash_seed;       /* identical on every node so all pick alike */
	__u16 snat_port_min;   /* host order */
	__u16 snat_port_max;
	__u32 flags;           /* STRAKE_LB_F_* */
};

/* ---- Masquerade (masq.h) ------------------------------------------------ */

/* st_masq_config[0]. Masquerading needs lb_config's node_addr too. */
struct masq_config {
	__u32 enabled;
	__u16 port_min; /* host order: the ports masqueraded flows get */
	__u16 port_max;
};

/* st_masq_skip (LPM, keyed like st_ipcache): destinations never
 * masqueraded: the cluster's pod ranges, its nodes, and the configured
 * non-masquerade CIDRs. Value: STRAKE_MASQ_SKIP_*, why. */
#define STRAKE_MASQ_SKIP_PODS 1
#define STRAKE_MASQ_SKIP_NODE 2
#define STRAKE_MASQ_SKIP_CONFIGURED 3
#define STRAKE_MAX_MASQ_SKIP 16384
/* North-south Services at tc ingress on the uplink (uplink.c), for an
 * uplink without native XDP (--lb-xdp=false, or XDP failed to attach). */
#define STRAKE_LB_F_TC_NORTH_SOUTH (1U << 0)

/* ---- NetworkPolicy ----------------------------------------------------- */

/* st_ipcache (LPM): remote address -> class. A class is a set of policy
 * peers an address matches (pod selectors, ipBlocks minus excepts); the
 * compiler gives every distinct set one id, so the program needs one lookup
 * whatever the number of policies. */
struct ipcache_key {
	__u32 prefixlen;
	__be32 addr;
};

enum strake_direction {
	STRAKE_DIR_INGRESS = 0,
	STRAKE_DIR_EGRESS = 1,
};

/* st_policy (LPM): what an identity (the endpoint's `identity`: its pods
 * share one when the same policies select them) may exchange with a class,
 * by protocol and port. Fixed fields first; the port is matched by prefix,
 * so an endPort range is a handful of entries; a rule without ports stops
 * before `proto`. */
struct policy_key_data {
	__u32 identity;
	__u32 class_id;
	__u8 direction;
	__u8 proto;
	__be16 port;
};

struct policy_key {
	__u32 prefixlen;
	struct policy_key_data data;
};

#define STRAKE_POLICY_KEY_BITS 96       /* identity + class_id + direction + proto + port */
#define STRAKE_POLICY_ANY_PROTO_BITS 72 /* identity + class_id + direction */

/* Which rule allowed: for counters and explanations. */
struct policy_verdict {
	__u32 rule_id;
};

/* st_pol_drops: packets a policy dropped, STRAKE_POL_DROP_SLOTS per
 * endpoint: index (endpoint_id % STRAKE_MAX_ENDPOINT_IDS) *
 * STRAKE_POL_DROP_SLOTS + direction. */
#define STRAKE_POL_DROP_SLOTS 2

struct pol_config {
	__u32 generation;
	/* Source ports (host order) the agents' health checks use; 0: none.
	 * They identify nothing (a port is anyone's to bind): the probing node's
	 * XDP only uses them to tell probe replies from NodePort traffic
	 * before it looks for the probe in st_hc_probes. */
	__u16 health_sport_min;
	__u16 health_sport_max;
};

/* ---- Trust (docs/threat-model.md) -------------------------------------- */

/* st_trust[0]: what the programs need to tell where a packet comes from. */
struct trust_config {
	__u32 hc_mark; /* SO_MARK of the agent's health-check sockets; 0: no health-check encapsulation */
	__u32 rpf;     /* STRAKE_RPF_*: reverse-path check of sources arriving on the uplink */
};

/* 0 is the default of an unwritten config: strict. */
#define STRAKE_RPF_STRICT 0 /* the route back to the source leaves by the interface it came in on */
#define STRAKE_RPF_LOOSE 1  /* there is a route back to the source (not blackhole/unreachable) */
#define STRAKE_RPF_OFF 2

/* st_dsr_targets: (frontend, local backend) pairs that direct-return IPIP
 * may ask this node to deliver. Written by the agent from its load-balancer
 * plan; every backend of a DSR frontend that runs here, ready or not (a
 * terminating backend keeps its flows). Value: the frontend id. */
struct dsr_target_key {
	__be32 vip;     /* frontend address; 0: NodePort on any cluster node's address */
	__be32 backend; /* the backend pod's address: the outer destination */
	__be16 vport;
	__be16 bport;   /* carried in the outer IP ID */
	__u8 proto;
	__u8 pad[3];
};

/* st_hc_flows (the backend's node): health checks unwrapped for a local pod,
 * keyed by the probe as the pod sees it (prober's node -> pod).
 * st_hc_probes (the probing node): probes sent, keyed by the reply they
 * expect (backend -> this node). Value: time of the last packet
 * (bpf_ktime_get_ns). Entries older than this are not trusted. */
#define STRAKE_HC_FLOW_LIFETIME_NS (30ULL * 1000000000ULL)

/* XDP metadata (the 4 bytes before a frame, in host order) marking a
 * translated frame XDP routes but whose next hop it cannot resolve: tc
 * ingress routes it (ctx_xdp.h, ctx_redirect_neigh). "STRK". */
#define STRAKE_META_ROUTE 0x5354524bU

/* Per-CPU packet counters, index into st_counters. Userspace sums CPUs. */
enum strake_counter {
	STRAKE_CNT_FWD_LOCAL = 0,   /* redirected into a local pod (redirect_peer) */
	STRAKE_CNT_FWD_FIB,         /* routed by bpf_fib_lookup + bpf_redirect */
	STRAKE_CNT_FWD_NEIGH,       /* routed, neighbour resolved by bpf_redirect_neigh */
	STRAKE_CNT_PASS_STACK,      /* handed to the kernel stack (no fast path) */
	STRAKE_CNT_PASS_NON_IPV4,   /* a pod's own ARP (all else not IPv4 is dropped) */
	STRAKE_CNT_DROP_MALFORMED,  /* truncated or invalid IPv4 header */
	STRAKE_CNT_DROP_SPOOFED,    /* pod sent with a source address not its own */
	STRAKE_CNT_TO_POD,          /* entered a pod through the host stack */
	STRAKE_CNT_LB_TRANSLATED,   /* service traffic rewritten toward a backend */
	STRAKE_CNT_LB_REVERSED,     /* replies rewritten back to the service address */
	STRAKE_CNT_LB_NO_BACKEND,   /* service has no eligible backend: dropped */
	STRAKE_CNT_LB_FRAGMENT,     /* fragment of a datagram to a service: dropped */
	STRAKE_CNT_LB_SNAT_FULL,    /* no free SNAT port: dropped */
	STRAKE_CNT_LB_ENCAP,        /* sent to a remote backend by IPIP (DSR) */
	STRAKE_CNT_LB_DECAP,        /* IPIP from a load balancer, unwrapped for a local backend */
	STRAKE_CNT_POLICY_DROP_INGRESS, /* no NetworkPolicy rule allows it into the pod */
	STRAKE_CNT_POLICY_DROP_EGRESS,  /* no NetworkPolicy rule allows it out of the pod */
	STRAKE_CNT_POLICY_REVOKED,      /* an established flow no longer allowed after a policy change */
	STRAKE_CNT_DROP_SPOOFED_WIRE,   /* from the uplink with a source that cannot come from there */
	STRAKE_CNT_DROP_NOT_IPV4,       /* from a pod, neither IPv4 nor its own ARP (IPv6 included) */
	STRAKE_CNT_DROP_UNTRUSTED_ENCAP,/* IPIP not from a cluster node, or for no DSR target or health check here */
	STRAKE_CNT_HC_ENCAP,            /* the agent's health-check probe wrapped toward the backend's node */
	STRAKE_CNT_HC_DECAP,            /* a health-check probe unwrapped for a local backend */
	STRAKE_CNT_LB_REJECTED,         /* to a service without endpoints: answered with RST / ICMP port unreachable */
	STRAKE_CNT_LB_SOURCE_DENIED,    /* from outside a LoadBalancer frontend's loadBalancerSourceRanges: dropped */
	STRAKE_CNT_CT_INSERT_FAILED,    /* a connection-table entry could not be written (table full, no memory) */
	STRAKE_CNT_CT_REPLY_RESTORED,   /* a flow's lost reply entry put back from its service entry */
	STRAKE_CNT_XDP_NEIGH_TO_TC,     /* translated at XDP, next hop unresolved: handed to tc to resolve it */
	STRAKE_CNT_MASQ_TRANSLATED,     /* a pod's packet out of the cluster, source rewritten to the node's */
	STRAKE_CNT_MASQ_REVERSED,       /* a reply of a masqueraded flow turned back to its pod */
	STRAKE_CNT_MASQ_PORTS_FULL,     /* a new masqueraded flow found no free port: dropped */
	STRAKE_CNT_MAX,
};

struct counter_value {
	__u64 packets;
	__u64 bytes;
};


/* ---- Socket-level load balancing (programs/sock.c) ----------------------- */

/* st_sock_rev: how a socket's peer is shown to it again. Keyed by the
 * socket (its cookie) and the backend it was sent to; recvmsg4 and
 * getpeername4 turn that backend back into the frontend the application
 * asked for, so replies appear to come from the VIP. */
struct sock_rev_key {
	__u64 cookie;     /* bpf_get_socket_cookie */
	__be32 backend;
	__be16 bport;
	__u8 proto;
	__u8 pad;
};

struct sock_rev_entry {
	__be32 vip;
	__be16 vport;
	__u16 pad;
	__u32 frontend_id;
	__u32 backend_id;
};

/* st_sock_fwd: an unconnected UDP socket keeps one backend per frontend
 * (every sendto is translated afresh, and must land on the same backend). */
struct sock_fwd_key {
	__u64 cookie;
	__be32 vip;
	__be16 vport;
	__u8 proto;
	__u8 pad;
};

/* st_fe_sock_stat: per frontend, what the socket hooks did. */
struct sock_lb_stats {
	__u64 connects;  /* connect() translated to a backend (TCP and UDP) */
	__u64 datagrams; /* unconnected sendto()/sendmsg() translated */
	__u64 refused;   /* no eligible backend: the call failed with ECONNREFUSED */
};

#endif
