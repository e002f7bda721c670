"""``dataplane capture`` interrupted (Ctrl-C, SIGTERM) while its capture
starts, against a running node service: whether the service has already
started the capture and answered, is still to take the start, or has not
been asked yet, the client exits 1 saying it was interrupted before the
capture started, and no capture is left running: the next one starts at
once. The client chooses the capture's id and stops it by that id; a stop
the service takes before the start makes it refuse that start."""

import os
import re
import secrets
import signal
import subprocess
import time

import pytest
from nodeparts import underlay_node
from test_service import CT_SPEC, IT_SPEC, NETWORKS, ip_of, ping

from dataplane.api import APIError
from tests.test_capture_cli_disk import EPB, capture, capture_requests, pcapng_blocks, started

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

INTERRUPTED = "dataplane capture: interrupted before the capture started"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    with underlay_node(tmp_path_factory.mktemp("capint"), NETWORKS, ["net1"]) as (n, _):
        yield n


@pytest.fixture
def procs(node):
    """Processes a test starts; the ones still running are killed after it
    (stopped ones too), and the service is left running."""
    started = []
    yield started
    node.proc.send_signal(signal.SIGCONT)
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def wait_for(what, cond, timeout=20.0):
    until = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > until:
            raise AssertionError(f"never, in {timeout:g} s: {what}")
        time.sleep(0.02)


def wchan(proc):
    with open(f"/proc/{proc.pid}/wchan") as f:
        return f.read()


def awaiting_answer(proc):
    """Wait until ``proc`` has sent its start and waits for the answer: the
    only call a capture client waits in before the start is answered is
    the poll for that answer (its socket has a timeout)."""
    seen = []

    def polling():
        seen.append("poll" in wchan(proc))
        return seen[-2:] == [True, True]

    wait_for(f"pid {proc.pid} waiting for the start's answer", polling)


def unread_answer(proc):
    """Wait until the service's answer waits, unread, in ``proc``'s socket."""

    def queued():
        r = subprocess.run(["ss", "-xnp"], capture_output=True, text=True, check=True)
        for line in r.stdout.splitlines():
            f = line.split()
            if f"pid={proc.pid}," in line and f[1] == "ESTAB" and int(f[2]) > 0:
                return True
        return False

    wait_for(f"an answer in pid {proc.pid}'s socket", queued)


def nothing_running(node):
    """No capture is running: one starts at once (and is stopped)."""
    cap = node.api("POST", "/v1/capture", {"target": "uplink"})
    node.api("DELETE", f"/v1/capture?id={cap['id']}")


def interrupted(cap, timeout=30):
    rc = cap.wait(timeout)
    err = cap.stderr.read()
    assert rc == 1, err
    assert err.strip() == INTERRUPTED, err


def test_an_interrupt_after_the_start_was_answered_stops_the_capture(node, tmp_path, procs):
    """The service started the capture and answered; the client is
    interrupted before it read the answer (and so the capture's id the
    service gave): the capture is stopped before the client exits."""
    out = tmp_path / "a.pcapng"
    for sig in (signal.SIGINT, signal.SIGTERM):
        node.proc.send_signal(signal.SIGSTOP)  # the start is answered only when told
        try:
            cap = capture(node, procs, "uplink", "-w", str(out))
            awaiting_answer(cap)
            cap.send_signal(signal.SIGSTOP)  # the answer is to wait, unread
        finally:
            node.proc.send_signal(signal.SIGCONT)
        try:
            unread_answer(cap)
            wait_for("the capture started", lambda: capture_requests(node, cap.pid))
            assert capture_requests(node, cap.pid) == [("POST", 200)]
            cap.send_signal(sig)
        finally:
            cap.send_signal(signal.SIGCONT)
        interrupted(cap)
        nothing_running(node)  # right after the client exits
        wait_for("the stop logged", lambda: len(capture_requests(node, cap.pid)) > 1)
        assert capture_requests(node, cap.pid) == [("POST", 200), ("DELETE", 200)]
        assert not out.exists()  # the file it made goes


def test_an_interrupt_while_the_service_has_not_taken_the_start(node, tmp_path, procs):
    """The start is sent but the service does not answer yet: the client
    exits at once, its stop sent; whichever of the two the service takes
    first, no capture runs."""
    old = tmp_path / "old.pcapng"
    old.write_bytes(b"an earlier capture")
    node.proc.send_signal(signal.SIGSTOP)
    try:
        cap = capture(node, procs, "uplink", "-w", str(old))
        awaiting_answer(cap)
        cap.send_signal(signal.SIGINT)
        # it does not wait for the service: it exits while the service is
        # still stopped (a client that waited would not, until SIGCONT)
        interrupted(cap)
    finally:
        node.proc.send_signal(signal.SIGCONT)
    assert old.read_bytes() == b"an earlier capture"
    wait_for(
        "the service took the start and the stop",
        lambda: len(capture_requests(node, cap.pid)) == 2,
    )
    # started then stopped, or the stop first and the start refused
    nothing_running(node)


def test_a_stop_that_comes_before_its_start_keeps_it_from_running(node, procs):
    cid = secrets.token_hex(8)
    with pytest.raises(APIError) as e:
        node.api("DELETE", f"/v1/capture?id={cid}")
    assert e.value.status == 404
    with pytest.raises(APIError) as e:
        node.api("POST", "/v1/capture", {"target": "uplink", "id": cid})
    assert e.value.status == 409 and "stopped before it started" in str(e.value)
    nothing_running(node)
    # a start repeated with the running capture's id is answered as the first
    cid = secrets.token_hex(8)
    first = node.api("POST", "/v1/capture", {"target": "uplink", "id": cid})
    try:
        assert first["id"] == cid
        assert node.api("POST", "/v1/capture", {"target": "uplink", "id": cid}) == first
        with pytest.raises(APIError) as e:  # another id: one capture at a time
            node.api("POST", "/v1/capture", {"target": "uplink", "id": secrets.token_hex(8)})
        assert e.value.status == 409
        # the refusal says which runs
        want = f"a capture is already running (one at a time): {cid}, both on uplink for "
        assert want in str(e.value), e.value
    finally:
        node.api("DELETE", f"/v1/capture?id={cid}")
    nothing_running(node)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_before_the_start_leaves_nothing(node, tmp_path, procs, sig):
    """-w to a named pipe nobody reads: the client waits to open it, before
    it sends the start; interrupted there it says so and exits 1, the pipe
    stays and the service was asked nothing."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    cap = capture(node, procs, "uplink", "-w", str(fifo))
    wait_for(f"pid {cap.pid} opening the pipe", lambda: "wait_for_partner" in wchan(cap))
    cap.send_signal(sig)
    interrupted(cap)
    assert fifo.is_fifo()
    assert capture_requests(node, cap.pid) == []
    nothing_running(node)


@pytest.fixture(scope="module")
def pods(node):
    """Pods a (two planes) and b of the module's node, for echoes from a
    to b through the core."""
    return node.pod("a", CT_SPEC), node.pod("b", IT_SPEC)


def state(proc):
    """The process's state letter (/proc/PID/stat): S sleeping, T stopped ..."""
    with open(f"/proc/{proc.pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def stopped(proc):
    wait_for(f"pid {proc.pid} stopped", lambda: state(proc) == "T")


SUMMARY = re.compile(
    r"dataplane: (\d+) frames written to \S+; (\d+) matched the filter, "
    r"(\d+) dropped by the capture"
)


def summed_up(err):
    """(written, matched, dropped) of the client's last line but one."""
    m = SUMMARY.search(err)
    assert m, err
    return tuple(int(g) for g in m.groups())


def sockets_of(proc):
    """The lines of ``ss -xnp`` for unix sockets of ``proc``: a capture
    client has one only while it asks the service something."""
    r = subprocess.run(["ss", "-xanp"], capture_output=True, text=True, check=True)
    return [line for line in r.stdout.splitlines() if f"pid={proc.pid}," in line]


def paused_between_reads(proc):
    """Pause capture client ``proc`` where it has no request out to the
    service (one it sent might be answered while it is paused)."""

    def paused():
        proc.send_signal(signal.SIGSTOP)
        stopped(proc)
        if not sockets_of(proc):
            return True
        proc.send_signal(signal.SIGCONT)
        return False

    wait_for(f"pid {proc.pid} paused between two reads", paused)


def frames_held_in_a_read(node, cap, pods, *sigs):
    """Capture ``cap`` (of a:std, icmp) interrupted by ``sigs`` while it
    waits for the service's answer to a read that hands out frames: the
    client is paused between two reads while a's echoes to b are
    captured, so the core holds them; it is let go with the service paused, so that its next read waits
    for the answer; then, paused again with the signals pending, it gets
    them only once that answer - holding every echo - is in its socket.
    Returns how many frames the echoes made (a:std rx and tx)."""
    a, b = pods
    paused_between_reads(cap)
    r = ping(a["ns"], ip_of(b), count=20, interval="0.01")
    assert r.returncode == 0, r.stdout
    node.proc.send_signal(signal.SIGSTOP)
    try:
        cap.send_signal(signal.SIGCONT)
        awaiting_answer(cap)  # a read the paused service has not answered
        cap.send_signal(signal.SIGSTOP)
        stopped(cap)
        for sig in sigs:
            cap.send_signal(sig)
    finally:
        node.proc.send_signal(signal.SIGCONT)
    try:
        unread_answer(cap)
    finally:
        cap.send_signal(signal.SIGCONT)
    return 40


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_while_a_read_is_answered_loses_no_frame(node, pods, tmp_path, procs, sig):
    """Ctrl-C or SIGTERM while the client waits for the service's answer to
    a read: the client takes that answer, writes its frames and then stops
    the capture - every frame the capture took is in the file or counted
    dropped by the capture."""
    out = tmp_path / "held.pcapng"
    cap = capture(node, procs, "a:std", "-w", str(out), "icmp")
    started(cap)
    echoes = frames_held_in_a_read(node, cap, pods, sig)
    rc = cap.wait(30)
    err = cap.stderr.read()
    assert rc == 0, err
    n, matched, dropped = summed_up(err)
    assert matched >= echoes and n + dropped == matched, err
    assert "were not written" not in err, err
    assert pcapng_blocks(out).count(EPB) == n
    assert capture_requests(node, cap.pid) == [("POST", 200), ("DELETE", 200)]
    nothing_running(node)


def test_a_second_interrupt_gives_up_the_answer_and_counts_its_frames(node, pods, tmp_path, procs):
    """A second stop while the client still waits for an answer with
    frames (a service slow to answer) gives it up: the capture is stopped,
    and the summary counts the frames it held that were not written."""
    out = tmp_path / "given-up.pcapng"
    cap = capture(node, procs, "a:std", "-w", str(out), "icmp")
    started(cap)
    echoes = frames_held_in_a_read(node, cap, pods, signal.SIGINT, signal.SIGTERM)
    rc = cap.wait(30)
    err = cap.stderr.read()
    assert rc == 0, err
    n, matched, dropped = summed_up(err)
    m = re.search(r"dataplane: (\d+) frames the capture took were not written", err)
    assert m, err
    assert matched >= echoes and n + dropped + int(m.group(1)) == matched, err
    assert int(m.group(1)) >= echoes
    assert pcapng_blocks(out).count(EPB) == n
    nothing_running(node)


def test_a_second_stop_gives_up_on_a_pipe_whose_reader_stalled(node, pods, tmp_path, procs):
    """-w to a pipe whose reader keeps it open but stopped reading: the
    client waits for room while the capture runs, a second stop gives up
    on it - the client stops the capture, ends, and counts the frames the
    pipe never took - instead of waiting for the reader forever."""
    import fcntl
    import struct
    import termios

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open, never read
    try:
        cap = capture(node, procs, "a:std", "-w", str(fifo), "icmp")
        started(cap)
        a, b = pods
        subprocess.run(
            ["ip", "netns", "exec", a["ns"], "ping", "-q", "-c", "100", "-i", "0.005"]
            + ["-s", "1400", "-W", "1", ip_of(b)],
            capture_output=True,
            check=True,
        )

        def in_pipe():
            return struct.unpack("i", fcntl.ioctl(reader, termios.FIONREAD, b"\0" * 4))[0]

        seen = []

        def waiting_for_room():
            # blocked in a select (a poll), with no request out to the service
            seen.append("poll" in wchan(cap) and not sockets_of(cap) and in_pipe() > 32768)
            return seen[-2:] == [True, True]

        wait_for(f"pid {cap.pid} waiting for room in the pipe", waiting_for_room)
        cap.send_signal(signal.SIGINT)
        cap.send_signal(signal.SIGTERM)
        rc = cap.wait(30)
        err = cap.stderr.read()
        assert rc == 0, err
        n, matched, dropped = summed_up(err)
        m = re.search(
            r"dataplane: (\d+) frames the capture took were not written: \S+'s reader", err
        )
        assert m, err
        pending = int(m.group(1))
        cut = re.search(r"dataplane: (\d+) frames the capture took were not written: stopped", err)
        assert pending > 0 and n > 0, err
        assert n + dropped + pending + (int(cut.group(1)) if cut else 0) == matched >= 200, err
        nothing_running(node)
    finally:
        os.close(reader)
