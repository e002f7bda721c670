"""Node configuration file (YAML), validated into dataclasses.

    node: node1
    mode: fallback                 # hugepages | fallback (EAL --no-huge)
    lcores: [0, 1]                 # first: control thread, the rest: workers
    vtep:
      address: 10.0.0.1/24         # this node's underlay address and subnet
      uplink: eth1                 # kernel interface (native AF_PACKET driver)
      # uplink: dpdk:net_tap0,iface=up0    (any DPDK device string)
    networks:
      - {name: net1, vni: 100, plane: std, subnet: 192.168.10.0/24, gateway: 192.168.10.1}
    remotes:
      - {vtep: 10.0.0.2, networks: [net1]}
    # store: {kind: sqlite}         # default: state_dir/state.db, one node
    # store: {kind: etcd, endpoints: ["http://127.0.0.1:2379"], prefix: /dataplane}

:func:`load_config` reads a file, :func:`parse_config` a dict already parsed.
Both return a :class:`NodeConfig` or raise :class:`~dataplane.errors.ConfigError`
whose message starts with the field's path and says what is wrong, e.g.
``networks[2].vni: 16777216 out of range 1..16777215``. Unknown keys are
errors. This module has no side effects: it reads the file and nothing else,
so nothing starts on a bad file.
"""
import dataclasses
import difflib
import ipaddress
import os
import re
import socket
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .errors import ConfigError

MODES = ("hugepages", "fallback")
STORE_KINDS = ("sqlite", "etcd")
DEFAULT_ETCD_PREFIX = "/dataplane"
#: VXLAN header overhead on an IPv4 underlay: outer Ether + IPv4 + UDP + VXLAN
VXLAN_OVERHEAD = 50
VNI_MAX = (1 << 24) - 1
#: range the core accepts for the underlay MTU (Engine.set_vtep checks the same)
UNDERLAY_MTU_RANGE = (576, 9216)
#: smallest IPv4 MTU (RFC 791)
MIN_MTU = 68
IFNAMSIZ = 16                       # kernel: names are at most 15 characters
UNIX_PATH_MAX = 107                 # sun_path minus the terminating NUL

DEFAULT_STATE_DIR = "/var/lib/dataplane"
DEFAULT_API_SOCKET = "/run/dataplane/api.sock"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"
DEFAULT_UDP_PORT = 4789
DEFAULT_UNDERLAY_MTU = 1500
DEFAULT_MEMORY_MB = 512
DEFAULT_LCORES = (0, 1)

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
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:bit/s|bps)?\s*$")

_PCI_RE = re.compile(r"^(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_PLANE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,14}$")


#: limits of the core (csrc/dataplane.h: DP_MAX_PLANES, DP_MAX_NETS,
#: DP_MAX_WORKERS; tests/test_config.py checks they agree). Repeated here so
#: that a file is validated without loading the C core; the engine checks again.
MAX_PLANES = 8
MAX_NETWORKS = 256
MAX_WORKERS = 8
MAX_RX_QUEUES = 8                  # rx queues per port (core: DP_MAX_RXQ)


# ---------------------------------------------------------------- dataclasses
@dataclasses.dataclass(frozen=True)
class VtepConfig:
    address: str                       # "a.b.c.d/len", normalised
    uplink: str                        # as written: "eth1" or "dpdk:<devargs>"
    mac: Optional[str] = None          # None: the uplink's own MAC
    udp_port: int = DEFAULT_UDP_PORT
    gateway: Optional[str] = None
    next_hop_mac: Optional[str] = None
    underlay_mtu: int = DEFAULT_UNDERLAY_MTU
    learning: bool = False
    uplink_rate: int = 0               # shaper on the uplink, bit/s; 0 = off
    uplink_burst: int = 16384          # shaper bucket, bytes
    uplink_rx_queues: int = 1          # rx queues of a DPDK uplink (planes' rx_queue)

    @property
    def ip(self) -> str:
        """The VTEP's address without the prefix length."""
        return str(ipaddress.IPv4Interface(self.address).ip)

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
        return head if _PCI_RE.match(head) else None


@dataclasses.dataclass(frozen=True)
class PlaneConfig:
    name: str
    priority: int                      # 0..MAX_PLANES-1, unique; higher first
    interface: str                     # interface name inside the pod
    min_rate: int = 0                  # guaranteed bit/s on the shaped uplink, 0 = none
    max_rate: int = 0                  # bit/s limit on the shaped uplink, 0 = none
    queue_len: int = 1024              # frames per shaped port, power of two
    dscp: Optional[int] = None         # outer DSCP to mark; None = copy the inner one
    worker: Optional[int] = None       # lcore that polls this plane's pod ports
    rx_queue: Optional[int] = None     # uplink rx queue that worker polls (1..)
    classify_dscp: List[int] = dataclasses.field(default_factory=list)  # inner DSCPs


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    name: str
    vni: int
    plane: str
    subnet: str                        # "a.b.c.0/len", normalised
    gateway: Optional[str] = None
    mtu: int = DEFAULT_UNDERLAY_MTU - VXLAN_OVERHEAD

    @property
    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen


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

    def to_dict(self) -> Dict[str, Any]:
        if self.kind == "etcd":
            return {"kind": self.kind, "endpoints": list(self.endpoints),
                    "prefix": self.prefix}
        return {"kind": self.kind, "path": self.path}


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    listen: Optional[str] = DEFAULT_METRICS_LISTEN   # None: no metrics endpoint

    @property
    def host(self) -> Optional[str]:
        return None if self.listen is None else _split_listen(self.listen)[0]

    @property
    def port(self) -> Optional[int]:
        return None if self.listen is None else _split_listen(self.listen)[1]


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    node: str
    vtep: VtepConfig
    mode: str = "fallback"
    lcores: List[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_LCORES))
    memory_mb: int = DEFAULT_MEMORY_MB
    planes: Dict[str, PlaneConfig] = dataclasses.field(default_factory=dict)
    networks: List[NetworkConfig] = dataclasses.field(default_factory=list)
    remotes: List[RemoteConfig] = dataclasses.field(default_factory=list)
    state_dir: str = DEFAULT_STATE_DIR
    store: StoreConfig = dataclasses.field(default_factory=StoreConfig)
    api_socket: str = DEFAULT_API_SOCKET
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)

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

    def engine_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``engine.EngineConfig``."""
        pci = self.vtep.uplink_pci
        return {"mode": self.mode, "lcores": list(self.lcores),
                "memory_mb": self.memory_mb, "pci": [pci] if pci else []}

    def to_dict(self) -> Dict[str, Any]:
        """Plain data, every default filled in; ``parse_config`` accepts it."""
        return {
            "node": self.node,
            "mode": self.mode,
            "lcores": list(self.lcores),
            "memory_mb": self.memory_mb,
            "vtep": dataclasses.asdict(self.vtep),
            "planes": {p.name: {"priority": p.priority, "interface": p.interface,
                                "min_rate": p.min_rate, "max_rate": p.max_rate,
                                "queue_len": p.queue_len, "dscp": p.dscp,
                                "worker": p.worker, "rx_queue": p.rx_queue,
                                "classify_dscp": list(p.classify_dscp)}
                       for p in self.planes.values()},
            "networks": [dataclasses.asdict(n) for n in self.networks],
            "remotes": [{"vtep": r.vtep, "networks": list(r.networks)}
                        for r in self.remotes],
            "state_dir": self.state_dir,
            "store": self.store.to_dict(),
            "api_socket": self.api_socket,
            "metrics": dataclasses.asdict(self.metrics),
        }


# ---------------------------------------------------------------- loading
class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML
    silently keeps the last one)."""


def _construct_mapping(loader, node, deep=False):
    loader.flatten_mapping(node)
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"unhashable key {key!r}", key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark,
                f"key {key!r} is given twice (first at line {seen[key].line + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


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
        raise ConfigError(f"{path}: {where}invalid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        raise ConfigError(f"{path}: the configuration file is empty")
    return parse_config(data, base_dir=os.path.dirname(os.path.abspath(path)))


def parse_config(data, base_dir: Optional[str] = None) -> NodeConfig:
    """Validate a parsed configuration (a dict). Relative paths are taken from
    ``base_dir`` (default: the current directory)."""
    return _Parser(base_dir).node_config(data)


# ---------------------------------------------------------------- validation
def _fmt(v) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def _split_listen(listen: str):
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class _Parser:
    def __init__(self, base_dir):
        self.base_dir = base_dir

    # ------------------------------------------------------- small checks
    @staticmethod
    def err(path, problem):
        return ConfigError(f"{path}: {problem}")

    def mapping(self, value, path, allowed, required=()):
        if not isinstance(value, dict):
            raise self.err(path or "configuration",
                           f"must be a mapping, not {type(value).__name__}")
        for key in value:
            if not isinstance(key, str):
                raise self.err(path or "configuration", f"key {key!r} is not a string")
            if key not in allowed:
                close = difflib.get_close_matches(key, list(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else \
                    f" (known: {', '.join(allowed)})"
                raise self.err(self.join(path, key), f"unknown key{hint}")
        for key in required:
            if value.get(key) is None:
                raise self.err(self.join(path, key), "is required")
        return value

    @staticmethod
    def join(path, key):
        return f"{path}.{key}" if path else key

    def integer(self, value, path, lo, hi):
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.err(path, f"{_fmt(value)} is not an integer")
        if not lo <= value <= hi:
            raise self.err(path, f"{value} out of range {lo}..{hi}")
        return value

    def rate(self, value, path):
        """bit/s: an integer, or a string such as '100M', '2.5G', '64k'."""
        if isinstance(value, bool):
            raise self.err(path, f"{_fmt(value)} is not a rate")
        if isinstance(value, int):
            n = value
        else:
            m = _RATE_RE.match(str(value))
            if not m:
                raise self.err(path, f"{_fmt(value)} is not a rate in bit/s (e.g. 100M, 2.5G)")
            n = int(float(m.group(1)) * {"": 1, "k": 10**3, "m": 10**6,
                                         "g": 10**9}[m.group(2).lower()])
        if not 0 <= n <= 400 * 10**9:
            raise self.err(path, f"{n} bit/s out of range 0..400G")
        if 0 < n < 8000:
            raise self.err(path, f"{n} bit/s is below 8000 (use 0 for none)")
        return n

    def boolean(self, value, path):
        if not isinstance(value, bool):
            raise self.err(path, f"{_fmt(value)} is not true or false")
        return value

    def string(self, value, path):
        if not isinstance(value, str) or not value:
            raise self.err(path, f"{_fmt(value)} is not a non-empty string")
        return value

    def name(self, value, path, what="name"):
        self.string(value, path)
        if not _NAME_RE.match(value):
            raise self.err(path, f"{value!r} is not a valid {what} (letters, digits, "
                                 "'.', '_', '-'; at most 63 characters, "
                                 "starting with a letter or digit)")
        return value

    def ifname(self, value, path):
        self.string(value, path)
        if len(value) >= IFNAMSIZ:
            raise self.err(path, f"{value!r} is longer than {IFNAMSIZ - 1} characters "
                                 "(the kernel's limit for interface names)")
        if value in (".", "..") or any(c in value for c in "/:") or \
                any(c.isspace() for c in value):
            raise self.err(path, f"{value!r} is not a valid interface name")
        return value

    def ipv4(self, value, path):
        if not isinstance(value, str):
            raise self.err(path, f"{_fmt(value)} is not an IPv4 address")
        try:
            return ipaddress.IPv4Address(value)
        except ValueError:
            raise self.err(path, f"{value!r} is not an IPv4 address") from None

    def mac(self, value, path):
        if not isinstance(value, str):
            raise self.err(path, f"{_fmt(value)} is not a MAC address (aa:bb:cc:dd:ee:ff)")
        return check_mac(value, path)

    def abspath(self, value, path):
        self.string(value, path)
        if "\0" in value:
            raise self.err(path, "contains a NUL character")
        if not os.path.isabs(value):
            value = os.path.join(self.base_dir or os.getcwd(), value)
        return os.path.normpath(value)

    def listen(self, value, path):
        if value is None or value is False:
            return None
        self.string(value, path)
        host, sep, port = value.rpartition(":")
        if not sep or not host:
            raise self.err(path, f"{value!r} is not host:port (e.g. 127.0.0.1:9464)")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise self.err(path, f"{host!r} is not an IPv6 address") from None
        elif ":" in host:
            raise self.err(path, f"{value!r}: write an IPv6 address in brackets, "
                                 "e.g. [::1]:9464")
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            raise self.err(path, f"port {port!r} out of range 0..65535")
        return value

    # ------------------------------------------------------- sections
    def node_config(self, data) -> NodeConfig:
        top = self.mapping(data, "", (
            "node", "mode", "lcores", "memory_mb", "vtep", "planes", "networks",
            "remotes", "state_dir", "store", "api_socket", "metrics"), required=("vtep",))

        node = top.get("node")
        node = socket.gethostname() if node is None else self.name(node, "node", "node name")

        mode = top.get("mode", "fallback")
        if mode not in MODES:
            raise self.err("mode", f"{_fmt(mode)} is not one of {', '.join(MODES)}")

        lcores = self.lcores(top.get("lcores", list(DEFAULT_LCORES)))
        self._lcores = lcores
        memory_mb = self.integer(top.get("memory_mb", DEFAULT_MEMORY_MB),
                                 "memory_mb", 64, 1 << 20)
        vtep = self.vtep(top["vtep"])
        planes = self.planes(top.get("planes"), vtep.uplink_rx_queues)
        networks = self.networks(top.get("networks"), planes, vtep)
        remotes = self.remotes(top.get("remotes"), networks, vtep)

        state_dir = self.abspath(top.get("state_dir", DEFAULT_STATE_DIR), "state_dir")
        store = self.store(top.get("store"), state_dir)
        api_socket = self.abspath(top.get("api_socket", DEFAULT_API_SOCKET), "api_socket")
        if len(api_socket.encode()) > UNIX_PATH_MAX:
            raise self.err("api_socket", f"{api_socket!r} is longer than "
                                         f"{UNIX_PATH_MAX} bytes (limit of a unix socket path)")
        metrics = self.metrics(top.get("metrics"))
        return NodeConfig(node=node, mode=mode, lcores=lcores, memory_mb=memory_mb,
                          vtep=vtep, planes=planes, networks=networks, remotes=remotes,
                          state_dir=state_dir, store=store, api_socket=api_socket,
                          metrics=metrics)

    def lcores(self, value):
        if not isinstance(value, list):
            raise self.err("lcores", f"{_fmt(value)} is not a list of CPU numbers")
        if len(value) < 2:
            raise self.err("lcores", "needs at least two CPUs (one control thread, "
                                     "one worker)")
        seen = set()
        for i, c in enumerate(value):
            self.integer(c, f"lcores[{i}]", 0, 1 << 16)
            if c in seen:
                raise self.err(f"lcores[{i}]", f"CPU {c} is listed twice")
            seen.add(c)
        if len(value) - 1 > MAX_WORKERS:
            raise self.err("lcores", f"at most {MAX_WORKERS} workers (plus the "
                                     "control thread)")
        return list(value)

    def vtep(self, value):
        p = "vtep"
        v = self.mapping(value, p, ("address", "uplink", "mac", "udp_port", "gateway",
                                    "next_hop_mac", "underlay_mtu", "learning",
                                    "uplink_rate", "uplink_burst", "uplink_rx_queues"),
                         required=("address", "uplink"))
        addr = v["address"]
        if not isinstance(addr, str) or "/" not in addr:
            raise self.err(f"{p}.address", f"{_fmt(addr)} is not an IPv4 address with "
                                           "prefix length (a.b.c.d/len)")
        try:
            iface = ipaddress.IPv4Interface(addr)
        except ValueError:
            raise self.err(f"{p}.address", f"{addr!r} is not an IPv4 address with prefix "
                                           "length (a.b.c.d/len)") from None
        if iface.ip.is_multicast or iface.ip.is_unspecified or iface.ip.is_loopback \
                or (iface.network.prefixlen < 31 and iface.ip in (
                    iface.network.network_address, iface.network.broadcast_address)):
            raise self.err(f"{p}.address", f"{addr!r} cannot be a VTEP address")

        uplink = self.string(v["uplink"], f"{p}.uplink")
        if uplink.startswith("dpdk:"):
            dev = uplink[5:]
            if not dev or dev[0] in ", " or any(c.isspace() for c in dev):
                raise self.err(f"{p}.uplink", f"{uplink!r}: give a DPDK device string "
                                              "after 'dpdk:', e.g. dpdk:net_tap0,iface=up0")
        else:
            self.ifname(uplink, f"{p}.uplink")

        mac = v.get("mac")
        mac = None if mac is None else self.mac(mac, f"{p}.mac")
        udp_port = self.integer(v.get("udp_port", DEFAULT_UDP_PORT), f"{p}.udp_port", 1, 65535)
        gateway = v.get("gateway")
        if gateway is not None:
            gw = self.ipv4(gateway, f"{p}.gateway")
            if gw not in iface.network:
                raise self.err(f"{p}.gateway", f"{gateway} is not in the VTEP's subnet "
                                               f"{iface.network}")
            if gw == iface.ip:
                raise self.err(f"{p}.gateway", f"{gateway} is the VTEP's own address")
            gateway = str(gw)
        nh = v.get("next_hop_mac")
        nh = None if nh is None else self.mac(nh, f"{p}.next_hop_mac")
        mtu = self.integer(v.get("underlay_mtu", DEFAULT_UNDERLAY_MTU),
                           f"{p}.underlay_mtu", *UNDERLAY_MTU_RANGE)
        learning = self.boolean(v.get("learning", False), f"{p}.learning")
        rate = self.rate(v.get("uplink_rate", 0), f"{p}.uplink_rate")
        burst = self.integer(v.get("uplink_burst", 16384), f"{p}.uplink_burst", 2048, 1 << 26)
        rxq = self.integer(v.get("uplink_rx_queues", 1), f"{p}.uplink_rx_queues", 1,
                           MAX_RX_QUEUES)
        if rxq > 1 and not uplink.startswith("dpdk:"):
            raise self.err(f"{p}.uplink_rx_queues", "a kernel-interface uplink (native "
                                                    "AF_PACKET) has one rx queue; several "
                                                    "need a DPDK uplink ('dpdk:...')")
        return VtepConfig(address=str(iface), uplink=uplink, mac=mac, udp_port=udp_port,
                          gateway=gateway, next_hop_mac=nh, underlay_mtu=mtu,
                          learning=learning, uplink_rate=rate, uplink_burst=burst,
                          uplink_rx_queues=rxq)

    def planes(self, value, uplink_rx_queues=1):
        if value is None:
            return {n: PlaneConfig(n, prio, ifn, dscp=DEFAULT_PLANE_DSCP.get(n))
                    for n, (prio, ifn) in DEFAULT_PLANES.items()}
        if not isinstance(value, dict) or not value:
            raise self.err("planes", "must be a non-empty mapping of plane name -> "
                                     "{priority, interface}")
        if len(value) > MAX_PLANES:
            raise self.err("planes", f"{len(value)} planes; at most {MAX_PLANES}")
        planes = {}
        by_prio = {}
        by_if = {}
        by_rxq = {}
        for name, spec in value.items():
            p = f"planes.{name}"
            if not isinstance(name, str) or not _PLANE_RE.match(name):
                raise self.err(p, f"{_fmt(name)} is not a valid plane name (lower-case "
                                  "letter, then letters, digits, '_' or '-'; at most 15)")
            spec = {} if spec is None else spec
            self.mapping(spec, p, ("priority", "interface", "min_rate", "max_rate",
                                   "queue_len", "dscp", "worker", "rx_queue",
                                   "classify_dscp"))
            default = DEFAULT_PLANES.get(name)
            if "priority" in spec:
                prio = self.integer(spec["priority"], f"{p}.priority", 0, MAX_PLANES - 1)
            elif default is not None:
                prio = default[0]
            else:
                raise self.err(f"{p}.priority", "is required (an integer 0.."
                                                f"{MAX_PLANES - 1}, higher is served first)")
            if prio in by_prio:
                raise self.err(f"{p}.priority", f"{prio} is the priority of plane "
                                                f"{by_prio[prio]} already (each plane "
                                                "has its own)")
            by_prio[prio] = name
            ifn = spec.get("interface")
            if ifn is None:
                ifn = default[1] if default else name
            self.ifname(ifn, f"{p}.interface")
            if ifn == "lo":
                raise self.err(f"{p}.interface", "'lo' is the pod's loopback interface")
            if ifn in by_if:
                raise self.err(f"{p}.interface", f"{ifn!r} is the interface of plane "
                                                 f"{by_if[ifn]} already")
            by_if[ifn] = name
            min_rate = self.rate(spec.get("min_rate", 0), f"{p}.min_rate")
            max_rate = self.rate(spec.get("max_rate", 0), f"{p}.max_rate")
            if max_rate and min_rate > max_rate:
                raise self.err(f"{p}.min_rate", f"{min_rate} bit/s is above max_rate "
                                                f"{max_rate} bit/s")
            qlen = self.integer(spec.get("queue_len", 1024), f"{p}.queue_len", 16, 1 << 20)
            if qlen & (qlen - 1):
                raise self.err(f"{p}.queue_len", f"{qlen} is not a power of two")
            dscp = spec.get("dscp", DEFAULT_PLANE_DSCP.get(name))
            dscp = None if dscp is None else self.integer(dscp, f"{p}.dscp", 0, 63)
            worker = spec.get("worker")
            if worker is not None:
                worker = self.integer(worker, f"{p}.worker", 0, 4095)
                if worker not in self._lcores[1:]:
                    raise self.err(f"{p}.worker", f"lcore {worker} is not one of the "
                                                  f"worker lcores {self._lcores[1:]}")
            rxq = spec.get("rx_queue")
            if rxq is not None:
                rxq = self.integer(rxq, f"{p}.rx_queue", 1, MAX_RX_QUEUES - 1)
                if worker is None:
                    raise self.err(f"{p}.rx_queue", "needs the plane's own worker (set "
                                                    f"{p}.worker)")
                if rxq >= uplink_rx_queues:
                    raise self.err(f"{p}.rx_queue", f"{rxq}: the uplink has "
                                                    f"{uplink_rx_queues} rx queue(s) "
                                                    "(vtep.uplink_rx_queues)")
                if rxq in by_rxq:
                    raise self.err(f"{p}.rx_queue", f"{rxq} is the rx queue of plane "
                                                    f"{by_rxq[rxq]} already")
                by_rxq[rxq] = name
            cls = spec.get("classify_dscp", [])
            if not isinstance(cls, list):
                raise self.err(f"{p}.classify_dscp", "must be a list of DSCP values")
            cls = [self.integer(d, f"{p}.classify_dscp[{i}]", 0, 63) for i, d in enumerate(cls)]
            planes[name] = PlaneConfig(name, prio, ifn, min_rate, max_rate, qlen, dscp,
                                       worker, rxq, cls)
        if "std" not in planes:
            raise self.err("planes", "the std plane is required (IT pods use it)")
        return planes

    def networks(self, value, planes, vtep):
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.err("networks", f"must be a list, not {type(value).__name__}")
        if len(value) > MAX_NETWORKS:
            raise self.err("networks", f"{len(value)} networks; at most {MAX_NETWORKS}")
        max_mtu = vtep.underlay_mtu - VXLAN_OVERHEAD
        names = {}
        vnis = {}
        out = []
        for i, item in enumerate(value):
            p = f"networks[{i}]"
            n = self.mapping(item, p, ("name", "vni", "plane", "subnet", "gateway", "mtu"),
                             required=("name", "vni", "plane", "subnet"))
            name = self.name(n["name"], f"{p}.name", "network name")
            if name in names:
                raise self.err(f"{p}.name", f"{name!r} is used by networks[{names[name]}] "
                                            "already")
            names[name] = i
            vni = self.integer(n["vni"], f"{p}.vni", 1, VNI_MAX)
            if vni in vnis:
                raise self.err(f"{p}.vni", f"{vni} is the VNI of networks[{vnis[vni]}] "
                                           "already")
            vnis[vni] = i
            plane = n["plane"]
            if plane not in planes:
                raise self.err(f"{p}.plane", f"{_fmt(plane)} is not a plane (known: "
                                             f"{', '.join(planes)})")
            subnet_s = n["subnet"]
            if not isinstance(subnet_s, str) or "/" not in subnet_s:
                raise self.err(f"{p}.subnet", f"{_fmt(subnet_s)} is not an IPv4 subnet "
                                              "(a.b.c.d/len)")
            try:
                subnet = ipaddress.IPv4Network(subnet_s)
            except ValueError as e:
                raise self.err(f"{p}.subnet", f"{subnet_s!r} is not an IPv4 subnet ({e})") \
                    from None
            if subnet.prefixlen > 30:
                raise self.err(f"{p}.subnet", f"{subnet} is too small (at most /30: pods "
                                              "need addresses besides network and "
                                              "broadcast)")
            gateway = n.get("gateway")
            if gateway is not None:
                gw = self.ipv4(gateway, f"{p}.gateway")
                if gw not in subnet:
                    raise self.err(f"{p}.gateway", f"{gateway} is not in subnet {subnet}")
                if gw in (subnet.network_address, subnet.broadcast_address):
                    raise self.err(f"{p}.gateway", f"{gateway} is the network or broadcast "
                                                   f"address of {subnet}")
                gateway = str(gw)
            mtu = n.get("mtu")
            if mtu is None:
                mtu = max_mtu
            else:
                self.integer(mtu, f"{p}.mtu", MIN_MTU, max_mtu)
            out.append(NetworkConfig(name=name, vni=vni, plane=plane, subnet=str(subnet),
                                     gateway=gateway, mtu=mtu))
        return out

    def remotes(self, value, networks, vtep):
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.err("remotes", f"must be a list, not {type(value).__name__}")
        known = {n.name for n in networks}
        seen = {}
        out = []
        for i, item in enumerate(value):
            p = f"remotes[{i}]"
            r = self.mapping(item, p, ("vtep", "networks"), required=("vtep", "networks"))
            ip = self.ipv4(r["vtep"], f"{p}.vtep")
            if ip.is_multicast or ip.is_unspecified or ip.is_loopback:
                raise self.err(f"{p}.vtep", f"{ip} cannot be a VTEP address")
            if str(ip) == vtep.ip:
                raise self.err(f"{p}.vtep", f"{ip} is this node's own VTEP address")
            if ip in seen:
                raise self.err(f"{p}.vtep", f"{ip} is listed in remotes[{seen[ip]}] already")
            seen[ip] = i
            nets = r["networks"]
            if not isinstance(nets, list) or not nets:
                raise self.err(f"{p}.networks", "must be a non-empty list of network names")
            for j, name in enumerate(nets):
                if name not in known:
                    raise self.err(f"{p}.networks[{j}]", f"{_fmt(name)} is not a network "
                                                         "defined in networks")
                if name in nets[:j]:
                    raise self.err(f"{p}.networks[{j}]", f"{name!r} is listed twice")
            out.append(RemoteConfig(vtep=str(ip), networks=list(nets)))
        return out

    def store(self, value, state_dir):
        value = {} if value is None else value
        s = self.mapping(value, "store", ("kind", "path", "endpoints", "prefix"))
        kind = s.get("kind", "sqlite")
        if kind not in STORE_KINDS:
            raise self.err("store.kind", f"{_fmt(kind)} is not supported (supported: "
                                         f"{', '.join(STORE_KINDS)})")
        if kind == "etcd":
            if s.get("path") is not None:
                raise self.err("store.path", "is for kind sqlite (an etcd store has "
                                             "endpoints and a prefix)")
            if s.get("endpoints") is None:
                raise self.err("store.endpoints", "is required for kind etcd (a list "
                                                  "of URLs, e.g. [http://127.0.0.1:2379])")
            endpoints = self.etcd_endpoints(s["endpoints"], "store.endpoints")
            prefix = self.etcd_prefix(s.get("prefix", DEFAULT_ETCD_PREFIX), "store.prefix")
            return StoreConfig(kind=kind, path=os.path.join(state_dir, "state.db"),
                               endpoints=endpoints, prefix=prefix)
        for key in ("endpoints", "prefix"):
            if s.get(key) is not None:
                raise self.err(f"store.{key}", "is for kind etcd (add kind: etcd)")
        path = s.get("path")
        if path is None:
            path = os.path.join(state_dir, "state.db")
        else:
            path = self.abspath(path, "store.path")
        return StoreConfig(kind=kind, path=path)

    def etcd_endpoints(self, value, path):
        if isinstance(value, str):
            value = [value]                # one URL written without brackets
        if not isinstance(value, list) or not value:
            raise self.err(path, f"{_fmt(value)} is not a non-empty list of URLs "
                                 "(http://host:port)")
        out = []
        for i, url in enumerate(value):
            p = f"{path}[{i}]"
            if not isinstance(url, str) or "://" not in url:
                raise self.err(p, f"{_fmt(url)} is not a URL (http://host:port)")
            u = urllib.parse.urlsplit(url)
            if u.scheme not in ("http", "https"):
                raise self.err(p, f"{url!r}: scheme {u.scheme!r} is not http or https")
            try:
                port = u.port
            except ValueError:
                raise self.err(p, f"{url!r}: the port is not a number in 0..65535") \
                    from None
            if not u.hostname:
                raise self.err(p, f"{url!r} has no host")
            if port is None:
                raise self.err(p, f"{url!r} has no port (etcd's client port is "
                                  "usually 2379)")
            if u.path not in ("", "/") or u.query or u.fragment or u.username \
                    or u.password:
                raise self.err(p, f"{url!r}: give only scheme, host and port "
                                  "(http://host:port)")
            url = f"{u.scheme}://{u.netloc}"
            if url in out:
                raise self.err(p, f"{url!r} is listed in {path}[{out.index(url)}] already")
            out.append(url)
        return tuple(out)

    def etcd_prefix(self, value, path):
        self.string(value, path)
        if not value.startswith("/"):
            raise self.err(path, f"{value!r} does not start with '/' (e.g. /dataplane)")
        if any(c.isspace() or c == "\0" for c in value):
            raise self.err(path, f"{value!r} contains white space or NUL")
        value = value.rstrip("/")
        if not value:
            raise self.err(path, "'/' alone would mix the cluster's keys with others' "
                                 "(e.g. /dataplane)")
        return value

    def metrics(self, value):
        value = {} if value is None else value
        m = self.mapping(value, "metrics", ("listen",))
        listen = m["listen"] if "listen" in m else DEFAULT_METRICS_LISTEN
        return MetricsConfig(listen=self.listen(listen, "metrics.listen"))


def check_mac(value: str, path: str = "mac") -> str:
    """Normalise a unicast MAC 'aa:bb:cc:dd:ee:ff' (lower case) or raise
    ConfigError naming ``path``."""
    parts = str(value).replace("-", ":").split(":")
    try:
        if len(parts) != 6 or any(len(x) != 2 for x in parts):
            raise ValueError
        octets = bytes(int(x, 16) for x in parts)
    except ValueError:
        raise ConfigError(f"{path}: {value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)") \
            from None
    if octets[0] & 1:
        raise ConfigError(f"{path}: {value} is a multicast/broadcast MAC, not a unicast one")
    if octets == bytes(6):
        raise ConfigError(f"{path}: {value} is the all-zero MAC")
    return ":".join(f"{b:02x}" for b in octets)
