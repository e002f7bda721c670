"""Child processes of the AF_PACKET benchmark (bench.afpacket), each started
by the parent inside one of its network namespaces (``ip netns exec NS``):

    python -m bench.afpacket_ours engine --driver {native|pmd|afxdp|lane} --pod IF --uplink IF ...
    python -m bench.afpacket_ours capture --iface IF --count N --timeout S

``engine``: our core in fallback mode (EAL ``--no-huge``, one worker lcore)
with the pod-facing veth end as a pod port of network 0 and the underlay
veth end as the uplink, through either the core's native AF_PACKET driver
(``Engine.add_afpacket_port``), DPDK's ``net_af_packet`` PMD
(``Engine.add_port("net_af_packet0,iface=...")``, qdisc bypass on like
ours), DPDK's ``net_af_xdp`` PMD (``dataplane.podlife.add_kernel_port``,
as the node service attaches ``kernel_driver: af_xdp``), or the native
driver with the pod port in the express lane (``lane``: the node's default,
``express_lane: auto``; the pod's MAC ``--pod-mac``, no anti-spoofing),
whose kernel programs then encapsulate the pod's TCP to remote VTEPs
themselves. Every thread of the engine (control, housekeeping, worker) runs
on ``--worker-cpu`` unless ``--control-cpu`` says otherwise. The VTEP has a
static next-hop MAC (no ARP) and every remote MAC of bench.topology an FDB
entry to its remote VTEP: exactly the
encap set-up of bench.ours, on kernel interfaces. The parent drives it over
stdin, one command a line:

    (start-up)  ->  BENCH-JSON {"event": "ready", ...}
    snap        ->  BENCH-JSON {"event": "snap", counters ...}
    final       ->  stop the worker (which flushes what it holds), then
                    BENCH-JSON {"event": "final", ...}: the whole run's
                    accounting (see _final), close the ports, exit 0
    quit / EOF  ->  stop, close the ports, exit 0

``capture``: counts and keeps frames received on IF (an AF_PACKET socket):
prints ``BENCH-JSON {"event": "ready"}`` once the socket is bound, then
``BENCH-JSON {"event": "captured", "frames": [hex, ...]}`` after ``--count``
frames or ``--timeout`` seconds.

DPDK's own log lines share stdout, hence the ``BENCH-JSON`` prefix.
"""

import argparse
import os
import select
import socket
import sys
import time

from . import topology as topo
from .common import child_failed, child_unwind_on_sigterm, emit, packet_socket_fds, proc_stat

DRIVERS = ("native", "pmd", "afxdp", "lane")
ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = 33
PACKET_OUTGOING = 4


def pmd_devargs(index: int, ifname: str, frames: int) -> str:
    """DPDK 22.11 ``net_af_packet`` device string (drivers/net/af_packet):
    one queue pair, TPACKET_V2 rings of ``frames`` 2048-byte frames (as our
    driver's rings), page-sized blocks, qdisc bypass on (as ours)."""
    return (
        f"net_af_packet{index},iface={ifname},qpairs=1,blocksz=4096,"
        f"framesz=2048,framecnt={frames},qdisc_bypass=1"
    )


SOL_PACKET = 263
PACKET_STATISTICS = 6
AF_XDP = 44
SOL_XDP = 283
XDP_STATISTICS = 7
SO_DOMAIN = 39


def _packet_sockets(ifname: str):
    """fds of this process's AF_PACKET sockets bound to ``ifname`` with a
    protocol (receiving sockets; a tx-only socket is bound with 0)."""
    ifindex = socket.if_nametoindex(ifname)
    return packet_socket_fds("self", lambda v: int(v[4]) == ifindex and int(v[3], 16) != 0)


def ring_stats(fds) -> dict:
    """Kernel-side counters of the receiving sockets since the last call
    (PACKET_STATISTICS resets them): frames the kernel offered to the ring
    and frames it dropped because the ring was full (the driver's consumer
    did not keep up). Read through a dup of the driver's own fd."""
    seen = drops = 0
    for fd in fds:
        s = socket.socket(fileno=os.dup(fd))
        try:
            st = s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        finally:
            s.close()
        packets, dropped = int.from_bytes(st[0:4], "little"), int.from_bytes(st[4:8], "little")
        seen += packets  # includes the drops
        drops += dropped
    return {"ring_seen": seen, "ring_drops": drops}


def _xdp_sockets():
    """fds of this process's AF_XDP sockets (the net_af_xdp ports' queues)."""
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:["):
                continue
        except OSError:
            continue
        s = socket.socket(AF_XDP, socket.SOCK_RAW, 0, fileno=os.dup(int(fd)))
        try:
            if s.getsockopt(socket.SOL_SOCKET, SO_DOMAIN) == AF_XDP:
                fds.append(int(fd))
        finally:
            s.close()
    return fds


class KportStats:
    """ring_stats() for the native driver: the core reads PACKET_STATISTICS
    itself whenever its counters are read (and the kernel resets the
    counts on every read), so a second reader would see only what came
    since; the core's own count of them, the drop reason ``kport_kernel``
    (the pod and uplink ports' rx rings), is the figure."""

    def __init__(self, eng):
        self.eng = eng
        self.last = 0

    def __call__(self) -> dict:
        total = self.eng.counters().drops().get("kport_kernel", 0)
        d, self.last = total - self.last, total
        return {"ring_seen": 0, "ring_drops": d}


class XdpStats:
    """ring_stats() for AF_XDP sockets: XDP_STATISTICS counts since the
    socket was made, so the frames the kernel could not put into the rx ring
    (rx ring full, no fill-ring buffer, other drops) are given as the
    difference since the last call. The kernel offers no count of frames it
    did put there (``ring_seen`` 0)."""

    def __init__(self, fds):
        self.fds = fds
        self.last = 0

    def __call__(self) -> dict:
        total = 0
        for fd in self.fds:
            s = socket.socket(AF_XDP, socket.SOCK_RAW, 0, fileno=os.dup(fd))
            try:
                st = s.getsockopt(SOL_XDP, XDP_STATISTICS, 48)
            finally:
                s.close()
            v = [int.from_bytes(st[i : i + 8], "little") for i in range(0, len(st), 8)]
            # rx_dropped, rx_invalid_descs, tx_invalid_descs, rx_ring_full,
            # rx_fill_ring_empty_descs, tx_ring_empty_descs
            total += v[0] + v[3] + (v[4] if len(v) > 4 else 0)
        d, self.last = total - self.last, total
        return {"ring_seen": 0, "ring_drops": d}


def _worker_tasks():
    """Thread ids of the EAL worker lcores of this process (named
    "rte-worker-N" or, in other DPDK builds, "lcore-worker-N")."""
    out = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().startswith(("rte-worker", "lcore-worker")):
                    out.append(int(tid))
        except OSError:
            pass
    return out


def _task_ticks(tids):
    """(utime, stime) of the given threads, in clock ticks."""
    ut = st = 0
    for tid in tids:
        try:
            v = proc_stat(f"/proc/self/task/{tid}/stat")
            ut += int(v[11])
            st += int(v[12])
        except OSError:
            pass
    return ut, st


def _snap(eng, pod: int, up: int, stats, tids) -> dict:
    c = eng.counters()
    w = c.worker.sum(axis=0)
    return {
        "event": "snap",
        "t": time.monotonic(),
        "pod_rx": c.port_dict(pod)["rx_packets"],
        "up_tx": c.port_dict(up)["tx_packets"],
        "encap": c.net_dict(topo.NET)["encap_packets"],
        # what the express lane took from the pod port (0 without the lane)
        "lane_rx": eng.express_counts(pod)[0] if eng.express_loaded else 0,
        "drops": {k: v for k, v in c.drops().items() if v},
        "polls": int(w[0]),
        "busy_polls": int(w[1]),
        "worker_ticks": _task_ticks(tids),  # [user, system]
        **stats(),
    }


#: drops of frames the core never received (the kernel's ring, a frame
#: that did not fit a ring slot or an mbuf, a super-frame a kernel port
#: could not take, a DPDK port's own drops, the express lane's refusals in
#: the kernel): before its rx count
BEFORE_RX = (
    "kport_kernel",
    "kport_oversize",
    "kport_truncated",
    "kport_no_mbuf",
    "kport_gso",
    "dev_rx_missed",
    "dev_rx_errors",
    "dev_rx_no_mbuf",
    "express_encap",
    "express_decap",
    "express_changed",
)
#: drops of frames the core counted as sent: the kernel's own transmit
#: drops of a kernel port (but for a super-frame the kernel refused for
#: want of buffers, not counted sent), frames waiting in the ring of an
#: interface set down
AFTER_TX = ("kport_kernel_tx", "kport_tx_down")
#: outside the core's rx = tx + drops (a drop counted where a pod's shared
#: memory faulted, shm_fault, may be of either side: it is in that sum,
#: and a run with one would not add up)
NOT_OF_RX = BEFORE_RX + AFTER_TX


def _final(eng, pod: int, up: int) -> dict:
    """The whole run's accounting, read once the worker has stopped and
    flushed (nothing in flight): frames the core received on its two
    ports, frames it sent, and its drops by reason; ``unaccounted`` is
    what received frames neither left nor were counted as dropped (0 in a
    run that adds up)."""
    c = eng.counters()
    p, u = c.port_dict(pod), c.port_dict(up)
    drops = {k: v for k, v in c.drops().items() if v}
    of_rx = {k: v for k, v in drops.items() if k not in NOT_OF_RX}
    rx = p["rx_packets"] + u["rx_packets"]
    tx = p["tx_packets"] + u["tx_packets"]
    return {
        "event": "final",
        "pod_rx": p["rx_packets"],
        "up_rx": u["rx_packets"],
        "pod_tx": p["tx_packets"],
        "up_tx": u["tx_packets"],
        "dropped": sum(of_rx.values()),
        "drops": of_rx,
        "not_of_rx": {k: v for k, v in drops.items() if k in NOT_OF_RX},
        "unaccounted": rx - tx - sum(of_rx.values()),
    }


def run_engine(a) -> int:
    from dataplane.engine import Engine, EngineConfig
    from dataplane.podlife import add_kernel_port

    control = a.worker_cpu if a.control_cpu is None else a.control_cpu
    cfg = EngineConfig(
        mode="fallback",
        lcores=[0, 1],
        cpus=[control, a.worker_cpu],
        memory_mb=512,
        n_mbufs=16383,
        file_prefix=f"bench-afpacket-{os.getpid()}",
    )
    with Engine(cfg) as eng:
        eng.add_network(topo.NET, vni=topo.VNI, plane=0)
        if a.driver == "lane":
            eng.express_open()  # refuses, saying why, where the kernel cannot run it
        if a.driver in ("native", "lane"):
            pod = eng.add_afpacket_port(a.pod, role="pod", frames=a.frames, network=topo.NET)
            up = eng.add_afpacket_port(a.uplink, role="uplink", frames=a.frames)
        elif a.driver == "pmd":
            pod = eng.add_port(pmd_devargs(0, a.pod, a.frames), role="pod", network=topo.NET)
            up = eng.add_port(pmd_devargs(1, a.uplink, a.frames), role="uplink")
        else:
            pod = add_kernel_port(eng, a.pod, "af_xdp", network=topo.NET)
            up = add_kernel_port(eng, a.uplink, "af_xdp", role="uplink")
        info = eng.port_info(up)
        eng.set_vtep(
            f"{topo.LOCAL_VTEP}/{topo.VTEP_PREFIX_LEN}",
            info.mac,
            up,
            udp_port=topo.VXLAN_PORT,
            next_hop_mac=topo.NEXT_HOP_MAC,
        )
        for k in range(a.macs):
            eng.fdb_add_remote(topo.NET, topo.remote_mac(k), topo.vtep_of(k, a.vteps))
        if a.driver == "lane":
            # as the service joins a pod port (PodLife._join_express)
            eng.express_add_port(pod, a.pod, topo.NET, a.pod_mac, spoof=False)
        if a.driver == "afxdp":
            # the pod port's socket is the first made
            fds = sorted(_xdp_sockets())[:1]
            stats = XdpStats(fds)
        elif a.driver in ("native", "lane"):
            fds = _packet_sockets(a.pod)
            stats = KportStats(eng)
        else:
            fds = _packet_sockets(a.pod)
            stats = lambda: ring_stats(fds)  # noqa: E731
        stats()  # start counting from here
        eng.set_idle_sleep(a.idle_sleep_us)
        eng.set_idle_yield(not a.no_idle_yield)
        eng.start()
        tids = _worker_tasks()
        emit(
            {
                "event": "ready",
                "driver": a.driver,
                "eal_args": eng.eal_args,
                "ports": {"pod": eng.port_info(pod).name, "uplink": info.name},
                "vtep_mac": info.mac,
                "pod_rx_sockets": len(fds),
                "worker_threads": len(tids),
            }
        )
        final = False
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "snap":
                emit(_snap(eng, pod, up, stats, tids))
            elif cmd in ("quit", "final"):
                final = cmd == "final"
                break
            elif cmd:
                print(f"bench.afpacket_ours: unknown command {cmd!r}", file=sys.stderr, flush=True)
        eng.stop()
        if final:
            emit(_final(eng, pod, up))
    return 0


def run_capture(a) -> int:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    s.bind((a.iface, ETH_P_ALL))
    s.setblocking(False)
    emit({"event": "ready"})
    frames = []
    deadline = time.monotonic() + a.timeout
    while len(frames) < a.count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if not select.select([s], [], [], left)[0]:
            continue
        while len(frames) < a.count:
            try:
                data, addr = s.recvfrom(65536)
            except BlockingIOError:
                break
            if addr[2] != PACKET_OUTGOING:
                frames.append(data.hex())
    s.close()
    emit({"event": "captured", "frames": frames})
    return 0


def main(argv=None) -> int:
    child_unwind_on_sigterm()
    ap = argparse.ArgumentParser(
        prog="python -m bench.afpacket_ours", description=__doc__.split("\n")[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("engine")
    e.add_argument("--driver", choices=DRIVERS, required=True)
    e.add_argument("--pod", required=True, help="pod-facing kernel interface")
    e.add_argument("--uplink", required=True, help="underlay kernel interface")
    e.add_argument("--macs", type=int, default=topo.MIN_MACS)
    e.add_argument("--vteps", type=int, default=topo.MIN_VTEPS)
    e.add_argument(
        "--frames", type=int, default=1024, help="ring size in frames (native, lane, pmd)"
    )
    e.add_argument("--pod-mac", default=topo.local_mac(0), help="the pod's MAC (lane)")
    e.add_argument(
        "--control-cpu",
        type=int,
        default=None,
        help="the control thread's CPU (default: the worker's)",
    )
    e.add_argument("--worker-cpu", type=int, default=1)
    e.add_argument(
        "--idle-sleep-us", type=int, default=0, help="the worker's idle sleep (0: it spins)"
    )
    e.add_argument(
        "--no-idle-yield", action="store_true", help="an idle spinning worker keeps its CPU"
    )
    c = sub.add_parser("capture")
    c.add_argument("--iface", required=True)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--timeout", type=float, default=5.0)
    a = ap.parse_args(argv)
    try:
        return run_engine(a) if a.cmd == "engine" else run_capture(a)
    except Exception as ex:  # reported to the parent, which shows our output
        return child_failed("bench.afpacket_ours", ex)


if __name__ == "__main__":
    sys.exit(main())
