"""The churn benchmark's core, run in a child process (DPDK's EAL starts once
per process):

    python -m bench.churn_ours PCAP SECONDS --warmup S --mode M --churn-macs N ...

Forwards the encap pcap (bench.ours's set-up: pcap -> pod port, encap to
the remote VTEPs, null uplink) on one worker lcore, and on the control
thread measures three windows of SECONDS each:

1. and 3. without churn, before and after window 2: the rate at the
   uplink's tx, the mean of the two (a rate still ramping up after the
   warm-up, or drifting, moves both alike: it does not flatter the ratio);
2. with churn: a loop adds, moves (to another VTEP) and deletes FDB entries
   of N MACs that carry no traffic, through the same Python API the node
   service uses, while a sampler thread reads the uplink's tx counter
   every ``--sample-ms`` and keeps the longest span in which it did not
   move (``max_gap_ms``; its resolution is the sampling interval). The
   same sampler runs in windows 1 and 3 too: a stall there is the machine's (the
   worker's CPU taken by another process), not the churn's.

Prints one ``BENCH-JSON {...}`` line.
"""

import argparse
import sys
import threading
import time

from dataplane.engine import PORT_COUNTERS

from . import topology as topo
from .common import child_failed, child_say, child_unwind_on_sigterm, emit
from .ours import _setup, add_core_options, bench_engine


def _churn_mac(k: int) -> str:
    return f"02:00:00:03:{k >> 8 & 0xFF:02x}:{k & 0xFF:02x}"


class _Sampler(threading.Thread):
    """The uplink's tx counter every ``interval`` s; the longest time in
    which it did not move."""

    def __init__(self, eng, port, interval):
        super().__init__(daemon=True)
        self.eng, self.port, self.interval = eng, port, interval
        self.stop = threading.Event()
        self.max_gap = 0.0
        self.samples = 0

    def run(self):
        tx = 2  # PORT_COUNTERS: rx_packets, rx_bytes, tx_packets, tx_bytes
        last_v = int(self.eng.port_by_worker(self.port)[:, tx].sum())
        last_t = time.monotonic()
        while not self.stop.wait(self.interval):
            v = int(self.eng.port_by_worker(self.port)[:, tx].sum())
            now = time.monotonic()
            self.samples += 1
            if v != last_v:
                last_v, last_t = v, now
            else:
                self.max_gap = max(self.max_gap, now - last_t)


def measure(pcap, seconds, warmup, mode, n_macs, n_vteps, n_mbufs, churn_macs, sample_ms):
    vteps = topo.remote_vteps(n_vteps)
    macs = [_churn_mac(k) for k in range(churn_macs)]
    with bench_engine(mode, n_mbufs, "churn") as eng:
        pod, up = _setup(
            eng,
            "encap",
            f"net_pcap0,rx_pcap={pcap},infinite_rx=1",
            "net_null0,no-rx=1",
            n_macs,
            n_vteps,
        )
        eng.start()
        time.sleep(warmup)

        def tx():
            return int(eng.port_by_worker(up)[:, 2].sum())

        sys.setswitchinterval(sample_ms / 4000)  # let the sampler in on time

        def quiet_window(when):
            child_say(f"forwarding {seconds:g} s without churn ({when})")
            s = _Sampler(eng, up, sample_ms / 1000)
            s.start()
            t0, v0 = time.monotonic(), tx()
            time.sleep(seconds)
            t1, v1 = time.monotonic(), tx()
            s.stop.set()
            s.join()
            return (v1 - v0) / (t1 - t0) / 1e6, s

        before, quiet_before = quiet_window("before")

        child_say(f"forwarding {seconds:g} s while {churn_macs} FDB entries churn")
        sampler = _Sampler(eng, up, sample_ms / 1000)
        updates = 0
        sampler.start()
        t0, v0 = time.monotonic(), tx()
        end = t0 + seconds
        i = 0
        while time.monotonic() < end:
            for _ in range(64):  # add, move, delete: one update each
                mac = macs[i % churn_macs]
                step = (i // churn_macs) % 3
                if step == 0:
                    eng.fdb_add_remote(topo.NET, mac, vteps[i % n_vteps])
                elif step == 1:
                    eng.fdb_add_remote(topo.NET, mac, vteps[(i + 1) % n_vteps])
                else:
                    eng.fdb_del(topo.NET, mac)
                i += 1
            updates += 64
        t1, v1 = time.monotonic(), tx()
        sampler.stop.set()
        sampler.join()
        during = (v1 - v0) / (t1 - t0) / 1e6
        # a window without churn on each side of it: a rate still ramping
        # up (or drifting down) after the warm-up moves both alike
        after, quiet_after = quiet_window("after")
        without = (before + after) / 2
        eng.stop()
        # the whole run's accounting, read once the worker has stopped
        c = eng.counters()
        drops = c.drops()
        rx_total = int(c.port[pod][PORT_COUNTERS.index("rx_packets")])
        tx_total = int(c.port[up][PORT_COUNTERS.index("tx_packets")])
        entries = eng.fdb_count()
    return {
        "updates_per_s": updates / (t1 - t0),
        "updates": updates,
        "mpps_during": during,
        "mpps_without": without,
        "max_gap_ms": sampler.max_gap * 1000,
        "max_gap_without_ms": max(quiet_before.max_gap, quiet_after.max_gap) * 1000,
        "samples": sampler.samples,
        "fdb_entries_after": entries,
        "drops": {k: v for k, v in drops.items() if v},
        "rx_packets": rx_total,
        "tx_packets": tx_total,
    }


def main(argv=None):
    child_unwind_on_sigterm()
    ap = argparse.ArgumentParser(prog="python -m bench.churn_ours")
    ap.add_argument("pcap")
    ap.add_argument("seconds", type=float)
    add_core_options(ap)
    ap.add_argument("--churn-macs", type=int, default=1000)
    ap.add_argument("--sample-ms", type=float, default=1.0)
    a = ap.parse_args(argv)
    try:
        res = measure(
            a.pcap,
            a.seconds,
            a.warmup,
            a.mode,
            a.macs,
            a.vteps,
            a.n_mbufs,
            a.churn_macs,
            a.sample_ms,
        )
    except Exception as e:  # reported to the parent, which shows our output
        return child_failed("bench.churn_ours", e)
    emit(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
