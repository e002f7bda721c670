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
 */
#include <string.h>

#include <rte_ethdev.h>
#include <rte_arp.h>
#include <rte_hash_crc.h>
#include <rte_prefetch.h>
#include <rte_malloc.h>

#include "dp_internal.h"
#include "dp_qos.h"

#define DP_FLOW_PORTS_INIT 0x9e3779b9u /* seeds the L4-port CRC of the flow hash */

struct dp_wctx {
    int id;
    uint64_t *drop; /* this worker's drop counters */
    uint64_t (*port)[DP_PORT_CTR_COUNT];
    uint64_t (*net)[DP_NET_CTR_COUNT];
    uint64_t (*qos)[DP_MAX_PLANES][DP_QOS_CTR_COUNT]; /* per port */
    uint64_t (*lat)[DP_LAT_ROW];                      /* per plane */
    uint64_t *wc;                                     /* this worker's own counters */
    const struct dp_vtep *vtep;                       /* snapshot for this loop iteration */
    uint64_t rx_tsc;                                  /* when the burst in hand was received */
    uint32_t tbl_gen;                                 /* dp.tbl_gen the cache epoch belongs to */
    uint32_t epoch;                                   /* current FDB cache epoch, never 0 */
    uint16_t n_dirty;
    uint16_t dirty[DP_MAX_PORTS];
    uint8_t queued[DP_MAX_PORTS];
    struct dp_txbuf tx[DP_MAX_PORTS];
    struct dp_fdb_cent fcache[DP_FDB_CACHE_SIZE] __rte_cache_aligned;
    struct dp_fdb_cent vcache[DP_VTEP_CACHE_SIZE];
};

static inline void
drop(struct dp_wctx *w, struct rte_mbuf *m, enum dp_drop why)
{
    w->drop[why]++;
    rte_pktmbuf_free(m);
}

/* ------------------------------------------------------------------ tx */

/* a plane's bit in dp_txbuf.planes (DP_PLANE_OWN and the like: bit 8) */
static __rte_always_inline uint16_t
plane_bit(unsigned plane)
{
    return (uint16_t)(1u << (plane < DP_MAX_PLANES ? plane : DP_MAX_PLANES));
}

/* hand n frames of `bytes` bytes to port p's driver; what it does not take is
 * freed and counted */
static inline void
port_tx(struct dp_wctx *w, const struct dp_port *p, uint16_t pi, struct rte_mbuf **m, uint16_t n,
        uint64_t bytes)
{
    uint16_t sent;
    if (p->driver == DP_DRV_ETHDEV) {
        if (likely(w->id < p->n_txq)) {
            sent = rte_eth_tx_burst(p->eth_port, (uint16_t)w->id, m, n);
        } else {
            rte_spinlock_lock(p->tx_lock);
            sent = rte_eth_tx_burst(p->eth_port, 0, m, n);
            rte_spinlock_unlock(p->tx_lock);
        }
    } else {
        rte_spinlock_lock(p->tx_lock);
        sent = dp_afp_tx_burst(p->afp, m, n);
        rte_spinlock_unlock(p->tx_lock);
    }
    if (unlikely(sent < n)) {
        for (uint16_t i = sent; i < n; i++)
            bytes -= m[i]->pkt_len;
        w->drop[DP_DROP_TX_FULL] += n - sent;
        rte_pktmbuf_free_bulk(m + sent, n - sent);
    }
    w->port[pi][DP_PORT_TX_PACKETS] += sent;
    w->port[pi][DP_PORT_TX_BYTES] += bytes;
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
 * Time from rx to tx, per plane, of frames leaving an unshaped port (before
 * the driver may free them). They all came in with the burst in hand (tx
 * buffers are flushed at the end of every burst), so they share one latency
 * and one bucket; frames of one plane (`planes`: the buffer's plane bits)
 * are counted at once, a mix by reading each frame's plane.
 */
static inline void
lat_record(struct dp_wctx *w, struct rte_mbuf **m, uint16_t n, uint16_t planes)
{
    if (!dp_qg.latency_on)
        return;
    uint64_t d = rte_rdtsc() - w->rx_tsc;
    unsigned b = dp_lat_bucket(d);
    if (likely(planes != 0 && (planes & (planes - 1)) == 0)) {
        lat_add(w, (unsigned)__builtin_ctz(planes), b, d, n);
        return;
    }
    unsigned cp = DP_META(m[0])->plane;
    uint64_t run = 0;
    for (uint16_t i = 0; i < n; i++) {
        unsigned p = DP_META(m[i])->plane;
        if (unlikely(p != cp)) {
            lat_add(w, cp, b, d, run);
            cp = p;
            run = 0;
        }
        run++;
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
    if (p->qos) {
        /* a shaped port: into the plane queues; its worker schedules them */
        dp_qos_enqueue(p->qos, b->m, n, w->rx_tsc, w->qos[pi], &w->drop[DP_DROP_QUEUE_FULL]);
        return;
    }
    lat_record(w, b->m, n, planes);
    port_tx(w, p, pi, b->m, n, bytes);
}

/* the scheduler of a shaped port this worker owns */
static void
qos_run(struct dp_wctx *w, const struct dp_port *p, uint16_t pi)
{
    struct rte_mbuf *out[DP_BURST * 2];
    uint64_t now = rte_rdtsc();
    uint16_t n = dp_qos_dequeue(p->qos, out, RTE_DIM(out), now, w->qos[pi]);
    if (n) {
        if (dp_qg.latency_on)
            dp_lat_record_burst(w->lat, out, n, now);
        uint64_t bytes = 0;
        for (uint16_t i = 0; i < n; i++)
            bytes += out[i]->pkt_len;
        port_tx(w, p, pi, out, n, bytes);
    }
}

static inline void
tx_put(struct dp_wctx *w, uint16_t pi, struct rte_mbuf *m)
{
    struct dp_txbuf *b = &w->tx[pi];
    if (!w->queued[pi]) {
        w->queued[pi] = 1;
        w->dirty[w->n_dirty++] = pi;
    }
    b->m[b->n++] = m;
    b->bytes += m->pkt_len;
    b->planes |= plane_bit(DP_META(m)->plane);
    if (unlikely(b->n == DP_TXBUF))
        tx_flush(w, pi);
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

/* --------------------------------------------------------------- encap */

/*
 * Inner flow hash for the outer UDP source port (RFC 7348 §5: entropy for
 * ECMP, in the dynamic range 49152-65535) and the inner DSCP to copy: the
 * frames inner_flow does not take on its fast path.
 */
static __rte_noinline uint32_t
inner_flow_slow(const struct rte_mbuf *m, const uint8_t *eth, uint8_t *tos)
{
    uint16_t et;
    memcpy(&et, eth + 12, 2);
    if (et == RTE_BE16(RTE_ETHER_TYPE_IPV4) && m->data_len >= 34) {
        const struct rte_ipv4_hdr *ip = (const struct rte_ipv4_hdr *)(eth + 14);
        *tos = ip->type_of_service & 0xfc;
        uint64_t addrs;
        memcpy(&addrs, &ip->src_addr, 8);
        uint32_t hl = (ip->version_ihl & 0xf) * 4u;
        uint8_t pr = ip->next_proto_id;
        uint32_t ports = 0;
        if ((pr == IPPROTO_TCP || pr == IPPROTO_UDP || pr == IPPROTO_SCTP) &&
            !(ip->fragment_offset & RTE_BE16(0x3fff)) && m->data_len >= 14 + hl + 4)
            memcpy(&ports, eth + 14 + hl, 4);
        return rte_hash_crc_8byte(addrs, pr) ^ rte_hash_crc_4byte(ports, DP_FLOW_PORTS_INIT);
    }
    if (et == RTE_BE16(RTE_ETHER_TYPE_IPV6) && m->data_len >= 54) {
        const uint8_t *ip6 = eth + 14;
        uint32_t vtc;
        memcpy(&vtc, ip6, 4);
        *tos = (uint8_t)((rte_be_to_cpu_32(vtc) >> 20) & 0xfc);
        return rte_hash_crc(ip6 + 8, 32, vtc & RTE_BE32(0x000fffff));
    }
    *tos = 0;
    return rte_hash_crc(eth, 12, et);
}

/*
 * The same, fast path: IPv4 without options (nearly every frame), whose L4
 * ports sit at a fixed offset. The two CRCs do not depend on each other, so
 * they run side by side; the protocol mix of real traffic is handled without
 * branches (the predictor would lose to it).
 */
static __rte_always_inline uint32_t
inner_flow(const struct rte_mbuf *m, const uint8_t *eth, uint8_t *tos)
{
    uint16_t et;
    memcpy(&et, eth + 12, 2);
    if (unlikely(et != RTE_BE16(RTE_ETHER_TYPE_IPV4) || eth[14] != 0x45 || m->data_len < 38))
        return inner_flow_slow(m, eth, tos);
    const struct rte_ipv4_hdr *ip = (const struct rte_ipv4_hdr *)(eth + 14);
    *tos = ip->type_of_service & 0xfc;
    uint64_t addrs;
    memcpy(&addrs, &ip->src_addr, 8);
    uint32_t ports;
    memcpy(&ports, eth + 34, 4);
    uint8_t pr = ip->next_proto_id;
    uint32_t l4 = (pr == IPPROTO_TCP) | (pr == IPPROTO_UDP) | (pr == IPPROTO_SCTP);
    l4 &= !(ip->fragment_offset & RTE_BE16(0x3fff));
    return rte_hash_crc_8byte(addrs, pr) ^
           rte_hash_crc_4byte(ports & (0u - l4), DP_FLOW_PORTS_INIT);
}

/*
 * Rewrite m in place into a VXLAN frame to tunnel ti. Returns 1, or 0 when
 * the frame was dropped (and counted).
 */
static __rte_always_inline int
encap_one(struct dp_wctx *w, const struct dp_net *net, uint32_t ti, struct rte_mbuf *m, uint32_t h,
          uint8_t tos, uint64_t *bytes, uint16_t *planes)
{
    const struct dp_tunnel *t = atomic_load_explicit(&dp.tunnels[ti], memory_order_acquire);
    if (unlikely(t == NULL || !t->resolved)) {
        drop(w, m, DP_DROP_NEIGH_UNRESOLVED);
        return 0;
    }
    if (unlikely(m->pkt_len > net->max_frame)) {
        drop(w, m, DP_DROP_OVERSIZE);
        return 0;
    }
    /* h, tos: the inner flow's hash and DSCP (inner_flow) */
    /* plane: by the network, or by the inner DSCP where a map says so;
     * outer DSCP: the plane's marking, or the inner one copied */
    int8_t by_dscp = dp_qg.dscp_plane[tos >> 2];
    unsigned plane = by_dscp >= 0 ? (unsigned)by_dscp : (unsigned)net->plane;
    DP_META(m)->plane = (uint8_t)plane;
    *planes |= plane_bit(plane);
    int mark = dp_qg.plane[plane & (DP_MAX_PLANES - 1)].outer_tos;
    tos = mark >= 0 ? (uint8_t)mark : tos;
    uint8_t *hdr = (uint8_t *)rte_pktmbuf_prepend(m, DP_VXLAN_HDR_LEN);
    if (unlikely(hdr == NULL)) {
        drop(w, m, DP_DROP_NO_HEADROOM);
        return 0;
    }
    rte_memcpy(hdr, t->hdr, DP_VXLAN_HDR_LEN);
    struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(hdr + sizeof(struct rte_ether_hdr));
    struct rte_udp_hdr *udp = (struct rte_udp_hdr *)(ip + 1);
    struct rte_vxlan_hdr *vx = (struct rte_vxlan_hdr *)(udp + 1);
    uint16_t ip_len = (uint16_t)(m->pkt_len - sizeof(struct rte_ether_hdr));
    rte_be16_t len_be = rte_cpu_to_be_16(ip_len);
    ip->type_of_service = tos;
    ip->total_length = len_be;
    /* incremental checksum: template sum + first word (version, TOS) + length,
     * from registers (reading the header back would stall on the stores) */
    rte_be16_t w0 = rte_cpu_to_be_16((uint16_t)(RTE_IPV4_VHL_DEF << 8 | tos));
    uint32_t sum = t->csum_base + w0 + len_be;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    ip->hdr_checksum = (uint16_t)~sum;
    h ^= h >> 16;
    udp->src_port = rte_cpu_to_be_16((uint16_t)(0xc000 | (h & 0x3fff)));
    udp->dgram_len = rte_cpu_to_be_16((uint16_t)(ip_len - sizeof(struct rte_ipv4_hdr)));
    vx->vx_vni = net->vni_be_word;
    *bytes += m->pkt_len;
    return 1;
}

/* one frame to the uplink (flood copies; the pod loop encapsulates inline) */
static void
encap(struct dp_wctx *w, const struct dp_net *net, uint32_t ti, struct rte_mbuf *m)
{
    uint8_t tos;
    uint32_t h = inner_flow(m, rte_pktmbuf_mtod(m, const uint8_t *), &tos);
    uint64_t bytes = 0; /* tx_put counts both */
    uint16_t planes = 0;
    if (!encap_one(w, net, ti, m, h, tos, &bytes, &planes))
        return;
    w->net[net->idx][DP_NET_ENCAP]++;
    tx_put(w, (uint16_t)w->vtep->uplink, m);
}

/*
 * Broadcast, multicast and unknown unicast: every local port of the network
 * but the ingress one, and (from pods only) one encapsulated copy per remote
 * VTEP in the network's flood list.
 */
static void
flood(struct dp_wctx *w, const struct dp_net *net, int in_port, int to_remote, struct rte_mbuf *m)
{
    uint16_t targets[DP_MAX_PORTS];
    uint16_t nt = 0;
    for (uint16_t i = 0; i < net->n_local; i++)
        if (net->local[i] != in_port)
            targets[nt++] = net->local[i];
    uint16_t nr = to_remote && w->vtep->uplink >= 0 ? net->n_flood : 0;
    if (unlikely(nt == 0 && nr == 0)) {
        drop(w, m, DP_DROP_NO_DESTINATION);
        return;
    }
    w->net[net->idx][DP_NET_FLOOD]++;
    for (uint16_t i = 0; i < nr; i++) {
        struct rte_mbuf *c = rte_pktmbuf_copy(m, dp.pool, 0, UINT32_MAX);
        if (unlikely(c == NULL)) {
            w->drop[DP_DROP_NO_MBUF]++;
            continue;
        }
        encap(w, net, net->flood[i], c);
    }
    if (nt == 0) {
        rte_pktmbuf_free(m);
        return;
    }
    /* local copies share the frame: it is not modified any more */
    rte_pktmbuf_refcnt_update(m, (int16_t)(nt - 1));
    for (uint16_t i = 0; i < nt; i++)
        tx_put(w, targets[i], m);
}

/*
 * A cached table's answers for n keys of a burst; returns the hit mask. The
 * worker's cache answers first; what it cannot goes to the table in one bulk
 * lookup, and the table's answers are cached (dp_internal.h). fdb (a
 * constant once inlined): the FDB, whose values are kept as DP_FV; else the
 * VTEP table, whose values are network indexes.
 */
static __rte_always_inline uint64_t
cached_lookup(struct dp_wctx *w, struct dp_fdb_cent *cache, unsigned mask,
              const struct rte_hash *table, int fdb, const uint64_t *keys, const hash_sig_t *sig,
              uint16_t n, uint32_t *val)
{
    const void *kp[DP_BURST];
    hash_sig_t msig[DP_BURST];
    uint8_t mi[DP_BURST];
    uint16_t nm = 0;
    uint64_t hits = 0;
    uint32_t ep = w->epoch;
    for (uint16_t i = 0; i < n; i++) {
        const struct dp_fdb_cent *e = &cache[sig[i] & mask];
        if (likely(e->key == keys[i] && e->epoch == ep)) {
            val[i] = e->val;
            hits |= 1ull << i;
        } else {
            kp[nm] = &keys[i];
            msig[nm] = sig[i];
            mi[nm++] = (uint8_t)i;
        }
    }
    if (fdb)
        w->wc[DP_WORKER_FDB_LOOKUPS] += n;
    if (nm == 0)
        return hits;
    void *d[DP_BURST];
    uint64_t mh = 0;
    rte_hash_lookup_with_hash_bulk_data(table, kp, msig, nm, &mh, d);
    if (fdb)
        w->wc[DP_WORKER_FDB_CACHE_MISSES] += nm;
    for (uint16_t j = 0; j < nm; j++) {
        if (!((mh >> j) & 1))
            continue; /* unknown keys are not cached */
        unsigned i = mi[j];
        uint32_t v =
            fdb ? DP_FV(DP_FDB_KIND(d[j]), DP_FDB_TARGET(d[j])) : (uint32_t)(uintptr_t)d[j];
        struct dp_fdb_cent *e = &cache[msig[j] & mask];
        e->key = keys[i];
        e->val = v;
        e->epoch = ep;
        val[i] = v;
        hits |= 1ull << i;
    }
    return hits;
}

/* FDB answers (DP_FV) of a burst; unknown MACs flood */
static __rte_always_inline uint64_t
fdb_lookup(struct dp_wctx *w, const uint64_t *keys, const hash_sig_t *sig, uint16_t n,
           uint32_t *val)
{
    return cached_lookup(w, w->fcache, DP_FDB_CACHE_SIZE - 1, dp.fdb, 1, keys, sig, n, val);
}

/* loop start: a changed table starts a new cache epoch */
static __rte_always_inline void
cache_sync(struct dp_wctx *w)
{
    uint32_t g = atomic_load_explicit(&dp.tbl_gen, memory_order_acquire);
    if (likely(g == w->tbl_gen))
        return;
    w->tbl_gen = g;
    if (unlikely(++w->epoch == 0)) { /* wrapped: no old entry may look current */
        memset(w->fcache, 0, sizeof(w->fcache));
        memset(w->vcache, 0, sizeof(w->vcache));
        w->epoch = 1;
    }
}

static void
pod_burst(struct dp_wctx *w, const struct dp_port *in, uint16_t pi, struct rte_mbuf **pkts,
          uint16_t n)
{
    const struct dp_net *net =
        in->net >= 0 ? atomic_load_explicit(&dp.nets[in->net], memory_order_acquire) : NULL;
    if (unlikely(net == NULL)) {
        uint64_t bytes = 0;
        for (uint16_t i = 0; i < n; i++)
            bytes += pkts[i]->pkt_len;
        w->port[pi][DP_PORT_RX_BYTES] += bytes;
        w->drop[DP_DROP_NO_NETWORK] += n;
        rte_pktmbuf_free_bulk(pkts, n);
        return;
    }
    uint64_t keys[DP_BURST];
    hash_sig_t sig[DP_BURST];
    uint32_t val[DP_BURST];
    uint32_t fh[DP_BURST];  /* inner flow hash and DSCP, for encapsulation: */
    uint8_t ftos[DP_BURST]; /* a short loop of its own overlaps the frames' loads */
    uint8_t plane = (uint8_t)net->plane;
    uint64_t bytes = 0;
    for (uint16_t i = 0; i < n; i++) {
        const uint8_t *eth = rte_pktmbuf_mtod(pkts[i], const uint8_t *);
        bytes += pkts[i]->pkt_len;
        keys[i] = dp_fdb_key((uint32_t)net->idx, eth);
        sig[i] = dp_key8_hash(keys[i]);
        fh[i] = inner_flow(pkts[i], eth, &ftos[i]);
    }
    w->port[pi][DP_PORT_RX_BYTES] += bytes;
    uint64_t hits = fdb_lookup(w, keys, sig, n, val);
    uint64_t local = 0;
    struct rte_mbuf *fl[DP_BURST]; /* broadcast / unknown: after the rest */
    uint16_t nf = 0;
    /* remote targets are encapsulated straight into the uplink's tx buffer,
     * its fill level kept in a register (nothing else adds to it meanwhile) */
    int up = w->vtep->uplink;
    struct dp_txbuf *ub = &w->tx[up >= 0 ? up : 0];
    if (up >= 0 && ub->n + n > DP_TXBUF)
        tx_flush(w, (uint16_t)up);
    uint16_t k = ub->n, k0 = k;
    uint64_t ubytes = 0;
    uint16_t uplanes = 0;
    for (uint16_t i = 0; i < n; i++) {
        struct rte_mbuf *m = pkts[i];
        if (unlikely(m->data_len < RTE_ETHER_HDR_LEN)) {
            drop(w, m, DP_DROP_TRUNCATED);
            continue;
        }
        const uint8_t *eth = rte_pktmbuf_mtod(m, const uint8_t *);
        if (unlikely((eth[0] & 1) || !((hits >> i) & 1))) {
            fl[nf++] = m;
            continue;
        }
        uint32_t target = DP_FV_TARGET(val[i]);
        if (DP_FV_KIND(val[i]) == DP_FDB_REMOTE) {
            if (unlikely(up < 0)) {
                drop(w, m, DP_DROP_NO_UPLINK);
                continue;
            }
            ub->m[k] = m;
            k += (uint16_t)encap_one(w, net, target, m, fh[i], ftos[i], &ubytes, &uplanes);
        } else if (unlikely((int)target == in->idx)) {
            drop(w, m, DP_DROP_HAIRPIN);
        } else {
            local++;
            DP_META(m)->plane = plane;
            tx_put(w, (uint16_t)target, m);
        }
    }
    if (k != k0) {
        ub->n = k;
        ub->bytes += ubytes;
        ub->planes |= uplanes;
        if (!w->queued[up]) {
            w->queued[up] = 1;
            w->dirty[w->n_dirty++] = (uint16_t)up;
        }
        w->net[net->idx][DP_NET_ENCAP] += k - k0;
    }
    for (uint16_t i = 0; i < nf; i++) {
        DP_META(fl[i])->plane = plane;
        flood(w, net, in->idx, 1, fl[i]);
    }
    w->net[net->idx][DP_NET_LOCAL] += local;
}

/* ------------------------------------------------------------- uplink */

static void
slow_event(struct dp_wctx *w, uint8_t kind, const uint8_t *mac, uint32_t ip_be, uint32_t net)
{
    struct dp_slow_event ev = {.kind = kind, .ip = rte_be_to_cpu_32(ip_be), .net = net};
    memcpy(ev.mac, mac, 6);
    if (rte_ring_enqueue_elem(dp.slow_ring, &ev, sizeof(ev)) != 0)
        w->drop[DP_DROP_SLOWPATH_FULL]++;
}

/* ARP on the uplink: answer requests for the VTEP address, learn senders */
static void
arp_input(struct dp_wctx *w, struct rte_mbuf *m)
{
    const struct dp_vtep *v = w->vtep;
    struct rte_ether_hdr *eth = rte_pktmbuf_mtod(m, struct rte_ether_hdr *);
    struct rte_arp_hdr *arp = (struct rte_arp_hdr *)(eth + 1);
    if (unlikely(m->data_len < sizeof(*eth) + sizeof(*arp) ||
                 arp->arp_hardware != RTE_BE16(RTE_ARP_HRD_ETHER) ||
                 arp->arp_protocol != RTE_BE16(RTE_ETHER_TYPE_IPV4) || arp->arp_hlen != 6 ||
                 arp->arp_plen != 4 || arp->arp_data.arp_tip != v->ip_be || v->uplink < 0)) {
        drop(w, m, DP_DROP_ARP_IGNORED);
        return;
    }
    slow_event(w, DP_EV_NEIGH, arp->arp_data.arp_sha.addr_bytes, arp->arp_data.arp_sip, 0);
    if (arp->arp_opcode != RTE_BE16(RTE_ARP_OP_REQUEST)) {
        rte_pktmbuf_free(m); /* a reply: consumed by the neighbour table */
        return;
    }
    /* turn the request into the reply, in place; it queues as plane 0 */
    DP_META(m)->plane = 0;
    arp->arp_opcode = RTE_BE16(RTE_ARP_OP_REPLY);
    arp->arp_data.arp_tha = arp->arp_data.arp_sha;
    arp->arp_data.arp_tip = arp->arp_data.arp_sip;
    memcpy(arp->arp_data.arp_sha.addr_bytes, v->mac, 6);
    arp->arp_data.arp_sip = v->ip_be;
    eth->dst_addr = arp->arp_data.arp_tha;
    memcpy(eth->src_addr.addr_bytes, v->mac, 6);
    tx_put(w, (uint16_t)v->uplink, m);
}

/*
 * Outer checks of one uplink frame, every reason in order. Returns the
 * outer header length (Ether + IPv4 + UDP + VXLAN) of a VXLAN frame for us,
 * its Ethernet padding trimmed, or 0 when the frame was consumed (ARP) or
 * dropped and counted.
 */
static __rte_noinline uint32_t
outer_check_full(struct dp_wctx *w, const struct dp_vtep *v, struct rte_mbuf *m)
{
    if (unlikely(m->data_len < RTE_ETHER_HDR_LEN)) {
        drop(w, m, DP_DROP_TRUNCATED);
        return 0;
    }
    const struct rte_ether_hdr *eth = rte_pktmbuf_mtod(m, const struct rte_ether_hdr *);
    if (unlikely(eth->ether_type != RTE_BE16(RTE_ETHER_TYPE_IPV4))) {
        if (eth->ether_type == RTE_BE16(RTE_ETHER_TYPE_ARP))
            arp_input(w, m);
        else
            drop(w, m, DP_DROP_UPLINK_NON_IP);
        return 0;
    }
    if (unlikely(memcmp(eth->dst_addr.addr_bytes, v->mac, 6) != 0)) {
        drop(w, m, DP_DROP_NOT_FOR_US);
        return 0;
    }
    const struct rte_ipv4_hdr *ip = (const struct rte_ipv4_hdr *)(eth + 1);
    uint32_t hl = (ip->version_ihl & 0xf) * 4u;
    if (unlikely(m->data_len < RTE_ETHER_HDR_LEN + sizeof(*ip) || (ip->version_ihl >> 4) != 4 ||
                 hl < sizeof(*ip))) {
        drop(w, m,
             m->data_len < RTE_ETHER_HDR_LEN + sizeof(*ip) ? DP_DROP_TRUNCATED : DP_DROP_BAD_IP);
        return 0;
    }
    if (unlikely(ip->dst_addr != v->ip_be)) {
        drop(w, m, DP_DROP_NOT_FOR_US);
        return 0;
    }
    if (unlikely(ip->fragment_offset & RTE_BE16(0x3fff))) {
        drop(w, m, DP_DROP_IP_FRAGMENT);
        return 0;
    }
    if (unlikely(ip->next_proto_id != IPPROTO_UDP)) {
        drop(w, m, DP_DROP_NOT_UDP);
        return 0;
    }
    uint32_t tot = rte_be_to_cpu_16(ip->total_length);
    uint32_t outer =
        RTE_ETHER_HDR_LEN + hl + sizeof(struct rte_udp_hdr) + sizeof(struct rte_vxlan_hdr);
    if (unlikely(tot < hl || RTE_ETHER_HDR_LEN + tot > m->pkt_len || m->data_len < outer)) {
        drop(w, m, DP_DROP_TRUNCATED);
        return 0;
    }
    const struct rte_udp_hdr *udp = (const struct rte_udp_hdr *)((const uint8_t *)ip + hl);
    if (unlikely(udp->dst_port != v->udp_port_be)) {
        drop(w, m, DP_DROP_UDP_PORT);
        return 0;
    }
    if (unlikely(RTE_ETHER_HDR_LEN + tot < outer + RTE_ETHER_HDR_LEN)) {
        drop(w, m, DP_DROP_TRUNCATED);
        return 0;
    }
    const struct rte_vxlan_hdr *vx = (const struct rte_vxlan_hdr *)(udp + 1);
    if (unlikely(!(*(const uint8_t *)vx & 0x08))) {
        drop(w, m, DP_DROP_VXLAN_FLAGS);
        return 0;
    }
    /* drop Ethernet padding past the IP datagram */
    if (RTE_ETHER_HDR_LEN + tot < m->pkt_len)
        rte_pktmbuf_trim(m, (uint16_t)(m->pkt_len - RTE_ETHER_HDR_LEN - tot));
    return outer;
}

/* the fields of our VTEP the fast check compares, loaded once per burst */
struct dp_outer_ref {
    uint32_t mac_lo;
    uint16_t mac_hi;
    uint16_t udp_port_be;
    uint32_t ip_be;
};

/*
 * Outer checks, fast path: the common frame (IPv4 without options to our
 * MAC and address, not a fragment, UDP to our port, I flag set, no padding,
 * inner Ethernet header in the first segment) accepted with one branch;
 * anything else goes through outer_check_full, which names the reason.
 */
static __rte_always_inline uint32_t
outer_check(struct dp_wctx *w, const struct dp_vtep *v, const struct dp_outer_ref *r,
            struct rte_mbuf *m)
{
    if (likely(m->data_len >= DP_VXLAN_HDR_LEN + RTE_ETHER_HDR_LEN)) {
        const uint8_t *p = rte_pktmbuf_mtod(m, const uint8_t *);
        const struct rte_ipv4_hdr *ip = (const struct rte_ipv4_hdr *)(p + RTE_ETHER_HDR_LEN);
        const struct rte_udp_hdr *udp = (const struct rte_udp_hdr *)(ip + 1);
        uint32_t mac_lo;
        uint16_t mac_hi, et;
        memcpy(&mac_lo, p, 4);
        memcpy(&mac_hi, p + 4, 2);
        memcpy(&et, p + 12, 2);
        uint32_t tot = rte_be_to_cpu_16(ip->total_length);
        uint32_t bad =
            (mac_lo ^ r->mac_lo) | (uint32_t)(mac_hi ^ r->mac_hi) |
            (uint32_t)(et ^ RTE_BE16(RTE_ETHER_TYPE_IPV4)) | (uint32_t)(ip->version_ihl ^ 0x45) |
            (uint32_t)(ip->fragment_offset & RTE_BE16(0x3fff)) |
            (uint32_t)(ip->next_proto_id ^ IPPROTO_UDP) | (ip->dst_addr ^ r->ip_be) |
            (uint32_t)(udp->dst_port ^ r->udp_port_be) |
            (uint32_t)(~*(const uint8_t *)(udp + 1) & 0x08) |
            (uint32_t)(RTE_ETHER_HDR_LEN + tot != m->pkt_len) | (uint32_t)(tot < DP_VXLAN_HDR_LEN);
        if (likely(bad == 0))
            return DP_VXLAN_HDR_LEN;
    }
    return outer_check_full(w, v, m);
}

/* per-network counter summed over a run of frames of one network */
static __rte_always_inline void
net_count(struct dp_wctx *w, int ctr, uint32_t net, uint32_t *cur, uint64_t *cnt)
{
    if (unlikely(net != *cur)) {
        if (*cnt)
            w->net[*cur][ctr] += *cnt;
        *cur = net;
        *cnt = 0;
    }
    (*cnt)++;
}

static __rte_always_inline void
net_count_flush(struct dp_wctx *w, int ctr, uint32_t cur, uint64_t cnt)
{
    if (cnt)
        w->net[cur][ctr] += cnt;
}

static void
uplink_burst(struct dp_wctx *w, uint16_t pi, struct rte_mbuf **pkts, uint16_t n)
{
    const struct dp_vtep *v = w->vtep;
    struct rte_mbuf *vx_pkts[DP_BURST];
    uint8_t olen[DP_BURST];   /* outer header length per frame */
    uint64_t vkeys[DP_BURST]; /* (VNI, source VTEP) per frame */
    hash_sig_t vsig[DP_BURST];
    uint32_t vnet[DP_BURST];
    uint16_t k = 0;
    struct dp_outer_ref ref = {.udp_port_be = v->udp_port_be, .ip_be = v->ip_be};
    memcpy(&ref.mac_lo, v->mac, 4);
    memcpy(&ref.mac_hi, v->mac + 4, 2);

    /* 1. outer checks; keep VXLAN frames for us, stripped of nothing yet */
    uint64_t bytes = 0;
    for (uint16_t i = 0; i < n; i++) {
        struct rte_mbuf *m = pkts[i];
        bytes += m->pkt_len; /* before a check may trim or drop it */
        uint32_t outer = outer_check(w, v, &ref, m);
        if (outer == 0)
            continue;
        const uint8_t *p = rte_pktmbuf_mtod(m, const uint8_t *);
        const struct rte_ipv4_hdr *ip = (const struct rte_ipv4_hdr *)(p + RTE_ETHER_HDR_LEN);
        const struct rte_vxlan_hdr *vx =
            (const struct rte_vxlan_hdr *)(p + outer - sizeof(struct rte_vxlan_hdr));
        vkeys[k] = dp_vtep_key(vx->vx_vni & RTE_BE32(0xffffff00), ip->src_addr);
        vsig[k] = dp_key8_hash(vkeys[k]);
        olen[k] = (uint8_t)outer;
        vx_pkts[k++] = m;
    }
    w->port[pi][DP_PORT_RX_BYTES] += bytes;
    if (k == 0)
        return;

    /* 2. (VNI, source VTEP) → network; strip the outer headers */
    uint64_t hits =
        cached_lookup(w, w->vcache, DP_VTEP_CACHE_SIZE - 1, dp.vteps, 0, vkeys, vsig, k, vnet);
    uint64_t keys[DP_BURST];
    hash_sig_t sig[DP_BURST];
    uint32_t val[DP_BURST];
    uint16_t nets[DP_BURST];
    uint16_t j = 0;
    uint32_t cnet = 0;
    uint64_t ccnt = 0;
    for (uint16_t i = 0; i < k; i++) {
        struct rte_mbuf *m = vx_pkts[i];
        uint32_t net;
        if (likely((hits >> i) & 1)) {
            net = vnet[i];
        } else {
            uint32_t vni = rte_be_to_cpu_32((uint32_t)(vkeys[i] >> 32)) >> 8;
            void *d;
            if (rte_hash_lookup_data(dp.vnis, &vni, &d) < 0) {
                drop(w, m, DP_DROP_UNKNOWN_VNI);
                continue;
            }
            if (!v->learning) {
                drop(w, m, DP_DROP_UNKNOWN_VTEP);
                continue;
            }
            net = (uint32_t)(uintptr_t)d;
            const uint8_t *inner = rte_pktmbuf_mtod_offset(m, const uint8_t *, olen[i]);
            slow_event(w, DP_EV_LEARN, inner + 6, (uint32_t)vkeys[i], net);
        }
        rte_pktmbuf_adj(m, olen[i]);
        DP_META(m)->plane = dp.net_plane[net];
        net_count(w, DP_NET_DECAP, net, &cnet, &ccnt);
        const uint8_t *inner = rte_pktmbuf_mtod(m, const uint8_t *);
        keys[j] = dp_fdb_key(net, inner);
        sig[j] = dp_key8_hash(keys[j]);
        nets[j] = (uint16_t)net;
        vx_pkts[j++] = m;
    }
    net_count_flush(w, DP_NET_DECAP, cnet, ccnt);
    if (j == 0)
        return;

    /* 3. inner destination within the VNI's network */
    hits = fdb_lookup(w, keys, sig, j, val);
    cnet = 0;
    ccnt = 0;
    for (uint16_t i = 0; i < j; i++) {
        struct rte_mbuf *m = vx_pkts[i];
        const uint8_t *eth = rte_pktmbuf_mtod(m, const uint8_t *);
        if (unlikely((eth[0] & 1) || !((hits >> i) & 1))) {
            const struct dp_net *net =
                atomic_load_explicit(&dp.nets[nets[i]], memory_order_acquire);
            if (unlikely(net == NULL))
                drop(w, m, DP_DROP_UNKNOWN_VNI);
            else
                flood(w, net, -1, 0, m);
            continue;
        }
        if (unlikely(DP_FV_KIND(val[i]) != DP_FDB_LOCAL)) {
            drop(w, m, DP_DROP_SPLIT_HORIZON);
            continue;
        }
        net_count(w, DP_NET_LOCAL, nets[i], &cnet, &ccnt);
        tx_put(w, (uint16_t)DP_FV_TARGET(val[i]), m);
    }
    net_count_flush(w, DP_NET_LOCAL, cnet, ccnt);
}

/* ------------------------------------------------------------ main loop */

static inline uint16_t
port_rx(const struct dp_port *p, uint16_t q, struct rte_mbuf **pkts)
{
    if (p->driver == DP_DRV_ETHDEV)
        return rte_eth_rx_burst(p->eth_port, q, pkts, DP_BURST);
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

    /* id < DP_MAX_WORKERS, the threads dp.qsbr was made for: cannot fail */
    (void)rte_rcu_qsbr_thread_register(dp.qsbr, (unsigned)id);
    rte_rcu_qsbr_thread_online(dp.qsbr, (unsigned)id);

    while (!atomic_load_explicit(&dp.stop, memory_order_relaxed)) {
        const struct dp_poll_list *pl = atomic_load_explicit(&dp.poll[id], memory_order_acquire);
        w->vtep = atomic_load_explicit(&dp.vtep, memory_order_acquire);
        cache_sync(w);
        uint64_t busy = 0;

        for (uint16_t i = 0; i < pl->n; i++) {
            uint16_t pi = pl->e[i].port, q = pl->e[i].queue;
            const struct dp_port *p = atomic_load_explicit(&dp.ports[pi], memory_order_acquire);
            if (unlikely(p == NULL))
                continue;

            /* control-plane frames (ARP requests) leave by the uplink */
            if (q == 0 && p->role == DP_ROLE_UPLINK && unlikely(!rte_ring_empty(dp.ctrl_tx))) {
                struct rte_mbuf *c[DP_BURST];
                unsigned nc = rte_ring_dequeue_burst(dp.ctrl_tx, (void **)c, DP_BURST, NULL);
                for (unsigned x = 0; x < nc; x++) {
                    /* plane 0's queue, outside the latency histograms */
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
            uint16_t n = port_rx(p, q, pkts);
            if (n == 0)
                continue;
            busy++;
            w->rx_tsc = rte_rdtsc();
            w->port[pi][DP_PORT_RX_PACKETS] += n; /* bytes: in the first pass */

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

        /* no table entry or snapshot read above is held past this point */
        rte_rcu_qsbr_quiescent(dp.qsbr, (unsigned)id);
    }

    tx_flush_all(w);
    rte_rcu_qsbr_thread_offline(dp.qsbr, (unsigned)id);
    (void)rte_rcu_qsbr_thread_unregister(dp.qsbr, (unsigned)id);
    rte_free(w);
    return 0;
}
