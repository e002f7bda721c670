/*
 * dp_encap.h - the pod side: a burst from a pod port looked up in its
 * network's FDB and sent to a local port, encapsulated in VXLAN to a remote
 * VTEP (the tunnel's header template copied and patched), or flooded (local
 * ports and one copy per remote VTEP of the network).
 *
 * Part of the one translation unit dp_pipeline.c: static inline code, so
 * the compiler sees the whole worker loop at once (and builds the same code
 * as when it was one file).
 */
#ifndef DP_ENCAP_H
#define DP_ENCAP_H

#ifndef DP_PIPELINE_TU
#error "dp_encap.h is included by dp_pipeline.c only"
#endif

/* IP protocols whose first four bytes after the IP header are the ports */
static const uint8_t dp_l4_ports[256] = {[IPPROTO_TCP] = 1, [IPPROTO_UDP] = 1, [IPPROTO_SCTP] = 1};

/* the flow hash of an IPv4 packet ip (l4: its first L4 bytes, if within the
 * frame): the addresses, from the L4 ports where the protocol has them and
 * the packet is not a fragment (every fragment of a datagram hashes alike) */
static __rte_always_inline uint32_t
flow_ipv4(const struct rte_ipv4_hdr *ip, const uint8_t *l4)
{
    uint64_t addrs;
    memcpy(&addrs, &ip->src_addr, 8);
    uint32_t ports = 0;
    if (l4 != NULL)
        memcpy(&ports, l4, 4);
    uint32_t with_ports =
        dp_l4_ports[ip->next_proto_id] & !(ip->fragment_offset & RTE_BE16(0x3fff));
    return dp_crc8(addrs, ports & (0u - with_ports));
}

/* Where the IP header of frame eth (len bytes of it readable, 14 or more)
 * starts: past up to two VLAN tags (802.1Q, QinQ), as the pods' guard
 * looks; *et: the ethertype there (network order; a tag's if the frame
 * ends within its tags) */
static inline uint32_t
l3_past_tags(const uint8_t *eth, uint32_t len, uint16_t *et)
{
    uint32_t l3 = RTE_ETHER_HDR_LEN;
    memcpy(et, eth + 12, 2);
    for (int t = 0;
         t < 2 && (*et == RTE_BE16(RTE_ETHER_TYPE_VLAN) || *et == RTE_BE16(RTE_ETHER_TYPE_QINQ));
         t++) {
        if (len < l3 + RTE_VLAN_HLEN)
            break;
        memcpy(et, eth + l3 + 2, 2);
        l3 += RTE_VLAN_HLEN;
    }
    return l3;
}

/*
 * Inner flow hash for the outer UDP source port (RFC 7348 §5: entropy for
 * ECMP, in the dynamic range 49152-65535) and the inner DSCP to copy: the
 * frames inner_flow does not take on its fast path.
 */
static __rte_noinline uint32_t
inner_flow_slow(const struct rte_mbuf *m, const uint8_t *eth, uint8_t *tos)
{
    uint16_t et;
    if (unlikely(m->data_len < RTE_ETHER_HDR_LEN)) {
        *tos = 0; /* a runt, dropped as truncated: not read past its end */
        return 0;
    }
    uint32_t l3 = l3_past_tags(eth, m->data_len, &et); /* where the IP header starts */
    if (et == RTE_BE16(RTE_ETHER_TYPE_IPV4) && m->data_len >= l3 + 20) {
        const struct rte_ipv4_hdr *ip = (const struct rte_ipv4_hdr *)(eth + l3);
        *tos = ip->type_of_service;
        uint32_t hl = (ip->version_ihl & 0xf) * 4u;
        return flow_ipv4(ip, m->data_len >= l3 + hl + 4 ? eth + l3 + hl : NULL);
    }
    if (et == RTE_BE16(RTE_ETHER_TYPE_IPV6) && m->data_len >= l3 + 40) {
        const uint8_t *ip6 = eth + l3;
        uint32_t vtc;
        memcpy(&vtc, ip6, 4);
        *tos = (uint8_t)(rte_be_to_cpu_32(vtc) >> 20);
        /* the addresses and the flow label, and the L4 ports of a protocol
         * that has them right behind the header (an extension header, a
         * fragment's among them: not looked through, every fragment of a
         * datagram hashes alike) */
        uint32_t ports = 0;
        if (dp_l4_ports[ip6[6]] && m->data_len >= l3 + 44)
            memcpy(&ports, ip6 + 40, 4);
        return rte_hash_crc(ip6 + 8, 32, (vtc & RTE_BE32(0x000fffff)) ^ ports);
    }
    *tos = 0;
    return rte_hash_crc(eth, 12, et);
}

/*
 * The same, fast path: IPv4 without options (nearly every frame), whose L4
 * ports sit at a fixed offset; the protocol mix of real traffic is handled
 * without branches (the predictor would lose to it).
 */
static __rte_always_inline uint32_t
inner_flow(const struct rte_mbuf *m, const uint8_t *eth, uint8_t *tos)
{
    uint16_t et;
    if (unlikely(m->data_len < 38))
        return inner_flow_slow(m, eth, tos);
    memcpy(&et, eth + 12, 2);
    if (unlikely(et != RTE_BE16(RTE_ETHER_TYPE_IPV4) || eth[14] != 0x45))
        return inner_flow_slow(m, eth, tos);
    const struct rte_ipv4_hdr *ip = (const struct rte_ipv4_hdr *)(eth + 14);
    *tos = ip->type_of_service;
    return flow_ipv4(ip, eth + 34);
}

/*
 * m, for tunnel t (index ti) whose next hop is being resolved: held by the
 * worker until it is (hold_run), as the kernel queues frames to a neighbour
 * it is asking for - the first frames to a node just added (a pod's ARP
 * request, a TCP SYN) then leave after the answer instead of waiting for
 * their sender's retry a second later. A super-frame, or one over the
 * worker's DP_HOLD_MAX, is dropped as neigh_unresolved.
 */
static void
hold(struct dp_wctx *w, const struct dp_net *net, uint32_t ti, const struct dp_tunnel *t,
     struct rte_mbuf *m)
{
    /* a next hop that did not answer while earlier frames waited (a node
     * down): its frames are dropped at once for DP_HOLD_GIVE_UP hold times,
     * so that they neither fill the slots the first frames to other nodes
     * need nor keep the worker off encap_fast (n_held) for as long as they
     * come; then held again, while the core keeps asking */
    const struct dp_gave_up *g = &w->gave_up[ti];
    if (w->n_held == DP_HOLD_MAX ||
        (g->t == t && g->gen == t->gen && g->ip == t->ip && w->rx_tsc < g->until) ||
        dp_gso_frame(m) || (m->ol_flags & RTE_MBUF_F_TX_TUNNEL_MASK)) {
        drop(w, m, DP_DROP_NEIGH_UNRESOLVED);
        return;
    }
    w->held[w->n_held++] = (struct dp_held){
        .m = m,
        .tsc = w->rx_tsc,
        .vtep_ip = t->ip,
        .vni = net->vni,
        .net = (uint16_t)net->idx,
        .ti = (uint16_t)ti,
        .in_port = w->at_port,
        .in_gen = w->at_port < DP_MAX_PORTS
                      ? atomic_load_explicit(&dp.port_gen[w->at_port], memory_order_relaxed)
                      : 0,
    };
    w->wc[DP_WORKER_NEIGH_HELD]++;
}

/* does the worker hold a frame for tunnel ti? (a frame to it waits behind
 * those, so that a flow's frames leave in the order they came) */
static int
held_for(const struct dp_wctx *w, uint32_t ti)
{
    for (uint16_t i = 0; i < w->n_held; i++)
        if (w->held[i].ti == ti)
            return 1;
    return 0;
}

/* m to tunnel t (index ti), when t is gone, is not resolved or the worker
 * holds frames: returns 1 if m was dropped or held, 0 if it goes on */
static __rte_noinline int
encap_wait(struct dp_wctx *w, const struct dp_net *net, uint32_t ti, const struct dp_tunnel *t,
           struct rte_mbuf *m)
{
    if (t == NULL) {
        drop(w, m, DP_DROP_NEIGH_UNRESOLVED);
        return 1;
    }
    if (t->resolved && !held_for(w, ti))
        return 0;
    hold(w, net, ti, t, m);
    return 1;
}

/*
 * m's plane (by its network's, net_plane, or by the inner DSCP tos where a
 * map says so) into its metadata (meta_off: dp_meta_off) and the bit set
 * planes; returns the outer DSCP: the plane's marking, or the inner one
 * copied (dp_qg.tos_map has both).
 */
static __rte_always_inline uint8_t
encap_plane(struct rte_mbuf *m, int meta_off, unsigned net_plane, uint8_t tos, uint16_t *planes)
{
    uint16_t e = __atomic_load_n(&dp_qg.tos_map[net_plane & (DP_MAX_PLANES - 1)][tos >> 2],
                                 __ATOMIC_RELAXED);
    unsigned plane = e >> 8;
    RTE_MBUF_DYNFIELD(m, meta_off, struct dp_meta *)->plane = (uint8_t)plane;
    *planes |= (uint16_t)(1u << plane);
    /* the inner ECN field copied, CE as ECT(0) (RFC 6040 normal mode, as
     * the kernel's VTEP): the underlay may mark congestion, which the far
     * end's decapsulation carries inward */
    uint8_t ecn = tos & 3;
    return (uint8_t)((uint8_t)e | (ecn ^ ((ecn >> 1) & ecn & 1)));
}

/*
 * The outer headers of m (already prepended, at hdr) to tunnel t: the
 * template copied, then lengths, outer DSCP tos, checksum, the source port
 * from the inner flow hash h, and the VNI word vni patched in.
 */
static __rte_always_inline void
encap_hdr(const struct rte_mbuf *m, uint8_t *hdr, const struct dp_tunnel *t, uint32_t vni,
          uint32_t h, uint8_t tos)
{
    rte_memcpy(hdr, t->hdr, DP_VXLAN_HDR_LEN);
    struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(hdr + sizeof(struct rte_ether_hdr));
    struct rte_udp_hdr *udp = (struct rte_udp_hdr *)(ip + 1);
    struct rte_vxlan_hdr *vx = (struct rte_vxlan_hdr *)(udp + 1);
    uint16_t ip_len = (uint16_t)(m->pkt_len - sizeof(struct rte_ether_hdr));
    rte_be16_t len_be = rte_cpu_to_be_16(ip_len);
    ip->type_of_service = tos;
    ip->total_length = len_be;
    /* incremental checksum: template sum + first word (version, TOS) + length,
     * from registers (reading the header back would stall on the stores);
     * folded in one step: the upper half of sum + sum rotated by 16 is the
     * upper and lower halves added with their end-around carry (a shorter
     * chain than two folds: 18 of 20 A/B pairs faster, by 0.6 %) */
    rte_be16_t w0 = rte_cpu_to_be_16((uint16_t)(RTE_IPV4_VHL_DEF << 8 | tos));
    uint32_t sum = t->csum_base + w0 + len_be;
    ip->hdr_checksum = (uint16_t)(~(sum + ((sum << 16) | (sum >> 16))) >> 16);
    h ^= h >> 16;
    udp->src_port = rte_cpu_to_be_16((uint16_t)(0xc000 | (h & 0x3fff)));
    udp->dgram_len = rte_cpu_to_be_16((uint16_t)(ip_len - sizeof(struct rte_ipv4_hdr)));
    vx->vx_vni = vni;
}

/*
 * Rewrite m in place into a VXLAN frame to tunnel ti. wire: the longest
 * frame it is on a wire (its length; a super-frame's longest segment).
 * Returns 1, or 0 when the frame was dropped (and counted) or held for the
 * tunnel's next hop (hold).
 */
static __rte_always_inline int
encap_one(struct dp_wctx *w, const struct dp_net *net, uint32_t ti, struct rte_mbuf *m, uint32_t h,
          uint8_t tos, uint32_t wire, uint64_t *bytes, uint16_t *planes)
{
    const struct dp_tunnel *t = atomic_load_explicit(&dp.tunnels[ti], memory_order_acquire);
    if (unlikely(t == NULL || !t->resolved || w->n_held) && encap_wait(w, net, ti, t, m))
        return 0;
    if (unlikely(wire > net->max_frame)) {
        drop(w, m, DP_DROP_OVERSIZE);
        return 0;
    }
    uint8_t *hdr = (uint8_t *)rte_pktmbuf_prepend(m, DP_VXLAN_HDR_LEN);
    if (unlikely(hdr == NULL)) {
        drop(w, m, DP_DROP_NO_HEADROOM);
        return 0;
    }
    tos = encap_plane(m, dp_meta_off, (unsigned)net->plane, tos, planes);
    encap_hdr(m, hdr, t, net->vni_be_word, h, tos);
    *bytes += m->pkt_len;
    return 1;
}

/* one frame to the uplink, wire as encap_one says (flood copies and
 * super-frames; the pod loop encapsulates inline) */
static void
encap_wire(struct dp_wctx *w, const struct dp_net *net, uint32_t ti, struct rte_mbuf *m,
           uint32_t wire)
{
    uint8_t tos;
    uint32_t h = inner_flow(m, rte_pktmbuf_mtod(m, const uint8_t *), &tos);
    uint64_t bytes = 0; /* tx_put counts both */
    uint16_t planes = 0;
    if (!encap_one(w, net, ti, m, h, tos, wire, &bytes, &planes))
        return;
    w->net[net->idx][DP_NET_ENCAP]++;
    tx_put(w, (uint16_t)w->vtep->uplink, m);
}

static inline void
encap(struct dp_wctx *w, const struct dp_net *net, uint32_t ti, struct rte_mbuf *m)
{
    encap_wire(w, net, ti, m, m->pkt_len);
}

/*
 * The frames the worker holds (hold), once a poll round: those whose next
 * hop is now known are encapsulated and sent, in the order they came (one
 * that finds its tunnel resolved behind one that did not, as the control
 * thread resolves it meanwhile, waits for the next round with it); those
 * held DP_HOLD_MS, or whose network or tunnel went (or was replaced: its
 * index now another's), are dropped as neigh_unresolved, and all of them
 * as no_uplink when the VTEP has no uplink any more; the rest wait.
 * With `all`, the worker is stopping: nothing waits.
 */
static __rte_noinline void
hold_run(struct dp_wctx *w, int all)
{
    struct dp_held cur[DP_HOLD_MAX];
    uint16_t n = w->n_held;
    memcpy(cur, w->held, n * sizeof(cur[0]));
    w->n_held = 0; /* what encap_wire holds again, and what waits, go back in order */
    uint64_t now = rte_rdtsc();
    int sent = 0;
    for (uint16_t i = 0; i < n; i++) {
        const struct dp_held *e = &cur[i];
        /* a drop of it, or of what encap_wire makes of it, is told of the
         * port it came in by - of none once that port went (its index may
         * be another pod's by now) */
        w->at_port = e->in_port < DP_MAX_PORTS &&
                             atomic_load_explicit(&dp.port_gen[e->in_port], memory_order_relaxed) ==
                                 e->in_gen
                         ? e->in_port
                         : DP_NO_PORT;
        const struct dp_net *net = atomic_load_explicit(&dp.nets[e->net], memory_order_acquire);
        const struct dp_tunnel *t = atomic_load_explicit(&dp.tunnels[e->ti], memory_order_acquire);
        if (all || net == NULL || net->vni != e->vni || t == NULL || t->ip != e->vtep_ip ||
            w->vtep->uplink < 0 || (!t->resolved && now - e->tsc >= w->hold_tsc)) {
            if (t != NULL && !t->resolved && t->ip == e->vtep_ip)
                w->gave_up[e->ti] =
                    (struct dp_gave_up){t, t->gen, t->ip, now + DP_HOLD_GIVE_UP * w->hold_tsc};
            drop(w, e->m, w->vtep->uplink < 0 ? DP_DROP_NO_UPLINK : DP_DROP_NEIGH_UNRESOLVED);
            continue;
        }
        if (!t->resolved || held_for(w, e->ti)) {
            w->held[w->n_held++] = *e; /* and those after it to the same tunnel */
            continue;
        }
        if (!sent++)
            w->rx_tsc = e->tsc; /* its wait counts in the plane's latency */
        encap_wire(w, net, e->ti, e->m, e->m->pkt_len);
    }
    if (sent)
        tx_flush_all(w);
}

/* a super-frame to a remote VTEP, whole, for an uplink whose tunnel tap
 * takes UDP-tunnel GSO (afpacket.h): encapsulated once and marked the DPDK
 * way (dp_gso.h), so the kernel or the NIC cuts it after the tunnel as it
 * does the kernel VTEP's. Returns 0 when it must be cut here instead: a
 * frame already encapsulated, one whose outer IPv4 length would pass
 * 64 KiB, any to a shaped uplink (its planes' queues and token bucket
 * take frames as the wire carries them), or any once the tap is gone. */
static __rte_noinline int
encap_whole(struct dp_wctx *w, const struct dp_net *net, uint32_t ti, struct rte_mbuf *m)
{
    const struct dp_port *up =
        atomic_load_explicit(&dp.ports[w->vtep->uplink], memory_order_acquire);
    if (up == NULL || !__atomic_load_n(&up->tnl_gso, __ATOMIC_ACQUIRE) || up->qos != NULL ||
        !dp_afp_tunnel_ok(up->afp) || (m->ol_flags & RTE_MBUF_F_TX_TUNNEL_MASK) ||
        m->pkt_len + DP_VXLAN_HDR_LEN - RTE_ETHER_HDR_LEN > UINT16_MAX ||
        m->l2_len > 127 - sizeof(struct rte_udp_hdr) - sizeof(struct rte_vxlan_hdr))
        return 0; /* (l2_len is 7 bits: a frame of many VLAN tags is cut instead) */
    uint32_t seg = (uint32_t)m->l2_len + m->l3_len + m->l4_len + m->tso_segsz;
    /* marked before it is encapsulated: a frame dropped there is freed */
    m->ol_flags |=
        RTE_MBUF_F_TX_TUNNEL_VXLAN | RTE_MBUF_F_TX_OUTER_IPV4 | RTE_MBUF_F_TX_OUTER_IP_CKSUM;
    m->outer_l2_len = RTE_ETHER_HDR_LEN;
    m->outer_l3_len = sizeof(struct rte_ipv4_hdr);
    m->l2_len += sizeof(struct rte_udp_hdr) + sizeof(struct rte_vxlan_hdr);
    encap_wire(w, net, ti, m, RTE_MIN(seg, m->pkt_len));
    return 1;
}

/* a super-frame to a remote VTEP: whole where the uplink takes it so
 * (encap_whole), else cut into MSS-sized frames (dp_gso.c), each
 * encapsulated, as a NIC would before the wire */
static __rte_noinline void
encap_gso(struct dp_wctx *w, const struct dp_net *net, uint32_t ti, struct rte_mbuf *m)
{
    if (encap_whole(w, net, ti, m))
        return;
    struct rte_mbuf *seg[DP_GSO_MAX_SEGS];
    int n = gso_cut(w, m, seg);
    for (int i = 0; i < n; i++)
        encap(w, net, ti, seg[i]);
}

/* the bytes of the VLAN tags (one or two: 802.1Q, 802.1ad) at the start of
 * frame m (eth: its first segment's data, 14 bytes or more) */
static inline uint32_t
vlan_room(const struct rte_mbuf *m, const uint8_t *eth)
{
    uint16_t t = (uint16_t)(eth[12] << 8 | eth[13]);
    if (t != RTE_ETHER_TYPE_VLAN && t != RTE_ETHER_TYPE_QINQ)
        return 0;
    if (m->data_len >= RTE_ETHER_HDR_LEN + 4 &&
        (uint16_t)(eth[16] << 8 | eth[17]) == RTE_ETHER_TYPE_VLAN)
        return 2 * RTE_VLAN_HLEN;
    return RTE_VLAN_HLEN;
}

static void flood(struct dp_wctx *w, const struct dp_net *net, int in_port, int to_remote,
                  struct rte_mbuf *m);

/* a super-frame to flood: its copies go to ports of every kind, so it is
 * cut into segments first, each flooded; but one whose only target is one
 * remote VTEP (a MAC behind a kernel VTEP, unknown to a node that does not
 * learn) goes to it as a super-frame to a known MAC does */
static __rte_noinline void
flood_gso(struct dp_wctx *w, const struct dp_net *net, int in_port, int to_remote,
          struct rte_mbuf *m)
{
    if (to_remote && net->n_flood == 1 && w->vtep->uplink >= 0 &&
        (net->n_local == 0 || (net->n_local == 1 && net->local[0] == in_port))) {
        w->net[net->idx][DP_NET_FLOOD]++;
        encap_gso(w, net, net->flood[0], m);
        return;
    }
    struct rte_mbuf *seg[DP_GSO_MAX_SEGS];
    int n = gso_cut(w, m, seg);
    for (int i = 0; i < n; i++)
        flood(w, net, in_port, to_remote, seg[i]);
}

/*
 * Broadcast, multicast and unknown unicast: every local port of the network
 * but the ingress one, and (from pods only) one encapsulated copy per remote
 * VTEP in the network's flood list.
 */
static void
flood(struct dp_wctx *w, const struct dp_net *net, int in_port, int to_remote, struct rte_mbuf *m)
{
    if (unlikely(dp_gso_frame(m))) {
        flood_gso(w, net, in_port, to_remote, m);
        return;
    }
    uint16_t targets[DP_MAX_PORTS];
    uint16_t nt = 0;
    for (uint16_t i = 0; i < net->n_local; i++)
        if (net->local[i] != in_port)
            targets[nt++] = net->local[i];
    uint16_t nr = to_remote ? net->n_flood : 0;
    if (unlikely(nr && w->vtep->uplink < 0)) {
        /* remote copies with no uplink to leave by: counted, not made */
        if (nt == 0) { /* one per remote copy, the frame itself the last */
            w->drop[DP_DROP_NO_UPLINK] += nr - 1u;
            drop(w, m, DP_DROP_NO_UPLINK);
            return;
        }
        w->drop[DP_DROP_NO_UPLINK] += nr;
        nr = 0;
    }
    if (unlikely(nr && m->pkt_len > net->max_frame)) {
        /* VLAN-tagged, within the MTU to local ports but not through the
         * underlay: each remote copy counted, not made */
        if (nt == 0) {
            w->drop[DP_DROP_OVERSIZE] += nr - 1u;
            drop(w, m, DP_DROP_OVERSIZE);
            return;
        }
        w->drop[DP_DROP_OVERSIZE] += nr;
        nr = 0;
    }
    if (unlikely(nt == 0 && nr == 0)) {
        drop(w, m, DP_DROP_NO_DESTINATION);
        return;
    }
    w->net[net->idx][DP_NET_FLOOD]++;
    /* the copies go to ports of both kinds and the local ones share the
     * data: a partial checksum is finished once, before they part */
    if (unlikely(dp_csum_partial(m)))
        dp_csum_complete(m);
    /* with no local target the last remote copy is the frame itself (an
     * unknown MAC behind a kernel VTEP: every frame to it is flooded) */
    uint16_t ncopy = nt == 0 ? nr - 1 : nr;
    for (uint16_t i = 0; i < ncopy; i++) {
        struct rte_mbuf *c = rte_pktmbuf_copy(m, dp.pool, 0, UINT32_MAX);
        if (unlikely(c == NULL)) {
            w->drop[DP_DROP_NO_MBUF]++;
            continue;
        }
        encap(w, net, net->flood[i], c);
    }
    if (nt == 0) {
        encap(w, net, net->flood[nr - 1], m);
        return;
    }
    /* local copies share the frame: it is not modified any more */
    rte_pktmbuf_refcnt_update(m, (int16_t)(nt - 1));
    for (uint16_t i = 0; i < nt; i++)
        tx_put(w, targets[i], m);
}

/*
 * The common case of a pod's burst, in a loop without calls, so that its
 * values stay in registers: known unicast to a remote VTEP whose next hop
 * is known, encapsulated straight into the uplink's buffer ubm from fill
 * level *k (bytes and plane bits added to *bytes, *planes). A frame for
 * anywhere else (a local port, a flood, a drop) is left to pod_burst's
 * general loop: its index goes to rest. The first frame to a remote VTEP
 * that this loop cannot send as it is (a super-frame, one too long or with
 * too little headroom, a tunnel gone or not resolved) ends the loop, and
 * the general loop takes the burst from there, so that frames to the
 * uplink leave in the order they came. Returns where it stopped (n:
 * nothing left but rest).
 * The caller has checked that there is an uplink, that its buffer has room
 * for the burst and that the worker holds no frame (hold).
 */
static __rte_noinline uint16_t
encap_fast(const struct dp_net *net, struct rte_mbuf *const *restrict pkts, uint16_t n,
           uint64_t hits, const uint32_t *restrict val, const uint32_t *restrict fh,
           const uint8_t *restrict ftos, struct dp_txbuf *restrict ub, uint16_t *restrict k,
           uint64_t *restrict bytes, uint16_t *restrict planes, uint8_t *restrict rest,
           uint16_t *restrict n_rest)
{
    const uint32_t max_frame = net->max_frame, vni = net->vni_be_word;
    const unsigned net_plane = (unsigned)net->plane;
    const int meta_off = dp_meta_off;
    struct rte_mbuf **ubm = ub->m;
    uint16_t kk = *k, nr = *n_rest, pl = *planes;
    uint64_t by = *bytes;
    uint16_t i;
    for (i = 0; i < n; i++) {
        struct rte_mbuf *m = pkts[i];
        const uint8_t *eth = rte_pktmbuf_mtod(m, const uint8_t *);
        uint32_t v = val[i];
        if (unlikely(m->data_len < RTE_ETHER_HDR_LEN || (eth[0] & 1) || !((hits >> i) & 1) ||
                     DP_FV_KIND(v) != DP_FDB_REMOTE)) {
            rest[nr++] = (uint8_t)i;
            continue;
        }
        const struct dp_tunnel *t =
            atomic_load_explicit(&dp.tunnels[DP_FV_TARGET(v)], memory_order_acquire);
        if (unlikely(m->pkt_len > max_frame || dp_gso_frame(m) || m->data_off < DP_VXLAN_HDR_LEN ||
                     t == NULL || !t->resolved))
            break;
        uint8_t tos = encap_plane(m, meta_off, net_plane, ftos[i], &pl);
        m->data_off -= DP_VXLAN_HDR_LEN; /* rte_pktmbuf_prepend, headroom known */
        m->data_len += DP_VXLAN_HDR_LEN;
        m->pkt_len += DP_VXLAN_HDR_LEN;
        encap_hdr(m, rte_pktmbuf_mtod(m, uint8_t *), t, vni, fh[i], tos);
        by += m->pkt_len;
        ubm[kk++] = m;
    }
    *k = kk;
    *n_rest = nr;
    *planes = pl;
    *bytes = by;
    return i;
}

/*
 * A pod's burst, first pass: each frame's FDB key (net_key: its network's
 * bits) and hash, with the key's table bucket prefetched when fdb is given
 * (the worker skips its cache: fdb_prefetch_early, decided once a burst
 * here), and the inner flow hash and DSCP for encapsulation (a short loop
 * of its own overlaps the frames' loads; out of line, so that its values
 * stay in registers). Returns the burst's bytes.
 */
static __rte_noinline uint64_t
pod_scan(const struct dp_ftab *fdb, uint64_t net_key, struct rte_mbuf **pkts, uint16_t n,
         uint64_t *restrict keys, hash_sig_t *restrict sig, uint32_t *restrict fh,
         uint8_t *restrict ftos)
{
    uint64_t bytes = 0;
    for (uint16_t i = 0; i < n; i++) {
        const struct rte_mbuf *m = pkts[i];
        const uint8_t *eth = rte_pktmbuf_mtod(m, const uint8_t *);
        bytes += m->pkt_len;
        /* a runt (dropped as truncated later) is not read past its end */
        uint64_t key = (m->data_len >= 6 ? dp_fdb_key(0, eth) : 0) | net_key;
        uint32_t h = dp_key8_hash(key);
        keys[i] = key;
        sig[i] = h;
        if (fdb != NULL)
            rte_prefetch0(dp_ftab_home(fdb, h));
        fh[i] = inner_flow(m, eth, &ftos[i]);
    }
    return bytes;
}

/* the frames pod_burst encapsulated into the uplink's buffer since its
 * fill level was k0: the buffer's level, bytes, planes and counters */
static __rte_always_inline void
uplink_commit(struct dp_wctx *w, const struct dp_net *net, struct dp_txbuf *ub, uint16_t up,
              uint16_t k, uint16_t k0, uint64_t bytes, uint16_t planes)
{
    if (k == k0)
        return;
    ub->n = k;
    ub->bytes += bytes;
    ub->planes |= planes;
    tx_mark(w, up);
    w->net[net->idx][DP_NET_ENCAP] += k - k0;
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
        dp_capture_tap_drop(pi, pkts, n, DP_DROP_NO_NETWORK);
        w->drop[DP_DROP_NO_NETWORK] += n;
        rte_pktmbuf_free_bulk(pkts, n);
        return;
    }
    /* a guarded pod port: only the pod's own frames go on (dp_guard.h) */
    const struct dp_port_guard *g = atomic_load_explicit(&dp_gg.port[pi], memory_order_acquire);
    if (unlikely(g != NULL) && g->spoof_on && (n = guard_burst(w, g, pi, pkts, n)) == 0)
        return;
    uint64_t keys[DP_BURST];
    hash_sig_t sig[DP_BURST];
    uint32_t val[DP_BURST];
    uint32_t fh[DP_BURST];  /* inner flow hash and DSCP, for encapsulation: */
    uint8_t ftos[DP_BURST]; /* a short loop of its own overlaps the frames' loads */
    uint8_t plane = (uint8_t)net->plane;
    uint64_t bytes = pod_scan(w->fc_rest ? w->fdb : NULL, (uint64_t)net->idx << 48, pkts, n, keys,
                              sig, fh, ftos);
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
    /* the common case first (encap_fast), then the frames it left, in
     * their order: those in rest, then the burst from where it stopped */
    uint8_t rest[DP_BURST];
    uint16_t n_rest = 0, from = 0;
    if (likely(up >= 0 && w->n_held == 0))
        from =
            encap_fast(net, pkts, n, hits, val, fh, ftos, ub, &k, &ubytes, &uplanes, rest, &n_rest);
    for (uint16_t i = from; i < n; i++)
        rest[n_rest++] = (uint8_t)i;
    for (uint16_t j = 0; j < n_rest; j++) {
        uint16_t i = rest[j];
        struct rte_mbuf *m = pkts[i];
        if (unlikely(m->data_len < RTE_ETHER_HDR_LEN)) {
            drop(w, m, DP_DROP_TRUNCATED);
            continue;
        }
        /* longer than any network's MTU allows (a DPDK pod sends what it
         * likes; a kernel pod's stack keeps to its MTU): to a local port as
         * well as to the underlay - a VLAN tag or two not counted against
         * the MTU to a local port, as a bridge does (encap_one and flood
         * hold the underlay to it). A super-frame's segments are cut to size. */
        const uint8_t *eth = rte_pktmbuf_mtod(m, const uint8_t *);
        if (unlikely(m->pkt_len > net->max_frame) && !dp_gso_frame(m) &&
            m->pkt_len > net->max_frame + vlan_room(m, eth)) {
            drop(w, m, DP_DROP_OVERSIZE);
            continue;
        }
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
            if (unlikely(dp_gso_frame(m))) {
                /* in its place among the flow's frames (a receiving TCP
                 * takes frames out of order as lost): the frames before it
                 * into the buffer, then it, then on with the fill level */
                uplink_commit(w, net, ub, (uint16_t)up, k, k0, ubytes, uplanes);
                encap_gso(w, net, target, m);
                if (ub->n + (n_rest - j) > DP_TXBUF)
                    tx_flush(w, (uint16_t)up);
                k = k0 = ub->n;
                ubytes = 0;
                uplanes = 0;
                continue;
            }
            ub->m[k] = m;
            k += (uint16_t)encap_one(w, net, target, m, fh[i], ftos[i], m->pkt_len, &ubytes,
                                     &uplanes);
        } else if (unlikely((int)target == in->idx)) {
            drop(w, m, DP_DROP_HAIRPIN);
        } else {
            local++;
            DP_META(m)->plane = plane;
            tx_put(w, (uint16_t)target, m);
        }
    }
    uplink_commit(w, net, ub, (uint16_t)up, k, k0, ubytes, uplanes);
    for (uint16_t i = 0; i < nf; i++) {
        if (unlikely(g != NULL) && !storm_pass(w, g, pi, fl[i])) {
            w->port[pi][DP_PORT_GUARD_DROPS]++;
            drop(w, fl[i], DP_DROP_STORM);
            continue;
        }
        DP_META(fl[i])->plane = plane;
        flood(w, net, in->idx, 1, fl[i]);
    }
    w->net[net->idx][DP_NET_LOCAL] += local;
}

#endif /* DP_ENCAP_H */
