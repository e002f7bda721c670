/*
 * dp_eal.c - the process-wide life of the core: DPDK's EAL, the shared
 * tables, pool and rings (dp_setup), the worker lcores (start, stop), and
 * teardown (dp_shutdown).
 */
#define _GNU_SOURCE /* fopencookie */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_log.h>
#include <rte_malloc.h>
#include <rte_mbuf.h>
#include <rte_mbuf_pool_ops.h>
#include <rte_mempool.h>
#include <rte_hash_crc.h>

#include "dp_capture.h"
#include "dp_control.h"
#include "dp_guard.h"
#include "dp_qos.h"
#include "dp_shm.h"

/* lcores the configuration checks take (dataplane.h) are lcores this EAL has */
_Static_assert(DP_MAX_LCORE <= RTE_MAX_LCORE, "DP_MAX_LCORE above this DPDK's RTE_MAX_LCORE");

struct dp_state dp;

static int dp_eal_up;
int dp_setup_done;

int
dp_abi_version(void)
{
    return DP_ABI_VERSION;
}

#ifdef DP_AB
volatile int dp_ab;
#endif

int
dp_ab_built(void)
{
#ifdef DP_AB
    return 1;
#else
    return 0;
#endif
}

void
dp_ab_set(int on)
{
#ifdef DP_AB
    dp_ab = on != 0;
#else
    (void)on;
#endif
}

int
dp_running(void)
{
    return atomic_load(&dp.running);
}

/*
 * DPDK's own log lines (EAL, drivers, telemetry) as the node service's log
 * has them: one JSON object a line on stderr, with "source": "dpdk" and
 * DPDK's level. Only control threads log (the workers never do), so a
 * line built on the stack and written whole is enough.
 */
static void
json_log_line(const char *msg, size_t len)
{
    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == '\r' || msg[len - 1] == ' '))
        len--;
    if (len == 0)
        return;
    uint32_t lvl = rte_log_cur_msg_loglevel();
    const char *level = lvl <= RTE_LOG_ERR       ? "error"
                        : lvl == RTE_LOG_WARNING ? "warning"
                        : lvl >= RTE_LOG_DEBUG   ? "debug"
                                                 : "info";
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    char out[2048];
    int n = snprintf(out, sizeof(out),
                     "{\"ts\": %lld.%03ld, \"time\": \"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\", "
                     "\"level\": \"%s\", \"source\": \"dpdk\", \"msg\": \"",
                     (long long)now.tv_sec, now.tv_nsec / 1000000, tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, now.tv_nsec / 1000000, level);
    size_t o = (size_t)n;
    for (size_t i = 0; i < len && o < sizeof(out) - 16; i++) {
        unsigned char c = (unsigned char)msg[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(out + o, 7, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '"';
    out[o++] = '}';
    out[o++] = '\n';
    ssize_t w = write(STDERR_FILENO, out, o);
    (void)w; /* nowhere to say that stderr failed */
}

static ssize_t
json_log_write(void *cookie, const char *buf, size_t size)
{
    (void)cookie;
    size_t start = 0;
    for (size_t i = 0; i < size; i++) {
        if (buf[i] == '\n') {
            json_log_line(buf + start, i - start);
            start = i + 1;
        }
    }
    if (start < size) /* a message without its newline: a line of its own */
        json_log_line(buf + start, size - start);
    return (ssize_t)size;
}

int
dp_log_json(void)
{
    static FILE *stream;
    if (stream != NULL)
        return 0;
    cookie_io_functions_t io = {.write = json_log_write};
    stream = fopencookie(NULL, "w", io);
    if (stream == NULL)
        return dp_fail(-errno, "cannot make the JSON log stream: %s", strerror(errno));
    setvbuf(stream, NULL, _IOLBF, 0); /* handed on at each newline */
    if (rte_openlog_stream(stream) != 0)
        return dp_fail(-EINVAL, "DPDK refused the JSON log stream");
    return 0;
}

/* wait until no worker holds what was unpublished before the call */
void
dp_sync(void)
{
    rte_rcu_qsbr_synchronize(dp.qsbr, RTE_QSBR_THRID_INVALID);
}

int
dp_eal_init(int argc, char **argv, struct dp_eal_info *info)
{
    if (dp_eal_up)
        return dp_fail(-EALREADY,
                       "EAL already started in this process (it cannot be started twice)");
    int ret = rte_eal_init(argc, argv);
    if (ret < 0)
        return dp_fail(-rte_errno, "rte_eal_init failed: %s", rte_strerror(rte_errno));
    dp_eal_up = 1;
    unsigned lcore;
    int n = 0;
    RTE_LCORE_FOREACH_WORKER(lcore) {
        if (n < DP_MAX_WORKERS - 1) /* the last counter row is the control thread's */
            dp.worker_lcore[n++] = lcore;
    }
    dp.n_workers = n;
    if (info) {
        info->n_workers = n;
        info->main_lcore = rte_get_main_lcore();
        info->socket_id = (int)rte_socket_id();
    }
    if (n == 0)
        return dp_fail(-EINVAL, "no worker lcore: give EAL at least two lcores (control + worker)");
    return 0;
}

/* rte_hash_cmp_eq_t: 0 when equal */
static int
dp_key8_cmp(const void *a, const void *b, size_t len)
{
    (void)len;
    uint64_t x, y;
    memcpy(&x, a, 8);
    memcpy(&y, b, 8);
    return x != y;
}

static int
dp_key4_cmp(const void *a, const void *b, size_t len)
{
    (void)len;
    uint32_t x, y;
    memcpy(&x, a, 4);
    memcpy(&y, b, 4);
    return x != y;
}

/* rte_hash_function for 8-byte keys: the pipeline's inline dp_key8_hash */
static uint32_t
dp_key8_hash_fn(const void *key, uint32_t len, uint32_t init)
{
    (void)len;
    (void)init; /* DP_KEY8_HASH_INIT, as given below */
    uint64_t k;
    memcpy(&k, key, 8);
    return dp_key8_hash(k);
}

static struct rte_hash *
mk_hash(const char *name, uint32_t entries, uint32_t key_len)
{
    int key8 = key_len == sizeof(uint64_t);
    struct rte_hash_parameters p = {
        .name = name,
        .entries = entries,
        .key_len = key_len,
        .hash_func = key8 ? dp_key8_hash_fn : rte_hash_crc,
        .hash_func_init_val = key8 ? DP_KEY8_HASH_INIT : 0,
        .socket_id = (int)rte_socket_id(),
        .extra_flag = RTE_HASH_EXTRA_FLAGS_RW_CONCURRENCY_LF,
    };
    struct rte_hash *h = rte_hash_create(&p);
    if (!h)
        return NULL;
    /* the library compares keys of other than 16..128 bytes with memcmp */
    if (key8)
        rte_hash_set_cmp_func(h, dp_key8_cmp);
    else if (key_len == sizeof(uint32_t))
        rte_hash_set_cmp_func(h, dp_key4_cmp);
    struct rte_hash_rcu_config rc = {.v = dp.qsbr, .mode = RTE_HASH_QSBR_MODE_DQ};
    if (rte_hash_rcu_qsbr_add(h, &rc) != 0) {
        rte_hash_free(h);
        return NULL;
    }
    return h;
}

/*
 * The mbuf pool. DPDK's net_af_xdp registers the pool's memory with the
 * kernel as one AF_XDP UMEM: from its first chunk on, populated_size
 * objects of the pool's object size, back to back. A pool laid out any
 * other way has objects past that window, and the kernel takes no frame
 * in them: a transmit descriptor there is skipped (the frame lost, its
 * mbuf never completed, each send() stopping at it), a fill-ring entry
 * there is dropped (a receive buffer gone). DPDK lays out a pool that way
 * when its objects must not cross a page: with 4 KiB pages (mode fallback)
 * one object per page, 42 % of the pool past the window; with 2 MiB pages
 * a gap at every page's end.
 *
 * Objects may cross pages unless a device that reads memory by physical
 * address can be on the bus: PCI devices in IOVA-as-PA mode. Every other
 * port (af_packet, af_xdp, memif, vhost-user, tap, ring, pcap, null)
 * copies by virtual address. With no such device the pool is one run of
 * objects; with one, any object still past the window is taken out of
 * the pool for good (pool_hold_outside), so no port ever gets it.
 */
static void **pool_held; /* objects past the UMEM window, never used */
static unsigned pool_n_held;

static struct rte_mempool *
pool_create(const char *name, unsigned n, unsigned cache, int socket)
{
    unsigned flags = 0;
    if (rte_eal_iova_mode() == RTE_IOVA_VA || !rte_eal_has_pci())
        flags |= RTE_MEMPOOL_F_NO_IOVA_CONTIG;
    struct rte_pktmbuf_pool_private priv = {.mbuf_data_room_size = RTE_MBUF_DEFAULT_BUF_SIZE};
    struct rte_mempool *mp =
        rte_mempool_create_empty(name, n, sizeof(struct rte_mbuf) + RTE_MBUF_DEFAULT_BUF_SIZE,
                                 cache, sizeof(priv), socket, flags);
    if (mp == NULL)
        return NULL;
    int ret = rte_mempool_set_ops_byname(mp, rte_mbuf_best_mempool_ops(), NULL);
    if (ret == 0) {
        rte_pktmbuf_pool_init(mp, &priv);
        ret = rte_mempool_populate_default(mp);
    }
    if (ret < 0) {
        rte_mempool_free(mp);
        rte_errno = -ret;
        return NULL;
    }
    rte_mempool_obj_iter(mp, rte_pktmbuf_init, NULL);
    return mp;
}

struct pool_window {
    uintptr_t lo, hi; /* the objects' bytes must lie in [lo, hi) */
    size_t obj, hdr;
    unsigned outside;
};

static void
pool_window_of(struct rte_mempool *mp, struct pool_window *w)
{
    const struct rte_mempool_memhdr *first = STAILQ_FIRST(&mp->mem_list);
    w->obj = (size_t)mp->header_size + mp->elt_size + mp->trailer_size;
    w->hdr = mp->header_size;
    w->lo = (uintptr_t)first->addr;
    w->hi = w->lo + (uintptr_t)mp->populated_size * w->obj;
    w->outside = 0;
}

static inline int
pool_inside(const struct pool_window *w, const void *elt)
{
    uintptr_t a = (uintptr_t)elt - w->hdr;
    return a >= w->lo && a + w->obj <= w->hi;
}

static void
pool_count_outside(struct rte_mempool *mp, void *arg, void *elt, unsigned idx)
{
    struct pool_window *w = arg;
    (void)mp;
    (void)idx;
    w->outside += !pool_inside(w, elt);
}

/* 0, or -ENOMEM; takes the objects of mp past the window net_af_xdp
 * registers (above) out of it, into pool_held */
static int
pool_hold_outside(struct rte_mempool *mp)
{
    struct pool_window w;
    pool_window_of(mp, &w);
    rte_mempool_obj_iter(mp, pool_count_outside, &w);
    if (w.outside == 0)
        return 0;
    unsigned n = mp->populated_size, good = 0;
    void **all = malloc(sizeof(void *) * n);
    pool_held = malloc(sizeof(void *) * w.outside);
    if (all == NULL || pool_held == NULL || rte_mempool_get_bulk(mp, all, n) != 0) {
        free(all);
        free(pool_held);
        pool_held = NULL;
        return -ENOMEM;
    }
    pool_n_held = 0;
    for (unsigned i = 0; i < n; i++) {
        if (pool_inside(&w, all[i]))
            all[good++] = all[i];
        else
            pool_held[pool_n_held++] = all[i];
    }
    rte_mempool_put_bulk(mp, all, good);
    free(all);
    RTE_LOG(INFO, USER1, "mbuf pool: %u of %u mbufs lie outside one run and are not used\n",
            pool_n_held, n);
    return 0;
}

/* free what dp_setup made, as far as it got (NULL pointers are skipped) */
static void
setup_free(void)
{
    dp_poll_free_all();
    free(atomic_exchange(&dp.vtep, NULL));
    struct rte_mbuf *m;
    while (dp.ctrl_tx && rte_ring_dequeue(dp.ctrl_tx, (void **)&m) == 0)
        rte_pktmbuf_free(m);
    /* give the hugepage memory back before the EAL goes */
    dp_ftab_destroy();
    rte_hash_free(dp.vteps);
    rte_hash_free(dp.vnis);
    rte_ring_free(dp.learn_ring);
    rte_ring_free(dp.neigh_ring);
    rte_ring_free(dp.ctrl_tx);
    if (pool_held != NULL) {
        rte_mempool_put_bulk(dp.pool, pool_held, pool_n_held);
        free(pool_held);
        pool_held = NULL;
        pool_n_held = 0;
    }
    rte_mempool_free(dp.pool);
    rte_free(dp.ctr);
    rte_free(dp.qsbr);
    dp.vteps = dp.vnis = NULL;
    dp.learn_ring = dp.neigh_ring = dp.ctrl_tx = NULL;
    dp.pool = NULL;
    dp.ctr = NULL;
    dp.qsbr = NULL;
}

int
dp_setup(unsigned n_mbufs)
{
    if (!dp_eal_up)
        return dp_fail(-EINVAL, "EAL not started");
    if (dp_setup_done)
        return dp_fail(-EALREADY, "dp_setup already done");
    int socket = (int)rte_socket_id();
    int ret;

    size_t qsz = rte_rcu_qsbr_get_memsize(DP_MAX_WORKERS);
    dp.qsbr = rte_zmalloc_socket("dp_qsbr", qsz, RTE_CACHE_LINE_SIZE, socket);
    if (!dp.qsbr || rte_rcu_qsbr_init(dp.qsbr, DP_MAX_WORKERS) != 0) {
        ret = dp_fail(-ENOMEM, "cannot allocate the RCU state");
        goto fail;
    }
    dp.pool = pool_create("dp_pool", n_mbufs, 256, socket);
    if (!dp.pool) {
        ret = dp_fail(-rte_errno, "cannot create mbuf pool of %u mbufs: %s", n_mbufs,
                      rte_strerror(rte_errno));
        goto fail;
    }
    if (pool_hold_outside(dp.pool) < 0) {
        ret = dp_fail(-ENOMEM, "cannot set aside the mbufs outside the pool's one run");
        goto fail;
    }
    dp_guard_init();
    ret = dp_qos_init();
    if (ret == 0)
        ret = dp_csum_init();
    if (ret < 0) {
        ret = dp_fail(ret, "cannot register the mbuf metadata fields");
        goto fail;
    }
    int fdb_ret = dp_ftab_create(socket);
    dp.vteps = mk_hash("dp_vteps", DP_MAX_VTEP_PAIRS, sizeof(uint64_t));
    dp.vnis = mk_hash("dp_vnis", 1 << 12, sizeof(uint32_t));
    if (fdb_ret < 0 || !dp.vteps || !dp.vnis) {
        ret = dp_fail(-ENOMEM, "cannot create hash tables: %s", rte_strerror(rte_errno));
        goto fail;
    }
    dp.learn_ring = rte_ring_create_elem("dp_learn", sizeof(struct dp_slow_event),
                                         DP_SLOW_RING_SIZE, socket, RING_F_SC_DEQ);
    dp.neigh_ring = rte_ring_create_elem("dp_neigh", sizeof(struct dp_slow_event),
                                         DP_SLOW_RING_SIZE, socket, RING_F_SC_DEQ);
    /* one producer (the control thread, under the engine's lock); consumers:
     * the worker polling the VTEP's uplink, and while the VTEP moves to
     * another uplink port, the one polling that for a moment too */
    dp.ctrl_tx = rte_ring_create("dp_ctrl_tx", DP_CTRL_TX_RING_SIZE, socket, RING_F_SP_ENQ);
    dp.ctr =
        rte_zmalloc_socket("dp_counters", sizeof(struct dp_counters), RTE_CACHE_LINE_SIZE, socket);
    if (!dp.learn_ring || !dp.neigh_ring || !dp.ctrl_tx || !dp.ctr) {
        ret = dp_fail(-ENOMEM, "cannot create rings/counters");
        goto fail;
    }
    /* learning's defaults, now that the TSC's rate is known */
    (void)dp_learn_config(DP_LEARN_AGE_MS_DEFAULT, DP_LEARN_PER_NET_DEFAULT,
                          DP_LEARN_PER_VTEP_DEFAULT);
    for (int w = 0; w < DP_MAX_WORKERS; w++) {
        struct dp_poll_list *pl = calloc(1, sizeof(*pl));
        if (!pl) {
            ret = dp_fail(-ENOMEM, "out of memory");
            goto fail;
        }
        atomic_store(&dp.poll[w], pl);
    }
    struct dp_vtep *v = calloc(1, sizeof(*v));
    if (!v) {
        ret = dp_fail(-ENOMEM, "out of memory");
        goto fail;
    }
    v->uplink = -1;
    v->udp_port_be = rte_cpu_to_be_16(dp_vconf.udp_port);
    v->max_frame = dp_max_frame();
    atomic_store(&dp.vtep, v);
    dp_setup_done = 1;
    return 0;
fail:
    setup_free();
    return ret;
}

int
dp_start(void)
{
    if (!dp_setup_done)
        return dp_fail(-EINVAL, "dp_setup not done");
    if (atomic_load(&dp.running))
        return dp_fail(-EALREADY, "already forwarding");
    /* before any burst on a pod's shared memory (dp_shm.h); again at every
     * start, in case something replaced the handlers since */
    int g = dp_shm_guard_install();
    if (g != 0)
        return g;
    struct dp_wctx *ctx[DP_MAX_WORKERS] = {NULL};
    for (int w = 0; w < dp.n_workers; w++) {
        ctx[w] = dp_worker_new(w);
        if (!ctx[w]) {
            while (w-- > 0)
                rte_free(ctx[w]);
            return dp_fail(-ENOMEM, "out of memory for the workers");
        }
    }
    atomic_store(&dp.stop, 0);
    for (int w = 0; w < dp.n_workers; w++) {
        int ret = rte_eal_remote_launch(dp_worker_main, ctx[w], dp.worker_lcore[w]);
        if (ret != 0) {
            /* the workers launched stop and free their own context */
            atomic_store(&dp.stop, 1);
            rte_eal_mp_wait_lcore();
            for (int u = w; u < dp.n_workers; u++)
                rte_free(ctx[u]);
            return dp_fail(ret, "cannot launch worker on lcore %u", dp.worker_lcore[w]);
        }
    }
    atomic_store(&dp.running, 1);
    return 0;
}

int
dp_stop(void)
{
    if (!atomic_load(&dp.running))
        return 0;
    atomic_store(&dp.stop, 1);
    for (int w = 0; w < dp.n_workers; w++)
        (void)rte_eal_wait_lcore(dp.worker_lcore[w]); /* dp_worker_main returns 0 */
    atomic_store(&dp.running, 0);
    return 0;
}

int
dp_shutdown(void)
{
    dp_stop();
    if (!dp_eal_up)
        return 0;
    if (dp_setup_done) {
        /* no worker runs: nothing is held, nothing needs a grace period */
        dp_capture_teardown();
        dp_ports_free_all();
        dp_guard_free_all();
        dp_nets_free_all();
        dp_tunnels_free_all();
        setup_free();
        memset(&dp, 0, sizeof(dp));
    }
    /* DPDK 22.11's net_memif leaves a removed port's listening socket
     * among the interrupt thread's sources, its handle in DPDK's memory:
     * the cleanup below makes that thread walk its sources again while it
     * gives that memory back, which killed the process. Held in a callback
     * of the core's own from here to the process's exit, the thread walks
     * nothing. */
    (void)dp_intr_hold();
    (void)rte_eal_cleanup(); /* nothing is left to undo if it fails */
    dp_eal_up = 0;
    dp_setup_done = 0;
    return 0;
}
