/*
 * dp_decap.h - the uplink side: outer checks (every drop named), ARP for
 * the VTEP address answered, (VNI, source VTEP) to network, outer headers
 * stripped, the inner frame looked up in the network's FDB and sent to a
 * local port or flooded to the local ports; unknown VTEPs reported for
 * learning.
 *
 * Part of the one translation unit dp_pipeline.c: static inline code, so
 * the compiler sees the whole worker loop at once (and builds the same code
 * as when it was one file).
 */
#ifndef DP_DECAP_H
#define DP_DECAP_H

#ifndef DP_PIPELINE_TU
#error "dp_decap.h is included by dp_pipeline.c only"
#endif

/* an event for the control thread on ring r (vni_word: the frame's VXLAN
 * VNI word, rte_vxlan_hdr.vx_vni, of a learning report; 0 for ARP): 0, or
 * -ENOBUFS with it full */
static int
slow_put(struct rte_ring *r, uint8_t kind, const uint8_t *mac, uint32_t ip_be, uint32_t net,
         uint32_t vni_word)
{
    struct dp_slow_event ev = {.kind = kind,
                               .ip = rte_be_to_cpu_32(ip_be),
                               .net = net,
                               .vni = rte_be_to_cpu_32(vni_word) >> 8};
    memcpy(ev.mac, mac, 6);
    return rte_ring_enqueue_elem(r, &ev, sizeof(ev));
}

/* a report out of budget b (at most DP_LEARN_REPORT_BURST a millisecond):
 * 1 if one is left, else 0, counted (learn_limited) */
static inline int
report_budget(struct dp_wctx *w, struct dp_report_budget *b)
{
    if (w->rx_tsc - b->ms >= atomic_load_explicit(&dp_learn_ms_cycles, memory_order_relaxed)) {
        b->ms = w->rx_tsc;
        b->left = DP_LEARN_REPORT_BURST;
    }
    if (b->left != 0)
        return 1;
    w->wc[DP_WORKER_LEARN_LIMITED]++;
    return 0;
}

/* slot s of the reported MACs: key from VTEP vtep_be, reported now */
static inline void
reported(struct dp_wctx *w, unsigned s, uint64_t key, uint32_t vtep_be, uint32_t as_new)
{
    w->heard[s].key = key;
    w->heard[s].tsc = w->rx_tsc;
    w->heard[s].vtep_be = vtep_be;
    w->heard[s].as_new = as_new;
}

/*
 * Learning reports to the control thread (dp_learn.c decides what it
 * believes). A source MAC the FDB does not have is reported with its VTEP
 * at most every 64th of dp_learn_report_cycles (the frames of one new flow
 * make one report; one the control thread refused is tried again that
 * often). A learned one is reported again from the same VTEP at most every
 * dp_learn_report_cycles (so that a learned entry in use is confirmed
 * before it ages out), from another after a 64th of that (so that a MAC
 * that moved is followed within ms, and one that flaps between two VTEPs
 * costs the control thread a bounded rate of moves). Each kind has a
 * budget of DP_LEARN_REPORT_BURST a millisecond, however many MACs share
 * the slots: a storm of new source MACs (random MACs from the underlay)
 * costs the control thread a bounded rate and cannot starve the
 * confirmations, nor ARP, which has a ring of its own. Entries the control
 * plane set are never reported: the underlay does not move them.
 */
static void
learn_new(struct dp_wctx *w, uint32_t net, const uint8_t *src, uint64_t key, uint32_t h,
          uint32_t vtep_be, uint32_t vni_word)
{
    unsigned s = h & (DP_LEARN_HEARD_SLOTS - 1);
    uint64_t hold = atomic_load_explicit(&dp_learn_report_cycles, memory_order_relaxed) >> 6;
    if (w->heard[s].key == key && w->heard[s].as_new && w->heard[s].vtep_be == vtep_be &&
        w->rx_tsc - w->heard[s].tsc < hold)
        return;
    if (!report_budget(w, &w->learn_budget))
        return;
    /* a report the full ring cannot take: the frame goes on, the MAC is
     * reported again by a later frame */
    if (slow_put(dp.learn_ring, DP_EV_LEARN, src, vtep_be, net, vni_word) != 0) {
        w->wc[DP_WORKER_SLOWPATH_LOST]++;
        return;
    }
    w->learn_budget.left--;
    reported(w, s, key, vtep_be, 1);
}

static void
learn_src(struct dp_wctx *w, uint32_t net, const struct rte_mbuf *m, uint32_t olen,
          uint32_t src_ip_be, uint32_t vni_word)
{
    const uint8_t *src = rte_pktmbuf_mtod_offset(m, const uint8_t *, olen + 6);
    if (src[0] & 1)
        return;
    uint64_t key = dp_fdb_key(net, src);
    uint32_t h = dp_key8_hash(key), v;
    if (!dp_ftab_find(w->fdb, key, h, &v)) {
        learn_new(w, net, src, key, h, src_ip_be, vni_word);
        return;
    }
    if (!DP_FV_LEARNED(v))
        return;
    unsigned s = h & (DP_LEARN_HEARD_SLOTS - 1);
    uint64_t hold = atomic_load_explicit(&dp_learn_report_cycles, memory_order_relaxed);
    if (w->heard[s].vtep_be != src_ip_be)
        hold >>= 6;
    /* (a MAC just learned is confirmed by its first frame after that) */
    if (w->heard[s].key == key && !w->heard[s].as_new && w->rx_tsc - w->heard[s].tsc < hold)
        return;
    if (!report_budget(w, &w->heard_budget))
        return;
    /* a confirmation the full ring cannot take is not a loss: the MAC's
     * next frame tries again */
    if (slow_put(dp.learn_ring, DP_EV_HEARD, src, src_ip_be, net, vni_word) != 0)
        return;
    w->heard_budget.left--;
    reported(w, s, key, src_ip_be, 0);
}

/* ARP on the uplink: answer requests for the VTEP address, learn senders */
static void
arp_input(struct dp_wctx *w, struct rte_mbuf *m)
{
    const struct dp_vtep *v = w->vtep;
    struct rte_ether_hdr *eth = rte_pktmbuf_mtod(m, struct rte_ether_hdr *);
    struct rte_arp_hdr *arp = (struct rte_arp_hdr *)(eth + 1);
    if (unlikely(m->data_len < sizeof(*eth) + sizeof(*arp))) {
        drop(w, m, DP_DROP_ARP_IGNORED);
        return;
    }
    /* an announcement (gratuitous ARP: sender and target address alike) is
     * taken as a reply about its sender - believed, like any, only for a
     * next hop the core knows, at most once a second (dp_neigh.c): a next
     * hop that changed its MAC (a gateway's failover) is followed at once */
    rte_be32_t tip = arp->arp_data.arp_tip;
    int announce = tip != v->ip_be && tip == arp->arp_data.arp_sip;
    if (unlikely(arp->arp_hardware != RTE_BE16(RTE_ARP_HRD_ETHER) ||
                 arp->arp_protocol != RTE_BE16(RTE_ETHER_TYPE_IPV4) || arp->arp_hlen != 6 ||
                 arp->arp_plen != 4 || (tip != v->ip_be && !announce) || v->uplink < 0)) {
        drop(w, m, DP_DROP_ARP_IGNORED);
        return;
    }
    int why = arp_check(w, arp); /* dp_guard.h: sender, rate */
    if (unlikely(why != DP_GUARD_PASS)) {
        drop(w, m, (enum dp_drop)why);
        return;
    }
    if (slow_put(dp.neigh_ring, DP_EV_NEIGH, arp->arp_data.arp_sha.addr_bytes,
                 arp->arp_data.arp_sip, 0, 0) != 0)
        w->wc[DP_WORKER_SLOWPATH_LOST]++; /* the neighbour's next ARP tells it again */
    if (announce || arp->arp_opcode != RTE_BE16(RTE_ARP_OP_REQUEST)) {
        drop(w, m, DP_DROP_ARP_REPLY); /* taken by the neighbour table */
        return;
    }
    /* turn the request into the reply, in place; it leaves as our own
     * frames do (on a shaped port ahead of the planes' queues, outside the
     * latency histograms) */
    DP_META(m)->plane = DP_PLANE_OWN;
    arp->arp_opcode = RTE_BE16(RTE_ARP_OP_REPLY);
    arp->arp_data.arp_tha = arp->arp_data.arp_sha;
    arp->arp_data.arp_tip = arp->arp_data.arp_sip;
    memcpy(arp->arp_data.arp_sha.addr_bytes, v->mac, 6);
    arp->arp_data.arp_sip = v->ip_be;
    eth->dst_addr = arp->arp_data.arp_tha;
    memcpy(eth->src_addr.addr_bytes, v->mac, 6);
    tx_put(w, (uint16_t)v->uplink, m);
}

/* the one's complement sum of len bytes at p, unfolded: 32-bit words
 * summed in 64 bits, a 16-bit word and an odd last byte as rte_raw_cksum
 * takes them (the byte first in its word), so the folded sum is the same */
static __rte_always_inline uint64_t
dp_sum_words(const uint8_t *p, uint32_t len)
{
    uint64_t s = 0;
    uint32_t i = 0;
    for (; i + 4 <= len; i += 4) {
        uint32_t x;
        memcpy(&x, p + i, 4);
        s += x;
    }
    if (len - i >= 2) {
        uint16_t x;
        memcpy(&x, p + i, 2);
        s += x;
        i += 2;
    }
    if (i < len) {
        uint16_t x = 0;
        memcpy(&x, p + i, 1);
        s += x;
    }
    return s;
}

static __rte_always_inline uint16_t
dp_sum_fold(uint64_t s)
{
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffffu) + (s >> 16);
    s = (s & 0xffffu) + (s >> 16);
    s = (s & 0xffffu) + (s >> 16);
    return (uint16_t)s;
}

/* the one's complement sum of a 20-byte IPv4 header (no options) is
 * 0xffff: five 32-bit loads summed in 64 bits and folded (the fast path's
 * check; rte_raw_cksum walks 16-bit words) */
static __rte_always_inline int
ip4_hdr20_sum_ok(const struct rte_ipv4_hdr *ip)
{
    /* five loads from the header itself: a copy into a local array became
     * a 16-byte store and 4-byte loads that waited on it (store forwarding) */
    const uint8_t *p = (const uint8_t *)ip;
    uint32_t w0, w1, w2, w3, w4;
    memcpy(&w0, p, 4);
    memcpy(&w1, p + 4, 4);
    memcpy(&w2, p + 8, 4);
    memcpy(&w3, p + 12, 4);
    memcpy(&w4, p + 16, 4);
    return dp_sum_fold((uint64_t)w0 + w1 + w2 + w3 + w4) == 0xffff;
}

/* the outer UDP checksum of a datagram wholly in the first segment adds
 * up (RFC 768: over the pseudo-header, the UDP header and the data): the
 * fast path's verification, in 32-bit words where rte_raw_cksum walks
 * 16-bit ones */
static __rte_always_inline int
outer_udp_sum_ok(const struct rte_ipv4_hdr *ip, const struct rte_udp_hdr *udp)
{
    uint32_t src, dst;
    memcpy(&src, &ip->src_addr, 4);
    memcpy(&dst, &ip->dst_addr, 4);
    uint64_t s = (uint64_t)src + dst + RTE_BE16(IPPROTO_UDP) + udp->dgram_len +
                 dp_sum_words((const uint8_t *)udp, rte_be_to_cpu_16(udp->dgram_len));
    return dp_sum_fold(s) == 0xffff;
}

/* the outer IPv4 header checksum is right (or the device checked it) */
static inline int
outer_ip_csum_ok(const struct rte_mbuf *m, const struct rte_ipv4_hdr *ip, uint32_t hl)
{
    /* (a device that parsed the frame as a tunnel's says the inner
     * header's state there, and of the outer one only that it is bad) */
    if ((m->ol_flags & RTE_MBUF_F_RX_IP_CKSUM_MASK) == RTE_MBUF_F_RX_IP_CKSUM_GOOD &&
        !(m->packet_type & RTE_PTYPE_TUNNEL_MASK))
        return 1;
    if (hl == sizeof(*ip))
        return ip4_hdr20_sum_ok(ip);
    return rte_raw_cksum(ip, hl) == 0xffff;
}

/* m cut to its first len bytes (0 < len < pkt_len), whichever segment
 * they end in (a jumbo frame from a kernel uplink is a chain):
 * rte_pktmbuf_trim cuts within the last segment only */
static __rte_noinline void
trim_to(struct rte_mbuf *m, uint32_t len)
{
    struct rte_mbuf *s = m;
    uint32_t left = len;
    uint16_t nb = 1;
    while (s->data_len < left) {
        left -= s->data_len;
        s = s->next;
        nb++;
    }
    s->data_len = (uint16_t)left;
    dp_free_segs(s->next);
    s->next = NULL;
    m->nb_segs = nb;
    m->pkt_len = len;
}

/* m (IPv4 to our VTEP, its header hl bytes long) is an ICMP
 * "fragmentation needed" (RFC 792, 1191) about a UDP datagram this VTEP
 * sent: a link of the underlay's path is smaller than what we send there
 * (DF is always set), so vtep.underlay_mtu is above the path's MTU */
static __rte_noinline int
icmp_frag_needed(const struct dp_vtep *v, const struct rte_mbuf *m, uint32_t hl)
{
    const uint8_t *ip = rte_pktmbuf_mtod_offset(m, const uint8_t *, RTE_ETHER_HDR_LEN);
    /* the quote: our IPv4 header (no options) and UDP header, within the
     * ICMP datagram (not read from what follows it) */
    uint32_t tot = (uint32_t)ip[2] << 8 | ip[3];
    if (ip[9] != IPPROTO_ICMP || tot < hl + 8 + 28 || m->data_len < RTE_ETHER_HDR_LEN + hl + 8 + 28)
        return 0;
    const uint8_t *icmp = ip + hl;
    const uint8_t *quoted = icmp + 8;
    return icmp[0] == 3 && icmp[1] == 4 && quoted[0] == 0x45 && quoted[9] == IPPROTO_UDP &&
           memcmp(quoted + 12, &v->ip_be, 4) == 0 && memcmp(quoted + 22, &v->udp_port_be, 2) == 0;
}

/*
 * The outer headers up to the IPv4 protocol, every reason in order: an
 * IPv4 datagram to our MAC and address, not a fragment, UDP. Returns its
 * IPv4 header length, or 0 when the frame was consumed (ARP) or dropped
 * and counted. Lengths past the IPv4 header are not looked at.
 */
static __rte_always_inline uint32_t
outer_check_head(struct dp_wctx *w, const struct dp_vtep *v, struct rte_mbuf *m)
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
    if (unlikely(m->data_len < RTE_ETHER_HDR_LEN + sizeof(*ip) || (ip->version_ihl >> 4) != 4 ||
                 (ip->version_ihl & 0xf) * 4u < sizeof(*ip))) {
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
        drop(w, m,
             icmp_frag_needed(v, m, (ip->version_ihl & 0xf) * 4u) ? DP_DROP_FRAG_NEEDED
                                                                  : DP_DROP_NOT_UDP);
        return 0;
    }
    return (ip->version_ihl & 0xf) * 4u;
}

/* the device's word on the outer UDP checksum (RTE_MBUF_F_RX_L4_CKSUM_*
 * values): a device that parsed the frame as a tunnel's says it in the
 * OUTER flags (whose both bits set is no state: unknown), the others in
 * the plain ones */
static __rte_always_inline uint64_t
outer_udp_csum_state(const struct rte_mbuf *m)
{
    if (unlikely(m->packet_type & RTE_PTYPE_TUNNEL_MASK)) {
        uint64_t o = m->ol_flags & RTE_MBUF_F_RX_OUTER_L4_CKSUM_MASK;
        return o == RTE_MBUF_F_RX_OUTER_L4_CKSUM_GOOD  ? RTE_MBUF_F_RX_L4_CKSUM_GOOD
               : o == RTE_MBUF_F_RX_OUTER_L4_CKSUM_BAD ? RTE_MBUF_F_RX_L4_CKSUM_BAD
                                                       : RTE_MBUF_F_RX_L4_CKSUM_UNKNOWN;
    }
    return m->ol_flags & RTE_MBUF_F_RX_L4_CKSUM_MASK;
}

/* verified by the device: GOOD, or NONE - the data's integrity verified,
 * the field not final (a virtio device under a host that left the sum to
 * offload: its partial sum, which would not add up here) */
static __rte_always_inline int
outer_udp_csum_trusted(const struct rte_mbuf *m)
{
    uint64_t st = outer_udp_csum_state(m);
    return st == RTE_MBUF_F_RX_L4_CKSUM_GOOD || st == RTE_MBUF_F_RX_L4_CKSUM_NONE ||
           dp_csum_partial(m);
}

/* a datagram split over segments (a jumbo frame from a kernel uplink):
 * DPDK's sum, which walks the chain; out of the fast path's code */
static __rte_noinline int
outer_udp_csum_chain_ok(const struct rte_mbuf *m, const struct rte_ipv4_hdr *ip, uint32_t hl)
{
    return rte_ipv4_udptcp_cksum_mbuf_verify(m, ip, RTE_ETHER_HDR_LEN + hl) == 0;
}

/* the outer UDP checksum: 0 (none), one the receiving device (or the
 * kernel under a kernel uplink) verified, one left to offload (a frame of
 * this host's kernel, on a kernel uplink) - trusted - or one that adds up
 * (RFC 768), verified here. m ends where its IPv4 datagram does: the fast
 * check and the full one (after trim_to) both see to it. */
static __rte_always_inline int
outer_udp_csum_ok(const struct rte_mbuf *m, const struct rte_ipv4_hdr *ip, uint32_t hl,
                  const struct rte_udp_hdr *udp)
{
    if (likely(udp->dgram_cksum == 0) || outer_udp_csum_trusted(m))
        return 1;
    if (outer_udp_csum_state(m) == RTE_MBUF_F_RX_L4_CKSUM_BAD)
        return 0;
    if (likely(m->data_len == m->pkt_len))
        return outer_udp_sum_ok(ip, udp);
    return outer_udp_csum_chain_ok(m, ip, hl);
}

/* RFC 6040 4.2, as the kernel's VTEP: the underlay marked congestion (CE)
 * on the outer header of m (its outer headers outer bytes long): an inner
 * IPv4 or IPv6 packet that is ECN-capable gets CE too; one that is not
 * cannot carry the mark and is dropped (0); anything else goes on as it is */
static __rte_noinline int
ecn_decap(struct rte_mbuf *m, uint32_t outer)
{
    uint8_t *eth = rte_pktmbuf_mtod_offset(m, uint8_t *, outer);
    uint16_t et;
    /* through its VLAN tags, as the encapsulation copied the field (the
     * inner Ethernet header is in the first segment: outer_check_full) */
    uint32_t l3 = l3_past_tags(eth, m->data_len - outer, &et);
    uint8_t *h = eth + l3;
    /* (a runt, or its IP header past the first segment: as it came) */
    if (et == RTE_BE16(RTE_ETHER_TYPE_IPV4) &&
        m->data_len >= outer + l3 + sizeof(struct rte_ipv4_hdr) && (h[0] >> 4) == 4) {
        if ((h[1] & 3) == 0)
            return 0;
        if ((h[1] & 3) != 3) {
            /* the checksum follows the TOS byte's change (RFC 1624) */
            uint16_t old = (uint16_t)(h[0] << 8 | h[1]);
            h[1] |= 3;
            uint16_t now = (uint16_t)(h[0] << 8 | h[1]);
            uint32_t sum = (uint16_t) ~(h[10] << 8 | h[11]) + (uint16_t)~old + now;
            sum = (sum & 0xffff) + (sum >> 16);
            sum = (sum & 0xffff) + (sum >> 16);
            sum = (uint16_t)~sum;
            h[10] = (uint8_t)(sum >> 8);
            h[11] = (uint8_t)sum;
        }
    } else if (et == RTE_BE16(RTE_ETHER_TYPE_IPV6) &&
               m->data_len >= outer + l3 + sizeof(struct rte_ipv6_hdr) && (h[0] >> 4) == 6) {
        /* the traffic class's low bits: the low nibble of byte 1's top */
        uint8_t ecn = (uint8_t)((h[1] >> 4) & 3);
        if (ecn == 0)
            return 0;
        h[1] |= 0x30;
    }
    return 1;
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
    uint32_t hl = outer_check_head(w, v, m);
    if (hl == 0)
        return 0;
    const struct rte_ipv4_hdr *ip =
        rte_pktmbuf_mtod_offset(m, const struct rte_ipv4_hdr *, RTE_ETHER_HDR_LEN);
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
    if (unlikely(!outer_ip_csum_ok(m, ip, hl))) {
        drop(w, m, DP_DROP_BAD_IP);
        return 0;
    }
    if (unlikely(rte_be_to_cpu_16(udp->dgram_len) != tot - hl)) {
        drop(w, m, DP_DROP_UDP_LENGTH);
        return 0;
    }
    /* the inner Ethernet header is read in place: in the first segment */
    if (unlikely(m->data_len < outer + RTE_ETHER_HDR_LEN)) {
        drop(w, m, DP_DROP_INNER_SPLIT);
        return 0;
    }
    /* drop Ethernet padding (or whatever else follows) past the IP datagram */
    if (RTE_ETHER_HDR_LEN + tot < m->pkt_len)
        trim_to(m, RTE_ETHER_HDR_LEN + tot);
    if (unlikely(!outer_udp_csum_ok(m, ip, hl, udp))) {
        drop(w, m, DP_DROP_UDP_CHECKSUM);
        return 0;
    }
    if (unlikely((ip->type_of_service & 3) == 3) && !ecn_decap(m, outer)) {
        drop(w, m, DP_DROP_ECN_NOT_ECT);
        return 0;
    }
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
            (uint32_t)(RTE_ETHER_HDR_LEN + tot != m->pkt_len) | (uint32_t)(tot < DP_VXLAN_HDR_LEN) |
            (uint32_t)(udp->dgram_len ^ rte_cpu_to_be_16((uint16_t)(tot - sizeof(*ip)))) |
            (uint32_t)((ip->type_of_service & 3) == 3);
        /* (a wrong UDP checksum, or one the device called bad, goes on to
         * the full check, which counts it) */
        if (likely(bad == 0) && likely(outer_ip_csum_ok(m, ip, sizeof(*ip))) &&
            likely(outer_udp_csum_ok(m, ip, sizeof(*ip), udp)))
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

static __rte_noinline void uplink_segs(struct dp_wctx *w, uint16_t pi, struct rte_mbuf **pkts,
                                       uint16_t n);

/* a super-frame on the uplink that is not one VXLAN frame (UDP datagrams
 * merged by the interface's GRO): cut back into its datagrams (dp_gso.c),
 * which are decapsulated as a burst. One that is not UDP to our VTEP (the
 * host's own TCP, merged by GRO on an interface it shares) is dropped
 * whole, once, under the reason its first headers give: not cut into
 * segments that would each be dropped. Returns its bytes, 0 when its
 * datagrams counted theirs. */
static __rte_noinline uint32_t
uplink_gso(struct dp_wctx *w, uint16_t pi, struct rte_mbuf *m)
{
    uint32_t len = m->pkt_len;
    uint32_t hl = outer_check_head(w, w->vtep, m);
    if (hl == 0)
        return len;
    if (unlikely(m->data_len < RTE_ETHER_HDR_LEN + hl + sizeof(struct rte_udp_hdr))) {
        drop(w, m, DP_DROP_TRUNCATED);
        return len;
    }
    const struct rte_udp_hdr *udp =
        rte_pktmbuf_mtod_offset(m, const struct rte_udp_hdr *, RTE_ETHER_HDR_LEN + hl);
    if (unlikely(udp->dst_port != w->vtep->udp_port_be)) {
        drop(w, m, DP_DROP_UDP_PORT);
        return len;
    }
    struct rte_mbuf *seg[DP_GSO_MAX_SEGS];
    int n = gso_cut(w, m, seg);
    /* each datagram's checksum just computed over data the kernel's GRO
     * had verified: not summed again */
    for (int i = 0; i < n; i++)
        seg[i]->ol_flags |= RTE_MBUF_F_RX_L4_CKSUM_GOOD;
    for (int i = 0; i < n; i += DP_BURST)
        uplink_segs(w, pi, seg + i, (uint16_t)RTE_MIN(n - i, DP_BURST));
    return n > 0 ? 0 : len; /* not cut (dropped, counted): its bytes are the port's */
}

/* inlined into the worker loop; the segments of a cut super-frame go
 * through an out-of-line copy (uplink_segs), so the loop's stays inline */
static __rte_always_inline void
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
        if (unlikely(dp_gso_frame(m) && !(m->ol_flags & RTE_MBUF_F_TX_TUNNEL_MASK))) {
            bytes += uplink_gso(w, pi, m); /* or its datagrams' bytes there */
            continue;
        }
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
    uint64_t hits = vtep_lookup(w, vkeys, vsig, k, vnet);
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
            if (unlikely(v->learning))
                learn_src(w, net, m, olen[i], (uint32_t)vkeys[i], (uint32_t)(vkeys[i] >> 32));
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
            /* a source no VTEP can have (RFC 1122 3.2.1.3: "this network"
             * 0/8, loopback, multicast, reserved 240/4 and the limited
             * broadcast) is not learned: a tunnel to it would lead nowhere.
             * Only here: a known (VNI, VTEP) pair is never such a source */
            uint32_t a = rte_be_to_cpu_32((uint32_t)vkeys[i]) >> 24;
            if (unlikely(a == 0 || a == 127 || a >= 224)) {
                drop(w, m, DP_DROP_BAD_IP);
                continue;
            }
            net = (uint32_t)(uintptr_t)d;
            const uint8_t *isrc = rte_pktmbuf_mtod_offset(m, const uint8_t *, olen[i] + 6);
            if (!(isrc[0] & 1)) {
                uint64_t skey = dp_fdb_key(net, isrc);
                learn_new(w, net, isrc, skey, dp_key8_hash(skey), (uint32_t)vkeys[i],
                          (uint32_t)(vkeys[i] >> 32));
            }
        }
        rte_pktmbuf_adj(m, olen[i]);
        if (unlikely(m->ol_flags & RTE_MBUF_F_TX_TUNNEL_MASK))
            gso_decap(m);
        DP_META(m)->plane = dp.net_plane[net];
        net_count(w, DP_NET_DECAP, net, &cnet, &ccnt);
        const uint8_t *inner = rte_pktmbuf_mtod(m, const uint8_t *);
        keys[j] = dp_fdb_key(net, inner);
        sig[j] = dp_key8_hash(keys[j]);
        fdb_prefetch_early(w, sig[j]);
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
    struct dp_txrun run = {.port = -1};
    for (uint16_t i = 0; i < j; i++) {
        struct rte_mbuf *m = vx_pkts[i];
        const uint8_t *eth = rte_pktmbuf_mtod(m, const uint8_t *);
        if (unlikely((eth[0] & 1) || !((hits >> i) & 1))) {
            run_end(&run); /* flood adds to tx buffers */
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
        uint16_t t = (uint16_t)DP_FV_TARGET(val[i]);
        if (unlikely(dp_gso_frame(m))) {
            run_end(&run);
            tx_put(w, t, m);
            continue;
        }
        run_add(w, &run, t, m, plane_bit(dp.net_plane[nets[i]]));
    }
    run_end(&run);
    net_count_flush(w, DP_NET_LOCAL, cnet, ccnt);
}

/* the datagrams of a super-frame cut on the uplink (uplink_gso) */
static __rte_noinline void
uplink_segs(struct dp_wctx *w, uint16_t pi, struct rte_mbuf **pkts, uint16_t n)
{
    uplink_burst(w, pi, pkts, n);
}

#endif /* DP_DECAP_H */
