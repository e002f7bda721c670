#!/bin/bash
# Set up this machine for dataplane (Debian/Ubuntu, as root), idempotently:
# system packages (the distribution's DPDK: 22.11 or later), hugepages and the
# hugetlbfs mount, a virtual environment in .venv with the package built.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in dpdk dpdk-dev libdpdk-dev pkg-config gcc python3-venv python3-dev \
           iproute2 ethtool iputils-ping tcpdump prometheus etcd-server \
           clang libbpf-dev iperf3 libpcap-dev tshark openvswitch-switch-dpdk \
           podman runc busybox-static golang-go golang-github-appc-cni-dev \
           containernetworking-plugins openssl iptables strace; do
    # installed, not merely known (a package removed but not purged is 'rc')
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" = installed ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    # a fresh cloud machine's first-boot upgrades may hold the lock a while;
    # an install cut off earlier (Ctrl-C) is finished first
    apt=(-o DPkg::Lock::Timeout=600)
    # (dpkg itself does not wait for the lock: asked only when an install was
    # cut off, as apt-get finds out, from dpkg's pending updates)
    if [ -n "$(ls -A /var/lib/dpkg/updates 2>/dev/null)" ]; then
        DEBIAN_FRONTEND=noninteractive dpkg --configure -a
    fi
    apt-get "${apt[@]}" update -qq
    # the core needs DPDK 22.11 or later: said before anything is installed
    dpdk=$(apt-cache policy libdpdk-dev | awk '/Candidate:/ {print $2}')
    if [ -z "$dpdk" ] || [ "$dpdk" = "(none)" ] || ! dpkg --compare-versions "$dpdk" ge 22.11; then
        echo "setup: this distribution offers libdpdk-dev ${dpdk:-(none)}; dataplane needs DPDK" \
             "22.11 or later (Debian 12 or 13, Ubuntu 24.04)" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get "${apt[@]}" install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null
fi
# the Prometheus server is started by the tests that need it, never as a service
if systemctl is-active --quiet prometheus 2>/dev/null; then systemctl stop prometheus || true; fi
# Open vSwitch likewise: the encap benchmark runs its own OVS-DPDK in a namespace
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now openvswitch-switch.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/openvswitch-switch ]; then
    if /etc/init.d/openvswitch-switch status >/dev/null 2>&1; then
        /etc/init.d/openvswitch-switch stop >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null 2>&1; then update-rc.d openvswitch-switch disable >/dev/null 2>&1 || true; fi
fi
# etcd likewise: the tests start their own (free ports, a temporary data dir), so the
# service the package installs is stopped and disabled (systemd or sysv init, if any)
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now etcd.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/etcd ]; then
    # 'status' and 'stop' go by the service's pidfile: the tests' etcd is left alone
    if /etc/init.d/etcd status >/dev/null 2>&1; then /etc/init.d/etcd stop >/dev/null 2>&1 || true; fi
    if command -v update-rc.d >/dev/null 2>&1; then update-rc.d etcd disable >/dev/null 2>&1 || true; fi
fi

# hugepages: 1024 x 2 MB, and hugetlbfs mounted (the fallback mode needs neither);
# 2 MB pages by name: on a machine booted with 1 GB default pages,
# /proc/sys/vm/nr_hugepages would ask for 1024 GB. Never more than half the
# machine's memory: hugepages are taken from everything else for good.
hp2m=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
want=1024
if [ -n "$mem_kb" ] && [ $((mem_kb / 2 / 2048)) -lt $want ]; then
    want=$((mem_kb / 2 / 2048))
    echo "setup: this machine has $((mem_kb / 1024)) MB of memory: $want hugepages of 2 MB" \
         "(half of it), not 1024 (the tests in hugepages mode need 1024; fallback mode" \
         "needs none)" >&2
fi
if [ ! -e "$hp2m" ]; then
    echo "setup: this kernel has no 2 MB hugepages (fallback mode still works)"
elif [ "$(cat "$hp2m")" -lt $want ]; then
    echo $want > "$hp2m" || echo "setup: could not reserve hugepages (fallback mode still works)"
    # the kernel gives what it can find (memory fragmented, or too little)
    got=$(cat "$hp2m")
    if [ "$got" -lt $want ]; then
        echo "setup: only $got of $want hugepages of 2 MB could be reserved (the tests in" \
             "hugepages mode need 1024; free memory, or reserve them at boot)" >&2
    fi
fi
mkdir -p /dev/hugepages
mountpoint -q /dev/hugepages || mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages || \
    echo "setup: could not mount hugetlbfs (fallback mode still works)"

# Python: a virtual environment (stock Debian/Ubuntu python3 refuses system-wide pip)
# (made again if a run was cut off while it was made: a python without pip)
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    rm -rf .venv
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip "setuptools>=77"  # build.py run by hand (A/B builds) reads pyproject.toml
.venv/bin/python -m pip install -q -e ".[test]"
# an in-place build (python build.py, the A/B benchmark's) would be loaded
# before the one just installed: removed, so that what runs is this build
for so in dataplane/_core.cpython-*.so; do
    [ -e "$so" ] || continue
    echo "setup: removing the in-place build $so (python build.py makes it again)"
    rm -f "$so"
done
# byte-compiled once here: an editable install is compiled on first import,
# but not where PYTHONDONTWRITEBYTECODE is set, and then every start of the
# service or the CLI compiled the package again (0.1-0.2 s each)
.venv/bin/python -m compileall -q dataplane bench >/dev/null
# (its own line: a failure inside an echo's $(...) would not stop the script)
abi=$(.venv/bin/python -c 'import dataplane.engine as e; print("core ABI", e.ABI_VERSION)')
echo "setup: done ($abi)"
