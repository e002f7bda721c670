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

struct dp_capture;

/* the running capture, NULL when none; published by dp_capture_start,
 * unpublished (then dp_sync) by dp_capture_stop */
extern struct dp_capture *_Atomic dp_cap;

/* copy what matches of frames pkts[0..n) of port pi seen in direction dir
 * (DP_CAP_RX or DP_CAP_TX) at TSC time tsc (0: now) */
void dp_capture_burst(struct dp_capture *c, uint16_t pi, int dir, struct rte_mbuf **pkts,
                      uint16_t n, uint64_t tsc);

/* stop a running capture, if any (shutdown) */
void dp_capture_teardown(void);

/* in the worker: hand a burst to the capture if one runs */
static inline void
dp_capture_tap(uint16_t pi, int dir, struct rte_mbuf **pkts, uint16_t n, uint64_t tsc)
{
    struct dp_capture *c = atomic_load_explicit(&dp_cap, memory_order_acquire);
    if (__builtin_expect(c != NULL, 0))
        dp_capture_burst(c, pi, dir, pkts, n, tsc);
}

#endif /* DP_CAPTURE_H */
