/*
 * dp_plane.c - the control side of network planes: a plane's settings
 * checked and handed to the scheduler (dp_qos.c), the worker and rx queue a
 * plane may have of its own (which the poll lists read, dp_poll.c), DSCP
 * maps, port shapers and the plane queues' depths.
 *
 * Dependencies point one way: this file calls down into dp_qos.c, which
 * never calls back.
 */
#include <errno.h>

#include <rte_malloc.h>

#include "dp_control.h"
#include "dp_qos.h"

/* per plane: the worker that polls its networks' pod ports and the rx queue
 * number (of multi-queue ports) it claims; -1 = none of its own */
struct dp_plane_poll {
    int worker;
    int rx_queue;
};
static struct dp_plane_poll plane_poll[DP_MAX_PLANES] = {
    [0 ... DP_MAX_PLANES - 1] = {.worker = -1, .rx_queue = -1}};

int
dp_plane_worker(int plane)
{
    int w = plane >= 0 && plane < DP_MAX_PLANES ? plane_poll[plane].worker : -1;
    return w < dp.n_workers ? w : -1;
}

int
dp_plane_rxq_worker(int q)
{
    for (int pl = 0; pl < DP_MAX_PLANES; pl++)
        if (q >= 1 && plane_poll[pl].rx_queue == q)
            return dp_plane_worker(pl);
    return -1;
}

int
dp_plane_set(int plane, const struct dp_plane_conf *c)
{
    if (plane < 0 || plane >= DP_MAX_PLANES)
        return dp_fail(-EINVAL, "plane %d out of range 0..%d", plane, DP_MAX_PLANES - 1);
    if (c->queue_len < 16 || c->queue_len > (1u << 20) || (c->queue_len & (c->queue_len - 1)))
        return dp_fail(-EINVAL, "plane %d: queue length %u is not a power of two in 16..1048576",
                       plane, c->queue_len);
    if (c->dscp < -1 || c->dscp > 63)
        return dp_fail(-EINVAL, "plane %d: DSCP %d out of range 0..63 (or -1)", plane, c->dscp);
    if (c->max_bps && c->min_bps > c->max_bps)
        return dp_fail(-EINVAL, "plane %d: guaranteed rate above its maximum", plane);
    /* (a rate far below it would round to no rate at all: no limit) */
    if ((c->max_bps && c->max_bps < DP_SHAPER_RATE_MIN) ||
        (c->min_bps && c->min_bps < DP_SHAPER_RATE_MIN))
        return dp_fail(-EINVAL, "plane %d: a rate below %u bit/s (0 for none)", plane,
                       DP_SHAPER_RATE_MIN);
    if (c->worker < -1 || c->worker >= dp.n_workers)
        return dp_fail(-EINVAL, "plane %d: worker %d does not exist (%d workers)", plane, c->worker,
                       dp.n_workers);
    if (c->rx_queue != -1 && (c->rx_queue < 1 || c->rx_queue >= DP_MAX_RXQ))
        return dp_fail(-EINVAL,
                       "plane %d: rx queue %d out of range 1..%d (queue 0 is the port's own)",
                       plane, c->rx_queue, DP_MAX_RXQ - 1);
    if (c->rx_queue >= 1 && c->worker < 0)
        return dp_fail(-EINVAL, "plane %d: an rx queue of its own needs a worker of its own",
                       plane);
    for (int p = 0; p < DP_MAX_PLANES; p++) {
        if (p == plane || !dp_qg.plane[p].used)
            continue;
        if (dp_qg.plane[p].priority == c->priority)
            return dp_fail(-EEXIST, "plane %d: priority %d is already plane %d's", plane,
                           c->priority, p);
        if (c->rx_queue >= 1 && plane_poll[p].rx_queue == c->rx_queue)
            return dp_fail(-EEXIST, "plane %d: rx queue %d is already plane %d's", plane,
                           c->rx_queue, p);
    }
    int moved = plane_poll[plane].worker != c->worker ||
                plane_poll[plane].rx_queue != c->rx_queue || !dp_qg.plane[plane].used;
    struct dp_poll_plan *plan = NULL;
    if (moved && dp_setup_done) {
        /* its ports and queues to its worker: the lists as they will be */
        struct dp_plane_poll was = plane_poll[plane];
        plane_poll[plane].worker = c->worker;
        plane_poll[plane].rx_queue = c->rx_queue;
        plan = dp_poll_plan(-1, NULL);
        plane_poll[plane] = was;
        if (!plan)
            return dp_fail(-ENOMEM, "plane %d: out of memory for the workers' poll lists", plane);
    }
    plane_poll[plane].worker = c->worker;
    plane_poll[plane].rx_queue = c->rx_queue;
    dp_qos_plane_set(plane, c);
    dp_express_uplink(); /* the marking, for the lane */
    if (plan)
        dp_poll_apply(plan);
    return 0;
}

int
dp_qos_mode(int priority_on, int latency_on)
{
    dp_qos_set_mode(priority_on, latency_on);
    return 0;
}

int
dp_dscp_plane(int dscp, int plane)
{
    if (dscp < 0 || dscp > 63)
        return dp_fail(-EINVAL, "DSCP %d out of range 0..63", dscp);
    if (plane >= DP_MAX_PLANES || (plane >= 0 && !dp_qg.plane[plane].used))
        return dp_fail(-EINVAL, "plane %d is not configured", plane);
    dp_qos_set_dscp_plane(dscp, plane);
    dp_express_uplink();
    return 0;
}

int
dp_port_shaper(int idx, uint64_t rate_bps, uint32_t burst_bytes)
{
    struct dp_port *p = dp_port_get(idx);
    if (!p)
        return dp_fail(-ENOENT, "no port %d", idx);
    if (rate_bps && rate_bps < DP_SHAPER_RATE_MIN)
        return dp_fail(-EINVAL, "port %d: shaper rate %lu bit/s below %u", idx,
                       (unsigned long)rate_bps, DP_SHAPER_RATE_MIN);
    if (rate_bps && burst_bytes < DP_SHAPER_BURST_MIN)
        return dp_fail(-EINVAL, "port %d: shaper burst %u bytes below one frame (%u)", idx,
                       burst_bytes, DP_SHAPER_BURST_MIN);
    if (burst_bytes > DP_SHAPER_BURST_MAX)
        return dp_fail(-EINVAL, "port %d: shaper burst %u bytes above %u", idx, burst_bytes,
                       DP_SHAPER_BURST_MAX);
    if (p->qos && rate_bps) {
        /* shaped already: a new rate in place, nothing queued is lost */
        dp_qos_set_rate(p->qos, rate_bps, burst_bytes);
        return 0;
    }
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
    /* frames still queued are freed with it, and counted: as a drop and
     * against their plane (its enqueued = sent + dropped + queued holds) */
    dp.ctr->drop[DP_CTRL_ROW][DP_DROP_QUEUE_FLUSHED] +=
        dp_qos_free_counted(old, dp.ctr->qos[DP_CTRL_ROW][idx]);
    dp_express_uplink(); /* the lane leaves a shaped uplink to the core */
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
    return (int)dp_qos_queued(p->qos, plane);
}
