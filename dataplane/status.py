"""What the node shows: the snapshot the metrics collector reads, the
status report, and the control API's routes.
"""

import time
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from . import __version__
from .api import Route
from .checks import (
    check_json_document,
    check_mac,
    check_name,
    check_netns_path,
    check_pod_name,
)
from .config import NodeConfig
from .engine import LATENCY_BOUNDS_S, WORKER_COUNTERS, lib
from .errors import NotFound
from .hosts import is_static
from .store import reach


def store_counts(config, store):
    """(this node's pods per network {network: set of pods}, the cluster's
    endpoints per network {network: n}, None) from ``store``; (None, None,
    why) if it does not answer."""
    pods, eps = {}, {}
    try:
        here = {p["name"] for p in store.pods(node=config.node)}
        for e in store.endpoints():
            if e["pod"] in here:
                pods.setdefault(e["network"], set()).add(e["pod"])
            eps[e["network"]] = eps.get(e["network"], 0) + 1
    except reach.NOT_SERVED as e:
        return None, None, str(e)
    return pods, eps, None


def take_snapshot(
    config,
    engine,
    store,
    networks: Dict[str, int],
    uplink: Optional[int],
    counts=None,
    owners: Optional[Dict[int, Tuple[str, str]]] = None,
):
    """A :class:`dataplane.metrics.Snapshot` of ``engine``'s counters with the
    labels they need (ports, networks, planes, pods per network from
    ``store``, or ``counts`` if given: :func:`store_counts` read before;
    queue depths of the shaped ``uplink``). ``networks`` maps a network's
    name to the core's index; ``owners`` a pod port's index to its (pod,
    plane)."""
    from .metrics import NetLabel, PlaneLabel, PortLabel, Snapshot

    names = {i: n for n, i in networks.items()}
    whole = owners is not None  # a pod port is shown once its pod owns it
    owners = owners or {}
    # (a guard's ports carry nothing: no lane counts to show)
    lane = engine.express_ports() if engine.express_carrying else []
    express = {p: engine.express_counts(p) for p in lane}
    ports = [
        PortLabel(
            p.index,
            p.name,
            p.role,
            names.get(p.network, "") if p.network is not None else "",
            p.tunnel_gso_frames,
            p.set_aside if p.shared_memory else None,
            p.link,
            *owners.get(p.index, ("", "")),
            express.get(p.index),
        )
        for p in engine.ports()
        # one being attached (opened, not yet guarded and in its network):
        # not shown until it is whole, so it never shows under other labels
        if not (whole and p.role == "pod" and p.index not in owners)
    ]
    nets = [NetLabel(networks[n.name], n.name, n.vni, n.plane) for n in config.networks]
    # pods of this node, endpoints of the cluster; a cluster store that does
    # not answer leaves them unknown, not the counters (forwarding goes on)
    pods, eps, store_error = counts if counts is not None else store_counts(config, store)
    planes = [PlaneLabel(config.plane_id(p.name), p.name) for p in config.planes.values()]
    shaped = {}
    if config.vtep.uplink_rate and uplink is not None:
        shaped[uplink] = {pl.index: engine.queue_depth(uplink, pl.index) for pl in planes}
    return Snapshot(
        engine.counters(),
        ports,
        nets,
        None if pods is None else {k: len(v) for k, v in pods.items()},
        eps,
        planes,
        shaped,
        engine.pool_in_use(),
        mbufs=engine.config.n_mbufs,
        fdb_entries=engine.fdb_count(),
        learning=engine.learn_stats() if config.vtep.learning else None,
        store_error=store_error,
        express_lane=engine.express_carrying,
        express_guard=engine.express_guard,
    )


def status_report(
    config, snap, forwarding: bool, started: Optional[float], uplink: Optional[int]
) -> dict:
    """The node's status (``dataplane status``, ``GET /v1/status``) from
    snapshot ``snap``."""
    c = snap.counters
    return {
        "node": config.node,
        "version": __version__,
        "mode": config.mode,
        "vtep": config.vtep.address,
        "uplink": config.vtep.uplink,
        "uplink_rate_bps": config.vtep.uplink_rate or None,  # its shaper; None: not shaped
        "express_lane": snap.express_lane,  # loaded: auto or true, and the kernel took it
        # false: the lane's program on the pods' host ends as their guard only
        "express_guard": snap.express_guard,
        "uptime_s": round(time.time() - (started or time.time()), 1),
        "started_at": started,  # when this service started (wall clock): another, a restart
        "forwarding": forwarding,
        "networks": [
            {
                "name": n.name,
                "vni": n.vni,
                "plane": n.plane,
                "pods": (
                    None if snap.pods_per_network is None else snap.pods_per_network.get(n.name, 0)
                ),
                **c.net_dict(n.index),
            }
            for n in snap.networks
        ],
        "ports": [
            {
                "port": p.index,
                "name": p.name,
                "pod": p.pod or None,  # the pod and plane a pod port serves
                "plane": p.plane or None,
                "role": p.role,
                "network": p.network or None,  # None for the uplink, as pod and plane
                **c.port_dict(p.index),
                "tunnel_gso_frames": p.tunnel_gso_frames,
                "set_aside": p.set_aside,
                "link": p.link,  # a DPDK port's; None: not known (kernel ports)
                # what the express lane carried, counted above too; None: not in it
                "express": (
                    None
                    if p.express is None
                    else dict(
                        zip(
                            ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "to_core_packets"),
                            p.express,
                        )
                    )
                ),
            }
            for p in snap.ports
        ],
        "drops": {k: v for k, v in c.drops().items() if v},
        # each forwarding worker's own counters (polls, busy_polls: the
        # polls that found frames, fdb lookups and cache misses, ...)
        "workers": [
            {"worker": w, **{k: int(c.worker[w, i]) for i, k in enumerate(WORKER_COUNTERS)}}
            for w in range(c.worker.shape[0])
        ],
        # frames that waited for a VTEP's next hop to answer ARP (those it
        # never answered within 2 s are in drops as neigh_unresolved)
        "neigh_held": int(c.worker[:, WORKER_COUNTERS.index("neigh_held")].sum()),
        # learning reports and heard ARP answers the control thread's full
        # ring refused (not drops: the frames went on)
        "slowpath_lost": int(c.worker[:, WORKER_COUNTERS.index("slowpath_lost")].sum()),
        "planes": [
            _plane_status(c, pl, snap.shaped.get(uplink, {}), uplink, config) for pl in snap.planes
        ],
        # upper bounds of the planes' latency buckets; the last bucket is beyond them
        "latency_bounds_us": [round(b * 1e6, 3) for b in LATENCY_BOUNDS_S],
    }


def _plane_status(c, pl, depths, uplink, config):
    q = {
        k: None if v is None or v == float("inf") else round(v * 1e6, 1)
        for k, v in (
            ("p50_us", c.latency_quantile(pl.index, 0.5)),
            ("p99_us", c.latency_quantile(pl.index, 0.99)),
        )
    }
    # frames timed: with p50/p99 None, 0 says none passed, more says they are
    # beyond the histogram's last bound (100 ms)
    buckets, lat_sum = c.latency(pl.index)
    d = {"name": pl.name, "plane": pl.index, "frames": sum(buckets), **q}
    # the histogram itself (bounds: the report's latency_bounds_us), for
    # rates over an interval (dataplane top)
    d["latency_buckets"] = buckets
    d["latency_sum_us"] = round(lat_sum * 1e6, 3)
    if pl.index in depths:
        d.update(c.qos_dict(uplink, pl.index), queue_depth=depths[pl.index])
        conf = config.planes.get(pl.name)
        # the rates in force on the shaped uplink (None: no guarantee / no cap)
        d["min_rate_bps"] = (conf.min_rate or None) if conf else None
        d["max_rate_bps"] = (conf.max_rate or None) if conf else None
    return d


def fdb_report(entries, networks: Dict[str, int], port_names, local_eps, remote_eps) -> list:
    """The FDB as ``dataplane fdb`` and ``GET /v1/fdb`` show it: one dict a
    MAC, sorted by network, kind and MAC. ``entries``: the core's
    (:meth:`Engine.fdb_list`); ``networks``: a network's name to its index;
    ``port_names``: a port's index to its name; ``local_eps`` and
    ``remote_eps``: {(network index, mac): endpoint} of this node's pods and
    of other nodes' (the cluster view), to say whose a MAC is.

    ``origin`` says why the entry is there: ``pod`` (a pod of this node),
    ``port`` (a local port no pod record names), ``cluster`` (a pod of
    another node), ``host`` (a host described to the cluster), ``learned``
    (from the underlay, with ``age_s``: since it was learned or last
    heard), ``api`` (set in the core with no record behind it)."""
    names = {i: n for n, i in networks.items()}
    rows = []
    for e in entries:
        key = (e.network, e.mac)
        row = {"network": names.get(e.network, str(e.network)), "mac": e.mac, "type": e.kind}
        if e.kind == "local":
            row["port"] = port_names.get(e.port, str(e.port))
            ep = local_eps.get(key)
            row["origin"] = "pod" if ep else "port"
            if ep:
                row.update(pod=ep["pod"], plane=ep["plane"])
        else:
            row["vtep"] = e.vtep
            ep = remote_eps.get(key)
            if e.learned:
                row.update(origin="learned", age_s=round(e.age_s, 1))
                if e.frozen_s:
                    row["frozen_s"] = round(e.frozen_s, 1)
            elif ep and is_static(ep):
                row.update(origin="host", host=ep["pod"])
            elif ep:
                row.update(origin="cluster", pod=ep["pod"], plane=ep["plane"], node=ep["node"])
            else:
                row["origin"] = "api"
        rows.append(row)
    rows.sort(key=lambda r: (r["network"], r["type"], r["mac"]))
    return rows


#: the origins fdb_report gives, in the order fdb_summary counts them
FDB_ORIGINS = ("pod", "port", "cluster", "host", "learned", "api")
#: the origins told from the cluster view: possibly out of date while the
#: store does not answer (an "api" entry may be a cluster one not heard of)
STALE_ORIGINS = ("cluster", "host", "api")


def _fdb_keys(rows) -> np.ndarray:
    """Each row's (network, MAC) as one uint64, the core's FDB key."""
    mac = np.zeros((len(rows), 8), np.uint8)
    mac[:, :6] = rows["mac"]
    return mac.view("<u8").ravel() | (rows["net"].astype(np.uint64) << np.uint64(48))


def _endpoint_keys(eps, want=lambda ep: True) -> np.ndarray:
    """The FDB keys of endpoints {(network index, mac): endpoint} (MACs as
    the store keeps them, checked when they were stored)."""
    return np.array(
        [
            int.from_bytes(bytes.fromhex(m.replace(":", "")), "little") | n << 48
            for (n, m), ep in eps.items()
            if want(ep)
        ],
        dtype=np.uint64,
    )


def fdb_summary(rows, networks: Dict[str, int], local_eps, remote_eps) -> list:
    """How many FDB entries each network has, by origin (as
    :func:`fdb_report` tells them), and how many learned ones are frozen as
    duplicates: one dict a network of ``networks``, by name. ``rows``: the
    core's table as :meth:`Engine.fdb_rows` copies it; counted in numpy,
    so a table of a million MACs is summed in a fraction of the time its
    report takes."""
    keys = _fdb_keys(rows)
    local = rows["kind"] == lib.DP_FDB_LOCAL
    learned = ~local & (rows["learned"] != 0)
    rest = ~local & ~learned
    pod = local & np.isin(keys, _endpoint_keys(local_eps))
    host = rest & np.isin(keys, _endpoint_keys(remote_eps, is_static))
    cluster = rest & np.isin(keys, _endpoint_keys(remote_eps, lambda ep: not is_static(ep)))
    masks = {
        "pod": pod,
        "port": local & ~pod,
        "cluster": cluster,
        "host": host,
        "learned": learned,
        "api": rest & ~host & ~cluster,
        "frozen": learned & (rows["frozen_ms"] != 0),
    }
    size = lib.DP_MAX_NETS
    counts = {k: np.bincount(rows["net"][m], minlength=size) for k, m in masks.items()}
    total = np.bincount(rows["net"], minlength=size)
    return [
        {"network": name, **{k: int(c[i]) for k, c in counts.items()}, "total": int(total[i])}
        for name, i in sorted(networks.items())
    ]


def _networks(config, flood) -> list:
    """The node's networks with their flood lists (``GET /v1/networks``);
    one a reload removed meanwhile is left out."""
    out = []
    for n in config.networks:
        try:
            vteps = flood(n.name)
        except NotFound:
            continue
        out.append(
            {
                "name": n.name,
                "vni": n.vni,
                "plane": n.plane,
                "subnet": n.subnet,
                "gateway": n.gateway,
                "subnet6": n.subnet6,
                "gateway6": n.gateway6,
                "mtu": n.mtu,
                "flood": vteps,
            }
        )
    return out


def api_routes(
    config: Callable[[], NodeConfig],
    status: Callable[[], dict],
    pods,
    fdb: Callable[..., list],
    flood: Callable[[str], list],
    fdb_clear: Optional[Callable[..., dict]] = None,
    fdb_summary: Optional[Callable[..., list]] = None,
) -> dict:
    """The control API's routes: {(method, path): handler(body, query)},
    each a :class:`~dataplane.api.Route` naming the fields it takes.
    ``config()`` gives the node's configuration as it is now (a reload may
    add networks); ``status()`` gives the status report; ``pods`` attaches and detaches
    pods (add_pod, del_pod, list_pods); ``fdb(network, mac)`` lists the
    FDB (:func:`fdb_report`), either filter None for all; ``flood(name)``
    gives the VTEPs a network floods to, as the core has them;
    ``fdb_clear(network, mac)`` removes learned entries;
    ``fdb_summary(network)`` counts entries by origin."""
    fdb_query = {"network": lambda v, p: check_name(v, p, "network name"), "mac": check_mac}
    routes = {
        ("GET", "/v1/status"): Route(lambda b, q: status()),
        ("GET", "/v1/pods"): Route(lambda b, q: pods.list_pods()),
        ("POST", "/v1/pods"): Route(
            lambda b, q: pods.add_pod(b.get("name"), b.get("netns"), b.get("spec")),
            body={"name": check_pod_name, "netns": check_netns_path, "spec": check_json_document},
            required=("name", "netns", "spec"),
        ),
        ("DELETE", "/v1/pods"): Route(
            lambda b, q: pods.del_pod(q.get("name") or b.get("name")),
            body={"name": check_pod_name},
            query={"name": check_pod_name},
            required=("name",),
        ),
        ("GET", "/v1/fdb"): Route(
            lambda b, q: fdb(q.get("network"), q.get("mac")), query=fdb_query
        ),
        ("GET", "/v1/networks"): Route(lambda b, q: _networks(config(), flood)),
    }
    if fdb_summary is not None:
        routes[("GET", "/v1/fdb/summary")] = Route(
            lambda b, q: fdb_summary(q.get("network")), query={"network": fdb_query["network"]}
        )
    if fdb_clear is not None:
        routes[("DELETE", "/v1/fdb")] = Route(
            lambda b, q: fdb_clear(q.get("network"), q.get("mac")), query=fdb_query
        )
    return routes
