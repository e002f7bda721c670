"""The package as pip builds it (a wheel, not the checkout's editable
install): every subpackage is in it, and the service, the store backends
and the CNI plugin import from it alone. The container image installs it so
(deploy/Containerfile: pip install .)."""

import os
import re
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def image_march():
    """The DP_MARCH the container image builds with."""
    text = open(os.path.join(ROOT, "deploy", "Containerfile")).read()
    (march,) = re.findall(r"^ARG DP_MARCH=(\S+)$", text, re.M)
    return march


def test_the_wheel_holds_every_module_and_imports(tmp_path):
    # what the Containerfile copies, built from scratch (a checkout's build/
    # directory would hide a module the package list leaves out)
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    for f in ("pyproject.toml", "setup.py", "build.py", "README.md"):
        shutil.copy(os.path.join(ROOT, f), src_dir)
    for d in ("csrc", "dataplane"):
        shutil.copytree(
            os.path.join(ROOT, d),
            src_dir / d,
            ignore=shutil.ignore_patterns("*.o", "*.so", "__pycache__", "*.egg-info"),
        )
    # for the CPU baseline the image names (DP_MARCH), not this machine's
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(src_dir),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "DP_MARCH": image_march()},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    with zipfile.ZipFile(tmp_path / whl) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    # no AVX register in the core: it runs on a CPU of that baseline
    (core,) = [n for n in names if n.startswith("dataplane/_core") and n.endswith(".so")]
    dis = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(tmp_path / "site" / core)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    wide = [ln for ln in dis.splitlines() if "%ymm" in ln or "%zmm" in ln]
    assert not wide, f"{len(wide)} AVX instructions, e.g. {wide[:3]}"
    src = {
        os.path.relpath(os.path.join(d, f), ROOT)
        for d, _, files in os.walk(os.path.join(ROOT, "dataplane"))
        for f in files
        if f.endswith(".py")
    }
    assert not src - names, f"left out of the wheel: {sorted(src - names)}"
    assert any(n.startswith("dataplane/_core") and n.endswith(".so") for n in names)
    assert "dataplane/express.bpf.o" in names  # the express lane's programs
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import dataplane, dataplane.service, dataplane.store.etcd, dataplane.store.sqlite;"
        "import dataplane.cni, dataplane.engine;"
        "assert dataplane.__file__.startswith(sys.argv[1]), dataplane.__file__;"
        "print('ok')"
    )
    r = subprocess.run(
        [sys.executable, "-I", "-c", code, str(tmp_path / "site")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
    # the benchmarks are not in the wheel: `dataplane bench` says where they are
    r = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            code.replace("print('ok')", "")
            + "from dataplane.cli import main; sys.exit(main(['bench', 'encap']))",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "the benchmarks run from a source checkout" in r.stderr
    assert str(tmp_path / "site") in r.stderr


def test_bench_runs_from_any_directory(tmp_path):
    """`dataplane bench` from outside the checkout runs the checkout's
    benchmarks (bench/ beside the package), its options its own."""

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "dataplane.cli", "bench", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )

    r = cli("--help")
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("encap", "decap", "afpacket", "pods", "churn"):
        assert name in r.stderr
    r = cli("encap", "--help")
    assert r.returncode == 0 and "--runs" in r.stdout, r.stdout + r.stderr
    r = cli("encap", "--runs", "0")
    assert r.returncode == 2 and "--runs must be >= 1" in r.stderr, r.stdout + r.stderr
    r = cli("nope")
    assert r.returncode == 2 and "no benchmark 'nope'" in r.stderr
