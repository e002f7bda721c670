"""The uplink's tunnel tap (tunnel GSO), on real interfaces: the engine
creates the tap, refuses what does not fit (a pod port, a ring port, a long
name, a second tap, tunnel GSO without a tap, closing the tap while tunnel
GSO is on) with a message that says so and nothing changed, and removes the
tap with the port; ``redirect_ingress`` puts a real tc redirect on the tap.
An uplink reopened on its re-created device leaves its tap with the old
device, keeps its index and counters (the old device's drops too) and
reads the new one. On a kernel whose taps take no UDP-tunnel GSO (before 6.17) the engine
refuses the tap, saying so, and makes none. The traffic through it is
tested end to end in test_kernel_gso.py."""

import errno
import fcntl
import os
import socket
import struct
import subprocess
import time
import uuid

import pytest

from dataplane.errors import DataplaneError
from dataplane.podnet import redirect_ingress

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (interfaces, DPDK EAL)"),
]


_TUNSETIFF, _TUNSETOFFLOAD = 0x400454CA, 0x400454D0
_IFF_TAP, _IFF_NO_PI, _IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
_TUN_F_CSUM, _TUN_F_TSO4, _TUN_F_TSO6, _TUN_F_UDP_TUNNEL_GSO = 0x01, 0x02, 0x04, 0x80


def kernel_takes_tunnel_gso() -> bool:
    """Whether this kernel's taps take UDP-tunnel GSO (Linux 6.17 or later):
    a throwaway tap asked for the feature, as the engine asks."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        flags = _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", b"", flags))
        try:
            feats = _TUN_F_CSUM | _TUN_F_TSO4 | _TUN_F_TSO6 | _TUN_F_UDP_TUNNEL_GSO
            fcntl.ioctl(fd, _TUNSETOFFLOAD, feats)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            return False
        return True
    finally:
        os.close(fd)  # the tap goes with it


def refused_before_6_17(eng, up, tap) -> bool:
    """True (and checked) when this kernel has no tunnel GSO for taps: the
    engine refuses the tap naming the kernel it needs, and makes none."""
    if kernel_takes_tunnel_gso():
        return False
    with pytest.raises(DataplaneError, match=r"Linux 6\.17 or later"):
        eng.open_tunnel_tap(up, tap)
    assert not link_exists(tap)
    return True


def sh(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


def link_exists(name):
    return sh("ip", "link", "show", name, check=False).returncode == 0


@pytest.fixture
def veths():
    tag = uuid.uuid4().hex[:5]
    names = [f"dpt{tag}u", f"dpt{tag}p"]
    try:
        for n in names:
            sh("ip", "link", "add", n, "type", "veth", "peer", "name", f"{n}x")
            sh("ip", "link", "set", n, "up")
        yield names, f"dpt{tag}t"
    finally:
        for n in names:
            sh("ip", "link", "del", n, check=False)


def test_tunnel_tap_made_refused_and_removed(eng, veths):
    (up_if, pod_if), tap = veths
    up = eng.add_afpacket_port(up_if, role="uplink")
    pod = eng.add_afpacket_port(pod_if, role="pod")
    ring = eng.add_ring_port("tnlring", role="pod")
    if refused_before_6_17(eng, up, tap):
        pytest.skip("Linux < 6.17: no tunnel GSO on taps (the refusal was checked)")

    with pytest.raises(DataplaneError, match="has no tunnel tap"):
        eng.set_tunnel_gso(up)
    with pytest.raises(DataplaneError, match="is not the uplink"):
        eng.open_tunnel_tap(pod, tap)
    with pytest.raises(DataplaneError, match="is not an AF_PACKET port"):
        eng.open_tunnel_tap(ring, tap)
    with pytest.raises(DataplaneError, match="longer than 15 bytes"):
        eng.open_tunnel_tap(up, "x" * 16)
    assert not link_exists(tap)
    assert not eng.port_info(up).tunnel_gso

    eng.open_tunnel_tap(up, tap)
    assert link_exists(tap)
    with pytest.raises(DataplaneError, match="has a tunnel tap already"):
        eng.open_tunnel_tap(up, tap + "b")
    eng.set_tunnel_gso(up)
    info = eng.port_info(up)
    assert info.tunnel_gso and info.tunnel_gso_frames == 0
    with pytest.raises(DataplaneError, match="tunnel GSO is on"):
        eng.close_tunnel_tap(up)
    assert link_exists(tap)

    eng.set_tunnel_gso(up, False)
    eng.close_tunnel_tap(up)
    assert not link_exists(tap) and not eng.port_info(up).tunnel_gso

    # a tap still open goes with its port: closed with the port's sockets,
    # in the background (dp_port_del), so looked for until it is gone
    eng.open_tunnel_tap(up, tap)
    eng.set_tunnel_gso(up)
    eng.del_port(up)
    for _ in range(200):
        if not link_exists(tap):
            break
        time.sleep(0.05)
    assert not link_exists(tap)


def test_redirect_ingress_puts_a_tc_redirect_on_the_tap(eng, veths):
    (up_if, _), tap = veths
    up = eng.add_afpacket_port(up_if, role="uplink")
    if refused_before_6_17(eng, up, tap):
        pytest.skip("Linux < 6.17: no tunnel GSO on taps (the refusal was checked)")
    eng.open_tunnel_tap(up, tap)
    try:
        with pytest.raises(OSError, match="no interface nosuchlink0"):
            redirect_ingress(tap, "nosuchlink0")
        redirect_ingress(tap, up_if)
        out = sh("tc", "filter", "show", "dev", tap, "ingress").stdout
        assert f"mirred (Egress Redirect to device {up_if})" in out, out
        assert ",UP," in sh("ip", "link", "show", tap).stdout
        with open(f"/proc/sys/net/ipv6/conf/{tap}/disable_ipv6") as f:
            assert f.read().strip() == "1"
    finally:
        eng.close_tunnel_tap(up)


def send_from(ifname, sizes):
    """Frames of ``sizes`` bytes (an EtherType no one uses) sent on ``ifname``."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        for n in sizes:
            s.send(b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + bytes(n - 14))


def wait_for(what, cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def test_an_uplink_reopened_on_its_re_created_device(eng, veths):
    """The uplink's device deleted and created again under its name: the
    port reopened on it keeps its index and counters (the old device's
    drops stay in the totals), takes the new device's MAC and reads it;
    its tunnel tap went with the old device and opens again. What cannot
    be reopened is refused, saying why, and nothing changes."""
    (up_if, _), tap = veths
    peer = f"{up_if}x"
    sh("ip", "link", "set", peer, "up")
    up = eng.add_afpacket_port(up_if, role="uplink")
    ring = eng.add_ring_port("reopenring", role="pod")
    with pytest.raises(DataplaneError, match="is not an AF_PACKET port"):
        eng.reopen_afpacket_port(ring)
    with pytest.raises(DataplaneError, match="no port 200"):
        eng.reopen_afpacket_port(200)
    tunnel = kernel_takes_tunnel_gso()
    if tunnel:
        eng.open_tunnel_tap(up, tap)
        eng.set_tunnel_gso(up)

    def rx():
        return eng.counters().port_dict(up)["rx_packets"]

    def oversize():
        return eng.counters().drops()["kport_oversize"]

    # 3 frames read; one longer than the ring frames the MTU sized (both
    # ends raised after the port was opened): an oversize drop
    base, seen = oversize(), rx()  # the kernel's own (IPv6) frames count too
    send_from(peer, [64, 64, 64])
    wait_for("3 frames received", lambda: rx() >= seen + 3)
    for dev in (up_if, peer):
        sh("ip", "link", "set", dev, "mtu", "4000")
    send_from(peer, [3000])
    wait_for("the oversize drop counted", lambda: oversize() == base + 1)

    seen = rx()
    old_mac, old_index = eng.port_info(up).mac, socket.if_nametoindex(up_if)
    sh("ip", "link", "del", up_if)
    with pytest.raises(DataplaneError, match=f"afpacket {up_if}: if_nametoindex"):
        eng.reopen_afpacket_port(up)
    assert eng.port_info(up).mac == old_mac
    sh("ip", "link", "add", up_if, "type", "veth", "peer", "name", peer)
    for dev in (up_if, peer):
        sh("ip", "link", "set", dev, "up")

    new_index = eng.reopen_afpacket_port(up)
    assert new_index == socket.if_nametoindex(up_if) != old_index
    info = eng.port_info(up)
    assert (info.index, info.name, info.role) == (up, up_if, "uplink")
    with open(f"/sys/class/net/{up_if}/address") as f:
        assert info.mac == f.read().strip() != old_mac
    assert not info.tunnel_gso and not link_exists(tap)  # the tap went with the old device
    assert oversize() == base + 1 and rx() >= seen  # counted before: still counted
    seen = rx()
    send_from(peer, [64, 64])
    wait_for("the new device's frames received", lambda: rx() >= seen + 2)
    if tunnel:
        eng.open_tunnel_tap(up, tap)
        eng.set_tunnel_gso(up)
        assert eng.port_info(up).tunnel_gso and link_exists(tap)
