"""A node service stops without waiting on a hung etcd's request timeout
while its cluster view waits on etcd for a new snapshot: the real service
and a real etcd of the test's own, hung by SIGSTOP (docs/cluster.md: a hung
etcd does not keep a service from stopping)."""

import os
import signal
import time

import pytest
from test_store_down import ETCD_TIMEOUT_S, service_on_etcd

from tests.etcdhost import have_etcd

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not have_etcd(), reason="needs /usr/bin/etcd (Debian: etcd-server)"),
]


def wait_log(n, *words, timeout=60.0):
    """The first of ``words`` the service's log has within ``timeout``
    seconds, or None."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        log = (n.tmp / "service.log").read_text()
        for w in words:
            if w in log:
                return w
        time.sleep(0.1)
    return None


def test_stops_while_its_cluster_view_waits_on_a_hung_etcd(tmp_path):
    with service_on_etcd(tmp_path, "hsetcd", "hs") as (n, srv, _):
        paused = False
        try:
            n.start()
            assert wait_log(n, '"cluster view synchronised"')
            srv.pause()  # hung: connections accepted, never answered
            paused = True
            # the watch's heartbeat gave up on etcd - or, paused before the
            # watch was made (the view says it is synchronised just before
            # it asks for the watch), the watch could not be made: either
            # way the cluster view asks it for a new snapshot, which waits
            # for the request timeout
            ended = wait_log(n, "cluster watch ended", "etcd: cannot watch")
            assert ended, (n.tmp / "service.log").read_text()[-3000:]
            n.proc.send_signal(signal.SIGTERM)
            # a stop that waited for the snapshot's request would take the
            # request timeout: it does not end within it
            # (subprocess.TimeoutExpired)
            assert n.proc.wait(ETCD_TIMEOUT_S) == 0
            log = (n.tmp / "service.log").read_text()
            assert '"node service stopped"' in log
            # the snapshot's answer, had it come before the process ended, was
            # not taken: nothing is said synchronised after the stop began
            after = log[log.index(ended) :]
            assert '"cluster view synchronised"' not in after, after
        finally:
            if paused:
                srv.resume()
