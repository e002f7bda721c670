"""Two versions of the core measured in one process, alternating:

    DP_AB=1 python build.py            (an A/B build, in place)
    python -m bench.abtest {encap|decap} [--macs N --vteps N --frames N] [--phases N]
                           [--udp-csum] ...
    ->  RESULT name=abtest kind=.. macs=.. vteps=.. frames=.. phases=.. a_mpps=.. b_mpps=..
        ratio=<median of the pairs' B/A> b_won=<pairs B was faster>/<pairs> [udp_csum=1]
    rm dataplane/_core.cpython-*.so    (back to the installed build)

Separate runs of one build move by ±15 % on a shared VM (its load over
time, where the process's memory landed), so a few alternated runs cannot
show a 5 % change. Here one process runs the benchmark's set-up (bench.ours:
the pcap PMD into the null PMD, one worker) and flips the core between its
two versions every phase: version A with ``dp_ab`` 0, version B with
``dp_ab`` 1, where the code under measurement reads ``dp_ab``
(csrc/dp_internal.h) in a build of its own, made with ``DP_AB=1``. Each
pair of phases (A then B) gives one ratio; the result is their median and
how many B won. With nothing reading ``dp_ab``, B is A: the ratio is the
method's own spread.

A build without ``DP_AB`` is refused before anything starts. Needs root
and, with ``--mode hugepages`` (the default), reserved hugepages.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

from . import topology as topo
from .common import BenchError


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.abtest", description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=("encap", "decap"))
    topo.add_options(ap, macs_help="destination MACs")
    ap.add_argument("--phases", type=int, default=30, help="phases, A and B alternating (even)")
    ap.add_argument("--phase-s", type=float, default=0.5, help="seconds a phase")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--mode", choices=("hugepages", "fallback"), default="hugepages")
    ap.add_argument(
        "--udp-csum",
        action="store_true",
        help="decap: every frame with an outer UDP checksum (as python -m bench decap --udp-csum)",
    )
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    return ap


def _check(ap, a):
    if a.phases < 2 or a.phases % 2:
        ap.error(f"--phases: {a.phases}: an even number, at least 2 (pairs of A and B)")
    if a.phase_s <= 0 or a.warmup < 0:
        ap.error("--phase-s must be > 0 and --warmup >= 0")
    if a.udp_csum and a.kind != "decap":
        ap.error("--udp-csum: decap only (the frames from the underlay carry it)")
    try:
        topo.check_options(a, max_frames=1 << 20)  # as the encap and decap benchmarks
    except ValueError as e:
        ap.error(str(e))


def run(a) -> dict:
    from dataplane.engine import PORT_COUNTERS, lib

    from . import ours
    from .throughput import _n_mbufs
    from .traffic import write_pcap

    if not lib.dp_ab_built():
        raise BenchError(
            "bench.abtest: the core was built without DP_AB, so it has one version only: "
            "build it with 'DP_AB=1 python build.py' (in place, beside the installed one), "
            "run again, then remove dataplane/_core.cpython-*.so"
        )
    tx = PORT_COUNTERS.index("tx_packets")
    n_mbufs = _n_mbufs(a.frames)
    rates = {0: [], 1: []}
    with tempfile.TemporaryDirectory(prefix="abtest-") as tmp:
        pcap = os.path.join(tmp, f"{a.kind}.pcap")
        write_pcap(pcap, a.kind, a.frames, a.macs, a.vteps, udp_csum=a.udp_csum)
        with ours.bench_engine(a.mode, n_mbufs, "abtest") as eng:
            _, out = ours._setup(
                eng,
                a.kind,
                f"net_pcap0,rx_pcap={pcap},infinite_rx=1",
                "net_null0,no-rx=1",
                a.macs,
                a.vteps,
            )
            lib.dp_ab_set(0)
            eng.start()
            try:
                time.sleep(a.warmup)
                for p in range(a.phases):
                    v = p % 2
                    lib.dp_ab_set(v)
                    time.sleep(min(0.05, a.phase_s / 10))  # the flip reaches the worker
                    t0, c0 = time.monotonic(), int(eng.counters().port[out][tx])
                    time.sleep(a.phase_s)
                    t1, c1 = time.monotonic(), int(eng.counters().port[out][tx])
                    rates[v].append((c1 - c0) / (t1 - t0) / 1e6)
                    if not a.quiet:
                        print(
                            f"bench: phase {p + 1}/{a.phases} {'AB'[v]} {rates[v][-1]:.3f} Mpps",
                            file=sys.stderr,
                            flush=True,
                        )
            finally:
                lib.dp_ab_set(0)
                eng.stop()
    ra, rb = rates[0], rates[1]
    if min(ra + rb) <= 0:
        raise BenchError("bench.abtest: a phase forwarded nothing; no ratio to give")
    pairs = [b / x for x, b in zip(ra, rb)]
    return {
        "kind": a.kind,
        "macs": a.macs,
        "vteps": a.vteps,
        "frames": a.frames,
        "phases": a.phases,
        "a_mpps": statistics.median(ra),
        "b_mpps": statistics.median(rb),
        "ratio": statistics.median(pairs),
        "b_won": f"{sum(r > 1 for r in pairs)}/{len(pairs)}",
        **({"udp_csum": 1} if a.udp_csum else {}),
    }


def main(argv=None) -> int:
    ap = parser()
    a = ap.parse_args(argv)
    _check(ap, a)
    # DPDK's own log lines (EAL, telemetry) go to the process's stdout:
    # they are sent to stderr, so that stdout is the RESULT line alone
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        r = run(a)
    except BenchError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    print(
        f"RESULT name=abtest kind={r['kind']} macs={r['macs']} vteps={r['vteps']} "
        f"frames={r['frames']} phases={r['phases']} a_mpps={r['a_mpps']:.3f} "
        f"b_mpps={r['b_mpps']:.3f} ratio={r['ratio']:.3f} b_won={r['b_won']}"
        + (" udp_csum=1" if r.get("udp_csum") else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
