"""CNI attachments: one plane of one container, the node service's side of
the ``dataplane-cni`` plugin (:mod:`dataplane.cni`).

An attachment is keyed by (container ID, interface name), as the CNI
specification keys them. It is kept as a one-plane pod named
``cni-<hash of both>`` (see :func:`attachment_name`), so it is
plumbed, stored, replayed after a restart and shown by ``dataplane pod
list`` exactly as any pod; the CNI identity (network configuration name,
Kubernetes namespace and pod, interface kind) is the store's attachment
record of the same name (``StateStore.put_attachment``). The routes (:func:`attachment_routes`)::

    POST   /v1/attachments          ADD   {container_id, ifname, netns, network, ...}
    DELETE /v1/attachments          DEL   {container_id, ifname, cni_network}: idempotent
    POST   /v1/attachments/check    CHECK {container_id, ifname, netns}
    POST   /v1/attachments/gc       GC    {cni_network, valid: [{container_id, ifname}]}
    GET    /v1/attachments          the attachments of this node
    GET    /v1/attachments/ready    STATUS: can this node take an ADD now?
"""

import hashlib
import re
import socket
import threading
import time
from contextlib import contextmanager
from typing import Dict, List, Optional

from .checks import POD_RESERVED_IFNAMES, check_ifname
from .errors import AlreadyExists, ConfigError, DataplaneError, NotFound
from .logs import log
from .store import reach

#: the pod-name prefix of attachments
PREFIX = "cni-"
#: interface kinds a network configuration may ask for
KINDS = ("veth", "memif", "vhost-user", "vf")
#: what the CNI specification allows in a container ID
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
_TEXT_KEYS = ("cni_network", "k8s_namespace", "k8s_pod")


def attachment_name(container_id: str, ifname: str) -> str:
    """The pod name an attachment is kept under: short (a memif or
    vhost-user plane's socket path is made from it), the same for the same
    key."""
    h = hashlib.sha256(f"{container_id}\0{ifname}".encode()).hexdigest()[:16]
    return f"{PREFIX}{h}"


def check_container_id(value, path: str = "container_id") -> str:
    if not isinstance(value, str) or not _CONTAINER_ID.match(value) or len(value) > 128:
        raise ConfigError(
            f"{path}: {value!r} is not a container ID (1..128 of letters, digits, "
            "'_', '.', '-', starting with a letter or digit)"
        )
    return value


def _key(body) -> tuple:
    cid = check_container_id(body.get("container_id"))
    ifname = check_ifname(body.get("ifname"), "ifname", reserved=POD_RESERVED_IFNAMES)
    return cid, ifname


def _kind_entry(kind: str, ifname: str, body: dict) -> dict:
    """A plane's ``interfaces`` entry for a kind other than veth: the kind
    and its ``options`` (a VF's ``device``: the VF's host interface or PCI
    address, e.g. the ``deviceID`` a device plugin gave); a clear refusal
    when this service's pod specs do not know interface kinds."""
    try:
        from . import fastif  # noqa: F401 - the kinds' plumbing
    except ImportError:
        raise ConfigError(
            f"kind: this node service attaches veth interfaces only, not {kind}"
        ) from None
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"options: {options!r} is not a mapping of the kind's options")
    if "kind" in options:
        raise ConfigError(f"options.kind: the kind is {kind!r} (kind), not an option")
    entry = {**options, "kind": kind}
    if kind == "vf":
        entry["ifname"] = ifname
        if body.get("device"):
            entry.setdefault("device", body["device"])
    return entry


#: what a write refused because the store does not answer leaves
NOT_ATTACHED = "nothing was attached; try again when it answers"
NOT_DETACHED = "the attachment stays until a DEL or GC gets through"


class Attachments:
    """The attachments of node ``config.node``, made by ``pods``
    (:class:`dataplane.podlife.PodLife`) in ``store``."""

    def __init__(self, config, store, pods, engine_running=lambda: True):
        self.config = config
        self.store = store
        self.pods = pods
        self.engine_running = engine_running
        # when each ADD of this process ended, by attachment: a GC judges
        # only what was there, done, when it began
        self.added_at: Dict[str, float] = {}
        # the ADDs and DELs of each attachment, in the order they came
        self._turn = threading.Condition()
        self._queues: Dict[str, List[object]] = {}

    @contextmanager
    def _in_turn(self, name: str):
        """A block that the ADDs and DELs of attachment ``name`` run in one
        at a time, in the order they came (the pods' lock wakes its waiters
        in no order). A plugin that gave up waiting for an ADD sends a DEL
        to undo it, then the runtime its ADD again: the DEL must come after
        the first ADD, and the second ADD after the DEL."""
        me = object()
        with self._turn:
            queue = self._queues.setdefault(name, [])
            queue.append(me)
            self._turn.wait_for(lambda: queue[0] is me)
        try:
            yield
        finally:
            with self._turn:
                queue.pop(0)
                if not queue:
                    del self._queues[name]
                self._turn.notify_all()

    # ---------------------------------------------------------------- ADD
    def add(self, body: dict) -> dict:
        """Attach one plane of a container: its network namespace ``netns``,
        its interface ``ifname`` on network ``network`` (its plane, if
        given, must be the network's); optional ``kind``, fixed ``ip`` and
        ``mac``. AlreadyExists if (container_id, ifname) is attached."""
        cid, ifname = _key(body)
        netns = body.get("netns")
        network = body.get("network")
        if not isinstance(network, str) or not network:
            raise ConfigError(f"network: {network!r} is not a network name")
        net = next((n for n in self.config.networks if n.name == network), None)
        if net is None:
            known = ", ".join(n.name for n in self.config.networks)
            raise ConfigError(f"network: {network!r} is not a network of this node ({known})")
        plane = body.get("plane") or net.plane
        if plane != net.plane:
            raise ConfigError(f"plane: network {network} belongs to plane {net.plane}, not {plane}")
        kind = body.get("kind") or "veth"
        if kind not in KINDS:
            raise ConfigError(f"kind: {kind!r} is not an interface kind ({', '.join(KINDS)})")
        record = {"container_id": cid, "ifname": ifname, "kind": kind}
        for k in _TEXT_KEYS:
            v = body.get(k)
            if v is not None and (not isinstance(v, str) or len(v) > 253):
                raise ConfigError(f"{k}: {v!r} is not a name")
            record[k] = v
        spec = {
            "pod_type": "ct",
            "network_plane": [plane],
            "networks": {plane: network},
            "interfaces": {plane: ifname},
        }
        for k, field in (("ip", "ips"), ("mac", "macs")):
            if body.get(k):
                spec[field] = {plane: body[k]}
        dhcp = body.get("dhcp_server", False)
        if not isinstance(dhcp, bool):
            raise ConfigError(f"dhcp_server: {dhcp!r} is not true or false")
        if dhcp:  # a DHCP server or relay container: its answers pass the guard
            spec["dhcp_server"] = [plane]
        if kind != "veth":
            spec["interfaces"][plane] = _kind_entry(kind, ifname, body)
        elif body.get("options"):
            raise ConfigError(f"options: {body['options']!r}: kind veth takes no options")
        name = attachment_name(cid, ifname)
        # under the pods' lock from the check to the pod: a DEL or GC of the
        # same attachment (which takes it too) cannot fall between its record
        # and its pod, nor a failed ADD's clean-up remove another ADD's record
        with self._in_turn(name), reach.required(self.store, NOT_ATTACHED), self.pods.txn:
            held = self.store.attachment(name)
            if held is not None:
                pod = self.store.pod(name)
                if pod and not self.pods.leftover(pod):
                    owner = held.get("cni_network")
                    by = f" by network configuration {owner}" if owner else ""
                    raise AlreadyExists(
                        f"container {cid} interface {ifname} is attached already{by} "
                        "(DEL it first; an ADD is not repeated for the same container and interface)"
                    )
                # its pod went with its namespace, or is what a failed ADD left
                # (the pod add removes that)
                self.store.delete_attachment(name)
            self.store.put_attachment(name, record, node=self.config.node)  # intent first
            try:
                # the answer is made of what is read before the pod's add
                # and what that add returns: once it is done, the container
                # is attached, and no failed read may say otherwise
                stored = self.store.attachment(name)
                pod = self.pods.add_pod(name, netns, spec)
            except (ConfigError, AlreadyExists) as e:
                msg = self._in_own_words(str(e), plane)  # while the record names it
                self.store.delete_attachment(name)
                raise type(e)(msg) from None
            except BaseException:
                self.store.delete_attachment(name)
                raise
            # a GC that began while this ADD ran judges it by this time
            self.added_at[name] = time.time()
            return self._shown(name, stored, pod)

    def _in_own_words(self, msg: str, plane: str) -> str:
        """A pod-spec error as the caller wrote the request: ``ip``,
        ``mac`` and ``options`` instead of the one-plane pod's ``ips.std``,
        ``macs.std``, ``interfaces.std``; an attachment named by its
        container and interface instead of its pod name."""
        for field, own in (("ips", "ip"), ("macs", "mac"), ("interfaces", "options")):
            m = re.match(rf"{field}(\.{re.escape(plane)})?(?=[:.])", msg)
            if m:
                msg = own + msg[m.end() :]
                break

        def who(m):
            rec = self.store.attachment(m.group(1))
            if rec is None:
                return m.group(0)
            return f"container {rec['container_id']} interface {rec['ifname']}"

        msg = msg.replace("in the pod's namespace", "in the container's namespace")
        return re.sub(r"\bpod (cni-[0-9a-f]{16})\b", who, msg)

    # ---------------------------------------------------------------- DEL
    def delete(self, body: dict) -> dict:
        """Detach (container_id, ifname); nothing to do is a success - also
        for a key an ADD refuses (an interface name such as ``lo``, one
        longer than the kernel takes, a container ID that is not one): that
        ADD made nothing, and the CNI specification has its DEL succeed.
        With ``cni_network`` (the network configuration's name) an
        attachment another configuration made is left alone, and the DEL
        succeeds: the runtime DELs after an ADD refused because another
        configuration has that interface, and that one stays attached.
        Without it (a plugin from before the field), whatever is attached."""
        given = body.get("container_id"), body.get("ifname")
        cni_network = body.get("cni_network")
        if cni_network is not None and (not isinstance(cni_network, str) or not cni_network):
            raise ConfigError(f"cni_network: {cni_network!r} is not a network configuration name")
        try:
            cid, ifname = _key(body)
        except ConfigError:
            if all(isinstance(v, str) and v for v in given):
                return {"deleted": None}  # never attached: nothing to delete
            raise  # a key not given at all: the request's fault
        name = attachment_name(cid, ifname)
        with self._in_turn(name), reach.required(self.store, NOT_DETACHED), self.pods.txn:
            if cni_network is not None:
                rec = self.store.attachment(name)
                owner = rec.get("cni_network") if rec is not None else None
                if owner and owner != cni_network:  # not this configuration's to delete
                    return {"deleted": None, "owner": owner}
            return {"deleted": name if self._remove(name) else None}

    def _remove(self, name: str, older_than: Optional[float] = None) -> bool:
        """Detach attachment ``name``'s pod and forget both; False if
        neither was recorded, or (``older_than``) if the attachment now
        recorded under that name was made since then (an ADD that came
        while a GC waited)."""
        with self.pods.txn:  # not between another request's record and its pod
            if older_than is not None:
                # made, or its ADD ended, since: not the caller's to judge
                # (an ADD holds txn throughout, so one that ran as the
                # caller began has ended by now)
                if self.added_at.get(name, 0.0) >= older_than:
                    return False
                rec = self.store.attachment(name)
                if rec is not None and rec.get("created", 0) >= older_than:
                    return False
            self.added_at.pop(name, None)
            pod = self.store.pod(name)
            if pod:
                try:
                    self.pods.del_pod(name)
                except NotFound:  # deleted meanwhile
                    pass
            return self.store.delete_attachment(name) or bool(pod)

    # ---------------------------------------------------------------- GC
    def gc(self, body: dict) -> dict:
        """Detach every attachment of network configuration ``cni_network``
        that ``valid`` (a list of {container_id, ifname}) does not name."""
        cni_network = body.get("cni_network")
        if not isinstance(cni_network, str) or not cni_network:
            raise ConfigError(f"cni_network: {cni_network!r} is not a network configuration name")
        valid = body.get("valid")
        if not isinstance(valid, list):
            raise ConfigError("valid: must be a list of {container_id, ifname}")
        keep = set()
        for i, v in enumerate(valid):
            if not isinstance(v, dict):
                raise ConfigError(f"valid[{i}]: {v!r} is not {{container_id, ifname}}")
            cid = check_container_id(v.get("container_id"), f"valid[{i}].container_id")
            ifname = v.get("ifname")
            if not isinstance(ifname, str) or not ifname:
                raise ConfigError(f"valid[{i}].ifname: {ifname!r} is not an interface name")
            keep.add(attachment_name(cid, ifname))
        gone, failed = [], []
        since = time.time()  # what is recorded from now on is not the runtime's to judge
        with reach.required(self.store, NOT_DETACHED):
            listed = self.store.attachments(node=self.config.node)
            # the ADDs' end times of attachments gone another way (a pod
            # delete, a node's removal): no longer needed
            for name in set(self.added_at) - {a["name"] for a in listed}:
                self.added_at.pop(name, None)
            for a in listed:
                if a.get("cni_network") != cni_network or a["name"] in keep:
                    continue
                if a["name"] in self.pods.adding:  # its ADD runs now: not stale
                    continue
                try:  # one that fails leaves the others to be removed (CNI 1.1 GC)
                    if self._remove(a["name"], older_than=since):
                        gone.append(a["name"])
                except DataplaneError as e:
                    log.warning("GC: attachment %s not removed: %s", a["name"], e)
                    failed.append(e)
        if failed:
            raise failed[0]
        return {"deleted": gone}

    # ------------------------------------------------------------- reads
    def info(self, name: str) -> dict:
        """An attachment: its identity, address, MAC, network settings, the
        host end and the core's port."""
        rec = self.store.attachment(name)
        pod = self.store.pod(name)
        if rec is None or not pod:
            raise NotFound(f"{name} is not an attachment of this node")
        return self._shown(name, rec, self.pods.pod_info(name))

    def _shown(self, name: str, rec: dict, pod: dict) -> dict:
        """Attachment ``name`` as the API shows it, from its record ``rec``
        and its pod as the pods' API shows it (``pod``: netns, state,
        planes)."""
        planes = pod["planes"]
        if not planes:  # its ADD runs now (or died): no endpoint recorded yet
            return {
                "name": name,
                **rec,
                "netns": pod["netns"],
                "state": pod["state"],
                "plane": None,
                "network": None,
                "mac": None,
                "ip": None,
                "host_ifname": None,
                "port": None,
            }
        p = planes[0]
        net = self.config.network(p["network"])
        ip6 = net.ip6_of(p["ip"])
        out = {
            "name": name,
            **rec,
            "netns": pod["netns"],
            "state": pod["state"],
            "plane": p["plane"],
            "network": p["network"],
            "mac": p["mac"],
            "ip": p["ip"],
            "prefixlen": net.prefixlen,
            "gateway": net.gateway,
            "ip6": ip6,
            "prefixlen6": net.prefixlen6,
            "gateway6": net.gateway6 if ip6 else None,  # a route to it needs the address
            "mtu": net.mtu,
            "default_route": p["plane"] == "std" and rec.get("kind", "veth") in ("veth", "vf"),
            "host_ifname": p.get("host_ifname"),
            "host_mac": _host_mac(p.get("host_ifname")),
            "port": p.get("port"),
        }
        # what the pod's application needs: a memif or vhost-user socket, a VF's PCI address
        socket_path = p.get("socket")
        pci = p.get("pci")
        if socket_path:
            out["socket_path"] = socket_path
        if pci:
            out["pci_address"] = pci
        return out

    def list(self) -> List[dict]:
        """Every attachment recorded on this node. One whose pod is gone (its
        namespace went while the service was down, or the service died
        during its ADD) is listed with state ``gone`` and what its record
        says, until a DEL or GC forgets it. A store that does not answer
        (within ``reach.VIEW_WAIT_S`` a read): StoreDown, at once, saying
        so."""
        with reach.needed(
            self.store,
            "the CNI attachments are recorded in it, so none can be listed; the pods' planes "
            "forward on ('dataplane pod list' shows the pods this node runs)",
        ):
            return self._list()

    def _list(self) -> List[dict]:
        out = []
        for rec in self.store.attachments(node=self.config.node):
            try:
                out.append(self.info(rec["name"]))
            except NotFound:
                out.append(
                    {
                        **rec,  # its name among what the record says
                        "state": "gone",
                        "network": None,
                        "plane": None,
                        "ip": None,
                        "mac": None,
                        "port": None,
                    }
                )
        return out

    def ready(self) -> dict:
        """Whether an ADD can be taken now (the core forwards)."""
        if not self.engine_running():
            return {"ready": False, "reason": "the forwarding core is not running"}
        # those whose pod is there (what list() shows, but gone ones); a
        # store that does not answer: StoreDown at once, saying so
        with reach.needed(self.store, "no ADD is taken until it does (it records each first)"):
            n = sum(
                1
                for rec in self.store.attachments(node=self.config.node)
                if self.store.pod(rec["name"])
            )
        return {"ready": True, "attachments": n}

    # -------------------------------------------------------------- CHECK
    def check(self, body: dict) -> dict:
        """The attachment as recorded and as found (interfaces, address,
        routes, the core's port); ``problems`` lists every difference."""
        cid, ifname = _key(body)
        name = attachment_name(cid, ifname)
        try:
            a = self.info(name)
        except NotFound:
            rec = self.store.attachment(name)
            if rec is not None:
                # recorded, its pod gone (its namespace died): a difference,
                # not an unknown container - the record waits for DEL or GC
                return {
                    "name": name,
                    **rec,
                    "problems": [
                        f"container {cid} interface {ifname}: its pod is gone "
                        "(a DEL or GC forgets it)"
                    ],
                }
            raise NotFound(f"container {cid} interface {ifname} is not attached on this node")
        if a["plane"] is None:  # being attached: nothing to compare yet
            return {
                **a,
                "problems": [
                    f"container {cid} interface {ifname} is being attached (its ADD has not "
                    f"finished: state {a['state']})"
                ],
            }
        netns = body.get("netns") or a["netns"]
        problems = []
        if netns != a["netns"]:
            problems.append(f"netns is {netns}, the attachment was made in {a['netns']}")
        if a["kind"] == "veth":
            problems += _live_problems(a, a["netns"])
        if a["kind"] == "vf":  # moved into the pod; the core does not forward for it
            return {**a, "problems": problems + _vf_problems(a, a["netns"])}
        if a["port"] is None:
            problems.append(f"{a['host_ifname']} is not a port of the forwarding core")
        else:
            ports = {p.index: p for p in self.pods.engine.ports()}
            if a["port"] not in ports:
                problems.append(f"port {a['port']} of {a['host_ifname']} is gone from the core")
        return {**a, "problems": problems}


def _host_mac(ifname):
    if not ifname:
        return None
    try:
        with open(f"/sys/class/net/{ifname}/address") as f:
            return f.read().strip()
    except OSError:
        return None


def _live_problems(a: dict, netns: str) -> List[str]:
    from .podnet import find_plane

    found = find_plane(a["host_ifname"], netns)
    if found is None:
        return [f"host interface {a['host_ifname']} is gone"]
    problems = []
    if found.kind != "veth":
        problems.append(f"host interface {a['host_ifname']} is a {found.kind}, not a veth")
    if found.ifname != a["ifname"]:
        return problems + [f"interface {a['ifname']} is not in {netns}"]
    problems += _pod_if_problems(a, found.mac, found.addresses, found.pod_mtu)
    if not found.up or not found.pod_up:
        problems.append(f"{a['ifname']} or {a['host_ifname']} is down")
    return problems + _route_problems(a, netns)


def _pod_if_problems(a: dict, mac, addresses: List[str], mtu) -> List[str]:
    """The pod's interface as found (its MAC, "ip/len" addresses, MTU)
    against attachment ``a``."""
    problems = []
    if (mac or "").lower() != a["mac"].lower():
        problems.append(f"{a['ifname']} has MAC {mac}, not {a['mac']}")
    for ip, plen in (("ip", "prefixlen"), ("ip6", "prefixlen6")):
        want = f"{a.get(ip)}/{a.get(plen)}"
        if a.get(ip) and want not in addresses:
            problems.append(f"{a['ifname']} has {addresses or 'no address'}, not {want}")
    # a later chained plugin (tuning) may lower it; above the network's
    # MTU the core would drop the pod's longest frames as oversize
    if a["mtu"] and (mtu is None or mtu > a["mtu"]):
        problems.append(f"{a['ifname']} has MTU {mtu}, above the network's {a['mtu']}")
    return problems


def _route_problems(a: dict, netns: str) -> List[str]:
    """The default routes (IPv4, and IPv6 on a dual-stack network) of a std
    attachment, if missing from every routing table (a later chained
    plugin, sbr, moves them out of main)."""
    from .podnet import _ipr

    want = [
        (family, a[gw])
        for family, gw in ((socket.AF_INET, "gateway"), (socket.AF_INET6, "gateway6"))
        if a["default_route"] and a.get(gw)
    ]
    if not want:
        return []
    problems = []
    with _ipr(netns) as ipr:
        idx = ipr.link_lookup(ifname=a["ifname"])
        for family, gw in want:
            routes = ipr.get_routes(family=family)  # every table
            if not any(
                r["dst_len"] == 0 and r.get("RTA_GATEWAY") == gw and r.get("RTA_OIF") in idx
                for r in routes
            ):
                problems.append(f"no default route via {gw} on {a['ifname']}")
    return problems


def _vf_problems(a: dict, netns: str) -> List[str]:
    """A VF attachment as found in the pod's namespace: its interface, MAC,
    address, MTU, link state and default route."""
    from .podnet import _ipr, _pod_addresses

    try:
        with _ipr(netns) as ipr:
            idx = ipr.link_lookup(ifname=a["ifname"])
            if not idx:
                return [f"interface {a['ifname']} is not in {netns}"]
            (link,) = ipr.get_links(idx[0])
            addrs = _pod_addresses(ipr, idx[0])
    except OSError as e:
        return [f"namespace {netns}: {e.strerror or e}"]
    problems = _pod_if_problems(a, link.get_attr("IFLA_ADDRESS"), addrs, link.get_attr("IFLA_MTU"))
    if not link["flags"] & 1:
        problems.append(f"{a['ifname']} is down")
    return problems + _route_problems(a, netns)


def attachment_routes(att: Attachments) -> Dict[tuple, object]:
    """The control API's attachment routes (added to ``status.api_routes``),
    each a :class:`~dataplane.api.Route` naming the fields it takes: an
    unknown one (a misspelt ``ipv4`` for ``ip``) is refused, named, with
    the closest known one. The values are checked by the handlers."""
    from .api import Route

    def key_of(b, q) -> dict:
        return {
            "container_id": q.get("container_id") or b.get("container_id"),
            "ifname": q.get("ifname") or b.get("ifname"),
            "cni_network": q.get("cni_network") or b.get("cni_network"),
        }

    def fields(*names):
        return {n: _as_given for n in names}

    key = fields("container_id", "ifname", "cni_network")
    return {
        ("GET", "/v1/attachments"): Route(lambda b, q: att.list()),
        ("POST", "/v1/attachments"): Route(lambda b, q: att.add(b), body=fields(*ADD_FIELDS)),
        ("DELETE", "/v1/attachments"): Route(
            lambda b, q: att.delete(key_of(b, q)), body=key, query=key
        ),
        ("POST", "/v1/attachments/check"): Route(
            lambda b, q: att.check(b), body=fields("container_id", "ifname", "netns")
        ),
        ("POST", "/v1/attachments/gc"): Route(
            lambda b, q: att.gc(b), body=fields("cni_network", "valid")
        ),
        ("GET", "/v1/attachments/ready"): Route(lambda b, q: att.ready()),
    }


#: the fields an ADD (POST /v1/attachments) takes
ADD_FIELDS = (
    "container_id",
    "ifname",
    "netns",
    "network",
    "plane",
    "kind",
    "ip",
    "mac",
    "device",
    "options",
    "dhcp_server",
    *_TEXT_KEYS,
)


def _as_given(value, path):
    """A field's value as given: the handler checks it, in its own words."""
    return value
