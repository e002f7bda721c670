"""Demo: the node service on a small topology built of network namespaces.

    python -m dataplane.demo [--mode auto|fallback|hugepages] [--duration SECONDS]
                             [--metrics-port PORT]

What it builds (every name starts with dpdemo, all removed at the end):

    pod dpdemo-a (ct: std, control, media)   pod dpdemo-b (it: std)
               \\ veth                          / veth
            [ node service: core + control API + /metrics ]  VTEP 10.77.0.1
                               | uplink dpdemo-up (AF_PACKET)
                        underlay dpdemo-ul     10.77.0.2: the kernel's own
                        vxlan100 + bridge  --  "vm" dpdemo-vm 192.168.100.200

It starts the service, attaches the two pods, pings pod to pod on this node
(IPv4, and IPv6: net1 is dual-stack) and pod to the vm behind a standard Linux VXLAN VTEP (its MAC learned from
its frames), prints the status, the FDB and
a few metrics, then keeps serving (try `dataplane status` and
`curl 127.0.0.1:9464/metrics` from another shell) until Ctrl-C or
--duration seconds.

Before it makes anything it checks that what it needs is free: the metrics
port (9464, or --metrics-port), the API socket /run/dataplane/api.sock (a
node service or another demo holds it) and that no other demo runs (its
lock, /run/dataplane/demo.lock); if not, it says what is taken, by which
process, and how to get out, and makes nothing. Namespaces and interfaces
of its own names (dpdemo-*) left by a demo that was killed are its own: it
says which and removes them.
"""

import argparse
import errno
import fcntl
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
from typing import List, Optional

from .netutil import sh

NS_UL, NS_VM = "dpdemo-ul", "dpdemo-vm"
UPLINK = "dpdemo-up"
METRICS_PORT = 9464
API_SOCKET = "/run/dataplane/api.sock"
#: held while a demo runs (a POSIX lock, as the service's own claims): its
#: dpdemo-* names are then that demo's, not leftovers
DEMO_LOCK = "/run/dataplane/demo.lock"
PODS = {
    "dpdemo-a": {
        "pod_type": "ct",
        "network_plane": ["std", "control", "media"],
        "networks": {"std": "net1", "control": "net2", "media": "net3"},
    },
    "dpdemo-b": {"pod_type": "it", "network_plane": ["std"], "networks": {"std": "net1"}},
}
CONFIG = """
node: demo
mode: {mode}
lcores: {lcores}
memory_mb: 512
vtep: {{address: 10.77.0.1/24, uplink: dpdemo-up, learning: true}}
networks:
  - {{name: net1, vni: 100, plane: std, subnet: 192.168.100.0/24, gateway: 192.168.100.1,
     subnet6: "fd00:100::/64", gateway6: "fd00:100::1"}}
  - {{name: net2, vni: 200, plane: control, subnet: 192.168.200.0/24}}
  - {{name: net3, vni: 300, plane: media, subnet: 192.168.30.0/24}}
remotes:
  - {{vtep: 10.77.0.2, networks: [net1]}}
state_dir: {state}
api_socket: {api_socket}
metrics: {{listen: "127.0.0.1:{metrics_port}"}}
"""


def have_hugepages():
    try:
        with open("/proc/meminfo") as f:
            free = [int(x.split()[1]) for x in f if x.startswith("HugePages_Free")]
        return bool(free and free[0] >= 256) and os.path.ismount("/dev/hugepages")
    except OSError:
        return False


def build_underlay():
    """Uplink veth into the underlay namespace, where the kernel's vxlan
    device and a bridge connect a 'vm' namespace: a standard VTEP."""
    sh("ip", "netns", "add", NS_UL)
    sh("ip", "netns", "add", NS_VM)
    sh("ip", "link", "add", "dpdemo-up", "type", "veth", "peer", "name", "ul0", "netns", NS_UL)
    sh("ip", "link", "set", "dpdemo-up", "up")
    sh("sysctl", "-qw", "net.ipv6.conf.dpdemo-up.disable_ipv6=1", check=False)
    ul = ["ip", "-n", NS_UL]
    sh(*ul, "addr", "add", "10.77.0.2/24", "dev", "ul0")
    sh(*ul, "link", "set", "ul0", "up")
    sh(
        *ul,
        "link",
        "add",
        "vxlan100",
        "type",
        "vxlan",
        "id",
        "100",
        "local",
        "10.77.0.2",
        "dstport",
        "4789",
        "nolearning",
    )
    sh(
        "ip",
        "netns",
        "exec",
        NS_UL,
        "bridge",
        "fdb",
        "append",
        "00:00:00:00:00:00",
        "dev",
        "vxlan100",
        "dst",
        "10.77.0.1",
    )
    sh(*ul, "link", "add", "br0", "type", "bridge")
    sh(*ul, "link", "set", "vxlan100", "master", "br0", "up")
    sh(*ul, "link", "add", "vm0", "type", "veth", "peer", "name", "eth0", "netns", NS_VM)
    sh(*ul, "link", "set", "vm0", "master", "br0", "up")
    sh(*ul, "link", "set", "br0", "up")
    sh("ip", "-n", NS_VM, "addr", "add", "192.168.100.200/24", "dev", "eth0")
    sh("ip", "-n", NS_VM, "link", "set", "eth0", "mtu", "1450", "up")
    # the kernel bridge learns the remote pod MACs behind vxlan100 by itself
    sh(*ul, "link", "set", "vxlan100", "type", "vxlan", "learning", check=False)


#: the demo's state directories (its store), one a run, under the temp dir
STATE_PREFIX = "dpdemo-state-"


def _state_dirs() -> List[str]:
    return sorted(glob.glob(os.path.join(tempfile.gettempdir(), STATE_PREFIX + "*")))


def teardown():
    for ns in (*PODS, NS_VM, NS_UL):
        sh("ip", "netns", "del", ns, check=False)
    sh("ip", "link", "del", UPLINK, check=False)
    for d in _state_dirs():  # no other demo runs (its lock): a killed one's
        shutil.rmtree(d, ignore_errors=True)


class Refused(Exception):
    """What keeps the demo from starting, said before it makes anything."""


def _who(pid: str) -> str:
    """'pid N (its command line)', or 'pid N'."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    return f"pid {pid}" + (f" ({cmd[:100]})" if cmd else "")


def _port_holders(port: int) -> List[str]:
    """The processes with a listening TCP socket on ``port`` (any address),
    as :func:`_who` names them; best effort (/proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if cols[1].rsplit(":", 1)[1] == f"{port:04X}" and cols[3] == "0A":
                        inodes.add(cols[9])  # state 0A: LISTEN
        except OSError:
            pass
    holders = []
    if not inodes:
        return holders
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds}
        except OSError:
            continue
        if any(f"socket:[{i}]" in links for i in inodes):
            holders.append(_who(pid))
    return holders


def check_port(port: int):
    """Refused unless 127.0.0.1:``port`` can be listened on (as the
    service's metrics server binds it: with SO_REUSEADDR)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise Refused(f"port {port}: cannot listen on it: {e.strerror}") from None
        by = _port_holders(port)
        raise Refused(
            f"port {port} is in use"
            + (f" by {', '.join(by)}" if by else "")
            + " (another dataplane service or demo?): stop it or pass --metrics-port N"
            " (a free port)"
        ) from None
    finally:
        s.close()


def _lock_holder(path: str) -> Optional[str]:
    """The pid written in lock file ``path`` if a process holds its lock
    (a running service's or demo's claim), '' if held without a pid; None
    if it is free or absent. Looked at without creating it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    finally:
        os.close(fd)  # releases this process's lock too, had it been taken
    return None


def check_api_socket(path: str = API_SOCKET):
    """Refused if a running dataplane service (a node service, or another
    demo's) holds the API socket the demo's service would take."""
    pid = _lock_holder(f"{path}.lock")
    if pid is None:
        return
    who = _who(pid) if pid.isdigit() else "a process"
    kill = f"kill {pid}" if pid.isdigit() else f"see who holds {path}.lock"
    if "dataplane.demo" in who:
        how = f"another demo runs on this machine; stop it first (Ctrl-C in its shell, or {kill})"
    else:
        how = (
            "a dataplane node service runs on this machine; stop it first "
            f"(its systemd unit or DaemonSet pod, or {kill})"
        )
    raise Refused(f"the API socket {path} is in use by {who}: {how}")


def claim(path: str = DEMO_LOCK) -> int:
    """Take the demo's lock (its fd, held until the demo exits); Refused,
    naming it, if another demo runs."""
    while True:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = _who(pid) if pid.isdigit() else f"its lock {path} is held"
            kill = f", or kill {pid}" if pid.isdigit() else ""
            raise Refused(
                f"another demo runs ({who}): stop it first (Ctrl-C in its shell{kill})"
            ) from None
        try:  # still the file at the path (not removed by a demo that ended)
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release(fd: int, path: str = DEMO_LOCK):
    try:
        os.unlink(path)  # still ours: held until the close
    except OSError:
        pass
    os.close(fd)


def leftovers() -> List[str]:
    """The demo's own names (dpdemo-*) that exist: what a demo killed
    before it could clean up left."""
    have_ns = set(sh("ip", "netns", "list", check=False).stdout.split())
    found = [f"namespace {ns}" for ns in (*PODS, NS_UL, NS_VM) if ns in have_ns]
    if sh("ip", "link", "show", UPLINK, check=False).returncode == 0:
        found.append(f"interface {UPLINK}")
    found += [f"state directory {d}" for d in _state_dirs()]
    return found


def ping(ns, ip, label):
    r = subprocess.run(
        ["ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", ip],
        capture_output=True,
        text=True,
    )
    last = [line for line in r.stdout.splitlines() if "packet loss" in line or "rtt" in line]
    print(f"demo: {label}: {'ok' if r.returncode == 0 else 'FAILED'}  " + "  ".join(last))
    return r.returncode == 0


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m dataplane.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--mode", choices=["auto", "fallback", "hugepages"], default="auto")
    ap.add_argument(
        "--duration",
        type=float,
        default=None,
        help="serve this many seconds after the checks (default: until Ctrl-C)",
    )
    ap.add_argument(
        "--metrics-port",
        type=int,
        default=METRICS_PORT,
        help=f"the service's /metrics on 127.0.0.1:PORT (default {METRICS_PORT})",
    )
    args = ap.parse_args(argv)
    # each line as it is printed, also into a pipe, a file or a journal:
    # "serving" is to be seen while the demo serves, not when it ends
    sys.stdout.reconfigure(line_buffering=True)
    if args.duration is not None and not 0 <= args.duration < 1e9:
        ap.error(f"--duration: {args.duration} is not a number of seconds (0 or more)")
    if not 1 <= args.metrics_port <= 65535:
        ap.error(f"--metrics-port: {args.metrics_port} is not a TCP port (1-65535)")
    if os.geteuid() != 0:
        sys.exit("demo: needs root (network namespaces, DPDK)")
    mode = args.mode
    if mode == "auto":
        mode = "hugepages" if have_hugepages() else "fallback"

    # what the demo needs, free before anything is made
    try:
        args.lcores = demo_lcores()
        check_port(args.metrics_port)
        check_api_socket()
        lock = claim()
    except Refused as e:
        sys.exit(f"demo: {e}; nothing was made")
    try:
        return _run(args, mode)
    finally:
        release(lock)


def demo_lcores() -> list:
    """The first two CPUs this process may use (a container's cpuset need
    not hold CPUs 0 and 1): the control thread's and the worker's."""
    from .checks import usable_cpus

    cpus = usable_cpus()
    if len(cpus) < 2:
        raise Refused(
            f"needs two CPUs (a control thread and a worker); this process may use {cpus}"
        )
    return cpus[:2]


def _run(args, mode):
    """The demo itself, once what it needs is free (:func:`main`)."""
    import yaml

    from .cli import fdb_lines
    from .config import parse_config
    from .service import NodeService, setup_logging

    port = args.metrics_port
    setup_logging()
    left = leftovers()  # no other demo runs (its lock): a killed one's
    if left:
        print(f"demo: removing what a demo that did not finish left: {', '.join(left)}")
        teardown()
    state = tempfile.mkdtemp(prefix=STATE_PREFIX)
    cfg = parse_config(
        yaml.safe_load(
            CONFIG.format(
                mode=mode,
                state=state,
                api_socket=API_SOCKET,
                metrics_port=port,
                lcores=args.lcores,
            )
        )
    )
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    svc = None
    ok = True
    try:
        build_underlay()
        print(f"demo: starting the node service ({mode} mode)")
        svc = NodeService(cfg)
        svc.start()
        ips = {}
        for name, spec in PODS.items():
            sh("ip", "netns", "add", name)
            info = svc.add_pod(name, f"/var/run/netns/{name}", json.dumps(spec))
            ips[name] = {p["plane"]: p["ip"] for p in info["planes"]}
            ips[name] |= {p["plane"] + "6": p["ip6"] for p in info["planes"] if p["ip6"]}
            for p in info["planes"]:
                print(
                    f"demo: pod {name} {p['plane']:8s} {p['ifname']:8s} {p['ip']:16s} "
                    f"{p['mac']} -> {p['network']}" + (f" (and {p['ip6']})" if p["ip6"] else "")
                )
        ok &= ping("dpdemo-a", ips["dpdemo-b"]["std"], "pod a -> pod b (same node, net1)")
        ok &= ping(
            "dpdemo-a", ips["dpdemo-b"]["std6"], "pod a -> pod b over IPv6 (net1, dual stack)"
        )
        ok &= ping(
            "dpdemo-b",
            "192.168.100.200",
            "pod b -> vm behind the kernel's VXLAN VTEP (VNI 100 over the underlay)",
        )
        st = svc.status()
        print("demo: status")
        for n in st["networks"]:
            print(
                f"  network {n['name']} vni {n['vni']} plane {n['plane']} pods {n['pods']} "
                f"encap {n['encap_packets']} decap {n['decap_packets']} "
                f"flood {n['flood_packets']} local {n['local_packets']}"
            )
        print(f"  drops {st['drops']}")
        print("demo: FDB (dataplane fdb): where each MAC goes, and why")
        for line in fdb_lines(svc.fdb()):
            print("  " + line)
        url = f"http://127.0.0.1:{port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        sample = [
            ln
            for ln in text.splitlines()
            if ln.startswith(("dataplane_network_encap", "dataplane_network_pods"))
        ]
        print(f"demo: {url} (sample)")
        for ln in sample[:6]:
            print("  " + ln)
        if args.duration is None:
            print("demo: serving; try '.venv/bin/dataplane status' in another shell; Ctrl-C stops")
        stop.wait(args.duration if args.duration is not None else None)
    finally:
        if svc is not None:
            for name in PODS:
                try:
                    svc.del_pod(name)
                except Exception:  # noqa: BLE001 - the pod may not have been made
                    pass
            svc.stop()
        teardown()  # the state directory too
        print("demo: cleaned up")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
