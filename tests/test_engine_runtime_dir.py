"""An engine killed without closing (SIGKILL, a crash) leaves DPDK's runtime
directory ``/var/run/dpdk/dataplane-<pid>``; the next engine to start
removes it, and leaves alone those of live processes and of other file
prefixes. A closed engine removes its own.

Needs root (the runtime directory under /var/run/dpdk): fails, never skips.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from dataplane.engine import _runtime_dir

CHILD = textwrap.dedent(
    """
    import sys
    from dataplane.engine import Engine, EngineConfig
    e = Engine(EngineConfig(mode="fallback", memory_mb=128, n_mbufs=2047))
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes it
    e.close()
    """
)


def start_engine():
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    out = []
    for line in p.stdout:
        out.append(line)
        if line.strip() == "ready":
            return p
    p.wait()
    raise AssertionError("the engine did not start:\n" + "".join(out))


@pytest.fixture
def decoys():
    base = _runtime_dir()
    os.makedirs(base, exist_ok=True)
    made = [os.path.join(base, n) for n in ("dataplane-1", "dataplane-x-keep")]
    for d in made:
        os.makedirs(d, exist_ok=True)
    yield made
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def test_a_killed_engines_runtime_dir_goes_at_the_next_start(decoys):
    assert os.geteuid() == 0, "needs root (the runtime directory under /var/run/dpdk)"
    a = start_engine()
    try:
        dir_a = os.path.join(_runtime_dir(), f"dataplane-{a.pid}")
        assert os.path.isdir(dir_a), f"no runtime directory {dir_a}"
    finally:
        a.send_signal(signal.SIGKILL)  # killed, as the test wants it, or on a failure
        a.wait()
    assert os.path.isdir(dir_a), "the killed engine's runtime directory went by itself"

    b = start_engine()
    dir_b = os.path.join(_runtime_dir(), f"dataplane-{b.pid}")
    try:
        assert not os.path.exists(dir_a), "the dead engine's runtime directory is still there"
        assert os.path.isdir(dir_b)
        # PID 1 lives; another prefix is not ours to judge
        assert all(os.path.isdir(d) for d in decoys)
    finally:
        b.stdin.close()
        assert b.wait(60) == 0, b.stdout.read()
    assert not os.path.exists(dir_b), "a closed engine left its runtime directory"
