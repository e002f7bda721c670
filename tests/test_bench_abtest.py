"""``python -m bench.abtest``: two versions of the core in one process.

The installed build has one version only and is refused before anything
starts; an A/B build (``DP_AB=1 python build.py``, made here in a copy of
the checkout, as a developer makes it in place) runs, and with no code
reading ``dp_ab`` its two versions are the same code: an A/A run, whose
ratio must be near 1.

Needs root, DPDK with hugepages and the build tools: it fails, never
skips, without them.
"""

import os
import re
import shutil
import statistics
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_RE = re.compile(
    r"^RESULT name=abtest kind=encap macs=64 vteps=8 frames=64 phases=(\d+) "
    r"a_mpps=([0-9.]+) b_mpps=([0-9.]+) ratio=([0-9.]+) b_won=(\d+)/(\d+)$"
)

pytestmark = pytest.mark.bench


def abtest(cwd, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "bench.abtest", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )


def test_a_build_without_dp_ab_is_refused_before_anything_starts():
    r = abtest(ROOT, "encap", "--frames", "64", "--phases", "2")
    assert r.returncode == 1, r.stderr
    assert "built without DP_AB" in r.stderr and "DP_AB=1 python build.py" in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize(
    "args,words",
    [
        (["encap", "--phases", "3"], "--phases: 3: an even number"),
        (["encap", "--frames", "32"], "--frames: 32 out of range 64..1048576"),
        (["encap", "--phase-s", "0"], "--phase-s must be > 0"),
        (["encap", "--udp-csum"], "--udp-csum: decap only"),
    ],
)
def test_bad_arguments_are_refused(args, words):
    r = abtest(ROOT, *args)
    assert r.returncode == 2 and words in r.stderr and r.stdout == "", r.stderr


def test_an_ab_build_alternates_its_two_versions(tmp_path):
    assert os.geteuid() == 0, "the benchmark needs root (DPDK)"
    src = tmp_path / "checkout"
    skip = shutil.ignore_patterns("*.so", "*.o", "__pycache__", "*.egg-info")
    for d in ("csrc", "dataplane", "bench"):
        shutil.copytree(os.path.join(ROOT, d), src / d, ignore=skip)
    shutil.copy(os.path.join(ROOT, "build.py"), src / "build.py")
    env = dict(os.environ, DP_AB="1")
    b = subprocess.run(
        [sys.executable, "build.py"], cwd=src, capture_output=True, text=True, env=env
    )
    assert b.returncode == 0, b.stderr[-4000:]
    env.pop("DP_AB")
    r = abtest(
        src,
        "encap",
        "--frames",
        "64",
        "--phases",
        "6",
        "--phase-s",
        "0.2",
        "--mode",
        "fallback",
        env=env,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    m = RESULT_RE.match(r.stdout.rstrip("\n"))  # the RESULT line alone
    assert m, r.stdout
    phases, a, b_, ratio, won, pairs = m.groups()
    assert int(phases) == 6 and int(pairs) == 3
    assert float(a) > 0 and float(b_) > 0
    # the same code twice: the ratio is the method's own spread
    assert 0.5 < float(ratio) < 2.0, r.stdout
    assert r.stderr.count("bench: phase ") == 6, r.stderr
    # the figures are the phases' as printed: A and B in turn, the medians
    # of each, B's wins counted over the pairs (rates printed to 0.001, so a
    # pair that looks tied may have gone either way)
    shown = re.findall(r"^bench: phase (\d)/6 ([AB]) ([0-9.]+) Mpps$", r.stderr, re.M)
    assert [(int(p), v) for p, v, _ in shown] == list(zip(range(1, 7), "ABABAB")), r.stderr
    ra = [float(x) for _, v, x in shown if v == "A"]
    rb = [float(x) for _, v, x in shown if v == "B"]
    assert abs(float(a) - statistics.median(ra)) <= 0.0015, (a, ra)
    assert abs(float(b_) - statistics.median(rb)) <= 0.0015, (b_, rb)
    surely = sum(y > x + 0.001 for x, y in zip(ra, rb))
    maybe = sum(y >= x - 0.001 for x, y in zip(ra, rb))
    assert 0 <= surely <= int(won) <= maybe <= 3, (won, ra, rb)
    # the ratio: the median of the pairs' B/A, within what rounding each rate
    # to 0.001 (and the ratio itself) can move it
    assert min(ra + rb) > 0, (ra, rb)  # every phase forwarded
    pair_ratios = [y / x for x, y in zip(ra, rb)]
    slack = float(ratio) * 2 * 0.0005 / min(ra + rb) + 0.0005
    assert abs(float(ratio) - statistics.median(pair_ratios)) <= slack, (ratio, pair_ratios)
    # the copy's build, not the installed one, ran
    assert os.path.exists(src / "dataplane") and any(
        f.startswith("_core") and f.endswith(".so") for f in os.listdir(src / "dataplane")
    )
