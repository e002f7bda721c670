/*
 * dp_qos.c - per-plane queues, strict-priority scheduler, shapers, latency
 * histogram bounds. See dp_qos.h for the picture.
 *
 * A module of its own: it knows nothing of ports, workers or the control
 * files, and calls none of them. The control side (dp_plane.c) checks what
 * it is given and calls down; bench/sched_cmp.c builds it alone.
 */
#include <string.h>

#include <rte_cycles.h>
#include <rte_malloc.h>
#include <rte_mbuf_dyn.h>
#include <rte_errno.h>

#include "dp_capture.h"
#include "dp_qos.h"

struct dp_qos_global dp_qg;
int dp_meta_off = -1;

const uint64_t dp_lat_bounds_ns[DP_LAT_BOUNDS] = {DP_LAT_BOUNDS_NS};

/* bytes in the buckets' unit (DP_TOK_SHIFT fractional bits) */
static inline int64_t
tok(int64_t bytes)
{
    return bytes << DP_TOK_SHIFT;
}

uint64_t
dp_bps_to_tsc_rate(uint64_t bps)
{
    /* bytes per 2^DP_TOK_SHIFT TSC cycles */
    long double r = (long double)bps / 8.0L * (long double)(UINT64_C(1) << DP_TOK_SHIFT) /
                    (long double)rte_get_tsc_hz();
    return (uint64_t)(r + 0.5L);
}

static void
order_rebuild(void)
{
    int n = 0;
    uint8_t ord[DP_MAX_PLANES];
    for (int p = 0; p < DP_MAX_PLANES; p++)
        if (dp_qg.plane[p].used)
            ord[n++] = (uint8_t)p;
    for (int i = 1; i < n; i++) /* insertion sort, highest priority first */
        for (int j = i; j > 0 && dp_qg.plane[ord[j]].priority > dp_qg.plane[ord[j - 1]].priority;
             j--) {
            uint8_t t = ord[j];
            ord[j] = ord[j - 1];
            ord[j - 1] = t;
        }
    memcpy(dp_qg.order, ord, sizeof(ord));
    __atomic_store_n(&dp_qg.n_order, n, __ATOMIC_RELEASE);
}

/* dp_qg.tos_map from dscp_plane and the planes' marking; each word
 * written whole (a worker reads it meanwhile) */
static void
tos_map_rebuild(void)
{
    for (int np = 0; np < DP_MAX_PLANES; np++)
        for (int d = 0; d < 64; d++) {
            int by_dscp = __atomic_load_n(&dp_qg.dscp_plane[d], __ATOMIC_RELAXED);
            int plane = by_dscp >= 0 ? by_dscp : np;
            int mark = __atomic_load_n(&dp_qg.plane[plane].outer_tos, __ATOMIC_RELAXED);
            uint16_t e = (uint16_t)(plane << 8 | (mark >= 0 ? mark : d << 2));
            __atomic_store_n(&dp_qg.tos_map[np][d], e, __ATOMIC_RELAXED);
        }
}

int
dp_qos_init(void)
{
    static const struct rte_mbuf_dynfield f = {
        .name = "dataplane_meta",
        .size = sizeof(struct dp_meta),
        .align = __alignof__(struct dp_meta),
    };
    dp_meta_off = rte_mbuf_dynfield_register(&f);
    if (dp_meta_off < 0)
        return -rte_errno;
    uint64_t hz = rte_get_tsc_hz();
    for (int i = 0; i < DP_LAT_BOUNDS; i++)
        dp_qg.lat_bound_tsc[i] = (uint64_t)((long double)dp_lat_bounds_ns[i] * hz / 1e9L);
    memset(dp_qg.dscp_plane, -1, sizeof(dp_qg.dscp_plane));
    /* plane 0 exists from the start: everything is in some plane */
    dp_qg.plane[0] =
        (struct dp_plane_rt){.used = 1, .priority = 0, .queue_len = 1024, .outer_tos = -1};
    dp_qg.priority_on = 1;
    dp_qg.latency_on = 1;
    order_rebuild();
    tos_map_rebuild();
    return 0;
}

/* the scheduler's part of a plane: priority, rates, queue length, marking */
void
dp_qos_plane_set(int plane, const struct dp_plane_conf *c)
{
    struct dp_plane_rt *r = &dp_qg.plane[plane];
    /* words a worker reads: each one written whole */
    __atomic_store_n(&r->min_bytes_tsc, dp_bps_to_tsc_rate(c->min_bps), __ATOMIC_RELAXED);
    __atomic_store_n(&r->max_bytes_tsc, dp_bps_to_tsc_rate(c->max_bps), __ATOMIC_RELAXED);
    __atomic_store_n(&r->outer_tos, c->dscp < 0 ? -1 : c->dscp << 2, __ATOMIC_RELAXED);
    r->queue_len = c->queue_len; /* applies to queues made from now on */
    r->priority = c->priority;
    __atomic_store_n(&r->used, 1, __ATOMIC_RELEASE);
    order_rebuild();
    tos_map_rebuild();
}

void
dp_qos_set_mode(int priority_on, int latency_on)
{
    __atomic_store_n(&dp_qg.priority_on, !!priority_on, __ATOMIC_RELEASE);
    __atomic_store_n(&dp_qg.latency_on, !!latency_on, __ATOMIC_RELEASE);
}

void
dp_qos_set_dscp_plane(int dscp, int plane)
{
    __atomic_store_n(&dp_qg.dscp_plane[dscp], (int8_t)(plane < 0 ? -1 : plane), __ATOMIC_RELEASE);
    tos_map_rebuild();
}

struct dp_qos *
dp_qos_new(int port, uint64_t rate_bps, uint32_t burst_bytes)
{
    struct dp_qos *q = rte_zmalloc("dp_qos", sizeof(*q), RTE_CACHE_LINE_SIZE);
    if (!q)
        return NULL;
    q->rate_bytes_tsc = dp_bps_to_tsc_rate(rate_bps);
    q->burst_bytes = burst_bytes;
    q->tokens = tok(burst_bytes);
    q->last_tsc = rte_get_tsc_cycles();
    /* ring names are unique while both sets live (a shaper rebuilt makes
     * its new queues before the old ones go): a serial, not the clock */
    static unsigned serial;
    unsigned id = serial++;
    for (int p = 0; p < DP_MAX_PLANES; p++) {
        char name[RTE_RING_NAMESIZE];
        snprintf(name, sizeof(name), "dpq_%d_%d_%u", port, p, id);
        unsigned len = dp_qg.plane[p].used ? dp_qg.plane[p].queue_len : 1024;
        /* the frame at the head that waits for tokens is held outside the
         * ring (q->head): the ring takes one fewer, so a queue holds at most
         * queue_len frames */
        q->q[p] =
            rte_ring_create(name, len - 1, (int)rte_socket_id(), RING_F_SC_DEQ | RING_F_EXACT_SZ);
        if (!q->q[p]) {
            dp_qos_free(q);
            return NULL;
        }
        q->ptok_max[p] = tok(burst_bytes);
        q->ptok_min[p] = tok(burst_bytes);
    }
    q->lent_rank = DP_MAX_PLANES;
    char name[RTE_RING_NAMESIZE];
    snprintf(name, sizeof(name), "dpqo_%d_%u", port, id);
    q->own = rte_ring_create(name, DP_QOS_OWN_LEN, (int)rte_socket_id(), RING_F_SC_DEQ);
    if (!q->own) {
        dp_qos_free(q);
        return NULL;
    }
    return q;
}

/* a shaped port's rate and burst changed in place, while its worker
 * schedules it: its queues and what they hold stay */
void
dp_qos_set_rate(struct dp_qos *q, uint64_t rate_bps, uint32_t burst_bytes)
{
    __atomic_store_n(&q->burst_bytes, (int64_t)burst_bytes, __ATOMIC_RELAXED);
    __atomic_store_n(&q->rate_bytes_tsc, dp_bps_to_tsc_rate(rate_bps), __ATOMIC_RELAXED);
}

/* frames waiting in a plane's queue of a shaped port */
unsigned
dp_qos_queued(const struct dp_qos *q, int plane)
{
    return rte_ring_count(q->q[plane]) + (q->head[plane] != NULL);
}

/* a frame freed with its queues: counted against its plane (in FIFO mode
 * queue 0 holds every plane's) */
static void
flush_one(struct rte_mbuf *m, uint64_t (*ctr)[DP_QOS_CTR_COUNT])
{
    unsigned p = DP_META(m)->plane;
    if (ctr && p < DP_MAX_PLANES)
        ctr[p][DP_QOS_DROPPED]++;
    rte_pktmbuf_free(m);
}

unsigned
dp_qos_free_counted(struct dp_qos *q, uint64_t (*ctr)[DP_QOS_CTR_COUNT])
{
    unsigned n = 0;
    struct rte_mbuf *m;
    if (!q)
        return 0;
    for (int p = 0; p < DP_MAX_PLANES; p++) {
        if (q->head[p]) {
            flush_one(q->head[p], ctr);
            n++;
        }
        if (q->q[p]) {
            while (rte_ring_dequeue(q->q[p], (void **)&m) == 0) {
                flush_one(m, ctr);
                n++;
            }
            rte_ring_free(q->q[p]);
        }
    }
    if (q->own) {
        while (rte_ring_dequeue(q->own, (void **)&m) == 0) {
            rte_pktmbuf_free(m);
            n++;
        }
        rte_ring_free(q->own);
    }
    rte_free(q);
    return n;
}

unsigned
dp_qos_free(struct dp_qos *q)
{
    return dp_qos_free_counted(q, NULL);
}

/* frames m[0..n) of port pi that found their queue full: counted against
 * their plane, shown to a capture of drops, freed */
static void
queue_drop(uint16_t pi, uint64_t (*ctr)[DP_QOS_CTR_COUNT], struct rte_mbuf **m, unsigned n)
{
    if (n == 0)
        return;
    for (unsigned j = 0; j < n; j++)
        ctr[DP_META(m[j])->plane & (DP_MAX_PLANES - 1)][DP_QOS_DROPPED]++;
    dp_capture_tap_drop(pi, m, (uint16_t)n, DP_DROP_QUEUE_FULL);
    rte_pktmbuf_free_bulk(m, n);
}

void
dp_qos_enqueue(struct dp_qos *q, uint16_t pi, struct rte_mbuf **m, uint16_t n, uint64_t rx_tsc,
               uint64_t (*ctr)[DP_QOS_CTR_COUNT], uint64_t *queue_full)
{
    struct rte_mbuf *byp[DP_MAX_PLANES][DP_BURST * 2];
    uint16_t cnt[DP_MAX_PLANES] = {0};
    int prio = __atomic_load_n(&dp_qg.priority_on, __ATOMIC_ACQUIRE);
    for (uint16_t i = 0; i < n; i++) {
        struct dp_meta *md = DP_META(m[i]);
        md->rx_tsc = rx_tsc; /* latency of a queued frame is measured per frame */
        unsigned p = md->plane;
        if (unlikely(p >= DP_MAX_PLANES)) {
            /* the core's own (ARP): in no plane, ahead of them all */
            if (unlikely(rte_ring_mp_enqueue(q->own, m[i]) != 0)) {
                dp_capture_tap_drop(pi, &m[i], 1, DP_DROP_QUEUE_FULL);
                rte_pktmbuf_free(m[i]);
                (*queue_full)++;
            }
            continue;
        }
        ctr[p][DP_QOS_ENQUEUED]++;
        unsigned qi = prio ? p : 0; /* FIFO mode: one queue for every plane */
        if (cnt[qi] == DP_BURST * 2) {
            unsigned k = rte_ring_enqueue_burst(q->q[qi], (void **)byp[qi], cnt[qi], NULL);
            queue_drop(pi, ctr, byp[qi] + k, cnt[qi] - k);
            *queue_full += cnt[qi] - k;
            cnt[qi] = 0;
        }
        byp[qi][cnt[qi]++] = m[i];
    }
    for (unsigned qi = 0; qi < DP_MAX_PLANES; qi++) {
        if (!cnt[qi])
            continue;
        unsigned k = rte_ring_enqueue_burst(q->q[qi], (void **)byp[qi], cnt[qi], NULL);
        queue_drop(pi, ctr, byp[qi] + k, cnt[qi] - k);
        *queue_full += cnt[qi] - k;
    }
}

/* tok after dt cycles at rate, at most cap; rate * dt is never formed when
 * it would pass cap (it could overflow after a long stop) */
static inline int64_t
refill(int64_t tok, uint64_t rate, uint64_t dt, int64_t cap)
{
    if (rate == 0 || tok >= cap)
        return cap;
    uint64_t room = (uint64_t)(cap - tok);
    if (dt >= room / rate + 1)
        return cap;
    return tok + (int64_t)(rate * dt);
}

/* what a frame needs in a bucket of cap: a frame larger than the bucket
 * goes when the bucket is full (and leaves it in debt), never stalls */
static inline int64_t
fit(int64_t need, int64_t cap)
{
    return need > cap ? cap : need;
}

/* how drain() takes a plane's frames */
enum {
    PASS_GUAR,   /* within its guarantee, no higher plane waiting: may borrow */
    PASS_STRICT, /* strict priority, up to its maximum */
    PASS_OWED,   /* within its guarantee and what it is owed, ahead of a
                  * higher plane that has frames waiting: no borrowing */
};

/* a plane's queue holds frames */
static inline int
has_frames(const struct dp_qos *q, unsigned qi)
{
    return q->head[qi] != NULL || !rte_ring_empty(q->q[qi]);
}

/* take frames of queue qi (rank: its place in dp_qg.order, DP_MAX_PLANES for
 * none) while the buckets allow */
static uint16_t
drain(struct dp_qos *q, unsigned qi, int rank, int pass, struct rte_mbuf **out, uint16_t k,
      uint16_t max, int *port_blocked)
{
    const struct dp_plane_rt *r = &dp_qg.plane[qi];
    int prio = dp_qg.priority_on;
    int limited_max = r->max_bytes_tsc != 0 && prio;
    int owed = r->min_bytes_tsc != 0 && prio;
    while (k < max) {
        struct rte_mbuf *m = q->head[qi];
        if (m == NULL && rte_ring_sc_dequeue(q->q[qi], (void **)&m) != 0)
            break;
        q->head[qi] = NULL;
        int64_t need = tok(m->pkt_len + DP_WIRE_OVERHEAD);
        /* rate and burst may change while the port is shaped (dp_qos_set_rate) */
        uint64_t rate = __atomic_load_n(&q->rate_bytes_tsc, __ATOMIC_RELAXED);
        int64_t cap = tok(__atomic_load_n(&q->burst_bytes, __ATOMIC_RELAXED));
        int64_t want = fit(need, cap);
        /* the port's tokens as this plane sees them: debt a lower plane
         * borrowed is not its to wait for */
        int64_t avail = q->tokens + (rank < q->lent_rank ? q->lent : 0);
        /* within its guarantee, with no higher plane waiting, a plane may
         * take the port's bucket into debt, down to one burst below empty: a
         * bunch of media that found the bucket emptied by std's backlog (a
         * worker back on a shared CPU) leaves at once, and std waits until
         * the debt is repaid; the port's rate holds over time */
        int ok = !rate || (pass == PASS_GUAR ? q->tokens + cap : avail) >= want;
        if (pass != PASS_STRICT)
            ok = ok && q->ptok_min[qi] >= want;
        if (pass == PASS_OWED)
            ok = ok && q->ptok_owed[qi] >= want;
        if (limited_max)
            ok = ok && q->ptok_max[qi] >= want;
        if (!ok) {
            q->head[qi] = m; /* waits, in order, for tokens */
            /* waiting for the port's tokens, which its own buckets would
             * let it take: they are its; held back by its own maximum (or
             * guarantee), it keeps no lower plane waiting */
            int own = (pass == PASS_STRICT || q->ptok_min[qi] >= want) &&
                      (pass != PASS_OWED || q->ptok_owed[qi] >= want) &&
                      (!limited_max || q->ptok_max[qi] >= want);
            if (port_blocked && rate && avail < want && own)
                *port_blocked = 1;
            break;
        }
        if (rate) {
            if (unlikely(avail < need) && pass == PASS_GUAR) {
                /* borrowed: the planes above need not wait for it */
                q->lent += need - (avail > 0 ? avail : 0);
                if (rank < q->lent_rank)
                    q->lent_rank = rank;
            }
            q->tokens -= need;
        }
        if (pass != PASS_STRICT)
            q->ptok_min[qi] -= need;
        if (owed)
            q->ptok_owed[qi] = q->ptok_owed[qi] > need ? q->ptok_owed[qi] - need : 0;
        if (limited_max)
            q->ptok_max[qi] -= need;
        DP_META(m)->guar = pass != PASS_STRICT;
        out[k++] = m;
    }
    return k;
}

/* the core's own frames, first: outside every plane and its limits, charged
 * to the port's bucket (into debt if need be: the port's rate holds) */
static uint16_t
own_drain(struct dp_qos *q, struct rte_mbuf **out, uint16_t max)
{
    uint16_t k = (uint16_t)rte_ring_sc_dequeue_burst(q->own, (void **)out, max, NULL);
    if (__atomic_load_n(&q->rate_bytes_tsc, __ATOMIC_RELAXED))
        for (uint16_t i = 0; i < k; i++)
            q->tokens -= tok(out[i]->pkt_len + DP_WIRE_OVERHEAD);
    return k;
}

/*
 * The planes in priority order (dp_qg.order), under the port's bucket.
 *
 * Pass 1, guaranteed rates: a plane with a min_rate takes frames within its
 * guarantee bucket (min_rate, one burst deep) before strict priority - but
 * ahead of a higher plane that has frames waiting only within what its
 * guarantee owes it (ptok_owed: earned at min_rate while it had frames
 * waiting, less what it sent; nothing when it had none) and without
 * borrowing. So a lower plane's min_rate holds against a saturating higher
 * plane (it is owed min_rate while it waits), while frames of a higher plane
 * never wait behind a lower plane's idle credit: a lower plane that was
 * idle goes after the higher planes' waiting frames. A plane within that
 * and waiting only for the port's tokens keeps them: otherwise a higher
 * plane of smaller frames would take every few bytes as they come and the
 * guarantee of a plane of large frames would never be met.
 *
 * Pass 2, strict priority for the rest, each plane up to its maximum.
 */
static uint16_t
dequeue_planes(struct dp_qos *q, struct rte_mbuf **out, uint16_t k, uint16_t max, int n,
               int64_t cap)
{
    for (int i = 0; i < n && k < max; i++) {
        unsigned p = dp_qg.order[i];
        if (!dp_qg.plane[p].min_bytes_tsc)
            continue;
        int higher_waiting = 0;
        for (int j = 0; j < i && !higher_waiting; j++)
            higher_waiting = has_frames(q, dp_qg.order[j]);
        int blocked = 0;
        k = drain(q, p, i, higher_waiting ? PASS_OWED : PASS_GUAR, out, k, max, &blocked);
        if (blocked) {
            int64_t want = fit(tok(q->head[p]->pkt_len + DP_WIRE_OVERHEAD), cap);
            if (q->ptok_min[p] >= want && (!higher_waiting || q->ptok_owed[p] >= want))
                return k;
        }
    }
    for (int i = 0; i < n && k < max; i++) {
        int blocked = 0;
        k = drain(q, dp_qg.order[i], i, PASS_STRICT, out, k, max, &blocked);
        if (blocked)
            break; /* the port's tokens are this plane's: no lower plane overtakes it */
    }
    /* queues of no plane in use (queue 0 holds what the FIFO held when
     * priority was switched on; a plane may have gone): they go last */
    for (unsigned p = 0; p < DP_MAX_PLANES && k < max; p++)
        if (!dp_qg.plane[p].used && has_frames(q, p))
            k = drain(q, p, DP_MAX_PLANES, PASS_STRICT, out, k, max, NULL);
    return k;
}

uint16_t
dp_qos_dequeue(struct dp_qos *q, struct rte_mbuf **out, uint16_t max, uint64_t now,
               uint64_t (*ctr)[DP_QOS_CTR_COUNT])
{
    uint64_t dt = now - q->last_tsc;
    q->last_tsc = now;
    int64_t cap = tok(__atomic_load_n(&q->burst_bytes, __ATOMIC_RELAXED));
    q->tokens = refill(q->tokens, __atomic_load_n(&q->rate_bytes_tsc, __ATOMIC_RELAXED), dt, cap);
    if (q->tokens >= 0) {
        q->lent = 0; /* repaid */
        q->lent_rank = DP_MAX_PLANES;
    }
    uint16_t k = 0;
    if (unlikely(!rte_ring_empty(q->own)))
        k = own_drain(q, out, max);
    if (!__atomic_load_n(&dp_qg.priority_on, __ATOMIC_ACQUIRE)) {
        /* one FIFO (queue 0); what the planes' queues held when priority
         * was switched off goes after it */
        k = drain(q, 0, DP_MAX_PLANES, PASS_STRICT, out, k, max, NULL);
        for (unsigned p = 1; p < DP_MAX_PLANES && k < max; p++)
            if (has_frames(q, p))
                k = drain(q, p, DP_MAX_PLANES, PASS_STRICT, out, k, max, NULL);
        q->waited = 0;
    } else {
        int n = __atomic_load_n(&dp_qg.n_order, __ATOMIC_ACQUIRE);
        for (int i = 0; i < n; i++) {
            unsigned p = dp_qg.order[i];
            const struct dp_plane_rt *r = &dp_qg.plane[p];
            q->ptok_max[p] = refill(q->ptok_max[p], r->max_bytes_tsc, dt, cap);
            if (r->min_bytes_tsc) {
                q->ptok_min[p] = refill(q->ptok_min[p], r->min_bytes_tsc, dt, cap);
                /* owed only for the time it had frames waiting */
                q->ptok_owed[p] =
                    (q->waited >> p) & 1 ? refill(q->ptok_owed[p], r->min_bytes_tsc, dt, cap) : 0;
            } else {
                q->ptok_min[p] = 0;
            }
        }
        k = dequeue_planes(q, out, k, max, n, cap);
        uint8_t waited = 0;
        for (int i = 0; i < n; i++) {
            unsigned p = dp_qg.order[i];
            if (dp_qg.plane[p].min_bytes_tsc && has_frames(q, p))
                waited |= (uint8_t)(1u << p);
        }
        q->waited = waited;
    }
    if (ctr)
        for (uint16_t i = 0; i < k; i++) {
            unsigned p = DP_META(out[i])->plane;
            if (p < DP_MAX_PLANES) {
                ctr[p][DP_QOS_SENT]++;
                ctr[p][DP_QOS_SENT_BYTES] += out[i]->pkt_len;
            }
        }
    return k;
}

void
dp_qos_refund(struct dp_qos *q, unsigned plane, uint64_t wire_bytes, int guar)
{
    int64_t t = tok((int64_t)wire_bytes);
    if (__atomic_load_n(&q->rate_bytes_tsc, __ATOMIC_RELAXED))
        q->tokens += t;
    if (plane >= DP_MAX_PLANES || !__atomic_load_n(&dp_qg.priority_on, __ATOMIC_ACQUIRE))
        return;
    /* a plane's buckets hold at most a burst; its guarantee's (and what
     * it is owed) only for a frame charged to them (not the strict pass) */
    int64_t cap = tok(__atomic_load_n(&q->burst_bytes, __ATOMIC_RELAXED));
    const struct dp_plane_rt *r = &dp_qg.plane[plane];
    if (r->max_bytes_tsc)
        q->ptok_max[plane] = RTE_MIN(q->ptok_max[plane] + t, cap);
    if (r->min_bytes_tsc && guar) {
        q->ptok_min[plane] = RTE_MIN(q->ptok_min[plane] + t, cap);
        q->ptok_owed[plane] = RTE_MIN(q->ptok_owed[plane] + t, cap);
    }
}
