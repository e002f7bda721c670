/*
 * dp_qos.h - network planes on shared ports: per-plane egress queues, a
 * strict-priority scheduler under a per-port token-bucket shaper with
 * per-plane guaranteed / maximum rates, and per-plane latency histograms.
 *
 *   tx_flush(uplink) ──► classify by plane ──► q[plane] (bounded rte_ring,
 *                                               overflow dropped + counted)
 *   owner worker, every loop: dp_qos_dequeue ─► pass 1: planes with a
 *       guaranteed rate, up to it; pass 2: strict priority, each plane up
 *       to its maximum, all under the port's shaper ─► tx
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
};
extern int dp_meta_off;
/* plane of the frames the core makes itself (ARP requests): plane 0's queue
 * (the low bits), kept out of the latency histograms */
#define DP_PLANE_OWN 0x80
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
    uint64_t last_tsc;
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
unsigned dp_qos_queued(const struct dp_qos *q, int plane);
uint64_t dp_bps_to_tsc_rate(uint64_t bps);
/* the latency buckets' upper bounds, ns (DP_LAT_BOUNDS_NS) */
extern const uint64_t dp_lat_bounds_ns[DP_LAT_BOUNDS];

/* worker: queue n frames received at rx_tsc (freed and counted when their
 * queue is full) */
void dp_qos_enqueue(struct dp_qos *q, struct rte_mbuf **m, uint16_t n, uint64_t rx_tsc,
                    uint64_t (*ctr)[DP_QOS_CTR_COUNT], uint64_t *queue_full);
/* worker: what the scheduler lets go now, at most max frames */
uint16_t dp_qos_dequeue(struct dp_qos *q, struct rte_mbuf **out, uint16_t max, uint64_t now,
                        uint64_t (*ctr)[DP_QOS_CTR_COUNT]);

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

/*
 * Latencies of n frames from rx to now into the worker's per-plane
 * histograms. Runs of frames with the same (plane, bucket) — the common case
 * in a burst — are summed in registers and written once.
 */
static inline void
dp_lat_record_burst(uint64_t (*hist)[DP_LAT_ROW], struct rte_mbuf *const *m, uint16_t n,
                    uint64_t now)
{
    const uint64_t *bound = dp_qg.lat_bound_tsc;
    unsigned cp = 0, cb = 0;
    uint64_t lo = 0, hi = bound[0]; /* (lo, hi]: the current bucket's range */
    uint64_t run = 0, sum = 0;
    for (uint16_t i = 0; i < n; i++) {
        const struct dp_meta *md = DP_META(m[i]);
        uint64_t d = now - md->rx_tsc;
        unsigned p = md->plane;
        if (unlikely(p >= DP_MAX_PLANES))
            continue; /* DP_PLANE_OWN */
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
}

#endif
