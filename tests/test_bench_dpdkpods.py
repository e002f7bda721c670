"""The DPDK pods benchmark (bench.dpdkpods): its vhost-user pod on a
churned hugepage pool, and its accounting of every frame.

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

Accounting: a run says, per path, that every frame pod a sent is accounted
for; and the check is shown catching frames that are not, with real parts:
pod b stops reading on the memif path, so the frames the core already put
in its ring are counted as sent by the core and never received - until pod
b reads again, when the same run adds up.

Needs root, hugepages, dpdk-testpmd: fails, never skips, without them.
"""

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from bench import dpdkpods
from bench.common import BenchError

pytestmark = pytest.mark.bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def sums_hold(line):
    """The equations of an "accounting adds up" line, each checked: how
    many there are."""
    n = 0
    for part in line.split(": accounting adds up: ", 1)[1].split("; "):
        lhs, rhs = part.split(" = ", 1)
        total = int(lhs.split()[-1])
        terms = [int(t.split()[0]) for t in rhs.split(" + ")]
        assert sum(terms) == total, part
        n += 1
    return n


def test_every_path_says_its_accounting_adds_up():
    assert os.geteuid() == 0, "needs root (namespaces, hugepages)"
    p = subprocess.run(
        [sys.executable, "-m", "bench", "dpdkpods", "--seconds", "0.2", "--warmup", "0.1"]
        + ["--runs", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-6000:]
    assert p.stdout.startswith("RESULT name=dpdkpods "), p.stdout
    lines = {
        m.group(1): m.group(0)
        for m in re.finditer(r"run 1/1 (\w+): accounting adds up: .*", p.stderr)
    }
    assert sorted(lines) == sorted(dpdkpods.PATHS), p.stderr[-6000:]
    # pod a to pod b: one equation direct, three through the core's DPDK
    # ports, six over the veths
    want = {"direct": 1, "memif": 3, "vhost": 3, "veth": 6}
    assert {k: sums_hold(v) for k, v in lines.items()} == want, lines


def test_accounting_catches_frames_pod_b_never_took():
    """In a child process: the benchmark's core runs in the process that
    runs the Lab, and DPDK's start pins that process to a CPU for good
    (and starts once a process), which the tests after this one in this
    pytest would inherit."""
    assert os.geteuid() == 0, "needs root (namespaces, hugepages)"
    p = subprocess.run(
        [sys.executable, "-c", "import tests.test_bench_dpdkpods as t; t._catches()"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-3000:] + "\n" + p.stderr[-6000:]


def _catches():
    args = dpdkpods.parser().parse_args([])
    workdir = tempfile.mkdtemp(prefix="dppt", dir="/tmp")  # short: socket paths
    lab = dpdkpods.Lab(args, workdir)
    r = dpdkpods.PathRun("memif")
    try:
        lab.setup()
        lab.open_path(r)
        r.b.cmd("start", "packet forwarding")
        r.a.cmd("start", "packet forwarding")
        time.sleep(0.5)
        # pod b stops reading: the core fills its ring, then finds it full
        r.b.stop_forwarding()
        time.sleep(0.5)
        with pytest.raises(BenchError) as e:
            lab.account(r)
        msg = str(e.value)
        assert "no result" in msg, msg
        # the frames in pod b's ring: sent by the core, not received; at
        # most the ring's slots
        m = re.search(r"the core sent to pod b \d+ = .*?\(NOT: that sum is \d+, \+(\d+)\)", msg)
        assert m, msg
        assert 0 < int(m.group(1)) <= 1 << dpdkpods.RING_LOG2, msg
        # what the core could not place counts as its drop: that part holds
        assert "tx_full" in msg and msg.count("NOT:") == 1, msg
        # pod b reads again: they were waiting, not lost
        r.b.cmd("start", "packet forwarding")
        line = lab.account(r)
        assert "tx_full" in line and "NOT" not in line, line
    finally:
        try:
            lab.close_path(r)
        finally:
            lab.close()
            shutil.rmtree(workdir, ignore_errors=True)
