"""The node service: engine + store + pods + control API + metrics.

    dataplane run -c node.yaml

Order of work for every change: validate, write the intent to the store,
apply it (netlink, core tables), mark it done. On start the service replays
the store: pod interfaces that still exist are re-attached with the MACs and
addresses they had; nothing is allocated twice.
"""
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Dict, List, Optional

from . import __version__
from .api import APIServer
from .config import NodeConfig
from .errors import ConfigError, DataplaneError, NotFound
from .store import open_store

log = logging.getLogger("dataplane")

#: longest wait (s) between two attempts to reach an unreachable cluster store
SYNC_RETRY_MAX = 1.0


class _JSONFormatter(logging.Formatter):
    def format(self, record):
        d = {"ts": round(record.created, 3), "level": record.levelname.lower(),
             "msg": record.getMessage()}
        d.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d)


def setup_logging(level=logging.INFO):
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(_JSONFormatter())
    root = logging.getLogger("dataplane")
    root.handlers[:] = [h]
    root.setLevel(level)
    root.propagate = False


def _ev(msg, **fields):
    log.info(msg, extra={"fields": fields})


class NodeService:
    def __init__(self, config: NodeConfig, registry=None):
        self.config = config
        self.registry = registry
        self.lock = threading.RLock()
        self.engine = None
        self.store = None
        self.api: Optional[APIServer] = None
        self.metrics_server = None
        self.net_index: Dict[str, int] = {n.name: i for i, n in enumerate(config.networks)}
        self.ports: Dict[str, int] = {}          # host_ifname -> core port
        self.uplink = None
        self.started = None
        self._stop = threading.Event()
        # cluster view: endpoints of other nodes, and what the core has of them
        self._sync_thread = None
        self._watch = None
        self._remote_eps: Dict[tuple, dict] = {}      # (pod, plane) -> endpoint
        self._fdb: Dict[tuple, str] = {}              # (net index, mac) -> vtep
        self._flood: Dict[int, List[str]] = {}        # net index -> vteps
        self.synced = threading.Event()

    # -------------------------------------------------------------- start
    def start(self):
        from .engine import Engine, EngineConfig

        cfg = self.config
        self.store = open_store(cfg.store, cfg.node)
        for n in cfg.networks:
            self.store.put_network(n.name, n.vni, n.plane, n.subnet, n.gateway, n.mtu)
        self.engine = Engine(EngineConfig(**cfg.engine_kwargs()))
        try:
            self._setup_core()
            self._replay()
            self.engine.start()
            if self.store.can_watch:
                self._sync_thread = threading.Thread(target=self._sync_loop,
                                                     name="dataplane-sync", daemon=True)
                self._sync_thread.start()
            self.api = APIServer(cfg.api_socket, self._routes(), log=log)
            self.api.start()
            self._start_metrics()
        except BaseException:
            self.stop()
            raise
        self.started = time.time()
        _ev("node service started", node=cfg.node, mode=cfg.mode, api=cfg.api_socket,
            metrics=cfg.metrics.listen, pods=len(self.store.pods()))

    def _setup_core(self):
        cfg, eng = self.config, self.engine
        v = cfg.vtep
        if v.uplink_kind == "dpdk":
            self.uplink = eng.add_port(v.uplink_devargs, role="uplink",
                                       rx_queues=v.uplink_rx_queues)
        else:
            self.uplink = eng.add_afpacket_port(v.uplink_ifname, role="uplink")
        mac = v.mac or eng.port_info(self.uplink).mac
        for pl in cfg.planes.values():
            eng.set_plane(cfg.plane_id(pl.name), priority=pl.priority, min_bps=pl.min_rate,
                          max_bps=pl.max_rate, queue_len=pl.queue_len, dscp=pl.dscp,
                          worker=(list(cfg.lcores).index(pl.worker) - 1
                                  if pl.worker is not None else None),
                          rx_queue=pl.rx_queue)
            for d in pl.classify_dscp:
                eng.set_dscp_plane(d, cfg.plane_id(pl.name))
        if v.uplink_rate:
            eng.set_shaper(self.uplink, v.uplink_rate, v.uplink_burst)
        for i, n in enumerate(cfg.networks):
            eng.add_network(i, vni=n.vni, plane=cfg.plane_id(n.plane))
        eng.set_vtep(v.address, mac, self.uplink, udp_port=v.udp_port,
                     underlay_mtu=v.underlay_mtu, gateway=v.gateway,
                     next_hop_mac=v.next_hop_mac, learning=v.learning)
        for name, vteps in cfg.flood_lists().items():
            if vteps:
                eng.set_flood(self.net_index[name], vteps)
        _ev("core ready", uplink=v.uplink, vtep=v.address, vtep_mac=mac,
            networks=len(cfg.networks))

    def _start_metrics(self):
        if self.config.metrics.listen is None:
            return
        from prometheus_client import start_http_server

        from .metrics import CoreCollector, make_registry
        from .engine import ABI_VERSION
        reg = self.registry or make_registry(
            CoreCollector(self.snapshot, node=self.config.node, abi=ABI_VERSION))
        if self.registry is not None:
            reg.register(CoreCollector(self.snapshot, node=self.config.node, abi=ABI_VERSION))
        self.metrics_server, _ = start_http_server(self.config.metrics.port,
                                                   addr=self.config.metrics.host, registry=reg)

    # ------------------------------------------------------------- replay
    def _replay(self):
        """Re-attach the pods the store knows whose interfaces still exist."""
        from .podnet import find_plane
        for pod in self.store.pods(node=self.config.node):
            eps = self.store.endpoints(pod=pod["name"])
            missing = [e for e in eps if find_plane(e["host_ifname"]) is None]
            if missing or pod["state"] != "ready":
                # half-made or gone (its namespace died): undo what is left
                _ev("replay: removing incomplete pod", pod=pod["name"], state=pod["state"],
                    missing=[e["plane"] for e in missing])
                self._remove_pod(pod["name"], eps)
                continue
            for e in eps:
                self._attach_port(e)
            _ev("replay: pod re-attached", pod=pod["name"], planes=[e["plane"] for e in eps])

    def _attach_port(self, e):
        net = self.net_index[e["network"]]
        port = self.engine.add_afpacket_port(e["host_ifname"], network=net)
        self.ports[e["host_ifname"]] = port
        self.engine.fdb_add_local(net, e["mac"], port)
        return port

    # --------------------------------------------------------------- pods
    def add_pod(self, name: str, netns: str, spec) -> dict:
        from .podnet import announce, attach_plane
        from .podspec import host_ifname, parse_pod_spec
        if not isinstance(name, str) or not name or len(name) > 200 or "/" in name:
            raise ConfigError(f"name: {name!r} is not a pod name")
        if not isinstance(netns, str) or not netns.startswith("/"):
            raise ConfigError(f"netns: {netns!r} must be a path such as /var/run/netns/NAME "
                              "or /proc/PID/ns/net")
        import os
        if not os.path.exists(netns):
            raise NotFound(f"netns: {netns} does not exist")
        ps = parse_pod_spec(spec, self.config)
        with self.lock:
            self.store.put_pod(name, netns, ps.to_dict(), node=self.config.node)  # intent first
            done = []
            try:
                for p in ps.planes:
                    n = self.config.network(p.network)
                    ip = self.store.allocate_ip(n.name, n.subnet, n.gateway, name, fixed=p.ip)
                    mac = p.mac or self.store.allocate_mac(name, p.plane)
                    hif = host_ifname(name, p.plane)
                    self.store.add_endpoint(name, p.plane, n.name, p.ifname, hif, mac, ip,
                                            node=self.config.node, vtep=self.config.vtep.ip)
                    attach_plane(name, netns, p.ifname, hif, mac, f"{ip}/{n.prefixlen}",
                                 n.gateway, n.mtu, p.default_route, plane=p.plane)
                    done.append(hif)
                    self._attach_port({"host_ifname": hif, "network": n.name, "mac": mac})
                    announce(netns, p.ifname, mac, ip)
                    self.store.set_endpoint_state(name, p.plane, "ready")
                self.store.set_pod_state(name, "ready")
            except BaseException:
                self._remove_pod(name, self.store.endpoints(pod=name))
                raise
        _ev("pod added", pod=name, netns=netns, planes=[p.plane for p in ps.planes])
        return self.pod_info(name)

    def _remove_pod(self, name, eps):
        from .podnet import detach_plane
        for e in eps:
            hif = e["host_ifname"]
            port = self.ports.pop(hif, None)
            if port is not None:
                try:
                    self.engine.del_port(port)
                except DataplaneError as err:
                    log.warning("removing port %s: %s", hif, err)
            try:
                detach_plane(hif)
            except DataplaneError as err:
                log.warning("removing %s: %s", hif, err)
        self.store.delete_pod(name)

    def del_pod(self, name: str) -> dict:
        with self.lock:
            pod = self.store.pod(name)
            if not pod or pod.get("node") not in (None, self.config.node):
                raise NotFound(f"pod {name} is not attached to this node")
            self._remove_pod(name, self.store.endpoints(pod=name))
            self._apply_remote()  # a remote endpoint may have that MAC again
        _ev("pod deleted", pod=name)
        return {"deleted": name}

    def pod_info(self, name: str) -> dict:
        pod = self.store.pod(name)
        if not pod:
            raise NotFound(f"pod {name} is not attached")
        eps = self.store.endpoints(pod=name)
        return {"name": name, "netns": pod["netns"], "state": pod["state"],
                "planes": [{k: e[k] for k in ("plane", "network", "ifname", "host_ifname",
                                                "mac", "ip")}
                           | {"port": self.ports.get(e["host_ifname"])} for e in eps]}

    def list_pods(self) -> List[dict]:
        return [self.pod_info(p["name"]) for p in self.store.pods(node=self.config.node)]

    # -------------------------------------------------------- cluster sync
    def _sync_loop(self):
        """Keep the core's remote entries in step with the cluster's endpoints:
        a snapshot, then a watch from its revision; on any error (etcd gone,
        history compacted) wait, take a new snapshot and diff again, so
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
                    self._remote_eps = {(e["pod"], e["plane"]): e for e in eps
                                        if self._is_remote(e)}
                    self._apply_remote()
                self.synced.set()
                _ev("cluster view synchronised", endpoints=len(self._remote_eps), revision=rev,
                    **({"failed_attempts": failures} if failures else {}))
                failures = 0
                errors = []
                self._watch = self.store.watch_endpoints(
                    rev + 1, lambda kind, obj: self._on_event(kind, obj, errors))
                while not self._stop.is_set() and not self._watch.wait(0.5):
                    pass
                self._watch.cancel()
                if self._stop.is_set():
                    return
                log.warning("cluster watch ended (%s); resynchronising",
                            errors[0] if errors else self._watch.error)
                backoff = 0.2
            except Exception as e:  # noqa: BLE001 - keep forwarding, retry
                if self._stop.is_set():
                    return
                failures += 1
                now = time.monotonic()
                if failures == 1 or now - warned >= 30.0:   # not one line per attempt
                    log.warning("cluster store unavailable (%s); forwarding on the last "
                                "view, retrying every %.1fs at most (attempt %d)",
                                e, SYNC_RETRY_MAX, failures)
                    warned = now
                self._stop.wait(backoff)
                backoff = min(backoff * 2, SYNC_RETRY_MAX)

    def _is_remote(self, e) -> bool:
        return (e.get("node") != self.config.node and e.get("state") == "ready"
                and e.get("vtep") and e.get("network") in self.net_index
                and e.get("vtep") != self.config.vtep.ip)

    def _on_event(self, kind, obj, errors):
        if kind == "error":
            errors.append(obj)
            return
        key = (obj.get("pod"), obj.get("plane"))
        with self.lock:
            if kind == "put" and self._is_remote(obj):
                self._remote_eps[key] = obj
            else:
                self._remote_eps.pop(key, None)
            self._apply_remote()

    def _apply_remote(self):
        """Diff the wanted remote FDB entries and flood lists against what the
        core has; change only the difference. Called with self.lock held."""
        eng = self.engine
        if eng is None:
            return
        want_fdb, want_flood = {}, {i: set() for i in self.net_index.values()}
        for name, vteps in self.config.flood_lists().items():
            want_flood[self.net_index[name]].update(vteps)
        for e in self._remote_eps.values():
            net = self.net_index[e["network"]]
            want_fdb[(net, e["mac"].lower())] = e["vtep"]
            want_flood[net].add(e["vtep"])
        # a MAC that a pod on this node has (it moved here, or a remote record
        # is stale) stays local: the core's own table says which ones are
        # (local entries are made and purged with their ports, under self.lock),
        # so no store read per event
        def local(key):
            hit = eng.fdb_get(*key)
            return hit is not None and hit[0] == "local"
        for key in list(self._fdb):
            if key not in want_fdb:
                if not local(key):
                    try:
                        eng.fdb_del(*key)
                    except NotFound:
                        pass
                del self._fdb[key]
        for key, vtep in want_fdb.items():
            if local(key):
                self._fdb.pop(key, None)
                continue            # a pod here owns that MAC now (it moved here)
            if self._fdb.get(key) != vtep:
                eng.fdb_add_remote(key[0], key[1], vtep)
                self._fdb[key] = vtep
        for net, vteps in want_flood.items():
            vl = sorted(vteps)
            if self._flood.get(net, []) != vl:
                eng.set_flood(net, vl)
                self._flood[net] = vl

    # ------------------------------------------------------------- status
    def snapshot(self):
        from .metrics import NetLabel, PlaneLabel, PortLabel, Snapshot
        with self.lock:
            if self.engine is None or self.store is None:
                return None
            eng = self.engine
            names = {i: n for n, i in self.net_index.items()}
            ports = [PortLabel(p.index, p.name, p.role,
                               names.get(p.network, "") if p.network is not None else "")
                     for p in eng.ports()]
            nets = [NetLabel(i, n.name, n.vni, n.plane)
                    for i, n in enumerate(self.config.networks)]
            pods, eps = {}, {}
            for e in self.store.endpoints():
                pods.setdefault(e["network"], set()).add(e["pod"])
                eps[e["network"]] = eps.get(e["network"], 0) + 1
            planes = [PlaneLabel(self.config.plane_id(p.name), p.name)
                      for p in self.config.planes.values()]
            shaped = {}
            if self.config.vtep.uplink_rate and self.uplink is not None:
                shaped[self.uplink] = {pl.index: eng.queue_depth(self.uplink, pl.index)
                                       for pl in planes}
            return Snapshot(eng.counters(), ports, nets,
                            {k: len(v) for k, v in pods.items()}, eps, planes, shaped)

    def status(self) -> dict:
        snap = self.snapshot()
        c = snap.counters
        return {
            "node": self.config.node, "version": __version__, "mode": self.config.mode,
            "vtep": self.config.vtep.address, "uplink": self.config.vtep.uplink,
            "uptime_s": round(time.time() - (self.started or time.time()), 1),
            "forwarding": self.engine.running,
            "networks": [{"name": n.name, "vni": n.vni, "plane": n.plane,
                          "pods": snap.pods_per_network.get(n.name, 0),
                          **c.net_dict(n.index)} for n in snap.networks],
            "ports": [{"port": p.index, "name": p.name, "role": p.role,
                       "network": p.network, **c.port_dict(p.index)} for p in snap.ports],
            "drops": {k: v for k, v in c.drops().items() if v},
            "planes": [self._plane_status(c, pl, snap.shaped.get(self.uplink, {}))
                       for pl in snap.planes],
        }

    def _plane_status(self, c, pl, depths):
        q = {k: None if v is None or v == float("inf") else round(v * 1e6, 1)
             for k, v in (("p50_us", c.latency_quantile(pl.index, 0.5)),
                          ("p99_us", c.latency_quantile(pl.index, 0.99)))}
        d = {"name": pl.name, "plane": pl.index, **q}
        if pl.index in depths:
            d.update(c.qos_dict(self.uplink, pl.index), queue_depth=depths[pl.index])
        return d

    def _routes(self):
        return {
            ("GET", "/v1/status"): lambda b, q: self.status(),
            ("GET", "/v1/pods"): lambda b, q: self.list_pods(),
            ("POST", "/v1/pods"): lambda b, q: self.add_pod(b.get("name"), b.get("netns"),
                                                            b.get("spec")),
            ("DELETE", "/v1/pods"): lambda b, q: self.del_pod(q.get("name") or b.get("name")),
            ("GET", "/v1/networks"): lambda b, q: [
                {"name": n.name, "vni": n.vni, "plane": n.plane, "subnet": n.subnet,
                 "gateway": n.gateway, "mtu": n.mtu} for n in self.config.networks],
        }

    # --------------------------------------------------------------- stop
    def stop(self):
        """Ports closed, hugepage memory returned, API socket removed; pod
        interfaces and addresses stay so pods keep them across a restart."""
        self._stop.set()
        if self._watch is not None:
            self._watch.cancel()
        if self._sync_thread is not None:
            self._sync_thread.join(10)
        if self.api:
            self.api.stop()
            self.api = None
        if self.metrics_server:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        with self.lock:
            if self.engine:
                self.engine.close()
                self.engine = None
            if self.store:
                self.store.close()
                self.store = None
        _ev("node service stopped", node=self.config.node)

    def run_forever(self):
        me = os.getpid()

        def _sig(signum, frame):
            if os.getpid() != me:   # a forked helper (pyroute2 netns) inherited this
                return
            _ev("signal received, stopping", signal=signal.Signals(signum).name)
            self._stop.set()
        signal.signal(signal.SIGTERM, _sig)
        signal.signal(signal.SIGINT, _sig)
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()
