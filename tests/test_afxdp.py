"""The node service with ``kernel_driver: af_xdp`` (and ``vtep.uplink_driver:
af_xdp``): pod veths and the kernel uplink through DPDK's ``net_af_xdp`` on
real veths in namespaces the tests make; ping, TCP and UDP between pods; a
restart; an af_xdp uplink re-created (left to a restart); the mbuf pool's
limit; the config's refusals."""

import os
import re
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from tests.test_service import (
    CT_SPEC,
    IT_SPEC,
    ROOT,
    Node,
    ip_of,
    ping,
    pytestmark,
    sh,
    uplink_problem,
)

__all__ = ["pytestmark"]  # root and the netns marker, as the service tests

AF_XDP = "kernel_driver: af_xdp"

# a TCP echo of 1 MB and 200 UDP datagrams, server side in one pod, client
# side in the other; both print what they got
SERVER = textwrap.dedent("""
    import socket, sys
    t = socket.create_server(("0.0.0.0", 5301))
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 5302))
    u.settimeout(10)
    t.settimeout(10)
    print("ready", flush=True)
    c, _ = t.accept()
    c.settimeout(10)
    n = 0
    while n < 1 << 20:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
        n += len(d)
    c.close()
    got = 0
    try:
        while got < 200:
            d, a = u.recvfrom(2048)
            got += 1
            u.sendto(d, a)
    except OSError:
        pass
    print("tcp", n, "udp", got, flush=True)
""")
CLIENT = textwrap.dedent("""
    import os, socket, sys, time
    ip = sys.argv[1]
    data = os.urandom(1 << 20)
    c = socket.create_connection((ip, 5301), timeout=10)
    c.sendall(data)
    back = b""
    while len(back) < len(data):
        d = c.recv(65536)
        if not d:
            break
        back += d
    c.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(0.5)
    echoed = 0
    for i in range(200):
        u.sendto(i.to_bytes(4, "big") * 100, (ip, 5302))
        try:
            echoed += u.recv(2048) == i.to_bytes(4, "big") * 100
        except OSError:
            pass
    print("tcp_ok", back == data, "udp_echoed", echoed, flush=True)
""")


def xdp_progs():
    """Interfaces of this namespace with an XDP program attached."""
    out = sh("ip", "-o", "link").stdout
    return set(re.findall(r"^\d+: ([^:@]+)[^\n]*prog/xdp", out, re.M))


def make_node(tmp_path, uplink_af_xdp: bool) -> Node:
    n = Node(tmp_path, uuid.uuid4().hex[:5], extra=AF_XDP)
    if uplink_af_xdp:
        text = n.cfg.read_text()
        n.cfg.write_text(
            text.replace(f"uplink: {n.uplink}}}", f"uplink: {n.uplink}, uplink_driver: af_xdp}}")
        )
    return n


@pytest.fixture
def node(tmp_path):
    n = make_node(tmp_path, uplink_af_xdp=False)
    try:
        n.start()
        yield n
    finally:
        n.cleanup()


@pytest.fixture
def node_xdp_uplink(tmp_path):
    n = make_node(tmp_path, uplink_af_xdp=True)
    try:
        n.start()
        yield n
    finally:
        n.cleanup()


def test_pods_ping_and_exchange_tcp_and_udp(node_xdp_uplink):
    node = node_xdp_uplink
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", IT_SPEC)
    # the uplink and every pod veth are read through AF_XDP
    assert {node.uplink, *node.host_links} <= xdp_progs()
    names = {p["name"] for p in node.api("GET", "/v1/status")["ports"]}
    assert {f"net_af_xdp_{x}" for x in (node.uplink, *node.host_links)} <= names
    assert "af_xdp" in (node.tmp / "service.log").read_text()
    r = ping(a["ns"], ip_of(b), count=5)
    assert r.returncode == 0, r.stdout + r.stderr
    exchange(a, b)
    st = node.api("GET", "/v1/status")
    net1 = next(n for n in st["networks"] if n["name"] == "net1")
    assert net1["local_packets"] > 1000


def exchange(a, b):
    """A TCP echo of 1 MB and 200 UDP datagrams from pod a to pod b."""
    srv = subprocess.Popen(
        ["ip", "netns", "exec", b["ns"], sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        assert srv.stdout.readline().strip() == "ready"
        cl = subprocess.run(
            ["ip", "netns", "exec", a["ns"], sys.executable, "-c", CLIENT, ip_of(b)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        out, _ = srv.communicate(timeout=30)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    assert "tcp_ok True" in cl.stdout, cl.stdout + cl.stderr
    echoed = int(re.search(r"udp_echoed (\d+)", cl.stdout).group(1))
    assert echoed >= 190, cl.stdout  # paced, one at a time: a loss here is a bug
    assert f"tcp {1 << 20}" in out, out


def tx_csum(ns, ifname):
    out = sh("ip", "netns", "exec", ns, "ethtool", "-k", ifname).stdout
    return re.search(r"^tx-checksumming: (\w+)", out, re.M).group(1)


def test_pods_made_under_afpacket_get_their_offloads_off_under_af_xdp(tmp_path):
    """A node switched from afpacket (pods keep their checksum offload) to
    af_xdp (which cannot carry a frame's checksum state): the replay turns
    the pods' offloads off, and their TCP still arrives whole."""
    n = Node(tmp_path, uuid.uuid4().hex[:5])
    try:
        n.start()
        a = n.pod("a", CT_SPEC)
        b = n.pod("b", IT_SPEC)
        std_a = next(p["ifname"] for p in a["planes"] if p["plane"] == "std")
        assert tx_csum(a["ns"], std_a) == "on"
        n.stop()
        n.cfg.write_text(n.cfg.read_text() + AF_XDP + "\n")
        n.start()
        assert n.host_links <= xdp_progs()
        assert tx_csum(a["ns"], std_a) == "off"
        exchange(a, b)
    finally:
        n.cleanup()


def test_restart_and_stop_leave_no_xdp_program(node):
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", IT_SPEC)
    assert ping(a["ns"], ip_of(b)).returncode == 0
    # the uplink stays with AF_PACKET (uplink_driver's default): the host's
    # own traffic on it is not taken away
    assert node.uplink not in xdp_progs()
    node.stop()
    # the ports are closed: their XDP programs went with them
    assert not (node.host_links & xdp_progs())
    node.start()  # the pods are replayed through AF_XDP again
    assert node.host_links <= xdp_progs()
    assert ping(a["ns"], ip_of(b)).returncode == 0
    node.cli("pod", "del", "a")
    assert not (set(p["host_ifname"] for p in a["planes"]) & xdp_progs())


def _check(tmp_path, text):
    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        "node: x\nvtep: {address: 10.0.0.1/24, uplink: dpu0x}\n"
        "networks:\n  - {name: n, vni: 5, plane: std, subnet: 10.1.0.0/24}\n"
        f"api_socket: {tmp_path}/api.sock\nstate_dir: {tmp_path}/st\n" + text
    )
    r = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "run", "-c", str(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode != 0
    assert not (tmp_path / "api.sock").exists() and not (tmp_path / "st").exists()
    return r.stderr


def test_a_re_created_af_xdp_uplink_is_left_to_a_restart(node_xdp_uplink):
    """An af_xdp uplink (DPDK's net_af_xdp holds the device) deleted and
    created again is not moved while the service runs, as an AF_PACKET
    one is: status says so, and what to do."""
    node, peer = node_xdp_uplink, f"dpu{node_xdp_uplink.tag}b"
    sh("ip", "link", "del", node.uplink)
    sh("ip", "link", "add", node.uplink, "type", "veth", "peer", "name", peer)
    for dev in (node.uplink, peer):
        sh("ip", "link", "set", dev, "up")
    for _ in range(200):  # the service looks once a second
        p = node.api("GET", "/v1/status")["uplink_problem"]
        if p and "was re-created" in p:
            break
        time.sleep(0.05)
    assert p and p.endswith(
        "the core still holds the old device (a vtep.uplink_driver af_xdp uplink is not "
        "moved while the service runs); restart the service to attach the new one"
    ), p
    assert node.proc.poll() is None


def test_bad_kernel_driver_is_refused_naming_the_field(tmp_path):
    err = _check(tmp_path, "kernel_driver: xdp\n")
    assert "kernel_driver: 'xdp' is not one of afpacket, af_xdp" in err


def test_af_xdp_refuses_jumbo_frames(tmp_path):
    from dataplane.config import parse_config
    from dataplane.errors import ConfigError

    up = {"address": "10.0.0.1/24", "uplink": "eth1", "underlay_mtu": 9000}
    base = {
        "kernel_driver": "af_xdp",
        "vtep": up,
        "networks": [{"name": "n", "vni": 5, "plane": "std", "subnet": "10.1.0.0/24"}],
    }
    # a network's MTU follows the underlay's (less 50) unless given
    with pytest.raises(ConfigError, match=r"^networks\[0\]\.mtu: 8950 is more than kernel_driver"):
        parse_config(base)
    ok = dict(base, networks=[{**base["networks"][0], "mtu": 1778}])
    assert parse_config(ok).kernel_driver == "af_xdp"
    assert parse_config(dict(base, kernel_driver="afpacket")).kernel_driver == "afpacket"
    xdp_up = dict(ok, vtep=dict(up, uplink_driver="af_xdp"))
    with pytest.raises(ConfigError, match=r"^vtep\.underlay_mtu: 9000 is more than uplink_driver"):
        parse_config(xdp_up)
    c = parse_config(dict(base, vtep=dict(up, uplink_driver="af_xdp", underlay_mtu=1778)))
    assert c.vtep.uplink_driver == "af_xdp" and parse_config(c.to_dict()) == c


def test_bad_uplink_driver_is_refused_naming_the_field():
    from dataplane.config import parse_config
    from dataplane.errors import ConfigError

    def cfg(**vtep):
        return {"vtep": {"address": "10.0.0.1/24", "uplink": "eth1", **vtep}}

    with pytest.raises(ConfigError, match=r"^vtep\.uplink_driver: 'xdp' is not one of afpacket"):
        parse_config(cfg(uplink_driver="xdp"))
    with pytest.raises(ConfigError, match=r"^vtep\.uplink_driver: af_xdp is for a kernel"):
        parse_config(cfg(uplink="dpdk:net_null0", uplink_driver="af_xdp"))
    with pytest.raises(ConfigError, match=r"^vtep\.uplink: 'a,b': uplink_driver af_xdp needs"):
        parse_config(cfg(uplink="a,b", uplink_driver="af_xdp"))
    assert parse_config(cfg()).vtep.uplink_driver == "afpacket"


# what every child below starts with: an engine of 8191 mbufs (EAL
# --no-huge) in a process of its own, so that its net_af_xdp ports' XDP
# programs and UMEMs go when it ends
CHILD_ENGINE = textwrap.dedent("""
    import os, subprocess, sys, time
    from dataplane.engine import Engine, EngineConfig
    from dataplane.errors import ResourceError
    from dataplane.podlife import add_kernel_port
    cfg = EngineConfig(mode="fallback", lcores=[0, 1], memory_mb=256, n_mbufs=8191,
                       file_prefix=f"afxdp-test-{os.getpid()}", log_level="error")
""")


def run_child(body: str, *args, **kw) -> subprocess.CompletedProcess:
    """``body`` after CHILD_ENGINE in a child Python, with ``args``."""
    return subprocess.run([sys.executable, "-c", CHILD_ENGINE + body, *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, **kw)  # fmt: skip


POOL_CHILD = textwrap.dedent("""
    with Engine(cfg) as eng:
        for ifname in sys.argv[1:]:
            try:
                add_kernel_port(eng, ifname, "af_xdp")
                print("added", ifname, flush=True)
            except ResourceError as e:
                print("refused", e, flush=True)
        os.system("ip -o link > " + os.environ["LINKS"])
""")


def test_af_xdp_ports_beyond_the_mbuf_pool_are_refused_cleanly(tmp_path):
    tag = uuid.uuid4().hex[:5]
    names = [f"dpx{tag}{i}" for i in range(3)]
    try:
        for n in names:
            sh("ip", "link", "add", n, "type", "veth", "peer", "name", f"{n}p")
            sh("ip", "link", "set", n, "up")
            sh("ip", "link", "set", f"{n}p", "up")
        links = tmp_path / "links"
        r = run_child(POOL_CHILD, *names, env={**os.environ, "LINKS": str(links)})
        assert r.returncode == 0, r.stdout + r.stderr
        # 8191 mbufs, 4095 kept for forwarding: two ports of 2048 each
        assert f"added {names[0]}" in r.stdout and f"added {names[1]}" in r.stdout
        assert f"refused {names[2]}: kernel_driver af_xdp: the core's pool of 8191 mbufs" in (
            r.stdout
        ), r.stdout
        attached = set(re.findall(r"^\d+: ([^:@]+)[^\n]*prog/xdp", links.read_text(), re.M))
        assert names[:2] == sorted(attached & set(names))  # the refused one has nothing
        assert not set(names) & xdp_progs()  # and the engine's close removed the rest
    finally:
        for n in names:
            sh("ip", "link", "del", n, check=False)


def test_an_af_xdp_uplink_missing_at_start_is_attached_when_it_appears(tmp_path):
    """An af_xdp uplink that does not exist when the service starts is made
    a port once it exists and is up (nothing to let go of: no restart),
    its XDP program on the new device."""
    n = make_node(tmp_path, uplink_af_xdp=True)
    peer = f"dpu{n.tag}b"
    try:
        sh("ip", "link", "del", n.uplink)
        n.start()
        uplink_problem(n, "does not exist (it was not there when the service started)")
        sh("ip", "link", "add", n.uplink, "type", "veth", "peer", "name", peer)
        for dev in (n.uplink, peer):
            sh("ip", "link", "set", dev, "up")
        assert uplink_problem(n, None) is None
        st = n.api("GET", "/v1/status")
        assert [p["name"] for p in st["ports"] if p["role"] == "uplink"] == [
            f"net_af_xdp_{n.uplink}"
        ]
        assert n.uplink in xdp_progs()
        assert '"msg": "uplink attached"' in (n.tmp / "service.log").read_text()
    finally:
        n.cleanup()
    assert n.uplink not in xdp_progs()


CHURN_CHILD = textwrap.dedent("""
    with Engine(cfg) as eng:
        eng.start()
        for ifname in sys.argv[1:]:
            try:
                p = add_kernel_port(eng, ifname, "af_xdp")
            except ResourceError as e:
                print("refused", e, flush=True)
                continue
            print("added", ifname, flush=True)
            eng.del_port(p)
            print("in use", eng.pool_in_use(), flush=True)
""")


def test_af_xdp_ports_removed_are_counted_against_the_pool():
    """Ports added and removed one at a time (pods coming and going): the
    mbufs a removed port's fill ring kept are counted before the next open,
    which is refused, naming why, before it takes the forwarding's share."""
    tag = uuid.uuid4().hex[:5]
    names = [f"dpc{tag}{i}" for i in range(3)]
    try:
        for n in names:
            sh("ip", "link", "add", n, "type", "veth", "peer", "name", f"{n}p")
            sh("ip", "link", "set", n, "up")
            sh("ip", "link", "set", f"{n}p", "up")
        r = run_child(CHURN_CHILD, *names)
        assert r.returncode == 0, r.stdout + r.stderr
        # 8191 mbufs, 4095 kept for forwarding: two fill rings of 2048
        assert f"added {names[0]}" in r.stdout and f"added {names[1]}" in r.stdout, r.stdout
        refused = f"refused {names[2]}: kernel_driver af_xdp: the core's pool of 8191 mbufs"
        assert refused in r.stdout, r.stdout
        assert "af_xdp ports removed since the service started" in r.stdout, r.stdout
    finally:
        for n in names:
            sh("ip", "link", "del", n, check=False)


def test_an_interface_receiving_on_several_queues_is_refused_naming_the_fix(tmp_path):
    """af_xdp reads queue 0 only: an interface that spreads its frames over
    more (a multi-queue NIC as the uplink) is refused before anything is
    attached, naming the ethtool command, instead of losing most frames."""
    name = f"dpq{uuid.uuid4().hex[:5]}"
    sh("ip", "link", "add", name, "numrxqueues", "4", "numtxqueues", "4", "type", "veth",
       "peer", "name", f"{name}p", "numrxqueues", "4", "numtxqueues", "4")  # fmt: skip
    try:
        sh("ip", "link", "set", name, "up")
        sh("ip", "link", "set", f"{name}p", "up")
        links = tmp_path / "links"
        r = run_child(POOL_CHILD.replace("ResourceError as e", "Exception as e"), name,
                      env={**os.environ, "LINKS": str(links)})  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert (
            f"refused {name}: kernel_driver af_xdp reads its queue 0 only, and it receives on 4 "
            f"queues: set it to one first (ethtool -L {name} combined 1, or rx 1)"
        ) in r.stdout, r.stdout
        assert name not in xdp_progs()
        sh("ethtool", "-L", name, "rx", "1")  # as the message says: then it is taken
        sh("ethtool", "-L", f"{name}p", "tx", "1")  # (veth's XDP: no more peer tx queues)
        r = run_child(POOL_CHILD, name, env={**os.environ, "LINKS": str(links)})
        assert f"added {name}" in r.stdout, r.stdout + r.stderr
    finally:
        sh("ip", "link", "del", name, check=False)


# frames sent into an af_xdp port while no worker reads it: what its socket
# cannot hold is dropped by the kernel and counted dev_rx_missed
MISSED_CHILD = textwrap.dedent("""
    ifname, ns, n, sender = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    with Engine(cfg) as eng:
        p = add_kernel_port(eng, ifname, "af_xdp")
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", sender, f"{ifname}p",
                        str(n)], check=True)
        missed = eng.counters().drops()["dev_rx_missed"]
        eng.start()
        rx = -1
        for _ in range(100):  # until the worker has taken what the socket held
            time.sleep(0.05)
            now = eng.counters().port_dict(p)["rx_packets"]
            if now == rx:
                break
            rx = now
        print("missed", missed, "rx", rx, flush=True)
        eng.del_port(p)
        print("after_del", eng.counters().drops()["dev_rx_missed"], flush=True)
""")
SENDER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((sys.argv[1], 0))
    f = b"\\xff" * 6 + b"\\x02\\x00\\x00\\x00\\x00\\x01" + b"\\x88\\xb5" + bytes(46)
    for _ in range(int(sys.argv[2])):
        s.send(f)
""")


def test_frames_an_af_xdp_socket_cannot_hold_are_counted(tmp_path):
    """No worker reads the port while 3,000 frames come: its socket holds
    what its rings hold and the kernel drops the rest. Each is accounted
    for: received once the worker runs, or dev_rx_missed (DPDK's imissed,
    the socket's own drop count), which stays in the totals once the port
    is gone."""
    tag = uuid.uuid4().hex[:5]
    name, ns, n = f"dpm{tag}", f"dpm{tag}", 3000
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p", "netns", ns)
        for args in ((), ("-n", ns)):  # no IPv6 chatter: only the test's frames
            dev = name if not args else f"{name}p"
            sh("ip", *args, "link", "set", dev, "addrgenmode", "none")
            sh("ip", *args, "link", "set", dev, "up")
        r = run_child(MISSED_CHILD, name, ns, str(n), SENDER)
        assert r.returncode == 0, r.stdout + r.stderr
        got = dict(re.findall(r"(missed|rx|after_del) (\d+)", r.stdout))
        missed, rx = int(got["missed"]), int(got["rx"])
        assert 0 < missed < n and rx > 0, r.stdout
        assert rx + missed == n, r.stdout
        assert int(got["after_del"]) == missed, r.stdout
    finally:
        sh("ip", "link", "del", name, check=False)
        sh("ip", "netns", "del", ns, check=False)


LINK_CHILD = textwrap.dedent("""
    ifname, ns = sys.argv[1], sys.argv[2]
    with Engine(cfg) as eng:
        p = add_kernel_port(eng, ifname, "af_xdp")
        for state in ("up", "down", "up"):
            subprocess.run(["ip", "-n", ns, "link", "set", f"{ifname}p", state], check=True)
            print(f"peer {state}: link {eng.port_info(p).link}", flush=True)
""")


def test_an_af_xdp_port_link_is_its_interface_s(tmp_path):
    """net_af_xdp says its link is up from its start on; the port's link
    (status, metrics) is its kernel interface's: down while the pod's end
    of the veth is down."""
    tag = uuid.uuid4().hex[:5]
    name = ns = f"dpl{tag}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p", "netns", ns)
        sh("ip", "link", "set", name, "up")
        r = run_child(LINK_CHILD, name, ns)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.splitlines() == [
            "peer up: link True",
            "peer down: link False",
            "peer up: link True",
        ], r.stdout
    finally:
        sh("ip", "link", "del", name, check=False)
        sh("ip", "netns", "del", ns, check=False)


FIT_CHILD = textwrap.dedent("""
    ifname = sys.argv[1]
    with Engine(cfg) as eng:
        eng.add_network(0, 5000)
        up = eng.add_ring_port("fitup", role="uplink")  # an underlay of jumbo frames
        eng.set_vtep("10.99.0.1/24", "02:00:00:00:00:01", up, underlay_mtu=9000)
        src = eng.add_ring_port("fitsrc", network=0)
        p = add_kernel_port(eng, ifname, "af_xdp", network=0)
        eng.fdb_add_local(0, "02:00:00:00:00:0b", p)
        eng.start()
        head = bytes.fromhex("02000000000b" "02000000000a" "88b5")
        for size in (1400, 1500 + 14, 1600, 1400):  # the veth's MTU is 1500
            eng.inject(src, [head + bytes(size - len(head))])
            time.sleep(0.2)
            c = eng.counters()
            print(size, c.port_dict(p)["tx_packets"], c.drops()["kport_tx_oversize"], flush=True)
        print({k: v for k, v in eng.counters().drops().items() if v}, flush=True)
""")


def test_frames_longer_than_an_af_xdp_interface_takes_are_counted(tmp_path):
    """A frame longer than the af_xdp port's interface's MTU allows (a
    remote VTEP on a larger underlay MTU) would be dropped by the kernel
    uncounted: it is dropped and counted kport_tx_oversize, as for
    afpacket ports; frames that fit go on."""
    name = f"dpf{uuid.uuid4().hex[:5]}"
    sh("ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    try:
        for dev in (name, f"{name}p"):
            sh("ip", "link", "set", dev, "addrgenmode", "none")
            sh("ip", "link", "set", dev, "up")
        r = run_child(FIT_CHILD, name)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.splitlines()[:4] == [
            "1400 1 0",
            "1514 2 0",
            "1600 2 1",
            "1400 3 1",
        ], r.stdout
    finally:
        sh("ip", "link", "del", name, check=False)
