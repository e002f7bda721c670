"""SR-IOV VF planes: a host netdev handed to a pod, and given back exactly.

A plane of kind ``vf`` names a host network device, by interface name or
PCI address (``"device": "ens1f0v3"`` or ``"0000:03:02.1"``). The core does
not forward for it: the VF's traffic goes through the NIC's own switch.

take  1. the device's original state (name, ifindex, MAC, MTU, up, and with a
         PF: the VF's index, MAC, VLAN, spoof check and trust there) is
         written to the store (meta key ``vf:<node>:<device>``) before anything
         changes; a device another pod holds is refused (Busy)
      2. down, renamed to a temporary name (it never clashes with a name in
         the pod's namespace) and moved into the pod's namespace
      3. there renamed to the plane's interface name, MAC and MTU set, up,
         the address added, on the std plane the default route
      4. with a PF: the VF's MAC, VLAN, spoof check and trust set through
         the PF (netlink IFLA_VF_*)
give_back  the reverse, from the stored state, wherever the device is now
      (the pod's namespace, or this one after the namespace died); the
      record is cleared only once the device is back.
sweep  a holder whose pod is provably gone (no record of that pod in that
      namespace, and the namespace itself gone: deleted, or its path leads
      to another namespace now) without a delete reaching the service: its
      device is given back by the housekeeping each round and by a new add
      that asks for it. A holder whose namespace still exists is left
      alone. A device not back on this node yet keeps its record (the next
      round looks again), unless a device of that name or PCI address is
      there as another interface: the recorded one is gone for good and
      the record is cleared. The held devices are listed in the store
      (meta key ``vfs:<node>``) for the housekeeping to look at.

A VF bound to a userspace driver (vfio-pci: a PCI address with no network
device) is not moved: it is recorded as held and its PCI address returned
for the pod's DPDK application.
"""

import contextlib
import hashlib
import json
import os
import re
from typing import Dict, List, Optional

from .errors import AlreadyExists, Busy, ConfigError, DataplaneError, NotFound
from .logs import event, log, warning_event

PCI_RE = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
SYS_NET = "/sys/class/net"
SYS_PCI = "/sys/bus/pci/devices"


def meta_key(store, device: str) -> str:
    """Where the device's holder and original state are kept: per node (an
    etcd store is the cluster's, and device names repeat across nodes)."""
    return f"vf:{store.node or ''}:{device}"


def index_key(store) -> str:
    """Where the devices this node holds are listed (for the housekeeping:
    the store lists no meta keys)."""
    return f"vfs:{store.node or ''}"


def held_devices(store) -> List[str]:
    """The devices listed as held on this node (a listed device may have no
    record any more; records from before the list are not in it)."""
    v = store.get_meta(index_key(store))
    return json.loads(v) if v else []


def _list_held(store, device: str, held: bool):
    """``device`` in (``held``) or out of the list of held devices."""
    devices = set(held_devices(store))
    if (device in devices) != held:
        devices = devices | {device} if held else devices - {device}
        store.set_meta(index_key(store), json.dumps(sorted(devices)))


def temp_name(device: str) -> str:
    """A name no pod and no host interface has: 'dpvf' + 10 hex digits."""
    return "dpvf" + hashlib.sha256(device.encode()).hexdigest()[:10]


# ------------------------------------------------------------- discovery
def resolve(device: str):
    """(ifname or None, PCI address or None) of ``device`` in this
    namespace; ConfigError if there is no such device (the request names
    it: a bad request, not an unknown pod or namespace)."""
    if PCI_RE.fullmatch(device):
        d = os.path.join(SYS_PCI, device.lower())
        if not os.path.isdir(d):
            raise ConfigError(f"vf device {device}: no such PCI device")
        net = os.path.join(d, "net")
        names = sorted(os.listdir(net)) if os.path.isdir(net) else []
        return (names[0] if names else None), device.lower()
    if not os.path.isdir(os.path.join(SYS_NET, device)):
        raise ConfigError(f"vf device {device}: no such network interface on this node")
    return device, _pci_of(device)


def _held_as(store, device: str, pci: Optional[str], pod: str, plane: str):
    """(another name, its record) under which a pod other than ``pod``
    plane ``plane`` holds the device with PCI address ``pci``, or (None,
    None)."""
    if pci is not None:  # (a virtual device: its one name is its key)
        for d in held_devices(store):
            rec = holder(store, d) if d != device else None
            if rec and rec.get("pci") == pci and (rec["pod"], rec["plane"]) != (pod, plane):
                return d, rec
    return None, None


def _refuse_held(store, held: str, device: str, rec: dict):
    """Busy unless the pod that holds ``device`` under the name ``held``
    (its record ``rec``) is provably gone: its device is then given back."""
    still = free_if_gone(store, held, by="a new add")
    if still:
        known_as = "" if held == device else f" (as {held})"
        raise Busy(
            f"vf device {device} is held by pod {rec['pod']} plane {rec['plane']}{known_as}"
            + ("" if still is True else f": {still}")
        )


def refuse_own(device: str, names, pcis):
    """Busy if ``device`` (a name or a PCI address) is one of the
    dataplane's own: an interface in ``names`` (the uplink, pods' veths), a
    node service's tunnel tap, or a PCI device in ``pcis`` (a DPDK
    uplink's), however it is named; ConfigError for the node's loopback.
    Nothing is changed before."""
    try:
        name, pci = resolve(device)
    except ConfigError:  # not here (held, in a pod's namespace; or none): take says which
        name, pci = device, None
    # (a kernel interface is matched by name: a PCI function may have other
    # netdevs, a dual-port NIC's, that are not the dataplane's)
    own_pcis = {_full_pci(p) for p in pcis if p}
    if device in names or name in names or (pci is not None and pci in own_pcis):
        raise Busy(f"vf device {device} is the dataplane's own (uplink or a pod's veth)")
    from .podnet import is_tunnel_tap, netns_local

    if name is not None and is_tunnel_tap(name):
        raise Busy(
            f"vf device {device} is the dataplane's own (a node service's tunnel tap, "
            "which carries its uplink's VXLAN super-frames)"
        )

    if name is not None and netns_local(name):
        raise ConfigError(
            f"vf device {device} is bound to the node's namespace (a loopback, a "
            "bridge): no pod can have it"
        )


def _full_pci(addr: str) -> str:
    """A PCI address with its domain ("03:00.0": "0000:03:00.0"), in small
    letters, as sysfs names it."""
    addr = addr.lower()
    return addr if addr.count(":") == 2 else f"0000:{addr}"


def _pci_of(ifname: str) -> Optional[str]:
    link = os.path.join(SYS_NET, ifname, "device")
    if not os.path.islink(link):
        return None  # a virtual device (a stand-in)
    addr = os.path.basename(os.readlink(link))
    return addr if PCI_RE.fullmatch(addr) else None


def _pf_of(ifname: str):
    """(PF interface name, VF index) when ``ifname`` is an SR-IOV VF."""
    physfn = os.path.join(SYS_NET, ifname, "device", "physfn")
    if not os.path.islink(physfn):
        return None, None
    pf_dir = os.path.realpath(physfn)
    mine = os.path.realpath(os.path.join(SYS_NET, ifname, "device"))
    index = None
    for entry in os.listdir(pf_dir):
        if entry.startswith("virtfn") and os.path.realpath(os.path.join(pf_dir, entry)) == mine:
            index = int(entry[len("virtfn") :])
    pf_net = os.path.join(pf_dir, "net")
    pfs = sorted(os.listdir(pf_net)) if os.path.isdir(pf_net) else []
    return (pfs[0] if pfs and index is not None else None), index


def _vf_info(ipr, pf: str, index: int) -> dict:
    """The VF's settings at the PF (MAC, VLAN, spoof check, trust)."""
    link = ipr.get_links(ipr.link_lookup(ifname=pf)[0], ext_mask=1)[0]
    for vf in (link.get("IFLA_VFINFO_LIST") or {}).get_attrs("IFLA_VF_INFO"):
        if vf.get("IFLA_VF_MAC")["vf"] != index:
            continue
        return {
            "mac": vf.get("IFLA_VF_MAC")["mac"],
            "vlan": vf.get("IFLA_VF_VLAN")["vlan"],
            "spoofchk": bool(vf.get("IFLA_VF_SPOOFCHK")["setting"]),
            "trust": bool((vf.get("IFLA_VF_TRUST") or {"setting": 0})["setting"]),
        }
    return {}


# -------------------------------------------------------------- take
def take(
    store,
    pod: str,
    plane: str,
    device: str,
    netns: str,
    ifname: str,
    mac: str,
    ip_cidr: str,
    gateway: Optional[str],
    mtu: int,
    default_route: bool,
    opts: dict,
    ip6_cidr: Optional[str] = None,
    gateway6: Optional[str] = None,
) -> dict:
    """Hand ``device`` to pod ``pod`` as ``ifname`` (with ``ip6_cidr`` and
    ``gateway6`` on a dual-stack network); what the pod's application needs
    (pci, device). On failure the device is given back."""
    from .podlife import netns_identity
    from .podnet import _IFA_F_NODAD, _err_code, _ip6_on, _ipr, _open_netns

    key = meta_key(store, device)
    rec = holder(store, device)
    if rec and (rec["pod"], rec["plane"]) != (pod, plane):
        _refuse_held(store, device, device, rec)
    name, pci = resolve(device)
    # the same device under another spelling (its interface name, its PCI
    # address in capitals or not) held by another pod
    alias, rec = _held_as(store, device, pci, pod, plane)
    if alias is not None:
        _refuse_held(store, alias, device, rec)
        name, pci = resolve(device)  # given back: under its own name again
    pf, index = _pf_of(name) if name is not None else (None, None)
    at_pf = [k for k in ("vlan", "spoofchk", "trust") if opts.get(k) not in (None, 0)]
    if at_pf and name is None:
        raise ConfigError(
            f"interfaces.{plane}.{at_pf[0]}: not applied to vf device {device}, which is "
            "bound to a userspace driver: set it at the PF"
        )
    if at_pf and not pf:
        raise ConfigError(
            f"interfaces.{plane}.{at_pf[0]}: vf device {device} is not an SR-IOV VF (no "
            "PF found), so nothing would apply it"
        )
    if name is not None:
        with _ipr(netns) as pipr:
            if pipr.link_lookup(ifname=ifname):
                raise AlreadyExists(
                    f"interfaces.{plane}: interface {ifname} exists in the pod's namespace "
                    f"{netns} already"
                )
    rec = {"pod": pod, "plane": plane, "device": device, "netns": netns, "pci": pci}
    rec["netns_id"] = netns_identity(netns)  # tells the namespace from a later one
    _list_held(store, device, True)
    if name is None:  # bound to a userspace driver: the pod's DPDK uses it
        rec["dpdk"] = True
        store.set_meta(key, json.dumps(rec))
        return {"pci": pci, "device": device}
    with _ipr() as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        link = ipr.get_links(idx)[0]
        rec["orig"] = {
            "name": name,
            "index": idx,
            "mac": link.get("IFLA_ADDRESS"),
            "mtu": link.get("IFLA_MTU"),
            "up": bool(link["flags"] & 1),
            "pf": pf,
            "vf": index,
            "pf_vf": _vf_info(ipr, pf, index) if pf else None,
        }
    rec["ifname"] = ifname
    store.set_meta(key, json.dumps(rec))  # the way back, before any change
    event("vf: taking device", pod=pod, plane=plane, device=device, orig=rec["orig"])
    try:
        tmp = temp_name(device)
        nsfd = _open_netns(netns)
        try:
            with _ipr() as ipr:
                ipr.link("set", index=idx, state="down")
                ipr.link("set", index=idx, ifname=tmp)
                try:
                    ipr.link("set", index=idx, net_ns_fd=nsfd)
                except Exception as e:  # noqa: BLE001 - pyroute2's NetlinkError
                    code = _err_code(e)
                    if code is None:
                        raise
                    # (given back below: its name and state as they were)
                    raise ConfigError(
                        f"vf device {device}: cannot be moved into the pod's namespace: "
                        f"{os.strerror(code)}"
                    ) from None
            if pf:  # its VLAN and checks at the PF while it is down: no frame
                # leaves before them (the link-local's, the application's)
                _set_at_pf(
                    pf, index, mac, opts.get("vlan", 0), opts.get("spoofchk"), opts.get("trust")
                )
            with _ipr(netns) as pipr:
                pidx = pipr.link_lookup(ifname=tmp)[0]
                pipr.link("set", index=pidx, ifname=ifname, address=mac, mtu=mtu)
            if ip6_cidr:  # IPv6 on for it, its address kept while down
                _ip6_on(nsfd, ifname)
        finally:
            os.close(nsfd)
        with _ipr(netns) as pipr:
            pidx = pipr.link_lookup(ifname=ifname)[0]
            pipr.link("set", index=pidx, state="up")
            ip, _, plen = ip_cidr.partition("/")
            pipr.addr("add", index=pidx, address=ip, prefixlen=int(plen))
            if default_route and gateway:
                pipr.route("add", dst="0.0.0.0/0", gateway=gateway, oif=pidx)
            if ip6_cidr:
                ip6, _, plen6 = ip6_cidr.partition("/")
                pipr.addr("add", index=pidx, address=ip6, prefixlen=int(plen6), flags=_IFA_F_NODAD)
                if default_route and gateway6:
                    pipr.route("add", dst="::/0", gateway=gateway6, oif=pidx)
    except BaseException:
        try:
            give_back(store, device)
        except DataplaneError as e:  # pragma: no cover - reported with the cause
            event("vf: could not give the device back", device=device, error=str(e))
        raise
    return {"pci": pci, "device": device}


def _set_at_pf(pf, index, mac, vlan, spoofchk=None, trust=None):
    from .podnet import _ipr

    vf = {"vf": index, "mac": mac, "vlan": vlan}
    if spoofchk is not None:
        vf["spoofchk"] = int(spoofchk)
    if trust is not None:
        vf["trust"] = int(trust)
    with _ipr() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=pf)[0], vf=vf)


# ----------------------------------------------------------- give back
def holder(store, device: str) -> Optional[dict]:
    v = store.get_meta(meta_key(store, device))
    return json.loads(v) if v else None


def in_pod(store, device: str) -> bool:
    """Whether the held device is in its pod's namespace under its name."""
    from .podnet import _ipr

    rec = holder(store, device)
    if not rec or rec.get("dpdk"):
        return bool(rec)
    try:
        with _ipr(rec["netns"]) as pipr:
            return bool(pipr.link_lookup(ifname=rec["ifname"]))
    except Exception:  # noqa: BLE001 - the namespace is gone
        return False


def give_back(store, device: str) -> bool:
    """Put ``device`` back as it was recorded; False if nothing was held."""
    from .podnet import _ipr

    rec = holder(store, device)
    if not rec:
        return False
    if rec.get("dpdk") or "orig" not in rec:
        store.set_meta(meta_key(store, device), "")
        _list_held(store, device, False)
        return True
    orig, tmp = rec["orig"], temp_name(device)
    here = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            if not _netns_gone(rec):  # never out of another namespace at that path
                with _ipr(rec["netns"]) as pipr:
                    for name in (rec["ifname"], tmp):
                        found = pipr.link_lookup(ifname=name)
                        if found:
                            pipr.link("set", index=found[0], state="down")
                            pipr.link("set", index=found[0], ifname=tmp)
                            pipr.link("set", index=found[0], net_ns_fd=here)
                            break
        except Exception:  # noqa: BLE001 - the namespace is gone: it came back by itself
            pass
    finally:
        os.close(here)
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=tmp)
        if not found and _exists(ipr, orig["index"]):
            found = [orig["index"]]  # back by itself, under the pod's name
        if not found:
            raise NotFound(
                f"vf device {device}: not found in pod {rec['pod']}'s namespace nor on this "
                f"node (ifindex {orig['index']}); its record is kept"
            )
        idx = found[0]
        ipr.link("set", index=idx, state="down")
        ipr.link("set", index=idx, ifname=orig["name"], address=orig["mac"], mtu=orig["mtu"])
        if orig["up"]:
            ipr.link("set", index=idx, state="up")
    if orig.get("pf") and orig.get("pf_vf"):
        p = orig["pf_vf"]
        _set_at_pf(orig["pf"], orig["vf"], p["mac"], p["vlan"], p["spoofchk"], p["trust"])
    store.set_meta(meta_key(store, device), "")
    _list_held(store, device, False)
    event("vf: device given back", pod=rec["pod"], plane=rec["plane"], device=device)
    return True


def _exists(ipr, index) -> bool:
    try:
        return bool(ipr.get_links(index))
    except Exception:  # noqa: BLE001 - ENODEV
        return False


# ------------------------------------------------------ gone holders
#: {meta key: what was last logged of a gone holder's device not given back}
_said: Dict[str, str] = {}


def _netns_gone(rec) -> Optional[str]:
    """Why holder ``rec``'s namespace is not there any more, or None:
    nothing at its path, or another namespace than the one the device was
    moved into (records from before identities were kept: the path alone)."""
    from .podlife import netns_identity

    path = rec.get("netns")
    if not path:
        return None
    now = netns_identity(path)
    if now is None:
        return f"its namespace {path} is gone"
    if rec.get("netns_id") and now != rec["netns_id"]:
        return f"its namespace {path} is gone (the path leads to another namespace now)"
    return None


def holder_gone(store, rec) -> Optional[str]:
    """Why the pod of holder record ``rec`` is provably gone, or None: no
    record of that pod on this node in that namespace (a pod's own delete,
    the housekeeping or a replay gives its devices back while it has one),
    and its namespace gone (:func:`_netns_gone`). A VF bound to a userspace
    driver is judged alike: its pod's application ran in that namespace."""
    pod = store.pod(rec["pod"])
    if (
        pod is not None
        and (store.node is None or pod.get("node") in (None, store.node))
        and pod.get("netns") == rec.get("netns")
    ):
        return None
    return _netns_gone(rec)


def _recreated(rec, device: str) -> bool:
    """Whether ``device`` is on this node now as another interface than the
    recorded one (made again: its name or PCI address has a new ifindex)."""
    from .podnet import _ipr

    try:
        name, _ = resolve(device)
    except ConfigError:
        return False
    if name is None:
        return False
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=name)
    return bool(found) and found[0] != rec["orig"]["index"]


def free_if_gone(store, device: str, by: str):
    """Give ``device`` back if the pod holding it is provably gone
    (:func:`holder_gone`). None if it is not held (any more); True if its
    holder is not gone; else why it is still held (its holder is gone, the
    device is not back on this node yet)."""
    key = meta_key(store, device)
    rec = holder(store, device)
    if not rec:
        _said.pop(key, None)
        return None
    why = holder_gone(store, rec)
    if not why:
        _said.pop(key, None)
        return True
    try:
        give_back(store, device)
    except NotFound:
        if not _recreated(rec, device):
            still = (
                f"its pod is gone ({why}) and the device is not back on this node yet "
                f"(ifindex {rec['orig']['index']}); it is given back once it is"
            )
            if _said.get(key) != still:
                warning_event(
                    "vf: device of a gone pod not back yet",
                    pod=rec["pod"],
                    plane=rec["plane"],
                    device=device,
                    why=why,
                    by=by,
                )
            _said[key] = still
            return still
        store.set_meta(key, "")
        _list_held(store, device, False)
        _said.pop(key, None)
        warning_event(
            "vf: record of a gone pod's device cleared: the device is there as another "
            "interface now, the recorded one is gone",
            pod=rec["pod"],
            plane=rec["plane"],
            device=device,
            why=why,
            orig=rec["orig"],
            by=by,
        )
        return None
    _said.pop(key, None)
    warning_event(
        "vf: device of a gone pod given back",
        pod=rec["pod"],
        plane=rec["plane"],
        device=device,
        why=why,
        by=by,
    )
    return None


def sweep(store, lock=None) -> List[str]:
    """Give back the devices of this node whose holders are provably gone
    (:func:`free_if_gone`); the devices given back or whose records were
    cleared. Each is looked at without ``lock`` (the lock pod adds and
    deletes hold) and, if its holder is gone, freed under it, the record
    read again. One device's netlink error is logged (once while it lasts)
    and the others go on; the store's errors are raised."""
    lock = lock if lock is not None else contextlib.nullcontext()
    freed = []
    for device in held_devices(store):
        key = meta_key(store, device)
        rec = holder(store, device)
        if rec and not holder_gone(store, rec):
            _said.pop(key, None)
            continue
        try:
            with lock:
                if not holder(store, device):  # given back meanwhile, or listed only
                    _list_held(store, device, False)
                    continue
                if free_if_gone(store, device, by="housekeeping") is None:
                    freed.append(device)
        except DataplaneError:
            raise
        except Exception as err:  # noqa: BLE001 - one device's, not the node's
            why = f"{type(err).__name__}: {err}"
            if _said.get(key) != why:
                log.warning(
                    "housekeeping: vf device %s: %s; the next round tries again",
                    device,
                    why,
                    extra={"fields": {"device": device, "why": why}},
                )
            _said[key] = why
    return freed
