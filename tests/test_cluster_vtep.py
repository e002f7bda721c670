"""One VTEP address, one node: the etcd store refuses a node's claim on its
name while a running service of another name has the same VTEP address
(``dataplane check`` says the same), and a static host whose VTEP is a
node's (running, or named by a stopped node's pods' records). Against a
real etcd (tests/etcdhost.py); the nodes of a running cluster are tested in
tests/test_cluster.py (test_a_second_node_with_a_running_nodes_vtep_starts_nothing).
"""

import os
import threading

import pytest

from dataplane.errors import ConfigError
from tests import test_store_etcd as se
from tests.etcdhost import have_etcd

pytestmark = se.pytestmark
server, prefix = se.server, se.prefix  # test_store_etcd's fixtures, as they are
SUBNET = se.SUBNET

if have_etcd():
    from dataplane.store.etcd import EtcdStore


@pytest.fixture
def stores(server, prefix):
    """EtcdStore instances of the prefix (each a node service's, or a CLI's),
    closed (their claims given back) and the prefix wiped at the end."""
    made = []

    def new():
        s = EtcdStore([server.url], prefix=prefix)
        made.append(s)
        return s

    yield new
    for s in made:
        s.close()
    wipe = EtcdStore([server.url], prefix=prefix)
    wipe.client.atomic(lambda tx: tx.delete(prefix + "/", prefix=True))
    wipe.close()


def _config(node, address, url, prefix):
    from dataplane.config import parse_config

    return parse_config(
        {
            "node": node,
            "vtep": {"address": address, "uplink": "upnosuch0"},
            "networks": [{"name": "net1", "vni": 101, "plane": "std", "subnet": SUBNET}],
            "store": {"kind": "etcd", "endpoints": [url], "prefix": prefix},
        }
    )


def _claimed(s):
    return sorted((c["node"], c["vtep"]) for c in s.node_claims())


def test_a_node_is_refused_a_running_nodes_vtep(server, prefix, stores):
    """node9 with node1's VTEP address: its claim is refused, naming node1,
    and nothing is written; ``dataplane check`` says the same; node1's own
    restart (same name, VTEP and host) and another VTEP are not refused;
    once node1's claim is gone (stopped, or lapsed) node9 may have it."""
    from dataplane.startchecks import check_store

    n1, n9, other = stores(), stores(), stores()
    n1.claim_node("node1", "10.0.0.1", "host1", networks=["net1"])
    want = (
        f"vtep.address: 10.0.0.1 is the VTEP of node node1, running (host host1, pid "
        f"{os.getpid()}): each node needs its own"
    )
    assert want in (n9.claim_problem("node9", "10.0.0.1", "host9") or "")
    with pytest.raises(ConfigError) as e:
        n9.claim_node("node9", "10.0.0.1", "host9", networks=["net1"])
    assert want in str(e.value)
    assert _claimed(other) == [("node1", "10.0.0.1")]  # no claim written
    assert n9._claim is None
    # dataplane check: the same words, nothing written
    report = check_store(_config("node9", "10.0.0.1/24", server.url, prefix))
    assert [x for x in report.errors if want in x], report.errors
    assert _claimed(other) == [("node1", "10.0.0.1")]
    # its own name and VTEP from the same host: a restart, not refused
    assert other.claim_problem("node1", "10.0.0.1", "host1") is None
    assert check_store(_config("node2", "10.0.0.2/24", server.url, prefix)).errors == []
    n2 = stores()
    n2.claim_node("node2", "10.0.0.2", "host2")
    assert _claimed(other) == [("node1", "10.0.0.1"), ("node2", "10.0.0.2")]
    # a claim whose node does not run (its lease revoked: stopped; a crash's
    # lapses the same way, NODE_TTL_S later) blocks nothing
    n1.close()
    assert n9.claim_problem("node9", "10.0.0.1", "host9") is None
    n9.claim_node("node9", "10.0.0.1", "host9")
    assert _claimed(other) == [("node2", "10.0.0.2"), ("node9", "10.0.0.1")]


def test_two_nodes_claiming_one_vtep_at_once_one_wins(prefix, stores):
    """The VTEP is compared in the claim's own transaction: of two services
    claiming the same address under different names at the same moment,
    exactly one holds a claim."""
    for rnd in range(5):
        a, b = stores(), stores()
        barrier = threading.Barrier(2)
        out = {}

        def claim(s, name):
            barrier.wait()
            try:
                s.claim_node(name, "10.0.0.7", f"host-{name}")
                out[name] = None
            except ConfigError as e:
                out[name] = str(e)

        ts = [
            threading.Thread(target=claim, args=(s, f"r{rnd}{x}")) for s, x in ((a, "a"), (b, "b"))
        ]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        held = [c for c in a.node_claims() if c["vtep"] == "10.0.0.7"]
        assert len(held) == 1, (held, out)
        lost = [w for w in out.values() if w is not None]
        assert len(lost) == 1 and "vtep.address: 10.0.0.7 is the VTEP of node" in lost[0], out
        a.close()
        b.close()


def test_a_static_host_is_refused_a_nodes_vtep(prefix, stores):
    """``host add`` with a node's VTEP (a running node's claim, or one a
    stopped node's pods' records name) is refused naming the node, and
    nothing is recorded; static hosts may share a VTEP (one kernel host)."""
    s, n1 = stores(), stores()
    s.put_network("net1", 101, "std", SUBNET)
    n1.claim_node("node1", "10.0.0.1", "host1", networks=["net1"])
    # node3 is stopped: its pod's endpoint still names its VTEP
    s.put_pod("p3", "/x", {"pod_type": "it"}, node="node3", state="ready")
    s.add_endpoint(
        "p3", "std", "net1", "eth0", "dp0", "02:00:00:00:00:03", None, node="node3",
        vtep="10.0.0.3", state="ready",
    )  # fmt: skip
    before = (s.endpoints(), s.allocations())
    for vtep, words in (
        ("10.0.0.1", "vtep 10.0.0.1 is the VTEP of node node1, running (host host1"),
        ("10.0.0.3", "vtep 10.0.0.3 is the VTEP of node node3, not running with it"),
    ):
        with pytest.raises(ConfigError) as e:
            s.put_static_endpoint("vm1", "net1", "02:00:00:0a:00:01", "192.168.10.200", vtep)
        assert words in str(e.value), e.value
        assert (s.endpoints(), s.allocations()) == before  # nothing recorded
    s.put_static_endpoint("vm1", "net1", "02:00:00:0a:00:01", "192.168.10.200", "10.0.0.50")
    s.put_static_endpoint("vm2", "net1", "02:00:00:0a:00:02", "192.168.10.201", "10.0.0.50")
    assert sorted(e["pod"] for e in s.endpoints() if e["vtep"] == "10.0.0.50") == ["vm1", "vm2"]
    # updating a host onto a node's VTEP: refused, the host keeps its own
    with pytest.raises(ConfigError, match="is the VTEP of node node1"):
        s.put_static_endpoint("vm1", "net1", "02:00:00:0a:00:01", "192.168.10.200", "10.0.0.1")
    assert [e["vtep"] for e in s.endpoints(pod="vm1")] == ["10.0.0.50"]


def test_a_node_is_refused_a_static_hosts_vtep(server, prefix, stores):
    """The other way round: a node whose VTEP address is a static host's is
    refused its claim, naming the host, and nothing is written; ``dataplane
    check`` says the same; once the host is removed the node may start."""
    from dataplane.startchecks import check_store

    s = stores()
    s.put_network("net1", 101, "std", SUBNET)
    s.put_static_endpoint("vm1", "net1", "02:00:00:0a:00:01", "192.168.10.200", "10.0.0.50")
    want = "vtep.address: 10.0.0.50 is the VTEP of static host vm1 ('dataplane host list')"
    n5 = stores()
    assert want in (n5.claim_problem("node5", "10.0.0.50", "host5") or "")
    with pytest.raises(ConfigError) as e:
        n5.claim_node("node5", "10.0.0.50", "host5", networks=["net1"])
    assert want in str(e.value)
    assert _claimed(s) == [] and n5._claim is None  # no claim written
    report = check_store(_config("node5", "10.0.0.50/24", server.url, prefix))
    assert [x for x in report.errors if want in x], report.errors
    # another address: not refused
    assert n5.claim_problem("node5", "10.0.0.5", "host5") is None
    s.delete_pod("vm1")  # what 'dataplane host del' does
    assert n5.claim_problem("node5", "10.0.0.50", "host5") is None
    n5.claim_node("node5", "10.0.0.50", "host5", networks=["net1"])
    assert _claimed(s) == [("node5", "10.0.0.50")]
