/*
 * dp_lookup.h - the pipeline's table lookups: a worker's direct-mapped
 * caches of the FDB and of the (VNI, source VTEP) table in front of the
 * DPDK hashes, a burst at a time (dp_internal.h says how the caches stay
 * true).
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
 * A cached table's answers for n keys of a burst; returns the hit mask. The
 * worker's cache answers first; what it cannot goes to the table in one bulk
 * lookup, and the table's answers are cached (dp_internal.h). fdb (a
 * constant once inlined): the FDB, whose values are kept as DP_FV and
 * whose entries are valid by their slot's generation; else the VTEP table,
 * whose values are network indexes, valid by the worker's epoch.
 */
static __rte_always_inline uint64_t
cached_lookup(struct dp_wctx *w, struct dp_fdb_cent *cache, unsigned mask,
              const struct rte_hash *table, int fdb, const uint64_t *keys, const hash_sig_t *sig,
              uint16_t n, uint32_t *val)
{
    const void *kp[DP_BURST];
    hash_sig_t msig[DP_BURST];
    uint32_t mep[DP_BURST]; /* the epoch a miss's answer is cached under */
    uint8_t mi[DP_BURST];
    uint16_t nm = 0;
    uint64_t hits = 0;
    uint32_t ep = w->epoch;
    for (uint16_t i = 0; i < n; i++) {
        unsigned slot = sig[i] & mask;
        const struct dp_fdb_cent *e = &cache[slot];
        /* FDB: the slot's generation + 1 (0 = never valid), read before the
         * table lookup a miss makes (acquire: not after it) */
        uint32_t cur =
            fdb ? atomic_load_explicit(&dp.fdb_slot_gen[slot], memory_order_acquire) + 1 : ep;
        if (likely(e->key == keys[i] && e->epoch == cur)) {
            val[i] = e->val;
            hits |= 1ull << i;
        } else {
            kp[nm] = &keys[i];
            msig[nm] = sig[i];
            mep[nm] = cur;
            mi[nm++] = (uint8_t)i;
        }
    }
    if (fdb)
        w->wc[DP_WORKER_FDB_LOOKUPS] += n;
    if (nm == 0)
        return hits;
    void *d[DP_BURST];
    uint64_t mh = 0;
    rte_hash_lookup_with_hash_bulk_data(table, kp, msig, nm, &mh, d);
    if (fdb)
        w->wc[DP_WORKER_FDB_CACHE_MISSES] += nm;
    for (uint16_t j = 0; j < nm; j++) {
        if (!((mh >> j) & 1))
            continue; /* unknown keys are not cached */
        unsigned i = mi[j];
        uint32_t v =
            fdb ? DP_FV(DP_FDB_KIND(d[j]), DP_FDB_TARGET(d[j])) : (uint32_t)(uintptr_t)d[j];
        struct dp_fdb_cent *e = &cache[msig[j] & mask];
        e->key = keys[i];
        e->val = v;
        e->epoch = mep[j];
        val[i] = v;
        hits |= 1ull << i;
    }
    return hits;
}

/* FDB answers (DP_FV) of a burst; unknown MACs flood */
static __rte_always_inline uint64_t
fdb_lookup(struct dp_wctx *w, const uint64_t *keys, const hash_sig_t *sig, uint16_t n,
           uint32_t *val)
{
    return cached_lookup(w, w->fcache, DP_FDB_CACHE_SIZE - 1, dp.fdb, 1, keys, sig, n, val);
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
