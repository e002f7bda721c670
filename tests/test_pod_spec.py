"""Pod plane specs: the good forms, and every kind of bad one named."""

import json
import re

import pytest

from dataplane.config import parse_config
from dataplane.errors import ConfigError
from dataplane.podspec import IFNAMSIZ, host_ifname, parse_pod_spec
from tests.test_config import BASE as CONFIG_BASE

# the config tests' node, with a second std network
BASE = {
    **CONFIG_BASE,
    "networks": [
        *CONFIG_BASE["networks"],
        {"name": "net4", "vni": 400, "plane": "std", "subnet": "192.168.40.0/24"},
    ],
}
CONFIG = parse_config(BASE)

CT = {
    "pod_type": "ct",
    "network_plane": ["std", "control", "media"],
    "networks": {"std": "net1", "control": "net2", "media": "net3"},
}


def spec(**changes):
    d = json.loads(json.dumps(CT))
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    return d


def bad(obj, pattern, config=CONFIG):
    with pytest.raises(ConfigError) as ei:
        parse_pod_spec(obj, config)
    assert re.search(pattern, str(ei.value)), str(ei.value)
    return str(ei.value)


# ------------------------------------------------------------- good specs
def test_ct_pod_from_json_text():
    s = parse_pod_spec(json.dumps(CT), CONFIG)
    assert s.pod_type == "ct"
    assert [(p.plane, p.network, p.ifname) for p in s.planes] == [
        ("std", "net1", "eth0"),
        ("control", "net2", "control"),
        ("media", "net3", "media"),
    ]
    assert [p.default_route for p in s.planes] == [True, False, False]
    assert s.plane("media").network == "net3" and s.plane("oam") is None


def test_same_from_dict_and_bytes():
    a = parse_pod_spec(CT, CONFIG)
    assert parse_pod_spec(json.dumps(CT).encode(), CONFIG) == a
    assert parse_pod_spec(a.to_dict(), CONFIG) == a  # round trip


def test_it_pod():
    s = parse_pod_spec('{"pod_type": "it", "networks": {"std": "net4"}}', CONFIG)
    assert [(p.plane, p.network, p.ifname) for p in s.planes] == [("std", "net4", "eth0")]
    s2 = parse_pod_spec(
        {"pod_type": "it", "network_plane": ["std"], "networks": {"std": "net1"}}, CONFIG
    )
    assert s2.planes[0].network == "net1"


def test_fixed_ips_macs_and_interfaces():
    s = parse_pod_spec(
        spec(
            ips={"std": "192.168.10.7", "media": "192.168.30.9/24"},
            macs={"control": "02:AA:BB:CC:DD:EE"},
            interfaces={"media": "rtp0"},
        ),
        CONFIG,
    )
    assert s.plane("std").ip == "192.168.10.7"
    assert s.plane("media").ip == "192.168.30.9"
    assert s.plane("control").ip is None
    assert s.plane("control").mac == "02:aa:bb:cc:dd:ee"
    assert s.plane("media").ifname == "rtp0"
    assert parse_pod_spec(s.to_dict(), CONFIG) == s


def test_interface_names_from_config():
    cfg = parse_config(
        dict(CONFIG.to_dict(), planes={"std": {}, "control": {"interface": "sig0"}, "media": {}})
    )
    s = parse_pod_spec(CT, cfg)
    assert [p.ifname for p in s.planes] == ["eth0", "sig0", "media"]


def test_host_ifname():
    names = {
        host_ifname(pod, plane)
        for pod in ("a", "b", "kube-system/coredns-1")
        for plane in ("std", "control", "media", "oam", "control2")
    }
    assert len(names) == 15  # all distinct
    for n in names:
        assert len(n) < IFNAMSIZ and n.startswith("dp")
    assert host_ifname("a", "media") == host_ifname("a", "media")  # deterministic
    assert host_ifname("a", "media").endswith("media")
    assert host_ifname("a", "std").endswith("std")


# ------------------------------------------------------------- bad specs
def test_list_of_pairs_from_the_slides():
    text = (
        '{"pod_type": "ct", "network_plane": ["std", "control", "media"], '
        '"networks": ["std": "net1", "control": "net2", "media": "net3"]}'
    )
    msg = bad(
        text,
        r'^networks must be a mapping \{"plane": "network"\}, not a list of '
        r'"plane": "network" pairs',
    )
    assert re.search(r"invalid JSON: .* at line 1 column \d+ \(char \d+\)", msg), msg
    # pretty-printed over several lines, the position still comes out
    text2 = text.replace(", ", ",\n  ")
    msg2 = bad(text2, r"^networks must be a mapping")
    assert "at line 5 column 21" in msg2, msg2


def test_list_forms_that_are_valid_json():
    bad(
        spec(networks=[{"std": "net1"}, {"control": "net2"}, {"media": "net3"}]),
        r'^networks must be a mapping \{"plane": "network"\}, not a list',
    )
    bad(spec(networks=["net1", "net2", "net3"]), r"^networks must be a mapping")


def test_other_invalid_json():
    # (where Python's JSON puts a trailing comma's error: 19, or 18 from 3.13)
    bad('{"pod_type": "ct",}', r"^pod spec is not valid JSON: .* at line 1 column 1[89]")
    bad('{"pod_type": "ct", "pod_type": "it"}', r"^pod spec: key 'pod_type' is given twice")
    bad('["std"]', r"^pod spec must be a JSON object, not list")
    bad(b"\xff", r"^pod spec: not UTF-8")


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"pod_type": "xx"}, r"^pod_type: unknown pod type 'xx' \(known: ct, it\)"),
        ({"pod_type": None}, r"^pod_type: is required"),
        ({"network_plane": ["std", "voice"]}, r"^network_plane\[1\]: unknown plane 'voice'"),
        ({"network_plane": ["std", "media", "std"]}, r"^network_plane\[2\]: duplicate plane 'std'"),
        ({"network_plane": []}, r"^network_plane: \[\] is not a non-empty list"),
        ({"network_plane": None}, r"^network_plane: is required for a ct pod"),
        (
            {"network_plane": ["std", "control", "media", "oam"]},
            r"^networks: plane oam is listed in network_plane but has no network",
        ),
        (
            {"network_plane": ["std", "control"]},
            r"^networks\.media: network given for plane media, which is not listed in "
            r"network_plane",
        ),
        (
            {"networks": {"std": "net1", "control": "net9", "media": "net3"}},
            r"^networks\.control: unknown network 'net9' \(known: net1, net2, net3, net4\)",
        ),
        (
            {"networks": {"std": "net1", "control": "net3", "media": "net2"}},
            r"^networks\.control: network net3 belongs to plane media, not control",
        ),
        (
            {"networks": {"std": "net1", "control": "net2", "media": "net3", "voice": "x"}},
            r"^networks: unknown plane 'voice'",
        ),
        ({"networks": None}, r"^networks: is required"),
        (
            {"networks": {"std": 5, "control": "net2", "media": "net3"}},
            r"^networks\.std: 5 is not a network name",
        ),
        (
            {"interfaces": {"control": "eth0"}},
            r"^interfaces: duplicate interface name 'eth0' \(planes std and control\)",
        ),
        (
            {"interfaces": {"media": "control"}},
            r"^interfaces: duplicate interface name 'control' \(planes control and media\)",
        ),
        ({"interfaces": {"media": "x" * 16}}, r"^interfaces\.media: 'x{16}' is not a valid"),
        ({"interfaces": {"media": "lo"}}, r"^interfaces\.media: 'lo' is not a valid"),
        (
            {"interfaces": {"oam": "o0"}},
            r"^interfaces\.oam: interface given for plane oam, "
            r"which is not listed",
        ),
        (
            {"ips": {"std": "192.168.20.7"}},
            r"^ips\.std: 192\.168\.20\.7 is outside network "
            r"net1's subnet 192\.168\.10\.0/24",
        ),
        ({"ips": {"std": "192.168.10.1"}}, r"^ips\.std: 192\.168\.10\.1 is the gateway"),
        ({"ips": {"std": "192.168.10.0"}}, r"^ips\.std: .*network or broadcast"),
        ({"ips": {"std": "192.168.10.7/16"}}, r"^ips\.std: prefix length /16 differs"),
        ({"ips": {"std": "192.168.10.7/abc"}}, r"^ips\.std: /abc in .* is not a prefix length"),
        ({"ips": {"std": "192.168.10.7/"}}, r"^ips\.std: / in .* is not a prefix length"),
        ({"ips": {"std": 5}}, r"^ips\.std: 5 is not an address$"),
        ({"ips": {"std": "nope"}}, r"^ips\.std: 'nope' is not an IPv4 address"),
        ({"macs": {"std": "01:00:00:00:00:01"}}, r"^macs\.std: .*multicast"),
        (
            {"macs": {"std": "02:00:00:00:00:01", "media": "02:00:00:00:00:01"}},
            r"^macs\.media: 02:00:00:00:00:01 is the MAC of plane std already",
        ),
        ({"extra": 1}, r"^pod spec: unknown key 'extra'"),
        ({"dhcp_server": "std"}, r"^dhcp_server: 'std' is not a list of planes"),
        ({"dhcp_server": ["voice"]}, r"^dhcp_server\[0\]: unknown plane 'voice'"),
        ({"dhcp_server": ["std", 3]}, r"^dhcp_server\[1\]: 3 is not a plane name"),
        ({"dhcp_server": ["oam"]}, r"^dhcp_server\[0\]: plane oam is not listed in network_plane"),
        ({"dhcp_server": ["std", "std"]}, r"^dhcp_server\[1\]: duplicate plane 'std'"),
        # a floating address must not be one that belongs to someone by position
        (
            {"allowed_addresses": {"std": ["192.168.10.50", "192.168.10.1"]}},
            r"^allowed_addresses\.std\[1\]: 192\.168\.10\.1 is the gateway of network net1",
        ),
        (
            {"allowed_addresses": {"std": ["192.168.10.255"]}},
            r"^allowed_addresses\.std\[0\]: .*network or broadcast address of 192\.168\.10\.0/24",
        ),
        (
            {"allowed_addresses": {"control": ["192.168.20.0"]}},
            r"^allowed_addresses\.control\[0\]: .*network or broadcast",
        ),
        (
            {"allowed_addresses": {"std": ["10.0.0.1"]}},
            r"^allowed_addresses\.std\[0\]: 10\.0\.0\.1 is this node's VTEP address",
        ),
    ],
)
def test_bad_ct_specs(changes, pattern):
    bad(spec(**changes), pattern)


def test_it_pod_has_only_std():
    bad(
        {
            "pod_type": "it",
            "network_plane": ["std", "media"],
            "networks": {"std": "net1", "media": "net3"},
        },
        r"^network_plane: an it pod has only the std plane, not media",
    )
    bad(
        {"pod_type": "it", "network_plane": ["media"], "networks": {"media": "net3"}},
        r"^network_plane: an it pod has only the std plane, not media",
    )


def test_planes_on_overlapping_subnets_are_refused():
    """Two networks may share a range (tenants apart), but not in one pod:
    its stack would have two connected routes for it, and one plane's
    address could be the other's gateway."""
    net1 = BASE["networks"][0]
    cfg = parse_config(
        dict(
            BASE,
            networks=[
                net1,
                {"name": "net5", "vni": 500, "plane": "oam", "subnet": "192.168.10.0/25"},
                {"name": "net6", "vni": 600, "plane": "oam", "subnet": "192.168.60.0/24"},
            ],
        )
    )
    both = {
        "pod_type": "ct",
        "network_plane": ["std", "oam"],
        "networks": {"std": "net1", "oam": "net5"},
    }
    bad(
        both,
        r"^networks\.oam: network net5 \(192\.168\.10\.0/25\) overlaps network net1 "
        r"\(192\.168\.10\.0/24\) of plane std: a pod cannot be on both$",
        config=cfg,
    )
    both["networks"]["oam"] = "net6"
    assert [p.network for p in parse_pod_spec(both, cfg).planes] == ["net1", "net6"]


def test_floating_addresses_outside_the_subnet_and_ipv6_are_taken():
    """A floating address needs not be in the plane's subnet (a service
    address the pod answers for); only the reserved ones are refused."""
    ps = parse_pod_spec(
        spec(allowed_addresses={"std": ["192.168.10.50", "172.16.0.9", "fd00::9"]}), CONFIG
    )
    assert ps.planes[0].allowed == ("192.168.10.50", "172.16.0.9", "fd00::9")


def test_dual_stack_planes():
    """A pod's planes may not overlap in IPv6 either; on a dual-stack
    network the pod's own IPv6 address takes one of the guard's places, and
    its IPv6 gateway is nobody's floating address."""
    nets = [dict(n) for n in BASE["networks"]]
    nets[0] |= {"subnet6": "fd00:10::/64", "gateway6": "fd00:10::1"}  # net1, std
    nets[1] |= {"subnet6": "fd00:10::/64"}  # net2, control: the same IPv6 range
    cfg = parse_config(dict(BASE, networks=nets))
    bad(
        spec(),
        r"^networks\.control: network net2 \(fd00:10::/64\) overlaps network net1 "
        r"\(fd00:10::/64\) of plane std: a pod cannot be on both$",
        config=cfg,
    )
    nets[1]["subnet6"] = "fd00:11::/64"
    cfg = parse_config(dict(BASE, networks=nets))
    assert [p.network for p in parse_pod_spec(spec(), cfg).planes] == ["net1", "net2", "net3"]
    many = [f"fd00:99::{i:x}" for i in range(1, 16)]  # 15: as many as a plane may list
    assert parse_pod_spec(spec(allowed_addresses={"media": many}), cfg)  # IPv4 only
    bad(
        spec(allowed_addresses={"std": many}),
        r"^allowed_addresses\.std: 15 IPv6 addresses; at most 14 on dual-stack network net1",
        config=cfg,
    )
    bad(
        spec(allowed_addresses={"std": ["fd00:10::1"]}),
        r"^allowed_addresses\.std\[0\]: fd00:10::1 is the IPv6 gateway of network net1",
        config=cfg,
    )
    # subnet6's network address is its subnet-router anycast address
    bad(
        spec(allowed_addresses={"std": ["fd00:10::5", "fd00:10::"]}),
        r"^allowed_addresses\.std\[1\]: fd00:10:: is the network address of fd00:10::/64 "
        r"\(its subnet-router anycast address\)$",
        config=cfg,
    )
    # any other IPv6 address is taken, in subnet6 or not, a link-local one
    # too (VRRPv3's virtual address is one)
    ps = parse_pod_spec(
        spec(allowed_addresses={"std": ["fd00:10::5", "fe80::1", "fd00:99::1"]}), cfg
    )
    assert ps.planes[0].allowed == ("fd00:10::5", "fe80::1", "fd00:99::1")


def test_the_vtep_address_is_nobodys_fixed_address():
    """A network whose subnet holds the node's VTEP address: the VTEP's
    neighbours would be taught a pod's MAC for it, whether the pod asks for
    it as its own address or as a floating one."""
    nets = [dict(n) for n in BASE["networks"]]
    nets[0] |= {"subnet": "10.0.0.0/24", "gateway": "10.0.0.254"}  # net1 holds 10.0.0.1
    cfg = parse_config(dict(BASE, networks=nets))
    assert cfg.vtep.ip == "10.0.0.1"
    for ip in ("10.0.0.1", "10.0.0.1/24"):
        bad(
            spec(ips={"std": ip}),
            r"^ips\.std: 10\.0\.0\.1 is this node's VTEP address$",
            config=cfg,
        )
    bad(
        spec(allowed_addresses={"std": ["10.0.0.1"]}),
        r"^allowed_addresses\.std\[0\]: 10\.0\.0\.1 is this node's VTEP address$",
        config=cfg,
    )
    assert parse_pod_spec(spec(ips={"std": "10.0.0.2"}), cfg).planes[0].ip == "10.0.0.2"


def test_dhcp_server_planes():
    ps = parse_pod_spec(spec(dhcp_server=["control"]), CONFIG)
    assert [p.plane for p in ps.planes if p.dhcp_server] == ["control"]
    assert ps.to_dict()["dhcp_server"] == ["control"]
    assert parse_pod_spec(ps.to_dict(), CONFIG) == ps
    assert "dhcp_server" not in parse_pod_spec(spec(), CONFIG).to_dict()
