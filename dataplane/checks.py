"""Value checks shared by every boundary: the node config, pod specs, the
stores, the engine and the control API.

Each check takes the value and the ``path`` of the field it came from and
either returns the value (normalised where that makes sense) or raises
:class:`~dataplane.errors.ConfigError` whose message starts with the path,
e.g. ``networks[2].vni: 16777216 out of range 1..16777215``. Limits that the
C core also enforces are read from its header (``csrc/dataplane.h``, through
the compiled module), never copied.
"""
import difflib
from typing import Iterable, Mapping

from ._core import lib
from .errors import ConfigError

#: EAL modes: DPDK with hugepages, or the ``--no-huge`` fallback
MODES = ("hugepages", "fallback")

# limits of the core, from csrc/dataplane.h
VNI_MAX = lib.DP_VNI_MAX
VXLAN_OVERHEAD = lib.DP_VXLAN_OVERHEAD
UNDERLAY_MTU_RANGE = (lib.DP_UNDERLAY_MTU_MIN, lib.DP_UNDERLAY_MTU_MAX)
MAX_PLANES = lib.DP_MAX_PLANES
MAX_NETWORKS = lib.DP_MAX_NETS
MAX_WORKERS = lib.DP_MAX_WORKERS
MAX_RX_QUEUES = lib.DP_MAX_RXQ

#: smallest IPv4 MTU (RFC 791)
MIN_MTU = 68
#: kernel interface names: IFNAMSIZ bytes including the terminating NUL
IFNAMSIZ = 16


def fail(path: str, problem: str) -> ConfigError:
    """The error for field ``path``: ``raise fail("vtep.mac", "...")``."""
    return ConfigError(f"{path}: {problem}" if path else problem)


def show(value) -> str:
    """A value as an error message shows it."""
    return repr(value) if isinstance(value, str) else str(value)


def check_int(value, path: str, lo: int, hi: int) -> int:
    """An integer (not a bool) in lo..hi."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(path, f"{show(value)} is not an integer")
    if not lo <= value <= hi:
        raise fail(path, f"{value} out of range {lo}..{hi}")
    return value


def check_vni(value, path: str = "vni") -> int:
    """A VXLAN network identifier: 1..2^24-1."""
    return check_int(value, path, 1, VNI_MAX)


def check_underlay_mtu(value, path: str = "underlay_mtu") -> int:
    """The underlay's IP MTU, in the range the core accepts."""
    return check_int(value, path, *UNDERLAY_MTU_RANGE)


def parse_mac(value, path: str = "mac") -> bytes:
    """Any MAC, 'aa:bb:cc:dd:ee:ff' or 'aa-bb-...' or 6 bytes, as 6 bytes."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) == 6:
            return bytes(value)
        raise fail(path, f"{len(value)} bytes are not a MAC address")
    parts = str(value).replace("-", ":").split(":")
    try:
        if len(parts) != 6 or any(len(x) != 2 for x in parts):
            raise ValueError
        return bytes(int(x, 16) for x in parts)
    except ValueError:
        raise fail(path, f"{value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)") from None


def format_mac(octets: bytes) -> str:
    return ":".join(f"{b:02x}" for b in bytes(octets))


def check_mac(value, path: str = "mac") -> str:
    """A unicast MAC, normalised to lower-case 'aa:bb:cc:dd:ee:ff'."""
    octets = parse_mac(value, path)
    if octets[0] & 1:
        raise fail(path, f"{format_mac(octets)} is a multicast/broadcast MAC, not a unicast one")
    if octets == bytes(6):
        raise fail(path, f"{format_mac(octets)} is the all-zero MAC")
    return format_mac(octets)


def check_ifname(value, path: str = "ifname", reserved: Iterable[str] = ()) -> str:
    """A kernel interface name: 1..15 bytes (UTF-8), no NUL, '/', ':' or
    white space, not '.' or '..' nor one of ``reserved``."""
    if not isinstance(value, str) or not value:
        raise fail(path, f"{show(value)} is not a non-empty string")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size >= IFNAMSIZ:
        raise fail(path, f"{value!r} is not a valid interface name: {size} bytes, longer "
                         f"than {IFNAMSIZ - 1} (the kernel's limit)")
    if value in (".", "..") or any(c in value for c in "/:\0") or \
            any(c.isspace() for c in value):
        raise fail(path, f"{value!r} is not a valid interface name (no '/', ':', NUL or "
                         "white space)")
    if value in reserved:
        raise fail(path, f"{value!r} is reserved")
    return value


def check_keys(value, path: str, allowed: Iterable[str], required: Iterable[str] = (),
               what: str = "key") -> Mapping:
    """A mapping whose keys are strings among ``allowed`` (an unknown one is
    named with the closest known one), with every ``required`` key set."""
    allowed = list(allowed)
    if not isinstance(value, Mapping):
        raise fail(path, f"must be a mapping, not {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise fail(path, f"{what} {key!r} is not a string")
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(allowed)}"
            raise fail(f"{path}.{key}" if path else key, f"unknown {what} ({hint})")
    for key in required:
        if value.get(key) is None:
            raise fail(f"{path}.{key}" if path else key, "is required")
    return value
