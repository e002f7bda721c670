"""The node's views while its cluster store (a real etcd, the test's own)
is stopped or hung (SIGSTOP): the node service (real, one node, fallback
mode) answers ``fdb``, ``fdb summary``, ``pod list`` and ``status`` from
the core and its own memory, promptly, saying that the store does not
answer and what may be stale; ``attachment list`` and ``host list``, which
only the store can answer, fail at once, naming the store and the
consequence, not urllib3's text."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests
from test_service import IT_SPEC, ROOT, Node

from dataplane.api import APIError
from dataplane.store.etcd import EtcdStore
from dataplane.store.reach import VIEW_WAIT_S
from tests.etcdhost import EtcdServer, have_etcd

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not have_etcd(), reason="needs /usr/bin/etcd (Debian: etcd-server)"),
]

HOST_MAC, HOST_IP, HOST_VTEP = "02:00:00:0a:77:01", "192.168.50.201", "10.99.0.50"
#: etcd's request timeout in the service (dataplane.store.etcdgw.DEFAULT_TIMEOUT):
#: a view that waited for it would take this long
ETCD_TIMEOUT_S = 10.0

#: the service's etcd request timeout when a test makes it long (LongTimeoutNode)
LONG_TIMEOUT = (
    "import functools, sys; import dataplane.service as s; "
    "s.open_store = functools.partial(s.open_store, timeout=float(sys.argv.pop(1))); "
    "from dataplane.cli import main; sys.exit(main())"
)


class LongTimeoutNode(Node):
    """A node service whose etcd requests wait ``etcd_timeout`` seconds (not
    ETCD_TIMEOUT_S): a wait for that timeout shows as a hang."""

    etcd_timeout = 600.0

    def command(self):
        return [sys.executable, "-c", LONG_TIMEOUT, str(self.etcd_timeout), "run", "-c",
                str(self.cfg)]  # fmt: skip


@contextlib.contextmanager
def service_on_etcd(tmp_path, etcd_name, tag, etcd_timeout=None):
    """(a node service, not started, whose state store is an etcd of its
    own under the prefix /TAG..., that etcd, the prefix); the node cleaned
    up and etcd closed afterwards. With ``etcd_timeout`` the service's
    requests to etcd wait that long (LongTimeoutNode)."""
    srv = EtcdServer(etcd_name).start()
    prefix = f"/{tag}{uuid.uuid4().hex[:6]}"
    node = (Node if etcd_timeout is None else LongTimeoutNode)(
        tmp_path,
        uuid.uuid4().hex[:5],
        extra=f"store: {{kind: etcd, endpoints: ['{srv.url}'], prefix: {prefix}}}",
    )
    if etcd_timeout is not None:
        node.etcd_timeout = etcd_timeout
    try:
        yield node, srv, prefix
    finally:
        node.cleanup()
        srv.close()


@pytest.fixture
def setup(tmp_path):
    """(node, etcd, a store client of the node's prefix, pod vwa's info)."""
    yield from _setup(tmp_path)


@pytest.fixture
def setup_long(tmp_path):
    """As ``setup``, the service's etcd requests waiting ten minutes."""
    yield from _setup(tmp_path, etcd_timeout=600.0)


def _setup(tmp_path, etcd_timeout=None):
    with service_on_etcd(tmp_path, "vwetcd", "vw", etcd_timeout) as (node, srv, prefix):
        es = None
        try:
            node.start()
            info = node.pod("vwa", IT_SPEC)
            es = EtcdStore([srv.url], prefix=prefix)
            # a host described to the cluster, and a pod of another node: the
            # cluster view has the host; neither is this node's pod
            es.put_static_endpoint("vwhost", "net1", HOST_MAC, HOST_IP, HOST_VTEP)
            es.put_pod("vwother", "/var/run/netns/vwother", {}, node="vwnode2")
            for _ in range(100):
                if any(r["mac"] == HOST_MAC for r in node.api("GET", "/v1/fdb")):
                    break
                time.sleep(0.05)
            yield node, srv, es, info
        finally:
            if es is not None:
                es.close()


def view_cli(node, *args):
    """The CompletedProcess of ``dataplane ARGS``. That it returns at all is
    bounded generously (three times etcd's request timeout: a hung view
    fails here); that it did not wait for etcd's timeout is told by the
    waits its words name (:func:`waits_named`)."""
    return subprocess.run(
        [sys.executable, "-m", "dataplane.cli", *args, "--socket", node.sock],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=3 * ETCD_TIMEOUT_S,
    )


def waits_named(text):
    """The waits on the store that ``text`` names ('no answer within N s'),
    each a view's bound (at most reach.VIEW_WAIT_S), none etcd's request
    timeout: the view gave up at its bound instead of waiting for that."""
    waits = [float(w) for w in re.findall(r"no answer within ([0-9.]+) s", text)]
    assert all(w <= VIEW_WAIT_S < ETCD_TIMEOUT_S for w in waits), text
    return waits


def check_views_without_store(node, srv, info, why, refused=False):
    """What the views say while etcd does not answer (``why``: the words
    for the failure, e.g. 'connection refused'), or with ``refused``
    answers this node with an error (its access control)."""
    mac = info["planes"][0]["mac"]
    state = "refuses this node's requests" if refused else "does not answer"
    heading = "STORE REFUSES THIS NODE" if refused else "STORE DOES NOT ANSWER"
    down = f"the store (etcd {srv.url}) {state} ({why}"
    hung = why == "no answer within"

    def said(text):
        """``text`` names the store's failure as a view's: for a hung etcd,
        the view's bound it gave up at (a stopped one refuses connections
        and a refusing one answers: neither is waited for)."""
        assert bool(waits_named(text)) is hung, text

    # status answers, with the core's counters, and says the store does not
    r = view_cli(node, "status")
    assert r.returncode == 0, r.stderr
    said(r.stdout)
    assert f"{heading} (etcd {srv.url})" in r.stdout, r.stdout
    assert "pod counts per network are unknown" in r.stdout, r.stdout
    st = node.api("GET", "/v1/status")
    assert st["forwarding"] is True and why in st["store_error"], st
    said(st["store_error"])
    assert st["store"]["answers"] is False and st["store"]["where"] == f"etcd {srv.url}"
    assert st["store"]["refuses"] is refused, st["store"]
    assert all(n["pods"] is None for n in st["networks"]), st

    # the FDB: the core's entries; this node's pod as its own, the host as
    # the cluster view had it, marked as possibly stale
    r = view_cli(node, "fdb")
    assert r.returncode == 0, r.stderr
    said(r.stdout)
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"{heading}: {down}"), r.stdout
    assert "may be stale" in lines[0] and "the core forwards on" in lines[0], lines[0]
    assert lines[1].split() == ["NETWORK", "MAC", "TYPE", "TO", "ORIGIN", "WHOSE"], r.stdout
    assert any(
        ln.split()[:5] == ["net1", mac, "local", info["planes"][0]["host_ifname"], "pod"]
        and "pod vwa plane std" in ln
        for ln in lines
    ), r.stdout
    assert any(
        ln.split()[:5] == ["net1", HOST_MAC, "remote", HOST_VTEP, "host"]
        and ln.endswith("host vwhost (may be stale)")
        for ln in lines
    ), r.stdout
    rows = {r["mac"]: r for r in node.api("GET", "/v1/fdb")}
    assert down in rows[mac]["store_error"] and "stale" not in rows[mac]
    assert rows[mac]["origin"] == "pod" and rows[mac]["pod"] == "vwa"
    assert rows[HOST_MAC]["origin"] == "host" and rows[HOST_MAC]["stale"] is True

    r = view_cli(node, "fdb", "summary")
    assert r.returncode == 0, r.stderr
    said(r.stdout)
    out = r.stdout.splitlines()
    assert out[0].startswith(f"{heading}: {down}"), r.stdout
    assert out[2].split()[:5] == ["net1", "1", "0", "0", "1"], r.stdout  # pod, host
    summary = node.api("GET", "/v1/fdb/summary")
    assert all(down in s["store_error"] for s in summary), summary
    assert summary[0]["stale"] == ["cluster", "host", "api"]

    # the pods: this node's, as the service attached them
    r = view_cli(node, "pod", "list")
    assert r.returncode == 0, r.stderr
    said(r.stdout)
    out = r.stdout.splitlines()
    assert out[0].startswith(f"{heading}: {down}"), r.stdout
    assert "none is left out" in out[0], out[0]
    assert out[1].startswith("vwa  netns=") and "state=ready" in out[1], r.stdout
    assert "vwother" not in r.stdout and "vwhost" not in r.stdout
    pods = node.api("GET", "/v1/pods")
    assert [p["name"] for p in pods] == ["vwa"]
    assert pods[0]["planes"][0]["mac"] == mac and pods[0]["planes"][0]["port"] is not None
    assert down in pods[0]["store_error"] and pods[0]["as_of"] <= time.time()

    # a capture of the pod starts: its planes and ports are the service's own
    cap = node.api("POST", "/v1/capture", {"target": "vwa"})
    assert [i["name"] for i in cap["interfaces"]] == ["vwa:std"], cap
    assert cap["interfaces"][0]["port"] == pods[0]["planes"][0]["port"]
    node.api("DELETE", f"/v1/capture?id={cap['id']}")

    # what only the store knows: refused at once, saying what and why
    for args, what in (
        (("attachment", "list"), "the CNI attachments are recorded in it"),
        (("host", "list"), "the static hosts are recorded in it"),
    ):
        r = view_cli(node, *args)
        assert r.returncode != 0, (args, r.stdout)
        assert r.stderr.startswith(f"dataplane: {down}"), r.stderr
        said(r.stderr)
        assert what in r.stderr, r.stderr
        for raw in ("Pool", "NewConnectionError", "Max retries", "Errno"):
            assert raw not in r.stderr, r.stderr


def test_views_answer_while_etcd_is_stopped_or_hung(setup):
    node, srv, es, info = setup
    # with etcd up: nothing said about the store, every view answers
    rows = node.api("GET", "/v1/fdb")
    assert rows and not any("store_error" in r or "stale" in r for r in rows), rows
    st = node.api("GET", "/v1/status")
    assert st["store_error"] is None and st["store"]["answers"] is True
    assert {n["name"]: n["pods"] for n in st["networks"]} == {"net1": 1, "net2": 0}
    assert [p["name"] for p in node.api("GET", "/v1/pods")] == ["vwa"]
    assert "store_error" not in node.api("GET", "/v1/pods")[0]
    assert node.cli("attachment", "list").stdout == "no CNI attachments on this node\n"
    assert node.cli("host", "list").stdout.startswith("vwhost ")
    assert node.api("GET", "/v1/attachments") == []

    srv.stop()  # gone: connections refused
    try:
        check_views_without_store(node, srv, info, "connection refused")
    finally:
        srv.start()
    for _ in range(100):
        if node.api("GET", "/v1/status")["store"]["answers"]:
            break
        time.sleep(0.1)

    srv.pause()  # hung: connections accepted, never answered
    try:
        st = node.api("GET", "/v1/status")
        assert st["store"]["answers"] is False and "no answer within" in st["store_error"], st
        assert waits_named(st["store_error"]), st  # the store part is bounded
        check_views_without_store(node, srv, info, "no answer within")
    finally:
        srv.resume()

    # back: nothing said any more
    for _ in range(100):
        rows = node.api("GET", "/v1/fdb")
        if not any("store_error" in r for r in rows):
            break
        time.sleep(0.1)
    assert not any("store_error" in r or "stale" in r for r in rows), rows
    assert "store_error" not in node.api("GET", "/v1/pods")[0]


def test_views_do_not_wait_for_a_pod_add_that_waits_on_etcd(setup):
    """A pod add that waits on a hung etcd (up to its request timeout)
    holds the pods' transaction lock, not the core's: status, the FDB, the
    pod list and a metrics scrape answer meanwhile, the add still waiting;
    once etcd is back the add completes."""
    node, srv, es, info = setup
    srv.pause()
    added = {}

    def add():
        try:
            added["info"] = node.pod("vwb", IT_SPEC)
        except Exception as e:  # noqa: BLE001 - the test says what went wrong
            added["error"] = e

    adding = threading.Thread(target=add)
    try:
        adding.start()
        time.sleep(0.5)  # the add is at its first request to etcd, which waits
        st = node.api("GET", "/v1/status")
        assert st["store"]["answers"] is False and "no answer within" in st["store_error"]
        assert any(r["mac"] == info["planes"][0]["mac"] for r in node.api("GET", "/v1/fdb"))
        assert [p["name"] for p in node.api("GET", "/v1/pods")] == ["vwa"]
        url = f"http://127.0.0.1:{node.metrics_port}/metrics"
        assert "\ndataplane_store_up 0.0\n" in requests.get(url, timeout=30).text
        assert adding.is_alive(), f"the add ended before the views answered: {added}"
    finally:
        srv.resume()
        adding.join(60)
    assert "info" in added, added  # etcd answered again within the add's timeout
    assert sorted(p["name"] for p in node.api("GET", "/v1/pods")) == ["vwa", "vwb"]


def _etcd_auth(srv, on: bool):
    """Switch etcd's access control on (a root user, no user for the node:
    every request of the node is refused, 'user name is empty') or off
    again, through its own API, as an operator would with etcdctl."""

    def call(path, body, token=None):
        headers = {"Authorization": token} if token else {}
        r = requests.post(f"{srv.url}/v3/{path}", json=body, headers=headers, timeout=10)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    if on:
        call("auth/role/add", {"name": "root"})
        call("auth/user/add", {"name": "root", "password": "dptest"})
        call("auth/user/grant", {"user": "root", "role": "root"})
        call("auth/enable", {})
    else:
        token = call("auth/authenticate", {"name": "root", "password": "dptest"})["token"]
        call("auth/disable", {}, token)


def test_views_answer_while_etcd_refuses_the_node(setup):
    """An etcd that answers but refuses the node (access control switched
    on without a user for it): the views answer as while it is down, and
    say that it refuses and etcd's reason, not that it does not answer;
    once access is back, nothing is said any more."""
    node, srv, es, info = setup
    assert node.api("GET", "/v1/status")["store"]["refuses"] is False
    _etcd_auth(srv, True)
    try:
        why = "kv/range: etcdserver: user name is empty"
        check_views_without_store(node, srv, info, why, refused=True)
        # the cluster watch finds it at its next heartbeat, and resynchronises
        # once a second meanwhile, forwarding on
        log = node.tmp / "service.log"
        for _ in range(200):
            if "cluster watch ended (etcd" in log.read_text():
                break
            time.sleep(0.1)
        assert "user name is empty" in log.read_text().split("cluster watch ended")[1]
        for _ in range(50):  # its first retry, logged
            if "cluster store refuses this node (etcd" in log.read_text():
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"no retry logged: {log.read_text()[-2000:]}")
        # pods cannot be added meanwhile: refused at once, saying why
        with pytest.raises(APIError) as e:
            node.pod("vwb", IT_SPEC)
        assert e.value.status == 503 and e.value.unavailable, e.value  # CNI: try again later
        assert f"etcd {srv.url} refuses the request (" in str(e.value), e.value
        assert "user name is empty" in str(e.value), e.value
        url = f"http://127.0.0.1:{node.metrics_port}/metrics"
        assert "\ndataplane_store_up 0.0\n" in requests.get(url, timeout=10).text
    finally:
        _etcd_auth(srv, False)
    for _ in range(100):
        st = node.api("GET", "/v1/status")
        if st["store"]["answers"]:
            break
        time.sleep(0.1)
    assert st["store_error"] is None and st["store"]["refuses"] is False, st
    assert {n["name"]: n["pods"] for n in st["networks"]} == {"net1": 1, "net2": 0}
    assert [p["name"] for p in node.api("GET", "/v1/pods")] == ["vwa"]
    # the cluster view follows the store again: a host described now arrives
    es.put_static_endpoint("vwhost2", "net1", "02:00:00:0a:77:02", "192.168.50.202", HOST_VTEP)
    for _ in range(100):
        if any(r["mac"] == "02:00:00:0a:77:02" for r in node.api("GET", "/v1/fdb")):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the cluster view did not resume after access came back")
    assert "Traceback" not in log.read_text()


def test_started_log_counts_this_nodes_pods(setup):
    node, srv, es, info = setup
    node.stop()  # the pod's interfaces stay; the restart replays it
    node.start()
    for _ in range(200):
        text = (node.tmp / "service.log").read_text()
        started = [json.loads(ln) for ln in text.splitlines() if '"node service started"' in ln]
        if len(started) == 2:
            break
        time.sleep(0.05)
    assert len(started) == 2, text[-2000:]
    # the store holds two pods: vwa and another node's
    assert {p["name"] for p in es.pods()} == {"vwa", "vwother"}
    assert started[-1]["pods"] == 1, started[-1]


def test_stops_while_etcd_is_hung(setup_long):
    """A service whose etcd hangs stops without waiting etcd's request
    timeout for its name's claim (renewed and given back within bounds; the
    claim lapses by itself), and the same node takes its name back at once
    when started again."""
    node, srv, es, info = setup_long
    assert node.etcd_timeout == 600.0
    srv.pause()
    try:
        node.proc.send_signal(signal.SIGTERM)
        # its etcd requests wait ten minutes: a stop that waited for one
        # would not end within a tenth of that (subprocess.TimeoutExpired)
        assert node.proc.wait(node.etcd_timeout / 10) == 0
        assert '"node service stopped"' in (node.tmp / "service.log").read_text()
    finally:
        srv.resume()
    node.proc = None
    # its claim was not given back (etcd did not answer); it lapses by itself,
    # and the same node started again takes it back at once meanwhile
    node.start()
    assert node.api("GET", "/v1/pods")[0]["name"] == "vwa"


def test_empty_lists_say_so(tmp_path):
    """A node with no pods, on its SQLite store: the lists say there are none."""
    node = Node(tmp_path, uuid.uuid4().hex[:5])
    try:
        node.start()
        assert node.cli("pod", "list").stdout == "no pods on this node\n"
        assert node.cli("attachment", "list").stdout == "no CNI attachments on this node\n"
        assert node.cli("host", "list").stdout.startswith("no static hosts")
        assert node.cli("pod", "list", "--json").stdout.strip() == "[]"
        assert node.cli("host", "list", "--json").stdout.strip() == "[]"
    finally:
        node.cleanup()
