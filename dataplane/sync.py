"""The cluster view: the core's remote FDB entries and flood lists kept in
step with the endpoints other nodes record in the store.

Three layers, each testable on its own:

- :func:`desired_tables` — pure: what the core should have, from the node
  config, this node's name and VTEP, and the cluster's endpoints;
- :class:`CoreTables` — what this node has put in the core, and the diff
  that brings it to the desired tables (only the difference changes); an
  entry the core refuses (e.g. no remote VTEP slot left) is logged once,
  counted and skipped, and the rest is applied;
- :class:`ClusterSync` — a thread: a snapshot of the store, then a watch
  from its revision; on any error a new snapshot, with back-off.

An endpoint record is read from a store any tool may write to (etcdctl, a
script): one that cannot be used (not an object, a field of the wrong type,
a key that is not UTF-8, a remote endpoint without a MAC address or an IPv4
VTEP) is skipped, logged once and counted with the core's refusals; the rest
of the view is applied.
"""

import ipaddress
import logging
import threading
import time
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

from .checks import format_mac, parse_mac
from .config import NodeConfig
from .errors import ConfigError, DataplaneError, NotFound, Refused
from .logs import event

log = logging.getLogger("dataplane")

#: longest wait (s) between two attempts to reach an unreachable cluster store
SYNC_RETRY_MAX = 1.0


class Tables(NamedTuple):
    """Remote entries of the core, by network index."""

    fdb: Dict[Tuple[int, str], str]  # (network index, lower-case MAC) -> VTEP
    flood: Dict[int, List[str]]  # network index -> VTEPs, sorted


def network_index(config: NodeConfig) -> Dict[str, int]:
    """{network name: the core's network index}: its place in the config."""
    return {n.name: i for i, n in enumerate(config.networks)}


def is_remote(ep: dict, node: str, vtep: str, networks) -> bool:
    """Whether endpoint ``ep`` is reached through another VTEP: it is ready,
    on a network of ``networks``, of another node than ``node``, behind a
    VTEP that is not ``vtep``."""
    return bool(
        ep.get("node") != node
        and ep.get("state") == "ready"
        and ep.get("vtep")
        and ep.get("network") in networks
        and ep.get("vtep") != vtep
    )


#: the fields of an endpoint record the cluster view reads: each a string or
#: absent (None)
RECORD_FIELDS = ("pod", "plane", "network", "node", "state", "vtep", "mac")


def record_problem(ep) -> Optional[str]:
    """Why ``ep`` cannot be read as an endpoint record (not an object, a
    field of :data:`RECORD_FIELDS` not a string), or None."""
    if isinstance(ep, dict) and "unreadable" in ep:  # the store's: see keyed_endpoint
        if "bad_key" in ep:
            return f"its key {ep['bad_key']:.200} is not UTF-8 (stray bytes shown as \\xNN)"
        v = ep["unreadable"]
        if isinstance(v, dict):
            return (
                f"it names pod {v.get('pod')!r:.60} plane {v.get('plane')!r:.60}, its key "
                f"{ep['pod']}/{ep['plane']}"
            )
        ep = v
    if not isinstance(ep, dict):
        return f"the record is not an object but {type(ep).__name__} {ep!r:.60}"
    for f in RECORD_FIELDS:
        v = ep.get(f)
        if v is not None and not isinstance(v, str):
            return f"its {f} {v!r:.60} is not a string"
    return None


def remote_problem(ep: dict) -> Optional[str]:
    """Why remote endpoint ``ep`` (a record :func:`is_remote` takes) cannot
    be put in the core: its MAC is not a MAC address, its VTEP not an IPv4
    address; or None."""
    try:
        parse_mac(ep.get("mac"))
    except ConfigError:
        return f"its mac {ep.get('mac')!r:.60} is not a MAC address (aa:bb:cc:dd:ee:ff)"
    try:
        ipaddress.IPv4Address(ep["vtep"])
    except ValueError:
        return f"its vtep {ep['vtep']!r:.60} is not an IPv4 address"
    return None


def classify(ep, node: str, vtep: str, networks) -> Tuple[bool, Optional[str]]:
    """(whether record ``ep`` is a remote endpoint to put in the core, why
    it cannot be used or None)."""
    problem = record_problem(ep)
    if problem is not None:
        return False, problem
    if not is_remote(ep, node, vtep, networks):
        return False, None
    problem = remote_problem(ep)
    return problem is None, problem


def record_name(ep) -> Tuple[Optional[str], Optional[str]]:
    """(pod, plane) of a record, whatever it holds (None for what it lacks)."""
    if not isinstance(ep, dict):
        return None, None
    return tuple(v if isinstance(v, str) else None for v in (ep.get("pod"), ep.get("plane")))


def contribution(e: dict, index: Dict[str, int]) -> Tuple[int, str, str]:
    """What a remote endpoint record (one :func:`classify` takes) puts in
    the core's tables: (network index, MAC as the core spells it, VTEP)."""
    return index[e["network"]], format_mac(parse_mac(e["mac"])), e["vtep"]


def tables_of(
    config: NodeConfig,
    contributions: Iterable[Tuple[int, str, str]],
    index: Optional[Dict[str, int]] = None,
) -> Tables:
    """The tables of :func:`desired_tables` from the remote endpoints'
    :func:`contribution` (made once per record, not once per change).
    ``index``: the networks' indices in the core (by default their places
    in the config, as at start)."""
    index = network_index(config) if index is None else index
    fdb: Dict[Tuple[int, str], str] = {}
    flood = {i: set() for i in index.values()}
    for name, vteps in config.flood_lists().items():
        flood[index[name]].update(vteps)
    for net, mac, vtep in contributions:
        fdb[(net, mac)] = vtep
        flood[net].add(vtep)
    return Tables(fdb, {net: sorted(v) for net, v in flood.items()})


def desired_tables(config: NodeConfig, node: str, vtep: str, endpoints: Iterable[dict]) -> Tables:
    """The remote FDB entries and flood lists the core of node ``node`` (VTEP
    ``vtep``) should have: every remote endpoint's MAC behind its VTEP, and
    per network the config's remotes plus the VTEP of every remote endpoint
    on it. Every network has a flood list (maybe empty). Of two endpoints
    with one MAC on one network, the later one wins. A record that cannot be
    used (:func:`classify`) is left out."""
    index = network_index(config)
    return tables_of(
        config, (contribution(e, index) for e in endpoints if classify(e, node, vtep, index)[0])
    )


class CoreTables:
    """The remote FDB entries and flood lists this node has put in the core,
    and those the core refuses."""

    def __init__(self):
        self.fdb: Dict[Tuple[int, str], str] = {}
        self.flood: Dict[int, List[str]] = {}
        #: what the core refused in the last apply: ("fdb", net, mac) or
        #: ("flood", net) -> (what was wanted, the core's reason). A refused
        #: entry is not in ``fdb``/``flood`` as wanted, so every apply tries
        #: it again; it is logged once per entry and reason.
        self.refused: Dict[tuple, Tuple[object, str]] = {}

    def forget_network(self, net: int):
        """Network index ``net`` removed from the core with its entries."""
        for key in [k for k in self.fdb if k[0] == net]:
            del self.fdb[key]
        self.flood.pop(net, None)
        for key in [k for k in self.refused if k[1] == net]:
            del self.refused[key]

    def apply(self, engine, want: Tables):
        """Change in ``engine`` only what differs from ``want``. A MAC that a
        pod on this node has (it moved here, or a remote record is stale)
        stays local: the core's own table says which ones are (local entries
        are made and purged with their ports), so no store read per change.

        Entry by entry: one the core refuses (DataplaneError: all remote VTEP
        slots in use, a multicast MAC, ...) is recorded in ``refused`` and
        skipped, and the others and the flood lists are applied. A flood list
        the core refuses whole is applied without the VTEPs whose FDB entries
        it refused (when that is another list), so the other nodes still get
        this node's broadcasts and ARP. Errors other than DataplaneError
        (the engine gone) propagate."""
        refused: Dict[tuple, Tuple[object, str]] = {}

        def refuse(key, value, what, err):
            reason = str(err)
            refused[key] = (value, reason)
            if self.refused.get(key) != (value, reason):  # once per entry and reason
                log.warning(
                    "the core refused %s (%s); skipped, the rest of the cluster view is "
                    "applied; tried again on each change",
                    what,
                    reason,
                )

        # the MACs pods of this node have, from one copy of the core's table
        # (a look-up per wanted entry made each change cost a call per MAC)
        mine = engine.fdb_local_keys()

        def local(key):
            return key in mine

        for key in list(self.fdb):
            if key not in want.fdb:
                if not local(key):
                    try:
                        engine.fdb_del(*key)
                    except NotFound:
                        pass
                    except DataplaneError as e:
                        refuse(
                            ("fdb",) + key, None, f"removing MAC {key[1]} of network {key[0]}", e
                        )
                        continue  # still in the core: removed on a later apply
                del self.fdb[key]
        bad_vteps = set()  # VTEPs of the FDB entries refused now
        for key, vtep in want.fdb.items():
            if local(key):
                self.fdb.pop(key, None)
                continue  # a pod here owns that MAC now (it moved here)
            if self.fdb.get(key) != vtep:
                try:
                    engine.fdb_add_remote(key[0], key[1], vtep)
                except DataplaneError as e:  # the core keeps what it had for key
                    bad_vteps.add(vtep)
                    refuse(
                        ("fdb",) + key,
                        vtep,
                        f"remote MAC {key[1]} via {vtep} on network {key[0]}",
                        e,
                    )
                    continue
                self.fdb[key] = vtep
        for net, vteps in want.flood.items():
            if self.flood.get(net, []) == vteps:
                continue
            try:
                engine.set_flood(net, vteps)
                self.flood[net] = vteps
                continue
            except DataplaneError as e:
                err = e
            part = [v for v in vteps if v not in bad_vteps]
            what = f"the flood list of network {net} ({len(vteps)} VTEPs)"
            if part != vteps:
                try:
                    if self.flood.get(net, []) != part:
                        engine.set_flood(net, part)
                        self.flood[net] = part
                    what += f"; applied without {', '.join(v for v in vteps if v not in part)}"
                except DataplaneError:
                    pass  # the core keeps its list; err says why
            refuse(("flood", net), tuple(vteps), what, err)
        self.refused = refused


class CoreFailed(Exception):
    """Applying the cluster view to the core failed as a whole (not an entry
    it refused: those :class:`CoreTables` skips); the store is not to blame."""


class _Stopped(Exception):
    """The cluster view stops: nothing more is asked of the store."""


class ClusterSync:
    """Keeps ``engine``'s remote entries in step with the endpoints in
    ``store``. ``lock`` is the one that guards the engine's tables (pods are
    attached and removed under it too). ``apply()`` may be called at any time
    (e.g. after a local pod went: a remote endpoint may have its MAC);
    ``start()`` follows a store that can watch."""

    def __init__(self, config: NodeConfig, store, engine, lock, networks=None):
        self.config = config
        self.store = store
        self.engine = engine
        self.lock = lock
        self.node = config.node
        self.vtep = config.vtep.ip
        #: network name -> the core's index (the service's own map, which a
        #: reload changes; by default the places in the config)
        self.networks = network_index(config) if networks is None else networks
        self.remote: Dict[tuple, dict] = {}  # (pod, plane) -> remote endpoint
        #: (pod, plane) -> its contribution(), in step with ``remote``
        #: (both changed through _keep and _forget only)
        self._contrib: Dict[tuple, Tuple[int, str, str]] = {}
        #: endpoint records that cannot be used: (pod, plane) -> why (each
        #: logged once per reason; gone when the record is fixed or deleted)
        self.malformed: Dict[tuple, str] = {}
        self.tables = CoreTables()
        self.synced = threading.Event()  # the first snapshot is applied
        #: time.time() of the last snapshot applied (the watch keeps the
        #: view in step after it, as long as the store answers)
        self.synced_at: Optional[float] = None
        self._stop = threading.Event()
        self._dirty = threading.Event()  # the view changed since the core took it
        self._resync = threading.Event()  # a new snapshot wanted (reconfigure)
        self._thread: Optional[threading.Thread] = None
        self._watch = None
        #: the thread waits on a request to the store (see _ask); read and
        #: set with the stop under _state
        self._asking = False
        self._state = threading.Lock()

    def apply(self):
        """Bring the core to the desired tables of what is known now."""
        with self.lock:
            if self.engine is None:
                return
            want = tables_of(self.config, self._contrib.values(), self.networks)
            self.tables.apply(self.engine, want)

    def forget_network(self, net: int):
        """Network index ``net`` is gone from the core, with its entries (a
        reload removed it; lock held): nothing of it is kept as put there
        or wanted, so an index used again starts from nothing."""
        self.tables.forget_network(net)
        for key in [k for k, c in self._contrib.items() if c[0] == net]:
            self._forget(key)

    def reconfigure(self, config: NodeConfig, resync: bool = True):
        """Take a config whose networks or static flood lists changed (a
        reload; ``networks`` changed with it): the core gets the flood lists
        at once, and with ``resync`` a following thread a new snapshot of
        the store, since the records of the new networks' endpoints were
        skipped until now (endpoints of networks this node did not have).
        The caller may hold ``lock`` (it is reentrant): the service changes
        ``networks`` and the config in one hold of it, so the view never
        reads the one without the other."""
        with self.lock:
            self.config = config
            self.apply()
        if resync and self._thread is not None:
            self._resync.set()
            self._dirty.set()  # wakes the watch's wait

    def flood_refused(self) -> List[str]:
        """The flood lists the core refused at the last apply, each said
        with its network's name, its VTEPs and the core's reason."""
        names = {i: n for n, i in self.networks.items()}

        def vteps(v):  # a long list: its first few and how many
            return ", ".join(v) if len(v) <= 5 else f"{', '.join(v[:5])}, ... {len(v)} VTEPs"

        return [
            f"the flood list of network {names.get(key[1], key[1])} ({vteps(value)}): {why}"
            for key, (value, why) in sorted(self.tables.refused.items(), key=repr)
            if key[0] == "flood"
        ]

    @property
    def refused(self) -> int:
        """How many remote FDB entries and flood lists the core refused at
        the last apply (each logged once; tried again on every change), and
        endpoint records that cannot be used (:attr:`malformed`)."""
        return len(self.tables.refused) + len(self.malformed)

    def _take(self, ep, malformed: Dict[tuple, str]) -> bool:
        """Whether record ``ep`` is a remote endpoint for the core; one that
        cannot be used is put in ``malformed`` and logged (once per record
        and reason: not if :attr:`malformed` has it already)."""
        remote, problem = classify(ep, self.node, self.vtep, self.networks)
        if problem is not None:
            key = record_name(ep)
            malformed[key] = problem
            if self.malformed.get(key) != problem:
                log.warning(
                    "endpoint record of pod %s plane %s in the cluster store cannot be "
                    "used (%s); skipped, the rest of the cluster view is applied",
                    key[0],
                    key[1],
                    problem,
                    extra={"fields": {"pod": key[0], "plane": key[1], "problem": problem}},
                )
        return remote

    def _apply_core(self):
        """apply(), its failure told apart from the store's (CoreFailed)."""
        try:
            self.apply()
        except Exception as e:
            raise CoreFailed(f"applying the cluster view to the core: {e}") from e

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="dataplane-sync", daemon=True)
        self._thread.start()

    def stop(self):
        """End the thread and the watch; ``apply`` does nothing afterwards.
        A thread waiting on the store (a hung etcd answers only at its
        request timeout) is not waited for: it ends once the answer comes,
        leaving it unused."""
        with self._state:
            self._stop.set()
            asking = self._asking
        if self._watch is not None:
            self._watch.cancel()
        if self._thread is not None and not asking:
            self._thread.join(10)
        with self.lock:
            self.engine = None

    def _ask(self, request, *args):
        """``request(*args)`` to the store, from the thread, marked so that
        a stop does not wait for its answer; _Stopped, with nothing asked,
        once the stop came."""
        with self._state:
            if self._stop.is_set():
                raise _Stopped("the cluster view is stopping")
            self._asking = True
        try:
            return request(*args)
        finally:
            with self._state:
                self._asking = False

    def _loop(self):
        """A snapshot, then a watch from its revision; on any error (etcd
        gone, history compacted) wait, take a new snapshot and diff again, so
        nothing is added twice or left behind. Forwarding goes on meanwhile
        with what the core has. While the store cannot be reached it is tried
        again at most SYNC_RETRY_MAX seconds apart, so a node is back in step
        within about that long after etcd is. Entries the core refuses do not
        end the watch (they are skipped and counted, see CoreTables.apply);
        a failure of the core as a whole does, and is logged as the core's."""
        backoff = 0.2
        failures, warned = 0, 0.0
        while not self._stop.is_set():
            try:
                self._resync.clear()  # this snapshot is read with the networks as they are
                eps, rev = self._ask(self.store.endpoints_snapshot)
                if self._stop.is_set():  # a stop that did not wait for it
                    return
                with self.lock:
                    malformed: Dict[tuple, str] = {}
                    self.remote, self._contrib = {}, {}
                    for e in eps:
                        if self._take(e, malformed):
                            self._keep(record_name(e), e)
                    self.malformed = malformed
                    self._apply_core()
                self.synced_at = time.time()
                self.synced.set()
                refused = len(self.tables.refused)
                event(
                    "cluster view synchronised",
                    endpoints=len(self.remote),
                    revision=rev,
                    **({"failed_attempts": failures} if failures else {}),
                    **({"refused_by_core": refused} if refused else {}),
                    **({"malformed_records": len(self.malformed)} if self.malformed else {}),
                )
                failures = 0
                errors = []
                self._dirty.clear()
                # a watch made after a stop that did not wait for it ends
                # below, at once
                self._watch = self._ask(
                    self.store.watch_endpoints,
                    rev + 1,
                    lambda kind, obj: self._on_event(kind, obj, errors),
                )
                # the events change the view; the core takes it here, once
                # for however many came while it took the last one (a node
                # whose pods all restart sends a burst)
                try:
                    while not self._stop.is_set() and not self._watch.wait(0):
                        if self._resync.is_set():
                            break
                        if self._dirty.wait(0.5):
                            self._dirty.clear()
                            with self.lock:
                                self._apply_core()  # CoreFailed: a new snapshot
                finally:
                    self._watch.cancel()
                if self._stop.is_set():
                    return
                if self._resync.is_set():
                    log.info("cluster view: the node's networks changed, taking a new snapshot")
                    continue
                why = errors[0] if errors else self._watch.error
                log.warning(
                    "cluster watch ended (%s%s); resynchronising",
                    "the core failed, not the store: " if isinstance(why, CoreFailed) else "",
                    why,
                )
                backoff = 0.2
            except Exception as e:  # noqa: BLE001 - keep forwarding, retry
                if self._stop.is_set():
                    return
                failures += 1
                now = time.monotonic()
                if failures == 1 or now - warned >= 30.0:  # not one line per attempt
                    log.warning(
                        "%s (%s); forwarding on the last view, retrying every %.1fs at "
                        "most (attempt %d)",
                        "the core failed to take the cluster view (the store answers)"
                        if isinstance(e, CoreFailed)
                        else "cluster store refuses this node"
                        if isinstance(e, Refused)
                        else "cluster store unavailable",
                        e,
                        SYNC_RETRY_MAX,
                        failures,
                    )
                    warned = now
                self._stop.wait(backoff)
                backoff = min(backoff * 2, SYNC_RETRY_MAX)

    def _keep(self, key, obj):
        """Remote endpoint record ``obj`` into the view (lock held)."""
        self.remote[key] = obj
        self._contrib[key] = contribution(obj, self.networks)

    def _forget(self, key):
        """Remote endpoint ``key`` out of the view, if in it (lock held)."""
        self.remote.pop(key, None)
        self._contrib.pop(key, None)

    def _on_event(self, kind, obj, errors):
        if kind == "error":
            errors.append(obj)
            return
        key = record_name(obj)
        with self.lock:
            if kind == "put":
                malformed: Dict[tuple, str] = {}
                if self._take(obj, malformed):
                    self._keep(key, obj)
                else:
                    self._forget(key)
                self.malformed.pop(key, None)
                self.malformed.update(malformed)
            else:
                self._forget(key)
                self.malformed.pop(key, None)
        self._dirty.set()
