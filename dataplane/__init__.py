"""dataplane: a node dataplane for telecom container platforms.

Network planes per pod, VXLAN across an IP-only underlay, a C forwarding core
on DPDK (or a native AF_PACKET fallback), run as a node service.

Validation (``dataplane.checks``) reads the core's limits from the compiled
module, so everything needs it built; DPDK itself starts only when a
``dataplane.engine.Engine`` is made.
"""

__version__ = "0.1.0"
