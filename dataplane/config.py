"""Node configuration file (YAML), validated into dataclasses.

    node: node1
    mode: fallback                 # hugepages | fallback (EAL --no-huge)
    kernel_driver: afpacket        # afpacket | af_xdp: the pods' veths
    lcores: [0, 1]                 # first: control thread, the rest: workers
    # idle_sleep_us: 0             # an idle worker sleeps up to this, woken by a frame (0: spins)
    # idle_yield: true             # a spinning worker yields its CPU when idle
    # cpu_latency_us: 0            # unset by default: no request; idle CPUs wake within this (kernel CPU latency QoS; 0: they poll)
    # express_lane: auto           # unicast IP between pods of this node carried by the kernel
    #                              #   (auto: where the kernel takes it; true: or refuse to start)
    vtep:
      address: 10.0.0.1/24         # this node's underlay address and subnet
      uplink: eth1                 # kernel interface (AF_PACKET; uplink_driver: af_xdp)
      # uplink: dpdk:net_tap0,iface=up0    (any DPDK device string)
      # tunnel_gso: true           # afpacket uplink: TCP super-frames leave whole (Linux >= 6.17)
      # learning: false            # learn remote MACs from the underlay (hosts no store knows)
      # duplicate_macs: {moves: 5, window_s: 180, freeze_s: 180}   # learned MAC flapping: frozen
      # learned_age_s: 300         # a learned MAC not heard from this long is forgotten
    networks:
      - {name: net1, vni: 100, plane: std, subnet: 192.168.10.0/24, gateway: 192.168.10.1}
      # dual stack: subnet6: fd00:10::/64, gateway6: fd00:10::1   (a pod's IPv6 address is
      #   its IPv4 host part there: 192.168.10.7 -> fd00:10::7)
    remotes:
      - {vtep: 10.0.0.2, networks: [net1]}
    # store: {kind: sqlite}         # default: state_dir/state.db, one node
    # store: {kind: etcd, endpoints: ["http://127.0.0.1:2379"], prefix: /dataplane}
    #   (https endpoints: tls: {ca: ca.crt, cert: node.crt, key: node.key})
    # pod_socket_dir: /run/dataplane/pods   # memif / vhost-user sockets, a directory per pod

:func:`load_config` reads a file, :func:`parse_config` a dict already parsed.
Both return a :class:`NodeConfig` or raise :class:`~dataplane.errors.ConfigError`
whose message starts with the field's path and says what is wrong, e.g.
``networks[2].vni: 16777216 out of range 1..16777215``. Unknown keys are
errors. This module has no side effects: it reads the file and nothing else,
so nothing starts on a bad file.
"""

import dataclasses
import ipaddress
import os
import re
import socket
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .checks import (
    MAX_LCORE,
    MAX_NETWORKS,
    MAX_PLANES,
    MAX_RX_QUEUES,
    MBUF_BYTES,
    MIN_MTU,
    POD_RESERVED_IFNAMES,
    POOL_MBUFS,
    SHAPER_BURST_RANGE,
    STORM_BURST_MAX,
    STORM_PPS_MAX,
    VXLAN_OVERHEAD,
    WIRE_OVERHEAD,
    check_abspath,
    check_af_xdp_mtu,
    check_bool,
    check_dirs_on_the_way,
    check_dscp,
    check_etcd_endpoints,
    check_etcd_prefix,
    check_ifname,
    check_int,
    check_kernel_driver,
    check_keys,
    check_lcores,
    check_list,
    check_listen,
    check_mac,
    check_memory_mb,
    check_mode,
    check_name,
    check_not_a_file,
    check_pow2,
    check_rate,
    check_rx_queues,
    check_string,
    check_udp_port,
    check_underlay_mtu,
    check_unix_socket_path,
    check_vni,
    check_vtep_ip,
    fail,
    hugepages_free,
    parse_ipv4,
    parse_ipv4_interface,
    parse_ipv4_subnet,
    parse_ipv6,
    parse_ipv6_subnet,
    show,
    split_listen,
)
from .errors import ConfigError

STORE_KINDS = ("sqlite", "etcd")
DEFAULT_ETCD_PREFIX = "/dataplane"

DEFAULT_STATE_DIR = "/var/lib/dataplane"
DEFAULT_API_SOCKET = "/run/dataplane/api.sock"
#: where the sockets of memif and vhost-user pod planes go, a directory per pod
DEFAULT_POD_SOCKET_DIR = "/run/dataplane/pods"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"
DEFAULT_UDP_PORT = 4789
DEFAULT_UNDERLAY_MTU = 1500
DEFAULT_MEMORY_MB = 512
DEFAULT_LCORES = (0, 1)
DEFAULT_KERNEL_DRIVER = "afpacket"
MAX_IDLE_SLEEP_US = 100000  # the core's limit (dp_idle.c)
MAX_CPU_LATENCY_US = 1_000_000  # a second: past any idle state's exit latency
#: storm control of every pod port: broadcast, multicast and unknown unicast
#: frames per second and burst (frames); ARP, ND and DHCP of a pod need a few
DEFAULT_STORM_PPS = 1000
DEFAULT_STORM_BURST = 200

#: default planes: name -> (priority, interface inside the pod); a higher
#: priority is served first by the strict-priority scheduler
DEFAULT_PLANES = {
    "std": (0, "eth0"),
    "oam": (1, "oam"),
    "control": (2, "control"),
    "media": (3, "media"),
}
#: outer DSCP marked by default: control CS3, media EF; others copy the inner DSCP
DEFAULT_PLANE_DSCP = {"control": 24, "media": 46}

_PCI_RE = re.compile(r"^(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_PLANE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,14}$")


# ---------------------------------------------------------------- dataclasses
@dataclasses.dataclass(frozen=True)
class DuplicateMacs:
    """Duplicate MAC detection for learned MACs: the move that would be a
    MAC's ``moves``-th within ``window_s`` is refused and the MAC stays
    where it is for ``freeze_s`` (``moves`` 0: no detection)."""

    moves: int = 5
    window_s: int = 180
    freeze_s: int = 180


@dataclasses.dataclass(frozen=True)
class VtepConfig:
    address: str  # "a.b.c.d/len", normalised
    uplink: str  # as written: "eth1" or "dpdk:<devargs>"
    mac: Optional[str] = None  # None: the uplink's own MAC
    udp_port: int = DEFAULT_UDP_PORT
    gateway: Optional[str] = None
    next_hop_mac: Optional[str] = None
    underlay_mtu: int = DEFAULT_UNDERLAY_MTU
    learning: bool = False
    duplicate_macs: DuplicateMacs = DuplicateMacs()  # with learning
    learned_age_s: int = 300  # with learning: a learned MAC unheard this long is forgotten
    uplink_rate: int = 0  # shaper on the uplink, bit/s; 0 = off
    uplink_burst: int = 16384  # shaper bucket, bytes
    uplink_rx_queues: int = 1  # rx queues of a DPDK uplink (planes' rx_queue)
    # driver of a kernel-interface uplink; af_xdp takes every frame of the
    # interface from the host's own stack, so it is never the default
    uplink_driver: str = DEFAULT_KERNEL_DRIVER
    # an afpacket uplink hands VXLAN-encapsulated super-frames to the kernel
    # whole (a tap with UDP-tunnel GSO, Linux >= 6.17), as the kernel's own
    # VTEP does, instead of cutting them before encapsulation
    tunnel_gso: bool = True

    @property
    def ip(self) -> str:
        """The VTEP's address without the prefix length."""
        return str(ipaddress.IPv4Interface(self.address).ip)

    def remote_problem(self, ip) -> Optional[str]:
        """Why remote VTEP ``ip`` cannot be reached from this VTEP, or None:
        this VTEP itself, the underlay subnet's network or broadcast
        address, or an address off the subnet with no way to a next hop
        (neither ``gateway`` nor ``next_hop_mac``)."""
        ip = ipaddress.IPv4Address(str(ip))
        subnet = ipaddress.IPv4Interface(self.address).network
        if str(ip) == self.ip:
            return f"{ip} is this node's own VTEP address"
        if subnet.prefixlen < 31 and ip in (subnet.network_address, subnet.broadcast_address):
            what = "network" if ip == subnet.network_address else "broadcast"
            return f"{ip} is the {what} address of the underlay subnet {subnet}"
        if ip not in subnet and not self.gateway and not self.next_hop_mac:
            return (
                f"{ip} is outside the underlay subnet {subnet} and neither vtep.gateway nor "
                "vtep.next_hop_mac is set: no next hop can be found for it"
            )
        return None

    @property
    def uplink_kind(self) -> str:
        """'dpdk' for a DPDK device string, 'kernel' for an interface name."""
        return "dpdk" if self.uplink.startswith("dpdk:") else "kernel"

    @property
    def uplink_devargs(self) -> Optional[str]:
        """The DPDK device string (without 'dpdk:'), None for a kernel uplink."""
        return self.uplink[5:] if self.uplink_kind == "dpdk" else None

    @property
    def uplink_ifname(self) -> Optional[str]:
        """The kernel interface name, None for a DPDK uplink."""
        return self.uplink if self.uplink_kind == "kernel" else None

    @property
    def uplink_pci(self) -> Optional[str]:
        """The PCI address when the DPDK uplink is a PCI device, else None."""
        dev = self.uplink_devargs
        if dev is None:
            return None
        head = dev.split(",", 1)[0]
        return head if _PCI_RE.fullmatch(head) else None


@dataclasses.dataclass(frozen=True)
class PlaneConfig:
    name: str
    priority: int  # 0..MAX_PLANES-1, unique; higher first
    interface: str  # interface name inside the pod
    min_rate: int = 0  # guaranteed bit/s on the shaped uplink, 0 = none
    max_rate: int = 0  # bit/s limit on the shaped uplink, 0 = none
    queue_len: int = 1024  # frames per shaped port, power of two
    dscp: Optional[int] = None  # outer DSCP to mark; None = copy the inner one
    worker: Optional[int] = None  # lcore that polls this plane's pod ports
    rx_queue: Optional[int] = None  # uplink rx queue that worker polls (1..)
    classify_dscp: List[int] = dataclasses.field(default_factory=list)  # inner DSCPs


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    name: str
    vni: int
    plane: str
    subnet: str  # "a.b.c.0/len", normalised
    gateway: Optional[str] = None
    mtu: int = DEFAULT_UNDERLAY_MTU - VXLAN_OVERHEAD
    # a pod port forwards only its own addresses (dataplane.engine set_port_guard)
    anti_spoofing: bool = True
    # floods from each pod port: frames/s (0 = unlimited) and burst
    storm_pps: int = DEFAULT_STORM_PPS
    storm_burst: int = DEFAULT_STORM_BURST
    # dual stack: the network's IPv6 subnet ("x:y::/len", normalised) and
    # the std plane's IPv6 default gateway in it; a pod's IPv6 address is
    # its IPv4 address's counterpart there (ip6_of)
    subnet6: Optional[str] = None
    gateway6: Optional[str] = None

    @property
    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

    @property
    def prefixlen6(self) -> Optional[int]:
        return ipaddress.IPv6Network(self.subnet6).prefixlen if self.subnet6 else None

    def ip6_of(self, ip: Optional[str]) -> Optional[str]:
        """The IPv6 address of the pod whose IPv4 address on this network is
        ``ip``: subnet6's first address plus ``ip``'s host part (192.168.10.7
        in 192.168.10.0/24 is fd00:10::7 in fd00:10::/64), so that it is as
        unique as the IPv4 one and needs no allocation of its own. None
        without subnet6 or ``ip``."""
        if not self.subnet6 or not ip:
            return None
        host = int(ipaddress.IPv4Address(ip)) - int(
            ipaddress.IPv4Network(self.subnet).network_address
        )
        return str(ipaddress.IPv6Network(self.subnet6).network_address + host)

    def ip4_of(self, ip6: Optional[str]) -> Optional[str]:
        """The IPv4 address whose :meth:`ip6_of` is ``ip6``, or None (no
        subnet6, or ``ip6`` is no pod's IPv6 address by position)."""
        if not self.subnet6 or not ip6:
            return None
        try:
            host = int(ipaddress.IPv6Address(ip6)) - int(
                ipaddress.IPv6Network(self.subnet6).network_address
            )
        except ValueError:
            return None
        subnet = ipaddress.IPv4Network(self.subnet)
        return str(subnet.network_address + host) if 0 <= host < subnet.num_addresses else None

    def ip6_cidr_of(self, ip: Optional[str]) -> Optional[str]:
        """:meth:`ip6_of` with subnet6's prefix length ("x:y::z/len"), as
        the pod's interface gets it; None without subnet6 or ``ip``."""
        ip6 = self.ip6_of(ip)
        return f"{ip6}/{self.prefixlen6}" if ip6 else None


@dataclasses.dataclass(frozen=True)
class RemoteConfig:
    vtep: str
    networks: List[str]


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    """Where the state is kept: ``kind: sqlite`` (one node: the file
    ``path``) or ``kind: etcd`` (a cluster: ``endpoints``, URLs of the etcd
    members, and the key ``prefix`` the cluster's state lives under)."""

    kind: str = "sqlite"
    path: str = os.path.join(DEFAULT_STATE_DIR, "state.db")
    endpoints: Tuple[str, ...] = ()
    prefix: str = DEFAULT_ETCD_PREFIX
    #: etcd over https: the CA that signed the members' certificates (None:
    #: the system's), and this node's client certificate and key (for
    #: members that require one: etcd's --client-cert-auth)
    tls_ca: Optional[str] = None
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    #: etcd's access control: the user the node is, and the file holding its
    #: password (its first line), read when the store is opened
    user: Optional[str] = None
    password_file: Optional[str] = None

    def password(self) -> Optional[str]:
        """The password of ``password_file`` (None without one); a file
        that cannot be read is a ConfigError naming it."""
        if self.password_file is None:
            return None
        try:
            with open(self.password_file, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"store.password_file: {self.password_file}: cannot be read ({e})"
            ) from None

    def to_dict(self) -> Dict[str, Any]:
        if self.kind == "etcd":
            d = {"kind": self.kind, "endpoints": list(self.endpoints), "prefix": self.prefix}
            tls = {
                k: v
                for k, v in (("ca", self.tls_ca), ("cert", self.tls_cert), ("key", self.tls_key))
                if v is not None
            }
            if tls:
                d["tls"] = tls
            if self.user is not None:
                d.update(user=self.user, password_file=self.password_file)
            return d
        return {"kind": self.kind, "path": self.path}


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    listen: Optional[str] = DEFAULT_METRICS_LISTEN  # None: no metrics endpoint

    @property
    def host(self) -> Optional[str]:
        return None if self.listen is None else split_listen(self.listen)[0]

    @property
    def port(self) -> Optional[int]:
        return None if self.listen is None else split_listen(self.listen)[1]


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    node: str
    vtep: VtepConfig
    mode: str = "fallback"
    kernel_driver: str = DEFAULT_KERNEL_DRIVER  # the pods' veths
    lcores: List[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_LCORES))
    memory_mb: int = DEFAULT_MEMORY_MB
    planes: Dict[str, PlaneConfig] = dataclasses.field(default_factory=dict)
    networks: List[NetworkConfig] = dataclasses.field(default_factory=list)
    remotes: List[RemoteConfig] = dataclasses.field(default_factory=list)
    state_dir: str = DEFAULT_STATE_DIR
    store: StoreConfig = dataclasses.field(default_factory=StoreConfig)
    api_socket: str = DEFAULT_API_SOCKET
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)
    pod_socket_dir: str = DEFAULT_POD_SOCKET_DIR  # memif / vhost-user sockets
    idle_sleep_us: int = 0  # 0: the workers spin; else they sleep when idle (dp_idle.c)
    idle_yield: bool = True  # a spinning worker yields its CPU when idle (dp_idle.c)
    cpu_latency_us: Optional[int] = None  # CPU latency request held while running (cpulatency.py)
    # unicast IP between local pods carried by the kernel (the express lane):
    # True: required, False: off, None (auto): on where the kernel takes it
    express_lane: Optional[bool] = None

    # ---------------------------------------------------------- look-ups
    def network(self, name: str) -> Optional[NetworkConfig]:
        for n in self.networks:
            if n.name == name:
                return n
        return None

    def plane(self, name: str) -> Optional[PlaneConfig]:
        return self.planes.get(name)

    def plane_id(self, name: str) -> int:
        """The plane number the core uses (``Engine.add_network(plane=...)``):
        the plane's priority, unique per node."""
        return self.planes[name].priority

    def flood_lists(self) -> Dict[str, List[str]]:
        """{network name: [remote VTEP, ...]} for every network (maybe empty)."""
        out = {n.name: [] for n in self.networks}
        for r in self.remotes:
            for name in r.networks:
                out[name].append(r.vtep)
        return out

    def advice(self) -> List[str]:
        """Settings that are valid but likely not what the user wants, one
        sentence each (``dataplane check`` prints them, the service logs them
        at start)."""
        out = []
        if self.cpu_latency_us == 0 and self.idle_sleep_us:
            out.append(
                f"idle_sleep_us: {self.idle_sleep_us} with cpu_latency_us: 0: an idle CPU "
                "polls instead of halting, so the worker's sleep saves no CPU time and adds "
                "its wake-up to every frame that finds it asleep; drop one of the two"
            )
        free = hugepages_free() if self.mode == "hugepages" else None
        if free is not None and self.memory_mb > free[0] * free[1] // 1024:
            pages, kb = free
            out.append(
                f"memory_mb: {self.memory_mb} is more than the hugepage memory free now "
                f"({pages * kb // 1024} MB: {pages} pages of {kb} kB): the core takes hugepages "
                "as it needs them, up to memory_mb, and its pool or its ports fail when none is "
                "left; reserve more (/proc/sys/vm/nr_hugepages) or lower memory_mb"
            )
        rate = self.vtep.uplink_rate
        for p in self.planes.values():
            for key in ("min_rate", "max_rate"):
                v = getattr(p, key)
                if v and not rate:
                    out.append(
                        f"planes.{p.name}.{key}: {v} bit/s takes effect only on a shaped uplink "
                        "(vtep.uplink_rate): without it the uplink has no plane queues"
                    )
                elif rate and v > rate:
                    out.append(
                        f"planes.{p.name}.{key}: {v} bit/s is above vtep.uplink_rate ({rate} "
                        "bit/s): the uplink's rate limits the plane first"
                    )
        burst = self.vtep.uplink_burst
        if rate and burst * 8 * 1_000_000 < rate * BURST_MIN_US:
            # the bucket holds at most a burst: what a longer worker loop
            # would have earned past it is lost, and the uplink runs slower
            want = -(-rate * BURST_MIN_US // 8_000_000)
            out.append(
                f"vtep.uplink_burst: {burst} bytes is {burst * 8e6 / rate:.1f} us at "
                f"vtep.uplink_rate ({rate} bit/s): a worker's loop longer than that loses "
                f"credit and the uplink runs below its rate; give it {want} bytes or more "
                f"({BURST_MIN_US} us)"
            )
        guaranteed = sum(p.min_rate for p in self.planes.values())
        if rate and guaranteed > rate:
            out.append(
                f"planes: the min_rate of all planes add up to {guaranteed} bit/s, above "
                f"vtep.uplink_rate ({rate} bit/s): not every plane can get its guarantee"
            )
        if not self.vtep.learning:
            flood = self.flood_lists()
            for n in self.networks:
                if flood[n.name] and n.storm_pps:
                    out.append(
                        f"network {n.name} floods to remote VTEPs {', '.join(flood[n.name])} "
                        "with vtep.learning off: a MAC behind them that no node of this "
                        "cluster publishes (a host behind a kernel VTEP) is reached only by "
                        f"flooding, which storm control caps at {n.storm_pps} frames/s per pod; "
                        "set vtep.learning: true (or storm_pps: 0 for the network)"
                    )
        return out

    def engine_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``engine.EngineConfig``."""
        pci = self.vtep.uplink_pci
        kw = {
            "mode": self.mode,
            "lcores": list(self.lcores),
            "memory_mb": self.memory_mb,
            "pci": [pci] if pci else [],
        }
        if "af_xdp" in (self.kernel_driver, self.vtep.uplink_driver):
            kw["n_mbufs"] = af_xdp_pool_size(self.memory_mb)
        return kw

    def to_dict(self) -> Dict[str, Any]:
        """Plain data, every default filled in; ``parse_config`` accepts it."""
        return {
            "node": self.node,
            "mode": self.mode,
            "kernel_driver": self.kernel_driver,
            "lcores": list(self.lcores),
            "memory_mb": self.memory_mb,
            "idle_sleep_us": self.idle_sleep_us,
            "idle_yield": self.idle_yield,
            "cpu_latency_us": self.cpu_latency_us,
            "express_lane": "auto" if self.express_lane is None else self.express_lane,
            "vtep": {
                k: v
                for k, v in dataclasses.asdict(self.vtep).items()
                # for learned MACs only: refused without learning
                if k not in ("duplicate_macs", "learned_age_s") or self.vtep.learning
            },
            "planes": {
                p.name: {
                    "priority": p.priority,
                    "interface": p.interface,
                    "min_rate": p.min_rate,
                    "max_rate": p.max_rate,
                    "queue_len": p.queue_len,
                    "dscp": p.dscp,
                    "worker": p.worker,
                    "rx_queue": p.rx_queue,
                    "classify_dscp": list(p.classify_dscp),
                }
                for p in self.planes.values()
            },
            "networks": [dataclasses.asdict(n) for n in self.networks],
            "remotes": [{"vtep": r.vtep, "networks": list(r.networks)} for r in self.remotes],
            "state_dir": self.state_dir,
            "store": self.store.to_dict(),
            "api_socket": self.api_socket,
            "metrics": dataclasses.asdict(self.metrics),
            "pod_socket_dir": self.pod_socket_dir,
        }


def af_xdp_pool_size(memory_mb: int) -> int:
    """The core's mbuf pool under kernel_driver af_xdp: every AF_XDP port
    keeps AF_XDP_FILL_MBUFS of it in its fill ring, so the pool takes 40 %
    of memory_mb (2**k - 1 mbufs, at least the engine's default POOL_MBUFS,
    at most 262143): 256 MB give 32767 mbufs, room for about 14 kernel ports."""
    n = POOL_MBUFS
    while (n * 2 + 1) * MBUF_BYTES <= memory_mb * (1 << 20) * 0.4 and n < 262143:
        n = n * 2 + 1
    return n


# ---------------------------------------------------------------- loading
class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML
    silently keeps the last one)."""


def _construct_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor`: its keys may be given again here, which wins
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"unhashable key {key!r}", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"key {key!r} is given twice (first at line {seen[key].line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    loader.flatten_mapping(node)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

# YAML 1.1 numbers no one writes on purpose in a node's file: base 60
# (an unquoted MAC such as 52:54:00:12:34:56, a time 1:40) is kept as the
# text it is; a leading 0 (octal: vni 0100 would be 64) is refused
_BASE60 = re.compile(r"[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?$")
_OCTAL = re.compile(r"[-+]?0[0-9_]+$")


def _construct_int(loader, node):
    text = loader.construct_scalar(node)
    if _BASE60.match(text):
        return text
    if _OCTAL.match(text):
        octal = yaml.SafeLoader.construct_yaml_int(loader, node)
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"{text} has a leading 0, so YAML reads it as the octal number {octal}: "
            f"write it without the 0, or in quotes for text",
            node.start_mark,
        )
    try:
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    except ValueError:  # more digits than Python converts (4300)
        raise yaml.constructor.ConstructorError(
            None, None, f"a number of {len(text)} characters is out of any range", node.start_mark
        ) from None


def _construct_float(loader, node):
    text = loader.construct_scalar(node)
    if _BASE60.match(text):
        return text
    return yaml.SafeLoader.construct_yaml_float(loader, node)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def load_config(path) -> NodeConfig:
    """Read and validate the YAML file at ``path``. Relative paths inside it
    (state_dir, store.path, api_socket) are taken from the file's directory."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(x for x in (e.context, e.problem) if x)
        ctx = e.context_mark
        if e.context and ctx is not None and mark is not None and ctx.line != mark.line:
            # the parser notices a missing '}' or ']' where the next thing
            # starts: say where what it was parsing began (often the culprit)
            what += f" ({e.context.removeprefix('while parsing ')} begun at line "
            what += f"{ctx.line + 1}, column {ctx.column + 1})"
        raise ConfigError(f"{path}: {where}invalid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    if data is None:
        raise ConfigError(f"{path}: the configuration file is empty")
    return parse_config(data, base_dir=os.path.dirname(os.path.abspath(path)))


# what a running node service takes from a changed configuration (reload):
# the shaper's rate and burst, the VTEP's learning, the planes' guaranteed
# and maximum rates, outer DSCP marking and DSCP classification, a
# network's storm control and anti-spoofing, the networks added to and
# removed from the list (NETWORKS), and the static remote VTEPs
RELOADABLE = (
    "vtep.uplink_rate",
    "vtep.uplink_burst",
    "planes.<plane>.min_rate",
    "planes.<plane>.max_rate",
    "planes.<plane>.dscp",
    "planes.<plane>.classify_dscp",
    "vtep.learning",
    "vtep.learned_age_s",
    "vtep.duplicate_macs",
    "networks.<network>.storm_pps",
    "networks.<network>.storm_burst",
    "networks.<network>.anti_spoofing",
    "networks added or removed",
    "remotes",
)
#: the fields of the VTEP's learning from the underlay, as a reload names them
LEARNING_FIELDS = ("vtep.learning", "vtep.learned_age_s", "vtep.duplicate_macs.")
#: IPv6's reserved lowest /8 (unspecified, loopback, IPv4-compatible and
#: IPv4-mapped addresses): no pod subnet
IPV6_RESERVED_LOW = ipaddress.IPv6Network("::/8")
#: the least time, microseconds, the uplink shaper's burst should last at
#: its rate: a worker's loop over its ports can take tens of microseconds
BURST_MIN_US = 50
#: the field name a reload's networks added, removed or reordered go by
NETWORKS = "networks"
#: ... and its static flood lists
REMOTES = "remotes"


def _differing(old, new, prefix: str) -> List[str]:
    """The dotted names of the fields in which two configuration values
    differ, looking into dataclasses, dicts of them and lists of them."""
    if dataclasses.is_dataclass(old) and type(old) is type(new):
        out = []
        for f in dataclasses.fields(old):
            out += _differing(getattr(old, f.name), getattr(new, f.name), f"{prefix}{f.name}.")
        return out
    if isinstance(old, dict) and isinstance(new, dict) and old.keys() == new.keys():
        out = []
        for k in old:
            out += _differing(old[k], new[k], f"{prefix}{k}.")
        return out
    if (
        isinstance(old, list)
        and isinstance(new, list)
        and len(old) == len(new)
        and all(dataclasses.is_dataclass(o) for o in old + new)
    ):  # (a list of values - a plane's classify_dscp - is one field, changed whole)
        out = []
        for i, (o, n) in enumerate(zip(old, new)):
            name = getattr(o, "name", None)  # networks by name, as in the file
            key = name if name is not None and name == getattr(n, "name", None) else i
            out += _differing(o, n, f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def _remotes_said(c: NodeConfig) -> List[str]:
    """A config's static remote VTEPs as a reload reports them:
    ["VTEP: network, ...", ...]."""
    return [f"{r.vtep}: {', '.join(r.networks)}" for r in c.remotes]


def network_changes(old: NodeConfig, new: NodeConfig):
    """(the networks ``new`` adds, the names of those it removes): by name,
    in their order in the file."""
    have, want = {n.name for n in old.networks}, {n.name for n in new.networks}
    return (
        [n for n in new.networks if n.name not in have],
        [n.name for n in old.networks if n.name not in want],
    )


def reload_changes(old: NodeConfig, new: NodeConfig):
    """What reloading ``new`` over the running ``old`` changes:
    ([(field, old value, new value)] for the fields a running service takes
    (RELOADABLE), [fields that only a restart applies]). Networks added,
    removed or put in another order are taken as one change, (NETWORKS,
    [old names], [new names]); ``remotes`` (the static flood lists), as
    (REMOTES, [old], [new]) each "VTEP: networks". A network kept is
    compared field by field: only its storm control and anti-spoofing are
    taken."""
    takes, needs_restart = [], []
    names = [n.name for n in old.networks], [n.name for n in new.networks]
    if names[0] != names[1]:
        added, removed = network_changes(old, new)
        kept_old = [n for n in old.networks if n.name not in removed]
        kept_new = [new.network(n.name) for n in kept_old]
        # the rest compared as if only the networks kept were there
        old = dataclasses.replace(old, networks=kept_old)
        new = dataclasses.replace(new, networks=kept_new)
        takes.append((NETWORKS, *names))
    if old.remotes != new.remotes:  # the static flood lists, as one change
        takes.append((REMOTES, _remotes_said(old), _remotes_said(new)))
        new = dataclasses.replace(new, remotes=old.remotes)
    for name in _differing(old, new, ""):
        parts = name.split(".")
        if parts[0] == "networks" and len(parts) > 2:
            # a network's field (its name may hold dots: the field is last)
            net, field = name[len("networks.") :].rsplit(".", 1)
            if f"networks.<network>.{field}" not in RELOADABLE:
                needs_restart.append(name)
                continue
            o, n = old.network(net), new.network(net)
            takes.append((name, getattr(o, field), getattr(n, field)))
            continue
        # a plane's field as RELOADABLE names it: planes.<plane>.FIELD;
        # duplicate MAC detection as a whole: vtep.duplicate_macs
        generic = ".".join(["planes", "<plane>", *parts[2:]]) if parts[0] == "planes" else name
        generic = "vtep.duplicate_macs" if name.startswith(LEARNING_FIELDS[2]) else generic
        if generic not in RELOADABLE:
            needs_restart.append(name)
            continue
        o, n = old, new
        for part in parts:
            o = o[part] if isinstance(o, dict) else getattr(o, part)
            n = n[part] if isinstance(n, dict) else getattr(n, part)
        takes.append((name, o, n))
    return takes, needs_restart


def parse_config(data, base_dir: Optional[str] = None) -> NodeConfig:
    """Validate a parsed configuration (a dict). Relative paths are taken from
    ``base_dir`` (default: the current directory)."""
    return _node_config(data, base_dir)


# ---------------------------------------------------------------- sections
# One function per section of the file. Values are checked by
# dataplane.checks; what is checked here is how fields relate: names and
# numbers used once, a gateway inside its subnet, a plane's worker among the
# lcores, a network's MTU under the underlay's.

_TOP_KEYS = (
    "node",
    "mode",
    "kernel_driver",
    "lcores",
    "memory_mb",
    "idle_sleep_us",
    "idle_yield",
    "cpu_latency_us",
    "express_lane",
    "vtep",
    "planes",
    "networks",
    "remotes",
    "state_dir",
    "store",
    "api_socket",
    "metrics",
    "pod_socket_dir",
)
_VTEP_KEYS = (
    "address",
    "uplink",
    "mac",
    "udp_port",
    "gateway",
    "next_hop_mac",
    "underlay_mtu",
    "learning",
    "duplicate_macs",
    "learned_age_s",
    "uplink_rate",
    "uplink_burst",
    "uplink_rx_queues",
    "uplink_driver",
    "tunnel_gso",
)
_PLANE_KEYS = (
    "priority",
    "interface",
    "min_rate",
    "max_rate",
    "queue_len",
    "dscp",
    "worker",
    "rx_queue",
    "classify_dscp",
)
_NETWORK_KEYS = (
    "name",
    "vni",
    "plane",
    "subnet",
    "gateway",
    "mtu",
    "anti_spoofing",
    "storm_pps",
    "storm_burst",
    "subnet6",
    "gateway6",
)
_STORE_KEYS = ("kind", "path", "endpoints", "prefix", "tls", "user", "password_file")
_DUPLICATE_MACS_KEYS = ("moves", "window_s", "freeze_s")


def _node_config(data, base_dir) -> NodeConfig:
    top = check_keys(data, "", _TOP_KEYS, required=("vtep",), name="configuration")
    node = top.get("node")
    node = socket.gethostname() if node is None else check_name(node, "node", "node name")
    mode = check_mode(top.get("mode", "fallback"))
    kernel_driver = check_kernel_driver(top.get("kernel_driver", DEFAULT_KERNEL_DRIVER))
    lcores = check_lcores(top.get("lcores", list(DEFAULT_LCORES)))
    memory_mb = check_memory_mb(top.get("memory_mb", DEFAULT_MEMORY_MB))
    idle_sleep_us = check_int(top.get("idle_sleep_us", 0), "idle_sleep_us", 0, MAX_IDLE_SLEEP_US)
    idle_yield = check_bool(top.get("idle_yield", True), "idle_yield")
    cpu_latency_us = top.get("cpu_latency_us")
    if cpu_latency_us is not None:
        cpu_latency_us = check_int(cpu_latency_us, "cpu_latency_us", 0, MAX_CPU_LATENCY_US)
    express_lane = top.get("express_lane", "auto")
    if express_lane == "auto":
        express_lane = None
    elif not isinstance(express_lane, bool):
        raise fail("express_lane", f"{show(express_lane)} is not true, false or auto")
    if express_lane is None and kernel_driver != "afpacket":
        express_lane = False  # auto: the lane works beside afpacket's sockets only
    if express_lane and kernel_driver != "afpacket":
        raise fail(
            "express_lane",
            f"true needs kernel_driver afpacket (the lane works beside the packet sockets "
            f"of the pods' veths), not {kernel_driver}",
        )
    vtep = _vtep(top["vtep"])
    planes = _planes(top.get("planes"), lcores[1:], vtep.uplink_rx_queues)
    # frames queued for the planes of a shaped uplink hold mbufs of the
    # core's pool: lower planes' queues full must leave the rest enough to
    # receive (media first is lost if its frames are dropped on receive)
    # (an af_xdp node's larger pool is for its ports' fill rings: the
    # default pool's half holds there too)
    pool = POOL_MBUFS
    queued = sum(p.queue_len for p in planes.values())
    if queued > (pool + 1) // 2:
        raise fail(
            "planes",
            f"their queue_len add up to {queued} frames, more than half the core's pool of "
            f"{pool} mbufs (af_xdp's larger pool is its ports' fill rings'): queues of a "
            "shaped uplink that fill would leave too few to "
            "receive with, and a higher plane's frames would be dropped before they are "
            f"classified; keep the sum at {(pool + 1) // 2} or less",
        )
    networks = _networks(top.get("networks"), planes, vtep)
    if kernel_driver == "af_xdp":
        for i, n in enumerate(networks):
            check_af_xdp_mtu(n.mtu, f"networks[{i}].mtu")
    remotes = _remotes(top.get("remotes"), networks, vtep)
    state_dir = check_abspath(top.get("state_dir", DEFAULT_STATE_DIR), "state_dir", base_dir)
    store = _store(top.get("store"), state_dir, base_dir)
    api_socket = check_unix_socket_path(
        top.get("api_socket", DEFAULT_API_SOCKET), "api_socket", base_dir
    )
    check_not_a_file(api_socket, "api_socket")
    if store.kind == "sqlite" and store.path == api_socket:
        raise fail("api_socket", f"{api_socket} is store.path too: the two need paths of their own")
    metrics = _metrics(top.get("metrics"))
    pod_socket_dir = check_abspath(
        top.get("pod_socket_dir", DEFAULT_POD_SOCKET_DIR), "pod_socket_dir", base_dir
    )
    if any(c in pod_socket_dir for c in ",="):
        # the sockets' paths go into DPDK device arguments (socket=PATH,...)
        raise fail(
            "pod_socket_dir",
            f"{pod_socket_dir!r} holds ',' or '=': the pods' socket paths go into DPDK device "
            "arguments, which those split",
        )
    if os.path.commonpath([api_socket, pod_socket_dir]) == api_socket:
        raise fail(
            "pod_socket_dir",
            f"{pod_socket_dir} is api_socket {api_socket} or under it: the two need paths "
            "of their own",
        )
    # each pod's directory in it is handed to the pod's user and removed
    # with the pod: nothing of the service's own may live there
    own = [("state_dir", state_dir), ("api_socket", api_socket)]
    if store.kind == "sqlite":
        own.append(("store.path", store.path))
    for field, where in own:
        if os.path.commonpath([where, pod_socket_dir]) == pod_socket_dir:
            raise fail(
                "pod_socket_dir",
                f"{pod_socket_dir} holds {field} {where}: the pods' socket directories "
                "need a directory of their own",
            )
    for field, where in own + [("pod_socket_dir", pod_socket_dir)]:
        check_dirs_on_the_way(
            where if field in ("state_dir", "pod_socket_dir") else os.path.dirname(where), field
        )
    return NodeConfig(
        node=node,
        mode=mode,
        kernel_driver=kernel_driver,
        lcores=lcores,
        memory_mb=memory_mb,
        idle_sleep_us=idle_sleep_us,
        idle_yield=idle_yield,
        cpu_latency_us=cpu_latency_us,
        express_lane=express_lane,
        vtep=vtep,
        planes=planes,
        networks=networks,
        remotes=remotes,
        state_dir=state_dir,
        store=store,
        api_socket=api_socket,
        metrics=metrics,
        pod_socket_dir=pod_socket_dir,
    )


# ---------------------------------------------------------------- vtep
def _vtep(value) -> VtepConfig:
    p = "vtep"
    v = check_keys(value, p, _VTEP_KEYS, required=("address", "uplink"))
    iface = parse_ipv4_interface(v["address"], f"{p}.address")
    check_vtep_ip(iface.ip, f"{p}.address")
    net = iface.network
    if net.prefixlen == 0:
        raise fail(
            f"{p}.address",
            f"{v['address']!r}: a /0 puts all of IPv4 on the uplink's link (no gateway is "
            "ever used): give the underlay subnet's prefix length",
        )
    if net.prefixlen < 31 and iface.ip in (net.network_address, net.broadcast_address):
        raise fail(
            f"{p}.address",
            f"{v['address']!r} cannot be a VTEP address (the network "
            f"or broadcast address of {net})",
        )
    uplink = _uplink(v["uplink"], f"{p}.uplink")
    mac = v.get("mac")
    mac = None if mac is None else check_mac(mac, f"{p}.mac")
    gateway = v.get("gateway")
    if gateway is not None:
        gw = parse_ipv4(gateway, f"{p}.gateway")
        if gw not in net:
            raise fail(f"{p}.gateway", f"{gateway} is not in the VTEP's subnet {net}")
        if gw == iface.ip:
            raise fail(f"{p}.gateway", f"{gateway} is the VTEP's own address")
        if net.prefixlen < 31 and gw in (net.network_address, net.broadcast_address):
            raise fail(f"{p}.gateway", f"{gateway} is the network or broadcast address of {net}")
        gateway = str(gw)
    nh = v.get("next_hop_mac")
    nh = None if nh is None else check_mac(nh, f"{p}.next_hop_mac")
    rxq = check_rx_queues(v.get("uplink_rx_queues", 1), f"{p}.uplink_rx_queues")
    if rxq > 1 and not uplink.startswith("dpdk:"):
        raise fail(
            f"{p}.uplink_rx_queues",
            "a kernel-interface uplink (AF_PACKET or AF_XDP) has "
            "one rx queue; several need a DPDK uplink "
            "('dpdk:...')",
        )
    driver = check_kernel_driver(
        v.get("uplink_driver", DEFAULT_KERNEL_DRIVER), f"{p}.uplink_driver"
    )
    underlay_mtu = check_underlay_mtu(
        v.get("underlay_mtu", DEFAULT_UNDERLAY_MTU), f"{p}.underlay_mtu"
    )
    if driver == "af_xdp":
        if uplink.startswith("dpdk:"):
            raise fail(
                f"{p}.uplink_driver",
                "af_xdp is for a kernel-interface uplink; this one is a DPDK device",
            )
        if any(c in uplink for c in ",="):
            raise fail(
                f"{p}.uplink",
                f"{uplink!r}: uplink_driver af_xdp needs an interface name without "
                "',' or '=' (it goes into a DPDK device string)",
            )
        check_af_xdp_mtu(underlay_mtu, f"{p}.underlay_mtu", "uplink_driver")
    learning = check_bool(v.get("learning", False), f"{p}.learning")
    burst = check_int(v.get("uplink_burst", 16384), f"{p}.uplink_burst", *SHAPER_BURST_RANGE)
    frame = underlay_mtu + 14 + WIRE_OVERHEAD  # the largest frame the uplink sends
    if burst < frame:
        raise fail(
            f"{p}.uplink_burst",
            f"{burst} bytes is less than one frame of underlay_mtu {underlay_mtu} "
            f"({frame} bytes with the Ethernet header and {WIRE_OVERHEAD} bytes of wire "
            "overhead): give at least that",
        )
    return VtepConfig(
        address=str(iface),
        uplink=uplink,
        mac=mac,
        udp_port=check_udp_port(v.get("udp_port", DEFAULT_UDP_PORT), f"{p}.udp_port"),
        gateway=gateway,
        next_hop_mac=nh,
        underlay_mtu=underlay_mtu,
        learning=learning,
        duplicate_macs=_duplicate_macs(v.get("duplicate_macs"), learning, f"{p}.duplicate_macs"),
        learned_age_s=_learned_age(v.get("learned_age_s"), learning, f"{p}.learned_age_s"),
        uplink_rate=check_rate(v.get("uplink_rate", 0), f"{p}.uplink_rate"),
        uplink_burst=burst,
        uplink_rx_queues=rxq,
        uplink_driver=driver,
        tunnel_gso=check_bool(v.get("tunnel_gso", True), f"{p}.tunnel_gso"),
    )


def _for_learning(learning: bool, path: str):
    """A vtep key for learned MACs only: refused without learning."""
    if not learning:
        raise fail(
            path,
            "applies to MACs learned from the underlay: set vtep.learning: true, or leave it out",
        )


def _learned_age(value, learning: bool, path: str) -> int:
    """vtep.learned_age_s: seconds a learned MAC lives unheard, for learned MACs."""
    if value is None:
        return VtepConfig.learned_age_s
    _for_learning(learning, path)
    return check_int(value, path, 1, 86400)


def _duplicate_macs(value, learning: bool, path: str) -> DuplicateMacs:
    """vtep.duplicate_macs: {moves, window_s, freeze_s}, for learned MACs."""
    if value is None:
        return DuplicateMacs()
    _for_learning(learning, path)
    d = check_keys(value, path, _DUPLICATE_MACS_KEYS)
    base = DuplicateMacs()
    moves = check_int(d.get("moves", base.moves), f"{path}.moves", 0, 1000)
    if moves == 1:
        raise fail(
            f"{path}.moves",
            "1 would freeze a MAC at its first move: give 2..1000 (moves in the window "
            "that make a duplicate), or 0 to turn detection off",
        )
    return DuplicateMacs(
        moves=moves,
        window_s=check_int(d.get("window_s", base.window_s), f"{path}.window_s", 1, 86400),
        freeze_s=check_int(d.get("freeze_s", base.freeze_s), f"{path}.freeze_s", 1, 86400),
    )


def _uplink(value, path) -> str:
    """A kernel interface name, or 'dpdk:' and a DPDK device string."""
    check_string(value, path)
    if not value.startswith("dpdk:"):
        return check_ifname(value, path)
    dev = value[5:]
    if not dev or dev[0] in ", " or any(c.isspace() for c in dev):
        raise fail(
            path,
            f"{value!r}: give a DPDK device string after 'dpdk:', e.g. dpdk:net_tap0,iface=up0",
        )
    return value


# ---------------------------------------------------------------- planes
def _planes(value, workers, uplink_rx_queues) -> Dict[str, PlaneConfig]:
    if value is None:
        return {
            n: PlaneConfig(n, prio, ifn, dscp=DEFAULT_PLANE_DSCP.get(n))
            for n, (prio, ifn) in DEFAULT_PLANES.items()
        }
    if not isinstance(value, dict) or not value:
        raise fail("planes", "must be a non-empty mapping of plane name -> {priority, interface}")
    if len(value) > MAX_PLANES:
        raise fail("planes", f"{len(value)} planes; at most {MAX_PLANES}")
    planes = {}
    by_prio, by_if, by_rxq, by_dscp = {}, {}, {}, {}
    for name, spec in value.items():
        p = f"planes.{name}"
        plane = _plane(name, spec, p, workers, uplink_rx_queues)
        for i, d in enumerate(plane.classify_dscp):
            other = by_dscp.setdefault(d, name)
            if other != name:
                raise fail(
                    f"{p}.classify_dscp[{i}]",
                    f"DSCP {d} is classified to plane {other} already (a DSCP picks one plane)",
                )
        other = by_prio.setdefault(plane.priority, name)
        if other != name:
            raise fail(
                f"{p}.priority",
                f"{plane.priority} is the priority of plane {other} "
                "already (each plane has its own)",
            )
        other = by_if.setdefault(plane.interface, name)
        if other != name:
            raise fail(
                f"{p}.interface", f"{plane.interface!r} is the interface of plane {other} already"
            )
        other = name if plane.rx_queue is None else by_rxq.setdefault(plane.rx_queue, name)
        if other != name:
            raise fail(
                f"{p}.rx_queue", f"{plane.rx_queue} is the rx queue of plane {other} already"
            )
        planes[name] = plane
    if "std" not in planes:
        raise fail("planes", "the std plane is required (IT pods use it)")
    return planes


def _plane(name, spec, p, workers, uplink_rx_queues) -> PlaneConfig:
    if not isinstance(name, str) or not _PLANE_RE.fullmatch(name):
        raise fail(
            p,
            f"{show(name)} is not a valid plane name (a lower-case letter, then "
            "lower-case letters, digits, '_' or '-'; at most 15)",
        )
    spec = check_keys({} if spec is None else spec, p, _PLANE_KEYS)
    default = DEFAULT_PLANES.get(name)
    if "priority" in spec:
        prio = check_int(spec["priority"], f"{p}.priority", 0, MAX_PLANES - 1)
    elif default is not None:
        prio = default[0]
    else:
        raise fail(
            f"{p}.priority", f"is required (an integer 0..{MAX_PLANES - 1}, higher is served first)"
        )
    ifn = spec.get("interface")
    if ifn is None:
        ifn = default[1] if default else name
    check_ifname(ifn, f"{p}.interface", reserved=POD_RESERVED_IFNAMES)
    min_rate = check_rate(spec.get("min_rate", 0), f"{p}.min_rate")
    max_rate = check_rate(spec.get("max_rate", 0), f"{p}.max_rate")
    if max_rate and min_rate > max_rate:
        raise fail(f"{p}.min_rate", f"{min_rate} bit/s is above max_rate {max_rate} bit/s")
    qlen = check_pow2(spec.get("queue_len", 1024), f"{p}.queue_len", 16, 1 << 20)
    dscp = spec.get("dscp", DEFAULT_PLANE_DSCP.get(name))
    dscp = None if dscp is None else check_dscp(dscp, f"{p}.dscp")
    worker = spec.get("worker")
    if worker is not None:
        check_int(worker, f"{p}.worker", 0, MAX_LCORE - 1)
        if worker not in workers:
            raise fail(f"{p}.worker", f"lcore {worker} is not one of the worker lcores {workers}")
    rxq = spec.get("rx_queue")
    if rxq is not None:
        if not isinstance(rxq, int) or isinstance(rxq, bool):
            check_int(rxq, f"{p}.rx_queue", 1, MAX_RX_QUEUES - 1)  # not an integer: said so
        if not 1 <= rxq < uplink_rx_queues:
            span = f"out of range 1..{uplink_rx_queues - 1}" if uplink_rx_queues > 1 else "refused"
            raise fail(
                f"{p}.rx_queue",
                f"{rxq} {span}: the uplink has {uplink_rx_queues} rx queue(s) "
                "(vtep.uplink_rx_queues; queue 0 is the shared planes')",
            )
        if worker is None:
            raise fail(f"{p}.rx_queue", f"needs the plane's own worker (set {p}.worker)")
    classify = check_list(spec.get("classify_dscp"), f"{p}.classify_dscp", "list of DSCP values")
    classify = [check_dscp(d, f"{p}.classify_dscp[{i}]") for i, d in enumerate(classify)]
    for i, d in enumerate(classify):
        if d in classify[:i]:
            raise fail(f"{p}.classify_dscp[{i}]", f"DSCP {d} is given twice")
    return PlaneConfig(name, prio, ifn, min_rate, max_rate, qlen, dscp, worker, rxq, classify)


# ---------------------------------------------------------------- networks
def _networks(value, planes, vtep) -> List[NetworkConfig]:
    value = check_list(value, "networks")
    if len(value) > MAX_NETWORKS:
        raise fail("networks", f"{len(value)} networks; at most {MAX_NETWORKS}")
    max_mtu = vtep.underlay_mtu - VXLAN_OVERHEAD
    names, vnis = {}, {}
    out = []
    for i, item in enumerate(value):
        p = f"networks[{i}]"
        n = check_keys(item, p, _NETWORK_KEYS, required=("name", "vni", "plane", "subnet"))
        name = check_name(n["name"], f"{p}.name", "network name")
        other = names.setdefault(name, p)
        if other != p:
            raise fail(f"{p}.name", f"{name!r} is used by {other} already")
        vni = check_vni(n["vni"], f"{p}.vni")
        other = vnis.setdefault(vni, p)
        if other != p:
            raise fail(f"{p}.vni", f"{vni} is the VNI of {other} already")
        out.append(_network(n, p, name, vni, planes, max_mtu))
    return out


def _network(n, p, name, vni, planes, max_mtu) -> NetworkConfig:
    plane = n["plane"]
    if not isinstance(plane, str):
        raise fail(f"{p}.plane", f"{show(plane)} is not a plane name (known: {', '.join(planes)})")
    if plane not in planes:
        hint = ""
        if plane in DEFAULT_PLANES:  # the defaults go when `planes:` is given
            hint = f"; `planes:` lists every plane of the node: add {plane} there too"
        raise fail(f"{p}.plane", f"{show(plane)} is not a plane (known: {', '.join(planes)}){hint}")
    subnet = parse_ipv4_subnet(n["subnet"], f"{p}.subnet")
    if subnet.prefixlen == 0 or subnet.is_multicast or subnet.is_loopback:
        what = (
            "all of IPv4"
            if subnet.prefixlen == 0
            else ("multicast" if subnet.is_multicast else "loopback")
        )
        raise fail(f"{p}.subnet", f"{subnet} is {what}: pods cannot be addressed in it")
    if subnet.prefixlen > 30:
        raise fail(
            f"{p}.subnet",
            f"{subnet} is too small (at most /30: pods need addresses "
            "besides network and broadcast)",
        )
    gateway = n.get("gateway")
    if gateway is not None:
        gw = parse_ipv4(gateway, f"{p}.gateway")
        if gw not in subnet:
            raise fail(f"{p}.gateway", f"{gateway} is not in subnet {subnet}")
        if gw in (subnet.network_address, subnet.broadcast_address):
            raise fail(f"{p}.gateway", f"{gateway} is the network or broadcast address of {subnet}")
        gateway = str(gw)
    mtu = n.get("mtu")
    mtu = max_mtu if mtu is None else check_int(mtu, f"{p}.mtu", MIN_MTU, max_mtu)
    subnet6, gateway6 = _network6(n, p, subnet, gateway, mtu)
    pps = check_int(n.get("storm_pps", DEFAULT_STORM_PPS), f"{p}.storm_pps", 0, STORM_PPS_MAX)
    burst = check_int(
        n.get("storm_burst", DEFAULT_STORM_BURST), f"{p}.storm_burst", 1, STORM_BURST_MAX
    )
    return NetworkConfig(
        name=name,
        vni=vni,
        plane=plane,
        subnet=str(subnet),
        gateway=gateway,
        mtu=mtu,
        anti_spoofing=check_bool(n.get("anti_spoofing", True), f"{p}.anti_spoofing"),
        storm_pps=pps,
        storm_burst=burst,
        subnet6=subnet6,
        gateway6=gateway6,
    )


#: the smallest MTU IPv6 runs on (RFC 8200)
IPV6_MIN_MTU = 1280


def _network6(n, p, subnet, gateway, mtu) -> Tuple[Optional[str], Optional[str]]:
    """A network's ``subnet6`` and ``gateway6``, normalised (None, None
    without). Every IPv4 host of ``subnet`` must have its counterpart in
    subnet6 (NetworkConfig.ip6_of), gateway6 must be no pod's, and the
    network's ``mtu`` one IPv6 runs on."""
    value, gw_value = n.get("subnet6"), n.get("gateway6")
    if value is None:
        if gw_value is not None:
            raise fail(f"{p}.gateway6", "needs subnet6, the network's IPv6 subnet")
        return None, None
    net6 = parse_ipv6_subnet(value, f"{p}.subnet6")
    host_bits = 32 - subnet.prefixlen
    what = next(
        (
            w
            for w, hit in (
                ("all of IPv6", net6.prefixlen == 0),
                ("multicast", net6.is_multicast),
                ("link-local", net6.is_link_local),
                ("loopback", net6.is_loopback),
                (
                    "reserved (the IPv4-mapped and -compatible addresses are there)",
                    # (::/8 by name: Python 3.13 no longer calls the
                    # IPv4-mapped ::ffff:0:0/96 reserved)
                    net6.is_reserved or net6.subnet_of(IPV6_RESERVED_LOW),
                ),
            )
            if hit
        ),
        None,
    )
    if what:
        raise fail(f"{p}.subnet6", f"{net6} is {what}: pods cannot be addressed in it")
    if mtu < IPV6_MIN_MTU:
        raise fail(
            f"{p}.subnet6",
            f"the network's mtu {mtu} is below IPv6's minimum of {IPV6_MIN_MTU}: the kernel "
            "runs no IPv6 on such an interface",
        )
    if 128 - net6.prefixlen < host_bits:
        raise fail(
            f"{p}.subnet6",
            f"{net6} is too small for subnet {subnet}: a pod's IPv6 address is its IPv4 "
            f"address's host part in subnet6, so subnet6 needs at least {host_bits} host bits "
            f"(a prefix of /{128 - host_bits} or shorter; /64 is usual)",
        )
    if gw_value is None:
        return str(net6), None
    gw6 = parse_ipv6(gw_value, f"{p}.gateway6")
    if gw6 not in net6:
        raise fail(f"{p}.gateway6", f"{gw6} is not in subnet6 {net6}")
    host = int(gw6) - int(net6.network_address)
    own = int(ipaddress.IPv4Address(gateway)) - int(subnet.network_address) if gateway else None
    if host == 0:
        raise fail(f"{p}.gateway6", f"{gw6} is subnet6's own address (the subnet-router anycast)")
    if host < (1 << host_bits) - 1 and host != own:
        pod = subnet.network_address + host
        hint = (
            f"{net6.network_address + own}, the counterpart of gateway {gateway}, or an address"
            if own is not None
            else "an address"
        )
        raise fail(
            f"{p}.gateway6",
            f"{gw6} is the IPv6 address of the pod with {pod}: use {hint} from "
            f"{net6.network_address + (1 << host_bits) - 1} on",
        )
    return str(net6), str(gw6)


def _remotes(value, networks, vtep) -> List[RemoteConfig]:
    known = [n.name for n in networks]
    seen = {}
    out = []
    for i, item in enumerate(check_list(value, "remotes")):
        p = f"remotes[{i}]"
        r = check_keys(item, p, ("vtep", "networks"), required=("vtep", "networks"))
        ip = check_vtep_ip(r["vtep"], f"{p}.vtep")
        problem = vtep.remote_problem(ip)
        if problem:
            raise fail(f"{p}.vtep", problem)
        other = seen.setdefault(ip, p)
        if other != p:
            raise fail(f"{p}.vtep", f"{ip} is listed in {other} already")
        nets = r["networks"]
        if not isinstance(nets, list) or not nets:
            raise fail(f"{p}.networks", "must be a non-empty list of network names")
        for j, name in enumerate(nets):
            if name not in known:
                raise fail(
                    f"{p}.networks[{j}]", f"{show(name)} is not a network defined in networks"
                )
            if name in nets[:j]:
                raise fail(f"{p}.networks[{j}]", f"{name!r} is listed twice")
        out.append(RemoteConfig(vtep=str(ip), networks=list(nets)))
    return out


# ---------------------------------------------------------------- store, metrics
def _store(value, state_dir, base_dir) -> StoreConfig:
    s = check_keys({} if value is None else value, "store", _STORE_KEYS)
    kind = s.get("kind", "sqlite")
    if kind not in STORE_KINDS:
        raise fail(
            "store.kind", f"{show(kind)} is not supported (supported: {', '.join(STORE_KINDS)})"
        )
    default_path = os.path.join(state_dir, "state.db")
    if kind == "etcd":
        if s.get("path") is not None:
            raise fail(
                "store.path", "is for kind sqlite (an etcd store has endpoints and a prefix)"
            )
        if s.get("endpoints") is None:
            raise fail(
                "store.endpoints",
                "is required for kind etcd (a list of URLs, e.g. [http://127.0.0.1:2379])",
            )
        endpoints = check_etcd_endpoints(s["endpoints"], "store.endpoints")
        ca, cert, key = _store_tls(s.get("tls"), endpoints, base_dir)
        user, password_file = s.get("user"), s.get("password_file")
        if user is not None:
            user = check_name(user, "store.user", "etcd user name")
            if password_file is None:
                raise fail("store.password_file", "is required with store.user (its password)")
        if password_file is not None:
            if user is None:
                raise fail("store.user", "is required with store.password_file (whose password)")
            password_file = check_abspath(password_file, "store.password_file", base_dir)
            if not os.path.isfile(password_file):
                raise fail("store.password_file", f"{password_file} is not a file")
        return StoreConfig(
            kind=kind,
            path=default_path,
            endpoints=endpoints,
            prefix=check_etcd_prefix(s.get("prefix", DEFAULT_ETCD_PREFIX), "store.prefix"),
            tls_ca=ca,
            tls_cert=cert,
            tls_key=key,
            user=user,
            password_file=password_file,
        )
    for key in ("endpoints", "prefix", "tls", "user", "password_file"):
        if s.get(key) is not None:
            raise fail(f"store.{key}", "is for kind etcd (add kind: etcd)")
    path = s.get("path")
    path = default_path if path is None else check_abspath(path, "store.path", base_dir)
    if os.path.isdir(path):
        raise fail("store.path", f"{path} is a directory: name the state file in it")
    return StoreConfig(kind=kind, path=path)


def _store_tls(value, endpoints, base_dir) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """store.tls: {ca, cert, key} - files (relative to the config file's
    directory) that exist and can be read; cert and key together; for
    https endpoints only."""
    if value is None:
        return None, None, None
    t = check_keys(value, "store.tls", ("ca", "cert", "key"))
    if not t:
        raise fail("store.tls", "names none of ca, cert, key")
    if not any(u.startswith("https://") for u in endpoints):
        raise fail("store.tls", "is for https endpoints (store.endpoints are all http)")
    if ("cert" in t) != ("key" in t):
        have, lack = ("cert", "key") if "cert" in t else ("key", "cert")
        raise fail(
            f"store.tls.{lack}",
            f"is required with store.tls.{have} (a client certificate and its key)",
        )
    out = []
    for k in ("ca", "cert", "key"):
        if t.get(k) is None:
            out.append(None)
            continue
        f = check_abspath(t[k], f"store.tls.{k}", base_dir)
        if not os.path.isfile(f):
            raise fail(f"store.tls.{k}", f"{f}: no such file")
        if not os.access(f, os.R_OK):
            raise fail(f"store.tls.{k}", f"{f}: cannot be read")
        out.append(f)
    return out[0], out[1], out[2]


def _metrics(value) -> MetricsConfig:
    m = check_keys({} if value is None else value, "metrics", ("listen",))
    listen = m.get("listen", DEFAULT_METRICS_LISTEN)
    return MetricsConfig(listen=check_listen(listen, "metrics.listen"))
