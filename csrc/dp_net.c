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

/* a copy of network net (which exists) to modify; NULL when out of memory */
static struct dp_net *
net_clone(int net)
{
    struct dp_net *o = dp_net_get(net);
    struct dp_net *n = rte_malloc("dp_net", sizeof(*n), RTE_CACHE_LINE_SIZE);
    if (n)
        *n = *o;
    return n;
}

/* publish n as network net (NULL: remove it); the old one is freed once no
 * worker holds it */
void
dp_net_publish(int net, struct dp_net *n)
{
    struct dp_net *old = atomic_exchange(&dp.nets[net], n);
    dp_express_net(net);
    dp_sync();
    rte_free(old);
}

/* a copy of network net with port among its local ports (add = 1) or not
 * (add = 0), to publish; NULL when out of memory */
struct dp_net *
dp_net_with_local(int net, int port, int add)
{
    struct dp_net *n = net_clone(net);
    if (!n)
        return NULL;
    uint16_t k = 0;
    for (uint16_t i = 0; i < n->n_local; i++)
        if (n->local[i] != port)
            n->local[k++] = n->local[i];
    if (add)
        n->local[k++] = (uint16_t)port;
    n->n_local = k;
    return n;
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
    int ret = rte_hash_add_key_data(dp.vnis, &vni, (void *)(uintptr_t)net);
    if (ret != 0) {
        rte_free(n);
        return dp_fail(ret, "cannot add VNI %u to the VNI table", vni);
    }
    dp.net_plane[net] = (uint8_t)plane;
    for (int w = 0; w < DP_MAX_WORKERS; w++)
        memset(dp.ctr->net[w][net], 0, sizeof(dp.ctr->net[w][net]));
    dp_net_publish(net, n);
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
    struct dp_fdb_keys keys = {0};
    int ret = dp_fdb_collect_net(net, &keys);
    if (ret < 0)
        return ret;
    /* nothing fails from here on: its FDB entries, its flood list's
     * references to tunnels, its VNI, itself */
    dp_fdb_purge(&keys);
    for (uint16_t j = 0; j < n->n_flood; j++)
        dp_tunnel_unref(net, n->flood[j]);
    uint32_t vni = n->vni;
    (void)rte_hash_del_key(dp.vnis, &vni); /* there since dp_net_add */
    dp_net_publish(net, NULL);
    return 0;
}

int
dp_net_flood_get(int net, uint32_t *ips, uint8_t *resolved, int cap)
{
    const struct dp_net *n = dp_net_get(net);
    if (!n)
        return dp_fail(-ENOENT, "no network %d", net);
    for (int i = 0; i < n->n_flood && i < cap; i++) {
        const struct dp_tunnel *t = atomic_load(&dp.tunnels[n->flood[i]]);
        ips[i] = t ? t->ip : 0;
        resolved[i] = t ? t->resolved : 0;
    }
    return n->n_flood;
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
    dp_net_publish(net, n);
    for (uint16_t j = 0; j < old_n; j++)
        dp_tunnel_unref(net, old_flood[j]);
    return 0;
}

/*
 * Copies of every network with another largest inner frame (after an
 * underlay MTU change), into fresh[] (NULL where there is no network): all
 * of them, or none and dp_fail.
 */
int
dp_nets_prepare(uint32_t max_frame, struct dp_net *fresh[DP_MAX_NETS])
{
    for (int i = 0; i < DP_MAX_NETS; i++) {
        fresh[i] = NULL;
        if (!dp_net_get(i))
            continue;
        fresh[i] = net_clone(i);
        if (!fresh[i]) {
            while (i-- > 0)
                rte_free(fresh[i]);
            return dp_fail(-ENOMEM, "out of memory for copies of the networks");
        }
        fresh[i]->max_frame = max_frame; /* VNI words are unchanged */
    }
    return 0;
}

/* publish what dp_nets_prepare made, after one grace period free the old */
void
dp_nets_publish(struct dp_net *fresh[DP_MAX_NETS])
{
    for (int i = 0; i < DP_MAX_NETS; i++)
        if (fresh[i])
            fresh[i] = atomic_exchange(&dp.nets[i], fresh[i]);
    dp_sync();
    for (int i = 0; i < DP_MAX_NETS; i++)
        rte_free(fresh[i]);
}

void
dp_nets_free_all(void)
{
    for (int i = 0; i < DP_MAX_NETS; i++) {
        rte_free(atomic_exchange(&dp.nets[i], NULL));
        dp_express_net(i);
    }
}
