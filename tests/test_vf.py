"""VF planes on a stand-in: a macvlan device of the node's namespace, on a
veth that plays the PF's wire, plays the VF (this machine has no SR-IOV NIC,
and its kernel has no dummy driver). It is moved into the pod's namespace
under the plane's name, addressed and routed, and given back exactly (name,
MAC, MTU, up, no address) on pod delete, after a kill -9 of the service and
a pod delete by the new one, and by the replay of a pod whose add never
finished. A device another pod holds, and one that does not exist, are
refused and leave nothing. A device whose pod went away without a delete
(its namespace deleted) is given back by the housekeeping once it is back
on the node, or its record cleared once the device is made again; one
whose pod's namespace lives is never taken. What a real VF adds (the PF's VLAN, MAC, spoof
check and trust) is not exercised: a macvlan has no PF."""

import json
import os
import sqlite3
import time

import pytest

from tests import test_dpdk_pods, test_kernel_pods
from tests.test_dpdk_pods import node_with_sockets
from tests.test_kernel_pods import Node, ipn, sh

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, DPDK EAL)"),
]

fabric = test_kernel_pods.fabric  # the kernel pods' fixture: namespaces, nodes, cleanup
sockdir = test_dpdk_pods.sockdir
VF_MAC = "02:aa:bb:cc:dd:01"
VF_MTU = 1400


def link(ns, name):
    """ip -j link of ``name`` in ``ns`` (None if absent), with its addresses."""
    r = ipn(ns, f"-j addr show dev {name}", check=False)
    return json.loads(r.stdout)[0] if r.returncode == 0 else None


def stand_in(node, name="vfstub0"):
    ipn(node.ns, "link add vfwire0 type veth peer name vfwire1")
    ipn(node.ns, "link set vfwire0 up")
    ipn(node.ns, f"link add link vfwire0 name {name} type macvlan mode bridge")
    ipn(node.ns, f"link set {name} address {VF_MAC} mtu {VF_MTU} up")
    node.host_links.add("vfwire0")  # deleted at cleanup, the macvlan with it
    return link(node.ns, name)


def assert_restored(node, before, name="vfstub0"):
    now = link(node.ns, name)
    assert now is not None, f"{name} not back in the node's namespace"
    assert (now["ifindex"], now["address"], now["mtu"]) == (
        before["ifindex"],
        before["address"],
        before["mtu"],
    )
    assert "UP" in now["flags"] and now["addr_info"] == before["addr_info"]


def vf_pod(fab, node, name, device="vfstub0", **opts):
    ns = fab.netns(f"{fab.tag}{name}")
    spec = {
        "pod_type": "ct",
        "network_plane": ["std", "media"],
        "networks": {"std": "net1", "media": "net3"},
        "interfaces": {"media": {"kind": "vf", "device": device, "ifname": "sriov0", **opts}},
    }
    body = {"name": f"{fab.tag}{name}", "netns": f"/var/run/netns/{ns}", "spec": spec}
    return ns, body


def add(node, body):
    info = node.api("POST", "/v1/pods", body)
    node.host_links |= {p["host_ifname"] for p in info["planes"] if p.get("host_ifname")}
    return info


def until(cond, what, timeout=20.0):
    """Wait for ``cond()`` (the housekeeping runs every few seconds)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def kill_service(node):
    """kill -9 of the node's service: nothing of it runs its stop."""
    node.proc.kill()
    node.proc.wait()
    node.proc = None


def state_db(node):
    """The node's SQLite state store, opened beside a stopped service."""
    return sqlite3.connect(node.dir / "state" / "state.db")


def refused(node, body):
    """The error of an add that must be refused."""
    from dataplane.api import APIError

    with pytest.raises(APIError) as err:
        node.api("POST", "/v1/pods", body)
    return str(err.value)


def test_vf_moved_addressed_and_given_back(fabric, sockdir):
    fab = fabric()
    node = node_with_sockets(fab, sockdir)
    before = stand_in(node)
    ns, body = vf_pod(fab, node, "a", vlan=0, spoofchk=False)  # nothing for a PF to do
    info = add(node, body)
    media = [p for p in info["planes"] if p["plane"] == "media"][0]
    assert media["kind"] == "vf" and media["device"] == "vfstub0" and media["pci"] is None
    assert link(node.ns, "vfstub0") is None  # gone from the node
    inpod = link(ns, "sriov0")
    assert inpod["ifindex"] == before["ifindex"]  # the same device
    assert inpod["address"] == media["mac"] and "UP" in inpod["flags"]
    assert [(a["local"], a["prefixlen"]) for a in inpod["addr_info"] if a["family"] == "inet"] == [
        (media["ip"], 24)
    ]

    # another pod wants it: refused, naming the holder; nothing of it left
    ns2, body2 = vf_pod(fab, node, "b")
    from dataplane.api import APIError

    with pytest.raises(APIError, match=f"vfstub0 is held by pod {fab.tag}a plane media"):
        node.api("POST", "/v1/pods", body2)
    # the answer says it is in use (not that the pod exists): the CNI
    # plugin's code for it is 103, not 100 ("attached already")
    from dataplane.cni import ERR_IN_USE, CNIError, _service, api_call

    status, obj = api_call(node.sock, "POST", "/v1/pods", body2)
    assert (status, obj["conflict"]) == (409, "in_use"), obj
    with pytest.raises(CNIError) as err:
        _service({"socket": node.sock, "timeout": 10}, "POST", "/v1/pods", body2)
    assert err.value.code == ERR_IN_USE == 103 and "is held by pod" in err.value.msg
    assert [p["name"] for p in node.api("GET", "/v1/pods")] == [f"{fab.tag}a"]
    assert ipn(ns2, "-o link show").stdout.count("\n") == 1  # lo only

    node.api("DELETE", f"/v1/pods?name={fab.tag}a")
    assert_restored(node, before)
    assert link(ns, "sriov0") is None


def test_vf_on_a_dual_stack_network_gets_its_ipv6_address(fabric, sockdir):
    """On a network with subnet6 the VF gets its IPv6 address too (IPv6
    switched on for it in a namespace that had it off) and is given back
    without it."""
    fab = fabric()
    node = Node(fab, 1, [], fab.mtu)
    net3 = test_dpdk_pods.MEDIA_NET.replace("}", ', subnet6: "fd00:53::/64"}')
    text = node.cfg.read_text().replace("remotes:", net3 + "remotes:")
    node.cfg.write_text(text + f"pod_socket_dir: {sockdir}\n")
    fab.nodes[1] = node
    node.start()
    before = stand_in(node)
    ns, body = vf_pod(fab, node, "a")
    media = [p for p in add(node, body)["planes"] if p["plane"] == "media"][0]
    host = int(media["ip"].rsplit(".", 1)[1])
    assert media["ip6"] == f"fd00:53::{host:x}" and media["prefixlen6"] == 64, media
    inpod = link(ns, "sriov0")
    assert [
        (a["local"], a["prefixlen"]) for a in inpod["addr_info"] if a.get("scope") == "global"
    ] == [
        (media["ip"], 24),
        (media["ip6"], 64),
    ], inpod
    node.api("DELETE", f"/v1/pods?name={fab.tag}a")
    assert_restored(node, before)


def test_missing_vf_refused(fabric, sockdir):
    fab = fabric()
    node = node_with_sockets(fab, sockdir)
    _, body = vf_pod(fab, node, "a", device="novf0")
    from dataplane.api import APIError

    with pytest.raises(APIError, match="vf device novf0: no such network interface"):
        node.api("POST", "/v1/pods", body)
    assert node.api("GET", "/v1/pods") == []
    assert "dp" not in ipn(node.ns, "-o link show").stdout.split("lo:")[1].split("uplink0")[0]


def test_vf_given_back_after_kill_and_replay(fabric, sockdir):
    """kill -9 with the VF in the pod: the new service keeps it there (the
    pod is ready) and gives it back on delete. Then a pod left half-made
    (its record not ready, as after a kill during its add): the replay gives
    the VF back by itself."""
    fab = fabric()
    node = node_with_sockets(fab, sockdir)
    before = stand_in(node)
    ns, body = vf_pod(fab, node, "a")
    add(node, body)

    kill_service(node)
    node.start()
    assert link(ns, "sriov0") is not None
    assert [p["state"] for p in node.api("GET", "/v1/pods")] == ["ready"]
    node.api("DELETE", f"/v1/pods?name={fab.tag}a")
    assert_restored(node, before)

    add(node, body)
    kill_service(node)
    db = state_db(node)
    with db:
        db.execute("UPDATE pods SET state='pending' WHERE name=?", (f"{fab.tag}a",))
    db.close()
    node.start()
    assert node.api("GET", "/v1/pods") == []
    assert_restored(node, before)


def test_dataplane_devices_refused_as_vf(fabric, sockdir):
    """The uplink, a pod's veth and the uplink's tunnel tap are the
    dataplane's: never handed out; nor is a device bound to the node's
    namespace (its loopback, a bridge), which was taken down before the
    move failed. Each is refused before anything changes."""
    fab = fabric()
    node = node_with_sockets(fab, sockdir)
    from dataplane.api import APIError

    [tap] = [x["ifname"] for x in json.loads(ipn(node.ns, "-j link show").stdout)
             if x["ifname"].startswith("dpgso")]  # fmt: skip

    def tc_filters():
        return sh("ip", "netns", "exec", node.ns, "tc", "filter", "show", "dev", tap, "ingress")

    tc_before = tc_filters().stdout
    assert "mirred" in tc_before, tc_before  # its super-frames go to the uplink
    ipn(node.ns, "link add vfbr0 type bridge")
    node.host_links.add("vfbr0")
    ipn(node.ns, "link set vfbr0 up")
    for i, (dev, words) in enumerate(
        (
            ("uplink0", "vf device uplink0 is the dataplane's own (uplink or a pod's veth)"),
            (tap, f"vf device {tap} is the dataplane's own (a node service's tunnel tap"),
            ("lo", "vf device lo is bound to the node's namespace (a loopback, a bridge)"),
            ("vfbr0", "vf device vfbr0 is bound to the node's namespace"),
        )
    ):
        before = link(node.ns, dev)
        _, body = vf_pod(fab, node, f"u{i}", device=dev)
        with pytest.raises(APIError) as e:
            node.api("POST", "/v1/pods", body)
        assert words in str(e.value) and e.value.status in (400, 409), e.value
        assert node.api("GET", "/v1/pods") == []
        now = link(node.ns, dev)
        assert now is not None and (now["ifindex"], now["flags"], now["addr_info"]) == (
            before["ifindex"],
            before["flags"],
            before["addr_info"],
        ), (dev, before, now)
    assert tc_filters().stdout == tc_before  # the tap keeps its redirect


def test_a_vf_add_refused_before_anything_moves(fabric, sockdir):
    """What a VF add cannot do is refused before the device moves, naming
    the field, and leaves the device and the pod's namespace as they were:
    the plane's interface name taken in the pod's namespace already (the
    device was once moved in, failed to be renamed, and the give-back took
    the pod's own interface down for it), and a VLAN, spoof check or trust
    for a device with no PF to apply them (they were ignored: the pod sent
    untagged)."""
    fab = fabric()
    node = node_with_sockets(fab, sockdir)
    before = stand_in(node)
    ns, body = vf_pod(fab, node, "a")
    ipn(ns, "link add sriov0 type veth peer name sriov1")
    ipn(ns, "link set sriov0 up")
    assert "already" in refused(node, body) and "interfaces.media: interface sriov0 exists" in (
        refused(node, body)
    )
    assert "UP" in link(ns, "sriov0")["flags"]  # the pod's own, untouched
    assert node.api("GET", "/v1/pods") == []
    assert_restored(node, before)
    ipn(ns, "link del sriov0")
    for opt, value in (("vlan", 30), ("spoofchk", True), ("trust", True)):
        _, body = vf_pod(fab, node, f"o{opt[0]}", **{opt: value})
        assert refused(node, body).startswith(
            f"interfaces.media.{opt}: vf device vfstub0 is not an SR-IOV VF (no PF found)"
        )
        assert node.api("GET", "/v1/pods") == []
        assert_restored(node, before)
    # vlan 0 and false checks ask nothing of a PF: taken
    _, body = vf_pod(fab, node, "z", vlan=0, spoofchk=False)
    add(node, body)
    node.api("DELETE", f"/v1/pods?name={fab.tag}z")
    assert_restored(node, before)


def test_vf_of_a_pod_gone_without_delete_is_given_back(fabric, sockdir):
    """A pod's namespace deleted without a pod delete while its VF is not
    back on the node (a namespace's teardown is asynchronous; a VF comes
    back to the node's namespace by itself, down, under the pod's name:
    here it waits in a namespace of the test's meanwhile and is moved back
    so). The housekeeping removes the pod; an add asking for the VF
    meanwhile is refused, saying why; once the VF is back, the next round
    gives it back as it was, and a second pod gets it."""
    fab = fabric()
    node = node_with_sockets(fab, sockdir)
    before = stand_in(node)
    ns, body = vf_pod(fab, node, "a")
    add(node, body)
    away = fab.netns(f"{fab.tag}away")
    ipn(ns, f"link set sriov0 netns {away}")
    sh("ip", "netns", "del", ns)
    until(lambda: node.api("GET", "/v1/pods") == [], "pod a removed by the housekeeping")

    ns2, body2 = vf_pod(fab, node, "b")
    msg = refused(node, body2)
    assert f"vfstub0 is held by pod {fab.tag}a plane media: its pod is gone (its namespace " in msg
    assert "the device is not back on this node yet" in msg, msg
    assert node.api("GET", "/v1/pods") == []

    ipn(away, f"link set sriov0 netns {node.ns}")  # back, as the kernel brings it
    until(lambda: link(node.ns, "vfstub0") is not None, "vfstub0 given back")
    assert_restored(node, before)
    assert link(node.ns, "sriov0") is None
    log = node.log()
    assert '"msg": "vf: device of a gone pod given back"' in log, log[-3000:]
    assert '"by": "housekeeping"' in log

    add(node, body2)
    assert link(ns2, "sriov0")["ifindex"] == before["ifindex"]
    node.api("DELETE", f"/v1/pods?name={fab.tag}b")
    assert_restored(node, before)


def test_vf_of_a_live_namespace_kept_of_a_dead_one_freed(fabric, sockdir):
    """A VF whose pod has no record any more (forgotten while the service
    was down) but whose namespace lives: never taken, by the housekeeping
    or by another pod's add. Its namespace deleted, the VF dies with it (a
    stand-in is a virtual device): refused until a device of that name is
    made again, then its record is cleared and the device handed out."""
    fab = fabric()
    node = node_with_sockets(fab, sockdir)
    before = stand_in(node)
    ns, body = vf_pod(fab, node, "a")
    add(node, body)
    kill_service(node)
    db = state_db(node)
    with db:
        for table, col in (("endpoints", "pod"), ("allocations", "pod"), ("pods", "name")):
            db.execute(f"DELETE FROM {table} WHERE {col}=?", (f"{fab.tag}a",))
    db.close()
    node.start()
    from dataplane.podlife import REAP_EVERY_S

    time.sleep(REAP_EVERY_S + 2)  # a housekeeping round at least
    assert link(ns, "sriov0")["ifindex"] == before["ifindex"]  # still the pod's
    _, body2 = vf_pod(fab, node, "b")
    msg = refused(node, body2)
    assert msg.endswith(f"vfstub0 is held by pod {fab.tag}a plane media"), msg
    assert link(ns, "sriov0")["ifindex"] == before["ifindex"]

    sh("ip", "netns", "del", ns)  # the stand-in dies with it
    until(lambda: "not back on this node yet" in refused(node, body2), "refused, saying why")
    ipn(node.ns, "link add link vfwire0 name vfstub0 type macvlan mode bridge")
    ipn(node.ns, f"link set vfstub0 address {VF_MAC} mtu {VF_MTU} up")
    again = link(node.ns, "vfstub0")
    until(
        lambda: "record of a gone pod's device cleared" in node.log(),
        "the record cleared by the housekeeping",
    )
    add(node, body2)
    node.api("DELETE", f"/v1/pods?name={fab.tag}b")
    assert_restored(node, again)


# ------------------------------------------- sysfs discovery, on a fake sysfs
@pytest.fixture
def store(tmp_path):
    """A real SQLite store in tmp_path, of node node1 (the VF records are
    the node's: their keys name it)."""
    from dataplane.store import SqliteStore

    s = SqliteStore(str(tmp_path / "state.db"))
    s.node = "node1"
    yield s
    s.close()


@pytest.fixture
def fake_sysfs(tmp_path, monkeypatch):
    """A PF 0000:03:00.0 (ens1f0) with VF 3 = 0000:03:02.1 (netdev vf0) and
    VF 4 = 0000:03:02.2 bound to a userspace driver (no netdev); another
    device bound to one, 0000:0a:02.4."""
    from dataplane import vf

    pci, net = tmp_path / "bus/pci/devices", tmp_path / "class/net"
    for d in ("0000:03:00.0/net/ens1f0", "0000:03:02.1/net/vf0", "0000:03:02.2", "0000:0a:02.4"):
        (pci / d).mkdir(parents=True)
    net.mkdir(parents=True)
    for name, dev in (("ens1f0", "0000:03:00.0"), ("vf0", "0000:03:02.1")):
        (net / name).mkdir()
        (net / name / "device").symlink_to(pci / dev)
    for i, dev in ((3, "0000:03:02.1"), (4, "0000:03:02.2")):
        (pci / "0000:03:00.0" / f"virtfn{i}").symlink_to(pci / dev)
        (pci / dev / "physfn").symlink_to(pci / "0000:03:00.0")
    monkeypatch.setattr(vf, "SYS_PCI", str(pci))
    monkeypatch.setattr(vf, "SYS_NET", str(net))
    return vf


def test_vf_found_by_name_or_pci_address_with_its_pf(fake_sysfs):
    vf = fake_sysfs
    assert vf.resolve("vf0") == ("vf0", "0000:03:02.1")
    assert vf.resolve("0000:03:02.1") == ("vf0", "0000:03:02.1")
    assert vf.resolve("0000:03:02.2") == (None, "0000:03:02.2")  # vfio-pci: no netdev
    assert vf._pf_of("vf0") == ("ens1f0", 3)
    assert vf._pf_of("ens1f0") == (None, None)
    from dataplane.errors import ConfigError

    # a device the request names and the node lacks: the request's fault
    with pytest.raises(ConfigError, match="0000:03:09.0: no such PCI device"):
        vf.resolve("0000:03:09.0")


def test_a_vf_named_otherwise_is_still_the_one_held_or_the_dataplanes(fake_sysfs, store):
    """A device is held, and the dataplane's own, however the request names
    it: its PCI address in capitals, its interface name or its address."""
    vf = fake_sysfs
    from dataplane.errors import Busy

    args = ("/nonexistent", "sriov0", "02:00:00:00:00:01", "10.0.0.2/24", None, 1500, False)
    store.put_pod("p1", "/nonexistent", {}, node="node1")
    vf.take(store, "p1", "media", "0000:0a:02.4", *args, {})
    with pytest.raises(Busy, match=r"held by pod p1 plane media \(as 0000:0a:02.4\)"):
        vf.take(store, "p2", "media", "0000:0A:02.4", *args, {})
    assert vf.held_devices(store) == ["0000:0a:02.4"]
    # a VF bound to a userspace driver: its VLAN cannot be set from here
    from dataplane.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^interfaces.media.vlan: not applied to vf device"):
        vf.take(store, "p3", "media", "0000:03:02.2", *args, {"vlan": 7})
    assert vf.held_devices(store) == ["0000:0a:02.4"]
    # the uplink's interface, named by its PCI address; a DPDK uplink's
    # address, with or without its domain
    with pytest.raises(Busy, match="vf device 0000:03:02.1 is the dataplane's own"):
        vf.refuse_own("0000:03:02.1", {"vf0"}, [])
    with pytest.raises(Busy, match="vf device vf0 is the dataplane's own"):
        vf.refuse_own("vf0", {"uplink0"}, ["0000:03:02.1"])
    with pytest.raises(Busy, match="vf device 0000:03:02.2 is the dataplane's own"):
        vf.refuse_own("0000:03:02.2", {"uplink0"}, ["03:02.2"])
    vf.refuse_own("0000:03:02.2", {"vf0", "uplink0"}, [None])  # another's: fine


def test_dpdk_mode_vf_is_held_not_moved(fake_sysfs, store):
    """A VF bound to vfio-pci: recorded as held, its PCI address returned,
    nothing moved; another pod is refused; give_back frees it."""
    vf = fake_sysfs
    from dataplane.errors import Busy

    args = ("/nonexistent", "sriov0", "02:00:00:00:00:01", "10.0.0.2/24", None, 1500, False, {})
    store.put_pod("p1", "/nonexistent", {}, node="node1")
    got = vf.take(store, "p1", "media", "0000:03:02.2", *args)
    assert got == {"pci": "0000:03:02.2", "device": "0000:03:02.2"}
    assert json.loads(store.get_meta("vf:node1:0000:03:02.2"))["pod"] == "p1"
    with pytest.raises(Busy, match="held by pod p1 plane media"):
        vf.take(store, "p2", "media", "0000:03:02.2", *args)
    assert vf.give_back(store, "0000:03:02.2") is True
    assert vf.holder(store, "0000:03:02.2") is None


def test_vf_attachment_check_sees_the_pods_interface(fabric, sockdir):
    """CNI CHECK of a VF attachment: the core forwards nothing for a VF, so
    its lack of a core port is no problem; what is checked is the device in
    the pod's namespace (MAC, address, MTU, link state)."""
    fab = fabric()
    node = node_with_sockets(fab, sockdir)
    before = stand_in(node)
    ns = fab.netns(f"{fab.tag}c")
    key = {"container_id": f"{fab.tag}ctr", "ifname": "net1"}
    body = {
        **key,
        "netns": f"/var/run/netns/{ns}",
        "network": "net3",
        "kind": "vf",
        "device": "vfstub0",
    }
    a = node.api("POST", "/v1/attachments", body)
    assert a["kind"] == "vf" and a["port"] is None
    assert node.api("POST", "/v1/attachments/check", key)["problems"] == []
    ipn(ns, "link set net1 address 02:aa:bb:cc:dd:99")
    problems = node.api("POST", "/v1/attachments/check", key)["problems"]
    assert problems == [f"net1 has MAC 02:aa:bb:cc:dd:99, not {a['mac']}"]
    ipn(ns, f"link set net1 address {a['mac']}")
    ipn(ns, "addr flush dev net1")
    ipn(ns, "link set net1 down")
    problems = node.api("POST", "/v1/attachments/check", key)["problems"]
    assert problems == [
        f"net1 has no address, not {a['ip']}/{a['prefixlen']}",
        "net1 is down",
    ], problems
    node.api("DELETE", "/v1/attachments", key)
    assert_restored(node, before)


def test_dpdk_mode_vf_of_a_gone_pod_freed(fake_sysfs, store, tmp_path):
    """A VF bound to vfio-pci whose pod has no record: kept while its
    namespace is there; once it is gone, the next pod asking gets it, and
    the housekeeping's sweep frees it too."""
    vf = fake_sysfs
    from dataplane.errors import Busy

    dev = "0000:03:02.2"
    netns = tmp_path / "netns-p1"  # stands for the namespace's path
    netns.write_text("")
    rest = ("sriov0", "02:00:00:00:00:01", "10.0.0.2/24", None, 1500, False, {})
    vf.take(store, "p1", "media", dev, str(netns), *rest)
    assert vf.held_devices(store) == [dev]
    with pytest.raises(Busy, match="held by pod p1 plane media$"):
        vf.take(store, "p2", "media", dev, "/nonexistent", *rest)
    assert vf.sweep(store) == [] and vf.holder(store, dev)["pod"] == "p1"

    netns.unlink()
    store.put_pod("p1", str(netns), {}, node="node1")
    with pytest.raises(Busy, match="held by pod p1 plane media$"):  # its record: its delete's
        vf.take(store, "p2", "media", dev, "/nonexistent", *rest)
    assert vf.sweep(store) == []

    assert store.delete_pod("p1")
    assert vf.take(store, "p2", "media", dev, "/nonexistent", *rest)["pci"] == dev
    assert vf.holder(store, dev)["pod"] == "p2"
    assert vf.sweep(store) == [dev]  # p2's namespace is gone too
    assert vf.holder(store, dev) is None and vf.held_devices(store) == []


def test_vf_given_back_when_the_recorded_spec_no_longer_fits(fabric, sockdir):
    """A pod whose recorded spec the node's configuration no longer takes
    (its network renamed away, or a check a newer version added): its
    delete still gives the VF back, from the VF's own record."""
    fab = fabric()
    node = node_with_sockets(fab, sockdir)
    before = stand_in(node)
    ns, body = vf_pod(fab, node, "a")
    add(node, body)

    kill_service(node)
    db = state_db(node)
    with db:
        (spec,) = db.execute("SELECT spec FROM pods WHERE name=?", (f"{fab.tag}a",)).fetchone()
        spec = json.loads(spec)
        spec["networks"]["media"] = "gone9"  # no such network on the node any more
        db.execute("UPDATE pods SET spec=? WHERE name=?", (json.dumps(spec), f"{fab.tag}a"))
    db.close()
    node.start()
    assert link(ns, "sriov0") is not None  # kept: the pod still has it
    node.api("DELETE", f"/v1/pods?name={fab.tag}a")
    assert_restored(node, before)
    assert link(ns, "sriov0") is None
