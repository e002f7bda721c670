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


@pytest.fixture
def cnode(tmp_path):
    """A node service (fallback mode) with the CNI plugin installed next to
    it (tests/test_cni.py: CNINode); removed with what it made."""
    from tests.test_cni import CNINode

    n = CNINode(tmp_path, uuid.uuid4().hex[:5])
    try:
        n.start()
        yield n
    finally:
        n.cleanup()


#: set by .ci/run: on CI every test runs; one that would skip (hugepages
#: not reserved, etcd or a tool missing) fails instead, naming why
NO_SKIPS = os.environ.get("DP_CI_NO_SKIPS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        why = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped on CI, where every test must run: {why}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a module skipped as it is collected (a module-level
    skip or importorskip), which no test report would show."""
    outcome = yield
    report = outcome.get_result()
    if NO_SKIPS and report.skipped:
        why = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped on CI, where every test must run: {why}"


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
    engine = host.Engine(
        mode=mode,
        lcores=[0, 1],
        memory_mb=256,
        n_mbufs=16383,
        file_prefix=f"dptest-{mode}-{uuid.uuid4().hex[:8]}",
    )
    engine.start()
    in_use = hugetlb_kb(host._process.pid)
    yield engine
    engine.close()
    after_close = hugetlb_kb(host._process.pid)
    host.shutdown()
    if mode == "hugepages":
        # a clean shutdown gives the hugepage memory back: pool, tables,
        # rings, queues (DPDK keeps a few pages of its own bookkeeping -
        # ethdev data, the mbuf dynamic field table - until the process exits)
        assert in_use > 32 * 1024  # the pool alone is 36 MB
        assert after_close <= 8192, f"{after_close} kB of hugepages still mapped"


def hugetlb_kb(pid):
    """Hugepage memory mapped by process pid (kB), from its smaps."""
    total = 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line.startswith(("Private_Hugetlb:", "Shared_Hugetlb:")):
                total += int(line.split()[1])
    return total


@pytest.fixture
def eng(core):
    yield core
    core.reset()
