"""Our per-plane egress scheduler (csrc/dp_qos.c) against DPDK's rte_sched
(lib/sched), on the same frames, in one process (docs/sched.md).

    python -m bench sched [--seconds S] [--runs N] [--lcore N] ...
    ->  RESULT name=sched ours_ns_per_pkt=<x> rte_sched_ns_per_pkt=<y>
        ratio=<ours/rte_sched> ours_media_p99_us=<a> rte_sched_media_p99_us=<b>

bench/sched_cmp.c is compiled at start with the system C compiler and
``pkg-config libdpdk`` into a temporary directory, together with
csrc/dp_qos.c (our scheduler as the core builds it: -O3 -march=native), and
run ``--runs`` times, one process per run. Each run: EAL with --no-pci
--no-huge --no-shconf on one lcore (``--lcore``), then the scenarios
(``--seconds`` each, per scheduler):

- cost: shapers far above the load; bursts of 32 in and out; ns per frame
  in the enqueue + dequeue calls;
- overload: 1 Gbit/s shaper, std offered at 2x, media 0.1x, control 0.05x on
  the real TSC; per plane sent / dropped and queueing delay p50/p99/max;
  rte_sched as meant (port = 10 Gbit/s line, subport/pipe bucket = shaper)
  and with only its port rate at 1 Gbit/s (which does not shape);
- cap: std limited to 0.5x (plane max rate / pipe TC rate);
- guarantee: media offered 1.5x, std with a 0.3x guaranteed rate (ours),
  rte_sched without (it has no per-TC minimum) and with TC0 capped instead.

The child's output is shown as it comes, on stderr with the rest of the
progress (its RESULT line prefixed with the run number); then medians over
the runs of the cost and overload figures, with their range; stdout has the
final RESULT line: medians, ratio of the medians. ``--quiet``: only that.
A run in which our scheduler lost media or control frames under overload
(strict priority broken) ends without a RESULT line, exit code 1 - unless
its loop stalled longer than that plane's queue lasts and the stalls
explain every frame lost (the child's verdict says "unjudged" and how
long; a WARNING here, docs/sched.md); the
verdict's timing parts (std within 3 % of what the shaper left it, media's
p99 below std's median) are shown, not enforced, as a noisy machine moves
them.
The child removes its (empty) EAL runtime directory; this module checks and
removes it too, and the temporary directory, also on error or Ctrl-C.
Needs a C compiler, pkg-config and DPDK's development files (libdpdk-dev,
with librte_sched).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

from .common import (
    ROOT,
    BenchError,
    add_run_options,
    fmt_spread,
    medians,
    parse_args,
    parse_result,
    ratio,
    remove_eal_runtime_dir,
    run_child,
    run_main,
    say,
    say_machine,
    show,
)

CSRC = os.path.join(ROOT, "csrc")
SRC = os.path.join(ROOT, "bench", "sched_cmp.c")
QOS_SRC = os.path.join(CSRC, "dp_qos.c")
RESULT_KEYS = (
    "ours_ns_per_pkt",
    "rte_sched_ns_per_pkt",
    "ours_media_p99_us",
    "rte_sched_media_p99_us",
)

_COST_RE = re.compile(r"^cost\s+(\S+)\s+enqueue ([\d.]+) \+ dequeue ([\d.]+) = ([\d.]+) ns/frame")
_PLANE_RE = (
    r"\| {p} off ([\d.]+) sent ([\d.]+) Mbit/s drop (\d+) \(([\d.]+)%\) "
    r"p50/p99/max ([\d.]+)/([\d.]+)/([\d.]+) us "
)
#: the overload verdict's losses of media and control (sched_cmp's check_strict)
_LOST_RE = re.compile(r"strict priority: (\w+) \(media lost (\d+), control lost (\d+)")
_LOAD_RE = re.compile(
    r"^(overload|cap|guarantee)\s+(.+?)\s+"
    + _PLANE_RE.format(p="media")
    + _PLANE_RE.format(p="control")
    + _PLANE_RE.format(p="std")
    + r"\| total sent ([\d.]+) Mbit/s"
)


def _pkg_config(flag: str) -> list:
    try:
        p = subprocess.run(
            ["pkg-config", flag, "libdpdk"], capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError:
        raise BenchError("pkg-config not found (apt-get install pkg-config)") from None
    if p.returncode != 0:
        raise BenchError(
            "pkg-config does not know libdpdk: DPDK's development files are "
            f"missing (apt-get install libdpdk-dev): {p.stderr.strip()}"
        )
    return p.stdout.split()


def build(workdir: str) -> str:
    """Compile sched_cmp.c + csrc/dp_qos.c; the path of the program."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise BenchError("no C compiler (cc/gcc) to build bench/sched_cmp.c")
    for f in (SRC, QOS_SRC):
        if not os.path.exists(f):
            raise BenchError(f"{f} is missing")
    out = os.path.join(workdir, "sched_cmp")
    # as build.py compiles the core: DPDK's cflags, then -O3 -march=native
    cmd = [
        cc,
        *_pkg_config("--cflags"),
        "-O3",
        "-march=native",
        "-std=gnu11",
        "-Wall",
        "-Wno-unused-parameter",
        "-DALLOW_EXPERIMENTAL_API",
        "-I",
        CSRC,
        "-o",
        out,
        SRC,
        QOS_SRC,
        *_pkg_config("--libs"),
        "-lrte_sched",
        "-lrte_meter",
    ]
    say("building: " + " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise BenchError("building bench/sched_cmp.c took over 300 s") from None
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-30:])
        raise BenchError(
            "building bench/sched_cmp.c failed (if csrc/dp_qos.c is being "
            f"edited, retry in a minute):\n{tail}"
        )
    return out


def _parse(lines) -> dict:
    """Figures of one run: RESULT values, cost and loaded lines by (scenario, label)."""
    res = {"cost": {}, "load": {}}
    last = None  # the contender of the loaded line before a verdict
    for line in lines:
        lost = _LOST_RE.search(line)
        if lost and last is not None and last[1] == "ours" and any(map(int, lost.group(2, 3))):
            if lost.group(1) != "unjudged":
                # our scheduler lost media or control under overload: its
                # one promise broken, no figure to show
                raise BenchError(f"{last[0]}: ours: {line.strip()}")
            # lost to a stall of the loop longer than the queue lasts (the
            # machine's, not the scheduler's): shown, the run not judged
            say(f"WARNING: {last[0]}: ours: {line.strip()}")
        if line.startswith("RESULT "):
            try:
                kv = parse_result(line)
                res["result"] = {k: float(kv[k]) for k in RESULT_KEYS}
            except (KeyError, ValueError):
                raise BenchError(f"unexpected RESULT line: {line}") from None
            continue
        m = _COST_RE.match(line)
        if m:
            res["cost"][m.group(1)] = tuple(float(x) for x in m.group(2, 3, 4))
            continue
        m = _LOAD_RE.match(line)
        if m:
            g = m.groups()
            planes = {}
            for i, name in enumerate(("media", "control", "std")):
                off, sent, drop, lost, p50, p99, mx = g[2 + 7 * i : 9 + 7 * i]
                planes[name] = {
                    "off": float(off),
                    "sent": float(sent),
                    "drop": int(drop),
                    "lost": float(lost),
                    "p50": float(p50),
                    "p99": float(p99),
                    "max": float(mx),
                }
            planes["total"] = float(g[-1])
            res["load"][(g[0], g[1])] = planes
            last = (g[0], g[1])
    if "result" not in res:
        raise BenchError("sched_cmp printed no RESULT line")
    return res


def run_once(binary: str, args, i: int) -> dict:
    prefix = f"sched-{os.getpid()}-{i}"
    cmd = [
        binary,
        "--seconds",
        str(args.seconds),
        "--lcore",
        str(args.lcore),
        "--prefix",
        prefix,
        "--max-wait",
        str(args.max_wait),
        "--retries",
        str(args.retries),
    ]
    if args.verbose:
        cmd.append("--verbose")
    # 10 measurements per run, each up to 1 + retries attempts, + drains
    timeout = 60 + 10 * (1 + args.retries) * (args.seconds + 1.5)

    def on_line(line):
        if line.startswith("RESULT "):
            say(f"run {i}/{args.runs}: {line}")
        else:
            show("  " + line)

    try:
        lines = run_child(cmd, "sched_cmp", timeout, on_line)
    finally:
        remove_eal_runtime_dir(prefix)
    return _parse(lines)


def summary(runs):
    """Medians [min..max] over the runs of the main figures."""
    say(f"medians [min..max] over {len(runs)} run(s):")
    for label in ("ours", "rte_sched"):
        c = [r["cost"][label] for r in runs if label in r["cost"]]
        if c:
            say(
                f"  cost      {label:24s} enqueue {fmt_spread([x[0] for x in c])} + dequeue "
                f"{fmt_spread([x[1] for x in c])} = {fmt_spread([x[2] for x in c])} ns/frame"
            )
    keys = []
    for r in runs:
        keys += [k for k in r["load"] if k not in keys]
    for key in keys:
        rs = [r["load"][key] for r in runs if key in r["load"]]
        parts = []
        for pl in ("media", "control", "std"):
            parts.append(
                f"{pl} sent {fmt_spread([x[pl]['sent'] for x in rs])} Mbit/s, lost "
                f"{fmt_spread([x[pl]['lost'] for x in rs])} %, p50 "
                f"{fmt_spread([x[pl]['p50'] for x in rs])} us, p99 "
                f"{fmt_spread([x[pl]['p99'] for x in rs])} us"
            )
        say(
            f"  {key[0]:9s} {key[1]:24s} "
            + "; ".join(parts)
            + f"; total {fmt_spread([x['total'] for x in rs])} Mbit/s"
        )


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-sched-") as workdir:
        say_machine("other work on the machine disturbs the timings (see 'cpu wait')")
        binary = build(workdir)
        runs = []
        for i in range(1, args.runs + 1):
            say(f"run {i}/{args.runs}")
            runs.append(run_once(binary, args, i))
    summary(runs)
    med = medians({k: [r["result"][k] for r in runs] for k in RESULT_KEYS})
    med["ratio"] = ratio(med["ours_ns_per_pkt"], med["rte_sched_ns_per_pkt"])
    for k in RESULT_KEYS:
        say(f"{k}: median {med[k]:.2f} of " + " ".join(f"{r['result'][k]:.2f}" for r in runs))
    return med


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench sched",
        description="Per-plane egress scheduling: csrc/dp_qos.c vs DPDK's rte_sched, same "
        "frames, one process (bench/sched_cmp.c).",
    )
    add_run_options(
        ap,
        seconds=2.0,
        seconds_help="window per scenario and scheduler",
        runs=1,
        runs_help="runs (processes); the RESULT has the medians",
    )
    ap.add_argument("--lcore", type=int, default=0, help="CPU to run on (default 0)")
    ap.add_argument(
        "--max-wait",
        type=float,
        default=0.01,
        help="repeat a measurement whose thread waited for its CPU more than this "
        "share of the window (default 0.01)",
    )
    ap.add_argument(
        "--retries", type=int, default=3, help="repeats of such a measurement, at most (default 3)"
    )
    ap.add_argument("--verbose", action="store_true", help="say which measurements were repeated")
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = parse_args(ap, argv)
    if args.seconds > 600 or args.retries < 0 or args.max_wait < 0:
        ap.error("--seconds <= 600, --retries >= 0, --max-wait >= 0")
    if not 0 <= args.lcore < (os.cpu_count() or 1):
        ap.error(f"--lcore: CPU {args.lcore} not present")
    return run_main(run, args, _result)


def _result(res):
    return "sched", {
        "ours_ns_per_pkt": f"{res['ours_ns_per_pkt']:.2f}",
        "rte_sched_ns_per_pkt": f"{res['rte_sched_ns_per_pkt']:.2f}",
        "ratio": f"{res['ratio']:.3f}",
        "ours_media_p99_us": f"{res['ours_media_p99_us']:.2f}",
        "rte_sched_media_p99_us": f"{res['rte_sched_media_p99_us']:.2f}",
    }


if __name__ == "__main__":
    sys.exit(main())
