"""The etcd store with several members, one of which does not answer: real
etcd servers (tests/etcdhost.py) and, for a member that is hung or cut off,
plain sockets on 127.0.0.1 that accept connections and never answer, or
answer half.

- a member that never answers is passed over: reads, leases and
  transactions go to the next one, the next request starts there, and the
  time of a request is for all the members it tries together;
- a transaction whose answer was lost after etcd applied it is sent to the
  next member without being applied twice, and its caller gets the result
  of the first application;
- an answer cut off (a broken chunked body) is EtcdUnavailable, not a
  requests exception, and the name claim's renewals go on through it;
- a three-member cluster whose member in use is paused (SIGSTOP) goes on
  through the others.
"""

import base64
import http.client
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from contextlib import contextmanager

import pytest
from etcdhost import EtcdServer, _free_port, have_etcd, watch_a_put

from tests.test_store_etcd import prefix, server  # the store tests' shared etcd, a fresh prefix

__all__ = ["prefix", "server"]

pytestmark = pytest.mark.skipif(
    not have_etcd(),
    reason="etcd-server is not installed (/usr/bin/etcd; apt-get install etcd-server)",
)

if have_etcd():
    from dataplane.store import etcd as etcd_store
    from dataplane.store.etcd import EtcdStore, EtcdUnavailable
    from dataplane.store.etcdgw import EtcdGateway, EtcdRefused

SUBNET = "192.168.10.0/24"


def _b64(b):
    return base64.b64encode(b if isinstance(b, bytes) else b.encode()).decode()


# ---------------------------------------------------------------- servers
class Listener:
    """A TCP server on 127.0.0.1 that accepts connections and hands each to
    ``serve(conn)`` in a thread (by default: never answers, like a hung
    etcd whose kernel still accepts connections)."""

    def __init__(self, serve=None):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)  # accept() looks at _stop that often
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.serve = serve or (lambda conn: None)
        self.conns = []
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self.accepted += 1
            self.conns.append(conn)  # kept open: no FIN, no answer
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            self.serve(conn)
        except OSError:
            pass

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def read_request(conn):
    """(method, path, body) of one HTTP/1.1 request on ``conn``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise OSError("closed")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    while len(body) < length:
        body += conn.recv(65536)
    return method, path, body


def answer(conn, status, body: bytes):
    conn.sendall(
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


def forward(target_url, method, path, body):
    """The request sent to etcd at ``target_url``: (status line, body)."""
    host, port = target_url.split("//")[1].split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        c.request(method, path, body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return f"{r.status} {r.reason}", r.read()
    finally:
        c.close()


@pytest.fixture
def silent():
    s = Listener()
    yield s
    s.close()


def _wipe(url, prefix):
    gw = EtcdGateway([url])
    p = prefix.encode()
    gw.post("kv/deleterange", {"key": _b64(p + b"/"), "range_end": _b64(p + b"0")})
    gw.close()


# ----------------------------------------------- a member that never answers
def test_a_member_that_never_answers_is_passed_over(silent, server, prefix):
    # opening pings: the hung member gets a share of the one request's time,
    # so etcd is still tried within it (had the hung one taken the whole
    # timeout, no time would be left for etcd and the opening would fail)
    s = EtcdStore([silent.url, server.url], prefix=prefix, timeout=1)
    try:
        assert silent.accepted == 1  # the hung member was tried first, once
        assert s.client._current == 1  # and the next request starts at etcd
        # the next requests start at the member that answered: the hung one
        # is not tried again
        s.put_network("net1", 100, "std", SUBNET)
        assert s.network("net1")["vni"] == 100
        eps, rev = s.endpoints_snapshot()
        lease = s.client.lease_grant(5)
        assert s.client.lease_keepalive(lease)
        assert silent.accepted == 1 and s.client.last_error is None
        assert s.client._current == 1
    finally:
        _wipe(server.url, prefix)
        s.close()


@pytest.mark.parametrize(
    "status,message",
    [
        ("429 Too Many Requests", "etcdserver: too many requests"),
        ("500 Internal Server Error", "etcdserver: an internal error of this member"),
    ],
)
def test_a_member_answering_its_own_error_is_passed_over(server, prefix, status, message):
    """A member that answers every request with an error of its own - too
    many requests (its apply far behind its commits), an internal error -
    while the others serve: requests, transactions and watches go to the
    next member, as for one that does not answer (they once took it for the
    cluster refusing the node). A store of that member alone is refused."""
    body = json.dumps({"error": message, "code": 8, "message": message}).encode()

    def sick_answer(conn):
        read_request(conn)
        answer(conn, status, body)

    sick = Listener(sick_answer)
    s = EtcdStore([sick.url, server.url], prefix=prefix, timeout=2)
    try:
        s.put_network("net1", 100, "std", SUBNET)
        assert s.network("net1")["vni"] == 100
        s.client._current = 0  # the sick member first again, for the watch and the put

        def sick_first():
            s.client._current = 0

        assert watch_a_put(s, sick_first) == [("put", "h1")]
        assert sick.accepted >= 3  # tried first each time
        alone = EtcdStore([sick.url], prefix=prefix, timeout=2, connect=False)
        with pytest.raises(EtcdRefused, match=re.escape(message)):
            alone.network("net1")
        alone.close()
    finally:
        _wipe(server.url, prefix)
        s.close()
        sick.close()


def test_the_time_of_a_request_is_for_all_the_members_it_tries(silent, server, prefix):
    two = Listener()
    # a gateway timeout far longer than the bounds: a request that waited for
    # it (rather than the bound) on a silent member would take a minute
    gw = EtcdGateway([silent.url, two.url, server.url], timeout=120)
    try:
        t = time.monotonic()
        with gw.bounded(0.9):
            gw.ping(prefix)  # 0.3 s each for the silent two, the rest for etcd
        took = time.monotonic() - t
        # each silent member tried once, then etcd answered
        assert (silent.accepted, two.accepted, gw._current) == (1, 1, 2)
        # returned at all within the bound rather than the timeout (80 s
        # for the two silent shares of it): a bound ten times the 0.9 s
        assert took < 10 * 0.9, took
        gw2 = EtcdGateway([silent.url, two.url], timeout=120)
        with gw2.bounded(0.6), pytest.raises(EtcdUnavailable) as e:
            gw2.ping(prefix)
        assert (silent.accepted, two.accepted) == (2, 2)  # each tried once
        # the bound in all, not the bound per member (nor the timeout's
        # shares, 60 s): the error names each member's share of what was
        # left of the bound when it was tried: 0.3 s, or
        # a little less for the second when the first took a little longer
        within = r"no answer within 0\.(?:3|2\d) s \(it is hung, overloaded or cut off\)"
        assert re.fullmatch(
            f"etcd does not answer: {re.escape(silent.url)}: {within}; "
            f"{re.escape(two.url)}: {within}",
            str(e.value),
        ), e.value
        gw2.close()
    finally:
        gw.close()
        two.close()


def test_a_transaction_goes_on_to_the_next_member(silent, server, prefix):
    """A member that takes the transaction and never answers: it is sent to
    the next one, applied once, and the next request starts there."""
    gw = EtcdGateway([silent.url, server.url], timeout=1)
    key = prefix + "/tx"
    try:

        def body(tx):
            assert tx.get(key) is None
            tx.put(key, {"v": 1})
            return "made"

        tx_reads_done = []

        def body_hung_at_commit(tx):
            r = body(tx)
            tx_reads_done.append(True)
            gw._current = 0  # the member in use hangs between the reads and the commit
            return r

        gw._current = 1
        assert gw.atomic(body_hung_at_commit) == "made"
        assert silent.accepted == 1  # the commit was sent to the hung member once
        assert tx_reads_done == [True]  # one run of the body: no conflict, no retry
        assert gw._current == 1  # then to etcd, where the next request starts
        assert gw.get(key) == {"v": 1}
    finally:
        _wipe(server.url, prefix)
        gw.close()


def test_a_transaction_applied_whose_answer_was_lost_is_not_applied_twice(server, prefix):
    """The first member passes the transaction to etcd, which applies it,
    and never answers: sent to the next member, its compares fail (it was
    applied); its read-back shows its own writes, so the commit succeeded:
    put_pod returns as it did, with no AlreadyExists and one record."""
    applied = []

    def apply_then_hang(conn):
        method, path, body = read_request(conn)
        status, out = forward(server.url, method, path, body)
        if path.endswith("/kv/txn"):
            applied.append(json.loads(out))
            return  # applied; the answer is lost
        answer(conn, status, out)

    lossy = Listener(apply_then_hang)
    s = EtcdStore([lossy.url, server.url], prefix=prefix, timeout=1)
    try:
        assert s.client._current == 0  # opening: the lossy member answers reads
        s.put_pod("p1", "/run/netns/p1", {"planes": []}, node="n1")
        assert len(applied) == 1 and applied[0]["succeeded"] is True
        pod = s.pod("p1")
        assert pod["node"] == "n1" and pod["state"] == "pending"
        assert [p["name"] for p in s.pods()] == ["p1"]
        # a change another writer made meanwhile is not taken for our own
        s.client._current = 0
        other = EtcdStore([server.url], prefix=prefix)
        calls = []

        def body(tx):
            calls.append(1)
            p = tx.get(s._k("pods", "p1"))
            if len(calls) == 1:  # between this read and the commit: another writer
                other.set_pod_state("p1", "deleting")
            tx.put(s._k("pods", "p1"), dict(p, state="ready"))

        s.client.atomic(body)
        assert len(calls) >= 2  # the conflict: the body ran again on fresh reads
        assert s.pod("p1")["state"] == "ready"
        other.close()
    finally:
        _wipe(server.url, prefix)
        s.close()
        lossy.close()


# ------------------------------------------------------ an answer cut off
def _cut_after_head(conn):
    """An answer whose chunked body ends before its first chunk does."""
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n40\r\n{"header":{"cluster_id":"1"'
    )
    conn.shutdown(socket.SHUT_RDWR)


def _cut_answer(conn):
    """etcd's /version answered, every other request cut in its body."""
    _, path, _ = read_request(conn)
    if path == "/version":
        answer(conn, "200 OK", b'{"etcdserver":"3.5.0","etcdcluster":"3.5.0"}')
        return
    _cut_after_head(conn)


def test_an_answer_cut_off_is_etcd_unavailable():
    cut = Listener(_cut_answer)
    gw = EtcdGateway([cut.url], timeout=2)
    try:
        with pytest.raises(EtcdUnavailable) as e:
            gw.lease_keepalive(1234)
        assert str(e.value).startswith(f"etcd {cut.url} does not answer (its answer was cut off")
        assert gw.last_error[0] == str(e.value)
    finally:
        gw.close()
        cut.close()


@contextmanager
def cut_store(server, prefix):
    """(mode, store, watcher): a store through a proxy that cuts etcd's
    answers off while ``mode["cut"]`` (``mode["tries"]`` counts the claim's
    requests cut off), and a store straight to etcd to watch it with."""
    mode = {"cut": False, "tries": 0}

    def proxy(conn):
        method, path, body = read_request(conn)
        if mode["cut"] and path != "/version":
            mode["tries"] += path.endswith(("lease/keepalive", "lease/grant", "kv/txn"))
            _cut_after_head(conn)
            return
        answer(conn, *forward(server.url, method, path, body))

    px = Listener(proxy)
    s = EtcdStore([px.url], prefix=prefix, timeout=2)
    watcher = EtcdStore([server.url], prefix=prefix)
    try:
        yield mode, s, watcher
    finally:
        s.close()
        watcher.close()
        px.close()
        _wipe(server.url, prefix)


def test_the_name_claim_is_renewed_through_answers_cut_off(server, prefix, monkeypatch, caplog):
    """While etcd's answers are cut off, the renewals fail and are logged;
    the renewing thread goes on, and renews the claim once etcd answers."""
    monkeypatch.setattr(etcd_store, "NODE_TTL_S", 2)  # renewed every 0.67 s
    caplog.set_level(logging.INFO, logger="dataplane")
    with cut_store(server, prefix) as (mode, s, watcher):
        s.claim_node("n1", "10.0.0.1", "h1")
        assert watcher.node_claims()[0]["node"] == "n1"
        mode["cut"] = True
        time.sleep(1.6)  # two renewals cut off
        assert s._claim_thread.is_alive()
        failed = [r for r in caplog.records if "could not be renewed" in r.getMessage()]
        assert failed and "cut off" in failed[0].getMessage()
        mode["cut"] = False
        time.sleep(3.0)  # longer than the TTL: only renewals keep the name
        assert [c["node"] for c in watcher.node_claims()] == ["n1"]
        assert s._claim_thread.is_alive()


def test_a_claim_lost_while_etcd_did_not_answer_is_made_again_soon(
    server, prefix, monkeypatch, caplog
):
    """Answers cut off for longer than the claim's TTL: the claim lapses
    (the name is free). The failing renewals are tried every RENEW_RETRY_S,
    not every third of the TTL, so once etcd answers the claim is made
    again at the next of them, with the networks the node said last."""
    monkeypatch.setattr(etcd_store, "NODE_TTL_S", 3)  # renewed every 1 s while it works
    monkeypatch.setattr(etcd_store, "RENEW_RETRY_S", 0.1)
    caplog.set_level(logging.INFO, logger="dataplane")
    with cut_store(server, prefix) as (mode, s, watcher):
        s.claim_node("n1", "10.0.0.1", "h1", networks=["net1"])
        s.set_claim_networks(["net1", "net2"])  # a reload added one
        mode["cut"] = True
        until(lambda: not watcher.node_claims())  # its lease runs out (3 s)
        tries = mode["tries"]
        # the renewals tried while the lease ran out, at most 3 s: a third of
        # the TTL apart (1 s) that would be 3 or 4; RENEW_RETRY_S apart, 20
        # or more (the first failure comes at most 1 s after the cut)
        assert tries >= 10, mode
        mode["cut"] = False
        until(watcher.node_claims)
        assert [(c["node"], c["networks"]) for c in watcher.node_claims()] == [
            ("n1", ["net1", "net2"])
        ]
        assert any("had lapsed; made again" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, DPDK EAL)")
def test_a_node_removed_while_cut_off_detaches_its_pods_once_it_answers(server, prefix, tmp_path):
    """A node service whose etcd answers are cut off past its claim's TTL
    shows as not running, and an operator removes it: its pods' records,
    addresses and MACs are forgotten while it still forwards for them.
    Once etcd answers again the service makes its claim again and detaches
    those pods, as a restart would, instead of forwarding for pods whose
    addresses may be another pod's now."""
    from test_service import IT_SPEC, Node, host_links

    mode = {"cut": False}

    def proxy(conn):
        method, path, body = read_request(conn)
        if mode["cut"] and path != "/version":
            _cut_after_head(conn)
            return
        answer(conn, *forward(server.url, method, path, body))

    px = Listener(proxy)
    tag = uuid.uuid4().hex[:5]
    node = Node(
        tmp_path, tag, extra=f"store: {{kind: etcd, endpoints: ['{px.url}'], prefix: {prefix}}}"
    )
    watcher = EtcdStore([server.url], prefix=prefix)
    name = f"node-{tag}"
    try:
        node.start()
        # pod names of this test's own: its node runs in the test's network
        # namespace, where the other lane's node services make pods too, and
        # a host end's name comes from its pod's name
        a = node.pod(f"a{tag}", IT_SPEC)
        hifs = {p["host_ifname"] for p in a["planes"]}
        assert hifs <= host_links()
        mode["cut"] = True
        until(lambda: name not in {c["node"] for c in watcher.node_claims()})  # 10 s
        gone = watcher.remove_node(name)  # the operator, meanwhile
        assert gone["pods"] == 1, gone
        assert hifs <= host_links()  # cut off: it cannot know yet
        mode["cut"] = False
        until(lambda: not hifs & host_links())
        until(lambda: name in {c["node"] for c in watcher.node_claims()})
        assert node.api("GET", "/v1/pods") == []
        # the event follows the detach: it may be a moment behind the links
        logged = "pod removed: its records left the store while this node ran"
        until(lambda: logged in (tmp_path / "service.log").read_text())
        # and the node goes on: a pod added again works
        b = node.pod(f"b{tag}", IT_SPEC)
        assert b["state"] == "ready"
    finally:
        node.cleanup()
        watcher.close()
        px.close()
        _wipe(server.url, prefix)


def until(cond, seconds: float = 60.0):
    """Wait for cond() to hold (AssertionError after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "not within the wait"
        time.sleep(0.05)


# ------------------------------------------------- a cluster of three members
class Member(EtcdServer):
    """One member of a cluster of several (``peers``: name -> peer URL)."""

    def __init__(self, name, peers, token):
        super().__init__(name=name)
        self.peers = peers
        self.token = token

    def _cmd(self):
        cmd = super()._cmd()
        cmd[cmd.index("--initial-cluster") + 1] = ",".join(
            f"{n}={u}" for n, u in sorted(self.peers.items())
        )
        cmd[cmd.index("--initial-cluster-token") + 1] = self.token
        return cmd


def _start_cluster(names):
    """Three members started together on ports picked just before; None
    (everything it started stopped and removed) when one of them did not
    come up, e.g. because another process took a port meanwhile."""
    ports = {n: (_free_port(), _free_port()) for n in names}
    peers = {n: f"http://127.0.0.1:{ports[n][1]}" for n in names}
    token = f"dptest-{uuid.uuid4().hex[:8]}"
    members = []
    for n in names:
        m = Member(n, peers, token)
        m.client_port, m.peer_port = ports[n]
        members.append(m)
    errors = []

    def start(m):
        try:
            m.start(timeout=20)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=start, args=(m,)) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not errors:
        return members, None
    for m in members:
        m.close()
    return None, errors[0]


@pytest.fixture
def cluster():
    # a member starts only on the ports the others were told, so a port
    # taken between picking and binding means a whole new cluster: fresh
    # ports, fresh data directories
    for _attempt in range(3):
        members, error = _start_cluster(["m1", "m2", "m3"])
        if members is not None:
            break
    else:
        raise error
    try:
        yield members
    finally:
        for m in members:
            m.close()


def _leader(members):
    """The member that leads (by etcd's own status)."""
    for m in members:
        gw = EtcdGateway([m.url], timeout=2)
        try:
            st = gw.post("maintenance/status", {})
        finally:
            gw.close()
        if st["leader"] == st["header"]["member_id"]:
            return m
    raise AssertionError("no leader")


def test_a_paused_member_of_a_cluster_is_passed_over(cluster, prefix, monkeypatch):
    monkeypatch.setattr(etcd_store, "NODE_TTL_S", 2)
    leader = _leader(cluster)
    followers = [m for m in cluster if m is not leader]
    hung = followers[0]  # a follower: the two others keep a quorum and a leader
    s = EtcdStore([hung.url, leader.url, followers[1].url], prefix=prefix, timeout=2)
    # the members this test's own requests try, in order (the claim's
    # renewals, made by another thread, are not counted): the real client
    # of each member is still used
    tries = []
    me = threading.get_ident()
    borrow = s.client._borrow

    @contextmanager
    def counted(i):
        if threading.get_ident() == me:
            tries.append(i)
        with borrow(i) as c:
            yield c

    monkeypatch.setattr(s.client, "_borrow", counted)
    try:
        s.put_network("net1", 100, "std", SUBNET)
        s.claim_node("n1", "10.0.0.1", "h1")
        assert s.client._current == 0
        hung.pause()
        try:
            del tries[:]
            s.put_pod("p1", "/run/netns/p1", {"planes": []}, node="n1")
            # the hung member tried once (one share of the time on it), its
            # reads and commit made on the others after it
            assert tries.count(0) == 1 and tries[0] == 0 and len(tries) > 1, tries
            assert s.client._current != 0
            del tries[:]
            eps, _ = s.endpoints_snapshot()
            assert s.pod("p1")["node"] == "n1"
            assert s.delete_pod("p1") is True
            assert tries and 0 not in tries, tries  # the hung member is not tried again
            time.sleep(2.5)  # longer than the claim's TTL: renewed through the others
            assert [c["node"] for c in s.node_claims()] == ["n1"]
        finally:
            hung.resume()
    finally:
        s.close()
