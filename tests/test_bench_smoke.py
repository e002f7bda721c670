"""Every benchmark entry point, run briefly with its smallest settings
(``python -m bench NAME ...`` from the checkout, as a user runs it): it
must exit 0, print exactly one well-formed RESULT line on stdout with its
keys and sane figures, show its progress on stderr (``--quiet``: none), and
leave no EAL runtime directory or namespace behind.
The figures of such short runs mean nothing; that the benchmarks still
run does.

Needs root, DPDK with hugepages, dpdk-testpmd, a C compiler with DPDK's
development files, iproute2: these tests fail, never skip, without them.
"""

import glob
import math
import os
import re
import signal
import subprocess
import sys

import pytest

from bench import BENCHMARKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--seconds", "0.2", "--runs", "1"]
FEW_FRAMES = ["--frames", "64"]  # = the fewest destination MACs

#: name -> (arguments, RESULT name, {key: check of its value})
RATE = ("rate", lambda x: x > 0)
RATIO = ("ratio", lambda x: x > 0)
LOSS = ("loss", lambda x: 0 <= x <= 1)
P99 = ("p99 in us", lambda x: x > 0)  # inf: above the histogram's last bound
#: what encap/decap say of their set-up: the table sizes asked for, the
#: timed runs' FDB cache miss ratio, and that the functional check ran
TABLES = {
    "macs": ("64 MACs", lambda x: x == 64),
    "vteps": ("8 VTEPs", lambda x: x == 8),
    "frames": ("64 frames", lambda x: x == 64),
    "cache_miss": ("miss ratio", lambda x: 0 <= x <= 1),
    "fdb_slow": ("slow lookup ratio", lambda x: 0 <= x <= 1),
    "verified": ("1 (checked)", lambda x: x == 1),
}
CASES = {
    "encap": (
        QUICK + ["--warmup", "0"] + FEW_FRAMES,
        "encap64",
        {"mpps": RATE, "testpmd_mpps": RATE, "ratio": RATIO, **TABLES},
    ),
    "decap": (
        QUICK + ["--warmup", "0"] + FEW_FRAMES,
        "decap64",
        {"mpps": RATE, "testpmd_mpps": RATE, "ratio": RATIO, **TABLES},
    ),
    "planes": (
        QUICK + ["--warmup", "0.1", "--retries", "0", "--wait-others", "0"],
        "planes",
        {
            "media_loss": LOSS,
            "media_p99_us": P99,
            "fifo_media_loss": LOSS,
            "fifo_media_p99_us": P99,
        },
    ),
    "sched": (
        ["--seconds", "0.1", "--runs", "1", "--retries", "0"],
        "sched",
        {
            "ours_ns_per_pkt": RATE,
            "rte_sched_ns_per_pkt": RATE,
            "ratio": RATIO,
            "ours_media_p99_us": P99,
            "rte_sched_media_p99_us": P99,
        },
    ),
    "afpacket": (
        QUICK + ["--warmup", "0.1"] + FEW_FRAMES,
        "afpacket",
        {
            "native_pps": RATE,
            "pmd_pps": RATE,
            "kernel_pps": RATE,
            "ratio": RATIO,
            "kernel_ratio": RATIO,
            "afxdp_pps": RATE,
            "afxdp_kernel_ratio": RATIO,
            "lane_pps": RATE,
            "lane_kernel_ratio": RATIO,
        },
    ),
    "pods": (
        ["--seconds", "1", "--pings", "20", "--runs", "1"],
        "pods",
        {
            # a failed measurement, ours or the kernel's, makes the run
            # exit 1 (failed=): every figure here was measured
            **{
                k: RATIO
                for k in (
                    "rtt_ratio",
                    "tcp_local_ratio",
                    "tcp_vxlan_ratio",
                    "tcp_vxlan_back_ratio",
                    "udp64_ratio",
                    "udp64_delivered_ratio",
                )
            },
            **{
                f"{path}_{fig}": RATE
                for path in ("ours", "ours_vtep", "bridge", "vxlan")
                for fig in (
                    "rtt_us",
                    "rtt_p99_us",
                    "tcp_gbps",
                    "tcp_back_gbps",
                    "udp64_pps",
                    "udp64_delivered_pps",
                )
            },
        },
    ),
    "churn": (
        ["--seconds", "0.3", "--warmup", "0.1", "--runs", "1", "--churn-macs", "64"],
        "churn",
        {
            "updates_per_s": RATE,
            "mpps_during": RATE,
            "mpps_without": RATE,
            "ratio": RATIO,
            "max_gap_ms": ("stall in ms", lambda x: x >= 0),
        },
    ),
    "dpdkpods": (
        ["--seconds", "0.2", "--warmup", "0.1", "--runs", "1"],
        "dpdkpods",
        {
            "memif_mpps": RATE,
            "vhost_mpps": RATE,
            "direct_mpps": RATE,
            "ratio": RATIO,
            "veth_kpps": RATE,
        },
    ),
    "cni": (
        ["--containers", "2"],
        "cni",
        {
            "ours_add_ms": ("time in ms", lambda x: x > 0),
            "ours_del_ms": ("time in ms", lambda x: x > 0),
            "bridge_add_ms": ("time in ms", lambda x: x > 0),
            "bridge_del_ms": ("time in ms", lambda x: x > 0),
            "add_ratio": RATIO,
            "del_ratio": RATIO,
            "containers": ("count", lambda x: x == 2),
        },
    ),
}
QUIET = {"decap"}  # run with --quiet: stdout and stderr hold the RESULT line alone
TIMEOUT_S = 240
RESULT_RE = re.compile(r"^RESULT name=\S+( [a-z0-9_]+=[^\s=]+)+$")

pytestmark = pytest.mark.bench


def test_every_entry_point_has_a_case():
    assert sorted(CASES) == sorted(BENCHMARKS)


def run_bench(name, args):
    """``python -m bench NAME ARGS`` from the checkout; (exit code, stdout,
    stderr). On a timeout SIGTERM first: the benchmark unwinds and removes
    its children, namespaces and files; SIGKILL only if it does not."""
    p = subprocess.Popen(
        [sys.executable, "-m", "bench", name, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    try:
        out, err = p.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        try:
            out, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        pytest.fail(f"bench {name} did not finish within {TIMEOUT_S} s:\n{err[-4000:]}")
    return p.pid, p.returncode, out, err


def left_behind(pid):
    """EAL runtime directories and namespaces named for the benchmark's PID
    (testpmd's and sched_cmp's file prefixes, afpacket's and pods' namespaces)."""
    found = []
    for base in ("/var/run/dpdk", os.environ.get("XDG_RUNTIME_DIR", "/tmp") + "/dpdk"):
        if os.path.isdir(base):
            found += [os.path.join(base, d) for d in os.listdir(base) if str(pid) in d.split("-")]
    if os.path.isdir("/var/run/netns"):
        found += [
            f"netns {n}"
            for n in os.listdir("/var/run/netns")
            if n.startswith((f"afpb{pid}-", f"podb{pid}-", f"cnib{pid}-"))
        ]
    return found


def result_fields(out: str) -> dict:
    """The fields of the RESULT line ``out``, name first, without the
    ``runs=`` every one ends with (test_bench_runs checks its value)."""
    fields = dict(w.split("=", 1) for w in out.split()[1:])
    assert list(fields)[-1] == "runs" and fields.pop("runs").isdigit(), out
    return fields


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=[pytest.mark.netns])
        if n in ("afpacket", "pods", "dpdkpods", "cni")
        else n
        for n in CASES
    ],
)
def test_bench_runs(name):
    assert os.geteuid() == 0, "the benchmarks need root (DPDK, network namespaces)"
    args, result_name, checks = CASES[name]
    quiet = name in QUIET
    pid, rc, out, err = run_bench(name, args + (["--quiet"] if quiet else []))
    where = (
        f"python -m bench {name} {' '.join(args)}: exit code {rc}\n--- stderr ---\n{err[-6000:]}"
    )
    assert rc == 0, where
    assert not left_behind(pid), f"left behind: {left_behind(pid)}"
    lines = out.splitlines()
    assert len(lines) == 1, f"stdout is not the RESULT line alone: {out!r}\n{where}"
    line = lines[0]
    assert RESULT_RE.match(line), f"malformed: {line!r}"
    fields = dict(w.split("=", 1) for w in line.split()[1:])
    assert fields.pop("name") == result_name, line
    # the runs its medians are of, last (cni: one, an add and a delete per container)
    assert list(fields)[-1] == "runs", line
    runs = fields.pop("runs")
    assert runs == (args[args.index("--runs") + 1] if "--runs" in args else "1"), line
    if name == "pods":
        # the service's express lane, as its status said: on by default
        assert fields.pop("express_lane") == "on", line
        # each path's UDP test says what its client sent and what the
        # receiving socket refused, of those datagrams
        seen = re.findall(
            r"UDP 64 B: the client sent ([\d.]+) kpps, the receiving socket refused ([\d.]+) kpps",
            err,
        )
        assert len(seen) == 4 and all(float(r) <= float(s) for s, r in seen), (seen, err)
    if name == "afpacket":
        # every engine's run: what the core received, sent or counted dropped
        sums = re.findall(
            r"bench: (\w+): accounting adds up: (\d+) frames received = (\d+) sent \+ (\d+) dropped",
            err,
        )
        assert sorted(c for c, *_ in sums) == ["afxdp", "lane", "native", "pmd"], err
        assert all(int(r) == int(s) + int(d) and int(r) > 0 for _, r, s, d in sums), sums
    if name == "afpacket" and "source_limited" in fields:
        # contenders that delivered all the generator offered: named, known
        named = fields.pop("source_limited").split(",")
        assert named and set(named) <= {"native", "pmd", "afxdp", "lane", "kernel"}, line
    assert list(fields) == list(checks), line
    for key, (what, ok) in checks.items():
        value = float(fields[key])  # "nan" parses; it is no figure
        assert not math.isnan(value) and ok(value), f"{key}={fields[key]}: not a {what}: {line}"
    if quiet:
        assert "bench: " not in err, f"--quiet, yet progress on stderr:\n{err}"
    else:
        assert "bench: run 1/1" in err or "bench: phase " in err, f"no progress on stderr:\n{err}"


def test_encap_against_ovs_dpdk():
    """``--peers ovs``: OVS-DPDK in a namespace of its own, verified and
    measured beside ours and testpmd; nothing of it is left afterwards."""
    args = QUICK + ["--warmup", "0", "--peers", "ovs"] + FEW_FRAMES
    pid, rc, out, err = run_bench("encap", args)
    assert rc == 0, f"exit code {rc}\n{err[-6000:]}"
    assert "verify ovs: " in err and "all encapsulated correctly" in err, err
    fields = result_fields(out)
    assert float(fields["ovs_mpps"]) > 0 and float(fields["ovs_ratio"]) > 0, out
    assert list(fields)[-2:] == ["ovs_mpps", "ovs_ratio"], out
    assert not left_behind(pid), f"left behind: {left_behind(pid)}"
    assert not glob.glob("/tmp/bench-ovs-*"), glob.glob("/tmp/bench-ovs-*")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"bench-ovs-{pid}" not in ps


def test_decap_with_learning():
    """``--learning``: the core learns every source MAC of the pcap while it
    decapsulates (the bench fails otherwise), and the RESULT line says so."""
    args = QUICK + ["--warmup", "0", "--learning", "--quiet"] + FEW_FRAMES
    pid, rc, out, err = run_bench("decap", args)
    assert rc == 0, f"exit code {rc}\n{err[-6000:]}"
    fields = result_fields(out)
    assert fields["learning"] == "1" and float(fields["mpps"]) > 0, out
    assert not left_behind(pid), f"left behind: {left_behind(pid)}"


def test_decap_with_udp_checksums():
    """``--udp-csum``: frames with outer UDP checksums, as a Linux VTEP sends
    them, which the core verifies; every frame is decapsulated (the timed
    run's accounting and the functional check would fail on a frame
    dropped as udp_checksum), and the RESULT line says so. The checksums
    are right: a frame of the pcap verified here."""
    from bench import traffic

    f = traffic.frames("decap", 64, 64, 8, udp_csum=True)[0]
    pseudo = f[26:34] + b"\0\x11" + f[38:40]
    assert traffic._csum(pseudo + f[34:]) == 0 and f[40:42] != b"\0\0"
    args = QUICK + ["--warmup", "0", "--udp-csum", "--quiet"] + FEW_FRAMES
    pid, rc, out, err = run_bench("decap", args)
    assert rc == 0, f"exit code {rc}\n{err[-6000:]}"
    fields = result_fields(out)
    assert fields["udp_csum"] == "1" and fields["verified"] == "1", out
    assert float(fields["mpps"]) > 0, out
    assert not left_behind(pid), f"left behind: {left_behind(pid)}"


def test_learning_on_encap_is_refused():
    pid, rc, out, err = run_bench("encap", ["--learning"])
    assert rc == 2 and "--learning: decap only" in err and out == ""


def test_unknown_peer_is_refused():
    pid, rc, out, err = run_bench("encap", ["--peers", "vpp"])
    assert rc == 2 and "--peers: unknown contender 'vpp'" in err and out == ""


@pytest.mark.parametrize(
    "name,args,words",
    [
        ("encap", ["--seconds", "nan"], "--seconds must be a finite number, not nan"),
        ("afpacket", ["--rate", "-1"], "--rate must be >= 0"),
        ("afpacket", ["--idle-sleep-us", "-7"], "--idle-sleep-us must be >= 0"),
        (
            "afpacket",
            ["--contenders", "native,xdp"],
            "--contenders: 'xdp' is not one of native, pmd, afxdp, lane, kernel",
        ),
        ("afpacket", ["--contenders", "kernel,kernel"], "--contenders: each of them at most"),
        ("planes", ["--burst", "0"], "--burst: must be > 0"),
        ("planes", ["--media-x", "nan"], "--media-x must be a finite number"),
        ("planes", ["--rate", "fast"], "--rate"),
        ("dpdkpods", ["--a-cpu", "99"], "--a-cpu: CPU 99 not present"),
        ("pods", ["--udp-rates", "100,0"], "--udp-rates: 0 kpps is outside 1..5000"),
        ("churn", ["--sample-ms", "inf"], "--sample-ms must be a finite number"),
        ("cni", ["--containers", "1"], "--containers must be in 2..200, not 1"),
        ("nosuch", [], "bench: no benchmark 'nosuch'"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(name, args, words):
    pid, rc, out, err = run_bench(name, args)
    assert rc == 2 and words in err and out == "", err


def pods_run(args):
    """``python -m bench pods ARGS``, which must succeed and leave nothing
    behind: (its stderr, stdout, the RESULT line's fields)."""
    assert os.geteuid() == 0, "the benchmark needs root (network namespaces)"
    pid, rc, out, err = run_bench("pods", args)
    assert rc == 0, f"exit code {rc}\n{err[-6000:]}"
    assert not left_behind(pid), f"left behind: {left_behind(pid)}"
    return err, out, result_fields(out)


@pytest.mark.netns
def test_pods_only_tcp_vxlan():
    """``--only tcp_vxlan``: the TCP test of ours towards the kernel-VTEP host
    and of the kernel's bridge + vxlan alone; the other figures are 0. With
    ``--no-tunnel-gso`` (the default run covers tunnel GSO), which the
    RESULT line says."""
    err, out, fields = pods_run(
        ["--seconds", "1", "--runs", "1", "--only", "tcp_vxlan", "--no-tunnel-gso",
         "--udp-rates", "20,40"]
    )  # fmt: skip
    assert float(fields["vxlan_tcp_gbps"]) > 0, out
    assert float(fields["ours_vtep_tcp_gbps"]) > 0, out
    others = [
        k
        for k in fields
        if k.endswith(("_rtt_us", "_udp64_pps", "_udp64_delivered_pps", "_tcp_back_gbps"))
        or k.startswith("bridge")
    ]
    assert all(float(fields[k]) == 0 for k in others), out
    # ratios without a measured baseline are nan, not a win or a loss
    unmeasured = (
        "rtt_ratio",
        "tcp_local_ratio",
        "tcp_vxlan_back_ratio",
        "udp64_ratio",
        "udp64_delivered_ratio",
    )
    assert all(fields[k] == "nan" for k in unmeasured), out
    assert "--only tcp_vxlan: paths ours_vtep, vxlan, tests tcp" in err, err
    assert fields.get("tunnel_gso") == "off", out
    assert "bench: the services' drops during the runs: " in err, err
    # --udp-rates: both paths offered 20 and 40 kpps of 64-byte UDP, and
    # both received some at each rate (a ratio, not nan: what they received
    # is the benchmark's figure, not this test's - 1-s runs on a busy
    # machine have given 0.195 at 20 kpps)
    paced = dict(x.split(":") for x in fields.pop("udp64_paced").split(","))
    assert list(paced) == ["20", "40"] and all(float(r) > 0 for r in paced.values()), out
    assert re.search(r"^\|\s+40 \|\s+[\d.]+ \|\s+[\d.]+ \|$", err, re.M), err


def test_pods_over_ipv6():
    """``--ipv6``: the service's network dual-stack and every path's tests
    to an IPv6 address; ping, TCP and UDP work on each path, and the RESULT
    line says ipv6=on."""
    err, out, fields = pods_run(["--seconds", "1", "--runs", "1", "--pings", "50", "--ipv6"])
    assert fields.get("ipv6") == "on", out
    (line,) = [x for x in err.splitlines() if "the tests go to: " in x]
    assert line.count("fd00:50::") == 4 and line.endswith("(IPv6)"), line
    assert "ours_local fd00:50::" in line and "bridge fd00:50::c" in line, line
    for path in ("ours", "ours_vtep", "bridge", "vxlan"):
        for fig in ("rtt_us", "tcp_gbps", "tcp_back_gbps", "udp64_pps"):
            assert float(fields[f"{path}_{fig}"]) > 0, (path, fig, out)


def test_pods_with_af_xdp_pods():
    """``--kernel-driver af_xdp``: the service reads the pods' veths with
    DPDK's net_af_xdp; TCP from a pod reaches the host behind the kernel
    VTEP, and the RESULT line names the driver."""
    err, out, fields = pods_run(
        ["--seconds", "1", "--runs", "1", "--only", "tcp_vxlan", "--kernel-driver", "af_xdp"]
    )
    assert fields.get("kernel_driver") == "af_xdp", out
    assert float(fields["ours_vtep_tcp_gbps"]) > 0, out
    # the pods' veths are net_af_xdp ports of the core
    ports = next(x for x in err.splitlines() if "the service's ports:" in x)
    assert ports.count("net_af_xdp_") == 2 and ports.count("(pod)") == 2, ports


def test_pods_with_two_nodes():
    """``--two-nodes``: a second node service with a pod on the same
    underlay; ping, TCP both ways and UDP from a pod of the first to it
    (path ours_remote) work, the RESULT line adds the remote ratios and
    says two_nodes=on, and both services and their namespaces are gone.
    ``--only remote`` measures that path and its baseline alone (the full
    run is test_bench_runs[pods]); without --two-nodes it is refused."""
    err, out, fields = pods_run(
        ["--seconds", "1", "--pings", "20", "--runs", "1", "--two-nodes", "--only", "remote"]
    )
    assert fields.get("two_nodes") == "on", out
    assert "--only remote: paths ours_remote, vxlan, tests ping, tcp, tcp_rev, udp64" in err, err
    assert fields["ours_tcp_gbps"] == "0.000", out  # the other paths: not measured
    for k in ("rtt_remote_ratio", "tcp_remote_ratio", "udp64_remote_ratio"):
        assert math.isfinite(float(fields[k])) and float(fields[k]) > 0, (k, out)
    for k in ("rtt_us", "tcp_gbps", "tcp_back_gbps", "udp64_pps"):
        assert float(fields[f"ours_remote_{k}"]) > 0, (k, out)
    assert "ours, pod -> pod on another node" in err, err
    pid, rc, out, err = run_bench("pods", ["--only", "remote"])
    assert rc == 2 and "--only remote" in err and "needs --two-nodes" in err, (rc, err)
    assert out == "", out


@pytest.mark.netns
def test_pods_with_a_cpu_latency_request():
    """``--cpu-latency-us 0``: the service holds the node's CPU latency
    request while every path is measured, the RESULT line says so, and the
    request is gone with the service."""
    from dataplane.cpulatency import MAX_US, current_limit_us

    assert os.geteuid() == 0, "the benchmark needs root (network namespaces)"
    assert current_limit_us() == MAX_US, "another process holds a CPU latency request"
    pid, rc, out, err = run_bench(
        "pods", ["--seconds", "1", "--runs", "1", "--only", "tcp_vxlan", "--cpu-latency-us", "0"]
    )
    assert rc == 0, f"exit code {rc}\n{err[-6000:]}"
    assert not left_behind(pid), f"left behind: {left_behind(pid)}"
    fields = result_fields(out)
    assert fields.get("cpu_latency_us") == "0", out
    assert float(fields["ours_vtep_tcp_gbps"]) > 0, out
    assert "cpu_latency_us: 0, held for every path" in err, err
    # read from the service's status, not from the arguments
    assert "the kernel's limit for idle CPUs while measuring: 0 us" in err, err
    # on a kernel whose idle states a request cannot change, the bench says so
    from dataplane.cpulatency import no_effect

    warned = "WARNING: the request changes nothing on this machine: " in err
    assert warned == bool(no_effect(0)), err
    assert current_limit_us() == MAX_US


@pytest.mark.netns
def test_afpacket_result_says_its_footing():
    """A run off the default footing says so in its RESULT line: the
    figures of ``--no-rps`` or ``--no-verify`` are never quoted as the
    default's."""
    assert os.geteuid() == 0, "the benchmark needs root (network namespaces)"
    args = QUICK + ["--warmup", "0.1"] + FEW_FRAMES + ["--no-rps", "--no-verify", "--load", "0.5"]
    pid, rc, out, err = run_bench("afpacket", args)
    assert rc == 0, f"exit code {rc}\n{err[-6000:]}"
    assert not left_behind(pid), f"left behind: {left_behind(pid)}"
    fields = result_fields(out)
    assert list(fields)[-3:] == ["load", "rps", "verified"], out
    assert (fields["load"], fields["rps"], fields["verified"]) == ("0.5", "off", "0"), out
    assert float(fields["kernel_pps"]) > 0, out


@pytest.mark.netns
def test_afpacket_runs_the_contenders_asked_for():
    """``--contenders kernel,native,lane``: those alone run, in that order;
    the RESULT line has their figures and the ratios between them, and says
    which contenders ran. The lane contender's frames to remote VTEPs that
    are TCP (256 frames of the profile hold 64) were carried by the express
    lane (the bench fails a lane run where it took none)."""
    assert os.geteuid() == 0, "the benchmark needs root (network namespaces)"
    args = QUICK + ["--warmup", "0.1", "--frames", "256", "--contenders", "kernel,native,lane"]
    pid, rc, out, err = run_bench("afpacket", args)
    assert rc == 0, f"exit code {rc}\n{err[-6000:]}"
    assert not left_behind(pid), f"left behind: {left_behind(pid)}"
    ran = re.findall(r"bench: run 1/1 (\w+) ", err)
    assert ran == ["kernel", "native", "lane"], err
    assert re.search(r"run 1/1 lane .*the express lane took [1-9]\d*% of it", err), err
    fields = result_fields(out)
    fields.pop("source_limited", None)
    assert list(fields) == [
        "name",
        "native_pps",
        "kernel_pps",
        "kernel_ratio",
        "lane_pps",
        "lane_kernel_ratio",
        "contenders",
    ], out
    assert fields["contenders"] == "kernel,native,lane", out
    native, kernel, lane = (float(fields[f"{n}_pps"]) for n in ("native", "kernel", "lane"))
    assert native > 0 and kernel > 0 and lane > 0, out
    assert float(fields["kernel_ratio"]) == pytest.approx(native / kernel, rel=2e-3), out
    assert float(fields["lane_kernel_ratio"]) == pytest.approx(lane / kernel, rel=2e-3), out
