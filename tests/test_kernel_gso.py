"""GSO super-frames through kernel ports, end to end through the node
service, with the pods' offloads on (TX checksumming, TSO, GSO, as the
service leaves them):

- between two pods on one node a TCP super-frame crosses whole: the
  receiving pod's interface sees TCP frames larger than its MTU;
- towards the underlay it leaves whole (tunnel GSO, the default): the uplink's
  tunnel tap hands the kernel one VXLAN super-frame, with outer and inner
  lengths that add up, which the veth carries whole as it does the kernel
  VTEP's own, and which reaches the host behind that VTEP whole and intact;
- with tunnel GSO off it is cut: every VXLAN frame the node sends fits the
  underlay MTU, every inner TCP segment the MSS, with valid IPv4 header
  checksums and TCP checksums (checked with scapy in a capture of the
  underlay) and the data intact at the host behind the kernel's VTEP; the
  other way, that VTEP's own VXLAN super-frames (its veth's tunnel
  segmentation on) are decapsulated whole and reach the pod whole;
- UDP super-frames (a UDP_SEGMENT socket) arrive as whole datagrams at a
  pod on the same node and at the host behind the kernel VTEP;
- none of it shows as a drop.

The fabric (underlay, node services, pods, kernel VTEP host) is the one of
test_kernel_pods.py, taken down the same way.
"""

import json
import os
import re
import signal
import time

import pytest
import test_kernel_pods as kp
from test_tunnel_tap import kernel_takes_tunnel_gso

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, DPDK EAL)"),
]

#: drop reasons a super-frame would show under if it were not carried or cut
GSO_DROPS = (
    "kport_oversize",
    "kport_truncated",
    "kport_gso",
    "kport_tx_error",
    "gso_no_mbuf",
    "gso_bad",
)

# UDP source with UDP_SEGMENT: `sends` super-frames of `per` datagrams of
# `size` bytes each (a sequence number, then bytes 0..size-9), paced
UDP_GSO_CLIENT = """
import json, socket, struct, sys, time
ip, port, sends, per, size = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_UDP, 103, size)  # UDP_SEGMENT
tail = bytes(range(size - 8))
sent = 0
for i in range(sends):
    buf = b"".join(struct.pack("!Q", i * per + j) + tail for j in range(per))
    sent += per if s.sendto(buf, (ip, port)) == len(buf) else 0
    time.sleep(0.005)
print(json.dumps({"sent": sent}))
"""


fabric = kp.fabric  # the kernel-pod tests' fabric fixture, as it is

#: the network's extra keys where the node does not learn: the host behind
#: the kernel VTEP is an unknown MAC, so every frame to it is flooded (as
#: one super-frame to the one VTEP of the flood list), and a bulk transfer
#: flooded through storm control (1000 floods/s per pod port) loses frames
#: to it at random; dataplane check advises storm_pps 0 for such a host
#: (storm control has tests of its own)
FLOODED = ", storm_pps: 0"


def gso_drops(node):
    d = node.status()["drops"]
    return {k: d.get(k, 0) for k in GSO_DROPS}


def assert_offloads_on(pod):
    f = kp.offloads(pod["ns"], "eth0")
    for k in ("tx-checksumming", "tcp-segmentation-offload", "generic-segmentation-offload"):
        assert f.get(k), f"{pod['ns']} eth0: {k} is off, the service should leave it on: {f}"


def stop_capture(p):
    """End tcpdump cleanly (SIGINT flushes its file)."""
    p.send_signal(signal.SIGINT)
    p.wait(10)


def read_pcap(path):
    from scapy.all import rdpcap

    return rdpcap(str(path))


def l4_checksum(ip_raw):
    """(IPv4 header checksum valid?, 'valid' | 'partial' | 'bad') of the
    TCP/UDP checksum of the IPv4 packet ip_raw; 'partial' is the
    pseudo-header sum a sender leaves for offload to finish."""
    from scapy.utils import checksum

    ihl = (ip_raw[0] & 15) * 4
    tot = int.from_bytes(ip_raw[2:4], "big")
    seg = ip_raw[ihl:tot]
    proto = ip_raw[9]
    at = 16 if proto == 6 else 6
    pseudo = ip_raw[12:20] + bytes([0, proto]) + len(seg).to_bytes(2, "big")
    field = int.from_bytes(seg[at : at + 2], "big")
    full = checksum(pseudo + seg[:at] + b"\0\0" + seg[at + 2 :])
    partial = ~checksum(pseudo) & 0xFFFF
    ip_ok = checksum(ip_raw[:ihl]) == 0
    return ip_ok, "valid" if field == full else "partial" if field == partial else "bad"


def test_tcp_super_frames_cross_whole_between_pods(fabric, tmp_path):
    fab = fabric()
    node = fab.node(1, [])
    a, b = fab.pod(1, "a", kp.SUBNET + "11"), fab.pod(1, "b", kp.SUBNET + "12")
    assert_offloads_on(a)
    assert_offloads_on(b)
    kp.reach(a["ns"], b["ip"], "pod a -> pod b")
    before = gso_drops(node)
    cap = tmp_path / "pod-b.pcap"
    dump = fab.capture(b["ns"], "eth0", cap, "tcp port 5201")
    kp.tcp_transfer(fab, "pod a -> pod b, TSO on", b["ns"], b["ip"], a["ns"], size=8 * kp.MB)
    stop_capture(dump)
    after = gso_drops(node)
    assert after == before, f"drops while super-frames crossed: {before} -> {after}"

    from scapy.layers.inet import IP, TCP

    data = [p for p in read_pcap(cap) if TCP in p and p[IP].src == a["ip"]]
    data = [p for p in data if len(p[TCP].payload) > 0]
    mtu = fab.pod_mtu
    big = [p for p in data if p[IP].len > mtu]
    assert big, (
        f"pod b received {len(data)} data frames, none above its MTU {mtu}: "
        "the super-frames were cut on the way, not carried whole"
    )
    print(
        f"{len(big)} of {len(data)} frames above the MTU, largest IP packet "
        f"{max(p[IP].len for p in big)} bytes"
    )


def _tcp_to_vtep_host_captured(fab, node, vm, a, tmp_path, what):
    """4 MB of TCP from pod a to the host behind the kernel VTEP, the
    underlay captured meanwhile: (the node's GSO drops before, the pcap)."""
    kp.reach(a["ns"], kp.VM_IP, "pod a -> kernel-VTEP host")
    before = gso_drops(node)
    cap = tmp_path / "underlay.pcap"
    dump = fab.capture(fab.ul, "ul1", cap, "udp port 4789")
    kp.tcp_transfer(fab, f"pod a -> vtep host, {what}", vm, kp.VM_IP, a["ns"], size=4 * kp.MB)
    stop_capture(dump)
    return before, cap


def uplink_status(node):
    return next(p for p in node.status()["ports"] if p["role"] == "uplink")


def tunnel_gso_started(node) -> bool:
    """Whether the service runs its uplink with tunnel GSO: it must where
    this kernel's taps take UDP-tunnel GSO (Linux 6.17 or later); where they
    do not, it must say it cuts super-frames instead, and make no tap."""
    log = node.log()
    if kernel_takes_tunnel_gso():
        assert '"uplink tunnel GSO on"' in log, log[-2000:]
        return True
    assert "no tunnel GSO" in log and "super-frames are cut" in log, log[-2000:]
    links = kp.nsx(node.ns, "ip", "-o", "link", "show", check=True).stdout
    assert "dpgso" not in links, links
    return False


def test_tcp_super_frames_leave_whole_through_the_tunnel_tap(fabric, tmp_path):
    fab = fabric()
    node = fab.node(1, [kp.HOST_VTEP], net=FLOODED)
    vm = fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", kp.SUBNET + "11")
    assert_offloads_on(a)
    if not tunnel_gso_started(node):  # refused: only by a kernel without it
        assert not kernel_takes_tunnel_gso(), "the kernel takes tunnel GSO, the node did not"
        pytest.skip("Linux < 6.17 (no tunnel GSO on taps): the cut path is tested instead")
    sent0 = uplink_status(node)["tunnel_gso_frames"]
    at_vm = tmp_path / "vm.pcap"
    dump_vm = fab.capture(vm, "eth0", at_vm, "tcp port 5201")
    before, cap = _tcp_to_vtep_host_captured(fab, node, vm, a, tmp_path, "tunnel GSO")
    stop_capture(dump_vm)
    after = gso_drops(node)
    assert after == before, f"drops while super-frames left whole: {before} -> {after}"
    sent = uplink_status(node)["tunnel_gso_frames"] - sent0
    assert sent > 0, "no super-frame went through the uplink's tunnel tap"
    # and the status text says so on the uplink's line
    text = node.cli("status").stdout
    assert re.search(r"uplink .* tunnel_gso \d+", text), text

    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.vxlan import VXLAN

    whole, errors = 0, []
    for p in read_pcap(cap):
        if not (IP in p and p[IP].src == "10.99.0.1" and UDP in p and VXLAN in p):
            continue
        if len(p) <= fab.mtu + 14:
            continue
        whole += 1
        ip_len = len(bytes(p[IP]))
        inner = p[VXLAN].payload
        if p[IP].len != ip_len or p[UDP].len != ip_len - 20:
            errors.append(f"outer lengths IP {p[IP].len} UDP {p[UDP].len}, frame {ip_len}")
        if p[VXLAN].vni != kp.VNI or IP not in inner or TCP not in inner:
            errors.append(f"not VNI {kp.VNI} TCP: {p.summary()}")
            continue
        if inner[IP].len != len(bytes(inner[IP])) or inner[IP].src != a["ip"]:
            errors.append(f"inner IPv4 length {inner[IP].len} of {len(bytes(inner[IP]))}")
        ip_ok, state = l4_checksum(bytes(inner[IP]))
        if not ip_ok or state == "bad":
            errors.append(f"inner checksums: IPv4 {'ok' if ip_ok else 'wrong'}, TCP {state}")
    assert not errors, f"{len(errors)} bad super-frames, first: {errors[:5]}"
    assert whole > 0, "no VXLAN frame above the underlay MTU: the super-frames were cut"
    big = [p for p in read_pcap(at_vm) if TCP in p and p[IP].len > fab.pod_mtu]
    assert big, "the host behind the kernel VTEP got no frame above the pod MTU"
    print(f"{sent} super-frames through the tunnel tap, {whole} on the underlay whole")


def test_a_shaped_uplink_gets_super_frames_cut(fabric, tmp_path):
    """The planes' queues and token bucket of a shaped uplink take frames as
    the wire carries them: with a shaper, no super-frame goes to the tunnel
    tap and every VXLAN frame on the underlay is within the MTU."""
    fab = fabric()
    node = fab.node(1, [kp.HOST_VTEP], vtep=", uplink_rate: 5G", net=FLOODED)
    vm = fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", kp.SUBNET + "11")
    tunnel_gso_started(node)  # a shaped uplink cuts either way
    before, cap = _tcp_to_vtep_host_captured(fab, node, vm, a, tmp_path, "shaped uplink")
    assert gso_drops(node) == before
    assert uplink_status(node)["tunnel_gso_frames"] == 0
    sizes = [len(p) for p in read_pcap(cap)]
    assert sizes and max(sizes) <= fab.mtu + 14, f"{max(sizes)}-byte frame on the underlay"


def test_a_deleted_tunnel_tap_falls_back_to_cutting(fabric, tmp_path):
    """A tap deleted under the running service: the frame it refuses is
    counted (kport_tx_error), and from then on super-frames are cut before
    encapsulation; TCP goes on with its data intact."""
    fab = fabric()
    node = fab.node(1, [kp.HOST_VTEP], net=FLOODED)
    vm = fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", kp.SUBNET + "11")
    if not tunnel_gso_started(node):  # refused: only by a kernel without it
        assert not kernel_takes_tunnel_gso(), "the kernel takes tunnel GSO, the node did not"
        pytest.skip("Linux < 6.17 (no tunnel GSO on taps): no tap to delete")
    kp.reach(a["ns"], kp.VM_IP, "pod a -> kernel-VTEP host")
    kp.tcp_transfer(fab, "pod a -> vtep host, tap", vm, kp.VM_IP, a["ns"], size=2 * kp.MB)
    sent = uplink_status(node)["tunnel_gso_frames"]
    assert sent > 0
    tap = next(
        w for w in kp.nsx(node.ns, "ip", "-o", "link", check=True).stdout.split() if "dpgso" in w
    )
    kp.nsx(node.ns, "ip", "link", "del", tap.rstrip(":"), check=True)
    before, cap = _tcp_to_vtep_host_captured(fab, node, vm, a, tmp_path, "tap deleted")
    drops = node.status()["drops"]
    assert drops.get("kport_tx_error", 0) >= 1, drops
    assert uplink_status(node)["tunnel_gso_frames"] == sent
    sizes = [len(p) for p in read_pcap(cap)]
    assert sizes and max(sizes) <= fab.mtu + 14, f"{max(sizes)}-byte frame on the underlay"


def test_no_tunnel_tap_when_tunnel_gso_is_off(fabric):
    fab = fabric()
    node = fab.node(1, [], vtep=", tunnel_gso: false")
    links = kp.nsx(node.ns, "ip", "-o", "link", "show", check=True).stdout
    assert "dpgso" not in links, links
    assert "tunnel GSO" not in node.log()
    assert uplink_status(node)["tunnel_gso_frames"] == 0


def test_tcp_super_frames_cut_to_the_mss_on_the_underlay(fabric, tmp_path):
    fab = fabric()
    node = fab.node(1, [kp.HOST_VTEP], vtep=", tunnel_gso: false", net=FLOODED)
    vm = fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", kp.SUBNET + "11")
    assert_offloads_on(a)
    before, cap = _tcp_to_vtep_host_captured(fab, node, vm, a, tmp_path, "TSO on")
    # the other way the kernel VTEP sends VXLAN super-frames (its veth's
    # tunnel segmentation on): decapsulated whole, they reach the pod whole
    at_pod = tmp_path / "pod-a.pcap"
    dump_a = fab.capture(a["ns"], "eth0", at_pod, "tcp port 5201")
    kp.tcp_transfer(fab, "vtep host -> pod a", a["ns"], a["ip"], vm, size=4 * kp.MB)
    stop_capture(dump_a)
    after = gso_drops(node)
    assert after == before, f"drops while super-frames were cut: {before} -> {after}"

    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.vxlan import VXLAN

    mtu, pod_mtu = fab.mtu, fab.pod_mtu
    mss = pod_mtu - 40
    counts = {"valid": 0, "partial": 0, "bad": 0}
    errors = []
    for p in read_pcap(cap):
        if not (IP in p and p[IP].src == "10.99.0.1" and UDP in p and VXLAN in p):
            continue
        inner = p[VXLAN].payload
        if IP not in inner or TCP not in inner or inner[IP].src != a["ip"]:
            continue
        payload = len(inner[TCP].payload)
        if payload == 0:
            continue
        if len(p) > mtu + 14:
            errors.append(f"VXLAN frame of {len(p)} bytes above the underlay MTU {mtu}")
        if inner[IP].len > pod_mtu or payload > mss:
            errors.append(f"inner segment of {inner[IP].len} bytes, {payload} of payload")
        ip_ok, state = l4_checksum(bytes(inner[IP]))
        if not ip_ok:
            errors.append(f"inner IPv4 header checksum wrong (id {inner[IP].id})")
        counts[state] += 1
    assert not errors, f"{len(errors)} bad frames, first: {errors[:5]}"
    assert counts["bad"] == 0, f"inner TCP checksums: {counts}"
    # what the core cut carries a finished checksum; a frame the pod sent as
    # one segment may keep its checksum left to offload (the receiving
    # stack finishes it)
    assert counts["valid"] > counts["partial"], f"inner TCP checksums: {counts}"
    print(f"inner TCP data segments on the underlay: {counts}")
    big = [
        p for p in read_pcap(at_pod) if TCP in p and p[IP].src == kp.VM_IP and p[IP].len > pod_mtu
    ]
    assert big, "no frame above the pod MTU reached pod a: super-frames from the VTEP were cut"
    print(f"{len(big)} super-frames from the kernel VTEP reached pod a whole")


def test_super_frames_after_the_pods_interface_went_down_and_up(fabric):
    """The pod's host end set down and up again (by hand, or by a runtime
    that restarts the pod's network) leaves its packet socket an error
    (ENETDOWN) that the next read of a super-frame's copy reports instead
    of the frame: read again, the copy is the frame's. TCP with TSO from
    the pod then completes, none of its super-frames lost, and the socket
    stays in step with its ring (before, each later super-frame read the
    copy of the one before it: dropped as ``kport_truncated``, the flow
    stalled for good)."""
    fab = fabric()
    node = fab.node(1, [kp.HOST_VTEP], vtep=", tunnel_gso: false", net=FLOODED)
    vm = fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", kp.SUBNET + "11")
    assert_offloads_on(a)
    kp.reach(a["ns"], kp.VM_IP, "pod a -> kernel-VTEP host")
    (hif,) = [p["host_ifname"] for p in a["planes"]]
    kp.nsx(node.ns, "ip", "link", "set", hif, "down", check=True)
    kp.nsx(node.ns, "ip", "link", "set", hif, "up", check=True)
    kp.reach(a["ns"], kp.VM_IP, "pod a -> kernel-VTEP host, its interface up again")
    before = node.status()["drops"].get("kport_truncated", 0)
    kp.tcp_transfer(fab, "pod a -> vtep host, after down and up", vm, kp.VM_IP, a["ns"])
    kp.tcp_transfer(fab, "pod a -> vtep host, again", vm, kp.VM_IP, a["ns"], port=5202)
    assert node.status()["drops"].get("kport_truncated", 0) == before, fab.drops_said()


def test_super_frames_of_a_small_mss_are_cut_whole(fabric):
    """A peer that asks for a small MSS (88 bytes here; Linux takes down
    to 48) makes the pod's TCP send super-frames of several hundred
    segments: cut into all of them, none refused, the data intact."""
    fab = fabric()
    node = fab.node(1, [kp.HOST_VTEP], vtep=", tunnel_gso: false", net=FLOODED)
    vm = fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", kp.SUBNET + "11")
    (route,) = [
        r
        for r in kp.nsx(vm, "ip", "route", "show", check=True).stdout.splitlines()
        if r.startswith(kp.SUBNET + "0/")
    ]
    kp.nsx(vm, "ip", "route", "change", *route.split(), "advmss", "88", check=True)
    kp.reach(a["ns"], kp.VM_IP, "pod a -> kernel-VTEP host")
    before = gso_drops(node)
    cut0 = node.status()["networks"][0]["encap_packets"]
    kp.tcp_transfer(fab, "pod a -> vtep host, MSS 88", vm, kp.VM_IP, a["ns"], size=2 * kp.MB)
    assert gso_drops(node) == before, node.status()["drops"]
    # every 88 bytes of the 2 MB a frame of its own on the underlay
    assert node.status()["networks"][0]["encap_packets"] - cut0 >= 2 * kp.MB // 88


@pytest.mark.parametrize("path", ["core", "lane"])
def test_ipv6_tcp_super_frames_both_ways_with_a_kernel_vtep_host(fabric, path):
    """IPv6 TCP between a pod and the host behind a kernel VTEP, offloads
    on at both ends: the VTEP's VXLAN super-frames of inner IPv6 are
    decapsulated whole - by the core's workers, or by the express lane in
    the kernel (the data is to the pod's own address) - the pod's leave
    whole or cut; data intact, no frame refused."""
    fab = fabric()
    lane = "" if path == "lane" else "express_lane: false\n"
    node = fab.node(1, [kp.HOST_VTEP], vtep=", learning: true", extra=lane)
    vm = fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", kp.SUBNET + "11")
    kp.reach(a["ns"], kp.VM_IP, "pod a -> kernel-VTEP host")
    a_ll, vm_ll = kp.v6_link_local(a["ns"]), kp.v6_link_local(vm)
    r = kp.nsx(vm, "ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "2", f"{a_ll}%eth0")
    assert r.returncode == 0, r.stdout
    before = gso_drops(node)

    def uplink():
        row = kp._port_row(node, lambda p: p["role"] == "uplink")
        row["express"] = row["express"] or {"rx_bytes": 0, "rx_packets": 0}  # None: no lane
        return row

    up0 = uplink()
    kp.tcp_transfer(fab, "vtep host -> pod a, IPv6", a["ns"], f"{a_ll}%eth0", vm, 8 * kp.MB)
    up1 = uplink()
    kp.tcp_transfer(fab, "pod a -> vtep host, IPv6", vm, f"{vm_ll}%eth0", a["ns"], 8 * kp.MB)
    assert gso_drops(node) == before, node.status()["drops"]
    lane_bytes = up1["express"]["rx_bytes"] - up0["express"]["rx_bytes"]
    if path == "lane" and kp.lane_decapsulates_ipv6():
        # the data too, in super-frames: fewer frames than MSS-sized segments
        lane_pkts = up1["express"]["rx_packets"] - up0["express"]["rx_packets"]
        assert lane_bytes > 8 * kp.MB and lane_pkts < 8 * kp.MB // 1400, (up0, up1)
    else:
        assert lane_bytes == 0 and up1["rx_bytes"] - up0["rx_bytes"] > 8 * kp.MB, (up0, up1)


# TCP super-frames with a virtio-net header (PACKET_VNET_HDR) out of a
# packet socket on `dev`: `n` of 10 segments of 1448 bytes, to `dst_mac`
# and `dst_ip` - what the uplink's socket receives when the host's own TCP
# on an interface it shares with the core is merged by GRO
VNET_TCP_SENDER = """
import socket, struct, sys
dev, dst_mac, src_ip, dst_ip, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.setsockopt(263, 15, 1)  # SOL_PACKET, PACKET_VNET_HDR
s.bind((dev, 0))
src = s.getsockname()[4]
payload = bytes(1448 * 10)
ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 1, 0x4000, 64, 6, 0,
                           socket.inet_aton(src_ip), socket.inet_aton(dst_ip)))
c = sum(struct.unpack("!10H", ip))
c = (c & 0xFFFF) + (c >> 16)
ip[10:12] = struct.pack("!H", ~((c & 0xFFFF) + (c >> 16)) & 0xFFFF)
tcp = struct.pack("!HHIIBBHHH", 40000, 5001, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
eth = bytes.fromhex(dst_mac.replace(":", "")) + src + bytes([8, 0])
# NEEDS_CSUM, GSO_TCPV4, header length, MSS, checksum start and offset
vnet = struct.pack("=BBHHHH", 1, 1, 54, 1448, 34, 16)
sent = sum(s.send(vnet + eth + bytes(ip) + tcp + payload) > 0 for _ in range(n))
print(sent)
"""


def test_a_super_frame_not_for_the_vtep_is_dropped_once_not_cut(fabric):
    """TCP super-frames to the VTEP's MAC and address on the underlay (the
    host's own TCP, merged by GRO, as the uplink's socket would see it):
    each is dropped once as not_udp, never cut into segments first (which
    cost a copy and a checksum of each segment, and counted each)."""
    fab = fabric()
    node = fab.node(1, [kp.HOST_VTEP])
    fab.kernel_host(["10.99.0.1"])
    link = json.loads(kp.ipn(node.ns, "-j link show uplink0").stdout)[0]
    before = node.status()["drops"]
    n = 20
    p = fab.spawn(
        f"{fab.tag}h", VNET_TCP_SENDER, "eth0", link["address"], kp.HOST_VTEP, "10.99.0.1", n
    )
    out, err = p.communicate(timeout=60)
    assert out.strip() == str(n), err
    want = before.get("not_udp", 0) + n
    for _ in range(100):
        after = node.status()["drops"]
        if after.get("not_udp", 0) >= want:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # a cut frame's other segments would show by now
    after = node.status()["drops"]
    assert after.get("not_udp", 0) == want, f"{before} -> {after}"
    assert {k: after.get(k, 0) for k in GSO_DROPS} == {k: before.get(k, 0) for k in GSO_DROPS}


def test_udp_super_frames_arrive_as_datagrams(fabric):
    fab = fabric()
    node = fab.node(1, [kp.HOST_VTEP], net=FLOODED)
    vm = fab.kernel_host(["10.99.0.1"])
    a, b = fab.pod(1, "a", kp.SUBNET + "11"), fab.pod(1, "b", kp.SUBNET + "12")
    kp.reach(a["ns"], b["ip"], "pod a -> pod b")
    kp.reach(a["ns"], kp.VM_IP, "pod a -> kernel-VTEP host")
    before = gso_drops(node)
    sends, per, size = 50, 40, 200
    errors = []
    for label, srv_ns, srv_ip in (("pod b", b["ns"], b["ip"]), ("vtep host", vm, kp.VM_IP)):
        srv = fab.spawn(srv_ns, kp.UDP_SERVER, 5301, size)
        assert srv.stdout.readline().strip() == "ready", srv.stderr.read()
        cli = fab.spawn(a["ns"], UDP_GSO_CLIENT, srv_ip, 5301, sends, per, size)
        c_out, c_err = cli.communicate(timeout=120)
        s_out, s_err = srv.communicate(timeout=120)
        assert c_out and s_out, f"UDP GSO to {label}: a side crashed:\n{c_err}\n{s_err}"
        sent, got = json.loads(c_out)["sent"], json.loads(s_out)
        assert sent == sends * per, f"UDP GSO to {label}: only {sent} datagrams sent"
        if got["received"] < sent * 0.98 or got["bad"]:
            errors.append(f"{label}: {got['received']} of {sent} arrived, {got['bad']} malformed")
        print(f"UDP GSO to {label}: {got['received']} of {sent} {size}-byte datagrams")
    after = gso_drops(node)
    assert not errors, "; ".join(errors) + f" (drops {before} -> {after})"
    assert after == before, f"drops while UDP super-frames crossed: {before} -> {after}"


# UDP_GSO_CLIENT to a broadcast address, unpaced; prints what it sent
# and the seconds from its first send to its last
UDP_GSO_BROADCAST = """
import json, socket, struct, sys, time
ip, port, sends, per, size = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_UDP, 103, size)  # UDP_SEGMENT
tail = bytes(range(size - 8))
sent, t0 = 0, time.monotonic()
for i in range(sends):
    buf = b"".join(struct.pack("!Q", i * per + j) + tail for j in range(per))
    sent += per if s.sendto(buf, (ip, port)) == len(buf) else 0
print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0}))
"""


def test_storm_control_pays_for_each_datagram_of_a_flooded_super_frame(fabric):
    """A pod's UDP super-frames to its subnet's broadcast address are
    flooded as the datagrams they are cut into: storm control takes a
    token for each of them (a super-frame whole or not at all), so pod b
    gets what the burst and the rate allow - not a super-frame's worth of
    datagrams for every token. Each refused super-frame is one `storm`
    drop."""
    fab = fabric()
    pps, burst, sends, per, size = 10, 50, 20, 40, 200
    node = fab.node(1, [], net=f", storm_pps: {pps}, storm_burst: {burst}")
    a, b = fab.pod(1, "a", kp.SUBNET + "11"), fab.pod(1, "b", kp.SUBNET + "12")
    hif = a["planes"][0]["host_ifname"]

    def a_rx():
        [row] = [p for p in node.status()["ports"] if p["name"] == hif]
        return row["rx_packets"]

    storm0, rx0 = node.status()["drops"].get("storm", 0), a_rx()
    srv = fab.spawn(b["ns"], kp.UDP_SERVER, 5302, size)
    assert srv.stdout.readline().strip() == "ready", srv.stderr.read()
    cli = fab.spawn(a["ns"], UDP_GSO_BROADCAST, kp.SUBNET + "255", 5302, sends, per, size)
    c_out, c_err = cli.communicate(timeout=120)
    s_out, s_err = srv.communicate(timeout=120)
    assert c_out and s_out, f"a side crashed:\n{c_err}\n{s_err}"
    sent, got = json.loads(c_out), json.loads(s_out)
    assert sent["sent"] == sends * per, sent
    # they reached the core whole, not cut by the pod's kernel
    assert a_rx() - rx0 < sends * 2, (a_rx() - rx0, sends)
    allowed = burst + pps * sent["seconds"]
    assert per <= got["received"] <= allowed, (got, sent, allowed)
    assert got["bad"] == 0, got
    storm = node.status()["drops"].get("storm", 0) - storm0
    assert storm >= sends - allowed // per, (storm, node.status()["drops"])


def test_uplink_batches_leave_as_mtu_sized_vxlan_frames(fabric, tmp_path):
    """The uplink sends a run of one flow's VXLAN frames (here: the segments
    of a TCP super-frame cut with tunnel GSO off) as one UDP GSO frame; on
    the veth uplink the kernel's GSO cuts it back (the service switched its
    tx-udp-segmentation off): every VXLAN frame on the underlay within the
    MTU, its outer UDP checksum set by that segmentation (finished or left
    partial to the veth, never wrong), every inner segment valid, the data
    intact at the host behind the kernel VTEP."""
    fab = fabric()
    node = fab.node(1, [kp.HOST_VTEP], vtep=", tunnel_gso: false", net=FLOODED)
    vm = fab.kernel_host(["10.99.0.1"])
    assert not kp.offloads(node.ns, "uplink0").get("tx-udp-segmentation"), (
        "the service should switch tx-udp-segmentation off on its veth uplink"
    )
    a = fab.pod(1, "a", kp.SUBNET + "11")
    before, cap = _tcp_to_vtep_host_captured(fab, node, vm, a, tmp_path, "batches")
    after = gso_drops(node)
    assert after == before, f"drops while the uplink sent batches: {before} -> {after}"

    from scapy.layers.inet import IP, UDP
    from scapy.layers.vxlan import VXLAN

    outer = {"valid": 0, "partial": 0, "bad": 0, "zero": 0}
    inner_bad, big = 0, 0
    for p in read_pcap(cap):
        if not (IP in p and p[IP].src == "10.99.0.1" and UDP in p and VXLAN in p):
            continue
        big += len(p) > fab.mtu + 14
        raw = bytes(p[IP])
        if p[UDP].chksum == 0:
            outer["zero"] += 1
        else:
            outer[l4_checksum(raw)[1]] += 1
        inner = p[VXLAN].payload
        if IP in inner and inner[IP].src == a["ip"]:
            ip_ok, state = l4_checksum(bytes(inner[IP]))
            inner_bad += (not ip_ok) + (state == "bad")
    print(f"outer UDP checksums of the node's VXLAN frames: {outer}")
    assert big == 0, f"{big} VXLAN frames above the underlay MTU {fab.mtu}"
    assert outer["bad"] == 0 and inner_bad == 0, f"outer {outer}, {inner_bad} bad inner"
    # a frame sent alone keeps the core's outer checksum 0; one of a batch
    # gets the one the kernel's UDP segmentation sets: most of them here
    assert outer["valid"] + outer["partial"] > outer["zero"], f"no batches went out: {outer}"


def test_tcp6_super_frames_behind_a_routing_header_are_cut_with_the_final_destination(
    fabric, tmp_path
):
    """An IPv6 TCP super-frame with a segment routing header (a pod routed
    by SRv6) is cut by the core (tunnel GSO off) into segments whose TCP
    checksums cover the final destination, Segment List[0] (RFC 8200 8.1),
    as the kernel that left the checksum partial summed it - not the IPv6
    header's destination, the next segment."""
    import ipaddress

    from scapy.layers.inet6 import TCP, IPv6, IPv6ExtHdrSegmentRouting
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    from test_offload_guard import NEEDS_CSUM, _sum16, send_vnet, vnet

    from dataplane.checks import ipv6_link_local

    fab = fabric()
    node = fab.node(1, [kp.HOST_VTEP], vtep=", tunnel_gso: false", net=FLOODED)
    fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", kp.SUBNET + "11")
    kp.reach(a["ns"], kp.VM_IP, "pod a -> kernel-VTEP host")  # its MAC known: unicast
    mac = a["planes"][0]["mac"]
    src = str(ipv6_link_local(bytes.fromhex(mac.replace(":", ""))))
    final, nxt = "fd00:99::77", "fd00:99::1"
    gso, segs = 1000, 4
    payload = bytes(i & 0xFF for i in range(gso * segs))

    def pseudo(length):
        return (
            ipaddress.IPv6Address(src).packed
            + ipaddress.IPv6Address(final).packed
            + length.to_bytes(4, "big")
            + b"\0\0\0\x06"
        )

    srh = IPv6ExtHdrSegmentRouting(addresses=[final, nxt], segleft=1, lastentry=1, nh=6)
    # the kernel's partial checksum of a super-frame: the pseudo-header's
    # sum (its length 0, as TCP leaves it for segmentation)
    tcp = TCP(sport=40000, dport=5399, seq=1, flags="PA", window=65535, chksum=_sum16(pseudo(0)))
    head = bytes(Ether(src=mac, dst=kp.VM_MAC) / IPv6(src=src, dst=nxt, hlim=64) / srh / tcp)
    start = len(head) - 20  # the TCP header's
    hdr = vnet(NEEDS_CSUM, 4, len(head), gso, start, 16)  # GSO_TCPV6
    before = gso_drops(node)
    cap = tmp_path / "underlay.pcap"
    dump = fab.capture(fab.ul, "ul1", cap, "udp port 4789")
    up0 = uplink_status(node)["tx_packets"]
    time.sleep(1.5)  # (tcpdump hands over what it reads in blocks of up to a second)
    assert send_vnet(fab.tmp, a["ns"], [(hdr, head + payload)]) == 1
    for _ in range(100):
        if uplink_status(node)["tx_packets"] >= up0 + segs:
            break
        time.sleep(0.05)
    time.sleep(1.5)  # tcpdump's last block
    stop_capture(dump)
    got = [bytes(p[VXLAN].payload) for p in read_pcap(cap) if VXLAN in p]
    got = [f for f in got if len(f) > start and f[start : start + 2] == (40000).to_bytes(2, "big")]
    assert len(got) == segs, f"{len(got)} segments on the underlay; {fab.drops_said()}"
    data = b""
    for f in got:
        seg = f[start:]  # the TCP header and its payload
        assert f[38:54] == ipaddress.IPv6Address(nxt).packed  # the next segment, as sent
        assert _sum16(pseudo(len(seg)) + seg) == 0xFFFF, f"{len(seg) - 20} bytes: bad checksum"
        data += seg[20:]
    assert data == payload
    assert gso_drops(node) == before
