"""A hostile-frame corpus against the running node service.

At least 100,000 frames of more than fifteen kinds are sent at the uplink
(from an attacker on the underlay) and from inside a pod (through a packet
socket, as any process in a pod can): truncations at every header, bad
VXLAN flags and reserved bits, unknown VNIs, forged source VTEPs, IHL and
length lies, bad checksums, fragments, IP options, VLAN and QinQ, IPv6,
runts, jumbo frames, VXLAN in VXLAN, ARP spoofing of the VTEP and of pods,
broadcast, multicast and unknown-unicast floods, random bytes. Afterwards:
the service still runs; every frame it received was forwarded or counted
under a drop reason (the sums are exact); its mbuf pool is back where it
was; the pods and the host behind the kernel VTEP still talk.

The fabric is the one of test_kernel_pods (node 1 with pods a and b, a host
behind the kernel's own VTEP), plus an attacker namespace on the underlay.
"""

import os
import random
import sys
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_RA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from dataplane.checks import ipv6_link_local
from tests.test_kernel_pods import HOST_VTEP, SUBNET, VM_IP, VM_MAC, Fabric, ipn, nsx, reach

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, DPDK EAL)"),
]

N_FRAMES = 100_000  # per side
VTEP_IP, VNI = "10.99.0.1", 101
ATTACKER_IP, ATTACKER_MAC = "10.99.0.66", "02:00:0a:63:00:42"
A_IP, B_IP = SUBNET + "11", SUBNET + "12"
BCAST = "ff:ff:ff:ff:ff:ff"
QUIET = 0x88B5  # IEEE local experimental: no host answers it

# sends the frames of file argv[2] (hex, one a line) round-robin until
# argv[3] frames went out of interface argv[1], paced (a burst, then a pause)
# so that the link, not the sender, is what is measured; prints how many
# went out and how many the kernel refused (longer than the interface's MTU)
SENDER = """
import socket, sys, time
frames = [bytes.fromhex(x) for x in open(sys.argv[2]).read().split()]
total = int(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
sent = refused = 0
i = 0
while sent + refused < total:
    f = frames[i % len(frames)]
    i += 1
    try:
        s.send(f)
        sent += 1
    except OSError as e:
        if e.errno in (22, 90):  # EINVAL (no Ethernet header), EMSGSIZE
            refused += 1
            continue
        if e.errno != 105:  # ENOBUFS: wait for the queue
            raise
        time.sleep(0.001)
        continue
    if sent % 64 == 0:
        time.sleep(0.0015)
print(sent, refused)
"""


def rnd_mac(r):
    return "02:%02x:%02x:%02x:%02x:%02x" % tuple(r.randrange(256) for _ in range(5))


def trunc_all(frame, cuts=(14, 15, 20, 33, 34, 35, 41, 42, 43, 49, 50, 55, 63)):
    raw = bytes(frame)
    return [raw[:c] for c in cuts if c < len(raw)]


# ------------------------------------------------------------ uplink corpus
def uplink_corpus(vtep_mac, a_mac, r):
    """{kind: [frame, ...]} at the uplink."""

    def vx(
        inner,
        src=HOST_VTEP,
        dst=VTEP_IP,
        vni=VNI,
        flags=0x08,
        dport=4789,
        ip_kw=None,
        udp_kw=None,
        dmac=None,
    ):
        return (
            Ether(src=ATTACKER_MAC, dst=dmac or vtep_mac)
            / IP(src=src, dst=dst, **(ip_kw or {}))
            / UDP(sport=r.randrange(49152, 65536), dport=dport, chksum=0, **(udp_kw or {}))
            / VXLAN(flags=flags, vni=vni)
            / inner
        )

    def quiet(dst=a_mac, n=40):
        return Ether(src=rnd_mac(r), dst=dst, type=QUIET) / Raw(
            bytes(r.randrange(256) for _ in range(n))
        )

    k = {}
    k["delivered"] = [vx(quiet()) for _ in range(20)]
    k["truncated"] = [t for _ in range(3) for t in trunc_all(vx(quiet()))] + trunc_all(
        vx(quiet()), cuts=(64, 70, 75)
    )
    k["vxlan_flags"] = [vx(quiet(), flags=f) for f in (0x00, 0x04, 0x80, 0x0C & 0x04)]
    k["vxlan_reserved"] = [vx(quiet(), flags=f) for f in (0xFF, 0x0C, 0x48)]
    k["unknown_vni"] = [vx(quiet(), vni=v) for v in (1, 999, 16777215, 102)]
    k["forged_vtep"] = [
        vx(quiet(), src=s) for s in ("10.99.0.77", "10.99.0.66", "1.2.3.4", VTEP_IP)
    ]
    ihl = []
    for h in (0, 3, 4, 6, 15):
        raw = bytearray(bytes(vx(quiet())))
        raw[14] = 0x40 | h
        ihl.append(bytes(raw))
    k["ihl_lies"] = ihl
    lens = []
    for n in (0, 19, 20, 28, 36, 60, 1000, 65535):
        lens.append(vx(quiet(), ip_kw={"len": n}))
    for n in (0, 7, 8, 16, 400, 65535):
        lens.append(vx(quiet(), udp_kw={"len": n}))
    k["length_lies"] = lens
    k["bad_checksum"] = [vx(quiet(), ip_kw={"chksum": c}) for c in (0, 1, 0xFFFF)]
    k["fragments"] = [
        vx(quiet(), ip_kw={"flags": "MF"}),
        vx(quiet(), ip_kw={"frag": 100}),
        vx(quiet(), ip_kw={"flags": "MF", "frag": 7}),
    ]
    k["ip_options"] = [
        vx(quiet(), ip_kw={"options": [IPOption_NOP()] * 4}),
        vx(quiet(), ip_kw={"options": [IPOption_RR()]}),
    ]
    k["vlan_qinq"] = [
        Ether(src=ATTACKER_MAC, dst=vtep_mac)
        / Dot1Q(vlan=10)
        / IP(src=HOST_VTEP, dst=VTEP_IP)
        / UDP(dport=4789)
        / VXLAN(flags=8, vni=VNI)
        / quiet(),
        Ether(src=ATTACKER_MAC, dst=vtep_mac)
        / Dot1AD(vlan=10)
        / Dot1Q(vlan=20)
        / IP(src=HOST_VTEP, dst=VTEP_IP)
        / UDP(dport=4789),
        vx(
            Ether(src=rnd_mac(r), dst=a_mac)
            / Dot1Q(vlan=5)
            / Dot1Q(vlan=6, type=QUIET)
            / Raw(b"q" * 30)
        ),
    ]
    k["ipv6"] = [
        Ether(src=ATTACKER_MAC, dst=vtep_mac)
        / IPv6(src="fd00::66", dst="fd00::1")
        / UDP(dport=4789),
        vx(Ether(src=rnd_mac(r), dst=a_mac) / IPv6(src="fe80::66", dst="fe80::1") / UDP(dport=9)),
    ]
    # a Linux link carries nothing shorter than an Ethernet header
    k["runts"] = [bytes(r.randrange(256) for _ in range(n)) for n in (14, 15, 30, 59)] + [
        bytes(Ether(src=ATTACKER_MAC, dst=vtep_mac, type=0x0800)) + b"\x45"
    ]
    k["vxlan_in_vxlan"] = [
        vx(
            Ether(src=rnd_mac(r), dst=a_mac)
            / IP(src="10.99.0.50", dst="192.168.77.1")
            / UDP(dport=4789)
            / VXLAN(flags=8, vni=VNI)
            / quiet()
        ),
        vx(vx(quiet())),
    ]
    k["not_for_us"] = [
        vx(quiet(), dst="10.99.0.9"),
        vx(quiet(), dmac="02:00:0a:63:09:09"),
        Ether(src=ATTACKER_MAC, dst=BCAST)
        / IP(src=ATTACKER_IP, dst="10.99.0.255")
        / UDP(dport=4789),
    ]
    k["not_vxlan"] = [
        Ether(src=ATTACKER_MAC, dst=vtep_mac) / IP(src=ATTACKER_IP, dst=VTEP_IP) / TCP(dport=4789),
        Ether(src=ATTACKER_MAC, dst=vtep_mac) / IP(src=ATTACKER_IP, dst=VTEP_IP) / ICMP(),
        vx(quiet(), dport=4790),
    ]
    arp = []
    for op in (1, 2):
        # the VTEP's own address claimed, a next hop's claimed, nobody asked
        arp.append(
            Ether(src=ATTACKER_MAC, dst=BCAST)
            / ARP(op=op, hwsrc=ATTACKER_MAC, psrc=VTEP_IP, pdst=VTEP_IP)
        )
        arp.append(
            Ether(src=ATTACKER_MAC, dst=vtep_mac)
            / ARP(op=op, hwsrc=ATTACKER_MAC, psrc=HOST_VTEP, pdst=VTEP_IP, hwdst=vtep_mac)
        )
        arp.append(
            Ether(src=ATTACKER_MAC, dst=vtep_mac)
            / ARP(op=op, hwsrc="01:00:5e:00:00:01", psrc="10.99.0.70", pdst=VTEP_IP)
        )
        arp.append(
            Ether(src=ATTACKER_MAC, dst=BCAST)
            / ARP(op=op, hwsrc=ATTACKER_MAC, psrc="10.99.0.71", pdst="10.99.0.72")
        )
        arp.append(
            Ether(src=ATTACKER_MAC, dst=BCAST)
            / ARP(op=op, hwtype=6, hwsrc=ATTACKER_MAC, psrc=HOST_VTEP, pdst=VTEP_IP)
        )
    arp += trunc_all(arp[0], cuts=(14, 20, 30, 41))
    k["arp_spoofing"] = arp
    k["broadcast_flood"] = [
        vx(Ether(src=rnd_mac(r), dst=BCAST, type=QUIET) / Raw(b"b" * 46)) for _ in range(5)
    ] + [Ether(src=ATTACKER_MAC, dst=BCAST, type=QUIET) / Raw(b"f" * 46)]
    rand = []
    for _ in range(300):
        # a unicast source: the underlay's bridge forwards nothing else
        n = r.randrange(14, 1515)
        dst = vtep_mac if r.random() < 0.5 else rnd_mac(r)
        head = bytes.fromhex((dst + rnd_mac(r)).replace(":", ""))
        rand.append(head + bytes(r.randrange(256) for _ in range(n - len(head))))
    for _ in range(100):  # well-formed outer headers, random rest
        raw = bytes(vx(quiet()))[:50]
        rand.append(raw + bytes(r.randrange(256) for _ in range(r.randrange(0, 200))))
    k["random"] = rand
    return {kind: [bytes(f) for f in frames] for kind, frames in k.items()}


# --------------------------------------------------------------- pod corpus
def pod_corpus(b_mac, a_mac, r):
    """{kind: [frame, ...]} sent by pod b (its address B_IP)."""

    def own(dst=a_mac, src_ip=B_IP, dst_ip="192.168.50.99", **kw):
        return (
            Ether(src=b_mac, dst=dst)
            / IP(src=src_ip, dst=dst_ip, **kw)
            / UDP(dport=9)
            / Raw(b"o" * 20)
        )

    k = {}
    k["spoof_mac"] = [
        Ether(src=m, dst=a_mac, type=QUIET) / Raw(b"m" * 46) for m in (a_mac, VM_MAC, rnd_mac(r))
    ]
    k["spoof_ipv4"] = [own(src_ip=ip) for ip in (A_IP, VM_IP, "10.99.0.1", "192.168.50.255")]
    k["spoof_arp"] = [
        Ether(src=b_mac, dst=BCAST) / ARP(op=op, hwsrc=hw, psrc=ip, pdst=ip)
        for op in (1, 2)
        for hw, ip in ((b_mac, A_IP), (a_mac, B_IP), (b_mac, VM_IP), (b_mac, "10.99.0.1"))
    ]
    k["spoof_ipv6"] = [
        Ether(src=b_mac, dst=a_mac) / IPv6(src="fe80::1", dst="fe80::2") / UDP(dport=9),
        Ether(src=b_mac, dst="33:33:00:00:00:01")
        / IPv6(src="fe80::1", dst="ff02::1")
        / ICMPv6ND_NA(tgt="fe80::1", O=1)
        / ICMPv6NDOptDstLLAddr(lladdr=b_mac),
        # from ::, which only ND and MLD may use before a host has an address
        Ether(src=b_mac, dst=a_mac) / IPv6(src="::", dst="fe80::2") / UDP(dport=9),
    ]
    # a router advertisement from its own address: a pod is no router
    b_ll = str(ipv6_link_local(bytes.fromhex(b_mac.replace(":", ""))))
    k["spoof_nd"] = [
        Ether(src=b_mac, dst="33:33:00:00:00:01") / IPv6(src=b_ll, dst="ff02::1") / ICMPv6ND_RA(),
    ]
    k["vlan_qinq"] = [
        Ether(src=b_mac, dst=a_mac) / Dot1Q(vlan=3) / IP(src=A_IP, dst="192.168.50.99") / UDP(),
        Ether(src=b_mac, dst=BCAST) / Dot1AD(vlan=3) / Dot1Q(vlan=4) / ARP(hwsrc=b_mac, psrc=A_IP),
        Ether(src=b_mac, dst=a_mac) / Dot1Q(vlan=3) / Dot1Q(vlan=4) / Dot1Q(vlan=5) / IP(src=B_IP),
    ]
    k["truncated"] = trunc_all(own(), cuts=(14, 15, 20, 33)) + trunc_all(
        Ether(src=b_mac, dst=BCAST) / ARP(hwsrc=b_mac, psrc=B_IP), cuts=(14, 20, 41)
    )
    k["runts"] = [bytes.fromhex("ffffffffffff" + b_mac.replace(":", "")) + b"\x08\x00", bytes(14)]
    k["ihl_length_lies"] = [own(ihl=h) for h in (0, 4, 15)] + [own(len=n) for n in (0, 10, 65535)]
    k["fragments"] = [own(flags="MF"), own(frag=50), own(flags="MF", frag=3)]
    k["ip_options"] = [own(options=[IPOption_NOP()] * 8)]
    k["vxlan_in_vxlan"] = [
        Ether(src=b_mac, dst=VM_MAC)
        / IP(src=B_IP, dst="192.168.77.1")
        / UDP(dport=4789)
        / VXLAN(flags=8, vni=VNI)
        / Ether(src=a_mac, dst=BCAST)
        / ARP(hwsrc=a_mac, psrc=A_IP)
    ]
    k["broadcast_flood"] = [Ether(src=b_mac, dst=BCAST, type=QUIET) / Raw(b"b" * 46)] * 4 + [
        Ether(src=b_mac, dst=BCAST) / ARP(hwsrc=b_mac, psrc=B_IP, pdst="192.168.50.9%d" % i)
        for i in range(5)
    ]
    k["multicast_flood"] = [
        Ether(src=b_mac, dst="01:00:5e:01:02:%02x" % i, type=QUIET) / Raw(b"m" * 46)
        for i in range(4)
    ]
    k["unknown_unicast"] = [
        Ether(src=b_mac, dst=rnd_mac(r), type=QUIET) / Raw(b"u" * 46) for _ in range(8)
    ]
    k["jumbo"] = [own(dst=a_mac) / Raw(b"j" * n) for n in (3000, 8900)]
    rand = []
    for _ in range(300):
        n = r.randrange(8, 1400)
        head = bytes(6) if r.random() < 0.3 else bytes.fromhex("ffffffffffff")
        body = bytes(r.randrange(256) for _ in range(n))
        rand.append(
            head + (bytes.fromhex(b_mac.replace(":", "")) + body if r.random() < 0.5 else body)
        )
    k["random"] = rand
    return {kind: [bytes(f) for f in frames] for kind, frames in k.items()}


# ------------------------------------------------------------------ helpers
def mac_of(ns, dev):
    out = nsx(ns, "ip", "-o", "link", "show", dev, check=True).stdout.split()
    return out[out.index("link/ether") + 1]


def send(tmp, ns, dev, corpus, total):
    frames = [f for fs in corpus.values() for f in fs]
    path = tmp / f"corpus-{ns}.hex"
    path.write_text("\n".join(f.hex() for f in frames))
    r = nsx(ns, sys.executable, "-c", SENDER, dev, str(path), str(total), timeout=900)
    assert r.returncode == 0, r.stderr
    sent, refused = map(int, r.stdout.split())
    return sent, refused


def totals(status):
    ports = {p["name"]: p for p in status["ports"]}
    nets = status["networks"]
    return {
        "rx": sum(p["rx_packets"] for p in ports.values()),
        "rx_uplink": sum(p["rx_packets"] for p in ports.values() if p["role"] == "uplink"),
        "tx_uplink": sum(p["tx_packets"] for p in ports.values() if p["role"] == "uplink"),
        "drops": dict(status.get("drops", {})),
        "local": sum(n["local_packets"] for n in nets),
        "encap": sum(n["encap_packets"] for n in nets),
        "flood": sum(n["flood_packets"] for n in nets),
    }


def delta(before, after):
    d = {
        k: after[k] - before[k] for k in ("rx", "rx_uplink", "tx_uplink", "local", "encap", "flood")
    }
    names = set(before["drops"]) | set(after["drops"])
    d["drops"] = {n: after["drops"].get(n, 0) - before["drops"].get(n, 0) for n in names}
    d["drops"] = {n: v for n, v in d["drops"].items() if v}
    return d


def settle(node, base_in_use, wait=10.0):
    """The node's pool back at ``base_in_use`` mbufs (what was in flight has
    left, what was queued has gone); its last status."""
    deadline = time.monotonic() + wait
    while True:
        st = node.status()
        if st["mbufs_in_use"] <= base_in_use or time.monotonic() > deadline:
            return st
        time.sleep(0.1)


def quiet_counters(node):
    """Two equal readings 0.3 s apart: nothing is in flight any more."""
    last = None
    for _ in range(50):
        st = node.status()
        t = totals(st)
        if last is not None and t == last:
            return st
        last = t
        time.sleep(0.3)
    return st


def dev_rx(ns, dev):
    """Frames interface ``dev`` in ``ns`` received (the kernel's count)."""
    return int(nsx(ns, "cat", f"/sys/class/net/{dev}/statistics/rx_packets", check=True).stdout)


@pytest.fixture
def world(tmp_path):
    fab = Fabric(tmp_path / "fabric", 1500)
    fab.tmp.mkdir()
    try:
        fab.build()
        yield make_world(fab)
    finally:
        fab.cleanup()


def make_world(fab):
    node = fab.node(1, [HOST_VTEP])
    vm = fab.kernel_host(["10.99.0.1"])
    a, b = fab.pod(1, "a", A_IP), fab.pod(1, "b", B_IP)
    # the underlay's bridge passes what it is given (with br_netfilter
    # loaded it would drop malformed IPv4 itself, before the service)
    for t in ("iptables", "ip6tables", "arptables"):
        nsx(fab.ul, "sysctl", "-qw", f"net.bridge.bridge-nf-call-{t}=0")
    # an attacker on the underlay
    x = fab.netns(f"{fab.tag}x")
    ipn(fab.ul, f"link add ulx type veth peer name eth0 netns {x}")
    ipn(fab.ul, "link set ulx master br0 up")
    ipn(x, f"link set eth0 address {ATTACKER_MAC} up")
    ipn(x, f"addr add {ATTACKER_IP}/24 dev eth0")
    reach(vm, A_IP, "vm -> pod a")
    reach(a["ns"], B_IP, "pod a -> pod b")
    return fab, node, vm, a, b, x


def still_fine(fab, node, vm, a, b):
    assert node.proc.poll() is None, f"the service exited:\n{node.log()[-3000:]}"
    reach(vm, A_IP, "vm -> pod a after the corpus", deadline=20)
    reach(a["ns"], B_IP, "pod a -> pod b after the corpus", deadline=20)
    reach(b["ns"], VM_IP, "pod b -> vm after the corpus", deadline=20)


def test_hostile_corpus(world, tmp_path):
    fab, node, vm, a, b, x = world
    r = random.Random(13)
    vtep_mac = mac_of(node.ns, "uplink0")
    a_mac = next(p["mac"] for p in a["planes"])
    b_mac = next(p["mac"] for p in b["planes"])
    b_host = next(p["host_ifname"] for p in b["planes"])
    up_kinds = uplink_corpus(vtep_mac, a_mac, r)
    pod_kinds = pod_corpus(b_mac, a_mac, r)
    assert len(up_kinds) >= 15 and len(pod_kinds) >= 15

    # --- at the uplink
    st0 = quiet_counters(node)
    base = st0["mbufs_in_use"]
    t0 = totals(st0)
    k0 = dev_rx(node.ns, "uplink0")
    sent, refused = send(tmp_path, x, "eth0", up_kinds, N_FRAMES)
    assert sent == N_FRAMES and refused == 0
    st1 = quiet_counters(node)
    d = delta(t0, totals(st1))
    arrived = dev_rx(node.ns, "uplink0") - k0
    kernel = sum(v for k, v in d["drops"].items() if k.startswith("kport_"))
    core = sum(v for k, v in d["drops"].items() if not k.startswith("kport_"))
    # what the underlay delivered to the uplink (its bridge drops some of
    # the junk, as a switch would), the service took in or its kernel ring
    # counted
    assert arrived >= sent // 2, (arrived, sent)
    assert d["rx_uplink"] + kernel == arrived, (arrived, d)
    print(f"uplink: {sent} sent, {arrived} arrived, {len(up_kinds)} kinds: {d}")
    # every frame the core took in: dropped with a reason, delivered, flooded
    # to the pods, or (an ARP request for the VTEP) answered on the uplink;
    # what the pods said meanwhile (ARP among themselves) was forwarded too,
    # a flood of theirs counted twice (flood, and its copy to the remote VTEP)
    answered = d["rx"] - (core + d["local"] + d["flood"] + d["encap"])
    pods = d["rx"] - d["rx_uplink"]
    assert -pods <= answered <= d["tx_uplink"], d
    for reason in (
        "truncated",
        "bad_ip",
        "udp_length",
        "vxlan_flags",
        "unknown_vni",
        "unknown_vtep",
        "ip_fragment",
        "not_for_us",
        "uplink_non_ip",
        "not_udp",
        "udp_port",
        "arp_ignored",
        "arp_sender",
        "arp_reply",
    ):
        assert d["drops"].get(reason, 0) > 0, (reason, d["drops"])
    assert d["local"] > 0  # the well-formed ones were delivered
    st = settle(node, base)
    assert st["mbufs_in_use"] <= base, (st["mbufs_in_use"], base)
    still_fine(fab, node, vm, a, b)

    # --- from inside pod b: its veth takes jumbo frames, its port does not
    ipn(b["ns"], "link set eth0 mtu 9000")
    ipn(node.ns, f"link set {b_host} mtu 9000")
    st0 = quiet_counters(node)
    base = st0["mbufs_in_use"]
    t0 = totals(st0)
    k0 = dev_rx(node.ns, b_host)
    sent, refused = send(tmp_path, b["ns"], "eth0", pod_kinds, N_FRAMES)
    assert sent == N_FRAMES and refused == 0
    st1 = quiet_counters(node)
    d = delta(t0, totals(st1))
    arrived = dev_rx(node.ns, b_host) - k0
    kernel = sum(v for k, v in d["drops"].items() if k.startswith("kport_"))
    core = sum(v for k, v in d["drops"].items() if not k.startswith("kport_"))
    # a pod's frame is dropped, delivered to a local pod, encapsulated, or
    # flooded: one copy to the one remote VTEP (encap_packets, or a drop)
    # (frames the underlay sent meanwhile, delivered or flooded, at most
    # one count each apart)
    assert abs(d["rx"] - (core + d["local"] + d["encap"])) <= d["rx_uplink"], d
    # pod b's own kernel may speak meanwhile (ARP, IPv6 ND after the MTU
    # change): a few frames of its own beside the corpus
    assert sent <= arrived <= sent + 16, (sent, arrived, d)
    assert d["rx"] - d["rx_uplink"] + kernel == arrived, (sent, arrived, d)
    print(f"pod: {sent} sent, {arrived} arrived, {len(pod_kinds)} kinds: {d}")
    for reason in (
        "spoof_mac",
        "spoof_ipv4",
        "spoof_arp",
        "spoof_ipv6",
        "spoof_nd",
        "storm",
        "truncated",
        "kport_oversize",
    ):
        assert d["drops"].get(reason, 0) > 0, (reason, d["drops"])
    # storm control held the floods to the configured rate (1000/s, burst 200)
    st = settle(node, base)
    assert st["mbufs_in_use"] <= base, (st["mbufs_in_use"], base)
    ipn(b["ns"], "link set eth0 mtu 1450")
    ipn(node.ns, f"link set {b_host} mtu 1450")
    still_fine(fab, node, vm, a, b)
