"""etcd's access control: the node as an etcd user whose role gives it its
cluster's key prefix (etcd ``auth``: several clusters may then share one
etcd, each under its own prefix, none able to touch another's). A real etcd
of the test's own, its access control switched on through its API as an
operator would with etcdctl."""

import os

import pytest
import requests

from dataplane.config import parse_config
from dataplane.errors import ConfigError
from tests.etcdhost import EtcdServer, have_etcd, watch_a_put

pytestmark = pytest.mark.skipif(
    not have_etcd(),
    reason="etcd-server is not installed (/usr/bin/etcd; apt-get install etcd-server)",
)

if have_etcd():
    from dataplane.store import open_store
    from dataplane.store.etcd import EtcdStore
    from dataplane.store.etcdgw import EtcdRefused, b64, prefix_end

PREFIX = "/dpauth"
SUBNET = "192.168.10.0/24"


def _call(srv, path, body, token=None):
    headers = {"Authorization": token} if token else {}
    r = requests.post(f"{srv.url}/v3/{path}", json=body, headers=headers, timeout=10)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


@pytest.fixture
def srv():
    """etcd with access control on: root, and user node1 (password s3cret)
    whose role may read and write PREFIX and nothing else."""
    s = EtcdServer(name="dpauth")
    s.start()
    try:
        _call(s, "auth/role/add", {"name": "root"})
        _call(s, "auth/user/add", {"name": "root", "password": "rootpw"})
        _call(s, "auth/user/grant", {"user": "root", "role": "root"})
        _call(s, "auth/role/add", {"name": "dpnode"})
        key = f"{PREFIX}/".encode()
        perm = {"permType": "READWRITE", "key": b64(key), "range_end": b64(prefix_end(key))}
        _call(s, "auth/role/grant", {"name": "dpnode", "perm": perm})
        _call(s, "auth/user/add", {"name": "node1", "password": "s3cret"})
        _call(s, "auth/user/grant", {"user": "node1", "role": "dpnode"})
        _call(s, "auth/enable", {})
        yield s
    finally:
        s.close()


def test_a_node_with_its_user_reads_writes_and_watches_its_prefix(srv):
    s = EtcdStore([srv.url], prefix=PREFIX, user="node1", password="s3cret", timeout=5)
    try:
        s.put_network("net1", 100, "std", SUBNET)
        assert s.network("net1")["vni"] == 100
        assert watch_a_put(s) == [("put", "h1")]
        # a member restarted forgets its simple tokens: asked for a new one
        srv.stop()
        srv.start()
        assert s.network("net1")["vni"] == 100
        eps, _ = s.endpoints_snapshot()
        assert [e["pod"] for e in eps] == ["h1"]
    finally:
        s.close()


def test_a_wrong_password_or_a_prefix_not_the_users_is_refused_saying_so(srv):
    with pytest.raises(EtcdRefused) as e:
        EtcdStore([srv.url], prefix=PREFIX, user="node1", password="wrong", timeout=5)
    assert f"etcd {srv.url} refuses the node's user 'node1': " in str(e.value), e.value
    assert "authentication failed" in str(e.value), e.value
    with pytest.raises(EtcdRefused, match="permission denied"):
        EtcdStore([srv.url], prefix="/other", user="node1", password="s3cret", timeout=5)
    with pytest.raises(EtcdRefused, match="user name is empty"):
        EtcdStore([srv.url], prefix=PREFIX, timeout=5)


def test_the_configuration_names_the_user_and_its_password_file(srv, tmp_path):
    pw = tmp_path / "etcd-password"
    pw.write_text("s3cret\n")
    base = {
        "node": "node1",
        "vtep": {"address": "10.0.0.1/24", "uplink": "eth1"},
        "networks": [{"name": "net1", "vni": 100, "plane": "std", "subnet": SUBNET}],
    }
    store = {"kind": "etcd", "endpoints": [srv.url], "prefix": PREFIX, "user": "node1"}
    cfg = parse_config({**base, "store": {**store, "password_file": str(pw)}})
    assert cfg.store.user == "node1" and cfg.store.password_file == str(pw)
    assert parse_config(cfg.to_dict()).store == cfg.store
    s = open_store(cfg.store, "node1", timeout=5)
    try:
        s.put_network("net1", 100, "std", SUBNET)
        assert s.network("net1")["vni"] == 100
    finally:
        s.close()
    for bad, msg in (
        (store, "store.password_file: is required with store.user"),
        ({**store, "user": None, "password_file": str(pw)}, "store.user: is required with"),
        ({**store, "password_file": str(tmp_path / "none")}, "store.password_file: "),
        ({**store, "user": "no/slash", "password_file": str(pw)}, "store.user: 'no/slash'"),
        ({"kind": "sqlite", "user": "node1"}, "store.user: is for kind etcd"),
    ):
        bad = {k: v for k, v in bad.items() if v is not None}
        with pytest.raises(ConfigError) as e:
            parse_config({**base, "store": bad})
        assert str(e.value).startswith(msg), (bad, str(e.value))
    # a password file that went away since: said when the store is opened
    gone = parse_config({**base, "store": {**store, "password_file": str(pw)}})
    os.unlink(pw)
    with pytest.raises(ConfigError, match=f"store.password_file: {pw}: cannot be read"):
        open_store(gone.store, "node1", timeout=5)


def test_a_member_refusing_the_login_with_its_own_error_is_passed_over(srv):
    """A member that answers the login itself with an error of its own (too
    many requests: its apply far behind) is passed over for the next one,
    which logs the node in, as for any request - not taken for the cluster
    refusing the node's user."""
    import json

    from tests.test_etcd_failover import Listener, answer, forward, read_request

    message = "etcdserver: too many requests"
    logins = []

    def sick_answer(conn):
        # the login refused; anything else (the opening's ping) passed on
        method, path, body = read_request(conn)
        if path.endswith("/auth/authenticate"):
            logins.append(path)
            body = json.dumps({"error": message, "code": 8, "message": message}).encode()
            answer(conn, "429 Too Many Requests", body)
        else:
            answer(conn, *forward(srv.url, method, path, body))

    sick = Listener(sick_answer)
    s = None
    try:
        s = EtcdStore(
            [sick.url, srv.url], prefix=PREFIX, user="node1", password="s3cret", timeout=5
        )
        s.put_network("net1", 100, "std", SUBNET)
        assert s.network("net1")["vni"] == 100
        assert logins, "the sick member was not asked to log the node in"
    finally:
        if s is not None:
            s.close()
        sick.close()


def test_a_watch_the_member_cancels_as_it_creates_it_is_refused_saying_why(srv):
    """A watch of a prefix the node's user may not read: etcd creates it and
    cancels it in the same answer (permission denied). Refused at once,
    naming the member and etcd's reason - not taken for a watch that runs
    and never delivers anything."""
    s = EtcdStore([srv.url], prefix=PREFIX, user="node1", password="s3cret", timeout=5)
    try:
        with pytest.raises(EtcdRefused) as e:
            s.client.watch("/other/", None, lambda kind, obj: None, lambda ev: ("put", ev))
        assert srv.url in str(e.value) and "permission denied" in str(e.value), e.value
        # the node's own prefix still watched
        s.put_network("net1", 100, "std", SUBNET)
        assert watch_a_put(s) == [("put", "h1")]
    finally:
        s.close()
