"""OVS-DPDK as a contender in the encap benchmark (``--peers ovs``).

Debian's ``openvswitch-switch-dpdk`` (ovs-vswitchd built with DPDK), run
with everything of its own in a temporary directory and its own network
namespace, so nothing of the host's is touched:

- ovsdb-server and ovs-vswitchd-dpdk in the namespace, database, sockets,
  logs and pid files in the directory (OVS_RUNDIR/OVS_DBDIR/... point
  there); DPDK with ``--no-pci``, its own file prefix and ``--in-memory``;
  the main thread on CPU 0, one PMD thread on CPU 1 (as our worker);
- ``br-int`` (netdev datapath): the pcap port ``net_pcap0,rx_pcap=PCAP,
  infinite_rx=1`` and a VXLAN port with ``remote_ip=flow key=flow
  tos=inherit``; one OpenFlow rule per remote MAC sets the tunnel
  destination and VNI (the same MACs behind the same VTEPs as ours);
- ``br-phy``: the underlay, ``net_null0,no-rx=1``, with the local VTEP
  address on its internal port (in the namespace only) and a static ARP
  entry per remote VTEP (our static next-hop MAC); one rule sends what the
  tunnel pushes out of the null port.

Measured like the others: the null port's tx over the window, read with
the pcap port's rx in one snapshot of the datapath (``dpctl/show -s``). Everything started
is stopped by PID and everything made is removed.
"""

import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from . import topology as topo
from .common import BenchError, remove_eal_runtime_dir

VSWITCHD = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk"
SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
SPORT_MIN = 32768  # the low end of OVS's default tunnel source port range


class OvsError(BenchError):
    pass


def available() -> str:
    """'' when OVS-DPDK can run here, else what is missing."""
    for path in (VSWITCHD, SCHEMA):
        if not os.path.exists(path):
            return f"{path} missing (Debian/Ubuntu: apt-get install openvswitch-switch-dpdk)"
    for tool in ("ovsdb-server", "ovsdb-tool", "ovs-vsctl", "ovs-ofctl", "ovs-appctl"):
        if not shutil.which(tool):
            return f"{tool} missing (Debian/Ubuntu: apt-get install openvswitch-switch-dpdk)"
    return ""


class OvsDpdk:
    """One OVS-DPDK instance doing VXLAN encap of the benchmark's pcap."""

    def __init__(self, pcap, n_macs, n_vteps, out_dev="net_null0,no-rx=1"):
        self.pcap, self.n_macs, self.n_vteps = pcap, n_macs, n_vteps
        self.out_dev = out_dev
        self.dir = tempfile.mkdtemp(prefix="bench-ovs-")
        self.ns = f"bench-ovs-{os.getpid()}"
        self.prefix = f"bench-ovs-{os.getpid()}"
        self.procs = []
        self.env = dict(
            os.environ,
            OVS_RUNDIR=self.dir,
            OVS_DBDIR=self.dir,
            OVS_LOGDIR=self.dir,
            OVS_SYSCONFDIR=self.dir,
        )

    # ------------------------------------------------------------- helpers
    def _run(self, *cmd, timeout=60, check=True):
        r = subprocess.run(
            ["ip", "netns", "exec", self.ns, *cmd],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise OvsError(f"{' '.join(cmd)}: {r.stderr.strip() or r.stdout.strip()}{self._log()}")
        return r.stdout

    def vsctl(self, *args):
        return self._run("ovs-vsctl", f"--db=unix:{self.dir}/db.sock", "--timeout=60", *args)

    def ofctl(self, *args):
        return self._run("ovs-ofctl", *args)

    def appctl(self, *args):
        return self._run("ovs-appctl", "-t", f"{self.dir}/vswitchd.ctl", *args)

    def _log(self):
        path = os.path.join(self.dir, "vswitchd.log")
        if not os.path.exists(path):
            return ""
        tail = open(path, errors="replace").read().splitlines()[-15:]
        return "\n--- ovs-vswitchd log ---\n" + "\n".join(tail)

    def _spawn(self, *cmd):
        p = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *cmd],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(p)
        return p

    # ------------------------------------------------------------ lifecycle
    def start(self):
        subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True)
        # no IPv6 chatter (MLD, router solicitations) from br-phy's internal port
        for conf in ("all", "default"):
            subprocess.run(
                ["ip", "netns", "exec", self.ns, "sysctl", "-qw",
                 f"net.ipv6.conf.{conf}.disable_ipv6=1"], check=True,
            )  # fmt: skip
        d = self.dir
        subprocess.run(["ovsdb-tool", "create", f"{d}/conf.db", SCHEMA], check=True)
        self._spawn(
            "ovsdb-server",
            f"{d}/conf.db",
            f"--remote=punix:{d}/db.sock",
            f"--unixctl={d}/ovsdb.ctl",
            f"--log-file={d}/ovsdb.log",
        )
        for _ in range(200):
            if os.path.exists(f"{d}/db.sock"):
                break
            time.sleep(0.05)
        self.vsctl("--no-wait", "init")
        extra = f"--no-pci --in-memory --file-prefix {self.prefix}"
        self.vsctl(
            "--no-wait",
            "set",
            "Open_vSwitch",
            ".",
            "other_config:dpdk-init=true",
            "other_config:dpdk-lcore-mask=0x1",
            "other_config:pmd-cpu-mask=0x2",
            "other_config:dpdk-socket-mem=1024",
            f'other_config:dpdk-extra="{extra}"',
        )
        self.vswitchd = self._spawn(
            VSWITCHD,
            f"unix:{d}/db.sock",
            f"--unixctl={d}/vswitchd.ctl",
            f"--log-file={d}/vswitchd.log",
            f"--pidfile={d}/vswitchd.pid",
        )
        for _ in range(600):
            if self.vswitchd.poll() is not None:
                raise OvsError(f"ovs-vswitchd exited ({self.vswitchd.returncode}){self._log()}")
            try:
                if "true" in self.vsctl("get", "Open_vSwitch", ".", "dpdk_initialized"):
                    break
            except OvsError:
                pass
            time.sleep(0.1)
        else:
            raise OvsError(f"DPDK in ovs-vswitchd not initialized{self._log()}")
        self._topology()

    def _topology(self):
        vtep_mac = topo.VTEP_MAC
        rx = f"net_pcap0,rx_pcap={self.pcap},infinite_rx=1"
        self.vsctl(
            "add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev",
            f"other_config:hwaddr={vtep_mac}",
            "--", "add-port", "br-phy", "phy0",
            "--", "set", "Interface", "phy0", "type=dpdk", f"options:dpdk-devargs={self.out_dev}",
        )  # fmt: skip
        self.vsctl(
            "add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev",
            "--", "add-port", "br-int", "vx0",
            "--", "set", "Interface", "vx0", "type=vxlan", "options:remote_ip=flow",
            "options:key=flow", "options:tos=inherit", f"options:local_ip={topo.LOCAL_VTEP}",
        )  # fmt: skip
        for dev in ("br-phy", "br-int"):
            for _ in range(100):
                if (
                    subprocess.run(
                        ["ip", "-n", self.ns, "link", "show", dev], capture_output=True
                    ).returncode
                    == 0
                ):
                    break
                time.sleep(0.05)
        # the local VTEP address lives on br-phy's internal port, in our namespace
        subprocess.run(
            ["ip", "-n", self.ns, "addr", "add", f"{topo.LOCAL_VTEP}/{topo.VTEP_PREFIX_LEN}",
             "dev", "br-phy"], check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(["ip", "-n", self.ns, "link", "set", "br-phy", "up"], check=True)
        for _ in range(100):
            if topo.LOCAL_VTEP in self.appctl("ovs/route/show"):
                break
            time.sleep(0.05)
        for v in topo.remote_vteps(self.n_vteps):
            self.appctl("tnl/arp/set", "br-phy", v, topo.NEXT_HOP_MAC)
        flows = os.path.join(self.dir, "int.flows")
        with open(flows, "w") as f:
            for k in range(self.n_macs):
                f.write(
                    f"priority=10,dl_dst={topo.remote_mac(k)},actions=set_field:"
                    f"{topo.vtep_of(k, self.n_vteps)}->tun_dst,set_field:{topo.VNI}->tun_id,"
                    "output:vx0\n"
                )
        self.ofctl("del-flows", "br-int")
        self.ofctl("add-flows", "br-int", flows)
        self.ofctl("del-flows", "br-phy")
        self.ofctl("add-flow", "br-phy", "priority=0,actions=output:phy0")
        # the traffic last, once every rule is in place
        self.vsctl(
            "add-port", "br-int", "in0",
            "--", "set", "Interface", "in0", "type=dpdk", f"options:dpdk-devargs={rx}",
        )  # fmt: skip

    def datapath_stats(self):
        """{port name: (rx_packets, tx_packets)} of every datapath port, in
        one snapshot (``dpctl/show -s``)."""
        out = self.appctl("dpctl/show", "-s")
        stats = {}
        for m in re.finditer(r"port \d+: (\S+) .*?RX packets:(\d+).*?TX packets:(\d+)", out, re.S):
            stats[m.group(1)] = (int(m.group(2)), int(m.group(3)))
        if "in0" not in stats or "phy0" not in stats:
            raise OvsError(f"cannot read the datapath's port statistics: {out[:2000]}")
        return stats

    def stop(self):
        try:
            if self.procs:
                self._run("ovs-appctl", "-t", f"{self.dir}/vswitchd.ctl", "exit", check=False)
        except (subprocess.TimeoutExpired, OSError):
            pass
        try:
            for p in reversed(self.procs):
                if p.poll() is None:
                    try:
                        os.killpg(p.pid, signal.SIGTERM)
                        p.wait(20)
                    except (ProcessLookupError, subprocess.TimeoutExpired):
                        try:
                            os.killpg(p.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                        p.wait(10)
        finally:  # the rest even if a process would not end
            self._remove()

    def _remove(self):
        self.procs = []
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        remove_eal_runtime_dir(self.prefix)
        for f in glob.glob(f"/dev/hugepages/{self.prefix}*"):
            os.unlink(f)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()


def measure(pcap, seconds, warmup, n_macs, n_vteps) -> dict:
    """OVS-DPDK's encap rate of ``pcap``: the null port's tx over ``seconds``."""
    with OvsDpdk(pcap, n_macs, n_vteps) as ovs:
        time.sleep(warmup)
        t0 = time.monotonic()
        s0 = ovs.datapath_stats()
        time.sleep(seconds)
        t1 = time.monotonic()
        s1 = ovs.datapath_stats()
        (rx0, _), (_, tx0) = s0["in0"], s0["phy0"]
        (rx1, _), (_, tx1) = s1["in0"], s1["phy0"]
    return {
        "mpps": (tx1 - tx0) / (t1 - t0) / 1e6,
        "rx_packets": rx1 - rx0,
        "tx_packets": tx1 - tx0,
        "seconds": t1 - t0,
    }


def verify(pcap, out, n_macs, n_vteps, n_frames, timeout=30.0) -> None:
    """OVS forwards ``pcap`` (replayed, as in the measurement) into the pcap
    file ``out`` until at least ``n_frames`` came out: the first frames of
    new flows may be lost to its upcall queue, so the output is a sample of
    the steady state, each frame to be checked."""
    with OvsDpdk(pcap, n_macs, n_vteps, out_dev=f"net_pcap1,tx_pcap={out}") as o:
        deadline = time.monotonic() + timeout
        while o.datapath_stats()["phy0"][1] < n_frames:
            if time.monotonic() > deadline:
                raise OvsError(f"OVS-DPDK sent fewer than {n_frames} frames in {timeout:.0f} s")
            time.sleep(0.05)
        # removing the port closes the pcap writer: the file is complete
        o.vsctl("del-port", "br-phy", "phy0")
