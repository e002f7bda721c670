/*
 * afpacket.h - native AF_PACKET port driver for kernel interfaces.
 *
 * The fallback driver: no hugepages, no NIC. rx uses a TPACKET_V3 mmap ring,
 * tx a TPACKET_V2 mmap tx ring with PACKET_QDISC_BYPASS. Frames come in and go
 * out as the same rte_mbufs the pipeline uses, so the pipeline does not care
 * which driver a port has.
 *
 * Threading: one thread calls rx_burst, one thread at a time calls tx_burst
 * (callers serialise tx with their own lock if several workers transmit).
 */
#ifndef DP_AFPACKET_H
#define DP_AFPACKET_H

#include <stdint.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

struct dp_afp;

/* Open ifname. frames: ring size in frames (power of two, >= 64).
 * Returns 0, or dp_fail(-errno, ...) (dp_error.h) saying why. */
int dp_afp_open(const char *ifname, unsigned frames, struct rte_mempool *mp, struct dp_afp **out);
/* Receive up to n frames into mbufs from mp. Never blocks. */
uint16_t dp_afp_rx_burst(struct dp_afp *a, struct rte_mbuf **pkts, uint16_t n);
/* Queue up to n mbufs for transmission, kick the kernel once. Sent mbufs are
 * freed; returns how many were taken (the caller frees and counts the rest). */
uint16_t dp_afp_tx_burst(struct dp_afp *a, struct rte_mbuf **pkts, uint16_t n);
void dp_afp_mac(const struct dp_afp *a, uint8_t mac[6]);
void dp_afp_close(struct dp_afp *a);

#endif
