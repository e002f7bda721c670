/*
 * dp_wctx.h - a worker's context: its counter rows, its snapshot of the
 * VTEP, its tx buffers and its caches of the FDB and VTEP tables; drop(),
 * the one way the pipeline gives up on a frame.
 *
 * Part of the one translation unit dp_pipeline.c: static inline code, so
 * the compiler sees the whole worker loop at once (and builds the same code
 * as when it was one file).
 */
#ifndef DP_WCTX_H
#define DP_WCTX_H

#ifndef DP_PIPELINE_TU
#error "dp_wctx.h is included by dp_pipeline.c only"
#endif

#define DP_NO_PORT UINT16_MAX /* dp_wctx.at_port: no port to tell a drop of */

struct dp_wctx {
    int id;
    uint64_t *drop; /* this worker's drop counters */
    uint64_t (*port)[DP_PORT_CTR_COUNT];
    uint64_t (*net)[DP_NET_CTR_COUNT];
    uint64_t (*qos)[DP_MAX_PLANES][DP_QOS_CTR_COUNT]; /* per port */
    uint64_t (*lat)[DP_LAT_ROW];                      /* per plane */
    uint64_t *wc;                                     /* this worker's own counters */
    const struct dp_vtep *vtep;                       /* snapshot for this loop iteration */
    const struct dp_ftab *fdb;                        /* the FDB table, for this loop iteration */
    uint64_t rx_tsc;                                  /* when the burst in hand was received */
    uint32_t tbl_gen;                                 /* dp.tbl_gen the cache epoch belongs to */
    uint32_t epoch;                                   /* current VTEP cache epoch, never 0 */
    uint32_t fc_rest;   /* bursts left that skip the FDB cache (dp_lookup.h) */
    uint32_t fc_seen;   /* FDB cache lookups in the current window */
    uint32_t fc_missed; /* ... and misses */
    uint16_t n_held;    /* frames in held[] (dp_encap.h: read per frame encapsulated) */
    uint16_t at_port;   /* the port a drop() is told of to a capture: the burst's
                         * (DP_NO_PORT: none) */
    /* it has received from a kernel port: only such frames carry a partial
     * checksum (dp_csum_partial), which an ethdev tx must finish (port_tx) */
    uint8_t kernel_rx;
    uint16_t n_dirty;
    uint16_t dirty[DP_MAX_PORTS];
    uint8_t queued[DP_MAX_PORTS];
    struct dp_txbuf tx[DP_MAX_PORTS];
    /* rx bursts on a pod's shared memory land here first (shm_rx): all NULL
     * between bursts, so a cut burst's finished frames are known */
    struct rte_mbuf *shm_pkts[DP_BURST];
    struct dp_fdb_cent fcache[DP_FDB_CACHE_SIZE] __rte_cache_aligned;
    struct dp_fdb_cent vcache[DP_VTEP_CACHE_SIZE];
    /* learning: when a source MAC was last reported, from which VTEP and
     * whether as new (or as learned, heard again), by the low bits of its
     * key's hash; the reports of each kind left in the current millisecond
     * (dp_decap.h, learn_src) */
    struct {
        uint64_t key, tsc;
        uint32_t vtep_be;
        uint32_t as_new;
    } heard[DP_LEARN_HEARD_SLOTS];
    struct dp_report_budget {
        uint64_t ms;   /* when the current millisecond began */
        uint32_t left; /* reports left in it */
    } learn_budget, heard_budget;
    /* frames waiting for their tunnel's next hop (dp_encap.h, hold), oldest
     * first; kept by value, not by the network's or tunnel's pointer, which
     * may be freed while they wait */
    uint64_t hold_tsc; /* DP_HOLD_MS in TSC cycles */
    struct dp_held {
        struct rte_mbuf *m;
        uint64_t tsc;     /* when it was received */
        uint32_t vtep_ip; /* the tunnel's remote VTEP, host order */
        uint32_t vni;     /* the network's */
        uint16_t net, ti;
        uint16_t in_port; /* the port it came in by: a drop of it is told of that, */
        uint16_t in_gen;  /* while dp.port_gen says it is still that port */
    } held[DP_HOLD_MAX];
    /* per tunnel: the template (unresolved) whose held frames waited out
     * DP_HOLD_MS, and until when frames to it are not held again (hold):
     * DP_HOLD_GIVE_UP times that, or until a new template (its next hop
     * answered) replaces it. The template is compared, never dereferenced; its VTEP
     * and the time bound keep a freed one's address, given to another
     * tunnel, from counting. */
    struct dp_gave_up {
        const struct dp_tunnel *t;
        uint8_t gen; /* t's, when given up on */
        uint32_t ip;
        uint64_t until; /* TSC */
    } gave_up[DP_MAX_TUNNELS];
};

static inline void
drop(struct dp_wctx *w, struct rte_mbuf *m, enum dp_drop why)
{
    /* a capture of drops has it before it is counted (not a frame cut
     * short by a fault on a pod's shared memory: its data is not to be
     * read again) */
    if (why != DP_DROP_SHM_FAULT && w->at_port != DP_NO_PORT)
        dp_capture_tap_drop(w->at_port, &m, 1, why);
    w->drop[why]++;
    rte_pktmbuf_free(m);
}

#endif /* DP_WCTX_H */
