"""A DPDK pod on a vhost-user plane that leaves its UDP and TCP checksums
to offload, through the node service to a kernel pod of the same node and
to a host behind the Linux kernel's own VTEP.

    node netns: uplink0 -- node service (fallback mode, VTEP 10.99.0.1)
      kernel pod netns: eth0 (veth)            tcpdump, /proc/net/snmp
      dpdk pod   netns: dpdk-testpmd
          port 1 net_pcap0 off.pcap --csum--> port 0 net_virtio_user0 (server=1)
          port 2 net_pcap1 bad.pcap --io----> port 0       ==vhost-user== core
      host netns: eth0 10.99.0.50, vxlan101 (kernel VTEP) -- vm netns eth0
                                               tcpdump, /proc/net/snmp

testpmd's csum engine (``csum set udp hw 0``, ``csum set tcp hw 0``,
``csum parse-tunnel off 0``) writes the pseudo-header sum into each
frame's L4 checksum and flags the mbuf RTE_MBUF_F_TX_{UDP,TCP}_CKSUM with
its l2/l3 lengths; virtio_user turns that into a virtio-net header with
VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start 34 and csum_offset 6 (UDP) or 16
(TCP). The core's pod port (net_vhost) does not ask for rx checksum
offload (csrc/dp_port.c: only the uplink does), so DPDK's net_vhost
finishes such checksums in software as it receives them (rx_sw_csum).
Each frame must then reach the kernel pod, and the vm behind the kernel
VTEP, exactly as it would have with its checksum computed by the pod:
the bytes captured there equal the frame built with its full checksum,
and the receiving kernels count no checksum error.

The control: the same kinds of frames with a deliberately wrong checksum,
sent plainly (io forwarding, no offload flag, no NEEDS_CSUM), arrive with
that wrong checksum unchanged - the core neither fixes nor drops them - and
the receiving kernels count each one as a checksum error (InCsumErrors).

Needs root, hugepages (a vhost-user plane) and dpdk-testpmd: fails, never
skips, without the tool.
"""

import os
import re
import shutil
import signal
import socket
import struct
import time
import uuid

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap, wrpcap

from bench.dpdkpods import Pmd
from tests import test_dpdk_pods, test_kernel_pods
from tests.test_dpdk_pods import add_pod, node_with_sockets
from tests.test_kernel_pods import HOST_VTEP, VM_IP, VM_MAC, ipn, nsx

fabric = test_kernel_pods.fabric  # namespaces, node services, cleanup
sockdir = test_dpdk_pods.sockdir  # a short base directory for pod sockets

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, DPDK EAL)"),
]

TESTPMD = "dpdk-testpmd"
N = 16  # frames of each kind (UDP, TCP) to each receiver (kernel pod, vm)
UDP_PORT, TCP_PORT = 5555, 5556  # nothing listens: the kernels count them
CSUM_OFFSET = {"UDP": 6, "TCP": 16}


@pytest.fixture(scope="module", autouse=True)
def _testpmd_present():
    if shutil.which(TESTPMD) is None:  # setup.sh installs it (package dpdk)
        raise AssertionError(f"{TESTPMD} is missing: install the dpdk package (scripts/setup.sh)")


def frame(l4, src, dst, tag, i):
    """One UDP or TCP frame from (mac, ip) ``src`` to ``dst``, its
    checksums computed by scapy; ``tag`` and ``i`` in its payload."""
    ip = Ether(src=src[0], dst=dst[0]) / IP(src=src[1], dst=dst[1], id=i)
    if l4 == "UDP":
        hdr = UDP(sport=40000 + i, dport=UDP_PORT)
    else:
        hdr = TCP(sport=41000 + i, dport=TCP_PORT, flags="PA", seq=1000 + i, ack=1)
    return bytes(ip / hdr / Raw(f"{tag}{l4}{i:04d}".encode() + bytes(range(48))))


def l4_of(f):
    return f[UDP] if UDP in f else f[TCP]


def full_csum(f):
    """The L4 checksum over ``f``'s bytes as they are (RFC 768/793)."""
    g = Ether(bytes(f))
    l4_of(g).chksum = None
    return l4_of(Ether(bytes(g))).chksum


def pseudo_header_sum(f):
    """The L4 pseudo-header's one's complement sum, not inverted: what a
    sender that leaves the checksum to offload puts in the field."""
    ip = f[IP]
    proto = 17 if UDP in f else 6
    s = sum(struct.unpack("!4H", socket.inet_aton(ip.src) + socket.inet_aton(ip.dst)))
    s += proto + ip.len - 4 * ip.ihl
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def wrong(f):
    """``f`` with its L4 checksum spoilt."""
    g = Ether(f)
    l4_of(g).chksum ^= 0x0101
    return bytes(g)


def snmp(ns):
    """{"Udp": {...}, "Tcp": {...}} of the namespace's /proc/net/snmp."""
    lines = nsx(ns, "cat", "/proc/net/snmp", check=True).stdout.splitlines()
    out = {}
    for head, vals in zip(lines[::2], lines[1::2]):
        name, _, keys = head.partition(": ")
        if name in ("Udp", "Tcp"):
            out[name] = dict(zip(keys.split(), map(int, vals.split(": ")[1].split())))
    return out


def delta(after, before):
    return {
        f"{p}.{k}": after[p][k] - before[p][k]
        for p in ("Udp", "Tcp")
        for k in ("InDatagrams", "NoPorts", "InErrors", "InCsumErrors", "InSegs")
        if k in after[p]
    }


def wait_counted(ns, base, n, timeout=10):
    """The counters' change in ``ns`` since ``base`` once ``n`` UDP
    datagrams and ``n`` TCP segments came in (or the timeout passed)."""
    end = time.monotonic() + timeout
    while True:
        d = delta(snmp(ns), base)
        udp = d["Udp.InDatagrams"] + d["Udp.NoPorts"] + d["Udp.InCsumErrors"]
        if (udp >= n and d["Tcp.InSegs"] >= n) or time.monotonic() > end:
            return d
        time.sleep(0.1)


class PodPmd(Pmd):
    """dpdk-testpmd in the DPDK pod's namespace on hugepages (a vhost-user
    frontend shares its memory), driven on its prompt as bench.dpdkpods
    drives its pods'. Port 0: virtio_user, the socket's server; ports 1
    and 2: the pcap files of frames to send."""

    def __init__(self, ns, d, plane):
        self.prefix = f"dpvc{uuid.uuid4().hex[:8]}"
        self.log = str(d / f"{self.prefix}.log")
        vdevs = [
            f"net_virtio_user0,path={plane['socket']},server=1,queues=1,mac={plane['mac']}",
            f"net_pcap0,rx_pcap={d}/off.pcap,tx_pcap={d}/back1.pcap",
            f"net_pcap1,rx_pcap={d}/bad.pcap,tx_pcap={d}/back2.pcap",
        ]
        cmd = ["ip", "netns", "exec", ns, "stdbuf", "-oL", TESTPMD, "-l", "0,1", "--no-pci"]
        cmd += ["--file-prefix", self.prefix, "--in-memory", "--single-file-segments"]
        cmd += ["-m", "64", *(f"--vdev={v}" for v in vdevs)]
        cmd += ["--", "-i", "--no-flush-rx", "--total-num-mbufs=2048"]
        self.spawn(cmd)

    def tx_packets(self, port):
        t = self.run(f"show port stats {port}", "Tx-bps")
        return int(re.search(r"TX-packets:\s+(\d+)", t).group(1))

    def wait_tx(self, port, n, timeout=10):
        """Wait until ``port`` has sent ``n`` frames; how many it sent."""
        end = time.monotonic() + timeout
        while (sent := self.tx_packets(port)) < n and time.monotonic() < end:
            time.sleep(0.1)
        return sent

    def forward(self, portlist, mode, n):
        """Forward in ``mode`` over ``portlist`` until port 0 has sent ``n``
        more frames; stopped again. The output of the run."""
        base = self.tx_packets(0)
        self.run(f"set portlist {portlist}")
        self.run(f"set fwd {mode}")
        start = len(self.text())
        self.run("start", "packet forwarding - ports=")
        sent = self.wait_tx(0, base + n) - base
        self.run("stop", "Done.")
        assert sent == n, f"testpmd sent {sent} of {n} frames to the core:\n{self.text()[-3000:]}"
        return self.text()[start:]


def captured(fab, p, path):
    """The frames tcpdump ``p`` wrote to ``path``, once it has stopped."""
    p.send_signal(signal.SIGINT)
    p.wait(30)
    fab.helpers.remove(p)
    return [bytes(f) for f in rdpcap(str(path))]


def test_offloaded_checksums_of_a_vhost_pod_arrive_valid(fabric, sockdir):
    fab = fabric()
    node = node_with_sockets(fab, sockdir, 1, [HOST_VTEP])
    vm = fab.kernel_host(["10.99.0.1"])
    h = f"{fab.tag}h"
    vpod = add_pod(fab, node, "v")
    dpod = add_pod(fab, node, "d", "vhost-user")
    vp, dp = vpod["planes"][0], dpod["planes"][0]
    assert dp["kind"] == "vhost-user" and dp["port"] is not None, dp
    src = (dp["mac"], dp["ip"])
    to = {"pod": ((vp["mac"], vp["ip"]), vpod["ns"]), "vm": ((VM_MAC, VM_IP), vm)}
    # the kernels' answers (RST, port unreachable) need no ARP of the pod
    for (_, ip), ns in to.values():
        ipn(ns, f"neigh replace {dp['ip']} lladdr {dp['mac']} dev eth0 nud permanent")

    def build(tag):
        return {
            (where, l4): [frame(l4, src, dst, tag, i) for i in range(N)]
            for where, (dst, _) in to.items()
            for l4 in ("UDP", "TCP")
        }

    off, bad = build("off"), build("bad")
    for fs in off.values():  # a field left partial is told apart from a full one
        assert all(full_csum(Ether(f)) != pseudo_header_sum(Ether(f)) for f in fs)
    bad = {k: [wrong(f) for f in fs] for k, fs in bad.items()}
    wrpcap(str(fab.tmp / "off.pcap"), [Ether(f) for fs in off.values() for f in fs])
    wrpcap(str(fab.tmp / "bad.pcap"), [Ether(f) for fs in bad.values() for f in fs])
    n_all = sum(map(len, off.values()))

    caps = {
        where: (
            fab.capture(
                ns, "eth0", fab.tmp / f"{where}.pcap", f"ether src {dp['mac']} and ether dst {mac}"
            ),
            fab.tmp / f"{where}.pcap",
        )
        for where, ((mac, _), ns) in to.items()
    }
    tp = PodPmd(dpod["ns"], fab.tmp, dp)
    try:
        tp.link_up()
        tp.run("port stop 0")
        shown = tp.run("csum set udp hw 0") + tp.run("csum set tcp hw 0")
        shown += tp.run("csum parse-tunnel off 0") + tp.run("csum mac-swap off 0")
        tp.run("port start 0")
        tp.link_up()
        offloads = tp.run("show port 0 tx_offload configuration")

        # the control: wrong checksums, sent plainly
        drops0 = node.status()["drops"]
        base = {ns: snmp(ns) for _, ns in to.values()}
        base_h = snmp(h)
        tp.forward("2,0", "io", n_all)
        bad_counts = {w: wait_counted(ns, base[ns], 2 * N) for w, (_, ns) in to.items()}

        # the checksums left to offload
        base = {ns: snmp(ns) for _, ns in to.values()}
        tp.run("set verbose 1")
        verbose = tp.forward("1,0", "csum", n_all)
        tp.run("set verbose 0")
        off_counts = {w: wait_counted(ns, base[ns], 2 * N) for w, (_, ns) in to.items()}
        h_counts = delta(snmp(h), base_h)
        drops = {k: v - drops0.get(k, 0) for k, v in node.status()["drops"].items()}
        got = {w: captured(fab, p, path) for w, (p, path) in caps.items()}
        port = [p for p in node.status()["ports"] if p["port"] == dp["port"]][0]
        log = node.log()
    finally:
        tp.close()
    drops = {k: v for k, v in drops.items() if v}
    said = f"core drops since the first frame: {drops}; pod port: {port}"

    # the pod really left its checksums to offload: the engine is set to hw
    # on a port that takes it, and every frame it sent on went flagged,
    # with the lengths that make csum_start 34
    assert "not supported" not in shown and "Please stop" not in shown, shown
    assert "UDP checksum offload is hw" in shown and "TCP checksum offload is hw" in shown, shown
    assert "UDP_CKSUM" in offloads and "TCP_CKSUM" in offloads, offloads
    # (testpmd's verbose lines of another port's frames - the kernels'
    # answers coming back - may cut into a block: CI once found 61 of the
    # 64; every whole block found is counted, none may lack its flag)
    blocks = re.findall(r"port=1, mbuf=.*\nrx: .*\ntx: m->(.*)\ntx: flags=(.*)", verbose)
    udp = [b for b in blocks if "RTE_MBUF_F_TX_UDP_CKSUM" in b[1]]
    tcp = [b for b in blocks if "RTE_MBUF_F_TX_TCP_CKSUM" in b[1]]
    assert len(udp) + len(tcp) == len(blocks) >= n_all - 8, verbose[-4000:]
    assert min(len(udp), len(tcp)) >= 2 * N - 8, verbose[-4000:]
    assert all(b[0].startswith("l2_len=14 m->l3_len=20") for b in blocks), blocks
    # ... and the core's net_vhost port, which negotiated VIRTIO_NET_F_CSUM
    # and was not asked for rx checksum offload, said it finishes them
    assert "Rx csum will be done in SW" in log, log[-3000:]

    for where, (_, ns) in to.items():
        frames = got[where]
        for l4 in ("UDP", "TCP"):
            # the control arrives with its wrong checksum, byte for byte
            tagged = [f for f in frames if f"bad{l4}".encode() in f]
            assert tagged == bad[(where, l4)], f"{where} {l4} control: {said}"
            # the offloaded ones: each as the pod would have sent it with
            # its checksum computed, not the pseudo-header sum
            tagged = [f for f in frames if f"off{l4}".encode() in f]
            fields = [
                (hex(l4_of(Ether(f)).chksum), hex(pseudo_header_sum(Ether(f)))) for f in tagged
            ]
            assert all(full_csum(Ether(f)) == l4_of(Ether(f)).chksum for f in tagged), (
                f"{where} {l4}: {len(tagged)} frames arrived, checksum fields (field, "
                f"pseudo-header sum) {fields}; {said}"
            )
            assert tagged == off[(where, l4)], f"{where} {l4}: {len(tagged)} of {N}; {said}"
        assert len(frames) == 4 * N, f"{where}: {len(frames)} frames from the pod; {said}"
        # the receiving kernel's word: every control frame a checksum
        # error, none of the offloaded ones
        b, o = bad_counts[where], off_counts[where]
        assert b["Udp.InCsumErrors"] == N and b["Tcp.InCsumErrors"] == N, (where, b, said)
        assert b["Udp.NoPorts"] == 0, (where, b)
        assert o["Udp.InCsumErrors"] == 0 and o["Tcp.InCsumErrors"] == 0, (where, o, said)
        assert o["Udp.NoPorts"] == N and o["Tcp.InSegs"] == N, (where, o, said)
    # the kernel VTEP found every outer UDP checksum right
    assert h_counts["Udp.InCsumErrors"] == 0, h_counts
    assert port["rx_packets"] >= 2 * n_all, said
