"""Run an Engine in a child process and drive it through a proxy.

DPDK's EAL starts once per process and cannot be restarted, so each EAL
configuration under test (hugepages, --no-huge) lives in its own child,
started fresh (spawn) and shut down at the end of the session. Proxy calls
are control-path calls: one per table change or per burst of frames.
"""

import contextlib
import multiprocessing
import uuid
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


@contextlib.contextmanager
def small_core(tag: str):
    """A started Engine in a child of its own (fallback mode, lcores 0 and
    1, 256 MB, 8191 mbufs, an EAL file prefix with ``tag``), closed and
    its child shut down afterwards."""
    host = start_host()
    try:
        engine = host.Engine(
            mode="fallback",
            lcores=[0, 1],
            memory_mb=256,
            n_mbufs=8191,
            file_prefix=f"dptest-{tag}-{uuid.uuid4().hex[:8]}",
        )
        engine.start()
        yield engine
        engine.close()
    finally:
        host.shutdown()
