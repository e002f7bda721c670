/*
 * afpacket.h - native AF_PACKET port driver for kernel interfaces, and the
 * partial-checksum metadata its frames carry through the pipeline.
 *
 * The fallback driver: no hugepages, no NIC. rx uses a TPACKET_V2 mmap ring
 * (per-frame status: a lone frame is ours as soon as the kernel wrote it),
 * tx a TPACKET_V2 mmap tx ring with PACKET_QDISC_BYPASS; both sockets carry
 * the virtio-net header (PACKET_VNET_HDR), so checksum offload and TCP
 * segmentation offload (GSO super-frames, see dp_gso.h) cross the boundary
 * both ways. Frames come in and go out as the same rte_mbufs the
 * pipeline uses, so the pipeline does not care which driver a port has.
 *
 * Threading: one thread calls rx_burst, one thread at a time calls tx_burst
 * (callers serialise tx with their own lock if several workers transmit).
 */
#ifndef DP_AFPACKET_H
#define DP_AFPACKET_H

#include <stdint.h>
#include <rte_mbuf.h>
#include <rte_mbuf_dyn.h>
#include <rte_mempool.h>

struct dp_afp;

/* drops and kernel ring statistics of one port (read by the control thread) */
struct dp_afp_stats {
    uint64_t oversize;    /* longer than the ring frame the port's MTU sized */
    uint64_t truncated;   /* runts and frames the kernel cut short */
    uint64_t no_mbuf;     /* no mbuf for a segment of a long frame */
    uint64_t kernel;      /* the kernel's own ring drops (PACKET_STATISTICS) */
    uint64_t gso;         /* a GSO frame not carried: UFO, headers out of place,
                           * more than DP_GSO_MAX_SEGS segments */
    uint64_t tx_error;    /* a large or GSO frame the kernel refused to send */
    uint64_t kernel_tx;   /* the kernel's drops on transmit (tx_dropped) */
    uint64_t tx_oversize; /* longer than the interface's MTU: not handed to it */
    uint64_t tx_down;     /* queued while the interface was set down: not sent late */
};

/*
 * Partial checksum (the kernel's CHECKSUM_PARTIAL, virtio-net NEEDS_CSUM):
 * the frame's L4 checksum field, csum_off bytes after csum_start, holds the
 * pseudo-header sum; the checksum still has to be computed from csum_start
 * to the end of the frame. Carried in an mbuf dynamic flag and field; the
 * field stores csum_start relative to the start of the first segment's
 * buffer (data_off + offset in the frame), so it stays right when the
 * pipeline prepends or strips outer headers.
 */
struct dp_csum_meta {
    uint16_t start; /* data_off + csum_start */
    uint16_t off;   /* checksum field offset from csum_start */
};
extern int dp_csum_dynfield;
extern uint64_t dp_csum_dynflag;

/* Register the dynamic flag and field. Returns 0 or a negative errno. */
int dp_csum_init(void);

/* Free the segments from s to the chain's end: a tail, not a packet (no
 * packet header to check: rte_pktmbuf_free is for whole chains). */
static inline void
dp_free_segs(struct rte_mbuf *s)
{
    while (s != NULL) {
        struct rte_mbuf *next = s->next;
        rte_pktmbuf_free_seg(s);
        s = next;
    }
}

static inline int
dp_csum_partial(const struct rte_mbuf *m)
{
    return (m->ol_flags & dp_csum_dynflag) != 0;
}

static inline struct dp_csum_meta *
dp_csum_meta(struct rte_mbuf *m)
{
    return RTE_MBUF_DYNFIELD(m, dp_csum_dynfield, struct dp_csum_meta *);
}

/* Compute the partial checksum in software and clear the flag (for a port
 * that cannot take it partial, or before a frame is shared). */
void dp_csum_complete(struct rte_mbuf *m);

/* Open ifname. frames: ring size in 2 KiB slots (power of two, >= 64); a
 * port whose MTU needs larger ring frames gets fewer, larger ones in the same
 * memory (at least 64). Returns 0, or dp_fail(-errno, ...) saying why. */
int dp_afp_open(const char *ifname, unsigned frames, struct rte_mempool *mp, struct dp_afp **out);
/* Receive up to n frames into mbufs from mp (chained when longer than a
 * segment; a TCP GSO super-frame whole, marked as dp_gso.h says). Never
 * blocks. */
uint16_t dp_afp_rx_burst(struct dp_afp *a, struct rte_mbuf **pkts, uint16_t n);
/* Queue up to n mbufs for transmission, kick the kernel once (and once more
 * per frame larger than a ring frame: GSO super-frames, sent with sendmsg).
 * Sent mbufs are freed; returns how many were taken (the caller frees and
 * counts the rest). Of the taken, *lost frames (*lost_bytes bytes) were
 * dropped here and counted by the port (tx_oversize, tx_error: too long
 * for the interface, or a super-frame the kernel refused): not sent; bit i
 * of *lost_mask is set for each, pkts[i] (n <= 64). */
uint16_t dp_afp_tx_burst(struct dp_afp *a, struct rte_mbuf **pkts, uint16_t n, uint16_t *lost,
                         uint64_t *lost_bytes, uint64_t *lost_mask);
/* Send runs of datagrams of one UDP flow (all of one size but the last) as
 * one UDP GSO frame each: the VXLAN frames of a cut super-frame leave the
 * uplink as one skb, which the kernel or the NIC cuts back into the same
 * datagrams (a veth passes it whole: its peer's stack cuts it on receive).
 * Off when the port opens; the service turns it on for a kernel-interface
 * uplink (after switching a veth's tx-udp-segmentation off). */
void dp_afp_set_udp_gso(struct dp_afp *a, int on);
/* The tunnel tap: a tap named tap (created; it goes when the port closes)
 * taking UDP-tunnel GSO frames (Linux >= 6.17: -EOPNOTSUPP before). A
 * VXLAN-encapsulated super-frame given to tx_burst is written to it whole
 * (dp_gso.h); whoever opens it redirects the tap's ingress to this port's
 * interface's egress (tc mirred) before sending such frames. */
int dp_afp_tunnel_open(struct dp_afp *a, const char *tap);
/* The tunnel tap open (taking frames or not) */
int dp_afp_has_tunnel(const struct dp_afp *a);
/* The tunnel tap open and taking frames: not once it refused a write for
 * good (deleted or down: that frame is counted tx_error) */
int dp_afp_tunnel_ok(const struct dp_afp *a);
/* VXLAN super-frames sent whole through the tunnel tap so far */
uint64_t dp_afp_tunneled(const struct dp_afp *a);
/* Take the tunnel tap away from tx_burst: its fd, for the caller to close
 * once no tx_burst that may have read it still runs (a grace period); -1
 * if there was none */
int dp_afp_tunnel_detach(struct dp_afp *a);
/* Drops so far; reads (and so resets) the kernel's counters: control thread,
 * one caller at a time. */
void dp_afp_stats(struct dp_afp *a, struct dp_afp_stats *st);
/* Largest frame (Ethernet header included) the port carries. */
uint32_t dp_afp_max_frame(const struct dp_afp *a);
void dp_afp_mac(const struct dp_afp *a, uint8_t mac[6]);
/* The index of the interface the port opened (the device it reads and
 * writes, whatever holds its name now). */
int dp_afp_ifindex(const struct dp_afp *a);
/* The rx socket, readable (poll) when a frame waits in the ring: what an
 * idle worker sleeps on. */
int dp_afp_rx_fd(const struct dp_afp *a);
void dp_afp_close(struct dp_afp *a);

#endif
