// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * express.bpf.c - the express lane: unicast IP between two pods of one
 * network on one node, carried by the kernel from one pod's veth straight
 * into the other pod's namespace (bpf_redirect_peer), inside the sender's
 * own system call, instead of through a packet ring, the worker and a
 * sendto() per hop.
 *
 * Two programs share one decision (ex_take):
 *  - "tc" on the ingress of a pod's host-side veth: a frame it takes is
 *    counted and redirected into the destination pod's namespace; anything
 *    else is the core's, whose packet socket took it before tc ran
 *    (ex_core_has: dropped after that on a pod's veth, so that the node's
 *    own stack never takes a pod's frame unguarded);
 *  - "socket" on that packet socket (SO_ATTACH_BPF): it refuses the frames
 *    the tc program takes (the kernel hands a frame to packet sockets
 *    before tc ingress runs), so the core never sees them twice.
 * The socket program decides first and leaves its decision in the frame's
 * control block (ex_said); the tc program keeps to it. A map the control
 * thread changes between the two runs (the lane switched off for a capture,
 * a pod removed, a MAC moved) then cannot make them disagree: a frame the
 * socket refused is carried by tc or, if it no longer can (its destination
 * gone), dropped and counted (ex_lost: express_changed); one the socket took
 * is the core's alone. Where no decision is found (a socket without the
 * program, or another packet socket's BPF filter that uses the block - the
 * kernel clears it for such a filter - and ran after it), tc decides alone,
 * as the socket program would.
 *
 * A frame is taken only if all of these hold, else the core forwards it as
 * before, with its checks and counters:
 *  - the lane is on (ex_ctl[0]; the service turns it off while a capture
 *    runs, so that a capture sees every frame);
 *  - it comes from a pod port in ex_src, from the pod's own MAC, no longer
 *    than the network's MTU allows (a super-frame excepted), untagged
 *    IPv4 (0x0800) or IPv6 (0x86dd: TCP, UDP and echo only, ex_ip6_ok),
 *    and - where the network has anti-spoofing - from one of the pod's
 *    addresses and not a DHCP server's message (the core's guard rules:
 *    what they might refuse goes to the core);
 *  - its destination MAC is a pod port of the same network in ex_dst, not
 *    the sender's own.
 * or its destination MAC is behind a remote VTEP (ex_rdst, the core's FDB
 * mirrored by dp_express.c) whose next hop is resolved, the uplink a kernel
 * interface without a shaper: the frame is encapsulated here, as the core
 * would (its tunnel's header template, the network's VNI, the outer DSCP
 * by the plane's marking or the inner one, the UDP source port from the
 * flow hash), and sent out of the uplink (bpf_redirect) - a super-frame
 * stays one, marked for UDP-tunnel segmentation after the tunnel, and is
 * taken only if each segment it is cut into fits the network's MTU
 * (ex_segs_fit; to a pod of this node it goes whole, as through the core).
 * ARP, neighbour discovery, VLAN, broadcast and multicast and unknown
 * destinations always take the core's path.
 *
 * The same two programs on the uplink (a kernel interface) take VXLAN from
 * the underlay the other way (ex_dtake): a frame to this VTEP's MAC,
 * address and UDP port, outer IPv4 without options or fragments and with a
 * valid header checksum, the VXLAN header exactly I-flag and VNI, the VNI a
 * network's (ex_vni), carrying unicast IPv4 (or IPv6 where the kernel can
 * set the decapsulated frame's protocol: Linux 6.3, dec_v6) not longer than the network's
 * MTU allows to a pod port of that network (ex_dst), from an inner source
 * MAC the core's FDB has behind the very VTEP that sent it (ex_rdst, the
 * tunnel's address = the outer source); TCP data only to one of the pod's
 * own addresses, IPv6 only TCP, UDP or echoes (ex_dinner_ok), an outer UDP
 * checksum (not summed here) only over TCP or where the kernel holds it
 * good (ex_outer_csum_good): decapsulated
 * and redirected into the pod's namespace,
 * counted as the core counts it. A source the core
 * learned is confirmed to the core's ageing through ex_rdst's `seen`
 * (dp_express_seen). A TCP super-frame (a kernel VTEP's TSO, or GRO) is
 * taken to a pod's own address, whole, if its segments fit the network's
 * MTU; other super-frames, unknown sources and VTEPs, a MAC
 * that moved, ARP, neighbour discovery, floods and anything odd take the
 * core's path and its checks.
 */
#include <linux/bpf.h>
#include <linux/errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#ifndef EX_PLAIN
#include <bpf/bpf_core_read.h>
#endif

#include "../dp_gso_limits.h" /* DP_GSO_MAX_SEGS, the core's bound */

#define EX_MAX_PORTS 256
#define EX_MAX_IP4 8
#define EX_MAX_IP6 8
#define EX_MAX_TUNNELS 1024
#define EX_MAX_NETS 256
#define EX_MAX_REMOTE 65536     /* remote MACs mirrored; those past it take the core's path */
#define EX_HDR 50               /* outer Ethernet, IPv4, UDP, VXLAN */
#define EX_SEEN_NS 100000000ULL /* a remote source's `seen` is written at most this often */
/* bpf_skb_adjust_room: the L3 header left after a shrink is IPv6 (sets
 * skb->protocol; Linux 6.3, BPF_F_ADJ_ROOM_DECAP_L3_IPV6, which older
 * headers lack) */
#define EX_ADJ_DECAP_L3_IPV6 (1ULL << 8)

/* a pod port: the source side (key: its host-side veth's ifindex) */
struct ex_src {
    __u32 net;     /* the core's network index */
    __u32 port;    /* the core's port index: counters */
    __u8 mac[6];   /* the pod's MAC */
    __u8 spoof_on; /* anti-spoofing: IPv4 source must be in ip4 */
    __u8 n4;
    __u32 ip4[EX_MAX_IP4]; /* network order */
    __u8 n6;
    __u8 pad;
    __u16 max_len; /* the network's MTU + 14: longer (and not GSO) is the core's */
    __u32 pad2;
    __u64 ip6[EX_MAX_IP6][2]; /* wire order, the link-local made from mac among them */
};

struct ex_dkey {
    __u32 net;
    __u8 mac[6];
    __u16 pad;
};

struct ex_dst {
    __u32 ifindex; /* host-side veth: its peer is the pod's interface */
    __u32 port;
};

struct ex_cnt {
    __u64 rx_pkts, rx_bytes;   /* taken from this port */
    __u64 tx_pkts, tx_bytes;   /* delivered to this port (the uplink: sent out of it) */
    __u64 enc_pkts, enc_bytes; /* of those taken, encapsulated to a remote VTEP */
    __u64 errors;              /* taken, but the kernel refused to encapsulate (the uplink:
                                  to decapsulate): dropped */
    __u64 dec_pkts;            /* delivered to this port, decapsulated from the underlay */
    __u64 to_core;             /* taken, then handed back to the core (EX_MARK_CORE) */
};

/* a remote MAC: its tunnel, and when the lane last carried a frame from it
 * (bpf_ktime_get_ns; the core's ageing asks, dp_express_seen) */
struct ex_rval {
    __u32 ti;
    __u32 pad;
    __u64 seen;
};

/* a remote VTEP's header template as the core has it (struct dp_tunnel) */
struct ex_tslot {
    __u8 hdr[EX_HDR];
    __u8 ok; /* next hop resolved */
    __u8 pad;
    __u32 csum_base; /* as dp_tunnel's */
};

/* A remote VTEP: its template in two slots, slot[gen & 1] the current one.
 * The control thread writes a new template into the other slot, then bumps
 * gen, each a whole-value update that rewrites the rest with the bytes it
 * had - an array map's value is copied in place, so a template rewritten
 * where a program reads it could be read half old, half new (a next hop's
 * new MAC). A reader copies the current slot and checks gen again
 * (ex_tun_get): a slot can only be rewritten after gen moved past it. */
struct ex_tun {
    __u32 gen;
    __u32 pad;
    struct ex_tslot slot[2];
};

/* a network: its VNI as the VXLAN header carries it, and its plane */
struct ex_net {
    __u32 vni_be;
    __u32 plane;
    __u32 ok;
};

/* the uplink and the planes' marking (dp_qos.h) */
struct ex_up {
    __u32 ifindex;
    __u32 port;
    __u32 on; /* a kernel interface without a shaper */
    __s8 dscp_plane[64];
    __s16 outer_tos[8];
    /* the underlay side: this VTEP, and whether the lane takes from it */
    __u32 dec_on;  /* a kernel interface, the VTEP set */
    __u32 vtep_ip; /* network order */
    __u8 vtep_mac[6];
    __u16 udp_port; /* network order */
    __u32 dec_v6;   /* the kernel can decapsulate to IPv6 (EX_ADJ_DECAP_L3_IPV6) */
};

/* The hash maps are not preallocated: an entry the control thread replaces
 * or removes is freed after an RCU grace period, so a program still holding
 * it never reads it as another key's (a preallocated map reuses it at once) */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, EX_MAX_PORTS);
    __type(key, __u32);
    __type(value, struct ex_src);
} ex_src SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, EX_MAX_PORTS);
    __type(key, struct ex_dkey);
    __type(value, struct ex_dst);
} ex_dst SEC(".maps");

/* [0]: the lane is on (off while a capture runs); [1]: the programs are
 * the host ends' guard only (express_lane: false): they carry nothing */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u32);
} ex_ctl SEC(".maps");

/* the pods' host ends (ifindex): every frame on them is the core's or the
 * lane's, never the node's stack's - set before the tc program is
 * attached and kept after a port leaves, so that no frame of a pod slips
 * past while its entries come and go (a stale one is harmless: the
 * program runs on host ends and the uplink only, and the uplink's hook
 * clears its own) */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, 4 * EX_MAX_PORTS);
    __type(key, __u32);
    __type(value, __u32);
} ex_hend SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, EX_MAX_PORTS);
    __type(key, __u32);
    __type(value, struct ex_cnt);
} ex_cnt SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, EX_MAX_REMOTE);
    __type(key, struct ex_dkey);
    __type(value, struct ex_rval);
} ex_rdst SEC(".maps");

/* VNI (the VXLAN header's second word as it is on the wire) -> network */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, EX_MAX_NETS);
    __type(key, __u32);
    __type(value, __u32);
} ex_vni SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, EX_MAX_TUNNELS);
    __type(key, __u32);
    __type(value, struct ex_tun);
} ex_tun SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, EX_MAX_NETS);
    __type(key, __u32);
    __type(value, struct ex_net);
} ex_net SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct ex_up);
} ex_up SEC(".maps");

/* frames the socket program refused that the tc program then could not
 * carry (the maps changed between the two): dropped, counted here */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} ex_lost SEC(".maps");

/* the socket program's decision in skb->cb[0..1] (the kernel clears the
 * block before it runs a packet socket's filter that uses it, as this one
 * does; tc ingress runs next on the same skb): cb[0] says a decision is
 * there, cb[1] which */
#define EX_SAID_MAGIC 0x65787072u /* "expr" */
#define EX_SAID_LANE 0x6c616e65u  /* "lane": refused, tc carries it */
#define EX_SAID_CORE 0x636f7265u  /* "core": the core's path */
enum { SAID_NONE, SAID_LANE, SAID_CORE };

/*
 * A frame from a pod that the kernel will not encapsulate (bpf_skb_adjust_room
 * says -EALREADY: the skb is still marked as carrying a tunnel) is handed back
 * to the core. That is a frame the pod forwards (a router, NAT or load
 * balancer pod) which came in through the lane's decapsulation from a sender
 * that had set the mark - a kernel VTEP whose inner checksum or TSO was left
 * to offload, or a node's tunnel tap: tc cannot clear it on these kernels
 * (no BPF_F_ADJ_ROOM_DECAP_L4_UDP). Its packet socket has already passed on
 * it, so tc puts it back at the interface's ingress marked with EX_MARK_CORE;
 * on that second pass the socket program takes it for the core and tc clears
 * the mark again. A pod's frame reaches its host end with mark 0 (a veth
 * clears it between namespaces), so the mark is ours alone there.
 */
#define EX_MARK_CORE 0x65786362u /* "excb" */

/* where a frame the lane takes goes */
struct ex_way {
    struct ex_src *src;
    struct ex_dst *dst;       /* a pod port of this node, or */
    int remote;               /* a remote VTEP, */
    struct ex_tslot tun;      /* by its template (copied: ex_tun_get), */
    const struct ex_net *net; /* for this network, */
    const struct ex_up *up;   /* out of this uplink */
};

/* Tunnel ti's current template into *out: 1 if it is there and resolved,
 * else 0 (the core's path carries the frame). Read as struct ex_tun says:
 * gen, the slot, gen again, in that order (the compiler keeps it; the CPU
 * does on x86, whose loads are not reordered with each other), tried again
 * while the control thread moves on; it changes a tunnel at most a few
 * times a second, so a reader that keeps losing is not waited for. */
static __always_inline int
ex_tun_get(__u32 ti, struct ex_tslot *out)
{
    const struct ex_tun *t = bpf_map_lookup_elem(&ex_tun, &ti);

    if (!t)
        return 0;
#pragma unroll
    for (int i = 0; i < 3; i++) {
        __u32 g = *(volatile const __u32 *)&t->gen;

        asm volatile("" ::: "memory");
        __builtin_memcpy(out, &t->slot[g & 1], sizeof(*out));
        asm volatile("" ::: "memory");
        if (*(volatile const __u32 *)&t->gen == g)
            return out->ok;
    }
    return 0;
}

static __always_inline int
mac_eq(const __u8 *a, const __u8 *b)
{
    return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
           a[5] == b[5];
}

/* Whether a (network order) is one of pod port s's IPv4 addresses */
static __always_inline int
ex_has_ip4(const struct ex_src *s, __u32 a)
{
#pragma unroll
    for (int i = 0; i < EX_MAX_IP4; i++)
        if (i < s->n4 && s->ip4[i] == a)
            return 1;
    return 0;
}

/* Whether a (wire order) is one of pod port s's IPv6 addresses */
static __always_inline int
ex_has_ip6(const struct ex_src *s, const __u64 a[2])
{
#pragma unroll
    for (int i = 0; i < EX_MAX_IP6; i++)
        if (i < s->n6 && s->ip6[i][0] == a[0] && s->ip6[i][1] == a[1])
            return 1;
    return 0;
}

/* An IPv6 frame the lane may take: TCP, UDP but a DHCPv6 server's (or
 * relay's) message, or an ICMPv6 echo request or reply, with no extension
 * header, its payload length within the frame and past the L4 header, from
 * one of the pod's addresses where the network has anti-spoofing.
 * Neighbour discovery, router messages and everything else
 * go to the core, whose guard knows the rules for them. */
static __always_inline int
ex_ip6_ok(struct __sk_buff *skb, const struct ex_src *src)
{
    struct ipv6hdr ip6;
    __u64 a[2];
    __u16 l4;

    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
        return 0;
    /* a payload length past the frame, or short of its L4 header: the
     * core's guard drops it (truncated) where it has one */
    __u32 plen = bpf_ntohs(ip6.payload_len);
    if (ETH_HLEN + sizeof(ip6) + plen > skb->len || plen < (ip6.nexthdr == IPPROTO_TCP   ? 20
                                                            : ip6.nexthdr == IPPROTO_UDP ? 8
                                                                                         : 4))
        return 0;
    if (ip6.nexthdr == IPPROTO_UDP || ip6.nexthdr == IPPROTO_ICMPV6) {
        /* UDP: its source port; ICMPv6: its type and code */
        if (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(ip6), &l4, sizeof(l4)) < 0)
            return 0;
        __u16 dport = 0;
        if (ip6.nexthdr == IPPROTO_UDP &&
            (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(ip6) + 2, &dport, sizeof(dport)) < 0 ||
             l4 == bpf_htons(547) || dport == bpf_htons(546)))
            return 0;
        if (ip6.nexthdr == IPPROTO_ICMPV6 && ((__u8 *)&l4)[0] != 128 && ((__u8 *)&l4)[0] != 129)
            return 0;
    } else if (ip6.nexthdr != IPPROTO_TCP) {
        return 0;
    }
    if (!src->spoof_on)
        return 1;
    __builtin_memcpy(a, &ip6.saddr, sizeof(a));
    return ex_has_ip6(src, a);
}

/* Whether the segments super-frame skb (IP protocol l4, its header at hl:
 * the Ethernet and IP headers' length, IPv4 options included; IPv6 without
 * an extension header, as ex_ip6_ok lets through) is cut into after the
 * tunnel are each no longer than max_len: the Ethernet, IP and TCP (its
 * data offset) or UDP headers every segment repeats, plus gso_size bytes
 * of payload - as the core measures a super-frame it encapsulates (the
 * encap_whole and gso_cut paths of dp_encap.h). 0 also for another L4
 * protocol or headers that cannot be read: the core's path looks at it. */
static __always_inline int
ex_segs_fit(struct __sk_buff *skb, __u32 hl, __u8 l4, __u32 max_len)
{
    __u8 b;

    if (l4 == IPPROTO_TCP) {
        if (bpf_skb_load_bytes(skb, hl + 12, &b, 1) < 0 || (b >> 4) < 5)
            return 0;
        hl += (__u32)(b >> 4) * 4;
    } else if (l4 == IPPROTO_UDP) {
        hl += sizeof(struct udphdr);
    } else {
        return 0;
    }
    return hl + skb->gso_size <= max_len;
}

#ifndef EX_PLAIN
/* Set by the loader (dp_express.c) before the load: the kernel has
 * bpf_cast_to_kern_ctx (Linux 6.2), through which ex_csum_sane reads the
 * frame's checksum offload state. Without it the verifier drops the call
 * as dead code, and the lane encapsulates nothing to remote VTEPs. */
const volatile __u32 ex_kctx = 0;

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym __weak;

/* the kernel's sk_buff, the fields ex_csum_sane reads (CO-RE: placed as
 * the running kernel has them) */
struct sk_buff___ex {
    union {
        __u32 csum;
        struct {
            __u16 csum_start;
            __u16 csum_offset;
        };
    };
    __u16 mac_header;
    __u8 ip_summed : 2;
} __attribute__((preserve_access_index));

#define EX_CHECKSUM_PARTIAL 3

/* Whether a pod's frame leaves its checksum to be completed (the pod's
 * offload: CHECKSUM_PARTIAL) only where it belongs, in the TCP header at
 * l4 (from the frame's start): its TCP checksum field. The device that
 * sends the encapsulated frame completes it after the lane checked the
 * frame's addresses, so offsets a pod chose elsewhere (its packet
 * socket's virtio-net header) would rewrite bytes the lane let by - the
 * inner source address. Not checkable on this kernel (ex_kctx 0): no. */
static __always_inline int
ex_csum_sane(struct __sk_buff *skb, __u32 l4)
{
    struct sk_buff___ex *k;

    if (!ex_kctx)
        return 0;
    k = bpf_cast_to_kern_ctx(skb);
    if (BPF_CORE_READ_BITFIELD(k, ip_summed) != EX_CHECKSUM_PARTIAL)
        return 1;
    return k->csum_start == (__u32)k->mac_header + l4 && k->csum_offset == 16;
}

#define EX_CHECKSUM_UNNECESSARY 1

/* Whether the kernel holds a frame's outer UDP checksum good without
 * summing it: a device verified it (CHECKSUM_UNNECESSARY: the outermost
 * checksum at least), or its sender is a VTEP on this host that left it to
 * offload (CHECKSUM_PARTIAL: the field holds the pseudo-header sum, as the
 * core's uplink driver takes it too). Not known on this kernel (ex_kctx
 * 0): no. */
static __always_inline int
ex_outer_csum_good(struct __sk_buff *skb)
{
    struct sk_buff___ex *k;
    __u8 s;

    if (!ex_kctx)
        return 0;
    k = bpf_cast_to_kern_ctx(skb);
    s = BPF_CORE_READ_BITFIELD(k, ip_summed);
    return s == EX_CHECKSUM_UNNECESSARY || s == EX_CHECKSUM_PARTIAL;
}
#else
/* the plain build (express.plain.bpf.o, for a kernel without
 * bpf_cast_to_kern_ctx or its BTF): no frame's offsets can be checked, so
 * none is encapsulated to a remote VTEP */
static __always_inline int
ex_csum_sane(struct __sk_buff *skb, __u32 l4)
{
    return 0;
}

/* nor whether the kernel holds an outer checksum good */
static __always_inline int
ex_outer_csum_good(struct __sk_buff *skb)
{
    return 0;
}
#endif

/* A remote destination: the tunnel to its VTEP, if the lane can encapsulate
 * to it (1, and *w filled), else 0. TCP only: a bulk transfer's
 * super-frames are what the core's path copies most (through two packet
 * rings); datagrams - media, signalling, DNS - keep the core's path, where
 * the worker works beside the sender on a CPU of its own and each plane's
 * latency is measured. */
static __always_inline int
ex_remote(struct __sk_buff *skb, __be16 proto, struct ex_dkey *k, struct ex_way *w)
{
    __u32 zero = 0, net = k->net;
    struct ex_rval *r;
    __u32 l4off = ETH_HLEN + sizeof(struct ipv6hdr); /* the TCP header's */
    __u8 l4, b;

    if (bpf_skb_load_bytes(skb, ETH_HLEN + (proto == bpf_htons(ETH_P_IP) ? 9 : 6), &l4, 1) < 0 ||
        l4 != IPPROTO_TCP)
        return 0;
    if (proto == bpf_htons(ETH_P_IP)) {
        /* IPv4: its header length, options included */
        if (bpf_skb_load_bytes(skb, ETH_HLEN, &b, 1) < 0 || (b & 0xf) < 5)
            return 0;
        l4off = ETH_HLEN + (__u32)(b & 0xf) * 4;
    }
    /* its checksum completed where it belongs, or not at all (an IPv6
     * extension header is not taken: ex_ip6_ok) */
    if (!ex_csum_sane(skb, l4off))
        return 0;
    /* a super-frame longer than the network's MTU allows (ex_take let it
     * by) is cut after the tunnel into segments of gso_size payload: each
     * must fit too, else it is the core's, which refuses and counts it
     * (oversize) - a pod whose interface was given a larger MTU than its
     * network's would otherwise send the underlay segments it cannot take */
    if (skb->len > w->src->max_len && !ex_segs_fit(skb, l4off, l4, w->src->max_len))
        return 0;
    r = bpf_map_lookup_elem(&ex_rdst, k);
    if (!r)
        return 0;
    w->up = bpf_map_lookup_elem(&ex_up, &zero);
    if (!w->up || !w->up->on)
        return 0;
    if (!ex_tun_get(r->ti, &w->tun))
        return 0; /* its next hop unresolved: the core holds the frame and asks */
    w->net = bpf_map_lookup_elem(&ex_net, &net);
    if (!w->net || !w->net->ok)
        return 0;
    /* the outer IPv4 length must fit its 16 bits (the core cuts such a
     * super-frame into segments first) */
    if (skb->len + EX_HDR - ETH_HLEN > 0xffff)
        return 0;
    w->remote = 1;
    return 1;
}

/* Where a frame the lane takes goes, into *w (its source, and a local
 * destination or a remote one); 0 if the core's path is to carry it. said:
 * the socket program's decision (ex_said), when tc asks. */
static __always_inline int
ex_take(struct __sk_buff *skb, struct ex_way *w, int said)
{
    struct ethhdr eth;
    struct ex_dkey k = {};
    struct ex_src *src;
    struct ex_dst *dst;
    __u32 zero = 0, *on, saddr;
    __u32 ifindex = skb->ifindex;

    /* the switch turned off after the socket refused the frame: it is still
     * carried (a capture cannot see it any more, and it is not lost) */
    on = bpf_map_lookup_elem(&ex_ctl, &zero);
    if (said != SAID_LANE && (!on || !*on))
        return 0;
    src = bpf_map_lookup_elem(&ex_src, &ifindex);
    if (!src)
        return 0;
    /* a VLAN-tagged frame (its tag taken out of the frame into the skb by
     * the kernel): the core's, which puts the tag back; the lane would
     * lose it, or put it on the outer frame */
    if (skb->vlan_present)
        return 0;
    if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
        return 0;
    if (eth.h_dest[0] & 1)
        return 0;
    if (!mac_eq(eth.h_source, src->mac))
        return 0;
    /* longer than the network's MTU allows and not a super-frame (which the
     * receiving stack takes as the segments it stands for): the core counts
     * it (kport_oversize) and refuses it. A super-frame to a pod of this
     * node is carried whole, as the core carries it (gso_put); one to a
     * remote VTEP only if its segments fit (ex_remote) */
    if (skb->len > src->max_len && !skb->gso_size)
        return 0;
    /* a super-frame that may stand for more segments than the core cuts
     * one into (a gso_size of 1: a frame per byte, wherever it is cut):
     * the core's, which counts it (kport_gso) and refuses it. Counted over
     * the whole frame, headers included: never fewer than the core counts */
    if (skb->gso_size && skb->len > skb->gso_size * DP_GSO_MAX_SEGS)
        return 0;
    if (eth.h_proto == bpf_htons(ETH_P_IPV6)) {
        if (!ex_ip6_ok(skb, src))
            return 0;
    } else if (eth.h_proto != bpf_htons(ETH_P_IP)) {
        return 0;
    } else if (src->spoof_on) {
        struct iphdr ip;

        if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.ihl < 5)
            return 0;
        /* headers or a length past the frame's end (a total length of 0
         * only for a super-frame past 64 KiB, BIG TCP): the core's guard
         * counts it (truncated) */
        if (ETH_HLEN + ip.ihl * 4 > skb->len ||
            (!(ip.tot_len == 0 && skb->gso_size && skb->len - ETH_HLEN > 0xffff) &&
             (bpf_ntohs(ip.tot_len) < ip.ihl * 4 ||
              ETH_HLEN + (__u32)bpf_ntohs(ip.tot_len) > skb->len)))
            return 0;
        saddr = ip.saddr;
        if (!ex_has_ip4(src, saddr))
            return 0;
        /* a DHCP server's or relay's message (UDP from port 67 or to the
         * client port 68, first fragment): the core's guard knows whether
         * the pod may send one */
        if (ip.protocol == IPPROTO_UDP && !(ip.frag_off & bpf_htons(0x1fff))) {
            __u16 ports[2];
            if (bpf_skb_load_bytes(skb, ETH_HLEN + ip.ihl * 4, ports, sizeof(ports)) < 0 ||
                ports[0] == bpf_htons(67) || ports[1] == bpf_htons(68))
                return 0;
        }
    }
    k.net = src->net;
    __builtin_memcpy(k.mac, eth.h_dest, 6);
    w->src = src;
    dst = bpf_map_lookup_elem(&ex_dst, &k);
    if (dst) {
        if (dst->ifindex == ifindex)
            return 0;
        w->dst = dst;
        return 1;
    }
    return ex_remote(skb, eth.h_proto, &k, w);
}

/* the headers of a VXLAN frame the lane decapsulates */
struct ex_vxh {
    struct ethhdr eth;
    struct iphdr ip;
    struct udphdr udp;
    __be32 flags, vni;
    struct ethhdr in; /* the inner frame's */
} __attribute__((packed));

/* where a frame from the underlay goes */
struct ex_dway {
    struct ex_dst *dst;   /* the pod port, */
    struct ex_rval *from; /* from this remote MAC */
};

/* A TCP segment with data from the underlay: where it goes and how long
 * its headers are (ex_dinner_ok) */
struct ex_tdata {
    __u64 daddr[2]; /* its destination: IPv4 in the first 4 bytes, or IPv6 */
    __u32 hdrs;     /* the inner Ethernet, IP and TCP headers' length */
    __u16 v6;
    __u16 tcp; /* the inner datagram is TCP (data or not) */
};

/* Whether the inner datagram of a VXLAN frame may take the lane: 1 (ACKs,
 * SYNs, FINs, datagrams, echoes), 0 (the core's), or EX_TCP_DATA: a TCP
 * segment with data (*t), which the lane takes only to one of the pod's
 * own addresses (ex_dtake). A flow's data must stay on one path, in
 * order, so a flow's super-frames and its smaller segments go together;
 * and a super-frame the lane decapsulates keeps its UDP-tunnel GSO marks
 * (a tc program cannot clear them on these kernels), which the pod's
 * stack ignores when it delivers the data to its own socket but would cut
 * wrongly if it routed the frame on: hence the own address. The inner IP
 * length must cover the whole frame (a list of VXLAN datagrams merged by
 * UDP GRO does not). IPv6: no extension header. */
#define EX_TCP_DATA 2
static __always_inline int
ex_dinner_ok(struct __sk_buff *skb, __be16 proto, struct ex_tdata *t)
{
    struct iphdr ip;
    __u8 doff;
    __u32 hl;

    if (proto == bpf_htons(ETH_P_IPV6)) {
        /* IPv6: TCP, UDP and echoes, no extension header; neighbour
         * discovery and the rest are the core's */
        struct ipv6hdr ip6;
        __u32 off = EX_HDR + ETH_HLEN + sizeof(ip6);
        __u8 l4;

        if (bpf_skb_load_bytes(skb, EX_HDR + ETH_HLEN, &ip6, sizeof(ip6)) < 0 || ip6.version != 6)
            return 0;
        if (ip6.nexthdr == IPPROTO_UDP)
            return 1;
        if (ip6.nexthdr != IPPROTO_TCP && ip6.nexthdr != IPPROTO_ICMPV6)
            return 0;
        t->tcp = ip6.nexthdr == IPPROTO_TCP;
        /* TCP: its data offset; ICMPv6: its type */
        if (bpf_skb_load_bytes(skb, off + (ip6.nexthdr == IPPROTO_TCP ? 12 : 0), &l4, 1) < 0)
            return 0;
        if (ip6.nexthdr == IPPROTO_ICMPV6)
            return l4 == 128 || l4 == 129;
        if (bpf_ntohs(ip6.payload_len) == (__u32)(l4 >> 4) * 4)
            return 1;
        if ((__u32)bpf_ntohs(ip6.payload_len) + sizeof(ip6) + EX_HDR + ETH_HLEN != skb->len)
            return 0;
        __builtin_memcpy(t->daddr, &ip6.daddr, sizeof(t->daddr));
        t->hdrs = ETH_HLEN + sizeof(ip6) + (l4 >> 4) * 4;
        t->v6 = 1;
        return EX_TCP_DATA;
    }
    if (bpf_skb_load_bytes(skb, EX_HDR + ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.ihl < 5)
        return 0;
    if (ip.protocol != IPPROTO_TCP)
        return 1;
    t->tcp = 1;
    hl = ip.ihl * 4;
    if (ip.frag_off & bpf_htons(0x1fff))
        return 0; /* a later fragment of a segment */
    if (bpf_skb_load_bytes(skb, EX_HDR + ETH_HLEN + hl + 12, &doff, 1) < 0)
        return 0;
    if ((__u32)bpf_ntohs(ip.tot_len) == hl + (doff >> 4) * 4)
        return 1;
    /* data: not a first fragment, the whole frame one segment's or one
     * super-frame's */
    if ((ip.frag_off & bpf_htons(0x2000)) ||
        (__u32)bpf_ntohs(ip.tot_len) + EX_HDR + ETH_HLEN != skb->len)
        return 0;
    __builtin_memcpy(t->daddr, &ip.daddr, sizeof(ip.daddr));
    t->hdrs = ETH_HLEN + hl + (doff >> 4) * 4;
    t->v6 = 0;
    return EX_TCP_DATA;
}

/* Whether t's destination is one of pod port s's own addresses */
static __always_inline int
ex_own_addr(const struct ex_src *s, const struct ex_tdata *t)
{
    __u32 a4;

    if (t->v6)
        return ex_has_ip6(s, t->daddr);
    __builtin_memcpy(&a4, t->daddr, sizeof(a4));
    return ex_has_ip4(s, a4);
}

/* A frame on uplink `up` (whose dec_on ex_underlay checked): VXLAN the
 * lane decapsulates (1, and *d filled; its headers in *h), or 0 for the
 * core's path. What the core would drop,
 * learn, flood or look at twice is left to it. */
static __always_inline int
ex_dtake(struct __sk_buff *skb, const struct ex_up *up, struct ex_vxh *h, struct ex_dway *d)
{
    struct ex_dkey k = {};
    struct ex_src *to;
    struct ex_tslot t;
    struct ex_tdata td = {};
    __u32 *net, vtep_src, csum;
    __u16 w16[sizeof(struct iphdr) / 2];
    int inner;

    if (skb->vlan_present)
        return 0; /* tagged on the underlay: the core's (which does not take it) */
    if (bpf_skb_load_bytes(skb, 0, h, sizeof(*h)) < 0)
        return 0;
    if (!mac_eq(h->eth.h_dest, up->vtep_mac) || h->eth.h_proto != bpf_htons(ETH_P_IP) ||
        ((__u8 *)&h->ip)[0] != 0x45 || (h->ip.frag_off & bpf_htons(0x3fff)) ||
        h->ip.protocol != IPPROTO_UDP || h->ip.daddr != up->vtep_ip ||
        (__u32)bpf_ntohs(h->ip.tot_len) + ETH_HLEN != skb->len || h->udp.dest != up->udp_port ||
        bpf_ntohs(h->udp.len) != bpf_ntohs(h->ip.tot_len) - sizeof(struct iphdr) ||
        h->flags != bpf_htonl(0x08000000) || (h->vni & bpf_htonl(0xff)) || (h->in.h_dest[0] & 1) ||
        /* a congestion mark to carry inward (RFC 6040): the core's */
        (h->ip.tos & 3) == 3 ||
        (h->in.h_proto != bpf_htons(ETH_P_IP) &&
         (h->in.h_proto != bpf_htons(ETH_P_IPV6) || !up->dec_v6)))
        return 0;
    /* the outer header's checksum: its ones' complement sum is all ones
     * (by hand: a socket filter has no bpf_csum_diff) */
    __builtin_memcpy(w16, &h->ip, sizeof(w16));
    csum = 0;
#pragma unroll
    for (int i = 0; i < (int)(sizeof(w16) / 2); i++)
        csum += w16[i];
    csum = (csum & 0xffff) + (csum >> 16);
    csum = (csum & 0xffff) + (csum >> 16);
    if (csum != 0xffff)
        return 0;
    inner = ex_dinner_ok(skb, h->in.h_proto, &td);
    /* a super-frame: TCP data only (else the core cuts or keeps it as its
     * GSO rules say) */
    if (!inner || (skb->gso_size && inner != EX_TCP_DATA))
        return 0;
    /* an outer UDP checksum the lane does not verify: taken over TCP, whose
     * own checksum the pod's stack checks, or where the kernel holds it good
     * (a device verified it, or a VTEP on this host left it to offload);
     * over anything else (UDP whose checksum may be 0, ICMP) the core
     * verifies it, and drops and counts a wrong one (udp_checksum) */
    if (h->udp.check && !td.tcp && !ex_outer_csum_good(skb))
        return 0;
    net = bpf_map_lookup_elem(&ex_vni, &h->vni);
    if (!net)
        return 0;
    k.net = *net;
    __builtin_memcpy(k.mac, h->in.h_dest, 6);
    d->dst = bpf_map_lookup_elem(&ex_dst, &k);
    if (!d->dst)
        return 0;
    /* no longer than the pod's network allows */
    to = bpf_map_lookup_elem(&ex_src, &d->dst->ifindex);
    if (!to)
        return 0;
    if (inner == EX_TCP_DATA) {
        /* to the pod itself, each segment within the MTU */
        if (!ex_own_addr(to, &td) ||
            (skb->gso_size ? td.hdrs + skb->gso_size : skb->len - EX_HDR) > to->max_len)
            return 0;
    } else if (skb->len - EX_HDR > to->max_len) {
        return 0;
    }
    /* the source: a remote MAC of the network behind the VTEP that sent it */
    __builtin_memcpy(k.mac, h->in.h_source, 6);
    d->from = bpf_map_lookup_elem(&ex_rdst, &k);
    if (!d->from)
        return 0;
    if (!ex_tun_get(d->from->ti, &t))
        return 0;
    /* the template's outer IPv4 destination: bytes 30-33 */
    __builtin_memcpy(&vtep_src, t.hdr + ETH_HLEN + 16, 4);
    return vtep_src == h->ip.saddr;
}

#define EX_ENCAP_MARKED 1 /* ex_encap: refused as already a tunnel's, untouched */

/*
 * Frame skb (from source src) into a VXLAN frame through tunnel w->tun, as
 * the core's encap_one builds it; 0, < 0 if the kernel refused, or
 * EX_ENCAP_MARKED (unchanged) if the skb still has a tunnel's mark.
 */
static __always_inline int
ex_encap(struct __sk_buff *skb, const struct ex_way *w)
{
    __u8 h[EX_HDR + ETH_HLEN]; /* the outer headers, then the frame's own Ethernet header */
    __u8 tos = 0, ecn;
    __u16 w16;
    __u32 len = skb->len, hash, sum;
    __u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 |
                  BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
                  BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN);
    const struct ex_tslot *t = &w->tun;
    const struct ex_up *up = w->up;
    int by, mark;

    if (bpf_skb_load_bytes(skb, 0, h + EX_HDR, ETH_HLEN) < 0 ||
        bpf_skb_load_bytes(skb, ETH_HLEN, &w16, sizeof(w16)) < 0)
        return -1;
    /* the inner DSCP: IPv4's TOS byte, IPv6's traffic class */
    if (h[EX_HDR + 12] == 0x08)
        tos = ((__u8 *)&w16)[1];
    else
        tos = (__u8)(bpf_ntohs(w16) >> 4);
    /* the inner ECN field copied, CE as ECT(0) (RFC 6040 normal mode, as
     * the kernel's VTEP: the underlay may mark congestion; the core does
     * the same) */
    ecn = tos & 3;
    ecn ^= (ecn >> 1) & ecn & 1;
    tos &= 0xfc;
    /* the plane: by the inner DSCP where a map says so, else the network's;
     * the outer DSCP: the plane's marking, or the inner one copied */
    by = up->dscp_plane[(tos >> 2) & 63];
    mark = up->outer_tos[(by >= 0 ? (__u32)by : w->net->plane) & 7];
    if (mark >= 0)
        tos = (__u8)mark;
    tos |= ecn;
    __builtin_memcpy(h, t->hdr, EX_HDR);
    {
        struct iphdr *ip = (struct iphdr *)(h + ETH_HLEN);
        struct udphdr *udp = (struct udphdr *)(ip + 1);
        __u16 ip_len = (__u16)(len + EX_HDR - ETH_HLEN);
        __u16 w0 = bpf_htons((__u16)(0x45 << 8 | tos));

        ip->tos = tos;
        ip->tot_len = bpf_htons(ip_len);
        /* incremental, as the core: the template's sum, the first word
         * (version, TOS) and the length */
        sum = t->csum_base + w0 + ip->tot_len;
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        ip->check = (__u16)~sum;
        hash = bpf_get_hash_recalc(skb);
        hash ^= hash >> 16;
        udp->source = bpf_htons((__u16)(0xc000 | (hash & 0x3fff)));
        udp->len = bpf_htons((__u16)(ip_len - sizeof(*ip)));
        /* the VNI: the VXLAN header's second word */
        __builtin_memcpy(h + EX_HDR - 4, &w->net->vni_be, 4);
    }
    {
        long r = bpf_skb_adjust_room(skb, EX_HDR, BPF_ADJ_ROOM_MAC, flags);

        if (r == -EALREADY)
            return EX_ENCAP_MARKED; /* the frame as it was: see EX_MARK_CORE */
        if (r < 0)
            return -1;
    }
    return bpf_skb_store_bytes(skb, 0, h, sizeof(h), 0);
}

/* port's counters (this CPU's), or NULL */
static __always_inline struct ex_cnt *
ex_cnt_of(__u32 port)
{
    return bpf_map_lookup_elem(&ex_cnt, &port);
}

/* a frame of len bytes taken from (rx) or delivered to port; tun: taken
 * and encapsulated, or delivered decapsulated from the underlay */
static __always_inline void
ex_count(__u32 port, int rx, __u32 len, int tun)
{
    struct ex_cnt *c = ex_cnt_of(port);

    if (!c)
        return;
    if (rx) {
        c->rx_pkts++;
        c->rx_bytes += len;
        if (tun) {
            c->enc_pkts++;
            c->enc_bytes += len;
        }
    } else {
        c->tx_pkts++;
        c->tx_bytes += len;
        if (tun)
            c->dec_pkts++;
    }
}

/* skb, VXLAN the lane takes (ex_dtake): decapsulated and sent into the
 * pod's namespace, or dropped and counted if the kernel refused */
static __always_inline int
ex_decap(struct __sk_buff *skb, const struct ex_up *up, const struct ex_vxh *h,
         const struct ex_dway *d)
{
    __u32 len = skb->len;
    __u64 now;

    /* out go the outer IPv4, UDP and VXLAN headers and the outer Ethernet
     * header's place is the inner one's; a super-frame keeps its gso_size,
     * the inner segments' payload, which the outer headers never were part
     * of */
    if (bpf_skb_adjust_room(
            skb, -EX_HDR, BPF_ADJ_ROOM_MAC,
            BPF_F_ADJ_ROOM_FIXED_GSO |
                (h->in.h_proto == bpf_htons(ETH_P_IPV6) ? EX_ADJ_DECAP_L3_IPV6 : 0)) < 0 ||
        bpf_skb_store_bytes(skb, 0, &h->in, ETH_HLEN, 0) < 0) {
        struct ex_cnt *c = ex_cnt_of(up->port);

        if (c)
            c->errors++;
        return TC_ACT_SHOT;
    }
    /* a checksum the underlay's NIC verified was the outer one's level */
    bpf_csum_level(skb, BPF_CSUM_LEVEL_DEC);
    now = bpf_ktime_get_ns();
    if (now - d->from->seen > EX_SEEN_NS)
        d->from->seen = now;
    ex_count(up->port, 1, len, 0);
    ex_count(d->dst->port, 0, skb->len, 1);
    /* for the pod's stack (kernels before 6.15 keep the type the frame
     * had where it came in: not ours, for a destination MAC not the
     * veth's, and the pod's IP layer would drop it) */
    bpf_skb_change_type(skb, PACKET_HOST);
    return bpf_redirect_peer(d->dst->ifindex, 0);
}

/* The uplink, if skb came in on it while the lane takes from the underlay
 * (NULL: a pod port's frame); *taken: whether the lane decapsulates it
 * (ex_dtake, its headers in *h, its way in *d). Both programs ask. */
static __always_inline struct ex_up *
ex_underlay(struct __sk_buff *skb, struct ex_vxh *h, struct ex_dway *d, int *taken, int said)
{
    __u32 zero = 0, *on;
    struct ex_up *up = bpf_map_lookup_elem(&ex_up, &zero);

    if (!up || !up->dec_on || skb->ifindex != up->ifindex)
        return NULL;
    on = bpf_map_lookup_elem(&ex_ctl, &zero);
    *taken = (said == SAID_LANE || (on && *on)) && ex_dtake(skb, up, h, d) && d->dst && d->from;
    return up;
}

/* The socket program's decision on skb, read and wiped (SAID_NONE: none). */
static __always_inline int
ex_said(struct __sk_buff *skb)
{
    int said = SAID_NONE;

    if (skb->cb[0] == EX_SAID_MAGIC) {
        if (skb->cb[1] == EX_SAID_LANE)
            said = SAID_LANE;
        else if (skb->cb[1] == EX_SAID_CORE)
            said = SAID_CORE;
        skb->cb[0] = 0;
    }
    return said;
}

/* a frame the socket refused that tc cannot carry: dropped, counted */
static __always_inline int
ex_lost_one(void)
{
    __u32 zero = 0;
    __u64 *n = bpf_map_lookup_elem(&ex_lost, &zero);

    if (n)
        (*n)++;
    return TC_ACT_SHOT;
}

/* A frame the core has: its packet socket took it before tc ran. On a
 * pod's host veth (in ex_src) nothing else is to take it: the node's own
 * stack would, unguarded - an ARP answer for the node's addresses, IPv4
 * to its sockets or routed on, from any source the pod forges - so it is
 * dropped here (the core's copy goes on). The uplink's frames go on to the
 * node as they always did. */
static __always_inline int
ex_core_has(struct __sk_buff *skb)
{
    __u32 ifindex = skb->ifindex;

    if (bpf_map_lookup_elem(&ex_hend, &ifindex) || bpf_map_lookup_elem(&ex_src, &ifindex))
        return TC_ACT_SHOT;
    return TC_ACT_OK;
}

/* the programs are the host ends' guard only (ex_ctl[1]) */
static __always_inline int
ex_guard_only(void)
{
    __u32 one = 1, *g = bpf_map_lookup_elem(&ex_ctl, &one);

    return g && *g;
}

SEC("tc")
int
ex_tc(struct __sk_buff *skb)
{
    struct ex_way w = {};
    struct ex_vxh h;
    struct ex_dway d = {};
    struct ex_up *up;
    __u32 len = skb->len;
    int taken = 0, said = ex_said(skb);

    /* carrying nothing: a decision left in the control block (stale, or
     * written by anything but this lane's socket program) is not obeyed */
    if (ex_guard_only())
        return ex_core_has(skb);
    if (skb->mark == EX_MARK_CORE) {
        /* handed back (EX_MARK_CORE), second pass: the core's, or lost
         * if no socket took it (its port closed meanwhile) */
        skb->mark = 0;
        return said == SAID_CORE ? ex_core_has(skb) : ex_lost_one();
    }
    if (said == SAID_CORE)
        return ex_core_has(skb);
    up = ex_underlay(skb, &h, &d, &taken, said);
    if (up) {
        if (taken)
            return ex_decap(skb, up, &h, &d);
    } else if (ex_take(skb, &w, said) && w.src) {
        if (w.dst) {
            ex_count(w.src->port, 1, len, 0);
            ex_count(w.dst->port, 0, len, 0);
            bpf_skb_change_type(skb, PACKET_HOST); /* as in ex_decap */
            return bpf_redirect_peer(w.dst->ifindex, 0);
        }
        if (w.remote && w.up && w.net) {
            int r = ex_encap(skb, &w);

            if (r == EX_ENCAP_MARKED) {
                struct ex_cnt *c = ex_cnt_of(w.src->port);

                if (c)
                    c->to_core++;
                skb->mark = EX_MARK_CORE;
                return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
            }
            if (r < 0) {
                struct ex_cnt *c = ex_cnt_of(w.src->port);

                if (c)
                    c->errors++;
                return TC_ACT_SHOT;
            }
            ex_count(w.src->port, 1, len, 1);
            ex_count(w.up->port, 0, skb->len, 0);
            return bpf_redirect(w.up->ifindex, 0);
        }
    }
    /* the packet socket refused it, and the lane can no longer carry it */
    return said == SAID_LANE ? ex_lost_one() : ex_core_has(skb);
}

SEC("socket")
int
ex_sock(struct __sk_buff *skb)
{
    struct ex_way w = {};
    struct ex_vxh h;
    struct ex_dway d = {};
    int taken = 0;

    /* 0: not for this socket (the tc program carries it); else whole. A
     * frame tc handed back to the core (EX_MARK_CORE) is the socket's. */
    if (skb->mark != EX_MARK_CORE && !ex_underlay(skb, &h, &d, &taken, SAID_NONE))
        taken = ex_take(skb, &w, SAID_NONE);
    skb->cb[0] = EX_SAID_MAGIC;
    skb->cb[1] = taken ? EX_SAID_LANE : EX_SAID_CORE;
    return taken ? 0 : skb->len;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
