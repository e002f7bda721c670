"""Golden-packet tests of the forwarding core on real DPDK ports.

Frames are built with scapy, pushed into net_ring ports of an Engine running
in a child process (once with hugepages, once with --no-huge), and what comes
out is parsed back and checked field by field.
"""

import random
import socket
import struct
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from dataplane.checks import format_mac, parse_mac
from dataplane.engine import WORKER_COUNTERS
from dataplane.errors import ConfigError

VTEP_IP = "10.0.0.1"
VTEP_MAC = "02:00:0a:00:00:01"
NH_MAC = "02:00:0a:00:00:fe"
R1_VTEP, R2_VTEP, R3_VTEP = "10.0.0.2", "10.0.0.3", "10.0.0.4"
A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
R1, R2 = "02:00:00:00:01:01", "02:00:00:00:01:02"
VNI0, VNI1 = 100, 200
BCAST = "ff:ff:ff:ff:ff:ff"
WAIT = 2.0


class Topo:
    """uplink + pods a, b in network 0 (VNI 100), pod c in network 1 (VNI 200)."""

    def __init__(self, eng, static_nh=True, learning=False, mtu=1500):
        self.eng = eng
        self.base = eng.counters().drops()  # drop counters live as long as the core
        self.up = eng.add_ring_port("up", role="uplink")
        self.a = eng.add_ring_port("a")
        self.b = eng.add_ring_port("b")
        self.c = eng.add_ring_port("c")
        eng.add_network(0, vni=VNI0)
        eng.add_network(1, vni=VNI1)
        eng.set_port_network(self.a, 0)
        eng.set_port_network(self.b, 0)
        eng.set_port_network(self.c, 1)
        eng.set_vtep(
            f"{VTEP_IP}/24",
            VTEP_MAC,
            self.up,
            underlay_mtu=mtu,
            next_hop_mac=NH_MAC if static_nh else None,
            learning=learning,
        )
        eng.fdb_add_local(0, A, self.a)
        eng.fdb_add_local(0, B, self.b)
        eng.fdb_add_local(1, C, self.c)
        eng.fdb_add_remote(0, R1, R1_VTEP)
        eng.fdb_add_remote(0, R2, R2_VTEP)
        eng.set_flood(0, [R1_VTEP, R2_VTEP, R3_VTEP])

    def send(self, port, *frames):
        n = self.eng.inject(port, [bytes(f) for f in frames])
        assert n == len(frames)

    def recv(self, port, n=1, wait=WAIT):
        return [Ether(f) for f in self.eng.collect(port, wait=wait, expect=n)]

    def nothing(self, *ports):
        for p in ports:
            got = self.eng.collect(p, wait=0.2)
            assert got == [], f"port {p} got {len(got)} unexpected frames"

    def drops(self):
        return drops_since(self.eng, self.base)


def drops_since(eng, base):
    now = eng.counters().drops()
    return {k: now[k] - base[k] for k in now}


def wait_drop(eng, base, reason, n=1):
    import time

    for _ in range(200):
        if drops_since(eng, base)[reason] >= n:
            break
        time.sleep(0.01)
    return drops_since(eng, base)[reason]


def udp_frame(
    src=A, dst=R1, tos=0, sport=1000, dport=2000, size=100, ipsrc="192.168.1.1", ipdst="192.168.1.2"
):
    f = Ether(src=src, dst=dst) / IP(src=ipsrc, dst=ipdst, tos=tos) / UDP(sport=sport, dport=dport)
    return f / Raw(b"\x55" * max(0, size - len(f)))


def vxlan_frame(
    inner, vni=VNI0, src_vtep=R1_VTEP, dst_vtep=VTEP_IP, dport=4789, flags=0x08, dst_mac=VTEP_MAC
):
    return (
        Ether(src=NH_MAC, dst=dst_mac)
        / IP(src=src_vtep, dst=dst_vtep, flags="DF")
        / UDP(sport=54321, dport=dport, chksum=0)
        / VXLAN(flags=flags, vni=vni)
        / inner
    )


def ip_checksum_ok(pkt):
    raw = bytes(pkt[IP])[: pkt[IP].ihl * 4]
    s = sum(struct.unpack(f"!{len(raw) // 2}H", raw))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


@pytest.fixture
def topo(eng):
    return Topo(eng)


# ------------------------------------------------------------------ encap
def test_encap_every_field(topo):
    inner = udp_frame(tos=0xB8, size=200)
    topo.send(topo.a, inner)
    [out] = topo.recv(topo.up)
    assert out.dst == NH_MAC and out.src == VTEP_MAC and out.type == 0x0800
    ip = out[IP]
    assert (ip.version, ip.ihl) == (4, 5)
    assert ip.tos == 0xB8  # DSCP EF copied
    assert ip.len == len(bytes(inner)) + 36
    assert ip.flags == "DF" and ip.frag == 0
    assert ip.ttl == 64 and ip.proto == 17
    assert ip.src == VTEP_IP and ip.dst == R1_VTEP
    assert ip_checksum_ok(out)
    udp = out[UDP]
    assert 49152 <= udp.sport <= 65535
    assert udp.dport == 4789
    assert udp.len == len(bytes(inner)) + 16
    assert udp.chksum == 0
    vx = out[VXLAN]
    assert vx.flags == 0x08 and vx.vni == VNI0
    assert bytes(vx.payload) == bytes(inner)  # inner frame untouched
    c = topo.eng.counters()
    assert c.net_dict(0)["encap_packets"] == 1
    assert c.port_dict(topo.up)["tx_packets"] == 1
    assert c.port_dict(topo.up)["tx_bytes"] == len(bytes(out))


def test_encap_picks_vtep_per_mac(topo):
    topo.send(topo.a, udp_frame(dst=R1), udp_frame(dst=R2))
    outs = topo.recv(topo.up, 2)
    assert sorted(o[IP].dst for o in outs) == [R1_VTEP, R2_VTEP]


@pytest.mark.parametrize(
    "inner_tos,outer_tos",
    # DSCP and ECN copied, CE as ECT(0) (RFC 6040 normal mode, as the kernel's VTEP)
    [(0xB8, 0xB8), (0x60, 0x60), (0x03, 0x02), (0xBB, 0xBA), (0xB9, 0xB9), (0x02, 0x02), (0, 0)],
)
def test_encap_copies_dscp_and_ecn(topo, inner_tos, outer_tos):
    topo.send(topo.a, udp_frame(tos=inner_tos))
    [out] = topo.recv(topo.up)
    assert out[IP].tos == outer_tos
    assert ip_checksum_ok(out)


def test_encap_checksum_when_its_sum_carries_out_of_the_fold(topo):
    """The outer IPv4 checksum is the tunnel's template sum plus the TOS
    and length words, folded to 16 bits. Where the halves of that sum add
    up past 0xffff the fold needs its end-around carry. A remote VTEP
    whose address makes that reachable within the MTU (10.0.34.250 from
    10.0.0.1; with this test's other VTEPs it never happens): its
    template sum read back from a frame the core encapsulated, a frame
    whose sum carries and one beside it that does not both leave with
    valid checksums."""
    far = "02:00:00:00:01:09"
    topo.eng.fdb_add_remote(0, far, "10.0.34.250")
    topo.send(topo.a, udp_frame(dst=far))
    [first] = topo.recv(topo.up)
    assert first[IP].dst == "10.0.34.250"
    hdr = bytearray(bytes(first[IP])[:20])
    hdr[2:4] = hdr[10:12] = b"\0\0"  # total length, checksum: patched per frame
    # the words as the core adds them: native (little-endian) reads
    base = sum(struct.unpack("<9H", bytes(hdr[2:20])))

    def carries(tos, size):
        total = size + 36
        s = base + (0x45 | tos << 8) + ((total & 0xFF) << 8 | total >> 8)
        return (s >> 16) + (s & 0xFFFF) > 0xFFFF

    picks = {}
    for size in range(60, 1450):
        for tos in range(0, 256, 4):
            picks.setdefault(carries(tos, size), (tos, size))
    assert set(picks) == {True, False}
    frames = [udp_frame(dst=far, tos=tos, size=size) for tos, size in picks.values()]
    topo.send(topo.a, *frames)
    outs = topo.recv(topo.up, 2)
    assert sorted((o[IP].tos, o[IP].len) for o in outs) == sorted(
        (tos, size + 36) for tos, size in picks.values()
    )
    assert all(ip_checksum_ok(o) for o in outs)


def test_encap_ipv6_and_non_ip_inner(topo):
    v6 = Ether(src=A, dst=R1) / IPv6(src="fd00::1", dst="fd00::2", tc=0xB9) / UDP() / Raw(b"x" * 40)
    arpish = Ether(src=A, dst=R1, type=0x88B5) / Raw(b"y" * 60)
    topo.send(topo.a, v6, arpish)
    outs = topo.recv(topo.up, 2)
    by_type = {bytes(o[VXLAN].payload)[12:14]: o for o in outs}
    assert by_type[b"\x86\xdd"][IP].tos == 0xB9  # DSCP and ECN (ECT(1))
    assert by_type[b"\x88\xb5"][IP].tos == 0
    for o in outs:
        assert ip_checksum_ok(o)


def test_encap_looks_through_vlan_tags_for_dscp_and_flow(topo):
    """A pod's 802.1Q or QinQ frame: its DSCP is copied to the outer header
    and its flows spread over source ports, as an untagged frame's."""
    from scapy.layers.l2 import Dot1AD

    def tagged(tags, tos, sport):
        f = Ether(src=A, dst=R1)
        for t in tags:
            f = f / t
        return (
            f
            / IP(src="192.168.1.1", dst="192.168.1.2", tos=tos)
            / UDP(sport=sport)
            / Raw(b"\x55" * 40)
        )

    one, two = [Dot1Q(vlan=7)], [Dot1AD(vlan=5), Dot1Q(vlan=7)]
    frames = [tagged(tags, 0xB8, 1000 + i) for tags in (one, two) for i in range(16)]
    topo.send(topo.a, *frames)
    outs = topo.recv(topo.up, 32)
    assert [o[IP].tos for o in outs] == [0xB8] * 32
    for tags in (outs[:16], outs[16:]):
        assert len({o[UDP].sport for o in tags}) >= 12  # 16 flows spread out
    assert all(ip_checksum_ok(o) for o in outs)


def test_encap_source_port_entropy(topo):
    flows = [
        udp_frame(sport=1000 + i, dport=2000 + 7 * i, ipsrc=f"192.168.{i}.1") for i in range(64)
    ]
    topo.send(topo.a, *flows)
    outs = topo.recv(topo.up, 64)
    assert len(outs) == 64
    sports = {o[UDP].sport for o in outs}
    assert len(sports) >= 48  # distinct flows spread out
    assert all(49152 <= s <= 65535 for s in sports)
    # one flow always takes one source port (no reordering across paths)
    topo.send(topo.a, *[flows[5]] * 8)
    again = topo.recv(topo.up, 8)
    assert {o[UDP].sport for o in again} == {outs[5][UDP].sport}


def test_encap_ipv6_flows_differ_by_port(topo):
    """IPv6 flows between two addresses, flow label 0 (a DPDK pod, a host
    with auto_flowlabels off), spread by their L4 ports; a flow keeps its
    source port, its fragments with it (no ports read past the fragment
    header)."""
    f = [
        Ether(src=A, dst=R1) / IPv6(src="fd00::1", dst="fd00::2") / proto(sport=p, dport=80)
        for proto, ports in ((UDP, range(5000, 5008)), (TCP, range(5008, 5016)))
        for p in ports
    ]
    topo.send(topo.a, *f)
    outs = topo.recv(topo.up, 16)
    assert len({o[UDP].sport for o in outs}) >= 12
    topo.send(topo.a, *[f[3]] * 4)
    assert {o[UDP].sport for o in topo.recv(topo.up, 4)} == {outs[3][UDP].sport}


def test_encap_tcp_flows_differ_by_port(topo):
    f = [
        Ether(src=A, dst=R1) / IP(src="1.1.1.1", dst="2.2.2.2") / TCP(sport=p, dport=80)
        for p in range(5000, 5016)
    ]
    topo.send(topo.a, *f)
    outs = topo.recv(topo.up, 16)
    assert len({o[UDP].sport for o in outs}) >= 12


def test_oversize_frame_dropped_not_truncated(topo):
    # underlay MTU 1500: the largest inner frame is 1500 - 50 + 14 = 1464 bytes
    fits = udp_frame(size=1464)
    too_big = udp_frame(size=1465)
    topo.send(topo.a, fits, too_big)
    [out] = topo.recv(topo.up)
    assert len(bytes(out)) == 1514 and out[IP].len == 1500
    topo.nothing(topo.up)
    assert topo.drops()["oversize"] == 1


def test_a_mixed_burst_keeps_each_ports_order_and_counts_its_drops(topo):
    # one burst (one inject: the worker takes it at once) of every kind of
    # frame a pod sends: the common ones (to a remote VTEP) are encapsulated
    # by a loop of their own, the rest (local, flood, drops) afterwards, and
    # an oversize frame to a remote VTEP hands the rest of the burst over
    # mid-way; each port must still get its frames in the order sent
    kinds = [R1, B, R2, BCAST, "big", R1, B, A, "02:00:00:00:09:99", R2]
    frames = []
    for seq, dst in enumerate(kinds):
        if dst == "big":
            frames.append(udp_frame(dst=R1, sport=seq, size=1465))
        else:
            frames.append(udp_frame(dst=dst, sport=seq))
    topo.send(topo.a, *frames)
    # uplink: the 4 unicast frames, then 3 flood copies of each of the two
    # floods (broadcast, unknown MAC); pod b: its 2 frames, then the 2
    # floods (a burst's floods leave after its unicast frames)
    up = topo.recv(topo.up, 10)
    b = topo.recv(topo.b, 4)
    inner_up = [Ether(bytes(o[VXLAN].payload)) for o in up]
    assert [(f.dst, f[UDP].sport) for f in inner_up[:4]] == [(R1, 0), (R2, 2), (R1, 5), (R2, 9)]
    assert sorted(f[UDP].sport for f in inner_up[4:]) == [3, 3, 3, 8, 8, 8]
    assert [f[UDP].sport for f in b] == [1, 6, 3, 8]
    topo.nothing(topo.up, topo.a, topo.b, topo.c)
    d = topo.drops()
    assert d["oversize"] == 1 and d["hairpin"] == 1
    assert sum(d.values()) == 2


def test_oversize_follows_underlay_mtu(eng):
    t = Topo(eng, mtu=1000)
    t.send(t.a, udp_frame(size=964), udp_frame(size=965))
    assert len(t.recv(t.up)) == 1
    t.nothing(t.up)
    assert t.drops()["oversize"] == 1


# ------------------------------------------------------------------ decap
def test_decap_delivers_inner_frame(topo):
    inner = (
        Ether(src=R1, dst=A) / IP(src="192.168.1.2", dst="192.168.1.1") / ICMP() / Raw(b"p" * 56)
    )
    topo.send(topo.up, vxlan_frame(inner))
    [got] = topo.recv(topo.a)
    assert bytes(got) == bytes(inner)
    topo.nothing(topo.b, topo.c, topo.up)
    c = topo.eng.counters()
    assert c.net_dict(0)["decap_packets"] == 1
    assert c.port_dict(topo.a)["tx_bytes"] == len(bytes(inner))


def test_decap_uses_vni_network(topo):
    # C lives in network 1 (VNI 200); the same frame in VNI 100 must not reach it
    topo.eng.set_flood(1, [R1_VTEP])
    inner = Ether(src=R1, dst=C) / IP() / UDP() / Raw(b"z" * 30)
    topo.send(topo.up, vxlan_frame(inner, vni=VNI1))
    [got] = topo.recv(topo.c)
    assert bytes(got) == bytes(inner)
    topo.send(topo.up, vxlan_frame(inner, vni=VNI0))  # unknown in net 0: flooded there
    assert len(topo.recv(topo.a)) == 1 and len(topo.recv(topo.b)) == 1
    topo.nothing(topo.c)


def test_decap_trims_ethernet_padding(topo):
    inner = Ether(src=R1, dst=A) / IP() / UDP() / Raw(b"q" * 10)
    outer = bytes(vxlan_frame(inner)) + b"\x00" * 24  # trailer past the IP datagram
    topo.send(topo.up, outer)
    [got] = topo.recv(topo.a)
    assert bytes(got) == bytes(inner)


def test_decap_reserved_flag_bits_ignored(topo):
    # RFC 7348: reserved bits are ignored on receipt; only I must be set
    inner = Ether(src=R1, dst=A) / IP() / UDP()
    topo.send(topo.up, vxlan_frame(inner, flags=0x0C))
    assert len(topo.recv(topo.a)) == 1


# ------------------------------------------------------------ local switch
def test_local_switching_both_ways(topo):
    ab = udp_frame(src=A, dst=B)
    ba = udp_frame(src=B, dst=A)
    topo.send(topo.a, ab)
    topo.send(topo.b, ba)
    assert bytes(topo.recv(topo.b)[0]) == bytes(ab)
    assert bytes(topo.recv(topo.a)[0]) == bytes(ba)
    topo.nothing(topo.up, topo.c)
    assert topo.eng.counters().net_dict(0)["local_packets"] == 2


def test_oversize_frame_to_a_local_port_dropped(topo):
    """A pod port that sends what it likes (a DPDK pod: no kernel holds it
    to its MTU) gets no longer frame through to a local pod than to the
    underlay: 1464 bytes on a 1500-byte underlay; a flooded one neither."""
    fits = udp_frame(src=A, dst=B, size=1464)
    too_big = udp_frame(src=A, dst=B, size=1465)
    topo.send(topo.a, fits, too_big, udp_frame(src=A, dst=BCAST, size=2000))
    [out] = topo.recv(topo.b)
    assert bytes(out) == bytes(fits)
    topo.nothing(topo.b, topo.c, topo.up)
    assert topo.drops()["oversize"] == 2


def test_vlan_tags_are_not_counted_against_the_mtu_to_a_local_pod(topo):
    """A pod's VLAN sub-interface has its parent's MTU: its full-size
    packets, one tag (802.1Q) or two (802.1ad + 802.1Q) longer than the
    untagged limit (1464 bytes on a 1500-byte underlay), reach a local pod,
    as through a bridge; the underlay cannot take them (its MTU, DF set):
    to a remote VTEP, and a flood's remote copies, each counted oversize."""
    from scapy.layers.l2 import Dot1AD

    def tagged(dst, tags, size):
        f = Ether(src=A, dst=dst)
        for t in tags:
            f = f / t
        f = f / IP(src="192.168.1.1", dst="192.168.1.2") / UDP(sport=1000, dport=2000)
        return f / Raw(b"\x55" * (size - len(f)))

    one, two = [Dot1Q(vlan=7)], [Dot1AD(vlan=5), Dot1Q(vlan=7)]
    fits = [tagged(B, one, 1468), tagged(B, two, 1472)]
    topo.send(topo.a, *fits, tagged(B, one, 1469), tagged(B, two, 1473))
    assert [bytes(f) for f in topo.recv(topo.b, 2)] == [bytes(f) for f in fits]
    topo.nothing(topo.b, topo.up)
    assert topo.drops()["oversize"] == 2
    topo.send(topo.a, tagged(R1, one, 1468))
    topo.nothing(topo.up)
    assert topo.drops()["oversize"] == 3
    # a broadcast: pod b's copy; the flood list's three VTEPs none
    topo.send(topo.a, tagged(BCAST, one, 1468))
    assert len(topo.recv(topo.b)) == 1
    topo.nothing(topo.up, topo.c)
    assert topo.drops()["oversize"] == 6
    # a tagged frame within the underlay's limit goes everywhere
    topo.send(topo.a, tagged(R1, one, 1464))
    [out] = topo.recv(topo.up)
    assert out[VXLAN][Dot1Q].vlan == 7 and len(bytes(out)) == 1514


def test_networks_are_isolated(topo):
    # C is known only in network 1: from a (network 0) it is unknown unicast,
    # flooded inside network 0 only
    topo.eng.set_flood(0, [])
    topo.send(topo.a, udp_frame(src=A, dst=C))
    assert len(topo.recv(topo.b)) == 1
    topo.nothing(topo.c, topo.up)


def test_hairpin_dropped(topo):
    topo.send(topo.a, udp_frame(src=B, dst=A))
    topo.nothing(topo.a, topo.b, topo.up)
    assert topo.drops()["hairpin"] == 1


def test_port_without_network_drops(eng):
    t = Topo(eng)
    lone = eng.add_ring_port("lone")
    t.send(lone, udp_frame(src=A, dst=B))
    t.nothing(t.a, t.b, t.up)
    assert t.drops()["no_network"] == 1


# ------------------------------------------------------------------- flood
@pytest.mark.parametrize("dst", [BCAST, "01:00:5e:00:00:01", "02:00:00:00:09:09"])
def test_flood_from_pod(topo, dst):
    f = udp_frame(src=A, dst=dst, ipdst="192.168.1.255")
    topo.send(topo.a, f)
    assert bytes(topo.recv(topo.b)[0]) == bytes(f)
    outs = topo.recv(topo.up, 3)
    assert sorted(o[IP].dst for o in outs) == [R1_VTEP, R2_VTEP, R3_VTEP]
    for o in outs:
        assert o[VXLAN].vni == VNI0 and bytes(o[VXLAN].payload) == bytes(f)
        assert ip_checksum_ok(o)
    topo.nothing(topo.a, topo.c)
    assert topo.eng.counters().net_dict(0)["flood_packets"] == 1


def test_flood_from_uplink_stays_local(topo):
    inner = Ether(src=R1, dst=BCAST) / ARP(psrc="192.168.1.2", pdst="192.168.1.1")
    topo.send(topo.up, vxlan_frame(inner))
    assert bytes(topo.recv(topo.a)[0]) == bytes(inner)
    assert bytes(topo.recv(topo.b)[0]) == bytes(inner)
    topo.nothing(topo.up, topo.c)  # split horizon: never back to the underlay


def test_flood_with_nobody_to_reach(eng):
    base = eng.counters().drops()
    eng.add_network(5, vni=555)
    p = eng.add_ring_port("solo")
    eng.set_port_network(p, 5)
    eng.inject(p, [bytes(udp_frame(dst=BCAST))])
    assert eng.collect(p, wait=0.2) == []
    assert wait_drop(eng, base, "no_destination") == 1


# --------------------------------------------------------------------- ARP
def test_arp_request_for_vtep_answered(topo):
    req = Ether(src=NH_MAC, dst=BCAST) / ARP(op=1, hwsrc=NH_MAC, psrc="10.0.0.254", pdst=VTEP_IP)
    topo.send(topo.up, req)
    [rep] = topo.recv(topo.up)
    assert rep.dst == NH_MAC and rep.src == VTEP_MAC and rep.type == 0x0806
    a = rep[ARP]
    assert a.op == 2 and a.hwsrc == VTEP_MAC and a.psrc == VTEP_IP
    assert a.hwdst == NH_MAC and a.pdst == "10.0.0.254"
    assert a.hwtype == 1 and a.ptype == 0x0800 and a.hwlen == 6 and a.plen == 4


def test_arp_for_other_address_ignored(topo):
    topo.send(
        topo.up, Ether(src=NH_MAC, dst=BCAST) / ARP(op=1, psrc="10.0.0.254", pdst="10.0.0.99")
    )
    topo.nothing(topo.up, topo.a)
    assert topo.drops()["arp_ignored"] == 1


def _tagged(tag, dst=R1):
    """a frame from pod a to dst whose UDP payload is tag"""
    return (
        Ether(src=A, dst=dst)
        / IP(src="192.168.1.1", dst="192.168.1.2")
        / UDP(sport=1000, dport=2000)
        / Raw(tag)
    )


def _held(eng):
    return int(eng.counters().worker[:, WORKER_COUNTERS.index("neigh_held")].sum())


def _wait_held(eng, base, n):
    """frames held since the count was base, once n were or 2 s passed"""
    for _ in range(200):
        if _held(eng) - base >= n:
            break
        time.sleep(0.01)
    return _held(eng) - base


def _arp_reply(t, vtep_ip, mac):
    t.send(
        t.up,
        Ether(src=mac, dst=VTEP_MAC)
        / ARP(op=2, hwsrc=mac, psrc=vtep_ip, hwdst=VTEP_MAC, pdst=VTEP_IP),
    )
    for _ in range(200):
        if t.eng.neighbor(vtep_ip):
            break
        time.sleep(0.01)
    assert t.eng.neighbor(vtep_ip) == mac


def _tunnelled(t, n):
    """the next n VXLAN frames out of the uplink (ARP requests skipped)"""
    got = []
    for _ in range(10):
        got += [o for o in t.recv(t.up, n - len(got)) if o.haslayer(VXLAN)]
        if len(got) >= n:
            break
    return got


def test_next_hop_resolved_by_arp(eng):
    t = Topo(eng, static_nh=False)
    h0 = _held(eng)
    # before resolution the frame is held, not dropped
    t.send(t.a, _tagged(b"first"))
    assert _wait_held(eng, h0, 1) == 1
    # housekeeping asks for each unresolved next hop on the uplink
    reqs = []
    for f in eng.collect(t.up, wait=WAIT, expect=3):
        p = Ether(f)
        assert p.dst == BCAST and p[ARP].op == 1
        assert p[ARP].psrc == VTEP_IP and p[ARP].hwsrc == VTEP_MAC
        reqs.append(p[ARP].pdst)
    assert sorted(reqs) == [R1_VTEP, R2_VTEP, R3_VTEP]
    assert t.drops()["neigh_unresolved"] == 0
    # the neighbour answers; the core learns it, sends the held frame, and
    # encapsulates the next straight to it
    peer_mac = "02:00:0a:00:00:02"
    _arp_reply(t, R1_VTEP, peer_mac)
    [held] = _tunnelled(t, 1)
    assert held.dst == peer_mac and held[IP].dst == R1_VTEP
    assert held[VXLAN][Ether].dst == R1 and bytes(held[VXLAN][UDP].payload) == b"first"
    t.send(t.a, _tagged(b"second"))
    [out] = _tunnelled(t, 1)
    assert out.dst == peer_mac and bytes(out[VXLAN][UDP].payload) == b"second"
    assert _held(eng) - h0 == 1 and t.drops()["neigh_unresolved"] == 0


def test_without_an_uplink_floods_and_held_frames_count_as_no_uplink(eng):
    """The VTEP without an uplink (as between a reset and the next VTEP, or
    while a re-created uplink is attached again): a flood's remote copies
    and the frames held for a next hop are each counted as no_uplink."""
    t = Topo(eng, static_nh=False)
    h0 = _held(eng)
    t.send(t.a, _tagged(b"held"))
    assert _wait_held(eng, h0, 1) == 1
    base = eng.counters().drops()
    eng.set_vtep(f"{VTEP_IP}/24", VTEP_MAC, -1)
    assert wait_drop(eng, base, "no_uplink", 1) == 1
    # a broadcast in network 0: pod b's copy, three remote copies not made
    base = eng.counters().drops()
    bcast = Ether(src=A, dst=BCAST) / IP(src="192.168.1.1", dst="192.168.1.255") / UDP()
    t.send(t.a, bcast)
    assert len(t.recv(t.b)) == 1
    assert wait_drop(eng, base, "no_uplink", 3) == 3
    # network 1: pod c alone, and its flood list's two VTEPs: one per copy,
    # the frame itself the last
    eng.set_flood(1, [R1_VTEP, R2_VTEP])
    base = eng.counters().drops()
    t.send(t.c, Ether(src=C, dst=BCAST) / IP() / UDP())
    assert wait_drop(eng, base, "no_uplink", 2) == 2
    t.nothing(t.a, t.b)
    # (the ARP requests asked while the VTEP had its uplink may be there)
    out = [Ether(f) for f in eng.collect(t.up, wait=0.2)]
    assert [p.summary() for p in out if not p.haslayer(ARP)] == []
    d = drops_since(eng, base)
    assert d["no_uplink"] == 2 and d["no_destination"] == 0, d


def test_a_reset_forgets_the_neighbours(eng):
    """A next hop resolved by ARP, then the engine reset: the next VTEP
    asks for it again, as for one it never knew."""

    def asked_for(t, ip):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for f in eng.collect(t.up, max_frames=100, wait=0.1):
                if Ether(f).haslayer(ARP) and Ether(f)[ARP].pdst == ip:
                    return True
        return False

    t = Topo(eng, static_nh=False)
    eng.set_neighbor("10.0.0.9", "02:00:0a:00:00:09")
    assert asked_for(t, R1_VTEP)
    _arp_reply(t, R1_VTEP, "02:00:0a:00:00:02")
    eng.reset()
    assert eng.neighbor(R1_VTEP) is None and eng.neighbor("10.0.0.9") is None
    assert asked_for(Topo(eng, static_nh=False), R1_VTEP)


def _fresh_remote(eng, k):
    """a remote MAC behind a VTEP no earlier test resolved (the core keeps
    its neighbours across tests)"""
    mac, vtep = "02:00:00:00:02:%02x" % k, "10.0.0.%d" % (30 + k)
    eng.fdb_add_remote(0, mac, vtep)
    return mac, vtep


def test_held_frames_leave_in_order_over_the_limit_dropped(eng):
    """a worker holds 64 frames for next hops being resolved; the 65th on
    is dropped at once, the held ones leave in the order they came"""
    t = Topo(eng, static_nh=False)
    mac, vtep = _fresh_remote(eng, 1)
    h0 = _held(eng)
    t.send(t.a, *[_tagged(b"%03d" % i, mac) for i in range(70)])
    assert _wait_held(eng, h0, 64) == 64
    assert wait_drop(eng, t.base, "neigh_unresolved", 6) == 6
    eng.collect(t.up, wait=0.2)  # the ARP requests
    _arp_reply(t, vtep, "02:00:0a:00:00:31")
    outs = _tunnelled(t, 64)
    got = [bytes(o[VXLAN][UDP].payload) for o in outs]
    assert got == [b"%03d" % i for i in range(64)]
    assert t.drops()["neigh_unresolved"] == 6


def test_held_frames_dropped_when_nobody_answers(eng):
    """held no longer than a second, as the kernel's neighbour queue"""
    t = Topo(eng, static_nh=False)
    mac, _ = _fresh_remote(eng, 2)
    h0 = _held(eng)
    t.send(t.a, *[udp_frame(dst=mac) for _ in range(3)])
    assert _wait_held(eng, h0, 3) == 3
    assert t.drops()["neigh_unresolved"] == 0
    for _ in range(300):
        if t.drops()["neigh_unresolved"] >= 3:
            break
        time.sleep(0.01)
    assert t.drops()["neigh_unresolved"] == 3
    assert not [f for f in eng.collect(t.up, wait=0.2) if Ether(f).haslayer(VXLAN)]


def test_frames_to_a_next_hop_that_did_not_answer_are_not_held_again(eng):
    """Once a next hop left its held frames unanswered for the hold time (a
    node down), its later frames are dropped at once instead of held: they
    do not take the slots the first frames to another node need."""
    t = Topo(eng, static_nh=False)
    dead_mac, _ = _fresh_remote(eng, 4)
    new_mac, new_vtep = _fresh_remote(eng, 5)
    h0 = _held(eng)
    t.send(t.a, udp_frame(dst=dead_mac))
    assert _wait_held(eng, h0, 1) == 1
    for _ in range(300):  # the hold time (2 s)
        if t.drops()["neigh_unresolved"] >= 1:
            break
        time.sleep(0.01)
    assert t.drops()["neigh_unresolved"] == 1
    h1 = _held(eng)
    t.send(t.a, *[_tagged(b"d%02d" % i, dead_mac) for i in range(70)])
    assert wait_drop(eng, t.base, "neigh_unresolved", 71) == 71
    assert _held(eng) == h1
    # the first frame to a node being resolved is held, and leaves once its
    # next hop answers
    t.send(t.a, _tagged(b"new", new_mac))
    assert _wait_held(eng, h1, 1) == 1
    eng.collect(t.up, wait=0.2)  # the ARP requests
    _arp_reply(t, new_vtep, "02:00:0a:00:00:35")
    [out] = _tunnelled(t, 1)
    assert out[IP].dst == new_vtep and bytes(out[VXLAN][UDP].payload) == b"new"
    assert t.drops()["neigh_unresolved"] == 71


def test_held_frame_dropped_when_its_tunnel_goes(eng):
    t = Topo(eng, static_nh=False)
    mac, _ = _fresh_remote(eng, 3)
    h0 = _held(eng)
    t.send(t.a, udp_frame(dst=mac))
    assert _wait_held(eng, h0, 1) == 1
    eng.fdb_del(0, mac)  # its tunnel's only user
    assert wait_drop(eng, t.base, "neigh_unresolved") == 1
    assert _held(eng) - h0 == 1
    assert not [f for f in eng.collect(t.up, wait=0.2) if Ether(f).haslayer(VXLAN)]


# ------------------------------------------------------------ drop reasons
def _dropped(topo, frame, reason, port=None):
    before = topo.drops()[reason]
    topo.send(topo.up if port is None else port, frame)
    for _ in range(200):  # counted once a worker had the frame, however late
        if topo.drops()[reason] > before:
            break
        time.sleep(0.01)
    topo.nothing(topo.a, topo.b, topo.c)
    assert topo.drops()[reason] == before + 1, topo.drops()


def test_drop_vxlan_flags(topo):
    _dropped(topo, vxlan_frame(udp_frame(src=R1, dst=A), flags=0x00), "vxlan_flags")


def test_drop_unknown_vni(topo):
    _dropped(topo, vxlan_frame(udp_frame(src=R1, dst=A), vni=4242), "unknown_vni")


def test_drop_unknown_vtep(topo):
    _dropped(topo, vxlan_frame(udp_frame(src=R1, dst=A), src_vtep="10.0.0.77"), "unknown_vtep")


def test_learning_accepts_and_learns_unknown_vtep(eng):
    t = Topo(eng, learning=True)
    inner = udp_frame(src="02:00:00:00:07:07", dst=A)
    t.send(t.up, vxlan_frame(inner, src_vtep="10.0.0.77"))
    assert bytes(t.recv(t.a)[0]) == bytes(inner)
    import time

    for _ in range(200):
        if eng.fdb_get(0, "02:00:00:00:07:07"):
            break
        time.sleep(0.01)
    assert eng.fdb_get(0, "02:00:00:00:07:07") == ("remote", "10.0.0.77")


@pytest.mark.parametrize("change", ["network replaced", "learning off"])
def test_a_learning_report_made_before_a_change_is_not_applied_after_it(eng, change):
    """A worker reports a MAC behind an unknown VTEP of network 0 (VNI
    100); before the control thread takes the report, network 0 is removed
    and index 0 given to VNI 999 - or learning is switched off. The report
    is not applied: no entry, no tunnel from that VTEP into the new
    network, whose frames from it are dropped as unknown_vtep."""
    t = Topo(eng, learning=True)
    mac = "02:00:00:00:07:07"
    eng.stop()
    eng.start(housekeeping_interval=0)  # the workers alone: the report waits
    try:
        t.send(t.up, vxlan_frame(udp_frame(src=mac, dst=A), src_vtep="10.0.0.77"))
        assert t.recv(t.a)  # delivered, and reported
        if change == "network replaced":
            for port in (t.a, t.b):
                eng.set_port_network(port, None)
            eng.del_network(0)
            eng.add_network(0, vni=999)
            eng.set_port_network(t.a, 0)
            eng.fdb_add_local(0, A, t.a)
        else:
            eng.set_vtep(f"{VTEP_IP}/24", VTEP_MAC, t.up, next_hop_mac=NH_MAC, learning=False)
        eng.housekeeping()
        assert eng.fdb_get(0, mac) is None
        # no tunnel from that VTEP either: with learning off, its frames
        # are refused
        eng.set_vtep(f"{VTEP_IP}/24", VTEP_MAC, t.up, next_hop_mac=NH_MAC, learning=False)
        base = t.drops()
        vni = 999 if change == "network replaced" else VNI0
        t.send(t.up, vxlan_frame(udp_frame(src=mac, dst=A), vni=vni, src_vtep="10.0.0.77"))
        t.nothing(t.a)
        assert t.drops()["unknown_vtep"] - base["unknown_vtep"] == 1, t.drops()
    finally:
        eng.stop()
        eng.start()


def learn_from(t, mac, vtep):
    """A frame from ``mac`` behind ``vtep`` to pod a, delivered; then wait
    until the control thread has learned it."""
    t.send(t.up, vxlan_frame(udp_frame(src=mac, dst=A), src_vtep=vtep))
    t.recv(t.a)
    for _ in range(200):
        if t.eng.fdb_get(0, mac):
            return
        time.sleep(0.01)
    raise AssertionError(f"{mac} behind {vtep} not learned")


def test_learning_from_at_most_half_the_tunnel_slots_of_vteps(eng):
    """Frames from 600 source VTEPs (spoofed addresses, one MAC each):
    entries are learned from 512 of them, half the core's tunnel table;
    the rest are refused and counted (limit), and the control API can still
    add remote VTEPs. Once those learned entries age out, VTEPs are learned
    from again."""
    t = Topo(eng, learning=True)
    eng.set_learning_limits(age_s=30.0)
    base = eng.learn_stats()

    def vtep(i):
        return f"10.1.{i // 250}.{i % 250 + 1}"

    def hear(lo, hi):
        for k in range(lo, hi, 32):  # within the workers' report budget
            n = min(32, hi - k)
            frames = [
                vxlan_frame(
                    udp_frame(src=f"02:00:00:01:{i >> 8:02x}:{i & 255:02x}", dst=A),
                    src_vtep=vtep(i),
                )  # fmt: skip
                for i in range(k, k + n)
            ]
            t.send(t.up, *frames)
            t.recv(t.a, n)
            time.sleep(0.005)

    def vteps():
        return {e.vtep for e in eng.fdb_list(0) if e.learned}

    hear(0, 600)
    end = time.monotonic() + 20  # the control thread takes the reports
    while time.monotonic() < end:
        st = eng.learn_stats()
        if st["learned"] - base["learned"] >= 512 and (
            st["refused_limit"] - base["refused_limit"] >= 88
        ):
            break
        time.sleep(0.01)
    assert len(vteps()) == 512, len(vteps())
    st = eng.learn_stats()
    assert st["learned"] - base["learned"] == 512, st
    assert st["refused_limit"] - base["refused_limit"] == 88, st
    eng.fdb_add_remote(0, "02:00:00:00:08:01", "10.2.0.1")  # a tunnel slot left for the API
    assert eng.fdb_get(0, "02:00:00:00:08:01") == ("remote", "10.2.0.1")
    # aged out: learned from again
    eng.set_learning_limits(age_s=0.3)
    for _ in range(400):
        if not vteps():
            break
        time.sleep(0.01)
    assert not vteps()
    eng.set_learning_limits(age_s=30.0)
    hear(512, 600)
    for _ in range(300):
        if len(vteps()) == 88:
            break
        time.sleep(0.01)
    assert len(vteps()) == 88
    eng.set_learning_limits()


def test_learning_with_every_tunnel_slot_taken_is_counted_refused(eng):
    """Every remote VTEP slot of the core taken (by VTEPs the API set): a
    MAC heard from one more VTEP is not learned, and learning says so
    (refused_limit) - not a MAC silently left unknown, flooded to for
    good. The frame itself is delivered."""
    from dataplane import errors

    t = Topo(eng, learning=True)
    added = []
    try:
        for i in range(1100):
            mac = f"02:00:00:09:{i >> 8:02x}:{i & 255:02x}"
            try:
                eng.fdb_add_remote(0, mac, f"10.3.{i // 250}.{i % 250 + 1}")
            except errors.ResourceError:
                break
            added.append(mac)
        else:
            pytest.fail("1100 remote VTEPs taken: no limit met")
        base = eng.learn_stats()
        heard = "02:00:00:00:09:99"
        t.send(t.up, vxlan_frame(udp_frame(src=heard, dst=A), src_vtep="10.4.0.1"))
        assert len(t.recv(t.a)) == 1
        for _ in range(200):
            if eng.learn_stats()["refused_limit"] > base["refused_limit"]:
                break
            time.sleep(0.01)
        st = eng.learn_stats()
        assert st["refused_limit"] - base["refused_limit"] == 1, (base, st)
        assert st["learned"] == base["learned"]
        assert eng.fdb_get(0, heard) is None
    finally:
        for mac in added:
            eng.fdb_del(0, mac)


def test_fdb_list_shows_every_entry_and_what_learned_it(eng):
    t = Topo(eng, learning=True)
    learned = "02:00:00:00:07:08"
    learn_from(t, learned, "10.0.0.77")
    got = {(e.network, e.mac): e for e in eng.fdb_list()}
    assert set(got) == {(0, A), (0, B), (1, C), (0, R1), (0, R2), (0, learned)}
    assert eng.fdb_local_keys() == {(0, A), (0, B), (1, C)}  # the pods' MACs, in one read
    assert got[(0, A)][2:] == ("local", t.a, None, False, None, None)
    assert got[(1, C)][2:] == ("local", t.c, None, False, None, None)
    assert got[(0, R2)][2:] == ("remote", None, R2_VTEP, False, None, None)
    e = got[(0, learned)]
    assert e.kind == "remote" and e.vtep == "10.0.0.77" and e.learned
    assert 0 <= e.age_s < 60
    # its age grows until a frame from it confirms it again
    time.sleep(0.3)
    older = next(x for x in eng.fdb_list(0) if x.mac == learned)
    assert older.age_s >= e.age_s + 0.25
    t.send(t.up, vxlan_frame(udp_frame(src=learned, dst=A), src_vtep="10.0.0.77"))
    t.recv(t.a)
    for _ in range(200):
        again = next(x for x in eng.fdb_list(0) if x.mac == learned)
        if again.age_s < older.age_s:
            break
        time.sleep(0.01)
    assert again.age_s < older.age_s
    # one network's; one set by the control API is not a learned one any more
    assert {e.mac for e in eng.fdb_list(1)} == {C}
    eng.fdb_add_remote(0, learned, R1_VTEP)
    e = next(x for x in eng.fdb_list(0) if x.mac == learned)
    assert (e.vtep, e.learned, e.age_s) == (R1_VTEP, False, None)
    eng.fdb_del(0, A)
    assert (0, A) not in {(e.network, e.mac) for e in eng.fdb_list()}


def test_entry_set_by_the_api_over_a_learned_one_from_the_same_vtep_is_kept(eng):
    """The cluster view often sets a remote pod's MAC after the core learned
    it from that pod's own node: the entry is the control plane's from then
    on, so it neither ages out when the pod goes quiet nor moves with what
    the underlay says."""
    t = Topo(eng, learning=True)
    eng.set_learning_limits(age_s=0.3)
    mac = "02:00:00:00:07:0a"
    learn_from(t, mac, "10.0.0.77")
    n = eng.learn_stats()["entries"]
    eng.fdb_add_remote(0, mac, "10.0.0.77")  # the same VTEP it was learned from
    e = eng.fdb_list(0, mac)[0]
    assert (e.vtep, e.learned, e.age_s) == ("10.0.0.77", False, None)
    assert eng.learn_stats()["entries"] == n - 1
    time.sleep(0.6)  # two ages, quiet: still there
    assert eng.fdb_get(0, mac) == ("remote", "10.0.0.77")
    # heard from another VTEP: not moved, not reported as a static refusal
    base = eng.learn_stats()
    t.send(t.up, vxlan_frame(udp_frame(src=mac, dst=A), src_vtep=R2_VTEP))
    t.recv(t.a)
    time.sleep(0.3)
    assert eng.fdb_get(0, mac) == ("remote", "10.0.0.77")
    assert eng.learn_stats() == base
    eng.set_learning_limits()
    with pytest.raises(ConfigError, match="network index 256 out of range"):
        eng.fdb_list(256)


def test_learned_mac_heard_again_is_confirmed_and_follows_a_move(eng):
    t = Topo(eng, learning=True)
    eng.set_learning_limits(age_s=2.0)  # 1.9 s of slack for a stalled VM
    mac = "02:00:00:00:07:09"

    def hear(vtep, n=1):
        t.send(t.up, *[vxlan_frame(udp_frame(src=mac, dst=A), src_vtep=vtep)] * n)
        t.recv(t.a, n)

    def entry():
        return next((e for e in eng.fdb_list(0) if e.mac == mac), None)

    learn_from(t, mac, "10.0.0.77")
    base = eng.learn_stats()
    # heard every 0.1 s for three ages: confirmed each time, never aged out
    for _ in range(60):
        hear("10.0.0.77")
        time.sleep(0.1)
        assert entry() is not None and entry().age_s < 2.0
    now = eng.learn_stats()
    assert now["aged"] == base["aged"] and now["learned"] == base["learned"]
    # now from another VTEP the core already knows (R1's): the entry moves
    hear(R1_VTEP)
    for _ in range(200):
        if entry().vtep == R1_VTEP:
            break
        time.sleep(0.01)
    assert entry().vtep == R1_VTEP and entry().learned
    assert eng.learn_stats()["moved"] == now["moved"] + 1
    assert eng.fdb_get(0, mac) == ("remote", R1_VTEP)
    # a MAC the control API set is not moved by what the underlay says
    hear(R2_VTEP)  # R2_VTEP is R2's; R1 is set by the API
    t.send(t.up, vxlan_frame(udp_frame(src=R1, dst=A), src_vtep=R2_VTEP))
    t.recv(t.a)
    time.sleep(0.3)
    assert eng.fdb_get(0, R1) == ("remote", R1_VTEP)
    eng.set_learning_limits()


def test_mac_moving_too_often_is_frozen_where_it_is(eng):
    """Duplicate MAC detection: a learned MAC heard from VTEPs by turns (a
    loop behind a host, two hosts with one MAC) follows its moves until the
    one that would be its third in the window; that one is refused and the
    MAC stays frozen where it is, its further moves refused and counted,
    until the freeze is over; then it follows again, its moves counted
    afresh."""
    t = Topo(eng, learning=True)
    eng.set_learning_limits(age_s=10.0)
    eng.set_duplicate_macs(moves=3, window_s=60, freeze_s=1.0)
    mac = "02:00:00:00:07:0b"
    v1, v2, v3 = "10.0.0.77", "10.0.0.78", "10.0.0.79"

    def hear(vtep):
        time.sleep(0.03)  # past the workers' report hold for a new VTEP
        t.send(t.up, vxlan_frame(udp_frame(src=mac, dst=A), src_vtep=vtep))
        t.recv(t.a)

    def until(cond, what):
        for _ in range(300):
            if cond():
                return
            time.sleep(0.01)
        raise AssertionError(f"{what}: {eng.fdb_list(0, mac)} {eng.learn_stats()}")

    def where():
        return eng.fdb_get(0, mac)[1]

    try:
        learn_from(t, mac, v1)
        base = eng.learn_stats()
        hear(v2)
        until(lambda: where() == v2, "first move")
        hear(v1)
        until(lambda: where() == v1, "second move")
        hear(v2)  # the third within the window: a duplicate
        until(lambda: eng.learn_stats()["duplicate"] == base["duplicate"] + 1, "detection")
        [e] = eng.fdb_list(0, mac)
        assert (e.vtep, e.learned) == (v1, True) and 0 < e.frozen_s <= 1.0, e
        hear(v3)  # frozen: refused, counted
        until(lambda: eng.learn_stats()["refused_frozen"] > base["refused_frozen"], "refusal")
        assert where() == v1
        st = eng.learn_stats()
        assert st["moved"] == base["moved"] + 2 and st["duplicate"] == base["duplicate"] + 1
        # frames to it go one way meanwhile: to the VTEP it is frozen at
        t.send(t.a, udp_frame(src=A, dst=mac))
        [out] = t.recv(t.up)
        assert out[IP].dst == v1
        time.sleep(1.0)  # the freeze is over: it moves again
        hear(v2)
        until(lambda: where() == v2, "move after the freeze")
        [e] = eng.fdb_list(0, mac)
        assert e.frozen_s is None, e
        assert eng.learn_stats()["moved"] == base["moved"] + 3
    finally:
        eng.set_duplicate_macs()
        eng.set_learning_limits()
    with pytest.raises(ConfigError, match="duplicate MAC moves 1: 2..1000"):
        eng.set_duplicate_macs(moves=1)
    with pytest.raises(ConfigError, match="window 500 ms"):
        eng.set_duplicate_macs(window_s=0.5)


def test_learning_events_name_every_counter_of_the_core():
    from dataplane.engine import LEARN_EVENTS, lib

    assert len(LEARN_EVENTS) == lib.DP_LEARN_STAT_COUNT
    assert LEARN_EVENTS.index("duplicate") == lib.DP_LEARN_DUPLICATE
    assert LEARN_EVENTS.index("refused_frozen") == lib.DP_LEARN_FROZEN


def test_learned_macs_cleared_by_network_and_mac_and_nothing_else(eng):
    """learn_clear removes learned entries only (by MAC, by network, all);
    a local entry and one the control API set stay, and a cleared MAC is
    learned again from its next frame."""
    t = Topo(eng, learning=True)
    m1, m2, m3 = "02:00:00:00:08:01", "02:00:00:00:08:02", "02:00:00:00:08:03"
    for m in (m1, m2, m3):
        learn_from(t, m, "10.0.0.77")
    assert eng.learn_clear(0, m1) == 1
    assert eng.fdb_get(0, m1) is None and eng.fdb_get(0, m2) is not None
    assert eng.learn_clear(0, m1) == 0  # gone already
    assert eng.learn_clear(1) == 0  # nothing learned in network 1
    assert eng.learn_clear(0, A) == 0 and eng.fdb_get(0, A) == ("local", t.a)
    assert eng.learn_clear(0, R1) == 0 and eng.fdb_get(0, R1) == ("remote", R1_VTEP)
    learn_from(t, m1, "10.0.0.78")  # learned again, from wherever it speaks now
    assert eng.fdb_get(0, m1) == ("remote", "10.0.0.78")
    assert eng.learn_clear() == 3
    assert [e for e in eng.fdb_list(0) if e.learned] == []
    assert eng.fdb_get(0, A) == ("local", t.a) and eng.fdb_get(0, R2) == ("remote", R2_VTEP)
    assert eng.learn_stats()["entries"] == 0
    with pytest.raises(ConfigError, match="network index 300 out of range"):
        eng.learn_clear(300)


def test_fdb_list_reads_a_table_larger_than_one_chunk(eng):
    eng.add_network(0, vni=VNI0)
    eng.set_vtep(
        f"{VTEP_IP}/24", VTEP_MAC, eng.add_ring_port("up", role="uplink"), next_hop_mac=NH_MAC
    )
    macs = {f"02:00:00:01:{i >> 8:02x}:{i & 0xFF:02x}" for i in range(3000)}
    for i, m in enumerate(sorted(macs)):
        eng.fdb_add_remote(0, m, f"10.0.0.{2 + i % 8}")
    got = eng.fdb_list()
    assert len(got) == 3000 and {e.mac for e in got} == macs
    assert all(
        e.vtep == f"10.0.0.{2 + i % 8}" for i, e in enumerate(sorted(got, key=lambda e: e.mac))
    )


def test_drop_truncated_inner(topo):
    outer = bytes(vxlan_frame(Ether(src=R1, dst=A)))[:-6]  # inner shorter than Ether
    raw = bytearray(outer)
    struct.pack_into("!H", raw, 16, len(raw) - 14)  # consistent IP length
    _dropped(topo, bytes(raw), "truncated")


def test_drop_truncated_ip_length(topo):
    f = vxlan_frame(udp_frame(src=R1, dst=A))
    f[IP].len = len(bytes(f[IP])) + 40  # claims more than arrived
    _dropped(topo, f, "truncated")


def test_drop_wrong_udp_port(topo):
    _dropped(topo, vxlan_frame(udp_frame(src=R1, dst=A), dport=4790), "udp_port")


def test_drop_not_for_our_address(topo):
    _dropped(topo, vxlan_frame(udp_frame(src=R1, dst=A), dst_vtep="10.0.0.9"), "not_for_us")


def test_drop_not_for_our_mac(topo):
    _dropped(topo, vxlan_frame(udp_frame(src=R1, dst=A), dst_mac="02:99:99:99:99:99"), "not_for_us")


def test_drop_not_udp(topo):
    f = Ether(src=NH_MAC, dst=VTEP_MAC) / IP(src=R1_VTEP, dst=VTEP_IP) / TCP(dport=4789)
    _dropped(topo, f, "not_udp")


def test_drop_fragment(topo):
    f = vxlan_frame(udp_frame(src=R1, dst=A))
    f[IP].flags = "MF"
    _dropped(topo, f, "ip_fragment")


def test_drop_bad_ip(topo):
    raw = bytearray(bytes(vxlan_frame(udp_frame(src=R1, dst=A))))
    raw[14] = 0x65  # IP version 6 in an IPv4 frame
    _dropped(topo, bytes(raw), "bad_ip")


def test_drop_non_ip_on_uplink(topo):
    _dropped(
        topo, Ether(src=NH_MAC, dst=VTEP_MAC) / Dot1Q(vlan=5) / Raw(b"v" * 50), "uplink_non_ip"
    )


def test_drop_split_horizon(topo):
    # a decapsulated frame whose destination is another remote: never re-encapsulated
    _dropped(topo, vxlan_frame(udp_frame(src=R1, dst=R2)), "split_horizon")
    topo.nothing(topo.up)


def test_drop_runt_from_pod(topo):
    _dropped(topo, b"\x02\x00\x00\x00", "truncated", port=topo.a)


def test_drop_no_uplink(eng):
    base = eng.counters().drops()
    a = eng.add_ring_port("a")
    eng.add_network(0, vni=VNI0)
    eng.set_port_network(a, 0)
    eng.fdb_add_remote(0, R1, R1_VTEP)
    eng.inject(a, [bytes(udp_frame(dst=R1))])
    assert wait_drop(eng, base, "no_uplink") == 1


def test_every_drop_reason_has_a_name():
    from dataplane.engine import DROP_REASONS

    assert len(DROP_REASONS) == len(set(DROP_REASONS)) >= 20
    assert all(n.isidentifier() and n.islower() for n in DROP_REASONS)


# ---------------------------------------------------------------- counters
def test_counters_add_up(topo):
    frames = (
        [udp_frame(src=A, dst=B)] * 10
        + [udp_frame(src=A, dst=R1)] * 7
        + [udp_frame(src=A, dst=A)] * 3
    )
    topo.send(topo.a, *frames)
    assert len(topo.recv(topo.b, 10)) == 10
    assert len(topo.recv(topo.up, 7)) == 7
    c = topo.eng.counters()
    rx = c.port_dict(topo.a)
    assert rx["rx_packets"] == 20
    assert rx["rx_bytes"] == sum(len(bytes(f)) for f in frames)
    assert c.net_dict(0)["local_packets"] == 10 and c.net_dict(0)["encap_packets"] == 7
    d = topo.drops()
    assert d["hairpin"] == 3
    assert sum(d.values()) == 3


# ------------------------------------------------------ worker table caches
def test_fdb_change_takes_effect_on_the_next_frame(topo):
    """A MAC the workers have looked up moves, leaves and comes back: each
    change shows on the very next frame."""
    topo.send(topo.a, udp_frame(dst=R1))
    assert topo.recv(topo.up)[0][IP].dst == R1_VTEP
    topo.eng.fdb_add_remote(0, R1, R2_VTEP)  # moved to another VTEP
    topo.send(topo.a, udp_frame(dst=R1))
    assert topo.recv(topo.up)[0][IP].dst == R2_VTEP
    topo.eng.fdb_del(0, R1)  # gone: unknown unicast floods
    topo.eng.set_flood(0, [])
    topo.send(topo.a, udp_frame(dst=R1))
    assert len(topo.recv(topo.b)) == 1
    topo.nothing(topo.up)
    topo.eng.fdb_add_local(0, R1, topo.b)  # back, as a local MAC
    topo.send(topo.a, udp_frame(dst=R1))
    assert len(topo.recv(topo.b)) == 1
    topo.nothing(topo.up)


def test_vtep_table_change_takes_effect_past_the_cache(topo):
    """Decap accepts a source VTEP only while the network uses it (a MAC
    behind it or a flood-list entry); the cached answer must not outlive that."""
    inner = Ether(src=R2, dst=A) / IP() / UDP()
    topo.send(topo.up, vxlan_frame(inner, src_vtep=R2_VTEP))
    assert len(topo.recv(topo.a)) == 1  # R2_VTEP known (MAC R2)
    base = topo.eng.counters().drops()
    topo.eng.set_flood(0, [R1_VTEP])
    topo.eng.fdb_del(0, R2)  # nothing left behind it
    topo.send(topo.up, vxlan_frame(inner, src_vtep=R2_VTEP))
    assert wait_drop(topo.eng, base, "unknown_vtep") == 1
    topo.nothing(topo.a)


def test_fdb_cache_counters(topo):
    """Every FDB lookup is counted, those the worker cache could not answer,
    and of those the ones the table's home bucket could not answer either."""
    c0 = topo.eng.counters()
    topo.send(topo.a, *[udp_frame(dst=R1) for _ in range(20)])
    assert len(topo.recv(topo.up, 20)) == 20
    topo.send(topo.a, *[udp_frame(dst=R1) for _ in range(20)])
    assert len(topo.recv(topo.up, 20)) == 20
    w = topo.eng.counters().worker.sum(axis=0) - c0.worker.sum(axis=0)
    from dataplane.engine import WORKER_COUNTERS

    d = dict(zip(WORKER_COUNTERS, w.tolist()))
    assert d["fdb_lookups"] == 40
    # the first burst may miss (once per frame of it); the second one hits
    assert 1 <= d["fdb_cache_misses"] <= 20
    assert d["fdb_slow_lookups"] == 0  # two entries: each in its home bucket


def _outer_dst(frame: bytes) -> str:
    """The outer IPv4 destination (the VTEP) of a frame the core encapsulated."""
    return socket.inet_ntoa(frame[30:34])


def _forward_all(eng, inp, out, frames):
    """Each frame through the core, in bursts the rings hold; what came out."""
    got = []
    for i in range(0, len(frames), 2048):
        chunk = frames[i : i + 2048]
        assert eng.inject(inp, chunk) == len(chunk)
        got += eng.collect(out, max_frames=len(chunk), wait=WAIT, expect=len(chunk))
    return got


def test_fdb_large_table(eng):
    """Thousands of MACs, six times what a worker's cache holds (each a
    call to the engine's process here, so not more: the bench's large
    tables go to a million):
    the table grows as it fills, every entry answers (some from past their
    home bucket: slow lookups, counted), a moved entry answers anew and
    deleted ones are gone."""
    from dataplane.engine import WORKER_COUNTERS

    up = eng.add_ring_port("up", role="uplink")
    a = eng.add_ring_port("a")
    eng.add_network(0, vni=VNI0)
    eng.set_port_network(a, 0)
    eng.set_vtep(f"{VTEP_IP}/24", VTEP_MAC, up, next_hop_mac=NH_MAC)
    vteps = [R1_VTEP, R2_VTEP, R3_VTEP]
    n = 6000
    # random MACs (sequential ones spread over the buckets without a
    # collision: the CRC is linear), locally administered, unicast
    rnd = random.Random(7)
    macs = sorted(
        {"06:" + ":".join(f"{rnd.randrange(256):02x}" for _ in range(5)) for _ in range(n)}
    )
    n = len(macs)
    for k, m in enumerate(macs):
        eng.fdb_add_remote(0, m, vteps[k % 3])
    assert eng.fdb_count() == n
    tmpl = bytes(udp_frame(size=64))
    frames = [parse_mac(m) + tmpl[6:] for m in macs]
    c0 = eng.counters().worker.sum(axis=0)
    got = _forward_all(eng, a, up, frames)
    assert len(got) == n
    where = {f[50:56]: _outer_dst(f) for f in got}
    assert len(where) == n
    for k, m in enumerate(macs):
        assert where[parse_mac(m)] == vteps[k % 3], m
    # one inner flow (the MACs differ, the addresses and ports do not): one
    # outer UDP source port, whether the worker looked up through its cache
    # (the first bursts) or skipped it (the rest)
    assert len({f[34:36] for f in got}) == 1
    d = dict(zip(WORKER_COUNTERS, (eng.counters().worker.sum(axis=0) - c0).tolist()))
    assert d["fdb_lookups"] == n
    assert d["fdb_cache_misses"] > n // 2
    # random keys at up to half the slots: a few buckets get more than their
    # 4 keys, so some lookups go on past the home bucket, most do not
    assert 0 < d["fdb_slow_lookups"] < n // 2, d

    # every other MAC moves to the next VTEP; every fourth goes
    for k in range(0, n, 2):
        eng.fdb_add_remote(0, macs[k], vteps[(k + 1) % 3])
    gone = set(range(1, n, 4))
    for k in gone:
        eng.fdb_del(0, macs[k])
    assert eng.fdb_count() == n - len(gone)
    base = eng.counters().drops()
    got = _forward_all(eng, a, up, frames)
    assert len(got) == n - len(gone)
    where = {f[50:56]: _outer_dst(f) for f in got}
    for k, m in enumerate(macs):
        want = None if k in gone else vteps[(k + (k % 2 == 0)) % 3]
        assert where.get(parse_mac(m)) == want, m
    # the deleted MACs are unknown unicast, with nowhere to flood to
    assert wait_drop(eng, base, "no_destination", len(gone)) == len(gone)


def test_fdb_changes_while_forwarding(eng):
    """The table changes (adds that make it grow, moves, deletes) while the
    worker forwards: a frame to a MAC that never changes always goes to its
    VTEP, one to a changing MAC goes to a VTEP it had, and a frame that does
    not come out is counted as a drop (a lookup that met a writer too often
    answers 'unknown'), never lost or misdirected."""
    up = eng.add_ring_port("up", role="uplink", size=32768)
    a = eng.add_ring_port("a", size=32768)
    eng.add_network(0, vni=VNI0)
    eng.set_port_network(a, 0)
    eng.set_vtep(f"{VTEP_IP}/24", VTEP_MAC, up, next_hop_mac=NH_MAC)
    rnd = random.Random(11)

    def mac():
        return bytes([0x06] + [rnd.randrange(256) for _ in range(5)])

    stable = list({mac() for _ in range(2000)})
    for m in stable:
        eng.fdb_add_remote(0, format_mac(m), R1_VTEP)
    moving = list({mac() for _ in range(2000)} - set(stable))
    for m in moving:
        eng.fdb_add_remote(0, format_mac(m), R2_VTEP)
    stable_set = set(stable)
    tmpl = bytes(udp_frame(size=64))[6:]
    base = eng.counters().drops()
    sent = dropped = 0
    for rnd_no in range(12):
        frames = [m + tmpl for m in rnd.choices(stable, k=12000) + rnd.choices(moving, k=4000)]
        rnd.shuffle(frames)
        assert eng.inject(a, frames) == len(frames)
        # while the worker forwards them: 400 new MACs (the table grows
        # past 4,000 entries: doublings), moves and deletes of moving MACs
        for _ in range(400):
            eng.fdb_add_remote(0, format_mac(mac()), R3_VTEP)
        for m in rnd.sample(moving, 200):
            eng.fdb_add_remote(0, format_mac(m), rnd.choice([R2_VTEP, R3_VTEP]))
        for m in rnd.sample(moving, 50):
            eng.fdb_del(0, format_mac(m))
            eng.fdb_add_remote(0, format_mac(m), R2_VTEP)
        got = eng.collect(up, max_frames=len(frames), wait=WAIT, expect=len(frames))
        sent += len(frames)
        for f in got:
            vtep = _outer_dst(f)
            inner_dst = f[50:56]
            if inner_dst in stable_set:
                assert vtep == R1_VTEP, format_mac(inner_dst)
            else:
                assert vtep in (R2_VTEP, R3_VTEP), format_mac(inner_dst)
        dropped += len(frames) - len(got)
    d = drops_since(eng, base)
    assert sum(d.values()) == dropped  # nothing lost without a count
    assert set(k for k, v in d.items() if v) <= {"no_destination"}
    assert dropped <= sent // 100
    assert eng.fdb_count() == len(stable) + len(moving) + 12 * 400


def test_a_full_neighbour_table_gives_up_only_what_no_tunnel_wants(eng):
    """The underlay's neighbours (1024 at most): when the table is full, a
    new one takes the slot of an entry no tunnel sends through; the control
    API's permanent entries and the next hops tunnels wait for are kept,
    and with only those left a new one is refused, naming the table."""
    t = Topo(eng, static_nh=False)
    # the tunnels to R1, R2 (FDB) and R3 (flood list) wait for their next hops
    asked = {Ether(f)[ARP].pdst for f in eng.collect(t.up, wait=WAIT, expect=3)}
    assert asked == {R1_VTEP, R2_VTEP, R3_VTEP}
    mac = "02:00:0a:00:77:01"
    for k in range(1024 - 3):
        eng.set_neighbor(f"10.1.{k >> 8}.{k & 255}", mac)
    with pytest.raises(Exception, match=r"neighbour table full \(1024 permanent or in use\)"):
        eng.set_neighbor("10.2.0.1", mac)
    assert eng.neighbor("10.2.0.1") is None
    # R3's tunnel gone: its next hop is wanted no more, and its slot is free
    eng.set_flood(0, [R1_VTEP, R2_VTEP])
    eng.set_neighbor("10.2.0.1", mac)
    assert eng.neighbor("10.2.0.1") == mac and eng.neighbor("10.1.0.0") == mac
    # R1 and R2 still wait for their next hops: asked again, and R1 answers
    eng.collect(t.up, wait=0.2)
    _arp_reply(t, R1_VTEP, "02:00:0a:00:00:02")
    t.send(t.a, _tagged(b"to r1"))
    [out] = _tunnelled(t, 1)
    assert out.dst == "02:00:0a:00:00:02" and out[IP].dst == R1_VTEP
