/*
 * dp_counters.c - the counter blocks Python reads (dp_counter_block) and
 * the names of their columns.
 */
#include <errno.h>

#include <rte_cycles.h>

#include "dp_control.h"
#include "dp_qos.h"

static const char *const drop_names[] = {
#define _(sym, str) str,
    foreach_dp_drop
#undef _
};

static const char *const port_ctr_names[] = {"rx_packets", "rx_bytes", "tx_packets", "tx_bytes"};

static const char *const net_ctr_names[] = {"encap_packets", "decap_packets", "flood_packets",
                                            "local_packets"};

static const char *const worker_ctr_names[] = {"polls", "busy_polls", "fdb_lookups",
                                               "fdb_cache_misses"};

static const char *const qos_ctr_names[] = {"enqueued", "sent", "dropped", "sent_bytes"};

uint64_t *
dp_counter_block(int block, size_t *n_rows, size_t *row_len)
{
    if (!dp.ctr)
        return NULL;
    switch (block) {
    case DP_BLOCK_PORT:
        *n_rows = DP_MAX_WORKERS * DP_MAX_PORTS;
        *row_len = DP_PORT_CTR_COUNT;
        return &dp.ctr->port[0][0][0];
    case DP_BLOCK_NET:
        *n_rows = DP_MAX_WORKERS * DP_MAX_NETS;
        *row_len = DP_NET_CTR_COUNT;
        return &dp.ctr->net[0][0][0];
    case DP_BLOCK_DROP:
        *n_rows = DP_MAX_WORKERS;
        *row_len = DP_DROP_COUNT + 1;
        return &dp.ctr->drop[0][0];
    case DP_BLOCK_WORKER:
        *n_rows = DP_MAX_WORKERS;
        *row_len = 8;
        return &dp.ctr->worker[0][0];
    case DP_BLOCK_QOS:
        *n_rows = DP_MAX_WORKERS * DP_MAX_PORTS * DP_MAX_PLANES;
        *row_len = DP_QOS_CTR_COUNT;
        return &dp.ctr->qos[0][0][0][0];
    case DP_BLOCK_LAT:
        *n_rows = DP_MAX_WORKERS * DP_MAX_PLANES;
        *row_len = DP_LAT_ROW;
        return &dp.ctr->lat[0][0][0];
    }
    return NULL;
}

int
dp_counter_count(int block)
{
    switch (block) {
    case DP_BLOCK_PORT: return DP_PORT_CTR_COUNT;
    case DP_BLOCK_NET: return DP_NET_CTR_COUNT;
    case DP_BLOCK_DROP: return DP_DROP_COUNT;
    case DP_BLOCK_WORKER: return DP_WORKER_CTR_COUNT;
    case DP_BLOCK_QOS: return DP_QOS_CTR_COUNT;
    case DP_BLOCK_LAT: return DP_LAT_BUCKETS;
    }
    return 0;
}

const char *
dp_counter_name(int block, int i)
{
    if (i < 0 || i >= dp_counter_count(block))
        return NULL;
    switch (block) {
    case DP_BLOCK_PORT: return port_ctr_names[i];
    case DP_BLOCK_NET: return net_ctr_names[i];
    case DP_BLOCK_DROP: return drop_names[i];
    case DP_BLOCK_WORKER: return worker_ctr_names[i];
    case DP_BLOCK_QOS: return qos_ctr_names[i];
    case DP_BLOCK_LAT: return "bucket";
    }
    return NULL;
}

/* the upper bound of latency bucket idx (the last bucket has none) */
int
dp_lat_bound_ns(int idx, uint64_t *ns)
{
    if (idx < 0 || idx >= 16)
        return dp_fail(-EINVAL, "latency bucket %d has no bound (0..%d have)", idx, 16 - 1);
    *ns = dp_lat_bounds_ns[idx];
    return 0;
}

/* the unit of the latency sums (DP_LAT_SUM): TSC cycles per second */
uint64_t
dp_tsc_hz(void)
{
    return rte_get_tsc_hz();
}
