"""Networks added to and removed from a running node by ``dataplane
reload``: the node service (real, fallback mode, its cluster store a real
etcd of the test's own) takes a network added to its file while its pods
forward, reads the cluster view again for the new network's endpoints (a
host behind the kernel's own VXLAN VTEP, described to the store before the
reload), and a pod attached to the new network reaches that host. A
network put first is taken too; one that pods are still on is not removed,
and once they are gone it is, with its part of the cluster view. A file
that adds a network the cluster defines otherwise changes nothing and says
why. A restart afterwards places the networks as the file lists them."""

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
from nodeparts import underlay_node
from test_express import _frame, _receiver, _send_from, ifname_of, mac_of, port_row
from test_service import HOST_IP, IT_SPEC, NETWORKS, Node, ip_of, kernel_vtep, ping, wait_ping

from dataplane.store.etcd import EtcdStore
from tests.etcdhost import EtcdServer, have_etcd

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not have_etcd(), reason="needs /usr/bin/etcd (Debian: etcd-server)"),
]

#: a source address pod a may send from (its spec allows it), and one it may not
ALLOWED, SPOOFED = "192.168.50.78", "192.168.50.77"

#: the network the reload adds, and a host of it behind a kernel VTEP
NET3 = "  - {name: net3, vni: 103, plane: std, subnet: 192.168.53.0/24}\n"
NET3_HOST = "192.168.53.201"


def kernel_vtep_103(ul) -> str:
    """The kernel's VXLAN VTEP of VNI 103 beside kernel_vtep's (same
    underlay address), with NET3_HOST on it: its MAC."""
    return kernel_vtep(ul, vni=103, host_ip=NET3_HOST)


def wait_fdb(n, mac) -> list:
    """The FDB rows of ``mac`` once the node has any (the cluster view is
    read again in the background after a reload): [] after 5 s."""
    for _ in range(100):
        rows = [r for r in n.api("GET", "/v1/fdb") if r["mac"] == mac]
        if rows:
            return rows
        time.sleep(0.05)
    return []


def refused(n, why):
    """``dataplane reload`` fails, saying nothing changed and ``why``."""
    r = n.cli("reload", check=False)
    assert r.returncode != 0
    assert f"not reloaded, nothing changed: {why}" in r.stderr, r.stderr


def flood_lists(n) -> dict:
    """{network: the VTEPs the core floods it to}."""
    return {x["name"]: [f["vtep"] for f in x["flood"]] for x in n.api("GET", "/v1/networks")}


def net_names(n):
    return [x["name"] for x in n.api("GET", "/v1/networks")]


def test_reload_adds_a_network_while_pods_forward(tmp_path):
    srv = EtcdServer("rletcd").start()
    prefix = f"/rl{uuid.uuid4().hex[:6]}"
    es = EtcdStore([srv.url], prefix=prefix)
    extra = f"store: {{kind: etcd, endpoints: ['{srv.url}'], prefix: {prefix}}}"
    try:
        with underlay_node(tmp_path, NETWORKS, ["net1"], extra=extra) as (n, ul):
            kernel_vtep(ul)
            host_mac = kernel_vtep_103(ul)
            a = n.pod("a", IT_SPEC)
            b = n.pod("b", IT_SPEC)
            n.pods_ns = {"a": a["ns"], "b": b["ns"]}
            wait_ping(a["ns"], HOST_IP)
            assert ping(a["ns"], ip_of(b)).returncode == 0
            # another node's network, and a host on it described to the
            # cluster, before this node has the network: its view skips it
            es.put_network("net3", 103, "std", "192.168.53.0/24", None, 1450)
            es.put_static_endpoint("rlhost", "net3", host_mac, NET3_HOST, "10.99.0.2")
            assert not any(r["mac"] == host_mac for r in n.api("GET", "/v1/fdb"))

            # the network added at the end of the file: reloaded, live
            text = n.cfg.read_text()
            n.cfg.write_text(text.replace(NETWORKS, NETWORKS + "\n" + NET3.rstrip("\n")))
            out = n.cli("reload").stdout
            assert out.splitlines() == ["networks: net1, net2 -> net1, net2, net3"], out
            assert net_names(n) == ["net1", "net2", "net3"]
            log = (n.tmp / "service.log").read_text()
            assert '"msg": "network added"' in log and '"network": "net3"' in log, log
            assert es.network("net3")["vni"] == 103  # its record in the cluster store
            # the cluster view read again: the host's MAC and its VTEP in the
            # new network's flood list
            rows = wait_fdb(n, host_mac)
            assert rows and rows[0]["network"] == "net3" and rows[0]["vtep"] == "10.99.0.2", rows
            net3 = next(x for x in n.api("GET", "/v1/networks") if x["name"] == "net3")
            assert net3["vni"] == 103 and [f["vtep"] for f in net3["flood"]] == ["10.99.0.2"], net3

            # the pods of before forward on, and a pod of the new network
            # reaches the host behind the kernel's VTEP of VNI 103
            assert ping(a["ns"], ip_of(b)).returncode == 0
            assert ping(a["ns"], HOST_IP).returncode == 0
            c = n.pod("c", {"pod_type": "it", "network_plane": ["std"],
                            "networks": {"std": "net3"}})  # fmt: skip
            n.pods_ns["c"] = c["ns"]
            assert ip_of(c).startswith("192.168.53."), c
            wait_ping(c["ns"], NET3_HOST)
            # kept apart: net1's host is not reached from net3's pod
            assert ping(c["ns"], HOST_IP, count=1).returncode != 0
            st = n.api("GET", "/v1/status")
            nets = {x["name"]: x for x in st["networks"]}
            assert nets["net3"]["encap_packets"] > 0 and nets["net3"]["decap_packets"] > 0, nets
            url = f"http://127.0.0.1:{n.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as resp:
                metrics = resp.read().decode()
            said = [ln for ln in metrics.splitlines() if ln.startswith("dataplane_network_")]
            assert any('network="net3"' in ln for ln in said), said

            # one whose VNI the cluster has for another network: refused,
            # nothing changed (in the core nor in the store)
            net4 = "  - {name: net4, vni: 104, plane: std, subnet: 192.168.54.0/24}\n"
            good = n.cfg.read_text()
            es.put_network("net9", 104, "std", "192.168.59.0/24", None, 1450)
            n.cfg.write_text(good.replace(NET3.rstrip("\n"), NET3 + net4.rstrip("\n")))
            refused(
                n,
                "network net4: VNI 104 is used by network net9 already (one no node carries any "
                "more is freed by 'dataplane net forget net9')",
            )
            assert net_names(n) == ["net1", "net2", "net3"]
            assert es.network("net4") is None
            assert ping(c["ns"], NET3_HOST).returncode == 0

            # one put first: taken (the list's order is the file's, each
            # network keeps its place in the core)
            net5 = "  - {name: net5, vni: 105, plane: control, subnet: 192.168.55.0/24}\n"
            n.cfg.write_text(good.replace("networks:\n", "networks:\n" + net5, 1))
            out = n.cli("reload").stdout
            assert out.splitlines() == ["networks: net1, net2, net3 -> net5, net1, net2, net3"]
            assert net_names(n) == ["net5", "net1", "net2", "net3"]
            assert ping(c["ns"], NET3_HOST).returncode == 0
            assert ping(a["ns"], ip_of(b)).returncode == 0

            # net3 taken out while pod c is on it: refused, the pod named
            with_net5 = n.cfg.read_text()
            n.cfg.write_text(with_net5.replace(NET3, ""))
            refused(n, "networks: net3 is not in the config, but pod c (plane std) on this node")
            assert ping(c["ns"], NET3_HOST).returncode == 0
            # the pod deleted: net3 goes, with its cluster view
            n.cli("pod", "del", "c")
            out = n.cli("reload").stdout
            assert out.splitlines() == ["networks: net5, net1, net2, net3 -> net5, net1, net2"]
            assert net_names(n) == ["net5", "net1", "net2"]
            assert not any(r["mac"] == host_mac for r in n.api("GET", "/v1/fdb"))
            assert "net3" not in {x["name"] for x in n.api("GET", "/v1/status")["networks"]}
            assert '"msg": "network removed"' in (n.tmp / "service.log").read_text()
            assert es.network("net3") is not None  # the cluster's: other nodes may have it
            assert ping(a["ns"], ip_of(b)).returncode == 0
            assert ping(a["ns"], HOST_IP).returncode == 0

            # back again (at its old index, free again): the cluster view
            # has the host again
            n.cfg.write_text(with_net5)
            assert n.cli("reload").stdout.startswith("networks: net5, net1, net2 -> ")
            rows = wait_fdb(n, host_mac)
            assert rows and rows[0]["network"] == "net3", rows
            d = n.pod("d", {"pod_type": "it", "network_plane": ["std"],
                            "networks": {"std": "net3"}})  # fmt: skip
            wait_ping(d["ns"], NET3_HOST)

            # a restart takes the file as it is, each network at its place
            n.stop()
            n.start()
            assert net_names(n) == ["net5", "net1", "net2", "net3"]
            wait_ping(d["ns"], NET3_HOST)
            wait_ping(a["ns"], HOST_IP)
            assert ping(a["ns"], ip_of(b)).returncode == 0
    finally:
        es.close()
        srv.close()


def test_a_removed_networks_record_is_forgotten_and_its_vni_given_again(tmp_path):
    """With etcd, a network a reload removed keeps its record (and VNI) for
    the other nodes; ``dataplane net forget`` deletes it once nothing in the
    cluster has it - refused while it is in this node's file, while a host
    is on it, and while another running node carries it, each said - and a
    reload then gives its VNI to a network of another name. ``net records``
    shows who carries each record, the node's claim what it carries."""
    srv = EtcdServer("rfetcd").start()
    prefix = f"/rf{uuid.uuid4().hex[:6]}"
    es, other = EtcdStore([srv.url], prefix=prefix), EtcdStore([srv.url], prefix=prefix)
    extra = f"store: {{kind: etcd, endpoints: ['{srv.url}'], prefix: {prefix}}}"
    n = Node(
        tmp_path, uuid.uuid4().hex[:5], networks=NETWORKS + "\n" + NET3.rstrip("\n"), extra=extra
    )
    try:
        n.start()
        me = f"node-{n.tag}"

        def records():
            return {r["name"]: (r["vni"], r["carried_by"], r["endpoints"])
                    for r in json.loads(n.cli("net", "records", "--json").stdout)}  # fmt: skip

        def forget(name):
            r = n.cli("net", "forget", name, check=False)
            return r.returncode, (r.stdout + r.stderr).strip()

        assert records() == {"net1": (101, [me], 0), "net2": (102, [me], 0), "net3": (103, [me], 0)}
        code, said = forget("net3")
        assert code != 0 and "network net3 is in this node's configuration" in said, said
        # a host on it, and another running node that carries it
        n.cli("host", "add", "vm1", "--network", "net3", "--mac", "02:00:00:00:35:01",
              "--ip", "192.168.53.9", "--vtep", "10.99.0.7")  # fmt: skip
        other.claim_node("node-other", "10.99.0.9", "host9", networks=["net3"])
        # out of this node's file: the record stays for the cluster
        with_net3 = n.cfg.read_text()
        n.cfg.write_text(with_net3.replace(NET3, ""))
        assert n.cli("reload").stdout.splitlines() == ["networks: net1, net2, net3 -> net1, net2"]
        assert [c["networks"] for c in es.node_claims() if c["node"] == me] == [["net1", "net2"]]
        assert records()["net3"] == (103, ["node-other"], 1)
        code, said = forget("net3")
        assert code != 0 and "network net3 is in use by host vm1: delete them first" in said, said
        n.cli("host", "del", "vm1")
        code, said = forget("net3")
        assert code != 0 and "network net3: node node-other (VTEP 10.99.0.9) runs with it" in said
        other.close()  # that node stopped: its claim goes
        assert forget("net3") == (0, "network net3 forgotten: VNI 103 is free for another network")
        assert "net3" not in records() and es.network("net3") is None
        code, said = forget("net3")
        assert code != 0 and "network net3: the store has no record of it" in said, said
        # its VNI, given to a network of another name by a reload
        net6 = "  - {name: net6, vni: 103, plane: std, subnet: 192.168.56.0/24}"
        n.cfg.write_text(with_net3.replace(NET3.rstrip("\n"), net6))
        assert n.cli("reload").stdout.splitlines() == ["networks: net1, net2 -> net1, net2, net6"]
        assert records()["net6"] == (103, [me], 0)
        assert [c["networks"] for c in es.node_claims()] == [["net1", "net2", "net6"]]
        c = n.pod("c", {"pod_type": "it", "network_plane": ["std"], "networks": {"std": "net6"}})
        assert ip_of(c).startswith("192.168.56."), c
        # the CLI's own checks
        r = n.cli("net", "forget", check=False)
        assert r.returncode != 0 and "net forget takes the network's name" in r.stderr
        r = n.cli("net", "list", "net1", check=False)
        assert r.returncode != 0 and "net list takes no name" in r.stderr
    finally:
        n.cleanup()
        other.close()
        es.close()
        srv.close()


def test_reload_adds_a_network_with_a_static_flood_list(tmp_path):
    """The same on a node of its own (SQLite store, no cluster view): the
    new network's static flood list, named in ``remotes``, is taken with
    it, and a pod of the network reaches a host behind the kernel's VTEP
    through it; then the static flood lists change alone, an emptied one
    emptied in the core."""
    with underlay_node(tmp_path, NETWORKS, ["net1"]) as (n, ul):
        kernel_vtep_103(ul)
        text = n.cfg.read_text()
        assert "networks: [net1]}" in text
        text = text.replace(NETWORKS, NETWORKS + "\n" + NET3.rstrip("\n"))
        n.cfg.write_text(text.replace("networks: [net1]}", "networks: [net1, net3]}"))
        # first a dry run: what it would do, nothing done
        out = n.cli("reload", "--dry-run").stdout
        assert out.splitlines() == [
            f"{n.cfg}: a reload would change",
            "  networks: net1, net2 -> net1, net2, net3",
            "  remotes: 10.99.0.2: net1 -> 10.99.0.2: net1, net3",
        ], out
        assert net_names(n) == ["net1", "net2"]
        assert flood_lists(n) == {"net1": ["10.99.0.2"], "net2": []}
        out = n.cli("reload").stdout
        assert out.splitlines() == [
            "networks: net1, net2 -> net1, net2, net3",
            "remotes: 10.99.0.2: net1 -> 10.99.0.2: net1, net3",
        ], out
        assert flood_lists(n) == {"net1": ["10.99.0.2"], "net2": [], "net3": ["10.99.0.2"]}
        c = n.pod("c", {"pod_type": "it", "network_plane": ["std"], "networks": {"std": "net3"}})
        wait_ping(c["ns"], NET3_HOST)
        # the static flood lists alone: the old networks' change too, and a
        # list emptied is emptied in the core
        text = n.cfg.read_text()
        n.cfg.write_text(
            text.replace(
                "- {vtep: 10.99.0.2, networks: [net1, net3]}",
                "- {vtep: 10.99.0.2, networks: [net2]}\n  - {vtep: 10.99.0.9, networks: [net2]}",
            )
        )
        assert n.cli("reload").stdout.splitlines() == [
            "remotes: 10.99.0.2: net1, net3 -> 10.99.0.2: net2; 10.99.0.9: net2"
        ]
        assert flood_lists(n) == {"net1": [], "net2": ["10.99.0.2", "10.99.0.9"], "net3": []}
        assert ping(c["ns"], NET3_HOST, count=1).returncode != 0  # no way to the host now
        # renamed: net3 taken away (its pod first), then its VNI under a new
        # name - the node's own store forgot net3 with it. A dry run while
        # the pod is on it says what the reload would refuse
        text = n.cfg.read_text()
        n.cfg.write_text(text.replace(NET3, ""))
        r = n.cli("reload", "--dry-run", check=False)
        assert r.returncode != 0 and "but pod c (plane std) on this node" in r.stderr, r.stderr
        assert "net3" in net_names(n)
        n.cli("pod", "del", "c")
        assert n.cli("reload").stdout.splitlines() == ["networks: net1, net2, net3 -> net1, net2"]
        net7 = NET3.replace("net3", "net7").replace("192.168.53.", "192.168.57.")
        n.cfg.write_text(text.replace(NET3, net7))
        assert n.cli("reload").stdout.splitlines() == ["networks: net1, net2 -> net1, net2, net7"]
        assert [(x["name"], x["vni"]) for x in n.api("GET", "/v1/networks")][-1] == ("net7", 103)


def test_reload_changes_a_networks_storm_control(tmp_path):
    """A network's storm_pps and storm_burst, changed in the file, apply to
    the pods already on it at the reload: broadcasts pod a sends within the
    default limit pass, then over a limit of 10 frames/s are dropped as
    ``storm`` on its port, then with the limit off pass again."""
    with underlay_node(tmp_path, NETWORKS, ["net1"]) as (n, _ul):
        a = n.pod("a", IT_SPEC)
        n.pod("b", IT_SPEC)
        port = next(p["port"] for p in a["planes"])

        def broadcasts():
            """(storm drops, the port's guard drops) after 100 broadcasts."""
            subprocess.run(
                ["ip", "netns", "exec", a["ns"], "ping", "-b", "-q", "-c", "100", "-i", "0.005",
                 "-W", "0.1", "192.168.50.255"],
                capture_output=True,
            )  # fmt: skip
            st = n.api("GET", "/v1/status")
            guard = next(p.get("guard_drops", 0) for p in st["ports"] if p["port"] == port)
            return st["drops"].get("storm", 0), guard

        assert broadcasts() == (0, 0)  # 200/s, under the default 1000/s
        net1 = "gateway: 192.168.50.1}"
        text = n.cfg.read_text()
        n.cfg.write_text(text.replace(net1, net1[:-1] + ", storm_pps: 10, storm_burst: 1}"))
        assert n.cli("reload").stdout.splitlines() == [
            "networks.net1.storm_pps: 1000 -> 10",
            "networks.net1.storm_burst: 200 -> 1",
        ]
        storm, guard = broadcasts()
        # ~10/s of 200/s pass (the drops' total may hold pod b's own
        # neighbour discovery beside a's broadcasts)
        assert 50 <= guard < 100 and storm >= guard, (storm, guard)
        n.cfg.write_text(text.replace(net1, net1[:-1] + ", storm_pps: 0}"))
        assert n.cli("reload").stdout.splitlines() == [
            "networks.net1.storm_pps: 10 -> 0",
            "networks.net1.storm_burst: 1 -> 200",
        ]
        assert broadcasts()[1] == guard  # no limit: none dropped


def test_reload_switches_a_networks_anti_spoofing(tmp_path):
    """A network's anti_spoofing switched in the file applies at the reload
    to the pods already on it. Off: a frame pod a sends to pod b from an
    address not its own is carried (by the express lane, as the frames from
    its own address and the one its spec allows). On: that frame is dropped
    by the core's guard as ``spoof_ipv4`` and the other two still pass, the
    lane carrying them. Off again: it passes again."""
    net1 = "gateway: 192.168.50.1}"
    n = Node(tmp_path, uuid.uuid4().hex[:5], networks=NETWORKS)
    text = n.cfg.read_text()
    n.cfg.write_text(text.replace(net1, net1[:-1] + ", anti_spoofing: false}"))
    try:
        n.start()
        a = n.pod("a", {**IT_SPEC, "allowed_addresses": {"std": [ALLOWED]}})
        b = n.pod("b", IT_SPEC)
        assert ping(a["ns"], ip_of(b), count=1).returncode == 0  # neighbours known

        def sent():
            """({source: frames b got} for one UDP frame from a from each of
            a's own address, the allowed and a spoofed one; the spoof drops
            and the frames the lane took from a in the meantime)."""
            st = n.api("GET", "/v1/status")
            drops, lane = st["drops"].get("spoof_ipv4", 0), port_row(n, "a")["express"]
            sources = (ip_of(a), ALLOWED, SPOOFED)
            waits = [_receiver(b["ns"], ifname_of(b), f"from-{s}") for s in sources]
            for s in sources:
                frame = _frame(mac_of(b), mac_of(a), s, ip_of(b), f"from-{s}".encode())
                _send_from(a["ns"], ifname_of(a), frame)
            got = {}
            for s, (t, out) in zip(sources, waits):
                t.join()
                got[s] = out[0]
            st = n.api("GET", "/v1/status")
            return (
                got,
                st["drops"].get("spoof_ipv4", 0) - drops,
                port_row(n, "a")["express"]["rx_packets"] - lane["rx_packets"],
            )

        everything = {ip_of(a): 1, ALLOWED: 1, SPOOFED: 1}
        assert sent() == (everything, 0, 3)
        n.cfg.write_text(text)  # anti_spoofing: true, the default
        assert n.cli("reload").stdout.splitlines() == ["networks.net1.anti_spoofing: false -> true"]
        assert sent() == ({**everything, SPOOFED: 0}, 1, 2)
        n.cfg.write_text(text.replace(net1, net1[:-1] + ", anti_spoofing: false}"))
        assert n.cli("reload").stdout.splitlines() == ["networks.net1.anti_spoofing: true -> false"]
        assert sent() == (everything, 0, 3)
    finally:
        n.cleanup()


def test_reload_switches_the_vteps_learning(tmp_path):
    """vtep.learning switched on by a reload: the MAC of a host behind a
    kernel VTEP that no store knows is learned from its frames (until then
    a pod reaches it by flooding). Switched off again: the learned MAC
    leaves the FDB at the reload, and the host is reached by flooding."""
    with underlay_node(tmp_path, NETWORKS, ["net1"]) as (n, ul):
        host_mac = kernel_vtep(ul)
        a = n.pod("a", IT_SPEC)
        wait_ping(a["ns"], HOST_IP)

        def origins():
            return [r["origin"] for r in n.api("GET", "/v1/fdb") if r["mac"] == host_mac]

        assert origins() == []
        text = n.cfg.read_text()
        vtep = f"uplink: {n.uplink}}}"
        assert vtep in text
        n.cfg.write_text(
            text.replace(vtep, f"uplink: {n.uplink}, learning: true, learned_age_s: 60}}")
        )
        assert n.cli("reload").stdout.splitlines() == [
            "vtep.learning: false -> true",
            "vtep.learned_age_s: 300 -> 60",
        ]
        assert ping(a["ns"], HOST_IP).returncode == 0
        assert origins() == ["learned"]
        n.cfg.write_text(text)
        assert n.cli("reload").stdout.splitlines() == [
            "vtep.learning: true -> false",
            "vtep.learned_age_s: 60 -> 300",
        ]
        assert origins() == []
        assert ping(a["ns"], HOST_IP).returncode == 0
        assert origins() == []


PLANES = """planes:
  std: {priority: 0, interface: eth0}
  oam: {priority: 1, interface: oam}
  control: {priority: 2, interface: control, dscp: 24}
  media: {priority: 3, interface: media, dscp: 46}
"""


def outer_tos(tmp_path, n, ul, a, inner) -> dict:
    """The outer TOS bytes of what pod a sends to the host behind the
    kernel VTEP with each inner TOS of ``inner``, captured on the underlay:
    {(inner, "icmp" | "tcp"): {outer, ...}} for two pings (datagrams take
    the core's path) and two TCP SYNs (the express lane's)."""
    from scapy.layers.inet import ICMP, IP, TCP
    from scapy.layers.vxlan import VXLAN
    from scapy.utils import rdpcap

    cap = tmp_path / f"tos-{time.monotonic_ns()}.pcap"
    dump = subprocess.Popen(
        ["ip", "netns", "exec", ul, "tcpdump", "-i", f"dpu{n.tag}b", "-w", str(cap), "-U",
         "--immediate-mode", "udp port 4789"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert "listening" in dump.stderr.readline()
    syn = (
        "import socket,sys\n"
        "for _ in range(2):\n"
        "    s=socket.socket(); s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, int(sys.argv[1]))\n"
        "    s.settimeout(1)\n"
        "    try: s.connect((sys.argv[2], 9))\n"
        "    except OSError: pass\n"
        "    s.close()\n"
    )
    for tos in inner:
        subprocess.run(
            ["ip", "netns", "exec", a["ns"], "ping", "-c", "2", "-i", "0.1", "-W", "1",
             "-Q", str(tos), HOST_IP],
            capture_output=True,
        )  # fmt: skip
        subprocess.run(
            ["ip", "netns", "exec", a["ns"], sys.executable, "-c", syn, str(tos), HOST_IP],
            check=True,
        )
    time.sleep(0.3)
    dump.terminate()
    dump.wait(10)
    out = {}
    for f in rdpcap(str(cap)):
        if VXLAN not in f or IP not in f[VXLAN].payload:
            continue
        ip = f[VXLAN].payload[IP]
        if ip.src != ip_of(a):
            continue
        if ICMP in ip and ip[ICMP].type == 8:
            kind = "icmp"
        elif TCP in ip and ip[TCP].flags == "S":
            kind = "tcp"
        else:
            continue
        out.setdefault((ip.tos, kind), set()).add(f[IP].tos)
    return out


def test_reload_remarks_a_plane_and_classifies_by_dscp(tmp_path):
    """A plane's outer DSCP marking and the inner DSCPs that pick a plane,
    changed in the file, apply at the reload to what pods send - through
    the core (pings) and through the express lane (TCP) alike: std marked
    AF21 instead of copying the inner DSCP, inner DSCP 10 sent in the media
    plane, marked EF; then back."""
    with underlay_node(tmp_path, NETWORKS, ["net1"], extra=PLANES, vtep=", learning: true") as (
        n,
        ul,
    ):
        kernel_vtep(ul)
        a = n.pod("a", IT_SPEC)
        wait_ping(a["ns"], HOST_IP)  # the host's MAC learned: TCP to it takes the lane
        lane = port_row(n, "a")["express"]["rx_packets"]
        copied = {(0, "icmp"): {0}, (0, "tcp"): {0}, (0x28, "icmp"): {0x28}, (0x28, "tcp"): {0x28}}
        assert outer_tos(tmp_path, n, ul, a, (0, 0x28)) == copied
        assert port_row(n, "a")["express"]["rx_packets"] - lane >= 4  # the SYNs took the lane
        text = n.cfg.read_text()
        std, media = "std: {priority: 0, interface: eth0", "media: {priority: 3, interface: media"
        n.cfg.write_text(
            text.replace(std, std + ", dscp: 18").replace(media, media + ", classify_dscp: [10]")
        )
        assert n.cli("reload").stdout.splitlines() == [
            "planes.std.dscp: (none) -> 18",
            "planes.media.classify_dscp: (none) -> 10",
        ]
        af21, ef = 18 << 2, 46 << 2
        assert outer_tos(tmp_path, n, ul, a, (0, 0x28)) == {
            (0, "icmp"): {af21}, (0, "tcp"): {af21}, (0x28, "icmp"): {ef}, (0x28, "tcp"): {ef}
        }  # fmt: skip
        n.cfg.write_text(text)
        assert n.cli("reload").stdout.splitlines() == [
            "planes.std.dscp: 18 -> (none)",
            "planes.media.classify_dscp: 10 -> (none)",
        ]
        assert outer_tos(tmp_path, n, ul, a, (0, 0x28)) == copied


def test_reload_says_a_flood_list_the_core_refuses(tmp_path):
    """A static flood list longer than the core's remote VTEP slots: the
    reload takes the file, applies the rest, and says which list the core
    refused and why; the network keeps the list it had."""
    n = Node(tmp_path, uuid.uuid4().hex[:5])
    try:
        text = n.cfg.read_text()
        vtep = f"uplink: {n.uplink}}}"
        assert vtep in text
        n.cfg.write_text(text.replace(vtep, f"uplink: {n.uplink}, gateway: 10.99.0.254}}"))
        n.start()
        many = "".join(
            f"\n  - {{vtep: 10.98.{i // 250}.{i % 250 + 1}, networks: [net2]}}" for i in range(1030)
        )
        n.cfg.write_text(n.cfg.read_text() + "remotes:" + many + "\n")
        out = n.cli("reload").stdout.splitlines()
        assert out[0].startswith("remotes: (none) -> 10.98.0.1: net2; 10.98.0.2: net2"), out[0]
        assert len(out) == 2 and out[1] == (
            "refused by the core, the rest applied: the flood list of network net2 (10.98.0.1, "
            "10.98.0.10, 10.98.0.100, 10.98.0.101, 10.98.0.102, ... 1030 VTEPs): setting flood "
            "list of network 1: flood list of 1030 VTEPs (max 1024)"
        ), out
        assert flood_lists(n) == {"net1": [], "net2": []}
    finally:
        n.cleanup()


class ShaperFaultNode(Node):
    """A node whose core cannot create the uplink shaper's plane queues
    (tests/enginefault.py: as out of memory)."""

    def command(self):
        return [sys.executable, "-m", "tests.enginefault", "run", "-c", str(self.cfg)]


def test_a_reload_that_fails_part_way_puts_back_what_it_changed(tmp_path):
    """A reload that switches a network's anti_spoofing on and shapes the
    uplink, where the core cannot create the shaper's plane queues (its
    refusal made by tests/enginefault.py: the configuration no longer takes
    queues long enough to run a real core out of memory): the reload fails
    and says why, and the guards it had changed already are put back - a
    spoofed frame still passes, as the running configuration says - and
    the service keeps its configuration."""
    net1 = "gateway: 192.168.50.1}"
    n = ShaperFaultNode(tmp_path, uuid.uuid4().hex[:5], networks=NETWORKS)
    text = n.cfg.read_text()
    off = text.replace(net1, net1[:-1] + ", anti_spoofing: false}")
    n.cfg.write_text(off)
    try:
        n.start()
        a = n.pod("a", IT_SPEC)
        b = n.pod("b", IT_SPEC)
        assert ping(a["ns"], ip_of(b), count=1).returncode == 0  # neighbours known

        def spoof_passes():
            st = n.api("GET", "/v1/status")["drops"].get("spoof_ipv4", 0)
            t, out = _receiver(b["ns"], ifname_of(b), "spoofed")
            _send_from(
                a["ns"], ifname_of(a), _frame(mac_of(b), mac_of(a), SPOOFED, ip_of(b), b"spoofed")
            )
            t.join()
            return out[0], n.api("GET", "/v1/status")["drops"].get("spoof_ipv4", 0) - st

        assert spoof_passes() == (1, 0)
        n.cfg.write_text(
            text.replace("uplink: " + n.uplink + "}", "uplink: " + n.uplink + ", uplink_rate: 10G}")
        )
        r = n.cli("reload", check=False)
        assert r.returncode != 0
        assert "cannot create the plane queues" in r.stderr, r.stderr
        assert spoof_passes() == (1, 0)
        assert n.api("GET", "/v1/status")["uplink_rate_bps"] is None  # the running config
        # the file as it runs again: nothing to change
        n.cfg.write_text(off)
        assert n.cli("reload").stdout.endswith(": reloaded, nothing to change\n")
    finally:
        n.cleanup()


def test_a_dry_run_says_the_core_has_no_room_for_the_networks_added(tmp_path):
    """A node with as many networks as the core holds: a reload removing
    one and adding another in the same file is refused, since the network
    removed leaves only after the one added is in - and its dry run says
    so too, rather than that the reload would change them."""
    from dataplane.checks import MAX_NETWORKS

    nets = "\n".join(
        f"  - {{name: n{i}, vni: {1000 + i}, plane: std, subnet: 10.{i // 250}.{i % 250}.0/24}}"
        for i in range(MAX_NETWORKS)
    )
    n = Node(tmp_path, uuid.uuid4().hex[:5], networks=nets)
    try:
        n.start()
        last = f"  - {{name: n{MAX_NETWORKS - 1}, vni: {1000 + MAX_NETWORKS - 1},"
        text = n.cfg.read_text()
        n.cfg.write_text(text.replace(last, "  - {name: extra, vni: 999,"))
        for args in (("reload", "--dry-run"), ("reload",)):
            r = n.cli(*args, check=False)
            assert r.returncode != 0, (args, r.stdout)
            assert f"networks: extra: the core holds at most {MAX_NETWORKS} networks" in r.stderr, (
                args,
                r.stderr,
            )
        assert len(n.api("GET", "/v1/networks")) == MAX_NETWORKS
    finally:
        n.cleanup()


def test_a_reload_that_fails_after_adding_a_network_leaves_no_record_of_it(tmp_path):
    """With etcd: a reload that adds a network and shapes the uplink, where
    the core cannot create the shaper's plane queues (tests/enginefault.py),
    fails after the network's record was made - and deletes it again, with
    the node's claim back as it was: a refused reload changes nothing in
    the cluster store either."""
    srv = EtcdServer("rsetcd").start()
    prefix = f"/rs{uuid.uuid4().hex[:6]}"
    es = EtcdStore([srv.url], prefix=prefix)
    extra = f"store: {{kind: etcd, endpoints: ['{srv.url}'], prefix: {prefix}}}"
    n = ShaperFaultNode(tmp_path, uuid.uuid4().hex[:5], networks=NETWORKS, extra=extra)
    try:
        n.start()
        me = f"node-{n.tag}"
        text = n.cfg.read_text()
        shaped = text.replace(
            "uplink: " + n.uplink + "}", "uplink: " + n.uplink + ", uplink_rate: 10G}"
        )
        n.cfg.write_text(shaped.replace(NETWORKS, NETWORKS + "\n" + NET3.rstrip("\n")))
        r = n.cli("reload", check=False)
        assert r.returncode != 0
        assert "cannot create the plane queues" in r.stderr, r.stderr
        assert es.network("net3") is None
        assert [c["networks"] for c in es.node_claims() if c["node"] == me] == [["net1", "net2"]]
        assert net_names(n) == ["net1", "net2"]
        assert "its record stays in the store" not in (n.tmp / "service.log").read_text()
        # the file as it runs again: nothing to change
        n.cfg.write_text(text)
        assert n.cli("reload").stdout.endswith(": reloaded, nothing to change\n")
    finally:
        n.cleanup()
        es.close()
        srv.close()


def test_a_host_is_refused_on_a_network_no_node_carries(tmp_path):
    """With etcd, a network's record outlives the network in every node's
    file (for its VNI): ``host add`` on it is refused, saying no node
    carries it - no node would forward to the host, and the host would keep
    the record from being forgotten. Once a running node's claim lists the
    network, the host is taken."""
    srv = EtcdServer("hnetcd").start()
    prefix = f"/hn{uuid.uuid4().hex[:6]}"
    es, other = EtcdStore([srv.url], prefix=prefix), EtcdStore([srv.url], prefix=prefix)
    extra = f"store: {{kind: etcd, endpoints: ['{srv.url}'], prefix: {prefix}}}"
    n = Node(tmp_path, uuid.uuid4().hex[:5], networks=NETWORKS, extra=extra)
    try:
        n.start()
        es.put_network("net3", 103, "std", "192.168.53.0/24", None, 1450)  # no node has it
        add = ("host", "add", "vm1", "--network", "net3", "--mac", "02:00:00:00:35:01",
               "--ip", "192.168.53.9", "--vtep", "10.99.0.7")  # fmt: skip
        r = n.cli(*add, check=False)
        assert r.returncode != 0
        assert "network 'net3': no node carries it" in r.stderr, r.stderr
        assert es.endpoints(pod="vm1") == []
        r = n.cli("net", "forget", "net3", check=False)  # nothing keeps the record
        assert r.returncode == 0, r.stderr
        # another running node carries it: the host is taken
        es.put_network("net3", 103, "std", "192.168.53.0/24", None, 1450)
        other.claim_node("node-other", "10.99.0.9", "host9", networks=["net3"])
        n.cli(*add)
        assert [(e["network"], e["vtep"]) for e in es.endpoints(pod="vm1")] == [
            ("net3", "10.99.0.7")
        ]
        # one of this node's own networks needs no claim of another
        n.cli("host", "add", "vm2", "--network", "net1", "--mac", "02:00:00:00:35:02",
              "--ip", "192.168.50.9", "--vtep", "10.99.0.7")  # fmt: skip
    finally:
        n.cleanup()
        other.close()
        es.close()
        srv.close()
