"""The node service: engine + store + pods + control API + metrics.

    dataplane run -c node.yaml

It starts and stops the parts, each of which does one job:

    podlife.py   pods: attach, detach, replay after a restart
    attach.py    CNI attachments: one plane of a container, as a pod
    sync.py      the cluster view: remote MACs and flood lists from the store
    status.py    the status report, the metrics snapshot, the API routes
    logs.py      the JSON log

and sets the core up from the node config (uplink, planes, networks, VTEP).
On start the core forwards first, then the store is replayed: pod interfaces
that still exist are re-attached with the MACs and addresses they had, each
forwarding again as soon as its ports are back.
"""

import collections
import contextlib
import errno
import os
import signal
import socket
import threading
import time
from typing import Dict, List, Optional, Tuple

from .api import STOP_POLL_S, APIServer, Route
from .attach import Attachments, attachment_routes
from .capture import Captures
from .checks import MAX_NETWORKS, check_bool, check_name, check_not_a_file, is_af_xdp_port
from .config import (
    LEARNING_FIELDS,
    RELOADABLE,
    REMOTES,
    NodeConfig,
    load_config,
    network_changes,
    reload_changes,
)
from .cpulatency import CpuLatencyRequest, no_effect
from .errors import Busy, ConfigError, DataplaneError, NotFound
from .hosts import StaticHosts, host_routes
from .logs import event, log, setup_logging, warning_event  # noqa: F401 - setup_logging for the CLI
from .netutil import same_ip
from .podlife import REAP_EVERY_S, PodLife, add_kernel_port
from .podnet import (
    LinkEvents,
    link_state,
    redirect_ingress,
    tunnel_tap_name,
    uplink_wire_sized,
)
from .startchecks import (
    metrics_problem,
    store_findings,
    uplink_lock_path,
    uplink_lock_text,
    uplink_taken,
)
from .status import (
    STALE_ORIGINS,
    api_routes,
    fdb_report,
    fdb_summary,
    status_report,
    store_counts,
    take_snapshot,
)
from .store import StateStore, open_store, reach
from .sync import ClusterSync, network_index

__all__ = ["NodeService", "setup_logging"]


#: how long a starting service waits for the lock of one that is exiting
CLAIM_WAIT_S = 15.0

#: the VTEP's MAC in the core while a kernel uplink missing at start is not
#: there yet (no frame leaves with it: the core has no uplink to send on)
NO_UPLINK_MAC = "02:00:00:00:00:00"


def _proc_state(pid):
    """Process (or ``pid/task/tid`` thread) ``pid``'s state letter and
    flags, from /proc; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[6])
    except (OSError, IndexError, ValueError):
        return None


def _at_path(fd: int, path: str) -> bool:
    """Whether the file open as ``fd`` is the one at ``path`` (not removed,
    nor replaced, since)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _lock_file(lock: str):
    """``lock`` made (with its directory) and locked by this process: (its
    descriptor, None), or (None, what the file says) where another process
    holds it (its pid first). OSError if it cannot be made."""
    import fcntl

    os.makedirs(os.path.dirname(lock) or ".", mode=0o700, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        # a POSIX lock, not flock(): a child forked without exec (pyroute2's
        # namespace helpers) does not inherit it, so it goes with this
        # process, not with the last child
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        said = os.pread(fd, 4096, 0).decode(errors="replace")
        os.close(fd)
        return None, said
    return fd, None


def _exiting(pid: int) -> bool:
    """Process ``pid`` is gone or on its way out: a zombie, or exiting (a
    killed service closes its packet sockets for a second or two)."""
    st = _proc_state(pid)
    return st is None or st[0] in "ZXx" or bool(st[1] & 0x4)  # PF_EXITING


def _closing(pid: int) -> bool:
    """Process ``pid`` is exiting and may still hold sockets: its files are
    closed only when its last thread is a zombie (the first thread can be
    one while the worker threads still unwind)."""
    st = _proc_state(pid)
    if st is None or not (st[0] in "ZXx" or st[1] & 0x4):
        return False
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        t = _proc_state(f"{pid}/task/{tid}")
        if t is not None and t[0] not in "ZXx":
            return True
    return False


def _config_path(value, path):
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f"{path}: {value!r} is not an absolute path")
    return value


def _network_name(value, path):
    return check_name(value, path, "network name")


def _node_name(value, path):
    return check_name(value, path, "node name")


def _set_plane(eng, cfg: NodeConfig, pl):
    """Plane ``pl`` of ``cfg`` set in the core (at start, and its rates on a
    reload)."""
    eng.set_plane(
        cfg.plane_id(pl.name),
        priority=pl.priority,
        min_bps=pl.min_rate,
        max_bps=pl.max_rate,
        queue_len=pl.queue_len,
        dscp=pl.dscp,
        worker=(list(cfg.lcores).index(pl.worker) - 1 if pl.worker is not None else None),
        rx_queue=pl.rx_queue,
    )


def _fields_of(takes, *fields) -> List[str]:
    """The networks whose ``fields`` a reload's ``takes`` change, each once,
    in the order of the changes."""
    names = []
    for f, _, _ in takes:
        if f.startswith("networks.") and f.rsplit(".", 1)[1] in fields:
            name = f.removeprefix("networks.").rsplit(".", 1)[0]  # a name may hold dots
            if name not in names:
                names.append(name)
    return names


#: scrapes the metrics endpoint serves at once; a connection past them is
#: closed at once (a scraper tries again at its next interval)
METRICS_MAX_CONNECTIONS = 16
#: how long a metrics connection may be silent while its request is read or
#: its answer sent before it is closed
METRICS_TIMEOUT_S = 10.0


def metrics_http_server(host: str, port: int, registry):
    """The Prometheus endpoint on ``host``:``port``, served from a daemon
    thread: what prometheus_client's ``start_http_server`` makes, but with
    a loop that looks for a stop every :data:`~dataplane.api.STOP_POLL_S`
    (its own looks every 0.5 s, and a service's stop waits for it), at most
    :data:`METRICS_MAX_CONNECTIONS` connections at once, each closed once
    silent for :data:`METRICS_TIMEOUT_S`: idle connections (anyone who can
    reach the port) cannot take the service's threads and file
    descriptors, which its control API and pods need."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    from .api import BoundedThreads

    class Quiet(WSGIRequestHandler):
        timeout = METRICS_TIMEOUT_S  # on the connection's socket (StreamRequestHandler)

        def log_message(self, format, *args):  # a scrape is not an event
            pass

    class Server(BoundedThreads, ThreadingWSGIServer):
        # past the slots: closed at once, the scraper tries again; a stop
        # does not wait for a silent connection's thread
        block_on_close = False
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        slots = threading.BoundedSemaphore(METRICS_MAX_CONNECTIONS)

        def handle_error(self, request, client_address):
            pass  # a client gone or silent too long: nothing for the log

    httpd = make_server(host, port, make_wsgi_app(registry), Server, handler_class=Quiet)
    threading.Thread(
        target=httpd.serve_forever,
        kwargs={"poll_interval": STOP_POLL_S},
        name="dataplane-metrics",
        daemon=True,
    ).start()
    return httpd


def _missing_dirs(cfg) -> List[str]:
    """The directories a start would make for ``cfg`` (its API socket's,
    the SQLite state file's, and their parents) that do not exist yet,
    deepest first: what a refused start removes again, if still empty."""
    out = []
    paths = [cfg.api_socket] + ([cfg.store.path] if cfg.store.kind == "sqlite" else [])
    for path in paths:
        d = os.path.dirname(os.path.abspath(path))
        while d and d != "/" and not os.path.exists(d):
            if d not in out:
                out.append(d)
            d = os.path.dirname(d)
    return sorted(out, key=len, reverse=True)


def _reload_warnings(new: NodeConfig, takes, flushed: int) -> List[str]:
    """What a reload that took ``takes`` into ``new`` should say beside
    its changes: the warnings ``dataplane check`` (and a start) gives of
    the rates it changed - a plane's rate above the uplink's, guarantees
    that add up past it, a burst too small for the rate - and the frames a
    shaper taken away dropped from its queues (``flushed``, counted as
    queue_flushed)."""
    fields = {n for n, _, _ in takes}
    rates = any(
        f.startswith("vtep.uplink_") or f.endswith((".min_rate", ".max_rate")) for f in fields
    )
    out = []
    for w in new.advice():
        subject = w.split(":", 1)[0]
        if subject in fields or (
            rates and (subject.startswith("planes") or subject == "vtep.uplink_burst")
        ):
            out.append(w)
    if flushed:
        out.append(
            f"vtep.uplink_rate: the shaper taken away dropped the {flushed} frames its plane "
            "queues held (queue_flushed)"
        )
    return out


def _remove_empty(dirs):
    """``dirs`` (deepest first: :func:`_missing_dirs`) removed where still
    empty: a refused start leaves none of what it made."""
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            pass  # something else was put there meanwhile


class NodeService:
    """One node: ``start()`` opens the store, sets the core up, replays the
    pods, starts forwarding, the cluster sync, the control API and the
    metrics endpoint; ``stop()`` undoes it; ``run_forever()`` does both
    around SIGTERM/SIGINT, and reloads on SIGHUP. ``registry``: a Prometheus
    registry to add the core's collector to (tests), instead of a fresh one.
    ``config_path``: the file ``config`` was read from, which :meth:`reload`
    reads again."""

    def __init__(self, config: NodeConfig, registry=None, config_path=None):
        self.config = config
        self.config_path = os.fspath(config_path) if config_path is not None else None
        self._reload_lock = threading.Lock()  # one reload at a time (API, SIGHUP)
        self._reload_asked = False  # SIGHUP came: the main loop reloads
        self.registry = registry
        self.lock = threading.RLock()  # guards the engine's tables (PodLife: and its txn lock)
        self.engine = None
        self.captures = None
        self.store: Optional[StateStore] = None
        self.pods: Optional[PodLife] = None
        self.attachments: Optional[Attachments] = None
        self.sync: Optional[ClusterSync] = None
        self.api: Optional[APIServer] = None
        self.metrics_server = None
        self.net_index = network_index(config)
        self.uplink = None
        self.started = None
        self.cpu_latency = None  # the held CPU latency request (cpu_latency_us)
        self.cpu_latency_no_effect = None  # why it changes nothing on this kernel
        self.express_off = None  # express_lane auto: why the kernel would not take it
        self.express_guard_off = None  # express_lane false: why it would not take the guard
        self._stop = threading.Event()
        self._wake = threading.Event()  # the main loop looks again: stop, or the uplink changed
        self._link_events = None  # the uplink's and lane pod ports' notifications (LinkEvents)
        self._pod_links = {}  # DPDK pod ports: index -> (name, link up) at the last look
        self._lane_links = {}  # lane pod ports: index -> (ifindex, carries) at the last look
        self._lane_names = frozenset()  # their interfaces' names, for the notifications
        self._claims = []  # (fd, path) of the locks held while running
        self._reap_error = None  # the last error of the reaping rounds
        self._periodic_errors = {}  # the main loop's checks: their last error
        self._stop_signal = None  # the signal that asked to stop, said by the main loop
        self.uplink_ifindex = None  # a kernel uplink's, when it was attached
        self.uplink_problem = None  # why the uplink cannot carry frames now
        self._lane_carries = True  # what the express lane was last told of the uplink
        self.vtep_mac = None  # the VTEP's MAC in the core
        # (pid, start time) of a previous run that did not stop cleanly
        self.unclean_stop = None

    # -------------------------------------------------------------- start
    def start(self):
        from .engine import Engine, EngineConfig

        cfg = self.config
        # what the file alone refuses on this machine (lcores it has not, a
        # metrics address not its own): before anything is made or held
        engine_cfg = EngineConfig(**cfg.engine_kwargs(), log_json=True)
        engine_cfg.eal_args()
        why = metrics_problem(cfg)
        if why:
            raise ConfigError(why)
        # then: a second service of the same node (its API socket, its
        # state file) starts nothing - not even a replay of the pods the
        # running one forwards for
        made = _missing_dirs(cfg)
        try:
            self._claim()  # refused (in use): what it made goes too
        except BaseException:
            _remove_empty(made)
            raise
        try:
            # the path is ours by the lock: a socket there is a dead service's
            # (one still exiting may even accept a connection to it)
            check_not_a_file(cfg.api_socket, "api_socket")  # made since the check
            try:
                os.unlink(cfg.api_socket)
            except FileNotFoundError:
                pass
            if cfg.cpu_latency_us is not None:
                # next: a node that cannot hold it starts nothing
                self.cpu_latency = CpuLatencyRequest(cfg.cpu_latency_us)
                self.cpu_latency_no_effect = no_effect(cfg.cpu_latency_us)
                if self.cpu_latency_no_effect:
                    log.warning(
                        "cpu_latency_us: %s; the request is held but changes nothing",
                        self.cpu_latency_no_effect,
                    )
            # metrics before the core: a listen address that cannot be had
            # stops the start before anything is attached (and the API's
            # first request imports the metrics module too: two threads
            # importing prometheus_client at once can see it half initialised)
            self._start_metrics()
            self.store = open_store(cfg.store, cfg.node)
            # the node's name held while running, before any pod is touched:
            # a second service under it (another machine) starts nothing
            self.store.claim_node(
                cfg.node, cfg.vtep.ip, socket.gethostname(), networks=[n.name for n in cfg.networks]
            )
            # what the store's records refuse (dataplane check finds the same)
            errors, warnings = store_findings(cfg, self.store)
            if errors:
                raise ConfigError("\n".join(errors))
            for w in warnings:
                log.warning(w)
            for n in cfg.networks:
                self.store.put_network(
                    n.name, n.vni, n.plane, n.subnet, n.gateway, n.mtu, subnet6=n.subnet6
                )
            # the config's advice as the machine is before the core starts:
            # DPDK's EAL narrows this thread to the main lcore's CPU and takes
            # hugepages, so afterwards lcores and memory_mb would seem not to fit
            advice = cfg.advice()
            self.engine = Engine(engine_cfg)
            self._setup_core()
            self._open_express()
            # changes to a kernel uplink and the lane's pod interfaces seen as they come
            self._link_events = LinkEvents(self._link_wanted, self._wake)
            # missing, down, or an MTU below the underlay's: said at start
            self.check_uplink("start")
            self.sync = ClusterSync(cfg, self.store, self.engine, self.lock, self.net_index)
            self.sync.apply()  # the static flood lists: the cluster view's from the start
            self.pods = PodLife(
                cfg, self.store, self.engine, self.lock, self.net_index, on_removed=self.sync.apply
            )
            if cfg.idle_sleep_us:
                self.engine.set_idle_sleep(cfg.idle_sleep_us)
            if not cfg.idle_yield:
                self.engine.set_idle_yield(False)
            # the core forwards before the replay: each pod's traffic flows
            # again as soon as its ports are back, not after the last pod's
            self.engine.start()
            pods = self.store.pods(node=cfg.node)  # read once: counted, then replayed
            event("core forwarding", pods_to_replay=len(pods))
            self.pods.replay(pods)
            try:  # a veth of a pod this node has no record of (a node removed while down)
                self.pods.remove_orphans()
            except Exception as e:  # noqa: BLE001 - not a reason to forward nothing
                log.warning("looking for orphan pod veths: %s", e)
            if self.store.can_watch:
                self.sync.start()
            routes = api_routes(
                lambda: self.config,
                self.status,
                self.pods,
                self.fdb,
                self.flood,
                fdb_clear=self.fdb_clear,
                fdb_summary=self.fdb_summary,
            )
            self.attachments = Attachments(
                cfg,
                self.store,
                self.pods,
                engine_running=lambda: self.engine is not None and self.engine.running,
            )
            routes[("POST", "/v1/reload")] = Route(
                lambda b, q: self.reload(b.get("config"), bool(b.get("dry_run"))),
                body={"config": _config_path, "dry_run": check_bool},
            )
            routes[("GET", "/v1/networks/records")] = Route(lambda b, q: self.network_records())
            routes[("DELETE", "/v1/networks")] = Route(
                lambda b, q: self.forget_network(q.get("name") or b.get("name")),
                body={"name": _network_name},
                query={"name": _network_name},
                required=("name",),
            )
            routes[("GET", "/v1/nodes")] = Route(lambda b, q: self.nodes())
            routes[("DELETE", "/v1/nodes")] = Route(
                lambda b, q: self.remove_node(q.get("name") or b.get("name")),
                body={"name": _node_name},
                query={"name": _node_name},
                required=("name",),
            )
            routes.update(attachment_routes(self.attachments))
            routes.update(host_routes(StaticHosts(self.store, self.net_index, cfg.vtep)))
            self.captures = Captures(
                self.engine, self.lock, self.engine.ports, self.pods, uplink=self.uplink
            )
            routes.update(self.captures.routes())
            self.pods.before_port_removed = self.captures.port_removed
            self.pods.after_port_added = self.captures.port_added
            self.api = APIServer(cfg.api_socket, routes, log=log)
            self.api.start()
        except BaseException:
            self.stop()
            _remove_empty(made)
            raise
        self.started = time.time()
        event(
            "node service started",
            node=cfg.node,
            mode=cfg.mode,
            kernel_driver=cfg.kernel_driver,
            api=cfg.api_socket,
            metrics=cfg.metrics.listen,
            pods=len(self.pods.known),  # this node's, replayed
            cpu_latency_us=cfg.cpu_latency_us,
        )
        if self.unclean_stop is not None:
            pid, since = self.unclean_stop
            log.warning(
                "the node's previous service (pid %s, started %s) did not stop cleanly "
                "(killed or crashed): its pods were replayed, its ports and sockets closed with it",
                pid,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)),
                extra={"fields": {"previous_pid": pid}},
            )
        for a in advice:
            log.warning(a)

    def _tunnel_gso(self, ifname: str):
        """VXLAN super-frames leave the uplink whole through its tunnel tap;
        where the kernel cannot (before Linux 6.17, no tc ingress, u32 or
        mirred) they are cut before encapsulation, as without it."""
        eng, tap = self.engine, tunnel_tap_name(ifname)
        try:
            eng.open_tunnel_tap(self.uplink, tap)
        except DataplaneError as e:
            log.warning("uplink %s: no tunnel GSO (%s): super-frames are cut", ifname, e)
            return
        try:
            redirect_ingress(tap, ifname)
        except OSError as e:
            eng.close_tunnel_tap(self.uplink)
            log.warning(
                "uplink %s: no tunnel GSO (tap %s: %s): super-frames are cut",
                ifname,
                tap,
                e.strerror or e,
            )
            return
        eng.set_tunnel_gso(self.uplink)
        event("uplink tunnel GSO on", uplink=ifname, tap=tap)

    def _uplink_gso(self, ifname: str):
        """What an AF_PACKET uplink sends in GSO frames, as the device
        allows: VXLAN frames in UDP GSO batches, cut before a virtual device
        (veth) as a NIC cuts them (never batches a veth would carry whole),
        and super-frames whole through the tunnel tap (``vtep.tunnel_gso``)."""
        eng = self.engine
        try:
            if uplink_wire_sized(ifname):
                event("uplink tx-udp-segmentation off", uplink=ifname)
            eng.set_udp_gso(self.uplink)
        except OSError as e:
            log.warning(
                "uplink %s: tx-udp-segmentation stays on (%s): no UDP GSO batches",
                ifname,
                e.strerror or e,
            )
        if self.config.vtep.tunnel_gso:
            self._tunnel_gso(ifname)

    def _set_vtep(self, mac: str, v=None):
        """The core's VTEP as the config has it (or ``v``, a reload's
        ``vtep``), on the uplink, with ``mac``."""
        v = v or self.config.vtep
        self.engine.set_vtep(
            v.address,
            mac,
            -1 if self.uplink is None else self.uplink,  # none yet: nothing leaves
            udp_port=v.udp_port,
            underlay_mtu=v.underlay_mtu,
            gateway=v.gateway,
            next_hop_mac=v.next_hop_mac,
            learning=v.learning,
        )
        self.vtep_mac = mac

    def _setup_core(self):
        """The uplink, planes, networks and VTEP of the config (the static
        flood lists come with the cluster view: ClusterSync.apply). A kernel
        uplink that does not exist yet leaves the core without one: pods of
        the node forward among themselves, frames for the underlay are
        dropped (``no_uplink``), and :meth:`check_uplink` attaches it once it
        exists and is up."""
        cfg, eng = self.config, self.engine
        v = cfg.vtep
        if v.uplink_kind == "dpdk":
            self.uplink = eng.add_port(
                v.uplink_devargs,
                role="uplink",
                rx_queues=v.uplink_rx_queues,
                mtu=v.underlay_mtu,
            )
        elif link_state(v.uplink_ifname) is not None:
            self._add_uplink()
        for pl in cfg.planes.values():
            _set_plane(eng, cfg, pl)
            for d in pl.classify_dscp:
                eng.set_dscp_plane(d, cfg.plane_id(pl.name))
        if v.uplink_rate and self.uplink is not None:
            eng.set_shaper(self.uplink, v.uplink_rate, v.uplink_burst)
        for i, n in enumerate(cfg.networks):
            eng.add_network(i, vni=n.vni, plane=cfg.plane_id(n.plane))
        self._set_vtep(self._vtep_mac())
        if v.learning:
            d = v.duplicate_macs
            eng.set_duplicate_macs(d.moves, d.window_s, d.freeze_s)
            eng.set_learning_limits(age_s=v.learned_age_s)
        event(
            "core ready",
            uplink=v.uplink,
            uplink_attached=self.uplink is not None,
            vtep=v.address,
            vtep_mac=self.vtep_mac if self.uplink is not None or v.mac else None,
            networks=len(cfg.networks),
        )

    def _add_uplink(self):
        """The kernel uplink made the core's uplink port (at start, or once
        one missing at start exists): UDP GSO batches and the tunnel tap on
        an AF_PACKET one. Nothing is left attached if it fails."""
        v, eng = self.config.vtep, self.engine
        try:  # the device attached: check_uplink tells a re-created one by it
            ifindex = socket.if_nametoindex(v.uplink_ifname)
        except OSError:
            raise ConfigError(
                f"vtep.uplink: {v.uplink_ifname}: no such interface in this network namespace"
            ) from None
        # a lane program a killed service left would go on decapsulating
        # beside this core: off, until the lane (if on) hooks the new port
        eng.express_detach(v.uplink_ifname)
        port = add_kernel_port(eng, v.uplink_ifname, v.uplink_driver, role="uplink")
        self.uplink, self.uplink_ifindex = port, ifindex
        try:
            if v.uplink_driver == "afpacket":
                self._uplink_gso(v.uplink_ifname)
        except BaseException:
            self.uplink = self.uplink_ifindex = None
            eng.del_port(port)  # its tunnel tap goes with it
            raise

    def _vtep_mac(self) -> str:
        """The VTEP's MAC: ``vtep.mac``, else the uplink's; with no uplink
        yet, a stand-in that no frame carries (nothing reaches the
        underlay), replaced by the device's when it is attached."""
        v = self.config.vtep
        if v.mac:
            return v.mac
        if self.uplink is None:
            return NO_UPLINK_MAC
        return self.engine.port_info(self.uplink).mac

    def _claim(self):
        """Hold an exclusive lock beside the API socket (and the SQLite
        state file), and one for a kernel uplink under /run/dataplane
        (:func:`~dataplane.startchecks.uplink_lock_path`), for as long as
        this service runs; a DataplaneError that names the holder if another
        service has one. Each file says who holds it: the pid (and, the
        uplink's, the API socket)."""
        cfg = self.config
        pid_text = f"{os.getpid()}\n"
        paths = [("api_socket", cfg.api_socket, f"{cfg.api_socket}.lock", pid_text)]
        if cfg.store.kind == "sqlite":
            paths.append(("store.path", cfg.store.path, f"{cfg.store.path}.lock", pid_text))
        uplink_lock = uplink_lock_path(cfg)
        if uplink_lock is not None:  # two services on one interface: each takes the other's frames
            paths.append(
                (
                    "vtep.uplink",
                    cfg.vtep.uplink_ifname,
                    uplink_lock,
                    uplink_lock_text(cfg.api_socket),
                )
            )
        for field, path, lock, text in paths:
            waited = 0.0
            while True:
                try:
                    fd, said = _lock_file(lock)
                except OSError as e:
                    self._release_claims()
                    raise ConfigError(f"{field}: cannot make {lock}: {e.strerror or e}") from None
                if fd is None:
                    holder = said.split("\n", 1)[0].strip()  # the pid
                    if holder.isdigit() and _exiting(int(holder)) and waited < CLAIM_WAIT_S:
                        # killed, still closing its sockets: the lock is
                        # free in a second or two
                        if waited == 0:
                            log.warning(
                                "%s: %s is held by pid %s, which is exiting: waiting for it",
                                field,
                                path,
                                holder,
                            )
                        time.sleep(0.1)
                        waited += 0.1
                        continue
                    self._release_claims()
                    if field == "vtep.uplink":
                        raise DataplaneError(uplink_taken(path, said)) from None
                    raise DataplaneError(
                        f"{field}: {path} is in use by a running service"
                        + (f" (pid {holder})" if holder else "")
                    ) from None
                if _at_path(fd, lock):  # (not unlinked by a service that stopped meanwhile)
                    break
                os.close(fd)
            # a clean stop removes the file: a pid in it is a run that was
            # killed or crashed (said once the service has started)
            before = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if before.isdigit() and field == "api_socket":
                self.unclean_stop = (int(before), os.fstat(fd).st_mtime)
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode(), 0)
            self._claims.append((fd, lock))

    def _keep_own_files(self):
        """The files this service holds, put back where they were removed
        while it ran (a tidy-up of its directories): the SQLite state file,
        from the copy it has open (``SqliteStore.keep_file``), the API
        socket, listening again (``APIServer.keep_socket``), and its lock
        files, made and locked again, so that a second service still finds
        them held. Each said as a warning when done."""
        for said in (self.store.keep_file(), self.api.keep_socket() if self.api else None):
            if said:
                warning_event(said)
        for i, (fd, lock) in enumerate(self._claims):
            if _at_path(fd, lock):
                continue
            text = os.pread(fd, 4096, 0)
            new, said = _lock_file(lock)
            if new is None:
                holder = said.split("\n", 1)[0].strip()
                raise DataplaneError(
                    f"{lock}: this service's lock file was removed while it ran, and another "
                    f"service (pid {holder or '?'}) holds the one made since: two services on "
                    "one socket or store - stop one"
                ) from None
            os.ftruncate(new, 0)
            os.pwrite(new, text, 0)
            os.close(fd)
            self._claims[i] = (new, lock)
            warning_event("a lock file of this service was removed while it ran: made again",
                          path=lock)  # fmt: skip

    def _release_claims(self):
        for fd, lock in self._claims:
            try:
                os.unlink(lock)  # still ours: the lock is held until the close below
            except OSError:
                pass
            os.close(fd)
        self._claims = []

    def _start_metrics(self):
        if self.config.metrics.listen is None:
            return
        from .engine import ABI_VERSION
        from .metrics import CoreCollector, make_registry

        reg = self.registry or make_registry(
            CoreCollector(self.snapshot, node=self.config.node, abi=ABI_VERSION)
        )
        if self.registry is not None:
            reg.register(CoreCollector(self.snapshot, node=self.config.node, abi=ABI_VERSION))
        m = self.config.metrics
        # a killed run of this service (its pid in the lock file) that is
        # still exiting closes its files one by one: the lock may be free
        # before its listening socket is, so the address is waited for
        dying = self.unclean_stop[0] if self.unclean_stop else None
        waited = 0.0
        while True:
            try:
                self.metrics_server = metrics_http_server(m.host, m.port, reg)
                return
            except OSError as e:
                if (
                    e.errno == errno.EADDRINUSE
                    and dying is not None
                    and _closing(dying)
                    and waited < CLAIM_WAIT_S
                ):
                    time.sleep(0.05)
                    waited += 0.05
                    continue
                raise ConfigError(f"metrics.listen: {m.listen}: {e.strerror or e}") from None

    # --------------------------------------------------------------- pods
    def add_pod(self, name: str, netns: str, spec) -> dict:
        return self.pods.add_pod(name, netns, spec)

    def del_pod(self, name: str) -> dict:
        return self.pods.del_pod(name)

    # ------------------------------------------------------------- status
    def _open_express(self):
        """The express lane loaded: with ``true`` a kernel that cannot take
        it stops the start (nothing is attached yet); with ``auto`` the node
        goes on without it, every frame through the core, and says why
        once. With ``false`` its programs are loaded to carry nothing, as
        the guard of the pods' host ends (``Engine.express_guard``); a
        kernel that will not take them leaves those ends as the interface
        settings close them, and the log says what stays open."""
        from .engine import HOST_ENDS_OPEN

        self.express_off = self.express_guard_off = None
        if self.config.express_lane is False:
            try:
                self.engine.express_open(carry=False)
            except DataplaneError as err:
                self.express_guard_off = str(err)
                warning_event(
                    f"pods' host ends without the lane's guard: {HOST_ENDS_OPEN}",
                    why=self.express_guard_off,
                )
            return
        try:
            self.engine.express_open()
        except DataplaneError as err:
            if self.config.express_lane:
                raise
            self.express_off = str(err)
            warning_event(
                "express lane off: frames between this node's pods take the core's path",
                why=self.express_off,
            )

    def snapshot(self):
        """What the metrics collector reads (None once stopped). The store's
        part (pods per network, endpoints) is read first, outside the
        engine's lock, within ``reach.PROBE_WAIT_S`` + ``reach.VIEW_WAIT_S``:
        a hung store leaves it unknown, and the counters come at once."""
        store = self.store
        if store is None:
            return None
        counts = self._store_counts(store)
        with self.lock:
            if self.engine is None or self.store is None:
                return None
            taken_at = time.monotonic()
            snap = take_snapshot(
                self.config,
                self.engine,
                self.store,
                self.net_index,
                self.uplink,
                counts=counts,
                owners=self.pods.port_owners() if self.pods is not None else None,
            )
            snap = snap._replace(taken_at=taken_at)
            if self.cpu_latency is not None:
                snap = snap._replace(cpu_latency_limit_us=self.cpu_latency.limit_us())
            if self.config.vtep.uplink_kind == "kernel":
                snap = snap._replace(uplink_up=self.uplink_problem is None)
            if self.pods is not None:
                snap = snap._replace(pods_not_attached=len(self.pods.unattached))
            return snap

    def _store_counts(self, store):
        """(pods per network of this node, endpoints per network, None), or
        (None, None, why not) if the store does not answer a probe or a
        read in time."""
        err = reach.probe(store)
        if err is None:
            try:
                with reach.bounded(store):
                    return store_counts(self.config, store)
            except reach.NOT_SERVED as e:
                err = str(e)
        return None, None, err

    def store_state(self, error: Optional[str]) -> dict:
        """The store as status shows it: where, whether it answers (``error``:
        why not, from the probe just made), since when it does not (the
        last answer), and what that leaves out."""
        store = self.store
        sync = self.sync
        out = {
            "kind": store.kind if store else None,
            "where": reach.where(store) if store else None,
            "answers": error is None,
            # it answers, but not to this node (access control): error says why
            "refuses": error is not None and reach.refuses(error),
            "error": error,
            "last_answer": reach.last_answer(store),
            "cluster_view_synced": sync.synced_at if sync is not None else None,
            # remote FDB entries and flood lists the core refused (logged, skipped)
            "cluster_view_refused": sync.refused if sync is not None else None,
        }
        if error is not None:
            out["consequence"] = (
                "pod counts per network are unknown; pods cannot be added or deleted; the "
                "core forwards on what it has (cluster view as of its last sync)"
            )
        return out

    def status(self) -> dict:
        snap = self.snapshot()
        report = status_report(self.config, snap, self.engine.running, self.started, self.uplink)
        # mbufs of the core's pool in flight or queued: back to its idle
        # level once traffic stops, whatever the frames were
        report["mbufs_in_use"] = snap.mbufs_in_use
        # when the counters were read (the host's monotonic clock, seconds):
        # rates between two reports (dataplane top) divide by its difference
        report["counters_at"] = snap.taken_at
        report["cpu_latency_us"] = self.config.cpu_latency_us
        # express_lane: auto, and the kernel would not take the lane: why
        report["express_lane_off"] = self.express_off
        # express_lane: false, and the kernel would not take its guard: why
        report["express_guard_off"] = self.express_guard_off
        # the lane encapsulates pods' TCP to remote VTEPs (Linux 6.2 and later)
        report["express_remote"] = self.engine.express_remote
        # updates of remote MACs the lane's table had no room for (the core carries them)
        report["express_remote_refused"] = self.engine.express_remote_refused
        # a capture running (None: none): the express lane waits for its end
        report["capture"] = self.captures.summary() if self.captures is not None else None
        if snap.cpu_latency_limit_us is not None:
            # what the kernel applies: the lowest request of every holder
            report["cpu_latency_limit_us"] = snap.cpu_latency_limit_us
            # None, or why the request changes nothing on this kernel
            report["cpu_latency_no_effect"] = self.cpu_latency_no_effect
        report["fdb_entries"] = snap.fdb_entries
        report["uplink_problem"] = self.uplink_problem  # None while it carries frames
        # pods a replay could not attach: {pod: why}; tried again every round
        report["pods_not_attached"] = dict(self.pods.unattached) if self.pods else {}
        report["store_error"] = snap.store_error  # None while the store answers
        report["store"] = self.store_state(snap.store_error)
        if snap.learning is not None:
            from .engine import WORKER_COUNTERS

            # what the control thread did, and the reports the workers held
            # back over their budget (a learning storm)
            col = WORKER_COUNTERS.index("learn_limited")
            report["learning"] = {
                **snap.learning,
                "reports_limited": int(snap.counters.worker[:, col].sum()),
            }
        return report

    def flood(self, network: str) -> list:
        """The VTEPs ``network`` floods to (broadcast, multicast, unknown
        unicast), as the core has them: [{"vtep", "resolved"}]; resolved:
        the underlay next hop's MAC is known, so frames to it leave."""
        with self.lock:  # NotFound for a network a reload just removed
            vteps = self._live_engine().flood_list(self._net_of(network))
        return [{"vtep": ip, "resolved": ok} for ip, ok in vteps]

    def _pod_txn(self):
        """The pods' transaction lock (taken before ``self.lock``, never
        after it: dataplane.podlife.PodLife), or nothing before there are pods."""
        return self.pods.txn if self.pods is not None else contextlib.nullcontext()

    def _live_engine(self):
        """The engine, with self.lock held; NotFound while the service stops."""
        if self.engine is None:
            raise NotFound("the node service is stopping")
        return self.engine

    def _net_of(self, network: Optional[str]) -> Optional[int]:
        """The core's index of ``network`` (None: none given, all of them);
        NotFound unless it is one of this node's."""
        if network is None:
            return None
        if network not in self.net_index:
            raise NotFound(
                f"network: no network {network!r} on this node "
                f"(it has {', '.join(sorted(self.net_index)) or 'none'})"
            )
        return self.net_index[network]

    def _fdb_views(self, network: Optional[str]):
        """The engine, the network's index (None: all), the networks' map
        as it is now (a copy: a reload changes the service's own) and this
        node's pods' and the cluster's endpoints by (network index, mac),
        for the FDB's views: none of it read from the store (this node's
        pods as the service recorded them, the cluster's as the cluster view
        has them), so the views answer while the store does not."""

        def by_key(endpoints):  # {(network index, mac): endpoint}
            return {
                (index[e["network"]], e["mac"].lower()): e
                for e in endpoints
                if e["network"] in index
            }

        with self.lock:
            net = self._net_of(network)
            index = dict(self.net_index)
            engine = self._live_engine()
            ports = {p.index: p.name for p in engine.ports()}
            remote = by_key(self.sync.remote.values())
        local = by_key(self.pods.local_endpoints())
        return engine, net, index, ports, local, remote

    def _fdb_store_note(self) -> Optional[str]:
        """None while the store answers (a probe of ``reach.PROBE_WAIT_S``
        at most); else what the FDB's views cannot vouch for."""
        store = self.store
        if store is None or not store.can_watch:
            return None  # SQLite: no cluster view to go stale
        err = reach.probe(store)
        if err is None:
            return None
        synced = self.sync.synced_at if self.sync is not None else None
        when = time.strftime("%H:%M:%S", time.localtime(synced)) if synced else "never: none yet"
        return reach.down_message(
            store,
            err,
            "the entries are the core's; origin and owner of other nodes' pods and hosts "
            "(origin cluster, host, api) are as the cluster view last heard them (last "
            f"snapshot {when}) and may be stale; this node's pods and learned MACs are "
            "current; the core forwards on these entries",
        )

    def _fdb_read(self, read):
        """read(): the engine's table, held only while it is copied: pods
        and the cluster view are not held up while a large one is."""
        try:
            return read()
        except ConfigError:
            if self.engine is None:
                raise NotFound("the node service is stopping") from None
            raise

    def fdb(self, network: Optional[str] = None, mac: Optional[str] = None) -> list:
        """The FDB (:func:`dataplane.status.fdb_report`): of ``network`` (a
        name), of one ``mac`` (normalised), or all."""
        engine, net, index, ports, local, remote = self._fdb_views(network)
        entries = self._fdb_read(lambda: engine.fdb_list(net, mac))
        rows = fdb_report(entries, index, ports, local, remote)
        note = self._fdb_store_note()
        if note:  # said on every row (the answer stays a list)
            for r in rows:
                r["store_error"] = note
                if r["origin"] in STALE_ORIGINS:
                    r["stale"] = True
        return rows

    def fdb_summary(self, network: Optional[str] = None) -> list:
        """Entries by network and origin (:func:`dataplane.status.fdb_summary`):
        of ``network`` (a name), or of every network."""
        engine, net, index, _, local, remote = self._fdb_views(network)
        rows = self._fdb_read(lambda: engine.fdb_rows(net))
        nets = index if network is None else {network: net}
        out = fdb_summary(rows, nets, local, remote)
        note = self._fdb_store_note()
        if note:
            for r in out:
                r["store_error"] = note
                r["stale"] = list(STALE_ORIGINS)  # counts that may be out of date
        return out

    def fdb_clear(self, network: Optional[str] = None, mac: Optional[str] = None) -> dict:
        """MACs learned from the underlay removed from the FDB (of
        ``network``, of ``mac``, or all): learned again from their next
        frame, a duplicate's freeze lifted. Entries of pods, hosts and the
        cluster are never removed; naming one is an error."""
        with self.lock:  # the network's index as the tables have it (a reload may change it)
            net = self._net_of(network)
            if not self.config.vtep.learning:
                raise ConfigError(
                    "vtep.learning is off on this node: no MAC is learned, so none is cleared"
                )
            n = self._live_engine().learn_clear(net, mac)
        if n == 0 and mac is not None:
            rows = self.fdb(network, mac)
            if rows:
                r = rows[0]
                raise ConfigError(
                    f"mac: {mac} in {r['network']} is not a learned entry (origin "
                    f"{r['origin']}): only MACs learned from the underlay are cleared"
                )
        event("fdb cleared", learned=n, network=network or "all", mac=mac or "all")
        return {"cleared": n}

    # -------------------------------------------------------------- nodes
    def nodes(self) -> list:
        """The cluster's nodes: those whose service runs (it holds the name:
        VTEP, host, pid, since) and those only pods still name, with their
        pod counts."""
        # bounded as the other views that only the store can answer (host
        # list): a store without quorum fails it at once, naming the store
        with reach.needed(
            self.store,
            "the nodes' claims and pods are recorded in it, so none can be listed; "
            "the core forwards on",
        ):
            claims = {c["node"]: c for c in self.store.node_claims()}
            pods = collections.Counter(p.get("node") for p in self.store.pods())
        me = self.config.node
        out = []
        for name in sorted(set(claims) | {n for n in pods if n} | {me}):
            c = claims.get(name, {})
            out.append(
                {
                    "node": name,
                    "running": name in claims or name == me,
                    "this": name == me,
                    "vtep": c.get("vtep", self.config.vtep.ip if name == me else None),
                    "host": c.get("host"),
                    "pid": c.get("pid"),
                    "started": c.get("started"),
                    "pods": pods.get(name, 0) + (pods.get(None, 0) if name == me else 0),
                }
            )
        return out

    def remove_node(self, name: str) -> dict:
        """Forget a node that is gone for good (store.remove_node): its pods'
        records, addresses and MACs, and its CNI attachments; the other
        nodes drop its MACs and stop flooding to its VTEP as they see its
        endpoints go. Refused for this node and for one whose service runs.
        On a node's own store (SQLite) the node removed is an old name of
        this one (renamed): its pods' veths, marked as that name's in this
        store, are on this host and are deleted too (``veths``). On a
        cluster's store (etcd) likewise where the name's pods' records name
        this node's VTEP (an old name of this node): ``veths`` says how many
        when there were any."""
        if name == self.config.node:
            if self.store.kind == "sqlite":
                raise ConfigError(
                    f"node {name} is the name this service runs under on its store "
                    f"{self.config.store.path}: delete its pods one by one ('dataplane pod del'); "
                    "'dataplane node remove' forgets an old name of this node"
                )
            raise ConfigError(
                f"node {name} is this service's own node: delete its pods ('dataplane pod del') "
                "or stop the service and remove it from another node"
            )
        if self.store.kind != "sqlite":  # another node's records, not under the engine's lock
            # an old name of this node (renamed: its pods' records name this
            # node's VTEP): its pods' veths on this host go with it. Another
            # node's - even one that ran beside this one on this host - are
            # left to its own start, which removes its orphans
            mine = any(
                same_ip(e.get("vtep"), self.config.vtep.ip) for e in self.store.endpoints(node=name)
            )
            removed = self.store.remove_node(name)  # refused while it runs
            if mine:
                with self._pod_txn():  # an add of one of its pods' names waits for it
                    veths = self._remove_veths_of(name)
                if veths:
                    removed["veths"] = len(veths)
        else:
            # the file answers at once; no pod add of this node in between
            with self._pod_txn(), self.lock:
                removed = self.store.remove_node(name)
                removed["veths"] = len(self._remove_veths_of(name))
        event("node removed", node=name, **removed)
        return {"node": name, **removed}

    def _remove_veths_of(self, node: str) -> list:
        """Delete the pod veths of this host marked as node ``node``'s in
        this store (an old name of this node, removed), as a start deletes
        its own orphans; each logged. The names deleted."""
        known = {e["host_ifname"] for e in self.store.endpoints() if e.get("host_ifname")}
        return self.pods.delete_marked_veths(
            node,
            known,  # a recorded pod's: kept
            "removed node's pod veth deleted",
            "veth %s of a removed node's pod %s plane %s not deleted: %s",
            node=node,
        )

    # ------------------------------------------------------------- reload
    def reload(self, expected: Optional[str] = None, dry_run: bool = False) -> dict:
        """The configuration file read again, and what a running service
        takes from it applied while traffic flows (``RELOADABLE``: the
        uplink shaper's rate and burst, in place, queued frames kept - but
        for a shaper taken away (no ``uplink_rate``), whose queued frames
        are dropped and said (``warnings``); the
        planes' guaranteed and maximum rates, DSCP marking and
        classification; the VTEP's learning; a network's storm control and
        anti-spoofing, on its pods' ports; the static remotes; networks
        added, with their records in the store, and removed when no pod of the node is on
        them, after which the cluster view is read again for the endpoints
        of the networks added). A file that does not
        validate, or that changes anything else, changes nothing: the error
        names what is wrong in it, or the fields only a restart applies.
        ``expected``: the file the caller means (``dataplane reload -c
        FILE``); another than the service's own is refused, since the
        service reads only the file it was started from. Returns the file
        and the fields changed (old and new values). ``dry_run``: the
        same checks of the file, the store's records, the pods on networks
        removed and the core's room for networks added, and the same answer
        (``dry_run: True``), nothing applied - the core's own steps (its
        tables for a network, a shaper's queues) are not tried, and what
        they refuse (out of memory) only a reload says. ``warnings``: what
        ``dataplane check`` would warn of the rates changed (a plane's rate
        above the uplink's, ...), logged too."""
        path = self.config_path
        if path is None:
            raise ConfigError(
                "reload: this service was not started from a configuration file "
                "(dataplane run -c FILE): there is none to read again"
            )
        if expected is not None and os.path.realpath(expected) != os.path.realpath(path):
            raise ConfigError(
                f"reload: this service reads {path}, the file it was started from, not "
                f"{expected}: nothing changed (edit {path} and reload, or restart the service "
                f"with -c {expected})"
            )
        with self._reload_lock:
            new = load_config(path)
            takes, restart = reload_changes(self.config, new)
            if restart:
                raise ConfigError(
                    f"{path}: not reloaded, nothing changed: {', '.join(restart)} "
                    f"{'changes' if len(restart) == 1 else 'change'} only with a restart of the "
                    f"service (a reload takes {', '.join(RELOADABLE)})"
                )
            changed = [{"field": n, "old": o, "new": v} for n, o, v in takes]
            added, removed = network_changes(self.config, new)
            refused = []  # static flood lists the core refused
            # no pod added or removed meanwhile: none sees half the networks
            with self._pod_txn():
                # a stop that had the pod lock first has closed the engine
                # and the store (an API request still in its thread)
                if self.engine is None:
                    raise ConfigError("reload: the service is not running")
                if added or removed:
                    self._check_networks(path, new)
                # what can fail comes first, each step undone if a later one
                # fails: the networks added into the core, their records in
                # the store (without the engine's lock: the views do not wait
                # on the store), the rates and the storm control
                with self.lock:
                    eng = self.engine
                    if eng is None or not eng.running:
                        raise ConfigError("reload: the service is not running")
                    self._check_unused(path, removed)
                    if dry_run:
                        self._free_slots(added)
                        out = {"config": path, "changed": changed, "dry_run": True}
                        warnings = _reload_warnings(new, takes, 0)
                        if warnings:  # as the reload would say them
                            out["warnings"] = warnings
                        return out
                    slots = self._add_networks(new, added)
                recorded = []  # records this reload made
                names = [n.name for n in new.networks]
                try:
                    if added:  # claimed before recorded: no other node forgets them meanwhile
                        self.store.set_claim_networks({*names, *self.net_index})
                    for n in added:
                        fresh = self.store.network(n.name) is None
                        self.store.put_network(
                            n.name, n.vni, n.plane, n.subnet, n.gateway, n.mtu, subnet6=n.subnet6
                        )
                        if fresh:
                            recorded.append(n.name)
                    guards = {  # the pod ports whose guards change, read from the store
                        name: self.pods.guard_plan(name)
                        for name in _fields_of(takes, "anti_spoofing")
                    }
                    with self.lock:  # the engine stays: a stop waits for the pod lock
                        flushed = eng.counters().drops().get("queue_flushed", 0)
                        self._take_guards_and_settings(new, takes, guards)
                        flushed = eng.counters().drops().get("queue_flushed", 0) - flushed
                except BaseException:
                    # the claim put back first: the store refuses to delete
                    # the record of a network a running node's claim lists,
                    # this node's own included
                    if added:
                        self._claim_networks(list(self.net_index))
                    self._undo_added(slots, recorded)
                    raise
                with self.lock:
                    # last, what cannot be undone (and fails only for want of
                    # memory: a network left in the core keeps its index
                    # taken, see _add_networks)
                    for name in removed:
                        i = self.net_index[name]
                        try:
                            eng.del_network(i)
                        except DataplaneError as e:
                            log.error("network %s stays in the core at index %d: %s", name, i, e)
                        if self.sync is not None:
                            self.sync.forget_network(i)
                    self._take_config(new, slots, removed)
                    # with the index map it reads, in the same hold of the lock
                    remotes = any(f == REMOTES for f, _, _ in takes)
                    if (added or removed or remotes) and self.sync is not None:
                        self.sync.reconfigure(new, resync=bool(added))
                        refused = self.sync.flood_refused()
                # a node's own store forgets a network it removed (its VNI
                # free for another); a cluster's keeps it for the other nodes
                if new.store.kind == "sqlite":
                    self._delete_records(removed)
                if added or removed:
                    self._claim_networks(names)
            for n in added:
                event(
                    "network added", network=n.name, vni=n.vni, plane=n.plane, index=slots[n.name]
                )
            for name in removed:
                event("network removed", network=name)
        event(
            "configuration reloaded" if takes else "configuration reloaded: no change",
            config=path,
            changed={n: [o, v] for n, o, v in takes},
        )
        out = {"config": path, "changed": changed}
        if refused:
            out["refused"] = refused
        warnings = _reload_warnings(new, takes, flushed)
        for w in warnings:
            log.warning("reload: %s", w)
        if warnings:
            out["warnings"] = warnings
        return out

    def _take_guards_and_settings(self, new: NodeConfig, takes, guards):
        """The pod ports' anti-spoofing (``guards``: {network: its ports'
        :meth:`PodLife.guard_plan`}) and the settings ``takes`` changes as
        ``new`` has them (self.lock held). On an error, what was changed
        is put back as the running configuration has it before it is
        raised: the core stays as the configuration the service keeps."""
        done = []
        try:
            for name, plan in guards.items():
                self.pods.reguard(new.network(name), plan)  # undoes itself on an error
                done.append(name)
            self._take_settings(new, takes)
        except BaseException:
            old = self.config
            for name in done:
                try:
                    self.pods.reguard(old.network(name), guards[name])
                except Exception as e:  # noqa: BLE001 - said; the reload's error is raised
                    log.error("reload: network %s: its guards could not be put back: %s", name, e)
            try:
                self._take_settings(old, takes, was=new)
            except Exception as e:  # noqa: BLE001 - said; the reload's error is raised
                log.error("reload: the settings could not all be put back: %s", e)
            raise

    def _take_settings(self, new: NodeConfig, takes, was: Optional[NodeConfig] = None):
        """The uplink's shaper, the VTEP's learning, the planes (rates,
        marking, classification) and the networks' storm control as ``new``
        has them, where ``takes`` changes them, from ``was`` (default: the
        running configuration; self.lock held)."""
        eng = self.engine
        was = was or self.config
        fields = {n for n, _, _ in takes}
        # an uplink not attached yet takes the new rates when it is
        if self.uplink is not None and fields & {"vtep.uplink_rate", "vtep.uplink_burst"}:
            v = new.vtep
            eng.set_shaper(self.uplink, v.uplink_rate, v.uplink_burst)
        if any(n.startswith(LEARNING_FIELDS) for n in fields):
            self._take_learning(new.vtep, was.vtep)
        for pl in {n.split(".")[1] for n, _, _ in takes if n.startswith("planes.")}:
            if pl in new.planes:
                _set_plane(eng, new, new.planes[pl])
        if any(n.endswith(".classify_dscp") for n in fields):
            self._take_classification(new, was)
        for name in _fields_of(takes, "storm_pps", "storm_burst"):
            if name in self.net_index and any(n.name == name for n in new.networks):
                self._set_storm(new.network(name))

    def _take_classification(self, new: NodeConfig, old: NodeConfig):
        """The inner DSCPs that pick a plane (``classify_dscp``) as ``new``
        has them, from ``old`` (self.lock held): a DSCP no plane claims any
        more goes back to its network's plane, then the ones new or moved
        are set."""
        eng = self.engine
        was = {d: pl.name for pl in old.planes.values() for d in pl.classify_dscp}
        now = {d: pl.name for pl in new.planes.values() for d in pl.classify_dscp}
        for d in sorted(was.keys() - now.keys()):
            eng.set_dscp_plane(d, None)
        for d, name in sorted(now.items()):
            if was.get(d) != name:
                eng.set_dscp_plane(d, new.plane_id(name))

    def _take_learning(self, v, was):
        """The VTEP's learning as ``v`` (the reloaded ``vtep``) has it, from
        ``was`` (self.lock held): its limits and duplicate detection before
        it is switched on; switched off, the MACs it learned removed at
        once, as ``dataplane fdb clear`` removes them, rather than left to
        age."""
        eng = self.engine
        if v.learning:
            d = v.duplicate_macs
            eng.set_duplicate_macs(d.moves, d.window_s, d.freeze_s)
            eng.set_learning_limits(age_s=v.learned_age_s)
        if v.learning != was.learning:
            self._set_vtep(self.vtep_mac, v)
            if not v.learning:
                event("learned MACs removed: learning switched off", learned=eng.learn_clear())

    def _undo_added(self, slots: Dict[str, int], recorded):
        """A reload refused after networks were added: out of the core
        again (``slots``), and the store's records it made (``recorded``)
        deleted."""
        with self.lock:
            if self.engine is not None:
                for i in slots.values():
                    self.engine.del_network(i)
        self._delete_records(recorded)

    def _claim_networks(self, names):
        """The node's claim says it carries ``names``; an error is said,
        not raised (the claim is made again from the renewals' record)."""
        try:
            self.store.set_claim_networks(names)
        except DataplaneError as e:
            log.warning("the node's claim still names its networks of before: %s", e)

    def network_records(self) -> list:
        """The store's network records (with etcd, the cluster's), each with
        the running nodes that carry it (their claims; this node's
        configuration) and its endpoints: what ``forget_network`` looks at."""
        carried: Dict[str, list] = collections.defaultdict(list)
        for c in self.store.node_claims():
            for name in c.get("networks", ()):
                carried[name].append(c["node"])
        me = self.config.node
        for n in self.config.networks:
            if me not in carried[n.name]:
                carried[n.name].append(me)
        used = collections.Counter(e["network"] for e in self.store.endpoints())
        return [
            {
                "name": r["name"],
                "vni": r["vni"],
                "plane": r["plane"],
                "subnet": r["subnet"],
                "carried_by": sorted(carried.get(r["name"], ())),
                "endpoints": used.get(r["name"], 0),
            }
            for r in self.store.networks()
        ]

    def _not_configured(self, name: str):
        """Busy if network ``name`` is in this node's configuration."""
        if any(n.name == name for n in self.config.networks):
            raise Busy(
                f"network {name} is in this node's configuration ({self.config_path or 'networks'}): "
                "take it out of networks and reload first (dataplane reload)"
            )

    def forget_network(self, name: str) -> dict:
        """The store's record of network ``name`` deleted, its VNI free for
        another network: with etcd, once no running node carries it and no
        pod or static host of the cluster is on it; a network of this node's
        configuration is refused (a reload takes it out first). NotFound
        for a name the store has no record of."""
        self._not_configured(name)
        with self._pod_txn():  # no pod of this node added to it meanwhile
            self._not_configured(name)  # nor a reload that took it in while this waited
            rec = self.store.network(name)
            if rec is None or not self.store.delete_network(name):
                raise NotFound(
                    f"network {name}: the store has no record of it ('dataplane net records' "
                    "lists them)"
                )
        event("network record forgotten", network=name, vni=rec["vni"])
        return {"network": name, "vni": rec["vni"]}

    def _delete_records(self, names):
        """The store's records of networks ``names`` deleted; one that
        stays (the store refuses or does not answer) is said, not raised:
        the reload's own outcome is the one to report."""
        for name in names:
            try:
                self.store.delete_network(name)
            except Exception as e:  # noqa: BLE001
                log.warning("network %s: its record stays in the store: %s", name, e)

    def _check_networks(self, path: str, new: NodeConfig):
        """ConfigError if the store's records refuse the networks of ``new``
        as a start would: one added that the cluster defines otherwise (a
        VNI another network has), one removed that pods of this node are
        attached to (each named). Reads the store: called without the
        engine's lock."""
        errors, warnings = store_findings(new, self.store)
        if errors:
            raise ConfigError(f"{path}: not reloaded, nothing changed: " + "; ".join(errors))
        for w in warnings:
            log.warning(w)

    def _check_unused(self, path: str, removed):
        """Busy if a port of the core is on a network of ``removed`` (a pod
        the store does not know of: being attached by hand, say); self.lock
        held."""
        nets = {self.net_index[name]: name for name in removed}
        for p in self.engine.ports():
            if p.network in nets:
                raise Busy(
                    f"{path}: not reloaded, nothing changed: network {nets[p.network]} still "
                    f"has port {p.name} (port {p.index}) in the core"
                )

    def _add_networks(self, new: NodeConfig, added) -> Dict[str, int]:
        """Networks ``added`` into the core, each at the lowest index no
        network has (self.lock held; their flood lists come with the cluster
        view's: ClusterSync.reconfigure): {name: index}. On an error none of
        them stays."""
        eng, slots = self.engine, {}
        free = self._free_slots(added)
        try:
            for n, i in zip(added, free):
                eng.add_network(i, vni=n.vni, plane=new.plane_id(n.plane))
                slots[n.name] = i
        except BaseException:
            for i in slots.values():
                eng.del_network(i)
            raise
        return slots

    def _free_slots(self, added) -> List[int]:
        """The core's indices networks ``added`` would take, the lowest
        free first (self.lock held); ConfigError if they do not fit."""
        # a network that failed to leave the core keeps its index taken
        taken = set(self.net_index.values()) | set(self.engine.networks())
        free = [i for i in range(MAX_NETWORKS) if i not in taken][: len(added)]
        if len(free) < len(added):  # the removed ones go after the new ones are in
            raise ConfigError(
                f"networks: {added[len(free)].name}: the core holds at most {MAX_NETWORKS} "
                "networks, the ones this reload removes included: remove them in one reload, "
                "add the new ones in the next"
            )
        return free

    def _set_storm(self, n):
        """Network ``n``'s storm control on each of its pod ports in the
        core, as a pod added now gets it (self.lock held)."""
        i = self.net_index[n.name]
        for p in self.engine.ports():
            if p.network == i and p.role == "pod":
                self.engine.set_port_storm(p.index, n.storm_pps, n.storm_burst)

    def _take_config(self, new: NodeConfig, slots: Dict[str, int], removed):
        """``new`` becomes the configuration every part of the service reads,
        its networks at their indices in the core (self.lock held)."""
        self.config = new
        for name in removed:  # the map is shared: PodLife, StaticHosts, ClusterSync
            del self.net_index[name]
        self.net_index.update(slots)
        for part in (self.pods, self.attachments):
            if part is not None:
                part.config = new

    # --------------------------------------------------------------- stop
    def stop(self):
        """Ports closed, hugepage memory returned, API socket removed; pod
        interfaces and addresses stay so pods keep them across a restart,
        and so do the express lane's programs on their veths."""
        self._stop.set()
        self._wake.set()
        if self._link_events is not None:
            self._link_events.close()
            self._link_events = None
        if self.sync is not None:
            self.sync.stop()
        if self.captures is not None:
            self.captures.close()
        if self.api:
            self.api.stop()
            self.api = None
        if self.metrics_server:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        with self._pod_txn(), self.lock:  # after the pod transaction under way, if any
            if self.engine:
                # the express lane's programs stay on the pods' veths: pods
                # of this node keep reaching each other while the service is
                # away (a restart, an upgrade); the next start takes them
                # over (with express_lane: false, as the host ends' guard)
                self.engine.close(keep_express=True)
                self.engine = None
            if self.store:
                self.store.close()
                self.store = None
            self._release_cpu_latency()
        self._release_claims()
        if self.started is not None:
            event("node service stopped", node=self.config.node)
        else:  # a start refused half-way: undone, never started
            event("node service start undone", node=self.config.node)

    def _release_cpu_latency(self):
        if self.cpu_latency is not None:
            self.cpu_latency.release()
            self.cpu_latency = None

    def run_forever(self):
        me = os.getpid()

        def _sig(signum, frame):
            if os.getpid() != me:  # a forked helper (pyroute2 netns) inherited this
                return
            # nothing logged here: the handler may run inside a write to the
            # log stream, and a second write would fail before the stop is set
            self._stop_signal = signal.Signals(signum).name
            self._stop.set()
            self._wake.set()

        def _hup(signum, frame):
            if os.getpid() != me:
                return
            # what a closed terminal sends too: a reload, never a stop; done
            # by the main loop, not inside the handler
            self._reload_asked = True
            self._wake.set()

        signal.signal(signal.SIGTERM, _sig)
        signal.signal(signal.SIGINT, _sig)
        signal.signal(signal.SIGHUP, _hup)
        self.start()
        try:
            reap_at = time.monotonic() + REAP_EVERY_S
            while not self._stop.is_set():
                # once a second, and at once when the kernel says the uplink changed
                self._wake.wait(1.0)
                self._wake.clear()
                if self._stop.is_set():
                    break
                if self._reload_asked:
                    self._reload_asked = False
                    try:
                        self.reload()
                    except DataplaneError as e:
                        log.error("SIGHUP: %s", e)
                told = self._link_events.take() if self._link_events is not None else set()
                told &= {self.config.vtep.uplink_ifname, LinkEvents.ANY}
                self._periodic(
                    "uplink check", self.check_uplink, "link event" if told else "periodic check"
                )
                self._periodic("pod link check", self._check_pod_links)
                self._periodic("express lane pod link check", self._check_lane_links)
                if self.pods is not None:
                    self._periodic("vhost-user socket links", self.pods.repin_vhost)
                if time.monotonic() >= reap_at:
                    reap_at = time.monotonic() + REAP_EVERY_S
                    self._periodic("housekeeping", self._reap)
                    self._periodic("own files", self._keep_own_files)
        finally:
            if self._stop_signal:
                event("signal received, stopping", signal=self._stop_signal)
            self.stop()

    def _periodic(self, what: str, check, *args):
        """One of the main loop's checks: an error it did not expect (out of
        file descriptors, say) is logged once while it lasts, and the loop -
        the node's forwarding - goes on; the next round tries again."""
        try:
            check(*args)
        except Exception as e:  # noqa: BLE001 - a check's, not the node's end
            why = f"{type(e).__name__}: {e}"
            if self._periodic_errors.get(what) != why:
                log.error("%s: %s; the service goes on, the next round tries again", what, why,
                          exc_info=e)  # fmt: skip
            self._periodic_errors[what] = why
        else:
            if self._periodic_errors.pop(what, None) is not None:
                event(f"{what} works again")

    def check_uplink(self, noticed: str = "periodic check") -> Optional[str]:
        """What keeps a kernel uplink from carrying frames now, or None:
        gone (or not there yet: missing when the service started), down or
        without carrier, or an MTU below the underlay's. One that appears
        under its name - created after the service started, or deleted and
        created again (a new ifindex) - is attached here
        (:meth:`_take_uplink`); until it can be, that is the problem, and
        the next look tries again. Looked at once a second and as soon as
        the kernel tells of a change to the device (``noticed``: which of
        the two this is, or "start"). Logged when it changes; shown by
        status and ``dataplane_uplink_up``."""
        v = self.config.vtep
        if v.uplink_kind != "kernel":
            return None  # a DPDK uplink: its PMD owns the device
        name = v.uplink_ifname
        st = link_state(name)
        problem = None
        if st is not None and (self.uplink is None or st[0] != self.uplink_ifindex):
            problem = self._take_uplink(st, noticed)  # None once attached: then as any
        if problem is None:
            problem = self._link_problem(st)
        # gone, down or without carrier: the pods' frames to the underlay
        # take the core's path, which counts them dropped, not the express
        # lane's (told before the status says so; an MTU below the
        # underlay's is the core's to cut or count alike, either way)
        carries = st is not None and self.uplink is not None and bool(st[1] and st[2])
        if carries != self._lane_carries:
            with self.lock:
                if self.engine is not None and self.engine.express_loaded:
                    self.engine.express_uplink_carries(carries)
                    self._lane_carries = carries
        if problem != self.uplink_problem:
            if problem:
                log.error("uplink: %s", problem)
            else:
                event("uplink carries frames again", uplink=name)
        self.uplink_problem = problem
        return problem

    def _link_wanted(self, name: str) -> bool:
        """Whether the kernel's notification of a change to interface
        ``name`` should wake the main loop: a kernel uplink's, a lane pod
        port's (called by the notifications' thread)."""
        v = self.config.vtep
        return (v.uplink_kind == "kernel" and name == v.uplink_ifname) or name in self._lane_names

    def _port_owners(self) -> Dict[int, Tuple[str, str]]:
        """Pod port index -> (pod, plane) of the pods this node runs."""
        pods = self.pods
        if pods is None:
            return {}
        return {
            pl["port"]: (name, pl["plane"])
            for name, info in list(pods.known.items())
            for pl in info.get("planes", ())
            if pl.get("port") is not None
        }

    def _check_lane_links(self):
        """A kernel pod port in the express lane whose interface cannot
        take frames (the pod's end of its veth down: no carrier) is out of
        the lane's destinations until it can: frames to it, from pods and
        from the underlay, then take the core's path, which counts them
        dropped (kport_kernel_tx), where the lane would count them
        delivered and the kernel drop them unseen. Looked at once a second
        and as soon as the kernel tells of a change to one of them; logged
        when it changes."""
        with self.lock:  # no pod joins or leaves the lane meanwhile
            eng = self.engine
            if eng is None or not eng.express_loaded:
                self._lane_links, self._lane_names = {}, frozenset()
                return
            now, names, owners = {}, set(), None
            for port, ifindex in eng.express_pod_ports().items():
                try:
                    name = socket.if_indextoname(ifindex)
                except OSError:
                    name = None  # gone: its pod's removal takes it out of the lane
                st = link_state(name) if name else None
                carries = bool(st is not None and st[0] == ifindex and st[1] and st[2])
                was = self._lane_links.get(port)
                before = was[1] if was is not None and was[0] == ifindex else True  # joins carrying
                if carries != before:
                    eng.express_port_carries(port, carries)
                    owners = self._port_owners() if owners is None else owners
                    pod, plane = owners.get(port, (None, None))
                    if name is None:
                        pass  # gone, not down: the pod's removal is logged, with why
                    elif carries:
                        event("pod interface carries frames again", pod=pod, plane=plane,
                              interface=name)  # fmt: skip
                    else:
                        warning_event(
                            "pod interface is down (no carrier): frames to it are dropped "
                            "(kport_kernel_tx) until it is up",
                            pod=pod,
                            plane=plane,
                            interface=name,
                        )
                now[port] = (ifindex, carries)
                if name:
                    names.add(name)
            self._lane_links, self._lane_names = now, frozenset(names)

    def _check_pod_links(self):
        """A memif or vhost-user pod's application connecting to its plane's
        port, or gone from it (the DPDK port's link), logged with the pod
        and the plane; looked at once a second. Frames to a port whose
        application is gone are dropped (tx_full): that is said once, here,
        and shown by status (LINK DOWN) and dataplane_port_link_up."""
        eng, pods = self.engine, self.pods
        if eng is None or pods is None:
            return
        where = self._port_owners()
        now = {  # (an af_xdp port's link is its veth's: no application of its own)
            p.index: p
            for p in eng.ports()
            if p.role == "pod" and p.link is not None and not is_af_xdp_port(p.name)
        }
        for i, p in now.items():
            was = self._pod_links.get(i)
            if was is not None and was[0] != p.name:
                was = None  # another port in that slot
            if (was is None and not p.link) or (was is not None and was[1] == p.link):
                continue  # new, no application yet (it connects in its own time); no change
            pod, plane = where.get(i, (None, None))
            if p.link:
                event("pod application connected", pod=pod, plane=plane, port=p.name)
            else:
                log.warning(
                    "pod %s plane %s: its application is gone from port %s (link down); frames "
                    "to it are dropped (tx_full) until it connects again",
                    pod,
                    plane,
                    p.name,
                )
        self._pod_links = {i: (p.name, p.link) for i, p in now.items()}

    def _link_problem(self, st) -> Optional[str]:
        """What keeps the uplink (``st``: its ``link_state``, None if gone)
        from carrying frames, or None."""
        v = self.config.vtep
        name = v.uplink_ifname
        if st is None and self.uplink is None:
            return (
                f"{name} does not exist (it was not there when the service started): nothing "
                "reaches the underlay, pods of this node reach each other; it is attached once "
                f"it exists and is up with an MTU of at least {v.underlay_mtu}"
            )
        if st is None:
            return f"{name} is gone: nothing reaches the underlay; " + (
                "it is attached again once it is back and up"
                if v.uplink_driver == "afpacket"
                else "re-create it, then restart the service to attach it"
            )
        if not st[1]:
            return f"{name} is down: " + (
                "frames to the underlay are dropped (kport_tx_down) until it is up"
                if v.uplink_driver == "afpacket"
                else "frames to the underlay wait in its tx ring until it is up"
            )
        if not st[2]:
            return f"{name} is without carrier: " + (
                "frames to the underlay are dropped (kport_kernel_tx) until it comes back"
                if v.uplink_driver == "afpacket"
                else "frames to the underlay wait in its tx ring until it comes back"
            )
        if st[3] < v.underlay_mtu:
            return (
                f"{name} has MTU {st[3]}, below vtep.underlay_mtu {v.underlay_mtu}: full-size "
                "pod frames are dropped by the device after encapsulation"
            )
        return None

    def _take_uplink(self, st, noticed: str) -> Optional[str]:
        """A kernel uplink device under the configured name that the core
        does not have (``st``: its ``link_state``): one created after the
        service started without it, or one deleted and created again (a
        bond, VLAN or veth rebuilt, a driver reloaded: another ifindex than
        the core's). The first becomes the core's uplink port as the start
        would have made it; the second moves the core's port to the new
        device (it keeps its index, shaper and counters). Either way: UDP
        GSO batches, the tunnel tap, the VTEP's MAC if it is the device's,
        and the underlay next hops asked (again), which also tells them the
        MAC. Done once the device is up with at least the underlay's MTU (a
        network manager that builds one sets it up last, and the port's
        rings are sized from the MTU it has then). None when done, else why
        not yet."""
        v = self.config.vtep
        name, old = v.uplink_ifname, self.uplink_ifindex
        new, up, _, mtu = st
        first = self.uplink is None
        was = (
            f"{name} exists now (ifindex {new}; it was missing when the service started)"
            if first
            else f"{name} was re-created (ifindex {old} -> {new})"
        )
        if not first and v.uplink_driver != "afpacket":
            return (
                f"{was}: the core still holds the old device (a vtep.uplink_driver "
                f"{v.uplink_driver} uplink is not moved while the service runs); restart the "
                "service to attach the new one"
            )
        if not up:
            return f"{was} and is down: it is attached once it is up"
        if mtu < v.underlay_mtu:
            return (
                f"{was} with MTU {mtu}, below vtep.underlay_mtu {v.underlay_mtu}: it is "
                "attached once its MTU is at least that"
            )
        t0 = time.monotonic()
        try:
            with self.lock:
                eng = self.engine
                if first:
                    self._attach_new_uplink()
                else:
                    self.uplink_ifindex = eng.reopen_afpacket_port(self.uplink)
                    self._uplink_gso(name)
                mac = self._vtep_mac()
                if mac != self.vtep_mac:
                    self._set_vtep(mac)
                asked = eng.refresh_neighbors()
        except Exception as e:  # noqa: BLE001 - the service goes on; the next look tries again
            if not first:
                with self.lock:  # a port reopened on the new device, the rest not done:
                    self.uplink_ifindex = old  # the next look does it all again
            return f"{was}, but attaching it failed: {e}; tried again every second"
        event(
            "uplink attached" if first else "uplink re-attached",
            uplink=name,
            old_ifindex=old,
            new_ifindex=self.uplink_ifindex,
            vtep_mac=mac,
            next_hops_asked=asked,
            ms=round((time.monotonic() - t0) * 1000, 1),
            noticed=noticed,
        )
        return None

    def _attach_new_uplink(self):
        """The uplink missing at start made the core's uplink port now, with
        the config's shaper, and the VTEP moved onto it; undone whole if a
        step fails (the next look tries again)."""
        v, eng = self.config.vtep, self.engine
        self._add_uplink()
        try:
            if v.uplink_rate:
                eng.set_shaper(self.uplink, v.uplink_rate, v.uplink_burst)
            self._set_vtep(self._vtep_mac())
        except BaseException:
            port, self.uplink, self.uplink_ifindex = self.uplink, None, None
            try:
                self._set_vtep(self._vtep_mac())
            finally:
                eng.del_port(port)  # its tunnel tap goes with it
            raise
        if self.captures is not None:
            self.captures.uplink = self.uplink
            self.captures.port_added(self.uplink)

    def _reap(self):
        """Pods whose namespace or veths went away while the service ran are
        removed (PodLife.reap); a store that does not answer waits for the
        next round; a hung one holds the main loop (and its uplink checks)
        for at most reach.VIEW_WAIT_S a request, not the store's timeout
        (a removal it cuts off is atomic, and looked at again next round).
        Any other error ends the round, never the service: the main loop
        runs it as its other checks (:meth:`_periodic`)."""
        try:
            with reach.bounded(self.store):
                self.pods.reap()
            self._reap_error = None
        except DataplaneError as e:
            if str(e) != self._reap_error:  # once per outage, not every round
                log.warning(
                    "housekeeping: cannot look for pods whose interfaces are gone (%s); "
                    "nothing is removed, the next round tries again",
                    e,
                )
            self._reap_error = str(e)
