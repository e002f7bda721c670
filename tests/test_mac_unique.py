"""No MAC given twice: on one node (SQLite store) and across two node services
sharing a real etcd. Requested MACs are checked against every endpoint's MAC,
derived or requested, and must be unicast, not all-zero and not reserved;
a deleted pod's MACs are free again."""

import json
import os
import uuid

import pytest

from dataplane.api import APIError
from dataplane.store.etcd import EtcdStore
from tests import test_service
from tests.etcdhost import shared_server
from tests.test_service import CT_SPEC, IT_SPEC, Node, sh

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

M = "02:00:00:aa:00:01"


def with_mac(spec, mac, plane="std"):
    return {**spec, "macs": {plane: mac}}


def mac_of(info, plane="std"):
    return next(p["mac"] for p in info["planes"] if p["plane"] == plane)


def add_pod(node, name, spec):
    """``node.pod``, in a namespace made on the first try for ``name`` only."""
    ns = f"dpt{node.tag}{name}"
    if ns not in node.netns:
        sh("ip", "netns", "add", ns)
        node.netns.append(ns)
    info = node.api(
        "POST", "/v1/pods", {"name": name, "netns": f"/var/run/netns/{ns}", "spec": spec}
    )
    node.host_links |= {p["host_ifname"] for p in info["planes"]}
    return dict(info, ns=ns)


def refused(node, name, spec, words, status=400):
    """Pod ``name`` refused with ``words``; the node's pods as before."""
    before = node.api("GET", "/v1/pods")
    with pytest.raises(APIError) as e:
        add_pod(node, name, spec)
    assert e.value.status == status and words in str(e.value), str(e.value)
    assert node.api("GET", "/v1/pods") == before
    return str(e.value)


def link_mac(info, ifname="eth0"):
    out = sh("ip", "-n", info["ns"], "-o", "link", "show", ifname).stdout
    return out.split("link/ether ")[1].split()[0]


node = test_service.node  # one node service, as the service tests start it


# ---------------------------------------------------------------- one node
# pod names carry the node's tag: host interface names derive from them, and
# other services on this machine may run pods called "a" at the same time
def test_requested_mac_used_once_on_a_node(node):
    a, b = f"a{node.tag}", f"b{node.tag}"
    pa = add_pod(node, a, with_mac(IT_SPEC, M))
    assert mac_of(pa) == M and link_mac(pa) == M
    refused(node, b, with_mac(IT_SPEC, M), f"macs.std: {M} is the MAC of pod {a} plane std")
    # another plane of another pod: the same
    refused(node, b, with_mac(CT_SPEC, M, "control"), f"macs.control: {M} is the MAC of pod {a}")
    # upper case is the same MAC
    refused(node, b, with_mac(IT_SPEC, M.upper()), f"is the MAC of pod {a}")


def test_derived_mac_cannot_be_requested(node):
    c, d = f"c{node.tag}", f"d{node.tag}"
    g = mac_of(add_pod(node, c, CT_SPEC), "control")
    refused(node, d, with_mac(IT_SPEC, g), f"{g} is the MAC of pod {c} plane control")


def test_derived_mac_skips_requested_ones(node):
    # pod e's std MAC is derived from its name: ask for it under another pod
    # first; e then gets another one
    from dataplane.store.common import derive_mac

    e, f = f"e{node.tag}", f"f{node.tag}"
    first = derive_mac(e, "std", 0)
    pf = add_pod(node, f, with_mac(IT_SPEC, first))
    pe = add_pod(node, e, IT_SPEC)
    assert mac_of(pf) == first and mac_of(pe) != first


def test_deleted_pods_mac_is_free_again(node):
    a, b = f"a{node.tag}", f"b{node.tag}"
    add_pod(node, a, with_mac(IT_SPEC, M))
    node.cli("pod", "del", a)
    pb = add_pod(node, b, with_mac(IT_SPEC, M))
    assert mac_of(pb) == M and link_mac(pb) == M


@pytest.mark.parametrize(
    "mac, words",
    [
        ("01:80:c2:00:00:0e", "multicast/broadcast"),  # LLDP: a bridge group address
        ("01:00:5e:00:00:01", "multicast/broadcast"),
        ("33:33:00:00:00:01", "multicast/broadcast"),
        ("ff:ff:ff:ff:ff:ff", "multicast/broadcast"),
        ("00:00:00:00:00:00", "all-zero"),
        ("00:00:5e:00:01:07", "reserved: 00:00:5e:xx:xx:xx"),  # VRRP virtual router
        ("00:00:5e:00:53:01", "reserved"),  # documentation
        ("02:00:00:00:00", "not a MAC address"),
    ],
)
def test_reserved_or_group_mac_refused(node, mac, words):
    assert refused(node, "x", with_mac(IT_SPEC, mac), words).startswith("macs.std: ")


# ------------------------------------------------------- two nodes, one etcd
@pytest.fixture
def cluster(tmp_path, request):
    srv = shared_server(request.config)
    prefix = f"/dptest/{uuid.uuid4().hex}"
    store = f"store: {{kind: etcd, endpoints: ['{srv.url}'], prefix: {prefix}}}"
    nodes = []
    try:
        for i in (1, 2):
            (tmp_path / f"n{i}").mkdir()
            n = Node(tmp_path / f"n{i}", uuid.uuid4().hex[:5], extra=store)
            nodes.append(n)
            n.cfg.write_text(n.cfg.read_text().replace("10.99.0.1/24", f"10.99.0.{i}/24"))
            n.start()
        es = EtcdStore([srv.url], prefix=prefix)
        yield nodes[0], nodes[1], es
        es.close()
    finally:
        for n in nodes:
            n.cleanup()
        with EtcdStore([srv.url], prefix=prefix) as es:
            for p in es.pods():
                es.delete_pod(p["name"])


def test_mac_unique_across_the_cluster(cluster):
    n1, n2, es = cluster
    a, b, c, d, e = (f"{x}{n1.tag}" for x in "abcde")
    pa = add_pod(n1, a, with_mac(IT_SPEC, M))
    assert mac_of(pa) == M
    assert es.client.get(es.layout.key("macs", M)) == {"pod": a, "plane": "std"}
    # requested on the other node: refused, nothing recorded for it
    refused(n2, b, with_mac(IT_SPEC, M), f"{M} is the MAC of pod {a} plane std")
    assert es.pod(b) is None
    # a MAC derived on one node cannot be requested on the other
    g = mac_of(add_pod(n1, c, CT_SPEC), "control")
    refused(n2, d, with_mac(CT_SPEC, g), f"{g} is the MAC of pod {c} plane control")
    # released with the pod: the other node may take it now
    n1.cli("pod", "del", a)
    assert es.client.get(es.layout.key("macs", M)) is None
    pb = add_pod(n2, b, with_mac(IT_SPEC, M))
    assert mac_of(pb) == M and link_mac(pb) == M
    assert es.client.get(es.layout.key("macs", M)) == {"pod": b, "plane": "std"}
    # and the first node now refuses it
    refused(n1, e, with_mac(IT_SPEC, M), f"is the MAC of pod {b} plane std")
    assert {p["name"] for p in es.pods()} == {b, c}
    assert json.dumps(es.pod(b)["spec"]["macs"]) == json.dumps({"std": M})


# ------------------------------------------------------------ the stores alone
@pytest.fixture(params=["sqlite", "etcd"])
def store(request, tmp_path):
    from dataplane.store import SqliteStore

    if request.param == "sqlite":
        s = SqliteStore(str(tmp_path / "s.db"))
    else:
        srv = shared_server(request.config)
        s = EtcdStore([srv.url], prefix=f"/dptest/{uuid.uuid4().hex}")
    yield s
    for p in s.pods():
        s.delete_pod(p["name"])
    s.close()


def _endpoint(store, pod, plane, mac):
    store.put_pod(pod, "/x", {})
    store.add_endpoint(pod, plane, "net1", "eth0", f"h-{pod}-{plane}", mac, None)


def test_store_reserve_mac(store):
    from dataplane.errors import ConfigError

    assert store.reserve_mac("a", "std", M) == M
    _endpoint(store, "a", "std", M)
    assert store.reserve_mac("a", "std", M) == M  # the pair's own: again
    with pytest.raises(ConfigError, match=rf"^macs\.media: {M} is the MAC of pod a plane std"):
        store.reserve_mac("b", "media", M)
    g = store.allocate_mac("c", "std")
    _endpoint(store, "c", "std", g)
    with pytest.raises(ConfigError, match="is the MAC of pod c plane std"):
        store.reserve_mac("b", "std", g)
    store.delete_pod("a")
    assert store.reserve_mac("b", "media", M) == M


def test_etcd_reserve_mac_race_has_one_winner(request):
    """Eight stores (eight nodes) ask for one MAC at once: one gets it."""
    import threading

    from dataplane.errors import ConfigError

    srv = shared_server(request.config)
    prefix = f"/dptest/{uuid.uuid4().hex}"
    stores = [EtcdStore([srv.url], prefix=prefix) for _ in range(8)]
    won, lost = [], []
    go = threading.Barrier(len(stores))

    def ask(i, s):
        go.wait()
        try:
            won.append(s.reserve_mac(f"p{i}", "std", M))
        except ConfigError:
            lost.append(i)

    threads = [threading.Thread(target=ask, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert len(won) == 1 and len(lost) == len(stores) - 1
        owner = stores[0].client.get(stores[0].layout.key("macs", M))
        assert owner["pod"] not in {f"p{i}" for i in lost}
    finally:
        for s in stores:
            s.close()
