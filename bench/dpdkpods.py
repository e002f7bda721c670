"""DPDK pods: 64-byte frames from one DPDK pod to another through the core,
over memif and over vhost-user, against the same two testpmd processes
connected to each other directly (memif peer to peer, no core between
them), and the veth pod path for scale.

    python -m bench dpdkpods [--seconds S] [--runs N] [--quiet]
    ->  RESULT name=dpdkpods memif_mpps=<n> vhost_mpps=<n> direct_mpps=<n>
        ratio=<memif/direct> veth_kpps=<n>

Pods: two ``dpdk-testpmd`` processes, each in a network namespace of its
own (``dppb<pid>-a``, ``-b``), ``--no-pci``, ``--in-memory`` hugepages, IOVA
as VA, its own ``--file-prefix``. Pod a sends (``--forward-mode=txonly``, 64-byte
UDP frames to pod b's MAC), pod b receives (``rxonly``); the figure is what
pod b received per second over ``--seconds`` after a warm-up.

    memif    a: net_memif client ==> core (net_memif server ports, one
             network, FDB entries for both MACs) ==> b: net_memif client
    vhost    a: net_virtio_user (server=1) ==> core (net_vhost, client=1)
             ==> b: net_virtio_user
    direct   a: net_memif client ==> b: net_memif server: no core
    veth     a, b: net_af_packet on the pods' veths; the host ends are
             ports of the core through its native AF_PACKET driver (the
             path a veth pod's traffic takes)

The core is this process's engine (fallback mode, lcores 0 and 1: control
thread on CPU 0, the one worker on CPU 1), configured as the node service
configures a pod's port.

CPUs (2 on the reference machine), by default as a node shares them: the
core's worker has a CPU of its own (``--core-cpu 1``) and the pods share the
other (``--a-cpu 0 --b-cpu 0``), in every path, so the direct path has the
same CPU for the pods as the paths through the core. Busy pollers on one CPU
take turns in scheduler time slices: rings and descriptors are made as large
as DPDK allows (16384) so that a pod keeps a whole slice of frames. With
``--b-cpu 1`` the receiver shares the core's CPU instead (and has it alone
in the direct path). Each testpmd's main lcore only waits for commands.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from .common import (
    BenchError,
    add_run_options,
    check_cpus_present,
    fmt_runs,
    median,
    parse_args,
    quiet_netns,
    ratio,
    remove_eal_runtime_dir,
    run_cmd,
    run_main,
    say,
    say_machine,
    show,
)

TESTPMD = "dpdk-testpmd"
MAC_A, MAC_B = "02:00:00:00:0a:01", "02:00:00:00:0b:01"
PATHS = ("memif", "vhost", "direct", "veth")
RING_LOG2 = 14  # memif rings of 16384 slots, the most DPDK's memif allows
VIRTIO_QUEUE = 1 << RING_LOG2  # virtio rings as large
#: A pod has no device, so no use for physical addresses: IOVA as VA, as an
#: unprivileged pod gets anyway. testpmd as root would pick physical
#: addresses (PA), and virtio_user's tx queue then needs its header region
#: (VIRTIO_QUEUE x 144 bytes, 2.25 MB: more than one 2 MB hugepage)
#: physically contiguous; on a node whose hugepage pool others have
#: churned there is no such pair of pages and the device fails to
#: initialise ("eth_virtio_dev_init fails"). In VA mode any two pages do.
IOVA_MODE = "--iova-mode=va"


class Pmd:
    """dpdk-testpmd in namespace ``ns`` (None: this one) on its interactive
    prompt."""

    def __init__(self, ns, prefix, vdev, fwd, cpu, log_path):
        self.prefix = prefix
        self.log = log_path
        cmd = (
            (["ip", "netns", "exec", ns] if ns else [])
            + ["stdbuf", "-oL", TESTPMD]
            + ["--lcores", f"0@{cpu},1@{cpu}", "--no-pci", "--file-prefix", prefix]
            + [IOVA_MODE]
            + ["--in-memory", "--single-file-segments", "-m", "192", f"--vdev={vdev}"]
            + ["--", "-i", f"--forward-mode={fwd}", "--txpkts=64", "--burst=32"]
            # descriptors as many as the rings have slots: a pod sharing a CPU
            # keeps a whole time slice of frames
            + ["--total-num-mbufs=49152", f"--txd={1 << RING_LOG2}", f"--rxd={1 << RING_LOG2}"]
            + [f"--eth-peer=0,{MAC_B}", "--no-flush-rx"]
        )
        with open(log_path, "w") as out:
            self.p = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, text=True
            )
        try:
            self.wait_for("testpmd>", 30)
        except BaseException:  # not yet in the caller's list: stopped here
            self.close()
            raise

    def text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def wait_for(self, what, timeout, start=0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            t = self.text()
            if what in t[start:]:
                return t[start:]
            if self.p.poll() is not None:
                raise BenchError(f"testpmd {self.prefix} exited:\n{t[-2000:]}")
            time.sleep(0.02)
        raise BenchError(
            f"testpmd {self.prefix}: no {what!r} in {timeout} s:\n{self.text()[-2000:]}"
        )

    def cmd(self, line, until=None, timeout=10):
        start = len(self.text())
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self.wait_for(until, timeout, start) if until else ""

    def link_up(self, timeout=20):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if "Link status: up" in self.cmd("show port info 0", "Link status"):
                return
            time.sleep(0.1)
        raise BenchError(f"testpmd {self.prefix}: port not connected:\n{self.text()[-2000:]}")

    def rx_packets(self):
        t = self.cmd("show port stats 0", "TX-packets")
        return int(re.search(r"RX-packets:\s+(\d+)", t).group(1))

    def stop(self):
        """Stop forwarding (nothing polls the port any more); a pod that
        never started it or has exited is left as it is."""
        if self.p.poll() is None:
            try:
                self.cmd("stop", "testpmd>")
            except (OSError, BenchError):
                pass

    def close(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.write("quit\n")
                self.p.stdin.flush()
                self.p.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()
        try:
            self.p.stdin.close()
        except OSError:
            pass
        remove_eal_runtime_dir(self.prefix)


class Lab:
    def __init__(self, args, workdir):
        self.args = args
        self.dir = workdir
        self.tag = f"dppb{os.getpid()}"
        self.ns = {x: f"{self.tag}-{x}" for x in "ab"}
        self.made_ns = []
        self.eng = None
        self.pmds = []
        self.seq = 0

    def setup(self):
        for ns in self.ns.values():
            run_cmd(["ip", "netns", "add", ns], "ip netns add")
            self.made_ns.append(ns)
            quiet_netns(ns)
        from dataplane.engine import Engine, EngineConfig

        self.eng = Engine(
            EngineConfig(
                mode="fallback",
                lcores=[0, 1],
                cpus=[self.args.a_cpu, self.args.core_cpu],
                memory_mb=256,
                file_prefix=f"dpp-{os.getpid()}-core",
            )
        )
        self.eng.add_network(0, vni=100, plane=0)
        self.eng.start()

    def pmd(self, who, vdev, fwd):
        self.seq += 1
        prefix = f"dpp-{os.getpid()}-{who}{self.seq}"
        p = Pmd(
            self.ns[who],
            prefix,
            vdev,
            fwd,
            self.args.a_cpu if who == "a" else self.args.b_cpu,
            os.path.join(self.dir, f"{prefix}.log"),
        )
        self.pmds.append(p)
        return p

    def _core_ports(self, path):
        """The core's two ports for ``path`` and the pods' vdevs."""
        d = self.dir
        if path == "memif":
            ports = [
                self.eng.add_port(
                    f"net_memif_dpp{x},role=server,id=0,socket={d}/{x}.sock,"
                    f"socket-abstract=no,rsize={RING_LOG2}",
                    network=0,
                )
                for x in "ab"
            ]
            vdevs = {
                x: f"net_memif0,role=client,id=0,socket={d}/{x}.sock,socket-abstract=no,"
                f"rsize={RING_LOG2},mac={m}"
                for x, m in (("a", MAC_A), ("b", MAC_B))
            }
        elif path == "vhost":
            ports = [
                self.eng.add_port(
                    f"net_vhost_dpp{x},iface={d}/{x}v.sock,client=1,queues=1", network=0
                )
                for x in "ab"
            ]
            vdevs = {
                x: f"net_virtio_user0,path={d}/{x}v.sock,server=1,queues=1,queue_size={VIRTIO_QUEUE},mac={m}"
                for x, m in (("a", MAC_A), ("b", MAC_B))
            }
        else:  # veth: the pods' veths, their host ends AF_PACKET ports
            ports = []
            for x in "ab":
                host = f"dpph{x}{os.getpid() % 100000}"
                run_cmd(
                    [
                        "ip",
                        "link",
                        "add",
                        host,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        "eth0",
                        "netns",
                        self.ns[x],
                    ],
                    "ip link add",
                )
                run_cmd(["ip", "link", "set", host, "up"], "ip link set")
                run_cmd(["ip", "-n", self.ns[x], "link", "set", "eth0", "up"], "ip link set")
                ports.append(self.eng.add_afpacket_port(host, network=0))
            vdevs = {x: "net_af_packet0,iface=eth0,qpairs=1" for x in "ab"}
        self.eng.fdb_add_local(0, MAC_A, ports[0])
        self.eng.fdb_add_local(0, MAC_B, ports[1])
        return ports, vdevs

    def _drop_ports(self, path, ports):
        self.eng.fdb_del(0, MAC_A)
        self.eng.fdb_del(0, MAC_B)
        for p in ports:
            self.eng.del_port(p)
        if path == "veth":
            for x in "ab":
                run_cmd(["ip", "link", "del", f"dpph{x}{os.getpid() % 100000}"], "ip", check=False)

    def measure(self, path) -> float:
        """Frames per second pod b received from pod a on ``path``."""
        ports = []
        a = b = None
        try:
            if path == "direct":
                s = f"{self.dir}/direct.sock"
                b = self.pmd(
                    "b",
                    f"net_memif0,role=server,id=0,socket={s},socket-abstract=no,"
                    f"rsize={RING_LOG2},mac={MAC_B}",
                    "rxonly",
                )
                a = self.pmd(
                    "a",
                    f"net_memif0,role=client,id=0,socket={s},socket-abstract=no,"
                    f"rsize={RING_LOG2},mac={MAC_A}",
                    "txonly",
                )
            else:
                ports, vdevs = self._core_ports(path)
                b = self.pmd("b", vdevs["b"], "rxonly")
                a = self.pmd("a", vdevs["a"], "txonly")
            a.link_up()
            b.link_up()
            b.cmd("start", "packet forwarding")
            a.cmd("start", "packet forwarding")
            time.sleep(self.args.warmup)
            n0, t0 = b.rx_packets(), time.monotonic()
            time.sleep(self.args.seconds)
            n1, t1 = b.rx_packets(), time.monotonic()
            return (n1 - n0) / (t1 - t0)
        finally:
            # in this order: DPDK 22.11's memif unmaps the peer's memory as
            # soon as the peer goes, under a burst that may still be reading
            # it, so neither side polls a port when the other leaves: the
            # pods stop forwarding, the core's ports go (its workers let go
            # of them first), then the pods quit
            for p in (a, b):
                if p is not None:
                    p.stop()
            if ports:
                self._drop_ports(path, ports)
            for p in (a, b):
                if p is not None:
                    p.close()
                    self.pmds.remove(p)
            for f in os.listdir(self.dir):
                if f.endswith(".sock"):
                    os.unlink(os.path.join(self.dir, f))

    def close(self):
        for p in self.pmds:
            p.close()
        if self.eng is not None:
            self.eng.close()
        for ns in self.made_ns:
            run_cmd(["ip", "netns", "del", ns], "ip netns del", check=False)


def run(args) -> dict:
    if shutil.which(TESTPMD) is None:
        raise BenchError(f"{TESTPMD} not found (Debian package dpdk)")
    workdir = tempfile.mkdtemp(prefix="dpp", dir="/tmp")  # short: socket paths
    try:
        say_machine("other work on the machine slows every path")
        lab = Lab(args, workdir)
        res = {p: [] for p in PATHS}
        try:
            lab.setup()
            say(
                f"namespaces {lab.tag}-a/-b; pod a (txonly) on CPU {args.a_cpu}, pod b "
                f"(rxonly) on CPU {args.b_cpu}, the core's worker on CPU {args.core_cpu}; "
                "busy pollers on one CPU take turns (time slices)"
            )
            for n in range(1, args.runs + 1):
                for path in PATHS:
                    pps = lab.measure(path)
                    res[path].append(pps)
                    say(f"run {n}/{args.runs} {path:7s} {pps / 1e6:8.3f} Mpps received")
        finally:
            lab.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    med = {p: median(v) for p, v in res.items()}
    show()
    say(f"medians of {args.runs} run(s), 64-byte frames, Mpps received by pod b:")
    for p in PATHS:
        say(f"  {p:7s} {med[p] / 1e6:8.3f}   runs {fmt_runs([x / 1e6 for x in res[p]], 3)}")
    return med


def _result(med):
    return "dpdkpods", {
        "memif_mpps": f"{med['memif'] / 1e6:.3f}",
        "vhost_mpps": f"{med['vhost'] / 1e6:.3f}",
        "direct_mpps": f"{med['direct'] / 1e6:.3f}",
        "ratio": f"{ratio(med['memif'], med['direct']):.3f}",
        "veth_kpps": f"{med['veth'] / 1e3:.1f}",
    }


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench dpdkpods",
        description="64-byte frames between two testpmd pods: through the core over memif "
        "and vhost-user, memif peer to peer, and over veths for scale.",
    )
    add_run_options(
        ap,
        seconds=3.0,
        seconds_help="measured seconds per path and run",
        runs=3,
        runs_help="runs of the four paths (figures are medians)",
        warmup=1.0,
        warmup_help="seconds of traffic before measuring",
    )
    ap.add_argument("--a-cpu", type=int, default=0, help="CPU of pod a, the sender (default 0)")
    ap.add_argument("--b-cpu", type=int, default=0, help="CPU of pod b, the receiver (default 0)")
    ap.add_argument("--core-cpu", type=int, default=1, help="CPU of the core's worker (default 1)")
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = parse_args(ap, argv)
    check_cpus_present(
        ap, {"--a-cpu": args.a_cpu, "--b-cpu": args.b_cpu, "--core-cpu": args.core_cpu}
    )
    if args.core_cpu in (args.a_cpu, args.b_cpu) and args.a_cpu == args.b_cpu:
        ap.error("--a-cpu, --b-cpu and --core-cpu: the core's worker and both pods on one CPU")
    if os.geteuid() != 0:
        print("bench: FAILED: needs root (it makes network namespaces)", file=sys.stderr)
        return 1
    return run_main(run, args, _result)
