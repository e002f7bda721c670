"""The cluster view without etcd: which remote entries and flood lists a
node wants from the cluster's endpoints, and the diff that brings the core
there (a real core in a child process, ring ports only; those tests need
root for DPDK's EAL)."""

import os

import pytest

from dataplane.config import parse_config
from dataplane.sync import CoreTables, Tables, desired_tables, is_remote, network_index

CONFIG = {
    "node": "node1",
    "vtep": {"address": "10.0.0.1/24", "uplink": "eth1"},
    "networks": [
        {"name": "net1", "vni": 100, "plane": "std", "subnet": "192.168.10.0/24"},
        {"name": "net2", "vni": 200, "plane": "std", "subnet": "192.168.20.0/24"},
        {"name": "net3", "vni": 300, "plane": "std", "subnet": "192.168.30.0/24"},
    ],
    "remotes": [{"vtep": "10.0.0.9", "networks": ["net2"]}],
}


@pytest.fixture
def config():
    return parse_config(CONFIG)


def ep(pod, network, mac, vtep, node, state="ready", plane="std"):
    return {
        "pod": pod,
        "plane": plane,
        "network": network,
        "mac": mac,
        "vtep": vtep,
        "node": node,
        "state": state,
    }


def want(config, eps):
    return desired_tables(config, "node1", "10.0.0.1", eps)


# ------------------------------------------------------------ desired tables
def test_network_index_is_the_place_in_the_config(config):
    assert network_index(config) == {"net1": 0, "net2": 1, "net3": 2}


def test_no_endpoints_gives_the_configured_flood_lists(config):
    assert want(config, []) == Tables({}, {0: [], 1: ["10.0.0.9"], 2: []})


def test_remote_endpoints_give_fdb_entries_and_flood_vteps(config):
    t = want(
        config,
        [
            ep("a", "net1", "02:00:00:00:00:0A", "10.0.0.2", "node2"),
            ep("b", "net1", "02:00:00:00:00:0b", "10.0.0.3", "node3"),
            ep("c", "net2", "02:00:00:00:00:0c", "10.0.0.9", "node9"),  # configured already
            ep("d", "net2", "02:00:00:00:00:0d", "10.0.0.2", "node2"),
        ],
    )
    assert t.fdb == {
        (0, "02:00:00:00:00:0a"): "10.0.0.2",  # MACs in lower case
        (0, "02:00:00:00:00:0b"): "10.0.0.3",
        (1, "02:00:00:00:00:0c"): "10.0.0.9",
        (1, "02:00:00:00:00:0d"): "10.0.0.2",
    }
    assert t.flood == {0: ["10.0.0.2", "10.0.0.3"], 1: ["10.0.0.2", "10.0.0.9"], 2: []}


@pytest.mark.parametrize(
    "e, why",
    [
        (ep("a", "net1", "02:00:00:00:00:01", "10.0.0.1", "node1"), "this node's"),
        (ep("a", "net1", "02:00:00:00:00:01", "10.0.0.2", "node1"), "this node's name"),
        (ep("a", "net1", "02:00:00:00:00:01", "10.0.0.1", "node2"), "behind our VTEP"),
        (ep("a", "net1", "02:00:00:00:00:01", "10.0.0.2", "node2", "pending"), "not ready"),
        (ep("a", "net1", "02:00:00:00:00:01", "10.0.0.2", "node2", "deleting"), "going"),
        (ep("a", "net1", "02:00:00:00:00:01", None, "node2"), "no VTEP"),
        (ep("a", "net9", "02:00:00:00:00:01", "10.0.0.2", "node2"), "unknown network"),
    ],
)
def test_endpoints_that_are_not_remote_change_nothing(config, e, why):
    assert not is_remote(e, "node1", "10.0.0.1", network_index(config)), why
    assert want(config, [e]) == want(config, []), why


def test_a_static_host_is_remote(config):
    e = ep("vm1", "net3", "02:00:00:0a:63:32", "10.0.0.50", "static:vm1")
    assert is_remote(e, "node1", "10.0.0.1", network_index(config))
    t = want(config, [e])
    assert t.fdb == {(2, "02:00:00:0a:63:32"): "10.0.0.50"}
    assert t.flood[2] == ["10.0.0.50"]


def test_one_mac_on_two_vteps_the_later_endpoint_wins(config):
    old = ep("m", "net1", "02:00:00:00:00:01", "10.0.0.2", "node2")
    new = ep("m2", "net1", "02:00:00:00:00:01", "10.0.0.3", "node3")
    t = want(config, [old, new])
    assert t.fdb == {(0, "02:00:00:00:00:01"): "10.0.0.3"}
    assert t.flood[0] == ["10.0.0.2", "10.0.0.3"]  # both still get floods


def test_one_vtep_appears_once_in_a_flood_list(config):
    eps = [ep(f"p{i}", "net2", f"02:00:00:00:00:{i:02x}", "10.0.0.9", "node9") for i in range(1, 5)]
    assert want(config, eps).flood[1] == ["10.0.0.9"]


# -------------------------------------------------------------- core tables
MY_VTEP = "10.0.0.1"


@pytest.fixture(scope="module")
def core():
    if os.geteuid() != 0:
        pytest.skip("the forwarding core needs root (DPDK EAL)")
    from tests.enginehost import small_core

    with small_core("sync") as engine:
        yield engine


class Recorded:
    """The real engine, each change the diff asks of it recorded in
    ``calls`` (then made); reads go straight to it."""

    def __init__(self, engine):
        self.engine = engine
        self.calls = []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def fdb_add_remote(self, net, mac, vtep):
        self.calls.append(("add", net, mac, vtep))
        return self.engine.fdb_add_remote(net, mac, vtep)

    def fdb_del(self, net, mac):
        self.calls.append(("del", net, mac))
        return self.engine.fdb_del(net, mac)

    def set_flood(self, net, vteps):
        self.calls.append(("flood", net, list(vteps)))
        return self.engine.set_flood(net, vteps)


@pytest.fixture
def eng(core):
    """The core with an uplink, networks 0 and 1, this node's VTEP and a pod
    port (``eng.pod``) on network 0, behind a recorder of the diff's calls."""
    up = core.add_ring_port("up", role="uplink")
    core.add_network(0, vni=100)
    core.add_network(1, vni=200)
    core.set_vtep(f"{MY_VTEP}/24", "02:00:0a:00:00:01", up, next_hop_mac="02:00:0a:00:00:fe")
    rec = Recorded(core)
    rec.pod = core.add_ring_port("pa", role="pod", network=0)
    yield rec
    core.reset()


def fdb(eng, net=0):
    """{MAC: ("local", port) | ("remote", VTEP)} of network ``net``, as the core has it."""
    return {e.mac: eng.fdb_get(net, e.mac) for e in eng.fdb_list(net)}


def flood(eng, net):
    return [ip for ip, _ in eng.flood_list(net)]


M1, M2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


def test_apply_adds_then_changes_only_the_difference(eng):
    t = CoreTables()
    t.apply(
        eng,
        Tables({(0, M1): "10.0.0.2", (0, M2): "10.0.0.3"}, {0: ["10.0.0.2", "10.0.0.3"], 1: []}),
    )
    assert sorted(eng.calls) == [
        ("add", 0, M1, "10.0.0.2"),
        ("add", 0, M2, "10.0.0.3"),
        ("flood", 0, ["10.0.0.2", "10.0.0.3"]),
    ]  # none empty
    assert fdb(eng) == {M1: ("remote", "10.0.0.2"), M2: ("remote", "10.0.0.3")}
    assert sorted(flood(eng, 0)) == ["10.0.0.2", "10.0.0.3"] and flood(eng, 1) == []
    eng.calls.clear()
    t.apply(
        eng,
        Tables({(0, M1): "10.0.0.2", (0, M2): "10.0.0.3"}, {0: ["10.0.0.2", "10.0.0.3"], 1: []}),
    )
    assert eng.calls == []  # nothing twice
    t.apply(eng, Tables({(0, M1): "10.0.0.4"}, {0: ["10.0.0.4"], 1: []}))
    assert sorted(eng.calls) == [
        ("add", 0, M1, "10.0.0.4"),
        ("del", 0, M2),
        ("flood", 0, ["10.0.0.4"]),
    ]
    assert fdb(eng) == {M1: ("remote", "10.0.0.4")} and fdb(eng, 1) == {}
    assert flood(eng, 0) == ["10.0.0.4"]
    assert t.fdb == {(0, M1): "10.0.0.4"} and t.flood == {0: ["10.0.0.4"]}


def test_a_local_mac_stays_local(eng):
    t = CoreTables()
    eng.fdb_add_local(0, M1, eng.pod)  # a pod here has it
    t.apply(eng, Tables({(0, M1): "10.0.0.2"}, {0: ["10.0.0.2"]}))
    assert eng.calls == [("flood", 0, ["10.0.0.2"])]
    assert fdb(eng) == {M1: ("local", eng.pod)} and t.fdb == {}
    assert flood(eng, 0) == ["10.0.0.2"]


def test_a_pod_that_moved_here_keeps_its_local_entry(eng):
    t = CoreTables()
    t.apply(eng, Tables({(0, M1): "10.0.0.2"}, {0: ["10.0.0.2"]}))
    assert fdb(eng) == {M1: ("remote", "10.0.0.2")}
    eng.fdb_add_local(0, M1, eng.pod)  # attached here since
    assert fdb(eng) == {M1: ("local", eng.pod)}
    eng.calls.clear()
    t.apply(eng, Tables({}, {0: []}))  # its remote record went
    assert eng.calls == [("flood", 0, [])]  # the local entry is not deleted
    assert fdb(eng) == {M1: ("local", eng.pod)} and t.fdb == {}
    assert flood(eng, 0) == []


def test_an_entry_already_gone_from_the_core_is_forgotten(eng):
    t = CoreTables()
    t.apply(eng, Tables({(0, M1): "10.0.0.2"}, {0: []}))
    assert fdb(eng) == {M1: ("remote", "10.0.0.2")}
    eng.engine.fdb_del(0, M1)  # e.g. its port's purge (not the diff's call)
    eng.calls.clear()
    t.apply(eng, Tables({}, {0: []}))  # the core's NotFound is no failure
    assert eng.calls == [("del", 0, M1)]
    assert t.fdb == {} and fdb(eng) == {}
