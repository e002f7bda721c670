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

/*
 * The table: next hops the core asked for (incomplete) or knows (valid),
 * and those set by the control API (permanent). What the underlay says is
 * believed only about those: an ARP sender the core did not ask for and
 * does not know is ignored, and a known one's MAC changes at most once per
 * DP_NEIGH_LOCK_MS (each change rebuilds the tunnels). A valid entry is
 * re-resolved after DP_NEIGH_REACHABLE_MS: asked again while its old MAC
 * stays in use, forgotten after DP_NEIGH_PROBES unanswered requests.
 */
#define DP_MAX_NEIGH DP_MAX_TUNNELS /* a next hop per tunnel at most */
#define DP_NEIGH_IDX (2 * DP_MAX_NEIGH)
#define DP_NEIGH_LOCK_MS 1000
#define DP_NEIGH_REACHABLE_MS 60000
#define DP_NEIGH_PROBES 3
#define DP_NEIGH_AGE_EVERY_MS 100

enum { NEIGH_FREE, NEIGH_INCOMPLETE, NEIGH_VALID, NEIGH_PERMANENT };

struct dp_neigh {
    uint32_t ip;
    uint8_t mac[6];
    uint8_t state;
    uint8_t probes;   /* unanswered requests since it went stale */
    uint64_t updated; /* TSC of the last answer (valid) */
    uint64_t asked;   /* TSC of the last request, 0 = never */
};
static struct dp_neigh neigh[DP_MAX_NEIGH];
/* ip -> slot + 1 (0: empty), open addressing; rebuilt when an entry goes */
static uint16_t neigh_idx[DP_NEIGH_IDX];
static uint64_t reachable_tsc_ms = DP_NEIGH_REACHABLE_MS;
static uint64_t last_age;

static unsigned
neigh_hash(uint32_t ip)
{
    return (ip * 2654435761u) & (DP_NEIGH_IDX - 1);
}

static int
neigh_find(uint32_t ip)
{
    for (unsigned h = neigh_hash(ip), n = 0; n < DP_NEIGH_IDX;
         n++, h = (h + 1) & (DP_NEIGH_IDX - 1)) {
        if (neigh_idx[h] == 0)
            return -1;
        if (neigh[neigh_idx[h] - 1].ip == ip)
            return neigh_idx[h] - 1;
    }
    return -1;
}

static void
neigh_index(int i)
{
    unsigned h = neigh_hash(neigh[i].ip);
    while (neigh_idx[h])
        h = (h + 1) & (DP_NEIGH_IDX - 1);
    neigh_idx[h] = (uint16_t)(i + 1);
}

static void
neigh_reindex(void)
{
    memset(neigh_idx, 0, sizeof(neigh_idx));
    for (int i = 0; i < DP_MAX_NEIGH; i++)
        if (neigh[i].state != NEIGH_FREE)
            neigh_index(i);
}

static uint64_t
ms_tsc(uint64_t ms)
{
    return rte_get_tsc_hz() / 1000 * ms;
}

/* wanted[i]: entry i is the next hop of a tunnel - marked in one pass over
 * the tunnels, so that a pass over the table costs entries + tunnels, not
 * their product */
static void
neigh_mark_wanted(uint8_t wanted[DP_MAX_NEIGH])
{
    memset(wanted, 0, DP_MAX_NEIGH);
    for (int t = 0; t < DP_MAX_TUNNELS; t++) {
        struct dp_tunnel *tu = atomic_load(&dp.tunnels[t]);
        int i = tu ? neigh_find(tu->nh_ip) : -1;
        if (i >= 0)
            wanted[i] = 1;
    }
}

/* a slot for a new entry: a free one, else the one least worth keeping
 * (incomplete before valid, not wanted, least recently answered); -1 when
 * every entry is a permanent one or a wanted next hop */
static int
neigh_slot(void)
{
    static uint8_t wanted[DP_MAX_NEIGH];
    int best = -1;
    for (int i = 0; i < DP_MAX_NEIGH; i++)
        if (neigh[i].state == NEIGH_FREE)
            return i;
    neigh_mark_wanted(wanted);
    for (int i = 0; i < DP_MAX_NEIGH; i++) {
        if (neigh[i].state == NEIGH_PERMANENT || wanted[i])
            continue;
        if (best < 0 || neigh[i].state < neigh[best].state ||
            (neigh[i].state == neigh[best].state && neigh[i].updated < neigh[best].updated))
            best = i;
    }
    if (best >= 0) {
        neigh[best].state = NEIGH_FREE;
        neigh_reindex();
    }
    return best;
}

/* the MAC of neighbour ip, NULL if unknown */
const uint8_t *
dp_neigh_mac(uint32_t ip)
{
    int i = neigh_find(ip);
    return i < 0 || neigh[i].state < NEIGH_VALID ? NULL : neigh[i].mac;
}

/* entry i := mac in state, the tunnels through it rebuilt; as before if
 * they cannot be */
static int
neigh_update(int i, const uint8_t *mac, uint8_t state)
{
    struct dp_neigh was = neigh[i];
    int changed = was.state < NEIGH_VALID || memcmp(was.mac, mac, 6) != 0;
    memcpy(neigh[i].mac, mac, 6);
    neigh[i].state = state;
    neigh[i].updated = rte_get_tsc_cycles();
    neigh[i].probes = 0;
    if (!changed)
        return 0;
    int ret = dp_tunnels_refresh_nh(neigh[i].ip);
    if (ret < 0)
        neigh[i] = was; /* as before: the tunnels still have the old MAC */
    return ret;
}

/* a new entry for ip (state incomplete), -1 if the table is full */
static int
neigh_new(uint32_t ip)
{
    int i = neigh_slot();
    if (i < 0)
        return -1;
    neigh[i] = (struct dp_neigh){.ip = ip, .state = NEIGH_INCOMPLETE};
    neigh_index(i);
    return i;
}

int
dp_neigh_set(uint32_t ip, const uint8_t *mac)
{
    if (mac[0] & 1)
        return dp_fail(-EINVAL, "a neighbour's MAC is unicast");
    int i = neigh_find(ip);
    if (i < 0 && (i = neigh_new(ip)) < 0)
        return dp_fail(-ENOSPC, "neighbour table full (%d permanent or in use)", DP_MAX_NEIGH);
    return neigh_update(i, mac, NEIGH_PERMANENT);
}

/* what an ARP sender on the underlay says: believed only for a next hop the
 * core asked for or knows, a known MAC changed at most once a lock time */
static void
neigh_heard(uint32_t ip, const uint8_t *mac)
{
    int i = neigh_find(ip);
    if (i < 0 || neigh[i].state == NEIGH_PERMANENT || (mac[0] & 1) ||
        (mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]) == 0)
        return;
    if (neigh[i].state == NEIGH_VALID && memcmp(neigh[i].mac, mac, 6) != 0 &&
        rte_get_tsc_cycles() - neigh[i].updated < ms_tsc(DP_NEIGH_LOCK_MS))
        return;
    (void)neigh_update(i, mac, NEIGH_VALID);
}

int
dp_neigh_get(uint32_t ip, uint8_t *mac)
{
    const uint8_t *m = dp_neigh_mac(ip);
    if (!m)
        return 0;
    memcpy(mac, m, 6);
    return 1;
}

int
dp_neigh_timers(uint32_t reachable_ms)
{
    if (reachable_ms < 100)
        return dp_fail(-EINVAL, "neighbour reachable time %u ms below 100", reachable_ms);
    reachable_tsc_ms = reachable_ms;
    return 0;
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
    if (rte_ring_enqueue(dp.ctrl_tx, m) != 0) { /* asked again next round */
        dp.ctr->drop[DP_CTRL_ROW][DP_DROP_QUEUE_FULL]++;
        rte_pktmbuf_free(m);
    }
}

/* ARP requests queued and not yet sent are dropped (the VTEP changed):
 * incomplete entries are asked again by the next housekeeping round. The
 * ring is multi-consumer, so workers may take from it meanwhile. */
void
dp_neigh_requests_drop(void)
{
    struct rte_mbuf *m;
    while (rte_ring_dequeue(dp.ctrl_tx, (void **)&m) == 0) {
        dp.ctr->drop[DP_CTRL_ROW][DP_DROP_QUEUE_FLUSHED]++;
        rte_pktmbuf_free(m);
    }
    for (int i = 0; i < DP_MAX_NEIGH; i++)
        if (neigh[i].state == NEIGH_INCOMPLETE)
            neigh[i].asked = 0;
}

/* ARP answers heard and not yet taken are dropped (the VTEP changed, and
 * no worker has the old one any more): heard on the old uplink or subnet,
 * they are not about the new one's next hops */
void
dp_neigh_answers_drop(void)
{
    struct dp_slow_event ev[64];
    while (rte_ring_dequeue_burst_elem(dp.neigh_ring, ev, sizeof(ev[0]), 64, NULL) > 0)
        ;
}

/* entry i forgotten (its tunnels unresolved until it is asked again) */
static void
neigh_forget(int i)
{
    struct dp_neigh was = neigh[i];
    neigh[i].state = NEIGH_FREE;
    neigh_reindex();
    if (was.state >= NEIGH_VALID && dp_tunnels_refresh_nh(was.ip) < 0) {
        /* the tunnels still send to its MAC (no memory for new templates):
         * kept as it was, so that the next round forgets it again, rather
         * than a tunnel left resolved through an entry no round looks at */
        neigh[i] = was;
        neigh_reindex();
    }
}

/* ask for ip now if not asked within the retry time */
static void
neigh_ask(int i, uint64_t now, uint64_t retry)
{
    if (neigh[i].asked && now - neigh[i].asked < retry)
        return;
    neigh[i].asked = now;
    arp_request(neigh[i].ip);
}

/* valid entries older than the reachable time: asked again, forgotten when
 * nobody answers; those no tunnel uses: forgotten */
static void
neigh_age(uint64_t now, uint64_t retry)
{
    static uint8_t wanted[DP_MAX_NEIGH];
    uint64_t reach = ms_tsc(reachable_tsc_ms);
    /* (an entry forgotten below leaves the others' slots as they were) */
    neigh_mark_wanted(wanted);
    for (int i = 0; i < DP_MAX_NEIGH; i++) {
        struct dp_neigh *e = &neigh[i];
        if (e->state == NEIGH_INCOMPLETE && !wanted[i]) {
            neigh_forget(i);
            continue;
        }
        if (e->state != NEIGH_VALID || now - e->updated < reach)
            continue;
        if (!wanted[i] || e->probes >= DP_NEIGH_PROBES) {
            if (e->asked && now - e->asked < retry)
                continue; /* the last probe's answer may still come */
            neigh_forget(i);
            continue;
        }
        if (!e->asked || now - e->asked >= retry) {
            e->probes++;
            neigh_ask(i, now, retry);
        }
    }
}

int
dp_neigh_refresh(void)
{
    if (!dp_setup_done)
        return dp_fail(-EINVAL, "dp_setup not done");
    if (!dp_vconf_set || dp_vconf.static_nh || dp_vconf.uplink < 0)
        return 0;
    uint64_t now = rte_get_tsc_cycles();
    uint64_t back = RTE_MAX(ms_tsc(reachable_tsc_ms), ms_tsc(DP_NEIGH_LOCK_MS));
    int n = 0;
    for (int i = 0; i < DP_MAX_NEIGH; i++) {
        struct dp_neigh *e = &neigh[i];
        if (e->state == NEIGH_INCOMPLETE)
            e->asked = 0; /* asked by the next housekeeping */
        if (e->state != NEIGH_VALID)
            continue;
        /* stale from now on, its first probe sent: an answer with another
         * MAC is taken at once (no lock time), and neigh_age probes again
         * and forgets it as it does any stale entry */
        e->updated = now > back ? now - back : 0;
        e->probes = 1;
        e->asked = now;
        arp_request(e->ip);
        n++;
    }
    return n;
}

int
dp_neigh_flush(void)
{
    if (!dp_setup_done)
        return dp_fail(-EINVAL, "dp_setup not done");
    int n = 0;
    for (int i = 0; i < DP_MAX_NEIGH; i++)
        if (neigh[i].state != NEIGH_FREE) {
            /* a permanent entry is forgotten as a valid one is */
            if (neigh[i].state == NEIGH_PERMANENT)
                neigh[i].state = NEIGH_VALID;
            neigh_forget(i);
            n += neigh[i].state == NEIGH_FREE;
        }
    return n;
}

/*
 * Periodic control work, called by the control thread every few ms:
 * neighbours and learned MACs reported by workers, ARP requests for next
 * hops still unresolved (at most one per next hop per DP_ARP_RETRY_US),
 * neighbours re-resolved once they are older than the reachable time.
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
    /* an event that cannot be applied now (table full, out of memory) is
     * left: the workers report it again, with the neighbour's next ARP
     * (asked for below while a next hop is unresolved) or the remote MAC's
     * next frame (its VTEP is not known until learned). ARP first. */
    while ((n = rte_ring_dequeue_burst_elem(dp.neigh_ring, ev, sizeof(ev[0]), 64, NULL)) > 0) {
        for (unsigned i = 0; i < n; i++)
            neigh_heard(ev[i].ip, ev[i].mac);
        handled += (int)n;
    }
    while ((n = rte_ring_dequeue_burst_elem(dp.learn_ring, ev, sizeof(ev[0]), 64, NULL)) > 0) {
        for (unsigned i = 0; i < n; i++) {
            /* a report made before a change is not applied after it: not
             * once learning is off, nor to another network now at the
             * index its frame's network had (removed, an index reused) */
            const struct dp_net *rn = dp_net_get((int)ev[i].net);
            if (!rn || rn->vni != ev[i].vni || !(dp_vconf_set && dp_vconf.learning))
                continue;
            if (ev[i].kind == DP_EV_LEARN)
                (void)dp_fdb_learn((int)ev[i].net, ev[i].mac, ev[i].ip);
            else
                dp_learn_heard((int)ev[i].net, ev[i].mac, ev[i].ip);
        }
        handled += (int)n;
    }
    dp_learn_age();
    if (!dp_vconf_set || dp_vconf.static_nh || dp_vconf.uplink < 0)
        return handled;
    uint64_t now = rte_get_tsc_cycles();
    uint64_t retry = rte_get_tsc_hz() / 1000000 * DP_ARP_RETRY_US;
    /* next hops of unresolved tunnels: each asked once per retry time */
    int full = 0;
    for (int t = 0; t < DP_MAX_TUNNELS; t++) {
        struct dp_tunnel *tu = atomic_load(&dp.tunnels[t]);
        if (!tu || tu->resolved)
            continue;
        int i = neigh_find(tu->nh_ip);
        if (i < 0 && (full || (i = neigh_new(tu->nh_ip)) < 0)) {
            full = 1; /* every slot a wanted next hop: none this round, */
            continue; /* asked once one goes */
        }
        if (neigh[i].state == NEIGH_INCOMPLETE)
            neigh_ask(i, now, retry);
    }
    if (now - last_age >= ms_tsc(DP_NEIGH_AGE_EVERY_MS)) {
        last_age = now;
        neigh_age(now, retry);
    }
    return handled;
}
