"""EAL arguments built from the engine config: safe by construction."""

import pytest

from dataplane import engine
from dataplane.errors import ConfigError

EngineConfig = engine.EngineConfig


def test_no_pci_unless_devices_listed():
    args = EngineConfig(mode="fallback").eal_args()
    assert "--no-pci" in args and "-a" not in args
    assert "--no-huge" in args
    prefix = args[args.index("--file-prefix") + 1]
    assert prefix.startswith("dataplane-")


def test_pci_devices_are_the_only_ones_allowed():
    args = EngineConfig(mode="hugepages", pci=["0000:03:00.0", "0000:03:00.1"]).eal_args()
    assert "--no-pci" not in args
    allowed = [args[i + 1] for i, a in enumerate(args) if a == "-a"]
    assert allowed == ["0000:03:00.0", "0000:03:00.1"]
    assert "--no-huge" not in args and "--in-memory" in args
    assert any(a.startswith("--socket-limit=") for a in args)


def test_lcores_main_first():
    args = EngineConfig(lcores=[1, 0]).eal_args()
    assert args[args.index("-l") + 1] == "1,0"
    assert args[args.index("--main-lcore") + 1] == "1"


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(mode="turbo"), "mode"),
        (dict(lcores=[0]), "lcores"),
        (dict(lcores=[0, 0]), "lcores"),
        (dict(lcores=[0, 4096]), "lcores"),
        (dict(memory_mb=1), "memory_mb"),
        (dict(n_mbufs=10), "n_mbufs"),
        (dict(file_prefix="a b"), "file_prefix"),
        (dict(pci=["0000:03:00.0,x"]), "pci"),
    ],
)
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        EngineConfig(**kw).eal_args()


def test_mac_and_ip_parsing():
    assert engine.parse_mac("02:00:00:00:00:0A") == b"\x02\x00\x00\x00\x00\x0a"
    with pytest.raises(ConfigError, match="vtep mac"):
        engine.parse_mac("02:00:00", "vtep mac")
    assert engine.parse_ipv4("10.0.0.1") == 0x0A000001
    with pytest.raises(ConfigError, match="gateway"):
        engine.parse_ipv4("10.0.0.300", "gateway")


def test_abi_version_matches_header():
    import pathlib
    import re

    h = (pathlib.Path(__file__).parents[1] / "csrc" / "dataplane.h").read_text()
    assert int(re.search(r"#define DP_ABI_VERSION (\d+)", h).group(1)) == engine.ABI_VERSION
    assert engine.lib.dp_abi_version() == engine.ABI_VERSION
