"""VXLAN encap on kernel interfaces: our native AF_PACKET driver against
DPDK's ``net_af_packet`` PMD, DPDK's ``net_af_xdp`` PMD (the node's
``kernel_driver: af_xdp``) and the kernel's own bridge + vxlan.

    python -m bench afpacket [--seconds S] [--runs N] ...
    ->  RESULT name=afpacket native_pps=.. pmd_pps=.. kernel_pps=.. ratio=<native/pmd>
        kernel_ratio=<native/kernel> afxdp_pps=.. afxdp_kernel_ratio=<afxdp/kernel>
        lane_pps=.. lane_kernel_ratio=<lane/kernel>
        [source_limited=<contenders>]   (those that delivered all they were offered in
                                         most runs: the source's figure, not theirs)
        [contenders=..] [rate_pps=.. | load=..] [rps=off] [idle_yield=off]
        [idle_sleep_us=..] [br_netfilter=on] [verified=0]
                                        (what departs from the default footing)
    ``--contenders native,kernel`` (any of native, pmd, afxdp, lane, kernel) runs those
    alone: the line then has their figures and the ratios between them only.

Set-up (all in three network namespaces made for the run, named
``afpb<pid>-{pod,node,ul}``, removed at the end, also on error or Ctrl-C):

    pod ns                node ns                                    ul ns ("underlay")
    eth0  ==veth==  vpod  [ contender ]  vup 10.0.0.1/24  ==veth==  eth0  (counted)
    generator             02:00:0a:00:00:01

- Traffic: bench.traffic's ``encap`` profile (scapy, 4096 frames of 64 bytes
  on the wire, 60 without FCS; 64 remote MACs behind 8 remote VTEPs
  10.0.0.2-9, VNI 5000; three in four UDP, one in four TCP; shuffled), the
  frames ``python -m bench encap`` replays, but all from one source MAC
  (``POD_MAC``), as from one pod.
- Generator (bench/afpacket_gen.c, compiled with the system C compiler at
  start): replays the pcap on the pod's eth0 through a PACKET_TX_RING with
  qdisc bypass, every ring frame filled once; per batch of 256 frames it only
  flips status words and makes one sendto(), so its rate is the kernel's
  per-skb cost on its CPU (``--gen-cpu``). Its send buffer is large
  (SO_SNDBUFFORCE): sent skbs stay charged to it until the forwarding side
  frees them, and with the default buffer the generator would stall on the
  latency of the path under test.
- Footing: the generator has its CPU (``--gen-cpu``) to itself - every
  thread of an engine (worker, EAL control thread, Python housekeeping)
  is pinned to the forwarding CPU - and every contender is offered the same
  load: ``--load`` (0.9) times the source's rate measured alone before the
  runs, paced by the generator (``--rate PPS`` sets it, ``--rate 0`` lets
  the generator run flat out, which then varies with the contender). A
  contender offered less than 95 % of it is named in a WARNING. The rx
  rings hold the same number of 64-byte frames (``--ring-slots``, 1024:
  the core's rx descriptors, which size net_af_xdp's rx ring): the PMD and
  the native driver get 1024 TPACKET_V2 frames each.
- Contenders, each with one forwarding CPU (``--fwd-cpu``):
    native  our core (bench.afpacket_ours, a child process in the node ns,
            EAL ``--no-huge``, lcores 0 and 1 both on fwd-cpu: control
            thread, one worker) with vpod as a pod port of network 0 and vup
            as the uplink, both through ``Engine.add_afpacket_port``
            (TPACKET_V2 rx and tx rings with virtio-net headers, qdisc bypass);
    pmd     the same core and configuration, both ports through DPDK 22.11's
            ``net_af_packet`` (TPACKET_V2 rx and tx rings, qdisc bypass on);
    afxdp   the same core and configuration, both ports through DPDK 22.11's
            ``net_af_xdp`` (queue 0, copy mode: veth has no zero-copy; XDP
            native on vpod: its program runs in vpod's NAPI, which the
            benchmark makes threaded and pins to the forwarding CPU, where
            RPS puts the others' receive work);
    lane    the native contender with vpod in the express lane, as the node
            service puts a kernel pod's port by default (``express_lane:
            auto``): its tc program on vpod's ingress encapsulates the pod's
            TCP to remote VTEPs itself (the pcap's quarter that is TCP;
            datagrams keep the core's path) and sends it out of vup, in
            vpod's receive softirq, never through the rx ring or the worker
            (the progress line says what share of the delivered frames the
            lane took; a run where it took none fails);
    kernel  no process: vpod and a ``vxlan`` device (VNI 5000, local
            10.0.0.1, dstport 4789, nolearning, noudpcsum as our UDP checksum
            0) in a Linux bridge, static bridge + vxlan FDB entries for every
            remote MAC - the docker-overlay / flannel class of data path.
  Both engines encapsulate to the static next-hop MAC 02:00:0a:00:00:fe;
  the kernel gets permanent neighbour entries for the remote VTEPs to the
  same MAC. That MAC is not the underlay end's, so the ul namespace drops
  the frames at once (ip_rcv, PACKET_OTHERHOST): the receive cost there is
  the same small one for every contender.
- Where the kernel work runs: a veth transmit queues the frame for the
  receiving end's softirq on the sending CPU. With RPS (the default) vpod's
  receive processing is steered to the forwarding CPU, so everything the
  forwarding costs lands there - for the kernel contender the whole bridge
  + vxlan + underlay transmit, for the engines the kernel's copy into their
  rx ring (softirq, partly in ksoftirqd/<fwd-cpu>) next to the busy-polling
  worker, whose tx (sendto) runs the underlay transmit in its own context.
  The generator's CPU only builds skbs and queues them. ``--no-rps`` leaves
  vpod's receive processing on the generator's CPU instead: the kernel
  contender then forwards on the generator's CPU (and the fwd CPU idles),
  the engines get the rx copy done on the generator's CPU for free.
  Under overload this matters: the kernel contender drops the excess when
  the forwarding CPU's backlog is full (cheap, on the generator's side),
  the engines only after the softirq has copied it into their rx ring
  and found the ring full - work on the forwarding CPU for nothing, which
  also takes CPU time from the worker (receive livelock).
- Counting: delivered = what the contender transmitted on vup (its
  tx_packets and tx_dropped), over ``--seconds`` after ``--warmup``. The ul
  end's receive is queued on the forwarding CPU's backlog, the queue RPS
  fills with vpod's frames, and drops there what does not fit (vup's
  tx_dropped): that is the bench's underlay end, not the contender (a real
  uplink sends to a wire), so it counts as delivered and is said apart in
  the progress line;
  offered = rx_packets + rx_dropped of vpod over the same window. Before the
  runs the generator runs alone (vpod attached to nothing) to show the
  source's rate. A contender that delivers (almost) all it is offered was
  limited by the source, not by itself: that is printed as a WARNING. Each
  run also prints where the forwarding CPU's time went (/proc/stat: user,
  sys, softirq, idle, steal - other work on a shared machine shows as user
  there) and, for the engines, the worker thread's CPU share, its busy-poll
  ratio and the frames the kernel dropped because the rx ring was full
  (PACKET_STATISTICS of the pod port's socket; for the native driver, which
  reads and so resets those itself, its own ``kport_kernel`` drops). From the same figures: the
  share of the forwarding CPU the contender held (all but idle, steal and
  other processes' user time; the worker's user time counts as the
  engine's) and its rate per CPU-second held - printed beside the RESULT
  as a guide on a shared machine, where other work takes more from the
  kernel contender (nothing of it runs in user space) than from a worker
  that polls all the time. The RESULT line has the plain rates.
- DPDK's ``net_af_packet`` changes the interfaces it uses: its port start
  flushed vup's (permanent) neighbour entries here and it leaves both
  interfaces promiscuous when it exits. Before every contender the node's
  interfaces are put back (promisc off, up, neighbour entries).
- Functional check (``--no-verify`` skips it), once per contender before
  its first timed run: every frame of the pcap sent once, paced, must come
  out of the underlay exactly once as VXLAN (VNI, dst port 4789, flags 0x08)
  from 10.0.0.1 to the remote VTEP of its inner destination MAC, next-hop
  MAC as outer destination, the inner frame unchanged.
- Accounting, for every run of an engine (the functional check included):
  once the generator has stopped, the engine stops its worker (which sends
  what it holds) and reads its counters - every frame the core received on
  its two ports must have been sent or counted as a drop with a reason
  (the kernel's ring drops, before the core's receive or after its send,
  and the express lane's are not part of that sum, and are shown apart).
  One that is neither ends the benchmark without a RESULT, exit code 1.
  The kernel contender has no such count: its rate is what vup sent.

Runs alternate native, pmd, afxdp, lane, kernel (or ``--contenders``),
``--runs`` times; the result is the median of each and the ratios of the
medians. Progress goes to stderr (``--quiet``: none); stdout has the RESULT
line. Needs root (namespaces),
``ip``/``bridge`` (iproute2), a C compiler and the built core (``python3
build.py``).
"""

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from . import topology as topo
from .common import (
    JSON_PREFIX,
    ROOT,
    BenchError,
    add_run_options,
    check_cpu_options,
    child_env,
    cpu_ticks,
    fmt_runs,
    medians,
    parse_args,
    quiet_netns,
    ratio,
    run_cmd,
    run_main,
    say,
    say_machine,
)

GEN_SRC = os.path.join(ROOT, "bench", "afpacket_gen.c")
CONTENDERS = ("native", "pmd", "afxdp", "lane", "kernel")
#: the RESULT line's ratios: key -> (numerator, denominator)
RATIOS = {
    "ratio": ("native", "pmd"),
    "kernel_ratio": ("native", "kernel"),
    "afxdp_kernel_ratio": ("afxdp", "kernel"),
    "lane_kernel_ratio": ("lane", "kernel"),
}
#: rx descriptors the core gives an ethdev queue (csrc/dp_port.c): the
#: net_af_xdp rx ring's size, which the other drivers' rings are matched to
AF_XDP_RX_SLOTS = 1024
NATIVE_FRAME_SIZE = 2048  # a native ring frame at this MTU: the ring is frames x 2048 bytes
DEFAULT_LOAD = 0.9  # of the source's own rate: an overload for every contender here


def native_frames(slots: int) -> int:
    """The native driver's ``frames`` for an rx ring of ``slots`` frames: its
    TPACKET_V2 ring holds one frame per 2048-byte slot at this MTU."""
    return slots


#: a kernel pod has one MAC: every frame of the pcap is from it (the express
#: lane takes a pod's frames from its own MAC only)
POD_MAC = topo.local_mac(0)
POD_IF = "eth0"  # in the pod ns
NODE_POD_IF = "vpod"  # in the node ns, facing the pod
NODE_UP_IF = "vup"  # in the node ns, facing the underlay (the uplink)
UL_IF = "eth0"  # in the ul ns: the counting point
BRIDGE, VXLAN_IF = "br0", "vx0"


def _run(cmd, what: str, timeout: float = 30.0, input_text=None) -> str:
    """Run a set-up command (run_cmd); its stdout."""
    return run_cmd(cmd, what, timeout, input_text=input_text).stdout


def _cpu_stat(cpu: int) -> list:
    """The /proc/stat line of one CPU: user nice system idle iowait irq
    softirq steal (clock ticks)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                return [int(x) for x in line.split()[1:9]]
    raise BenchError(f"CPU {cpu} not in /proc/stat")


def _napi_threads(ifname: str) -> set:
    """Thread ids of the kernel's threaded-NAPI threads named for ``ifname``
    (``napi/<ifname>-<id>``)."""
    out = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().startswith(f"napi/{ifname}-"):
                    out.add(int(pid))
        except OSError:
            pass
    return out


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    return cpu_ticks(f"/proc/{pid}/stat")


class _Child:
    """A process we started (in its own session, so a terminal's Ctrl-C
    reaches only us): its output collected line by line by a thread, JSON
    events picked out, stopped by its PID."""

    def __init__(self, cmd, what: str, stdin=False, cpu=None):
        self.what = what
        self.lines = []
        self._q = queue.Queue()
        self.p = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=child_env(),
            text=True,
            bufsize=1,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.p.pid
        if cpu is not None:
            # inherited across the exec chain (ip netns exec -> program);
            # set here rather than in a preexec_fn (unsafe with threads)
            os.sched_setaffinity(self.pid, {cpu})
        self._t = threading.Thread(target=self._read, name=f"out-{what}", daemon=True)
        self._t.start()

    def _read(self):
        for line in self.p.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith(JSON_PREFIX):
                try:
                    self._q.put(json.loads(line[len(JSON_PREFIX) :]))
                except ValueError:
                    pass
        self._q.put(None)  # EOF

    def tail(self, n: int = 20) -> str:
        return "\n".join("    " + x for x in self.lines[-n:])

    def expect(self, event: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(
                    f"{self.what}: no '{event}' within {timeout:.0f} s:\n" + self.tail()
                )
            try:
                msg = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if msg is None:
                self._t.join(1)
                self.p.wait()
                raise BenchError(
                    f"{self.what} exited (code {self.p.returncode}) "
                    f"before '{event}':\n" + self.tail()
                )
            if msg.get("event") == event:
                return msg

    def send(self, line: str):
        try:
            self.p.stdin.write(line + "\n")
            self.p.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def stop(self, grace: float = 5.0):
        """Ask nicely (quit / EOF on stdin, then SIGTERM), then SIGKILL -
        always this one PID."""
        if self.p.poll() is None and self.p.stdin is not None:
            self.send("quit")
            try:
                self.p.stdin.close()
            except OSError:
                pass
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._t.join(2)


class Lab:
    """The three namespaces, their veths and the processes started in them;
    everything removed by close(), whatever happened."""

    def __init__(self, args, workdir: str):
        self.args = args
        self.workdir = workdir
        tag = f"afpb{os.getpid()}"
        self.pod_ns, self.node_ns, self.ul_ns = (f"{tag}-pod", f"{tag}-node", f"{tag}-ul")
        self._made_ns = []
        self._children = []
        self._sleepers = {}
        self.gen_bin = os.path.join(workdir, "afpacket_gen")

    # ------------------------------------------------------------ helpers
    def ip(self, ns, *args, what="ip"):
        return _run(["ip", "-n", ns, *args], what)

    def nsexec(self, ns, *cmd):
        return ["ip", "netns", "exec", ns, *cmd]

    def spawn(self, cmd, what, **kw) -> _Child:
        c = _Child(cmd, what, **kw)
        self._children.append(c)
        return c

    def reap(self, c: _Child, grace: float = 5.0):
        c.stop(grace)
        if c in self._children:
            self._children.remove(c)

    # ------------------------------------------------------------- set-up
    def build_generator(self):
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise BenchError("no C compiler (cc/gcc) to build the traffic generator")
        _run(
            [cc, "-O2", "-Wall", "-o", self.gen_bin, GEN_SRC], "building the generator", timeout=120
        )

    def setup(self):
        a = self.args
        for ns in (self.pod_ns, self.node_ns, self.ul_ns):
            _run(["ip", "netns", "add", ns], "creating namespaces")
            self._made_ns.append(ns)
        self.ip(
            self.pod_ns,
            "link",
            "add",
            POD_IF,
            "type",
            "veth",
            "peer",
            "name",
            NODE_POD_IF,
            "netns",
            self.node_ns,
            what="pod veth",
        )
        self.ip(
            self.node_ns,
            "link",
            "add",
            NODE_UP_IF,
            "type",
            "veth",
            "peer",
            "name",
            UL_IF,
            "netns",
            self.ul_ns,
            what="underlay veth",
        )
        for ns in (self.pod_ns, self.node_ns, self.ul_ns):
            quiet_netns(ns)
        self.ip(self.pod_ns, "link", "set", POD_IF, "up")
        self.ip(self.node_ns, "link", "set", NODE_POD_IF, "up")
        self.ip(self.node_ns, "link", "set", NODE_UP_IF, "address", topo.VTEP_MAC, "up")
        self.ip(
            self.node_ns,
            "addr",
            "add",
            f"{topo.LOCAL_VTEP}/{topo.VTEP_PREFIX_LEN}",
            "dev",
            NODE_UP_IF,
        )
        self.ip(self.ul_ns, "link", "set", UL_IF, "up")
        self.reset_node()  # + the kernel vxlan's next-hop neighbour entries
        # where vpod's receive softirq runs (see the module docstring)
        mask = f"{1 << a.fwd_cpu:x}" if a.rps else "0"
        _run(
            self.nsexec(
                self.node_ns,
                "sh",
                "-c",
                f"echo {mask} > /sys/class/net/{NODE_POD_IF}/queues/rx-0/rps_cpus",
            ),
            "setting RPS on vpod",
        )
        # br_netfilter (when the kernel has it) would run bridged frames
        # through iptables hooks in this namespace: off unless asked for
        val = "1" if a.br_netfilter else "0"
        for k in ("call-iptables", "call-ip6tables", "call-arptables"):
            path = f"/proc/sys/net/bridge/bridge-nf-{k}"
            _run(
                self.nsexec(self.node_ns, "sh", "-c", f"[ ! -e {path} ] || echo {val} > {path}"),
                "setting bridge-nf sysctls",
            )
        # processes that stay in the node and ul namespaces, so their
        # counters can be read from /proc/<pid>/net/dev without forking
        for ns in (self.node_ns, self.ul_ns):
            self._sleepers[ns] = self.spawn(
                self.nsexec(ns, "sleep", "infinity"), f"sleeper in {ns}"
            )

    def close(self):
        for c in reversed(self._children):
            try:
                c.stop(grace=3.0)
            except Exception as e:  # keep cleaning up
                print(
                    f"bench: could not stop {c.what} (pid {c.pid}): {e}",
                    file=sys.stderr,
                    flush=True,
                )
        self._children = []
        for ns in reversed(self._made_ns):
            p = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if p.returncode != 0:
                print(
                    f"bench: could not remove namespace {ns}: {p.stderr.strip()}",
                    file=sys.stderr,
                    flush=True,
                )
        self._made_ns = []

    # ----------------------------------------------------------- counters
    def netdev(self, ns) -> dict:
        """{ifname: (rx_packets, rx_dropped, tx_packets, tx_dropped)} in ns."""
        out = {}
        with open(f"/proc/{self._sleepers[ns].pid}/net/dev") as f:
            for line in f.read().splitlines()[2:]:
                name, rest = line.split(":", 1)
                v = rest.split()
                out[name.strip()] = (int(v[1]), int(v[3]), int(v[9]), int(v[11]))
        return out

    def sample(self, gen=None, engine=None) -> dict:
        s = {}
        if engine is not None:
            engine.send("snap")
            s["engine"] = engine.expect("snap", 10)
        node = self.netdev(self.node_ns)
        s["t"] = time.monotonic()
        # what the contender handed to the underlay: vup's transmits, those
        # the ul end's receive then dropped included (veth counts them as
        # vup's tx_dropped): that end's receive is queued on the forwarding
        # CPU's backlog, which RPS fills with vpod's frames, where a real
        # uplink sends to a wire
        s["delivered"] = node[NODE_UP_IF][2] + node[NODE_UP_IF][3]
        s["ul_dropped"] = node[NODE_UP_IF][3]
        s["offered"] = node[NODE_POD_IF][0] + node[NODE_POD_IF][1]
        s["gen_ticks"] = _cpu_ticks(gen.pid) if gen is not None else 0
        s["fwd_cpu"] = _cpu_stat(self.args.fwd_cpu)
        return s

    # ---------------------------------------------------------- generator
    def start_generator(self, pcap, rate_pps: int = 0) -> _Child:
        rate = ["--pps", str(rate_pps)] if rate_pps else []
        return self.spawn(
            self.nsexec(self.pod_ns, self.gen_bin, POD_IF, pcap, *rate),
            "generator",
            cpu=self.args.gen_cpu,
        )

    def send_once(self, pcap):
        """Every pcap frame once, paced (the functional check's input)."""
        c = self.spawn(
            self.nsexec(self.pod_ns, self.gen_bin, POD_IF, pcap, "--once"),
            "generator --once",
            cpu=self.args.gen_cpu,
        )
        try:
            c.p.wait(30)
        except subprocess.TimeoutExpired:
            raise BenchError("generator --once did not finish in 30 s:\n" + c.tail()) from None
        finally:
            self.reap(c)
        if c.p.returncode != 0:
            raise BenchError(f"generator failed (code {c.p.returncode}):\n" + c.tail())

    # ---------------------------------------------------------- contenders
    def reset_node(self):
        """Put the node's interfaces back as setup() left them. DPDK's
        net_af_packet changes them behind our back: its port start flushes
        vup's neighbour entries (permanent ones too) and it leaves both
        interfaces promiscuous when it exits."""
        for dev in (NODE_POD_IF, NODE_UP_IF):
            self.ip(
                self.node_ns,
                "link",
                "set",
                dev,
                "promisc",
                "off",
                "up",
                what="resetting node links",
            )
        for vtep in topo.remote_vteps(self.args.vteps):
            self.ip(
                self.node_ns,
                "neigh",
                "replace",
                vtep,
                "lladdr",
                topo.NEXT_HOP_MAC,
                "dev",
                NODE_UP_IF,
                "nud",
                "permanent",
                what="kernel vxlan next hop",
            )

    def kernel_up(self):
        a, ns = self.args, self.node_ns
        self.ip(ns, "link", "add", BRIDGE, "type", "bridge", what="kernel bridge")
        self.ip(
            ns,
            "link",
            "add",
            VXLAN_IF,
            "type",
            "vxlan",
            "id",
            str(topo.VNI),
            "local",
            topo.LOCAL_VTEP,
            "dstport",
            str(topo.VXLAN_PORT),
            "dev",
            NODE_UP_IF,
            "nolearning",
            "noudpcsum",
            what="kernel vxlan",
        )
        self.ip(ns, "link", "set", VXLAN_IF, "master", BRIDGE, what="kernel bridge")
        self.ip(ns, "link", "set", NODE_POD_IF, "master", BRIDGE, what="kernel bridge")
        batch = []
        for k in range(a.macs):
            mac, vtep = topo.remote_mac(k), topo.vtep_of(k, a.vteps)
            batch.append(f"fdb append {mac} dev {VXLAN_IF} dst {vtep} self permanent")
            batch.append(f"fdb add {mac} dev {VXLAN_IF} master static")
        _run(["bridge", "-n", ns, "-batch", "-"], "kernel FDB", input_text="\n".join(batch) + "\n")
        self.ip(ns, "link", "set", VXLAN_IF, "up", what="kernel vxlan")
        self.ip(ns, "link", "set", BRIDGE, "up", what="kernel bridge")
        # STP is off: ports forward as soon as they are up; wait for it anyway
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            out = _run(["bridge", "-n", ns, "link", "show", "dev", NODE_POD_IF], "bridge state")
            if "state forwarding" in out:
                return
            time.sleep(0.05)
        raise BenchError(f"{NODE_POD_IF} did not reach the forwarding state:\n{out}")

    def kernel_down(self):
        for dev in (BRIDGE, VXLAN_IF):
            subprocess.run(["ip", "-n", self.node_ns, "link", "del", dev], capture_output=True)

    def engine_up(self, driver: str) -> _Child:
        a = self.args
        # vpod's NAPI threads from before the attach (a device set threaded
        # once makes its later NAPIs threaded at once)
        before = _napi_threads(NODE_POD_IF)
        c = self.spawn(
            self.nsexec(
                self.node_ns,
                sys.executable,
                "-m",
                "bench.afpacket_ours",
                "engine",
                "--driver",
                driver,
                "--pod",
                NODE_POD_IF,
                "--uplink",
                NODE_UP_IF,
                "--macs",
                str(a.macs),
                "--vteps",
                str(a.vteps),
                "--frames",
                str(native_frames(a.ring_slots) if driver in ("native", "lane") else a.ring_slots),
                "--pod-mac",
                POD_MAC,
                "--worker-cpu",
                str(a.fwd_cpu),
                "--idle-sleep-us",
                str(a.idle_sleep_us),
                *(["--no-idle-yield"] if a.no_idle_yield else []),
            ),
            f"engine ({driver})",
            stdin=True,
            cpu=a.fwd_cpu,  # the generator's CPU is the generator's alone
        )
        c.ready = c.expect("ready", 60)
        if driver == "afxdp" and a.rps:
            # vpod's XDP program runs in vpod's NAPI (made when it was
            # attached), scheduled on the sender's CPU; threaded, pinned to
            # the forwarding CPU, it lands where RPS puts the others' receive
            _run(
                self.nsexec(
                    self.node_ns, "sh", "-c", f"echo 1 > /sys/class/net/{NODE_POD_IF}/threaded"
                ),
                "threaded NAPI on vpod",
            )
            new = _napi_threads(NODE_POD_IF) - before
            if not new:
                raise BenchError(f"no NAPI thread of {NODE_POD_IF} after the AF_XDP attach")
            for tid in new:
                os.sched_setaffinity(tid, {a.fwd_cpu})
        return c

    # --------------------------------------------------------------- check
    def verify(self, name: str, pcap: str, frames, engine=None):
        before = self.sample(None, engine)
        cap = self.spawn(
            self.nsexec(
                self.ul_ns,
                sys.executable,
                "-m",
                "bench.afpacket_ours",
                "capture",
                "--iface",
                UL_IF,
                "--count",
                str(len(frames)),
                "--timeout",
                "5",
            ),
            "capture",
        )
        try:
            cap.expect("ready", 30)
            self.send_once(pcap)
            got = [bytes.fromhex(h) for h in cap.expect("captured", 30)["frames"]]
        finally:
            self.reap(cap)
        errs = check_encap(frames, got, self.args.macs, self.args.vteps)
        after = self.sample(None, engine) if errs else None
        missing = len(frames) - len(got)
        if (
            engine is not None
            and len(errs) == 1
            and errs[0].startswith(f"{missing} of ")
            and after["engine"]["ring_drops"] == missing
        ):
            # every frame that came out was right; the missing ones were
            # refused by a full rx ring and counted (a small ring on a busy
            # machine), not lost in the forwarding
            say(
                f"WARNING: verify {name}: {missing} of {len(frames)} frames dropped by the "
                f"kernel at a full rx ring (counted); the {len(got)} that came out of the "
                "underlay were correctly encapsulated"
            )
            return
        if errs:
            errs.append(
                f"vpod offered {after['offered'] - before['offered']}, vup sent "
                f"{after['delivered'] - before['delivered']} to the underlay"
            )
            if engine is not None:
                e0, e1 = before["engine"], after["engine"]
                errs.append(
                    f"engine: pod rx {e1['pod_rx'] - e0['pod_rx']}, uplink tx "
                    f"{e1['up_tx'] - e0['up_tx']}, rx ring full {e1['ring_drops']}, "
                    f"drops {e1['drops']}"
                )
            raise BenchError(f"{name}: functional check failed:\n  " + "\n  ".join(errs))
        say(
            f"verify {name}: {len(got)}/{len(frames)} frames came out of the underlay "
            f"correctly encapsulated"
        )


# ---------------------------------------------------------------- checking


def _ipv4(b: bytes) -> str:
    return ".".join(str(x) for x in b)


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def check_encap(inp, out, n_macs: int, n_vteps: int):
    """Problems (list of str) with ``out``, the frames captured at the
    underlay for ``inp`` sent once: every input frame must come out exactly
    once, VXLAN-encapsulated towards the remote VTEP of its inner
    destination MAC. (The outer DSCP/DF/source-port rules of our VTEP are
    checked by ``python -m bench encap``; the kernel contender does not
    follow them and need not.)"""
    vtep = {topo.remote_mac(k): topo.vtep_of(k, n_vteps) for k in range(n_macs)}
    want = set(inp)
    seen, errs = {}, []
    for n, raw in enumerate(out):
        problems = []
        if len(raw) < topo.VXLAN_OVERHEAD + 14 or raw[12:14] != b"\x08\x00":
            problems.append(f"not IPv4 ({len(raw)} bytes, ethertype {raw[12:14].hex()})")
        else:
            ip, udp, vx = raw[14:34], raw[34:42], raw[42:50]
            inner = raw[topo.VXLAN_OVERHEAD :]
            if ip[0] != 0x45 or ip[9] != 17:
                problems.append(f"IP version/ihl {ip[0]:#x}, protocol {ip[9]}")
            if int.from_bytes(ip[2:4], "big") != len(raw) - 14:
                problems.append(f"IP total length {int.from_bytes(ip[2:4], 'big')}")
            if int.from_bytes(udp[2:4], "big") != topo.VXLAN_PORT:
                problems.append(f"UDP dst port {int.from_bytes(udp[2:4], 'big')}")
            if vx[0] != 0x08 or int.from_bytes(vx[4:7], "big") != topo.VNI:
                problems.append(f"VXLAN flags {vx[0]:#x} vni {int.from_bytes(vx[4:7], 'big')}")
            if _mac(raw[0:6]) != topo.NEXT_HOP_MAC:
                problems.append(f"outer dst MAC {_mac(raw[0:6])}")
            if _ipv4(ip[12:16]) != topo.LOCAL_VTEP:
                problems.append(f"outer src IP {_ipv4(ip[12:16])}")
            if inner not in want:
                problems.append("inner frame is not one of the input frames")
            else:
                exp = vtep.get(_mac(inner[0:6]))
                if _ipv4(ip[16:20]) != exp:
                    problems.append(f"outer dst IP {_ipv4(ip[16:20])}, expected {exp}")
                seen[inner] = seen.get(inner, 0) + 1
        if problems:
            errs.append(f"frame {n}: " + "; ".join(problems))
        if len(errs) > 10:
            errs.append("...")
            return errs
    dup = sum(v - 1 for v in seen.values())
    if dup:
        errs.append(f"{dup} frames came out more than once")
    missing = len(want - set(seen))
    if missing:
        errs.append(f"{missing} of {len(want)} input frames never came out")
    return errs


# ----------------------------------------------------------------- running


def _rates(s0: dict, s1: dict) -> dict:
    dt = s1["t"] - s0["t"]
    hz = os.sysconf("SC_CLK_TCK")
    r = {
        "seconds": dt,
        "pps": (s1["delivered"] - s0["delivered"]) / dt,
        "offered_pps": (s1["offered"] - s0["offered"]) / dt,
        "ul_drop_pps": (s1["ul_dropped"] - s0["ul_dropped"]) / dt,
        "gen_cpu": (s1["gen_ticks"] - s0["gen_ticks"]) / hz / dt,
    }
    # where the forwarding CPU's time went
    d = [b - a for a, b in zip(s0["fwd_cpu"], s1["fwd_cpu"])]
    tot = sum(d) or 1
    r["fwd_cpu"] = {
        "user": (d[0] + d[1]) / tot,
        "system": d[2] / tot,
        "irq+softirq": (d[5] + d[6]) / tot,
        "idle": (d[3] + d[4]) / tot,
        "steal": d[7] / tot,
    }
    # the contender's share of it: all but idle, steal and the user time of
    # other processes (the worker's own user time is the engine's)
    own_user = 0
    if "engine" in s0:
        e0, e1 = s0["engine"], s1["engine"]
        polls = e1["polls"] - e0["polls"]
        wu = e1["worker_ticks"][0] - e0["worker_ticks"][0]
        ws = e1["worker_ticks"][1] - e0["worker_ticks"][1]
        own_user = wu
        r["engine"] = {
            "pod_rx_pps": (e1["pod_rx"] - e0["pod_rx"]) / dt,
            "lane_rx_pps": (e1["lane_rx"] - e0["lane_rx"]) / dt,
            "uplink_tx_pps": (e1["up_tx"] - e0["up_tx"]) / dt,
            # counted from the previous snapshot: the window
            "ring_drop_pps": e1["ring_drops"] / dt,
            "busy_poll_ratio": (e1["busy_polls"] - e0["busy_polls"]) / polls if polls else 0.0,
            "worker_cpu": (wu + ws) / hz / dt,
            "drops": {
                k: v - e0["drops"].get(k, 0)
                for k, v in e1["drops"].items()
                if v != e0["drops"].get(k, 0)
            },
        }
    share = (tot - d[3] - d[4] - d[7] - max(0, d[0] + d[1] - own_user)) / tot
    r["fwd_share"] = share
    r["pps_per_cpu"] = r["pps"] / share if share > 0.05 else float("nan")
    return r


def _measure(lab: Lab, pcap: str, engine=None, rate_pps: int = 0) -> dict:
    a = lab.args
    gen = lab.start_generator(pcap, rate_pps)
    try:
        time.sleep(a.warmup)
        if gen.p.poll() is not None:
            raise BenchError(f"generator exited (code {gen.p.returncode}):\n" + gen.tail())
        s0 = lab.sample(gen, engine)
        time.sleep(a.seconds)
        s1 = lab.sample(gen, engine)
    finally:
        lab.reap(gen)
    return _rates(s0, s1)


def run_contender(lab: Lab, name: str, pcap: str, frames, verify: bool, rate_pps: int) -> dict:
    lab.reset_node()
    if name == "kernel":
        lab.kernel_up()
        try:
            if verify:
                lab.verify(name, pcap, frames)
            return _measure(lab, pcap, rate_pps=rate_pps)
        finally:
            lab.kernel_down()
    eng = lab.engine_up(name)
    try:
        if verify:
            lab.verify(name, pcap, frames, engine=eng)
        r = _measure(lab, pcap, engine=eng, rate_pps=rate_pps)
        # the generator has stopped: the engine stops its worker and tells
        # the whole run's accounting (verification included)
        eng.send("final")
        f = eng.expect("final", 30)
        apart = ", ".join(f"{k} {v}" for k, v in f["not_of_rx"].items())
        apart = f"; apart (the kernel's rings, the lane): {apart}" if apart else ""
        if f["unaccounted"] != 0:
            raise BenchError(
                f"{name}: the core received {f['pod_rx']} frames on the pod port and "
                f"{f['up_rx']} on the uplink, sent {f['up_tx']} and {f['pod_tx']}, and counted "
                f"{f['dropped']} dropped ({f['drops']}): {f['unaccounted']} unaccounted for"
                f"{apart}; no result"
            )
        say(
            f"{name}: accounting adds up: {f['pod_rx'] + f['up_rx']} frames received = "
            f"{f['up_tx'] + f['pod_tx']} sent + {f['dropped']} dropped"
            + (f" ({f['drops']})" if f["drops"] else "")
            + apart
        )
        return r
    finally:
        lab.reap(eng, grace=15.0)
        if eng.p.returncode not in (0, None):
            say(f"WARNING: engine ({name}) exited with code {eng.p.returncode}:\n" + eng.tail())


def _fmt(r: dict) -> str:
    loss = max(0.0, 1 - r["pps"] / r["offered_pps"]) if r["offered_pps"] else 0.0
    c = r["fwd_cpu"]
    s = (
        f"{r['pps'] / 1e6:6.3f} Mpps  (offered {r['offered_pps'] / 1e6:.3f}, "
        f"{loss:.0%} not delivered; held {r['fwd_share']:.0%} of the fwd CPU: "
        f"{r['pps_per_cpu'] / 1e6:.3f} Mpps per CPU-second; generator CPU "
        f"{r['gen_cpu']:.0%}; fwd CPU user "
        f"{c['user']:.0%} sys {c['system']:.0%} softirq {c['irq+softirq']:.0%} "
        f"idle {c['idle']:.0%} steal {c['steal']:.0%}"
    )
    if r["ul_drop_pps"]:
        s += (
            f"; of the delivered, the underlay end's receive dropped "
            f"{r['ul_drop_pps'] / 1e6:.3f} Mpps"
        )
    e = r.get("engine")
    if e:
        drops = ", ".join(f"{k}={v}" for k, v in sorted(e["drops"].items())) or "none"
        if e["lane_rx_pps"]:
            s += f"; the express lane took {e['lane_rx_pps'] / max(r['pps'], 1):.0%} of it"
        s += (
            f"; worker thread CPU {e['worker_cpu']:.0%}, busy polls "
            f"{e['busy_poll_ratio']:.0%}, rx ring full {e['ring_drop_pps'] / 1e6:.3f} "
            f"Mpps, core drops: {drops}"
        )
    return s + ")"


def fmt_mpps(xs) -> str:
    return fmt_runs(xs, digits=3, scale=1e-6)


def run(args) -> dict:
    from . import traffic  # scapy: only in the parent

    with tempfile.TemporaryDirectory(prefix="bench-afpacket-") as workdir:
        say_machine("other work on the machine will slow every contender")
        pcap = os.path.join(workdir, "encap64.pcap")
        say(
            f"writing {pcap}: {args.frames} frames over {args.macs} MACs behind "
            f"{args.vteps} VTEPs ..."
        )
        traffic.write_pcap(pcap, "encap", args.frames, args.macs, args.vteps, pod_mac=POD_MAC)
        frames = traffic.read_pcap(pcap)
        # the express lane takes TCP to remote VTEPs (datagrams keep the core's path)
        n_tcp = sum(1 for f in frames if f[12:14] == b"\x08\x00" and f[23] == 6)
        if "lane" in args.contenders and not n_tcp:
            say(
                f"WARNING: no TCP among the {len(frames)} frames (--frames): the express "
                "lane takes TCP only, so the lane contender is the native one here"
            )
        lab = Lab(args, workdir)
        try:
            lab.build_generator()
            lab.setup()
            say(
                f"namespaces {lab.pod_ns}, {lab.node_ns}, {lab.ul_ns}; generator on CPU "
                f"{args.gen_cpu} (alone there: every thread of the engines on the forwarding "
                f"CPU {args.fwd_cpu}), vpod receive softirq on "
                + (
                    f"CPU {args.fwd_cpu} (RPS; afxdp: vpod's NAPI thread pinned there)"
                    if args.rps
                    else "the sender's CPU (no RPS)"
                )
                + f", bridge netfilter {'on' if args.br_netfilter else 'off'}; rx rings of "
                f"about {args.ring_slots} 64-byte frames: native {native_frames(args.ring_slots)} "
                f"TPACKET_V2 frames of {NATIVE_FRAME_SIZE} B, pmd "
                f"{args.ring_slots} TPACKET_V2 frames, afxdp {AF_XDP_RX_SLOTS} descriptors"
            )
            src = _measure(lab, pcap)
            rate = args.rate if args.rate >= 0 else int(src["offered_pps"] * args.load)
            say(
                f"source alone (vpod attached to nothing): {src['offered_pps'] / 1e6:.3f} Mpps "
                f"into vpod, generator CPU {src['gen_cpu']:.0%}; offered to every contender: "
                + (f"{rate / 1e6:.3f} Mpps" if rate else "as fast as the generator can")
            )
            res = {n: [] for n in args.contenders}
            per_cpu = {n: [] for n in args.contenders}
            limited = {n: 0 for n in args.contenders}  # runs that delivered all they were offered
            for r in range(1, args.runs + 1):
                for name in args.contenders:
                    x = run_contender(
                        lab, name, pcap, frames, verify=args.verify and r == 1, rate_pps=rate
                    )
                    if name == "lane" and n_tcp and not x["engine"]["lane_rx_pps"]:
                        raise BenchError(
                            "lane: the express lane took no frame from vpod: the figure "
                            "would be the core's path, not the lane's\n  " + _fmt(x)
                        )
                    res[name].append(x["pps"])
                    per_cpu[name].append(x["pps_per_cpu"])
                    say(f"run {r}/{args.runs} {name:6s} {_fmt(x)}")
                    if x["offered_pps"] and x["pps"] >= 0.98 * x["offered_pps"]:
                        limited[name] += 1
                        say(
                            f"WARNING: {name} delivered what the source offered: "
                            "limited by the source, its own rate may be higher"
                        )
                    if rate and x["offered_pps"] < 0.95 * rate:
                        say(
                            f"WARNING: {name} was offered {x['offered_pps'] / 1e6:.3f} Mpps, "
                            f"less than the {rate / 1e6:.3f} Mpps asked: the generator's CPU "
                            "was not its own"
                        )
        finally:
            lab.close()
    med = medians(res)
    # the RESULT's ratios, each where both of its contenders ran
    ratios = {key: ratio(med[a], med[b]) for key, (a, b) in RATIOS.items() if a in med and b in med}
    label = {"kernel": "kernel bridge+vxlan"}
    say(
        "afpacket: "
        + ", ".join(
            f"{label.get(n, n)} median {med[n] / 1e6:.3f} Mpps {fmt_mpps(res[n])}"
            for n in args.contenders
        )
        + "".join(f"; {a}/{b} {ratios[k]:.3f}" for k, (a, b) in RATIOS.items() if k in ratios)
    )
    pc = medians(per_cpu)
    say(
        "per CPU-second the contender held on the forwarding CPU (other work on a shared "
        "machine takes the rest): "
        + ", ".join(f"{n} {pc[n] / 1e6:.3f} Mpps {fmt_mpps(per_cpu[n])}" for n in args.contenders)
    )
    return {
        "pps": med,
        "ratios": ratios,
        "source_pps": src["offered_pps"],
        # contenders that delivered all they were offered in most runs: their
        # figure is the source's, and a ratio to them says no more than that
        "source_limited": [n for n in args.contenders if 2 * limited[n] > args.runs],
        "footing": footing(args),
    }


def footing(args) -> dict:
    """The RESULT line's record of every choice that departs from the
    benchmark's default footing (empty for a default run), so a figure is
    never quoted without the set-up that produced it."""
    out = {}
    if list(args.contenders) != list(CONTENDERS):
        out["contenders"] = ",".join(args.contenders)
    if args.rate >= 0:
        out["rate_pps"] = str(args.rate)  # 0: the generator flat out
    elif args.load != DEFAULT_LOAD:
        out["load"] = f"{args.load:g}"
    if not args.rps:
        out["rps"] = "off"  # vpod's receive on the sending CPU
    if args.no_idle_yield:
        out["idle_yield"] = "off"
    if args.idle_sleep_us:
        out["idle_sleep_us"] = str(args.idle_sleep_us)
    if args.br_netfilter:
        out["br_netfilter"] = "on"
    if not args.verify:
        out["verified"] = "0"
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench afpacket",
        description="VXLAN encap of 64-byte frames on veth, one forwarding core: our "
        "native AF_PACKET driver vs DPDK's net_af_packet vs the kernel's "
        "bridge + vxlan.",
    )
    add_run_options(
        ap,
        seconds=3.0,
        seconds_help="measurement window per run",
        warmup=1.0,
        warmup_help="traffic before the window",
        runs=3,
        runs_help="runs per contender, alternating",
    )
    ap.add_argument(
        "--rate",
        type=int,
        default=None,
        metavar="PPS",
        help="offer PPS frames/s to every contender (0: as fast as the generator can, "
        "which then varies with the contender; default: --load times the source's rate "
        "measured alone)",
    )
    ap.add_argument(
        "--load",
        type=float,
        default=DEFAULT_LOAD,
        help="without --rate: the offered load as a fraction of the source's own rate "
        "(default 0.9: an overload for every contender here, one the generator keeps "
        "up whatever the contender)",
    )
    topo.add_options(ap, macs_help="remote MACs")
    ap.add_argument(
        "--ring-slots",
        type=int,
        default=AF_XDP_RX_SLOTS,
        help="rx ring size in 64-byte frames, the same for every engine (default and "
        f"only value with afxdp: {AF_XDP_RX_SLOTS}, the core's rx descriptors); the "
        "PMD and the native driver get that many TPACKET_V2 frames",
    )
    ap.add_argument(
        "--gen-cpu",
        type=int,
        default=0,
        help="CPU of the generator, alone (default 0)",
    )
    ap.add_argument(
        "--fwd-cpu",
        type=int,
        default=1,
        help="the forwarding CPU: every thread of the engines, RPS target (default 1)",
    )
    ap.add_argument(
        "--idle-sleep-us",
        type=int,
        default=0,
        help="the engines' idle sleep (the node's idle_sleep_us; default 0: the worker spins)",
    )
    ap.add_argument(
        "--no-idle-yield",
        action="store_true",
        help="the engines' idle spinning worker keeps its CPU (the node's idle_yield: false)",
    )
    ap.add_argument(
        "--no-rps",
        dest="rps",
        action="store_false",
        help="leave vpod's receive softirq on the sender's CPU",
    )
    ap.add_argument(
        "--br-netfilter",
        action="store_true",
        help="keep bridge-nf-call-iptables on for the kernel bridge "
        "(as on Kubernetes nodes); default off (the kernel's best case)",
    )
    ap.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        metavar="LIST",
        help=f"the contenders to run, comma-separated, in this order (default all: "
        f"{','.join(CONTENDERS)}); the RESULT line then has the figures and ratios of "
        "those alone and ends contenders=LIST",
    )
    ap.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the functional check before timing",
    )
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = parse_args(ap, argv)
    check_cpu_options(ap, args)
    if args.rate is None:
        args.rate = -1  # --load times the source's rate, measured alone
    elif args.rate < 0:
        ap.error("--rate must be >= 0")
    if args.idle_sleep_us < 0:
        ap.error("--idle-sleep-us must be >= 0")
    if not 0 < args.load <= 1:
        ap.error("--load must be in (0, 1]")
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    for n in names:
        if n not in CONTENDERS:
            ap.error(f"--contenders: {n!r} is not one of {', '.join(CONTENDERS)}")
    if not names or len(set(names)) != len(names):
        ap.error("--contenders: each of them at most once, at least one")
    args.contenders = names
    if args.ring_slots != AF_XDP_RX_SLOTS:
        ap.error(
            f"--ring-slots: {args.ring_slots}: the afxdp contender's rx ring is the core's "
            f"{AF_XDP_RX_SLOTS} descriptors, so the others' are matched to it"
        )
    try:
        topo.check_options(args, max_frames=1 << 16)
    except ValueError as e:
        ap.error(str(e))
    if os.geteuid() != 0:
        print("bench: FAILED: needs root (it makes network namespaces)", file=sys.stderr)
        return 1
    return run_main(run, args, _result)


def _result(res):
    pps, ratios = res["pps"], res["ratios"]
    # in the order of a full run's line: the fields of contenders that ran
    fields = [
        ("native_pps", pps.get("native"), "{:.0f}"),
        ("pmd_pps", pps.get("pmd"), "{:.0f}"),
        ("kernel_pps", pps.get("kernel"), "{:.0f}"),
        ("ratio", ratios.get("ratio"), "{:.3f}"),
        ("kernel_ratio", ratios.get("kernel_ratio"), "{:.3f}"),
        ("afxdp_pps", pps.get("afxdp"), "{:.0f}"),
        ("afxdp_kernel_ratio", ratios.get("afxdp_kernel_ratio"), "{:.3f}"),
        ("lane_pps", pps.get("lane"), "{:.0f}"),
        ("lane_kernel_ratio", ratios.get("lane_kernel_ratio"), "{:.3f}"),
    ]
    return "afpacket", {
        **{k: f.format(v) for k, v, f in fields if v is not None},
        **({"source_limited": ",".join(res["source_limited"])} if res["source_limited"] else {}),
        **res["footing"],
    }


if __name__ == "__main__":
    sys.exit(main())
