"""``dataplane top``: what the node forwards now, as rates per second from
two reads of its status (``GET /v1/status``) an interval apart - per port
(packets and bits each way), per network (encapsulated, decapsulated,
flooded, local), per plane (frames timed through the plane, their mean
and 99th-percentile latency in the core over the interval; on a shaped
uplink what its queue sent and dropped), per drop reason, and how busy each
worker was in the interval (its polls that found frames). The counters are
the core's own, the ones the metrics export; nothing is sampled.

A counter that went down between the two reads (a port removed and its
index given to another, a network re-added) has no rate for that interval:
shown as ``-``, never as a negative or a made-up figure - nor has any other
counter of its row (a pod deleted and added again under the same port index
and name: its rx may have grown past the old count while its tx went down).
A service restarted between the two reads (its ``started_at`` changed) has
no rate at all for that interval, whatever its counters did: the report says
so (``restarted``)."""

import math
from typing import List, Optional

#: port counters shown as rates: (status field, rate name, factor)
PORT_RATES = (
    ("rx_packets", "rx_pps", 1),
    ("tx_packets", "tx_pps", 1),
    ("rx_bytes", "rx_bps", 8),
    ("tx_bytes", "tx_bps", 8),
    ("guard_drops", "guard_drops_ps", 1),
)
NET_RATES = tuple((f"{k}_packets", f"{k}_pps", 1) for k in ("encap", "decap", "flood", "local"))
PLANE_RATES = (
    ("frames", "frames_ps", 1),
    ("sent", "sent_pps", 1),
    ("dropped", "dropped_ps", 1),
)


def _rate(old, new, dt: float, factor: int = 1) -> Optional[float]:
    """(new - old) / dt, or None when either is missing or the counter went
    down (it was reset meanwhile)."""
    if old is None or new is None or new < old:
        return None
    return (new - old) * factor / dt


def _went_down(old: Optional[dict], new: dict, keys) -> bool:
    """Whether any of counters ``keys`` of a row is lower in ``new`` than in
    ``old`` (the row was reset meanwhile: all its counters started again)."""
    if not old:
        return False
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, list) and isinstance(b, list):  # a histogram's buckets
            if len(a) != len(b) or any(y < x for x, y in zip(a, b)):
                return True
        elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and b < a:
            return True
    return False


def _rates(old: Optional[dict], new: dict, dt: float, fields) -> dict:
    """A row's rates; none at all when any of its counters went down: the
    row is not the same one, or not wholly."""
    if _went_down(old, new, [src for src, _, _ in fields]):
        old = None
    return {
        name: _rate(old.get(src) if old else None, new.get(src), dt, factor)
        for src, name, factor in fields
    }


#: a service that does not give its start time (``started_at``): its uptime
#: (seconds, rounded to 0.1; the wall clock's) grew this much less than the
#: interval or more: restarted meanwhile
UPTIME_SLACK_S = 0.5


def restarted(prev: dict, cur: dict, dt: float) -> bool:
    """Whether the service restarted between reports ``prev`` and ``cur``
    (``dt`` seconds apart): its start time (``started_at``) is another, or
    only one report has one (another version answered); from a service that
    gives none, its uptime grew by less than the interval."""
    if ("started_at" in prev) != ("started_at" in cur):
        return True
    a, b = prev.get("started_at"), cur.get("started_at")
    if a is not None and b is not None:
        return a != b
    u0, u1 = prev.get("uptime_s"), cur.get("uptime_s")
    if u0 is None or u1 is None:
        return False
    return u1 < u0 + dt - UPTIME_SLACK_S


def _latency(old: Optional[dict], new: dict, bounds: List[float]) -> dict:
    """A plane's latency over the interval, from its histogram's growth:
    the mean and the upper bound of the bucket holding the 99th percentile
    (microseconds; None without frames; p99_beyond: the 99th percentile is
    beyond the last bound, p99_us None)."""
    none = {"avg_us": None, "p99_us": None, "p99_beyond": False}
    a, b = (old or {}).get("latency_buckets"), new.get("latency_buckets")
    if a is None or b is None or len(a) != len(b) or len(b) != len(bounds) + 1:
        return none
    d = [y - x for x, y in zip(a, b)]
    n = sum(d)
    if n <= 0 or min(d) < 0:
        return none
    acc, i = 0, 0
    for i, c in enumerate(d):
        acc += c
        if acc >= 0.99 * n:
            break
    avg = (new["latency_sum_us"] - old["latency_sum_us"]) / n
    beyond = i >= len(bounds)
    return {
        "avg_us": round(avg, 2),
        "p99_us": None if beyond else bounds[i],
        "p99_beyond": beyond,
    }


def rates(prev: dict, cur: dict, dt: float) -> dict:
    """Rates per second between two status reports ``prev`` and ``cur``
    taken ``dt`` seconds apart (the difference of their ``counters_at``
    instead where both have it: the service's own time of each read, not
    the client's). A port is the same port in both when its index and name
    are; a network or plane by name. A row any counter of which went down
    has no rate; if the service restarted in between (``restarted``), no
    row has any, nor the drops (None) or the workers."""
    a, b = prev.get("counters_at"), cur.get("counters_at")
    if a is not None and b is not None and b > a:
        dt = b - a
    if dt <= 0:
        raise ValueError(f"interval {dt} s: the reads must be apart in time")
    restart = restarted(prev, cur, dt)
    if restart:  # the counters of the first read are another process's
        prev = {}
    before = {(p["port"], p["name"]): p for p in prev.get("ports", [])}
    ports = []
    for p in cur.get("ports", []):
        r = _rates(before.get((p["port"], p["name"])), p, dt, PORT_RATES)
        ports.append({k: p.get(k) for k in ("port", "name", "pod", "plane", "role", "network")} | r)
    # busiest first; ports without a rate (new) last, by index
    ports.sort(key=lambda p: (-((p["rx_pps"] or 0) + (p["tx_pps"] or 0)), p["port"]))
    nets_before = {n["name"]: n for n in prev.get("networks", [])}
    networks = [
        {"name": n["name"], "vni": n["vni"], "plane": n["plane"]}
        | _rates(nets_before.get(n["name"]), n, dt, NET_RATES)
        for n in cur.get("networks", [])
    ]
    planes_before = {p["name"]: p for p in prev.get("planes", [])}
    bounds = cur.get("latency_bounds_us") or []
    planes = []
    for p in cur.get("planes", []):
        o = planes_before.get(p["name"])
        if _went_down(o, p, [k for k, _, _ in PLANE_RATES] + ["latency_buckets"]):
            o = None  # reset meanwhile: no rate, no latency
        r = _rates(o, p, dt, PLANE_RATES)
        if "sent" not in p:  # not on a shaped uplink: no queue of its own
            r.pop("sent_pps"), r.pop("dropped_ps")
        planes.append({"name": p["name"]} | r | _latency(o, p, bounds))
    old_drops, new_drops = prev.get("drops", {}), cur.get("drops", {})
    drops: Optional[dict] = {}
    for reason, n in sorted(new_drops.items()):
        r = _rate(old_drops.get(reason, 0), n, dt)
        if r != 0:
            drops[reason] = r
    if restart:  # not known: the ones above are counts since the restart
        drops = None
    workers_before = {w["worker"]: w for w in prev.get("workers", [])}
    workers = []
    for w in cur.get("workers", []):
        o = workers_before.get(w["worker"])
        polls = None if o is None else w["polls"] - o["polls"]
        busy = None if o is None else w["busy_polls"] - o["busy_polls"]
        ok = polls is not None and polls >= 0 and 0 <= busy <= polls
        workers.append(
            {
                "worker": w["worker"],
                # no poll in the interval: the worker is stuck or not run
                # (an idle one still polls, its sleeps are microseconds)
                "busy": busy / polls if ok and polls else None,
                "stalled": ok and polls == 0,
                "polls_ps": polls / dt if ok else None,
            }
        )
    return {
        "node": cur.get("node"),
        "interval_s": round(dt, 3),
        # the service restarted between the reads: no rate (None) anywhere
        "restarted": restart,
        "latency_last_bound_us": bounds[-1] if bounds else None,
        "workers": workers,
        "ports": ports,
        "networks": networks,
        "planes": planes,
        "drops": drops,
        # a capture running: the express lane is paused, so rates are the core's
        "capture": cur.get("capture"),
    }


def _num(v: Optional[float]) -> str:
    """A rate for a narrow column: 0, 0.012, 3.5, 950, 12.3k, 4.56M, 1.2G;
    '-' for none."""
    if v is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.3g}{unit}"
    if v >= 10 or v == 0:
        return f"{v:.0f}"
    if v < 0.1:  # small but not none: 2 significant digits (0.012), not 0.0
        return f"{v:.{1 - math.floor(math.log10(v))}f}"
    return f"{v:.1f}"


def _p99(p: dict, bounds_last: Optional[float]) -> str:
    if p["p99_beyond"]:
        return f"> {bounds_last:g}" if bounds_last else "beyond"
    return "-" if p["p99_us"] is None else f"<= {p['p99_us']:g}"


def render(r: dict, table, lines: Optional[int] = None) -> List[str]:
    """The report as text; ``table(header, rows)`` lays out a table (the
    CLI's), ``lines``: at most this many port rows (the busiest)."""
    out = [
        f"node {r['node']}  rates over {r['interval_s']:.1f} s  "
        + "  ".join(
            f"worker {w['worker']} "
            + (
                "STALLED (no poll in the interval)"
                if w.get("stalled")
                else "busy " + ("-" if w["busy"] is None else f"{100 * w['busy']:.1f}%")
            )
            for w in r["workers"]
        )
    ]
    if r.get("restarted"):
        out.append("  the service restarted in the interval: no rates for it (shown as -)")
    cap = r.get("capture")
    if cap:
        out.append(
            f"  capture {cap['id']} running ({cap['direction']} on {cap['target']}): "
            "the express lane is paused, every frame crosses the core"
        )
    ports = r["ports"] if lines is None else r["ports"][:lines]
    out += table(
        ["PORT", "NAME", "POD", "PLANE", "NETWORK", "RX pps", "TX pps", "RX bit/s", "TX bit/s", ""],
        [
            [
                p["port"],
                p["name"],
                p["pod"] or "-",
                p["plane"] or "-",
                p["network"] or "-",
                *(_num(p[k]) for k in ("rx_pps", "tx_pps", "rx_bps", "tx_bps")),
                f"guard drops {_num(p['guard_drops_ps'])}/s" if p["guard_drops_ps"] else "",
            ]
            for p in ports
        ],
    )
    if len(ports) < len(r["ports"]):
        out.append(f"  ({len(r['ports']) - len(ports)} quieter ports not shown)")
    out += table(
        ["NETWORK", "VNI", "PLANE", "ENCAP pps", "DECAP pps", "FLOOD pps", "LOCAL pps"],
        [
            [
                n["name"],
                n["vni"],
                n["plane"],
                *(_num(v) for k, v in n.items() if k.endswith("_pps")),
            ]
            for n in r["networks"]
        ],
    )
    out += table(
        ["PLANE", "FRAMES/s", "AVG us", "P99 us", "QUEUE SENT pps", "QUEUE DROPPED/s"],
        [
            [
                p["name"],
                _num(p["frames_ps"]),
                "-" if p["avg_us"] is None else f"{p['avg_us']:.1f}",
                _p99(p, r.get("latency_last_bound_us")),
                _num(p.get("sent_pps")),
                _num(p.get("dropped_ps")),
            ]
            for p in r["planes"]
        ],
    )
    if r["drops"] is None:
        out.append("  drops/s: -")
    elif r["drops"]:
        out.append(
            "  drops/s: " + ", ".join(f"{k} {_num(v)}" for k, v in sorted(r["drops"].items()))
        )
    else:
        out.append("  drops/s: none")
    return out
