/*
 * dp_gso.h - segmentation of GSO super-frames (TCP, and UDP from
 * UDP_SEGMENT sockets).
 *
 * A pod with TSO/GSO on hands the kernel port TCP super-frames of up to
 * 64 KiB (the virtio-net header says gso_type TCPV4/TCPV6 and gso_size, the
 * MSS); an application using UDP_SEGMENT (QUIC, media) hands it UDP ones
 * (gso_type UDP_L4, gso_size the datagram size). The AF_PACKET driver reads
 * them whole into an mbuf chain marked the DPDK way:
 *
 *   ol_flags  RTE_MBUF_F_TX_TCP_SEG | RTE_MBUF_F_TX_TCP_CKSUM  (or the UDP
 *             pair) | RTE_MBUF_F_TX_IPV4 | RTE_MBUF_F_TX_IP_CKSUM (or IPV6)
 *   tso_segsz the MSS (payload bytes per segment)
 *   l2_len, l3_len, l4_len   Ethernet (+ VLAN tags), IP (+ options or
 *             extension headers), TCP (+ options) or UDP (8)
 *
 * A kernel VXLAN device on a veth of the same machine hands the uplink
 * VXLAN-encapsulated super-frames (UDP-tunnel GSO, described to a packet
 * socket as plain TCP GSO whose checksum starts at the inner TCP header);
 * those are marked RTE_MBUF_F_TX_TUNNEL_VXLAN | RTE_MBUF_F_TX_OUTER_IPV4
 * with outer_l2_len, outer_l3_len (outer Ethernet, IPv4) and l2_len = outer
 * UDP + VXLAN + inner Ethernet. The decapsulation strips the tunnel marks
 * and carries the inner super-frame on whole (gso_decap); one cut while
 * still encapsulated has the outer IPv4 length, id and checksum and the
 * outer UDP length fixed per segment as well, the outer UDP checksum 0.
 *
 * The pipeline carries such a frame whole to a kernel port (which writes it
 * with the same virtio-net header: the kernel or the receiving stack takes it
 * as it is) and cuts it here into MSS-sized frames only where it leaves for
 * a port that cannot take it: the underlay (before VXLAN encapsulation, as a
 * NIC would before the wire) and DPDK ethdev ports.
 *
 * Each segment is a fresh mbuf (a chain for a jumbo MSS) holding a copy of
 * the headers and its slice of the payload, with IPv4 total length, id
 * (first id + segment number) and header checksum, IPv6 payload length,
 * TCP sequence number and flags (FIN and PSH on the last segment only, CWR
 * on the first only) or UDP length fixed and the TCP/UDP checksum computed
 * in full (RFC 793 / 768 pseudo-header), so a segment is a valid frame on
 * any wire.
 */
#ifndef DP_GSO_H
#define DP_GSO_H

#include <stdint.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

#include "dp_gso_limits.h" /* DP_GSO_MAX_SEGS */

/* a super-frame to be segmented (or carried whole)? */
static inline int
dp_gso_frame(const struct rte_mbuf *m)
{
    return (m->ol_flags & (RTE_MBUF_F_TX_TCP_SEG | RTE_MBUF_F_TX_UDP_SEG)) != 0;
}

/*
 * Cut m into at most max segments from mp, written to out. m is left as it
 * is (the caller frees it). Returns the number of segments, -ENOMEM when mp
 * ran dry (nothing allocated is kept) or -EINVAL when m's headers do not
 * describe a TCP or UDP frame that can be cut (lengths past the frame, an MSS of 0,
 * more than max segments).
 */
int dp_gso_segment(struct rte_mbuf *m, struct rte_mempool *mp, struct rte_mbuf **out, unsigned max);

#endif /* DP_GSO_H */
