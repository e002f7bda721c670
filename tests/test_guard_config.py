"""The configuration of the guards: allowed_addresses in pod specs, the
networks' anti_spoofing and storm control, the uplink shaper's burst
against the largest frame. Errors name the field; nothing is half-accepted."""

import copy

import pytest

from dataplane.checks import check_allowed_addresses, ipv6_link_local, parse_mac
from dataplane.config import DEFAULT_STORM_BURST, DEFAULT_STORM_PPS, parse_config
from dataplane.errors import ConfigError
from dataplane.podspec import parse_pod_spec
from tests.test_config import BASE
from tests.test_pod_spec import CONFIG, CT, bad, spec


def cfg(**net_changes):
    d = copy.deepcopy(BASE)
    d["networks"][0].update(net_changes)
    return d


# ----------------------------------------------------------- pod specs
def test_allowed_addresses_parsed_and_kept():
    ps = parse_pod_spec(
        spec(allowed_addresses={"std": ["192.168.10.50", "FD00::0050"], "media": ["10.9.9.9"]}),
        CONFIG,
    )
    assert ps.plane("std").allowed == ("192.168.10.50", "fd00::50")
    assert ps.plane("media").allowed == ("10.9.9.9",)
    assert ps.plane("control").allowed == ()
    again = parse_pod_spec(ps.to_dict(), CONFIG)
    assert again == ps
    assert "allowed_addresses" not in parse_pod_spec(CT, CONFIG).to_dict()


@pytest.mark.parametrize(
    "value, pattern",
    [
        (["192.168.10.50"], r"allowed_addresses must be a mapping"),
        ({"std": "192.168.10.50"}, r"allowed_addresses\.std: .* not a list"),
        ({"std": ["192.168.10.0/24"]}, r"allowed_addresses\.std\[0\]: .*single"),
        ({"std": ["nope"]}, r"allowed_addresses\.std\[0\]: .*not an IPv4 or IPv6"),
        ({"std": ["224.0.0.18"]}, r"allowed_addresses\.std\[0\]: .*not a unicast"),
        ({"std": ["0.0.0.0"]}, r"not a unicast"),
        ({"std": ["255.255.255.255"]}, r"broadcast"),
        ({"std": ["ff02::1"]}, r"not a unicast"),
        ({"std": ["10.0.0.1", "10.0.0.1"]}, r"listed twice"),
        ({"std": [f"10.0.0.{i}" for i in range(1, 17)]}, r"at most 15 IPv4"),
        ({"oam": ["10.0.0.1"]}, r"oam, which is not listed in network_plane"),
        ({"voice": ["10.0.0.1"]}, r"unknown plane 'voice'"),
        ({"std": [7]}, r"not a single IPv4 or IPv6"),
    ],
)
def test_bad_allowed_addresses(value, pattern):
    bad(spec(allowed_addresses=value), pattern)


def test_check_allowed_addresses_limits():
    ok = [f"fd00::{i:x}" for i in range(1, 16)]
    assert check_allowed_addresses(ok) == ok
    with pytest.raises(ConfigError, match="15 IPv6"):
        check_allowed_addresses(ok + ["fd00::99"])


def test_link_local_of_a_mac():
    # the kernel's EUI-64 link-local: U/L bit flipped, ff:fe in the middle
    assert str(ipv6_link_local(parse_mac("02:00:00:0a:00:11"))) == "fe80::ff:fe0a:11"
    assert str(ipv6_link_local(parse_mac("52:54:00:12:34:56"))) == "fe80::5054:ff:fe12:3456"


# -------------------------------------------------------- node config
def test_guard_defaults_and_round_trip():
    c = parse_config(BASE)
    n = c.networks[0]
    assert n.anti_spoofing is True
    assert (n.storm_pps, n.storm_burst) == (DEFAULT_STORM_PPS, DEFAULT_STORM_BURST)
    assert parse_config(c.to_dict()) == c
    c2 = parse_config(cfg(anti_spoofing=False, storm_pps=0))
    assert not c2.networks[0].anti_spoofing and c2.networks[0].storm_pps == 0
    assert parse_config(c2.to_dict()) == c2


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"anti_spoofing": "yes"}, r"networks\[0\]\.anti_spoofing"),
        ({"storm_pps": -1}, r"networks\[0\]\.storm_pps: -1 out of range"),
        ({"storm_pps": 10**9}, r"networks\[0\]\.storm_pps"),
        ({"storm_burst": 0}, r"networks\[0\]\.storm_burst: 0 out of range"),
        ({"storm_burst": 1.5}, r"networks\[0\]\.storm_burst: 1\.5 is not an integer"),
        ({"storm": 5}, r"storm"),
    ],
)
def test_bad_guard_config(changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_config(cfg(**changes))


def test_uplink_burst_below_one_frame_refused():
    d = copy.deepcopy(BASE)
    d["vtep"].update(underlay_mtu=9000, uplink_burst=8192, uplink_rate="1g")
    with pytest.raises(ConfigError, match=r"vtep\.uplink_burst: 8192 bytes is less than one frame"):
        parse_config(d)
    d["vtep"]["uplink_burst"] = 9000 + 14 + 24
    assert parse_config(d).vtep.uplink_burst == 9038
