/*
 * dp_ftab.h - the FDB's table: (network, MAC) keys of 8 bytes and 4-byte
 * answers (DP_FV) kept inline in cache-line buckets, so that a lookup reads
 * one cache line (two when its bucket overflowed), which the workers
 * prefetch for a whole burst before they look.
 *
 *   bucket  = 4 keys, 4 values, a sequence number and an overflow count:
 *             64 bytes, cache-line aligned
 *   home    = hash(key) & mask; a key lives in its home bucket or, when that
 *             is full, in one of the next DP_FT_MAX_PROBE - 1 (linear
 *             probing by bucket); every bucket a key passed on its way counts
 *             it in `ovf`, so a lookup stops at the first bucket whose ovf
 *             is 0
 *   size    = a power of two of buckets, at least twice as many slots as
 *             entries: the table doubles as it fills (from DP_FT_MIN_BUCKETS,
 *             4 KiB, up to DP_FT_MAX_BUCKETS, 32 MiB for DP_FT_MAX_ENTRIES),
 *             so a small FDB stays a few cache lines the worker keeps hot
 *
 * One writer (the control thread), lock-free readers (the workers): the
 * writer makes a bucket's sequence number odd while it changes the bucket
 * and even again after (a seqlock); a reader that sees it odd or changed
 * reads the bucket again, and after a few tries answers "unknown" (the
 * frame is flooded, as for any unknown MAC) rather than wait on a writer
 * that may have been preempted. A lookup never returns a value with the
 * wrong key. A table that grows is copied whole into a new one, which is
 * published (dp.fdb) before the old one is freed after a grace period; the
 * workers read dp.fdb once per poll loop.
 */
#ifndef DP_FTAB_H
#define DP_FTAB_H

#include <stdatomic.h>
#include <stdint.h>

#include <rte_common.h>

#define DP_FT_WAYS 4
#define DP_FT_MIN_BUCKETS 64u
#define DP_FT_MAX_BUCKETS (1u << 19)
#define DP_FT_MAX_ENTRIES (1u << 20)
#define DP_FT_MAX_PROBE 16
#define DP_FT_READ_TRIES 4
#define DP_FT_EMPTY UINT64_MAX /* no key: its network index would be 0xffff */

struct dp_fbkt {
    _Atomic uint64_t key[DP_FT_WAYS];
    _Atomic uint32_t val[DP_FT_WAYS];
    atomic_uint seq;      /* odd while the writer changes the bucket */
    _Atomic uint16_t ovf; /* keys homed before this bucket stored after it */
    uint16_t used;        /* writer only: keys in this bucket */
    uint64_t pad;
} __rte_cache_aligned;

_Static_assert(sizeof(struct dp_fbkt) == RTE_CACHE_LINE_SIZE, "an FDB bucket is one cache line");

struct dp_ftab {
    uint32_t mask;  /* buckets - 1 */
    uint32_t count; /* writer only */
    uint8_t pad[RTE_CACHE_LINE_SIZE - 8];
    struct dp_fbkt b[];
} __rte_cache_aligned;

/* the bucket where a lookup of a key with this hash starts */
static __rte_always_inline const struct dp_fbkt *
dp_ftab_home(const struct dp_ftab *t, uint32_t hash)
{
    return &t->b[hash & t->mask];
}

/*
 * One read of bucket b for key: *m the ways holding it (0, or one bit), *val
 * its value (meaningless when *m is 0), *ovf the bucket's overflow count.
 * 1 when no writer was in the bucket meanwhile (its sequence even and the
 * same after), else 0 and the read says nothing.
 */
static __rte_always_inline int
dp_fbkt_read(const struct dp_fbkt *b, uint64_t key, unsigned *m, uint32_t *val, uint16_t *ovf)
{
    uint32_t s = atomic_load_explicit(&b->seq, memory_order_acquire);
    *m = (unsigned)(atomic_load_explicit(&b->key[0], memory_order_relaxed) == key) |
         (unsigned)(atomic_load_explicit(&b->key[1], memory_order_relaxed) == key) << 1 |
         (unsigned)(atomic_load_explicit(&b->key[2], memory_order_relaxed) == key) << 2 |
         (unsigned)(atomic_load_explicit(&b->key[3], memory_order_relaxed) == key) << 3;
    *val = atomic_load_explicit(&b->val[__builtin_ctz(*m | 8)], memory_order_relaxed);
    *ovf = atomic_load_explicit(&b->ovf, memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit(&b->seq, memory_order_relaxed) == (s & ~1u);
}

/*
 * key's value into *val: 1, or 0 when the table does not hold it (or a
 * writer kept changing its bucket: the caller treats it as unknown), from
 * the home bucket on.
 */
static inline int
dp_ftab_search(const struct dp_ftab *t, uint64_t key, uint32_t hash, uint32_t *val)
{
    uint32_t i = hash & t->mask;
    for (unsigned probe = 0; probe < DP_FT_MAX_PROBE; probe++) {
        const struct dp_fbkt *b = &t->b[i];
        unsigned m, tries = 1;
        uint16_t ovf;
        while (unlikely(!dp_fbkt_read(b, key, &m, val, &ovf)))
            if (++tries > DP_FT_READ_TRIES)
                return 0;
        if (m != 0)
            return 1;
        if (likely(ovf == 0))
            return 0;
        i = (i + 1) & t->mask;
    }
    return 0;
}

/* the home bucket read once, inline: 1 (key found there, its value in
 * *val), 0 (absent: the bucket has no overflow), or -1: the search goes on
 * (dp_ftab_search), because the bucket overflowed or a writer was in it.
 * Nearly every lookup ends here. */
static __rte_always_inline int
dp_ftab_find_home(const struct dp_ftab *t, uint64_t key, uint32_t hash, uint32_t *val)
{
    unsigned m;
    uint16_t ovf;
    if (unlikely(!dp_fbkt_read(&t->b[hash & t->mask], key, &m, val, &ovf)))
        return -1;
    if (m != 0)
        return 1;
    return ovf == 0 ? 0 : -1;
}

/* key's value into *val: 1, or 0 when the table does not hold it */
static __rte_always_inline int
dp_ftab_find(const struct dp_ftab *t, uint64_t key, uint32_t hash, uint32_t *val)
{
    int r = dp_ftab_find_home(t, key, hash, val);
    return likely(r >= 0) ? r : dp_ftab_search(t, key, hash, val);
}

/* control thread (dp_fdb.c, dp_learn.c): dp.fdb's entries */
int dp_ftab_create(int socket);
void dp_ftab_destroy(void);
int dp_ftab_get(uint64_t key, uint32_t *val);
int dp_ftab_put(uint64_t key, uint32_t val);
int dp_ftab_del(uint64_t key, uint32_t *old);
uint32_t dp_ftab_count(void);
/* the entries from slot *pos on, one at a time: 1 and *pos advanced, or
 * 0 at the end */
int dp_ftab_next(uint32_t *pos, uint64_t *key, uint32_t *val);

#endif /* DP_FTAB_H */
