"""The CNI plugin under a real container runtime: Debian's podman with its
CNI network backend runs containers (runc, a busybox root filesystem, no
registry) on networks whose only plugin is ``dataplane-cni``, against a real
node service. Everything podman makes - storage, run state, network
configurations, the root filesystem - is in the test's directory and is
removed with it."""

import json
import os
import shutil
import subprocess
import tempfile
import uuid

import pytest

from tests.test_cni import CNINode
from tests.test_service import sh

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

BUSYBOX = "/bin/busybox"
CNI_CACHE = "/var/lib/cni"
# network configuration name -> (node network, plane)
NETS = {
    "std-net": ("net1", "std"),
    "control-net": ("net2", "control"),
    "media-net": ("net3", "media"),
}


class Podman:
    """podman with its own storage, run directory, containers.conf and CNI
    configuration directory under ``tmp``."""

    def __init__(self, tmp, node):
        for tool in ("podman", "runc"):
            assert shutil.which(tool), f"{tool} is not installed (scripts/setup.sh installs it)"
        assert os.path.exists(BUSYBOX), "busybox-static is not installed (scripts/setup.sh)"
        self.tmp = tmp
        self.node = node
        self.netdir = tmp / "net.d"
        self.netdir.mkdir()
        self.rootfs = tmp / "rootfs"
        for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "run"):
            (self.rootfs / d).mkdir(parents=True)
        shutil.copy(BUSYBOX, self.rootfs / "bin" / "busybox")
        for tool in ("sh", "ip", "ping", "sleep", "cat", "ifconfig", "route", "true"):
            os.symlink("busybox", self.rootfs / "bin" / tool)
        conf = tmp / "containers.conf"
        conf.write_text(f"""
[containers]
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
events_logfile_path = "{tmp}/events.log"
tmp_dir = "{tmp}/libpod"
volume_path = "{tmp}/volumes"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{os.path.dirname(node.plugin)}", "/usr/lib/cni"]
network_config_dir = "{self.netdir}"
""")
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        # podman refuses a run directory of more than 50 characters
        self.runroot = tempfile.mkdtemp(prefix="dpcni", dir="/tmp")
        self.globals = [
            "--root",
            str(tmp / "storage"),
            "--runroot",
            self.runroot,
            "--cgroup-manager",
            "cgroupfs",
            "--runtime",
            "runc",
            "--storage-driver",
            "vfs",
        ]
        self.containers = []
        # podman's CNI backend keeps its results under /var/lib/cni (fixed)
        self.made_cache = not os.path.exists(CNI_CACHE)
        self.netns_before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
        for name, (network, plane) in NETS.items():
            self.network(name, network, plane)

    def network(self, name, network, plane):
        conflist = {
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [
                {
                    "type": "dataplane-cni",
                    "network": network,
                    "plane": plane,
                    "socket": self.node.sock,
                    "capabilities": {"ips": True, "mac": True},
                }
            ],
        }
        (self.netdir / f"{name}.conflist").write_text(json.dumps(conflist))

    def __call__(self, *args, check=True, timeout=120):
        r = subprocess.run(
            ["podman", *self.globals, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {r.stdout}{r.stderr}")
        return r

    def run(self, *networks, ip=None, mac=None, cmd=("sleep", "600")):
        """A detached container on ``networks``; its name."""
        name = f"dpc-{uuid.uuid4().hex[:8]}"
        net = ",".join(networks)
        opts = (["--ip", ip] if ip else []) + (["--mac-address", mac] if mac else [])
        self(
            "run", "-d", "--name", name, "--network", net, *opts,
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
            # busybox's ping opens a raw socket: podman 4.9 (Ubuntu 24.04)
            # no longer gives NET_RAW by default, 4.3 (Debian 12) does
            "--cap-add", "NET_RAW",
            "--rootfs", str(self.rootfs), *cmd,
        )  # fmt: skip
        self.containers.append(name)
        return name

    def exec(self, name, *cmd, check=False):
        return self("exec", name, *cmd, check=check)

    def container_id(self, name):
        return self("inspect", "--format", "{{.Id}}", name).stdout.strip()

    def rm(self, name):
        self("rm", "-f", "-t", "0", name, check=False)
        if name in self.containers:
            self.containers.remove(name)

    def cleanup(self):
        for name in list(self.containers):
            self.rm(name)
        # podman leaves its mounts of the storage directory
        self("system", "reset", "-f", check=False, timeout=60)
        shutil.rmtree(self.runroot, ignore_errors=True)
        if self.made_cache:  # empty once every container is gone
            for d in (f"{CNI_CACHE}/results", CNI_CACHE):
                try:
                    os.rmdir(d)
                except OSError:
                    pass

    def leftovers(self):
        """What podman and the plugin left: CNI results, namespaces."""
        results = (
            os.listdir(f"{CNI_CACHE}/results") if os.path.isdir(f"{CNI_CACHE}/results") else []
        )
        ours = [r for r in results if any(n in r for n in NETS)]
        netns = set(os.listdir("/run/netns")) - self.netns_before
        return ours + sorted(n for n in netns if n.startswith("cni-"))


def podman_cni_missing():
    """Why this podman cannot run CNI networks at all, or None. Podman 5 as
    Debian 13 builds it has only the netavark backend and says so
    (``cni support is not enabled in this build, only netavark``); podman 4
    (Debian 12, Ubuntu 24.04) has both. Asked with a throwaway storage and
    configuration: nothing of the host's podman is read or made."""
    if not shutil.which("podman"):
        return None  # Podman() names what is missing
    with tempfile.TemporaryDirectory(prefix="dppm", dir="/tmp") as d:
        conf = os.path.join(d, "containers.conf")
        with open(conf, "w") as f:
            f.write(f'[network]\nnetwork_backend = "cni"\nnetwork_config_dir = "{d}"\n')
        r = subprocess.run(
            ["podman", "--root", f"{d}/storage", "--runroot", f"{d}/run"]
            + ["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "network", "ls"],
            env={**os.environ, "CONTAINERS_CONF": conf},
            capture_output=True,
            text=True,
            timeout=60,
        )
    if r.returncode != 0 and "cni support is not enabled" in r.stderr:
        return r.stderr.strip().splitlines()[-1]
    return None


@pytest.fixture
def pm(tmp_path):
    why = podman_cni_missing()
    if why:
        pytest.skip(
            f"this podman has no CNI network backend ({why}); the plugin is tested "
            "under the reference libcni in tests/test_cni_libcni.py"
        )
    node = CNINode(tmp_path, uuid.uuid4().hex[:5])
    p = None
    try:
        node.start()
        p = Podman(tmp_path, node)
        yield p
    finally:
        if p is not None:
            p.cleanup()
        node.cleanup()


def attachments(pm):
    return {(a["container_id"], a["cni_network"]): a for a in pm.node.api("GET", "/v1/attachments")}


def addr(pm, name, ifname="eth0"):
    r = pm.exec(name, "ip", "-4", "-o", "addr", "show", ifname, check=True)
    return r.stdout.split()[3].split("/")[0]


def test_podman_containers_get_addresses_and_reach_each_other(pm):
    a = pm.run("media-net")
    b = pm.run("media-net", ip="192.168.62.40", mac="02:00:00:00:62:40")
    ida, idb = pm.container_id(a), pm.container_id(b)
    att = attachments(pm)
    assert set(att) == {(ida, "media-net"), (idb, "media-net")}
    # the runtime's "ips" and "mac" capabilities reached the service
    assert att[(idb, "media-net")]["ip"] == "192.168.62.40"
    assert att[(idb, "media-net")]["mac"] == "02:00:00:00:62:40"
    assert "02:00:00:00:62:40" in pm.exec(b, "ip", "link", "show", "eth0", check=True).stdout
    assert addr(pm, a) == att[(ida, "media-net")]["ip"]
    r = pm.exec(a, "ping", "-c", "3", "-W", "1", "192.168.62.40")
    assert r.returncode == 0, r.stdout + r.stderr
    st = pm.node.api("GET", "/v1/status")
    net3 = next(n for n in st["networks"] if n["name"] == "net3")
    assert net3["pods"] == 2 and net3["local_packets"] >= 6
    # removing a container takes its attachment, interface and address
    host = att[(ida, "media-net")]["host_ifname"]
    pm.rm(a)
    assert set(attachments(pm)) == {(idb, "media-net")}
    assert not os.path.exists(f"/sys/class/net/{host}")
    c = pm.run("media-net")
    # the address was given back, and is not handed out again at once:
    # addresses go in turn, so c gets the next one
    freed = att[(ida, "media-net")]["ip"]
    assert addr(pm, c) != freed
    assert freed not in {x["ip"] for x in attachments(pm).values()}
    pm.rm(b)
    pm.rm(c)
    assert attachments(pm) == {} and pm.leftovers() == []


def test_podman_networks_are_isolated_and_reach_a_pod_of_the_api(pm):
    a = pm.run("std-net")
    b = pm.run("control-net")
    # a pod added through the API on the std plane
    ns = f"dpt{pm.node.tag}api"
    sh("ip", "netns", "add", ns)
    pm.node.netns.append(ns)
    spec = {"pod_type": "it", "network_plane": ["std"], "networks": {"std": "net1"}}
    info = pm.node.api(
        "POST", "/v1/pods", {"name": "api-pod", "netns": f"/var/run/netns/{ns}", "spec": spec}
    )
    pm.node.host_links |= {p["host_ifname"] for p in info["planes"]}
    pod_ip = info["planes"][0]["ip"]
    r = pm.exec(a, "ping", "-c", "3", "-W", "1", pod_ip)
    assert r.returncode == 0, r.stdout + r.stderr
    # the container has its default route through the std network's gateway
    assert "default via 192.168.60.1" in pm.exec(a, "ip", "route", check=True).stdout
    # control-net is another network: the pod's address is not reachable from it
    r = pm.exec(b, "ping", "-c", "2", "-W", "1", pod_ip)
    assert r.returncode != 0
    b_ip = addr(pm, b)
    r = pm.exec(a, "ping", "-c", "2", "-W", "1", b_ip)
    assert r.returncode != 0


def test_podman_container_with_two_planes(pm):
    a = pm.run("std-net", "media-net")
    b = pm.run("media-net")
    ida = pm.container_id(a)
    att = attachments(pm)
    assert {(ida, "std-net"), (ida, "media-net")} <= set(att)
    links = pm.exec(a, "ip", "-o", "link", check=True).stdout
    eth = sorted(x.split(":")[1].strip().split("@")[0] for x in links.splitlines() if "eth" in x)
    assert eth == ["eth0", "eth1"]
    media_if = att[(ida, "media-net")]["ifname"]
    assert addr(pm, a, media_if) == att[(ida, "media-net")]["ip"]
    r = pm.exec(a, "ping", "-c", "2", "-W", "1", addr(pm, b))
    assert r.returncode == 0, r.stdout + r.stderr
    hosts = [att[k]["host_ifname"] for k in att]
    pm.rm(a)
    pm.rm(b)
    assert attachments(pm) == {}
    assert pm.node.api("GET", "/v1/pods") == []
    assert not any(os.path.exists(f"/sys/class/net/{h}") for h in hosts)
    # podman left no network namespace and no CNI result behind
    assert pm.leftovers() == []
