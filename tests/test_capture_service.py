"""``dataplane capture`` against a running node service: pod ports show
the pods' own frames with their direction, and the frames the core drops
with their reason, the uplink shows the outer VXLAN headers, files are pcapng that tshark reads whole (after Ctrl-C too), and a
bad filter is refused without leaving anything running."""

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import uuid

import pytest
from nodeparts import underlay_node
from test_service import CT_SPEC, IT_SPEC, NETWORKS, ROOT, Node, ip_of, ping

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


@pytest.fixture
def node(tmp_path):
    """A node whose uplink's peer is a remote VTEP in an underlay namespace."""
    with underlay_node(tmp_path, NETWORKS, ["net1"]) as (n, _):
        yield n


def capture(node, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "dataplane.cli", "capture", *args, "--socket", node.sock],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def started(proc):
    """Wait for the capture's 'capturing ...' line on stderr."""
    line = proc.stderr.readline()
    assert "capturing" in line, line + proc.stderr.read()


def tshark(path, *fields):
    r = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|"]
        + [a for f in fields for a in ("-e", f)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return [line.split("|") for line in r.stdout.splitlines()]


def echoes_in(path):
    """(echo requests, echo replies) among the IPv4 frames the pcapng file
    at ``path`` holds so far (a block still being written not counted)."""
    data = path.read_bytes() if path.exists() else b""
    off, req, rep = 0, 0, 0
    while off + 12 <= len(data):
        btype, blen = struct.unpack_from("<II", data, off)
        if blen < 12 or off + blen > len(data):
            break  # the rest is still to be written
        if btype == 6:  # an enhanced packet block: its frame after 28 bytes
            caplen = struct.unpack_from("<I", data, off + 20)[0]
            f = data[off + 28 : off + 28 + caplen]
            if f[12:14] == b"\x81\x00":  # one VLAN tag
                f = f[:12] + f[16:]
            if len(f) > 34 and f[12:14] == b"\x08\x00" and f[23] == 1:  # IPv4 ICMP
                icmp = 14 + (f[14] & 0x0F) * 4
                req += f[icmp] == 8
                rep += f[icmp] == 0
        off += blen
    return req, rep


def written(path, pings, timeout=20.0):
    """Wait until the capture's file holds ``pings`` echo requests and their
    replies (the client writes what it fetches as it fetches it)."""
    end = time.monotonic() + timeout
    while min(echoes_in(path)) < pings:
        assert time.monotonic() < end, f"not in the file: {echoes_in(path)} of {pings} echoes"
        time.sleep(0.05)


def capturing(node, out, target, pings):
    """Pods a (CT) and b (IT), a capture of ``target`` to file ``out``
    started, ``pings`` echoes from a to b caught in it: (a, b, capture)."""
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", IT_SPEC)
    cap = capture(node, target, "-w", str(out))
    started(cap)
    assert ping(a["ns"], ip_of(b), count=pings, interval="0.1").returncode == 0
    written(out, pings)
    return a, b, cap


def test_pod_plane_capture_to_pcapng_with_directions(node, tmp_path):
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", IT_SPEC)
    out = tmp_path / "a.pcapng"
    cap = capture(node, "a:std", "-w", str(out), "-c", "6", "icmp")
    started(cap)
    r = ping(a["ns"], ip_of(b), count=5, interval="0.1")
    assert r.returncode == 0, r.stdout
    assert cap.wait(30) == 0, cap.stderr.read()
    assert "6 frames written" in cap.stderr.read()
    rows = tshark(
        out, "frame.interface_name", "frame.packet_flags_direction", "icmp.type", "ip.src", "ip.dst"
    )
    assert len(rows) == 6
    a_ip, b_ip = ip_of(a), ip_of(b)
    dirs = set()
    for iface, direction, icmp_type, src, dst in rows:
        assert iface == "a:std"
        direction = str(int(direction, 0))  # tshark prints 0x00000001
        dirs.add(direction)
        # into the core from the pod (rx): a's requests; out to the pod: b's replies
        if direction == "1":
            assert (icmp_type, src, dst) == ("8", a_ip, b_ip)
        else:
            assert (direction, icmp_type, src, dst) == ("2", "0", b_ip, a_ip)
    assert dirs == {"1", "2"}


def test_uplink_capture_prints_outer_vxlan_lines(node):
    a = node.pod("a", CT_SPEC)
    cap = capture(
        node, "uplink", "-c", "2", "--direction", "tx", "udp port 4789 and ether[62:2] = 0x0806"
    )
    started(cap)
    # nobody has this address: a's ARP requests are flooded to the remote VTEP
    ping(a["ns"], "192.168.50.200", count=3, interval="0.3")
    assert cap.wait(30) == 0, cap.stderr.read()
    lines = cap.stdout.read().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert (
            " Out " in line and "10.99.0.1." in line and "> 10.99.0.2.4789: VXLAN vni 101" in line
        )
        assert "ARP, Request who-has 192.168.50.200 tell " + ip_of(a) in line


def test_ctrl_c_leaves_a_whole_file_and_no_capture(node, tmp_path):
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", IT_SPEC)
    out = tmp_path / "c.pcapng"
    cap = capture(node, a["name"], "-w", str(out))  # every plane of pod a
    started(cap)
    assert ping(a["ns"], ip_of(b), count=3, interval="0.1").returncode == 0
    written(out, 3)
    cap.send_signal(signal.SIGINT)
    assert cap.wait(30) == 0, cap.stderr.read()
    rows = tshark(out, "frame.interface_name", "icmp.type")
    names = {r[0] for r in rows}
    assert names <= {"a:std", "a:control"} and "a:std" in names
    assert sum(1 for r in rows if r[1] == "8") == 3
    # the service stopped it: a new capture starts at once
    cap2 = capture(node, "a:std", "--duration", "0.2")
    started(cap2)
    assert cap2.wait(30) == 0


def test_bad_requests_are_refused_and_leave_nothing_running(node, tmp_path):
    node.pod("a", CT_SPEC)
    for args, msg in (
        (("a:std", "udp prot 5"), "capture filter 'udp prot 5'"),
        (("nosuchpod",), "capture target 'nosuchpod': no such port or pod"),
        (("a:media",), "pod a has no plane media"),
        (("a:",), "capture target 'a:': POD:PLANE needs a plane name"),
        (("a:std", "-s", "10"), "snaplen: 10 out of range 64..65535"),
        (("a:std", "--duration", "inf"), "--count and --duration are >= 0"),
        # a file that cannot be written: refused before a capture starts
        (("a:std", "-w", str(tmp_path / "no" / "x.pcapng")), "No such file or directory"),
        (("a:std", "-w", str(tmp_path)), "Is a directory"),
    ):
        cap = capture(node, *args)
        assert cap.wait(30) != 0
        assert msg in cap.stderr.read()
    cap = capture(node, "a:std", "--duration", "0.2")
    started(cap)
    assert cap.wait(30) == 0


def test_a_snap_length_the_memory_cannot_hold_is_refused_naming_the_largest_that_fits(node):
    """-s 65535: the capture's records do not fit in this node's memory;
    the refusal says the largest snap length that does, which starts."""
    node.pod("a", CT_SPEC)
    cap = capture(node, "a:std", "-s", "65535")
    assert cap.wait(30) == 1
    err = cap.stderr.read()
    m = re.search(r"the largest snap length that fits is (\d+)$", err.strip())
    assert m and "slots" not in err, err
    cap = capture(node, "a:std", "-s", m.group(1), "--duration", "0.2")
    started(cap)
    assert cap.wait(30) == 0, cap.stderr.read()


def test_a_capture_without_a_target_names_only_the_target():
    """The filter is optional: the usage error asks for the target alone."""
    r = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "capture"], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 2
    assert r.stderr.strip().endswith("the following arguments are required: target"), r.stderr


def test_sigterm_leaves_a_whole_file_and_no_capture(node, tmp_path):
    """timeout(1) and kill stop a capture as Ctrl-C does."""
    out = tmp_path / "t.pcapng"
    a, b, cap = capturing(node, out, "a:std", 3)
    cap.send_signal(signal.SIGTERM)
    assert cap.wait(30) == 0
    assert "frames written to" in cap.stderr.read()
    assert sum(1 for r in tshark(out, "icmp.type") if r[0] == "8") == 3
    cap2 = capture(node, "a:std", "--duration", "0.2")
    started(cap2)
    assert cap2.wait(30) == 0


def test_a_capture_ends_with_its_pod(node, tmp_path):
    """A pod deleted under its capture ends it, said by the client, the
    file whole; a pod added next (given the same port) is not recorded."""
    out = tmp_path / "g.pcapng"
    a, b, cap = capturing(node, out, "b", 2)
    node.api("DELETE", "/v1/pods?name=b")
    assert cap.wait(30) == 0
    err = cap.stderr.read()
    assert "the capture ended: b:std (port " in err and ") was removed" in err, err
    c = node.pod("c", IT_SPEC)
    assert ping(a["ns"], ip_of(c), count=2, interval="0.1").returncode == 0
    rows = tshark(out, "frame.interface_name", "eth.src")
    assert {r[0] for r in rows} == {"b:std"}
    c_mac = next(p["mac"] for p in c["planes"])
    assert c_mac not in {r[1] for r in rows}
    cap2 = capture(node, "c", "--duration", "0.2")  # nothing left running
    started(cap2)
    assert cap2.wait(30) == 0


def test_the_service_stopping_ends_a_capture_with_its_file_whole(node, tmp_path):
    out = tmp_path / "s.pcapng"
    _, _, cap = capturing(node, out, "a:std", 2)
    node.stop()
    assert cap.wait(30) == 1
    err = cap.stderr.read()
    assert "the capture ended: the service stopped answering" in err, err
    assert "frames written to" in err
    assert sum(1 for r in tshark(out, "icmp.type") if r[0] == "8") == 2


#: the capture lease of the service ShortLeaseNode runs, in seconds
SHORT_LEASE_S = 2
#: a node service whose capture lease is SHORT_LEASE_S
SHORT_LEASE = (
    "import sys; import dataplane.capture as c; "
    f"c.LEASE_S = {SHORT_LEASE_S}; "
    "from dataplane.cli import main; sys.exit(main())"
)


class ShortLeaseNode(Node):
    """A node service that ends a capture nobody read for SHORT_LEASE_S."""

    def command(self):
        return [sys.executable, "-c", SHORT_LEASE, "run", "-c", str(self.cfg)]


@pytest.fixture
def short_lease_node(tmp_path):
    n = ShortLeaseNode(tmp_path, uuid.uuid4().hex[:5])
    try:
        n.start()
        yield n
    finally:
        n.cleanup()


def paused_past_the_lease(node, cap, meanwhile=None, then=None):
    """Pause client ``cap`` (running ``meanwhile`` then, if given) until
    the service has ended its capture for want of reads, and for twice the
    lease after that (then run ``then``, if given), then let it go on."""
    cap.send_signal(signal.SIGSTOP)
    try:
        if meanwhile:
            meanwhile()
        until_ended = time.monotonic() + 60
        while json.loads(node.cli("status", "--json").stdout)["capture"] is not None:
            assert time.monotonic() < until_ended, "the lease never ended the capture"
            time.sleep(0.2)
        time.sleep(2 * SHORT_LEASE_S + 1)  # as long again as the service waits for reads
        if then:
            then()
    finally:
        cap.send_signal(signal.SIGCONT)


SUMMARY = re.compile(
    r"dataplane: (\d+) frames written to \S+; (\d+) matched the filter, "
    r"(\d+) dropped by the capture"
)


def test_a_client_paused_past_the_lease_is_told_why_its_capture_ended(short_lease_node, tmp_path):
    """A capture whose client did not read it for the lease (the client
    stopped with Ctrl-Z, or writing to a slow reader) is ended by the
    service, which keeps what it took for the client however long it stays
    away; the client, back, says why - not that the service stopped
    answering - writes those frames (echoes sent while it was paused) and
    exits 0."""
    node = short_lease_node
    out = tmp_path / "p.pcapng"
    a, b, cap = capturing(node, out, "b", 2)

    def more_echoes():
        assert ping(a["ns"], ip_of(b), count=3, interval="0.1").returncode == 0

    paused_past_the_lease(node, cap, meanwhile=more_echoes)
    assert cap.wait(30) == 0, cap.stderr.read()
    err = cap.stderr.read()
    assert f"dataplane: the capture ended: not read for {SHORT_LEASE_S} s" in err, err
    assert "stopped answering" not in err, err
    # the service's log says why the lane paused and a next capture was refused
    log = (node.tmp / "service.log").read_text()
    said = [x for x in log.splitlines() if "capture ended by the service: its client" in x]
    assert len(said) == 1 and f"not read for {SHORT_LEASE_S} s" in said[0], log[-2000:]
    m = SUMMARY.search(err)
    assert m, err
    n, matched, dropped = (int(g) for g in m.groups())
    assert n >= 10 and n + dropped == matched, err  # the echoes and their replies
    assert len(tshark(out, "eth.src")) == n
    assert sum(1 for r in tshark(out, "icmp.type") if r[0] == "8") == 5
    cap2 = capture(node, "b", "--duration", "0.2")  # nothing left running
    started(cap2)
    assert cap2.wait(30) == 0


def test_a_client_back_after_the_next_capture_started_is_told_so(short_lease_node, tmp_path):
    """The frames of a capture the service ended go once another capture
    starts: its client, back after that, says that its capture ended and
    what became of it - not that the service stopped answering - and
    exits 1, its file whole with what it had written."""
    node = short_lease_node
    out = tmp_path / "q.pcapng"
    a, b, cap = capturing(node, out, "b", 2)

    def another():
        cid = node.api("POST", "/v1/capture", {"target": "b"})["id"]
        node.api("DELETE", f"/v1/capture?id={cid}")

    paused_past_the_lease(node, cap, then=another)
    assert cap.wait(30) == 1
    err = cap.stderr.read()
    assert "stopped answering" not in err, err
    assert "dataplane: the capture ended: the service no longer has it (capture " in err, err
    assert (
        f": ended, not read for {SHORT_LEASE_S} s; what it took since its last read went "
        "when the next capture started)" in err
    ), err
    assert SUMMARY.search(err), err
    tshark(out, "eth.src")  # whole


# one frame (hex argv[2]) sent on interface argv[1], as any process in a pod can
SEND_RAW = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
s.send(bytes.fromhex(sys.argv[2]))
"""


def spoofed(node, a, b, sport):
    """A UDP frame from pod a's std interface with an address not its own
    (the guard drops it: spoof_ipv4), sent from inside a."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    pa = next(p for p in a["planes"] if p["plane"] == "std")
    pb = next(p for p in b["planes"] if p["plane"] == "std")
    f = Ether(src=pa["mac"], dst=pb["mac"]) / IP(src="192.168.50.222", dst=pb["ip"])
    f = bytes(f / UDP(sport=sport, dport=9999) / (b"x" * 18))
    r = subprocess.run(
        ["ip", "netns", "exec", a["ns"], sys.executable, "-c", SEND_RAW, pa["ifname"], f.hex()],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return f


def test_a_drop_capture_shows_why_a_pods_frame_went_nowhere(node, tmp_path):
    """A pod's frame the guard drops (a source address not its own): a
    capture of the pod's drops prints it with its reason; in a pcapng file
    of everything it is a frame with that reason as its comment, beside
    the pod's frames that were forwarded, which have their direction."""
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", IT_SPEC)
    cap = capture(node, "a:std", "--direction", "drop", "-c", "1", "udp port 9999")
    started(cap)
    spoofed(node, a, b, 4001)
    assert cap.wait(30) == 0
    assert "dataplane: dropped frames taken, by reason: spoof_ipv4 1" in cap.stderr.read()
    [line] = cap.stdout.read().splitlines()
    assert " a:std Drop spoof_ipv4: " in line
    assert f"IP 192.168.50.222.4001 > {ip_of(b)}.9999: UDP" in line, line

    out = tmp_path / "all.pcapng"
    cap = capture(node, "a", "-w", str(out), "--direction", "all", "-c", "5", "udp port 9999")
    started(cap)
    spoofed(node, a, b, 4002)
    # from a's own address: forwarded (a's rx only: b's port is not captured)
    ok = subprocess.run(
        ["ip", "netns", "exec", a["ns"], "bash", "-c", f"echo hi > /dev/udp/{ip_of(b)}/9999"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    spoofed(node, a, b, 4003)
    assert cap.wait(30) == 0, cap.stderr.read()
    rows = tshark(
        out,
        "frame.interface_name",
        "frame.packet_flags_direction",
        "frame.comment",
        "ip.src",
        "udp.srcport",
    )
    assert [r[0] for r in rows] == ["a:std"] * 5
    # each spoofed frame twice: received (direction inbound), then dropped
    # (no direction; the reason in its comment)
    spoof, mine = "192.168.50.222", ip_of(a)
    assert [(int(r[1] or "0", 0), r[2], r[3]) for r in rows] == [
        (1, "", spoof),
        (0, "dropped: spoof_ipv4", spoof),
        (1, "", mine),
        (1, "", spoof),
        (0, "dropped: spoof_ipv4", spoof),
    ]
    assert [r[4] for r in rows if r[3] == spoof] == ["4002", "4002", "4003", "4003"]


def test_a_capture_of_any_port_names_each_and_outlives_a_deleted_pod(node):
    """``any``: every port there at the start, each named as the pod
    plane it serves; a pod deleted meanwhile ends nothing, the capture
    goes on with the others."""
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", IT_SPEC)
    c = node.pod("c", IT_SPEC)
    cap = capture(node, "any", "--direction", "drop", "-c", "3", "udp port 9999")
    started(cap)
    spoofed(node, a, c, 4101)
    spoofed(node, b, c, 4102)
    call_del = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "pod", "del", "b", "--socket", node.sock],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert call_del.returncode == 0, call_del.stderr
    spoofed(node, a, c, 4103)
    assert cap.wait(30) == 0
    assert "dataplane: dropped frames taken, by reason: spoof_ipv4 3" in cap.stderr.read()
    lines = cap.stdout.read().splitlines()
    # (two ports' frames: in whatever order the worker polled them)
    got = sorted((ln.split("192.168.50.222.")[1].split()[0], *ln.split()[1:3]) for ln in lines)
    assert got == [
        ("4101", "a:std", "Drop"),
        ("4102", "b:std", "Drop"),
        ("4103", "a:std", "Drop"),
    ], lines


def test_the_status_shows_a_running_capture_and_the_lane_waiting_for_it(node):
    """While a capture runs the express lane is off for the whole node:
    `dataplane status` says so, and which capture it waits for; once the
    capture ends the status says the lane is on again."""
    node.pod("a", CT_SPEC)
    launched = time.monotonic()
    cap = capture(node, "a", "--direction", "drop", "udp port 9999")
    started(cap)
    try:
        st = json.loads(node.cli("status", "--json").stdout)
        assert st["express_lane"], "the test wants the express lane loaded"
        c = st["capture"]
        assert (c["target"], c["direction"], c["filter"]) == ("a", "drop", "udp port 9999")
        assert sorted(c["ports"]) == ["a:control", "a:std"]
        # its age: no more than since its client was launched (in tenths)
        assert 0 <= c["running_s"] <= time.monotonic() - launched + 0.05, c
        # and it grows while it runs
        for _ in range(100):
            later = json.loads(node.cli("status", "--json").stdout)["capture"]
            if later["running_s"] > c["running_s"]:
                break
            time.sleep(0.05)
        assert later["id"] == c["id"] and later["running_s"] > c["running_s"], (c, later)
        text = node.cli("status").stdout
        assert "express lane paused (a capture runs)" in text, text
        assert f"capture {c['id']} running for " in text
        ports = ", ".join(c["ports"])
        assert f"drop on a ({ports}) 'udp port 9999'; the express lane waits" in text
    finally:
        cap.send_signal(signal.SIGINT)
        assert cap.wait(30) == 0, cap.stderr.read()
    st = json.loads(node.cli("status", "--json").stdout)
    assert st["capture"] is None
    assert "express lane on" in node.cli("status").stdout


def _pod_ports(node):
    """{(pod, plane): core port} of the node's pod ports, by its status."""
    st = json.loads(node.cli("status", "--json").stdout)
    return {(p["pod"], p["plane"]): p["port"] for p in st["ports"] if p["pod"]}


def test_an_any_capture_takes_a_pod_attached_while_it_runs(node, tmp_path):
    """A pod attached under a capture of ``any`` port joins it: the client
    says so and its file gets the pod's interface. The new pod takes the
    index of a pod deleted meanwhile, whose frames the core still held
    (the client stopped): each frame keeps the name of the port it came
    in by."""
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", IT_SPEC)
    c = node.pod("c", IT_SPEC)
    b_port = _pod_ports(node)[("b", "std")]
    out = tmp_path / "any.pcapng"
    cap = capture(node, "any", "--direction", "drop", "-c", "3", "-w", str(out), "udp port 9999")
    started(cap)
    os.kill(cap.pid, signal.SIGSTOP)  # what the core captures waits there
    try:
        spoofed(node, b, c, 4200)
        spoofed(node, a, c, 4201)
        node.cli("pod", "del", "b")
        d = node.pod("d", IT_SPEC)
        assert _pod_ports(node)[("d", "std")] == b_port, "the test wants b's index given to d"
        spoofed(node, d, c, 4202)
        st = json.loads(node.cli("status", "--json").stdout)["capture"]
        assert "d:std" in st["ports"] and "b:std" not in st["ports"], st
    finally:
        os.kill(cap.pid, signal.SIGCONT)
    assert cap.wait(30) == 0
    err = cap.stderr.read()
    assert f"dataplane: capturing d:std (port {b_port}) too" in err, err
    assert "dataplane: dropped frames taken, by reason: spoof_ipv4 3" in err, err
    rows = tshark(out, "frame.interface_name", "frame.comment", "udp.srcport")
    assert sorted(rows) == [
        ["a:std", "dropped: spoof_ipv4", "4201"],
        ["b:std", "dropped: spoof_ipv4", "4200"],
        ["d:std", "dropped: spoof_ipv4", "4202"],
    ], rows
