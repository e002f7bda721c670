"""What a user sees between pods: ping, TCP and small-datagram UDP through
the node service, against the kernel's own bridge and bridge + vxlan paths
built on the same kind of veths, in the same run.

    python -m bench pods [--seconds S] [--pings N] [--runs N] [--quiet]
                         [--wire-underlay] [--idle-sleep-us US] [--two-nodes]
                         [--only tcp_vxlan|tcp_vxlan_rev|remote]
                         [--kernel-driver af_xdp] [--no-tunnel-gso] [--cpu-latency-us US]
                         [--udp-rates KPPS,KPPS,..] [--ipv6]
    ->  RESULT name=pods rtt_ratio=<ours pod-pod / bridge avg RTT>
        tcp_local_ratio=<ours pod-pod / bridge TCP>
        tcp_vxlan_ratio=<ours pod->vtep host / kernel vxlan TCP>
        tcp_vxlan_back_ratio=<ours vtep host->pod / kernel vxlan TCP the other way>
        rtt_remote_ratio=<ours pod->pod on another node / kernel vxlan avg RTT>
        tcp_remote_ratio=<the same, TCP>  udp64_remote_ratio=<the same, received pps>
        udp64_ratio=<ours pod->vtep host / kernel vxlan received pps>
        udp64_delivered_ratio=<the same, received + refused by the full socket>
        ours_rtt_us=.. ours_rtt_p99_us=.. ... (every path's raw figures)
        (with --udp-rates: udp64_paced=<kpps>:<ours/kernel vxlan received>,..)
        (with --ipv6: every test over IPv6, each pod's address the counterpart
        of its IPv4 one in fd00:50::/64, the service's network dual-stack;
        ends ipv6=on)
        (with --idle-sleep-us: idle_sleep_us=.. ours_idle_cpu=<share of a CPU
        the service's worker took over 2 s without traffic, before the runs;
        said on stderr in every run>)

Set-up (network namespaces named ``podb<pid>-*``, made for the run and
removed at the end, also on error, Ctrl-C or SIGTERM):

    ours     pa, pb: pods added through the service's API (network net1,
             VNI 101, 192.168.50.0/24, one veth each, as the service makes
             them: MTU 1450, offloads as the service sets them)
             node: ``python -m dataplane.cli run -c node.yaml`` (fallback
             mode, lcores [gen CPU, fwd CPU]: control thread, one worker),
             VTEP 10.99.0.1 on uplink up0 ==veth== a bridge in the ul ns,
             the host and node2 static remotes of net1
             node2: a second node service the same way (VTEP 10.99.0.3, its
             worker on the fwd CPU too, sleeping when idle - idle_sleep_us
             1000 - so as not to take that CPU from node's worker; a frame
             that finds it asleep waits for it to wake; a store of its own: pod c at the
             fixed address 192.168.50.30; each node learns the other's
             pods' MACs from the underlay)
             host: 10.99.0.2 on eth0 (on the ul bridge), the kernel's vxlan device (VNI 101,
             dstport 4789, FDB 00:00:00:00:00:00 -> 10.99.0.1) in a
             bridge with vm0 ==veth== eth0 of the vm ns (192.168.50.250,
             MTU 1450): a VM or container behind a kernel VTEP
    bridge   ba, bb ==veth== a Linux bridge in bnode (the docker-bridge
             class), MTU 1450 like the pods
    vxlan    ka ==veth== bridge + vxlan in k1 (10.99.0.1) ==underlay veth==
             k2 (10.99.0.2) bridge + vxlan ==veth== kb: two kernel nodes
             (the flannel / docker-overlay class), built as the host above

Paths measured: ours pod -> pod (same node), ours pod -> the vm behind the
kernel VTEP, ours pod -> pod on the other node (a -> c), bridge, vxlan.
Ours crosses one bridge more on the underlay than the kernel's two nodes
(a direct veth). Per path: ``ping`` (``--pings`` echoes at 2 ms
intervals after a few unmeasured ones that resolve ARP; avg and p99 of the
replies), ``iperf3`` TCP (``--seconds``, the receiver's figure), the same
the other way (``iperf3 -R``: the far end sends; ``_tcp_back_gbps``) and
``iperf3`` UDP with 64-byte payloads at full speed (``-b 0``; the packets/s
the server received). iperf3 needs a TCP control connection, so a path
whose TCP does not work shows no UDP either. Each UDP test also says what
the client sent and what the receiving socket refused with its buffer full
(the server namespace's ``RcvbufErrors``): at full speed the server, on the
sender's CPU, takes only part of what arrives. What a path brought to the
socket, taken or refused, is ``_udp64_delivered_pps`` and
``udp64_delivered_ratio``: the path's own rate, the receiver apart.

CPUs: every ping and iperf3 process runs on ``--gen-cpu`` (default 1); the
service's worker lcore on ``--fwd-cpu`` (default 0), its control thread on
the generator's CPU. The kernel paths forward in the senders' softirq
context (on the generator's CPU, and wherever the receive softirq lands).

Ours hands a pod's TCP super-frame to the kernel whole, VXLAN-encapsulated,
through the uplink's tunnel tap (tunnel GSO, the service's default), as the
kernel's own VTEP does: over the underlay veth both pass whole VXLAN
super-frames of up to 64 KB, which no wire between two machines carries.
``--wire-underlay`` makes both underlay veths segment them
(``tx-udp_tnl-segmentation off`` on the kernel nodes' eth0 and on our
uplink up0), so both underlays carry MTU-sized frames. Every bridge namespace (bnode, k1, k2 and the
host) has br_netfilter's ``bridge-nf-call-*`` off.

``--kernel-driver af_xdp`` makes the service read the pods' veths with
DPDK's ``net_af_xdp`` instead of its own AF_PACKET driver (the uplink
stays AF_PACKET); the RESULT line then says ``kernel_driver=af_xdp``.

The service runs with its default ``express_lane: auto``: unicast IP
between the two pods goes from one pod's veth into the other's namespace
in the kernel (a tc program and ``bpf_redirect_peer``), not through the
core. ``--no-express-lane`` sets ``express_lane: false``, every frame
through the core. The RESULT line says ``express_lane=on`` or ``off``, as
the service's status reported it.

``--no-tunnel-gso`` sets the service's ``vtep.tunnel_gso: false``: a pod's
super-frames to the underlay are cut before encapsulation, as where the
kernel has no UDP-tunnel GSO for taps (before 6.17); the RESULT line then
says ``tunnel_gso=off``.

``--idle-sleep-us`` sets the service's ``idle_sleep_us``: its worker
sleeps when idle, woken by a frame on a kernel port (csrc/dp_idle.c); the
pings, 2 ms apart, then each find it asleep.

``--cpu-latency-us`` sets the service's ``cpu_latency_us``: while it runs
the kernel keeps every idle CPU out of idle states slower to leave than
that (0: idle CPUs poll), for the kernel paths measured beside it too; the
RESULT line then says ``cpu_latency_us=..``.

``--udp-rates 150,200,250,300`` also offers 64-byte UDP at those fixed
rates (kpps, ``iperf3 -b``), in every run, from pod a to the host behind
the kernel VTEP and on the kernel's bridge + vxlan path, and prints what
each received: at full speed (``-b 0``) the figure is how a receiver
sharing the sender's CPU copes with more than it can take, which paced
traffic (media) never offers. The RESULT line adds ``udp64_paced=``, one
``<kpps>:<ratio>`` per rate (medians; ``nan`` where the kernel path
received nothing).

``--peer-csum-off`` switches tx checksum offload off on the eth0 of the
host behind the kernel VTEP, so its frames carry finished checksums: a
diagnosis of which failures the checksum-partial frames of a kernel peer
cause, not a set-up a user has.

A measurement that fails (no reply, a connection that never completes)
says why and is left out of the medians (a path that failed in every run
shows ``nan``), so that a failed run of either side moves no ratio; the
RESULT line says how many failed (``failed=N failed_what=path:test,...``)
and the exit code is then 1. A set-up that fails (the service does not
start) exits 1 without a RESULT line.

Runs repeat the four paths ``--runs`` times; figures are medians.
"""

import argparse
import ipaddress
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Tuple

from .common import (
    BenchError,
    add_run_options,
    check_cpu_options,
    cpu_ticks,
    file_tail,
    fmt_runs,
    median,
    parse_args,
    proc_stat,
    quiet_netns,
    ratio,
    run_cmd,
    run_main,
    say,
    say_machine,
    show,
    start_node_service,
    stop_node_service,
)

PATHS = ("ours_local", "ours_vtep", "ours_remote", "bridge", "vxlan")
LABEL = {
    "ours_local": "ours, pod -> pod (same node)",
    "ours_vtep": "ours, pod -> host behind kernel VTEP",
    "ours_remote": "ours, pod -> pod on another node",
    "bridge": "kernel bridge",
    "vxlan": "kernel bridge + vxlan",
}
FIGURES = ("rtt_us", "rtt_p99_us", "tcp_gbps", "tcp_rev_gbps", "udp64_pps", "udp64_delivered_pps")
TESTS = ("ping", "tcp", "tcp_rev", "udp64")
TEST_FIGURES = {
    "ping": ("rtt_us", "rtt_p99_us"),
    "tcp": ("tcp_gbps",),
    "tcp_rev": ("tcp_rev_gbps",),
    "udp64": ("udp64_pps", "udp64_delivered_pps"),
}
# --only: a subset of the paths and tests, to iterate on one figure
ONLY = {
    "tcp_vxlan": (("ours_vtep", "vxlan"), ("tcp",)),
    "tcp_vxlan_rev": (("ours_vtep", "vxlan"), ("tcp_rev",)),
    "remote": (("ours_remote", "vxlan"), TESTS),  # with --two-nodes
}
PACED_PATHS = ("ours_vtep", "vxlan")  # --udp-rates: ours to a kernel VTEP, the kernel's own
VNI = 101
SUBNET, GATEWAY = "192.168.50.0/24", "192.168.50.1"
VM_IP = "192.168.50.250"
KA_IP, KB_IP = "192.168.50.11", "192.168.50.12"  # the kernel paths' pods
NODE_VTEP, HOST_VTEP, NODE2_VTEP = "10.99.0.1", "10.99.0.2", "10.99.0.3"
POD_C_IP = "192.168.50.30"  # the second node's pod: a fixed address (no shared store)
# --ipv6: every pod's IPv6 address is its IPv4 host part in SUBNET6, as the
# service gives it on a dual-stack network (NetworkConfig.ip6_of)
SUBNET6, GATEWAY6 = "fd00:50::/64", "fd00:50::1"
NODE2_IDLE_SLEEP_US = 1000  # the second node's worker sleeps when idle (see setup_node2)
POD_MTU = 1450  # underlay 1500 - VXLAN's 50, as the service sets it
POD_SPEC = {"pod_type": "it", "network_plane": ["std"], "networks": {"std": "net1"}}
PING_INTERVAL = "0.002"
TNL_SEG_OFF = ("tx-udp_tnl-segmentation", "off", "tx-udp_tnl-csum-segmentation", "off")


def _children(pid: int) -> list:
    """Every descendant of pid (from /proc/*/stat)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parent[int(d)] = int(proc_stat(f"/proc/{d}/stat")[1])
            except OSError:
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


class PathFailed(Exception):
    """One measurement of one path did not work (it counts as 0)."""


class Lab:
    """The namespaces, links and the service process; close() removes them
    all, whatever happened."""

    def __init__(self, args, workdir: str):
        self.args = args
        self.workdir = workdir
        self.tag = f"podb{os.getpid()}"
        self._made_ns = []
        self.service = None
        self.service_log = os.path.join(workdir, "service.log")
        self.sock = os.path.join(workdir, "api.sock")
        # the second node of ours (path ours_remote)
        self.service2 = None
        self.service2_log = os.path.join(workdir, "service2.log")
        self.sock2 = os.path.join(workdir, "api2.sock")
        self.ips = {}  # path -> (client ns, server ns, server IP)
        self.express_lane = False  # as the service's status says, once it runs
        # iperf3 takes whole seconds (and -t 0 means forever)
        self.iperf_seconds = max(1, math.ceil(args.seconds))

    def ns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def ip(self, ns, *args, what="ip"):
        return run_cmd(["ip", "-n", ns, *args], what)

    def nsexec(self, ns, *cmd, cpu=None):
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        return ["ip", "netns", "exec", ns, *pin, *cmd]

    def add_ns(self, name: str) -> str:
        ns = self.ns(name)
        run_cmd(["ip", "netns", "add", ns], "creating namespaces")
        self._made_ns.append(ns)
        quiet_netns(ns)
        return ns

    def veth(self, ns_a, if_a, ns_b, if_b, mtu=None):
        self.ip(ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
        for ns, i in ((ns_a, if_a), (ns_b, if_b)):
            self.ip(ns, "link", "set", i, *(["mtu", str(mtu)] if mtu else []), "up")

    def pod_addr(self, ns, ifname, ip_cidr):
        self.ip(ns, "addr", "add", ip_cidr, "dev", ifname)
        if self.args.ipv6 and ipaddress.ip_interface(ip_cidr).ip in ipaddress.ip_network(SUBNET):
            # a pod of the kernel's paths (or the host behind the kernel
            # VTEP): IPv6 on for its interface, its address usable at once
            run_cmd(
                self.nsexec(ns, "sysctl", "-qw", f"net.ipv6.conf.{ifname}.disable_ipv6=0"),
                "IPv6 on",
            )
            self.ip(ns, "addr", "add", f"{v6(ip_cidr.split('/')[0])}/64", "dev", ifname, "nodad")

    def target(self, ip: str) -> str:
        """The address a path's tests go to: ``ip``, or with --ipv6 its IPv6
        counterpart."""
        return v6(ip) if self.args.ipv6 else ip

    # ------------------------------------------------------------- set-up
    def kernel_vtep(self, node, pod, pod_ip, underlay_if, local, remote):
        """A kernel VTEP node: ``vx0`` (VNI, dstport 4789, flooding and
        learning through the all-zeros FDB entry to ``remote``) and the
        veth of ``pod`` in bridge br0."""
        self.ip(
            node,
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            str(VNI),
            "local",
            local,
            "dstport",
            "4789",
            "dev",
            underlay_if,
            "learning",
        )
        run_cmd(
            ["bridge", "-n", node, "fdb", "append", "00:00:00:00:00:00", "dev", "vx0"]
            + ["dst", remote],
            "kernel VTEP FDB",
        )
        self.ip(node, "link", "add", "br0", "type", "bridge")
        self.ip(node, "link", "set", "vx0", "master", "br0", "up")
        self.veth(node, "vpod", pod, "eth0", mtu=POD_MTU)
        self.ip(node, "link", "set", "vpod", "master", "br0")
        self.ip(node, "link", "set", "br0", "up")
        self.pod_addr(pod, "eth0", f"{pod_ip}/24")

    def setup_kernel(self):
        # kernel bridge: two pods on one bridge
        bn, ba, bb = self.add_ns("bnode"), self.add_ns("ba"), self.add_ns("bb")
        self.ip(bn, "link", "add", "br0", "type", "bridge")
        for pod, ifname, ip in ((ba, "va", KA_IP), (bb, "vb", KB_IP)):
            self.veth(bn, ifname, pod, "eth0", mtu=POD_MTU)
            self.ip(bn, "link", "set", ifname, "master", "br0")
            self.pod_addr(pod, "eth0", f"{ip}/24")
        self.ip(bn, "link", "set", "br0", "up")
        self.ips["bridge"] = (ba, bb, self.target(KB_IP))
        # kernel bridge + vxlan: two nodes over an underlay veth
        k1, k2, ka, kb = (self.add_ns(n) for n in ("k1", "k2", "ka", "kb"))
        self.veth(k1, "eth0", k2, "eth0")
        self.pod_addr(k1, "eth0", f"{NODE_VTEP}/24")
        self.pod_addr(k2, "eth0", f"{HOST_VTEP}/24")
        self.kernel_vtep(k1, ka, KA_IP, "eth0", NODE_VTEP, HOST_VTEP)
        self.kernel_vtep(k2, kb, KB_IP, "eth0", HOST_VTEP, NODE_VTEP)
        if self.args.wire_underlay:
            # VXLAN frames no larger than the underlay MTU, as on a wire: the
            # kernel nodes' underlay veth segments like a NIC before it
            for ns in (k1, k2):
                run_cmd(
                    self.nsexec(ns, "ethtool", "-K", "eth0", *TNL_SEG_OFF),
                    "underlay tunnel segmentation off",
                )
        self.ips["vxlan"] = (ka, kb, self.target(KB_IP))
        for ns in (bn, k1, k2):
            self.bridge_nf_off(ns)

    def bridge_nf_off(self, ns):
        # bridged frames through iptables hooks (br_netfilter): off, in every
        # namespace with a bridge (the kernel nodes and the host behind the
        # kernel VTEP alike)
        for k in ("call-iptables", "call-ip6tables", "call-arptables"):
            path = f"/proc/sys/net/bridge/bridge-nf-{k}"
            run_cmd(
                self.nsexec(ns, "sh", "-c", f"[ ! -e {path} ] || echo 0 > {path}"),
                "bridge-nf sysctls",
            )

    def node_config(
        self, name: str, vtep: str, remotes, state: str, sock: str, idle_sleep_us=None
    ) -> str:
        """A node service's config: the pods' network net1, VTEP ``vtep`` on
        uplink up0, learning on, flooding to ``remotes``; ``idle_sleep_us``
        (default: --idle-sleep-us)."""
        a = self.args
        cfg = os.path.join(self.workdir, f"{name}.yaml")
        rem = "".join(f"  - {{vtep: {r}, networks: [net1]}}\n" for r in remotes)
        with open(cfg, "w") as f:
            f.write(
                f"node: {self.tag}{name}\n"
                "mode: fallback\n"
                f"lcores: [{a.gen_cpu}, {a.fwd_cpu}]\n"
                "memory_mb: 256\n"
                f"idle_sleep_us: {a.idle_sleep_us if idle_sleep_us is None else idle_sleep_us}\n"
                + (f"cpu_latency_us: {a.cpu_latency_us}\n" if a.cpu_latency_us is not None else "")
                + f"kernel_driver: {a.kernel_driver}\n"
                + ("express_lane: false\n" if a.no_express_lane else "")
                # the host behind the kernel VTEP is in no store, nor are the
                # other node's pods (each node has a store of its own here):
                # their MACs are learned from what they send (else every frame
                # to them is an unknown unicast flood, held to the storm rate)
                + f"vtep: {{address: {vtep}/24, uplink: up0, learning: true"
                f"{', tunnel_gso: false' if a.no_tunnel_gso else ''}}}\n"
                "networks:\n"
                f"  - {{name: net1, vni: {VNI}, plane: std, subnet: {SUBNET}, "
                f"gateway: {GATEWAY}"
                + (f', subnet6: "{SUBNET6}", gateway6: "{GATEWAY6}"' if a.ipv6 else "")
                + "}\n"
                "remotes:\n" + rem + f"state_dir: {state}\n"
                f"api_socket: {sock}\n"
                "metrics: {listen: null}\n"
            )
        return cfg

    def add_pod(self, sock: str, name: str, ns: str, ip=None) -> str:
        """Pod ``name`` in namespace ``ns`` added through a service's API
        (``ip``: a fixed address); its address."""
        from dataplane.api import call

        spec = dict(POD_SPEC, **({"ips": {"std": ip}} if ip else {}))
        try:
            info = call(
                sock,
                "POST",
                "/v1/pods",
                {"name": name, "netns": f"/var/run/netns/{ns}", "spec": json.dumps(spec)},
            )
        except Exception as e:
            raise BenchError(f"adding pod {name} through the API: {e}") from None
        return next(p["ip"] for p in info["planes"] if p["plane"] == "std").split("/")[0]

    def setup_ours(self):
        a = self.args
        node, host, vm = self.add_ns("node"), self.add_ns("host"), self.add_ns("vm")
        pa, pb = self.add_ns("pa"), self.add_ns("pb")
        if a.two_nodes:
            node2, pc, ul = self.add_ns("node2"), self.add_ns("pc"), self.add_ns("ul")
            # the underlay: a bridge between the two nodes and the host
            self.ip(ul, "link", "add", "br0", "type", "bridge")
            for ns, port in ((node, "ul1"), (node2, "ul2"), (host, "ulh")):
                self.veth(ul, port, ns, "up0" if ns != host else "eth0")
                self.ip(ul, "link", "set", port, "master", "br0")
            self.ip(ul, "link", "set", "br0", "up")
            self.bridge_nf_off(ul)
        else:
            self.veth(node, "up0", host, "eth0")
        self.pod_addr(host, "eth0", f"{HOST_VTEP}/24")
        self.kernel_vtep(host, vm, VM_IP, "eth0", HOST_VTEP, NODE_VTEP)
        self.bridge_nf_off(host)
        if a.wire_underlay:
            # the same for ours: the kernel's GSO cuts the uplink's tunnel
            # super-frames before the veth, as a NIC before the wire
            for ns in (node, node2) if a.two_nodes else (node,):
                run_cmd(
                    self.nsexec(ns, "ethtool", "-K", "up0", *TNL_SEG_OFF),
                    "underlay tunnel segmentation off",
                )
        if a.peer_csum_off:
            # the host's stack then sends finished checksums (a diagnosis:
            # which failures are the checksum-partial frames of a kernel peer)
            run_cmd(self.nsexec(vm, "ethtool", "-K", "eth0", "tx", "off"), "peer tx checksum off")
        remotes = (HOST_VTEP, NODE2_VTEP) if a.two_nodes else (HOST_VTEP,)
        cfg = self.node_config("node", NODE_VTEP, remotes, f"{self.workdir}/state", self.sock)
        self.service = start_node_service(node, cfg, self.sock, self.service_log)
        from dataplane.api import call

        ips = [self.add_pod(self.sock, name, ns) for name, ns in (("a", pa), ("b", pb))]
        if a.two_nodes:
            self.setup_node2(node2, pc, pa)
        st = call(self.sock, "GET", "/v1/status")
        say("the service's ports: " + ", ".join(f"{p['name']} ({p['role']})" for p in st["ports"]))
        self.express_lane = bool(st["express_lane"])
        say(f"express lane: {'on' if self.express_lane else 'off'}")
        left = [p["name"] for p in st["ports"] if p["role"] == "pod" and p["express"] is None]
        if self.express_lane and left:
            say(
                f"WARNING: pod ports not in the express lane: {', '.join(left)} (their frames "
                f"cross the core); the service's log:\n{file_tail(self.service_log)}"
            )
        self.ips["ours_local"] = (pa, pb, self.target(ips[1]))
        self.ips["ours_vtep"] = (pa, vm, self.target(VM_IP))

    def setup_node2(self, node2: str, pc: str, pa: str):
        """--two-nodes: the second node of ours, with pod c (path
        ours_remote). Its worker shares the forwarding CPU: it sleeps when
        idle, else its spinning would take half of that CPU from the first
        node's worker on every path."""
        cfg2 = self.node_config(
            "node2",
            NODE2_VTEP,
            (NODE_VTEP,),
            f"{self.workdir}/state2",
            self.sock2,
            idle_sleep_us=NODE2_IDLE_SLEEP_US,
        )
        self.service2 = start_node_service(node2, cfg2, self.sock2, self.service2_log)
        self.add_pod(self.sock2, "c", pc, POD_C_IP)
        self.ips["ours_remote"] = (pa, pc, self.target(POD_C_IP))

    def worker_cpu(self, seconds: float = 2.0) -> float:
        """Share of a CPU the service's worker thread took over ``seconds``
        (utime + stime of its rte-worker thread), or -1 if not found."""
        pid = self.service.pid if self.service else None
        # ip netns exec runs the service as a child of that pid, or as it
        pids = [pid] + _children(pid) if pid else []

        def ticks():
            for p in pids:
                try:
                    tids = os.listdir(f"/proc/{p}/task")
                except OSError:
                    continue
                for t in tids:
                    try:
                        with open(f"/proc/{p}/task/{t}/comm") as f:
                            if f.read().startswith("rte-worker"):
                                return cpu_ticks(f"/proc/{p}/task/{t}/stat")
                    except OSError:
                        continue
            return None

        t0, c0 = time.monotonic(), ticks()
        time.sleep(seconds)
        t1, c1 = time.monotonic(), ticks()
        if c0 is None or c1 is None:
            return -1.0
        return (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)

    def close(self):
        for attr in ("service2", "service"):
            if getattr(self, attr) is not None:
                stop_node_service(getattr(self, attr))
                setattr(self, attr, None)
        for ns in reversed(self._made_ns):
            p = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if p.returncode != 0:
                print(
                    f"bench: could not remove namespace {ns}: {p.stderr.strip()}",
                    file=sys.stderr,
                    flush=True,
                )
        self._made_ns = []

    def lane_share(self) -> str:
        """Each pod port's received frames and how many the express lane
        carried (the service's status)."""
        from dataplane.api import call

        return ", ".join(
            f"{p['pod']} {p['rx_packets']} ({p['express']['rx_packets']} in the lane)"
            for p in call(self.sock, "GET", "/v1/status")["ports"]
            if p["role"] == "pod" and p["express"] is not None
        )

    def service_drops(self) -> dict:
        """The services' drop counters by reason (their status), summed."""
        from dataplane.api import call

        out = {}
        for sock in (self.sock, self.sock2):
            if os.path.exists(sock):
                for k, v in call(sock, "GET", "/v1/status")["drops"].items():
                    out[k] = out.get(k, 0) + v
        return out

    def check_service(self):
        for p, log in ((self.service, self.service_log), (self.service2, self.service2_log)):
            if p is not None and p.poll() is not None:
                raise BenchError(
                    f"the node service exited (code {p.returncode}) during the runs:\n"
                    + file_tail(log, 25)
                )

    # -------------------------------------------------------- measurements
    def ping(self, path: str) -> tuple:
        """(avg, p99) RTT in microseconds of --pings echoes."""
        a = self.args
        cli, _, ip = self.ips[path]
        # unmeasured: ARP, FDB learning, caches
        run_cmd(
            self.nsexec(cli, "ping", "-c", "5", "-i", "0.05", "-W", "1", ip),
            "warm-up ping",
            check=False,
            late=PathFailed,
        )
        deadline = max(5, int(a.pings * 0.002 * 4) + 3)
        p = run_cmd(
            self.nsexec(
                cli,
                "ping",
                "-c",
                str(a.pings),
                "-i",
                PING_INTERVAL,
                "-W",
                "1",
                "-w",
                str(deadline),
                ip,
                cpu=a.gen_cpu,
            ),
            "ping",
            timeout=deadline + 10,
            check=False,
            late=PathFailed,
        )
        times = [float(x) * 1000 for x in re.findall(r"time=([\d.]+) ms", p.stdout)]
        if not times:
            tail = (p.stdout + p.stderr).strip().splitlines()[-2:]
            raise PathFailed(f"no echo reply from {ip}: {' / '.join(tail)}")
        times.sort()
        p99 = times[min(len(times) - 1, math.ceil(0.99 * len(times)) - 1)]
        lost = a.pings - len(times)
        if lost:
            say(f"  {path}: {lost} of {a.pings} pings without reply")
        return sum(times) / len(times), p99

    def dsack_segs(self, ns: str) -> int:
        """Segments the TCP senders of namespace ``ns`` were told arrived
        twice (TcpExt TCPDSACKRecvSegs): retransmissions of segments that
        were not lost, only late (reordered or held up on the way)."""
        r = subprocess.run(
            self.nsexec(ns, "cat", "/proc/net/netstat"), capture_output=True, text=True
        )
        rows = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("TcpExt:")]
        if len(rows) < 2 or "TCPDSACKRecvSegs" not in rows[0]:
            return 0
        return int(rows[1][rows[0].index("TCPDSACKRecvSegs")])

    def udp_rcvbuf_errors(self, ns: str) -> int:
        """Datagrams the UDP sockets of namespace ``ns`` refused because
        their receive buffer was full (Udp and Udp6 RcvbufErrors): what a
        receiver that cannot keep up loses, past every forwarding path."""
        r = subprocess.run(
            self.nsexec(ns, "cat", "/proc/net/snmp", "/proc/net/snmp6"),
            capture_output=True,
            text=True,
        )
        n = 0
        rows = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("Udp:")]
        if len(rows) >= 2 and "RcvbufErrors" in rows[0]:
            n += int(rows[1][rows[0].index("RcvbufErrors")])
        for ln in r.stdout.splitlines():
            f = ln.split()
            if len(f) == 2 and f[0] == "Udp6RcvbufErrors":
                n += int(f[1])
        return n

    def _iperf(self, path: str, udp: bool, reverse: bool, kpps: int):
        """One iperf3 test of ``path`` (see :meth:`iperf`, :meth:`udp64`):
        the client's JSON, parsed, and the server's output."""
        a = self.args
        cli, srv, ip = self.ips[path]
        port = "5201"
        server = subprocess.Popen(
            self.nsexec(srv, "iperf3", "-s", "-1", "-J", "-p", port, cpu=a.gen_cpu),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            time.sleep(0.2)  # let it listen
            # -b in bits of UDP payload: 64 bytes a datagram
            rate = f"{kpps * 512}K" if kpps else "0"
            kind = ["-u", "-l", "64", "-b", rate] if udp else ["-R"] if reverse else []
            c = run_cmd(
                self.nsexec(
                    cli,
                    "iperf3",
                    "-c",
                    ip,
                    "-p",
                    port,
                    "-J",
                    "-t",
                    str(self.iperf_seconds),
                    "--connect-timeout",
                    "3000",
                    *kind,
                    cpu=a.gen_cpu,
                ),
                "iperf3 client",
                timeout=self.iperf_seconds + 15,
                check=False,
                late=PathFailed,
            )
            try:
                cj = json.loads(c.stdout)
            except ValueError:
                raise PathFailed(f"iperf3 client gave no JSON: {c.stderr.strip()[-200:]}") from None
            if cj.get("error"):
                raise PathFailed(f"iperf3: {cj['error']}")
            try:
                out, _ = server.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                out = ""
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        return cj, out

    def iperf(self, path: str, reverse: bool = False) -> float:
        """TCP: Gbit/s the receiver counted. ``reverse``: from the path's
        far end to its near one (iperf3 -R: the server sends)."""
        cli, srv, _ = self.ips[path]
        sender = srv if reverse else cli
        dsack0 = self.dsack_segs(sender)
        cj, _ = self._iperf(path, udp=False, reverse=reverse, kpps=0)
        end = cj.get("end", {})
        bps = end.get("sum_received", {}).get("bits_per_second", 0.0)
        retr = end.get("sum_sent", {}).get("retransmits", 0)
        if retr:
            late = self.dsack_segs(sender) - dsack0
            say(
                f"  {path}: {retr} TCP segments retransmitted (the sender's count; "
                f"{late} of them reported back as duplicates: late, not lost)"
            )
        return bps / 1e9

    def udp64(self, path: str, kpps: int = 0) -> Tuple[float, float, float]:
        """UDP of 64-byte datagrams offered at ``kpps`` thousand a second (0:
        as fast as the client goes), per second: what the server received,
        what the client sent, and what the receiving socket refused with
        its buffer full (at full speed a receiver on the sender's CPU
        cannot take it all)."""
        srv = self.ips[path][1]
        rcvbuf0 = self.udp_rcvbuf_errors(srv)
        cj, out = self._iperf(path, udp=True, reverse=False, kpps=kpps)
        try:
            sj = json.loads(out)
        except ValueError:
            raise PathFailed("iperf3 server gave no JSON") from None
        s = sj.get("end", {}).get("sum", {})
        secs = s.get("seconds") or self.iperf_seconds
        got = s.get("packets", 0) - s.get("lost_packets", 0)
        sent = cj.get("end", {}).get("sum", {}).get("packets", 0)
        refused = self.udp_rcvbuf_errors(srv) - rcvbuf0
        return max(0, got) / secs, sent / secs, refused / secs

    def measure(self, path: str, tests=TESTS) -> dict:
        r = dict.fromkeys(FIGURES, 0.0)
        notes, failed = [], []
        for what, fn in (
            ("ping", lambda: self.ping(path)),
            ("tcp", lambda: self.iperf(path)),
            ("tcp_rev", lambda: self.iperf(path, reverse=True)),
            ("udp64", lambda: self.udp64(path)),
        ):
            if what not in tests:
                continue
            try:
                v = fn()
            except PathFailed as e:
                why = str(e)
                if what == "udp64" and "connect" in why:
                    why += "; iperf3's control connection is TCP"
                notes.append(f"{what} FAILED ({why}): left out of the medians")
                failed.append(what)
                for k in TEST_FIGURES[what]:
                    r[k] = float("nan")
                continue
            if what == "ping":
                r["rtt_us"], r["rtt_p99_us"] = v
            elif what == "tcp":
                r["tcp_gbps"] = v
            elif what == "tcp_rev":
                r["tcp_rev_gbps"] = v
            else:
                got, sent, refused = v
                r["udp64_pps"] = got
                r["udp64_delivered_pps"] = got + refused
                notes.append(
                    f"UDP 64 B: the client sent {sent / 1e3:.1f} kpps, the receiving "
                    f"socket refused {refused / 1e3:.1f} kpps (its buffer full)"
                )
        r["notes"], r["failed"] = notes, failed
        return r


# ----------------------------------------------------------------- running


def _fmt(r: dict) -> str:
    s = (
        f"RTT avg {r['rtt_us']:7.1f} us p99 {r['rtt_p99_us']:7.1f} us, "
        f"TCP {r['tcp_gbps']:6.2f} Gbit/s (back {r['tcp_rev_gbps']:6.2f}), UDP 64 B {r['udp64_pps'] / 1e3:7.1f} kpps received"
    )
    return s + "".join(f"\n        {n}" for n in r["notes"])


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-pods-") as workdir:
        say_machine("other work on the machine slows every path")
        lab = Lab(args, workdir)
        try:
            lab.setup_kernel()
            lab.setup_ours()
            say(
                "the tests go to: "
                + ", ".join(f"{p} {lab.ips[p][2]}" for p in PATHS if p in lab.ips)
                + (" (IPv6)" if args.ipv6 else "")
            )
            idle_cpu = lab.worker_cpu()
            say(
                f"the service's worker took {idle_cpu * 100:.0f} % of a CPU over 2 s without "
                f"traffic (idle_sleep_us: {args.idle_sleep_us}"
                + (
                    f"; cpu_latency_us: {args.cpu_latency_us}, held for every path"
                    if args.cpu_latency_us is not None
                    else ""
                )
                + ")"
            )
            if args.cpu_latency_us is not None:
                from dataplane.api import call

                st = call(lab.sock, "GET", "/v1/status")
                say(
                    f"the service holds cpu_latency_us: {st['cpu_latency_us']}; the kernel's "
                    f"limit for idle CPUs while measuring: {st['cpu_latency_limit_us']} us"
                )
                if st.get("cpu_latency_no_effect"):
                    say(
                        "WARNING: the request changes nothing on this machine: "
                        f"{st['cpu_latency_no_effect']}"
                    )
            say(
                f"namespaces {lab.tag}-*; {args.pings} pings and {lab.iperf_seconds} s of "
                f"iperf3 per test; ping and iperf3 on CPU {args.gen_cpu} (taskset), "
                f"the service's worker lcore on CPU {args.fwd_cpu}, its control thread on "
                f"CPU {args.gen_cpu}; the kernel paths forward in softirq where the "
                "senders run"
            )
            if args.peer_csum_off:
                say(
                    "--peer-csum-off: the host behind the kernel VTEP sends finished "
                    "checksums (tx checksum offload off on its eth0): not a user's set-up"
                )
            paths, tests = ONLY[args.only] if args.only else (PATHS, TESTS)
            if not args.two_nodes:  # the second node's path needs --two-nodes
                paths = tuple(p for p in paths if p != "ours_remote")
            if args.only:
                say(f"--only {args.only}: paths {', '.join(paths)}, tests {', '.join(tests)}")
            res = {p: {k: [] for k in FIGURES} for p in PATHS}
            failed = []
            paced = {p: {kpps: [] for kpps in args.udp_rates} for p in PACED_PATHS}
            drops0 = lab.service_drops()
            for n in range(1, args.runs + 1):
                for path in PATHS:
                    if path not in paths:
                        for k in FIGURES:
                            res[path][k].append(0.0)
                        continue
                    lab.check_service()
                    r = lab.measure(path, tests)
                    failed += [f"{path}:{t}" for t in r["failed"]]
                    for k in FIGURES:
                        res[path][k].append(r[k])
                    say(f"run {n}/{args.runs} {LABEL[path]:38s} {_fmt(r)}")
                for kpps in args.udp_rates:
                    for path in PACED_PATHS:
                        lab.check_service()
                        seen = ""
                        try:
                            got, sent, refused = lab.udp64(path, kpps=kpps)
                            seen = (
                                f" (sent {sent / 1e3:.1f}, refused by the full socket "
                                f"{refused / 1e3:.1f})"
                            )
                        except PathFailed as e:
                            say(f"  {path}: UDP at {kpps} kpps FAILED ({e}): left out")
                            failed.append(f"{path}:udp64@{kpps}")
                            got = float("nan")
                        paced[path][kpps].append(got)
                        say(
                            f"run {n}/{args.runs} {LABEL[path]:38s} UDP 64 B offered {kpps} "
                            f"kpps: {got / 1e3:7.1f} kpps received{seen}"
                        )
            lab.check_service()
            drops = {k: v - drops0.get(k, 0) for k, v in lab.service_drops().items()}
            drops = {k: v for k, v in drops.items() if v}
            say(
                "the services' drops during the runs: "
                + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none")
            )
            if lab.express_lane:  # what the lane carried of what the pods sent
                say(f"frames from the pods, of them in the express lane: {lab.lane_share()}")
        finally:
            lab.close()
    say(
        f"load average {os.getloadavg()[0]:.2f} after the runs (other work on the machine "
        "takes CPU time from the service's worker and from the kernel paths alike)"
    )
    med = {p: {k: median(v) for k, v in res[p].items()} for p in PATHS}
    show()
    say(f"medians of {args.runs} run(s):")
    show(
        f"| {'path':38s} | RTT avg us | RTT p99 us | TCP Gbit/s | TCP back Gbit/s | UDP 64 B kpps |"
    )
    show(f"|{'-' * 40}|{'-' * 12}|{'-' * 12}|{'-' * 12}|{'-' * 17}|{'-' * 15}|")
    shown = [p for p in PATHS if p != "ours_remote" or args.two_nodes]
    for p in shown:
        m = med[p]
        show(
            f"| {LABEL[p]:38s} | {m['rtt_us']:10.1f} | {m['rtt_p99_us']:10.1f} | "
            f"{m['tcp_gbps']:10.2f} | {m['tcp_rev_gbps']:15.2f} | {m['udp64_pps'] / 1e3:13.1f} |"
        )
    if args.runs > 1:
        for p in shown:
            say(
                f"{p}: RTT us {fmt_runs(res[p]['rtt_us'], 1)}, TCP Gbit/s "
                f"{fmt_runs(res[p]['tcp_gbps'])}, back {fmt_runs(res[p]['tcp_rev_gbps'])}, "
                "UDP kpps "
                f"{fmt_runs(res[p]['udp64_pps'], 1, 1e-3)}"
            )
    paced_med = {p: {kpps: median(v) for kpps, v in paced[p].items()} for p in PACED_PATHS}
    if args.udp_rates:
        show()
        say("64-byte UDP at fixed offered rates, kpps received (medians):")
        show(f"| offered kpps | {LABEL['ours_vtep']:38s} | {LABEL['vxlan']:22s} |")
        show(f"|{'-' * 14}|{'-' * 40}|{'-' * 24}|")
        for kpps in args.udp_rates:
            o, k = (paced_med[p][kpps] / 1e3 for p in PACED_PATHS)
            show(f"| {kpps:12d} | {o:38.1f} | {k:22.1f} |")
    return {
        "med": med,
        "paced": paced_med,
        "peer_csum_off": args.peer_csum_off,
        "wire_underlay": args.wire_underlay,
        "idle_sleep_us": args.idle_sleep_us,
        "cpu_latency_us": args.cpu_latency_us,
        "kernel_driver": args.kernel_driver,
        "express_lane": lab.express_lane,
        "two_nodes": args.two_nodes,
        "ipv6": args.ipv6,
        "no_tunnel_gso": args.no_tunnel_gso,
        "idle_cpu": idle_cpu,
        "failed": failed,
    }


def v6(ip: str) -> str:
    """The IPv6 counterpart of ``ip`` on the service's dual-stack network,
    by the service's own rule (NetworkConfig.ip6_of)."""
    from dataplane.config import NetworkConfig

    return NetworkConfig("net1", VNI, "std", SUBNET, subnet6=SUBNET6).ip6_of(ip)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench pods",
        description="ping, TCP and 64-byte UDP between pods: the node service (pod -> "
        "pod, pod -> host behind the kernel's VXLAN VTEP) vs the kernel bridge and "
        "kernel bridge + vxlan on the same kind of veths.",
    )
    add_run_options(
        ap,
        seconds=3.0,
        seconds_help="iperf3 duration per test, rounded up to whole seconds",
        runs=3,
        runs_help="runs of the four paths (figures are medians)",
    )
    ap.add_argument(
        "--pings", type=int, default=1000, help="measured pings per path and run (default 1000)"
    )
    ap.add_argument(
        "--gen-cpu",
        type=int,
        default=1,
        help="CPU of ping/iperf3 and of the service's control thread (default 1)",
    )
    ap.add_argument(
        "--fwd-cpu", type=int, default=0, help="CPU of the service's worker lcore (default 0)"
    )
    ap.add_argument(
        "--wire-underlay",
        action="store_true",
        help="both underlay veths (the kernel nodes' and our uplink) segment VXLAN super-frames "
        "(tx-udp_tnl-segmentation off), so both carry MTU-sized frames as a wire does; "
        "without it both pass 64 KB super-frames, which no wire carries",
    )
    ap.add_argument(
        "--no-tunnel-gso",
        action="store_true",
        help="the service's vtep.tunnel_gso off: a pod's super-frames to the underlay are cut "
        "before encapsulation, as on a kernel before 6.17 (RESULT says tunnel_gso=off)",
    )
    ap.add_argument(
        "--kernel-driver",
        choices=("afpacket", "af_xdp"),
        default="afpacket",
        help="the service's kernel_driver, which reads the pods' veths (default afpacket, the "
        "service's default)",
    )
    ap.add_argument(
        "--no-express-lane",
        action="store_true",
        help="the service's express_lane: false: unicast IP between its two pods crosses "
        "the core as every other frame does (default: auto, the kernel carries it veth to "
        "veth); RESULT says express_lane=on or off",
    )
    ap.add_argument(
        "--idle-sleep-us",
        type=int,
        default=0,
        help="the service's idle_sleep_us: its worker sleeps when idle, woken by a frame "
        "(default 0: it spins)",
    )
    ap.add_argument(
        "--cpu-latency-us",
        type=int,
        default=None,
        help="the service's cpu_latency_us: the kernel keeps idle CPUs able to wake within "
        "this many us while the service runs, for every path (0: they poll; default: no "
        "request, the service's default)",
    )
    ap.add_argument(
        "--two-nodes",
        action="store_true",
        help="also a second node service with a pod (path ours_remote: pod -> pod on "
        "another node of ours, against the kernel's two nodes): on the same underlay "
        "bridge, its worker on the forwarding CPU too, sleeping when idle (idle_sleep_us "
        f"{NODE2_IDLE_SLEEP_US}); the RESULT line adds rtt_remote_ratio, tcp_remote_ratio, "
        "udp64_remote_ratio and ours_remote_* and ends two_nodes=on",
    )
    ap.add_argument(
        "--only",
        choices=sorted(ONLY),
        help="measure one figure only (tcp_vxlan: TCP pod -> host behind the kernel VTEP "
        "and kernel bridge + vxlan; tcp_vxlan_rev: the same the other way; remote, with "
        "--two-nodes: every test pod -> pod on another node of ours and kernel bridge + "
        "vxlan); the RESULT line's other figures are then 0 or nan",
    )
    ap.add_argument(
        "--udp-rates",
        type=_kpps_list,
        default=[],
        metavar="KPPS,KPPS,..",
        help="also 64-byte UDP offered at these fixed rates (thousand datagrams/s, 1..5000), "
        "pod -> host behind the kernel VTEP and kernel bridge + vxlan; RESULT adds "
        "udp64_paced=<kpps>:<ratio>,..",
    )
    ap.add_argument(
        "--ipv6",
        action="store_true",
        help="every test over IPv6: the service's network dual-stack (subnet6), the kernel "
        "paths' pods and the host behind the kernel VTEP with their IPv6 counterparts; "
        "RESULT ends ipv6=on",
    )
    ap.add_argument(
        "--peer-csum-off",
        action="store_true",
        help="switch tx checksum offload off on the eth0 of the host behind the kernel "
        "VTEP (a diagnosis, not the user's set-up: its frames then carry finished checksums)",
    )
    return ap


def _kpps_list(text: str) -> list:
    """``--udp-rates``: distinct whole numbers of kpps, 1..5000, in the order given."""
    out = []
    for part in text.split(","):
        try:
            v = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} is not a whole number of kpps (e.g. 150,200,250)"
            ) from None
        if not 1 <= v <= 5000:
            raise argparse.ArgumentTypeError(f"{v} kpps is outside 1..5000")
        if v in out:
            raise argparse.ArgumentTypeError(f"{v} kpps is given twice")
        out.append(v)
    return out


def main(argv=None) -> int:
    ap = parser()
    args = parse_args(ap, argv)
    check_cpu_options(ap, args)
    if args.pings < 1:
        ap.error("--pings must be >= 1")
    if args.only == "remote" and not args.two_nodes:
        ap.error("--only remote measures the second node's path: it needs --two-nodes")
    if not 0 <= args.idle_sleep_us <= 100000:
        ap.error("--idle-sleep-us must be in 0..100000")
    if args.cpu_latency_us is not None and not 0 <= args.cpu_latency_us <= 1_000_000:
        ap.error("--cpu-latency-us must be in 0..1000000")
    if os.geteuid() != 0:
        print("bench: FAILED: needs root (it makes network namespaces)", file=sys.stderr)
        return 1
    return run_main(run, args, _result)


def _result(res):
    med = res["med"]
    o, v, r, b, k = (med[p] for p in PATHS)

    def rtt(ours, base):
        # no baseline (not measured: --only, or failed): nan, as every
        # ratio without one; ours failed in every run: nan too (failed=)
        if not base["rtt_us"] > 0 or math.isnan(ours["rtt_us"]):
            return float("nan")
        return ratio(ours["rtt_us"], base["rtt_us"]) if ours["rtt_us"] > 0 else float("inf")

    fields = {
        "rtt_ratio": rtt(o, b),
        "tcp_local_ratio": ratio(o["tcp_gbps"], b["tcp_gbps"]),
        "tcp_vxlan_ratio": ratio(v["tcp_gbps"], k["tcp_gbps"]),
        # the other way: host -> pod through our decapsulation
        "tcp_vxlan_back_ratio": ratio(v["tcp_rev_gbps"], k["tcp_rev_gbps"]),
        "udp64_ratio": ratio(v["udp64_pps"], k["udp64_pps"]),
        # what each path brought to the receiving socket, taken or refused
        # by its full buffer: the path's own rate, the receiver's CPU apart
        "udp64_delivered_ratio": ratio(v["udp64_delivered_pps"], k["udp64_delivered_pps"]),
    }
    if res.get("two_nodes"):  # two nodes of ours against two kernel nodes
        fields["rtt_remote_ratio"] = rtt(r, k)
        fields["tcp_remote_ratio"] = ratio(r["tcp_gbps"], k["tcp_gbps"])
        fields["udp64_remote_ratio"] = ratio(r["udp64_pps"], k["udp64_pps"])
    out = {key: f"{x:.3f}" for key, x in fields.items()}
    names = {
        "ours_local": "ours",
        "ours_vtep": "ours_vtep",
        "ours_remote": "ours_remote",
        "bridge": "bridge",
        "vxlan": "vxlan",
    }
    for p in PATHS:
        if p == "ours_remote" and not res.get("two_nodes"):
            continue
        m = med[p]
        out[f"{names[p]}_rtt_us"] = f"{m['rtt_us']:.1f}"
        out[f"{names[p]}_rtt_p99_us"] = f"{m['rtt_p99_us']:.1f}"
        out[f"{names[p]}_tcp_gbps"] = f"{m['tcp_gbps']:.3f}"
        out[f"{names[p]}_tcp_back_gbps"] = f"{m['tcp_rev_gbps']:.3f}"
        out[f"{names[p]}_udp64_pps"] = f"{m['udp64_pps']:.0f}"
        out[f"{names[p]}_udp64_delivered_pps"] = f"{m['udp64_delivered_pps']:.0f}"
    paced = res.get("paced") or {}
    if paced.get("ours_vtep"):  # --udp-rates: received at each offered rate
        out["udp64_paced"] = ",".join(
            f"{kpps}:{ratio(paced['ours_vtep'][kpps], paced['vxlan'][kpps]):.3f}"
            for kpps in paced["ours_vtep"]
        )
    if res["peer_csum_off"]:
        out["peer_tx_csum"] = "off"  # a diagnosis run, not a user's set-up
    if res.get("wire_underlay"):
        out["kernel_underlay"] = "wire"  # MTU-sized VXLAN frames on the kernel's underlay
    if res.get("no_tunnel_gso"):
        out["tunnel_gso"] = "off"  # super-frames cut before encapsulation
    if res.get("kernel_driver", "afpacket") != "afpacket":
        out["kernel_driver"] = res["kernel_driver"]  # the pods' veths
    # pod to pod of one network: kernel to kernel (on) or through the core
    out["express_lane"] = "on" if res.get("express_lane") else "off"
    if res.get("two_nodes"):
        out["two_nodes"] = "on"
    if res.get("ipv6"):
        out["ipv6"] = "on"  # every test over IPv6
    if res.get("idle_sleep_us"):
        out["idle_sleep_us"] = str(res["idle_sleep_us"])
        out["ours_idle_cpu"] = f"{res['idle_cpu']:.2f}"  # worker's CPU share without traffic
    if res.get("cpu_latency_us") is not None:
        out["cpu_latency_us"] = str(res["cpu_latency_us"])  # idle CPUs kept this fast to wake
    if res.get("failed"):  # measurements left out of the medians; exit code 1
        out["failed"] = str(len(res["failed"]))
        out["failed_what"] = ",".join(res["failed"])
    return "pods", out


if __name__ == "__main__":
    sys.exit(main())
