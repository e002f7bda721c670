"""What every store checks and derives the same way, so that they all refuse
the same things with the same words and hand out the same values."""

import hashlib
import ipaddress
from typing import Dict, Iterable, List, Optional, Tuple

from ..checks import VNI_MAX, check_vni
from ..errors import Busy, ConfigError, ResourceError

#: the node field of a static host's record (a host behind a kernel VTEP,
#: described to the cluster): 'static:' + the host's name
STATIC_NODE_PREFIX = "static:"

#: the states of a pod and of an endpoint: intent, done, being undone
STATES = ("pending", "ready", "deleting")


def check_state(state):
    if state not in STATES:
        raise ConfigError(f"state: {state!r} is not one of {', '.join(STATES)}")
    return state


def check_network(name, vni, subnet) -> ipaddress.IPv4Network:
    """The subnet of network ``name`` after checking it and its VNI."""
    try:
        net = ipaddress.IPv4Network(str(subnet))
    except ValueError:
        raise ConfigError(f"network {name}: subnet {subnet!r} is not an IPv4 subnet") from None
    try:
        check_vni(vni)
    except ConfigError:
        raise ConfigError(f"network {name}: vni {vni!r} out of range 1..{VNI_MAX}") from None
    return net


def reserved_of(subnet: ipaddress.IPv4Network, gateway) -> Dict[ipaddress.IPv4Address, str]:
    """The addresses of a network no pod is given: {address: what it is}."""
    out = {}
    if subnet.prefixlen < 31:
        out[subnet.network_address] = "network address"
        out[subnet.broadcast_address] = "broadcast address"
    if gateway:
        out[ipaddress.IPv4Address(str(gateway))] = "gateway"
    return out


def reserved_held(
    subnet: ipaddress.IPv4Network, gateway, allocations: Iterable[Tuple[str, str]], old=None
) -> Tuple[List[Tuple[str, str, str]], List[Tuple[str, str, str]]]:
    """Allocated addresses ((ip, pod) pairs) that ``subnet`` and ``gateway``
    reserve (network, broadcast, gateway): (those the change from the
    stored record ``old`` - a dict with subnet and gateway, None if there
    is none - makes reserved, those it had reserved already); each as
    (what, ip, pod)."""
    now = reserved_of(subnet, gateway)
    before = (
        reserved_of(ipaddress.IPv4Network(old["subnet"]), old.get("gateway"))
        if old is not None
        else {}
    )
    new, kept = [], []
    for ip, pod in allocations:
        a = ipaddress.IPv4Address(str(ip))
        if a in now:
            (kept if now[a] == before.get(a) else new).append((now[a], str(a), pod))
    return sorted(new), sorted(kept)


def reserved_taken(name, hits) -> ConfigError:
    """The error for a network change that makes pods' addresses its
    gateway, network or broadcast address (``hits`` from
    :func:`reserved_held`): a pod keeps its address, so it names them."""
    pods = sorted({pod for _, _, pod in hits})
    return ConfigError(
        f"network {name}: "
        + ", ".join(f"the {what} {ip} is the address of pod {pod}" for what, ip, pod in hits)
        + "; a pod keeps its address: give the network another "
        + ("gateway" if all(w == "gateway" for w, _, _ in hits) else "subnet")
        + f", or delete the pod{'s' * (len(pods) > 1)} first ("
        + ", ".join(f"'dataplane pod del {p}'" for p in pods)
        + ")"
    )


def subnet6_change_refused(name, old, subnet, subnet6, allocations) -> Optional[Busy]:
    """The error for a change of network ``name`` from the stored record
    ``old`` (None if there is none) to IPv4 ``subnet`` (an IPv4Network) and
    IPv6 ``subnet6`` that would change its pods' IPv6 addresses while pods
    hold addresses on it (``allocations``: (ip, pod) pairs), or None. A
    pod's IPv6 address is its IPv4 one's host part in subnet6, counted from
    the IPv4 subnet's first address: subnet6 may not be added, moved or
    dropped under them, nor the IPv4 subnet's first address moved."""
    if not allocations or old is None:
        return None
    before6 = old.get("subnet6")
    first = ipaddress.IPv4Network(old["subnet"]).network_address
    if before6 != subnet6:
        what = f"subnet6 {before6 or 'none'} would become {subnet6 or 'none'}"
        keep = "keep subnet6"
    elif subnet6 and subnet.network_address != first:
        what = (
            f"subnet {old['subnet']} would become {subnet}, whose first address the IPv6 "
            f"addresses in {subnet6} are counted from,"
        )
        keep = "keep the subnet's first address"
    else:
        return None
    pods = sorted({pod for _, pod in allocations})
    return Busy(
        f"network {name}: {what} with {len(pods)} pod{'s' * (len(pods) > 1)} on it "
        f"({', '.join(pods[:5])}{', ...' if len(pods) > 5 else ''}): their IPv6 addresses "
        f"would change under them; {keep}, or delete the pods first"
    )


def ip_request(network, subnet_cidr, gateway, fixed, avoid=()):
    """Check the arguments of ``allocate_ip``: returns (subnet, reserved
    addresses, the fixed address asked for or None). The addresses of
    ``avoid`` in the subnet are reserved too, after the fixed address is
    checked: a pod may still ask for one."""
    try:
        subnet = ipaddress.IPv4Network(str(subnet_cidr))
    except ValueError:
        raise ConfigError(
            f"network {network}: subnet {subnet_cidr!r} is not an IPv4 subnet"
        ) from None
    reserved = set()
    if subnet.prefixlen < 31:
        reserved |= {subnet.network_address, subnet.broadcast_address}
    if gateway:
        reserved.add(ipaddress.IPv4Address(str(gateway)))
    want = None
    if fixed is not None:
        try:
            want = ipaddress.IPv4Address(str(fixed).split("/", 1)[0])
        except ValueError:
            raise ConfigError(
                f"ips: {fixed!r} for network {network} is not an IPv4 address"
            ) from None
        if want not in subnet:
            raise ConfigError(f"ips: {want} is outside network {network}'s subnet {subnet}")
        if want in reserved:
            what = (
                "gateway"
                if gateway and want == ipaddress.IPv4Address(str(gateway))
                else "network or broadcast"
            )
            raise ConfigError(f"ips: {want} is the {what} address of network {network}")
    return subnet, reserved | _avoided(subnet, avoid), want


def next_free(subnet, taken, last: Optional[str]) -> Optional[int]:
    """The address (an int) a new allocation gets on a network of ``subnet``:
    the first one not in ``taken`` (ints: allocated or reserved) after
    ``last``, the last address handed out on the network, going round to the
    start of the subnet after its end, so that a freed address is given again
    only once the rest of the subnet has been used. From the start of the
    subnet (the lowest free one) when there is no ``last`` (nothing handed
    out yet, or a store written before the position was kept) or it is
    outside the subnet (the subnet was changed). None when nothing is free."""
    lo, hi = int(subnet.network_address), int(subnet.broadcast_address)
    start = lo
    if last is not None:
        try:
            pos = int(ipaddress.IPv4Address(str(last)))
        except ValueError:
            pos = None
        if pos is not None and lo <= pos < hi:
            start = pos + 1
    for first, end in ((start, hi + 1), (lo, start)):
        for cand in range(first, end):
            if cand not in taken:
                return cand
    return None


def _avoided(subnet, avoid) -> set:
    """The addresses of ``avoid`` (strings) inside ``subnet``, to keep out of
    dynamic allocation."""
    out = set()
    for a in avoid:
        try:
            ip = ipaddress.IPv4Address(str(a))
        except ValueError:
            continue  # an IPv6 floating address: not the allocator's
        if ip in subnet:
            out.add(ip)
    return out


def host_ifname_taken(host_ifname, pod, plane) -> Busy:
    """Another pod's plane has the host interface name a new endpoint was
    given (derived from its pod's name and plane: two names of one hash)."""
    return Busy(
        f"host interface {host_ifname} belongs to pod {pod} plane {plane} already "
        "(host interface names are derived from the pod's name and plane: give "
        "the pod another name)"
    )


def no_free_address(network, subnet, n_taken) -> ResourceError:
    return ResourceError(
        f"network {network}: no free address left in {subnet} ({n_taken} allocated or reserved)"
    )


def derive_mac(pod: str, plane: str, i: int) -> str:
    """The ``i``-th candidate MAC of (pod, plane): locally administered,
    unicast, 02:xx:xx:xx:xx:xx."""
    h = hashlib.sha256(f"{pod}\0{plane}\0{i}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in h[:5])


def mac_taken(plane, mac, owner_pod, owner_plane) -> ConfigError:
    """The error for a requested MAC that another (pod, plane) has."""
    return ConfigError(
        f"macs.{plane}: {mac} is the MAC of pod {owner_pod} plane {owner_plane} already"
    )


def network_in_use(name: str, endpoints: Iterable[Dict], alloc_pods: Iterable[str]) -> Busy:
    """Busy for network ``name``'s record, which ``endpoints`` (dicts with
    pod and node) and the pods ``alloc_pods`` hold addresses of are on:
    whose, the first five named."""
    said: Dict[str, str] = {}  # pod or host name -> how it is named, in order
    for e in endpoints:
        node = e.get("node") or ""
        if node.startswith(STATIC_NODE_PREFIX):
            said.setdefault(e["pod"], f"host {e['pod']}")
        else:
            said.setdefault(e["pod"], f"pod {e['pod']}" + (f" of node {node}" if node else ""))
    for pod in alloc_pods:  # an address without an endpoint: an add under way
        said.setdefault(pod, f"pod {pod}")
    whom = list(said.values())
    more = f" and {len(whom) - 5} more" if len(whom) > 5 else ""
    return Busy(
        f"network {name} is in use by {', '.join(whom[:5])}{more}: delete them first "
        "('dataplane pod del', 'dataplane host del')"
    )
