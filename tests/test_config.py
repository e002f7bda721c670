"""Node configuration: defaults, round trip, and errors that name the field."""

import copy
import os
import re
import subprocess
import sys

import pytest
import yaml

from dataplane import checks
from dataplane.config import DuplicateMacs, load_config, parse_config
from dataplane.errors import ConfigError

BASE = {
    "node": "node1",
    "vtep": {"address": "10.0.0.1/24", "uplink": "eth1"},
    "networks": [
        {
            "name": "net1",
            "vni": 100,
            "plane": "std",
            "subnet": "192.168.10.0/24",
            "gateway": "192.168.10.1",
        },
        {"name": "net2", "vni": 200, "plane": "control", "subnet": "192.168.20.0/24"},
        {"name": "net3", "vni": 300, "plane": "media", "subnet": "192.168.30.0/24", "mtu": 1400},
    ],
}

FULL_YAML = """\
node: node1
mode: hugepages
lcores: [2, 3, 4]
memory_mb: 1024
vtep:
  address: 10.0.0.1/24
  uplink: dpdk:net_tap0,iface=up0
  mac: 02:AA:00:00:00:01
  udp_port: 8472
  gateway: 10.0.0.254
  next_hop_mac: 02:aa:00:00:00:fe
  underlay_mtu: 9000
  learning: true
  duplicate_macs: {moves: 0}        # detection off
  learned_age_s: 60
  tunnel_gso: false
planes:
  std: {priority: 0}
  control: {priority: 5, interface: sig0}
  media: {priority: 7}
networks:
  - {name: net1, vni: 100, plane: std, subnet: 192.168.10.0/24, gateway: 192.168.10.1}
  - {name: net3, vni: 300, plane: media, subnet: 192.168.30.0/24, mtu: 8950}
remotes:
  - {vtep: 10.0.0.2, networks: [net1, net3]}
  - {vtep: 10.0.0.3, networks: [net3]}
state_dir: state
store: {kind: sqlite}
api_socket: run/api.sock
metrics: {listen: "[::1]:9100"}
"""


def cfg(**changes):
    d = copy.deepcopy(BASE)
    d.update(changes)
    return d


def bad(data, pattern):
    with pytest.raises(ConfigError) as ei:
        parse_config(data)
    assert re.search(pattern, str(ei.value)), str(ei.value)
    return str(ei.value)


# ------------------------------------------------------------- good files
def test_defaults():
    c = parse_config({"vtep": {"address": "10.0.0.1/24", "uplink": "eth1"}})
    assert c.mode == "fallback"
    assert c.lcores == [0, 1]
    assert c.node  # the host name
    assert c.vtep.udp_port == 4789 and c.vtep.underlay_mtu == 1500
    assert c.vtep.mac is None and c.vtep.gateway is None and c.vtep.learning is False
    assert c.vtep.tunnel_gso is True
    assert c.vtep.uplink_kind == "kernel" and c.vtep.uplink_ifname == "eth1"
    assert set(c.planes) == {"std", "control", "media", "oam"}
    assert c.planes["std"].interface == "eth0"
    assert c.planes["media"].interface == "media"
    assert c.planes["media"].priority > c.planes["std"].priority
    assert c.networks == [] and c.remotes == []
    assert c.state_dir == "/var/lib/dataplane"
    assert c.store.kind == "sqlite" and c.store.path == "/var/lib/dataplane/state.db"
    assert c.api_socket == "/run/dataplane/api.sock"
    assert c.metrics.listen == "127.0.0.1:9464"
    assert (c.metrics.host, c.metrics.port) == ("127.0.0.1", 9464)


def test_network_mtu_default_is_underlay_minus_50():
    c = parse_config(BASE)
    assert c.network("net1").mtu == 1450
    assert c.network("net3").mtu == 1400
    assert c.network("nope") is None


def test_full_file(tmp_path):
    p = tmp_path / "node.yaml"
    p.write_text(FULL_YAML)
    c = load_config(p)
    assert c.mode == "hugepages" and c.lcores == [2, 3, 4] and c.memory_mb == 1024
    v = c.vtep
    assert v.uplink_kind == "dpdk" and v.uplink_devargs == "net_tap0,iface=up0"
    assert v.uplink_ifname is None and v.uplink_pci is None
    assert v.mac == "02:aa:00:00:00:01"  # normalised
    assert v.ip == "10.0.0.1" and v.gateway == "10.0.0.254"
    assert v.udp_port == 8472 and v.underlay_mtu == 9000 and v.learning is True
    assert v.tunnel_gso is False
    assert v.duplicate_macs == DuplicateMacs(moves=0, window_s=180, freeze_s=180)
    assert v.learned_age_s == 60
    assert list(c.planes) == ["std", "control", "media"]
    assert c.planes["control"].interface == "sig0"
    assert c.plane_id("media") == 7
    assert c.network("net1").mtu == 8950
    assert c.flood_lists() == {"net1": ["10.0.0.2"], "net3": ["10.0.0.2", "10.0.0.3"]}
    # relative paths are taken from the file's directory
    assert c.state_dir == str(tmp_path / "state")
    assert c.store.path == str(tmp_path / "state" / "state.db")
    assert c.api_socket == str(tmp_path / "run" / "api.sock")
    assert (c.metrics.host, c.metrics.port) == ("::1", 9100)
    assert c.engine_kwargs() == {
        "mode": "hugepages",
        "lcores": [2, 3, 4],
        "memory_mb": 1024,
        "pci": [],
    }


def test_round_trip(tmp_path):
    p = tmp_path / "node.yaml"
    p.write_text(FULL_YAML)
    c = load_config(p)
    d = c.to_dict()
    assert parse_config(d) == c
    assert parse_config(parse_config(BASE).to_dict()) == parse_config(BASE)


def test_pci_uplink():
    c = parse_config(cfg(vtep={"address": "10.0.0.1/24", "uplink": "dpdk:0000:03:00.0"}))
    assert c.vtep.uplink_pci == "0000:03:00.0"
    assert c.engine_kwargs()["pci"] == ["0000:03:00.0"]


def test_metrics_can_be_off():
    c = parse_config(cfg(metrics={"listen": None}))
    assert c.metrics.listen is None and c.metrics.port is None


# ------------------------------------------------------------- bad input
def test_unknown_keys_name_the_path():
    d = cfg()
    d["networks"][1]["vnii"] = 5
    msg = bad(d, r"^networks\[1\]\.vnii: unknown key")
    assert "did you mean 'vni'" in msg
    bad(cfg(vtepp={}), r"^vtepp: unknown key")
    bad(
        cfg(vtep={"address": "10.0.0.1/24", "uplink": "eth1", "port": 1}),
        r"^vtep\.port: unknown key",
    )
    bad(cfg(planes={"std": {"prio": 1}}), r"^planes\.std\.prio: unknown key")
    bad(cfg(store={"type": "sqlite"}), r"^store\.type: unknown key")
    bad(cfg(metrics={"address": "x"}), r"^metrics\.address: unknown key")


@pytest.mark.parametrize(
    "vni, pattern",
    [
        (16777216, r"^networks\[2\]\.vni: 16777216 out of range 1\.\.16777215$"),
        (0, r"^networks\[2\]\.vni: 0 out of range"),
        ("300", r"^networks\[2\]\.vni: '300' is not an integer"),
        (True, r"^networks\[2\]\.vni: true is not an integer"),
        (100, r"^networks\[2\]\.vni: 100 is the VNI of networks\[0\] already"),
    ],
)
def test_vni(vni, pattern):
    d = cfg()
    d["networks"][2]["vni"] = vni
    bad(d, pattern)


def test_network_errors():
    def net(i=0, **kw):
        d = cfg()
        d["networks"][i].update(kw)
        return d

    bad(net(1, name="net1"), r"^networks\[1\]\.name: 'net1' is used by networks\[0\]")
    bad(net(name="a b"), r"^networks\[0\]\.name: 'a b' is not a valid network name")
    bad(net(plane="voice"), r"^networks\[0\]\.plane: 'voice' is not a plane")
    bad(net(plane=["std"]), r"^networks\[0\]\.plane: \['std'\] is not a plane name \(known: ")
    bad(net(subnet="224.0.0.0/24"), r"^networks\[0\]\.subnet: 224\.0\.0\.0/24 is multicast")
    bad(net(subnet="127.0.0.0/24"), r"^networks\[0\]\.subnet: 127\.0\.0\.0/24 is loopback")
    bad(net(subnet="0.0.0.0/0"), r"^networks\[0\]\.subnet: 0\.0\.0\.0/0 is all of IPv4")
    bad(net(subnet="192.168.10.1/24"), r"^networks\[0\]\.subnet: .*host bits")
    bad(net(subnet="192.168.10.0"), r"^networks\[0\]\.subnet: .*not an IPv4 subnet")
    bad(net(subnet="192.168.10.0/31"), r"^networks\[0\]\.subnet: .*too small")
    bad(
        net(gateway="192.168.11.1"),
        r"^networks\[0\]\.gateway: 192\.168\.11\.1 is not in "
        r"subnet 192\.168\.10\.0/24",
    )
    bad(net(gateway="192.168.10.255"), r"^networks\[0\]\.gateway: .*broadcast")
    bad(net(gateway="x"), r"^networks\[0\]\.gateway: 'x' is not an IPv4 address")
    bad(net(mtu=1451), r"^networks\[0\]\.mtu: 1451 out of range 68\.\.1450")
    d = cfg()
    del d["networks"][0]["subnet"]
    bad(d, r"^networks\[0\]\.subnet: is required")
    bad(cfg(networks={"net1": {}}), r"^networks: must be a list")


def test_dual_stack_network():
    """subnet6: a pod's IPv6 address is its IPv4 host part there; the
    gateway6 may not be a pod's."""

    def net(**kw):
        d = cfg()
        d["networks"][0].update(kw)  # 192.168.10.0/24, gateway 192.168.10.1
        return d

    n = parse_config(net(subnet6="FD00:10:0::/64", gateway6="fd00:10::1")).networks[0]
    assert (n.subnet6, n.gateway6, n.prefixlen6) == ("fd00:10::/64", "fd00:10::1", 64)
    assert n.ip6_of("192.168.10.7") == "fd00:10::7" and n.ip6_of("192.168.10.254") == "fd00:10::fe"
    # a gateway6 past the pods' addresses; none at all; the smallest subnet6
    assert parse_config(net(subnet6="fd00:10::/64", gateway6="fd00:10::ff")).networks[0].gateway6
    n = parse_config(net(subnet6="fd00:10::/120")).networks[0]
    assert n.gateway6 is None and n.ip6_of("192.168.10.9") == "fd00:10::9"
    assert parse_config(cfg()).networks[0].ip6_of("192.168.10.7") is None
    bad(
        net(subnet6="fd00:10::/121"),
        r"^networks\[0\]\.subnet6: fd00:10::/121 is too small for subnet 192\.168\.10\.0/24: .* "
        r"\(a prefix of /120 or shorter",
    )
    bad(net(subnet6="fd00:10::1/64"), r"^networks\[0\]\.subnet6: .*host bits")
    bad(
        net(subnet6="10.0.0.0/8"), r"^networks\[0\]\.subnet6: '10\.0\.0\.0/8' is not an IPv6 subnet"
    )
    bad(net(subnet6="fe80::/64"), r"^networks\[0\]\.subnet6: fe80::/64 is link-local")
    bad(net(subnet6="ff05::/64"), r"^networks\[0\]\.subnet6: ff05::/64 is multicast")
    bad(net(subnet6="::/0"), r"^networks\[0\]\.subnet6: ::/0 is all of IPv6")
    bad(net(gateway6="fd00:10::1"), r"^networks\[0\]\.gateway6: needs subnet6")
    bad(
        net(subnet6="fd00:10::/64", gateway6="fd00:11::1"),
        r"^networks\[0\]\.gateway6: fd00:11::1 is not in subnet6 fd00:10::/64",
    )
    bad(
        net(subnet6="fd00:10::/64", gateway6="fd00:10::5"),
        r"^networks\[0\]\.gateway6: fd00:10::5 is the IPv6 address of the pod with "
        r"192\.168\.10\.5: use fd00:10::1, the counterpart of gateway 192\.168\.10\.1, or an "
        r"address from fd00:10::ff on",
    )
    bad(net(subnet6="fd00:10::/64", gateway6="fd00:10::"), r"subnet-router anycast")
    bad(net(subnet6="fd00:10::/64", gateway6="fd00:10::1/64"), r"is not an IPv6 address")
    bad(net(subnet6="fd00:10::/64", gateway6="fd00:10::1%eth0"), r"is not an IPv6 address")
    # (Python 3.13 writes the IPv4-mapped prefix ::ffff:0.0.0.0)
    bad(
        net(subnet6="::ffff:0:0/96"),
        r"^networks\[0\]\.subnet6: ::ffff:0(:0|\.0\.0\.0)/96 is reserved",
    )
    bad(
        net(subnet6="fd00:10::/64", mtu=1200),
        r"^networks\[0\]\.subnet6: the network's mtu 1200 is below IPv6's minimum of 1280",
    )
    assert parse_config(net(subnet6="fd00:10::/64", mtu=1280)).networks[0].mtu == 1280


def test_vtep_errors():
    def vtep(**kw):
        return cfg(vtep=dict({"address": "10.0.0.1/24", "uplink": "eth1"}, **kw))

    bad({"node": "n"}, r"^vtep: is required")
    bad(
        vtep(address="10.0.0.1"),
        r"^vtep\.address: '10\.0\.0\.1' is not an IPv4 address "
        r"with prefix length",
    )
    bad(vtep(address="10.0.0.300/24"), r"^vtep\.address: ")
    bad(vtep(address="10.0.0.0/24"), r"^vtep\.address: .*cannot be a VTEP address")
    bad(vtep(address="10.0.0.1/0"), r"^vtep\.address: '10\.0\.0\.1/0': a /0 puts all of IPv4")
    for gw in ("10.0.0.0", "10.0.0.255"):
        bad(vtep(gateway=gw), rf"^vtep\.gateway: {gw} is the network or broadcast address")
    bad(vtep(uplink="a-very-long-interface"), r"^vtep\.uplink: .*longer than 15")
    bad(vtep(uplink="dpdk:"), r"^vtep\.uplink: 'dpdk:': give a DPDK device string")
    bad(vtep(mac="02:00:00:00:00"), r"^vtep\.mac: .*not a MAC address")
    bad(vtep(mac="01:00:5e:00:00:01"), r"^vtep\.mac: .*multicast")
    bad(vtep(udp_port=70000), r"^vtep\.udp_port: 70000 out of range 1\.\.65535")
    bad(
        vtep(gateway="10.0.1.1"),
        r"^vtep\.gateway: 10\.0\.1\.1 is not in the VTEP's "
        r"subnet 10\.0\.0\.0/24",
    )
    bad(vtep(gateway="10.0.0.1"), r"^vtep\.gateway: .*own address")
    bad(vtep(next_hop_mac="zz:00:00:00:00:00"), r"^vtep\.next_hop_mac: ")
    bad(vtep(underlay_mtu=100), r"^vtep\.underlay_mtu: 100 out of range 576\.\.9216")
    bad(vtep(learning="yes"), r"^vtep\.learning: 'yes' is not true or false")
    bad(vtep(tunnel_gso="off"), r"^vtep\.tunnel_gso: 'off' is not true or false")
    bad(
        vtep(duplicate_macs={"moves": 3}),
        r"^vtep\.duplicate_macs: applies to MACs learned from the underlay: set "
        r"vtep\.learning: true",
    )
    bad(vtep(learning=True, duplicate_macs={"moves": 1}), r"^vtep\.duplicate_macs\.moves: 1 would")
    bad(
        vtep(learning=True, duplicate_macs={"moves": 3, "window": 60}),
        r"^vtep\.duplicate_macs\.window: unknown key .*window_s",
    )
    bad(
        vtep(learning=True, duplicate_macs={"freeze_s": 0}),
        r"^vtep\.duplicate_macs\.freeze_s: 0 out of range 1\.\.86400",
    )
    bad(vtep(learning=True, duplicate_macs=5), r"^vtep\.duplicate_macs: must be a mapping")
    bad(
        vtep(learned_age_s=60),
        r"^vtep\.learned_age_s: applies to MACs learned from the underlay: set "
        r"vtep\.learning: true",
    )
    bad(vtep(learning=True, learned_age_s=0), r"^vtep\.learned_age_s: 0 out of range 1\.\.86400")
    bad(vtep(learning=True, learned_age_s="5m"), r"^vtep\.learned_age_s: ")


def test_top_level_errors():
    bad(cfg(mode="turbo"), r"^mode: 'turbo' is not one of hugepages, fallback")
    bad(cfg(lcores=[0]), r"^lcores: needs at least two")
    bad(cfg(lcores=[0, 1, 1]), r"^lcores\[2\]: CPU 1 is listed twice")
    bad(cfg(lcores=[0, -1]), r"^lcores\[1\]: -1 is not a CPU number \(0\.\.127\)")
    bad(cfg(lcores=[0, 70000]), r"^lcores\[1\]: CPU 70000: DPDK takes CPUs 0\.\.127")
    bad(cfg(lcores="0,1"), r"^lcores: '0,1' is not a list")
    bad(cfg(lcores=list(range(checks.MAX_WORKERS + 2))), r"^lcores: at most")
    bad(cfg(memory_mb=10), r"^memory_mb: 10 out of range")
    bad(cfg(node=""), r"^node: '' is not a non-empty string")
    # YAML's booleans: `node: no`, `uplink: on`
    bad(cfg(node=False), r"^node: false is not a non-empty string \(YAML reads no, off or false")
    bad(cfg(node=True), r"^node: true is not a .* \(YAML reads yes, on or true unquoted as true")
    bad(
        cfg(store={"kind": "consul"}),
        r"^store\.kind: 'consul' is not supported "
        r"\(supported: sqlite, etcd\)",
    )
    bad(cfg(metrics={"listen": "9464"}), r"^metrics\.listen: '9464' is not host:port")
    bad(
        cfg(metrics={"listen": 9464}),
        r"^metrics\.listen: 9464 is not host:port: write it as '127\.0\.0\.1:9464'",
    )
    bad(cfg(metrics={"listen": "::1:9464"}), r"^metrics\.listen: .*brackets")
    bad(cfg(metrics={"listen": "127.0.0.1:99999"}), r"^metrics\.listen: port '99999'")
    bad(cfg(metrics={"listen": "127.0.0.1:"}), r"^metrics\.listen: '127\.0\.0\.1:' has no port")
    bad(cfg(metrics={"listen": "127.0.0.1:0"}), r"^metrics\.listen: port '0' out of range 1\.\.")
    # digits of another script are digits to str.isdigit, not a port
    bad(cfg(metrics={"listen": "127.0.0.1:\u0663\u0663"}), r"^metrics\.listen: port '.*' out of")
    bad(cfg(api_socket="/" + "x" * 120), r"^api_socket: .*longer than 107 bytes")
    bad([1, 2], r"^configuration: must be a mapping, not list")


def test_paths_that_would_lose_a_file(tmp_path):
    """The service replaces what is at api_socket when it starts (a dead
    run's socket): a file or directory there is refused, never deleted, and
    so is a store file at the same path; a store path that is a directory
    is named as such."""
    state = tmp_path / "state.db"
    state.write_text("x")
    for there, what in ((state, "a file, not a socket"), (tmp_path, "a directory")):
        bad(
            cfg(api_socket=str(there)),
            rf"^api_socket: {re.escape(str(there))} exists and is {what}: the service replaces",
        )
    assert state.read_text() == "x"
    sock = str(tmp_path / "x.sock")
    bad(
        cfg(api_socket=sock, store={"kind": "sqlite", "path": sock}),
        rf"^api_socket: {re.escape(sock)} is store\.path too",
    )
    bad(cfg(store={"kind": "sqlite", "path": str(tmp_path)}), r"^store\.path: .* is a directory")
    # a socket there (a killed run's) is the service's to replace
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.bind(sock)
        assert parse_config(cfg(api_socket=sock)).api_socket == sock


def test_a_file_nested_too_deeply(tmp_path):
    p = tmp_path / "deep.yaml"
    p.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml: invalid YAML: nested too deeply$"):
        load_config(p)


def test_store_etcd():
    c = parse_config(
        cfg(
            store={
                "kind": "etcd",
                "endpoints": ["http://127.0.0.1:2379", "https://etcd2.example:2379/"],
            }
        )
    )
    assert c.store.kind == "etcd"
    assert c.store.endpoints == ("http://127.0.0.1:2379", "https://etcd2.example:2379")
    assert c.store.prefix == "/dataplane"
    assert c.to_dict()["store"] == {
        "kind": "etcd",
        "prefix": "/dataplane",
        "endpoints": ["http://127.0.0.1:2379", "https://etcd2.example:2379"],
    }
    assert parse_config(c.to_dict()) == c  # round trip
    c = parse_config(
        cfg(store={"kind": "etcd", "endpoints": "http://[::1]:2379", "prefix": "/clusters/a/"})
    )
    assert c.store.endpoints == ("http://[::1]:2379",) and c.store.prefix == "/clusters/a"
    # the sqlite store's dict has no etcd keys, and round-trips too
    assert parse_config(BASE).to_dict()["store"] == {
        "kind": "sqlite",
        "path": "/var/lib/dataplane/state.db",
    }


def test_store_etcd_errors():
    def etcd(**kw):
        return cfg(store=dict({"kind": "etcd"}, **kw))

    bad(etcd(), r"^store\.endpoints: is required for kind etcd")
    bad(etcd(endpoints=[]), r"^store\.endpoints: \[\] is not a non-empty list of URLs")
    bad(
        etcd(endpoints=["127.0.0.1:2379"]),
        r"^store\.endpoints\[0\]: '127\.0\.0\.1:2379' is not a URL",
    )
    bad(etcd(endpoints=["http://a:2379", 5]), r"^store\.endpoints\[1\]: 5 is not a URL")
    bad(etcd(endpoints=["unix://x:1"]), r"^store\.endpoints\[0\]: .*scheme 'unix'")
    bad(etcd(endpoints=["http://a"]), r"^store\.endpoints\[0\]: 'http://a' has no port")
    bad(
        etcd(endpoints=["http://[::1:2379"]),
        r"^store\.endpoints\[0\]: 'http://\[::1:2379' is not a URL: Invalid IPv6 URL",
    )
    bad(etcd(endpoints=["http://h :2379"]), r"^store\.endpoints\[0\]: .*the host 'h ' has white")
    bad(etcd(endpoints=["http://a:99999"]), r"^store\.endpoints\[0\]: .*port is not")
    bad(etcd(endpoints=["http://a:2379/v3"]), r"^store\.endpoints\[0\]: .*only scheme")
    bad(
        etcd(endpoints=["http://a:2379", "http://a:2379/"]),
        r"^store\.endpoints\[1\]: 'http://a:2379' is listed in store\.endpoints\[0\]",
    )
    bad(
        etcd(endpoints=["http://a:2379"], prefix="dataplane"),
        r"^store\.prefix: 'dataplane' does not start with '/'",
    )
    bad(etcd(endpoints=["http://a:2379"], prefix="/"), r"^store\.prefix: '/' alone")
    bad(etcd(endpoints=["http://a:2379"], prefix="/a b"), r"^store\.prefix: .*white space")
    bad(etcd(endpoints=["http://a:2379"], prefix=7), r"^store\.prefix: 7 is not")
    bad(etcd(endpoints=["http://a:2379"], path="/x.db"), r"^store\.path: is for kind sqlite")
    bad(cfg(store={"endpoints": ["http://a:2379"]}), r"^store\.endpoints: is for kind etcd")
    bad(cfg(store={"kind": "sqlite", "prefix": "/x"}), r"^store\.prefix: is for kind etcd")
    bad(
        etcd(endpoints=["http://a:2379"], endpoint="x"),
        r"^store\.endpoint: unknown key \(did you mean 'endpoints'\?\)",
    )


def test_plane_errors():
    bad(cfg(planes={"control": {}}), r"^planes: the std plane is required")
    bad(cfg(planes={"std": {}, "voice": {}}), r"^planes\.voice\.priority: is required")
    bad(
        cfg(planes={"std": {"priority": 1}, "media": {"priority": 1}}),
        r"^planes\.media\.priority: 1 is the priority of plane std already",
    )
    bad(cfg(planes={"std": {"priority": 8}}), r"^planes\.std\.priority: 8 out of range 0\.\.7")
    bad(
        cfg(planes={"std": {}, "media": {"interface": "eth0"}}),
        r"^planes\.media\.interface: 'eth0' is the interface of plane std already",
    )
    bad(
        cfg(planes={"std": {}, "Media": {"priority": 3}}),
        r"^planes\.Media: 'Media' is not a valid plane name",
    )
    bad(cfg(planes={"std": {"interface": "a/b"}}), r"^planes\.std\.interface: ")
    bad(cfg(planes={}), r"^planes: must be a non-empty mapping")
    bad(cfg(planes={"std": {"interface": "lo"}}), r"^planes\.std\.interface: 'lo' is the")
    # queues that could hold most of the core's pool: the higher planes'
    # frames would find no mbuf to be received in
    four = {p: {"queue_len": 2048} for p in ("std", "control", "media", "oam")}
    assert sum(pl.queue_len for pl in parse_config(cfg(planes=four)).planes.values()) == 8192
    four["std"]["queue_len"] = 4096
    bad(
        cfg(planes=four),
        r"^planes: their queue_len add up to 10240 frames, more than half the core's pool of "
        r"16383 mbufs .* keep the sum at 8192 or less$",
    )
    bad(cfg(planes={"std": {"queue_len": 16384}}), r"^planes: their queue_len add up to 16384 ")
    # af_xdp's larger pool is its ports' fill rings': the same limit
    big = cfg(planes=four, kernel_driver="af_xdp", memory_mb=1024)
    bad(big, r"^planes: their queue_len add up to 10240 frames, more than half the core's pool")


def test_plane_rx_queue():
    up = {"address": "10.0.0.1/24", "uplink": "dpdk:net_tap0,iface=up0", "uplink_rx_queues": 2}
    c = parse_config(
        cfg(
            lcores=[0, 1, 2],
            vtep=up,
            planes={"std": {}, "control": {}, "media": {"worker": 2, "rx_queue": 1}},
        )
    )
    assert c.vtep.uplink_rx_queues == 2
    assert c.planes["media"].rx_queue == 1 and c.planes["media"].worker == 2
    assert c.planes["std"].rx_queue is None


def test_plane_rx_queue_errors():
    up = {"address": "10.0.0.1/24", "uplink": "dpdk:net_tap0,iface=up0", "uplink_rx_queues": 2}
    bad(
        cfg(lcores=[0, 1, 2], vtep=up, planes={"std": {}, "media": {"rx_queue": 1}}),
        r"^planes\.media\.rx_queue: needs the plane's own worker",
    )
    bad(
        cfg(lcores=[0, 1, 2], vtep=up, planes={"std": {}, "media": {"worker": 2, "rx_queue": 2}}),
        r"^planes\.media\.rx_queue: 2 out of range 1\.\.1: the uplink has 2 rx queue\(s\)",
    )
    bad(
        cfg(lcores=[0, 1, 2], vtep=up, planes={"std": {}, "media": {"worker": 2, "rx_queue": 0}}),
        r"^planes\.media\.rx_queue: 0 out of range 1\.\.1: the uplink has 2",
    )
    bad(
        cfg(
            lcores=[0, 1, 2],
            vtep=dict(up, uplink_rx_queues=1),
            planes={"std": {}, "media": {"worker": 2, "rx_queue": 1}},
        ),
        r"^planes\.media\.rx_queue: 1 refused: the uplink has 1 rx queue\(s\)",
    )
    bad(
        cfg(lcores=[0, 1, 2], vtep=up, planes={"std": {}, "media": {"worker": 2, "rx_queue": "x"}}),
        r"^planes\.media\.rx_queue: ",
    )
    bad(
        cfg(
            lcores=[0, 1, 2],
            vtep=dict(up, uplink_rx_queues=3),
            planes={
                "std": {},
                "media": {"worker": 2, "rx_queue": 1},
                "control": {"worker": 1, "rx_queue": 1},
            },
        ),
        r"^planes\.control\.rx_queue: 1 is the rx queue of plane media already",
    )
    bad(
        cfg(vtep={"address": "10.0.0.1/24", "uplink": "eth1", "uplink_rx_queues": 2}),
        r"^vtep\.uplink_rx_queues: a kernel-interface uplink .* has one rx queue",
    )
    bad(cfg(vtep=dict(up, uplink_rx_queues=9)), r"^vtep\.uplink_rx_queues: 9 out of range 1\.\.8")


def test_network_on_a_plane_not_configured():
    d = cfg(planes={"std": {}, "media": {}})
    bad(
        d,
        r"^networks\[1\]\.plane: 'control' is not a plane \(known: std, media\); `planes:` "
        r"lists every plane of the node: add control there too$",
    )


def test_remote_errors():
    def rem(*items):
        return cfg(remotes=list(items))

    bad(
        rem({"vtep": "10.0.0.2", "networks": ["net9"]}),
        r"^remotes\[0\]\.networks\[0\]: 'net9' is not a network",
    )
    bad(
        rem({"vtep": "10.0.0.2", "networks": []}),
        r"^remotes\[0\]\.networks: must be a "
        r"non-empty list",
    )
    bad(rem({"vtep": "10.0.0.1", "networks": ["net1"]}), r"^remotes\[0\]\.vtep: .*own VTEP")
    bad(
        rem({"vtep": "10.0.0.2", "networks": ["net1"]}, {"vtep": "10.0.0.2", "networks": ["net2"]}),
        r"^remotes\[1\]\.vtep: 10\.0\.0\.2 is listed in remotes\[0\] already",
    )
    bad(
        rem({"vtep": "10.0.0.2", "networks": ["net1", "net1"]}),
        r"^remotes\[0\]\.networks\[1\]: 'net1' is listed twice",
    )
    bad(rem({"vtep": "host", "networks": ["net1"]}), r"^remotes\[0\]\.vtep: 'host' is not")
    bad(rem({"vtep": "10.0.0.2", "network": ["net1"]}), r"^remotes\[0\]\.network: unknown")
    # addresses no VTEP can have, seen from this one (10.0.0.1/24)
    bad(
        rem({"vtep": "10.0.0.255", "networks": ["net1"]}),
        r"^remotes\[0\]\.vtep: 10\.0\.0\.255 is the broadcast address of the underlay "
        r"subnet 10\.0\.0\.0/24$",
    )
    bad(rem({"vtep": "10.0.0.0", "networks": ["net1"]}), r"network address of the underlay")
    for ip in ("255.255.255.255", "240.0.0.7", "224.0.0.5", "127.0.0.9", "0.1.2.3"):
        bad(rem({"vtep": ip, "networks": ["net1"]}), rf"^remotes\[0\]\.vtep: {ip} cannot be a VTEP")
    off = rem({"vtep": "10.8.0.5", "networks": ["net1"]})
    bad(
        off,
        r"^remotes\[0\]\.vtep: 10\.8\.0\.5 is outside the underlay subnet 10\.0\.0\.0/24 "
        r"and neither vtep.gateway nor vtep.next_hop_mac is set",
    )
    # off the subnet through a gateway (a routed underlay): fine
    off["vtep"] = {**off["vtep"], "gateway": "10.0.0.254"}
    assert parse_config(off).remotes[0].vtep == "10.8.0.5"


# ------------------------------------------------------------- files
def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read the configuration"):
        load_config(tmp_path / "missing.yaml")
    p = tmp_path / "empty.yaml"
    p.write_text("")
    with pytest.raises(ConfigError, match=r"empty"):
        load_config(p)
    p.write_text("vtep: {address: 10.0.0.1/24\nnode: [\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+: invalid YAML"):
        load_config(p)
    # a '}' missing: noticed on the next line, and where the mapping began said
    p.write_text("node: n\nnetworks:\n  - {name: a, vni: 1\n  - {name: b}\n")
    with pytest.raises(
        ConfigError, match=r"line 4, column 5: .*\(a flow mapping begun at line 3, column 5\)"
    ):
        load_config(p)
    p.write_text("node: a\nnode: b\nvtep: {address: 10.0.0.1/24, uplink: eth1}\n")
    with pytest.raises(ConfigError, match=r"line 2, column 1: .*'node' is given twice"):
        load_config(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"^configuration: must be a mapping"):
        load_config(p)
    # YAML 1.1's octal: a VNI 0100 would silently be 64
    base = "node: n\nvtep: {address: 10.0.0.1/24, uplink: eth1, mac: MAC}\nnetworks:\n"
    p.write_text(base.replace("MAC", "02:00:00:00:00:01") + "  - {name: a, vni: 0100}\n")
    with pytest.raises(
        ConfigError,
        match=r"line 4, column 20: invalid YAML: 0100 has a leading 0, so YAML reads it as the "
        r"octal number 64: write it without the 0",
    ):
        load_config(p)
    # base 60: an unquoted MAC of digits stays the MAC, a time-like VNI is no number
    p.write_text(
        base.replace("MAC", "52:54:00:12:34:56")
        + "  - {name: a, vni: 100, plane: std, subnet: 10.1.0.0/24}\n"
    )
    assert load_config(p).vtep.mac == "52:54:00:12:34:56"
    p.write_text(
        base.replace("MAC", "02:00:00:00:00:01")
        + "  - {name: a, vni: 1:40, plane: std, subnet: 10.1.0.0/24}\n"
    )
    with pytest.raises(ConfigError, match=r"networks\[0\]\.vni: '1:40' is not an integer"):
        load_config(p)
    # a merge key's values given again in the mapping: theirs, not a duplicate
    p.write_text(
        base.replace("MAC", "02:00:00:00:00:01")
        + "  - &n {name: a, vni: 100, plane: std, subnet: 10.1.0.0/24}\n"
        "  - <<: *n\n    name: b\n    vni: 200\n    subnet: 10.2.0.0/24\n"
    )
    assert [(n.name, n.vni, n.plane) for n in load_config(p).networks] == [
        ("a", 100, "std"),
        ("b", 200, "std"),
    ]
    p.write_text(base + "  - <<: {name: a}\n    vni: 1\n    vni: 2\n")
    with pytest.raises(ConfigError, match=r"'vni' is given twice"):
        load_config(p)


def test_bad_file_has_no_side_effects(tmp_path):
    p = tmp_path / "node.yaml"
    p.write_text(FULL_YAML.replace("vni: 300", "vni: 16777216"))
    with pytest.raises(ConfigError, match=r"^networks\[1\]\.vni: 16777216 out of range"):
        load_config(p)
    assert sorted(os.listdir(tmp_path)) == ["node.yaml"]  # no state dir, no socket
    # a good one does not create anything either
    p.write_text(FULL_YAML)
    load_config(p)
    assert sorted(os.listdir(tmp_path)) == ["node.yaml"]


def test_check_on_the_express_lane_switched_off(tmp_path):
    """express_lane: false still loads the lane's programs, as the guard of
    the pods' host ends (docs/security.md): ``dataplane check`` says so
    where the kernel takes them, and where it would not (no program file
    here) says what stays open and what to do - not under auto, nor with
    the af_xdp driver (which takes every frame)."""
    assert parse_config(dict(BASE, express_lane=False)).advice() == []

    def check(env=None, **over):
        p = tmp_path / "node.yaml"
        p.write_text(yaml.safe_dump(dict(BASE, **over)))
        r = subprocess.run(
            [sys.executable, "-m", "dataplane.cli", "check", "-c", str(p)],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = check(express_lane=False)
    assert "express lane: off (every frame through the core); its programs guard" in out, out
    assert "limited broadcast" not in out, out
    gone = {"DATAPLANE_EXPRESS_OBJECT": str(tmp_path / "missing.bpf.o")}
    out = check(gone, express_lane=False)
    assert "warning: express_lane: false, and the kernel would not take the lane's" in out, out
    assert "limited broadcast" in out and "firewall (docs/security.md)" in out, out
    out = check(gone, express_lane="auto")
    assert "warning: express lane off (auto)" in out and "limited broadcast" not in out, out
    assert "limited broadcast" not in check(gone, express_lane=False, kernel_driver="af_xdp")


def test_advice_on_flooding_without_learning(tmp_path):
    """Remote VTEPs with learning off: MACs behind a kernel VTEP are reached
    by flooding only, which storm control caps - said by ``dataplane check``
    (and logged by the service at start), not refused."""
    cfg = dict(BASE, remotes=[{"vtep": "10.0.0.2", "networks": ["net1"]}])
    [advice] = parse_config(cfg).advice()
    assert "network net1 floods to remote VTEPs 10.0.0.2 with vtep.learning off" in advice
    assert "caps at 1000 frames/s per pod" in advice
    assert parse_config(dict(cfg, vtep=dict(BASE["vtep"], learning=True))).advice() == []
    assert parse_config(BASE).advice() == []  # no remotes: nothing flooded to them
    p = tmp_path / "node.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "check", "-c", str(p)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1] == f"warning: {advice}"


def test_advice_on_settings_that_cannot_take_effect():
    planes = {
        "std": {"priority": 3, "interface": "eth0", "max_rate": "600M"},
        "media": {"priority": 0, "interface": "media", "min_rate": "80M"},
        "control": {"priority": 1, "interface": "control"},
    }
    unshaped = parse_config(cfg(planes=planes))
    advice = unshaped.advice()
    assert any(
        a.startswith("planes.std.max_rate: 600000000 bit/s takes effect only on a shaped uplink")
        for a in advice
    ), advice
    shaped = cfg(planes=dict(planes, std=dict(planes["std"], min_rate="80M")))
    shaped["vtep"] = dict(shaped["vtep"], uplink_rate="100M")
    advice = parse_config(shaped).advice()
    assert any(
        "planes.std.max_rate: 600000000 bit/s is above vtep.uplink_rate" in a for a in advice
    )
    assert any("min_rate of all planes add up to 160000000 bit/s" in a for a in advice)
    assert not any(a.startswith("vtep.uplink_burst") for a in advice), advice
    # a burst that lasts a few microseconds at the rate: lost credit
    shaped["vtep"]["uplink_rate"] = "100G"
    advice = parse_config(shaped).advice()
    assert (
        "vtep.uplink_burst: 16384 bytes is 1.3 us at vtep.uplink_rate (100000000000 bit/s): a "
        "worker's loop longer than that loses credit and the uplink runs below its rate; give "
        "it 625000 bytes or more (50 us)"
    ) in advice, advice
    shaped["vtep"]["uplink_burst"] = 625000
    assert not any(a.startswith("vtep.uplink_burst") for a in parse_config(shaped).advice())
    # one DSCP, two planes: refused, the last would win silently
    planes["std"]["classify_dscp"] = [46]
    planes["media"]["classify_dscp"] = [46]
    bad(
        cfg(planes=planes),
        r"^planes\.media\.classify_dscp\[0\]: DSCP 46 is classified to plane std already",
    )


def test_reload_changes_takes_rates_and_names_the_rest():
    """What a reload takes (the shaper's rate and burst, the planes' rates,
    networks added at the end of the list) and what needs a restart, named by the file's own paths (networks by
    name)."""
    from dataplane.config import reload_changes

    shaped = cfg(
        vtep={"address": "10.0.0.1/24", "uplink": "eth1", "uplink_rate": "100M"},
        planes={"std": {"priority": 0, "max_rate": "50M"}, "control": {"priority": 2},
                "media": {"priority": 3}},
    )  # fmt: skip
    old = parse_config(shaped)
    assert reload_changes(old, parse_config(copy.deepcopy(shaped))) == ([], [])
    new = copy.deepcopy(shaped)
    new["vtep"]["uplink_rate"] = "1G"
    new["vtep"]["uplink_burst"] = 65536
    new["planes"]["std"]["max_rate"] = "80M"
    new["planes"]["media"]["min_rate"] = "10M"
    new["planes"]["media"]["dscp"] = 34
    new["planes"]["control"]["classify_dscp"] = [26]
    takes, restart = reload_changes(old, parse_config(new))
    assert restart == []
    assert takes == [
        ("vtep.uplink_rate", 100_000_000, 1_000_000_000),
        ("vtep.uplink_burst", 16384, 65536),
        ("planes.std.max_rate", 50_000_000, 80_000_000),
        ("planes.control.classify_dscp", [], [26]),
        ("planes.media.min_rate", 0, 10_000_000),
        ("planes.media.dscp", 46, 34),
    ]
    # a list of values changed in place (the same length) is one field too,
    # as RELOADABLE names it, not its items
    one = copy.deepcopy(new)
    one["planes"]["control"]["classify_dscp"] = [34]
    assert reload_changes(parse_config(new), parse_config(one)) == (
        [("planes.control.classify_dscp", [26], [34])],
        [],
    )
    one["lcores"] = [1, 0]
    assert reload_changes(parse_config(new), parse_config(one))[1] == ["lcores"]
    new["networks"][1]["vni"] = 201
    new["planes"]["media"]["priority"] = 4
    new["vtep"]["udp_port"] = 4790
    new["lcores"] = [0, 1, 2]
    takes, restart = reload_changes(old, parse_config(new))
    assert len(takes) == 6
    assert restart == [
        "vtep.udp_port",
        "lcores",
        "planes.media.priority",
        "networks.net2.vni",
    ]
    # a network's storm control and anti-spoofing are taken, under the
    # network's name (one with dots in it too); its other fields need a
    # restart
    dotted = copy.deepcopy(shaped)
    dotted["networks"][0]["name"] = "net.one"
    before = parse_config(dotted)
    dotted["networks"][0]["storm_pps"] = 50
    dotted["networks"][0]["storm_burst"] = 5
    dotted["networks"][0]["anti_spoofing"] = False
    dotted["networks"][0]["mtu"] = 1400
    assert reload_changes(before, parse_config(dotted)) == (
        [
            ("networks.net.one.anti_spoofing", True, False),
            ("networks.net.one.storm_pps", 1000, 50),
            ("networks.net.one.storm_burst", 200, 5),
        ],
        ["networks.net.one.mtu"],
    )
    # the VTEP's learning, switched on with its age and duplicate detection
    learn = copy.deepcopy(shaped)
    learn["vtep"].update(learning=True, learned_age_s=60, duplicate_macs={"moves": 3})
    assert reload_changes(old, parse_config(learn)) == (
        [
            ("vtep.learning", False, True),
            ("vtep.duplicate_macs.moves", 5, 3),
            ("vtep.learned_age_s", 300, 60),
        ],
        [],
    )
    # networks are compared by name: added, removed or moved, they are taken
    # as one change; a network kept is compared field by field
    moved = copy.deepcopy(shaped)
    moved["networks"].reverse()
    order = [n["name"] for n in shaped["networks"]]
    assert reload_changes(old, parse_config(moved)) == (
        [("networks", order, order[::-1])], []
    )  # fmt: skip
    grown = copy.deepcopy(shaped)
    grown["networks"].append({"name": "net9", "vni": 909, "plane": "std",
                              "subnet": "192.168.99.0/24"})  # fmt: skip
    assert reload_changes(old, parse_config(grown)) == (
        [("networks", order, [*order, "net9"])], []
    )  # fmt: skip
    # with a static flood list of its own, and one of an old network's
    # changed: taken too, as one change
    grown["remotes"] = [{"vtep": "10.0.0.9", "networks": ["net9", "net1"]}]
    assert reload_changes(old, parse_config(grown)) == ([
        ("networks", order, [*order, "net9"]),
        ("remotes", [], ["10.0.0.9: net9, net1"]),
    ], [])  # fmt: skip
    # and so does a change of an old network beside the new one
    grown["remotes"] = []
    grown["networks"][0]["mtu"] = 1300
    assert reload_changes(old, parse_config(grown)) == (
        [("networks", order, [*order, "net9"])], [f"networks.{order[0]}.mtu"]
    )  # fmt: skip
    # one added first, one removed: the same
    swapped = copy.deepcopy(shaped)
    swapped["networks"].insert(0, grown["networks"][-1])
    swapped["networks"].pop()
    assert reload_changes(old, parse_config(swapped)) == (
        [("networks", order, ["net9", *order[:-1]])], []
    )  # fmt: skip
    # a network renamed is one removed and one added: a VNI the removed one
    # had is the store's to refuse (the service checks it as a start does)
    renamed = copy.deepcopy(shaped)
    renamed["networks"][0]["name"] = "net0"
    takes, restart = reload_changes(old, parse_config(renamed))
    assert takes == [("networks", order, ["net0", *order[1:]])] and restart == []


def test_advice_on_more_memory_than_free_hugepages():
    """hugepages mode: memory_mb above the hugepage memory free now (the
    kernel's own /proc/meminfo; the set-up reserves hugepages) is said: the
    core would fail once it takes that much."""
    from dataplane import checks

    free = checks.hugepages_free()
    assert free is not None and free[0] > 0, free
    pages, kb = free
    free_mb = pages * kb // 1024

    def said(**kw):
        return [a for a in parse_config(cfg(**kw)).advice() if a.startswith("memory_mb")]

    [advice] = said(mode="hugepages", memory_mb=free_mb + 4096)
    assert advice.startswith(
        f"memory_mb: {free_mb + 4096} is more than the hugepage memory free now "
        f"({free_mb} MB: {pages} pages of {kb} kB)"
    ), advice
    assert said(mode="hugepages", memory_mb=min(64, free_mb)) == []
    assert said(memory_mb=free_mb + 4096) == []  # fallback mode takes no hugepages


def test_check_refuses_a_metrics_address_the_service_could_not_listen_on(tmp_path):
    """``dataplane check`` says what ``run`` would fail on at start: a
    metrics.listen address that is not this host's (the port itself is not
    taken: a running service may hold it)."""
    p = tmp_path / "node.yaml"
    state = {"state_dir": str(tmp_path / "state")}
    p.write_text(yaml.safe_dump(dict(BASE, metrics={"listen": "203.0.113.7:9464"}, **state)))
    r = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "check", "-c", str(p)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip() == (
        "dataplane: metrics.listen: 203.0.113.7:9464: 203.0.113.7 is not an address of this "
        "host (Cannot assign requested address)"
    )
    p.write_text(yaml.safe_dump(dict(BASE, metrics={"listen": "127.0.0.1:9464"}, **state)))
    r = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "check", "-c", str(p)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_check_and_run_refuse_lcores_this_machine_has_not(tmp_path):
    """lcores this machine has not (or this process may not use): ``check``
    fails as ``run`` does - a file checked before a restart cannot take the
    node down - and ``run`` writes nothing to the store before it refuses."""
    p = tmp_path / "node.yaml"
    state = tmp_path / "state"
    p.write_text(yaml.safe_dump(dict(BASE, lcores=[0, 127], state_dir=str(state))))
    why = "lcores: [127] not present or not allowed (the CPUs this process may use: "
    for cmd in ("check", "run"):
        r = subprocess.run(
            [sys.executable, "-m", "dataplane.cli", cmd, "-c", str(p)],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert r.stderr.strip().splitlines()[-1].startswith(f"dataplane: {why}"), (cmd, r.stderr)
        assert not state.exists() or not os.listdir(state), (cmd, os.listdir(state))


def test_a_refused_run_leaves_nothing_behind_and_says_it_never_started(tmp_path):
    """``run`` refusing a file - lcores this machine has not, a metrics
    address not its own (in ``check``'s words), a metrics port another
    process holds - makes no directory (or removes those it made) and
    does not log a stop of a service that never started."""
    import socket

    state, run = tmp_path / "state", tmp_path / "run"
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    port = held.getsockname()[1]
    cases = [
        ({"lcores": [0, 127]}, "lcores: [127] not present or not allowed"),
        (
            {"metrics": {"listen": "203.0.113.7:9464"}},
            "metrics.listen: 203.0.113.7:9464: 203.0.113.7 is not an address of this host",
        ),
        (
            {"metrics": {"listen": f"127.0.0.1:{port}"}},
            f"metrics.listen: 127.0.0.1:{port}: Address already in",
        ),
    ]
    try:
        for over, why in cases:
            p = tmp_path / "node.yaml"
            p.write_text(
                yaml.safe_dump(
                    dict(BASE, state_dir=str(state), api_socket=str(run / "a" / "api.sock"), **over)
                )
            )
            r = subprocess.run(
                [sys.executable, "-m", "dataplane.cli", "run", "-c", str(p)],
                capture_output=True,
                text=True,
            )
            assert r.returncode == 2, (over, r.stdout, r.stderr)
            assert f"dataplane: {why}" in r.stderr, (over, r.stderr)
            assert not state.exists() and not run.exists(), (over, list(tmp_path.rglob("*")))
            assert "node service stopped" not in r.stderr + r.stdout, (over, r.stderr)
    finally:
        held.close()


def test_a_number_too_long_for_python_names_its_line(tmp_path):
    """An integer of more digits than Python converts (4300) is refused with
    the line it is on, not a traceback."""
    p = tmp_path / "node.yaml"
    p.write_text("node: n\nmemory_mb: " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"line 2, column 12: .*5000 characters is out of"):
        load_config(p)


def test_a_dscp_given_twice_in_one_plane_is_refused():
    bad(
        cfg(planes={"std": {"classify_dscp": [46, 46]}}),
        r"^planes\.std\.classify_dscp\[1\]: DSCP 46 is given twice",
    )


def test_api_socket_and_pod_socket_dir_need_paths_of_their_own():
    bad(
        cfg(api_socket="/run/dataplane/pods", pod_socket_dir="/run/dataplane/pods"),
        r"^pod_socket_dir: /run/dataplane/pods is api_socket",
    )


@pytest.mark.parametrize("path", ["/run/dp,x/pods", "/run/dp/a=b"])
def test_pod_socket_dir_with_what_splits_device_arguments_refused(path):
    """The memif and vhost-user sockets' paths go into DPDK device arguments
    (``socket=PATH,...``): a ',' or '=' in them would split the arguments."""
    bad(cfg(pod_socket_dir=path), r"^pod_socket_dir: .* holds ',' or '='")


def test_pod_socket_dir_may_not_hold_the_services_own_files(tmp_path):
    """Each pod's directory in pod_socket_dir goes to the pod's user and is
    removed with the pod: the state, the store and the API socket may not be
    under it (nor may it be /)."""
    t = str(tmp_path)
    for changes, field in (
        ({"pod_socket_dir": "/"}, "state_dir"),
        ({"pod_socket_dir": "/var/lib"}, "state_dir"),
        ({"pod_socket_dir": t, "state_dir": f"{t}/dataplane"}, "state_dir"),
        ({"pod_socket_dir": t, "api_socket": f"{t}/api.sock"}, "api_socket"),
        (
            {"pod_socket_dir": t, "store": {"kind": "sqlite", "path": f"{t}/s/state.db"}},
            "store.path",
        ),
    ):
        bad(
            cfg(**changes),
            rf"^pod_socket_dir: {re.escape(changes['pod_socket_dir'])} holds {re.escape(field)} ",
        )
    # beside them, not over them
    assert parse_config(cfg(pod_socket_dir=f"{t}/pods", state_dir=f"{t}/state")).pod_socket_dir == (
        f"{t}/pods"
    )


def test_a_file_where_a_directory_is_made_is_refused(tmp_path):
    """A path the service would make a directory at, or under, that has a
    file in the way: refused by the check, not when the service starts."""
    f = tmp_path / "file"
    f.write_text("x")
    bad(cfg(state_dir=str(f)), rf"^state_dir: {re.escape(str(f))} is a file, not a directory")
    bad(
        cfg(api_socket=f"{f}/api.sock"),
        rf"^api_socket: {re.escape(str(f))}: Not a directory|^api_socket: {re.escape(str(f))} is a file",
    )
    bad(cfg(pod_socket_dir=f"{f}/pods"), r"^pod_socket_dir: .*(Not a directory|is a file)")
    assert f.read_text() == "x"


def test_an_etcd_endpoint_on_port_0_is_refused():
    bad(
        cfg(store={"kind": "etcd", "endpoints": ["http://h:0"]}),
        r"^store\.endpoints\[0\]: 'http://h:0': the port is not a number in 1\.\.65535",
    )


def test_a_reload_whose_file_names_another_api_socket_says_what_to_do(tmp_path):
    """reload -c FILE reaches the service through the file's api_socket: a
    file that changes it names it and says how to reach the running one."""
    sock = str(tmp_path / "new.sock")
    p = tmp_path / "node.yaml"
    p.write_text(yaml.safe_dump(cfg(api_socket=sock)))
    r = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "reload", "-c", str(p)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert f"no service answers on {sock}" in r.stderr
    assert "api_socket changes only with a restart: give the running service's socket" in (r.stderr)
