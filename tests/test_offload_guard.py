"""A kernel pod's offload fields cannot get a frame past the guard, nor
make a super-frame that the kernel cuts into tens of thousands of frames.

A pod's frames reach the core through a packet socket with a virtio-net
header the pod writes itself: NEEDS_CSUM with any csum_start/csum_offset,
any gso_type and gso_size. Pod b sends, from inside its namespace through
a packet socket with PACKET_VNET_HDR (as any process in a pod can):

- a broadcast ARP and a broadcast UDP datagram whose "checksum" - to be
  completed after the guard ran, on the flood - covers two bytes of the
  sender / source address, its pad word tuned so that the completed value
  is pod a's address: the checksum is completed as the frame is read, the
  guard sees the forged address and drops it (spoof_arp, spoof_ipv4), the
  host behind the kernel VTEP never sees it; control frames (a correct
  partial UDP checksum, a checksum inside the payload) arrive complete;
- TCP super-frames with a gso_size of 1 (20,000 segments) or more
  segments than the core's own cutter takes (DP_GSO_MAX_SEGS), and
  partial super-frames whose IP protocol is not their gso_type's: dropped
  as kport_gso, nothing of them on the underlay; a super-frame of 10
  segments and one of exactly DP_GSO_MAX_SEGS leave whole through the
  uplink's tunnel tap, cut by the kernel before the uplink's veth (its
  tunnel segmentation switched off here, as on a NIC without it), and
  counted there segment by segment.

The world (node service, pods a and b, the host behind the kernel VTEP)
is test_guard_pods'; the fabric of the super-frame test test_kernel_pods'.
"""

import json
import os
import re
import socket
import struct
import sys
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import rdpcap

from tests import test_guard_pods as gp
from tests import test_kernel_pods as kp

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, DPDK EAL)"),
]

world = gp.world  # test_guard_pods' world fixture, as it is
fabric = kp.fabric  # the kernel-pod tests' fabric fixture, as it is

NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_UDP_L4 = 0, 1, 5


def _max_segs():
    with open(os.path.join(kp.ROOT, "csrc", "dp_gso_limits.h")) as f:
        return int(re.search(r"#define DP_GSO_MAX_SEGS (\d+)u", f.read()).group(1))


DP_GSO_MAX_SEGS = _max_segs()

# sends frames with the virtio-net header each gives (hex "header:frame",
# one per line in the file argv[2]) on interface argv[1]
VNET_SENDER = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.setsockopt(263, 15, 1)  # SOL_PACKET, PACKET_VNET_HDR
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
s.bind((sys.argv[1], 0))
sent = 0
for line in open(sys.argv[2]).read().split():
    hdr, frame = line.split(":")
    try:
        sent += s.send(bytes.fromhex(hdr) + bytes.fromhex(frame)) > 0
    except OSError as e:  # the pod's own kernel refused it
        print(e, file=sys.stderr)
print(sent)
"""

# UDP sink on port argv[1]: every datagram's source address and payload
# (hex), until 2 s without one (10 s before the first)
UDP_SINK = """
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(10)
print("ready", flush=True)
got = []
try:
    while True:
        d, addr = s.recvfrom(4096)
        got.append([addr[0], d.hex()])
        s.settimeout(2)
except socket.timeout:
    pass
print(json.dumps(got))
"""


def vnet(flags=0, gso_type=GSO_NONE, hdr_len=0, gso_size=0, start=0, off=0):
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, start, off)


def send_vnet(tmp, ns, frames, ifname="eth0", all_sent=True):
    """``frames``, (virtio-net header, frame) pairs, sent from namespace
    ``ns``: how many the pod's kernel took (all, if ``all_sent``)."""
    path = tmp / f"vnet-{time.monotonic_ns()}.hex"
    path.write_text("\n".join(f"{h.hex()}:{bytes(f).hex()}" for h, f in frames))
    r = kp.nsx(ns, sys.executable, "-c", VNET_SENDER, ifname, str(path), timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == len(frames) or not all_sent, r.stdout + r.stderr
    return int(r.stdout)


def _sum16(b):
    b = bytes(b) + b"\0" * (len(b) % 2)
    s = sum(int.from_bytes(b[i : i + 2], "big") for i in range(0, len(b), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def complete(frame, start, off):
    """``frame`` with its checksum completed as offload completes it: the
    one's complement sum from ``start`` to the end (the field included as it
    is) written at ``start + off``."""
    f = bytearray(frame)
    cs = ~_sum16(f[start:]) & 0xFFFF
    f[start + off : start + off + 2] = (cs or 0xFFFF).to_bytes(2, "big")
    return bytes(f)


def tune(frame, start, at, want):
    """``frame`` with its 16-bit word at ``at`` chosen so that completing its
    checksum from ``start`` (csum_offset 0) writes the bytes ``want`` at
    ``start``: what a pod does to forge two bytes past the guard."""
    assert (at - start) % 2 == 0 and at >= start + 2
    f = bytearray(frame)
    f[at : at + 2] = b"\0\0"
    s0, t = _sum16(f[start:]), ~int.from_bytes(want, "big") & 0xFFFF
    f[at : at + 2] = ((t - s0) % 0xFFFF).to_bytes(2, "big")
    assert complete(f, start, 0)[start : start + 2] == want
    return bytes(f)


def ip4(a):
    return socket.inet_aton(a)


# ------------------------------------------------- forged through csum_start
def _forged_arp():
    """Pod b's gratuitous ARP reply from its own address, whose last two
    bytes (frame bytes 30-31) the completion of a "checksum" from byte 30
    turns into pod a's: (virtio-net header, frame)."""
    f = bytes(
        Ether(src=gp.B_MAC, dst=gp.BCAST)
        / ARP(op=2, hwsrc=gp.B_MAC, psrc=gp.B_IP, hwdst=gp.BCAST, pdst=gp.A_IP)
        / Raw(bytes(18))
    )
    assert f[28:32] == ip4(gp.B_IP) and len(f) == 60
    f = tune(f, 30, 58, ip4(gp.A_IP)[2:])
    assert ARP(complete(f, 30, 0)[14:]).psrc == gp.A_IP  # what the vm would get
    return vnet(NEEDS_CSUM, start=30, off=0), f


def test_arp_sender_forged_through_a_checksum_offset_is_dropped(world):
    """A broadcast ARP from pod b with NEEDS_CSUM, csum_start 30 and
    csum_offset 0: completed before the guard, its sender is pod a's address
    and it is dropped as spoof_arp; the vm's cache keeps pod a's MAC and
    no ARP for pod a's address from pod b's MAC reaches it. A control ARP
    (pod b's own address, its checksum start in the padding: completed,
    harmless) reaches the vm."""
    world.learn_victim()
    hdr, forged = _forged_arp()
    control = bytes(
        Ether(src=gp.B_MAC, dst=gp.BCAST)
        / ARP(op=2, hwsrc=gp.B_MAC, psrc=gp.B_IP, hwdst=gp.BCAST, pdst=gp.B_IP)
        / Raw(bytes(18))
    )
    cap = world.tmp / f"arp-{time.monotonic_ns()}.pcap"
    dump = world.fab.capture(world.vm, "eth0", cap, "arp")
    before = world.drops()
    n = 3
    send_vnet(world.tmp, world.b["ns"], [(vnet(NEEDS_CSUM, start=42, off=0), control)])
    send_vnet(world.tmp, world.b["ns"], [(hdr, forged)] * n)
    for _ in range(100):
        if world.drops().get("spoof_arp", 0) >= before.get("spoof_arp", 0) + n:
            break
        time.sleep(0.05)
    time.sleep(1.5)  # what passed would have reached the vm by now
    dump.send_signal(2)
    dump.wait(10)
    after = world.drops()
    from scapy.all import rdpcap

    arps = [p[ARP] for p in rdpcap(str(cap)) if ARP in p and p[ARP].hwsrc == gp.B_MAC]
    assert [a for a in arps if a.psrc == gp.A_IP] == [], "pod b's forged ARP reached the vm"
    assert [a for a in arps if a.psrc == gp.B_IP], "the control ARP did not reach the vm"
    assert world.arp_of(gp.A_IP) == gp.A_MAC, "the vm now sends pod a's traffic to pod b"
    assert after.get("spoof_arp", 0) - before.get("spoof_arp", 0) == n, (before, after)
    kp.reach(world.vm, gp.A_IP, "vm -> pod a after the forged ARP")


def _udp(src, payload, sport=40000, dport=5350, udp_csum=0):
    return bytes(
        Ether(src=gp.B_MAC, dst=gp.BCAST)
        / IP(src=src, dst=kp.SUBNET + "255", ttl=64, id=1)
        / UDP(sport=sport, dport=dport, chksum=udp_csum)
        / Raw(payload)
    )


def test_udp_source_forged_through_a_checksum_offset_is_dropped(world):
    """A UDP broadcast from pod b with NEEDS_CSUM, csum_start 28 (the last
    two bytes of the IPv4 source) and csum_offset 0, its IPv4 header checksum
    right for pod a's address and a pad word tuned to make that address:
    dropped as spoof_ipv4, the vm receives nothing from pod a's address.
    Controls, received by the vm from pod b's address: a datagram whose UDP
    checksum is left partial as a kernel leaves it (it arrives, so it was
    completed right) and one whose checksum start lies in the payload (a
    frame the core completes as it reads it: the value is checked)."""
    port = 5350
    # the forged one: built with a's address (header checksum and all),
    # sent with b's in its last two bytes
    f = bytearray(_udp(gp.A_IP, b"forged" + bytes(32)))
    f[28:30] = ip4(gp.B_IP)[2:]
    forged = tune(bytes(f), 28, 14 + 20 + 8 + 6, ip4(gp.A_IP)[2:])
    assert IP(complete(forged, 28, 0)[14:]).src == gp.A_IP
    # the controls: UDP's own checksum partial (the pseudo-header sum in
    # its field), and a checksum in the payload, from its byte 0
    payload = b"partial" + bytes(range(40))
    plen = 8 + len(payload)
    pseudo = ip4(gp.B_IP) + ip4(kp.SUBNET + "255") + bytes([0, 17]) + plen.to_bytes(2, "big")
    partial = _udp(gp.B_IP, payload, udp_csum=_sum16(pseudo))
    inner = _udp(gp.B_IP, b"\0\0inner" + bytes(range(20)))
    srv = world.fab.spawn(world.vm, UDP_SINK, port)
    assert srv.stdout.readline().strip() == "ready", srv.stderr.read()
    before = world.drops()
    n = 3
    send_vnet(
        world.tmp,
        world.b["ns"],
        [(vnet(NEEDS_CSUM, start=34, off=6), partial), (vnet(NEEDS_CSUM, start=42), inner)]
        + [(vnet(NEEDS_CSUM, start=28, off=0), forged)] * n,
    )
    out, err = srv.communicate(timeout=60)
    after = world.drops()
    got = json.loads(out)
    sources = {src for src, _ in got}
    assert gp.A_IP not in sources, f"the vm received UDP from pod a's address: {got}"
    data = {bytes.fromhex(d) for src, d in got if src == gp.B_IP}
    assert payload in data, f"the partial-checksum control did not arrive: {got}"
    inner_got = [d for d in data if d[2:7] == b"inner"]
    assert inner_got, f"the payload-checksum control did not arrive: {got}"
    assert inner_got[0] == complete(inner, 42, 0)[42:], inner_got
    assert after.get("spoof_ipv4", 0) - before.get("spoof_ipv4", 0) == n, (before, after)


# ------------------------------------------------------------- super-frames
def _tcp_super(
    src_mac,
    src_ip,
    payload_len,
    gso_size,
    proto=6,
    gso_type=GSO_TCPV4,
    off=None,
    dst=(kp.VM_MAC, kp.VM_IP),
):
    """A TCP super-frame from a pod to ``dst`` (MAC, IPv4; the vm behind
    the kernel VTEP), its checksum left partial as a kernel leaves it (the
    pseudo-header sum of the whole frame): (virtio-net header, frame).
    ``proto`` 17 makes the same bytes an IPv4 packet of UDP (whose payload
    then starts as a TCP header would: data offset 5); ``off``: another
    checksum offset than the protocol's."""
    payload = bytearray(i & 0xFF for i in range(payload_len))
    if proto == 17:
        payload[4] = 5 << 4
    l4 = 20 if proto == 6 else 8
    ip = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + l4 + payload_len,
            1,
            0x4000,
            64,
            proto,
            0,
            ip4(src_ip),
            ip4(dst[1]),
        )
    )
    ip[10:12] = (~_sum16(ip) & 0xFFFF).to_bytes(2, "big")
    pseudo = bytes(ip[12:20]) + bytes([0, proto]) + (l4 + payload_len).to_bytes(2, "big")
    if proto == 6:
        hdr = struct.pack("!HHIIBBHHH", 40000, 5399, 1, 0, 5 << 4, 0x18, 65535, _sum16(pseudo), 0)
    else:
        hdr = struct.pack("!HHHH", 40000, 5399, 8 + payload_len, _sum16(pseudo))
    eth = bytes.fromhex(dst[0].replace(":", "") + src_mac.replace(":", "")) + b"\x08\x00"
    off = (16 if proto == 6 else 6) if off is None else off
    frame = eth + bytes(ip) + hdr + bytes(payload)
    return vnet(NEEDS_CSUM, gso_type, 14 + 20 + l4, gso_size, 34, off), frame


def _link_tx(ns, dev):
    """Frames ``dev`` sent, and those it dropped on the way (a veth whose
    peer's backlog was full)."""
    st = json.loads(kp.ipn(ns, f"-s -j link show dev {dev}").stdout)[0]["stats64"]["tx"]
    return st["packets"] + st["dropped"]


def test_super_frames_of_too_many_segments_are_dropped(fabric):
    """Pod a's TCP super-frames to the vm behind the kernel VTEP (an unknown
    MAC: flooded to the one VTEP, so whole through the uplink's tunnel tap
    where this kernel has it), the uplink's veth made to segment as a NIC
    without tunnel segmentation does: one of 10 segments and one of exactly
    DP_GSO_MAX_SEGS leave, counted segment by segment on the uplink; one of
    gso_size 1 (20,000 segments), one of DP_GSO_MAX_SEGS + 1, and partial
    ones whose IP protocol is not their gso_type's are each dropped once as
    kport_gso, nothing of them on the underlay."""
    from tests.test_kernel_gso import FLOODED, tunnel_gso_started, uplink_status

    fab = fabric()
    node = fab.node(1, [kp.HOST_VTEP], net=FLOODED, extra="express_lane: false\n")
    fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", kp.SUBNET + "11")
    whole = tunnel_gso_started(node)
    kp.nsx(
        node.ns,
        *"ethtool -K uplink0 tx-udp_tnl-segmentation off tx-udp_tnl-csum-segmentation off".split(),
        check=True,
    )
    kp.reach(a["ns"], kp.VM_IP, "pod a -> kernel-VTEP host")
    mac, ip = a["planes"][0]["mac"], a["ip"]

    def counts():
        return (
            node.status()["drops"].get("kport_gso", 0),
            uplink_status(node)["tunnel_gso_frames"],
            _link_tx(node.ns, "uplink0"),
        )

    def send(frame, settle, all_sent=True):
        c0 = counts()
        if not send_vnet(fab.tmp, a["ns"], [frame], all_sent=all_sent):
            return None
        for _ in range(100):
            c = counts()
            if c[0] > c0[0] or c[1] > c0[1] or c[2] >= c0[2] + settle:
                break
            time.sleep(0.05)
        time.sleep(0.5)  # the last segments, and any echo of them
        c = counts()
        return c[0] - c0[0], c[1] - c0[1], c[2] - c0[2]

    n = DP_GSO_MAX_SEGS
    legit = {
        "10 segments": (_tcp_super(mac, ip, 1400 * 10, 1400), 10),
        f"{n} segments": (_tcp_super(mac, ip, 8 * n, 8), n),
    }
    bad = {
        "gso_size 1": _tcp_super(mac, ip, 20000, 1),
        f"{n + 1} segments": _tcp_super(mac, ip, 8 * n + 1, 8),
        # (the checksum offset the gso_type's: the pod's kernel refuses
        # others; it may refuse these too, which then never reach the core)
        "TCPV4 of UDP": _tcp_super(mac, ip, 1400 * 10, 1400, proto=17, off=16),
        "UDP_L4 of TCP": _tcp_super(mac, ip, 1400 * 10, 1400, gso_type=GSO_UDP_L4, off=6),
    }
    refused_ok = ("TCPV4 of UDP", "UDP_L4 of TCP")
    errors = []
    for what, (frame, segs) in legit.items():
        dropped, tunnel, sent = send(frame, segs)
        print(f"{what}: dropped {dropped}, through the tunnel tap {tunnel}, {sent} on the uplink")
        if dropped or not segs <= sent <= segs + 20 or (whole and tunnel != 1):
            errors.append(f"{what}: {dropped} kport_gso, {tunnel} whole, {sent} segments sent")
    for what, frame in bad.items():
        got = send(frame, 2, all_sent=what not in refused_ok)
        if got is None:
            print(f"{what}: refused by the pod's own kernel")
            continue
        dropped, tunnel, sent = got
        print(f"{what}: dropped {dropped}, through the tunnel tap {tunnel}, {sent} on the uplink")
        if dropped != 1 or tunnel or sent > 20:
            errors.append(f"{what}: {dropped} kport_gso, {tunnel} whole, {sent} segments sent")
    assert not errors, "; ".join(errors) + f"; {fab.drops_said()}"


def test_the_lane_leaves_super_frames_of_too_many_segments_to_the_core(fabric):
    """The express lane on (the default): pod b's TCP super-frame of
    gso_size 1 (20,000 segments) to pod a on the node, and to the vm behind
    the kernel VTEP (its MAC learned), is not the lane's - it would hand
    pod a a frame that stands for 20,000, or have the kernel cut it into
    20,000 frames behind the uplink - but the core's, which drops each
    once as kport_gso, as with the lane off; one of DP_GSO_MAX_SEGS + 1
    likewise. A control of 10 segments to each is carried by the lane."""
    fab = fabric()
    node = fab.node(1, [kp.HOST_VTEP], vtep=", learning: true")
    fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", kp.SUBNET + "11")
    b = fab.pod(1, "b", kp.SUBNET + "12")
    st = node.status()
    if not st.get("express_remote"):
        pytest.fail(f"this kernel's lane does not encapsulate to remote VTEPs: {st}")
    kp.reach(b["ns"], kp.VM_IP, "pod b -> the kernel-VTEP host")  # the vm's MAC learned
    kp.reach(b["ns"], a["ip"], "pod b -> pod a")
    b_mac = b["planes"][0]["mac"]
    to = {"pod a": (a["planes"][0]["mac"], a["ip"]), "the vm": (kp.VM_MAC, kp.VM_IP)}

    def counts():
        st = node.status()
        row = next(p for p in st["ports"] if p["pod"] == b["name"])
        up = next(p for p in st["ports"] if p["role"] == "uplink")
        return st["drops"].get("kport_gso", 0), row["express"]["rx_packets"], up["tx_packets"]

    def send(frame):
        c0 = counts()
        send_vnet(fab.tmp, b["ns"], [frame])
        for _ in range(100):  # until the core drops it or the lane takes it
            c = counts()
            if c[0] > c0[0] or c[1] > c0[1]:
                break
            time.sleep(0.05)
        time.sleep(0.3)  # anything more it would have caused
        c = counts()
        return c[0] - c0[0], c[1] - c0[1], c[2] - c0[2]

    n = DP_GSO_MAX_SEGS
    errors = []
    for where, dst in to.items():
        for what, frame in (
            ("gso_size 1", _tcp_super(b_mac, b["ip"], 20000, 1, dst=dst)),
            (f"{n + 1} segments", _tcp_super(b_mac, b["ip"], 8 * n + 1, 8, dst=dst)),
        ):
            dropped, lane, uplink = send(frame)
            print(f"{what} to {where}: kport_gso {dropped}, lane {lane}, uplink tx {uplink}")
            if (dropped, lane) != (1, 0) or uplink > 20:
                errors.append(f"{what} to {where}: {dropped} kport_gso, {lane} by the lane")
        dropped, lane, _ = send(_tcp_super(b_mac, b["ip"], 1400 * 10, 1400, dst=dst))
        print(f"10 segments to {where}: kport_gso {dropped}, lane {lane}")
        if (dropped, lane) != (0, 1):
            errors.append(f"10 segments to {where}: {dropped} kport_gso, {lane} by the lane")
    assert not errors, "; ".join(errors) + f"; {fab.drops_said()}"


def _settled(counts, done):
    """``counts()`` once ``done`` holds of it (or 5 s passed), read again
    0.3 s later: anything more the frames sent would cause counted too."""
    for _ in range(100):
        if done(counts()):
            break
        time.sleep(0.05)
    time.sleep(0.3)
    return counts()


def _markers_seen(fab, cap, path, markers):
    """Capture ``cap`` (into ``path``) stopped: which of ``markers`` its
    frames carry, in the order given."""
    cap.send_signal(2)
    cap.wait(30)
    fab.helpers.remove(cap)
    got = [bytes(f) for f in rdpcap(str(path))]
    return [m for m in markers if any(m in f for f in got)]


def test_ipv4_announcing_more_than_its_frame_holds_is_truncated_on_either_path(fabric):
    """Pod b (anti-spoofing on, the lane on) sends pod a IPv4 whose total
    length passes the frame's end, whose header length passes it, and
    whose header length is below 20: the lane leaves each to the core,
    whose guard drops it as truncated; none reaches pod a. A control that
    says its length truly is carried by the lane and arrives."""
    fab = fabric()
    node = fab.node(1, [kp.HOST_VTEP])
    a = fab.pod(1, "a", kp.SUBNET + "11")
    b = fab.pod(1, "b", kp.SUBNET + "12")
    kp.reach(b["ns"], a["ip"], "pod b -> pod a")
    a_mac, b_mac = a["planes"][0]["mac"], b["planes"][0]["mac"]

    def udp(marker, **ip):
        return bytearray(
            bytes(
                Ether(src=b_mac, dst=a_mac)
                / IP(src=b["ip"], dst=a["ip"], **ip)
                / UDP(sport=40000, dport=5399)
                / Raw(marker + b"x" * 20)
            )
        )

    long_total = udp(b"TOTL", len=1000)
    long_header = udp(b"HDRL")
    long_header[14] = 0x4F  # 60 bytes of header in a 54-byte packet
    short_header = udp(b"HDRS")
    short_header[14] = 0x44
    control = udp(b"CTRL")

    def counts():
        st = node.status()
        row = next(p for p in st["ports"] if p["pod"] == b["name"])
        return st["drops"].get("truncated", 0), row["express"]["rx_packets"]

    cap = fab.capture(a["ns"], "eth0", fab.tmp / "a.pcap", f"ether src {b_mac} and udp port 5399")
    c0 = counts()
    send_vnet(fab.tmp, b["ns"], [(vnet(), f) for f in (long_total, long_header, short_header)])
    send_vnet(fab.tmp, b["ns"], [(vnet(), control)])
    c = _settled(counts, lambda c: c[0] - c0[0] >= 3 and c[1] > c0[1])
    markers = _markers_seen(fab, cap, fab.tmp / "a.pcap", (b"TOTL", b"HDRL", b"HDRS", b"CTRL"))
    assert (c[0] - c0[0], c[1] - c0[1]) == (3, 1), (c0, c, fab.drops_said())
    assert markers == [b"CTRL"], markers


def test_the_lane_leaves_vxlan_with_an_outer_udp_checksum_over_udp_to_the_core(fabric):
    """From the host behind the kernel VTEP, VXLAN to pod a carrying UDP
    (its own checksum 0, as IPv4 allows) with an outer UDP checksum that
    no device verified (sent by a packet socket: CHECKSUM_NONE): the lane,
    which does not sum an outer checksum, leaves it to the core (it takes
    one only over TCP, whose own checksum the pod checks, or where the
    kernel holds it good); the core drops the wrong one (udp_checksum) and
    delivers the right one. The same without an outer checksum is the
    lane's and arrives. (A kernel VTEP's own datagrams, their checksum left
    to offload, take the lane: test_express.py's lane race from the
    underlay.)"""
    from scapy.layers.vxlan import VXLAN

    fab = fabric()
    node = fab.node(1, [kp.HOST_VTEP], vtep=", learning: true")
    fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", kp.SUBNET + "11")
    kp.reach(a["ns"], kp.VM_IP, "pod a -> the kernel-VTEP host")  # the vm's MAC learned
    a_mac = a["planes"][0]["mac"]
    vtep_mac = json.loads(kp.ipn(node.ns, "-j link show dev uplink0").stdout)[0]["address"]
    h = f"{fab.tag}h"

    def vxlan(marker, outer_csum):
        f = (
            Ether(dst=vtep_mac)
            / IP(src=kp.HOST_VTEP, dst="10.99.0.1", ttl=64)
            / UDP(sport=49152, dport=4789)
            / VXLAN(flags=8, vni=kp.VNI)
            / Ether(src=kp.VM_MAC, dst=a_mac)
            / IP(src=kp.VM_IP, dst=a["ip"], ttl=64)
            / UDP(sport=40000, dport=5399, chksum=0)
            / Raw(marker + b"x" * 20)
        )
        f = Ether(bytes(f))  # every checksum computed
        if outer_csum == "none":
            f[UDP].chksum = 0
        elif outer_csum == "wrong":
            f[UDP].chksum ^= 0x1234
        return bytes(f)

    def counts():
        st = node.status()
        up = next(p for p in st["ports"] if p["role"] == "uplink")
        return st["drops"].get("udp_checksum", 0), up["express"]["rx_packets"]

    cap = fab.capture(a["ns"], "eth0", fab.tmp / "a.pcap", "udp port 5399")
    c0 = counts()
    frames = [vxlan(b"WRNG", "wrong"), vxlan(b"RGHT", "right"), vxlan(b"NONE", "none")]
    send_vnet(fab.tmp, h, [(vnet(), f) for f in frames])
    c = _settled(counts, lambda c: c[0] > c0[0] and c[1] > c0[1])
    markers = _markers_seen(fab, cap, fab.tmp / "a.pcap", (b"WRNG", b"RGHT", b"NONE"))
    # the wrong one dropped by the core, the right one by the core too
    # (delivered), only the one without an outer checksum by the lane
    assert (c[0] - c0[0], c[1] - c0[1]) == (1, 1), (c0, c, fab.drops_said())
    assert markers == [b"RGHT", b"NONE"], markers


# ------------------------------------------------ the express lane's remote
def test_tcp_source_forged_through_a_checksum_offset_does_not_leave_by_the_lane(fabric, tmp_path):
    """The express lane encapsulates a pod's TCP to a remote VTEP in the
    kernel, and the uplink completes a partial checksum after the lane
    checked the source address - here in software: the uplink's tx
    checksumming switched off, as on a NIC without it. A TCP frame from pod
    b to the host behind the kernel VTEP whose checksum start is the last
    two bytes of its IPv4 source, its pad word tuned to make them pod a's:
    the lane leaves it to the core (it is partial elsewhere than in its TCP
    header), which completes it as it reads it and drops it as spoof_ipv4;
    the host sees no frame from pod a's address. A control from pod b,
    partial in its TCP header as a kernel leaves it, is taken by the lane
    and arrives."""
    fab = fabric()
    node = fab.node(1, [kp.HOST_VTEP], vtep=", learning: true")
    vm = fab.kernel_host(["10.99.0.1"])
    a_ip, b_ip = kp.SUBNET + "11", kp.SUBNET + "12"
    fab.pod(1, "a", a_ip)
    b = fab.pod(1, "b", b_ip)
    st = node.status()
    if not st.get("express_remote"):
        pytest.fail(f"this kernel's lane does not encapsulate to remote VTEPs: {st}")
    kp.reach(b["ns"], kp.VM_IP, "pod b -> the kernel-VTEP host")  # its MAC learned
    r = kp.nsx(node.ns, "ethtool", "-K", "uplink0", "tx", "off")
    assert r.returncode == 0, r.stderr
    b_mac = b["planes"][0]["mac"]

    from scapy.layers.inet import TCP

    def tcp(src, payload):
        return bytes(
            Ether(src=b_mac, dst=kp.VM_MAC)
            / IP(src=src, dst=kp.VM_IP, ttl=64, id=7)
            / TCP(sport=40001, dport=5351, flags="PA", seq=1000, ack=1, chksum=0)
            / Raw(payload)
        )

    # the forged one: pod a's address, b's in its last two bytes, a pad word
    # in the payload tuned so that completing from byte 28 writes a's
    f = bytearray(tcp(a_ip, b"forged" + bytes(32)))
    f[28:30] = ip4(b_ip)[2:]
    forged = tune(bytes(f), 28, 14 + 20 + 20 + 6, ip4(a_ip)[2:])
    assert IP(complete(forged, 28, 0)[14:]).src == a_ip
    # the control: its TCP checksum partial as a kernel leaves it (the
    # pseudo-header sum in its field)
    payload = b"control" + bytes(24)
    tlen = 20 + len(payload)
    pseudo = ip4(b_ip) + ip4(kp.VM_IP) + bytes([0, 6]) + tlen.to_bytes(2, "big")
    c = bytearray(tcp(b_ip, payload))
    c[50:52] = _sum16(pseudo).to_bytes(2, "big")
    control = bytes(c)

    def b_lane_rx():
        row = next(p for p in node.status()["ports"] if p["pod"] == f"{fab.tag}b")
        return (row["express"] or {}).get("rx_packets", 0)

    cap = tmp_path / "tcp.pcap"
    dump = fab.capture(vm, "eth0", cap, "tcp")
    before, lane0 = node.status()["drops"], b_lane_rx()
    n = 3
    send_vnet(tmp_path, b["ns"], [(vnet(NEEDS_CSUM, start=34, off=16), control)])
    send_vnet(tmp_path, b["ns"], [(vnet(NEEDS_CSUM, start=28, off=0), forged)] * n)
    for _ in range(100):
        if node.status()["drops"].get("spoof_ipv4", 0) >= before.get("spoof_ipv4", 0) + n:
            break
        time.sleep(0.05)
    time.sleep(1.5)  # what passed would have reached the host by now
    dump.send_signal(2)
    dump.wait(10)
    after, lane1 = node.status()["drops"], b_lane_rx()
    from scapy.all import rdpcap

    got = [p[IP] for p in rdpcap(str(cap)) if IP in p and TCP in p and p[TCP].dport == 5351]
    assert [p for p in got if p.src == a_ip] == [], "pod a's forged source reached the host"
    assert [p for p in got if p.src == b_ip and bytes(p[TCP].payload).startswith(b"control")], got
    assert lane1 - lane0 == 1, (lane0, lane1)  # the control took the lane, the forged did not
    assert after.get("spoof_ipv4", 0) - before.get("spoof_ipv4", 0) == n, (before, after)
