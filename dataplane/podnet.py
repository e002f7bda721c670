"""Pod interfaces: netlink plumbing (pyroute2), one veth pair per pod plane.

:func:`attach_plane`, :func:`detach_plane`, :func:`find_plane`. The host end
of the pair lives in this namespace and becomes a dataplane port; the other
end is in the pod's namespace. Interfaces and addresses are left in place
when the service stops, so pods keep them across a restart; ``find_plane``
finds them again. Which planes a pod has is decided by
:mod:`dataplane.podspec`.
"""

import ctypes
import dataclasses
import errno
import fcntl
import functools
import ipaddress
import os
import re
import select
import socket
import struct
import threading
from typing import Callable, List, NamedTuple, Optional, Set, Tuple

from .checks import (
    MIN_MTU,
    POD_RESERVED_IFNAMES,
    check_ifname,
    check_int,
    check_mac,
    parse_ipv4,
    parse_ipv4_interface,
    parse_ipv6,
    parse_mac,
    show,
)
from .errors import BY_ERRNO, AlreadyExists, ConfigError, DataplaneError


class AttachResult(NamedTuple):
    host_ifname: str
    host_mac: str


@dataclasses.dataclass
class PlaneInfo:
    """What ``find_plane`` sees of a pod plane's interfaces."""

    host_ifname: str
    host_index: int
    host_mac: str
    kind: Optional[str]  # 'veth' for ours
    mtu: int
    up: bool  # host end administratively up
    peer_index: Optional[int]  # ifindex of the other end, in its namespace
    # the pod end, when find_plane was given the pod's namespace:
    ifname: Optional[str] = None
    mac: Optional[str] = None
    pod_mtu: Optional[int] = None
    pod_up: Optional[bool] = None
    addresses: List[str] = dataclasses.field(default_factory=list)  # "ip/len"


_CLONE_NEWNET = 0x40000000
_NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h
_SIOCETHTOOL = 0x8946
# ethtool commands (linux/ethtool.h) on the feature bits, by feature name
_ETHTOOL_GSTRINGS = 0x1B
_ETHTOOL_GSSET_INFO = 0x37
_ETHTOOL_GFEATURES = 0x3A
_ETHTOOL_SFEATURES = 0x3B
_ETH_SS_FEATURES = 4
_ETH_GSTRING_LEN = 32
N_STEPS = 5
_IFA_F_NODAD = 0x02  # linux/if_addr.h: an address usable at once (no DAD)


def _err_code(e) -> Optional[int]:
    code = getattr(e, "code", None)  # pyroute2 NetlinkError
    if isinstance(code, int):
        return abs(code)
    return getattr(e, "errno", None)


def _describe(e) -> str:
    if isinstance(e, DataplaneError):
        return str(e)
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror} (errno {e.errno})"
    code = _err_code(e)
    if isinstance(code, int) and code > 0:
        return f"{os.strerror(code)} (errno {code})"
    return str(e) or type(e).__name__


def _open_netns(netns_path) -> int:
    """fd of the network namespace at ``netns_path``; ConfigError if it is
    missing, not a network namespace, or this process's own."""
    path = os.fspath(netns_path)
    try:
        # O_NONBLOCK: a FIFO at the path must not hold the caller (and the
        # lock it holds) until someone writes to it
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise ConfigError(f"netns: cannot open {path}: {e.strerror}") from None
    try:
        try:
            nstype = fcntl.ioctl(fd, _NS_GET_NSTYPE)
        except OSError:
            nstype = None
        if nstype != _CLONE_NEWNET:
            raise ConfigError(
                f"netns: {path} is not a network namespace "
                "(give /var/run/netns/NAME or /proc/PID/ns/net)"
            )
        st, own = os.fstat(fd), os.stat("/proc/self/ns/net")
        if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
            raise ConfigError(
                f"netns: {path} is the dataplane's own network namespace, not a pod's"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def netns_socket(netns_path, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket of the network namespace at ``netns_path`` (a socket keeps
    the namespace it was made in): made by a thread that enters it
    (:func:`in_netns`), not by a child process as pyroute2's ``netns=``
    does (a fork of this multithreaded process took 25-35 ms a call).
    OSError if the path cannot be opened or is not a network namespace;
    a namespace that is not there is never created."""
    fd = os.open(os.fspath(netns_path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        return in_netns(fd, lambda: socket.socket(family, kind | socket.SOCK_CLOEXEC, proto))
    finally:
        os.close(fd)


def _ipr(netns_path=None):
    """pyroute2's IPRoute on this namespace, or on the one at
    ``netns_path`` (its netlink socket made there: :func:`netns_socket`)."""
    from pyroute2 import IPRoute

    if netns_path is None:
        return IPRoute()
    sock = netns_socket(netns_path, socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
    try:
        return IPRoute(use_socket=sock)  # closed with it
    except BaseException:
        sock.close()
        raise


def _ethtool(sock, ifname: str, buf) -> None:
    """One SIOCETHTOOL call; ``buf`` (a ctypes buffer) is read and written."""
    ifr = struct.pack("16sP", ifname.encode(), ctypes.addressof(buf))
    ifr += bytes(40 - len(ifr))  # sizeof(struct ifreq)
    fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifr)


def _feature_names(sock, ifname: str) -> List[str]:
    buf = ctypes.create_string_buffer(
        struct.pack("IIQI", _ETHTOOL_GSSET_INFO, 0, 1 << _ETH_SS_FEATURES, 0)
    )
    _ethtool(sock, ifname, buf)
    count = struct.unpack_from("I", buf.raw, 16)[0]
    buf = ctypes.create_string_buffer(
        struct.pack("III", _ETHTOOL_GSTRINGS, _ETH_SS_FEATURES, count)
        + bytes(count * _ETH_GSTRING_LEN)
    )
    _ethtool(sock, ifname, buf)
    raw = buf.raw[12:]
    return [
        raw[i * _ETH_GSTRING_LEN : (i + 1) * _ETH_GSTRING_LEN].split(b"\0", 1)[0].decode()
        for i in range(count)
    ]


def _features(sock, ifname: str, nbits: int):
    """(changeable, active) feature bit sets of ``ifname``."""
    size = (nbits + 31) // 32
    buf = ctypes.create_string_buffer(
        struct.pack("II", _ETHTOOL_GFEATURES, size) + bytes(16 * size)
    )
    _ethtool(sock, ifname, buf)
    # per block of 32: available (changeable), requested, active, never_changed
    blocks = struct.unpack_from(f"{4 * size}I", buf.raw, 8)

    def bits(field):
        return {b for b in range(nbits) if blocks[4 * (b // 32) + field] >> (b % 32) & 1}

    return bits(0), bits(2)


_ETHTOOL_GCHANNELS = 0x3C


def rx_channels(ifname: str) -> Optional[int]:
    """How many receive queues ``ifname`` spreads frames over now (its rx
    and combined channels, ETHTOOL_GCHANNELS as ``ethtool -l``); None if
    the driver does not say."""
    buf = ctypes.create_string_buffer(struct.pack("9I", _ETHTOOL_GCHANNELS, *([0] * 8)))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            _ethtool(sock, ifname, buf)
    except OSError:
        return None
    f = struct.unpack_from("9I", buf.raw)  # cmd, 4 maximums, rx, tx, other, combined
    return f[5] + f[8] or None


def _features_off(sock, ifname: str, nbits: int, bits):
    """Ask for feature ``bits`` of ``ifname`` off (ETHTOOL_SFEATURES, as
    ``ethtool -K`` does); the caller reads back what took."""
    size = (nbits + 31) // 32
    blocks = [0] * (2 * size)  # (valid, requested = 0) per block
    for b in bits:
        blocks[2 * (b // 32)] |= 1 << (b % 32)
    buf = ctypes.create_string_buffer(
        struct.pack(f"II{2 * size}I", _ETHTOOL_SFEATURES, size, *blocks)
    )
    _ethtool(sock, ifname, buf)


def _is_tx_offload(name: str) -> bool:
    """What 'ethtool -K dev tx off tso off gso off' turns off, every other
    kind of segmentation offload, and VLAN tag insertion: each would let a
    frame without a finished checksum, larger than the MTU, or with its tag
    outside the frame reach the AF_PACKET driver."""
    return (
        name.startswith(("tx-checksum", "tx-vlan"))
        or name.endswith("segmentation")
        or name in ("tx-gso-list", "tx-gso-partial")
    )


#: the segmentation offloads a pod end keeps: super-frames the AF_PACKET
#: driver carries whole (TCP over IPv4 and IPv6, ECN's CWR rule too, and
#: UDP_SEGMENT's), and the kernel's generic GSO
_GSO_CARRIED = frozenset(
    (
        "tx-generic-segmentation",
        "tx-tcp-segmentation",
        "tx-tcp-ecn-segmentation",
        "tx-tcp-mangleid-segmentation",
        "tx-tcp6-segmentation",
        "tx-udp-segmentation",
    )
)


def _is_gso_not_carried(name: str) -> bool:
    """A pod-end segmentation offload whose super-frames would not reach
    the core whole and right: off, the pod's kernel cuts them before its
    veth, as for a device without the offload. Every kind not in
    _GSO_CARRIED, those of later kernels too; among them SCTP's (the kernel
    never hands one to a packet socket: a virtio-net header has no GSO type
    for it, and the socket drops it), TCP in a tunnel of the pod's own (GRE,
    IPIP, IPv6 tunnels, UDP tunnels: the socket calls it plain TCP GSO with
    the checksum inside the tunnel, and the driver reads only VXLAN's layout
    there, dropping the rest as kport_gso) and accurate ECN's (the core's
    segmentation clears CWR past the first segment, as classic ECN wants,
    and accurate ECN counts with that bit)."""
    return name.endswith("segmentation") and name not in _GSO_CARRIED


def _offloads_off(ifname: str, netns_path=None, which: Callable[[str], bool] = _is_tx_offload):
    """Turn TX checksum offload, every segmentation offload (TSO, GSO, ...)
    and VLAN tag insertion off on ``ifname`` (ETHTOOL_SFEATURES, as
    ``ethtool -K`` does): frames the AF_PACKET driver reads then carry
    complete checksums. ``which``: the features (by name) to turn off
    instead. Read back: OSError if one that can be changed, or a checksum
    offload, stays on."""
    if netns_path is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    else:  # an ioctl acts in the namespace of the socket it is made on
        sock = netns_socket(netns_path, socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        names = _feature_names(sock, ifname)
        changeable, active = _features(sock, ifname, len(names))
        targets = {i for i, n in enumerate(names) if which(n)}
        off = targets & changeable & active
        if off:
            _features_off(sock, ifname, len(names), off)
            changeable, active = _features(sock, ifname, len(names))
        still = sorted(
            names[b]
            for b in active & targets
            if b in changeable or names[b].startswith("tx-checksum")
        )
        if still:
            raise OSError(errno.EOPNOTSUPP, f"{', '.join(still)} stay on on {ifname}")


def _is_nic(ifname: str) -> bool:
    """A device with hardware behind it (``/sys/class/net/IF/device``), not
    a virtual one (veth, bridge, macvlan, VLAN, bond, ...) that may hand a
    frame on whole to a stack on the same machine."""
    return os.path.exists(f"/sys/class/net/{ifname}/device")


def uplink_wire_sized(ifname: str) -> bool:
    """Keep what the uplink carries within the underlay MTU, as a wire
    does: the core hands the uplink a run of VXLAN frames as one UDP GSO
    frame (afpacket.c), which a NIC cuts itself (UDP segmentation offload)
    or the kernel's GSO cuts before it, but which a virtual device (a veth)
    would pass whole to a stack on the same machine. On anything but a NIC,
    ``tx-udp-segmentation`` is switched off so the kernel's GSO cuts it
    before the device; a NIC is left as it is. True if the feature was
    switched off. OSError if the interface cannot be asked or the feature
    stays on."""
    if _is_nic(ifname):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        names = _feature_names(sock, ifname)
        active = _features(sock, ifname, len(names))[1]
        b = names.index("tx-udp-segmentation") if "tx-udp-segmentation" in names else -1
        if b < 0 or b not in active:
            return False
        _features_off(sock, ifname, len(names), {b})
        if b in _features(sock, ifname, len(names))[1]:
            raise OSError(errno.EOPNOTSUPP, f"tx-udp-segmentation stays on on {ifname}")
        return True


def netns_local(ifname: str) -> bool:
    """Whether ``ifname`` (in this namespace) is bound to it, so that no
    move to another namespace passes: a loopback, a bridge, or a device the
    kernel's ``netns-local`` feature says so of (kernels before 6.12 show
    it; later ones keep it to themselves, and the move is refused then)."""
    sys_dev = os.path.join("/sys/class/net", ifname)
    try:
        with open(os.path.join(sys_dev, "flags")) as f:
            if int(f.read(), 16) & 0x8:  # IFF_LOOPBACK
                return True
    except (OSError, ValueError):
        return False
    if os.path.isdir(os.path.join(sys_dev, "bridge")):
        return True
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            names = _feature_names(sock, ifname)
            if "netns-local" not in names:
                return False
            return names.index("netns-local") in _features(sock, ifname, len(names))[1]
    except OSError:
        return False


_SIOCGIFFLAGS = 0x8913
_SIOCGIFMTU = 0x8921
_SIOCGIFINDEX = 0x8933
_IFF_UP, _IFF_RUNNING = 0x1, 0x40


def link_state(ifname: str):
    """(ifindex, administratively up, carrier, MTU) of ``ifname`` in this
    network namespace, or None if it does not exist. Any other failure (out
    of file descriptors, say) is raised: not an interface gone."""
    req = struct.pack("16s16x", ifname.encode())
    # (not socket.if_nametoindex: it says "no interface" for any failure)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            index = struct.unpack_from("i", fcntl.ioctl(s.fileno(), _SIOCGIFINDEX, req), 16)[0]
            flags = struct.unpack_from("H", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req), 16)[0]
            mtu = struct.unpack_from("i", fcntl.ioctl(s.fileno(), _SIOCGIFMTU, req), 16)[0]
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENXIO):
                return None  # none, or gone between the calls
            raise
    return index, bool(flags & _IFF_UP), bool(flags & _IFF_RUNNING), mtu


_RTMGRP_LINK = 0x1
_RTM_NEWLINK, _RTM_DELLINK = 16, 17
_IFLA_IFNAME = 3
_NLMSG_HDR = struct.Struct("IHHII")
_IFINFOMSG_LEN = 16
_RTATTR = struct.Struct("HH")


def _link_names(data: bytes):
    """The interface names of the link messages (created, changed, deleted)
    in one read of an rtnetlink socket."""
    off = 0
    while off + _NLMSG_HDR.size <= len(data):
        length, kind = _NLMSG_HDR.unpack_from(data, off)[:2]
        if length < _NLMSG_HDR.size:
            return
        if kind in (_RTM_NEWLINK, _RTM_DELLINK):
            a, end = off + _NLMSG_HDR.size + _IFINFOMSG_LEN, off + length
            while a + _RTATTR.size <= end:
                alen, atype = _RTATTR.unpack_from(data, a)
                if alen < _RTATTR.size:
                    break
                if atype == _IFLA_IFNAME:
                    yield data[a + _RTATTR.size : a + alen].split(b"\0", 1)[0].decode()
                    break
                a += (alen + 3) & ~3
        off += (length + 3) & ~3


class LinkEvents:
    """The kernel's link notifications (rtnetlink's link group) for the
    interface names ``wanted`` says yes to, in this network namespace:
    created, deleted, up or down, carrier, MTU. ``wake`` is set on each
    (and when the socket overflowed, as notifications may then be lost);
    :meth:`take` says which names had one since the caller last took them.
    A thread reads the socket until :meth:`close`."""

    #: in :meth:`take`'s answer: the socket overflowed, any may have changed
    ANY = "*"

    def __init__(self, wanted: Callable[[str], bool], wake: threading.Event):
        self.wanted, self.wake = wanted, wake
        self._pending: Set[str] = set()
        self._pending_lock = threading.Lock()
        self._closed = False
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        try:
            self._sock.bind((0, _RTMGRP_LINK))
        except OSError:
            self._sock.close()
            raise
        # close() writes here: the thread's wait ends at once
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="link-events", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._closed:
            ready, _, _ = select.select([self._sock, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                data = self._sock.recv(1 << 16)
            except OSError as e:
                if self._closed:
                    return
                if e.errno != errno.ENOBUFS:
                    raise
                hit = {self.ANY}  # overflowed: some may be lost, so look
            else:
                hit = {n for n in _link_names(data) if self.wanted(n)}
            if hit:
                with self._pending_lock:
                    self._pending |= hit
                self.wake.set()

    def take(self) -> Set[str]:
        """The names a notification came for since the last take (with
        :attr:`ANY` if some may have been lost); empty if none."""
        with self._pending_lock:
            was, self._pending = self._pending, set()
        return was

    def close(self):
        self._closed = True
        os.write(self._stop_w, b"x")
        self._thread.join()
        self._sock.close()
        os.close(self._stop_r)
        os.close(self._stop_w)


def lower_plane_mtu(host_ifname: str, netns_path: str, mtu: int) -> bool:
    """Each end of a pod plane's veth (the pod's end in its namespace) whose
    MTU is above ``mtu`` lowered to it; an end at or below it is left as it
    is - never raised: a pod end a later chained CNI plugin (``tuning``)
    lowered keeps its MTU. False if neither end was above."""
    found = find_plane(host_ifname, netns_path)
    if found is None or found.peer_index is None:
        return False
    pod_high = found.pod_mtu is not None and found.pod_mtu > mtu
    host_high = found.mtu is not None and found.mtu > mtu
    if pod_high:  # the pod's end first: it never sends more than the host end takes
        with _ipr(netns_path) as pod_ipr:
            pod_ipr.link("set", index=found.peer_index, mtu=mtu)
    if host_high:
        with _ipr() as ipr:
            ipr.link("set", index=found.host_index, mtu=mtu)
    return pod_high or host_high


#: the names of the uplinks' tunnel taps: this, then the uplink's index
TUNNEL_TAP_PREFIX = "dpgso"


def tunnel_tap_name(uplink: str) -> str:
    """The name of the uplink's tunnel tap: by the uplink's index, so two
    uplinks (two engines) never share one."""
    return f"{TUNNEL_TAP_PREFIX}{socket.if_nametoindex(uplink)}"


def is_tunnel_tap(ifname: str) -> bool:
    """Whether ``ifname`` is a name ``tunnel_tap_name`` gives (any node
    service's tap)."""
    rest = ifname[len(TUNNEL_TAP_PREFIX) :]
    return ifname.startswith(TUNNEL_TAP_PREFIX) and rest.isdigit() and rest.isascii()


def redirect_ingress(tap: str, uplink: str):
    """Everything the kernel receives on ``tap`` leaves on ``uplink`` as it
    is: the tap up, without addresses of its own (no IPv6), and a tc filter
    on its ingress that redirects every frame to the uplink's egress (u32
    matching all, mirred). OSError (with the netlink error's errno) when the
    kernel refuses a step: no ingress qdisc, u32 or mirred."""
    _disable_ipv6(tap)
    with _ipr() as ipr:
        try:
            src = ipr.link_lookup(ifname=tap)
            dst = ipr.link_lookup(ifname=uplink)
            if not src or not dst:
                raise OSError(errno.ENODEV, f"no interface {tap if not src else uplink}")
            ipr.link("set", index=src[0], state="up")
            ipr.tc("add", "ingress", src[0], "ffff:")
            ipr.tc(
                "add-filter",
                "u32",
                src[0],
                parent="ffff:",
                protocol=0x0003,  # ETH_P_ALL
                prio=1,
                target=0x10001,
                keys=["0x0/0x0+0"],
                action=[
                    {
                        "kind": "mirred",
                        "direction": "egress",
                        "action": "redirect",
                        "ifindex": dst[0],
                    }
                ],
            )
        except OSError:
            raise
        except Exception as e:  # NetlinkError and pyroute2's own
            raise OSError(_err_code(e) or errno.EINVAL, _describe(e)) from e


def _disable_ipv6(ifname: str):
    """No IPv6 on the host end: the kernel must not talk into the pod's plane
    from it (best effort; absent when IPv6 is off)."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "w") as f:
            f.write("1")
    except OSError:
        pass


#: IPv4 settings of a pod's host end: the node's own stack takes nothing a
#: pod sends through it - no ARP answer for the node's addresses (8: none
#: for any), nothing routed on from it, no unicast IP in a broadcast frame,
#: and strict source validation (only sources routed out of it: none)
HOST_END_IPV4 = {
    "arp_ignore": "8",
    "forwarding": "0",
    "drop_unicast_in_l2_multicast": "1",
    "rp_filter": "1",
}


def close_host_end(ifname: str):
    """The node's stack closed to what a pod sends on its host end
    ``ifname``: no IPv6 (:func:`_disable_ipv6`), and :data:`HOST_END_IPV4`.
    Its frames are the core's, which guards them; the kernel would take a
    copy of each unguarded - ARP for the node's addresses, IPv4 to the
    node's sockets or routed on from a forged source. What these settings
    leave (a limited broadcast to the node's sockets, or a unicast frame to
    the host end's MAC where the node's rp_filter is loose) the express
    lane's program drops, where the node runs it (docs/security.md). Best
    effort: a setting the kernel lacks is skipped."""
    _disable_ipv6(ifname)
    for key, value in HOST_END_IPV4.items():
        try:
            with open(f"/proc/sys/net/ipv4/conf/{ifname}/{key}", "w") as f:
                f.write(value)
        except OSError:
            pass


def _check_attach_args(netns_path, ifname, host_ifname, mac, ip_cidr, gateway, mtu, default_route):
    check_ifname(ifname, "ifname", reserved=POD_RESERVED_IFNAMES)
    check_ifname(host_ifname, "host_ifname", reserved=POD_RESERVED_IFNAMES)
    mac = check_mac(mac, "mac")
    iface = parse_ipv4_interface(ip_cidr, "ip")
    gw = None
    if gateway and default_route:
        gw = parse_ipv4(gateway, "gateway")
        if gw not in iface.network:
            raise ConfigError(f"gateway: {gw} is not in {iface.network}")
    check_int(mtu, "mtu", MIN_MTU, 65535)
    return mac, iface, gw


def _parse_ip6_cidr(value, path: str = "ip6") -> ipaddress.IPv6Interface:
    """An IPv6 address with its prefix length, 'x:y::z/len'."""
    problem = f"{show(value)} is not an IPv6 address with prefix length (x:y::z/len)"
    if not isinstance(value, str) or "/" not in value:
        raise ConfigError(f"{path}: {problem}")
    try:
        return ipaddress.IPv6Interface(value)
    except ValueError:
        raise ConfigError(f"{path}: {problem}") from None


def _check_attach_args6(ip6_cidr, gateway6, default_route):
    """(the pod end's IPv6 interface, its IPv6 default gateway), each None
    without: a dual-stack plane's part of the attach's arguments."""
    if ip6_cidr is None:
        if gateway6:
            raise ConfigError("gateway6: given without ip6")
        return None, None
    iface6 = _parse_ip6_cidr(ip6_cidr)
    gw6 = None
    if gateway6 and default_route:
        gw6 = parse_ipv6(gateway6, "gateway6")
        if gw6 not in iface6.network:
            raise ConfigError(f"gateway6: {gw6} is not in {iface6.network}")
    return iface6, gw6


@functools.lru_cache(maxsize=None)
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def in_netns(netns_fd: int, fn):
    """``fn()`` run in a thread of its own that enters the network namespace
    ``netns_fd`` first: sockets it opens and the net sysctls it writes are
    the namespace's. The thread ends with it, so nothing else runs there -
    and no process is forked (a fork of this multithreaded process took
    10-20 ms a call, and its child kept the parent's descriptors)."""
    out = {}

    def run():
        try:
            if _libc().setns(netns_fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns: {os.strerror(err)}")
            out["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            out["error"] = e

    t = threading.Thread(target=run, name="netns")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _announce_addresses(netns_fd, ip6=False):
    """Interfaces made in the pod's namespace from now on send a gratuitous
    ARP when they come up (and with ``ip6``, a dual-stack plane, an
    unsolicited neighbour advertisement), so peers that cached an old MAC
    for a reused or moved address learn the new one at once (best effort)."""

    def write():
        with open("/proc/sys/net/ipv4/conf/default/arp_notify", "w") as f:
            f.write("1")
        if ip6:
            with open("/proc/sys/net/ipv6/conf/default/ndisc_notify", "w") as f:
                f.write("1")

    try:
        in_netns(netns_fd, write)
    except OSError:
        pass


def announce(netns_path: str, ifname: str, mac: str, ip: str, count: int = 2) -> bool:
    """Send gratuitous ARPs for ``ip`` from the pod's ``ifname`` (once the
    host end is a port of the dataplane), so that peers holding an old MAC
    for this address - a pod that moved, a reused address - switch at once.
    Sent from a thread that enters the pod's namespace; best effort."""
    try:
        hw = parse_mac(mac)
        frame = (
            b"\xff" * 6
            + hw
            + b"\x08\x06"
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
            + hw
            + socket.inet_aton(ip)
            + b"\x00" * 6
            + socket.inet_aton(ip)
        )
        nsfd = _open_netns(netns_path)
    except (OSError, ValueError, DataplaneError):
        return False

    def send():
        sk = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        try:
            sk.bind((ifname, 0))
            for _ in range(count):
                sk.send(frame)
        finally:
            # closing a packet socket waits for an RCU grace period (10 ms
            # and more here): not the pod add's to wait for
            threading.Thread(target=sk.close, name="close", daemon=True).start()

    try:
        in_netns(nsfd, send)
        return True
    except OSError:
        return False
    finally:
        os.close(nsfd)


def attach_plane(
    pod: str,
    netns_path: str,
    ifname: str,
    host_ifname: str,
    mac: str,
    ip_cidr: str,
    gateway: Optional[str],
    mtu: int,
    default_route: bool,
    *,
    plane: Optional[str] = None,
    offloads: bool = True,
    node: Optional[str] = None,
    store: Optional[str] = None,
    host_end_made: Optional[Callable[[str], None]] = None,
    ip6_cidr: Optional[str] = None,
    gateway6: Optional[str] = None,
) -> AttachResult:
    """Put pod ``pod`` (network namespace at ``netns_path``) on a plane.

    Steps: 1. veth pair: ``host_ifname`` here, ``ifname`` in the pod's
    namespace (created there directly, through IFLA_NET_NS_FD, with its MAC
    and both ends' MTU); 2. TX checksum offload, TSO and GSO: left on
    (``offloads``; the AF_PACKET driver carries partial checksums and TCP
    super-frames), or turned off on both ends (a driver that cannot, such as
    AF_XDP); 3. ``ip_cidr`` on the pod end (the kernel adds the subnet route);
    4. both ends up; 5. on the std plane (``default_route``) a default route
    via ``gateway``. A dual-stack plane (``ip6_cidr``) gets its IPv6
    address in step 3 too (usable at once: no duplicate address detection,
    the address is the pod's alone; kept when the pod takes its interface
    down) and its IPv6 default route via ``gateway6`` in step 5. If a step fails, the pair is deleted and the error names
    the step. With ``node``, ``store`` (the state store's mark) and
    ``plane``, the host end is marked as that node's plane of the pod (its
    alias, :func:`plane_alias`), so that a service of that node and store
    that finds it without a record of it knows it for its own
    (:func:`marked_veths`). ``host_end_made(host_ifname)``, if given, is
    called once the pair exists, before step 2: what it starts goes on
    beside the other steps (an error it raises fails step 1). Returns the
    host end's name and MAC."""
    mac, iface, gw = _check_attach_args(
        netns_path, ifname, host_ifname, mac, ip_cidr, gateway, mtu, default_route
    )
    iface6, gw6 = _check_attach_args6(ip6_cidr, gateway6, default_route)
    what = f"pod {pod}" + (f" plane {plane}" if plane else "")
    nsfd = _open_netns(netns_path)
    try:
        with _ipr() as ipr:
            found = ipr.link_lookup(ifname=host_ifname)
            if found:
                raise AlreadyExists(
                    f"{what}: host interface {host_ifname} exists already"
                    + _whose(ipr, found[0], node, store)
                )
            try:
                pod_ipr = _ipr(netns_path)
            except Exception as e:
                raise ConfigError(f"netns: cannot enter {netns_path}: {_describe(e)}") from None
            with pod_ipr:
                if pod_ipr.link_lookup(ifname=ifname):
                    raise AlreadyExists(
                        f"{what}: interface {ifname} exists in the pod's "
                        f"namespace {netns_path} already"
                    )
                _announce_addresses(nsfd, ip6=iface6 is not None)
                alias = plane_alias(node, store, pod, plane) if node and store and plane else None
                return _attach_steps(
                    ipr,
                    pod_ipr,
                    what,
                    alias,
                    netns_path,
                    nsfd,
                    ifname,
                    host_ifname,
                    mac,
                    iface,
                    gw,
                    mtu,
                    offloads,
                    host_end_made,
                    iface6,
                    gw6,
                )
    finally:
        os.close(nsfd)


def _attach_steps(
    ipr,
    pod_ipr,
    what,
    alias,
    netns_path,
    nsfd,
    ifname,
    host_ifname,
    mac,
    iface,
    gw,
    mtu,
    offloads,
    host_end_made=None,
    iface6=None,
    gw6=None,
) -> AttachResult:
    host_index = None
    step, desc = 0, ""
    try:
        step, desc = 1, f"create veth {host_ifname} <-> {ifname} in the pod's namespace"
        ipr.link(
            "add",
            ifname=host_ifname,
            kind="veth",
            mtu=mtu,
            peer={"ifname": ifname, "net_ns_fd": nsfd, "address": mac, "mtu": mtu},
        )
        host_index = ipr.link_lookup(ifname=host_ifname)[0]
        pod_index = pod_ipr.link_lookup(ifname=ifname)[0]
        if alias:  # whose it is, for a service that finds it without its record
            ipr.link("set", index=host_index, ifalias=alias)
        if host_end_made is not None:
            host_end_made(host_ifname)

        if offloads:
            # the pod's TX checksum offload, TSO and GSO stay on: the kernel
            # port carries partial checksums and TCP super-frames whole;
            # SCTP's, tunnels' and others it could not (_is_gso_not_carried)
            step, desc = 2, f"keep TX checksum offload, TSO and GSO on {ifname}"
            _offloads_off(ifname, netns_path, which=_is_gso_not_carried)
        else:
            step, desc = 2, f"turn TX checksum offload, TSO and GSO off on {ifname}"
            _offloads_off(ifname, netns_path)
            try:  # host end: the driver writes whole frames
                _offloads_off(host_ifname)
            except OSError:
                pass

        step, desc = 3, f"add address {iface} to {ifname}"
        _add_pod_address(pod_ipr, pod_index, iface)
        if iface6 is not None:
            step, desc = 3, f"add address {iface6} to {ifname}"
            _ip6_on(nsfd, ifname)
            _add_pod_address6(pod_ipr, pod_index, iface6)

        step, desc = 4, f"bring {host_ifname} and {ifname} up"
        _host_end_up(ipr, host_index, host_ifname)
        _pod_end_up(pod_ipr, pod_index)

        step, desc = 5, (f"add default route via {gw}" if gw else "check routes")
        if gw is not None:
            _add_default_route(pod_ipr, pod_index, gw)
        if gw6 is not None:
            step, desc = 5, f"add IPv6 default route via {gw6}"
            _add_default_route(pod_ipr, pod_index, gw6)

        link = ipr.get_links(host_index)[0]
        return AttachResult(host_ifname, link.get("IFLA_ADDRESS"))
    except BaseException as e:
        undone = ""
        if host_index is not None:
            try:
                ipr.link("del", index=host_index)  # takes the pod end with it
                undone = f"; undone: veth {host_ifname} deleted"
            except Exception as e2:  # pragma: no cover - nothing we can do more
                undone = f"; could not delete veth {host_ifname}: {_describe(e2)}"
        if not isinstance(e, Exception):
            raise
        if isinstance(e, DataplaneError):
            cls = type(e)
        else:
            cls = BY_ERRNO.get(_err_code(e), DataplaneError)
            if cls is ConfigError:  # a kernel EINVAL is not the user's input
                cls = DataplaneError
            elif cls is AlreadyExists:  # the namespace has one (a default route): a
                cls = ConfigError  # conflict with the request, not this plane made twice
        raise cls(
            f"{what}: step {step}/{N_STEPS} ({desc}) failed: {_describe(e)}{undone}", _err_code(e)
        ) from e


# What an attach makes of a plane beyond the veth pair (its steps 3-5), in
# one place: the attach runs them, a restore (:func:`restore_pod_end`) runs
# those whose result is gone.
def _add_pod_address(pod_ipr, pod_index, iface):
    """The plane's address with its prefix on the pod end (the kernel adds
    the subnet route once the link is up)."""
    pod_ipr.addr("add", index=pod_index, address=str(iface.ip), prefixlen=iface.network.prefixlen)


def _add_pod_address6(pod_ipr, pod_index, iface6):
    """A dual-stack plane's IPv6 address with its prefix on the pod end,
    without duplicate address detection (the kernel adds the subnet route)."""
    pod_ipr.addr(
        "add",
        index=pod_index,
        address=str(iface6.ip),
        prefixlen=iface6.network.prefixlen,
        flags=_IFA_F_NODAD,
    )


def _ip6_on(nsfd, ifname):
    """IPv6 on the pod end of a dual-stack plane, whatever the pod's
    namespace says for its interfaces (a container runtime's default may
    switch it off), and its address kept while the pod end is down, as its
    IPv4 one is (the kernel's default drops it): a pod that takes its
    interface down and up again has it back at once. Best effort: adding
    the address says what is wrong, a restore puts it back."""

    def write():
        for key, value in (("disable_ipv6", "0"), ("keep_addr_on_down", "1")):
            with open(f"/proc/sys/net/ipv6/conf/{ifname}/{key}", "w") as f:
                f.write(value)

    try:
        in_netns(nsfd, write)
    except OSError:
        pass


def _ip6_on_at(netns_path, ifname):
    """:func:`_ip6_on` for the namespace at ``netns_path`` (a restore: the
    pod may have switched IPv6 off on its interface since, or the plane got
    its IPv6 address only now)."""
    try:
        nsfd = _open_netns(netns_path)
    except (OSError, DataplaneError):
        return
    try:
        _ip6_on(nsfd, ifname)
    finally:
        os.close(nsfd)


def peer_name(pod_ipr, pod_index) -> str:
    """The name of the pod end ``pod_index`` in the pod's namespace."""
    return pod_ipr.get_links(pod_index)[0].get("IFLA_IFNAME")


def _host_end_up(ipr, host_index, host_ifname):
    """The host end up, closed to the node's stack (:func:`close_host_end`)."""
    close_host_end(host_ifname)
    ipr.link("set", index=host_index, state="up")


def _pod_end_up(pod_ipr, pod_index):
    pod_ipr.link("set", index=pod_index, state="up")


def _add_subnet_route(pod_ipr, pod_index, iface):
    """The route the kernel adds with the address (proto kernel, scope
    link, the address as source; for IPv6 metric 256), for a restore that
    finds the address but not it (deleted by hand)."""
    if iface.version == 6:
        pod_ipr.route("add", dst=str(iface.network), oif=pod_index, proto=2, priority=256)
        return
    pod_ipr.route(
        "add",
        dst=str(iface.network),
        oif=pod_index,
        scope=253,  # RT_SCOPE_LINK
        proto=2,  # RTPROT_KERNEL
        prefsrc=str(iface.ip),
    )


def _add_default_route(pod_ipr, pod_index, gw, table: int = 254):
    """The std plane's default route via the network's gateway, IPv4 or
    IPv6 (in routing table ``table``: main unless the subnet route is in
    another)."""
    dst = "::/0" if gw.version == 6 else "0.0.0.0/0"
    pod_ipr.route("add", dst=dst, gateway=str(gw), oif=pod_index, table=table)


def _subnet_route_table(pod_ipr, pod_index, iface) -> int:
    """The routing table the pod end's subnet route is in: main (254), or
    the one a later chained CNI plugin (sbr) moved it to - where a default
    route put back must go too, for its gateway to be reachable."""
    family = socket.AF_INET6 if iface.version == 6 else socket.AF_INET
    for r in pod_ipr.get_routes(family=family):  # every table
        if (
            r.get("RTA_OIF") == pod_index
            and r["type"] == 1  # RTN_UNICAST
            and r["dst_len"] == iface.network.prefixlen
            and r.get("RTA_DST") == str(iface.network.network_address)
        ):
            return r.get("RTA_TABLE") or r["table"]
    return 254


class PodEnd(NamedTuple):
    """What an attach made of a plane besides the pair, as
    :func:`attach_plane` takes it: the pod end's address (``ip_cidr``), both
    ends up, the default route via ``gateway`` if ``default_route``."""

    host_ifname: str
    ip_cidr: str
    gateway: Optional[str]
    default_route: bool
    #: a dual-stack plane's: its IPv6 address with prefix, IPv6 gateway
    ip6_cidr: Optional[str] = None
    gateway6: Optional[str] = None


#: what a pod end may lack, in the order a restore puts it back
LACKS = (
    "address",
    "IPv6 address",
    "host end up",
    "pod end up",
    "subnet route",
    "IPv6 subnet route",
    "default route",
    "IPv6 default route",
)


def _family_lacks(pod_ipr, pod_index, iface, gateway, default_route, v6=""):
    """What of one family's part of a pod end is gone: its address, its
    subnet route, its default route via ``gateway`` (with
    ``default_route``), in LACKS' words (``v6``: "IPv6 " for IPv6's).
    Routes are looked for in every routing table: a later chained CNI
    plugin (sbr) moves them from main into a table of its own, and that
    is not a route gone."""
    family = socket.AF_INET6 if iface.version == 6 else socket.AF_INET
    lacks = []
    have = {
        (a.get("IFA_ADDRESS"), a["prefixlen"])
        for a in pod_ipr.get_addr(index=pod_index, family=family)
    }
    if (str(iface.ip), iface.network.prefixlen) not in have:
        lacks.append(v6 + "address")
    routes = [
        r
        for r in pod_ipr.get_routes(family=family)  # every table
        if r.get("RTA_OIF") == pod_index and r["type"] == 1  # RTN_UNICAST: not local's
    ]
    if not any(
        r["dst_len"] == iface.network.prefixlen
        and r.get("RTA_DST") == str(iface.network.network_address)
        for r in routes
    ):
        lacks.append(v6 + "subnet route")
    if gateway and default_route:
        gw = str(ipaddress.ip_address(gateway))
        if not any(r["dst_len"] == 0 and r.get("RTA_GATEWAY") == gw for r in routes):
            lacks.append(v6 + "default route")
    return lacks


def _pod_end_lacks(ipr, pod_ipr, end: PodEnd):
    """(host index, pod index, what of ``end`` is gone, as LACKS names
    it, in LACKS' order), or None if the pair is not there (or the pod end
    is not the host end's peer)."""
    iface = parse_ipv4_interface(end.ip_cidr, "ip")
    iface6 = _parse_ip6_cidr(end.ip6_cidr) if end.ip6_cidr else None
    found = _host_link(ipr, end.host_ifname)
    if found is None or found[1].get("IFLA_LINK") is None:
        return None
    host_index, link = found
    pod_index = link.get("IFLA_LINK")
    peers = pod_ipr.get_links(pod_index)
    if not peers or peers[0].get("IFLA_LINK") != host_index:
        return None
    lacks = _family_lacks(pod_ipr, pod_index, iface, end.gateway, end.default_route)
    if iface6 is not None:
        lacks += _family_lacks(pod_ipr, pod_index, iface6, end.gateway6, end.default_route, "IPv6 ")
    if not link["flags"] & 1:  # IFF_UP
        lacks.append("host end up")
    if not peers[0]["flags"] & 1:
        lacks.append("pod end up")
    return host_index, pod_index, sorted(lacks, key=LACKS.index)


def pod_ends_lacking(netns_path: str, ends: List[PodEnd]) -> dict:
    """host_ifname -> what of its pod end (:class:`PodEnd`) is gone (LACKS'
    names), for the planes ``ends`` of the pod in the namespace at
    ``netns_path`` that lack something; one netlink socket in the pod's
    namespace for all of them. Planes whose pair is not there are left out
    (made again elsewhere); a namespace that cannot be entered gives {}."""
    out = {}
    try:
        with _ipr() as ipr, _ipr(netns_path) as pod_ipr:
            for end in ends:
                try:
                    got = _pod_end_lacks(ipr, pod_ipr, end)
                except Exception:  # noqa: BLE001 - gone meanwhile: the next look
                    continue
                if got and got[2]:
                    out[end.host_ifname] = got[2]
    except OSError:
        return {}
    return out


def restore_pod_end(netns_path: str, end: PodEnd) -> List[str]:
    """Put back what the attach made of a plane's pod end and is gone now:
    its address with its prefix, both ends up, the subnet route and (std
    plane) the default route, and a dual-stack plane's IPv6 ones - by the
    attach's own steps. What was put
    back, in LACKS' words, with the address or gateway: [] if nothing was
    gone or the pair is not there. A route is looked for in every routing
    table (a later chained CNI plugin, sbr, moves them out of main): only
    one in none is put back - a default route into the table the subnet
    route is in. DataplaneError naming what could not."""
    iface = parse_ipv4_interface(end.ip_cidr, "ip")
    iface6 = _parse_ip6_cidr(end.ip6_cidr) if end.ip6_cidr else None
    done: List[str] = []
    what = ""

    def put_back_ip6(pod_ipr, pod_index):
        # IPv6 on for the pod end first: the pod may have switched it off
        nonlocal what
        what = f"address {iface6}"
        _ip6_on_at(netns_path, peer_name(pod_ipr, pod_index))
        _add_pod_address6(pod_ipr, pod_index, iface6)
        done.append(what)

    try:
        with _ipr() as ipr, _ipr(netns_path) as pod_ipr:
            got = _pod_end_lacks(ipr, pod_ipr, end)
            if not got or not got[2]:
                return []
            host_index, pod_index, lacks = got
            if "address" in lacks:
                what = f"address {iface}"
                _add_pod_address(pod_ipr, pod_index, iface)
                done.append(what)
            if "IPv6 address" in lacks:
                put_back_ip6(pod_ipr, pod_index)
            if "host end up" in lacks:
                what = "host end up"
                _host_end_up(ipr, host_index, end.host_ifname)
                done.append(what)
            if "pod end up" in lacks:
                what = "pod end up"
                _pod_end_up(pod_ipr, pod_index)
                done.append(what)
            # the kernel adds the subnet route with the address or the link
            # coming up, and drops the default route with either going: look again
            got = _pod_end_lacks(ipr, pod_ipr, end)
            lacks = got[2] if got else []
            if "IPv6 address" in lacks:  # went with the pod end down
                put_back_ip6(pod_ipr, pod_index)
                got = _pod_end_lacks(ipr, pod_ipr, end)
                lacks = got[2] if got else []
            if "subnet route" in lacks:
                what = f"subnet route {iface.network}"
                _add_subnet_route(pod_ipr, pod_index, iface)
                done.append(what)
            if "IPv6 subnet route" in lacks:
                what = f"subnet route {iface6.network}"
                _add_subnet_route(pod_ipr, pod_index, iface6)
                done.append(what)
            if "default route" in lacks:
                what = f"default route via {end.gateway}"
                gw = parse_ipv4(end.gateway, "gateway")
                _add_default_route(
                    pod_ipr, pod_index, gw, _subnet_route_table(pod_ipr, pod_index, iface)
                )
                done.append(what)
            if "IPv6 default route" in lacks:
                what = f"IPv6 default route via {end.gateway6}"
                gw6 = ipaddress.IPv6Address(end.gateway6)
                _add_default_route(
                    pod_ipr, pod_index, gw6, _subnet_route_table(pod_ipr, pod_index, iface6)
                )
                done.append(what)
    except Exception as e:
        if isinstance(e, DataplaneError):
            raise
        cls = BY_ERRNO.get(_err_code(e), DataplaneError)
        if cls in (ConfigError, AlreadyExists):  # the kernel's, not the caller's input
            cls = DataplaneError
        done_txt = f" (put back before it: {', '.join(done)})" if done else ""
        raise cls(f"{what or 'reading the pod end'}: {_describe(e)}{done_txt}", _err_code(e)) from e
    return done


#: the longest alias (ifalias) the kernel takes: IFALIASZ - 2 bytes (the
#: attribute's limit of IFALIASZ - 1 counts the string's terminating NUL)
ALIAS_MAX = 254
_ALIAS_RE = re.compile(r"dataplane node=(\S+) store=([0-9a-f]{8}) plane=(\S+) pod=(\S+)")


def plane_alias(node: str, store: str, pod: str, plane: str) -> str:
    """The alias a pod plane's host end is marked with: the node whose
    service made it, the mark of the state store it recorded it in (8 hex
    digits), the plane and the pod (node, plane and pod names have no white
    space). Cut to ALIAS_MAX: a pod name of more than about 150 characters
    loses its end."""
    return f"dataplane node={node} store={store} plane={plane} pod={pod}"[:ALIAS_MAX]


def parse_alias(alias) -> Optional[Tuple[str, str, str, str, bool]]:
    """(node, store, plane, pod, whole) of a pod plane's mark
    (:func:`plane_alias`; ``whole``: the pod name was not cut), or None if
    ``alias`` is not one."""
    m = _ALIAS_RE.fullmatch(alias or "")
    if m is None:
        return None
    return (*m.groups(), len(alias.encode()) < ALIAS_MAX)


def _whose(ipr, index: int, node: Optional[str], store: Optional[str]) -> str:
    """What a host interface in the way of a new plane's is, for the error:
    another service's pod plane (its mark says whose: a service of this
    namespace on another state store, or of another node, with a pod of
    the same name) or, by default, this one's."""
    try:
        alias = ipr.get_links(index)[0].get("IFLA_IFALIAS")
    except Exception:  # noqa: BLE001 - gone meanwhile: the plain message
        alias = None
    mark = parse_alias(alias)
    if mark is None or (mark[0], mark[1]) == (node, store) or node is None:
        return " (detach the plane first)"
    other, other_store, plane, pod, _ = mark
    return (
        f": it is plane {plane} of pod {pod} of node {other}, state store {other_store} (this "
        f"service: node {node}, state store {store}). Host interface names come from the pod "
        "and plane names: two node services in one network namespace cannot both have a pod "
        "of one name; give the pods different names, or run each service in a namespace of "
        "its own"
    )


def marked_veths() -> List[Tuple[int, str, str]]:
    """(ifindex, name, alias) of every veth of this namespace marked as a
    pod plane's host end (:func:`plane_alias`). One listing: a link that
    changes meanwhile may be missed, never taken for another."""
    out = []
    with _ipr() as ipr:
        for link in ipr.get_links():
            alias = link.get("IFLA_IFALIAS")
            if _link_kind(link) == "veth" and parse_alias(alias):
                out.append((link["index"], link.get("IFLA_IFNAME"), alias))
    return out


def mark_veth(host_ifname: str, alias: str) -> bool:
    """Give veth ``host_ifname`` the mark ``alias`` (:func:`plane_alias`)
    unless it has it; whether it was changed. Not a veth (or gone): left
    alone, False."""
    with _ipr() as ipr:
        found = _host_link(ipr, host_ifname)
        if found is None or _link_kind(found[1]) != "veth":
            return False
        if found[1].get("IFLA_IFALIAS") == alias:
            return False
        ipr.link("set", index=found[0], ifalias=alias)
        return True


def delete_marked(index: int, name: str, alias: str) -> bool:
    """Delete the veth ``index`` (the pod end goes with it) if it is still
    the one :func:`marked_veths` listed: named ``name``, marked ``alias``.
    False if it is gone or is another interface now."""
    from pyroute2.netlink.exceptions import NetlinkError

    with _ipr() as ipr:
        try:
            links = ipr.get_links(index)
        except NetlinkError as e:
            if abs(e.code) in (errno.ENODEV, errno.ENOENT):
                return False
            raise BY_ERRNO.get(abs(e.code), DataplaneError)(
                f"reading {name}: {_describe(e)}", abs(e.code)
            ) from e
        link = links[0] if links else None
        if (
            link is None
            or link.get("IFLA_IFNAME") != name
            or link.get("IFLA_IFALIAS") != alias
            or _link_kind(link) != "veth"
        ):
            return False
        try:
            ipr.link("del", index=index)
        except NetlinkError as e:
            if abs(e.code) in (errno.ENODEV, errno.ENOENT):
                return False
            raise BY_ERRNO.get(abs(e.code), DataplaneError)(
                f"deleting {name}: {_describe(e)}", abs(e.code)
            ) from e
        return True


def detach_plane(host_ifname: str) -> bool:
    """Delete the veth pair whose host end is ``host_ifname`` (the pod end goes
    with it). False if it does not exist; ConfigError if it is not a veth."""
    from pyroute2.netlink.exceptions import NetlinkError

    if not host_ifname:
        return False  # a remote endpoint has no interface
    with _ipr() as ipr:
        found = _host_link(ipr, host_ifname)
        if found is None:
            return False
        index, link = found
        kind = _link_kind(link)
        if kind != "veth":
            raise ConfigError(
                f"host_ifname: {host_ifname} is a {kind or 'non-veth'} "
                "interface, not a pod plane's veth: not deleting it"
            )
        try:
            ipr.link("del", index=index)
        except NetlinkError as e:
            if abs(e.code) in (errno.ENODEV, errno.ENOENT):
                return False  # gone meanwhile (the pod's netns died)
            raise BY_ERRNO.get(abs(e.code), DataplaneError)(
                f"deleting {host_ifname}: {_describe(e)}", abs(e.code)
            ) from e
        return True


def _pod_addresses(pod_ipr, index) -> List[str]:
    """Interface ``index``'s IPv4 addresses and global IPv6 ones (not its
    link-local), "ip/len"."""
    return [
        f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"
        for family in (socket.AF_INET, socket.AF_INET6)
        for a in pod_ipr.get_addr(index=index, family=family)
        if a["scope"] == 0 or family == socket.AF_INET
    ]


def _host_link(ipr, host_ifname: str):
    """(index, link) of interface ``host_ifname`` in this namespace, or None
    if there is none - also when it vanishes between the name's lookup and
    the read of its link (ENODEV: the kernel deletes a dying namespace's
    veths, and their host ends, in the background). Any other netlink
    error: a DataplaneError naming the interface."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        idx = ipr.link_lookup(ifname=host_ifname)
        if not idx:
            return None
        links = ipr.get_links(idx[0])
    except NetlinkError as e:
        if abs(e.code) in (errno.ENODEV, errno.ENOENT):
            return None  # gone meanwhile: already gone, not an error
        cls = BY_ERRNO.get(abs(e.code), DataplaneError)
        if cls in (ConfigError, AlreadyExists):  # the kernel's, not the caller's input
            cls = DataplaneError
        raise cls(f"reading interface {host_ifname}: {_describe(e)}", abs(e.code)) from e
    return (idx[0], links[0]) if links else None


def _link_kind(link) -> Optional[str]:
    info = link.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info is not None else None


def find_plane(host_ifname: str, netns_path: Optional[str] = None) -> Optional[PlaneInfo]:
    """The plane's interfaces if the host end still exists (None otherwise).
    With ``netns_path``, the pod end is looked up too (ifname, MAC, MTU,
    addresses); those stay None when the namespace is gone."""
    if not host_ifname:
        return None  # a remote endpoint has no interface
    with _ipr() as ipr:
        found = _host_link(ipr, host_ifname)
    if found is None:
        return None
    index, link = found
    info = PlaneInfo(
        host_ifname=host_ifname,
        host_index=index,
        host_mac=link.get("IFLA_ADDRESS"),
        kind=_link_kind(link),
        mtu=link.get("IFLA_MTU"),
        up=bool(link["flags"] & 1),
        peer_index=link.get("IFLA_LINK"),
    )
    if netns_path is None or info.peer_index is None:
        return info
    try:
        nsfd = _open_netns(netns_path)
    except ConfigError:
        return info
    os.close(nsfd)
    try:
        with _ipr(netns_path) as pod_ipr:
            peers = pod_ipr.get_links(info.peer_index)
            if not peers:
                return info
            peer = peers[0]
            if peer.get("IFLA_LINK") != info.host_index:
                return info  # same index, another interface
            info.ifname = peer.get("IFLA_IFNAME")
            info.mac = peer.get("IFLA_ADDRESS")
            info.pod_mtu = peer.get("IFLA_MTU")
            info.pod_up = bool(peer["flags"] & 1)
            info.addresses = _pod_addresses(pod_ipr, info.peer_index)
    except Exception:
        pass  # namespace or peer gone meanwhile
    return info
