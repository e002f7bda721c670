/*
 * dp_ring.c - frames into and out of ring ports (dp_port_add_ring), for tests
 * and tools: copied into mbufs and onto a port's rx ring, or off its tx ring
 * into the caller's buffer.
 */
#include <errno.h>
#include <string.h>

#include "dp_control.h"

int
dp_ring_inject(int idx, int queue, const uint8_t *data, const uint32_t *lens, int n)
{
    struct dp_port *p = dp_port_get(idx);
    if (!p || !p->ring_tx)
        return dp_fail(-EINVAL, "port %d is not a ring port", idx);
    if (queue < 0 || queue >= p->n_rxq)
        return dp_fail(-EINVAL, "port %d has no rx queue %d (it has %u)", idx, queue, p->n_rxq);
    struct rte_ring *ring = p->ring_rx[queue];
    int done = 0;
    size_t off = 0;
    while (done < n) {
        struct rte_mbuf *m[DP_BURST];
        int k = n - done < DP_BURST ? n - done : DP_BURST;
        if (rte_pktmbuf_alloc_bulk(dp.pool, m, (unsigned)k) != 0)
            return dp_fail(-ENOBUFS, "mbuf pool empty after %d frames", done);
        for (int i = 0; i < k; i++) {
            uint32_t len = lens[done + i];
            char *d = rte_pktmbuf_append(m[i], (uint16_t)len);
            if (!d || len > UINT16_MAX) {
                rte_pktmbuf_free_bulk(m, (unsigned)k);
                return dp_fail(-EMSGSIZE, "frame %d of %u bytes does not fit an mbuf", done + i,
                               len);
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
    struct dp_port *p = dp_port_get(idx);
    if (!p || !p->ring_tx)
        return dp_fail(-EINVAL, "port %d is not a ring port", idx);
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
            return dp_fail(-ENOBUFS, "collect buffer of %zu bytes too small", buf_len);
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
