"""Entries the core refuses do not stop the cluster view: a real core (in a
child process, ring ports only) and a real etcd store (the session's test
etcd, a key prefix of its own), the ClusterSync thread between them.

An endpoint whose record the core refuses - a multicast MAC (EINVAL), a VTEP
for which the core has no tunnel slot left (ENOSPC: every one of its
DP_MAX_TUNNELS slots taken) - is logged once, counted and skipped; every
other entry and the flood lists are applied, the watch goes on, and a
resynchronisation (a new snapshot) completes and advances ``synced_at``.
"""

import base64
import json
import logging
import os
import threading
import time
import uuid

import pytest

from dataplane.config import parse_config
from dataplane.errors import Busy
from dataplane.sync import ClusterSync
from tests.etcdhost import have_etcd, shared_server

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the forwarding core needs root (DPDK EAL)"),
    pytest.mark.skipif(not have_etcd(), reason="needs /usr/bin/etcd (Debian: etcd-server)"),
]

MY_VTEP = "10.0.0.1"
V2, V3, V4 = "10.0.0.2", "10.0.0.3", "10.0.0.4"
SLOTLESS = "10.9.0.1"  # a VTEP the full tunnel table has no slot for
CONFIG = {
    "node": "node1",
    "vtep": {"address": f"{MY_VTEP}/24", "uplink": "eth1"},
    "networks": [
        {"name": "net1", "vni": 100, "plane": "std", "subnet": "192.168.10.0/24"},
        {"name": "net2", "vni": 200, "plane": "std", "subnet": "192.168.20.0/24"},
    ],
}
FILLER_NET = 5  # a network of the core's own, not the config's: holds the slots
A, C, D = "02:00:00:00:00:0a", "02:00:00:00:00:0c", "02:00:00:00:00:0d"
X = "02:00:00:00:00:99"
MULTICAST = "03:00:00:00:00:01"  # bit 0 of the first byte: the core refuses it
LOGGER = "dataplane"


@pytest.fixture(scope="module")
def core():
    from tests.enginehost import small_core

    with small_core("refusals") as engine:
        yield engine


@pytest.fixture
def eng(core):
    up = core.add_ring_port("up", role="uplink")
    core.add_network(0, vni=100)
    core.add_network(1, vni=200)
    core.set_vtep(f"{MY_VTEP}/24", "02:00:0a:00:00:01", up, next_hop_mac="02:00:0a:00:00:fe")
    yield core
    core.reset()


@pytest.fixture
def store(pytestconfig):
    from dataplane.store.etcd import EtcdStore

    prefix = f"/dptest/{uuid.uuid4().hex}"
    url = shared_server(pytestconfig).url
    s = EtcdStore([url], prefix=prefix)
    yield s
    s.client.post("kv/deleterange", {"key": _b64(prefix + "/"), "range_end": _b64(prefix + "0")})
    s.close()


def _b64(text):
    import base64

    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def sync_of(eng, store):
    made = []

    def make():
        made.append(ClusterSync(parse_config(CONFIG), store, eng, threading.RLock()))
        made[-1].start()
        assert made[-1].synced.wait(15), "no snapshot applied"
        return made[-1]

    yield make
    for s in made:
        s.stop()


def remote(store, pod, network, mac, vtep, node):
    store.add_endpoint(
        pod, "std", network, "eth0", None, mac, None, node=node, vtep=vtep, state="ready"
    )


def until(cond, what, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def flood(eng, net):
    return [ip for ip, _ in eng.flood_list(net)]


def refusal_lines(caplog):
    return [r.getMessage() for r in caplog.records if "the core refused" in r.getMessage()]


def store_blamed(caplog):
    return [
        r.getMessage()
        for r in caplog.records
        if "cluster store unavailable" in r.getMessage() or "watch ended" in r.getMessage()
    ]


def test_a_refused_entry_is_skipped_counted_and_logged_once(eng, store, sync_of, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    remote(store, "a", "net1", A, V2, "node2")
    remote(store, "bad", "net1", MULTICAST, V3, "node3")  # the core refuses this one
    remote(store, "c", "net2", C, V3, "node3")
    sync = sync_of()

    # the snapshot: everything else applied, flood lists included
    assert eng.fdb_get(0, A) == ("remote", V2)
    assert eng.fdb_get(1, C) == ("remote", V3)
    assert eng.fdb_get(0, MULTICAST) is None
    assert flood(eng, 0) == [V2, V3]
    assert flood(eng, 1) == [V3]
    assert sync.refused == 1
    assert sync.tables.refused[("fdb", 0, MULTICAST)][0] == V3
    assert "multicast" in sync.tables.refused[("fdb", 0, MULTICAST)][1]
    first = sync.synced_at

    # the watch goes on: a new node's endpoint arrives, entry and flood list
    # (each change retries the refused entry: it is not logged again)
    remote(store, "d", "net2", D, V4, "node4")
    until(lambda: eng.fdb_get(1, D) == ("remote", V4), "the new endpoint's entry")
    until(lambda: flood(eng, 1) == [V3, V4], "the new VTEP in net2's flood list")
    remote(store, "a", "net1", A, V4, "node4")  # a moved to node4: changed in place
    until(lambda: eng.fdb_get(0, A) == ("remote", V4), "the moved endpoint's entry")
    until(lambda: flood(eng, 0) == [V3, V4], "net1's flood list after the move")
    assert sync.refused == 1
    assert len(refusal_lines(caplog)) == 1, refusal_lines(caplog)
    assert store_blamed(caplog) == []
    assert sync.synced_at == first  # no resynchronisation was needed

    # a resynchronisation (a new snapshot) completes with the refusal in it
    time.sleep(0.01)
    sync._watch.cancel()
    until(lambda: sync.synced_at is not None and sync.synced_at > first, "a new snapshot")
    assert not [m for m in store_blamed(caplog) if "unavailable" in m]
    assert sync.refused == 1
    assert len(refusal_lines(caplog)) == 1  # once per entry and reason

    # the record fixed: the entry goes in, the count drops to 0
    store.delete_endpoint("bad", "std")
    remote(store, "bad", "net1", "02:00:00:00:00:0b", V3, "node3")
    until(lambda: eng.fdb_get(0, "02:00:00:00:00:0b") == ("remote", V3), "the fixed entry")
    until(lambda: sync.refused == 0, "no refusal left")


def test_no_tunnel_slot_left_the_rest_and_the_flood_lists_still_apply(eng, store, sync_of, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    # every tunnel slot of the core taken: V2, V3 and 1022 others
    fillers = [V2, V3] + [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(1022)]
    eng.add_network(FILLER_NET, vni=500)
    eng.set_flood(FILLER_NET, fillers)
    assert len(eng.flood_list(FILLER_NET)) == 1024

    remote(store, "a", "net1", A, V2, "node2")
    remote(store, "x", "net1", X, SLOTLESS, "node9")  # no slot for its VTEP: ENOSPC
    remote(store, "c", "net2", C, V3, "node3")
    sync = sync_of()

    assert eng.fdb_get(0, A) == ("remote", V2)
    assert eng.fdb_get(1, C) == ("remote", V3)
    assert eng.fdb_get(0, X) is None
    assert flood(eng, 0) == [V2]  # net1's list, without the VTEP with no slot
    assert flood(eng, 1) == [V3]
    assert set(sync.tables.refused) == {("fdb", 0, X), ("flood", 0)}
    assert sync.refused == 2
    assert "slots in use" in sync.tables.refused[("fdb", 0, X)][1]
    assert len(refusal_lines(caplog)) == 2
    first = sync.synced_at

    # changes go on being applied meanwhile, each refusal logged once
    remote(store, "d", "net2", D, V2, "node2")
    until(lambda: eng.fdb_get(1, D) == ("remote", V2), "a new endpoint's entry")
    until(lambda: flood(eng, 1) == [V2, V3], "net2's flood list")
    assert len(refusal_lines(caplog)) == 2
    assert store_blamed(caplog) == []

    # a resynchronisation completes too
    time.sleep(0.01)
    sync._watch.cancel()
    until(lambda: sync.synced_at is not None and sync.synced_at > first, "a new snapshot")
    assert not [m for m in store_blamed(caplog) if "unavailable" in m]
    assert sync.refused == 2

    # a slot freed: the next change puts the refused entry and full list in
    eng.set_flood(FILLER_NET, fillers[:-1])
    store.delete_endpoint("d", "std")
    until(lambda: eng.fdb_get(0, X) == ("remote", SLOTLESS), "the entry, once a slot is free")
    until(lambda: flood(eng, 0) == [V2, SLOTLESS], "net1's whole flood list")
    until(lambda: sync.refused == 0, "no refusal left")
    assert eng.fdb_get(1, D) is None


def _raw_put(store, pod, plane, value: bytes):
    """An endpoint record written as another tool would (etcd's own API)."""
    key = store._k("endpoints", pod, plane)
    store.client.post("kv/put", {"key": _b64(key), "value": base64.b64encode(value).decode()})


def test_a_malformed_record_is_skipped_counted_and_logged_once(eng, store, sync_of, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    good = {"pod": "a", "plane": "std", "network": "net1", "node": "node2", "state": "ready"}
    remote(store, "c", "net2", C, V3, "node3")
    _raw_put(store, "nomac", "std", json.dumps(dict(good, pod="nomac", vtep=V3)).encode())
    _raw_put(store, "badmac", "std", json.dumps(dict(good, pod="badmac", mac=7, vtep=V3)).encode())
    _raw_put(
        store, "badvtep", "std", json.dumps(dict(good, pod="badvtep", mac=X, vtep="x")).encode()
    )
    _raw_put(store, "notjson", "std", b"mac=02:00:00:00:00:77")
    sync = sync_of()

    assert eng.fdb_get(1, C) == ("remote", V3)  # the rest is applied
    assert flood(eng, 1) == [V3]
    assert flood(eng, 0) == []  # a skipped record adds nothing, its VTEP neither
    assert eng.fdb_get(0, X) is None
    assert sync.refused == 4 and len(sync.malformed) == 4
    assert sync.tables.refused == {}
    lines = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(lines) == 4, lines
    assert any("its mac None is not a MAC address" in m for m in lines)
    assert any("its mac 7 is not a string" in m for m in lines)
    assert any("its vtep 'x' is not an IPv4 address" in m for m in lines)
    assert any("not an object" in m for m in lines)
    first = sync.synced_at

    # the watch goes on: a good change applies, a malformed one is counted
    remote(store, "a", "net1", A, V2, "node2")
    until(lambda: eng.fdb_get(0, A) == ("remote", V2), "a good endpoint's entry")
    _raw_put(store, "late", "std", json.dumps(dict(good, pod="late", mac="zz", vtep=V4)).encode())
    until(lambda: sync.refused == 5, "the malformed record counted")
    assert sync.synced_at == first and store_blamed(caplog) == []

    # a resynchronisation logs nothing again
    time.sleep(0.01)
    sync._watch.cancel()
    until(lambda: sync.synced_at > first, "a new snapshot")
    assert sync.refused == 5
    lines = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(lines) == 5, lines

    # the record fixed: it goes in, the count drops
    remote(store, "late", "net1", D, V4, "node4")
    until(lambda: eng.fdb_get(0, D) == ("remote", V4), "the fixed record's entry")
    until(lambda: sync.refused == 4, "the count, once the record is fixed")
    store.delete_endpoint("badvtep", "std")
    until(lambda: sync.refused == 3, "the count, once a record is deleted")

    # the store's other readers leave such records out instead of failing
    assert "notjson" not in [e["pod"] for e in store.endpoints()]
    with pytest.raises(Busy, match="in use"):
        store.delete_network("net1")  # its good endpoints still hold it


def test_a_record_overwritten_by_another_tool_is_named_by_its_key(eng, store, sync_of, caplog):
    """A remote endpoint's key overwritten with what is no record of it
    (text, or an object naming another pod): the entry the key held leaves
    the core and the record is counted refused under the key's pod and
    plane - in the watch as in a snapshot - and the key deleted, the count
    drops (all such records once shared one nameless slot, and the old
    entry stayed)."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    remote(store, "a", "net1", A, V2, "node2")
    remote(store, "c", "net1", C, V3, "node3")
    sync = sync_of()
    assert eng.fdb_get(0, A) == ("remote", V2) and eng.fdb_get(0, C) == ("remote", V3)
    _raw_put(store, "a", "std", b"x")
    until(lambda: eng.fdb_get(0, A) is None, "a's entry gone with its record")
    until(lambda: sync.refused == 1, "the text counted")
    other = {"pod": "z", "plane": "std", "network": "net1", "node": "node3", "mac": X, "vtep": V4}
    _raw_put(store, "c", "std", json.dumps(other).encode())
    until(lambda: eng.fdb_get(0, C) is None, "c's entry gone with its record")
    until(lambda: sync.refused == 2, "both counted")
    assert eng.fdb_get(0, X) is None  # under no name of its own
    assert set(sync.malformed) == {("a", "std"), ("c", "std")}, sync.malformed
    assert "its key c/std" in sync.malformed[("c", "std")]
    # a snapshot sees them alike
    first = sync.synced_at
    sync._watch.cancel()
    until(lambda: sync.synced_at > first, "a new snapshot")
    assert set(sync.malformed) == {("a", "std"), ("c", "std")} and eng.fdb_get(0, A) is None
    for pod, left in (("a", 1), ("c", 0)):  # as the other tool would
        key = store._k("endpoints", pod, "std")
        store.client.post("kv/deleterange", {"key": _b64(key)})
        until(lambda: sync.refused == left, f"the count, once {pod}'s key is deleted")
