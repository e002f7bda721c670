"""Demo: the node service on a small topology built of network namespaces.

    python -m dataplane.demo [--mode auto|fallback|hugepages] [--duration SECONDS]

What it builds (every name starts with dpdemo, all removed at the end):

    pod dpdemo-a (ct: std, control, media)   pod dpdemo-b (it: std)
               \\ veth                          / veth
            [ node service: core + control API + /metrics ]  VTEP 10.77.0.1
                               | uplink dpdemo-up (AF_PACKET)
                        underlay dpdemo-ul     10.77.0.2: the kernel's own
                        vxlan100 + bridge  --  "vm" dpdemo-vm 192.168.100.200

It starts the service, attaches the two pods, pings pod to pod on this node
and pod to the vm behind a standard Linux VXLAN VTEP (its MAC learned from
its frames), prints the status, the FDB and
a few metrics, then keeps serving (try `dataplane status` and
`curl 127.0.0.1:9464/metrics` from another shell) until Ctrl-C or
--duration seconds.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request

from .netutil import sh

NS_UL, NS_VM = "dpdemo-ul", "dpdemo-vm"
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
lcores: [0, 1]
memory_mb: 512
vtep: {{address: 10.77.0.1/24, uplink: dpdemo-up, learning: true}}
networks:
  - {{name: net1, vni: 100, plane: std, subnet: 192.168.100.0/24, gateway: 192.168.100.1}}
  - {{name: net2, vni: 200, plane: control, subnet: 192.168.200.0/24}}
  - {{name: net3, vni: 300, plane: media, subnet: 192.168.30.0/24}}
remotes:
  - {{vtep: 10.77.0.2, networks: [net1]}}
state_dir: {state}
api_socket: /run/dataplane/api.sock
metrics: {{listen: "127.0.0.1:9464"}}
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


def teardown():
    for ns in (*PODS, NS_VM, NS_UL):
        sh("ip", "netns", "del", ns, check=False)
    sh("ip", "link", "del", "dpdemo-up", check=False)


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
    args = ap.parse_args(argv)
    if args.duration is not None and not 0 <= args.duration < 1e9:
        ap.error(f"--duration: {args.duration} is not a number of seconds (0 or more)")
    if os.geteuid() != 0:
        sys.exit("demo: needs root (network namespaces, DPDK)")
    mode = args.mode
    if mode == "auto":
        mode = "hugepages" if have_hugepages() else "fallback"

    import yaml

    from .cli import fdb_lines
    from .config import parse_config
    from .service import NodeService, setup_logging

    setup_logging()
    teardown()  # leftovers of an interrupted run
    state = tempfile.mkdtemp(prefix="dpdemo-state-")
    cfg = parse_config(yaml.safe_load(CONFIG.format(mode=mode, state=state)))
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
            for p in info["planes"]:
                print(
                    f"demo: pod {name} {p['plane']:8s} {p['ifname']:8s} {p['ip']:16s} "
                    f"{p['mac']} -> {p['network']}"
                )
        ok &= ping("dpdemo-a", ips["dpdemo-b"]["std"], "pod a -> pod b (same node, net1)")
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
        text = urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=5).read().decode()
        sample = [
            ln
            for ln in text.splitlines()
            if ln.startswith(("dataplane_network_encap", "dataplane_network_pods"))
        ]
        print("demo: http://127.0.0.1:9464/metrics (sample)")
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
        teardown()
        subprocess.run(["rm", "-rf", state])
        print("demo: cleaned up")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
