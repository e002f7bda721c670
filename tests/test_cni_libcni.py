"""The CNI plugin driven by the reference libcni (Debian's
golang-github-appc-cni-dev, built in GOPATH mode, no module download), in a
network configuration list that chains it with the reference ``tuning``
plugin (Debian's containernetworking-plugins): ADD hands our result to
tuning as prevResult, CHECK hands the cached result back to us, DEL undoes
both. The driver program is ``tests/cnidriver/main.go``."""

import json
import os
import shutil
import subprocess
import uuid

import pytest

from tests.cnihost import ROOT
from tests.test_cni import CNINode
from tests.test_service import sh

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

GOPATH_SRC = "/usr/share/gocode/src/github.com/containernetworking/cni/libcni"
REFERENCE_PLUGINS = "/usr/lib/cni"
SYSCTL = "net.ipv4.conf.eth0.arp_ignore"


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """The driver, built in a GOPATH of its own (the reference libcni from
    /usr/share/gocode)."""
    assert shutil.which("go"), "golang-go is not installed (scripts/setup.sh installs it)"
    assert os.path.isdir(GOPATH_SRC), "golang-github-appc-cni-dev is not installed"
    assert os.path.exists(f"{REFERENCE_PLUGINS}/tuning"), "containernetworking-plugins missing"
    gopath = tmp_path_factory.mktemp("gopath")
    src = gopath / "src" / "cnidriver"
    src.mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "tests", "cnidriver", "main.go"), src / "main.go")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(gopath),
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}:/usr/share/gocode",
        "GOCACHE": str(gopath / "cache"),
        "GOFLAGS": "",
    }
    out = gopath / "cnidriver"
    r = subprocess.run(
        ["go", "build", "-o", str(out), "."], cwd=src, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return str(out)


class LibCNI:
    def __init__(self, driver, node, tmp, version):
        self.driver = driver
        self.node = node
        self.cache = tmp / "cnicache"
        self.conflist = tmp / "std-tuned.conflist"
        self.conflist.write_text(
            json.dumps(
                {
                    "cniVersion": version,
                    "name": "std-tuned",
                    "plugins": [
                        {"type": "dataplane-cni", "network": "net1", "socket": node.sock},
                        {"type": "tuning", "sysctl": {SYSCTL: "1"}},
                    ],
                }
            )
        )

    def __call__(self, verb, cid="", netns="", ifname="eth0"):
        bins = [os.path.dirname(self.node.plugin), REFERENCE_PLUGINS]
        r = subprocess.run(
            [self.driver, verb, str(self.conflist), cid, netns, ifname, str(self.cache), *bins],
            capture_output=True,
            text=True,
            timeout=120,
        )
        out = json.loads(r.stdout) if r.stdout.strip() else None
        return r.returncode, out


@pytest.fixture(params=["1.0.0", "0.4.0"])
def lib(request, driver, tmp_path):
    node = CNINode(tmp_path, uuid.uuid4().hex[:5])
    try:
        node.start()
        yield LibCNI(driver, node, tmp_path, request.param)
    finally:
        node.cleanup()


def sysctl(ns, key=SYSCTL):
    return sh("ip", "netns", "exec", ns, "sysctl", "-n", key).stdout.strip()


def test_libcni_add_check_del_chained_with_tuning(lib):
    node = lib.node
    code, caps = lib("validate")
    assert code == 0, caps
    cid, ns, path = node.container()
    code, res = lib("add", cid, path)
    assert code == 0, res
    node.host_links |= {i["name"] for i in res["interfaces"] if "sandbox" not in i}
    # tuning got our result as prevResult and tuned our interface
    assert sysctl(ns) == "1"
    pod_if = next(i for i in res["interfaces"] if i.get("sandbox") == path)
    assert pod_if["name"] == "eth0"
    (ip,) = res["ips"]
    assert ip["address"].startswith("192.168.60.") and ip["gateway"] == "192.168.60.1"
    (a,) = node.api("GET", "/v1/attachments")
    assert (a["container_id"], a["k8s_namespace"], a["k8s_pod"]) == (cid, "ims", "cscf-0")
    assert a["mac"] == pod_if["mac"]
    # libcni cached the chain's result: CHECK hands it to both plugins
    assert lib("cached", cid, path)[1]["ips"] == res["ips"]
    code, out = lib("check", cid, path)
    assert code == 0, out
    # tuning's part changed: tuning's CHECK fails
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"{SYSCTL}=0")
    assert lib("check", cid, path)[0] != 0
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"{SYSCTL}=1")
    # our part changed: our CHECK fails with our code
    sh("ip", "-n", ns, "addr", "flush", "dev", "eth0")
    code, out = lib("check", cid, path)
    assert code != 0 and out["code"] == 102 and ip["address"] in out["msg"], out
    # DEL, twice: both succeed, nothing is left
    assert lib("del", cid, path) == (0, None)
    assert lib("del", cid, path) == (0, None)
    assert node.api("GET", "/v1/attachments") == []
    assert not os.path.exists(f"/sys/class/net/{a['host_ifname']}")
    assert not any(lib.cache.rglob(f"*{cid}*"))


def test_libcni_add_twice_and_service_down(lib):
    node = lib.node
    cid, ns, path = node.container()
    code, res = lib("add", cid, path)
    assert code == 0, res
    node.host_links |= {i["name"] for i in res["interfaces"] if "sandbox" not in i}
    code, out = lib("add", cid, path)
    assert code != 0 and out["code"] == 100, out
    node.stop()
    code, out = lib("del", cid, path)
    assert code != 0 and out["code"] == 11, out
    node.start()
    assert lib("del", cid, path) == (0, None)
    assert node.api("GET", "/v1/attachments") == []
