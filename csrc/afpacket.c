/*
 * afpacket.c - native AF_PACKET port driver for kernel interfaces.
 *
 * The fallback driver when there are no hugepages and no NIC: it attaches to
 * a Linux interface (veth host end, tap) with two packet sockets, both with
 * the virtio-net header (PACKET_VNET_HDR) in front of every frame.
 *
 * rx: one socket, TPACKET_V2 mmap ring of fixed-size frames, each with its
 *     own status word: the kernel hands a frame over (TP_STATUS_USER) as soon
 *     as it is written, so a lone frame waits for no block timer (a V3 ring
 *     retires a partly filled block only when its timer fires, >= 1 ms). We
 *     copy each frame into an mbuf (a chain when it is longer than one
 *     segment) and hand the slot back (TP_STATUS_KERNEL). The socket sets
 *     PACKET_IGNORE_OUTGOING so it does not see our own tx.
 *
 * tx: a second socket, TPACKET_V2 mmap tx ring, bound to the same interface
 *     with protocol 0 so it never receives anything. We copy mbufs into free
 *     frames (TP_STATUS_AVAILABLE) behind a virtio-net header, flag them
 *     TP_STATUS_SEND_REQUEST and kick the kernel with one non-blocking
 *     sendto() per burst. PACKET_QDISC_BYPASS skips the qdisc layer and
 *     PACKET_LOSS makes the kernel skip (drop) a frame it rejects instead of
 *     stalling the ring on it. A frame the device refuses is put back at the
 *     ring's head by the kernel; while the interface has no carrier we drop
 *     it instead, so it is tried and counted once (afp_tx_kick).
 *
 * Checksums: a frame the kernel hands over with its L4 checksum left to
 *     offload (CHECKSUM_PARTIAL: a local socket, a kernel VXLAN device whose
 *     inner checksum is left to the NIC) comes with VIRTIO_NET_HDR_F_NEEDS_CSUM
 *     and csum_start/csum_offset; they travel in the mbuf (dp_csum_meta) and
 *     leave through another kernel port the same way, so the kernel (or the
 *     NIC, or the receiving stack, which trusts a partial checksum) finishes
 *     it. A port that cannot take it (a DPDK ethdev) gets it completed in
 *     software before tx (dp_csum_complete). That is after the guard read
 *     the frame's addresses, so only a TCP or UDP checksum right behind the
 *     IP header, at its field, stays partial; any other a pod's header names
 *     (one over its source address, say) is completed as the frame is read
 *     (afp_rx_offload).
 *
 * Ring size: ring frames are sized from the interface's MTU when the port is
 *     opened (2 KiB up to MTU 1900, then powers of two: 16 KiB for 9216), the
 *     memory stays `frames` * 2 KiB per ring, so a jumbo port has fewer slots.
 *
 * GSO super-frames (a pod with TSO/GSO on: TCP frames up to 64 KiB, the
 *     virtio-net header giving gso_type and gso_size) do not fit a ring
 *     frame and do not need one: the rx socket sets PACKET_COPY_THRESH, so
 *     the kernel puts the first ring-frame's worth in the ring flagged
 *     TP_STATUS_COPY and queues the whole frame on the socket, in ring order;
 *     we read it with one recvmsg() scattered straight into an mbuf chain,
 *     checked against the ring frame (length, first bytes) so that the queue
 *     and the ring stay in step, past an error the socket holds (ENETDOWN
 *     after the interface went down and up).
 *     Memory: the queued frames are the sender's own buffers (a reference,
 *     not a copy), bounded by the socket's receive buffer (AFP_RCVBUF); the
 *     rings keep their MTU size. The frame is marked for TCP segmentation
 *     (dp_gso.h). On tx a GSO frame leaves whole with the same header, by
 *     sendmsg() on a third socket (a socket with a tx ring sends only from
 *     the ring): the kernel or the receiving stack takes it as it is.
 *     A frame longer than the ring frame that is not GSO (the MTU raised
 *     later) or that the kernel could not queue is dropped as `oversize`; a
 *     GSO frame of another kind (UFO), with headers out of place or of more
 *     than DP_GSO_MAX_SEGS segments as `gso`.
 *
 * Hot path: no syscalls in rx_burst but one recvmsg() per GSO frame, one
 * sendto() per non-empty tx_burst and one sendmsg() per GSO frame, no
 * allocation other than mbufs from the pool, no logging.
 *
 * From the underlay: a kernel VXLAN device on the other end of a veth (with
 *     tx-udp_tnl-segmentation on) hands over whole VXLAN super-frames, which
 *     the kernel describes as TCP (or UDP) GSO with the checksum starting at
 *     the inner header (inner IPv4, or IPv6 without extension headers):
 *     they are marked as VXLAN tunnel TSO (dp_gso.h), decapsulated whole
 *     and carried on as plain super-frames. A frame merged by the interface's GRO comes
 *     with a complete checksum for its first segment only: it is made
 *     partial (the pseudo-header sum of the whole frame in its field).
 */

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/virtio_net.h>

#include <rte_branch_prediction.h>
#include <rte_byteorder.h>
#include <rte_common.h>
#include <rte_cycles.h>
#include <rte_errno.h>
#include <rte_ether.h>
#include <rte_ip.h>
#include <rte_mbuf.h>
#include <rte_mbuf_dyn.h>
#include <rte_memcpy.h>
#include <rte_mempool.h>
#include <rte_hash_crc.h>
#include <rte_prefetch.h>
#include <rte_sctp.h>
#include <rte_tcp.h>
#include <rte_udp.h>

#include "afpacket.h"
#include "dp_gso.h"
#include "dp_error.h"

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23 /* Linux >= 4.20 */
#endif
#ifndef PACKET_QDISC_BYPASS
#define PACKET_QDISC_BYPASS 20 /* Linux >= 3.14 */
#endif
#ifndef VIRTIO_NET_HDR_GSO_UDP_L4
#define VIRTIO_NET_HDR_GSO_UDP_L4 5 /* UDP segmentation; a packet socket takes it from Linux 6.2 */
#endif
/* UDP-tunnel GSO through a tap (Linux >= 6.17): the feature, the gso_type
 * bit of an IPv4 tunnel, and the virtio-net header that carries the outer
 * transport and inner network header offsets */
#ifndef TUN_F_UDP_TUNNEL_GSO
#define TUN_F_UDP_TUNNEL_GSO 0x080
#endif
#ifndef VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4
#define VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4 0x20
#endif
struct afp_tnl_hdr {
    struct virtio_net_hdr h; /* flags, gso_type, hdr_len, gso_size, csum_* */
    uint16_t num_buffers;    /* virtio_net_hdr_v1 */
    uint32_t hash_value;     /* virtio_net_hdr_v1_hash: unused on tx */
    uint16_t hash_report;
    uint16_t padding;
    uint16_t outer_th_offset; /* the outer UDP header */
    uint16_t inner_nh_offset; /* the inner IP header */
} __attribute__((packed));
#define AFP_TNL_HDR_LEN ((uint32_t)sizeof(struct afp_tnl_hdr))

#ifndef TP_STATUS_COPY
#define TP_STATUS_COPY (1 << 1)
#endif

#define AFP_SLOT 2048u            /* unit of `frames`, smallest ring frame */
#define AFP_BLOCK_MAX (1u << 16)  /* largest ring block */
#define AFP_BLOCK_MIN_NR 8u       /* aim for at least this many blocks */
#define AFP_FRAMES_MAX (1u << 20) /* sanity cap on `frames` */
#define AFP_FRAMES_MIN 64u        /* fewest ring frames, jumbo included */
#define AFP_VNET_LEN ((uint32_t)sizeof(struct virtio_net_hdr))
#define AFP_BIG_MAX (65536u + 256u) /* largest GSO frame read (64 KiB + headers) */
#define AFP_RECV_TRIES 4            /* reads of a queued frame past pending socket errors */
#define AFP_MATCH_BYTES 64u         /* a queued copy's first bytes checked against the ring */
#define AFP_STALE_MAX 64u           /* stale copies thrown away for one ring frame, at most */
#define AFP_IOV_MAX 64u             /* iovecs of one GSO frame: header + segments */
#define AFP_RCVBUF (8u << 20)       /* GSO frames queued on the rx socket, bytes */
#define AFP_GSO_SNDBUF (8u << 20)   /* GSO frames in flight on the tx side, bytes */
#define AFP_UGSO_SEGS 64u           /* most datagrams one UDP GSO batch carries */
#define AFP_UGSO_IOV 160u           /* iovecs of one UDP GSO batch */
#define AFP_UGSO_HDR 42u            /* Ethernet + IPv4 (no options) + UDP */

/* Where frame data starts in a V2 tx frame (kernel default, no TX_HAS_OFF):
 * the virtio-net header, then the frame. */
#define AFP_TX_DATA_OFF (TPACKET2_HDRLEN - sizeof(struct sockaddr_ll))
/* Where the kernel puts an rx frame's MAC header in a V2 ring frame, at most:
 * TPACKET_ALIGN(hdrlen + 16) + virtio-net header (tpacket_rcv). */
#define AFP_RX_MAC_OFF (TPACKET_ALIGN(TPACKET2_HDRLEN + 16) + AFP_VNET_LEN)

int dp_csum_dynfield = -1;
uint64_t dp_csum_dynflag;

struct dp_afp {
    /* rx side: touched by the rx thread only */
    struct {
        uint8_t *map; /* V2 ring mapping */
        size_t map_len;
        uint32_t frame_size;
        uint32_t frame_nr; /* power of two */
        uint32_t head;     /* next frame to read */
        struct rte_mempool *mp;
        uint64_t oversize; /* dropped: longer than a ring frame */
        uint64_t truncated;
        uint64_t no_mbuf;
        uint64_t gso; /* dropped: GSO of a kind not carried */
        int fd;
    } rx __rte_cache_aligned;

    /* tx side: touched by the (serialised) tx callers only */
    struct {
        uint8_t *map; /* V2 ring mapping */
        size_t map_len;
        uint32_t frame_size;
        uint32_t frame_nr;        /* power of two */
        uint32_t head;            /* next frame to fill */
        uint32_t data_max;        /* largest frame we can queue */
        uint64_t error;           /* large frames the kernel refused */
        uint64_t oversize;        /* longer than the interface's MTU allows: not queued */
        uint64_t down;            /* queued while the interface was down: skipped */
        uint64_t nocarrier_until; /* TSC: till then the interface is taken to have
                                   * no carrier (afp_tx_kick found it so): frames
                                   * dropped before the kernel, 0 = not */
        uint64_t nocarrier;       /* dropped so, as the interface would have:
                                   * counted with its own (kport_kernel_tx) */
        uint32_t max_frame;       /* MTU + Ethernet + VLAN, as last read (dp_afp_stats) */
        uint64_t batches;         /* UDP GSO batches sent (udp_gso) */
        uint64_t batched;         /* datagrams they carried */
        uint64_t tunneled;        /* VXLAN super-frames sent whole through tfd */
        int udp_gso;              /* batch runs of one UDP flow into one GSO frame */
        int fd;
        int gfd;      /* no ring: sendmsg() of frames larger than a ring frame */
        int tfd;      /* the tunnel tap (dp_afp_tunnel_open), -1 = none */
        int tnl_gone; /* the tap refused a write for good (deleted) */
    } tx __rte_cache_aligned;

    /* control: read-only after open (but the kernel drop sums) */
    uint64_t kernel_drops;
    uint64_t kernel_tx;      /* the interface's tx_dropped since open */
    int64_t tx_dropped_base; /* its tx_dropped at open; -1: unreadable */
    uint32_t max_frame;      /* MTU + Ethernet header + one VLAN tag */
    int ifindex;
    uint8_t mac[RTE_ETHER_ADDR_LEN];
    char ifname[IF_NAMESIZE];
} __rte_cache_aligned;

int
dp_csum_init(void)
{
    static const struct rte_mbuf_dynfield fd = {
        .name = "dp_csum_meta",
        .size = sizeof(struct dp_csum_meta),
        .align = __alignof__(struct dp_csum_meta),
    };
    static const struct rte_mbuf_dynflag fl = {.name = "dp_csum_partial"};
    int off = rte_mbuf_dynfield_register(&fd);
    int bit = rte_mbuf_dynflag_register(&fl);

    if (off < 0 || bit < 0)
        return -rte_errno;
    dp_csum_dynfield = off;
    dp_csum_dynflag = UINT64_C(1) << bit;
    return 0;
}

/* Write a 16-bit value at offset off of m's frame (any segment). */
static void
afp_put16(struct rte_mbuf *m, uint32_t off, uint16_t v)
{
    uint8_t b[2];
    memcpy(b, &v, 2);
    for (int k = 0; k < 2; k++, off++) {
        struct rte_mbuf *s = m;
        uint32_t o = off;
        while (s != NULL && o >= s->data_len) {
            o -= s->data_len;
            s = s->next;
        }
        if (s == NULL)
            return;
        *rte_pktmbuf_mtod_offset(s, uint8_t *, o) = b[k];
    }
}

void
dp_csum_complete(struct rte_mbuf *m)
{
    const struct dp_csum_meta *cm = dp_csum_meta(m);
    uint32_t start = (uint32_t)cm->start - m->data_off, off = cm->off;
    uint16_t raw, cs;

    m->ol_flags &= ~dp_csum_dynflag;
    /* csum_start before the frame (headers stripped past it) or a field past
     * the end: nothing sensible to compute */
    if (cm->start < m->data_off || start + off + 2 > m->pkt_len)
        return;
    if (rte_raw_cksum_mbuf(m, start, m->pkt_len - start, &raw) != 0)
        return;
    cs = (uint16_t)~raw;
    if (cs == 0)
        cs = 0xffff; /* 0 means "no checksum" to UDP; the same sum to TCP */
    if (likely(start + off + 2 <= m->data_len))
        *rte_pktmbuf_mtod_offset(m, unaligned_uint16_t *, start + off) = cs;
    else
        afp_put16(m, start + off, cs);
}

/* Pick a ring block size: a power of two in [page, 64 KiB] and at least one
 * ring frame, small enough to give at least AFP_BLOCK_MIN_NR blocks. total
 * is a power of two. */
static uint32_t
afp_block_size(size_t total, uint32_t frame_size)
{
    long page = sysconf(_SC_PAGESIZE);
    uint32_t min = RTE_MAX((uint32_t)(page > 0 ? page : 4096), frame_size);
    uint32_t bs = RTE_MAX(AFP_BLOCK_MAX, frame_size);

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

/* A V2 ring of frame_nr frames of frame_size bytes on fd, mapped. */
static int
afp_ring(struct dp_afp *a, int fd, int opt, uint32_t frame_size, uint32_t frame_nr,
         uint8_t **map_out, size_t *len_out)
{
    const char *what = opt == PACKET_RX_RING ? "rx" : "tx";
    size_t total = (size_t)frame_size * frame_nr;
    int ver = TPACKET_V2, one = 1;
    struct tpacket_req req;
    uint32_t bs;
    void *map;

    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &ver, sizeof(ver)) < 0)
        return dp_fail(-errno, "afpacket %s: %s PACKET_VERSION v2: %m", a->ifname, what);
    /* the virtio-net header: before the ring, the kernel refuses it after */
    if (setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) < 0)
        return dp_fail(-errno, "afpacket %s: %s PACKET_VNET_HDR: %m", a->ifname, what);

    memset(&req, 0, sizeof(req));
    bs = afp_block_size(total, frame_size);
    req.tp_block_size = bs;
    req.tp_block_nr = (unsigned)(total / bs);
    req.tp_frame_size = frame_size;
    req.tp_frame_nr = frame_nr;
    if (setsockopt(fd, SOL_PACKET, opt, &req, sizeof(req)) < 0)
        return dp_fail(-errno, "afpacket %s: %s ring of %u frames of %u bytes: %m", a->ifname, what,
                       frame_nr, frame_size);

    /* map it; MAP_POPULATE keeps page faults off the hot path */
    map = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (map == MAP_FAILED)
        return dp_fail(-errno, "afpacket %s: %s mmap: %m", a->ifname, what);
    *map_out = map;
    *len_out = total;
    return 0;
}

/* Set up the rx socket: V2 ring, ignore outgoing, bind, promiscuous. */
static int
afp_open_rx(struct dp_afp *a, uint32_t frame_size, uint32_t frame_nr)
{
    const char *ifn = a->ifname;
    struct sockaddr_ll sll;
    struct packet_mreq mr;
    int one = 1, ret, rcvbuf = (int)AFP_RCVBUF;
    int fd;

    /* protocol 0: nothing is queued until bind() below, after the ring */
    fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return dp_fail(-errno, "afpacket %s: rx socket: %m", ifn);
    a->rx.fd = fd;

    /* do not receive what is transmitted on the interface (our own tx) */
    if (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one)) < 0 &&
        afp_filter_outgoing(fd) < 0)
        return dp_fail(-errno, "afpacket %s: rx PACKET_IGNORE_OUTGOING: %m", ifn);

    /* a frame longer than a ring frame (a GSO super-frame) is also queued
     * whole on the socket, flagged TP_STATUS_COPY in the ring, as long as
     * the receive buffer has room: read with recvmsg() */
    if (setsockopt(fd, SOL_PACKET, PACKET_COPY_THRESH, &one, sizeof(one)) < 0)
        return dp_fail(-errno, "afpacket %s: rx PACKET_COPY_THRESH: %m", ifn);
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) < 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));

    ret = afp_ring(a, fd, PACKET_RX_RING, frame_size, frame_nr, &a->rx.map, &a->rx.map_len);
    if (ret < 0)
        return ret;
    a->rx.frame_size = frame_size;
    a->rx.frame_nr = frame_nr;
    a->rx.head = 0;

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
afp_open_tx(struct dp_afp *a, uint32_t frame_size, uint32_t frame_nr)
{
    const char *ifn = a->ifname;
    struct sockaddr_ll sll;
    int one = 1, sndbuf, ret;
    int fd;

    fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return dp_fail(-errno, "afpacket %s: tx socket: %m", ifn);
    a->tx.fd = fd;

    /* straight to the driver, no qdisc (best effort: old kernels lack it) */
    (void)setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));

    /* a frame the kernel rejects (e.g. > MTU) is skipped, not left stuck
     * in TP_STATUS_WRONG_FORMAT blocking the ring */
    if (setsockopt(fd, SOL_PACKET, PACKET_LOSS, &one, sizeof(one)) < 0)
        return dp_fail(-errno, "afpacket %s: tx PACKET_LOSS: %m", ifn);

    /* room for a whole ring in flight, so sendto() never stops early for
     * want of socket memory (which would leave frames until the next kick);
     * FORCE needs CAP_NET_ADMIN, plain SNDBUF is capped by wmem_max */
    sndbuf = (int)RTE_MIN((size_t)frame_nr * 2 * frame_size, (size_t)INT32_MAX / 2);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)) < 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));

    ret = afp_ring(a, fd, PACKET_TX_RING, frame_size, frame_nr, &a->tx.map, &a->tx.map_len);
    if (ret < 0)
        return ret;
    a->tx.frame_size = frame_size;
    a->tx.frame_nr = frame_nr;
    a->tx.head = 0;
    a->tx.data_max = frame_size - (uint32_t)AFP_TX_DATA_OFF - AFP_VNET_LEN;

    /* protocol 0: sets the device for sendto(), registers no rx hook */
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = 0;
    sll.sll_ifindex = a->ifindex;
    if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0)
        return dp_fail(-errno, "afpacket %s: tx bind: %m", ifn);

    /* the GSO socket: no ring, so sendmsg() sends the caller's buffers */
    fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return dp_fail(-errno, "afpacket %s: gso tx socket: %m", ifn);
    a->tx.gfd = fd;
    /* no PACKET_QDISC_BYPASS here: the direct path drops a GSO frame the
     * device cannot take whole instead of segmenting it in software */
    if (setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) < 0)
        return dp_fail(-errno, "afpacket %s: gso tx PACKET_VNET_HDR: %m", ifn);
    sndbuf = (int)AFP_GSO_SNDBUF;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)) < 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0)
        return dp_fail(-errno, "afpacket %s: gso tx bind: %m", ifn);
    return 0;
}

/*
 * The interface's tx_dropped (IFLA_STATS64 of RTM_GETLINK), or -1 if it
 * cannot be read (gone); its MTU (IFLA_MTU) into *mtu too, when mtu is not
 * NULL and the kernel says it. What the kernel drops after taking a frame
 * from the tx ring shows there and nowhere else: a veth whose peer is down
 * or whose peer's backlog is full. A netlink
 * socket of the calling thread's namespace, not sysfs, whose view is the
 * namespace it was mounted in. Control thread only.
 */
static int64_t
afp_link_tx_dropped(int ifindex, uint32_t *mtu)
{
    static uint8_t buf[32768] __rte_aligned(8);
    struct {
        struct nlmsghdr nh;
        struct ifinfomsg ifi;
    } req;
    int64_t val = -1;
    ssize_t n;
    int fd;

    fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0)
        return -1;
    memset(&req, 0, sizeof(req));
    req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(req.ifi));
    req.nh.nlmsg_type = RTM_GETLINK;
    req.nh.nlmsg_flags = NLM_F_REQUEST;
    req.nh.nlmsg_seq = 1;
    req.ifi.ifi_family = AF_UNSPEC;
    req.ifi.ifi_index = ifindex;
    if (send(fd, &req, req.nh.nlmsg_len, 0) != (ssize_t)req.nh.nlmsg_len) {
        (void)close(fd);
        return -1;
    }
    n = recv(fd, buf, sizeof(buf), 0);
    (void)close(fd);
    for (struct nlmsghdr *nh = (struct nlmsghdr *)buf; n > 0 && NLMSG_OK(nh, (size_t)n);
         nh = NLMSG_NEXT(nh, n)) {
        struct ifinfomsg *ifi = NLMSG_DATA(nh);
        int alen;

        if (nh->nlmsg_type != RTM_NEWLINK || ifi->ifi_index != ifindex)
            continue;
        alen = (int)IFLA_PAYLOAD(nh);
        for (struct rtattr *ra = IFLA_RTA(ifi); RTA_OK(ra, alen); ra = RTA_NEXT(ra, alen)) {
            if (ra->rta_type == IFLA_MTU && RTA_PAYLOAD(ra) >= sizeof(uint32_t) && mtu != NULL)
                memcpy(mtu, RTA_DATA(ra), sizeof(*mtu));
            if (ra->rta_type == IFLA_STATS64 &&
                RTA_PAYLOAD(ra) >= offsetof(struct rtnl_link_stats64, tx_dropped) + 8) {
                uint64_t d;

                memcpy(&d, (uint8_t *)RTA_DATA(ra) + offsetof(struct rtnl_link_stats64, tx_dropped),
                       sizeof(d));
                val = (int64_t)(d & INT64_MAX);
            }
        }
    }
    return val;
}

/* afp_open_tx run by a thread: its result and message (dp_fail's message
 * is the failing thread's own) */
struct afp_tx_open {
    struct dp_afp *a;
    uint32_t frame_size, frame_nr;
    int ret;
    char err[256];
};

static void *
afp_open_tx_thread(void *arg)
{
    struct afp_tx_open *o = arg;

    o->ret = afp_open_tx(o->a, o->frame_size, o->frame_nr);
    if (o->ret < 0)
        snprintf(o->err, sizeof(o->err), "%s", dp_last_error());
    return NULL;
}

int
dp_afp_open(const char *ifname, unsigned frames, struct rte_mempool *mp, struct dp_afp **out)
{
    const char *ifn = ifname != NULL ? ifname : "(null)";
    uint32_t frame_size, frame_nr;
    struct dp_afp *a;
    struct ifreq ifr;
    int ret, fd;
    void *mem;

    if (out == NULL)
        return dp_fail(-EINVAL, "afpacket %s: nowhere to put the port", ifn);
    *out = NULL;

    /* check arguments */
    if (ifname == NULL || ifname[0] == '\0' || strlen(ifname) >= IF_NAMESIZE)
        return dp_fail(-EINVAL, "afpacket %s: interface name empty or longer than %d bytes", ifn,
                       IF_NAMESIZE - 1);
    if (frames < AFP_FRAMES_MIN || frames > AFP_FRAMES_MAX || !rte_is_power_of_2(frames))
        return dp_fail(-EINVAL, "afpacket %s: %u frames, not a power of two in %u..%u", ifn, frames,
                       AFP_FRAMES_MIN, AFP_FRAMES_MAX);
    if (mp == NULL)
        return dp_fail(-EINVAL, "afpacket %s: no mbuf pool", ifn);
    if (dp_csum_dynfield < 0)
        return dp_fail(-EINVAL, "afpacket %s: checksum metadata not registered", ifn);

    /* state; cache aligned so rx and tx halves do not share lines */
    if (posix_memalign(&mem, RTE_CACHE_LINE_SIZE, sizeof(*a)) != 0)
        return dp_fail(-ENOMEM, "afpacket %s: out of memory", ifn);
    a = mem;
    memset(a, 0, sizeof(*a));
    a->rx.fd = -1;
    a->tx.fd = -1;
    a->tx.gfd = -1;
    a->tx.tfd = -1;
    a->rx.mp = mp;
    memcpy(a->ifname, ifname, strlen(ifname) + 1);

    /* interface index */
    a->ifindex = (int)if_nametoindex(ifname);
    if (a->ifindex == 0) {
        ret = dp_fail(-errno, "afpacket %s: if_nametoindex: %m", ifn);
        goto fail;
    }

    /* MAC address (also rejects non-Ethernet devices: tun, ...) and MTU,
     * which sizes the ring frames */
    /* a UDP socket for the ioctls: closing a packet socket waits for an
     * RCU grace period (10-15 ms here), closing this one does not */
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ret = dp_fail(-errno, "afpacket %s: socket: %m", ifn);
        goto fail;
    }
    memset(&ifr, 0, sizeof(ifr));
    memcpy(ifr.ifr_name, a->ifname, sizeof(a->ifname));
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) {
        ret = dp_fail(-errno, "afpacket %s: SIOCGIFHWADDR: %m", ifn);
        (void)close(fd);
        goto fail;
    }
    if (ifr.ifr_hwaddr.sa_family != ARPHRD_ETHER) {
        ret = dp_fail(-EINVAL, "afpacket %s: not an Ethernet device", ifn);
        (void)close(fd);
        goto fail;
    }
    memcpy(a->mac, ifr.ifr_hwaddr.sa_data, RTE_ETHER_ADDR_LEN);
    memset(&ifr, 0, sizeof(ifr));
    memcpy(ifr.ifr_name, a->ifname, sizeof(a->ifname));
    if (ioctl(fd, SIOCGIFMTU, &ifr) < 0) {
        ret = dp_fail(-errno, "afpacket %s: SIOCGIFMTU: %m", ifn);
        (void)close(fd);
        goto fail;
    }
    (void)close(fd);
    if (ifr.ifr_mtu < 68 || ifr.ifr_mtu > 65535) {
        ret = dp_fail(-EINVAL, "afpacket %s: MTU %d not in 68..65535", ifn, ifr.ifr_mtu);
        goto fail;
    }

    /* ring frames: the largest frame behind the kernel's ring header and the
     * virtio-net header, a power of two; the same memory as `frames` slots */
    a->max_frame = (uint32_t)ifr.ifr_mtu + RTE_ETHER_HDR_LEN + RTE_VLAN_HLEN;
    a->tx.max_frame = a->max_frame;
    frame_size = RTE_MAX(AFP_SLOT, rte_align32pow2((uint32_t)AFP_RX_MAC_OFF + a->max_frame));
    frame_nr = RTE_MAX(AFP_FRAMES_MIN, (uint32_t)((uint64_t)frames * AFP_SLOT / frame_size));

    /* the tx half in a thread of its own: setting up each ring waits for
     * an RCU grace period, and the two waits overlap */
    {
        struct afp_tx_open txo = {.a = a, .frame_size = frame_size, .frame_nr = frame_nr};
        pthread_t th;
        int threaded = pthread_create(&th, NULL, afp_open_tx_thread, &txo) == 0;

        if (!threaded)
            afp_open_tx_thread(&txo);
        ret = afp_open_rx(a, frame_size, frame_nr);
        if (threaded)
            (void)pthread_join(th, NULL);
        if (ret < 0)
            goto fail;
        if (txo.ret < 0) {
            ret = dp_fail(txo.ret, "%s", txo.err);
            goto fail;
        }
    }
    a->tx_dropped_base = afp_link_tx_dropped(a->ifindex, NULL);

    *out = a;
    return 0;
fail:
    dp_afp_close(a);
    return ret;
}

/* Close fds[0..n) (-1: none), at once: each packet socket's close waits
 * for an RCU grace period or two (20-25 ms here), and closes that run side
 * by side share them. A thread per descriptor but the first; one that
 * cannot be started closes in line. */
static void *
afp_close_fd(void *arg)
{
    (void)close((int)(intptr_t)arg);
    return NULL;
}

static void
afp_close_all(const int *fds, unsigned n)
{
    pthread_t th[8];
    int started[8] = {0};

    for (unsigned i = 1; i < n && i < RTE_DIM(th); i++) {
        if (fds[i] < 0)
            continue;
        started[i] = pthread_create(&th[i], NULL, afp_close_fd, (void *)(intptr_t)fds[i]) == 0;
        if (!started[i])
            (void)close(fds[i]);
    }
    if (n > 0 && fds[0] >= 0)
        (void)close(fds[0]);
    for (unsigned i = 1; i < n && i < RTE_DIM(th); i++)
        if (started[i])
            (void)pthread_join(th[i], NULL);
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
    {
        int fds[] = {a->rx.fd, a->tx.fd, a->tx.gfd, a->tx.tfd}; /* the tap goes with tfd */
        afp_close_all(fds, RTE_DIM(fds));
    }
    free(a);
}

void
dp_afp_mac(const struct dp_afp *a, uint8_t mac[6])
{
    memcpy(mac, a->mac, RTE_ETHER_ADDR_LEN);
}

int
dp_afp_ifindex(const struct dp_afp *a)
{
    return a->ifindex;
}

int
dp_afp_rx_fd(const struct dp_afp *a)
{
    return a->rx.fd;
}

uint32_t
dp_afp_max_frame(const struct dp_afp *a)
{
    return a->max_frame;
}

void
dp_afp_stats(struct dp_afp *a, struct dp_afp_stats *st)
{
    struct tpacket_stats ks;
    socklen_t len = sizeof(ks);
    int64_t txd;
    uint32_t mtu = 0;

    /* the kernel resets its counters on every read: keep the sum */
    if (getsockopt(a->rx.fd, SOL_PACKET, PACKET_STATISTICS, &ks, &len) == 0)
        a->kernel_drops += ks.tp_drops;
    /* the interface's own transmit drops: the last value read stays once
     * the interface is gone */
    if (a->tx_dropped_base >= 0) {
        txd = afp_link_tx_dropped(a->ifindex, &mtu);
        if (txd >= a->tx_dropped_base)
            a->kernel_tx = (uint64_t)(txd - a->tx_dropped_base);
        /* the MTU may have changed since the port was opened */
        if (mtu != 0)
            __atomic_store_n(&a->tx.max_frame, mtu + RTE_ETHER_HDR_LEN + RTE_VLAN_HLEN,
                             __ATOMIC_RELAXED);
    }
    st->oversize = __atomic_load_n(&a->rx.oversize, __ATOMIC_RELAXED);
    st->truncated = __atomic_load_n(&a->rx.truncated, __ATOMIC_RELAXED);
    st->no_mbuf = __atomic_load_n(&a->rx.no_mbuf, __ATOMIC_RELAXED);
    st->kernel = a->kernel_drops;
    st->gso = __atomic_load_n(&a->rx.gso, __ATOMIC_RELAXED);
    st->tx_error = __atomic_load_n(&a->tx.error, __ATOMIC_RELAXED);
    st->tx_oversize = __atomic_load_n(&a->tx.oversize, __ATOMIC_RELAXED);
    st->tx_down = __atomic_load_n(&a->tx.down, __ATOMIC_RELAXED);
    /* the interface's own drops, and those made for it while it had no
     * carrier (dp_afp_tx_burst) */
    st->kernel_tx = a->kernel_tx + __atomic_load_n(&a->tx.nocarrier, __ATOMIC_RELAXED);
}

int
dp_afp_has_tunnel(const struct dp_afp *a)
{
    return a->tx.tfd >= 0;
}

int
dp_afp_tunnel_ok(const struct dp_afp *a)
{
    return dp_afp_has_tunnel(a) && !__atomic_load_n(&a->tx.tnl_gone, __ATOMIC_RELAXED);
}

uint64_t
dp_afp_tunneled(const struct dp_afp *a)
{
    return __atomic_load_n(&a->tx.tunneled, __ATOMIC_RELAXED);
}

int
dp_afp_tunnel_open(struct dp_afp *a, const char *tap)
{
    struct ifreq ifr;
    int fd, hs = (int)AFP_TNL_HDR_LEN;

    if (tap == NULL || tap[0] == '\0' || strlen(tap) >= IF_NAMESIZE)
        return dp_fail(-EINVAL, "afpacket %s: tap name empty or longer than %d bytes", a->ifname,
                       IF_NAMESIZE - 1);
    if (a->tx.tfd >= 0)
        return dp_fail(-EBUSY, "afpacket %s: has a tunnel tap already", a->ifname);
    fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return dp_fail(-errno, "afpacket %s: /dev/net/tun: %m", a->ifname);
    memset(&ifr, 0, sizeof(ifr));
    memcpy(ifr.ifr_name, tap, strlen(tap));
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int e = -errno;

        (void)close(fd);
        return dp_fail(e, "afpacket %s: tap %s: TUNSETIFF: %s", a->ifname, tap, strerror(-e));
    }
    if (ioctl(fd, TUNSETOFFLOAD,
              (unsigned long)(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UDP_TUNNEL_GSO)) < 0) {
        int e = -errno;

        (void)close(fd);
        if (e == -EINVAL)
            return dp_fail(-EOPNOTSUPP,
                           "afpacket %s: this kernel's taps take no UDP-tunnel GSO "
                           "(Linux 6.17 or later)",
                           a->ifname);
        return dp_fail(e, "afpacket %s: tap %s: TUNSETOFFLOAD: %s", a->ifname, tap, strerror(-e));
    }
    if (ioctl(fd, TUNSETVNETHDRSZ, &hs) < 0) {
        int e = -errno;

        (void)close(fd);
        return dp_fail(e, "afpacket %s: tap %s: TUNSETVNETHDRSZ: %s", a->ifname, tap, strerror(-e));
    }
    a->tx.tfd = fd;
    __atomic_store_n(&a->tx.tnl_gone, 0, __ATOMIC_RELAXED);
    return 0;
}

int
dp_afp_tunnel_detach(struct dp_afp *a)
{
    int fd = a->tx.tfd;

    __atomic_store_n(&a->tx.tfd, -1, __ATOMIC_RELAXED);
    return fd;
}

/*
 * rx
 */

static inline struct tpacket2_hdr *
afp_rx_frame(const struct dp_afp *a, uint32_t i)
{
    return (struct tpacket2_hdr *)(a->rx.map + (size_t)i * a->rx.frame_size);
}

/* Frame handed to user space? Acquire: frame data is read after this. */
static inline int
afp_rx_frame_ready(const struct tpacket2_hdr *h)
{
    return (__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER) != 0;
}

/* Append len bytes to m's chain, whose last segment is *last; further
 * segments come from mp. Returns 0, or -1 when out of mbufs. */
static inline int
afp_append(struct rte_mempool *mp, struct rte_mbuf *m, struct rte_mbuf **last, const uint8_t *src,
           uint32_t len)
{
    while (len != 0) {
        struct rte_mbuf *l = *last;
        uint32_t room = rte_pktmbuf_tailroom(l), k;

        if (room == 0) {
            struct rte_mbuf *s = rte_pktmbuf_alloc(mp);

            if (unlikely(s == NULL))
                return -1;
            s->data_off = 0; /* no headroom needed past the first segment */
            l->next = s;
            m->nb_segs++;
            *last = s;
            continue;
        }
        k = RTE_MIN(room, len);
        rte_memcpy(rte_pktmbuf_mtod_offset(l, uint8_t *, l->data_len), src, k);
        l->data_len = (uint16_t)(l->data_len + k);
        m->pkt_len += k;
        src += k;
        len -= k;
    }
    return 0;
}

/* Drop the frame being built in m: m is empty (one segment) again. */
static inline void
afp_rx_reset(struct rte_mbuf *m)
{
    dp_free_segs(m->next);
    rte_pktmbuf_reset(m);
}

/* Where frame p's IP header starts: past the Ethernet header and its VLAN
 * tags, no tag read at or past byte lim; *et: the ethertype there */
static inline uint32_t
afp_l3_start(const uint8_t *p, uint32_t lim, uint16_t *et)
{
    uint32_t l2 = RTE_ETHER_HDR_LEN;

    memcpy(et, p + 12, 2);
    while ((*et == RTE_BE16(RTE_ETHER_TYPE_VLAN) || *et == RTE_BE16(RTE_ETHER_TYPE_QINQ)) &&
           l2 + RTE_VLAN_HLEN < lim) {
        memcpy(et, p + l2 + 2, 2);
        l2 += RTE_VLAN_HLEN;
    }
    return l2;
}

/* The protocol of the header at start of frame p (l2, et: where its IP
 * header starts and the ethertype there, afp_l3_start), if start is right
 * behind that IP header: IPv4 with its options, or IPv6 and its hop-by-hop,
 * routing and destination-options headers; else -1. Reads no byte past
 * start (the caller's to have in the first segment). */
static inline int
afp_l4_proto(const uint8_t *p, uint32_t l2, uint16_t et, uint32_t start)
{
    if (et == RTE_BE16(RTE_ETHER_TYPE_IPV4)) {
        if (l2 + sizeof(struct rte_ipv4_hdr) > start || start != l2 + (p[l2] & 0xfu) * 4)
            return -1;
        return p[l2 + 9];
    }
    if (et == RTE_BE16(RTE_ETHER_TYPE_IPV6)) {
        uint32_t off = l2 + sizeof(struct rte_ipv6_hdr);
        uint8_t nh;

        if (off > start)
            return -1;
        nh = p[l2 + 6];
        /* (a fragment header ends the walk: no checksum of a fragment is
         * left to offload) */
        while (off < start &&
               (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS)) {
            nh = p[off];
            off += (p[off + 1] + 1u) * 8;
        }
        return off == start ? nh : -1;
    }
    return -1;
}

/* A GSO super-frame (virtio-net gso_type TCPV4/TCPV6, or UDP_L4 from a
 * UDP_SEGMENT socket or the interface's UDP GRO): mark it for segmentation
 * the DPDK way (dp_gso.h), its checksum partial (start: csum_start of a
 * partial one, vlan already added). A merged (GRO) frame's checksum is
 * complete for its first segment only: it is made partial here, the
 * pseudo-header sum over the whole frame in its field. Returns 0, or -1
 * for a GSO frame of another kind (UFO), with its headers out of place, a
 * partial checksum that is not its TCP's (UDP's) own, or more segments than
 * the core cuts one into (DP_GSO_MAX_SEGS: what a kernel would cut it into
 * behind us, as the tunnel tap's, is bounded as our own cut is; gso_size is
 * the pod's word, 1 makes 64 KiB of segments). */
static int
afp_rx_gso(struct dp_afp *a, struct rte_mbuf *m, const struct virtio_net_hdr *vh, uint32_t start)
{
    uint8_t *p = rte_pktmbuf_mtod(m, uint8_t *);
    uint8_t t = vh->gso_type & (uint8_t)~VIRTIO_NET_HDR_GSO_ECN;
    int partial = (vh->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) != 0;
    int udp = t == VIRTIO_NET_HDR_GSO_UDP_L4;
    /* csum_start is the kernel's (or a raw sender's) word: the walk stays
     * within the first segment too */
    uint32_t l2, l4, lim = partial ? RTE_MIN(start, m->data_len) : m->data_len;
    uint32_t base = 0; /* of an encapsulated frame: its outer headers */
    uint16_t et;

    if (unlikely((t != VIRTIO_NET_HDR_GSO_TCPV4 && t != VIRTIO_NET_HDR_GSO_TCPV6 && !udp) ||
                 vh->gso_size == 0 || m->data_len < RTE_ETHER_HDR_LEN + 40))
        goto bad;
    /* L2: the Ethernet header and its VLAN tags, up to the IP header */
    l2 = afp_l3_start(p, lim, &et);
    /* l2_len has 7 bits; the IP header read below lies in the segment */
    if (unlikely((et != RTE_BE16(RTE_ETHER_TYPE_IPV4) && et != RTE_BE16(RTE_ETHER_TYPE_IPV6)) ||
                 l2 > 127 || l2 + 40 > m->data_len))
        goto bad;
    /* L3 up to csum_start, where TCP or UDP starts (a merged frame: from
     * the IP header, IPv6 without extension headers); TCP's length from
     * its data offset; all of it in the first segment */
    if (!partial) {
        uint8_t pr = et == RTE_BE16(RTE_ETHER_TYPE_IPV4) ? p[l2 + 9] : p[l2 + 6];

        if (unlikely(pr != (udp ? IPPROTO_UDP : IPPROTO_TCP)))
            goto bad;
        start = l2 + (et == RTE_BE16(RTE_ETHER_TYPE_IPV4) ? (p[l2] & 0xfu) * 4 : 40);
    }
    if (unlikely(start <= l2 || start + 20 > m->data_len))
        goto bad;
    if (partial && et == RTE_BE16(RTE_ETHER_TYPE_IPV4) && p[l2 + 9] == IPPROTO_UDP &&
        start > l2 + (p[l2] & 0xfu) * 4 + 8) {
        /* the checksum starts past the UDP header: VXLAN-encapsulated
         * (UDP-tunnel GSO from a kernel VTEP, which the kernel describes
         * by its inner TCP/UDP) */
        uint32_t ol3 = (p[l2] & 0xfu) * 4, in = l2 + ol3 + 8 + 8; /* inner Ethernet */
        uint16_t iet;

        if (unlikely(in + RTE_ETHER_HDR_LEN + 20 > start))
            goto bad;
        /* inner IPv4, or IPv6 without extension headers (TCPV6) */
        iet = *(const unaligned_uint16_t *)(p + in + 12);
        if (unlikely(iet == RTE_BE16(RTE_ETHER_TYPE_IPV4)
                         ? start != in + RTE_ETHER_HDR_LEN + (p[in + RTE_ETHER_HDR_LEN] & 0xfu) * 4
                         : iet != RTE_BE16(RTE_ETHER_TYPE_IPV6) ||
                               start != in + RTE_ETHER_HDR_LEN + 40))
            goto bad;
        m->outer_l2_len = l2;
        m->outer_l3_len = ol3;
        m->ol_flags |=
            RTE_MBUF_F_TX_TUNNEL_VXLAN | RTE_MBUF_F_TX_OUTER_IPV4 | RTE_MBUF_F_TX_OUTER_IP_CKSUM;
        l2 = in + RTE_ETHER_HDR_LEN - l2 - ol3; /* outer UDP, VXLAN, inner Ethernet */
        et = iet;
        base = m->outer_l2_len + ol3; /* from here on: past the outer IPv4 */
        start -= base;
        p += base;
    }
    /* the transport header right behind the IP header (IPv4: its length;
     * IPv6: extension headers allowed, a tunnel over IPv6 is not) */
    if (unlikely(start - l2 > 511 ||
                 (et == RTE_BE16(RTE_ETHER_TYPE_IPV4)
                      ? start - l2 != (p[l2] & 0xfu) * 4u
                      : start - l2 < 40 || (p[l2 + 6] == IPPROTO_UDP && start - l2 != 40))))
        goto bad;
    /* the IP header's protocol the gso_type's; a partial checksum the
     * TCP's (UDP's) own, at its field */
    if (unlikely(afp_l4_proto(p, l2, et, start) != (udp ? IPPROTO_UDP : IPPROTO_TCP) ||
                 (partial && vh->csum_offset != (udp ? offsetof(struct rte_udp_hdr, dgram_cksum)
                                                     : offsetof(struct rte_tcp_hdr, cksum)))))
        goto bad;
    l4 = udp ? 8 : (uint32_t)(p[start + 12] >> 4) * 4;
    if (unlikely(l4 < 8 || base + start + l4 > m->data_len))
        goto bad;
    /* at most DP_GSO_MAX_SEGS segments: ceil(payload / gso_size) */
    if (unlikely(m->pkt_len - (base + start + l4) > (uint32_t)vh->gso_size * DP_GSO_MAX_SEGS))
        goto bad;
    m->l2_len = l2;
    m->l3_len = start - l2;
    m->l4_len = l4;
    m->tso_segsz = vh->gso_size;
    m->ol_flags |= udp ? RTE_MBUF_F_TX_UDP_SEG | RTE_MBUF_F_TX_UDP_CKSUM
                       : RTE_MBUF_F_TX_TCP_SEG | RTE_MBUF_F_TX_TCP_CKSUM;
    m->ol_flags |= et == RTE_BE16(RTE_ETHER_TYPE_IPV4) ? RTE_MBUF_F_TX_IPV4 | RTE_MBUF_F_TX_IP_CKSUM
                                                       : RTE_MBUF_F_TX_IPV6;
    if (!partial) {
        /* pseudo-header: addresses, protocol, L4 length of the whole frame */
        struct dp_csum_meta *cm = dp_csum_meta(m);
        uint32_t off = udp ? 6 : 16, sum;

        sum = et == RTE_BE16(RTE_ETHER_TYPE_IPV4) ? rte_raw_cksum(p + l2 + 12, 8)
                                                  : rte_raw_cksum(p + l2 + 8, 32);
        sum += rte_cpu_to_be_16(udp ? IPPROTO_UDP : IPPROTO_TCP);
        sum += rte_cpu_to_be_16((uint16_t)(m->pkt_len - start));
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        *(unaligned_uint16_t *)(p + start + off) = (uint16_t)sum;
        cm->start = (uint16_t)(m->data_off + start);
        cm->off = (uint16_t)off;
        m->ol_flags |= dp_csum_dynflag;
    }
    return 0;
bad:
    a->rx.gso++;
    return -1;
}

/*
 * SCTP's checksum left to offload: a kernel SCTP stack leaves its CRC32c
 * to a device that computes it (a veth does: tx-checksum-sctp), and the
 * packet socket hands such a frame over as any partial checksum, NEEDS_CSUM
 * at offset 8 of the SCTP header - a virtio-net header cannot say that it
 * is not an Internet checksum. Every later step would finish it as one
 * (dp_csum_complete, a NIC, the kernel's checksum help behind a kernel
 * port), so a frame whose checksum starts at an SCTP header right behind
 * its IP header (IPv4 with its options, or IPv6 and its extension headers)
 * gets its CRC32c (RFC 9260, appendix A) here, over every segment. Returns
 * 1 if it did.
 */
static int
afp_sctp_finish(struct rte_mbuf *m, uint32_t start)
{
    uint8_t *p = rte_pktmbuf_mtod(m, uint8_t *);
    uint32_t l2, crc = 0xffffffffu, off = start;
    uint16_t et;

    if (start + sizeof(struct rte_sctp_hdr) > m->data_len)
        return 0;
    /* past the extension headers an SCTP packet may carry (hop-by-hop,
     * routing, destination options), all before start, in the first
     * segment */
    l2 = afp_l3_start(p, start, &et);
    if (afp_l4_proto(p, l2, et, start) != IPPROTO_SCTP)
        return 0;
    *(unaligned_uint32_t *)(p + start + 8) = 0;
    for (const struct rte_mbuf *s = m; s != NULL; s = s->next) {
        if (off < s->data_len)
            crc = rte_hash_crc(rte_pktmbuf_mtod_offset(s, const uint8_t *, off), s->data_len - off,
                               crc);
        off = off > s->data_len ? off - s->data_len : 0;
    }
    /* the register's complement, least significant byte first */
    *(unaligned_uint32_t *)(p + start + 8) = rte_cpu_to_le_32(~crc);
    return 1;
}

/* Is the partial checksum (start, off) of m's frame, not a super-frame,
 * the one of a TCP or UDP header right behind the frame's IP header, at
 * its field (headers and field in the first segment)? */
static inline int
afp_csum_l4(const struct rte_mbuf *m, uint32_t start, uint32_t off)
{
    const uint8_t *p = rte_pktmbuf_mtod(m, const uint8_t *);
    uint32_t l2;
    uint16_t et;
    int pr;

    if (off != offsetof(struct rte_tcp_hdr, cksum) &&
        off != offsetof(struct rte_udp_hdr, dgram_cksum))
        return 0;
    if (start + off + 2 > m->data_len)
        return 0;
    l2 = afp_l3_start(p, start, &et);
    pr = afp_l4_proto(p, l2, et, start);
    return off == offsetof(struct rte_tcp_hdr, cksum) ? pr == IPPROTO_TCP : pr == IPPROTO_UDP;
}

/*
 * The offload state the virtio-net header vh gives m's frame (vlan: bytes of
 * a tag put back after the MAC addresses). Returns 0, or -1 if the frame is
 * dropped (m is then empty again).
 *
 * A partial checksum is completed later, after the guard checked the
 * frame's addresses (on a flood, by a DPDK port, in an uplink batch, by the
 * kernel behind a kernel port), so its csum_start and csum_offset, which a
 * pod writes as it likes, must not point at anything the guard reads: a
 * checksum over the bytes from an address on, written over that address,
 * with a pad word tuned, makes it any address. Only a TCP or UDP checksum
 * right behind the IP header (past VLAN tags; IPv4 options, IPv6 extension
 * headers), at its own field, stays partial (and SCTP's is finished here);
 * a super-frame's is checked by afp_rx_gso. Any other one is completed
 * here, before the guard, which then sees the frame's final bytes - what a
 * kernel does (skb_checksum_help) before a device that cannot take a
 * checksum where it is: a kernel VXLAN device's frame, its inner checksum
 * partial, goes on right.
 */
static inline int
afp_rx_offload(struct dp_afp *a, struct rte_mbuf *m, const struct virtio_net_hdr *vh, uint32_t vlan)
{
    uint32_t start = 0;

    /* verified by the kernel or its device (CHECKSUM_UNNECESSARY): the
     * outermost L4 checksum is good (a VTEP's on the uplink, dp_decap.h) */
    if (vh->flags & VIRTIO_NET_HDR_F_DATA_VALID)
        m->ol_flags |= RTE_MBUF_F_RX_L4_CKSUM_GOOD;
    /* checksum left to offload: carry where it starts and where it goes */
    if (unlikely(vh->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM)) {
        struct dp_csum_meta *cm = dp_csum_meta(m);

        start = vh->csum_start;
        if (start >= 2 * RTE_ETHER_ADDR_LEN)
            start += vlan;
        /* where the checksum goes, within the frame (the kernel says so;
         * a header that says otherwise is not carried on) */
        if (unlikely(start + vh->csum_offset + 2u > m->pkt_len)) {
            a->rx.truncated++;
            afp_rx_reset(m);
            return -1;
        }
        cm->start = (uint16_t)(m->data_off + start);
        cm->off = vh->csum_offset;
        m->ol_flags |= dp_csum_dynflag;
        if (vh->gso_type == VIRTIO_NET_HDR_GSO_NONE &&
            unlikely(!afp_csum_l4(m, start, vh->csum_offset))) {
            /* SCTP's CRC32c, finished here (no super-frame is SCTP's: the
             * kernel does not hand one to a packet socket) */
            if (vh->csum_offset == offsetof(struct rte_sctp_hdr, cksum) &&
                afp_sctp_finish(m, start)) {
                m->ol_flags &= ~dp_csum_dynflag;
                return 0;
            }
            dp_csum_complete(m); /* any other: finished before the guard */
            return 0;
        }
    }
    /* a super-frame: segmentation offload */
    if (unlikely(vh->gso_type != VIRTIO_NET_HDR_GSO_NONE) && afp_rx_gso(a, m, vh, start) < 0) {
        afp_rx_reset(m);
        return -1;
    }
    return 0;
}

/*
 * One frame queued on the rx socket (a super-frame's whole copy) read into
 * mh: its length with the virtio-net header, or -1 (errno EAGAIN: none
 * queued). A pending socket error - ENETDOWN, set when the interface went
 * down, even if it is up again since - is reported by the first call and
 * cleared, the queue untouched: read again, or the frame would stay queued
 * and every later super-frame read the one before it.
 */
static ssize_t
afp_rx_dequeue(struct dp_afp *a, struct msghdr *mh)
{
    ssize_t r = -1;

    for (int i = 0; i < AFP_RECV_TRIES; i++) {
        r = recvmsg(a->rx.fd, mh, MSG_DONTWAIT | MSG_TRUNC);
        if (r >= 0 || errno == EAGAIN || errno == EWOULDBLOCK)
            break;
    }
    return r;
}

/* Throw away the frame queued on the socket for ring frame h. */
static void
afp_rx_skip_big(struct dp_afp *a)
{
    uint8_t b;
    struct iovec iov = {.iov_base = &b, .iov_len = sizeof(b)};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

    (void)afp_rx_dequeue(a, &mh);
}

/*
 * A frame longer than a ring frame, queued whole on the socket by the kernel
 * (TP_STATUS_COPY on ring frame h): read it with one recvmsg() scattered
 * into m and as many more segments as it needs. Returns 0, or -1 if the
 * frame is dropped (m is then empty again).
 */
static __rte_noinline int
afp_rx_big(struct dp_afp *a, const struct tpacket2_hdr *h, struct rte_mbuf *m)
{
    const struct virtio_net_hdr *rvh =
        (const struct virtio_net_hdr *)((const uint8_t *)h + h->tp_mac - AFP_VNET_LEN);
    uint32_t vlan = (h->tp_status & TP_STATUS_VLAN_VALID) ? RTE_VLAN_HLEN : 0;
    uint32_t len = h->tp_len, rest, k, cmp, stale;
    struct virtio_net_hdr vh;
    struct iovec iov[AFP_IOV_MAX];
    struct msghdr mh;
    struct rte_mbuf *last = m;
    unsigned ni = 0;
    ssize_t r;

    /* only a GSO frame may be longer than the MTU; not one we cannot hold */
    if (unlikely(len > AFP_BIG_MAX || len < RTE_ETHER_HDR_LEN ||
                 rvh->gso_type == VIRTIO_NET_HDR_GSO_NONE)) {
        afp_rx_skip_big(a);
        a->rx.oversize++;
        return -1;
    }

    /* the chain, and an iovec per segment: the tag's room left free */
    iov[ni].iov_base = &vh;
    iov[ni++].iov_len = AFP_VNET_LEN;
    k = RTE_MIN(rte_pktmbuf_tailroom(m), len + vlan);
    iov[ni].iov_base = rte_pktmbuf_mtod_offset(m, uint8_t *, vlan);
    iov[ni++].iov_len = k - vlan;
    m->data_len = (uint16_t)k;
    cmp = RTE_MIN(RTE_MIN(h->tp_snaplen, (uint32_t)AFP_MATCH_BYTES), k - vlan);
    for (rest = len + vlan - k; rest != 0; rest -= k) {
        struct rte_mbuf *s = rte_pktmbuf_alloc(a->rx.mp);

        if (unlikely(s == NULL || ni == AFP_IOV_MAX)) {
            rte_pktmbuf_free(s);
            afp_rx_skip_big(a);
            a->rx.no_mbuf++;
            afp_rx_reset(m);
            return -1;
        }
        s->data_off = 0; /* no headroom needed past the first segment */
        k = RTE_MIN((uint32_t)s->buf_len, rest);
        s->data_len = (uint16_t)k;
        iov[ni].iov_base = rte_pktmbuf_mtod(s, uint8_t *);
        iov[ni++].iov_len = k;
        last->next = s;
        last = s;
        m->nb_segs++;
    }
    m->pkt_len = len + vlan;

    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = iov;
    mh.msg_iovlen = ni;
    /* the copy queued for this ring frame: its length, and its first bytes
     * those the ring holds. Another is a copy left on the socket for a ring
     * frame dropped before (counted then): thrown away and the next one
     * read, so that the socket's queue and the ring stay in step */
    for (stale = 0;; stale++) {
        r = afp_rx_dequeue(a, &mh);
        if (unlikely(r < 0 || stale == AFP_STALE_MAX)) {
            a->rx.truncated++; /* none queued: the kernel could not keep it */
            afp_rx_reset(m);
            return -1;
        }
        if (likely(r == (ssize_t)(AFP_VNET_LEN + len) &&
                   memcmp(rte_pktmbuf_mtod_offset(m, const uint8_t *, vlan),
                          (const uint8_t *)h + h->tp_mac, cmp) == 0))
            break;
    }
    if (unlikely(vlan != 0)) {
        /* the kernel stripped the outer tag into tp_vlan_tci: put it back
         * between the MAC addresses and the ethertype */
        uint8_t *p = rte_pktmbuf_mtod(m, uint8_t *);
        uint16_t tpid = RTE_ETHER_TYPE_VLAN;

        if ((h->tp_status & TP_STATUS_VLAN_TPID_VALID) && h->tp_vlan_tpid)
            tpid = h->tp_vlan_tpid;
        memmove(p, p + vlan, 2 * RTE_ETHER_ADDR_LEN);
        *(unaligned_uint16_t *)(p + 12) = rte_cpu_to_be_16(tpid);
        *(unaligned_uint16_t *)(p + 14) = rte_cpu_to_be_16((uint16_t)h->tp_vlan_tci);
    }
    return afp_rx_offload(a, m, &vh, vlan);
}

/* Copy one ring frame into m (empty, one segment). Returns 0, or -1 if the
 * frame is dropped (m is then empty again). */
static inline int
afp_rx_copy(struct dp_afp *a, const struct tpacket2_hdr *h, struct rte_mbuf *m)
{
    const uint8_t *src = (const uint8_t *)h + h->tp_mac;
    const struct virtio_net_hdr *vh = (const struct virtio_net_hdr *)(src - AFP_VNET_LEN);
    uint32_t status = h->tp_status;
    uint32_t len = h->tp_snaplen;
    uint8_t *dst = rte_pktmbuf_mtod(m, uint8_t *);
    uint32_t vlan = 0;
    struct rte_mbuf *last = m;

    /* longer than a ring frame: whole on the socket (a GSO frame), or cut
     * (the socket's buffer was full); longer than the MTU the ring was
     * sized for and not GSO (the ports it would go to could not take it);
     * or a runt */
    if (unlikely(len != h->tp_len)) {
        if (status & TP_STATUS_COPY)
            return afp_rx_big(a, h, m);
        a->rx.oversize++;
        return -1;
    }
    if (unlikely(len > a->max_frame && vh->gso_type == VIRTIO_NET_HDR_GSO_NONE)) {
        a->rx.oversize++;
        return -1;
    }
    if (unlikely(len < RTE_ETHER_HDR_LEN)) {
        a->rx.truncated++;
        return -1;
    }

    if (likely(!(status & TP_STATUS_VLAN_VALID))) {
        if (likely(len <= rte_pktmbuf_tailroom(m))) {
            rte_memcpy(dst, src, len);
            m->data_len = (uint16_t)len;
            m->pkt_len = len;
        } else if (afp_append(a->rx.mp, m, &last, src, len) < 0) {
            goto no_mbuf;
        }
    } else {
        /* the kernel stripped the outer tag into tp_vlan_tci: put it
         * back between the MAC addresses and the ethertype */
        uint16_t tpid = RTE_ETHER_TYPE_VLAN;
        uint8_t tag[2 * RTE_ETHER_ADDR_LEN + RTE_VLAN_HLEN];

        if ((status & TP_STATUS_VLAN_TPID_VALID) && h->tp_vlan_tpid)
            tpid = h->tp_vlan_tpid;
        memcpy(tag, src, 2 * RTE_ETHER_ADDR_LEN);
        *(unaligned_uint16_t *)(tag + 12) = rte_cpu_to_be_16(tpid);
        *(unaligned_uint16_t *)(tag + 14) = rte_cpu_to_be_16((uint16_t)h->tp_vlan_tci);
        if (afp_append(a->rx.mp, m, &last, tag, sizeof(tag)) < 0 ||
            afp_append(a->rx.mp, m, &last, src + 12, len - 12) < 0)
            goto no_mbuf;
        vlan = RTE_VLAN_HLEN;
    }
    return afp_rx_offload(a, m, vh, vlan);

no_mbuf:
    a->rx.no_mbuf++;
    afp_rx_reset(m);
    return -1;
}

uint16_t
dp_afp_rx_burst(struct dp_afp *a, struct rte_mbuf **pkts, uint16_t n)
{
    uint32_t mask = a->rx.frame_nr - 1, head = a->rx.head;
    uint32_t cnt, done, nb_rx = 0;

    /* how many frames are ready (no mbufs touched when idle) */
    for (cnt = 0; cnt < n; cnt++)
        if (!afp_rx_frame_ready(afp_rx_frame(a, (head + cnt) & mask)))
            break;
    if (cnt == 0)
        return 0;

    /* mbufs for the whole burst in one call; shrink if the pool is low */
    while (rte_pktmbuf_alloc_bulk(a->rx.mp, pkts, cnt) != 0) {
        cnt >>= 1;
        if (cnt == 0)
            return 0; /* frames stay in the ring */
    }

    /* copy frames out, hand each slot back; a dropped frame reuses its mbuf */
    for (done = 0; done < cnt; done++) {
        struct tpacket2_hdr *h = afp_rx_frame(a, head);

        if (done + 1 < cnt)
            rte_prefetch0((uint8_t *)afp_rx_frame(a, (head + 1) & mask) + AFP_RX_MAC_OFF);
        if (likely(afp_rx_copy(a, h, pkts[nb_rx]) == 0))
            nb_rx++;
        /* release: our reads of the frame happen before the kernel reuses it */
        __atomic_store_n(&h->tp_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        head = (head + 1) & mask;
    }
    a->rx.head = head;

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
    return (struct tpacket2_hdr *)(a->tx.map + (size_t)i * a->tx.frame_size);
}

/* Frame free for us? Timestamp bits are ignored (see DPDK's af_packet). */
static inline int
afp_tx_frame_free(const struct tpacket2_hdr *h)
{
    uint32_t st = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);

    st &= ~(uint32_t)(TP_STATUS_TS_SOFTWARE | TP_STATUS_TS_RAW_HARDWARE);
    return st == TP_STATUS_AVAILABLE;
}

/* The virtio-net header for m (len bytes): a partial checksum goes on as
 * partial, a TCP super-frame as GSO (dp_gso.h). */
static inline void
afp_tx_vnet(struct virtio_net_hdr *vh, struct rte_mbuf *m, uint32_t len)
{
    memset(vh, 0, sizeof(*vh));
    if (unlikely(dp_csum_partial(m))) {
        const struct dp_csum_meta *cm = dp_csum_meta(m);

        if (likely(cm->start >= m->data_off &&
                   (uint32_t)(cm->start - m->data_off) + cm->off + 2 <= len)) {
            vh->flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
            vh->csum_start = (uint16_t)(cm->start - m->data_off);
            vh->csum_offset = cm->off;
        }
    }
    if (unlikely(m->ol_flags & (RTE_MBUF_F_TX_TCP_SEG | RTE_MBUF_F_TX_UDP_SEG))) {
        int udp = (m->ol_flags & RTE_MBUF_F_TX_UDP_SEG) != 0;

        vh->gso_type = udp                                  ? VIRTIO_NET_HDR_GSO_UDP_L4
                       : (m->ol_flags & RTE_MBUF_F_TX_IPV6) ? VIRTIO_NET_HDR_GSO_TCPV6
                                                            : VIRTIO_NET_HDR_GSO_TCPV4;
        vh->gso_size = m->tso_segsz;
        vh->hdr_len = (uint16_t)(m->l2_len + m->l3_len + m->l4_len);
        if (!(vh->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM)) {
            vh->flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
            vh->csum_start = (uint16_t)(m->l2_len + m->l3_len);
            vh->csum_offset = udp ? offsetof(struct rte_udp_hdr, dgram_cksum)
                                  : offsetof(struct rte_tcp_hdr, cksum);
        }
    }
}

/* m's segments as iovecs from iov[ni] on; returns the next free index (the
 * caller made sure m->nb_segs fit) */
static inline unsigned
afp_iov_chain(struct iovec *iov, unsigned ni, const struct rte_mbuf *m)
{
    for (const struct rte_mbuf *s = m; s != NULL; s = s->next) {
        iov[ni].iov_base = rte_pktmbuf_mtod(s, void *);
        iov[ni++].iov_len = s->data_len;
    }
    return ni;
}

/* what a sendmsg() of want bytes returned, as 0 or -1 with errno set:
 * a short write (no errno of its own) is EMSGSIZE */
static inline int
afp_sent(ssize_t got, size_t want)
{
    if (likely(got == (ssize_t)want))
        return 0;
    if (got >= 0)
        errno = EMSGSIZE;
    return -1;
}

/* Send m, longer than a ring frame (a GSO super-frame, or a frame of an
 * interface whose MTU grew since its ring was made), with one sendmsg()
 * of its segments behind a virtio-net header. Returns 0 or -1 (refused). */
static __rte_noinline int
afp_tx_big(struct dp_afp *a, struct rte_mbuf *m)
{
    struct virtio_net_hdr vh;
    struct iovec iov[AFP_IOV_MAX];
    struct msghdr mh;
    unsigned ni = 0;

    if (unlikely(m->nb_segs >= AFP_IOV_MAX)) {
        errno = E2BIG; /* the caller reads errno: not a stale ENOBUFS */
        return -1;
    }
    afp_tx_vnet(&vh, m, m->pkt_len);
    iov[ni].iov_base = &vh;
    iov[ni++].iov_len = AFP_VNET_LEN;
    ni = afp_iov_chain(iov, ni, m);
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = iov;
    mh.msg_iovlen = ni;
    return afp_sent(sendmsg(a->tx.gfd, &mh, MSG_DONTWAIT), AFP_VNET_LEN + m->pkt_len);
}

/* Send m, a VXLAN-encapsulated super-frame (dp_gso.h: outer_l2_len,
 * outer_l3_len, l2_len = outer UDP + VXLAN + inner Ethernet), whole into
 * the tunnel tap: one write() and one skb marked UDP-tunnel GSO, which the
 * tap's redirect hands to the uplink's egress. The uplink's device cuts it
 * (a NIC's tunnel segmentation offload), or the kernel's GSO before a
 * device without it; a veth passes it whole, as it does the kernel VTEP's.
 * The inner checksum field holds the pseudo-header sum (partial), the outer
 * UDP checksum is 0. Returns 0 or -1 (refused). */
static __rte_noinline int
afp_tx_tnl(struct dp_afp *a, struct rte_mbuf *m)
{
    struct afp_tnl_hdr th;
    struct iovec iov[AFP_IOV_MAX];
    uint32_t outer = (uint32_t)m->outer_l2_len + m->outer_l3_len;
    uint32_t inner_nh = outer + m->l2_len, inner_th = inner_nh + m->l3_len;
    int udp = (m->ol_flags & RTE_MBUF_F_TX_UDP_SEG) != 0;
    unsigned ni = 0;
    int tfd = __atomic_load_n(&a->tx.tfd, __ATOMIC_RELAXED); /* read once */

    if (unlikely(tfd < 0 || m->nb_segs >= AFP_IOV_MAX))
        return -1;
    memset(&th, 0, sizeof(th));
    th.h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    th.h.gso_type = (uint8_t)((udp                                  ? VIRTIO_NET_HDR_GSO_UDP_L4
                               : (m->ol_flags & RTE_MBUF_F_TX_IPV6) ? VIRTIO_NET_HDR_GSO_TCPV6
                                                                    : VIRTIO_NET_HDR_GSO_TCPV4) |
                              VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4);
    th.h.hdr_len = (uint16_t)(inner_th + m->l4_len);
    th.h.gso_size = m->tso_segsz;
    th.h.csum_start = (uint16_t)inner_th;
    th.h.csum_offset =
        udp ? offsetof(struct rte_udp_hdr, dgram_cksum) : offsetof(struct rte_tcp_hdr, cksum);
    th.outer_th_offset = (uint16_t)outer;
    th.inner_nh_offset = (uint16_t)inner_nh;
    iov[ni].iov_base = &th;
    iov[ni++].iov_len = AFP_TNL_HDR_LEN;
    ni = afp_iov_chain(iov, ni, m);
    if (writev(tfd, iov, (int)ni) != (ssize_t)(AFP_TNL_HDR_LEN + m->pkt_len)) {
        /* the tap is gone (deleted by hand: EBADFD) or down (EIO): the
         * pipeline cuts super-frames from now on (dp_afp_tunnel_ok) */
        if (errno == EBADFD || errno == EIO || errno == ENODEV)
            __atomic_store_n(&a->tx.tnl_gone, 1, __ATOMIC_RELAXED);
        return -1;
    }
    a->tx.tunneled++;
    return 0;
}

/*
 * UDP GSO batches (ports with udp_gso on: the uplink). A run of datagrams of
 * one flow (the same Ethernet, IPv4 and UDP headers but length, id and
 * checksums), all of one size but the last, which may be shorter - the VXLAN
 * frames one super-frame was cut into, or a burst of a pod's small UDP
 * datagrams, encapsulated - leaves as one UDP GSO frame (virtio-net
 * gso_type UDP_L4, gso_size the UDP payload of one datagram): one
 * sendmsg() and one skb for the run, which the kernel cuts back into the
 * same datagrams where it must (software GSO before a device without UDP
 * segmentation, the NIC's own UDP segmentation offload, or the receiving
 * stack's UDP socket), each with its own IPv4 length, id and header checksum
 * and a full UDP checksum. A frame on a wire is never larger than it was.
 */

/* The UDP payload length of m if it may start or join a batch: IPv4 without
 * options, not a fragment, UDP with lengths that match the frame, the
 * headers in the first segment, no segmentation offload of its own. 0 if
 * not. */
static inline uint32_t
afp_ugso_len(const struct rte_mbuf *m)
{
    const uint8_t *p = rte_pktmbuf_mtod(m, const uint8_t *);
    uint32_t len = m->pkt_len;

    if (len <= AFP_UGSO_HDR || m->data_len < AFP_UGSO_HDR || dp_gso_frame(m) ||
        *(const unaligned_uint16_t *)(p + 12) != RTE_BE16(RTE_ETHER_TYPE_IPV4) || p[14] != 0x45 ||
        p[23] != IPPROTO_UDP || (p[20] & 0x3f) != 0 || p[21] != 0 ||
        rte_be_to_cpu_16(*(const unaligned_uint16_t *)(p + 16)) != len - RTE_ETHER_HDR_LEN ||
        rte_be_to_cpu_16(*(const unaligned_uint16_t *)(p + 38)) != len - RTE_ETHER_HDR_LEN - 20)
        return 0;
    return len - AFP_UGSO_HDR;
}

/* Does m belong to the flow of f (its first frame)? Ethernet header, IPv4
 * tos, flags, ttl, protocol and addresses, UDP ports. */
static inline int
afp_ugso_same(const struct rte_mbuf *f, const struct rte_mbuf *m)
{
    const uint8_t *a = rte_pktmbuf_mtod(f, const uint8_t *),
                  *b = rte_pktmbuf_mtod(m, const uint8_t *);

    return memcmp(a, b, 16) == 0 && a[20] == b[20] && memcmp(a + 22, b + 22, 2) == 0 &&
           memcmp(a + 26, b + 26, 12) == 0;
}

/* How many frames from pkts[0] (a candidate, payload len0) form one batch:
 * one flow, the same payload length but the last, the whole within an IPv4
 * datagram and AFP_UGSO_SEGS datagrams. */
static inline uint16_t
afp_ugso_run(struct rte_mbuf **pkts, uint16_t n, uint32_t len0)
{
    uint32_t total = len0;
    uint16_t r = 1;

    while (r < n && r < AFP_UGSO_SEGS) {
        const struct rte_mbuf *m = pkts[r];
        uint32_t l = afp_ugso_len(m);

        if (l == 0 || l > len0 || total + l + 28 > UINT16_MAX || !afp_ugso_same(pkts[0], m))
            break;
        total += l;
        r++;
        if (l < len0)
            break; /* a shorter one ends the run */
    }
    return r;
}

/* Send pkts[0..r) as one UDP GSO frame (afp_ugso_run said they may).
 * Returns 0 or -1 (refused, or too many segments for one call). */
static __rte_noinline int
afp_tx_ugso(struct dp_afp *a, struct rte_mbuf **pkts, uint16_t r)
{
    struct virtio_net_hdr vh;
    struct iovec iov[AFP_UGSO_IOV];
    uint8_t hdr[AFP_UGSO_HDR];
    struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(hdr + RTE_ETHER_HDR_LEN);
    struct rte_udp_hdr *uh = (struct rte_udp_hdr *)(hdr + RTE_ETHER_HDR_LEN + 20);
    uint32_t total = 0, seg = pkts[0]->pkt_len - AFP_UGSO_HDR;
    struct msghdr mh;
    unsigned ni = 2;

    for (uint16_t k = 0; k < r; k++) {
        struct rte_mbuf *m = pkts[k];
        uint32_t off = AFP_UGSO_HDR;

        /* one checksum offload per frame: the batch's is the outer UDP one,
         * so an inner checksum left partial is finished now */
        if (unlikely(dp_csum_partial(m)))
            dp_csum_complete(m);
        for (const struct rte_mbuf *s = m; s != NULL; s = s->next) {
            if (off < s->data_len) {
                if (unlikely(ni == AFP_UGSO_IOV)) {
                    errno = E2BIG; /* not the kernel's EINVAL: batches stay on */
                    return -1;
                }
                iov[ni].iov_base = rte_pktmbuf_mtod_offset(s, uint8_t *, off);
                iov[ni++].iov_len = s->data_len - off;
            }
            off = off > s->data_len ? off - s->data_len : 0;
        }
        total += m->pkt_len - AFP_UGSO_HDR;
    }

    /* the headers of the whole: lengths, the first id, checksums */
    memcpy(hdr, rte_pktmbuf_mtod(pkts[0], const uint8_t *), AFP_UGSO_HDR);
    ip->total_length = rte_cpu_to_be_16((uint16_t)(20 + 8 + total));
    ip->hdr_checksum = 0;
    ip->hdr_checksum = (uint16_t)~rte_raw_cksum(ip, 20);
    uh->dgram_len = rte_cpu_to_be_16((uint16_t)(8 + total));
    uh->dgram_cksum = rte_ipv4_phdr_cksum(ip, 0); /* pseudo-header: the kernel finishes it */

    memset(&vh, 0, sizeof(vh));
    vh.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    vh.gso_type = VIRTIO_NET_HDR_GSO_UDP_L4;
    vh.gso_size = (uint16_t)seg;
    vh.hdr_len = AFP_UGSO_HDR;
    vh.csum_start = RTE_ETHER_HDR_LEN + 20;
    vh.csum_offset = offsetof(struct rte_udp_hdr, dgram_cksum);
    iov[0].iov_base = &vh;
    iov[0].iov_len = AFP_VNET_LEN;
    iov[1].iov_base = hdr;
    iov[1].iov_len = AFP_UGSO_HDR;

    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = iov;
    mh.msg_iovlen = ni;
    return afp_sent(sendmsg(a->tx.gfd, &mh, MSG_DONTWAIT), AFP_VNET_LEN + AFP_UGSO_HDR + total);
}

/* Can the interface carry frames now: up, and with carrier (its operational
 * state up)? Asked of the kernel in the tx socket's namespace, by ifindex
 * (whatever the device is called now). 1 when it cannot be told (the
 * device is gone: the kernel refuses nothing then, it fails the kick). */
static int
afp_tx_can_carry(const struct dp_afp *a)
{
    struct ifreq ifr;

    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_ifindex = a->ifindex;
    if (ioctl(a->tx.fd, SIOCGIFNAME, &ifr) < 0 || ioctl(a->tx.fd, SIOCGIFFLAGS, &ifr) < 0)
        return 1;
    return (ifr.ifr_flags & (IFF_UP | IFF_RUNNING)) == (IFF_UP | IFF_RUNNING);
}

/* The frame the kernel refused at the last kick: it stopped there, so the
 * frames from it up to head are all still SEND_REQUEST, and the one before
 * it is not (sent, being sent, or free) - unless the whole ring waits, and
 * then it is the oldest, at head. NULL if no frame waits. */
static struct tpacket2_hdr *
afp_tx_refused(const struct dp_afp *a)
{
    uint32_t mask = a->tx.frame_nr - 1, j = a->tx.head, k;

    for (k = 0; k < a->tx.frame_nr; k++) {
        const struct tpacket2_hdr *h = afp_tx_frame(a, (j - 1) & mask);
        uint32_t st = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);

        st &= ~(uint32_t)(TP_STATUS_TS_SOFTWARE | TP_STATUS_TS_RAW_HARDWARE);
        if (st != TP_STATUS_SEND_REQUEST)
            break;
        j = (j - 1) & mask;
    }
    return k == 0 ? NULL : afp_tx_frame(a, j);
}

/*
 * Kick the kernel to send what waits in the tx ring. A frame the device
 * refuses ends the kick (ENOBUFS) and the kernel puts it back at the ring's
 * head, to try again at the next kick: right for a device whose queue is
 * full, but an interface without carrier (a veth whose peer is down) drops
 * every frame it is given and counts it in tx_dropped - one frame would be
 * counted at every kick, held the ring, and the frames behind it would
 * leave whenever the carrier came back. So when the interface cannot carry
 * frames the refused one is dropped for good: its length made invalid,
 * PACKET_LOSS makes the kernel skip it at the next kick without trying it.
 * The frames behind it are dropped with it, not tried (each try would cost
 * a kick and the look at the interface), counted as the interface counts
 * the one it refused (kport_kernel_tx), and the kick is repeated for the
 * kernel to skip them; the port then drops what comes for a while without
 * asking (AFP_NOCARRIER_HZ). Each frame is counted once.
 */
/*
 * The interface is set down (ENETDOWN): the kernel sends nothing and leaves
 * the ring alone, and the frames waiting in it would all leave, late, in
 * one burst when it came back up - stale media seconds old ahead of fresh.
 * Each waiting frame is dropped instead, as afp_tx_kick drops a refused
 * one: its length made invalid, so that the kernel skips it once the
 * interface is up. Newest first; the frames before the first one already
 * dropped were dropped by an earlier kick. Counted in tx.down.
 */
static void
afp_tx_drop_waiting(struct dp_afp *a, uint64_t *count)
{
    uint32_t mask = a->tx.frame_nr - 1, j = a->tx.head;

    for (uint32_t k = 0; k < a->tx.frame_nr; k++) {
        j = (j - 1) & mask;
        struct tpacket2_hdr *h = afp_tx_frame(a, j);
        uint32_t st = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);

        st &= ~(uint32_t)(TP_STATUS_TS_SOFTWARE | TP_STATUS_TS_RAW_HARDWARE);
        if (st != TP_STATUS_SEND_REQUEST || h->tp_len == 0)
            return;
        h->tp_len = 0; /* shorter than its virtio-net header: skipped */
        (*count)++;
    }
}

/* how long (1/N s) a port whose interface was found without carrier drops
 * its frames before asking the kernel again */
#define AFP_NOCARRIER_HZ 500

static void
afp_tx_kick(struct dp_afp *a)
{
    for (uint32_t k = 0; k <= a->tx.frame_nr; k++) {
        struct tpacket2_hdr *h;

        if (sendto(a->tx.fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0)
            return;
        if (errno == ENETDOWN) {
            afp_tx_drop_waiting(a, &a->tx.down);
            return;
        }
        if (errno != ENOBUFS)
            return;
        if (afp_tx_can_carry(a))
            return; /* pushed back: tried again at the next kick */
        h = afp_tx_refused(a);
        if (h == NULL)
            return;
        h->tp_len = 0; /* shorter than its virtio-net header: skipped */
        /* the frames behind it would each be refused the same way, at a
         * kick and a look at the interface apiece: dropped here, and the
         * interface left alone for a while (dp_afp_tx_burst) */
        afp_tx_drop_waiting(a, &a->tx.nocarrier);
        a->tx.nocarrier_until = rte_get_tsc_cycles() + rte_get_tsc_hz() / AFP_NOCARRIER_HZ;
    }
}

void
dp_afp_set_udp_gso(struct dp_afp *a, int on)
{
    __atomic_store_n(&a->tx.udp_gso, on != 0, __ATOMIC_RELAXED);
}

uint16_t
dp_afp_tx_burst(struct dp_afp *a, struct rte_mbuf **pkts, uint16_t n, uint16_t *lost,
                uint64_t *lost_bytes, uint64_t *lost_mask)
{
    uint32_t head = a->tx.head, mask = a->tx.frame_nr - 1;
    uint32_t max_frame = __atomic_load_n(&a->tx.max_frame, __ATOMIC_RELAXED);
    uint16_t i, queued = 0;
    int ugso = __atomic_load_n(&a->tx.udp_gso, __ATOMIC_RELAXED);

    *lost = 0;
    *lost_bytes = 0;
    *lost_mask = 0;

    if (unlikely(n == 0))
        return 0;
    /* an interface without carrier (a veth whose pod's end is down) drops
     * every frame it is given, and each would cost a kick and the look at
     * the interface that tells why it failed: for 1/AFP_NOCARRIER_HZ s
     * after a kick found it so, bursts are dropped here as the interface
     * would drop them - sent as far as the port's counters go, and counted
     * with the interface's own drops (kport_kernel_tx) - without a system
     * call; the first burst after that asks the kernel again */
    if (unlikely(a->tx.nocarrier_until != 0)) {
        if (rte_get_tsc_cycles() < a->tx.nocarrier_until) {
            a->tx.nocarrier += n;
            rte_pktmbuf_free_bulk(pkts, n);
            return n;
        }
        a->tx.nocarrier_until = 0;
    }
    /* a ring full of frames a kick left queued (a device that was set down,
     * whose frames the kernel is to skip, or a full device queue): kicked
     * first, so that this burst's frames find room */
    if (unlikely(!afp_tx_frame_free(afp_tx_frame(a, head))))
        afp_tx_kick(a);

    /* take mbufs from the front while they fit: stop at the first one
     * that cannot be queued (ring full, too big, runt, bad chain) */
    for (i = 0; i < n; i++) {
        struct rte_mbuf *m = pkts[i];
        struct tpacket2_hdr *h = afp_tx_frame(a, head);
        struct virtio_net_hdr *vh = (struct virtio_net_hdr *)((uint8_t *)h + AFP_TX_DATA_OFF);
        uint8_t *data = (uint8_t *)vh + AFP_VNET_LEN;
        uint32_t len = m->pkt_len;
        const void *p;

        if (unlikely(len > max_frame) && !dp_gso_frame(m)) {
            /* longer than the interface's MTU lets through: the kernel
             * would refuse it, and a tx ring keeps a frame the device
             * refused at its head, sending it again at every kick - every
             * frame after it would wait for good. Dropped and counted. */
            a->tx.oversize++;
            (*lost)++;
            *lost_bytes += len;
            *lost_mask |= 1ull << (i & 63);
            continue;
        }
        if (unlikely(len > a->tx.data_max || len < RTE_ETHER_HDR_LEN ||
                     (m->ol_flags & RTE_MBUF_F_TX_TUNNEL_MASK))) {
            if (unlikely(len < RTE_ETHER_HDR_LEN)) {
                /* a runt the kernel would refuse: dropped, counted */
                a->tx.error++;
                (*lost)++;
                *lost_bytes += len;
                *lost_mask |= 1ull << (i & 63);
                continue;
            }
            /* a super-frame, or a frame the interface takes but no ring
             * frame holds (its MTU raised since the ring was made): sent
             * past the ring, after the frames queued before it */
            if (queued != 0)
                afp_tx_kick(a);
            queued = 0;
            int tnl = (m->ol_flags & RTE_MBUF_F_TX_TUNNEL_MASK) != 0;
            int r = tnl ? afp_tx_tnl(a, m) : afp_tx_big(a, m);
            if (unlikely(r < 0)) {
                /* the interface dropped it (a veth whose peer is down or
                 * whose backlog is full says ENOBUFS): counted in its
                 * tx_dropped, kport_kernel_tx, not a second time here */
                if (tnl || errno != ENOBUFS)
                    a->tx.error++;
                (*lost)++;
                *lost_bytes += len;
                *lost_mask |= 1ull << (i & 63);
            }
            continue;
        }
        if (ugso && i + 1 < n) {
            uint32_t l0 = afp_ugso_len(m);
            uint16_t r = l0 != 0 ? afp_ugso_run(pkts + i, n - i, l0) : 1;

            if (r > 1) {
                /* a run of one UDP flow: after the frames queued before it */
                if (queued != 0)
                    afp_tx_kick(a);
                queued = 0;
                if (likely(afp_tx_ugso(a, pkts + i, r) == 0)) {
                    a->tx.batches++;
                    a->tx.batched += r;
                    i += r - 1;
                    continue;
                }
                /* refused (the socket's buffer full, say): the rest of
                 * the burst goes through the ring, frame by frame; a
                 * kernel that does not know the gso_type (a packet socket
                 * takes UDP_L4 from Linux 6.2) says EINVAL: batches off
                 * for good, not one refused sendmsg every burst */
                if (errno == EINVAL)
                    __atomic_store_n(&a->tx.udp_gso, 0, __ATOMIC_RELAXED);
                ugso = 0;
            }
        }
        if (!afp_tx_frame_free(h))
            break; /* ring full */

        /* copy: contiguous data directly, segment chains gathered */
        p = rte_pktmbuf_read(m, 0, len, data);
        if (unlikely(p == NULL)) {
            /* a chain shorter than its pkt_len: dropped, counted */
            a->tx.error++;
            (*lost)++;
            *lost_bytes += len;
            *lost_mask |= 1ull << (i & 63);
            continue;
        }
        if (p != data)
            rte_memcpy(data, p, len);
        afp_tx_vnet(vh, m, len);
        /* the whole frame as its "header": the kernel copies it into the
         * skb's linear part instead of lending the ring's page (no page
         * references, no pull of headers from a page fragment by the
         * receiving stack); a jumbo frame keeps the page, which the
         * kernel copies when the frame crosses to a veth's peer (the skb
         * carries the ring's zero-copy mark): a frame a slow reader still
         * holds is not overwritten when its ring frame is used again
         * (tests/test_kernel_pods.py) */
        if (likely(len <= AFP_SLOT && vh->gso_type == VIRTIO_NET_HDR_GSO_NONE))
            vh->hdr_len = (uint16_t)len;

        /* hand the frame to the kernel */
        h->tp_len = len + AFP_VNET_LEN;
        h->tp_snaplen = len + AFP_VNET_LEN;
        __atomic_store_n(&h->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
        head = (head + 1) & mask;
        queued++;
    }
    a->tx.head = head;

    /* one kick per burst; also when the ring was full, to push frames a
     * previous kick left queued. Errors (EAGAIN, ENETDOWN, a full device
     * queue's ENOBUFS) leave frames queued for the next kick; a frame the
     * interface dropped for want of carrier is not tried again (afp_tx_kick) */
    afp_tx_kick(a);

    /* copied or sent: free the taken mbufs */
    if (i != 0)
        rte_pktmbuf_free_bulk(pkts, i);
    return i;
}
