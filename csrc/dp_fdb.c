/*
 * dp_fdb.c - the forwarding database: (network, MAC) -> local port or
 * remote VTEP (a tunnel, referenced while an entry points at it). The table
 * (dp_ftab.h) is read lock-free by the workers; this file alone writes it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dp_control.h"

/* the keys of the entries match() selects, into keys: 0, or -ENOMEM with
 * keys empty */
static int
fdb_collect(int (*match)(uint64_t key, uint32_t val, int arg), int arg, struct dp_fdb_keys *keys)
{
    /* collect first, delete after: never delete while iterating */
    uint32_t pos = 0;
    uint64_t k;
    uint32_t val;
    while (dp_ftab_next(&pos, &k, &val)) {
        if (!match(k, val, arg))
            continue;
        if (keys->n == keys->cap) {
            size_t cap = keys->cap ? 2 * keys->cap : 1024;
            uint64_t *nk = realloc(keys->key, cap * sizeof(*nk));
            if (!nk) {
                dp_fdb_keys_free(keys);
                return dp_fail(-ENOMEM, "out of memory for a list of FDB entries");
            }
            keys->key = nk;
            keys->cap = cap;
        }
        keys->key[keys->n++] = k;
    }
    return 0;
}

static int
match_port(uint64_t key, uint32_t val, int port)
{
    (void)key;
    return DP_FV_KIND(val) == DP_FDB_LOCAL && (int)DP_FV_TARGET(val) == port;
}

static int
match_net(uint64_t key, uint32_t val, int net)
{
    (void)val;
    return (int)(key >> 48) == net;
}

/* the local entries that point at port */
int
dp_fdb_collect_port(int port, struct dp_fdb_keys *keys)
{
    return fdb_collect(match_port, port, keys);
}

/* the entries of network net */
int
dp_fdb_collect_net(int net, struct dp_fdb_keys *keys)
{
    return fdb_collect(match_net, net, keys);
}

void
dp_fdb_keys_free(struct dp_fdb_keys *keys)
{
    free(keys->key);
    *keys = (struct dp_fdb_keys){0};
}

/* delete entry key and what it held: 0, or -ENOENT when there is none */
static int
fdb_remove(uint64_t key)
{
    uint32_t old;
    if (dp_ftab_del(key, &old) < 0)
        return -ENOENT;
    dp_express_fdb(key, 0);
    dp_learn_forget(key);
    /* no worker holds it once they have passed the grace period the
     * tunnel's release waits for */
    if (DP_FV_KIND(old) == DP_FDB_REMOTE)
        dp_tunnel_unref((int)(key >> 48), (int)DP_FV_TARGET(old));
    return 0;
}

/* delete the collected entries (cannot fail) and free the list */
void
dp_fdb_purge(struct dp_fdb_keys *keys)
{
    for (size_t i = 0; i < keys->n; i++)
        (void)fdb_remove(keys->key[i]);
    dp_fdb_keys_free(keys);
}

static int
fdb_check(int net, const uint8_t *mac)
{
    if (!dp_net_get(net))
        return dp_fail(-ENOENT, "no network %d", net);
    if (mac[0] & 1)
        return dp_fail(-EINVAL, "%02x:%02x:%02x:%02x:%02x:%02x is a multicast MAC", mac[0], mac[1],
                       mac[2], mac[3], mac[4], mac[5]);
    return 0;
}

/* key := val, replacing the entry `old` if the key `had` one: the replaced
 * entry's tunnel reference is released only once the new value is in, so no
 * worker sees a freed tunnel in between */
static int
fdb_store(int net, uint64_t key, uint32_t val, int had, uint32_t old)
{
    int ret = dp_ftab_put(key, val);
    if (ret != 0)
        return dp_fail(ret,
                       ret == -ENOMEM ? "out of memory for a larger FDB (%u entries)"
                                      : "FDB full (%u entries)",
                       dp_ftab_count());
    dp_express_fdb(key, val);
    if (had && DP_FV_KIND(old) == DP_FDB_REMOTE)
        dp_tunnel_unref(net, (int)DP_FV_TARGET(old));
    return 0;
}

int
dp_fdb_add_local(int net, const uint8_t *mac, int port)
{
    int ret = fdb_check(net, mac);
    if (ret)
        return ret;
    struct dp_port *p = dp_port_get(port);
    if (!p)
        return dp_fail(-ENOENT, "no port %d", port);
    if (p->net != net)
        return dp_fail(-EINVAL, "port %d (%s) is not in network %d", port, p->name, net);
    uint64_t key = dp_fdb_key((uint32_t)net, mac);
    uint32_t old = 0;
    int had = dp_ftab_get(key, &old);
    ret = fdb_store(net, key, DP_FV(DP_FDB_LOCAL, port), had, old);
    if (ret == 0)
        dp_learn_forget(key); /* set here: not a learned entry any more */
    return ret;
}

/* remote entry (net, mac) -> VTEP ip, marked learned or not (a learned
 * one set by the control API is not learned any more) */
int
dp_fdb_put_remote(int net, const uint8_t *mac, uint32_t ip, int learned)
{
    int ret = fdb_check(net, mac);
    if (ret)
        return ret;
    /* ip in host order: "this network" 0/8, loopback, multicast, reserved
     * and the limited broadcast are no VTEP's */
    uint32_t a = ip >> 24;
    if (a == 0 || a == 127 || a >= 224)
        return dp_fail(-EINVAL, "remote VTEP address is not a unicast address");
    if (dp_vconf_set && ip == dp_vconf.ip)
        return dp_fail(-EINVAL, "remote VTEP is this node's own VTEP address");
    uint64_t key = dp_fdb_key((uint32_t)net, mac);
    uint32_t old = 0;
    int had = dp_ftab_get(key, &old);
    if (had && DP_FV_KIND(old) == DP_FDB_REMOTE && (int)DP_FV_LEARNED(old) == !!learned) {
        struct dp_tunnel *t = atomic_load(&dp.tunnels[DP_FV_TARGET(old)]);
        if (t && t->ip == ip)
            return 0; /* unchanged */
    }
    int ti = dp_tunnel_ref(net, ip);
    if (ti < 0)
        return ti;
    ret =
        fdb_store(net, key, DP_FV(DP_FDB_REMOTE, ti) | (learned ? DP_FV_LEARNED_BIT : 0), had, old);
    if (ret != 0)
        dp_tunnel_unref(net, ti);
    else
        dp_learn_forget(key); /* set here: not a learned entry (any more) */
    return ret;
}

int
dp_fdb_add_remote(int net, const uint8_t *mac, uint32_t ip)
{
    return dp_fdb_put_remote(net, mac, ip, 0);
}

int
dp_fdb_del(int net, const uint8_t *mac)
{
    if (net < 0 || net >= DP_MAX_NETS)
        return dp_fail(-EINVAL, "network index %d out of range", net);
    if (fdb_remove(dp_fdb_key((uint32_t)net, mac)) < 0)
        return dp_fail(-ENOENT, "no FDB entry for that MAC in network %d", net);
    return 0;
}

int
dp_fdb_get(int net, const uint8_t *mac, int *kind, uint32_t *target)
{
    uint64_t key = dp_fdb_key((uint32_t)net, mac);
    uint32_t v;
    *kind = DP_FDB_NONE;
    *target = 0;
    if (!dp_ftab_get(key, &v))
        return 0;
    *kind = DP_FV_KIND(v);
    *target = DP_FV_TARGET(v);
    if (*kind == DP_FDB_REMOTE) {
        struct dp_tunnel *t = atomic_load(&dp.tunnels[*target]);
        *target = t ? t->ip : 0;
    }
    return 1;
}

int
dp_fdb_list(int net, uint32_t *pos, struct dp_fdb_entry *out, int cap)
{
    if (net < -1 || net >= DP_MAX_NETS)
        return dp_fail(-EINVAL, "network index %d out of range", net);
    if (cap < 0)
        return dp_fail(-EINVAL, "room for %d entries", cap);
    int n = 0;
    uint64_t key;
    uint32_t val;
    while (n < cap && dp_ftab_next(pos, &key, &val)) {
        if (net >= 0 && (int)(key >> 48) != net)
            continue;
        struct dp_fdb_entry *e = &out[n++];
        *e = (struct dp_fdb_entry){.net = (int)(key >> 48), .kind = (int)DP_FV_KIND(val)};
        memcpy(e->mac, &key, 6);
        e->target = DP_FV_TARGET(val);
        if (e->kind == DP_FDB_REMOTE) {
            struct dp_tunnel *t = atomic_load(&dp.tunnels[e->target]);
            e->target = t ? t->ip : 0;
            e->learned = dp_learn_age_of(key, &e->age_ms, &e->frozen_ms);
        }
    }
    return n;
}

int
dp_fdb_count(void)
{
    return (int)dp_ftab_count();
}
