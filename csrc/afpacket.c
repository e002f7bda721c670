/*
 * afpacket.c - native AF_PACKET port driver for kernel interfaces.
 *
 * The fallback driver when there are no hugepages and no NIC: it attaches to
 * a Linux interface (veth host end, tap) with two packet sockets.
 *
 * rx: one socket, TPACKET_V3 mmap ring (block based). The kernel fills a
 *     block with variable-sized frames and hands the whole block to us
 *     (block_status TP_STATUS_USER) when it is full or when the retire timer
 *     fires (AFP_RX_RETIRE_MS). We copy each frame into an mbuf and hand the
 *     block back (TP_STATUS_KERNEL) once every frame in it has been consumed.
 *     The socket sets PACKET_IGNORE_OUTGOING so it does not see our own tx
 *     (nor anything else the host transmits on the interface).
 *
 * tx: a second socket, TPACKET_V2 mmap ring of fixed-size frames, bound to
 *     the same interface with protocol 0 so it never receives anything. We copy
 *     mbufs into free frames (TP_STATUS_AVAILABLE), flag them
 *     TP_STATUS_SEND_REQUEST and kick the kernel with one non-blocking
 *     sendto() per burst. PACKET_QDISC_BYPASS skips the qdisc layer and
 *     PACKET_LOSS makes the kernel skip (drop) a frame it rejects instead of
 *     stalling the ring on it.
 *
 * Ring layout (frames = F, a power of two >= 64, AFP_FRAME_SIZE = 2048):
 *   both rings are F * 2048 bytes, split into blocks of 16..64 KiB (at least
 *   8 blocks when possible, see afp_block_size()). The tx ring holds exactly F
 *   frames of 2048 bytes (2016 bytes of frame data each). The rx ring holds
 *   as many frames as fit: V3 packs them back to back, so small frames take
 *   far less than 2048 bytes each.
 *
 * Hot path: no syscalls in rx_burst, exactly one sendto() per non-empty
 * tx_burst, no allocation other than mbufs from the pool, no logging.
 *
 * Caveats:
 *   - rx latency under light load is bounded by the block retire timer
 *     (AFP_RX_RETIRE_MS, the kernel's minimum is 1 ms, rounded up to a jiffy
 *     on timer-wheel kernels).
 *   - frames longer than the mbuf data room (or than a block) are dropped on
 *     rx; GSO/TSO super-frames from a local peer therefore need offloads off
 *     on that peer (ethtool -K <dev> tso off gso off).
 *   - frames from a local peer with CHECKSUM_PARTIAL (TP_STATUS_CSUMNOTREADY)
 *     get their TCP/UDP checksum completed in software here, so the rest of
 *     the pipeline sees valid frames (SCTP CRC32c and inner checksums of
 *     locally encapsulated tunnels are not fixed up).
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>

#include <rte_branch_prediction.h>
#include <rte_byteorder.h>
#include <rte_common.h>
#include <rte_ether.h>
#include <rte_ip.h>
#include <rte_mbuf.h>
#include <rte_memcpy.h>
#include <rte_mempool.h>
#include <rte_prefetch.h>

#include "afpacket.h"
#include "dp_error.h"

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23 /* Linux >= 4.20 */
#endif
#ifndef PACKET_QDISC_BYPASS
#define PACKET_QDISC_BYPASS 20 /* Linux >= 3.14 */
#endif

#define AFP_FRAME_SIZE 2048u      /* ring frame size */
#define AFP_BLOCK_MAX (1u << 16)  /* largest ring block */
#define AFP_BLOCK_MIN_NR 8u       /* aim for at least this many blocks */
#define AFP_FRAMES_MAX (1u << 20) /* sanity cap on `frames` */
#define AFP_RX_RETIRE_MS 1u       /* V3 block retire timeout */

/* Where frame data starts in a V2 tx frame (kernel default, no TX_HAS_OFF). */
#define AFP_TX_DATA_OFF (TPACKET2_HDRLEN - sizeof(struct sockaddr_ll))

struct dp_afp {
    /* rx side: touched by the rx thread only */
    struct {
        uint8_t *map; /* V3 ring mapping */
        size_t map_len;
        uint32_t block_size;
        uint32_t block_nr;
        uint32_t blk;             /* block being read / next to read */
        uint32_t left;            /* frames left in blk (0 = not open) */
        struct tpacket3_hdr *pkt; /* next frame in blk when left > 0 */
        struct rte_mempool *mp;
        uint32_t room;  /* mbuf data room after headroom */
        uint64_t drops; /* frames dropped: too big/truncated */
        int fd;
    } rx __rte_cache_aligned;

    /* tx side: touched by the (serialised) tx callers only */
    struct {
        uint8_t *map; /* V2 ring mapping */
        size_t map_len;
        uint32_t frame_nr; /* power of two */
        uint32_t head;     /* next frame to fill */
        uint32_t data_max; /* largest frame we can queue */
        int fd;
    } tx __rte_cache_aligned;

    /* control: read-only after open */
    int ifindex;
    uint8_t mac[RTE_ETHER_ADDR_LEN];
    char ifname[IF_NAMESIZE];
} __rte_cache_aligned;

/* Pick a ring block size: a power of two in [page, 64 KiB], small enough to
 * give at least AFP_BLOCK_MIN_NR blocks (smaller blocks fill, and so reach
 * user space, sooner under light load). total is a power of two >= 128 KiB. */
static uint32_t
afp_block_size(size_t total)
{
    long page = sysconf(_SC_PAGESIZE);
    uint32_t min = RTE_MAX((uint32_t)(page > 0 ? page : 4096), AFP_FRAME_SIZE);
    uint32_t bs = AFP_BLOCK_MAX;

    while (bs > min && (size_t)bs * AFP_BLOCK_MIN_NR > total)
        bs >>= 1;
    return RTE_MAX(bs, min);
}

/* Drop outgoing frames with a classic BPF filter: fallback for kernels
 * without PACKET_IGNORE_OUTGOING (< 4.20). */
static int
afp_filter_outgoing(int fd)
{
    struct sock_filter code[] = {
        /* A = skb->pkt_type */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE),
        /* outgoing: drop; anything else: accept whole frame */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PACKET_OUTGOING, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, 0),
        BPF_STMT(BPF_RET | BPF_K, 0xffffffff),
    };
    struct sock_fprog prog = {
        .len = RTE_DIM(code),
        .filter = code,
    };

    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog));
}

/* Set up the rx socket: V3 ring, ignore outgoing, bind, promiscuous. */
static int
afp_open_rx(struct dp_afp *a, unsigned frames)
{
    const char *ifn = a->ifname;
    struct tpacket_req3 req;
    struct sockaddr_ll sll;
    struct packet_mreq mr;
    size_t total = (size_t)frames * AFP_FRAME_SIZE;
    int ver = TPACKET_V3, one = 1;
    void *map;
    int fd;

    /* protocol 0: nothing is queued until bind() below, after the ring */
    fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return dp_fail(-errno, "afpacket %s: rx socket: %m", ifn);
    a->rx.fd = fd;

    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &ver, sizeof(ver)) < 0)
        return dp_fail(-errno, "afpacket %s: rx PACKET_VERSION v3: %m", ifn);

    /* do not receive what is transmitted on the interface (our own tx) */
    if (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one)) < 0 &&
        afp_filter_outgoing(fd) < 0)
        return dp_fail(-errno, "afpacket %s: rx PACKET_IGNORE_OUTGOING: %m", ifn);

    /* V3 ring: blocks of variable-sized frames, retired by timer */
    memset(&req, 0, sizeof(req));
    a->rx.block_size = afp_block_size(total);
    a->rx.block_nr = (uint32_t)(total / a->rx.block_size);
    req.tp_block_size = a->rx.block_size;
    req.tp_block_nr = a->rx.block_nr;
    req.tp_frame_size = AFP_FRAME_SIZE;
    req.tp_frame_nr = frames;
    req.tp_retire_blk_tov = AFP_RX_RETIRE_MS;
    if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) < 0)
        return dp_fail(-errno, "afpacket %s: rx PACKET_RX_RING: %m", ifn);

    /* map it; MAP_POPULATE keeps page faults off the hot path */
    map = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (map == MAP_FAILED)
        return dp_fail(-errno, "afpacket %s: rx mmap: %m", ifn);
    a->rx.map = map;
    a->rx.map_len = total;

    /* bind to the interface, all protocols: frames start arriving now */
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = a->ifindex;
    if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0)
        return dp_fail(-errno, "afpacket %s: rx bind: %m", ifn);

    /* promiscuous for as long as the socket lives */
    memset(&mr, 0, sizeof(mr));
    mr.mr_ifindex = a->ifindex;
    mr.mr_type = PACKET_MR_PROMISC;
    if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof(mr)) < 0)
        return dp_fail(-errno, "afpacket %s: rx PACKET_MR_PROMISC: %m", ifn);
    return 0;
}

/* Set up the tx socket: V2 ring, qdisc bypass, bound with protocol 0. */
static int
afp_open_tx(struct dp_afp *a, unsigned frames)
{
    const char *ifn = a->ifname;
    struct tpacket_req req;
    struct sockaddr_ll sll;
    size_t total = (size_t)frames * AFP_FRAME_SIZE;
    int ver = TPACKET_V2, one = 1, sndbuf;
    uint32_t bs;
    void *map;
    int fd;

    fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return dp_fail(-errno, "afpacket %s: tx socket: %m", ifn);
    a->tx.fd = fd;

    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &ver, sizeof(ver)) < 0)
        return dp_fail(-errno, "afpacket %s: tx PACKET_VERSION v2: %m", ifn);

    /* straight to the driver, no qdisc (best effort: old kernels lack it) */
    (void)setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));

    /* a frame the kernel rejects (e.g. > MTU) is skipped, not left stuck
	 * in TP_STATUS_WRONG_FORMAT blocking the ring */
    if (setsockopt(fd, SOL_PACKET, PACKET_LOSS, &one, sizeof(one)) < 0)
        return dp_fail(-errno, "afpacket %s: tx PACKET_LOSS: %m", ifn);

    /* room for a whole ring in flight, so sendto() never stops early for
	 * want of socket memory (which would leave frames until the next kick);
	 * FORCE needs CAP_NET_ADMIN, plain SNDBUF is capped by wmem_max */
    sndbuf = (int)RTE_MIN((size_t)frames * 2 * AFP_FRAME_SIZE, (size_t)INT32_MAX / 2);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)) < 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));

    /* V2 ring: `frames` fixed 2048-byte frames, contiguous in the mapping */
    memset(&req, 0, sizeof(req));
    bs = afp_block_size(total);
    req.tp_block_size = bs;
    req.tp_block_nr = (unsigned)(total / bs);
    req.tp_frame_size = AFP_FRAME_SIZE;
    req.tp_frame_nr = frames;
    if (setsockopt(fd, SOL_PACKET, PACKET_TX_RING, &req, sizeof(req)) < 0)
        return dp_fail(-errno, "afpacket %s: tx PACKET_TX_RING: %m", ifn);

    map = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (map == MAP_FAILED)
        return dp_fail(-errno, "afpacket %s: tx mmap: %m", ifn);
    a->tx.map = map;
    a->tx.map_len = total;
    a->tx.frame_nr = frames;
    a->tx.head = 0;
    a->tx.data_max = AFP_FRAME_SIZE - AFP_TX_DATA_OFF;

    /* protocol 0: sets the device for sendto(), registers no rx hook */
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = 0;
    sll.sll_ifindex = a->ifindex;
    if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0)
        return dp_fail(-errno, "afpacket %s: tx bind: %m", ifn);
    return 0;
}

int
dp_afp_open(const char *ifname, unsigned frames, struct rte_mempool *mp, struct dp_afp **out)
{
    const char *ifn = ifname != NULL ? ifname : "(null)";
    struct dp_afp *a;
    struct ifreq ifr;
    uint32_t room;
    void *mem;
    int ret;

    if (out == NULL)
        return dp_fail(-EINVAL, "afpacket %s: nowhere to put the port", ifn);
    *out = NULL;

    /* check arguments */
    if (ifname == NULL || ifname[0] == '\0' || strlen(ifname) >= IF_NAMESIZE)
        return dp_fail(-EINVAL, "afpacket %s: interface name empty or longer than %d bytes", ifn,
                       IF_NAMESIZE - 1);
    if (frames < 64 || frames > AFP_FRAMES_MAX || !rte_is_power_of_2(frames))
        return dp_fail(-EINVAL, "afpacket %s: %u frames, not a power of two in 64..%u", ifn, frames,
                       AFP_FRAMES_MAX);
    if (mp == NULL)
        return dp_fail(-EINVAL, "afpacket %s: no mbuf pool", ifn);
    room = rte_pktmbuf_data_room_size(mp);
    room = room > RTE_PKTMBUF_HEADROOM ? room - RTE_PKTMBUF_HEADROOM : 0;
    if (room < RTE_ETHER_MAX_LEN)
        return dp_fail(-EINVAL, "afpacket %s: mbuf data room %u below %u bytes", ifn, room,
                       RTE_ETHER_MAX_LEN);

    /* state; cache aligned so rx and tx halves do not share lines */
    if (posix_memalign(&mem, RTE_CACHE_LINE_SIZE, sizeof(*a)) != 0)
        return dp_fail(-ENOMEM, "afpacket %s: out of memory", ifn);
    a = mem;
    memset(a, 0, sizeof(*a));
    a->rx.fd = -1;
    a->tx.fd = -1;
    a->rx.mp = mp;
    a->rx.room = room;
    memcpy(a->ifname, ifname, strlen(ifname) + 1);

    /* interface index */
    a->ifindex = (int)if_nametoindex(ifname);
    if (a->ifindex == 0) {
        ret = dp_fail(-errno, "afpacket %s: if_nametoindex: %m", ifn);
        goto fail;
    }

    ret = afp_open_rx(a, frames);
    if (ret < 0)
        goto fail;

    /* MAC address; also rejects non-Ethernet devices (tun, ...) */
    memset(&ifr, 0, sizeof(ifr));
    memcpy(ifr.ifr_name, a->ifname, sizeof(a->ifname));
    if (ioctl(a->rx.fd, SIOCGIFHWADDR, &ifr) < 0) {
        ret = dp_fail(-errno, "afpacket %s: SIOCGIFHWADDR: %m", ifn);
        goto fail;
    }
    if (ifr.ifr_hwaddr.sa_family != ARPHRD_ETHER) {
        ret = dp_fail(-EINVAL, "afpacket %s: not an Ethernet device", ifn);
        goto fail;
    }
    memcpy(a->mac, ifr.ifr_hwaddr.sa_data, RTE_ETHER_ADDR_LEN);

    ret = afp_open_tx(a, frames);
    if (ret < 0)
        goto fail;

    *out = a;
    return 0;
fail:
    dp_afp_close(a);
    return ret;
}

void
dp_afp_close(struct dp_afp *a)
{
    if (a == NULL)
        return;
    /* unmap before close; closing the rx socket drops promiscuity. These
     * fail only for a bad address or descriptor, which a never has. */
    if (a->rx.map != NULL)
        (void)munmap(a->rx.map, a->rx.map_len);
    if (a->tx.map != NULL)
        (void)munmap(a->tx.map, a->tx.map_len);
    if (a->rx.fd >= 0)
        (void)close(a->rx.fd);
    if (a->tx.fd >= 0)
        (void)close(a->tx.fd);
    free(a);
}

void
dp_afp_mac(const struct dp_afp *a, uint8_t mac[6])
{
    memcpy(mac, a->mac, RTE_ETHER_ADDR_LEN);
}

/*
 * rx
 */

static inline struct tpacket_block_desc *
afp_rx_block(const struct dp_afp *a, uint32_t i)
{
    return (struct tpacket_block_desc *)(a->rx.map + (size_t)i * a->rx.block_size);
}

/* Block handed to user space? Acquire: frame data is read after this. */
static inline int
afp_rx_block_ready(const struct tpacket_block_desc *bd)
{
    return (__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER) != 0;
}

/* Frames ready for us, counting no further than want. */
static inline uint32_t
afp_rx_avail(const struct dp_afp *a, uint32_t want)
{
    uint32_t avail = a->rx.left;
    uint32_t i = a->rx.blk, k = 0;

    if (avail != 0) { /* current block is open: look past it */
        i = (i + 1) % a->rx.block_nr;
        k = 1;
    }
    for (; avail < want && k < a->rx.block_nr; k++) {
        const struct tpacket_block_desc *bd = afp_rx_block(a, i);

        if (!afp_rx_block_ready(bd))
            break;
        avail += bd->hdr.bh1.num_pkts;
        i = (i + 1) % a->rx.block_nr;
    }
    return avail;
}

/* Hand the current block back to the kernel and move to the next one.
 * Release: all our reads of the block happen before the kernel reuses it. */
static inline void
afp_rx_block_done(struct dp_afp *a)
{
    __atomic_store_n(&afp_rx_block(a, a->rx.blk)->hdr.bh1.block_status, TP_STATUS_KERNEL,
                     __ATOMIC_RELEASE);
    a->rx.blk = (a->rx.blk + 1) % a->rx.block_nr;
    a->rx.left = 0;
    a->rx.pkt = NULL;
}

/* Complete a CHECKSUM_PARTIAL TCP/UDP checksum (TP_STATUS_CSUMNOTREADY).
 * The checksum field holds the folded pseudo-header sum; the final value is
 * the complement of the sum over the whole L4 segment (as the kernel's
 * skb_checksum_help()). Anything not understood is left as it is. */
static void
afp_csum_complete(uint8_t *p, uint32_t len)
{
    uint32_t off = RTE_ETHER_HDR_LEN, l4, end, coff;
    uint16_t et, cs;
    uint8_t proto;
    int k;

    /* L2: skip up to two VLAN tags */
    et = rte_be_to_cpu_16(*(unaligned_uint16_t *)(p + 12));
    for (k = 0; k < 2 && (et == RTE_ETHER_TYPE_VLAN || et == RTE_ETHER_TYPE_QINQ); k++) {
        if (off + 4 > len)
            return;
        et = rte_be_to_cpu_16(*(unaligned_uint16_t *)(p + off + 2));
        off += 4;
    }

    /* L3: find the L4 header and where the L4 segment ends */
    if (et == RTE_ETHER_TYPE_IPV4) {
        const uint8_t *ip = p + off;
        uint32_t ihl;

        if (off + 20 > len)
            return;
        ihl = (uint32_t)(ip[0] & 0x0f) * 4;
        /* no checksum offload on fragments */
        if (ihl < 20 || (rte_be_to_cpu_16(*(const unaligned_uint16_t *)(ip + 6)) & 0x3fff) != 0)
            return;
        proto = ip[9];
        l4 = off + ihl;
        end = off + rte_be_to_cpu_16(*(const unaligned_uint16_t *)(ip + 2));
    } else if (et == RTE_ETHER_TYPE_IPV6) {
        const uint8_t *ip = p + off;

        if (off + 40 > len)
            return;
        proto = ip[6];
        l4 = off + 40;
        end = l4 + rte_be_to_cpu_16(*(const unaligned_uint16_t *)(ip + 4));
        /* skip hop-by-hop, routing and destination options headers */
        for (k = 0; k < 4 && (proto == 0 || proto == 43 || proto == 60); k++) {
            if (l4 + 8 > len)
                return;
            proto = p[l4];
            l4 += ((uint32_t)p[l4 + 1] + 1) * 8;
        }
    } else {
        return;
    }

    /* L4: checksum field offset */
    if (proto == IPPROTO_TCP)
        coff = 16;
    else if (proto == IPPROTO_UDP)
        coff = 6;
    else
        return;
    if (end > len || l4 + coff + 2 > end)
        return;

    cs = (uint16_t)~rte_raw_cksum(p + l4, end - l4);
    if (cs == 0)
        cs = 0xffff;
    *(unaligned_uint16_t *)(p + l4 + coff) = cs;
}

/* Copy one ring frame into m. Returns 0, or -1 if the frame is dropped. */
static inline int
afp_rx_copy(struct dp_afp *a, const struct tpacket3_hdr *h, struct rte_mbuf *m)
{
    const uint8_t *src = (const uint8_t *)h + h->tp_mac;
    uint32_t status = h->tp_status;
    uint32_t len = h->tp_snaplen;
    uint8_t *dst = rte_pktmbuf_mtod(m, uint8_t *);

    /* truncated (longer than a block), too big for an mbuf, or a runt */
    if (unlikely(len != h->tp_len || len > a->rx.room || len < RTE_ETHER_HDR_LEN))
        return -1;

    if (likely(!(status & TP_STATUS_VLAN_VALID))) {
        rte_memcpy(dst, src, len);
    } else {
        /* the kernel stripped the outer tag into tp_vlan_tci: put it
		 * back between the MAC addresses and the ethertype */
        uint16_t tpid = RTE_ETHER_TYPE_VLAN;

        if (unlikely(len + RTE_VLAN_HLEN > a->rx.room))
            return -1;
        if ((status & TP_STATUS_VLAN_TPID_VALID) && h->hv1.tp_vlan_tpid)
            tpid = h->hv1.tp_vlan_tpid;
        memcpy(dst, src, 2 * RTE_ETHER_ADDR_LEN);
        *(unaligned_uint16_t *)(dst + 12) = rte_cpu_to_be_16(tpid);
        *(unaligned_uint16_t *)(dst + 14) = rte_cpu_to_be_16((uint16_t)h->hv1.tp_vlan_tci);
        rte_memcpy(dst + 16, src + 12, len - 12);
        len += RTE_VLAN_HLEN;
    }

    /* locally generated frame with an offloaded (unfinished) checksum */
    if (unlikely(status & TP_STATUS_CSUMNOTREADY))
        afp_csum_complete(dst, len);

    m->data_len = (uint16_t)len;
    m->pkt_len = len;
    return 0;
}

uint16_t
dp_afp_rx_burst(struct dp_afp *a, struct rte_mbuf **pkts, uint16_t n)
{
    uint32_t avail, cnt, done, nb_rx = 0;

    if (unlikely(n == 0))
        return 0;

    /* how many frames are ready (no mbufs touched when idle) */
    avail = afp_rx_avail(a, n);
    if (avail == 0)
        return 0;
    cnt = RTE_MIN(avail, (uint32_t)n);

    /* mbufs for the whole burst in one call; shrink if the pool is low */
    while (rte_pktmbuf_alloc_bulk(a->rx.mp, pkts, cnt) != 0) {
        cnt >>= 1;
        if (cnt == 0)
            return 0; /* frames stay in the ring */
    }

    /* walk frames across blocks; a dropped frame reuses its mbuf */
    for (done = 0; done < cnt; done++) {
        struct tpacket3_hdr *h;

        /* open the next block */
        while (a->rx.left == 0) {
            struct tpacket_block_desc *bd = afp_rx_block(a, a->rx.blk);

            if (unlikely(!afp_rx_block_ready(bd)))
                goto out; /* cannot happen: counted above */
            a->rx.left = bd->hdr.bh1.num_pkts;
            a->rx.pkt = (struct tpacket3_hdr *)((uint8_t *)bd + bd->hdr.bh1.offset_to_first_pkt);
            if (unlikely(a->rx.left == 0))
                afp_rx_block_done(a); /* empty block */
        }

        /* copy the frame out */
        h = a->rx.pkt;
        if (likely(afp_rx_copy(a, h, pkts[nb_rx]) == 0))
            nb_rx++;
        else
            a->rx.drops++;

        /* advance; give the block back once it is used up */
        if (--a->rx.left != 0) {
            a->rx.pkt = (struct tpacket3_hdr *)((uint8_t *)h + h->tp_next_offset);
            rte_prefetch0(a->rx.pkt);
        } else {
            afp_rx_block_done(a);
        }
    }
out:
    /* return mbufs left over by dropped frames */
    if (unlikely(nb_rx < cnt))
        rte_pktmbuf_free_bulk(&pkts[nb_rx], cnt - nb_rx);
    return (uint16_t)nb_rx;
}

/*
 * tx
 */

static inline struct tpacket2_hdr *
afp_tx_frame(const struct dp_afp *a, uint32_t i)
{
    return (struct tpacket2_hdr *)(a->tx.map + (size_t)i * AFP_FRAME_SIZE);
}

/* Frame free for us? Timestamp bits are ignored (see DPDK's af_packet). */
static inline int
afp_tx_frame_free(const struct tpacket2_hdr *h)
{
    uint32_t st = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);

    st &= ~(uint32_t)(TP_STATUS_TS_SOFTWARE | TP_STATUS_TS_RAW_HARDWARE);
    return st == TP_STATUS_AVAILABLE;
}

uint16_t
dp_afp_tx_burst(struct dp_afp *a, struct rte_mbuf **pkts, uint16_t n)
{
    uint32_t head = a->tx.head, mask = a->tx.frame_nr - 1;
    uint16_t i;

    if (unlikely(n == 0))
        return 0;

    /* take mbufs from the front while they fit: stop at the first one
	 * that cannot be queued (ring full, too big, runt, bad chain) */
    for (i = 0; i < n; i++) {
        struct rte_mbuf *m = pkts[i];
        struct tpacket2_hdr *h = afp_tx_frame(a, head);
        uint8_t *data = (uint8_t *)h + AFP_TX_DATA_OFF;
        uint32_t len = m->pkt_len;
        const void *p;

        if (unlikely(len > a->tx.data_max || len < RTE_ETHER_HDR_LEN))
            break;
        if (!afp_tx_frame_free(h))
            break; /* ring full */

        /* copy: contiguous data directly, segment chains gathered */
        p = rte_pktmbuf_read(m, 0, len, data);
        if (unlikely(p == NULL))
            break;
        if (p != data)
            rte_memcpy(data, p, len);

        /* hand the frame to the kernel */
        h->tp_len = len;
        h->tp_snaplen = len;
        __atomic_store_n(&h->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
        head = (head + 1) & mask;
    }
    a->tx.head = head;

    /* one kick per burst; also when the ring was full, to push frames a
	 * previous kick left queued. Errors (EAGAIN, ENOBUFS, ENETDOWN) leave
	 * frames queued for the next kick, or the kernel drops them. */
    (void)sendto(a->tx.fd, NULL, 0, MSG_DONTWAIT, NULL, 0);

    /* copied: free the taken mbufs */
    if (i != 0)
        rte_pktmbuf_free_bulk(pkts, i);
    return i;
}
