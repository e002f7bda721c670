/*
 * dp_poll.c - the poll lists: which worker polls which (port, rx queue).
 * A port's queue 0 goes to the worker it was dealt (the least loaded when it
 * was added) unless its network's plane has a worker of its own; a queue
 * above 0 goes to the worker of the plane that claims that queue number.
 *
 * A change is planned first (every list allocated: the only step that can
 * fail) and applied after (cannot fail), so a caller that has more to
 * prepare changes nothing until all of it is ready.
 */
#include <errno.h>
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

/* new lists for every worker: what each will poll, and what it keeps
 * meanwhile (filled when applied) */
struct dp_poll_plan {
    struct dp_poll_list *want[DP_MAX_WORKERS];
    struct dp_poll_list *keep[DP_MAX_WORKERS];
};

void
dp_poll_plan_free(struct dp_poll_plan *plan)
{
    if (!plan)
        return;
    for (int w = 0; w < DP_MAX_WORKERS; w++) {
        free(plan->want[w]);
        free(plan->keep[w]);
    }
    free(plan);
}

/*
 * The poll lists as they are to be once port slot idx holds p (p NULL: the
 * port is gone; idx -1: the ports as published, after a plane's change).
 * NULL when out of memory.
 */
struct dp_poll_plan *
dp_poll_plan(int idx, const struct dp_port *p)
{
    struct dp_poll_plan *plan = calloc(1, sizeof(*plan));
    if (!plan)
        return NULL;
    for (int w = 0; w < dp.n_workers; w++) {
        plan->want[w] = calloc(1, sizeof(*plan->want[w]));
        plan->keep[w] = calloc(1, sizeof(*plan->keep[w]));
        if (!plan->want[w] || !plan->keep[w]) {
            dp_poll_plan_free(plan);
            return NULL;
        }
    }
    for (int i = 0; i < DP_MAX_PORTS; i++) {
        const struct dp_port *q = i == idx ? p : dp_port_get(i);
        for (int rq = 0; q && rq < q->n_rxq; rq++) {
            struct dp_poll_list *pl = plan->want[dp_rxq_worker(q, rq)];
            pl->e[pl->n].port = (uint16_t)i;
            pl->e[pl->n++].queue = (uint16_t)rq;
        }
    }
    return plan;
}

/*
 * Publish a plan's lists and free it. An rx queue is never polled by two
 * workers at once: a queue that changes workers is first taken off the old
 * list (and a grace period waited), then put on the new.
 */
void
dp_poll_apply(struct dp_poll_plan *plan)
{
    struct dp_poll_list *old[DP_MAX_WORKERS];
    /* 1: each worker keeps only what stays its own */
    for (int w = 0; w < dp.n_workers; w++) {
        struct dp_poll_list *cur = atomic_load(&dp.poll[w]);
        struct dp_poll_list *want = plan->want[w], *keep = plan->keep[w];
        for (uint16_t k = 0; k < want->n; k++)
            if (poll_has(cur, want->e[k].port, want->e[k].queue))
                keep->e[keep->n++] = want->e[k];
        old[w] = atomic_exchange(&dp.poll[w], keep);
    }
    dp_sync();
    for (int w = 0; w < dp.n_workers; w++) {
        free(old[w]);
        old[w] = atomic_exchange(&dp.poll[w], plan->want[w]);
    }
    /* 2: the new lists; the old ones are free once no worker reads them */
    dp_sync();
    for (int w = 0; w < dp.n_workers; w++)
        free(old[w]);
    free(plan); /* its lists are published */
}

/* re-deal every (port, queue) pair as the ports and planes now say */
int
dp_poll_rebuild(void)
{
    struct dp_poll_plan *plan = dp_poll_plan(-1, NULL);
    if (!plan)
        return dp_fail(-ENOMEM, "out of memory for the workers' poll lists");
    dp_poll_apply(plan);
    return 0;
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
