"""Pod interfaces in real network namespaces (root): attach, check, detach,
nothing left behind. Every namespace is made by the test and removed after;
no traffic leaves them."""

import json
import os
import shutil
import subprocess
import time
import uuid

import pytest

from dataplane.errors import AlreadyExists, ConfigError
from dataplane.podnet import attach_plane, detach_plane, find_plane
from dataplane.podspec import host_ifname

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]


def ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def ip_json(*args):
    out = ip("-j", *args).stdout
    return json.loads(out) if out.strip() else []


def root_links():
    return {link["ifname"] for link in ip_json("link", "show")}


def wait_gone(name, timeout=30.0):
    """Deleting a veth is synchronous, a namespace's end is not always (the
    kernel tears namespaces down in one queue, which the other lane's
    tests fill too)."""
    end = time.time() + timeout
    while name in root_links() and time.time() < end:
        time.sleep(0.05)
    return name not in root_links()


def links_into(ns):
    """The host's interfaces whose veth peer is in namespace ``ns``: what
    a pod plane made there leaves on the host. (Not every new host link:
    tests of other files, run beside these, make pods' veths of their own.)"""
    root = {link["ifindex"]: link["ifname"] for link in ip_json("link", "show")}
    return {
        root[link["link_index"]]
        for link in ip_json("-n", ns, "link", "show")
        if "link_netnsid" in link and link.get("link_index") in root
    }


@pytest.fixture
def netns():
    name = f"dptest-{uuid.uuid4().hex[:8]}"
    ip("netns", "add", name)
    try:
        yield name
    finally:
        # whatever a failed test left: veths whose other end is in the namespace
        for ifname in links_into(name):
            ip("link", "del", ifname, check=False)
        ip("netns", "del", name, check=False)


@pytest.fixture
def pod():
    return f"pod-{uuid.uuid4().hex[:6]}"


def ns_links(ns):
    return {link["ifname"]: link for link in ip_json("-n", ns, "link", "show")}


def ns_addrs(ns, ifname):
    [entry] = ip_json("-n", ns, "-4", "addr", "show", "dev", ifname)
    return [f"{a['local']}/{a['prefixlen']}" for a in entry["addr_info"]]


def ns_routes(ns):
    return [(r["dst"], r.get("gateway"), r["dev"]) for r in ip_json("-n", ns, "-4", "route")]


def test_attach_two_planes_then_detach(netns, pod):
    path = f"/var/run/netns/{netns}"
    h_std, h_media = host_ifname(pod, "std"), host_ifname(pod, "media")
    r1 = attach_plane(
        pod,
        path,
        "eth0",
        h_std,
        "02:00:00:aa:00:07",
        "192.168.10.7/24",
        "192.168.10.1",
        1450,
        True,
        plane="std",
    )
    r2 = attach_plane(
        pod,
        path,
        "media",
        h_media,
        "02:00:00:aa:00:08",
        "192.168.30.7/24",
        None,
        1400,
        False,
        plane="media",
        offloads=False,
    )
    assert r1.host_ifname == h_std and r2.host_ifname == h_media
    h_std_mac, h_media_mac = r1[1], r2.host_mac
    assert len(h_std_mac.split(":")) == 6

    links = ns_links(netns)
    assert set(links) == {"lo", "eth0", "media"}
    assert links["eth0"]["address"] == "02:00:00:aa:00:07"
    assert links["media"]["address"] == "02:00:00:aa:00:08"
    assert links["eth0"]["mtu"] == 1450 and links["media"]["mtu"] == 1400
    assert "UP" in links["eth0"]["flags"] and "UP" in links["media"]["flags"]
    assert ns_addrs(netns, "eth0") == ["192.168.10.7/24"]
    assert ns_addrs(netns, "media") == ["192.168.30.7/24"]
    assert sorted(ns_routes(netns), key=str) == sorted(
        [
            ("default", "192.168.10.1", "eth0"),
            ("192.168.10.0/24", None, "eth0"),
            ("192.168.30.0/24", None, "media"),
        ],
        key=str,
    )

    # host ends: here, up, same MTU, the MAC returned, no IPv6 chatter
    host = {link["ifname"]: link for link in ip_json("link", "show")}
    assert host[h_std]["mtu"] == 1450 and host[h_media]["mtu"] == 1400
    assert host[h_std]["address"] == h_std_mac and host[h_media]["address"] == h_media_mac
    assert "UP" in host[h_std]["flags"]
    if os.path.exists(f"/proc/sys/net/ipv6/conf/{h_std}/disable_ipv6"):
        with open(f"/proc/sys/net/ipv6/conf/{h_std}/disable_ipv6") as f:
            assert f.read().strip() == "1"

    # checksum and segmentation offload stay on on the pod end (the kernel
    # port carries them); off where the caller says its driver cannot
    assert shutil.which("ethtool"), "ethtool missing: scripts/setup.sh installs it"
    for dev, want in (("eth0", "on"), ("media", "off")):
        feats = ip("netns", "exec", netns, "ethtool", "-k", dev).stdout
        for feature in (
            "tx-checksumming",
            "tcp-segmentation-offload",
            "generic-segmentation-offload",
        ):
            line = next(x for x in feats.splitlines() if x.startswith(feature + ":"))
            assert line.split(":")[1].split()[0] == want, (dev, line)

    # found again (as after a restart of the service)
    info = find_plane(h_std, path)
    assert info.kind == "veth" and info.host_mac == h_std_mac and info.up
    assert (info.ifname, info.mac, info.pod_mtu, info.pod_up) == (
        "eth0",
        "02:00:00:aa:00:07",
        1450,
        True,
    )
    assert info.addresses == ["192.168.10.7/24"]
    assert find_plane(h_media).peer_index == links["media"]["ifindex"]

    # detach: nothing left, here or in the pod
    assert detach_plane(h_std) is True
    assert detach_plane(h_media) is True
    assert detach_plane(h_media) is False
    assert find_plane(h_std) is None and find_plane(h_media) is None
    assert wait_gone(h_std) and wait_gone(h_media)
    assert set(ns_links(netns)) == {"lo"}
    assert ns_routes(netns) == []


def test_pid_namespace_path(netns, pod):
    """A namespace given as /proc/PID/ns/net (what a container runtime has)."""
    proc = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "60"])
    try:
        path = f"/proc/{proc.pid}/ns/net"
        end = time.time() + 5
        while os.stat(path).st_ino != os.stat(f"/var/run/netns/{netns}").st_ino:
            assert time.time() < end, "the child did not enter the namespace"
            time.sleep(0.02)
        h = host_ifname(pod, "std")
        attach_plane(
            pod,
            path,
            "eth0",
            h,
            "02:00:00:aa:00:09",
            "10.9.0.9/16",
            "10.9.0.1",
            1450,
            True,
            plane="std",
        )
        assert ns_addrs(netns, "eth0") == ["10.9.0.9/16"]
        assert find_plane(h, path).ifname == "eth0"
        assert detach_plane(h)
        assert set(ns_links(netns)) == {"lo"}
    finally:
        proc.kill()
        proc.wait()


def test_failed_step_is_undone_and_named(netns, pod):
    """Step 5 (default route) fails because the pod has one already: the veth
    made in step 1 is deleted and the error says which step failed. A
    configuration error (the namespace conflicts with the request), not
    "exists already" (which says the plane was made twice)."""
    ip("-n", netns, "link", "add", "other0", "type", "veth", "peer", "name", "other1")
    ip("-n", netns, "addr", "add", "172.16.0.2/24", "dev", "other0")
    ip("-n", netns, "link", "set", "other0", "up")
    ip("-n", netns, "route", "add", "default", "via", "172.16.0.1")
    before_ns = set(ns_links(netns))
    h = host_ifname(pod, "std")
    with pytest.raises(ConfigError) as ei:
        attach_plane(
            pod,
            f"/var/run/netns/{netns}",
            "eth0",
            h,
            "02:00:00:aa:00:0a",
            "192.168.10.7/24",
            "192.168.10.1",
            1450,
            True,
            plane="std",
        )
    msg = str(ei.value)
    assert f"pod {pod} plane std: step 5/5 (add default route via 192.168.10.1)" in msg
    assert f"undone: veth {h} deleted" in msg
    assert wait_gone(h)
    assert not links_into(netns)
    assert set(ns_links(netns)) == before_ns == {"lo", "other0", "other1"}
    assert ns_routes(netns) == [
        ("default", "172.16.0.1", "other0"),
        ("172.16.0.0/24", None, "other0"),
    ]


def test_refusals_leave_nothing(netns, pod):
    path = f"/var/run/netns/{netns}"
    h = host_ifname(pod, "std")
    args = dict(
        mac="02:00:00:aa:00:0b",
        ip_cidr="192.168.10.7/24",
        gateway="192.168.10.1",
        mtu=1450,
        default_route=True,
    )
    with pytest.raises(
        ConfigError,
        match=r"netns: .* is the dataplane's own network "
        r"namespace",
    ):
        attach_plane(pod, "/proc/self/ns/net", "eth0", h, **args)
    with pytest.raises(ConfigError, match=r"netns: cannot open /var/run/netns/nope-"):
        attach_plane(pod, f"/var/run/netns/nope-{uuid.uuid4().hex[:6]}", "eth0", h, **args)
    with pytest.raises(
        ConfigError,
        match=r"netns: /etc/hostname is not a network "
        r"namespace",
    ):
        attach_plane(pod, "/etc/hostname", "eth0", h, **args)
    with pytest.raises(ConfigError, match=r"mac: .*multicast"):
        attach_plane(pod, path, "eth0", h, **dict(args, mac="01:00:00:00:00:01"))
    with pytest.raises(ConfigError, match=r"gateway: 10\.0\.0\.1 is not in"):
        attach_plane(pod, path, "eth0", h, **dict(args, gateway="10.0.0.1"))
    with pytest.raises(ConfigError, match=r"mtu: 20 out of range"):
        attach_plane(pod, path, "eth0", h, **dict(args, mtu=20))
    with pytest.raises(ConfigError, match=r"ifname: 'x{16}' is not a valid"):
        attach_plane(pod, path, "x" * 16, h, **args)
    # the name is taken in the pod, or the host end exists: refused up front
    attach_plane(pod, path, "eth0", h, **args)
    with pytest.raises(AlreadyExists, match=r"interface eth0 exists in the pod's namespace"):
        attach_plane(pod, path, "eth0", host_ifname(pod, "x"), **args)
    with pytest.raises(AlreadyExists, match=rf"host interface {h} exists already"):
        attach_plane(pod, path, "eth1", h, **args)
    assert detach_plane(h)
    assert wait_gone(h)
    # no host end of any of these attaches is left, nor a veth into the pod
    assert not {h, host_ifname(pod, "x")} & root_links()
    assert not links_into(netns)
    assert set(ns_links(netns)) == {"lo"}


def test_detach_refuses_what_is_not_a_veth():
    name = f"dpb{uuid.uuid4().hex[:8]}"
    ip("link", "add", name, "type", "bridge")  # no address, never up
    try:
        with pytest.raises(
            ConfigError,
            match=rf"host_ifname: {name} is a bridge interface, "
            r"not a pod plane's veth",
        ):
            detach_plane(name)
        assert name in root_links()
        assert find_plane(name).kind == "bridge"
    finally:
        ip("link", "del", name, check=False)


def test_namespace_gone_takes_the_pair(pod):
    """A pod that dies takes its veth pair with it: find_plane sees nothing
    and detach is a no-op (what a restart replay must cope with)."""
    name = f"dptest-{uuid.uuid4().hex[:8]}"
    ip("netns", "add", name)
    h = host_ifname(pod, "std")
    try:
        attach_plane(
            pod,
            f"/var/run/netns/{name}",
            "eth0",
            h,
            "02:00:00:aa:00:0c",
            "192.168.10.7/24",
            None,
            1450,
            True,
        )
    finally:
        ip("netns", "del", name, check=False)
    assert wait_gone(h)
    assert find_plane(h) is None
    assert detach_plane(h) is False
