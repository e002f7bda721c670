// SPDX-License-Identifier: Apache-2.0
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
 *    else goes on (TC_ACT_OK) to the packet socket the core reads;
 *  - "socket" on that packet socket (SO_ATTACH_BPF): it refuses the frames
 *    the tc program takes (the kernel hands a frame to packet sockets
 *    before tc ingress runs), so the core never sees them twice.
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
 * ARP, neighbour discovery, VLAN, broadcast and multicast, unknown
 * destinations and traffic to or from the underlay always take the core's
 * path.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define EX_MAX_PORTS 256
#define EX_MAX_IP4 8
#define EX_MAX_IP6 4

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
    __u64 rx_pkts, rx_bytes; /* taken from this port */
    __u64 tx_pkts, tx_bytes; /* delivered to this port */
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, EX_MAX_PORTS);
    __type(key, __u32);
    __type(value, struct ex_src);
} ex_src SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, EX_MAX_PORTS);
    __type(key, struct ex_dkey);
    __type(value, struct ex_dst);
} ex_dst SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u32);
} ex_ctl SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, EX_MAX_PORTS);
    __type(key, __u32);
    __type(value, struct ex_cnt);
} ex_cnt SEC(".maps");

static __always_inline int
mac_eq(const __u8 *a, const __u8 *b)
{
    return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
           a[5] == b[5];
}

/* An IPv6 frame the lane may take: TCP, UDP but a DHCPv6 server's (or
 * relay's) message, or an ICMPv6 echo request or reply, with no extension
 * header, from one of the pod's addresses where the network has
 * anti-spoofing. Neighbour discovery, router messages and everything else
 * go to the core, whose guard knows the rules for them. */
static __always_inline int
ex_ip6_ok(struct __sk_buff *skb, const struct ex_src *src)
{
    struct ipv6hdr ip6;
    __u64 a[2];
    __u16 l4;
    int ok = 0;

    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
        return 0;
    if (ip6.nexthdr == IPPROTO_UDP || ip6.nexthdr == IPPROTO_ICMPV6) {
        /* UDP: its source port; ICMPv6: its type and code */
        if (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(ip6), &l4, sizeof(l4)) < 0)
            return 0;
        if (ip6.nexthdr == IPPROTO_UDP && l4 == bpf_htons(547))
            return 0;
        if (ip6.nexthdr == IPPROTO_ICMPV6 && ((__u8 *)&l4)[0] != 128 && ((__u8 *)&l4)[0] != 129)
            return 0;
    } else if (ip6.nexthdr != IPPROTO_TCP) {
        return 0;
    }
    if (!src->spoof_on)
        return 1;
    __builtin_memcpy(a, &ip6.saddr, sizeof(a));
#pragma unroll
    for (int i = 0; i < EX_MAX_IP6; i++)
        if (i < src->n6 && src->ip6[i][0] == a[0] && src->ip6[i][1] == a[1])
            ok = 1;
    return ok;
}

/* The destination of a frame the lane takes, with its source; NULL if the
 * core's path is to carry it. */
static __always_inline struct ex_dst *
ex_take(struct __sk_buff *skb, struct ex_src **srcp)
{
    struct ethhdr eth;
    struct ex_dkey k = {};
    struct ex_src *src;
    struct ex_dst *dst;
    __u32 zero = 0, *on, saddr;
    __u32 ifindex = skb->ifindex;

    on = bpf_map_lookup_elem(&ex_ctl, &zero);
    if (!on || !*on)
        return NULL;
    src = bpf_map_lookup_elem(&ex_src, &ifindex);
    if (!src)
        return NULL;
    if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
        return NULL;
    if (eth.h_dest[0] & 1)
        return NULL;
    if (!mac_eq(eth.h_source, src->mac))
        return NULL;
    /* longer than the network's MTU allows and not a super-frame (which the
     * receiving stack takes as the segments it stands for): the core counts
     * it (kport_oversize) and refuses it */
    if (skb->len > src->max_len && !skb->gso_size)
        return NULL;
    if (eth.h_proto == bpf_htons(ETH_P_IPV6)) {
        if (!ex_ip6_ok(skb, src))
            return NULL;
    } else if (eth.h_proto != bpf_htons(ETH_P_IP)) {
        return NULL;
    } else if (src->spoof_on) {
        struct iphdr ip;
        __u16 sport;
        int ok = 0;

        if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.ihl < 5)
            return NULL;
        saddr = ip.saddr;
#pragma unroll
        for (int i = 0; i < EX_MAX_IP4; i++)
            if (i < src->n4 && src->ip4[i] == saddr)
                ok = 1;
        if (!ok)
            return NULL;
        /* a DHCP server's message (UDP from port 67, first fragment): the
         * core's guard knows whether the pod may send one */
        if (ip.protocol == IPPROTO_UDP && !(ip.frag_off & bpf_htons(0x1fff))) {
            if (bpf_skb_load_bytes(skb, ETH_HLEN + ip.ihl * 4, &sport, sizeof(sport)) < 0 ||
                sport == bpf_htons(67))
                return NULL;
        }
    }
    k.net = src->net;
    __builtin_memcpy(k.mac, eth.h_dest, 6);
    dst = bpf_map_lookup_elem(&ex_dst, &k);
    if (!dst || dst->ifindex == ifindex)
        return NULL;
    *srcp = src;
    return dst;
}

SEC("tc")
int
ex_tc(struct __sk_buff *skb)
{
    struct ex_src *src = NULL;
    struct ex_dst *dst = ex_take(skb, &src);
    struct ex_cnt *c;
    __u32 i;

    if (!dst || !src)
        return TC_ACT_OK;
    i = src->port;
    c = bpf_map_lookup_elem(&ex_cnt, &i);
    if (c) {
        c->rx_pkts++;
        c->rx_bytes += skb->len;
    }
    i = dst->port;
    c = bpf_map_lookup_elem(&ex_cnt, &i);
    if (c) {
        c->tx_pkts++;
        c->tx_bytes += skb->len;
    }
    return bpf_redirect_peer(dst->ifindex, 0);
}

SEC("socket")
int
ex_sock(struct __sk_buff *skb)
{
    struct ex_src *src = NULL;

    /* 0: not for this socket (the tc program carries it); else whole */
    return ex_take(skb, &src) ? 0 : skb->len;
}

char LICENSE[] SEC("license") = "Apache-2.0";
