/*
 * dp_port.c - ports: DPDK devices (ethdev), ring ports (tests and tools) and
 * native AF_PACKET ports, added and removed; a pod port moved to another
 * network; an AF_PACKET port reopened on a device re-created under its
 * name. A port is published whole, then its queues are dealt to the
 * workers (dp_poll.c).
 *
 * Every change allocates all it needs first; a failure then undoes what was
 * made (the device, the driver state) and leaves the published state as it
 * was.
 */
#include <errno.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <rte_dev.h>
#include <rte_errno.h>
#include <rte_bus_vdev.h>
#include <rte_ethdev.h>
#include <rte_eth_ring.h>
#include <rte_malloc.h>

#include "dp_capture.h"
#include "dp_control.h"
#include "dp_guard.h"
#include "dp_shm.h"
#include "dp_qos.h"

struct dp_port *
dp_port_get(int idx)
{
    if (idx < 0 || idx >= DP_MAX_PORTS)
        return NULL;
    return atomic_load(&dp.ports[idx]);
}

static int
port_slot(void)
{
    for (int i = 0; i < DP_MAX_PORTS; i++)
        if (!atomic_load(&dp.ports[i]))
            return i;
    return -1;
}

/* a device of DPDK's memif driver: its bursts read a pod's shared memory
 * (dp_shm.h), and its removal holds the interrupt thread (ethdev_release) */
static int
is_memif(const struct rte_eth_dev_info *di)
{
    return di->driver_name != NULL && strcmp(di->driver_name, "net_memif") == 0;
}

static int
ethdev_setup(uint16_t pid, struct dp_port *p, unsigned n_rxq, unsigned mtu)
{
    struct rte_eth_dev_info di;
    int ret = rte_eth_dev_info_get(pid, &di);
    if (ret != 0)
        return dp_fail(ret, "port %s: cannot read device info", p->name);
    if (n_rxq < 1 || n_rxq > DP_MAX_RXQ)
        return dp_fail(-EINVAL, "port %s: %u rx queues, not 1..%d", p->name, n_rxq, DP_MAX_RXQ);
    if (n_rxq > di.max_rx_queues)
        return dp_fail(-EINVAL, "port %s: %u rx queues asked, the device has at most %u", p->name,
                       n_rxq, (unsigned)di.max_rx_queues);
    uint16_t ntx = (uint16_t)dp.n_workers;
    if (di.max_tx_queues < ntx)
        ntx = 1;
    struct rte_eth_conf conf;
    memset(&conf, 0, sizeof(conf));
    /* the uplink's device verifies the outer UDP checksums VTEPs send
     * (Linux's by default), where it can: the core need not (dp_decap.h) */
    if (p->role == DP_ROLE_UPLINK) {
        conf.rxmode.offloads |= di.rx_offload_capa & RTE_ETH_RX_OFFLOAD_UDP_CKSUM;
        /* (one that parses VXLAN says the outer one apart) */
        conf.rxmode.offloads |= di.rx_offload_capa & RTE_ETH_RX_OFFLOAD_OUTER_UDP_CKSUM;
    }
    if (mtu > 0) {
        /* the ethdev layer's own check: the MTU plus the device's
         * overhead within its longest frame */
        uint32_t over = di.max_mtu != UINT16_MAX && di.max_rx_pktlen > di.max_mtu
                            ? di.max_rx_pktlen - di.max_mtu
                            : RTE_ETHER_HDR_LEN + RTE_ETHER_CRC_LEN;
        if (mtu > di.max_mtu || mtu < di.min_mtu || mtu + over > di.max_rx_pktlen)
            return dp_fail(-EINVAL,
                           "port %s: an MTU of %u asked, the device takes MTUs of %u..%u "
                           "(frames of at most %u bytes)",
                           p->name, mtu, (unsigned)di.min_mtu,
                           (unsigned)RTE_MIN((uint32_t)di.max_mtu, di.max_rx_pktlen - over),
                           (unsigned)di.max_rx_pktlen);
        conf.rxmode.mtu = mtu;
        /* frames of this MTU received and sent whole: past an mbuf's room
         * (counted as the largest drivers count a frame: two VLAN tags and
         * the CRC), a chain of mbufs each way */
        uint32_t frame = mtu + RTE_ETHER_HDR_LEN + 2 * RTE_VLAN_HLEN + RTE_ETHER_CRC_LEN;
        uint32_t room = rte_pktmbuf_data_room_size(dp.pool) - RTE_PKTMBUF_HEADROOM;
        if (frame > room) {
            if (!(di.rx_offload_capa & RTE_ETH_RX_OFFLOAD_SCATTER) ||
                !(di.tx_offload_capa & RTE_ETH_TX_OFFLOAD_MULTI_SEGS))
                return dp_fail(-EINVAL,
                               "port %s: an MTU of %u needs frames of %u bytes in chains of "
                               "%u-byte buffers, which the device cannot receive or send "
                               "(no rx scatter or multi-segment tx)",
                               p->name, mtu, frame, room);
            conf.rxmode.offloads |= RTE_ETH_RX_OFFLOAD_SCATTER;
            conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_MULTI_SEGS;
        }
    }
    ret = rte_eth_dev_configure(pid, (uint16_t)n_rxq, ntx, &conf);
    if (ret != 0)
        return dp_fail(ret, "port %s: rte_eth_dev_configure failed (%s)", p->name, strerror(-ret));
    /* an MTU past Ethernet's set on the device itself too (a tap's kernel
     * end, a kernel interface under net_af_packet): configure only records
     * it for most drivers, and one without an MTU operation has it
     * recorded. Ethernet's own is only recorded: the interface of a
     * kernel-backed driver keeps a larger MTU it has for other traffic. */
    if (mtu > RTE_ETHER_MTU && (ret = rte_eth_dev_set_mtu(pid, (uint16_t)mtu)) != 0 &&
        ret != -ENOTSUP)
        return dp_fail(ret, "port %s: cannot set its MTU to %u (%s)", p->name, mtu, strerror(-ret));
    uint16_t nrxd = 1024, ntxd = 1024;
    ret = rte_eth_dev_adjust_nb_rx_tx_desc(pid, &nrxd, &ntxd);
    if (ret != 0)
        return dp_fail(ret, "port %s: cannot size its descriptor rings (%s)", p->name,
                       strerror(-ret));
    int sock = rte_eth_dev_socket_id(pid);
    if (sock < 0)
        sock = (int)rte_socket_id();
    for (uint16_t q = 0; q < n_rxq; q++) {
        ret = rte_eth_rx_queue_setup(pid, q, nrxd, (unsigned)sock, NULL, dp.pool);
        if (ret != 0)
            return dp_fail(ret, "port %s: rx queue %u setup failed (%s)", p->name, q,
                           strerror(-ret));
    }
    for (uint16_t q = 0; q < ntx; q++) {
        ret = rte_eth_tx_queue_setup(pid, q, ntxd, (unsigned)sock, NULL);
        if (ret != 0)
            return dp_fail(ret, "port %s: tx queue setup failed (%s)", p->name, strerror(-ret));
    }
    ret = rte_eth_dev_start(pid);
    if (ret != 0)
        return dp_fail(ret, "port %s: start failed (%s)", p->name, strerror(-ret));
    (void)rte_eth_promiscuous_enable(pid); /* not every PMD has it; harmless */
    struct rte_ether_addr ea;
    if (rte_eth_macaddr_get(pid, &ea) == 0)
        memcpy(p->mac, ea.addr_bytes, 6);
    p->n_txq = ntx;
    p->n_rxq = (uint16_t)n_rxq;
    p->shm = is_memif(&di);
    atomic_store(&dp_shm_faulted[p->idx], 0);
    return 0;
}

/* stop an ethdev port and give its device back (a vdev is removed, which
 * closes it; what cannot be removed is closed).
 *
 * A memif port is released with DPDK's interrupt thread held: the driver's
 * handlers run there (a peer's exit unmaps and frees the connection's
 * regions, a new peer maps them), and DPDK 22.11's net_memif frees the
 * regions on stop as well, without a lock between the two; a peer leaving
 * as its port went freed them twice and took the core's process down. */
static void
ethdev_release(uint16_t pid)
{
    struct rte_eth_dev_info di;
    int have = rte_eth_dev_info_get(pid, &di) == 0 && di.device;
    int held = have && is_memif(&di) && dp_intr_hold() == 0;
    (void)rte_eth_dev_stop(pid); /* fails only for a port that never started */
    if (!have || rte_dev_remove(di.device) != 0)
        (void)rte_eth_dev_close(pid); /* nothing more to do if even that fails */
    if (held)
        dp_intr_release();
}

/* free a ring port's rings and the frames in them */
static void
ring_port_free_rings(struct rte_ring **rx, unsigned n_rx, struct rte_ring *tx)
{
    struct rte_mbuf *m;
    for (unsigned q = 0; q < n_rx; q++) {
        while (rx[q] && rte_ring_dequeue(rx[q], (void **)&m) == 0)
            rte_pktmbuf_free(m);
        rte_ring_free(rx[q]);
    }
    while (tx && rte_ring_dequeue(tx, (void **)&m) == 0)
        rte_pktmbuf_free(m);
    rte_ring_free(tx);
}

static struct dp_port *
port_new(int role, int net, const char *name, int driver)
{
    struct dp_port *p = rte_zmalloc("dp_port", sizeof(*p), RTE_CACHE_LINE_SIZE);
    if (!p)
        return NULL;
    p->role = role;
    p->driver = driver;
    p->net = net;
    p->n_rxq = 1;
    p->worker = dp_least_loaded_worker(); /* unless its plane has one (rxq_worker) */
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->tx_lock = rte_zmalloc("dp_txlock", sizeof(rte_spinlock_t), RTE_CACHE_LINE_SIZE);
    if (!p->tx_lock) {
        rte_free(p);
        return NULL;
    }
    rte_spinlock_init(p->tx_lock);
    return p;
}

static void
port_free(struct dp_port *p)
{
    dp.ctr->drop[DP_CTRL_ROW][DP_DROP_QUEUE_FLUSHED] += dp_qos_free(p->qos);
    rte_free(p->tx_lock);
    rte_free(p);
}

/* drops of kernel ports already closed (control thread only) */
static struct dp_afp_stats afp_gone;

/* what a DPDK port's own driver dropped before the core received it */
struct dev_drops {
    uint64_t missed;  /* imissed: the device's or kernel's ring was full */
    uint64_t errors;  /* ierrors: frames the device found bad */
    uint64_t no_mbuf; /* rx_nombuf: the driver found the pool empty */
};
/* ... of DPDK ports already closed (control thread only) */
static struct dev_drops dev_gone;

/* kernel interface ifindex's rx drops (its rx_dropped and
 * rx_missed_errors, as `ip -s link` shows them) into *out; -1 if it cannot
 * be read (the interface gone) */
static int
kif_rx_drops(unsigned ifindex, uint64_t *out)
{
    static const char *const what[] = {"rx_dropped", "rx_missed_errors"};
    char name[IF_NAMESIZE], path[96];

    if (if_indextoname(ifindex, name) == NULL)
        return -1;
    *out = 0;
    for (unsigned i = 0; i < RTE_DIM(what); i++) {
        unsigned long long v = 0;
        snprintf(path, sizeof(path), "/sys/class/net/%s/statistics/%s", name, what[i]);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            return -1;
        int ok = fscanf(f, "%llu", &v) == 1;
        fclose(f);
        if (!ok)
            return -1;
        *out += v;
    }
    return 0;
}

/* ioctl req (SIOCGIFFLAGS, SIOCGIFMTU) on kernel interface ifindex into
 * *ifr; -1 if it cannot be done (the interface gone) */
static int
kif_ioctl(unsigned ifindex, unsigned long req, struct ifreq *ifr)
{
    memset(ifr, 0, sizeof(*ifr));
    if (if_indextoname(ifindex, ifr->ifr_name) == NULL)
        return -1;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int ret = ioctl(fd, req, ifr);
    close(fd);
    return ret;
}

/* kernel interface ifindex: 1 if it is up and running (carrier), 0 if
 * not, -1 if that cannot be told (gone) */
static int
kif_running(unsigned ifindex)
{
    struct ifreq ifr;

    if (kif_ioctl(ifindex, SIOCGIFFLAGS, &ifr) != 0)
        return -1;
    return (ifr.ifr_flags & (IFF_UP | IFF_RUNNING)) == (IFF_UP | IFF_RUNNING);
}

/* port p's kernel interface's MTU read again: the longest frame the
 * workers hand it (kif_fit, dp_tx.h); as before if it cannot be read */
static void
kif_read_mtu(struct dp_port *p)
{
    struct ifreq ifr;

    if (kif_ioctl(p->kif_index, SIOCGIFMTU, &ifr) == 0 && ifr.ifr_mtu > 0)
        __atomic_store_n(&p->kif_max_frame,
                         (uint32_t)ifr.ifr_mtu + RTE_ETHER_HDR_LEN + RTE_VLAN_HLEN,
                         __ATOMIC_RELAXED);
}

/* a net_af_xdp port: note its kernel interface and the drops it had so far */
static void
kif_note(struct dp_port *p)
{
    struct rte_eth_dev_info di;
    uint64_t v;

    if (rte_eth_dev_info_get(p->eth_port, &di) != 0 || di.driver_name == NULL ||
        strcmp(di.driver_name, "net_af_xdp") != 0 || di.if_index == 0)
        return;
    if (kif_rx_drops(di.if_index, &v) == 0) {
        p->kif_index = di.if_index;
        p->kif_drop_base = v;
        p->kif_max_frame = UINT32_MAX; /* until its MTU is read */
        kif_read_mtu(p);
    }
}

/* add DPDK port p's own rx drops to *sum. Not oerrors: drivers differ on
 * whether it holds the frames their tx burst handed back, which the
 * pipeline counts itself (tx_full). A net_af_xdp port's frames that its
 * socket could not take (rx ring full, fill ring empty) are dropped by the
 * interface's XDP path: DPDK's imissed has only some of them (the socket's
 * rx_dropped, not its ring-full drops) and a veth counts all of them in its
 * rx drops, and a NIC driver may count them in neither; the larger of the
 * two is taken. The interface's count is kept from its last read once the
 * interface is gone. */
static void
dev_drops_add(struct dev_drops *sum, struct dp_port *p)
{
    struct rte_eth_stats es;
    uint64_t v;

    if (rte_eth_stats_get(p->eth_port, &es) != 0)
        memset(&es, 0, sizeof(es));
    if (p->kif_index != 0 && kif_rx_drops(p->kif_index, &v) == 0 && v >= p->kif_drop_base)
        p->kif_drops = v - p->kif_drop_base;
    if (p->kif_index != 0)
        kif_read_mtu(p); /* the MTU too, as for AF_PACKET ports */
    sum->missed += RTE_MAX(es.imissed, p->kif_drops);
    sum->errors += es.ierrors;
    sum->no_mbuf += es.rx_nombuf;
}
/* per port: tunnel GSO frames sent by the devices an AF_PACKET port had
 * before it was reopened on a new one (control thread only) */
static uint64_t tnl_frames_gone[DP_MAX_PORTS];

static void
afp_stats_add(struct dp_afp_stats *sum, const struct dp_afp_stats *st)
{
    sum->oversize += st->oversize;
    sum->truncated += st->truncated;
    sum->no_mbuf += st->no_mbuf;
    sum->kernel += st->kernel;
    sum->gso += st->gso;
    sum->tx_error += st->tx_error;
    sum->kernel_tx += st->kernel_tx;
    sum->tx_oversize += st->tx_oversize;
    sum->tx_down += st->tx_down;
}

void
dp_kport_stats_update(void)
{
    struct dp_afp_stats sum = afp_gone, st;
    struct dev_drops dev = dev_gone;
    uint64_t *row;

    if (dp.ctr == NULL)
        return;
    for (int i = 0; i < DP_MAX_PORTS; i++) {
        struct dp_port *p = atomic_load(&dp.ports[i]);

        if (p != NULL && p->driver == DP_DRV_AFPACKET) {
            dp_afp_stats(p->afp, &st);
            afp_stats_add(&sum, &st);
        } else if (p != NULL) {
            dev_drops_add(&dev, p);
        }
    }
    /* these columns belong to this function alone: totals, not increments */
    row = dp.ctr->drop[DP_CTRL_ROW];
    row[DP_DROP_KPORT_OVERSIZE] = sum.oversize;
    row[DP_DROP_KPORT_TRUNCATED] = sum.truncated;
    row[DP_DROP_KPORT_NO_MBUF] = sum.no_mbuf;
    row[DP_DROP_KPORT_KERNEL] = sum.kernel;
    row[DP_DROP_KPORT_GSO] = sum.gso;
    row[DP_DROP_KPORT_TX_ERROR] = sum.tx_error;
    row[DP_DROP_KPORT_KERNEL_TX] = sum.kernel_tx;
    row[DP_DROP_KPORT_TX_OVERSIZE] = sum.tx_oversize;
    row[DP_DROP_KPORT_TX_DOWN] = sum.tx_down;
    row[DP_DROP_DEV_RX_MISSED] = dev.missed;
    row[DP_DROP_DEV_RX_ERRORS] = dev.errors;
    row[DP_DROP_DEV_RX_NO_MBUF] = dev.no_mbuf;
}

/* the drops of kernel port state a, about to be closed, kept in the totals */
static void
afp_retire(struct dp_afp *a)
{
    struct dp_afp_stats st;

    dp_afp_stats(a, &st);
    afp_stats_add(&afp_gone, &st);
}

/* a port no worker holds (or ever held): its driver's side, then itself */
static void
port_release(struct dp_port *p)
{
    if (p->driver == DP_DRV_AFPACKET) {
        afp_retire(p->afp);
        dp_afp_close(p->afp);
    } else {
        dev_drops_add(&dev_gone, p); /* kept in the totals */
        ethdev_release(p->eth_port);
        if (p->ring_tx)
            ring_port_free_rings(p->ring_rx, DP_MAX_RXQ, p->ring_tx);
    }
    port_free(p);
}

/*
 * Publish new port p in slot idx: its counters zeroed, it joins its
 * network's local ports (flood to it only once it exists) and the poll
 * lists. All of it, or none and dp_fail (the caller releases p).
 */
static int
port_publish(int idx, struct dp_port *p)
{
    struct dp_net *nn = NULL;
    if (p->net >= 0 && !(nn = dp_net_with_local(p->net, idx, 1)))
        return dp_fail(-ENOMEM, "out of memory");
    struct dp_poll_plan *plan = dp_poll_plan(idx, p);
    if (!plan) {
        rte_free(nn);
        return dp_fail(-ENOMEM, "out of memory for the workers' poll lists");
    }
    for (int w = 0; w < DP_MAX_WORKERS; w++) {
        memset(dp.ctr->port[w][idx], 0, sizeof(dp.ctr->port[w][idx]));
        memset(dp.ctr->qos[w][idx], 0, sizeof(dp.ctr->qos[w][idx]));
    }
    tnl_frames_gone[idx] = 0;
    atomic_store(&dp.ports[idx], p);
    if (nn)
        dp_net_publish(p->net, nn);
    dp_poll_apply(plan);
    return 0;
}

/* what every port add checks first; returns the free slot the port gets */
static int
port_add_slot(int role, int net)
{
    if (!dp_setup_done)
        return dp_fail(-EINVAL, "dp_setup not done");
    if (role != DP_ROLE_POD && role != DP_ROLE_UPLINK)
        return dp_fail(-EINVAL, "role %d is neither pod (0) nor uplink (1)", role);
    if (net >= 0 && role != DP_ROLE_POD)
        return dp_fail(-EINVAL, "an uplink port belongs to no network");
    if (net >= 0 && !dp_net_get(net))
        return dp_fail(-ENOENT, "no network %d", net);
    int idx = port_slot();
    if (idx < 0)
        return dp_fail(-ENOSPC, "all %d port slots in use", DP_MAX_PORTS);
    return idx;
}

int
dp_port_add(const char *devargs, int role, int net, unsigned n_rxq, unsigned mtu)
{
    int idx = port_add_slot(role, net);
    if (idx < 0)
        return idx;
    char name[64];
    snprintf(name, sizeof(name), "%s", devargs);
    char *comma = strchr(name, ',');
    if (comma)
        *comma = 0;
    uint16_t pid;
    if (rte_eth_dev_get_port_by_name(name, &pid) == 0)
        return dp_fail(-EEXIST, "device %s is already a port", name);
    /* a virtual device (any name but a PCI address) straight from the vdev
     * bus: rte_dev_probe hands its arguments to other processes in 128
     * bytes, and from DPDK 24.11 refuses longer ones (E2BIG) - a memif
     * socket's or a pcap file's path takes more */
    int vdev = strchr(name, ':') == NULL;
    int ret = vdev ? rte_vdev_init(name, comma ? devargs + (comma - name) + 1 : "")
                   : rte_dev_probe(devargs);
    if (vdev && (ret > 0 || ret == -1)) /* no driver of that name (1, or -1 from 24.11) */
        return dp_fail(-ENODEV,
                       "cannot probe device '%s': no DPDK driver for %s (a PMD not "
                       "installed, or a misspelt name)",
                       devargs, name);
    if (ret != 0)
        return dp_fail(ret, "cannot probe device '%s' (%s)", devargs, strerror(-ret));
    if (rte_eth_dev_get_port_by_name(name, &pid) != 0) {
        (void)rte_eal_hotplug_remove("vdev", name); /* what was probed, if a vdev */
        return dp_fail(-ENODEV, "device '%s' probed but no ethdev port appeared", devargs);
    }
    struct dp_port *p = port_new(role, net, name, DP_DRV_ETHDEV);
    if (!p) {
        ethdev_release(pid);
        return dp_fail(-ENOMEM, "out of memory");
    }
    p->idx = idx;
    p->eth_port = pid;
    ret = ethdev_setup(pid, p, n_rxq, mtu);
    if (ret == 0) {
        kif_note(p);
        ret = port_publish(idx, p);
    }
    if (ret != 0) {
        port_release(p);
        return ret;
    }
    return idx;
}

int
dp_port_add_ring(const char *name, int role, int net, unsigned ring_size, unsigned n_rxq)
{
    int idx = port_add_slot(role, net);
    if (idx < 0)
        return idx;
    if (ring_size == 0 || (ring_size & (ring_size - 1)))
        return dp_fail(-EINVAL, "ring size %u is not a power of two", ring_size);
    if (n_rxq < 1 || n_rxq > DP_MAX_RXQ)
        return dp_fail(-EINVAL, "port %s: %u rx queues, not 1..%d", name, n_rxq, DP_MAX_RXQ);
    char dev[64], rn[64];
    snprintf(dev, sizeof(dev), "net_ring_%s", name);
    uint16_t pid;
    if (rte_eth_dev_get_port_by_name(dev, &pid) == 0)
        return dp_fail(-EEXIST, "ring port %s already exists", name);
    int sock = (int)rte_socket_id();
    struct rte_ring *rx[DP_MAX_RXQ] = {NULL};
    int ok = 1;
    for (unsigned q = 0; q < n_rxq; q++) {
        snprintf(rn, sizeof(rn), "rx%u_%s", q, name);
        rx[q] = rte_ring_create(rn, ring_size, sock, 0);
        ok = ok && rx[q];
    }
    snprintf(rn, sizeof(rn), "tx_%s", name);
    struct rte_ring *tx = rte_ring_create(rn, ring_size, sock, 0);
    if (!ok || !tx) {
        ring_port_free_rings(rx, n_rxq, tx);
        return dp_fail(-ENOMEM, "cannot create rings for port %s: %s", name,
                       rte_strerror(rte_errno));
    }
    struct rte_ring *txq[DP_MAX_WORKERS];
    for (int i = 0; i < DP_MAX_WORKERS; i++)
        txq[i] = tx;
    int n_txq = dp.n_workers > 0 ? dp.n_workers : 1;
    int ret = rte_eth_from_rings(dev, rx, n_rxq, txq, (unsigned)n_txq, (unsigned)sock);
    if (ret < 0) {
        ring_port_free_rings(rx, n_rxq, tx);
        return dp_fail(-EINVAL, "cannot create ring port %s: %s", name, rte_strerror(rte_errno));
    }
    uint16_t eth = (uint16_t)ret;
    struct dp_port *p = port_new(role, net, dev, DP_DRV_ETHDEV);
    if (!p) {
        ethdev_release(eth);
        ring_port_free_rings(rx, n_rxq, tx);
        return dp_fail(-ENOMEM, "out of memory");
    }
    p->idx = idx;
    p->eth_port = eth;
    memcpy(p->ring_rx, rx, sizeof(p->ring_rx));
    p->ring_tx = tx;
    /* a ring port's tx ring is multi-producer: one tx queue per worker */
    ret = ethdev_setup(p->eth_port, p, n_rxq, 0);
    if (ret == 0)
        ret = port_publish(idx, p);
    if (ret != 0) {
        port_release(p);
        return ret;
    }
    return idx;
}

int
dp_port_add_afpacket(const char *ifname, int role, int net, unsigned frames)
{
    int idx = port_add_slot(role, net);
    if (idx < 0)
        return idx;
    for (int i = 0; i < DP_MAX_PORTS; i++) {
        struct dp_port *q = dp_port_get(i);
        if (q && q->driver == DP_DRV_AFPACKET && strcmp(q->name, ifname) == 0)
            return dp_fail(-EEXIST, "interface %s is already a port", ifname);
    }
    struct dp_port *p = port_new(role, net, ifname, DP_DRV_AFPACKET);
    if (!p)
        return dp_fail(-ENOMEM, "out of memory");
    p->idx = idx;
    p->n_txq = 1;
    int ret = dp_afp_open(ifname, frames, dp.pool, &p->afp);
    if (ret != 0) {
        port_free(p);
        return ret;
    }
    dp_afp_mac(p->afp, p->mac);
    ret = port_publish(idx, p);
    if (ret != 0) {
        port_release(p);
        return ret;
    }
    return idx;
}

/*
 * Kernel ports' sockets closing in the background: closing a packet socket
 * waits for an RCU grace period or two (20-30 ms here), a wait nothing
 * needs once no worker holds the port - its slot is free, its interface
 * may be deleted meanwhile (the kernel unbinds the sockets from a device
 * that goes). dp_ports_free_all waits for them: a stopped core leaves no
 * socket open.
 */
static pthread_mutex_t afp_closing_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t afp_closing_cv = PTHREAD_COND_INITIALIZER;
static unsigned afp_closing;

static void *
afp_close_detached(void *arg)
{
    dp_afp_close(arg);
    pthread_mutex_lock(&afp_closing_mu);
    if (--afp_closing == 0)
        pthread_cond_broadcast(&afp_closing_cv);
    pthread_mutex_unlock(&afp_closing_mu);
    return NULL;
}

/* dp_afp_close(a) in a detached thread, or here if none can be started */
static void
afp_close_later(struct dp_afp *a)
{
    pthread_attr_t attr;
    pthread_t th;
    int started = 0;

    pthread_mutex_lock(&afp_closing_mu);
    afp_closing++;
    pthread_mutex_unlock(&afp_closing_mu);
    if (pthread_attr_init(&attr) == 0) {
        if (pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0)
            started = pthread_create(&th, &attr, afp_close_detached, a) == 0;
        (void)pthread_attr_destroy(&attr);
    }
    if (!started)
        afp_close_detached(a);
}

/* wait until every background close (afp_close_later) has finished */
static void
afp_close_wait(void)
{
    pthread_mutex_lock(&afp_closing_mu);
    while (afp_closing > 0)
        pthread_cond_wait(&afp_closing_cv, &afp_closing_mu);
    pthread_mutex_unlock(&afp_closing_mu);
}

int
dp_port_del(int idx)
{
    struct dp_port *p = dp_port_get(idx);
    if (!p)
        return dp_fail(-ENOENT, "no port %d", idx);
    if (dp_vconf_set && dp_vconf.uplink == idx)
        return dp_fail(-EBUSY, "port %d (%s) is the VTEP uplink; set another uplink first", idx,
                       p->name);
    /* what it takes to stop delivering to it: its FDB entries, its
     * network without it, poll lists without it */
    struct dp_fdb_keys keys = {0};
    int ret = dp_fdb_collect_port(idx, &keys);
    if (ret < 0)
        return ret;
    struct dp_net *nn = NULL;
    struct dp_poll_plan *plan = NULL;
    if ((p->net >= 0 && !(nn = dp_net_with_local(p->net, idx, 0))) ||
        !(plan = dp_poll_plan(idx, NULL))) {
        dp_fdb_keys_free(&keys);
        rte_free(nn);
        return dp_fail(-ENOMEM, "out of memory");
    }
    dp_fdb_purge(&keys);
    if (nn)
        dp_net_publish(p->net, nn);
    dp_capture_port_gone((uint16_t)idx); /* the next port of this index is not it */
    atomic_store(&dp.ports[idx], NULL);
    dp_poll_apply(plan); /* includes the grace period: no worker holds p now */
    /* nor are the frames held from this one: bumped once no worker can
     * hold one more of them */
    atomic_fetch_add(&dp.port_gen[idx], 1);
    dp_guard_clear(idx); /* the next port of this index starts without one */
    if (p->driver == DP_DRV_AFPACKET) {
        struct dp_afp *a = p->afp;

        afp_retire(a);
        port_free(p);
        afp_close_later(a);
        return 0;
    }
    port_release(p);
    return 0;
}

static void *
afp_close_thread(void *arg)
{
    dp_afp_close(arg);
    return NULL;
}

/* every port, at teardown: the workers are stopped, nothing holds them.
 * Kernel ports close side by side, a thread each (up to AFP_CLOSERS at
 * once): each close waits for RCU grace periods, which closes running
 * together share, so a node with many pods stops in a fraction of the time
 * (and a restart forwards again sooner). */
#define AFP_CLOSERS 64
void
dp_ports_free_all(void)
{
    pthread_t th[AFP_CLOSERS];
    int nth = 0;

    for (int i = 0; i < DP_MAX_PORTS; i++) {
        struct dp_port *p = atomic_exchange(&dp.ports[i], NULL);
        if (!p)
            continue;
        if (p->driver != DP_DRV_AFPACKET) {
            port_release(p);
            continue;
        }
        struct dp_afp *a = p->afp;

        afp_retire(a);
        port_free(p);
        if (nth == AFP_CLOSERS) {
            while (nth > 0)
                (void)pthread_join(th[--nth], NULL);
        }
        if (pthread_create(&th[nth], NULL, afp_close_thread, a) == 0)
            nth++;
        else
            dp_afp_close(a);
    }
    while (nth > 0)
        (void)pthread_join(th[--nth], NULL);
    afp_close_wait();
}

int
dp_port_info(int idx, struct dp_port_info *out)
{
    struct dp_port *p = dp_port_get(idx);
    memset(out, 0, sizeof(*out));
    if (!p)
        return 0;
    out->used = 1;
    out->driver = p->driver;
    out->role = p->role;
    out->net = p->net;
    out->worker = dp_rxq_worker(p, 0);
    out->eth_port = p->eth_port;
    out->n_txq = p->n_txq;
    out->n_rxq = p->n_rxq;
    for (int q = 0; q < DP_MAX_RXQ; q++)
        out->rxq_worker[q] = q < p->n_rxq ? dp_rxq_worker(p, q) : -1;
    memcpy(out->mac, p->mac, 6);
    snprintf(out->name, sizeof(out->name), "%s", p->name);
    if (p->driver == DP_DRV_AFPACKET) {
        out->tunnel_gso =
            __atomic_load_n(&p->tnl_gso, __ATOMIC_RELAXED) && dp_afp_tunnel_ok(p->afp);
        out->tunnel_gso_frames = tnl_frames_gone[idx] + dp_afp_tunneled(p->afp);
    }
    out->shm = p->shm;
    out->shm_set_aside = p->shm && atomic_load(&dp_shm_faulted[idx]);
    out->link = -1;
    if (p->kif_index != 0) {
        /* net_af_xdp says up from its start on: the interface's own state */
        out->link = kif_running(p->kif_index);
    } else if (p->driver == DP_DRV_ETHDEV) {
        struct rte_eth_link l;
        if (rte_eth_link_get_nowait(p->eth_port, &l) == 0)
            out->link = l.link_status == RTE_ETH_LINK_UP;
    }
    return 1;
}

/* port idx if it is an AF_PACKET port; else NULL, dp_fail's error in *err */
static struct dp_port *
afp_port_get(int idx, int *err)
{
    struct dp_port *p = dp_port_get(idx);
    if (!p)
        *err = dp_fail(-ENOENT, "no port %d", idx);
    else if (p->driver != DP_DRV_AFPACKET)
        *err = dp_fail(-EINVAL, "port %d (%s) is not an AF_PACKET port", idx, p->name);
    else
        return p;
    return NULL;
}

int
dp_port_set_udp_gso(int idx, int on)
{
    int ret;
    struct dp_port *p = afp_port_get(idx, &ret);
    if (!p)
        return ret;
    dp_afp_set_udp_gso(p->afp, on);
    return 0;
}

int
dp_port_tunnel_tap(int idx, const char *tap)
{
    int ret;
    struct dp_port *p = afp_port_get(idx, &ret);
    if (!p)
        return ret;
    if (tap == NULL) {
        if (__atomic_load_n(&p->tnl_gso, __ATOMIC_RELAXED))
            return dp_fail(-EBUSY, "port %d (%s): tunnel GSO is on", idx, p->name);
        /* frames marked for it may still wait in a shaped uplink's plane
         * queues: a worker that read the fd before it was taken away has
         * written with it before the grace period ends, none after */
        int fd = dp_afp_tunnel_detach(p->afp);
        dp_sync();
        if (fd >= 0)
            (void)close(fd);
        return 0;
    }
    if (p->role != DP_ROLE_UPLINK)
        return dp_fail(-EINVAL, "port %d (%s) is not the uplink", idx, p->name);
    return dp_afp_tunnel_open(p->afp, tap);
}

int
dp_port_set_tunnel_gso(int idx, int on)
{
    struct dp_port *p = dp_port_get(idx);
    if (!p)
        return dp_fail(-ENOENT, "no port %d", idx);
    if (on && (p->driver != DP_DRV_AFPACKET || !dp_afp_has_tunnel(p->afp)))
        return dp_fail(-EINVAL, "port %d (%s) has no tunnel tap", idx, p->name);
    __atomic_store_n(&p->tnl_gso, on != 0, __ATOMIC_RELEASE);
    return 0;
}

int
dp_port_afpacket_reopen(int idx, unsigned frames)
{
    int ret;
    struct dp_port *p = afp_port_get(idx, &ret);
    if (!p)
        return ret;
    /* a copy of the port on a new driver state: everything made before
     * anything is published */
    struct dp_port *np = rte_zmalloc("dp_port", sizeof(*np), RTE_CACHE_LINE_SIZE);
    if (!np)
        return dp_fail(-ENOMEM, "out of memory");
    *np = *p;
    np->afp = NULL;
    ret = dp_afp_open(p->name, frames, dp.pool, &np->afp);
    if (ret != 0) {
        rte_free(np);
        return ret;
    }
    dp_afp_mac(np->afp, np->mac);
    np->tnl_gso = 0; /* the new device has no tunnel tap yet */
    /* the express lane's filter on the new socket before it is published:
     * the new device is in none of the lane's tables yet */
    if (np->ex_filter && (ret = dp_express_refilter(np)) != 0) {
        dp_afp_close(np->afp);
        rte_free(np);
        return ret;
    }
    atomic_store(&dp.ports[idx], np);
    dp_express_uplink(); /* the uplink on its new device, for the lane */
    dp_sync();           /* no worker holds p, nor the old device's sockets, now */
    /* the old device's drops and tunnel frames stay in the totals */
    afp_retire(p->afp);
    tnl_frames_gone[idx] += dp_afp_tunneled(p->afp);
    dp_afp_close(p->afp); /* its tunnel tap goes with it */
    rte_free(p);          /* the lock and the shaper's queues moved to np */
    return dp_afp_ifindex(np->afp);
}

int
dp_port_set_net(int idx, int net)
{
    struct dp_port *p = dp_port_get(idx);
    if (!p)
        return dp_fail(-ENOENT, "no port %d", idx);
    if (p->role != DP_ROLE_POD)
        return dp_fail(-EINVAL, "port %d (%s) is an uplink, not a pod port", idx, p->name);
    if (net >= 0 && !dp_net_get(net))
        return dp_fail(-ENOENT, "no network %d", net);
    if (p->net == net)
        return 0;
    /* a copy of the port in the other network; the networks without and
     * with it; its FDB entries in the old one; poll lists for its new plane */
    struct dp_fdb_keys keys = {0};
    struct dp_net *from = NULL, *to = NULL;
    struct dp_poll_plan *plan = NULL;
    struct dp_port *np = rte_zmalloc("dp_port", sizeof(*np), RTE_CACHE_LINE_SIZE);
    if (np) {
        *np = *p;
        np->net = net;
    }
    if (!np || (p->net >= 0 && dp_fdb_collect_port(idx, &keys) < 0) ||
        (p->net >= 0 && !(from = dp_net_with_local(p->net, idx, 0))) ||
        (net >= 0 && !(to = dp_net_with_local(net, idx, 1))) || !(plan = dp_poll_plan(idx, np))) {
        rte_free(np);
        dp_fdb_keys_free(&keys);
        rte_free(from);
        rte_free(to);
        return dp_fail(-ENOMEM, "out of memory");
    }
    if (from) {
        dp_fdb_purge(&keys);
        dp_net_publish(p->net, from);
    }
    if (to)
        dp_net_publish(net, to);
    atomic_store(&dp.ports[idx], np);
    dp_poll_apply(plan); /* includes the grace period: no worker holds p now */
    rte_free(p);         /* the lock and driver state moved to np */
    return 0;
}
