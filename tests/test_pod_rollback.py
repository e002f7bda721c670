"""A pod add or delete that the etcd store stops answering in the middle of:
the node service (fallback mode, real veths, its own etcd which the test
started) runs under tests/faultnode.py, which stops that etcd right before a
chosen store call. What the add made on the node is undone at once, without
the store; what it wrote to the store is removed by the node's housekeeping
once etcd answers again; the add can be tried again."""

import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
from test_service import CT_SPEC, IT_SPEC, Node, host_links, ip_of, ping

from dataplane.api import APIError
from dataplane.attach import attachment_name
from dataplane.podspec import host_ifname
from tests.etcdhost import EtcdServer, have_etcd

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, DPDK EAL)"),
    pytest.mark.skipif(not have_etcd(), reason="needs /usr/bin/etcd (Debian: etcd-server)"),
]


class FaultNode(Node):
    """test_service.Node with the etcd store, run by tests/faultnode.py."""

    def __init__(self, tmp, tag, etcd, prefix):
        store = f"store: {{kind: etcd, endpoints: ['{etcd.url}'], prefix: {prefix}}}"
        super().__init__(tmp, tag, extra=store)
        self.etcd = etcd
        self.plan = tmp / "plan.json"

    START_TRIES = 600

    def command(self):
        return [sys.executable, "-m", "tests.faultnode", str(self.plan), "run", "-c", str(self.cfg)]

    def service_log(self):
        return (self.tmp / "service.log").read_text(errors="replace")

    def stop_etcd_before(self, method, pod, nth=1, when="before", seconds=0):
        """Arm the service: etcd stops right before the ``nth`` call of the
        store's ``method`` for ``pod`` (``when="after"``: right after it,
        the call applied but failing as if its answer were lost;
        ``"answered"``: right after it, the call done and answered;
        ``"delay"``: not at all, the call held ``seconds`` first)."""
        self.plan.write_text(
            json.dumps(
                {
                    "etcd_pid": self.etcd.proc.pid,
                    "etcd_url": self.etcd.url,
                    "method": method,
                    "pod": pod,
                    "nth": nth,
                    "when": when,
                    "seconds": seconds,
                }
            )
        )

    def fired(self):
        return os.path.exists(str(self.plan) + ".fired")

    def etcd_back(self):
        """Start the stopped etcd again (same data, same port)."""
        assert self.fired(), "etcd was not stopped"
        os.unlink(str(self.plan) + ".fired")
        self.etcd.stop()  # reaps the process the service stopped
        self.etcd.start()

    def new_ns(self, name):
        ns = f"rb{self.tag}{name}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        self.netns.append(ns)  # deleted by cleanup()
        return ns

    def add(self, name, spec, ns=None):
        """POST /v1/pods; the info, with "ns"."""
        ns = ns or self.new_ns(name)
        self.host_links |= {host_ifname(name, p) for p in spec["network_plane"]}
        info = self.api(
            "POST",
            "/v1/pods",
            {"name": name, "netns": f"/var/run/netns/{ns}", "spec": json.dumps(spec)},
        )
        info["ns"] = ns
        return info


@pytest.fixture
def rbnode(tmp_path):
    etcd = EtcdServer(name="rbtest")
    tag = uuid.uuid4().hex[:5]
    n = None
    try:
        etcd.start()
        n = FaultNode(tmp_path, tag, etcd, f"/rbtest-{tag}")
        n.start()
        yield n
    finally:
        if n is not None:
            n.cleanup()
        etcd.close()


def etcd_items(node):
    """Every (key, value) under the node's prefix, read straight from etcd."""
    from dataplane.store.etcd import EtcdStore

    with EtcdStore([node.etcd.url], prefix=f"/rbtest-{node.tag}") as es:
        return es.client.items(es.prefix)


def keys_of(node, pod):
    """The etcd keys that name ``pod``: as a component of the key, or as the
    pod (or name) a record is of. (Not any text with the name in it: a
    namespace path of another pod, rb<tag>rbo, held 'rba' when the tag began
    with 'a'.)"""
    return [
        k
        for k, v in etcd_items(node)
        if pod in k.split("/") or (isinstance(v, dict) and pod in (v.get("pod"), v.get("name")))
    ]


def interfaces_in(ns):
    r = subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True, check=True)
    return [ln.split(":")[1].strip().split("@")[0] for ln in r.stdout.splitlines()]


def core_ports(node):
    return {p["name"] for p in node.api("GET", "/v1/status")["ports"]}


def wait_for(what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = what()
        if v:
            return v
        time.sleep(0.1)
    return what()


@pytest.mark.parametrize(
    "method, nth",
    [
        ("set_pod_state", 1),  # both planes made and forwarding
        ("allocate_ip", 2),  # the first plane made, the second not begun
    ],
)
def test_add_interrupted_by_etcd_stopping_leaves_nothing(rbnode, method, nth):
    n = rbnode
    other = n.add("rbo", IT_SPEC)
    name = "rba"
    hifs = {host_ifname(name, p) for p in CT_SPEC["network_plane"]}
    ns = n.new_ns(name)
    n.stop_etcd_before(method, name, nth)
    with pytest.raises(APIError) as e:
        n.add(name, CT_SPEC, ns=ns)
    assert n.fired()
    assert "does not answer" in str(e.value), e.value
    # undone at once, with etcd still down: no veth, no port, nothing in the pod
    assert not hifs & host_links()
    assert not hifs & core_ports(n), core_ports(n)
    assert interfaces_in(ns) == ["lo"]
    log = n.service_log()
    assert '"pod add failed: undone on this node"' in log, log[-3000:]
    # the store comes back: the housekeeping removes the records the add left
    n.etcd_back()
    assert wait_for(lambda: not keys_of(n, name)), keys_of(n, name)
    assert '"leftover of a failed pod add removed"' in n.service_log()
    # and the add, tried again, works: the pod forwards
    a = n.add(name, CT_SPEC, ns=ns)
    assert a["state"] == "ready"
    assert ping(ns, ip_of(other)).returncode == 0
    assert {p["name"] for p in n.api("GET", "/v1/pods")} == {"rbo", name}
    n.cli("pod", "del", name)
    assert not keys_of(n, name)
    assert not hifs & host_links() and not hifs & core_ports(n)


def test_an_add_whose_last_write_etcd_applied_but_never_answered_is_not_revived(rbnode):
    """The add's last write (the pod 'ready') reaches etcd, which stops
    before it answers: the add fails and is undone on the node, and the
    record etcd kept says 'ready'. Once etcd answers again the housekeeping
    removes that record as the leftover it is, instead of making the pod's
    veths again for a pod its caller was told failed."""
    n = rbnode
    other = n.add("rbo", IT_SPEC)
    name = "rbr"
    hifs = {host_ifname(name, p) for p in CT_SPEC["network_plane"]}
    ns = n.new_ns(name)
    n.stop_etcd_before("set_pod_state", name, when="after")
    with pytest.raises(APIError) as e:
        n.add(name, CT_SPEC, ns=ns)
    assert n.fired() and "does not answer" in str(e.value), e.value
    assert not hifs & host_links() and interfaces_in(ns) == ["lo"]
    n.etcd_back()
    assert wait_for(lambda: not keys_of(n, name)), keys_of(n, name)
    log = n.service_log()
    assert '"leftover of a failed pod add removed"' in log, log[-3000:]
    # the namespace lives on, yet nothing of the pod was made again
    assert not hifs & host_links() and interfaces_in(ns) == ["lo"]
    assert not hifs & core_ports(n), core_ports(n)
    assert "pod plane made again" not in n.service_log()
    # and the add, tried again, works
    a = n.add(name, CT_SPEC, ns=ns)
    assert a["state"] == "ready"
    assert ping(ns, ip_of(other)).returncode == 0
    n.cli("pod", "del", name)
    assert not keys_of(n, name)


def test_an_attachment_whose_pod_is_added_is_answered_though_etcd_stops_then(rbnode):
    """A CNI attachment (the API's POST /v1/attachments) whose pod's last
    write is answered, etcd stopping right after it: the container is
    attached, and the answer says so with its address, not 'nothing was
    attached' from a read made after the add."""
    n = rbnode
    other = n.add("rbo", IT_SPEC)
    cid = uuid.uuid4().hex
    ns = n.new_ns("rbc")
    name = attachment_name(cid, "eth0")
    n.stop_etcd_before("set_pod_state", name, when="answered")
    a = n.api(
        "POST",
        "/v1/attachments",
        {"container_id": cid, "ifname": "eth0", "netns": f"/var/run/netns/{ns}", "network": "net1"},
    )
    assert n.fired()
    assert a["state"] == "ready" and a["container_id"] == cid and a["ip"], a
    assert ping(ns, ip_of(other)).returncode == 0  # attached, with etcd down
    n.etcd_back()
    r = n.api("DELETE", "/v1/attachments", {"container_id": cid, "ifname": "eth0"})
    assert r["deleted"] == name, r
    assert not keys_of(n, name)


def test_a_gc_that_comes_during_an_add_leaves_that_attachment(rbnode):
    """A CNI GC whose runtime did not yet list an attachment being added
    (its ADD held, its record written, before its pod is recorded) leaves
    it: it judges only what was there, done, when it began."""
    n = rbnode
    cid = uuid.uuid4().hex
    ns = n.new_ns("rbg")
    name = attachment_name(cid, "eth0")
    n.stop_etcd_before("put_pod", name, when="delay", seconds=3)
    out = {}

    def add():
        try:
            out["a"] = n.api(
                "POST",
                "/v1/attachments",
                {
                    "container_id": cid,
                    "ifname": "eth0",
                    "netns": f"/var/run/netns/{ns}",
                    "network": "net1",
                    "cni_network": "std-net",
                },
            )
        except Exception as e:  # noqa: BLE001 - asserted below
            out["e"] = e

    t = threading.Thread(target=add)
    t.start()
    try:
        # the ADD's record is written and the ADD held: then the GC comes
        assert wait_for(lambda: n.fired() and keys_of(n, name)), keys_of(n, name)
        gc = n.api("POST", "/v1/attachments/gc", {"cni_network": "std-net", "valid": []})
    finally:
        t.join(30)
    assert "e" not in out, out
    assert out["a"]["state"] == "ready", out
    assert gc["deleted"] == [], gc
    (a,) = n.api("GET", "/v1/attachments")
    assert a["container_id"] == cid and a["state"] == "ready", a
    # a GC after the ADD, whose runtime does not list it, removes it
    gc = n.api("POST", "/v1/attachments/gc", {"cni_network": "std-net", "valid": []})
    assert gc["deleted"] == [name], gc
    assert n.api("GET", "/v1/attachments") == []


def test_delete_interrupted_by_etcd_stopping_says_what_happened(rbnode):
    n = rbnode
    other = n.add("rbo", IT_SPEC)
    name = "rbd"
    d = n.add(name, CT_SPEC)
    hifs = {p["host_ifname"] for p in d["planes"]}
    # etcd stops before the delete has done anything: it fails, the pod stays
    n.stop_etcd_before("set_pod_state", name)
    r = n.cli("pod", "del", name, check=False)
    assert n.fired()
    assert r.returncode != 0 and "does not answer" in r.stderr, (r.stdout, r.stderr)
    assert hifs <= host_links() and hifs <= core_ports(n)
    assert ping(d["ns"], ip_of(other)).returncode == 0
    n.etcd_back()
    assert [p["state"] for p in n.api("GET", "/v1/pods") if p["name"] == name] == ["ready"]
    # etcd stops once the pod is detached, before its records are removed:
    # the delete is done, and says its records wait for etcd
    n.stop_etcd_before("delete_pod", name)
    r = n.cli("pod", "del", name, check=False)
    assert n.fired()
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert r.stdout.startswith(f"deleted {name}\nnote: the pod is detached from this node")
    assert "does not answer" in r.stdout and "the node removes them then" in r.stdout
    assert not hifs & host_links() and not hifs & core_ports(n)
    assert interfaces_in(d["ns"]) == ["lo"]
    n.etcd_back()
    assert wait_for(lambda: not keys_of(n, name)), keys_of(n, name)
    # (logged once the records are gone: waited for as they are)
    said = '"leftover of a failed pod delete removed"'
    assert wait_for(lambda: said in n.service_log()), n.service_log()[-3000:]
    assert [p["name"] for p in n.api("GET", "/v1/pods")] == ["rbo"]
    # the name can be used again
    d = n.add(name, CT_SPEC, ns=d["ns"])
    assert ping(d["ns"], ip_of(other)).returncode == 0


# ----------------------------------------------- PodLife on a store alone
@pytest.fixture
def podlife(tmp_path):
    """PodLife of node rbn1 on its own etcd (no core: the pods here never
    get as far as a port): (podlife, etcd server, store)."""
    import threading

    import yaml

    from dataplane.config import parse_config
    from dataplane.podlife import PodLife
    from dataplane.store.etcd import EtcdStore

    etcd = EtcdServer(name="rbtest")
    store = None
    try:
        etcd.start()
        prefix = f"/rbtest-{uuid.uuid4().hex[:5]}"
        cfg = parse_config(
            yaml.safe_load(f"""
node: rbn1
mode: fallback
vtep: {{address: 10.99.0.1/24, uplink: rbnone}}
networks:
  - {{name: net1, vni: 101, plane: std, subnet: 192.168.50.0/24, gateway: 192.168.50.1}}
store: {{kind: etcd, endpoints: ['{etcd.url}'], prefix: {prefix}}}
state_dir: {tmp_path}/state
""")
        )
        store = EtcdStore([etcd.url], prefix=prefix, timeout=2)
        yield PodLife(cfg, store, None, threading.RLock(), {"net1": 1}), etcd, store
    finally:
        if store is not None:
            store.close()
        etcd.close()


def test_leftover_records_are_removed_only_when_they_are_leftovers(podlife):
    pl, etcd, store = podlife
    ns = "/proc/self/ns/net"  # never attached: each add here fails before
    spec = {"pod_type": "it", "network_plane": ["std"], "networks": {"std": "net1"}}
    # what a failed add on this node left: 'pending', its address allocated
    store.put_pod("rbl", ns, spec, node="rbn1")
    ip = store.allocate_ip("net1", "192.168.50.0/24", "192.168.50.1", "rbl")
    # an add running now (this process) and another node's pod are no leftovers
    store.put_pod("rbnow", ns, spec, node="rbn1")
    pl.adding.add("rbnow")
    store.put_pod("rbother", ns, spec, node="rbn2")
    assert [pl.leftover(store.pod(n)) for n in ("rbl", "rbnow", "rbother")] == [
        True,
        False,
        False,
    ]
    # a new add of the name that cannot remove the leftover says what it is
    real = store.delete_pod

    def stop_then_delete(name):
        etcd.stop()
        return real(name)

    store.delete_pod = stop_then_delete
    with pytest.raises(Exception) as e:
        pl.add_pod("rbl", ns, spec)
    assert (
        "pod rbl exists already on node rbn1: it is what a failed add left (pending), which is "
        "being removed, but that failed now (etcd" in str(e.value)
    ), e.value
    assert "add it again then" in str(e.value)
    store.delete_pod = real
    etcd.start()
    # another node's pod: its name, node and state are said
    with pytest.raises(Exception) as e:
        pl.add_pod("rbother", ns, spec)
    assert str(e.value) == (
        "pod rbother exists already on node rbn2 (pending: being added there, or what a "
        "failed add left, which that node removes once its store answers)"
    )
    # the housekeeping removes the leftover only
    assert pl.reap() == ["rbl"]
    assert store.pod("rbl") is None and ip not in {a["ip"] for a in store.allocations()}
    assert store.pod("rbnow")["state"] == "pending" and store.pod("rbother")
    pl.adding.discard("rbnow")  # its add "failed" with its records left
    assert pl.reap() == ["rbnow"]
    assert [p["name"] for p in store.pods()] == ["rbother"]


def test_a_read_racing_a_failed_add_or_a_delete_leaves_no_ghost(podlife):
    """What the service lists while etcd is down (the pods as it last knew
    them) holds the pods it attached and no others: a read of a pod that an
    add had only begun, and whose add then failed, or of a pod being
    deleted, does not put it (back) there."""
    from dataplane.podlife import _Made

    pl, etcd, store = podlife
    ns = "/proc/self/ns/net"
    spec = {"pod_type": "it", "network_plane": ["std"], "networks": {"std": "net1"}}
    # an add has written its intent; a reader (GET /v1/pods) sees it meanwhile
    store.put_pod("rbg", ns, spec, node="rbn1")
    assert pl.pod_info("rbg")["state"] == "pending"
    pl._roll_back("rbg", _Made(), RuntimeError("the add failed"))  # what a failed add does
    # a pod the service attached; a read that began before its delete ends after it
    store.put_pod("rbk", ns, spec, state="ready", node="rbn1")
    pl.pod_info("rbk", remember=True)
    store.put_pod("rbd", ns, spec, state="ready", node="rbn1")
    pl.pod_info("rbd", remember=True)
    rec, eps = store.pod("rbd"), store.endpoints(pod="rbd")  # the reader's read
    pl._detach("rbd", eps)  # the delete
    store.delete_pod("rbd")
    pl._info(rec, eps)  # the reader's answer, made after the delete
    assert pl.pod_info("rbk")["state"] == "ready"  # a read keeps a known pod current
    etcd.stop()
    listed = pl.list_pods()
    assert [p["name"] for p in listed] == ["rbk"], listed
    assert "does not answer" in listed[0]["store_error"]
    etcd.start()
