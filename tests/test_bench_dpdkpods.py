"""The DPDK pods benchmark's vhost-user pod on a churned hugepage pool.

A virtio_user device with the benchmark's rings (16384 descriptors) has a tx
header region of 2.25 MB, more than one 2 MB hugepage. With physical
addresses (testpmd as root picks them) that region needs two physically
adjacent free pages, and on a node whose hugepage pool other processes have
taken and given back there may be none: the device fails to initialise
("eth_virtio_dev_init fails"), the pod has no port. The benchmark's pods use
IOVA as VA (bench.dpdkpods.IOVA_MODE), where any two pages do.

The test hands the pool a worst case: it takes pages and gives back every
other one, so the pages a process gets next have no free physical
neighbour, then starts a pod as the benchmark does. Its backend is a second
testpmd with DPDK's vhost PMD as the client, the role the core has in the
benchmark.

Needs root, hugepages, dpdk-testpmd: fails, never skips, without them.
"""

import contextlib
import os
import shutil
import tempfile

import pytest

from bench import dpdkpods

pytestmark = pytest.mark.bench

HUGEPAGE = 2 << 20
#: pages taken; half go back, isolated: more than a pod's -m 192 (96 pages)
TAKEN = 256


def hugetlbfs_2m():
    """The mount point of a 2 MB hugetlbfs."""
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, fstype, opts = line.split()[:4]
            if fstype == "hugetlbfs" and "pagesize=1G" not in opts:
                return mnt
    raise AssertionError("no 2 MB hugetlbfs mounted (scripts/setup.sh mounts one)")


def free_hugepages():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("HugePages_Free:"):
                return int(line.split()[1])
    raise AssertionError("no HugePages_Free in /proc/meminfo")


@contextlib.contextmanager
def churned_pool():
    """TAKEN hugepages taken in files, every other one given back: the
    pool's next free pages are those, each between two taken ones."""
    need = TAKEN + 2 * 96  # and the pod's and the backend's memory
    assert free_hugepages() >= need, f"fewer than {need} free 2 MB hugepages"
    d = tempfile.mkdtemp(prefix="dppfrag", dir=hugetlbfs_2m())
    try:
        for i in range(TAKEN):
            fd = os.open(os.path.join(d, f"p{i}"), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                os.posix_fallocate(fd, 0, HUGEPAGE)
            finally:
                os.close(fd)
        for i in range(1, TAKEN, 2):
            os.unlink(os.path.join(d, f"p{i}"))
        yield
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_vhost_pod_initialises_on_churned_hugepages(tmp_path):
    assert os.geteuid() == 0, "needs root (hugepages)"
    assert shutil.which(dpdkpods.TESTPMD), f"{dpdkpods.TESTPMD} not found (Debian package dpdk)"
    sock = str(tmp_path / "v.sock")
    tag = f"dppt{os.getpid()}"
    pmds = []
    try:
        # the backend first, on the pool as it is: it reconnects every
        # second until the pod's socket is there
        pmds.append(
            dpdkpods.Pmd(
                None,
                f"{tag}-core",
                f"net_vhost0,iface={sock},client=1,queues=1",
                "rxonly",
                0,
                str(tmp_path / "core.log"),
            )
        )
        with churned_pool():
            pod = dpdkpods.Pmd(
                None,
                f"{tag}-pod",
                f"net_virtio_user0,path={sock},server=1,queues=1,"
                f"queue_size={dpdkpods.VIRTIO_QUEUE},mac={dpdkpods.MAC_B}",
                "rxonly",
                0,
                str(tmp_path / "pod.log"),
            )
            pmds.append(pod)
            log = pod.text()
            assert "eth_virtio_dev_init fails" not in log, log[-3000:]
            assert "No probed ethernet devices" not in log, log[-3000:]
            pod.link_up()  # the backend holds the device: the link is up
    finally:
        for p in pmds:
            p.close()
