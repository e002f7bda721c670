"""An endpoint key that is not UTF-8 (written by another tool under the
cluster's endpoints prefix) is a malformed record like the others: skipped,
counted and logged, in a snapshot as in the watch, while every other
endpoint reaches the core - a real core (in a child process, ring ports
only), the session's test etcd and the ClusterSync thread between them
(the fixtures of tests/test_sync_refusals.py)."""

import base64
import json
import logging

from tests import test_sync_refusals as refusals
from tests.test_sync_refusals import LOGGER, V2, V3, A, C, remote, store_blamed, until

# that file's fixtures: a real core in a child process, a store of the
# session's etcd under a prefix of its own, and a started ClusterSync
core, eng, store, sync_of = refusals.core, refusals.eng, refusals.store, refusals.sync_of


def _raw_key(st, pod: bytes, plane: bytes) -> bytes:
    return st._k("endpoints", "").encode() + pod + b"/" + plane


def _put(st, key: bytes, value: dict):
    """``value`` written at ``key`` as another tool would (etcd's own API)."""
    b64 = base64.b64encode
    st.client.post(
        "kv/put", {"key": b64(key).decode(), "value": b64(json.dumps(value).encode()).decode()}
    )


def test_an_endpoint_key_that_is_not_utf8_is_skipped_counted_and_logged(
    eng, store, sync_of, caplog
):
    caplog.set_level(logging.INFO, logger=LOGGER)
    remote(store, "a", "net1", A, V2, "node2")
    rec = {"plane": "std", "network": "net1", "node": "node3", "state": "ready", "vtep": V3}
    bad = _raw_key(store, b"bad\xff", b"std")
    _put(store, bad, dict(rec, mac="02:00:00:00:00:77"))
    sync = sync_of()  # the snapshot is taken and applied

    assert eng.fdb_get(0, A) == ("remote", V2)  # the good one reaches the core
    assert eng.fdb_get(0, "02:00:00:00:00:77") is None  # the bad key's record does not
    assert sync.refused == 1 and list(sync.malformed) == [("bad\\xff", "std")], sync.malformed
    lines = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(lines) == 1 and "endpoints/bad\\xff/std is not UTF-8" in lines[0], lines
    assert store_blamed(caplog) == []
    assert "a" in [e["pod"] for e in store.endpoints()]  # the store's other readers go on

    # in the watch alike: another such key counted, a good endpoint applied,
    # and a bad key deleted takes its count with it
    first = sync.synced_at
    other = _raw_key(store, b"x", b"\xfe")
    _put(store, other, dict(rec, mac="02:00:00:00:00:78"))
    until(lambda: sync.refused == 2, "the watched bad key counted")
    remote(store, "c", "net1", C, V3, "node3")
    until(lambda: eng.fdb_get(0, C) == ("remote", V3), "a good endpoint after it")
    store.client.post("kv/deleterange", {"key": base64.b64encode(bad).decode()})
    until(lambda: sync.refused == 1, "the count, once the bad key is deleted")
    assert sync.synced_at == first and store_blamed(caplog) == []
    assert eng.fdb_get(0, "02:00:00:00:00:78") is None
