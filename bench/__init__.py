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
