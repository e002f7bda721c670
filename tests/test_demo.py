"""The quickstart demo (``python -m dataplane.demo``, what ``scripts/demo.sh``
runs) refuses up front, naming what is taken and how to get out, when what
it needs is in use - its metrics port, the API socket of its service - and
then makes nothing."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import pytest
from nodeparts import free_port

from dataplane import demo

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo_names():
    """The demo's namespaces and interfaces that exist now."""
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {w for w in (ns + links).replace(":", " ").split() if w.startswith("dpdemo-")}


def _state_dirs():
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "dpdemo-state-*")))


def test_a_taken_metrics_port_is_refused_up_front_and_nothing_is_made():
    import socket

    before = (_demo_names(), _state_dirs(), os.path.exists(demo.DEMO_LOCK))
    held = socket.socket()
    try:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "dataplane.demo",
                "--metrics-port",
                str(port),
                "--duration",
                "0",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
    finally:
        held.close()
    assert r.returncode != 0
    err = r.stderr.strip()
    assert err.startswith(f"demo: port {port} is in use by pid {os.getpid()} ("), err
    assert "(another dataplane service or demo?): stop it or pass --metrics-port N" in err, err
    assert err.endswith("nothing was made"), err
    assert "starting the node service" not in r.stdout and "cleaned up" not in r.stdout
    assert (_demo_names(), _state_dirs(), os.path.exists(demo.DEMO_LOCK)) == before


def test_a_running_service_s_api_socket_is_refused_naming_its_pid(tmp_path):
    """The lock a running service holds beside its API socket (written with
    its pid): the demo's check names the holder and how to stop it."""
    sock = str(tmp_path / "api.sock")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            f"fd = os.open({sock + '.lock'!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(demo.Refused) as e:
            demo.check_api_socket(sock)
        msg = str(e.value)
        assert f"the API socket {sock} is in use by pid {holder.pid} (" in msg, msg
        assert "a dataplane node service runs on this machine; stop it first" in msg, msg
        assert f"kill {holder.pid}" in msg, msg
    finally:
        holder.stdin.close()
        holder.wait(30)
    demo.check_api_socket(sock)  # free again: no refusal


def test_the_demo_runs_its_topology_and_leaves_nothing_even_after_a_killed_one():
    """The quickstart's main job as it runs it: pod to pod and pod to the
    host behind the kernel's VTEP answer, status, FDB and metrics shown,
    "serving" said while it serves - its output a pipe, as under a
    journal or tee - and, after Ctrl-C, everything removed. What a killed
    demo left (here: its state directory) is named and removed first."""
    before = (_demo_names(), os.path.exists(demo.DEMO_LOCK))
    assert not before[0], f"demo names exist before the test: {before[0]}"
    stale = tempfile.mkdtemp(prefix=demo.STATE_PREFIX)  # as a killed demo leaves it
    try:
        p = subprocess.Popen(
            [sys.executable, "-m", "dataplane.demo", "--metrics-port", str(free_port())],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        # a demo that never says "serving" (or says it only at its end) is
        # stopped here, and fails below
        watchdog = threading.Timer(300, p.kill)
        watchdog.start()
        served, lines = False, []
        try:
            for line in p.stdout:
                lines.append(line)
                if line.startswith("demo: serving"):
                    served = True
                    break
            p.send_signal(signal.SIGINT)
            rest, err = p.communicate(timeout=120)
        finally:
            watchdog.cancel()
            if p.poll() is None:
                p.kill()
                p.wait()
        out = "".join(lines) + rest
        assert served, out + err
        assert p.returncode == 0, out + err
        assert "removing what a demo that did not finish left: " in out, out
        assert f"state directory {stale}" in out, out
        assert "pod a -> pod b (same node, net1): ok" in out, out
        assert "pod a -> pod b over IPv6 (net1, dual stack): ok" in out, out
        assert "demo: pod dpdemo-b std      eth0" in out and "(and fd00:100::" in out, out
        assert "pod b -> vm behind the kernel's VXLAN VTEP (VNI 100 over the underlay): ok" in out
        assert "dataplane_network_encap" in out and "demo: cleaned up" in out, out
        assert (_demo_names(), os.path.exists(demo.DEMO_LOCK)) == before
        assert _state_dirs() == set(), _state_dirs()  # the stale one too, by the demo
    finally:
        shutil.rmtree(stale, ignore_errors=True)  # left only when the demo failed


def test_the_demo_takes_the_cpus_it_may_use_and_refuses_one():
    """The demo's two lcores are the first two CPUs the process may use (a
    container's cpuset need not hold CPUs 0 and 1); with one CPU it says
    so and makes nothing."""
    code = "from dataplane.demo import demo_lcores; print(demo_lcores())"
    r = subprocess.run(["taskset", "-c", "1", sys.executable, "-c", code], capture_output=True,
                       text=True, cwd=ROOT)  # fmt: skip
    assert r.returncode != 0 and "needs two CPUs" in r.stderr and "may use [1]" in r.stderr, r
    before = (_demo_names(), _state_dirs(), os.path.exists(demo.DEMO_LOCK))
    r = subprocess.run(["taskset", "-c", "1", sys.executable, "-m", "dataplane.demo",
                        "--duration", "0"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)  # fmt: skip
    assert r.returncode != 0, r
    assert r.stderr.strip() == (
        "demo: needs two CPUs (a control thread and a worker); this process may use [1]; "
        "nothing was made"
    ), r.stderr
    assert (_demo_names(), _state_dirs(), os.path.exists(demo.DEMO_LOCK)) == before
    # a config whose lcores this process may not use is refused, naming them
    from dataplane.engine import EngineConfig

    code = (
        "from dataplane.engine import EngineConfig\n"
        "try:\n    EngineConfig(lcores=[0, 1]).eal_args()\n"
        "except Exception as e:\n    print(e)"
    )
    r = subprocess.run(["taskset", "-c", "1", sys.executable, "-c", code], capture_output=True,
                       text=True, cwd=ROOT)  # fmt: skip
    assert r.stdout.strip() == (
        "lcores: [0] not present or not allowed (the CPUs this process may use: 1)"
    ), r
    assert EngineConfig(lcores=[0, 1]).eal_args()  # both allowed here
