/*
 * dp_qos.h - network planes on shared ports: per-plane egress queues, a
 * strict-priority scheduler under a per-port token-bucket shaper with
 * per-plane guaranteed / maximum rates, and per-plane latency histograms.
 *
 *   tx_flush(uplink) ──► classify by plane ──► q[plane] (bounded rte_ring,
 *                    │                          overflow dropped + counted)
 *                    └─► the core's own frames (ARP) ──► own (no plane)
 *   owner worker, every loop: dp_qos_dequeue ─► own frames first, outside
 *       every plane's limits (charged to the port's bucket, into debt if
 *       need be); pass 1: planes with a guaranteed rate, up to it (ahead of
 *       a higher plane that has frames waiting only with what the guarantee
 *       owes them: see dp_qos_dequeue); pass 2: strict priority, each plane
 *       up to its maximum, all under the port's shaper ─► tx; the worker
 *       counts a frame sent once the driver has taken it
 *
 * Packets of one plane leave in the order they were queued: a packet that
 * does not fit the tokens yet waits as the plane's head.
 */
#ifndef DP_QOS_H
#define DP_QOS_H

#include <stdint.h>
#include <rte_mbuf.h>
#include <rte_mbuf_dyn.h>
#include <rte_ring.h>

#include "dataplane.h"
#include "dp_counters.h"

/* DP_WIRE_OVERHEAD (dataplane.h): on the wire per frame besides pkt_len */
/* latency buckets, upper bounds in ns (1-2-5 steps, 1 us .. 100 ms); the
 * last bucket (DP_LAT_BOUNDS, dp_counters.h) has none */
#define DP_LAT_BOUNDS_NS                                                                      \
    1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000, 500000, 1000000, 2000000, 5000000, \
        10000000, 20000000, 50000000, 100000000
_Static_assert(sizeof((uint64_t[]){DP_LAT_BOUNDS_NS}) == DP_LAT_BOUNDS * sizeof(uint64_t),
               "DP_LAT_BOUNDS_NS: one bound per bucket but the last");
_Static_assert(DP_LAT_BOUNDS == 16, "dp_lat_bucket's 4-step search is written for 16 bounds");

/* per mbuf: when it was received and which plane it belongs to */
struct dp_meta {
    uint64_t rx_tsc;
    uint8_t plane;
    uint8_t guar; /* let out within its plane's guarantee (charged to it): dp_qos.c */
};
extern int dp_meta_off;
/* plane of the frames the core makes itself (ARP requests and replies): on a
 * shaped port they queue in a queue of their own that goes before every
 * plane's (q->own); counted in no plane, kept out of the latency histograms */
#define DP_PLANE_OWN 0x80
/* frames the own queue holds (ARP is rate-limited well below that) */
#define DP_QOS_OWN_LEN 256
#define DP_META(m) RTE_MBUF_DYNFIELD((m), dp_meta_off, struct dp_meta *)

/* tokens are bytes in fixed point, DP_TOK_SHIFT fractional bits; rates
 * bytes per 2^DP_TOK_SHIFT TSC cycles. 32 bits: a rate's step is under
 * 6 bit/s at a 3 GHz TSC (20 bits made it about 18 kbit/s at 2.4 GHz, and a
 * rate under half a step 0: unshaped); a DP_SHAPER_BURST_MAX (64 MiB) burst is
 * 2^58, within an int64_t. */
#define DP_TOK_SHIFT 32

/* plane settings the workers read (plain aligned words: no torn reads) */
struct dp_plane_rt {
    int used;
    int priority;
    uint64_t min_bytes_tsc; /* guaranteed rate, bytes per 2^DP_TOK_SHIFT TSC cycles */
    uint64_t max_bytes_tsc; /* maximum rate, same unit; 0 = none */
    uint32_t queue_len;
    int outer_tos; /* -1: copy the inner DSCP */
};

/* per shaped port: allocated by control, scheduled by the port's worker */
struct dp_qos {
    struct rte_ring *q[DP_MAX_PLANES];
    struct rte_mbuf *head[DP_MAX_PLANES];
    uint64_t rate_bytes_tsc; /* port shaper, bytes per 2^DP_TOK_SHIFT TSC cycles; 0 = off */
    int64_t burst_bytes;     /* bytes; it and the rate also set in place (dp_qos_set_rate) */
    int64_t tokens;          /* port bucket, bytes << DP_TOK_SHIFT */
    int64_t ptok_max[DP_MAX_PLANES];
    int64_t ptok_min[DP_MAX_PLANES];
    /* what a guaranteed plane is owed: earned at its guaranteed rate while
     * it had frames waiting, less what it sent, at least 0 and at most one
     * burst; 0 while its queue is empty. The credit it may use ahead of a
     * higher plane that has frames waiting. */
    int64_t ptok_owed[DP_MAX_PLANES];
    uint64_t last_tsc;
    /* port debt a guaranteed plane took by borrowing (bytes << DP_TOK_SHIFT):
     * planes above lent_rank (their index in dp_qg.order) do not wait for
     * it; 0 once the bucket is back at 0 */
    int64_t lent;
    int lent_rank;
    uint8_t waited;       /* planes with frames left when the scheduler last ran */
    struct rte_ring *own; /* the core's own frames (DP_PLANE_OWN) */
};

struct dp_qos_global {
    struct dp_plane_rt plane[DP_MAX_PLANES];
    uint8_t order[DP_MAX_PLANES]; /* planes by priority, highest first */
    int n_order;
    int priority_on; /* 0: one FIFO (the plane 0 queue) for all */
    int latency_on;
    int8_t dscp_plane[64]; /* inner DSCP -> plane, -1: by network */
    /* the two above for the pipeline, one word per frame: for a network of
     * plane p and an inner DSCP d, [p][d] = the frame's plane << 8 | the
     * outer TOS byte (tos_map_rebuild after either changes) */
    uint16_t tos_map[DP_MAX_PLANES][64];
    uint64_t lat_bound_tsc[DP_LAT_BOUNDS];
};
extern struct dp_qos_global dp_qg;

/*
 * control: called by the control side (dp_plane.c, dp_port.c, dp_eal.c),
 * which has checked the arguments; nothing here calls back. A failure is a
 * return value (NULL, a negative errno) that the caller turns into its
 * message (dp_fail), so this module builds alone (bench/sched_cmp.c).
 */
/* register the mbuf metadata field, plane 0's defaults; 0 or -rte_errno */
int dp_qos_init(void);
/* a plane's priority, rates, queue length and marking (c->worker and
 * c->rx_queue are the poll lists' business, not the scheduler's) */
void dp_qos_plane_set(int plane, const struct dp_plane_conf *c);
void dp_qos_set_mode(int priority_on, int latency_on);
/* frames of inner DSCP dscp go to plane (-1: their network's) */
void dp_qos_set_dscp_plane(int dscp, int plane);
/* the queues of a shaped port; NULL when out of memory */
struct dp_qos *dp_qos_new(int port, uint64_t rate_bps, uint32_t burst_bytes);
void dp_qos_set_rate(struct dp_qos *q, uint64_t rate_bps, uint32_t burst_bytes);
/* frees the queues and what they hold; returns how many frames that was */
unsigned dp_qos_free(struct dp_qos *q);
/* the same, each freed frame of a plane also counted dropped against its
 * plane in ctr (one port's row: [plane][DP_QOS_*]) */
unsigned dp_qos_free_counted(struct dp_qos *q, uint64_t (*ctr)[DP_QOS_CTR_COUNT]);
unsigned dp_qos_queued(const struct dp_qos *q, int plane);
uint64_t dp_bps_to_tsc_rate(uint64_t bps);
/* the latency buckets' upper bounds, ns (DP_LAT_BOUNDS_NS) */
extern const uint64_t dp_lat_bounds_ns[DP_LAT_BOUNDS];

/* worker: queue n frames received at rx_tsc for port pi (freed and
 * counted, and shown to a capture of its drops, when their queue is full) */
void dp_qos_enqueue(struct dp_qos *q, uint16_t pi, struct rte_mbuf **m, uint16_t n, uint64_t rx_tsc,
                    uint64_t (*ctr)[DP_QOS_CTR_COUNT], uint64_t *queue_full);
/* worker: what the scheduler lets go now, at most max frames. Frames of a
 * plane are counted sent in ctr when it is given; NULL: the caller counts
 * them once its driver has taken them (dp_qos_account) */
uint16_t dp_qos_dequeue(struct dp_qos *q, struct rte_mbuf **out, uint16_t max, uint64_t now,
                        uint64_t (*ctr)[DP_QOS_CTR_COUNT]);
/* worker (the one that dequeued): the wire bytes of a frame of plane
 * (DP_PLANE_OWN: the core's own) let out that never went on the wire (the
 * driver refused or dropped it), back into the port's bucket and the
 * plane's own it was charged to (its maximum; its guarantee if guar) */
void dp_qos_refund(struct dp_qos *q, unsigned plane, uint64_t wire_bytes, int guar);

/* histogram bucket of a latency d (TSC cycles): a 4-step search of the 16 bounds */
static inline unsigned
dp_lat_bucket(uint64_t d)
{
    const uint64_t *b = dp_qg.lat_bound_tsc;
    unsigned i = (d > b[7]) ? 8 : 0;
    i += (d > b[i + 3]) ? 4 : 0;
    i += (d > b[i + 1]) ? 2 : 0;
    i += (d > b[i]) ? 1 : 0;
    i += (i == DP_LAT_BOUNDS - 1 && d > b[DP_LAT_BOUNDS - 1]) ? 1 : 0;
    return i;
}

/* what the accounting needs of a frame the scheduler let out, read before
 * the frame is handed to the driver (which may free it at once) */
struct dp_qos_out {
    uint64_t rx_tsc;
    uint32_t len;   /* pkt_len */
    uint16_t plane; /* DP_PLANE_OWN: the core's own */
    uint16_t guar;  /* charged to its plane's guarantee (dp_meta.guar) */
};

/*
 * n frames the scheduler let out at now, of which the driver took the first
 * `taken`: those are counted sent against their plane (ctr: the port's row)
 * and, with latency on, their time from rx to now goes into the per-plane
 * histograms; the rest, which the driver refused, and those it took but
 * dropped (o[i]'s bit set in `lost`: a kernel port's frame too long for
 * its interface), are counted dropped against their plane (and as drops,
 * with their reason, where they were refused), and their tokens go back to
 * the port's bucket. Runs of frames with
 * the same (plane, bucket) — the common case in a burst — are summed in
 * registers and written once. Own frames are counted in no plane.
 */
static inline void
dp_qos_account(struct dp_qos *q, uint64_t (*ctr)[DP_QOS_CTR_COUNT], uint64_t (*hist)[DP_LAT_ROW],
               const struct dp_qos_out *o, uint16_t n, uint16_t taken, uint64_t lost, uint64_t now)
{
    const uint64_t *bound = dp_qg.lat_bound_tsc;
    int lat = dp_qg.latency_on;
    unsigned cp = 0, cb = 0;
    uint64_t lo = 0, hi = bound[0]; /* (lo, hi]: the current bucket's range */
    uint64_t run = 0, sum = 0;
    for (uint16_t i = 0; i < taken; i++) {
        unsigned p = o[i].plane;
        if (unlikely((lost >> i) & 1)) {
            dp_qos_refund(q, p, o[i].len + DP_WIRE_OVERHEAD, o[i].guar);
            if (p < DP_MAX_PLANES)
                ctr[p][DP_QOS_DROPPED]++;
            continue;
        }
        if (unlikely(p >= DP_MAX_PLANES))
            continue; /* DP_PLANE_OWN */
        ctr[p][DP_QOS_SENT]++;
        ctr[p][DP_QOS_SENT_BYTES] += o[i].len;
        if (!lat)
            continue;
        uint64_t d = now - o[i].rx_tsc;
        /* frames of a burst mostly share a bucket: test it before searching */
        unsigned b = cb;
        if (unlikely(d > hi || (d <= lo && cb != 0))) {
            b = dp_lat_bucket(d);
            lo = b ? bound[b - 1] : 0;
            hi = b < DP_LAT_BOUNDS ? bound[b] : UINT64_MAX;
        }
        if (unlikely(p != cp || b != cb)) {
            if (run) {
                hist[cp][cb] += run;
                hist[cp][DP_LAT_SUM] += sum;
            }
            cp = p;
            cb = b;
            run = 0;
            sum = 0;
        }
        run++;
        sum += d;
    }
    if (run) {
        hist[cp][cb] += run;
        hist[cp][DP_LAT_SUM] += sum;
    }
    for (uint16_t i = taken; i < n; i++) {
        dp_qos_refund(q, o[i].plane, o[i].len + DP_WIRE_OVERHEAD, o[i].guar);
        if (o[i].plane < DP_MAX_PLANES)
            ctr[o[i].plane][DP_QOS_DROPPED]++;
    }
}

#endif
