"""Benchmarks of the dataplane core.

- ``python -m bench encap`` / ``python -m bench decap``: VXLAN encap/decap
  throughput of 64-byte frames on one forwarding core, against
  ``dpdk-testpmd --forward-mode=io`` on the same pcap and ports, as a ratio
  (bench.throughput; DESIGN.md "Performance targets").

Modules: ``topology`` (the addressing plan), ``traffic`` (scapy profiles ->
pcap, output checks), ``ours`` (our core, run as a child process),
``testpmd`` (the baseline), ``throughput`` (alternating runs, medians,
the RESULT line).
"""

import sys


class BenchError(RuntimeError):
    """A benchmark could not be set up or run, or its output was wrong."""


def run_or_exit(run, args, errors=()):
    """``(run(args), None)``, or ``(None, exit status)`` after saying why it
    stopped: 1 for a failure (BenchError or one of ``errors``), 130 for Ctrl-C."""
    try:
        return run(args), None
    except (BenchError, *errors) as e:
        print(f"bench: FAILED: {e}", file=sys.stderr, flush=True)
        return None, 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr, flush=True)
        return None, 130
