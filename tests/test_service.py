"""The node service on one node, in fallback mode, with network namespaces as
pods: real veths, the core's AF_PACKET driver, the control API over its unix
socket, the CLI, restarts, and /metrics scraped by a real Prometheus."""

import contextlib
import ipaddress
import json
import os
import re
import select
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid

import pytest
from nodeparts import MEDIA_NETWORK, free_port, sh, start_prometheus, underlay_node
from test_tunnel_tap import kernel_takes_tunnel_gso

from dataplane.api import APIError

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CT_SPEC = {
    "pod_type": "ct",
    "network_plane": ["std", "control"],
    "networks": {"std": "net1", "control": "net2"},
}
IT_SPEC = {"pod_type": "it", "network_plane": ["std"], "networks": {"std": "net1"}}
NETWORKS = """  - {name: net1, vni: 101, plane: std, subnet: 192.168.50.0/24, gateway: 192.168.50.1}
  - {name: net2, vni: 102, plane: control, subnet: 192.168.51.0/24}"""


class Node:
    """A node service process with its own uplink veth, state dir and socket."""

    def __init__(self, tmp, tag, extra="", networks=None):
        self.tmp = tmp
        self.tag = tag
        self.uplink = f"dpu{tag}a"
        self.metrics_port = free_port()
        self.sock = str(tmp / "api.sock")
        self.cfg = tmp / "node.yaml"
        self.proc = None
        self.netns = []
        self.host_links = set()  # host ends of the pods' veths
        sh("ip", "link", "add", self.uplink, "type", "veth", "peer", "name", f"dpu{tag}b")
        sh("ip", "link", "set", self.uplink, "up")
        self.cfg.write_text(f"""
node: node-{tag}
mode: fallback
lcores: [0, 1]
memory_mb: 256
vtep: {{address: 10.99.0.1/24, uplink: {self.uplink}}}
networks:
{networks or NETWORKS}
{extra}
state_dir: {tmp}/state
api_socket: {self.sock}
metrics: {{listen: "127.0.0.1:{self.metrics_port}"}}
""")

    def cli(self, *args, check=True):
        r = subprocess.run(
            [sys.executable, "-m", "dataplane.cli", *args, "--socket", self.sock],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"dataplane {' '.join(args)}: {r.stdout} {r.stderr}")
        return r

    START_TRIES = 300  # looks for the API socket, 50 ms apart

    def command(self):
        """The service's command line."""
        return [sys.executable, "-m", "dataplane.cli", "run", "-c", str(self.cfg)]

    def start(self):
        # the metrics port was picked free by binding and closing it: a
        # process of the other test lane may have taken it since, and the
        # service then refuses to start - again, on another free port
        for attempt in range(3):
            log_path = self.tmp / "service.log"
            seen = log_path.stat().st_size if log_path.exists() else 0
            self.log = open(log_path, "a")
            self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=self.log, cwd=ROOT)
            for _ in range(self.START_TRIES):
                if os.path.exists(self.sock):
                    return
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("service did not open its API socket")
            text = log_path.read_text()
            taken = f"metrics.listen: 127.0.0.1:{self.metrics_port}: Address already in use"
            if taken not in text[seen:] or attempt == 2:
                raise AssertionError(f"service exited: {text}")
            self.log.close()
            port = free_port()
            self.cfg.write_text(self.cfg.read_text().replace(f":{self.metrics_port}", f":{port}"))
            self.metrics_port = port

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def api(self, method, endpoint, body=None):
        from dataplane.api import call

        return call(self.sock, method, endpoint, body)

    def pod(self, name, spec):
        ns = f"dpt{self.tag}{name}"
        sh("ip", "netns", "add", ns)
        self.netns.append(ns)
        info = self.api(
            "POST",
            "/v1/pods",
            {"name": name, "netns": f"/var/run/netns/{ns}", "spec": json.dumps(spec)},
        )
        info["ns"] = ns
        self.host_links |= {p["host_ifname"] for p in info["planes"] if p.get("host_ifname")}
        return info

    def cleanup(self):
        self.stop()
        # the service leaves pod interfaces in place (pods keep them across a
        # restart): delete them here, synchronously, before the namespaces,
        # whose veths the kernel would otherwise destroy in the background,
        # still there when the next test gives a pod the same name
        for link in sorted(self.host_links):
            sh("ip", "link", "del", link, check=False)
        for ns in self.netns:
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.uplink, check=False)


@contextlib.contextmanager
def running_node(tmp, extra="", networks=None):
    """A started :class:`Node` (config lines ``extra`` added; ``networks``:
    its own network lines), cleaned up after: what the test files' ``node``
    fixtures hold."""
    n = Node(tmp, uuid.uuid4().hex[:5], extra=extra, networks=networks)
    try:
        n.start()
        yield n
    finally:
        n.cleanup()


def run_cli(*args):
    """``dataplane ARGS`` as a user runs it (no --socket added)."""
    return subprocess.run(
        [sys.executable, "-m", "dataplane.cli", *args], capture_output=True, text=True, cwd=ROOT
    )


@pytest.fixture
def node(tmp_path):
    with running_node(tmp_path) as n:
        yield n


def test_start_gives_no_advice_for_a_config_that_fits(node):
    """The node's config uses CPUs 0 and 1 and 256 MB: no warning at start
    that they are absent or too many, as once there was - the advice was
    taken after DPDK's EAL had narrowed the main thread to CPU 0."""
    assert {0, 1} <= os.sched_getaffinity(0), "the test machine has CPUs 0 and 1"
    log = node.tmp / "service.log"
    for _ in range(200):  # logged just after the API opens (start returns then)
        if "node service started" in log.read_text():
            break
        time.sleep(0.05)
    text = log.read_text()
    assert "node service started" in text, text
    assert "lcores:" not in text and "memory_mb:" not in text, text


def test_the_network_never_gives_a_pod_the_vtep_address(tmp_path):
    """A network whose subnet holds the node's VTEP address (10.99.0.1 in
    10.99.0.0/24, as on a flat network): a pod given its address by the
    network does not get it - the underlay's neighbours of the VTEP would
    be taught the pod's MAC for it."""
    nets = "  - {name: net1, vni: 101, plane: std, subnet: 10.99.0.0/24}"
    with running_node(tmp_path, networks=nets) as n:
        got = n.pod("a", IT_SPEC)["planes"][0]["ip"]
        assert got != "10.99.0.1", got


def uplink_problem(node, words, tries=200):
    """The service's uplink_problem once it holds ``words`` (None: once it
    is clear); the service looks once a second."""
    for _ in range(tries):
        p = node.api("GET", "/v1/status")["uplink_problem"]
        if (p is None) if words is None else (p and words in p):
            return p
        time.sleep(0.05)
    raise AssertionError(f"uplink_problem stayed {p!r}, expected {words!r}")


def ip_of(info, plane="std"):
    return next(p["ip"] for p in info["planes"] if p["plane"] == plane)


def ping(ns, ip, count=3, interval="0.2"):
    return subprocess.run(
        ["ip", "netns", "exec", ns, "ping", "-c", str(count), "-i", interval, "-W", "1", ip],
        capture_output=True,
        text=True,
    )


def host_links():
    return set(re.findall(r"^\d+: ([^:@]+)", sh("ip", "-o", "link").stdout, re.M))


def test_two_pods_ping_through_the_dataplane(node):
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", IT_SPEC)
    r = ping(a["ns"], ip_of(b))
    assert r.returncode == 0, r.stdout + r.stderr
    st = node.api("GET", "/v1/status")
    net1 = next(n for n in st["networks"] if n["name"] == "net1")
    assert net1["pods"] == 2 and net1["local_packets"] >= 6
    # the pod's interfaces are what the spec asked for
    links = sh("ip", "-n", a["ns"], "-o", "addr").stdout
    assert "eth0" in links and "control" in links
    assert re.search(r"eth0\s+inet 192\.168\.50\.\d+/24", links)
    routes = sh("ip", "-n", a["ns"], "route").stdout
    assert "default via 192.168.50.1 dev eth0" in routes
    mtu = sh("ip", "-n", a["ns"], "-o", "link", "show", "eth0").stdout
    assert "mtu 1450" in mtu  # underlay 1500 - 50


def test_networks_are_isolated(node):
    a = node.pod("a", CT_SPEC)
    c = node.pod("c", {"pod_type": "it", "network_plane": ["std"], "networks": {"std": "net1"}})
    other = node.pod(
        "o",
        {
            "pod_type": "ct",
            "network_plane": ["std", "control"],
            "networks": {"std": "net1", "control": "net2"},
        },
    )
    # a's std interface is on net1; put net2's subnet on it by hand: its ARP
    # is flooded inside net1 only, so net2's pod never answers (o answers ARP
    # only on the interface that has the address, as a host on two planes should)
    sh("ip", "netns", "exec", other["ns"], "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1")
    sh("ip", "-n", a["ns"], "route", "add", "192.168.51.0/24", "dev", "eth0", "metric", "5")
    sh("ip", "-n", a["ns"], "link", "set", "control", "down")
    r = ping(a["ns"], ip_of(other, "control"), count=2)
    assert r.returncode != 0
    assert ping(a["ns"], ip_of(c)).returncode == 0  # net1 still works


def test_pod_del_leaves_nothing_behind(node):
    a = node.pod("a", CT_SPEC)
    mine = {p["host_ifname"] for p in a["planes"]}
    links = host_links()
    assert len(mine) == 2 and mine <= links
    node.cli("pod", "del", "a")
    # the kernel may take a moment over veths whose peer's namespace went
    # (which is also why a snapshot from before the pod could still hold
    # links of an earlier test's pods)
    for _ in range(100):
        if not mine & host_links():
            break
        time.sleep(0.05)
    assert not mine & host_links()
    assert host_links() <= links  # and nothing new was left
    inside = sh("ip", "-n", a["ns"], "-o", "link").stdout
    assert "eth0" not in inside and "control" not in inside
    assert node.api("GET", "/v1/pods") == []
    # the next pod (another name, so another MAC) does not get its addresses
    # at once: it gets the next ones (peers may still have a's MAC for them)
    nxt = node.pod("a2", CT_SPEC)
    for plane in ("std", "control"):
        assert ip_of(nxt, plane) == str(ipaddress.IPv4Address(ip_of(a, plane)) + 1)
    # but they are free: asked for, they are given
    ips = {"std": ip_of(a), "control": ip_of(a, "control")}
    again = node.pod("a3", dict(CT_SPEC, ips=ips))
    assert (ip_of(again), ip_of(again, "control")) == (ip_of(a), ip_of(a, "control"))


def test_bad_specs_are_refused_without_side_effects(node):
    before = host_links()
    ns = f"dpt{node.tag}bad"
    sh("ip", "netns", "add", ns)
    node.netns.append(ns)
    cases = [
        (
            '{"pod_type": "ct", "network_plane": ["std", "control"], '
            '"networks": ["std": "net1", "control": "net2"]}',
            "mapping",
        ),
        (
            json.dumps(
                {
                    "pod_type": "ct",
                    "network_plane": ["std", "voice"],
                    "networks": {"std": "net1", "voice": "net2"},
                }
            ),
            "voice",
        ),
        (
            json.dumps(
                {"pod_type": "ct", "network_plane": ["std", "control"], "networks": {"std": "net1"}}
            ),
            "control",
        ),
        (
            json.dumps({"pod_type": "it", "network_plane": ["std"], "networks": {"std": "net9"}}),
            "net9",
        ),
    ]
    for spec, word in cases:
        r = node.cli(
            "pod", "add", "bad", "--netns", f"/var/run/netns/{ns}", "--spec", spec, check=False
        )
        assert r.returncode != 0 and word in (r.stdout + r.stderr), (spec, r.stderr)
    r = node.cli(
        "pod",
        "add",
        "bad",
        "--netns",
        "/var/run/netns/nope",
        "--spec",
        json.dumps(IT_SPEC),
        check=False,
    )
    assert r.returncode != 0 and "nope" in r.stderr
    assert host_links() <= before  # nothing new (an earlier test's may still be going)
    assert node.api("GET", "/v1/pods") == []
    assert "eth0" not in sh("ip", "-n", ns, "-o", "link").stdout


def test_restart_replays_state(node):
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", IT_SPEC)
    assert ping(a["ns"], ip_of(b)).returncode == 0
    pods_before = node.api("GET", "/v1/pods")
    # a ping at 100/s runs across a SIGTERM + restart: count what is lost
    p = subprocess.Popen(
        ["ip", "netns", "exec", a["ns"], "ping", "-i", "0.01", "-c", "600", "-W", "1", ip_of(b)],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    node.stop()
    # pods keep their interfaces and addresses while the service is down
    assert "192.168.50." in sh("ip", "-n", a["ns"], "-o", "addr").stdout
    node.start()
    out, _ = p.communicate(timeout=60)
    sent, recv = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
    print(f"restart: {sent - recv} of {sent} pings at 10 ms lost")
    pods_after = node.api("GET", "/v1/pods")

    def strip(ps):
        return [
            {**x, "planes": [{k: v for k, v in pl.items() if k != "port"} for pl in x["planes"]]}
            for x in ps
        ]

    assert strip(pods_after) == strip(pods_before)  # same MACs, IPs, names
    # the core forwarded before the replay: each pod as soon as it was back
    log = [json.loads(ln) for ln in (node.tmp / "service.log").read_text().splitlines()[-40:]
           if ln.startswith("{")]  # fmt: skip
    msgs = [e.get("msg") for e in log]
    last = len(msgs) - 1 - msgs[::-1].index("core forwarding")
    assert log[last]["pods_to_replay"] == 2
    assert msgs[last:].count("replay: pod re-attached") == 2, msgs
    assert ping(a["ns"], ip_of(b)).returncode == 0
    c = node.pod("c", IT_SPEC)  # nothing allocated twice
    assert ip_of(c) not in {ip_of(a), ip_of(b)}
    assert recv > 0


def _std_rate_bps(n, seconds=1.2):
    """The std plane's rate out of the shaped uplink (bit/s on the wire)
    while a pod floods UDP at the kernel-VTEP host, from its queue's sent
    counter over ``seconds`` in the middle of the flood."""
    frame_bits = (1000 + 8 + 20 + 14 + 50 + 24) * 8  # payload .. outer headers, wire overhead
    ns = n.pods_ns["a"]
    flood = subprocess.Popen(
        [
            "ip", "netns", "exec", ns, sys.executable, "-c",
            "import socket, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "t = time.monotonic() + %f\n"
            "while time.monotonic() < t:\n"
            "    try: s.sendto(bytes(1000), ('%s', 9))\n"
            "    except OSError: pass\n" % (seconds + 1.5, HOST_IP),
        ]
    )  # fmt: skip
    try:
        time.sleep(0.7)

        def sent():
            st = n.api("GET", "/v1/status")
            return next(p["sent"] for p in st["planes"] if p["name"] == "std")

        s0, t0 = sent(), time.monotonic()
        time.sleep(seconds)
        s1, t1 = sent(), time.monotonic()
    finally:
        flood.wait(30)
    return (s1 - s0) * frame_bits / (t1 - t0)


def test_reload_takes_new_rates_while_forwarding(tmp_path):
    """``dataplane reload`` (and SIGHUP): the service reads its file again
    and takes the uplink shaper's and the planes' rates while it forwards -
    the std plane's cap measured before and after, the pods untouched, no
    queued frame flushed. A file that changes anything else, or does not
    validate, changes nothing and says what."""
    planes = "planes:\n  std: {priority: 0, max_rate: 4M}\n  control: {priority: 2}\n"
    with underlay_node(tmp_path, NETWORKS, ["net1"], uplink_rate="100M", extra=planes) as (
        n,
        ul,
    ):
        kernel_vtep(ul)
        a = n.pod("a", IT_SPEC)
        n.pods_ns = {"a": a["ns"]}
        wait_ping(a["ns"], HOST_IP)
        before = _std_rate_bps(n)
        assert 0.6 * 4e6 <= before <= 1.15 * 4e6, before

        def edit(old, new):
            text = n.cfg.read_text()
            assert old in text
            n.cfg.write_text(text.replace(old, new))

        def plane(name):
            st = n.api("GET", "/v1/status")
            return st, next(p for p in st["planes"] if p["name"] == name)

        edit("max_rate: 4M}", "max_rate: 12M}")
        edit("uplink_rate: 100M}", "uplink_rate: 200M}")
        edit("control: {priority: 2}", "control: {priority: 2, min_rate: 10M}")
        out = n.cli("reload").stdout
        assert out.splitlines() == [
            "vtep.uplink_rate: 100000000 -> 200000000",
            "planes.std.max_rate: 4000000 -> 12000000",
            "planes.control.min_rate: 0 -> 10000000",
        ], out
        st, std = plane("std")
        assert st["uplink_rate_bps"] == 200_000_000 and std["max_rate_bps"] == 12_000_000
        assert plane("control")[1]["min_rate_bps"] == 10_000_000
        after = _std_rate_bps(n)
        assert 0.6 * 12e6 <= after <= 1.15 * 12e6, (before, after)
        print(f"reload: std plane {before / 1e6:.1f} -> {after / 1e6:.1f} Mbit/s")
        assert st["drops"].get("queue_flushed", 0) == 0
        assert [p["name"] for p in n.api("GET", "/v1/pods")] == [a["name"]]
        log = (n.tmp / "service.log").read_text()
        assert '"msg": "configuration reloaded"' in log and '"planes.std.max_rate": [4000000' in log

        # rates that a start or a check would warn of: said by the reload
        # too, and by its dry run before it
        edit("uplink_rate: 200M}", "uplink_rate: 5M}")
        dry = n.cli("reload", "--dry-run").stdout
        assert "warning: planes: the min_rate of all planes add up to 10000000" in dry, dry
        out = n.cli("reload").stdout
        assert out.splitlines()[0] == "vtep.uplink_rate: 200000000 -> 5000000", out
        assert (
            "warning: planes.std.max_rate: 12000000 bit/s is above vtep.uplink_rate "
            "(5000000 bit/s)" in out
        ), out
        assert "warning: planes: the min_rate of all planes add up to 10000000 bit/s" in out, out
        # the shaper taken away while its queues hold frames: they are
        # dropped (queue_flushed), and the reload says how many
        flood = subprocess.Popen(
            ["ip", "netns", "exec", a["ns"], sys.executable, "-c",
             "import socket, time\n"
             "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             "t = time.monotonic() + 3\n"
             "while time.monotonic() < t:\n"
             "    try: s.sendto(bytes(1000), ('%s', 9))\n"
             "    except OSError: pass\n" % HOST_IP]
        )  # fmt: skip
        try:
            for _ in range(100):  # std's queue filled (5 Mbit/s of a flood)
                if plane("std")[1]["queue_depth"] > 100:
                    break
                time.sleep(0.05)
            f0 = n.api("GET", "/v1/status")["drops"].get("queue_flushed", 0)
            edit(", uplink_rate: 5M}", "}")
            out = n.cli("reload").stdout
        finally:
            flood.wait(30)
        flushed = n.api("GET", "/v1/status")["drops"].get("queue_flushed", 0) - f0
        assert (
            flushed > 100
            and (f"warning: vtep.uplink_rate: the shaper taken away dropped the {flushed} frames")
            in out
        ), (flushed, out)
        edit(f"uplink: {n.uplink}}}", f"uplink: {n.uplink}, uplink_rate: 200M}}")
        assert n.cli("reload").stdout.splitlines() == ["vtep.uplink_rate: 0 -> 200000000"]

        # anything else changed: refused, named, nothing applied
        edit("max_rate: 12M}", "max_rate: 32M}")
        edit("vni: 101,", "vni: 111,")
        r = n.cli("reload", check=False)
        assert r.returncode != 0
        assert "not reloaded, nothing changed: networks.net1.vni changes only with a restart" in (
            r.stderr
        ), r.stderr
        assert plane("std")[1]["max_rate_bps"] == 12_000_000
        # a file that does not validate: its error, nothing applied
        edit("vni: 111,", "vni: 101,")
        edit("max_rate: 32M}", "max_rate: fast}")
        r = n.cli("reload", check=False)
        assert r.returncode != 0 and "planes.std.max_rate" in r.stderr, r.stderr
        assert plane("std")[1]["max_rate_bps"] == 12_000_000
        # another file named: the service reads only its own, and says so
        other = n.tmp / "other.yaml"
        other.write_text(n.cfg.read_text().replace("max_rate: fast}", "max_rate: 20M}"))
        r = n.cli("reload", "-c", str(other), check=False)
        assert r.returncode != 0
        assert (
            f"reload: this service reads {n.cfg}, the file it was started from, not {other}: "
            "nothing changed"
        ) in r.stderr, r.stderr
        assert plane("std")[1]["max_rate_bps"] == 12_000_000

        # SIGHUP (systemd's reload with ExecReload=kill -HUP, a closed
        # terminal): the same, from the service's main loop; never a stop
        edit("max_rate: fast}", "max_rate: 32M}")
        n.proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            if plane("std")[1]["max_rate_bps"] == 32_000_000:
                break
            time.sleep(0.05)
        assert plane("std")[1]["max_rate_bps"] == 32_000_000
        edit("max_rate: 32M}", "max_rate: 0x}")
        n.proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            if "SIGHUP: " in (n.tmp / "service.log").read_text():
                break
            time.sleep(0.05)
        log = (n.tmp / "service.log").read_text()
        assert "SIGHUP: " in log and "planes.std.max_rate" in log, log[-2000:]
        assert n.proc.poll() is None
        assert plane("std")[1]["max_rate_bps"] == 32_000_000
        assert ping(a["ns"], HOST_IP).returncode == 0


def test_a_burst_of_pod_adds_is_served(node):
    """More clients at once than the service serves (MAX_CONNECTIONS) and
    than socketserver's default listen queue: each connects, a busy one is
    told so (503, not a reset connection) and asks again; every pod is added,
    each with its own address."""
    from dataplane.api import MAX_CONNECTIONS, call

    n = MAX_CONNECTIONS + 8
    names = [f"burst{i}" for i in range(n)]
    for name in names:
        sh("ip", "netns", "add", f"dpt{node.tag}{name}")
        node.netns.append(f"dpt{node.tag}{name}")
    results, errors = {}, []

    def add(name):
        body = {
            "name": name,
            "netns": f"/var/run/netns/dpt{node.tag}{name}",
            "spec": json.dumps(IT_SPEC),
        }
        try:
            results[name] = call(node.sock, "POST", "/v1/pods", body, busy_wait=60)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{name}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=add, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for info in results.values():
        node.host_links |= {p["host_ifname"] for p in info["planes"]}
    assert not errors, errors
    ips = [ip_of(results[name]) for name in names]
    assert len(set(ips)) == n, ips
    assert {p["name"] for p in node.api("GET", "/v1/pods")} == set(names)


def test_api_socket_is_private(node):
    assert stat.S_IMODE(os.stat(node.sock).st_mode) == 0o600


def status_tables(out):
    """The tables of a ``dataplane status`` text: {first header word: (the
    header line, its rows)}."""
    tables, cur = {}, None
    for line in out.splitlines():
        if re.match(r"  [A-Z]+  ", line):
            cur = tables[line.split()[0]] = (line, [])
        elif cur is not None and re.match(r"  \S", line) and not re.match(r"  (fdb|plane) ", line):
            cur[1].append(line)
        else:
            cur = None
    return tables


def table_cells(header, rows):
    """Each row's cells, cut where the header's columns start - after
    checking that every cell starts exactly there: preceded by a space
    (the cell before ended) and not by one (nothing is shifted)."""
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    out = []
    for row in rows:
        for i, at in enumerate(starts):
            assert len(row) > at and row[at] != " " and row[at - 1] == " ", (header, row, i)
        ends = starts[1:] + [len(row)]
        cells = [row[a:b].strip() for a, b in zip(starts, ends)]
        # a cell never holds a space, but the free text after the last column
        assert all(" " not in c for c in cells[:-1]), (header, row)
        out.append(cells)
    return out


def test_status_cli(node):
    a = node.pod("a", CT_SPEC)
    out = node.cli("status").stdout
    tables = status_tables(out)
    nets = table_cells(*tables["NETWORK"])
    assert [n[:3] for n in nets] == [["net1", "101", "std"], ["net2", "102", "control"]], out
    ports = table_cells(*tables["PORT"])
    assert [p[2:6] for p in ports] == [
        ["-", "-", "uplink", "-"],
        ["a", "std", "pod", "net1"],
        ["a", "control", "pod", "net2"],
    ], out
    # short names: the tables fit an 80-column terminal
    for header, rows in tables.values():
        assert all(len(ln) <= 80 for ln in [header, *rows]), out
    assert "  fdb 2 entries  (dataplane fdb lists them)" in out.splitlines(), out  # a's 2 MACs
    # no frame sent yet, no queue: nothing to say of the planes
    assert not [ln for ln in out.splitlines() if ln.startswith("  plane ")], out
    b = node.pod("b", IT_SPEC)
    assert ping(a["ns"], ip_of(b)).returncode == 0
    (std,) = [ln for ln in node.cli("status").stdout.splitlines() if ln.startswith("  plane std")]
    assert re.fullmatch(r"  plane std +frames \d+ latency p50 [\d.]+[mu]s p99 [\d.]+[mu]s", std), (
        std
    )
    # the one worker (lcores [0, 1]): how often its polls found frames, how
    # often its FDB cache missed, since the start
    workers = [ln for ln in node.cli("status").stdout.splitlines() if ln.startswith("  worker ")]
    assert len(workers) == 1 and re.fullmatch(
        r"  worker 0 polls [1-9]\d* found frames in \d+\.\d% fdb cache misses \d+\.\d%", workers[0]
    ), workers
    assert "a  netns=" in node.cli("pod", "list").stdout


def test_static_hosts_need_the_cluster_store(node):
    """A single node (SQLite store) has no cluster to describe a host to:
    `dataplane host add` says what to do instead and records nothing; the
    FDB view works the same."""
    a = node.pod("a", CT_SPEC)
    add = ("host", "add", "vm1", "--network", "net1", "--mac", "02:00:00:0a:63:32")
    r = node.cli(*add, "--ip", "192.168.50.200", "--vtep", "10.99.0.50", check=False)
    assert r.returncode != 0
    assert "static hosts are recorded in the cluster store (store.kind: etcd)" in r.stderr
    assert "list the host's VTEP under remotes" in r.stderr, r.stderr
    assert node.cli("host", "list", "--json").stdout.strip() == "[]"
    r = node.cli("host", "del", "vm1", check=False)
    assert r.returncode != 0 and "cluster store" in r.stderr, r.stderr
    fdb = json.loads(node.cli("fdb", "--json").stdout)
    assert {(r["network"], r["mac"], r["origin"], r["pod"]) for r in fdb} == {
        (p["network"], p["mac"], "pod", "a") for p in a["planes"]
    }


def test_bad_config_refused_nothing_started(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "node: x\nvtep: {address: 10.0.0.1/24, uplink: lo0}\n"
        "networks:\n  - {name: n, vni: 16777216, plane: std, subnet: 10.1.0.0/24}\n"
        f"api_socket: {tmp_path}/api.sock\nstate_dir: {tmp_path}/st\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "run", "-c", str(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode != 0
    assert "networks[0].vni" in r.stderr
    assert not os.path.exists(tmp_path / "api.sock") and not os.path.exists(tmp_path / "st")


# ------------------------------------------------------------- Prometheus
def scrape(node):
    return (
        urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=10)
        .read()
        .decode()
    )


def test_metrics_pass_promtool(node):
    node.pod("a", CT_SPEC)
    text = scrape(node)
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in (
        "dataplane_worker_polls_total",
        "dataplane_worker_fdb_lookups_total",
        "dataplane_worker_fdb_cache_misses_total",
        "dataplane_worker_fdb_slow_lookups_total",
        "dataplane_worker_learn_limited_total",
        "dataplane_worker_neigh_held_total",
        "dataplane_worker_slowpath_lost_total",
        "dataplane_plane_latency_seconds_bucket",
    ):
        assert f"\n{name}{{" in text, name
    # the store answered this scrape; the pod counted is this node's one
    assert "\ndataplane_store_up 1.0\n" in text
    assert 'dataplane_network_pods{network="net1"} 1.0' in text
    # veth pods' ports read no shared memory: no shm_faults or set_aside series
    assert "dataplane_port_shm_faults_total{" not in text
    assert "dataplane_port_set_aside{" not in text
    assert "dataplane_port_guard_drops_total{" in text
    # the pool's size beside what of it is in use (memory_mb 256, fallback)
    pool = float(re.search(r"\ndataplane_mbufs (\S+)\n", text)[1])
    in_use = float(re.search(r"\ndataplane_mbufs_in_use (\S+)\n", text)[1])
    assert pool > 1000 and 0 <= in_use < pool, (pool, in_use)


def test_a_change_request_is_logged_with_its_caller(node):
    """Who changed what: a pod add through the API (this process) and one
    refused (the CLI's, its namespace does not exist), each one line with
    the caller's pid, uid and command; a read (GET) is not logged."""
    node.pod("a", CT_SPEC)
    r = node.cli(
        "pod",
        "add",
        "bad",
        "--netns",
        "/var/run/netns/nope",
        "--spec",
        json.dumps(CT_SPEC),
        check=False,
    )
    assert r.returncode != 0
    node.api("GET", "/v1/status")
    lines = (node.tmp / "service.log").read_text().splitlines()
    reqs = [json.loads(ln) for ln in lines if ln.startswith("{") and '"api request"' in ln]
    assert reqs[0]["method"] == "POST" and reqs[0]["path"] == "/v1/pods", reqs
    assert reqs[0]["status"] == 200 and reqs[0]["caller_pid"] == os.getpid(), reqs
    assert reqs[0]["caller_uid"] == os.getuid() and reqs[0]["caller"], reqs
    assert len(reqs) == 2 and reqs[1]["status"] >= 400 and reqs[1]["caller_pid"] != os.getpid()
    assert all(q["method"] != "GET" for q in reqs)


def test_prometheus_server_stores_what_was_sent(node, tmp_path):
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", IT_SPEC)
    assert ping(a["ns"], ip_of(b), count=20, interval="0.05").returncode == 0
    prom, port = start_prometheus(tmp_path, node.metrics_port)
    try:
        st = node.api("GET", "/v1/status")
        a_port = next(
            p
            for p in st["ports"]
            if p["name"] == a["planes"][1]["host_ifname"]
            or p["name"] == next(x["host_ifname"] for x in a["planes"] if x["plane"] == "std")
        )
        q = f'dataplane_port_rx_packets_total{{name="{a_port["name"]}"}}'
        url = f"http://127.0.0.1:{port}/api/v1/query?query=" + urllib.request.quote(q)
        value = None
        for _ in range(200):
            try:
                res = json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]
                if res:
                    value = int(float(res[0]["value"][1]))
                    if value >= 20:
                        break
            except OSError:
                pass
            time.sleep(0.1)
        now = node.api("GET", "/v1/status")
        rx_now = next(p for p in now["ports"] if p["name"] == a_port["name"])["rx_packets"]
        # the 20 echo requests (+ ARP) went in at that port; what Prometheus
        # stored is what the core counted (nothing else runs in the pod)
        assert value is not None and 20 <= value <= rx_now
        up = json.load(
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?query=up", timeout=5)
        )["data"]["result"]
        assert up and up[0]["value"][1] == "1"
    finally:
        prom.terminate()
        prom.wait(30)


PORT_SERIES = re.compile(r"^(dataplane_port_[a-z_]+)\{([^}]*)\} (\S+)$", re.M)


def port_series(text):
    """The port series of a scrape: {metric: [(labels, value)]}."""
    out = {}
    for metric, labels, value in PORT_SERIES.findall(text):
        out.setdefault(metric, []).append(
            (tuple(sorted(re.findall(r'(\w+)="([^"]*)"', labels))), float(value))
        )
    return out


def port_identities(text):
    """{(pod, plane) - ("", "") for the uplink: the labels of its series},
    from a scrape; AssertionError if two series of a metric share their
    labels, or one port's series of different metrics do not."""
    ids = {}
    for metric, series in port_series(text).items():
        labels = [lab for lab, _ in series]
        assert len(set(labels)) == len(labels), (metric, labels)  # no two collide
        if metric == "dataplane_port_link_up":
            continue  # DPDK ports only
        for lab in labels:
            # a series per direction (express lane): the port's labels besides
            lab = tuple(x for x in lab if x[0] != "direction")
            d = dict(lab)
            key = (d["pod"], d["plane"])
            assert ids.setdefault(key, lab) == lab, (metric, key, ids[key], lab)
    return ids


def port_indexes(text):
    return {
        (dict(lab)["pod"], dict(lab)["plane"]): int(v)
        for lab, v in port_series(text)["dataplane_port_index"]
    }


def test_port_series_keep_their_labels_across_restarts_and_re_adds(node, tmp_path):
    """A pod's port gets another index from the core when the service is
    restarted (pods replayed in their store's order) or the pod deleted
    and added again: its series keep their labels - name, pod, plane,
    role, network - and so stay the same series in Prometheus; the index
    is dataplane_port_index's value. No two ports' series share labels."""
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", IT_SPEC)
    prom, prom_port = start_prometheus(tmp_path, node.metrics_port)
    try:
        t0 = time.time()

        def prom_get(path, **params):
            url = f"http://127.0.0.1:{prom_port}{path}?" + urllib.parse.urlencode(params)
            return json.load(urllib.request.urlopen(url, timeout=5))["data"]

        def prom_indexes(want):
            """dataplane_port_index as Prometheus has it, once it is ``want``."""
            got = None
            for _ in range(300):
                try:
                    got = {
                        (r["metric"].get("pod", ""), r["metric"].get("plane", "")): int(
                            r["value"][1]
                        )
                        for r in prom_get("/api/v1/query", query="dataplane_port_index")["result"]
                    }
                except OSError:
                    pass
                if got == want:
                    return got
                time.sleep(0.1)
            raise AssertionError(f"Prometheus has {got}, the node {want}")

        first = scrape(node)
        ids = port_identities(first)
        assert set(ids) == {("", ""), ("a", "std"), ("a", "control"), ("b", "std")}, ids
        # named for what they are: the host end of the pod's veth, or the uplink
        names = {("a", p["plane"]): p["host_ifname"] for p in a["planes"]}
        names.update({("b", "std"): b["planes"][0]["host_ifname"], ("", ""): node.uplink})
        for key, lab in ids.items():
            d = dict(lab)
            assert "port" not in d and d["name"] == names[key], (key, d)
            assert d["role"] == ("pod" if key[0] else "uplink"), d
        before = port_indexes(first)
        prom_indexes(before)

        # a deleted and added again: its ports open again
        node.cli("pod", "del", "a")
        node.api(
            "POST",
            "/v1/pods",
            {"name": "a", "netns": f"/var/run/netns/{a['ns']}", "spec": json.dumps(CT_SPEC)},
        )
        second = scrape(node)
        assert port_identities(second) == ids

        # a restart replays b (added first) before a: the indexes move
        node.stop()
        node.start()
        third = scrape(node)
        assert port_identities(third) == ids
        after = port_indexes(third)
        assert after != before and set(after) == set(before), (before, after)
        prom_indexes(after)
        # and Prometheus holds one series per port over all of it
        series = prom_get(
            "/api/v1/series",
            **{"match[]": "dataplane_port_rx_packets_total", "start": t0, "end": time.time()},
        )
        assert len(series) == len(ids), series
    finally:
        prom.terminate()
        prom.wait(30)


LONG_NET = "n" * 63  # the longest network name


def test_status_columns_fit_the_longest_names(tmp_path):
    """A pod with the longest name a pod may have, on a network with the
    longest name a network may have, and a memif pod (its port named for
    its DPDK device): every column of the status tables starts at the same
    offset in every row, and every name is there whole."""
    nets = NETWORKS + f"\n  - {{name: {LONG_NET}, vni: 103, plane: media, subnet: 192.168.52.0/24}}"
    n = Node(tmp_path, uuid.uuid4().hex[:5], networks=nets, extra=f"pod_socket_dir: {tmp_path}/p")
    try:
        n.start()
        long_pod = "p" * 253
        ns = f"dpt{n.tag}long"
        sh("ip", "netns", "add", ns)
        n.netns.append(ns)
        spec = {
            "pod_type": "ct",
            "network_plane": ["std", "media"],
            "networks": {"std": "net1", "media": LONG_NET},
        }
        info = n.api(
            "POST", "/v1/pods", {"name": long_pod, "netns": f"/var/run/netns/{ns}", "spec": spec}
        )
        n.host_links |= {p["host_ifname"] for p in info["planes"]}
        n.pod(
            "m",
            {
                "pod_type": "it",
                "network_plane": ["std"],
                "networks": {"std": "net1"},
                "interfaces": {"std": {"kind": "memif"}},
            },
        )
        out = n.cli("status").stdout
        st = n.api("GET", "/v1/status")
        tables = status_tables(out)
        nets = table_cells(*tables["NETWORK"])
        assert [c[0] for c in nets] == [x["name"] for x in st["networks"]], out
        ports = table_cells(*tables["PORT"])
        want = [
            [
                str(p["port"]),
                p["name"],
                p["pod"] or "-",
                p["plane"] or "-",
                p["role"],
                p["network"] or "-",
            ]  # fmt: skip
            for p in st["ports"]
        ]
        assert [c[:6] for c in ports] == want, out
        assert {c[2] for c in ports} == {"-", long_pod, "m"}, out
        assert any(c[1].startswith("net_memif_") for c in ports), out
        # RX and TX, then what else there is to say (memif: no application yet)
        assert all(c[6].isdigit() and c[7].split()[0].isdigit() for c in ports), out
        assert ports[-1][7].split(maxsplit=1)[1].startswith("LINK DOWN (no pod application"), out
    finally:
        n.cleanup()


def test_three_planes_land_in_their_queues_and_markings(tmp_path):
    """A CT pod on std, control and media: each plane's traffic leaves the
    shaped uplink in its own VNI, queued in its own plane, marked as the
    plane says (std copies the inner DSCP, control CS3, media EF)."""
    nets = NETWORKS + MEDIA_NETWORK
    # the uplink's peer lives in an underlay namespace as 10.99.0.2
    with underlay_node(tmp_path, nets, ["net1", "net2", "net3"], uplink_rate="100M") as (n, ul):
        spec = {
            "pod_type": "ct",
            "network_plane": ["std", "control", "media"],
            "networks": {"std": "net1", "control": "net2", "media": "net3"},
        }
        pod = n.pod("a", spec)
        cap = tmp_path / "ul.pcap"
        tcpdump = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ul,
                "tcpdump",
                "-i",
                f"dpu{n.tag}b",
                "-w",
                str(cap),
                "-U",
                "udp port 4789",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = tcpdump.stderr.readline()  # capturing once it says so
        assert "listening on" in line, line + tcpdump.stderr.read()
        # unknown destinations in each plane's subnet: ARP floods to the remote VTEP,
        # and pings with a DSCP of their own (std copies it, others mark their own)
        for ip, dev in (
            ("192.168.50.99", "eth0"),
            ("192.168.51.99", "control"),
            ("192.168.52.99", "media"),
        ):
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    pod["ns"],
                    "ping",
                    "-c",
                    "2",
                    "-i",
                    "0.2",
                    "-W",
                    "1",
                    "-Q",
                    "0x28",
                    "-I",
                    dev,
                    ip,
                ],
                capture_output=True,
            )
        time.sleep(0.5)
        tcpdump.terminate()
        tcpdump.wait(10)
        from scapy.layers.inet import IP
        from scapy.layers.vxlan import VXLAN
        from scapy.utils import rdpcap

        by_vni = {}
        for f in rdpcap(str(cap)):
            if f.haslayer(VXLAN):
                assert f[VXLAN].flags == 0x08 and f[IP].flags == "DF"
                by_vni.setdefault(f[VXLAN].vni, set()).add(f[IP].tos)
        assert set(by_vni) >= {101, 102, 103}, by_vni
        assert by_vni[102] == {24 << 2} and by_vni[103] == {46 << 2}
        assert by_vni[101] <= {0, 0x28}  # copied from the inner frame
        st = n.api("GET", "/v1/status")
        q = {p["name"]: p for p in st["planes"]}
        for plane in ("std", "control", "media"):
            assert q[plane]["enqueued"] > 0 and q[plane]["dropped"] == 0, q[plane]
        assert q["oam"]["enqueued"] == 0
        text = scrape(n)
        assert 'dataplane_plane_latency_seconds_count{plane="media"}' in text
        assert (
            f'dataplane_plane_queue_enqueued_total{{name="{n.uplink}",plane="control"}}' in text
        ), text


def run_service(cfg, timeout=120):
    """``dataplane run -c cfg`` expected to refuse: its result."""
    return subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "run", "-c", str(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def test_a_second_service_of_the_node_touches_nothing(node, tmp_path):
    """A second `dataplane run` of a running node's config is refused
    before it opens the store or the core: no replay of the pods, no second
    copy of their frames, no traceback - whichever of its settings clash."""
    a = node.pod("a", IT_SPEC)
    b = node.pod("b", IT_SPEC)
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", a["ns"], "ping", "-c", "40", "-i", "0.05", ip_of(b)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    other_metrics = tmp_path / "node2.yaml"
    other_metrics.write_text(
        node.cfg.read_text().replace(f":{node.metrics_port}", f":{free_port()}")
    )
    for cfg in (other_metrics, node.cfg):
        r = run_service(cfg)
        assert r.returncode == 2, r.stdout + r.stderr
        assert (
            f"dataplane: api_socket: {node.sock} is in use by a running service "
            f"(pid {node.proc.pid})" in r.stderr
        ), r.stderr
        assert "Traceback" not in r.stderr and "replay" not in r.stderr, r.stderr
    out = pinger.communicate(timeout=60)[0]
    assert pinger.returncode == 0 and "DUP!" not in out, out
    # the running service goes on, and its lock goes with it
    assert ping(a["ns"], ip_of(b)).returncode == 0
    node.stop()
    assert not os.path.exists(f"{node.sock}.lock")


def test_a_second_service_on_the_same_uplink_is_refused(node, tmp_path):
    """Another node's service (its own API socket, state and metrics port)
    whose vtep.uplink is the interface a running service has is refused by
    run and by check, naming the interface, the other service's pid and API
    socket, before it touches anything; the running one forwards on. A lock
    file left by a killed service is no refusal."""
    a = node.pod("a", IT_SPEC)
    b = node.pod("b", IT_SPEC)
    netns = os.stat("/proc/self/ns/net").st_ino  # the service's, as the test's
    lock = f"/run/dataplane/uplink-{node.uplink}@netns-{netns}.lock"
    assert open(lock).read() == f"{node.proc.pid}\n{node.sock}\n"
    sock2, state2 = tmp_path / "two.sock", tmp_path / "two-state"
    cfg2 = tmp_path / "two.yaml"
    cfg2.write_text(
        node.cfg.read_text()
        .replace(node.sock, str(sock2))
        .replace(f"{node.tmp}/state", str(state2))
        .replace(f":{node.metrics_port}", f":{free_port()}")
        .replace(f"node: node-{node.tag}", f"node: two-{node.tag}")
    )
    said = (
        f"dataplane: vtep.uplink: {node.uplink} is the uplink of another running node service "
        f"(pid {node.proc.pid}, api socket {node.sock})"
    )

    def check(path):
        return run_cli("check", "-c", str(path))

    r = check(cfg2)
    assert r.returncode == 2 and r.stderr.startswith(said), r.stdout + r.stderr
    assert check(node.cfg).returncode == 0  # the running service's own config
    links = host_links()
    r = run_service(cfg2)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert said in r.stderr, r.stderr
    assert host_links() == links  # no tunnel tap, nothing attached
    assert not os.path.exists(sock2) and not os.path.exists(f"{sock2}.lock")
    assert not state2.exists()  # not even the directory its state would be in
    assert open(lock).read() == f"{node.proc.pid}\n{node.sock}\n"  # still the first one's
    assert ping(a["ns"], ip_of(b)).returncode == 0
    # killed: its lock file stays, held by nobody
    node.proc.kill()
    node.proc.wait()
    assert os.path.exists(lock)
    r = check(cfg2)
    assert r.returncode == 0 and "vtep.uplink" not in r.stderr, r.stderr
    node.cfg, node.sock = cfg2, str(sock2)
    node.start()  # the second one takes the uplink now
    assert node.api("GET", "/v1/status")["node"] == f"two-{node.tag}"
    assert open(lock).read() == f"{node.proc.pid}\n{sock2}\n"
    node.stop()
    assert not os.path.exists(lock)  # a clean stop leaves nothing


def test_a_start_right_after_a_kill_takes_over(node):
    """A service killed with SIGKILL takes a second or two to close its
    sockets; a new one started at once (as an impatient operator or a quick
    restart policy does) waits for the dying one's lock instead of refusing,
    then replays the pods, which forward again."""
    a = node.pod("ka", IT_SPEC)
    b = node.pod("kb", IT_SPEC)
    old = node.proc
    old.kill()  # not waited for
    node.proc = None
    node.start()  # the old socket is still there: start() returns at once
    try:
        for _ in range(300):
            try:
                if [p["name"] for p in node.api("GET", "/v1/pods")] == ["ka", "kb"]:
                    break
            except (OSError, APIError):
                pass
            assert node.proc.poll() is None, (node.tmp / "service.log").read_text()
            time.sleep(0.1)
        assert node.proc.poll() is None, (node.tmp / "service.log").read_text()
        assert ping(a["ns"], ip_of(b), count=3).returncode == 0
    finally:
        old.wait(30)
    log = (node.tmp / "service.log").read_text()
    assert "in use by a running service" not in log
    # the new one says the previous one did not stop cleanly, once, with its pid
    unclean = [json.loads(ln) for ln in log.splitlines() if "did not stop cleanly" in ln]
    assert [(u["level"], u["previous_pid"]) for u in unclean] == [("warning", old.pid)], log
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", unclean[0]["time"])
    # a clean stop leaves nothing to say at the next start
    node.stop()
    node.start()
    for _ in range(100):
        if (node.tmp / "service.log").read_text().count('"node service started"') == 3:
            break
        time.sleep(0.05)
    assert (node.tmp / "service.log").read_text().count("did not stop cleanly") == 1


# a run of the service killed while a thread of it is still unwinding: its
# first thread already a zombie, its listening socket still open (the
# service's worker threads can take a second or two to close packet rings)
DYING_RUN = """
import ctypes, os, socket, sys, threading, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
with open(sys.argv[2], "w") as f:
    f.write(f"{os.getpid()}\\n")
def unwind():
    time.sleep(float(sys.argv[3]))
    os._exit(0)
threading.Thread(target=unwind).start()
print("ready", flush=True)
ctypes.CDLL(None).syscall(60, 0)  # exit(2): this thread only
"""


def test_a_start_waits_for_the_metrics_port_of_a_run_still_unwinding(tmp_path):
    """The lock of a killed run is free as soon as its first thread is
    gone; its metrics socket only once its last thread is: a service
    started in between waits for the port instead of refusing it."""
    n = Node(tmp_path, uuid.uuid4().hex[:5])
    dying = subprocess.Popen(
        [sys.executable, "-c", DYING_RUN, str(n.metrics_port), n.sock + ".lock", "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert dying.stdout.readline() == "ready\n"
        for _ in range(100):  # its first thread a zombie, its second alive
            with open(f"/proc/{dying.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.01)
        with socket.socket() as probe:
            with pytest.raises(OSError):
                probe.bind(("127.0.0.1", n.metrics_port))
        n.start()
        for _ in range(200):  # the unclean stop is said right after the start
            log = (tmp_path / "service.log").read_text()
            if '"node service started"' in log and "did not stop cleanly" in log:
                break
            assert n.proc.poll() is None, log
            time.sleep(0.05)
        assert dying.wait(30) == 0
        assert n.proc.poll() is None, log
        assert "Address already in use" not in log
        started = next(json.loads(ln) for ln in log.splitlines() if "node service started" in ln)
        assert started["metrics"] == f"127.0.0.1:{n.metrics_port}"
        with urllib.request.urlopen(f"http://127.0.0.1:{n.metrics_port}/metrics", timeout=5) as r:
            assert b"dataplane_" in r.read()
        unclean = [json.loads(ln) for ln in log.splitlines() if "did not stop cleanly" in ln]
        assert [u["previous_pid"] for u in unclean] == [dying.pid]
    finally:
        if dying.poll() is None:
            dying.kill()
            dying.wait()
        n.cleanup()


def test_start_refusals_name_the_setting_and_leave_nothing(node, tmp_path):
    """What only the start can find out - a busy metrics port, a network
    removed under a pod - is refused with the setting's name, no traceback,
    and nothing attached (a missing uplink is not refused:
    test_a_service_starts_without_its_uplink_and_takes_it_when_it_appears)."""
    node.pod("a", CT_SPEC)  # std on net1, control on net2
    text = node.cfg.read_text()

    def variant(name, **repl):
        t = text.replace(node.sock, str(tmp_path / f"{name}.sock")).replace(
            f"{node.tmp}/state", str(tmp_path / f"{name}-state")
        )
        for old, new in repl.items():
            t = t.replace(old, new)
        p = tmp_path / f"{name}.yaml"
        p.write_text(t)
        return p

    def taps():
        return {ln for ln in host_links() if ln.startswith("dpgso")}

    taps_before = taps()
    # the running node's metrics port (another uplink: the running node's is
    # refused first, test_a_second_service_on_the_same_uplink_is_refused)
    r = run_service(variant("busy", **{f"uplink: {node.uplink}": f"uplink: dpx{node.tag}a"}))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"dataplane: metrics.listen: 127.0.0.1:{node.metrics_port}: " in r.stderr, r.stderr
    assert taps() == taps_before  # no tunnel tap made, nothing attached
    # the node's own config without net2, which pod a's control plane uses
    node.stop()
    without = tmp_path / "without-net2.yaml"
    without.write_text("\n".join(ln for ln in text.splitlines() if "name: net2" not in ln) + "\n")
    r = run_service(without)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert (
        "networks: net2 is not in the config, but pod a (plane control) on this node is "
        "attached to it" in r.stderr
    ), r.stderr
    # the config as it was: the pod is replayed
    node.start()
    assert [p["name"] for p in node.api("GET", "/v1/pods")] == ["a"]


def test_check_finds_what_run_refuses_against_the_store(node, tmp_path):
    """dataplane check reads the node's state store, read only, while the
    service runs (no lock taken, the service undisturbed) and when it is
    stopped (not a byte or file of the state changed), and refuses with
    run's own words what run would refuse: a network removed under pods
    (every pod named), a subnet that leaves their addresses outside, a new
    gateway that is a pod's address. A gateway a pod held already is
    said by both, not refused."""
    ca = node.pod("ca", CT_SPEC)
    node.pod("cb", CT_SPEC)
    text = node.cfg.read_text()
    state = f"{node.tmp}/state"
    gw = ip_of(ca, "control")
    net2 = "  - {name: net2, vni: 102, plane: control, subnet: 192.168.51.0/24}"
    assert net2 in text
    variants = {
        "without-net2": (
            text.replace(net2 + "\n", ""),
            "networks: net2 is not in the config, but pods ca (plane control), cb (plane "
            "control) on this node are attached to it; put the network back, delete the pods "
            "('dataplane pod del ca', 'dataplane pod del cb'), then remove the network",
        ),
        "subnet": (
            text.replace(
                "subnet: 192.168.50.0/24, gateway: 192.168.50.1", "subnet: 192.168.60.0/24"
            ),
            "network net1: subnet 192.168.60.0/24 would leave allocated addresses outside it (",
        ),
        "gateway": (
            text.replace(net2, net2[:-1] + f", gateway: {gw}}}"),
            f"network net2: the gateway {gw} is the address of pod ca; a pod keeps its address: "
            "give the network another gateway, or delete the pod first ('dataplane pod del ca')",
        ),
    }

    def check(path):
        return run_cli("check", "-c", str(path))

    files = {}
    for name, (t, words) in variants.items():
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(t)
        r = check(files[name])
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
        assert r.stderr.startswith("dataplane: " + words), r.stderr
    r = check(node.cfg)
    assert r.returncode == 0, r.stderr
    assert f"store: sqlite {state}/state.db: 2 pods of node node-{node.tag}: checked" in r.stdout
    # the running service did not notice
    assert [p["name"] for p in node.api("GET", "/v1/pods")] == ["ca", "cb"]
    assert ping(ca["ns"], ip_of(node.api("GET", "/v1/pods")[1])).returncode == 0
    node.stop()

    def snapshot():
        return {f: open(os.path.join(state, f), "rb").read() for f in sorted(os.listdir(state))}

    before = snapshot()
    for name, (_, words) in variants.items():
        r = check(files[name])
        assert r.returncode == 2 and r.stderr.startswith("dataplane: " + words), r.stderr
        checked = r.stderr
        r = run_service(files[name])
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert checked in r.stderr, (checked, r.stderr[-1500:])  # the same words
    assert check(node.cfg).returncode == 0
    assert snapshot() == before
    # a gateway a pod has held since before this check: said, not refused
    db = sqlite3.connect(f"{state}/state.db")
    db.execute("UPDATE networks SET gateway=? WHERE name='net2'", (gw,))
    db.commit()
    db.close()
    node.cfg.write_text(variants["gateway"][0])
    r = check(node.cfg)
    assert r.returncode == 0, r.stderr
    said = f"network net2: its gateway {gw} is also the address of pod ca (it had it before"
    assert f"warning: {said}" in r.stdout, r.stdout
    node.start()
    assert [p["name"] for p in node.api("GET", "/v1/pods")] == ["ca", "cb"]
    assert said in (node.tmp / "service.log").read_text()


def _state_rows(node):
    """Every row of the node's SQLite state file, table by table."""
    db = sqlite3.connect(f"{node.tmp}/state/state.db")
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(map(repr, db.execute(f"SELECT * FROM {t}"))) for t in sorted(tables)}
    finally:
        db.close()


def test_a_renamed_node_forgets_its_old_name_with_node_remove(node, tmp_path):
    """A node renamed on its SQLite store says whose pods it does not
    replay, at start and in dataplane check, and points to 'dataplane node
    remove OLD'; the old name is listed as not running. The service's own
    name and an unknown one are refused by name, the store unchanged; the
    old name removed takes its pods' records and veths, and the pods can be
    added again under the new name and reach each other."""
    old, new = f"node-{node.tag}", f"other-{node.tag}"
    a = node.pod("a", IT_SPEC)
    node.pod("b", IT_SPEC)
    node.stop()
    node.cfg.write_text(node.cfg.read_text().replace(f"node: {old}", f"node: {new}"))
    said = (
        f"has pods of node {old} and none of node {new}: they are not replayed (was the node "
        "renamed?"
    )
    hint = f"'dataplane node remove {old}'"
    r = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "check", "-c", str(node.cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0 and said in r.stdout and hint in r.stdout, r.stdout + r.stderr
    node.start()
    assert node.api("GET", "/v1/pods") == []
    log = (node.tmp / "service.log").read_text()
    assert said in log and hint in log, log[-2000:]
    lines = node.cli("node", "list").stdout.splitlines()
    assert [ln.split()[:3] for ln in lines] == [
        [old, "NOT", "RUNNING"],
        [new, "running", "0"],
    ], lines
    before = _state_rows(node)
    links = host_links()
    assert node.host_links <= links
    r = node.cli("node", "remove", new, check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert f"node {new} is the name this service runs under on its store" in r.stderr, r.stderr
    r = node.cli("node", "remove", "nosuch", check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "node nosuch: the store " in r.stderr and "has no pod or CNI attachment" in r.stderr
    assert _state_rows(node) == before and host_links() == links
    out = node.cli("node", "remove", old).stdout
    assert f"node {old} removed: 2 pod(s) and 0 CNI attachment(s) forgotten; 2 veth(s)" in out
    assert not node.host_links & host_links()  # the old pods' veths are gone
    rows = _state_rows(node)
    assert rows["pods"] == rows["endpoints"] == rows["allocations"] == [], rows
    log = (node.tmp / "service.log").read_text()
    assert log.count("removed node's pod veth deleted") == 2, log[-2000:]
    assert [ln.split()[0] for ln in node.cli("node", "list").stdout.splitlines()] == [new]
    # the namespaces are still there: the pods added again, under the new name
    for name in ("a", "b"):
        info = node.api(
            "POST",
            "/v1/pods",
            {
                "name": name,
                "netns": f"/var/run/netns/dpt{node.tag}{name}",
                "spec": json.dumps(IT_SPEC),
            },
        )
        node.host_links |= {p["host_ifname"] for p in info["planes"]}
    pods = node.api("GET", "/v1/pods")
    assert [p["name"] for p in pods] == ["a", "b"]
    assert ping(a["ns"], ip_of(pods[1])).returncode == 0
    r = node.cli("node", "remove", old, check=False)  # gone: nothing left to remove
    assert r.returncode != 0 and f"node {old}: the store " in r.stderr, r.stderr


def test_cli_edges(node):
    """--socket before the command, a reader that stops early, a spec file
    that is not there: answers, not tracebacks."""
    cli = [sys.executable, "-m", "dataplane.cli"]
    r = subprocess.run([*cli, "--socket", node.sock, "status"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith(f"node node-{node.tag}"), r.stderr
    node.pod("a", CT_SPEC)
    r = subprocess.run(
        f"{sys.executable} -m dataplane.cli status --socket {node.sock} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.stdout.startswith("node ") and "Traceback" not in r.stderr, r.stderr
    r = node.cli(
        "pod", "add", "b", "--netns", "/proc/1/ns/net", "--spec", "@/nonexistent.json", check=False
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "dataplane: --spec @/nonexistent.json: No such file or directory" in r.stderr
    r = node.cli("pod", "del", "a")
    assert r.stdout == "deleted a\n"


def test_requests_that_could_hang_or_break_the_api_are_refused(node, tmp_path):
    """A FIFO given as a pod's namespace (opening it would wait for a
    writer while the service's lock is held), a path that cannot be
    looked at (said as it is, not as missing), a JSON integer of more digits
    than Python converts, a prefix length of non-ASCII digits: each a 400
    naming the field, and the service answers the next request."""
    import http.client

    from dataplane.api import APIError

    fifo = tmp_path / "ns-fifo"
    os.mkfifo(fifo)
    loop = tmp_path / "ns-loop"
    os.symlink(loop, loop)  # there, but not to be followed: not "does not exist"
    ns = node.pod("a", IT_SPEC)["ns"]
    for netns, body, msg in (
        (str(fifo), IT_SPEC, f"netns: {fifo} is not a network namespace"),
        (str(loop), IT_SPEC, f"netns: {loop}: Too many levels of symbolic links"),
        (f"/var/run/netns/{ns}", {**IT_SPEC, "ips": {"std": "192.168.50.9/\u00b2"}}, "ips.std: "),
    ):
        with pytest.raises(APIError, match=re.escape(msg)) as e:
            node.api("POST", "/v1/pods", {"name": "b", "netns": netns, "spec": body})
        assert e.value.status == 400
    # raw: an integer past Python's conversion limit (4300 digits)
    conn = http.client.HTTPConnection("localhost")
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.connect(node.sock)
    conn.sock.settimeout(10)
    conn.request("POST", "/v1/pods", body='{"name": ' + "1" * 5000 + "}")
    r = conn.getresponse()
    assert r.status == 400 and b"not valid JSON" in r.read()
    conn.close()
    assert [p["name"] for p in node.api("GET", "/v1/pods")] == ["a"]
    assert "Traceback" not in (node.tmp / "service.log").read_text()


def _plane(info, plane):
    return next(p for p in info["planes"] if p["plane"] == plane)


def _pod_addr(ns, ifname):
    """(MAC, IPv4 addresses) of interface ``ifname`` in namespace ``ns``."""
    out = sh("ip", "-n", ns, "-o", "link", "show", ifname, check=False).stdout
    mac = re.search(r"link/ether (\S+)", out)
    addrs = sh("ip", "-n", ns, "-o", "-4", "addr", "show", ifname, check=False).stdout
    return (mac.group(1) if mac else None), re.findall(r"inet (\S+)/", addrs)


def _stop_ping_after_a_reply(p):
    """Interrupt ping ``p`` (line-buffered, its stdout a pipe of bytes)
    just after a reply it prints, so that no echo is on its way when it
    stops and counts; its whole output."""
    fd, out = p.stdout.fileno(), b""
    while select.select([fd], [], [], 0)[0]:  # what it printed so far
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
    while p.poll() is None and select.select([fd], [], [], 5)[0]:
        chunk = os.read(fd, 65536)  # printed just now
        out += chunk
        if not chunk or b"bytes from" in chunk:
            break
    p.send_signal(signal.SIGINT)  # its summary, then its exit; the next echo is 50 ms away
    rest, _ = p.communicate(timeout=60)
    return (out + rest).decode()


def test_a_deleted_plane_veth_is_made_again_and_the_other_planes_stay(node):
    """`ip link del` of one plane's host veth while the pod's namespace
    lives (a stray command, a host network manager tidying up): the service
    makes that plane again - same names, MAC and address, its port in the
    network - while the pod's other plane forwards on; the same at a
    restart's replay."""
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", CT_SPEC)
    ctl = _plane(a, "control")
    std_b, ctl_b = ip_of(b), _plane(b, "control")["ip"]
    old_index = socket.if_nametoindex(ctl["host_ifname"])
    # std pings at 20/s run across the loss and the re-making of control,
    # and a second past it
    p = subprocess.Popen(
        ["ip", "netns", "exec", a["ns"], "stdbuf", "-oL"]
        + ["ping", "-i", "0.05", "-c", "400", "-W", "1", std_b],
        stdout=subprocess.PIPE,
    )
    time.sleep(1.0)
    sh("ip", "link", "del", ctl["host_ifname"])
    for _ in range(400):  # the service looks every few seconds
        if '"pod plane made again' in (node.tmp / "service.log").read_text():
            break
        time.sleep(0.05)
    time.sleep(1.0)
    out = _stop_ping_after_a_reply(p)
    sent = int(re.search(r"(\d+) packets transmitted", out).group(1))
    # std never stopped: every echo answered, in order, but for one still
    # on its way if the interrupt came late (this test's process stalled)
    seqs = [int(x) for x in re.findall(r"icmp_seq=(\d+)", out)]
    assert len(seqs) >= 40 and seqs == list(range(1, len(seqs) + 1)), out
    assert sent - len(seqs) <= 1, out
    log = (node.tmp / "service.log").read_text()
    assert '"pod plane made again: its veth was gone"' in log, log[-2000:]
    assert '"pod removed' not in log
    assert socket.if_nametoindex(ctl["host_ifname"]) != old_index
    assert _pod_addr(a["ns"], ctl["ifname"]) == (ctl["mac"], [ctl["ip"]])
    assert ping(a["ns"], ctl_b).returncode == 0
    assert [p["name"] for p in node.api("GET", "/v1/pods")] == ["a", "b"]

    # at a restart: the replay makes it again before the pod is re-attached
    node.stop()
    sh("ip", "link", "del", ctl["host_ifname"])
    node.start()
    for _ in range(200):
        if ping(a["ns"], ctl_b, count=1).returncode == 0:
            break
    assert _pod_addr(a["ns"], ctl["ifname"]) == (ctl["mac"], [ctl["ip"]])
    assert ping(a["ns"], ctl_b).returncode == 0 and ping(a["ns"], std_b).returncode == 0
    log = (node.tmp / "service.log").read_text()
    assert log.count('"pod plane made again: its veth was gone"') == 2, log[-2000:]
    assert '"by": "replay"' in log


def test_a_pod_whose_namespace_is_deleted_is_removed(node):
    """`ip netns del` (a container that exits) without `pod del`: the
    service notices and removes the pod - its port, address and record - as
    a restart's replay would, and leaves the other pods alone."""
    a = node.pod("a", IT_SPEC)
    b = node.pod("b", CT_SPEC)
    host = {p["host_ifname"] for p in b["planes"]}
    sh("ip", "netns", "del", b["ns"])
    for _ in range(400):  # the service looks every few seconds
        if [p["name"] for p in node.api("GET", "/v1/pods")] == ["a"]:
            break
        time.sleep(0.05)
    assert [p["name"] for p in node.api("GET", "/v1/pods")] == ["a"]
    st = node.api("GET", "/v1/status")
    assert not host & {p["name"] for p in st["ports"]}, st["ports"]
    log = (node.tmp / "service.log").read_text()
    assert '"level": "warning", "msg": "pod removed: its interfaces are gone"' in log, log[-2000:]
    assert "is gone" in log
    # its interfaces gone are not also said to be down (an interface named None)
    assert "None has no carrier" not in log and '"interface": null' not in log, log[-2000:]
    r = node.cli("pod", "del", "b", check=False)
    assert r.returncode != 0 and "pod b is not attached to this node" in r.stderr
    assert [p["name"] for p in node.api("GET", "/v1/pods")] == ["a"]
    assert a["planes"][0]["host_ifname"] in {p["name"] for p in st["ports"]}


def test_the_uplink_is_watched(node):
    """An uplink that cannot carry frames - down, an MTU below the
    underlay's, deleted - is said by status, the log and
    dataplane_uplink_up, and cleared when it can; one created again is
    attached by the service (traffic through it:
    test_a_re_created_uplink_is_attached_again)."""
    a = node.pod("a", IT_SPEC)
    b = node.pod("b", IT_SPEC)

    def problem(words, tries=200):
        return uplink_problem(node, words, tries)

    peer = f"dpu{node.tag}b"
    problem(f"{node.uplink} is without carrier")  # its peer is down
    sh("ip", "link", "set", peer, "up")
    assert problem(None) is None
    assert "\ndataplane_uplink_up 1.0\n" in scrape(node)
    sh("ip", "link", "set", node.uplink, "down")
    problem(f"{node.uplink} is down")
    assert "\ndataplane_uplink_up 0.0\n" in scrape(node)
    assert "UPLINK CANNOT CARRY FRAMES" in node.cli("status").stdout
    sh("ip", "link", "set", node.uplink, "up")
    problem(None)
    sh("ip", "link", "set", node.uplink, "mtu", "1400")
    problem("has MTU 1400, below vtep.underlay_mtu 1500")
    sh("ip", "link", "set", node.uplink, "mtu", "1500")
    problem(None)
    sh("ip", "link", "del", node.uplink)
    problem(f"{node.uplink} is gone")
    assert "\ndataplane_uplink_up 0.0\n" in scrape(node)
    # pods of the node still reach each other meanwhile
    assert ping(a["ns"], ip_of(b)).returncode == 0
    sh("ip", "link", "add", node.uplink, "type", "veth", "peer", "name", peer)
    sh("ip", "link", "set", node.uplink, "up")
    sh("ip", "link", "set", peer, "up")
    problem(None)
    assert "\ndataplane_uplink_up 1.0\n" in scrape(node)
    log = (node.tmp / "service.log").read_text()
    assert "uplink carries frames again" in log and '"msg": "uplink re-attached"' in log
    assert "restart the service" not in log


HOST_IP = "192.168.50.200"  # behind the underlay's kernel VTEP


def kernel_vtep(ul, node_vtep="10.99.0.1", vni=101, host_ip=HOST_IP) -> str:
    """The kernel's own VXLAN VTEP (VNI 101, net1) in underlay namespace
    ``ul``, at 10.99.0.2 (the uplink's peer), flooding to ``node_vtep``,
    with ``host_ip`` on it: its MAC. Bound to no device: it outlives the
    uplink's peer."""
    dev = f"vx{vni}"
    for cmd in (
        f"link add {dev} mtu 1450 type vxlan id {vni} local 10.99.0.2 dstport 4789",
        f"addr add {host_ip}/24 dev {dev}",
        f"link set {dev} up",
    ):
        sh("ip", "-n", ul, *cmd.split())
    sh("bridge", "-n", ul, *f"fdb append 00:00:00:00:00:00 dev {dev} dst {node_vtep}".split())
    return json.loads(sh("ip", "-n", ul, "-j", "link", "show", dev).stdout)[0]["address"]


def wait_ping(ns, ip, timeout=15.0):
    """Seconds until ``ip`` answered a ping from ``ns`` (AssertionError
    after ``timeout``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        r = subprocess.run(
            ["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "0.2", ip], capture_output=True
        )
        if r.returncode == 0:
            return time.monotonic() - t0
    raise AssertionError(f"{ip} did not answer a ping from {ns} within {timeout} s")


def test_a_re_created_uplink_is_attached_again(tmp_path):
    """The uplink deleted and created again under its name (a new ifindex
    and MAC, the same underlay behind it): the service moves the core's
    uplink to it by itself, and a pod pings a host behind a kernel VXLAN
    VTEP again within seconds, no restart; status says no problem,
    dataplane_uplink_up is 1 again, the log says re-attached. The same when
    it was gone for a while. One the core cannot read (a tun), or that
    comes back down, then with too small an MTU, is said so and taken once
    it can be. The uplink keeps its port, its shaper and its tunnel tap;
    no counter goes back."""
    with underlay_node(tmp_path, NETWORKS, ["net1"], uplink_rate="100M") as (n, ul):
        peer = f"dpu{n.tag}b"
        kernel_vtep(ul)
        a = n.pod(f"p{n.tag}", IT_SPEC)  # its veth's name unlike other tests' pods'
        wait_ping(a["ns"], HOST_IP)

        def problem(words, tries=200):
            return uplink_problem(n, words, tries)

        def counters():
            st = n.api("GET", "/v1/status")
            up = next(p for p in st["ports"] if p["role"] == "uplink")
            # of no pod, plane or network, each said alike
            assert (up["pod"], up["plane"], up["network"]) == (None, None, None), up
            std = next(p for p in st["planes"] if p["name"] == "std")
            return up, std, st["drops"]

        def recreate(up=True, mtu=None):
            sh("ip", "link", "del", n.uplink, check=False)  # its peer goes with it
            sh("ip", "link", "add", n.uplink, "type", "veth", "peer", "name", peer, "netns", ul)
            sh("ip", "-n", ul, "addr", "add", "10.99.0.2/24", "dev", peer)
            sh("ip", "-n", ul, "link", "set", peer, "up")
            if mtu:
                sh("ip", "link", "set", n.uplink, "mtu", str(mtu))
            if up:
                sh("ip", "link", "set", n.uplink, "up")
            return socket.if_nametoindex(n.uplink)

        def taken_again(old_index, new_index, before):
            took = wait_ping(a["ns"], HOST_IP)
            print(f"uplink re-created: pings answered again after {took:.2f} s")
            assert problem(None) is None
            assert "\ndataplane_uplink_up 1.0\n" in scrape(n)
            # the VTEP's MAC is the new device's (no vtep.mac in the config)
            with open(f"/sys/class/net/{n.uplink}/address") as f:
                mac = f.read().strip()
            log = (n.tmp / "service.log").read_text()
            # seen by the kernel's link notification, not the once-a-second look
            assert re.search(
                r'"msg": "uplink re-attached", "uplink": "%s", "old_ifindex": %d, '
                r'"new_ifindex": %d, "vtep_mac": "%s".*"noticed": "link event"'
                % (n.uplink, old_index, new_index, mac),
                log,
            ), log[-3000:]
            # the same port, still shaped, its tunnel tap on the new device
            # (a kernel that has tunnel GSO), and no counter back
            up, std, drops = counters()
            up0, std0, drops0 = before
            assert (up["port"], up["name"]) == (up0["port"], up0["name"])
            assert up["tx_packets"] > up0["tx_packets"] and up["rx_packets"] > up0["rx_packets"]
            assert std["enqueued"] > std0["enqueued"] and std["sent"] > std0["sent"]
            assert all(drops.get(k, 0) >= v for k, v in drops0.items()), (drops0, drops)
            links = host_links()
            assert f"dpgso{old_index}" not in links
            assert (f"dpgso{new_index}" in links) == tunnel_tap

        index = socket.if_nametoindex(n.uplink)
        # the uplink has a tunnel tap where the kernel takes tunnel GSO
        tunnel_tap = kernel_takes_tunnel_gso()
        assert (f"dpgso{index}" in host_links()) == tunnel_tap
        # re-created in one go
        before = counters()
        new = recreate()
        taken_again(index, new, before)
        # gone for a while, then back
        index, before = new, counters()
        sh("ip", "link", "del", n.uplink)
        problem(f"{n.uplink} is gone")
        assert "\ndataplane_uplink_up 0.0\n" in scrape(n)
        new = recreate()
        taken_again(index, new, before)
        # a device the core cannot read (no Ethernet: a tun): said, and
        # tried again until the name is an uplink again
        index, before = new, counters()
        sh("ip", "link", "del", n.uplink)
        sh("ip", "tuntap", "add", "dev", n.uplink, "mode", "tun")
        sh("ip", "link", "set", n.uplink, "up")
        tun = socket.if_nametoindex(n.uplink)
        problem(
            f"was re-created (ifindex {index} -> {tun}), but attaching it failed: reopening "
            f"AF_PACKET port {before[0]['port']}: afpacket {n.uplink}: not an Ethernet device; "
            "tried again every second"
        )
        new = recreate()
        taken_again(index, new, before)
        # back down, then with too small an MTU: said, and taken once set up
        index, before = new, counters()
        new = recreate(up=False, mtu=1400)
        problem(f"was re-created (ifindex {index} -> {new}) and is down")
        assert "\ndataplane_uplink_up 0.0\n" in scrape(n)
        assert "UPLINK CANNOT CARRY FRAMES" in n.cli("status").stdout
        sh("ip", "link", "set", n.uplink, "up")
        problem("with MTU 1400, below vtep.underlay_mtu 1500: it is attached once")
        assert "\ndataplane_uplink_up 0.0\n" in scrape(n)
        sh("ip", "link", "set", n.uplink, "mtu", "1500")
        taken_again(index, new, before)
        assert n.proc.poll() is None  # the same service all along


def test_a_service_starts_without_its_uplink_and_takes_it_when_it_appears(tmp_path):
    """The uplink deleted while the service was stopped (a bond or VLAN made
    after the service at boot, a driver reloaded during a restart): the
    service starts anyway, replays its pods, which reach each other; status,
    the log and dataplane_uplink_up say the uplink does not exist, and
    dataplane check warns of it without failing. Once the device exists and
    is up (created down first: said, and waited for) the service makes it
    the core's uplink, shaped as configured, and a pod pings a host behind a
    kernel VXLAN VTEP; no restart."""
    tag = uuid.uuid4().hex[:5]
    remotes = "remotes:\n  - {vtep: 10.99.0.2, networks: [net1]}"
    n = Node(tmp_path, tag, extra=remotes)
    n.cfg.write_text(
        n.cfg.read_text().replace(
            f"uplink: {n.uplink}}}", f"uplink: {n.uplink}, uplink_rate: 100M}}"
        )
    )
    ul, peer = f"dpul{tag}", f"dpu{tag}b"
    try:
        n.start()
        a = n.pod(f"p{tag}", IT_SPEC)
        b = n.pod(f"q{tag}", CT_SPEC)
        n.stop()
        sh("ip", "link", "del", n.uplink)  # its peer goes with it
        n.start()
        assert [p["name"] for p in n.api("GET", "/v1/pods")] == [f"p{tag}", f"q{tag}"]
        assert ping(a["ns"], ip_of(b)).returncode == 0  # pod to pod, no uplink
        p = uplink_problem(n, "does not exist")
        assert p.startswith(f"{n.uplink} does not exist (it was not there when the service"), p
        st = n.api("GET", "/v1/status")
        assert not [x for x in st["ports"] if x["role"] == "uplink"], st["ports"]
        assert "\ndataplane_uplink_up 0.0\n" in scrape(n)
        assert "UPLINK CANNOT CARRY FRAMES" in n.cli("status").stdout
        r = n.cli("capture", "uplink", "-c", "1", check=False)
        assert r.returncode != 0 and "uplink is not attached" in r.stderr, r.stderr
        log = (n.tmp / "service.log").read_text()
        assert re.search(r'"level": "error", "msg": "uplink: %s does not exist' % n.uplink, log), (
            log
        )
        r = subprocess.run(
            [sys.executable, "-m", "dataplane.cli", "check", "-c", str(n.cfg)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert (
            f"warning: vtep.uplink: {n.uplink}: no such interface in this network namespace"
            in r.stdout
        ), r.stdout
        # a reload meanwhile: the rate the uplink will be shaped to when it comes
        n.cfg.write_text(n.cfg.read_text().replace("uplink_rate: 100M", "uplink_rate: 50M"))
        r = n.cli("reload")
        assert "vtep.uplink_rate: 100000000 -> 50000000" in r.stdout, r.stdout + r.stderr
        # it appears, down first, its peer the underlay host behind a kernel VTEP
        sh("ip", "netns", "add", ul)
        sh("ip", "link", "add", n.uplink, "type", "veth", "peer", "name", peer, "netns", ul)
        sh("ip", "-n", ul, "addr", "add", "10.99.0.2/24", "dev", peer)
        sh("ip", "-n", ul, "link", "set", peer, "up")
        kernel_vtep(ul)
        index = socket.if_nametoindex(n.uplink)
        uplink_problem(n, f"{n.uplink} exists now (ifindex {index}; it was missing")
        assert (
            "and is down: it is attached once it is up"
            in n.api("GET", "/v1/status")["uplink_problem"]
        )
        sh("ip", "link", "set", n.uplink, "up")
        took = wait_ping(a["ns"], HOST_IP)
        print(f"uplink created: pings answered after {took:.2f} s")
        assert uplink_problem(n, None) is None
        assert "\ndataplane_uplink_up 1.0\n" in scrape(n)
        with open(f"/sys/class/net/{n.uplink}/address") as f:
            mac = f.read().strip()
        log = (n.tmp / "service.log").read_text()
        assert re.search(
            r'"msg": "uplink attached", "uplink": "%s", "old_ifindex": null, '
            r'"new_ifindex": %d, "vtep_mac": "%s".*"noticed": "link event"'
            % (n.uplink, index, mac),
            log,
        ), log[-3000:]
        st = n.api("GET", "/v1/status")
        assert [x["name"] for x in st["ports"] if x["role"] == "uplink"], st["ports"]
        assert st["uplink_rate_bps"] == 50_000_000
        std = next(x for x in st["planes"] if x["name"] == "std")
        assert std["sent"] > 0, std  # through the shaper's plane queue
        assert n.proc.poll() is None
    finally:
        n.cleanup()
        sh("ip", "netns", "del", ul, check=False)


def test_a_namespace_path_leading_to_another_namespace_is_a_gone_pod(node):
    """While the service is down a pod's namespace is deleted and a new one
    made under the same name (a runtime reusing a sandbox name; a
    /proc/PID/ns/net whose PID was reused, after a reboot above all): the
    replay removes the pod, as for a namespace that is gone, instead of
    making its veth again in a namespace that is not the pod's."""
    a = node.pod("a", IT_SPEC)
    b = node.pod("b", IT_SPEC)
    node.stop()
    sh("ip", "netns", "del", b["ns"])
    sh("ip", "netns", "add", b["ns"])  # the same path, another namespace
    node.start()
    assert [p["name"] for p in node.api("GET", "/v1/pods")] == ["a"]
    links = json.loads(sh("ip", "-n", b["ns"], "-j", "link", "show").stdout)
    assert [x["ifname"] for x in links] == ["lo"]  # nothing made in the new one
    log = (node.tmp / "service.log").read_text()
    assert "the path leads to another namespace now" in log, log[-2000:]
    # the name can be used again, in the new namespace
    body = {"name": "b", "netns": f"/var/run/netns/{b['ns']}", "spec": json.dumps(IT_SPEC)}
    assert node.api("POST", "/v1/pods", body)["state"] == "ready"
    assert ping(b["ns"], ip_of(a)).returncode == 0


def test_a_pod_name_another_service_of_the_namespace_has_is_refused_naming_it(node):
    """Two node services in one network namespace (two fabrics on one host),
    each with a pod "web": host interface names come from pod and plane,
    so the second add meets the first's veth. It is refused saying whose
    the interface is (its mark) and what to do; nothing is left."""
    from dataplane.podspec import host_ifname

    name = f"w{node.tag}"
    hif = host_ifname(name, "std")
    sh("ip", "link", "add", hif, "type", "veth", "peer", "name", f"dpo{node.tag}")
    try:
        sh(
            "ip",
            "link",
            "set",
            hif,
            "alias",
            f"dataplane node=other store=0badcafe plane=std pod={name}",
        )
        with pytest.raises(APIError) as e:
            node.pod(name, IT_SPEC)
        msg = str(e.value)
        assert (
            f"pod {name} plane std: host interface {hif} exists already: it is plane std of pod "
            f"{name} of node other, state store 0badcafe (this service: node " in msg
        ), msg
        assert "give the pods different names, or run each service in a namespace" in msg
        assert node.api("GET", "/v1/pods") == []
        assert sh("ip", "-j", "link", "show", hif).stdout  # the other's interface stays
    finally:
        sh("ip", "link", "del", hif, check=False)


def test_replay_gives_pods_the_networks_mtu_of_the_config(node):
    """The underlay MTU lowered in the config while the service was down:
    the replayed pods' veths get the networks' new MTU (frames of the old
    size would be dropped after encapsulation), both ends."""
    a = node.pod("a", CT_SPEC)
    node.stop()
    text = node.cfg.read_text()
    assert "uplink: " + node.uplink + "}" in text
    node.cfg.write_text(
        text.replace(
            "uplink: " + node.uplink + "}", "uplink: " + node.uplink + ", underlay_mtu: 1400}"
        )
    )
    node.start()
    for p in a["planes"]:
        pod_end = json.loads(sh("ip", "-n", a["ns"], "-j", "link", "show", p["ifname"]).stdout)[0]
        host_end = json.loads(sh("ip", "-j", "link", "show", p["host_ifname"]).stdout)[0]
        assert (pod_end["mtu"], host_end["mtu"]) == (1350, 1350), p["plane"]
    assert '"replay: plane MTU set"' in (node.tmp / "service.log").read_text()


def test_exiting_tells_a_dying_process_from_a_running_one():
    """What a starting service waits for: a holder of its lock that is gone
    or a zombie (killed, its files being closed); a live one is refused."""
    from dataplane.service import _exiting

    assert not _exiting(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    for _ in range(100):  # exited, not reaped: a zombie
        with open(f"/proc/{child.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.05)
    assert _exiting(child.pid)
    child.wait()
    assert _exiting(child.pid)  # gone


def test_node_list_and_remove_on_a_single_node_store(node):
    """With the SQLite store the node is alone: ``node list`` shows it,
    ``node remove`` of a name the store has no records of is refused by
    name (a renamed node's old name:
    test_a_renamed_node_forgets_its_old_name_with_node_remove)."""
    node.pod("a", IT_SPEC)
    out = node.cli("node", "list").stdout
    assert out.split()[:4] == [f"node-{node.tag}", "running", "1", "pods"], out
    assert "(this node)" in out
    r = node.cli("node", "remove", "other", check=False)
    assert r.returncode != 0
    assert "node other: the store " in r.stderr and "no pod or CNI attachment" in r.stderr
    r = node.cli("node", "remove", "bad/name", check=False)
    assert r.returncode != 0 and "not a valid node name" in r.stderr, r.stderr


def test_a_full_state_disk_refuses_changes_and_says_where(tmp_path):
    """The state directory on a small file system that fills up: a pod add
    is refused naming the state file and why, leaves nothing behind and
    changes nothing; once there is room again the same add works."""
    state = tmp_path / "state"
    state.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=2m", "dptmpfs", str(state))
    n = Node(tmp_path, uuid.uuid4().hex[:5])
    filler = state / "filler"
    try:
        n.start()
        a = n.pod("a", IT_SPEC)
        links = host_links()
        sh("dd", "if=/dev/zero", f"of={filler}", "bs=64k", check=False)  # until full
        ns = f"dpt{n.tag}b"
        r = sh("ip", "netns", "add", ns, check=False)
        assert r.returncode == 0, r.stderr
        n.netns.append(ns)
        body = {"name": "b", "netns": f"/var/run/netns/{ns}", "spec": json.dumps(IT_SPEC)}
        with pytest.raises(APIError) as err:
            n.api("POST", "/v1/pods", body)
        msg = str(err.value)
        assert f"store {state}/state.db: the change was not written" in msg, msg
        assert "database or disk is full" in msg and "free space" in msg, msg
        assert "internal error" not in msg
        assert [p["name"] for p in n.api("GET", "/v1/pods")] == ["a"]
        assert host_links() == links  # nothing of b's left behind
        assert "Traceback" not in (tmp_path / "service.log").read_text()
        filler.unlink()
        b = n.api("POST", "/v1/pods", body)
        n.host_links |= {p["host_ifname"] for p in b["planes"]}
        assert ping(a["ns"], ip_of(b)).returncode == 0
    finally:
        n.cleanup()
        sh("umount", str(state), check=False)


def _dpdk_abi() -> int:
    """The major ABI of this machine's DPDK: 23 (22.11), 24 (23.11), 25 (24.11)."""
    import glob

    (lib,) = [f for f in glob.glob("/usr/lib/*/librte_eal.so.*.*") if not os.path.islink(f)]
    return int(lib.rsplit(".so.", 1)[1].split(".")[0])


@pytest.mark.parametrize("mode", ["fallback", "hugepages"])
def test_the_log_is_one_json_object_a_line_dpdk_s_lines_too(tmp_path, mode):
    """Everything the service writes to its log, DPDK's own lines (EAL,
    telemetry, drivers) among them, is one JSON object a line with the
    time for people and a level; DPDK's carry "source": "dpdk"."""
    n = Node(tmp_path, uuid.uuid4().hex[:5])
    n.cfg.write_text(n.cfg.read_text().replace("mode: fallback", f"mode: {mode}"))
    try:
        n.start()
        n.pod("a", IT_SPEC)
    finally:
        n.cleanup()
    lines = (tmp_path / "service.log").read_text().splitlines()
    objs = []
    for ln in lines:
        try:
            objs.append(json.loads(ln))
        except ValueError:
            raise AssertionError(f"not a JSON object: {ln!r}") from None
    assert all({"ts", "time", "level", "msg"} <= set(o) for o in objs), objs
    dpdk = [o for o in objs if o.get("source") == "dpdk"]
    # (in fallback mode DPDK 24.11 says nothing at the notice level: 22.11
    # and 23.11 tell of their telemetry socket)
    assert dpdk or (mode == "fallback" and _dpdk_abi() >= 25), [o["msg"] for o in objs]
    assert all(o["level"] in ("debug", "info", "warning", "error") for o in dpdk), dpdk
    assert any(o["msg"] == "node service stopped" for o in objs)


def test_a_check_that_fails_unexpectedly_ends_no_service(node):
    """The main loop's uplink and pod-link checks open a netlink socket each
    round. Out of file descriptors (its limit lowered to what it holds),
    they fail: said once in the log, and the service goes on forwarding;
    with descriptors again the checks work again, and a stop says which
    signal asked for it."""
    pid = node.proc.pid
    held = len(os.listdir(f"/proc/{pid}/fd"))
    limits = sh(
        "prlimit", "--pid", str(pid), "--nofile", "--raw", "--noheadings", "-o", "SOFT,HARD"
    )
    soft, hard = (int(x) for x in limits.stdout.split())
    log = node.tmp / "service.log"
    sh("prlimit", "--pid", str(pid), f"--nofile={held}:{hard}")
    try:
        for _ in range(100):
            if "the service goes on, the next round tries again" in log.read_text():
                break
            time.sleep(0.05)
    finally:
        sh("prlimit", "--pid", str(pid), f"--nofile={soft}:{hard}")
    text = log.read_text()
    assert node.proc.poll() is None, text
    assert "Too many open files" in text, text
    for _ in range(100):
        if "works again" in log.read_text():
            break
        time.sleep(0.05)
    assert "works again" in log.read_text()
    assert node.api("GET", "/v1/status")["node"]
    # said once while it lasted, not every round
    for check in ("uplink check", "pod link check"):
        errs = [ln for ln in log.read_text().splitlines() if f'"msg": "{check}: ' in ln]
        assert len(errs) <= 1, errs
    node.stop()
    assert '"signal received, stopping"' in log.read_text() and '"SIGTERM"' in log.read_text()


def test_a_changed_vtep_address_is_recorded_for_the_pods_at_restart(node):
    """The node's VTEP address changed while it was stopped: its pods'
    endpoints are recorded behind the new one at the restart (the other
    nodes' FDBs and flood lists follow the records), and the pods forward."""
    import sqlite3

    a = node.pod("a", CT_SPEC)
    b = node.pod("b", IT_SPEC)
    db = node.tmp / "state" / "state.db"

    def vteps():
        with contextlib.closing(sqlite3.connect(db)) as c:
            return {v for (v,) in c.execute("SELECT vtep FROM endpoints WHERE vtep IS NOT NULL")}

    assert vteps() == {"10.99.0.1"}
    node.stop()
    node.cfg.write_text(node.cfg.read_text().replace("10.99.0.1/24", "10.99.0.7/24"))
    node.start()
    for _ in range(300):
        if vteps() == {"10.99.0.7"}:
            break
        time.sleep(0.05)
    assert vteps() == {"10.99.0.7"}
    moved = [
        json.loads(ln)
        for ln in (node.tmp / "service.log").read_text().splitlines()
        if "endpoint moved to the node's VTEP address" in ln
    ]
    assert {(m["pod"], m["old"], m["new"]) for m in moved} == {
        ("a", "10.99.0.1", "10.99.0.7"),
        ("b", "10.99.0.1", "10.99.0.7"),
    }, moved
    assert ping(a["ns"], ip_of(b)).returncode == 0


def test_a_state_directory_removed_while_it_runs_is_written_back(node, tmp_path):
    """`rm -rf` of the state directory under a running service (a tidy-up):
    the state file is written back from the copy the service has open - a
    pod added meanwhile in it too - and its lock file made and held again,
    so that a second service on the store is still refused; its API socket
    removed too: listening there again; a restart replays every pod."""
    a = node.pod("a", IT_SPEC)
    b = node.pod("b", IT_SPEC)
    state = node.tmp / "state"
    shutil.rmtree(state)
    node.pod("c", IT_SPEC)  # its change goes into the file written back
    os.unlink(node.sock)
    log = node.tmp / "service.log"
    for _ in range(300):  # the housekeeping (every 5 s) makes them again
        if os.path.exists(f"{state}/state.db.lock") and os.path.exists(node.sock):
            break
        time.sleep(0.05)
    assert node.api("GET", "/v1/status")["ports"]  # the API answers there again
    text = log.read_text()
    assert f"api_socket: {node.sock} was removed while the service ran; listening" in text
    assert "the state file was removed while the service ran; written back" in text, text[-3000:]
    assert '"a lock file of this service was removed while it ran: made again"' in text
    assert (state / "state.db").exists()
    other = tmp_path / "other.yaml"
    other.write_text(
        node.cfg.read_text()
        .replace(f":{node.metrics_port}", f":{free_port()}")
        .replace(f"api_socket: {node.sock}", f"api_socket: {tmp_path}/other.sock")
    )
    r = run_service(other)
    assert r.returncode == 2, r.stdout + r.stderr
    assert (
        f"store.path: {state}/state.db is in use by a running service (pid {node.proc.pid})"
        in r.stderr
    ), r.stderr
    node.stop()
    node.start()
    assert sorted(p["name"] for p in node.api("GET", "/v1/pods")) == ["a", "b", "c"]
    assert ping(a["ns"], ip_of(b)).returncode == 0
