/*
 * dp_control.c - the control path: EAL, ports, networks, FDB, tunnels,
 * neighbours, counters. Runs on the control (main lcore) thread only.
 *
 * Every change the workers can see follows one recipe: build a new immutable
 * snapshot, publish it with an atomic store, wait for a grace period
 * (rte_rcu_qsbr_synchronize), free the old one. Hash tables are DPDK hashes
 * in lock-free reader mode with the hash library's own RCU defer queue.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rte_eal.h>
#include <rte_lcore.h>
#include <rte_ethdev.h>
#include <rte_eth_ring.h>
#include <rte_dev.h>
#include <rte_malloc.h>
#include <rte_cycles.h>
#include <rte_hash_crc.h>
#include <rte_arp.h>
#include <rte_errno.h>

#include "dp_internal.h"
#include "dp_qos.h"

struct dp_state dp;

static __thread char dp_errbuf[512];
static int dp_eal_up;
static int dp_setup_done;

/* control-only bookkeeping */
static uint32_t tun_refs[DP_MAX_TUNNELS];
static uint16_t net_tun_refs[DP_MAX_NETS][DP_MAX_TUNNELS];
static struct dp_vtep_conf vconf = {.uplink = -1, .udp_port = 4789, .underlay_mtu = 1500};
static int vconf_set;

#define DP_MAX_NEIGH 256
static struct {
    uint32_t ip;
    uint8_t mac[6];
    int valid;
} neigh[DP_MAX_NEIGH];

static const char *const drop_names[] = {
#define _(sym, str) str,
    foreach_dp_drop
#undef _
};
static const char *const port_ctr_names[] = {"rx_packets", "rx_bytes", "tx_packets", "tx_bytes"};
static const char *const net_ctr_names[] = {"encap_packets", "decap_packets", "flood_packets",
                                            "local_packets"};
static const char *const worker_ctr_names[] = {"polls", "busy_polls", "fdb_lookups",
                                               "fdb_cache_misses"};
static const char *const qos_ctr_names[] = {"enqueued", "sent", "dropped", "sent_bytes"};

void
dp_set_error(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(dp_errbuf, sizeof(dp_errbuf), fmt, ap);
    va_end(ap);
    if (err && n > 0 && (size_t)n < sizeof(dp_errbuf))
        snprintf(dp_errbuf + n, sizeof(dp_errbuf) - n, ": %s", rte_strerror(err));
}

#define FAIL(err, ...)                \
    do {                              \
        dp_set_error(0, __VA_ARGS__); \
        return -(err);                \
    } while (0)

int
dp_abi_version(void)
{
    return DP_ABI_VERSION;
}
const char *
dp_last_error(void)
{
    return dp_errbuf;
}
int
dp_running(void)
{
    return atomic_load(&dp.running);
}

static void
dp_sync(void)
{
    rte_rcu_qsbr_synchronize(dp.qsbr, RTE_QSBR_THRID_INVALID);
}

/* ------------------------------------------------------------------ EAL */

int
dp_eal_init(int argc, char **argv, struct dp_eal_info *info)
{
    if (dp_eal_up)
        FAIL(EALREADY, "EAL already started in this process (it cannot be started twice)");
    int ret = rte_eal_init(argc, argv);
    if (ret < 0) {
        int e = rte_errno;
        dp_set_error(e, "rte_eal_init failed");
        return -e;
    }
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
        FAIL(EINVAL, "no worker lcore: give EAL at least two lcores (control + worker)");
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

int
dp_setup(unsigned n_mbufs)
{
    if (!dp_eal_up)
        FAIL(EINVAL, "EAL not started");
    if (dp_setup_done)
        FAIL(EALREADY, "dp_setup already done");
    int socket = (int)rte_socket_id();

    size_t qsz = rte_rcu_qsbr_get_memsize(DP_MAX_WORKERS);
    dp.qsbr = rte_zmalloc_socket("dp_qsbr", qsz, RTE_CACHE_LINE_SIZE, socket);
    if (!dp.qsbr || rte_rcu_qsbr_init(dp.qsbr, DP_MAX_WORKERS) != 0)
        FAIL(ENOMEM, "cannot allocate the RCU state");

    dp.pool =
        rte_pktmbuf_pool_create("dp_pool", n_mbufs, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE, socket);
    if (!dp.pool) {
        int e = rte_errno;
        dp_set_error(e, "cannot create mbuf pool of %u mbufs", n_mbufs);
        return -e;
    }
    int qret = dp_qos_init();
    if (qret < 0)
        FAIL(-qret, "cannot register the mbuf metadata field");
    dp.fdb = mk_hash("dp_fdb", 1 << 20, sizeof(uint64_t));
    dp.vteps = mk_hash("dp_vteps", 1 << 16, sizeof(uint64_t));
    dp.vnis = mk_hash("dp_vnis", 1 << 12, sizeof(uint32_t));
    if (!dp.fdb || !dp.vteps || !dp.vnis)
        FAIL(ENOMEM, "cannot create hash tables: %s", rte_strerror(rte_errno));
    dp.slow_ring = rte_ring_create_elem("dp_slow", sizeof(struct dp_slow_event), DP_SLOW_RING_SIZE,
                                        socket, RING_F_SC_DEQ);
    dp.ctrl_tx =
        rte_ring_create("dp_ctrl_tx", DP_CTRL_TX_RING_SIZE, socket, RING_F_SP_ENQ | RING_F_SC_DEQ);
    dp.ctr =
        rte_zmalloc_socket("dp_counters", sizeof(struct dp_counters), RTE_CACHE_LINE_SIZE, socket);
    if (!dp.slow_ring || !dp.ctrl_tx || !dp.ctr)
        FAIL(ENOMEM, "cannot create rings/counters");
    for (int w = 0; w < DP_MAX_WORKERS; w++) {
        struct dp_poll_list *pl = calloc(1, sizeof(*pl));
        if (!pl)
            FAIL(ENOMEM, "out of memory");
        atomic_store(&dp.poll[w], pl);
    }
    struct dp_vtep *v = calloc(1, sizeof(*v));
    if (!v)
        FAIL(ENOMEM, "out of memory");
    v->uplink = -1;
    v->udp_port_be = rte_cpu_to_be_16(4789);
    v->max_frame = 1500 - DP_VXLAN_MTU_OVERHEAD + RTE_ETHER_HDR_LEN;
    atomic_store(&dp.vtep, v);
    dp_setup_done = 1;
    return 0;
}

/* ------------------------------------------------------------ workers */

int
dp_start(void)
{
    if (!dp_setup_done)
        FAIL(EINVAL, "dp_setup not done");
    if (atomic_load(&dp.running))
        FAIL(EALREADY, "already forwarding");
    atomic_store(&dp.stop, 0);
    for (int w = 0; w < dp.n_workers; w++) {
        int ret = rte_eal_remote_launch(dp_worker_main, (void *)(intptr_t)w, dp.worker_lcore[w]);
        if (ret != 0) {
            atomic_store(&dp.stop, 1);
            rte_eal_mp_wait_lcore();
            FAIL(-ret, "cannot launch worker on lcore %u", dp.worker_lcore[w]);
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
        rte_eal_wait_lcore(dp.worker_lcore[w]);
    atomic_store(&dp.running, 0);
    return 0;
}

/* ----------------------------------------------------------------- ports */

static struct dp_port *
port_get(int idx)
{
    if (idx < 0 || idx >= DP_MAX_PORTS)
        return NULL;
    return atomic_load(&dp.ports[idx]);
}

static int
port_slot(void)
{
    for (int i = 0; i < DP_MAX_PORTS; i++)
        if (!atomic_load(&dp.ports[i]))
            return i;
    return -1;
}

/* the worker that polls rx queue q of port p (p->worker: the shared worker
 * it was dealt, which a plane with a worker of its own overrides) */
static int
rxq_worker(const struct dp_port *p, int q)
{
    int w = p->worker;
    if (q > 0) {
        /* a plane that claims this queue number, with a worker of its own */
        for (int pl = 0; pl < DP_MAX_PLANES; pl++) {
            const struct dp_plane_rt *r = &dp_qg.plane[pl];
            if (r->used && r->rx_queue == q && r->worker >= 0 && r->worker < dp.n_workers)
                return r->worker;
        }
    } else if (p->net >= 0) {
        /* a plane given its own worker gets its pod ports polled there */
        struct dp_net *n = atomic_load(&dp.nets[p->net]);
        int pw = n ? dp_qg.plane[n->plane].worker : -1;
        if (pw >= 0 && pw < dp.n_workers)
            w = pw;
    }
    return w;
}

static int
poll_has(const struct dp_poll_list *pl, uint16_t port, uint16_t q)
{
    for (uint16_t i = 0; pl && i < pl->n; i++)
        if (pl->e[i].port == port && pl->e[i].queue == q)
            return 1;
    return 0;
}

/*
 * Rebuild every worker's poll list from the published ports. An rx queue is
 * never polled by two workers at once: a queue that changes workers is first
 * taken off the old list (and a grace period waited), then put on the new.
 */
void
dp_poll_rebuild(void)
{
    struct dp_poll_list *want[DP_MAX_WORKERS], *old[DP_MAX_WORKERS];
    for (int w = 0; w < dp.n_workers; w++) {
        want[w] = calloc(1, sizeof(*want[w]));
        if (!want[w])
            abort();
    }
    for (int i = 0; i < DP_MAX_PORTS; i++) {
        struct dp_port *p = port_get(i);
        for (int q = 0; p && q < p->n_rxq; q++) {
            struct dp_poll_list *pl = want[rxq_worker(p, q)];
            pl->e[pl->n].port = (uint16_t)i;
            pl->e[pl->n++].queue = (uint16_t)q;
        }
    }
    /* 1: each worker keeps only what stays its own */
    for (int w = 0; w < dp.n_workers; w++) {
        struct dp_poll_list *cur = atomic_load(&dp.poll[w]);
        struct dp_poll_list *keep = calloc(1, sizeof(*keep));
        if (!keep)
            abort();
        for (uint16_t k = 0; k < want[w]->n; k++)
            if (poll_has(cur, want[w]->e[k].port, want[w]->e[k].queue))
                keep->e[keep->n++] = want[w]->e[k];
        old[w] = atomic_exchange(&dp.poll[w], keep);
    }
    dp_sync();
    for (int w = 0; w < dp.n_workers; w++) {
        free(old[w]);
        old[w] = atomic_exchange(&dp.poll[w], want[w]);
    }
    /* 2: the new lists; the old ones are free once no worker reads them */
    dp_sync();
    for (int w = 0; w < dp.n_workers; w++)
        free(old[w]);
}

static int
least_loaded_worker(void)
{
    int load[DP_MAX_WORKERS] = {0};
    for (int i = 0; i < DP_MAX_PORTS; i++) {
        struct dp_port *p = port_get(i);
        if (p)
            load[rxq_worker(p, 0)]++;
    }
    int best = 0;
    for (int w = 1; w < dp.n_workers; w++)
        if (load[w] < load[best])
            best = w;
    return best;
}

static int net_set_local(int net, int port, int add);

static void
port_publish(int idx, struct dp_port *p)
{
    for (int w = 0; w < DP_MAX_WORKERS; w++) {
        memset(dp.ctr->port[w][idx], 0, sizeof(dp.ctr->port[w][idx]));
        memset(dp.ctr->qos[w][idx], 0, sizeof(dp.ctr->qos[w][idx]));
    }
    atomic_store(&dp.ports[idx], p);
    if (p->net >= 0)
        net_set_local(p->net, idx, 1); /* flood to it only once it exists */
    dp_poll_rebuild();
}

static int
ethdev_setup(uint16_t pid, struct dp_port *p, unsigned n_rxq)
{
    struct rte_eth_dev_info di;
    int ret = rte_eth_dev_info_get(pid, &di);
    if (ret != 0)
        FAIL(-ret, "port %s: cannot read device info", p->name);
    if (n_rxq < 1 || n_rxq > DP_MAX_RXQ)
        FAIL(EINVAL, "port %s: %u rx queues, not 1..%d", p->name, n_rxq, DP_MAX_RXQ);
    if (n_rxq > di.max_rx_queues)
        FAIL(EINVAL, "port %s: %u rx queues asked, the device has at most %u", p->name, n_rxq,
             (unsigned)di.max_rx_queues);
    uint16_t ntx = (uint16_t)dp.n_workers;
    if (di.max_tx_queues < ntx)
        ntx = 1;
    struct rte_eth_conf conf;
    memset(&conf, 0, sizeof(conf));
    ret = rte_eth_dev_configure(pid, (uint16_t)n_rxq, ntx, &conf);
    if (ret != 0)
        FAIL(-ret, "port %s: rte_eth_dev_configure failed (%s)", p->name, strerror(-ret));
    uint16_t nrxd = 1024, ntxd = 1024;
    rte_eth_dev_adjust_nb_rx_tx_desc(pid, &nrxd, &ntxd);
    int sock = rte_eth_dev_socket_id(pid);
    if (sock < 0)
        sock = (int)rte_socket_id();
    for (uint16_t q = 0; q < n_rxq; q++) {
        ret = rte_eth_rx_queue_setup(pid, q, nrxd, (unsigned)sock, NULL, dp.pool);
        if (ret != 0)
            FAIL(-ret, "port %s: rx queue %u setup failed (%s)", p->name, q, strerror(-ret));
    }
    for (uint16_t q = 0; q < ntx; q++) {
        ret = rte_eth_tx_queue_setup(pid, q, ntxd, (unsigned)sock, NULL);
        if (ret != 0)
            FAIL(-ret, "port %s: tx queue setup failed (%s)", p->name, strerror(-ret));
    }
    ret = rte_eth_dev_start(pid);
    if (ret != 0)
        FAIL(-ret, "port %s: start failed (%s)", p->name, strerror(-ret));
    rte_eth_promiscuous_enable(pid); /* not every PMD has it; harmless */
    struct rte_ether_addr ea;
    if (rte_eth_macaddr_get(pid, &ea) == 0)
        memcpy(p->mac, ea.addr_bytes, 6);
    p->n_txq = ntx;
    p->n_rxq = (uint16_t)n_rxq;
    return 0;
}

static struct dp_port *
port_new(int role, int net, const char *name, int driver)
{
    struct dp_port *p = rte_zmalloc("dp_port", sizeof(*p), RTE_CACHE_LINE_SIZE);
    if (!p)
        return NULL;
    p->role = role;
    p->driver = driver;
    p->net = net;
    p->n_rxq = 1;
    p->worker = least_loaded_worker(); /* unless its plane has one (rxq_worker) */
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->tx_lock = rte_zmalloc("dp_txlock", sizeof(rte_spinlock_t), RTE_CACHE_LINE_SIZE);
    if (!p->tx_lock) {
        rte_free(p);
        return NULL;
    }
    rte_spinlock_init(p->tx_lock);
    return p;
}

static void
port_free(struct dp_port *p)
{
    dp.ctr->drop[DP_CTRL_ROW][DP_DROP_QUEUE_FLUSHED] += dp_qos_free(p->qos);
    rte_free(p->tx_lock);
    rte_free(p);
}

static struct dp_net *net_get(int net);

static int
check_role(int role, int net)
{
    if (role != DP_ROLE_POD && role != DP_ROLE_UPLINK)
        FAIL(EINVAL, "role %d is neither pod (0) nor uplink (1)", role);
    if (net >= 0 && role != DP_ROLE_POD)
        FAIL(EINVAL, "an uplink port belongs to no network");
    if (net >= 0 && !net_get(net))
        FAIL(ENOENT, "no network %d", net);
    return 0;
}

int
dp_port_add(const char *devargs, int role, int net, unsigned n_rxq)
{
    if (!dp_setup_done)
        FAIL(EINVAL, "dp_setup not done");
    int cr = check_role(role, net);
    if (cr)
        return cr;
    int idx = port_slot();
    if (idx < 0)
        FAIL(ENOSPC, "all %d port slots in use", DP_MAX_PORTS);
    char name[64];
    snprintf(name, sizeof(name), "%s", devargs);
    char *comma = strchr(name, ',');
    if (comma)
        *comma = 0;
    uint16_t pid;
    if (rte_eth_dev_get_port_by_name(name, &pid) == 0)
        FAIL(EEXIST, "device %s is already a port", name);
    int ret = rte_dev_probe(devargs);
    if (ret != 0)
        FAIL(-ret, "cannot probe device '%s' (%s)", devargs, strerror(-ret));
    if (rte_eth_dev_get_port_by_name(name, &pid) != 0) {
        rte_eal_hotplug_remove("vdev", name);
        FAIL(ENODEV, "device '%s' probed but no ethdev port appeared", devargs);
    }
    struct dp_port *p = port_new(role, net, name, DP_DRV_ETHDEV);
    if (!p)
        FAIL(ENOMEM, "out of memory");
    p->idx = idx;
    p->eth_port = pid;
    ret = ethdev_setup(pid, p, n_rxq);
    if (ret != 0) {
        char keep[512];
        snprintf(keep, sizeof(keep), "%s", dp_errbuf);
        struct rte_eth_dev_info di;
        rte_eth_dev_stop(pid);
        if (rte_eth_dev_info_get(pid, &di) == 0 && di.device)
            rte_dev_remove(di.device);
        port_free(p);
        snprintf(dp_errbuf, sizeof(dp_errbuf), "%s", keep);
        return ret;
    }
    port_publish(idx, p);
    return idx;
}

/* free a ring port's rings and the frames in them */
static void
ring_port_free_rings(struct rte_ring **rx, unsigned n_rx, struct rte_ring *tx)
{
    struct rte_mbuf *m;
    for (unsigned q = 0; q < n_rx; q++) {
        while (rx[q] && rte_ring_dequeue(rx[q], (void **)&m) == 0)
            rte_pktmbuf_free(m);
        rte_ring_free(rx[q]);
    }
    while (tx && rte_ring_dequeue(tx, (void **)&m) == 0)
        rte_pktmbuf_free(m);
    rte_ring_free(tx);
}

int
dp_port_add_ring(const char *name, int role, int net, unsigned ring_size, unsigned n_rxq)
{
    if (!dp_setup_done)
        FAIL(EINVAL, "dp_setup not done");
    int cr = check_role(role, net);
    if (cr)
        return cr;
    if (ring_size == 0 || (ring_size & (ring_size - 1)))
        FAIL(EINVAL, "ring size %u is not a power of two", ring_size);
    if (n_rxq < 1 || n_rxq > DP_MAX_RXQ)
        FAIL(EINVAL, "port %s: %u rx queues, not 1..%d", name, n_rxq, DP_MAX_RXQ);
    int idx = port_slot();
    if (idx < 0)
        FAIL(ENOSPC, "all %d port slots in use", DP_MAX_PORTS);
    char dev[64], rn[64];
    snprintf(dev, sizeof(dev), "net_ring_%s", name);
    uint16_t pid;
    if (rte_eth_dev_get_port_by_name(dev, &pid) == 0)
        FAIL(EEXIST, "ring port %s already exists", name);
    int sock = (int)rte_socket_id();
    struct rte_ring *rx[DP_MAX_RXQ] = {NULL};
    int ok = 1;
    for (unsigned q = 0; q < n_rxq; q++) {
        snprintf(rn, sizeof(rn), "rx%u_%s", q, name);
        rx[q] = rte_ring_create(rn, ring_size, sock, 0);
        ok = ok && rx[q];
    }
    snprintf(rn, sizeof(rn), "tx_%s", name);
    struct rte_ring *tx = rte_ring_create(rn, ring_size, sock, 0);
    if (!ok || !tx) {
        ring_port_free_rings(rx, n_rxq, tx);
        FAIL(ENOMEM, "cannot create rings for port %s: %s", name, rte_strerror(rte_errno));
    }
    struct rte_ring *txq[DP_MAX_WORKERS];
    for (int i = 0; i < DP_MAX_WORKERS; i++)
        txq[i] = tx;
    int n_txq = dp.n_workers > 0 ? dp.n_workers : 1;
    int ret = rte_eth_from_rings(dev, rx, n_rxq, txq, (unsigned)n_txq, (unsigned)sock);
    if (ret < 0) {
        ring_port_free_rings(rx, n_rxq, tx);
        FAIL(EINVAL, "cannot create ring port %s: %s", name, rte_strerror(rte_errno));
    }
    uint16_t eth = (uint16_t)ret;
    struct dp_port *p = port_new(role, net, dev, DP_DRV_ETHDEV);
    if (!p) {
        rte_eth_dev_close(eth);
        ring_port_free_rings(rx, n_rxq, tx);
        FAIL(ENOMEM, "out of memory");
    }
    p->idx = idx;
    p->eth_port = eth;
    memcpy(p->ring_rx, rx, sizeof(p->ring_rx));
    p->ring_tx = tx;
    /* a ring port's tx ring is multi-producer: one tx queue per worker */
    ret = ethdev_setup(p->eth_port, p, n_rxq);
    if (ret != 0) {
        rte_eth_dev_close(eth);
        ring_port_free_rings(rx, n_rxq, tx);
        port_free(p);
        return ret;
    }
    port_publish(idx, p);
    return idx;
}

int
dp_port_add_afpacket(const char *ifname, int role, int net, unsigned frames)
{
    if (!dp_setup_done)
        FAIL(EINVAL, "dp_setup not done");
    int cr = check_role(role, net);
    if (cr)
        return cr;
    int idx = port_slot();
    if (idx < 0)
        FAIL(ENOSPC, "all %d port slots in use", DP_MAX_PORTS);
    for (int i = 0; i < DP_MAX_PORTS; i++) {
        struct dp_port *q = port_get(i);
        if (q && q->driver == DP_DRV_AFPACKET && strcmp(q->name, ifname) == 0)
            FAIL(EEXIST, "interface %s is already a port", ifname);
    }
    struct dp_port *p = port_new(role, net, ifname, DP_DRV_AFPACKET);
    if (!p)
        FAIL(ENOMEM, "out of memory");
    p->idx = idx;
    p->n_txq = 1;
    int ret = dp_afp_open(ifname, frames, dp.pool, &p->afp, dp_errbuf, sizeof(dp_errbuf));
    if (ret != 0) {
        port_free(p);
        return ret;
    }
    dp_afp_mac(p->afp, p->mac);
    port_publish(idx, p);
    return idx;
}

static void
fdb_purge(int (*match)(uint64_t key, void *val, int arg), int arg)
{
    /* collect first, delete after: never delete while iterating */
    uint32_t iter = 0;
    const void *key;
    void *val;
    size_t cap = 1024, n = 0;
    uint64_t *keys = malloc(cap * sizeof(*keys));
    if (!keys)
        return;
    while (rte_hash_iterate(dp.fdb, &key, &val, &iter) >= 0) {
        uint64_t k = *(const uint64_t *)key;
        if (!match(k, val, arg))
            continue;
        if (n == cap) {
            uint64_t *nk = realloc(keys, 2 * cap * sizeof(*keys));
            if (!nk)
                break;
            keys = nk;
            cap *= 2;
        }
        keys[n++] = k;
    }
    for (size_t i = 0; i < n; i++) {
        uint8_t mac[6];
        memcpy(mac, &keys[i], 6);
        dp_fdb_del((int)(keys[i] >> 48), mac);
    }
    free(keys);
}

static int
match_port(uint64_t key, void *val, int port)
{
    (void)key;
    return DP_FDB_KIND(val) == DP_FDB_LOCAL && (int)DP_FDB_TARGET(val) == port;
}

static int
match_net(uint64_t key, void *val, int net)
{
    (void)val;
    return (int)(key >> 48) == net;
}

int
dp_port_del(int idx)
{
    struct dp_port *p = port_get(idx);
    if (!p)
        FAIL(ENOENT, "no port %d", idx);
    if (vconf_set && vconf.uplink == idx)
        FAIL(EBUSY, "port %d (%s) is the VTEP uplink; set another uplink first", idx, p->name);
    /* stop delivering to it: FDB entries, network membership, poll list */
    fdb_purge(match_port, idx);
    if (p->net >= 0)
        net_set_local(p->net, idx, 0);
    atomic_store(&dp.ports[idx], NULL);
    dp_poll_rebuild(); /* includes the grace period: no worker holds p now */
    if (p->driver == DP_DRV_AFPACKET) {
        dp_afp_close(p->afp);
    } else {
        struct rte_eth_dev_info di;
        rte_eth_dev_stop(p->eth_port);
        int have = rte_eth_dev_info_get(p->eth_port, &di) == 0 && di.device;
        if (!have || rte_dev_remove(di.device) != 0)
            rte_eth_dev_close(p->eth_port);
        if (p->ring_tx)
            ring_port_free_rings(p->ring_rx, DP_MAX_RXQ, p->ring_tx);
    }
    port_free(p);
    return 0;
}

int
dp_port_info(int idx, struct dp_port_info *out)
{
    struct dp_port *p = port_get(idx);
    memset(out, 0, sizeof(*out));
    if (!p)
        return 0;
    out->used = 1;
    out->driver = p->driver;
    out->role = p->role;
    out->net = p->net;
    out->worker = rxq_worker(p, 0);
    out->eth_port = p->eth_port;
    out->n_txq = p->n_txq;
    out->n_rxq = p->n_rxq;
    for (int q = 0; q < DP_MAX_RXQ; q++)
        out->rxq_worker[q] = q < p->n_rxq ? rxq_worker(p, q) : -1;
    memcpy(out->mac, p->mac, 6);
    snprintf(out->name, sizeof(out->name), "%s", p->name);
    return 1;
}

/* replace port idx by a copy with another network */
static int
port_replace_net(int idx, int net)
{
    struct dp_port *p = port_get(idx);
    struct dp_port *np = rte_zmalloc("dp_port", sizeof(*np), RTE_CACHE_LINE_SIZE);
    if (!np)
        FAIL(ENOMEM, "out of memory");
    *np = *p;
    np->net = net;
    atomic_store(&dp.ports[idx], np);
    dp_sync();
    rte_free(p); /* the lock and driver state moved to np */
    return 0;
}

/* ------------------------------------------------------------- networks */

static struct dp_net *
net_get(int net)
{
    if (net < 0 || net >= DP_MAX_NETS)
        return NULL;
    return atomic_load(&dp.nets[net]);
}

static uint32_t
max_frame(void)
{
    return (uint32_t)vconf.underlay_mtu - DP_VXLAN_MTU_OVERHEAD + RTE_ETHER_HDR_LEN;
}

/* publish a modified copy of a network */
static struct dp_net *
net_clone(int net)
{
    struct dp_net *o = net_get(net);
    struct dp_net *n = rte_malloc("dp_net", sizeof(*n), RTE_CACHE_LINE_SIZE);
    if (n && o)
        *n = *o;
    return n;
}

static void
net_publish(int net, struct dp_net *n)
{
    struct dp_net *old = atomic_exchange(&dp.nets[net], n);
    dp_sync();
    rte_free(old);
}

int
dp_net_add(int net, uint32_t vni, int plane)
{
    if (!dp_setup_done)
        FAIL(EINVAL, "dp_setup not done");
    if (net < 0 || net >= DP_MAX_NETS)
        FAIL(EINVAL, "network index %d out of range 0..%d", net, DP_MAX_NETS - 1);
    if (vni == 0 || vni >= (1u << 24))
        FAIL(EINVAL, "VNI %u out of range 1..16777215", vni);
    if (plane < 0 || plane >= DP_MAX_PLANES)
        FAIL(EINVAL, "plane %d out of range 0..%d", plane, DP_MAX_PLANES - 1);
    if (net_get(net))
        FAIL(EEXIST, "network %d already exists", net);
    void *d;
    if (rte_hash_lookup_data(dp.vnis, &vni, &d) >= 0)
        FAIL(EEXIST, "VNI %u already belongs to network %d", vni, (int)(uintptr_t)d);
    struct dp_net *n = rte_zmalloc("dp_net", sizeof(*n), RTE_CACHE_LINE_SIZE);
    if (!n)
        FAIL(ENOMEM, "out of memory");
    n->idx = net;
    n->vni = vni;
    n->vni_be_word = rte_cpu_to_be_32(vni << 8);
    n->plane = plane;
    n->max_frame = max_frame();
    dp.net_plane[net] = (uint8_t)plane;
    int ret = rte_hash_add_key_data(dp.vnis, &vni, (void *)(uintptr_t)net);
    if (ret != 0) {
        rte_free(n);
        FAIL(-ret, "cannot add VNI %u to the VNI table", vni);
    }
    for (int w = 0; w < DP_MAX_WORKERS; w++)
        memset(dp.ctr->net[w][net], 0, sizeof(dp.ctr->net[w][net]));
    net_publish(net, n);
    return 0;
}

int
dp_net_del(int net)
{
    struct dp_net *n = net_get(net);
    if (!n)
        FAIL(ENOENT, "no network %d", net);
    if (n->n_local)
        FAIL(EBUSY, "network %d still has %u local ports", net, n->n_local);
    uint32_t vni = n->vni; /* n is freed by the changes below */
    dp_net_flood_set(net, NULL, 0);
    fdb_purge(match_net, net);
    rte_hash_del_key(dp.vnis, &vni);
    net_publish(net, NULL);
    return 0;
}

static int
net_set_local(int net, int port, int add)
{
    struct dp_net *n = net_clone(net);
    if (!n)
        FAIL(ENOMEM, "out of memory");
    uint16_t k = 0;
    for (uint16_t i = 0; i < n->n_local; i++)
        if (n->local[i] != port)
            n->local[k++] = n->local[i];
    if (add)
        n->local[k++] = (uint16_t)port;
    n->n_local = k;
    net_publish(net, n);
    return 0;
}

int
dp_port_set_net(int idx, int net)
{
    struct dp_port *p = port_get(idx);
    if (!p)
        FAIL(ENOENT, "no port %d", idx);
    if (p->role != DP_ROLE_POD)
        FAIL(EINVAL, "port %d (%s) is an uplink, not a pod port", idx, p->name);
    if (net >= 0 && !net_get(net))
        FAIL(ENOENT, "no network %d", net);
    if (p->net == net)
        return 0;
    if (p->net >= 0) {
        fdb_purge(match_port, idx);
        net_set_local(p->net, idx, 0);
    }
    if (net >= 0)
        net_set_local(net, idx, 1);
    return port_replace_net(idx, net);
}

/* ------------------------------------------------------ tunnels & ARP */

static int
same_subnet(uint32_t a, uint32_t b)
{
    if (vconf.prefix_len == 0)
        return 1;
    uint32_t mask = vconf.prefix_len >= 32 ? 0xffffffffu : ~(0xffffffffu >> vconf.prefix_len);
    return (a & mask) == (b & mask);
}

static uint32_t
next_hop(uint32_t ip)
{
    if (same_subnet(ip, vconf.ip) || vconf.gateway == 0)
        return ip;
    return vconf.gateway;
}

static int
neigh_find(uint32_t ip)
{
    for (int i = 0; i < DP_MAX_NEIGH; i++)
        if (neigh[i].valid && neigh[i].ip == ip)
            return i;
    return -1;
}

static uint32_t
csum_words(const uint8_t *p, size_t len)
{
    uint32_t s = 0;
    for (size_t i = 0; i + 1 < len; i += 2) {
        uint16_t w;
        memcpy(&w, p + i, 2);
        s += w;
    }
    return s;
}

/* build the template for tunnel t (control path, once per change) */
static void
tunnel_build(struct dp_tunnel *t)
{
    const uint8_t *nh_mac = NULL;
    t->nh_ip = next_hop(t->ip);
    if (vconf.static_nh) {
        nh_mac = vconf.static_nh_mac;
    } else {
        int ni = neigh_find(t->nh_ip);
        if (ni >= 0)
            nh_mac = neigh[ni].mac;
    }
    t->resolved = nh_mac != NULL && vconf_set && vconf.uplink >= 0;
    memset(t->hdr, 0, sizeof(t->hdr));
    struct rte_ether_hdr *eth = (struct rte_ether_hdr *)t->hdr;
    struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(eth + 1);
    struct rte_udp_hdr *udp = (struct rte_udp_hdr *)(ip + 1);
    struct rte_vxlan_hdr *vx = (struct rte_vxlan_hdr *)(udp + 1);
    if (nh_mac)
        memcpy(eth->dst_addr.addr_bytes, nh_mac, 6);
    memcpy(eth->src_addr.addr_bytes, vconf.mac, 6);
    eth->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
    ip->version_ihl = RTE_IPV4_VHL_DEF;
    ip->type_of_service = 0; /* per packet: inner DSCP */
    ip->total_length = 0;    /* per packet */
    ip->packet_id = 0;       /* DF set: ID carries nothing (RFC 6864) */
    ip->fragment_offset = rte_cpu_to_be_16(RTE_IPV4_HDR_DF_FLAG);
    ip->time_to_live = 64;
    ip->next_proto_id = IPPROTO_UDP;
    ip->hdr_checksum = 0; /* per packet, incrementally */
    ip->src_addr = rte_cpu_to_be_32(vconf.ip);
    ip->dst_addr = rte_cpu_to_be_32(t->ip);
    udp->src_port = 0; /* per packet: inner flow hash */
    udp->dst_port = rte_cpu_to_be_16(vconf.udp_port);
    udp->dgram_len = 0;                          /* per packet */
    udp->dgram_cksum = 0;                        /* zero on IPv4 (RFC 7348) */
    vx->vx_flags = rte_cpu_to_be_32(0x08000000); /* I flag */
    vx->vx_vni = 0;                              /* per packet: the network's VNI */
    /* all words but the first (version, TOS), which the pipeline adds */
    t->csum_base = csum_words((const uint8_t *)ip + 2, sizeof(*ip) - 2);
}

static void
tunnel_refresh(int ti)
{
    struct dp_tunnel *o = atomic_load(&dp.tunnels[ti]);
    if (!o)
        return;
    struct dp_tunnel *t = rte_malloc("dp_tunnel", sizeof(*t), RTE_CACHE_LINE_SIZE);
    if (!t)
        return;
    t->ip = o->ip;
    tunnel_build(t);
    atomic_store(&dp.tunnels[ti], t);
    dp_sync();
    rte_free(o);
}

static void
tunnels_refresh_all(void)
{
    for (int i = 0; i < DP_MAX_TUNNELS; i++)
        tunnel_refresh(i);
}

static int
tunnel_find(uint32_t ip)
{
    for (int i = 0; i < DP_MAX_TUNNELS; i++) {
        struct dp_tunnel *t = atomic_load(&dp.tunnels[i]);
        if (t && t->ip == ip)
            return i;
    }
    return -1;
}

/* take a reference on the tunnel to ip for network net, creating it */
/* after every FDB or VTEP table change: the workers' caches of them start
 * over (dp_internal.h) */
static void
tables_changed(void)
{
    atomic_fetch_add_explicit(&dp.tbl_gen, 1, memory_order_release);
}

static int
tunnel_ref(int net, uint32_t ip)
{
    int ti = tunnel_find(ip);
    if (ti < 0) {
        for (int i = 0; i < DP_MAX_TUNNELS && ti < 0; i++)
            if (!atomic_load(&dp.tunnels[i]))
                ti = i;
        if (ti < 0)
            FAIL(ENOSPC, "all %d remote VTEP slots in use", DP_MAX_TUNNELS);
        struct dp_tunnel *t = rte_zmalloc("dp_tunnel", sizeof(*t), RTE_CACHE_LINE_SIZE);
        if (!t)
            FAIL(ENOMEM, "out of memory");
        t->ip = ip;
        tunnel_build(t);
        atomic_store(&dp.tunnels[ti], t);
    }
    tun_refs[ti]++;
    if (net_tun_refs[net][ti]++ == 0) {
        struct dp_net *n = net_get(net);
        uint64_t k = dp_vtep_key(n->vni_be_word, rte_cpu_to_be_32(ip));
        rte_hash_add_key_data(dp.vteps, &k, (void *)(uintptr_t)net);
        tables_changed();
    }
    return ti;
}

static void
tunnel_unref(int net, int ti)
{
    struct dp_tunnel *t = atomic_load(&dp.tunnels[ti]);
    if (!t)
        return;
    if (--net_tun_refs[net][ti] == 0) {
        struct dp_net *n = net_get(net);
        if (n) {
            uint64_t k = dp_vtep_key(n->vni_be_word, rte_cpu_to_be_32(t->ip));
            rte_hash_del_key(dp.vteps, &k);
            tables_changed();
        }
    }
    if (--tun_refs[ti] == 0) {
        atomic_store(&dp.tunnels[ti], NULL);
        dp_sync();
        rte_free(t);
    }
}

int
dp_net_flood_set(int net, const uint32_t *ips, int cnt)
{
    struct dp_net *o = net_get(net);
    if (!o)
        FAIL(ENOENT, "no network %d", net);
    if (cnt < 0 || cnt > DP_MAX_TUNNELS)
        FAIL(EINVAL, "flood list of %d VTEPs (max %d)", cnt, DP_MAX_TUNNELS);
    for (int i = 0; i < cnt; i++) {
        if (ips[i] == 0 || ips[i] == 0xffffffffu)
            FAIL(EINVAL, "flood list entry %d is not a unicast address", i);
        if (vconf_set && ips[i] == vconf.ip)
            FAIL(EINVAL, "flood list entry %d is this node's own VTEP", i);
    }
    uint16_t old_flood[DP_MAX_TUNNELS];
    uint16_t old_n = o->n_flood;
    memcpy(old_flood, o->flood, old_n * sizeof(uint16_t));
    struct dp_net *n = net_clone(net);
    if (!n)
        FAIL(ENOMEM, "out of memory");
    n->n_flood = 0;
    for (int i = 0; i < cnt; i++) {
        int dup = 0;
        for (int j = 0; j < i; j++)
            dup |= ips[j] == ips[i];
        if (dup)
            continue;
        int ti = tunnel_ref(net, ips[i]);
        if (ti < 0) {
            for (uint16_t j = 0; j < n->n_flood; j++)
                tunnel_unref(net, n->flood[j]);
            rte_free(n);
            return ti;
        }
        n->flood[n->n_flood++] = (uint16_t)ti;
    }
    net_publish(net, n);
    for (uint16_t j = 0; j < old_n; j++)
        tunnel_unref(net, old_flood[j]);
    return 0;
}

int
dp_vtep_set(const struct dp_vtep_conf *c)
{
    if (!dp_setup_done)
        FAIL(EINVAL, "dp_setup not done");
    if (c->ip == 0)
        FAIL(EINVAL, "VTEP address must be set");
    if (c->prefix_len > 32)
        FAIL(EINVAL, "VTEP prefix length %u > 32", c->prefix_len);
    if (c->udp_port == 0)
        FAIL(EINVAL, "VXLAN UDP port must not be 0");
    if (c->underlay_mtu < 576 || c->underlay_mtu > 9216)
        FAIL(EINVAL, "underlay MTU %u out of range 576..9216", c->underlay_mtu);
    if (c->uplink >= 0) {
        struct dp_port *p = port_get(c->uplink);
        if (!p)
            FAIL(ENOENT, "uplink port %d does not exist", c->uplink);
        if (p->role != DP_ROLE_UPLINK)
            FAIL(EINVAL, "port %d (%s) was not added as an uplink", c->uplink, p->name);
    }
    vconf = *c;
    vconf_set = 1;
    struct dp_vtep *v = calloc(1, sizeof(*v));
    if (!v)
        FAIL(ENOMEM, "out of memory");
    v->ip_be = rte_cpu_to_be_32(c->ip);
    v->udp_port_be = rte_cpu_to_be_16(c->udp_port);
    memcpy(v->mac, c->mac, 6);
    v->uplink = c->uplink;
    v->learning = c->learning;
    v->max_frame = max_frame();
    struct dp_vtep *old = atomic_exchange(&dp.vtep, v);
    dp_sync();
    free(old);
    /* VNI words are unchanged; only max_frame depends on the MTU */
    for (int i = 0; i < DP_MAX_NETS; i++) {
        if (!net_get(i))
            continue;
        struct dp_net *n = net_clone(i);
        if (n) {
            n->max_frame = max_frame();
            net_publish(i, n);
        }
    }
    tunnels_refresh_all();
    return 0;
}

int
dp_neigh_set(uint32_t ip, const uint8_t *mac)
{
    int i = neigh_find(ip);
    if (i < 0) {
        for (int j = 0; j < DP_MAX_NEIGH && i < 0; j++)
            if (!neigh[j].valid)
                i = j;
        if (i < 0) /* table full: replace the first entry */
            i = 0;
    } else if (memcmp(neigh[i].mac, mac, 6) == 0) {
        return 0;
    }
    neigh[i].ip = ip;
    memcpy(neigh[i].mac, mac, 6);
    neigh[i].valid = 1;
    for (int t = 0; t < DP_MAX_TUNNELS; t++) {
        struct dp_tunnel *tu = atomic_load(&dp.tunnels[t]);
        if (tu && tu->nh_ip == ip)
            tunnel_refresh(t);
    }
    return 0;
}

int
dp_neigh_get(uint32_t ip, uint8_t *mac)
{
    int i = neigh_find(ip);
    if (i < 0)
        return 0;
    memcpy(mac, neigh[i].mac, 6);
    return 1;
}

/* queue one ARP request for ip; the uplink's worker sends it */
static void
arp_request(uint32_t ip)
{
    struct rte_mbuf *m = rte_pktmbuf_alloc(dp.pool);
    if (!m)
        return;
    size_t len = sizeof(struct rte_ether_hdr) + sizeof(struct rte_arp_hdr);
    struct rte_ether_hdr *eth = (struct rte_ether_hdr *)rte_pktmbuf_append(m, (uint16_t)len);
    struct rte_arp_hdr *arp = (struct rte_arp_hdr *)(eth + 1);
    memset(eth->dst_addr.addr_bytes, 0xff, 6);
    memcpy(eth->src_addr.addr_bytes, vconf.mac, 6);
    eth->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_ARP);
    arp->arp_hardware = rte_cpu_to_be_16(RTE_ARP_HRD_ETHER);
    arp->arp_protocol = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
    arp->arp_hlen = 6;
    arp->arp_plen = 4;
    arp->arp_opcode = rte_cpu_to_be_16(RTE_ARP_OP_REQUEST);
    memcpy(arp->arp_data.arp_sha.addr_bytes, vconf.mac, 6);
    arp->arp_data.arp_sip = rte_cpu_to_be_32(vconf.ip);
    memset(arp->arp_data.arp_tha.addr_bytes, 0, 6);
    arp->arp_data.arp_tip = rte_cpu_to_be_32(ip);
    DP_META(m)->rx_tsc = rte_get_tsc_cycles();
    DP_META(m)->plane = 0;
    if (rte_ring_enqueue(dp.ctrl_tx, m) != 0)
        rte_pktmbuf_free(m);
}

/*
 * Periodic control work, called by the control thread every few ms:
 * neighbours and learned MACs reported by workers, ARP requests for next
 * hops still unresolved (at most one per next hop per DP_ARP_RETRY_US).
 * Returns the number of events handled.
 */
int
dp_housekeeping(void)
{
    if (!dp_setup_done)
        return 0;
    struct dp_slow_event ev[64];
    int handled = 0;
    unsigned n;
    while ((n = rte_ring_dequeue_burst_elem(dp.slow_ring, ev, sizeof(ev[0]), 64, NULL)) > 0) {
        for (unsigned i = 0; i < n; i++) {
            if (ev[i].kind == DP_EV_NEIGH)
                dp_neigh_set(ev[i].ip, ev[i].mac);
            else if (ev[i].kind == DP_EV_LEARN && net_get((int)ev[i].net))
                dp_fdb_add_remote((int)ev[i].net, ev[i].mac, ev[i].ip);
        }
        handled += (int)n;
    }
    if (!vconf_set || vconf.static_nh || vconf.uplink < 0)
        return handled;
    uint64_t now = rte_get_tsc_cycles();
    uint64_t retry = rte_get_tsc_hz() / 1000000 * DP_ARP_RETRY_US;
    uint32_t asked[64];
    int n_asked = 0;
    for (int t = 0; t < DP_MAX_TUNNELS && n_asked < 64; t++) {
        struct dp_tunnel *tu = atomic_load(&dp.tunnels[t]);
        if (!tu || tu->resolved)
            continue;
        int dup = 0;
        for (int j = 0; j < n_asked; j++)
            dup |= asked[j] == tu->nh_ip;
        if (dup)
            continue;
        asked[n_asked++] = tu->nh_ip;
        /* remember when we asked, in a pseudo-entry keyed by the ip */
        static struct {
            uint32_t ip;
            uint64_t tsc;
        } last[64];
        int slot = -1;
        for (int j = 0; j < 64; j++)
            if (last[j].ip == tu->nh_ip)
                slot = j;
        if (slot < 0) {
            slot = (int)(tu->nh_ip % 64);
            last[slot].ip = tu->nh_ip;
            last[slot].tsc = 0;
        }
        if (last[slot].tsc && now - last[slot].tsc < retry)
            continue;
        last[slot].tsc = now;
        arp_request(tu->nh_ip);
    }
    return handled;
}

/* ------------------------------------------------------------------ FDB */

static int
fdb_check(int net, const uint8_t *mac)
{
    if (!net_get(net))
        FAIL(ENOENT, "no network %d", net);
    if (mac[0] & 1)
        FAIL(EINVAL, "%02x:%02x:%02x:%02x:%02x:%02x is a multicast MAC", mac[0], mac[1], mac[2],
             mac[3], mac[4], mac[5]);
    return 0;
}

/* release what an existing entry held */
static void
fdb_release(int net, uint64_t key)
{
    void *old;
    if (rte_hash_lookup_data(dp.fdb, &key, &old) >= 0 && DP_FDB_KIND(old) == DP_FDB_REMOTE)
        tunnel_unref(net, (int)DP_FDB_TARGET(old));
}

int
dp_fdb_add_local(int net, const uint8_t *mac, int port)
{
    int ret = fdb_check(net, mac);
    if (ret)
        return ret;
    struct dp_port *p = port_get(port);
    if (!p)
        FAIL(ENOENT, "no port %d", port);
    if (p->net != net)
        FAIL(EINVAL, "port %d (%s) is not in network %d", port, p->name, net);
    uint64_t key = dp_fdb_key((uint32_t)net, mac);
    fdb_release(net, key);
    ret = rte_hash_add_key_data(dp.fdb, &key, DP_FDB_VAL(DP_FDB_LOCAL, port));
    tables_changed();
    if (ret != 0)
        FAIL(-ret, "FDB full");
    return 0;
}

int
dp_fdb_add_remote(int net, const uint8_t *mac, uint32_t ip)
{
    int ret = fdb_check(net, mac);
    if (ret)
        return ret;
    if (ip == 0 || ip == 0xffffffffu)
        FAIL(EINVAL, "remote VTEP address is not a unicast address");
    if (vconf_set && ip == vconf.ip)
        FAIL(EINVAL, "remote VTEP is this node's own VTEP address");
    uint64_t key = dp_fdb_key((uint32_t)net, mac);
    void *old;
    if (rte_hash_lookup_data(dp.fdb, &key, &old) >= 0 && DP_FDB_KIND(old) == DP_FDB_REMOTE) {
        struct dp_tunnel *t = atomic_load(&dp.tunnels[DP_FDB_TARGET(old)]);
        if (t && t->ip == ip)
            return 0; /* unchanged */
    }
    int ti = tunnel_ref(net, ip);
    if (ti < 0)
        return ti;
    fdb_release(net, key);
    ret = rte_hash_add_key_data(dp.fdb, &key, DP_FDB_VAL(DP_FDB_REMOTE, ti));
    tables_changed();
    if (ret != 0) {
        tunnel_unref(net, ti);
        FAIL(-ret, "FDB full");
    }
    return 0;
}

int
dp_fdb_del(int net, const uint8_t *mac)
{
    if (net < 0 || net >= DP_MAX_NETS)
        FAIL(EINVAL, "network index %d out of range", net);
    uint64_t key = dp_fdb_key((uint32_t)net, mac);
    void *old;
    if (rte_hash_lookup_data(dp.fdb, &key, &old) < 0)
        FAIL(ENOENT, "no FDB entry for that MAC in network %d", net);
    int ret = rte_hash_del_key(dp.fdb, &key);
    if (ret < 0)
        FAIL(-ret, "cannot delete FDB entry");
    if (DP_FDB_KIND(old) == DP_FDB_REMOTE)
        tunnel_unref(net, (int)DP_FDB_TARGET(old));
    tables_changed();
    return 0;
}

int
dp_fdb_get(int net, const uint8_t *mac, int *kind, uint32_t *target)
{
    uint64_t key = dp_fdb_key((uint32_t)net, mac);
    void *v;
    *kind = DP_FDB_NONE;
    *target = 0;
    if (rte_hash_lookup_data(dp.fdb, &key, &v) < 0)
        return 0;
    *kind = DP_FDB_KIND(v);
    *target = DP_FDB_TARGET(v);
    if (*kind == DP_FDB_REMOTE) {
        struct dp_tunnel *t = atomic_load(&dp.tunnels[*target]);
        *target = t ? t->ip : 0;
    }
    return 1;
}

int
dp_fdb_count(void)
{
    return (int)rte_hash_count(dp.fdb);
}

/* ------------------------------------------------------- shaped ports */

int
dp_port_shaper(int idx, uint64_t rate_bps, uint32_t burst_bytes)
{
    struct dp_port *p = port_get(idx);
    if (!p)
        FAIL(ENOENT, "no port %d", idx);
    if (rate_bps && rate_bps < 8000)
        FAIL(EINVAL, "port %d: shaper rate %lu bit/s below 8000", idx, (unsigned long)rate_bps);
    if (rate_bps && burst_bytes < 2048)
        FAIL(EINVAL, "port %d: shaper burst %u bytes below one frame (2048)", idx, burst_bytes);
    struct dp_port *np = rte_zmalloc("dp_port", sizeof(*np), RTE_CACHE_LINE_SIZE);
    if (!np)
        FAIL(ENOMEM, "out of memory");
    *np = *p;
    np->qos = NULL;
    if (rate_bps) {
        np->qos = dp_qos_new(idx, rate_bps, burst_bytes);
        if (!np->qos) {
            rte_free(np);
            FAIL(ENOMEM, "port %d: cannot create the plane queues", idx);
        }
    }
    atomic_store(&dp.ports[idx], np);
    dp_sync(); /* no worker holds p, its queues or its heads any more */
    struct dp_qos *old = p->qos;
    rte_free(p);
    /* frames still queued are freed with it, and counted */
    dp.ctr->drop[DP_CTRL_ROW][DP_DROP_QUEUE_FLUSHED] += dp_qos_free(old);
    return 0;
}

int
dp_qos_depth(int idx, int plane)
{
    struct dp_port *p = port_get(idx);
    if (!p || plane < 0 || plane >= DP_MAX_PLANES)
        FAIL(EINVAL, "no port %d / plane %d", idx, plane);
    if (!p->qos)
        return 0;
    return (int)rte_ring_count(p->qos->q[plane]) + (p->qos->head[plane] != NULL);
}

/* ------------------------------------------------------------- counters */

uint64_t *
dp_counter_block(int block, size_t *n_rows, size_t *row_len)
{
    if (!dp.ctr)
        return NULL;
    switch (block) {
    case DP_BLOCK_PORT:
        *n_rows = DP_MAX_WORKERS * DP_MAX_PORTS;
        *row_len = DP_PORT_CTR_COUNT;
        return &dp.ctr->port[0][0][0];
    case DP_BLOCK_NET:
        *n_rows = DP_MAX_WORKERS * DP_MAX_NETS;
        *row_len = DP_NET_CTR_COUNT;
        return &dp.ctr->net[0][0][0];
    case DP_BLOCK_DROP:
        *n_rows = DP_MAX_WORKERS;
        *row_len = DP_DROP_COUNT + 1;
        return &dp.ctr->drop[0][0];
    case DP_BLOCK_WORKER:
        *n_rows = DP_MAX_WORKERS;
        *row_len = 8;
        return &dp.ctr->worker[0][0];
    case DP_BLOCK_QOS:
        *n_rows = DP_MAX_WORKERS * DP_MAX_PORTS * DP_MAX_PLANES;
        *row_len = DP_QOS_CTR_COUNT;
        return &dp.ctr->qos[0][0][0][0];
    case DP_BLOCK_LAT:
        *n_rows = DP_MAX_WORKERS * DP_MAX_PLANES;
        *row_len = DP_LAT_ROW;
        return &dp.ctr->lat[0][0][0];
    }
    return NULL;
}

int
dp_counter_count(int block)
{
    switch (block) {
    case DP_BLOCK_PORT: return DP_PORT_CTR_COUNT;
    case DP_BLOCK_NET: return DP_NET_CTR_COUNT;
    case DP_BLOCK_DROP: return DP_DROP_COUNT;
    case DP_BLOCK_WORKER: return DP_WORKER_CTR_COUNT;
    case DP_BLOCK_QOS: return DP_QOS_CTR_COUNT;
    case DP_BLOCK_LAT: return DP_LAT_BUCKETS;
    }
    return 0;
}

const char *
dp_counter_name(int block, int i)
{
    if (i < 0 || i >= dp_counter_count(block))
        return NULL;
    switch (block) {
    case DP_BLOCK_PORT: return port_ctr_names[i];
    case DP_BLOCK_NET: return net_ctr_names[i];
    case DP_BLOCK_DROP: return drop_names[i];
    case DP_BLOCK_WORKER: return worker_ctr_names[i];
    case DP_BLOCK_QOS: return qos_ctr_names[i];
    case DP_BLOCK_LAT: return "bucket";
    }
    return NULL;
}

/* ------------------------------------------------------ ring test ports */

int
dp_ring_inject(int idx, int queue, const uint8_t *data, const uint32_t *lens, int n)
{
    struct dp_port *p = port_get(idx);
    if (!p || !p->ring_tx)
        FAIL(EINVAL, "port %d is not a ring port", idx);
    if (queue < 0 || queue >= p->n_rxq)
        FAIL(EINVAL, "port %d has no rx queue %d (it has %u)", idx, queue, p->n_rxq);
    struct rte_ring *ring = p->ring_rx[queue];
    int done = 0;
    size_t off = 0;
    while (done < n) {
        struct rte_mbuf *m[DP_BURST];
        int k = n - done < DP_BURST ? n - done : DP_BURST;
        if (rte_pktmbuf_alloc_bulk(dp.pool, m, (unsigned)k) != 0)
            FAIL(ENOBUFS, "mbuf pool empty after %d frames", done);
        for (int i = 0; i < k; i++) {
            uint32_t len = lens[done + i];
            char *d = rte_pktmbuf_append(m[i], (uint16_t)len);
            if (!d || len > UINT16_MAX) {
                rte_pktmbuf_free_bulk(m, (unsigned)k);
                FAIL(EMSGSIZE, "frame %d of %u bytes does not fit an mbuf", done + i, len);
            }
            memcpy(d, data + off, len);
            off += len;
        }
        unsigned q = rte_ring_enqueue_burst(ring, (void **)m, (unsigned)k, NULL);
        if (q < (unsigned)k)
            rte_pktmbuf_free_bulk(m + q, (unsigned)k - q);
        done += (int)q;
        if (q < (unsigned)k)
            break;
    }
    return done;
}

int
dp_ring_collect(int idx, uint8_t *buf, size_t buf_len, uint32_t *lens, int max)
{
    struct dp_port *p = port_get(idx);
    if (!p || !p->ring_tx)
        FAIL(EINVAL, "port %d is not a ring port", idx);
    int n = 0;
    size_t off = 0;
    while (n < max) {
        struct rte_mbuf *m;
        /* peek size first: never take a frame we cannot hand back */
        if (rte_ring_count(p->ring_tx) == 0)
            break;
        if (rte_ring_dequeue(p->ring_tx, (void **)&m) != 0)
            break;
        if (off + m->pkt_len > buf_len) {
            /* put it back at the tail is not possible; drop it and say so */
            rte_pktmbuf_free(m);
            FAIL(ENOBUFS, "collect buffer of %zu bytes too small", buf_len);
        }
        const void *d = rte_pktmbuf_read(m, 0, m->pkt_len, buf + off);
        if (d != buf + off)
            memcpy(buf + off, d, m->pkt_len);
        lens[n++] = m->pkt_len;
        off += m->pkt_len;
        rte_pktmbuf_free(m);
    }
    return n;
}

/* -------------------------------------------------------------- teardown */

int
dp_shutdown(void)
{
    dp_stop();
    if (!dp_eal_up)
        return 0;
    if (dp_setup_done) {
        for (int i = 0; i < DP_MAX_PORTS; i++) {
            if (vconf.uplink == i)
                vconf.uplink = -1;
            if (port_get(i))
                dp_port_del(i);
        }
        struct rte_mbuf *m;
        while (rte_ring_dequeue(dp.ctrl_tx, (void **)&m) == 0)
            rte_pktmbuf_free(m);
        for (int i = 0; i < DP_MAX_NETS; i++) {
            rte_free(atomic_exchange(&dp.nets[i], NULL));
        }
        for (int i = 0; i < DP_MAX_TUNNELS; i++)
            rte_free(atomic_exchange(&dp.tunnels[i], NULL));
        for (int w = 0; w < DP_MAX_WORKERS; w++)
            free(atomic_exchange(&dp.poll[w], NULL));
        free(atomic_exchange(&dp.vtep, NULL));
        /* give the hugepage memory back before the EAL goes */
        rte_hash_free(dp.fdb);
        rte_hash_free(dp.vteps);
        rte_hash_free(dp.vnis);
        rte_ring_free(dp.slow_ring);
        rte_ring_free(dp.ctrl_tx);
        rte_mempool_free(dp.pool);
        rte_free(dp.ctr);
        rte_free(dp.qsbr);
        memset(tun_refs, 0, sizeof(tun_refs));
        memset(net_tun_refs, 0, sizeof(net_tun_refs));
        memset(&dp, 0, sizeof(dp));
    }
    rte_eal_cleanup();
    dp_eal_up = 0;
    dp_setup_done = 0;
    return 0;
}
