"""A pod plane's pod end (its interface in the pod's namespace) that lost
what the add made of it - its address, its up state, its routes - by hand
(``ip -n POD addr flush dev eth0``) while its veth pair lives: the node
service puts it back, at the replay after a restart and in its
housekeeping while it runs, and logs what it restored. The real service,
real veths, pods in network namespaces."""

import json
import os
import time

import pytest
from test_service import CT_SPEC, ip_of, ping, running_node, sh

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


@pytest.fixture
def node(tmp_path):
    with running_node(tmp_path) as n:
        yield n


def _plane(info, plane):
    return next(p for p in info["planes"] if p["plane"] == plane)


def _addrs(ns, ifname):
    out = json.loads(sh("ip", "-n", ns, "-j", "-4", "addr", "show", "dev", ifname).stdout)
    return [f"{a['local']}/{a['prefixlen']}" for i in out for a in i.get("addr_info", ())]


def _up(ns, ifname):
    return "UP" in json.loads(sh("ip", "-n", ns, "-j", "link", "show", ifname).stdout)[0]["flags"]


def _default_via(ns):
    return sh("ip", "-n", ns, "route", "show", "default").stdout.strip()


def _events(node, msg):
    return [
        e
        for ln in (node.tmp / "service.log").read_text().splitlines()
        if ln.startswith("{")
        for e in [json.loads(ln)]
        if e.get("msg") == msg
    ]


def test_replay_restores_a_flushed_address_a_downed_link_and_a_deleted_route(node):
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", CT_SPEC)
    std_a, ctl_a = _plane(a, "std"), _plane(a, "control")
    ctl_b = _plane(b, "control")
    assert ping(a["ns"], ip_of(b)).returncode == 0
    node.stop()
    # by hand, while the service is down: a's std address flushed (its
    # routes go with it), a's control plane set down, b's default route deleted
    sh("ip", "-n", a["ns"], "addr", "flush", "dev", std_a["ifname"])
    sh("ip", "-n", a["ns"], "link", "set", ctl_a["ifname"], "down")
    sh("ip", "-n", b["ns"], "route", "del", "default")
    assert _addrs(a["ns"], std_a["ifname"]) == [] and not _up(a["ns"], ctl_a["ifname"])
    assert _default_via(a["ns"]) == "" and _default_via(b["ns"]) == ""
    node.start()

    assert _addrs(a["ns"], std_a["ifname"]) == [std_a["ip"] + "/24"]
    assert _up(a["ns"], ctl_a["ifname"]) and _addrs(a["ns"], ctl_a["ifname"]) == [
        ctl_a["ip"] + "/24"
    ]
    for ns in (a["ns"], b["ns"]):
        assert _default_via(ns).startswith("default via 192.168.50.1 dev eth0"), ns
    restored = {
        (e["pod"], e["plane"]): e["restored"]
        for e in _events(node, "replay: pod plane interface restored")
    }
    assert restored == {
        ("a", "std"): [f"address {std_a['ip']}/24", "default route via 192.168.50.1"],
        ("a", "control"): ["pod end up"],
        ("b", "std"): ["default route via 192.168.50.1"],
    }, restored
    assert len(_events(node, "replay: pod re-attached")) == 2
    # the pods reach each other again on both planes
    assert ping(a["ns"], ip_of(b)).returncode == 0
    assert ping(b["ns"], std_a["ip"]).returncode == 0
    assert ping(a["ns"], ctl_b["ip"]).returncode == 0

    # nothing gone at the next restart: nothing restored, nothing logged
    node.stop()
    node.start()
    assert len(_events(node, "replay: pod plane interface restored")) == 3
    assert ping(a["ns"], ip_of(b)).returncode == 0


def test_housekeeping_restores_a_flushed_address(node):
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", CT_SPEC)
    std_a = _plane(a, "std")
    assert ping(a["ns"], ip_of(b)).returncode == 0
    sh("ip", "-n", a["ns"], "addr", "flush", "dev", std_a["ifname"])
    assert ping(a["ns"], ip_of(b), count=1).returncode != 0  # cut off
    for _ in range(400):  # the service looks every 5 s
        if _events(node, "housekeeping: pod plane interface restored"):
            break
        time.sleep(0.05)
    (ev,) = _events(node, "housekeeping: pod plane interface restored")
    assert (ev["pod"], ev["plane"], ev["interface"]) == ("a", "std", std_a["ifname"])
    assert ev["restored"] == [f"address {std_a['ip']}/24", "default route via 192.168.50.1"]
    assert _addrs(a["ns"], std_a["ifname"]) == [std_a["ip"] + "/24"]
    assert _default_via(a["ns"]).startswith("default via 192.168.50.1")
    assert ping(a["ns"], ip_of(b)).returncode == 0
    assert [p["name"] for p in node.api("GET", "/v1/pods")] == ["a", "b"]
