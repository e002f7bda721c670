"""Our side of the planes benchmark (bench.planes), run in a child process
(DPDK's EAL starts once per process):

    python -m bench.planes_ours --std S.pcap --control C.pcap --media M.pcap \\
        --rate BPS [--seconds S] [--warmup S] [--runs N] [--mode M] ...

prints one line ``BENCH-JSON {...}`` with every phase's counters (DPDK's own
log lines share stdout, hence the prefix), and a ``BENCH-SAY`` line as each
phase starts, which the parent shows.

Set-up (as tests/test_planes.py, with one pod port per profile):

    pod ring port "std"     net 0, VNI 1000, plane 0, priority 0, outer DSCP copied
    pod ring port "control" net 1, VNI 1002, plane 2, priority 2, outer DSCP CS3
    pod ring port "media"   net 2, VNI 1003, plane 3, priority 3, outer DSCP EF
        --> VXLAN to remote VTEP 10.0.0.2 --> uplink ring port, shaped to --rate

Every destination MAC found in a pcap gets an FDB entry to 10.0.0.2; the
VTEP has a static next-hop MAC (no ARP). The uplink's per-plane queues are
made by set_shaper, after the planes' queue lengths are set.

Offered load: this process feeds the pod ports itself (``dp_ring_inject``),
each plane at a fixed frame rate so that its wire bit rate (outer frame + 24
bytes of Ethernet overhead, what the shaper counts) is its share of
``--rate`` (``--std-x`` 2.0, ``--control-x`` 0.2, ``--media-x`` 0.1). The
control thread spins: whenever a plane owes whole frames (rate x elapsed
time - frames offered so far) it injects them, the next frames of its pcap
in a cycle. The long-run rate is exact whatever the loop's jitter; the loop
turns every few microseconds, so a plane whose frames are due every 100 us
or more (media, control) arrives one frame at a time, std in groups of a
few frames. The uplink ring is drained 16 frames at a time, every 250 us
(at once again while it holds more), so that the loop never stalls for
long; each frame's outer DSCP and VNI are counted from its raw bytes, as a
check of the marking on the wire. The collector is off while a phase runs.

A phase (``priority`` or ``fifo``, i.e. Engine.set_qos_mode(priority=...))
offers for ``--warmup`` + ``--seconds`` seconds, then stops offering and
lets the queues drain. Reported per plane:

- accounting over the whole phase: offered (frames the pod port's rx ring
  took), and the uplink queue's enqueued / sent / dropped counters, plus
  the depth left (offered = sent + dropped + depth must hold exactly);
- latency over the window (frames the scheduler sent after the warm-up and
  before offering stopped): the core's per-plane histogram (TSC at rx ->
  tx, bucket upper bounds), its exact sum, and the sent bit rate;
- the worker thread's scheduling over the window (/proc: time it waited on
  a run queue, involuntary context switches, and CPU 1's steal time): a
  worker that was preempted delays every plane, whatever the priority.

On a shared machine another process (another DPDK worker above all) can
take the worker's CPU for milliseconds. That is the host's doing, not the
scheduler's under test: a phase whose worker was off its CPU for more than
``--max-preempted`` of the window (default 1 %) is repeated, after 2 s, up
to ``--retries`` times; the last attempt is kept whatever it shows. Every
attempt is in the output, marked kept or not. Before each attempt the child
also waits (up to ``--wait-others`` s) while other processes have DPDK
worker threads (``lcore-worker-N``), which poll without pause.
"""

import argparse
import gc
import os
import struct
import sys
import time

from .common import child_failed, child_say, child_unwind_on_sigterm, emit

STD, CONTROL, MEDIA = 0, 2, 3
PLANE_NAMES = {STD: "std", CONTROL: "control", MEDIA: "media"}
#: plane -> (network index, VNI, priority, outer DSCP or None = copy inner)
PLANE_SETUP = {STD: (0, 1000, 0, None), CONTROL: (1, 1002, 2, 24), MEDIA: (2, 1003, 3, 46)}
LOCAL_VTEP = "10.0.0.1/24"
REMOTE_VTEP = "10.0.0.2"
VTEP_MAC = "02:00:0a:00:00:01"
NEXT_HOP_MAC = "02:00:0a:00:00:fe"
VXLAN_OVERHEAD = 50  # outer Ether 14 + IPv4 20 + UDP 8 + VXLAN 8
WIRE_OVERHEAD = 24  # FCS 4 + preamble 8 + IFG 12 (what the shaper adds)
DRAIN_EVERY = 0.00025


def read_pcap(path: str):
    """Frames of a classic pcap file as bytes (no scapy in this process)."""
    with open(path, "rb") as f:
        data = f.read()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        raise ValueError(f"{path}: not a pcap file")
    off, out = 24, []
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack_from(e + "IIII", data, off)
        off += 16
        out.append(data[off : off + incl])
        off += incl
    if not out:
        raise ValueError(f"{path}: no frames")
    return out


def wire_bits(inner_len: int) -> int:
    """Bits the shaper counts for one inner frame once encapsulated."""
    return (inner_len + VXLAN_OVERHEAD + WIRE_OVERHEAD) * 8


class Feeder:
    """Injects one plane's pcap frames, in a cycle, into its pod ring port
    at ``pps`` frames per second (one dp_ring_inject call per group)."""

    MAX_GROUP = 256

    def __init__(self, ffi, lib, port: int, frames, pps: float):
        self.ffi, self.lib, self.port, self.pps = ffi, lib, port, pps
        self.n = len(frames)
        # the frames twice over: any run of up to n frames is contiguous
        cyc = list(frames) * 2
        self.data = ffi.new("uint8_t[]", b"".join(cyc))
        self.lens = ffi.new("uint32_t[]", [len(f) for f in cyc])
        self.offs, o = [], 0
        for f in cyc:
            self.offs.append(o)
            o += len(f)
        self.i = 0
        self.due = 0  # frames owed so far (tried)
        self.offered = 0  # frames the rx ring took
        self.refused = 0  # rx ring full (should stay 0)
        self.groups = [0] * 5  # inject calls of 1, 2, 3-4, 5-8, 9+ frames

    def reset(self):
        self.due = self.offered = self.refused = 0
        self.groups = [0] * 5

    def push(self, elapsed: float):
        want = int(self.pps * elapsed) - self.due
        while want > 0:
            k = min(want, self.MAX_GROUP, self.n)
            got = self.lib.dp_ring_inject(
                self.port, 0, self.data + self.offs[self.i], self.lens + self.i, k
            )
            if got < 0:
                raise RuntimeError(f"dp_ring_inject on port {self.port} failed ({got})")
            self.due += k
            self.groups[0 if k == 1 else 1 if k == 2 else 2 if k <= 4 else 3 if k <= 8 else 4] += 1
            self.offered += got
            self.refused += k - got
            self.i = (self.i + k) % self.n
            want -= k


class Drain:
    """Takes the frames out of the uplink ring, ``chunk`` at a time (so that
    the feeding loop never stalls for long), and counts them by (VNI, outer
    TOS), read from the raw bytes."""

    def __init__(self, ffi, lib, port: int, chunk: int = 16):
        self.lib, self.port, self.chunk = lib, port, chunk
        self.buf = ffi.new("uint8_t[]", chunk * 2048)
        self.mv = memoryview(ffi.buffer(self.buf))
        self.lens = ffi.new("uint32_t[]", chunk)
        self.by = {}  # (vni, tos) -> frames
        self.other = 0  # not VXLAN on UDP 4789

    def reset(self):
        self.by, self.other = {}, 0

    def step(self) -> int:
        """One chunk; returns the frames taken."""
        n = self.lib.dp_ring_collect(self.port, self.buf, len(self.buf), self.lens, self.chunk)
        if n <= 0:
            return 0
        mv, by, off = self.mv, self.by, 0
        for i in range(n):
            ln = self.lens[i]
            # IPv4 (no options), UDP, destination port 4789
            if (
                ln >= VXLAN_OVERHEAD
                and mv[off + 12] == 0x08
                and mv[off + 13] == 0
                and mv[off + 23] == 17
                and mv[off + 36] == 0x12
                and mv[off + 37] == 0xB5
            ):
                key = ((mv[off + 46] << 16) | (mv[off + 47] << 8) | mv[off + 48], mv[off + 15])
                by[key] = by.get(key, 0) + 1
            else:
                self.other += 1
            off += ln
        return n

    def __call__(self) -> int:
        """Everything in the ring now."""
        total = 0
        while True:
            n = self.step()
            total += n
            if n < self.chunk:
                return total


def find_worker_tid():
    """The DPDK worker lcore thread of this process (named lcore-worker-N)."""
    for tid in sorted(os.listdir("/proc/self/task")):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if "worker" in f.read():
                    return int(tid)
        except OSError:
            pass
    return None


def sched(tid):
    """(cpu ns, run-queue wait ns, involuntary switches) of thread tid."""
    if tid is None:
        return None
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            run_ns, wait_ns, _ = (int(x) for x in f.read().split())
        nvcsw = 0
        with open(f"/proc/self/task/{tid}/status") as f:
            for line in f:
                if line.startswith("nonvoluntary_ctxt_switches"):
                    nvcsw = int(line.split()[1])
        return (run_ns, wait_ns, nvcsw)
    except OSError:
        return None


def cpu_stat(cpu: int = 1):
    """(steal, total) jiffies of one CPU from /proc/stat; None if unreadable."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{cpu} "):
                    v = [int(x) for x in line.split()[1:]]
                    return (v[7] if len(v) > 7 else 0, sum(v[:8]))
    except OSError:
        pass
    return None


def other_dpdk_workers():
    """Processes other than this one with a DPDK worker thread (lcore-worker-N):
    {pid: command}. Their workers poll CPUs ours needs."""
    me, out = os.getpid(), {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    if f.read().startswith("lcore-worker"):
                        with open(f"/proc/{pid}/cmdline", "rb") as c:
                            out[int(pid)] = (
                                c.read().replace(b"\0", b" ").decode(errors="replace")[:120].strip()
                            )
                        break
        except OSError:
            continue
    return out


def setup(eng, pcaps: dict, rate: int, burst: int, qlen: dict, ring: int, media_min_bps=0):
    """Planes, ports, networks, FDB, VTEP and the shaper; returns (uplink,
    {plane: pod port}, {plane: frames})."""
    for plane, (_, _, prio, dscp) in PLANE_SETUP.items():
        min_bps = media_min_bps if plane == MEDIA else 0
        eng.set_plane(plane, priority=prio, min_bps=min_bps, queue_len=qlen[plane], dscp=dscp)
    up = eng.add_ring_port("up", role="uplink", size=16384)
    eng.set_vtep(LOCAL_VTEP, VTEP_MAC, up, next_hop_mac=NEXT_HOP_MAC)
    pods, frames = {}, {}
    for plane, (net, vni, _, _) in PLANE_SETUP.items():
        frames[plane] = read_pcap(pcaps[plane])
        eng.add_network(net, vni=vni, plane=plane)
        pods[plane] = eng.add_ring_port(PLANE_NAMES[plane], network=net, size=ring)
        for mac in sorted({f[0:6] for f in frames[plane]}):
            eng.fdb_add_remote(net, mac, REMOTE_VTEP)
    # after set_plane: the queues are made with the planes' lengths
    eng.set_shaper(up, rate, burst_bytes=burst)
    return up, pods, frames


def lat_rows(c, planes):
    return {str(p): {"buckets": c.latency(p)[0], "sum_s": c.latency(p)[1]} for p in planes}


def run_phase(eng, name, up, feeders, drain, warmup, seconds, drain_timeout):
    """Offer every plane at its rate for warmup + seconds, then drain."""
    planes = sorted(feeders)
    for f in feeders.values():
        f.reset()
    drain()
    drain.reset()
    wtid = find_worker_tid()
    order = [feeders[p] for p in sorted(feeders, reverse=True)]  # media, control, std
    total = warmup + seconds
    gc.disable()  # no collector pause in the feeding loop
    gaps = {"max_us": 0.0, "over_100us": 0, "over_1ms": 0, "iterations": 0}
    c0 = eng.counters()
    cw = sw = None
    me = os.getpid()
    t0 = time.perf_counter()
    prev = t0
    next_drain = t0 + DRAIN_EVERY
    while True:
        now = time.perf_counter()
        el = now - t0
        if el >= total:
            break
        gap = now - prev
        prev = now
        gaps["iterations"] += 1
        if gap > 100e-6:
            gaps["over_100us"] += 1
            if gap > 1e-3:
                gaps["over_1ms"] += 1
            gaps["max_us"] = max(gaps["max_us"], gap * 1e6)
        for f in order:
            f.push(el)
        if now >= next_drain:
            # a chunk at a time; again at once while the ring holds more
            if drain.step() < drain.chunk:
                next_drain = now + DRAIN_EVERY
        if cw is None and el >= warmup:
            cw, sw, tw = eng.counters(), sched(wtid), time.perf_counter()
            fw = sched(me)
            stw = cpu_stat()
    ce, se, te = eng.counters(), sched(wtid), time.perf_counter()
    fe = sched(me)
    gc.enable()
    ste = cpu_stat()
    others = other_dpdk_workers()  # at the end: a /proc walk takes milliseconds
    # stop offering; the queues drain at the shaped rate
    deadline = time.monotonic() + drain_timeout
    while time.monotonic() < deadline:
        drain()
        if all(eng.queue_depth(up, p) == 0 for p in range(8)):
            break
        time.sleep(0.002)
    time.sleep(0.01)
    drain()
    cd = eng.counters()
    acc = cd.since(c0)
    win = ce.since(cw)
    out = {
        "phase": name,
        "window_s": te - tw,
        "offer_s": te - t0,
        "loop": gaps,
        "planes": {},
        "latency": lat_rows(win, planes),
        "drops": {k: v for k, v in acc.drops().items() if v},
        "uplink_out": {f"{vni}/{tos}": n for (vni, tos), n in sorted(drain.by.items())},
        "uplink_other": drain.other,
    }
    for p in planes:
        q, w = acc.qos_dict(up, p), win.qos_dict(up, p)
        out["planes"][str(p)] = {
            "offered": feeders[p].offered,
            "refused": feeders[p].refused,
            "inject_groups": feeders[p].groups,
            "enqueued": q["enqueued"],
            "sent": q["sent"],
            "dropped": q["dropped"],
            "depth": eng.queue_depth(up, p),
            "win_sent": w["sent"],
            "win_wire_bits": (w["sent_bytes"] + WIRE_OVERHEAD * w["sent"]) * 8,
        }
    out["depth_plane0"] = eng.queue_depth(up, 0)
    out["other_dpdk"] = {str(k): v for k, v in others.items()}
    if stw and ste and ste[1] > stw[1]:
        out["cpu1_steal"] = (ste[0] - stw[0]) / (ste[1] - stw[1])
    if fw and fe:
        out["feeder_sched"] = {
            "cpu_ms": (fe[0] - fw[0]) / 1e6,
            "runqueue_wait_ms": (fe[1] - fw[1]) / 1e6,
            "involuntary_switches": fe[2] - fw[2],
        }
    if sw and se:
        out["worker_sched"] = {
            "cpu_ms": (se[0] - sw[0]) / 1e6,
            "runqueue_wait_ms": (se[1] - sw[1]) / 1e6,
            "involuntary_switches": se[2] - sw[2],
        }
    return out


def wait_for_others(limit: float) -> float:
    """Wait (up to ``limit`` s) while other processes run DPDK workers: they
    poll the CPUs ours needs. Returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit and other_dpdk_workers():
        time.sleep(1.0)
    return time.monotonic() - t0


def preempted(ph) -> float:
    """Share of the window the worker was runnable but not running (waiting
    on a run queue, or its vCPU stolen by the hypervisor)."""
    w = ph.get("worker_sched") or {}
    return w.get("runqueue_wait_ms", 0) / 1e3 / ph["window_s"] + ph.get("cpu1_steal", 0)


def main(argv=None):
    child_unwind_on_sigterm()
    ap = argparse.ArgumentParser(
        prog="python -m bench.planes_ours", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--std", required=True)
    ap.add_argument("--control", required=True)
    ap.add_argument("--media", required=True)
    ap.add_argument("--rate", type=int, required=True, help="uplink shaper, bit/s")
    ap.add_argument("--burst", type=int, default=4096, help="shaper bucket, bytes")
    ap.add_argument("--std-x", type=float, default=2.0)
    ap.add_argument("--control-x", type=float, default=0.2)
    ap.add_argument("--media-x", type=float, default=0.1)
    ap.add_argument("--std-qlen", type=int, default=1024)
    ap.add_argument("--qlen", type=int, default=256, help="control and media queues")
    ap.add_argument("--media-min-bps", type=int, default=0, help="media's guaranteed rate")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--mode", choices=("hugepages", "fallback"), default="fallback")
    ap.add_argument(
        "--retries",
        type=int,
        default=4,
        help="repeat a phase whose worker was preempted (default 4 times)",
    )
    ap.add_argument(
        "--wait-others",
        type=float,
        default=120.0,
        help="before a phase, wait up to S s while other DPDK processes run",
    )
    ap.add_argument(
        "--max-preempted",
        type=float,
        default=0.01,
        help="share of the window the worker may be off its CPU (default 0.01)",
    )
    a = ap.parse_args(argv)
    try:
        from dataplane.engine import LATENCY_BOUNDS_S, Engine, EngineConfig, ffi, lib

        cfg = EngineConfig(
            mode=a.mode,
            lcores=[0, 1],
            memory_mb=1024,
            n_mbufs=65535,
            file_prefix=f"bench-planes-{os.getpid()}",
        )
        with Engine(cfg) as eng:
            pcaps = {STD: a.std, CONTROL: a.control, MEDIA: a.media}
            qlen = {STD: a.std_qlen, CONTROL: a.qlen, MEDIA: a.qlen}
            up, pods, frames = setup(
                eng, pcaps, a.rate, a.burst, qlen, ring=8192, media_min_bps=a.media_min_bps
            )
            share = {STD: a.std_x, CONTROL: a.control_x, MEDIA: a.media_x}
            feeders, cfg_planes = {}, {}
            for p, fr in frames.items():
                mean_bits = sum(wire_bits(len(f)) for f in fr) / len(fr)
                pps = share[p] * a.rate / mean_bits
                feeders[p] = Feeder(ffi, lib, pods[p], fr, pps)
                cfg_planes[str(p)] = {
                    "name": PLANE_NAMES[p],
                    "pps": pps,
                    "x": share[p],
                    "frames": len(fr),
                    "mean_inner_len": sum(map(len, fr)) / len(fr),
                    "mean_wire_bits": mean_bits,
                    "vni": PLANE_SETUP[p][1],
                    "priority": PLANE_SETUP[p][2],
                    "dscp": PLANE_SETUP[p][3],
                    "queue_len": qlen[p],
                }
            drain = Drain(ffi, lib, up)
            # no housekeeping thread: static next hop, no learning, nothing for it
            # to do - and it would take the GIL from the feeding loop now and then
            eng.start(housekeeping_interval=0)
            time.sleep(0.2)
            phases = []
            for r in range(a.runs):
                for name, prio in (("priority", True), ("fifo", False)):
                    eng.set_qos_mode(priority=prio)
                    for attempt in range(1, a.retries + 2):
                        if a.wait_others > 0 and other_dpdk_workers():
                            child_say(
                                f"waiting up to {a.wait_others:g} s while other "
                                "processes run DPDK workers"
                            )
                        waited = wait_for_others(a.wait_others)
                        child_say(
                            f"phase {name} (run {r + 1}/{a.runs}, attempt {attempt}): "
                            f"offering for {a.warmup + a.seconds:g} s, then draining"
                        )
                        ph = run_phase(
                            eng, name, up, feeders, drain, a.warmup, a.seconds, drain_timeout=10.0
                        )
                        ph["run"], ph["attempt"] = r + 1, attempt
                        ph["waited_for_others_s"] = waited
                        ph["preempted"] = preempted(ph)
                        ph["kept"] = ph["preempted"] <= a.max_preempted or attempt == a.retries + 1
                        phases.append(ph)
                        if ph["kept"]:
                            break
                        child_say(
                            f"  the worker was off its CPU {ph['preempted']:.1%} of the "
                            "window: again in 2 s"
                        )
                        time.sleep(2.0)  # let the other work pass
            eng.set_qos_mode(priority=True)
            eng.stop()
            res = {
                "config": {
                    "rate": a.rate,
                    "burst": a.burst,
                    "seconds": a.seconds,
                    "warmup": a.warmup,
                    "mode": a.mode,
                    "planes": cfg_planes,
                    "eal_args": eng.eal_args,
                    "tsc_hz": eng.tsc_hz,
                },
                "bounds_s": LATENCY_BOUNDS_S,
                "phases": phases,
            }
    except Exception as e:  # reported to the parent, which shows our output
        return child_failed("bench.planes_ours", e)
    emit(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
