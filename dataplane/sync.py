"""The cluster view: the core's remote FDB entries and flood lists kept in
step with the endpoints other nodes record in the store.

Three layers, each testable on its own:

- :func:`desired_tables` — pure: what the core should have, from the node
  config, this node's name and VTEP, and the cluster's endpoints;
- :class:`CoreTables` — what this node has put in the core, and the diff
  that brings it to the desired tables (only the difference changes);
- :class:`ClusterSync` — a thread: a snapshot of the store, then a watch
  from its revision; on any error a new snapshot, with back-off.
"""

import logging
import threading
import time
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

from .config import NodeConfig
from .errors import NotFound
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


def desired_tables(config: NodeConfig, node: str, vtep: str, endpoints: Iterable[dict]) -> Tables:
    """The remote FDB entries and flood lists the core of node ``node`` (VTEP
    ``vtep``) should have: every remote endpoint's MAC behind its VTEP, and
    per network the config's remotes plus the VTEP of every remote endpoint
    on it. Every network has a flood list (maybe empty). Of two endpoints
    with one MAC on one network, the later one wins."""
    index = network_index(config)
    fdb: Dict[Tuple[int, str], str] = {}
    flood = {i: set() for i in index.values()}
    for name, vteps in config.flood_lists().items():
        flood[index[name]].update(vteps)
    for e in endpoints:
        if not is_remote(e, node, vtep, index):
            continue
        net = index[e["network"]]
        fdb[(net, e["mac"].lower())] = e["vtep"]
        flood[net].add(e["vtep"])
    return Tables(fdb, {net: sorted(v) for net, v in flood.items()})


class CoreTables:
    """The remote FDB entries and flood lists this node has put in the core."""

    def __init__(self):
        self.fdb: Dict[Tuple[int, str], str] = {}
        self.flood: Dict[int, List[str]] = {}

    def apply(self, engine, want: Tables):
        """Change in ``engine`` only what differs from ``want``. A MAC that a
        pod on this node has (it moved here, or a remote record is stale)
        stays local: the core's own table says which ones are (local entries
        are made and purged with their ports), so no store read per change."""

        def local(key):
            hit = engine.fdb_get(*key)
            return hit is not None and hit[0] == "local"

        for key in list(self.fdb):
            if key not in want.fdb:
                if not local(key):
                    try:
                        engine.fdb_del(*key)
                    except NotFound:
                        pass
                del self.fdb[key]
        for key, vtep in want.fdb.items():
            if local(key):
                self.fdb.pop(key, None)
                continue  # a pod here owns that MAC now (it moved here)
            if self.fdb.get(key) != vtep:
                engine.fdb_add_remote(key[0], key[1], vtep)
                self.fdb[key] = vtep
        for net, vteps in want.flood.items():
            if self.flood.get(net, []) != vteps:
                engine.set_flood(net, vteps)
                self.flood[net] = vteps


class ClusterSync:
    """Keeps ``engine``'s remote entries in step with the endpoints in
    ``store``. ``lock`` is the one that guards the engine's tables (pods are
    attached and removed under it too). ``apply()`` may be called at any time
    (e.g. after a local pod went: a remote endpoint may have its MAC);
    ``start()`` follows a store that can watch."""

    def __init__(self, config: NodeConfig, store, engine, lock):
        self.config = config
        self.store = store
        self.engine = engine
        self.lock = lock
        self.node = config.node
        self.vtep = config.vtep.ip
        self.networks = network_index(config)
        self.remote: Dict[tuple, dict] = {}  # (pod, plane) -> remote endpoint
        self.tables = CoreTables()
        self.synced = threading.Event()  # the first snapshot is applied
        #: time.time() of the last snapshot applied (the watch keeps the
        #: view in step after it, as long as the store answers)
        self.synced_at: Optional[float] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._watch = None

    def apply(self):
        """Bring the core to the desired tables of what is known now."""
        with self.lock:
            if self.engine is None:
                return
            want = desired_tables(self.config, self.node, self.vtep, self.remote.values())
            self.tables.apply(self.engine, want)

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="dataplane-sync", daemon=True)
        self._thread.start()

    def stop(self):
        """End the thread and the watch; ``apply`` does nothing afterwards."""
        self._stop.set()
        if self._watch is not None:
            self._watch.cancel()
        if self._thread is not None:
            self._thread.join(10)
        with self.lock:
            self.engine = None

    def _loop(self):
        """A snapshot, then a watch from its revision; on any error (etcd
        gone, history compacted) wait, take a new snapshot and diff again, so
        nothing is added twice or left behind. Forwarding goes on meanwhile
        with what the core has. While the store cannot be reached it is tried
        again at most SYNC_RETRY_MAX seconds apart, so a node is back in step
        within about that long after etcd is."""
        backoff = 0.2
        failures, warned = 0, 0.0
        while not self._stop.is_set():
            try:
                eps, rev = self.store.endpoints_snapshot()
                with self.lock:
                    self.remote = {
                        (e["pod"], e["plane"]): e
                        for e in eps
                        if is_remote(e, self.node, self.vtep, self.networks)
                    }
                    self.apply()
                self.synced_at = time.time()
                self.synced.set()
                event(
                    "cluster view synchronised",
                    endpoints=len(self.remote),
                    revision=rev,
                    **({"failed_attempts": failures} if failures else {}),
                )
                failures = 0
                errors = []
                self._watch = self.store.watch_endpoints(
                    rev + 1, lambda kind, obj: self._on_event(kind, obj, errors)
                )
                while not self._stop.is_set() and not self._watch.wait(0.5):
                    pass
                self._watch.cancel()
                if self._stop.is_set():
                    return
                log.warning(
                    "cluster watch ended (%s); resynchronising",
                    errors[0] if errors else self._watch.error,
                )
                backoff = 0.2
            except Exception as e:  # noqa: BLE001 - keep forwarding, retry
                if self._stop.is_set():
                    return
                failures += 1
                now = time.monotonic()
                if failures == 1 or now - warned >= 30.0:  # not one line per attempt
                    log.warning(
                        "cluster store unavailable (%s); forwarding on the last "
                        "view, retrying every %.1fs at most (attempt %d)",
                        e,
                        SYNC_RETRY_MAX,
                        failures,
                    )
                    warned = now
                self._stop.wait(backoff)
                backoff = min(backoff * 2, SYNC_RETRY_MAX)

    def _on_event(self, kind, obj, errors):
        if kind == "error":
            errors.append(obj)
            return
        key = (obj.get("pod"), obj.get("plane"))
        with self.lock:
            if kind == "put" and is_remote(obj, self.node, self.vtep, self.networks):
                self.remote[key] = obj
            else:
                self.remote.pop(key, None)
            self.apply()
