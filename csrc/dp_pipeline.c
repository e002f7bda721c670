/*
 * dp_pipeline.c - the per-worker forwarding loop. Run to completion, bursts
 * of DP_BURST:
 *
 *   pod port rx → (network, dst MAC) bulk FDB lookup → local port | VXLAN
 *                 encap to a remote VTEP | flood (local ports + one copy per
 *                 remote VTEP of the network)
 *   uplink rx   → outer checks → (VNI, source VTEP) bulk lookup → decap →
 *                 bulk FDB lookup → local port | flood to local ports
 *                 ARP for the VTEP address is answered here.
 *   tx          → per (worker, port) buffers flushed once per burst.
 *
 * The hot path never logs, never fails: what it cannot send it frees and
 * counts under a drop reason.
 *
 * This file has the loop; its steps are in headers that only this file
 * includes (dp_wctx.h, dp_lookup.h, dp_tx.h, dp_encap.h, dp_decap.h), so
 * the compiler still sees one translation unit and inlines across them.
 */
#include <string.h>

#include <rte_ethdev.h>
#include <rte_arp.h>
#include <rte_hash_crc.h>
#include <rte_prefetch.h>
#include <rte_malloc.h>

#include "dp_capture.h"
#include "dp_internal.h"
#include "dp_qos.h"
#include "dp_shm.h"

/* the pipeline, in the order the compiler needs it */
#define DP_PIPELINE_TU
#include "dp_wctx.h"   /* a worker's context, drop() */
#include "dp_guard.h"  /* pod ports: anti-spoofing, storm control */
#include "dp_lookup.h" /* cached FDB and VTEP table lookups */
#include "dp_tx.h"     /* tx buffers, shaped ports, latency */
#include "dp_encap.h"  /* pod side: FDB, VXLAN encap, flood */
#include "dp_decap.h"  /* uplink side: outer checks, ARP, decap */

/* ------------------------------------------------------------ main loop */

/* port pi's faults since it was added (its counters are cleared then), over
 * every worker: the tx of any may have faulted */
static uint64_t
shm_faults_of(uint16_t pi)
{
    uint64_t n = 0;
    for (int w = 0; w < dp.n_workers; w++)
        n += dp.ctr->port[w][pi][DP_PORT_SHM_FAULTS];
    return n;
}

/* rx from a port on a pod's shared memory (dp_shm.h): the burst under the
 * fault guard. A port set aside after a fault is left alone until its
 * retry time, then tried again - unless it has faulted DP_SHM_MAX_FAULTS
 * times. */
static __rte_noinline uint16_t
shm_rx(struct dp_wctx *w, const struct dp_port *p, uint16_t pi, uint16_t q, struct rte_mbuf **pkts)
{
    if (unlikely(atomic_load_explicit(&dp_shm_faulted[pi], memory_order_relaxed))) {
        if (q != 0 || rte_rdtsc() < atomic_load_explicit(&dp_shm_retry[pi], memory_order_relaxed) ||
            shm_faults_of(pi) >= DP_SHM_MAX_FAULTS)
            return 0;
        atomic_store_explicit(&dp_shm_faulted[pi], 0, memory_order_relaxed);
    }
    struct rte_mbuf **b = w->shm_pkts;
    sigjmp_buf jb;
    if (sigsetjmp(jb, 0) != 0) {
        shm_cut(w, pi);
        for (unsigned i = 0; i < DP_BURST; i++)
            if (b[i] != NULL) {
                drop(w, b[i], DP_DROP_SHM_FAULT);
                b[i] = NULL;
            }
        return 0;
    }
    dp_shm_jb = &jb;
    uint16_t n = rte_eth_rx_burst(p->eth_port, q, b, DP_BURST);
    dp_shm_jb = NULL;
    for (uint16_t i = 0; i < n; i++) {
        pkts[i] = b[i];
        b[i] = NULL;
    }
    return n;
}

static inline uint16_t
port_rx(struct dp_wctx *w, const struct dp_port *p, uint16_t pi, uint16_t q, struct rte_mbuf **pkts)
{
    if (p->driver == DP_DRV_ETHDEV) {
        if (unlikely(p->shm))
            return shm_rx(w, p, pi, q, pkts);
        return rte_eth_rx_burst(p->eth_port, q, pkts, DP_BURST);
    }
    w->kernel_rx = 1;
    return dp_afp_rx_burst(p->afp, pkts, DP_BURST);
}

/* worker id's context, made by the control thread before the worker is
 * launched (dp_start); NULL when out of memory */
struct dp_wctx *
dp_worker_new(int id)
{
    struct dp_wctx *w = rte_zmalloc("dp_wctx", sizeof(*w), RTE_CACHE_LINE_SIZE);
    if (w == NULL)
        return NULL;
    w->id = id;
    w->drop = dp.ctr->drop[id];
    w->port = dp.ctr->port[id];
    w->net = dp.ctr->net[id];
    w->qos = dp.ctr->qos[id];
    w->lat = dp.ctr->lat[id];
    w->wc = dp.ctr->worker[id];
    w->epoch = 1;
    w->hold_tsc = rte_get_tsc_hz() / 1000 * DP_HOLD_MS;
    return w;
}

/* a worker: runs until dp.stop; arg is its context (dp_worker_new), freed
 * when it returns */
int
dp_worker_main(void *arg)
{
    struct dp_wctx *w = arg;
    int id = w->id;
    uint64_t *wc = w->wc;
    w->tbl_gen = atomic_load_explicit(&dp.tbl_gen, memory_order_acquire);
    struct rte_mbuf *pkts[DP_BURST];
    unsigned idle_rounds = 0; /* empty poll rounds in a row */

    /* id < DP_MAX_WORKERS, the threads dp.qsbr was made for: cannot fail */
    (void)rte_rcu_qsbr_thread_register(dp.qsbr, (unsigned)id);
    rte_rcu_qsbr_thread_online(dp.qsbr, (unsigned)id);

    while (!atomic_load_explicit(&dp.stop, memory_order_relaxed)) {
        const struct dp_poll_list *pl = atomic_load_explicit(&dp.poll[id], memory_order_acquire);
        w->vtep = atomic_load_explicit(&dp.vtep, memory_order_acquire);
        w->fdb = atomic_load_explicit(&dp.fdb, memory_order_acquire);
        uint64_t busy = 0;
        if (unlikely(w->n_held))
            hold_run(w, 0);

        for (uint16_t i = 0; i < pl->n; i++) {
            uint16_t pi = pl->e[i].port, q = pl->e[i].queue;
            const struct dp_port *p = atomic_load_explicit(&dp.ports[pi], memory_order_acquire);
            if (unlikely(p == NULL))
                continue;

            /* control-plane frames (ARP requests) leave by the uplink */
            /* (the VTEP's uplink only; while the VTEP moves to another
             * uplink port, workers with the old and the new VTEP may both
             * take from the ring: it is multi-consumer) */
            if (q == 0 && p->role == DP_ROLE_UPLINK && unlikely(!rte_ring_empty(dp.ctrl_tx)) &&
                pi == w->vtep->uplink) {
                struct rte_mbuf *c[DP_BURST];
                unsigned nc = rte_ring_dequeue_burst(dp.ctrl_tx, (void **)c, DP_BURST, NULL);
                for (unsigned x = 0; x < nc; x++) {
                    /* in no plane: on a shaped uplink ahead of every
                     * plane's queue, outside the latency histograms */
                    DP_META(c[x])->plane = DP_PLANE_OWN;
                    tx_put(w, pi, c[x]);
                }
                tx_flush_all(w);
            }

            /* shaped port: let out what its planes' queues and buckets allow
             * (its scheduler runs where its queue 0 is polled) */
            if (q == 0 && p->qos)
                qos_run(w, p, pi);

            /* rx: the burst's time is its frames' (latency per plane is
             * measured at tx, or stamped per frame when a frame queues) */
            uint16_t n = port_rx(w, p, pi, q, pkts);
            if (n == 0)
                continue;
            busy++;
            w->rx_tsc = rte_rdtsc();
            w->at_port = pi;
            /* a table change made before these frames were queued applies
             * to them: the ring's ordering makes the bump visible here (the
             * caches are read only for received frames: their one sync) */
            cache_sync(w);
            w->port[pi][DP_PORT_RX_PACKETS] += n; /* bytes: in the first pass */
            dp_capture_tap(pi, DP_CAP_RX, pkts, n, w->rx_tsc);

            /* process */
            if (p->role == DP_ROLE_POD)
                pod_burst(w, p, pi, pkts, n);
            else
                uplink_burst(w, pi, pkts, n);

            /* tx: everything this burst produced */
            tx_flush_all(w);
        }
        wc[DP_WORKER_POLLS]++;
        wc[DP_WORKER_BUSY_POLLS] += busy != 0;
        /* an idle worker yields its CPU, or sleeps if set to (dp_idle.c) */
        if (busy)
            idle_rounds = 0;
        else if (unlikely(++idle_rounds == DP_IDLE_ROUNDS)) {
            idle_rounds = 0;
            dp_worker_idle(id, pl, wc);
        }

        /* no table entry or snapshot read above is held past this point */
        rte_rcu_qsbr_quiescent(dp.qsbr, (unsigned)id);
    }

    tx_flush_all(w);
    /* the VTEP as it is now: the one read at the last round may be freed
     * since, had the worker slept offline (dp_worker_idle) through a change */
    w->vtep = atomic_load_explicit(&dp.vtep, memory_order_acquire);
    if (w->n_held)
        hold_run(w, 1);
    rte_rcu_qsbr_thread_offline(dp.qsbr, (unsigned)id);
    (void)rte_rcu_qsbr_thread_unregister(dp.qsbr, (unsigned)id);
    rte_free(w);
    return 0;
}
