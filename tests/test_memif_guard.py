"""A pod's shared memory cannot take the core down: bursts on a memif port
run under the fault guard (csrc/dp_shm.h). The pod's side is a memif client
in Python (tests/memifpeer.py) against the core's own net_memif server port;
the engine runs in a child process, so a fault the guard missed kills it and
the test with it."""

import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.memifpeer import MemifError, MemifPeer
from tests.test_core import A, B, Topo, drops_since

M = "02:00:00:00:00:0d"  # the memif pod's MAC
PAGE = 4096


def frame(src, dst, n=0):
    return bytes(Ether(src=src, dst=dst) / IP(src="10.1.0.2", dst="10.1.0.1") / UDP(sport=n + 1))


def wait_port(eng, port, key, n):
    for _ in range(300):
        if eng.counters().port_dict(port)[key] >= n:
            break
        time.sleep(0.01)
    return eng.counters().port_dict(port)[key]


@pytest.fixture
def memif(eng, tmp_path):
    """Topo's ring pods a, b in network 0 and a memif server port for pod M."""
    t = Topo(eng)
    sock = str(tmp_path / "m.sock")
    t.m = eng.add_port(f"net_memif_g0,role=server,socket={sock},socket-abstract=no", network=0)
    eng.fdb_add_local(0, M, t.m)
    t.sock = sock
    return t


def test_shrunk_memory_under_rx_sets_the_port_aside(memif):
    """A pod that truncates its shared memory under the core's mapping (a
    SIGBUS at the next read of its rings): the burst is cut short and
    counted, the port is left alone while that pod stays connected, the
    other pods' traffic goes on, and a new pod on the same port works."""
    t, eng = memif, memif.eng
    with MemifPeer(t.sock) as p:
        p.send(frame(M, A))
        assert t.recv(t.a)[0].src == M
        info = eng.port_info(t.m)
        assert info.shared_memory and not info.set_aside
        faults0 = eng.counters().port_dict(t.m)["shm_faults"]
        p.shrink()
        assert wait_port(eng, t.m, "shm_faults", faults0 + 1) == faults0 + 1
        assert eng.port_info(t.m).set_aside
        # the others forward on; frames to the set-aside port are counted
        t.send(t.a, frame(A, B))
        assert t.recv(t.b)[0].src == A
        t.send(t.a, frame(A, M))
        for _ in range(200):
            if t.drops()["shm_fault"] >= 1:
                break
            time.sleep(0.01)
        assert t.drops()["shm_fault"] == 1
        time.sleep(0.2)  # polled all along, the port does not fault again
        assert eng.counters().port_dict(t.m)["shm_faults"] == faults0 + 1
    # the pod's connection gone, the port is back for the next one
    for _ in range(100):
        try:
            q = MemifPeer(t.sock)
            break
        except (MemifError, OSError):  # the core may not have seen the old one go yet
            time.sleep(0.05)
    with q:
        q.send(frame(M, A, 7))
        got = t.recv(t.a)[0]
        assert got.src == M and got[UDP].sport == 8
        assert not eng.port_info(t.m).set_aside
    assert eng.counters().port_dict(t.m)["shm_faults"] == faults0 + 1


def test_ring_ports_are_not_guarded(memif):
    assert not memif.eng.port_info(memif.a).shared_memory


def test_shrunk_memory_under_tx_is_cut_and_counted(memif):
    """The same under the core's transmit: the pod offers its buffers, then
    truncates them away (the rings stay); the core's write into them is cut
    short, its frame counted lost, the port set aside."""
    t, eng = memif, memif.eng
    with MemifPeer(t.sock) as p:
        p.offer()
        t.send(t.a, frame(A, M, 1))
        for _ in range(200):
            if p.received() >= 1:
                break
            time.sleep(0.01)
        assert p.received() == 1  # the core writes into the pod's buffers
        faults0 = eng.counters().port_dict(t.m)["shm_faults"]
        p.shrink(PAGE)
        base = eng.counters().drops()
        t.send(t.a, frame(A, M, 2))
        assert wait_port(eng, t.m, "shm_faults", faults0 + 1) == faults0 + 1
        assert drops_since(eng, base)["shm_fault"] == 1
        t.send(t.a, frame(A, B))
        assert t.recv(t.b)[0].src == A


def test_pods_come_and_go_while_the_core_polls(memif):
    """Pods connecting, sending and going away over and over while the core
    polls and transmits to the port: the exit of a memif peer unmaps its
    memory in the driver's interrupt thread, possibly under a burst of the
    worker. The core lives through it, and the last pod's frame arrives."""
    t, eng = memif, memif.eng
    for i in range(150):
        with MemifPeer(t.sock) as p:
            p.offer()
            for k in range(4):
                p.send(frame(M, A, k))
            t.send(t.a, *[frame(A, M, k) for k in range(4)])
        eng.collect(t.a, wait=0)
    for _ in range(100):
        try:
            q = MemifPeer(t.sock)
            break
        except (MemifError, OSError):
            time.sleep(0.05)
    with q:
        q.send(frame(M, B, 99))
        got = t.recv(t.b)
        assert any(g[UDP].sport == 100 for g in got)
