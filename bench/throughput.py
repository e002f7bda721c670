"""VXLAN encap/decap throughput of the core against testpmd io-forward.

    python -m bench encap -> RESULT name=encap64 mpps= testpmd_mpps= ratio= macs= vteps= frames=
                             [mode=fallback] cache_miss= fdb_slow= verified= [ovs_mpps= ovs_ratio=]
    python -m bench decap -> RESULT name=decap64 ...  (the same fields)
    python -m bench decap --learning -> ... learning=1
    python -m bench decap --udp-csum -> ... udp_csum=1

Method:

1. scapy writes one pcap (bench.traffic): 4096 frames of 64 bytes on the
   wire (60 in the pcap, no FCS), one flow each, interleaved over 64
   destination MACs behind 8 remote VTEPs, a tenth DSCP EF. For decap the
   same kind of frames (reverse direction) wrapped in VXLAN (110 bytes).
2. Both contenders replay that file with ``net_pcap0,rx_pcap=FILE,
   infinite_rx=1`` into ``net_null0,no-rx=1`` on one forwarding lcore
   (EAL ``-l 0,1``, no PCI, own file prefix, 1 GiB):
   - ours (bench.ours, in a child process) does the VXLAN encap (or decap)
     with the FDB lookup, and is measured at the null port's tx;
   - testpmd ``--forward-mode=io`` (bench.testpmd) forwards the frames
     unchanged, measured at the null port's tx too.
   The pcap PMD copies every frame into a fresh mbuf: that input cost is
   the same for both.
3. Runs alternate, ours then testpmd, ``--runs`` times each (the machine is
   shared and noisy): the result is the median of each and the ratio of the
   medians. Each run warms up ``--warmup`` s and measures ``--seconds`` s.
4. Before timing, a functional check (``--no-verify`` skips it) forwards the
   pcap once into a pcap file and compares: every frame must come out
   encapsulated to the right VTEP (or decapsulated to the exact inner frame).
   A rate of wrong work would be meaningless.

5. Every timed run of ours ends with 20 ms of the core's own capture on
   the null port's tx (after the window's counters are read, so its cost
   is not in the figure): the sampled frames are checked like the
   functional check's.

A run whose accounting does not add up - a drop counted by our core, rx and
tx of ours further apart than the frames in flight, testpmd's rx from start
to stop other than its tx plus its drops (read after its lcores stopped,
from what "stop" prints: its windowed snapshots read one port after the
other, and a read preempted on a busy machine showed milliseconds of
forwarding as a gap), a drop by testpmd, a wrong sampled frame - ends the
benchmark with an error and no RESULT line. The
RESULT line says the table sizes (``macs``, ``vteps``), the share of the
timed runs' FDB lookups that the worker's FDB cache could not answer
(``cache_miss``), the share that the FDB table's home bucket (one cache
line) could not answer either (``fdb_slow``: overflow, or a writer in the
bucket) and whether the functional check
ran (``verified=0`` with ``--no-verify``).

``--udp-csum`` (decap): every frame carries an outer UDP checksum, as a
Linux VTEP sends by default (``udpcsum``); no device verified it (the pcap
PMD sets no flags), so the core sums each datagram, the cost on an uplink
whose device or kernel does not. testpmd forwards the same frames.

``--learning`` (decap): our VTEP learns source MACs from the underlay
(``vtep.learning``, as a node with hosts behind kernel VTEPs runs), with
limits raised to hold every source MAC of the pcap: each frame's inner
source is looked up too, and confirmed to the control thread at most once
a second. A run in which the core did not learn every source MAC ends
with an error. testpmd does the same io forwarding as ever. Progress goes to stderr
(``--quiet``: none); stdout has the RESULT line.
"""

import argparse
import os
import sys
import tempfile

from . import ovs, testpmd, traffic
from . import topology as topo
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


def _n_mbufs(n_frames: int) -> int:
    """Pool size for both contenders: the infinite pcap keeps every frame of
    the file in an mbuf, plus room for rings and caches (2^k - 1; past 2^17,
    what is needed: a million-frame pcap's pool is 2.4 GB as it is)."""
    need = n_frames + 12288
    if need > 1 << 17:
        return need
    return (1 << (need - 1).bit_length()) - 1


def core_child_args(args) -> list:
    """The options a child running our core on the benchmark pcap takes
    (bench.ours.add_core_options): warm-up, EAL mode, topology, pool."""
    return [
        "--warmup",
        str(args.warmup),
        "--mode",
        args.mode,
        "--macs",
        str(args.macs),
        "--vteps",
        str(args.vteps),
        "--n-mbufs",
        str(_n_mbufs(args.frames)),
    ] + (["--learning"] if getattr(args, "learning", False) else [])


def _run_ours(args, kind: str, pcap: str, extra=()) -> dict:
    """bench.ours in a child process; its BENCH-JSON line as a dict."""
    cmd = [
        sys.executable,
        "-m",
        "bench.ours",
        kind,
        pcap,
        str(args.seconds),
        *core_child_args(args),
        *extra,
    ]
    return run_json_child(cmd, "our side", timeout=args.warmup + args.seconds + 120)


def _verify(args, kind: str, pcap: str, workdir: str):
    """Forward the pcap once through the core into a pcap and check it."""
    out = os.path.join(workdir, f"{kind}-verify-out.pcap")
    res = _run_ours(args, kind, pcap, ("--verify-out", out, "--frames", str(args.frames)))
    try:
        inp, got = traffic.read_pcap(pcap), traffic.read_pcap(out)
    finally:
        if os.path.exists(out):
            os.unlink(out)
    if kind == "encap":
        errs = traffic.check_encap_output(inp, got, args.macs, args.vteps)
    else:
        errs = traffic.check_decap_output(inp, got)
    if res["drops"]:
        errs.append(f"drops: {res['drops']}")
    if errs:
        raise BenchError(f"{kind} verification failed:\n  " + "\n  ".join(errs))
    say(f"verify {kind}: {len(got)}/{len(inp)} frames forwarded correctly")


def _verify_ovs(args, pcap: str, workdir: str):
    """OVS-DPDK forwards the pcap into a pcap: what comes out must be right
    (its outer UDP source ports are from its tunnel port range)."""
    out = os.path.join(workdir, "ovs-verify-out.pcap")
    try:
        ovs.verify(pcap, out, args.macs, args.vteps, args.frames)
        inp, got = traffic.read_pcap(pcap), traffic.read_pcap(out)
    finally:
        if os.path.exists(out):
            os.unlink(out)
    errs = traffic.check_encap_output(
        inp, got, args.macs, args.vteps, sample=True, sport_min=ovs.SPORT_MIN
    )
    if errs or not got:
        raise BenchError("OVS-DPDK verification failed:\n  " + "\n  ".join(errs or ["nothing out"]))
    say(f"verify ovs: {len(got)} frames sampled from its output, all encapsulated correctly")


def _fmt_drops(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items())) or "none"


def run(args) -> dict:
    kind = args.kind
    name = f"{kind}64"
    if args.pcap_dir:
        os.makedirs(args.pcap_dir, exist_ok=True)
        workdir, tmp = args.pcap_dir, None
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-")
        workdir = tmp.name
    try:
        say_machine("other work on the machine will slow both contenders")
        pcap = os.path.join(workdir, f"{name}.pcap")
        say(
            f"writing {pcap}: {args.frames} frames over {args.macs} MACs behind "
            f"{args.vteps} VTEPs ..."
        )
        flen = traffic.write_pcap(
            pcap,
            kind,
            args.frames,
            args.macs,
            args.vteps,
            udp_csum=getattr(args, "udp_csum", False),
        )
        say(f"  {flen} bytes per frame in the pcap (+4 FCS on the wire)")
        if args.verify:
            _verify(args, kind, pcap, workdir)
            if "ovs" in args.peers:
                _verify_ovs(args, pcap, workdir)

        ours, base, ovs_runs, lookups, misses, slow, sampled = [], [], [], 0, 0, 0, 0
        inp = traffic.read_pcap(pcap)
        for r in range(1, args.runs + 1):
            o = _run_ours(args, kind, pcap)
            ours.append(o["mpps"])
            lookups += o["fdb_lookups"]
            misses += o["fdb_cache_misses"]
            slow += o["fdb_slow_lookups"]
            lost = o["rx_packets"] - o["tx_packets"]
            say(
                f"run {r}/{args.runs} ours    {o['mpps']:7.3f} Mpps  "
                f"(rx {o['rx_packets']}, tx {o['tx_packets']}, busy polls "
                f"{o['busy_poll_ratio']:.0%}, FDB cache misses "
                f"{_miss(o['fdb_cache_misses'], o['fdb_lookups'])}, slow lookups "
                f"{_miss(o['fdb_slow_lookups'], o['fdb_lookups'])}, "
                f"drops: {_fmt_drops(o['drops'])})"
            )
            if o["drops"]:
                raise BenchError(
                    f"our core dropped frames in run {r}: {_fmt_drops(o['drops'])}"
                    " - the set-up is wrong or the core has a bug; no result"
                )
            if abs(lost) > IN_FLIGHT:
                raise BenchError(f"ours, run {r}: rx - tx = {lost} without a counted drop")
            if args.learning and o["learned"] != args.macs:
                raise BenchError(
                    f"ours, run {r}: learned {o['learned']} of the {args.macs} source MACs; "
                    "no result"
                )
            _check_samples(args, kind, inp, o["samples"], r)
            sampled += len(o["samples"])
            b = testpmd.measure(
                pcap,
                args.seconds,
                args.warmup,
                args.mode,
                _n_mbufs(args.frames) + 1,
                file_prefix=f"bench-testpmd-{os.getpid()}-{r}",
                testpmd=args.testpmd,
            )
            base.append(b["mpps"])
            say(
                f"run {r}/{args.runs} testpmd {b['mpps']:7.3f} Mpps  "
                f"(rx {b['rx_packets']}, tx {b['tx_packets']}, "
                f"testpmd's own Tx-pps: {b['testpmd_tx_mpps']:.3f})"
            )
            # the check on what testpmd's stop printed, start to stop: its
            # windowed snapshots read one port after the other, and a
            # preempted read (a busy machine) shows milliseconds of
            # forwarding as rx - tx without any frame lost
            frx, ftx, fdrop = b["fwd_rx_packets"], b["fwd_tx_packets"], b["fwd_tx_dropped"]
            if frx != ftx + fdrop or fdrop:
                raise BenchError(
                    f"testpmd, run {r}: from start to stop rx {frx}, tx {ftx}, dropped "
                    f"{fdrop}: does not add up; no result"
                )
            if "ovs" in args.peers:
                v = ovs.measure(pcap, args.seconds, args.warmup + 1.0, args.macs, args.vteps)
                ovs_runs.append(v["mpps"])
                say(
                    f"run {r}/{args.runs} ovs     {v['mpps']:7.3f} Mpps  "
                    f"(rx {v['rx_packets']}, tx {v['tx_packets']})"
                )
                if abs(v["rx_packets"] - v["tx_packets"]) > IN_FLIGHT:
                    raise BenchError(
                        f"ovs, run {r}: rx {v['rx_packets']} - tx {v['tx_packets']} "
                        "does not add up; no result"
                    )
    finally:
        if tmp is not None:
            tmp.cleanup()

    m_ours, m_base = median(ours), median(base)
    m_ovs = median(ovs_runs) if ovs_runs else None
    for who, m in (("ours", m_ours), ("testpmd", m_base)) + ((("ovs", m_ovs),) if ovs_runs else ()):
        if not m > 0:  # a contender that forwarded nothing adds up, and is no baseline
            raise BenchError(f"{who} forwarded nothing (median {m} Mpps); no result")
    rel = ratio(m_ours, m_base)
    floor, aim = _target(args.macs)
    say(
        f"{name}: ours median {m_ours:.3f} Mpps {fmt_runs(ours)}, testpmd io median "
        f"{m_base:.3f} Mpps {fmt_runs(base)}, ratio {rel:.3f} "
        f"(floor {floor:.2f}, aim {aim:.2f} at {args.macs} MACs)"
    )
    say(f"{sampled} frames sampled from the timed runs' output, all forwarded correctly")
    peers = {}
    if ovs_runs:
        peers = {"ovs_mpps": m_ovs, "ovs_ratio": ratio(m_ours, m_ovs)}
        say(
            f"ovs-dpdk median {peers['ovs_mpps']:.3f} Mpps {fmt_runs(ovs_runs)}: ours/ovs "
            f"{peers['ovs_ratio']:.2f} (goal 2.5)"
        )
    return {
        **peers,
        "name": name,
        "mpps": m_ours,
        "testpmd_mpps": m_base,
        "ratio": rel,
        "macs": args.macs,
        "vteps": args.vteps,
        "frames": args.frames,
        "mode": args.mode,
        # no lookup counted: no ratio to show
        "cache_miss": misses / lookups if lookups else float("nan"),
        "fdb_slow": slow / lookups if lookups else float("nan"),
        "verified": 1 if args.verify else 0,
        "learning": 1 if args.learning else 0,
        "udp_csum": 1 if getattr(args, "udp_csum", False) else 0,
    }


#: frames that may be between a port's rx and the null port's tx when the
#: counters are read: a few bursts per queue and ring, nowhere near a leak
IN_FLIGHT = 4096


def _target(macs: int):
    """(floor, aim) of ours/testpmd for a table of this many MACs: what
    the worker's FDB cache holds, what its table holds in the CPU's caches,
    and what goes out to memory."""
    if macs <= 1024:
        return 0.7, 0.8
    if macs <= 16384:
        return 0.45, 0.55
    return 0.35, 0.45


def _miss(misses: int, lookups: int) -> str:
    return f"{misses / lookups:.1%}" if lookups else "-"


def _check_samples(args, kind, inp, samples, r):
    """The frames copied from the null port's tx at the end of a timed run
    must be right (a fast wrong answer is no figure)."""
    out = [bytes.fromhex(h) for h in samples]
    if not out:
        raise BenchError(f"ours, run {r}: no frame sampled from the output")
    if kind == "encap":
        errs = traffic.check_encap_output(inp, out, args.macs, args.vteps, sample=True)
    else:
        errs = traffic.check_decap_output(inp, out, sample=True)
    if errs:
        raise BenchError(f"ours, run {r}: sampled output wrong:\n  " + "\n  ".join(errs))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        usage="python -m bench {encap,decap} [options]",
        description="VXLAN encap/decap throughput of the core vs testpmd io-forward "
        "(64-byte frames, one forwarding core).",
    )
    ap.add_argument("kind", choices=traffic.KINDS, help="encap or decap")
    add_run_options(
        ap,
        seconds=3.0,
        seconds_help="measurement window per run",
        warmup=1.0,
        warmup_help="forwarding time before the window",
        runs=3,
        runs_help="runs per contender, alternating",
    )
    ap.add_argument(
        "--mode",
        choices=("hugepages", "fallback"),
        default="hugepages",
        help="hugepages, or fallback = EAL --no-huge (both contenders)",
    )
    ap.add_argument(
        "--pcap-dir", help="keep the pcaps here (default: a temporary directory removed afterwards)"
    )
    topo.add_options(ap, macs_help="destination MACs")
    ap.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the functional check before timing",
    )
    ap.add_argument(
        "--learning",
        action="store_true",
        help="decap: the VTEP learns the frames' source MACs (vtep.learning), as a node "
        "with hosts behind kernel VTEPs does; testpmd is the same",
    )
    ap.add_argument(
        "--udp-csum",
        action="store_true",
        help="decap: the frames carry outer UDP checksums, as a Linux VTEP sends them by "
        "default (udpcsum), which the core verifies (a ring of pcap frames: no device did)",
    )
    ap.add_argument("--testpmd", default=testpmd.TESTPMD, help="testpmd binary")
    ap.add_argument(
        "--peers",
        default="",
        help="more contenders, comma-separated: ovs (OVS-DPDK, encap only)",
    )
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = parse_args(ap, argv)
    try:
        topo.check_options(args, max_frames=1 << 20)
    except ValueError as e:
        ap.error(str(e))
    args.peers = [p for p in args.peers.split(",") if p]
    for p in args.peers:
        if p != "ovs":
            ap.error(f"--peers: unknown contender {p!r} (known: ovs)")
    if args.peers and args.kind != "encap":
        ap.error("--peers ovs: encap only")
    if args.learning and args.kind != "decap":
        ap.error("--learning: decap only (a node learns from the underlay)")
    if args.udp_csum and args.kind != "decap":
        ap.error("--udp-csum: decap only (the frames from the underlay carry it)")
    if "ovs" in args.peers and ovs.available():
        ap.error(f"--peers ovs: {ovs.available()}")
    return run_main(run, args, _result, errors=(testpmd.TestpmdError,))


def _result(res):
    return res["name"], {
        "mpps": f"{res['mpps']:.3f}",
        "testpmd_mpps": f"{res['testpmd_mpps']:.3f}",
        "ratio": f"{res['ratio']:.3f}",
        "macs": res["macs"],
        "vteps": res["vteps"],
        "frames": res["frames"],  # flows in the pcap: the caches' footprint, testpmd's too
        **({"mode": res["mode"]} if res["mode"] != "hugepages" else {}),
        "cache_miss": f"{res['cache_miss']:.4f}",
        "fdb_slow": f"{res['fdb_slow']:.4f}",
        "verified": res["verified"],
        **({"learning": 1} if res.get("learning") else {}),
        **({"udp_csum": 1} if res.get("udp_csum") else {}),
        **{k: f"{res[k]:.3f}" for k in ("ovs_mpps", "ovs_ratio") if k in res},
    }
