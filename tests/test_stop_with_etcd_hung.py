"""A node service stops without waiting on a hung etcd's request timeout
while its cluster view waits on etcd for a new snapshot: the real service
and a real etcd of the test's own, hung by SIGSTOP (docs/cluster.md: a hung
etcd does not keep a service from stopping)."""

import os
import signal
import time
import uuid

import pytest
from test_service import Node

from tests.etcdhost import EtcdServer, have_etcd

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not have_etcd(), reason="needs /usr/bin/etcd (Debian: etcd-server)"),
]

#: etcd's request timeout in the service (dataplane.store.etcdgw.DEFAULT_TIMEOUT):
#: a stop that waited for a request would take at least this long
ETCD_TIMEOUT_S = 10.0


def wait_log(n, words, timeout=60.0) -> bool:
    """Whether the service's log has ``words`` within ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if words in (n.tmp / "service.log").read_text():
            return True
        time.sleep(0.1)
    return False


def test_stops_while_its_cluster_view_waits_on_a_hung_etcd(tmp_path):
    srv = EtcdServer("hsetcd").start()
    prefix = f"/hs{uuid.uuid4().hex[:6]}"
    n = Node(
        tmp_path,
        uuid.uuid4().hex[:5],
        extra=f"store: {{kind: etcd, endpoints: ['{srv.url}'], prefix: {prefix}}}",
    )
    paused = False
    try:
        n.start()
        assert wait_log(n, '"cluster view synchronised"')
        srv.pause()  # hung: connections accepted, never answered
        paused = True
        # the watch's heartbeat gave up on etcd: the cluster view asks it
        # for a new snapshot, which waits for the request timeout
        assert wait_log(n, "cluster watch ended")
        t = time.monotonic()
        n.proc.send_signal(signal.SIGTERM)
        assert n.proc.wait(60) == 0
        took = time.monotonic() - t
        assert took < ETCD_TIMEOUT_S, took
        log = (n.tmp / "service.log").read_text()
        assert '"node service stopped"' in log
        # the snapshot's answer, had it come before the process ended, was
        # not taken: nothing is said synchronised after the stop began
        after = log[log.index("cluster watch ended") :]
        assert '"cluster view synchronised"' not in after, after
    finally:
        if paused:
            srv.resume()
        n.cleanup()
        srv.close()
