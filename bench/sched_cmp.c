/*
 * sched_cmp.c - our per-plane egress scheduler (csrc/dp_qos.c, compiled into
 * this program) against DPDK's hierarchical scheduler (lib/sched, rte_sched)
 * on the same frames, in one process, on one lcore. Built and run by
 * bench/sched.py (``python -m bench sched``); see docs/sched.md.
 *
 *   sched_cmp [--seconds S] [--lcore N] [--prefix NAME]
 *             [--only cost,overload,cap,guarantee] [--max-wait SHARE]
 *             [--retries N] [--verbose]
 *
 * EAL arguments are fixed here: --no-pci (no device is ever probed),
 * --no-huge (no hugepage files), --no-shconf, -m 512, --file-prefix=NAME,
 * -l N, --no-telemetry; the empty runtime directory is removed at exit.
 *
 * A measurement during which this thread waited for its CPU (schedstat
 * run_delay) for more than --max-wait of the window (default 0.01), or an
 * overload one whose loop stalled longer than the media or control queue
 * lasts at its offered rate (more of its frames due in one turn than the
 * queue holds; a vCPU the hypervisor stopped shows only there), is
 * repeated up to --retries times (default 3); an attempt that did not
 * stall is kept before one that did, then the one that waited least, and
 * printed with its wait share ("cpu wait"). The strict-priority verdict of
 * an attempt whose stalls took at most a quarter of its window, and that
 * lost no more media or control frames than fell due beyond their queues'
 * room in the stalls' turns (losses_of_stalls), says "unjudged", with the
 * stalls, instead of judging their losses.
 *
 * Planes as in bench/planes.py: std plane 0 (priority 0), control plane 2
 * (priority 2), media plane 3 (priority 3, highest). rte_sched: one port,
 * one subport, one pipe; media -> TC0, control -> TC1, std -> TC2 (strict
 * priority TCs; lower TC index is served first), best-effort TC12 unused
 * (it must still have a queue and a rate). Frame lengths (pkt_len, no FCS):
 * media 200, control 260/300/340, std IMIX 60/594/1464 7:4:1. Queues (both
 * schedulers, tail drop): media and control 256 frames, std 1024. Both
 * schedulers count 24 bytes of wire overhead per frame; every rate below is
 * a wire rate (pkt_len + 24).
 *
 * Scenarios (each scheduler gets the same offered load, one after the other):
 *   cost       shapers far above the load (400 Gbit/s), bursts of 32 in,
 *              bursts of 32 out, backlog kept <= 288: cycles in the
 *              enqueue and dequeue calls per frame (rte_sched's includes the
 *              classification rte_sched_port_pkt_write and the rx_tsc stamp
 *              ours does inside dp_qos_enqueue).
 *   overload   shaper 1 Gbit/s; offered std 2x, media 0.1x, control 0.05x,
 *              paced on the real TSC; frames generated and scheduled in one
 *              loop (enqueue what is due, then one dequeue of <= 32).
 *              Per plane: offered/sent rate, drops, queueing delay
 *              (enqueue -> dequeue) p50/p99/max. rte_sched twice: as meant
 *              (port rate = a 10 Gbit/s line, the subport/pipe token bucket
 *              = the 1 Gbit/s shaper) and with port rate = shaper only.
 *   cap        as overload, std limited to 0.5x of the port (ours:
 *              plane max_bps; rte_sched: pipe TC2 rate, tc_period 10 ms).
 *   guarantee  media offered 1.5x (misbehaving), std 2x with a guaranteed
 *              0.3x (ours: plane min_bps; rte_sched has no per-TC minimum:
 *              once as is, once emulated by capping TC0 at 0.65x).
 * Last line:
 *   RESULT name=sched ours_ns_per_pkt=.. rte_sched_ns_per_pkt=.. ratio=..
 *          ours_media_p99_us=.. rte_sched_media_p99_us=..
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rte_common.h>
#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_sched.h>

#include "dp_capture.h"
#include "dp_qos.h"

/* dp_qos.c shows the frames it drops to a running capture: none runs here */
struct dp_capture *_Atomic dp_cap;
void
dp_capture_burst(struct dp_capture *c, uint16_t pi, int dir, struct rte_mbuf **pkts, uint16_t n,
                 uint64_t tsc, int reason)
{
    (void)c, (void)pi, (void)dir, (void)pkts, (void)n, (void)tsc, (void)reason;
}

/* ------------------------------------------------------------- set-up */
#define PL_STD 0
#define PL_CTRL 2
#define PL_MEDIA 3
#define N_PL 3
static const int PLANES[N_PL] = {PL_MEDIA, PL_CTRL, PL_STD}; /* highest first */
static const char *const PNAME[DP_MAX_PLANES] = {
    [PL_STD] = "std", [PL_CTRL] = "control", [PL_MEDIA] = "media"};
static const int PPRIO[DP_MAX_PLANES] = {[PL_STD] = 0, [PL_CTRL] = 2, [PL_MEDIA] = 3};
static const uint32_t PQLEN[DP_MAX_PLANES] = {[PL_STD] = 1024, [PL_CTRL] = 256, [PL_MEDIA] = 256};
/* plane -> rte_sched traffic class (0 is served first) */
static const uint8_t PTC[DP_MAX_PLANES] = {
    [PL_STD] = 2, [PL_CTRL] = 1, [PL_MEDIA] = 0, [1] = 2, [4] = 2, [5] = 2, [6] = 2, [7] = 2};

#define WIRE_OH 24 /* FCS + preamble + IFG, as both schedulers count it */
_Static_assert(WIRE_OH == DP_WIRE_OVERHEAD, "our scheduler's per-frame overhead");
_Static_assert(WIRE_OH == RTE_SCHED_FRAME_OVERHEAD_DEFAULT, "rte_sched's default overhead");
#define BURST 32
#define SHAPER_BURST 16384      /* bytes: the core's default (config.py) */
#define LINE_BPS 10000000000.0  /* the "NIC" rte_sched's port rate stands for */
#define FAST_BPS 400000000000.0 /* cost: shapers that never limit */
#define TC_PERIOD_MS 10         /* rte_sched TC rate enforcement period */
#define N_MBUFS 32767

static struct rte_mempool *pool;
static uint64_t hz;
static double seconds = 2.0;
static int verbose;

static const uint16_t STD_SIZES[12] = {60, 594, 60, 60, 1464, 60, 594, 60, 594, 60, 60, 594};
static const uint16_t CTRL_SIZES[3] = {260, 300, 340};
/* the smallest frame of a protected plane, on the wire */
static const double MIN_WIRE[DP_MAX_PLANES] = {
    [PL_CTRL] = 260 + WIRE_OH, [PL_MEDIA] = 200 + WIRE_OH};

static inline uint16_t
frame_len(int plane, uint64_t i)
{
    switch (plane) {
    case PL_MEDIA: return 200;
    case PL_CTRL: return CTRL_SIZES[i % 3];
    default: return STD_SIZES[i % 12];
    }
}

static double
avg_wire(int plane)
{
    double s = 0;
    for (int i = 0; i < 12; i++)
        s += frame_len(plane, i) + WIRE_OH;
    return s / 12;
}

/* time this thread waited for a CPU, ns (schedstat run_delay) */
static uint64_t
cpu_wait_ns(void)
{
    unsigned long long run = 0, wait = 0;
    FILE *f = fopen("/proc/thread-self/schedstat", "r");
    if (!f)
        return 0;
    if (fscanf(f, "%llu %llu", &run, &wait) != 2)
        wait = 0;
    fclose(f);
    return wait;
}

static void
die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "sched_cmp: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

/* ------------------------------------------------------- the contenders */
enum { OURS, RTE };

struct sched {
    int kind;
    const char *label;
    struct dp_qos *q;
    struct rte_sched_port *port;
    uint64_t ctr[DP_MAX_PLANES][DP_QOS_CTR_COUNT];
    uint64_t queue_full;
};

struct plane_cfg {
    double min_bps, max_bps; /* ours; 0 = none */
    double tc_cap_bps;       /* rte_sched pipe TC rate; 0 = the shaper's */
};

static void
ours_planes(const struct plane_cfg *pc)
{
    for (int i = 0; i < N_PL; i++) {
        int p = PLANES[i];
        struct dp_plane_conf c = {
            .priority = PPRIO[p],
            .min_bps = pc ? (uint64_t)pc[p].min_bps : 0,
            .max_bps = pc ? (uint64_t)pc[p].max_bps : 0,
            .queue_len = PQLEN[p],
            .dscp = -1,
            .worker = -1,
            .rx_queue = -1,
        };
        dp_qos_plane_set(p, &c);
    }
}

static int port_seq;

static void
ours_make(struct sched *s, double shaper_bps, uint32_t burst, const struct plane_cfg *pc)
{
    memset(s, 0, sizeof(*s));
    s->kind = OURS;
    s->label = "ours";
    ours_planes(pc);
    s->q = dp_qos_new(port_seq++, (uint64_t)shaper_bps, burst);
    if (!s->q)
        die("dp_qos_new: %s", rte_strerror(rte_errno));
}

/*
 * rte_sched: port (rate = line_bps) -> subport 0 (token bucket = shaper)
 * -> pipe 0 (token bucket = shaper, per-TC upper limits). Pipe profile 0 is
 * the plain one; per-plane caps go into a second profile added with
 * rte_sched_subport_pipe_profile_add, as a control plane would do at run time.
 */
static void
rte_make(struct sched *s, const char *label, double line_bps, double shaper_bps, uint32_t burst,
         const struct plane_cfg *pc)
{
    static int seq;
    char name[32];
    snprintf(name, sizeof(name), "sched_cmp_%d", seq++);
    memset(s, 0, sizeof(*s));
    s->kind = RTE;
    s->label = label;
    uint64_t line = (uint64_t)(line_bps / 8), shaper = (uint64_t)(shaper_bps / 8);

    struct rte_sched_subport_profile_params spp = {
        .tb_rate = shaper,
        .tb_size = burst,
        .tc_period = TC_PERIOD_MS,
    };
    for (int i = 0; i < RTE_SCHED_TRAFFIC_CLASSES_PER_PIPE; i++)
        spp.tc_rate[i] = shaper;
    struct rte_sched_port_params pp = {
        .name = name,
        .socket = (int)rte_socket_id() < 0 ? 0 : (int)rte_socket_id(),
        .rate = line,
        .mtu = 1500,
        .frame_overhead = WIRE_OH,
        .n_subports_per_port = 1,
        .subport_profiles = &spp,
        .n_subport_profiles = 1,
        .n_max_subport_profiles = 1,
        .n_pipes_per_subport = 1,
    };
    s->port = rte_sched_port_config(&pp);
    if (!s->port)
        die("rte_sched_port_config failed");

    struct rte_sched_pipe_params pipe = {
        .tb_rate = shaper,
        .tb_size = burst,
        .tc_period = TC_PERIOD_MS,
        .tc_ov_weight = 1,
        .wrr_weights = {1, 1, 1, 1},
    };
    struct rte_sched_subport_params sp = {
        .n_pipes_per_subport_enabled = 1,
        .pipe_profiles = &pipe,
        .n_pipe_profiles = 1,
        .n_max_pipe_profiles = 2,
        .cman_params = NULL, /* tail drop */
    };
    for (int i = 0; i < N_PL; i++) {
        int p = PLANES[i];
        sp.qsize[PTC[p]] = (uint16_t)PQLEN[p];
        pipe.tc_rate[PTC[p]] = shaper;
    }
    sp.qsize[RTE_SCHED_TRAFFIC_CLASS_BE] = 64; /* unused, but required */
    pipe.tc_rate[RTE_SCHED_TRAFFIC_CLASS_BE] = shaper;
    int rc = rte_sched_subport_config(s->port, 0, &sp, 0);
    if (rc)
        die("rte_sched_subport_config: %d", rc);
    int32_t profile = 0;
    int capped = 0;
    struct rte_sched_pipe_params pipe2 = pipe;
    for (int i = 0; pc && i < N_PL; i++) {
        int p = PLANES[i];
        if (pc[p].tc_cap_bps > 0) {
            pipe2.tc_rate[PTC[p]] = (uint64_t)(pc[p].tc_cap_bps / 8);
            capped = 1;
        }
    }
    if (capped) {
        uint32_t id;
        rc = rte_sched_subport_pipe_profile_add(s->port, 0, &pipe2, &id);
        if (rc)
            die("rte_sched_subport_pipe_profile_add: %d", rc);
        profile = (int32_t)id;
    }
    rc = rte_sched_pipe_config(s->port, 0, 0, profile);
    if (rc)
        die("rte_sched_pipe_config: %d", rc);
}

/* returns how many were queued (the others were dropped and freed) */
static inline unsigned
sched_enqueue(struct sched *s, struct rte_mbuf **m, uint16_t n, uint64_t now)
{
    if (s->kind == OURS) {
        uint64_t full = s->queue_full;
        dp_qos_enqueue(s->q, 0, m, n, now, s->ctr, &s->queue_full);
        return n - (unsigned)(s->queue_full - full);
    }
    /* what the core would do per frame for rte_sched: stamp, classify */
    for (uint16_t i = 0; i < n; i++) {
        struct dp_meta *md = DP_META(m[i]);
        md->rx_tsc = now;
        rte_sched_port_pkt_write(s->port, m[i], 0, 0, PTC[md->plane & (DP_MAX_PLANES - 1)], 0,
                                 RTE_COLOR_GREEN);
    }
    return (unsigned)rte_sched_port_enqueue(s->port, m, n);
}

static inline uint16_t
sched_dequeue(struct sched *s, struct rte_mbuf **out, uint16_t max, uint64_t now)
{
    if (s->kind == OURS)
        return dp_qos_dequeue(s->q, out, max, now, s->ctr);
    return (uint16_t)rte_sched_port_dequeue(s->port, out, max);
}

/* frames in a plane's rte_sched queue (queue id = TC: subport 0, pipe 0) */
static unsigned
rte_qlen(struct sched *s, int plane)
{
    struct rte_sched_queue_stats st;
    uint16_t qlen = 0;
    if (rte_sched_queue_read_stats(s->port, PTC[plane], &st, &qlen))
        die("rte_sched_queue_read_stats failed");
    return qlen;
}

/* frames a protected plane's queue takes now: ours holds one frame
 * outside its ring (the head waiting for tokens), which takes one fewer
 * than the queue's length */
static unsigned
sched_room(struct sched *s, int plane)
{
    if (s->kind == OURS)
        return rte_ring_free_count(s->q->q[plane]);
    return PQLEN[plane] - rte_qlen(s, plane);
}

/*
 * rte_sched_port_free frees what is still queued, but it reads a full
 * queue (qw - qr == qsize) as empty and leaks its mbufs (DPDK 22.11, still
 * so upstream). So rte_sched ports are drained first (at most 1 s).
 */
static unsigned
sched_free(struct sched *s)
{
    if (s->kind == OURS) {
        dp_qos_free(s->q); /* frees what is still queued */
        return 0;
    }
    unsigned full = 0;
    for (int i = 0; i < N_PL; i++)
        if (rte_qlen(s, PLANES[i]) == PQLEN[PLANES[i]])
            full += PQLEN[PLANES[i]];
    struct rte_mbuf *out[BURST];
    uint64_t deadline = rte_rdtsc() + hz;
    for (;;) {
        uint16_t n = sched_dequeue(s, out, BURST, 0);
        rte_pktmbuf_free_bulk(out, n);
        unsigned left = 0;
        for (int i = 0; i < N_PL; i++)
            left += rte_qlen(s, PLANES[i]);
        if (!left || rte_rdtsc() > deadline)
            break;
    }
    rte_sched_port_free(s->port);
    return full; /* frames rte_sched_port_free would have leaked */
}

/* per-plane drops so far (rte_sched: read-and-clear, so accumulated here) */
static void
sched_drops(struct sched *s, uint64_t drops[DP_MAX_PLANES])
{
    if (s->kind == OURS) {
        for (int p = 0; p < DP_MAX_PLANES; p++)
            drops[p] = s->ctr[p][DP_QOS_DROPPED];
        return;
    }
    struct rte_sched_subport_stats st;
    uint32_t tc_ov;
    if (rte_sched_subport_read_stats(s->port, 0, &st, &tc_ov))
        die("rte_sched_subport_read_stats failed");
    for (int i = 0; i < N_PL; i++) {
        int p = PLANES[i];
        s->ctr[p][DP_QOS_DROPPED] += st.n_pkts_tc_dropped[PTC[p]];
        drops[p] = s->ctr[p][DP_QOS_DROPPED];
    }
}

/* --------------------------------------------------------------- cost */
struct cost_res {
    double ns_enq, ns_deq, ns_total, ns_loop, per_call, cpu_wait;
    uint64_t pkts, drops;
};

static void
run_cost(struct sched *s, const double offered_bps[DP_MAX_PLANES], struct cost_res *r)
{
    enum { NF = 4096 };
    struct rte_mbuf *fifo[NF], *out[BURST];
    /* the frame mix: planes drawn by the overload scenario's packet rates */
    double w[DP_MAX_PLANES] = {0}, wsum = 0;
    for (int i = 0; i < N_PL; i++) {
        int p = PLANES[i];
        w[p] = offered_bps[p] / 8 / avg_wire(p);
        wsum += w[p];
    }
    uint64_t x = 88172645463325252ull, idx[DP_MAX_PLANES] = {0};
    if (rte_pktmbuf_alloc_bulk(pool, fifo, NF))
        die("mbuf pool empty");
    for (unsigned i = 0; i < NF; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        double u = (double)(x >> 11) / (double)(1ull << 53) * wsum;
        int p = PL_STD;
        for (int k = 0; k < N_PL; k++) {
            if (u < w[PLANES[k]]) {
                p = PLANES[k];
                break;
            }
            u -= w[PLANES[k]];
        }
        fifo[i]->data_len = frame_len(p, idx[p]++);
        fifo[i]->pkt_len = fifo[i]->data_len;
        DP_META(fifo[i])->plane = (uint8_t)p;
    }
    unsigned head = 0, tail = 0, backlog = 0, in_fifo = NF;
    uint64_t enq_cyc = 0, deq_cyc = 0, n_deq = 0, deq_calls = 0;
    uint64_t t_start = rte_rdtsc(), t_warm = t_start + hz / 5,
             t_end = t_warm + (uint64_t)(seconds * hz);
    uint64_t t_w0 = 0;
    int counting = 0;
    for (uint64_t it = 0;; it++) {
        if (backlog < 256 && in_fifo >= BURST) {
            uint64_t t1 = rte_rdtsc();
            unsigned k = sched_enqueue(s, &fifo[head], BURST, t1);
            enq_cyc += rte_rdtsc() - t1;
            head = (head + BURST) % NF;
            backlog += k;
            in_fifo -= BURST;
        }
        uint64_t t1 = rte_rdtsc();
        uint16_t n = sched_dequeue(s, out, BURST, t1);
        uint64_t t2 = rte_rdtsc();
        deq_cyc += t2 - t1;
        deq_calls++;
        backlog -= n;
        n_deq += n;
        for (uint16_t i = 0; i < n; i++) {
            fifo[tail] = out[i];
            tail = (tail + 1) % NF;
        }
        in_fifo += n;
        if ((it & 63) == 0) {
            if (!counting && t2 >= t_warm) { /* restart the counts after warm-up */
                counting = 1;
                enq_cyc = deq_cyc = n_deq = deq_calls = 0;
                t_w0 = t2;
                r->cpu_wait = (double)cpu_wait_ns();
            } else if (counting && t2 >= t_end) {
                r->ns_loop = (double)(t2 - t_w0) * 1e9 / hz / (double)n_deq;
                r->cpu_wait =
                    ((double)cpu_wait_ns() - r->cpu_wait) / ((double)(t2 - t_w0) * 1e9 / hz);
                break;
            }
        }
    }
    uint64_t drops[DP_MAX_PLANES];
    sched_drops(s, drops);
    r->drops = 0;
    for (int p = 0; p < DP_MAX_PLANES; p++)
        r->drops += drops[p];
    r->pkts = n_deq;
    r->per_call = (double)n_deq / (double)deq_calls;
    r->ns_enq = (double)enq_cyc * 1e9 / hz / (double)n_deq;
    r->ns_deq = (double)deq_cyc * 1e9 / hz / (double)n_deq;
    r->ns_total = r->ns_enq + r->ns_deq;
    /* the frames not in the scheduler wait in the FIFO from head on */
    for (unsigned i = 0; i < in_fifo; i++)
        rte_pktmbuf_free(fifo[(head + i) % NF]);
}

/* --------------------------------------------------------- loaded runs */
struct lat {
    uint32_t *v;
    size_t n, cap;
};

static inline void
lat_push(struct lat *l, uint64_t cyc)
{
    if (unlikely(l->n == l->cap)) {
        l->cap = l->cap ? l->cap * 2 : 1 << 16;
        l->v = realloc(l->v, l->cap * sizeof(*l->v));
        if (!l->v)
            die("out of memory");
    }
    uint64_t ns = cyc * 1000000000ull / hz;
    l->v[l->n++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static int
cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* nearest-rank quantile, us */
static double
lat_q(struct lat *l, double q)
{
    if (!l->n)
        return 0;
    size_t i = (size_t)(q * (double)l->n + 0.999999);
    if (i < 1)
        i = 1;
    if (i > l->n)
        i = l->n;
    return l->v[i - 1] / 1000.0;
}

struct load_res {
    double window_s;
    uint64_t off_pkts[DP_MAX_PLANES], off_wire[DP_MAX_PLANES];
    uint64_t sent_pkts[DP_MAX_PLANES], sent_wire[DP_MAX_PLANES];
    uint64_t drops[DP_MAX_PLANES];
    double p50[DP_MAX_PLANES], p99[DP_MAX_PLANES], max[DP_MAX_PLANES];
    uint64_t alloc_fail;
    double cpu_wait;  /* share of the window spent waiting for the CPU */
    double max_gap_s; /* longest time between two turns of the loop in the window */
    /* turns in the window in which more of a protected plane's frames
     * fell due at once than its queue had room for (the loop had stalled:
     * its thread off the CPU, the vCPU stopped), by how many frames in
     * all, and how long the loop had been away before them */
    unsigned overflow_turns;
    uint64_t overflow[DP_MAX_PLANES];
    double stall_s;
    unsigned full_at_free; /* rte_sched: frames in full queues at the end */
};

/* one load scenario; where strict priority is judged (overload), the
 * turns in which the loop stalled are found (struct load_res) */
static void
run_load(struct sched *s, const double offered_bps[DP_MAX_PLANES], int judged, struct load_res *r)
{
    memset(r, 0, sizeof(*r));
    struct lat lat[DP_MAX_PLANES] = {{0}};
    double rate[DP_MAX_PLANES], owed[DP_MAX_PLANES] = {0};
    uint64_t idx[DP_MAX_PLANES] = {0}, drops0[DP_MAX_PLANES], drops1[DP_MAX_PLANES];
    uint64_t sent_all[DP_MAX_PLANES] = {0}, dropped[DP_MAX_PLANES], dbase[DP_MAX_PLANES];
    int recovering[DP_MAX_PLANES] = {0}; /* a plane's queue still full after a stall */
    sched_drops(s, dbase);
    memcpy(dropped, dbase, sizeof(dropped));
    for (int p = 0; p < DP_MAX_PLANES; p++)
        rate[p] = offered_bps[p] / 8.0 / (double)hz; /* wire bytes per TSC cycle */
    double warm = seconds / 4 < 0.5 ? seconds / 4 : 0.5;
    uint64_t t0 = rte_rdtsc(), last = t0;
    uint64_t t_warm = t0 + (uint64_t)(warm * hz), t_end = t_warm + (uint64_t)(seconds * hz);
    uint64_t t_w0 = 0;
    int in_window = 0;
    struct rte_mbuf *gen[BURST], *out[BURST];
    for (;;) {
        uint64_t now = rte_rdtsc();
        if (unlikely(!in_window && now >= t_warm)) {
            sched_drops(s, drops0);
            r->cpu_wait = (double)cpu_wait_ns();
            in_window = 1;
            t_w0 = now;
        }
        if (unlikely(now >= t_end))
            break;
        double dt = (double)(now - last);
        if (in_window && dt > r->max_gap_s)
            r->max_gap_s = dt; /* cycles here, seconds below */
        last = now;
        uint16_t ng = 0;
        int over = 0;
        for (int i = 0; i < N_PL; i++) {
            int p = PLANES[i];
            if (rate[p] == 0)
                continue;
            owed[p] += rate[p] * dt;
            uint64_t due0 = idx[p];
            /* a protected plane's room, read from its scheduler where this
             * turn's frames could fill its queue: where at most
             * generated - sent - dropped frames are queued (the drops as
             * last read: a queue with room for all that falls due drops
             * none) and that leaves room for all that may fall due, its
             * queue takes them all */
            uint64_t room = PQLEN[p];
            if (judged && p != PL_STD) {
                uint64_t held = idx[p] - sent_all[p] - (dropped[p] - dbase[p]);
                if (held + (uint64_t)(owed[p] / MIN_WIRE[p]) >= PQLEN[p] - 1) {
                    sched_drops(s, dropped);
                    room = sched_room(s, p);
                }
            }
            for (;;) {
                uint16_t len = frame_len(p, idx[p]);
                if (owed[p] < len + WIRE_OH)
                    break;
                struct rte_mbuf *m = rte_pktmbuf_alloc(pool);
                if (unlikely(!m)) {
                    r->alloc_fail++;
                    owed[p] = 0;
                    break;
                }
                m->data_len = len;
                m->pkt_len = len;
                DP_META(m)->plane = (uint8_t)p;
                owed[p] -= len + WIRE_OH;
                idx[p]++;
                if (in_window) {
                    r->off_pkts[p]++;
                    r->off_wire[p] += len + WIRE_OH;
                }
                gen[ng++] = m;
                if (ng == BURST) {
                    sched_enqueue(s, gen, ng, now);
                    ng = 0;
                }
            }
            /* more fell due than one dequeue takes and than there was room
             * for: the loop had been away (a queue a scheduler kept full
             * overflows by a frame or two a turn, and is not this); and in
             * the turns after, until its queue has room again for a turn's
             * frames and a dequeue's more, what the backlog leaves no room
             * for */
            uint64_t due = idx[p] - due0;
            if (judged && p != PL_STD && due > room && (due > BURST || recovering[p])) {
                recovering[p] = 1;
                if (in_window) {
                    r->overflow[p] += due - room;
                    over = 1;
                }
            } else if (room >= due + BURST) {
                recovering[p] = 0;
            }
        }
        if (over) {
            r->overflow_turns++;
            r->stall_s += dt; /* cycles here, seconds below */
        }
        if (ng)
            sched_enqueue(s, gen, ng, now);
        uint16_t n = sched_dequeue(s, out, BURST, rte_rdtsc());
        if (n) {
            uint64_t t = rte_rdtsc();
            for (uint16_t i = 0; i < n; i++)
                sent_all[DP_META(out[i])->plane & (DP_MAX_PLANES - 1)]++;
            if (in_window)
                for (uint16_t i = 0; i < n; i++) {
                    const struct dp_meta *md = DP_META(out[i]);
                    unsigned p = md->plane & (DP_MAX_PLANES - 1);
                    r->sent_pkts[p]++;
                    r->sent_wire[p] += out[i]->pkt_len + WIRE_OH;
                    lat_push(&lat[p], t - md->rx_tsc);
                }
            rte_pktmbuf_free_bulk(out, n);
        }
    }
    r->window_s = (double)(rte_rdtsc() - t_w0) / (double)hz;
    r->cpu_wait = ((double)cpu_wait_ns() - r->cpu_wait) / (r->window_s * 1e9);
    r->max_gap_s /= (double)hz;
    r->stall_s /= (double)hz;
    sched_drops(s, drops1);
    for (int p = 0; p < DP_MAX_PLANES; p++) {
        r->drops[p] = drops1[p] - drops0[p];
        if (lat[p].n) {
            qsort(lat[p].v, lat[p].n, sizeof(uint32_t), cmp_u32);
            r->p50[p] = lat_q(&lat[p], 0.50);
            r->p99[p] = lat_q(&lat[p], 0.99);
            r->max[p] = lat[p].v[lat[p].n - 1] / 1000.0;
        }
        free(lat[p].v);
    }
}

static double
mbps(uint64_t wire_bytes, double s)
{
    return (double)wire_bytes * 8 / s / 1e6;
}

static void
print_load(const char *scen, const char *label, const struct load_res *r)
{
    uint64_t tot = 0;
    printf("%-9s %-24s", scen, label);
    for (int i = 0; i < N_PL; i++) {
        int p = PLANES[i];
        tot += r->sent_wire[p];
        double lost = r->off_pkts[p] ? (double)r->drops[p] / (double)r->off_pkts[p] : 0;
        printf(" | %s off %.1f sent %.1f Mbit/s drop %" PRIu64
               " (%.1f%%) p50/p99/max %.1f/%.1f/%.0f us",
               PNAME[p], mbps(r->off_wire[p], r->window_s), mbps(r->sent_wire[p], r->window_s),
               r->drops[p], 100 * lost, r->p50[p], r->p99[p], r->max[p]);
    }
    printf(" | total sent %.1f Mbit/s | cpu wait %.2f%%", mbps(tot, r->window_s),
           100 * r->cpu_wait);
    if (r->alloc_fail)
        printf(" | WARNING: %" PRIu64 " mbuf allocations failed", r->alloc_fail);
    if (r->full_at_free && verbose)
        printf(" | drained %u frames of full queues first (rte_sched_port_free would leak them)",
               r->full_at_free);
    printf("\n");
}

/* how long plane p's full queue lasts at the rate it was offered in r (s):
 * a loop that stalls longer than that (its thread off the CPU, the VM's
 * vCPU not running) finds more of the plane's frames due at once than any
 * queue of that length can hold, whatever the scheduler does */
static double
queue_span_s(const struct load_res *r, int p)
{
    if (r->off_wire[p] == 0)
        return INFINITY;
    return PQLEN[p] * avg_wire(p) / ((double)r->off_wire[p] / r->window_s);
}

/* the loop stalled: in some turn more of a protected plane's frames fell
 * due at once than its queue had room for */
static int
stalled(const struct load_res *r)
{
    return r->overflow[PL_MEDIA] > 0 || r->overflow[PL_CTRL] > 0;
}

/* stalls take at most this share of the window; a scheduler whose every
 * call took that long would stall the loop for all of it, and be judged */
#define MAX_STALL_SHARE 0.25

/* the media and control losses of r are the stalls': a queue tail-drops
 * exactly what falls due beyond its room, so a plane that lost no more than
 * that in the stalls' turns lost nothing anywhere else */
static int
losses_of_stalls(const struct load_res *r)
{
    return r->stall_s <= MAX_STALL_SHARE * r->window_s &&
           r->drops[PL_MEDIA] <= r->overflow[PL_MEDIA] && r->drops[PL_CTRL] <= r->overflow[PL_CTRL];
}

/*
 * Strict priority held: media and control lost nothing and were sent as
 * offered, std got what the shaper left (within 3 %), and media's p99 delay
 * stayed below std's median. Not judged ("unjudged") where the loop
 * stalled longer than a protected plane's queue lasts and the losses are
 * no more than those stalls explain (losses_of_stalls): the line then says
 * how long the loop stalled and how many frames fell due beyond the queues.
 */
static const char *
check_strict(const struct load_res *r, double shaper_bps)
{
    static char buf[640];
    double w = r->window_s;
    double media = mbps(r->sent_wire[PL_MEDIA], w), ctrl = mbps(r->sent_wire[PL_CTRL], w);
    double std = mbps(r->sent_wire[PL_STD], w), want_std = shaper_bps / 1e6 - media - ctrl;
    int ok = r->drops[PL_MEDIA] == 0 && r->drops[PL_CTRL] == 0 &&
             media >= 0.98 * mbps(r->off_wire[PL_MEDIA], w) &&
             ctrl >= 0.98 * mbps(r->off_wire[PL_CTRL], w) && std >= 0.97 * want_std &&
             std <= 1.03 * want_std && r->p99[PL_MEDIA] < r->p50[PL_STD];
    int unjudged = !ok && stalled(r) && losses_of_stalls(r);
    int n = snprintf(
        buf, sizeof(buf),
        "%s (media lost %" PRIu64 ", control lost %" PRIu64 ", std %.1f of %.1f Mbit/s left by "
        "the shaper, media p99 %.1f us vs std p50 %.1f us)",
        ok         ? "holds"
        : unjudged ? "unjudged"
                   : "VIOLATED",
        r->drops[PL_MEDIA], r->drops[PL_CTRL], std, want_std, r->p99[PL_MEDIA], r->p50[PL_STD]);
    if (!ok && stalled(r) && n > 0 && (size_t)n < sizeof(buf))
        snprintf(buf + n, sizeof(buf) - (size_t)n,
                 ": the loop stalled %.1f ms at most, %.1f ms in all before %u turn(s) in which "
                 "%" PRIu64 " media and %" PRIu64 " control frames fell due beyond their queues' "
                 "room (media's queue lasts %.1f ms, control's %.1f ms at their offered rates)",
                 1e3 * r->max_gap_s, 1e3 * r->stall_s, r->overflow_turns, r->overflow[PL_MEDIA],
                 r->overflow[PL_CTRL], 1e3 * queue_span_s(r, PL_MEDIA),
                 1e3 * queue_span_s(r, PL_CTRL));
    return buf;
}

static void
leak_check(const char *what)
{
    unsigned avail = rte_mempool_avail_count(pool);
    if (avail != N_MBUFS)
        die("%s: %u of %u mbufs not returned to the pool", what, N_MBUFS - avail, N_MBUFS);
}

/* ------------------------------------------------ contenders, retries */
struct contender {
    int kind;
    const char *label;
    double line_bps, shaper_bps; /* rte_sched: port rate, subport/pipe rate */
    uint32_t burst;
    const struct plane_cfg *pc;
};

static double max_wait = 0.01; /* share of a window the thread may wait for its CPU */
static int retries = 3;

static void
make(struct sched *s, const struct contender *c)
{
    if (c->kind == OURS)
        ours_make(s, c->shaper_bps, c->burst, c->pc);
    else
        rte_make(s, c->label, c->line_bps, c->shaper_bps, c->burst, c->pc);
    s->label = c->label;
}

/*
 * A measurement whose thread waited for its CPU (other processes on the
 * machine) for more than max_wait of the window is repeated, with a fresh
 * scheduler, up to `retries` times; the attempt that waited least is kept.
 */
static void
measure_cost(const struct contender *c, const double offered_bps[DP_MAX_PLANES],
             struct cost_res *best)
{
    for (int a = 0; a <= retries; a++) {
        struct sched s;
        struct cost_res r;
        memset(&r, 0, sizeof(r));
        make(&s, c);
        run_cost(&s, offered_bps, &r);
        sched_free(&s);
        leak_check("cost");
        if (a == 0 || r.cpu_wait < best->cpu_wait)
            *best = r;
        if (r.cpu_wait <= max_wait)
            break;
        if (verbose)
            printf("%-9s %-24s (repeated: waited for the CPU %.2f%% of the window)\n", "cost",
                   c->label, 100 * r.cpu_wait);
    }
}

static void
measure_load(const char *scen, const struct contender *c, const double offered_bps[DP_MAX_PLANES],
             struct load_res *best)
{
    static struct load_res r;
    /* a stall counts where strict priority is judged: under overload */
    int judged = strcmp(scen, "overload") == 0;
    for (int a = 0; a <= retries; a++) {
        struct sched s;
        make(&s, c);
        run_load(&s, offered_bps, judged, &r);
        r.full_at_free = sched_free(&s);
        leak_check(scen);
        int st = judged && stalled(&r), best_st = judged && stalled(best);
        if (a == 0 || best_st > st || (best_st == st && r.cpu_wait < best->cpu_wait))
            *best = r;
        if (r.cpu_wait <= max_wait && !st)
            break;
        if (verbose)
            printf("%-9s %-24s (repeated: waited for the CPU %.2f%% of the window, the loop "
                   "stalled %.2f ms at most)\n",
                   scen, c->label, 100 * r.cpu_wait, 1e3 * r.max_gap_s);
    }
}

/* ---------------------------------------------------------------- main */
static int
want(const char *only, const char *name)
{
    if (!only)
        return 1;
    size_t n = strlen(name);
    for (const char *p = only; (p = strstr(p, name)) != NULL; p += n)
        if ((p == only || p[-1] == ',') && (p[n] == 0 || p[n] == ','))
            return 1;
    return 0;
}

int
main(int argc, char **argv)
{
    unsigned lcore = 0;
    const char *only = NULL;
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "sched-%d", (int)getpid());
    static const struct option opts[] = {
        {"seconds", required_argument, NULL, 's'}, {"lcore", required_argument, NULL, 'l'},
        {"prefix", required_argument, NULL, 'p'},  {"only", required_argument, NULL, 'o'},
        {"verbose", no_argument, NULL, 'v'},       {"max-wait", required_argument, NULL, 'w'},
        {"retries", required_argument, NULL, 'r'}, {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            seconds = atof(optarg);
            if (!(seconds > 0 && seconds <= 600))
                die("--seconds %s: want 0 < S <= 600", optarg);
            break;
        case 'l': lcore = (unsigned)atoi(optarg); break;
        case 'p': snprintf(prefix, sizeof(prefix), "%s", optarg); break;
        case 'o': only = optarg; break;
        case 'v': verbose = 1; break;
        case 'w': max_wait = atof(optarg); break;
        case 'r':
            retries = atoi(optarg);
            if (retries < 0)
                die("--retries %s: want >= 0", optarg);
            break;
        default:
            die("usage: sched_cmp [--seconds S] [--lcore N] [--prefix NAME] "
                "[--only cost,overload,cap,guarantee] [--max-wait SHARE] [--retries N] "
                "[--verbose]");
        }
    }
    char a_prefix[96], a_lcore[16];
    snprintf(a_prefix, sizeof(a_prefix), "--file-prefix=%s", prefix);
    snprintf(a_lcore, sizeof(a_lcore), "%u", lcore);
    /* never probe a device; no hugepages; no runtime files */
    char *eal[] = {
        "sched_cmp", "--no-pci", "--no-huge",          "--no-shconf",    "-m", "512", a_prefix,
        "-l",        a_lcore,    "--log-level=notice", "--no-telemetry", NULL};
    int eal_argc = (int)RTE_DIM(eal) - 1;
    printf("EAL:");
    for (int i = 1; i < eal_argc; i++)
        printf(" %s", eal[i]);
    printf("\n");
    fflush(stdout);
    if (rte_eal_init(eal_argc, eal) < 0)
        die("rte_eal_init: %s", rte_strerror(rte_errno));
    hz = rte_get_tsc_hz();
    pool = rte_pktmbuf_pool_create("sched_cmp", N_MBUFS, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                   (int)rte_socket_id());
    if (!pool)
        die("mbuf pool: %s", rte_strerror(rte_errno));
    if (dp_qos_init() < 0)
        die("dp_qos_init: %s", rte_strerror(rte_errno));
    printf("TSC %.3f GHz, lcore %u, %.1f s per scenario and scheduler; planes media (prio 3 "
           "-> TC0, queue %u), control (prio 2 -> TC1, queue %u), std (prio 0 -> TC2, queue %u); "
           "frames media 200 B, control 260/300/340 B, std IMIX 60/594/1464 7:4:1; "
           "rates on the wire (+%d B/frame)\n",
           hz / 1e9, lcore, seconds, PQLEN[PL_MEDIA], PQLEN[PL_CTRL], PQLEN[PL_STD], WIRE_OH);
    fflush(stdout);

    const double G = 1e9;
    double off[DP_MAX_PLANES] = {0};
    off[PL_STD] = 2.0 * G;
    off[PL_MEDIA] = 0.1 * G;
    off[PL_CTRL] = 0.05 * G;
    /* ---- cost: shapers that never limit */
    const struct contender cost_c[2] = {
        {OURS, "ours", 0, FAST_BPS, 1u << 20, NULL},
        {RTE, "rte_sched", FAST_BPS, FAST_BPS, 1u << 20, NULL},
    };
    struct cost_res cr[2];
    memset(cr, 0, sizeof(cr));
    if (want(only, "cost"))
        for (int k = 0; k < 2; k++) {
            measure_cost(&cost_c[k], off, &cr[k]);
            printf("%-9s %-24s enqueue %.1f + dequeue %.1f = %.1f ns/frame (whole loop %.1f "
                   "ns/frame), %.1f frames per dequeue call, %" PRIu64 " frames, %" PRIu64
                   " dropped | cpu wait %.2f%%\n",
                   "cost", cost_c[k].label, cr[k].ns_enq, cr[k].ns_deq, cr[k].ns_total,
                   cr[k].ns_loop, cr[k].per_call, cr[k].pkts, cr[k].drops, 100 * cr[k].cpu_wait);
            fflush(stdout);
        }

    /* ---- overload: shaper 1 Gbit/s */
    const double SH = 1.0 * G;
    const struct contender ov_c[3] = {
        {OURS, "ours", 0, SH, SHAPER_BURST, NULL},
        {RTE, "rte_sched", LINE_BPS, SH, SHAPER_BURST, NULL},
        {RTE, "rte_sched(port=shaper)", SH, SH, SHAPER_BURST, NULL},
    };
    struct load_res ov[3];
    memset(ov, 0, sizeof(ov));
    if (want(only, "overload"))
        for (int k = 0; k < 3; k++) {
            measure_load("overload", &ov_c[k], off, &ov[k]);
            print_load("overload", ov_c[k].label, &ov[k]);
            if (k < 2)
                printf("%-9s %-24s strict priority: %s\n", "", "", check_strict(&ov[k], SH));
            else
                printf("%-9s %-24s port rate = subport/pipe rate = 1 Gbit/s: rte_sched's port "
                       "rate is the line rate it expects the NIC to enforce, not a shaper\n",
                       "", "");
            fflush(stdout);
        }

    /* ---- cap: std at most 0.5x of the port */
    struct plane_cfg cap_pc[DP_MAX_PLANES];
    memset(cap_pc, 0, sizeof(cap_pc));
    cap_pc[PL_STD].max_bps = 0.5 * SH;
    cap_pc[PL_STD].tc_cap_bps = 0.5 * SH;
    const struct contender cap_c[2] = {
        {OURS, "ours(std max 500M)", 0, SH, SHAPER_BURST, cap_pc},
        {RTE, "rte_sched(TC2 500M)", LINE_BPS, SH, SHAPER_BURST, cap_pc},
    };
    struct load_res cap[2];
    if (want(only, "cap"))
        for (int k = 0; k < 2; k++) {
            measure_load("cap", &cap_c[k], off, &cap[k]);
            print_load("cap", cap_c[k].label, &cap[k]);
            double std = mbps(cap[k].sent_wire[PL_STD], cap[k].window_s);
            printf("%-9s %-24s std sent %.1f Mbit/s of a %.0f Mbit/s cap (%.1f%%)\n", "", "", std,
                   cap_pc[PL_STD].max_bps / 1e6, 100 * std / (cap_pc[PL_STD].max_bps / 1e6));
            fflush(stdout);
        }

    /* ---- guarantee: media misbehaves at 1.5x, std has a 0.3x minimum */
    double off2[DP_MAX_PLANES];
    memcpy(off2, off, sizeof(off2));
    off2[PL_MEDIA] = 1.5 * G;
    struct plane_cfg min_pc[DP_MAX_PLANES], tc0_pc[DP_MAX_PLANES];
    memset(min_pc, 0, sizeof(min_pc));
    memset(tc0_pc, 0, sizeof(tc0_pc));
    min_pc[PL_STD].min_bps = 0.3 * SH;
    tc0_pc[PL_MEDIA].tc_cap_bps = 0.65 * SH; /* leaves 0.3 to std, 0.05 to control */
    const struct contender gu_c[3] = {
        {OURS, "ours(std min 300M)", 0, SH, SHAPER_BURST, min_pc},
        {RTE, "rte_sched(no min)", LINE_BPS, SH, SHAPER_BURST, NULL},
        {RTE, "rte_sched(TC0 cap 650M)", LINE_BPS, SH, SHAPER_BURST, tc0_pc},
    };
    struct load_res gu[3];
    if (want(only, "guarantee"))
        for (int k = 0; k < 3; k++) {
            measure_load("guarantee", &gu_c[k], off2, &gu[k]);
            print_load("guarantee", gu_c[k].label, &gu[k]);
            printf("%-9s %-24s std sent %.1f Mbit/s (guarantee 300), control %.1f, media %.1f "
                   "Mbit/s\n",
                   "", "", mbps(gu[k].sent_wire[PL_STD], gu[k].window_s),
                   mbps(gu[k].sent_wire[PL_CTRL], gu[k].window_s),
                   mbps(gu[k].sent_wire[PL_MEDIA], gu[k].window_s));
            fflush(stdout);
        }

    if (want(only, "cost") && want(only, "overload")) {
        double ratio = cr[OURS].ns_total / cr[RTE].ns_total;
        printf("RESULT name=sched ours_ns_per_pkt=%.2f rte_sched_ns_per_pkt=%.2f ratio=%.3f "
               "ours_media_p99_us=%.2f rte_sched_media_p99_us=%.2f\n",
               cr[OURS].ns_total, cr[RTE].ns_total, ratio, ov[0].p99[PL_MEDIA],
               ov[1].p99[PL_MEDIA]);
    }
    fflush(stdout);
    rte_mempool_free(pool);
    char rundir[PATH_MAX];
    snprintf(rundir, sizeof(rundir), "%s", rte_eal_get_runtime_dir());
    rte_eal_cleanup();
    if (rmdir(rundir) && errno != ENOENT) /* --no-shconf leaves it empty */
        fprintf(stderr, "sched_cmp: rmdir %s: %s\n", rundir, strerror(errno));
    return 0;
}
