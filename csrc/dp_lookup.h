/*
 * dp_lookup.h - the pipeline's table lookups, a burst at a time: the FDB
 * (dp_ftab.h) and the (VNI, source VTEP) table, each behind a worker's
 * direct-mapped cache (dp_internal.h says how the caches stay true).
 *
 * Part of the one translation unit dp_pipeline.c: static inline code, so
 * the compiler sees the whole worker loop at once (and builds the same code
 * as when it was one file).
 */
#ifndef DP_LOOKUP_H
#define DP_LOOKUP_H

#ifndef DP_PIPELINE_TU
#error "dp_lookup.h is included by dp_pipeline.c only"
#endif

/*
 * The VTEP table's answers (network indexes) for n keys of a burst; returns
 * the hit mask. The worker's cache answers first; what it cannot goes to the
 * table in one bulk lookup, and the table's answers are cached under the
 * worker's epoch (dp_internal.h).
 */
static __rte_always_inline uint64_t
vtep_lookup(struct dp_wctx *w, const uint64_t *keys, const hash_sig_t *sig, uint16_t n,
            uint32_t *val)
{
    const void *kp[DP_BURST];
    hash_sig_t msig[DP_BURST];
    uint8_t mi[DP_BURST];
    uint16_t nm = 0;
    uint64_t hits = 0;
    uint32_t ep = w->epoch;
    struct dp_fdb_cent *cache = w->vcache;
    const unsigned mask = DP_VTEP_CACHE_SIZE - 1;
    for (uint16_t i = 0; i < n; i++) {
        const struct dp_fdb_cent *e = &cache[sig[i] & mask];
        if (likely(e->key == keys[i] && e->epoch == ep)) {
            val[i] = e->val;
            hits |= 1ull << i;
        } else {
            kp[nm] = &keys[i];
            msig[nm] = sig[i];
            mi[nm++] = (uint8_t)i;
        }
    }
    if (nm == 0)
        return hits;
    void *d[DP_BURST];
    uint64_t mh = 0;
    rte_hash_lookup_with_hash_bulk_data(dp.vteps, kp, msig, nm, &mh, d);
    for (uint16_t j = 0; j < nm; j++) {
        if (!((mh >> j) & 1))
            continue; /* unknown keys are not cached */
        unsigned i = mi[j];
        uint32_t v = (uint32_t)(uintptr_t)d[j];
        struct dp_fdb_cent *e = &cache[msig[j] & mask];
        e->key = keys[i];
        e->val = v;
        e->epoch = ep;
        val[i] = v;
        hits |= 1ull << i;
    }
    return hits;
}

/* a key's FDB bucket, for the CPU to fetch while the burst's other work
 * goes on (fdb_lookup reads it) */
static __rte_always_inline void
fdb_prefetch(const struct dp_wctx *w, hash_sig_t sig)
{
    rte_prefetch0(dp_ftab_home(w->fdb, sig));
}

/* while the worker skips its FDB cache (fdb_lookup), every key goes to the
 * table: its bucket is fetched as soon as the key's hash is known */
static __rte_always_inline void
fdb_prefetch_early(const struct dp_wctx *w, hash_sig_t sig)
{
    if (w->fc_rest)
        fdb_prefetch(w, sig);
}

/* the misses mi[0..nm) of a burst looked up in the table (their buckets
 * prefetched together first); with `fill`, their answers are cached under
 * the generations mgen; without, the cache is being skipped and the
 * buckets were fetched early (fdb_prefetch_early) */
static __rte_always_inline uint64_t
fdb_table_lookup(struct dp_wctx *w, const uint64_t *keys, const hash_sig_t *sig, uint32_t *val,
                 const uint8_t *mi, const uint32_t *mgen, uint16_t nm, int fill)
{
    uint64_t hits = 0;
    uint32_t slow = 0;
    if (fill)
        for (uint16_t j = 0; j < nm; j++)
            fdb_prefetch(w, sig[mi[j]]);
    for (uint16_t j = 0; j < nm; j++) {
        unsigned i = mi[j];
        int r = dp_ftab_find_home(w->fdb, keys[i], sig[i], &val[i]);
        if (unlikely(r < 0)) {
            slow++;
            r = dp_ftab_search(w->fdb, keys[i], sig[i], &val[i]);
        }
        if (!r)
            continue; /* unknown keys are not cached */
        if (fill) {
            struct dp_fdb_cent *e = &w->fcache[sig[i] & (DP_FDB_CACHE_SIZE - 1)];
            e->key = keys[i];
            e->val = val[i];
            e->epoch = mgen[j];
        }
        hits |= 1ull << i;
    }
    w->wc[DP_WORKER_FDB_CACHE_MISSES] += nm;
    w->wc[DP_WORKER_FDB_SLOW_LOOKUPS] += slow;
    return hits;
}

/*
 * FDB answers (DP_FV) of a burst; returns the hit mask (unknown MACs flood).
 * The worker's cache answers first (an entry valid by its slot's
 * generation, read before the table lookup a miss makes: acquire, not
 * after it); the misses go to the table (fdb_table_lookup) and their
 * answers are cached. When more than 7 in 8 of the last DP_FDB_CACHE_WINDOW
 * lookups missed (traffic to more MACs than the cache holds), the next
 * DP_FDB_CACHE_REST bursts go straight to the table: a cache that cannot
 * answer costs its check and its fills on every frame.
 */
static __rte_always_inline uint64_t
fdb_lookup(struct dp_wctx *w, const uint64_t *keys, const hash_sig_t *sig, uint16_t n,
           uint32_t *val)
{
    uint8_t mi[DP_BURST];
    uint32_t mgen[DP_BURST]; /* the generation a miss's answer is cached under */
    uint16_t nm = 0;
    uint64_t hits = 0;
    w->wc[DP_WORKER_FDB_LOOKUPS] += n;
    if (unlikely(w->fc_rest > 0)) {
        w->fc_rest--;
        for (uint16_t i = 0; i < n; i++)
            mi[i] = (uint8_t)i;
        return fdb_table_lookup(w, keys, sig, val, mi, mgen, n, 0);
    }
    for (uint16_t i = 0; i < n; i++) {
        unsigned slot = sig[i] & (DP_FDB_CACHE_SIZE - 1);
        const struct dp_fdb_cent *e = &w->fcache[slot];
        uint32_t cur = atomic_load_explicit(&dp.fdb_slot_gen[slot], memory_order_acquire) + 1;
        if (likely(e->key == keys[i] && e->epoch == cur)) {
            val[i] = e->val;
            hits |= 1ull << i;
        } else {
            mgen[nm] = cur;
            mi[nm++] = (uint8_t)i;
        }
    }
    w->fc_seen += n;
    w->fc_missed += nm;
    if (unlikely(w->fc_seen >= DP_FDB_CACHE_WINDOW)) {
        if (w->fc_missed * 8 > w->fc_seen * 7)
            w->fc_rest = DP_FDB_CACHE_REST;
        w->fc_seen = w->fc_missed = 0;
    }
    if (nm == 0)
        return hits;
    return hits | fdb_table_lookup(w, keys, sig, val, mi, mgen, nm, 1);
}

/* before a burst's lookups: a changed VTEP table starts a new cache epoch */
static __rte_always_inline void
cache_sync(struct dp_wctx *w)
{
    uint32_t g = atomic_load_explicit(&dp.tbl_gen, memory_order_acquire);
    if (likely(g == w->tbl_gen))
        return;
    w->tbl_gen = g;
    if (unlikely(++w->epoch == 0)) { /* wrapped: no old entry may look current */
        memset(w->fcache, 0, sizeof(w->fcache));
        memset(w->vcache, 0, sizeof(w->vcache));
        w->epoch = 1;
    }
}

#endif /* DP_LOOKUP_H */
