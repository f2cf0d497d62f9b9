/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Constants of the packet path, in one place (as Katran's balancer_consts.h):
 * header offsets, protocol numbers and flags the kernel's uapi headers do not
 * give BPF programs without libc, and strake's own fixed addresses. What
 * userspace shares (layouts, capacities, map names) is in shared.h instead.
 */
#ifndef STRAKE_CONSTS_H
#define STRAKE_CONSTS_H

#include <linux/if_ether.h>
#include <linux/ip.h>

#ifndef AF_INET
#define AF_INET 2
/* TCP header flags (the byte at offset 13). */
#define STRAKE_TCP_FIN 0x01
#define STRAKE_TCP_SYN 0x02
#define STRAKE_TCP_RST 0x04
#define STRAKE_TCP_ACK 0x10

#endif

/* IPv4 header fields (frag_off bits, host order). */
#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* Offsets in a frame of Ethernet + IPv4 (the only frames translated). */
#define IP_OFF ETH_HLEN
#define IP_CHECK_OFF (IP_OFF + __builtin_offsetof(struct iphdr, check))
#define IP_SADDR_OFF (IP_OFF + __builtin_offsetof(struct iphdr, saddr))
#define IP_DADDR_OFF (IP_OFF + __builtin_offsetof(struct iphdr, daddr))

/* Room for Ethernet, an IPv4 header with options and an L4 header: what
 * tc pulls into the linear area when the headers are not there. */
#define STRAKE_PULL_LEN (14 + 60 + 60)

/* ICMP types (linux/icmp.h pulls in libc headers that do not build for BPF). */
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

/* The pods' link-local gateway (strake-api's POD_GATEWAY). */
#define STRAKE_POD_GATEWAY_HOST 0xa9fe0101 /* 169.254.1.1 */

/* Outer TTL of the IPIP packets the programs build. */
#define STRAKE_ENCAP_TTL 64

/* Tries at a free SNAT port before a new flow is dropped (nat.h): at 90 %
 * of the range in use, 128 random tries all fail once in ~700,000 flows. */
#define STRAKE_SNAT_TRIES 128

#endif
