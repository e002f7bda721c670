"""Media's latency inside the core on a shaped uplink, through the node
service (fallback mode, AF_PACKET veth uplink) to a host behind a kernel
VXLAN VTEP: the std plane flooding the uplink adds no latency to media.

The forwarding CPU is shared on purpose (a busy loop pinned to it), as on a
busy host: the worker is off its CPU for milliseconds at a time, and what
the pods send meanwhile reaches the scheduler in bunches, with the shaper's
bucket refilled. The latencies compared are the core's own histogram."""

import os
import re
import subprocess
import sys
import time

import pytest
from nodeparts import MEDIA_NETWORK, sh, underlay_node
from test_service import NETWORKS, scrape, wait_ping

from dataplane.engine import LATENCY_BOUNDS_S

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

STD_HOST, MEDIA_HOST = "192.168.50.200", "192.168.52.200"
SPEC = {
    "pod_type": "ct",
    "network_plane": ["std", "media"],
    "networks": {"std": "net1", "media": "net3"},
}
PLANES = "planes:\n  std: {}\n  control: {}\n  media: {min_rate: 50M}"


def kernel_vteps(ul):
    """Kernel VTEPs of net1 (VNI 101) and net3 (VNI 103) at 10.99.0.2 in the
    underlay namespace, a host address on each."""
    for vni, ip in ((101, STD_HOST), (103, MEDIA_HOST)):
        for cmd in (
            f"link add vx{vni} mtu 1450 type vxlan id {vni} local 10.99.0.2 dstport 4789",
            f"addr add {ip}/24 dev vx{vni}",
            f"link set vx{vni} up",
        ):
            sh("ip", "-n", ul, *cmd.split())
        sh("bridge", "-n", ul, *f"fdb append 00:00:00:00:00:00 dev vx{vni} dst 10.99.0.1".split())


def worker_cpus(pid):
    """The CPUs the service's forwarding worker may run on."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            if "worker" in f.read():
                return os.sched_getaffinity(int(tid))
    raise AssertionError("no worker thread")


def media_snapshot(n):
    """Media's latency histogram (per-bucket counts, from the service's
    /metrics) and every plane's queue counters (from its status)."""
    text = scrape(n)
    cum = [
        float(v)
        for v in re.findall(
            r'^dataplane_plane_latency_seconds_bucket\{(?=[^}]*plane="media")[^}]*\} (\S+)$',
            text,
            re.M,
        )
    ]
    counts = [int(b - a) for a, b in zip([0.0] + cum, cum)]
    queue = {p["name"]: p for p in n.api("GET", "/v1/status")["planes"]}
    return counts, queue


def media_hist(n, pod, std_rate=None, seconds=4):
    """Media's in-core latency (histogram bucket counts) over ``seconds`` of
    10 Mbit/s of 200-byte UDP to the media host, with std flooding UDP at
    ``std_rate`` meanwhile if given; and the planes' queue counters over
    the same time."""
    ips = {p["plane"]: p["ip"] for p in pod["planes"]}
    clients = [["-b", "10M", "-l", "200", "-c", MEDIA_HOST, "-p", "5201", "-B", ips["media"]]]
    if std_rate:
        clients.append(
            ["-b", std_rate, "-l", "1400", "-c", STD_HOST, "-p", "5202", "-B", ips["std"]]
        )
    c0, q0 = media_snapshot(n)
    procs = [
        subprocess.Popen(
            ["ip", "netns", "exec", pod["ns"], "iperf3", "-u", *c, "-t", str(seconds)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for c in clients
    ]
    for p in procs:
        assert p.wait(seconds + 30) == 0
    c1, q1 = media_snapshot(n)
    queue = {
        name: {k: q1[name][k] - q0[name][k] for k in ("enqueued", "sent", "dropped")}
        for name in ("std", "media")
    }
    return {"counts": [b - a for a, b in zip(c0, c1)], "queue": queue}


def p99_bucket(counts):
    """Index of the histogram bucket that holds the 99th percentile."""
    total, acc = sum(counts), 0
    for i, c in enumerate(counts):
        acc += c
        if acc >= 0.99 * total:
            return i
    return len(counts) - 1


@pytest.mark.xfail(
    strict=False,
    reason="on a shared CPU media's bunches find the bucket emptied by std: "
    "p99 rises to 500 us-5 ms (docs/planes.md, A shaped uplink on a shared CPU)",
)
def test_std_overload_adds_no_media_latency_on_a_shared_cpu(tmp_path):
    nets = NETWORKS + MEDIA_NETWORK
    with underlay_node(
        tmp_path, nets, ["net1", "net3"], uplink_rate="100M", extra=PLANES, vtep="learning: true"
    ) as (n, ul):
        kernel_vteps(ul)
        pod = n.pod("m", SPEC)
        wait_ping(pod["ns"], MEDIA_HOST)
        wait_ping(pod["ns"], STD_HOST)
        servers = [
            subprocess.Popen(
                ["ip", "netns", "exec", ul, "iperf3", "-s", "-p", port],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for port in ("5201", "5202")
        ]
        # the worker's CPU shared with a thread that never sleeps
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        os.sched_setaffinity(hog.pid, worker_cpus(n.proc.pid))
        try:
            time.sleep(0.5)
            hist = {}
            for phase, std_rate in (("alone", None), ("std flood", "300M")):
                hist[phase] = media_hist(n, pod, std_rate)
        finally:
            hog.kill()
            hog.wait()
            for s in servers:
                s.terminate()
                s.wait(10)
    alone, flood = hist["alone"], hist["std flood"]
    print({k: (v["counts"], v["queue"]) for k, v in hist.items()})
    # std was overloaded (its queue dropped), media lost nothing
    assert flood["queue"]["std"]["dropped"] > 0, flood["queue"]
    for h in (alone, flood):
        assert h["queue"]["media"]["dropped"] == 0, h["queue"]
        assert sum(h["counts"]) >= 0.9 * 4 * 10e6 / (200 * 8), h["counts"]
    # media's p99 with std flooding the uplink: in the same low range as
    # with std idle, at most one bucket (a 1-2-5 step) higher, and within
    # 100 us
    a, f = p99_bucket(alone["counts"]), p99_bucket(flood["counts"])
    assert f <= max(a + 1, LATENCY_BOUNDS_S.index(100e-6)), (
        LATENCY_BOUNDS_S[a],
        LATENCY_BOUNDS_S[min(f, len(LATENCY_BOUNDS_S) - 1)],
    )
