/*
 * dp_control.h - what the control files share. They run on the control
 * (main lcore) thread only; the pipeline never includes this header.
 *
 *   dp_eal.c       EAL, shared tables and rings, workers start/stop, teardown
 *   dp_port.c      ports: ethdev, ring and AF_PACKET ports added, removed, reopened
 *   dp_poll.c      which worker polls which (port, rx queue): the poll lists
 *   dp_net.c       networks: VNI, local ports, flood list
 *   dp_fdb.c       forwarding database
 *   dp_tunnel.c    the VTEP and the tunnels to remote VTEPs (header templates)
 *   dp_neigh.c     underlay neighbours, ARP requests, housekeeping
 *   dp_learn.c     MACs learned from the underlay: limits, ageing
 *   dp_guard.c     pod ports' guards: own addresses, storm rate
 *   dp_plane.c     network planes, port shapers, DSCP marking (calls dp_qos.c)
 *   dp_counters.c  counter blocks and their names
 *   dp_ring.c      frames into and out of ring ports (tests and tools)
 *   dp_error.c     the message of the last failed call (dp_error.h)
 *
 * Below them, called and never calling back: dp_qos.c (the plane
 * scheduler, which includes dp_qos.h only) and afpacket.c (the AF_PACKET
 * driver, which uses dp_error.h only). Beside them: dp_pipeline.c, the
 * workers' loop, which shares dp_internal.h with them.
 *
 * Every change the workers can see follows one recipe: build a new immutable
 * snapshot, publish it with an atomic store, wait for a grace period
 * (dp_sync), free the old one. Hash tables are DPDK hashes in lock-free
 * reader mode with the hash library's own RCU defer queue.
 *
 * A control function that fails returns dp_fail(-errno, "why", ...)
 * (dp_error.h).
 */
#ifndef DP_CONTROL_H
#define DP_CONTROL_H

#include "dp_internal.h"
#include "dp_error.h"

/* dp_eal.c */
extern int dp_setup_done; /* dp_setup ran: pool, tables, rings, counters exist */
void dp_sync(void);

/* dp_port.c */
struct dp_port *dp_port_get(int idx);
/* AF_PACKET port p's rx socket gets the express lane's filter (dp_express.c) */
int dp_express_refilter(struct dp_port *p);
/* the lane's copies of the core's tables, told of each change (nothing while
 * the lane is not loaded): a tunnel, a network, the uplink and the planes'
 * marking, an FDB entry (val 0: gone) */
void dp_express_tunnel(int ti);
void dp_express_net(int net);
void dp_express_uplink(void);
void dp_express_fdb(uint64_t key, uint32_t val);
int64_t dp_express_seen_ms(uint64_t key);
void dp_ports_free_all(void); /* teardown, workers stopped */

/* dp_poll.c: a change of the poll lists is planned (allocations: may fail,
 * NULL) before it is applied (cannot fail), so that a caller can prepare
 * everything else first; dp_poll_rebuild does both */
struct dp_poll_plan;
struct dp_poll_plan *dp_poll_plan(int idx, const struct dp_port *p);
void dp_poll_apply(struct dp_poll_plan *plan);
void dp_poll_plan_free(struct dp_poll_plan *plan);
int dp_poll_rebuild(void);
int dp_rxq_worker(const struct dp_port *p, int q);
int dp_least_loaded_worker(void);
void dp_poll_free_all(void);

/* dp_net.c: copies to modify, published whole (dp_net_publish frees the
 * one it replaces after a grace period) */
struct dp_net *dp_net_get(int net);
struct dp_net *dp_net_with_local(int net, int port, int add);
void dp_net_publish(int net, struct dp_net *n);
int dp_nets_prepare(uint32_t max_frame, struct dp_net *fresh[DP_MAX_NETS]);
void dp_nets_publish(struct dp_net *fresh[DP_MAX_NETS]);
void dp_nets_free_all(void);

/* dp_fdb.c: entries to delete are collected first (may fail), deleted after
 * (cannot fail) */
struct dp_fdb_keys {
    size_t n, cap;
    uint64_t *key;
};
int dp_fdb_collect_port(int port, struct dp_fdb_keys *keys);
int dp_fdb_put_remote(int net, const uint8_t *mac, uint32_t ip, int learned);
int dp_fdb_collect_net(int net, struct dp_fdb_keys *keys);
void dp_fdb_purge(struct dp_fdb_keys *keys);
void dp_fdb_keys_free(struct dp_fdb_keys *keys);

/* after every VTEP table change: the workers' caches of it start over
 * (dp_internal.h) */
static inline void
dp_tables_changed(void)
{
    atomic_fetch_add_explicit(&dp.tbl_gen, 1, memory_order_release);
}

/* after FDB entry `key` changed (the table holds its new answer, or none):
 * the workers' cached answer for it goes (dp_internal.h) */
static inline void
dp_fdb_changed(uint64_t key)
{
    unsigned slot = dp_key8_hash(key) & (DP_FDB_CACHE_SIZE - 1);
    atomic_fetch_add_explicit(&dp.fdb_slot_gen[slot], 1, memory_order_release);
}

/* dp_tunnel.c */
extern struct dp_vtep_conf dp_vconf; /* the VTEP as last set */
extern int dp_vconf_set;
uint32_t dp_max_frame(void);
int dp_tunnel_ref(int net, uint32_t ip);
void dp_tunnel_unref(int net, int ti);
int dp_tunnels_refresh_nh(uint32_t nh_ip);
void dp_tunnels_free_all(void);

/* dp_plane.c: the worker of a plane's own, of the plane that claims rx
 * queue q (>= 1); -1 = none */
int dp_plane_worker(int plane);
int dp_plane_rxq_worker(int q);

/* dp_neigh.c */
const uint8_t *dp_neigh_mac(uint32_t ip);
void dp_neigh_requests_drop(void);
void dp_neigh_answers_drop(void);

/* dp_learn.c: learn (housekeeping, from workers' reports), age, and forget
 * an entry the control API set or removed */
int dp_fdb_learn(int net, const uint8_t *mac, uint32_t ip);
void dp_learn_age(void);
void dp_learn_forget(uint64_t key);
/* key's entry is a learned one: 1, *age_ms since it was learned or
 * last confirmed and *frozen_ms it stays frozen (0: not), else 0 */
int dp_learn_age_of(uint64_t key, uint32_t *age_ms, uint32_t *frozen_ms);
/* a worker heard a remote MAC the FDB has from VTEP ip (DP_EV_HEARD) */
void dp_learn_heard(int net, const uint8_t *mac, uint32_t ip);

#endif /* DP_CONTROL_H */
