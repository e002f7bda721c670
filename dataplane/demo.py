"""Demo: two pods (network namespaces) on one network, switched by the core.

    python -m dataplane.demo [--mode fallback|hugepages] [--count 5]

Creates namespaces dpdemo-a and dpdemo-b, each with an eth0 whose host end is
a port of the core (native AF_PACKET driver), pings from one to the other,
prints the core's counters, and removes everything it made.
"""
import argparse
import subprocess
import sys

from .netutil import NetnsPod, cleanup_pods

PODS = [("dpdemo-a", "02:dd:00:00:00:0a", "192.168.77.10/24"),
        ("dpdemo-b", "02:dd:00:00:00:0b", "192.168.77.11/24")]


def have_hugepages():
    try:
        with open("/proc/meminfo") as f:
            free = [int(x.split()[1]) for x in f if x.startswith("HugePages_Free")]
        return bool(free and free[0] >= 256)
    except OSError:
        return False


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m dataplane.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["auto", "fallback", "hugepages"], default="auto")
    ap.add_argument("--count", type=int, default=5, help="pings to send")
    args = ap.parse_args(argv)
    mode = args.mode
    if mode == "auto":
        mode = "hugepages" if have_hugepages() else "fallback"

    from .engine import Engine, EngineConfig

    pods = []
    print(f"demo: starting the core in {mode} mode")
    eng = Engine(EngineConfig(mode=mode, lcores=[0, 1], memory_mb=512))
    try:
        eng.add_network(0, vni=100)
        for name, mac, ip in PODS:
            pod = NetnsPod.create(name, mac, ip)
            pods.append(pod)
            port = eng.add_afpacket_port(pod.host_if, network=0)
            eng.fdb_add_local(0, mac, port)
            print(f"demo: pod {name} eth0 {mac} {ip} -> port {port} ({pod.host_if})")
        eng.start()
        dst = PODS[1][2].split("/")[0]
        print(f"demo: ping {dst} from {PODS[0][0]}")
        r = subprocess.run(["ip", "netns", "exec", PODS[0][0], "ping", "-c", str(args.count),
                            "-i", "0.2", "-W", "1", dst], text=True)
        c = eng.counters()
        print("demo: counters")
        for p in eng.ports():
            print(f"  port {p.index} {p.name:12s} {c.port_dict(p.index)}")
        print(f"  network 0 (VNI 100) {c.net_dict(0)}")
        print(f"  drops {dict((k, v) for k, v in c.drops().items() if v)}")
        return r.returncode
    finally:
        eng.close()
        cleanup_pods(pods)
        print("demo: cleaned up")


if __name__ == "__main__":
    sys.exit(main())
