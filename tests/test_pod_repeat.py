"""A pod add repeated (a controller reconciling, a script run again after a
timeout): with the spec the pod has, it succeeds and changes nothing - the
same veths, MACs, addresses and ports, traffic flowing throughout; with
another spec it is refused, naming each field that differs, and nothing
changes either. The node service runs as a process (fallback mode), pods are
network namespaces on real veths."""

import json
import os
import socket
import subprocess
import time

import pytest
from test_service import CT_SPEC, IT_SPEC, host_links, ip_of, ping, running_node, sh

from dataplane.api import APIError

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

SPEC = dict(
    CT_SPEC,
    ips={"std": "192.168.50.77"},
    macs={"control": "02:00:00:33:00:07"},
)


@pytest.fixture
def node(tmp_path):
    with running_node(tmp_path) as n:
        yield n


def add(node, name, spec, ns):
    return node.api(
        "POST",
        "/v1/pods",
        {"name": name, "netns": f"/var/run/netns/{ns}", "spec": json.dumps(spec)},
    )


def pod_end(ns, ifname):
    """(ifindex, MAC, addresses) of interface ``ifname`` in namespace ``ns``."""
    link = json.loads(sh("ip", "-n", ns, "-j", "addr", "show", "dev", ifname).stdout)[0]
    addrs = sorted(f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"])
    return link["ifindex"], link["address"], addrs


def snapshot(node, info):
    """What the node has of pod ``info``: its record as the API lists it,
    the host ends' ifindexes, the pod ends' ifindexes, MACs and addresses,
    and the core's ports by name."""
    listed = [p for p in node.api("GET", "/v1/pods") if p["name"] == info["name"]]
    hosts = {p["host_ifname"]: socket.if_nametoindex(p["host_ifname"]) for p in info["planes"]}
    ends = {p["ifname"]: pod_end(info["ns"], p["ifname"]) for p in info["planes"]}
    ports = {p["name"]: p["port"] for p in node.api("GET", "/v1/status")["ports"]}
    return listed, hosts, ends, ports


def service_log(node):
    return (node.tmp / "service.log").read_text(errors="replace")


def test_an_identical_add_succeeds_and_changes_nothing(node):
    other = node.pod("o", IT_SPEC)
    first = node.pod("r", SPEC)
    ns = first["ns"]
    assert ip_of(first) == "192.168.50.77"
    assert ping(other["ns"], ip_of(first)).returncode == 0
    before = snapshot(node, first)
    # continuous traffic across the repeated adds: not one ping lost
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", other["ns"], "ping", "-c", "60", "-i", "0.05", ip_of(first)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # through the API, the spec's keys in another order: the first add's answer
    again = add(node, "r", dict(reversed(list(SPEC.items()))), ns)
    assert again.pop("unchanged") is True
    assert again == {k: v for k, v in first.items() if k != "ns"}
    # through the CLI: it says so, then shows the pod as the first add did
    r = node.cli("pod", "add", "r", "--netns", f"/var/run/netns/{ns}", "--spec", json.dumps(SPEC))
    lines = r.stdout.splitlines()
    assert lines[0] == "pod r exists already with this spec: unchanged", r.stdout
    assert lines[1].startswith(f"r  netns=/var/run/netns/{ns}  state=ready"), r.stdout
    assert "192.168.50.77" in r.stdout and "02:00:00:33:00:07" in r.stdout, r.stdout
    r = node.cli(
        "pod", "add", "r", "--netns", f"/var/run/netns/{ns}", "--spec", json.dumps(SPEC), "--json"
    )
    assert json.loads(r.stdout)["unchanged"] is True
    # the namespace named by another path of it is the same namespace
    pid = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "30"])
    want = os.stat(f"/var/run/netns/{ns}").st_ino
    try:
        for _ in range(200):  # until it has entered the namespace
            if os.stat(f"/proc/{pid.pid}/ns/net").st_ino == want:
                break
            time.sleep(0.01)
        same = node.api(
            "POST",
            "/v1/pods",
            {"name": "r", "netns": f"/proc/{pid.pid}/ns/net", "spec": json.dumps(SPEC)},
        )
    finally:
        pid.kill()
        pid.wait()
    assert same["unchanged"] is True and same["netns"] == f"/var/run/netns/{ns}"
    out = pinger.communicate(timeout=60)[0]
    assert pinger.returncode == 0 and " 0% packet loss" in out, out
    assert snapshot(node, first) == before
    assert service_log(node).count('"pod add repeated: unchanged"') == 4
    assert ping(other["ns"], ip_of(first, "std")).returncode == 0


def test_an_add_with_another_spec_is_refused_naming_what_differs(node):
    other = node.pod("o", IT_SPEC)
    first = node.pod("d", SPEC)
    ns = first["ns"]
    before = snapshot(node, first)
    links = host_links()
    cases = [
        (
            dict(SPEC, ips={"std": "192.168.50.78"}),
            ["ips.std is 192.168.50.77, this add asks for 192.168.50.78"],
        ),
        (
            {k: v for k, v in SPEC.items() if k != "macs"},
            ["macs.control is 02:00:00:33:00:07, this add asks for none"],
        ),
        (
            dict(SPEC, network_plane=["std"], networks={"std": "net1"}, macs={}),
            ["network_plane is [std, control], this add asks for [std]"],
        ),
        (
            dict(SPEC, interfaces={"control": "ctl0"}, dhcp_server=["std"]),
            [
                "interfaces.control is control, this add asks for ctl0",
                "dhcp_server.std is no, this add asks for yes",
            ],
        ),
        (
            dict(SPEC, interfaces={"control": {"kind": "memif"}}),
            ["interfaces.control kind is veth, this add asks for memif"],
        ),
        (
            dict(SPEC, allowed_addresses={"std": ["192.168.50.200"]}),
            ["allowed_addresses.std is none, this add asks for [192.168.50.200]"],
        ),
    ]
    for spec, said in cases:
        with pytest.raises(APIError) as e:
            add(node, "d", spec, ns)
        if "needs hugepages" in str(e.value):
            continue  # a node that can make no memif plane refuses the kind first
        assert e.value.status == 409, e.value
        msg = str(e.value)
        assert msg.startswith(
            f"pod d exists already on node node-{node.tag} with another spec: "
        ), msg
        for s in said:
            assert s in msg, msg
    # another namespace: named, through the CLI
    ns2 = f"dpt{node.tag}d2"
    sh("ip", "netns", "add", ns2)
    node.netns.append(ns2)
    r = node.cli(
        "pod", "add", "d", "--netns", f"/var/run/netns/{ns2}", "--spec", json.dumps(SPEC),
        check=False,
    )  # fmt: skip
    assert r.returncode != 0, r.stdout
    assert f"netns is /var/run/netns/{ns}, this add asks for /var/run/netns/{ns2}" in r.stderr, (
        r.stderr
    )
    assert len(sh("ip", "-n", ns2, "-o", "link").stdout.splitlines()) == 1  # lo only
    # nothing changed: the pod, its interfaces, the core, the host's links
    assert snapshot(node, first) == before
    assert host_links() == links
    assert ping(other["ns"], ip_of(first)).returncode == 0
    assert '"pod add repeated' not in service_log(node)


def test_an_add_of_a_pod_whose_veth_is_gone_makes_the_plane_again(node):
    """A pod one of whose veths went without a ``pod del`` (its namespace
    lives): an add of it makes that plane again, as the housekeeping would
    had it come first, with its MAC and address, and then finds the pod as
    the spec asks: unchanged."""
    other = node.pod("o", IT_SPEC)
    first = node.pod("g", SPEC)
    control = next(p["host_ifname"] for p in first["planes"] if p["plane"] == "control")
    old_index = socket.if_nametoindex(control)
    sh("ip", "link", "del", control)
    again = add(node, "g", SPEC, first["ns"])
    assert again.get("unchanged") is True
    assert again["state"] == "ready" and ip_of(again) == "192.168.50.77"
    assert [(p["plane"], p["mac"], p["ip"]) for p in again["planes"]] == [
        (p["plane"], p["mac"], p["ip"]) for p in first["planes"]
    ]
    assert control in host_links() and socket.if_nametoindex(control) != old_index
    assert ping(other["ns"], ip_of(again)).returncode == 0
    assert '"pod plane made again: its veth was gone"' in service_log(node)
