/*
 * dp_guard.h - what a pod port may send: anti-spoofing and storm control.
 *
 * A pod port with a guard (dp_port_guard_set) forwards only frames that are
 * the pod's own: the source MAC is the pod's; an IPv4 source is one of its
 * addresses or 0.0.0.0 (duplicate-address probes, DHCP); an ARP sender is
 * its MAC and one of its addresses (or 0.0.0.0, an ARP probe); an IPv6
 * source is :: (duplicate-address detection) or one of its IPv6 addresses
 * (the link-local made from its MAC among them); neighbour discovery carries
 * only its MAC in link-layer options and advertises only its addresses; it
 * sends no router advertisement and no redirect. Up to two VLAN tags are
 * looked through. Anything else is dropped under a spoof_* reason.
 *
 * Storm control (dp_port_storm_set): broadcast, multicast and unknown
 * unicast from the port (every frame the pipeline would flood) pass a token
 * bucket of pps packets per second holding up to burst packets, one bucket
 * per (worker, port); what it refuses is dropped under "storm".
 *
 * The per-port settings are an immutable snapshot (struct dp_port_guard),
 * replaced whole by the control thread (dp_guard.c) and read lock-free by
 * the workers; the buckets are the workers' own.
 */
#ifndef DP_GUARD_H
#define DP_GUARD_H

#include "dp_gso.h"
#include "dp_internal.h"

struct dp_port_guard {
    int spoof_on;    /* the address checks */
    int dhcp_server; /* may send DHCP/DHCPv6 server (or relay) messages */
    uint8_t mac[6];
    uint8_t n4, n6;
    uint32_t ip4[DP_GUARD_MAX_IP4];    /* network order */
    uint8_t ip6[DP_GUARD_MAX_IP6][16]; /* wire order */
    uint64_t storm_pps;                /* 0: no storm control */
    uint64_t storm_tok_max;            /* burst * TSC Hz (one packet = TSC Hz) */
    uint64_t storm_dt_max;             /* cycles to fill an empty bucket */
    uint64_t tok_per_pkt;              /* TSC Hz */
    uint32_t gen;                      /* buckets of another generation start full */
};

/* a worker's bucket for one port */
struct dp_storm_bkt {
    uint64_t tok;
    uint64_t last_tsc;
    uint32_t gen;
};

/* ARP to the VTEP address: what each worker takes per second, and burst */
#define DP_ARP_RATE_PPS 1000
#define DP_ARP_RATE_BURST 200

struct dp_guard_global {
    _Atomic(struct dp_port_guard *) port[DP_MAX_PORTS];
    struct dp_port_guard arp_limit; /* storm_* fields: the ARP rate (dp_guard_init) */
    struct dp_storm_bkt arp[DP_MAX_WORKERS] __rte_cache_aligned;
    struct {
        struct dp_storm_bkt b[DP_MAX_PORTS];
    } __rte_cache_aligned w[DP_MAX_WORKERS];
};
extern struct dp_guard_global dp_gg;

/* dp_guard.c: the ARP rate set (dp_setup); the port's guard off (port
 * removed, or at teardown) */
void dp_guard_init(void);
void dp_guard_clear(int port);
void dp_guard_free_all(void);

#define DP_GUARD_PASS (-1)

/* bytes [off, off + len) of m: a pointer into m or a copy in buf, NULL
 * when the frame is shorter */
static inline const uint8_t *
guard_read(const struct rte_mbuf *m, uint32_t off, uint32_t len, void *buf)
{
    return rte_pktmbuf_read(m, off, len, buf);
}

static inline int
guard_ip4_ok(const struct dp_port_guard *g, uint32_t a)
{
    if (a == 0)
        return 1;
    for (unsigned i = 0; i < g->n4; i++)
        if (g->ip4[i] == a)
            return 1;
    return 0;
}

static inline int
guard_ip6_ok(const struct dp_port_guard *g, const uint8_t *a)
{
    for (unsigned i = 0; i < g->n6; i++)
        if (memcmp(g->ip6[i], a, 16) == 0)
            return 1;
    return 0;
}

static inline int
ip6_unspecified(const uint8_t *a)
{
    uint64_t x[2];
    memcpy(x, a, 16);
    return (x[0] | x[1]) == 0;
}

#define DP_ND_RS 133
#define DP_ND_RA 134
#define DP_ND_NS 135
#define DP_ND_NA 136
#define DP_ND_REDIRECT 137
#define DP_ND_OPT_SLLA 1
#define DP_ND_OPT_TLLA 2
#define DP_GUARD_MAX_EXT 4  /* IPv6 extension headers looked through */
#define DP_GUARD_MAX_OPTS 8 /* ND options looked at */
#define DP_DHCP4_SERVER_PORT 67
#define DP_DHCP4_CLIENT_PORT 68
#define DP_DHCP6_SERVER_PORT 547
#define DP_DHCP6_CLIENT_PORT 546
/* MLD reports and done (RFC 2710, 3810): with router and neighbour
 * solicitations, what a host sends from :: before it has an address */
#define DP_MLD_REPORT 131
#define DP_MLD_DONE 132
#define DP_MLD2_REPORT 143
/* hop-by-hop, routing, fragment, authentication (AH: not encrypted, what
 * follows it is read as any header's), destination options */
#define DP_IP6_EXT(nh) \
    ((nh) == 0 || (nh) == 43 || (nh) == IPPROTO_FRAGMENT || (nh) == IPPROTO_AH || (nh) == 60)

/* the UDP header at off (the packet ending at end): a DHCP (or DHCPv6)
 * server's or relay's message - from the server port, or to the client
 * port (clients listen on it whatever the source port; a client itself
 * sends from it to the server port) - dropped unless the pod may serve
 * DHCP */
static inline int
guard_dhcp_server(const struct dp_port_guard *g, const struct rte_mbuf *m, uint32_t off,
                  uint32_t end, uint16_t server_port, uint16_t client_port)
{
    uint8_t ub[4];
    const uint8_t *u;

    if (g->dhcp_server)
        return DP_GUARD_PASS;
    if (off + 4 <= end && (u = guard_read(m, off, 4, ub)) != NULL) {
        if ((uint16_t)(u[0] << 8 | u[1]) == server_port ||
            (uint16_t)(u[2] << 8 | u[3]) == client_port)
            return DP_DROP_SPOOF_DHCP;
    } else if (off + 2 <= end && (u = guard_read(m, off, 2, ub)) != NULL &&
               (uint16_t)(u[0] << 8 | u[1]) == server_port) {
        return DP_DROP_SPOOF_DHCP;
    }
    return DP_GUARD_PASS;
}

/* IPv6 at off (length of the IPv6 packet: plen + 40, within the frame) */
static int
guard_ipv6(const struct dp_port_guard *g, const struct rte_mbuf *m, uint32_t off)
{
    uint8_t buf[40];
    const uint8_t *h = guard_read(m, off, 40, buf);
    if (h == NULL)
        return DP_DROP_TRUNCATED;
    /* :: (no address yet) only for what a host sends before it has one:
     * ND (duplicate-address detection, router solicitations) and MLD,
     * checked below as from any source; nothing else is traced back */
    int unspec = ip6_unspecified(h + 8);
    if (!unspec && !guard_ip6_ok(g, h + 8))
        return DP_DROP_SPOOF_IPV6;
    uint32_t end = off + 40 + ((uint32_t)h[4] << 8 | h[5]);
    if (end > m->pkt_len)
        return DP_DROP_TRUNCATED;
    uint8_t nh = h[6];
    int frag = 0;
    off += 40;
    /* hop-by-hop, routing, destination options, AH, a fragment header: ND
     * and DHCPv6 may sit behind them */
    for (int i = 0; i < DP_GUARD_MAX_EXT && DP_IP6_EXT(nh); i++) {
        uint8_t e[4];
        const uint8_t *x = guard_read(m, off, 4, e);
        if (x == NULL || off + 4 > end)
            return DP_DROP_TRUNCATED;
        if (nh == IPPROTO_FRAGMENT) {
            /* a later fragment has no upper-layer header to look at, and
             * cannot be read as ND without the first (RFC 5722: no
             * overlaps) */
            if (((uint16_t)x[2] << 8 | x[3]) & 0xfff8)
                return unspec ? DP_DROP_SPOOF_IPV6 : DP_GUARD_PASS;
            frag = 1;
            nh = x[0];
            off += 8;
        } else if (nh == IPPROTO_AH) { /* its length in 4-byte units, less 2 */
            nh = x[0];
            off += ((uint32_t)x[1] + 2) * 4;
        } else {
            nh = x[0];
            off += ((uint32_t)x[1] + 1) * 8;
        }
    }
    if (DP_IP6_EXT(nh))
        return DP_DROP_SPOOF_ND; /* more extension headers than a pod needs */
    /* the header chain and a UDP header whole in the packet (a first
     * fragment holds them all, RFC 7112): else the ports a DHCPv6 server's
     * message is told by could come in the next fragment */
    if (off > end || (nh == IPPROTO_UDP && off + 8 > end))
        return DP_DROP_TRUNCATED;
    if (unspec && nh != IPPROTO_ICMPV6)
        return DP_DROP_SPOOF_IPV6;
    if (nh == IPPROTO_UDP) /* a DHCPv6 server's (or relay's) message */
        return guard_dhcp_server(g, m, off, end, DP_DHCP6_SERVER_PORT, DP_DHCP6_CLIENT_PORT);
    if (nh != IPPROTO_ICMPV6)
        return DP_GUARD_PASS;
    uint8_t ib[24];
    const uint8_t *ic = guard_read(m, off, 4, ib);
    if (ic == NULL || off + 4 > end)
        return DP_DROP_TRUNCATED;
    uint8_t type = ic[0];
    if (unspec && type != DP_MLD_REPORT && type != DP_MLD_DONE && type != DP_ND_RS &&
        type != DP_ND_NS && type != DP_MLD2_REPORT)
        return DP_DROP_SPOOF_IPV6; /* an echo, an error, a query: not from :: */
    if (type == DP_ND_RA || type == DP_ND_REDIRECT)
        return DP_DROP_SPOOF_ND; /* a pod is no router */
    if (frag && type >= DP_ND_RS && type <= DP_ND_REDIRECT)
        return DP_DROP_SPOOF_ND; /* ND in a fragment: hosts must ignore it
                                  * (RFC 6980), a host that does not could be
                                  * told anything */
    uint32_t opt;
    if (type == DP_ND_RS) {
        opt = off + 8;
    } else if (type == DP_ND_NS || type == DP_ND_NA) {
        ic = guard_read(m, off, 24, ib);
        if (ic == NULL || off + 24 > end)
            return DP_DROP_TRUNCATED;
        /* an advertisement speaks for its target: one of the pod's; so
         * does a duplicate-address probe (a solicitation from ::), which
         * for another's address would make that pod give it up */
        if ((type == DP_ND_NA || (type == DP_ND_NS && ip6_unspecified(h + 8))) &&
            !guard_ip6_ok(g, ic + 8))
            return DP_DROP_SPOOF_ND;
        opt = off + 24;
    } else {
        return DP_GUARD_PASS;
    }
    /* link-layer address options name the pod's MAC only */
    for (int i = 0; i < DP_GUARD_MAX_OPTS && opt + 2 <= end; i++) {
        uint8_t ob[8];
        const uint8_t *o = guard_read(m, opt, 2, ob);
        if (o == NULL || o[1] == 0)
            return DP_DROP_SPOOF_ND; /* a zero-length option is invalid */
        uint32_t olen = (uint32_t)o[1] * 8;
        if (opt + olen > end)
            return DP_DROP_TRUNCATED;
        if (o[0] == DP_ND_OPT_SLLA || o[0] == DP_ND_OPT_TLLA) {
            o = guard_read(m, opt, 8, ob);
            if (o == NULL || o[1] != 1 || memcmp(o + 2, g->mac, 6) != 0)
                return DP_DROP_SPOOF_ND;
        }
        opt += olen;
    }
    if (opt < end)
        return DP_DROP_SPOOF_ND; /* more options than a pod needs */
    return DP_GUARD_PASS;
}

/*
 * The address checks of one frame from a guarded pod port: DP_GUARD_PASS,
 * or the reason to drop it. Reads through rte_pktmbuf_read, so headers
 * across segments are read safely.
 */
static inline int
dp_guard_frame(const struct dp_port_guard *g, const struct rte_mbuf *m)
{
    uint8_t buf[28];
    const uint8_t *eth = guard_read(m, 0, RTE_ETHER_HDR_LEN, buf);
    if (unlikely(eth == NULL))
        return DP_DROP_TRUNCATED;
    if (unlikely(memcmp(eth + 6, g->mac, 6) != 0))
        return DP_DROP_SPOOF_MAC;
    uint16_t et = (uint16_t)(eth[12] << 8 | eth[13]);
    uint32_t off = RTE_ETHER_HDR_LEN;
    /* up to two VLAN tags: the payload is checked as if untagged */
    for (int i = 0; i < 2 && (et == RTE_ETHER_TYPE_VLAN || et == RTE_ETHER_TYPE_QINQ ||
                              et == RTE_ETHER_TYPE_QINQ1);
         i++) {
        const uint8_t *t = guard_read(m, off, 4, buf);
        if (t == NULL)
            return DP_DROP_TRUNCATED;
        et = (uint16_t)(t[2] << 8 | t[3]);
        off += 4;
    }
    if (et == RTE_ETHER_TYPE_VLAN || et == RTE_ETHER_TYPE_QINQ || et == RTE_ETHER_TYPE_QINQ1)
        return DP_DROP_SPOOF_MAC; /* a third tag: nothing a pod needs */
    if (et == RTE_ETHER_TYPE_IPV4) {
        const uint8_t *ip = guard_read(m, off, 20, buf);
        if (ip == NULL)
            return DP_DROP_TRUNCATED;
        /* the header and the packet no longer than it says, and within the
         * frame (a total length of 0 only for a super-frame past 64 KiB, as
         * Linux's BIG TCP sends: measured by its frame) */
        uint32_t hl = (uint32_t)(ip[0] & 0xf) * 4, tot = (uint32_t)(ip[2] << 8 | ip[3]);
        int big = tot == 0 && dp_gso_frame(m) && m->pkt_len - off > 0xffff;
        if (hl < 20 || off + hl > m->pkt_len || (!big && (tot < hl || off + tot > m->pkt_len)))
            return DP_DROP_TRUNCATED;
        uint32_t src;
        memcpy(&src, ip + 12, 4);
        if (!guard_ip4_ok(g, src))
            return DP_DROP_SPOOF_IPV4;
        /* a DHCP server's (or relay's) message, from UDP port 67, in a
         * packet's first fragment: a pod is no DHCP server unless allowed */
        if (ip[9] == IPPROTO_UDP && ((ip[6] << 8 | ip[7]) & 0x1fff) == 0)
            return guard_dhcp_server(g, m, off + hl, m->pkt_len, DP_DHCP4_SERVER_PORT,
                                     DP_DHCP4_CLIENT_PORT);
        return DP_GUARD_PASS;
    }
    if (et == RTE_ETHER_TYPE_ARP) {
        const uint8_t *a = guard_read(m, off, 28, buf);
        if (a == NULL)
            return DP_DROP_TRUNCATED;
        /* Ethernet/IPv4 ARP only, from the pod's MAC and address */
        static const uint8_t eth_ip4[6] = {0, 1, 8, 0, 6, 4};
        uint32_t spa, tpa;
        memcpy(&spa, a + 14, 4);
        memcpy(&tpa, a + 24, 4);
        if (memcmp(a, eth_ip4, 6) != 0 || memcmp(a + 8, g->mac, 6) != 0 || !guard_ip4_ok(g, spa))
            return DP_DROP_SPOOF_ARP;
        /* a probe (sender address 0) for one of its own addresses only: one
         * for another's would make that pod's conflict detection give it up */
        if (spa == 0 && (tpa == 0 || !guard_ip4_ok(g, tpa)))
            return DP_DROP_SPOOF_ARP;
        return DP_GUARD_PASS;
    }
    if (et == RTE_ETHER_TYPE_IPV6)
        return guard_ipv6(g, m, off);
    return DP_GUARD_PASS;
}

/* k frames' tokens of port pi's storm bucket at time now (TSC), all or
 * none: 1, or 0 if it holds fewer */
static inline int
dp_storm_take_n(struct dp_storm_bkt *b, const struct dp_port_guard *g, uint64_t now, uint32_t k)
{
    if (unlikely(b->gen != g->gen)) {
        b->gen = g->gen;
        b->tok = g->storm_tok_max;
        b->last_tsc = now;
    }
    /* dt capped where the bucket is full anyway: dt * pps cannot overflow */
    uint64_t dt = now - b->last_tsc;
    b->last_tsc = now;
    if (dt > g->storm_dt_max)
        dt = g->storm_dt_max;
    uint64_t tok = b->tok + dt * g->storm_pps;
    if (tok > g->storm_tok_max)
        tok = g->storm_tok_max;
    /* more than the bucket holds (a super-frame of more frames than the
     * burst): it takes the bucket full, not never */
    uint64_t need = RTE_MIN(g->tok_per_pkt * k, g->storm_tok_max);
    if (tok < need) {
        b->tok = tok;
        return 0;
    }
    b->tok = tok - need;
    return 1;
}

/* one frame's */
static inline int
dp_storm_take(struct dp_storm_bkt *b, const struct dp_port_guard *g, uint64_t now)
{
    return dp_storm_take_n(b, g, now, 1);
}

#ifdef DP_PIPELINE_TU
/* the pipeline's steps (after dp_wctx.h) */

/* the frames of pkts[0, n) from guarded port pi that are the pod's own, kept
 * in order in pkts; the others dropped and counted. Returns how many remain. */
static __rte_noinline uint16_t
guard_burst(struct dp_wctx *w, const struct dp_port_guard *g, uint16_t pi, struct rte_mbuf **pkts,
            uint16_t n)
{
    uint16_t k = 0;
    uint64_t bytes = 0;
    for (uint16_t i = 0; i < n; i++) {
        struct rte_mbuf *m = pkts[i];
        int why = dp_guard_frame(g, m);
        if (likely(why == DP_GUARD_PASS)) {
            pkts[k++] = m;
            continue;
        }
        bytes += m->pkt_len; /* the rest are counted by pod_burst */
        drop(w, m, (enum dp_drop)why);
    }
    w->port[pi][DP_PORT_RX_BYTES] += bytes;
    w->port[pi][DP_PORT_GUARD_DROPS] += n - k; /* which pod: the drop row says why */
    return k;
}

/* ARP for the VTEP address from the underlay: DP_GUARD_PASS, or the reason
 * to drop it (a sender MAC no host has; more than DP_ARP_RATE_PPS of them
 * per worker: each may change a neighbour and rebuild the tunnels) */
static inline int
arp_check(struct dp_wctx *w, const struct rte_arp_hdr *arp)
{
    const uint8_t *sha = arp->arp_data.arp_sha.addr_bytes;
    if ((sha[0] & 1) || (sha[0] | sha[1] | sha[2] | sha[3] | sha[4] | sha[5]) == 0)
        return DP_DROP_ARP_SENDER;
    if (!dp_storm_take(&dp_gg.arp[w->id], &dp_gg.arp_limit, w->rx_tsc))
        return DP_DROP_ARP_RATE;
    return DP_GUARD_PASS;
}

/* may port pi flood frame m now? A super-frame is flooded as the frames
 * it is cut into, and pays for each of them (all or none) */
static inline int
storm_pass(struct dp_wctx *w, const struct dp_port_guard *g, uint16_t pi, const struct rte_mbuf *m)
{
    if (!g->storm_pps)
        return 1;
    uint32_t k = 1;
    if (unlikely(dp_gso_frame(m)) && m->tso_segsz != 0) {
        uint32_t hdr = m->l2_len + m->l3_len + m->l4_len;
        uint32_t data = m->pkt_len > hdr ? m->pkt_len - hdr : 0;
        k = (data + m->tso_segsz - 1) / m->tso_segsz;
        if (k == 0)
            k = 1;
    }
    return dp_storm_take_n(&dp_gg.w[w->id].b[pi], g, w->rx_tsc, k);
}
#endif /* DP_PIPELINE_TU */

#endif /* DP_GUARD_H */
