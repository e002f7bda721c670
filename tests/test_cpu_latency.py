"""The node's CPU latency request (``cpu_latency_us``, dataplane/cpulatency.py)
on the real kernel interface: the service holds it while it runs and
forwards, the kernel applies it (idle CPUs stop entering idle states slower
to leave than the request), and it is gone when the service stops or its
holder dies. The fabric is the one of test_kernel_pods.py.
"""

import glob
import os
import re
import subprocess
import sys
import time

import pytest
import test_kernel_pods as kp
from test_kernel_idle import metrics_text, node_with

from dataplane.config import parse_config
from dataplane.cpulatency import (
    MAX_US,
    CpuLatencyRequest,
    current_limit_us,
    idle_states,
    no_effect,
)
from dataplane.errors import ConfigError, DataplaneError

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (/dev/cpu_dma_latency)"),
]

fabric = kp.fabric
VTEP = {"address": "10.99.0.1/24", "uplink": "eth1"}


def slow_idle_entries(limit_us):
    """Times any CPU entered an idle state whose exit latency is above
    ``limit_us``, summed over every CPU (the cpuidle framework's counters)."""
    states = glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpuidle/state[0-9]*")
    assert states, "no cpuidle states in sysfs: the kernel runs without cpuidle here"
    n = 0
    for s in states:
        with open(f"{s}/latency") as f:
            if int(f.read()) <= limit_us:
                continue
        with open(f"{s}/usage") as f:
            n += int(f.read())
    return n


def metric(node, name):
    """The values of the unlabelled metric ``name`` in the node's /metrics."""
    return re.findall(rf"^{name} (\S+)$", metrics_text(node), re.M)


def entries_over(limit_us, seconds=0.5):
    before = slow_idle_entries(limit_us)
    time.sleep(seconds)
    return slow_idle_entries(limit_us) - before


def some_cpu_halts(limit_us):
    """A CPU entered an idle state slower than ``limit_us`` within 10 s
    (a busy machine may keep every CPU running for a while)."""
    return any(entries_over(limit_us) > 0 for _ in range(20))


def test_idle_cpus_keep_out_of_slow_idle_states_while_the_request_is_held():
    """On a kernel with cpuidle states, what the governor does under the
    request, from its own counters. A kernel without any (cpuidle driver
    "none", as some virtual machines' kernels are built) has no state to
    keep out of: there the request is held all the same, and the product
    says that it changes nothing (the service's log and status, `dataplane
    check`; test_the_service_holds_its_request_while_it_forwards)."""
    assert current_limit_us() == MAX_US, "another process holds a CPU latency request"
    driver, states = idle_states()
    if not states:
        assert no_effect(0) == (
            f"this kernel has no cpuidle states (cpuidle driver {driver}): an idle CPU "
            "takes the architecture's default idle (a halt) whatever the request"
        )
        r = CpuLatencyRequest(0)
        try:
            assert r.limit_us() == 0 and current_limit_us() == 0
        finally:
            r.release()
        assert current_limit_us() == MAX_US
        return
    # without a request this machine's CPUs halt when idle (the test sleeps)
    assert some_cpu_halts(0), "no CPU entered an idle state with an exit latency above 0"
    assert no_effect(0) is None
    r = CpuLatencyRequest(0)
    try:
        assert r.limit_us() == 0
        assert current_limit_us() == 0
        assert entries_over(0) == 0, "a CPU halted while a request of 0 us was held"
    finally:
        r.release()
    assert r.limit_us() is None
    assert current_limit_us() == MAX_US
    assert some_cpu_halts(0)


def _sysfs(tmp_path, driver, states, cpus=2):
    """A sysfs CPU tree laid out as the kernel's: cpuidle/current_driver and
    cpuN/cpuidle/stateK/{name,latency}."""
    root = tmp_path / "cpu"
    (root / "cpuidle").mkdir(parents=True)
    if driver is not None:
        (root / "cpuidle" / "current_driver").write_text(driver + "\n")
    for c in range(cpus):
        (root / f"cpu{c}").mkdir()
        for k, (name, lat) in enumerate(states):
            d = root / f"cpu{c}" / "cpuidle" / f"state{k}"
            d.mkdir(parents=True)
            (d / "name").write_text(name + "\n")
            (d / "latency").write_text(f"{lat}\n")
    return str(root)


def test_what_a_request_changes_is_read_from_the_kernels_idle_states(tmp_path):
    none = _sysfs(tmp_path / "a", "none", [])
    assert idle_states(none) == ("none", [])
    assert "no cpuidle states (cpuidle driver none)" in no_effect(0, none)
    # haltpoll as on KVM guests: polling, then a halt declared at 1 us
    hp = _sysfs(tmp_path / "b", "haltpoll", [("POLL", 0), ("haltpoll", 1)])
    assert idle_states(hp) == ("haltpoll", [("POLL", 0), ("haltpoll", 1)])
    assert no_effect(0, hp) is None
    assert no_effect(1, hp) == (
        "every idle state of the cpuidle driver haltpoll wakes within 1 us, "
        "so a request of 1 us forbids none"
    )
    # bare metal: eleven states sort by number, not by name
    states = [("POLL", 0), ("C1", 2)] + [(f"C{k}", 10 * k) for k in range(2, 11)]
    im = _sysfs(tmp_path / "c", "intel_idle", states)
    assert idle_states(im)[1][-1] == ("C10", 100)
    assert no_effect(10, im) is None and no_effect(100, im) is not None
    assert idle_states(str(tmp_path / "missing")) == ("none", [])


def test_the_kernel_applies_the_lowest_request_and_drops_a_dead_holders():
    hold = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); "
        "from dataplane.cpulatency import CpuLatencyRequest; "
        "r = CpuLatencyRequest(3); print('held', flush=True); time.sleep(600)"
    )
    p = subprocess.Popen([sys.executable, "-c", hold, kp.ROOT], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        assert current_limit_us() == 3
        mine = CpuLatencyRequest(50)
        try:
            assert mine.limit_us() == 3  # the lower one of the two
            p.kill()  # no release: the kernel drops its request with its file
            p.wait(30)
            assert mine.limit_us() == 50
        finally:
            mine.release()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
        p.stdout.close()
    assert current_limit_us() == MAX_US


def test_a_request_that_cannot_be_held_says_why(tmp_path):
    with pytest.raises(DataplaneError) as e:
        CpuLatencyRequest(0, device=str(tmp_path / "cpu_dma_latency"))
    msg = str(e.value)
    assert msg.startswith("cpu_latency_us: cannot hold a CPU latency request: ")
    assert "No such file or directory" in msg


@pytest.mark.netns
def test_the_service_holds_its_request_while_it_forwards(fabric):
    assert current_limit_us() == MAX_US, "another process holds a CPU latency request"
    fab = fabric()
    node = node_with(fab, 1, [], "cpu_latency_us: 0\n")
    st = node.status()
    assert st["cpu_latency_us"] == 0
    assert st["cpu_latency_limit_us"] == 0
    assert current_limit_us() == 0
    assert metric(node, "dataplane_node_cpu_latency_limit_seconds") == ["0.0"]
    # in base units, as Prometheus' own check wants
    r = subprocess.run(
        ["promtool", "check", "metrics"], input=metrics_text(node), capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = fab.pod(1, "a", kp.SUBNET + "11"), fab.pod(1, "b", kp.SUBNET + "12")
    kp.reach(a["ns"], b["ip"], "pod a -> pod b")
    r = kp.ping(a["ns"], b["ip"], count=5, interval="0.05")
    assert r.returncode == 0, r.stdout
    out = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "status", "--socket", str(node.sock)],
        capture_output=True,
        text=True,
        cwd=kp.ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "cpu latency 0 us (kernel limit 0 us)" in out.stdout
    # on a kernel whose idle states the request cannot change, it says so
    assert st["cpu_latency_no_effect"] == no_effect(0)
    if no_effect(0):
        assert f"cpu latency request changes nothing here: {no_effect(0)}" in out.stdout
    node.stop()
    assert current_limit_us() == MAX_US


@pytest.mark.netns
def test_a_service_without_the_setting_makes_no_request(fabric):
    fab = fabric()
    node = node_with(fab, 1, [], "")
    st = node.status()
    assert st["cpu_latency_us"] is None
    assert "cpu_latency_limit_us" not in st
    assert current_limit_us() == MAX_US
    assert metric(node, "dataplane_node_cpu_latency_limit_seconds") == []


@pytest.mark.parametrize(
    "value, message",
    [
        (-1, "cpu_latency_us: -1 out of range 0..1000000"),
        (1000001, "cpu_latency_us: 1000001 out of range 0..1000000"),
        ("0", "cpu_latency_us: '0' is not an integer"),
        (True, "cpu_latency_us: true is not an integer"),
    ],
)
def test_a_bad_cpu_latency_is_refused(value, message):
    with pytest.raises(ConfigError) as e:
        parse_config({"vtep": VTEP, "cpu_latency_us": value})
    assert message in str(e.value)


def test_cpu_latency_is_read_and_written_back():
    c = parse_config({"vtep": VTEP, "cpu_latency_us": 0})
    assert c.cpu_latency_us == 0
    assert parse_config(c.to_dict()).cpu_latency_us == 0
    assert parse_config({"vtep": VTEP}).cpu_latency_us is None
    assert parse_config({"vtep": VTEP, "cpu_latency_us": None}).cpu_latency_us is None


def test_polling_cpus_with_an_idle_sleep_draw_advice():
    c = parse_config({"vtep": VTEP, "cpu_latency_us": 0, "idle_sleep_us": 1000})
    assert any("cpu_latency_us: 0" in a and "idle_sleep_us: 1000" in a for a in c.advice())
    assert not parse_config({"vtep": VTEP, "cpu_latency_us": 0}).advice()
    assert not parse_config({"vtep": VTEP, "cpu_latency_us": 20, "idle_sleep_us": 1000}).advice()


def test_dataplane_check_says_when_the_request_would_change_nothing(tmp_path):
    import yaml

    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"vtep": VTEP, "cpu_latency_us": 0}))
    out = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        cwd=kp.ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    why = no_effect(0)
    line = f"warning: cpu_latency_us: {why}; the request would change nothing here"
    assert (line in out.stdout) == bool(why), out.stdout


def test_dataplane_check_refuses_a_request_the_service_could_not_hold(tmp_path):
    """cpu_latency_us where the device cannot be opened (here: a /dev of
    its own, empty, in a mount namespace of the check's own): `dataplane
    check` says so and fails, as `run` would refuse to start - not ok."""
    import yaml

    from dataplane.cpulatency import DEVICE, hold_problem

    assert hold_problem() is None  # here the service can hold one
    missing = str(tmp_path / "cpu_dma_latency")
    assert hold_problem(missing).startswith(
        f"cpu_latency_us: cannot hold a CPU latency request: {missing}: No such file"
    )
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"vtep": VTEP, "cpu_latency_us": 0}))
    check = f"{sys.executable} -m dataplane.cli check -c {path}"
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs none /dev && exec {check}"],
        capture_output=True,
        text=True,
        cwd=kp.ROOT,
        timeout=60,
    )
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert f"cpu_latency_us: cannot hold a CPU latency request: {DEVICE}" in out.stderr
