"""Packet capture through the control API, the service's side.

``POST /v1/capture`` starts one (a port by name or index, ``uplink``, a pod
or ``pod:plane``; a direction; a pcap-filter expression; a snap length),
``GET /v1/capture?id=`` hands out the frames captured since the last call
with the capture's counters, ``DELETE /v1/capture?id=`` stops it. One
capture runs at a time. A capture whose client stops asking (killed, lost)
is stopped after ``LEASE_S`` seconds, so the worker's capture path never
stays on for nobody.
"""

import base64
import secrets
import threading
import time
from typing import Callable, Dict, List

from .errors import Busy, ConfigError, NotFound

LEASE_S = 15.0
DIRECTIONS = ("rx", "tx", "both")
SNAPLEN_DEFAULT = 9216
SLOTS = 4096


def _frames_json(frames, stats) -> dict:
    """[ts_ns, port, direction, original length, base64 bytes] per frame."""
    return {
        "frames": [
            [ts, port, d, orig, base64.b64encode(data).decode()]
            for ts, port, d, orig, data in frames
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
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._expire, name="capture-lease", daemon=True)
        self._watch.start()

    # ------------------------------------------------------------- targets
    def resolve(self, target) -> List[dict]:
        """A capture target -> [{"port", "name"}]: a port name or index,
        "uplink", a pod (all its planes) or pod:plane."""
        if not isinstance(target, str) or not target:
            raise ConfigError("capture target: a port, 'uplink', a pod or pod:plane")
        ports = {p.index: p for p in self.ports()}
        by_name = {p.name: p for p in ports.values()}
        if target == "uplink" and self.uplink is not None and self.uplink in ports:
            return [{"port": self.uplink, "name": ports[self.uplink].name}]
        if target in by_name:
            return [{"port": by_name[target].index, "name": target}]
        if target.isdigit() and int(target) in ports:
            return [{"port": int(target), "name": ports[int(target)].name}]
        pod, _, plane = target.partition(":")
        try:
            info = self.pods.pod_info(pod)
        except NotFound:
            raise NotFound(
                f"capture target {target!r}: no such port or pod "
                f"(ports: {', '.join(sorted(by_name)) or 'none'})"
            ) from None
        planes = [p for p in info["planes"] if not plane or p["plane"] == plane]
        if not planes:
            have = ", ".join(p["plane"] for p in info["planes"])
            raise NotFound(f"capture target {target!r}: pod {pod} has no plane {plane} ({have})")
        out = []
        for p in planes:
            if p.get("port") is None:
                raise NotFound(f"capture target {target!r}: plane {p['plane']} has no port now")
            out.append({"port": p["port"], "name": f"{pod}:{p['plane']}"})
        return out

    # ---------------------------------------------------------------- verbs
    def start(self, body: dict) -> dict:
        unknown = set(body) - {"target", "direction", "filter", "snaplen"}
        if unknown:
            raise ConfigError(f"capture: unknown field(s) {', '.join(sorted(unknown))}")
        direction = body.get("direction", "both")
        if direction not in DIRECTIONS:
            raise ConfigError(f"capture direction {direction!r}: one of {', '.join(DIRECTIONS)}")
        flt = body.get("filter", "")
        if not isinstance(flt, str):
            raise ConfigError("capture filter: a pcap-filter expression (a string)")
        snaplen = body.get("snaplen", SNAPLEN_DEFAULT)
        if not isinstance(snaplen, int) or isinstance(snaplen, bool):
            raise ConfigError(f"capture snaplen {snaplen!r}: a number of bytes")
        with self.lock:
            if self.current is not None:
                raise Busy("a capture is already running (one at a time)")
            ifaces = self.resolve(body.get("target"))
            self.engine.capture_start(
                [i["port"] for i in ifaces], direction, flt, snaplen=snaplen, slots=SLOTS
            )
            self.current = {
                "id": secrets.token_hex(8),
                "interfaces": ifaces,
                "last": time.monotonic(),
                "direction": direction,
                "filter": flt,
                "snaplen": snaplen,
            }
            return {k: v for k, v in self.current.items() if k != "last"}

    def _mine(self, cid) -> dict:
        if self.current is None or cid != self.current["id"]:
            raise NotFound(f"capture {cid}: not running (stopped, expired or never started)")
        return self.current

    def read(self, cid) -> dict:
        with self.lock:
            cur = self._mine(cid)
            cur["last"] = time.monotonic()
            frames = self.engine.capture_read()
            stats = self.engine.capture_stats()
        return _frames_json(frames, stats)

    def stop(self, cid) -> dict:
        with self.lock:
            self._mine(cid)
            frames = self.engine.capture_read()
            stats = self.engine.capture_stats()
            self.engine.capture_stop()
            self.current = None
        return _frames_json(frames, stats)

    def _expire(self):
        while not self._stop.wait(1.0):
            with self.lock:
                cur = self.current
                if cur and time.monotonic() - cur["last"] > LEASE_S and self.engine:
                    self.engine.capture_stop()
                    self.current = None

    def close(self):
        self._stop.set()

    def routes(self) -> Dict:
        return {
            ("POST", "/v1/capture"): lambda b, q: self.start(b),
            ("GET", "/v1/capture"): lambda b, q: self.read(q.get("id") or b.get("id")),
            ("DELETE", "/v1/capture"): lambda b, q: self.stop(q.get("id") or b.get("id")),
        }
