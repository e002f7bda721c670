"""Control API transport: HTTP+JSON on a unix socket (mode 0600).

The server maps (method, path) to handlers that take the decoded JSON body
and the query parameters and return a JSON-able value. A handler is a plain
function ``fn(body, query)``, or a :class:`Route` that also names the fields
the body and the query may have, with a check for each: the request is
refused, naming the field, before the handler runs.

Every request is answered with JSON: the handler's value with 200, or
``{"error": message}`` with 400 (bad input), 404 (unknown object or path),
405 (a method the path does not take), 408 (the request was not read in
:data:`REQUEST_TIMEOUT_S`), 409 (exists, busy), 411 (a POST without
Content-Length), 413 (a body over :data:`MAX_BODY_BYTES`), 431 (a request head over
:data:`MAX_HEAD_BYTES`), 503 (more than :data:`MAX_CONNECTIONS` at once; or,
with ``"unavailable": true``, the state store does not answer, or refuses the
node: ``"refused": true``), 507 with ``"exhausted": true`` (the node is out of
something the request needs: a network's addresses, the core's port slots,
memory - another node may have it) or 500. One
request per connection. A refused request changes nothing.
"""

import dataclasses
import http.client
import http.server
import io
import json
import os
import re
import socket
import socketserver
import struct
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from .checks import UNIX_PATH_MAX, brief, check_keys, fail, load_json_object
from .errors import (
    AlreadyExists,
    Busy,
    ConfigError,
    DataplaneError,
    NotFound,
    Refused,
    ResourceError,
    Unavailable,
)

Handler = Callable[[dict, dict], object]

#: the largest request body read, bytes (a pod spec is well under 4 KiB)
MAX_BODY_BYTES = 256 * 1024
#: the largest request line plus headers, bytes
MAX_HEAD_BYTES = 16 * 1024
#: the time a client has to send its whole request, seconds
REQUEST_TIMEOUT_S = 10.0
#: the time a client has to take the answer, seconds
REPLY_TIMEOUT_S = 10.0
#: connections served at once; more are answered 503 at once
MAX_CONNECTIONS = 16
#: connections waiting to be accepted (the listen backlog)
LISTEN_BACKLOG = 128
#: how long the CLI retries a call the service answers busy (503)
BUSY_RETRY_S = 30.0
#: query parameters one request may give
MAX_QUERY_FIELDS = 8
#: how often a server's loop looks whether it is to stop, seconds (a stop
#: waits for it: socketserver's default 0.5 s was half of a service's stop)
STOP_POLL_S = 0.05

_CONTENT_LENGTH_RE = re.compile(r"[0-9]+")


@dataclasses.dataclass(frozen=True)
class Route:
    """A handler with the fields its request may have. ``body`` and
    ``query`` map a field's name to its check, ``check(value, path)``
    returning the (normalised) value or raising ConfigError; an unknown
    field is refused with the closest known one; a null one is not given.
    ``required``: fields that must be given, in the body or the query."""

    fn: Handler
    body: Mapping[str, Callable[[Any, str], Any]] = dataclasses.field(default_factory=dict)
    query: Mapping[str, Callable[[Any, str], Any]] = dataclasses.field(default_factory=dict)
    required: Tuple[str, ...] = ()

    def __call__(self, body: dict, query: dict):
        check_keys(query, "", self.query, what="query parameter", name="query")
        if body and not self.body:
            raise fail(
                "body",
                "this request takes no body"
                + (f" (give {', '.join(self.query)} as query parameters)" if self.query else ""),
            )
        check_keys(body, "", self.body, what="field", name="request body")
        query = {k: self.query[k](v, k) for k, v in query.items()}
        body = {k: self.body[k](v, k) for k, v in body.items() if v is not None}
        for k in query.keys() & body.keys():
            if query[k] != body[k]:  # which one was meant?
                raise fail(k, f"{query[k]!r} in the query, {body[k]!r} in the body")
        for k in self.required:
            if body.get(k) is None and query.get(k) is None:
                raise fail(k, "is required")
        return self.fn(body, query)


class _Refused(Exception):
    """A request the server answers with ``status`` before any handler runs."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _DeadlineReader(io.RawIOBase):
    """The socket's bytes until a deadline (then 408) and up to a total
    (then 413): what a request may take in time and memory."""

    def __init__(self, sock: socket.socket, deadline: float, limit: int):
        self.sock = sock
        self.deadline = deadline
        self.left = limit

    def readable(self):
        return True

    def readinto(self, buf):
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _Refused(408, f"request not received within {REQUEST_TIMEOUT_S:g} s")
        if self.left <= 0:
            raise _Refused(413, f"request larger than {MAX_HEAD_BYTES + MAX_BODY_BYTES} bytes")
        self.sock.settimeout(remaining)
        view = memoryview(buf)[: self.left]
        try:
            n = self.sock.recv_into(view)
        except (TimeoutError, socket.timeout):  # one before Python 3.10
            raise _Refused(408, f"request not received within {REQUEST_TIMEOUT_S:g} s") from None
        self.left -= n
        return n


class BoundedThreads(socketserver.ThreadingMixIn):
    """A thread per connection, at most ``slots`` (a BoundedSemaphore the
    server sets) at once; a connection past them goes to :meth:`busy`."""

    daemon_threads = True
    slots: threading.BoundedSemaphore

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def busy(self, request):
        """A connection past the slots: closed at once."""
        self.shutdown_request(request)


class _UnixHTTPServer(BoundedThreads, socketserver.UnixStreamServer):
    block_on_close = False
    # connections the kernel holds until they are accepted: a burst of
    # clients (a node starting many pods) is answered, if only with a 503,
    # instead of failing to connect (EAGAIN past socketserver's default of 5)
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, path, handler, max_connections: int):
        self.slots = threading.BoundedSemaphore(max_connections)
        # connections being answered 503, each in a short thread of its own
        self.refusing = threading.BoundedSemaphore(max_connections)
        self.max_connections = max_connections
        super().__init__(path, handler)

    def busy(self, request):
        """Past ``max_connections``: answered 503 and closed, beside the
        loop that accepts (a client that is slow to read its refusal holds
        no one else up), or closed at once past as many refusals under way."""
        if not self.refusing.acquire(blocking=False):
            self.shutdown_request(request)
            return

        def run():
            try:
                _refuse_busy(request, self.max_connections)
            finally:
                self.shutdown_request(request)
                self.refusing.release()

        try:
            threading.Thread(target=run, name="api-busy", daemon=True).start()
        except BaseException:
            self.shutdown_request(request)
            self.refusing.release()
            raise


def _refuse_busy(sock: socket.socket, limit: int):
    data = json.dumps({"error": f"busy: {limit} requests in progress, try again"}).encode()
    head = (
        "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    try:
        sock.settimeout(1.0)
        sock.sendall(head.encode() + data)
        # read what the client sent before closing: a socket closed with
        # unread data resets the connection, and the client would see that
        # instead of the answer
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.2)
        for _ in range(8):
            if not sock.recv(65536):
                break
    except OSError:
        pass


def _plain(text: str, limit: int) -> str:
    """Request text as a message shows it: as it is if short and printable."""
    return text if len(text) <= limit and text.isprintable() else brief(text, limit)


def _parse_query(query: str) -> Dict[str, str]:
    """The query string as {name: value}, percent-decoded strictly (UTF-8;
    each name once)."""
    if not query:
        return {}
    try:
        pairs = urllib.parse.parse_qsl(
            query,
            keep_blank_values=True,
            strict_parsing=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_QUERY_FIELDS,
        )
    except UnicodeDecodeError:
        raise _Refused(400, "query: not UTF-8 after percent-decoding") from None
    except ValueError as e:
        raise _Refused(400, f"query: {brief(query)} is not a query string ({e})") from None
    out = {}
    for k, v in pairs:
        if k in out:
            raise _Refused(400, f"query: parameter {brief(k)} is given twice")
        out[k] = v
    return out


def _peer(conn) -> dict:
    """The process at the other end of unix socket ``conn``: its pid, uid
    and command name (SO_PEERCRED, /proc); {} if the kernel does not say."""
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return {}
    pid, uid, _gid = struct.unpack("3i", raw)
    who = {"caller_pid": pid, "caller_uid": uid}
    try:
        with open(f"/proc/{pid}/comm") as f:
            who["caller"] = f.read().strip()
    except OSError:
        pass
    return who


class APIServer:
    """The control API on unix socket ``path`` (mode 0600, directory 0700
    when made here), serving ``routes``: {(method, path): handler}."""

    def __init__(
        self,
        path: str,
        routes: Dict[Tuple[str, str], Union[Handler, Route]],
        log=None,
        max_connections: int = MAX_CONNECTIONS,
    ):
        self.path = path
        self.routes = routes
        self.log = log
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        if os.path.exists(path):
            # a socket left by a crashed service: refuse if someone still answers
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                raise DataplaneError(f"api_socket: {path} is in use by a running service")
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)
            finally:
                s.close()
        api = self

        class RequestHandler(http.server.BaseHTTPRequestHandler):
            def setup(self):
                super().setup()
                deadline = time.monotonic() + REQUEST_TIMEOUT_S
                raw = _DeadlineReader(self.connection, deadline, MAX_HEAD_BYTES + MAX_BODY_BYTES)
                self.rfile = io.BufferedReader(raw)
                # what an answer before (or without) a request line needs
                self.requestline, self.command = "", ""
                self.request_version = "HTTP/1.0"

            def handle(self):
                # one request per connection (HTTP/1.0)
                self.close_connection = True
                self._status = None
                try:
                    self.handle_one_request()
                except _Refused as e:
                    self._reply(e.status, {"error": str(e)})
                except (ConnectionError, TimeoutError, socket.timeout):  # gone, or not reading
                    pass
                if api.log and self.command not in ("", "GET", "HEAD") and self._status:
                    # who changed what: a change request in the log with its
                    # caller (the socket's peer credentials), answered or not
                    api.log.info(
                        "api request",
                        extra={
                            "fields": {
                                "method": _plain(self.command, 16),
                                "path": _plain(getattr(self, "path", "").partition("?")[0], 200),
                                "status": self._status,
                                **_peer(self.connection),
                            }
                        },
                    )

            def parse_request(self):
                # a head over MAX_HEAD_BYTES is refused (the standard limits
                # are 64 KiB a line and 100 lines)
                ok = super().parse_request()
                if ok:
                    size = len(self.raw_requestline)
                    size += sum(len(k) + len(v) + 4 for k, v in self.headers.items())
                    if size > MAX_HEAD_BYTES:
                        self.send_error(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
                        return False
                return ok

            def send_error(self, code, message=None, explain=None):
                # the standard's HTML error pages, as JSON
                self.close_connection = True
                text = message or explain or http.HTTPStatus(code).phrase
                self._reply(code, {"error": text})

            def log_message(self, fmt, *args):  # access log goes to the service log
                if api.log:
                    api.log.debug("api %s", fmt % args)

            def __getattr__(self, name):
                # every method: an unknown one is answered 405 (or 404)
                if name.startswith("do_"):
                    return lambda: self._dispatch(name[3:])
                raise AttributeError(name)

            def _body(self) -> dict:
                if self.headers.get("Transfer-Encoding") is not None:
                    raise _Refused(411, "Transfer-Encoding is not supported: give Content-Length")
                lengths = self.headers.get_all("Content-Length") or []
                if not lengths and self.command == "POST":
                    # a body sent without one would go unread, and the
                    # request be taken as one without (a dry run reloading)
                    raise _Refused(411, "Content-Length: required for POST (0 for no body)")
                if len(lengths) > 1:
                    raise _Refused(400, "Content-Length: given more than once")
                text = lengths[0].strip() if lengths else "0"
                if not _CONTENT_LENGTH_RE.fullmatch(text):
                    raise _Refused(400, f"Content-Length: {brief(text)} is not a byte count")
                n = int(text) if len(text) <= 19 else MAX_BODY_BYTES + 1
                if n > MAX_BODY_BYTES:
                    raise _Refused(
                        413, f"body of {brief(text, 24)} bytes: the limit is {MAX_BODY_BYTES}"
                    )
                raw = self.rfile.read(n) if n else b""
                if len(raw) < n:
                    raise _Refused(400, f"body ended after {len(raw)} of {n} bytes")
                return load_json_object(raw or b"{}", "request body")

            def _dispatch(self, method):
                path, _, query = self.path.partition("?")
                fn = api.routes.get((method, path))
                if fn is None:
                    allowed = sorted(m for m, p in api.routes if p == path)
                    said = f"{_plain(method, 16)} {_plain(path, 200)}"
                    if not allowed:
                        raise _Refused(404, f"no such endpoint: {said}")
                    self._allow = ", ".join(allowed)
                    raise _Refused(405, f"{said}: method not allowed ({self._allow})")
                params = _parse_query(query)
                try:
                    body = self._body()
                except ConfigError as e:
                    raise _Refused(400, str(e)) from None
                try:
                    result = fn(body, params)
                except NotFound as e:
                    return self._reply(404, {"error": str(e)})
                except AlreadyExists as e:
                    return self._reply(409, {"error": str(e), "conflict": "exists"})
                except Busy as e:
                    return self._reply(409, {"error": str(e), "conflict": "in_use"})
                except (ConfigError, ValueError) as e:
                    return self._reply(400, {"error": str(e)})
                except Unavailable as e:  # the store: the request may succeed later
                    return self._reply(503, {"error": str(e), "unavailable": True})
                except Refused as e:  # the store refuses the node: once access is given
                    return self._reply(503, {"error": str(e), "unavailable": True, "refused": True})
                except ResourceError as e:  # this node is full: another may not be
                    return self._reply(507, {"error": str(e), "exhausted": True})
                except DataplaneError as e:
                    return self._reply(500, {"error": str(e)})
                except Exception as e:  # noqa: BLE001 - report, keep serving
                    if api.log:
                        api.log.exception("api %s %s failed", method, path)
                    return self._reply(500, {"error": f"internal error: {e}"})
                # done: a client gone before its answer (interrupted) is not
                # the handler's failure (handle() lets the write's error go)
                return self._reply(200, result)

            def _reply(self, code, obj):
                self._status = code
                data = json.dumps(obj).encode()
                self.connection.settimeout(REPLY_TIMEOUT_S)
                self.request_version = "HTTP/1.0"  # headers even for an HTTP/0.9 line
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if code == 405:
                    self.send_header("Allow", getattr(self, "_allow", ""))
                self.end_headers()
                self.wfile.write(data)

            def address_string(self):
                return "unix"

        # bound and listening under a name of its own, then renamed into
        # place: a client that finds the path finds a listening socket (not
        # one bound but not yet listening, which refuses it). The name is
        # short: a path near the 107 bytes of a unix socket's may not grow;
        # in a directory too deep even for it, bound in place.
        tmp = self._tmp_name()
        old = os.umask(0o177)
        try:
            self.server = _UnixHTTPServer(tmp, RequestHandler, max_connections)
        finally:
            os.umask(old)
        self._put_in_place(tmp)
        self.thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": STOP_POLL_S},
            name="dataplane-api",
            daemon=True,
        )

    def _tmp_name(self) -> str:
        """The name a socket is bound and listens under before it is renamed
        to the path (the path itself where that name would be too long),
        free."""
        tmp = os.path.join(os.path.dirname(self.path), f".api-{os.getpid()}.new")
        if len(tmp.encode()) > UNIX_PATH_MAX:
            tmp = self.path
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        return tmp

    def _put_in_place(self, tmp: str):
        """The socket bound and listening at ``tmp`` made the service's at
        its path (mode 0600), and known by its inode."""
        os.chmod(tmp, 0o600)
        if tmp != self.path:
            os.rename(tmp, self.path)
        self._ino = os.stat(self.path).st_ino

    def keep_socket(self) -> Optional[str]:
        """The socket as it should be at its path: one removed while the
        service runs (a tidy-up of its directory) is bound and listening
        there again, under the descriptor the server polls (the old one's
        queued connections go with it): what was done, for the log; None if
        nothing was needed. DataplaneError if another file took the path."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if st.st_ino == self._ino:
                return None
            raise DataplaneError(
                f"api_socket: {self.path} is no longer this service's socket (replaced while "
                "it ran): the service is not reachable there; remove what is there and it "
                "makes its socket again"
            )
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        tmp = self._tmp_name()
        new = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)
            try:
                new.bind(tmp)
            finally:
                os.umask(old)
            new.listen(self.server.request_queue_size)
            # the server's loop polls its descriptor's number: that number
            # is the new socket from here on
            os.dup2(new.fileno(), self.server.socket.fileno())
        finally:
            new.close()
        self._put_in_place(tmp)
        return f"api_socket: {self.path} was removed while the service ran; listening there again"

    def start(self):
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        try:
            if os.stat(self.path).st_ino == self._ino:  # ours, not what replaced it
                os.unlink(self.path)
        except FileNotFoundError:
            pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class APIError(Exception):
    """A refused call: ``status`` its HTTP status; ``unavailable`` when the
    service could not reach what the call needs (the state store), which
    asking again at once does not change."""

    def __init__(self, status, message, unavailable=False):
        super().__init__(message)
        self.status = status
        self.unavailable = unavailable


def call(path: str, method: str, endpoint: str, body=None, timeout=60, query=None, busy_wait=0.0):
    """One API call; returns the decoded JSON or raises APIError. ``query``:
    parameters added to ``endpoint``, percent-encoded. ``busy_wait``: for
    that many seconds a busy service (503, or a listen queue full) is asked
    again, once a second, instead of raising (not one that answers 503
    because its store does not: that says so at once)."""
    until = time.monotonic() + busy_wait
    while True:
        try:
            return _call_once(path, method, endpoint, body, timeout, query)
        except APIError as e:
            if e.status != 503 or e.unavailable or time.monotonic() >= until:
                raise
        except BlockingIOError:
            if time.monotonic() >= until:
                raise
        time.sleep(1.0)


def _call_once(path, method, endpoint, body, timeout, query):
    if query:
        endpoint += "?" + urllib.parse.urlencode(query)
    conn = _UnixConnection(path, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        try:
            conn.request(method, endpoint, body=data, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered before it was read (a busy server's 503): read that
        try:
            resp = conn.getresponse()
            obj = json.loads(resp.read() or b"null")
        except http.client.RemoteDisconnected:
            raise  # an OSError: closed without an answer
        except (http.client.HTTPException, ValueError) as e:
            # another program's socket (not HTTP, or not our JSON)
            raise APIError(
                0, f"{path} did not answer as the dataplane API ({type(e).__name__})"
            ) from None
        if resp.status != 200:
            err = obj.get("error") if isinstance(obj, dict) else None
            unavailable = isinstance(obj, dict) and obj.get("unavailable") is True
            raise APIError(resp.status, err or f"HTTP {resp.status}", unavailable)
        return obj
    finally:
        conn.close()
