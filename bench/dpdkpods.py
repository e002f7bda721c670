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
    veth     a, b: net_af_packet on the pods' veths (rings of 16384 frames,
             ``framecnt``, as the other paths'); the host ends are
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

Accounting, every path in every run: once the rate is measured pod a stops
(testpmd ``stop``), pod b and the core drain (their counters read every
50 ms until they stand still, at most 2 s, else no result), and every frame
pod a sent must be accounted for; a run in which one is not ends the
benchmark without a RESULT line, exit code 1, naming every number. Each run
says its equations ("accounting adds up"). The counts, each since the pods
and the core's ports were made:

    a_tx      pod a's TX-packets (``show port stats 0``): what its driver's
              tx burst took - into the memif ring, the vring, the af_packet
              tx ring (kicked); what a burst refused testpmd counts apart
              (TX-dropped) and never sent
    b_rx      pod b's RX-packets; b_drops its RX-missed + RX-errors +
              RX-nombuf (0 over memif and virtio, whose full rings hold the
              sender back instead)
    rx_, tx_  the core's rx_packets, tx_packets on its port to pod a (_a),
              to pod b (_b); tx what the driver's tx burst took: the rest
              the core frees and counts (tx_full)
    before    the core's drops of frames it never received: a DPDK port's
              own (dev_rx_missed, dev_rx_errors, dev_rx_no_mbuf), a kernel
              port's (kport_kernel: its socket's ring full; kport_oversize,
              kport_truncated, kport_no_mbuf, kport_gso)
    dropped   its other drops (tx_full, ...): of frames it received
    kernel_tx kport_kernel_tx, kport_tx_down: the host end's own tx
              drops, of frames the core counted as sent

    memif, vhost  a_tx = rx_a + before
                  rx_a + rx_b = tx_a + tx_b + dropped
                  tx_b = b_rx + b_drops
    direct        a_tx = b_rx + b_drops
    veth          a_tx = tx packets + tx dropped of pod a's veth end
                  pod a's veth end's tx packets = rx_a + before
                  rx_a + rx_b = tx_a + tx_b + dropped
                  tx_b = the host end to pod b's tx packets + kernel_tx
                  the host end's tx packets = offered to pod b's socket
                    (of which ring_drops found its ring full)
                  offered - ring_drops = b_rx + b_drops

Pod b sends nothing, so rx_b and tx_a are 0 and before is pod a's port's;
its namespace has no IPv6 and the host ends are closed as the node closes a
pod's (dataplane.podnet.close_host_end), so the kernels add no frames of
their own. On the veth path every hop is counted by the kernel (``ip -s
link``; veth counts a frame its peer's backlog took as sent, one it did not
as a tx drop) except pod b's socket: net_af_packet (DPDK 22.11) reports no
rx drops, so the kernel's PACKET_STATISTICS of that socket (frames offered
to its rx ring, and of them those dropped, the ring full) are read through
a copy of it (pidfd_getfd), once, at the end (a read resets them). One
gap stays: net_af_packet counts a frame as sent once it is in pod a's tx
ring and the kick is made, even when the kernel's send stopped short (its
veth dropped one); the rest wait for the next kick, which a stopped pod
never makes, and such a run would end without a result though nothing was
lost. None has been seen: the veths dropped nothing in the runs so far.
"""

import argparse
import ctypes
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from .afpacket_ours import AFTER_TX, BEFORE_RX, NOT_OF_RX
from .common import (
    BenchError,
    add_run_options,
    check_cpus_present,
    fmt_runs,
    median,
    packet_socket_fds,
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
#: after pod a stops: how long the rest may take to drain, and how often
#: the counters are read until they stand still
DRAIN_S, DRAIN_POLL_S = 2.0, 0.05
#: the core's drops that are not of frames it received, before its rx
#: count (BEFORE_RX: a DPDK port's own, dev_rx_*; a kernel port's ring and
#: slot drops, kport_*) or after its tx count (AFTER_TX: a kernel port's
#: transmit), shared with bench.afpacket_ours
#: testpmd's ``show port stats`` fields read (rte_eth_stats since the port
#: started: RX-missed imissed, RX-errors ierrors, RX-nombuf rx_nombuf)
PORT_STATS = ("RX-packets", "RX-missed", "RX-errors", "RX-nombuf", "TX-packets", "TX-errors")
SOL_PACKET, PACKET_STATISTICS = 263, 6
SYS_PIDFD_GETFD = 438  # the same number on every architecture


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
        self.spawn(cmd)

    def spawn(self, cmd):
        """Start ``cmd`` (a testpmd in interactive mode), its output to
        ``self.log``, and wait for its prompt; stopped again without one."""
        with open(self.log, "w") as out:
            self.p = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, text=True
            )
        try:
            self.wait_for("testpmd>", 30)
        except BaseException:  # not yet in the caller's list: stopped here
            self.close()
            raise

    def run(self, line, until="testpmd> ", timeout=10):
        """Its output to ``line``, up to ``until`` (the next prompt)."""
        return self.cmd(line, until, timeout)

    def text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def wait_for(self, what, timeout, start=0):
        """The log from ``start`` once it holds ``what`` (a string, or a
        tuple of strings any of which will do)."""
        whats = (what,) if isinstance(what, str) else what
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            t = self.text()
            if any(w in t[start:] for w in whats):
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

    def port_stats(self) -> dict:
        """Port 0's PORT_STATS, since it started."""
        t = self.cmd("show port stats 0", "Tx-bps")  # the last line of the block
        try:
            return {k: int(re.search(rf"{k}:\s+(\d+)", t).group(1)) for k in PORT_STATS}
        except AttributeError:
            raise BenchError(f"testpmd {self.prefix}: no port stats in:\n{t[-2000:]}") from None

    def rx_packets(self):
        return self.port_stats()["RX-packets"]

    def stop_forwarding(self):
        """Stop forwarding, and return when testpmd has (its lcores no
        longer send or poll); a pod not forwarding stays so."""
        self.cmd("stop", ("Done.", "Packet forwarding not started"))

    def packet_socket_stats(self) -> dict:
        """The kernel's PACKET_STATISTICS of this pod's AF_PACKET socket
        (net_af_packet's one socket of its queue pair): ``offered``, the
        frames the kernel brought to its rx ring, of which ``ring_drops``
        found the ring full. net_af_packet does not read them (it reports
        no rx drops), so they are read here through a copy of its socket
        (pidfd_getfd); the kernel resets them on every read: read once, at
        the end."""
        pid = self.p.pid  # ip netns exec and stdbuf exec testpmd: its pid
        fds = packet_socket_fds(pid)  # of the pod's namespace
        if len(fds) != 1:
            raise BenchError(f"testpmd {self.prefix} (pid {pid}): {len(fds)} packet sockets, not 1")
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(pid)
        try:
            mine = libc.syscall(SYS_PIDFD_GETFD, pidfd, fds[0], 0)
            if mine < 0:
                e = ctypes.get_errno()
                raise BenchError(f"pidfd_getfd of testpmd {self.prefix}: {os.strerror(e)}")
        finally:
            os.close(pidfd)
        s = socket.socket(fileno=mine)
        try:
            st = s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        finally:
            s.close()
        # tp_packets counts the drops too
        return {
            "offered": int.from_bytes(st[0:4], "little"),
            "ring_drops": int.from_bytes(st[4:8], "little"),
        }

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


def link_stats(name, ns=None) -> dict:
    """An interface's kernel counts (``ip -s link``)."""
    cmd = ["ip", *(["-n", ns] if ns else []), "-j", "-s", "link", "show", name]
    v = json.loads(run_cmd(cmd, "ip -s link").stdout)[0]["stats64"]
    return {f"{d}_{k}": int(v[d][k]) for d in ("rx", "tx") for k in ("packets", "dropped")}


def into_pod_b(what, n, got):
    """The equation of ``n`` frames (``what``) offered to pod b's port: what
    pod b received, and its port's own rx drops (testpmd's port stats)."""
    drops = [(k, got[k]) for k in ("RX-missed", "RX-errors", "RX-nombuf")]
    return (what, n, [("pod b received", got["RX-packets"]), *drops])


def check_accounting(path, eqs) -> str:
    """The equations as said when they hold; BenchError naming every
    number when one does not."""
    parts, wrong = [], []
    for what, n, terms in eqs:
        total = sum(v for _, v in terms)
        text = f"{what} {n} = " + " + ".join(f"{v} {w.strip()}" for w, v in terms)
        if total != n:
            text += f" (NOT: that sum is {total}, {n - total:+d})"
            wrong.append(text)
        parts.append(text)
    if wrong:
        raise BenchError(
            f"{path}: the accounting does not add up: " + "; ".join(parts) + "; no result"
        )
    return "; ".join(parts)


class PathRun:
    """One measurement's parts: the pods, the core's ports and its counts
    before it."""

    def __init__(self, path):
        self.path = path
        self.a = self.b = None
        self.ports = []
        self.base = {}


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
            from dataplane.podnet import close_host_end

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
                # as the node closes a pod's host end: no IPv6 of the
                # node's own into pod b's counts
                close_host_end(host)
                run_cmd(["ip", "link", "set", host, "up"], "ip link set")
                run_cmd(["ip", "-n", self.ns[x], "link", "set", "eth0", "up"], "ip link set")
                ports.append(self.eng.add_afpacket_port(host, network=0))
            # rings as large as the other paths' (net_af_packet's default
            # of 512 frames left pod b's socket dropping most of what
            # reached it while pod a had the shared CPU)
            vdevs = {x: f"net_af_packet0,iface=eth0,qpairs=1,framecnt={VIRTIO_QUEUE}" for x in "ab"}
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

    def measure(self, path):
        """(frames per second pod b received from pod a on ``path``, the
        run's accounting as said); BenchError if the accounting does not
        add up (see account)."""
        r = PathRun(path)
        try:
            self.open_path(r)
            r.b.cmd("start", "packet forwarding")
            r.a.cmd("start", "packet forwarding")
            time.sleep(self.args.warmup)
            n0, t0 = r.b.rx_packets(), time.monotonic()
            time.sleep(self.args.seconds)
            n1, t1 = r.b.rx_packets(), time.monotonic()
            return (n1 - n0) / (t1 - t0), self.account(r)
        finally:
            self.close_path(r)

    def open_path(self, r):
        """Pods a and b on path ``r.path``, connected, not yet forwarding;
        the core's ports (all but the direct path) and its counts before
        any frame. What is made is in ``r`` as soon as it is, for
        close_path."""
        if r.path == "direct":
            s = f"{self.dir}/direct.sock"
            r.b = self.pmd(
                "b",
                f"net_memif0,role=server,id=0,socket={s},socket-abstract=no,"
                f"rsize={RING_LOG2},mac={MAC_B}",
                "rxonly",
            )
            r.a = self.pmd(
                "a",
                f"net_memif0,role=client,id=0,socket={s},socket-abstract=no,"
                f"rsize={RING_LOG2},mac={MAC_A}",
                "txonly",
            )
        else:
            r.ports, vdevs = self._core_ports(r.path)
            # counted from here: the ports are new, but the drops are the
            # engine's since it started
            r.base = self._core_counts(r.path, r.ports)
            r.b = self.pmd("b", vdevs["b"], "rxonly")
            r.a = self.pmd("a", vdevs["a"], "txonly")
        r.a.link_up()
        r.b.link_up()

    def account(self, r) -> str:
        """Pod a stops, the rest drains, and every frame pod a sent must be
        accounted for (the module's docstring): the equations as said, or
        BenchError naming every number."""
        # the sender stops first: what it sent is then final
        r.a.stop_forwarding()
        sent = r.a.port_stats()
        self._drain(r.path, r.b, r.ports)
        got = r.b.port_stats()
        if r.path == "direct":
            eqs = self._account_direct(sent, got)
        else:
            core = self._core_counts(r.path, r.ports)
            core = {k: v - r.base.get(k, 0) for k, v in core.items()}
            if r.path == "veth":
                core.update(r.b.packet_socket_stats())
            eqs = self._account(r.path, sent, core, got)
        return check_accounting(r.path, eqs)

    def close_path(self, r):
        # in this order: DPDK 22.11's memif unmaps the peer's memory as
        # soon as the peer goes, under a burst that may still be reading
        # it, so neither side polls a port when the other leaves: the pods
        # stop forwarding, the core's ports go (its workers let go of them
        # first), then the pods quit
        for p in (r.a, r.b):
            if p is not None:
                p.stop()
        if r.ports:
            self._drop_ports(r.path, r.ports)
        for p in (r.a, r.b):
            if p is not None:
                p.close()
                self.pmds.remove(p)
        for f in os.listdir(self.dir):
            if f.endswith(".sock"):
                os.unlink(os.path.join(self.dir, f))

    def _drain(self, path, b, ports):
        """Wait until pod b's and the core's counters stand still (pod a
        has stopped): what is in rings and queues has arrived. Still for
        two readings in a row, so that a pod b off its CPU for one poll
        is not taken as done."""
        end = time.monotonic() + DRAIN_S
        last, still = None, 0
        while True:
            now = [b.rx_packets()]
            if ports:
                c = self.eng.counters()
                now += [c.port_dict(p)[k] for p in ports for k in ("rx_packets", "tx_packets")]
            still = still + 1 if now == last else 0
            if still == 2:
                return
            if time.monotonic() > end:
                raise BenchError(
                    f"{path}: pod b's and the core's counters still moving {DRAIN_S:g} s after "
                    f"pod a stopped ({last} then {now}); no result"
                )
            last = now
            time.sleep(DRAIN_POLL_S)

    def _core_counts(self, path, ports) -> dict:
        """The core's counts for the accounting, since the engine started
        (the caller takes differences): its two ports' rx and tx, its
        drops by reason and, on the veth path, the veths' kernel counts."""
        c = self.eng.counters()
        pa, pb = c.port_dict(ports[0]), c.port_dict(ports[1])
        out = {
            "rx_a": pa["rx_packets"],
            "rx_b": pb["rx_packets"],
            "tx_a": pa["tx_packets"],
            "tx_b": pb["tx_packets"],
        }
        out.update({f"drop:{k}": v for k, v in c.drops().items()})
        if path == "veth":
            for k, v in link_stats("eth0", self.ns["a"]).items():
                out[f"pod_a_veth_{k}"] = v
            for k, v in link_stats(f"dpphb{os.getpid() % 100000}").items():
                out[f"host_b_veth_{k}"] = v
        return out

    @staticmethod
    def _account_direct(sent, got):
        return [into_pod_b("pod a sent", sent["TX-packets"], got)]

    @staticmethod
    def _account(path, sent, core, got):
        """The chain from pod a's tx to pod b's rx, as equations (see the
        module's docstring): (what, count, [(what, count), ...] it must
        equal the sum of)."""
        drops = {k[5:]: v for k, v in core.items() if k.startswith("drop:") and v}
        before = {k: v for k, v in drops.items() if k in BEFORE_RX}
        after = {k: v for k, v in drops.items() if k in AFTER_TX}
        dropped = {k: v for k, v in drops.items() if k not in NOT_OF_RX}
        veth = path == "veth"
        eqs = []
        if veth:
            eqs.append(
                (
                    "pod a sent",
                    sent["TX-packets"],
                    [
                        ("its veth passed on", core["pod_a_veth_tx_packets"]),
                        ("its veth dropped", core["pod_a_veth_tx_dropped"]),
                    ],
                )
            )
        # what reached the core's port to pod a: received, or dropped before
        where_before = "at the core's socket" if veth else "by the core's port"
        eqs.append(
            (
                "pod a's veth passed on" if veth else "pod a sent",
                core["pod_a_veth_tx_packets"] if veth else sent["TX-packets"],
                [
                    ("the core received", core["rx_a"]),
                    (f"dropped {where_before} {before or ''}", sum(before.values())),
                ],
            )
        )
        eqs.append(
            (
                "the core received",
                core["rx_a"] + core["rx_b"],
                [
                    ("sent", core["tx_a"] + core["tx_b"]),
                    (f"dropped {dropped or ''}", sum(dropped.values())),
                ],
            )
        )
        if not veth:
            return eqs + [into_pod_b("the core sent to pod b", core["tx_b"], got)]
        into_ring = core["offered"] - core["ring_drops"]
        return eqs + [
            (
                "the core sent to pod b",
                core["tx_b"],
                [
                    ("the veth to pod b passed on", core["host_b_veth_tx_packets"]),
                    (f"the veth dropped {after or ''}", sum(after.values())),
                ],
            ),
            (
                "the veth to pod b passed on",
                core["host_b_veth_tx_packets"],
                [
                    ("pod b's socket put in its ring", into_ring),
                    ("pod b's socket dropped, the ring full", core["ring_drops"]),
                ],
            ),
            into_pod_b("pod b's socket put in its ring", into_ring, got),
        ]

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
                    pps, acct = lab.measure(path)
                    res[path].append(pps)
                    say(f"run {n}/{args.runs} {path:7s} {pps / 1e6:8.3f} Mpps received")
                    say(f"run {n}/{args.runs} {path}: accounting adds up: {acct}")
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
