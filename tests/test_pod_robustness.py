"""A pod's delete and the node's housekeeping when the kernel says no, or
when a chained CNI plugin changed the pod's interface: the real node
service (fallback mode) in this namespace, real veths, network namespaces
as pods, the CNI plugin run as a runtime runs it, and Debian's reference
``sbr`` and ``tuning`` plugins chained after it.

- an interface that vanishes between its name's lookup and the read of its
  link (what the kernel does to a dying namespace's veths) is gone, not an
  error; a netlink error while a pod is detached (a VF whose name is taken
  when it is given back) is logged, and the pod's other planes are still
  detached: the delete finishes, the housekeeping and the service go on;
- routes ``sbr`` moved into a table of its own are not put back into the
  main table by the housekeeping, and an MTU ``tuning`` lowered is not
  raised again by the replay;
- an attachment whose ADD has not recorded its plane yet is listed as
  pending; unknown fields of the attachment routes are refused, named; a
  CNI DEL of an interface name an ADD refuses succeeds."""

import contextlib
import json
import os
import time
import uuid

import pytest

from tests.cnihost import run_plugin
from tests.test_service import IT_SPEC, Node, running_node, sh

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

REFERENCE_PLUGINS = "/usr/lib/cni"


@pytest.fixture
def node(tmp_path):
    with running_node(tmp_path) as n:
        yield n


def _log(node) -> str:
    return (node.tmp / "service.log").read_text()


def _events(node, msg):
    return [
        e
        for ln in _log(node).splitlines()
        if ln.startswith("{")
        for e in [json.loads(ln)]
        if e.get("msg") == msg
    ]


def _link(name, ns=None):
    args = ["ip", *(("-n", ns) if ns else ()), "-j", "link", "show", name]
    r = sh(*args, check=False)
    return json.loads(r.stdout)[0] if r.returncode == 0 else None


def _until(cond, what, tries=300, every=0.05):
    for _ in range(tries):
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"not within {tries * every:g} s: {what}")


def _store(node):
    from dataplane.store.sqlite import SqliteStore

    return contextlib.closing(SqliteStore(str(node.tmp / "state" / "state.db")))


# ------------------------------------------------- 1: netlink errors


def test_an_interface_gone_between_lookup_and_read_is_gone_not_an_error(monkeypatch):
    """The ENODEV race, made exact: a real veth, really deleted by the
    kernel between the lookup of its name and the read of its link."""
    from pyroute2 import IPRoute

    from dataplane import podnet

    class Vanishing:
        """The kernel's netlink (pyroute2's IPRoute), with the link deleted
        right after its name was looked up: what a dying namespace's veth
        does."""

        def __init__(self):
            self.ipr = IPRoute()

        def __getattr__(self, attr):
            return getattr(self.ipr, attr)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.ipr.close()

        def link_lookup(self, **kw):
            idx = self.ipr.link_lookup(**kw)
            for i in idx:
                self.ipr.link("del", index=i)
            return idx

    tag = uuid.uuid4().hex[:6]
    names = []
    try:
        for step in ("look", "detach", "find"):
            name = f"dprb{tag}{step[0]}"
            sh("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p")
            names.append(name)
            if step == "look":
                with Vanishing() as ipr:
                    assert podnet._host_link(ipr, name) is None
                continue
            monkeypatch.setattr(podnet, "_ipr", lambda netns_path=None: Vanishing())
            if step == "detach":
                assert podnet.detach_plane(name) is False  # already gone
            else:
                assert podnet.find_plane(name) is None
            monkeypatch.undo()
            assert _link(name) is None  # really gone, by the kernel
    finally:
        for name in names:
            sh("ip", "link", "del", name, check=False)


def _vf_stand_in(node):
    """A macvlan on a veth in this namespace playing a VF (no SR-IOV NIC
    here, as tests/test_vf.py does), and a pod with it as plane media: what
    the pod and the VF are called."""
    wire, vf = f"vfw{node.tag}a", f"vfs{node.tag}"
    sh("ip", "link", "add", wire, "type", "veth", "peer", "name", f"vfw{node.tag}b")
    node.host_links.add(wire)  # deleted at cleanup, the macvlan (wherever it is) with it
    sh("ip", "link", "set", wire, "up")
    sh("ip", "link", "add", "link", wire, "name", vf, "type", "macvlan", "mode", "bridge")
    sh("ip", "link", "set", vf, "up")
    spec = {
        "pod_type": "ct",
        "network_plane": ["std", "media"],
        "networks": {"std": "net1", "media": "net3"},
        "interfaces": {"media": {"kind": "vf", "device": vf, "ifname": "sriov0"}},
    }
    info = node.pod("a", spec)
    assert _link("sriov0", info["ns"]) is not None and _link(vf) is None  # moved in
    std = next(p["host_ifname"] for p in info["planes"] if p["plane"] == "std")
    return info, vf, std


def _take_the_vfs_name(node, vf):
    """An interface under the VF's own name: giving it back fails (EEXIST,
    a netlink error) - the kernel's refusal, no other way to have one."""
    sh("ip", "link", "add", vf, "type", "veth", "peer", "name", f"vfx{node.tag}")
    node.host_links.add(vf)


VF_NETWORKS = """  - {name: net1, vni: 101, plane: std, subnet: 192.168.50.0/24, gateway: 192.168.50.1}
  - {name: net3, vni: 103, plane: media, subnet: 192.168.52.0/24}"""


@pytest.fixture
def vnode(tmp_path):
    n = Node(tmp_path, uuid.uuid4().hex[:5], networks=VF_NETWORKS)
    try:
        n.start()
        yield n
    finally:
        n.cleanup()


def test_a_delete_finishes_when_its_vf_cannot_be_given_back(vnode):
    info, vf, std = _vf_stand_in(vnode)
    _take_the_vfs_name(vnode, vf)
    assert vnode.api("DELETE", "/v1/pods?name=a") == {"deleted": "a"}
    assert vnode.api("GET", "/v1/pods") == []
    assert _link(std) is None  # the plane after the VF was still detached
    assert "giving back vf " + vf + " of pod a: NetlinkError" in _log(vnode)
    assert vnode.proc.poll() is None


def test_housekeeping_goes_on_when_a_leftovers_vf_cannot_be_given_back(vnode):
    """A pod left 'deleting' (a delete the store failed during): the
    housekeeping removes it; giving its VF back fails with a netlink error,
    which neither stops the removal nor ends the service."""
    info, vf, std = _vf_stand_in(vnode)
    _take_the_vfs_name(vnode, vf)
    with _store(vnode) as store:
        store.set_pod_state("a", "deleting")
    _until(lambda: vnode.api("GET", "/v1/pods") == [], "the leftover removed")
    _until(lambda: _link(std) is None, "its std veth deleted")
    assert "giving back vf " + vf + " of pod a: NetlinkError" in _log(vnode)
    (ev,) = _events(vnode, "leftover of a failed pod delete removed")
    assert (ev["pod"], ev["by"]) == ("a", "housekeeping")
    time.sleep(1.5)  # the main loop's next turns
    assert vnode.proc.poll() is None, _log(vnode)
    # the node forwards on: a new pod is added and housekept
    b = vnode.pod("b", IT_SPEC)
    assert [p["name"] for p in vnode.api("GET", "/v1/pods")] == ["b"]
    assert b["planes"][0]["port"] is not None


def test_housekeeping_removes_a_pod_whose_namespace_was_deleted(node):
    """The pod's namespace deleted: the kernel deletes its veths in the
    background while the housekeeping looks (the race above, as it comes):
    the pod is removed, the service runs on."""
    a = node.pod("a", IT_SPEC)
    b = node.pod("b", IT_SPEC)
    sh("ip", "netns", "del", a["ns"])
    _until(lambda: [p["name"] for p in node.api("GET", "/v1/pods")] == ["b"], "a reaped", 400)
    # the event is logged after the pod leaves the list
    (ev,) = _until(lambda: _events(node, "pod removed: its interfaces are gone"), "event logged")
    assert ev["pod"] == "a"
    _until(lambda: _link(a["planes"][0]["host_ifname"]) is None, "a's veth gone")
    assert node.proc.poll() is None
    assert b["planes"][0]["port"] is not None


# ------------------------------------------ 2: sbr's routes, tuning's MTU


def _run_chained(cnode, plugin, extra, prev, cid, path):
    assert os.path.exists(f"{REFERENCE_PLUGINS}/{plugin}"), "containernetworking-plugins missing"
    conf = {
        "cniVersion": "1.0.0",
        "name": "std-net",
        "type": plugin,
        "prevResult": prev,
        **extra,
    }
    code, out, err = run_plugin(f"{REFERENCE_PLUGINS}/{plugin}", "ADD", conf, cid, path, "eth0")
    assert code == 0, (out, err)
    return out


def _routes(ns, table):
    out = sh("ip", "-n", ns, "-j", "-4", "route", "show", "table", table).stdout
    return [r for r in json.loads(out or "[]") if r.get("dev") == "eth0"]


def test_housekeeping_leaves_the_routes_sbr_moved(cnode):
    cid, ns, path = cnode.container()
    code, res, err = cnode.cni("ADD", cnode.conf(), cid, path)
    assert code == 0, (res, err)
    gw = res["routes"][0]["gw"]
    _run_chained(cnode, "sbr", {}, res, cid, path)
    # sbr moved the interface's routes out of main, into a table of its own
    assert _routes(ns, "main") == []
    moved = _routes(ns, "100")
    assert {r["dst"] for r in moved} == {"default", "192.168.60.0/24"}, moved
    # two housekeeping rounds (every 5 s; this one pod's end is looked at
    # in each): main gains nothing back, nothing is "restored"
    time.sleep(11)
    assert _routes(ns, "main") == []
    assert _events(cnode, "housekeeping: pod plane interface restored") == []
    # a route gone from every table is put back: the default route where
    # the subnet route is (its gateway reachable there) ...
    restored = "housekeeping: pod plane interface restored"
    sh("ip", "-n", ns, "route", "del", "default", "table", "100")
    ev = _until(lambda: _events(cnode, restored), "the default route restored", tries=250)[0]
    assert ev["restored"] == [f"default route via {gw}"], ev
    assert _routes(ns, "main") == []
    assert {r["dst"] for r in _routes(ns, "100")} == {"default", "192.168.60.0/24"}
    # ... both, gone from every table: into main, as the add made them
    sh("ip", "-n", ns, "route", "flush", "table", "100")
    ev = _until(lambda: _events(cnode, restored)[1:], "both routes restored", tries=250)[0]
    assert ev["restored"] == ["subnet route 192.168.60.0/24", f"default route via {gw}"], ev
    assert {r["dst"] for r in _routes(ns, "main")} == {"default", "192.168.60.0/24"}
    assert _routes(ns, "100") == []
    assert cnode.cni("DEL", cnode.conf(), cid, path)[0] == 0


def test_replay_keeps_the_mtu_tuning_lowered(cnode):
    cid, ns, path = cnode.container()
    code, res, err = cnode.cni("ADD", cnode.conf(), cid, path)
    assert code == 0, (res, err)
    host = res["interfaces"][0]["name"]
    net_mtu = _link("eth0", ns)["mtu"]
    _run_chained(cnode, "tuning", {"mtu": net_mtu - 100}, res, cid, path)
    assert _link("eth0", ns)["mtu"] == net_mtu - 100
    cnode.stop()
    cnode.start()
    (a,) = cnode.api("GET", "/v1/attachments")
    assert a["state"] == "ready" and a["port"] is not None
    assert (_link("eth0", ns)["mtu"], _link(host)["mtu"]) == (net_mtu - 100, net_mtu)
    assert _events(cnode, "replay: plane MTU set") == []
    code, out, _ = cnode.cni("CHECK", {**cnode.conf(), "prevResult": res}, cid, path)
    assert code == 0, out


# ------------------------------------------------------ 3, 4, 5: the API


def test_an_attachment_whose_add_has_no_plane_yet_is_listed_as_pending(cnode):
    """What a concurrent ADD's records are between its intent and its
    plane: the attachment's record and its pod 'pending', no endpoint. The
    housekeeping removes such leftovers every 5 s: made again if it took
    them before the list."""
    from dataplane.attach import attachment_name

    cid, ns, path = cnode.container()
    name = attachment_name(cid, "eth0")
    rec = {"container_id": cid, "ifname": "eth0", "kind": "veth", "cni_network": "std-net"}
    for _ in range(5):
        with _store(cnode) as store:
            store.put_attachment(name, rec, node=f"node-{cnode.tag}")
            store.put_pod(name, path, {"pod_type": "ct"}, node=f"node-{cnode.tag}")
        (a,) = cnode.api("GET", "/v1/attachments")
        if a["state"] != "gone":
            break
    assert (a["name"], a["state"], a["container_id"]) == (name, "pending", cid), a
    assert (a["plane"], a["ip"], a["port"]) == (None, None, None)
    key = {"container_id": cid, "ifname": "eth0"}
    problems = cnode.api("POST", "/v1/attachments/check", key)["problems"]
    assert problems == [
        f"container {cid} interface eth0 is being attached (its ADD has not finished: "
        "state pending)"
    ]
    # the housekeeping takes the leftover; the DEL succeeds either way
    assert cnode.cni("DEL", cnode.conf(), cid, path)[0] == 0
    assert cnode.api("GET", "/v1/attachments") == []


def test_attachment_routes_refuse_unknown_fields(cnode):
    from dataplane.api import APIError

    cid, ns, path = cnode.container()
    body = {"container_id": cid, "ifname": "eth0", "netns": path, "network": "net1"}
    with pytest.raises(APIError) as e:
        cnode.api("POST", "/v1/attachments", {**body, "ipv4": "192.168.60.9"})
    msg = str(e.value)
    assert "ipv4: unknown field" in msg and "'ip'" in msg, msg
    assert cnode.api("GET", "/v1/attachments") == []  # nothing was made
    assert _link("eth0", ns) is None
    for method, route, b in (
        ("POST", "/v1/attachments/check", {"container_id": cid, "ifname": "eth0", "nets": path}),
        ("POST", "/v1/attachments/gc", {"cni_network": "std-net", "valid": [], "keep": []}),
        ("DELETE", "/v1/attachments", {"container_id": cid, "ifnme": "eth0"}),
    ):
        with pytest.raises(APIError) as e:
            cnode.api(method, route, b)
        assert f"{list(b)[-1]}: unknown field" in str(e.value), (route, str(e.value))
    with pytest.raises(APIError) as e:
        cnode.api("GET", "/v1/attachments", {"x": 1})
    assert "takes no body" in str(e.value)
    with pytest.raises(APIError) as e:
        cnode.api("GET", "/v1/attachments?containr_id=x")
    assert "containr_id: unknown query parameter" in str(e.value)
    # what the plugin and the CLI send is taken
    a = cnode.api("POST", "/v1/attachments", {**body, "ip": "192.168.60.9", "plane": None})
    cnode.host_links.add(a["host_ifname"])
    assert a["ip"] == "192.168.60.9"
    assert cnode.api("DELETE", "/v1/attachments?container_id=" + cid + "&ifname=eth0") == {
        "deleted": a["name"]
    }


def test_cni_del_of_an_interface_name_an_add_refuses_succeeds(cnode):
    cid, ns, path = cnode.container()
    for ifname in ("lo", "x" * 16, "a b"):
        code, out, _ = cnode.cni("ADD", cnode.conf(), cid, path, ifname=ifname)
        assert code != 0 and out["code"] in (4, 7), (ifname, out)
        assert cnode.cni("DEL", cnode.conf(), cid, path, ifname=ifname) == (0, None, ""), ifname
        assert cnode.cni("DEL", cnode.conf(), cid, None, ifname=ifname)[0] == 0
    assert cnode.api("GET", "/v1/attachments") == []
    # through the API as well: nothing was attached, nothing to delete
    assert cnode.api("DELETE", "/v1/attachments", {"container_id": cid, "ifname": "lo"}) == {
        "deleted": None
    }
    # a key not given at all is still the request's fault
    from dataplane.api import APIError

    with pytest.raises(APIError):
        cnode.api("DELETE", "/v1/attachments", {"container_id": cid})


# ------------------------------- a retried add of a pod short of a plane


def test_a_retried_add_keeps_a_pod_whose_plane_cannot_be_made_again(node):
    """Pod a's control plane veth deleted, and its name in the pod taken
    by another interface, so that the plane cannot be made again: a
    retried add of the same spec says so, and leaves the pod as it was -
    its std plane forwarding - instead of removing it to add it afresh
    (which would fail the same way and leave nothing)."""
    from dataplane.api import APIError, call
    from tests.test_service import CT_SPEC

    a = node.pod("a", CT_SPEC)
    std, ctl = (next(p for p in a["planes"] if p["plane"] == k) for k in ("std", "control"))
    # (the name taken before the veth goes: the service remakes a deleted
    # veth as soon as the kernel says it went)
    sh("ip", "-n", a["ns"], "link", "set", ctl["ifname"], "name", "ctl-old")
    sh("ip", "-n", a["ns"], "link", "add", ctl["ifname"], "type", "veth", "peer", "name", "ctl-p")
    sh("ip", "link", "del", ctl["host_ifname"])
    body = {"name": "a", "netns": f"/var/run/netns/{a['ns']}", "spec": json.dumps(CT_SPEC)}
    with pytest.raises(APIError) as e:
        call(node.sock, "POST", "/v1/pods", body)
    assert "could not be made again" in str(e.value), str(e.value)
    assert [p["name"] for p in node.api("GET", "/v1/pods")] == ["a"]
    assert _link(std["host_ifname"]) is not None  # its std plane as it was
    assert _link(std["ifname"], a["ns"]) is not None
    assert not _events(node, "pod removed: its interfaces are gone")
    assert node.proc.poll() is None
