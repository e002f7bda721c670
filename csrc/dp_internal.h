/*
 * dp_internal.h - state shared by the control path (dp_control.h and the
 * files it lists) and the per-lcore pipeline (dp_pipeline.c). Not part of
 * the Python contract.
 */
#ifndef DP_INTERNAL_H
#define DP_INTERNAL_H

/*
 * A/B builds (`DP_AB=1 python build.py`, measured by `python -m
 * bench.abtest`): code being measured reads dp_ab to choose between two
 * versions of itself, which the measurement alternates in one process
 * (dp_ab_set). In every other build dp_ab is the constant 0 and the second
 * version is compiled out. Nothing on main reads it: a measurement adds
 * the test in a build of its own.
 */
#ifdef DP_AB
extern volatile int dp_ab;
#else
#define dp_ab 0
#endif

#include <stdatomic.h>
#include <stdbool.h>

#include <rte_common.h>
#include <rte_byteorder.h>
#include <rte_ether.h>
#include <rte_ip.h>
#include <rte_udp.h>
#include <rte_vxlan.h>
#include <rte_mbuf.h>
#include <rte_ring.h>
#include <rte_hash.h>
#include <rte_hash_crc.h>
#include <rte_rcu_qsbr.h>
#include <rte_spinlock.h>

#include "dataplane.h"
#include "dp_counters.h"
#include "afpacket.h"
#include "dp_ftab.h"

struct dp_qos;

#define DP_VXLAN_HDR_LEN                                                                       \
    (sizeof(struct rte_ether_hdr) + sizeof(struct rte_ipv4_hdr) + sizeof(struct rte_udp_hdr) + \
     sizeof(struct rte_vxlan_hdr))
_Static_assert(sizeof(struct rte_vxlan_hdr) == 8, "VXLAN header is 8 bytes");
_Static_assert(DP_VXLAN_HDR_LEN == DP_VXLAN_OVERHEAD, "outer Ether/IPv4/UDP/VXLAN is 50 bytes");

#define DP_TXBUF 64 /* per worker, per port tx buffer */
#define DP_SLOW_RING_SIZE 1024
#define DP_MAX_VTEP_PAIRS (1 << 16) /* (network, remote VTEP) pairs: dp.vteps */
#define DP_CTRL_TX_RING_SIZE 256
#define DP_ARP_RETRY_US 500000
/* frames to a tunnel whose next hop is being resolved: held by their worker
 * (at most DP_HOLD_MAX each) and sent once it is, dropped as
 * neigh_unresolved after DP_HOLD_MS (as the kernel queues frames while it
 * retries ARP: ours retries every DP_ARP_RETRY_US) */
#define DP_HOLD_MAX 64
#define DP_HOLD_MS 2000
/* a next hop that left held frames unanswered: its frames are not held
 * again for this many DP_HOLD_MS (dp_encap.h, hold) */
#define DP_HOLD_GIVE_UP 5

/*
 * Per-worker caches of the FDB and of the (VNI, source VTEP) table: direct-
 * mapped copies of the tables' answers, indexed by the key's hash, in front
 * of the tables (which stay the truth: the FDB's own, dp_ftab.h, and an
 * rte_hash). Unknown keys are not cached. A small FDB's answers stay in the
 * cache's few lines, hot; a large one's misses go to its table, whose
 * buckets the worker prefetches for the whole burst before it reads them.
 *
 * FDB: a change to key k bumps dp.fdb_slot_gen[hash(k) % cache size] after
 * the table holds the new answer; a cached entry answers only while its
 * slot's generation is the one read before the table lookup that filled it.
 * So one change costs the workers one cache slot, not the whole cache, and
 * churn of some entries leaves the others cached.
 * VTEP table: the control thread bumps dp.tbl_gen after every change; a
 * worker that sees a new generation at the start of a burst starts a new
 * epoch, and only entries of the current epoch answer.
 */
#define DP_FDB_CACHE_SIZE 1024    /* entries per worker, power of two (16 KB) */
#define DP_LEARN_HEARD_SLOTS 1024 /* per worker, power of two: learned MACs last reported */
/* per worker: at most this many reports of new MACs a millisecond, and as many of
 * learned ones heard again */
#define DP_LEARN_REPORT_BURST 64
#define DP_FDB_CACHE_WINDOW 1024 /* lookups over which the cache's hit rate is judged */
#define DP_FDB_CACHE_REST 63     /* bursts without the cache after a window it nearly all missed */
#define DP_VTEP_CACHE_SIZE 256
struct dp_fdb_cent {
    uint64_t key;
    uint32_t val;   /* FDB: DP_FV; VTEP table: network index */
    uint32_t epoch; /* 0 = never valid */
};
/* FDB value: kind in the top byte, target (port index or tunnel index) below;
 * the top bit marks a remote entry learned from the underlay (dp_learn.c) */
#define DP_FV(kind, target) ((uint32_t)(kind) << 24 | (0xffffff & (uint32_t)(target)))
#define DP_FV_KIND(v) ((int)(((v) >> 24) & 0x7f))
#define DP_FV_TARGET(v) (0xffffff & (v))
#define DP_FV_LEARNED_BIT (1u << 31)
#define DP_FV_LEARNED(v) ((v) >> 31)

/* FDB key: network index in the top 16 bits, MAC in the low 48 (wire order) */
static inline uint64_t
dp_fdb_key(uint32_t net, const uint8_t *mac)
{
    /* built in registers: a 6-byte memcpy into a stack word and an 8-byte
     * load back stalls on store forwarding (measured: most of pod rx time) */
    uint32_t lo;
    uint16_t hi;
    memcpy(&lo, mac, 4);
    memcpy(&hi, mac + 4, 2);
    return (uint64_t)lo | ((uint64_t)hi << 32) | ((uint64_t)net << 48);
}

/*
 * Hash of an 8-byte table key (FDB, VTEP table): CRC32C. It is the tables'
 * hash_func (mk_hash) and the signature the pipeline computes inline for
 * rte_hash_lookup_with_hash_bulk_data, one function so the two cannot differ.
 */
#define DP_KEY8_HASH_INIT 0
static __rte_always_inline uint32_t
dp_crc8(uint64_t data, uint32_t init)
{
#ifdef __SSE4_2__
    /* the instruction itself: the build targets the CPU it runs on, and
     * rte_hash_crc_8byte would test which CRC it may use on every call */
    return (uint32_t)_mm_crc32_u64(init, data);
#else
    return rte_hash_crc_8byte(data, init);
#endif
}

static inline uint32_t
dp_key8_hash(uint64_t key)
{
    return dp_crc8(key, DP_KEY8_HASH_INIT);
}

/* decap key: VNI and source VTEP (both network byte order as on the wire) */
static inline uint64_t
dp_vtep_key(uint32_t vni_be_word, uint32_t src_ip_be)
{
    return ((uint64_t)vni_be_word << 32) | src_ip_be;
}

/* Port as the pipeline sees it. Immutable once published; replaced via RCU. */
struct dp_port {
    int idx;
    int driver;
    int role;
    int net;    /* network index, -1 = none */
    int worker; /* which worker polls rx */
    uint16_t eth_port;
    uint16_t n_txq;                       /* < n_workers: tx shared under a lock */
    uint16_t n_rxq;                       /* queue 0: the port's worker; others: a plane's */
    struct dp_afp *afp;                   /* native AF_PACKET driver */
    struct rte_ring *ring_rx[DP_MAX_RXQ]; /* ring ports: what Python injects, per queue */
    struct rte_ring *ring_tx;             /* ring ports: what Python collects */
    rte_spinlock_t *tx_lock;
    struct dp_qos *qos; /* shaped port: per-plane queues, else NULL */
    int tnl_gso;        /* AF_PACKET: VXLAN super-frames go whole to its tunnel tap */
    int shm;            /* its driver reads a pod's shared memory: guarded bursts (dp_shm.h) */
    int ex_filter;      /* AF_PACKET: its rx socket has the express lane's filter (dp_express.c) */
    unsigned kif_index; /* net_af_xdp: its kernel interface, else 0 (control thread) */
    uint64_t kif_drop_base; /* ... the interface's rx drops when the port opened */
    uint64_t kif_drops;     /* ... its rx drops since, as last read */
    uint32_t kif_max_frame; /* ... MTU + Ethernet + VLAN, as last read (atomic) */
    uint8_t mac[6];
    char name[64];
};

/* Network: immutable snapshot replaced via RCU on change. */
struct dp_net {
    int idx;
    uint32_t vni;
    uint32_t vni_be_word; /* rte_vxlan_hdr.vx_vni value */
    int plane;
    uint32_t max_frame; /* largest inner frame that may be encapsulated */
    uint16_t n_local;
    uint16_t n_flood;
    uint16_t local[DP_MAX_PORTS];
    uint16_t flood[DP_MAX_TUNNELS]; /* tunnel indexes */
};

/*
 * Tunnel to one remote VTEP: the outer header template. Per packet the
 * pipeline copies hdr, then patches lengths, TOS, checksum, source port, VNI.
 * csum_base is the ones'-complement sum of the template's IPv4 header words
 * but the first (version/TOS), with total_length and hdr_checksum zero.
 */
/* one cache line (allocated aligned), what a worker reads first */
struct dp_tunnel {
    uint8_t hdr[DP_VXLAN_HDR_LEN];
    uint8_t resolved;
    uint8_t gen; /* of its build: told apart from a later one at its address */
    uint32_t csum_base;
    uint32_t ip;    /* remote VTEP, host order */
    uint32_t nh_ip; /* underlay next hop, host order */
};
_Static_assert(sizeof(struct dp_tunnel) <= RTE_CACHE_LINE_SIZE, "a tunnel is one cache line");

struct dp_txbuf {
    uint16_t n;
    uint16_t planes; /* planes of the frames held: bit p, bit 8 = own */
    uint64_t bytes;  /* their pkt_len summed */
    struct rte_mbuf *m[DP_TXBUF];
};

/* what a worker hands to the control thread */
struct dp_slow_event {
    uint8_t kind; /* DP_EV_* */
    uint8_t mac[6];
    uint8_t pad;
    uint32_t ip; /* host order */
    uint32_t net;
    uint32_t vni; /* a learning report's: the frame's VNI, host order */
};
#define DP_EV_NEIGH 1
#define DP_EV_LEARN 2 /* a source MAC the FDB does not have, and its VTEP */
#define DP_EV_HEARD 3 /* a remote one it has, heard again from a VTEP */

/* learning: how long after a worker reported a learned source MAC it reports
 * the same MAC again, and a millisecond (TSC cycles; dp_learn.c sets them) */
extern _Atomic uint64_t dp_learn_report_cycles;
extern _Atomic uint64_t dp_learn_ms_cycles;

/* worker poll lists: immutable snapshots */
/* what a worker polls: (port, rx queue) pairs */
struct dp_poll_list {
    uint16_t n;
    struct {
        uint16_t port;
        uint16_t queue;
    } e[DP_MAX_PORTS * DP_MAX_RXQ];
};

/* a per-worker row of n counters, padded to whole cache lines */
#define DP_CTR_ROW_LEN(n) RTE_ALIGN_CEIL((n), RTE_CACHE_LINE_SIZE / sizeof(uint64_t))

/* counters: one block of rows per worker, each block on cache lines of its
 * own, so no two workers ever write the same line (dp_counters.h: columns) */
struct dp_counters {
    uint64_t port[DP_MAX_WORKERS][DP_MAX_PORTS][DP_PORT_CTR_COUNT];
    uint64_t net[DP_MAX_WORKERS][DP_MAX_NETS][DP_NET_CTR_COUNT];
    uint64_t drop[DP_MAX_WORKERS][DP_CTR_ROW_LEN(DP_DROP_COUNT)];
    uint64_t worker[DP_MAX_WORKERS][DP_CTR_ROW_LEN(DP_WORKER_CTR_COUNT)];
    uint64_t qos[DP_MAX_WORKERS][DP_MAX_PORTS][DP_MAX_PLANES][DP_QOS_CTR_COUNT];
    uint64_t lat[DP_MAX_WORKERS][DP_MAX_PLANES][DP_LAT_ROW];
};
#define DP_CTR_WORKER_BLOCK_ALIGNED(m)                                                     \
    _Static_assert(offsetof(struct dp_counters, m) % RTE_CACHE_LINE_SIZE == 0 &&           \
                       sizeof(((struct dp_counters *)0)->m[0]) % RTE_CACHE_LINE_SIZE == 0, \
                   "counters: " #m " blocks of workers share a cache line")
DP_CTR_WORKER_BLOCK_ALIGNED(port);
DP_CTR_WORKER_BLOCK_ALIGNED(net);
DP_CTR_WORKER_BLOCK_ALIGNED(drop);
DP_CTR_WORKER_BLOCK_ALIGNED(worker);
DP_CTR_WORKER_BLOCK_ALIGNED(qos);
DP_CTR_WORKER_BLOCK_ALIGNED(lat);

struct dp_vtep {
    uint32_t ip_be;
    uint16_t udp_port_be;
    uint8_t mac[6];
    int uplink;
    int learning;
    uint32_t max_frame;
};

struct dp_state {
    int n_workers;
    unsigned worker_lcore[DP_MAX_WORKERS];
    struct rte_mempool *pool;
    _Atomic(struct dp_ftab *) fdb; /* (net, mac) -> DP_FV (dp_ftab.h) */
    struct rte_hash *vteps;        /* (vni, src vtep) -> net index */
    struct rte_hash *vnis;         /* vni -> net index */
    struct rte_rcu_qsbr *qsbr;
    struct rte_ring *learn_ring; /* workers -> control: learning (dp_slow_event) */
    struct rte_ring *neigh_ring; /* workers -> control: ARP heard; a ring of its own, so
                                  * that no learning storm keeps replies from the
                                  * neighbour table */
    struct rte_ring *ctrl_tx;    /* control -> uplink: ARP requests */
    _Atomic(struct dp_port *) ports[DP_MAX_PORTS];
    atomic_ushort port_gen[DP_MAX_PORTS]; /* bumped when the port of the index goes */
    _Atomic(struct dp_net *) nets[DP_MAX_NETS];
    _Atomic(struct dp_tunnel *) tunnels[DP_MAX_TUNNELS];
    _Atomic(struct dp_poll_list *) poll[DP_MAX_WORKERS];
    _Atomic(struct dp_vtep *) vtep;
    uint8_t net_plane[DP_MAX_NETS]; /* plane of each network, for the workers */
    atomic_uint tbl_gen;            /* bumped after every VTEP table change */
    /* bumped after a change to an FDB key of that worker cache slot */
    atomic_uint fdb_slot_gen[DP_FDB_CACHE_SIZE];
    atomic_int stop;
    atomic_int running;
    struct dp_counters *ctr;
};

extern struct dp_state dp;

/* the last worker row of the counters belongs to the control thread */
#define DP_CTRL_ROW (DP_MAX_WORKERS - 1)

/* the workers (dp_pipeline.c) */
struct dp_wctx;
struct dp_wctx *dp_worker_new(int id);
int dp_worker_main(void *arg);

/* an idle worker (dp_idle.c): called after DP_IDLE_ROUNDS empty poll rounds
 * in a row, before the round's quiescent state; it yields its CPU or, with
 * dp_idle_us set, sleeps */
extern atomic_uint dp_idle_us;
#define DP_IDLE_ROUNDS 64u /* empty poll rounds in a row that make a worker idle */
void dp_worker_idle(int id, const struct dp_poll_list *pl, uint64_t *wc);

#endif /* DP_INTERNAL_H */
