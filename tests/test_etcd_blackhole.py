"""A watch whose stream's packets are dropped without a word (the state of
its connection lost in a NAT or a load balancer, a member's host gone
behind an address that still answers): it ends, and the node takes a new
snapshot, while the heartbeat's requests - on other connections - are
still answered. A real etcd in a network namespace of the test, the watch
in another, netfilter in etcd's namespace dropping the stream's packets
only."""

import os
import subprocess
import sys
import uuid

import pytest
from clusterhost import NetnsEtcd

from tests.etcdhost import have_etcd

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(not have_etcd(), reason="needs /usr/bin/etcd (Debian: etcd-server)"),
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def two_namespaces():
    tag = uuid.uuid4().hex[:6]
    e, c = f"dpbhe{tag}", f"dpbhc{tag}"
    made = []
    try:
        for ns in (e, c):
            sh("ip", "netns", "add", ns)
            made.append(ns)
        sh("ip", "link", "add", f"bhe{tag}", "netns", e, "type", "veth", "peer", "name",
           f"bhc{tag}", "netns", c)  # fmt: skip
        for ns, dev, addr in ((e, f"bhe{tag}", "10.77.0.1/24"), (c, f"bhc{tag}", "10.77.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield e, c
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_a_watch_whose_stream_is_cut_off_without_a_word_ends(two_namespaces):
    e, c = two_namespaces
    srv = NetnsEtcd(e, "10.77.0.1", name="dpblackhole").start()
    probe = None
    try:
        probe = subprocess.Popen(
            ["ip", "netns", "exec", c, sys.executable, "-m", "tests.watchprobe", srv.url,
             f"/bh-{uuid.uuid4().hex[:6]}", "1", "20"],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = probe.stdout.readline().split()
        assert line[:1] == ["port"], line
        # etcd's namespace drops what comes from the stream's port: its
        # keepalive probes go unanswered; the heartbeat's requests (other
        # connections, other ports) are answered
        sh("ip", "netns", "exec", e, "iptables", "-I", "INPUT", "-p", "tcp", "--sport", line[1],
           "-j", "DROP")  # fmt: skip
        probe.stdin.write("go\n")
        probe.stdin.flush()
        out = probe.stdout.readline().strip()
        # without keepalives on the stream: 'running' (the watch would wait
        # for ever, the cluster view frozen)
        assert out.startswith("ended "), out
    finally:
        if probe is not None:
            probe.kill()
            probe.wait()
        srv.stop()
