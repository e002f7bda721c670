"""Learning from the underlay (``vtep.learning: true``) as an operator sees
it: a node service learns the MAC of a host behind the kernel's VXLAN VTEP
from its frames, keeps it while the host talks, and shows it in ``dataplane
fdb`` (``GET /v1/fdb``), ``dataplane status`` and the metrics. The fabric is
the one of test_kernel_pods.py; the core-level cases (confirmation, moves,
API-set entries) are in test_core.py.
"""

import json
import os
import re
import subprocess
import sys
import time

import pytest
import test_kernel_pods as kp
from test_kernel_idle import metrics_text, node_with

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, DPDK EAL)"),
]

fabric = kp.fabric


def metric(text, name, labels=""):
    found = re.findall(rf"^{name}{re.escape(labels)} (\S+)$", text, re.M)
    assert len(found) == 1, f"{name}{labels}: {found}"
    return float(found[0])


def test_a_learned_host_is_kept_while_it_talks(fabric):
    """The kernel-VTEP host's MAC is learned from its frames and confirmed
    by them: the seconds since it was last heard stay low while it answers
    pings (before, a learned entry aged from the moment it was learned,
    however much it talked, and was flooded to again after the age)."""
    fab = fabric()
    node = node_with(fab, 1, [kp.HOST_VTEP], "", vtep_extra="learning: true")
    fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", kp.SUBNET + "11")
    kp.reach(a["ns"], kp.VM_IP, "pod a -> kernel-VTEP host")

    def vm_entry():
        rows = node.api("GET", f"/v1/fdb?network=net1&mac={kp.VM_MAC}")
        assert len(rows) <= 1, rows
        return rows[0] if rows else None

    # learned by the control thread's housekeeping, shortly after the frame
    for _ in range(200):
        e = vm_entry()
        if e is not None:
            break
        time.sleep(0.05)
    assert e is not None and (e["type"], e["vtep"], e["origin"]) == (
        "remote",
        kp.HOST_VTEP,
        "learned",
    )
    # 4 s of pings, 0.2 s apart: heard all along, its age stays under the
    # 1 s between reports (and well under the 4 s it would otherwise reach)
    r = kp.ping(a["ns"], kp.VM_IP, count=20, interval="0.2")
    assert r.returncode == 0, r.stdout
    e = vm_entry()
    assert e["origin"] == "learned" and e["age_s"] < 3.0, e
    st = node.status()
    assert st["learning"]["aged"] == 0 and st["learning"]["entries"] >= 1, st["learning"]
    # the pod's own MAC is a local entry, never a learned one
    [own] = node.api("GET", f"/v1/fdb?mac={a['planes'][0]['mac']}")
    assert (own["type"], own["origin"], own["plane"]) == ("local", "pod", "std"), own
    # the metrics say the same as the status and the FDB view (read one
    # after the other: taken again if a frame changed the table in between)
    events = ("learned", "moved", "refused_static", "refused_limit", "aged", "duplicate")
    events += ("refused_frozen",)
    for _ in range(20):
        text, st, rows = metrics_text(node), node.status(), node.api("GET", "/v1/fdb")
        got = [metric(text, "dataplane_fdb_entries"), metric(text, "dataplane_learned_macs")]
        got += [metric(text, "dataplane_learning_events_total", f'{{event="{e}"}}') for e in events]
        want = [st["fdb_entries"], st["learning"]["entries"]] + [st["learning"][e] for e in events]
        if got == want and st["fdb_entries"] == len(rows):
            break
        time.sleep(0.1)
    assert got == want and st["fdb_entries"] == len(rows), (got, want, rows)
    assert st["learning"]["learned"] >= 1
    assert sum(r["origin"] == "learned" for r in rows) == st["learning"]["entries"]
    # one host's MACs: no report held back, as the workers' counter says
    limited = metric(text, "dataplane_worker_learn_limited_total", '{worker="0"}')
    assert st["learning"]["reports_limited"] == limited == 0, (st["learning"], limited)
    out = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "status", "--socket", node.sock],
        capture_output=True,
        text=True,
        cwd=kp.ROOT,
    ).stdout
    assert re.search(
        r"^  fdb \d+ entries \(\d+ learned; learned [1-9]\d* moved 0 aged 0", out, re.M
    ), out
    # a pod may not take the learned host's MAC (it would take its traffic)
    from dataplane.api import APIError

    ns = fab.netns(f"{fab.tag}m")
    spec = {"pod_type": "it", "network_plane": ["std"], "networks": {"std": "net1"},
            "macs": {"std": kp.VM_MAC}}  # fmt: skip
    with pytest.raises(APIError) as refused:
        node.api("POST", "/v1/pods", {"name": "m", "netns": f"/var/run/netns/{ns}", "spec": spec})
    assert (
        f"macs.std: {kp.VM_MAC} is a MAC this node learned on network net1 from the underlay, "
        f"behind VTEP {kp.HOST_VTEP}"
    ) in str(refused.value), refused.value
    assert [p["name"] for p in node.api("GET", "/v1/pods")] == [a["name"]]
    assert vm_entry()["origin"] == "learned"


SPOOF_VTEP = "10.99.0.51"
# one VXLAN frame (VNI, inner source MAC, inner destination MAC) to the
# node's VTEP from a plain UDP socket: the kernel of the sender's namespace
# resolves the node's VTEP by ARP, as any VTEP on the underlay would
SPOOF = """
import socket, sys
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
vni, src, dst, to = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
inner = Ether(src=src, dst=dst) / IP(src="192.168.50.99", dst="192.168.50.11") / UDP(dport=9)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(bytes(VXLAN(vni=vni) / inner), (to, 4789))
"""


def test_a_mac_claimed_from_two_vteps_is_frozen_where_it_was(fabric):
    """A sender on the underlay behind another VTEP claims the kernel-VTEP
    host's MAC. The node follows the MAC to it and back until the move
    that would be the third in the window (vtep.duplicate_macs); then the
    MAC stays at the VTEP it was at - the real host's - and the operator
    sees it: DUPLICATE in dataplane fdb, frozen_s in GET /v1/fdb, the
    event in the status and the metrics. The pod still reaches the host."""
    fab = fabric()
    node = node_with(
        fab,
        1,
        [kp.HOST_VTEP],
        "",
        vtep_extra="learning: true, duplicate_macs: {moves: 3, window_s: 60, freeze_s: 60}",
    )
    vm = fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", kp.SUBNET + "11")
    kp.reach(a["ns"], kp.VM_IP, "pod a -> kernel-VTEP host")
    spoof = fab.netns(f"{fab.tag}sp")
    kp.ipn(fab.ul, f"link add uls mtu {fab.mtu} type veth peer name eth0 netns {spoof}")
    kp.ipn(fab.ul, "link set uls master br0 up")
    kp.ipn(spoof, f"addr add {SPOOF_VTEP}/24 dev eth0")
    kp.ipn(spoof, "link set eth0 up")

    def vm_at():
        rows = node.api("GET", f"/v1/fdb?network=net1&mac={kp.VM_MAC}")
        return rows[0] if rows else None

    def until(vtep, what):
        for _ in range(300):
            e = vm_at()
            if e is not None and e["vtep"] == vtep:
                return e
            time.sleep(0.02)
        raise AssertionError(f"{what}: {vm_at()} {node.status()['learning']}")

    def claim():
        r = kp.nsx(
            spoof,
            sys.executable,
            "-c",
            SPOOF,
            str(kp.VNI),
            kp.VM_MAC,
            a["planes"][0]["mac"],
            "10.99.0.1",
        )
        assert r.returncode == 0, r.stderr

    until(kp.HOST_VTEP, "learned from the host")
    base = node.status()["learning"]
    claim()
    until(SPOOF_VTEP, "first move, to the other sender")
    # the host's next frame takes it back (the reply to this one went to
    # the other sender: that is what following a moving MAC does)
    kp.ping(vm, a["ip"], count=1, wait="0.5")
    until(kp.HOST_VTEP, "second move, back to the host")
    for _ in range(300):  # the third: refused, frozen at the host's VTEP
        claim()
        if node.status()["learning"]["duplicate"] > base["duplicate"]:
            break
        time.sleep(0.05)
    st = node.status()["learning"]
    assert st["duplicate"] == base["duplicate"] + 1 and st["moved"] == base["moved"] + 2, st
    e = vm_at()
    assert (e["vtep"], e["origin"]) == (kp.HOST_VTEP, "learned") and 0 < e["frozen_s"] <= 60, e
    # the summary counts it (the host's bridge may have been learned too)
    learned = [r for r in node.api("GET", "/v1/fdb") if r["origin"] == "learned"]
    [summary] = node.api("GET", "/v1/fdb/summary")
    assert (summary["network"], summary["frozen"]) == ("net1", 1), summary
    assert summary["learned"] == len(learned) >= 1, (summary, learned)
    claim()  # frozen: the claim is refused and counted, the MAC stays
    for _ in range(100):
        if node.status()["learning"]["refused_frozen"] > base["refused_frozen"]:
            break
        time.sleep(0.05)
    assert node.status()["learning"]["refused_frozen"] > base["refused_frozen"]
    assert vm_at()["vtep"] == kp.HOST_VTEP
    r = kp.ping(a["ns"], kp.VM_IP, count=3)
    assert r.returncode == 0, r.stdout
    out = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "fdb", "--mac", kp.VM_MAC, "--socket", node.sock],
        capture_output=True,
        text=True,
        cwd=kp.ROOT,
    ).stdout
    assert re.search(
        rf"^net1\s+{kp.VM_MAC}\s+remote\s+{re.escape(kp.HOST_VTEP)}\s+learned\s+age [\d.]+ s, "
        r"DUPLICATE: frozen here for \d+ s more$",
        out,
        re.M,
    ), out
    text = metrics_text(node)
    assert metric(text, "dataplane_learning_events_total", '{event="duplicate"}') == 1

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "dataplane.cli", "fdb", *args, "--socket", node.sock],
            capture_output=True,
            text=True,
            cwd=kp.ROOT,
        )

    # the operator clears it (the loop fixed): learned afresh, not frozen
    r = cli("clear", "--mac", kp.VM_MAC)
    assert (r.returncode, r.stdout) == (0, "cleared 1 learned MAC\n"), r.stderr
    assert kp.ping(a["ns"], kp.VM_IP, count=3).returncode == 0
    e = until(kp.HOST_VTEP, "learned again after the clear")
    assert e["origin"] == "learned" and "frozen_s" not in e, e
    # only learned entries: a pod's is named as such and left alone
    pod_mac = a["planes"][0]["mac"]
    r = cli("clear", "--mac", pod_mac)
    assert r.returncode != 0 and (
        f"mac: {pod_mac} in net1 is not a learned entry (origin pod)" in r.stderr
    ), r.stderr
    r = cli("clear", "--network", "nope")
    assert r.returncode != 0 and "no network 'nope' on this node" in r.stderr, r.stderr
    assert node.api("GET", f"/v1/fdb?mac={pod_mac}")[0]["origin"] == "pod"
    learned = [r for r in node.api("GET", "/v1/fdb?network=net1") if r["origin"] == "learned"]
    assert node.api("DELETE", "/v1/fdb?network=net1") == {"cleared": len(learned)}
    assert len(learned) >= 1


# VXLAN frames to the node's VTEP from the outer sources given, one inner
# source MAC each (02:bb:..:0i), then one from a real unicast source (the
# inner source 02:bb:00:00:00:ff), raw out of eth0
FROM_SOURCES = """
import socket, sys
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
vni, vtep_mac, vtep, own, last = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
srcs = sys.argv[6:] + [last]
for i, src in enumerate(srcs):
    mac = "02:bb:00:00:00:%02x" % (0xff if src == last else i)
    inner = Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="192.168.50.99", dst="192.168.50.255")
    outer = Ether(dst=vtep_mac, src=own) / IP(src=src, dst=vtep) / UDP(sport=49152, dport=4789)
    s.send(bytes(outer / VXLAN(vni=vni) / inner / UDP(dport=9)))
"""


def test_frames_from_a_source_no_vtep_can_have_are_dropped_not_learned(fabric):
    """An underlay sender forges the outer source of VXLAN frames: 0/8,
    loopback, multicast, reserved and the limited broadcast. Each is
    dropped as bad_ip, and learning makes no tunnel to it; a frame from a
    unicast VTEP sent after them is learned as ever."""
    fab = fabric()
    node = node_with(fab, 1, [], "", vtep_extra="learning: true")
    fab.pod(1, "a", kp.SUBNET + "11")
    spoof = fab.netns(f"{fab.tag}sp")
    kp.ipn(fab.ul, f"link add uls mtu {fab.mtu} type veth peer name eth0 netns {spoof}")
    kp.ipn(fab.ul, "link set uls master br0 up")
    kp.ipn(spoof, "link set eth0 up")
    vtep_mac = json.loads(kp.ipn(node.ns, "-j link show uplink0").stdout)[0]["address"]
    own = json.loads(kp.ipn(spoof, "-j link show eth0").stdout)[0]["address"]
    bogus = [
        "0.0.0.0",
        "0.1.2.3",
        "127.0.0.9",
        "224.0.0.5",
        "239.1.1.1",
        "240.0.0.7",
        "255.255.255.255",
    ]
    before = node.status()["drops"].get("bad_ip", 0)
    r = kp.nsx(
        spoof,
        sys.executable,
        "-c",
        FROM_SOURCES,
        str(kp.VNI),
        vtep_mac,
        "10.99.0.1",
        own,
        "10.99.0.52",
        *bogus,
    )
    assert r.returncode == 0, r.stderr
    for _ in range(300):
        rows = node.api("GET", "/v1/fdb?network=net1&mac=02:bb:00:00:00:ff")
        if rows:
            break
        time.sleep(0.02)
    assert rows and rows[0]["vtep"] == "10.99.0.52", rows
    learned = {r["mac"]: r["vtep"] for r in node.api("GET", "/v1/fdb") if r["origin"] == "learned"}
    assert learned == {"02:bb:00:00:00:ff": "10.99.0.52"}, learned
    assert node.status()["drops"].get("bad_ip", 0) - before == len(bogus), node.status()["drops"]
