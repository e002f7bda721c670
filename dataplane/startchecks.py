"""What a start checks beyond the config file itself, in one place, so that
``dataplane check`` finds what ``dataplane run`` would refuse, with the
same words:

    errors, warnings = store_findings(cfg, store)   # the state store's records
    notes = uplink_notes(cfg)                       # the kernel uplink, now
    why = uplink_in_use(cfg)                        # another service's uplink?
    report = check_store(cfg)                       # dataplane check: the store read only

Refused (``run`` stops before anything is attached; ``check`` fails): a
kernel uplink another running service holds (``uplink_in_use``), a
network the config dropped while pods of the node are on it, a network the
store cannot take (a VNI another network has, a subnet that leaves
allocated addresses outside it, a new gateway, network or broadcast address
that is a pod's address), and, with a cluster store, the node's name held
by a running service of another host or VTEP. Said, not refused: a
gateway that was a pod's address already, pods of another node name in the
node's own store (on a cluster's store: those of a node name not running whose
veths on this host are marked as made on this store), and an uplink that is missing, down or too small now
(the service starts without it and takes it when it can).
"""

import ipaddress
import os
import socket
from typing import List, NamedTuple, Optional, Tuple

from .config import NodeConfig
from .errors import DataplaneError, NotFound
from .netutil import same_ip
from .podnet import link_state
from .store import reach
from .store.common import reserved_held

#: how long ``dataplane check`` waits for a cluster store (etcd), a request
CHECK_WAIT_S = 2.0

#: where a service holds a lock file per kernel uplink interface while it
#: runs (:func:`uplink_lock_path`)
UPLINK_LOCK_DIR = "/run/dataplane"


def uplink_lock_path(cfg: NodeConfig) -> Optional[str]:
    """The lock file a service holds for its kernel uplink while it runs:
    ``/run/dataplane/uplink-IFNAME@netns-INODE.lock``, INODE the network
    namespace's (``stat -L -c %i /proc/self/ns/net``): an interface name is
    a namespace's own, and services in two namespaces may each have an
    ``eth1``. None for a DPDK uplink (its driver holds the device)."""
    name = cfg.vtep.uplink_ifname
    if name is None:
        return None
    netns = os.stat("/proc/self/ns/net").st_ino
    return os.path.join(UPLINK_LOCK_DIR, f"uplink-{name}@netns-{netns}.lock")


def uplink_lock_text(api_socket: str) -> str:
    """What a service writes into its uplink's lock file: its pid and its
    API socket, a line each."""
    return f"{os.getpid()}\n{api_socket}\n"


def uplink_taken(ifname: str, holder: str) -> str:
    """The refusal of a start whose kernel uplink another running service
    holds; ``holder``: the lock file's text (pid, API socket)."""
    lines = holder.splitlines()
    pid = lines[0].strip() if lines else ""
    sock = lines[1].strip() if len(lines) > 1 else ""
    return (
        f"vtep.uplink: {ifname} is the uplink of another running node service (pid "
        f"{pid or '?'}, api socket {sock or '?'}): two services on one interface would each "
        "take the other's frames; give this node its own uplink, or stop that service first"
    )


def uplink_in_use(cfg: NodeConfig) -> Optional[str]:
    """``dataplane check``: :func:`uplink_taken` if a running service other
    than the one of ``cfg``'s API socket holds the kernel uplink's lock file
    now, else None. Read only: the lock is looked up in /proc/locks, never
    taken (a file left by a process gone is not held)."""
    path = uplink_lock_path(cfg)
    if path is None:
        return None
    try:
        with open(path) as f:
            st = os.fstat(f.fileno())
            text = f.read(4096)
    except OSError:
        return None
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            held = any(ln.split()[5] == ident for ln in f if len(ln.split()) > 5)
    except OSError:
        return None
    lines = text.splitlines()
    if not held or len(lines) < 2:
        return None
    if os.path.abspath(lines[1].strip()) == os.path.abspath(cfg.api_socket):
        return None  # this node's own running service
    return uplink_taken(cfg.vtep.uplink_ifname, text)


def store_findings(cfg: NodeConfig, store, claim: bool = False) -> Tuple[List[str], List[str]]:
    """(what a start refuses, what it only says) from the records of
    ``store`` (reads only). ``claim``: also whether the node's name is held
    by another service (``run`` finds that as it claims the name)."""
    errors, warnings = [], []
    if claim:
        why = store.claim_problem(cfg.node, cfg.vtep.ip, socket.gethostname())
        if why:
            errors.append(why)
    errors += networks_in_use(cfg, store)
    for n in cfg.networks:
        try:
            store.put_network(
                n.name,
                n.vni,
                n.plane,
                n.subnet,
                n.gateway,
                n.mtu,
                check_only=True,
                subnet6=n.subnet6,
            )
        except ConnectionError:  # EtcdUnavailable: the caller says so
            raise
        except DataplaneError as e:
            errors.append(str(e))
            continue
        old = store.network(n.name)
        if old is None or not n.gateway:
            continue
        allocs = [(a["ip"], a["pod"]) for a in store.allocations(n.name)]
        _, kept = reserved_held(ipaddress.IPv4Network(n.subnet), n.gateway, allocs, old)
        for what, ip, pod in kept:
            if what == "gateway":
                warnings.append(
                    f"network {n.name}: its gateway {ip} is also the address of pod {pod} (it "
                    "had it before the gateway was set): the pod answers for the gateway on "
                    f"this network; give the network another gateway, or delete the pod "
                    f"('dataplane pod del {pod}')"
                )
    w = others_pods(cfg, store)
    if w:
        warnings.append(w)
    return errors, warnings


def networks_in_use(cfg: NodeConfig, store) -> List[str]:
    """One message for each network the config no longer has that pods of
    this node are attached to, naming every such pod: their replay could
    not attach them, and the service would not start to let them be
    deleted."""
    have = {n.name for n in cfg.networks}
    users = {}  # network -> [(pod, plane)]
    for pod in store.pods(node=cfg.node):
        for e in store.endpoints(pod=pod["name"]):
            if e["network"] not in have:
                users.setdefault(e["network"], []).append((pod["name"], e["plane"]))
    out = []
    for net, on in sorted(users.items()):
        pods = sorted({p for p, _ in on})
        many = len(pods) > 1
        out.append(
            f"networks: {net} is not in the config, but pod{'s' * many} "
            + ", ".join(f"{p} (plane {pl})" for p, pl in on)
            + f" on this node {'are' if many else 'is'} attached to it; put the network back, "
            f"delete the pod{'s' * many} ("
            + ", ".join(f"'dataplane pod del {p}'" for p in pods)
            + "), then remove the network"
        )
    return out


def others_pods(cfg: NodeConfig, store) -> Optional[str]:
    """A node's own store (SQLite) that holds pods of another node name and
    none of this one: the node was renamed (``node:``, or the host name it
    defaults to), and those pods are not replayed. Said, not guessed at: the
    operator renames it back or deletes them. On a cluster's store (etcd),
    where other nodes' pods are recorded too: :func:`others_veths`."""
    if cfg.store.kind != "sqlite":
        return others_veths(cfg, store)
    if store.pods(node=cfg.node):
        return None
    others = sorted({p.get("node") for p in store.pods()} - {None, cfg.node})
    if not others:
        return None
    return (
        f"node: the state store {cfg.store.path} has pods of node {', '.join(others)} and none "
        f"of node {cfg.node}: they are not replayed (was the node renamed? 'node:' defaults "
        "to the host name); give the node its old name back, or, with the service running, "
        "forget the old name's pods and their veths: "
        + ", ".join(f"'dataplane node remove {o}'" for o in others)
    )


def others_veths(cfg: NodeConfig, store) -> Optional[str]:
    """A cluster's store (etcd): pods recorded under another node name,
    which no running service holds, whose veths are on this host (this
    network namespace), marked as made by a service of that name on this
    store (their alias, :func:`dataplane.podnet.plane_alias`) - an old name
    of this node, renamed: its pods are not replayed, and their veths hold
    their names. Another node's pods live on other hosts, and a running
    node's veths are its own: neither is said. Reads only (the store's
    identity is not made here: a store without one has no marked veth)."""
    from .podnet import marked_veths, parse_alias
    from .store.base import STORE_ID

    mark = (store.get_meta(STORE_ID) or "")[:8]
    if not mark:
        return None
    try:
        veths = marked_veths()
    except Exception:  # noqa: BLE001 - a warning's look-up: never a reason to stop
        return None
    marked = {}  # old node name -> [(pod, whole)]
    for _, _, alias in veths:
        node, store_mark, _, pod, whole = parse_alias(alias)
        if store_mark == mark and node != cfg.node:
            marked.setdefault(node, []).append((pod, whole))
    if not marked:
        return None
    running = {c.get("node") for c in store.node_claims()}
    found = {}  # old node name -> its recorded pods with veths here
    for old, on in sorted(marked.items()):
        if old in running:
            continue
        # its pods' records name this node's VTEP: an old name of this node
        # (another node's service that ran beside this one keeps its own)
        recorded = {
            e.get("pod") for e in store.endpoints(node=old) if same_ip(e.get("vtep"), cfg.vtep.ip)
        }
        pods = {
            r
            for r in recorded
            for pod, whole in on
            if r == pod or (not whole and r.startswith(pod))
        }
        if pods:
            found[old] = sorted(pods)
    if not found:
        return None
    return (
        f"node: the cluster's store ({reach.where(store)}) has pods of node "
        + ", ".join(f"{o} ({', '.join(p)})" for o, p in found.items())
        + ", a name no running service holds, with veths on this host marked as made here on "
        f"this store; this service runs as node {cfg.node}: they are not replayed (was the "
        "node renamed? 'node:' defaults to the host name); give the node its old name back, "
        "or, with the service running, forget the old name's pods and their veths: "
        + ", ".join(f"'dataplane node remove {o}'" for o in found)
    )


def metrics_problem(cfg: NodeConfig) -> Optional[str]:
    """Why the service could not listen on ``metrics.listen``, as far as
    can be told without taking the port (a running service may hold it):
    a host name that does not resolve, an address that is not this
    host's. None if neither."""
    m = cfg.metrics
    if m.listen is None:
        return None
    try:
        family, _, _, _, addr = socket.getaddrinfo(m.host, m.port, type=socket.SOCK_STREAM)[0]
    except OSError as e:  # socket.gaierror
        return f"metrics.listen: {m.listen}: {m.host} does not resolve ({e.strerror or e})"
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((addr[0], 0, *addr[2:]))  # any port: the address alone
        except OSError as e:
            return (
                f"metrics.listen: {m.listen}: {addr[0]} is not an address of this host "
                f"({e.strerror or e})"
            )
    return None


def uplink_notes(cfg: NodeConfig) -> List[str]:
    """What keeps a kernel uplink from carrying frames now (missing, down,
    without carrier, an MTU below ``vtep.underlay_mtu``): none of it stops
    a start - the service attaches the uplink once it can - but frames to
    the underlay wait for it."""
    v = cfg.vtep
    if v.uplink_kind != "kernel":
        return []
    name = v.uplink_ifname
    st = link_state(name)
    if st is None:
        return [
            f"vtep.uplink: {name}: no such interface in this network namespace now: the "
            "service starts without it (pods of the node reach each other, nothing reaches "
            "the underlay) and attaches it once it exists and is up"
        ]
    _, up, carrier, mtu = st
    if not up:
        return [f"vtep.uplink: {name} is down now: frames to the underlay wait until it is up"]
    if not carrier:
        return [f"vtep.uplink: {name} has no carrier now: frames to the underlay wait for it"]
    if mtu < v.underlay_mtu:
        return [
            f"vtep.uplink: {name} has MTU {mtu}, below vtep.underlay_mtu {v.underlay_mtu}: "
            "full-size pod frames would be dropped by the device after encapsulation"
        ]
    return []


class StoreReport(NamedTuple):
    errors: List[str]  # what 'dataplane run' would refuse
    warnings: List[str]  # what it would say at start; or why the store was not read
    read: Optional[str]  # what was read ("sqlite /path: 3 pods of node n1"), None if nothing


def check_store(cfg: NodeConfig) -> StoreReport:
    """``dataplane check``: the configured store read - the SQLite file
    read only (no lock, no write, not even of a new file; a running
    service is not disturbed), etcd with requests of at most
    ``CHECK_WAIT_S`` - and :func:`store_findings` applied."""
    from .store import open_store

    kind = cfg.store.kind
    try:
        if kind == "sqlite":
            store = open_store(cfg.store, cfg.node, read_only=True)
        else:
            store = open_store(cfg.store, cfg.node, timeout=CHECK_WAIT_S)
    except NotFound:
        return StoreReport(
            [], [], f"sqlite {cfg.store.path}: no state file yet, no pod recorded to check against"
        )
    except ConnectionError as e:  # EtcdUnavailable
        if getattr(e, "tls", False):  # a configuration to fix, not an outage to wait out
            return StoreReport(
                [
                    f"store: {e}: fix store.tls (or the members' certificates); 'dataplane "
                    "run' does not start while no member can be spoken to"
                ],
                [],
                None,
            )
        return StoreReport([], [_not_read(cfg, str(e))], None)
    try:
        with reach.bounded(store, CHECK_WAIT_S):
            errors, warnings = store_findings(cfg, store, claim=True)
            pods = len(store.pods(node=cfg.node))
    except ConnectionError as e:
        return StoreReport([], [_not_read(cfg, str(e))], None)
    finally:
        store.close()
    return StoreReport(
        errors, warnings, f"{reach.where(store)}: {pods} pod{'s' * (pods != 1)} of node {cfg.node}"
    )


def _not_read(cfg: NodeConfig, error: str) -> str:
    return (
        f"store: the store (etcd {', '.join(cfg.store.endpoints)}) does not answer "
        f"({reach.why(error)}): the config was not checked against its networks, pods and "
        "addresses, and 'dataplane run' does not start while it does not answer"
    )
