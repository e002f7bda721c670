/*
 * dp_counters.c - the counter blocks Python reads (dp_counter_block), the
 * names of their columns (from the X-macro lists of dp_counters.h), and
 * what it takes to read the latency histograms (bucket bounds, TSC rate).
 */
#include <errno.h>

#include <rte_cycles.h>

#include "dp_control.h"
#include "dp_qos.h"

#define _(sym, str) str,
static const char *const port_names[] = {foreach_dp_port_ctr};
static const char *const net_names[] = {foreach_dp_net_ctr};
static const char *const drop_names[] = {foreach_dp_drop};
static const char *const worker_names[] = {foreach_dp_worker_ctr};
static const char *const qos_names[] = {foreach_dp_qos_ctr};
#undef _

/* a block as laid out in struct dp_counters: member m, rows of type row */
#define DP_CTR(m) (((struct dp_counters *)0)->m)
#define BLOCK(m, row, n_named, name_list)                                                          \
    {                                                                                              \
        .off = offsetof(struct dp_counters, m), .n_rows = sizeof(DP_CTR(m)) / sizeof(DP_CTR(row)), \
        .row_len = sizeof(DP_CTR(row)) / sizeof(uint64_t), .count = (n_named),                     \
        .names = (name_list),                                                                      \
    }

static const struct {
    size_t off;               /* in struct dp_counters */
    size_t n_rows, row_len;   /* rows of all workers, uint64_t per row */
    int count;                /* named columns: the first of each row */
    const char *const *names; /* NULL: every column is a "bucket" */
} blocks[] = {
    [DP_BLOCK_PORT] = BLOCK(port, port[0][0], DP_PORT_CTR_COUNT, port_names),
    [DP_BLOCK_NET] = BLOCK(net, net[0][0], DP_NET_CTR_COUNT, net_names),
    [DP_BLOCK_DROP] = BLOCK(drop, drop[0], DP_DROP_COUNT, drop_names),
    [DP_BLOCK_WORKER] = BLOCK(worker, worker[0], DP_WORKER_CTR_COUNT, worker_names),
    [DP_BLOCK_QOS] = BLOCK(qos, qos[0][0][0], DP_QOS_CTR_COUNT, qos_names),
    [DP_BLOCK_LAT] = BLOCK(lat, lat[0][0], DP_LAT_BUCKETS, NULL),
};
_Static_assert(RTE_DIM(blocks) == DP_BLOCK_LAT + 1, "a description for every DP_BLOCK_*");

static int
block_ok(int block)
{
    return block >= 0 && block < (int)RTE_DIM(blocks);
}

uint64_t *
dp_counter_block(int block, size_t *n_rows, size_t *row_len)
{
    if (!dp.ctr || !block_ok(block))
        return NULL;
    *n_rows = blocks[block].n_rows;
    *row_len = blocks[block].row_len;
    return (uint64_t *)((char *)dp.ctr + blocks[block].off);
}

int
dp_counter_count(int block)
{
    return block_ok(block) ? blocks[block].count : 0;
}

const char *
dp_counter_name(int block, int i)
{
    if (i < 0 || i >= dp_counter_count(block))
        return NULL;
    return blocks[block].names ? blocks[block].names[i] : "bucket";
}

/* the upper bound of latency bucket idx (the last bucket has none) */
int
dp_lat_bound_ns(int idx, uint64_t *ns)
{
    if (idx < 0 || idx >= DP_LAT_BOUNDS)
        return dp_fail(-EINVAL, "latency bucket %d has no bound (0..%d have)", idx,
                       DP_LAT_BOUNDS - 1);
    *ns = dp_lat_bounds_ns[idx];
    return 0;
}

/* the unit of the latency sums (DP_LAT_SUM): TSC cycles per second */
uint64_t
dp_tsc_hz(void)
{
    return rte_get_tsc_hz();
}
