"""Prometheus metrics, read from the core's counter arrays at scrape time.

Nothing is pushed per packet: :class:`CoreCollector` asks its source for a
snapshot when Prometheus scrapes. The source and the registry are injectable,
so tests use a fresh registry.

A port's series are named by what the port is, never by the core's index
for it: ``name`` (the kernel interface or DPDK device, made from the pod's
name and plane, or the uplink's), ``pod`` and ``plane`` (a pod port's),
``role`` and ``network``. Indexes are handed out as ports open, so a
restart (pods replayed in their store's order) or a pod deleted and added
again gives the same port another one; a label holding it would start new
series for every port each time. ``dataplane_port_index`` gives the index
as its value, for ``dataplane capture`` and the core's logs.
"""

from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import CollectorRegistry

from . import __version__


class PortLabel(NamedTuple):
    index: int
    name: str
    role: str
    network: str
    tunnel_gso_frames: int = 0  # VXLAN super-frames sent whole (the uplink)
    # a memif port left alone after a fault (dp_shm.h); None: a port whose
    # driver reads no pod's shared memory (no shm_faults, no set_aside series)
    set_aside: Optional[bool] = False
    link: Optional[bool] = None  # a DPDK port's link; None: not known (kernel ports)
    pod: str = ""  # a pod port's pod and plane ("" for the uplink)
    plane: str = ""
    # a pod port in the express lane, or the uplink it sends out of: (rx
    # packets, rx bytes, tx packets, tx bytes) the lane carried, beside what
    # the core forwarded, and the frames it took and handed back to the core
    express: Optional[Tuple[int, int, int, int, int]] = None


class NetLabel(NamedTuple):
    index: int
    name: str
    vni: int
    plane: str


class PlaneLabel(NamedTuple):
    index: int
    name: str


class Snapshot(NamedTuple):
    counters: object  # dataplane.engine.Counters
    ports: List[PortLabel]
    networks: List[NetLabel]
    pods_per_network: Optional[Dict[str, int]]  # None: the store did not answer
    endpoints_per_network: Optional[Dict[str, int]]
    planes: List[PlaneLabel] = []
    shaped: Dict[int, Dict[int, int]] = {}  # port -> {plane: queue depth}
    mbufs_in_use: Optional[int] = None  # of the core's pool
    mbufs: Optional[int] = None  # the pool's size
    cpu_latency_limit_us: Optional[int] = None  # the kernel's, while the node holds a request
    fdb_entries: Optional[int] = None  # in the core's FDB, every network
    learning: Optional[Dict[str, int]] = None  # Engine.learn_stats(), with vtep.learning on
    store_error: Optional[str] = None  # why the state store did not answer
    uplink_up: Optional[bool] = None  # a kernel uplink: False while it cannot carry frames
    express_lane: bool = False  # the express lane loaded (its frames in the port counters too)
    express_guard: bool = False  # its programs loaded to carry nothing: the host ends' guard
    pods_not_attached: int = 0  # this node's pods a replay could not attach (no forwarding)
    taken_at: Optional[float] = None  # time.monotonic() as the counters were read


class CoreCollector:
    """Custom collector over a ``source()`` returning a :class:`Snapshot`."""

    def __init__(self, source: Callable[[], Optional[Snapshot]], node: str = "", abi: int = 0):
        self.source = source
        self.node = node
        self.abi = abi

    def describe(self):
        return []  # values are only known at scrape time

    def collect(self):
        from .engine import DROP_REASONS, NET_COUNTERS, PORT_COUNTERS, WORKER_COUNTERS

        info = InfoMetricFamily("dataplane_build", "Build of the running dataplane")
        info.add_metric([], {"version": __version__, "abi": str(self.abi), "node": self.node})
        yield info
        snap = self.source()
        if snap is None:
            return
        c = snap.counters

        pl = ["name", "pod", "plane", "role", "network"]
        shm_i = PORT_COUNTERS.index("shm_faults")
        port_fams = {}
        for i, cname in enumerate(PORT_COUNTERS):  # rx_packets -> ..._total
            port_fams[i] = CounterMetricFamily(
                f"dataplane_port_{cname}", f"Port {cname.replace('_', ' ')}", labels=pl
            )
        tnl = CounterMetricFamily(
            "dataplane_port_tunnel_gso_frames",
            "VXLAN super-frames sent whole through the uplink's tunnel tap",
            labels=pl,
        )
        aside = GaugeMetricFamily(
            "dataplane_port_set_aside",
            "1 while a memif port is left alone after a fault in its pod's shared memory",
            labels=pl,
        )
        link = GaugeMetricFamily(
            "dataplane_port_link_up",
            "A DPDK port's link: 1 up, 0 down (a memif or vhost-user pod whose application is "
            "not connected: frames to it are dropped as tx_full)",
            labels=pl,
        )
        index = GaugeMetricFamily(
            "dataplane_port_index",
            "The core's index of the port (dataplane status, dataplane capture): handed out "
            "as ports open, so it may change across a restart or a pod deleted and added",
            labels=pl,
        )
        xl = pl + ["direction"]
        xpk = CounterMetricFamily(
            "dataplane_port_express_packets",
            "Frames the express lane carried from (rx) and to (tx) a pod port, kernel to "
            "kernel; on the uplink, what it encapsulated out of it (tx) and the VXLAN it "
            "decapsulated from it (rx); counted in the port's rx_packets and tx_packets "
            "too (either path)",
            labels=xl,
        )
        xby = CounterMetricFamily(
            "dataplane_port_express_bytes",
            "Bytes the express lane carried from (rx) and to (tx) a pod port; on the "
            "uplink, out of it (tx, encapsulated) and into it (rx, VXLAN it decapsulated)",
            labels=xl,
        )
        xback = CounterMetricFamily(
            "dataplane_port_express_to_core_packets",
            "Frames of a pod port the express lane took and handed back to the core, the "
            "kernel refusing to encapsulate them as still a tunnel's: a pod forwarding "
            "(routing, NAT) what the lane decapsulated; counted in the port's rx_packets by "
            "the core",
            labels=pl,
        )
        for p in snap.ports:
            lv = [p.name, p.pod, p.plane, p.role, p.network]
            index.add_metric(lv, p.index)
            if p.express is not None:
                xpk.add_metric(lv + ["rx"], p.express[0])
                xby.add_metric(lv + ["rx"], p.express[1])
                xpk.add_metric(lv + ["tx"], p.express[2])
                xby.add_metric(lv + ["tx"], p.express[3])
                if p.role == "pod":
                    xback.add_metric(lv, p.express[4])
            for i, fam in port_fams.items():
                if i == shm_i and p.set_aside is None:
                    continue  # no shared memory to fault in
                fam.add_metric(lv, int(c.port[p.index, i]))
            if p.role == "uplink":  # the tunnel tap is the uplink's
                tnl.add_metric(lv, p.tunnel_gso_frames)
            if p.set_aside is not None:
                aside.add_metric(lv, int(p.set_aside))
            if p.link is not None:
                link.add_metric(lv, int(p.link))
        yield from port_fams.values()
        yield index
        yield tnl
        yield aside
        yield link
        yield xpk
        yield xby
        yield xback

        nl = ["network", "vni", "plane"]
        net_fams = {
            i: CounterMetricFamily(
                f"dataplane_network_{n}", f"Network {n.replace('_', ' ')}", labels=nl
            )
            for i, n in enumerate(NET_COUNTERS)
        }
        for n in snap.networks:
            for i, fam in net_fams.items():
                fam.add_metric([n.name, str(n.vni), n.plane], int(c.net[n.index, i]))
        yield from net_fams.values()

        drops = CounterMetricFamily(
            "dataplane_drops", "Packets dropped, by reason", labels=["reason"]
        )
        for i, reason in enumerate(DROP_REASONS):
            drops.add_metric([reason], int(c.drop[i]))
        yield drops

        pods = GaugeMetricFamily(
            "dataplane_network_pods",
            "Pods of this node attached to the network (sum over the nodes for the cluster's)",
            labels=["network"],
        )
        eps = GaugeMetricFamily(
            "dataplane_network_endpoints",
            "Endpoints (local and remote) of the network",
            labels=["network"],
        )
        if snap.pods_per_network is not None:  # unknown while the store does not answer
            for n in snap.networks:
                pods.add_metric([n.name], snap.pods_per_network.get(n.name, 0))
                eps.add_metric([n.name], snap.endpoints_per_network.get(n.name, 0))
            yield pods
            yield eps
        if snap.uplink_up is not None:
            yield GaugeMetricFamily(
                "dataplane_uplink_up",
                "1 while the kernel uplink carries frames; 0 while it is gone, down, its MTU "
                "is below the underlay's, or it was re-created and is not attached yet",
                value=1 if snap.uplink_up else 0,
            )
        yield GaugeMetricFamily(
            "dataplane_pods_not_attached",
            "Pods of this node whose ports a restart could not make again (no forwarding "
            "for them; the housekeeping tries again every round; the log and "
            "'dataplane pod list' say why)",
            value=snap.pods_not_attached,
        )
        yield GaugeMetricFamily(
            "dataplane_store_up",
            "1 if the state store (SQLite file or etcd) answered this scrape, else 0 "
            "(it does not answer, or refuses this node: 'dataplane status' says which)",
            value=0 if snap.store_error else 1,
        )

        if snap.mbufs_in_use is not None:
            yield GaugeMetricFamily(
                "dataplane_mbufs_in_use",
                "mbufs of the core's pool in flight or queued",
                value=snap.mbufs_in_use,
            )
        if snap.mbufs is not None:  # what dataplane_mbufs_in_use is a share of
            yield GaugeMetricFamily(
                "dataplane_mbufs", "mbufs in the core's pool (its size)", value=snap.mbufs
            )

        if snap.cpu_latency_limit_us is not None:
            yield GaugeMetricFamily(
                "dataplane_node_cpu_latency_limit_seconds",
                "CPU wake-up latency the kernel allows idle CPUs now, while the node holds "
                "its cpu_latency_us request (the lowest request of every holder)",
                value=snap.cpu_latency_limit_us / 1e6,
            )

        if snap.fdb_entries is not None:
            yield GaugeMetricFamily(
                "dataplane_fdb_entries",
                "Entries in the core's FDB (local and remote MACs, every network)",
                value=snap.fdb_entries,
            )
        if snap.learning is not None:
            ev = CounterMetricFamily(
                "dataplane_learning_events",
                "What learning from the underlay did: learned, moved (to another VTEP), "
                "refused_static (a local or configured MAC), refused_limit, aged (not heard "
                "within the age), duplicate (found moving too often: frozen where it is), "
                "refused_frozen (a move of a frozen MAC)",
                labels=["event"],
            )
            for k, n in snap.learning.items():  # Engine.learn_stats(): its events
                if k != "entries":  # and how many there are now (below)
                    ev.add_metric([k], n)
            yield ev
            yield GaugeMetricFamily(
                "dataplane_learned_macs",
                "MACs learned from the underlay now in the FDB",
                value=snap.learning["entries"],
            )

        yield from self._planes(snap)

        polls = WORKER_COUNTERS.index("polls")
        busy = WORKER_COUNTERS.index("busy_polls")
        ratio = GaugeMetricFamily(
            "dataplane_worker_busy_ratio",
            "Polls that found packets / all polls, since start",
            labels=["worker"],
        )
        total = CounterMetricFamily("dataplane_worker_polls", "Poll loops run", labels=["worker"])
        busy_total = CounterMetricFamily(
            "dataplane_worker_busy_polls", "Poll loops that found frames", labels=["worker"]
        )
        lookups = CounterMetricFamily(
            "dataplane_worker_fdb_lookups",
            "FDB lookups (per frame from pods and from the uplink)",
            labels=["worker"],
        )
        misses = CounterMetricFamily(
            "dataplane_worker_fdb_cache_misses",
            "FDB lookups the worker's cache could not answer",
            labels=["worker"],
        )
        slow = CounterMetricFamily(
            "dataplane_worker_fdb_slow_lookups",
            "FDB cache misses the key's home bucket in the table could not answer either",
            labels=["worker"],
        )
        sleeps = CounterMetricFamily(
            "dataplane_worker_idle_sleeps",
            "Sleeps of the idle worker (idle_sleep_us; 0 while it spins)",
            labels=["worker"],
        )
        yields = CounterMetricFamily(
            "dataplane_worker_idle_yields",
            "Times the idle spinning worker yielded its CPU to other runnable threads",
            labels=["worker"],
        )
        limited = CounterMetricFamily(
            "dataplane_worker_learn_limited",
            "Learning reports the worker held back: new source MACs from the underlay, "
            "or learned ones heard again, over its 64 a millisecond of each",
            labels=["worker"],
        )
        held = CounterMetricFamily(
            "dataplane_worker_neigh_held",
            "Frames to a VTEP whose underlay next hop was being resolved, held until "
            "ARP answered (sent then, or dropped as neigh_unresolved after 2 s, as "
            "no_uplink if the uplink went meanwhile)",
            labels=["worker"],
        )
        lost = CounterMetricFamily(
            "dataplane_worker_slowpath_lost",
            "Reports to the control thread its full ring could not take: a new MAC "
            "learned from the underlay, an ARP answer heard (the frame goes on; the "
            "next frame or ARP reports it again)",
            labels=["worker"],
        )
        for w in range(c.worker.shape[0]):
            p = int(c.worker[w, polls])
            ratio.add_metric([str(w)], (int(c.worker[w, busy]) / p) if p else 0.0)
            total.add_metric([str(w)], p)
            busy_total.add_metric([str(w)], int(c.worker[w, busy]))
            lookups.add_metric([str(w)], int(c.worker[w, WORKER_COUNTERS.index("fdb_lookups")]))
            misses.add_metric([str(w)], int(c.worker[w, WORKER_COUNTERS.index("fdb_cache_misses")]))
            slow.add_metric([str(w)], int(c.worker[w, WORKER_COUNTERS.index("fdb_slow_lookups")]))
            sleeps.add_metric([str(w)], int(c.worker[w, WORKER_COUNTERS.index("idle_sleeps")]))
            yields.add_metric([str(w)], int(c.worker[w, WORKER_COUNTERS.index("idle_yields")]))
            limited.add_metric([str(w)], int(c.worker[w, WORKER_COUNTERS.index("learn_limited")]))
            held.add_metric([str(w)], int(c.worker[w, WORKER_COUNTERS.index("neigh_held")]))
            lost.add_metric([str(w)], int(c.worker[w, WORKER_COUNTERS.index("slowpath_lost")]))
        yield ratio
        yield total
        yield busy_total
        yield lookups
        yield misses
        yield slow
        yield sleeps
        yield yields
        yield limited
        yield held
        yield lost

    @staticmethod
    def _planes(snap):
        from .engine import LATENCY_BOUNDS_S, QOS_COUNTERS

        c = snap.counters
        hist = HistogramMetricFamily(
            "dataplane_plane_latency_seconds",
            "Time from rx to tx inside the dataplane, per plane",
            labels=["plane"],
        )
        for pl in snap.planes:
            counts, total = c.latency(pl.index)
            acc, buckets = 0, []
            for bound, n in zip(LATENCY_BOUNDS_S + [float("inf")], counts):
                acc += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), acc))
            hist.add_metric([pl.name], buckets, total)
        yield hist
        fams = {
            name: CounterMetricFamily(
                f"dataplane_plane_queue_{name}",
                f"Frames {name.replace('_', ' ')} by the plane queue of a shaped port",
                labels=["name", "plane"],
            )
            for name in QOS_COUNTERS
            if name != "sent_bytes"
        }
        depth = GaugeMetricFamily(
            "dataplane_plane_queue_depth",
            "Frames waiting in the plane queue of a shaped port",
            labels=["name", "plane"],
        )
        names = {p.index: p.name for p in snap.planes}
        port_names = {p.index: p.name for p in snap.ports}
        for port, planes in snap.shaped.items():
            for plane, d in planes.items():
                if plane not in names:
                    continue
                lab = [port_names.get(port, str(port)), names[plane]]
                depth.add_metric(lab, d)
                for i, name in enumerate(QOS_COUNTERS):
                    if name in fams:
                        fams[name].add_metric(lab, int(c.qos[port, plane, i]))
        yield from fams.values()
        yield depth


def make_registry(collector: CoreCollector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg
