"""Pods on this node: attach, detach, and replay after a restart.

Order of work for every change: validate, write the intent to the store,
apply it (netlink, core tables), mark it done. A pod add that fails half-way
is undone: what it made on this node (ports, veths, sockets) from what the
add itself kept in memory, so also when the store is what failed; then its
records, best effort. Records a store that stopped answering kept (a pod
'pending' or 'deleting' of this node) are removed by the housekeeping
(:meth:`PodLife.reap`) once the store answers, or by a new add of the same
name. A pod delete writes 'deleting' first, detaches, then removes the
records; when only that last step fails, the pod is gone from the node and
the housekeeping removes its records later. On start the store is replayed:
pod interfaces that still exist are re-attached with the MACs and addresses
they had; nothing is allocated twice.
"""

import dataclasses
import functools
import json
import os
import re
import socket
import stat
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from .checks import (
    AF_XDP_FILL_MBUFS,
    AF_XDP_PORT_PREFIX,
    check_pod_name,
    ipv6_link_local,
    is_af_xdp_port,
)
from .errors import AlreadyExists, ConfigError, DataplaneError, NotFound, ResourceError
from .fastif import KINDS, SOCKET_KINDS, VETH, VF
from .logs import event, log, warning_event
from .store import reach

#: mbufs of the core's pool that af_xdp ports leave for forwarding (bursts,
#: tx buffers, plane queues)
AF_XDP_SPARE_MBUFS = 4095
#: seconds between two housekeeping rounds of the node service (reap): pods
#: whose namespace or veths are gone, pods a replay could not attach
REAP_EVERY_S = 5

#: pod-end checks (:meth:`PodLife.reap`) a housekeeping round makes at most,
#: a few pods a round in turn (a plane's check takes a few ms: netlink dumps
#: in the pod's namespace); all of 100 three-plane pods are seen in about 100 s
POD_ENDS_PER_ROUND = 16

#: pod states a record is left in by an add or a delete the store failed during
UNFINISHED = ("pending", "deleting")


def own_addresses(e, allowed, n) -> List[str]:
    """What a pod port of endpoint ``e`` on network ``n`` may send from:
    its IPv4 address, its IPv6 one on a dual-stack network
    (NetworkConfig.ip6_of) and the ``allowed`` ones of its spec."""
    out = [e["ip"], n.ip6_of(e["ip"]), *allowed]
    return [a for i, a in enumerate(out) if a and a not in out[:i]]


def _same_netns(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one network namespace: the same
    path, or two (``/var/run/netns/NAME``, ``/proc/PID/ns/net``) of one
    namespace."""
    if a == b:
        return True
    try:
        x, y = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)


def _named_for(name: str, pod: str, plane: str, whole: bool) -> bool:
    """Whether interface ``name`` is the host end's name of ``pod``'s
    ``plane`` (:func:`dataplane.podspec.host_ifname`); a pod name cut short
    in a mark (``whole`` False): the name's form, 'dp', eight hex digits,
    the plane's first letters."""
    from .checks import IFNAMSIZ
    from .podspec import host_ifname

    if whole:
        return name == host_ifname(pod, plane)
    return re.fullmatch(r"dp[0-9a-f]{8}" + re.escape(plane[: IFNAMSIZ - 11]), name) is not None


def _recorded_kinds(spec) -> Dict[str, str]:
    """{plane: kind} of the planes a recorded pod spec (JSON text or a
    dict) names a kind for, read as it is, without the node's
    configuration; the others are veths."""
    try:
        obj = json.loads(spec) if isinstance(spec, (str, bytes)) else spec
        ifs = obj.get("interfaces") or {}
        return {
            plane: v["kind"]
            for plane, v in ifs.items()
            if isinstance(v, dict) and v.get("kind") in KINDS
        }
    except (ValueError, TypeError, AttributeError):
        return {}


def _unfinished(state: str) -> str:
    """What left a leftover record in ``state``: 'add' or 'delete' ('ready':
    an add whose last write the store may have applied as it failed)."""
    return "delete" if state == "deleting" else "add"


def _why(err: BaseException) -> str:
    """An error as a log line says it: ours by its message; another (a
    netlink error, an IndexError) with its type, which its message alone
    may not say (``(19, 'No such device')``)."""
    if isinstance(err, DataplaneError):
        return str(err)
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


@functools.lru_cache(maxsize=None)
def _boot_id() -> str:
    """This boot's id (the kernel's random boot_id), read once."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def netns_identity(path: str) -> Optional[str]:
    """What tells the network namespace at ``path`` from any other for as
    long as it exists: this boot and the namespace's device and inode. A
    path can outlive its namespace and lead to another one later: a
    ``/proc/PID/ns/net`` whose process ended and whose PID was reused
    (after a reboot, PIDs start again), a name under /var/run/netns given
    to a new namespace. None if there is nothing at ``path``."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{_boot_id()}/{st.st_dev}/{st.st_ino}"


def netns_gone(pod) -> Optional[str]:
    """Why pod record ``pod``'s namespace is not there any more, or None:
    nothing at its path, or another namespace than the one it was added in
    (records from before identities were kept: the path alone)."""
    path = pod["netns"]
    now = netns_identity(path)
    if now is None:
        return f"namespace {path} is gone"
    if pod.get("netns_id") and now != pod["netns_id"]:
        return (
            f"namespace {path} is gone: the path leads to another namespace now (its "
            "process ended and the PID was reused, the node restarted, or the name was "
            "given to a new namespace)"
        )
    return None


def _check_link_local(p, mac: str, floating) -> None:
    """ConfigError if ``mac`` (plane ``p``'s, asked for or derived) gives
    the pod an IPv6 link-local address (EUI-64, which the guard lets the
    pod send from) that another pod holds as a floating address
    (``floating``: :meth:`PodLife._floating`): the pod would answer for it."""
    held = floating.get(p.network, {})
    if not held:
        return
    ll = str(ipv6_link_local(bytes.fromhex(mac.replace(":", ""))))
    holder = held.get(ll)
    if holder:
        given = "" if p.mac else "derived for the plane "
        raise ConfigError(
            f"macs.{p.plane}: {mac} {given}gives the pod IPv6 link-local address {ll}, a "
            f"floating address of pod {holder} on network {p.network} (its allowed_addresses)"
            + ("" if p.mac else "; give the plane another MAC (macs)")
        )


class _Made:
    """What one pod add made on this node so far, each with how to undo it,
    kept in memory as the add goes: a failed add undoes it without asking
    the store (which may be what failed)."""

    def __init__(self):
        self.steps: List[Tuple[str, Callable[[], object]]] = []

    def add(self, what: str, undo: Callable[[], object]):
        self.steps.append((what, undo))

    def undo(self) -> List[str]:
        """Undo every step, the last made first; what could not be undone."""
        failed = []
        for what, fn in reversed(self.steps):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - the other steps are undone still
                log.warning("undoing %s: %s", what, e)
                failed.append(f"{what}: {e}")
        self.steps.clear()
        return failed


class _PortOpening:
    """A pod's kernel port, opened while the rest of its plane is made: with
    the native AF_PACKET driver it opens as soon as the host end of the veth
    exists (:meth:`start`, given to ``attach_plane``), in a thread of its
    own, while the pod's end gets its address, link and route - setting up
    its sockets' rings waits for an RCU grace period (12-20 ms here), which
    the pod's side then need not wait behind. Not in any network until
    :meth:`result` hands it over. AF_XDP opens in :meth:`result`: its
    device must have its offloads set first."""

    def __init__(self, engine, driver: str):
        self.engine, self.driver = engine, driver
        self.early = driver == "afpacket"
        self._thread: Optional[threading.Thread] = None
        self._port: Optional[int] = None
        self._error: Optional[BaseException] = None

    def start(self, ifname: str):
        def run():
            try:
                self._port = add_kernel_port(self.engine, ifname, self.driver)
            except BaseException as e:  # noqa: BLE001 - raised by result()
                self._error = e

        self._thread = threading.Thread(target=run, name="port-open", daemon=True)
        self._thread.start()

    def result(self, ifname: str) -> int:
        """The port of ``ifname``, opened now if it was not started; the
        engine's error if it could not be."""
        if self._thread is None:
            return add_kernel_port(self.engine, ifname, self.driver)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._port

    def abandon(self, lock, before_removed: Callable[[int], None]):
        """The plane failed: the port, if one was opened, removed under
        ``lock`` (the engine's tables'), ``before_removed`` told first (a
        capture of any port may have taken it meanwhile)."""
        if self._thread is None:
            return
        self._thread.join()
        if self._port is not None:
            with lock:
                before_removed(self._port)
                try:
                    self.engine.del_port(self._port)
                except DataplaneError as e:
                    log.warning("removing port %s of a failed plane: %s", self._port, e)


class _Present:
    """The interfaces of this namespace, each looked up by name when asked:
    exact, where a listing can miss one (a netlink dump of links that runs
    while others are added or deleted skips entries on kernels before 6.6),
    and a pod would be removed for it. Replay and the reaper's final check
    use it; the reaper's first pass over every pod uses one listing."""

    def __contains__(self, name) -> bool:
        try:
            socket.if_nametoindex(name)
            return True
        except OSError:
            return False


def add_kernel_port(
    engine, ifname: str, driver: str, role: str = "pod", network: Optional[int] = None
) -> int:
    """Kernel interface ``ifname`` as a port of ``engine`` through ``driver``
    (``config.KERNEL_DRIVERS``): the core's native AF_PACKET driver, or
    DPDK's ``net_af_xdp`` on the interface's queue 0 (it loads an XDP
    program that redirects every frame to its socket, removed with the
    port). The port's index; the engine's error, naming the interface, if
    it cannot be made - nothing is left attached then."""
    if driver == "afpacket":
        return engine.add_afpacket_port(ifname, role=role, network=network)
    if driver == "af_xdp":
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            raise NotFound(f"{ifname}: no such interface (kernel_driver af_xdp)") from None
        from .podnet import rx_channels

        queues = rx_channels(ifname)
        if queues is not None and queues > 1:
            # only queue 0 is read: what RSS puts on the others would go to
            # the kernel's own stack, unseen and uncounted
            raise ConfigError(
                f"{ifname}: kernel_driver af_xdp reads its queue 0 only, and it receives "
                f"on {queues} queues: set it to one first (ethtool -L {ifname} combined 1, "
                "or rx 1), or use afpacket"
            )
        n = engine.config.n_mbufs
        have = sum(1 for p in engine.ports() if is_af_xdp_port(p.name))
        # what the pool holds now: DPDK 22.11's net_af_xdp does not give a
        # closed port's fill ring back, so the af_xdp ports removed since
        # the start keep theirs (docs/kernel-ports.md)
        taken = max(have * AF_XDP_FILL_MBUFS, engine.pool_in_use())
        if taken + AF_XDP_FILL_MBUFS > n - AF_XDP_SPARE_MBUFS:
            raise ResourceError(
                f"{ifname}: kernel_driver af_xdp: the core's pool of {n} mbufs has room for "
                f"{have} af_xdp ports (each keeps {AF_XDP_FILL_MBUFS} in its fill ring, "
                f"{AF_XDP_SPARE_MBUFS} stay for forwarding; {taken} are in use, those of "
                "af_xdp ports removed since the service started among them, until it "
                "restarts): raise memory_mb, restart the service, or use kernel_driver afpacket"
            )
        # named for the interface: the port's name in status and metrics
        dev = f"{AF_XDP_PORT_PREFIX}_{ifname},iface={ifname},start_queue=0,queue_count=1"
        try:
            return engine.add_port(dev, role=role, network=network)
        except DataplaneError as e:
            raise type(e)(
                f"{ifname}: kernel_driver af_xdp: {e}; the DPDK log says why (an XDP "
                "program it cannot load, a queue the interface does not have)",
                e.errno,
            ) from e
    raise ConfigError(f"kernel_driver: {driver!r} is not a kernel-port driver")


class PodLife:
    """The pods of node ``config.node``: their records in ``store``, their
    interfaces (netlink) and their ports in ``engine``. Changes to the
    engine's tables are made under ``lock``; ``networks`` maps a network's
    name to the core's index. ``on_removed()`` is called (under ``txn``)
    after a pod was deleted: a remote endpoint may have its MAC again.

    Two locks, always taken in this order: ``txn``, one pod transaction at
    a time (add, delete, a restore, the housekeeping's removals, a CNI
    attachment), held across the store's requests; and ``lock``, the
    engine's, held only while a port and its tables are made or removed
    (each seen whole or not at all). The views and the cluster view's sync
    take ``lock`` alone, so they do not wait for a store that a
    transaction waits on (a hung etcd: up to its request timeout)."""

    def __init__(
        self,
        config,
        store,
        engine,
        lock,
        networks: Dict[str, int],
        on_removed: Callable[[], None] = lambda: None,
    ):
        self.config = config
        self.store = store
        self.engine = engine
        self.lock = lock
        self.txn = threading.RLock()  # before ``lock``, never after it
        self.networks = networks
        self.on_removed = on_removed
        self.ports: Dict[str, int] = {}  # host_ifname -> core port
        # host_ifname -> (pod, plane) of each port in self.ports: whose the
        # port is, for the names its metrics and status rows carry
        self.owners: Dict[str, Tuple[str, str]] = {}
        # (pod, plane) -> options of each vhost-user port: its link to the
        # pod's socket is made again as the socket changes (repin_vhost),
        # and the problem last logged for it
        self._pins: Dict[Tuple[str, str], dict] = {}
        self._pin_problems: Dict[Tuple[str, str], str] = {}
        self.adding: Set[str] = set()  # pods whose add runs now (under txn)
        # pods whose add failed and was undone on this node while the store
        # kept their records, by the records' creation time: one may say
        # 'ready' (a store that failed as it applied the add's last write),
        # and is then a leftover all the same, not a pod to make again
        self.failed_adds: Dict[str, Any] = {}
        # this node's pods as last recorded or read (pod_info, and when):
        # every change of them is made here, so a store that does not
        # answer leaves nothing out of it (list_pods, the FDB's annotations)
        self.known: Dict[str, dict] = {}
        self.known_at: Dict[str, float] = {}
        # a reader's refresh of ``known`` against a delete's removal from it:
        # only adds and replays put a pod in, so a read racing a delete or a
        # failed add never brings one back
        self._known_lock = threading.Lock()
        # ready pods of this node a replay could not attach: {pod: why}.
        # Listed with the reason; the housekeeping tries them again
        self.unattached: Dict[str, str] = {}
        # told of a core port about to go (a capture on it ends first)
        self.before_port_removed: Callable[[int], None] = lambda port: None
        # told of a pod's core port as it is taken into the pod's plane
        # (port, "pod:plane"): a capture of any port takes it
        self.after_port_added: Callable[[int, str], None] = lambda port, name: None
        self._store_mark: Optional[str] = None  # store_mark()
        # (pod, plane) -> the error last logged for a veth that could not be
        # made again (said once, tried again every housekeeping round)
        self._remake_said: Dict[Tuple[str, str], str] = {}
        # likewise for a pod end that could not be restored (_restore_pod_end)
        self._restore_said: Dict[Tuple[str, str], str] = {}
        self._ends_turn = 0  # where the next round's pod-end checks start

    # ------------------------------------------------------------- replay
    def replay(self, pods=None):
        """Re-attach the pods the store knows whose interfaces still exist;
        remove the others (half-made, or their namespace died). ``pods``:
        this node's pod records, if the caller read them already."""
        links = _Present()
        if pods is None:
            pods = self.store.pods(node=self.config.node)
        for pod in pods:
            eps = self.store.endpoints(pod=pod["name"])
            kinds = self._kinds(pod["name"])
            lost = self._veths_missing(kinds, eps, links)  # made again, below
            missing = self._vfs_missing(pod["name"], eps)
            ns_gone = netns_gone(pod)
            if ns_gone:  # the pod is gone: memif, vhost-user too
                missing = eps
            if missing or pod["state"] != "ready":
                if ns_gone:
                    why = ns_gone
                elif pod["state"] != "ready":
                    why = f"its {_unfinished(pod['state'])} did not finish"
                else:
                    why = "the VF of " + ", ".join(f"plane {e['plane']}" for e in missing)
                    why += " is not in the pod"
                warning_event(
                    "replay: removing incomplete pod",
                    pod=pod["name"],
                    state=pod["state"],
                    missing=[e["plane"] for e in missing],
                    why=why,
                )
                self._remove(pod["name"], eps)
                continue
            eps = self._own_vtep(eps)
            self._reattach(pod, eps, kinds, lost, "replay")

    def _own_vtep(self, eps):
        """``eps`` with the node's VTEP address as its config says now: an
        endpoint recorded behind another (the node's address was changed
        while it was stopped) is recorded again, so that the other nodes
        send its frames, and accept its VXLAN, at the new one."""
        out = []
        me = self.config.vtep.ip
        for e in eps:
            if e.get("vtep") is not None and e["vtep"] != me:
                self.store.add_endpoint(
                    e["pod"], e["plane"], e["network"], e["ifname"], e["host_ifname"],
                    e["mac"], e["ip"], node=e["node"], vtep=me, state=e["state"],
                )  # fmt: skip
                event(
                    "replay: endpoint moved to the node's VTEP address",
                    pod=e["pod"],
                    plane=e["plane"],
                    old=e["vtep"],
                    new=me,
                )
                e = dict(e, vtep=me)
            out.append(e)
        return out

    def _reattach(self, pod, eps, kinds, lost, by: str):
        """Attach ready pod ``pod`` (endpoints ``eps``; ``kinds``: {plane:
        kind}; ``lost``: its veth endpoints whose veth is gone, made again)
        again, ``by`` the replay or the housekeeping. A pod
        that cannot be (its port not made: a socket path taken, the pool
        full) does not stop the others: what was attached of it is undone,
        its records stay, it is listed with why (``unattached``) and the
        housekeeping tries again each round. A store that does not answer
        is the caller's to handle."""
        name = pod["name"]
        try:
            self._attach_planes(pod, eps, kinds, lost, by)
        except ConnectionError:  # EtcdUnavailable: not this pod's problem
            raise
        except (DataplaneError, OSError) as err:
            self._undo_ports(name, eps, kinds)
            why = str(err) or type(err).__name__
            if self.unattached.get(name) != why:  # said once, not every round
                log.error(
                    "%s: pod %s not attached: %s; it has no forwarding, its records stay, "
                    "the housekeeping tries again every %d s",
                    by,
                    name,
                    why,
                    REAP_EVERY_S,
                    extra={"fields": {"pod": name, "why": why}},
                )
            self.unattached[name] = why
            self._info(pod, eps, remember=True)
            return
        was = self.unattached.pop(name, None)
        self._info(pod, eps, remember=True)
        event(
            f"{by}: pod re-attached",
            pod=name,
            planes=[e["plane"] for e in eps],
            **({"was_not_attached": was} if was else {}),
        )

    def _attach_planes(self, pod, eps, kinds, lost, by):
        allowed = (pod.get("spec") or {}).get("allowed_addresses") or {}
        dhcp = set((pod.get("spec") or {}).get("dhcp_server") or ())
        # the lane programs a stopped or killed service left on the pod's
        # veths, with their old maps and guards: replaced before anything
        # else by this service's, which carries nothing for a port not yet
        # in its tables and lets nothing of the pod's reach the node's
        # stack (taken off where this service runs no lane programs), so
        # that none carries frames beside the core, nor for a pod whose
        # attach fails at another plane
        for e in eps:
            if kinds.get(e["plane"], VETH) == VETH and e not in lost:
                self._guard_host_end(e)
        for e in eps:
            kind = kinds.get(e["plane"], VETH)
            if e in lost:  # its veth deleted: the pod's other planes stay
                self._remake_veth(pod, e, by)
            elif kind == VETH:
                self._replay_mtu(pod, e)
                self._replay_mark(pod, e)
                self._restore_pod_end(pod, e, by)
                self._replay_offloads(pod, e)
                self._attach_port(e, allowed.get(e["plane"], ()), dhcp_server=e["plane"] in dhcp)
            elif kind in SOCKET_KINDS:
                ps = self._plane_spec(pod["name"], e["plane"])
                if ps is None:  # its options are in the spec alone
                    raise ConfigError(
                        f"plane {e['plane']}: the pod's recorded {kind} spec does not fit the "
                        f"node's configuration now ({self._spec_problem(pod) or 'no such plane'}); "
                        "put the configuration back, or delete the pod and add it again"
                    )
                self._attach_fast(
                    pod["name"],
                    e,
                    ps,
                    allowed.get(e["plane"], ()),
                    dhcp_server=e["plane"] in dhcp,
                    replay=True,
                )

    def _replay_offloads(self, pod, e):
        """Under ``kernel_driver: af_xdp``, which cannot carry a frame's
        checksum-offload state, the pod's transmit offloads off - also for a
        pod made while the node ran ``afpacket``, which keeps them on (its
        TCP would reach its peers with unfinished checksums). Under
        ``afpacket``, the segmentation offloads whose super-frames the core
        cannot carry off (SCTP's, tunnels'): a pod made before the service
        turned them off."""
        from .podnet import _is_gso_not_carried, _offloads_off

        try:
            if self.config.kernel_driver != "af_xdp":
                _offloads_off(e["ifname"], pod["netns"], which=_is_gso_not_carried)
                return
            _offloads_off(e["ifname"], pod["netns"])
            _offloads_off(e["host_ifname"])
        except OSError as err:
            warning_event(
                "replay: the pod's offloads could not be turned off",
                pod=pod["name"],
                plane=e["plane"],
                error=str(err),
            )

    def _undo_ports(self, name, eps, kinds):
        """The core ports a failed re-attach of pod ``name`` made, removed
        (its interfaces and records stay, for the next try). The pod runs:
        its socket directory, which its container has mounted, and its
        vhost-user sockets stay; a plane that got no port is left alone."""
        for e in eps:
            try:
                kind = kinds.get(e["plane"], VETH)
                if kind in SOCKET_KINDS:
                    self._drop_fast(name, e["plane"], kind)
                elif kinds.get(e["plane"], VETH) == VETH:
                    self._drop_port(e["host_ifname"])
                    # no lane without the core; the host end still guarded
                    self._guard_host_end(e)
            except (DataplaneError, OSError) as err:
                log.warning("pod %s plane %s: port not removed: %s", name, e["plane"], err)

    def remove_orphans(self) -> List[str]:
        """Delete the pod veths this node's service made that no pod record
        of this node names any more: a node removed from the cluster while
        it was down (``dataplane node remove``) starts again without its
        pods' records, but their veths are still here, holding their names.
        Only a veth marked at its creation as this node's plane of a pod,
        recorded in this store (its alias,
        :func:`dataplane.podnet.plane_alias`), and named as that plane's
        host end is taken, each logged; nothing else is touched (a service
        started on another store, or under another node name, takes none).
        Run after the replay, before the API takes adds. The names removed."""
        node = self.config.node
        known = {
            e["host_ifname"]
            for e in self.store.endpoints()
            if e.get("host_ifname") and e.get("node") in (None, node)
        } | set(self.ports)
        return self.delete_marked_veths(
            node,
            known,
            "orphan pod veth removed",
            "orphan veth %s of pod %s plane %s not removed: %s",
            why="no pod record of this node names it",
        )

    def delete_marked_veths(self, owner: str, known, said: str, failed: str, **fields):
        """Delete the pod veths marked at their creation as node ``owner``'s
        plane of a pod recorded in this store (their alias), named as that
        plane's host end, whose names ``known`` does not hold: each logged
        as event ``said`` (with ``fields``), one that could not be deleted
        as warning ``failed`` (name, pod, plane, error). The names deleted.
        :meth:`remove_orphans` (this node's own) and the service's ``node
        remove`` (an old name of this node) call it."""
        from .podnet import delete_marked, marked_veths, parse_alias

        mark = self.store_mark()
        removed = []
        for index, name, alias in marked_veths():
            marked_for, store, plane, pod, whole = parse_alias(alias)
            if (marked_for, store) != (owner, mark) or name in known:
                continue
            if not _named_for(name, pod, plane, whole):
                continue
            try:
                if not delete_marked(index, name, alias):
                    continue
            except DataplaneError as e:
                log.warning(failed, name, pod, plane, e)
                continue
            event(said, interface=name, pod=pod, plane=plane, **fields)
            removed.append(name)
        return removed

    def store_mark(self) -> str:
        """8 hex digits of the store's identity (``store.identity()``), in
        the mark of every pod veth this node makes (read once)."""
        if self._store_mark is None:
            self._store_mark = self.store.identity()[:8]
        return self._store_mark

    def _replay_mark(self, pod, e):
        """A plane's veth without this node's and store's mark (made before
        veths were marked) gets it: :meth:`remove_orphans` knows it then,
        should its record go while the service is down."""
        from .podnet import mark_veth, plane_alias

        alias = plane_alias(self.config.node, self.store_mark(), pod["name"], e["plane"])
        try:
            if mark_veth(e["host_ifname"], alias):
                event("replay: plane veth marked", pod=pod["name"], plane=e["plane"], alias=alias)
        except Exception as err:  # noqa: BLE001 - it forwards unmarked all the same
            log.warning(
                "replay: pod %s plane %s: veth not marked: %s", pod["name"], e["plane"], err
            )

    def _remake_veth(self, pod, e, by: str) -> bool:
        """Make plane ``e``'s veth pair of ``pod`` (a ready pod whose
        namespace lives) again, as its add made it: the same names, MAC,
        address, MTU and routes, its port guarded and in its network again
        (a pod not attached since a restart gets the veth alone: its ports
        come back all together when it is attached, :meth:`_reattach_again`).
        Its host end was deleted (and the pod's end with it: ``ip link
        del``, a host network manager tidying up). Whether it was made; if
        not, the error is logged once and the next housekeeping round tries
        again, while the pod's other planes forward on."""
        from .podnet import announce, detach_plane

        name, plane, hif = pod["name"], e["plane"], e["host_ifname"]
        try:
            p = self._plane_spec(name, plane)
            if p is None:
                raise ConfigError(f"plane {plane} is not in the pod's recorded spec")
            n = self.config.network(e["network"])
            spec = pod.get("spec") or {}
            allowed = (spec.get("allowed_addresses") or {}).get(plane, ())
            with self.txn:
                self._drop_port(hif)  # the port of the interface that went
                self._make_veth(name, pod["netns"], p, n, e["mac"], e["ip"], self.store_mark())
                try:
                    if name not in self.unattached:
                        self._attach_port(
                            e, allowed, dhcp_server=plane in set(spec.get("dhcp_server") or ())
                        )
                except BaseException:
                    detach_plane(hif)
                    raise
            announce(pod["netns"], p.ifname, e["mac"], e["ip"])
        except DataplaneError as err:
            if self._remake_said.get((name, plane)) != str(err):
                log.warning(
                    "pod %s plane %s: its veth %s is gone and could not be made again (%s); "
                    "tried again every 5 s, the pod's other planes forward on",
                    name,
                    plane,
                    hif,
                    err,
                )
                self._remake_said[(name, plane)] = str(err)
            return False
        self._remake_said.pop((name, plane), None)
        event(
            "pod plane made again: its veth was gone",
            pod=name,
            plane=plane,
            interface=hif,
            mac=e["mac"],
            ip=e["ip"],
            by=by,
        )
        return True

    @staticmethod
    def _pod_end(name, p, n, ip):
        """What the add of plane ``p`` (its spec) of pod ``name`` on network
        ``n`` with address ``ip`` makes of it besides the veth pair
        (:class:`dataplane.podnet.PodEnd`): :meth:`_make_veth` makes it, a
        restore (:meth:`_restore_pod_end`) puts back what is gone of it."""
        from .podnet import PodEnd
        from .podspec import host_ifname

        return PodEnd(
            host_ifname(name, p.plane),
            f"{ip}/{n.prefixlen}",
            n.gateway,
            p.default_route,
            n.ip6_cidr_of(ip),
            n.gateway6,
        )

    def _make_veth(self, name, netns, p, n, mac, ip, mark, host_end_made=None):
        """Plane ``p`` (its spec) of pod ``name``, on network ``n``, as a
        veth pair with ``mac`` and ``ip``, marked as this node's in the store
        of ``mark``; a step that fails deletes the pair itself."""
        from .podnet import attach_plane

        end = self._pod_end(name, p, n, ip)
        return attach_plane(
            name,
            netns,
            p.ifname,
            end.host_ifname,
            mac,
            end.ip_cidr,
            end.gateway,
            n.mtu,
            end.default_route,
            plane=p.plane,
            offloads=self.config.kernel_driver != "af_xdp",
            node=self.config.node,
            store=mark,
            host_end_made=host_end_made,
            ip6_cidr=end.ip6_cidr,
            gateway6=end.gateway6,
        )

    def _restore_pod_end(self, pod, e, by: str) -> List[str]:
        """Put back what the add made of plane ``e``'s pod end in ``pod``'s
        namespace and is gone now (flushed or removed by hand, ``ip -n POD
        addr flush dev eth0``, ``ip -n POD link set eth0 down``): its
        address with its prefix, both ends up, the subnet route and the std
        plane's default route, by the add's own steps
        (:func:`dataplane.podnet.restore_pod_end`); logged with what
        (``<by>: pod plane interface restored``). What was put back; an
        error is logged once (a warning: the plane stays cut off) and the
        next round of ``by`` tries again."""
        from .podnet import restore_pod_end

        name, plane = pod["name"], e["plane"]
        p = None
        try:
            p = self._plane_spec(name, plane)
            if p is None:
                raise ConfigError(f"plane {plane} is not in the pod's recorded spec")
            n = self.config.network(e["network"])
            done = restore_pod_end(pod["netns"], self._pod_end(name, p, n, e["ip"]))
        except DataplaneError as err:
            if self._restore_said.get((name, plane)) != str(err):
                warning_event(
                    f"{by}: pod plane interface not restored",
                    pod=name,
                    plane=plane,
                    interface=p.ifname if p is not None else None,
                    why=str(err),
                )
                self._restore_said[(name, plane)] = str(err)
            return []
        self._restore_said.pop((name, plane), None)
        if done:
            event(
                f"{by}: pod plane interface restored",
                pod=name,
                plane=plane,
                interface=p.ifname,
                restored=done,
            )
        return done

    def _check_pod_ends(self, alive):
        """Look at the pod ends of a few of the ready pods ``alive`` (their
        namespace and veths there), in turn from round to round (at most
        POD_ENDS_PER_ROUND planes), and restore what an add made of them and
        is gone (:meth:`_restore_pod_end`). The look is made without
        ``txn``; a restore under it, on the pod's record read again."""
        from .podnet import pod_ends_lacking

        if not alive:
            return
        alive = sorted(alive, key=lambda pod: pod["name"])
        start = self._ends_turn % len(alive)
        order = alive[start:] + alive[:start]
        checked = planes = 0
        for pod in order:
            if planes >= POD_ENDS_PER_ROUND:
                break
            checked += 1
            try:
                planes += self._check_pod_end(pod, pod_ends_lacking)
            except DataplaneError:  # the store's: the service's round says so
                raise
            except Exception as err:  # noqa: BLE001 - one pod's, not the node's
                self._reap_failed(pod, err)
        self._ends_turn = start + checked

    def _check_pod_end(self, pod, pod_ends_lacking) -> int:
        """One pod's part of :meth:`_check_pod_ends`: the planes looked at."""
        specs = {p.plane: p for p in self._stored_spec(pod["name"], pod)}  # one read
        eps = [
            e
            for e in self.store.endpoints(pod=pod["name"])
            if e["plane"] in specs and specs[e["plane"]].kind == VETH and e.get("host_ifname")
        ]
        ends = {}
        for e in eps:
            p = specs[e["plane"]]
            if e["network"] in self.networks:
                ends[e["host_ifname"]] = self._pod_end(
                    pod["name"], p, self.config.network(e["network"]), e["ip"]
                )
        lacking = pod_ends_lacking(pod["netns"], list(ends.values())) if ends else {}
        if not lacking:
            return len(ends)
        with self.txn:  # a delete and re-add meanwhile: the record again
            now = self.store.pod(pod["name"])
            if not now or now.get("created") != pod.get("created") or now["state"] != "ready":
                return len(ends)
            for e in eps:
                if e["host_ifname"] in lacking:
                    self._restore_pod_end(now, e, "housekeeping")
        return len(ends)

    def _replay_mtu(self, pod, e):
        """A plane whose veth has an MTU above the one its network now has
        (the underlay's MTU lowered in the config while the service was
        down) gets the network's, each end above it, before its port is
        attached. An MTU is only ever lowered, never raised: a pod end a
        later chained CNI plugin (``tuning``) set lower keeps its MTU."""
        from .podnet import lower_plane_mtu

        mtu = self.config.network(e["network"]).mtu
        try:
            if lower_plane_mtu(e["host_ifname"], pod["netns"], mtu):
                event("replay: plane MTU set", pod=pod["name"], plane=e["plane"], mtu=mtu)
        except Exception as err:  # the pod still works at its old MTU
            log.warning(
                "replay: pod %s plane %s: MTU %s not set: %s", pod["name"], e["plane"], mtu, err
            )

    def _attach_port(self, e, allowed=(), dhcp_server=False, opening=None) -> int:
        """Endpoint ``e``'s host interface as a guarded port in its network;
        the port ``opening`` (a :class:`_PortOpening`) opened, if given."""
        from .podnet import close_host_end

        net = self.networks[e["network"]]
        close_host_end(e["host_ifname"])  # also a pod's made before it was done
        # the lane's program on it before its port opens: from then on none
        # of the pod's frames reaches the node's stack (where it runs)
        self._guard_host_end(e)
        # in its network only once guarded: no frame passes unchecked
        if opening is None:
            opening = _PortOpening(self.engine, self.config.kernel_driver)
        port = opening.result(e["host_ifname"])
        with self.lock:
            self.ports[e["host_ifname"]] = port
            self.after_port_added(port, f"{e['pod']}:{e['plane']}")
            self._guard_port(port, e, allowed, dhcp_server)
            self.engine.set_port_network(port, net)
            self.engine.fdb_add_local(net, e["mac"], port)
            self._join_express(port, e, net, allowed)
            # owned last: a scrape or a status shows a pod port once it is
            # whole - its pod, plane and network - never under other labels
            self.owners[e["host_ifname"]] = (e["pod"], e["plane"])
        return port

    def _guard_host_end(self, e):
        """Endpoint ``e``'s host end under the lane's program without a port
        (Engine.express_guard_ifname); one the kernel will not take leaves
        the host end to its interface settings, said, not a reason to
        forward nothing for the pod."""
        try:
            self.engine.express_guard_ifname(e["host_ifname"])
        except DataplaneError as err:
            warning_event(
                "pod plane's host end not guarded by the lane's program: a limited broadcast "
                "from the pod may reach the node's sockets (docs/security.md)",
                pod=e["pod"],
                plane=e["plane"],
                interface=e["host_ifname"],
                why=str(err),
            )

    def _join_express(self, port: int, e, net: int, allowed=(), n=None):
        """Pod port ``port`` (endpoint ``e``) into the express lane, if the
        node runs it: under the anti-spoofing of its network (``n``, by
        default as the configuration has it), only from the pod's
        addresses. A port the lane cannot take forwards through the core,
        as without the lane; the log says why."""
        if not self.engine.express_loaded:
            return
        hif = e["host_ifname"]
        n = n or self.config.network(e["network"])
        try:  # out of the lane again with the port (Engine.del_port)
            self.engine.express_add_port(
                port,
                hif,
                net,
                e["mac"],
                own_addresses(e, allowed, n),
                spoof=n.anti_spoofing,
                mtu=n.mtu,
            )
        except DataplaneError as err:
            try:  # guarded all the same: nothing of the pod's to the node's stack
                self.engine.express_guard_port(port, hif)
                guarded = "its host end is guarded by the lane's program"
            except DataplaneError as err2:
                guarded = f"ITS HOST END IS NOT GUARDED by the lane's program ({err2})"
            warning_event(
                f"pod plane not in the express lane: its frames take the core's path; {guarded}",
                pod=e["pod"],
                plane=e["plane"],
                interface=hif,
                why=str(err),
            )

    # ------------------------------------------------- memif and vhost-user
    def reap(self) -> List[str]:
        """Remove the ready pods of this node whose namespace is gone (the
        container exited, ``ip netns del``): what the replay at start does,
        done while running, so their ports, addresses and MACs do not wait
        for a restart or a ``pod del``. A plane whose veth was deleted while
        the pod's namespace lives is made again (:meth:`_remake_veth`); the
        pod's other planes are left alone. A plane whose pod end lost what
        the add made of it (its address, up state, routes) gets it back
        (:meth:`_check_pod_ends`: a few pods a round, in turn). Also the leftovers of this node's adds and deletes the
        store failed during (:meth:`leftover`), and the VFs held by pods
        that are provably gone without a delete (:func:`dataplane.vf.sweep`).
        The names removed."""
        removed, alive = [], []
        links = {n for _, n in socket.if_nameindex()}  # once a round
        listed = self.store.pods(node=self.config.node)
        for pod in listed:
            try:
                if self._reap_one(pod, links, alive):
                    removed.append(pod["name"])
            except DataplaneError:  # the store's (or ours): the service's round says so
                raise
            except Exception as err:  # noqa: BLE001 - one pod's, not the node's
                self._reap_failed(pod, err)
        removed += self._drop_unrecorded({p["name"] for p in listed})
        self._check_pod_ends(alive)
        from . import vf as vfs

        vfs.sweep(self.store, self.txn)
        return removed

    def _drop_unrecorded(self, listed) -> List[str]:
        """Detach the pods this service runs whose records left the store
        without it (``listed``: the names the store has for this node): a
        ``dataplane node remove`` of this node while it was cut off from
        etcd past its claim's TTL forgot them and gave their addresses and
        MACs back, which other pods may get. They are detached here as a
        restart would (their veths as orphans), not left forwarding
        unrecorded. Each is read again under ``txn`` first. The names."""
        with self._known_lock:
            names = [n for n in self.known if n not in listed]
        out = []
        for name in names:
            with self.txn:
                info = self.known.get(name)
                if info is None or name in self.adding:
                    continue  # deleted meanwhile, or being added
                rec = self.store.pod(name)
                if rec is not None and rec.get("node") in (None, self.config.node):
                    continue  # recorded after all (added since the listing)
                kinds = {p["plane"]: p.get("kind", VETH) for p in info["planes"]}
                self._detach_planes(name, info["planes"], kinds)
                self.on_removed()
                warning_event(
                    "pod removed: its records left the store while this node ran",
                    pod=name,
                    why="a 'dataplane node remove' of this node while it was cut off from the "
                    "store forgot it (its addresses and MACs may be another pod's now)"
                    if rec is None
                    else f"the store has it on node {rec.get('node')} now",
                )
            out.append(name)
        return out

    @staticmethod
    def _reap_failed(pod, err: Exception):
        """A housekeeping step for pod ``pod`` that failed unexpectedly (not
        one of our errors: a netlink error, an IndexError): logged with the
        pod's name; the other pods' steps go on, the next round tries it
        again."""
        log.error(
            "housekeeping: pod %s: %s; its other pods go on, the next round tries again",
            pod["name"],
            _why(err),
            exc_info=err,
            extra={"fields": {"pod": pod["name"], "why": _why(err)}},
        )

    def _reap_one(self, pod, links, alive: list) -> bool:
        """One pod's part of :meth:`reap` (``links``: this namespace's
        interface names; a pod alive is put in ``alive``). Whether it was
        removed."""
        if self.leftover(pod):
            return self._remove_leftover(pod, "housekeeping")
        if pod["state"] != "ready":
            return False
        if not self._gone(pod, links):
            alive.append(pod)
            if pod["name"] in self.unattached:
                self._reattach_again(pod)
            return False
        with self.txn:  # again under txn: a delete and re-add meanwhile
            now = self._still_ready(pod)
            if now is None:
                return False
            why = self._gone(now, _Present())  # each name looked up: exact
            if not why:
                return False
            if not netns_gone(now):  # a veth deleted, the pod lives
                eps = self.store.endpoints(pod=now["name"])
                for e in self._veths_missing(self._kinds(now["name"]), eps, _Present()):
                    self._remake_veth(now, e, "housekeeping")
                return False
            self._remove(now["name"], self.store.endpoints(pod=now["name"]))
            self.on_removed()
        warning_event("pod removed: its interfaces are gone", pod=pod["name"], why=why)
        return True

    def _still_ready(self, pod) -> Optional[dict]:
        """Pod ``pod``'s record read again (under ``txn``), if it is still
        that pod, ready: not deleted, nor added again (another ``created``),
        nor a failed add's leftover since (removed as such next round)."""
        now = self.store.pod(pod["name"])
        if (
            not now
            or now.get("created") != pod.get("created")
            or now["state"] != "ready"
            or self.leftover(now)
        ):
            return None
        return now

    def _reattach_again(self, pod):
        """One more try at pod ``pod`` a replay could not attach (under
        ``txn``: a delete meanwhile wins)."""
        with self.txn:
            now = self._still_ready(pod)
            if now is None or pod["name"] not in self.unattached:
                return
            eps = self.store.endpoints(pod=now["name"])
            self._reattach(now, eps, self._kinds(now["name"]), [], "housekeeping")

    def leftover(self, pod) -> bool:
        """Whether store record ``pod`` is what an add or a delete of this
        node left when the store failed during it: 'pending' or 'deleting',
        this node's, or the record of an add undone here that the store
        kept (``failed_adds``, whatever its state); and no add of it
        running now in this process (an add holds ``txn`` throughout; a
        restart's replay removes the 'pending' and 'deleting' records the
        previous run left)."""
        if pod is None or pod["name"] in self.adding:
            return False
        if pod["name"] in self.failed_adds and self.failed_adds[pod["name"]] == pod.get("created"):
            return True  # whatever its state says
        return pod["state"] in UNFINISHED and pod.get("node") in (None, self.config.node)

    def _remove_leftover(self, pod, by: str) -> bool:
        """Remove leftover ``pod`` (see :meth:`leftover`) if it still is one,
        under ``txn``: whatever of it is still on the node, then its
        records. Whether it was removed; the store's error if it fails."""
        name = pod["name"]
        with self.txn:
            now = self.store.pod(name)
            if not self.leftover(now) or now.get("created") != pod.get("created"):
                return False
            self._remove(name, self.store.endpoints(pod=name))
            self.on_removed()
        event(
            f"leftover of a failed pod {_unfinished(now['state'])} removed",
            pod=name,
            state=now["state"],
            by=by,
        )
        return True

    def _gone(self, pod, names) -> Optional[str]:
        """Why pod ``pod`` (a store record) cannot be forwarded for any
        more, or None. ``names``: the interfaces of this namespace."""
        ns_gone = netns_gone(pod)
        if ns_gone:
            return ns_gone
        eps = self.store.endpoints(pod=pod["name"])
        for e in self._veths_missing(self._kinds(pod["name"]), eps, names):
            return f"plane {e['plane']}: veth {e['host_ifname']} is gone"
        return None

    @staticmethod
    def _veths_missing(kinds, eps, names):
        """The veth endpoints among ``eps`` (``kinds``: {plane: kind}) whose
        host end is not among ``names``, the interfaces of this namespace."""
        return [
            e for e in eps if kinds.get(e["plane"], VETH) == VETH and e["host_ifname"] not in names
        ]

    def _vfs_missing(self, name, eps):
        """The VF endpoints of pod ``name`` whose device is not in the pod."""
        from . import vf as vfs

        by_plane = {p.plane: p for p in self._stored_spec(name) if p.kind == VF}
        return [
            e
            for e in eps
            if e["plane"] in by_plane
            and not vfs.in_pod(self.store, by_plane[e["plane"]].options["device"])
        ]

    def _kinds(self, name, pod=None, planes=None) -> Dict[str, str]:
        """{plane: kind} of pod ``name`` as its stored spec says; read as
        recorded if the spec no longer fits the node's configuration, so
        that a memif, vhost-user or VF plane is never taken for a veth (one
        made for it, or the pod removed for lack of it). ``pod``, ``planes``:
        its record and parsed spec, if read already."""
        pod = pod or self.store.pod(name)
        planes = self._stored_spec(name, pod) if planes is None else planes
        if planes or not pod:
            return {p.plane: p.kind for p in planes}
        return _recorded_kinds(pod.get("spec"))

    def _parsed_spec(self, pod):
        """(planes, "") of pod record ``pod``'s spec parsed against the
        node's configuration now, or ([], why it does not parse)."""
        from .podspec import parse_pod_spec

        try:
            return parse_pod_spec(pod["spec"], self.config).planes, ""
        except ConfigError as err:  # the node's configuration changed under it
            return [], str(err)

    def _spec_problem(self, pod) -> str:
        """Why pod record ``pod``'s spec does not parse against the node's
        configuration now ("" if it does)."""
        return self._parsed_spec(pod)[1]

    def _stored_spec(self, name, pod=None):
        """The planes of pod ``name`` as its record (``pod``, else read) says
        ([] if it does not parse against the node's configuration now)."""
        pod = pod or self.store.pod(name)
        return self._parsed_spec(pod)[0] if pod else []

    def _plane_spec(self, name, plane):
        for p in self._stored_spec(name):
            if p.plane == plane:
                return p
        return None

    def _attach_fast(self, name, e, ps, allowed=(), dhcp_server=False, replay=False) -> int:
        """The memif / vhost-user port of pod ``name``'s plane (endpoint
        ``e``), guarded like a veth's (``allowed``: its extra addresses);
        ``replay``: a pod the service has, whose socket directory is its own."""
        from . import fastif
        from .podspec import host_ifname

        net = self.networks[e["network"]]
        with self.lock:  # seen whole or not at all, as _attach_port's
            # in no network until guarded, as a veth's: a pod application
            # already connected (a replay, a client quick on the socket)
            # has no frame pass unchecked
            port, _ = fastif.attach(
                self.engine,
                None,
                name,
                e["plane"],
                ps.kind,
                self.config.pod_socket_dir,
                ps.options,
                ours=replay,
            )
            self.ports[host_ifname(name, e["plane"])] = port
            self.after_port_added(port, f"{name}:{e['plane']}")
            self.owners[host_ifname(name, e["plane"])] = (name, e["plane"])
            if ps.kind == fastif.VHOST_USER:
                self._pins[(name, e["plane"])] = dict(ps.options)
                self._pin_problems.pop((name, e["plane"]), None)
            self._guard_port(port, e, allowed, dhcp_server)
            self.engine.set_port_network(port, net)
            self.engine.fdb_add_local(net, e["mac"], port)
        return port

    def repin_vhost(self):
        """Each vhost-user port's link to its pod's socket made again to the
        socket as it is now (:func:`dataplane.fastif.pin`): a pod whose
        application restarted listens on a new one, which the core then
        reconnects to; one whose path turned into something else (a link
        to another socket) leaves the core nothing to connect to, logged.
        The service calls this once a second."""
        from . import fastif

        with self.lock:
            for key, opts in list(self._pins.items()):
                problem = fastif.pin(self.config.pod_socket_dir, *key, opts)
                was = self._pin_problems.get(key)
                if problem == was:
                    continue
                if problem is None:
                    self._pin_problems.pop(key, None)
                    event("pod socket usable again", pod=key[0], plane=key[1])
                else:
                    self._pin_problems[key] = problem
                    log.warning("%s", problem)

    def _guard_port(self, port: int, e, allowed=(), dhcp_server=False):
        """What pod port ``port`` (endpoint ``e``) may send: with the
        network's anti_spoofing, its MAC and address and ``allowed``, and
        DHCP server messages only if ``dhcp_server``; its floods at the
        network's storm rate."""
        n = self.config.network(e["network"])
        if n.anti_spoofing:
            self.engine.set_port_guard(port, e["mac"], own_addresses(e, allowed, n))
            if dhcp_server:
                self.engine.set_port_dhcp_server(port, True)
        if n.storm_pps:
            self.engine.set_port_storm(port, n.storm_pps, n.storm_burst)

    def guard_plan(self, name: str) -> list:
        """This node's pod ports on network ``name`` with what their guards
        are made from: [(port, endpoint, allowed addresses, DHCP server)].
        Reads the store: called with the pods' transaction held (no pod
        comes or goes until the plan is applied) and without ``lock``."""
        from .podspec import host_ifname

        plan = []
        for pod in self.store.pods(node=self.config.node):
            spec = pod.get("spec") or {}
            allowed = spec.get("allowed_addresses") or {}
            dhcp = set(spec.get("dhcp_server") or ())
            for e in self.store.endpoints(pod=pod["name"]):
                port = self.ports.get(host_ifname(pod["name"], e["plane"]))
                if e["network"] == name and port is not None:  # VFs have none
                    plan.append((port, e, tuple(allowed.get(e["plane"], ())), e["plane"] in dhcp))
        return plan

    def reguard(self, n, plan):
        """The anti-spoofing of network ``n`` (its configuration as a reload
        takes it) on the pod ports of ``plan`` (:meth:`guard_plan`): each
        port's guard in the core and its entry in the express lane, the
        stricter first (switched on: the lane's, switched off: the core's),
        the lane's replaced in place. Their storm control stays as it is. ``lock``
        held. On an error the ports done so far get the old setting back
        before it is raised."""
        done = []
        try:
            for port, e, allowed, dhcp_server in plan:
                done.append((port, e, allowed, dhcp_server))
                self._reguard_one(n, port, e, allowed, dhcp_server)
        except BaseException:
            old = dataclasses.replace(n, anti_spoofing=not n.anti_spoofing)
            for port, e, allowed, dhcp_server in done:
                try:
                    self._reguard_one(old, port, e, allowed, dhcp_server)
                except DataplaneError as err:
                    log.error("port %d: its guard could not be put back: %s", port, err)
            raise

    def _reguard_one(self, n, port, e, allowed, dhcp_server):
        # switched on, the lane's entry first: from the moment the core's
        # guard is on, neither path carries a forged frame (the other way
        # round the lane would, unguarded, after the core's guard was on);
        # switched off, the core first
        lane = port in self.engine.express_ports()
        if n.anti_spoofing and lane:
            self._join_express(port, e, self.networks[e["network"]], allowed, n)
        if n.anti_spoofing:
            self.engine.set_port_guard(port, e["mac"], own_addresses(e, allowed, n))
            self.engine.set_port_dhcp_server(port, dhcp_server)
        else:
            self.engine.set_port_guard(port, None)
        if not n.anti_spoofing and lane:
            self._join_express(port, e, self.networks[e["network"]], allowed, n)

    # -------------------------------------------------------- transactions
    def add_pod(self, name: str, netns: str, spec) -> dict:
        """Attach pod ``name`` (its network namespace ``netns``) as ``spec``
        says; the pod's info (see ``pod_info``). An add that fails is undone
        (:meth:`_roll_back`) and raises its error. An add of a pod this node
        runs already with that spec and namespace changes nothing and
        answers its info with ``unchanged: True``; one with another spec is
        refused, naming what differs (:meth:`_repeated`)."""
        from .podnet import announce, detach_plane
        from .podspec import host_ifname, parse_pod_spec

        check_pod_name(name)
        if not isinstance(netns, str) or not netns.startswith("/"):
            raise ConfigError(
                f"netns: {netns!r} must be a path such as /var/run/netns/NAME or /proc/PID/ns/net"
            )
        try:
            mode = os.stat(netns).st_mode
        except FileNotFoundError:
            raise NotFound(f"netns: {netns} does not exist") from None
        except OSError as e:  # it may exist: not readable (EACCES), a loop, ...
            raise ConfigError(f"netns: {netns}: {e.strerror}") from None
        if not stat.S_ISREG(mode):  # a namespace file is one (nsfs); a FIFO would hang the open
            raise ConfigError(f"netns: {netns} is not a network namespace (not a namespace file)")
        ps = parse_pod_spec(spec, self.config)
        from .fastif import check_node_can

        for p in ps.planes:
            check_node_can(p.kind, p.plane)
        node = self.config.node
        with self.txn:
            # checked again, as the networks are now: a reload may have
            # removed one while this add waited for the lock
            ps = parse_pod_spec(spec, self.config)
            same = self._repeated(name, netns, ps)
            if same is not None:  # the add was done before: nothing to do
                event("pod add repeated: unchanged", pod=name, netns=netns)
                return same
            mark = self.store_mark()  # the veths' mark: read before anything is written
            self._check_macs_free(name, ps)  # refused before anything is written
            floating = self._floating(but=name)  # other pods', by network
            self._check_addresses_free(name, ps, floating)
            self._check_port_slots(name, ps)
            self._put_pod(name, netns, ps)  # intent first
            made = _Made()
            created = None  # the record's, once read back
            self.adding.add(name)
            try:
                for p in ps.planes:
                    n = self.config.network(p.network)
                    # nobody's floating address, this pod's own included, by
                    # itself or by its IPv6 counterpart; nor the node's VTEP
                    avoid = {*floating.get(n.name, ()), *p.allowed}
                    avoid |= {n.ip4_of(a) for a in avoid if ":" in a} - {None}
                    if self.config.vtep is not None:
                        avoid.add(self.config.vtep.ip)
                    ip = self.store.allocate_ip(
                        n.name, n.subnet, n.gateway, name, fixed=p.ip, avoid=avoid
                    )
                    if p.mac:  # reserved for the pair: unique on the node (in the cluster)
                        mac = self.store.reserve_mac(name, p.plane, p.mac)
                    else:  # (one asked for: checked before anything was written)
                        mac = self.store.allocate_mac(name, p.plane)
                        _check_link_local(p, mac, floating)
                    hif = host_ifname(name, p.plane)
                    if p.kind != VETH:
                        self._add_fast_plane(name, netns, p, n, mac, ip, made)
                        continue
                    self.store.add_endpoint(
                        name,
                        p.plane,
                        n.name,
                        p.ifname,
                        hif,
                        mac,
                        ip,
                        node=node,
                        vtep=self.config.vtep.ip,
                    )
                    opening = _PortOpening(self.engine, self.config.kernel_driver)
                    try:
                        self._make_veth(
                            name,
                            netns,
                            p,
                            n,
                            mac,
                            ip,
                            mark,
                            host_end_made=opening.start if opening.early else None,
                        )
                    except BaseException:
                        opening.abandon(self.lock, self.before_port_removed)
                        raise
                    made.add(f"veth {hif}", lambda hif=hif: detach_plane(hif))
                    made.add(f"port of {hif}", lambda hif=hif: self._drop_port(hif))
                    self._attach_port(
                        {
                            "pod": name,
                            "plane": p.plane,
                            "host_ifname": hif,
                            "network": n.name,
                            "mac": mac,
                            "ip": ip,
                        },
                        p.allowed,
                        p.dhcp_server,
                        opening,
                    )
                    announce(netns, p.ifname, mac, ip)
                    self.store.set_endpoint_state(name, p.plane, "ready")
                # the answer, read before the last write: once that is
                # made the pod is added, and no read can fail it
                rec = self.store.pod(name)
                created = rec.get("created")
                info = self._info(dict(rec, state="ready"), self.store.endpoints(pod=name))
                self.store.set_pod_state(name, "ready")
                # remembered under txn: a delete right after the add
                # cannot be undone by a late write of the pod into ``known``
                self._remember(name, info)
            except BaseException as e:
                self._roll_back(name, made, e, created)
                raise
            finally:
                self.adding.discard(name)
        event("pod added", pod=name, netns=netns, planes=[p.plane for p in ps.planes])
        return info

    def _repeated(self, name: str, netns: str, ps) -> Optional[dict]:
        """An add of pod ``name`` that exists already, ready, on this node:
        with the same spec (``ps``) and namespace, its info as the first add
        answered it, with ``unchanged: True`` (a retried add changes
        nothing); with another, AlreadyExists naming every field that
        differs. None if the add is to go on: no such pod, one another node
        runs, a leftover of a failed add or delete (:meth:`_put_pod` says
        what), or one whose namespace is gone (removed here first, as the
        housekeeping would, so the add makes it anew). A plane whose veth is
        gone while the namespace lives is made again first, as the
        housekeeping would (:meth:`_remake_veth`)."""
        old = self.store.pod(name)
        if (
            old is None
            or old["state"] != "ready"
            or old.get("node") not in (None, self.config.node)
            or self.leftover(old)
        ):
            return None
        why = self._gone(old, _Present())
        if why and not netns_gone(old):  # a veth deleted: made again, as
            eps = self.store.endpoints(pod=name)  # the housekeeping would
            for e in self._veths_missing(self._kinds(name), eps, _Present()):
                self._remake_veth(old, e, "a new add")
            why = self._gone(old, _Present())
            if why:  # not made again: the pod stays, its other planes forward on
                self._same_spec(name, old, netns, ps)
                raise DataplaneError(
                    f"pod {name} exists with this spec, but {why} and could not be made "
                    "again (the service's log says why; the housekeeping tries again every "
                    "5 s); its other planes forward on"
                )
        if why:
            self._remove(name, self.store.endpoints(pod=name))
            self.on_removed()
            warning_event("pod removed: its interfaces are gone", pod=name, why=why, by="a new add")
            return None
        self._same_spec(name, old, netns, ps)
        return dict(self.pod_info(name), unchanged=True)

    def _same_spec(self, name: str, old, netns: str, ps):
        """AlreadyExists naming every field in which an add of ``netns`` and
        spec ``ps`` differs from pod ``name``'s record ``old``."""
        diffs = self._spec_differences(old, netns, ps)
        if diffs:
            raise AlreadyExists(
                f"pod {name} exists already on node {self.config.node} with another spec: "
                f"{'; '.join(diffs)} (delete it first to change it; an add with the spec it "
                "has changes nothing)"
            )

    def _spec_differences(self, old, netns: str, ps) -> List[str]:
        """How an add of ``netns`` and spec ``ps`` differs from pod record
        ``old``: one text per field, named as the spec names it."""
        from .podspec import parse_pod_spec

        out = []
        if not _same_netns(old["netns"], netns):
            out.append(f"netns is {old['netns']}, this add asks for {netns}")
        try:
            have = parse_pod_spec(old["spec"], self.config)
        except ConfigError as e:  # the node's configuration changed under it
            return out + [f"its recorded spec no longer fits the node's configuration ({e})"]
        if have.pod_type != ps.pod_type:
            out.append(f"pod_type is {have.pod_type}, this add asks for {ps.pod_type}")
        planes = [p.plane for p in have.planes]
        asked = [p.plane for p in ps.planes]
        if set(planes) != set(asked):
            out.append(
                f"network_plane is [{', '.join(planes)}], this add asks for [{', '.join(asked)}]"
            )

        def show(v):
            if isinstance(v, bool):
                return "yes" if v else "no"
            if v is None or v == () or v == {}:
                return "none"
            if isinstance(v, tuple):
                return "[" + ", ".join(v) + "]"
            if isinstance(v, dict):
                return "{" + ", ".join(f"{k}: {x}" for k, x in sorted(v.items())) + "}"
            return str(v)

        for a in have.planes:
            b = ps.plane(a.plane)
            if b is None:
                continue
            for field, what in (
                ("networks", lambda p: p.network),
                ("interfaces", lambda p: p.ifname),
                ("interfaces kind", lambda p: p.kind),
                ("interfaces options", lambda p: p.options),
                ("ips", lambda p: p.ip),
                ("macs", lambda p: p.mac),
                ("allowed_addresses", lambda p: p.allowed),
                ("dhcp_server", lambda p: p.dhcp_server),
            ):
                x, y = what(a), what(b)
                if x != y:
                    key, _, part = field.partition(" ")
                    out.append(
                        f"{key}.{a.plane}{' ' + part if part else ''} is {show(x)}, "
                        f"this add asks for {show(y)}"
                    )
        return out

    def _put_pod(self, name: str, netns: str, ps):
        """Record pod ``name``, 'pending'. A leftover of this node's failed
        add or delete of that name (:meth:`leftover`) is removed first;
        AlreadyExists, saying what it is, if another pod has the name or the
        leftover cannot be removed now."""
        node = self.config.node
        nid = netns_identity(netns)
        try:
            self.store.put_pod(name, netns, ps.to_dict(), node=node, netns_id=nid)
            return
        except AlreadyExists as e:
            old = self.store.pod(name)
            if old is None:  # deleted meanwhile
                pass
            elif self.leftover(old):
                try:
                    self._remove_leftover(old, "a new add of the same name")
                except DataplaneError as err:
                    raise AlreadyExists(
                        f"pod {name} exists already on node {node}: it is what a failed "
                        f"{_unfinished(old['state'])} left ({old['state']}), which is being removed, but that failed "
                        f"now ({err}); the node's housekeeping tries again every few seconds: "
                        "add it again then"
                    ) from None
            elif old["state"] in UNFINISHED:
                doing = "added" if old["state"] == "pending" else "deleted"
                raise AlreadyExists(
                    f"{e} ({old['state']}: being {doing} there, or what a failed "
                    f"{_unfinished(old['state'])} left, which that "
                    "node removes once its store answers)"
                ) from None
            else:
                raise
        self.store.put_pod(name, netns, ps.to_dict(), node=node, netns_id=nid)

    def _roll_back(self, name: str, made: "_Made", err: BaseException, created=None):
        """Undo a failed add of pod ``name``: what it made on this node
        (``made``), which needs no store, then its records, best effort:
        records a store that does not answer keeps are removed by the
        housekeeping once it answers (:meth:`reap`) - 'pending', or
        'ready' if the store applied the add's last write as it failed,
        known as a leftover by ``created`` (its record's creation time,
        None if not read back: the record is then 'pending')."""
        failed = made.undo()
        self._forget(name)
        event("pod add failed: undone on this node", pod=name, error=str(err), not_undone=failed)
        if created is not None:  # until its records are gone: a leftover, whatever they say
            self.failed_adds[name] = created
        if any(f.startswith("vf ") for f in failed):  # their records are the way back
            log.warning("pod %s: records kept: the housekeeping gives its VFs back", name)
            return
        try:
            self._delete_records(name)
        except Exception as e:  # noqa: BLE001 - the add's own error is what is raised
            log.warning(
                "pod %s: the records of its failed add stay in the store (%s); they are "
                "removed once it answers",
                name,
                e,
            )

    def _drop_port(self, hif: str):
        """Remove the core port of host interface ``hif``, if it has one."""
        with self.lock:  # gone whole, as _attach_port made it
            port = self.ports.pop(hif, None)
            self.owners.pop(hif, None)
            if port is not None:
                self.before_port_removed(port)
                self.engine.del_port(port)

    def _drop_fast(self, name: str, plane: str, kind: Optional[str] = None):
        """Remove the memif or vhost-user port of pod ``name``'s ``plane``
        (if it has one); a memif socket with it if ``kind`` says memif
        (:func:`dataplane.fastif.detach`). The pod's directory stays: it
        goes with the pod."""
        from . import fastif
        from .podspec import host_ifname

        with self.lock:
            port = self.ports.pop(host_ifname(name, plane), None)
            self.owners.pop(host_ifname(name, plane), None)
            self._pins.pop((name, plane), None)
            self._pin_problems.pop((name, plane), None)
            if port is not None:
                self.before_port_removed(port)
            fastif.detach(self.engine, port, self.config.pod_socket_dir, name, plane, kind)

    def _floating(self, but: str) -> Dict[str, Dict[str, str]]:
        """{network: {address: pod}} of the IPv4 and IPv6 addresses pods
        other than ``but`` may also send from (their allowed_addresses, as
        recorded: normalised), cluster-wide: one pass over the pods'
        records. The allocator skips the IPv6 ones (not its to give)."""
        out: Dict[str, Dict[str, str]] = {}
        for pod in self.store.pods():
            spec = pod.get("spec") or {}
            if pod["name"] == but or not spec.get("allowed_addresses"):
                continue
            nets = spec.get("networks") or {}
            for plane, addrs in spec["allowed_addresses"].items():
                if plane in nets:
                    out.setdefault(nets[plane], {}).update({a: pod["name"] for a in addrs})
        return out

    def _check_port_slots(self, name: str, ps):
        """ResourceError unless the core has a port slot for each of pod
        ``name``'s planes that takes one (a veth's, memif's, vhost-user's;
        not a VF's), refused before anything is written: the node is full."""
        from .engine import lib

        need = sum(1 for p in ps.planes if p.kind != VF)
        if self.engine is None or not need:  # no core (the store's side alone)
            return
        free = self.engine.free_port_slots()
        if need > free:
            raise ResourceError(
                f"node {self.config.node} is full: pod {name} needs {need} of the core's "
                f"port slots (one per plane but a VF's), {free} of its {lib.DP_MAX_PORTS} "
                "are free; add the pod on another node, or delete pods here"
            )

    def _check_addresses_free(self, name: str, ps, floating):
        """ConfigError if the spec would let one pod answer for another: an
        allowed (floating) address that is another pod's own address (its
        IPv4 one, on a dual-stack network that one's IPv6 counterpart,
        NetworkConfig.ip6_of, and the IPv6 link-local address its MAC gives
        it on any network), or a fixed address that is, or whose IPv6
        counterpart is, another pod's floating one (``floating``: other
        pods' by network, :meth:`_floating`). Pods may share a floating
        address (a VRRP pair does)."""
        for p in ps.planes:
            n = self.config.network(p.network)
            if p.allowed:
                owners = {}  # address -> (pod, "IPv6 " for a counterpart)
                for a in self.store.allocations(p.network):
                    if a["pod"] != name:
                        owners[a["ip"]] = (a["pod"], "")
                        ip6 = n.ip6_of(a["ip"])
                        if ip6:
                            owners[ip6] = (a["pod"], "IPv6 ")
                # the link-local address each interface's kernel makes from
                # its MAC (EUI-64), which the guard lets its pod use
                for e in self.store.endpoints(network=p.network):
                    if e["pod"] != name and e.get("mac"):
                        ll = str(ipv6_link_local(bytes.fromhex(e["mac"].replace(":", ""))))
                        owners[ll] = (e["pod"], "IPv6 link-local ")
                for i, addr in enumerate(p.allowed):
                    if addr in owners:
                        pod, what = owners[addr]
                        raise ConfigError(
                            f"allowed_addresses.{p.plane}[{i}]: {addr} is the {what}address of "
                            f"pod {pod} on network {p.network}"
                        )
            if p.mac:  # before anything is written (a derived one: once derived)
                _check_link_local(p, p.mac, floating)
            if p.ip:
                held = floating.get(p.network, {})
                holder = held.get(p.ip)
                if holder:
                    raise ConfigError(
                        f"ips.{p.plane}: {p.ip} is a floating address of pod {holder} on "
                        f"network {p.network} (its allowed_addresses)"
                    )
                ip6 = n.ip6_of(p.ip)
                holder = held.get(ip6) if ip6 else None
                if holder:
                    raise ConfigError(
                        f"ips.{p.plane}: {p.ip} gives the pod IPv6 address {ip6}, a floating "
                        f"address of pod {holder} on network {p.network} (its allowed_addresses)"
                    )

    def _check_macs_free(self, name: str, ps):
        """ConfigError if a MAC the spec asks for is another endpoint's (a
        local or remote pod's, requested or derived), or one the core
        learned on the plane's network from the underlay (a host behind a
        kernel VTEP: the pod would take its traffic)."""
        want = {p.mac: p.plane for p in ps.planes if p.mac}
        if not want:
            return
        for e in self.store.endpoints():
            plane = want.get(e["mac"])
            if plane is not None and (e["pod"], e["plane"]) != (name, plane):
                raise ConfigError(
                    f"macs.{plane}: {e['mac']} is the MAC of pod {e['pod']} plane "
                    f"{e['plane']} already"
                )
        for p in ps.planes:
            if not p.mac:
                continue
            for e in self.engine.fdb_list(self.networks[p.network], p.mac):
                if e.learned:
                    raise ConfigError(
                        f"macs.{p.plane}: {e.mac} is a MAC this node learned on network "
                        f"{p.network} from the underlay, behind VTEP {e.vtep}: a host there "
                        "has it; give the pod another"
                    )

    def _give_back_vfs(self, name, planes):
        """Every VF pod ``name`` holds, back to the node as it was: those
        its spec's ``planes`` name, and those the node's list of held
        devices says it holds (a recorded spec the node's configuration no
        longer takes names none; records from before the list exist)."""
        from . import vf as vfs

        devices = [p.options["device"] for p in planes if p.kind == VF]
        devices += [d for d in vfs.held_devices(self.store) if d not in devices]
        for device in devices:
            try:
                rec = vfs.holder(self.store, device)
                if rec and rec["pod"] == name:
                    vfs.give_back(self.store, device)
            except Exception as err:  # noqa: BLE001 - a netlink error too: the next VF, plane
                log.warning(
                    "giving back vf %s of pod %s: %s",
                    device,
                    name,
                    _why(err),
                    extra={"fields": {"pod": name, "device": device}},
                )

    def _add_fast_plane(self, name, netns, p, n, mac, ip, made: _Made):
        """A plane that is not a veth: recorded first, then made (and put in
        ``made``)."""
        from . import fastif

        e = {"plane": p.plane, "network": n.name, "mac": mac, "ip": ip}
        vf = p.kind == VF  # not behind this node's VTEP: the NIC switches it
        self.store.add_endpoint(
            name,
            p.plane,
            n.name,
            p.ifname if vf else None,
            None,
            mac,
            ip,
            node=self.config.node,
            vtep=None if vf else self.config.vtep.ip,
        )
        if p.kind in SOCKET_KINDS:
            base = self.config.pod_socket_dir
            if not any(w == "socket directory" for w, _ in made.steps):  # undone last
                made.add("socket directory", lambda: fastif.remove_pod_dir(base, name))
            made.add(
                f"{p.kind} port of plane {p.plane}",
                lambda plane=p.plane: self._drop_fast(name, plane),
            )
            self._attach_fast(name, e, p, p.allowed, p.dhcp_server)
        if vf:
            from . import vf as vfs

            dev = p.options["device"]
            ours = {self.config.vtep.uplink_ifname} | {
                x["host_ifname"] for x in self.store.endpoints(node=self.config.node)
            }
            vfs.refuse_own(dev, ours, [self.config.vtep.uplink_pci])
            vfs.take(
                self.store,
                name,
                p.plane,
                p.options["device"],
                netns,
                p.ifname,
                mac,
                f"{ip}/{n.prefixlen}",
                n.gateway,
                n.mtu,
                p.default_route,
                p.options,
                ip6_cidr=n.ip6_cidr_of(ip),
                gateway6=n.gateway6,
            )  # given back by take itself if it fails
            made.add(f"vf {dev}", lambda: vfs.give_back(self.store, dev))
        self.store.set_endpoint_state(name, p.plane, "ready")

    def _remove(self, name, eps):
        """Detach what is left of pod ``name`` (ports, interfaces) and forget it."""
        self._detach(name, eps)
        self._delete_records(name)

    def _delete_records(self, name: str):
        """Pod ``name``'s records out of the store, and with them what this
        service remembered of a failed add of it (``failed_adds``)."""
        self.store.delete_pod(name)
        self.failed_adds.pop(name, None)

    def _detach(self, name, eps, pod=None):
        """Detach what is left of pod ``name`` (ports, interfaces, VFs,
        sockets; ``eps``: its endpoints, ``pod``: its record if read
        already); its records stay. The store is asked nothing else, but
        for the VFs' records."""
        pod = pod or self.store.pod(name)
        planes = self._stored_spec(name, pod)
        self._give_back_vfs(name, planes)
        self._detach_planes(name, eps, self._kinds(name, pod, planes))

    def _detach_planes(self, name, eps, kinds):
        """Detach pod ``name``'s planes (``eps``: their endpoints, or what
        the API showed of them: plane and host_ifname; ``kinds``: {plane:
        kind}, a veth where not said; a VF's is left to its records), then
        its socket directory, and forget it."""
        from . import fastif
        from .podnet import detach_plane

        for e in eps:
            if kinds.get(e["plane"], VETH) == VF:
                continue
            # each step on its own: one that fails (a netlink error as well as
            # ours) is logged, and the pod's other steps and planes still run
            if kinds.get(e["plane"], VETH) in SOCKET_KINDS:
                try:
                    self._drop_fast(name, e["plane"])
                except Exception as err:  # noqa: BLE001
                    log.warning("removing %s plane %s: %s", name, e["plane"], _why(err))
                continue
            hif = e["host_ifname"]
            try:
                self._drop_port(hif)
            except Exception as err:  # noqa: BLE001
                log.warning("removing port %s of pod %s: %s", hif, name, _why(err))
            try:
                detach_plane(hif)
            except Exception as err:  # noqa: BLE001
                log.warning("removing %s of pod %s: %s", hif, name, _why(err))
        if any(k in SOCKET_KINDS for k in kinds.values()):
            try:
                fastif.remove_pod_dir(self.config.pod_socket_dir, name)
            except Exception as err:  # noqa: BLE001
                log.warning("removing the socket directory of pod %s: %s", name, _why(err))
        self._forget(name)  # detached: not this node's any more

    def _forget(self, name: str):
        """Pod ``name`` out of what this service knows of its pods."""
        with self._known_lock:
            self.known.pop(name, None)
            self.known_at.pop(name, None)
        self.unattached.pop(name, None)

    def del_pod(self, name: str) -> dict:
        """Detach pod ``name``; NotFound unless this node runs it. The store
        is told first ('deleting'): a store that fails before the pod is
        detached fails the delete, and nothing changed. Once detached, the
        pod is deleted: if only the removal of its records fails, the answer
        says so in ``records_left`` and the housekeeping (:meth:`reap`)
        removes them once the store answers."""
        with self.txn:
            pod = self.store.pod(name)
            if not pod:
                raise NotFound(f"pod {name} is not attached to this node")
            if pod.get("node") not in (None, self.config.node):
                raise NotFound(
                    f"pod {name} is not attached to this node: node {pod['node']} runs it "
                    "(delete it there)"
                )
            eps = self.store.endpoints(pod=name)
            if pod["state"] != "deleting":
                try:
                    self.store.set_pod_state(name, "deleting")  # intent first
                except DataplaneError as e:
                    raise type(e)(
                        f"pod {name} is not deleted, it is still attached: {e} (had the store "
                        "recorded the delete before it failed, the node finishes it once the "
                        "store answers)",
                        e.errno,
                    ) from e
            self._detach(name, eps, pod)
            left = None
            try:
                self._delete_records(name)
            except Exception as e:  # noqa: BLE001 - detached: deleted, records wait
                left = (
                    f"the pod is detached from this node, but its records stay in the store "
                    f"until it answers ({e}); the node removes them then"
                )
            self.on_removed()
        if left:
            event("pod deleted; its records are removed once the store answers", pod=name)
            return {"deleted": name, "records_left": left}
        event("pod deleted", pod=name)
        return {"deleted": name}

    # -------------------------------------------------------------- reads
    def pod_info(self, name: str, remember: bool = False) -> dict:
        pod = self.store.pod(name)
        if not pod:
            raise NotFound(f"pod {name} is not attached")
        return self._info(pod, self.store.endpoints(pod=name), remember)

    def _listed(self, name: str) -> Optional[dict]:
        """Pod ``name`` as a listing shows it; None if it was deleted since
        the listing read the store's pods (a delete, a CNI DEL or the
        reaper's, meanwhile)."""
        try:
            return self.pod_info(name)
        except NotFound:
            return None

    def _info(self, pod, eps, remember: bool = False) -> dict:
        """Pod record ``pod`` with its endpoints ``eps`` as the API shows
        it. If it is this node's: remembered (``known``) when ``remember``
        (an add or a replay attached it), else only refreshed there if it
        is known already (a read)."""
        name = pod["name"]
        info = {
            "name": name,
            "netns": pod["netns"],
            "state": pod["state"],
            "planes": [
                {k: e[k] for k in ("plane", "network", "ifname", "host_ifname", "mac", "ip")}
                | {"ip6": self._ip6(e), "port": self.ports.get(e["host_ifname"])}
                | self._plane_extra(name, e)
                for e in eps
            ],
        }
        if pod.get("node") in (None, self.config.node):
            why = self.unattached.get(name)  # (the reaper may re-attach it meanwhile)
            if why is not None:
                info["not_attached"] = why  # no forwarding, and why
            self._remember(name, info, refresh=not remember)
        return info

    def _remember(self, name: str, info: dict, refresh: bool = False):
        """Pod ``name``'s ``info`` (:meth:`_info`) in ``known``: an add or a
        replay made it; ``refresh``: only if it is known already (a read,
        which must not bring back a pod a delete removed meanwhile)."""
        with self._known_lock:
            if not refresh or name in self.known:
                self.known[name] = info
                self.known_at[name] = time.time()

    def _ip6(self, e) -> Optional[str]:
        """Endpoint ``e``'s IPv6 address: on a dual-stack network of this
        node's configuration, its IPv4 address's counterpart there."""
        n = self.config.network(e["network"])
        return n.ip6_of(e["ip"]) if n else None

    def _plane_extra(self, name, e) -> dict:
        """A plane's kind and what the pod's application needs to use it."""
        from . import fastif
        from .podspec import host_ifname

        ps = self._plane_spec(name, e["plane"])
        kind = ps.kind if ps else self._kinds(name).get(e["plane"], VETH)
        out = {"kind": kind}
        if kind == VETH:
            return out
        n = self.config.network(e["network"])
        out |= {
            "prefixlen": n.prefixlen if n else None,
            "gateway": n.gateway if n else None,
            "prefixlen6": n.prefixlen6 if n else None,
            "gateway6": n.gateway6 if n else None,
            "mtu": n.mtu if n else None,
        }
        if kind == VF and ps is None:  # a spec that no longer parses: not known
            out |= {"device": None, "pci": None}
        elif kind == VF:
            from . import vf as vfs

            rec = vfs.holder(self.store, ps.options["device"]) or {}
            out |= {"device": ps.options["device"], "pci": rec.get("pci")}
        if kind in SOCKET_KINDS:
            out["socket"] = fastif.socket_path(self.config.pod_socket_dir, name, e["plane"])
            out["port"] = self.ports.get(host_ifname(name, e["plane"]))
        return out

    def list_pods(self) -> List[dict]:
        """This node's pods (``pod_info``), from the store. If it does not
        answer (within ``reach.PROBE_WAIT_S``, each read within
        ``reach.VIEW_WAIT_S``): the pods as this service last recorded or
        read them, each with ``store_error`` (why the store is not read,
        what that means) and ``as_of`` (when it was last read or changed)."""
        err = reach.probe(self.store)
        if err is None:
            try:
                with reach.bounded(self.store):
                    return [
                        info
                        for p in self.store.pods(node=self.config.node)
                        if (info := self._listed(p["name"])) is not None
                    ]
            except reach.NOT_SERVED as e:
                err = str(e)
        msg = reach.down_message(
            self.store,
            err,
            "the pods are listed as this service attached them (it records every change of "
            "them, so none is left out); pods cannot be added or deleted until it answers; "
            "the core forwards on",
        )
        with self._known_lock:  # filled and emptied together: read together
            known = [(name, info, self.known_at[name]) for name, info in self.known.items()]
        out = []
        for name, info, at in sorted(known, key=lambda k: k[0]):
            planes = [dict(p) for p in info["planes"]]
            for p in planes:  # the port is the core's: known here, now
                if p.get("kind", VETH) == VETH:
                    p["port"] = self.ports.get(p["host_ifname"])
            out.append(dict(info, planes=planes, store_error=msg, as_of=round(at, 3)))
        return out

    def port_owners(self) -> Dict[int, Tuple[str, str]]:
        """{core port: (pod, plane)} of this node's pods' ports."""
        return {
            port: self.owners[hif] for hif, port in list(self.ports.items()) if hif in self.owners
        }

    def local_endpoints(self) -> List[dict]:
        """The planes of this node's pods as last recorded or read (no store
        read): [{pod, plane, network, mac, node}]."""
        return [
            {
                "pod": name,
                "plane": p["plane"],
                "network": p["network"],
                "mac": p["mac"],
                "node": self.config.node,
            }
            for name, info in list(self.known.items())
            for p in info["planes"]
        ]
