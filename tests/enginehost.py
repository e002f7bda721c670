"""Run an Engine in a child process and drive it through a proxy.

DPDK's EAL starts once per process and cannot be restarted, so each EAL
configuration under test (hugepages, --no-huge) lives in its own child,
started fresh (spawn) and shut down at the end of the session. Proxy calls
are control-path calls: one per table change or per burst of frames.
"""

import multiprocessing
from multiprocessing.managers import BaseManager


def _make_engine(**config):
    from dataplane.engine import Engine, EngineConfig

    return Engine(EngineConfig(**config))


class EngineHost(BaseManager):
    pass


EngineHost.register("Engine", callable=_make_engine)


def start_host():
    host = EngineHost(ctx=multiprocessing.get_context("spawn"))
    host.start()
    return host
