"""The cluster state store: the same interface as :class:`dataplane.store.Store`,
kept in etcd (v3 API) so that every node sees the same networks, pods,
endpoints and address allocations.

Client
------
etcd is reached through its JSON gRPC gateway (``/v3/...`` over HTTP) with
``etcd3gw``, the OpenStack-maintained client: pure Python on top of requests,
so it brings no grpcio/protobuf pins (python-etcd3, the gRPC client, has had
no release since 2020 and its generated code does not import with protobuf >= 4
unless the slow pure-Python protobuf is forced). We use its client for
what it does well — the HTTP session and TLS settings, discovery of the API
path (/v3, /v3beta), mapping of HTTP errors to exceptions — and send the
v3 requests (range, txn, watch) ourselves, because its convenience helpers
drop what a cluster store needs: ``get`` hides the response header (the
revision a snapshot was taken at), and its ``Watcher`` reads the stream in a
thread pool that swallows errors, so a dropped connection or a compacted
revision just stops the events with no sign. Our watch loop reports both.

Key layout (``P`` is the prefix, default ``/dataplane``; names are
percent-quoted, so that a '/' in a name cannot make two keys meet)::

    P/meta/<key>                      "value"                (cluster-wide)
    P/networks/<name>                 {name, vni, plane, subnet, gateway, mtu, updated}
    P/vni/<vni>                       {name}                 one network per VNI
    P/pods/<name>                     {name, netns, spec, state, created, node}
    P/endpoints/<pod>/<plane>         {pod, plane, network, ifname, host_ifname,
                                       mac, ip, node, vtep, state, created}
    P/hostif/<node>/<host_ifname>     {pod, plane}           unique per node
    P/alloc/<network>/<ip>            {network, ip, pod, created}
    P/podalloc/<pod>/<network>        {ip}                   one address per pod and network
    P/macs/<mac>                      {pod, plane}           who has the MAC, cluster-wide
    P/podmacs/<pod>/<plane>           {mac}                  the MAC reserved for the pair

Transactions
------------
Every write is one etcd transaction built optimistically: the reads of a
change are made at one revision R (the first read's), every key read is
compared (``mod_revision`` still what was read, 0 for "still absent"), a
prefix read is compared as a range (no key in it modified after R), and the
writes happen only if every compare holds; otherwise the change is computed
again from fresh reads (a bounded number of times, with jittered back-off).
That makes each method serialisable against every other writer, on any node:

- ``put_network`` compares ``P/vni/<vni>``: two nodes that give one VNI to two
  networks at once cannot both win; the loser sees the winner's network on
  its retry and gets the same ConfigError as with SQLite.
- ``allocate_ip`` is compare-and-create on the address key
  ``P/alloc/<network>/<ip>`` (``create_revision == 0``) together with the
  pod's ``P/podalloc/<pod>/<network>``: two nodes that pick the same free
  address cannot both get it, the loser reads again and takes another; a
  pod never gets two addresses on one network.
- ``allocate_mac`` creates ``P/macs/<mac>`` the same way, so a MAC is given to
  one (pod, plane) in the whole cluster.
- ``delete_pod`` removes the pod, its endpoints, addresses and MACs in one
  transaction.

etcd refuses a transaction of more than 128 operations (``--max-txn-ops``);
a pod with the core's maximum of 8 planes needs about 30.

Watching
--------
:meth:`EtcdStore.endpoints_snapshot` returns the endpoints and the revision
they were read at; :meth:`EtcdStore.watch_endpoints` delivers every change
after a revision to a callback, in a thread, in order. A watch that cannot go
on (etcd stopped or unreachable — a heartbeat notices a silent connection too
— a compacted revision, a callback that raised) calls ``callback('error',
exc)`` once, records ``handle.error`` and ends: the caller takes a new
snapshot and watches again, which is how it resynchronises after a
reconnect. Nothing stops silently::

    eps, rev = store.endpoints_snapshot()
    w = store.watch_endpoints(rev + 1, callback)   # every change after the snapshot
    ...
    w.cancel()

Differences from the SQLite store: ``host_ifname`` is unique per node (the
SQLite file is one node's); ``allocate_mac`` reserves the MAC it returns
until ``delete_pod``; meta keys are shared by the cluster. Reads that list
(``endpoints``, ``pods``, ``allocations``) fetch the prefix and filter here.

Errors are those of the SQLite store (ConfigError, NotFound, AlreadyExists,
Busy, ResourceError) plus :class:`EtcdUnavailable` (also a ConnectionError)
when no endpoint answers, and :class:`EtcdCompacted` for a watch of history
etcd no longer has.
"""
import base64
import ipaddress
import json
import logging
import random
import socket
import threading
import time
import urllib.parse
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import etcd3gw
import etcd3gw.exceptions as etcd_exc
import requests

from .errors import (AlreadyExists, Busy, ConfigError, DataplaneError, NotFound,
                     ResourceError)
from .store import _check_state, check_network, derive_mac, ip_request, no_free_address

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/dataplane"
DEFAULT_TIMEOUT = 10.0
#: how often a watch checks that etcd still answers (seconds)
DEFAULT_HEARTBEAT = 5.0
#: how many times a change is recomputed when other writers keep winning
MAX_ATTEMPTS = 500
STATIC_NODE_PREFIX = "static:"

_EP_FIELDS = ("pod", "plane", "network", "ifname", "host_ifname", "mac", "ip", "node",
              "vtep", "state", "created")


class EtcdUnavailable(DataplaneError, ConnectionError):
    """No etcd endpoint answered (stopped, unreachable, no leader, timed out)."""


class EtcdCompacted(DataplaneError):
    """A watch asked for a revision etcd has compacted away: take a new snapshot."""

    def __init__(self, message, compact_revision=None):
        super().__init__(message)
        self.compact_revision = compact_revision

    def __reduce__(self):
        return (self.__class__, (str(self), self.compact_revision))


# ------------------------------------------------------------------ helpers
def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: Optional[str]) -> bytes:
    return base64.b64decode(s) if s else b""


def _prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix``."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"  # pragma: no cover - every prefix here ends with '/'


def _q(name) -> str:
    """One key component: percent-quoted, so that it holds no '/'."""
    return urllib.parse.quote(str(name), safe=":@")


def _unq(part: str) -> str:
    return urllib.parse.unquote(part)


def _parse_endpoint(url: str) -> Tuple[str, str, int]:
    """'http://host:port' -> (protocol, host, port), or ConfigError."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"etcd endpoint {url!r} is not a URL (http://host:port)")
    u = urllib.parse.urlsplit(url)
    try:
        port = u.port
    except ValueError:
        raise ConfigError(f"etcd endpoint {url!r}: bad port") from None
    if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/") \
            or u.query or u.fragment or u.username or u.password:
        raise ConfigError(f"etcd endpoint {url!r} is not http(s)://host:port")
    return u.scheme, u.hostname, port or 2379


def _first_line(x) -> str:
    lines = str(x).strip().splitlines()
    return lines[0] if lines else type(x).__name__


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix.startswith("/") or \
            not prefix.strip("/") or any(c.isspace() or c == "\0" for c in prefix):
        raise ConfigError(f"etcd prefix {prefix!r} is not a key prefix like /dataplane")
    return prefix.rstrip("/")


# ------------------------------------------------------------- transaction
class _Tx:
    """One optimistic transaction: reads at one revision, compares, writes."""

    def __init__(self, store: "EtcdStore"):
        self._s = store
        self.revision: Optional[int] = None
        self._cmp: List[dict] = []
        self._ops: List[dict] = []
        self._seen: Dict[str, Any] = {}

    def _range(self, key: str, range_end: Optional[bytes] = None, keys_only=False):
        kb = key.encode()
        payload = {"key": _b64(kb)}
        if range_end is not None:
            payload["range_end"] = _b64(range_end)
        if keys_only:
            payload["keys_only"] = True
        if self.revision is not None:
            payload["revision"] = self.revision
        try:
            r = self._s._post("kv/range", payload)
        except DataplaneError as e:
            if "required revision has been compacted" in str(e):
                raise _Retry() from None       # compacted between two reads
            raise
        if self.revision is None:
            self.revision = int(r["header"]["revision"])
        return r.get("kvs", [])

    def get(self, key: str):
        """The JSON value of ``key`` (None if absent); the commit requires it
        unchanged."""
        if key in self._seen:
            return self._seen[key]
        kvs = self._range(key)
        if kvs:
            mod = int(kvs[0]["mod_revision"])
            value = json.loads(_unb64(kvs[0].get("value")))
        else:
            mod, value = 0, None
        self._cmp.append({"key": _b64(key.encode()), "target": "MOD", "result": "EQUAL",
                          "mod_revision": mod})
        self._seen[key] = value
        return value

    def items(self, prefix: str, guard: bool = True, keys_only: bool = False):
        """[(key, JSON value or None)] under ``prefix``, in key order. With
        ``guard`` the commit requires that no key under it was created or
        changed since (keys deleted meanwhile are not noticed)."""
        end = _prefix_end(prefix.encode())
        kvs = self._range(prefix, end, keys_only=keys_only)
        if guard:
            self._cmp.append({"key": _b64(prefix.encode()), "range_end": _b64(end),
                              "target": "MOD", "result": "LESS",
                              "mod_revision": self.revision + 1})
        out = []
        for kv in kvs:
            k = _unb64(kv["key"]).decode()
            out.append((k, None if keys_only else json.loads(_unb64(kv.get("value")))))
        return out

    def absent(self, key: str):
        """The commit requires that ``key`` does not exist."""
        self._cmp.append({"key": _b64(key.encode()), "target": "CREATE",
                          "result": "EQUAL", "create_revision": 0})

    def put(self, key: str, value):
        self._ops.append({"request_put": {"key": _b64(key.encode()),
                                          "value": _b64(json.dumps(value).encode())}})

    def delete(self, key: str, prefix: bool = False):
        req = {"key": _b64(key.encode())}
        if prefix:
            req["range_end"] = _b64(_prefix_end(key.encode()))
        self._ops.append({"request_delete_range": req})

    def commit(self) -> bool:
        if not self._ops:
            return True
        r = self._s._post("kv/txn", {"compare": self._cmp, "success": self._ops,
                                     "failure": []})
        return bool(r.get("succeeded", False))


# ------------------------------------------------------------------- watch
class EndpointWatch:
    """What :meth:`EtcdStore.watch_endpoints` returns.

    ``cancel()`` stops it (no callback after it returns, except one already
    running); ``error`` is the exception that ended it (None while it runs or
    after a cancel); ``revision`` the revision of the last event delivered;
    ``wait(timeout)`` waits for the end; ``running`` tells whether it goes on.
    """

    def __init__(self, store, resp, lines, callback, start_revision, heartbeat, session):
        self._store = store
        self._session = session
        self._resp = resp
        self._sock = _stream_socket(resp)
        self._lines = lines
        self._callback = callback
        self._heartbeat = heartbeat
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._reason: Optional[BaseException] = None
        self.error: Optional[BaseException] = None
        self.revision = (start_revision - 1) if start_revision else 0
        self._thread = threading.Thread(target=self._run, name="etcd-watch", daemon=True)
        self._hb = threading.Thread(target=self._beat, name="etcd-watch-heartbeat",
                                    daemon=True)

    def _start(self):
        self._thread.start()
        if self._heartbeat:
            self._hb.start()

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._done.wait(timeout)

    def cancel(self):
        self._cancelled.set()
        self._shutdown()
        if threading.current_thread() is not self._thread:
            self._thread.join(5)

    def _shutdown(self):
        """Break the stream: the reading thread's blocked read returns."""
        with self._lock:
            resp, self._resp = self._resp, None
        if resp is None:
            return
        try:
            sock = self._sock
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed
            pass
        for x in (resp, self._session):
            try:
                x.close()
            except Exception:  # noqa: BLE001
                pass

    def _fail(self, exc: BaseException):
        """Stop because of ``exc`` (first reason wins)."""
        with self._lock:
            if self._reason is None:
                self._reason = exc
        self._shutdown()

    def _beat(self):
        while not self._cancelled.wait(self._heartbeat) and not self._done.is_set():
            try:
                self._store._post("kv/range", {"key": _b64(self._store._k("endpoints/")
                                                           .encode()),
                                               "count_only": True, "limit": 1})
            except Exception as e:  # noqa: BLE001 - any failure ends the watch
                self._fail(e if isinstance(e, DataplaneError) else
                           EtcdUnavailable(f"etcd watch heartbeat failed: {e}"))
                return

    def _run(self):
        exc = None
        try:
            for line in self._lines:
                if self._cancelled.is_set():
                    break
                self._handle(json.loads(line))
            if not self._cancelled.is_set():
                exc = EtcdUnavailable("etcd closed the watch stream (stopped, restarted "
                                      "or unreachable): take a new snapshot")
        except _StreamError as e:
            exc = e.exc
        except _CallbackError as e:
            exc = e.exc
        except Exception as e:  # noqa: BLE001 - connection reset and the like
            if not self._cancelled.is_set():
                exc = EtcdUnavailable(f"etcd watch stream failed: {e}")
        with self._lock:
            if self._reason is not None:       # heartbeat failure: the real cause
                exc = self._reason
        self._shutdown()
        if exc is not None and not self._cancelled.is_set():
            self.error = exc
            log.warning("etcd endpoint watch ended: %s", exc)
            try:
                self._callback("error", exc)
            except Exception:  # noqa: BLE001
                log.exception("etcd watch: the error callback raised")
        self._done.set()

    def _handle(self, msg):
        if "error" in msg:
            err = msg["error"]
            text = err.get("message", err) if isinstance(err, dict) else err
            raise _StreamError(EtcdUnavailable(f"etcd ended the watch: {text}"))
        res = msg.get("result", {})
        if res.get("canceled"):
            crev = res.get("compact_revision")
            if crev is not None and int(crev) > 0:
                raise _StreamError(EtcdCompacted(
                    f"etcd compacted revisions up to {crev}, the watch asked for "
                    f"{self.revision + 1}: take a new snapshot", int(crev)))
            raise _StreamError(EtcdUnavailable(
                f"etcd cancelled the watch ({res.get('cancel_reason') or 'no reason'})"))
        for ev in res.get("events", ()):
            if self._cancelled.is_set():
                return
            kind, data = self._store._decode_event(ev)
            try:
                self._callback(kind, data)
            except Exception as e:  # noqa: BLE001 - the caller's bug: make it seen
                log.exception("etcd watch: the callback raised on %s %s", kind, data)
                raise _CallbackError(e) from None
            self.revision = int(ev["kv"]["mod_revision"])


class _Retry(Exception):
    """Read again: the revision a transaction read at is gone."""


class _NextEndpoint(Exception):
    """This endpoint cannot be used now: try the next one."""


def _stream_socket(resp):
    """The socket under a streamed requests response (urllib3 1.26 and 2.x)."""
    raw = resp.raw
    conn = getattr(raw, "_connection", None)
    sock = getattr(conn, "sock", None)
    if sock is not None:
        return sock
    try:
        return raw._fp.fp.raw._sock
    except AttributeError:
        return None


class _StreamError(Exception):
    def __init__(self, exc):
        super().__init__(str(exc))
        self.exc = exc


class _CallbackError(_StreamError):
    pass


def _json_lines(resp) -> "iter":
    """The gateway's watch stream, one JSON document per line (a line may come
    in several chunks, a chunk may hold several lines)."""
    buf = b""
    for chunk in resp.iter_content(chunk_size=None):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line
    if buf.strip():
        yield buf


# ------------------------------------------------------------------- store
class EtcdStore:
    """The cluster's state in etcd at ``endpoints`` (URLs like
    ``http://127.0.0.1:2379``; several members of one cluster may be given:
    when one does not answer the next is tried), under key ``prefix``.

    ``timeout`` bounds every request (seconds). ``node`` is this node's name,
    kept as ``self.node`` for the caller (the store does not fill it in).
    ``ca_cert``, ``cert_cert``, ``cert_key``: TLS files for https endpoints.
    One store may be shared by threads (a call borrows an HTTP client from a
    small pool). Opening checks that etcd answers (EtcdUnavailable if not)."""

    kind = "etcd"

    def __init__(self, endpoints: Sequence[str], prefix: str = DEFAULT_PREFIX,
                 timeout: float = DEFAULT_TIMEOUT, node: Optional[str] = None,
                 ca_cert: Optional[str] = None, cert_cert: Optional[str] = None,
                 cert_key: Optional[str] = None, connect: bool = True):
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise ConfigError("etcd endpoints: give at least one (http://host:port)")
        self.urls = [str(e) for e in endpoints]
        self._targets = [_parse_endpoint(e) for e in self.urls]
        self.prefix = _check_prefix(prefix)
        self.timeout = float(timeout)
        self.node = node
        self._tls = {"ca_cert": ca_cert, "cert_cert": cert_cert, "cert_key": cert_key}
        self._current = 0                      # index of the endpoint that answered last
        self._idle: List[list] = [[] for _ in self._targets]   # clients not in use
        self._api_paths: List[Optional[str]] = [None] * len(self._targets)
        self._sessions: List[requests.Session] = []
        self._watches = weakref.WeakSet()
        self._slock = threading.Lock()
        self._closed = False
        if connect:
            self._post("kv/range", {"key": _b64(self._k("meta/").encode()),
                                    "count_only": True, "limit": 1})

    # ------------------------------------------------------------ plumbing
    def __repr__(self):
        return f"EtcdStore({self.urls!r}, prefix={self.prefix!r})"

    def _k(self, *parts) -> str:
        """The key of ``parts`` under the prefix: the last one may be '' to
        make a prefix ending in '/'."""
        head, *rest = parts
        return "/".join([self.prefix, head] + [_q(p) for p in rest])

    def _new_client(self, i: int):
        """An etcd3gw client of endpoint ``i`` with a session of its own."""
        protocol, host, port = self._targets[i]
        c = etcd3gw.client(host=host, port=port, protocol=protocol,
                           timeout=self.timeout, api_path=self._api_paths[i], **self._tls)
        c.session.trust_env = False            # etcd is never reached through a proxy
        return c

    @contextmanager
    def _borrow(self, i: int):
        """A client of endpoint ``i`` for one request (requests' sessions are
        not meant to be shared by threads; the pool is as big as the most
        requests that were ever in flight at once)."""
        with self._slock:
            c = self._idle[i].pop() if self._idle[i] else None
        if c is None:
            c = self._new_client(i)
            with self._slock:
                self._sessions.append(c.session)
        try:
            yield c
        finally:
            with self._slock:
                if self._closed:
                    c.session.close()
                else:
                    self._idle[i].append(c)

    def _post(self, path: str, payload: dict) -> dict:
        """One v3 request, to the endpoint that answered last, then the others.
        A connection that fails (or etcd's 503: no leader) moves to the next
        endpoint; a timeout does not (the request may have been applied)."""
        if self._closed:
            raise DataplaneError("etcd store is closed")
        n = len(self._targets)
        start = self._current
        last = None
        for j in range(n):
            i = (start + j) % n
            with self._borrow(i) as c:
                try:
                    r = c.post(c.get_url(path), json=payload)
                except etcd_exc.ConnectionFailedError as e:
                    last = _first_line(e.detail_text or e)
                    continue
                except etcd_exc.ConnectionTimeoutError as e:
                    raise EtcdUnavailable(f"etcd {self.urls[i]}: no answer within "
                                          f"{self.timeout:g} s ({e.detail_text or e})") \
                        from None
                except etcd_exc.Etcd3Exception as e:
                    raise DataplaneError(f"etcd {self.urls[i]}: {path} failed: "
                                         f"{(e.detail_text or str(e)).strip()}") from None
                self._api_paths[i] = c.api_path
            self._current = i
            return r
        raise EtcdUnavailable(f"etcd: {', '.join(self.urls)} "
                              f"{'does' if n == 1 else 'do'} not answer ({last})")

    def _atomic(self, body: Callable[[_Tx], Any]):
        """Run ``body(tx)`` and commit; again from fresh reads while another
        writer changed what it read."""
        for attempt in range(MAX_ATTEMPTS):
            tx = _Tx(self)
            try:
                result = body(tx)
            except _Retry:
                continue
            if tx.commit():
                return result
            if attempt >= 2:
                time.sleep(random.uniform(0, min(0.05, 0.0005 * (1 << min(attempt, 10)))))
        raise Busy(f"etcd: the change was overtaken by other writers {MAX_ATTEMPTS} times "
                   "in a row; try again")

    def _get(self, key: str):
        return _Tx(self).get(key)

    def _items(self, prefix: str):
        return _Tx(self).items(prefix, guard=False)

    def close(self):
        """Close the HTTP sessions and cancel the watches (no 'error' for them)."""
        for w in list(self._watches):
            w.cancel()
        with self._slock:
            self._closed = True
            sessions, self._sessions = self._sessions, []
            self._idle = [[] for _ in self._targets]
        for s in sessions:
            try:
                s.close()
            except Exception:  # noqa: BLE001
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- meta
    def get_meta(self, key: str) -> Optional[str]:
        """A cluster-wide setting (shared by every node)."""
        return self._get(self._k("meta", key))

    def set_meta(self, key: str, value: str):
        def body(tx):
            tx.put(self._k("meta", key), str(value))
        self._atomic(body)

    # ------------------------------------------------------------ networks
    def put_network(self, name: str, vni: int, plane: str, subnet: str,
                    gateway: Optional[str] = None, mtu: Optional[int] = None):
        """Insert or update network ``name``. A VNI used by another network
        (anywhere in the cluster, checked atomically), or a new subnet that
        leaves allocated addresses outside, is refused."""
        net = check_network(name, vni, subnet)

        def body(tx):
            old = tx.get(self._k("networks", name))
            owner = tx.get(self._k("vni", vni))
            if owner is not None and owner["name"] != name:
                raise ConfigError(f"network {name}: VNI {vni} is used by network "
                                  f"{owner['name']} already")
            outside = [_unq(k.rsplit("/", 1)[1]) for k, _ in
                       tx.items(self._k("alloc", name, ""), keys_only=True)]
            outside = [ip for ip in outside if ipaddress.IPv4Address(ip) not in net]
            if outside:
                raise Busy(f"network {name}: subnet {net} would leave allocated "
                           f"addresses outside it ({', '.join(sorted(outside)[:5])})")
            tx.put(self._k("networks", name), {
                "name": name, "vni": vni, "plane": plane, "subnet": str(net),
                "gateway": gateway, "mtu": mtu, "updated": time.time()})
            tx.put(self._k("vni", vni), {"name": name})
            if old is not None and old["vni"] != vni:
                prev = tx.get(self._k("vni", old["vni"]))
                if prev is not None and prev["name"] == name:
                    tx.delete(self._k("vni", old["vni"]))
        self._atomic(body)

    def network(self, name: str) -> Optional[Dict[str, Any]]:
        return self._get(self._k("networks", name))

    def networks(self) -> List[Dict[str, Any]]:
        """Every network: dicts with name, vni, plane, subnet, gateway, mtu."""
        return sorted((v for _, v in self._items(self._k("networks", ""))),
                      key=lambda n: n["name"])

    def delete_network(self, name: str) -> bool:
        """Remove network ``name``; Busy while it has endpoints or addresses."""
        def body(tx):
            net = tx.get(self._k("networks", name))
            used = any(ep["network"] == name for _, ep in tx.items(self._k("endpoints", "")))
            used = used or bool(tx.items(self._k("alloc", name, ""), keys_only=True))
            if used:
                raise Busy(f"network {name} is in use by pods (endpoints or addresses)")
            if net is None:
                return False
            tx.delete(self._k("networks", name))
            owner = tx.get(self._k("vni", net["vni"]))
            if owner is not None and owner["name"] == name:
                tx.delete(self._k("vni", net["vni"]))
            return True
        return self._atomic(body)

    # ---------------------------------------------------------------- pods
    def put_pod(self, name: str, netns: str, spec_dict: Dict[str, Any],
                state: str = "pending", node: Optional[str] = None):
        """Record pod ``name`` (intent: state 'pending') run by ``node``.
        AlreadyExists if a pod of that name is recorded (on any node)."""
        _check_state(state)
        try:
            spec = json.loads(json.dumps(spec_dict, sort_keys=True))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"pod {name}: spec is not JSON data ({e})") from None

        def body(tx):
            key = self._k("pods", name)
            old = tx.get(key)
            if old is not None:
                where = f" on node {old['node']}" if old.get("node") else ""
                raise AlreadyExists(f"pod {name} exists already{where}")
            tx.put(key, {"name": name, "netns": netns, "spec": spec, "state": state,
                         "created": time.time(), "node": node})
        self._atomic(body)

    def set_pod_state(self, name: str, state: str):
        _check_state(state)

        def body(tx):
            key = self._k("pods", name)
            pod = tx.get(key)
            if pod is None:
                raise NotFound(f"pod {name} is not recorded")
            tx.put(key, dict(pod, state=state))
        self._atomic(body)

    def pod(self, name: str) -> Optional[Dict[str, Any]]:
        """{name, netns, spec (dict), state, created, node} or None."""
        return self._get(self._k("pods", name))

    def pods(self, state: Optional[str] = None,
             node: Optional[str] = None) -> List[Dict[str, Any]]:
        """Pods, oldest first, filtered by state and/or node when given."""
        if state is not None:
            _check_state(state)
        out = [p for _, p in self._items(self._k("pods", ""))
               if (state is None or p["state"] == state)
               and (node is None or p.get("node") == node)]
        return sorted(out, key=lambda p: (p["created"], p["name"]))

    def delete_pod(self, name: str) -> bool:
        """Remove the pod, its endpoints, its addresses and its MACs in one
        transaction. False if nothing was recorded under ``name``."""
        def body(tx):
            pod = tx.get(self._k("pods", name))
            eps = [v for _, v in tx.items(self._k("endpoints", name, ""))]
            allocs = tx.items(self._k("podalloc", name, ""))
            pmacs = tx.items(self._k("podmacs", name, ""))
            for ep in eps:
                self._drop_hostif(tx, ep)
                self._drop_mac(tx, ep["mac"], name, ep["plane"])
            for k, v in pmacs:
                self._drop_mac(tx, v["mac"], name, _unq(k.rsplit("/", 1)[1]))
            for k, v in allocs:
                net = _unq(k.rsplit("/", 1)[1])
                akey = self._k("alloc", net, v["ip"])
                owner = tx.get(akey)
                if owner is not None and owner["pod"] == name:
                    tx.delete(akey)
            tx.delete(self._k("pods", name))
            for what in ("endpoints", "podalloc", "podmacs"):
                tx.delete(self._k(what, name, ""), prefix=True)
            return (pod is not None) + len(eps) + len(allocs) > 0
        return self._atomic(body)

    # ----------------------------------------------------------- endpoints
    def _hostif_key(self, node, host_ifname):
        return self._k("hostif", node if node else "@", host_ifname)

    def _drop_hostif(self, tx, ep):
        if ep.get("host_ifname") is None:
            return
        key = self._hostif_key(ep.get("node"), ep["host_ifname"])
        owner = tx.get(key)
        if owner is not None and (owner["pod"], owner["plane"]) == (ep["pod"], ep["plane"]):
            tx.delete(key)

    def _drop_mac(self, tx, mac, pod, plane):
        key = self._k("macs", mac)
        owner = tx.get(key)
        if owner is not None and (owner["pod"], owner["plane"]) == (pod, plane):
            tx.delete(key)

    def _write_endpoint(self, tx, rec, strict_mac=False):
        """Put endpoint ``rec`` (every field but created) with its indexes."""
        pod, plane = rec["pod"], rec["plane"]
        key = self._k("endpoints", pod, plane)
        old = tx.get(key)
        hkey = None
        if rec["host_ifname"] is not None:
            hkey = self._hostif_key(rec["node"], rec["host_ifname"])
            other = tx.get(hkey)
            if other is not None and (other["pod"], other["plane"]) != (pod, plane):
                raise AlreadyExists(f"host interface {rec['host_ifname']} belongs to pod "
                                    f"{other['pod']} plane {other['plane']} already")
        mkey = self._k("macs", rec["mac"])
        mac_owner = tx.get(mkey)
        if strict_mac and mac_owner is not None and \
                (mac_owner["pod"], mac_owner["plane"]) != (pod, plane):
            raise AlreadyExists(f"MAC {rec['mac']} belongs to pod {mac_owner['pod']} "
                                f"plane {mac_owner['plane']} already")
        created = time.time()
        if old is not None:
            created = old.get("created", created)
            if old.get("host_ifname") is not None and \
                    self._hostif_key(old.get("node"), old["host_ifname"]) != hkey:
                self._drop_hostif(tx, old)
            if old["mac"] != rec["mac"]:
                self._drop_mac(tx, old["mac"], pod, plane)
        reserved = tx.get(self._k("podmacs", pod, plane))
        if reserved is not None and reserved["mac"] != rec["mac"] and \
                (old is None or reserved["mac"] != old["mac"]):
            self._drop_mac(tx, reserved["mac"], pod, plane)
        ep = {f: rec.get(f) for f in _EP_FIELDS}
        ep["created"] = created
        tx.put(key, ep)
        if hkey is not None:
            tx.put(hkey, {"pod": pod, "plane": plane})
        tx.put(mkey, {"pod": pod, "plane": plane})
        tx.put(self._k("podmacs", pod, plane), {"mac": rec["mac"]})
        return ep

    def add_endpoint(self, pod: str, plane: str, network: str, ifname: Optional[str],
                     host_ifname: Optional[str], mac: str, ip: Optional[str],
                     node: Optional[str] = None, vtep: Optional[str] = None,
                     state: str = "pending"):
        """Record (or update) the endpoint of ``pod`` on ``plane``. Local
        endpoints have a host_ifname (unique per node); remote ones a node
        and a VTEP."""
        _check_state(state)
        rec = {"pod": pod, "plane": plane, "network": network, "ifname": ifname,
               "host_ifname": host_ifname, "mac": mac, "ip": ip, "node": node,
               "vtep": vtep, "state": state}
        self._atomic(lambda tx: self._write_endpoint(tx, rec))

    def set_endpoint_state(self, pod: str, plane: str, state: str):
        _check_state(state)

        def body(tx):
            key = self._k("endpoints", pod, plane)
            ep = tx.get(key)
            if ep is None:
                raise NotFound(f"endpoint of pod {pod} on plane {plane} is not recorded")
            tx.put(key, dict(ep, state=state))
        self._atomic(body)

    def delete_endpoint(self, pod: str, plane: str) -> bool:
        def body(tx):
            key = self._k("endpoints", pod, plane)
            ep = tx.get(key)
            if ep is None:
                return False
            tx.delete(key)
            self._drop_hostif(tx, ep)
            self._drop_mac(tx, ep["mac"], pod, plane)
            pm = tx.get(self._k("podmacs", pod, plane))
            if pm is not None and pm["mac"] == ep["mac"]:
                tx.delete(self._k("podmacs", pod, plane))
            return True
        return self._atomic(body)

    def endpoints(self, pod: Optional[str] = None, network: Optional[str] = None,
                  state: Optional[str] = None,
                  node: Optional[str] = None) -> List[Dict[str, Any]]:
        """Endpoints (dicts with the columns), filtered by whatever is given."""
        prefix = self._k("endpoints", pod, "") if pod is not None else \
            self._k("endpoints", "")
        want = {"network": network, "state": state, "node": node}
        out = [ep for _, ep in self._items(prefix)
               if all(v is None or ep.get(f) == v for f, v in want.items())]
        return sorted(out, key=lambda e: (e["pod"], e["plane"]))

    def endpoints_snapshot(self) -> Tuple[List[Dict[str, Any]], int]:
        """Every endpoint of the cluster and the etcd revision they were read
        at: watch from ``revision + 1`` to get every change after them."""
        tx = _Tx(self)
        eps = [ep for _, ep in tx.items(self._k("endpoints", ""), guard=False)]
        return sorted(eps, key=lambda e: (e["pod"], e["plane"])), tx.revision

    def watch_endpoints(self, start_revision: Optional[int],
                        callback: Callable[[str, Any], None],
                        heartbeat: float = DEFAULT_HEARTBEAT) -> EndpointWatch:
        """Deliver every endpoint change from etcd revision ``start_revision``
        on (None: from now) to ``callback(kind, data)`` in a thread, in order:

        - ``('put', endpoint)``: an endpoint was added or changed (the dict of
          :meth:`endpoints`);
        - ``('delete', {'pod', 'plane', ...})``: an endpoint was removed; the
          dict has the removed endpoint's fields when etcd still had them;
        - ``('error', exception)``: the watch cannot go on (EtcdUnavailable:
          etcd stopped, unreachable or silent for ``heartbeat`` seconds plus
          the request timeout; EtcdCompacted; or what the callback raised). It
          comes once and the watch ends: take a new snapshot, watch again.

        The watch is established when this returns (EtcdUnavailable if etcd
        does not answer). ``heartbeat`` 0 turns the liveness check off."""
        prefix = self._k("endpoints", "").encode()
        create = {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix)),
                  "prev_kv": True}
        if start_revision is not None:
            if isinstance(start_revision, bool) or not isinstance(start_revision, int) \
                    or start_revision < 1:
                raise ConfigError(f"start_revision: {start_revision!r} is not a revision "
                                  "(an integer >= 1)")
            create["start_revision"] = start_revision
        n = len(self._targets)
        last = None
        for j in range(n):
            i = (self._current + j) % n
            try:
                resp, lines, session = self._open_watch(i, create)
            except _NextEndpoint as e:
                last = f"{self.urls[i]}: {e}"
                continue
            w = EndpointWatch(self, resp, lines, callback, start_revision, heartbeat,
                              session)
            self._watches.add(w)
            w._start()
            return w
        raise EtcdUnavailable(f"etcd: cannot watch, no endpoint answers ({last})")

    def _open_watch(self, i, create):
        """Open the watch stream on endpoint ``i`` and read etcd's confirmation
        (within the timeout); then the stream may stay silent for ever."""
        c = self._new_client(i)          # its own session: the stream keeps a connection
        try:
            resp = c.session.post(c.get_url("watch"), json={"create_request": create},
                                  stream=True, timeout=(self.timeout, self.timeout))
        except (requests.exceptions.RequestException, etcd_exc.Etcd3Exception) as e:
            c.session.close()
            raise _NextEndpoint(_first_line(e)) from None
        try:
            if resp.status_code != 200:
                text = resp.text.strip()
                if resp.status_code == 503:
                    raise _NextEndpoint(text)
                raise DataplaneError(f"etcd {self.urls[i]}: watch refused "
                                     f"(HTTP {resp.status_code}): {text}")
            lines = _json_lines(resp)
            try:
                first = json.loads(next(lines))
            except (StopIteration, ValueError, requests.exceptions.RequestException) as e:
                raise _NextEndpoint(f"no watch confirmation ({_first_line(e)})") from None
            if "error" in first or not first.get("result", {}).get("created"):
                raise DataplaneError(f"etcd {self.urls[i]}: watch not created: {first}")
            sock = _stream_socket(resp)
            if sock is not None:
                sock.settimeout(None)    # events may be minutes apart: the heartbeat
            else:  # pragma: no cover - urllib3 internals changed  # watches liveness
                log.warning("etcd watch: cannot reach the stream's socket; a watch "
                            "without events for %g s will end with an error", self.timeout)
            return resp, lines, c.session
        except BaseException:
            resp.close()
            c.session.close()
            raise

    def _decode_event(self, ev) -> Tuple[str, Dict[str, Any]]:
        kv = ev["kv"]
        key = _unb64(kv["key"]).decode()
        if ev.get("type", "PUT") == "PUT":
            return "put", json.loads(_unb64(kv.get("value")))
        rest = key[len(self._k("endpoints", "")):]
        pod, _, plane = rest.partition("/")
        data = {}
        if ev.get("prev_kv") and ev["prev_kv"].get("value"):
            data = json.loads(_unb64(ev["prev_kv"]["value"]))
        data.update(pod=_unq(pod), plane=_unq(plane))
        return "delete", data

    def put_static_endpoint(self, name: str, network: str, mac: str, ip: str,
                            vtep: str) -> Dict[str, Any]:
        """Describe to the cluster a host that is not a dataplane node (e.g. a
        Linux host whose VTEP is the kernel's vxlan device): its address
        ``ip`` with ``mac`` on ``network`` (recorded), behind VTEP ``vtep``.

        Stored as the endpoint of pod ``name`` on the network's plane, node
        ``static:<name>``, state 'ready'; its address is allocated to
        ``name`` (no pod gets it). Calling it again updates it (a new MAC,
        address or VTEP). A static host has one network per plane (use another
        name for a second network of the same plane). ``delete_pod(name)``
        removes it. Returns the endpoint."""
        from .config import check_mac
        if not isinstance(name, str) or not name:
            raise ConfigError(f"static endpoint: name {name!r} is not a non-empty string")
        mac = check_mac(mac, "mac")
        try:
            vtep_ip = ipaddress.IPv4Address(str(vtep))
        except ValueError:
            raise ConfigError(f"static endpoint {name}: vtep {vtep!r} is not an IPv4 "
                              "address") from None
        if vtep_ip.is_multicast or vtep_ip.is_unspecified or vtep_ip.is_loopback:
            raise ConfigError(f"static endpoint {name}: {vtep_ip} cannot be a VTEP address")

        def body(tx):
            net = tx.get(self._k("networks", network))
            if net is None:
                raise NotFound(f"static endpoint {name}: network {network} is not recorded")
            _, _, want = ip_request(network, net["subnet"], net["gateway"], ip)
            if tx.get(self._k("pods", name)) is not None:
                raise AlreadyExists(f"static endpoint {name}: a pod of that name exists")
            plane = net["plane"]
            old = tx.get(self._k("endpoints", name, plane))
            if old is not None and old.get("node") != STATIC_NODE_PREFIX + name:
                raise AlreadyExists(f"static endpoint {name}: pod {name} has an endpoint "
                                    f"on plane {plane} already")
            if old is not None and old["network"] != network:
                raise AlreadyExists(f"static endpoint {name}: it has network "
                                    f"{old['network']} on plane {plane} already (use "
                                    "another name for a second network of that plane)")
            akey = self._k("alloc", network, str(want))
            owner = tx.get(akey)
            if owner is not None and owner["pod"] != name:
                raise ConfigError(f"ips: {want} on network {network} is taken by pod "
                                  f"{owner['pod']}")
            pkey = self._k("podalloc", name, network)
            mine = tx.get(pkey)
            if mine is not None and mine["ip"] != str(want):
                okey = self._k("alloc", network, mine["ip"])
                prev = tx.get(okey)
                if prev is not None and prev["pod"] == name:
                    tx.delete(okey)
            if owner is None:
                tx.put(akey, {"network": network, "ip": str(want), "pod": name,
                              "created": time.time()})
                tx.put(pkey, {"ip": str(want)})
            return self._write_endpoint(tx, {
                "pod": name, "plane": plane, "network": network, "ifname": None,
                "host_ifname": None, "mac": mac, "ip": str(want),
                "node": STATIC_NODE_PREFIX + name, "vtep": str(vtep_ip),
                "state": "ready"}, strict_mac=True)
        return self._atomic(body)

    # ---------------------------------------------------------------- IPAM
    def allocate_ip(self, network: str, subnet_cidr: str, gateway: Optional[str],
                    pod: str, fixed: Optional[str] = None) -> str:
        """An address of ``subnet_cidr`` for ``pod`` on ``network``, recorded
        (the lowest free one, or ``fixed``); the same rules and errors as
        :meth:`dataplane.store.Store.allocate_ip`. Safe when several nodes
        allocate at once: the address key is created only if it does not
        exist (compare-and-create); a node that loses reads again and takes
        one of the lowest free addresses at random (so that racers spread)."""
        subnet, reserved, want = ip_request(network, subnet_cidr, gateway, fixed)
        pkey = self._k("podalloc", pod, network)
        tries = [0]

        def body(tx):
            tries[0] += 1
            mine = tx.get(pkey)
            if mine is not None:
                if want is not None and str(want) != mine["ip"]:
                    raise ConfigError(f"ips: pod {pod} has address {mine['ip']} on network "
                                      f"{network} already, not {want}")
                return mine["ip"]
            if want is not None:
                owner = tx.get(self._k("alloc", network, str(want)))
                if owner is not None:
                    raise ConfigError(f"ips: {want} on network {network} is taken by pod "
                                      f"{owner['pod']}")
                ip = str(want)
            else:
                taken = set()
                for k, _ in tx.items(self._k("alloc", network, ""), guard=False,
                                     keys_only=True):
                    try:
                        taken.add(int(ipaddress.IPv4Address(_unq(k.rsplit("/", 1)[1]))))
                    except ValueError:  # pragma: no cover - not written by us
                        pass
                taken |= {int(a) for a in reserved}
                # the lowest free address; after losing a race, one of the
                # lowest few at random, so that racing nodes spread out
                spread = 1 if tries[0] == 1 else min(1 << tries[0], 64)
                free = []
                lo, hi = int(subnet.network_address), int(subnet.broadcast_address)
                for cand in range(lo, hi + 1):
                    if cand not in taken:
                        free.append(cand)
                        if len(free) >= spread:
                            break
                if not free:
                    raise no_free_address(network, subnet,
                                          len({t for t in taken if lo <= t <= hi}))
                ip = str(ipaddress.IPv4Address(random.choice(free)))
                tx.absent(self._k("alloc", network, ip))
            tx.put(self._k("alloc", network, ip), {"network": network, "ip": ip,
                                                    "pod": pod, "created": time.time()})
            tx.put(pkey, {"ip": ip})
            return ip
        return self._atomic(body)

    def release_ips(self, pod: str) -> int:
        """Give back every address of ``pod``; returns how many."""
        def body(tx):
            allocs = tx.items(self._k("podalloc", pod, ""))
            for k, v in allocs:
                akey = self._k("alloc", _unq(k.rsplit("/", 1)[1]), v["ip"])
                owner = tx.get(akey)
                if owner is not None and owner["pod"] == pod:
                    tx.delete(akey)
            if allocs:
                tx.delete(self._k("podalloc", pod, ""), prefix=True)
            return len(allocs)
        return self._atomic(body)

    def allocations(self, network: Optional[str] = None) -> List[Dict[str, Any]]:
        prefix = self._k("alloc", network, "") if network is not None else \
            self._k("alloc", "")
        return sorted((v for _, v in self._items(prefix)),
                      key=lambda a: (a["network"], a["ip"]))

    def allocate_mac(self, pod: str, plane: str) -> str:
        """A locally administered unicast MAC (02:xx:xx:xx:xx:xx) derived from
        (pod, plane), as the SQLite store derives it, reserved for the pair in
        the whole cluster: the same pair gets the same MAC; a MAC another
        endpoint has (or another pair reserved) is skipped for the next
        derivation. The reservation goes with ``delete_pod``."""
        def body(tx):
            rkey = self._k("podmacs", pod, plane)
            reserved = tx.get(rkey)
            for i in range(1 << 16):
                mac = derive_mac(pod, plane, i)
                owner = tx.get(self._k("macs", mac))
                if owner is None or (owner["pod"], owner["plane"]) == (pod, plane):
                    break
            else:  # pragma: no cover
                raise ResourceError(f"no free MAC for pod {pod} plane {plane}")
            if reserved is not None and reserved["mac"] == mac and owner is not None:
                return mac                                  # nothing to write
            if reserved is not None and reserved["mac"] != mac:
                # an older reservation of the pair (a lower derivation was taken
                # then): give it back unless the pair's endpoint uses it
                ep = tx.get(self._k("endpoints", pod, plane))
                if ep is None or ep["mac"] != reserved["mac"]:
                    self._drop_mac(tx, reserved["mac"], pod, plane)
            tx.put(self._k("macs", mac), {"pod": pod, "plane": plane})
            tx.put(rkey, {"mac": mac})
            return mac
        return self._atomic(body)

