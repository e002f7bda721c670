"""Benchmarks of the dataplane core, run from a checkout as root:
``python -m bench NAME [options]`` (``--help`` for each).

- ``encap`` / ``decap``: VXLAN encap/decap throughput of 64-byte frames on
  one forwarding core, against ``dpdk-testpmd --forward-mode=io`` on the
  same pcap and ports, as a ratio (bench.throughput);
- ``planes``: media first on a shaped uplink under overload, against one
  shared FIFO (bench.planes);
- ``sched``: our per-plane egress scheduler against DPDK's rte_sched
  (bench.sched);
- ``afpacket``: VXLAN encap on veth, our AF_PACKET driver against DPDK's
  net_af_packet and the kernel's bridge + vxlan (bench.afpacket);
- ``pods``: ping, TCP and 64-byte UDP between pods through the node service,
  against the kernel's bridge and bridge + vxlan paths (bench.pods);
- ``churn``: FDB updates per second through the API while the core
  forwards, and the rate and longest stall they cause (bench.churn).
- ``dpdkpods``: 64-byte frames between two testpmd pods through the core
  over memif and vhost-user, against memif peer to peer, and over veths
  (bench.dpdkpods).
- ``cni``: how long a runtime waits for a pod's network, our CNI plugin
  against the reference bridge + host-local plugins (bench.cni).

Each shows its progress on stderr (``--quiet``: none) and prints one
``RESULT name=... key=value ...`` line on stdout (ending with ``runs=``,
the runs its medians are of).

Modules: ``common`` (options, progress, medians, the RESULT line, child
processes), ``topology`` (the addressing plan), ``traffic`` (scapy profiles
-> pcap, output checks), ``ours`` / ``planes_ours`` / ``afpacket_ours`` (our
core, run as a child process), ``testpmd`` (the baseline); ``abtest``
(``python -m bench.abtest``: two versions of the core in one process, in a
``DP_AB=1`` build; a tool for changes, not a benchmark of the product).
"""

#: ``python -m bench NAME``: the module whose ``main(argv)`` runs it, and
#: whether NAME itself is its first argument
BENCHMARKS = {
    "encap": ("throughput", True),
    "decap": ("throughput", True),
    "planes": ("planes", False),
    "sched": ("sched", False),
    "afpacket": ("afpacket", False),
    "pods": ("pods", False),
    "churn": ("churn", False),
    "dpdkpods": ("dpdkpods", False),
    "cni": ("cni", False),
}
