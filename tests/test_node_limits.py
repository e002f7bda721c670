"""A node at the end of what its core holds, as a runtime meets it: a pod
add that finds no port slot left (every veth, memif and vhost-user plane
takes one of the core's DP_MAX_PORTS) is refused before anything is
made, with 507 and ``"exhausted": true`` - a node full, not a failure of
the service - and the CNI plugin's own code 104; the pods already there
stay, and once one is deleted the next add fits. The fabric (node
services in namespaces of their own) is the kernel pods' one."""

import os

import pytest

from dataplane.api import APIError
from dataplane.engine import lib
from tests import test_kernel_pods as kp
from tests.cnihost import install_plugin, netconf, run_plugin
from tests.test_dpdk_pods import json_links

fabric = kp.fabric

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, DPDK EAL)"),
]

#: eight planes (the most a node has), each with a network: a pod of all
#: eight takes eight port slots
PLANES = ["std"] + [f"p{i}" for i in range(1, 8)]
EXTRA_NETS = "".join(
    f"  - {{name: n{i}, vni: {300 + i}, plane: {p}, subnet: 10.{60 + i}.0.0/24}}\n"
    for i, p in enumerate(PLANES)
    if i
)
ONE_PLANE = {"pod_type": "it", "network_plane": ["std"], "networks": {"std": "net1"}}
SPEC = {
    "pod_type": "ct",
    "network_plane": PLANES,
    "networks": {p: ("net1" if i == 0 else f"n{i}") for i, p in enumerate(PLANES)},
}


def full_node(fab):
    planes = "planes:\n" + "".join(f"  {p}: {{priority: {i}}}\n" for i, p in enumerate(PLANES))
    node = kp.Node(fab, 1, [], fab.mtu, extra=planes)
    node.cfg.write_text(node.cfg.read_text().replace("remotes:", EXTRA_NETS + "remotes:"))
    fab.nodes[1] = node
    node.start()
    return node


def add(fab, node, i, spec=None):
    ns = fab.netns(f"{fab.tag}f{i}")
    body = {"name": f"{fab.tag}f{i}", "netns": f"/var/run/netns/{ns}", "spec": spec or SPEC}
    info = node.api("POST", "/v1/pods", body)
    node.host_links |= {p["host_ifname"] for p in info["planes"] if p.get("host_ifname")}
    return info


def test_a_node_out_of_port_slots_refuses_the_next_pod_as_full(fabric, tmp_path):
    fab = fabric()
    node = full_node(fab)
    free = lib.DP_MAX_PORTS - len(node.status()["ports"])  # less the uplink's
    # eight-plane pods, then one-plane ones, until no slot is left
    n = 0
    while free >= len(PLANES):
        add(fab, node, n)
        n, free = n + 1, free - len(PLANES)
    while free:
        add(fab, node, n, ONE_PLANE)
        n, free = n + 1, free - 1
    assert len(node.status()["ports"]) == lib.DP_MAX_PORTS
    before = set(json_links(node.ns))
    with pytest.raises(APIError) as e:
        add(fab, node, n)
    assert e.value.status == 507, e.value
    assert str(e.value) == (
        f"node node1 is full: pod {fab.tag}f{n} needs {len(PLANES)} of the core's port "
        f"slots (one per plane but a VF's), 0 of its {lib.DP_MAX_PORTS} are free; add "
        "the pod on another node, or delete pods here"
    ), str(e.value)
    # nothing of it was made: no record (nor its addresses), no veth
    assert f"{fab.tag}f{n}" not in {p["name"] for p in node.api("GET", "/v1/pods")}
    assert set(json_links(node.ns)) == before
    # through the CNI plugin: its own code for a node out of something
    plugin = install_plugin(str(tmp_path / "bin"))
    code, out, err = run_plugin(
        plugin,
        "ADD",
        netconf(node.sock),
        container_id="c" * 12,
        netns=f"/var/run/netns/{fab.netns(f'{fab.tag}c')}",
        ifname="eth0",
    )
    assert code != 0 and out["code"] == 104, (code, out, err)
    assert out["msg"].startswith("node node1 is full: pod "), out
    # a delete frees its slots: an eight-plane pod fits now
    node.api("DELETE", f"/v1/pods?name={fab.tag}f0")
    add(fab, node, n + 1)
    assert len(node.status()["ports"]) == lib.DP_MAX_PORTS


def test_a_network_out_of_addresses_refuses_the_next_pod_as_full(fabric):
    """A /29 network holds six pods (its network and broadcast addresses
    are no pod's): the seventh is refused with 507, naming the network and
    its subnet, and nothing of it is made; a delete gives an address back."""
    fab = fabric()
    node = kp.Node(fab, 1, [], fab.mtu, extra="planes: {std: {priority: 0}, p1: {priority: 1}}")
    tiny = "  - {name: tiny, vni: 399, plane: p1, subnet: 10.70.0.0/29}\n"
    node.cfg.write_text(node.cfg.read_text().replace("remotes:", tiny + "remotes:"))
    fab.nodes[1] = node
    node.start()
    spec = {"pod_type": "ct", "network_plane": ["p1"], "networks": {"p1": "tiny"}}
    got = [add(fab, node, i, spec)["planes"][0]["ip"] for i in range(6)]
    assert sorted(got) == [f"10.70.0.{i}" for i in range(1, 7)], got
    before = set(json_links(node.ns))
    with pytest.raises(APIError) as e:
        add(fab, node, 6, spec)
    assert e.value.status == 507, e.value
    assert str(e.value) == (
        "network tiny: no free address left in 10.70.0.0/29 (8 allocated or reserved)"
    ), str(e.value)
    assert f"{fab.tag}f6" not in {p["name"] for p in node.api("GET", "/v1/pods")}
    assert set(json_links(node.ns)) == before
    node.api("DELETE", f"/v1/pods?name={fab.tag}f2")
    assert add(fab, node, 7, spec)["planes"][0]["ip"] == "10.70.0.3"


LANE_FULL = r"""
import sys
from dataplane.engine import Engine, EngineConfig

mac = lambda i: "02:01:%02x:%02x:%02x:01" % (i >> 16, (i >> 8) & 255, i & 255)
eng = Engine(EngineConfig(mode="fallback", lcores=[0, 1]))
try:
    eng.add_network(0, vni=5000)
    up = eng.add_port("net_null0", role="uplink")
    eng.set_vtep("10.0.0.1/24", "02:00:0a:00:00:01", up, next_hop_mac="02:00:0a:00:00:fe")
    eng.express_open()
    n = 65536 + 64
    for i in range(n):
        eng.fdb_add_remote(0, mac(i), "10.0.0.%d" % (2 + i % 8))
    full = eng.express_remote_refused
    for i in range(100):  # room again: the next ones fit
        eng.fdb_del(0, mac(i))
    for i in range(n, n + 50):
        eng.fdb_add_remote(0, mac(i), "10.0.0.2")
    print(eng.fdb_count(), full, eng.express_remote_refused)
finally:
    eng.close()
"""


def test_remote_macs_past_the_lanes_table_are_counted():
    """The express lane mirrors at most 65,536 remote MACs; the core has
    the rest, and the ones the lane's table refused are counted (status
    ``express_remote_refused``), not left unsaid; once entries go, the
    next ones fit again."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", LANE_FULL], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    fdb, full, after = (int(x) for x in r.stdout.split()[-3:])
    assert (fdb, full, after) == (65536 + 64 - 100 + 50, 64, 64), r.stdout
