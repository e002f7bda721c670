"""The stores' CNI attachment records, SQLite and etcd alike: recorded once,
read back, listed per node, forgotten; an old SQLite file gains the table."""

import sqlite3
import uuid

import pytest
from etcdhost import shared_server

from dataplane.errors import AlreadyExists
from dataplane.store import SqliteStore


@pytest.fixture(params=["sqlite", "etcd"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SqliteStore(str(tmp_path / "state.db"))
    else:
        from dataplane.store.etcd import EtcdStore

        srv = shared_server(request.config)
        s = EtcdStore([srv.url], prefix=f"/dptest/{uuid.uuid4().hex}")
    yield s
    if request.param == "etcd":
        for a in s.attachments():
            s.delete_attachment(a["name"])
    s.close()


def test_attachment_records(store):
    rec = {"container_id": "c1", "ifname": "eth0", "cni_network": "std-net", "k8s_pod": None}
    store.put_attachment("cni-1", rec, node="n1")
    store.put_attachment("cni-2", {**rec, "container_id": "c2"}, node="n2")
    with pytest.raises(AlreadyExists, match="cni-1"):
        store.put_attachment("cni-1", rec, node="n1")
    a = store.attachment("cni-1")
    assert {k: a[k] for k in rec} == rec and a["name"] == "cni-1" and a["node"] == "n1"
    assert a["created"] > 0
    assert [x["name"] for x in store.attachments()] == ["cni-1", "cni-2"]
    assert [x["container_id"] for x in store.attachments(node="n2")] == ["c2"]
    assert store.attachment("nosuch") is None
    assert store.delete_attachment("cni-1") is True
    assert store.delete_attachment("cni-1") is False
    assert [x["name"] for x in store.attachments()] == ["cni-2"]


def test_a_state_file_from_before_attachments_gains_them(tmp_path):
    path = str(tmp_path / "old.db")
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE attachments")
    db.commit()
    db.close()
    s = SqliteStore(path)
    s.put_attachment("cni-1", {"container_id": "c1", "ifname": "eth0"})
    assert s.attachment("cni-1")["ifname"] == "eth0"
    s.close()
