/*
 * dp_neigh.c - underlay neighbours (next hop IPv4 -> MAC), the ARP requests
 * that resolve them, and the housekeeping that the control thread runs
 * every few ms: what workers report (ARP senders, learned MACs), and ARP
 * requests for next hops still unresolved.
 */
#include <string.h>

#include <rte_arp.h>
#include <rte_cycles.h>

#include "dp_control.h"
#include "dp_qos.h"

#define DP_MAX_NEIGH 256

/* underlay neighbours: IPv4 -> MAC */
struct dp_neigh {
    uint32_t ip;
    uint8_t mac[6];
    int valid;
};
static struct dp_neigh neigh[DP_MAX_NEIGH];

static int
neigh_find(uint32_t ip)
{
    for (int i = 0; i < DP_MAX_NEIGH; i++)
        if (neigh[i].valid && neigh[i].ip == ip)
            return i;
    return -1;
}

/* the MAC of neighbour ip, NULL if unknown */
const uint8_t *
dp_neigh_mac(uint32_t ip)
{
    int i = neigh_find(ip);
    return i < 0 ? NULL : neigh[i].mac;
}

int
dp_neigh_set(uint32_t ip, const uint8_t *mac)
{
    int i = neigh_find(ip);
    if (i < 0) {
        for (int j = 0; j < DP_MAX_NEIGH && i < 0; j++)
            if (!neigh[j].valid)
                i = j;
        if (i < 0) /* table full: replace the first entry */
            i = 0;
    } else if (memcmp(neigh[i].mac, mac, 6) == 0) {
        return 0;
    }
    struct dp_neigh was = neigh[i];
    neigh[i].ip = ip;
    memcpy(neigh[i].mac, mac, 6);
    neigh[i].valid = 1;
    int ret = dp_tunnels_refresh_nh(ip);
    if (ret < 0)
        neigh[i] = was; /* as before: the tunnels still have the old MAC */
    return ret;
}

int
dp_neigh_get(uint32_t ip, uint8_t *mac)
{
    int i = neigh_find(ip);
    if (i < 0)
        return 0;
    memcpy(mac, neigh[i].mac, 6);
    return 1;
}

/* queue one ARP request for ip; the uplink's worker sends it */
static void
arp_request(uint32_t ip)
{
    /* without an mbuf now, the next round asks again (DP_ARP_RETRY_US) */
    struct rte_mbuf *m = rte_pktmbuf_alloc(dp.pool);
    if (!m)
        return;
    size_t len = sizeof(struct rte_ether_hdr) + sizeof(struct rte_arp_hdr);
    struct rte_ether_hdr *eth = (struct rte_ether_hdr *)rte_pktmbuf_append(m, (uint16_t)len);
    if (!eth) {
        rte_pktmbuf_free(m);
        return;
    }
    struct rte_arp_hdr *arp = (struct rte_arp_hdr *)(eth + 1);
    memset(eth->dst_addr.addr_bytes, 0xff, 6);
    memcpy(eth->src_addr.addr_bytes, dp_vconf.mac, 6);
    eth->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_ARP);
    arp->arp_hardware = rte_cpu_to_be_16(RTE_ARP_HRD_ETHER);
    arp->arp_protocol = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
    arp->arp_hlen = 6;
    arp->arp_plen = 4;
    arp->arp_opcode = rte_cpu_to_be_16(RTE_ARP_OP_REQUEST);
    memcpy(arp->arp_data.arp_sha.addr_bytes, dp_vconf.mac, 6);
    arp->arp_data.arp_sip = rte_cpu_to_be_32(dp_vconf.ip);
    memset(arp->arp_data.arp_tha.addr_bytes, 0, 6);
    arp->arp_data.arp_tip = rte_cpu_to_be_32(ip);
    DP_META(m)->rx_tsc = rte_get_tsc_cycles();
    DP_META(m)->plane = 0;
    if (rte_ring_enqueue(dp.ctrl_tx, m) != 0)
        rte_pktmbuf_free(m);
}

/*
 * Periodic control work, called by the control thread every few ms:
 * neighbours and learned MACs reported by workers, ARP requests for next
 * hops still unresolved (at most one per next hop per DP_ARP_RETRY_US).
 * Returns the number of events handled.
 */
int
dp_housekeeping(void)
{
    if (!dp_setup_done)
        return 0;
    struct dp_slow_event ev[64];
    int handled = 0;
    unsigned n;
    while ((n = rte_ring_dequeue_burst_elem(dp.slow_ring, ev, sizeof(ev[0]), 64, NULL)) > 0) {
        /* an event that cannot be applied now (table full, out of memory)
         * is left: the workers report it again, with the neighbour's next
         * ARP (asked for below while a next hop is unresolved) or the
         * remote MAC's next frame (its VTEP is not known until learned) */
        for (unsigned i = 0; i < n; i++) {
            if (ev[i].kind == DP_EV_NEIGH)
                (void)dp_neigh_set(ev[i].ip, ev[i].mac);
            else if (ev[i].kind == DP_EV_LEARN && dp_net_get((int)ev[i].net))
                (void)dp_fdb_add_remote((int)ev[i].net, ev[i].mac, ev[i].ip);
        }
        handled += (int)n;
    }
    if (!dp_vconf_set || dp_vconf.static_nh || dp_vconf.uplink < 0)
        return handled;
    uint64_t now = rte_get_tsc_cycles();
    uint64_t retry = rte_get_tsc_hz() / 1000000 * DP_ARP_RETRY_US;
    uint32_t asked[64];
    int n_asked = 0;
    for (int t = 0; t < DP_MAX_TUNNELS && n_asked < 64; t++) {
        struct dp_tunnel *tu = atomic_load(&dp.tunnels[t]);
        if (!tu || tu->resolved)
            continue;
        int dup = 0;
        for (int j = 0; j < n_asked; j++)
            dup |= asked[j] == tu->nh_ip;
        if (dup)
            continue;
        asked[n_asked++] = tu->nh_ip;
        /* remember when we asked, in a pseudo-entry keyed by the ip */
        static struct {
            uint32_t ip;
            uint64_t tsc;
        } last[64];
        int slot = -1;
        for (int j = 0; j < 64; j++)
            if (last[j].ip == tu->nh_ip)
                slot = j;
        if (slot < 0) {
            slot = (int)(tu->nh_ip % 64);
            last[slot].ip = tu->nh_ip;
            last[slot].tsc = 0;
        }
        if (last[slot].tsc && now - last[slot].tsc < retry)
            continue;
        last[slot].tsc = now;
        arp_request(tu->nh_ip);
    }
    return handled;
}
