/*
 * dp_learn.c - MACs learned from the underlay (vtep.learning): the source
 * MAC of a VXLAN frame from a VTEP becomes a remote FDB entry to that VTEP.
 *
 * What the underlay may not do through it: replace a local entry or one the
 * control API set (those are never overridden: learn_static), hold more
 * than learn_per_net entries of a network or learn_per_vtep of one source
 * VTEP, or learn from more than DP_LEARN_MAX_VTEPS source VTEPs
 * (learn_limit), or keep an entry forever: a learned entry is removed
 * age_ms after it was learned or last confirmed (learn_aged), and learned
 * again from the MAC's next frame. The table of learned keys is the control
 * thread's alone.
 *
 * A MAC that keeps moving between VTEPs (a loop in a host's network, two
 * hosts with one MAC, a spoofer) is a duplicate (as EVPN's duplicate MAC
 * detection has it, RFC 7432 15.1): the move that would be its dup_moves-th
 * within dup_window_ms is refused, and the entry stays frozen where it is
 * for dup_freeze_ms - traffic to it goes one way instead of flapping, and
 * the workers' reports of it cost the control thread nothing more than a
 * counter (learn_frozen). Then its moves are counted afresh.
 */
#include <string.h>

#include <rte_cycles.h>

#include "dp_control.h"

#define DP_LEARN_MAX 8192 /* learned entries, all networks */
/* source VTEPs with learned entries: half the tunnel table at most, the
 * other half kept for the VTEPs the control API sets (frames from spoofed
 * source addresses would otherwise take every tunnel slot) */
#define DP_LEARN_MAX_VTEPS (DP_MAX_TUNNELS / 2)
#define DP_LEARN_IDX (2 * DP_LEARN_MAX)
#define DP_LEARN_AGE_EVERY_MS 100

struct learned {
    uint64_t key; /* FDB key */
    uint32_t vtep;
    uint8_t used;
    uint32_t moves;   /* within the window that began at win_tsc */
    uint64_t tsc;     /* learned or last confirmed */
    uint64_t win_tsc; /* first move of the window */
    uint64_t frozen;  /* found a duplicate: frozen until then (0: not) */
};
static struct learned lt[DP_LEARN_MAX];
static uint16_t lt_idx[DP_LEARN_IDX]; /* key -> slot + 1, open addressing */
static int lt_n;
static uint32_t per_net[DP_MAX_NETS];
static struct {
    uint32_t ip;
    uint32_t n;
} per_vtep[DP_MAX_TUNNELS];
static uint32_t n_vteps; /* per_vtep slots in use (n > 0) */
static uint32_t age_ms = DP_LEARN_AGE_MS_DEFAULT;
static uint32_t max_net = DP_LEARN_PER_NET_DEFAULT;
static uint32_t max_vtep = DP_LEARN_PER_VTEP_DEFAULT;
static uint32_t dup_moves = DP_LEARN_DUP_MOVES_DEFAULT;
static uint32_t dup_window_ms = DP_LEARN_DUP_WINDOW_MS_DEFAULT;
static uint32_t dup_freeze_ms = DP_LEARN_DUP_FREEZE_MS_DEFAULT;
static uint64_t stats[DP_LEARN_STAT_COUNT];
static uint64_t last_age;

/* a quarter of the age, at most a second: a learned entry in use is
 * confirmed several times before it would age out, and a MAC that moved
 * to another VTEP follows within a second; and a millisecond, for the
 * workers' report budget and the ages here (set with the EAL up) */
_Atomic uint64_t dp_learn_report_cycles;
_Atomic uint64_t dp_learn_ms_cycles;

static void
set_report_cycles(void)
{
    uint64_t ms = RTE_MIN(age_ms / 4, 1000u), hz_ms = rte_get_tsc_hz() / 1000;
    atomic_store_explicit(&dp_learn_ms_cycles, hz_ms, memory_order_relaxed);
    atomic_store_explicit(&dp_learn_report_cycles, ms * hz_ms, memory_order_relaxed);
}

static unsigned
lt_hash(uint64_t key)
{
    return (unsigned)((key * 0x9e3779b97f4a7c15ull) >> 40) & (DP_LEARN_IDX - 1);
}

static int
lt_find(uint64_t key)
{
    for (unsigned h = lt_hash(key), n = 0; n < DP_LEARN_IDX;
         n++, h = (h + 1) & (DP_LEARN_IDX - 1)) {
        if (lt_idx[h] == 0)
            return -1;
        const struct learned *e = &lt[lt_idx[h] - 1];
        if (e->used && e->key == key) /* unused: dropped, index not rebuilt yet */
            return lt_idx[h] - 1;
    }
    return -1;
}

static void
lt_index(int i)
{
    unsigned h = lt_hash(lt[i].key);
    while (lt_idx[h])
        h = (h + 1) & (DP_LEARN_IDX - 1);
    lt_idx[h] = (uint16_t)(i + 1);
}

static void
lt_reindex(void)
{
    memset(lt_idx, 0, sizeof(lt_idx));
    for (int i = 0; i < DP_LEARN_MAX; i++)
        if (lt[i].used)
            lt_index(i);
}

static uint32_t *
vtep_count(uint32_t ip, int create)
{
    int free_slot = -1;
    for (int i = 0; i < DP_MAX_TUNNELS; i++) {
        if (per_vtep[i].n && per_vtep[i].ip == ip)
            return &per_vtep[i].n;
        if (!per_vtep[i].n && free_slot < 0)
            free_slot = i;
    }
    if (!create || free_slot < 0)
        return NULL;
    per_vtep[free_slot].ip = ip;
    return &per_vtep[free_slot].n;
}

/* slot i no longer learned (its FDB entry is gone or is not a learned one
 * any more); the index is rebuilt by the caller */
static void
lt_drop(int i)
{
    uint32_t *c = vtep_count(lt[i].vtep, 0);
    if (c && --(*c) == 0)
        n_vteps--;
    per_net[lt[i].key >> 48]--;
    lt[i].used = 0;
    lt_n--;
}

/* the FDB entry of key was set or removed by the control API: it is not
 * a learned one (any more) */
void
dp_learn_forget(uint64_t key)
{
    int i = lt_n ? lt_find(key) : -1;
    if (i < 0)
        return;
    lt_drop(i);
    lt_reindex();
}

static uint32_t
ms_of(uint64_t cycles)
{
    uint64_t hz_ms = atomic_load_explicit(&dp_learn_ms_cycles, memory_order_relaxed);
    uint64_t ms = cycles / (hz_ms ? hz_ms : 1);
    return ms > UINT32_MAX ? UINT32_MAX : (uint32_t)ms;
}

int
dp_learn_age_of(uint64_t key, uint32_t *age, uint32_t *frozen)
{
    int i = lt_n ? lt_find(key) : -1;
    if (i < 0)
        return 0;
    uint64_t now = rte_get_tsc_cycles();
    *age = ms_of(now - lt[i].tsc);
    /* heard since by way of the express lane */
    int64_t seen = dp_express_seen_ms(key);
    if (seen >= 0 && (uint64_t)seen < *age)
        *age = (uint32_t)seen;
    *frozen = now < lt[i].frozen ? RTE_MAX(ms_of(lt[i].frozen - now), 1u) : 0;
    return 1;
}

/* learned entry e heard from another VTEP at now: 1 if it may move, with
 * the move history it takes along in *next (counted once the move is
 * made); 0 if it stays (frozen, or found a duplicate now: frozen from now) */
static int
move_allowed(struct learned *e, uint64_t now, struct learned *next)
{
    uint64_t hz_ms = atomic_load_explicit(&dp_learn_ms_cycles, memory_order_relaxed);
    if (e->frozen) {
        if (now < e->frozen) {
            stats[DP_LEARN_FROZEN]++;
            return 0;
        }
        e->frozen = 0; /* thawed: its moves counted afresh */
        e->moves = 0;
    }
    *next = *e;
    if (e->moves == 0 || now - e->win_tsc >= (uint64_t)dup_window_ms * hz_ms) {
        next->moves = 0;
        next->win_tsc = now;
    }
    if (dup_moves && next->moves + 1 >= dup_moves) {
        e->frozen = now + (uint64_t)dup_freeze_ms * hz_ms;
        stats[DP_LEARN_DUPLICATE]++;
        return 0;
    }
    next->moves++;
    return 1;
}

int
dp_fdb_learn(int net, const uint8_t *mac, uint32_t ip)
{
    uint64_t key = dp_fdb_key((uint32_t)net, mac);
    uint64_t now = rte_get_tsc_cycles();
    int i = lt_find(key);
    uint32_t cur;
    if (i < 0 && dp_ftab_get(key, &cur)) {
        stats[DP_LEARN_STATIC]++; /* local, or set by the control API */
        return 0;
    }
    if (i >= 0 && lt[i].vtep == ip) {
        lt[i].tsc = now; /* confirmed */
        return 0;
    }
    uint32_t *vc = vtep_count(ip, 0);
    if ((vc && *vc >= max_vtep) || (!vc && n_vteps >= DP_LEARN_MAX_VTEPS) ||
        (i < 0 && (per_net[net] >= max_net || lt_n >= DP_LEARN_MAX))) {
        stats[DP_LEARN_LIMIT]++;
        return 0;
    }
    int moved = i >= 0;
    struct learned was = {.win_tsc = now};
    if (moved && !move_allowed(&lt[i], now, &was))
        return 0;
    /* the hook in dp_fdb_put_remote forgets a moved entry's old VTEP */
    int ret = dp_fdb_put_remote(net, mac, ip, 1);
    if (ret < 0) {
        /* the core's own limits: every remote VTEP slot taken (configured
         * and learned VTEPs share them), the FDB full, memory: refused
         * as at a limit of learning's, not silently (the MAC stays
         * unknown, its frames flooded); not a source no VTEP may have or
         * a network removed meanwhile */
        if (ret == -ENOSPC || ret == -ENOMEM)
            stats[DP_LEARN_LIMIT]++;
        return ret;
    }
    vc = vtep_count(ip, 1);
    if (!vc) { /* cannot happen: no more VTEPs than tunnels */
        (void)dp_fdb_del(net, mac);
        return 0;
    }
    for (i = 0; lt[i].used; i++)
        ;
    lt[i] = (struct learned){
        .key = key, .vtep = ip, .used = 1, .moves = was.moves, .tsc = now, .win_tsc = was.win_tsc};
    lt_index(i);
    lt_n++;
    if ((*vc)++ == 0)
        n_vteps++;
    per_net[net]++;
    stats[moved ? DP_LEARN_MOVED : DP_LEARN_LEARNED]++;
    return 0;
}

/* a remote MAC the FDB has, heard again from VTEP ip: a learned entry is
 * confirmed, or moves to ip (dp_fdb_learn); one the control API set stays
 * as it is, whatever the underlay says */
void
dp_learn_heard(int net, const uint8_t *mac, uint32_t ip)
{
    if (lt_n && lt_find(dp_fdb_key((uint32_t)net, mac)) >= 0)
        (void)dp_fdb_learn(net, mac, ip);
}

/* learned entries not confirmed within age_ms: removed (housekeeping) */
void
dp_learn_age(void)
{
    uint64_t now = rte_get_tsc_cycles();
    uint64_t hz_ms = atomic_load_explicit(&dp_learn_ms_cycles, memory_order_relaxed);
    if (!lt_n || now - last_age < DP_LEARN_AGE_EVERY_MS * hz_ms)
        return;
    last_age = now;
    int gone = 0;
    for (int i = 0; i < DP_LEARN_MAX; i++) {
        if (!lt[i].used || now - lt[i].tsc < (uint64_t)age_ms * hz_ms)
            continue;
        uint64_t key = lt[i].key;
        /* its frames may come by the express lane, past the workers: a
         * frame it carried within the age confirms the entry as theirs do */
        int64_t seen = dp_express_seen_ms(key);
        if (seen >= 0 && seen < (int64_t)age_ms) {
            lt[i].tsc = now - (uint64_t)seen * hz_ms;
            continue;
        }
        uint8_t mac[6];
        memcpy(mac, &key, 6);
        int net = (int)(key >> 48);
        lt_drop(i);
        gone++;
        stats[DP_LEARN_AGED]++;
        (void)dp_fdb_del(net, mac); /* its hook finds nothing left to forget */
    }
    if (gone)
        lt_reindex();
}

int
dp_learn_config(uint32_t age, uint32_t per_net_max, uint32_t per_vtep_max)
{
    if (age < 100)
        return dp_fail(-EINVAL, "learned entries' age %u ms below 100", age);
    if (per_net_max < 1 || per_net_max > DP_LEARN_MAX || per_vtep_max < 1 ||
        per_vtep_max > DP_LEARN_MAX)
        return dp_fail(-EINVAL, "learning limits %u per network, %u per VTEP: each 1..%d",
                       per_net_max, per_vtep_max, DP_LEARN_MAX);
    age_ms = age;
    max_net = per_net_max;
    max_vtep = per_vtep_max;
    set_report_cycles();
    return 0;
}

int
dp_learn_dup_config(uint32_t moves, uint32_t window_ms, uint32_t freeze_ms)
{
    if (moves == 1 || moves > 1000)
        return dp_fail(-EINVAL, "duplicate MAC moves %u: 2..1000, or 0 for no detection", moves);
    if (window_ms < 1000 || window_ms > 86400000 || freeze_ms < 1000 || freeze_ms > 86400000)
        return dp_fail(-EINVAL, "duplicate MAC window %u ms, freeze %u ms: each 1 s to 1 day",
                       window_ms, freeze_ms);
    dup_moves = moves;
    dup_window_ms = window_ms;
    dup_freeze_ms = freeze_ms;
    return 0;
}

int
dp_learn_clear(int net, const uint8_t *mac)
{
    if (net < -1 || net >= DP_MAX_NETS)
        return dp_fail(-EINVAL, "network index %d out of range", net);
    uint64_t want = mac ? dp_fdb_key(0, mac) : 0;
    int n = 0;
    for (int i = 0; i < DP_LEARN_MAX && lt_n; i++) {
        uint64_t key = lt[i].key;
        if (!lt[i].used || (net >= 0 && (int)(key >> 48) != net) ||
            (mac && (key & 0xffffffffffffull) != want))
            continue;
        uint8_t m[6];
        memcpy(m, &key, 6);
        lt_drop(i);
        n++;
        (void)dp_fdb_del((int)(key >> 48), m); /* its hook finds nothing left to forget */
    }
    if (n)
        lt_reindex();
    return n;
}

uint64_t
dp_learn_stat(int which)
{
    return which >= 0 && which < DP_LEARN_STAT_COUNT ? stats[which] : 0;
}

int
dp_learn_count(void)
{
    return lt_n;
}
