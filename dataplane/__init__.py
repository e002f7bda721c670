"""dataplane: a node dataplane for telecom container platforms.

Network planes per pod, VXLAN across an IP-only underlay, a C forwarding core
on DPDK (or a native AF_PACKET fallback), run as a node service.

The C core is imported lazily (``dataplane.engine``) so that configuration,
validation and the CLI's client side work without it.
"""
__version__ = "0.1.0"
