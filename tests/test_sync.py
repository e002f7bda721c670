"""The cluster view without etcd or root: which remote entries and flood
lists a node wants from the cluster's endpoints, and the diff that brings
the core there (against a fake engine)."""

import pytest

from dataplane.config import parse_config
from dataplane.errors import NotFound
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
class FakeEngine:
    """The engine calls the diff makes, on dicts, recorded in ``calls``."""

    def __init__(self):
        self.fdb = {}  # (net, mac) -> ("local", port) | ("remote", vtep)
        self.flood = {}
        self.calls = []

    def fdb_get(self, net, mac):
        return self.fdb.get((net, mac))

    def fdb_local_keys(self):
        return {k for k, v in self.fdb.items() if v[0] == "local"}

    def fdb_add_remote(self, net, mac, vtep):
        self.calls.append(("add", net, mac, vtep))
        self.fdb[(net, mac)] = ("remote", vtep)

    def fdb_del(self, net, mac):
        self.calls.append(("del", net, mac))
        if self.fdb.pop((net, mac), None) is None:
            raise NotFound(f"MAC {mac} is not in network {net}")

    def set_flood(self, net, vteps):
        self.calls.append(("flood", net, list(vteps)))
        self.flood[net] = list(vteps)


M1, M2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


def test_apply_adds_then_changes_only_the_difference():
    eng, t = FakeEngine(), CoreTables()
    t.apply(
        eng,
        Tables({(0, M1): "10.0.0.2", (0, M2): "10.0.0.3"}, {0: ["10.0.0.2", "10.0.0.3"], 1: []}),
    )
    assert sorted(eng.calls) == [
        ("add", 0, M1, "10.0.0.2"),
        ("add", 0, M2, "10.0.0.3"),
        ("flood", 0, ["10.0.0.2", "10.0.0.3"]),
    ]  # none empty
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
    assert eng.fdb == {(0, M1): ("remote", "10.0.0.4")}
    assert t.fdb == {(0, M1): "10.0.0.4"} and t.flood == {0: ["10.0.0.4"]}


def test_a_local_mac_stays_local():
    eng, t = FakeEngine(), CoreTables()
    eng.fdb[(0, M1)] = ("local", 3)  # a pod here has it
    t.apply(eng, Tables({(0, M1): "10.0.0.2"}, {0: ["10.0.0.2"]}))
    assert eng.calls == [("flood", 0, ["10.0.0.2"])]
    assert eng.fdb[(0, M1)] == ("local", 3) and t.fdb == {}


def test_a_pod_that_moved_here_keeps_its_local_entry():
    eng, t = FakeEngine(), CoreTables()
    t.apply(eng, Tables({(0, M1): "10.0.0.2"}, {0: ["10.0.0.2"]}))
    eng.fdb[(0, M1)] = ("local", 3)  # attached here since
    eng.calls.clear()
    t.apply(eng, Tables({}, {0: []}))  # its remote record went
    assert eng.calls == [("flood", 0, [])]  # the local entry is not deleted
    assert eng.fdb[(0, M1)] == ("local", 3) and t.fdb == {}


def test_an_entry_already_gone_from_the_core_is_forgotten():
    eng, t = FakeEngine(), CoreTables()
    t.apply(eng, Tables({(0, M1): "10.0.0.2"}, {0: []}))
    del eng.fdb[(0, M1)]  # e.g. its port's purge
    t.apply(eng, Tables({}, {0: []}))
    assert t.fdb == {}
