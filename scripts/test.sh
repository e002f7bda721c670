#!/bin/bash
# Set up (scripts/setup.sh), run the lint gate (scripts/lint.sh), then the
# whole test suite. With arguments: pytest with them, one process (e.g.
# `bash scripts/test.sh tests/test_core.py -k encap`).
#
# The whole suite runs in two pytest processes side by side (lanes): the
# tests that touch nothing of the host's own network namespace - the core
# in a child process on ring and pcap ports, the store against its own
# etcd, clusters and nodes that live in namespaces of their own
# (tests/clusterhost.py, the Fabric of tests/test_kernel_pods.py), the
# configuration and packaging checks - in lane B; everything else in lane
# A, one test at a time as before (node services in the host namespace
# name their pods' veths after the pods, which two tests at once could
# both want); then, once lane B, whose core busy-polls, has ended, what
# measures time, in a pytest of its own: the shaper's rates
# (tests/test_planes.py), the idle worker, the benchmarks' smoke tests.
# Lane B's output follows the others'.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/lint.sh
PYTEST=(.venv/bin/python -m pytest -q -p no:cacheprovider)
if [ $# -gt 0 ]; then
    exec "${PYTEST[@]}" "$@"
fi

LANE_B=(
    tests/test_core.py tests/test_guard_core.py
    tests/test_core_ports.py tests/test_capture.py tests/test_memif_guard.py
    tests/test_rxqueues.py tests/test_sync.py tests/test_sync_refusals.py tests/test_sync_unreadable_keys.py
    tests/test_cluster.py tests/test_cluster_vtep.py tests/test_cluster_rename.py
    tests/test_store_etcd.py tests/test_store.py tests/test_store_tls.py
    tests/test_cni_store.py tests/test_packaging.py tests/test_config.py
    tests/test_pod_spec.py tests/test_guard_config.py tests/test_engine_config.py
    tests/test_checks.py tests/test_cni_deploy.py
    tests/test_kernel_pods.py tests/test_kernel_gso.py tests/test_hostile.py tests/test_ipv6_pods.py
    tests/test_learning.py tests/test_vf.py tests/test_node_limits.py tests/test_virtio_uplink_csum.py
    tests/test_vhost_pod_csum.py
    tests/test_pcapng_text.py tests/test_store_auth.py tests/test_etcd_failover.py tests/test_etcd_blackhole.py
    tests/test_kernel_ports.py
)
LAST=(
    tests/test_planes.py tests/test_kernel_idle.py tests/test_cpu_latency.py tests/test_afxdp.py
    tests/test_bench_traffic.py tests/test_bench_dpdkpods.py tests/test_bench_smoke.py
    tests/test_bench_abtest.py tests/test_bench_sched.py
)
LANE_A=()
for f in tests/test_*.py; do
    case " ${LANE_B[*]} ${LAST[*]} " in
    *" $f "*) ;;
    *) LANE_A+=("$f") ;;
    esac
done

# each lane ends with its slowest tests, where the suite's time goes
PYTEST+=(--durations=12 --durations-min=15)
base=/tmp/pytest-of-$(id -un)
mkdir -p "$base"
log_b=$(mktemp "$base/lane-b.XXXXXX.log")
# job control on while it starts: lane B in a process group of its own,
# which does not ignore SIGINT as a script's background job would - so
# the trap below can interrupt it (a terminal's Ctrl-C reaches lane A and
# this script, whose exit sends it on)
set -m
"${PYTEST[@]}" --basetemp="$base/lane-b" "${LANE_B[@]}" >"$log_b" 2>&1 &
pid_b=$!
set +m
# interrupted: lane B's pytest tears its fixtures down (their services,
# namespaces, etcd) as on Ctrl-C
trap 'kill -INT "$pid_b" 2>/dev/null || true; wait "$pid_b" || true' EXIT
# killed (a CI timeout): bash runs no EXIT trap for a signal it does not
# trap, and lane B, in a process group of its own, would live on
trap 'exit 143' TERM
trap 'exit 129' HUP
# Ctrl-C: pytest ends with code 2 and bash would go on to the next lane
trap 'exit 130' INT
echo "test: lane A (${#LANE_A[@]} files) here; lane B (${#LANE_B[@]} files) in $log_b, shown when both end"
rc_a=0
"${PYTEST[@]}" --basetemp="$base/lane-a" "${LANE_A[@]}" || rc_a=$?
rc_b=0
wait "$pid_b" || rc_b=$?
trap - EXIT
# what measures time, with no busy-polling core of lane B beside it
echo "test: lane B has ended; the timing tests (${#LAST[@]} files):"
rc_l=0
"${PYTEST[@]}" --basetemp="$base/lane-last" "${LAST[@]}" || rc_l=$?
echo "test: lane B:"
cat "$log_b"
rm -f "$log_b"
echo "test: lane A exit $rc_a, lane B exit $rc_b, timing tests exit $rc_l"
[ "$rc_a" -eq 0 ] && [ "$rc_b" -eq 0 ] && [ "$rc_l" -eq 0 ]
