/*
 * dp_express.c - the express lane's control side (bpf/express.bpf.c): its
 * programs loaded once, attached to pod ports, its tables and counters.
 *
 * Order matters, so that no frame is lost or carried twice: a port's
 * packet socket gets the socket filter and its veth the tc program while
 * the port is in no table (both let everything through then); only the
 * table entries turn the lane on for it, and they go first when it leaves.
 * All of it runs on the control thread; the workers never see the lane.
 */
#include <errno.h>
#include <net/if.h>
#include <sys/socket.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <linux/pkt_cls.h>

#include "dataplane.h"
#include "dp_error.h"
#include "afpacket.h"
#include "dp_control.h"
#include "dp_internal.h"
#include "dp_ftab.h"
#include "dp_qos.h"

#define EX_ETH_HLEN 14 /* what a port's MTU leaves out of a frame */

/* as in bpf/express.bpf.c */
struct ex_src {
    uint32_t net;
    uint32_t port;
    uint8_t mac[6];
    uint8_t spoof_on;
    uint8_t n4;
    uint32_t ip4[DP_EXPRESS_MAX_IP4];
    uint8_t n6;
    uint8_t pad;
    uint16_t max_len;
    uint32_t pad2;
    uint64_t ip6[DP_EXPRESS_MAX_IP6][2];
};
_Static_assert(sizeof(struct ex_src) == 56 + DP_EXPRESS_MAX_IP6 * 16, "as express.bpf.c lays it");

struct ex_dkey {
    uint32_t net;
    uint8_t mac[6];
    uint16_t pad;
};

struct ex_dst {
    uint32_t ifindex;
    uint32_t port;
};

struct ex_cnt {
    uint64_t rx_pkts, rx_bytes, tx_pkts, tx_bytes, enc_pkts, enc_bytes, errors, dec_pkts, to_core;
};
_Static_assert(sizeof(struct ex_cnt) == DP_EXPRESS_COUNTS * 8, "a uint64_t per count");

struct ex_rval {
    uint32_t ti;
    uint32_t pad;
    uint64_t seen; /* CLOCK_MONOTONIC ns */
};

struct ex_tslot {
    uint8_t hdr[DP_VXLAN_HDR_LEN];
    uint8_t ok;
    uint8_t pad;
    uint32_t csum_base;
};

struct ex_tun {
    uint32_t gen;
    uint32_t pad;
    struct ex_tslot slot[2]; /* slot[gen & 1] is the current one */
};
_Static_assert(sizeof(struct ex_tun) == 120, "as express.bpf.c lays it");

struct ex_net {
    uint32_t vni_be, plane, ok;
};

struct ex_up {
    uint32_t ifindex, port, on;
    int8_t dscp_plane[64];
    int16_t outer_tos[8];
    uint32_t dec_on;
    uint32_t vtep_ip; /* network order */
    uint8_t vtep_mac[6];
    uint16_t udp_port; /* network order */
    uint32_t dec_v6;
};
_Static_assert(DP_MAX_PLANES == 8, "ex_up.outer_tos has a slot per plane");

/* a tc filter of ours: priority and handle, so that detach finds it */
#define EX_TC_PRIO 1
#define EX_TC_HANDLE 0xd9

static struct {
    struct bpf_object *obj;
    int tc_fd, sock_fd;
    int src_fd, dst_fd, ctl_fd, cnt_fd;
    int rdst_fd, tun_fd, net_fd, up_fd; /* the remote side: the core's tables mirrored */
    int vni_fd;
    int lost_fd;                  /* frames the socket program refused and tc could not carry */
    int hend_fd;                  /* the pods' host ends (ex_hend) */
    uint32_t vni_of[DP_MAX_NETS]; /* each network's key in ex_vni (0: none) */
    int up_ifindex;               /* the uplink with the tc program (0: none) */
    int up_down;                  /* the uplink cannot carry frames (dp_express_uplink_carries) */
    uint32_t v6_decap;            /* the kernel sets skb->protocol on a decap (6.3) */
    int guard;                    /* carries nothing: the host ends' guard only */
    uint32_t kctx;                /* the programs check a frame's checksum offsets (ex_kctx) */
    int ncpu;
    /* each lane port's entry in ex_dst, as dp_express_port_set made it,
     * and whether it is out of the table while its interface cannot take
     * frames (dp_express_port_carries) */
    struct ex_dslot {
        struct ex_dkey k;
        struct ex_dst d;
        uint8_t set, down;
    } dst[DP_MAX_PORTS];
} ex = {.tc_fd = -1, .sock_fd = -1, .lost_fd = -1};

/* updates of remote MACs ex_rdst refused (full): the core carries their
 * frames (dp_express_remote_refused) */
static uint64_t rdst_refused;

/* is the running kernel major.minor or later? */
static int
kernel_at_least(int major, int minor)
{
    struct utsname u;
    int ma = 0, mi = 0;

    if (uname(&u) != 0 || sscanf(u.release, "%d.%d", &ma, &mi) != 2)
        return 0;
    return ma > major || (ma == major && mi >= minor);
}

static int
libbpf_quiet(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    (void)level, (void)fmt, (void)ap;
    return 0; /* failures are reported through dp_fail */
}

/* ------------------------------------------------ the remote side's mirror
 *
 * The lane encapsulates to remote VTEPs from copies of the core's tables,
 * kept by the control thread as it changes them (dp_fdb.c, dp_tunnel.c,
 * dp_net.c, dp_plane.c, dp_port.c call the hooks below; each
 * does nothing while the lane is not loaded). What a copy lacks - a MAC past
 * ex_rdst's size, a table update the kernel refused - the core carries: the
 * lane only ever takes less. */

/* tunnel ti as the core has it (gone or unresolved: not for the lane).
 * The new template goes into the slot no program reads, then gen moves to
 * it: two updates, each rewriting the rest of the value with the bytes it
 * had (express.bpf.c, struct ex_tun, says why). */
void
dp_express_tunnel(int ti)
{
    struct ex_tun v;
    uint32_t k = (uint32_t)ti;

    if (!ex.obj || ti < 0 || ti >= DP_MAX_TUNNELS)
        return;
    if (bpf_map_lookup_elem(ex.tun_fd, &k, &v) != 0)
        memset(&v, 0, sizeof(v)); /* only this thread writes it */
    struct ex_tslot *s = &v.slot[(v.gen + 1) & 1];
    memset(s, 0, sizeof(*s));
    const struct dp_tunnel *t = atomic_load(&dp.tunnels[ti]);
    if (t && t->resolved) {
        memcpy(s->hdr, t->hdr, sizeof(s->hdr));
        s->csum_base = t->csum_base;
        s->ok = 1;
    }
    if (bpf_map_update_elem(ex.tun_fd, &k, &v, BPF_ANY) != 0)
        return; /* the old template stays whole */
    v.gen++;
    (void)bpf_map_update_elem(ex.tun_fd, &k, &v, BPF_ANY);
}

/* network net as the core has it */
void
dp_express_net(int net)
{
    struct ex_net v;
    uint32_t k = (uint32_t)net;

    if (!ex.obj || net < 0 || net >= DP_MAX_NETS)
        return;
    memset(&v, 0, sizeof(v));
    const struct dp_net *n = dp_net_get(net);
    if (n) {
        v.vni_be = n->vni_be_word;
        v.plane = (uint32_t)n->plane;
        v.ok = 1;
    }
    (void)bpf_map_update_elem(ex.net_fd, &k, &v, BPF_ANY);
    /* the underlay side finds the network by its VNI */
    if (ex.vni_of[net] != 0 && ex.vni_of[net] != v.vni_be)
        (void)bpf_map_delete_elem(ex.vni_fd, &ex.vni_of[net]);
    ex.vni_of[net] = 0;
    if (n && bpf_map_update_elem(ex.vni_fd, &v.vni_be, &k, BPF_ANY) == 0)
        ex.vni_of[net] = v.vni_be;
}

/* the uplink's rx socket and interface get the lane's filter and tc
 * program (both let everything through until ex_up says dec_on); 0 or
 * < 0 (the lane then takes nothing from the underlay) */
static int
ex_uplink_hook(struct dp_port *p, int ifindex)
{
    if (ex.up_ifindex == ifindex && p->ex_filter)
        return 0;
    /* the node's frames on the uplink are its own: not a host end's (an
     * entry left by a deleted pod veth whose index the uplink now has) */
    (void)bpf_map_delete_elem(ex.hend_fd, &ifindex);
    if (dp_express_refilter(p) != 0 || dp_express_attach(ifindex) != 0)
        return -1;
    p->ex_filter = 1;
    ex.up_ifindex = ifindex;
    return 0;
}

/* the uplink (an AF_PACKET port without a shaper, or none for the lane) and
 * the planes' DSCP map and marking; the VTEP, for the underlay side (an
 * AF_PACKET uplink, shaped or not: its shaper is on the way out) */
void
dp_express_uplink(void)
{
    struct ex_up v;
    uint32_t k = 0;

    if (!ex.obj)
        return;
    memset(&v, 0, sizeof(v));
    int up = dp_vconf_set ? dp_vconf.uplink : -1;
    struct dp_port *p = up >= 0 ? dp_port_get(up) : NULL;
    if (p && p->driver == DP_DRV_AFPACKET && !ex.guard) {
        int ifindex = dp_afp_ifindex(p->afp);
        v.ifindex = (uint32_t)ifindex;
        v.port = (uint32_t)up;
        v.on = ifindex > 0 && !p->qos && !ex.up_down;
        v.dec_on = ifindex > 0 && ex_uplink_hook(p, ifindex) == 0;
        v.vtep_ip = rte_cpu_to_be_32(dp_vconf.ip);
        memcpy(v.vtep_mac, dp_vconf.mac, 6);
        v.udp_port = rte_cpu_to_be_16(dp_vconf.udp_port);
        v.dec_v6 = ex.v6_decap;
    }
    for (int i = 0; i < 64; i++)
        v.dscp_plane[i] = __atomic_load_n(&dp_qg.dscp_plane[i], __ATOMIC_RELAXED);
    for (int i = 0; i < DP_MAX_PLANES; i++)
        v.outer_tos[i] = (int16_t)__atomic_load_n(&dp_qg.plane[i].outer_tos, __ATOMIC_RELAXED);
    (void)bpf_map_update_elem(ex.up_fd, &k, &v, BPF_ANY);
}

int
dp_express_uplink_carries(int carries)
{
    if (ex.up_down != !carries) {
        ex.up_down = !carries;
        dp_express_uplink();
    }
    return 0;
}

int
dp_express_uplink_release(void)
{
    struct ex_up v;
    uint32_t k = 0;

    if (!ex.obj)
        return 0;
    if (bpf_map_lookup_elem(ex.up_fd, &k, &v) == 0 && v.dec_on) {
        v.dec_on = 0;
        if (bpf_map_update_elem(ex.up_fd, &k, &v, BPF_ANY) < 0)
            return dp_fail(-errno, "express lane: the uplink's table: %m");
    }
    int ifindex = ex.up_ifindex;
    ex.up_ifindex = 0;
    return ifindex > 0 ? dp_express_detach(ifindex) : 0;
}

/* the lane's key of FDB key `key` (network in the top 16 bits, MAC below) */
static struct ex_dkey
ex_dkey_of(uint64_t key)
{
    struct ex_dkey k;

    memset(&k, 0, sizeof(k));
    k.net = (uint32_t)(key >> 48);
    memcpy(k.mac, &key, 6);
    return k;
}

/* FDB entry key := val (DP_FV; 0 when it went) */
void
dp_express_fdb(uint64_t key, uint32_t val)
{
    if (!ex.obj)
        return;
    struct ex_dkey k = ex_dkey_of(key);
    if (val != 0 && DP_FV_KIND(val) == DP_FDB_REMOTE) {
        struct ex_rval r = {.ti = DP_FV_TARGET(val)};
        /* a full table leaves the MAC to the core; so does any refusal, the
         * MAC's old entry (its VTEP before a move) removed with it */
        if (bpf_map_update_elem(ex.rdst_fd, &k, &r, BPF_ANY) < 0) {
            (void)bpf_map_delete_elem(ex.rdst_fd, &k);
            rdst_refused++;
        }
    } else {
        (void)bpf_map_delete_elem(ex.rdst_fd, &k);
    }
}

/* how long ago (ms) the lane last carried a frame from remote MAC key
 * (an FDB key) from the underlay, or -1 if it has not (or has no lane):
 * the core's ageing counts that as the MAC confirmed (dp_learn.c) */
int64_t
dp_express_seen_ms(uint64_t key)
{
    struct ex_rval r;
    struct timespec ts;

    if (!ex.obj)
        return -1;
    struct ex_dkey k = ex_dkey_of(key);
    if (bpf_map_lookup_elem(ex.rdst_fd, &k, &r) < 0 || r.seen == 0 ||
        clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return -1;
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
    return now > r.seen ? (int64_t)((now - r.seen) / 1000000) : 0;
}

/* everything, when the lane is loaded (the tables may be full already) */
static void
ex_mirror_all(void)
{
    uint32_t pos = 0, val;
    uint64_t key;

    dp_express_uplink();
    for (int i = 0; i < DP_MAX_NETS; i++)
        dp_express_net(i);
    for (int i = 0; i < DP_MAX_TUNNELS; i++)
        dp_express_tunnel(i);
    if (dp.fdb == NULL)
        return; /* before dp_setup: no table yet */
    while (dp_ftab_next(&pos, &key, &val))
        if (DP_FV_KIND(val) == DP_FDB_REMOTE)
            dp_express_fdb(key, val);
}

/* whether the running kernel has kfunc `name` (in its BTF) */
static int
kernel_has_kfunc(const char *name)
{
    struct btf *vmlinux = btf__load_vmlinux_btf();

    if (vmlinux == NULL || libbpf_get_error(vmlinux))
        return 0;
    int id = btf__find_by_name_kind(vmlinux, name, BTF_KIND_FUNC);
    btf__free(vmlinux);
    return id > 0;
}

/* the programs' constant ex_kctx, set before the load: whether the kernel
 * has bpf_cast_to_kern_ctx; a plain build (no constants) has no use for it */
static int
ex_set_rodata(struct bpf_object *obj)
{
    struct bpf_map *m;

    ex.kctx = 0;
    bpf_object__for_each_map(m, obj)
    {
        size_t size = 0;
        if (strstr(bpf_map__name(m), ".rodata") == NULL)
            continue;
        if (bpf_map__initial_value(m, &size) == NULL || size != sizeof(ex.kctx))
            return -EINVAL;
        ex.kctx = (uint32_t)dp_express_kernel_checks();
        return bpf_map__set_initial_value(m, &ex.kctx, sizeof(ex.kctx));
    }
    return 0;
}

/* (the kernel's BTF read once: the object's choice and its load both ask) */
int
dp_express_kernel_checks(void)
{
    static int has = -1;

    if (has < 0)
        has = kernel_has_kfunc("bpf_cast_to_kern_ctx");
    return has;
}

int
dp_express_open(const char *path, int carry)
{
    struct bpf_object *obj;
    int ret;

    if (ex.obj)
        return 0;
    libbpf_set_print(libbpf_quiet);
    obj = bpf_object__open_file(path, NULL);
    if (!obj) {
        int err = -errno;
        char why[128];
        /* libbpf's own codes (4000 and up) are not errno's: its words */
        libbpf_strerror(err, why, sizeof(why));
        return dp_fail(err, "express lane: %s: %s", path, why);
    }
    ret = ex_set_rodata(obj);
    if (ret < 0) {
        bpf_object__close(obj);
        return dp_fail(ret, "express lane: %s: its constants (.rodata) are not the lane's", path);
    }
    ret = bpf_object__load(obj);
    if (ret < 0) {
        char why[128];
        libbpf_strerror(ret, why, sizeof(why));
        bpf_object__close(obj);
        return dp_fail(ret, "express lane: loading %s into the kernel: %s", path, why);
    }
    ex.tc_fd = bpf_program__fd(bpf_object__find_program_by_name(obj, "ex_tc"));
    ex.sock_fd = bpf_program__fd(bpf_object__find_program_by_name(obj, "ex_sock"));
    ex.src_fd = bpf_object__find_map_fd_by_name(obj, "ex_src");
    ex.dst_fd = bpf_object__find_map_fd_by_name(obj, "ex_dst");
    ex.ctl_fd = bpf_object__find_map_fd_by_name(obj, "ex_ctl");
    ex.cnt_fd = bpf_object__find_map_fd_by_name(obj, "ex_cnt");
    ex.rdst_fd = bpf_object__find_map_fd_by_name(obj, "ex_rdst");
    ex.tun_fd = bpf_object__find_map_fd_by_name(obj, "ex_tun");
    ex.net_fd = bpf_object__find_map_fd_by_name(obj, "ex_net");
    ex.up_fd = bpf_object__find_map_fd_by_name(obj, "ex_up");
    ex.vni_fd = bpf_object__find_map_fd_by_name(obj, "ex_vni");
    ex.lost_fd = bpf_object__find_map_fd_by_name(obj, "ex_lost");
    ex.hend_fd = bpf_object__find_map_fd_by_name(obj, "ex_hend");
    ex.ncpu = libbpf_num_possible_cpus();
    if (ex.tc_fd < 0 || ex.sock_fd < 0 || ex.src_fd < 0 || ex.dst_fd < 0 || ex.ctl_fd < 0 ||
        ex.cnt_fd < 0 || ex.rdst_fd < 0 || ex.tun_fd < 0 || ex.net_fd < 0 || ex.up_fd < 0 ||
        ex.vni_fd < 0 || ex.lost_fd < 0 || ex.hend_fd < 0 || ex.ncpu <= 0) {
        bpf_object__close(obj);
        return dp_fail(-EINVAL, "express lane: %s lacks a program or table of the lane", path);
    }
    ex.obj = obj;
    ex.v6_decap = kernel_at_least(6, 3);
    memset(ex.vni_of, 0, sizeof(ex.vni_of));
    memset(ex.dst, 0, sizeof(ex.dst));
    ex.up_ifindex = 0;
    ex.guard = !carry;
    uint32_t one = 1, g = (uint32_t)ex.guard;
    if (bpf_map_update_elem(ex.ctl_fd, &one, &g, BPF_ANY) < 0) {
        int err = -errno;
        bpf_object__close(obj);
        ex.obj = NULL;
        return dp_fail(err, "express lane: its switch: %m");
    }
    ex_mirror_all();
    return dp_express_enable(1);
}

int
dp_express_close(void)
{
    if (ex.obj)
        bpf_object__close(ex.obj); /* the kernel keeps programs still attached */
    ex.obj = NULL;
    ex.tc_fd = ex.sock_fd = -1;
    ex.up_ifindex = 0;
    return 0;
}

int
dp_express_remote(void)
{
    return ex.obj != NULL && !ex.guard && ex.kctx;
}

uint64_t
dp_express_remote_refused(void)
{
    return rdst_refused;
}

int
dp_express_loaded(void)
{
    return ex.obj == NULL ? 0 : ex.guard ? 2 : 1;
}

int
dp_express_enable(int on)
{
    uint32_t k = 0, v = on != 0 && !ex.guard;

    if (!ex.obj)
        return dp_fail(-ENOENT, "express lane: not loaded");
    if (bpf_map_update_elem(ex.ctl_fd, &k, &v, BPF_ANY) < 0)
        return dp_fail(-errno, "express lane: switching it %s: %m", on ? "on" : "off");
    return 0;
}

int
dp_express_refilter(struct dp_port *p)
{
    int fd = dp_afp_rx_fd(p->afp);

    if (!ex.obj)
        return dp_fail(-ENOENT, "express lane: not loaded");
    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_BPF, &ex.sock_fd, sizeof(ex.sock_fd)) < 0)
        return dp_fail(-errno, "express lane: %s: socket filter: %m", p->name);
    return 0;
}

int
dp_express_sock_filter(int port)
{
    struct dp_port *p = dp_port_get(port);

    if (!ex.obj)
        return dp_fail(-ENOENT, "express lane: not loaded");
    if (!p || p->driver != DP_DRV_AFPACKET)
        return dp_fail(-EINVAL, "express lane: port %d is not an AF_PACKET port", port);
    if (ex.guard)
        return 0; /* nothing to refuse: the core takes every frame */
    int ret = dp_express_refilter(p);
    if (ret != 0)
        return ret;
    p->ex_filter = 1; /* read by the control thread only (a reopen) */
    return 0;
}

static void
tc_hook(struct bpf_tc_hook *h, int ifindex)
{
    memset(h, 0, sizeof(*h));
    h->sz = sizeof(*h);
    h->ifindex = ifindex;
    h->attach_point = BPF_TC_INGRESS;
}

int
dp_express_attach(int ifindex)
{
    struct bpf_tc_hook h;
    struct bpf_tc_opts o;
    char name[IF_NAMESIZE] = "?";
    int ret;

    if (!ex.obj)
        return dp_fail(-ENOENT, "express lane: not loaded");
    (void)if_indextoname((unsigned)ifindex, name);
    tc_hook(&h, ifindex);
    ret = bpf_tc_hook_create(&h);
    if (ret < 0 && ret != -EEXIST)
        return dp_fail(ret, "express lane: %s: clsact qdisc: %s", name, strerror(-ret));
    memset(&o, 0, sizeof(o));
    o.sz = sizeof(o);
    o.prog_fd = ex.tc_fd;
    o.priority = EX_TC_PRIO;
    o.handle = EX_TC_HANDLE;
    o.flags = BPF_TC_F_REPLACE;
    ret = bpf_tc_attach(&h, &o);
    if (ret < 0)
        return dp_fail(ret, "express lane: %s: tc ingress program: %s", name, strerror(-ret));
    return 0;
}

int
dp_express_hostend(int ifindex, int on)
{
    uint32_t k = (uint32_t)ifindex, v = 1;

    if (!ex.obj)
        return dp_fail(-ENOENT, "express lane: not loaded");
    if (on && bpf_map_update_elem(ex.hend_fd, &k, &v, BPF_ANY) < 0) {
        if (errno == E2BIG)
            return dp_fail(-ENOSPC,
                           "express lane: host end %d: its table of host ends is full (%d)",
                           ifindex, 4 * DP_MAX_PORTS);
        return dp_fail(-errno, "express lane: host end %d: %m", ifindex);
    }
    if (!on && bpf_map_delete_elem(ex.hend_fd, &k) < 0 && errno != ENOENT)
        return dp_fail(-errno, "express lane: host end %d: %m", ifindex);
    return 0;
}

int
dp_express_detach(int ifindex)
{
    struct bpf_tc_hook h;
    struct bpf_tc_opts o;
    int ret;

    /* also without the lane loaded (a program a killed service left):
     * libbpf's own messages (no qdisc here) would go to stderr, the log */
    libbpf_set_print(libbpf_quiet);
    tc_hook(&h, ifindex);
    memset(&o, 0, sizeof(o));
    o.sz = sizeof(o);
    o.priority = EX_TC_PRIO;
    o.handle = EX_TC_HANDLE;
    ret = bpf_tc_detach(&h, &o);
    if (ret < 0 && ret != -ENOENT && ret != -ENODEV && ret != -EINVAL)
        return dp_fail(ret, "express lane: ifindex %d: removing the tc program: %s", ifindex,
                       strerror(-ret));
    return 0;
}

int
dp_express_port_set(int ifindex, int net, int port, const uint8_t *mac, int mtu, int spoof_on,
                    const uint32_t *ip4, int n4, const uint8_t *ip6, int n6)
{
    struct ex_src s;
    struct ex_dkey k;
    struct ex_dst d = {.ifindex = (uint32_t)ifindex, .port = (uint32_t)port};
    uint32_t key = (uint32_t)ifindex;

    if (!ex.obj)
        return dp_fail(-ENOENT, "express lane: not loaded");
    if (n4 < 0 || n4 > DP_EXPRESS_MAX_IP4)
        return dp_fail(-E2BIG, "express lane: port %d: %d addresses, at most %d", port, n4,
                       DP_EXPRESS_MAX_IP4);
    if (n6 < 0 || n6 > DP_EXPRESS_MAX_IP6)
        return dp_fail(-E2BIG, "express lane: port %d: %d IPv6 addresses, at most %d", port, n6,
                       DP_EXPRESS_MAX_IP6);
    if (port < 0 || port >= DP_MAX_PORTS || net < 0)
        return dp_fail(-EINVAL, "express lane: port %d network %d out of range", port, net);
    if (mtu < 68 || mtu > UINT16_MAX - EX_ETH_HLEN)
        return dp_fail(-EINVAL, "express lane: port %d: MTU %d out of range 68..%d", port, mtu,
                       UINT16_MAX - EX_ETH_HLEN);
    memset(&s, 0, sizeof(s));
    s.net = (uint32_t)net;
    s.port = (uint32_t)port;
    memcpy(s.mac, mac, 6);
    s.spoof_on = spoof_on != 0;
    s.max_len = (uint16_t)(mtu + EX_ETH_HLEN);
    s.n4 = (uint8_t)n4;
    memcpy(s.ip4, ip4, sizeof(uint32_t) * (size_t)n4);
    s.n6 = (uint8_t)n6;
    memcpy(s.ip6, ip6, 16 * (size_t)n6);
    memset(&k, 0, sizeof(k));
    k.net = (uint32_t)net;
    memcpy(k.mac, mac, 6);
    struct ex_dslot *slot = &ex.dst[port];
    if (slot->set && (slot->d.ifindex != d.ifindex || memcmp(&slot->k, &k, sizeof(k)) != 0))
        slot->down = 0; /* another interface or key in that slot: joins carrying */
    /* a destination before a source: others reach it before it sends (not
     * while its interface cannot take frames: the core's then) */
    if (slot->down)
        (void)bpf_map_delete_elem(ex.dst_fd, &k);
    else if (bpf_map_update_elem(ex.dst_fd, &k, &d, BPF_ANY) < 0)
        return dp_fail(-errno, "express lane: port %d: destination table: %m", port);
    if (bpf_map_update_elem(ex.src_fd, &key, &s, BPF_ANY) < 0) {
        int err = -errno;
        (void)bpf_map_delete_elem(ex.dst_fd, &k);
        slot->set = slot->down = 0;
        return dp_fail(err, "express lane: port %d: source table: %s", port, strerror(-err));
    }
    slot->k = k;
    slot->d = d;
    slot->set = 1;
    return 0;
}

int
dp_express_port_carries(int port, int carries)
{
    if (!ex.obj)
        return 0;
    if (port < 0 || port >= DP_MAX_PORTS)
        return dp_fail(-EINVAL, "express lane: port %d out of range", port);
    struct ex_dslot *slot = &ex.dst[port];
    if (!slot->set || slot->down == !carries)
        return 0; /* not in the lane, or no change */
    if (!carries) {
        slot->down = 1;
        if (bpf_map_delete_elem(ex.dst_fd, &slot->k) < 0 && errno != ENOENT)
            return dp_fail(-errno, "express lane: port %d: destination table: %m", port);
        return 0;
    }
    if (bpf_map_update_elem(ex.dst_fd, &slot->k, &slot->d, BPF_ANY) < 0)
        return dp_fail(-errno, "express lane: port %d: destination table: %m", port);
    slot->down = 0;
    return 0;
}

int
dp_express_port_clear(int ifindex, int net, const uint8_t *mac)
{
    struct ex_dkey k;
    uint32_t key = (uint32_t)ifindex;

    if (!ex.obj)
        return 0;
    memset(&k, 0, sizeof(k));
    k.net = (uint32_t)net;
    memcpy(k.mac, mac, 6);
    (void)bpf_map_delete_elem(ex.src_fd, &key);
    (void)bpf_map_delete_elem(ex.dst_fd, &k);
    for (int i = 0; i < DP_MAX_PORTS; i++)
        if (ex.dst[i].set && ex.dst[i].d.ifindex == (uint32_t)ifindex &&
            memcmp(&ex.dst[i].k, &k, sizeof(k)) == 0)
            ex.dst[i].set = ex.dst[i].down = 0;
    return 0;
}

int
dp_express_counts(int port, uint64_t out[DP_EXPRESS_COUNTS])
{
    struct ex_cnt c[ex.ncpu > 0 ? ex.ncpu : 1];
    uint32_t k = (uint32_t)port;

    memset(out, 0, DP_EXPRESS_COUNTS * sizeof(uint64_t));
    if (!ex.obj)
        return 0;
    if (port < 0 || port >= DP_MAX_PORTS)
        return dp_fail(-EINVAL, "express lane: port %d out of range", port);
    if (bpf_map_lookup_elem(ex.cnt_fd, &k, c) < 0)
        return dp_fail(-errno, "express lane: counters of port %d: %m", port);
    for (int i = 0; i < ex.ncpu; i++) {
        out[0] += c[i].rx_pkts;
        out[1] += c[i].rx_bytes;
        out[2] += c[i].tx_pkts;
        out[3] += c[i].tx_bytes;
        out[4] += c[i].enc_pkts;
        out[5] += c[i].enc_bytes;
        out[6] += c[i].errors;
        out[7] += c[i].dec_pkts;
        out[8] += c[i].to_core;
    }
    return 0;
}

int
dp_express_counts_reset(int port)
{
    struct ex_cnt c[ex.ncpu > 0 ? ex.ncpu : 1];
    uint32_t k = (uint32_t)port;

    if (!ex.obj || port < 0 || port >= DP_MAX_PORTS)
        return 0;
    memset(c, 0, sizeof(c));
    if (bpf_map_update_elem(ex.cnt_fd, &k, c, BPF_ANY) < 0)
        return dp_fail(-errno, "express lane: counters of port %d: %m", port);
    return 0;
}

int
dp_express_lost(uint64_t *out)
{
    uint64_t c[ex.ncpu > 0 ? ex.ncpu : 1];
    uint32_t k = 0;

    *out = 0;
    if (!ex.obj)
        return 0;
    if (bpf_map_lookup_elem(ex.lost_fd, &k, c) < 0)
        return dp_fail(-errno, "express lane: frames lost to a change: %m");
    for (int i = 0; i < ex.ncpu; i++)
        *out += c[i];
    return 0;
}
