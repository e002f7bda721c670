"""Value checks (dataplane.checks): each bound, each form, and the core's
limits as its header defines them."""

import ipaddress
import pathlib
import re

import pytest

from dataplane import checks
from dataplane.errors import ConfigError

HEADER = pathlib.Path(__file__).parents[1] / "csrc" / "dataplane.h"


def refused(fn, *args, match, **kw):
    with pytest.raises(ConfigError) as ei:
        fn(*args, **kw)
    assert re.search(match, str(ei.value)), str(ei.value)
    return str(ei.value)


# ------------------------------------------------------------- the core's limits
def _define(name):
    m = re.search(rf"#define\s+{name}\s+(\d+)", HEADER.read_text())
    assert m, name
    return int(m.group(1))


@pytest.mark.parametrize(
    "define, value",
    [
        ("DP_VNI_MAX", checks.VNI_MAX),
        ("DP_VXLAN_OVERHEAD", checks.VXLAN_OVERHEAD),
        ("DP_UNDERLAY_MTU_MIN", checks.UNDERLAY_MTU_RANGE[0]),
        ("DP_UNDERLAY_MTU_MAX", checks.UNDERLAY_MTU_RANGE[1]),
        ("DP_MAX_PLANES", checks.MAX_PLANES),
        ("DP_MAX_NETS", checks.MAX_NETWORKS),
        ("DP_MAX_WORKERS", checks.MAX_WORKERS),
        ("DP_MAX_RXQ", checks.MAX_RX_QUEUES),
        ("DP_CAP_SNAPLEN_MIN", checks.CAPTURE_SNAPLEN_RANGE[0]),
        ("DP_CAP_SNAPLEN_MAX", checks.CAPTURE_SNAPLEN_RANGE[1]),
    ],
)
def test_limits_match_the_core_header(define, value):
    assert _define(define) == value


def test_vni_is_24_bits():
    assert checks.VNI_MAX == (1 << 24) - 1
    assert checks.VXLAN_OVERHEAD == 14 + 20 + 8 + 8


# ------------------------------------------------------------- numbers
def test_vni_bounds():
    assert checks.check_vni(1) == 1
    assert checks.check_vni(checks.VNI_MAX) == checks.VNI_MAX
    refused(
        checks.check_vni,
        0,
        "networks[2].vni",
        match=r"^networks\[2\]\.vni: 0 out of range 1\.\.16777215$",
    )
    refused(checks.check_vni, 1 << 24, match=r"^vni: 16777216 out of range 1\.\.16777215$")
    refused(checks.check_vni, True, match=r"^vni: true is not an integer")
    refused(checks.check_vni, "100", match=r"^vni: '100' is not an integer")
    refused(checks.check_vni, 100.0, match=r"^vni: 100\.0 is not an integer")


def test_underlay_mtu_bounds():
    lo, hi = checks.UNDERLAY_MTU_RANGE
    assert (lo, hi) == (576, 9216)
    assert checks.check_underlay_mtu(lo) == lo and checks.check_underlay_mtu(hi) == hi
    refused(checks.check_underlay_mtu, lo - 1, match=r"^underlay_mtu: 575 out of range 576\.\.9216")
    refused(
        checks.check_underlay_mtu,
        hi + 1,
        "vtep.underlay_mtu",
        match=r"^vtep\.underlay_mtu: 9217 out of range",
    )


def test_int_pow2_and_ranges():
    assert checks.check_int(0, "x", 0, 0) == 0
    refused(checks.check_int, False, "x", 0, 1, match=r"^x: false is not an integer")
    assert checks.check_pow2(1024, "queue_len", 16, 1 << 20) == 1024
    refused(checks.check_pow2, 100, "queue_len", match=r"^queue_len: 100 is not a power of two")
    refused(checks.check_pow2, 32, "frames", 64, match=r"^frames: 32 out of range 64\.\.")
    assert checks.check_rx_queues(checks.MAX_RX_QUEUES) == checks.MAX_RX_QUEUES
    refused(checks.check_rx_queues, 0, match=r"^rx_queues: 0 out of range 1\.\.8")
    refused(checks.check_udp_port, 0, match=r"^udp_port: 0 out of range 1\.\.65535")
    refused(checks.check_dscp, 64, "planes.media.dscp", match=r"^planes\.media\.dscp: 64 out")
    refused(checks.check_memory_mb, 63, match=r"^memory_mb: 63 out of range 64\.\.")


def test_rates():
    assert checks.check_rate(0, "r") == 0
    assert checks.check_rate("100M", "r") == 100 * 10**6
    assert checks.check_rate("2.5G", "r") == 25 * 10**8
    assert checks.check_rate("64kbit/s", "r") == 64000
    refused(checks.check_rate, "fast", "r", match=r"^r: 'fast' is not a rate in bit/s")
    refused(checks.check_rate, True, "r", match=r"^r: true is not a rate")
    refused(checks.check_rate, 7999, "r", match=r"^r: 7999 bit/s is below 8000")
    # a fraction of a bit/s is no 0 (which means none)
    refused(checks.check_rate, 0.5, "r", match=r"^r: 0\.5 is below 8000 bit/s \(use 0 for none\)")
    assert checks.check_rate("0", "r") == checks.check_rate(0.0, "r") == 0
    refused(checks.check_rate, "401G", "r", match=r"out of range 0\.\.400G")
    # more digits than a float holds: out of range, not a traceback
    refused(checks.check_rate, "1" * 400, "r", match=r"^r: '1{400}' out of range 0\.\.400G")
    refused(checks.check_rate, "9" * 400 + "G", "r", match=r"out of range 0\.\.400G")


def test_mode_and_lcores():
    assert checks.MODES == ("hugepages", "fallback")
    assert checks.check_mode("fallback") == "fallback"
    refused(checks.check_mode, "turbo", match=r"^mode: 'turbo' is not one of hugepages, fallback$")
    assert checks.check_lcores((2, 3)) == [2, 3]
    # the core runs DP_MAX_WORKERS - 1 workers: its last counter row is the control thread's
    assert len(checks.check_lcores(list(range(checks.MAX_WORKERS)))) == checks.MAX_WORKERS
    refused(
        checks.check_lcores,
        list(range(checks.MAX_WORKERS + 1)),
        match=rf"^lcores: at most {checks.MAX_WORKERS - 1} workers",
    )
    refused(checks.check_lcores, [0], match=r"^lcores: needs at least two")
    refused(checks.check_lcores, [0, 1, 1], match=r"^lcores\[2\]: CPU 1 is listed twice")
    refused(
        checks.check_lcores, [0, -1], match=r"^lcores\[1\]: -1 is not a CPU number \(0\.\.127\)"
    )
    # the EAL's lcores are CPUs below its RTE_MAX_LCORE (128 in Debian's DPDK)
    assert checks.MAX_LCORE == 128
    assert checks.check_lcores([0, 127]) == [0, 127]
    refused(
        checks.check_lcores,
        [0, 200],
        match=r"^lcores\[1\]: CPU 200: DPDK takes CPUs 0\.\.127 as lcores \(RTE_MAX_LCORE\)",
    )
    refused(checks.check_lcores, "0,1", match=r"^lcores: '0,1' is not a list")


# ------------------------------------------------------------- MACs
@pytest.mark.parametrize(
    "form",
    [
        "02:AA:bb:cc:dd:0e",
        "02-aa-bb-cc-dd-0e",
        b"\x02\xaa\xbb\xcc\xdd\x0e",
        bytearray(b"\x02\xaa\xbb\xcc\xdd\x0e"),
    ],
)
def test_mac_forms(form):
    assert checks.check_mac(form) == "02:aa:bb:cc:dd:0e"
    assert checks.parse_mac(form) == b"\x02\xaa\xbb\xcc\xdd\x0e"


@pytest.mark.parametrize(
    "bad",
    [
        "02:00:00:00:00",
        "02:00:00:00:00:00:00",
        "2:0:0:0:0:1",
        "zz:00:00:00:00:00",
        "020000000001",
        "",
        5,
        "+2:00:00:00:00:07",  # int(x, 16) would take a sign
        " 2:00:00:00:00:07",  # or a space
        "02:00:00:00:00:0x",
    ],
)
def test_mac_malformed(bad):
    refused(checks.parse_mac, bad, "vtep.mac", match=r"^vtep\.mac: .* is not a MAC address")
    refused(checks.check_mac, bad, "vtep.mac", match=r"^vtep\.mac: .* is not a MAC address")


def test_mac_wrong_number_of_bytes():
    refused(checks.parse_mac, b"\x02\x00", match=r"^mac: 2 bytes are not a MAC address")


@pytest.mark.parametrize("mac", ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "33:33:00:00:00:01"])
def test_mac_multicast_refused(mac):
    refused(checks.check_mac, mac, "macs.std", match=r"^macs\.std: .* multicast/broadcast")
    assert checks.parse_mac(mac)  # any MAC parses (FDB, neighbours)


def test_mac_zero_refused():
    refused(checks.check_mac, "00:00:00:00:00:00", match=r"^mac: .* all-zero MAC")


def test_format_mac():
    assert checks.format_mac(b"\x02\x00\x00\x00\x00\xff") == "02:00:00:00:00:ff"


# ------------------------------------------------------------- interface names
def test_ifname_15_ascii_bytes_ok_16_refused():
    assert checks.check_ifname("a" * 15) == "a" * 15
    msg = refused(
        checks.check_ifname,
        "a" * 16,
        "vtep.uplink",
        match=r"^vtep\.uplink: 'a{16}' is not a valid interface name",
    )
    assert "16 bytes, longer than 15" in msg


@pytest.mark.parametrize("path", ["vtep.uplink", "planes.control.interface", "interfaces.media"])
def test_an_ifname_the_kernel_would_number_is_refused(path):
    """'sig%d' is a template to the kernel (it makes sig0): the pod add
    that asked for it would not find its interface, a service would wait
    for an uplink of that name for ever."""
    refused(
        checks.check_ifname,
        "sig%d",
        path,
        match=r"^" + re.escape(path) + r": 'sig%d' is not an interface name but a kernel template",
    )


def test_ifname_counted_in_bytes():
    name = "\u20ac" * 6  # 6 characters, 18 bytes of UTF-8
    assert len(name) == 6 and len(name.encode()) == 18
    refused(checks.check_ifname, name, match=r"18 bytes, longer than 15")
    assert checks.check_ifname("\u20ac" * 5) == "\u20ac" * 5  # 15 bytes fit


@pytest.mark.parametrize("bad", ["eth\0", "a/b", "a:1", "a b", "a\tb", "a\nb", ".", ".."])
def test_ifname_characters_refused(bad):
    refused(
        checks.check_ifname,
        bad,
        "interfaces.media",
        match=r"^interfaces\.media: .* is not a valid interface name \(no '/', ':', NUL",
    )


@pytest.mark.parametrize("bad", ["", None, 5])
def test_ifname_not_a_string(bad):
    refused(checks.check_ifname, bad, match=r"^ifname: .* is not a non-empty string")


def test_ifname_reserved():
    assert checks.check_ifname("lo") == "lo"  # a valid name as such
    refused(
        checks.check_ifname,
        "lo",
        "planes.std.interface",
        reserved=checks.POD_RESERVED_IFNAMES,
        match=r"^planes\.std\.interface: 'lo' is the pod's loopback interface$",
    )
    assert checks.check_ifname("lo0", reserved=checks.POD_RESERVED_IFNAMES) == "lo0"


# ------------------------------------------------------------- keys and names
def test_unknown_key_did_you_mean():
    refused(
        checks.check_keys,
        {"vnii": 5},
        "networks[1]",
        ("name", "vni"),
        match=r"^networks\[1\]\.vnii: unknown key \(did you mean 'vni'\?\)$",
    )
    refused(
        checks.check_keys,
        {"zzz": 1},
        "vtep",
        ("address", "uplink"),
        match=r"^vtep\.zzz: unknown key \(known: address, uplink\)$",
    )
    refused(
        checks.check_keys,
        {"vtepp": {}},
        "",
        ("vtep",),
        match=r"^vtepp: unknown key \(did you mean 'vtep'\?\)$",
    )


def test_keys_mapping_required_and_key_types():
    assert checks.check_keys({"a": 1}, "x", ("a", "b")) == {"a": 1}
    refused(
        checks.check_keys,
        [1],
        "",
        ("a",),
        name="configuration",
        match=r"^configuration: must be a mapping, not list$",
    )
    refused(checks.check_keys, {1: 2}, "store", ("a",), match=r"^store: key 1 is not a string")
    refused(
        checks.check_keys,
        {"a": None},
        "x",
        ("a", "b"),
        required=("a",),
        match=r"^x\.a: is required$",
    )


def test_known_values():
    assert checks.check_known("ct", "pod_type", ("ct", "it"), "pod type") == "ct"
    refused(
        checks.check_known,
        "xx",
        "pod_type",
        ("ct", "it"),
        "pod type",
        match=r"^pod_type: unknown pod type 'xx' \(known: ct, it\)$",
    )
    refused(
        checks.check_known,
        "network_planes",
        "pod spec",
        ("pod_type", "network_plane", "networks"),
        match=r"^pod spec: unknown key 'network_planes' \(did you mean 'network_plane'\?\)",
    )
    refused(
        checks.check_known,
        "net9",
        "networks.std",
        ("net1", "net2"),
        "network",
        suggest=False,
        match=r"\(known: net1, net2\)$",
    )
    refused(checks.check_known, "net1", "networks.std", (), "network", match=r"\(known: none\)$")
    refused(checks.check_known, 5, "x", ("a",), match=r"^x: unknown key 5 \(known: a\)$")


def test_names_and_strings():
    assert checks.check_name("net-1.a_b", "name") == "net-1.a_b"
    refused(
        checks.check_name,
        "a b",
        "networks[0].name",
        "network name",
        match=r"^networks\[0\]\.name: 'a b' is not a valid network name",
    )
    refused(checks.check_name, "x" * 64, "node", match=r"at most 63 characters")
    # a trailing newline is not part of a name (a regex's $ would let it by)
    refused(checks.check_name, "net1\n", "node", match=r"'net1\\n' is not a valid name")
    refused(checks.check_string, "", "node", match=r"^node: '' is not a non-empty string")
    refused(checks.check_bool, "yes", "learning", match=r"^learning: 'yes' is not true or false")
    assert checks.check_list(None, "remotes") == []
    refused(checks.check_list, {}, "remotes", match=r"^remotes: must be a list, not dict")


# ------------------------------------------------------------- IPv4
def test_ipv4():
    assert checks.parse_ipv4("10.0.0.1") == ipaddress.IPv4Address("10.0.0.1")
    refused(
        checks.parse_ipv4,
        "10.0.0.300",
        "gateway",
        match=r"^gateway: '10\.0\.0\.300' is not an IPv4 address$",
    )
    refused(checks.parse_ipv4, 5, "gateway", match=r"^gateway: 5 is not an IPv4 address$")
    iface = checks.parse_ipv4_interface("10.0.0.1/24", "vtep.address")
    assert str(iface.network) == "10.0.0.0/24"
    refused(
        checks.parse_ipv4_interface,
        "10.0.0.1",
        "vtep.address",
        match=r"^vtep\.address: '10\.0\.0\.1' is not an IPv4 address with prefix length",
    )
    assert checks.parse_ipv4_interface("10.0.0.1", "a", need_prefix=False).network.prefixlen == 32
    assert str(checks.parse_ipv4_subnet("192.168.10.0/24", "s")) == "192.168.10.0/24"
    refused(checks.parse_ipv4_subnet, "192.168.10.1/24", "s", match=r"^s: .*host bits")
    refused(checks.parse_ipv4_subnet, "192.168.10.0", "s", match=r"^s: .*not an IPv4 subnet")


def test_vtep_ip():
    assert str(checks.check_vtep_ip("10.0.0.2")) == "10.0.0.2"


@pytest.mark.parametrize("bad", ["224.0.0.1", "0.0.0.0", "127.0.0.1"])
def test_vtep_ip_refused(bad):
    refused(
        checks.check_vtep_ip,
        bad,
        "remotes[0].vtep",
        match=r"^remotes\[0\]\.vtep: .* cannot be a VTEP address",
    )


# ------------------------------------------------------------- JSON, paths, URLs
def test_json_object():
    assert checks.load_json_object('{"a": 1}', "pod spec") == {"a": 1}
    assert checks.load_json_object(b'{"a": 1}', "pod spec") == {"a": 1}
    assert checks.load_json_object({"a": 1}, "pod spec") == {"a": 1}
    refused(
        checks.load_json_object,
        '{"a": 1, "a": 2}',
        "request body",
        match=r"^request body: key 'a' is given twice$",
    )
    refused(
        checks.load_json_object, b"\xff", "request body", match=r"^request body: not UTF-8 text"
    )
    refused(
        checks.load_json_object,
        "[1]",
        "pod spec",
        match=r"^pod spec must be a JSON object, not list$",
    )
    refused(
        checks.load_json_object,
        '{"a":}',
        "pod spec",
        match=r"^pod spec is not valid JSON: .* at line 1 column 6 \(char 5\)$",
    )
    refused(
        checks.load_json_object,
        '{"a":}',
        "pod spec",
        explain=lambda text: "a is odd",
        match=r"^a is odd \(invalid JSON: .* at line 1 column 6",
    )


def test_paths_and_listen(tmp_path):
    assert checks.check_abspath("x/../y", "state_dir", str(tmp_path)) == str(tmp_path / "y")
    refused(checks.check_abspath, "a\0b", "state_dir", match=r"^state_dir: contains a NUL")
    refused(
        checks.check_unix_socket_path,
        "/" + "x" * 120,
        "api_socket",
        match=r"^api_socket: .*longer than 107 bytes",
    )
    assert checks.check_listen("[::1]:9100", "l") == "[::1]:9100"
    assert checks.split_listen("[::1]:9100") == ("::1", 9100)
    assert checks.check_listen(None, "l") is None
    refused(checks.check_listen, "9464", "l", match=r"^l: '9464' is not host:port")
    refused(checks.check_listen, "[zz]:1", "l", match=r"^l: 'zz' is not an IPv6 address")


def test_etcd():
    assert checks.check_etcd_endpoints("http://a:2379/", "e") == ("http://a:2379",)
    refused(
        checks.check_etcd_endpoints, ["http://a"], "e", match=r"^e\[0\]: 'http://a' has no port"
    )
    assert checks.check_etcd_prefix("/a/b/", "p") == "/a/b"
    refused(checks.check_etcd_prefix, "/", "p", match=r"^p: '/' alone")
