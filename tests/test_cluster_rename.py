"""A node renamed on etcd: two nodes, one etcd, the namespaced underlay of
tests/test_cluster.py (its Cluster, started with node1 and node2 only).

node2 (pod b) is stopped and started again as node2b on the same host (its
network namespace): b's veths stay there, marked as node2's on this store,
while etcd still records b as node2's. ``dataplane check`` and the start
say so; ``dataplane node remove node2`` sent to node2b forgets b's records
and deletes those veths, and b added again on node2b is reached from node1.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.clusterhost import NetnsEtcd
from tests.etcdhost import have_etcd
from tests.test_cluster import CT, ETCD_IP, ROOT, Cluster, Node, cli, ip_of, nsx, reachable

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, DPDK EAL)"),
    pytest.mark.skipif(not have_etcd(), reason="needs /usr/bin/etcd (Debian: etcd-server)"),
]


class TwoNodes(Cluster):
    """tests/test_cluster.py's cluster with node1 and node2 running (node3's
    namespace is made, its service never started)."""

    def start(self):
        self.etcd = NetnsEtcd(self.ul, ETCD_IP)
        self.etcd.start()
        for n in (1, 2):
            self.nodes[n] = Node(self, n)
        for node in self.nodes.values():
            node.spawn()
        for node in self.nodes.values():
            node.wait_ready()


@pytest.fixture(scope="module")
def two(tmp_path_factory, request):
    cl = TwoNodes(tmp_path_factory.mktemp("rename"))
    failed = request.session.testsfailed
    try:
        cl.build()
        cl.start()
        cl.add_pod(1, "a", CT)
        cl.add_pod(2, "b", CT)
        yield cl
    except BaseException:
        failed = -1
        raise
    finally:
        if request.session.testsfailed != failed:
            for node in cl.nodes.values():
                print(f"--- node{node.n}: {node.logfile} (tail)\n{node.log()[-3000:]}")
        cl.teardown()


def marked_veths(ns, node):
    """The veths of namespace ``ns`` marked as node ``node``'s pod planes."""
    links = json.loads(nsx(ns, "ip", "-j", "link", "show", check=True).stdout)
    return sorted(
        link["ifname"]
        for link in links
        if (link.get("ifalias") or "").startswith(f"dataplane node={node} store=")
    )


def test_a_node_renamed_on_etcd_says_so_and_node_remove_deletes_its_old_veths(two):
    cl = two
    n1, n2 = cl.nodes[1], cl.nodes[2]
    a, b = cl.pods["a"], cl.pods["b"]
    assert reachable(a["ns"], ip_of(b)) is not None
    old = marked_veths(n2.ns, "node2")
    assert len(old) == 2, old  # b's std and control planes
    assert n2.stop() == 0, n2.log()[-3000:]
    n2.cfg.write_text(n2.cfg.read_text().replace("node: node2\n", "node: node2b\n"))
    said = [
        "has pods of node node2 (b), a name no running service holds, with veths on this host",
        "this service runs as node node2b: they are not replayed (was the node renamed?",
        "'dataplane node remove node2'",
    ]
    # check, run on node2's host (its namespace: where b's veths are)
    r = subprocess.run(
        ["ip", "netns", "exec", n2.ns, sys.executable, "-m", "dataplane.cli", "check", "-c",
         str(n2.cfg)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    warn = [ln for ln in out.splitlines() if ln.startswith("warning:") and "node2b" in ln]
    assert len(warn) == 1 and all(s in warn[0] for s in said), out
    assert "0 pods of node node2b" in out, out
    # node1's host has none of node2's veths: its check says nothing of it
    r = subprocess.run(
        ["ip", "netns", "exec", n1.ns, sys.executable, "-m", "dataplane.cli", "check", "-c",
         str(n1.cfg)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0 and "renamed" not in r.stdout + r.stderr, r.stdout + r.stderr
    # the start says it too, as a warning in its log
    before = len(n2.log())
    n2.spawn()
    n2.wait_ready()
    logged = [json.loads(ln) for ln in n2.log()[before:].splitlines() if ln.startswith("{")]
    warned = [e for e in logged if "was the node renamed?" in e.get("msg", "")]
    assert len(warned) == 1 and warned[0]["level"] == "warning", logged[:20]
    assert all(s in warned[0]["msg"] for s in said), warned
    rc, out, err = cli(n2, "node", "list")
    assert rc == 0, err
    rows = {ln.split()[0]: ln for ln in out.splitlines()}
    assert "NOT RUNNING" in rows["node2"] and "1 pods" in rows["node2"], out
    assert "running" in rows["node2b"] and "(this node)" in rows["node2b"], out
    assert marked_veths(n2.ns, "node2") == old
    # forgotten, on the renamed node: b's records and its veths on this host
    rc, out, err = cli(n2, "node", "remove", "node2")
    assert rc == 0, err
    assert (
        "node node2 removed: 1 pod(s) and 0 CNI attachment(s) forgotten; 2 veth(s) of its pods "
        "deleted (an old name of this node)"
    ) in out, out
    assert marked_veths(n2.ns, "node2") == []
    assert n2.log().count('"removed node\'s pod veth deleted"') == 2, n2.log()[-3000:]
    assert not [p for p in cl.store("pods") if p.get("node") == "node2"]
    # once more: nothing of it left, said so
    rc, _, err = cli(n2, "node", "remove", "node2")
    assert rc != 0 and "node node2: the cluster's store has no pod" in err, err
    # b again, under the new name, in its old namespace: node1 reaches it
    cl.pods.pop("b")
    b = cl.add_pod(2, "b", CT, ns=b["ns"])
    assert len(marked_veths(n2.ns, "node2b")) == 2
    assert [p["name"] for p in n2.api("GET", "/v1/pods")] == ["b"]
    # (a may have b's old MAC cached for the address b got again)
    nsx(a["ns"], "ip", "neigh", "flush", "all", check=True)
    assert reachable(a["ns"], ip_of(b)) is not None
    assert reachable(b["ns"], ip_of(a)) is not None
    assert reachable(a["ns"], ip_of(b, "control")) is not None
    # the start's warning is gone with them
    r = subprocess.run(
        ["ip", "netns", "exec", n2.ns, sys.executable, "-m", "dataplane.cli", "check", "-c",
         str(n2.cfg)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0 and "renamed" not in r.stdout + r.stderr, r.stdout + r.stderr
