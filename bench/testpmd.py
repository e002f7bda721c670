"""The baseline: ``dpdk-testpmd --forward-mode=io`` on the same ports.

One run starts testpmd interactively (``-i``) with the same two devices our
side uses, ``net_pcap0,rx_pcap=PCAP,infinite_rx=1`` (port 0) and
``net_null0,no-rx=1`` (port 1), the same EAL lcores ``-l 0,1`` (one
forwarding lcore), and drives it over stdin:

    <prompt>  start                      (after init: the prompt shows it is ready)
    warmup    show port stats all        -> t0, TX-packets of port 1
    SECONDS   show port stats all        -> t1, TX-packets of port 1
              stop, quit

Mpps = delta TX-packets of the null port / (t1 - t0), t0 and t1 taken on
our clock when each command is written (testpmd executes it within
microseconds; its own "Tx-pps" of the second show, measured on its clock
over the same interval, is kept as a cross-check).

Why ``no-rx=1``: with a plain ``net_null0`` testpmd's paired topology also
forwards null -> pcap (the null PMD receives an endless stream), which
halves the pcap -> null rate on a single forwarding core.

Why ``--no-flush-rx``: testpmd drains rx queues at start; on a pcap input
the first packets would vanish. Why ``stdbuf -oL``: testpmd's printf output
is block-buffered on a pipe; the prompt, written directly, is not.

Robustness: every wait has a timeout; on any failure (or Ctrl-C) the
process we started is killed by its PID - its own process group - never by
name.
"""

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from typing import List, Optional

from .common import pool_memory_mb, remove_eal_runtime_dir

PROMPT = "testpmd> "
TESTPMD = "dpdk-testpmd"

_STATS_RE = re.compile(
    r"NIC statistics for port (\d+)\s+#+\s+"
    r"RX-packets:\s*(\d+).*?TX-packets:\s*(\d+).*?Tx-pps:\s*(\d+)",
    re.S,
)


# what "stop" prints per port: counted from "start" to "stop", read after
# the forwarding lcores finished, so nothing is in flight between them
_FWD_RE = re.compile(
    r"Forward statistics for port (\d+)\s+-+\s+"
    r"RX-packets:\s*(\d+).*?TX-packets:\s*(\d+)\s+TX-dropped:\s*(\d+)",
    re.S,
)


class TestpmdError(RuntimeError):
    """testpmd failed to start, to answer, or gave output we cannot parse."""


class _Output:
    """Collects a process's stdout in a thread; lets us wait for prompts."""

    def __init__(self, stream):
        self._fd = stream.fileno()
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._eof = False
        self._t = threading.Thread(target=self._run, name="testpmd-output", daemon=True)
        self._t.start()

    def _run(self):
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:
                chunk = b""
            with self._cond:
                if not chunk:
                    self._eof = True
                else:
                    self._buf += chunk
                self._cond.notify_all()
            if not chunk:
                return

    def text(self) -> str:
        with self._cond:
            return self._buf.decode("utf-8", "replace")

    def wait_prompts(self, n: int, timeout: float) -> bool:
        """Wait until the output holds ``n`` prompts; False on timeout/EOF."""
        want = PROMPT.encode()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._buf.count(want) < n:
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def join(self, timeout: float):
        self._t.join(timeout)


def command(
    pcap: str,
    mode: str = "hugepages",
    n_mbufs: int = 16384,
    file_prefix: Optional[str] = None,
    testpmd: str = TESTPMD,
) -> List[str]:
    """The testpmd command line for one run."""
    eal = [
        "-l",
        "0,1",
        "--main-lcore",
        "0",
        "--no-pci",
        "--file-prefix",
        file_prefix or f"bench-testpmd-{os.getpid()}",
        "-m",
        str(pool_memory_mb(n_mbufs)),
        "--vdev",
        f"net_pcap0,rx_pcap={pcap},infinite_rx=1",
        "--vdev",
        "net_null0,no-rx=1",
    ]
    # same memory model as our engine: hugepages via memfd (nothing left in
    # hugetlbfs if killed), or plain memory without shared config files
    eal += ["--in-memory"] if mode == "hugepages" else ["--no-huge", "--no-shconf"]
    app = [
        "-i",
        "--forward-mode=io",
        "--no-flush-rx",
        "--nb-cores=1",
        "--rxq=1",
        "--txq=1",
        "--burst=32",
        f"--total-num-mbufs={n_mbufs}",
    ]
    prog = [testpmd]
    stdbuf = shutil.which("stdbuf")
    if stdbuf:
        prog = [stdbuf, "-oL"] + prog
    return prog + eal + ["--"] + app


def _port_stats(segment: str):
    """{port: (rx_packets, tx_packets, tx_pps)} from one 'show port stats all'."""
    return {int(m[1]): (int(m[2]), int(m[3]), int(m[4])) for m in _STATS_RE.finditer(segment)}


def measure(
    pcap: str,
    seconds: float,
    warmup: float,
    mode: str = "hugepages",
    n_mbufs: int = 16384,
    startup_timeout: float = 60.0,
    file_prefix: Optional[str] = None,
    testpmd: str = TESTPMD,
) -> dict:
    """One testpmd io-forward run; the pcap -> null rate over ``seconds``."""
    if shutil.which(testpmd) is None:
        raise TestpmdError(f"{testpmd} not found (Debian/Ubuntu: apt-get install dpdk)")
    prefix = file_prefix or f"bench-testpmd-{os.getpid()}"
    cmd = command(pcap, mode, n_mbufs, prefix, testpmd)
    try:
        # own session: on failure we kill its process group, i.e. exactly
        # what we started (and anything it started), and a Ctrl-C meant for
        # us does not hit testpmd half-way through a command
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as e:
        remove_eal_runtime_dir(prefix)
        raise TestpmdError(f"cannot run {cmd[0]}: {e}") from None
    out = _Output(proc.stdout)
    prompts = 1  # testpmd's first prompt says it is ready

    def send(line: str, timeout: float = 10.0):
        """Write a command; wait for the next prompt; return the write time."""
        nonlocal prompts
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()
        t = time.monotonic()
        if not out.wait_prompts(prompts + 1, timeout):
            raise TestpmdError(f"no answer to {line!r} within {timeout:.0f} s")
        prompts += 1
        return t

    try:
        if not out.wait_prompts(prompts, startup_timeout):
            if proc.poll() is not None:
                raise TestpmdError(f"exited with code {proc.returncode} before it was ready")
            raise TestpmdError(f"not ready within {startup_timeout:.0f} s")
        send("start")
        time.sleep(warmup)
        t0 = send("show port stats all")
        time.sleep(max(0.0, t0 + seconds - time.monotonic()))
        t1 = send("show port stats all")
        send("stop")
        proc.stdin.write(b"quit\n")
        proc.stdin.close()
        proc.wait(timeout=30)
        out.join(5)
    except (TestpmdError, OSError, subprocess.TimeoutExpired) as e:
        tail = "\n".join(out.text().splitlines()[-25:])
        raise TestpmdError(f"testpmd: {e}\n--- last output ---\n{tail}") from None
    finally:
        if proc.poll() is None:  # ours: by its PID (= its process group)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        remove_eal_runtime_dir(prefix)  # empty, but left behind

    # output after each prompt: [0] init, [1] start, [2] first show, [3] second
    # show, [4] stop
    segs = out.text().split(PROMPT)
    try:
        s0, s1 = _port_stats(segs[2]), _port_stats(segs[3])
        (_, tx0, _), (_, tx1, pps) = s0[1], s1[1]
        in_rx0, in_rx1 = s0[0][0], s1[0][0]
        fwd = {int(m[1]): (int(m[2]), int(m[3]), int(m[4])) for m in _FWD_RE.finditer(segs[4])}
        fwd_rx, fwd_tx, fwd_dropped = fwd[0][0], fwd[1][1], fwd[1][2]
    except (IndexError, KeyError) as e:
        raise TestpmdError(
            f"cannot parse the port statistics ({e!r}):\n"
            + "\n".join(out.text().splitlines()[-40:])
        ) from None
    return {
        # from start to stop, exact: what the pcap port gave, what the null
        # port took, what testpmd's io forwarding dropped (tx refused)
        "fwd_rx_packets": fwd_rx,
        "fwd_tx_packets": fwd_tx,
        "fwd_tx_dropped": fwd_dropped,
        "tx_packets": tx1 - tx0,
        "rx_packets": in_rx1 - in_rx0,
        "seconds": t1 - t0,
        "mpps": (tx1 - tx0) / (t1 - t0) / 1e6,
        "testpmd_tx_mpps": pps / 1e6,  # testpmd's own rate over the interval
        "returncode": proc.returncode,
        "cmd": cmd,
    }
