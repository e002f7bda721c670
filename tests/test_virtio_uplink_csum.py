"""VXLAN whose outer UDP checksum a VTEP on the same hypervisor left to
offload, received on a virtio-net uplink (a node in a VM).

    dpdk-testpmd (the hypervisor's side)            core (child process)
      port 0 net_pcap off.pcap  --csum-->  port 1 net_vhost0 ==vhost-user==
      port 2 net_pcap bad.pcap  --io---->         net_virtio_user (uplink) --> ring port (pod)

testpmd's csum engine (``csum set udp hw 1``, ``csum parse-tunnel off 1``:
the OUTER UDP is its L4 header) flags each mbuf RTE_MBUF_F_TX_UDP_CKSUM
with l2_len/l3_len set; DPDK's vhost library then writes the pseudo-header
sum into the field and VIRTIO_NET_HDR_F_NEEDS_CSUM into the virtio-net
header (lib/vhost/virtio_net.c, virtio_enqueue_offload), and the virtio PMD
under the core's RTE_ETH_RX_OFFLOAD_UDP_CKSUM marks the mbuf
RTE_MBUF_F_RX_L4_CKSUM_NONE (drivers/net/virtio/virtio_rxtx.c,
virtio_rx_offload): the data verified, the field not final. The core
trusts that (csrc/dp_decap.h) and delivers the frames; frames with a wrong
checksum sent plainly (io, no offload) are still dropped as udp_checksum.

Needs root and dpdk-testpmd: fails, never skips, without them.
"""

import os
import re
import shutil
import socket
import struct
import tempfile
import time
import uuid

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw
from scapy.utils import wrpcap

from bench.dpdkpods import Pmd
from tests.enginehost import small_core
from tests.test_core import NH_MAC, R1, R1_VTEP, VNI0, VTEP_IP, VTEP_MAC, A

TESTPMD = "dpdk-testpmd"
N = 32
_FWD = re.compile(
    r"Forward statistics for port (\d+)\s+-+\s+RX-packets:\s*(\d+).*?TX-packets:\s*(\d+)", re.S
)


def inner(tag, i):
    f = Ether(src=R1, dst=A) / IP(src="192.168.1.2", dst="192.168.1.1") / UDP(sport=1000 + i)
    return bytes(f / Raw(f"{tag}{i:04d}".encode() + bytes(40)))


def vxlan(frame, chksum=None):
    """frame in VXLAN from R1_VTEP; chksum None: the right full one."""
    f = (
        Ether(src=NH_MAC, dst=VTEP_MAC)
        / IP(src=R1_VTEP, dst=VTEP_IP, flags="DF")
        / UDP(sport=54321, dport=4789, chksum=chksum)
        / VXLAN(vni=VNI0)
        / Raw(frame)
    )
    return Ether(bytes(f))


def pseudo_header_sum(f):
    """The outer UDP pseudo-header's one's complement sum, not inverted:
    what rte_ipv4_phdr_cksum puts in a field left to offload."""
    ip = f[IP]
    addrs = socket.inet_aton(ip.src) + socket.inet_aton(ip.dst)
    s = sum(struct.unpack("!4H", addrs)) + 17 + f[UDP].len
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


class Peer(Pmd):
    """dpdk-testpmd on its prompt, the vhost-user server (--no-huge); its
    prompt and log driven as the benchmark drives its pods' (bench.dpdkpods)."""

    def __init__(self, d, sock):
        self.prefix = f"dpvu{uuid.uuid4().hex[:8]}"
        self.log = os.path.join(d, "testpmd.log")
        vdevs = [
            f"net_pcap0,rx_pcap={d}/off.pcap,tx_pcap={d}/back0.pcap",
            f"net_vhost0,iface={sock},queues=1",
            f"net_pcap1,rx_pcap={d}/bad.pcap,tx_pcap={d}/back2.pcap",
        ]
        cmd = ["stdbuf", "-oL", TESTPMD, "-l", "0,1", "--no-pci", "--no-huge", "--no-shconf"]
        cmd += ["-m", "128", "--file-prefix", self.prefix, *(f"--vdev={v}" for v in vdevs)]
        cmd += ["--", "-i", "--no-flush-rx", "--disable-link-check", "--total-num-mbufs=4096"]
        self.spawn(cmd)

    def port_up(self, port, timeout=20):
        end = time.monotonic() + timeout
        while "Link status: up" not in self.run(f"show port info {port}", "Link speed"):
            assert time.monotonic() < end, f"testpmd port {port} down:\n{self.text()[-3000:]}"
            time.sleep(0.2)

    def fwd_stop(self):
        """Forwarding stopped: {port: (RX-packets, TX-packets)} since start."""
        t = self.run("stop", "Done.")
        return {int(p): (int(rx), int(tx)) for p, rx, tx in _FWD.findall(t)}


def drops_since(eng, base):
    now = eng.counters().drops()
    return {k: now[k] - base[k] for k in now if now[k] != base[k]}


def test_offloaded_outer_udp_checksum_on_virtio_uplink():
    assert os.geteuid() == 0, "needs root (DPDK EAL)"
    assert shutil.which(TESTPMD), f"{TESTPMD} is missing: install the dpdk package"
    off = [inner("off", i) for i in range(N)]
    bad = [inner("bad", i) for i in range(N)]
    d = tempfile.mkdtemp(prefix="dpvu", dir="/tmp")
    sock = os.path.join(d, "v.sock")
    peer = None
    try:
        wrpcap(f"{d}/off.pcap", [vxlan(f) for f in off])  # testpmd makes their field partial
        wrong = [vxlan(f) for f in bad]
        for f in wrong:
            f[UDP].chksum ^= 0x0101
        wrpcap(f"{d}/bad.pcap", wrong)
        peer = Peer(d, sock)
        peer.run("port stop 1")
        shown = peer.run("csum set udp hw 1") + peer.run("csum parse-tunnel off 1")
        peer.run("csum mac-swap off 1")  # the outer Ethernet header as it is
        peer.run("port start 1")
        with small_core("vucsum") as eng:
            up = eng.add_port(f"net_virtio_user0,path={sock},queues=1", role="uplink")
            pod = eng.add_ring_port("pod")
            eng.add_network(0, vni=VNI0)
            eng.set_port_network(pod, 0)
            eng.set_vtep(f"{VTEP_IP}/24", VTEP_MAC, up, next_hop_mac=NH_MAC)
            eng.fdb_add_local(0, A, pod)
            eng.fdb_add_remote(0, R1, R1_VTEP)  # VNI 100 from R1_VTEP accepted
            peer.port_up(1)
            assert eng.port_info(up).link, "the core's virtio_user port is down"

            # wrong checksums, plain (io: no offload flag on the mbufs)
            base = eng.counters().drops()
            peer.run("set portlist 2,1")
            peer.run("set fwd io")
            peer.run("start", "packet forwarding - ports=")
            end = time.monotonic() + 10
            while drops_since(eng, base).get("udp_checksum", 0) < N and time.monotonic() < end:
                time.sleep(0.05)
            bad_got = eng.collect(pod, wait=0.3)
            bad_stats = peer.fwd_stop()
            bad_drops = drops_since(eng, base)

            # the checksum left to offload (csum engine, udp hw)
            base = eng.counters().drops()
            eng.capture_start([up], "rx")
            peer.run("set portlist 0,1")
            peer.run("set fwd csum")
            peer.run("set verbose 1")
            start = len(peer.text())
            peer.run("start", "packet forwarding - ports=")
            got = eng.collect(pod, wait=10, expect=N)
            off_stats = peer.fwd_stop()
            verbose = peer.text()[start:]
            peer.run("set verbose 0")
            seen, _ = eng.capture_stop()
            off_drops = drops_since(eng, base)
    finally:
        if peer is not None:
            peer.close()
        shutil.rmtree(d, ignore_errors=True)

    # the control: plainly sent wrong checksums are dropped, counted
    assert bad_stats[1][1] == N, bad_stats  # all sent through the vhost port
    assert bad_got == [], f"{len(bad_got)} frames with a wrong checksum delivered"
    assert bad_drops == {"udp_checksum": N}, bad_drops

    # the peer really left the checksum to offload: testpmd set the flag on
    # every mbuf, and the field the core received holds the pseudo-header
    # sum (a full checksum would be the vhost port's software fallback)
    assert "UDP checksum offload is hw" in shown and "Parse tunnel is off" in shown, shown
    assert "not supported" not in shown, shown
    assert off_stats[1][1] == N, off_stats
    flags = re.findall(r"tx: flags=(.*)", verbose)
    assert len(flags) == N and all("RTE_MBUF_F_TX_UDP_CKSUM" in f for f in flags), flags
    assert verbose.count("tx: m->l2_len=14 m->l3_len=20") == N, verbose[-3000:]
    outer = [Ether(s[4]) for s in seen if s[1] == up and s[2] == "rx"]
    assert len(outer) == N, f"{len(outer)} frames captured on the uplink"
    for f in outer:
        full = Ether(bytes(f))
        full[UDP].chksum = None
        assert f[UDP].chksum == pseudo_header_sum(f) != Ether(bytes(full))[UDP].chksum

    # ... and every such frame is delivered, its inner frame intact
    assert off_drops.get("udp_checksum", 0) == 0, f"dropped: {off_drops}"
    assert got == off, f"{len(got)} of {N} delivered; drops: {off_drops}"
    assert off_drops == {}, off_drops
