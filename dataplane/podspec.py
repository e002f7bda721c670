"""Pod specs: which planes a pod asks for, on which networks, with which
names and addresses. Pure: it reads the node configuration and nothing else.

A pod's plane spec, JSON text or a dict::

    {"pod_type": "ct", "network_plane": ["std", "control", "media"],
     "networks": {"std": "net1", "control": "net2", "media": "net3"},
     "ips": {"std": "192.168.10.7"},                 # optional fixed addresses
     "macs": {"media": "02:00:00:00:00:07"},         # optional fixed MACs
     "interfaces": {"media": "rtp0"},                # optional interface names
     "allowed_addresses": {"std": ["192.168.10.100"]},  # optional extra sources
     "dhcp_server": ["control"]}                     # optional: planes it serves DHCP on

A pod port forwards only frames from the pod's own MAC and address;
``allowed_addresses`` adds the IPv4/IPv6 addresses a plane may also send
from (a floating address of VRRP/keepalived); ``dhcp_server`` lists the
planes on which the pod may answer DHCP and DHCPv6 (a DHCP server or relay
pod; other pods' server messages are dropped).

An ``interfaces`` entry may instead be a mapping naming the plane's kind,
``veth`` (the default), ``memif``, ``vhost-user`` or ``vf``, with that
kind's options (:data:`dataplane.fastif.OPTIONS`), e.g.
``{"media": {"kind": "memif"}}`` or ``{"media": {"kind": "vf", "device":
"ens1f0v3", "vlan": 30}}``.

"it" pods have only the std plane. :func:`parse_pod_spec` checks it against
the node configuration and returns a :class:`PodSpec`, or raises ConfigError
naming the problem. Inside the pod, std is ``eth0`` and every other plane is
named after the plane, unless the node configuration (``planes.X.interface``)
or the spec (``interfaces``) says otherwise. The interfaces themselves are
made by :mod:`dataplane.podnet`.
"""

import dataclasses
import hashlib
import ipaddress
import re
from typing import Any, Dict, List, Optional, Tuple

from .checks import (
    GUARD_MAX_IP6,
    IFNAMSIZ,
    check_allowed_addresses,
    check_ifname,
    check_known,
    check_pod_mac,
    fail,
    load_json_object,
    parse_ipv4,
    show,
)
from .config import NodeConfig
from .errors import ConfigError
from .fastif import SOCKET_KINDS, VETH, parse_interface

POD_TYPES = ("ct", "it")
SPEC_KEYS = (
    "pod_type",
    "network_plane",
    "networks",
    "ips",
    "macs",
    "interfaces",
    "allowed_addresses",
    "dhcp_server",
)
STD_PLANE = "std"


# ============================================================== plane specs
@dataclasses.dataclass(frozen=True)
class PlaneSpec:
    plane: str
    network: str
    ifname: str  # interface name inside the pod
    ip: Optional[str] = None  # fixed address asked for (no prefix)
    mac: Optional[str] = None  # fixed MAC asked for
    kind: str = VETH  # veth, memif, vhost-user, vf
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)  # the kind's
    allowed: Tuple[str, ...] = ()  # extra source addresses (allowed_addresses)
    dhcp_server: bool = False  # may send DHCP server messages (dhcp_server)

    @property
    def default_route(self) -> bool:
        """The std plane carries the pod's default route."""
        return self.plane == STD_PLANE


@dataclasses.dataclass(frozen=True)
class PodSpec:
    pod_type: str
    planes: List[PlaneSpec]  # in network_plane order

    def plane(self, name: str) -> Optional[PlaneSpec]:
        for p in self.planes:
            if p.plane == name:
                return p
        return None

    def to_dict(self) -> Dict[str, Any]:
        """The spec as JSON data; ``parse_pod_spec`` gives back the same spec."""
        d = {
            "pod_type": self.pod_type,
            "network_plane": [p.plane for p in self.planes],
            "networks": {p.plane: p.network for p in self.planes},
            "interfaces": {p.plane: p.ifname for p in self.planes},
        }
        for p in self.planes:
            if p.kind != VETH:
                d["interfaces"][p.plane] = _interface_dict(p)
        ips = {p.plane: p.ip for p in self.planes if p.ip}
        macs = {p.plane: p.mac for p in self.planes if p.mac}
        if ips:
            d["ips"] = ips
        if macs:
            d["macs"] = macs
        allowed = {p.plane: list(p.allowed) for p in self.planes if p.allowed}
        if allowed:
            d["allowed_addresses"] = allowed
        dhcp = [p.plane for p in self.planes if p.dhcp_server]
        if dhcp:
            d["dhcp_server"] = dhcp
        return d


def _interface_dict(p: PlaneSpec) -> Dict[str, Any]:
    d = {"kind": p.kind, **p.options}
    if p.kind == "vf":
        d["ifname"] = p.ifname
    return d


# `"networks": ["std": "net1", ...]`: a list of "key": "value" pairs
_PAIRS_IN_LIST = re.compile(r'"([^"\\]+)"\s*:\s*\[\s*"[^"\\]*"\s*:\s*"')
_WHAT = {"networks": "network", "ips": "address", "macs": "MAC", "interfaces": "interface"}
#: the pod's loopback: never a plane's interface
_RESERVED_IFNAMES = {"lo": "not a valid interface name for a plane (the pod's loopback)"}


def _pairs_in_list(text: str) -> Optional[str]:
    """What is wrong with invalid JSON text that writes a mapping as a list
    of "plane": "value" pairs (None: something else is)."""
    m = _PAIRS_IN_LIST.search(text)
    if not m:
        return None
    key = m.group(1)
    what = _WHAT.get(key, "value")
    return f'{key} must be a mapping {{"plane": "{what}"}}, not a list of "plane": "{what}" pairs'


def _plane_map(spec, key, listed, config):
    """spec[key] as {plane: value}, every plane known and listed."""
    value = spec.get(key)
    if value is None:
        return {}
    what = _WHAT[key]
    if isinstance(value, list):
        raise ConfigError(f'{key} must be a mapping {{"plane": "{what}"}}, not a list')
    if not isinstance(value, dict):
        raise ConfigError(
            f'{key} must be a mapping {{"plane": "{what}"}}, not {type(value).__name__}'
        )
    for plane, v in value.items():
        check_known(plane, key, config.planes, "plane")
        if plane not in listed:
            raise fail(
                f"{key}.{plane}",
                f"{what} given for plane {plane}, which is not listed in network_plane",
            )
        if key == "interfaces" and isinstance(v, dict):
            continue  # a kind and its options: parse_interface
        if not isinstance(v, str) or not v:
            named = " name" if key in ("networks", "interfaces") else ""
            article = "an" if what[0] in "aeiou" else "a"
            raise fail(f"{key}.{plane}", f"{show(v)} is not {article} {what}{named}")
    return value


def parse_pod_spec(obj, config: NodeConfig) -> PodSpec:
    """Validate a pod's plane spec (JSON text, bytes or a dict) against the
    node configuration. ConfigError names the problem."""
    obj = load_json_object(obj, "pod spec", explain=_pairs_in_list)
    for key in obj:
        check_known(key, "pod spec", SPEC_KEYS)
    pod_type = obj.get("pod_type")
    if pod_type is None:
        raise fail("pod_type", f"is required ({' or '.join(POD_TYPES)})")
    check_known(pod_type, "pod_type", POD_TYPES, "pod type")

    planes = _listed_planes(obj.get("network_plane"), pod_type, config)
    if obj.get("networks") is None:
        raise ConfigError('networks: is required (a mapping {"plane": "network"})')
    networks = _plane_map(obj, "networks", planes, config)
    ips = _plane_map(obj, "ips", planes, config)
    macs = _plane_map(obj, "macs", planes, config)
    ifnames = _plane_map(obj, "interfaces", planes, config)
    allowed = _allowed_addresses(obj.get("allowed_addresses"), planes, config)
    dhcp = _dhcp_server(obj.get("dhcp_server"), planes, config)

    out = []
    used_if = {}
    used_mac = {}
    used_net = {}  # subnet -> (plane, network): one pod's planes must not overlap
    owners = {}  # "uid"/"gid" -> (plane, value): one socket directory, one owner
    for plane in planes:
        name = networks.get(plane)
        if name is None:
            raise ConfigError(
                f"networks: plane {plane} is listed in network_plane but has no network"
            )
        check_known(
            name, f"networks.{plane}", [n.name for n in config.networks], "network", suggest=False
        )
        net = config.network(name)
        if net.plane != plane:
            raise ConfigError(
                f"networks.{plane}: network {name} belongs to plane {net.plane}, not {plane}"
            )
        subnets = [ipaddress.ip_network(s) for s in (net.subnet, net.subnet6) if s]
        for subnet in subnets:
            for other, (oplane, oname) in used_net.items():
                if subnet.version == other.version and subnet.overlaps(other):
                    # two connected routes for one range: the pod's stack would
                    # send one plane's traffic out of the other's interface
                    raise ConfigError(
                        f"networks.{plane}: network {name} ({subnet}) overlaps network {oname} "
                        f"({other}) of plane {oplane}: a pod cannot be on both"
                    )
        for subnet in subnets:
            used_net[subnet] = (plane, name)

        kind, opts, given = VETH, {}, ifnames.get(plane)
        if isinstance(given, dict):
            kind, given, opts = parse_interface(given, plane)
        ifname = check_ifname(
            given or config.planes[plane].interface,
            f"interfaces.{plane}",
            reserved=_RESERVED_IFNAMES,
        )
        if ifname in used_if and kind in (VETH, "vf"):
            raise ConfigError(
                f"interfaces: duplicate interface name {ifname!r} (planes "
                f"{used_if[ifname]} and {plane})"
            )
        if kind in (VETH, "vf"):  # memif and vhost-user have no kernel interface
            used_if[ifname] = plane
        if kind in SOCKET_KINDS:
            _check_socket_owner(opts, plane, owners)

        ip = ips.get(plane)
        if ip is not None:
            ip = _check_pod_ip(ip, plane, net, config)
        for i, a in enumerate(allowed.get(plane, ())):
            _check_floating(a, f"allowed_addresses.{plane}[{i}]", net, config)
        n6 = sum(1 for a in allowed.get(plane, ()) if ":" in a)
        if net.subnet6 and n6 > GUARD_MAX_IP6 - 2:
            # the guard holds the link-local and the pod's own IPv6 address too
            raise ConfigError(
                f"allowed_addresses.{plane}: {n6} IPv6 addresses; at most {GUARD_MAX_IP6 - 2} "
                f"on dual-stack network {name} (the pod's own IPv6 address takes a place)"
            )
        mac = macs.get(plane)
        if mac is not None:
            mac = check_pod_mac(mac, f"macs.{plane}")
            if mac in used_mac:
                raise ConfigError(
                    f"macs.{plane}: {mac} is the MAC of plane {used_mac[mac]} already"
                )
            used_mac[mac] = plane
        out.append(
            PlaneSpec(
                plane=plane,
                network=name,
                ifname=ifname,
                ip=ip,
                mac=mac,
                kind=kind,
                options=opts,
                allowed=tuple(allowed.get(plane, ())),
                dhcp_server=plane in dhcp,
            )
        )
    for p in out:  # one socket directory, one owner: every socket the pod's user's
        if p.kind in SOCKET_KINDS:
            for key, (_, value) in owners.items():
                p.options.setdefault(key, value)
    return PodSpec(pod_type=pod_type, planes=out)


def _check_socket_owner(opts, plane: str, owners):
    """The memif and vhost-user planes of a pod share its socket directory,
    which is handed to their ``uid``/``gid``: planes that give one must give
    the same (``owners``: the first plane giving each, and its value)."""
    for key in ("uid", "gid"):
        if key not in opts:
            continue
        first = owners.setdefault(key, (plane, opts[key]))
        if first[1] != opts[key]:
            raise fail(
                f"interfaces.{plane}.{key}",
                f"{opts[key]} differs from {key} {first[1]} of plane {first[0]}: a pod's "
                "memif and vhost-user planes share one socket directory, owned by one "
                f"{'user' if key == 'uid' else 'group'}",
            )


def _allowed_addresses(value, listed, config) -> Dict[str, List[str]]:
    """allowed_addresses: {plane: [address, ...]}, every plane listed."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(
            'allowed_addresses must be a mapping {"plane": ["address", ...]}, '
            f"not {type(value).__name__}"
        )
    out = {}
    for plane, addrs in value.items():
        check_known(plane, "allowed_addresses", config.planes, "plane")
        if plane not in listed:
            raise fail(
                f"allowed_addresses.{plane}",
                f"addresses given for plane {plane}, which is not listed in network_plane",
            )
        out[plane] = check_allowed_addresses(addrs, f"allowed_addresses.{plane}")
    return out


def _dhcp_server(value, listed, config) -> List[str]:
    """dhcp_server: [plane, ...], each listed in network_plane once."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"dhcp_server: {value!r} is not a list of planes")
    for i, plane in enumerate(value):
        if not isinstance(plane, str):
            raise ConfigError(f"dhcp_server[{i}]: {plane!r} is not a plane name")
        check_known(plane, f"dhcp_server[{i}]", config.planes, "plane")
        if plane not in listed:
            raise ConfigError(f"dhcp_server[{i}]: plane {plane} is not listed in network_plane")
        if plane in value[:i]:
            raise ConfigError(f"dhcp_server[{i}]: duplicate plane {plane!r}")
    return list(value)


def _listed_planes(planes, pod_type: str, config: NodeConfig) -> List[str]:
    """network_plane: the pod's planes, each known once (an it pod: std)."""
    if planes is None and pod_type == "it":
        planes = [STD_PLANE]
    if planes is None:
        raise ConfigError("network_plane: is required for a ct pod (a list of planes)")
    if not isinstance(planes, list) or not planes:
        raise ConfigError(f"network_plane: {planes!r} is not a non-empty list of planes")
    for i, plane in enumerate(planes):
        if not isinstance(plane, str):
            raise ConfigError(f"network_plane[{i}]: {plane!r} is not a plane name")
        check_known(plane, f"network_plane[{i}]", config.planes, "plane")
        if plane in planes[:i]:
            raise ConfigError(f"network_plane[{i}]: duplicate plane {plane!r}")
    if pod_type == "it" and planes != [STD_PLANE]:
        other = [p for p in planes if p != STD_PLANE]
        raise ConfigError(
            f"network_plane: an it pod has only the std plane, not "
            f"{', '.join(other) if other else planes}"
        )
    return planes


def _check_pod_ip(ip: str, plane: str, net, config: NodeConfig) -> str:
    """A fixed address: in the network's subnet, and nobody else's by
    position (the network's own, broadcast or gateway address, the node's
    VTEP)."""
    subnet = ipaddress.IPv4Network(net.subnet)
    addr, slash, plen = ip.partition("/")
    a = parse_ipv4(addr, f"ips.{plane}")
    if slash and not (plen.isascii() and plen.isdigit() and int(plen) <= 32):
        raise ConfigError(f"ips.{plane}: /{plen} in {ip!r} is not a prefix length (0..32)")
    if plen and int(plen) != subnet.prefixlen:
        raise ConfigError(
            f"ips.{plane}: prefix length /{plen} differs from network {net.name}'s subnet {subnet}"
        )
    if a not in subnet:
        raise ConfigError(f"ips.{plane}: {a} is outside network {net.name}'s subnet {subnet}")
    if a in (subnet.network_address, subnet.broadcast_address):
        raise ConfigError(f"ips.{plane}: {a} is the network or broadcast address of {subnet}")
    if net.gateway and a == ipaddress.IPv4Address(net.gateway):
        raise ConfigError(f"ips.{plane}: {a} is the gateway of network {net.name}")
    _check_not_vtep(a, f"ips.{plane}", config)
    return str(a)


def _check_not_vtep(a: ipaddress.IPv4Address, path: str, config: NodeConfig):
    """ConfigError if ``a`` is the node's VTEP address: the VTEP's
    neighbours on the underlay would be taught a pod's MAC for it."""
    vtep = config.vtep.ip if config.vtep else None
    if vtep and a == ipaddress.IPv4Address(vtep):
        raise ConfigError(f"{path}: {a} is this node's VTEP address")


def _check_floating(addr: str, path: str, net, config: NodeConfig):
    """An address a plane may also send from is nobody else's by position:
    not the network's own, broadcast or gateway address, nor the node's
    VTEP (whose neighbours would be taught the pod's MAC for it); in IPv6
    not subnet6's network address (the subnet-router anycast address) nor
    gateway6. Any other IPv6 address is taken, a link-local one too (VRRPv3
    announces an fe80:: virtual address). Another pod's own address is
    refused when the pod is added (:meth:`dataplane.podlife.PodLife.add_pod`):
    the spec alone does not know it."""
    a = ipaddress.ip_address(addr)
    if not isinstance(a, ipaddress.IPv4Address):
        subnet6 = ipaddress.IPv6Network(net.subnet6) if net.subnet6 else None
        if subnet6 and a == subnet6.network_address:
            raise ConfigError(
                f"{path}: {a} is the network address of {subnet6} "
                "(its subnet-router anycast address)"
            )
        if net.gateway6 and a == ipaddress.IPv6Address(net.gateway6):
            raise ConfigError(f"{path}: {a} is the IPv6 gateway of network {net.name}")
        return
    subnet = ipaddress.IPv4Network(net.subnet)
    if a in (subnet.network_address, subnet.broadcast_address):
        raise ConfigError(f"{path}: {a} is the network or broadcast address of {subnet}")
    if net.gateway and a == ipaddress.IPv4Address(net.gateway):
        raise ConfigError(f"{path}: {a} is the gateway of network {net.name}")
    _check_not_vtep(a, path, config)


def host_ifname(pod: str, plane: str) -> str:
    """The host end's name for (pod, plane): 'dp' + 8 hex digits of a hash of
    both + the plane's first letters; 15 characters at most, always the same."""
    h = hashlib.sha256(f"{pod}\0{plane}".encode()).hexdigest()[:8]
    return f"dp{h}{plane[: IFNAMSIZ - 1 - 10]}"
