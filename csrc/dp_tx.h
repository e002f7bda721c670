/*
 * dp_tx.h - tx: per (worker, port) buffers flushed once per burst, to the
 * driver or, on a shaped port, into its plane queues (dp_qos.c) whose
 * scheduler the port's worker runs; latency per plane recorded at tx.
 *
 * Part of the one translation unit dp_pipeline.c: static inline code, so
 * the compiler sees the whole worker loop at once (and builds the same code
 * as when it was one file).
 */
#ifndef DP_TX_H
#define DP_TX_H

#ifndef DP_PIPELINE_TU
#error "dp_tx.h is included by dp_pipeline.c only"
#endif

#include "dp_gso.h"

/* a plane's bit in dp_txbuf.planes (DP_PLANE_OWN and the like: bit 8) */
static __rte_always_inline uint16_t
plane_bit(unsigned plane)
{
    return (uint16_t)(1u << (plane < DP_MAX_PLANES ? plane : DP_MAX_PLANES));
}

/* n frames of `bytes` bytes handed to port pi's driver, which took `sent`:
 * the rest is freed and counted */
static inline void
tx_done(struct dp_wctx *w, uint16_t pi, struct rte_mbuf **m, uint16_t n, uint16_t sent,
        uint64_t bytes)
{
    if (unlikely(sent < n)) {
        for (uint16_t i = sent; i < n; i++)
            bytes -= m[i]->pkt_len;
        dp_capture_tap_drop(pi, m + sent, n - sent, DP_DROP_TX_FULL);
        w->drop[DP_DROP_TX_FULL] += n - sent;
        rte_pktmbuf_free_bulk(m + sent, n - sent);
    }
    w->port[pi][DP_PORT_TX_PACKETS] += sent;
    w->port[pi][DP_PORT_TX_BYTES] += bytes;
}

/* The frames of m that an af_xdp port's interface cannot take whole are
 * dropped and counted (kport_tx_oversize), as for AF_PACKET ports: one
 * longer than its MTU allows, which the kernel would drop uncounted, or in
 * several segments, of which net_af_xdp would send the first segment's
 * buffer read on past its end. The others stay in m, in order; *bytes
 * loses the dropped ones'. How many stay. */
static __rte_noinline uint16_t
kif_fit(struct dp_wctx *w, const struct dp_port *p, uint16_t pi, struct rte_mbuf **m, uint16_t n,
        uint64_t *bytes)
{
    const uint32_t max = __atomic_load_n(&p->kif_max_frame, __ATOMIC_RELAXED);
    uint16_t k = 0;
    for (uint16_t i = 0; i < n; i++) {
        if (likely(m[i]->pkt_len <= max && m[i]->nb_segs == 1)) {
            m[k++] = m[i];
            continue;
        }
        *bytes -= m[i]->pkt_len;
        dp_capture_tap_drop(pi, &m[i], 1, DP_DROP_KPORT_TX_OVERSIZE);
        w->drop[DP_DROP_KPORT_TX_OVERSIZE]++;
        rte_pktmbuf_free(m[i]);
    }
    return k;
}

/* a burst on a pod's shared memory cut short by a fault (dp_shm.h): the
 * port is set aside until its retry time (shm_rx) */
static void
shm_cut(struct dp_wctx *w, uint16_t pi)
{
    w->port[pi][DP_PORT_SHM_FAULTS]++;
    atomic_store_explicit(&dp_shm_retry[pi],
                          rte_rdtsc() + rte_get_tsc_hz() / 1000 * DP_SHM_RETRY_MS,
                          memory_order_relaxed);
    atomic_store_explicit(&dp_shm_faulted[pi], 1, memory_order_relaxed);
}

/* tx burst on a pod's shared memory under the fault guard: how many frames
 * the driver took, or -1 when a fault cut the burst short */
static __rte_noinline int
shm_tx_burst(const struct dp_port *p, uint16_t q, int shared, struct rte_mbuf **m, uint16_t n)
{
    sigjmp_buf jb;
    if (sigsetjmp(jb, 0) != 0) {
        if (shared)
            rte_spinlock_unlock(p->tx_lock);
        return -1;
    }
    if (shared)
        rte_spinlock_lock(p->tx_lock);
    dp_shm_jb = &jb;
    uint16_t sent = rte_eth_tx_burst(p->eth_port, q, m, n);
    dp_shm_jb = NULL;
    if (shared)
        rte_spinlock_unlock(p->tx_lock);
    return sent;
}

/* tx to a port on a pod's shared memory (dp_shm.h); returns how many frames
 * the driver took (0 after a fault: none is known to be sent) */
static __rte_noinline uint16_t
shm_tx(struct dp_wctx *w, const struct dp_port *p, uint16_t pi, struct rte_mbuf **m, uint16_t n,
       uint64_t bytes)
{
    if (unlikely(atomic_load_explicit(&dp_shm_faulted[pi], memory_order_relaxed))) {
        w->drop[DP_DROP_SHM_FAULT] += n;
        rte_pktmbuf_free_bulk(m, n);
        return 0;
    }
    /* fewer queues than workers: every worker on queue 0, under the lock */
    const int shared = p->n_txq < dp.n_workers;
    int sent = shm_tx_burst(p, shared ? 0 : (uint16_t)w->id, shared, m, n);
    if (unlikely(sent < 0)) {
        shm_cut(w, pi);
        /* which of the burst's frames the driver had already sent and freed
         * is not known: all count as lost and none is freed here (a few
         * mbufs lost to the pool rather than one freed twice) */
        w->drop[DP_DROP_SHM_FAULT] += n;
        return 0;
    }
    tx_done(w, pi, m, n, (uint16_t)sent, bytes);
    return (uint16_t)sent;
}

_Static_assert(DP_TXBUF <= DP_CAP_HOLD && DP_BURST * 2 <= DP_CAP_HOLD,
               "a tx burst fits the capture's held records");

/* checksums left partial by a kernel peer, finished for an ethdev port, which
 * takes no partial checksum: by the worker that received them (no other has
 * such a frame) - before they go to a shaped port's plane queues too, whose
 * frames another worker may send */
static inline void
csum_finish(const struct dp_wctx *w, struct rte_mbuf **m, uint16_t n)
{
    if (unlikely(w->kernel_rx))
        for (uint16_t i = 0; i < n; i++)
            if (unlikely(dp_csum_partial(m[i])))
                dp_csum_complete(m[i]);
}

/* hand n frames (n <= 64) of `bytes` bytes to port p's driver; what it does
 * not take is freed and counted. Returns how many it took: the first ones
 * of m. A kernel port may still lose some of those (counted under kport_*,
 * not sent): m[i]'s bit in *lost. */
static inline uint16_t
port_tx(struct dp_wctx *w, const struct dp_port *p, uint16_t pi, struct rte_mbuf **m, uint16_t n,
        uint64_t bytes, uint64_t *lost)
{
    RTE_BUILD_BUG_ON(DP_TXBUF > 64 || DP_BURST * 2 > 64); /* the bits of *lost */
    uint16_t sent;
    /* copied before the driver may free them, handed to the capture once
     * it says which it took (the first `sent`): a frame it refused never
     * left, and is not shown leaving */
    struct dp_cap_held cap;
    dp_capture_tap_tx(pi, m, n, &cap);
    *lost = 0;
    if (p->driver == DP_DRV_ETHDEV) {
        csum_finish(w, m, n);
        if (unlikely(p->shm)) {
            sent = shm_tx(w, p, pi, m, n, bytes);
            dp_capture_tx_done(&cap, sent, 0);
            return sent;
        }
        /* a queue per worker, or queue 0 shared by all under the port's
         * lock (worker 0 too: lock-free it would race the others there) */
        if (likely(p->n_txq >= dp.n_workers)) {
            sent = rte_eth_tx_burst(p->eth_port, (uint16_t)w->id, m, n);
        } else {
            rte_spinlock_lock(p->tx_lock);
            sent = rte_eth_tx_burst(p->eth_port, 0, m, n);
            rte_spinlock_unlock(p->tx_lock);
        }
    } else {
        uint16_t nlost;
        uint64_t lost_bytes;
        rte_spinlock_lock(p->tx_lock);
        sent = dp_afp_tx_burst(p->afp, m, n, &nlost, &lost_bytes, lost);
        rte_spinlock_unlock(p->tx_lock);
        /* taken but not sent: the port's tx_oversize / tx_error (kport_*) */
        tx_done(w, pi, m, n, sent, bytes);
        w->port[pi][DP_PORT_TX_PACKETS] -= nlost;
        w->port[pi][DP_PORT_TX_BYTES] -= lost_bytes;
        dp_capture_tx_done(&cap, sent, *lost);
        return sent;
    }
    tx_done(w, pi, m, n, sent, bytes);
    dp_capture_tx_done(&cap, sent, 0);
    return sent;
}

static __rte_always_inline void
lat_add(struct dp_wctx *w, unsigned plane, unsigned bucket, uint64_t d, uint64_t n)
{
    if (plane < DP_MAX_PLANES) { /* not a control-plane frame of our own */
        w->lat[plane][bucket] += n;
        w->lat[plane][DP_LAT_SUM] += n * d;
    }
}

/*
 * n frames to unshaped port p, with the time from rx to tx per plane of
 * those that left: the driver took them (the first `sent`) and did not drop
 * them (lost). They all came in with the burst in hand (tx buffers are
 * flushed at the end of every burst), so they share one latency and one
 * bucket; frames of one plane (`planes`: the buffer's plane bits) are
 * counted at once, a mix by each frame's plane, read before the driver may
 * free the frame.
 */
static inline void
port_tx_timed(struct dp_wctx *w, const struct dp_port *p, uint16_t pi, struct rte_mbuf **m,
              uint16_t n, uint64_t bytes, uint16_t planes)
{
    uint64_t lost;
    if (!dp_qg.latency_on) {
        (void)port_tx(w, p, pi, m, n, bytes, &lost);
        return;
    }
    uint64_t d = rte_rdtsc() - w->rx_tsc;
    unsigned b = dp_lat_bucket(d);
    if (likely(planes != 0 && (planes & (planes - 1)) == 0)) {
        uint16_t sent = port_tx(w, p, pi, m, n, bytes, &lost);
        lat_add(w, (unsigned)__builtin_ctz(planes), b, d,
                sent - (uint64_t)__builtin_popcountll(lost));
        return;
    }
    uint8_t pl[DP_TXBUF];
    for (uint16_t i = 0; i < n; i++)
        pl[i] = DP_META(m[i])->plane;
    uint16_t sent = port_tx(w, p, pi, m, n, bytes, &lost);
    unsigned cp = pl[0];
    uint64_t run = 0;
    for (uint16_t i = 0; i < sent; i++) {
        if (unlikely(pl[i] != cp)) {
            lat_add(w, cp, b, d, run);
            cp = pl[i];
            run = 0;
        }
        run += !((lost >> i) & 1);
    }
    lat_add(w, cp, b, d, run);
}

static void
tx_flush(struct dp_wctx *w, uint16_t pi)
{
    struct dp_txbuf *b = &w->tx[pi];
    uint16_t n = b->n, planes = b->planes;
    uint64_t bytes = b->bytes;
    if (n == 0)
        return;
    b->n = 0;
    b->planes = 0;
    b->bytes = 0;
    struct dp_port *p = atomic_load_explicit(&dp.ports[pi], memory_order_acquire);
    if (unlikely(p == NULL)) {
        w->drop[DP_DROP_PORT_GONE] += n;
        rte_pktmbuf_free_bulk(b->m, n);
        return;
    }
    /* what the driver of a kernel interface cannot take, shaped or not */
    if (unlikely(p->kif_index != 0) && (n = kif_fit(w, p, pi, b->m, n, &bytes)) == 0)
        return;
    if (p->qos) {
        /* a shaped port: into the plane queues, as its driver will take
         * them; its worker schedules them */
        if (p->driver == DP_DRV_ETHDEV)
            csum_finish(w, b->m, n);
        dp_qos_enqueue(p->qos, pi, b->m, n, w->rx_tsc, w->qos[pi], &w->drop[DP_DROP_QUEUE_FULL]);
        return;
    }
    port_tx_timed(w, p, pi, b->m, n, bytes, planes);
}

/* the scheduler of a shaped port this worker owns: a plane's frames are
 * counted sent (and timed) once the driver has taken them */
static void
qos_run(struct dp_wctx *w, const struct dp_port *p, uint16_t pi)
{
    struct rte_mbuf *out[DP_BURST * 2];
    struct dp_qos_out o[DP_BURST * 2];
    uint64_t now = rte_rdtsc();
    uint16_t n = dp_qos_dequeue(p->qos, out, RTE_DIM(out), now, NULL);
    if (n) {
        uint64_t bytes = 0;
        for (uint16_t i = 0; i < n; i++) {
            const struct dp_meta *md = DP_META(out[i]);
            o[i].rx_tsc = md->rx_tsc;
            o[i].plane = md->plane;
            o[i].guar = md->guar;
            o[i].len = out[i]->pkt_len;
            bytes += o[i].len;
        }
        uint64_t lost;
        uint16_t taken = port_tx(w, p, pi, out, n, bytes, &lost);
        dp_qos_account(p->qos, w->qos[pi], w->lat, o, n, taken, lost, now);
    }
}

/* port pi's tx buffer is flushed at the end of the burst (tx_flush_all) */
static __rte_always_inline void
tx_mark(struct dp_wctx *w, uint16_t pi)
{
    if (!w->queued[pi]) {
        w->queued[pi] = 1;
        w->dirty[w->n_dirty++] = pi;
    }
}

/* m into port pi's tx buffer, flushed when full */
static inline void
tx_buf_add(struct dp_wctx *w, uint16_t pi, struct rte_mbuf *m)
{
    struct dp_txbuf *b = &w->tx[pi];
    tx_mark(w, pi);
    b->m[b->n++] = m;
    b->bytes += m->pkt_len;
    b->planes |= plane_bit(DP_META(m)->plane);
    if (unlikely(b->n == DP_TXBUF))
        tx_flush(w, pi);
}

/*
 * A run of frames to one port, added to its tx buffer with the buffer's
 * fill level, bytes and plane bits kept in registers until the run ends
 * (another port, the buffer full, or run_end before anything else may add
 * to a tx buffer: flood, tx_put).
 */
struct dp_txrun {
    struct dp_txbuf *b;
    int port; /* -1: no run */
    uint16_t n, planes;
    uint64_t bytes;
};

static __rte_always_inline void
run_end(struct dp_txrun *r)
{
    if (r->port >= 0) {
        r->b->n = r->n;
        r->b->bytes += r->bytes;
        r->b->planes |= r->planes;
        r->port = -1;
    }
}

/* m (of plane bit pbit) to port pi as part of a run */
static __rte_always_inline void
run_add(struct dp_wctx *w, struct dp_txrun *r, uint16_t pi, struct rte_mbuf *m, uint16_t pbit)
{
    if (unlikely(r->port != pi)) {
        run_end(r);
        tx_mark(w, pi);
        r->b = &w->tx[pi];
        r->port = pi;
        r->n = r->b->n;
        r->bytes = 0;
        r->planes = 0;
    }
    r->b->m[r->n++] = m;
    r->bytes += m->pkt_len;
    r->planes |= pbit;
    if (unlikely(r->n == DP_TXBUF)) {
        run_end(r);
        tx_flush(w, pi);
    }
}

/* A super-frame cut into segments (dp_gso.c) in seg; m is freed, or
 * dropped and counted. Returns the number of segments. */
static __rte_noinline int
gso_cut(struct dp_wctx *w, struct rte_mbuf *m, struct rte_mbuf **seg)
{
    int n = dp_gso_segment(m, dp.pool, seg, DP_GSO_MAX_SEGS);
    if (unlikely(n < 0)) {
        drop(w, m, n == -ENOMEM ? DP_DROP_GSO_NO_MBUF : DP_DROP_GSO_BAD);
        return 0;
    }
    rte_pktmbuf_free(m);
    return n;
}

/* A VXLAN super-frame (from a kernel VTEP, dp_gso.h) stripped of its outer
 * headers: a plain super-frame of the inner flow, carried on as such */
static __rte_noinline void
gso_decap(struct rte_mbuf *m)
{
    m->l2_len = RTE_ETHER_HDR_LEN; /* was outer UDP + VXLAN + inner Ethernet */
    m->outer_l2_len = 0;
    m->outer_l3_len = 0;
    m->ol_flags &=
        ~(RTE_MBUF_F_TX_TUNNEL_MASK | RTE_MBUF_F_TX_OUTER_IPV4 | RTE_MBUF_F_TX_OUTER_IP_CKSUM);
}

/* A super-frame (TCP or UDP) for port pi: whole to a kernel port, which
 * hands it on as GSO (afpacket.c), an encapsulated one only to an uplink
 * with tunnel GSO on; cut into MSS-sized frames for a port without the
 * offload (an ethdev). A port gone is counted when the buffer is flushed. */
static __rte_noinline void
gso_put(struct dp_wctx *w, uint16_t pi, struct rte_mbuf *m)
{
    const struct dp_port *p = atomic_load_explicit(&dp.ports[pi], memory_order_acquire);
    if (p == NULL ||
        (p->driver == DP_DRV_AFPACKET && (!(m->ol_flags & RTE_MBUF_F_TX_TUNNEL_MASK) ||
                                          __atomic_load_n(&p->tnl_gso, __ATOMIC_ACQUIRE)))) {
        tx_buf_add(w, pi, m);
        return;
    }
    struct rte_mbuf *seg[DP_GSO_MAX_SEGS];
    int n = gso_cut(w, m, seg);
    for (int i = 0; i < n; i++)
        tx_buf_add(w, pi, seg[i]);
}

/* m to port pi (through its tx buffer) */
static inline void
tx_put(struct dp_wctx *w, uint16_t pi, struct rte_mbuf *m)
{
    if (unlikely(dp_gso_frame(m)))
        gso_put(w, pi, m);
    else
        tx_buf_add(w, pi, m);
}

static void
tx_flush_all(struct dp_wctx *w)
{
    for (uint16_t i = 0; i < w->n_dirty; i++) {
        uint16_t pi = w->dirty[i];
        tx_flush(w, pi);
        w->queued[pi] = 0;
    }
    w->n_dirty = 0;
}

#endif /* DP_TX_H */
