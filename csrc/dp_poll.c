/*
 * dp_poll.c - the poll lists: which worker polls which (port, rx queue).
 * A port's queue 0 goes to the worker it was dealt (the least loaded when it
 * was added) unless its network's plane has a worker of its own; a queue
 * above 0 goes to the worker of the plane that claims that queue number.
 */
#include <stdlib.h>

#include "dp_control.h"

/* the worker that polls rx queue q of port p (p->worker: the shared worker
 * it was dealt, which a plane with a worker of its own overrides) */
int
dp_rxq_worker(const struct dp_port *p, int q)
{
    int w = p->worker;
    if (q > 0) {
        /* a plane that claims this queue number, with a worker of its own */
        int pw = dp_plane_rxq_worker(q);
        if (pw >= 0)
            return pw;
    } else if (p->net >= 0) {
        /* a plane given its own worker gets its pod ports polled there */
        struct dp_net *n = atomic_load(&dp.nets[p->net]);
        int pw = n ? dp_plane_worker(n->plane) : -1;
        if (pw >= 0)
            w = pw;
    }
    return w;
}

static int
poll_has(const struct dp_poll_list *pl, uint16_t port, uint16_t q)
{
    for (uint16_t i = 0; pl && i < pl->n; i++)
        if (pl->e[i].port == port && pl->e[i].queue == q)
            return 1;
    return 0;
}

/*
 * Rebuild every worker's poll list from the published ports. An rx queue is
 * never polled by two workers at once: a queue that changes workers is first
 * taken off the old list (and a grace period waited), then put on the new.
 */
void
dp_poll_rebuild(void)
{
    struct dp_poll_list *want[DP_MAX_WORKERS], *old[DP_MAX_WORKERS];
    for (int w = 0; w < dp.n_workers; w++) {
        want[w] = calloc(1, sizeof(*want[w]));
        if (!want[w])
            abort();
    }
    for (int i = 0; i < DP_MAX_PORTS; i++) {
        struct dp_port *p = dp_port_get(i);
        for (int q = 0; p && q < p->n_rxq; q++) {
            struct dp_poll_list *pl = want[dp_rxq_worker(p, q)];
            pl->e[pl->n].port = (uint16_t)i;
            pl->e[pl->n++].queue = (uint16_t)q;
        }
    }
    /* 1: each worker keeps only what stays its own */
    for (int w = 0; w < dp.n_workers; w++) {
        struct dp_poll_list *cur = atomic_load(&dp.poll[w]);
        struct dp_poll_list *keep = calloc(1, sizeof(*keep));
        if (!keep)
            abort();
        for (uint16_t k = 0; k < want[w]->n; k++)
            if (poll_has(cur, want[w]->e[k].port, want[w]->e[k].queue))
                keep->e[keep->n++] = want[w]->e[k];
        old[w] = atomic_exchange(&dp.poll[w], keep);
    }
    dp_sync();
    for (int w = 0; w < dp.n_workers; w++) {
        free(old[w]);
        old[w] = atomic_exchange(&dp.poll[w], want[w]);
    }
    /* 2: the new lists; the old ones are free once no worker reads them */
    dp_sync();
    for (int w = 0; w < dp.n_workers; w++)
        free(old[w]);
}

/* the worker with the fewest ports' queue 0: where a new port goes */
int
dp_least_loaded_worker(void)
{
    int load[DP_MAX_WORKERS] = {0};
    for (int i = 0; i < DP_MAX_PORTS; i++) {
        struct dp_port *p = dp_port_get(i);
        if (p)
            load[dp_rxq_worker(p, 0)]++;
    }
    int best = 0;
    for (int w = 1; w < dp.n_workers; w++)
        if (load[w] < load[best])
            best = w;
    return best;
}

void
dp_poll_free_all(void)
{
    for (int w = 0; w < DP_MAX_WORKERS; w++)
        free(atomic_exchange(&dp.poll[w], NULL));
}
