"""What the etcd store hands out, as bodies of one transaction each
(``EtcdGateway.atomic`` runs them again on fresh reads when another writer
got there first): addresses, MACs, and the fixed address of a static host.

An address is the first free one after the last handed out on its
network, kept for the cluster in ``P/lastip/<network>`` (a fixed address
does not move it); see :func:`dataplane.store.common.next_free`. Two nodes
that pick the same free address cannot both get it: the address key
``P/alloc/<network>/<ip>`` is created only if it is still absent
(``create_revision == 0``), together with the pod's
``P/podalloc/<pod>/<network>``, so a pod never gets two addresses on one
network either. The position key is read in the transaction too, so its
commit requires it unchanged: of two nodes allocating on one network at
once only one commits, whatever addresses they picked, and the other reads
again and goes on after the winner's address (allocations on one network
take turns; on different networks they do not meet). A MAC, derived or
asked for by a pod's spec, is reserved the same way (``P/macs/<mac>``),
for one (pod, plane) in the whole cluster.
"""

import ipaddress
import time
from typing import Any, Dict, Optional

from ..errors import AlreadyExists, ConfigError, NotFound, ResourceError
from .common import (
    STATIC_NODE_PREFIX,
    derive_mac,
    ip_request,
    mac_taken,
    next_free,
    no_free_address,
)
from .etcd_keys import EtcdLayout, last_part
from .etcdgw import Txn

#: the node name of a static host's endpoint: this prefix and its name


def take_address(
    tx: Txn,
    keys: EtcdLayout,
    network: str,
    subnet,
    reserved,
    want: Optional[ipaddress.IPv4Address],
    pod: str,
) -> str:
    """The address ``pod`` has on ``network``, or ``want``, or the first
    free one of ``subnet`` not ``reserved`` after the last one handed out
    on ``network`` (recorded as the new last one)."""
    pkey = keys.key("podalloc", pod, network)
    mine = tx.get(pkey)
    if mine is not None:
        if want is not None and str(want) != mine["ip"]:
            raise ConfigError(
                f"ips: pod {pod} has address {mine['ip']} on network {network} already, not {want}"
            )
        return mine["ip"]
    if want is not None:
        owner = tx.get(keys.key("alloc", network, str(want)))
        if owner is not None:
            raise ConfigError(f"ips: {want} on network {network} is taken by pod {owner['pod']}")
        ip = str(want)
    else:
        # compared at commit: a node that allocated on the network
        # meanwhile makes this one read again and go on after its address
        lkey = keys.key("lastip", network)
        last = tx.get(lkey)
        taken = set()
        for k, _ in tx.items(keys.key("alloc", network, ""), guard=False, keys_only=True):
            try:
                taken.add(int(ipaddress.IPv4Address(last_part(k))))
            except ValueError:  # pragma: no cover - not written by us
                pass
        taken |= {int(a) for a in reserved}
        cand = next_free(subnet, taken, last["ip"] if last else None)
        if cand is None:
            lo, hi = int(subnet.network_address), int(subnet.broadcast_address)
            raise no_free_address(network, subnet, len({t for t in taken if lo <= t <= hi}))
        ip = str(ipaddress.IPv4Address(cand))
        tx.absent(keys.key("alloc", network, ip))
        tx.put(lkey, {"ip": ip})
    tx.put(
        keys.key("alloc", network, ip),
        {"network": network, "ip": ip, "pod": pod, "created": time.time()},
    )
    tx.put(pkey, {"ip": ip})
    return ip


def give_back_addresses(tx: Txn, keys: EtcdLayout, pod: str) -> int:
    """Remove every address of ``pod``; how many it had."""
    allocs = tx.items(keys.key("podalloc", pod, ""))
    for k, v in allocs:
        akey = keys.key("alloc", last_part(k), v["ip"])
        owner = tx.get(akey)
        if owner is not None and owner["pod"] == pod:
            tx.delete(akey)
    if allocs:
        tx.delete(keys.key("podalloc", pod, ""), prefix=True)
    return len(allocs)


def take_mac(tx: Txn, keys: EtcdLayout, pod: str, plane: str) -> str:
    """The first derived MAC of (pod, plane) that no other pair holds, reserved
    for the pair (an older reservation of it given back)."""
    rkey = keys.key("podmacs", pod, plane)
    reserved = tx.get(rkey)
    for i in range(1 << 16):
        mac = derive_mac(pod, plane, i)
        owner = tx.get(keys.key("macs", mac))
        if owner is None or (owner["pod"], owner["plane"]) == (pod, plane):
            break
    else:  # pragma: no cover
        raise ResourceError(f"no free MAC for pod {pod} plane {plane}")
    if reserved is not None and reserved["mac"] == mac and owner is not None:
        return mac  # nothing to write
    if reserved is not None and reserved["mac"] != mac:
        # an older reservation of the pair (a lower derivation was taken
        # then): give it back unless the pair's endpoint uses it
        ep = tx.get(keys.key("endpoints", pod, plane))
        if ep is None or ep["mac"] != reserved["mac"]:
            keys.drop_mac(tx, reserved["mac"], pod, plane)
    tx.put(keys.key("macs", mac), {"pod": pod, "plane": plane})
    tx.put(rkey, {"mac": mac})
    return mac


def reserve_mac(tx: Txn, keys: EtcdLayout, pod: str, plane: str, mac: str) -> str:
    """``mac`` (asked for by the pod's spec) reserved for (pod, plane) in the
    whole cluster, as ``take_mac`` reserves a derived one (an older
    reservation of the pair given back); ConfigError if another pair holds it."""
    mkey = keys.key("macs", mac)
    owner = tx.get(mkey)
    if owner is not None and (owner["pod"], owner["plane"]) != (pod, plane):
        raise mac_taken(plane, mac, owner["pod"], owner["plane"])
    rkey = keys.key("podmacs", pod, plane)
    reserved = tx.get(rkey)
    if reserved is not None and reserved["mac"] != mac:
        ep = tx.get(keys.key("endpoints", pod, plane))
        if ep is None or ep["mac"] != reserved["mac"]:
            keys.drop_mac(tx, reserved["mac"], pod, plane)
    if owner is None:
        tx.put(mkey, {"pod": pod, "plane": plane})
    if reserved is None or reserved["mac"] != mac:
        tx.put(rkey, {"mac": mac})
    return mac


def record_static_host(
    tx: Txn, keys: EtcdLayout, name: str, network: str, mac: str, ip: str, vtep: str
) -> Dict[str, Any]:
    """The endpoint of static host ``name`` (checked ``mac`` and ``vtep``),
    with address ``ip`` on ``network`` allocated to it."""
    net = tx.get(keys.key("networks", network))
    if net is None:
        raise NotFound(f"static endpoint {name}: network {network} is not recorded")
    _, _, want = ip_request(network, net["subnet"], net["gateway"], ip)
    if tx.get(keys.key("pods", name)) is not None:
        raise AlreadyExists(f"static endpoint {name}: a pod of that name exists")
    plane = net["plane"]
    old = tx.get(keys.key("endpoints", name, plane))
    if old is not None and old.get("node") != STATIC_NODE_PREFIX + name:
        raise AlreadyExists(
            f"static endpoint {name}: pod {name} has an endpoint on plane {plane} already"
        )
    if old is not None and old["network"] != network:
        raise AlreadyExists(
            f"static endpoint {name}: it has network "
            f"{old['network']} on plane {plane} already (use "
            "another name for a second network of that plane)"
        )
    akey = keys.key("alloc", network, str(want))
    owner = tx.get(akey)
    if owner is not None and owner["pod"] != name:
        raise ConfigError(f"ips: {want} on network {network} is taken by pod {owner['pod']}")
    pkey = keys.key("podalloc", name, network)
    mine = tx.get(pkey)
    if mine is not None and mine["ip"] != str(want):
        okey = keys.key("alloc", network, mine["ip"])
        prev = tx.get(okey)
        if prev is not None and prev["pod"] == name:
            tx.delete(okey)
    if owner is None:
        tx.put(akey, {"network": network, "ip": str(want), "pod": name, "created": time.time()})
        tx.put(pkey, {"ip": str(want)})
    return keys.write_endpoint(
        tx,
        {
            "pod": name,
            "plane": plane,
            "network": network,
            "ifname": None,
            "host_ifname": None,
            "mac": mac,
            "ip": str(want),
            "node": STATIC_NODE_PREFIX + name,
            "vtep": vtep,
            "state": "ready",
        },
        strict_mac=True,
    )
