/*
 * dataplane.h - the one contract between the C forwarding core and Python.
 *
 * build.py feeds the text between the CDEF markers to cffi's cdef(), so that
 * part holds plain declarations only: integer #defines, structs, prototypes.
 * Everything else (X-macro lists, inline helpers) lives in dp_internal.h.
 *
 * Conventions
 *   - every exported symbol starts with dp_ / DP_;
 *   - functions return 0 (or a non-negative value) on success and a negative
 *     errno on failure; dp_last_error() then holds a message naming the cause;
 *   - control functions are called from the control (main lcore) thread only;
 *     workers read tables lock-free and report quiescent states (RCU/QSBR).
 */
#ifndef DATAPLANE_H
#define DATAPLANE_H

#include <stdint.h>
#include <stddef.h>

/* CDEF BEGIN */

#define DP_ABI_VERSION 40

#define DP_MAX_WORKERS 8
#define DP_MAX_LCORE 128 /* CPUs 0..127 as lcores: RTE_MAX_LCORE of the DPDK builds we take */
#define DP_MAX_PORTS 256
#define DP_MAX_RXQ 8 /* rx queues per port */
#define DP_MAX_NETS 256
#define DP_MAX_TUNNELS 1024
#define DP_MAX_PLANES 8
#define DP_BURST 32

/* wire limits (the Python checks read these, never a copy) */
#define DP_VNI_MAX 16777215  /* 24-bit VXLAN network identifier */
#define DP_VXLAN_OVERHEAD 50 /* outer Ether 14 + IPv4 20 + UDP 8 + VXLAN 8 */
#define DP_UNDERLAY_MTU_MIN 576
#define DP_UNDERLAY_MTU_MAX 9216
/* on the wire per frame besides its bytes (FCS 4, preamble 8, gap 12): shapers count it */
#define DP_WIRE_OVERHEAD 24
/* a shaper's (and a plane's) least rate, bit/s, 0 being none; its bucket,
 * bytes: at least one frame, at most what its 64-bit tokens hold (dp_qos.h) */
#define DP_SHAPER_RATE_MIN 8000
#define DP_SHAPER_BURST_MIN 2048
#define DP_SHAPER_BURST_MAX 67108864 /* 64 MiB */

/* port roles */
#define DP_ROLE_POD 0
#define DP_ROLE_UPLINK 1

/* port drivers */
#define DP_DRV_ETHDEV 0
#define DP_DRV_AFPACKET 1

/* counter blocks (dp_counter_block) */
#define DP_BLOCK_PORT 0
#define DP_BLOCK_NET 1
#define DP_BLOCK_DROP 2
#define DP_BLOCK_WORKER 3
#define DP_BLOCK_QOS 4
#define DP_BLOCK_LAT 5

/* per (port, plane) queue counters */
#define DP_QOS_ENQUEUED 0
#define DP_QOS_SENT 1
#define DP_QOS_DROPPED 2
#define DP_QOS_SENT_BYTES 3
#define DP_QOS_CTR_COUNT 4

/* per plane latency histogram rows: 17 buckets (16 bounds + inf), then the
 * sum of latencies in TSC cycles */
#define DP_LAT_BUCKETS 17
#define DP_LAT_SUM 17
#define DP_LAT_ROW 18

/* per-port counters */
#define DP_PORT_RX_PACKETS 0
#define DP_PORT_RX_BYTES 1
#define DP_PORT_TX_PACKETS 2
#define DP_PORT_TX_BYTES 3
#define DP_PORT_SHM_FAULTS 4  /* bursts cut short by a fault in a pod's shared memory (dp_shm.h) */
#define DP_PORT_GUARD_DROPS 5 /* a pod's frames its guard refused (spoof_*, storm) */
#define DP_PORT_CTR_COUNT 6

/* per-network counters */
#define DP_NET_ENCAP 0
#define DP_NET_DECAP 1
#define DP_NET_FLOOD 2
#define DP_NET_LOCAL 3
#define DP_NET_CTR_COUNT 4

/* per-worker counters */
#define DP_WORKER_POLLS 0
#define DP_WORKER_BUSY_POLLS 1
#define DP_WORKER_FDB_LOOKUPS 2      /* FDB lookups of the worker */
#define DP_WORKER_FDB_CACHE_MISSES 3 /* ... that its FDB cache could not answer */
#define DP_WORKER_FDB_SLOW_LOOKUPS 4 /* ... of those, not answered by the key's home bucket */
#define DP_WORKER_IDLE_SLEEPS 5      /* sleeps of an idle worker (dp_set_idle_sleep) */
#define DP_WORKER_IDLE_YIELDS 6      /* CPU handed over by an idle spinning worker */
#define DP_WORKER_LEARN_LIMITED 7    /* learning reports held back: over the worker's budget */
#define DP_WORKER_NEIGH_HELD 8       /* frames held while their next hop was being resolved */
#define DP_WORKER_SLOWPATH_LOST 9    /* reports to the control thread its full ring refused */
#define DP_WORKER_CTR_COUNT 10

/* fdb entry kinds (dp_fdb_get) */
#define DP_FDB_NONE 0
#define DP_FDB_LOCAL 1
#define DP_FDB_REMOTE 2

struct dp_eal_info {
    int n_workers; /* worker lcores started */
    unsigned main_lcore;
    int socket_id;
};

struct dp_vtep_conf {
    uint32_t ip;           /* VTEP IPv4, host byte order */
    uint8_t prefix_len;    /* underlay subnet of the VTEP address */
    uint32_t gateway;      /* underlay next hop for other subnets, 0 = none */
    uint8_t mac[6];        /* VTEP MAC (the uplink's) */
    uint16_t udp_port;     /* VXLAN UDP destination port, normally 4789 */
    uint16_t underlay_mtu; /* IP MTU of the underlay, normally 1500 */
    int uplink;            /* port index of the uplink, -1 = none */
    int learning;          /* accept (and learn from) unknown source VTEPs */
    int static_nh;         /* 1: use static_nh_mac, no ARP */
    uint8_t static_nh_mac[6];
};

struct dp_port_info {
    int used;
    int driver;
    int role;
    int net;
    int worker;
    uint16_t eth_port;
    uint16_t n_txq;
    uint16_t n_rxq;
    int rxq_worker[DP_MAX_RXQ]; /* the worker polling each rx queue */
    uint8_t mac[6];
    char name[64];
    int tunnel_gso;             /* VXLAN super-frames leave whole (tunnel tap) */
    uint64_t tunnel_gso_frames; /* how many did */
    int shm;                    /* on a pod's shared memory (memif): bursts guarded */
    int shm_set_aside;          /* ... set aside after a fault (dp_shm.h) */
    int link;                   /* a DPDK port's link: 1 up (a memif or vhost-user
                                 * pod's peer connected; net_af_xdp: its kernel
                                 * interface up with carrier), 0 down, -1 not known */
};

/* a network plane: strict priority (higher first), rates, queue, marking */
struct dp_plane_conf {
    int priority;       /* unique among planes; higher is served first */
    uint64_t min_bps;   /* guaranteed rate on a shaped port, 0 = none */
    uint64_t max_bps;   /* rate limit on a shaped port, 0 = none */
    uint32_t queue_len; /* frames per shaped port, power of two */
    int dscp;           /* outer DSCP to mark, -1 = copy the inner one */
    int worker;         /* worker that polls this plane's pod ports, -1 = any */
    int rx_queue;       /* rx queue (1..) of multi-queue ports this plane's
                                worker polls, -1 = none; needs worker */
};

/* process-wide */
int dp_abi_version(void);
const char *dp_last_error(void);
int dp_eal_init(int argc, char **argv, struct dp_eal_info *info);
int dp_log_json(void); /* DPDK's log lines as JSON objects on stderr (before dp_eal_init) */
int dp_setup(unsigned n_mbufs);
int dp_start(void);
int dp_stop(void);
int dp_shutdown(void);
int dp_running(void);
/* an idle worker sleeps up to us microseconds, woken by a frame on a kernel
 * port (0: it spins, the default; at most 100000) */
int dp_set_idle_sleep(unsigned us);
void dp_set_idle_yield(int on); /* 1 (the default): an idle spinning worker yields its CPU */
/* A/B builds (DP_AB=1 at build time; bench/abtest.py): 1 in such a build;
 * dp_ab_set picks the second version of the code under measurement */
int dp_ab_built(void);
void dp_ab_set(int on);

/* ports */
/* net: network of a pod port from its first packet on (-1: none yet) */
/* n_rxq: rx queues (ethdev ports; steering traffic into them is the
 * device's job: RSS, flow rules, or the kernel for a tap); mtu: the MTU the
 * device is set to (0: its own; up to 1500 only recorded), with rx scatter
 * and multi-segment tx past an mbuf's room (refused if the device has
 * neither) */
int dp_port_add(const char *devargs, int role, int net, unsigned n_rxq, unsigned mtu);
int dp_port_add_ring(const char *name, int role, int net, unsigned ring_size, unsigned n_rxq);
int dp_port_add_afpacket(const char *ifname, int role, int net, unsigned frames);
int dp_port_del(int port); /* a kernel port's sockets close in the background */
int dp_port_info(int port, struct dp_port_info *out);
int dp_port_set_net(int port, int net);
/* an AF_PACKET port sends runs of one UDP flow's datagrams as one UDP GSO
 * frame (afpacket.h; off when added) */
int dp_port_set_udp_gso(int port, int on);
/* an AF_PACKET uplink's tunnel tap (afpacket.h): opened under the name tap,
 * or closed (tap NULL; not while tunnel GSO is on) */
int dp_port_tunnel_tap(int port, const char *tap);
/* VXLAN-encapsulated super-frames to the uplink go whole to its tunnel tap
 * (on: the tap open and redirected) instead of being cut before
 * encapsulation */
int dp_port_set_tunnel_gso(int port, int on);
/* AF_PACKET port `port` reopened on the interface of its name as that is
 * now (a device deleted and created again: a new ifindex): its index,
 * role, worker, shaper and counters stay, the old device's drops stay in
 * the kport_* totals; the port takes the new device's MAC, and its UDP GSO
 * batches, tunnel tap and tunnel GSO start off, as on a new port. The new
 * device's ifindex; on failure nothing changed. */
int dp_port_afpacket_reopen(int port, unsigned frames);
/* kernel (AF_PACKET) ports' drops, the kernel's own ring drops included
 * (kport_*), and what DPDK ports' own drivers dropped before the core
 * received it (dev_rx_*: rte_eth_stats imissed, ierrors, rx_nombuf; for
 * net_af_xdp the AF_XDP socket's drops), written into the control thread's
 * row of the drop counters; called before the counters are read */
void dp_kport_stats_update(void);

/* the express lane (dp_express.c, bpf/express.bpf.c): unicast IP from a
 * pod port carried by the kernel, to another pod port of its network, or
 * encapsulated to a remote VTEP out of a kernel uplink; and VXLAN from a
 * kernel uplink decapsulated into a pod */
#define DP_EXPRESS_MAX_IP4 8
#define DP_EXPRESS_MAX_IP6 8
#define DP_EXPRESS_COUNTS 9
/* load the lane's compiled programs from path, and switch it on; carry 0:
 * a guard only - it carries nothing, ever (every frame takes the core's
 * path), and its tc program on the pods' host ends only drops what the
 * core's socket took, so that the node's stack takes none of it; nothing
 * on the uplink */
int dp_express_open(const char *path, int carry);
int dp_express_close(void);
/* 0: not loaded, 1: the lane, 2: the guard only (dp_express_open) */
int dp_express_loaded(void);
/* whether the lane encapsulates to remote VTEPs: only where the kernel lets
 * its programs check a frame's checksum offsets (bpf_cast_to_kern_ctx,
 * Linux 6.2) */
int dp_express_remote(void);
/* updates of remote MACs the lane's table (65,536) had no room for, since
 * the process started (a MAC stored again counts again): the core carries
 * their frames (dp_express_fdb) */
uint64_t dp_express_remote_refused(void);
/* whether this kernel has that function (and its BTF): express.bpf.o;
 * else the plain build, express.plain.bpf.o */
int dp_express_kernel_checks(void);
/* off: every frame takes the core's path (a capture running); a guard
 * stays off */
int dp_express_enable(int on);
/* AF_PACKET pod port `port`: its rx socket refuses what the lane carries
 * (kept over a reopen; none for a guard, which carries nothing) */
int dp_express_sock_filter(int port);
/* interface ifindex is a pod's host end (on) or no longer (off): its
 * frames never reach the node's stack where the lane's tc program runs on
 * it, whether or not it is a lane port (set before dp_express_attach) */
int dp_express_hostend(int ifindex, int on);
/* the lane's tc program on the ingress of interface ifindex, or off it */
int dp_express_attach(int ifindex);
int dp_express_detach(int ifindex);
/* the lane takes nothing more from the uplink and its tc program comes off
 * it (a stop that does not keep the lane) */
int dp_express_uplink_release(void);
/* whether the uplink can carry frames now (up, with carrier: the node
 * service watches it); while it cannot, the lane leaves the pods' frames
 * to the underlay to the core, which counts them dropped (kport_tx_down) */
int dp_express_uplink_carries(int carries);
/* whether pod port `port`'s interface can take frames now (its veth has
 * carrier: the pod's end is up; the node service watches it); while it
 * cannot, the lane hands it nothing - frames to it, from pods and from the
 * underlay, take the core's path, which counts them dropped
 * (kport_kernel_tx), where the kernel would drop the lane's unseen. A port
 * joins the lane carrying; dp_express_port_clear forgets this */
int dp_express_port_carries(int port, int carries);
/* the lane carries frames from and to the port on ifindex (network net,
 * core port index port, the pod's MAC, frames of at most the network's
 * mtu (super-frames apart); with spoof_on only from its n4 IPv4 addresses
 * ip4, network order, and n6 IPv6 addresses ip6, 16 bytes each in wire
 * order), or no more */
int dp_express_port_set(int ifindex, int net, int port, const uint8_t *mac, int mtu, int spoof_on,
                        const uint32_t *ip4, int n4, const uint8_t *ip6, int n6);
int dp_express_port_clear(int ifindex, int net, const uint8_t *mac);
/* frames and bytes the lane took from port (out[0], out[1]; the uplink:
 * VXLAN it decapsulated) and delivered to it or, the uplink, sent out of
 * it (out[2], out[3]); of those taken, the frames and bytes encapsulated
 * to a remote VTEP (out[4], out[5]); the frames the kernel would not
 * encapsulate (the uplink: decapsulate), dropped (out[6]); of those
 * delivered, the frames decapsulated from the underlay (out[7]); or set
 * to 0 */
int dp_express_counts(int port, uint64_t out[DP_EXPRESS_COUNTS]);
int dp_express_counts_reset(int port);
/* frames the lane's socket program refused to the core and its tc program
 * then could not carry, the tables having changed between the two (a pod
 * removed, a MAC moved): dropped, as express_changed; summed over CPUs
 * since the lane was loaded */
int dp_express_lost(uint64_t *out);

/* networks */
int dp_net_add(int net, uint32_t vni, int plane);
int dp_net_del(int net);
int dp_net_flood_set(int net, const uint32_t *vtep_ips, int n);
/* the VTEPs network net floods to, the first cap of them into vtep_ips
 * (host order) and resolved (1: the underlay next hop's MAC is known, so
 * frames to it leave): how many there are */
int dp_net_flood_get(int net, uint32_t *vtep_ips, uint8_t *resolved, int cap);

/* forwarding database */
int dp_fdb_add_local(int net, const uint8_t *mac, int port);
int dp_fdb_add_remote(int net, const uint8_t *mac, uint32_t vtep_ip);
int dp_fdb_del(int net, const uint8_t *mac);
int dp_fdb_get(int net, const uint8_t *mac, int *kind, uint32_t *target);
int dp_fdb_count(void);
/* one FDB entry as dp_fdb_list gives it */
struct dp_fdb_entry {
    int net;
    uint8_t mac[6];
    int kind;           /* DP_FDB_LOCAL or DP_FDB_REMOTE */
    uint32_t target;    /* local: the port; remote: the VTEP's IPv4 address */
    int learned;        /* 1: learned from the underlay (dp_learn) */
    uint32_t age_ms;    /* learned: since it was learned or last confirmed */
    uint32_t frozen_ms; /* learned, found moving too often: left frozen (0: not) */
};
/* up to cap entries of network net (-1: every network) into out, from
 * table position *pos on (0 to begin): how many (0: no more), *pos
 * advanced. Positions hold while no entry is added or removed. */
int dp_fdb_list(int net, uint32_t *pos, struct dp_fdb_entry *out, int cap);

/* VTEP and underlay neighbours */
int dp_vtep_set(const struct dp_vtep_conf *conf);
int dp_neigh_set(uint32_t ip, const uint8_t *mac);
int dp_neigh_get(uint32_t ip, uint8_t *mac);
/* every next hop learned by ARP asked again now (the uplink is on a new
 * device); each keeps its MAC until it answers, and is forgotten, as a
 * stale one is, when it does not; those set by dp_neigh_set stay. How many
 * were asked. */
int dp_neigh_refresh(void);
/* every neighbour forgotten, those set by dp_neigh_set too (a reset); for
 * tunnels still there, the next hops are asked for again. How many. */
int dp_neigh_flush(void);
int dp_housekeeping(void);

/* planes and queues */
int dp_plane_set(int plane, const struct dp_plane_conf *conf);
int dp_port_shaper(int port, uint64_t rate_bps, uint32_t burst_bytes);
int dp_qos_mode(int priority_on, int latency_on);
int dp_dscp_plane(int dscp, int plane);
int dp_qos_depth(int port, int plane);
uint64_t dp_tsc_hz(void);
int dp_lat_bound_ns(int idx, uint64_t *ns);

/* counters: worker-major arrays of uint64_t, read without locks */
uint64_t *dp_counter_block(int block, size_t *n_rows, size_t *row_len);
int dp_counter_count(int block);
const char *dp_counter_name(int block, int idx);

/* test and tool ports: push frames into / take frames out of a ring port */
int dp_ring_inject(int port, int queue, const uint8_t *data, const uint32_t *lens, int n);
int dp_ring_collect(int port, uint8_t *buf, size_t buf_len, uint32_t *lens, int max);

/* packet capture, one at a time: frames of the ports in port_mask (bit i =
 * port i, DP_MAX_PORTS bits) seen in the directions dirs that match the
 * pcap-filter expression (NULL or "" = all) are copied, up to snaplen
 * bytes, into `slots` records (a power of two) that dp_capture_read hands
 * out; a frame finding no free record is dropped from the capture only */
#define DP_CAP_RX 1
#define DP_CAP_TX 2
/* frames the core dropped, each with its reason (enum dp_drop): told of
 * the port they came in by, or - dropped at a port's transmit (tx_full,
 * queue_full, an af_xdp port's kport_tx_oversize) - of the port they were
 * to leave by */
#define DP_CAP_DROP 4
#define DP_CAP_SNAPLEN_MIN 64
#define DP_CAP_SNAPLEN_MAX 65535
#define DP_CAP_SLOTS_MAX 65536

/* a record of dp_capture_read: this header, caplen bytes of the frame, then
 * padding to a multiple of 8 */
struct dp_cap_rec {
    uint64_t ts_ns; /* wall clock, ns since the epoch */
    uint32_t orig_len;
    uint32_t caplen;
    uint16_t port;
    uint8_t dir;    /* DP_CAP_RX, DP_CAP_TX or DP_CAP_DROP */
    uint8_t reason; /* DP_CAP_DROP: why (enum dp_drop); else 0 */
    uint8_t pad[4];
};

struct dp_cap_stats {
    uint64_t matched;  /* frames the filter took */
    uint64_t captured; /* ... copied into a record */
    uint64_t dropped;  /* ... with no free record */
    uint64_t queued;   /* records waiting for dp_capture_read */
};

int dp_capture_start(const uint8_t *port_mask, int dirs, const char *filter, unsigned snaplen,
                     unsigned slots);
/* port pi (one added since the start) taken by the running capture from
 * its next burst on */
int dp_capture_add_port(int pi);
/* records into buf (bytes written); the ones that do not fit stay queued */
int dp_capture_read(uint8_t *buf, size_t buf_len);
int dp_capture_stats(struct dp_cap_stats *out);
/* the workers stop adding to the capture; its records stay readable and
 * its counters are final, until dp_capture_stop frees it */
int dp_capture_detach(void);
/* detached (if not yet) and freed, with the records still queued */
int dp_capture_stop(void);

/* anti-spoofing and storm control of pod ports (dp_guard.h): the port's
 * MAC and the IPv4 (host order) and IPv6 (16 bytes each, wire order)
 * addresses it may send from; mac NULL: no address checks */
#define DP_GUARD_MAX_IP4 16
#define DP_GUARD_MAX_IP6 16
int dp_port_guard_set(int port, const uint8_t *mac, const uint32_t *ip4, int n4, const uint8_t *ip6,
                      int n6);
/* whether the port may send DHCP (UDP from port 67) and DHCPv6 (from 547)
 * server and relay messages; not by default (dropped as spoof_dhcp while
 * the address checks are on) */
int dp_port_guard_dhcp_server(int port, int allowed);
/* broadcast, multicast and unknown unicast from the port: pps packets/s,
 * burst packets; pps 0 = unlimited */
int dp_port_storm_set(int port, uint64_t pps, uint32_t burst);
/* mbufs of the core's pool not free (in use, queued, or in flight) */
unsigned dp_pool_in_use(void);

/* learning from the underlay (vtep learning, dp_learn.c): how long a
 * learned MAC lives unconfirmed, how many a network and a source VTEP may
 * hold; what happened to what was heard (dp_learn_stat) */
#define DP_LEARN_AGE_MS_DEFAULT 300000
#define DP_LEARN_PER_NET_DEFAULT 4096
#define DP_LEARN_PER_VTEP_DEFAULT 1024
#define DP_LEARN_LEARNED 0   /* new entries */
#define DP_LEARN_MOVED 1     /* learned entries now behind another VTEP */
#define DP_LEARN_STATIC 2    /* refused: a local or configured entry */
#define DP_LEARN_LIMIT 3     /* refused: a limit (network, VTEP, node, core tables) */
#define DP_LEARN_AGED 4      /* removed: not confirmed in time */
#define DP_LEARN_DUPLICATE 5 /* learned MACs found moving too often: frozen */
#define DP_LEARN_FROZEN 6    /* refused: a move of a frozen MAC */
#define DP_LEARN_STAT_COUNT 7
int dp_learn_config(uint32_t age_ms, uint32_t per_net, uint32_t per_vtep);
/* duplicate MACs: a learned MAC about to make its moves-th move within
 * window_ms stays where it is for freeze_ms (moves 0: no detection) */
#define DP_LEARN_DUP_MOVES_DEFAULT 5
#define DP_LEARN_DUP_WINDOW_MS_DEFAULT 180000
#define DP_LEARN_DUP_FREEZE_MS_DEFAULT 180000
int dp_learn_dup_config(uint32_t moves, uint32_t window_ms, uint32_t freeze_ms);
/* learned entries of network net (-1: every network), of mac (NULL: every
 * MAC) removed - a frozen duplicate's freeze with it: how many */
int dp_learn_clear(int net, const uint8_t *mac);
uint64_t dp_learn_stat(int which);
int dp_learn_count(void);

/* underlay neighbours learned by ARP are asked again after reachable_ms */
int dp_neigh_timers(uint32_t reachable_ms);

/* CDEF END */

#endif /* DATAPLANE_H */
