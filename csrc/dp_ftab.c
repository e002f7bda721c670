/*
 * dp_ftab.c - the FDB table's writer side (dp_ftab.h): the control thread
 * alone inserts, changes and deletes, each change of a bucket inside its
 * seqlock, and grows the table by copying it into one twice the size. Each
 * change of an answer also retires the workers' cached copy of it
 * (dp_fdb_changed).
 */
#include <errno.h>

#include <rte_malloc.h>

#include "dp_control.h"

static int ft_socket;

static struct dp_ftab *
cur(void)
{
    return atomic_load_explicit(&dp.fdb, memory_order_relaxed); /* ours alone */
}

static struct dp_ftab *
ftab_alloc(uint32_t buckets)
{
    struct dp_ftab *t = rte_malloc_socket("dp_fdb", sizeof(*t) + sizeof(struct dp_fbkt) * buckets,
                                          RTE_CACHE_LINE_SIZE, ft_socket);
    if (t == NULL)
        return NULL;
    t->mask = buckets - 1;
    t->count = 0;
    for (uint32_t i = 0; i < buckets; i++) {
        struct dp_fbkt *b = &t->b[i];
        for (int w = 0; w < DP_FT_WAYS; w++) {
            atomic_init(&b->key[w], DP_FT_EMPTY);
            atomic_init(&b->val[w], 0);
        }
        atomic_init(&b->seq, 0);
        atomic_init(&b->ovf, 0);
        b->used = 0;
        b->pad = 0;
    }
    return t;
}

int
dp_ftab_create(int socket)
{
    ft_socket = socket;
    struct dp_ftab *t = ftab_alloc(DP_FT_MIN_BUCKETS);
    if (t == NULL)
        return -ENOMEM;
    atomic_store_explicit(&dp.fdb, t, memory_order_release);
    return 0;
}

/* teardown: the workers are stopped */
void
dp_ftab_destroy(void)
{
    rte_free(atomic_exchange(&dp.fdb, NULL));
}

/* where key is in t: its bucket index, way and the number of buckets past
 * its home (the probes); -1 when absent */
static int
ftab_locate(const struct dp_ftab *t, uint64_t key, uint32_t *bi, int *way, unsigned *dist)
{
    uint32_t i = dp_key8_hash(key) & t->mask;
    for (unsigned probe = 0; probe < DP_FT_MAX_PROBE; probe++) {
        const struct dp_fbkt *b = &t->b[i];
        for (int w = 0; w < DP_FT_WAYS; w++) {
            if (atomic_load_explicit(&b->key[w], memory_order_relaxed) == key) {
                *bi = i;
                *way = w;
                *dist = probe;
                return 0;
            }
        }
        if (atomic_load_explicit(&b->ovf, memory_order_relaxed) == 0)
            return -1;
        i = (i + 1) & t->mask;
    }
    return -1;
}

/* a bucket change: readers see the sequence odd meanwhile */
static inline void
bkt_begin(struct dp_fbkt *b)
{
    unsigned s = atomic_load_explicit(&b->seq, memory_order_relaxed);
    atomic_store_explicit(&b->seq, s + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release); /* odd before the changes */
}

static inline void
bkt_end(struct dp_fbkt *b)
{
    unsigned s = atomic_load_explicit(&b->seq, memory_order_relaxed);
    atomic_store_explicit(&b->seq, s + 1, memory_order_release);
}

/* a new key into t: 0, or -ENOSPC when no bucket within reach of its home
 * has a free slot */
static int
ftab_insert(struct dp_ftab *t, uint64_t key, uint32_t val)
{
    uint32_t home = dp_key8_hash(key) & t->mask, i = home;
    unsigned probe;
    for (probe = 0; probe < DP_FT_MAX_PROBE; probe++) {
        if (t->b[i].used < DP_FT_WAYS)
            break;
        i = (i + 1) & t->mask;
    }
    if (probe == DP_FT_MAX_PROBE)
        return -ENOSPC;
    /* the buckets passed count the key first: a reader that finds it where
     * it lands has a path to it */
    for (uint32_t j = home; j != i; j = (j + 1) & t->mask) {
        struct dp_fbkt *p = &t->b[j];
        bkt_begin(p);
        atomic_store_explicit(&p->ovf, (uint16_t)(p->ovf + 1), memory_order_relaxed);
        bkt_end(p);
    }
    struct dp_fbkt *b = &t->b[i];
    int w = 0;
    while (atomic_load_explicit(&b->key[w], memory_order_relaxed) != DP_FT_EMPTY)
        w++;
    bkt_begin(b);
    atomic_store_explicit(&b->val[w], val, memory_order_relaxed);
    atomic_store_explicit(&b->key[w], key, memory_order_relaxed);
    bkt_end(b);
    b->used++;
    t->count++;
    return 0;
}

/* t copied into a table of at least `buckets` buckets (more if a key does
 * not fit); NULL when out of memory or past the largest size */
static struct dp_ftab *
ftab_grown(const struct dp_ftab *t, uint32_t buckets)
{
    for (; buckets <= DP_FT_MAX_BUCKETS; buckets *= 2) {
        struct dp_ftab *n = ftab_alloc(buckets);
        if (n == NULL)
            return NULL;
        int ok = 1;
        for (uint32_t i = 0; ok && i <= t->mask; i++)
            for (int w = 0; ok && w < DP_FT_WAYS; w++) {
                uint64_t k = atomic_load_explicit(&t->b[i].key[w], memory_order_relaxed);
                if (k != DP_FT_EMPTY)
                    ok = ftab_insert(n, k,
                                     atomic_load_explicit(&t->b[i].val[w], memory_order_relaxed)) ==
                         0;
            }
        if (ok)
            return n;
        rte_free(n);
    }
    return NULL;
}

/* the table replaced by one twice its size: 0, or -ENOSPC / -ENOMEM with
 * the table unchanged */
static int
ftab_grow(void)
{
    struct dp_ftab *t = cur();
    if (t->mask + 1 >= DP_FT_MAX_BUCKETS)
        return -ENOSPC;
    struct dp_ftab *n = ftab_grown(t, 2 * (t->mask + 1));
    if (n == NULL)
        return -ENOMEM;
    atomic_store_explicit(&dp.fdb, n, memory_order_release);
    dp_sync(); /* no worker reads the old one any more */
    rte_free(t);
    return 0;
}

int
dp_ftab_get(uint64_t key, uint32_t *val)
{
    const struct dp_ftab *t = cur();
    uint32_t bi;
    int w;
    unsigned d;
    if (ftab_locate(t, key, &bi, &w, &d) < 0)
        return 0;
    *val = atomic_load_explicit(&t->b[bi].val[w], memory_order_relaxed);
    return 1;
}

/* key := val (added, or its value replaced): 0, or -ENOSPC when the table
 * holds DP_FT_MAX_ENTRIES (or the largest table has no room near key's
 * home), -ENOMEM when it could not grow */
int
dp_ftab_put(uint64_t key, uint32_t val)
{
    struct dp_ftab *t = cur();
    uint32_t bi;
    int w;
    unsigned d;
    if (ftab_locate(t, key, &bi, &w, &d) == 0) {
        struct dp_fbkt *b = &t->b[bi];
        bkt_begin(b);
        atomic_store_explicit(&b->val[w], val, memory_order_relaxed);
        bkt_end(b);
        dp_fdb_changed(key);
        return 0;
    }
    if (t->count >= DP_FT_MAX_ENTRIES)
        return -ENOSPC;
    /* at most half the slots used: short probes, rare overflow */
    if (2 * (t->count + 1) > (t->mask + 1) * DP_FT_WAYS && t->mask + 1 < DP_FT_MAX_BUCKETS) {
        int ret = ftab_grow();
        if (ret < 0)
            return ret;
        t = cur();
    }
    int ret;
    while ((ret = ftab_insert(t, key, val)) == -ENOSPC) {
        if ((ret = ftab_grow()) < 0)
            return ret;
        t = cur();
    }
    dp_fdb_changed(key);
    return 0;
}

/* delete key, its value into *old: 0, or -ENOENT */
int
dp_ftab_del(uint64_t key, uint32_t *old)
{
    struct dp_ftab *t = cur();
    uint32_t bi;
    int w;
    unsigned d;
    if (ftab_locate(t, key, &bi, &w, &d) < 0)
        return -ENOENT;
    struct dp_fbkt *b = &t->b[bi];
    *old = atomic_load_explicit(&b->val[w], memory_order_relaxed);
    bkt_begin(b);
    atomic_store_explicit(&b->key[w], DP_FT_EMPTY, memory_order_relaxed);
    atomic_store_explicit(&b->val[w], 0, memory_order_relaxed);
    bkt_end(b);
    b->used--;
    t->count--;
    dp_fdb_changed(key); /* the workers' caches forget it too */
    /* and the buckets it passed forget it */
    uint32_t j = (bi - d) & t->mask;
    for (unsigned k = 0; k < d; k++, j = (j + 1) & t->mask) {
        struct dp_fbkt *p = &t->b[j];
        bkt_begin(p);
        atomic_store_explicit(&p->ovf, (uint16_t)(p->ovf - 1), memory_order_relaxed);
        bkt_end(p);
    }
    return 0;
}

uint32_t
dp_ftab_count(void)
{
    return cur()->count;
}

int
dp_ftab_next(uint32_t *pos, uint64_t *key, uint32_t *val)
{
    const struct dp_ftab *t = cur();
    uint32_t end = (t->mask + 1) * DP_FT_WAYS;
    for (uint32_t p = *pos; p < end; p++) {
        const struct dp_fbkt *b = &t->b[p / DP_FT_WAYS];
        uint64_t k = atomic_load_explicit(&b->key[p % DP_FT_WAYS], memory_order_relaxed);
        if (k == DP_FT_EMPTY)
            continue;
        *key = k;
        *val = atomic_load_explicit(&b->val[p % DP_FT_WAYS], memory_order_relaxed);
        *pos = p + 1;
        return 1;
    }
    *pos = end;
    return 0;
}
