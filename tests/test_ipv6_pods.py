"""Dual-stack pods: a network with ``subnet6`` gives every pod on it the
IPv6 counterpart of its IPv4 address (192.168.50.11 -> fd00:50::b), usable
at once, with the std plane's IPv6 default route; the pod's guard lets that
address out and no other; the service puts the address and route back when
they go (the CNI plugin's result: tests/test_cni.py). Real node services, pods in
network namespaces, TCP checked by SHA-256 at the far end (the fabric of
test_kernel_pods)."""

import ipaddress
import json
import subprocess
import sys
import time

import pytest

from tests.test_kernel_pods import (
    ROOT,
    SUBNET,
    fabric,  # noqa: F401 - the fixture
    ipn,
    nsx,
    tcp_transfer,
)

NET6 = ", subnet6: fd00:50::/64, gateway6: fd00:50::1"


def v6(ip4: str) -> str:
    """The pod's IPv6 address on fd00:50::/64 for its IPv4 one in /24."""
    return f"fd00:50::{int(ip4.rsplit('.', 1)[1]):x}"


def addrs6(ns, dev="eth0"):
    """The global IPv6 addresses of ``dev`` in ``ns``: {address/len: flags}."""
    out = json.loads(ipn(ns, f"-j -6 addr show dev {dev} scope global").stdout or "[]")
    return {
        f"{a['local']}/{a['prefixlen']}": {k for k in ("tentative", "nodad") if a.get(k)}
        for i in out
        for a in i.get("addr_info", ())
        if "local" in a
    }


def default6(ns):
    return ipn(ns, "-6 route show default").stdout.strip()


def reach6(ns, ip, what, deadline=10):
    r = nsx(ns, "ping", "-6", "-n", "-c", "1", "-i", "0.2", "-w", str(deadline), ip, timeout=60)
    assert r.returncode == 0, f"{what}: no ping reply from {ip} in {deadline} s:\n{r.stdout}"


def drops(node, reason):
    return node.status()["drops"].get(reason, 0)


def test_dual_stack_pods_on_one_node(fabric):  # noqa: F811
    fab = fabric()
    node = fab.node(1, [], net=NET6)
    a, b = fab.pod(1, "a", SUBNET + "11"), fab.pod(1, "b", SUBNET + "12")
    (pa,), (pb,) = a["planes"], b["planes"]
    assert (pa["ip6"], pb["ip6"]) == ("fd00:50::b", "fd00:50::c"), (pa, pb)
    # the address is usable at once (no duplicate address detection), and
    # the std plane has its IPv6 default route
    assert addrs6(a["ns"]) == {"fd00:50::b/64": {"nodad"}}
    assert default6(a["ns"]).startswith("default via fd00:50::1 dev eth0"), default6(a["ns"])
    reach6(a["ns"], pb["ip6"], "pod a -> pod b over IPv6")
    tcp_transfer(fab, "pod a -> pod b over IPv6", b["ns"], pb["ip6"], a["ns"])
    tcp_transfer(fab, "pod b -> pod a over IPv6", a["ns"], pa["ip6"], b["ns"])
    # IPv4 is there as before
    assert nsx(a["ns"], "ping", "-c", "1", "-w", "5", b["ip"]).returncode == 0

    # the guard: another source address is the pod's no more than before
    before = drops(node, "spoof_ipv6")
    ipn(a["ns"], "addr add fd00:50::99/64 dev eth0 nodad")
    r = nsx(
        a["ns"],
        "ping",
        "-6",
        "-n",
        "-c",
        "3",
        "-i",
        "0.2",
        "-w",
        "3",
        "-I",
        "fd00:50::99",
        pb["ip6"],
    )
    assert r.returncode != 0, r.stdout
    assert drops(node, "spoof_ipv6") >= before + 3, fab.drops_said()
    ipn(a["ns"], "addr del fd00:50::99/64 dev eth0")
    reach6(a["ns"], pb["ip6"], "pod a -> pod b from its own address again")

    # what the operator sees
    pods = node.cli("pod", "list").stdout
    assert "ip6=fd00:50::b" in pods and "ip6=fd00:50::c" in pods, pods
    nets = node.cli("net", "list").stdout
    assert "subnet6 fd00:50::/64 gateway6 fd00:50::1" in nets, nets


def test_dual_stack_pods_on_two_nodes(fabric):  # noqa: F811
    fab = fabric()
    fab.node(1, ["10.99.0.2"], net=NET6)
    fab.node(2, ["10.99.0.1"], net=NET6)
    a, b = fab.pod(1, "a", SUBNET + "21"), fab.pod(2, "b", SUBNET + "22")
    reach6(a["ns"], v6(b["ip"]), "node1 pod a -> node2 pod b over IPv6")
    tcp_transfer(fab, "node1 -> node2 over IPv6", b["ns"], v6(b["ip"]), a["ns"])
    tcp_transfer(fab, "node2 -> node1 over IPv6", a["ns"], v6(a["ip"]), b["ns"])


def _restored(node, count):
    """The service's "pod plane interface restored" events, once there are
    ``count`` (its housekeeping looks every 5 s)."""
    for _ in range(400):
        evs = [
            e
            for ln in node.log().splitlines()
            if ln.startswith("{")
            for e in [json.loads(ln)]
            if e.get("msg") == "housekeeping: pod plane interface restored"
        ]
        if len(evs) >= count:
            return evs
        time.sleep(0.05)
    raise AssertionError(f"{count} restores expected, log:\n{node.log()[-3000:]}")


def test_a_pod_keeps_or_gets_back_its_ipv6_address_and_route(fabric):  # noqa: F811
    fab = fabric()
    node = fab.node(1, [], net=NET6)
    a, b = fab.pod(1, "a", SUBNET + "31"), fab.pod(1, "b", SUBNET + "32")
    # down and up again: the address stays (as the IPv4 one does), the
    # default route goes with the link and the service puts it back
    ipn(a["ns"], "link set eth0 down")
    ipn(a["ns"], "link set eth0 up")
    assert "fd00:50::1f/64" in addrs6(a["ns"])
    (ev,) = _restored(node, 1)
    assert ev["restored"] == ["default route via 192.168.50.1", "IPv6 default route via fd00:50::1"]
    # flushed by hand: the address comes back, and with it the route
    ipn(a["ns"], "-6 addr flush dev eth0 scope global")
    assert addrs6(a["ns"]) == {}
    ev = _restored(node, 2)[1]
    assert ev["restored"][0] == "address fd00:50::1f/64", ev
    assert addrs6(a["ns"]) == {"fd00:50::1f/64": {"nodad"}}
    assert default6(a["ns"]).startswith("default via fd00:50::1 dev eth0")
    reach6(a["ns"], v6(b["ip"]), "pod a -> pod b after the restore")
    # IPv6 switched off on the pod's interface (what a runtime's default
    # does to a namespace): on again, the address and route back
    nsx(a["ns"], "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1", check=True)
    assert addrs6(a["ns"]) == {}
    ev = _restored(node, 3)[-1]
    assert ev["restored"] == ["address fd00:50::1f/64", "IPv6 default route via fd00:50::1"], ev
    assert addrs6(a["ns"]) == {"fd00:50::1f/64": {"nodad"}}
    reach6(a["ns"], v6(b["ip"]), "pod a -> pod b after IPv6 was switched on again")


def test_subnet6_does_not_move_under_its_pods(fabric):  # noqa: F811
    """The network's subnet6 is in the store's record: a config that moves
    it while a pod holds an address there is refused by ``dataplane check``
    and at start, naming the pods; the service starts again with it kept."""
    fab = fabric()
    node = fab.node(1, [], net=NET6)
    fab.pod(1, "a", SUBNET + "41")
    node.stop()
    good = node.cfg.read_text()
    node.cfg.write_text(
        good.replace("fd00:50::/64", "fd00:51::/64").replace("fd00:50::1", "fd00:51::1")
    )
    cmd = f"ip netns exec {node.ns} {sys.executable} -m dataplane.cli check -c {node.cfg}"
    r = subprocess.run(cmd.split(), capture_output=True, text=True, cwd=ROOT)
    want = (
        "network net1: subnet6 fd00:50::/64 would become fd00:51::/64 with 1 pod on it "
        f"({fab.tag}a): their IPv6 addresses would change under them"
    )
    assert r.returncode != 0 and want in r.stdout + r.stderr, r.stdout + r.stderr
    with pytest.raises(AssertionError, match="exited"):
        node.start()
    assert want in node.log()
    node.cfg.write_text(good)
    node.start()
    assert [p["ip6"] for p in node.api("GET", "/v1/pods")[0]["planes"]] == ["fd00:50::29"]


def _pod_with(fab, node, name, ip, allowed):
    """Pod ``name`` on node 1 with ``allowed`` IPv6 floating addresses."""
    ns = fab.netns(f"{fab.tag}p{name}")
    spec = {
        "pod_type": "it",
        "network_plane": ["std"],
        "networks": {"std": "net1"},
        "ips": {"std": ip},
        "allowed_addresses": {"std": allowed},
    }
    body = {"name": f"{fab.tag}{name}", "netns": f"/var/run/netns/{ns}", "spec": json.dumps(spec)}
    info = node.api("POST", "/v1/pods", body)
    node.host_links |= {p["host_ifname"] for p in info["planes"] if p.get("host_ifname")}
    return ns, info


def test_a_dual_stack_pod_keeps_the_express_lane_with_six_floating_ipv6_addresses(fabric):  # noqa: F811
    """The lane holds 8 IPv6 sources a pod port: its link-local, its own
    address on a dual-stack network and 6 floating ones (VRRP); a pod with
    7 is left to the core, the log saying why - its guard still takes it."""
    fab = fabric()
    node = fab.node(1, [], net=NET6)
    if not node.status()["express_lane"]:
        raise AssertionError("the express lane did not load on this kernel")
    six = [f"fd00:99::{i}" for i in range(1, 7)]
    _, a = _pod_with(fab, node, "a", SUBNET + "51", six)
    _, b = _pod_with(fab, node, "b", SUBNET + "52", [*six, "fd00:99::7"])
    ports = {p["pod"]: p for p in node.status()["ports"] if p["pod"]}
    assert ports[f"{fab.tag}a"]["express"] is not None, ports
    assert ports[f"{fab.tag}b"]["express"] is None, ports
    assert "8 IPv6 addresses (the link-local included), at most 8" not in node.log()
    assert "9 IPv6 addresses (the link-local included), at most 8" in node.log(), node.log()[-2000:]
    # the pod left to the core reaches the other over IPv6 all the same
    ns_b = f"{fab.tag}pb"
    reach6(ns_b, "fd00:50::33", "pod b (core) -> pod a (lane) over IPv6")


def test_a_floating_ipv6_address_cannot_be_another_pods(fabric):  # noqa: F811
    """On a dual-stack network a pod's IPv6 address is as much its own as
    its IPv4 one: another pod may not list it in allowed_addresses (its
    guard and express lane would let it advertise the address), nor ask for
    a fixed address whose IPv6 counterpart another pod lists there. Refused
    naming the other pod, with nothing made; subnet6's network address is
    nobody's floating address either. A VRRP pair still shares its floating
    address, a link-local one (VRRPv3's) too."""
    from dataplane.api import APIError
    from dataplane.checks import ipv6_link_local

    fab = fabric()
    node = fab.node(1, [], net=NET6)
    tag = fab.tag
    b = fab.pod(1, "b", SUBNET + "61")
    assert b["planes"][0]["ip6"] == v6(b["ip"]) == "fd00:50::3d"

    def refused(name, ip, allowed=None):
        with pytest.raises(APIError) as ei:
            if allowed is None:
                fab.pod(1, name, ip)
            else:
                _pod_with(fab, node, name, ip, allowed)
        assert ei.value.status == 400, ei.value
        return str(ei.value)

    assert refused("a1", SUBNET + "62", [v6(b["ip"])]) == (
        f"allowed_addresses.std[0]: fd00:50::3d is the IPv6 address of pod {tag}b on network net1"
    )
    # as the same spec with b's IPv4 address is
    assert refused("a2", SUBNET + "62", ["fd00:99::1", b["ip"]]) == (
        f"allowed_addresses.std[1]: {b['ip']} is the address of pod {tag}b on network net1"
    )
    # nor the link-local address b's kernel made from its MAC (its guard lets
    # b advertise it: another pod listing it would take b's neighbours)
    ll = str(ipv6_link_local(bytes.fromhex(b["planes"][0]["mac"].replace(":", ""))))
    assert refused("a4", SUBNET + "62", [ll]) == (
        f"allowed_addresses.std[0]: {ll} is the IPv6 link-local address of pod {tag}b "
        "on network net1"
    )
    assert refused("a3", SUBNET + "62", ["fd00:50::"]) == (
        "allowed_addresses.std[0]: fd00:50:: is the network address of fd00:50::/64 "
        "(its subnet-router anycast address)"
    )
    # c floats fd00:50::40, the counterpart of .64: d may not have .64
    _, c = _pod_with(fab, node, "c", SUBNET + "63", ["fd00:50::40", "fe80::1"])
    assert refused("d", SUBNET + "64") == (
        f"ips.std: {SUBNET}64 gives the pod IPv6 address fd00:50::40, a floating address "
        f"of pod {tag}c on network net1 (its allowed_addresses)"
    )
    # c's VRRP peer lists the same addresses
    _, e = _pod_with(fab, node, "e", SUBNET + "65", ["fd00:50::40", "fe80::1"])
    # nor a MAC whose link-local address is another pod's floating one, asked
    # for or derived (the guard would let the pod advertise it: g's
    # neighbours would be taken)
    from dataplane.store.common import derive_mac

    def ll_of(mac):
        return str(ipv6_link_local(bytes.fromhex(mac.replace(":", ""))))

    mine = derive_mac(f"{tag}h", "std", 0)
    _, g = _pod_with(fab, node, "g", SUBNET + "66", [ll_of("02:00:00:00:00:99"), ll_of(mine)])
    with pytest.raises(APIError) as ei:
        fab.pod(1, "f", SUBNET + "67", macs={"std": "02:00:00:00:00:99"})
    assert (ei.value.status, str(ei.value)) == (
        400,
        "macs.std: 02:00:00:00:00:99 gives the pod IPv6 link-local address fe80::ff:fe00:99, a "
        f"floating address of pod {tag}g on network net1 (its allowed_addresses)",
    )
    assert refused("h", SUBNET + "68") == (
        f"macs.std: {mine} derived for the plane gives the pod IPv6 link-local address "
        f"{ll_of(mine)}, a floating address of pod {tag}g on network net1 (its "
        "allowed_addresses); give the plane another MAC (macs)"
    )
    pods = node.api("GET", "/v1/pods")
    assert sorted(p["name"] for p in pods) == [b["name"], c["name"], e["name"], g["name"]]
    assert sorted(pl["ip"] for p in pods for pl in p["planes"]) == [
        SUBNET + "61",
        SUBNET + "63",
        SUBNET + "65",
        SUBNET + "66",
    ]


def test_no_address_is_given_whose_ipv6_counterpart_or_itself_is_taken(fabric):  # noqa: F811
    """A pod given its address by the network (no fixed one) never gets one
    whose IPv6 counterpart is another pod's floating address (it would
    answer for that pod's address), nor the node's VTEP address where the
    network's subnet holds it."""
    fab = fabric()
    node = fab.node(1, [], net=NET6)
    # the address the network would give next (it goes round its subnet,
    # after the last one it gave): its IPv6 counterpart floated by pod c,
    # then the network chooses for pod f
    ns = fab.netns(f"{fab.tag}pf")
    spec = {"pod_type": "it", "network_plane": ["std"], "networks": {"std": "net1"}}
    body = {"name": f"{fab.tag}probe", "netns": f"/var/run/netns/{ns}", "spec": json.dumps(spec)}
    probe = node.api("POST", "/v1/pods", body)["planes"][0]["ip"]
    node.api("DELETE", f"/v1/pods?name={fab.tag}probe")
    after = str(ipaddress.IPv4Address(probe) + 1)
    _pod_with(fab, node, "c", SUBNET + "63", [v6(after)])
    body["name"] = f"{fab.tag}f"
    info = node.api("POST", "/v1/pods", body)
    node.host_links |= {p["host_ifname"] for p in info["planes"] if p.get("host_ifname")}
    got = info["planes"][0]
    assert got["ip"] != after and got["ip6"] != v6(after), got
