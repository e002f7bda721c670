"""A pod's shared memory cannot take the core down: bursts on a memif port
run under the fault guard (csrc/dp_shm.h). The pod's side is a memif client
in Python (tests/memifpeer.py) against the core's own net_memif server port;
the engine runs in a child process, so a fault the guard missed kills it and
the test with it."""

import os
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.memifpeer import MemifError, MemifPeer
from tests.test_core import A, B, Topo, drops_since, wait_drop

M = "02:00:00:00:00:0d"  # the memif pod's MAC
PAGE = 4096
MAX_FAULTS = 16  # DP_SHM_MAX_FAULTS


def frame(src, dst, n=0):
    return bytes(Ether(src=src, dst=dst) / IP(src="10.1.0.2", dst="10.1.0.1") / UDP(sport=n + 1))


def wait_port(eng, port, key, n, tries=300):
    for _ in range(tries):
        if eng.counters().port_dict(port)[key] >= n:
            break
        time.sleep(0.01)
    return eng.counters().port_dict(port)[key]


def connect(sock):
    """A new client, once the core has seen the last one go."""
    for _ in range(100):
        try:
            return MemifPeer(sock)
        except (MemifError, OSError):
            time.sleep(0.05)
    return MemifPeer(sock)


@pytest.fixture
def memif(eng, tmp_path):
    """Topo's ring pods a, b in network 0 and a memif server port for pod M."""
    t = Topo(eng)
    sock = str(tmp_path / "m.sock")
    t.m = eng.add_port(f"net_memif_g0,role=server,socket={sock},socket-abstract=no", network=0)
    eng.fdb_add_local(0, M, t.m)
    t.sock = sock
    return t


def test_ring_ports_are_not_guarded(memif):
    assert memif.eng.port_info(memif.m).shared_memory
    assert not memif.eng.port_info(memif.a).shared_memory


def test_shrunk_memory_under_rx_is_cut_and_counted(memif):
    """A pod that truncates its shared memory under the core's mapping (a
    SIGBUS at the next read of its rings): the burst is cut short and
    counted, the port set aside, the other pods' traffic goes on, frames to
    the port are counted lost, and the next pod on the port works."""
    t, eng = memif, memif.eng
    base = eng.counters().drops()
    with MemifPeer(t.sock) as p:
        p.send(frame(M, A))
        assert t.recv(t.a)[0].src == M
        assert not eng.port_info(t.m).set_aside
        faults0 = eng.counters().port_dict(t.m)["shm_faults"]
        p.shrink()
        assert wait_port(eng, t.m, "shm_faults", faults0 + 1) >= faults0 + 1
        # frames to it while it faults or is set aside: counted lost
        t.send(t.a, frame(A, M))
        assert wait_drop(eng, base, "shm_fault") == 1
    t.send(t.a, frame(A, B))
    assert t.recv(t.b)[0].src == A
    # the pod gone, the port is tried again and the next pod's frames flow
    with connect(t.sock) as q:
        q.send(frame(M, A, 7))
        got = t.recv(t.a)[0]
        assert got.src == M and got[UDP].sport == 8
        assert not eng.port_info(t.m).set_aside
        faults = eng.counters().port_dict(t.m)["shm_faults"]
        time.sleep(0.3)  # a good pod: no more faults
        assert eng.counters().port_dict(t.m)["shm_faults"] == faults


def test_a_pod_whose_rings_point_past_its_memory_is_refused(memif):
    """A pod that says its rings are 3.5 GB past its region's start: the
    driver follows the offset as the pod connects (on DPDK's interrupt
    thread, outside any burst) to where nothing is mapped. It finds zeros
    there, no ring, and refuses the pod; the core goes on, and the next
    pod on the port works."""
    t = memif
    for _ in range(3):
        with pytest.raises(MemifError):
            MemifPeer(t.sock, ring_offset=0xE0000000).close()
    with connect(t.sock) as q:
        q.send(frame(M, A, 3))
        assert t.recv(t.a)[0][UDP].sport == 4
    t.send(t.a, frame(A, B))
    assert t.recv(t.b)[0].src == A


def test_a_pod_that_declares_more_memory_than_it_has_is_refused(memif):
    """The driver reads a new peer's rings in its own thread as it accepts
    the connection, in a mapping of the size the peer declared: a peer
    whose file is empty made that a SIGBUS outside any burst. The page
    reads as zeros instead, the driver finds no ring and refuses the peer;
    the core goes on, and an honest pod connects after it."""
    t, eng = memif, memif.eng
    with pytest.raises(MemifError):
        MemifPeer(t.sock, lie=True)
    t.send(t.a, frame(A, B))
    assert t.recv(t.b)[0].src == A
    with connect(t.sock) as q:
        q.send(frame(M, A, 5))
        assert t.recv(t.a)[0][UDP].sport == 6
    assert eng.counters().port_dict(t.m)["shm_faults"] == 0


def test_shrunk_memory_under_tx_is_cut_and_counted(memif):
    """The same under the core's transmit: the pod offers its buffers, then
    truncates them away (the rings stay); the core's write into them is cut
    short and its frame counted lost."""
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


def test_a_pod_that_keeps_faulting_loses_its_port(memif):
    """A set-aside port is tried again every 100 ms; a pod whose memory
    stays broken faults each time, and after DP_SHM_MAX_FAULTS (16) the port
    is left alone for good (each cut burst may cost the pool mbufs): no more
    faults, no frames from a new pod on it, the others forward on."""
    t, eng = memif, memif.eng
    with MemifPeer(t.sock) as p:
        p.send(frame(M, A))
        assert t.recv(t.a)[0].src == M
        p.shrink()
        assert wait_port(eng, t.m, "shm_faults", MAX_FAULTS, tries=1000) == MAX_FAULTS
        time.sleep(0.5)
        assert eng.counters().port_dict(t.m)["shm_faults"] == MAX_FAULTS
        assert eng.port_info(t.m).set_aside
    rx = eng.counters().port_dict(t.m)["rx_packets"]
    with connect(t.sock) as q:  # the driver still takes the connection
        q.send(frame(M, A, 99))
        t.nothing(t.a)
        assert eng.counters().port_dict(t.m)["rx_packets"] == rx
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
    with connect(t.sock) as q:
        q.send(frame(M, B, 99))
        got = t.recv(t.b)
        # besides it, a frame read through a stale ring index may arrive
        # (DPDK's reconnect race, docs/dpdk-pods.md), sometimes first: it
        # is not this one, so wait for one more frame when it came alone
        if not any(UDP in g and g[UDP].sport == 100 for g in got):
            got += t.recv(t.b)
        assert any(UDP in g and g[UDP].sport == 100 for g in got), got


SIGBUS_ELSEWHERE = r"""
import mmap, os, sys, tempfile
from dataplane.engine import Engine, EngineConfig

eng = Engine(EngineConfig(mode="fallback", lcores=[0, 1], memory_mb=256, n_mbufs=2047,
                          file_prefix=sys.argv[1]))
eng.start()  # the fault guard is in place from here
fd, path = tempfile.mkstemp()
os.write(fd, b"x" * 8192)
m = mmap.mmap(fd, 8192)
os.ftruncate(fd, 0)  # the mapping outlives the file's pages
os.unlink(path)
print("read", m[4096], flush=True)  # SIGBUS: past the end of the file
"""


def run_engine_script(script, tag, *args, timeout=120):
    """``script`` run by a Python of its own with an EAL file prefix (its
    first argument) and ``args``; the EAL's runtime directory, which a
    process killed by a signal leaves, removed after it."""
    import shutil
    import subprocess
    import sys
    import uuid

    from dataplane.engine import _runtime_dir

    prefix = f"{tag}-{uuid.uuid4().hex[:8]}"
    try:
        return subprocess.run([sys.executable, "-c", script, prefix, *map(str, args)],
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
    finally:
        shutil.rmtree(os.path.join(_runtime_dir(), prefix), ignore_errors=True)


def test_a_fault_outside_the_pods_memory_is_not_hidden():
    """The guard reads zeros for a page a memif peer declared but did not
    back, on the driver's own thread only: a SIGBUS of any other thread on
    any other file mapping (a store's mmap over a file cut short) kills the
    process as it would without the guard, instead of reading zeros and
    writing to a private page."""
    import signal

    r = run_engine_script(SIGBUS_ELSEWHERE, "dpbus")
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stdout, r.stderr[-2000:])
    assert "read" not in r.stdout


SENT_SIGNAL = r"""
import sys, time
from dataplane.engine import Engine, EngineConfig

eng = Engine(EngineConfig(mode="fallback", lcores=[0, 1], memory_mb=256, n_mbufs=2047,
                          file_prefix=sys.argv[1]))
eng.start()  # the fault guard is in place from here
print("ready", flush=True)
time.sleep(60)
print("alive", flush=True)
"""


@pytest.mark.parametrize("sig", ["SIGBUS", "SIGSEGV"])
def test_a_signal_sent_with_kill_is_not_taken_for_a_fault(sig):
    """SIGBUS or SIGSEGV sent to the process (kill) is not a fault of an
    access: the guard does not swallow it, and the process ends as it would
    without the guard."""
    import shutil
    import signal
    import subprocess
    import sys
    import uuid

    from dataplane.engine import _runtime_dir

    prefix = f"dpkill-{uuid.uuid4().hex[:8]}"
    p = subprocess.Popen([sys.executable, "-c", SENT_SIGNAL, prefix], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()[-2000:]
        p.send_signal(getattr(signal, sig))
        try:
            out, err = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
    finally:  # killed by the signal: the EAL's runtime directory is left
        if p.poll() is None:
            p.kill()
            p.wait()
        shutil.rmtree(os.path.join(_runtime_dir(), prefix), ignore_errors=True)
    assert p.returncode == -getattr(signal, sig), (p.returncode, out, err[-2000:])
    assert "alive" not in out


PODS_EXIT_AS_PORTS_GO = r"""
import sys
from dataplane.engine import Engine, EngineConfig
from tests.memifpeer import MemifPeer
from tests.test_core import A, Topo
from tests.test_memif_guard import M, frame

prefix, folder, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
eng = Engine(EngineConfig(mode="fallback", lcores=[0, 1], memory_mb=256, n_mbufs=2047,
                          file_prefix=prefix))
eng.start()
t = Topo(eng)
for i in range(n):
    sock = f"{folder}/p{i}.sock"
    m = eng.add_port(f"net_memif_p{i},role=server,socket={sock},socket-abstract=no", network=0)
    eng.fdb_add_local(0, M, m)
    with MemifPeer(sock) as p:
        p.send(frame(M, A, i))
        got = t.recv(t.a)
        assert got and got[0].src == M, got
    eng.del_port(m)  # as the pod's exit reaches the driver's thread
print("removed", flush=True)
eng.close()
print("closed", flush=True)
"""


def test_pods_that_exit_as_their_ports_go_do_not_take_the_core_down(tmp_path):
    """A memif pod exits and its port is removed at once, 200 times: the
    driver's thread (the pod's exit) and the control thread (the port's stop)
    both free the connection's regions, and without the core holding the
    driver's thread during the removal they freed them twice; the EAL's
    cleanup at the core's shutdown then walked the interrupt sources the
    removed ports' sockets left behind as it gave their memory back. The
    process must live through both and end cleanly."""
    r = run_engine_script(PODS_EXIT_AS_PORTS_GO, "dpgone", tmp_path, 200, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-2000:])
    assert r.stdout.split() == ["removed", "closed"]
