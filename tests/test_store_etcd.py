"""The etcd cluster store against a real etcd (Debian's etcd-server, started by
the test on 127.0.0.1 with free ports, see tests/etcdhost.py): races between
processes, the key layout, static endpoints, watches, restarts and a hung
etcd. The behaviour it shares with the SQLite store is tested in
tests/test_store.py, which runs every case against both."""

import base64
import ipaddress
import multiprocessing
import queue
import threading
import time
import uuid

import pytest
from etcdhost import EtcdServer, _free_port, have_etcd, shared_server

from dataplane.config import StoreConfig
from dataplane.errors import AlreadyExists, Busy, ConfigError, NotFound
from dataplane.store import SqliteStore, open_store

pytestmark = pytest.mark.skipif(
    not have_etcd(),
    reason="etcd-server is not installed (/usr/bin/etcd; apt-get install etcd-server)",
)

if have_etcd():
    from dataplane.store.etcd import STATIC_NODE_PREFIX, EtcdCompacted, EtcdStore, EtcdUnavailable

SUBNET = "192.168.10.0/24"


@pytest.fixture
def server(request):
    return shared_server(request.config)


@pytest.fixture
def prefix():
    return f"/dptest/{uuid.uuid4().hex}"


@pytest.fixture
def own_server():
    """An etcd of the test's own, for the tests that stop or pause it."""
    srv = EtcdServer(name="own")
    srv.start()
    yield srv
    srv.close()


@pytest.fixture
def store(server, prefix):
    s = EtcdStore([server.url], prefix=prefix)
    yield s
    _wipe(s)
    s.close()


def _wipe(s):
    p = s.prefix.encode()
    s.client.post("kv/deleterange", {"key": _b64(p + b"/"), "range_end": _b64(p + b"0")})


def _b64(b):
    return base64.b64encode(b).decode()


def _raw_keys(s):
    p = s.prefix.encode()
    r = s.client.post(
        "kv/range", {"key": _b64(p + b"/"), "range_end": _b64(p + b"0"), "keys_only": True}
    )
    return sorted(
        base64.b64decode(kv["key"]).decode()[len(s.prefix) + 1 :] for kv in r.get("kvs", [])
    )


class Events:
    """A watch callback that queues what it gets."""

    def __init__(self):
        self.q = queue.Queue()

    def __call__(self, kind, data):
        self.q.put((kind, data))

    def next(self, timeout=5.0):
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no watch event within {timeout} s") from None

    def empty_for(self, seconds):
        try:
            got = self.q.get(timeout=seconds)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected event {got}")


# ----------------------------------------------------------------- opening
def test_open_store_by_kind(tmp_path, server, prefix):
    s = open_store(StoreConfig(kind="sqlite", path=str(tmp_path / "s.db")), "node1")
    assert isinstance(s, SqliteStore) and s.kind == "sqlite" and s.node == "node1"
    s.close()
    e = open_store(
        StoreConfig(kind="etcd", endpoints=(server.url,), prefix=prefix), "node1", timeout=3
    )
    assert isinstance(e, EtcdStore) and e.kind == "etcd" and e.node == "node1"
    assert e.prefix == prefix and e.timeout == 3 and e.urls == [server.url]
    e.close()
    with pytest.raises(ConfigError, match=r"store\.kind: 'zk' is not supported"):
        open_store(StoreConfig(kind="zk"), "node1")


def test_bad_arguments():
    with pytest.raises(ConfigError, match=r"etcd endpoint '127\.0\.0\.1:2379' is not a URL"):
        EtcdStore(["127.0.0.1:2379"], connect=False)
    with pytest.raises(ConfigError, match=r"etcd endpoints: give at least one"):
        EtcdStore([], connect=False)
    with pytest.raises(ConfigError, match=r"etcd prefix 'x' is not a key prefix"):
        EtcdStore(["http://127.0.0.1:2379"], prefix="x", connect=False)


def test_unreachable_etcd_is_an_error_not_a_hang():
    # nothing listens: the connection is refused, said as such (not a wait
    # for the request timeout, which would say "no answer within")
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(EtcdUnavailable) as e:
        EtcdStore([url], timeout=2)
    assert str(e.value).startswith(f"etcd {url} does not answer (connection refused"), e.value


def test_next_endpoint_when_one_does_not_answer(server, prefix):
    dead = f"http://127.0.0.1:{_free_port()}"
    s = EtcdStore([dead, server.url], prefix=prefix)
    s.put_network("net1", 100, "std", SUBNET)
    assert s.network("net1")["vni"] == 100
    _wipe(s)
    s.close()


def test_prefixes_do_not_meet(server, prefix):
    a = EtcdStore([server.url], prefix=prefix)
    b = EtcdStore([server.url], prefix=prefix + "b")  # "/x" and "/xb"
    a.put_network("net1", 100, "std", SUBNET)
    a.put_pod("p1", "/x", {})
    assert b.networks() == [] and b.pods() == []
    b.put_network("net1", 100, "std", SUBNET)  # VNIs are per cluster prefix
    _wipe(a), _wipe(b), a.close(), b.close()


# --------------------------------------------------------------- key layout
def test_key_layout(store):
    store.put_network("net1", 100, "std", SUBNET, "192.168.10.1")
    ip = store.allocate_ip("net1", SUBNET, "192.168.10.1", "ns/p1")
    mac = store.allocate_mac("ns/p1", "std")
    store.put_pod("ns/p1", "/x", {}, node="node1")
    store.add_endpoint(
        "ns/p1", "std", "net1", "eth0", "dp0", mac, ip, node="node1", vtep="10.0.0.1"
    )
    store.set_meta("k", "v")
    assert _raw_keys(store) == sorted(
        [
            "networks/net1",
            "vni/100",
            "pods/ns%2Fp1",
            "endpoints/ns%2Fp1/std",
            "hostif/node1/dp0",
            f"alloc/net1/{ip}",
            "podalloc/ns%2Fp1/net1",
            "lastip/net1",
            f"macs/{mac}",
            "podmacs/ns%2Fp1/std",
            "meta/k",
        ]
    )
    # a '/' in a name does not make it the parent of another name
    store.put_pod("ns", "/y", {})
    assert store.delete_pod("ns") is True
    assert store.endpoints(pod="ns/p1") != []
    assert store.delete_pod("ns/p1") is True
    # the network's position stays: the next pod goes on after ns/p1's address
    assert _raw_keys(store) == ["lastip/net1", "meta/k", "networks/net1", "vni/100"]
    assert store.delete_network("net1") is True
    assert _raw_keys(store) == ["meta/k"]


def test_vni_moves_with_its_network(store):
    store.put_network("net1", 100, "std", SUBNET)
    store.put_network("net1", 101, "std", SUBNET)  # renumbered: 100 is free again
    store.put_network("net2", 100, "std", "192.168.20.0/24")
    with pytest.raises(ConfigError, match="VNI 101 is used by network net1"):
        store.put_network("net3", 101, "std", "192.168.30.0/24")
    assert store.delete_network("net1") is True
    store.put_network("net3", 101, "std", "192.168.30.0/24")
    assert [(n["name"], n["vni"]) for n in store.networks()] == [("net2", 100), ("net3", 101)]


def test_a_network_is_forgotten_only_when_nothing_in_the_cluster_has_it(server, prefix):
    """A network's record stays while a pod or a static host is on it (each
    named) and while a running node's claim says it carries the network (a
    claim that does not say is taken as carrying it); then it goes, and
    its VNI is free for another network."""
    other = EtcdStore([server.url], prefix=prefix)
    store = EtcdStore([server.url], prefix=prefix)
    try:
        store.put_network("net3", 103, "std", "192.168.53.0/24")
        store.put_static_endpoint("vm1", "net3", "02:00:00:00:03:01", "192.168.53.9", "10.0.0.7")
        with pytest.raises(Busy, match=r"^network net3 is in use by host vm1: delete them first"):
            store.delete_network("net3")
        store.delete_pod("vm1")  # as dataplane host del does
        other.claim_node("node2", "10.0.0.9", "host9", networks=["net3", "net1"])
        assert [c["networks"] for c in store.node_claims()] == [["net1", "net3"]]
        with pytest.raises(Busy, match=r"^network net3: node node2 \(VTEP 10.0.0.9\) runs with it"):
            store.delete_network("net3")
        other.set_claim_networks(["net1"])  # a reload took it out there
        assert [c["networks"] for c in store.node_claims()] == [["net1"]]
        assert store.delete_network("net3") is True
        assert store.delete_network("net3") is False
        store.put_network("net4", 103, "std", "192.168.54.0/24")  # the VNI is free
        # a claim that does not say which networks its node carries
        key = other._k("nodes", "node2")
        _, lease, rec = other._claim
        del rec["networks"]
        other.client.atomic(lambda tx: tx.put(key, rec, lease=lease))
        with pytest.raises(Busy, match=r"^network net4: node node2"):
            store.delete_network("net4")
    finally:
        other.close()
        _wipe(store)
        store.close()


def test_a_network_other_nodes_use_is_not_redefined_by_one(server, prefix):
    """Every node writes its config's networks at start; one whose config
    disagrees with the cluster's record (VNI, plane, subnet, subnet6,
    gateway) while other
    nodes have endpoints on the network is refused, not let win."""
    n1 = EtcdStore([server.url], prefix=prefix, node="node1")
    n2 = EtcdStore([server.url], prefix=prefix, node="node2")
    try:
        n1.put_network("net1", 101, "std", SUBNET)
        n1.add_endpoint("a", "std", "net1", "eth0", "dp0", "02:00:00:00:00:01", None, node="node1")
        n1.put_network("net1", 101, "std", SUBNET)  # the same again: fine
        n1.put_network("net1", 102, "std", SUBNET)  # only its own pods use it: redefined
        with pytest.raises(ConfigError) as e:
            n2.put_network("net1", 111, "control", SUBNET)
        assert str(e.value).startswith(
            "network net1: the cluster has it as VNI 102, plane std, subnet "
            f"{SUBNET}, used by node1; this node's config says VNI 111, plane control"
        ), e.value
        assert n2.network("net1")["vni"] == 102  # nothing written
        n2.put_network("net1", 102, "std", SUBNET)  # agreeing: fine
        # dual stack: subnet6 is part of what every node must agree on
        n1.put_network("net1", 102, "std", SUBNET, subnet6="fd00:1::/64")  # its own pods only
        with pytest.raises(ConfigError) as e:
            n2.put_network("net1", 102, "std", SUBNET)
        assert str(e.value).startswith(
            f"network net1: the cluster has it as VNI 102, plane std, subnet {SUBNET}, subnet6 "
            f"fd00:1::/64, used by node1; this node's config says VNI 102, plane std, subnet "
            f"{SUBNET}, subnet6 none: make every node's networks agree"
        ), e.value
        n2.put_network("net1", 102, "std", SUBNET, subnet6="fd00:1::/64")  # agreeing
        # so is the gateway: each node keeps its own gateway's address from
        # the addresses it gives its pods
        gw = str(ipaddress.ip_network(SUBNET)[1])
        n1.put_network("net1", 102, "std", SUBNET, gateway=gw, subnet6="fd00:1::/64")
        with pytest.raises(ConfigError) as e:
            n2.put_network("net1", 102, "std", SUBNET, subnet6="fd00:1::/64")
        assert str(e.value).startswith(
            f"network net1: the cluster has it as VNI 102, plane std, subnet {SUBNET}, subnet6 "
            f"fd00:1::/64, gateway {gw}, used by node1; this node's config says VNI 102, plane "
            f"std, subnet {SUBNET}, subnet6 fd00:1::/64, gateway none: make every node's "
            "networks agree"
        ), e.value
        assert n2.network("net1")["gateway"] == gw  # nothing written
        n2.put_network("net1", 102, "std", SUBNET, gateway=gw, subnet6="fd00:1::/64")
        # a running node that carries it, with no pod on it yet: it keeps
        # the record's VNI, so the record is not renumbered under it
        n3 = EtcdStore([server.url], prefix=prefix, node="node3")
        try:
            n3.claim_node("node3", "10.0.0.13", "host13", networks=["net9"])
            n2.put_network("net9", 109, "std", "192.168.90.0/24")
            with pytest.raises(ConfigError, match=r"subnet 192\.168\.90\.0/24, used by node3; "):
                n2.put_network("net9", 119, "std", "192.168.90.0/24")
            assert n2.network("net9")["vni"] == 109
            n3.set_claim_networks([])  # a reload took it out there
            n2.put_network("net9", 119, "std", "192.168.90.0/24")
        finally:
            n3.close()
    finally:
        _wipe(n1)
        n1.close()
        n2.close()


def test_host_interfaces_are_unique_per_node(store):
    store.add_endpoint("a", "std", "net1", "eth0", "dp0", "02:00:00:00:00:01", None, node="node1")
    store.add_endpoint(
        "b", "std", "net1", "eth0", "dp0", "02:00:00:00:00:02", None, node="node2"
    )  # another node: fine
    with pytest.raises(Busy, match="host interface dp0 belongs to pod a"):
        store.add_endpoint(
            "c", "std", "net1", "eth0", "dp0", "02:00:00:00:00:03", None, node="node1"
        )
    # an endpoint that moves to another host interface frees the old one
    store.add_endpoint("a", "std", "net1", "eth0", "dp1", "02:00:00:00:00:01", None, node="node1")
    store.add_endpoint("c", "std", "net1", "eth0", "dp0", "02:00:00:00:00:03", None, node="node1")
    assert store.delete_endpoint("c", "std") is True
    assert not any(k.startswith("hostif/node1/dp0") for k in _raw_keys(store))


def test_a_failed_change_writes_nothing(store):
    def body(tx):
        tx.put(store._k("pods", "x"), {"name": "x"})
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.client.atomic(body)
    assert _raw_keys(store) == []


def test_a_change_overtaken_forever_is_busy(store, monkeypatch):
    import dataplane.store.etcdgw as gw

    monkeypatch.setattr(gw, "MAX_ATTEMPTS", 3)

    def body(tx):
        tx.get(store._k("meta", "x"))
        store.set_meta("x", str(time.time()))  # another writer, every time
        tx.put(store._k("meta", "x"), "mine")

    with pytest.raises(Busy, match="overtaken by other writers 3 times"):
        store.client.atomic(body)


# ------------------------------------------------------------------- races
def _alloc_worker(url, prefix, tag, n, subnet, barrier, out):
    try:
        s = EtcdStore([url], prefix=prefix)
        barrier.wait(60)
        got = [s.allocate_ip("net1", subnet, None, f"{tag}{i}") for i in range(n)]
        out.put((tag, got))
    except BaseException as e:  # noqa: BLE001 - reported to the test
        out.put((tag, repr(e)))


def _vni_worker(url, prefix, tag, vnis, barrier, out):
    try:
        s = EtcdStore([url], prefix=prefix)
        barrier.wait(60)
        won = []
        for v in vnis:
            try:
                s.put_network(f"{tag}-{v}", v, "std", f"10.{v % 250}.0.0/24")
                won.append(v)
            except ConfigError as e:
                assert f"VNI {v} is used by network" in str(e), str(e)
        out.put((tag, won))
    except BaseException as e:  # noqa: BLE001
        out.put((tag, repr(e)))


def _run_two(target, *args):
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(*args[:2], tag, *args[2:], barrier, out))
        for tag in ("a", "b")
    ]
    for p in procs:
        p.start()
    results = {}
    deadline = time.monotonic() + 180
    try:
        while len(results) < len(procs):
            try:
                tag, r = out.get(timeout=0.5)
                results[tag] = r
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                assert not dead, f"a worker process died (exit code {dead[0].exitcode})"
                assert time.monotonic() < deadline, "the workers did not finish in 180 s"
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():  # pragma: no cover
                p.kill()
    for tag, r in results.items():
        assert isinstance(r, list), f"process {tag} failed: {r}"
    return results


def test_two_processes_allocate_without_duplicates(store, server):
    got = _run_two(_alloc_worker, server.url, store.prefix, 100, "10.9.0.0/23")
    every = got["a"] + got["b"]
    assert len(every) == 200 and len(set(every)) == 200
    net = ipaddress.IPv4Network("10.9.0.0/23")
    assert all(ipaddress.IPv4Address(a) in net for a in every)
    # the nodes went on from one shared position, one after the other: the
    # first 200 addresses, none skipped, each node's in ascending order
    assert sorted(every, key=ipaddress.IPv4Address) == [str(net[i]) for i in range(1, 201)]
    for tag in ("a", "b"):
        assert got[tag] == sorted(got[tag], key=ipaddress.IPv4Address)
    allocs = store.allocations("net1")
    assert len(allocs) == 200
    assert {a["ip"]: a["pod"] for a in allocs} == {
        **{ip: f"a{i}" for i, ip in enumerate(got["a"])},
        **{ip: f"b{i}" for i, ip in enumerate(got["b"])},
    }
    assert "10.9.0.0" not in every and "10.9.1.255" not in every


def test_two_processes_go_round_without_reusing_freed_addresses_early(store, server):
    """Two nodes allocating at once after pods were deleted: distinct
    addresses, the rest of the subnet first, then (round past its end) the
    freed ones from the start."""
    subnet = "10.9.0.0/26"  # hosts .1 .. .62
    net = ipaddress.IPv4Network(subnet)
    old = [store.allocate_ip("net1", subnet, None, f"old{i}") for i in range(40)]  # .1 .. .40
    freed = old[1::2]  # .2 .4 .. .40
    for i in range(1, 40, 2):
        store.release_ips(f"old{i}")
    got = _run_two(_alloc_worker, server.url, store.prefix, 15, subnet)
    every = got["a"] + got["b"]
    assert len(set(every)) == 30
    rest = [str(net[i]) for i in range(41, 63)]  # never used yet: first
    assert sorted(every, key=ipaddress.IPv4Address) == sorted(
        rest + freed[:8], key=ipaddress.IPv4Address
    )
    assert {a["ip"]: a["pod"] for a in store.allocations("net1")} == {
        **{ip: f"old{i}" for i, ip in enumerate(old) if i % 2 == 0},
        **{ip: f"a{i}" for i, ip in enumerate(got["a"])},
        **{ip: f"b{i}" for i, ip in enumerate(got["b"])},
    }


def test_a_cluster_without_positions_starts_from_the_lowest_free(store):
    """Addresses allocated before the position was kept (no lastip key): the
    lowest free first, then on after it."""
    for i in range(4):
        store.allocate_ip("net1", SUBNET, None, f"p{i}")  # .1 .. .4
    store.release_ips("p1")
    store.release_ips("p3")
    p = store.prefix.encode()
    store.client.post("kv/deleterange", {"key": _b64(p + b"/lastip/net1")})
    assert "lastip/net1" not in _raw_keys(store)
    assert store.allocate_ip("net1", SUBNET, None, "q1") == "192.168.10.2"  # the lowest free
    assert store.allocate_ip("net1", SUBNET, None, "q2") == "192.168.10.4"  # then after it
    assert store.allocate_ip("net1", SUBNET, None, "q3") == "192.168.10.5"
    assert "lastip/net1" in _raw_keys(store)


def test_two_processes_race_for_vnis(store, server):
    vnis = list(range(1000, 1040))
    won = _run_two(_vni_worker, server.url, store.prefix, vnis)
    assert sorted(won["a"] + won["b"]) == vnis  # each VNI won exactly once
    owner = {n["vni"]: n["name"] for n in store.networks()}
    assert len(store.networks()) == len(vnis)
    for tag in ("a", "b"):
        for v in won[tag]:
            assert owner[v] == f"{tag}-{v}"


def test_one_pod_one_address_under_a_race(server, prefix):
    stores = [EtcdStore([server.url], prefix=prefix) for _ in range(4)]
    got, start = [], threading.Barrier(4)

    def worker(s):
        start.wait()
        got.append(s.allocate_ip("net1", SUBNET, None, "p1"))
        got.append(s.allocate_mac("p1", "std"))

    threads = [threading.Thread(target=worker, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 2  # one address, one MAC
    assert len(stores[0].allocations()) == 1
    _wipe(stores[0])
    for s in stores:
        s.close()


def test_macs_are_unique_in_the_cluster(server, prefix):
    a = EtcdStore([server.url], prefix=prefix)  # two nodes
    b = EtcdStore([server.url], prefix=prefix)
    m = a.allocate_mac("p1", "std")
    assert b.allocate_mac("p1", "std") == m  # the same pair: the same MAC
    b.add_endpoint("p2", "std", "net1", "eth0", "h2", m, None, node="node2")
    m2 = a.allocate_mac("p1", "std")  # taken by p2 now: the next one
    assert m2 != m and b.allocate_mac("p1", "std") == m2
    a.delete_pod("p1")
    assert a.allocate_mac("p1", "std") == m2  # given back and taken again
    _wipe(a), a.close(), b.close()


# -------------------------------------------------------- static endpoints
def test_static_endpoint(store):
    store.put_network("net1", 100, "std", SUBNET, "192.168.10.1")
    store.put_network("net2", 200, "std", "192.168.20.0/24")
    ep = store.put_static_endpoint("kvm1", "net1", "02:AA:00:00:00:01", "192.168.10.2", "10.0.0.9")
    assert ep == store.endpoints(pod="kvm1")[0]
    assert (
        ep["network"],
        ep["plane"],
        ep["mac"],
        ep["ip"],
        ep["vtep"],
        ep["node"],
        ep["state"],
        ep["host_ifname"],
    ) == (
        "net1",
        "std",
        "02:aa:00:00:00:01",
        "192.168.10.2",
        "10.0.0.9",
        STATIC_NODE_PREFIX + "kvm1",
        "ready",
        None,
    )
    assert store.endpoints(node="static:kvm1") == [ep]
    # its address is taken: pods go round it
    assert store.allocate_ip("net1", SUBNET, "192.168.10.1", "p1") == "192.168.10.3"
    with pytest.raises(
        ConfigError,
        match=r"192\.168\.10\.2 on network net1 is taken by "
        r"pod kvm1",
    ):
        store.allocate_ip("net1", SUBNET, "192.168.10.1", "p2", fixed="192.168.10.2")
    with pytest.raises(
        ConfigError,
        match=r"192\.168\.10\.3 on network net1 is taken by "
        r"pod p1",
    ):
        store.put_static_endpoint("kvm2", "net1", "02:aa:00:00:00:02", "192.168.10.3", "10.0.0.9")
    # again: an update (new address, new VTEP); the old address is free again
    store.put_static_endpoint("kvm1", "net1", "02:aa:00:00:00:01", "192.168.10.9", "10.0.0.8")
    assert [(a["ip"], a["pod"]) for a in store.allocations("net1")] == [
        ("192.168.10.3", "p1"),
        ("192.168.10.9", "kvm1"),
    ]
    assert store.endpoints(pod="kvm1")[0]["vtep"] == "10.0.0.8"
    # errors name what is wrong
    with pytest.raises(AlreadyExists, match=r"MAC 02:aa:00:00:00:01 belongs to pod kvm1"):
        store.put_static_endpoint("kvm2", "net1", "02:aa:00:00:00:01", "192.168.10.20", "10.0.0.7")
    with pytest.raises(AlreadyExists, match=r"it has network net1 on plane std already"):
        store.put_static_endpoint("kvm1", "net2", "02:aa:00:00:00:09", "192.168.20.2", "10.0.0.8")
    with pytest.raises(NotFound, match=r"network nope is not recorded"):
        store.put_static_endpoint("kvm3", "nope", "02:aa:00:00:00:03", "1.2.3.4", "10.0.0.7")
    with pytest.raises(ConfigError, match=r"mac: .*not a MAC"):
        store.put_static_endpoint("kvm3", "net1", "zz", "192.168.10.30", "10.0.0.7")
    with pytest.raises(ConfigError, match=r"vtep 'x' is not an IPv4"):
        store.put_static_endpoint("kvm3", "net1", "02:aa:00:00:00:03", "192.168.10.30", "x")
    with pytest.raises(ConfigError, match=r"ips: 192\.168\.10\.1 is the gateway"):
        store.put_static_endpoint("kvm3", "net1", "02:aa:00:00:00:03", "192.168.10.1", "10.0.0.7")
    store.put_pod("p1", "/x", {})
    # a pod named as a static host would take its address: refused
    with pytest.raises(AlreadyExists, match=r"pod kvm1: a static host of that name exists"):
        store.put_pod("kvm1", "/x", {})
    assert store.pod("kvm1") is None and store.endpoints(pod="kvm1")[0]["vtep"] == "10.0.0.8"
    with pytest.raises(AlreadyExists, match=r"a pod of that name exists"):
        store.put_static_endpoint("p1", "net1", "02:aa:00:00:00:04", "192.168.10.31", "10.0.0.7")
    # gone with delete_pod, address and MAC too
    assert store.delete_pod("kvm1") is True
    assert store.endpoints(pod="kvm1") == []
    assert [a["pod"] for a in store.allocations()] == ["p1"]
    store.put_static_endpoint("kvm2", "net1", "02:aa:00:00:00:01", "192.168.10.9", "10.0.0.7")


# ------------------------------------------------------------------ watch
def test_snapshot_and_watch(store):
    store.put_network("net1", 100, "std", SUBNET)
    store.add_endpoint(
        "p0",
        "std",
        "net1",
        "eth0",
        "h0",
        "02:00:00:00:00:10",
        "192.168.10.10",
        node="node1",
        vtep="10.0.0.1",
        state="ready",
    )
    eps, rev = store.endpoints_snapshot()
    assert [e["pod"] for e in eps] == ["p0"] and rev > 0
    ev = Events()
    w = store.watch_endpoints(rev + 1, ev)
    assert w.running and w.error is None
    store.put_pod("p1", "/x", {}, node="node2")  # not an endpoint: no event
    store.add_endpoint(
        "p1",
        "std",
        "net1",
        "eth0",
        "h1",
        "02:00:00:00:00:11",
        "192.168.10.11",
        node="node2",
        vtep="10.0.0.2",
    )
    kind, ep = ev.next()
    assert kind == "put" and ep == store.endpoints(pod="p1")[0]
    store.set_endpoint_state("p1", "std", "ready")
    assert ev.next() == ("put", dict(ep, state="ready"))
    store.put_static_endpoint("kvm", "net1", "02:00:00:00:00:99", "192.168.10.99", "10.0.0.9")
    kind, ep = ev.next()
    assert (kind, ep["pod"], ep["node"], ep["vtep"]) == ("put", "kvm", "static:kvm", "10.0.0.9")
    store.delete_pod("p1")
    kind, gone = ev.next()
    assert kind == "delete"
    assert (gone["pod"], gone["plane"], gone["mac"], gone["network"], gone["vtep"]) == (
        "p1",
        "std",
        "02:00:00:00:00:11",
        "net1",
        "10.0.0.2",
    )
    store.delete_endpoint("p0", "std")
    kind, gone = ev.next()
    assert (kind, gone["pod"], gone["plane"]) == ("delete", "p0", "std")
    assert w.revision > rev
    w.cancel()
    assert not w.running and w.error is None
    store.add_endpoint("p2", "std", "net1", "eth0", "h2", "02:00:00:00:00:12", None)
    assert ev.empty_for(0.5)  # cancelled: quiet, no 'error'

    # a watch from the old revision replays the same history, in order
    ev2 = Events()
    w2 = store.watch_endpoints(rev + 1, ev2)
    kinds = [ev2.next()[0] for _ in range(6)]
    assert kinds == ["put", "put", "put", "delete", "delete", "put"]
    w2.cancel()


def test_watch_of_many_changes_in_one_transaction(store):
    _, rev = store.endpoints_snapshot()
    for plane in ("std", "control", "media", "oam"):
        store.add_endpoint(
            "p1",
            plane,
            "net1",
            plane,
            f"h-{plane}",
            store.allocate_mac("p1", plane),
            None,
            node="node1",
        )
    ev = Events()
    w = store.watch_endpoints(rev + 1, ev)
    assert sorted(ev.next()[1]["plane"] for _ in range(4)) == ["control", "media", "oam", "std"]
    store.delete_pod("p1")  # one revision, four deletes
    assert sorted(ev.next()[1]["plane"] for _ in range(4)) == ["control", "media", "oam", "std"]
    w.cancel()


def test_watch_reports_what_the_callback_raised(store):
    got = Events()

    def cb(kind, data):
        got(kind, data)
        if kind == "put":
            raise KeyError("no such network in the core")

    w = store.watch_endpoints(None, cb)
    store.add_endpoint("p1", "std", "net1", "eth0", "h1", "02:00:00:00:00:11", None)
    assert got.next()[0] == "put"
    kind, err = got.next()
    assert kind == "error" and isinstance(err, KeyError)
    assert w.wait(5) and w.error is err and not w.running


def test_watch_of_a_compacted_revision_is_an_error(store):
    store.add_endpoint("p1", "std", "net1", "eth0", "h1", "02:00:00:00:00:11", None)
    _, rev = store.endpoints_snapshot()
    store.set_endpoint_state("p1", "std", "ready")
    _, now = store.endpoints_snapshot()
    store.client.post("kv/compaction", {"revision": now})
    ev = Events()
    w = store.watch_endpoints(rev, ev)
    kind, err = ev.next()
    assert kind == "error" and isinstance(err, EtcdCompacted)
    assert "take a new snapshot" in str(err) and err.compact_revision == now
    assert w.wait(5) and w.error is err
    with pytest.raises(ConfigError, match=r"start_revision: 0 is not a revision"):
        store.watch_endpoints(0, ev)


def test_etcd_restart_then_snapshot_and_watch_again(own_server):
    s = EtcdStore([own_server.url], prefix="/dataplane", timeout=2)
    s.put_network("net1", 100, "std", SUBNET)
    ip = s.allocate_ip("net1", SUBNET, None, "p1")
    s.add_endpoint(
        "p1",
        "std",
        "net1",
        "eth0",
        "h1",
        "02:00:00:00:00:11",
        ip,
        node="node1",
        vtep="10.0.0.1",
        state="ready",
    )
    eps, rev = s.endpoints_snapshot()
    ev = Events()
    w = s.watch_endpoints(rev + 1, ev)

    own_server.stop()
    kind, err = ev.next(timeout=10)  # the watch says it ended
    assert kind == "error" and isinstance(err, EtcdUnavailable)
    assert w.wait(5) and not w.running and w.error is err
    with pytest.raises(EtcdUnavailable, match="does not answer"):
        s.endpoints_snapshot()
    with pytest.raises(EtcdUnavailable, match="cannot watch"):
        s.watch_endpoints(rev + 1, ev)
    with pytest.raises(EtcdUnavailable):
        s.allocate_ip("net1", SUBNET, None, "p2")

    own_server.start()  # same data directory and port
    eps2, rev2 = s.endpoints_snapshot()  # the same client reconnects
    assert eps2 == eps and rev2 >= rev
    w2 = s.watch_endpoints(rev2 + 1, ev)
    s.add_endpoint(
        "p2",
        "std",
        "net1",
        "eth0",
        "h2",
        "02:00:00:00:00:12",
        "192.168.10.3",
        node="node2",
        vtep="10.0.0.2",
    )
    kind, ep = ev.next()
    assert (kind, ep["pod"]) == ("put", "p2")
    assert ip == "192.168.10.1"
    assert s.allocate_ip("net1", SUBNET, None, "p3") == "192.168.10.2"  # state kept
    w2.cancel()
    s.close()


def test_hung_etcd_is_noticed_by_the_heartbeat(own_server):
    s = EtcdStore([own_server.url], timeout=1)
    ev = Events()
    w = s.watch_endpoints(None, ev, heartbeat=0.5)
    own_server.pause()  # no FIN, no answer: a partition
    try:
        kind, err = ev.next(timeout=10)
        assert kind == "error" and isinstance(err, EtcdUnavailable)
        assert w.wait(5) and not w.running
        # calls time out at the store's timeout, none hangs: each error says
        # the wait it gave up after
        with pytest.raises(EtcdUnavailable, match=r"no answer within 1 s"):
            s.endpoints_snapshot()
        with pytest.raises(EtcdUnavailable, match=r"cannot watch") as e:
            s.watch_endpoints(None, ev)
        assert str(e.value) == (
            f"etcd: cannot watch, no endpoint answers: {own_server.url} (the connection timed out)"
        )
    finally:
        own_server.resume()
    _, rev = s.endpoints_snapshot()  # answers again
    w = s.watch_endpoints(rev + 1, ev)
    s.add_endpoint("p1", "std", "net1", "eth0", "h1", "02:00:00:00:00:11", None)
    assert ev.next()[0] == "put"
    w.cancel()
    s.close()


def test_threads_share_a_few_clients_and_close_ends_watches(server, prefix):
    s = EtcdStore([server.url], prefix=prefix)
    for i in range(20):  # e.g. one thread per API request
        t = threading.Thread(target=s.get_meta, args=("x",))
        t.start()
        t.join()
    assert len(s.client._sessions) == 1
    ev = Events()
    w = s.watch_endpoints(None, ev)
    s.close()
    assert not w.running and w.error is None
    assert ev.empty_for(0.3)  # closed: no 'error' either
    with pytest.raises(Exception, match="closed"):
        s.get_meta("x")


def test_store_errors_name_the_endpoint_in_plain_words(own_server):
    """What a view shows when etcd is stopped or hung: the endpoint and why,
    not urllib3's text; a refused connection is not called a timeout; a
    bounded read gives up at its bound, not the store's timeout."""
    s = EtcdStore([own_server.url], timeout=10)
    s.pods()
    assert s.client.last_error is None and s.client.last_answer is not None
    own_server.pause()
    try:
        # gave up at the bound (its message says 0.5 s), not the 10 s timeout
        with s.client.bounded(0.5), pytest.raises(EtcdUnavailable) as hung:
            s.pods()
        assert str(hung.value) == (
            f"etcd {own_server.url} does not answer: no answer within 0.5 s "
            "(it is hung, overloaded or cut off)"
        )
        assert s.client.last_error[0] == str(hung.value)
    finally:
        own_server.resume()
    s.pods()  # the bound is gone with the block; etcd answers again
    assert s.client.last_error is None
    own_server.stop()
    try:
        with pytest.raises(EtcdUnavailable) as stopped:
            s.pods()
        msg = str(stopped.value)
        assert (
            msg
            == f"etcd {own_server.url} does not answer (connection refused: nothing listens there)"
        )
        assert "Pool" not in msg and "within" not in msg
    finally:
        own_server.start()
    s.close()


def _node_config(node, url, prefix, networks):
    from dataplane.config import parse_config

    return parse_config(
        {
            "node": node,
            "vtep": {"address": "10.0.0.2/24", "uplink": "upnosuch0"},
            "networks": networks,
            "store": {"kind": "etcd", "endpoints": [url], "prefix": prefix},
        }
    )


def test_check_reads_the_cluster_store_and_writes_nothing(server, prefix):
    """dataplane check against etcd: what the start of the node would refuse
    (a network other nodes use redefined, a gateway that is a pod's address,
    the node's name held by another host's service) found with run's words,
    and not a key written; an etcd that does not answer is said, quickly."""
    from dataplane.startchecks import check_store

    n1 = EtcdStore([server.url], prefix=prefix, node="node1")
    try:
        n1.put_network("net1", 101, "std", SUBNET)
        n1.add_endpoint("a", "std", "net1", "eth0", "dp0", "02:00:00:00:00:01", None, node="node1")
        ip = n1.allocate_ip("net1", SUBNET, None, "a")
        net = {"name": "net1", "vni": 101, "plane": "std", "subnet": SUBNET}
        keys = _raw_keys(n1)
        ok = check_store(_node_config("node2", server.url, prefix, [net]))
        assert (ok.errors, ok.warnings) == ([], []), ok
        assert ok.read == f"etcd {server.url}: 0 pods of node node2"
        bad = check_store(
            _node_config("node2", server.url, prefix, [dict(net, vni=111, gateway=ip)])
        )
        assert len(bad.errors) == 1 and bad.errors[0].startswith(
            "network net1: the cluster has it as VNI 101, plane std, subnet "
        ), bad.errors
        # another node may not move the gateway (the cluster's networks
        # agree); the node whose pods alone use the network may, but not
        # onto a pod's address
        moved = check_store(_node_config("node2", server.url, prefix, [dict(net, gateway=ip)]))
        assert (
            len(moved.errors) == 1
            and (
                f"subnet {SUBNET}, gateway none, used by node1; this node's config says VNI 101, "
                f"plane std, subnet {SUBNET}, gateway {ip}: make every node's networks agree"
            )
            in moved.errors[0]
        ), moved.errors
        gw = check_store(_node_config("node1", server.url, prefix, [dict(net, gateway=ip)]))
        assert gw.errors == [
            f"network net1: the gateway {ip} is the address of pod a; a pod keeps its address: "
            "give the network another gateway, or delete the pod first ('dataplane pod del a')"
        ], gw.errors
        n1.claim_node("node2", "10.0.0.9", "otherhost")
        held = check_store(_node_config("node2", server.url, prefix, [net]))
        assert len(held.errors) == 1 and held.errors[0].startswith(
            "node: node2 is the name of a running node service (VTEP 10.0.0.9, host otherhost"
        ), held.errors
        assert _raw_keys(n1) == sorted(keys + ["nodes/node2"])  # n1's claim only
    finally:
        _wipe(n1)
        n1.close()
    t0 = time.monotonic()
    down = check_store(_node_config("node2", f"http://127.0.0.1:{_free_port()}", prefix, [net]))
    took = time.monotonic() - t0
    assert down.errors == [] and down.read is None
    assert len(down.warnings) == 1 and "does not answer" in down.warnings[0], down.warnings
    assert (
        "the config was not checked against its networks, pods and addresses" in (down.warnings[0])
    )
    print(f"check against a closed etcd port: {took:.2f} s")


def test_remove_node_deletes_only_while_the_node_is_stopped_and_only_its_records(server, prefix):
    """``node remove`` checks that the node is not running, lists its pods,
    then deletes them one transaction each: each transaction checks again.
    A service that claims the name after the list was read (here, between
    the list and the delete) keeps its pods; a pod of that name added on
    another node meanwhile is not taken."""
    s = EtcdStore([server.url], prefix=prefix)
    other = EtcdStore([server.url], prefix=prefix)  # the node's own service
    try:
        s.put_network("net1", 101, "std", SUBNET)
        for pod, node in (("a", "old"), ("b", "old")):
            s.put_pod(pod, "/x", {"pod_type": "it"}, node=node, state="ready")
        s.put_attachment("a", {"container_id": "c1", "ifname": "eth0"}, node="old")
        # the list is read, then the service starts: the deletes refuse
        other.claim_node("old", "10.0.0.9", "host9")
        with pytest.raises(ConfigError, match="node old is running"):
            s._delete_pod("a", stopped_node="old")
        with pytest.raises(ConfigError, match="node old is running"):
            s._delete_attachment("a", stopped_node="old")
        assert s.pod("a") is not None and [a["name"] for a in s.attachments()] == ["a"]
        other.close()  # its claim revoked: stopped
        other = None
        # b deleted and added again on another node since the list was read
        s.delete_pod("b")
        s.put_pod("b", "/y", {"pod_type": "it"}, node="new", state="ready")
        assert s._delete_pod("b", stopped_node="old") is False
        assert s.pod("b")["node"] == "new"
        assert s.remove_node("old") == {"pods": 1, "attachments": 1}
        assert s.pod("a") is None and s.attachments() == []
    finally:
        if other is not None:
            other.close()
        _wipe(s)
        s.close()
