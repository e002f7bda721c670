"""FDB churn while forwarding: how many table updates per second the
control API takes while the core forwards, and what they cost the worker.

    python -m bench churn -> RESULT name=churn updates_per_s= mpps_during=
                             mpps_without= ratio= max_gap_ms=

Each run (bench.churn_ours, a child process) forwards the encap pcap of
``python -m bench encap`` (64-byte frames, 64 MACs behind 8 VTEPs) on one
worker lcore, measures the rate while the control thread adds, moves and
deletes FDB entries of ``--churn-macs`` other MACs as fast as the Python
API allows, and the rate without churn in a window before it and one after
it (their mean) (each update is a hash
insert/delete, published to the workers with their table generation), and
the longest time the uplink's tx counter stood still (sampled every
``--sample-ms``). ``ratio`` = mpps_during / mpps_without, medians of
``--runs``. Floor: 10,000 updates/s with ratio >= 0.9. A run in which the
core dropped a frame, lost one without a counted drop (the pod port's rx
against the uplink's tx, the whole run) or lost an FDB entry of the
traffic ends without a RESULT.

The churn loop and the sampler run on the EAL's main lcore (CPU 0), the
worker on CPU 1: on this 2-CPU machine the control work does not take the
worker's CPU, as on a node with the control plane on its own core.
"""

import argparse
import os
import sys
import tempfile

from . import topology as topo
from . import traffic
from .common import (
    BenchError,
    add_run_options,
    fmt_runs,
    median,
    parse_args,
    ratio,
    run_json_child,
    run_main,
    say,
    say_machine,
)
from .throughput import core_child_args


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-churn-") as tmp:
        say_machine("other work on the machine slows the core and the churn loop")
        pcap = os.path.join(tmp, "encap64.pcap")
        say(f"writing {pcap}: {args.frames} frames over {args.macs} MACs behind {args.vteps} VTEPs")
        traffic.write_pcap(pcap, "encap", args.frames, args.macs, args.vteps)
        runs = []
        for r in range(1, args.runs + 1):
            cmd = [
                sys.executable,
                "-m",
                "bench.churn_ours",
                pcap,
                str(args.seconds),
                *core_child_args(args),
                "--churn-macs",
                str(args.churn_macs),
                "--sample-ms",
                str(args.sample_ms),
            ]
            o = run_json_child(cmd, "the churn run", timeout=args.warmup + 3 * args.seconds + 120)
            if o["drops"]:
                raise BenchError(f"run {r}: the core dropped frames while churning: {o['drops']}")
            # read once the worker had stopped and flushed: nothing in flight
            lost = o["rx_packets"] - o["tx_packets"]
            if lost != 0:
                raise BenchError(
                    f"run {r}: the pod port received {o['rx_packets']} frames, the uplink sent "
                    f"{o['tx_packets']}: {lost} without a counted drop; no result"
                )
            if o["fdb_entries_after"] < args.macs:
                raise BenchError(f"run {r}: FDB lost traffic entries: {o['fdb_entries_after']}")
            runs.append(o)
            say(
                f"run {r}/{args.runs}: {o['updates_per_s']:,.0f} updates/s, "
                f"{o['mpps_during']:.3f} Mpps during vs {o['mpps_without']:.3f} without, "
                f"longest stall {o['max_gap_ms']:.1f} ms ({o['samples']} samples; "
                f"{o['max_gap_without_ms']:.1f} ms without churn)"
            )
    res = {k: median([o[k] for o in runs]) for k in runs[0] if k not in ("drops",)}
    res["ratio"] = ratio(res["mpps_during"], res["mpps_without"])
    res["max_gap_ms"] = max(o["max_gap_ms"] for o in runs)
    say(
        f"churn: {res['updates_per_s']:,.0f} updates/s {fmt_runs([o['updates_per_s'] for o in runs], 0)}, "
        f"ratio {res['ratio']:.3f} (floor 10,000/s at >= 0.9; aim 100,000/s), "
        f"longest stall {res['max_gap_ms']:.1f} ms over all runs"
    )
    return res


def parser():
    ap = argparse.ArgumentParser(
        prog="python -m bench churn",
        description="FDB updates per second through the API while the core forwards, "
        "and the forwarding rate they leave.",
    )
    add_run_options(
        ap,
        seconds=2.0,
        seconds_help="each window (without churn, with it, without again)",
        warmup=0.5,
        warmup_help="forwarding before the first window",
        runs=3,
        runs_help="runs",
    )
    ap.add_argument("--mode", choices=("hugepages", "fallback"), default="hugepages")
    topo.add_options(ap, macs_help="destination MACs of the traffic")
    ap.add_argument("--churn-macs", type=int, default=1000, help="MACs added/moved/deleted")
    ap.add_argument("--sample-ms", type=float, default=1.0, help="stall sampling interval")
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = parse_args(ap, argv)
    try:
        topo.check_options(args, max_frames=1 << 20)
    except ValueError as e:
        ap.error(str(e))
    if args.churn_macs < 1 or args.sample_ms <= 0:
        ap.error("--churn-macs must be >= 1 and --sample-ms > 0")
    return run_main(run, args, _result)


def _result(res):
    return "churn", {
        "updates_per_s": f"{res['updates_per_s']:.0f}",
        "mpps_during": f"{res['mpps_during']:.3f}",
        "mpps_without": f"{res['mpps_without']:.3f}",
        "ratio": f"{res['ratio']:.3f}",
        "max_gap_ms": f"{res['max_gap_ms']:.1f}",
    }
