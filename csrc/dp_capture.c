/*
 * dp_capture.c - packet capture on any port, in either direction and of
 * the frames the core drops there (DP_CAP_DROP, each with its reason),
 * with a pcap-filter expression: compiled by libpcap to classic BPF, converted to
 * DPDK's eBPF (rte_bpf_convert) and run on each frame's mbuf (JIT where the
 * library has one). One capture at a time.
 *
 * Memory: `slots` fixed records of (header + snaplen bytes) allocated at
 * start; workers take a free slot (free ring, multi-consumer), fill it and
 * put it on the full ring (multi-producer); the control thread reads full
 * slots into the caller's buffer and returns them to the free ring. No
 * allocation in the worker, and a burst of a capture that cannot keep up
 * loses captured copies only (dropped is counted).
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include <pcap/pcap.h>
#include <rte_bpf.h>
#include <rte_cycles.h>
#include <rte_errno.h>
#include <rte_malloc.h>
#include <rte_ring.h>

#include "dp_capture.h"
#include "dp_control.h"
#include "dp_error.h"
#include "dp_internal.h"

struct dp_capture *_Atomic dp_cap;

_Static_assert(DP_DROP_COUNT <= 256, "a drop reason fits dp_cap_rec.reason");

struct dp_capture {
    uint8_t ports[DP_MAX_PORTS / 8]; /* bit set of captured port indexes */
    int dirs;                        /* DP_CAP_RX | DP_CAP_TX */
    uint32_t snaplen;
    uint32_t slot_size;
    struct rte_bpf *bpf; /* NULL: every frame */
    uint64_t (*jit)(void *);
    struct rte_ring *free, *full;
    uint8_t *slots;
    uint64_t tsc0, ns0, hz;              /* TSC -> wall clock */
    uint64_t matched, captured, dropped; /* atomics, by several workers */
};

static struct dp_capture *cap_owned; /* the control thread's reference */

static inline int
port_taken(const struct dp_capture *c, uint16_t pi)
{
    /* a bit the control thread may clear meanwhile (dp_capture_port_gone) */
    return (__atomic_load_n(&c->ports[pi >> 3], __ATOMIC_RELAXED) >> (pi & 7)) & 1;
}

/* port pi no longer taken (workers may be reading the bit meanwhile) */
static inline void
port_untake(struct dp_capture *c, uint16_t pi)
{
    __atomic_fetch_and(&c->ports[pi >> 3], (uint8_t) ~(1u << (pi & 7)), __ATOMIC_RELAXED);
}

int
dp_capture_add_port(int pi)
{
    struct dp_capture *c = cap_owned;
    if (c == NULL)
        return dp_fail(-ENOENT, "no capture is running");
    if (pi < 0 || pi >= DP_MAX_PORTS || dp_port_get(pi) == NULL)
        return dp_fail(-ENOENT, "capture: no port %d", pi);
    /* workers read the bit per burst: they take the port's next one */
    __atomic_fetch_or(&c->ports[pi >> 3], (uint8_t)(1u << (pi & 7)), __ATOMIC_RELAXED);
    return 0;
}

void
dp_capture_port_gone(uint16_t pi)
{
    struct dp_capture *c = cap_owned;
    if (c != NULL && pi < DP_MAX_PORTS)
        port_untake(c, pi);
}

void
dp_capture_hold(struct dp_capture *c, uint16_t pi, int dir, struct rte_mbuf **pkts, uint16_t n,
                uint64_t tsc, int reason, struct dp_cap_held *h)
{
    h->c = c;
    h->n = 0;
    if (!(c->dirs & dir) || !port_taken(c, pi))
        return;
    if (tsc == 0)
        tsc = rte_rdtsc();
    /* a burst timed just before the capture's start (its rx time is read
     * before the capture is), or on a CPU whose TSC runs a little behind:
     * the start, not 2^64 cycles on */
    uint64_t since = (int64_t)(tsc - c->tsc0) > 0 ? tsc - c->tsc0 : 0;
    uint64_t ts = c->ns0 + (uint64_t)((__uint128_t)since * 1000000000u / c->hz);
    for (uint16_t i = 0; i < n; i++) {
        struct rte_mbuf *m = pkts[i];
        if (c->bpf) {
            uint64_t r = c->jit ? c->jit(m) : rte_bpf_exec(c->bpf, m);
            if (r == 0)
                continue;
        }
        void *slot;
        if (rte_ring_dequeue(c->free, &slot) != 0)
            slot = NULL; /* counted as dropped if the frame is handed over */
        h->idx[h->n] = i;
        h->slot[h->n++] = slot;
        if (slot == NULL)
            continue;
        struct dp_cap_rec *rec = slot;
        uint32_t len = m->pkt_len < c->snaplen ? m->pkt_len : c->snaplen;
        const void *d = rte_pktmbuf_read(m, 0, len, rec + 1);
        if (d != (const void *)(rec + 1))
            memcpy(rec + 1, d, len);
        rec->ts_ns = ts;
        rec->orig_len = m->pkt_len;
        rec->caplen = len;
        rec->port = pi;
        rec->dir = (uint8_t)dir;
        rec->reason = (uint8_t)reason;
    }
}

void
dp_capture_release(struct dp_cap_held *h, uint16_t taken, uint64_t lost)
{
    struct dp_capture *c = h->c;
    uint64_t matched = 0, captured = 0, dropped = 0;
    for (uint16_t j = 0; j < h->n; j++) {
        void *slot = h->slot[j];
        if (h->idx[j] >= taken || ((lost >> (h->idx[j] & 63)) & 1)) {
            if (slot != NULL) /* the free ring holds every slot: cannot fail */
                (void)rte_ring_enqueue(c->free, slot);
            continue;
        }
        matched++;
        if (slot == NULL) {
            dropped++;
            continue;
        }
        /* the full ring holds every slot: cannot fail */
        (void)rte_ring_enqueue(c->full, slot);
        captured++;
    }
    h->n = 0;
    if (matched) {
        __atomic_fetch_add(&c->matched, matched, __ATOMIC_RELAXED);
        __atomic_fetch_add(&c->captured, captured, __ATOMIC_RELAXED);
        __atomic_fetch_add(&c->dropped, dropped, __ATOMIC_RELAXED);
    }
}

void
dp_capture_burst(struct dp_capture *c, uint16_t pi, int dir, struct rte_mbuf **pkts, uint16_t n,
                 uint64_t tsc, int reason)
{
    struct dp_cap_held h;
    if (!(c->dirs & dir) || !port_taken(c, pi))
        return; /* before the clock is read: a capture of other things */
    if (tsc == 0)
        tsc = rte_rdtsc();
    for (uint16_t i = 0; i < n; i += DP_CAP_HOLD) {
        uint16_t k = (uint16_t)RTE_MIN(n - i, DP_CAP_HOLD);
        dp_capture_hold(c, pi, dir, pkts + i, k, tsc, reason, &h);
        dp_capture_release(&h, k, 0);
    }
}

static void
capture_free(struct dp_capture *c)
{
    if (c == NULL)
        return;
    if (c->bpf)
        rte_bpf_destroy(c->bpf);
    rte_ring_free(c->free);
    rte_ring_free(c->full);
    rte_free(c->slots);
    rte_free(c);
}

/* filter -> loaded eBPF program in c->bpf (and its JIT); "" = none */
static int
capture_filter(struct dp_capture *c, const char *filter)
{
    if (filter == NULL || filter[0] == '\0')
        return 0;
    pcap_t *pc = pcap_open_dead(DLT_EN10MB, 65535);
    if (pc == NULL)
        return dp_fail(-ENOMEM, "capture filter: libpcap could not be set up");
    struct bpf_program code;
    if (pcap_compile(pc, &code, filter, 1, PCAP_NETMASK_UNKNOWN) != 0) {
        int ret = dp_fail(-EINVAL, "capture filter '%s': %s", filter, pcap_geterr(pc));
        pcap_close(pc);
        return ret;
    }
    pcap_close(pc);
    struct rte_bpf_prm *prm = rte_bpf_convert(&code);
    pcap_freecode(&code);
    if (prm == NULL)
        return dp_fail(-rte_errno, "capture filter '%s': cannot convert to eBPF: %s", filter,
                       rte_strerror(rte_errno));
    c->bpf = rte_bpf_load(prm);
    rte_free(prm);
    if (c->bpf == NULL)
        return dp_fail(-rte_errno, "capture filter '%s': eBPF load failed: %s", filter,
                       rte_strerror(rte_errno));
    struct rte_bpf_jit jit;
    if (rte_bpf_get_jit(c->bpf, &jit) == 0 && jit.func != NULL)
        c->jit = jit.func;
    return 0;
}

static size_t
slot_size_of(unsigned snaplen)
{
    return RTE_ALIGN_CEIL(sizeof(struct dp_cap_rec) + snaplen, 8);
}

/* whether `slots` records of `snaplen` bytes can be had now (tried) */
static int
records_fit(unsigned slots, unsigned snaplen)
{
    void *p =
        rte_malloc("dp_cap_probe", (size_t)slots * slot_size_of(snaplen), RTE_CACHE_LINE_SIZE);
    rte_free(p);
    return p != NULL;
}

/* the largest snap length below `over` whose `slots` records the memory
 * free now holds, 0 if not even the least one's: what a refused start
 * says (the records are one allocation: the largest free block decides,
 * in whatever memory the EAL may still take) */
static unsigned
snaplen_fitting(unsigned slots, unsigned over)
{
    unsigned lo = DP_CAP_SNAPLEN_MIN, hi = over - 1;
    if (over <= lo || !records_fit(slots, lo))
        return 0;
    while (lo < hi) { /* records_fit(lo) holds; is there more up to hi? */
        unsigned mid = lo + (hi - lo + 1) / 2;
        if (records_fit(slots, mid))
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

int
dp_capture_start(const uint8_t *port_mask, int dirs, const char *filter, unsigned snaplen,
                 unsigned slots)
{
    if (!dp_setup_done)
        return dp_fail(-ENODEV, "dp_setup first");
    if (cap_owned != NULL)
        return dp_fail(-EBUSY, "a capture is already running (one at a time)");
    if (!(dirs & (DP_CAP_RX | DP_CAP_TX | DP_CAP_DROP)) ||
        (dirs & ~(DP_CAP_RX | DP_CAP_TX | DP_CAP_DROP)))
        return dp_fail(-EINVAL, "capture directions %d: rx (1), tx (2), drop (4) or a sum of them",
                       dirs);
    if (snaplen < DP_CAP_SNAPLEN_MIN || snaplen > DP_CAP_SNAPLEN_MAX)
        return dp_fail(-EINVAL, "capture snaplen %u: %d..%d bytes", snaplen, DP_CAP_SNAPLEN_MIN,
                       DP_CAP_SNAPLEN_MAX);
    if (slots < 2 || slots > DP_CAP_SLOTS_MAX || (slots & (slots - 1)))
        return dp_fail(-EINVAL, "capture slots %u: a power of two, 2..%d", slots, DP_CAP_SLOTS_MAX);
    struct dp_capture *c = rte_zmalloc("dp_capture", sizeof(*c), RTE_CACHE_LINE_SIZE);
    if (c == NULL)
        return dp_fail(-ENOMEM, "capture: out of hugepage memory");
    memcpy(c->ports, port_mask, sizeof(c->ports));
    /* a port removed since the caller chose it (its index free, to be
     * given to another) is not taken: dp_capture_port_gone, which keeps
     * it so from now on, found no capture to tell */
    for (int i = 0; i < DP_MAX_PORTS; i++)
        if (port_taken(c, (uint16_t)i) && dp_port_get(i) == NULL)
            port_untake(c, (uint16_t)i);
    c->dirs = dirs;
    c->snaplen = snaplen;
    c->slot_size = (uint32_t)slot_size_of(snaplen);
    int ret = capture_filter(c, filter);
    if (ret < 0)
        goto fail;
    /* rings of `slots` entries hold slots - 1: one more than the slots */
    /* free: taken by workers, given back by the control thread (read) and
     * by workers (a record whose frame a driver did not take): several
     * producers and consumers. full: several producers, one consumer */
    c->free = rte_ring_create("dp_cap_free", slots * 2, SOCKET_ID_ANY, 0);
    c->full = rte_ring_create("dp_cap_full", slots * 2, SOCKET_ID_ANY, RING_F_SC_DEQ);
    c->slots = rte_zmalloc("dp_cap_slots", (size_t)slots * c->slot_size, RTE_CACHE_LINE_SIZE);
    if (c->free == NULL || c->full == NULL) {
        ret = dp_fail(-ENOMEM, "capture: no memory left for the rings of %u records", slots);
        goto fail;
    }
    if (c->slots == NULL) {
        unsigned fits = snaplen_fitting(slots, snaplen);
        if (fits == 0)
            ret = dp_fail(-ENOMEM,
                          "capture: %u records do not fit in the memory free now, not even "
                          "at the least snap length (%d)",
                          slots, DP_CAP_SNAPLEN_MIN);
        else
            ret = dp_fail(-ENOMEM,
                          "capture snaplen %u: %u records of %u bytes do not fit in the memory "
                          "free now; the largest snap length that fits is %u",
                          snaplen, slots, c->slot_size, fits);
        goto fail;
    }
    for (unsigned i = 0; i < slots; i++)
        (void)rte_ring_enqueue(c->free, c->slots + (size_t)i * c->slot_size);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    c->tsc0 = rte_rdtsc();
    c->ns0 = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
    c->hz = rte_get_tsc_hz();
    cap_owned = c;
    atomic_store_explicit(&dp_cap, c, memory_order_release);
    return 0;
fail:
    capture_free(c);
    return ret;
}

int
dp_capture_read(uint8_t *buf, size_t buf_len)
{
    struct dp_capture *c = cap_owned;
    if (c == NULL)
        return dp_fail(-ENOENT, "no capture is running");
    size_t off = 0;
    void *slot;
    while (rte_ring_count(c->full) > 0) {
        /* the oldest record's size decides whether it fits */
        if (rte_ring_dequeue_bulk_start(c->full, &slot, 1, NULL) != 1)
            break;
        struct dp_cap_rec *rec = slot;
        size_t sz = RTE_ALIGN_CEIL(sizeof(*rec) + rec->caplen, 8);
        if (off + sz > buf_len) {
            rte_ring_dequeue_finish(c->full, 0);
            if (off == 0)
                return dp_fail(-ENOSPC, "capture read: buffer of %zu bytes < a record", buf_len);
            break;
        }
        memcpy(buf + off, rec, sizeof(*rec) + rec->caplen);
        off += sz;
        rte_ring_dequeue_finish(c->full, 1);
        (void)rte_ring_enqueue(c->free, slot);
    }
    return (int)off;
}

int
dp_capture_stats(struct dp_cap_stats *out)
{
    struct dp_capture *c = cap_owned;
    if (c == NULL)
        return dp_fail(-ENOENT, "no capture is running");
    out->matched = __atomic_load_n(&c->matched, __ATOMIC_RELAXED);
    out->captured = __atomic_load_n(&c->captured, __ATOMIC_RELAXED);
    out->dropped = __atomic_load_n(&c->dropped, __ATOMIC_RELAXED);
    out->queued = rte_ring_count(c->full);
    return 0;
}

int
dp_capture_detach(void)
{
    if (cap_owned == NULL)
        return dp_fail(-ENOENT, "no capture is running");
    if (atomic_load_explicit(&dp_cap, memory_order_relaxed) != NULL) {
        atomic_store_explicit(&dp_cap, NULL, memory_order_release);
        dp_sync(); /* no worker holds it any more */
    }
    return 0;
}

int
dp_capture_stop(void)
{
    struct dp_capture *c = cap_owned;
    if (c == NULL)
        return dp_fail(-ENOENT, "no capture is running");
    (void)dp_capture_detach();
    cap_owned = NULL;
    capture_free(c);
    return 0;
}

void
dp_capture_teardown(void)
{
    if (cap_owned != NULL)
        (void)dp_capture_stop();
}
