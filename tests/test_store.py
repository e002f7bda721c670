"""The state stores: tables, transactions, IPAM, MACs, reopen.

The behaviour tests run against both stores: the embedded SQLite one and the
etcd one (on a test etcd, see tests/etcdhost.py; skipped without
/usr/bin/etcd). The file-level tests are SQLite's own; tests/test_store_etcd.py
has etcd's (races between processes, watches, restarts).
"""

import base64
import ipaddress
import os
import re
import shutil
import sqlite3
import stat
import threading
import uuid

import pytest
from etcdhost import have_etcd, shared_server

from dataplane.errors import (
    AlreadyExists,
    Busy,
    ConfigError,
    DataplaneError,
    NotFound,
    ResourceError,
)
from dataplane.store import SqliteStore

SPEC = {
    "pod_type": "ct",
    "network_plane": ["std", "media"],
    "networks": {"std": "net1", "media": "net3"},
}
NO_ETCD = "etcd-server is not installed (/usr/bin/etcd; apt-get install etcd-server)"


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "state" / "sub" / "state.db")


@pytest.fixture(params=["sqlite", "etcd"])
def opener(request, path):
    """A function that opens the store under test, again and again: the same
    SQLite file, or the same etcd key prefix (a fresh one per test)."""
    opened = []
    if request.param == "sqlite":

        def open_store():
            opened.append(SqliteStore(path))
            return opened[-1]
    else:
        if not have_etcd():
            pytest.skip(NO_ETCD)
        from dataplane.store.etcd import EtcdStore

        url = shared_server(request.config).url
        prefix = f"/dptest/{uuid.uuid4().hex}"

        def open_store():
            opened.append(EtcdStore([url], prefix=prefix))
            return opened[-1]

    yield open_store
    for s in opened:
        s.close()
    if request.param == "etcd":  # leave nothing behind
        with EtcdStore([url], prefix=prefix) as s:
            s.client.post(
                "kv/deleterange", {"key": _b64(prefix + "/"), "range_end": _b64(prefix + "0")}
            )


def _b64(text):
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def store(opener):
    return opener()


@pytest.fixture
def sqlite_store(path):
    s = SqliteStore(path)
    yield s
    s.close()


def test_file_dir_and_wal(path, sqlite_store):
    d = os.path.dirname(path)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"networks", "pods", "endpoints", "allocations"} <= tables
    db.close()


def test_not_a_database(tmp_path):
    p = tmp_path / "junk.db"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match=r"junk\.db: not a usable SQLite state file"):
        SqliteStore(str(p))


def test_damage_past_what_the_open_read_is_named_not_raised_raw(tmp_path):
    """A state file whose pages past those read at open are damaged: a read
    or a write says which file and what, as a DataplaneError (the CLI's
    message, the API's error), never SQLite's own exception."""
    p = tmp_path / "state.db"
    s = SqliteStore(str(p))
    for i in range(300):  # pods' rows over many pages
        s.put_pod(f"pod{i:03d}", f"/var/run/netns/x{i}", {"pod_type": "it", "pad": "x" * 200})
    s.close()
    db = sqlite3.connect(p)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(p.read_bytes())
    page = 4096
    assert len(data) > 8 * page
    for off in range(4 * page, len(data), page):  # the pods' pages, not the schema's
        data[off : off + 64] = b"\xff" * 64
    p.write_bytes(bytes(data))
    s = SqliteStore(str(p))  # the schema's page reads well
    try:
        with pytest.raises(DataplaneError, match=r"state\.db: not a readable SQLite state file"):
            s.pods()
        with pytest.raises(DataplaneError, match=r"state\.db: not a readable SQLite state file"):
            s.put_pod("new", "/var/run/netns/new", {"pod_type": "it"})
    finally:
        s.close()


def test_a_state_file_removed_is_written_back_and_one_replaced_refuses(tmp_path):
    """The file removed under an open store (its directory too): the next
    change writes it back from the open copy and goes into it; a file put
    in its place instead is not written into: changes refused, naming it."""
    d = tmp_path / "st"
    s = SqliteStore(str(d / "state.db"))
    try:
        s.put_pod("a", "/var/run/netns/a", {"pod_type": "it"})
        shutil.rmtree(d)
        s.put_pod("b", "/var/run/netns/b", {"pod_type": "it"})  # written back first
        assert (d / "state.db").exists() and not (d / "state.db.restore").exists()
        assert s.keep_file() is None  # the file at the path is the store's again
        other = SqliteStore(str(d / "state.db"), read_only=True)
        assert sorted(p["name"] for p in other.pods()) == ["a", "b"]
        other.close()
        (d / "new.db").write_bytes(b"")
        os.replace(d / "new.db", d / "state.db")  # another file in its place
        with pytest.raises(DataplaneError, match="not the file this service opened"):
            s.put_pod("c", "/var/run/netns/c", {"pod_type": "it"})
        assert sorted(p["name"] for p in s.pods()) == ["a", "b"]  # reads go on
    finally:
        s.close()


def test_a_file_another_program_holds_locked_is_refused_at_open_saying_so(tmp_path):
    p = tmp_path / "state.db"
    SqliteStore(str(p)).close()
    holder = sqlite3.connect(p, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(DataplaneError) as e:
            SqliteStore(str(p), timeout=0.2)
        assert str(e.value) == (
            f"store {p}: cannot be opened for writing (database is locked): another program "
            "holds its write lock"
        ), e.value
    finally:
        holder.close()


def test_networks(store):
    store.put_network("net1", 100, "std", "192.168.10.0/24", "192.168.10.1", 1450)
    store.put_network("net3", 300, "media", "192.168.30.0/24")
    assert [n["name"] for n in store.networks()] == ["net1", "net3"]
    n = store.network("net1")
    assert (n["vni"], n["plane"], n["subnet"], n["gateway"], n["mtu"]) == (
        100,
        "std",
        "192.168.10.0/24",
        "192.168.10.1",
        1450,
    )
    store.put_network("net1", 100, "std", "192.168.10.0/24", "192.168.10.254", 1400)
    assert store.network("net1")["gateway"] == "192.168.10.254"
    with pytest.raises(ConfigError, match=r"network net2: VNI 100 is used by network net1"):
        store.put_network("net2", 100, "control", "192.168.20.0/24")
    with pytest.raises(ConfigError, match=r"vni 0 out of range"):
        store.put_network("net2", 0, "control", "192.168.20.0/24")
    store.allocate_ip("net1", "192.168.10.0/24", "192.168.10.1", "p1")
    with pytest.raises(Busy, match=r"would leave allocated addresses outside"):
        store.put_network("net1", 100, "std", "192.168.99.0/24")
    with pytest.raises(Busy, match=r"^network net1 is in use by pod p1: delete them first"):
        store.delete_network("net1")
    assert store.delete_network("net3") is True
    assert store.delete_network("net3") is False


def test_pod_lifecycle(store):
    store.put_pod("p1", "/var/run/netns/p1", SPEC)
    p = store.pod("p1")
    assert p["netns"] == "/var/run/netns/p1" and p["spec"] == SPEC
    assert p["state"] == "pending" and p["created"] > 0
    with pytest.raises(AlreadyExists, match="pod p1 exists already"):
        store.put_pod("p1", "/x", SPEC)
    store.set_pod_state("p1", "ready")
    assert store.pod("p1")["state"] == "ready"
    with pytest.raises(ConfigError, match=r"state: 'done' is not one of"):
        store.set_pod_state("p1", "done")
    with pytest.raises(NotFound):
        store.set_pod_state("p9", "ready")
    store.put_pod("p2", "/proc/1/ns/net", {"pod_type": "it"})
    assert [p["name"] for p in store.pods()] == ["p1", "p2"]
    assert [p["name"] for p in store.pods(state="pending")] == ["p2"]
    assert store.pod("nope") is None


def test_endpoints_and_delete_pod(store):
    store.put_pod("p1", "/var/run/netns/p1", SPEC)
    store.put_pod("p2", "/var/run/netns/p2", SPEC)
    for pod in ("p1", "p2"):
        for plane, net, subnet in (
            ("std", "net1", "192.168.10.0/24"),
            ("media", "net3", "192.168.30.0/24"),
        ):
            ip = store.allocate_ip(net, subnet, None, pod)
            mac = store.allocate_mac(pod, plane)
            store.add_endpoint(
                pod,
                plane,
                net,
                "eth0" if plane == "std" else plane,
                f"h-{pod}-{plane}",
                mac,
                ip,
                node="node1",
                vtep="10.0.0.1",
            )
    assert len(store.endpoints()) == 4
    assert {e["plane"] for e in store.endpoints(pod="p1")} == {"std", "media"}
    assert {e["pod"] for e in store.endpoints(network="net3")} == {"p1", "p2"}
    assert store.endpoints(state="ready") == []
    store.set_endpoint_state("p1", "std", "ready")
    [e] = store.endpoints(state="ready")
    assert (e["pod"], e["plane"], e["host_ifname"], e["node"], e["vtep"]) == (
        "p1",
        "std",
        "h-p1-std",
        "node1",
        "10.0.0.1",
    )
    # re-recording the same endpoint updates it (a retried pod add)
    store.add_endpoint("p1", "std", "net1", "eth0", "h-p1-std", e["mac"], e["ip"], state="ready")
    assert len(store.endpoints(pod="p1")) == 2
    with pytest.raises(Busy, match=r"host interface h-p1-std belongs to pod p1"):
        store.add_endpoint("p2", "std", "net1", "eth0", "h-p1-std", "02:00:00:00:00:01", None)
    # remote endpoints (another node's pods) have no host interface
    store.add_endpoint(
        "r1",
        "std",
        "net1",
        None,
        None,
        "02:00:00:00:99:01",
        "192.168.10.99",
        node="node2",
        vtep="10.0.0.2",
        state="ready",
    )
    assert store.delete_pod("p1") is True
    assert store.pod("p1") is None
    assert store.endpoints(pod="p1") == []
    assert [a["pod"] for a in store.allocations()] == ["p2", "p2"]
    assert len(store.endpoints()) == 3
    assert store.delete_pod("p1") is False
    assert store.delete_endpoint("r1", "std") is True


def test_allocate_ip_skips_reserved_and_never_repeats(store):
    subnet = "10.1.0.0/29"  # hosts .1 .. .6
    got = [store.allocate_ip("n", subnet, "10.1.0.1", f"p{i}") for i in range(5)]
    assert got == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    with pytest.raises(
        ResourceError,
        match=r"network n: no free address left in "
        r"10\.1\.0\.0/29",
    ):
        store.allocate_ip("n", subnet, "10.1.0.1", "p9")
    # asking again for the same pod gives the address it has
    assert store.allocate_ip("n", subnet, "10.1.0.1", "p2") == "10.1.0.4"
    assert store.release_ips("p2") == 1
    assert store.allocate_ip("n", subnet, "10.1.0.1", "p9") == "10.1.0.4"
    # the same address on another network is another allocation
    assert store.allocate_ip("m", subnet, None, "p0") == "10.1.0.1"


def test_a_freed_address_is_given_again_only_after_the_subnet_went_round(store):
    """Allocation goes on after the last address handed out, so a deleted
    pod's address does not go at once to a pod with another name (another
    MAC); at the end of the subnet it goes round to the start."""
    subnet, gw = "10.1.0.0/29", "10.1.0.1"  # hosts .2 .. .6 (.1 the gateway)
    got = [store.allocate_ip("n", subnet, gw, f"p{i}") for i in range(3)]
    assert got == ["10.1.0.2", "10.1.0.3", "10.1.0.4"]
    assert store.release_ips("p1") == 1  # .3 is free
    store.put_pod("p0", "/x", SPEC)
    assert store.delete_pod("p0") is True  # .2 too, with its pod
    assert store.allocate_ip("n", subnet, gw, "q1") == "10.1.0.5"  # not .3
    # a fixed address is taken but does not move the position
    assert store.allocate_ip("n", subnet, gw, "f", fixed="10.1.0.6") == "10.1.0.6"
    # past the end (.6 taken, .7 broadcast): round to the start, the gateway skipped
    assert store.allocate_ip("n", subnet, gw, "q2") == "10.1.0.2"
    assert store.allocate_ip("n", subnet, gw, "q3") == "10.1.0.3"
    # asking again for a pod gives its address and leaves the position alone
    assert store.allocate_ip("n", subnet, gw, "q1") == "10.1.0.5"
    with pytest.raises(ResourceError, match=r"network n: no free address left in 10\.1\.0\.0/29"):
        store.allocate_ip("n", subnet, gw, "q4")
    # full, then one freed: that one, whatever the position
    store.release_ips("q1")
    assert store.allocate_ip("n", subnet, gw, "q4") == "10.1.0.5"
    # each network has its own position
    assert store.allocate_ip("m", subnet, gw, "q1") == "10.1.0.2"
    # the last address handed out, given back, is the last one given again
    store.release_ips("q3")  # .3
    store.release_ips("q4")  # .5, the last handed out
    assert store.allocate_ip("n", subnet, gw, "q5") == "10.1.0.3"  # after .5: .6 f, round
    assert store.allocate_ip("n", subnet, gw, "q6") == "10.1.0.5"


def test_avoided_addresses_are_handed_out_only_when_asked_for(store):
    """``avoid`` (pods' floating addresses) keeps addresses out of dynamic
    allocation; a fixed request still gets one; addresses outside the
    subnet, IPv6 ones and junk in the list change nothing."""
    subnet, gw = "10.2.0.0/29", "10.2.0.1"
    avoid = ["10.2.0.3", "10.2.0.5", "10.9.9.9", "fd00::1"]
    got = [store.allocate_ip("n", subnet, gw, f"p{i}", avoid=avoid) for i in range(3)]
    assert got == ["10.2.0.2", "10.2.0.4", "10.2.0.6"]
    with pytest.raises(ResourceError, match=r"no free address left"):
        store.allocate_ip("n", subnet, gw, "p3", avoid=avoid)
    assert store.allocate_ip("n", subnet, gw, "p3", fixed="10.2.0.3", avoid=avoid) == "10.2.0.3"
    assert store.allocate_ip("n", subnet, gw, "p4") == "10.2.0.5"  # nothing avoided


def test_the_position_survives_reopening_and_is_shared(opener):
    s = opener()
    s.put_network("net1", 100, "std", "192.168.10.0/24", "192.168.10.1", 1450)
    ips = [s.allocate_ip("net1", "192.168.10.0/24", "192.168.10.1", f"p{i}") for i in range(3)]
    assert ips == ["192.168.10.2", "192.168.10.3", "192.168.10.4"]
    s.release_ips("p1")
    s.release_ips("p2")
    s.close()  # a restart
    s = opener()
    assert s.allocate_ip("net1", "192.168.10.0/24", "192.168.10.1", "q1") == "192.168.10.5"
    # another opener (the CLI; another node on etcd) goes on from the same place
    other = opener()
    assert other.allocate_ip("net1", "192.168.10.0/24", "192.168.10.1", "q2") == "192.168.10.6"
    assert s.allocate_ip("net1", "192.168.10.0/24", "192.168.10.1", "q3") == "192.168.10.7"
    # a network deleted and made again starts from the lowest free address
    for p in ("p0", "q1", "q2", "q3"):
        s.release_ips(p)
    assert s.delete_network("net1") is True
    s.put_network("net1", 100, "std", "192.168.10.0/24", "192.168.10.1", 1450)
    assert other.allocate_ip("net1", "192.168.10.0/24", "192.168.10.1", "r1") == "192.168.10.2"


def test_a_position_outside_a_changed_subnet_starts_from_the_lowest(store):
    assert store.allocate_ip("n", "10.5.0.0/24", None, "a") == "10.5.0.1"
    assert store.allocate_ip("n", "10.5.0.0/24", None, "b") == "10.5.0.2"
    store.release_ips("a")
    store.release_ips("b")
    assert store.allocate_ip("n", "10.6.0.0/24", None, "c") == "10.6.0.1"
    assert store.allocate_ip("n", "10.6.0.0/24", None, "d") == "10.6.0.2"


def test_allocate_fixed(store):
    s, gw = "192.168.10.0/24", "192.168.10.1"
    assert store.allocate_ip("net1", s, gw, "p1", fixed="192.168.10.7") == "192.168.10.7"
    with pytest.raises(
        ConfigError,
        match=r"ips: 192\.168\.10\.7 on network net1 is taken "
        r"by pod p1",
    ):
        store.allocate_ip("net1", s, gw, "p2", fixed="192.168.10.7")
    with pytest.raises(
        ConfigError,
        match=r"ips: 192\.168\.11\.7 is outside network net1's "
        r"subnet 192\.168\.10\.0/24",
    ):
        store.allocate_ip("net1", s, gw, "p2", fixed="192.168.11.7")
    with pytest.raises(ConfigError, match=r"ips: 192\.168\.10\.1 is the gateway address"):
        store.allocate_ip("net1", s, gw, "p2", fixed="192.168.10.1")
    with pytest.raises(
        ConfigError,
        match=r"ips: 192\.168\.10\.255 is the network or "
        r"broadcast address",
    ):
        store.allocate_ip("net1", s, gw, "p2", fixed="192.168.10.255")
    with pytest.raises(ConfigError, match=r"ips: 'x' for network net1"):
        store.allocate_ip("net1", s, gw, "p2", fixed="x")
    with pytest.raises(
        ConfigError,
        match=r"pod p1 has address 192\.168\.10\.7 on network "
        r"net1 already, not 192\.168\.10\.8",
    ):
        store.allocate_ip("net1", s, gw, "p1", fixed="192.168.10.8")
    # a dynamic allocation goes round the fixed one
    assert store.allocate_ip("net1", s, gw, "p2") == "192.168.10.2"
    # nothing failed left a row behind
    assert sorted(a["ip"] for a in store.allocations("net1")) == ["192.168.10.2", "192.168.10.7"]


def test_allocate_mac(store):
    m = store.allocate_mac("p1", "std")
    assert m == store.allocate_mac("p1", "std")  # deterministic
    assert m != store.allocate_mac("p1", "media") != store.allocate_mac("p2", "std")
    first = int(m.split(":")[0], 16)
    assert first == 0x02  # local, unicast
    assert len(bytes.fromhex(m.replace(":", ""))) == 6
    # a MAC already recorded for another endpoint is not given again
    store.put_pod("p1", "/x", SPEC)
    store.add_endpoint("other", "std", "net1", "eth0", "h1", store.allocate_mac("p1", "std"), None)
    m2 = store.allocate_mac("p1", "std")
    assert m2 != m and m2.startswith("02:")


def test_state_survives_reopen(opener):
    s = opener()
    s.put_network("net1", 100, "std", "192.168.10.0/24", "192.168.10.1", 1450)
    s.put_pod("p1", "/var/run/netns/p1", SPEC, state="ready")
    ip = s.allocate_ip("net1", "192.168.10.0/24", "192.168.10.1", "p1")
    s.add_endpoint("p1", "std", "net1", "eth0", "dpabc", "02:00:00:00:00:01", ip, state="ready")
    s.set_meta("node", "node1")
    s.close()  # as after a crash: nothing else is flushed
    s = opener()
    assert s.pod("p1")["state"] == "ready"
    assert s.endpoints(pod="p1")[0]["ip"] == ip
    assert s.get_meta("node") == "node1"
    # nothing is handed out twice after a restart
    assert s.allocate_ip("net1", "192.168.10.0/24", "192.168.10.1", "p2") != ip
    s.close()


def test_failed_transaction_leaves_nothing(sqlite_store):
    store = sqlite_store
    with pytest.raises(RuntimeError):
        with store._tx() as db:
            db.execute("INSERT INTO allocations VALUES ('n', '10.0.0.9', 'p', 0)")
            raise RuntimeError("boom")
    assert store.allocations() == []


def test_threads_never_share_an_address(store):
    got, errors = [], []

    def worker(i):
        try:
            for j in range(20):
                got.append(store.allocate_ip("n", "10.2.0.0/24", None, f"p{i}-{j}"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(got) == 160 and len(set(got)) == 160
    assert all(ipaddress.IPv4Address(a) in ipaddress.IPv4Network("10.2.0.0/24") for a in got)


def test_two_openers_share_the_state(opener, store):
    other = opener()  # as the CLI and the service would
    store.allocate_ip("n", "10.3.0.0/24", None, "a")
    assert other.allocate_ip("n", "10.3.0.0/24", None, "b") == "10.3.0.2"
    other.put_pod("p1", "/x", SPEC)
    with pytest.raises(AlreadyExists):
        store.put_pod("p1", "/y", SPEC)


def test_the_store_identity_is_made_once_and_shared(opener, store, tmp_path):
    """Every opener of one store (every node of a cluster) gets one
    identity, made by whichever asked first, kept across reopening; a store
    made anew has another (pod veths are marked with it)."""
    other = opener()
    ids = {other.identity(), store.identity(), opener().identity()}
    assert len(ids) == 1 and re.fullmatch(r"[0-9a-f]{32}", ids.pop())
    with SqliteStore(str(tmp_path / "another.db")) as fresh:
        assert fresh.identity() != store.identity()


def test_pods_and_endpoints_of_a_node(store):
    store.put_pod("a", "/x", SPEC, node="node1")
    store.put_pod("b", "/x", SPEC, node="node2", state="ready")
    store.put_pod("c", "/x", SPEC)
    assert store.pod("a")["node"] == "node1" and store.pod("c")["node"] is None
    assert [p["name"] for p in store.pods(node="node1")] == ["a"]
    assert [p["name"] for p in store.pods(node="node2", state="ready")] == ["b"]
    assert store.pods(node="node2", state="pending") == []
    assert [p["name"] for p in store.pods()] == ["a", "b", "c"]
    store.add_endpoint(
        "a",
        "std",
        "net1",
        "eth0",
        "ha",
        "02:00:00:00:00:0a",
        "10.0.0.2",
        node="node1",
        vtep="10.1.0.1",
    )
    store.add_endpoint(
        "b",
        "std",
        "net1",
        "eth0",
        "hb",
        "02:00:00:00:00:0b",
        "10.0.0.3",
        node="node2",
        vtep="10.1.0.2",
    )
    assert [e["pod"] for e in store.endpoints(node="node2")] == ["b"]
    assert [e["pod"] for e in store.endpoints(node="node1", network="net1")] == ["a"]
    assert set(store.endpoints()[0]) == {
        "pod",
        "plane",
        "network",
        "ifname",
        "host_ifname",
        "mac",
        "ip",
        "node",
        "vtep",
        "state",
        "created",
    }


def test_a_file_without_positions_starts_from_the_lowest_free(path):
    """A state file written before the position was kept (no last_ip table)
    allocates the lowest free address first, then goes on after it."""
    s = SqliteStore(path)
    for i in range(4):
        s.allocate_ip("n", "10.4.0.0/24", None, f"p{i}")  # .1 .. .4
    s.release_ips("p1")
    s.release_ips("p3")
    s.close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE last_ip")
    db.commit()
    db.close()
    s = SqliteStore(path)
    assert s.allocate_ip("n", "10.4.0.0/24", None, "q1") == "10.4.0.2"  # the lowest free
    assert s.allocate_ip("n", "10.4.0.0/24", None, "q2") == "10.4.0.4"  # then after it
    assert s.allocate_ip("n", "10.4.0.0/24", None, "q3") == "10.4.0.5"
    s.close()


def test_old_file_gets_the_node_netns_id_and_subnet6_columns(path):
    os.makedirs(os.path.dirname(path))
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE pods (name TEXT PRIMARY KEY, netns TEXT NOT NULL, spec TEXT NOT NULL,
                           state TEXT NOT NULL DEFAULT 'pending', created REAL NOT NULL);
        INSERT INTO pods VALUES ('old', '/x', '{}', 'ready', 1.0);
        CREATE TABLE networks (name TEXT PRIMARY KEY, vni INTEGER NOT NULL UNIQUE,
                               plane TEXT NOT NULL, subnet TEXT NOT NULL, gateway TEXT,
                               mtu INTEGER, updated REAL NOT NULL);
        INSERT INTO networks VALUES ('n7', 7, 'std', '192.168.7.0/24', NULL, NULL, 1.0);
    """)
    db.close()
    r = SqliteStore(path, read_only=True)  # dataplane check: the file is not changed
    assert (r.pod("old")["node"], r.pod("old")["netns_id"]) == (None, None)
    r.put_network("n7", 7, "std", "192.168.7.0/24", subnet6="fd00:7::/64", check_only=True)
    r.close()
    s = SqliteStore(path)
    assert s.pod("old") == {
        "name": "old",
        "netns": "/x",
        "spec": {},
        "state": "ready",
        "created": 1.0,
        "node": None,
        "netns_id": None,
    }
    assert s.network("n7")["subnet6"] is None  # the column added
    s.put_network("n7", 7, "std", "192.168.7.0/24", subnet6="fd00:7::/64")
    assert s.network("n7")["subnet6"] == "fd00:7::/64"
    s.put_pod("new", "/y", {}, node="node1", netns_id="b/4/1")
    assert [p["name"] for p in s.pods(node="node1")] == ["new"]
    assert s.pod("new")["netns_id"] == "b/4/1"
    s.close()
    SqliteStore(path).close()  # opened again: nothing more to add


def test_a_dual_stack_networks_subnet6_is_kept_and_not_moved_under_its_pods(store):
    """subnet6 is in the network's record; a pod's IPv6 address is its IPv4
    one's host part there, counted from the IPv4 subnet's first address: so
    while a pod holds an address on the network, subnet6 is not added,
    moved or dropped, nor the IPv4 subnet's first address moved."""
    net4 = "192.168.10.0/24"
    store.put_network("net1", 100, "std", net4, subnet6="fd00:10::/64")
    assert store.network("net1")["subnet6"] == "fd00:10::/64"
    store.allocate_ip("net1", net4, None, "p1")
    for new in ("fd00:11::/64", None):
        for check_only in (True, False):
            with pytest.raises(Busy) as e:
                store.put_network("net1", 100, "std", net4, subnet6=new, check_only=check_only)
            assert str(e.value) == (
                f"network net1: subnet6 fd00:10::/64 would become {new or 'none'} with 1 pod on "
                "it (p1): their IPv6 addresses would change under them; keep subnet6, or "
                "delete the pods first"
            )
    with pytest.raises(Busy) as e:  # 192.168.10.2 would be fd00:10::202
        store.put_network("net1", 100, "std", "192.168.8.0/22", subnet6="fd00:10::/64")
    assert str(e.value) == (
        "network net1: subnet 192.168.10.0/24 would become 192.168.8.0/22, whose first address "
        "the IPv6 addresses in fd00:10::/64 are counted from, with 1 pod on it (p1): their "
        "IPv6 addresses would change under them; keep the subnet's first address, or delete "
        "the pods first"
    )
    store.put_network("net1", 100, "std", "192.168.10.0/23", subnet6="fd00:10::/64")  # grown
    assert store.network("net1")["subnet6"] == "fd00:10::/64"
    store.release_ips("p1")
    store.put_network("net1", 100, "std", net4, subnet6="fd00:11::/64")
    assert store.network("net1")["subnet6"] == "fd00:11::/64"
    # a network of IPv4 only with pods on it: subnet6 is not added under them
    store.put_network("net2", 200, "std", "192.168.20.0/24")
    store.allocate_ip("net2", "192.168.20.0/24", None, "p2")
    with pytest.raises(Busy, match=r"^network net2: subnet6 none would become fd00:20::/64"):
        store.put_network("net2", 200, "std", "192.168.20.0/24", subnet6="fd00:20::/64")


def test_put_network_check_only_refuses_alike_and_writes_nothing(store):
    """``check_only`` (dataplane check) refuses what put_network refuses, with
    the same words, and writes nothing: not a new network, not a change."""
    assert store.put_network("net1", 100, "std", "192.168.10.0/24", check_only=True) is None
    assert store.network("net1") is None
    store.put_network("net1", 100, "std", "192.168.10.0/24", "192.168.10.1")
    ip = store.allocate_ip("net1", "192.168.10.0/24", "192.168.10.1", "p1")
    cases = [
        (("net2", 100, "control", "192.168.20.0/24"), ConfigError, r"VNI 100 is used by"),
        (("net1", 100, "std", "192.168.99.0/24"), Busy, r"would leave allocated addresses"),
        (("net1", 100, "std", "192.168.10.0/24", ip), ConfigError, rf"the gateway {ip} is"),
    ]
    for args, kind, words in cases:
        with pytest.raises(kind, match=words) as checked:
            store.put_network(*args, check_only=True)
        with pytest.raises(kind) as put:
            store.put_network(*args)
        assert str(checked.value) == str(put.value)
    store.put_network("net1", 100, "std", "192.168.10.0/24", "192.168.10.254", check_only=True)
    assert store.network("net1")["gateway"] == "192.168.10.1"  # not written
    assert store.network("net2") is None


def test_a_gateway_or_subnet_that_makes_a_pods_address_reserved_is_refused(store):
    """A pod keeps its address: a new gateway, or a subnet whose network or
    broadcast address it is, is refused naming the pod; a gateway the
    network had already (from before this check) is kept."""
    store.put_network("net1", 100, "std", "192.168.10.0/24")
    ips = {p: store.allocate_ip("net1", "192.168.10.0/24", None, p) for p in ("p1", "p2")}
    with pytest.raises(ConfigError) as e:
        store.put_network("net1", 100, "std", "192.168.10.0/24", ips["p2"])
    assert str(e.value) == (
        f"network net1: the gateway {ips['p2']} is the address of pod p2; a pod keeps its "
        "address: give the network another gateway, or delete the pod first "
        "('dataplane pod del p2')"
    )
    assert store.network("net1")["gateway"] is None
    store.put_network("net9", 109, "std", "10.9.0.0/24")
    store.allocate_ip("net9", "10.9.0.0/24", None, "q1", fixed="10.9.0.127")
    with pytest.raises(ConfigError) as e:
        store.put_network("net9", 109, "std", "10.9.0.0/25")
    assert str(e.value) == (
        "network net9: the broadcast address 10.9.0.127 is the address of pod q1; a pod keeps "
        "its address: give the network another subnet, or delete the pod first "
        "('dataplane pod del q1')"
    )
    assert store.network("net9")["subnet"] == "10.9.0.0/24"
    # a gateway no pod holds is taken, and kept
    store.put_network("net1", 100, "std", "192.168.10.0/24", "192.168.10.9")
    store.put_network("net1", 100, "std", "192.168.10.0/24", "192.168.10.9")


def test_a_read_only_sqlite_store_changes_nothing(path, tmp_path):
    """Opened read only (dataplane check): no file made where there is none,
    reads while a writer has the file open, and after the writer closed it
    no side file left and not a byte changed; writes are refused."""
    with pytest.raises(NotFound, match=r"no such file"):
        SqliteStore(path, read_only=True)
    assert not os.path.exists(path)
    w = SqliteStore(path)
    w.put_network("net1", 100, "std", "192.168.10.0/24")
    r = SqliteStore(path, read_only=True)  # while the writer has it open (WAL)
    w.allocate_ip("net1", "192.168.10.0/24", None, "p1")
    assert [a["pod"] for a in r.allocations("net1")] == ["p1"]
    with pytest.raises(DataplaneError, match="opened read only, nothing is written"):
        r.put_network("net2", 200, "std", "192.168.20.0/24")
    r.close()
    w.close()
    before = {
        f: open(os.path.join(os.path.dirname(path), f), "rb").read()
        for f in os.listdir(os.path.dirname(path))
    }
    r = SqliteStore(path, read_only=True)
    assert [n["name"] for n in r.networks()] == ["net1"]
    r.put_network("net1", 100, "std", "192.168.10.0/24", check_only=True)
    with pytest.raises(Busy):
        r.put_network("net1", 100, "std", "192.168.99.0/24", check_only=True)
    r.close()
    after = {
        f: open(os.path.join(os.path.dirname(path), f), "rb").read()
        for f in os.listdir(os.path.dirname(path))
    }
    assert after == before
    # an empty file reads as an empty store
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    r = SqliteStore(str(empty), read_only=True)
    assert r.pods() == [] and r.networks() == []
    r.close()
    assert empty.read_bytes() == b""


def test_sqlite_remove_node_forgets_an_old_name_whole_or_not_at_all(sqlite_store, path):
    """A node's own SQLite store: ``remove_node`` takes the pods (endpoints,
    addresses) and CNI attachments of an old node name in one transaction;
    the name its service claimed and a name with no records are refused by
    name, the file unchanged; another process sees the result."""
    s = sqlite_store
    s.put_network("net1", 101, "std", "10.0.0.0/24")
    for pod, node in (("a", "old"), ("b", "old"), ("c", "new"), ("d", None)):
        s.put_pod(pod, "/x", SPEC, node=node, state="ready")
        ip = s.allocate_ip("net1", "10.0.0.0/24", None, pod)
        s.add_endpoint(pod, "std", "net1", "eth0", f"h{pod}", s.allocate_mac(pod, "std"), ip)
    s.put_attachment("a", {"container_id": "c1", "ifname": "eth0"}, node="old")
    s.put_attachment("c", {"container_id": "c2", "ifname": "eth0"}, node="new")
    s.claim_node("new", "10.1.0.1", "host1")

    def rows():
        db = sqlite3.connect(path)
        try:
            return [
                sorted(map(repr, db.execute(f"SELECT * FROM {t}")))
                for t in ("pods", "endpoints", "allocations", "attachments")
            ]
        finally:
            db.close()

    before = rows()
    with pytest.raises(
        ConfigError, match=f"node new is the node of the service running on the store {path}"
    ):
        s.remove_node("new")
    with pytest.raises(NotFound, match=f"node nosuch: the store {path} has no pod or CNI"):
        s.remove_node("nosuch")
    assert rows() == before
    assert s.remove_node("old") == {"pods": 2, "attachments": 1}
    other = SqliteStore(path)  # what another process reads
    try:
        assert [p["name"] for p in other.pods()] == ["c", "d"]
        assert [e["pod"] for e in other.endpoints()] == ["c", "d"]
        assert sorted(a["pod"] for a in other.allocations()) == ["c", "d"]
        assert [a["name"] for a in other.attachments()] == ["c"]
    finally:
        other.close()
    with pytest.raises(NotFound, match="node old: "):
        s.remove_node("old")
