"""A client of etcd's v3 API through its JSON gRPC gateway (``/v3/...`` over
HTTP): requests that fail over between the members of a cluster,
optimistic transactions, and watches that report how they ended. Nothing in
it knows what the keys mean (see :mod:`dataplane.store.etcd`).

It is built on ``etcd3gw``, the OpenStack-maintained client: pure Python on
top of requests, so it brings no grpcio/protobuf pins (python-etcd3, the gRPC
client, has had no release since 2020 and its generated code does not import
with protobuf >= 4 unless the slow pure-Python protobuf is forced). We use its
client for what it does well — the HTTP session and TLS settings, discovery
of the API path (/v3, /v3beta), mapping of HTTP errors to exceptions — and
send the v3 requests (range, txn, watch) ourselves, because its convenience
helpers drop what a cluster store needs: ``get`` hides the response header
(the revision a snapshot was taken at), and its ``Watcher`` reads the stream
in a thread pool that swallows errors, so a dropped connection or a
compacted revision just stops the events with no sign. Our watch loop
reports both.

Transactions
------------
:meth:`EtcdGateway.atomic` runs a body that reads through a :class:`Txn` and
commits it. The reads are made at one revision R (the first read's), every
key read is compared (``mod_revision`` still what was read, 0 for "still
absent"), a prefix read is compared as a range (no key in it modified after
R), and the writes happen only if every compare holds; otherwise the body
runs again on fresh reads (a bounded number of times, with jittered
back-off). That makes each body serialisable against every other writer.
etcd refuses a transaction of more than 128 operations (``--max-txn-ops``).

Several members
---------------
A request goes to the member that answered last, and on to the next one
when that one does not answer: its connection is refused or cut, it
answers 503 (no leader) or not in time, or its answer is cut off or
unreadable. After a member did not answer in time, the next request starts
at the next member, so a hung member costs one request a share of its time,
not every request its whole timeout. The time of a request (the timeout, or
the bound of :meth:`EtcdGateway.bounded`) is for all the members it tries
together: each try gets an equal share of what is left.

A transaction that did not get its answer may have been applied all the
same (a read timeout, a cut connection, etcd's "request timed out"), so
sending it to the next member must not apply it twice. It does not: the
transactions :meth:`EtcdGateway.atomic` builds compare every key they read
(and every prefix they read as a range), and each of them writes a key it
compared; once applied, that key's ``mod_revision`` is the new revision and
every compare of a second application fails. A transaction that compares
nothing only puts fixed values, which a second application leaves as they
are. The resent transaction reads back its own writes when its compares
fail: if every key it puts holds the value it puts, all at one revision
after its reads (and every key it deletes is gone), the first try was
applied and the commit succeeded; otherwise another writer came first and
the body runs again on fresh reads, as after any conflict. Any other
request (reads, lease grant, keepalive and revoke) is simply sent again: a
lease granted twice leaves an unused lease that lapses after its TTL.

Watching
--------
:meth:`EtcdGateway.watch` delivers every change under a prefix after a
revision to a callback, in a thread, in order. A watch that cannot go on
(etcd stopped or unreachable — a heartbeat notices a silent connection too —
a compacted revision, a callback that raised) calls ``callback('error',
exc)`` once, records ``handle.error`` and ends: the caller reads again and
watches again, which is how it resynchronises after a reconnect. Nothing
stops silently.

Errors: :class:`EtcdUnavailable` (also a ConnectionError) when no endpoint
answers, :class:`EtcdCompacted` for a watch of history etcd no longer has,
DataplaneError for a request etcd refused, Busy for a transaction that other
writers overtook every time.
"""

import base64
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

from ..errors import Busy, ConfigError, DataplaneError, Refused, Unavailable
from .reach import REFUSES_REQUEST

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
#: how often a watch checks that etcd still answers (seconds)
DEFAULT_HEARTBEAT = 5.0
#: how many times a change is recomputed when other writers keep winning
MAX_ATTEMPTS = 500


class EtcdUnavailable(Unavailable, ConnectionError):
    """No etcd endpoint answered (stopped, unreachable, no leader, timed out).
    ``tls``: no member could be spoken to for want of TLS settings both
    sides take (a certificate not trusted, not naming the host, expired; a
    client certificate missing or refused) - a configuration to fix."""

    tls = False


class EtcdRefused(Refused):
    """An etcd member answered with an error: the node is not authorised
    (auth enabled, its user or role taken away) or the request was refused."""


def _refusal(e: "etcd_exc.Etcd3Exception") -> str:
    """etcd's own words for an error answer (the gRPC gateway's JSON body:
    'etcdserver: permission denied'), else the HTTP reason."""
    text = (e.detail_text or "").strip()
    try:
        body = json.loads(text)
        text = str(body.get("message") or body.get("error") or text)
    except (ValueError, AttributeError):
        pass
    return text or (str(e.args[0]) if e.args else "") or type(e).__name__


class EtcdCompacted(DataplaneError):
    """A watch asked for a revision etcd has compacted away: take a new snapshot."""

    def __init__(self, message, compact_revision=None):
        super().__init__(message)
        self.compact_revision = compact_revision

    def __reduce__(self):
        return (self.__class__, (str(self), self.compact_revision))


# ------------------------------------------------------------------ helpers
def b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def unb64(s: Optional[str]) -> bytes:
    return base64.b64decode(s) if s else b""


def key_text(raw: bytes) -> str:
    """A key's bytes as text. The store's own keys are UTF-8; one another
    tool wrote that is not comes with its stray bytes as \\xNN escapes
    rather than failing every read under its prefix (never one of the
    store's own keys: their names are percent-quoted, with no '\\')."""
    return raw.decode("utf-8", "backslashreplace")


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix``."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"  # pragma: no cover - every prefix here ends with '/'


def parse_endpoint(url: str) -> Tuple[str, str, int]:
    """'http://host:port' -> (protocol, host, port), or ConfigError."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"etcd endpoint {url!r} is not a URL (http://host:port)")
    u = urllib.parse.urlsplit(url)
    try:
        port = u.port
    except ValueError:
        raise ConfigError(f"etcd endpoint {url!r}: bad port") from None
    if (
        u.scheme not in ("http", "https")
        or not u.hostname
        or u.path not in ("", "/")
        or u.query
        or u.fragment
        or u.username
        or u.password
    ):
        raise ConfigError(f"etcd endpoint {url!r} is not http(s)://host:port")
    return u.scheme, u.hostname, port or 2379


def _first_line(x) -> str:
    lines = str(x).strip().splitlines()
    return lines[0] if lines else type(x).__name__


#: a TLS failure's text, in a few plain words
_TLS_REASONS = (
    # (the member's certificate, as this node's TLS checks it)
    ("Hostname mismatch", "its TLS certificate does not name the URL's host"),
    ("IP address mismatch", "its TLS certificate does not name the URL's address"),
    ("certificate has expired", "its TLS certificate has expired"),
    ("local issuer certificate", "its TLS certificate is not signed by a CA in store.tls.ca"),
    ("self-signed certificate", "its TLS certificate is not signed by a CA in store.tls.ca"),
    ("self signed certificate", "its TLS certificate is not signed by a CA in store.tls.ca"),
    (
        "key usage extension",
        "its CA's certificate lacks the key usage extension that strict checking requires",
    ),
    ("CERTIFICATE_VERIFY_FAILED", "its TLS certificate is not trusted"),
    # (this node's client certificate, as the member's TLS checks it)
    ("CERTIFICATE_REQUIRED", "it requires a client certificate (store.tls.cert and key)"),
    ("certificate required", "it requires a client certificate (store.tls.cert and key)"),
    ("BAD_CERTIFICATE", "it refuses this node's client certificate, or requires one"),
    ("UNKNOWN_CA", "it does not trust the CA of this node's client certificate"),
    ("CERTIFICATE_EXPIRED", "it finds this node's client certificate expired"),
)
#: what a failed connection's text says, in a few plain words (urllib3's
#: "HTTPConnectionPool(...): Max retries exceeded ... NewConnectionError(...)"
#: says little more, at length); TLS's first
_REASONS = _TLS_REASONS + (
    ("refused", "connection refused: nothing listens there"),
    ("Name or service not known", "the host name does not resolve"),
    ("Temporary failure in name resolution", "the host name does not resolve"),
    ("No route to host", "no route to the host"),
    ("Network is unreachable", "the network is unreachable"),
    ("timed out", "the connection timed out"),
    ("reset by peer", "the connection was reset"),
    ("RemoteDisconnected", "the connection was closed without an answer"),
    ("Connection aborted", "the connection was closed without an answer"),
    ("SSLError", "the TLS handshake failed"),
)
#: what a TLS failure is said as: a configuration to fix, not a member down
TLS_WORDS = frozenset(words for _, words in _TLS_REASONS)


#: HTTP reasons of errors that are one member's, not the cluster's: too
#: many requests (its apply too far behind its commits: gRPC ResourceExhausted)
#: and an internal error (gRPC Unknown or Internal)
_MEMBERS_OWN = ("Too Many Requests", "Internal Server Error")


def _token_gone(text: str) -> bool:
    """Whether etcd's words ``text`` say the member no longer takes the
    node's token (expired, unknown to a member that restarted, issued
    before the auth store changed): a new one may do."""
    return "invalid auth token" in text or "revision of auth store is old" in text


def _members_own(e) -> bool:
    """Whether error answer ``e`` is the member's own trouble, which another
    member may not have."""
    return isinstance(e, etcd_exc.InternalServerError) or (
        bool(e.args) and str(e.args[0]) in _MEMBERS_OWN
    )


def _gateway_error(e) -> str:
    """An HTTP error etcd's gateway answered, as 'HTTP reason: message'."""
    text = e.detail_text or ""
    try:
        text = json.loads(text).get("message") or text
    except (ValueError, AttributeError):
        pass
    return f"{e.args[0]}: {_first_line(text)}" if text else str(e.args[0])


def plain_reason(x) -> str:
    """Why a connection to etcd failed, in plain words, not urllib3's text."""
    text = str(getattr(x, "detail_text", None) or x)
    for needle, words in _REASONS:
        if needle in text:
            return words
    return _first_line(text)


# ------------------------------------------------------------- transaction
class Txn:
    """One optimistic transaction: reads at one revision, compares, writes."""

    def __init__(self, gateway: "EtcdGateway"):
        self._gw = gateway
        self.revision: Optional[int] = None
        self._cmp: List[dict] = []
        self._ops: List[dict] = []
        self._seen: Dict[str, Any] = {}

    def _range(self, key: str, range_end: Optional[bytes] = None, keys_only=False):
        payload = {"key": b64(key.encode())}
        if range_end is not None:
            payload["range_end"] = b64(range_end)
        if keys_only:
            payload["keys_only"] = True
        if self.revision is not None:
            payload["revision"] = self.revision
        try:
            r = self._gw.post("kv/range", payload)
        except DataplaneError as e:
            if "required revision has been compacted" in str(e):
                raise _Retry() from None  # compacted between two reads
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
            value = json.loads(unb64(kvs[0].get("value")))
        else:
            mod, value = 0, None
        self._cmp.append(
            {"key": b64(key.encode()), "target": "MOD", "result": "EQUAL", "mod_revision": mod}
        )
        self._seen[key] = value
        return value

    def items(
        self,
        prefix: str,
        guard: bool = True,
        keys_only: bool = False,
        loose=False,
        raw_keys=False,
    ):
        """[(key, JSON value or None)] under ``prefix``, in key order. With
        ``guard`` the commit requires that no key under it was created or
        changed since (keys deleted meanwhile are not noticed). ``loose``: a
        value that is not JSON comes as its text (else ValueError). Keys come
        as :func:`key_text`, or with ``raw_keys`` as their bytes."""
        end = prefix_end(prefix.encode())
        kvs = self._range(prefix, end, keys_only=keys_only)
        if guard:
            self._cmp.append(
                {
                    "key": b64(prefix.encode()),
                    "range_end": b64(end),
                    "target": "MOD",
                    "result": "LESS",
                    "mod_revision": self.revision + 1,
                }
            )
        out = []
        for kv in kvs:
            k = unb64(kv["key"])
            k = k if raw_keys else key_text(k)
            out.append((k, None if keys_only else _json(unb64(kv.get("value")), loose)))
        return out

    def absent(self, key: str):
        """The commit requires that ``key`` does not exist."""
        self._cmp.append(
            {"key": b64(key.encode()), "target": "CREATE", "result": "EQUAL", "create_revision": 0}
        )

    def put(self, key: str, value, lease: Optional[int] = None):
        """Write ``key`` at the commit; with ``lease``, the key goes when the
        lease does."""
        req = {"key": b64(key.encode()), "value": b64(json.dumps(value).encode())}
        if lease is not None:
            req["lease"] = str(lease)
        self._ops.append({"request_put": req})

    def delete(self, key: str, prefix: bool = False):
        req = {"key": b64(key.encode())}
        if prefix:
            req["range_end"] = b64(prefix_end(key.encode()))
        self._ops.append({"request_delete_range": req})

    def commit(self) -> bool:
        if not self._ops:
            return True
        return self._gw.txn(self._cmp, self._ops, self.revision)


def _read_back(op: dict) -> dict:
    """A range request for what ``op`` (a put or a delete) writes."""
    if "request_put" in op:
        return {"request_range": {"key": op["request_put"]["key"]}}
    req = op["request_delete_range"]
    rng = {"key": req["key"], "count_only": True}
    if "range_end" in req:
        rng["range_end"] = req["range_end"]
    return {"request_range": rng}


def _applied_before(ops: List[dict], responses: List[dict], revision: Optional[int]) -> bool:
    """Whether the reads of :func:`_read_back` (``responses``, one per op of
    ``ops``) show the writes of ``ops`` made: every key put holds the value
    (and lease) put, all at one revision after ``revision`` (one
    transaction's), every key deleted is gone."""
    if len(responses) != len(ops):
        return False
    mods = set()
    for op, res in zip(ops, responses):
        rr = res.get("response_range") or {}
        kvs = rr.get("kvs") or []
        if "request_put" in op:
            want = op["request_put"]
            if len(kvs) != 1 or (kvs[0].get("value") or "") != want["value"]:
                return False
            if str(kvs[0].get("lease") or "0") != str(want.get("lease") or "0"):
                return False
            mods.add(int(kvs[0]["mod_revision"]))
        elif int(rr.get("count") or 0):
            return False
    return not mods or (len(mods) == 1 and mods.pop() > (revision or 0))


def _json(raw: bytes, loose: bool = False):
    """The JSON value of ``raw``; with ``loose``, its text if it is not JSON."""
    try:
        return json.loads(raw)
    except ValueError:
        if not loose:
            raise
        return raw.decode("utf-8", "replace")


class _Retry(Exception):
    """Read again: the revision a transaction read at is gone."""


class _NextEndpoint(Exception):
    """This endpoint cannot be used now: try the next one."""


# ------------------------------------------------------------------- watch
class Watch:
    """What :meth:`EtcdGateway.watch` returns.

    ``cancel()`` stops it (no callback after it returns, except one already
    running); ``error`` is the exception that ended it (None while it runs or
    after a cancel); ``revision`` the revision of the last event delivered;
    ``wait(timeout)`` waits for the end; ``running`` tells whether it goes on.
    """

    def __init__(
        self,
        gateway,
        key,
        resp,
        lines,
        callback,
        decode,
        start_revision,
        heartbeat,
        session,
        endpoint=None,
    ):
        self._gw = gateway
        self._key = key
        self._endpoint = endpoint  # the member the stream comes from
        self._session = session
        self._resp = resp
        self._sock = _stream_socket(resp)
        self._lines = lines
        self._callback = callback
        self._decode = decode
        self._heartbeat = heartbeat
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._reason: Optional[BaseException] = None
        self.error: Optional[BaseException] = None
        self.revision = (start_revision - 1) if start_revision else 0
        self._thread = threading.Thread(target=self._run, name="etcd-watch", daemon=True)
        self._hb = threading.Thread(target=self._beat, name="etcd-watch-heartbeat", daemon=True)

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
                # that member, not any: another one answering says
                # nothing of this stream
                self._gw.ping(self._key, endpoint=self._endpoint)
            except Exception as e:  # noqa: BLE001 - any failure ends the watch
                self._fail(
                    e
                    if isinstance(e, DataplaneError)
                    else EtcdUnavailable(f"etcd watch heartbeat failed: {e}")
                )
                return

    def _run(self):
        exc = None
        try:
            for line in self._lines:
                if self._cancelled.is_set():
                    break
                self._handle(json.loads(line))
            if not self._cancelled.is_set():
                exc = EtcdUnavailable(
                    "etcd closed the watch stream (stopped, restarted "
                    "or unreachable): take a new snapshot"
                )
        except _StreamError as e:
            exc = e.exc
        except Exception as e:  # noqa: BLE001 - connection reset and the like
            if not self._cancelled.is_set():
                exc = EtcdUnavailable(f"etcd watch stream failed: {e}")
        with self._lock:
            if self._reason is not None:  # heartbeat failure: the real cause
                exc = self._reason
        self._shutdown()
        if exc is not None and not self._cancelled.is_set():
            self.error = exc
            log.warning("etcd watch of %s ended: %s", self._key, exc)
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
                raise _StreamError(
                    EtcdCompacted(
                        f"etcd compacted revisions up to {crev}, the watch asked for "
                        f"{self.revision + 1}: take a new snapshot",
                        int(crev),
                    )
                )
            raise _StreamError(
                EtcdUnavailable(
                    f"etcd cancelled the watch ({res.get('cancel_reason') or 'no reason'})"
                )
            )
        for ev in res.get("events", ()):
            if self._cancelled.is_set():
                return
            kind, data = self._decode(ev)
            try:
                self._callback(kind, data)
            except Exception as e:  # noqa: BLE001 - the caller's bug: make it seen
                log.exception("etcd watch: the callback raised on %s %s", kind, data)
                raise _CallbackError(e) from None
            self.revision = int(ev["kv"]["mod_revision"])


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


#: unanswered keepalive probes after which a watch stream's connection is dead
KEEPALIVE_PROBES = 3


def _keepalive(sock, every: float):
    """TCP keepalives on ``sock``: a probe after ``every`` seconds without
    traffic, then every ``every`` seconds; KEEPALIVE_PROBES unanswered end
    the connection (its reads fail). Where the socket has no TCP options
    (not TCP), nothing."""
    s = max(1, round(every))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
    except OSError:
        pass


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


# ----------------------------------------------------------------- gateway
class EtcdGateway:
    """etcd at ``endpoints`` (URLs like ``http://127.0.0.1:2379``; several
    members of one cluster may be given: when one does not answer the next
    is tried).

    ``timeout`` bounds every request (seconds), over all the members it
    tries. ``ca_cert``, ``cert_cert``,
    ``cert_key``: TLS files for https endpoints. ``user``, ``password``: the
    etcd user the node is (etcd's access control: its role says which keys
    it may read and write); the token etcd gives for them is asked of each
    member (a simple token is the member's own) and asked again when a
    member no longer takes it (it expired, the member restarted, the auth
    store changed). One gateway may be shared by threads (a call borrows an
    HTTP client from a small pool)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float = DEFAULT_TIMEOUT,
        ca_cert: Optional[str] = None,
        cert_cert: Optional[str] = None,
        cert_key: Optional[str] = None,
        user: Optional[str] = None,
        password: Optional[str] = None,
    ):
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise ConfigError("etcd endpoints: give at least one (http://host:port)")
        self.urls = [str(e) for e in endpoints]
        self._targets = [parse_endpoint(e) for e in self.urls]
        self.timeout = float(timeout)
        self._tls = {"ca_cert": ca_cert, "cert_cert": cert_cert, "cert_key": cert_key}
        self._user = (user, password or "") if user else None
        self._tokens: List[Optional[str]] = [None] * len(self._targets)  # each member's
        # index of the endpoint tried first: the one that answered last, or
        # the one after one that did not answer in time
        self._current = 0
        self._idle: List[list] = [[] for _ in self._targets]  # clients not in use
        self._api_paths: List[Optional[str]] = [None] * len(self._targets)
        self._sessions: List[requests.Session] = []
        self._watches = weakref.WeakSet()
        self._slock = threading.Lock()
        self._local = threading.local()  # a thread's bound (bounded())
        self._closed = False
        #: the last time etcd answered (time.time()), None before it did
        self.last_answer: Optional[float] = None
        #: (message, time.time()) of the last request no endpoint answered;
        #: None once one answers again
        self.last_error: Optional[Tuple[str, float]] = None

    def __repr__(self):
        return f"EtcdGateway({self.urls!r})"

    # ------------------------------------------------------------ requests
    def _new_client(self, i: int):
        """An etcd3gw client of endpoint ``i`` with a session of its own."""
        protocol, host, port = self._targets[i]
        c = etcd3gw.client(
            host=host,
            port=port,
            protocol=protocol,
            timeout=self.timeout,
            api_path=self._api_paths[i],
            **self._tls,
        )
        c.session.trust_env = False  # etcd is never reached through a proxy
        return c

    def _authorize(self, c, i: int):
        """Client ``c`` of endpoint ``i`` sends the node's token (asked of
        the member first if it has none): with no user, nothing. An answer
        refusing the user and password is EtcdRefused; no answer raises as
        any request's does."""
        if self._user is None:
            return
        token = self._tokens[i]
        if token is None:
            name, password = self._user
            c.session.headers.pop("Authorization", None)
            try:
                r = c.post(
                    c.get_url("auth/authenticate"), json={"name": name, "password": password}
                )
            except etcd_exc.Etcd3Exception as e:
                if isinstance(
                    e, (etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError)
                ) or _members_own(e):
                    raise  # as any request's: the next member may answer
                raise EtcdRefused(
                    f"etcd {self.urls[i]} refuses the node's user {name!r}: {_refusal(e)}"
                ) from None
            token = r.get("token") if isinstance(r, dict) else None
            if not token:
                raise EtcdRefused(f"etcd {self.urls[i]} gave user {name!r} no token: {r!r:.200}")
            self._tokens[i] = token
        c.session.headers["Authorization"] = token

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

    def post(self, path: str, payload: dict, endpoint: Optional[int] = None) -> dict:
        """One v3 request (``kv/range``, ``lease/keepalive``, ...), to the
        endpoint that answered last, then the others (see "Several members"
        above; ``endpoint``: to that one only). Within :meth:`bounded` the
        request waits at most that long in all. A transaction goes through
        :meth:`txn`."""
        return self._send(path, payload, endpoint=endpoint)[0]

    def txn(self, compare: List[dict], success: List[dict], revision: Optional[int]) -> bool:
        """Commit a transaction whose reads were made at ``revision``: True if
        its compares held and ``success`` was applied. Sent again to the next
        member when one did not answer, with a read-back of its writes in its
        failure branch (see "Several members" above)."""
        first = {"compare": compare, "success": success, "failure": []}
        again = dict(first, failure=[_read_back(op) for op in success])
        r, resent = self._send("kv/txn", first, again=again)
        if r.get("succeeded", False):
            return True
        return resent and _applied_before(success, r.get("responses") or [], revision)

    def _send(
        self,
        path: str,
        payload: dict,
        again: Optional[dict] = None,
        endpoint: Optional[int] = None,
    ) -> Tuple[dict, bool]:
        """``path`` to the members in turn until one answers: (its answer,
        whether it is the answer to ``again``, what is sent after a try that
        failed). A member that does not answer in time, or whose answer is
        cut off or unreadable, is not the first one tried next time."""
        if self._closed:
            raise DataplaneError("etcd store is closed")
        n = len(self._targets)
        order = [endpoint] if endpoint is not None else [(self._current + j) % n for j in range(n)]
        failed: List[Tuple[str, str, bool]] = []  # (url, why, why is a sentence)
        refused: List[str] = []  # the refusals of members that answered with their own error
        deadline = time.monotonic() + self.request_timeout
        for j, i in enumerate(order):
            began = time.monotonic()
            left = deadline - began
            if left <= 0:  # pragma: no cover - the shares below leave time to the last
                failed.append((self.urls[i], "not tried: no time left for it", False))
                continue
            share = left / (len(order) - j)  # what is left is for every member left
            body = again if (failed and again is not None) else payload
            with self._borrow(i) as c:
                c.timeout = share
                try:
                    url = c.get_url(path)  # may ask the member its API version first
                    self._authorize(c, i)
                    c.timeout = max(share - (time.monotonic() - began), 0.001)
                    try:
                        r = c.post(url, json=body)
                    except etcd_exc.Etcd3Exception as e:
                        if self._user is None or not _token_gone(_refusal(e)):
                            raise
                        # the member no longer takes the token: a new one, once
                        self._tokens[i] = None
                        self._authorize(c, i)
                        r = c.post(url, json=body)
                except etcd_exc.ConnectionFailedError as e:
                    failed.append((self.urls[i], plain_reason(e), False))
                    continue
                except etcd_exc.ConnectionTimeoutError as e:
                    if e.args:  # etcd answered, HTTP 408 or 504: (text, reason)
                        why = (
                            f"it cancelled the request ({_gateway_error(e)}); it may be "
                            "stopping or restarting"
                        )
                    else:
                        why = (
                            f"no answer within {round(share, 2):g} s "
                            "(it is hung, overloaded or cut off)"
                        )
                    failed.append((self.urls[i], why, True))
                    self._pass_over(i)
                    continue
                except etcd_exc.Etcd3Exception as e:
                    self.last_answer = time.time()
                    refusal = f"etcd {self.urls[i]} {REFUSES_REQUEST} ({path}: {_refusal(e)})"
                    if not _members_own(e):
                        # answered, with an error: the next member would say the same
                        raise EtcdRefused(refusal) from None
                    # that member's own trouble (too far behind its peers,
                    # an internal error): the next may answer
                    failed.append((self.urls[i], f"it answered {_gateway_error(e)}", True))
                    refused.append(refusal)
                    self._pass_over(i)
                    continue
                except (requests.exceptions.RequestException, ValueError) as e:
                    # the answer cut off (ChunkedEncodingError), undecodable
                    # (ContentDecodingError) or not JSON (ValueError)
                    failed.append(
                        (
                            self.urls[i],
                            f"its answer was cut off or unreadable ({plain_reason(e)})",
                            False,
                        )
                    )
                    self._pass_over(i)
                    continue
                finally:
                    c.timeout = self.timeout
                self._api_paths[i] = c.api_path
            if endpoint is None:
                self._current = i
            self.last_answer = time.time()
            self.last_error = None
            return r, body is again
        if len(refused) == len(order):  # every one answered, each with such an error
            raise EtcdRefused(refused[-1])
        if all(why in TLS_WORDS for _, why, _ in failed):
            # each member's TLS and this node's disagree: said as such
            raise self._tls_down(failed)
        if len(failed) == 1:
            url, why, sentence = failed[0]
            raise self._down(
                f"etcd {url} does not answer: {why}"
                if sentence
                else f"etcd {url} does not answer ({why})"
            )
        raise self._down(
            "etcd does not answer: " + "; ".join(f"{url}: {why}" for url, why, _ in failed)
        )

    def _tls_down(self, failed):
        """EtcdUnavailable for members whose TLS and this node's disagree
        (``failed``: (url, why, _) each), marked ``tls``."""
        e = self._down(
            "etcd: no TLS connection with this node's settings: "
            + "; ".join(f"{url}: {why}" for url, why, _ in failed)
        )
        e.tls = True
        return e

    def _pass_over(self, i: int):
        """The next request starts after endpoint ``i`` (it did not answer in
        time, or not readably), unless another request moved on already."""
        if self._current == i:
            self._current = (i + 1) % len(self._targets)

    def _down(self, message: str) -> "EtcdUnavailable":
        """EtcdUnavailable(message), remembered as the last outcome."""
        self.last_error = (message, time.time())
        return EtcdUnavailable(message)

    @property
    def request_timeout(self) -> float:
        """How long a request of this thread may wait: the timeout, or less
        within :meth:`bounded`."""
        limit = getattr(self._local, "limit", None)
        return self.timeout if limit is None else min(self.timeout, limit)

    @contextmanager
    def bounded(self, seconds: float):
        """Requests made by this thread inside the block wait at most
        ``seconds`` for etcd (a view that has something else to show when
        etcd is hung, instead of waiting the full timeout)."""
        before = getattr(self._local, "limit", None)
        self._local.limit = seconds if before is None else min(before, seconds)
        try:
            yield
        finally:
            self._local.limit = before

    # -------------------------------------------------------------- leases
    def lease_grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds: its ID."""
        return int(self.post("lease/grant", {"TTL": ttl})["ID"])

    def lease_keepalive(self, lease: int) -> bool:
        """Renew ``lease`` for its TTL; False if it is gone (expired or revoked)."""
        r = self.post("lease/keepalive", {"ID": str(lease)})
        return int((r.get("result") or {}).get("TTL", 0)) > 0

    def lease_revoke(self, lease: int):
        """End ``lease`` now, and the keys written under it."""
        try:
            self.post("lease/revoke", {"ID": str(lease)})
        except DataplaneError as e:
            if "requested lease not found" not in str(e):
                raise

    def ping(self, key: str, endpoint: Optional[int] = None):
        """The cheapest request that needs an answer (a count of ``key``):
        EtcdUnavailable when none comes (``endpoint``: from that member)."""
        self.post(
            "kv/range",
            {"key": b64(key.encode()), "count_only": True, "limit": 1},
            endpoint=endpoint,
        )

    # -------------------------------------------------------- transactions
    def atomic(self, body: Callable[[Txn], Any]):
        """Run ``body(txn)`` and commit; again from fresh reads while another
        writer changed what it read. What ``body`` returns."""
        for attempt in range(MAX_ATTEMPTS):
            tx = Txn(self)
            try:
                result = body(tx)
            except _Retry:
                continue
            if tx.commit():
                return result
            if attempt >= 2:
                time.sleep(random.uniform(0, min(0.05, 0.0005 * (1 << min(attempt, 10)))))
        raise Busy(
            f"etcd: the change was overtaken by other writers {MAX_ATTEMPTS} times "
            "in a row; try again"
        )

    def get(self, key: str):
        """The JSON value of ``key`` (None if absent)."""
        return Txn(self).get(key)

    def items(self, prefix: str, loose: bool = False):
        """[(key, JSON value)] under ``prefix``, in key order; ``loose``: a
        value that is not JSON comes as its text (else ValueError)."""
        return Txn(self).items(prefix, guard=False, loose=loose)

    # ------------------------------------------------------------- watches
    def watch(
        self,
        prefix: str,
        start_revision: Optional[int],
        callback: Callable[[str, Any], None],
        decode: Callable[[dict], Tuple[str, Any]],
        heartbeat: float = DEFAULT_HEARTBEAT,
    ) -> Watch:
        """Deliver every change of a key under ``prefix`` from revision
        ``start_revision`` on (None: from now) to ``callback(*decode(event))``
        in a thread, in order (``event`` is the gateway's, with ``prev_kv``);
        when the watch cannot go on, ``callback('error', exception)`` once:
        EtcdUnavailable (etcd stopped, unreachable or silent for
        ``heartbeat`` seconds plus the request timeout), EtcdCompacted, or
        what the callback raised.

        The watch is established when this returns (EtcdUnavailable if etcd
        does not answer). ``heartbeat`` 0 turns the liveness check off."""
        pb = prefix.encode()
        create = {"key": b64(pb), "range_end": b64(prefix_end(pb)), "prev_kv": True}
        if start_revision is not None:
            if (
                isinstance(start_revision, bool)
                or not isinstance(start_revision, int)
                or start_revision < 1
            ):
                raise ConfigError(
                    f"start_revision: {start_revision!r} is not a revision (an integer >= 1)"
                )
            create["start_revision"] = start_revision
        n = len(self._targets)
        last = None
        # (the order fixed first: a member passed over moves _current)
        for i in [(self._current + j) % n for j in range(n)]:
            try:
                resp, lines, session = self._open_watch(i, create, heartbeat)
            except _NextEndpoint as e:
                last = f"{self.urls[i]} ({e})"
                self._pass_over(i)
                continue
            w = Watch(
                self,
                prefix,
                resp,
                lines,
                callback,
                decode,
                start_revision,
                heartbeat,
                session,
                endpoint=i,
            )
            self._watches.add(w)
            w._start()
            return w
        raise self._down(f"etcd: cannot watch, no endpoint answers: {last}")

    def _open_watch(self, i, create, heartbeat=DEFAULT_HEARTBEAT):
        """Open the watch stream on endpoint ``i`` and read etcd's confirmation
        (within the timeout); then the stream may stay silent for ever - its
        connection probed by TCP keepalives every ``heartbeat`` seconds, so
        that one whose peer went away without a word (state lost in a NAT or
        a load balancer, a host gone) ends the watch, as the heartbeat's
        requests, which may reach another member behind one address, cannot
        tell."""
        c = self._new_client(i)  # its own session: the stream keeps a connection
        try:
            self._authorize(c, i)
            resp = c.session.post(
                c.get_url("watch"),
                json={"create_request": create},
                stream=True,
                timeout=(self.timeout, self.timeout),
            )
        except (requests.exceptions.RequestException, etcd_exc.Etcd3Exception) as e:
            c.session.close()
            raise _NextEndpoint(plain_reason(e)) from None
        except DataplaneError:  # the node's user refused
            c.session.close()
            raise
        try:
            if resp.status_code != 200:
                text = resp.text.strip()
                if resp.status_code in (503, 429, 500):  # that member's: the next may answer
                    raise _NextEndpoint(f"HTTP {resp.status_code}: {_first_line(text)}")
                raise DataplaneError(
                    f"etcd {self.urls[i]}: watch refused (HTTP {resp.status_code}): {text}"
                )
            lines = _json_lines(resp)
            try:
                first = json.loads(next(lines))
            except (StopIteration, ValueError, requests.exceptions.RequestException) as e:
                raise _NextEndpoint(f"no watch confirmation: {plain_reason(e)}") from None
            if "error" in first or not first.get("result", {}).get("created"):
                raise DataplaneError(f"etcd {self.urls[i]}: watch not created: {first}")
            if first["result"].get("canceled"):
                # created and cancelled at once: refused (its user's token
                # no longer taken, or no permission on the prefix)
                why = str(first["result"].get("cancel_reason") or "cancelled")
                if self._user is not None and _token_gone(why):
                    self._tokens[i] = None  # a new one at the next try
                    raise _NextEndpoint(f"watch refused: {why}")
                raise EtcdRefused(f"etcd {self.urls[i]} {REFUSES_REQUEST} (watch: {why})")
            sock = _stream_socket(resp)
            if sock is not None:
                sock.settimeout(None)  # events may be minutes apart: the heartbeat
                if heartbeat:
                    _keepalive(sock, heartbeat)
            else:  # pragma: no cover - urllib3 internals changed  # watches liveness
                log.warning(
                    "etcd watch: cannot reach the stream's socket; a watch "
                    "without events for %g s will end with an error",
                    self.timeout,
                )
            return resp, lines, c.session
        except BaseException:
            resp.close()
            c.session.close()
            raise

    # --------------------------------------------------------------- close
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
