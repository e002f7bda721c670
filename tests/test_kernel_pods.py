"""Kernel pods end to end through the node service: real TCP and UDP between
network namespaces as pods, on one node and across two, to and from a host
behind the Linux kernel's own VXLAN VTEP whose veths keep their offloads on,
and a jumbo-MTU network. TCP data is checked by SHA-256 at the far end,
segments on the wire with scapy; a frame too big for the underlay must show
as an oversize drop.

    underlay netns: bridge br0 (MTU = underlay_mtu)
      |-- node N netns: uplink0 -- node service N (fallback mode, VTEP 10.99.0.N)
      |                 pods: namespaces attached through node N's control API
      `-- host netns:   eth0 10.99.0.50, vxlan101 (kernel VTEP) + bridge -- vm netns
                                                   (192.168.50.200 on net1)

Each test builds its own fabric (static ``remotes:``, SQLite store per node)
and takes it down again: processes by PID, pods' host veths before the
namespaces, state directories with pytest's tmp_path. No wall-clock limits:
the timeouts below only turn a hang into a failure that says what stopped.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, DPDK EAL)"),
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VNI = 101
SUBNET = "192.168.50."
HOST_VTEP = "10.99.0.50"
VM_IP, VM_MAC = SUBNET + "200", "02:00:00:0a:63:32"
MB = 1 << 20
CONNECT_TIMEOUT = 10.0  # s: SYN retransmits at 1, 3, 7 s fit in
IDLE_TIMEOUT = 15.0  # s without progress = stalled

NODE_CONFIG = """\
node: node{n}
mode: fallback
lcores: [0, 1]
memory_mb: 256
vtep: {{address: 10.99.0.{n}/24, uplink: uplink0, underlay_mtu: {mtu}{vtep}}}
networks:
  - {{name: net1, vni: {vni}, plane: std, subnet: {subnet}0/24, gateway: {subnet}1{net}}}
remotes: [{remotes}]
state_dir: {dir}/state
api_socket: {dir}/api.sock
metrics: {{listen: null}}
{extra}"""

# TCP sink: accepts one connection, reads to EOF, prints what it got as JSON
TCP_SERVER = """
import hashlib, json, socket, sys, time
port, accept_timeout, idle = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
bind = sys.argv[4]
# a slow reader (optional): a receive buffer of rcvbuf bytes, left to fill
# for `pause` seconds after the connection, then read with that pause
# between reads of 16 KiB - what the stack holds meanwhile stays queued
rcvbuf, pause = (int(sys.argv[5]), float(sys.argv[6])) if len(sys.argv) > 6 else (0, 0.0)
s = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if rcvbuf:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
s.bind((bind, port))
s.listen(1)
s.settimeout(accept_timeout)
print("ready", flush=True)
out = {"bytes": 0, "sha256": None, "error": None}
try:
    c, _ = s.accept()
except OSError as e:
    out["error"] = f"no connection accepted in {accept_timeout:.0f} s ({e!r})"
    print(json.dumps(out)); sys.exit(0)
c.settimeout(idle)
h = hashlib.sha256()
try:
    time.sleep(pause * 100)
    while True:
        time.sleep(pause)
        d = c.recv(1 << 14 if pause else 1 << 16)
        if not d:
            break
        h.update(d)
        out["bytes"] += len(d)
except OSError as e:
    out["error"] = f"receive stopped: {e!r} (nothing for {idle:.0f} s)"
out["sha256"] = h.hexdigest()
c.close()
print(json.dumps(out))
"""

# TCP source: connects, sends `size` seeded random bytes, half-closes, waits
# for the sink to close (it has read everything then); JSON on stdout
TCP_CLIENT = """
import hashlib, json, random, socket, sys, time
ip, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
connect_timeout, idle = float(sys.argv[4]), float(sys.argv[5])
data = random.Random(size).randbytes(size)
out = {"sent": 0, "sha256": hashlib.sha256(data).hexdigest(), "error": None}
t0 = time.monotonic()
try:
    s = socket.create_connection((ip, port), timeout=connect_timeout)
except OSError as e:
    out["error"] = f"connection timed out after {time.monotonic() - t0:.1f} s ({e!r})"
    print(json.dumps(out)); sys.exit(0)
s.settimeout(idle)
view = memoryview(data)
try:
    while out["sent"] < size:
        out["sent"] += s.send(view[out["sent"]:out["sent"] + (1 << 16)])
    s.shutdown(socket.SHUT_WR)
    while s.recv(4096):
        pass
except OSError as e:
    out["error"] = f"send stopped: {e!r} (no progress for {idle:.0f} s)"
out["seconds"] = round(time.monotonic() - t0, 2)
print(json.dumps(out))
"""

# UDP sink: counts datagrams of the expected size carrying a sequence number,
# until 3 s without one (10 s before the first)
UDP_SERVER = """
import json, socket, struct, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("0.0.0.0", port))
s.settimeout(10)
print("ready", flush=True)
seqs, bad = set(), 0
try:
    while True:
        d = s.recv(4096)
        if len(d) == size and d[8:] == bytes(range(size - 8)):
            seqs.add(struct.unpack("!Q", d[:8])[0])
        else:
            bad += 1
        s.settimeout(3)
except socket.timeout:
    pass
print(json.dumps({"received": len(seqs), "bad": bad}))
"""

# UDP source: `count` datagrams of `size` bytes, paced at about 10 k/s
UDP_CLIENT = """
import json, socket, struct, sys, time
ip, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tail = bytes(range(size - 8))
sent = 0
for i in range(count):
    sent += s.sendto(struct.pack("!Q", i) + tail, (ip, port)) == size
    if i % 10 == 9:
        time.sleep(0.001)
print(json.dumps({"sent": sent}))
"""


def sh(*cmd, check=True, timeout=60):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {r.stdout}{r.stderr}")
    return r


def nsx(ns, *cmd, check=False, timeout=60):
    return sh("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout)


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
    ipn(ns, "link set lo up")


def ipn(ns, args, check=True):
    """``ip -n NS ARGS`` (ARGS split on blanks)."""
    return sh("ip", "-n", ns, *args.split(), check=check)


def ping(ns, ip, count=3, size=None, interval="0.2", wait="2"):
    extra = ["-M", "do", "-s", str(size)] if size is not None else []
    return nsx(ns, "ping", "-n", "-c", str(count), "-i", interval, "-W", wait, *extra, ip)


def offloads(ns, dev):
    """{feature: on?} of ``dev`` as ethtool -k shows them."""
    out = nsx(ns, "ethtool", "-k", dev, check=True).stdout
    feats = {}
    for line in out.splitlines()[1:]:
        name, _, rest = line.strip().partition(": ")
        feats[name] = rest.startswith("on")
    return feats


class Node:
    """A node service run inside its own namespace, uplink0 on the underlay."""

    def __init__(self, fab, n, remotes, mtu, vtep="", extra="", net=""):
        self.n = n
        self.ns = fab.netns(f"{fab.tag}n{n}")
        self.dir = fab.tmp / f"node{n}"
        self.dir.mkdir()
        self.sock = str(self.dir / "api.sock")
        self.logfile = self.dir / "service.log"
        self.host_links = set()  # host ends of the pods' veths (in self.ns)
        self.proc = None
        rem = ", ".join(f"{{vtep: {r}, networks: [net1]}}" for r in remotes)
        cfg = NODE_CONFIG.format(
            n=n,
            mtu=mtu,
            vni=VNI,
            subnet=SUBNET,
            dir=self.dir,
            remotes=rem,
            vtep=vtep,
            extra=extra,
            net=net,
        )
        self.cfg = self.dir / "node.yaml"
        self.cfg.write_text(cfg)
        # uplink: a veth into the underlay's bridge, no address (the VTEP
        # address is the core's own)
        ipn(
            fab.ul,
            f"link add ul{n} mtu {mtu} type veth peer name uplink0 mtu {mtu} netns {self.ns}",
        )
        ipn(fab.ul, f"link set ul{n} master br0 up")
        ipn(self.ns, "link set uplink0 up")

    def log(self):
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def start(self):
        cmd = f"ip netns exec {self.ns} {sys.executable} -m dataplane.cli run -c {self.cfg}"
        with open(self.logfile, "a") as log:
            self.proc = subprocess.Popen(
                cmd.split(), stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT
            )
        for _ in range(600):
            if self.proc.poll() is not None:
                raise AssertionError(f"node{self.n} exited:\n{self.log()[-3000:]}")
            if os.path.exists(self.sock):
                try:
                    self.api("GET", "/v1/status")
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"node{self.n} did not answer on its API:\n{self.log()[-3000:]}")

    def stop(self):
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def api(self, method, endpoint, body=None):
        from dataplane.api import call

        return call(self.sock, method, endpoint, body)

    def status(self):
        return self.api("GET", "/v1/status")

    def cli(self, *args):
        """``dataplane ARGS`` against this node's socket."""
        return subprocess.run(
            [sys.executable, "-m", "dataplane.cli", *args, "--socket", self.sock],
            capture_output=True,
            text=True,
            check=True,
        )


class Fabric:
    """The underlay, node services, pods and the kernel-VTEP host of one test."""

    def __init__(self, tmp, underlay_mtu=1500):
        self.tmp = tmp
        self.mtu = underlay_mtu
        self.pod_mtu = underlay_mtu - 50
        self.tag = "dpk" + uuid.uuid4().hex[:5]
        self.namespaces = []
        self.nodes = {}
        self.helpers = []
        self.ul = f"{self.tag}ul"

    def build(self):
        """The underlay: a namespace with bridge br0."""
        self.netns(self.ul)
        ipn(self.ul, f"link add br0 mtu {self.mtu} type bridge")
        ipn(self.ul, "link set br0 up")

    def netns(self, ns):
        self.namespaces.append(ns)
        quiet_netns(ns)
        return ns

    def drops_said(self):
        """Every running node's drop counters, for a failure's message."""
        out = []
        for n, node in sorted(self.nodes.items()):
            try:
                out.append(f"node{n} drops {node.status()['drops']}")
            except Exception as e:  # the node itself may be what failed
                out.append(f"node{n} status failed: {e!r}")
        return "; ".join(out) or "no node"

    def node(self, n, remotes, vtep="", extra="", net=""):
        """Node service n; ``vtep``: more keys of its vtep section (", k: v");
        ``extra``: more top-level lines of its config; ``net``: more keys of
        its network net1 (", k: v")."""
        node = Node(self, n, remotes, self.mtu, vtep, extra, net)
        self.nodes[n] = node
        node.start()
        return node

    def kernel_host(self, node_vteps, link_up=True):
        """The Linux kernel's own VTEP (VNI 101, flooding to ``node_vteps``)
        with a bridge and a "vm" namespace behind it; every veth keeps the
        offloads the kernel gives it (TX checksumming, TSO, GSO on). Returns
        the vm's namespace. ``link_up=False``: its underlay port (ulh, in
        the underlay's namespace) is left down."""
        h, vm = self.netns(f"{self.tag}h"), self.netns(f"{self.tag}vm")
        mtu = self.mtu
        ipn(self.ul, f"link add ulh mtu {mtu} type veth peer name eth0 mtu {mtu} netns {h}")
        ipn(self.ul, "link set ulh master br0" + (" up" if link_up else ""))
        ipn(h, f"addr add {HOST_VTEP}/24 dev eth0")
        ipn(h, "link set eth0 up")
        ipn(h, f"link add vxlan101 type vxlan id {VNI} local {HOST_VTEP} dstport 4789 dev eth0")
        for vtep in node_vteps:
            nsx(
                h,
                *f"bridge fdb append 00:00:00:00:00:00 dev vxlan101 dst {vtep}".split(),
                check=True,
            )
        ipn(h, "link add br0 type bridge")
        ipn(h, "link set vxlan101 master br0 up")
        ipn(h, "link set br0 up")
        self.behind_kernel_vtep(vm, "vm0", VM_IP, VM_MAC)
        # A frame that crossed a wire is never a GSO super-frame, but a kernel
        # VTEP on a veth of the same machine hands the core's uplink whole
        # UDP-tunnel GSO frames (its veth's tx-udp_tnl-segmentation is on):
        # the core cuts them before decapsulation (docs/kernel-ports.md).
        for ns, dev in ((vm, "eth0"), (h, "vm0"), (h, "eth0")):
            f = offloads(ns, dev)
            keys = ("tx-checksumming", "tcp-segmentation-offload")
            if dev == "eth0" and ns == h:
                keys += ("tx-udp_tnl-segmentation",)
            on = [k for k in keys if f.get(k)]
            assert len(on) == len(keys), f"{dev} in {ns}: expected {keys} on, got {f}"
        return vm

    def behind_kernel_vtep(self, ns, port, ip, mac=None):
        """Namespace ``ns`` on the kernel VTEP host's bridge (kernel_host),
        through its veth ``port`` there: eth0 with ``ip``/24 (and ``mac``),
        the pods' MTU."""
        h, mtu = f"{self.tag}h", self.pod_mtu
        ipn(h, f"link add {port} mtu {mtu} type veth peer name eth0 mtu {mtu} netns {ns}")
        ipn(h, f"link set {port} master br0 up")
        ipn(ns, "link set eth0" + (f" address {mac}" if mac else "") + " up")
        ipn(ns, f"addr add {ip}/24 dev eth0")

    def pod(self, n, name, ip, **more):
        """Pod ``name`` on node n at ``ip`` (``more``: more keys of its spec)."""
        node = self.nodes[n]
        ns = self.netns(f"{self.tag}p{name}")
        spec = {"pod_type": "it", "network_plane": ["std"], "networks": {"std": "net1"}}
        spec["ips"] = {"std": ip}
        spec.update(more)
        body = {"name": f"{self.tag}{name}", "netns": f"/var/run/netns/{ns}"}
        info = node.api("POST", "/v1/pods", {**body, "spec": json.dumps(spec)})
        info.update(ns=ns, node=n, ip=ip)
        node.host_links |= {p["host_ifname"] for p in info["planes"] if p.get("host_ifname")}
        return info

    def spawn(self, ns, script, *args):
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", script, *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.helpers.append(p)
        return p

    def capture(self, ns, dev, path, bpf):
        """tcpdump on ``dev`` in ``ns`` into ``path``, capturing once it returns."""
        p = subprocess.Popen(
            # (immediate: a frame is written as it comes, not when its
            # block of the capture ring is full or times out - a capture
            # stopped soon after a few frames would otherwise lose them)
            [
                "ip",
                "netns",
                "exec",
                ns,
                "tcpdump",
                "-n",
                "-U",
                "--immediate-mode",
                "-i",
                dev,
                "-w",
                str(path),
                bpf,
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.helpers.append(p)
        line = p.stderr.readline()
        assert "listening on" in line, f"tcpdump in {ns}: {line}{p.stderr.read()}"
        return p

    def cleanup(self):
        """Everything this fabric made, each step tried even if one before failed."""
        steps = [lambda p=p: _end(p) for p in self.helpers]
        for node in self.nodes.values():
            steps.append(node.stop)
            # the service leaves pod interfaces in place: delete them first,
            # synchronously, before the namespaces (the kernel would destroy
            # them in the background otherwise)
            for link in sorted(node.host_links):
                steps.append(lambda n=node, x=link: ipn(n.ns, f"link del {x}", check=False))
        for ns in reversed(self.namespaces):
            steps.append(lambda ns=ns: sh("ip", "netns", "del", ns, check=False))
        failed = []
        for step in steps:
            try:
                step()
            except Exception as e:  # noqa: BLE001 - reported after the rest ran
                failed.append(repr(e))
        assert not failed, f"cleanup: {failed}"


def _end(p):
    if p.poll() is None:
        p.kill()
    p.wait()


@pytest.fixture
def fabric(tmp_path):
    made = []

    def make(underlay_mtu=1500):
        f = Fabric(tmp_path / f"fabric{len(made)}", underlay_mtu)
        f.tmp.mkdir()
        made.append(f)
        f.build()
        return f

    make.after = []  # callables run once every fabric is cleaned up (sockdir)
    try:
        yield make
    finally:
        try:
            for f in made:
                f.cleanup()
        finally:
            for fn in make.after:
                fn()


def reach(ns, ip, what, deadline=10):
    """One echo reply from ``ip`` within ``deadline`` s (ARP, FDB settle)."""
    r = nsx(ns, "ping", "-n", "-c", "1", "-i", "0.2", "-w", str(deadline), ip, timeout=60)
    assert r.returncode == 0, f"{what}: no ping reply from {ip} in {deadline} s:\n{r.stdout}"


# ------------------------------------------------------------------ transfers
def tcp_transfer(
    fab, label, server_ns, server_ip, client_ns, size=4 * MB, port=5201, slow_reader=None
):
    """``size`` bytes over one TCP connection from client_ns to
    server_ip:port (IPv6 too: ``fe80::1%eth0``), verified by SHA-256 at
    the far end. ``slow_reader``: (receive buffer bytes, pause between
    reads in seconds) for a server that lets its receive queue fill."""
    bind = "::" if ":" in server_ip else "0.0.0.0"
    srv = fab.spawn(
        server_ns, TCP_SERVER, port, CONNECT_TIMEOUT + 20, IDLE_TIMEOUT, bind, *(slow_reader or ())
    )
    assert srv.stdout.readline().strip() == "ready", srv.stderr.read()
    cli = fab.spawn(client_ns, TCP_CLIENT, server_ip, port, size, CONNECT_TIMEOUT, IDLE_TIMEOUT)
    c_out, c_err = cli.communicate()  # ends by itself: connect and idle timeouts
    assert c_out, f"TCP {label}: the client crashed:\n{c_err}"
    c = json.loads(c_out)
    if c["error"] and c["error"].startswith("connection timed out"):
        srv.kill()  # still waiting for a connection that never completed
        srv.communicate()
        raise AssertionError(f"TCP {label}: {c['error']}; 0 bytes; {fab.drops_said()}")
    s_out, s_err = srv.communicate()  # ends at EOF or after its idle timeout
    assert s_out, f"TCP {label}: the server crashed:\n{s_err}"
    s = json.loads(s_out)
    got = s["bytes"]
    assert not c["error"] and not s["error"] and got == size, (
        f"TCP {label}: stalled after {got} of {size} bytes received "
        f"(client: {c['error']}; server: {s['error']}); {fab.drops_said()}"
    )
    assert s["sha256"] == c["sha256"], (
        f"TCP {label}: {got} bytes arrived but differ from what was sent "
        f"(sha256 {s['sha256']} != {c['sha256']})"
    )
    print(f"TCP {label}: {size} bytes in {c['seconds']} s")


def udp_count(fab, label, server_ns, server_ip, client_ns, count=2000, size=64, port=5301):
    srv = fab.spawn(server_ns, UDP_SERVER, port, size)
    assert srv.stdout.readline().strip() == "ready", srv.stderr.read()
    cli = fab.spawn(client_ns, UDP_CLIENT, server_ip, port, count, size)
    c_out, c_err = cli.communicate(timeout=120)
    s_out, s_err = srv.communicate(timeout=120)
    assert c_out and s_out, f"UDP {label}: a side crashed:\n{c_err}\n{s_err}"
    sent, got = json.loads(c_out)["sent"], json.loads(s_out)
    assert sent == count, f"UDP {label}: only {sent} of {count} datagrams could be sent"
    # the first datagrams may wait for ARP (resolved before by a ping): 2 % slack
    assert got["received"] >= count * 0.98 and got["bad"] == 0, (
        f"UDP {label}: {got['received']} of {count} {size}-byte datagrams arrived "
        f"({got['bad']} malformed)"
    )
    print(f"UDP {label}: {got['received']} of {count} {size}-byte datagrams")


# ---------------------------------------------------------------------- tests
def test_tcp_between_pods_on_one_node(fabric):
    fab = fabric()
    fab.node(1, [])
    a, b = fab.pod(1, "a", SUBNET + "11"), fab.pod(1, "b", SUBNET + "12")
    reach(a["ns"], b["ip"], "pod a -> pod b")
    tcp_transfer(fab, "pod a -> pod b (one node)", b["ns"], b["ip"], a["ns"])
    tcp_transfer(fab, "pod b -> pod a (one node)", a["ns"], a["ip"], b["ns"])


def test_tcp_between_pods_on_two_nodes(fabric):
    fab = fabric()
    fab.node(1, ["10.99.0.2"])
    fab.node(2, ["10.99.0.1"])
    a, c = fab.pod(1, "a", SUBNET + "11"), fab.pod(2, "c", SUBNET + "21")
    reach(a["ns"], c["ip"], "pod a (node1) -> pod c (node2)")
    tcp_transfer(fab, "pod a (node1) -> pod c (node2)", c["ns"], c["ip"], a["ns"])
    tcp_transfer(fab, "pod c (node2) -> pod a (node1)", a["ns"], a["ip"], c["ns"])
    # it went over the underlay, encapsulated (a count of frames, not of
    # bytes: a node that carries super-frames counts fewer)
    for n in (1, 2):
        net1 = fab.nodes[n].status()["networks"][0]
        assert net1["encap_packets"] > 0 and net1["decap_packets"] > 0, net1


@pytest.mark.parametrize("learning", [False, True])
def test_tcp_both_ways_with_a_host_behind_a_kernel_vtep(fabric, learning):
    """The kernel peer leaves inner checksums to offload (its veths keep TX
    checksumming, TSO and GSO on): every segment must still arrive valid.
    Pod to host: without learning the host's MAC is unknown and flooded by
    the core (storm control off, as ``dataplane check`` advises for such a
    network: at 1000 frames/s a bulk transfer would be the storm); with it,
    a remote FDB entry the express lane encapsulates to. The host's data to
    the pod: through the core's workers when the host's MAC is unknown,
    decapsulated by the lane (its super-frames whole) once it is learned."""
    fab = fabric()
    node = fab.node(
        1,
        [HOST_VTEP],
        vtep=", learning: true" if learning else "",
        net="" if learning else ", storm_pps: 0",
    )
    vm = fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", SUBNET + "11")
    reach(a["ns"], VM_IP, "pod a -> kernel-VTEP host")
    errors = []
    for label, srv_ns, srv_ip, cli_ns in (
        ("pod -> vtep host", vm, VM_IP, a["ns"]),
        ("vtep host -> pod", a["ns"], a["ip"], vm),
    ):
        try:
            tcp_transfer(fab, label, srv_ns, srv_ip, cli_ns)
        except AssertionError as e:  # both directions reported, not just the first
            errors.append(str(e).splitlines()[0])
    assert not errors, "; ".join(errors)
    up = _port_row(node, lambda p: p["role"] == "uplink")
    if learning:
        assert up["express"]["rx_bytes"] > 4 * MB, up
    else:
        assert up["express"]["rx_packets"] == 0 and up["rx_bytes"] > 4 * MB, up


def iperf3_tcp(fab, server_ns, server_ip, client_ns, seconds, reverse=False):
    """One iperf3 TCP run of ``seconds`` from client_ns to server_ip (``reverse``:
    the server sends); its bytes received per interval of 1 s, and its error."""
    srv = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", "5211"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    fab.helpers.append(srv)
    for _ in range(400):  # listening (its client does not try again)
        if srv.poll() is not None or nsx(server_ns, "ss", "-Hltn", "sport = :5211").stdout.strip():
            break
        time.sleep(0.05)
    try:
        r = nsx(client_ns, "iperf3", "-c", server_ip, "-p", "5211", "-t", str(seconds), "-J",
                "--connect-timeout", "3000", *(["-R"] if reverse else []), timeout=seconds + 30)  # fmt: skip
    except subprocess.TimeoutExpired:
        return [], f"iperf3 had not ended {seconds + 30} s after it started: the stream stopped"
    finally:
        _end(srv)
    try:
        j = json.loads(r.stdout)
    except ValueError:
        return [], f"iperf3 printed no JSON: {(r.stdout + r.stderr)[-300:]}"
    return [i["sum"]["bytes"] for i in j.get("intervals", [])], j.get("error")


def test_af_xdp_pods_in_fallback_mode_carry_sustained_tcp(fabric):
    """DPDK's net_af_xdp hands the kernel the core's mbuf pool as one
    AF_XDP UMEM, its objects assumed back to back; the kernel takes no
    frame in an object past that window (a transmit descriptor skipped, a
    fill-ring entry dropped, the mbuf never returned). The pool is laid out
    so that none is (csrc/dp_eal.c, pool_create): in fallback mode (4 KiB
    pages) DPDK otherwise puts one object per page and 42 % of the pool
    falls outside, and TCP from the kernel-VTEP host to the pod stopped
    for good within seconds. Sustained TCP both ways through an af_xdp pod
    port cycles through the pool: no second without data, and every mbuf
    comes back."""
    fab = fabric()
    node = fab.node(1, [HOST_VTEP], vtep=", learning: true", extra="kernel_driver: af_xdp")
    vm = fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", SUBNET + "11")
    reach(a["ns"], VM_IP, "pod a -> kernel-VTEP host")
    idle = node.status()["mbufs_in_use"]
    for label, reverse in (("pod -> vtep host", False), ("vtep host -> pod", True)):
        per_s, err = iperf3_tcp(fab, vm, VM_IP, a["ns"], 3, reverse=reverse)
        # (iperf3 may add a last interval of a few ms)
        assert not err and len(per_s) >= 3 and min(per_s[:3]) > 0, (
            f"TCP {label}: bytes per second {per_s}, {err}; {fab.drops_said()}"
        )
    # the driver keeps a transmitted mbuf until a later transmit reaps its
    # completion ring, and refills its fill ring in batches: a ping after
    # the traffic, as before the idle count, and a batch's slack (the fault
    # this guards against kept 42 % of the pool)
    reach(a["ns"], VM_IP, "pod a -> kernel-VTEP host, after the traffic")
    slack = 64
    deadline = time.monotonic() + 5  # frames in flight complete
    while (held := node.status()["mbufs_in_use"]) > idle + slack and time.monotonic() < deadline:
        time.sleep(0.1)
    assert held <= idle + slack, f"{held - idle} mbufs never came back from the af_xdp port"


def _port_row(node, name_part):
    [row] = [p for p in node.status()["ports"] if name_part(p)]
    return row


def test_express_lane_encapsulates_to_a_kernel_vtep_host(fabric):
    """Pod to a host behind a kernel VTEP: the lane encapsulates TCP in the
    kernel, out of the uplink, and every frame is counted once - the pod
    port's rx, the network's encap, the uplink's tx. (The node learns the
    host's MAC from the underlay: a remote FDB entry; an unknown MAC is
    flooded, through the core.)"""
    fab = fabric()
    # the std plane marks its frames' outer DSCP: AF11 (10), as the core would
    node = fab.node(1, [HOST_VTEP], vtep=", learning: true", extra="planes: {std: {dscp: 10}}\n")
    vm = fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", SUBNET + "11")
    reach(a["ns"], VM_IP, "pod a -> kernel-VTEP host")
    before = tcp_snmp(vm)
    tcp_transfer(fab, "pod -> vtep host (lane)", vm, VM_IP, a["ns"], size=8 * MB)
    after = tcp_snmp(vm)
    assert after["InCsumErrors"] == before["InCsumErrors"], (before, after)
    st = node.status()
    assert st["express_lane"] is True
    pod = _port_row(node, lambda p: p["role"] == "pod")
    up = _port_row(node, lambda p: p["role"] == "uplink")
    ex, upx = pod["express"], up["express"]
    assert ex and ex["rx_packets"] > 0, pod
    assert upx and upx["tx_packets"] > 0, up
    # what the lane took from the pod went out of the uplink, encapsulated
    net1 = st["networks"][0]
    assert net1["encap_packets"] >= upx["tx_packets"], (net1, upx)
    assert pod["rx_packets"] >= ex["rx_packets"] and up["tx_packets"] >= upx["tx_packets"]
    assert "express_encap" not in st["drops"], st["drops"]
    # on the wire: the headers the core would build (outer IPv4 checksum,
    # UDP source port from the flow hash in 49152-65535, the network's VNI,
    # DF, TTL 64), for the TCP frames the lane took
    from scapy.all import rdpcap
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    def taken():
        return _port_row(node, lambda p: p["role"] == "pod")["express"]["rx_packets"]

    # datagrams (here: echo requests) keep the core's path
    n0 = taken()
    r = ping(a["ns"], VM_IP, count=5, interval="0.05")
    assert r.returncode == 0, r.stdout
    assert taken() == n0
    pcap = fab.tmp / "lane.pcap"
    cap = fab.capture(fab.ul, "ul1", pcap, "udp dst port 4789 and src host 10.99.0.1")
    tcp_transfer(fab, "pod -> vtep host (lane, captured)", vm, VM_IP, a["ns"], size=64 * 1024)
    # tcpdump's ring hands it frames when a block fills or its 1 s timer
    # fires: it must see that happen before it is stopped
    time.sleep(1.5)
    cap.send_signal(signal.SIGINT)
    cap.wait(10)
    assert taken() > n0
    frames = [f for f in rdpcap(str(pcap)) if f.haslayer(VXLAN)]
    assert len(frames) >= 3, [f.summary() for f in frames]
    for f in frames:
        ip, udp = f[IP], f[UDP]
        sent = ip.chksum
        del ip.chksum
        assert IP(bytes(ip))[IP].chksum == sent, f.summary()
        assert ip.flags == "DF" and ip.ttl == 64 and ip.dst == HOST_VTEP and ip.tos == 10 << 2
        assert 49152 <= udp.sport <= 65535 and udp.chksum == 0
        assert udp.len == len(udp) and ip.len == len(ip)
        assert f[VXLAN].vni == VNI and f[VXLAN].flags == 0x08
        assert f[VXLAN][Ether].src == a["planes"][0]["mac"].lower()


def test_with_the_uplink_down_the_lane_leaves_tcp_to_the_core_which_counts_it(fabric):
    """The uplink set down: TCP from a pod to a host behind a kernel VTEP,
    which the lane encapsulates while the uplink carries frames, takes the
    core's path and is counted dropped (kport_tx_down) - the lane would
    count it sent and the kernel drop it unseen; set up again, the lane
    takes it again."""
    fab = fabric()
    node = fab.node(1, [HOST_VTEP], vtep=", learning: true")
    fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", SUBNET + "11")
    reach(a["ns"], VM_IP, "pod a -> kernel-VTEP host")  # the node learns the vm's MAC
    ifname, mac = a["planes"][0]["ifname"], a["planes"][0]["mac"]
    code = (
        "import socket,sys\n"
        "from scapy.layers.inet import IP, TCP\n"
        "from scapy.layers.l2 import Ether\n"
        f"f=bytes(Ether(src={mac!r}, dst={VM_MAC!r})/IP(src={SUBNET + '11'!r}, dst={VM_IP!r})"
        "/TCP(sport=40000, dport=9, flags='A', seq=1)/(b'x'*64))\n"
        "s=socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
        f"s.bind(({ifname!r}, 0))\n"
        "for _ in range(20): s.send(f)\n"
    )

    def send20():
        r = nsx(a["ns"], sys.executable, "-c", code)
        assert r.returncode == 0, r.stderr

    def counts():
        st = node.status()
        pod = _port_row(node, lambda p: p["role"] == "pod")
        return pod["express"]["rx_packets"], st["drops"].get("kport_tx_down", 0)

    def settled(x, d):
        """The counts once 20 frames more than (x, d) are counted (as the
        kernel takes them in: its softirq may come later)."""
        for _ in range(200):
            got = counts()
            if got[0] - x + got[1] - d >= 20:
                break
            time.sleep(0.05)
        return got

    x0, d0 = counts()
    send20()
    x1, d1 = settled(x0, d0)
    assert (x1 - x0, d1 - d0) == (20, 0), (x0, d0, x1, d1)
    ipn(node.ns, "link set uplink0 down")
    for _ in range(100):
        if node.status().get("uplink_problem"):
            break
        time.sleep(0.1)
    assert "uplink0 is down" in (node.status().get("uplink_problem") or "")
    send20()
    x2, d2 = settled(x1, d1)
    assert (x2 - x1, d2 - d1) == (0, 20), (x1, d1, x2, d2)
    ipn(node.ns, "link set uplink0 up")
    for _ in range(100):
        if not node.status().get("uplink_problem"):
            break
        time.sleep(0.1)
    send20()
    x3, d3 = settled(x2, d2)
    assert (x3 - x2, d3 - d2) == (20, 0), (x2, d2, x3, d3)


def test_express_lane_decapsulates_from_a_kernel_vtep_host(fabric):
    """Host behind a kernel VTEP to a pod: VXLAN from a MAC the node learned
    behind that very VTEP is decapsulated by the lane in the kernel, into the
    pod, and counted once - the uplink's rx, the network's decap and local,
    the pod port's tx. The learned MAC, whose frames the workers no longer
    see, stays confirmed past its age (2 s here) while it talks; TCP both
    ways arrives whole, with no checksum errors."""
    fab = fabric()
    node = fab.node(1, [HOST_VTEP], vtep=", learning: true, learned_age_s: 2")
    vm = fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", SUBNET + "11")
    reach(a["ns"], VM_IP, "pod a -> kernel-VTEP host")  # the node learns the vm's MAC

    def rows():
        st = node.status()
        up = _port_row(node, lambda p: p["role"] == "uplink")
        pod = _port_row(node, lambda p: p["role"] == "pod")
        return st, up, pod

    st0, up0, pod0 = rows()
    # 5 s of echo requests from the vm, 0.1 s apart: well past the age
    r = ping(vm, a["ip"], count=50, interval="0.1")
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout
    st1, up1, pod1 = rows()
    # every request: had the vm's MAC aged out (the workers saw none of
    # them), the next would have gone through the core to be learned again
    taken = up1["express"]["rx_packets"] - up0["express"]["rx_packets"]
    assert taken == 50, (up0["express"], up1["express"])
    assert pod1["express"]["tx_packets"] - pod0["express"]["tx_packets"] == taken
    # counted once, in the core's own counters as well
    assert up1["rx_packets"] - up0["rx_packets"] >= taken
    assert pod1["tx_packets"] - pod0["tx_packets"] >= taken
    net0, net1 = st0["networks"][0], st1["networks"][0]
    assert net1["decap_packets"] - net0["decap_packets"] >= taken, (net0, net1)
    assert net1["local_packets"] - net0["local_packets"] >= taken, (net0, net1)
    assert "express_decap" not in st1["drops"], st1["drops"]
    # and the FDB says it was heard just now (the lane's last frame)
    [vm_row] = [e for e in node.api("GET", "/v1/fdb") if e["mac"].lower() == VM_MAC.lower()]
    assert vm_row["age_s"] is not None and vm_row["age_s"] < 1.0, vm_row
    # IPv6 echoes to the pod's link-local address too, where the kernel can
    # set a decapsulated frame's protocol (6.3); its neighbour discovery is
    # the core's
    v6_link_local(vm)
    ll = v6_link_local(a["ns"])  # the pod's link-local, made from its MAC
    r = nsx(vm, "ping", "-6", "-n", "-c", "20", "-i", "0.05", "-W", "2", f"{ll}%eth0")
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout
    _, up_v6, _ = rows()
    want = 20 if lane_decapsulates_ipv6() else 0
    assert up_v6["express"]["rx_packets"] - up1["express"]["rx_packets"] == want, up_v6
    # TCP from the host to the pod's own address: its data too, the host's
    # super-frames (its VTEP's TSO) whole, none through the workers
    before = tcp_snmp(a["ns"])
    st1, up1, pod1 = rows()
    tcp_transfer(fab, "vtep host -> pod (lane)", a["ns"], a["ip"], vm, size=8 * MB)
    after = tcp_snmp(a["ns"])
    assert after["InCsumErrors"] == before["InCsumErrors"], (before, after)
    st2, up2, pod2 = rows()
    lane_pkts = up2["express"]["rx_packets"] - up1["express"]["rx_packets"]
    lane_bytes = up2["express"]["rx_bytes"] - up1["express"]["rx_bytes"]
    core_pkts = (up2["rx_packets"] - up1["rx_packets"]) - lane_pkts
    assert lane_bytes > 8 * MB, (up1["express"], up2["express"])
    # fewer frames than MTU-sized segments: super-frames, decapsulated whole
    assert lane_pkts < 8 * MB // 1400, (lane_pkts, lane_bytes)
    assert pod2["express"]["tx_packets"] - pod1["express"]["tx_packets"] == lane_pkts
    # the workers saw the handshake's first frames at most, not the data
    assert core_pkts < 10, (core_pkts, up1, up2)
    assert "express_decap" not in st2["drops"], st2["drops"]


def test_vxlan_to_a_pod_whose_interface_is_down_is_the_cores_to_count(fabric):
    """A host behind a kernel VTEP pings a pod whose interface was set down
    in its namespace: the lane, which would decapsulate the requests into
    an interface that takes nothing (dropped unseen, counted delivered),
    leaves them to the core once the service has seen it, which counts them
    dropped (kport_kernel_tx); set up again, the lane takes them again."""
    fab = fabric()
    node = fab.node(1, [HOST_VTEP], vtep=", learning: true")
    vm = fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", SUBNET + "11")
    reach(a["ns"], VM_IP, "pod a -> kernel-VTEP host")  # both learn the other's MAC
    assert ping(vm, a["ip"], count=3, interval="0.1").returncode == 0

    def counts():
        st = node.status()
        up = _port_row(node, lambda p: p["role"] == "uplink")
        return up["express"]["rx_packets"], st["drops"].get("kport_kernel_tx", 0)

    ipn(a["ns"], f"link set {a['planes'][0]['ifname']} down")
    for _ in range(100):  # until the service has seen it: the lane takes none
        x0 = counts()[0]
        ping(vm, a["ip"], count=1, wait="0.2")
        if counts()[0] == x0:
            break
    else:
        raise AssertionError("the lane kept decapsulating into a's interface, which is down")
    x1, d1 = counts()
    r = ping(vm, a["ip"], count=20, interval="0.01", wait="0.5")
    assert r.returncode != 0  # nothing reaches a
    for _ in range(100):
        x2, d2 = counts()
        if d2 - d1 >= 20:
            break
        time.sleep(0.05)
    assert (x2 - x1, d2 - d1 >= 20) == (0, True), (x1, d1, x2, d2)
    ipn(a["ns"], f"link set {a['planes'][0]['ifname']} up")
    for _ in range(100):
        x3 = counts()[0]
        if ping(vm, a["ip"], count=1, wait="0.5").returncode == 0 and counts()[0] > x3:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the lane did not decapsulate to a again once it was up")


def lane_decapsulates_ipv6() -> bool:
    """Whether this kernel lets the lane give a decapsulated frame the IPv6
    protocol (Linux 6.3), so that it takes IPv6 from the underlay."""
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 3)


def v6_link_local(ns):
    """IPv6 switched on for eth0 in ``ns`` (the fabric's namespaces keep
    it off): its link-local address, once the kernel has made it."""
    nsx(ns, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0", check=True)
    nsx(ns, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0", check=True)
    for _ in range(100):
        addrs = json.loads(nsx(ns, "ip", "-6", "-j", "addr", "show", "dev", "eth0").stdout)
        ll = [x["local"] for x in addrs[0]["addr_info"] if x["scope"] == "link"]
        if ll:
            return ll[0]
        time.sleep(0.05)
    raise AssertionError(f"{ns}: no IPv6 link-local address on eth0: {addrs}")


# a pod namespace's receiver of marked frames: prints [marker, frame
# length] of each it saw
_MARK_RECEIVER = """
import json, select, socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0)); print("ready", flush=True)
seen, end = [], time.time() + float(sys.argv[2])
while time.time() < end:
    if select.select([s], [], [], 0.05)[0]:
        d, addr = s.recvfrom(65536)
        if addr[2] != socket.PACKET_OUTGOING and b"mark-" in d:
            i = d.index(b"mark-")
            seen.append([d[i:i + 12].decode(errors="replace"), len(d)])
print(json.dumps(seen), flush=True)
"""


def marked_at_pod(fab, pod, frames):
    """``frames`` sent straight into the node's uplink from the underlay
    (the underlay's bridge would check an outer header itself and drop a
    bad one before it gets there): [marker, frame length] of each marked
    frame pod ``pod`` received within 3 s."""
    rcv = subprocess.Popen(
        ["ip", "netns", "exec", pod["ns"], sys.executable, "-c", _MARK_RECEIVER, "eth0", "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    fab.helpers.append(rcv)
    assert rcv.stdout.readline().strip() == "ready"
    sender = "import socket,sys\ns=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n"
    sender += "s.bind(('ul1',0))\nfor h in sys.argv[1:]: s.send(bytes.fromhex(h))\n"
    nsx(fab.ul, sys.executable, "-c", sender, *(f.hex() for f in frames), check=True)
    return json.loads(rcv.communicate(timeout=30)[0].strip().splitlines()[-1])


def test_express_lane_leaves_to_the_core_what_it_must_check(fabric):
    """VXLAN from the underlay that the core would refuse, or look at
    beyond the lane's checks, is not decapsulated by the lane: a bad outer
    checksum (the core drops it, bad_ip), VXLAN flags other than the I bit
    alone, an inner source the FDB has behind another VTEP, TCP data to an
    address that is not the pod's own (the pod might route it on: the core
    delivers those); the plain frame and TCP data to the pod's own address
    take the lane."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    fab = fabric()
    node = fab.node(1, [HOST_VTEP], vtep=", learning: true")
    fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", SUBNET + "11")
    reach(a["ns"], VM_IP, "pod a -> kernel-VTEP host")  # the vm's MAC, learned at the host
    link = json.loads(nsx(node.ns, "ip", "-j", "link", "show", "uplink0", check=True).stdout)
    vtep_mac = link[0]["address"]
    pod_mac, pod_ip = a["planes"][0]["mac"], a["ip"].split("/")[0]

    def vx(
        mark, src_vtep=HOST_VTEP, flags=0x08, inner_src=VM_MAC, l4=None, bad_csum=False, dst_ip=None
    ):
        ip = IP(src=src_vtep, dst="10.99.0.1", flags="DF")
        if bad_csum:
            ip.chksum = 0x1234
        inner = Ether(dst=pod_mac, src=inner_src) / IP(src=VM_IP, dst=dst_ip or pod_ip)
        inner /= l4 if l4 is not None else UDP(sport=5555, dport=9)
        f = Ether(dst=vtep_mac) / ip / UDP(sport=49999, dport=4789, chksum=0)
        return bytes(f / VXLAN(vni=VNI, flags=flags) / inner / mark.encode())

    frames = {
        "mark-plain00": vx("mark-plain00"),
        "mark-badcsum": vx("mark-badcsum", bad_csum=True),
        "mark-flags00": vx("mark-flags00", flags=0x0C),
        "mark-tcpdata": vx("mark-tcpdata", l4=TCP(sport=5555, dport=9, flags="PA")),
        # the vm's MAC from a VTEP other than the one the FDB has it behind:
        # the core's to judge (it may learn a move); sent last
        "mark-othervt": vx("mark-othervt", src_vtep="10.99.0.77"),
    }

    def up_row():
        return _port_row(node, lambda p: p["role"] == "uplink")

    before, st0 = up_row(), node.status()
    seen = [m for m, _ in marked_at_pod(fab, a, frames.values())]
    after, st1 = up_row(), node.status()
    # the lane took the plain frame and the TCP data to the pod itself
    assert after["express"]["rx_packets"] - before["express"]["rx_packets"] == 2, (before, after)
    assert sorted(seen) == ["mark-flags00", "mark-othervt", "mark-plain00", "mark-tcpdata"], seen
    assert st1["drops"].get("bad_ip", 0) - st0["drops"].get("bad_ip", 0) == 1, st1["drops"]
    # TCP data to an address that is not the pod's own: the core's
    other = vx("mark-tcpothr", l4=TCP(sport=5555, dport=9, flags="PA"), dst_ip=SUBNET + "99")
    seen = [m for m, _ in marked_at_pod(fab, a, [other])]
    last = up_row()
    assert seen == ["mark-tcpothr"], seen
    assert last["express"]["rx_packets"] == after["express"]["rx_packets"], (after, last)


def test_a_pod_that_forwards_what_the_lane_decapsulated_reaches_a_kernel_vtep_host(fabric):
    """A router or NAT pod: TCP from a host behind a kernel VTEP comes into
    the pod through the lane's decapsulation, and the pod forwards it to
    another host behind that VTEP. The kernel VTEP left those skbs marked
    as a tunnel's (their inner checksum and TSO were left to offload), a
    mark the lane cannot clear, and the kernel refuses to encapsulate
    such an skb again: the lane hands each back to the core instead of
    dropping it (every connection died at its SYN before, counted as
    ``express_encap``). Routed (the SYN and ACKs through the lane, the
    data to an address not the pod's through the core) and NATed (the
    data to the pod's own address: super-frames through the lane), 4 MB
    each way arrive whole (the network lets its pods route: no address
    checks)."""
    fab = fabric()
    node = fab.node(1, [HOST_VTEP], vtep=", learning: true", net=", anti_spoofing: false")
    vm = fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", SUBNET + "11")
    # a second host behind the kernel VTEP, with an address only the pod routes to
    far, far_ip, far_routed = fab.netns(f"{fab.tag}far"), SUBNET + "201", "10.77.0.2"
    fab.behind_kernel_vtep(far, "far0", far_ip)
    ipn(far, f"addr add {far_routed}/32 dev eth0")
    ipn(vm, f"route add {far_routed}/32 via {a['ip']}")
    ipn(a["ns"], f"route add {far_routed}/32 via {far_ip}")
    nsx(a["ns"], "sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
    nsx(a["ns"], "sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0", check=True)
    nsx(a["ns"], "sysctl", "-qw", "net.ipv4.conf.eth0.send_redirects=0", check=True)
    # the pod's own address, port 5202: to the far host, as from the pod
    for rule in (
        f"PREROUTING -p tcp --dport 5202 -j DNAT --to-destination {far_ip}",
        f"POSTROUTING -p tcp -d {far_ip} --dport 5202 -j MASQUERADE",
    ):
        nsx(a["ns"], "iptables", "-t", "nat", "-A", *rule.split(), check=True)
    reach(a["ns"], VM_IP, "pod a -> vm")
    reach(a["ns"], far_ip, "pod a -> far host")
    reach(vm, far_routed, "vm -> far host, routed by pod a")

    def lane_rx():
        return _port_row(node, lambda p: p["role"] == "uplink")["express"]["rx_bytes"]

    def to_core():
        return _port_row(node, lambda p: p["role"] == "pod")["express"]["to_core_packets"]

    back0 = to_core()
    tcp_transfer(fab, "vm -> far host, routed by pod a", far, far_routed, vm, size=4 * MB)
    # the ACKs the pod routed back to the vm (they came in through the lane)
    back1 = to_core()
    assert back1 > back0
    before = lane_rx()
    tcp_transfer(
        fab, "vm -> pod a, NATed to the far host", far, a["ip"], vm, size=4 * MB, port=5202
    )
    # the data to the pod's own address came in through the lane, and
    # each frame of it the pod forwarded went back to the core
    assert lane_rx() - before > 4 * MB
    assert to_core() - back1 > 4 * MB // 65536
    drops = node.status()["drops"]
    assert "express_encap" not in drops and "express_changed" not in drops, drops


def snmp6(ns):
    """/proc/net/snmp6 of namespace ``ns``."""
    out = nsx(ns, "cat", "/proc/net/snmp6", check=True).stdout
    return {k: int(v) for k, v in (ln.split() for ln in out.splitlines() if ln.strip())}


def test_a_pod_that_routes_ipv6_between_hosts_behind_a_kernel_vtep(fabric):
    """An IPv6 router pod (a CNF's addresses and routes of its own: the
    service gives pods IPv4 only) between two hosts behind the kernel's
    VTEP, each with an address only the pod routes to: TCP both ways
    through the pod, 4 MB each, arrives whole and was the pod's to forward;
    it crossed the node in super-frames both ways (the hosts' TSO into the
    pod, the pod's own tcp6 GSO out of it)."""
    fab = fabric()
    node = fab.node(1, [HOST_VTEP], vtep=", learning: true", net=", anti_spoofing: false")
    vm = fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", SUBNET + "11")
    far = fab.netns(f"{fab.tag}far")
    fab.behind_kernel_vtep(far, "far0", SUBNET + "201")
    for ns, ip in ((vm, "fd00:99::1"), (a["ns"], "fd00:99::11"), (far, "fd00:99::201")):
        v6_link_local(ns)
        ipn(ns, f"-6 addr add {ip}/64 dev eth0 nodad")
    # the hosts take no redirect: their traffic stays the pod's to route
    for ns in (vm, far):
        for conf in ("all", "eth0"):
            nsx(ns, "sysctl", "-qw", f"net.ipv6.conf.{conf}.accept_redirects=0", check=True)
    ipn(vm, "-6 addr add fd00:66::1/128 dev eth0 nodad")
    ipn(far, "-6 addr add fd00:77::2/128 dev eth0 nodad")
    ipn(vm, "-6 route add fd00:77::2/128 via fd00:99::11")
    ipn(far, "-6 route add fd00:66::1/128 via fd00:99::11")
    ipn(a["ns"], "-6 route add fd00:77::2/128 via fd00:99::201")
    ipn(a["ns"], "-6 route add fd00:66::1/128 via fd00:99::1")
    nsx(a["ns"], "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", check=True)
    reach(vm, "fd00:99::11", "vm -> pod a (IPv6)")
    reach(far, "fd00:99::11", "far host -> pod a (IPv6)")
    reach(vm, "fd00:77::2", "vm -> far host, routed by pod a (IPv6)")
    up0 = _port_row(node, lambda p: p["role"] == "uplink")
    pod0 = _port_row(node, lambda p: p["role"] == "pod")
    before = snmp6(a["ns"])["Ip6OutForwDatagrams"]
    tcp_transfer(fab, "vm -> far host, routed by pod a (IPv6)", far, "fd00:77::2", vm)
    tcp_transfer(fab, "far host -> vm, routed by pod a (IPv6)", vm, "fd00:66::1", far)
    forwarded = snmp6(a["ns"])["Ip6OutForwDatagrams"] - before
    up1 = _port_row(node, lambda p: p["role"] == "uplink")
    pod1 = _port_row(node, lambda p: p["role"] == "pod")
    # 8 MB in and out of the node, in super-frames both ways (fewer frames
    # than MTU-sized segments): the hosts' TSO into the pod, and what the
    # pod forwarded (its tcp6 GSO) out to the far host
    for row0, row1 in ((up0, up1), (pod0, pod1)):
        got = row1["rx_bytes"] - row0["rx_bytes"]
        frames = row1["rx_packets"] - row0["rx_packets"]
        assert got > 2 * 4 * MB and frames < 2 * 4 * MB // 1400, (row0, row1)
    # each direction's data went through the pod (super-frames count once)
    assert forwarded > 2 * 4 * MB // 65536, forwarded
    drops = node.status()["drops"]
    assert "express_encap" not in drops and "express_changed" not in drops, drops


# what a pod end keeps of the kernel's segmentation offloads (ethtool -k)
GSO_KEPT = (
    "tx-tcp-segmentation",
    "tx-tcp-ecn-segmentation",
    "tx-tcp-mangleid-segmentation",
    "tx-tcp6-segmentation",
    "tx-udp-segmentation",
)


def gso_not_kept(ns, dev):
    """The segmentation offloads of ``dev`` a pod end should have off, of
    those ethtool can change."""
    out = nsx(ns, "ethtool", "-k", dev, check=True).stdout
    names = [ln.strip().partition(":")[0] for ln in out.splitlines()[1:] if "[fixed]" not in ln]
    return [k for k in names if k.endswith("segmentation") and k not in GSO_KEPT]


def test_a_pod_keeps_its_offloads_but_those_the_core_cannot_carry(fabric):
    """A pod keeps its checksum offloads (SCTP's CRC32c too: the core
    finishes it when it reads the frame, tests/test_kernel_ports.py), TSO,
    GSO and UDP segmentation, but no other segmentation offload, whose
    super-frames the core could not carry: SCTP's (the kernel never hands
    one to a packet socket: a virtio-net header has no type for it), TCP
    in the pod's own tunnels (GRE, IPIP, UDP tunnels with layouts other
    than VXLAN's: dropped as kport_gso), any other kind - and the express lane, which could
    carry them, is not every frame's path (a capture turns it off). The
    pod's kernel cuts those before its veth. A pod whose offloads are on
    again (made by an older service) gets them off when the service
    restarts. TCP through a VXLAN device of the pod's own still flows."""
    fab = fabric()
    node = fab.node(1, [HOST_VTEP], vtep=", learning: true")
    vm = fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", SUBNET + "11")
    f = offloads(a["ns"], "eth0")
    for k in ("tx-checksumming", "tx-checksum-sctp", "tcp-segmentation-offload"):
        assert f.get(k), f"{k} should stay on: {f}"
    for k in GSO_KEPT + ("generic-segmentation-offload",):
        assert f.get(k), f"{k} should stay on: {f}"
    off = gso_not_kept(a["ns"], "eth0")
    for k in ("tx-sctp-segmentation", "tx-gre-segmentation", "tx-udp_tnl-segmentation"):
        assert k in off, f"{k}: not among {off}"
    assert [k for k in off if f[k]] == [], f
    nsx(a["ns"], "ethtool", "-K", "eth0", *(x for k in off for x in (k, "on")), check=True)
    assert all(offloads(a["ns"], "eth0")[k] for k in off)
    node.stop()
    node.start()
    f = offloads(a["ns"], "eth0")
    assert [k for k in off if f[k]] == [], f
    assert all(f[k] for k in GSO_KEPT), f
    # the pod's own VXLAN tunnel to the host behind the kernel VTEP
    for ns, here, there, inner in ((a["ns"], a["ip"], VM_IP, "1"), (vm, VM_IP, a["ip"], "2")):
        mtu = fab.pod_mtu - 50
        ipn(ns, f"link add t0 mtu {mtu} type vxlan id 7 local {here} remote {there} dstport 4790")
        ipn(ns, f"addr add 10.200.0.{inner}/24 dev t0")
        ipn(ns, "link set t0 up")
    reach(a["ns"], "10.200.0.2", "pod a -> vm through the pod's own VXLAN tunnel")
    tcp_transfer(fab, "pod a -> vm, in the pod's own tunnel", vm, "10.200.0.2", a["ns"])
    assert "kport_gso" not in node.status()["drops"]


def test_express_lane_leaves_a_shaped_uplink_to_the_core(fabric):
    """With a shaper on the uplink (vtep.uplink_rate) every frame to the
    underlay goes through the core's plane queues: TCP to a remote VTEP
    too, not the lane."""
    fab = fabric()
    node = fab.node(1, [HOST_VTEP], vtep=", learning: true, uplink_rate: 5G")
    vm = fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", SUBNET + "11")
    reach(a["ns"], VM_IP, "pod a -> kernel-VTEP host")
    tcp_transfer(fab, "pod -> vtep host (shaped uplink)", vm, VM_IP, a["ns"], size=2 * MB)
    st = node.status()
    assert st["express_lane"] is True
    pod = _port_row(node, lambda p: p["role"] == "pod")
    up = _port_row(node, lambda p: p["role"] == "uplink")
    assert pod["express"]["rx_packets"] == 0, pod
    assert up["express"]["tx_packets"] == 0, up  # the lane sent nothing out of it
    assert st["networks"][0]["encap_packets"] > 0


def test_first_ping_to_a_vtep_waits_for_its_next_hop_instead_of_being_lost(fabric):
    """Frames to a VTEP whose underlay next hop has not answered ARP yet are
    held and sent once it does (as the kernel queues them), not dropped: the
    pod's first ARP request reaches a host that appears while it waits."""
    fab = fabric()
    node = fab.node(1, [HOST_VTEP])
    vm = fab.kernel_host(["10.99.0.1"], link_up=False)
    a = fab.pod(1, "a", SUBNET + "11")
    held0 = node.status()["neigh_held"]
    # one echo request; the pod's ARP request for the vm floods to the host's
    # VTEP, whose next hop (the host itself) cannot answer yet
    p = subprocess.Popen(
        ["ip", "netns", "exec", a["ns"], "ping", "-n", "-c", "1", "-W", "10", VM_IP],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    fab.helpers.append(p)
    for _ in range(500):
        if node.status()["neigh_held"] > held0:
            break
        time.sleep(0.01)
    assert node.status()["neigh_held"] > held0, "nothing held for the unresolved next hop"
    ipn(fab.ul, "link set ulh up")  # the host can answer the node's next ARP request
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, f"no reply to the one echo request:\n{out}"
    st = node.status()
    assert "neigh_unresolved" not in st["drops"], st["drops"]
    assert nsx(vm, "ip", "neigh", "show", SUBNET + "11", check=True).stdout.strip()


def jumbo_fabric(fabric, host):
    """underlay_mtu 9000, one node, pods a and b (and the kernel-VTEP host)."""
    fab = fabric(underlay_mtu=9000)
    fab.node(1, [HOST_VTEP])
    vm = fab.kernel_host(["10.99.0.1"]) if host else None
    a, b = fab.pod(1, "a", SUBNET + "11"), fab.pod(1, "b", SUBNET + "12")
    mtu = nsx(a["ns"], "cat", "/sys/class/net/eth0/mtu", check=True).stdout.strip()
    assert mtu == "8950", f"pod MTU {mtu}, expected 8950 (underlay 9000 - 50)"
    return fab, vm, a, b


def jumbo_checks(fab, ping_ns, ping_ip, transfers):
    """A jumbo ping and TCP transfers; every failure reported, not just the first."""
    errors = []
    r = ping(ping_ns, ping_ip, count=3, size=8900)
    if r.returncode != 0:
        stats = [x for x in r.stdout.splitlines() if "transmitted" in x]
        errors.append(f"ping -M do -s 8900 to {ping_ip}: no reply ({' '.join(stats)})")
    for label, srv_ns, srv_ip, cli_ns in transfers:
        try:
            tcp_transfer(fab, label, srv_ns, srv_ip, cli_ns)
        except AssertionError as e:
            errors.append(str(e).splitlines()[0])
    assert not errors, "; ".join(errors)


def test_jumbo_mtu_between_pods(fabric):
    """Pod MTU 8950: full-size frames between two pods on the node."""
    fab, _, a, b = jumbo_fabric(fabric, host=False)
    reach(a["ns"], b["ip"], "pod a -> pod b")
    jumbo_checks(
        fab,
        a["ns"],
        b["ip"],
        [
            ("jumbo pod a -> pod b", b["ns"], b["ip"], a["ns"]),
            ("jumbo pod b -> pod a", a["ns"], a["ip"], b["ns"]),
        ],
    )


def test_jumbo_mtu_with_a_host_behind_a_kernel_vtep(fabric):
    """Pod MTU 8950, the kernel VTEP's bridge port too: full-size frames,
    encapsulated to 9000 bytes on the underlay, both ways."""
    fab, vm, a, _ = jumbo_fabric(fabric, host=True)
    reach(a["ns"], VM_IP, "pod a -> kernel-VTEP host")
    jumbo_checks(
        fab,
        a["ns"],
        VM_IP,
        [
            ("jumbo pod a -> vtep host", vm, VM_IP, a["ns"]),
            ("jumbo vtep host -> pod a", a["ns"], a["ip"], vm),
        ],
    )


def test_jumbo_frames_queued_by_a_slow_reader_arrive_intact(fabric):
    """Single jumbo frames (the kernel-VTEP host's segmentation offloads
    off: 8964-byte frames, not super-frames) sent to a pod whose
    application reads slowly: its TCP receive queue holds hundreds of them
    while the core keeps sending through the pod port's tx ring, which
    wraps many times meanwhile. What the pod reads is what was sent: a
    queued frame's bytes are its own, not a later frame's."""
    fab, vm, a, _ = jumbo_fabric(fabric, host=True)
    nsx(vm, "ethtool", "-K", "eth0", "tso", "off", "gso", "off", check=True)
    reach(a["ns"], VM_IP, "pod a -> kernel-VTEP host")
    tcp_transfer(
        fab,
        "jumbo frames, vtep host -> a slow reader in pod a",
        a["ns"],
        a["ip"],
        vm,
        size=16 * MB,
        slow_reader=(8 * MB, 0.002),
    )
    # they came as single frames through the pod port's tx ring
    pod = _port_row(fab.nodes[1], lambda p: p["role"] == "pod" and p["pod"].endswith("a"))
    assert pod["tx_bytes"] > 16 * MB and pod["tx_bytes"] / pod["tx_packets"] > 8000, pod


def test_a_jumbo_frame_longer_than_its_datagram_is_cut_to_it(fabric):
    """What follows an underlay frame's outer IPv4 datagram is no part of
    it (Ethernet padding, or junk): cut off before the inner frame goes on,
    also from a jumbo frame the uplink receives in several buffers. The pod
    gets the inner frame alone."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    fab, _, a, _ = jumbo_fabric(fabric, host=False)
    node = fab.nodes[1]
    link = json.loads(nsx(node.ns, "ip", "-j", "link", "show", "uplink0", check=True).stdout)
    pod_mac, pod_ip = a["planes"][0]["mac"], a["ip"].split("/")[0]
    inner = bytes(
        Ether(dst=pod_mac, src=VM_MAC)
        / IP(src=VM_IP, dst=pod_ip)
        / UDP(sport=5555, dport=9)
        / (b"mark-jumbotrim" + b"." * 900)
    )
    # VXLAN flags besides the I bit: the core's to decapsulate, not the lane's
    outer = Ether(dst=link[0]["address"]) / IP(src=HOST_VTEP, dst="10.99.0.1", flags="DF")
    outer /= UDP(sport=49999, dport=4789, chksum=0) / VXLAN(vni=VNI, flags=0x0C)
    frame = bytes(outer / inner) + b"\xee" * 3000  # past the datagram: 3000 bytes
    st0 = node.status()
    seen = marked_at_pod(fab, a, [frame])
    assert seen == [["mark-jumbotr", len(inner)]], (seen, len(inner), node.status()["drops"])
    st1 = node.status()
    assert st1["networks"][0]["decap_packets"] == st0["networks"][0]["decap_packets"] + 1


def tcp_snmp(ns):
    """The Tcp counters of /proc/net/snmp in namespace ``ns``."""
    lines = [x.split() for x in nsx(ns, "cat", "/proc/net/snmp", check=True).stdout.splitlines()]
    head, vals = [x for x in lines if x[0] == "Tcp:"]
    return dict(zip(head[1:], map(int, vals[1:])))


def test_no_tcp_checksum_errors_at_either_end_with_a_kernel_vtep_host(fabric):
    """The receivers' own verdict on what the core hands them: neither the
    pod's TCP stack nor the kernel-VTEP host's counts a segment with a bad
    checksum (InCsumErrors) while TCP runs both ways. (A capture cannot
    judge this: a segment handed on with its checksum left to offload looks
    wrong in a capture and is right for the stack that receives it.)"""
    fab = fabric()
    fab.node(1, [HOST_VTEP])
    vm = fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", SUBNET + "11")
    reach(a["ns"], VM_IP, "pod a -> kernel-VTEP host")
    ends = {"the pod": a["ns"], "the kernel-VTEP host": vm}
    before = {k: tcp_snmp(ns) for k, ns in ends.items()}
    outcome = []
    for label, srv_ns, srv_ip, cli_ns in (
        ("pod -> vtep host", vm, VM_IP, a["ns"]),
        ("vtep host -> pod", a["ns"], a["ip"], vm),
    ):
        try:
            tcp_transfer(fab, label, srv_ns, srv_ip, cli_ns, size=MB)
            outcome.append(f"{label}: 1 MB transferred")
        except AssertionError as e:
            outcome.append(str(e).splitlines()[0])
    errors = []
    for k, ns in ends.items():
        after = tcp_snmp(ns)
        bad = after["InCsumErrors"] - before[k]["InCsumErrors"]
        segs = after["InSegs"] - before[k]["InSegs"]
        if bad or not segs:
            errors.append(
                f"{k}'s TCP stack counted {bad} segments with a bad checksum (of {segs} received)"
            )
    assert not errors, "; ".join(errors + outcome)


@pytest.mark.parametrize("underlay_mtu", [1500, 9000])
def test_frame_above_the_pod_mtu_is_dropped_and_counted(fabric, underlay_mtu):
    """A pod whose interface was raised by hand (both ends) to the underlay's
    MTU sends IP packets of that size: 50 bytes too many once encapsulated.
    Not delivered, and counted under an oversize drop reason (the standard
    MTU shows the counting works with frames the driver reads whole)."""
    fab = fabric(underlay_mtu=underlay_mtu)
    fab.node(1, [HOST_VTEP])
    fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", SUBNET + "11")
    reach(a["ns"], VM_IP, "pod a -> kernel-VTEP host")
    node = fab.nodes[1]
    host_if = a["planes"][0]["host_ifname"]
    ipn(node.ns, f"link set {host_if} mtu {underlay_mtu}")
    ipn(a["ns"], f"link set eth0 mtu {underlay_mtu}")

    def oversize():
        """Drops counted under a reason named oversize: the node's, and any
        a port shows of its own."""
        st = node.status()
        found = {f"drops.{k}": v for k, v in st["drops"].items() if "oversize" in k}
        for p in st["ports"]:
            found |= {f"{p['name']}.{k}": v for k, v in p.items() if "oversize" in k}
        return sum(found.values()), found, st["drops"]

    before = oversize()
    r = ping(a["ns"], VM_IP, count=3, size=underlay_mtu - 28)
    after = oversize()

    frame, pod_mtu = underlay_mtu + 14, underlay_mtu - 50
    assert r.returncode != 0, f"a {frame}-byte frame above the pod MTU {pod_mtu} was delivered"
    assert after[0] >= before[0] + 3, (
        f"3 frames of {frame} bytes above the pod MTU {pod_mtu} were not delivered "
        f"but not counted as oversize drops either (oversize before {before[1]}, "
        f"after {after[1]}; all drops after: {after[2]})"
    )
    print(f"oversize drops: {before[1]} -> {after[1]}")


def test_udp_64_byte_datagrams_between_pods(fabric):
    fab = fabric()
    fab.node(1, [])
    a, b = fab.pod(1, "a", SUBNET + "11"), fab.pod(1, "b", SUBNET + "12")
    reach(a["ns"], b["ip"], "pod a -> pod b")
    udp_count(fab, "pod a -> pod b", b["ns"], b["ip"], a["ns"])
