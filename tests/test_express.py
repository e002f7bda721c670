"""The express lane (``express_lane: auto``, the default, or ``true``):
unicast IP between two pods of one network on one node carried by the
kernel, veth to veth, with the node service, real namespaces and the
kernel's tc and socket-filter hooks. What it takes is counted per port,
in the ports' and networks' counters too; what it must not take (another
network, a spoofed source, ARP) still goes through the core and its
guard; a capture sees every frame; no program stays behind; a kernel
that refuses it stops a start only with ``true``."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import test_kernel_pods as kp
from test_kernel_pods import MB, Fabric, tcp_transfer
from test_service import CT_SPEC, ROOT, ip_of, ping, run_cli, running_node, scrape, sh

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


fabric = kp.fabric  # the kernel-pod tests' fabric: a node, its underlay, a kernel VTEP host


@pytest.fixture
def node(tmp_path):
    with running_node(tmp_path) as n:  # the default: auto
        yield n


def port_row(node, pod, plane="std"):
    st = node.api("GET", "/v1/status")
    return next(p for p in st["ports"] if p["pod"] == pod and p["plane"] == plane)


def lane_filters(ifname):
    """The tc ingress filters on ``ifname`` (text of tc filter show)."""
    r = subprocess.run(
        ["tc", "filter", "show", "dev", ifname, "ingress"], capture_output=True, text=True
    )
    return r.stdout


def host_if(info, plane="std"):
    return next(p["host_ifname"] for p in info["planes"] if p["plane"] == plane)


def mac_of(info, plane="std"):
    return next(p["mac"] for p in info["planes"] if p["plane"] == plane)


def ifname_of(info, plane="std"):
    return next(p["ifname"] for p in info["planes"] if p["plane"] == plane)


def test_pings_between_pods_take_the_lane_and_are_counted(node):
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", CT_SPEC)
    st = node.api("GET", "/v1/status")
    assert st["express_lane"] is True and st["express_lane_off"] is None
    assert st["express_remote_refused"] == 0  # the table full: tests/test_node_limits.py
    assert "ex_tc" in lane_filters(host_if(a)), lane_filters(host_if(a))
    before_a, before_b = port_row(node, "a"), port_row(node, "b")
    local0 = _local(node)
    r = ping(a["ns"], ip_of(b), count=50, interval="0.01")
    assert r.returncode == 0, r.stdout
    ra, rb = port_row(node, "a"), port_row(node, "b")
    # every echo went a -> b and back in the lane: 50 each way, counted once
    assert ra["express"]["rx_packets"] - before_a["express"]["rx_packets"] == 50
    assert rb["express"]["tx_packets"] - before_b["express"]["tx_packets"] == 50
    assert rb["express"]["rx_packets"] - before_b["express"]["rx_packets"] == 50
    assert ra["express"]["tx_packets"] - before_a["express"]["tx_packets"] == 50
    assert ra["express"]["rx_bytes"] - before_a["express"]["rx_bytes"] == 50 * 98
    assert ra["express"]["to_core_packets"] == 0  # nothing handed back
    # the core saw none of the echoes, and they are counted once: what it
    # had from a is ARP and the IPv6 multicast a new interface sends (router
    # solicitations, MLD, DAD: more of it the longer the set-up took)
    lane_rx = ra["express"]["rx_packets"] - before_a["express"]["rx_packets"]
    all_rx = ra["rx_packets"] - before_a["rx_packets"]
    assert 50 <= all_rx < 50 + 40, (ra, before_a)
    # the port's and the network's counters hold the lane's frames too
    assert ra["rx_bytes"] - before_a["rx_bytes"] >= 50 * 98
    assert rb["tx_packets"] - before_b["tx_packets"] >= lane_rx
    assert _local(node) - local0 >= 100  # both ways: pods of net1 to each other
    # the other network's ports had no part in it
    assert port_row(node, "a", "control")["express"]["rx_packets"] == 0
    text = scrape(node)
    assert (
        'dataplane_port_express_packets_total{direction="rx",name="%s",network="net1",'
        'plane="std",pod="a",role="pod"}' % host_if(a)
    ) in text
    out = node.cli("status").stdout
    assert "  express lane on" in out.splitlines()[0], out
    row = next(x for x in out.splitlines() if host_if(a) in x)
    assert "express rx " in row, out


def test_ipv6_echo_takes_the_lane_and_neighbour_discovery_the_core(node):
    """IPv6 between the pods' link-local addresses (made from their MACs):
    the echoes in the lane, neighbour discovery (which the core's guard
    checks) through the core."""
    from dataplane.checks import ipv6_link_local

    a = node.pod("a", CT_SPEC)
    b = node.pod("b", CT_SPEC)
    dev = ifname_of(a)
    b_ll = str(ipv6_link_local(bytes.fromhex(mac_of(b).replace(":", ""))))
    for ns, ifn in ((a["ns"], dev), (b["ns"], ifname_of(b))):  # duplicate-address detection
        for _ in range(300):
            out = sh("ip", "-n", ns, "-6", "addr", "show", "dev", ifn).stdout
            if "fe80::" in out and "tentative" not in out:
                break
            time.sleep(0.02)
    x0, c0 = port_row(node, "a")["express"]["rx_packets"], port_row(node, "a")["rx_packets"]
    r = subprocess.run(
        ["ip", "netns", "exec", a["ns"], "ping", "-6", "-c", "5", "-i", "0.05", "-W", "2"]
        + [f"{b_ll}%{dev}"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    ra = port_row(node, "a")
    assert ra["express"]["rx_packets"] - x0 == 5, (ra, x0)
    assert ra["rx_packets"] - c0 >= 1  # a's neighbour solicitation, multicast: the core's


def test_tcp_between_pods_arrives_whole_in_the_lane(node, tmp_path):
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", CT_SPEC)
    before = port_row(node, "a")["express"]["rx_bytes"]
    fab = Fabric(tmp_path)  # its spawn and cleanup only: the TCP ends' processes
    try:  # every byte arrived, checked by its SHA-256
        tcp_transfer(fab, "pod a -> pod b (express lane)", b["ns"], ip_of(b), a["ns"], 8 * MB)
    finally:
        fab.cleanup()
    # the pods keep their offloads: super-frames crossed whole, all in the lane
    assert port_row(node, "a")["express"]["rx_bytes"] - before > 8 << 20


def _local(node, net="net1"):
    """Network ``net``'s ``local`` counter: frames its pods sent each other."""
    return next(n for n in node.api("GET", "/v1/status")["networks"] if n["name"] == net)[
        "local_packets"
    ]


def _send_from(ns, ifname, frame_hex):
    """One raw frame out of ``ifname`` in namespace ``ns``."""
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
        f"s.bind(({ifname!r}, 0)); s.send(bytes.fromhex({frame_hex!r}))\n"
    )
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], check=True)


def _frame(dst_mac, src_mac, src_ip, dst_ip, payload=b"express-lane-test", sport=53, dport=9):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    ip = IPv6(src=src_ip, dst=dst_ip) if ":" in src_ip else IP(src=src_ip, dst=dst_ip)
    f = Ether(dst=dst_mac, src=src_mac) / ip / UDP(sport=sport, dport=dport)
    return bytes(f / payload).hex()


def _receiver(ns, ifname, marker, seconds=2.0):
    """A thread that counts frames holding ``marker`` on ``ifname`` in
    ``ns`` for ``seconds``: (thread, result list); started and ready."""
    code = (
        "import socket,select,sys,time\n"
        "s=socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))\n"
        f"s.bind(({ifname!r}, 0)); print('ready', flush=True)\n"
        f"end=time.time()+{seconds}; n=0\n"
        "while time.time()<end:\n"
        "    if select.select([s],[],[],0.05)[0]:\n"
        "        d,addr=s.recvfrom(65536)\n"
        # what arrives, not what the pod sends back (an ICMP error quotes it)
        f"        n+= addr[2]!=socket.PACKET_OUTGOING and {marker!r}.encode() in d\n"
        "print(n, flush=True)\n"
    )
    p = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout.readline().strip() == "ready"
    out = []
    t = threading.Thread(target=lambda: out.append(int(p.communicate()[0].strip())))
    t.start()
    return t, out


def test_the_lane_keeps_networks_apart_and_spoofers_out(node):
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", CT_SPEC)
    # fill the pods' neighbour tables so the core's path is quiet
    assert ping(a["ns"], ip_of(b), count=1).returncode == 0
    drops = node.api("GET", "/v1/status")["drops"]
    x0 = port_row(node, "a")["express"]["rx_packets"]
    # to b's control MAC (network net2) from a's std plane (net1): not in
    # the lane's table of net1, so the core's: a MAC unknown in net1
    t1, got1 = _receiver(b["ns"], ifname_of(b, "control"), "other-net")
    _send_from(
        a["ns"],
        ifname_of(a),
        _frame(mac_of(b, "control"), mac_of(a), ip_of(a), ip_of(b, "control"), b"other-net"),
    )
    # from a's MAC but another pod's address: the guard's to refuse
    t2, got2 = _receiver(b["ns"], ifname_of(b), "spoofed")
    _send_from(
        a["ns"], ifname_of(a), _frame(mac_of(b), mac_of(a), "192.168.50.77", ip_of(b), b"spoofed")
    )
    # a DHCP server's message (UDP from port 67), a's own addresses: the
    # pod may not serve DHCP, which the core's guard knows
    t4, got4 = _receiver(b["ns"], ifname_of(b), "dhcp-offer")
    _send_from(
        a["ns"],
        ifname_of(a),
        _frame(mac_of(b), mac_of(a), ip_of(a), ip_of(b), b"dhcp-offer", sport=67),
    )
    # the same to the DHCP client port from another source port: what a
    # client listening on 68 takes from a server all the same
    t6, got6 = _receiver(b["ns"], ifname_of(b), "dhcp-ack")
    _send_from(
        a["ns"],
        ifname_of(a),
        _frame(mac_of(b), mac_of(a), ip_of(a), ip_of(b), b"dhcp-ack", sport=1067, dport=68),
    )
    # a's own: carried
    # IPv6 from a's MAC but not from one of a's addresses: the guard's too
    t5, got5 = _receiver(b["ns"], ifname_of(b), "spoofed6")
    _send_from(
        a["ns"], ifname_of(a), _frame(mac_of(b), mac_of(a), "2001:db8::77", "fe80::1", b"spoofed6")
    )
    t3, got3 = _receiver(b["ns"], ifname_of(b), "genuine")
    _send_from(a["ns"], ifname_of(a), _frame(mac_of(b), mac_of(a), ip_of(a), ip_of(b), b"genuine"))
    for t in (t1, t2, t3, t4, t5, t6):
        t.join()
    assert (got1, got2, got3, got4, got5, got6) == ([0], [0], [1], [0], [0], [0])
    assert port_row(node, "a")["express"]["rx_packets"] - x0 == 1
    after = node.api("GET", "/v1/status")["drops"]

    def grew(reason):
        return after.get(reason, 0) - drops.get(reason, 0)

    assert (grew("spoof_ipv4"), grew("spoof_dhcp"), grew("spoof_ipv6")) == (1, 2, 1), (
        drops,
        after,
    )


def test_an_ipv6_length_past_its_frame_is_the_cores_to_refuse(node):
    """IPv6 whose payload length says the packet ends past the frame, or
    before its UDP header: not carried by the lane (the receiving kernel
    would drop it, counted nowhere of ours) but dropped by the core's guard
    as truncated; the same datagram with its true length takes the lane."""
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    from dataplane.checks import ipv6_link_local

    a = node.pod("a", CT_SPEC)
    b = node.pod("b", CT_SPEC)
    a_ll, b_ll = (str(ipv6_link_local(bytes.fromhex(mac_of(p).replace(":", "")))) for p in (a, b))
    assert ping(a["ns"], ip_of(b), count=1).returncode == 0

    def frame(marker, plen=None):
        ip = IPv6(src=a_ll, dst=b_ll) if plen is None else IPv6(src=a_ll, dst=b_ll, plen=plen)
        f = Ether(dst=mac_of(b), src=mac_of(a)) / ip / UDP(sport=1000, dport=2000)
        return bytes(f / (marker.encode() + b"." * 16)).hex()

    drops = node.api("GET", "/v1/status")["drops"]
    x0 = port_row(node, "a")["express"]["rx_packets"]
    got = {}
    for marker, plen in (("too-long", 200), ("too-short", 4), ("whole", None)):
        t, out = _receiver(b["ns"], ifname_of(b), marker)
        _send_from(a["ns"], ifname_of(a), frame(marker, plen))
        t.join()
        got[marker] = out[0]
    assert got == {"too-long": 0, "too-short": 0, "whole": 1}, got
    assert port_row(node, "a")["express"]["rx_packets"] - x0 == 1
    after = node.api("GET", "/v1/status")["drops"]
    assert after.get("truncated", 0) - drops.get("truncated", 0) == 2, (drops, after)


def test_a_frame_over_the_networks_mtu_is_the_cores_to_refuse(node):
    """A pod whose interface was given a larger MTU by hand: its frame
    longer than the network's MTU allows is not carried by the lane (which
    would hand it to a pod that cannot take it) but refused by the core
    (kport_oversize); its super-frames still take the lane (the TCP test)."""
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", CT_SPEC)
    assert ping(a["ns"], ip_of(b), count=1).returncode == 0
    for ns, dev in ((a["ns"], ifname_of(a)), (None, host_if(a))):
        sh(*(["ip", "-n", ns] if ns else ["ip"]), "link", "set", dev, "mtu", "9000")
    drops = node.api("GET", "/v1/status")["drops"]
    x0 = port_row(node, "a")["express"]["rx_packets"]
    t1, got1 = _receiver(b["ns"], ifname_of(b), "too-long")
    big = b"too-long" + b"x" * 3000
    _send_from(a["ns"], ifname_of(a), _frame(mac_of(b), mac_of(a), ip_of(a), ip_of(b), big))
    t2, got2 = _receiver(b["ns"], ifname_of(b), "fits")
    _send_from(a["ns"], ifname_of(a), _frame(mac_of(b), mac_of(a), ip_of(a), ip_of(b), b"fits"))
    t1.join()
    t2.join()
    assert (got1, got2) == ([0], [1])
    assert port_row(node, "a")["express"]["rx_packets"] - x0 == 1  # the one that fits
    after = node.api("GET", "/v1/status")["drops"]
    assert after.get("kport_oversize", 0) - drops.get("kport_oversize", 0) == 1, (drops, after)


def test_frames_to_a_pod_whose_interface_is_down_are_the_cores_to_count(node):
    """Pod b's interface set down in its namespace: frames from pod a to
    it, which the lane would count delivered while the kernel dropped them
    unseen (a veth whose peer is down takes nothing), take the core's path
    once the service has seen it, and are counted dropped there
    (kport_kernel_tx); set up again, the lane carries them to b again."""
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", CT_SPEC)
    assert ping(a["ns"], ip_of(b), count=1).returncode == 0
    frame = _frame(mac_of(b), mac_of(a), ip_of(a), ip_of(b), b"to-b")

    def counts():
        st = node.api("GET", "/v1/status")
        row = next(p for p in st["ports"] if p["pod"] == "a" and p["plane"] == "std")
        return row["express"]["rx_packets"], st["drops"].get("kport_kernel_tx", 0)

    def send(n):
        code = (
            "import socket\n"
            "s=socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
            f"s.bind(({ifname_of(a)!r}, 0))\n"
            f"for _ in range({n}): s.send(bytes.fromhex({frame!r}))\n"
        )
        subprocess.run(["ip", "netns", "exec", a["ns"], sys.executable, "-c", code], check=True)

    def until(cond, what):
        for _ in range(100):
            got = counts()
            if cond(got):
                return got
            time.sleep(0.05)
        raise AssertionError(f"{what}: {got}")

    x0, d0 = counts()
    send(20)
    # counted as the kernel takes them in (its softirq may come later)
    x1, d1 = until(lambda c: c[0] - x0 + c[1] - d0 >= 20, "20 frames not counted")
    assert (x1 - x0, d1 - d0) == (20, 0), (x0, d0, x1, d1)
    sh("ip", "-n", b["ns"], "link", "set", ifname_of(b), "down")
    # the service sees it when the kernel tells it: from then on the lane
    # leaves a's frames to b to the core (one more frame sent until it does)
    for _ in range(100):
        xa = counts()[0]
        send(1)
        time.sleep(0.2)
        if counts()[0] == xa:
            break
    else:
        raise AssertionError("the lane kept carrying frames to b's interface, which is down")
    x2, d2 = counts()
    send(20)
    # (pod a's kernel may probe b's address meanwhile: those are dropped too)
    x3, d3 = until(lambda c: c[1] - d2 >= 20, "the core did not count 20 drops")
    assert x3 == x2, (x2, d2, x3, d3)
    sh("ip", "-n", b["ns"], "link", "set", ifname_of(b), "up")
    t, got = _receiver(b["ns"], ifname_of(b), "to-b", seconds=4.0)
    for _ in range(60):  # the lane takes them again once the service has seen it
        x4 = counts()[0]
        send(1)
        if counts()[0] > x4:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the lane did not take a's frames to b again once b was up")
    t.join()
    assert got[0] >= 1, got
    # the log said both, with the pod, plane and interface as fields
    lines = [json.loads(x) for x in (node.tmp / "service.log").read_text().splitlines()
             if x.startswith("{") and '"pod interface ' in x]  # fmt: skip
    said = [(x["level"], x["msg"].split(" (")[0].split(":")[0]) for x in lines]
    assert said == [("warning", "pod interface is down"),
                    ("info", "pod interface carries frames again")], lines  # fmt: skip
    assert all((x["pod"], x["plane"], x["interface"]) == ("b", "std", host_if(b)) for x in lines)


# TCP source for a while: connects, sends for `secs` seconds whatever the
# connection takes, then resets it; its MSS and the bytes it queued as JSON
TCP_PUSH = """
import json, socket, struct, sys, time
ip, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((ip, port), timeout=10)
mss = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
s.setblocking(False)
sent, buf, end = 0, bytes(1 << 16), time.monotonic() + secs
while time.monotonic() < end:
    try:
        sent += s.send(buf)
    except BlockingIOError:
        time.sleep(0.01)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
print(json.dumps({"mss": mss, "sent": sent}))
"""


def test_super_frames_whose_segments_pass_the_networks_mtu_are_the_cores(fabric):
    """Pod a's interface raised by hand past its network's MTU, and a peer
    behind a kernel VTEP that offers a large MSS: a's TCP super-frames
    would become segments longer than the underlay takes once cut after
    the tunnel. The lane leaves them to the core, which refuses and counts
    them (``oversize``, as for a port not in the lane); pod b at the
    network's MTU, to the same peer, still has its super-frames carried
    by the lane, encapsulated whole."""
    fab = fabric()
    node = fab.node(1, [kp.HOST_VTEP], vtep=", learning: true")
    vm = fab.kernel_host(["10.99.0.1"])
    a, b = fab.pod(1, "a", kp.SUBNET + "11"), fab.pod(1, "b", kp.SUBNET + "12")
    for p in (a, b):  # the node learns the vm's MAC: a remote FDB entry, the lane's
        kp.reach(p["ns"], kp.VM_IP, f"pod {p['ip']} -> kernel-VTEP host")
    kp.ipn(node.ns, f"link set {a['planes'][0]['host_ifname']} mtu 9000")
    kp.ipn(a["ns"], "link set eth0 mtu 9000")
    (route,) = [
        r
        for r in kp.nsx(vm, "ip", "route", "show", check=True).stdout.splitlines()
        if r.startswith(kp.SUBNET + "0/")
    ]
    kp.nsx(vm, "ip", "route", "change", *route.split(), "advmss", "8000", check=True)
    max_len = fab.pod_mtu + 14  # the longest frame the network takes

    def lane(p):
        return next(
            r for r in node.status()["ports"] if r["name"] == p["planes"][0]["host_ifname"]
        )["express"]

    def oversize():
        d = node.status()["drops"]
        return d.get("oversize", 0) + d.get("kport_oversize", 0)

    x0, o0 = lane(a), oversize()
    srv = fab.spawn(vm, kp.TCP_SERVER, 5201, 20, 3, "0.0.0.0")
    assert srv.stdout.readline().strip() == "ready", srv.stderr.read()
    cli = fab.spawn(a["ns"], TCP_PUSH, kp.VM_IP, 5201, 2)
    out, err = cli.communicate(timeout=60)
    assert out, err
    pushed = json.loads(out)
    got = json.loads(srv.communicate(timeout=60)[0])
    x1, o1 = lane(a), oversize()
    # a's segments are longer than the network's MTU allows ...
    assert pushed["mss"] + 54 > max_len and pushed["sent"] > 0, pushed
    # ... so none of its data frames took the lane: what it carried fits
    rx_p, rx_b = x1["rx_packets"] - x0["rx_packets"], x1["rx_bytes"] - x0["rx_bytes"]
    assert rx_b <= rx_p * max_len and rx_b < 64 * 1024, (x0, x1, pushed)
    # the core refused and counted them, and none reached the peer
    assert o1 > o0, (o0, o1, node.status()["drops"])
    assert got["bytes"] == 0, got

    # pod b at the network's MTU: its super-frames (MSS 1410 less options:
    # segments of exactly the longest frame) encapsulated by the lane
    y0, o2 = lane(b), oversize()
    tcp_transfer(fab, "pod b -> vtep host (lane)", vm, kp.VM_IP, b["ns"], size=4 * MB)
    y1 = lane(b)
    rx_p, rx_b = y1["rx_packets"] - y0["rx_packets"], y1["rx_bytes"] - y0["rx_bytes"]
    assert rx_b > 4 * MB, (y0, y1)
    assert rx_b > rx_p * max_len, (y0, y1)  # super-frames, carried whole
    assert oversize() == o2, node.status()["drops"]


def test_a_vlan_tagged_frame_is_left_to_the_core(node):
    """A frame a pod sends with an 802.1Q tag (which the kernel takes out of
    the frame into the skb on the way in): the core carries it, tag and
    all; the lane, which would lose the tag (or put it on the outer frame
    to a remote VTEP), does not take it."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Dot1Q, Ether

    a = node.pod("a", CT_SPEC)
    b = node.pod("b", CT_SPEC)
    assert ping(a["ns"], ip_of(b), count=1).returncode == 0
    x0, c0 = port_row(node, "a")["express"]["rx_packets"], port_row(node, "a")["rx_packets"]
    tagged = (
        Ether(dst=mac_of(b), src=mac_of(a))
        / Dot1Q(vlan=7)
        / IP(src=ip_of(a), dst=ip_of(b))
        / UDP(sport=53, dport=9)
        / b"tagged-frame"
    )
    t, got = _receiver(b["ns"], ifname_of(b), "tagged-frame")
    _send_from(a["ns"], ifname_of(a), bytes(tagged).hex())
    t.join()
    assert got == [1]
    assert port_row(node, "a")["express"]["rx_packets"] == x0  # not the lane's
    assert port_row(node, "a")["rx_packets"] >= c0 + 1  # the core's


def test_a_capture_sees_every_frame_and_the_lane_resumes(node):
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", CT_SPEC)
    assert ping(a["ns"], ip_of(b), count=1).returncode == 0
    cap = subprocess.Popen(
        [sys.executable, "-m", "dataplane.cli", "capture", "a:std", "-c", "6", "icmp"]
        + ["--socket", node.sock],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    line = cap.stderr.readline()
    assert "capturing" in line, line + cap.stderr.read()
    x0 = port_row(node, "a")["express"]["rx_packets"]
    assert ping(a["ns"], ip_of(b), count=3, interval="0.1").returncode == 0
    assert cap.wait(30) == 0, cap.stderr.read()
    assert "6 frames shown" in cap.stderr.read()
    # while it ran, the core carried them
    assert port_row(node, "a")["express"]["rx_packets"] == x0
    # after it, the lane again
    assert ping(a["ns"], ip_of(b), count=3, interval="0.05").returncode == 0
    assert port_row(node, "a")["express"]["rx_packets"] == x0 + 3


def test_the_guard_of_express_lane_false_carries_nothing_even_after_a_capture(tmp_path):
    """express_lane: false loads the lane's programs as the host ends'
    guard only: every frame takes the core's path (counted by its ports,
    not the lane's), nothing is attached to the uplink, and a capture's end
    does not switch a lane on."""
    with running_node(tmp_path, extra="express_lane: false\n") as node:
        a = node.pod("a", CT_SPEC)
        b = node.pod("b", CT_SPEC)
        assert "ex_tc" in lane_filters(host_if(a))
        assert "ex_tc" not in lane_filters(node.uplink)
        st = node.api("GET", "/v1/status")
        assert st["express_lane"] is False and st["express_guard"] is True, st
        out = node.cli("status").stdout
        assert "  express lane off (its programs guard the pods' host ends)" in out, out
        for capture in (False, True):
            if capture:
                cap = node.api("POST", "/v1/capture", {"target": "a:std"})
                node.api("DELETE", f"/v1/capture?id={cap['id']}")
            c0 = port_row(node, "b")["tx_packets"]
            assert ping(a["ns"], ip_of(b), count=3, interval="0.05").returncode == 0
            row = port_row(node, "b")
            assert row["express"] is None and row["tx_packets"] >= c0 + 3, row
        st = node.api("GET", "/v1/status")
        assert st["express_lane"] is False and st["express_guard"] is True, st


def test_a_service_stopped_while_capturing_leaves_the_lane_on(node):
    """A capture turns the lane off (the core sees every frame); the service
    stopping while it runs turns it back on before leaving the programs on
    the veths: its pods keep reaching each other while it is away."""
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", CT_SPEC)
    assert ping(a["ns"], ip_of(b), count=1).returncode == 0
    cap = node.api("POST", "/v1/capture", {"target": "a:std"})
    assert cap["id"]
    node.stop()
    r = ping(a["ns"], ip_of(b), count=20, interval="0.01")
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout


def test_the_lane_carries_on_while_the_service_is_away_and_goes_with_it(node):
    """A deleted pod's program goes with its port. A stopped (or killed)
    service leaves the lane's programs on the veths: its pods keep reaching
    each other until the next start takes the veths over; a start without
    the lane takes them off."""
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", CT_SPEC)
    c = node.pod("c", CT_SPEC)
    assert "ex_tc" in lane_filters(host_if(c))
    node.cli("pod", "del", "c")
    assert ping(a["ns"], ip_of(c), count=1, interval="0.1").returncode != 0
    assert ping(a["ns"], ip_of(b), count=1).returncode == 0  # neighbours known
    node.stop()
    (old,) = [ln for ln in lane_filters(host_if(a)).splitlines() if "ex_tc" in ln]
    assert "ex_tc" in lane_filters(node.uplink)  # it decapsulates meanwhile
    # no core, no worker: the kernel carries a's pings to b and back
    r = ping(a["ns"], ip_of(b), count=20, interval="0.01")
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout
    node.start()  # takes them over: one program a veth (its own), counting anew
    (new,) = [ln for ln in lane_filters(host_if(a)).splitlines() if "ex_tc" in ln]
    assert new.split(" id ")[1] != old.split(" id ")[1], (old, new)
    assert ping(a["ns"], ip_of(b), count=3, interval="0.05").returncode == 0
    assert port_row(node, "a")["express"]["rx_packets"] >= 3
    node.stop(signal.SIGKILL)
    assert "ex_tc" in lane_filters(host_if(a))
    node.cfg.write_text(node.cfg.read_text() + "express_lane: false\n")
    os.unlink(node.sock)  # the killed one's: start() waits for the new one's
    node.start()
    # the lane's program again, as the host end's guard only (a new one)
    (guard,) = [ln for ln in lane_filters(host_if(a)).splitlines() if "ex_tc" in ln]
    assert guard.split(" id ")[1] != new.split(" id ")[1], (new, guard)
    assert "ex_tc" not in lane_filters(node.uplink)  # nothing on the uplink
    st = node.api("GET", "/v1/status")
    assert st["express_lane"] is False and st["express_guard"] is True, st
    assert port_row(node, "a")["express"] is None
    assert ping(a["ns"], ip_of(b), count=3, interval="0.05").returncode == 0  # the core's


def test_the_lane_needs_the_afpacket_driver(tmp_path):
    from dataplane.config import parse_config
    from dataplane.errors import ConfigError

    base = {"vtep": {"address": "10.99.0.1/24", "uplink": "lo"}, "state_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match="express_lane: true needs kernel_driver afpacket"):
        parse_config({**base, "kernel_driver": "af_xdp", "express_lane": True})
    with pytest.raises(ConfigError, match="express_lane: 3 is not true, false or auto"):
        parse_config({**base, "express_lane": 3})
    assert parse_config({**base, "express_lane": True}).express_lane is True
    # auto (the default): on with afpacket where the kernel takes it, off with af_xdp
    assert parse_config(base).express_lane is None
    assert parse_config({**base, "express_lane": "auto"}).to_dict()["express_lane"] == "auto"
    assert parse_config({**base, "kernel_driver": "af_xdp"}).express_lane is False


def test_the_plain_build_carries_between_pods_and_nothing_to_remote_vteps(tmp_path, monkeypatch):
    """The programs' plain build (express.plain.bpf.o: for a kernel without
    bpf_cast_to_kern_ctx or its BTF) loads and carries pod to pod, and
    says it encapsulates nothing to remote VTEPs (it cannot check a
    frame's checksum offsets); the full build here does."""
    from dataplane.engine import _HERE, express_probe

    plain = os.path.join(_HERE, "express.plain.bpf.o")
    assert express_probe(os.path.join(_HERE, "express.bpf.o")) == (None, True)
    assert express_probe(plain) == (None, False)
    # a full build the kernel refuses (here: not an ELF file) falls back to
    # the plain build beside it; without one, the refusal is said
    (tmp_path / "fb").mkdir()
    junk = tmp_path / "fb" / "express.bpf.o"
    junk.write_bytes(b"not an ELF file")
    assert express_probe(str(junk))[0] is not None
    shutil.copy(plain, tmp_path / "fb" / "express.plain.bpf.o")
    assert express_probe(str(junk)) == (None, False)
    monkeypatch.setenv("DATAPLANE_EXPRESS_OBJECT", plain)
    with running_node(tmp_path) as node:
        st = node.api("GET", "/v1/status")
        assert st["express_lane"] is True and st["express_remote"] is False, st
        out = node.cli("status").stdout
        assert "  express lane on (not to remote VTEPs)" in out, out
        a = node.pod("a", CT_SPEC)
        b = node.pod("b", CT_SPEC)
        x0 = port_row(node, "a")["express"]["rx_packets"]
        assert ping(a["ns"], ip_of(b), count=3, interval="0.05").returncode == 0
        assert port_row(node, "a")["express"]["rx_packets"] == x0 + 3
        node.stop()
        r = run_cli("check", "-c", str(node.cfg))
        assert r.returncode == 0 and "not to remote VTEPs" in r.stdout, r.stdout + r.stderr


def test_auto_goes_on_without_a_lane_the_kernel_refuses_and_true_stops(tmp_path, monkeypatch):
    """A lane the kernel will not load (here: not an ELF object): with the
    default ``auto`` the node starts without it, says why, and its pods
    reach each other through the core; with ``true`` the start stops."""
    junk = tmp_path / "junk.bpf.o"
    junk.write_bytes(b"not an ELF file")
    monkeypatch.setenv("DATAPLANE_EXPRESS_OBJECT", str(junk))
    with running_node(tmp_path) as node:
        st = node.api("GET", "/v1/status")
        assert st["express_lane"] is False and "junk.bpf.o" in st["express_lane_off"], st
        out = node.cli("status").stdout
        assert "  express lane off (pods reach each other through the core): " in out, out
        log = (tmp_path / "service.log").read_text()
        assert "express lane off" in log and "junk.bpf.o" in log, log
        a = node.pod("a", CT_SPEC)
        b = node.pod("b", CT_SPEC)
        assert "ex_tc" not in lane_filters(host_if(a))
        assert ping(a["ns"], ip_of(b), count=3, interval="0.05").returncode == 0
        assert port_row(node, "a")["express"] is None
        node.stop()  # check refuses an uplink a running service holds
        r = run_cli("check", "-c", str(node.cfg))
        assert r.returncode == 0 and "express lane off (auto)" in r.stdout, r.stdout + r.stderr
        node.cfg.write_text(node.cfg.read_text() + "express_lane: true\n")
        r = run_cli("check", "-c", str(node.cfg))
        assert r.returncode == 2 and "express_lane: true, but" in r.stderr, r.stdout + r.stderr
        with pytest.raises(AssertionError, match="service exited"):
            node.start()
        assert "junk.bpf.o" in (tmp_path / "service.log").read_text()


def test_check_loads_the_lane_as_a_start_would(tmp_path):
    from dataplane.engine import express_loadable

    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        "express_lane: true\n"
        "vtep: {address: 10.99.0.1/24, uplink: lo}\n"
        f"state_dir: {tmp_path}/state\napi_socket: {tmp_path}/api.sock\n"
    )
    r = run_cli("check", "-c", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "express lane: on (the kernel took its programs" in r.stdout, r.stdout
    assert express_loadable() is None
    missing = express_loadable(str(tmp_path / "none.bpf.o"))
    assert "none.bpf.o is missing" in missing and "clang" in missing
    junk = tmp_path / "junk.bpf.o"
    junk.write_bytes(b"not an ELF file")
    why = express_loadable(str(junk))
    assert why and "junk.bpf.o" in why, why


def _lane_race(mode):
    """tests/lanerace.py in a process of its own (an engine of its own)."""
    import json

    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "lanerace.py"), mode, "40000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["rcvbuf_errors"] == 0, res  # the receiver kept up: what is missing is ours
    return res


def test_switching_the_lane_under_traffic_loses_and_doubles_nothing():
    """The lane switched on and off as fast as the control thread can (a
    capture does it once each way) while pod a streams numbered datagrams
    to pod b: each one arrives once, whichever path took it; before the
    socket filter handed its decision to tc, a switch between the two lost
    some (refused by the one, left by the other) and doubled others."""
    res = _lane_race("switch")
    assert res["changes"] > 1000, res
    assert 0 < res["lane"] < res["sent"], res  # both paths carried some
    assert res["duplicates"] == 0, res
    assert res["received"] == res["sent"], res
    assert "express_changed" not in res["drops"], res


def test_a_pod_leaving_the_lane_under_traffic_loses_only_what_is_counted():
    """Pod b out of the lane and in again, over and over, while a streams
    to it: nothing arrives twice, and a datagram the socket filter had
    refused whose destination left before tc ran is the one kind missing,
    counted as express_changed."""
    res = _lane_race("member")
    assert res["changes"] > 100, res
    assert res["duplicates"] == 0, res
    lost = res["drops"].get("express_changed", 0)
    assert res["received"] + lost == res["sent"], res
    assert set(res["drops"]) <= {"express_changed"}, res


def test_switching_the_lane_under_vxlan_from_the_underlay_loses_and_doubles_nothing():
    """The same from the other side: datagrams from a host behind the
    kernel's own VXLAN VTEP to pod b, which the lane decapsulates on the
    uplink while it is on and the core while it is off, the lane switched
    meanwhile: each one arrives once."""
    res = _lane_race("underlay")
    assert res["changes"] > 1000, res
    assert 0 < res["lane"] < res["sent"], res
    assert res["duplicates"] == 0, res
    assert res["received"] == res["sent"], res
    assert not res["drops"], res


def test_switching_the_lane_under_a_tcp_stream_from_the_underlay_keeps_it_whole():
    """A TCP stream from a host behind the kernel's own VXLAN VTEP to pod b
    (its super-frames whole), whose data the lane decapsulates while it is
    on and the core while it is off, the lane switched over and over
    meanwhile: all 40 MB arrive, intact, and both paths carried some of
    the data (some 600 super-frames of it: the handshake and the FIN are
    a few frames)."""
    res = _lane_race("stream")
    assert res["changes"] > 100, res
    assert res["lane"] > 100 and res["core"] > 100, res
    assert res["received"] == res["sent"] and res["intact"], res
    # none of ours; the kernel may drop a super-frame at a veth whose peer's
    # backlog is full on a loaded machine (kport_kernel_tx: the interface's
    # own tx_dropped; seen once with both test lanes running), which TCP sends again
    assert set(res["drops"]) <= {"kport_kernel_tx"}, res


def test_a_mac_moving_between_vteps_under_traffic_leaves_with_a_whole_header():
    """A MAC behind the underlay moves from one VTEP to another and back,
    over and over (each move makes one tunnel and frees the other, whose
    slot the next move takes again), while pod a's TCP segments to it go
    through the lane: every frame on the underlay carries one tunnel's
    template whole - next-hop MAC, VTEP address and a valid checksum of
    the same one - through the lane's two template slots (struct ex_tun)."""
    res = _lane_race("move")
    assert res["changes"] > 1000, res
    assert res["lane"] > res["sent"] // 2, res  # the lane encapsulated them
    assert res["received"] > res["sent"] // 2, res
    assert res["torn"] == 0, res
    assert set(res["drops"]) <= {"express_changed"}, res


# what a UDP socket of the node's own stack (0.0.0.0:7777) receives, one
# line each, until the datagram "control" (sent last, by the node itself)
NODE_LISTENER = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind(("0.0.0.0", 7777))
print("ready", flush=True)
while True:
    d, a = s.recvfrom(2048)
    print(d.decode(errors="replace"), a[0], flush=True)
    if d == b"control":
        break
"""


def _listened(node, listener):
    """What NODE_LISTENER in node's namespace got, up to the control
    datagram sent to it now from the node itself."""
    from tests.test_kernel_pods import nsx

    control = (
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.sendto(b'control', ('127.0.0.1', 7777))\n"
    )
    nsx(node.ns, sys.executable, "-c", control, check=True)
    return [g for g in listener.communicate(timeout=30)[0].split("\n") if g]


#: a pod sending limited broadcasts (0.0.0.0 -> 255.255.255.255:7777) out of
#: eth0 every 2 ms until its stdin closes
BROADCASTER = """
import socket, sys, threading, time
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
mac = open("/sys/class/net/eth0/address").read().strip()
f = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=mac) / IP(src="0.0.0.0", dst="255.255.255.255")
          / UDP(sport=68, dport=7777) / b"limited")
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
n = 0
while not done.is_set():
    try:
        s.send(f)
        n += 1
    except OSError:
        break  # the pod's interface went (the pod deleted)
    if n == 1:
        print("sending", flush=True)
    time.sleep(0.002)
print(n, flush=True)
"""


def test_a_host_end_stays_guarded_through_a_restart_a_delete_and_a_lane_refusal(fabric):
    """The host end of a pod is guarded by the lane's program from before
    its port opens until its veth is deleted: a pod sending limited
    broadcasts the whole time reaches none of the node's sockets while
    the service restarts (the old program replaced, not taken off first),
    while the pod is deleted, nor when the lane refuses the pod (more
    addresses than it holds: its frames take the core's path)."""
    from tests.test_kernel_pods import nsx

    fab = fabric()
    node = fab.node(1, [])
    assert node.status()["express_lane"] is True
    nsx(node.ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", check=True)
    listener = fab.spawn(node.ns, NODE_LISTENER)
    assert listener.stdout.readline().strip() == "ready"
    a = fab.pod(1, "a", kp.SUBNET + "11")
    more = {"std": [kp.SUBNET + str(100 + i) for i in range(8)]}  # 9 with its own: past 8
    b = fab.pod(1, "b", kp.SUBNET + "12", allowed_addresses=more)
    hif_b = b["planes"][0]["host_ifname"]
    assert (
        "ex_tc" in nsx(node.ns, "tc", "filter", "show", "dev", hif_b, "ingress").stdout
    )  # refused by the lane, guarded all the same
    senders = [
        subprocess.Popen(
            ["ip", "netns", "exec", p["ns"], sys.executable, "-c", BROADCASTER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for p in (a, b)
    ]
    try:
        for p in senders:  # sending (scapy's import takes a while on a busy VM)
            assert p.stdout.readline().strip() == "sending"
        time.sleep(0.3)
        node.stop()
        node.start()
        time.sleep(0.3)
        node.api("DELETE", f"/v1/pods?name={fab.tag}a")
        time.sleep(0.3)
    finally:
        sent = [int(p.communicate("", timeout=30)[0].strip() or 0) for p in senders]
    assert sent[0] > 50 and sent[1] > 200, sent
    assert "ex_tc" in nsx(node.ns, "tc", "filter", "show", "dev", hif_b, "ingress").stdout
    got = _listened(node, listener)
    assert got == ["control 127.0.0.1"], (got[:5], len(got))


def test_af_xdp_host_ends_are_guarded_while_the_service_is_away(fabric):
    """Under kernel_driver: af_xdp the lane's programs are the host ends'
    guard (the lane needs the AF_PACKET driver): each pod's host end has
    its tc program, which keeps the pod's frames from the node's stack
    also once the service stopped and its XDP program went."""
    from tests.test_kernel_pods import nsx

    fab = fabric()
    node = fab.node(1, [], extra="kernel_driver: af_xdp\n")
    st = node.status()
    assert st["express_lane"] is False and st["express_guard"] is True, st
    a = fab.pod(1, "a", kp.SUBNET + "11")
    hif = a["planes"][0]["host_ifname"]
    assert "ex_tc" in nsx(node.ns, "tc", "filter", "show", "dev", hif, "ingress").stdout
    nsx(node.ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", check=True)
    listener = fab.spawn(node.ns, NODE_LISTENER)
    assert listener.stdout.readline().strip() == "ready"
    node.stop()
    bcast = _frame("ff:ff:ff:ff:ff:ff", mac_of(a), "0.0.0.0", "255.255.255.255", b"away", 68, 7777)
    for _ in range(3):
        _send_from(a["ns"], "eth0", bcast)
    got = _listened(node, listener)
    assert got == ["control 127.0.0.1"], got


@pytest.mark.parametrize("lane", [True, False])
def test_a_pod_reaches_nothing_of_the_nodes_own_stack(fabric, lane):
    """A pod's frames are the core's, which guards them; the node's own
    stack, which also sees them on the pod's host end, takes none: no ARP
    answer for the node's addresses, no datagram to its sockets - unicast
    to the host end's MAC (a static neighbour entry), unicast IP in a
    broadcast frame, and a limited broadcast from 0.0.0.0 (dropped by the
    lane's program on the host end, which express_lane: false loads as a
    guard only). Pods still reach each other."""
    from tests.test_kernel_pods import ipn, nsx

    fab = fabric()
    node = fab.node(1, [], extra="" if lane else "express_lane: false\n")
    st = node.status()
    assert st["express_lane"] is lane and st["express_guard"] is not lane, st
    a, b = fab.pod(1, "a", kp.SUBNET + "11"), fab.pod(1, "b", kp.SUBNET + "12")
    hif = b["planes"][0]["host_ifname"]
    # an address of the node's (its management network, say), and strict
    # reverse-path checks left to each interface's own setting
    ipn(node.ns, "link add mg0 type veth peer name mg1")
    node.host_links.add("mg0")
    ipn(node.ns, "addr add 10.200.0.1/24 dev mg0")
    ipn(node.ns, "link set mg0 up")
    nsx(node.ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", check=True)
    listener = fab.spawn(node.ns, NODE_LISTENER)
    assert listener.stdout.readline().strip() == "ready"

    ipn(b["ns"], "route add 10.200.0.0/24 dev eth0")
    r = nsx(b["ns"], "ping", "-c", "2", "-i", "0.2", "-W", "1", "10.200.0.1")
    assert r.returncode != 0, r.stdout  # no ARP answer, no echo reply
    neigh = ipn(b["ns"], "neigh show 10.200.0.1 dev eth0").stdout
    assert "lladdr" not in neigh, neigh
    host_mac = json.loads(ipn(node.ns, f"-j link show {hif}").stdout)[0]["address"]
    ipn(b["ns"], f"neigh replace 10.200.0.1 lladdr {host_mac} dev eth0")
    send = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.sendto(b'unicast', ('10.200.0.1', 7777))\n"
    )
    nsx(b["ns"], sys.executable, "-c", send, check=True)
    bcast = "ff:ff:ff:ff:ff:ff"
    _send_from(
        b["ns"], "eth0", _frame(bcast, mac_of(b), b["ip"], "10.200.0.1", b"l2bcast", 9, 7777)
    )
    # what no interface setting keeps from the node's sockets
    _send_from(
        b["ns"],
        "eth0",
        _frame(bcast, mac_of(b), "0.0.0.0", "255.255.255.255", b"limited", 68, 7777),
    )
    r = ping(a["ns"], ip_of(b), count=3, interval="0.1")  # pods: through the lane or the core
    assert r.returncode == 0, r.stdout
    nsx(
        node.ns,
        sys.executable,
        "-c",
        send.replace("unicast", "control").replace("10.200.0.1", "127.0.0.1"),
        check=True,
    )
    got = listener.communicate(timeout=30)[0].split("\n")
    assert [g for g in got if g] == ["control 127.0.0.1"], got
