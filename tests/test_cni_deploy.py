"""deploy/: the manifests hold together (no Kubernetes cluster runs here):
every node configuration passes the node service's checks, every CNI
configuration passes the plugin's, names and paths agree between the
ConfigMaps, the DaemonSet, the NetworkAttachmentDefinitions and the
example pod, and the image build file copies what exists."""

import json
import os
import re

import pytest
import yaml

from dataplane.cni import _read_conf
from dataplane.config import parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")


def docs(name):
    with open(os.path.join(DEPLOY, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def one(kind, name=None):
    for f in ("configmap.yaml", "daemonset.yaml", "networks.yaml", "ct-pod.yaml"):
        for d in docs(f):
            if d["kind"] == kind and (name is None or d["metadata"]["name"] == name):
                return d
    raise AssertionError(f"no {kind} {name or ''} in deploy/")


def node_configs():
    cm = one("ConfigMap", "dataplane-nodes")
    return {k: parse_config(yaml.safe_load(v)) for k, v in cm["data"].items()}


def nads():
    return {
        d["metadata"]["name"]: json.loads(d["spec"]["config"])
        for d in docs("networks.yaml")
        if d["kind"] == "NetworkAttachmentDefinition"
    }


def test_node_configs_pass_the_checks():
    cfgs = node_configs()
    assert cfgs and all(k.endswith(".yaml") for k in cfgs)
    # every node has the same networks; VTEP addresses are the nodes' own
    nets = {k: [(n.name, n.vni, n.plane, n.subnet) for n in c.networks] for k, c in cfgs.items()}
    assert len({tuple(v) for v in nets.values()}) == 1
    assert len({c.vtep.address for c in cfgs.values()}) == len(cfgs)


@pytest.mark.parametrize("plane", ["std", "control", "media"])
def test_a_network_attachment_definition_per_plane(plane):
    confs = [c for c in nads().values() if c.get("plane") == plane]
    assert len(confs) == 1
    conf = _read_conf(json.dumps(confs[0]).encode(), "ADD")
    assert conf["type"] == "dataplane-cni"
    for cfg in node_configs().values():
        net = cfg.network(conf["network"])
        assert net.plane == plane
        assert cfg.api_socket == conf["socket"]


def test_the_host_conflist_is_the_std_network():
    cm = one("ConfigMap", "dataplane-cni")
    (text,) = cm["data"].values()
    lst = json.loads(text)
    (plugin,) = lst["plugins"]
    conf = _read_conf(
        json.dumps({"cniVersion": lst["cniVersion"], "name": lst["name"], **plugin}).encode(), "ADD"
    )
    assert conf == {**conf, "network": nads()["std-net"]["network"], "plane": "std"}


def test_daemonset_mounts_what_the_service_and_the_plugin_need():
    ds = one("DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["hostPID"] is True
    (c,) = spec["containers"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    for cfg in node_configs().values():
        sock_dir = os.path.dirname(cfg.api_socket)
        # the plugin runs on the host: the socket is at the same path there
        assert vols[mounts[sock_dir]]["hostPath"]["path"] == sock_dir
        assert vols[mounts[cfg.state_dir]]["hostPath"]["path"] == cfg.state_dir
    assert vols[mounts["/var/run/netns"]]["hostPath"]["path"] == "/var/run/netns"
    assert vols[mounts["/dev/hugepages"]]["emptyDir"]["medium"] == "HugePages"
    assert c["resources"]["limits"]["hugepages-2Mi"]
    # each node reads its own file from the ConfigMap
    assert "/etc/dataplane/nodes/$(NODE_NAME).yaml" in c["args"]
    assert vols[mounts["/etc/dataplane/nodes"]]["configMap"]["name"] == "dataplane-nodes"
    (init,) = spec["initContainers"]
    script = " ".join(init["command"])
    assert "dataplane-cni install /host/opt/cni/bin" in script
    init_mounts = {m["mountPath"]: vols[m["name"]] for m in init["volumeMounts"]}
    assert init_mounts["/host/opt/cni/bin"]["hostPath"]["path"] == "/opt/cni/bin"
    assert init_mounts["/host/etc/cni/net.d"]["hostPath"]["path"] == "/etc/cni/net.d"


def test_ct_pod_asks_for_its_three_planes():
    pod = one("Pod")
    ann = pod["metadata"]["annotations"]
    ns = pod["metadata"]["namespace"]
    defaults = ann["v1.multus-cni.io/default-network"]
    assert defaults == f"{ns}/std-net"
    sel = json.loads(ann["k8s.v1.cni.cncf.io/networks"])
    known = nads()
    assert {s["name"] for s in sel} | {"std-net"} == set(known)
    nad_ns = {d["metadata"]["namespace"] for d in docs("networks.yaml") if d["kind"] != "Namespace"}
    assert nad_ns == {ns}
    for s in sel:
        assert len(s["interface"]) < 16
    media = next(s for s in sel if s["name"] == "media-net")
    subnet = node_configs()["worker-1.yaml"].network(known["media-net"]["network"]).subnet
    assert media["ips"][0].rsplit(".", 1)[0] == subnet.rsplit(".", 1)[0]


def test_containerfile_copies_what_exists():
    with open(os.path.join(DEPLOY, "Containerfile")) as f:
        text = f.read()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        for src in line.split()[:-1]:
            assert os.path.exists(os.path.join(ROOT, src)), src
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert 'dataplane-cni = "dataplane.cni:main"' in f.read()


def _installed_closure(pkgs):
    """``pkgs`` and every package they depend on, as this machine's dpkg
    knows them (Debian 12, the image's base: the same package names)."""
    import subprocess

    seen, todo = set(), list(pkgs)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        r = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Depends}, ${Pre-Depends}", p],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, f"{p}: not installed here ({r.stderr.strip()})"
        for dep in r.stdout.replace("|", ",").split(","):
            name = dep.strip().split(" ")[0].split(":")[0]
            if name:
                todo.append(name)
    return seen


def test_the_image_installs_every_library_the_core_loads():
    """The runtime stage's packages hold every shared library the core
    links (what ldd finds outside the base image's C library) and the DPDK
    drivers its ports load as plugins: the mempool's, memif, vhost-user,
    AF_XDP and AF_PACKET."""
    import glob
    import subprocess

    with open(os.path.join(DEPLOY, "Containerfile")) as f:
        runtime = f.read().split("\nFROM ")[-1]
    (install,) = re.findall(
        r"apt-get install -y --no-install-recommends\s*\\\n(.*?)\n &&", runtime, re.S
    )
    pkgs = install.replace("\\", " ").split()
    (core,) = glob.glob(os.path.join(ROOT, "dataplane", "_core*.so"))
    ldd = subprocess.run(["ldd", core], capture_output=True, text=True, check=True).stdout
    # the image is Debian 12's (DPDK 22.11, ABI 23); on a machine with
    # another DPDK (Ubuntu 24.04: 23.11, ABI 24) its DPDK packages are
    # looked at under this machine's names
    (eal,) = re.findall(r"=> (/\S*librte_eal\.so\S*) \(", ldd)
    here = subprocess.run(["dpkg", "-S", os.path.realpath(eal)], capture_output=True, text=True)
    abi = re.fullmatch(r"librte-eal(\d+)", here.stdout.split(":")[0]).group(1)
    pkgs = [re.sub(r"^(librte-[a-z-]+?)23$", rf"\g<1>{abi}", p) for p in pkgs]
    have = _installed_closure(pkgs)
    libs = re.findall(r"=> (/\S+) \(", ldd)
    assert any("librte_eal" in lib for lib in libs), ldd
    missing = {}
    for lib in libs:
        owner = subprocess.run(
            ["dpkg", "-S", os.path.realpath(lib)], capture_output=True, text=True
        )
        if owner.returncode != 0:
            owner = subprocess.run(["dpkg", "-S", lib], capture_output=True, text=True)
        pkg = owner.stdout.split(":")[0]
        if pkg and pkg not in have and pkg not in ("libc6",):
            missing[lib] = pkg
    assert not missing, f"the image lacks: {missing}"
    for plugin in ("librte-mempool-ring", "librte-net-memif", "librte-net-vhost",
                   "librte-net-af-xdp", "librte-net-af-packet"):  # fmt: skip
        assert plugin + abi in have, plugin + abi


def test_the_daemonset_gives_one_cpu_per_lcore_and_runs_where_a_file_is():
    """The service's container asks for a CPU per lcore of every node file
    (spinning workers under a smaller limit are throttled), requests equal
    limits in every container (Guaranteed), the namespace allows privileged
    pods and is made before what lives in it, and the DaemonSet runs only
    on the nodes labelled for it."""
    ds = one("DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    cpus = int(c["resources"]["limits"]["cpu"])
    assert all(len(cfg.lcores) <= cpus for cfg in node_configs().values())
    for k in spec["containers"] + spec["initContainers"]:
        assert k["resources"]["requests"] == k["resources"]["limits"], k["name"]
    assert spec["nodeSelector"]["dataplane/enabled"] == "true"
    ns = one("Namespace", "dataplane-system")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    # applied first (kubectl apply -f deploy/configmap.yaml -f deploy/daemonset.yaml)
    first = docs("configmap.yaml")[0]
    assert first["kind"] == "Namespace", first["kind"]
