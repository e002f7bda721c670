"""Pod veths a node's service finds at start without a record of them: a
node killed, removed from the cluster with ``dataplane node remove`` while
it was down, then started again has no records of its old pods, whose veths
are still on the host. The service removes them after its replay, and only
them: veths it marked at their creation as its own plane of a pod, named as
that plane's host end. Two node services on a real etcd, real veths in the
host namespace, pods in network namespaces."""

import json
import os
import time
import uuid

import pytest
from test_service import CT_SPEC, IT_SPEC, Node, host_links, ip_of, ping, sh

from dataplane.podspec import host_ifname
from tests.etcdhost import EtcdServer, have_etcd

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, DPDK EAL)"),
    pytest.mark.skipif(not have_etcd(), reason="needs /usr/bin/etcd (Debian: etcd-server)"),
]


class EtcdNode(Node):
    """test_service.Node with the etcd store and VTEP 10.99.0.``n``."""

    def __init__(self, tmp, tag, etcd, prefix, n):
        tmp.mkdir()
        store = f"store: {{kind: etcd, endpoints: ['{etcd.url}'], prefix: {prefix}}}"
        super().__init__(tmp, tag, extra=store)
        self.cfg.write_text(self.cfg.read_text().replace("10.99.0.1/24", f"10.99.0.{n}/24"))
        self.name = f"node-{tag}"
        self.etcd, self.prefix = etcd, prefix

    def store_mark(self):
        """The store's mark in this node's pod veths' aliases."""
        from dataplane.store.etcd import EtcdStore

        with EtcdStore([self.etcd.url], prefix=self.prefix) as es:
            return es.identity()[:8]

    def log_text(self):
        return (self.tmp / "service.log").read_text(errors="replace")

    def restart_after_kill(self):
        """Start again after a SIGKILL: the dead service's socket removed
        first, so that start() waits for the new one's."""
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.start()


@pytest.fixture
def two_nodes(tmp_path):
    etcd = EtcdServer(name="ortest")
    prefix = f"/ortest-{uuid.uuid4().hex[:6]}"
    nodes = []
    try:
        etcd.start()
        for n in (1, 2):
            node = EtcdNode(tmp_path / f"n{n}", uuid.uuid4().hex[:5], etcd, prefix, n)
            nodes.append(node)
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.cleanup()
        etcd.close()


def links():
    """{name: (ifindex, kind, alias)} of the host namespace's interfaces."""
    out = {}
    for ln in json.loads(sh("ip", "-d", "-j", "link", "show").stdout):
        kind = (ln.get("linkinfo") or {}).get("info_kind")
        out[ln["ifname"]] = (ln["ifindex"], kind, ln.get("ifalias"))
    return out


def decoy(node, name, kind, alias=None):
    """An interface of the host namespace the service must leave alone."""
    if kind == "veth":
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", f"dpx{name[-9:]}")
    else:
        sh("ip", "link", "add", name, "type", kind)
    if alias:
        sh("ip", "link", "set", name, "alias", alias)
    node.host_links.add(name)  # deleted by cleanup()
    return name


def test_a_removed_node_started_again_removes_its_orphan_veths_and_nothing_else(two_nodes):
    n1, n2 = two_nodes
    a = n1.pod("a", CT_SPEC)
    b = n1.pod("b", IT_SPEC)
    hosts = {p["host_ifname"] for p in a["planes"] + b["planes"]}
    assert len(hosts) == 3 and hosts <= host_links()
    # each host end is marked as this node's plane of its pod, in this store
    mark = n1.store_mark()
    have = links()
    for info in (a, b):
        for p in info["planes"]:
            assert have[p["host_ifname"]][1:] == (
                "veth",
                f"dataplane node={n1.name} store={mark} plane={p['plane']} pod={info['name']}",
            ), have[p["host_ifname"]]
    # interfaces that look like ours and are not: no mark, another node's
    # mark, this node's mark in another store, a mark on an interface that
    # is not a veth, a mark whose pod and plane are not what the name is
    # made from
    other = "0123abcd" if mark != "0123abcd" else "4567abcd"
    decoys = {
        decoy(n1, host_ifname("stray", "std"), "veth"),
        decoy(n1, host_ifname("stray2", "std"), "veth", f"dataplane node=other-{n1.tag} store={mark} plane=std pod=stray2"),
        decoy(n1, host_ifname("stray3", "std"), "veth", f"dataplane node={n1.name} store={other} plane=std pod=stray3"),
        decoy(n1, host_ifname("stray4", "std"), "bridge", f"dataplane node={n1.name} store={mark} plane=std pod=stray4"),
        decoy(n1, host_ifname("stray5", "std"), "veth", f"dataplane node={n1.name} store={mark} plane=std pod=stray6"),
    }  # fmt: skip
    # a restart with the records: every pod is replayed, no veth is touched;
    # one whose mark is gone (made before veths were marked) is marked again
    before = {k: v for k, v in links().items() if k in hosts | decoys}
    unmarked = b["planes"][0]["host_ifname"]
    n1.stop()
    sh("ip", "link", "set", unmarked, "alias", "")
    assert links()[unmarked][2] is None
    n1.start()
    assert sorted(p["name"] for p in n1.api("GET", "/v1/pods")) == ["a", "b"]
    assert {k: v for k, v in links().items() if k in hosts | decoys} == before
    assert ping(a["ns"], ip_of(b)).returncode == 0
    assert "orphan pod veth removed" not in n1.log_text()
    assert n1.log_text().count('"replay: plane veth marked"') == 1
    # node 1 dies for good, as far as the cluster knows: killed, then removed
    n1.proc.kill()
    n1.proc.wait()
    n1.proc = None
    for _ in range(600):  # its claim lapses (NODE_TTL_S)
        rows = {r["node"]: r for r in n2.api("GET", "/v1/nodes")}
        if not rows[n1.name]["running"]:
            break
        time.sleep(0.1)
    assert not rows[n1.name]["running"], rows
    out = n2.cli("node", "remove", n1.name).stdout
    assert f"node {n1.name} removed: 2 pod(s)" in out, out
    assert hosts <= host_links()  # its veths are still on the host
    # node 1 starts again: no records of a and b, whose veths it removes
    n1.restart_after_kill()
    assert n1.api("GET", "/v1/pods") == []
    now = links()
    assert not hosts & set(now), sorted(hosts & set(now))
    for info in (a, b):  # the pod ends went with them
        inside = sh("ip", "-n", info["ns"], "-o", "link").stdout
        assert len(inside.splitlines()) == 1, inside  # lo only
    assert {k: v for k, v in now.items() if k in decoys} == {
        k: v for k, v in before.items() if k in decoys
    }
    log = n1.log_text()
    removed = [
        json.loads(ln)
        for ln in log.splitlines()
        if ln.startswith("{") and '"orphan pod veth removed"' in ln
    ]
    assert sorted((r["interface"], r["pod"], r["plane"]) for r in removed) == sorted(
        (p["host_ifname"], info["name"], p["plane"]) for info in (a, b) for p in info["planes"]
    ), removed
    # the names are free again: the pods are added anew and forward
    a2 = n1.api(
        "POST",
        "/v1/pods",
        {"name": "a", "netns": f"/var/run/netns/{a['ns']}", "spec": json.dumps(CT_SPEC)},
    )
    b2 = n1.api(
        "POST",
        "/v1/pods",
        {"name": "b", "netns": f"/var/run/netns/{b['ns']}", "spec": json.dumps(IT_SPEC)},
    )
    assert "unchanged" not in a2 and "unchanged" not in b2
    assert ping(a["ns"], ip_of(b2)).returncode == 0
