"""``python -m bench cni``: how long a container runtime waits for a pod's
network, our CNI plugin against the reference ``bridge`` plugin with
``host-local`` addresses (the containernetworking-plugins a plain
Kubernetes or podman node uses) in the same run.

In a namespace of its own ("the node") run the node service (fallback
mode, a veth as its uplink) with our plugin installed as a runtime installs
it; the bridge plugin runs in the same namespace, so its bridge and host
veths are made there. Each round adds one container with each plugin,
alternating, every container a network namespace of its own; then every
container is deleted, alternating again. The runtime's view is timed: the
plugin's process from exec to exit, its result checked (an address on
``eth0``). Before the DELs, two containers of each plugin ping each other,
so the figures are of working networks. Prints

    RESULT name=cni ours_add_ms= ours_del_ms= bridge_add_ms= bridge_del_ms=
           add_ratio=<ours/bridge> del_ratio=<ours/bridge> containers=N

medians over the containers (a ratio over 1: ours is slower). Everything it
makes is removed.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

from .common import (
    BenchError,
    fmt_runs,
    median,
    parse_args,
    quiet_netns,
    ratio,
    run_cmd,
    run_main,
    say,
    start_node_service,
    stop_node_service,
)

REF_PLUGINS = "/usr/lib/cni"  # Debian's containernetworking-plugins
OURS_SUBNET, OURS_GW = "10.211.0.0/22", "10.211.0.1"
BRIDGE_SUBNET, BRIDGE_GW = "10.212.0.0/22", "10.212.0.1"


class Lab:
    def __init__(self, workdir: str):
        self.workdir = workdir
        self.tag = f"cnib{os.getpid()}-"  # namespaces named for the benchmark's PID
        self.node = f"{self.tag}node"
        self.sock = os.path.join(workdir, "api.sock")
        self.service = None
        self.namespaces = []
        self.added = []  # (plugin, container id, netns path, conf)

    def ip(self, *args, what):
        return run_cmd(["ip", "netns", "exec", self.node, "ip", *args], what)

    def add_ns(self, name: str) -> str:
        run_cmd(["ip", "netns", "add", name], "creating namespaces")
        self.namespaces.append(name)
        quiet_netns(name)
        return name

    def setup(self):
        self.add_ns(self.node)
        self.ip("link", "add", "up0", "type", "veth", "peer", "name", "up1", what="the uplink")
        for ifn in ("up0", "up1"):
            self.ip("link", "set", ifn, "up", what="the uplink")
        cfg = os.path.join(self.workdir, "node.yaml")
        with open(cfg, "w") as f:
            f.write(
                f"node: {self.node}\n"
                "mode: fallback\n"
                "lcores: [0, 1]\n"
                "memory_mb: 256\n"
                "vtep: {address: 10.213.0.1/24, uplink: up0}\n"
                "networks:\n"
                f"  - {{name: net1, vni: 211, plane: std, subnet: {OURS_SUBNET}, "
                f"gateway: {OURS_GW}}}\n"
                f"state_dir: {self.workdir}/state\n"
                f"api_socket: {self.sock}\n"
                "metrics: {listen: null}\n"
            )
        self.log = os.path.join(self.workdir, "service.log")
        self.service = start_node_service(self.node, cfg, self.sock, self.log)
        from dataplane.cni import install

        self.bin = os.path.join(self.workdir, "bin")
        self.plugin = install(self.bin, sys.executable)
        self.confs = {
            "ours": {
                "cniVersion": "1.0.0",
                "name": "bench-ours",
                "type": "dataplane-cni",
                "network": "net1",
                "socket": self.sock,
            },
            "bridge": {
                "cniVersion": "1.0.0",
                "name": "bench-bridge",
                "type": "bridge",
                "bridge": f"cnbr{os.getpid()}",
                "isGateway": True,
                "ipam": {
                    "type": "host-local",
                    "subnet": BRIDGE_SUBNET,
                    "gateway": BRIDGE_GW,
                    "dataDir": os.path.join(self.workdir, "host-local"),
                },
            },
        }
        self.execs = {
            "ours": (self.plugin, self.bin),
            "bridge": (os.path.join(REF_PLUGINS, "bridge"), REF_PLUGINS),
        }

    def cni(self, plugin: str, command: str, cid: str, netns: str) -> tuple:
        """(seconds, result) of one call as a runtime makes it; BenchError if
        it fails."""
        exe, path = self.execs[plugin]
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": netns,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": path,
            "PATH": "/usr/bin:/bin",
        }
        t = time.perf_counter()
        r = subprocess.run(
            ["ip", "netns", "exec", self.node, exe],
            input=json.dumps(self.confs[plugin]).encode(),
            env=env,
            capture_output=True,
            timeout=120,
        )
        took = time.perf_counter() - t
        if r.returncode != 0:
            raise BenchError(
                f"{plugin} {command} of container {cid[:12]}: exit {r.returncode}: "
                f"{r.stdout.decode().strip()} {r.stderr.decode().strip()}"
            )
        out = json.loads(r.stdout) if r.stdout.strip() else None
        return took, out

    def close(self):
        for plugin, cid, netns in reversed(self.added):
            try:
                self.cni(plugin, "DEL", cid, netns)
            except (BenchError, OSError, subprocess.SubprocessError):
                pass
        self.added = []
        if self.service is not None:
            stop_node_service(self.service)
            self.service = None
        for ns in reversed(self.namespaces):  # the node's last: its veths and bridge go with it
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _address(result) -> str:
    """The container's address in an ADD result."""
    try:
        return result["ips"][0]["address"].split("/")[0]
    except (TypeError, KeyError, IndexError):
        raise BenchError(f"an ADD result without an address: {result!r}") from None


def run(args) -> dict:
    if not os.path.exists(os.path.join(REF_PLUGINS, "bridge")):
        raise BenchError(
            f"{REF_PLUGINS}/bridge is missing: install containernetworking-plugins "
            "(scripts/setup.sh does)"
        )
    workdir = tempfile.mkdtemp(prefix="bench-cni-")
    lab = Lab(workdir)
    times = {(p, v): [] for p in ("ours", "bridge") for v in ("ADD", "DEL")}
    try:
        lab.setup()
        say(f"run 1/1: {args.containers} containers a plugin, added and deleted in turn")
        made = {"ours": [], "bridge": []}
        for i in range(args.containers):
            for plugin in ("ours", "bridge") if i % 2 == 0 else ("bridge", "ours"):
                cid = uuid.uuid4().hex
                ns = lab.add_ns(f"{lab.tag}c{i}{plugin[0]}")
                path = f"/var/run/netns/{ns}"
                took, out = lab.cni(plugin, "ADD", cid, path)
                lab.added.append((plugin, cid, path))
                made[plugin].append((cid, path, ns, _address(out)))
                times[(plugin, "ADD")].append(took)
            say(
                f"container {i + 1}/{args.containers}: ADD ours "
                f"{times[('ours', 'ADD')][-1] * 1e3:.0f} ms, bridge "
                f"{times[('bridge', 'ADD')][-1] * 1e3:.0f} ms"
            )
        for plugin in ("ours", "bridge"):
            (_, _, ns_a, _), (_, _, _, ip_b) = made[plugin][:2]
            r = subprocess.run(
                ["ip", "netns", "exec", ns_a, "ping", "-c", "2", "-i", "0.2", "-W", "2", ip_b],
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                raise BenchError(f"{plugin}: containers do not reach each other:\n{r.stdout}")
        say("two containers of each plugin ping each other")
        for i in range(args.containers):
            for plugin in ("ours", "bridge") if i % 2 == 0 else ("bridge", "ours"):
                cid, path, _, _ = made[plugin][i]
                took, _ = lab.cni(plugin, "DEL", cid, path)
                lab.added.remove((plugin, cid, path))
                times[(plugin, "DEL")].append(took)
    finally:
        lab.close()
        shutil.rmtree(workdir, ignore_errors=True)
    for (plugin, verb), xs in times.items():
        say(f"{plugin} {verb} ms: {fmt_runs(xs, 0, 1e3)}")
    med = {k: median(v) * 1e3 for k, v in times.items()}
    return {"n": args.containers, **med}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench cni",
        description="How long a runtime waits for a pod's network: our CNI plugin (through "
        "the node service) against the reference bridge + host-local plugins, same run.",
    )
    ap.add_argument("--containers", type=int, default=20, help="containers per plugin (default 20)")
    ap.add_argument(
        "-q", "--quiet", action="store_true", help="print only the RESULT line (no progress)"
    )
    return ap


def main(argv=None) -> int:
    ap = parser()
    ap.set_defaults(seconds=1.0, runs=1)  # parse_args' common checks
    args = parse_args(ap, argv)
    if not 2 <= args.containers <= 200:
        ap.error(f"--containers must be in 2..200, not {args.containers}")
    if os.geteuid() != 0:
        ap.error("needs root (network namespaces, the node service)")
    return run_main(run, args, _result)


def _result(res):
    return "cni", {
        "ours_add_ms": f"{res[('ours', 'ADD')]:.1f}",
        "ours_del_ms": f"{res[('ours', 'DEL')]:.1f}",
        "bridge_add_ms": f"{res[('bridge', 'ADD')]:.1f}",
        "bridge_del_ms": f"{res[('bridge', 'DEL')]:.1f}",
        "add_ratio": f"{ratio(res[('ours', 'ADD')], res[('bridge', 'ADD')]):.3f}",
        "del_ratio": f"{ratio(res[('ours', 'DEL')], res[('bridge', 'DEL')]):.3f}",
        "containers": res["n"],
    }
