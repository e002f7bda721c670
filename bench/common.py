"""What every benchmark entry point shares.

- Output: progress lines (``say``, ``show``) go to stderr, on a terminal
  with the time elapsed, and ``--quiet`` silences them; the one ``RESULT name=... key=value ...`` line
  (``print_result``) goes to stdout, so ``python -m bench NAME > file``
  keeps the figures alone. Failures are said on stderr whatever ``--quiet``.
- Options: ``--seconds``, ``--warmup``, ``--runs`` and ``--quiet``
  (``add_run_options``), checked by ``parse_args``.
- Run sets: medians, ratios, their print form.
- Child processes: started in their own session (a terminal's Ctrl-C
  reaches only the parent, which stops them by PID), with this checkout on
  PYTHONPATH; a Python child reports with one ``BENCH-JSON {...}`` line
  (``emit``; DPDK's log lines share its stdout, hence the prefix) and its
  progress with ``BENCH-SAY ...`` lines (``child_say``), which the parent
  shows as its own.
- ``run_main``: signals, failure reporting and the RESULT line around a
  benchmark's ``run(args)``.

No third-party imports: the children import this module next to DPDK.
"""

import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EAL_RUNTIME_DIRS = ("/var/run/dpdk", os.environ.get("XDG_RUNTIME_DIR", "/tmp") + "/dpdk")
JSON_PREFIX = "BENCH-JSON "
SAY_PREFIX = "BENCH-SAY "


class BenchError(RuntimeError):
    """A benchmark could not be set up or run, or its output was wrong."""


# ------------------------------------------------------------------ output

_quiet = False


def set_quiet(quiet: bool):
    global _quiet
    _quiet = bool(quiet)


def show(line: str = ""):
    """One progress line as it is, on stderr (nothing with --quiet)."""
    if not _quiet:
        print(line, file=sys.stderr, flush=True)


_T0 = time.monotonic()


def say(msg: str = ""):
    """A progress line of the benchmark: ``bench: msg``; on a terminal with
    the time since the start, ``bench [1:05]: msg``, so a long run shows
    how far it is."""
    if not msg:
        show("")
    elif sys.stderr.isatty():
        t = int(time.monotonic() - _T0)
        show(f"bench [{t // 60}:{t % 60:02d}]: {msg}")
    else:
        show(f"bench: {msg}")


def say_machine(busy: str):
    """CPUs and load average before the runs; ``busy`` is what a load
    average above 0.5 means for this benchmark."""
    la = os.getloadavg()[0]
    say(
        f"{os.cpu_count()} CPUs, load average {la:.2f} before the runs"
        + (f" - {busy}" if la > 0.5 else "")
    )


def result_line(name: str, **fields) -> str:
    """``RESULT name=NAME key=value ...``, the fields in the order given;
    values are printed with str(): format floats before."""
    parts = [("name", name), *fields.items()]
    for k, v in parts:
        if not k.isidentifier() or not str(v) or any(c.isspace() or c == "=" for c in str(v)):
            raise ValueError(
                f"RESULT field {k}={v!r}: a key is a name, a value has no blanks and no '='"
            )
    return "RESULT " + " ".join(f"{k}={v}" for k, v in parts)


def print_result(name: str, **fields):
    print(result_line(name, **fields), flush=True)


def parse_result(line: str) -> dict:
    """The fields of a RESULT line, ``name`` included; ValueError if the
    line is not one."""
    words = line.split()
    if not words or words[0] != "RESULT" or len(words) < 2:
        raise ValueError(f"not a RESULT line: {line!r}")
    out = {}
    for w in words[1:]:
        k, sep, v = w.partition("=")
        if not sep or not k.isidentifier() or not v or k in out:
            raise ValueError(f"RESULT line: bad field {w!r} in {line!r}")
        out[k] = v
    if list(out)[0] != "name":
        raise ValueError(f"RESULT line does not start with name=: {line!r}")
    return out


# ----------------------------------------------------------------- options


def add_run_options(
    ap,
    *,
    seconds: float,
    seconds_help: str,
    runs: int,
    runs_help: str,
    warmup: float = None,
    warmup_help: str = None,
):
    """--seconds, --warmup (when a default is given), --runs and --quiet;
    the help texts get "(default X)" appended."""
    ap.add_argument(
        "--seconds", type=float, default=seconds, help=f"{seconds_help} (default {seconds:g})"
    )
    if warmup is not None:
        ap.add_argument(
            "--warmup", type=float, default=warmup, help=f"{warmup_help} (default {warmup:g})"
        )
    ap.add_argument("--runs", type=int, default=runs, help=f"{runs_help} (default {runs})")
    ap.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only the RESULT line (no progress on stderr)",
    )


def parse_args(ap, argv=None):
    """Parse; reject --seconds <= 0, --warmup < 0, --runs < 1 (exit 2,
    naming the option); apply --quiet."""
    args = ap.parse_args(argv)
    bad = [
        f"--{k.replace('_', '-')} must be a finite number, not {v}"
        for k, v in sorted(vars(args).items())
        if isinstance(v, float) and not math.isfinite(v)
    ]
    if bad:
        ap.error(", ".join(bad))
    if args.seconds <= 0:
        bad.append("--seconds must be > 0")
    if getattr(args, "warmup", 0) < 0:
        bad.append("--warmup must be >= 0")
    if args.runs < 1:
        bad.append("--runs must be >= 1")
    if bad:
        ap.error(", ".join(bad))
    set_quiet(args.quiet)
    return args


# ---------------------------------------------------------------- run sets


def median(xs) -> float:
    """The median of the figures measured: a run that failed (NaN) is left
    out; NaN when none was measured."""
    got = [x for x in xs if not math.isnan(x)]
    return statistics.median(got) if got else float("nan")


def medians(runs: dict) -> dict:
    """{key: median} of {key: [one figure per run]}."""
    return {k: statistics.median(v) for k, v in runs.items()}


def run_cmd(
    cmd, what: str, timeout: float = 30.0, check: bool = True, input_text=None, late=BenchError
) -> subprocess.CompletedProcess:
    """Run a set-up command: BenchError naming ``what`` with its output if it
    fails (with ``check``) or is not found, the exception ``late`` if it does
    not finish in ``timeout`` seconds."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input_text)
    except FileNotFoundError:
        raise BenchError(f"{what}: {cmd[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise late(f"{what}: {' '.join(cmd)} did not finish in {timeout:.0f} s") from None
    if check and p.returncode != 0:
        raise BenchError(f"{what}: {' '.join(cmd)} failed: {(p.stderr or p.stdout).strip()}")
    return p


def quiet_netns(ns: str) -> None:
    """A benchmark namespace: no IPv6 (no autoconfiguration or router
    solicitations in the counts), loopback up."""
    run_cmd(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
        "disabling IPv6",
    )
    run_cmd(["ip", "-n", ns, "link", "set", "lo", "up"], "ip")


def check_cpus_present(ap, cpus: dict) -> None:
    """{option: CPU}: each a CPU this machine has (exit 2 naming it)."""
    ncpu = os.cpu_count() or 1
    for opt, cpu in cpus.items():
        if not 0 <= cpu < ncpu:
            ap.error(f"{opt}: CPU {cpu} not present (this machine has {ncpu})")


def check_cpu_options(ap, args) -> None:
    """``--gen-cpu`` and ``--fwd-cpu``: CPUs this machine has, and not the same."""
    check_cpus_present(ap, {"--gen-cpu": args.gen_cpu, "--fwd-cpu": args.fwd_cpu})
    if args.gen_cpu == args.fwd_cpu:
        ap.error("--gen-cpu and --fwd-cpu must differ")


def proc_stat(path: str) -> list:
    """The fields of a /proc/.../stat file after the command name, which may
    hold spaces and parentheses: [0] the state, [1] the parent pid, [11]
    and [12] utime and stime in clock ticks."""
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_ticks(path: str) -> int:
    """utime + stime of the process or thread of a /proc/.../stat file."""
    fields = proc_stat(path)
    return int(fields[11]) + int(fields[12])


def packet_socket_fds(pid="self", keep=lambda fields: True) -> list:
    """The fds of process ``pid``'s AF_PACKET sockets (of its network
    namespace's /proc/PID/net/packet) whose line there, split into ``sk
    RefCnt Type Proto Iface R Rmem User Inode``, ``keep`` accepts."""
    inodes = set()
    with open(f"/proc/{pid}/net/packet") as f:
        next(f)
        for line in f:
            v = line.split()
            if keep(v):
                inodes.add(v[8])
    fds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            fds.append(int(fd))
    return fds


def pool_memory_mb(n_mbufs: int) -> int:
    """EAL memory (MB) for a process whose mbuf pool has ``n_mbufs`` default
    mbufs (2,176 bytes of buffer, ~2.4 KB with header and pool overhead),
    with room for the tables: 1 GiB, or more for a large pool."""
    return max(1024, n_mbufs * 2432 // (1 << 20) + 512)


def ratio(a: float, b: float) -> float:
    """a / b; NaN when b is not positive (no baseline figure)."""
    return a / b if b > 0 else float("nan")


def fmt_runs(xs, digits: int = 2, scale: float = 1.0) -> str:
    """Every run's figure: ``[1.23 1.25 1.19]``."""
    return "[" + " ".join(f"{x * scale:.{digits}f}" for x in xs) + "]"


def fmt_spread(xs, digits: int = 2) -> str:
    """``median [min..max]``, or the one figure of a single run."""
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.median(xs):.{digits}f} [{min(xs):.{digits}f}..{max(xs):.{digits}f}]"


# --------------------------------------------------------- child processes


def child_env() -> dict:
    """Our environment with this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _tail(lines, n: int = 25) -> str:
    return "\n".join("    " + x for x in lines[-n:])


def run_child(cmd, what: str, timeout: float, on_line=None) -> list:
    """Run ``cmd`` (cwd: the checkout) to its end; its output lines (stdout
    and stderr), each also given to ``on_line`` as it comes. Killed - this
    PID - after ``timeout`` s, and on any exception here (Ctrl-C included).
    BenchError, with the last lines, if it does not exit 0."""
    try:
        p = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )
    except OSError as e:
        raise BenchError(f"cannot run {what} ({cmd[0]}): {e}") from None
    expired = threading.Event()

    def kill():
        expired.set()
        p.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    lines = []
    try:
        for line in p.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if on_line is not None:
                on_line(line)
        p.wait()
    finally:
        timer.cancel()
        if p.poll() is None:
            p.terminate()  # a Python child unwinds: child_unwind_on_sigterm
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        p.stdout.close()
    if expired.is_set():
        raise BenchError(f"{what} did not finish within {timeout:.0f} s; killed:\n" + _tail(lines))
    if p.returncode < 0:
        raise BenchError(f"{what} killed by signal {-p.returncode}:\n" + _tail(lines))
    if p.returncode != 0:
        raise BenchError(f"{what} failed (exit code {p.returncode}):\n" + _tail(lines))
    return lines


def remove_eal_runtime_dir(prefix: str):
    """The EAL runtime directory of a DPDK process we ran with
    ``--file-prefix PREFIX``, if it left one (testpmd does, even with
    --in-memory)."""
    for base in EAL_RUNTIME_DIRS:
        d = os.path.join(base, prefix)
        if os.path.isdir(d):
            shutil.rmtree(d, ignore_errors=True)


#: the file prefixes the benchmarks give their DPDK processes: bench-KIND-PID[-RUN]
_BENCH_PREFIX = re.compile(r"bench-[a-z]+-([0-9]+)(-[0-9]+)?")


def remove_stale_eal_runtime_dirs():
    """EAL runtime directories of benchmark processes that are gone (one
    killed at a timeout, or a benchmark interrupted hard): named by their
    file prefix, whose process id is not running any more."""
    for base in EAL_RUNTIME_DIRS:
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            m = _BENCH_PREFIX.fullmatch(name)
            if m and not os.path.exists(f"/proc/{m.group(1)}"):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def file_tail(path: str, n: int = 25) -> str:
    """The last ``n`` lines of the file at ``path``, indented, for an error."""
    try:
        with open(path) as f:
            return _tail(f.read().splitlines(), n)
    except OSError:
        return "    (no log)"


def start_node_service(ns: str, cfg: str, sock: str, log_path: str) -> subprocess.Popen:
    """``python -m dataplane.cli run -c CFG`` of this checkout in namespace
    ``ns``, its output in ``log_path``, once it answers on ``sock``: the
    running process, or BenchError with its log's tail."""
    say(f"starting the node service in {ns}: python -m dataplane.cli run -c {cfg}")
    with open(log_path, "w") as log:
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "dataplane.cli", "run", "-c", cfg],
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while not os.path.exists(sock):
        if p.poll() is not None:
            raise BenchError(
                f"the node service exited (code {p.returncode}):\n" + file_tail(log_path)
            )
        if time.monotonic() > deadline:
            stop_node_service(p)
            raise BenchError("the node service did not open its API socket in 60 s")
        time.sleep(0.05)
    return p


def stop_node_service(p: subprocess.Popen):
    """Stop a service start_node_service started (SIGTERM, SIGKILL after 30
    s) and remove the EAL runtime directory a killed one leaves."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    remove_eal_runtime_dir(f"dataplane-{p.pid}")


def relay(line: str):
    """on_line for run_child: a child's BENCH-SAY lines shown as ours."""
    if line.startswith(SAY_PREFIX):
        say(line[len(SAY_PREFIX) :])


def run_json_child(cmd, what: str, timeout: float) -> dict:
    """Run a Python child (run_child, its progress relayed); its last
    BENCH-JSON line as a dict."""
    lines = run_child(cmd, what, timeout, on_line=relay)
    for line in reversed(lines):
        if line.startswith(JSON_PREFIX):
            return json.loads(line[len(JSON_PREFIX) :])
    raise BenchError(f"{what} reported nothing:\n" + _tail(lines))


def emit(obj: dict):
    """In a child: one BENCH-JSON line for the parent."""
    print(JSON_PREFIX + json.dumps(obj), flush=True)


def child_say(msg: str):
    """In a child: a progress line the parent shows (run_json_child)."""
    print(SAY_PREFIX + msg, flush=True)


def _child_terminate(signum, frame):
    # SIGTERM from the parent: unwind, so the engine closes its ports and
    # DPDK removes its runtime files
    raise SystemExit(128 + signum)


def child_unwind_on_sigterm():
    """In a child: SIGTERM (the parent stopping it) unwinds like an exit."""
    signal.signal(signal.SIGTERM, _child_terminate)


def child_failed(prog: str, e: BaseException) -> int:
    """In a child: say why it failed (the parent shows our output); exit 1."""
    print(f"{prog}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    return 1


# -------------------------------------------------------------------- main


def _terminate(signum, frame):
    # SIGTERM/SIGHUP like Ctrl-C: unwind, so what we started is stopped
    # and what we made is removed
    raise KeyboardInterrupt


def run_main(run, args, result, errors=()) -> int:
    """``run(args)``, then the RESULT line ``result(res)`` gives as
    ``(name, {key: formatted value})``, with ``runs=`` (how many runs its
    figures are the medians of) where the benchmark has runs; the
    exit status: 0, 1 for a failure (BenchError or one of ``errors``, said
    on stderr), 130 for Ctrl-C, SIGTERM or SIGHUP."""
    signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # nohup: leave it
        signal.signal(signal.SIGHUP, _terminate)
    remove_stale_eal_runtime_dirs()
    try:
        res = run(args)
    except (BenchError, *errors) as e:
        print(f"bench: FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr, flush=True)
        return 130
    name, fields = result(res)
    if getattr(args, "runs", None) is not None:
        fields.setdefault("runs", args.runs)
    print_result(name, **fields)
    # a RESULT with measurements that failed (its failed= field) is shown
    # but is not a clean run
    return 1 if str(fields.get("failed", "0")) != "0" else 0
