/*
 * dp_capture.h - packet capture, the worker's side: one predictable branch
 * per burst while no capture runs (dp_cap is NULL); while one runs, the
 * frames of the captured ports that match its filter are copied into free
 * slots of its ring, and a frame without a free slot is dropped from the
 * capture (counted), never from forwarding.
 */
#ifndef DP_CAPTURE_H
#define DP_CAPTURE_H

#include <stdatomic.h>
#include <stdint.h>

#include <rte_mbuf.h>

#include "dataplane.h" /* DP_CAP_RX, DP_CAP_TX */

struct dp_capture;

/* the running capture, NULL when none; published by dp_capture_start,
 * unpublished (then dp_sync) by dp_capture_stop */
extern struct dp_capture *_Atomic dp_cap;

/* copy what matches of frames pkts[0..n) of port pi seen in direction dir
 * (DP_CAP_RX, DP_CAP_TX, or DP_CAP_DROP: dropped for `reason`, enum
 * dp_drop, before they are freed) at TSC time tsc (0: now) */
void dp_capture_burst(struct dp_capture *c, uint16_t pi, int dir, struct rte_mbuf **pkts,
                      uint16_t n, uint64_t tsc, int reason);

/* the most frames one tx burst hands to a driver (dp_tx.h checks) */
#define DP_CAP_HOLD 64

/*
 * A tx burst's records, copied before the driver takes the frames (it may
 * free one at once) and handed to the reader once it says how many it took:
 * the frames it did not take (tx_full) are not in the capture, since they
 * never left.
 */
struct dp_cap_held {
    struct dp_capture *c;
    uint16_t n;                /* entries below */
    uint16_t idx[DP_CAP_HOLD]; /* the frame's index in the burst */
    void *slot[DP_CAP_HOLD];   /* its record; NULL: matched, no free record */
};

/* what matches of pkts[0..n) (n <= DP_CAP_HOLD) copied into records held
 * in h, not yet handed over (reason: a drop's, else 0) */
void dp_capture_hold(struct dp_capture *c, uint16_t pi, int dir, struct rte_mbuf **pkts, uint16_t n,
                     uint64_t tsc, int reason, struct dp_cap_held *h);

/* the records of h's frames before index `taken` handed to the reader (and
 * counted); those of the frames after it, and of those whose bit is set in
 * `lost` (taken by the driver, dropped there), back to the free records */
void dp_capture_release(struct dp_cap_held *h, uint16_t taken, uint64_t lost);

/* control thread: port pi is being removed - a running capture takes no
 * more of its index (a later port given it is another), from the grace
 * period the removal waits for on */
void dp_capture_port_gone(uint16_t pi);

/* stop a running capture, if any (shutdown) */
void dp_capture_teardown(void);

/* in the worker: hand a burst to the capture if one runs */
static inline void
dp_capture_tap(uint16_t pi, int dir, struct rte_mbuf **pkts, uint16_t n, uint64_t tsc)
{
    struct dp_capture *c = atomic_load_explicit(&dp_cap, memory_order_acquire);
    if (__builtin_expect(c != NULL, 0))
        dp_capture_burst(c, pi, dir, pkts, n, tsc, 0);
}

/* in the worker: hand frames about to be dropped to the capture if one
 * runs (one predictable branch while none does), told of port pi */
static inline void
dp_capture_tap_drop(uint16_t pi, struct rte_mbuf **pkts, uint16_t n, int reason)
{
    struct dp_capture *c = atomic_load_explicit(&dp_cap, memory_order_acquire);
    if (__builtin_expect(c != NULL, 0))
        dp_capture_burst(c, pi, DP_CAP_DROP, pkts, n, 0, reason);
}

/* in the worker, before a tx burst goes to port pi's driver: its frames
 * copied into h if a capture runs (dp_capture_tx_done hands them over) */
static inline void
dp_capture_tap_tx(uint16_t pi, struct rte_mbuf **pkts, uint16_t n, struct dp_cap_held *h)
{
    struct dp_capture *c = atomic_load_explicit(&dp_cap, memory_order_acquire);
    h->n = 0;
    if (__builtin_expect(c != NULL, 0))
        dp_capture_hold(c, pi, DP_CAP_TX, pkts, n, 0, 0, h);
}

/* after it: the records of the frames the driver took (the first `taken`)
 * and sent (bit i of `lost` set: pkts[i] taken but dropped, not sent) */
static inline void
dp_capture_tx_done(struct dp_cap_held *h, uint16_t taken, uint64_t lost)
{
    if (__builtin_expect(h->n != 0, 0))
        dp_capture_release(h, taken, lost);
}

#endif /* DP_CAPTURE_H */
