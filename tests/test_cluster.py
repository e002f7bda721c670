"""Three nodes, one etcd, a real (namespaced) underlay, and a host whose VTEP
is the Linux kernel's own vxlan device.

    underlay netns: bridge br0, etcd on 10.99.1.100:2379
      |-- node1 netns: uplink0 10.99.1.1/24 (kernel, to reach etcd); VTEP 10.99.0.1 (core only)
      |-- node2 netns: uplink0 10.99.1.2/24;                          VTEP 10.99.0.2
      |-- node3 netns: uplink0 10.99.1.3/24;                          VTEP 10.99.0.3
      `-- host netns:  eth0 10.99.0.50/24, vxlan101 (kernel VTEP) + bridge -- vm netns
                                                   (192.168.60.200 on net1)

Each node runs ``python -m dataplane.cli run -c nodeN.yaml`` inside its
namespace (fallback mode, AF_PACKET uplink), with the etcd store. Pods are
namespaces attached through each node's control API. The tests share the
cluster (module fixture) and run in file order; each leaves it as it found
it, give or take a pod.
"""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from dataplane.startchecks import UPLINK_LOCK_DIR
from dataplane.status import FDB_ORIGINS
from tests.clusterhost import NetnsEtcd, store_call
from tests.etcdhost import have_etcd

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, DPDK EAL)"),
    pytest.mark.skipif(not have_etcd(), reason="needs /usr/bin/etcd (Debian: etcd-server)"),
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODES = (1, 2, 3)
ETCD_IP = "10.99.1.100"
HOST_VTEP = "10.99.0.50"
VM_IP, VM_MAC = "192.168.60.200", "02:00:00:0a:63:32"
NET1, NET2 = "192.168.60.", "192.168.61."
CT = {
    "pod_type": "ct",
    "network_plane": ["std", "control"],
    "networks": {"std": "net1", "control": "net2"},
}
IT = {"pod_type": "it", "network_plane": ["std"], "networks": {"std": "net1"}}

NODE_CONFIG = """\
node: node{n}
mode: fallback
lcores: [0, 1]
memory_mb: 256
vtep: {{address: 10.99.0.{n}/24, uplink: uplink0}}
networks:
  - {{name: net1, vni: 101, plane: std, subnet: 192.168.60.0/24, gateway: 192.168.60.1}}
  - {{name: net2, vni: 102, plane: control, subnet: 192.168.61.0/24}}
store: {{kind: etcd, endpoints: ["{etcd}"], prefix: {prefix}}}
state_dir: {dir}/state
api_socket: {dir}/api.sock
metrics: {{listen: null}}
"""

# a UDP echo server: echoes every datagram until it has been idle 15 s
UDP_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(15)
print("ready", flush=True)
try:
    while True:
        d, a = s.recvfrom(2048)
        s.sendto(b"echo:" + d, a)
except socket.timeout:
    pass
"""
# a UDP client: sends, waits 1 s for the echo, up to 8 times (the first
# datagram may wait for ARP); prints the echo, exit 1 without one
UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
for _ in range(8):
    s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recvfrom(2048)[0].decode()); sys.exit(0)
    except socket.timeout:
        pass
sys.exit(1)
"""


def sh(*cmd, check=True, timeout=60):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {r.stdout}{r.stderr}")
    return r


def nsx(ns, *cmd, check=False, timeout=60):
    return sh("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout)


def ping(ns, ip, count=3, interval="0.2", wait="2", extra=()):
    return nsx(ns, "ping", "-n", "-c", str(count), "-i", interval, "-W", wait, *extra, ip)


def reachable(ns, ip, deadline=10.0):
    """Seconds until the first echo reply from ``ip`` (pinging every 0.1 s),
    or None if none came within ``deadline``."""
    t0 = time.monotonic()
    r = nsx(
        ns,
        "ping",
        "-n",
        "-c",
        "1",
        "-i",
        "0.1",
        "-w",
        str(int(deadline)),
        ip,
        timeout=deadline + 10,
    )
    return round(time.monotonic() - t0, 2) if r.returncode == 0 else None


def ip_of(info, plane="std"):
    return next(p["ip"] for p in info["planes"] if p["plane"] == plane)


def mac_of(info, plane="std"):
    return next(p["mac"] for p in info["planes"] if p["plane"] == plane)


def quiet_netns(ns):
    """A new namespace with loopback up and no IPv6 (no ND/MLD chatter)."""
    sh("ip", "netns", "add", ns)
    nsx(
        ns,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
        check=True,
    )
    sh("ip", "-n", ns, "link", "set", "lo", "up")


class Node:
    """One node service, run inside its own namespace."""

    def __init__(self, cl, n):
        self.n = n
        self.cl = cl
        self.ns = f"{cl.tag}n{n}"
        self.dir = cl.tmp / f"node{n}"
        self.dir.mkdir()
        self.sock = str(self.dir / "api.sock")
        self.cfg = self.dir / "node.yaml"
        self.logfile = self.dir / "service.log"
        self.cfg.write_text(
            NODE_CONFIG.format(n=n, etcd=cl.etcd.url, prefix=cl.prefix, dir=self.dir)
        )
        self.proc = None
        self._syncs_before = 0

    @property
    def vtep(self):
        return f"10.99.0.{self.n}"

    def log(self):
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def syncs(self):
        return self.log().count('"cluster view synchronised"')

    def spawn(self):
        assert self.proc is None
        self._syncs_before = self.syncs()
        with open(self.logfile, "a") as log:
            self.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.ns,
                    sys.executable,
                    "-m",
                    "dataplane.cli",
                    "run",
                    "-c",
                    str(self.cfg),
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
            )

    def wait_ready(self, timeout=60):
        """API answers and the first cluster snapshot has been applied."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"node{self.n} exited ({self.proc.returncode}):\n{self.log()[-3000:]}\n"
                    + self.cl.etcd.report()
                )
            if os.path.exists(self.sock) and self.syncs() > self._syncs_before:
                try:
                    self.api("GET", "/v1/status")
                    return
                except OSError:
                    pass
            time.sleep(0.1)
        raise AssertionError(
            f"node{self.n} not ready in {timeout}s:\n{self.log()[-3000:]}\n" + self.cl.etcd.report()
        )

    def stop(self, timeout=30):
        """SIGTERM (its PID only); SIGKILL if it does not end. The exit code."""
        p, self.proc = self.proc, None
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode

    def api(self, method, endpoint, body=None):
        from dataplane.api import APIError, call

        try:
            return call(self.sock, method, endpoint, body)
        except APIError as e:
            if "etcd" not in str(e):
                raise
            # what etcd was doing: the CI log shows this message whole
            raise AssertionError(f"node{self.n} {method} {endpoint}: {e}\n{self.cl.etcd.report()}")


class Cluster:
    def __init__(self, tmp):
        self.tmp = tmp
        self.tag = "dpc" + uuid.uuid4().hex[:5]
        self.prefix = f"/dptest-{self.tag}"
        self.ul, self.host, self.vm = f"{self.tag}ul", f"{self.tag}h", f"{self.tag}vm"
        self.namespaces = []
        self.etcd = None
        self.nodes = {}
        self.pods = {}  # name -> pod info (+ "ns", "node")
        self.helpers = []  # other processes we started (tcpdump, udp servers)
        self.freed = None  # addresses a deleted pod gave back (ip, ip control, mac)

    # ---------------------------------------------------------- topology
    def netns(self, ns):
        self.namespaces.append(ns)
        quiet_netns(ns)
        return ns

    def build(self):
        ul = self.netns(self.ul)
        # etcd's address is on br0: its MAC is set, or the bridge would take
        # the lowest of its ports' and change it when a test adds a port
        # (ul9 below); nodes that had etcd's old MAC in their ARP cache then
        # send to a MAC the bridge no longer takes for its own, and etcd
        # goes silent to them until the entry is resolved again (30 s and more)
        sh("ip", "-n", ul, "link", "add", "br0", "address", "02:99:01:00:01:00", "type", "bridge")
        sh("ip", "-n", ul, "addr", "add", f"{ETCD_IP}/24", "dev", "br0")
        sh("ip", "-n", ul, "link", "set", "br0", "up")
        for n in NODES:
            ns = self.netns(f"{self.tag}n{n}")
            sh(
                "ip",
                "-n",
                ul,
                "link",
                "add",
                f"ul{n}",
                "type",
                "veth",
                "peer",
                "name",
                "uplink0",
                "netns",
                ns,
            )
            sh("ip", "-n", ul, "link", "set", f"ul{n}", "master", "br0", "up")
            # management address only; the VTEP address 10.99.0.n is the core's
            sh("ip", "-n", ns, "addr", "add", f"10.99.1.{n}/24", "dev", "uplink0")
            sh("ip", "-n", ns, "link", "set", "uplink0", "up")
        # a host that is not ours: the kernel's vxlan device, a bridge, a "vm"
        h, vm = self.netns(self.host), self.netns(self.vm)
        sh("ip", "-n", ul, "link", "add", "ulh", "type", "veth", "peer", "name", "eth0", "netns", h)
        sh("ip", "-n", ul, "link", "set", "ulh", "master", "br0", "up")
        sh("ip", "-n", h, "addr", "add", f"{HOST_VTEP}/24", "dev", "eth0")
        sh("ip", "-n", h, "link", "set", "eth0", "up")
        sh(
            "ip",
            "-n",
            h,
            "link",
            "add",
            "vxlan101",
            "type",
            "vxlan",
            "id",
            "101",
            "local",
            HOST_VTEP,
            "dstport",
            "4789",
            "dev",
            "eth0",
            "learning",
        )
        for n in NODES:
            nsx(
                h,
                "bridge",
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                "vxlan101",
                "dst",
                f"10.99.0.{n}",
                check=True,
            )
        sh("ip", "-n", h, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", h, "link", "set", "vxlan101", "master", "br0", "up")
        sh("ip", "-n", h, "link", "add", "vm0", "type", "veth", "peer", "name", "eth0", "netns", vm)
        sh("ip", "-n", h, "link", "set", "vm0", "master", "br0", "up")
        sh("ip", "-n", h, "link", "set", "br0", "up")
        sh("ip", "-n", vm, "link", "set", "eth0", "address", VM_MAC, "mtu", "1450", "up")
        sh("ip", "-n", vm, "addr", "add", f"{VM_IP}/24", "dev", "eth0")

    def start(self):
        self.etcd = NetnsEtcd(self.ul, ETCD_IP)
        self.etcd.start()
        for n in NODES:
            self.nodes[n] = Node(self, n)
        for node in self.nodes.values():  # all three at once, as a cluster would
            node.spawn()
        for node in self.nodes.values():
            node.wait_ready()

    def store(self, method, *args):
        return store_call(self.ul, self.etcd.url, self.prefix, method, *args)

    # --------------------------------------------------------------- pods
    def add_pod(self, n, name, spec, ns=None):
        ns = ns or self.netns(f"{self.tag}p{name}")
        info = self.nodes[n].api(
            "POST",
            "/v1/pods",
            {"name": name, "netns": f"/var/run/netns/{ns}", "spec": json.dumps(spec)},
        )
        info.update(ns=ns, node=n)
        self.pods[name] = info
        return info

    def del_pod(self, name):
        info = self.pods.pop(name)
        self.nodes[info["node"]].api("DELETE", f"/v1/pods?name={name}")
        return info

    # ------------------------------------------------------------ helpers
    def spawn(self, ns, *cmd, **kw):
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)
        self.helpers.append(p)
        return p

    def end(self, p, sig=signal.SIGTERM):
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def teardown(self):
        for p in self.helpers:
            self.end(p)
        for node in self.nodes.values():
            node.stop()
        if self.etcd is not None:
            self.etcd.close()
        for ns in reversed(self.namespaces):
            try:  # the uplink lock file a killed node left, named for its namespace
                ino = os.stat(f"/var/run/netns/{ns}").st_ino
            except OSError:
                ino = None
            sh("ip", "netns", "del", ns, check=False)
            if ino is not None:
                for f in glob.glob(os.path.join(UPLINK_LOCK_DIR, f"uplink-*@netns-{ino}.lock")):
                    os.unlink(f)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    cl = Cluster(tmp_path_factory.mktemp("cluster"))
    failed = request.session.testsfailed
    try:
        cl.build()
        t0 = time.monotonic()
        cl.start()
        print(f"\ncluster: etcd + 3 node services up in {time.monotonic() - t0:.1f}s")
        # the kernel-VTEP host, described to the cluster through a node's CLI
        r = cli(cl.nodes[1], "host", "add", "kvm", "--network", "net1", "--mac", VM_MAC)
        assert r[0] != 0 and "--ip" in r[2], r  # every field is required
        r = cli(
            cl.nodes[1],
            *("host", "add", "kvm", "--network", "net1", "--mac", VM_MAC),
            *("--ip", VM_IP, "--vtep", HOST_VTEP),
        )
        assert (
            r[0] == 0 and f"host kvm: {VM_IP} {VM_MAC} on net1 behind VTEP {HOST_VTEP}" in r[1]
        ), r
        cl.add_pod(1, "a", CT)
        cl.add_pod(2, "b", CT)
        cl.add_pod(3, "c", IT)
        yield cl
    except BaseException:
        failed = -1
        raise
    finally:
        if request.session.testsfailed != failed:
            for node in cl.nodes.values():
                print(f"--- node{node.n}: {node.logfile} (tail)\n{node.log()[-2000:]}")
            if cl.etcd is not None:  # its own warnings: slow applies, elections
                print(f"--- etcd: {cl.etcd.log_path} (tail)\n{cl.etcd.log_tail(40)}")
        cl.teardown()


def cli(node, *args):
    """The ``dataplane`` command against a node's API socket: (exit code,
    stdout, stderr)."""
    r = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", *args, "--socket", node.sock],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    return r.returncode, r.stdout, r.stderr


def net_counter(cl, n, net, what):
    st = cl.nodes[n].api("GET", "/v1/status")
    return next(x for x in st["networks"] if x["name"] == net)[what]


def _udp(cl, src, dst, port, plane="std"):
    srv = cl.spawn(
        cl.pods[dst]["ns"],
        sys.executable,
        "-c",
        UDP_SERVER,
        str(port),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert srv.stdout.readline().strip() == "ready", srv.stderr.read()
        r = nsx(
            cl.pods[src]["ns"],
            sys.executable,
            "-c",
            UDP_CLIENT,
            ip_of(cl.pods[dst], plane),
            str(port),
            f"hello-{src}-{dst}",
        )
        return r
    finally:
        cl.end(srv)


# ------------------------------------------------------------------ tests
def test_pods_on_different_nodes_reach_each_other(cluster):
    cl = cluster
    a, b, c = cl.pods["a"], cl.pods["b"], cl.pods["c"]
    for src, dst, plane in (
        ("a", "b", "std"),
        ("a", "c", "std"),
        ("c", "b", "std"),
        ("b", "a", "control"),
    ):
        r = ping(cl.pods[src]["ns"], ip_of(cl.pods[dst], plane))
        assert r.returncode == 0, f"{src} -> {dst} ({plane}): {r.stdout}{r.stderr}"
    r = _udp(cl, "a", "c", 5001)
    assert r.returncode == 0 and r.stdout.strip() == "echo:hello-a-c", r.stdout + r.stderr
    r = _udp(cl, "b", "a", 5002, plane="control")
    assert r.returncode == 0 and r.stdout.strip() == "echo:hello-b-a", r.stdout + r.stderr
    # it went over the underlay: encapsulated on one node, decapsulated on another
    st = {
        n: {x["name"]: x for x in cl.nodes[n].api("GET", "/v1/status")["networks"]} for n in NODES
    }
    assert st[1]["net1"]["encap_packets"] > 0 and st[3]["net1"]["decap_packets"] > 0
    assert st[2]["net2"]["encap_packets"] > 0 and st[1]["net2"]["decap_packets"] > 0
    assert a["node"] != b["node"] != c["node"]


def test_networks_are_isolated(cluster):
    cl = cluster
    a, b, c = cl.pods["a"], cl.pods["b"], cl.pods["c"]
    # b answers ARP only on the interface that has the address (a host on
    # two planes otherwise answers for any of its addresses on any interface)
    nsx(b["ns"], "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1", check=True)
    b_net2_port = next(pl["host_ifname"] for pl in b["planes"] if pl["plane"] == "control")

    def to_b_net2():  # frames node2's core delivered to b's net2 interface
        st = cl.nodes[2].api("GET", "/v1/status")
        return next(p for p in st["ports"] if p["name"] == b_net2_port)["tx_packets"]

    before = to_b_net2()
    # what must never arrive on b's net2 interface: a frame from a net1
    # interface (c's, or a's net1 one, by their MACs); captured on b's
    # control interface for the whole test
    pcap = cl.tmp / "isolation.pcap"
    td = cl.spawn(
        b["ns"],
        *("tcpdump", "-i", "control", "-n", "--immediate-mode", "-U", "-w", str(pcap)),
        f"ether src {mac_of(a)} or ether src {mac_of(c)}",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = td.stderr.readline()
    assert "listening on" in line, line
    b2 = ip_of(b, "control")
    try:
        # c (net1 only): net2 routed through its net1 interface; a (on both):
        # b's net2 address routed into net1 by a host route, which wins over
        # the control plane's subnet route. (a's control link stays up: set
        # down, the service's pod check brings it back up within seconds,
        # and a ping could then reach b on net2 as it should; so net2
        # carries a's own control-plane frames meanwhile, and b's net2 port
        # counts them.)
        for pod, route in ((c, NET2 + "0/24"), (a, b2 + "/32")):
            sh("ip", "-n", pod["ns"], "route", "add", route, "dev", "eth0")
            try:
                r = ping(pod["ns"], b2, count=3)
            finally:
                sh("ip", "-n", pod["ns"], "route", "del", route, "dev", "eth0")
            assert r.returncode != 0, f"{pod['name']} reached b's net2 address: {r.stdout}"
        time.sleep(0.3)
    finally:
        cl.end(td, signal.SIGINT)
        # their unanswered ARP for b's net2 address stops here, not seconds
        # later in the next test's capture of the underlay
        for pod in (a, c):
            sh("ip", "-n", pod["ns"], "neigh", "flush", "to", b2, "dev", "eth0", check=False)
    from scapy.utils import rdpcap

    leaked = rdpcap(str(pcap))
    assert not leaked, [f.summary() for f in leaked]
    # and each network still works
    assert ping(c["ns"], ip_of(b)).returncode == 0
    assert ping(a["ns"], ip_of(b, "control")).returncode == 0
    assert to_b_net2() > before


def _inner_pairs(cap):
    """(inner IPv4 source, destination) -> frames, of the VXLAN frames in
    the capture file ``cap`` so far (a frame being written is not read)."""
    from scapy.layers.inet import IP
    from scapy.layers.vxlan import VXLAN
    from scapy.utils import PcapReader

    counts = {}
    try:
        with PcapReader(str(cap)) as r:
            for f in r:
                if VXLAN in f and IP in f[VXLAN].payload:
                    key = (f[VXLAN].payload[IP].src, f[VXLAN].payload[IP].dst)
                    counts[key] = counts.get(key, 0) + 1
    except Exception:  # noqa: BLE001 - empty, or its last frame half written
        pass
    return counts


def _holds_both_ways(counts, answered):
    """Whether every (x, y) answered n times crossed n times each way."""
    return all(
        counts.get((x, y), 0) >= n and counts.get((y, x), 0) >= n for (x, y), n in answered.items()
    )


def test_underlay_vxlan_headers(cluster):
    cl = cluster
    a, b, c = cl.pods["a"], cl.pods["b"], cl.pods["c"]
    if not os.path.exists("/usr/bin/tcpdump") and not os.path.exists("/usr/sbin/tcpdump"):
        pytest.skip("tcpdump not installed")
    cap = cl.tmp / "underlay.pcap"
    # --immediate-mode: else libpcap hands over packets in blocks (up to 1 s
    # late) and the last ones are lost when tcpdump is stopped
    td = cl.spawn(
        cl.ul,
        "tcpdump",
        "-i",
        "br0",
        "-n",
        "--immediate-mode",
        "-U",
        "-w",
        str(cap),
        "udp port 4789",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = td.stderr.readline()
    assert "listening on" in line, line
    try:
        answered = {}
        for dst, plane, extra in (
            (b, "std", ()),  # std, TOS 0
            (c, "std", ("-Q", "0x28")),  # std, AF11
            (b, "control", ()),
        ):  # control
            r = ping(a["ns"], ip_of(dst, plane), extra=extra)
            assert r.returncode == 0, r.stdout
            answered[(ip_of(a, plane), ip_of(dst, plane))] = int(
                re.search(r"(\d+) received", r.stdout).group(1)
            )
        # every answered echo is in the kernel's hands by now; tcpdump,
        # which stops without writing what it has not read, is given the
        # time a busy VM may take to write them
        end = time.monotonic() + 15
        while time.monotonic() < end and not _holds_both_ways(_inner_pairs(cap), answered):
            time.sleep(0.2)
    finally:
        cl.end(td, signal.SIGINT)
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import ARP, Ether
    from scapy.layers.vxlan import VXLAN
    from scapy.utils import rdpcap

    ours = {n.vtep for n in cl.nodes.values()}
    seen = {}
    flows = {}
    counts = {}  # (inner src, inner dst) -> frames
    frames = rdpcap(str(cap))
    for f in frames:
        if IP not in f or f[IP].src not in ours:
            continue
        o = f[IP]
        assert o.dst in ours | {HOST_VTEP}, f.summary()
        assert UDP in f and f[UDP].dport == 4789 and f[UDP].chksum == 0, f.summary()
        assert o.flags.DF, f"DF not set: {f.summary()}"
        v = f[VXLAN]
        assert v.flags == 0x08, f"VXLAN flags {v.flags:#x}"
        inner = v.payload
        assert isinstance(inner, Ether)
        seen.setdefault(v.vni, set()).add(o.tos)
        subnet = {101: NET1, 102: NET2}[v.vni]  # VNI per network
        if IP in inner:
            assert inner[IP].src.startswith(subnet) and inner[IP].dst.startswith(subnet)
            want = (inner[IP].tos & 0xFC) if v.vni == 101 else 24 << 2
            flow = (inner[IP].src, inner[IP].dst, inner[IP].proto)
            flows.setdefault(flow, set()).add(f[UDP].sport)
            counts[flow[:2]] = counts.get(flow[:2], 0) + 1
        else:
            assert ARP in inner and inner[ARP].pdst.startswith(subnet)
            want = 0 if v.vni == 101 else 24 << 2
        assert o.tos & 0xFC == want, f"VNI {v.vni}: outer TOS {o.tos:#x}, want {want:#x}"
    assert {101, 102} <= set(seen), seen
    assert seen[102] == {24 << 2}  # control: CS3
    assert {0, 0x28} <= seen[101]  # std: copied
    # every answered ping crossed the underlay both ways (and was captured)
    assert _holds_both_ways(counts, answered), (answered, counts)
    # one inner flow, one outer source port (ECMP entropy without reordering)
    assert all(len(p) == 1 and 0 not in p for p in flows.values()), flows
    print(
        f"underlay capture: {len(frames)} frames, TOS per VNI "
        f"{ {k: sorted(v) for k, v in seen.items()} }"
    )


def test_kernel_vtep_host_both_directions(cluster):
    cl = cluster
    a, b, c = cl.pods["a"], cl.pods["b"], cl.pods["c"]
    # vm -> each pod (ARP from the kernel's VTEP, floods to the three nodes)
    nsx(cl.vm, "ip", "neigh", "flush", "all")
    for p in (a, b, c):
        r = ping(cl.vm, ip_of(p))
        assert r.returncode == 0, f"vm -> pod on node{p['node']}: {r.stdout}"
        neigh = sh("ip", "-n", cl.vm, "neigh", "show", ip_of(p)).stdout
        assert mac_of(p) in neigh.lower(), neigh
    # pod -> vm (ARP from our VTEPs, flooded to the kernel VTEP among others)
    for p in (a, b, c):
        sh("ip", "-n", p["ns"], "neigh", "flush", "all")
        r = ping(p["ns"], VM_IP)
        assert r.returncode == 0, f"pod on node{p['node']} -> vm: {r.stdout}"
        neigh = sh("ip", "-n", p["ns"], "neigh", "show", VM_IP).stdout
        assert VM_MAC in neigh.lower(), neigh
    # the kernel VTEP learned each pod's MAC behind the right node's VTEP
    fdb = sh("ip", "netns", "exec", cl.host, "bridge", "fdb", "show", "dev", "vxlan101").stdout
    for p in (a, b, c):
        assert re.search(rf"{mac_of(p)} dst 10\.99\.0\.{p['node']}\b", fdb), fdb


def fdb_cli(node, *args):
    return cli(node, "fdb", *args)


def test_fdb_shows_where_each_mac_goes_and_why(cluster):
    cl = cluster
    a, b, c = cl.pods["a"], cl.pods["b"], cl.pods["c"]
    node = cl.nodes[1]
    ports = {p["port"]: p["name"] for p in node.api("GET", "/v1/status")["ports"]}
    rows = node.api("GET", "/v1/fdb")
    by = {(r["network"], r["mac"]): r for r in rows}
    assert len(by) == len(rows)
    # pod a lives on node1: each plane's MAC to the port of that plane
    for plane, net in (("std", "net1"), ("control", "net2")):
        port = next(p["port"] for p in a["planes"] if p["plane"] == plane)
        assert by[(net, mac_of(a, plane))] == {
            "network": net,
            "mac": mac_of(a, plane),
            "type": "local",
            "port": ports[port],
            "origin": "pod",
            "pod": "a",
            "plane": plane,
        }
    # b and c on the other nodes: to their node's VTEP, from the cluster view
    for p, net, plane in ((b, "net1", "std"), (b, "net2", "control"), (c, "net1", "std")):
        r = by[(net, mac_of(p, plane))]
        assert (r["type"], r["vtep"], r["origin"], r["pod"], r["plane"], r["node"]) == (
            "remote",
            f"10.99.0.{p['node']}",
            "cluster",
            [k for k, v in cl.pods.items() if v is p][0],
            plane,
            f"node{p['node']}",
        )
    # the host behind the kernel VTEP, described to the cluster
    assert by[("net1", VM_MAC)] == {
        "network": "net1",
        "mac": VM_MAC,
        "type": "remote",
        "vtep": HOST_VTEP,
        "origin": "host",
        "host": "kvm",
    }
    # nothing else: the entries are exactly the pods' MACs and the host's
    want = {(p["network"], p["mac"]) for info in cl.pods.values() for p in info["planes"]}
    assert set(by) == want | {("net1", VM_MAC)}
    # filters, and what the command prints
    assert {r["mac"] for r in node.api("GET", "/v1/fdb?network=net2")} == {
        mac_of(a, "control"),
        mac_of(b, "control"),
    }
    assert node.api("GET", f"/v1/fdb?mac={VM_MAC.upper()}") == [by[("net1", VM_MAC)]]
    rc, out, err = fdb_cli(node, "--network", "net1")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NETWORK", "MAC", "TYPE", "TO", "ORIGIN", "WHOSE"]
    assert len(lines) == 1 + sum(1 for net, _ in by if net == "net1")
    assert any(
        line.split()[:5] == ["net1", VM_MAC, "remote", HOST_VTEP, "host"] and "host kvm" in line
        for line in lines
    ), out
    assert any(
        line.split()[:3] == ["net1", mac_of(b), "remote"]
        and f"pod b plane std on node node{b['node']}" in line
        for line in lines
    ), out
    # each network floods to the VTEPs of its remote pods and hosts, all
    # resolved by now (every node pinged every other)
    nets = {n["name"]: n["flood"] for n in node.api("GET", "/v1/networks")}
    for net in ("net1", "net2"):
        want = {r["vtep"] for (n, _), r in by.items() if n == net and r["type"] == "remote"}
        assert {f["vtep"] for f in nets[net]} == want, (net, nets[net])
    assert all(f["resolved"] for f in nets["net1"]), nets
    rc, out, err = cli(node, "net", "list")
    assert rc == 0, err
    line = next(x for x in out.splitlines() if x.startswith("net1 "))
    flooded = line.split("flood ", 1)[1].split()
    assert sorted(flooded) == sorted({f["vtep"] for f in nets["net1"]}), line
    rc, out, err = fdb_cli(node, "--mac", "02:00:00:00:00:01")
    assert rc == 0 and out.strip() == "no FDB entry for mac 02:00:00:00:00:01", out + err
    # bad input: named, and nothing changes
    rc, out, err = fdb_cli(node, "--network", "nope")
    assert rc != 0 and "no network 'nope' on this node (it has net1, net2)" in err, err
    rc, out, err = fdb_cli(node, "--mac", "02:00:00:00:00")
    assert rc != 0 and "mac" in err and "02:00:00:00:00" in err, err
    rc, out, err = fdb_cli(node, "--mac", "ff:ff:ff:ff:ff:ff")
    assert rc != 0 and "not a unicast one" in err, err
    assert node.api("GET", "/v1/fdb") == rows
    # the summary counts what the list shows, network by network
    want = []
    for net in ("net1", "net2"):
        mine = [r for r in rows if r["network"] == net]
        counts = {o: sum(r["origin"] == o for r in mine) for o in FDB_ORIGINS}
        want.append({"network": net, **counts, "frozen": 0, "total": len(mine)})
    assert want[0]["pod"] == 1 and want[0]["cluster"] == 2 and want[0]["host"] == 1
    assert node.api("GET", "/v1/fdb/summary") == want
    assert node.api("GET", "/v1/fdb/summary?network=net2") == want[1:]
    rc, out, err = fdb_cli(node, "summary")
    assert rc == 0, err
    assert [line.split() for line in out.splitlines()] == [
        ["NETWORK", "POD", "PORT", "CLUSTER", "HOST", "LEARNED", "FROZEN", "API", "TOTAL"],
        ["net1", "1", "0", "2", "1", "0", "0", "0", "4"],
        ["net2", "1", "0", "1", "0", "0", "0", "0", "2"],
    ], out
    rc, out, err = fdb_cli(node, "summary", "--mac", VM_MAC)
    assert rc != 0 and "leave --mac out" in err, err
    # nothing is learned here: clearing is refused, saying why
    rc, out, err = fdb_cli(node, "clear")
    assert rc != 0 and "vtep.learning is off on this node" in err, err


def test_static_hosts_added_listed_and_removed_through_any_node(cluster):
    cl = cluster
    a = cl.pods["a"]
    mac, ip = "02:00:00:0a:64:33", "192.168.61.201"

    def on_node2():
        return [r for r in cl.nodes[2].api("GET", "/v1/fdb?network=net2") if r["mac"] == mac]

    add = ("host", "add", "kvm2", "--network", "net2", "--mac", mac, "--ip", ip)
    rc, out, err = cli(cl.nodes[3], *add, "--vtep", HOST_VTEP)
    assert rc == 0, err
    hosts = json.loads(cli(cl.nodes[1], "host", "list", "--json")[1])
    assert {h["name"]: (h["network"], h["ip"], h["mac"], h["vtep"]) for h in hosts} == {
        "kvm": ("net1", VM_IP, VM_MAC, HOST_VTEP),
        "kvm2": ("net2", ip, mac, HOST_VTEP),
    }
    # every node follows it: node2 forwards its MAC to its VTEP
    for _ in range(100):
        if on_node2():
            break
        time.sleep(0.05)
    [row] = on_node2()
    assert (row["vtep"], row["origin"], row["host"]) == (HOST_VTEP, "host", "kvm2")

    def net2_flood():
        nets = {n["name"]: n["flood"] for n in cl.nodes[2].api("GET", "/v1/networks")}
        return {f["vtep"] for f in nets["net2"]}

    assert HOST_VTEP in net2_flood()  # the host's VTEP gets net2's broadcasts
    # bad input: named, and nothing recorded
    bad = {
        ("--network", "nope"): "no network 'nope' in the cluster (it has net1, net2)",
        ("--mac", "ff:ff:ff:ff:ff:ff"): "not a unicast one",
        ("--mac", mac_of(a, "control")): mac_of(a, "control"),  # pod a's MAC
        ("--ip", ip_of(a, "control")): "taken by pod a",
        ("--ip", "10.1.2.3"): "10.1.2.3",
        ("--vtep", "127.0.0.1"): "cannot be a VTEP address",
        ("--vtep", "10.99.0.1"): "10.99.0.1 is this node's own VTEP address",
        # another node's: that node has no entry for the host's MAC
        ("--vtep", "10.99.0.2"): "vtep 10.99.0.2 is the VTEP of node node2, running (host",
        ("--vtep", "10.99.0.255"): "broadcast address of the underlay subnet 10.99.0.0/24",
    }
    for (opt, val), words in bad.items():
        args = {"--network": "net2", "--mac": "02:00:00:0a:64:34", "--ip": "192.168.61.202"}
        args["--vtep"] = HOST_VTEP
        args[opt] = val
        rc, out, err = cli(cl.nodes[1], "host", "add", "kvm3", *sum(args.items(), ()))
        assert rc != 0 and words in err, (opt, val, err)
    assert {h["name"] for h in json.loads(cli(cl.nodes[2], "host", "list", "--json")[1])} == {
        "kvm",
        "kvm2",
    }
    rc, out, err = cli(cl.nodes[1], "host", "del", "a")
    assert rc != 0 and "no static host 'a' (it is a pod: dataplane pod del)" in err, err
    rc, out, err = cli(cl.nodes[1], "host", "del", "nohost")
    assert rc != 0 and "no static host 'nohost'" in err, err
    assert ping(a["ns"], ip_of(cl.pods["b"])).returncode == 0  # pods untouched
    # removed: gone from every node's table
    rc, out, err = cli(cl.nodes[2], "host", "del", "kvm2")
    assert rc == 0 and '"deleted": "kvm2"' in out, err
    for _ in range(100):
        if not on_node2():
            break
        time.sleep(0.05)
    assert on_node2() == []
    assert HOST_VTEP not in net2_flood()
    assert [h["name"] for h in cl.nodes[3].api("GET", "/v1/hosts")] == ["kvm"]


def test_pod_moves_to_another_node_with_its_ip(cluster):
    cl = cluster
    a, b = cl.pods["a"], cl.pods["b"]
    m = cl.add_pod(2, "m", CT)
    ip, ipc, mac = ip_of(m), ip_of(m, "control"), mac_of(m)
    for x in (ip, ipc):
        t = reachable(a["ns"], x)
        assert t is not None, f"new pod on node2 ({x}) not reachable from node1"
    cl.del_pod("m")
    time.sleep(1.0)  # gone from every node's tables within a second:
    f0 = net_counter(cl, 1, "net1", "flood_packets")
    assert ping(a["ns"], ip, count=3, wait="1").returncode != 0, "deleted pod answers"
    # a still has m's MAC in its ARP cache, node1 no FDB entry: flooded, not sent to node2
    assert net_counter(cl, 1, "net1", "flood_packets") - f0 >= 3
    # the same pod, same addresses, on node3 (which has no pod on net2 yet:
    # node1 must learn that node3 joined net2 and where the MAC is now)
    m3 = cl.add_pod(3, "m", dict(CT, ips={"std": ip, "control": ipc}), ns=cl.netns(f"{cl.tag}pm3"))
    t_add = time.monotonic()
    assert (ip_of(m3), ip_of(m3, "control"), mac_of(m3)) == (ip, ipc, mac)
    for x in (ipc, ip):
        t = reachable(a["ns"], x)
        assert t is not None, f"moved pod ({x}) not reachable from node1 at its new place"
    print(
        f"\npod moved node2 -> node3 with {ip}, {ipc}: both reachable from node1 "
        f"{time.monotonic() - t_add:.2f}s after the add returned"
    )
    # unicast to node3 now (node1's FDB has the new place), not flooded
    f0 = net_counter(cl, 1, "net2", "flood_packets")
    e0 = net_counter(cl, 1, "net2", "encap_packets")
    assert ping(a["ns"], ipc, count=5, interval="0.1").returncode == 0
    assert net_counter(cl, 1, "net2", "flood_packets") - f0 < 5
    assert net_counter(cl, 1, "net2", "encap_packets") - e0 >= 5
    eps = cl.store("endpoints", "m")
    assert {(e["plane"], e["node"], e["vtep"], e["ip"]) for e in eps} == {
        ("std", "node3", "10.99.0.3", ip),
        ("control", "node3", "10.99.0.3", ipc),
    }
    assert "eth0" not in sh("ip", "-n", f"{cl.tag}pm", "-o", "link").stdout  # old place empty
    assert ping(b["ns"], ipc).returncode == 0  # node2 too
    cl.del_pod("m")  # node3 has no pod on net2 again
    cl.freed = (ip, ipc, mac)


def test_address_taken_over_by_a_new_mac_is_reachable_at_once(cluster):
    cl = cluster
    a = cl.pods["a"]
    ip, ipc, old_mac = cl.freed
    # a talked to ip a moment ago (pod m, now deleted): a new pod with another
    # name, hence another MAC, takes the address on node3
    n = cl.add_pod(3, "n", dict(CT, ips={"std": ip, "control": ipc}))
    try:
        new_mac = mac_of(n)
        assert new_mac != old_mac
        # n announced itself (gratuitous ARP on attach): a's cache moved over
        # without waiting for its old entry to expire
        neigh = ""
        for _ in range(30):
            neigh = sh("ip", "-n", a["ns"], "neigh", "show", ip).stdout.lower()
            if new_mac in neigh:
                break
            time.sleep(0.1)
        assert new_mac in neigh and old_mac not in neigh, neigh
        assert reachable(a["ns"], ip, deadline=3) is not None
    finally:
        cl.del_pod("n")  # node3 has no pod on net2 again


def test_node_restart_loses_no_state(cluster):
    cl = cluster
    a, b = cl.pods["a"], cl.pods["b"]
    n2 = cl.nodes[2]

    def strip(ps):
        return sorted(
            (
                {
                    **x,
                    "planes": [{k: v for k, v in pl.items() if k != "port"} for pl in x["planes"]],
                }
                for x in ps
            ),
            key=lambda x: x["name"],
        )

    before = strip(n2.api("GET", "/v1/pods"))
    allocs_before = cl.store("allocations")
    t0 = time.monotonic()
    assert n2.stop() == 0, n2.log()[-2000:]
    assert not os.path.exists(n2.sock)
    n2.spawn()
    n2.wait_ready()
    print(f"\nnode2 restarted (SIGTERM + start, synced) in {time.monotonic() - t0:.1f}s")
    assert strip(n2.api("GET", "/v1/pods")) == before
    assert cl.store("allocations") == allocs_before
    for src, dst, plane in (("a", "b", "std"), ("b", "c", "std"), ("a", "b", "control")):
        r = ping(cl.pods[src]["ns"], ip_of(cl.pods[dst], plane))
        assert r.returncode == 0, f"{src} -> {dst} ({plane}) after restart: {r.stdout}"
    assert ping(b["ns"], VM_IP).returncode == 0  # static endpoint too
    # nothing allocated twice
    r = cl.add_pod(2, "r", CT)
    taken = {(al["network"], al["ip"]) for al in allocs_before}
    assert ("net1", ip_of(r)) not in taken and ("net2", ip_of(r, "control")) not in taken
    allocs = cl.store("allocations")
    assert len({(al["network"], al["ip"]) for al in allocs}) == len(allocs)
    per_pod = [(al["pod"], al["network"]) for al in allocs]
    assert len(set(per_pod)) == len(per_pod)
    # (a may have another pod's MAC cached for a reused address: pods announce their addresses on attach)
    sh("ip", "-n", a["ns"], "neigh", "flush", "all")
    assert ping(a["ns"], ip_of(r)).returncode == 0
    assert ping(a["ns"], ip_of(r, "control")).returncode == 0


def test_node_cut_off_from_etcd_resynchronises_without_leftovers(cluster):
    """node1 loses etcd (its management address goes; the VTEP, the core's,
    stays) while the cluster changes: it forwards on what it has, then
    catches up: the deleted pod's entry is gone, the new pod is there."""
    cl = cluster
    a, b = cl.pods["a"], cl.pods["b"]
    n1 = cl.nodes[1]
    x = cl.add_pod(2, "x", dict(IT, ips={"std": NET1 + "150"}))
    assert reachable(a["ns"], ip_of(x)) is not None
    syncs, ended = n1.syncs(), n1.log().count('"cluster watch ended')
    p = cl.spawn(
        a["ns"],
        "ping",
        "-n",
        "-i",
        "0.1",
        "-W",
        "2",
        "-c",
        "60",
        ip_of(b),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sh("ip", "-n", n1.ns, "addr", "del", "10.99.1.1/24", "dev", "uplink0")
    t_cut = time.monotonic()
    try:
        # changes node1 does not hear of: x deleted, y on node3 (new to net2)
        cl.del_pod("x")
        y = cl.add_pod(3, "y", dict(CT, ips={"std": NET1 + "151", "control": NET2 + "151"}))
        deadline = time.monotonic() + 15
        while n1.log().count('"cluster watch ended') == ended and time.monotonic() < deadline:
            time.sleep(0.2)
        t_noticed = time.monotonic() - t_cut
        assert n1.log().count('"cluster watch ended') > ended, "node1 did not notice"
        time.sleep(1.0)
    finally:
        sh("ip", "-n", n1.ns, "addr", "add", "10.99.1.1/24", "dev", "uplink0")
    t_back = time.monotonic()
    deadline = t_back + 10
    while n1.syncs() == syncs and time.monotonic() < deadline:
        time.sleep(0.05)
    assert n1.syncs() > syncs, "node1 did not resynchronise:\n" + n1.log()[-2000:]
    print(
        f"\nnode1 cut off from etcd {t_back - t_cut:.1f}s (noticed after {t_noticed:.1f}s), "
        f"resynchronised {time.monotonic() - t_back:.2f}s after it could reach etcd again"
    )
    out, _ = p.communicate(timeout=30)
    sent, recv = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
    print(f"ping a -> b at 10/s meanwhile: {recv}/{sent} answered")
    assert recv >= 0.9 * sent, out
    # no leftover: a still has x's MAC cached; node1 has no entry for it, floods
    f0 = net_counter(cl, 1, "net1", "flood_packets")
    assert ping(a["ns"], ip_of(x), count=3, wait="1").returncode != 0
    assert net_counter(cl, 1, "net1", "flood_packets") - f0 >= 3
    # nothing missing: y's control address, on a node new to net2
    assert reachable(a["ns"], ip_of(y, "control")) is not None
    cl.del_pod("y")  # node3 has no pod on net2 again


def test_node_list_fails_at_once_naming_the_store_when_etcd_does_not_answer(cluster):
    """``dataplane node list`` against a hung etcd (no quorum: SIGSTOP)
    fails as ``host list`` does, naming the store and what it cannot show,
    within its view's bound (not after etcd comes back from its pause)."""
    cl = cluster
    n1 = cl.nodes[1]
    cl.etcd.pause()
    try:
        listed = cli(n1, "node", "list")
        hosts = cli(n1, "host", "list")
    finally:
        cl.etcd.resume()
    rc, out, err = listed
    assert rc != 0, out
    assert f"the store (etcd {cl.etcd.url}) does not answer" in err, err
    assert "the nodes' claims and pods are recorded in it, so none can be listed" in err, err
    assert hosts[0] != 0 and f"the store (etcd {cl.etcd.url}) does not answer" in hosts[2], hosts
    # and once etcd answers again, it lists the nodes
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rc, out, err = cli(n1, "node", "list")
        if rc == 0:
            break
        time.sleep(0.2)
    assert rc == 0 and "node1" in out, err


def test_etcd_outage_does_not_stop_traffic(cluster):
    cl = cluster
    a, b = cl.pods["a"], cl.pods["b"]
    syncs = {n: node.syncs() for n, node in cl.nodes.items()}
    p = cl.spawn(
        a["ns"],
        "ping",
        "-n",
        "-i",
        "0.1",
        "-W",
        "2",
        "-w",
        "14",
        ip_of(b),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(1.0)
    cl.etcd.pause()  # hung: SIGSTOP
    time.sleep(3.0)
    cl.etcd.resume()
    time.sleep(1.0)
    # each node counts its own pods per network (the endpoints: the cluster's)
    for node in cl.nodes.values():
        want = {}
        for pod in node.api("GET", "/v1/pods"):
            for pl in pod["planes"]:
                want[pl["network"]] = want.get(pl["network"], 0) + 1
        st = node.api("GET", "/v1/status")
        assert {n["name"]: n["pods"] for n in st["networks"] if n["pods"]} == want
        assert st["store_error"] is None
    t_stop = time.monotonic()
    cl.etcd.stop()  # gone: SIGTERM, same data directory
    # the status still answers, with the core's counters: the pod counts
    # are unknown and the store's silence is said
    st = cl.nodes[1].api("GET", "/v1/status")
    assert st["store_error"] and all(n["pods"] is None for n in st["networks"]), st
    assert st["forwarding"] is True
    time.sleep(max(0.0, 4.0 - (time.monotonic() - t_stop)))
    cl.etcd.start()
    t_back, back_wall = time.monotonic(), time.time()
    print(f"\netcd paused 3s, then down {t_back - t_stop:.1f}s (restart included)")
    # a pod added right after etcd is back is reached from the other nodes:
    # they resynchronise (snapshot + diff) once they get through again
    # node3 has no pod on net2 before this one: reaching d's control address
    # from node1/node2 needs their view of net2 resynchronised
    d = cl.add_pod(3, "d", CT)
    t_add = time.monotonic()
    for src in (a, b):  # d may reuse a deleted pod's address (announced by gratuitous ARP)
        sh("ip", "-n", src["ns"], "neigh", "flush", "all")
    for n in (1, 2):
        src = a if n == 1 else b
        t = reachable(src["ns"], ip_of(d, "control"), deadline=15)
        assert t is not None, (
            f"pod added after the outage not reachable from node{n}:\n" + cl.nodes[n].log()[-2000:]
        )
        print(
            f"pod added on node3 after the outage: reachable from node{n} after "
            f"{time.monotonic() - t_add:.1f}s"
        )
    for n, node in cl.nodes.items():
        ts = [
            json.loads(ln)["ts"]
            for ln in node.log().splitlines()
            if '"cluster view synchronised"' in ln
        ]
        # (negative: it got through before the test's own health check did)
        print(
            f"node{n}: resynchronised {ts[-1] - back_wall:+.2f}s after etcd answered "
            "the test's health check"
        )
    out, _ = p.communicate(timeout=30)
    sent, recv = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
    print(f"ping a -> b at 10/s across the outage: {recv}/{sent} answered")
    assert recv >= 0.9 * sent, out
    # every node noticed and resynchronised, with no leftovers or duplicates
    for n, node in cl.nodes.items():
        assert node.syncs() > syncs[n], f"node{n} did not resynchronise"
        assert node.proc.poll() is None
    for src, dst in (("a", "b"), ("b", "c"), ("c", "a")):
        assert ping(cl.pods[src]["ns"], ip_of(cl.pods[dst])).returncode == 0


def test_a_second_service_under_a_running_node_name_starts_nothing(cluster):
    """A service started under a running node's name from another machine
    (here: another namespace and VTEP; a cloned machine keeps the host name
    that ``node:`` defaults to) is refused before it touches a pod: the
    running node's pods, records and traffic stay."""
    cl = cluster
    a, b = cl.pods["a"], cl.pods["b"]
    pods_before = sorted(p["name"] for p in cl.store("pods"))
    # node1's claim on its name is held (one lost while an earlier test cut
    # node1 off etcd is made again within a second of etcd answering)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = {n["node"]: n for n in cl.nodes[1].api("GET", "/v1/nodes")}
        if rows["node1"]["running"]:
            break
        time.sleep(0.2)
    assert rows["node1"]["running"], rows
    ns = cl.netns(f"{cl.tag}n9")
    # the lowest MAC on the underlay's bridge, on purpose: etcd stays reachable
    # at the MAC the nodes know (br0's is set; see Cluster.build)
    sh("ip", "-n", cl.ul, "link", "add", "ul9", "address", "02:00:00:00:00:01", "type", "veth",
       "peer", "name", "uplink0", "netns", ns)  # fmt: skip
    sh("ip", "-n", cl.ul, "link", "set", "ul9", "master", "br0", "up")
    sh("ip", "-n", ns, "addr", "add", "10.99.1.9/24", "dev", "uplink0")
    sh("ip", "-n", ns, "link", "set", "uplink0", "up")
    d = cl.tmp / "node9"
    d.mkdir()
    cfg = NODE_CONFIG.format(n=9, etcd=cl.etcd.url, prefix=cl.prefix, dir=d)
    (d / "node.yaml").write_text(cfg.replace("node: node9", "node: node1"))
    r = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "dataplane.cli", "run", "-c",
         str(d / "node.yaml")],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    assert "node: node1 is the name of a running node service (VTEP 10.99.0.1" in out, out[-3000:]
    assert "replay" not in out, out[-3000:]
    assert sorted(p["name"] for p in cl.store("pods")) == pods_before
    assert [p["name"] for p in cl.nodes[1].api("GET", "/v1/pods")] == ["a"]
    assert ping(a["ns"], ip_of(b)).returncode == 0
    # the same node's own service, restarted after a crash, takes its name back at once
    n1 = cl.nodes[1]
    n1.proc.kill()
    n1.proc.wait()
    n1.proc = None
    n1.spawn()
    n1.wait_ready()
    assert [p["name"] for p in n1.api("GET", "/v1/pods")] == ["a"]
    assert ping(a["ns"], ip_of(b)).returncode == 0


def test_a_second_node_with_a_running_nodes_vtep_starts_nothing(cluster):
    """A node of its own name whose ``vtep.address`` is a running node's
    (node1's) is refused by ``dataplane check`` and by ``dataplane run``,
    naming node1, before it holds a name or touches anything: no claim of
    it in the store, node1's pods and traffic stay. (Accepted, the other
    nodes sent node1's pods' traffic to whichever of the two answered.)"""
    cl = cluster
    a, b = cl.pods["a"], cl.pods["b"]
    deadline = time.monotonic() + 30  # node1's claim is held (restarted by the test before)
    while time.monotonic() < deadline:
        rows = {n["node"]: n for n in cl.nodes[2].api("GET", "/v1/nodes")}
        if rows["node1"]["running"]:
            break
        time.sleep(0.2)
    assert rows["node1"]["running"], rows
    pods_before = sorted(p["name"] for p in cl.store("pods"))
    ns = cl.netns(f"{cl.tag}n8")
    # the lowest MAC on the underlay's bridge, as ul9 (Cluster.build: br0's is set)
    sh("ip", "-n", cl.ul, "link", "add", "ul8", "address", "02:00:00:00:00:08", "type", "veth",
       "peer", "name", "uplink0", "netns", ns)  # fmt: skip
    sh("ip", "-n", cl.ul, "link", "set", "ul8", "master", "br0", "up")
    sh("ip", "-n", ns, "addr", "add", "10.99.1.8/24", "dev", "uplink0")
    sh("ip", "-n", ns, "link", "set", "uplink0", "up")
    links_before = nsx(ns, "ip", "-o", "link", "show", check=True).stdout
    d = cl.tmp / "node8"
    d.mkdir()
    cfg = NODE_CONFIG.format(n=8, etcd=cl.etcd.url, prefix=cl.prefix, dir=d)
    (d / "node.yaml").write_text(cfg.replace("10.99.0.8/24", "10.99.0.1/24"))
    want = "vtep.address: 10.99.0.1 is the VTEP of node node1, running (host"
    for cmd in ("check", "run"):
        r = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "dataplane.cli", cmd, "-c",
             str(d / "node.yaml")],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        out = r.stdout + r.stderr
        assert r.returncode != 0, (cmd, out[-3000:])
        assert want in out and "each node needs its own" in out, (cmd, out[-3000:])
        assert "replay" not in out, out[-3000:]
    # nothing changed: no claim of node8, no pod, no interface made
    assert {c["node"] for c in cl.store("node_claims")} == {"node1", "node2", "node3"}
    assert sorted(p["name"] for p in cl.store("pods")) == pods_before
    assert nsx(ns, "ip", "-o", "link", "show", check=True).stdout == links_before
    for n in (1, 2):
        rows = {r["node"]: r for r in cl.nodes[n].api("GET", "/v1/nodes")}
        assert set(rows) == {"node1", "node2", "node3"}, rows
        assert rows["node1"]["vtep"] == "10.99.0.1" and rows["node1"]["running"], rows
    assert [p["name"] for p in cl.nodes[1].api("GET", "/v1/pods")] == ["a"]
    assert ping(a["ns"], ip_of(b)).returncode == 0
    assert ping(b["ns"], ip_of(a)).returncode == 0


def test_node_list_and_a_dead_node_removed(cluster):
    """``dataplane node list`` shows every node, running or not; a node gone
    for good (killed, never coming back) is refused removal while its claim
    lives, then ``dataplane node remove`` forgets its pods: their records,
    addresses and MACs leave the store, and the other nodes drop its MACs
    and stop flooding to its VTEP."""
    cl = cluster
    n1, n3 = cl.nodes[1], cl.nodes[3]
    z = cl.add_pod(3, "z", IT)
    assert reachable(cl.pods["a"]["ns"], ip_of(z)) is not None
    rc, _, err = cli(n1, "pod", "del", "z")
    assert rc != 0 and "pod z is not attached to this node: node node3 runs it" in err, err
    rc, out, err = cli(n1, "node", "list")
    assert rc == 0, err
    rows = {ln.split()[0]: ln for ln in out.splitlines()}
    assert set(rows) == {"node1", "node2", "node3"}, out
    assert "running" in rows["node3"] and "vtep 10.99.0.3" in rows["node3"], out
    assert "(this node)" in rows["node1"], out
    n3.proc.kill()  # gone for good: no stop, no clean-up of its own
    n3.proc.wait()
    n3.proc = None
    rc, _, err = cli(n1, "node", "remove", "node3")
    assert rc != 0 and "node node3 is running (VTEP 10.99.0.3" in err, err
    rc, _, err = cli(n1, "node", "remove", "node1")
    assert rc != 0 and "node node1 is this service's own node" in err, err
    deadline = time.monotonic() + 30  # its claim lapses (NODE_TTL_S)
    while time.monotonic() < deadline:
        rows = {n["node"]: n for n in n1.api("GET", "/v1/nodes")}
        if not rows["node3"]["running"]:
            break
        time.sleep(0.5)
    on3 = sorted(p["name"] for p in cl.store("pods") if p.get("node") == "node3")
    assert "c" in on3 and "z" in on3, on3
    assert not rows["node3"]["running"] and rows["node3"]["pods"] == len(on3), rows
    rc, out, err = cli(n1, "node", "remove", "node3")
    assert rc == 0, err
    assert f"node node3 removed: {len(on3)} pod(s) and 0 CNI attachment(s) forgotten" in out, out
    assert not [p for p in cl.store("pods") if p.get("node") == "node3"]
    assert not [al for al in cl.store("allocations") if al["pod"] in on3]
    for n in (1, 2):  # the others see its endpoints go
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            fdb = cl.nodes[n].api("GET", "/v1/fdb")
            nets = cl.nodes[n].api("GET", "/v1/networks")
            if "10.99.0.3" not in json.dumps(fdb) + json.dumps(nets):
                break
            time.sleep(0.2)
        assert "10.99.0.3" not in json.dumps(fdb), fdb
        assert "10.99.0.3" not in json.dumps(nets), nets
    rows = {n["node"] for n in n1.api("GET", "/v1/nodes")}
    assert rows == {"node1", "node2"}
    assert "node removed" in n1.log()
    # once more, or a name never seen: said so, nothing changed
    for name in ("node3", "nodee2"):
        rc, _, err = cli(n1, "node", "remove", name)
        assert rc != 0 and f"node {name}: the cluster's store has no pod" in err, err
    for name in on3:
        cl.pods.pop(name, None)
