"""The control API against hostile local clients: the running node service on
its real unix socket, fed malformed HTTP with raw socket writes. Every
request is answered with a JSON 4xx naming the problem, within the request
timeout, and changes nothing (the pods and the host's interfaces are
compared before and after)."""

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid

import pytest

from dataplane.api import (
    MAX_BODY_BYTES,
    MAX_CONNECTIONS,
    MAX_HEAD_BYTES,
    REQUEST_TIMEOUT_S,
    APIError,
    APIServer,
    call,
)
from dataplane.checks import JSON_MAX_DEPTH
from tests.test_service import IT_SPEC, Node, sh

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = Node(tmp_path_factory.mktemp("apisafe"), uuid.uuid4().hex[:5])
    try:
        n.start()
        # named with the tag: host interface names derive from pod names
        n.victim = n.pod(f"victim{n.tag}", IT_SPEC)
        yield n
    finally:
        n.cleanup()


def state(node):
    """What a refused request must leave as it was: the pods (any state) and
    the core's ports."""
    ports = [p["name"] for p in node.api("GET", "/v1/status")["ports"]]
    return node.api("GET", "/v1/pods"), ports


@contextlib.contextmanager
def unchanged(node):
    before = state(node)
    yield
    assert state(node) == before


def raw(node, data: bytes, shut=True, timeout=REQUEST_TIMEOUT_S + 10):
    """Write ``data`` on a fresh connection; (status, headers, JSON body) of
    the answer, and the seconds it took."""
    t = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(timeout)
        c.connect(node.sock)
        try:
            c.sendall(data)
            if shut:
                c.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before it took everything
        out = b""
        while True:
            try:
                b = c.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            out += b
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(x.split(": ", 1) for x in lines[1:])
    assert headers["Content-Type"] == "application/json"
    return status, headers, json.loads(body), time.monotonic() - t


def request(method, target, body=b"", headers=()):
    head = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    if body and not any(k.lower() == "content-length" for k, _ in headers):
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def refused(node, data, status, words, **kw):
    """``data`` refused with ``status`` and a message containing ``words``,
    nothing changed."""
    with unchanged(node):
        got, headers, obj, took = raw(node, data, **kw)
    assert got == status, obj
    for w in words if isinstance(words, (list, tuple)) else [words]:
        assert w in obj["error"], obj
    return headers, obj, took


def add_body(name="p1", **over):
    b = {"name": name, "netns": "/var/run/netns/none", "spec": json.dumps(IT_SPEC)}
    b.update(over)
    return b


# ------------------------------------------------------------------- socket
def test_socket_is_root_only(node):
    st = os.stat(node.sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    # another user cannot connect
    script = (
        "import os, socket, sys\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(13)\n"
    )
    r = subprocess.run([sys.executable, "-c", script, node.sock], capture_output=True, text=True)
    assert r.returncode == 13, r.stderr


def test_valid_requests_still_answered(node):
    assert [p["name"] for p in node.api("GET", "/v1/pods")] == [node.victim["name"]]
    assert {n["name"] for n in node.api("GET", "/v1/networks")} == {"net1", "net2"}
    assert node.api("GET", "/v1/status")["node"] == f"node-{node.tag}"


# -------------------------------------------------------------------- names
@pytest.mark.parametrize(
    "name",
    [
        "x&name=victim",
        "a b",
        "a/b",
        "a#b",
        "a=b",
        "a\x01b",
        "victim\n",
        "-victim",
        ".victim",
        "vi\u00e9tim",
        "x" * 254,
        "",
    ],
)
def test_bad_pod_names_refused(node, name):
    body = json.dumps(add_body(name)).encode()
    refused(node, request("POST", "/v1/pods", body), 400, "name: ")


def test_pod_name_wrong_type_refused(node):
    body = json.dumps(add_body(5)).encode()
    refused(node, request("POST", "/v1/pods", body), 400, "name: 5 is not a pod name")


def test_cli_encodes_names_del_cannot_reach_another_pod(node):
    with unchanged(node):
        r = node.cli("pod", "del", f"x&name={node.victim['name']}", check=False)
    assert r.returncode != 0 and "is not a valid pod name" in r.stderr, r.stderr
    assert node.victim["name"] in [p["name"] for p in node.api("GET", "/v1/pods")]


# -------------------------------------------------------------------- query
@pytest.mark.parametrize(
    "query, words",
    [
        ("name=x%26name%3Dvictim", "is not a valid pod name"),
        ("name=victim&name=victim", "given twice"),
        ("name=%ff%fe", "not UTF-8"),
        ("nmae=victim", "did you mean 'name'?"),
        ("name", "is not a query string"),
        ("&".join(f"k{i}=1" for i in range(50)), "query"),
    ],
)
def test_bad_query_refused(node, query, words):
    refused(node, request("DELETE", f"/v1/pods?{query}"), 400, words)


def test_a_name_in_the_query_and_another_in_the_body_refused(node):
    """Which pod was meant? Neither is deleted."""
    body = json.dumps({"name": "other"}).encode()
    refused(
        node,
        request("DELETE", f"/v1/pods?name={node.victim['name']}", body),
        400,
        f"name: '{node.victim['name']}' in the query, 'other' in the body",
    )


def test_cli_refuses_an_empty_container_id_before_asking_anything(node):
    with unchanged(node):
        r = node.cli("attachment", "del", "", "eth0", check=False)
    assert r.returncode != 0 and "container_id is empty" in r.stderr, r.stderr


def test_cli_names_a_spec_file_that_is_not_utf8(node, tmp_path):
    f = tmp_path / "spec.json"
    f.write_bytes(b'{"network_plane": "\xff"}')
    with unchanged(node):
        r = node.cli("pod", "add", "p9", "--netns", "/var/run/netns/x", "--spec", f"@{f}",
                     check=False)  # fmt: skip
    assert r.returncode != 0, r
    assert f"--spec @{f}: not UTF-8 text (byte 19)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "answer",
    [b"hello\n", b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n<html></html>"],
    ids=["not-http", "not-json"],
)
def test_cli_on_another_programs_socket_says_so(tmp_path, answer):
    """--socket naming a socket some other program listens on: not our
    API, said in one line, not a traceback."""
    path = str(tmp_path / "other.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def answer_once():
        c, _ = srv.accept()
        with c:
            c.recv(65536)
            c.sendall(answer)

    t = threading.Thread(target=answer_once, daemon=True)
    t.start()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "dataplane.cli", "status", "--socket", path],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        t.join(timeout=10)
        srv.close()
    assert r.returncode != 0
    assert f"{path} did not answer as the dataplane API" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_query_on_a_route_without_parameters_refused(node):
    refused(node, request("GET", "/v1/pods?x=1"), 400, "x: unknown query parameter")


def test_body_on_a_route_that_takes_its_fields_in_the_query_refused(node):
    refused(
        node,
        request("DELETE", "/v1/fdb", b'{"mac": "02:00:00:00:00:01"}'),
        400,
        "body: this request takes no body (give network, mac as query parameters)",
    )


# ----------------------------------------------------------- Content-Length
@pytest.mark.parametrize("value", ["abc", "-5", "1.5", "0x10", "", "5, 5"])
def test_bad_content_length_refused(node, value):
    data = request("POST", "/v1/pods", b"{}", headers=[("Content-Length", value)])
    refused(node, data, 400, "Content-Length")


def test_content_length_given_twice_refused(node):
    data = request(
        "POST", "/v1/pods", b"{}", headers=[("Content-Length", "2"), ("Content-Length", "2")]
    )
    refused(node, data, 400, "more than once")


@pytest.mark.parametrize("value", [str(MAX_BODY_BYTES + 1), "9" * 40, str(1 << 62)])
def test_huge_content_length_refused_unread(node, value):
    # the body is never sent and the client's write side stays open: the
    # answer must not wait for it. A server that did would answer nothing
    # before its request timeout (and then 408): the socket's own timeout,
    # half of that, makes such a wait an error here.
    data = request("POST", "/v1/pods", headers=[("Content-Length", value)])
    refused(node, data, 413, "limit", shut=False, timeout=REQUEST_TIMEOUT_S / 2)


def test_body_over_the_limit_refused(node):
    body = json.dumps(add_body(pad="x" * (MAX_BODY_BYTES + 10))).encode()
    refused(node, request("POST", "/v1/pods", body), 413, str(MAX_BODY_BYTES))


def test_body_shorter_than_its_length_refused(node):
    data = request("POST", "/v1/pods", b'{"name"', headers=[("Content-Length", "100")])
    refused(node, data, 400, "body ended after 7 of 100 bytes")


def test_chunked_body_refused(node):
    data = request(
        "POST", "/v1/pods", b"2\r\n{}\r\n0\r\n\r\n", headers=[("Transfer-Encoding", "chunked")]
    )
    refused(node, data, 411, "Content-Length")


def test_a_post_without_content_length_refused(node):
    """A POST whose body goes without Content-Length: refused, not taken as
    a request without a body (a dry run would reload, or a request be
    refused for a field it has); one that says 0 is answered."""
    body = json.dumps({"dry_run": True}).encode()
    data = request("POST", "/v1/reload", headers=[("Connection", "close")]) + body
    refused(node, data, 411, "Content-Length: required for POST")
    data = request("POST", "/v1/pods", headers=[("Content-Length", "0")])
    refused(node, data, 400, "name")  # read as the empty body it says it is


def test_head_over_the_limit_refused(node):
    data = request("GET", "/v1/pods", headers=[("X-Pad", "a" * (MAX_HEAD_BYTES + 1))])
    refused(node, data, 431, "head")


def test_bad_request_line_answered_as_json(node):
    refused(node, b"garbage\r\n\r\n", 400, "garbage")


# --------------------------------------------------------------------- body
def test_invalid_utf8_refused(node):
    body = b'{"name": "\xff\xfe", "netns": "/x", "spec": "{}"}'
    refused(node, request("POST", "/v1/pods", body), 400, "not UTF-8")


@pytest.mark.parametrize("body", [b"{", b"{'name': 1}", b"[1, 2", b"nul"])
def test_invalid_json_refused(node, body):
    refused(node, request("POST", "/v1/pods", body), 400, "not valid JSON")


def test_json_not_an_object_refused(node):
    refused(node, request("POST", "/v1/pods", b"[1, 2]"), 400, "must be a JSON object")


@pytest.mark.parametrize("depth", [JSON_MAX_DEPTH + 1, 100_000])
def test_deep_json_refused(node, depth):
    body = b'{"name": ' + b"[" * depth + b"]" * depth + b"}"
    refused(node, request("POST", "/v1/pods", body), 400, "nested deeper than")


def test_deep_json_inside_the_spec_refused(node):
    netns = f"/var/run/netns/{node.victim['ns']}"  # one that exists: the spec is read
    body = json.dumps(add_body(netns=netns, spec="[" * 5000 + "]" * 5000)).encode()
    refused(node, request("POST", "/v1/pods", body), 400, "pod spec: nested deeper than")


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("netns", ["/x"], "netns: "),
        ("netns", "relative/path", "netns: "),
        ("spec", 7, "spec: must be a JSON object or JSON text, not int"),
        ("spec", None, "spec: is required"),
    ],
)
def test_wrong_types_refused(node, field, value, words):
    body = json.dumps(add_body(**{field: value})).encode()
    refused(node, request("POST", "/v1/pods", body), 400, words)


def test_missing_field_refused(node):
    body = json.dumps({"name": "p1", "spec": IT_SPEC}).encode()
    refused(node, request("POST", "/v1/pods", body), 400, "netns: is required")


def test_unknown_field_refused_with_a_suggestion(node):
    body = json.dumps({"nmae": "p1", "netns": "/x", "spec": IT_SPEC}).encode()
    refused(node, request("POST", "/v1/pods", body), 400, ["nmae", "did you mean 'name'?"])


def test_duplicate_key_refused(node):
    body = b'{"name": "p1", "name": "victim", "netns": "/x", "spec": {}}'
    refused(node, request("POST", "/v1/pods", body), 400, "given twice")


# ------------------------------------------------------------ routes, methods
def test_unknown_route_404(node):
    refused(node, request("GET", "/v1/secrets"), 404, "no such endpoint")
    with pytest.raises(APIError) as e:
        node.api("GET", "/v2/pods")
    assert e.value.status == 404


@pytest.mark.parametrize("method", ["PUT", "PATCH", "HEAD", "BREW"])
def test_wrong_method_405(node, method):
    headers, _, _ = refused(node, request(method, "/v1/pods"), 405, "not allowed")
    assert headers["Allow"] == "DELETE, GET, POST"


# ------------------------------------------------------- time and connections
def test_silent_and_slow_clients_time_out(node):
    """A client that sends nothing, or a byte a second, is answered 408 at
    the request timeout; meanwhile other requests are served."""
    results = {}

    def silent():
        results["silent"] = raw(node, b"", shut=False)

    def drip():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(REQUEST_TIMEOUT_S + 10)
            c.connect(node.sock)
            sent = 0
            try:
                for b in dripped:
                    c.send(bytes([b]))
                    sent += 1
                    time.sleep(0.5)
            except (BrokenPipeError, ConnectionResetError):
                pass
            answer = c.recv(65536)
            rest = b""
            while True:  # what follows the answer: the server's end of the connection
                b = c.recv(65536)
                if not b:
                    break
                rest += b
            results["drip"] = (answer + rest, sent)

    # at a byte each half second this request takes over a minute to send
    dripped = request("GET", "/v1/pods", headers=[("X-Pad", "a" * 100)])
    assert len(dripped) * 0.5 > 6 * REQUEST_TIMEOUT_S

    threads = [threading.Thread(target=f) for f in (silent, drip)]
    with unchanged(node):
        for th in threads:
            th.start()
        time.sleep(1)
        assert node.api("GET", "/v1/pods")  # not held up by them
        for th in threads:
            th.join(REQUEST_TIMEOUT_S + 15)
    # the silent client: raw() read the answer up to the server's end of the
    # connection (its socket timeout would have raised otherwise), answered
    # at the request timeout, not before it; returned at all: a generous
    # bound of three times that timeout
    status, _, obj, took = results["silent"]
    assert status == 408, obj
    assert obj["error"] == f"request not received within {REQUEST_TIMEOUT_S:g} s", obj
    assert REQUEST_TIMEOUT_S - 1 < took < 3 * REQUEST_TIMEOUT_S, took
    # the dripping client: answered 408 and cut off before it had sent its
    # request (the server does not wait for the whole drip), the connection
    # closed by the server after the answer
    answer, sent = results["drip"]
    assert answer.startswith(b"HTTP/1.0 408 "), answer
    assert f"request not received within {REQUEST_TIMEOUT_S:g} s".encode() in answer, answer
    assert 0 < sent < len(dripped), (sent, len(dripped))


def test_connections_are_bounded(node):
    """MAX_CONNECTIONS idle clients fill the server; the next is answered
    503 at once; when they time out, requests are served again."""
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(node.sock)
            idle.append(c)
        time.sleep(0.5)  # all accepted
        # answered at once: before the idle ones time out and make room (a
        # server that queued it would answer nothing within its request
        # timeout; the socket's own timeout, half of that, makes it an error)
        status, headers, obj, _ = raw(
            node, request("GET", "/v1/pods"), timeout=REQUEST_TIMEOUT_S / 2
        )
        assert status == 503 and "busy" in obj["error"], obj
        assert headers["Retry-After"] == "1"
        with pytest.raises(APIError) as e:
            node.api("GET", "/v1/pods")
        assert e.value.status == 503
        # the idle ones are answered 408 at their request timeout, and closed
        for c in idle:
            c.settimeout(REQUEST_TIMEOUT_S + 30)
        assert all(c.recv(20).startswith(b"HTTP/1.0 408") for c in idle)
        # their slots given back as they close: served again
        pods = call(node.sock, "GET", "/v1/pods", busy_wait=10)
        assert [p["name"] for p in pods] == [node.victim["name"]]
    finally:
        for c in idle:
            c.close()


def test_service_survives_everything_above(node):
    """The service is still up and the victim pod still attached."""
    assert node.proc.poll() is None
    pods = node.api("GET", "/v1/pods")
    assert [p["name"] for p in pods] == [node.victim["name"]] and pods[0]["state"] == "ready"
    assert "eth0" in sh("ip", "-n", node.victim["ns"], "-o", "link").stdout


# ------------------------------------------------------- the checks alone
def test_check_pod_name():
    from dataplane.checks import POD_NAME_MAX, check_pod_name
    from dataplane.errors import ConfigError

    for ok in ("a", "pod-1.web_0", "A" * POD_NAME_MAX, "0abc"):
        assert check_pod_name(ok) == ok
    for bad in ("x&y", "a\n", "-a", "a" * (POD_NAME_MAX + 1), "", None, "a%20b"):
        with pytest.raises(ConfigError, match=r"^name: "):
            check_pod_name(bad)


def test_check_json_depth_ignores_brackets_in_strings():
    from dataplane.checks import check_json_depth
    from dataplane.errors import ConfigError

    check_json_depth("[" * JSON_MAX_DEPTH + "]" * JSON_MAX_DEPTH, "x")
    check_json_depth('{"a": "' + "[" * 1000 + '"}', "x")
    check_json_depth('["\\"[[[["]', "x", limit=1)  # an escaped quote stays in the string
    with pytest.raises(ConfigError, match=r"^x: nested deeper than 32 levels"):
        check_json_depth("[" * (JSON_MAX_DEPTH + 1), "x")
    # long texts: escaped quotes and brackets inside one string do not count
    # (the speed of this is bench/'s, not a test's)
    check_json_depth('"\\"' * 300_000, "x")
    long_string = '"' + '\\"[{' * 100_000 + '"'
    check_json_depth("[" + long_string + "]", "x", limit=1)
    with pytest.raises(ConfigError, match=r"^x: nested deeper than 1 levels"):
        check_json_depth("[" + long_string + ", [1]]", "x", limit=1)


def test_a_client_gone_before_its_answer_is_not_a_failed_request(tmp_path):
    """A client that closes its connection before the answer (an
    interrupted CLI): the request was carried out, and is logged as done,
    not as a handler's failure with a traceback and a 500."""
    import logging

    from dataplane.api import APIServer

    gone, done = threading.Event(), threading.Event()

    def slow(body, query):
        gone.wait(10)
        done.set()
        return {"ok": True}

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    log = logging.getLogger(f"dptest-api-{os.getpid()}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(Keep())
    path = str(tmp_path / "api.sock")
    srv = APIServer(path, {("POST", "/v1/slow"): slow}, log=log)
    srv.start()
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.sendall(request("POST", "/v1/slow", b"{}"))
        s.close()
        gone.set()
        assert done.wait(10)
        for _ in range(200):  # the answer's write fails, then the request is logged
            if any(r.getMessage() == "api request" for r in records):
                break
            time.sleep(0.01)
    finally:
        srv.stop()
    assert not [r for r in records if r.levelno >= logging.ERROR], [r.getMessage() for r in records]
    [req] = [r for r in records if r.getMessage() == "api request"]
    assert req.fields["status"] == 200, req.fields


def test_idle_connections_to_the_metrics_port_take_nothing_the_node_needs(node):
    """Anyone who can reach the metrics port opens hundreds of connections
    and sends nothing: the service keeps at most METRICS_MAX_CONNECTIONS of
    them (closing the rest at once, and those it kept once silent for
    METRICS_TIMEOUT_S), so its file descriptors stay bounded and its
    control API answers throughout; scrapes work again once they go."""
    from dataplane.service import METRICS_MAX_CONNECTIONS, METRICS_TIMEOUT_S
    from tests.test_service import scrape

    def fds():
        return len(os.listdir(f"/proc/{node.proc.pid}/fd"))

    scrape(node)  # its server thread and socket there before counting
    before = fds()
    idle = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", node.metrics_port), timeout=5)
            idle.append(s)
        # the service accepts them all, and closes at once what it will not
        # keep (those still in its listen queue look open from here)
        end = time.monotonic() + 20
        while time.monotonic() < end and sum(map(_open, idle)) > METRICS_MAX_CONNECTIONS:
            time.sleep(0.1)
        held = fds() - before
        assert held <= METRICS_MAX_CONNECTIONS + 2, held
        assert node.api("GET", "/v1/status")["ports"]  # the control API answers
        # the kept ones are closed by the service once silent long enough
        kept = [s for s in idle if _open(s)]
        assert 0 < len(kept) <= METRICS_MAX_CONNECTIONS, len(kept)
        time.sleep(METRICS_TIMEOUT_S - 1.0)
        end = time.monotonic() + 20
        while time.monotonic() < end and any(_open(s) for s in kept):
            time.sleep(0.1)
        assert not any(_open(s) for s in kept)
    finally:
        for s in idle:
            s.close()
    assert "dataplane_port_rx_packets_total" in scrape(node)


def _open(s: socket.socket) -> bool:
    """Whether the server end of ``s`` has not closed it (nothing to read
    without blocking)."""
    s.setblocking(False)
    try:
        return s.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.setblocking(True)


@pytest.mark.parametrize("deep", [False, True])
def test_an_api_socket_path_as_long_as_the_configuration_takes_is_served(tmp_path, deep):
    """api_socket may be as long as a unix socket's path (107 bytes): the
    server's name of its own while it starts must not be longer - in a
    short directory with a long name, and in a directory so deep that no
    name of its own fits beside it (bound in place then)."""
    from dataplane.checks import UNIX_PATH_MAX, check_unix_socket_path

    base = str(tmp_path)
    if deep:
        d = base + "/" + "d" * (UNIX_PATH_MAX - len(base) - 5)
        path = d + "/a.s"
    else:
        d = base
        path = base + "/" + "s" * (UNIX_PATH_MAX - len(base) - 1)
    assert len(path) == UNIX_PATH_MAX
    assert check_unix_socket_path(path, "api_socket") == path  # the configuration takes it
    srv = APIServer(path, {("GET", "/v1/ping"): lambda *a: {"pong": True}})
    srv.start()
    try:
        assert call(path, "GET", "/v1/ping") == {"pong": True}
        assert sorted(os.listdir(d)) == [os.path.basename(path)]  # nothing of its own left
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        srv.stop()
    assert not os.path.exists(path)
