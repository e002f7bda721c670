/*
 * dp_tunnel.c - this node's VTEP and the tunnels to remote VTEPs. A tunnel
 * is the outer Ether/IPv4/UDP/VXLAN header template the pipeline copies and
 * patches per frame (dp_internal.h, struct dp_tunnel); it is rebuilt when
 * the VTEP or the next hop's MAC changes, and freed with its last reference.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <rte_malloc.h>

#include "dp_control.h"

struct dp_vtep_conf dp_vconf = {
    .uplink = -1, .udp_port = RTE_VXLAN_DEFAULT_PORT, .underlay_mtu = 1500};
int dp_vconf_set;

/* references to each tunnel: all, and per network (FDB entries, flood lists) */
static uint32_t tun_refs[DP_MAX_TUNNELS];
static uint32_t net_tun_refs[DP_MAX_NETS][DP_MAX_TUNNELS]; /* as wide as tun_refs */

/* the largest inner frame (its Ethernet header included) that the underlay
 * MTU lets through once encapsulated: the outer IPv4 datagram is the frame
 * plus DP_VXLAN_OVERHEAD less the outer Ethernet header */
uint32_t
dp_max_frame(void)
{
    return (uint32_t)dp_vconf.underlay_mtu - DP_VXLAN_OVERHEAD + RTE_ETHER_HDR_LEN;
}

static int
same_subnet(uint32_t a, uint32_t b)
{
    if (dp_vconf.prefix_len == 0)
        return 1;
    uint32_t mask = dp_vconf.prefix_len >= 32 ? 0xffffffffu : ~(0xffffffffu >> dp_vconf.prefix_len);
    return (a & mask) == (b & mask);
}

static uint32_t
next_hop(uint32_t ip)
{
    if (same_subnet(ip, dp_vconf.ip) || dp_vconf.gateway == 0)
        return ip;
    return dp_vconf.gateway;
}

static uint32_t
csum_words(const uint8_t *p, size_t len)
{
    uint32_t s = 0;
    for (size_t i = 0; i + 1 < len; i += 2) {
        uint16_t w;
        memcpy(&w, p + i, 2);
        s += w;
    }
    return s;
}

/* build the template for tunnel t (control path, once per change) */
static void
tunnel_build(struct dp_tunnel *t)
{
    static uint8_t gen;
    const uint8_t *nh_mac = NULL;
    /* a worker that gave up on a template (gave_up) knows it by address
     * and build: a later template may get the same address from the heap */
    t->gen = ++gen;
    t->nh_ip = next_hop(t->ip);
    if (dp_vconf.static_nh) {
        nh_mac = dp_vconf.static_nh_mac;
    } else {
        nh_mac = dp_neigh_mac(t->nh_ip);
    }
    t->resolved = nh_mac != NULL && dp_vconf_set && dp_vconf.uplink >= 0;
    memset(t->hdr, 0, sizeof(t->hdr));
    struct rte_ether_hdr *eth = (struct rte_ether_hdr *)t->hdr;
    struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(eth + 1);
    struct rte_udp_hdr *udp = (struct rte_udp_hdr *)(ip + 1);
    struct rte_vxlan_hdr *vx = (struct rte_vxlan_hdr *)(udp + 1);
    if (nh_mac)
        memcpy(eth->dst_addr.addr_bytes, nh_mac, 6);
    memcpy(eth->src_addr.addr_bytes, dp_vconf.mac, 6);
    eth->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
    ip->version_ihl = RTE_IPV4_VHL_DEF;
    ip->type_of_service = 0; /* per packet: inner DSCP */
    ip->total_length = 0;    /* per packet */
    ip->packet_id = 0;       /* DF set: ID carries nothing (RFC 6864) */
    ip->fragment_offset = rte_cpu_to_be_16(RTE_IPV4_HDR_DF_FLAG);
    ip->time_to_live = 64;
    ip->next_proto_id = IPPROTO_UDP;
    ip->hdr_checksum = 0; /* per packet, incrementally */
    ip->src_addr = rte_cpu_to_be_32(dp_vconf.ip);
    ip->dst_addr = rte_cpu_to_be_32(t->ip);
    udp->src_port = 0; /* per packet: inner flow hash */
    udp->dst_port = rte_cpu_to_be_16(dp_vconf.udp_port);
    udp->dgram_len = 0;                          /* per packet */
    udp->dgram_cksum = 0;                        /* zero on IPv4 (RFC 7348) */
    vx->vx_flags = rte_cpu_to_be_32(0x08000000); /* I flag */
    vx->vx_vni = 0;                              /* per packet: the network's VNI */
    /* all words but the first (version, TOS), which the pipeline adds */
    t->csum_base = csum_words((const uint8_t *)ip + 2, sizeof(*ip) - 2);
}

/*
 * New templates for every tunnel (all = 1) or those whose next hop is nh_ip,
 * into fresh[] (NULL for the others): all of them, or none and dp_fail.
 */
static int
tunnels_prepare(int all, uint32_t nh_ip, struct dp_tunnel *fresh[DP_MAX_TUNNELS])
{
    for (int i = 0; i < DP_MAX_TUNNELS; i++) {
        struct dp_tunnel *o = atomic_load(&dp.tunnels[i]);
        fresh[i] = NULL;
        if (!o || (!all && o->nh_ip != nh_ip))
            continue;
        fresh[i] = rte_malloc("dp_tunnel", sizeof(*fresh[i]), RTE_CACHE_LINE_SIZE);
        if (!fresh[i]) {
            while (i-- > 0)
                rte_free(fresh[i]);
            return dp_fail(-ENOMEM, "out of memory for new tunnel templates");
        }
        fresh[i]->ip = o->ip;
        tunnel_build(fresh[i]);
    }
    return 0;
}

/* publish what tunnels_prepare made; after one grace period free the old */
static void
tunnels_publish(struct dp_tunnel *fresh[DP_MAX_TUNNELS])
{
    for (int i = 0; i < DP_MAX_TUNNELS; i++)
        if (fresh[i]) {
            fresh[i] = atomic_exchange(&dp.tunnels[i], fresh[i]);
            dp_express_tunnel(i);
        }
    dp_sync();
    for (int i = 0; i < DP_MAX_TUNNELS; i++)
        rte_free(fresh[i]);
}

/* rebuild the templates of the tunnels whose next hop is nh_ip (its MAC
 * changed); all or none */
int
dp_tunnels_refresh_nh(uint32_t nh_ip)
{
    struct dp_tunnel *fresh[DP_MAX_TUNNELS];
    int ret = tunnels_prepare(0, nh_ip, fresh);
    if (ret < 0)
        return ret;
    tunnels_publish(fresh);
    return 0;
}

static int
tunnel_find(uint32_t ip)
{
    for (int i = 0; i < DP_MAX_TUNNELS; i++) {
        struct dp_tunnel *t = atomic_load(&dp.tunnels[i]);
        if (t && t->ip == ip)
            return i;
    }
    return -1;
}

/* take a reference on the tunnel to ip for network net, creating it; returns
 * its index, or dp_fail and nothing changed */
int
dp_tunnel_ref(int net, uint32_t ip)
{
    struct dp_tunnel *created = NULL;
    int ti = tunnel_find(ip);
    if (ti < 0) {
        for (int i = 0; i < DP_MAX_TUNNELS && ti < 0; i++)
            if (!atomic_load(&dp.tunnels[i]))
                ti = i;
        if (ti < 0)
            return dp_fail(-ENOSPC, "all %d remote VTEP slots in use", DP_MAX_TUNNELS);
        created = rte_zmalloc("dp_tunnel", sizeof(*created), RTE_CACHE_LINE_SIZE);
        if (!created)
            return dp_fail(-ENOMEM, "out of memory");
        created->ip = ip;
        tunnel_build(created);
        atomic_store(&dp.tunnels[ti], created);
        dp_express_tunnel(ti);
    }
    if (net_tun_refs[net][ti] == 0) {
        /* frames from ip with the network's VNI are the network's */
        struct dp_net *n = dp_net_get(net);
        uint64_t k = dp_vtep_key(n->vni_be_word, rte_cpu_to_be_32(ip));
        int ret = rte_hash_add_key_data(dp.vteps, &k, (void *)(uintptr_t)net);
        if (ret != 0) {
            if (created) {
                /* no FDB entry points at it yet, but a worker's held
                 * frame for a tunnel once at this index may read it */
                atomic_store(&dp.tunnels[ti], NULL);
                dp_express_tunnel(ti);
                dp_sync();
                rte_free(created);
            }
            return dp_fail(ret, "VTEP table full (%d network and VTEP pairs)", DP_MAX_VTEP_PAIRS);
        }
        dp_tables_changed();
    }
    tun_refs[ti]++;
    net_tun_refs[net][ti]++;
    return ti;
}

void
dp_tunnel_unref(int net, int ti)
{
    struct dp_tunnel *t = atomic_load(&dp.tunnels[ti]);
    if (!t)
        return;
    if (--net_tun_refs[net][ti] == 0) {
        struct dp_net *n = dp_net_get(net);
        if (n) {
            uint64_t k = dp_vtep_key(n->vni_be_word, rte_cpu_to_be_32(t->ip));
            /* there since the network's first reference (dp_tunnel_ref) */
            (void)rte_hash_del_key(dp.vteps, &k);
            dp_tables_changed();
        }
    }
    if (--tun_refs[ti] == 0) {
        atomic_store(&dp.tunnels[ti], NULL);
        dp_express_tunnel(ti);
        dp_sync();
        rte_free(t);
    }
}

int
dp_vtep_set(const struct dp_vtep_conf *c)
{
    if (!dp_setup_done)
        return dp_fail(-EINVAL, "dp_setup not done");
    if (c->ip == 0)
        return dp_fail(-EINVAL, "VTEP address must be set");
    if (c->prefix_len > 32)
        return dp_fail(-EINVAL, "VTEP prefix length %u > 32", c->prefix_len);
    if (c->udp_port == 0)
        return dp_fail(-EINVAL, "VXLAN UDP port must not be 0");
    if (c->underlay_mtu < DP_UNDERLAY_MTU_MIN || c->underlay_mtu > DP_UNDERLAY_MTU_MAX)
        return dp_fail(-EINVAL, "underlay MTU %u out of range %d..%d", c->underlay_mtu,
                       DP_UNDERLAY_MTU_MIN, DP_UNDERLAY_MTU_MAX);
    if (c->uplink >= 0) {
        struct dp_port *p = dp_port_get(c->uplink);
        if (!p)
            return dp_fail(-ENOENT, "uplink port %d does not exist", c->uplink);
        if (p->role != DP_ROLE_UPLINK)
            return dp_fail(-EINVAL, "port %d (%s) was not added as an uplink", c->uplink, p->name);
    }
    /* build everything from the new settings; keep the old until all is there */
    struct dp_vtep_conf old_conf = dp_vconf;
    int old_set = dp_vconf_set;
    dp_vconf = *c;
    dp_vconf_set = 1;
    struct dp_net *nets[DP_MAX_NETS];
    struct dp_tunnel *tuns[DP_MAX_TUNNELS];
    struct dp_vtep *v = calloc(1, sizeof(*v));
    int ret = v ? dp_nets_prepare(dp_max_frame(), nets) : dp_fail(-ENOMEM, "out of memory");
    if (ret == 0) {
        ret = tunnels_prepare(1, 0, tuns);
        if (ret < 0)
            for (int i = 0; i < DP_MAX_NETS; i++)
                rte_free(nets[i]);
    }
    if (ret < 0) {
        free(v);
        dp_vconf = old_conf;
        dp_vconf_set = old_set;
        return ret;
    }
    v->ip_be = rte_cpu_to_be_32(c->ip);
    v->udp_port_be = rte_cpu_to_be_16(c->udp_port);
    memcpy(v->mac, c->mac, 6);
    v->uplink = c->uplink;
    v->learning = c->learning;
    v->max_frame = dp_max_frame();
    /* ARP requests asked under the old settings (another address, or for
     * an uplink now gone) are not sent by the new uplink: dropped before
     * any worker takes the new VTEP (housekeeping, which asks, runs under
     * the control API's lock: none is queued meanwhile); the next hops
     * still unresolved are asked again by the next housekeeping round */
    int moved = !old_set || old_conf.uplink != c->uplink || old_conf.ip != c->ip ||
                memcmp(old_conf.mac, c->mac, 6) != 0 || old_conf.static_nh != c->static_nh;
    if (moved)
        dp_neigh_requests_drop();
    struct dp_vtep *old = atomic_exchange(&dp.vtep, v);
    dp_nets_publish(nets); /* includes a grace period: no worker holds old */
    if (moved)             /* ... and what the old one heard */
        dp_neigh_answers_drop();
    tunnels_publish(tuns);
    free(old);
    dp_express_uplink();
    return 0;
}

void
dp_tunnels_free_all(void)
{
    for (int i = 0; i < DP_MAX_TUNNELS; i++) {
        rte_free(atomic_exchange(&dp.tunnels[i], NULL));
        dp_express_tunnel(i);
    }
    memset(tun_refs, 0, sizeof(tun_refs));
    memset(net_tun_refs, 0, sizeof(net_tun_refs));
}
