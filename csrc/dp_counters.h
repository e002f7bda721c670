/*
 * dp_counters.h - the columns of every counter block, one X-macro list per
 * block. Each list makes the names Python and Prometheus show
 * (dp_counter_name, dp_counters.c) and an enum; the enum is checked against
 * the plain #defines of dataplane.h that the cdef needs (same count, same
 * value for each column), so the names, the defines and the arrays cannot
 * drift apart. Drop reasons have no #defines: the list alone is the truth.
 */
#ifndef DP_COUNTERS_H
#define DP_COUNTERS_H

#include "dataplane.h"

// clang-format off

/* per port (DP_BLOCK_PORT) */
#define foreach_dp_port_ctr                                                 \
    _(RX_PACKETS, "rx_packets")                                             \
    _(RX_BYTES, "rx_bytes")                                                 \
    _(TX_PACKETS, "tx_packets")                                             \
    _(TX_BYTES, "tx_bytes")                                                 \
    _(SHM_FAULTS, "shm_faults")  /* bursts cut short by a shared-memory fault */ \
    _(GUARD_DROPS, "guard_drops") /* a pod's frames its guard refused (spoof_*, storm) */

/* per network (DP_BLOCK_NET) */
#define foreach_dp_net_ctr                                                  \
    _(ENCAP, "encap_packets")                                               \
    _(DECAP, "decap_packets")                                               \
    _(FLOOD, "flood_packets")                                               \
    _(LOCAL, "local_packets")

/* per worker (DP_BLOCK_WORKER) */
#define foreach_dp_worker_ctr                                               \
    _(POLLS, "polls")                                                       \
    _(BUSY_POLLS, "busy_polls")                                             \
    _(FDB_LOOKUPS, "fdb_lookups")                                           \
    _(FDB_CACHE_MISSES, "fdb_cache_misses")                                 \
    _(FDB_SLOW_LOOKUPS, "fdb_slow_lookups")                                 \
    _(IDLE_SLEEPS, "idle_sleeps")                                           \
    _(IDLE_YIELDS, "idle_yields")                                           \
    _(LEARN_LIMITED, "learn_limited")                                       \
    _(NEIGH_HELD, "neigh_held")                                             \
    _(SLOWPATH_LOST, "slowpath_lost")

/* per (port, plane) queue of a shaped port (DP_BLOCK_QOS) */
#define foreach_dp_qos_ctr                                                  \
    _(ENQUEUED, "enqueued")                                                 \
    _(SENT, "sent")                                                         \
    _(DROPPED, "dropped")                                                   \
    _(SENT_BYTES, "sent_bytes")

/* drop reasons (DP_BLOCK_DROP): why the pipeline freed a frame */
#define foreach_dp_drop                                                     \
    _(NO_NETWORK, "no_network")           /* pod port not in a network */   \
    _(HAIRPIN, "hairpin")                 /* destination is ingress port */ \
    _(PORT_GONE, "port_gone")             /* destination port removed */    \
    _(NO_DESTINATION, "no_destination")   /* flood with nobody to reach */  \
    _(OVERSIZE, "oversize")               /* too big once encapsulated */   \
    _(NO_HEADROOM, "no_headroom")         /* mbuf lacks room for header */  \
    _(NEIGH_UNRESOLVED, "neigh_unresolved") /* next hop unknown, not held */ \
    _(NO_UPLINK, "no_uplink")             /* remote target or flood copy, no uplink */ \
    _(NO_MBUF, "no_mbuf")                 /* pool empty for a flood copy */ \
    _(TX_FULL, "tx_full")                 /* port tx queue full */          \
    _(NOT_FOR_US, "not_for_us")           /* uplink frame for another host */ \
    _(UPLINK_NON_IP, "uplink_non_ip")     /* neither IPv4 nor ARP */        \
    _(BAD_IP, "bad_ip")                   /* malformed outer IPv4 */        \
    _(IP_FRAGMENT, "ip_fragment")         /* fragmented outer IPv4 */       \
    _(NOT_UDP, "not_udp")                 /* IPv4 to VTEP, not UDP */       \
    _(UDP_PORT, "udp_port")               /* UDP to VTEP, wrong port */     \
    _(VXLAN_FLAGS, "vxlan_flags")         /* I flag clear */                \
    _(UNKNOWN_VNI, "unknown_vni")                                           \
    _(UNKNOWN_VTEP, "unknown_vtep")       /* source VTEP not in network */  \
    _(TRUNCATED, "truncated")             /* frame shorter than headers */  \
    _(SPLIT_HORIZON, "split_horizon")     /* decapped frame for a remote */ \
    _(ARP_IGNORED, "arp_ignored")         /* ARP not for the VTEP */        \
    _(QUEUE_FULL, "queue_full")           /* plane queue of a shaped port */ \
    _(QUEUE_FLUSHED, "queue_flushed")     /* queued when shaper/port went */ \
    _(KPORT_OVERSIZE, "kport_oversize")   /* kernel port: > its ring frame */ \
    _(KPORT_TRUNCATED, "kport_truncated") /* runt, or super-frame not queued */ \
    _(KPORT_NO_MBUF, "kport_no_mbuf")     /* kernel port: pool empty */     \
    _(KPORT_KERNEL, "kport_kernel")       /* kernel's own ring drops */  \
    _(SPOOF_MAC, "spoof_mac")             /* pod: not its source MAC */     \
    _(SPOOF_IPV4, "spoof_ipv4")           /* pod: not its IPv4 source */    \
    _(SPOOF_ARP, "spoof_arp")             /* pod: ARP not its MAC/address */ \
    _(SPOOF_IPV6, "spoof_ipv6")           /* pod: not its IPv6 source */    \
    _(SPOOF_ND, "spoof_nd")               /* pod: ND not its own, RA */     \
    _(STORM, "storm")                     /* pod: flood over its rate */    \
    _(UDP_LENGTH, "udp_length")           /* outer UDP length vs IPv4 */    \
    _(INNER_SPLIT, "inner_split")         /* inner header past segment 1 */ \
    _(ARP_REPLY, "arp_reply")             /* ARP reply: taken, not sent on */ \
    _(ARP_SENDER, "arp_sender")           /* ARP from a multicast/zero MAC */ \
    _(ARP_RATE, "arp_rate")               /* ARP to the VTEP over its rate */ \
    _(KPORT_GSO, "kport_gso")             /* kernel port: GSO, not TCP */  \
    _(KPORT_TX_ERROR, "kport_tx_error")   /* kernel port: GSO tx refused */ \
    _(GSO_NO_MBUF, "gso_no_mbuf")         /* pool empty for a segment */   \
    _(GSO_BAD, "gso_bad")                 /* super-frame cannot be cut */   \
    _(SHM_FAULT, "shm_fault")             /* lost to a pod's shared memory */ \
    _(KPORT_KERNEL_TX, "kport_kernel_tx") /* kernel port: kernel tx drops */ \
    _(SPOOF_DHCP, "spoof_dhcp")           /* pod: a DHCP server's message */ \
    _(KPORT_TX_OVERSIZE, "kport_tx_oversize") /* kernel port: > its MTU */ \
    _(KPORT_TX_DOWN, "kport_tx_down")     /* kernel port: interface set down */ \
    _(UDP_CHECKSUM, "udp_checksum")       /* outer UDP checksum wrong */    \
    _(ECN_NOT_ECT, "ecn_not_ect")         /* outer CE over a Not-ECT inner */ \
    _(FRAG_NEEDED, "frag_needed")         /* ICMP: our VXLAN too big on path */ \
    _(EXPRESS_ENCAP, "express_encap")     /* express lane: encap refused */ \
    _(EXPRESS_DECAP, "express_decap")     /* express lane: decap refused */ \
    _(EXPRESS_CHANGED, "express_changed") /* express lane: tables changed */ \
    _(DEV_RX_MISSED, "dev_rx_missed")     /* DPDK port: its rx ring full */ \
    _(DEV_RX_ERRORS, "dev_rx_errors")     /* DPDK port: bad frames */       \
    _(DEV_RX_NO_MBUF, "dev_rx_no_mbuf")   /* DPDK port: pool empty */

/* the enums; DP_*_CTR_END is the list's length */
enum dp_port_ctr {
#define _(sym, str) DP_PORT_CTR_##sym,
    foreach_dp_port_ctr
#undef _
    DP_PORT_CTR_END
};
enum dp_net_ctr {
#define _(sym, str) DP_NET_CTR_##sym,
    foreach_dp_net_ctr
#undef _
    DP_NET_CTR_END
};
enum dp_worker_ctr {
#define _(sym, str) DP_WORKER_CTR_##sym,
    foreach_dp_worker_ctr
#undef _
    DP_WORKER_CTR_END
};
enum dp_qos_ctr {
#define _(sym, str) DP_QOS_CTR_##sym,
    foreach_dp_qos_ctr
#undef _
    DP_QOS_CTR_END
};
enum dp_drop {
#define _(sym, str) DP_DROP_##sym,
    foreach_dp_drop
#undef _
    DP_DROP_COUNT
};

/* each list against dataplane.h: its length, and every column's #define */
_Static_assert(DP_PORT_CTR_END == DP_PORT_CTR_COUNT, "foreach_dp_port_ctr vs DP_PORT_CTR_COUNT");
_Static_assert(DP_NET_CTR_END == DP_NET_CTR_COUNT, "foreach_dp_net_ctr vs DP_NET_CTR_COUNT");
_Static_assert(DP_WORKER_CTR_END == DP_WORKER_CTR_COUNT,
               "foreach_dp_worker_ctr vs DP_WORKER_CTR_COUNT");
_Static_assert(DP_QOS_CTR_END == DP_QOS_CTR_COUNT, "foreach_dp_qos_ctr vs DP_QOS_CTR_COUNT");
#define _(sym, str) _Static_assert(DP_PORT_CTR_##sym == DP_PORT_##sym, "DP_PORT_" #sym);
foreach_dp_port_ctr
#undef _
#define _(sym, str) _Static_assert(DP_NET_CTR_##sym == DP_NET_##sym, "DP_NET_" #sym);
foreach_dp_net_ctr
#undef _
#define _(sym, str) _Static_assert(DP_WORKER_CTR_##sym == DP_WORKER_##sym, "DP_WORKER_" #sym);
foreach_dp_worker_ctr
#undef _
#define _(sym, str) _Static_assert(DP_QOS_CTR_##sym == DP_QOS_##sym, "DP_QOS_" #sym);
foreach_dp_qos_ctr
#undef _

// clang-format on

/* latency histogram (DP_BLOCK_LAT), per plane: DP_LAT_BUCKETS counts, the
 * first DP_LAT_BOUNDS of them with an upper bound (DP_LAT_BOUNDS_NS,
 * dp_qos.h), the last unbounded; then the sum of the latencies */
#define DP_LAT_BOUNDS (DP_LAT_BUCKETS - 1)
    _Static_assert(DP_LAT_SUM == DP_LAT_BUCKETS && DP_LAT_ROW == DP_LAT_BUCKETS + 1,
                   "latency row: the buckets, then the sum");

#endif /* DP_COUNTERS_H */
