"""``dataplane capture -w`` against a running node service where the file
meets its limits: a full disk stops the capture with the file cut back to
its last whole block and one line saying why, ``--max-size`` ends it before
the file passes the size, and Ctrl-C while the capture starts removes the
file the client made, never one that was there."""

import contextlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time

import pytest
from nodeparts import sh, underlay_node
from test_service import CT_SPEC, IT_SPEC, NETWORKS, ROOT, ip_of

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

EPB = 6


@pytest.fixture
def node(tmp_path):
    with underlay_node(tmp_path, NETWORKS, ["net1"]) as (n, _):
        yield n


@pytest.fixture
def procs():
    """Processes a test starts; the ones still running are killed after it."""
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def capture(node, procs, *args):
    p = subprocess.Popen(
        [sys.executable, "-m", "dataplane.cli", "capture", *args, "--socket", node.sock],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    procs.append(p)
    return p


def started(proc):
    line = proc.stderr.readline()
    assert "capturing" in line, line + proc.stderr.read()


def big_pings(procs, a, b, count):
    """``count`` echoes of 1400 bytes from pod a to pod b, 5 ms apart."""
    p = subprocess.Popen(
        ["ip", "netns", "exec", a["ns"], "ping", "-q", "-c", str(count), "-i", "0.005"]
        + ["-s", "1400", "-W", "1", ip_of(b)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(p)
    return p


def pcapng_blocks(path):
    """The block types of a pcapng file, each block checked whole (its
    length at both ends, inside the file) up to the file's last byte."""
    data = path.read_bytes()
    off, types = 0, []
    while off < len(data):
        assert off + 12 <= len(data), f"a block cut short at {off} of {len(data)}"
        btype, blen = struct.unpack_from("<II", data, off)
        assert blen >= 12 and blen % 4 == 0 and off + blen <= len(data), (
            f"a block cut short at {off} of {len(data)}"
        )
        assert struct.unpack_from("<I", data, off + blen - 4)[0] == blen
        types.append(btype)
        off += blen
    assert types[:2] == [0x0A0D0D0A, 1]  # the section header, the interface
    return types


def scapy_frames(path):
    from scapy.utils import PcapNgReader

    with PcapNgReader(str(path)) as r:
        return list(r)


def written(err):
    m = re.search(r"dataplane: (\d+) frames written to ", err)
    assert m, err
    return int(m.group(1))


def nothing_left_running(node, procs):
    cap = capture(node, procs, "a:std", "--duration", "0.2")
    started(cap)
    assert cap.wait(30) == 0


def test_a_full_disk_stops_the_capture_and_leaves_the_file_whole(node, tmp_path, procs):
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", IT_SPEC)
    small = tmp_path / "small"
    small.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small))
    try:
        out = small / "full.pcapng"
        cap = capture(node, procs, "a:std", "-w", str(out))
        started(cap)
        big_pings(procs, a, b, 400)  # ~1.2 MB of frames for 256 KiB
        assert cap.wait(30) == 1
        err = cap.stderr.read()
        assert "Traceback" not in err, err
        lines = [line for line in err.splitlines() if "No space left on device" in line]
        assert lines == [
            f"dataplane capture: -w {out}: No space left on device; the capture stopped, "
            "the file ends with its last whole frame"
        ], err
        n = written(err)
        size = out.stat().st_size
        assert 200 * 1024 < size <= 256 * 1024 and n > 100, (size, n)
        types = pcapng_blocks(out)
        assert types.count(EPB) == n
        frames = scapy_frames(out)
        assert len(frames) == n and sum(len(f) > 1400 for f in frames) >= n - 8
        nothing_left_running(node, procs)  # the service's side was stopped
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if sh("umount", str(small), check=False).returncode:
            sh("umount", "-l", str(small), check=False)


def test_max_size_ends_the_capture_before_the_file_passes_it(node, tmp_path, procs):
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", IT_SPEC)
    out = tmp_path / "m.pcapng"
    out.write_bytes(b"x" * 100000)  # an earlier file: a refused capture leaves it
    cap = capture(node, procs, "a:std", "udp prot 5", "-w", str(out))
    assert cap.wait(30) != 0 and out.read_bytes() == b"x" * 100000
    cap = capture(node, procs, "a:std", "-w", str(out), "--max-size", "64k")
    started(cap)
    big_pings(procs, a, b, 200)
    assert cap.wait(30) == 0
    err = cap.stderr.read()
    assert f"dataplane: the capture ended: {out} reached --max-size (65536 bytes)" in err, err
    n = written(err)
    size = out.stat().st_size
    # overwritten, stopped at the first frame that would not fit (blocks < 1.5 KiB)
    assert 65536 - 1536 < size <= 65536, size
    assert pcapng_blocks(out).count(EPB) == n == len(scapy_frames(out))
    nothing_left_running(node, procs)


def capture_requests(node, pid):
    """The capture requests of process ``pid`` the service took, in the
    order it answered them: [(method, status)] (the status of one whose
    client had gone is not the handler's)."""
    out = []
    for line in (node.tmp / "service.log").read_text().splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if d.get("msg") == "api request" and d.get("path") == "/v1/capture":
            if d.get("caller_pid") == pid:
                out.append((d["method"], d["status"]))
    return out


def test_a_max_size_below_the_headers_is_refused_before_anything_starts(node, tmp_path, procs):
    """The file begins with its headers - the section header (48 bytes
    here) and an interface block per captured port (44 for a:std, 48 for
    a:control) - and never passes --max-size: a size they do not fit in is
    refused, naming the least size, before a capture starts or the file is
    touched; the headers' size exactly is taken."""
    node.pod("a", CT_SPEC)
    old = tmp_path / "old.pcapng"
    old.write_bytes(b"an earlier capture")
    new = tmp_path / "new.pcapng"
    for target, out, size, least in (
        ("a:std", new, "1", 92),
        ("a:std", old, "91", 92),
        ("a", new, "139", 140),  # both planes of pod a
    ):
        cap = capture(node, procs, target, "-w", str(out), "--max-size", size)
        rc = cap.wait(30)
        err = cap.stderr.read()
        assert rc == 1, err
        assert err.strip() == (
            f"dataplane capture: --max-size {size}: the file's headers alone take {least} "
            f"bytes; --max-size is at least {least}"
        ), err
        assert "capturing" not in err
        assert capture_requests(node, cap.pid) == [("POST", 200)]  # asked, not started
    assert not new.exists()
    assert old.read_bytes() == b"an earlier capture"
    cap = capture(node, procs, "a", "-w", str(new), "--max-size", "140", "--duration", "0.2")
    started(cap)
    assert cap.wait(30) == 0, cap.stderr.read()
    assert new.stat().st_size == 140 and pcapng_blocks(new) == [0x0A0D0D0A, 1, 1]
    nothing_left_running(node, procs)
    # a service from before dry runs refuses dry_run as any unknown field,
    # by name: the words on which the client skips its dry run (the start's
    # answer is checked against --max-size all the same)
    from dataplane.api import APIError

    with pytest.raises(APIError) as e:
        node.api("POST", "/v1/capture", {"target": "a", "dry_rn": True})
    assert e.value.status == 400 and str(e.value).startswith("dry_rn: unknown field"), e.value


@pytest.mark.parametrize(
    "args, msg",
    [
        (("--max-size", "1x"), "'1x': bytes, or a number with k, M or G"),
        (("--max-size", "-5"), "'-5': bytes, or a number with k, M or G"),
        (("--max-size", "1M"), "--max-size needs -w FILE"),
    ],
)
def test_bad_max_sizes_are_refused(tmp_path, args, msg):
    r = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "capture", "a:std", *args]
        + ["--socket", str(tmp_path / "none.sock")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode != 0 and msg in r.stderr, r.stderr


def open_by(proc, path):
    """Wait until ``proc`` has ``path`` open."""
    fds = f"/proc/{proc.pid}/fd"
    for _ in range(200):
        for fd in os.listdir(fds):
            try:
                if os.readlink(f"{fds}/{fd}") == str(path):
                    return
            except OSError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"{path} never opened")


def test_ctrl_c_while_the_capture_starts_removes_only_the_file_it_made(node, tmp_path, procs):
    node.pod("a", CT_SPEC)
    old = tmp_path / "old.pcapng"
    old.write_bytes(b"an earlier capture")
    new = tmp_path / "new.pcapng"
    for out, sig in ((new, signal.SIGINT), (old, signal.SIGINT), (new, signal.SIGTERM)):
        node.proc.send_signal(signal.SIGSTOP)  # the service answers no POST
        try:
            cap = capture(node, procs, "a:std", "-w", str(out))
            open_by(cap, out)
            time.sleep(0.5)  # the POST is sent, its answer awaited
            cap.send_signal(sig)
            rc = cap.wait(30)
        finally:
            node.proc.send_signal(signal.SIGCONT)
        err = cap.stderr.read()
        assert rc == 1, err
        assert err.strip() == "dataplane capture: interrupted before the capture started", err
        if out == new:
            assert not out.exists()
        else:
            assert out.read_bytes() == b"an earlier capture"
    assert node.api("GET", "/v1/status")  # the service went on


def test_a_hangup_stops_the_capture_as_ctrl_c_does(node, tmp_path, procs):
    """The client's terminal or ssh session gone (SIGHUP): the capture is
    stopped in the core and its file closed whole, not left running until
    the service's lease ends it; under nohup (SIGHUP ignored) it goes on."""
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", IT_SPEC)
    out = tmp_path / "hup.pcapng"
    cap = capture(node, procs, "a:std", "-w", str(out))
    started(cap)
    assert subprocess.run(
        ["ip", "netns", "exec", a["ns"], "ping", "-q", "-c", "3", "-i", "0.1", ip_of(b)]
    ).returncode == 0  # fmt: skip
    cap.send_signal(signal.SIGHUP)
    assert cap.wait(30) == 0, cap.stderr.read()
    err = cap.stderr.read()
    assert written(err) >= 6 and pcapng_blocks(out).count(EPB) == written(err), err
    assert node.api("GET", "/v1/status")["capture"] is None  # stopped in the core
    nothing_left_running(node, procs)
    # SIGHUP ignored before it starts (nohup): the capture runs on
    p = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
         "from dataplane.cli import main; sys.exit(main())", "capture", "a:std", "-w",
         str(out), "--socket", node.sock],
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    procs.append(p)
    started(p)
    p.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert p.poll() is None
    p.send_signal(signal.SIGINT)
    assert p.wait(30) == 0, p.stderr.read()


def test_a_capture_to_standard_output(node, tmp_path, procs):
    """``-w -``: the pcapng goes to standard output (into a pipe, as to
    ``tshark -r -``), the messages to standard error; no file named '-'.
    ``-s 0``, as for tcpdump: whole frames."""
    a = node.pod("a", CT_SPEC)
    b = node.pod("b", IT_SPEC)
    cap = subprocess.Popen(
        [sys.executable, "-m", "dataplane.cli", "capture", "a:std", "-c", "6", "-w", "-",
         "-s", "0", "icmp", "--socket", node.sock],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    procs.append(cap)
    assert b"capturing" in cap.stderr.readline()
    assert subprocess.run(
        ["ip", "netns", "exec", a["ns"], "ping", "-q", "-c", "3", "-i", "0.1", ip_of(b)]
    ).returncode == 0  # fmt: skip
    data, err = cap.communicate(timeout=30)
    assert cap.returncode == 0, err
    path = tmp_path / "stdout.pcapng"
    path.write_bytes(data)
    assert pcapng_blocks(path).count(EPB) == 6
    assert [len(f) for f in scapy_frames(path)] == [98] * 6  # echoes of 56 bytes, whole
    assert not (tmp_path / "-").exists()
    assert b"dataplane: 6 frames written to -" in err, err


def test_a_disk_full_before_the_headers_leaves_no_file(node, tmp_path, procs):
    """The file made, the disk already full: its headers cannot be written,
    so the capture stops, says nothing was written and removes the (empty)
    file it made - no 0-byte file that no reader takes."""
    node.pod("a", CT_SPEC)
    small = tmp_path / "small"
    small.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small))
    try:
        filler = small / "filler"
        with open(filler, "wb", buffering=0) as f:  # every block taken
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 4096)
        out = small / "g.pcapng"
        cap = capture(node, procs, "a:std", "-w", str(out))
        assert cap.wait(30) == 1
        err = cap.stderr.read()
        assert "Traceback" not in err, err
        assert (
            f"dataplane capture: -w {out}: No space left on device; the capture stopped, "
            "nothing was written (the file is removed)"
        ) in err, err
        assert not out.exists()
        nothing_left_running(node, procs)
    finally:
        if sh("umount", str(small), check=False).returncode:
            sh("umount", "-l", str(small), check=False)
