/*
 * dp_plane.c - the control side of network planes: port shapers and the
 * plane queues' depths. The scheduler itself (dp_qos.c) is told what to do
 * and never calls back.
 */
#include <errno.h>

#include <rte_malloc.h>

#include "dp_control.h"
#include "dp_qos.h"

int
dp_port_shaper(int idx, uint64_t rate_bps, uint32_t burst_bytes)
{
    struct dp_port *p = dp_port_get(idx);
    if (!p)
        return dp_fail(-ENOENT, "no port %d", idx);
    if (rate_bps && rate_bps < 8000)
        return dp_fail(-EINVAL, "port %d: shaper rate %lu bit/s below 8000", idx,
                       (unsigned long)rate_bps);
    if (rate_bps && burst_bytes < 2048)
        return dp_fail(-EINVAL, "port %d: shaper burst %u bytes below one frame (2048)", idx,
                       burst_bytes);
    struct dp_port *np = rte_zmalloc("dp_port", sizeof(*np), RTE_CACHE_LINE_SIZE);
    if (!np)
        return dp_fail(-ENOMEM, "out of memory");
    *np = *p;
    np->qos = NULL;
    if (rate_bps) {
        np->qos = dp_qos_new(idx, rate_bps, burst_bytes);
        if (!np->qos) {
            rte_free(np);
            return dp_fail(-ENOMEM, "port %d: cannot create the plane queues", idx);
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
    struct dp_port *p = dp_port_get(idx);
    if (!p || plane < 0 || plane >= DP_MAX_PLANES)
        return dp_fail(-EINVAL, "no port %d / plane %d", idx, plane);
    if (!p->qos)
        return 0;
    return (int)rte_ring_count(p->qos->q[plane]) + (p->qos->head[plane] != NULL);
}
