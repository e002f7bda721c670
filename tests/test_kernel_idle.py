"""The worker's opt-in idle sleep (``idle_sleep_us``, csrc/dp_idle.c) on real
parts: a node service whose worker sleeps when idle still carries ping,
TCP (data checked by SHA-256) and 64-byte UDP between two kernel pods and to
a host behind the kernel's VXLAN VTEP, and its ``idle_sleeps`` counter (the
``dataplane_worker_idle_sleeps`` metric) shows the sleeps; a node without
the setting never sleeps, and yields its CPU when idle instead
(``idle_yields``). The fabric is the one of test_kernel_pods.py.
"""

import os
import re
import sys

import pytest
import test_kernel_pods as kp

from dataplane.config import parse_config
from dataplane.errors import ConfigError

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, DPDK EAL)"),
]

fabric = kp.fabric
METRICS_PORT = 9474


def node_with(fab, n, remotes, extra, vtep_extra=""):
    """Node n of fab with ``extra`` config lines, ``vtep_extra`` keys in its
    vtep mapping and metrics on 127.0.0.1 (inside its namespace)."""
    node = kp.Node(fab, n, remotes, fab.mtu)
    text = node.cfg.read_text().replace(
        "metrics: {listen: null}", f"metrics: {{listen: '127.0.0.1:{METRICS_PORT}'}}"
    )
    if vtep_extra:
        text = text.replace("uplink: uplink0,", f"uplink: uplink0, {vtep_extra},")
        assert vtep_extra in text, text
    node.cfg.write_text(text + extra)
    fab.nodes[n] = node
    node.start()
    return node


def metrics_text(node):
    """The node's /metrics page, fetched inside its namespace (node_with)."""
    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    get = (
        f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
    )
    r = kp.nsx(node.ns, sys.executable, "-c", get, timeout=30)
    assert r.returncode == 0, f"metrics of node{node.n}: {r.stderr}"
    return r.stdout


def idle_count(node, what="sleeps"):
    """dataplane_worker_idle_<what>_total of the node's worker(s), summed."""
    name = f"dataplane_worker_idle_{what}_total"
    found = re.findall(rf"^{name}\{{[^}}]*\}} (\S+)$", metrics_text(node), re.M)
    assert found, f"no {name} in the metrics"
    return sum(float(x) for x in found)


def test_traffic_flows_while_the_worker_sleeps_when_idle(fabric):
    fab = fabric()
    node = node_with(fab, 1, [kp.HOST_VTEP], "idle_sleep_us: 2000\n")
    vm = fab.kernel_host(["10.99.0.1"])
    a, b = fab.pod(1, "a", kp.SUBNET + "11"), fab.pod(1, "b", kp.SUBNET + "12")
    kp.reach(a["ns"], b["ip"], "pod a -> pod b")
    kp.reach(a["ns"], kp.VM_IP, "pod a -> kernel-VTEP host")
    s0 = idle_count(node)
    # pings 50 ms apart: every one finds the worker asleep and wakes it
    r = kp.ping(a["ns"], b["ip"], count=20, interval="0.05")
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout
    s1 = idle_count(node)
    assert s1 > s0, f"idle_sleeps did not grow while idle between pings: {s0} -> {s1}"
    kp.tcp_transfer(fab, "pod a -> pod b, idle sleep on", b["ns"], b["ip"], a["ns"])
    kp.tcp_transfer(fab, "pod a -> vtep host, idle sleep on", vm, kp.VM_IP, a["ns"])
    kp.tcp_transfer(fab, "vtep host -> pod a, idle sleep on", a["ns"], a["ip"], vm)
    kp.udp_count(fab, "pod a -> pod b, idle sleep on", b["ns"], b["ip"], a["ns"])
    print(f"idle sleeps: {s0:.0f} before the pings, {idle_count(node):.0f} after the transfers")
    # sleeping, it never yields
    assert idle_count(node, "yields") == 0


def test_the_worker_spins_without_the_setting(fabric):
    fab = fabric()
    node = node_with(fab, 1, [], "")
    a, b = fab.pod(1, "a", kp.SUBNET + "11"), fab.pod(1, "b", kp.SUBNET + "12")
    kp.reach(a["ns"], b["ip"], "pod a -> pod b")
    y0 = idle_count(node, "yields")
    r = kp.ping(a["ns"], b["ip"], count=5, interval="0.05")
    assert r.returncode == 0, r.stdout
    assert idle_count(node) == 0
    # idle between the pings, it yields its CPU instead
    y1 = idle_count(node, "yields")
    assert y1 > y0, f"idle_yields did not grow while idle between pings: {y0} -> {y1}"


@pytest.mark.parametrize(
    "value, message",
    [
        (-1, "idle_sleep_us: -1 out of range 0..100000"),
        (100001, "idle_sleep_us: 100001 out of range 0..100000"),
        ("50", "idle_sleep_us: '50' is not an integer"),
    ],
)
def test_idle_sleep_us_out_of_range_is_refused(value, message):
    cfg = {"vtep": {"address": "10.99.0.1/24", "uplink": "eth1"}, "idle_sleep_us": value}
    with pytest.raises(ConfigError) as e:
        parse_config(cfg)
    assert message in str(e.value)


def test_idle_sleep_us_is_read_and_written_back():
    cfg = {"vtep": {"address": "10.99.0.1/24", "uplink": "eth1"}, "idle_sleep_us": 500}
    c = parse_config(cfg)
    assert c.idle_sleep_us == 500
    assert parse_config(c.to_dict()).idle_sleep_us == 500
    assert parse_config({"vtep": cfg["vtep"]}).idle_sleep_us == 0


@pytest.mark.parametrize(
    "extra, vtep_extra",
    [
        # told to keep its CPU
        ("idle_yield: false\n", ""),
        # a shaped port: its scheduler lets queued frames out on time,
        # whether frames arrive, so the worker neither yields nor sleeps
        ("idle_sleep_us: 2000\n", "uplink_rate: 1000000000"),
    ],
    ids=["idle_yield_off", "shaped_uplink"],
)
def test_the_worker_neither_yields_nor_sleeps(fabric, extra, vtep_extra):
    fab = fabric()
    node = node_with(fab, 1, [], extra, vtep_extra)
    a, b = fab.pod(1, "a", kp.SUBNET + "11"), fab.pod(1, "b", kp.SUBNET + "12")
    kp.reach(a["ns"], b["ip"], "pod a -> pod b")
    r = kp.ping(a["ns"], b["ip"], count=5, interval="0.05")
    assert r.returncode == 0, r.stdout
    assert idle_count(node, "yields") == 0
    assert idle_count(node) == 0


def test_idle_yield_is_read_checked_and_written_back():
    vtep = {"address": "10.99.0.1/24", "uplink": "eth1"}
    assert parse_config({"vtep": vtep}).idle_yield is True
    c = parse_config({"vtep": vtep, "idle_yield": False})
    assert c.idle_yield is False
    assert parse_config(c.to_dict()).idle_yield is False
    with pytest.raises(ConfigError) as e:
        parse_config({"vtep": vtep, "idle_yield": "no"})
    assert "idle_yield: 'no' is not true or false" in str(e.value)
