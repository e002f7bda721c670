"""Packet capture through the control API, the service's side.

``POST /v1/capture`` starts one (a port by name or index, ``uplink``,
``any`` port, a pod or ``pod:plane``; a direction - rx, tx, both, drop (the frames the core
drops there, each with its reason) or all; a pcap-filter expression; a snap
length),
``GET /v1/capture?id=`` hands out the frames captured since the last call
with the capture's counters, ``DELETE /v1/capture?id=`` stops it. One
capture runs at a time. A capture whose client stops asking (killed, lost,
paused) is stopped after ``LEASE_S`` seconds, so the worker's capture path
never stays on for nobody; what it took since its last read, and why it
ended, are kept for its client's next call until a next capture starts.
A start with ``"dry_run": true`` starts nothing: it answers the interfaces
the capture would take (a client sizing its file's headers).

A client may choose the capture's id (``id`` in the start's body, 16 hex
digits), so that it can stop the capture without having read the start's
answer (interrupted while waiting for it): a DELETE of an id that is not
running is remembered (the last ``CANCELLED_KEPT``), and a start with such
an id that comes after it - its request still on the way, or waiting for
the service - is refused and starts nothing. A start repeated with the id
of the running capture is answered as the first one was.
"""

import base64
import collections
import re
import secrets
import threading
import time
from typing import Callable, Dict, List, Optional

from .api import Route
from .checks import (
    CAPTURE_DIRECTIONS,
    CAPTURE_SNAPLEN_RANGE,
    brief,
    check_bool,
    check_int,
    check_string,
    fail,
)
from .errors import AlreadyExists, Busy, ConfigError, NotFound
from .logs import log, warning_event

LEASE_S = 15.0
SNAPLEN_DEFAULT = 9216
SLOTS = 4096
CANCELLED_KEPT = 256
# the first id of a port given, during a capture of `any`, the index of a
# port removed from it (frames carry ports as 16 bits: no core port's)
REUSED_ID0 = 1 << 16
# frames read out of the core early (a port index given again) kept for the
# client at the most; more are counted as the capture's drops
PENDING_MAX = SLOTS
# what a start's answer says of the capture
ANSWERED = ("id", "interfaces", "target", "direction", "filter", "snaplen")


def _frames_json(frames, stats) -> dict:
    """[ts_ns, port, direction, original length, base64 bytes, drop reason
    or None] per frame."""
    return {
        "frames": [
            [ts, port, d, orig, base64.b64encode(data).decode(), why]
            for ts, port, d, orig, data, why in frames
        ],
        "stats": stats,
    }


class Captures:
    """The running capture of a node service, and its API routes."""

    def __init__(self, engine, lock, ports: Callable[[], List], pods, uplink=None):
        self.engine = engine
        self.lock = lock
        self.ports = ports  # () -> the engine's PortInfo list
        self.pods = pods
        self.uplink = uplink
        self.current = None  # {"id", "interfaces", "last"}
        self.ended = None  # a capture ended by the service: {"id", "why", frames, stats}
        self.cancelled = collections.OrderedDict()  # ids stopped before they ran: None
        # ended captures whose frames went, unread, when a next one started: why they ended
        self.gone = collections.OrderedDict()
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._expire, name="capture-lease", daemon=True)
        self._watch.start()

    # ------------------------------------------------------------- targets
    def resolve(self, target) -> List[dict]:
        """A capture target -> [{"port", "name"}]: a port name or index,
        "uplink", "any" (every port there now, those added later: port_added;
        a pod's named pod:plane), a
        pod (all its planes) or pod:plane."""
        if not isinstance(target, str) or not target:
            raise ConfigError("capture target: a port, 'uplink', 'any', a pod or pod:plane")
        ports = {p.index: p for p in self.ports()}
        by_name = {p.name: p for p in ports.values()}
        if target == "any":
            if not ports:
                raise NotFound("capture target 'any': the core has no port now")
            owners = self.pods.port_owners()  # port -> (pod, plane)
            return [
                {"port": i, "name": ":".join(owners[i]) if i in owners else p.name}
                for i, p in sorted(ports.items())
            ]
        if target == "uplink" and self.uplink is not None and self.uplink in ports:
            return [{"port": self.uplink, "name": ports[self.uplink].name}]
        if target == "uplink" and self.uplink is None:
            raise NotFound(
                "capture target 'uplink': the node's uplink is not attached (it did not exist "
                "when the service started, and has not appeared since: dataplane status)"
            )
        if target in by_name:
            return [{"port": by_name[target].index, "name": target}]
        if target.isdigit() and int(target) in ports:
            return [{"port": int(target), "name": ports[int(target)].name}]
        pod, colon, plane = target.partition(":")
        if colon and not plane:
            raise ConfigError(f"capture target {target!r}: POD:PLANE needs a plane name")
        # this node's pods as the service attached them, not the store's
        # records: a capture starts while the store does not answer, and
        # never waits on it (the engine's lock is held here)
        info = self.pods.known.get(pod)
        if info is None:
            raise NotFound(
                f"capture target {target!r}: no such port or pod (a port name or index, "
                f"'uplink', 'any', a pod or POD:PLANE; ports: "
                f"{', '.join(sorted(by_name)) or 'none'})"
            )
        planes = [p["plane"] for p in info["planes"] if not plane or p["plane"] == plane]
        if not planes:
            have = ", ".join(p["plane"] for p in info["planes"])
            raise NotFound(f"capture target {target!r}: pod {pod} has no plane {plane} ({have})")
        port_of = {owner: port for port, owner in self.pods.port_owners().items()}
        out = []
        for pl in planes:
            if port_of.get((pod, pl)) not in ports:
                raise NotFound(f"capture target {target!r}: plane {pl} has no port now")
            out.append({"port": port_of[(pod, pl)], "name": f"{pod}:{pl}"})
        return out

    # ---------------------------------------------------------------- verbs
    def start(self, body: dict) -> dict:
        """body: target (required), direction, filter, snaplen, id (the
        client's, else one made here), dry_run - checked by the route
        (``routes``)."""
        direction = body.get("direction", "both")
        flt = body.get("filter", "")
        snaplen = body.get("snaplen", SNAPLEN_DEFAULT)
        cid = body.get("id")
        with self.lock:
            if body.get("dry_run"):  # what it would take now; nothing starts
                return {
                    "dry_run": True,
                    "interfaces": self.resolve(body.get("target")),
                    "target": body.get("target"),
                    "direction": direction,
                    "filter": flt,
                    "snaplen": snaplen,
                }
            if cid is not None and cid in self.cancelled:
                raise AlreadyExists(f"capture {cid}: stopped before it started (start a new id)")
            if self.current is not None and cid is not None and cid == self.current["id"]:
                return self._answer()  # the same start again
            if self.current is not None:
                cur = self.current
                raise Busy(
                    f"a capture is already running (one at a time): {cur['id']}, "
                    f"{cur['direction']} on {cur.get('target')} for "
                    f"{time.monotonic() - cur['started']:.0f} s ('dataplane status' shows it)"
                )
            ended = self.ended is not None and self.ended["id"] == cid
            if cid is not None and (ended or cid in self.gone):
                raise AlreadyExists(f"capture {cid}: the id of a capture that ended")
            ifaces = self.resolve(body.get("target"))
            self.engine.capture_start(
                [i["port"] for i in ifaces], direction, flt, snaplen=snaplen, slots=SLOTS
            )
            if self.ended is not None:  # its client did not come back for it before this
                self.gone[self.ended["id"]] = self.ended["why"]
                while len(self.gone) > CANCELLED_KEPT:
                    self.gone.popitem(last=False)
                self.ended = None
            for i in ifaces:
                i["id"] = i["port"]  # what its frames carry (port_added)
            self.current = {
                "id": cid or secrets.token_hex(8),
                "interfaces": ifaces,
                # under `any`: the id each core port's frames are told by
                # now, the ports taken and not removed since, and frames
                # read out of the core early (port_added)
                "ids": {i["port"]: i["port"] for i in ifaces},
                "live": {i["port"] for i in ifaces},
                "pending": [],
                "lost": 0,
                "next_id": REUSED_ID0,
                "target": body.get("target"),
                "started": time.monotonic(),
                "last": time.monotonic(),
                "direction": direction,
                "filter": flt,
                "snaplen": snaplen,
            }
            return self._answer()

    def summary(self):
        """The running capture as the status shows it (None: none runs):
        its target, direction, filter, ports and age in seconds."""
        cur = self.current  # read once: the lock is not taken for the status
        if cur is None:
            return None
        return {
            "id": cur["id"],
            "target": cur.get("target"),
            "direction": cur["direction"],
            "filter": cur["filter"],
            # those it takes now (under `any`: not those removed since)
            "ports": [
                i["name"]
                for i in cur["interfaces"]
                if i["port"] in cur["live"] and cur["ids"][i["port"]] == i["id"]
            ],
            "running_s": round(time.monotonic() - cur["started"], 1),
        }

    def _answer(self) -> dict:
        a = {k: v for k, v in self.current.items() if k in ANSWERED}
        return dict(a, interfaces=list(a["interfaces"]))

    def port_added(self, port: int, name: Optional[str] = None):
        """Port ``port`` just joined the core (a pod's, ``name`` POD:PLANE; or
        the uplink, by its port name): a capture of ``any`` port takes it
        from now on, and its next read answer lists it. A port given the
        index of one removed during the capture gets an id of its own for
        its frames (REUSED_ID0 on): the frames of the one before, which the
        core still holds, are read out first under the old id. Never
        raises: a port the capture could not take is logged, and the pod's
        attach goes on."""
        with self.lock:
            cur = self.current
            if cur is None or cur.get("target") != "any" or port in cur["live"]:
                return
            try:
                if name is None:
                    name = next((p.name for p in self.ports() if p.index == port), str(port))
                fid = port
                if port in cur["ids"]:
                    self._keep_queued(cur)
                    fid, cur["next_id"] = cur["next_id"], cur["next_id"] + 1
                self.engine.capture_add_port(port)
            except Exception as e:  # noqa: BLE001 - the capture goes on with the others
                log.warning("capture %s: port %s (%s) not taken: %s", cur["id"], port, name, e)
                return
            cur["ids"][port] = fid
            cur["live"].add(port)
            cur["interfaces"].append({"port": port, "name": name, "id": fid})

    def _keep_queued(self, cur):
        """Every frame the core had queued for the capture when called, read
        into its pending frames as _read_core tells them (those past
        PENDING_MAX counted as the capture's drops)."""
        want = self.engine.capture_stats()["queued"]
        while want > 0:
            more = self.engine.capture_read()
            if not more:
                break
            want -= len(more)
            room = max(PENDING_MAX - len(cur["pending"]), 0)
            cur["pending"] += self._read_core(more[:room])
            cur["lost"] += len(more[room:])

    def _stats(self, stats: dict) -> dict:
        """The core's counters of the running capture, with the frames it
        read early and could not keep among those it dropped."""
        return dict(stats, dropped=stats.get("dropped", 0) + self.current["lost"])

    def _read_core(self, frames=None) -> list:
        """The frames the core holds for the running capture (or ``frames``,
        read already), each told by its port's id (port_added)."""
        ids = self.current["ids"]
        if frames is None:
            frames = self.engine.capture_read()
        return [(ts, ids.get(p, p), *rest) for ts, p, *rest in frames]

    def port_removed(self, port: int):
        """Port ``port`` is about to leave the core: a capture on it ends now
        (the frames it has kept go to its client's next call, with why), so
        that it never records the next port given that index - but for a
        capture of ``any`` port, which goes on with the others (the core
        takes no more of that index: Engine.del_port)."""
        with self.lock:
            cur = self.current
            name = cur and next((i["name"] for i in cur["interfaces"] if i["port"] == port), None)
            if name and cur.get("target") == "any":
                cur["live"].discard(port)
                return
            if not name:
                return
            self._end(f"{name} (port {port}) was removed")

    def _end(self, why: str):
        """The running capture ended by the service (under the lock): what
        it kept, and ``why``, wait for its client's next call (until a
        next capture starts)."""
        cid, ifaces = self.current["id"], list(self.current["interfaces"])
        frames, stats = self._finish()
        self.ended = {
            "id": cid,
            "interfaces": ifaces,
            "why": why,
            "frames": frames,
            "stats": stats,
        }

    def _ended(self, cid):
        """What is left of capture ``cid`` that the service ended, once."""
        if self.ended is None or self.ended["id"] != cid:
            return None
        e, self.ended = self.ended, None
        return {
            **_frames_json(e["frames"], e["stats"]),
            "interfaces": e["interfaces"],
            "ended": e["why"],
        }

    def _mine(self, cid) -> dict:
        if self.current is None or cid != self.current["id"]:
            if cid in self.gone:
                raise NotFound(
                    f"capture {cid}: ended, {self.gone[cid]}; what it took since its last "
                    "read went when the next capture started"
                )
            raise NotFound(f"capture {cid}: not running (stopped, or never started)")
        return self.current

    def read(self, cid) -> dict:
        with self.lock:
            ended = self._ended(cid)
            if ended is not None:
                return ended
            cur = self._mine(cid)
            cur["last"] = time.monotonic()
            frames, cur["pending"] = cur["pending"] + self._read_core(), []
            stats = self._stats(self.engine.capture_stats())
            ifaces = list(cur["interfaces"])
        return {**_frames_json(frames, stats), "interfaces": ifaces}

    def stop(self, cid) -> dict:
        with self.lock:
            ended = self._ended(cid)
            if ended is not None:
                return ended
            if (self.current is None or cid != self.current["id"]) and cid not in self.gone:
                # a start with this id still on its way starts nothing
                self.cancelled[cid] = None
                while len(self.cancelled) > CANCELLED_KEPT:
                    self.cancelled.popitem(last=False)
            ifaces = list(self._mine(cid)["interfaces"])
            frames, stats = self._finish()
        return {**_frames_json(frames, stats), "interfaces": ifaces}

    def _finish(self):
        """The capture stopped in the core, and its last frames and final
        counters: every record it still held (under the lock)."""
        try:
            frames, stats = self.engine.capture_stop()
            return self.current["pending"] + self._read_core(frames), self._stats(stats)
        finally:  # whatever failed, a new capture may start
            self.current = None

    def _expire(self):
        while not self._stop.wait(1.0):
            try:
                self._expire_once()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("capture: ending an unread capture failed")

    def _expire_once(self):
        with self.lock:
            cur = self.current
            if cur and time.monotonic() - cur["last"] > LEASE_S and self.engine:
                # its client, back after a pause (Ctrl-Z, a slow reader of its
                # output) however long, is told why and gets what it took,
                # unless a next capture started meanwhile
                why = f"not read for {LEASE_S:g} s"
                warning_event(
                    "capture ended by the service: its client stopped reading it (killed, "
                    "or stopped)",
                    capture=cur["id"],
                    interfaces=[i["name"] for i in cur["interfaces"]],
                    why=why,
                )
                self._end(why)

    def close(self):
        self._stop.set()

    def routes(self) -> Dict:
        cid = {"id": _check_id}
        return {
            ("POST", "/v1/capture"): Route(
                lambda b, q: self.start(b),
                body={
                    "target": check_string,
                    "direction": _check_direction,
                    "filter": _check_filter,
                    "snaplen": lambda v, p: check_int(v, p, *CAPTURE_SNAPLEN_RANGE),
                    "id": _check_id,
                    "dry_run": check_bool,
                },
                required=("target",),
            ),
            ("GET", "/v1/capture"): Route(
                lambda b, q: self.read(q["id"]), query=cid, required=("id",)
            ),
            ("DELETE", "/v1/capture"): Route(
                lambda b, q: self.stop(q["id"]), query=cid, required=("id",)
            ),
        }


def _check_id(value, path):
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{16}", value):
        raise fail(path, f"{brief(value)} is not a capture id")
    return value


def _check_direction(value, path):
    if value not in CAPTURE_DIRECTIONS:
        raise fail(path, f"{brief(value)}: one of {', '.join(CAPTURE_DIRECTIONS)}")
    return value


def _check_filter(value, path):
    """A pcap-filter expression: libpcap, in the core, says what is wrong
    with its grammar; here only its type and size."""
    if not isinstance(value, str) or len(value) > 4096 or "\0" in value:
        raise fail(path, "a pcap-filter expression (a string of at most 4096 characters)")
    return value
