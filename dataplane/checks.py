"""Value checks shared by every boundary: the node config, pod specs, the
stores, the engine and the control API.

Each check takes the value and the ``path`` of the field it came from and
either returns the value (normalised where that makes sense) or raises
:class:`~dataplane.errors.ConfigError` whose message starts with the path,
e.g. ``networks[2].vni: 16777216 out of range 1..16777215``. Limits that the
C core also enforces are read from its header (``csrc/dataplane.h``, through
the compiled module), never copied.

What a check knows is the value alone; rules that relate fields to each
other (a gateway inside its subnet, a name used twice) belong to the
structure being checked (:mod:`dataplane.config`, :mod:`dataplane.podspec`).
"""

import difflib
import ipaddress
import json
import os
import re
import stat
import sys
import urllib.parse
from typing import Callable, Iterable, List, Mapping, Optional, Tuple

from ._core import lib
from .errors import ConfigError

#: EAL modes: DPDK with hugepages, or the ``--no-huge`` fallback
MODES = ("hugepages", "fallback")

# limits of the core, from csrc/dataplane.h
VNI_MAX = lib.DP_VNI_MAX
VXLAN_OVERHEAD = lib.DP_VXLAN_OVERHEAD
#: bytes a shaper counts per frame besides the frame (FCS, preamble, gap)
WIRE_OVERHEAD = lib.DP_WIRE_OVERHEAD
SHAPER_RATE_MIN = lib.DP_SHAPER_RATE_MIN
SHAPER_BURST_RANGE = (lib.DP_SHAPER_BURST_MIN, lib.DP_SHAPER_BURST_MAX)
UNDERLAY_MTU_RANGE = (lib.DP_UNDERLAY_MTU_MIN, lib.DP_UNDERLAY_MTU_MAX)
MAX_PLANES = lib.DP_MAX_PLANES
MAX_NETWORKS = lib.DP_MAX_NETS
MAX_WORKERS = lib.DP_MAX_WORKERS
MAX_RX_QUEUES = lib.DP_MAX_RXQ
CAPTURE_SNAPLEN_RANGE = (lib.DP_CAP_SNAPLEN_MIN, lib.DP_CAP_SNAPLEN_MAX)
#: what a capture takes of its ports' frames: rx, tx, both (rx and tx),
#: drop (the frames the core drops, each with its reason) or all three
CAPTURE_DIRECTIONS = ("rx", "tx", "both", "drop", "all")
#: worker lcores the core runs: its last counter row is the control thread's
MAX_WORKER_LCORES = MAX_WORKERS - 1

#: smallest IPv4 MTU (RFC 791)
MIN_MTU = 68
#: kernel interface names: IFNAMSIZ bytes including the terminating NUL
IFNAMSIZ = 16
#: sun_path of a unix socket, minus the terminating NUL
UNIX_PATH_MAX = 107
#: DPDK's memory, MB
MEMORY_MB_RANGE = (64, 1 << 20)
#: the highest CPU number an lcore list may name
MAX_LCORE = lib.DP_MAX_LCORE  # the CPUs the EAL takes as lcores: 0..MAX_LCORE-1
#: interface names a pod's plane cannot take, and why
POD_RESERVED_IFNAMES = {"lo": "the pod's loopback interface"}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:bit/s|bps)?\s*$")
_RATE_UNIT = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
_RATE_MAX = 400 * 10**9


# ------------------------------------------------------------------ errors
def fail(path: str, problem: str) -> ConfigError:
    """The error for field ``path``: ``raise fail("vtep.mac", "...")``."""
    return ConfigError(f"{path}: {problem}" if path else problem)


def show(value) -> str:
    """A value as an error message shows it (as the config file or JSON
    body wrote it: true, false, null - not Python's True, False, None)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, str) else str(value)


def join(path: str, key) -> str:
    """The path of ``key`` inside the mapping at ``path``."""
    return f"{path}.{key}" if path else str(key)


def hint(value, known: Iterable[str]) -> str:
    """What to say about ``value``, not one of ``known``: the closest known
    one, or the whole list."""
    known = list(known)
    if isinstance(value, str):
        close = difflib.get_close_matches(value, known, n=1)
        if close:
            return f"did you mean {close[0]!r}?"
    return f"known: {', '.join(known) or 'none'}"


# ------------------------------------------------------------ plain values
def check_int(value, path: str, lo: int, hi: int) -> int:
    """An integer (not a bool) in lo..hi."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(path, f"{show(value)} is not an integer")
    if not lo <= value <= hi:
        raise fail(path, f"{value} out of range {lo}..{hi}")
    return value


def check_pow2(value, path: str, lo: int = 1, hi: int = 1 << 31) -> int:
    """A power of two in lo..hi (ring and queue sizes)."""
    check_int(value, path, lo, hi)
    if value & (value - 1):
        raise fail(path, f"{value} is not a power of two")
    return value


def check_bool(value, path: str) -> bool:
    if not isinstance(value, bool):
        raise fail(path, f"{show(value)} is not true or false")
    return value


def not_a_string(value) -> str:
    """``value`` is not a non-empty string: what to say, with how to write a
    name YAML took for a boolean (``node: no``)."""
    said = f"{show(value)} is not a non-empty string"
    if isinstance(value, bool):
        words = "yes, on or true" if value else "no, off or false"
        said += f" (YAML reads {words} unquoted as {show(value)}: quote the name)"
    return said


def check_string(value, path: str) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise fail(path, not_a_string(value))
    return value


def check_name(value, path: str, what: str = "name") -> str:
    """An object's name (node, network): letters, digits, '.', '_', '-'."""
    check_string(value, path)
    if not _NAME_RE.fullmatch(value):
        raise fail(
            path,
            f"{value!r} is not a valid {what} (letters, digits, '.', '_', "
            "'-'; at most 63 characters, starting with a letter or digit)",
        )
    return value


def check_known(
    value, path: str, known: Iterable[str], what: str = "key", suggest: bool = True
) -> str:
    """``value`` among ``known``, else an error naming the closest known one
    (or, without ``suggest``, all of them)."""
    known = list(known)
    if not isinstance(value, str) or value not in known:
        why = hint(value, known) if suggest else hint(None, known)
        raise fail(path, f"unknown {what} {value!r} ({why})")
    return value


def check_keys(
    value,
    path: str,
    allowed: Iterable[str],
    required: Iterable[str] = (),
    what: str = "key",
    name: str = "",
) -> Mapping:
    """A mapping whose keys are strings among ``allowed`` (an unknown one is
    named by its path, with the closest known one), with every ``required``
    key set. ``name`` names the mapping itself where it has no path (the top
    of a document): ``configuration: must be a mapping``."""
    allowed = list(allowed)
    if not isinstance(value, Mapping):
        raise fail(path or name, f"must be a mapping, not {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise fail(path or name, f"{what} {key!r} is not a string")
        if key not in allowed:
            raise fail(join(path, key), f"unknown {what} ({hint(key, allowed)})")
    for key in required:
        if value.get(key) is None:
            raise fail(join(path, key), "is required")
    return value


def check_list(value, path: str, what: str = "list") -> list:
    """A list (None: an empty one)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise fail(path, f"must be a {what}, not {type(value).__name__}")
    return value


def load_json_object(
    data, what: str, explain: Optional[Callable[[str], Optional[str]]] = None
) -> dict:
    """A JSON object from text, UTF-8 bytes or a dict already decoded; a key
    given twice is refused. ``explain(text)`` may name a known mistake in
    invalid JSON better than the parser does (its position is added)."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{what}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if isinstance(data, str):
        check_json_depth(data, what)
        try:
            data = json.loads(data, object_pairs_hook=_no_duplicates)
        except _DuplicateKey as e:
            raise ConfigError(f"{what}: key {e.args[0]!r} is given twice") from None
        except json.JSONDecodeError as e:
            where = f"{e.msg} at line {e.lineno} column {e.colno} (char {e.pos})"
            better = explain(e.doc) if explain else None
            if better:
                raise ConfigError(f"{better} (invalid JSON: {where})") from None
            raise ConfigError(f"{what} is not valid JSON: {where}") from None
        except ValueError as e:  # e.g. an integer of more digits than Python converts
            raise ConfigError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a JSON object, not {type(data).__name__}")
    return data


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


# ------------------------------------------------------- the core's limits
def check_mode(value, path: str = "mode") -> str:
    """An EAL mode, one of :data:`MODES`."""
    if value not in MODES:
        raise fail(path, f"{show(value)} is not one of {', '.join(MODES)}")
    return value


def usable_cpus() -> List[int]:
    """The CPUs this process may run on: its affinity (a container's cpuset
    or ``taskset`` narrows it), else every CPU of the machine."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def absent_cpus(cpus) -> Tuple[List[int], str]:
    """The CPUs of ``cpus`` this process may not run on (absent from the
    machine, or outside its cpuset), and the ones it may, as words."""
    usable = usable_cpus()
    have = set(usable)
    return [c for c in cpus if c not in have], f"the CPUs this process may use: {_ranges(usable)}"


def _ranges(nums) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out, nums = [], sorted(nums)
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ",".join(out)


def hugepages_free(meminfo: str = "/proc/meminfo") -> Optional[Tuple[int, int]]:
    """(free hugepages, page size in kB) of the default size, or None where
    the kernel does not say."""
    got = {}
    try:
        with open(meminfo) as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("HugePages_Free", "Hugepagesize"):
                    got[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if len(got) != 2:
        return None
    return got["HugePages_Free"], got["Hugepagesize"]


def check_lcores(value, path: str = "lcores") -> List[int]:
    """The EAL's lcores: the control thread first, then the workers (one at
    least, :data:`MAX_WORKER_LCORES` at most); distinct CPU numbers."""
    if not isinstance(value, (list, tuple)):
        raise fail(path, f"{show(value)} is not a list of CPU numbers")
    if len(value) < 2:
        raise fail(path, "needs at least two CPUs (one control thread, one worker)")
    seen = set()
    for i, c in enumerate(value):
        check_int(c, f"{path}[{i}]", -sys.maxsize, sys.maxsize)
        if c < 0:
            raise fail(f"{path}[{i}]", f"{c} is not a CPU number (0..{MAX_LCORE - 1})")
        if c >= MAX_LCORE:
            raise fail(
                f"{path}[{i}]",
                f"CPU {c}: DPDK takes CPUs 0..{MAX_LCORE - 1} as lcores (RTE_MAX_LCORE); "
                "pick a worker CPU below it",
            )
        if c in seen:
            raise fail(f"{path}[{i}]", f"CPU {c} is listed twice")
        seen.add(c)
    if len(value) - 1 > MAX_WORKER_LCORES:
        raise fail(path, f"at most {MAX_WORKER_LCORES} workers (plus the control thread)")
    return list(value)


def check_memory_mb(value, path: str = "memory_mb") -> int:
    return check_int(value, path, *MEMORY_MB_RANGE)


def check_vni(value, path: str = "vni") -> int:
    """A VXLAN network identifier: 1..2^24-1."""
    return check_int(value, path, 1, VNI_MAX)


def check_underlay_mtu(value, path: str = "underlay_mtu") -> int:
    """The underlay's IP MTU, in the range the core accepts."""
    return check_int(value, path, *UNDERLAY_MTU_RANGE)


def check_rx_queues(value, path: str = "rx_queues") -> int:
    """Rx queues of a port: 1..MAX_RX_QUEUES."""
    return check_int(value, path, 1, MAX_RX_QUEUES)


def check_udp_port(value, path: str = "udp_port") -> int:
    return check_int(value, path, 1, 65535)


def check_dscp(value, path: str = "dscp") -> int:
    return check_int(value, path, 0, 63)


def check_rate(value, path: str) -> int:
    """bit/s: an integer, or a string such as '100M', '2.5G', '64k'; 0 is
    none, anything else at least SHAPER_RATE_MIN (8000)."""
    if isinstance(value, bool):
        raise fail(path, f"{show(value)} is not a rate")
    if isinstance(value, int):
        n = value
    else:
        m = _RATE_RE.match(str(value))
        if not m:
            raise fail(path, f"{show(value)} is not a rate in bit/s (e.g. 100M, 2.5G)")
        f = float(m.group(1)) * _RATE_UNIT[m.group(2).lower()]
        if not f <= _RATE_MAX:  # also what float() made infinite
            raise fail(path, f"{show(value)} out of range 0..400G")
        if 0 < f < SHAPER_RATE_MIN:  # 0.5 is no 0 (none)
            raise fail(path, f"{show(value)} is below {SHAPER_RATE_MIN} bit/s (use 0 for none)")
        n = int(f)
    if not 0 <= n <= _RATE_MAX:
        raise fail(path, f"{n} bit/s out of range 0..400G")
    if 0 < n < SHAPER_RATE_MIN:
        raise fail(path, f"{n} bit/s is below {SHAPER_RATE_MIN} (use 0 for none)")
    return n


# ---------------------------------------------------------------- Ethernet
_OCTET_RE = re.compile(r"[0-9A-Fa-f]{2}")  # int(x, 16) would take "+2" or " 2"


def parse_mac(value, path: str = "mac") -> bytes:
    """Any MAC, 'aa:bb:cc:dd:ee:ff' or 'aa-bb-...' or 6 bytes, as 6 bytes."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) == 6:
            return bytes(value)
        raise fail(path, f"{len(value)} bytes are not a MAC address")
    parts = str(value).replace("-", ":").split(":")
    try:
        if len(parts) != 6 or not all(_OCTET_RE.fullmatch(x) for x in parts):
            raise ValueError
        return bytes(int(x, 16) for x in parts)
    except ValueError:
        raise fail(path, f"{value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)") from None


def format_mac(octets: bytes) -> str:
    return bytes(octets).hex(":")


def check_mac(value, path: str = "mac") -> str:
    """A unicast MAC, normalised to lower-case 'aa:bb:cc:dd:ee:ff'."""
    octets = parse_mac(value, path)
    if octets[0] & 1:
        raise fail(path, f"{format_mac(octets)} is a multicast/broadcast MAC, not a unicast one")
    if octets == bytes(6):
        raise fail(path, f"{format_mac(octets)} is the all-zero MAC")
    return format_mac(octets)


def check_ifname(value, path: str = "ifname", reserved: Mapping[str, str] = None) -> str:
    """A kernel interface name: 1..15 bytes (UTF-8), no NUL, '/', ':', '%'
    or white space, not '.' or '..'. ``reserved``: names refused, with why
    (e.g. :data:`POD_RESERVED_IFNAMES`)."""
    if not isinstance(value, str) or not value:
        raise fail(path, not_a_string(value))
    size = len(value.encode("utf-8", "surrogatepass"))
    if size >= IFNAMSIZ:
        raise fail(
            path,
            f"{value!r} is not a valid interface name: {size} bytes, longer "
            f"than {IFNAMSIZ - 1} (the kernel's limit)",
        )
    if value in (".", "..") or any(c in value for c in "/:\0") or any(c.isspace() for c in value):
        raise fail(
            path, f"{value!r} is not a valid interface name (no '/', ':', NUL or white space)"
        )
    if "%" in value:  # the kernel makes 'sig%d' sig0, sig1, ...: never the name asked for
        raise fail(
            path,
            f"{value!r} is not an interface name but a kernel template (no '%': the kernel "
            "would number it)",
        )
    if reserved and value in reserved:
        raise fail(path, f"{value!r} is {reserved[value]}")
    return value


# -------------------------------------------------------------------- IPv4
def parse_ipv4(value, path: str = "ip") -> ipaddress.IPv4Address:
    """An IPv4 address 'a.b.c.d' (or an IPv4Address)."""
    if isinstance(value, ipaddress.IPv4Address):
        return value
    if not isinstance(value, str):
        raise fail(path, f"{show(value)} is not an IPv4 address")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise fail(path, f"{value!r} is not an IPv4 address") from None


def parse_ipv4_interface(value, path: str, need_prefix: bool = True) -> ipaddress.IPv4Interface:
    """An address with its subnet, 'a.b.c.d/len' (without ``need_prefix``
    'a.b.c.d' is one too, as /32)."""
    if isinstance(value, ipaddress.IPv4Interface):
        return value
    problem = f"{show(value)} is not an IPv4 address with prefix length (a.b.c.d/len)"
    if not isinstance(value, str) or (need_prefix and "/" not in value):
        raise fail(path, problem)
    try:
        return ipaddress.IPv4Interface(value)
    except ValueError:
        raise fail(path, problem) from None


def _parse_subnet(value, path: str, kind, form: str):
    """A subnet of ``kind`` (IPv4Network, IPv6Network) written ``form``,
    without host bits set."""
    what = "IPv4" if kind is ipaddress.IPv4Network else "IPv6"
    if not isinstance(value, str) or "/" not in value:
        raise fail(path, f"{show(value)} is not an {what} subnet ({form})")
    try:
        return kind(value)
    except ValueError as e:
        raise fail(path, f"{value!r} is not an {what} subnet ({e})") from None


def parse_ipv4_subnet(value, path: str) -> ipaddress.IPv4Network:
    """A subnet 'a.b.c.0/len' (no host bits set)."""
    return _parse_subnet(value, path, ipaddress.IPv4Network, "a.b.c.d/len")


def parse_ipv6_subnet(value, path: str) -> ipaddress.IPv6Network:
    """An IPv6 subnet 'x:y::/len' (no host bits set)."""
    return _parse_subnet(value, path, ipaddress.IPv6Network, "x:y::/len")


def parse_ipv6(value, path: str = "ip6") -> ipaddress.IPv6Address:
    """A single IPv6 address 'x:y::z' (no prefix, no zone)."""
    if not isinstance(value, str) or "/" in value or "%" in value:
        raise fail(path, f"{show(value)} is not an IPv6 address")
    try:
        return ipaddress.IPv6Address(value)
    except ValueError:
        raise fail(path, f"{value!r} is not an IPv6 address") from None


def check_vtep_ip(value, path: str = "vtep") -> ipaddress.IPv4Address:
    """A VTEP's address: unicast - not "this network" (0/8), loopback,
    multicast nor reserved (240/4, the limited broadcast with it), which the
    core refuses as well and whose frames it drops."""
    ip = parse_ipv4(value, path)
    if ip.packed[0] in (0, 127) or ip.is_multicast or ip.is_reserved:
        raise fail(path, f"{ip} cannot be a VTEP address")
    return ip


# ------------------------------------------------------- sockets and URLs
def check_abspath(value, path: str, base_dir: Optional[str] = None) -> str:
    """A file path, relative ones taken from ``base_dir`` (default: the
    current directory); returned absolute and normalised."""
    check_string(value, path)
    if "\0" in value:
        raise fail(path, "contains a NUL character")
    if not os.path.isabs(value):
        value = os.path.join(base_dir or os.getcwd(), value)
    return os.path.normpath(value)


def check_unix_socket_path(value, path: str, base_dir: Optional[str] = None) -> str:
    """:func:`check_abspath`, short enough for a unix socket."""
    value = check_abspath(value, path, base_dir)
    if len(value.encode()) > UNIX_PATH_MAX:
        raise fail(
            path, f"{value!r} is longer than {UNIX_PATH_MAX} bytes (limit of a unix socket path)"
        )
    return value


def check_dirs_on_the_way(d: str, path: str):
    """``d`` (a directory the service makes if missing) and each directory
    above it, as far as they exist, are directories: a file in the way is
    refused here rather than when the service makes ``d``."""
    p = d
    while True:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            parent = os.path.dirname(p)
            if parent == p:
                return
            p = parent
            continue
        except OSError as e:
            raise fail(path, f"{p}: {e.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise fail(path, f"{p} is a file, not a directory: {d} cannot be made there")
        return


def check_not_a_file(sock: str, path: str):
    """A socket path the service replaces at its start: anything there but
    a socket (a dead run's) is refused, not deleted."""
    try:
        st = os.lstat(sock)
    except OSError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a file, not a socket"
        raise fail(
            path,
            f"{sock} exists and is {kind}: the service replaces what is at this path "
            "when it starts; give it a path of its own",
        )


def split_listen(listen: str) -> Tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); checked by :func:`check_listen`."""
    host, _, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def check_listen(value, path: str) -> Optional[str]:
    """A TCP listen address 'host:port' ('[v6]:port'); None or false: none."""
    if value is None or value is False:
        return None
    if isinstance(value, int) and not isinstance(value, bool):  # 'listen: 9464'
        raise fail(path, f"{value} is not host:port: write it as '127.0.0.1:{value}' (in quotes)")
    check_string(value, path)
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise fail(path, f"{value!r} is not host:port (e.g. 127.0.0.1:9464)")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise fail(path, f"{host[1:-1]!r} is not an IPv6 address") from None
    elif ":" in host:
        raise fail(path, f"{value!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
    if not port:
        raise fail(path, f"{value!r} has no port (e.g. 127.0.0.1:9464)")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise fail(path, f"port {port!r} out of range 1..65535")
    return value


def check_etcd_endpoints(value, path: str) -> Tuple[str, ...]:
    """etcd members' client URLs, 'http(s)://host:port' each, normalised."""
    if isinstance(value, str):
        value = [value]  # one URL written without brackets
    if not isinstance(value, list) or not value:
        raise fail(path, f"{show(value)} is not a non-empty list of URLs (http://host:port)")
    out = []
    for i, url in enumerate(value):
        p = f"{path}[{i}]"
        if not isinstance(url, str) or "://" not in url:
            raise fail(p, f"{show(url)} is not a URL (http://host:port)")
        try:
            u = urllib.parse.urlsplit(url)
        except ValueError as e:  # e.g. an IPv6 host with its ']' missing
            raise fail(p, f"{url!r} is not a URL: {e}") from None
        if u.scheme not in ("http", "https"):
            raise fail(p, f"{url!r}: scheme {u.scheme!r} is not http or https")
        try:
            port = u.port
        except ValueError:
            raise fail(p, f"{url!r}: the port is not a number in 1..65535") from None
        if not u.hostname:
            raise fail(p, f"{url!r} has no host")
        if any(c.isspace() or c in "\0\\" for c in u.hostname):
            raise fail(
                p,
                f"{url!r}: the host {u.hostname!r} has white space or another "
                "character no host name has",
            )
        if port is None:
            raise fail(p, f"{url!r} has no port (etcd's client port is usually 2379)")
        if port == 0:
            raise fail(p, f"{url!r}: the port is not a number in 1..65535")
        if u.path not in ("", "/") or u.query or u.fragment or u.username or u.password:
            raise fail(p, f"{url!r}: give only scheme, host and port (http://host:port)")
        url = f"{u.scheme}://{u.netloc}"
        if url in out:
            raise fail(p, f"{url!r} is listed in {path}[{out.index(url)}] already")
        out.append(url)
    return tuple(out)


def check_etcd_prefix(value, path: str) -> str:
    """The key prefix a cluster's state lives under: '/name...', no trailing '/'."""
    check_string(value, path)
    if not value.startswith("/"):
        raise fail(path, f"{value!r} does not start with '/' (e.g. /dataplane)")
    if any(c.isspace() or c == "\0" for c in value):
        raise fail(path, f"{value!r} contains white space or NUL")
    value = value.rstrip("/")
    if not value:
        raise fail(path, "'/' alone would mix the cluster's keys with others' (e.g. /dataplane)")
    return value


# ------------------------------------------------------- kernel-port drivers
#: drivers for kernel interfaces (pod veths, a kernel uplink): the core's
#: native AF_PACKET driver, or DPDK's ``net_af_xdp`` (an XDP program on the
#: interface redirects every frame to an AF_XDP socket)
KERNEL_DRIVERS = ("afpacket", "af_xdp")
#: the largest IP MTU ``net_af_xdp`` carries here: DPDK 22.11 lays its UMEM
#: over the core's mbufs (2048-byte data room) and the kernel keeps 256 bytes
#: of XDP headroom in front of each frame, leaving 1792 bytes of Ethernet
#: frame; the kernel drops a longer one before the socket sees it
#: (measured on veth: 1778 passes, 1779 does not)
AF_XDP_MAX_MTU = 2048 - 256 - 14
#: mbufs each ``net_af_xdp`` port takes from the core's pool for its fill
#: ring when it starts, and keeps (DPDK 22.11: ETH_AF_XDP_DFLT_NUM_DESCS)
AF_XDP_FILL_MBUFS = 2048
#: the name every ``net_af_xdp`` port of the core starts with (its vdev)
AF_XDP_PORT_PREFIX = "net_af_xdp"
#: an mbuf of the core's pool, bytes of memory (2176-byte buffer, the mbuf
#: header, the mempool's own header), rounded up
MBUF_BYTES = 2560
#: mbufs in the core's pool (engine.EngineConfig.n_mbufs) unless
#: kernel_driver af_xdp makes it larger (config.af_xdp_pool_size)
POOL_MBUFS = 16383


def is_af_xdp_port(name) -> bool:
    """Whether the core's port ``name`` is a ``net_af_xdp`` port (whose link
    is its kernel interface's, not the driver's)."""
    return str(name).startswith(AF_XDP_PORT_PREFIX)


def check_kernel_driver(value, path: str = "kernel_driver") -> str:
    """A driver for kernel interfaces, one of :data:`KERNEL_DRIVERS`."""
    if value not in KERNEL_DRIVERS:
        raise fail(path, f"{show(value)} is not one of {', '.join(KERNEL_DRIVERS)}")
    return value


def check_af_xdp_mtu(value: int, path: str, setting: str = "kernel_driver") -> int:
    """An IP MTU that the ``af_xdp`` kernel driver can carry whole;
    ``setting`` is the field that chose it."""
    if value > AF_XDP_MAX_MTU:
        raise fail(
            path,
            f"{value} is more than {setting} af_xdp carries ({AF_XDP_MAX_MTU}: "
            f"2048-byte buffers less the kernel's XDP headroom); lower it or use "
            f"{setting} afpacket",
        )
    return value


# ------------------------------------------------ names and MACs of the API
#: a pod's name: letters, digits, '.', '_', '-'; a DNS subdomain (253) fits
POD_NAME_MAX = 253
_POD_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: JSON texts nest at most this deep (objects and arrays), so that a
#: hostile text cannot exhaust the parser's recursion
JSON_MAX_DEPTH = 32
_JSON_TOKEN_RE = re.compile(r'[\[\]{}"\\]')
#: MACs a pod is never given, though unicast: IANA's block (RFC 7042:
#: VRRP's virtual router MACs, protocol and documentation addresses)
RESERVED_MAC_PREFIXES = {
    "00:00:5e": "IANA's block (RFC 7042: VRRP virtual router, protocol and documentation MACs)"
}


def brief(value, limit: int = 64) -> str:
    """``value`` as an error message shows it, cut after ``limit`` characters."""
    text = show(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_pod_name(value, path: str = "name") -> str:
    """A pod's name: 1..253 letters, digits, '.', '_', '-', starting with a
    letter or digit (no '&', '=', '/', white space or control characters,
    so it is safe in a URL, a key and a log line)."""
    if not isinstance(value, str) or not value:
        raise fail(path, f"{brief(value)} is not a pod name (a non-empty string)")
    if len(value) > POD_NAME_MAX or not _POD_NAME_RE.fullmatch(value):
        raise fail(
            path,
            f"{brief(value)} is not a valid pod name (letters, digits, '.', '_', '-'; "
            f"at most {POD_NAME_MAX} characters, starting with a letter or digit)",
        )
    return value


def check_json_depth(text: str, what: str, limit: int = JSON_MAX_DEPTH) -> None:
    """Refuse JSON text whose objects and arrays nest deeper than ``limit``
    (brackets inside strings do not count)."""
    depth, in_string, skip = 0, False, -1
    for m in _JSON_TOKEN_RE.finditer(text):
        at, c = m.start(), m.group()
        if at == skip:  # the character after a backslash in a string
            continue
        if in_string:
            if c == "\\":
                skip = at + 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > limit:
                raise ConfigError(f"{what}: nested deeper than {limit} levels")
        elif c in "]}":
            depth -= 1


def check_pod_mac(value, path: str) -> str:
    """A MAC a pod may ask for: unicast, not all-zero (:func:`check_mac`),
    and not in :data:`RESERVED_MAC_PREFIXES`."""
    mac = check_mac(value, path)
    why = RESERVED_MAC_PREFIXES.get(mac[:8])
    if why:
        raise fail(path, f"{mac} is reserved: {mac[:8]}:xx:xx:xx is {why}")
    return mac


#: the longest path the kernel takes (PATH_MAX, with its NUL)
PATH_MAX = 4096


def check_netns_path(value, path: str = "netns") -> str:
    """A network namespace's path: absolute, such as /var/run/netns/NAME or
    /proc/PID/ns/net (no NUL, shorter than PATH_MAX)."""
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or "\0" in value
        or len(value.encode("utf-8", "surrogatepass")) >= PATH_MAX
    ):
        raise fail(
            path,
            f"{brief(value)} must be a path such as /var/run/netns/NAME or /proc/PID/ns/net",
        )
    return value


def check_json_document(value, path: str):
    """A JSON document given inline: an object, or JSON text of one (parsed
    later, by what reads it)."""
    if not isinstance(value, (str, dict)):
        raise fail(path, f"must be a JSON object or JSON text, not {type(value).__name__}")
    return value


#: extra addresses a pod port may send from besides its own (the core's
#: table size, less the pod's own address / its IPv6 link-local)
GUARD_MAX_IP4 = lib.DP_GUARD_MAX_IP4
GUARD_MAX_IP6 = lib.DP_GUARD_MAX_IP6


def check_allowed_addresses(value, path: str = "allowed_addresses") -> List[str]:
    """A list of single IPv4 or IPv6 unicast addresses (a floating address
    of VRRP/keepalived), normalised; at most GUARD_MAX_IP4 - 1 IPv4 and
    GUARD_MAX_IP6 - 1 IPv6 ones."""
    if not isinstance(value, list):
        raise fail(path, f"{show(value)} is not a list of addresses")
    out = []
    for i, a in enumerate(value):
        p = f"{path}[{i}]"
        if not isinstance(a, str) or "/" in a:
            raise fail(p, f"{show(a)} is not a single IPv4 or IPv6 address")
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            raise fail(p, f"{show(a)} is not an IPv4 or IPv6 address") from None
        if ip.is_multicast or ip.is_unspecified or ip.is_loopback:
            raise fail(p, f"{ip} is not a unicast address")
        if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address(0xFFFFFFFF):
            raise fail(p, f"{ip} is the broadcast address")
        if str(ip) in out:
            raise fail(p, f"{ip} is listed twice")
        out.append(str(ip))
    n4 = sum(1 for a in out if ":" not in a)
    if n4 > GUARD_MAX_IP4 - 1 or len(out) - n4 > GUARD_MAX_IP6 - 1:
        raise fail(
            path,
            f"at most {GUARD_MAX_IP4 - 1} IPv4 and {GUARD_MAX_IP6 - 1} IPv6 addresses "
            f"(given {n4} and {len(out) - n4})",
        )
    return out


#: storm control of pod ports: packets/s and burst (packets) limits, the
#: core's own (dp_guard.c)
STORM_PPS_MAX = 100_000_000
STORM_BURST_MAX = 1_000_000


def check_storm(value, path: str = "storm_control") -> Tuple[int, int]:
    """Storm control as (pps, burst): a mapping {"pps": N, "burst": M}; pps
    0 switches it off."""
    if not isinstance(value, dict):
        raise fail(path, f'{show(value)} is not a mapping {{"pps": N, "burst": M}}')
    for k in value:
        check_known(k, path, ("pps", "burst"), "key")
    pps = check_int(value.get("pps", 0), join(path, "pps"), 0, STORM_PPS_MAX)
    burst = check_int(
        value.get("burst", max(1, pps // 10)), join(path, "burst"), 1, STORM_BURST_MAX
    )
    return pps, burst


def ipv6_link_local(mac: bytes) -> ipaddress.IPv6Address:
    """The link-local address a kernel makes from ``mac`` (EUI-64, RFC 4291)."""
    eui = bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:6]
    return ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui)
