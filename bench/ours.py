"""Our side of the throughput benchmark, run in a child process (DPDK's EAL
starts once per process):

    python -m bench.ours {encap|decap} PCAP SECONDS [--warmup S] [--mode M] ...

prints one line ``BENCH-JSON {...}`` with the measured rate and counters
(DPDK's own log lines share stdout, hence the prefix).

Set-up (addresses in bench.topology), one worker lcore (EAL ``-l 0,1``):

encap  pcap port ``net_pcap0,rx_pcap=PCAP,infinite_rx=1`` is a pod port in
       network 0 (VNI 5000); ``net_null0,no-rx=1`` is the uplink; the VTEP
       has a static next-hop MAC (no ARP); every remote MAC has an FDB entry
       to its remote VTEP. Rate = uplink tx_packets.
decap  the pcap port is the uplink; ``net_null0,no-rx=1`` is a pod port in
       network 0 with an FDB entry for every local pod MAC; the remote VTEPs
       are the network's flood list, which makes their tunnels known to the
       decap check (else: unknown_vtep drops). Rate = pod port tx_packets.

``no-rx=1``: a plain ``net_null`` also *receives* an endless stream of
64-byte frames; polled by the worker they would cost cycles and show up as
drops. testpmd gets the same device string (bench.testpmd).

Measurement: start, ``--warmup`` seconds, then counters at t0 and t1
(``SECONDS`` apart) on the control thread; Mpps = delta tx / (t1 - t0).
Drops over the same window are reported by reason.

With ``--verify-out FILE`` it is a functional check instead: the pcap is
read once (no infinite_rx) and what the core sends goes to
``net_pcap1,tx_pcap=FILE``; the parent then compares it with the input.
"""

import argparse
import os
import sys
import time

from . import topology as topo
from .common import child_failed, child_unwind_on_sigterm, emit, pool_memory_mb


def _setup(
    eng, kind: str, in_dev: str, out_dev: str, n_macs: int, n_vteps: int, learning: bool = False
):
    """Ports, network, VTEP and FDB for ``kind``; returns (in port, out port).
    ``learning``: the VTEP learns source MACs from the underlay (decap: the
    remote MACs behind their VTEPs, from the frames' inner sources)."""
    nh = topo.NEXT_HOP_MAC
    vtep_addr = f"{topo.LOCAL_VTEP}/{topo.VTEP_PREFIX_LEN}"
    eng.add_network(topo.NET, vni=topo.VNI, plane=0)
    if kind == "encap":
        pod = eng.add_port(in_dev, role="pod")
        up = eng.add_port(out_dev, role="uplink")
        eng.set_port_network(pod, topo.NET)
        eng.set_vtep(vtep_addr, topo.VTEP_MAC, up, udp_port=topo.VXLAN_PORT, next_hop_mac=nh)
        for k in range(n_macs):
            eng.fdb_add_remote(topo.NET, topo.remote_mac(k), topo.vtep_of(k, n_vteps))
        return pod, up
    up = eng.add_port(in_dev, role="uplink")
    pod = eng.add_port(out_dev, role="pod")
    eng.set_port_network(pod, topo.NET)
    eng.set_vtep(
        vtep_addr,
        topo.VTEP_MAC,
        up,
        udp_port=topo.VXLAN_PORT,
        next_hop_mac=nh,
        learning=learning,
    )
    if learning:  # room for every source MAC of the pcap
        eng.set_learning_limits(per_network=max(4096, n_macs), per_vtep=max(1024, n_macs))
    eng.set_flood(topo.NET, topo.remote_vteps(n_vteps))
    for k in range(n_macs):
        eng.fdb_add_local(topo.NET, topo.local_mac(k), pod)
    return up, pod


def _delta(c0, c1, in_port, out_port):
    """What happened between two counter snapshots."""
    from dataplane.engine import PORT_COUNTERS

    rx = PORT_COUNTERS.index("rx_packets")
    tx = PORT_COUNTERS.index("tx_packets")
    d0, d1 = c0.drops(), c1.drops()
    n0, n1 = c0.net_dict(topo.NET), c1.net_dict(topo.NET)
    w = (c1.worker - c0.worker).sum(axis=0)
    return {
        "rx_packets": int(c1.port[in_port][rx]) - int(c0.port[in_port][rx]),
        "tx_packets": int(c1.port[out_port][tx]) - int(c0.port[out_port][tx]),
        "drops": {k: d1[k] - d0[k] for k in d1 if d1[k] != d0[k]},
        "net": {k: n1[k] - n0[k] for k in n1},
        "busy_poll_ratio": float(w[1]) / float(w[0]) if w[0] else 0.0,
        "fdb_lookups": int(w[2]),
        "fdb_cache_misses": int(w[3]),
        "fdb_slow_lookups": int(w[4]),
    }


def add_core_options(ap):
    """The options of a child running the core on the benchmark pcap, as
    bench.throughput.core_child_args passes them (bench.ours,
    bench.churn_ours)."""
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--mode", choices=("hugepages", "fallback"), default="hugepages")
    ap.add_argument("--macs", type=int, default=topo.MIN_MACS)
    ap.add_argument("--vteps", type=int, default=topo.MIN_VTEPS)
    ap.add_argument("--n-mbufs", type=int, default=16383)
    ap.add_argument("--learning", action="store_true")


def bench_engine(mode: str, n_mbufs: int, what: str):
    """The engine every core child runs: EAL ``-l 0,1`` (one worker), 1 GiB
    or what the pool needs (bench.common.pool_memory_mb), its own file
    prefix ``bench-<what>-<pid>``."""
    from dataplane.engine import Engine, EngineConfig

    return Engine(
        EngineConfig(
            mode=mode,
            lcores=[0, 1],
            memory_mb=pool_memory_mb(n_mbufs),
            n_mbufs=n_mbufs,
            file_prefix=f"bench-{what}-{os.getpid()}",
        )
    )


def measure(
    kind: str,
    pcap: str,
    seconds: float,
    warmup: float,
    mode: str,
    n_macs: int,
    n_vteps: int,
    n_mbufs: int,
    learning: bool = False,
) -> dict:
    """Forward ``pcap`` forever; the rate over ``seconds`` after ``warmup``."""
    with bench_engine(mode, n_mbufs, "ours") as eng:
        in_port, out_port = _setup(
            eng,
            kind,
            f"net_pcap0,rx_pcap={pcap},infinite_rx=1",
            "net_null0,no-rx=1",
            n_macs,
            n_vteps,
            learning,
        )
        eng.start()
        time.sleep(warmup)
        t0 = time.monotonic()
        c0 = eng.counters()
        time.sleep(seconds)
        t1 = time.monotonic()
        c1 = eng.counters()
        samples = _sample(eng, out_port)
        eng.stop()
        res = _delta(c0, c1, in_port, out_port)
        res.update(
            kind=kind,
            seconds=t1 - t0,
            eal_args=eng.eal_args,
            mpps=res["tx_packets"] / (t1 - t0) / 1e6,
            samples=[f.hex() for f in samples],
            learned=eng.learn_stats()["entries"] if learning else 0,
        )
        return res


SAMPLE_SLOTS = 512
SAMPLE_S = 0.02
SAMPLE_MAX_S = 2.0


def _sample(eng, out_port) -> list:
    """Frames the null port was given, copied by the core's capture for
    SAMPLE_S right after the window (same engine, still forwarding at full
    rate): what the parent checks the timed run's work with. The capture's
    cost stays out of the figure. On a machine so loaded that the worker
    was not scheduled meanwhile, it waits on, up to SAMPLE_MAX_S, for a
    first frame."""
    eng.capture_start([out_port], "tx", "", snaplen=256, slots=SAMPLE_SLOTS)
    try:
        out = []
        waited = 0.0
        while not out and waited < SAMPLE_MAX_S:
            time.sleep(SAMPLE_S)
            waited += SAMPLE_S
            out = [r[4] for r in eng.capture_read()]
        return out
    finally:
        eng.capture_stop()


def verify(
    kind: str,
    pcap: str,
    out: str,
    mode: str,
    n_macs: int,
    n_vteps: int,
    n_mbufs: int,
    n_frames: int,
    timeout: float = 10.0,
    learning: bool = False,
) -> dict:
    """Forward every frame of ``pcap`` once into the pcap file ``out``."""
    with bench_engine(mode, n_mbufs, "verify") as eng:
        in_port, out_port = _setup(
            eng,
            kind,
            f"net_pcap0,rx_pcap={pcap}",
            f"net_pcap1,tx_pcap={out}",
            n_macs,
            n_vteps,
            learning,
        )
        c0 = eng.counters()
        eng.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            d = _delta(c0, eng.counters(), in_port, out_port)
            if d["rx_packets"] >= n_frames and (
                d["tx_packets"] + sum(d["drops"].values()) >= d["rx_packets"]
            ):
                break
            time.sleep(0.05)
        eng.stop()
        res = _delta(c0, eng.counters(), in_port, out_port)
    # leaving the with-block closed the ports: the tx pcap is flushed
    res.update(kind=kind, verify_out=out)
    return res


def main(argv=None):
    child_unwind_on_sigterm()
    ap = argparse.ArgumentParser(prog="python -m bench.ours", description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=("encap", "decap"))
    ap.add_argument("pcap")
    ap.add_argument("seconds", type=float)
    add_core_options(ap)
    ap.add_argument(
        "--verify-out", metavar="FILE", help="functional check: forward the pcap once into FILE"
    )
    ap.add_argument(
        "--frames", type=int, default=0, help="with --verify-out: number of frames in the pcap"
    )
    a = ap.parse_args(argv)
    try:
        topo.check_sizes(a.macs, a.vteps)
        if a.verify_out:
            res = verify(
                a.kind,
                a.pcap,
                a.verify_out,
                a.mode,
                a.macs,
                a.vteps,
                a.n_mbufs,
                a.frames,
                learning=a.learning,
            )
        else:
            res = measure(
                a.kind,
                a.pcap,
                a.seconds,
                a.warmup,
                a.mode,
                a.macs,
                a.vteps,
                a.n_mbufs,
                learning=a.learning,
            )
    except Exception as e:  # reported to the parent, which shows our output
        return child_failed("bench.ours", e)
    emit(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
