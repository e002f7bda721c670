"""Anti-spoofing on the running node service, seen from a victim's peer.

One node service with pods a (the victim) and b (the attacker) on net1 and a
host behind the kernel's own VXLAN VTEP ("vm", the observer; it accepts
gratuitous ARP and router advertisements, the most trusting peer there is).
Pod b sends, from inside its namespace through a packet socket, one forged
frame per test; the vm's ARP / ND cache must still map the victim's address
to the victim's MAC, the frame must be counted under its spoof reason, and
the pods must keep talking. The fabric is the one of test_kernel_pods.
"""

import json
import os
import sys
import time

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from dataplane.checks import ipv6_link_local, parse_mac
from tests.test_kernel_pods import (
    HOST_VTEP,
    SUBNET,
    VM_IP,
    VM_MAC,
    Fabric,
    ipn,
    nsx,
    reach,
    sh,
)

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, DPDK EAL)"),
]

A_IP, B_IP, FLOAT_IP = SUBNET + "11", SUBNET + "12", SUBNET + "100"
A_MAC, B_MAC = "02:00:00:0a:00:11", "02:00:00:0a:00:12"
A_LL, B_LL = (str(ipv6_link_local(parse_mac(m))) for m in (A_MAC, B_MAC))
VM_LL = str(ipv6_link_local(parse_mac(VM_MAC)))
BCAST = "ff:ff:ff:ff:ff:ff"

# sends frames (hex, one per line, in the file argv[2]) argv[3] times on
# interface argv[1]: a packet socket, as any process in a pod can open
SENDER = """
import socket, sys
frames = [bytes.fromhex(x) for x in open(sys.argv[2]).read().split()]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
sent = 0
for _ in range(int(sys.argv[3])):
    for f in frames:
        while True:
            try:
                s.send(f)
                break
            except BlockingIOError:
                pass
            except OSError as e:
                if e.errno != 105:  # ENOBUFS: wait for the ring
                    raise
        sent += 1
print(sent)
"""


def send_frames(tmp, ns, frames, times=1, ifname="eth0"):
    """``frames`` (bytes) sent ``times`` over from namespace ``ns``."""
    path = tmp / f"frames-{time.monotonic_ns()}.hex"
    path.write_text("\n".join(bytes(f).hex() for f in frames))
    r = nsx(ns, sys.executable, "-c", SENDER, ifname, str(path), str(times), timeout=600)
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def ipv6_netns(ns):
    """A namespace with IPv6 on: EUI-64 link-locals, no DAD delay."""
    sh("ip", "netns", "add", ns)
    nsx(
        ns,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=0",
        "net.ipv6.conf.default.disable_ipv6=0",
        "net.ipv6.conf.default.accept_dad=0",
        "net.ipv6.conf.default.addr_gen_mode=0",
        check=True,
    )
    ipn(ns, "link set lo up")


def v6_pod(fab, n, name, ip, mac, allowed=None):
    node = fab.nodes[n]
    ns = f"{fab.tag}p{name}"
    fab.namespaces.append(ns)
    ipv6_netns(ns)
    spec = {
        "pod_type": "it",
        "network_plane": ["std"],
        "networks": {"std": "net1"},
        "ips": {"std": ip},
        "macs": {"std": mac},
    }
    if allowed:
        spec["allowed_addresses"] = {"std": allowed}
    body = {"name": f"{fab.tag}{name}", "netns": f"/var/run/netns/{ns}", "spec": json.dumps(spec)}
    info = node.api("POST", "/v1/pods", body)
    info.update(ns=ns, node=n, ip=ip)
    node.host_links |= {p["host_ifname"] for p in info["planes"] if p.get("host_ifname")}
    return info


class World:
    def __init__(self, fab, tmp):
        self.fab, self.tmp = fab, tmp
        self.node = fab.node(1, [HOST_VTEP])
        self.vm = fab.kernel_host(["10.99.0.1"])
        # the observer trusts everything: gratuitous ARP creates entries,
        # router advertisements are taken
        nsx(
            self.vm,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=0",
            "net.ipv6.conf.default.disable_ipv6=0",
            "net.ipv6.conf.eth0.accept_dad=0",
            "net.ipv6.conf.eth0.accept_ra=2",
            "net.ipv6.conf.eth0.disable_ipv6=0",
            "net.ipv4.conf.all.arp_accept=1",
            "net.ipv4.conf.eth0.arp_accept=1",
            check=True,
        )
        self.a = v6_pod(fab, 1, "a", A_IP, A_MAC)
        self.b = v6_pod(fab, 1, "b", B_IP, B_MAC, allowed=[FLOAT_IP])
        reach(self.vm, A_IP, "vm -> pod a")
        reach(self.b["ns"], A_IP, "pod b -> pod a")

    def drops(self):
        return self.node.status()["drops"]

    def pod_drops(self):
        """Drops of what pods send: spoofing and storm control."""
        return sum(v for k, v in self.drops().items() if k.startswith(("spoof_", "storm")))

    def forget_arp(self, ip):
        """The vm's ARP cache has no entry for ``ip`` (the next announcement
        of it makes one, whatever the last said)."""
        nsx(self.vm, "ip", "-4", "neigh", "del", ip, "dev", "eth0")  # none: fine
        assert self.arp_of(ip) is None, ip

    def broadcasts_taken(self):
        """UDP broadcasts the vm's stack received for a port nobody listens
        on (Udp IgnoredMulti): how a DHCP offer flooded to it shows."""
        lines = nsx(self.vm, "cat", "/proc/net/snmp").stdout.splitlines()
        head, values = [ln.split() for ln in lines if ln.startswith("Udp:")][:2]
        return int(values[head.index("IgnoredMulti")])

    def arp_of(self, ip):
        out = nsx(self.vm, "ip", "-4", "neigh", "show", ip, "dev", "eth0").stdout.split()
        return out[out.index("lladdr") + 1] if "lladdr" in out else None

    def nd_of(self, ip):
        out = nsx(self.vm, "ip", "-6", "neigh", "show", ip, "dev", "eth0").stdout.split()
        return out[out.index("lladdr") + 1] if "lladdr" in out else None

    def learn_victim(self):
        """The vm's caches hold pod a, and are old enough to be overridden
        (Linux ignores ARP updates within locktime, 1 s, of the last one)."""
        reach(self.vm, A_IP, "vm -> pod a")
        r = nsx(self.vm, "ping", "-6", "-n", "-c", "1", "-w", "5", f"{A_LL}%eth0", timeout=30)
        assert r.returncode == 0, f"vm -> pod a (IPv6 link-local): {r.stdout}{r.stderr}"
        assert self.arp_of(A_IP) == A_MAC and self.nd_of(A_LL) == A_MAC
        time.sleep(1.5)

    def attack(self, frame, reason, times=3):
        before = self.drops().get(reason, 0)
        send_frames(self.tmp, self.b["ns"], [frame], times)
        for _ in range(100):
            if self.drops().get(reason, 0) >= before + times:
                break
            time.sleep(0.05)
        assert self.drops().get(reason, 0) == before + times, self.drops()
        time.sleep(0.5)  # what passed would have reached the vm by now


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guard")
    fab = Fabric(tmp / "fabric", 1500)
    fab.tmp.mkdir()
    try:
        fab.build()
        yield World(fab, tmp)
    finally:
        fab.cleanup()


def _arp(op, hwsrc, psrc, pdst, src=B_MAC, dst=BCAST, hwdst="00:00:00:00:00:00"):
    return Ether(src=src, dst=dst) / ARP(op=op, hwsrc=hwsrc, psrc=psrc, pdst=pdst, hwdst=hwdst)


ARP_CASES = {
    # the attack of the field: "A_IP is at B_MAC", gratuitous reply
    "gratuitous_reply": (_arp(2, B_MAC, A_IP, A_IP), "spoof_arp"),
    "gratuitous_request": (_arp(1, B_MAC, A_IP, A_IP), "spoof_arp"),
    "request_to_vm": (_arp(1, B_MAC, A_IP, VM_IP), "spoof_arp"),
    "reply_to_vm": (_arp(2, B_MAC, A_IP, VM_IP, dst=VM_MAC, hwdst=VM_MAC), "spoof_arp"),
    # b hides behind a's MAC on the Ethernet header
    "victim_source_mac": (_arp(2, B_MAC, A_IP, A_IP, src=A_MAC), "spoof_mac"),
    # an IPv4 packet from a's address (a reply would reach b, not a)
    "ipv4_source": (
        Ether(src=B_MAC, dst=VM_MAC) / IP(src=A_IP, dst=VM_IP) / ICMP(),
        "spoof_ipv4",
    ),
}


@pytest.mark.parametrize("case", sorted(ARP_CASES))
def test_arp_cache_of_peer_keeps_victim(world, case):
    frame, reason = ARP_CASES[case]
    world.learn_victim()
    world.attack(frame, reason)
    assert world.arp_of(A_IP) == A_MAC, f"{case}: the vm now sends pod a's traffic elsewhere"
    reach(world.vm, A_IP, f"vm -> pod a after {case}")
    reach(world.b["ns"], A_IP, f"pod b -> pod a after {case}")


def _na(target, tlla, src):
    return (
        Ether(src=B_MAC, dst="33:33:00:00:00:01")
        / IPv6(src=src, dst="ff02::1")
        / ICMPv6ND_NA(tgt=target, R=0, S=0, O=1)
        / ICMPv6NDOptDstLLAddr(lladdr=tlla)
    )


ND_CASES = {
    "na_override": (_na(A_LL, B_MAC, B_LL), "spoof_nd"),
    "na_from_victim": (_na(A_LL, B_MAC, A_LL), "spoof_ipv6"),
    "na_victim_target_own_mac_option": (_na(A_LL, A_MAC, B_LL), "spoof_nd"),
    "ns_from_victim": (
        Ether(src=B_MAC, dst=VM_MAC)
        / IPv6(src=A_LL, dst=VM_LL)
        / ICMPv6ND_NS(tgt=VM_LL)
        / ICMPv6NDOptSrcLLAddr(lladdr=B_MAC),
        "spoof_ipv6",
    ),
    "ns_victim_mac_option": (
        Ether(src=B_MAC, dst=VM_MAC)
        / IPv6(src=B_LL, dst=VM_LL)
        / ICMPv6ND_NS(tgt=VM_LL)
        / ICMPv6NDOptSrcLLAddr(lladdr=A_MAC),
        "spoof_nd",
    ),
}


@pytest.mark.parametrize("case", sorted(ND_CASES))
def test_nd_cache_of_peer_keeps_victim(world, case):
    frame, reason = ND_CASES[case]
    world.learn_victim()
    world.attack(frame, reason)
    assert world.nd_of(A_LL) == A_MAC, f"{case}: the vm now sends pod a's IPv6 elsewhere"
    r = nsx(world.vm, "ping", "-6", "-n", "-c", "1", "-w", "5", f"{A_LL}%eth0", timeout=30)
    assert r.returncode == 0, f"vm -> pod a (IPv6) after {case}: {r.stdout}"


def test_router_advertisement_from_pod_dropped(world):
    ra = (
        Ether(src=B_MAC, dst="33:33:00:00:00:01")
        / IPv6(src=B_LL, dst="ff02::1")
        / ICMPv6ND_RA(routerlifetime=1800)
        / ICMPv6NDOptSrcLLAddr(lladdr=B_MAC)
        / ICMPv6NDOptPrefixInfo(prefix="2001:db8:66::", prefixlen=64)
    )
    world.attack(ra, "spoof_nd")
    routes = nsx(world.vm, "ip", "-6", "route", "show").stdout
    assert "default" not in routes and "2001:db8:66" not in routes, routes


def until(cond, what, tries=100):
    """Wait for cond() (0.05 s apart), AssertionError naming ``what``."""
    for _ in range(tries):
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"never: {what}")


def test_floating_address_may_be_announced(world):
    """allowed_addresses: pod b's floating address is its own to announce."""
    before = world.pod_drops()
    send_frames(world.tmp, world.b["ns"], [_arp(2, B_MAC, FLOAT_IP, FLOAT_IP)])
    for _ in range(50):
        if world.arp_of(FLOAT_IP) == B_MAC:
            break
        time.sleep(0.05)
    assert world.arp_of(FLOAT_IP) == B_MAC
    assert world.pod_drops() == before, world.drops()


def test_guard_is_replayed_after_a_restart(world):
    """The guard is the port's: a restarted service guards re-attached pods."""
    world.node.stop()
    world.node.start()
    reach(world.b["ns"], A_IP, "pod b -> pod a after a restart", deadline=20)
    world.learn_victim()
    world.attack(ARP_CASES["gratuitous_reply"][0], "spoof_arp")
    assert world.arp_of(A_IP) == A_MAC
    # allowed_addresses came back with the pod's record: the announcement
    # reaches the vm (its cache emptied first) and nothing is dropped
    world.forget_arp(FLOAT_IP)
    before = world.pod_drops()
    assert send_frames(world.tmp, world.b["ns"], [_arp(2, B_MAC, FLOAT_IP, FLOAT_IP)]) == 1
    until(lambda: world.arp_of(FLOAT_IP) == B_MAC, "b's floating address announced to the vm")
    assert world.pod_drops() == before, world.drops()


def test_floating_address_cannot_be_another_pods(world):
    """allowed_addresses may not name another pod's own address, nor may a
    pod ask for a fixed address that is another pod's floating one: either
    would let one pod answer for another. Refused with nothing made; a VRRP
    pair may share a floating address."""
    from dataplane.api import APIError

    tag = world.fab.tag
    with pytest.raises(APIError) as ei:
        v6_pod(world.fab, 1, "c", SUBNET + "13", "02:00:00:0a:00:13", allowed=[A_IP])
    assert ei.value.status == 400
    assert str(ei.value) == (
        f"allowed_addresses.std[0]: {A_IP} is the address of pod {tag}a on network net1"
    )
    with pytest.raises(APIError) as ei:
        v6_pod(world.fab, 1, "d", FLOAT_IP, "02:00:00:0a:00:14")
    assert ei.value.status == 400
    assert str(ei.value) == (
        f"ips.std: {FLOAT_IP} is a floating address of pod {tag}b on network net1 "
        "(its allowed_addresses)"
    )
    pods = world.node.api("GET", "/v1/pods")
    assert {p["name"] for p in pods} == {world.a["name"], world.b["name"]}
    assert FLOAT_IP not in {pl["ip"] for p in pods for pl in p["planes"]}
    # the second member of b's pair announces the shared address too
    e = v6_pod(world.fab, 1, "e", SUBNET + "15", "02:00:00:0a:00:15", allowed=[FLOAT_IP])
    try:
        world.forget_arp(FLOAT_IP)
        before = world.pod_drops()
        e_mac = "02:00:00:0a:00:15"
        sent = send_frames(world.tmp, e["ns"], [_arp(2, e_mac, FLOAT_IP, FLOAT_IP, src=e_mac)])
        assert sent == 1
        until(lambda: world.arp_of(FLOAT_IP) == e_mac, "e's announcement of the shared address")
        assert world.pod_drops() == before, world.drops()
    finally:
        world.node.api("DELETE", "/v1/pods", {"name": e["name"]})
    # the allocator does not hand out a floating address: pod f's own next
    # address would be .2, its floating one; then g's would be
    made = []
    try:
        for name, allowed in (("f", [SUBNET + "2", SUBNET + "3"]), ("g", None)):
            ns = f"{tag}p{name}"
            world.fab.namespaces.append(ns)
            ipv6_netns(ns)
            spec = {"pod_type": "it", "network_plane": ["std"], "networks": {"std": "net1"}}
            if allowed:
                spec["allowed_addresses"] = {"std": allowed}
            body = {
                "name": f"{tag}{name}",
                "netns": f"/var/run/netns/{ns}",
                "spec": json.dumps(spec),
            }
            info = world.node.api("POST", "/v1/pods", body)
            made.append(info["name"])
            world.node.host_links |= {p["host_ifname"] for p in info["planes"]}
            assert info["planes"][0]["ip"] not in (SUBNET + "2", SUBNET + "3"), info
    finally:
        for name in made:
            world.node.api("DELETE", "/v1/pods", {"name": name})


def _offer(mac, ip):
    return (
        Ether(src=mac, dst=BCAST)
        / IP(src=ip, dst="255.255.255.255")
        / UDP(sport=67, dport=68)
        / Raw(b"\x02" + b"x" * 40)
    )


def test_dhcp_server_only_where_the_spec_says(world):
    """A pod's DHCP offer is dropped as spoof_dhcp (a rogue server would hand
    the network's DHCP hosts a router); a pod whose spec lists the plane in
    dhcp_server may send it, also after a restart."""
    world.attack(_offer(B_MAC, B_IP), "spoof_dhcp")
    tag = world.fab.tag
    ns = f"{tag}ph"
    world.fab.namespaces.append(ns)
    ipv6_netns(ns)
    spec = {
        "pod_type": "it",
        "network_plane": ["std"],
        "networks": {"std": "net1"},
        "dhcp_server": ["std"],
    }
    body = {"name": f"{tag}h", "netns": f"/var/run/netns/{ns}", "spec": json.dumps(spec)}
    info = world.node.api("POST", "/v1/pods", body)
    world.node.host_links |= {p["host_ifname"] for p in info["planes"]}
    mac, ip = info["planes"][0]["mac"], info["planes"][0]["ip"]
    try:
        for when in ("added", "replayed"):
            if when == "replayed":
                world.node.stop()
                world.node.start()
                reach(ns, A_IP, "pod h -> pod a after a restart", deadline=20)
            before, taken = world.drops(), world.broadcasts_taken()
            assert send_frames(world.tmp, ns, [_offer(mac, ip)]) == 1
            # the offer was forwarded: flooded to the vm, whose stack took it
            until(lambda: world.broadcasts_taken() > taken, f"the offer at the vm ({when})")
            assert world.drops() == before, (when, world.drops())
    finally:
        world.node.api("DELETE", "/v1/pods", {"name": body["name"]})
