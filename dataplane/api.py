"""Control API transport: HTTP+JSON on a unix socket (mode 0600).

The server maps (method, path) to handler functions that take the decoded
JSON body and return a JSON-able value; errors from bad input come back as
400 with {"error": message}, unknown objects as 404.
"""

import http.client
import http.server
import json
import os
import socket
import socketserver
import threading
from typing import Callable, Dict, Tuple

from .checks import load_json_object
from .errors import AlreadyExists, Busy, ConfigError, DataplaneError, NotFound

Handler = Callable[[dict, dict], object]


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class APIServer:
    def __init__(self, path: str, routes: Dict[Tuple[str, str], Handler], log=None):
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
            def log_message(self, fmt, *args):  # access log goes to the service log
                if api.log:
                    api.log.debug("api %s", fmt % args)

            def _dispatch(self, method):
                path, _, query = self.path.partition("?")
                params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
                fn = api.routes.get((method, path))
                if fn is None:
                    return self._reply(404, {"error": f"no such endpoint: {method} {path}"})
                try:
                    n = int(self.headers.get("Content-Length") or 0)
                    raw = self.rfile.read(n) if n else b""
                    body = load_json_object(raw or b"{}", "request body")
                except ConfigError as e:
                    return self._reply(400, {"error": str(e)})
                try:
                    return self._reply(200, fn(body, params))
                except NotFound as e:
                    return self._reply(404, {"error": str(e)})
                except (AlreadyExists, Busy) as e:
                    return self._reply(409, {"error": str(e)})
                except (ConfigError, ValueError) as e:
                    return self._reply(400, {"error": str(e)})
                except DataplaneError as e:
                    return self._reply(500, {"error": str(e)})
                except Exception as e:  # noqa: BLE001 - report, keep serving
                    if api.log:
                        api.log.exception("api %s %s failed", method, path)
                    return self._reply(500, {"error": f"internal error: {e}"})

            def _reply(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def address_string(self):
                return "unix"

            def do_GET(self):
                self._dispatch("GET")

            def do_POST(self):
                self._dispatch("POST")

            def do_DELETE(self):
                self._dispatch("DELETE")

        old = os.umask(0o177)
        try:
            self.server = _UnixHTTPServer(path, RequestHandler)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="dataplane-api", daemon=True
        )

    def start(self):
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        try:
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
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def call(path: str, method: str, endpoint: str, body=None, timeout=60):
    """One API call; returns the decoded JSON or raises APIError."""
    conn = _UnixConnection(path, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        conn.request(method, endpoint, body=data, headers=headers)
        resp = conn.getresponse()
        obj = json.loads(resp.read() or b"null")
        if resp.status != 200:
            raise APIError(resp.status, (obj or {}).get("error", f"HTTP {resp.status}"))
        return obj
    finally:
        conn.close()
