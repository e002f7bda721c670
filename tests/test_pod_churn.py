"""Pods added and deleted over and over on one node service, as a busy
node sees them (a deployment rolled, a job's pods come and go): nothing
builds up. After a hundred pods the service holds the file descriptors it
held after the first few, the host has the interfaces it had, and the
core, the FDB and the store have only the pod that stays. The real node
service (fallback mode), real veths, network namespaces as pods, each new
pod pinging the one that stays before it is deleted."""

import json
import os
import time

import pytest
from test_service import CT_SPEC, IT_SPEC, ip_of, ping, running_node, sh

from dataplane.api import call

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

CYCLES = 100
WARM_UP = 5  # the first pods make what the service keeps (sockets, caches)


@pytest.fixture
def node(tmp_path):
    with running_node(tmp_path) as n:
        yield n


def links() -> set:
    out = sh("ip", "-o", "link", "show").stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def state(node, watched: set) -> dict:
    """What would build up if a pod's delete left something behind (the
    descriptors first: an API call's own socket may outlive its answer for
    a moment). Of the host's interfaces and namespaces only this node's
    (``watched``: its uplink, its tunnel tap, every pod interface it made):
    other tests make and delete theirs meanwhile."""
    fds = sorted(os.listdir(f"/proc/{node.proc.pid}/fd"), key=int)
    status = call(node.sock, "GET", "/v1/status")
    return {
        "fds": fds,
        "links": links() & watched,
        "ports": sorted(p["name"] for p in status["ports"]),
        "pods": sorted(p["name"] for p in call(node.sock, "GET", "/v1/pods")),
        "fdb": sorted((e["network"], e["mac"]) for e in call(node.sock, "GET", "/v1/fdb")),
        "netns": sorted(n for n in os.listdir("/var/run/netns") if n.startswith(f"dpt{node.tag}")),
    }


def cycle(node, i, b, watched: set):
    """Pod c<i> (two planes) added, its std plane pinging pod b, deleted;
    its host interfaces added to ``watched``."""
    ns = f"dpt{node.tag}c{i}"
    sh("ip", "netns", "add", ns)
    try:
        info = node.api(
            "POST",
            "/v1/pods",
            {
                "name": f"c{node.tag}{i}",
                "netns": f"/var/run/netns/{ns}",
                "spec": json.dumps(CT_SPEC),
            },
        )
        mine = {p["host_ifname"] for p in info["planes"]}
        watched |= mine
        r = ping(ns, ip_of(b), count=1, interval="0.2")
        assert r.returncode == 0, f"pod c{i} -> b: {r.stdout}{r.stderr}"
        call(node.sock, "DELETE", "/v1/pods", query={"name": f"c{node.tag}{i}"})
        left = mine & links()
        assert not left, f"pod c{i} deleted, its host interfaces still there: {left}"
    finally:
        sh("ip", "netns", "del", ns, check=False)


def settled(node, watched: set, want=None) -> dict:
    """The state once two reads 50 ms apart agree (or once it is ``want``)."""
    last = state(node, watched)
    for _ in range(100):
        time.sleep(0.05)
        now = state(node, watched)
        if now == want or (want is None and now == last):
            return now
        last = now
    return now


def test_a_hundred_pods_added_and_deleted_leave_nothing_behind(node):
    # names of this node's own: this test runs beside the other lane's node
    # services in the host's namespace, whose pods' host interfaces are
    # named after pod names such as b
    b = node.pod(f"b{node.tag}", IT_SPEC)
    up = sh("ip", "-o", "link", "show", node.uplink).stdout
    ifindex = up.split(":")[0]
    watched = node.host_links | {node.uplink, f"dpu{node.tag}b", f"dpgso{ifindex}"}
    for i in range(WARM_UP):
        cycle(node, i, b, watched)
    before = settled(node, watched)
    for i in range(WARM_UP, CYCLES):
        cycle(node, i, b, watched)
    after = settled(node, watched, want=before)
    for key in before:
        assert after[key] == before[key], f"{key} after {CYCLES} pods: {after[key]}"
    assert before["pods"] == [f"b{node.tag}"]
    assert node.uplink in before["links"] and node.host_links <= before["links"]
    assert node.proc.poll() is None
