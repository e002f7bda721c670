/*
 * dp_guard.c - the control side of dp_guard.h: a pod port's own addresses
 * (anti-spoofing) and its storm-control rate, published as one immutable
 * snapshot per port.
 */
#include <string.h>

#include <rte_cycles.h>
#include <rte_malloc.h>

#include "dp_control.h"
#include "dp_guard.h"

struct dp_guard_global dp_gg;
static uint32_t guard_gen;

#define DP_STORM_PPS_MAX 100000000u
#define DP_STORM_BURST_MAX 1000000u

static const struct dp_port_guard *
guard_get(int port)
{
    return atomic_load(&dp_gg.port[port]);
}

/* publish g (NULL: none) as port's guard and free the one it replaces; a
 * guard with nothing to check (no address checks, no storm control) is
 * none */
static void
guard_publish(int port, struct dp_port_guard *g)
{
    if (g && !g->spoof_on && !g->storm_pps) {
        rte_free(g);
        g = NULL;
    }
    if (g)
        g->gen = ++guard_gen ? guard_gen : ++guard_gen; /* never 0: fresh buckets */
    struct dp_port_guard *old = atomic_exchange(&dp_gg.port[port], g);
    if (old) {
        dp_sync();
        rte_free(old);
    }
}

/* a copy of port's guard to change, NULL when out of memory */
static struct dp_port_guard *
guard_copy(int port)
{
    struct dp_port_guard *g = rte_zmalloc("dp_guard", sizeof(*g), RTE_CACHE_LINE_SIZE);
    const struct dp_port_guard *cur = guard_get(port);
    if (g && cur)
        *g = *cur;
    return g;
}

static int
guard_port_check(int port)
{
    if (!dp_setup_done)
        return dp_fail(-EINVAL, "dp_setup has not run");
    if (port < 0 || port >= DP_MAX_PORTS)
        return dp_fail(-EINVAL, "port %d out of range", port);
    struct dp_port *p = dp_port_get(port);
    if (!p)
        return dp_fail(-ENOENT, "no port %d", port);
    if (p->role != DP_ROLE_POD)
        return dp_fail(-EINVAL, "port %d (%s) is not a pod port", port, p->name);
    return 0;
}

int
dp_port_guard_set(int port, const uint8_t *mac, const uint32_t *ip4, int n4, const uint8_t *ip6,
                  int n6)
{
    int ret = guard_port_check(port);
    if (ret < 0)
        return ret;
    if (mac && (n4 < 0 || n4 > DP_GUARD_MAX_IP4 || n6 < 0 || n6 > DP_GUARD_MAX_IP6))
        return dp_fail(-EINVAL, "port %d: %d IPv4 and %d IPv6 addresses (at most %d and %d)", port,
                       n4, n6, DP_GUARD_MAX_IP4, DP_GUARD_MAX_IP6);
    if (mac && (mac[0] & 1))
        return dp_fail(-EINVAL, "port %d: a pod's MAC is unicast", port);
    struct dp_port_guard *g = guard_copy(port);
    if (!g)
        return dp_fail(-ENOMEM, "out of memory");
    g->spoof_on = mac != NULL;
    g->n4 = g->n6 = 0;
    if (mac) {
        memcpy(g->mac, mac, 6);
        for (int i = 0; i < n4; i++)
            g->ip4[i] = rte_cpu_to_be_32(ip4[i]);
        memcpy(g->ip6, ip6, (size_t)n6 * 16);
        g->n4 = (uint8_t)n4;
        g->n6 = (uint8_t)n6;
    }
    guard_publish(port, g);
    return 0;
}

int
dp_port_guard_dhcp_server(int port, int allowed)
{
    int ret = guard_port_check(port);
    if (ret < 0)
        return ret;
    struct dp_port_guard *g = guard_copy(port);
    if (!g)
        return dp_fail(-ENOMEM, "out of memory");
    g->dhcp_server = allowed != 0;
    guard_publish(port, g);
    return 0;
}

int
dp_port_storm_set(int port, uint64_t pps, uint32_t burst)
{
    int ret = guard_port_check(port);
    if (ret < 0)
        return ret;
    if (pps > DP_STORM_PPS_MAX)
        return dp_fail(-EINVAL, "port %d: storm rate %lu packets/s above %u", port,
                       (unsigned long)pps, DP_STORM_PPS_MAX);
    if (pps && (burst < 1 || burst > DP_STORM_BURST_MAX))
        return dp_fail(-EINVAL, "port %d: storm burst %u packets not in 1..%u", port, burst,
                       DP_STORM_BURST_MAX);
    struct dp_port_guard *g = guard_copy(port);
    if (!g)
        return dp_fail(-ENOMEM, "out of memory");
    uint64_t hz = rte_get_tsc_hz();
    g->storm_pps = pps;
    g->tok_per_pkt = hz;
    g->storm_tok_max = (uint64_t)burst * hz;
    g->storm_dt_max = pps ? g->storm_tok_max / pps + 1 : 0;
    guard_publish(port, g);
    return 0;
}

void
dp_guard_init(void)
{
    uint64_t hz = rte_get_tsc_hz();
    dp_gg.arp_limit = (struct dp_port_guard){
        .storm_pps = DP_ARP_RATE_PPS,
        .tok_per_pkt = hz,
        .storm_tok_max = (uint64_t)DP_ARP_RATE_BURST * hz,
        .storm_dt_max = (uint64_t)DP_ARP_RATE_BURST * hz / DP_ARP_RATE_PPS + 1,
        .gen = 1,
    };
}

void
dp_guard_clear(int port)
{
    if (port >= 0 && port < DP_MAX_PORTS && guard_get(port))
        guard_publish(port, NULL);
}

void
dp_guard_free_all(void)
{
    for (int i = 0; i < DP_MAX_PORTS; i++)
        rte_free(atomic_exchange(&dp_gg.port[i], NULL));
}

unsigned
dp_pool_in_use(void)
{
    return dp.pool ? rte_mempool_in_use_count(dp.pool) : 0;
}
