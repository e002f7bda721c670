/*
 * dp_net.c - networks: a VNI, a plane, the local (pod) ports, the remote
 * VTEPs a broadcast or unknown unicast frame is flooded to. A network is an
 * immutable snapshot; every change publishes a modified copy.
 */
#include <errno.h>
#include <string.h>

#include <rte_malloc.h>

#include "dp_control.h"

struct dp_net *
dp_net_get(int net)
{
    if (net < 0 || net >= DP_MAX_NETS)
        return NULL;
    return atomic_load(&dp.nets[net]);
}

/* publish a modified copy of a network */
static struct dp_net *
net_clone(int net)
{
    struct dp_net *o = dp_net_get(net);
    struct dp_net *n = rte_malloc("dp_net", sizeof(*n), RTE_CACHE_LINE_SIZE);
    if (n && o)
        *n = *o;
    return n;
}

static void
net_publish(int net, struct dp_net *n)
{
    struct dp_net *old = atomic_exchange(&dp.nets[net], n);
    dp_sync();
    rte_free(old);
}

int
dp_net_add(int net, uint32_t vni, int plane)
{
    if (!dp_setup_done)
        return dp_fail(-EINVAL, "dp_setup not done");
    if (net < 0 || net >= DP_MAX_NETS)
        return dp_fail(-EINVAL, "network index %d out of range 0..%d", net, DP_MAX_NETS - 1);
    if (vni == 0 || vni > DP_VNI_MAX)
        return dp_fail(-EINVAL, "VNI %u out of range 1..%u", vni, DP_VNI_MAX);
    if (plane < 0 || plane >= DP_MAX_PLANES)
        return dp_fail(-EINVAL, "plane %d out of range 0..%d", plane, DP_MAX_PLANES - 1);
    if (dp_net_get(net))
        return dp_fail(-EEXIST, "network %d already exists", net);
    void *d;
    if (rte_hash_lookup_data(dp.vnis, &vni, &d) >= 0)
        return dp_fail(-EEXIST, "VNI %u already belongs to network %d", vni, (int)(uintptr_t)d);
    struct dp_net *n = rte_zmalloc("dp_net", sizeof(*n), RTE_CACHE_LINE_SIZE);
    if (!n)
        return dp_fail(-ENOMEM, "out of memory");
    n->idx = net;
    n->vni = vni;
    n->vni_be_word = rte_cpu_to_be_32(vni << 8);
    n->plane = plane;
    n->max_frame = dp_max_frame();
    dp.net_plane[net] = (uint8_t)plane;
    int ret = rte_hash_add_key_data(dp.vnis, &vni, (void *)(uintptr_t)net);
    if (ret != 0) {
        rte_free(n);
        return dp_fail(ret, "cannot add VNI %u to the VNI table", vni);
    }
    for (int w = 0; w < DP_MAX_WORKERS; w++)
        memset(dp.ctr->net[w][net], 0, sizeof(dp.ctr->net[w][net]));
    net_publish(net, n);
    return 0;
}

int
dp_net_del(int net)
{
    struct dp_net *n = dp_net_get(net);
    if (!n)
        return dp_fail(-ENOENT, "no network %d", net);
    if (n->n_local)
        return dp_fail(-EBUSY, "network %d still has %u local ports", net, n->n_local);
    uint32_t vni = n->vni; /* n is freed by the changes below */
    dp_net_flood_set(net, NULL, 0);
    dp_fdb_purge_net(net);
    rte_hash_del_key(dp.vnis, &vni);
    net_publish(net, NULL);
    return 0;
}

/* add port to (add = 1) or remove it from (0) network net's local ports */
int
dp_net_set_local(int net, int port, int add)
{
    struct dp_net *n = net_clone(net);
    if (!n)
        return dp_fail(-ENOMEM, "out of memory");
    uint16_t k = 0;
    for (uint16_t i = 0; i < n->n_local; i++)
        if (n->local[i] != port)
            n->local[k++] = n->local[i];
    if (add)
        n->local[k++] = (uint16_t)port;
    n->n_local = k;
    net_publish(net, n);
    return 0;
}

int
dp_net_flood_set(int net, const uint32_t *ips, int cnt)
{
    struct dp_net *o = dp_net_get(net);
    if (!o)
        return dp_fail(-ENOENT, "no network %d", net);
    if (cnt < 0 || cnt > DP_MAX_TUNNELS)
        return dp_fail(-EINVAL, "flood list of %d VTEPs (max %d)", cnt, DP_MAX_TUNNELS);
    for (int i = 0; i < cnt; i++) {
        if (ips[i] == 0 || ips[i] == 0xffffffffu)
            return dp_fail(-EINVAL, "flood list entry %d is not a unicast address", i);
        if (dp_vconf_set && ips[i] == dp_vconf.ip)
            return dp_fail(-EINVAL, "flood list entry %d is this node's own VTEP", i);
    }
    uint16_t old_flood[DP_MAX_TUNNELS];
    uint16_t old_n = o->n_flood;
    memcpy(old_flood, o->flood, old_n * sizeof(uint16_t));
    struct dp_net *n = net_clone(net);
    if (!n)
        return dp_fail(-ENOMEM, "out of memory");
    n->n_flood = 0;
    for (int i = 0; i < cnt; i++) {
        int dup = 0;
        for (int j = 0; j < i; j++)
            dup |= ips[j] == ips[i];
        if (dup)
            continue;
        int ti = dp_tunnel_ref(net, ips[i]);
        if (ti < 0) {
            for (uint16_t j = 0; j < n->n_flood; j++)
                dp_tunnel_unref(net, n->flood[j]);
            rte_free(n);
            return ti;
        }
        n->flood[n->n_flood++] = (uint16_t)ti;
    }
    net_publish(net, n);
    for (uint16_t j = 0; j < old_n; j++)
        dp_tunnel_unref(net, old_flood[j]);
    return 0;
}

/* every network's largest inner frame (after an underlay MTU change) */
void
dp_nets_set_max_frame(uint32_t max_frame)
{
    /* VNI words are unchanged; only max_frame depends on the MTU */
    for (int i = 0; i < DP_MAX_NETS; i++) {
        if (!dp_net_get(i))
            continue;
        struct dp_net *n = net_clone(i);
        if (n) {
            n->max_frame = max_frame;
            net_publish(i, n);
        }
    }
}

void
dp_nets_free_all(void)
{
    for (int i = 0; i < DP_MAX_NETS; i++)
        rte_free(atomic_exchange(&dp.nets[i], NULL));
}
