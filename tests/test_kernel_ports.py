"""Kernel ports on real parts (root): pods as network namespaces on veths
read by the core's native AF_PACKET driver, and a host behind the Linux
kernel's own VXLAN VTEP on the underlay veth. Checksums left to offload
(CHECKSUM_PARTIAL) arrive valid at the far end in both directions, TCP
connections complete, a lone frame is not held by a timer, jumbo frames pass.

Every namespace and veth is made by the test and removed after; the engine
runs in a child process inside the core's own namespace, so no traffic
touches the host's interfaces.

    ns A (pod, 10.9.0.1) ─veth─┐
    ns B (pod, 10.9.0.2) ─veth─┤ ns C: the core ─veth─ ns V: 192.168.77.2
                               │ (VTEP 192.168.77.1)    vx0 (VNI 100, 10.9.0.3)
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VNI = 100
LOCAL_VTEP = "192.168.77.1"
REMOTE_VTEP = "192.168.77.2"
TNL_SEG_OFF = ("tx-udp_tnl-segmentation", "off", "tx-udp_tnl-csum-segmentation", "off")
POD_IP = {"a": "10.9.0.1", "b": "10.9.0.2", "v": "10.9.0.3"}

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]


def sh(*cmd, check=True, ns=None, timeout=60):
    if ns:
        cmd = ("ip", "netns", "exec", ns, *cmd)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def link_mac(ns, ifname):
    out = sh("ip", "-j", "link", "show", "dev", ifname, ns=ns).stdout
    return json.loads(out)[0]["address"]


class Topo:
    """The namespaces, veths and the kernel VTEP; the engine in a child."""

    def __init__(
        self,
        underlay_mtu=1500,
        pod_offloads=("tso", "off", "gso", "off"),
        tnl_seg_off=True,
        pod_mtu=None,
    ):
        """``pod_mtu``: {pod: MTU} for pods whose veth differs from the
        underlay's MTU less 50 when their port is opened."""
        tag = uuid.uuid4().hex[:6]
        self.ns = {k: f"dpk{k}-{tag}" for k in ("c", "a", "b", "v")}
        self.mtu = underlay_mtu
        self.proc = None
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
        c = self.ns["c"]
        for k in ("a", "b"):
            ns = self.ns[k]
            mtu = str((pod_mtu or {}).get(k, underlay_mtu - 50))
            sh("ip", "link", "add", "eth0", "netns", ns, "mtu", mtu,
               "type", "veth", "peer", "name", f"p{k}", "netns", c, "mtu", mtu)  # fmt: skip
            sh("ip", "link", "set", "lo", "up", ns=ns)
            sh("ip", "addr", "add", f"{POD_IP[k]}/24", "dev", "eth0", ns=ns)
            sh("ip", "link", "set", "eth0", "up", ns=ns)
            sh("ip", "link", "set", f"p{k}", "up", ns=c)
            # tx checksumming stays on (the kernel default): frames leave partial
            sh("ethtool", "-K", "eth0", *pod_offloads, ns=ns)
        v = self.ns["v"]
        sh(
            "ip",
            "link",
            "add",
            "ul0",
            "netns",
            v,
            "mtu",
            str(underlay_mtu),
            "type",
            "veth",
            "peer",
            "name",
            "up0",
            "netns",
            c,
            "mtu",
            str(underlay_mtu),
        )
        sh("ip", "link", "set", "up0", "up", ns=c)
        sh("ip", "link", "set", "lo", "up", ns=v)
        sh("ip", "addr", "add", f"{REMOTE_VTEP}/24", "dev", "ul0", ns=v)
        sh("ip", "link", "set", "ul0", "up", ns=v)
        sh(
            "ip",
            "link",
            "add",
            "vx0",
            "mtu",
            str(underlay_mtu - 50),
            "type",
            "vxlan",
            "id",
            str(VNI),
            "dstport",
            "4789",
            "local",
            REMOTE_VTEP,
            "dev",
            "ul0",
            ns=v,
        )
        sh("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst", LOCAL_VTEP, ns=v)
        sh("ip", "addr", "add", f"{POD_IP['v']}/24", "dev", "vx0", ns=v)
        sh("ip", "link", "set", "vx0", "up", ns=v)
        # UDP-tunnel segmentation cannot be expressed in a virtio-net header:
        # the kernel VTEP's veth segments (its checksum offload stays on)
        if tnl_seg_off:
            sh("ethtool", "-K", "ul0", *TNL_SEG_OFF, ns=v)
        self.mac = {
            "a": link_mac(self.ns["a"], "eth0"),
            "b": link_mac(self.ns["b"], "eth0"),
            "v": link_mac(v, "vx0"),
            "ul0": link_mac(v, "ul0"),
        }

    def start_engine(self):
        args = {
            "pods": {"pa": self.mac["a"], "pb": self.mac["b"]},
            "uplink": "up0",
            "remote_mac": self.mac["v"],
            "next_hop_mac": self.mac["ul0"],
            "underlay_mtu": self.mtu,
        }
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns["c"],
                sys.executable,
                __file__,
                "engine",
                json.dumps(args),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for line in self.proc.stdout:
            if line.startswith("KPORT-JSON "):
                msg = json.loads(line[len("KPORT-JSON ") :])
                assert msg["event"] == "ready", msg
                return msg
        raise RuntimeError("engine child exited before it was ready")

    def counters(self):
        return self.ask("counters")

    def ask(self, cmd: str):
        """A command to the engine child; its answer."""
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("KPORT-JSON "):
                return json.loads(line[len("KPORT-JSON ") :])
        raise RuntimeError("engine child gone")

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for ns in self.ns.values():
            sh("ip", "netns", "del", ns, check=False)


def run_engine(args):
    """Child: the core in fallback mode, pods and uplink on AF_PACKET ports."""
    from dataplane.engine import Engine, EngineConfig

    def emit(msg):
        print("KPORT-JSON " + json.dumps(msg), flush=True)

    ncpu = os.cpu_count() or 1
    cfg = EngineConfig(
        mode="fallback",
        lcores=[0, 1 if ncpu > 1 else 0],
        memory_mb=512,
        n_mbufs=16383,
        file_prefix=f"kport-{os.getpid()}",
    )
    with Engine(cfg) as eng:
        eng.add_network(0, vni=VNI, plane=0)
        ports = {}
        for ifname, mac in args["pods"].items():
            ports[ifname] = eng.add_afpacket_port(ifname, role="pod", network=0)
            eng.fdb_add_local(0, mac, ports[ifname])
        up = eng.add_afpacket_port(args["uplink"], role="uplink")
        ports[args["uplink"]] = up
        eng.set_vtep(
            f"{LOCAL_VTEP}/24",
            eng.port_info(up).mac,
            up,
            underlay_mtu=args["underlay_mtu"],
            next_hop_mac=args["next_hop_mac"],
        )
        eng.fdb_add_remote(0, args["remote_mac"], REMOTE_VTEP)
        eng.set_flood(0, [REMOTE_VTEP])
        eng.start()
        emit({"event": "ready", "ports": ports})
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "counters":
                c = eng.counters()
                emit(
                    {
                        "drops": {k: int(v) for k, v in c.drops().items()},
                        "ports": {
                            n: {k: int(v) for k, v in c.port_dict(i).items()}
                            for n, i in ports.items()
                        },
                        # plane 0's: every frame here is in it
                        "timed": sum(c.latency(0)[0]),
                        "plane": {n: c.qos_dict(i, 0) for n, i in ports.items()},
                    }
                )
            elif cmd.startswith("shape "):  # shape IFNAME RATE_BPS
                _, ifname, rate = cmd.split()
                eng.set_shaper(ports[ifname], int(rate))
                emit({"event": "shaped"})
            elif cmd == "quit":
                break
        eng.stop()


@pytest.fixture
def topo():
    t = Topo()
    try:
        t.start_engine()
        yield t
    finally:
        t.close()


@pytest.fixture
def jumbo():
    t = Topo(underlay_mtu=9000)
    try:
        t.start_engine()
        yield t
    finally:
        t.close()


# ------------------------------------------------------------------ helpers
SERVER = r"""
import socket, sys, hashlib
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(30)
print("listening", flush=True)
c, _ = s.accept(); c.settimeout(30); h = hashlib.sha256(); n = 0
while True:
    d = c.recv(1 << 16)
    if not d: break
    h.update(d); n += len(d)
c.sendall(f"{n} {h.hexdigest()}".encode()); c.close()
"""

CLIENT = r"""
import socket, sys, hashlib, os, time
data = os.urandom(int(sys.argv[3]))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
t = time.time(); c.sendall(data); c.shutdown(socket.SHUT_WR)
r = b""
while True:
    d = c.recv(4096)
    if not d: break
    r += d
dt = time.time() - t
print(r.decode(), hashlib.sha256(data).hexdigest(), f"{len(data) * 8 / dt / 1e6:.1f}")
"""


def tcp_transfer(src_ns, dst_ns, dst_ip, nbytes=4 << 20, port=5201):
    """A real TCP connection: nbytes from src_ns to dst_ip in dst_ns, echoed
    length and digest back. Returns Mbit/s."""
    srv = subprocess.Popen(
        ["ip", "netns", "exec", dst_ns, sys.executable, "-c", SERVER, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert srv.stdout.readline().strip() == "listening"
        r = sh(
            sys.executable,
            "-c",
            CLIENT,
            dst_ip,
            str(port),
            str(nbytes),
            ns=src_ns,
            check=False,
            timeout=90,
        )
        assert r.returncode == 0, r.stderr
        n, got, want, mbps = r.stdout.split()
        assert int(n) == nbytes and got == want
        return float(mbps)
    finally:
        srv.kill()
        srv.wait()


def ping_rtts(ns, ip, count=200, interval="0.01", size=56):
    """RTTs (ms) of count pings; every one must come back."""
    r = sh(
        "ping", "-c", str(count), "-i", interval, "-s", str(size), "-W", "2", ip,
        ns=ns, check=False, timeout=120,
    )  # fmt: skip
    rtts = [float(x.split("time=")[1].split()[0]) for x in r.stdout.splitlines() if "time=" in x]
    assert len(rtts) == count, r.stdout + r.stderr
    return sorted(rtts)


def median(v):
    return v[len(v) // 2]


# Frames go to a file, not a pipe: four jumbo frames' hex overfill a pipe
# the test does not read until the end, and on a busy machine the sniffer was
# stopped inside a blocked write - the test read the last frame 2 KB short.
# SIGTERM ends it once the frames queued by then are written.
SNIFF = r"""
import signal, socket, sys
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(263, 15, 1)  # SOL_PACKET, PACKET_VNET_HDR: see what the stack sees
s.bind((sys.argv[1], 0))
s.settimeout(0.05)
out = open(sys.argv[2], "w")
print("ready", flush=True)
while True:
    try:
        d, addr = s.recvfrom(1 << 17)
    except socket.timeout:
        if stop:
            break
        continue
    if addr[2] != 4:  # not our own tx (PACKET_OUTGOING)
        out.write(d.hex() + "\n")
out.close()
"""


class Sniffer:
    """The far end: frames received on ifname in ns, each with the virtio-net
    header the kernel gives a packet socket (a checksum still partial says so
    there: the receiving stack trusts it, as it trusts a NIC's)."""

    def __init__(self, ns, ifname):
        self.ns, self.ifname = ns, ifname
        self.frames = []

    def __enter__(self):
        fd, self.path = tempfile.mkstemp(prefix="dpsniff-", suffix=".hex")
        os.close(fd)
        self.p = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", SNIFF, self.ifname, self.path],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.p.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *exc):
        time.sleep(0.3)
        self.p.terminate()
        self.p.communicate(timeout=10)
        with open(self.path) as f:
            self.frames = [bytes.fromhex(x) for x in f.read().split()]
        os.unlink(self.path)


def _fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _sum16(b):
    if len(b) % 2:
        b += b"\0"
    return _fold(sum(int.from_bytes(b[i : i + 2], "big") for i in range(0, len(b), 2)))


def tcp_checksums_ok(frames):
    """Every TCP segment (inner one of a VXLAN frame) has a valid checksum:
    on the wire, or once completed as its virtio-net header says (partial:
    the field holds the pseudo-header sum, the rest is summed from
    csum_start). Checked against scapy's own computation. Returns how many."""
    from scapy.all import IP, TCP, VXLAN, Ether

    n = 0
    for raw in frames:
        flags, csum_start, csum_off = raw[0], raw[6] | raw[7] << 8, raw[8] | raw[9] << 8
        f = bytearray(raw[10:])
        if flags & 1:  # VIRTIO_NET_HDR_F_NEEDS_CSUM: finish it as the kernel would
            cs = (~_sum16(bytes(f[csum_start:]))) & 0xFFFF
            f[csum_start + csum_off : csum_start + csum_off + 2] = cs.to_bytes(2, "big")
        p = Ether(bytes(f))
        if VXLAN in p:
            p = p[VXLAN].payload
        if TCP not in p or p[TCP].dport != 5201 and p[TCP].sport != 5201:
            continue
        got = p[TCP].chksum
        q = p[IP].copy()
        del q[TCP].chksum
        want = IP(bytes(q))[TCP].chksum
        assert got == want, f"bad TCP checksum {got:#06x}, want {want:#06x}: {p.summary()}"
        n += 1
    return n


SEND_PARTIAL = r"""
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.setsockopt(263, 15, 1)  # SOL_PACKET, PACKET_VNET_HDR
s.bind((sys.argv[1], 0))
for a in sys.argv[2:]:
    start, frame = a.split(":")
    # NEEDS_CSUM, no GSO, csum_start, csum_offset 8: SCTP's CRC32c left to offload
    s.send(struct.pack("<BBHHHH", 1, 0, 0, 0, int(start), 8) + bytes.fromhex(frame))
"""


def sctp_frames(topo, src, dst, size):
    """SCTP DATA frames from pod ``src`` to ``dst``: over IPv4 twice, over
    IPv6, and over IPv6 with a destination-options and a hop-by-hop header
    before the SCTP header; their CRC32c field 0, as a kernel SCTP stack
    leaves it for a device that computes it: (csum_start, frame) pairs and
    the payloads sent."""
    from scapy.all import (
        IP,
        SCTP,
        Ether,
        IPv6,
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrHopByHop,
        SCTPChunkData,
    )

    v6 = IPv6(src="fd00::1", dst="fd00::2")
    kinds = (
        IP(src=POD_IP[src], dst=POD_IP[dst]),
        IP(src=POD_IP[src], dst=POD_IP[dst]),
        v6,
        v6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt(),
    )
    out, payloads = [], []
    for i, l3 in enumerate(kinds):
        data = bytes([0x41 + i]) * size
        f = Ether(src=topo.mac[src], dst=topo.mac[dst]) / l3.copy()
        f = f / SCTP(sport=2905, dport=2905, tag=0x1000 + i, chksum=0)
        f = f / SCTPChunkData(tsn=i, stream_id=0, proto_id=3, data=data)
        out.append((len(bytes(l3)) + 14, bytes(f)))
        payloads.append(data)
    return out, payloads


def sctp_arrived_valid(frames, payloads):
    """Every payload sent arrived in an SCTP DATA frame (the inner one of a
    VXLAN frame) with a valid CRC32c and no checksum left partial; checked
    against scapy's own CRC32c."""
    from scapy.all import IP, SCTP, VXLAN, Ether, IPv6, SCTPChunkData

    seen = set()
    for raw in frames:
        flags, f = raw[0], raw[10:]
        p = Ether(f)
        if VXLAN in p:
            p = p[VXLAN].payload
        if SCTP not in p or SCTPChunkData not in p:
            continue
        l3 = p[IP] if IP in p else p[IPv6]
        q = l3.copy()
        del q[SCTP].chksum
        want = type(l3)(bytes(q))[SCTP].chksum
        got = p[SCTP].chksum
        assert not flags & 1, f"SCTP frame left partial: {p.summary()}"
        assert got == want, f"bad SCTP CRC32c {got:#010x}, want {want:#010x}: {p.summary()}"
        seen.add(bytes(p[SCTPChunkData].data))
    missing = [d[:1] for d in payloads if d not in seen]
    assert not missing, f"SCTP frames not received: payloads {missing}"


# -------------------------------------------------------------------- tests
def test_partial_checksums_arrive_valid_pod_to_pod(topo):
    with Sniffer(topo.ns["b"], "eth0") as sn:
        tcp_transfer(topo.ns["a"], topo.ns["b"], POD_IP["b"], nbytes=256 << 10)
    assert tcp_checksums_ok(sn.frames) > 10


def test_partial_checksums_arrive_valid_from_kernel_vtep(topo):
    # inner checksum left partial by the kernel's vxlan device: valid in the pod
    with Sniffer(topo.ns["a"], "eth0") as sn:
        tcp_transfer(topo.ns["v"], topo.ns["a"], POD_IP["a"], nbytes=256 << 10)
    assert tcp_checksums_ok(sn.frames) > 10


def test_partial_checksums_arrive_valid_at_kernel_vtep(topo):
    # pod's partial checksum, encapsulated, checked on the underlay veth
    with Sniffer(topo.ns["v"], "ul0") as sn:
        tcp_transfer(topo.ns["a"], topo.ns["v"], POD_IP["v"], nbytes=256 << 10)
    assert tcp_checksums_ok(sn.frames) > 10


def send_sctp(topo, frames):
    sh(sys.executable, "-c", SEND_PARTIAL, "eth0", *(f"{st}:{f.hex()}" for st, f in frames),
       ns=topo.ns["a"])  # fmt: skip


@pytest.mark.parametrize("fixture", ["topo", "jumbo"])
def test_sctp_checksums_left_to_offload_arrive_complete(fixture, request):
    """A kernel SCTP stack leaves its CRC32c to a device that computes it
    (a veth), and the packet socket shows it as any partial checksum, at
    offset 8 of the SCTP header: the core computes it as SCTP's CRC32c when
    it reads the frame, not as an Internet checksum where it leaves. Pod to
    pod and to the host behind the kernel VTEP; with jumbo frames (8000
    bytes of data: the frame is a chain of mbufs) too. Over IPv4 and IPv6,
    and IPv6 with extension headers before the SCTP header."""
    t = request.getfixturevalue(fixture)
    size = 8000 if fixture == "jumbo" else 1200
    for dst, ns, ifname in (("b", t.ns["b"], "eth0"), ("v", t.ns["v"], "ul0")):
        frames, payloads = sctp_frames(t, "a", dst, size)
        with Sniffer(ns, ifname) as sn:
            send_sctp(t, frames)
        sctp_arrived_valid(sn.frames, payloads)


def test_tcp_pod_to_pod_and_both_ways_to_kernel_vtep(topo):
    rates = {
        "a->b": tcp_transfer(topo.ns["a"], topo.ns["b"], POD_IP["b"]),
        "b->a": tcp_transfer(topo.ns["b"], topo.ns["a"], POD_IP["a"]),
        "v->a": tcp_transfer(topo.ns["v"], topo.ns["a"], POD_IP["a"]),
        "a->v": tcp_transfer(topo.ns["a"], topo.ns["v"], POD_IP["v"]),
    }
    print("TCP Mbit/s", rates)


def test_lone_frame_is_not_held_by_a_timer(topo):
    """Spaced pings (one frame in flight) through the core, against a kernel
    bridge between two namespaces in the same run. A block retire timer
    (>= 1 ms, uniform wait per hop) puts the median RTT at 1 ms or more; a
    frame forwarded when it arrives stays near the bridge's. The median
    ignores preemption spikes on a shared machine; best of three rounds."""
    tag = uuid.uuid4().hex[:6]
    k1, k2 = f"dpkk1-{tag}", f"dpkk2-{tag}"
    try:
        for ns in (k1, k2):
            sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", "br0", "type", "bridge", ns=k1)
        sh("ip", "link", "add", "eth0", "netns", k2, "type", "veth", "peer", "name", "p0",
           "netns", k1)  # fmt: skip
        sh("ip", "link", "set", "p0", "master", "br0", ns=k1)
        for ns, ifn, addr in ((k1, "br0", "10.8.0.1/24"), (k2, "eth0", "10.8.0.2/24")):
            sh("ip", "addr", "add", addr, "dev", ifn, ns=ns)
            sh("ip", "link", "set", ifn, "up", ns=ns)
        sh("ip", "link", "set", "p0", "up", ns=k1)
        ping_rtts(topo.ns["a"], POD_IP["b"], count=20)  # ARP, warm up
        ping_rtts(k2, "10.8.0.1", count=20)
        rounds = []
        for _ in range(3):
            ours = median(ping_rtts(topo.ns["a"], POD_IP["b"], count=200))
            bridge = median(ping_rtts(k2, "10.8.0.1", count=200))
            rounds.append((ours, bridge))
            print(f"median RTT ms: ours {ours} kernel bridge {bridge}")
            if ours < max(10 * bridge, 0.5):
                break
        else:
            pytest.fail(f"median RTT through the core far above the bridge's: {rounds}")
    finally:
        for ns in (k1, k2):
            sh("ip", "netns", "del", ns, check=False)


def test_jumbo_frames_end_to_end(jumbo):
    # one 8950-byte IP packet each way, unfragmented (DF): pod to pod and to
    # the host behind the kernel VTEP
    for dst in ("b", "v"):
        r = sh(
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            str(8950 - 28),
            POD_IP[dst],
            ns=jumbo.ns["a"],
            check=False,
        )
        assert " 0% packet loss" in r.stdout, r.stdout + r.stderr
    tcp_transfer(jumbo.ns["a"], jumbo.ns["v"], POD_IP["v"], nbytes=1 << 20)


def _three_too_long_for_b(jumbo):
    """Pod b's MTU lowered to 1450 (its veth's both ends), then three
    3000-byte pings from a that b's port cannot send: the counters before
    and after."""
    sh("ip", "link", "set", "eth0", "mtu", "1450", ns=jumbo.ns["b"])
    sh("ip", "link", "set", "pb", "mtu", "1450", ns=jumbo.ns["c"])
    c0 = jumbo.counters()  # reading the counters reads the MTU again
    r = sh("ping", "-c", "3", "-i", "0.2", "-W", "1", "-M", "do", "-s", "3000", POD_IP["b"],
           ns=jumbo.ns["a"], check=False)  # fmt: skip
    assert " 100% packet loss" in r.stdout, r.stdout
    return c0, jumbo.counters()


def test_a_frame_longer_than_a_pods_mtu_is_dropped_not_left_in_the_ring(jumbo):
    """Pod b's MTU lowered below what reaches it (pod a still sends 3000-byte
    packets): each such frame is dropped before its kernel port's tx ring
    and counted kport_tx_oversize. Handed to the kernel, the device would
    refuse it and the ring keep it at its head, sent again at every kick:
    b would receive nothing any more."""
    c0, c1 = _three_too_long_for_b(jumbo)
    assert c1["drops"].get("kport_tx_oversize", 0) - c0["drops"].get("kport_tx_oversize", 0) >= 3
    # and not counted as sent: pb's tx grew by no 3042-byte frame (an ARP
    # exchange at most)
    tx0, tx1 = c0["ports"]["pb"], c1["ports"]["pb"]
    assert tx1["tx_bytes"] - tx0["tx_bytes"] < 3000, (tx0, tx1)
    assert c1["drops"].get("kport_kernel_tx", 0) == c0["drops"].get("kport_kernel_tx", 0), c1
    # frames that fit still go: nothing waits behind the long ones
    ping_rtts(jumbo.ns["a"], POD_IP["b"], count=5, interval="0.1", size=1000)
    r = sh("ping", "-c", "3", "-i", "0.2", "-W", "1", POD_IP["a"], ns=jumbo.ns["b"], check=False)
    assert " 0% packet loss" in r.stdout, r.stdout


@pytest.mark.parametrize("shaped", [False, True], ids=["unshaped", "shaped"])
def test_a_frame_a_kernel_port_drops_is_not_timed_nor_sent_in_its_plane(jumbo, shaped):
    """The frames pod b's AF_PACKET port takes but drops for b's lowered
    MTU (kport_tx_oversize) never left: the per-plane latency histograms
    do not time them, and on a shaped port their plane counts them
    dropped, not sent, and its shaper gets their tokens back."""
    if shaped:
        assert jumbo.ask("shape pb 1000000000")["event"] == "shaped"
    c0, c1 = _three_too_long_for_b(jumbo)
    lost = c1["drops"].get("kport_tx_oversize", 0) - c0["drops"].get("kport_tx_oversize", 0)
    assert lost >= 3, (c0["drops"], c1["drops"])
    sent = {n: c1["ports"][n]["tx_packets"] - c0["ports"][n]["tx_packets"] for n in c1["ports"]}
    # no frame timed that was not sent (the core's own frames, an ARP
    # answer, are sent untimed: in no plane)
    assert c1["timed"] - c0["timed"] <= sum(sent.values()), (sent, lost, c0, c1)
    if shaped:
        plane = {k: c1["plane"]["pb"][k] - c0["plane"]["pb"][k] for k in c1["plane"]["pb"]}
        assert plane["sent"] == sent["pb"], (plane, sent)
        assert plane["dropped"] == lost, (plane, lost)
    # and frames that fit still go
    ping_rtts(jumbo.ns["a"], POD_IP["b"], count=3, interval="0.1", size=1000)


def test_a_frame_longer_than_the_ring_frames_of_a_port_whose_mtu_grew_is_sent():
    """Pod b's port opened at MTU 1450 (its rings' frames sized for that),
    then b's MTU raised to 8950: a 3000-byte frame for b fits the interface
    but no tx ring frame. It is sent past the ring, as a super-frame is,
    and counted as sent - not dropped with the frames behind it as a full
    ring. (b's replies do not fit its rx ring's frames: counted there as
    oversize, as before.)"""
    t = Topo(underlay_mtu=9000, pod_mtu={"b": 1450})
    try:
        t.start_engine()
        sh("ip", "link", "set", "pb", "mtu", "8950", ns=t.ns["c"])
        sh("ip", "link", "set", "eth0", "mtu", "8950", ns=t.ns["b"])
        ping_rtts(t.ns["a"], POD_IP["b"], count=2, interval="0.1", size=1000)
        c0 = t.counters()  # reading the counters reads the MTU again
        in0 = icmp_in_echos(t.ns["b"])
        sh("ping", "-c", "3", "-i", "0.2", "-W", "1", "-s", "3000", POD_IP["b"], ns=t.ns["a"],
           check=False)  # fmt: skip
        c1 = t.counters()
        assert icmp_in_echos(t.ns["b"]) - in0 == 3, (c0["drops"], c1["drops"])
        for why in ("tx_full", "kport_tx_oversize", "kport_tx_error"):
            assert c1["drops"].get(why, 0) == c0["drops"].get(why, 0), (c0["drops"], c1["drops"])
        tx0, tx1 = c0["ports"]["pb"], c1["ports"]["pb"]
        assert tx1["tx_bytes"] - tx0["tx_bytes"] >= 3 * 3042, (tx0, tx1)
    finally:
        t.close()


def icmp_in_echos(ns):
    """echo requests ns's stack has received"""
    out = sh("nstat", "-az", "IcmpInEchos", ns=ns).stdout
    return int(out.split("IcmpInEchos")[1].split()[0])


def test_oversize_frame_is_counted(topo):
    # the pod's MTU raised past what the port's ring frames were sized for
    sh("ip", "link", "set", "eth0", "mtu", "4000", ns=topo.ns["a"])
    sh("ip", "link", "set", "pa", "mtu", "4000", ns=topo.ns["c"])
    r = sh(
        "ping",
        "-c",
        "2",
        "-i",
        "0.2",
        "-W",
        "1",
        "-M",
        "do",
        "-s",
        "3000",
        POD_IP["b"],
        ns=topo.ns["a"],
        check=False,
    )
    assert " 100% packet loss" in r.stdout
    c = topo.counters()
    assert c["drops"].get("kport_oversize", 0) >= 2, c


def test_frames_the_kernel_drops_on_transmit_are_counted(topo):
    """Pod b's interface is down: the kernel takes each frame for it from
    pb's tx ring and drops it in the veth. Those drops are the interface's
    own tx_dropped, counted as kport_kernel_tx; the port's tx counter alone
    would call them sent."""
    before = topo.counters()
    sh("ip", "link", "set", "eth0", "down", ns=topo.ns["b"])
    # a neighbour entry, so that pod a sends unicast ICMP and no ARP
    sh(
        "ip",
        "neigh",
        "replace",
        POD_IP["b"],
        "lladdr",
        topo.mac["b"],
        "dev",
        "eth0",
        "nud",
        "permanent",
        ns=topo.ns["a"],
    )
    r = sh("ping", "-c", "5", "-i", "0.1", "-W", "1", POD_IP["b"], ns=topo.ns["a"], check=False)
    assert " 100% packet loss" in r.stdout
    after = topo.counters()
    sent = after["ports"]["pb"]["tx_packets"] - before["ports"]["pb"]["tx_packets"]
    lost = after["drops"].get("kport_kernel_tx", 0) - before["drops"].get("kport_kernel_tx", 0)
    assert sent >= 5, (before, after)
    assert lost >= 5, (before, after)
    # b back up: pings pass and the count stops growing - once pb carries
    # again: the kernel turns its carrier and queue on in the background
    # (link watch), and a first echo that comes before may still be dropped
    # and counted
    sh("ip", "link", "set", "eth0", "up", ns=topo.ns["b"])
    r = sh("ping", "-c", "3", "-i", "0.2", "-W", "2", POD_IP["b"], ns=topo.ns["a"], check=False)
    assert r.returncode == 0, r.stdout
    settled = topo.counters()
    assert settled["drops"]["kport_kernel_tx"] - after["drops"]["kport_kernel_tx"] <= 3, settled
    r = sh("ping", "-c", "3", "-i", "0.2", "-W", "2", POD_IP["b"], ns=topo.ns["a"], check=False)
    assert " 0% packet loss" in r.stdout, r.stdout
    again = topo.counters()
    assert again["drops"]["kport_kernel_tx"] == settled["drops"]["kport_kernel_tx"], again


SEND_RAW = r"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
head = bytes.fromhex(sys.argv[1].replace(":", "") + sys.argv[2].replace(":", "")) + b"\x88\xb5"
for seq in range(int(sys.argv[3]), int(sys.argv[4])):
    s.send(head + seq.to_bytes(4, "big") + bytes(56))
"""

RECV_RAW = r"""
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
s.bind(("eth0", 0)); s.settimeout(30)
print("ready", flush=True)
seen = []
while True:
    seq = int.from_bytes(s.recv(2048)[14:18], "big")
    seen.append(seq)
    if seq == 0xFFFFFFFF:
        break
print(" ".join(map(str, seen)), flush=True)
"""


#: frames to pb besides a test's own that a test allows for: IPv6 is off
#: (_only_test_frames_on_pb), but the namespaces' kernels may still send one
#: now and then
OTHER_FRAMES = 16


def _only_test_frames_on_pb(topo):
    """No frames to pb but the test's own from now on: IPv6 off in every
    namespace, and what switching it off sent (each interface's MLD reports
    leaving its groups) through the core before the test counts."""
    for ns in topo.ns.values():
        sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", ns=ns)
    last, quiet = None, 0
    for _ in range(100):
        c = topo.counters()
        now = (c["ports"]["pb"]["tx_packets"], sum(c["drops"].values()))
        quiet = quiet + 1 if now == last else 0
        if quiet == 4:  # unchanged for 0.4 s
            return
        last = now
        time.sleep(0.1)
    raise AssertionError(f"frames to pb did not stop: {last}")


def _send_to_b(topo, first, end):
    """Frames numbered first..end-1 from pod a to pod b (SEND_RAW)."""
    sh(sys.executable, "-c", SEND_RAW, topo.mac["b"], topo.mac["a"], str(first), str(end),
       ns=topo.ns["a"])  # fmt: skip


def _after_up_only_a_new_frame_arrives(topo, up):
    """``up()`` brings the path to pod b back; once pb has its carrier, the
    next frame pod a sends reaches b, and none of those sent before. (Up
    first: a packet socket bound to an interface that is down fails.)"""
    up()
    rx = subprocess.Popen(
        ["ip", "netns", "exec", topo.ns["b"], sys.executable, "-c", RECV_RAW],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert rx.stdout.readline().strip() == "ready"
        for _ in range(200):  # pb's carrier back
            state = json.loads(sh("ip", "-j", "link", "show", "pb", ns=topo.ns["c"]).stdout)
            if state[0]["operstate"] == "UP":
                break
            time.sleep(0.05)
        _send_to_b(topo, 0xFFFFFFFF, 0x100000000)
        out, _ = rx.communicate(timeout=60)
        assert out.split() == [str(0xFFFFFFFF)], out[:200]
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()


def test_a_frame_the_kernel_drops_on_transmit_is_counted_once_and_not_kept(topo):
    """Pod b's interface is down, so its veth has no carrier: the kernel
    drops every frame it takes from pb's tx ring, and would put the frame
    back at the ring's head and try it (and count it) again at every
    kick, the frames behind it waiting to be delivered late once b came
    back up. More frames than the ring holds, in a few bursts: each is
    counted once in kport_kernel_tx, none waits (no tx_full), and none
    arrives once b is up again."""
    n = 3000  # the port's tx ring holds 2048
    _only_test_frames_on_pb(topo)
    sh("ip", "link", "set", "eth0", "down", ns=topo.ns["b"])
    before = topo.counters()

    def delta(c, key):
        return c["drops"].get(key, 0) - before["drops"].get(key, 0)

    _send_to_b(topo, 0, n)
    for _ in range(600):  # until the worker has taken them all
        after = topo.counters()
        sent = after["ports"]["pb"]["tx_packets"] - before["ports"]["pb"]["tx_packets"]
        # (on a loaded machine pa's rx ring may have overflowed meanwhile:
        # the kernel's drops there, counted, are not this test's)
        lost_rx = delta(after, "kport_kernel")
        if sent + lost_rx >= n and delta(after, "kport_kernel_tx") >= sent:
            break
        time.sleep(0.05)
    # the test's frames, and at most a few that the namespaces' own kernels
    # sent meanwhile (CI once saw 3003): each of them counted exactly once
    assert n <= sent + lost_rx <= n + OTHER_FRAMES, (before, after)
    assert sent >= 2048, (before, after)  # more than pb's tx ring holds
    assert delta(after, "kport_kernel_tx") == sent, (before, after)
    assert delta(after, "tx_full") == 0, (before, after)
    # b up again: the next frame arrives, and none of the dropped ones
    _after_up_only_a_new_frame_arrives(
        topo, lambda: sh("ip", "link", "set", "eth0", "up", ns=topo.ns["b"])
    )
    # none of the 3,000 counted again (were they kept and tried again, the
    # ring's 2,048 would be); at most a few frames sent while b's carrier
    # was coming back are new drops (CI39 saw 2)
    again = topo.counters()["drops"]["kport_kernel_tx"] - after["drops"]["kport_kernel_tx"]
    assert again <= OTHER_FRAMES, again


def test_frames_for_an_interface_without_carrier_cost_the_worker_no_system_call_each(topo):
    """Pod b's interface is down and frames pour at it (a flood from the
    underlay reaches every pod): once the kernel has refused one, the port
    drops the others itself for a while, counted with the interface's own
    drops (kport_kernel_tx), instead of a kick and a look at the interface
    (sendto, two ioctls) for each - which made the worker, and every port
    it serves, crawl. The core's system calls meanwhile, traced."""
    n = 3000
    _only_test_frames_on_pb(topo)
    sh("ip", "link", "set", "eth0", "down", ns=topo.ns["b"])
    before = topo.counters()
    trace = tempfile.NamedTemporaryFile(prefix="dpstrace", suffix=".txt", delete=False)
    trace.close()
    st = subprocess.Popen(
        ["strace", "-f", "-c", "-e", "trace=sendto,ioctl", "-o", trace.name,
         "-p", str(topo.proc.pid)],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert "attached" in st.stderr.readline()  # its first thread traced
        time.sleep(0.5)  # and the others
        _send_to_b(topo, 0, n)
        for _ in range(600):  # until the worker has taken them all
            after = topo.counters()
            sent = after["ports"]["pb"]["tx_packets"] - before["ports"]["pb"]["tx_packets"]
            lost_rx = after["drops"].get("kport_kernel", 0) - before["drops"].get("kport_kernel", 0)
            if sent + lost_rx >= n:
                break
            time.sleep(0.05)
        st.send_signal(signal.SIGINT)
        st.wait(30)
        calls = {}
        for line in open(trace.name):
            f = line.split()
            if f and f[-1] in ("sendto", "ioctl"):
                calls[f[-1]] = int(f[3])  # % time, seconds, usecs/call, calls
    finally:
        if st.poll() is None:
            st.kill()
            st.wait()
        os.unlink(trace.name)
    dropped = after["drops"]["kport_kernel_tx"] - before["drops"].get("kport_kernel_tx", 0)
    assert sent >= n - lost_rx - OTHER_FRAMES and dropped == sent, (before, after)
    # a kick and a look at the interface per refusal, at most one refusal
    # a few milliseconds: far fewer than the frames
    assert calls.get("sendto", 0) + calls.get("ioctl", 0) < n // 10, calls


def test_frames_for_an_interface_set_down_are_dropped_not_sent_late(topo):
    """pb, the port's own interface, is set down (``ip link set down``: an
    uplink or a pod's host end taken down by hand): the kernel refuses every
    send and leaves the tx ring alone, so the frames waiting there would
    all leave in one burst, seconds late, once it is up again. Each is
    dropped instead and counted once as kport_tx_down (what did not fit in
    the ring meanwhile as tx_full), and none arrives once pb is up."""
    n = 3000  # the port's tx ring holds 2048
    _only_test_frames_on_pb(topo)
    sh("ip", "link", "set", "pb", "down", ns=topo.ns["c"])
    before = topo.counters()

    def delta(c, key):
        return c["drops"].get(key, 0) - before["drops"].get(key, 0)

    _send_to_b(topo, 0, n)
    for _ in range(600):  # until the worker has taken them all
        after = topo.counters()
        dropped = delta(after, "kport_tx_down") + delta(after, "tx_full")
        lost_rx = delta(after, "kport_kernel")  # pa's rx ring overflowed: as above
        if dropped + lost_rx >= n:
            break
        time.sleep(0.05)
    assert n <= dropped + lost_rx <= n + OTHER_FRAMES, (before, after)  # as above
    assert delta(after, "kport_tx_down") >= 1000, (before, after)
    assert delta(after, "kport_kernel_tx") == 0, (before, after)
    _after_up_only_a_new_frame_arrives(
        topo, lambda: sh("ip", "link", "set", "pb", "up", ns=topo.ns["c"])
    )
    assert topo.counters()["drops"]["kport_tx_down"] == after["drops"]["kport_tx_down"]


def test_gso_super_frames_from_a_kernel_vtep_are_cut_and_delivered():
    """A kernel VTEP whose veth keeps UDP-tunnel segmentation on hands the
    uplink whole VXLAN-encapsulated GSO super-frames, longer than a ring
    frame: they are read whole, cut into segments before decapsulation and
    delivered (the data checked by its digest at the pod), none dropped."""
    t = Topo(tnl_seg_off=False)
    try:
        t.start_engine()
        ping_rtts(t.ns["v"], POD_IP["a"], count=3, interval="0.2")
        tcp_transfer(t.ns["v"], t.ns["a"], POD_IP["a"], nbytes=4 << 20)
        drops = t.counters()["drops"]
        for k in ("kport_oversize", "kport_gso", "gso_bad", "gso_no_mbuf"):
            assert drops[k] == 0, (k, drops)
    finally:
        t.close()


if __name__ == "__main__" and sys.argv[1:2] == ["engine"]:
    run_engine(json.loads(sys.argv[2]))
