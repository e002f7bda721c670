import os
import uuid

import pytest

ROOT = os.geteuid() == 0


def hugepages_free():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("HugePages_Free:"):
                return int(line.split()[1])
    return 0


def have_hugepages():
    return os.path.ismount("/dev/hugepages") and hugepages_free() >= 256


MODES = ["fallback", "hugepages"]


@pytest.fixture(scope="session", params=MODES)
def core(request):
    """An Engine in a child process, one per EAL mode, shared by the tests of
    that mode; each test gets it clean through the ``eng`` fixture."""
    mode = request.param
    if not ROOT:
        pytest.skip("the forwarding core needs root (DPDK EAL)")
    if mode == "hugepages" and not have_hugepages():
        pytest.skip("no hugepages reserved / hugetlbfs not mounted")
    from tests.enginehost import start_host
    host = start_host()
    free_before = hugepages_free()
    engine = host.Engine(mode=mode, lcores=[0, 1], memory_mb=256, n_mbufs=16383,
                         file_prefix=f"dptest-{mode}-{uuid.uuid4().hex[:8]}")
    engine.start()
    yield engine
    engine.close()
    after_close = hugepages_free()
    host.shutdown()
    if mode == "hugepages":
        # a clean shutdown gives the hugepage memory back to the system (DPDK
        # keeps one 2 MB page of ethdev bookkeeping until the process exits)
        assert after_close >= free_before - 1
        assert hugepages_free() >= free_before


@pytest.fixture
def eng(core):
    yield core
    core.reset()
