/*
 * dp_gso.c - TCP segmentation of GSO super-frames (see dp_gso.h).
 *
 * Copying, not indirect mbufs: a segment is written once into a fresh mbuf
 * (headers from a copy made once per super-frame, payload straight from the
 * source chain), so what leaves owns its data and can be encapsulated in
 * place. The TCP checksum is computed over the segment as it is written out
 * of the cache anyway.
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <netinet/in.h>

#include <rte_byteorder.h>
#include <rte_ether.h>
#include <rte_ip.h>
#include <rte_memcpy.h>
#include <rte_tcp.h>
#include <rte_udp.h>

#include "dp_gso.h"

#define GSO_HDR_MAX 256u /* Ethernet + tags + IP + options + TCP + options */

/* a read position in an mbuf chain */
struct gso_cur {
    const struct rte_mbuf *s;
    uint32_t off;
};

static void
cur_seek(struct gso_cur *c, const struct rte_mbuf *m, uint32_t off)
{
    while (m != NULL && off >= m->data_len) {
        off -= m->data_len;
        m = m->next;
    }
    c->s = m;
    c->off = off;
}

/* Append len bytes at c to the chain head, whose last segment is *last;
 * further segments from mp. The caller checked the source holds len bytes.
 * Returns 0 or -ENOMEM. */
static int
gso_copy(struct rte_mempool *mp, struct rte_mbuf *head, struct rte_mbuf **last, struct gso_cur *c,
         uint32_t len)
{
    while (len != 0) {
        struct rte_mbuf *l = *last;
        uint32_t room = rte_pktmbuf_tailroom(l);

        if (room == 0) {
            struct rte_mbuf *s = rte_pktmbuf_alloc(mp);

            if (s == NULL)
                return -ENOMEM;
            s->data_off = 0; /* no headroom needed past the first segment */
            l->next = s;
            head->nb_segs++;
            *last = s;
            continue;
        }
        uint32_t avail = c->s->data_len - c->off;
        if (avail == 0) {
            c->s = c->s->next;
            c->off = 0;
            continue;
        }
        uint32_t k = RTE_MIN(RTE_MIN(room, avail), len);
        rte_memcpy(rte_pktmbuf_mtod_offset(l, uint8_t *, l->data_len),
                   rte_pktmbuf_mtod_offset(c->s, const uint8_t *, c->off), k);
        l->data_len = (uint16_t)(l->data_len + k);
        head->pkt_len += k;
        c->off += k;
        len -= k;
    }
    return 0;
}

static inline uint16_t
csum_fold32(uint32_t sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

/* the destination of an IPv6 packet's transport checksum (ip6: its header
 * and extension headers, l3 bytes in all): its last one, past a routing
 * header (RFC 8200 8.1: the final destination) - the last address of a
 * type 0 or 2 header, Segment List[0] of a segment routing header (type 4,
 * RFC 8754) - else the header's */
static const uint8_t *
ip6_final_dst(const uint8_t *ip6, uint32_t l3)
{
    const uint8_t *dst = ip6 + 24;
    uint32_t off = sizeof(struct rte_ipv6_hdr);
    uint8_t nh = ip6[6];
    while (off + 8 <= l3 &&
           (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS)) {
        const uint8_t *x = ip6 + off;
        uint32_t len = ((uint32_t)x[1] + 1) * 8;
        if (off + len > l3)
            break;
        if (nh == IPPROTO_ROUTING && x[3] != 0 && x[1] >= 2) { /* segments left */
            if (x[2] == 4)
                dst = x + 8;
            else if (x[2] == 0 || x[2] == 2)
                dst = x + 8 + 16 * (x[1] / 2 - 1);
        }
        nh = x[0];
        off += len;
    }
    return dst;
}

int
dp_gso_segment(struct rte_mbuf *m, struct rte_mempool *mp, struct rte_mbuf **out, unsigned max)
{
    const uint32_t l2 = m->l2_len, l3 = m->l3_len, l4 = m->l4_len, mss = m->tso_segsz;
    /* VXLAN-encapsulated: outer Ethernet + IPv4, then l2 is outer UDP +
     * VXLAN + inner Ethernet; il: where the inner IP header starts */
    const int tun = (m->ol_flags & RTE_MBUF_F_TX_TUNNEL_MASK) != 0;
    const uint32_t ol2 = tun ? m->outer_l2_len : 0, ol3 = tun ? m->outer_l3_len : 0;
    const uint32_t il = ol2 + ol3 + l2;
    const uint32_t hl = il + l3 + l4;
    const int v4 = (m->ol_flags & RTE_MBUF_F_TX_IPV4) != 0;
    const int udp = (m->ol_flags & RTE_MBUF_F_TX_UDP_SEG) != 0;
    uint8_t hdr[GSO_HDR_MAX];

    /* the headers the driver described, and a payload to cut */
    if (mss == 0 || l2 < RTE_ETHER_HDR_LEN ||
        (tun && (ol2 < RTE_ETHER_HDR_LEN || ol3 < sizeof(struct rte_ipv4_hdr) ||
                 l2 < sizeof(struct rte_udp_hdr) + 8 + RTE_ETHER_HDR_LEN)) ||
        l4 < (udp ? sizeof(struct rte_udp_hdr) : sizeof(struct rte_tcp_hdr)) ||
        l3 < (v4 ? sizeof(struct rte_ipv4_hdr) : sizeof(struct rte_ipv6_hdr)) || hl > GSO_HDR_MAX ||
        hl >= m->pkt_len)
        return -EINVAL;
    const uint32_t pay = m->pkt_len - hl;
    const uint32_t n = (pay + mss - 1) / mss;
    if (n > max)
        return -EINVAL;
    const uint8_t *h = rte_pktmbuf_read(m, 0, hl, hdr);
    if (h == NULL)
        return -EINVAL;
    if (h != hdr)
        memcpy(hdr, h, hl);

    /* what every segment starts from */
    /* (TCP's: a UDP header is 8 bytes, and what follows it was not read) */
    const struct rte_tcp_hdr *th0 = (const struct rte_tcp_hdr *)(hdr + il + l3);
    const uint32_t seq0 = udp ? 0 : rte_be_to_cpu_32(th0->sent_seq);
    const uint8_t flags0 = udp ? 0 : th0->tcp_flags;
    uint16_t id0 = 0, oid0 = 0;
    if (tun)
        oid0 = rte_be_to_cpu_16(((const struct rte_ipv4_hdr *)(hdr + ol2))->packet_id);
    uint32_t psum; /* pseudo-header: addresses and protocol, no length */
    if (v4) {
        const struct rte_ipv4_hdr *ip = (const struct rte_ipv4_hdr *)(hdr + il);
        id0 = rte_be_to_cpu_16(ip->packet_id);
        psum = rte_raw_cksum(&ip->src_addr, 8);
    } else {
        const uint8_t *ip6 = hdr + il;
        /* the source, and the final destination (a routing header's) */
        psum = rte_raw_cksum(ip6 + 8, 16) + rte_raw_cksum(ip6_final_dst(ip6, l3), 16);
    }
    psum += rte_cpu_to_be_16(udp ? IPPROTO_UDP : IPPROTO_TCP);

    if (rte_pktmbuf_alloc_bulk(mp, out, n) != 0)
        return -ENOMEM;
    struct gso_cur c;
    cur_seek(&c, m, hl);
    for (uint32_t i = 0; i < n; i++) {
        struct rte_mbuf *s = out[i], *last = s;
        const uint32_t plen = RTE_MIN(mss, pay - i * mss);
        uint8_t *d = rte_pktmbuf_mtod(s, uint8_t *);

        /* headers, then this segment's payload */
        rte_memcpy(d, hdr, hl);
        s->data_len = (uint16_t)hl;
        s->pkt_len = hl;
        if (gso_copy(mp, s, &last, &c, plen) < 0) {
            rte_pktmbuf_free_bulk(out, n);
            return -ENOMEM;
        }
        s->port = m->port;
        memcpy(s->dynfield1, m->dynfield1, sizeof(s->dynfield1)); /* plane, rx time */

        /* outer IPv4 and UDP of a VXLAN frame: lengths, id, checksums */
        if (tun) {
            struct rte_ipv4_hdr *oip = (struct rte_ipv4_hdr *)(d + ol2);
            struct rte_udp_hdr *ou = (struct rte_udp_hdr *)(d + ol2 + ol3);
            oip->total_length = rte_cpu_to_be_16((uint16_t)(ol3 + l2 + l3 + l4 + plen));
            oip->packet_id = rte_cpu_to_be_16((uint16_t)(oid0 + i));
            oip->hdr_checksum = 0;
            oip->hdr_checksum = (uint16_t)~rte_raw_cksum(oip, ol3);
            ou->dgram_len = rte_cpu_to_be_16((uint16_t)(l2 + l3 + l4 + plen));
            ou->dgram_cksum = 0; /* optional over IPv4 (RFC 7348) */
        }

        /* IP lengths, id, header checksum */
        if (v4) {
            struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(d + il);
            ip->total_length = rte_cpu_to_be_16((uint16_t)(l3 + l4 + plen));
            ip->packet_id = rte_cpu_to_be_16((uint16_t)(id0 + i));
            ip->hdr_checksum = 0;
            ip->hdr_checksum = (uint16_t)~rte_raw_cksum(ip, l3);
        } else {
            struct rte_ipv6_hdr *ip6 = (struct rte_ipv6_hdr *)(d + il);
            ip6->payload_len = rte_cpu_to_be_16((uint16_t)(l3 - sizeof(*ip6) + l4 + plen));
        }

        /* UDP length, or TCP sequence and the flags of a first / middle /
         * last segment; then the checksum */
        unaligned_uint16_t *ck;
        if (udp) {
            struct rte_udp_hdr *uh = (struct rte_udp_hdr *)(d + il + l3);
            uh->dgram_len = rte_cpu_to_be_16((uint16_t)(l4 + plen));
            ck = (unaligned_uint16_t *)((uint8_t *)uh + offsetof(struct rte_udp_hdr, dgram_cksum));
        } else {
            struct rte_tcp_hdr *th = (struct rte_tcp_hdr *)(d + il + l3);
            uint8_t fl = flags0;
            if (i + 1 != n)
                fl &= (uint8_t) ~(RTE_TCP_FIN_FLAG | RTE_TCP_PSH_FLAG);
            if (i != 0)
                fl &= (uint8_t)~RTE_TCP_CWR_FLAG;
            th->tcp_flags = fl;
            th->sent_seq = rte_cpu_to_be_32(seq0 + i * mss);
            ck = (unaligned_uint16_t *)((uint8_t *)th + offsetof(struct rte_tcp_hdr, cksum));
        }
        *ck = 0;
        uint16_t raw = 0;
        (void)rte_raw_cksum_mbuf(s, il + l3, l4 + plen, &raw); /* in range: just written */
        uint32_t sum = psum + rte_cpu_to_be_16((uint16_t)(l4 + plen)) + raw;
        uint16_t cs = (uint16_t)~csum_fold32(sum);
        *ck = udp && cs == 0 ? 0xffff : cs; /* 0 means "no checksum" to UDP */
    }
    return (int)n;
}
