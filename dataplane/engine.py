"""Engine: the Python face of the C forwarding core.

One Engine per process (DPDK's EAL starts once per process). The calling
thread is the control thread; worker lcores forward. Every method is a
control-path call (per table change or per burst of work), never per packet.

    eng = Engine(EngineConfig(mode="fallback", lcores=[0, 1]))
    up = eng.add_port("net_ring_up", role="uplink")   # any DPDK device string
    eng.add_network(0, vni=100, plane=0)
    ...
    eng.start()
"""

import dataclasses
import ipaddress
import os
import re
import shutil
import socket
import struct
import threading
import time
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np

from . import checks, errors
from .checks import (
    CAPTURE_DIRECTIONS,
    POOL_MBUFS,
    absent_cpus,
    check_int,
    check_lcores,
    check_memory_mb,
    check_mode,
    check_pow2,
    check_rx_queues,
    check_udp_port,
    check_underlay_mtu,
    check_vni,
    format_mac,
    parse_ipv4_interface,
    parse_mac,
)
from .errors import ConfigError, EALError, check

try:
    from ._core import ffi, lib
except ImportError as e:  # pragma: no cover - depends on the build
    raise ImportError(
        f"dataplane._core cannot be loaded ({e}): build it with 'pip install -e .' "
        "(needs libdpdk-dev, pkg-config and a C compiler)"
    ) from e

#: the C ABI this Python code was written against (csrc/dataplane.h)
ABI_VERSION = 40
if lib.dp_abi_version() != ABI_VERSION:  # pragma: no cover
    raise ImportError(
        f"dataplane._core ABI {lib.dp_abi_version()} does not match the Python "
        f"package's {ABI_VERSION}: rebuild with 'pip install -e .'"
    )

ROLES = {"pod": lib.DP_ROLE_POD, "uplink": lib.DP_ROLE_UPLINK}


def _names(block):
    return [
        ffi.string(lib.dp_counter_name(block, i)).decode()
        for i in range(lib.dp_counter_count(block))
    ]


DROP_REASONS: List[str] = _names(lib.DP_BLOCK_DROP)
PORT_COUNTERS: List[str] = _names(lib.DP_BLOCK_PORT)
NET_COUNTERS: List[str] = _names(lib.DP_BLOCK_NET)
WORKER_COUNTERS: List[str] = _names(lib.DP_BLOCK_WORKER)
QOS_COUNTERS: List[str] = _names(lib.DP_BLOCK_QOS)


def _lat_bounds():
    out = []
    v = ffi.new("uint64_t *")
    for i in range(lib.DP_LAT_BUCKETS - 1):
        lib.dp_lat_bound_ns(i, v)
        out.append(v[0] / 1e9)
    return out


#: upper bounds (seconds) of the latency histogram buckets; the last bucket is +Inf
LATENCY_BOUNDS_S: List[float] = _lat_bounds()


def parse_ipv4(ip, field="ip") -> int:
    """'a.b.c.d' -> the address as the core takes it (host order)."""
    return int(checks.parse_ipv4(ip, field))


@dataclasses.dataclass
class EngineConfig:
    """How to start DPDK. Validated by :meth:`eal_args`."""

    mode: str = "fallback"  # "hugepages" or "fallback" (EAL --no-huge)
    lcores: Sequence[int] = (0, 1)  # first: control thread; others: workers
    cpus: Sequence[int] = ()  # CPU of each lcore; empty: lcore n on CPU n
    pci: Sequence[str] = ()  # PCI devices to use; empty: --no-pci
    memory_mb: int = 512
    n_mbufs: int = POOL_MBUFS
    file_prefix: Optional[str] = None  # default: unique per process
    log_level: str = "notice"
    log_json: bool = False  # DPDK's log lines as the node service's: JSON objects

    def eal_args(self) -> List[str]:
        check_mode(self.mode)
        lcores = check_lcores(self.lcores)
        cpus = list(self.cpus) or lcores
        if len(cpus) != len(lcores) or any(not isinstance(c, int) or c < 0 for c in cpus):
            raise ConfigError(
                f"cpus: {list(self.cpus)!r} must give one CPU per lcore ({len(lcores)})"
            )
        bad, usable = absent_cpus(cpus)
        if bad:
            raise ConfigError(
                f"{'cpus' if self.cpus else 'lcores'}: {bad} not present or not allowed ({usable})"
            )
        check_memory_mb(self.memory_mb)
        check_int(self.n_mbufs, "n_mbufs", 1023, 1 << 22)
        prefix = self.file_prefix or f"dataplane-{os.getpid()}"
        if not prefix.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"file_prefix: {prefix!r} must be letters, digits, - or _")
        where = (
            ["--lcores", ",".join(f"{lc}@{c}" for lc, c in zip(lcores, cpus))]
            if self.cpus
            else ["-l", ",".join(map(str, lcores))]
        )
        args = (
            ["dataplane"]
            + where
            + [
                "--main-lcore",
                str(lcores[0]),
                "--file-prefix",
                prefix,
                f"--log-level={self.log_level}",
            ]
        )
        if self.mode == "fallback":
            # plain anonymous memory, no shared config files
            args += ["--no-huge", "--no-shconf", "-m", str(int(self.memory_mb))]
        else:
            # hugepages through memfd: no hugetlbfs file outlives the process;
            # taken as needed up to the limit and given back when freed
            args += ["--in-memory", f"--socket-limit={int(self.memory_mb)}"]
        if self.pci:
            for dev in self.pci:
                if not isinstance(dev, str) or not dev or "," in dev or " " in dev:
                    raise ConfigError(f"pci: {dev!r} is not a PCI address such as 0000:03:00.0")
                args += ["-a", dev]
        else:
            # the machine's own NIC must never be probed
            args.append("--no-pci")
        return args


@dataclasses.dataclass
class PortInfo:
    index: int
    name: str
    role: str
    driver: str
    network: Optional[int]
    worker: int
    mac: str
    rx_workers: List[int] = dataclasses.field(default_factory=list)  # per rx queue
    tunnel_gso: bool = False  # VXLAN super-frames leave whole (set_tunnel_gso)
    tunnel_gso_frames: int = 0  # how many did
    shared_memory: bool = False  # on a pod's shared memory (memif): bursts guarded
    set_aside: bool = False  # ... and set aside after a fault (for 100 ms; for good after 16)
    link: Optional[bool] = None  # a DPDK port's link (a memif/vhost-user pod's peer connected)


#: struct dp_fdb_entry (csrc/dataplane.h), as numpy reads a copy of an array of them
_FDB_ENTRY = np.dtype(
    {
        "names": ["net", "mac", "kind", "target", "learned", "age_ms", "frozen_ms"],
        "formats": ["<i4", ("u1", 6), "<i4", "<u4", "<i4", "<u4", "<u4"],
        "offsets": [
            ffi.offsetof("struct dp_fdb_entry", f)
            for f in ("net", "mac", "kind", "target", "learned", "age_ms", "frozen_ms")
        ],
        "itemsize": ffi.sizeof("struct dp_fdb_entry"),
    }
)


#: what learning did (Engine.learn_stats), by the core's DP_LEARN_* index
LEARN_EVENTS = (
    "learned",
    "moved",
    "refused_static",
    "refused_limit",
    "aged",
    "duplicate",
    "refused_frozen",
)


def _check_net(net: Optional[int]):
    """ConfigError unless ``net`` is None (every network) or a network index."""
    if net is not None and not 0 <= net < lib.DP_MAX_NETS:
        raise ConfigError(f"network index {net} out of range 0..{lib.DP_MAX_NETS - 1}")


class FdbEntry(NamedTuple):
    """One FDB entry (Engine.fdb_list)."""

    network: int  # the core's network index
    mac: str
    kind: str  # "local" or "remote"
    port: Optional[int]  # local: the port it goes to
    vtep: Optional[str]  # remote: the VTEP it goes to
    learned: bool  # remote: learned from the underlay (vtep.learning)
    age_s: Optional[float]  # learned: since it was learned or last confirmed
    # learned, found a duplicate (moving too often): how long it stays frozen
    frozen_s: Optional[float] = None


class Counters:
    """Counters summed over workers at the time of the call (numpy arrays)."""

    def __init__(self, port, net, drop, worker, qos=None, lat=None, tsc_hz=1):
        self.port = port  # [DP_MAX_PORTS, len(PORT_COUNTERS)]
        self.net = net  # [DP_MAX_NETS, len(NET_COUNTERS)]
        self.drop = drop  # [len(DROP_REASONS)]
        self.worker = worker  # [n_workers, len(WORKER_COUNTERS)]
        self.qos = qos  # [DP_MAX_PORTS, DP_MAX_PLANES, len(QOS_COUNTERS)]
        self.lat = lat  # [DP_MAX_PLANES, DP_LAT_ROW]: buckets, then sum (TSC)
        self.tsc_hz = tsc_hz

    def since(self, earlier: "Counters") -> "Counters":
        """What was counted between ``earlier`` and this snapshot."""

        def d(a, b):
            return None if a is None else a - b

        return Counters(
            self.port - earlier.port,
            self.net - earlier.net,
            self.drop - earlier.drop,
            self.worker - earlier.worker,
            d(self.qos, earlier.qos),
            d(self.lat, earlier.lat),
            self.tsc_hz,
        )

    def qos_dict(self, port: int, plane: int) -> dict:
        return {name: int(self.qos[port, plane, i]) for i, name in enumerate(QOS_COUNTERS)}

    def latency(self, plane: int):
        """(bucket counts [len(LATENCY_BOUNDS_S) + 1], sum in seconds)."""
        row = self.lat[plane]
        return (
            [int(x) for x in row[: lib.DP_LAT_BUCKETS]],
            float(row[lib.DP_LAT_SUM]) / self.tsc_hz,
        )

    def latency_quantile(self, plane: int, q: float) -> Optional[float]:
        """Upper bound (seconds) of the bucket holding quantile q; None: no data,
        inf: beyond the last bound."""
        counts, _ = self.latency(plane)
        total = sum(counts)
        if total == 0:
            return None
        need = q * total
        acc = 0
        for i, c in enumerate(counts):
            acc += c
            if acc >= need:
                return LATENCY_BOUNDS_S[i] if i < len(LATENCY_BOUNDS_S) else float("inf")
        return float("inf")

    def drops(self) -> dict:
        return {name: int(self.drop[i]) for i, name in enumerate(DROP_REASONS)}

    def port_dict(self, port: int) -> dict:
        return {name: int(self.port[port, i]) for i, name in enumerate(PORT_COUNTERS)}

    def net_dict(self, net: int) -> dict:
        return {name: int(self.net[net, i]) for i, name in enumerate(NET_COUNTERS)}


_started_in_pid = None


def _runtime_dir():
    if os.geteuid() == 0:
        return "/var/run/dpdk"
    return os.path.join(os.environ.get("XDG_RUNTIME_DIR", "/tmp"), "dpdk")


_DEFAULT_PREFIX = re.compile(r"dataplane-([0-9]+)")


def remove_stale_runtime_dirs() -> List[str]:
    """The EAL runtime directories (``dataplane-<pid>``, the default file
    prefix) of engines whose process is gone: one killed without closing
    (SIGKILL, a crash) leaves its directory, which :meth:`Engine.close`
    would have removed. Another prefix is left alone. The names removed."""
    base = _runtime_dir()
    try:
        names = os.listdir(base)
    except OSError:
        return []
    gone = []
    for name in names:
        m = _DEFAULT_PREFIX.fullmatch(name)
        if not m or int(m.group(1)) == os.getpid() or os.path.exists(f"/proc/{m.group(1)}"):
            continue
        shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        gone.append(name)
    return gone


class _Tables:
    """What the workers look up: networks and their flood lists, the FDB,
    this node's VTEP and its underlay neighbours. Part of :class:`Engine`,
    whose ``_call`` makes each C call under its lock."""

    def add_network(self, net: int, vni: int, plane: int = 0):
        check_vni(vni)
        self._call(f"adding network {net} (VNI {vni})", lib.dp_net_add, net, vni, plane)
        self._nets[net] = (vni, plane)

    def del_network(self, net: int):
        self._call(f"removing network {net}", lib.dp_net_del, net)
        self._nets.pop(net, None)
        self._express_left_net.pop(net, None)  # the index's next network starts at 0

    def flood_list(self, net: int) -> List[Tuple[str, bool]]:
        """The VTEPs network ``net`` floods to, as the core has them, each
        with whether its underlay next hop is resolved (frames to it leave)."""
        cap = lib.DP_MAX_TUNNELS
        ips = ffi.new("uint32_t[]", cap)
        res = ffi.new("uint8_t[]", cap)
        n = self._call(
            f"reading the flood list of network {net}", lib.dp_net_flood_get, net, ips, res, cap
        )
        return [(str(ipaddress.IPv4Address(ips[i])), bool(res[i])) for i in range(n)]

    def networks(self) -> dict:
        """{index: (vni, plane)} of the networks in the core."""
        return dict(self._nets)

    def set_flood(self, net: int, vteps: Sequence[str]):
        """Remote VTEPs that get a copy of broadcast/unknown frames of ``net``."""
        ips = [parse_ipv4(v, f"flood[{i}]") for i, v in enumerate(vteps)]
        arr = ffi.new("uint32_t[]", ips or [0])
        self._call(f"setting flood list of network {net}", lib.dp_net_flood_set, net, arr, len(ips))

    # ------------------------------------------------------------------ FDB
    def fdb_add_local(self, net: int, mac, port: int):
        self._call(
            f"adding local MAC {mac} to network {net}",
            lib.dp_fdb_add_local,
            net,
            parse_mac(mac),
            port,
        )

    def fdb_add_remote(self, net: int, mac, vtep: str):
        self._call(
            f"adding remote MAC {mac} via {vtep} to network {net}",
            lib.dp_fdb_add_remote,
            net,
            parse_mac(mac),
            parse_ipv4(vtep, "vtep"),
        )

    def fdb_del(self, net: int, mac):
        self._call(f"removing MAC {mac} from network {net}", lib.dp_fdb_del, net, parse_mac(mac))

    def fdb_get(self, net: int, mac):
        """None, ("local", port) or ("remote", "vtep-ip")."""
        kind = ffi.new("int *")
        target = ffi.new("uint32_t *")
        with self._lock:
            if not lib.dp_fdb_get(net, parse_mac(mac), kind, target):
                return None
        if kind[0] == lib.DP_FDB_LOCAL:
            return ("local", int(target[0]))
        return ("remote", str(ipaddress.IPv4Address(target[0])))

    def fdb_rows(self, net: Optional[int] = None, mac=None) -> np.ndarray:
        """The FDB's entries (of network ``net``, else all; of ``mac``, else
        all) as a numpy array of ``struct dp_fdb_entry`` (fields net, mac,
        kind, target, learned, age_ms, frozen_ms), in table order. The
        table is copied in one go under the lock (no entry changes
        meanwhile: a C walk, about 10 ns an entry)."""
        _check_net(net)
        want = parse_mac(mac) if mac is not None else None
        chunk = 4096
        buf = ffi.new("struct dp_fdb_entry[]", chunk)
        pos = ffi.new("uint32_t *", 0)
        parts = []
        with self._lock:
            if self._closed:
                raise ConfigError("the engine is closed")
            while True:
                n = check(
                    lib.dp_fdb_list(-1 if net is None else net, pos, buf, chunk),
                    lib,
                    ffi,
                    "listing the FDB",
                )
                parts.append(
                    np.frombuffer(ffi.buffer(buf, n * _FDB_ENTRY.itemsize), _FDB_ENTRY).copy()
                )
                if n < chunk:
                    break
        rows = np.concatenate(parts)
        if want is not None:
            rows = rows[(rows["mac"] == np.frombuffer(want, np.uint8)).all(axis=1)]
        return rows

    def fdb_local_keys(self) -> Set[Tuple[int, str]]:
        """(network, MAC) of every local entry (a port of this node), from
        one copy of the table (:meth:`fdb_rows`)."""
        rows = self.fdb_rows()
        rows = rows[rows["kind"] == lib.DP_FDB_LOCAL]
        return {(int(n), format_mac(bytes(m))) for n, m in zip(rows["net"], rows["mac"])}

    def fdb_list(self, net: Optional[int] = None, mac=None) -> List[FdbEntry]:
        """The FDB's entries as :class:`FdbEntry` (:meth:`fdb_rows`): made
        from the copy after the lock is let go, so a large table does not
        hold up the control path while they are."""
        rows = self.fdb_rows(net, mac)
        vteps = {}  # a VTEP's address as text, made once
        out: List[FdbEntry] = []
        for netw, m, kind, target, learned, age_ms, frozen_ms in rows.tolist():
            if kind == lib.DP_FDB_REMOTE:
                vtep = vteps.get(target)
                if vtep is None:
                    vtep = vteps[target] = str(ipaddress.IPv4Address(target))
                e = FdbEntry(netw, format_mac(m), "remote", None, vtep, bool(learned), None)
                if learned:
                    e = e._replace(age_s=age_ms / 1000.0, frozen_s=frozen_ms / 1000.0 or None)
            else:
                e = FdbEntry(netw, format_mac(m), "local", target, None, False, None)
            out.append(e)
        return out

    def fdb_count(self) -> int:
        with self._lock:
            return lib.dp_fdb_count()

    # ----------------------------------------------------------------- VTEP
    def set_vtep(
        self,
        address: str,
        mac,
        uplink: int,
        udp_port: int = 4789,
        underlay_mtu: int = 1500,
        gateway: Optional[str] = None,
        next_hop_mac=None,
        learning: bool = False,
    ):
        """This node's VTEP. ``address`` is 'a.b.c.d/len' (the underlay subnet).
        Next hops are resolved by ARP unless ``next_hop_mac`` is given."""
        iface = parse_ipv4_interface(address, "vtep address", need_prefix=False)
        check_udp_port(udp_port)
        check_underlay_mtu(underlay_mtu)
        c = ffi.new("struct dp_vtep_conf *")
        c.ip = int(iface.ip)
        c.prefix_len = iface.network.prefixlen
        c.gateway = parse_ipv4(gateway, "gateway") if gateway else 0
        c.mac = parse_mac(mac, "vtep mac")
        c.udp_port = udp_port
        c.underlay_mtu = underlay_mtu
        c.uplink = uplink
        c.learning = 1 if learning else 0
        if next_hop_mac is not None:
            c.static_nh = 1
            c.static_nh_mac = parse_mac(next_hop_mac, "next_hop_mac")
        old_up = self._vtep["uplink"] if self._vtep else -1
        self._call("configuring the VTEP", lib.dp_vtep_set, c)
        if uplink >= 0 and uplink != old_up:
            lib.dp_express_counts_reset(uplink)  # what the lane sends out of it, from 0
        self._vtep = dict(
            address=address,
            mac=mac,
            uplink=uplink,
            udp_port=udp_port,
            underlay_mtu=underlay_mtu,
            gateway=gateway,
            next_hop_mac=next_hop_mac,
            learning=learning,
        )

    def set_neighbor(self, ip: str, mac):
        self._call(f"setting neighbour {ip}", lib.dp_neigh_set, parse_ipv4(ip), parse_mac(mac))

    def refresh_neighbors(self) -> int:
        """Every underlay next hop learned by ARP asked again now (after the
        uplink moved to a new device: the next hops may have new MACs, and
        they learn the VTEP's from the request); each keeps its MAC until it
        answers and is forgotten when it does not. Neighbours set with
        :meth:`set_neighbor` stay. How many were asked."""
        return self._call("asking the underlay neighbours again", lib.dp_neigh_refresh)

    def neighbor(self, ip: str) -> Optional[str]:
        out = ffi.new("uint8_t[6]")
        with self._lock:
            if not lib.dp_neigh_get(parse_ipv4(ip), out):
                return None
        return format_mac(bytes(out))


class _Planes:
    """Planes: their priority, rates, queues, DSCP marking and workers, and
    the shaper of each port. Part of :class:`Engine`."""

    def set_plane(
        self,
        plane: int,
        priority: int,
        min_bps: int = 0,
        max_bps: int = 0,
        queue_len: int = 1024,
        dscp: Optional[int] = None,
        worker: Optional[int] = None,
        rx_queue: Optional[int] = None,
    ):
        """Plane ``plane`` (0..DP_MAX_PLANES-1): strict ``priority`` (higher
        first), guaranteed/maximum rate on shaped ports (bit/s, 0 = none),
        queue length (frames, power of two; the queues of ports shaped from
        now on: a port shaped already keeps its own), outer DSCP to mark (None: copy
        the inner one), a worker of its own for its pod ports (None: shared),
        and with it rx queue ``rx_queue`` (1..) of every port that has it.
        Rates change at once, while traffic flows; a queue changes workers
        without ever being polled by two."""
        for name, v in (("min_bps", min_bps), ("max_bps", max_bps)):
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"plane {plane}: {name} {v!r} must be a non-negative integer")
        c = ffi.new("struct dp_plane_conf *")
        c.priority = priority
        c.min_bps = min_bps
        c.max_bps = max_bps
        c.queue_len = queue_len
        c.dscp = -1 if dscp is None else dscp
        c.worker = -1 if worker is None else worker
        c.rx_queue = -1 if rx_queue is None else rx_queue
        self._call(f"configuring plane {plane}", lib.dp_plane_set, plane, c)

    def set_shaper(self, port: int, rate_bps: int, burst_bytes: int = 16384):
        """Shape ``port`` to ``rate_bps`` (bits/s on the wire, 24 bytes of
        Ethernet overhead per frame counted) with per-plane queues and strict
        priority. A port shaped already takes the new rate and burst in place,
        while traffic flows: its queues and what they hold stay. 0 switches
        the shaper and the queues off (what they held is dropped and counted,
        ``queue_flushed``)."""
        if not isinstance(rate_bps, int) or rate_bps < 0:
            raise ConfigError(f"rate_bps: {rate_bps!r} must be a non-negative integer")
        self._call(f"shaping port {port}", lib.dp_port_shaper, port, rate_bps, burst_bytes)

    def set_qos_mode(self, priority: bool = True, latency: bool = True):
        """priority=False: every plane shares one FIFO (the comparison baseline)."""
        self._call("setting the QoS mode", lib.dp_qos_mode, int(priority), int(latency))

    def set_dscp_plane(self, dscp: int, plane: Optional[int]):
        """Classify frames whose inner DSCP is ``dscp`` into ``plane`` (None:
        by their network, the default)."""
        self._call(f"mapping DSCP {dscp}", lib.dp_dscp_plane, dscp, -1 if plane is None else plane)

    def queue_depth(self, port: int, plane: int) -> int:
        return self._call("reading a queue depth", lib.dp_qos_depth, port, plane)


def source_addresses(octets: bytes, ips: Sequence[str]) -> Tuple[list, List[bytes]]:
    """The sources a pod port with MAC ``octets`` and addresses ``ips`` may
    send from, as its guard and the express lane check them: its IPv4
    addresses, and its IPv6 ones (16 bytes, wire order) after the link-local
    the kernel makes from the MAC, each once. An address that is none:
    ConfigError naming it."""
    v4, v6 = [], [checks.ipv6_link_local(octets).packed]
    for i, a in enumerate(ips):
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            raise ConfigError(f"ips[{i}]: {a!r} is not an IPv4 or IPv6 address") from None
        if ip.version == 4:
            v4.append(ip)
        elif ip.packed not in v6:
            v6.append(ip.packed)
    return v4, v6


class _Guards:
    """What pod ports may send: their own addresses (anti-spoofing) and a
    rate for what they flood (storm control). Part of :class:`Engine`."""

    def set_port_guard(self, port: int, mac, ips: Sequence[str] = ()):
        """Pod port ``port`` forwards only frames from ``mac`` whose IPv4 /
        IPv6 source, ARP sender and neighbour-discovery options are ``mac``
        and one of ``ips`` (0.0.0.0 and :: for address probes; the IPv6
        link-local made from ``mac`` is added). ``mac`` None: no checks."""
        if mac is None:
            self._call(
                f"unguarding port {port}",
                lib.dp_port_guard_set,
                port,
                ffi.NULL,
                ffi.NULL,
                0,
                ffi.NULL,
                0,
            )
            return
        octets = parse_mac(mac)
        v4, v6 = source_addresses(octets, ips)
        v4 = [int(ip) for ip in v4]
        if len(v4) > lib.DP_GUARD_MAX_IP4 or len(v6) > lib.DP_GUARD_MAX_IP6:
            raise ConfigError(
                f"ips: {len(v4)} IPv4 and {len(v6)} IPv6 addresses (the link-local "
                f"included), at most {lib.DP_GUARD_MAX_IP4} and {lib.DP_GUARD_MAX_IP6}"
            )
        a4 = ffi.new("uint32_t[]", v4 or [0])
        a6 = ffi.new("uint8_t[]", b"".join(v6))
        self._call(
            f"guarding port {port}",
            lib.dp_port_guard_set,
            port,
            octets,
            a4,
            len(v4),
            a6,
            len(v6),
        )

    def set_port_dhcp_server(self, port: int, allowed: bool):
        """Whether guarded pod port ``port`` may send DHCP and DHCPv6 server
        (and relay) messages, UDP from port 67 or 547; without it they are
        dropped as ``spoof_dhcp``. Set after :meth:`set_port_guard` (a port
        without any guard keeps no setting)."""
        self._call(
            f"DHCP server rights of port {port}",
            lib.dp_port_guard_dhcp_server,
            port,
            1 if allowed else 0,
        )

    def set_port_storm(self, port: int, pps: int, burst: int = 0):
        """Broadcast, multicast and unknown unicast from pod port ``port``: at
        most ``pps`` frames/s with bursts of ``burst`` (default pps/10); the
        rest dropped as ``storm``. pps 0: no limit."""
        pps, burst = checks.check_storm({"pps": pps, "burst": burst or max(1, pps // 10)})
        self._call(f"storm control of port {port}", lib.dp_port_storm_set, port, pps, burst)

    def set_learning_limits(
        self,
        age_s: float = lib.DP_LEARN_AGE_MS_DEFAULT / 1000,
        per_network: int = lib.DP_LEARN_PER_NET_DEFAULT,
        per_vtep: int = lib.DP_LEARN_PER_VTEP_DEFAULT,
    ):
        """With learning on (``set_vtep(learning=True)``): a learned MAC lives
        ``age_s`` seconds unless heard again; a network holds at most
        ``per_network`` learned MACs and one source VTEP ``per_vtep``."""
        self._call(
            "setting the learning limits",
            lib.dp_learn_config,
            int(age_s * 1000),
            per_network,
            per_vtep,
        )

    def set_duplicate_macs(
        self,
        moves: int = lib.DP_LEARN_DUP_MOVES_DEFAULT,
        window_s: float = lib.DP_LEARN_DUP_WINDOW_MS_DEFAULT / 1000,
        freeze_s: float = lib.DP_LEARN_DUP_FREEZE_MS_DEFAULT / 1000,
    ):
        """Duplicate MAC detection for learned MACs: the move that would be
        a MAC's ``moves``-th within ``window_s`` seconds is refused, and the
        MAC stays where it is for ``freeze_s`` seconds (``moves`` 0: no
        detection)."""
        self._call(
            "setting duplicate MAC detection",
            lib.dp_learn_dup_config,
            moves,
            int(window_s * 1000),
            int(freeze_s * 1000),
        )

    def learn_clear(self, net: Optional[int] = None, mac=None) -> int:
        """Learned entries (of network ``net``, else all; of ``mac``, else
        all) removed, a duplicate's freeze with them; entries the control
        API set are left alone. How many were removed."""
        _check_net(net)
        raw = parse_mac(mac) if mac is not None else ffi.NULL
        with self._lock:
            if self._closed:
                raise ConfigError("the engine is closed")
            return check(
                lib.dp_learn_clear(-1 if net is None else net, raw),
                lib,
                ffi,
                "clearing learned MACs",
            )

    def learn_stats(self) -> dict:
        """What learning did: learned, moved, refused (static, limit), aged,
        found duplicate, refused (frozen), and how many learned MACs there
        are now."""
        with self._lock:
            out = {k: int(lib.dp_learn_stat(i)) for i, k in enumerate(LEARN_EVENTS)}
            out["entries"] = int(lib.dp_learn_count())
        return out

    def set_neighbor_timers(self, reachable_s: float = 60.0):
        """Underlay neighbours learned by ARP are asked again after
        ``reachable_s`` seconds, and forgotten when nobody answers."""
        self._call("setting the neighbour timers", lib.dp_neigh_timers, int(reachable_s * 1000))

    def pool_in_use(self) -> int:
        """mbufs of the core's pool not free now (in flight or queued)."""
        with self._lock:
            return int(lib.dp_pool_in_use())


#: the express lane's kernel programs, compiled by build.py (another
#: build's: $DATAPLANE_EXPRESS_OBJECT): their build that reads a frame's
#: checksum offload state (Linux 6.2, with BTF), or else the plain one,
#: which encapsulates nothing to remote VTEPs
_HERE = os.path.dirname(os.path.abspath(__file__))
EXPRESS_OBJECT = os.environ.get("DATAPLANE_EXPRESS_OBJECT")

#: what stays open of the pods' host ends where the kernel will not take
#: the lane's programs (docs/security.md), as the log and check say it
HOST_ENDS_OPEN = (
    "a pod's limited broadcast (0.0.0.0 to 255.255.255.255) reaches the node's own sockets "
    "bound to all addresses; filter the host ends in the node's firewall (docs/security.md)"
)


def express_object() -> str:
    """The express lane's object for this kernel (:data:`EXPRESS_OBJECT`)."""
    if EXPRESS_OBJECT:
        return EXPRESS_OBJECT
    checks_offsets = lib.dp_express_kernel_checks()  # reads the kernel's BTF: once
    return os.path.join(_HERE, "express.bpf.o" if checks_offsets else "express.plain.bpf.o")


def _plain_of(path: str) -> Optional[str]:
    """The plain build beside the lane's object ``path`` (``X.bpf.o`` ->
    ``X.plain.bpf.o``), if there is one and ``path`` is not it."""
    if not path.endswith(".bpf.o") or path.endswith(".plain.bpf.o"):
        return None
    plain = path[: -len(".bpf.o")] + ".plain.bpf.o"
    return plain if os.path.exists(plain) else None


def _express_open(path: str, carry: int) -> int:
    """dp_express_open of ``path``, or, if the kernel refuses it (a kernel
    function call it will not take: no JIT, say), of its plain build
    beside it, which carries nothing to remote VTEPs (dp_last_error then
    says the plain build's refusal, if it is refused too)."""
    ret = lib.dp_express_open(path.encode(), carry)
    plain = _plain_of(path) if ret < 0 else None
    if plain is not None:
        ret = lib.dp_express_open(plain.encode(), carry)
    return ret


def express_probe(path: Optional[str] = None) -> Tuple[Optional[str], bool]:
    """Why the express lane's programs cannot be loaded here (``dataplane
    check``), or None; and whether, loaded, they would encapsulate to
    remote VTEPs (the kernel lets them check a frame's checksum offsets:
    Linux 6.2). Loaded into the kernel and let go at once, as a start
    would load them; no EAL, no port, nothing attached."""
    path = path or express_object()
    if not os.path.exists(path):
        return (
            f"express lane: {path} is missing: the package was built without clang; "
            "install clang and libbpf-dev and rebuild (pip install -e .)"
        ), False
    if lib.dp_express_loaded():
        return None, bool(lib.dp_express_remote())
    if _express_open(path, 1) < 0:
        return ffi.string(lib.dp_last_error()).decode(errors="replace"), False
    remote = bool(lib.dp_express_remote())
    lib.dp_express_close()
    return None, remote


def express_loadable(path: Optional[str] = None) -> Optional[str]:
    """Why the express lane's programs cannot be loaded here, or None
    (:func:`express_probe`)."""
    return express_probe(path)[0]


def _express_net_counts(c: np.ndarray) -> np.ndarray:
    """A pod port's lane counts (:meth:`_Express._express_raw`) as its
    network's (local, encap, decap) frames: delivered to a pod of the
    network (sent by another pod, or decapsulated), encapsulated to remote
    VTEPs, decapsulated from the underlay."""
    return np.array([c[0] - c[4] + c[7], c[4], c[7]], dtype=np.uint64)


class _Express:
    """The express lane (``csrc/bpf/express.bpf.c``, ``csrc/dp_express.c``):
    unicast IP between two pod ports of one network carried by the kernel
    from one pod's veth into the other's namespace, never through the core.
    Part of :class:`Engine`."""

    def express_open(self, path: Optional[str] = None, carry: bool = True):
        """Load the lane's programs into the kernel, switched on; ``carry``
        False: as the host ends' guard only (:attr:`express_guard`)."""
        path = path or express_object()
        if not os.path.exists(path):
            raise ConfigError(express_loadable(path))
        what = "loading the express lane" + ("" if carry else " as the host ends' guard")
        self._call(what, _express_open, path, 1 if carry else 0)

    @property
    def express_loaded(self) -> bool:
        """The lane's programs loaded, carrying frames or as a guard: pod
        ports join it."""
        return bool(lib.dp_express_loaded())

    @property
    def express_remote(self) -> bool:
        """The lane encapsulates pods' TCP to remote VTEPs: it carries, and
        the kernel lets its programs check a frame's checksum offsets."""
        return bool(lib.dp_express_remote())

    @property
    def express_remote_refused(self) -> int:
        """Updates of remote MACs the lane's table (65,536) had no room for
        since the process started (a MAC stored again counts again): the
        core carries their frames."""
        return int(lib.dp_express_remote_refused())

    @property
    def express_carrying(self) -> bool:
        """The lane loaded to carry frames (``express_lane`` auto or true)."""
        return lib.dp_express_loaded() == 1

    @property
    def express_guard(self) -> bool:
        """The lane's programs loaded to carry nothing (``express_lane:
        false``): every frame takes the core's path, and the tc program on
        each pod's host end only drops the frames the core's socket took,
        so that the node's own stack takes none of them."""
        return lib.dp_express_loaded() == 2

    def express_enable(self, on: bool):
        """Off: every frame takes the core's path (while a capture runs)."""
        self._call("switching the express lane", lib.dp_express_enable, 1 if on else 0)

    def express_uplink_carries(self, carries: bool):
        """Whether the uplink can carry frames now: while it cannot (down,
        no carrier, gone), the pods' frames to the underlay take the core's
        path, which counts them dropped, instead of the lane's, which would
        count them sent."""
        self._call("telling the express lane of the uplink", lib.dp_express_uplink_carries,
                   1 if carries else 0)  # fmt: skip

    def express_port_carries(self, port: int, carries: bool):
        """Whether lane port ``port``'s interface can take frames now (its
        veth has carrier: the pod's end is up). While it cannot, frames to
        it take the core's path, which counts them dropped
        (``kport_kernel_tx``), instead of the lane's, which would count them
        delivered while the kernel dropped them unseen. A port joins the
        lane carrying."""
        with self._lock:
            if port in self._express:
                self._call(f"express lane: port {port}'s carrier", lib.dp_express_port_carries,
                           port, 1 if carries else 0)  # fmt: skip

    def express_pod_ports(self) -> Dict[int, int]:
        """The pod ports in the lane: port index -> interface index."""
        with self._lock:
            return {p: x[0] for p, x in self._express.items()}

    def express_add_port(
        self,
        port: int,
        ifname: str,
        net: int,
        mac: str,
        ips: Sequence[str] = (),
        spoof=True,
        mtu: int = 1500,
    ) -> int:
        """AF_PACKET pod port ``port`` on ``ifname`` (network ``net``, the
        pod's ``mac``) joins the lane: its frames to another pod port of the
        network in the lane go port to port, and theirs to it; with
        ``spoof``, only from one of ``ips`` or the IPv6 link-local made
        from ``mac``; frames longer than the network's ``mtu`` allows (but
        super-frames) also take the core's path, which refuses them. The
        interface's index."""
        if self.express_guard:  # carries nothing: the host end guarded only
            return self.express_guard_port(port, ifname)
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError:
            raise errors.NotFound(f"express lane: {ifname}: no such interface") from None
        mac_b = parse_mac(mac)
        v4, v6 = source_addresses(mac_b, ips)
        # network order in memory, as the program reads the header
        v4 = [int.from_bytes(ip.packed, "little") for ip in v4]
        if len(v4) > lib.DP_EXPRESS_MAX_IP4 or len(v6) > lib.DP_EXPRESS_MAX_IP6:
            raise ConfigError(
                f"express lane: {ifname}: {len(v4)} IPv4 and {len(v6)} IPv6 addresses (the "
                f"link-local included), at most {lib.DP_EXPRESS_MAX_IP4} and "
                f"{lib.DP_EXPRESS_MAX_IP6}"
            )
        octets = ffi.new("uint8_t[6]", mac_b)
        arr = ffi.new("uint32_t[]", v4 or [0])
        arr6 = ffi.new("uint8_t[]", b"".join(v6))
        entry = (
            ifindex,
            net,
            port,
            octets,
            mtu,
            1 if spoof else 0,
            arr,
            len(v4),
            arr6,
            len(v6),
        )
        if self._express.get(port) == (ifindex, net, bytes(octets)):
            # in the lane already (its guard changed): its entries replaced in
            # place, its programs and counts kept - no frame finds it half out
            with self._lock:
                try:
                    check(lib.dp_express_port_set(*entry), lib, ffi, f"express lane: {ifname}")
                except BaseException:
                    self.express_remove_port(port)
                    raise
            return ifindex
        if port in self._express:
            self.express_remove_port(port)
        with self._lock:
            # the host end's mark, the filter and the tc program first: in
            # no table, they carry nothing and let nothing of the pod's to
            # the node's stack; the table entries turn the lane on
            self._hostend(port, ifindex, ifname)
            check(lib.dp_express_sock_filter(port), lib, ffi, f"express lane: port {port}")
            check(lib.dp_express_attach(ifindex), lib, ffi, f"express lane: {ifname}")
            check(lib.dp_express_counts_reset(port), lib, ffi, f"express lane: {ifname}")
            # refused (its addresses): the port stays guarded, carried by the core
            check(lib.dp_express_port_set(*entry), lib, ffi, f"express lane: {ifname}")
            self._express[port] = (ifindex, net, bytes(octets))
        return ifindex

    def _hostend(self, port: int, ifindex: int, ifname: str):
        """Port ``port``'s interface (``ifindex``) marked a pod's host end
        in the lane's tables: the lane's program on it, once attached, lets
        none of its frames reach the node's own stack."""
        self._prune_kept_guards()
        was = self._hostends.get(port)
        if was is not None and was[0] != ifindex:  # another interface under the index
            lib.dp_express_hostend(was[0], 0)
        check(lib.dp_express_hostend(ifindex, 1), lib, ffi, f"express lane: {ifname}")
        self._kept_guards.pop(ifindex, None)
        self._hostends[port] = (ifindex, ifname)

    def _prune_kept_guards(self):
        """The kept guards of interfaces since deleted (their program went
        with them) out of the lane's table of host ends."""
        for ifindex, name in list(self._kept_guards.items()):
            try:
                same = socket.if_indextoname(ifindex) == name
            except OSError:
                same = False
            if not same:
                del self._kept_guards[ifindex]
                if not self._hostend_in_use(ifindex):
                    lib.dp_express_hostend(ifindex, 0)

    def _hostend_in_use(self, ifindex: int) -> bool:
        """Whether interface ``ifindex`` is a port's host end now."""
        return any(h[0] == ifindex for h in self._hostends.values())

    def express_guard_port(self, port: int, ifname: str) -> int:
        """Pod port ``port``'s host end ``ifname`` guarded by the lane's
        program without being in the lane (nothing carried for it: the
        lane is a guard only, or the port cannot join it): every frame of
        the pod's is the core's, and none reaches the node's own stack. The
        interface's index."""
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError:
            raise errors.NotFound(f"express lane: {ifname}: no such interface") from None
        if port in self._express:
            self.express_remove_port(port)
        with self._lock:
            self._hostend(port, ifindex, ifname)
            check(lib.dp_express_attach(ifindex), lib, ffi, f"express lane: {ifname}")
        return ifindex

    def express_guard_ifname(self, ifname: str):
        """Host end ``ifname`` of a pod that has no port now (not yet
        attached, or its attach undone) guarded by this engine's program, in
        place of whatever program a stopped service left on it: none of the
        pod's frames reaches the node's stack or another pod meanwhile.
        Without the lane's programs loaded, the program left there is taken
        off (it would carry beside the core)."""
        if not self.express_loaded:
            self.express_detach(ifname)
            return
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError:
            return
        with self._lock:
            self._prune_kept_guards()
            check(lib.dp_express_hostend(ifindex, 1), lib, ffi, f"express lane: {ifname}")
            try:
                check(lib.dp_express_attach(ifindex), lib, ffi, f"express lane: {ifname}")
            except BaseException:
                if not self._hostend_in_use(ifindex):
                    lib.dp_express_hostend(ifindex, 0)  # not left behind in the table
                raise
            self._kept_guards[ifindex] = ifname

    def express_remove_port(self, port: int, keep_guard: bool = True):
        """Port ``port`` leaves the lane (if it is in it): its table entries
        go (its frames take the core's path from then on). With
        ``keep_guard`` its tc program stays on the interface, as the host
        end's guard, until the interface is deleted (taking it along) or
        the engine closes without keeping the lane; else it comes off. What the lane
        carried for it stays in the port's and its network's counters
        (:meth:`counters`)."""
        with self._lock:
            hend = self._hostends.pop(port, None)
            if hend is not None:
                if keep_guard:
                    self._kept_guards[hend[0]] = hend[1]
                else:
                    lib.dp_express_detach(hend[0])
                    lib.dp_express_hostend(hend[0], 0)
            x = self._express.pop(port, None)
            if x is not None:
                ifindex, net, octets = x
                lib.dp_express_port_clear(ifindex, net, octets)
                if not keep_guard and (hend is None or ifindex != hend[0]):
                    lib.dp_express_detach(ifindex)
                c = self._express_raw(port)
                self._express_left[port] = self._express_left.get(port, 0) + c
                left = self._express_left_net.get(net, 0)
                self._express_left_net[net] = left + _express_net_counts(c)

    def _express_fold(self, port: np.ndarray, net: np.ndarray, drop: np.ndarray):
        """What the lane carried added to the core's own counts, in place:
        a pod port's rx and tx, its network's ``local`` (the frames
        delivered to its pods: sent by another, or decapsulated),
        ``encap`` (those it encapsulated to remote VTEPs) and ``decap``
        (those it decapsulated from the underlay), the uplink's rx (VXLAN
        it decapsulated) and tx, and the frames the kernel would not
        encapsulate or decapsulate under the drop reasons ``express_encap``
        and ``express_decap``, and those its two programs saw differently
        as the tables changed under ``express_changed``; so that every
        frame is counted once, by whichever path took it. Ports that left
        the lane keep theirs until their index is freed; networks, always."""
        rx, rxb, tx, txb = (
            PORT_COUNTERS.index(k) for k in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")
        )
        local, encap, decap = (
            NET_COUNTERS.index(k) for k in ("local_packets", "encap_packets", "decap_packets")
        )
        err = DROP_REASONS.index("express_encap")
        for p, c in self._express_left.items():
            port[p, [rx, rxb, tx, txb]] += c[:4]
            drop[err] += c[6]
        for n, c in self._express_left_net.items():
            net[n, [local, encap, decap]] += c
        for p, (_, n, _) in self._express.items():
            c = self._express_raw(p)
            port[p, [rx, rxb, tx, txb]] += c[:4]
            net[n, [local, encap, decap]] += _express_net_counts(c)
            drop[err] += c[6]
        up = self._express_uplink()
        if up is not None:
            c = self._express_raw(up)
            port[up, [rx, rxb, tx, txb]] += c[:4]
            drop[DROP_REASONS.index("express_decap")] += c[6]
        lost = ffi.new("uint64_t *")  # 0 without the lane
        self._call("express lane: frames lost to a change", lib.dp_express_lost, lost)
        drop[DROP_REASONS.index("express_changed")] += lost[0]

    def _express_uplink(self) -> Optional[int]:
        """The uplink's port index, when the lane may send out of it (and
        it is not a lane port itself)."""
        up = self._vtep["uplink"] if self._vtep else -1
        if not self.express_loaded or up < 0 or up in self._express:
            return None
        return up

    def _express_raw(self, port: int) -> np.ndarray:
        """Port ``port``'s lane counts: rx packets and bytes (the uplink:
        VXLAN decapsulated), tx packets and bytes, of the rx those
        encapsulated (packets, bytes), those the kernel would not
        encapsulate (the uplink: decapsulate), of the tx those decapsulated
        from the underlay, and those it handed back to the core (the kernel
        would not encapsulate them: still marked as a tunnel's)."""
        out = ffi.new(f"uint64_t[{lib.DP_EXPRESS_COUNTS}]")
        self._call(f"express lane: counters of port {port}", lib.dp_express_counts, port, out)
        return np.array(list(out), dtype=np.uint64)

    def express_ports(self) -> List[int]:
        """The ports in the lane, and the uplink it sends out of and takes
        VXLAN from."""
        with self._lock:
            up = self._express_uplink()
            return sorted([*self._express, *([up] if up is not None else [])])

    def express_detach(self, ifname: str):
        """No lane program on interface ``ifname`` (one a killed process
        left), whether or not this engine runs the lane."""
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError:
            return
        with self._lock:
            lib.dp_express_detach(ifindex)

    def express_counts(self, port: int) -> Tuple[int, int, int, int, int]:
        """Frames and bytes the lane took from port ``port`` and delivered
        to it (the uplink: sent out of it, encapsulated), and the frames it
        took and handed back to the core (a pod forwarding what the lane
        decapsulated, which the kernel will not encapsulate again):
        (rx_packets, rx_bytes, tx_packets, tx_bytes, to_core_packets)."""
        c = self._express_raw(port)
        return (*(int(x) for x in c[:4]), int(c[8]))


class Engine(_Tables, _Planes, _Guards, _Express):
    """The forwarding core of this process: its EAL, ports and counters here;
    its tables from :class:`_Tables`, its planes from :class:`_Planes`, the
    pod ports' guards from :class:`_Guards`."""

    def __init__(self, config: Optional[EngineConfig] = None):
        global _started_in_pid
        self.config = config or EngineConfig()
        args = self.config.eal_args()
        if _started_in_pid == os.getpid():
            raise EALError(
                "DPDK's EAL was already started in this process; "
                "it cannot be started twice (use a child process)"
            )
        remove_stale_runtime_dirs()
        self._lock = threading.RLock()
        self._keep = [ffi.new("char[]", a.encode()) for a in args]
        argv = ffi.new("char *[]", self._keep)
        info = ffi.new("struct dp_eal_info *")
        if self.config.log_json:
            check(lib.dp_log_json(), lib, ffi, "setting DPDK's log up")
        check(lib.dp_eal_init(len(args), argv, info), lib, ffi, "starting DPDK (EAL)")
        _started_in_pid = os.getpid()
        self.eal_args = args
        self.n_workers = info.n_workers
        check(lib.dp_setup(int(self.config.n_mbufs)), lib, ffi, "setting up the core")
        self._views = {
            b: self._block(b)
            for b in (
                lib.DP_BLOCK_PORT,
                lib.DP_BLOCK_NET,
                lib.DP_BLOCK_DROP,
                lib.DP_BLOCK_WORKER,
                lib.DP_BLOCK_QOS,
                lib.DP_BLOCK_LAT,
            )
        }
        self.tsc_hz = int(lib.dp_tsc_hz())
        self._nets = {}  # index -> (vni, plane)
        self._vtep = None  # kwargs of the last set_vtep
        self._hk_stop = threading.Event()
        self._hk_thread = None
        self._closed = False
        self.capturing = False
        self._cap_buf = None  # the capture's read buffer, made at the first read
        self._express = {}  # port in the express lane -> (ifindex, network, MAC octets)
        # pod port -> its host end (ifindex, name), guarded by the lane's
        # program (every lane port, and those only guarded: express_guard_port)
        self._hostends = {}
        # host ends (ifindex -> name) whose port went, their guard kept
        # until the interface goes too (express_remove_port)
        self._kept_guards = {}
        # what the lane carried for ports that left it: port -> its counts
        # (_express_raw) while the port stays; network -> (frames pod to pod,
        # frames encapsulated)
        self._express_left = {}
        self._express_left_net = {}

    # ---------------------------------------------------------------- misc
    def _call(self, what, fn, *args):
        with self._lock:
            return check(fn(*args), lib, ffi, what)

    @staticmethod
    def _block(b):
        rows = ffi.new("size_t *")
        cols = ffi.new("size_t *")
        ptr = lib.dp_counter_block(b, rows, cols)
        buf = ffi.buffer(ptr, rows[0] * cols[0] * 8)
        return np.frombuffer(buf, dtype=np.uint64).reshape(rows[0], cols[0])

    # ------------------------------------------------------------ lifecycle
    def start(self, housekeeping_interval=0.01):
        """Start the workers, and a thread that runs control housekeeping
        (ARP, learning) every ``housekeeping_interval`` seconds."""
        self._call("starting workers", lib.dp_start)
        if housekeeping_interval and self._hk_thread is None:
            self._hk_stop.clear()
            self._hk_thread = threading.Thread(
                target=self._hk_loop,
                args=(housekeeping_interval,),
                name="dataplane-housekeeping",
                daemon=True,
            )
            self._hk_thread.start()

    def _hk_loop(self, interval):
        while not self._hk_stop.wait(interval):
            self.housekeeping()

    def stop(self):
        if self._hk_thread is not None:
            self._hk_stop.set()
            self._hk_thread.join()
            self._hk_thread = None
        self._call("stopping workers", lib.dp_stop)

    def set_idle_sleep(self, us: int):
        """An idle worker sleeps up to ``us`` microseconds, woken by a frame
        on a kernel port; 0 (the default): the workers spin."""
        self._call("setting the idle sleep", lib.dp_set_idle_sleep, int(us))

    def set_idle_yield(self, on: bool):
        """An idle spinning worker yields its CPU to other runnable threads
        (True, the default) or keeps it (False)."""
        lib.dp_set_idle_yield(1 if on else 0)

    @property
    def running(self) -> bool:
        return bool(lib.dp_running())

    def housekeeping(self) -> int:
        with self._lock:
            if self._closed:
                return 0
            return lib.dp_housekeeping()

    def close(self, keep_express: bool = False):
        """Stop forwarding, remove every port, release DPDK memory. The
        express lane's programs are taken off the pods' veths and the
        uplink, or with
        ``keep_express`` left there, carrying as they were (a service's
        stop: its pods of one node keep talking until the next start takes
        the veths over)."""
        if self._closed:
            return
        if self.capturing:  # it switched the lane off: on again before it is left behind
            self.capture_stop(collect=False)
        self.stop()
        if keep_express:  # forgotten, not removed: their programs carry on
            with self._lock:
                self._express.clear()
                self._hostends.clear()
                self._kept_guards.clear()
        for port in sorted({*self.express_ports(), *self._hostends}):
            self.express_remove_port(port, keep_guard=False)
        with self._lock:
            self._prune_kept_guards()  # those whose interface is gone: nothing to take off
            for ifindex in list(self._kept_guards):
                lib.dp_express_detach(ifindex)
            self._kept_guards.clear()
        with self._lock:
            if not keep_express:
                lib.dp_express_uplink_release()
            lib.dp_express_close()
            self._views = {}
            lib.dp_shutdown()
            self._closed = True
        # the EAL's runtime directory (sockets, config) goes with it
        prefix = self.eal_args[self.eal_args.index("--file-prefix") + 1]
        shutil.rmtree(os.path.join(_runtime_dir(), prefix), ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- ports
    @staticmethod
    def _role(role):
        if role not in ROLES:
            raise ConfigError(f"role: {role!r} is not one of {', '.join(ROLES)}")
        return ROLES[role]

    @staticmethod
    def _net(net):
        return -1 if net is None else net

    def add_port(
        self,
        devargs: str,
        role: str = "pod",
        network: Optional[int] = None,
        rx_queues: int = 1,
        mtu: int = 0,
    ) -> int:
        """Add a DPDK device (e.g. ``net_pcap0,rx_pcap=a.pcap,tx_pcap=b.pcap``,
        ``net_null0``, ``net_tap0,iface=dp0``, ``net_memif0,role=server``,
        ``net_af_packet0,iface=veth0``) as a port; returns its index. A pod
        port given ``network`` belongs to it from its first packet on.
        ``rx_queues`` > 1: queue 0 is polled by the port's worker, queue q by
        the worker of the plane whose ``rx_queue`` is q (see :meth:`set_plane`);
        which frames land in which queue is the device's steering.
        ``mtu`` > 0: the device is set to that MTU (a DPDK uplink: the
        underlay's; one of 1500 or less only recorded, so that a kernel
        interface under the driver keeps a larger one), receiving and
        sending frames longer than an mbuf holds as chains; a device that
        cannot is refused, saying why."""
        if not isinstance(devargs, str) or not devargs.strip():
            raise ConfigError("devargs: empty device string")
        if isinstance(mtu, bool) or not isinstance(mtu, int) or not 0 <= mtu <= 65535:
            raise ConfigError(f"mtu: {mtu!r} is not 0 (the device's own) or an MTU up to 65535")
        r = self._role(role)
        return self._call(
            f"adding port {devargs!r}",
            lib.dp_port_add,
            devargs.encode(),
            r,
            self._net(network),
            check_rx_queues(rx_queues),
            mtu,
        )

    def add_ring_port(
        self,
        name: str,
        role: str = "pod",
        size: int = 4096,
        network: Optional[int] = None,
        rx_queues: int = 1,
    ) -> int:
        """A net_ring port whose rx and tx rings this process feeds and drains
        with :meth:`inject` and :meth:`collect`; with ``rx_queues`` > 1 the
        caller steers, giving each frame's queue to :meth:`inject`."""
        r = self._role(role)
        check_pow2(size, "size")
        return self._call(
            f"adding ring port {name!r}",
            lib.dp_port_add_ring,
            name.encode(),
            r,
            self._net(network),
            size,
            check_rx_queues(rx_queues),
        )

    def add_afpacket_port(
        self, ifname: str, role: str = "pod", frames: int = 2048, network: Optional[int] = None
    ) -> int:
        """A kernel interface through the core's native AF_PACKET driver.

        ``frames``: memory of each ring in 2 KiB slots. Ring frames are sized
        from the interface's MTU when the port is added (jumbo MTUs get fewer,
        larger frames); a frame longer than that MTU is dropped and counted
        (``kport_oversize``), so raise the MTU before adding the port; a GSO
        super-frame is read whole however long. Checksums left to offload
        and TCP/UDP segmentation offload cross the port both ways (virtio-net
        header): a peer keeps its offloads on."""
        r = self._role(role)
        check_pow2(frames, "frames", 64)
        return self._call(
            f"adding AF_PACKET port {ifname!r}",
            lib.dp_port_add_afpacket,
            ifname.encode(),
            r,
            self._net(network),
            frames,
        )

    def reopen_afpacket_port(self, port: int, frames: int = 2048) -> int:
        """AF_PACKET port ``port`` reopened on the interface of its name as
        that is now: a device deleted and created again under the name (a
        new ifindex) is read and written from then on, in one step while the
        workers forward. The port keeps its index, role, worker, shaper and
        counters, and the old device's drops stay in the ``kport_*`` totals;
        it takes the new device's MAC, and its UDP GSO batches, tunnel tap
        and tunnel GSO start off, as on a new port (set them up again).
        ``frames`` as for :meth:`add_afpacket_port`. Returns the new
        device's ifindex; on failure nothing changed."""
        check_pow2(frames, "frames", 64)
        return self._call(
            f"reopening AF_PACKET port {port}", lib.dp_port_afpacket_reopen, port, frames
        )

    def set_udp_gso(self, port: int, on: bool = True):
        """AF_PACKET port ``port`` sends a run of one UDP flow's datagrams
        (the VXLAN frames of a cut super-frame) as one UDP GSO frame, which
        the kernel or the NIC cuts back (a veth passes it whole)."""
        self._call(f"UDP GSO batches on port {port}", lib.dp_port_set_udp_gso, port, int(on))

    def open_tunnel_tap(self, port: int, tap: str):
        """Create the tap ``tap`` for AF_PACKET uplink ``port``: it takes
        VXLAN-encapsulated super-frames whole (UDP-tunnel GSO, Linux 6.17 or
        later; an older kernel gives EOPNOTSUPP). Redirect its ingress to the
        uplink's egress (``podnet.redirect_ingress``), then
        :meth:`set_tunnel_gso`. The tap goes when the port is removed or
        :meth:`close_tunnel_tap` is called."""
        self._call(f"tunnel tap {tap!r} on port {port}", lib.dp_port_tunnel_tap, port, tap.encode())

    def close_tunnel_tap(self, port: int):
        """Remove the uplink's tunnel tap (tunnel GSO must be off)."""
        self._call(f"closing the tunnel tap of port {port}", lib.dp_port_tunnel_tap, port, ffi.NULL)

    def set_tunnel_gso(self, port: int, on: bool = True):
        """VXLAN-encapsulated super-frames to uplink ``port`` go whole to its
        tunnel tap, which hands them to the kernel as UDP-tunnel GSO (a NIC or
        the kernel's GSO cuts them after encapsulation; a veth carries them
        whole, as it does the kernel VTEP's); off: they are cut into
        MSS-sized frames before encapsulation."""
        self._call(f"tunnel GSO on port {port}", lib.dp_port_set_tunnel_gso, port, int(on))

    def del_port(self, port: int):
        """Remove port ``port``: once it returns no worker holds it and its
        index is free. A kernel port's packet sockets close in the
        background (each close waits for RCU grace periods, 20-30 ms); the
        engine's stop waits for them. A port in the express lane leaves it
        first."""
        with self._lock:
            self.express_remove_port(port)
            self._call(f"removing port {port}", lib.dp_port_del, port)
            self._express_left.pop(port, None)  # the index's next port starts at 0

    def port_info(self, port: int) -> Optional[PortInfo]:
        out = ffi.new("struct dp_port_info *")
        with self._lock:
            if not lib.dp_port_info(port, out):
                return None
        return PortInfo(
            index=port,
            name=ffi.string(out.name).decode(),
            role="uplink" if out.role == lib.DP_ROLE_UPLINK else "pod",
            driver="afpacket" if out.driver == lib.DP_DRV_AFPACKET else "ethdev",
            network=out.net if out.net >= 0 else None,
            worker=out.worker,
            mac=format_mac(bytes(out.mac)),
            rx_workers=[out.rxq_worker[q] for q in range(out.n_rxq)],
            tunnel_gso=bool(out.tunnel_gso),
            tunnel_gso_frames=out.tunnel_gso_frames,
            shared_memory=bool(out.shm),
            set_aside=bool(out.shm_set_aside),
            link=None if out.link < 0 else bool(out.link),
        )

    def ports(self) -> List[PortInfo]:
        return [p for p in (self.port_info(i) for i in range(lib.DP_MAX_PORTS)) if p]

    def free_port_slots(self) -> int:
        """How many more ports the core can take (of DP_MAX_PORTS)."""
        return int(lib.DP_MAX_PORTS) - len(self.ports())

    def set_port_network(self, port: int, net: Optional[int]):
        self._call(
            f"attaching port {port} to network {net}",
            lib.dp_port_set_net,
            port,
            -1 if net is None else net,
        )

    def reset(self):
        """Remove every port, network and table entry (neighbours too), and
        stop a capture; forwarding goes on."""
        with self._lock:
            if self.capturing:
                self.capture_stop(collect=False)
            if self._vtep is not None:
                self.set_vtep(**dict(self._vtep, uplink=-1))
            for p in self.ports():
                self.del_port(p.index)
            for n in list(self._nets):
                self.del_network(n)
            self._call("forgetting the neighbours", lib.dp_neigh_flush)

    # -------------------------------------------------------------- counters
    def port_by_worker(self, port: int) -> np.ndarray:
        """Port ``port``'s counters per worker, [n_workers, len(PORT_COUNTERS)]:
        which worker received (polled) and sent what."""
        with self._lock:
            if self._closed:
                raise EALError("engine is closed")
            a = self._views[lib.DP_BLOCK_PORT].reshape(lib.DP_MAX_WORKERS, lib.DP_MAX_PORTS, -1)
            return a[: self.n_workers, port, : len(PORT_COUNTERS)].copy()

    def counters(self) -> Counters:
        """A snapshot of every counter, summed over workers (no locks taken:
        each counter is a 64-bit word only its worker writes)."""
        with self._lock:
            if self._closed:
                raise EALError("engine is closed")
            lib.dp_kport_stats_update()  # kernel ports' drops into the drop row
            v = self._views
            port = v[lib.DP_BLOCK_PORT].reshape(lib.DP_MAX_WORKERS, lib.DP_MAX_PORTS, -1)
            net = v[lib.DP_BLOCK_NET].reshape(lib.DP_MAX_WORKERS, lib.DP_MAX_NETS, -1)
            qos = v[lib.DP_BLOCK_QOS].reshape(
                lib.DP_MAX_WORKERS, lib.DP_MAX_PORTS, lib.DP_MAX_PLANES, -1
            )
            lat = v[lib.DP_BLOCK_LAT].reshape(lib.DP_MAX_WORKERS, lib.DP_MAX_PLANES, -1)
            port = port.sum(axis=0, dtype=np.uint64)
            net = net.sum(axis=0, dtype=np.uint64)
            drop = v[lib.DP_BLOCK_DROP][:, : len(DROP_REASONS)].sum(axis=0, dtype=np.uint64)
            self._express_fold(port, net, drop)
            return Counters(
                port=port,
                net=net,
                drop=drop,
                worker=v[lib.DP_BLOCK_WORKER][: self.n_workers, : len(WORKER_COUNTERS)].copy(),
                qos=qos.sum(axis=0, dtype=np.uint64),
                lat=lat.sum(axis=0, dtype=np.uint64),
                tsc_hz=self.tsc_hz,
            )

    # ------------------------------------------------------------- capture
    CAPTURE_RECORD = struct.Struct("<QIIHBB4x")  # struct dp_cap_rec

    def capture_start(
        self,
        ports: Iterable[int],
        directions: str = "both",
        bpf_filter: str = "",
        snaplen: int = 9216,
        slots: int = 1024,
    ):
        """Start copying the frames of ``ports`` (port indexes) seen in
        ``directions`` that match the pcap-filter expression ``bpf_filter``
        ("" = all), up to ``snaplen`` bytes each, into ``slots`` records
        read with ``capture_read``. ``directions``: one of
        :data:`CAPTURE_DIRECTIONS` - rx, tx, both (rx and tx), drop (the
        frames the core drops, by the port they came in by, or for drops at
        a port's transmit the port they were to leave by) or all. One
        capture runs at a time."""
        if directions not in CAPTURE_DIRECTIONS:
            raise ValueError(f"capture direction {directions!r}: {', '.join(CAPTURE_DIRECTIONS)}")
        rx, tx, dr = lib.DP_CAP_RX, lib.DP_CAP_TX, lib.DP_CAP_DROP
        dirs = {"rx": rx, "tx": tx, "both": rx | tx, "drop": dr, "all": rx | tx | dr}
        mask = bytearray(lib.DP_MAX_PORTS // 8)
        for p in ports:
            if not 0 <= p < lib.DP_MAX_PORTS:
                raise ValueError(f"capture port {p}: 0..{lib.DP_MAX_PORTS - 1}")
            mask[p >> 3] |= 1 << (p & 7)
        # a capture sees every frame: the express lane is off while it runs
        if self.express_loaded:
            self.express_enable(False)
        try:
            self._call(
                "starting a capture",
                lib.dp_capture_start,
                bytes(mask),
                dirs[directions],
                bpf_filter.encode(),
                snaplen,
                slots,
            )
        except BaseException:
            if self.express_loaded:
                self.express_enable(True)
            raise
        self.capturing = True

    def capture_read(
        self, drain: bool = False
    ) -> List[Tuple[int, int, str, int, bytes, Optional[str]]]:
        """The captured frames waiting, oldest first: (wall-clock ns, port,
        "rx" | "tx" | "drop", original length, captured bytes, the drop
        reason of a dropped frame else None). At most 8 MB of records, as
        workers keep adding while it reads; ``drain``: every one (a
        detached capture, to which nothing is added)."""
        rec = self.CAPTURE_RECORD
        out = []
        if self._cap_buf is None:
            self._cap_buf = ffi.new("uint8_t[]", 1 << 20)
        for _ in range(1 << 20 if drain else 8):
            n = self._call("reading the capture", lib.dp_capture_read, self._cap_buf, 1 << 20)
            if n == 0:
                break
            raw = ffi.buffer(self._cap_buf, n)[:]
            off = 0
            while off < n:
                ts, orig, cap, port, d, why = rec.unpack_from(raw, off)
                data = raw[off + rec.size : off + rec.size + cap]
                if d == lib.DP_CAP_DROP:
                    reason = DROP_REASONS[why] if why < len(DROP_REASONS) else f"reason {why}"
                    out.append((ts, port, "drop", orig, data, reason))
                else:
                    out.append((ts, port, "rx" if d == lib.DP_CAP_RX else "tx", orig, data, None))
                off += (rec.size + cap + 7) & ~7
        return out

    def capture_add_port(self, port: int):
        """Port ``port`` (added since the capture started) into the running
        capture, from its next burst on."""
        self._call("adding a port to the capture", lib.dp_capture_add_port, port)

    def capture_stats(self) -> dict:
        """matched, captured, dropped (no free record), queued."""
        st = ffi.new("struct dp_cap_stats *")
        self._call("reading the capture's counters", lib.dp_capture_stats, st)
        return {k: int(getattr(st, k)) for k in ("matched", "captured", "dropped", "queued")}

    def capture_stop(self, collect: bool = True):
        """Stop the capture: the workers add nothing more to it, then the
        records still waiting are read and the counters are final. Those,
        as (frames, stats) as capture_read and capture_stats give them
        (``collect`` False: ``([], {})``, not read), before it is freed:
        nothing the capture took is lost unseen."""
        frames, stats = [], {}
        try:
            self._call("stopping the capture", lib.dp_capture_detach)
            if collect:
                frames = self.capture_read(drain=True)
                stats = self.capture_stats()
        finally:
            self._call("stopping the capture", lib.dp_capture_stop)
            self.capturing = False
            if self.express_loaded:
                self.express_enable(True)
        return frames, stats

    # ------------------------------------------------------- ring test ports
    def inject(self, port: int, frames: Sequence[bytes], queue: int = 0) -> int:
        """Put frames into a ring port's rx ring ``queue`` (as if received)."""
        if not frames:
            return 0
        data = b"".join(frames)
        lens = ffi.new("uint32_t[]", [len(f) for f in frames])
        return self._call(
            f"injecting into port {port}", lib.dp_ring_inject, port, queue, data, lens, len(frames)
        )

    def collect(
        self, port: int, max_frames: int = 4096, wait: float = 0.0, expect: Optional[int] = None
    ) -> List[bytes]:
        """Take frames out of a ring port's tx ring. With ``wait``, keep
        collecting until ``expect`` frames came or ``wait`` seconds passed."""
        out: List[bytes] = []
        deadline = time.monotonic() + wait
        buf = ffi.new("uint8_t[]", max_frames * 2048 + 65536)
        lens = ffi.new("uint32_t[]", max_frames)
        while True:
            n = self._call(
                f"collecting from port {port}",
                lib.dp_ring_collect,
                port,
                buf,
                len(buf),
                lens,
                max_frames - len(out),
            )
            off = 0
            raw = ffi.buffer(buf)
            for i in range(n):
                out.append(bytes(raw[off : off + lens[i]]))
                off += lens[i]
            if len(out) >= max_frames or time.monotonic() >= deadline:
                return out
            if expect is not None and len(out) >= expect:
                return out
            time.sleep(0.002)


__all__ = [
    "Engine",
    "EngineConfig",
    "Counters",
    "PortInfo",
    "DROP_REASONS",
    "QOS_COUNTERS",
    "LATENCY_BOUNDS_S",
    "PORT_COUNTERS",
    "NET_COUNTERS",
    "WORKER_COUNTERS",
    "parse_mac",
    "format_mac",
    "parse_ipv4",
    "errors",
]
