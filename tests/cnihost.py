"""What the CNI tests share: the plugin installed as a runtime finds it (an
executable named ``dataplane-cni`` in a CNI bin directory, running this
checkout's package), and one call of it with the CNI environment."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = "dataplane-cni"


def install_plugin(bin_dir) -> str:
    """``bin_dir/dataplane-cni`` as ``dataplane-cni install`` makes it (run
    by this interpreter, from this checkout). Its path."""
    from dataplane.cni import install

    return install(bin_dir, sys.executable)


def netconf(sock, network="net1", name="std-net", version="1.0.0", **extra) -> dict:
    return {
        "cniVersion": version,
        "name": name,
        "type": PLUGIN,
        "network": network,
        "socket": str(sock),
        **extra,
    }


def run_plugin(plugin, command, conf, container_id=None, netns=None, ifname=None, args=None):
    """(exit code, decoded stdout or None, stderr) of one plugin call."""
    env = {"CNI_COMMAND": command, "CNI_PATH": os.path.dirname(plugin), "PATH": "/usr/bin:/bin"}
    for k, v in (
        ("CNI_CONTAINERID", container_id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_ARGS", args),
    ):
        if v is not None:
            env[k] = v
    data = conf if isinstance(conf, (bytes, str)) else json.dumps(conf)
    r = subprocess.run(
        [plugin],
        input=data.encode() if isinstance(data, str) else data,
        env=env,
        capture_output=True,
        timeout=120,
    )
    out = json.loads(r.stdout) if r.stdout.strip() else None
    return r.returncode, out, r.stderr.decode()
