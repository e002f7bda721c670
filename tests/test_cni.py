"""The CNI plugin against the specification: every verb, every MUST that
applies, the error codes, with a real node service (fallback mode) and
network namespaces as containers. The plugin runs as a runtime runs it: an
executable in a CNI bin directory, the CNI environment, stdin, stdout."""

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from tests.cnihost import install_plugin, netconf, run_plugin
from tests.test_service import Node, ping, sh

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

NETWORKS = """  - {name: net1, vni: 101, plane: std, subnet: 192.168.60.0/24, gateway: 192.168.60.1}
  - {name: net2, vni: 102, plane: control, subnet: 192.168.61.0/24}
  - {name: net3, vni: 103, plane: media, subnet: 192.168.62.0/24}"""


class CNINode(Node):
    """A node service with the plugin installed next to it; containers are
    network namespaces this test makes (and removes)."""

    def __init__(self, tmp, tag):
        super().__init__(tmp, tag, networks=NETWORKS)
        self.plugin = install_plugin(str(tmp / "bin"))

    def container(self):
        cid = uuid.uuid4().hex
        ns = f"dpc{self.tag}{cid[:6]}"
        sh("ip", "netns", "add", ns)
        self.netns.append(ns)
        return cid, ns, f"/var/run/netns/{ns}"

    def cni(self, command, conf, cid=None, netns=None, ifname="eth0", args=None):
        code, out, err = run_plugin(self.plugin, command, conf, cid, netns, ifname, args)
        if command == "ADD" and code == 0:
            self.host_links |= {i["name"] for i in out["interfaces"] if "sandbox" not in i}
        return code, out, err

    def conf(self, **kw):
        return netconf(self.sock, **kw)


@pytest.fixture
def plugin(tmp_path):
    return install_plugin(str(tmp_path / "bin"))


def addr_of(result, ifname="eth0"):
    i = next(n for n, x in enumerate(result["interfaces"]) if x["name"] == ifname)
    return next(ip["address"] for ip in result["ips"] if ip["interface"] == i)


# ================================================= no service needed
def test_version_lists_every_supported_version(plugin):
    for asked in ("0.3.1", "0.4.0", "1.0.0", "1.1.0"):
        code, out, _ = run_plugin(plugin, "VERSION", {"cniVersion": asked})
        assert code == 0
        assert out["cniVersion"] == asked
        assert out["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    code, out, _ = run_plugin(plugin, "VERSION", b"")
    assert code == 0 and "1.1.0" in out["supportedVersions"]
    # the specification: the cniVersion given, even one the plugin does not speak
    code, out, _ = run_plugin(plugin, "VERSION", {"cniVersion": "0.2.0"})
    assert code == 0 and out["cniVersion"] == "0.2.0"


def test_error_codes_without_a_service(plugin, tmp_path):
    sock = tmp_path / "none.sock"
    env = dict(container_id="c1", netns="/proc/self/ns/net", ifname="eth0")
    # 1: a version the plugin does not speak, in the spec's error JSON
    code, out, _ = run_plugin(plugin, "ADD", netconf(sock, version="9.9.9"), **env)
    assert code != 0 and out["code"] == 1 and out["msg"] and "supported" in out["details"]
    # 1: CHECK before 0.4.0, GC and STATUS before 1.1.0
    assert run_plugin(plugin, "CHECK", netconf(sock, version="0.3.1"), **env)[1]["code"] == 1
    assert run_plugin(plugin, "GC", netconf(sock, version="1.0.0"))[1]["code"] == 1
    assert run_plugin(plugin, "STATUS", netconf(sock, version="1.0.0"))[1]["code"] == 1
    # 6: not JSON
    code, out, _ = run_plugin(plugin, "ADD", b"{not json", **env)
    assert code != 0 and out["code"] == 6
    code, out, _ = run_plugin(plugin, "ADD", b"[" * 100000, **env)  # past the parser's depth
    assert code != 0 and out["code"] == 6 and out["details"] == "nested too deeply", out
    # 7: no network, a bad kind, a relative socket
    conf = netconf(sock)
    del conf["network"]
    assert run_plugin(plugin, "ADD", conf, **env)[1]["code"] == 7
    assert run_plugin(plugin, "ADD", netconf(sock, kind="tap"), **env)[1]["code"] == 7
    assert run_plugin(plugin, "ADD", {**netconf(sock), "socket": "x.sock"}, **env)[1]["code"] == 7
    # 4: the environment; the message names the variable
    for missing in ("container_id", "netns", "ifname"):
        code, out, _ = run_plugin(plugin, "ADD", netconf(sock), **{**env, missing: None})
        assert code != 0 and out["code"] == 4, out
        assert "CNI_" in out["msg"]
    assert run_plugin(plugin, "ADD", netconf(sock), **{**env, "ifname": "a/b"})[1]["code"] == 4
    assert run_plugin(plugin, "ADD", netconf(sock), **{**env, "container_id": "-x"})[1]["code"] == 4
    assert run_plugin(plugin, "FROB", netconf(sock), **env)[1]["code"] == 4
    # 7: a timeout no socket takes, a chained plugin's prevResult of the wrong
    # shape: refused before anything is attached, not a traceback
    for bad, msg in (
        ({"timeout": 1e300}, "timeout: 1e+300 is not a number of seconds in (0, 3600]"),
        ({"prevResult": {"interfaces": 5}}, "prevResult.interfaces: is not a list"),
        ({"prevResult": {"ips": ["10.0.0.1/24"]}}, "prevResult.ips[0]: '10.0.0.1/24' is not"),
        ({"prevResult": []}, "prevResult: is not an object"),
        (
            {"prevResult": {"interfaces": [{"name": "eth0", "mac": 5}]}},
            "prevResult.interfaces[0].mac: 5 is not a string",
        ),
        (
            {"prevResult": {"ips": [{"address": "10.0.0.1/24", "interface": "0"}]}},
            "prevResult.ips[0].interface: '0' is not an index",
        ),
        ({"prevResult": {"routes": [{"dst": ["0.0.0.0/0"]}]}}, "prevResult.routes[0].dst: ["),
    ):
        for verb in ("ADD", "CHECK"):
            code, out, _ = run_plugin(plugin, verb, {**netconf(sock), **bad}, **env)
            assert code != 0 and out["code"] == 7 and out["msg"].startswith(msg), out
        # a DEL does not read it, and is to succeed whatever the runtime
        # cached: it goes on to the service (here: down, so code 11)
        if "prevResult" in bad:
            code, out, _ = run_plugin(plugin, "DEL", {**netconf(sock), **bad}, **env)
            assert code != 0 and out["code"] == 11, (bad, out)
    # a DEL of an ID no ADD could have taken (longer than 128 characters):
    # nothing to delete, success without asking the service
    for cid in ("x" * 129, "-x"):
        assert run_plugin(plugin, "DEL", netconf(sock), **{**env, "container_id": cid}) == (
            0,
            None,
            "",
        )
    # 11: the service does not answer: ADD, DEL and CHECK are to be retried,
    # a DEL never claims success (the address would leak)
    for verb in ("ADD", "DEL"):
        code, out, _ = run_plugin(plugin, verb, netconf(sock), **env)
        assert code != 0 and out["code"] == 11, out
        assert str(sock) in out["details"]
    # 51: STATUS while no service runs (its socket missing)
    code, out, _ = run_plugin(plugin, "STATUS", netconf(sock, version="1.1.0"))
    assert code != 0 and out["code"] == 51, out


def test_json_without_the_json_module():
    """The plugin reads and writes JSON with the interpreter's C scanner and
    encoder: what json.loads and json.dumps give, and json's own error for
    what is not JSON."""
    from dataplane.cni import json_dumps, json_loads

    for text in (
        '{"cniVersion": "1.0.0", "a": [1, -2.5e3, "x\\u00e9\\n", true, false, null, {}]}',
        "  [ ]\n",
        '"only a string"',
        "7",
        '{"deep": ' * 50 + "0" + "}" * 50,
        '{"n": NaN, "i": -Infinity}',
    ):
        want = json.loads(text)
        for given in (text, text.encode()):
            got = json_loads(given)
            assert json.dumps(got) == json.dumps(want), (text, got)
        assert json_dumps(want) == json.dumps(want)
    assert json_dumps({"é": ["\u2603", 1.5, None]}) == json.dumps({"é": ["\u2603", 1.5, None]})
    for bad in ("{not json", '{"a": 1} x', "", '{"a": }', b"\xff\xfe", "[1, 2"):
        with pytest.raises(ValueError) as got:
            json_loads(bad)
        with pytest.raises(ValueError) as want:
            json.loads(bad)
        assert str(got.value) == str(want.value)


def test_install_leaves_compiled_code(tmp_path):
    """``dataplane-cni install`` writes a launcher and the plugin's module
    next to it, compiled for this interpreter; the launcher finds the
    module from its own path, also through a symbolic link."""
    import importlib.util

    bin_dir = tmp_path / "bin"
    plugin = install_plugin(str(bin_dir))
    module = bin_dir / "dataplane-cni.d" / "dataplane_cni.py"
    assert module.is_file() and os.path.exists(importlib.util.cache_from_source(str(module)))
    assert str(bin_dir) not in open(plugin).read()  # no path of the installer's view
    link = tmp_path / "elsewhere" / "dataplane-cni"
    link.parent.mkdir()
    link.symlink_to(plugin)
    for exe in (plugin, str(link)):
        code, out, _ = run_plugin(exe, "VERSION", {"cniVersion": "1.0.0"})
        assert code == 0 and out["cniVersion"] == "1.0.0"


def test_device_info_file(tmp_path):
    from dataplane.cni import write_device_info

    path = tmp_path / "d" / "info.json"
    write_device_info(str(path), {"kind": "memif", "socket_path": "/run/dp/memif-a.sock"})
    assert json.loads(path.read_text()) == {
        "type": "memif",
        "version": "1.1.0",
        "memif": {"role": "master", "mode": "ethernet", "path": "/run/dp/memif-a.sock"},
    }
    write_device_info(str(path), {"kind": "vhost-user", "socket_path": "/run/dp/vu.sock"})
    assert json.loads(path.read_text())["vhost-user"] == {
        "mode": "server",
        "path": "/run/dp/vu.sock",
    }
    write_device_info(str(path), {"kind": "vf", "pci_address": "0000:3b:02.1"})
    assert json.loads(path.read_text())["pci"] == {"pci-address": "0000:3b:02.1"}


# ================================================= with the node service
def test_add_result_and_the_container_interface(cnode):
    cid, ns, path = cnode.container()
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ims;K8S_POD_NAME=cscf-0"
    code, res, err = cnode.cni("ADD", cnode.conf(version="1.1.0"), cid, path, args=args)
    assert code == 0, (res, err)
    assert res["cniVersion"] == "1.1.0"
    host, pod = res["interfaces"]
    assert host["name"].startswith("dp") and len(host["mac"]) == 17 and "sandbox" not in host
    assert pod["name"] == "eth0" and pod["sandbox"] == path and pod["mtu"] == 1450
    assert res["ips"] == [
        {"address": res["ips"][0]["address"], "gateway": "192.168.60.1", "interface": 1}
    ]
    assert res["ips"][0]["address"].startswith("192.168.60.")
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "192.168.60.1"}]
    # what the result says is what the container has
    link = sh("ip", "-n", ns, "-j", "addr", "show", "eth0").stdout
    info = json.loads(link)[0]
    assert info["address"] == pod["mac"] and info["mtu"] == 1450
    assert any(f"{a['local']}/{a['prefixlen']}" == addr_of(res) for a in info["addr_info"])
    assert "default via 192.168.60.1" in sh("ip", "-n", ns, "route").stdout
    # the identity is recorded with the Kubernetes pod
    (a,) = cnode.api("GET", "/v1/attachments")
    assert (a["container_id"], a["ifname"], a["k8s_namespace"], a["k8s_pod"]) == (
        cid,
        "eth0",
        "ims",
        "cscf-0",
    )
    assert a["cni_network"] == "std-net" and a["kind"] == "veth" and a["port"] is not None
    out = cnode.cli("attachment", "list").stdout
    assert cid[:12] in out and "ims/cscf-0" in out and addr_of(res).split("/")[0] in out
    # a 0.4.0 result carries the address's version, and no field of 1.1.0
    cid2, _, path2 = cnode.container()
    code, res, _ = cnode.cni(
        "ADD", cnode.conf(version="0.4.0"), cid2, path2, args="K8S_POD_NAME=p2"
    )
    assert code == 0 and res["ips"][0]["version"] == "4"
    assert all("mtu" not in i for i in res["interfaces"])
    # a runtime that gives a pod name and no namespace (podman)
    out = cnode.cli("attachment", "list").stdout
    (row,) = [line for line in out.splitlines() if line.startswith(cid2[:12])]
    assert row.endswith(" p2") and "None" not in row
    # the ID as the list shows it (12 characters) removes the attachment
    cnode.cli("attachment", "del", cid2[:12], "eth0")
    assert [a["container_id"] for a in cnode.api("GET", "/v1/attachments")] == [cid]
    # one that matches nothing is an error, not a silent success
    r = cnode.cli("attachment", "del", cid2[:12], "eth0", check=False)
    assert r.returncode != 0 and f"no attachment of container {cid2[:12]}" in r.stderr


def test_add_twice_fails_and_keeps_the_first(cnode):
    cid, ns, path = cnode.container()
    code, res, _ = cnode.cni("ADD", cnode.conf(), cid, path)
    assert code == 0
    code, out, _ = cnode.cni("ADD", cnode.conf(), cid, path)
    assert code != 0 and out["code"] == 100 and "attached already" in out["msg"]
    assert cnode.cni("CHECK", cnode.conf(prevResult=res), cid, path)[0] == 0
    # another interface of the same container is another attachment
    code, res2, _ = cnode.cni(
        "ADD", cnode.conf(network="net2", name="control-net"), cid, path, ifname="net1"
    )
    assert code == 0 and addr_of(res2, "net1").startswith("192.168.61.")
    assert "routes" not in res2  # no default route off the std plane


def test_an_add_given_up_on_is_undone(cnode):
    """An ADD the plugin stops waiting for (its timeout) may still be done
    by the service: the plugin answers 11 (try again later) and undoes it,
    so that the runtime's retry attaches anew instead of finding it
    attached already (100) every time. The service takes the ADD, its undoing
    DEL and the retried ADD in the order they came."""
    import sqlite3

    cid, ns, path = cnode.container()
    # the store's write lock held: the service's ADD waits for it (up to
    # its SQLite timeout), past the plugin's timeout, then finishes
    db = sqlite3.connect(str(cnode.tmp / "state" / "state.db"), isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    try:
        code, out, err = cnode.cni("ADD", cnode.conf(timeout=1), cid, path)
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert code != 0 and out["code"] == 11, (out, err)
    assert out["details"].startswith(f"the node service on {cnode.sock} did not answer"), out
    assert "a DEL of it was sent, not answered either: it follows the ADD" in out["details"], out
    # the retry: attached, once
    code, res, err = cnode.cni("ADD", cnode.conf(), cid, path)
    assert code == 0, (res, err)
    (a,) = cnode.api("GET", "/v1/attachments")
    assert a["container_id"] == cid and a["state"] == "ready", a
    assert cnode.cni("CHECK", cnode.conf(prevResult=res), cid, path)[0] == 0
    assert cnode.cni("DEL", cnode.conf(), cid, path)[0] == 0
    assert cnode.api("GET", "/v1/attachments") == [] and link_names(ns) == {"lo"}


def test_del_leaves_another_configurations_attachment(cnode):
    """An ADD refused because another network configuration's attachment
    has that interface name names that configuration; the DEL the runtime
    sends after it (the specification asks for one) succeeds and leaves
    the other's attachment working. A DEL that names no configuration (a
    plugin from before it was sent) deletes whatever is attached."""
    cid, ns, path = cnode.container()
    std = cnode.conf()
    code, res, _ = cnode.cni("ADD", std, cid, path)
    assert code == 0, res
    ctl = cnode.conf(network="net2", name="control-net")
    code, out, _ = cnode.cni("ADD", ctl, cid, path)
    assert code != 0 and out["code"] == 100, out
    assert out["msg"].startswith(
        f"container {cid} interface eth0 is attached already by network configuration std-net "
    ), out
    assert cnode.cni("DEL", ctl, cid, path) == (0, None, "")
    (a,) = cnode.api("GET", "/v1/attachments")
    assert (a["cni_network"], a["state"]) == ("std-net", "ready"), a
    assert cnode.cni("CHECK", {**std, "prevResult": res}, cid, path)[0] == 0
    assert "eth0" in link_names(ns)
    # its own configuration's DEL takes it away
    assert cnode.cni("DEL", std, cid, path) == (0, None, "")
    assert cnode.api("GET", "/v1/attachments") == [] and link_names(ns) == {"lo"}
    # without the configuration's name: whatever is attached, as before
    assert cnode.cni("ADD", std, cid, path)[0] == 0
    nameless = {k: v for k, v in ctl.items() if k != "name"}
    assert cnode.cni("DEL", nameless, cid, path) == (0, None, "")
    assert cnode.api("GET", "/v1/attachments") == []
    assert cnode.cni("ADD", std, cid, path)[0] == 0
    body = {"container_id": cid, "ifname": "eth0"}
    assert cnode.api("DELETE", "/v1/attachments", body)["deleted"]
    assert cnode.api("GET", "/v1/attachments") == [] and link_names(ns) == {"lo"}
    # a service from before cni_network refuses it as any unknown field,
    # by name: the words the plugin's DEL falls back on (sent as before)
    from dataplane.cni import api_call

    status, obj = api_call(cnode.sock, "DELETE", "/v1/attachments", dict(body, cni_netwrk="x"))
    assert status == 400 and obj["error"].startswith("cni_netwrk: unknown field"), obj


def test_interface_names_no_container_can_have_are_the_environments_fault(cnode):
    """CNI_IFNAME a kernel template ('eth%d': the kernel would number it) or
    the container's loopback: error 4 naming CNI_IFNAME, as for any
    malformed variable, from the plugin itself; a DEL of one succeeds (no
    ADD can have made it)."""
    cid, ns, path = cnode.container()
    for bad, why in (
        ("eth%d", "is not an interface name but a kernel template"),
        ("lo", "is the container's loopback interface"),
    ):
        for verb in ("ADD", "CHECK"):
            conf = cnode.conf(prevResult={}) if verb == "CHECK" else cnode.conf()
            code, out, _ = cnode.cni(verb, conf, cid, path, ifname=bad)
            assert code != 0 and out["code"] == 4, (verb, out)
            assert out["msg"].startswith(f"CNI_IFNAME: {bad!r} {why}"), out
        assert cnode.cni("DEL", cnode.conf(), cid, path, ifname=bad) == (0, None, "")
    assert cnode.api("GET", "/v1/attachments") == [] and link_names(ns) == {"lo"}


def test_two_containers_reach_each_other_through_the_core(cnode):
    (c1, ns1, p1), (c2, _, p2) = cnode.container(), cnode.container()
    r1 = cnode.cni("ADD", cnode.conf(network="net3", name="media-net", plane="media"), c1, p1)[1]
    r2 = cnode.cni("ADD", cnode.conf(network="net3", name="media-net", ip="192.168.62.20"), c2, p2)[
        1
    ]
    assert addr_of(r2) == "192.168.62.20/24"
    r = ping(ns1, "192.168.62.20")
    assert r.returncode == 0, r.stdout + r.stderr
    assert addr_of(r1) != addr_of(r2)


def test_check(cnode):
    cid, ns, path = cnode.container()
    conf = cnode.conf()
    code, res, _ = cnode.cni("ADD", conf, cid, path)
    assert cnode.cni("CHECK", {**conf, "prevResult": res}, cid, path)[0] == 0
    # without prevResult: an invalid configuration for CHECK
    assert cnode.cni("CHECK", conf, cid, path)[1]["code"] == 7
    # prevResult that disagrees with what was made
    bad = json.loads(json.dumps(res))
    bad["ips"][0]["address"] = "192.168.60.250/24"
    code, out, _ = cnode.cni("CHECK", {**conf, "prevResult": bad}, cid, path)
    assert code != 0 and out["code"] == 102 and "192.168.60.250" in out["msg"]
    # the container's interface changed behind our back
    sh("ip", "-n", ns, "addr", "flush", "dev", "eth0")
    code, out, _ = cnode.cni("CHECK", {**conf, "prevResult": res}, cid, path)
    assert code != 0 and out["code"] == 102 and addr_of(res) in out["msg"]
    # a later chained plugin may move the default route to a table of its
    # own (sbr) and lower the MTU (tuning); not above the network's MTU
    sh("ip", "-n", ns, "addr", "add", addr_of(res), "dev", "eth0")
    gw = res["routes"][0]["gw"]
    sh("ip", "-n", ns, "route", "add", "default", "via", gw, "dev", "eth0", "table", "100")
    sh("ip", "-n", ns, "route", "del", "default", "table", "main", check=False)
    assert "default" not in sh("ip", "-n", ns, "route", "show", "table", "main").stdout
    mtu = json.loads(sh("ip", "-n", ns, "-j", "link", "show", "eth0").stdout)[0]["mtu"]
    sh("ip", "-n", ns, "link", "set", "eth0", "mtu", str(mtu - 100))
    code, out, _ = cnode.cni("CHECK", {**conf, "prevResult": res}, cid, path)
    assert code == 0, out
    sh("ip", "-n", ns, "link", "set", "eth0", "mtu", str(mtu + 100))
    code, out, _ = cnode.cni("CHECK", {**conf, "prevResult": res}, cid, path)
    assert code != 0 and out["code"] == 102
    assert f"has MTU {mtu + 100}, above the network's {mtu}" in out["msg"]
    sh("ip", "-n", ns, "link", "set", "eth0", "mtu", str(mtu))
    sh("ip", "-n", ns, "route", "del", "default", "table", "100")
    code, out, _ = cnode.cni("CHECK", {**conf, "prevResult": res}, cid, path)
    assert code != 0 and out["code"] == 102 and f"no default route via {gw}" in out["msg"]
    # an attachment that does not exist
    code, out, _ = cnode.cni("CHECK", {**conf, "prevResult": res}, "nosuch", path)
    assert code != 0 and out["code"] == 3
    assert out["msg"] == "container nosuch interface eth0 is not attached on this node"


def test_del_is_idempotent(cnode):
    cid, ns, path = cnode.container()
    code, res, _ = cnode.cni("ADD", cnode.conf(), cid, path)
    host = res["interfaces"][0]["name"]
    assert cnode.cni("DEL", cnode.conf(), cid, path)[0] == 0
    assert not os.path.exists(f"/sys/class/net/{host}")
    assert cnode.api("GET", "/v1/attachments") == []
    # again, without a namespace, for a container never seen
    assert cnode.cni("DEL", cnode.conf(), cid, path) == (0, None, "")
    assert cnode.cni("DEL", cnode.conf(), cid, None)[0] == 0
    assert cnode.cni("DEL", cnode.conf(), "never-added", None)[0] == 0
    # a sandbox that is no namespace path (a VM's id): DEL does not enter it
    assert cnode.cni("DEL", cnode.conf(), cid, "vm-sandbox-7")[0] == 0
    # the next container (another MAC) gets the next address, not the freed one
    c2, _, p2 = cnode.container()
    ip = addr_of(res).split("/")[0]
    nxt = addr_of(cnode.cni("ADD", cnode.conf(), c2, p2)[1])
    assert nxt.split("/")[0] == str(ipaddress.IPv4Address(ip) + 1)
    # the freed one is free: asked for, it is given
    c3, _, p3 = cnode.container()
    assert addr_of(cnode.cni("ADD", cnode.conf(ip=ip), c3, p3)[1]) == addr_of(res)


def test_del_without_namespace_after_the_container_died(cnode):
    cid, ns, path = cnode.container()
    res = cnode.cni("ADD", cnode.conf(), cid, path)[1]
    host = res["interfaces"][0]["name"]
    sh("ip", "link", "del", host)  # what the kernel does when the netns goes
    sh("ip", "netns", "del", ns)
    assert cnode.cni("DEL", cnode.conf(), cid, None)[0] == 0
    assert cnode.api("GET", "/v1/attachments") == []
    assert cnode.api("GET", "/v1/pods") == []


def test_attachments_survive_a_restart(cnode):
    (c1, _, p1), (c2, ns2, p2) = cnode.container(), cnode.container()
    r1 = cnode.cni("ADD", cnode.conf(), c1, p1)[1]
    r2 = cnode.cni("ADD", cnode.conf(), c2, p2)[1]
    cnode.stop()
    # while the service is down, DEL is to be retried, not a false success
    code, out, _ = cnode.cni("DEL", cnode.conf(), c1, p1)
    assert code != 0 and out["code"] == 11
    # container 2 dies while the service is down (a node reboot)
    sh("ip", "link", "del", r2["interfaces"][0]["name"])
    sh("ip", "netns", "del", ns2)
    cnode.start()
    a, gone = cnode.api("GET", "/v1/attachments")
    assert a["container_id"] == c1 and a["port"] is not None and a["state"] == "ready"
    # container 2's record stays, shown as gone, until the runtime's DEL
    assert gone["container_id"] == c2 and gone["state"] == "gone" and gone["port"] is None
    line = next(ln for ln in cnode.cli("attachment", "list").stdout.splitlines() if c2[:12] in ln)
    assert "gone: its pod is not there (DEL or GC forgets it)" in line, line
    assert cnode.api("GET", "/v1/attachments/ready")["attachments"] == 1
    assert cnode.cni("CHECK", cnode.conf(prevResult=r1), c1, p1)[0] == 0
    # CHECK of container 2: a difference (102), not an unknown container
    # (3), which would tell the runtime no DEL is needed
    code, out, _ = cnode.cni("CHECK", cnode.conf(prevResult=r2), c2, p2)
    assert code != 0 and out["code"] == 102, out
    assert out["msg"] == f"container {c2} interface eth0: its pod is gone (a DEL or GC forgets it)"
    assert cnode.cni("DEL", cnode.conf(), c2, None)[0] == 0
    assert [a["container_id"] for a in cnode.api("GET", "/v1/attachments")] == [c1]
    assert cnode.cni("DEL", cnode.conf(), c1, p1)[0] == 0
    assert cnode.api("GET", "/v1/attachments") == []


def test_gc_keeps_only_the_valid_attachments(cnode):
    (c1, _, p1), (c2, _, p2), (c3, _, p3) = [cnode.container() for _ in range(3)]
    v = "1.1.0"
    assert cnode.cni("ADD", cnode.conf(version=v), c1, p1)[0] == 0
    assert cnode.cni("ADD", cnode.conf(version=v), c2, p2)[0] == 0
    # another network configuration's attachment is not ours to collect
    other = cnode.conf(version=v, name="control-net", network="net2")
    assert cnode.cni("ADD", other, c3, p3, ifname="net1")[0] == 0
    gc = cnode.conf(
        version=v, **{"cni.dev/valid-attachments": [{"containerID": c1, "ifname": "eth0"}]}
    )
    code, out, err = cnode.cni("GC", gc)
    assert code == 0, (out, err)
    left = {(a["container_id"], a["cni_network"]) for a in cnode.api("GET", "/v1/attachments")}
    assert left == {(c1, "std-net"), (c3, "control-net")}
    # the 1.1.0 text's name for the list; null (a runtime with no attachment
    # of it left, Go's nil slice): nothing is in use
    gc = cnode.conf(version=v, **{"cni.dev/attachments": [{"containerID": c1, "ifname": "eth0"}]})
    assert cnode.cni("GC", gc)[0] == 0
    assert {a["container_id"] for a in cnode.api("GET", "/v1/attachments")} == {c1, c3}
    gc = cnode.conf(version=v, name="control-net", **{"cni.dev/valid-attachments": None})
    assert cnode.cni("GC", gc)[0] == 0
    left = {(c1, "std-net")}
    assert {
        (a["container_id"], a["cni_network"]) for a in cnode.api("GET", "/v1/attachments")
    } == left
    # without the list, or with an entry that names no interface, GC is
    # refused: it would collect attachments still in use
    key = "cni.dev/valid-attachments"
    code, out, _ = cnode.cni("GC", cnode.conf(version=v))
    assert code != 0 and out["code"] == 7 and out["msg"] == f"{key}: missing"
    code, out, _ = cnode.cni("GC", cnode.conf(version=v, **{key: [{"containerID": c1}]}))
    assert code != 0 and out["code"] == 7 and out["msg"] == f"{key}[0].ifname: None is missing"
    after = {(a["container_id"], a["cni_network"]) for a in cnode.api("GET", "/v1/attachments")}
    assert after == left


def test_del_and_gc_complete_whatever_the_add_fields_say(cnode):
    """DEL and GC are best-effort (the specification): a configuration
    edited since its pods were added, with fields ADD would refuse, still
    takes them away - else the pod stays Terminating and its address, MAC
    and port leak."""
    v = "1.1.0"
    (c1, _, p1), (c2, _, p2) = cnode.container(), cnode.container()
    r1 = cnode.cni("ADD", cnode.conf(version=v), c1, p1)[1]
    assert cnode.cni("ADD", cnode.conf(version=v), c2, p2)[0] == 0
    bad = {
        "kind": "macvlan",
        "options": [],
        "plane": 3,
        "dhcpServer": "yes",
        "runtimeConfig": 5,
        "timeout": 1e300,
    }
    # still refused where they are read, naming the field
    code, out, _ = cnode.cni("ADD", {**cnode.conf(version=v), **bad}, c1, p1, ifname="net9")
    assert code != 0 and out["code"] == 7 and out["msg"].startswith("kind: 'macvlan'"), out
    assert cnode.cni("DEL", {**cnode.conf(version=v), **bad}, c1, p1) == (0, None, "")
    assert not os.path.exists(f"/sys/class/net/{r1['interfaces'][0]['name']}")
    assert [a["container_id"] for a in cnode.api("GET", "/v1/attachments")] == [c2]
    gc = {**cnode.conf(version=v), **bad, "cni.dev/valid-attachments": []}
    code, out, err = cnode.cni("GC", gc)
    assert code == 0, (out, err)
    assert cnode.api("GET", "/v1/attachments") == []
    assert cnode.api("GET", "/v1/pods") == []
    # a socket that is no path is still refused: the DEL would not know
    # where the service is
    code, out, _ = cnode.cni("DEL", {**cnode.conf(version=v), "socket": "x.sock"}, c1, p1)
    assert code != 0 and out["code"] == 7 and out["msg"].startswith("socket: 'x.sock'"), out


def test_status_waits_out_a_busy_service(cnode):
    """A service serving its most connections at once answers 503: STATUS
    asks again while the configuration's timeout lasts, as ADD does, rather
    than telling the runtime the network is not ready (50)."""
    import socket
    import threading

    from dataplane.api import MAX_CONNECTIONS

    held = []
    for _ in range(MAX_CONNECTIONS):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(cnode.sock))
        held.append(s)
    # the held connections have sent nothing: each is being served (the
    # service waits for its request) until closed
    release = threading.Timer(2.5, lambda: [s.close() for s in held])
    release.start()
    try:
        code, out, err = cnode.cni("STATUS", cnode.conf(version="1.1.0", timeout=20))
    finally:
        release.cancel()
        for s in held:
            s.close()
    assert (code, out) == (0, None), (out, err)
    # the timeout spent busy: 50, saying so
    held = []
    for _ in range(MAX_CONNECTIONS):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(cnode.sock))
        held.append(s)
    try:
        code, out, _ = cnode.cni("STATUS", cnode.conf(version="1.1.0", timeout=1))
    finally:
        for s in held:
            s.close()
    assert code != 0 and out["code"] == 50 and "busy" in out["details"], out


def test_status(cnode):
    """Ready while the service answers; with no service running, 51: no ADD
    and the node's pods not forwarded (50 is for a service that is there
    but cannot take an ADD: test_status_waits_out_a_busy_service)."""
    conf = cnode.conf(version="1.1.0")
    assert cnode.cni("STATUS", conf) == (0, None, "")
    cnode.stop()
    code, out, _ = cnode.cni("STATUS", conf)
    assert code != 0 and out["code"] == 51, out
    assert out["msg"].startswith("the node service is not running"), out
    cnode.start()
    assert cnode.cni("STATUS", conf)[0] == 0


def test_a_dhcp_server_container(cnode):
    """dhcpServer: true reaches the pod spec as dhcp_server for the plane
    (what the guard lets through: tests/test_guard_*.py); false or absent,
    nothing."""
    (c1, _, p1), (c2, _, p2) = cnode.container(), cnode.container()
    assert cnode.cni("ADD", cnode.conf(dhcpServer=True), c1, p1)[0] == 0
    assert cnode.cni("ADD", cnode.conf(), c2, p2)[0] == 0
    from dataplane.store.sqlite import SqliteStore

    store = SqliteStore(str(cnode.tmp / "state" / "state.db"))
    specs = {
        a["container_id"]: store.pod(a["name"])["spec"] for a in cnode.api("GET", "/v1/attachments")
    }
    store.close()
    assert specs[c1].get("dhcp_server") == ["std"] and "dhcp_server" not in specs[c2], specs


def test_bad_requests_name_the_problem(cnode):
    cid, ns, path = cnode.container()
    code, out, _ = cnode.cni("ADD", cnode.conf(network="net9"), cid, path)
    assert out["code"] == 7 and "net9" in out["msg"]
    code, out, _ = cnode.cni("ADD", cnode.conf(network="net2", plane="media"), cid, path)
    assert out["code"] == 7 and "belongs to plane control" in out["msg"]
    code, out, _ = cnode.cni("ADD", cnode.conf(ip="10.0.0.1"), cid, path)
    assert out["code"] == 7 and out["msg"].startswith("ip: 10.0.0.1 is outside"), out
    code, out, _ = cnode.cni("ADD", cnode.conf(), cid, "/var/run/netns/nosuch-ns")
    assert out["code"] == 3 and "nosuch-ns" in out["msg"]
    code, out, _ = cnode.cni("ADD", cnode.conf(kind="vf", options=[1]), cid, path)
    assert out["code"] == 7 and "options" in out["msg"]
    # the runtime's ips capability: one IPv4 address of the network's subnet,
    # never an IPv6 one to choose, nor another prefix length
    rc = {"runtimeConfig": {"ips": ["192.168.60.77/24", "fd00::7/64"]}}
    code, out, _ = cnode.cni("ADD", cnode.conf(**rc), cid, path)
    assert out["code"] == 7 and out["msg"].startswith("runtimeConfig.ips: fd00::7/64:"), out
    rc = {"runtimeConfig": {"ips": [{"address": "192.168.60.77/24"}]}}
    code, out, _ = cnode.cni("ADD", cnode.conf(**rc), cid, path)
    assert out["code"] == 7 and "{'address': '192.168.60.77/24'} is not an address" in out["msg"]
    rc = {"runtimeConfig": {"ips": ["192.168.60.77/24", "192.168.60.78/24"]}}
    code, out, _ = cnode.cni("ADD", cnode.conf(**rc), cid, path)
    assert out["code"] == 7 and "a plane has one IPv4 address" in out["msg"], out
    rc = {"runtimeConfig": {"ips": ["192.168.60.77/16"]}}
    code, out, _ = cnode.cni("ADD", cnode.conf(**rc), cid, path)
    assert out["code"] == 7 and out["msg"] == (
        "ip: 192.168.60.77/16: network net1 is a /24, not a /16"
    ), out
    assert cnode.api("GET", "/v1/attachments") == []  # that ADD kept nothing
    # an ips capability that is not a list is refused, not ignored (the
    # container would get another address than the one asked for)
    rc = {"runtimeConfig": {"ips": "192.168.60.77/24"}}
    code, out, _ = cnode.cni("ADD", cnode.conf(**rc), cid, path)
    assert out["code"] == 7 and out["msg"].startswith(
        "runtimeConfig.ips: '192.168.60.77/24' is not a list"
    ), out
    # what the environment gave (CNI_NETNS, CNI_ARGS' IP and MAC) and the
    # service refuses is the environment's fault (4), named as the runtime
    # knows it
    code, out, _ = cnode.cni("ADD", cnode.conf(), cid, "/etc/hostname")
    assert out["code"] == 4 and out["msg"].startswith(
        "CNI_NETNS: /etc/hostname is not a network namespace"
    ), out
    code, out, _ = cnode.cni("ADD", cnode.conf(), cid, path, args="IP=192.168.60.300")
    assert out["code"] == 4 and out["msg"].startswith("CNI_ARGS IP: '192.168.60.300'"), out
    code, out, _ = cnode.cni("ADD", cnode.conf(), cid, path, args="MAC=zz")
    assert out["code"] == 4 and out["msg"].startswith("CNI_ARGS MAC: 'zz'"), out
    code, out, _ = cnode.cni("ADD", cnode.conf(), cid, path, args="IP=192.168.60.77/16")
    assert out["code"] == 4 and out["msg"].startswith(
        "CNI_ARGS IP: 192.168.60.77/16: network net1 is a /24, not a /16"
    ), out
    # the same address in the configuration is the configuration's (7)
    code, out, _ = cnode.cni("ADD", cnode.conf(ip="192.168.60.300"), cid, path)
    assert out["code"] == 7 and out["msg"].startswith("ip: '192.168.60.300'"), out
    assert cnode.api("GET", "/v1/attachments") == []
    # the kind is the kind's, not an option's
    code, out, _ = cnode.cni("ADD", cnode.conf(kind="memif", options={"kind": "veth"}), cid, path)
    assert out["code"] == 7 and out["msg"].startswith("options.kind: the kind is 'memif'"), out
    # a veth has no options to give
    code, out, _ = cnode.cni("ADD", cnode.conf(options={"uid": 1}), cid, path)
    assert out["code"] == 7 and out["msg"].startswith("options: {'uid': 1}: kind veth")
    # errors name what the configuration says (ip, mac), not the pod spec
    code, out, _ = cnode.cni("ADD", cnode.conf(mac="zz"), cid, path)
    assert out["code"] == 7 and out["msg"].startswith("mac: 'zz'"), out
    # an interface of that name is in the container already: named as the
    # runtime knows it, not by the service's pod name
    c2, ns2, p2 = cnode.container()
    sh("ip", "-n", ns2, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    code, out, _ = cnode.cni("ADD", cnode.conf(), c2, p2)
    assert out["code"] == 100, out
    assert out["msg"].startswith(
        f"container {c2} interface eth0 plane std: interface eth0 exists in the container's "
        f"namespace {p2} already"
    ), out
    code, out, _ = cnode.cni("ADD", cnode.conf(dhcpServer="yes"), cid, path)
    assert out["code"] == 7 and out["msg"] == "dhcpServer: 'yes' is not true or false", out
    # no cniVersion at all
    code, out, _ = cnode.cni(
        "ADD", {k: v for k, v in cnode.conf().items() if k != "cniVersion"}, cid, path
    )
    assert out["code"] == 1 and out["msg"] == "cniVersion: the network configuration has none"
    # a container ID longer than the service takes: the environment's fault
    code, out, _ = cnode.cni("ADD", cnode.conf(), "c" * 129, path)
    assert out["code"] == 4 and out["msg"].startswith("CNI_CONTAINERID:")
    # nothing was left behind by the refusals
    assert cnode.api("GET", "/v1/attachments") == []
    assert sh("ip", "-n", ns, "-o", "link").stdout.count(":") >= 1
    assert "eth0" not in sh("ip", "-n", ns, "-o", "link").stdout


def test_conflicts_name_the_container_and_are_configuration_errors(cnode):
    (c1, _, p1), (c2, _, p2) = cnode.container(), cnode.container()
    res = cnode.cni("ADD", cnode.conf(), c1, p1)[1]
    ip = addr_of(res).split("/")[0]
    code, out, _ = cnode.cni("ADD", cnode.conf(ip=ip), c2, p2)
    assert out["code"] == 7, out
    assert out["msg"] == f"ip: {ip} on network net1 is taken by container {c1} interface eth0"
    # a second std interface in a namespace that has its default route
    # already: the configuration conflicts (7), it is not "attached already"
    # (its port, opened beside the failed step, is removed with its veth)
    ports = [p["name"] for p in cnode.api("GET", "/v1/status")["ports"]]
    code, out, _ = cnode.cni("ADD", cnode.conf(), c1, p1, ifname="eth1")
    assert out["code"] == 7 and "default route" in out["msg"], out
    assert [a["ifname"] for a in cnode.api("GET", "/v1/attachments")] == ["eth0"]
    assert [p["name"] for p in cnode.api("GET", "/v1/status")["ports"]] == ports


def test_add_and_del_latency(cnode):
    """The plugin's own cost is an interpreter's start and its module's
    cached bytecode, with built-in modules only: ADD and DEL each take one process and one
    API call; the rest is the service's plumbing (the same as a pod add)."""

    def med(xs):
        return sorted(xs)[len(xs) // 2] * 1e3

    times = {"VERSION": [], "ADD": [], "DEL": [], "api ADD": [], "api DEL": []}
    for _ in range(5):
        t = time.perf_counter()
        assert cnode.cni("VERSION", {"cniVersion": "1.0.0"})[0] == 0
        times["VERSION"].append(time.perf_counter() - t)
        cid, ns, path = cnode.container()
        for verb in ("ADD", "DEL"):
            t = time.perf_counter()
            assert cnode.cni(verb, cnode.conf(), cid, path)[0] == 0
            times[verb].append(time.perf_counter() - t)
        body = {"container_id": cid, "ifname": "eth0", "netns": path, "network": "net1"}
        t = time.perf_counter()
        a = cnode.api("POST", "/v1/attachments", body)
        times["api ADD"].append(time.perf_counter() - t)
        cnode.host_links.add(a["host_ifname"])
        t = time.perf_counter()
        cnode.api("DELETE", "/v1/attachments", {"container_id": cid, "ifname": "eth0"})
        times["api DEL"].append(time.perf_counter() - t)
    # what the plugin imports, run as its first line says (-IS)
    r = subprocess.run(
        [sys.executable, "-IS", "-X", "importtime", cnode.plugin],
        input=b'{"cniVersion":"1.0.0"}',
        env={"CNI_COMMAND": "VERSION"},
        capture_output=True,
    )
    imported = {line.split("|")[-1].strip() for line in r.stderr.decode().splitlines()}
    assert {"dataplane_cni", "_json", "_socket"} <= imported
    # json and socket would pull re and enum in: longer than the interpreter's start
    heavy = {"pyroute2", "numpy", "cffi", "dataplane", "http.client", "email"}
    heavy |= {"json", "socket", "re", "enum"}
    assert not heavy & imported, heavy & imported
    print(
        "RESULT cni latency (median of 5):",
        ", ".join(f"{k} {med(v):.0f} ms" for k, v in times.items()),
    )


def test_memif_attachment_and_device_info(tmp_path):
    """A memif plane: the result's socketPath and Multus' device-info file
    (NPWG device-info 1.1.0), written on ADD and removed on DEL. A service
    whose pod specs know only veth refuses the kind by name instead."""
    import importlib.util
    import shutil
    import tempfile

    has_kinds = importlib.util.find_spec("dataplane.fastif") is not None
    sockdir = tempfile.mkdtemp(prefix="dpk", dir="/tmp")  # sun_path has 108 bytes
    n = CNINode(tmp_path, uuid.uuid4().hex[:5])
    if has_kinds:
        n.cfg.write_text(n.cfg.read_text() + f"pod_socket_dir: {sockdir}\n")
    try:
        n.start()
        cid, ns, path = n.container()
        dev = tmp_path / "devinfo" / "media.json"
        conf = n.conf(
            network="net3",
            name="media-net",
            kind="memif",
            version="1.1.0",
            runtimeConfig={"CNIDeviceInfoFile": str(dev)},
        )
        code, res, err = n.cni("ADD", conf, cid, path, ifname="net1")
        if not has_kinds:
            assert code != 0 and res["code"] == 7 and "memif" in res["msg"]
            assert not dev.exists() and n.api("GET", "/v1/attachments") == []
            return
        assert code == 0, (res, err)
        (pod_if,) = res["interfaces"]  # no host veth: the core serves the socket
        assert pod_if["socketPath"].startswith(sockdir) and pod_if["sandbox"] == path
        assert json.loads(dev.read_text()) == {
            "type": "memif",
            "version": "1.1.0",
            "memif": {"role": "master", "mode": "ethernet", "path": pod_if["socketPath"]},
        }
        assert n.cni("CHECK", {**conf, "prevResult": res}, cid, path, ifname="net1")[0] == 0
        assert n.cni("DEL", conf, cid, path, ifname="net1")[0] == 0
        assert not dev.exists() and n.api("GET", "/v1/attachments") == []
    finally:
        n.cleanup()
        shutil.rmtree(sockdir, ignore_errors=True)


def link_names(ns=None):
    out = sh("ip", *(["-n", ns] if ns else []), "-o", "link", "show").stdout
    return {ln.split(": ")[1].split("@")[0] for ln in out.splitlines() if ": " in ln}


@contextlib.contextmanager
def node_on_etcd(tmp_path, name):
    """(a node service whose state store is an etcd of its own, that etcd),
    both stopped and cleaned up afterwards."""
    from tests.etcdhost import EtcdServer, have_etcd

    assert have_etcd(), "needs /usr/bin/etcd (Debian: etcd-server)"
    etcd = EtcdServer(name=name).start()
    n = None
    try:
        n = CNINode(tmp_path, uuid.uuid4().hex[:5])
        n.cfg.write_text(
            n.cfg.read_text()
            + f'store: {{kind: etcd, endpoints: ["{etcd.url}"], prefix: /dptest/{n.tag}}}\n'
        )
        n.start()
        yield n, etcd
    finally:
        if n is not None:
            n.cleanup()
        etcd.close()


def test_a_store_that_does_not_answer_is_try_again_later(tmp_path):
    """A node whose state store (etcd) stops answering: ADD and DEL are
    refused with code 11 (the runtime retries them) and nothing is left
    half made; once the store is back the same ADD and DEL succeed."""
    with node_on_etcd(tmp_path, "dptest-cni") as (n, etcd):
        (c1, _, p1), (c2, ns2, p2) = n.container(), n.container()
        assert n.cni("ADD", n.conf(), c1, p1)[0] == 0
        links = link_names()
        etcd.stop()  # the same ports and data when it starts again
        try:
            for verb, cid, path in (("ADD", c2, p2), ("DEL", c1, p1)):
                code, out, _ = n.cni(verb, n.conf(timeout=3), cid, path)
                assert code != 0 and out["code"] == 11, (verb, out)
                assert f"the store (etcd {etcd.url}) does not answer" in out["details"], out
            # the node's own tools say so at once, not after a busy service's retries
            r = n.cli("attachment", "list", check=False)
            assert r.returncode != 0 and "does not answer" in r.stderr, r
        finally:
            etcd.start()
        # the refused ADD left no interface on the host or in the container
        assert link_names() == links
        assert link_names(ns2) == {"lo"}
        assert n.cni("ADD", n.conf(), c2, p2)[0] == 0
        assert n.cni("DEL", n.conf(), c1, p1)[0] == 0
        assert [a["container_id"] for a in n.api("GET", "/v1/attachments")] == [c2]
        assert n.cni("DEL", n.conf(), c2, p2)[0] == 0


def test_a_store_that_does_not_answer_is_told_at_once(tmp_path):
    """The service's 503 that says its state store does not answer (or
    refuses the node) is not asked again, as a busy service's is: the
    service waited for the store already. STATUS answers 50 naming the
    store at once, ADD 11, not after the configuration's whole timeout
    (an hour here: the plugin's run would not end)."""
    with node_on_etcd(tmp_path, "dptest-cni-status") as (n, etcd):
        cid, ns, path = n.container()
        conf = n.conf(version="1.1.0", timeout=3600)
        assert n.cni("STATUS", conf) == (0, None, "")
        etcd.stop()
        try:
            code, out, _ = n.cni("STATUS", conf)
            assert code != 0 and out["code"] == 50, out
            assert out["msg"] == "the node service cannot take an ADD without its state store"
            assert out["details"].startswith(f"the store (etcd {etcd.url}) does not answer"), out
            code, out, _ = n.cni("ADD", conf, cid, path)
            assert code != 0 and out["code"] == 11, out
            assert f"the store (etcd {etcd.url}) does not answer" in out["details"], out
        finally:
            etcd.start()
        assert n.cni("STATUS", conf) == (0, None, "")
        assert n.cni("ADD", conf, cid, path)[0] == 0
        assert n.cni("DEL", conf, cid, path)[0] == 0


def _addrs6(ns, dev="eth0"):
    """The global IPv6 addresses of ``dev`` in ``ns``: {address/len: flags}."""
    out = json.loads(
        sh("ip", "-n", ns, "-j", "-6", "addr", "show", "dev", dev, "scope", "global").stdout
    )
    return {
        f"{a['local']}/{a['prefixlen']}": {k for k in ("tentative", "nodad") if a.get(k)}
        for i in out
        for a in i.get("addr_info", ())
        if "local" in a
    }


NETWORKS_DUAL = """  - {name: net1, vni: 101, plane: std, subnet: 192.168.60.0/24, gateway: 192.168.60.1,
     subnet6: "fd00:60::/64", gateway6: "fd00:60::1"}
  - {name: net2, vni: 102, plane: control, subnet: 192.168.61.0/24, subnet6: "fd00:61::/64"}"""


def test_cni_result_and_check_of_a_dual_stack_attachment(tmp_path):
    node = Node(tmp_path, uuid.uuid4().hex[:5], networks=NETWORKS_DUAL)
    try:
        node.start()
        plugin = install_plugin(str(tmp_path / "bin"))
        ns = f"dpc6{uuid.uuid4().hex[:6]}"
        sh("ip", "netns", "add", ns)
        node.netns.append(ns)
        conf = netconf(node.sock, version="1.1.0", ip="192.168.60.20")
        code, res, err = run_plugin(plugin, "ADD", conf, "c1", f"/var/run/netns/{ns}", "eth0")
        node.host_links |= {i["name"] for i in res.get("interfaces", ()) if "sandbox" not in i}
        assert code == 0, (res, err)
        assert res["ips"] == [
            {"address": "192.168.60.20/24", "gateway": "192.168.60.1", "interface": 1},
            {"address": "fd00:60::14/64", "gateway": "fd00:60::1", "interface": 1},
        ], res
        assert res["routes"] == [
            {"dst": "0.0.0.0/0", "gw": "192.168.60.1"},
            {"dst": "::/0", "gw": "fd00:60::1"},
        ], res
        assert _addrs6(ns) == {"fd00:60::14/64": {"nodad"}}
        # a 0.4.0 runtime reads the address's version
        conf4 = netconf(node.sock, network="net2", name="ctl", version="0.4.0")
        code, res4, err = run_plugin(plugin, "ADD", conf4, "c1", f"/var/run/netns/{ns}", "net1")
        node.host_links |= {i["name"] for i in res4.get("interfaces", ()) if "sandbox" not in i}
        assert code == 0, (res4, err)
        assert [ip["version"] for ip in res4["ips"]] == ["4", "6"], res4
        assert "routes" not in res4  # no default route off the std plane
        # CHECK: the IPv6 address and route are checked like the IPv4 ones
        check = {**conf, "prevResult": res}
        assert run_plugin(plugin, "CHECK", check, "c1", f"/var/run/netns/{ns}", "eth0")[0] == 0
        sh("ip", "-n", ns, "-6", "route", "del", "default")
        code, out, _ = run_plugin(plugin, "CHECK", check, "c1", f"/var/run/netns/{ns}", "eth0")
        assert code != 0 and "no default route via fd00:60::1" in out["msg"], out
    finally:
        node.cleanup()
