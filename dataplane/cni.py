"""``dataplane-cni``: the CNI plugin, a thin shim over the node service.

A container runtime (or Multus, once per delegate) execs it with the CNI
environment (``CNI_COMMAND``, ``CNI_CONTAINERID``, ``CNI_NETNS``,
``CNI_IFNAME``, ``CNI_ARGS``, ``CNI_PATH``) and the network configuration
on stdin::

    {"cniVersion": "1.0.0", "name": "media-net", "type": "dataplane-cni",
     "network": "net3", "plane": "media", "socket": "/run/dataplane/api.sock",
     "kind": "veth", "ip": "10.3.0.7", "mac": "02:00:00:00:03:07"}

``network`` is required; ``plane`` (checked against the network's),
``socket`` (default :data:`DEFAULT_SOCKET`), ``kind`` (veth, memif,
vhost-user, vf; default veth), ``ip``, ``mac`` and ``timeout`` (seconds,
default 30) are optional. A fixed address and MAC may also come from the
runtime (``runtimeConfig.ips``, ``runtimeConfig.mac``, or ``IP=``/``MAC=``
in ``CNI_ARGS``).

Every verb is forwarded to the node service's control API
(:mod:`dataplane.attach`) over its unix socket; the plugin keeps no state.
Errors are the specification's JSON on stdout with its codes: 1
incompatible version, 4 bad environment, 6 undecodable input, 7 invalid
network configuration, 11 try again later (the service does not answer),
50 not available and 51 not available with limited connectivity (STATUS),
and our own from 100 (:data:`ERR_EXISTS`,
:data:`ERR_SERVICE`, :data:`ERR_CHECK`).

Only the standard library is imported, and of it only modules built into
the interpreter: JSON is read and written by the interpreter's own C
scanner and encoder (``_json``, what :mod:`json` itself uses), the socket
is ``_socket``'s. Importing :mod:`json` and :mod:`socket` pulls in ``re``
and ``enum`` and took longer than the interpreter's own start (20-30 ms of
a 40 ms run here); a runtime pays the plugin's start on every ADD and DEL.
Where ``_json`` is missing or refuses the input, :mod:`json` is imported
after all (its error messages are the ones given).
"""

import _socket
import os
import sys
import time
from errno import ECONNREFUSED as _ECONNREFUSED
from errno import ENOENT as _ENOENT

#: every version of the specification the plugin speaks, oldest first
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
DEFAULT_SOCKET = "/run/dataplane/api.sock"
DEFAULT_TIMEOUT_S = 30
MAX_TIMEOUT_S = 3600

# the specification's error codes
ERR_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_NOT_AVAILABLE = 50
ERR_LIMITED = 51  # not available, and existing pods may have limited connectivity
# ours
ERR_EXISTS = 100  # an interface CNI_IFNAME is in the container already (ours or another's)
ERR_SERVICE = 101  # the node service failed the request
ERR_CHECK = 102  # CHECK found a difference
ERR_IN_USE = 103  # something the attachment needs is another's (a VF, a host ifname)
ERR_EXHAUSTED = 104  # the node is out of something the attachment needs
ERR_INTERNAL = 999  # the plugin failed on input it did not foresee

_IFNAMSIZ = 16
_MAX_CONTAINER_ID = 128  # the node service's limit (dataplane.attach.check_container_id)
_KINDS = ("veth", "memif", "vhost-user", "vf")


class CNIError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details
        #: the request went out and no answer came: the service may do it yet
        self.unanswered = False


# ================================================================== JSON
_WS = " \t\n\r"


class _ScanContext:
    """What ``_json.make_scanner`` reads of a ``json.JSONDecoder``: its
    defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity, as json reads them

    def __init__(self):
        self.memo = {}


def _make_codec():
    try:
        import _json

        encode = _json.make_encoder(
            None, None, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True
        )
        return _json.make_scanner, encode
    except (ImportError, AttributeError, TypeError):
        return None, None


_make_scanner, _encode = _make_codec()


def json_loads(data):
    """``json.loads(data)`` (bytes or str) without importing :mod:`json`."""
    if _make_scanner is not None:
        try:
            text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        except UnicodeDecodeError:
            text = None
        if isinstance(text, str) and not text.startswith("\ufeff"):
            i, n = 0, len(text)
            while i < n and text[i] in _WS:
                i += 1
            try:
                obj, end = _make_scanner(_ScanContext())(text, i)
            except Exception:  # noqa: BLE001 - not JSON (its error needs json.decoder loaded)
                end = -1
            else:
                while end < n and text[end] in _WS:
                    end += 1
                if end == n:
                    return obj
    import json  # not JSON: json's own error, as json words it

    return json.loads(data)


def json_dumps(obj) -> str:
    """``json.dumps(obj)`` without importing :mod:`json`."""
    if _encode is not None:
        return "".join(_encode(obj, 0))
    import json

    return json.dumps(obj)


def _version_tuple(v: str):
    try:
        return tuple(int(x) for x in v.split("."))
    except (AttributeError, ValueError):
        return None


# ======================================================= the service's API
class ServiceDown(Exception):
    """The node service did not answer."""


class ServiceBusy(ServiceDown):
    """The node service is there but takes no more connections now."""


class ServiceGone(ServiceDown):
    """No node service runs: its socket is missing, or nothing listens on it."""


class NoAnswer(ServiceDown):
    """The request went out and no answer came back: the service may have
    done it, or do it yet."""


def api_call(sock_path: str, method: str, endpoint: str, body=None, timeout=DEFAULT_TIMEOUT_S):
    """One HTTP/1.0 request on the service's unix socket: (status, JSON).
    ServiceDown if the socket is missing, refuses, or times out; NoAnswer
    once the request may have reached the service."""
    data = json_dumps(body).encode() if body is not None else b""
    head = (
        f"{method} {endpoint} HTTP/1.0\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(sock_path)
        except BlockingIOError:  # its listen queue is full: it is there, and busy
            raise ServiceBusy(f"the node service on {sock_path} is busy (its queue is full)")
        except OSError as e:
            gone = ServiceGone if e.errno in (_ENOENT, _ECONNREFUSED) else ServiceDown
            raise gone(f"the node service does not answer on {sock_path}: {e.strerror or e}")
        try:
            s.sendall(head.encode() + data)
            chunks = []
            while True:
                c = s.recv(65536)
                if not c:
                    break
                chunks.append(c)
        except OSError as e:  # incl. a timeout
            raise NoAnswer(f"the node service on {sock_path} did not answer: {e}")
    finally:
        s.close()
    raw = b"".join(chunks)
    head, _, payload = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
        obj = json_loads(payload or b"null")
    except (IndexError, ValueError):
        if not raw:
            raise NoAnswer(f"the node service on {sock_path} closed without an answer")
        raise NoAnswer(f"the node service on {sock_path} gave an unreadable answer")
    return status, obj


def _store_down(status, obj) -> bool:
    """Is this the service's 503 for its state store not answering, or
    refusing the node (``"unavailable"``, ``"refused"``), rather than a
    busy service's?"""
    return (
        status == 503
        and isinstance(obj, dict)
        and (obj.get("unavailable") is True or obj.get("refused") is True)
    )


def _answer(conf, method, endpoint, body=None):
    """(status, answer) of one call; a busy service (a node starting many
    pods at once: 503, or its listen queue full) is asked again once a
    second while the configuration's timeout lasts. Not one whose store
    does not answer or refuses the node: the service waited for it already,
    and says so at once. ServiceDown when it does not answer."""
    until = time.monotonic() + conf["timeout"]
    while True:
        try:
            status, obj = api_call(conf["socket"], method, endpoint, body, conf["timeout"])
        except ServiceBusy as e:
            status, obj = 503, {"error": str(e)}
        if status != 503 or _store_down(status, obj) or time.monotonic() + 1.0 >= until:
            return status, obj
        time.sleep(1.0)


def _service(conf, method, endpoint, body=None):
    """The service's answer to one call, or CNIError with its code: 11 when
    it does not answer, or stays busy (503) until the timeout; 7 when it
    refuses the configuration, 3 when the namespace is gone, 100 for an
    attachment that exists, 101 otherwise. (The plugin imports nothing of
    the package, so this loop is its own, not ``dataplane.api.call``'s.)"""
    try:
        status, obj = _answer(conf, method, endpoint, body)
    except ServiceDown as e:
        err = CNIError(ERR_TRY_AGAIN, "try again later", str(e))
        err.unanswered = isinstance(e, NoAnswer)
        raise err
    if status == 200:
        return obj
    msg = (obj or {}).get("error", f"HTTP {status}") if isinstance(obj, dict) else str(obj)
    if status == 503:
        raise CNIError(ERR_TRY_AGAIN, "try again later", msg)
    code = {400: ERR_CONFIG, 404: ERR_UNKNOWN_CONTAINER, 409: ERR_EXISTS}.get(status, ERR_SERVICE)
    if status == 409 and isinstance(obj, dict) and obj.get("conflict") == "in_use":
        code = ERR_IN_USE
    if status == 507:
        code = ERR_EXHAUSTED
    raise CNIError(code, msg)


# ================================================================== input
def _env(environ, name, required=True) -> str:
    v = environ.get(name, "")
    if required and not v:
        raise CNIError(
            ERR_ENV, f"{name} is not set", f"the {name} environment variable is required"
        )
    return v


def _check_env(environ, command):
    """CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS as the command needs them."""
    out = {"args": _cni_args(environ.get("CNI_ARGS", ""))}
    if command in ("GC", "STATUS", "VERSION"):
        return out
    cid = _env(environ, "CNI_CONTAINERID")
    if (
        len(cid) > _MAX_CONTAINER_ID
        or not (cid[0].isascii() and cid[0].isalnum())
        or not all(c.isascii() and (c.isalnum() or c in "_.-") for c in cid)
    ):
        if command == "DEL":  # never added: nothing to delete, which DEL
            out["never_added"] = True  # answers with success
        else:
            raise CNIError(
                ERR_ENV,
                f"CNI_CONTAINERID: {cid!r} is not a container ID",
                f"1..{_MAX_CONTAINER_ID} letters, digits, '_', '.', '-', starting with a letter "
                "or digit",
            )
    ifname = _env(environ, "CNI_IFNAME")
    bad = _bad_ifname(ifname)
    if bad:
        if command == "DEL":  # never added either: DEL answers with success
            out["never_added"] = True
        else:
            raise CNIError(ERR_ENV, f"CNI_IFNAME: {ifname!r} {bad}")
    netns = _env(environ, "CNI_NETNS", required=command != "DEL")
    if netns and not netns.startswith("/") and command != "DEL":  # DEL never enters it
        raise CNIError(ERR_ENV, f"CNI_NETNS: {netns!r} is not a path")
    out.update(container_id=cid, ifname=ifname, netns=netns)
    return out


def _bad_ifname(ifname: str) -> str:
    """Why ``ifname`` cannot be the container's interface, or '': the
    service's own checks (``dataplane.checks.check_ifname``), made here so
    that the runtime is told CNI_IFNAME (4), not the configuration (7)."""
    if (
        len(os.fsencode(ifname)) >= _IFNAMSIZ  # (bytes the environment had, whatever they are)
        or ifname in (".", "..")
        or any(c in ifname for c in "/:\0")
        or any(c.isspace() for c in ifname)
    ):
        return "is not a valid interface name"
    if "%" in ifname:  # the kernel makes 'eth%d' eth0, eth1, ...: never the name asked for
        return "is not an interface name but a kernel template (no '%': the kernel would number it)"
    if ifname == "lo":
        return "is the container's loopback interface"
    return ""


def _cni_args(text: str) -> dict:
    """CNI_ARGS 'K=V;K2=V2' as a dict."""
    out = {}
    for part in text.split(";"):
        if part:
            k, sep, v = part.partition("=")
            if not sep:
                raise CNIError(ERR_ENV, f"CNI_ARGS: {part!r} is not KEY=VALUE")
            out[k] = v
    return out


def _read_conf(data: bytes, command: str) -> dict:
    try:
        conf = json_loads(data or b"{}")
    except ValueError as e:
        raise CNIError(ERR_DECODE, "cannot decode the network configuration", str(e))
    except RecursionError:
        raise CNIError(
            ERR_DECODE, "cannot decode the network configuration", "nested too deeply"
        ) from None
    if not isinstance(conf, dict):
        raise CNIError(ERR_DECODE, "the network configuration is not a JSON object")
    version = conf.get("cniVersion")
    if command == "VERSION":
        return conf
    if version is None:
        raise CNIError(
            ERR_VERSION,
            "cniVersion: the network configuration has none",
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise CNIError(
            ERR_VERSION,
            f"cniVersion {version!r} is not supported",
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    if command == "CHECK" and _version_tuple(version) < (0, 4, 0):
        raise CNIError(ERR_VERSION, f"CHECK needs cniVersion 0.4.0 or later, not {version}")
    if command in ("GC", "STATUS") and _version_tuple(version) < (1, 1, 0):
        raise CNIError(ERR_VERSION, f"{command} needs cniVersion 1.1.0 or later, not {version}")
    # DEL and GC are best-effort (the specification): they complete
    # whatever the configuration says of the fields only ADD and CHECK use
    # (a configuration edited after its pods were added, or refused at ADD,
    # would otherwise leave its attachments behind), with the default
    # timeout when the one given is unusable
    lenient = command in ("DEL", "GC")
    name = conf.get("name")
    if command != "DEL" and (not isinstance(name, str) or not name):
        raise CNIError(ERR_CONFIG, "name: the network configuration has no name")
    kind = conf.get("kind", "veth")
    if command in ("ADD", "CHECK"):
        net = conf.get("network")
        if not isinstance(net, str) or not net:
            raise CNIError(ERR_CONFIG, "network: the name of a network of the node is required")
        if kind not in _KINDS:
            raise CNIError(ERR_CONFIG, f"kind: {kind!r} is not one of {', '.join(_KINDS)}")
        if conf.get("options") is not None and not isinstance(conf["options"], dict):
            raise CNIError(ERR_CONFIG, f"options: {conf['options']!r} is not an object")
        for key in ("plane", "ip", "mac", "device", "deviceID"):
            if conf.get(key) is not None and not isinstance(conf[key], str):
                raise CNIError(ERR_CONFIG, f"{key}: {conf[key]!r} is not a string")
        if not isinstance(conf.get("dhcpServer", False), bool):
            raise CNIError(ERR_CONFIG, f"dhcpServer: {conf['dhcpServer']!r} is not true or false")
    sock = conf.get("socket", DEFAULT_SOCKET)
    if not isinstance(sock, str) or not sock.startswith("/"):  # where to go: even for a DEL
        raise CNIError(ERR_CONFIG, f"socket: {sock!r} is not an absolute path")
    timeout = conf.get("timeout", DEFAULT_TIMEOUT_S)
    if (
        not isinstance(timeout, (int, float))
        or isinstance(timeout, bool)
        or not 0 < timeout <= MAX_TIMEOUT_S
    ):
        if not lenient:
            raise CNIError(
                ERR_CONFIG,
                f"timeout: {timeout!r} is not a number of seconds in (0, {MAX_TIMEOUT_S}]",
            )
        timeout = DEFAULT_TIMEOUT_S
    rc = conf.get("runtimeConfig") or {}
    if not isinstance(rc, dict):
        if not lenient:
            raise CNIError(ERR_CONFIG, "runtimeConfig: is not an object")
        rc = {}
    if command in ("ADD", "CHECK"):  # what reads it; a DEL or GC ignores it
        _check_prev(conf.get("prevResult"))
    conf.update(socket=sock, timeout=timeout, kind=kind, runtimeConfig=rc)
    return conf


#: the string fields of prevResult's entries that ADD and CHECK read
_PREV_STRINGS = {
    "interfaces": ("name", "mac", "sandbox"),
    "ips": ("address", "gateway"),
    "routes": ("dst", "gw"),
}


def _check_prev(prev):
    """A chained plugin's ``prevResult``, as far as ADD and CHECK read it:
    refused here, before anything is attached, rather than half used."""
    if prev is None:
        return
    if not isinstance(prev, dict):
        raise CNIError(ERR_CONFIG, "prevResult: is not an object")
    for key in ("interfaces", "ips", "routes"):
        items = prev.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            raise CNIError(ERR_CONFIG, f"prevResult.{key}: is not a list")
        for i, x in enumerate(items):
            if not isinstance(x, dict):
                raise CNIError(ERR_CONFIG, f"prevResult.{key}[{i}]: {x!r} is not an object")
            for field in _PREV_STRINGS[key]:  # what CHECK compares, as the spec has them
                if x.get(field) is not None and not isinstance(x[field], str):
                    raise CNIError(
                        ERR_CONFIG, f"prevResult.{key}[{i}].{field}: {x[field]!r} is not a string"
                    )
            if key == "ips" and x.get("interface") is not None:
                if not isinstance(x["interface"], int) or isinstance(x["interface"], bool):
                    raise CNIError(
                        ERR_CONFIG,
                        f"prevResult.ips[{i}].interface: {x['interface']!r} is not an index",
                    )
    if prev.get("dns") is not None and not isinstance(prev["dns"], dict):
        raise CNIError(ERR_CONFIG, "prevResult.dns: is not an object")


# ================================================================ results
def _result(conf, a: dict) -> dict:
    """The ADD result for attachment ``a`` (the service's answer), after
    the interfaces and addresses of ``prevResult`` when chained."""
    prev = conf.get("prevResult") or {}
    interfaces = list(prev.get("interfaces") or [])
    ips = list(prev.get("ips") or [])
    routes = list(prev.get("routes") or [])
    if a.get("host_ifname"):
        interfaces.append({"name": a["host_ifname"], "mac": a.get("host_mac") or ""})
    pod_if = {"name": a["ifname"], "mac": a["mac"], "sandbox": a["netns"]}
    if _version_tuple(conf["cniVersion"]) >= (1, 1, 0):  # fields new in 1.1.0
        if a.get("mtu"):
            pod_if["mtu"] = a["mtu"]
        if a.get("socket_path"):
            pod_if["socketPath"] = a["socket_path"]
        if a.get("pci_address"):
            pod_if["pciID"] = a["pci_address"]
    interfaces.append(pod_if)
    # the IPv4 address, and the IPv6 one on a dual-stack network
    for v, sfx, default in (("4", "", "0.0.0.0/0"), ("6", "6", "::/0")):
        gw = a.get("gateway" + sfx)
        if a.get("ip" + sfx):
            ip = {
                "address": f"{a['ip' + sfx]}/{a['prefixlen' + sfx]}",
                "interface": len(interfaces) - 1,
            }
            if gw:
                ip["gateway"] = gw
            if _version_tuple(conf["cniVersion"]) < (1, 0, 0):
                ip["version"] = v
            ips.append(ip)
        if a.get("default_route") and gw:
            routes.append({"dst": default, "gw": gw})
    out = {"cniVersion": conf["cniVersion"], "interfaces": interfaces, "ips": ips}
    if routes:
        out["routes"] = routes
    out["dns"] = prev.get("dns") or {}
    return out


def _device_info(a: dict) -> dict:
    """The Multus device-info (NPWG device-info specification 1.1.0) of a
    memif, vhost-user or VF attachment."""
    kind = a["kind"]
    if kind == "memif":
        return {
            "type": "memif",
            "version": "1.1.0",
            "memif": {"role": "master", "mode": "ethernet", "path": a["socket_path"]},
        }
    if kind == "vhost-user":
        return {
            "type": "vhost-user",
            "version": "1.1.0",
            "vhost-user": {"mode": "server", "path": a["socket_path"]},
        }
    return {"type": "pci", "version": "1.1.0", "pci": {"pci-address": a["pci_address"]}}


def write_device_info(path: str, a: dict):
    """Write the device-info file Multus asked for (``CNIDeviceInfoFile``)."""
    tmp = f"{path}.tmp"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(tmp, "w") as f:
        f.write(json_dumps(_device_info(a)))
    os.replace(tmp, path)


# ================================================================== verbs
def _runtime_ip(ips) -> str:
    """The address the runtime asks for (runtimeConfig.ips, the ``ips``
    capability), or '': one IPv4 address at most. A plane's IPv6 address is
    its IPv4 address's counterpart on the network's subnet6, never chosen:
    one asked for is refused rather than silently not given."""
    if ips is None:
        return ""
    if not isinstance(ips, list):
        raise CNIError(
            ERR_CONFIG,
            f"runtimeConfig.ips: {ips!r} is not a list (e.g. ['192.168.100.7/24'])",
        )
    if not ips:
        return ""
    for x in ips:
        if not isinstance(x, str):
            raise CNIError(
                ERR_CONFIG,
                f"runtimeConfig.ips: {x!r} is not an address (a string, e.g. '192.168.100.7/24')",
            )
    v4 = [str(x) for x in ips if ":" not in str(x)]
    v6 = [str(x) for x in ips if ":" in str(x)]
    if v6:
        raise CNIError(
            ERR_CONFIG,
            f"runtimeConfig.ips: {v6[0]}: a plane's IPv6 address is not chosen (on a "
            "dual-stack network it is its IPv4 address's counterpart): give the IPv4 "
            "address alone",
        )
    if len(v4) > 1:
        raise CNIError(
            ERR_CONFIG, f"runtimeConfig.ips: {', '.join(v4)}: a plane has one IPv4 address"
        )
    return v4[0]


def _from_env(e: CNIError, env_fields) -> CNIError:
    """The service's refusal ``e`` of a field that came from the
    environment (``env_fields``: field -> the variable it came from) as
    the spec has it: code 4, naming the variable; any other as it is."""
    if e.code == ERR_CONFIG:
        for field, var in env_fields.items():
            if e.msg.startswith(f"{field}: "):
                return CNIError(ERR_ENV, f"{var}: {e.msg[len(field) + 2 :]}", e.details)
    return e


def _add(conf, env) -> dict:
    rc = conf["runtimeConfig"]
    ip = conf.get("ip") or env["args"].get("IP")
    env_fields = {"netns": "CNI_NETNS"}  # the service's refusals of these are code 4
    if not conf.get("ip") and env["args"].get("IP"):
        env_fields["ip"] = "CNI_ARGS IP"
    if not ip:
        ip = _runtime_ip(rc.get("ips"))
    mac = conf.get("mac") or rc.get("mac") or env["args"].get("MAC")
    if not conf.get("mac") and not rc.get("mac") and env["args"].get("MAC"):
        env_fields["mac"] = "CNI_ARGS MAC"
    body = {
        "container_id": env["container_id"],
        "ifname": env["ifname"],
        "netns": env["netns"],
        "network": conf["network"],
        "plane": conf.get("plane"),
        "kind": conf["kind"],
        "ip": ip.split("/")[0] if ip else None,
        "mac": mac or None,
        "device": conf.get("device") or conf.get("deviceID"),
        "options": conf.get("options"),
        "dhcp_server": conf.get("dhcpServer", False),
        "cni_network": conf["name"],
        "k8s_namespace": env["args"].get("K8S_POD_NAMESPACE"),
        "k8s_pod": env["args"].get("K8S_POD_NAME"),
    }
    try:
        a = _service(conf, "POST", "/v1/attachments", body)
    except CNIError as e:
        if not e.unanswered:
            raise _from_env(e, env_fields) from None
        # the service may finish the ADD after the plugin gave up on it: a
        # runtime told to try again would then find it attached (100) on
        # every retry. Undone here, so that the retry starts anew
        e.details += "; " + _undo(conf, env, "the ADD is undone (a retry starts anew)")
        raise
    plen = ip.partition("/")[2] if ip else ""
    if plen and plen != str(a.get("prefixlen")):
        # the address is the one asked for, the subnet not: nothing is kept
        details = _undo(conf, env, "")
        raise _from_env(
            CNIError(
                ERR_CONFIG,
                f"ip: {ip}: network {conf['network']} is a /{a.get('prefixlen')}, not a /{plen}",
                details,
            ),
            env_fields,
        )
    dev = rc.get("CNIDeviceInfoFile")
    if dev and (a.get("socket_path") or a.get("pci_address")):
        try:
            write_device_info(dev, a)
        except OSError as e:
            undo = _undo(conf, env, "", device_info=False)
            raise CNIError(
                ERR_IO,
                f"cannot write the device-info file {dev}",
                f"{e}; {undo}" if undo else str(e),
            )
    return _result(conf, a)


def _undo(conf, env, done: str, device_info: bool = True) -> str:
    """Take back the attachment this ADD made, or may have made: ``done``
    if that worked, else what the runtime is to know."""
    try:
        _del(conf, env, device_info)
    except CNIError as undo:
        if undo.unanswered:  # the service takes a key's requests in turn: after the ADD
            return f"a DEL of it was sent, not answered either: it follows the ADD ({undo.details})"
        # the runtime's DEL after this failed ADD finishes it
        return f"the attachment is not undone yet ({undo.msg}: {undo.details})"
    return done


def _del(conf, env, device_info: bool = True):
    if env.get("never_added"):
        return None
    key = {"container_id": env["container_id"], "ifname": env["ifname"]}
    # the configuration whose attachment it is: a DEL the runtime sends
    # after another configuration's ADD was refused (that interface name
    # taken) leaves the attachment that has it alone
    name = conf.get("name")
    if isinstance(name, str) and name:
        key["cni_network"] = name
    try:
        _service(conf, "DELETE", "/v1/attachments", key)
    except CNIError as e:
        # a service from before the field (the plugin is installed before
        # the service restarts in an upgrade) refuses it by name: asked as
        # it was then, so that no pod's DEL fails meanwhile
        if (
            "cni_network" not in key
            or e.code != ERR_CONFIG
            or not e.msg.startswith("cni_network: unknown field")
        ):
            raise
        del key["cni_network"]
        _service(conf, "DELETE", "/v1/attachments", key)
    dev = conf["runtimeConfig"].get("CNIDeviceInfoFile") if device_info else None
    if isinstance(dev, str) and dev:
        try:
            os.unlink(dev)
        except OSError:
            pass


def _check(conf, env):
    prev = conf.get("prevResult")
    if not isinstance(prev, dict):
        raise CNIError(ERR_CONFIG, "prevResult: CHECK needs the result of the ADD")
    a = _service(
        conf,
        "POST",
        "/v1/attachments/check",
        {"container_id": env["container_id"], "ifname": env["ifname"], "netns": env["netns"]},
    )
    problems = list(a.get("problems") or [])
    if not a.get("mac"):  # its pod is gone or unfinished: nothing to hold prevResult against
        raise CNIError(ERR_CHECK, "; ".join(problems) or "the attachment is not whole")
    ifs = prev.get("interfaces") or []
    idx = [
        i
        for i, x in enumerate(ifs)
        if isinstance(x, dict)
        and x.get("name") == env["ifname"]
        and x.get("sandbox") == env["netns"]
    ]
    if not idx:
        problems.append(f"prevResult has no interface {env['ifname']} in {env['netns']}")
    else:
        i = idx[0]
        if (ifs[i].get("mac") or "").lower() != a["mac"].lower():
            problems.append(
                f"prevResult gives {env['ifname']} MAC {ifs[i].get('mac')}, not {a['mac']}"
            )
        have = [x.get("address") for x in prev.get("ips") or [] if x.get("interface") == i]
        for ip, plen in (("ip", "prefixlen"), ("ip6", "prefixlen6")):
            want = f"{a.get(ip)}/{a.get(plen)}"
            if a.get(ip) and want not in have:
                problems.append(
                    f"prevResult gives {env['ifname']} {have or 'no address'}, not {want}"
                )
    routes = prev.get("routes") or []
    for dst, gw in (("0.0.0.0/0", "gateway"), ("::/0", "gateway6")):
        if a.get("default_route") and a.get(gw):
            if not any(r.get("dst") == dst and r.get("gw") == a[gw] for r in routes):
                problems.append(f"prevResult has no default route via {a[gw]}")
    if problems:
        raise CNIError(ERR_CHECK, "; ".join(problems))


#: the key GC's list of attachments still in use comes under: the name of
#: the 1.1.0 specification's text, then the one libcni sends (both, today)
GC_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")


def _gc(conf, env):
    key = next((k for k in GC_KEYS if k in conf), None)
    if key is None:
        # the runtime lists what is still in use; without the list every
        # attachment of this configuration would be collected
        raise CNIError(
            ERR_CONFIG,
            f"{GC_KEYS[0]}: missing",
            "GC needs the list of attachments still in use (an empty list collects all)",
        )
    valid = conf[key]
    if valid is None:  # what a runtime with no attachment left sends (Go's nil slice)
        valid = []
    if not isinstance(valid, list):
        raise CNIError(ERR_CONFIG, f"{key}: is not a list")
    keep = []
    for i, v in enumerate(valid):
        if not isinstance(v, dict):
            raise CNIError(ERR_CONFIG, f"{key}[{i}]: {v!r} is not an object")
        for field in ("containerID", "ifname"):
            if not isinstance(v.get(field), str) or not v[field]:
                raise CNIError(ERR_CONFIG, f"{key}[{i}].{field}: {v.get(field)!r} is missing")
        keep.append({"container_id": v["containerID"], "ifname": v["ifname"]})
    _service(conf, "POST", "/v1/attachments/gc", {"cni_network": conf["name"], "valid": keep})


def _status(conf, env):
    try:
        status, obj = _answer(conf, "GET", "/v1/attachments/ready")
    except ServiceGone as e:
        # no core forwards this node's pods (the express lane's programs,
        # left in the kernel, still carry some of their traffic)
        raise CNIError(
            ERR_LIMITED,
            "the node service is not running: no ADD, and this node's pods are not forwarded",
            str(e),
        )
    except ServiceDown as e:
        raise CNIError(ERR_NOT_AVAILABLE, "the node service is not available", str(e))
    obj = obj if isinstance(obj, dict) else {}
    if _store_down(status, obj):  # at once: the service waited for the store already
        raise CNIError(
            ERR_NOT_AVAILABLE,
            "the node service cannot take an ADD without its state store",
            obj.get("error") or f"HTTP {status}",  # whether it does not answer, or refuses
        )
    if status != 200 or not obj.get("ready"):
        why = obj.get("reason") or obj.get("error") or f"HTTP {status}"
        raise CNIError(ERR_NOT_AVAILABLE, "the node service cannot take an ADD", why)


def _version(conf) -> dict:
    v = conf.get("cniVersion")  # the specification: the input's, whatever it is
    return {
        "cniVersion": v if isinstance(v, str) and v else SUPPORTED_VERSIONS[-1],
        "supportedVersions": list(SUPPORTED_VERSIONS),
    }


_VERBS = {"ADD": _add, "DEL": _del, "CHECK": _check, "GC": _gc, "STATUS": _status}


def run(environ, data: bytes):
    """(exit code, what to print) for one invocation."""
    command = environ.get("CNI_COMMAND", "")
    version = SUPPORTED_VERSIONS[-1]
    try:
        if command != "VERSION" and command not in _VERBS:
            raise CNIError(
                ERR_ENV,
                f"CNI_COMMAND: {command!r} is not a CNI command",
                "ADD, DEL, CHECK, GC, STATUS or VERSION",
            )
        try:
            peek = json_loads(data or b"{}")
            if isinstance(peek, dict) and peek.get("cniVersion") in SUPPORTED_VERSIONS:
                version = peek["cniVersion"]
        except (ValueError, RecursionError):
            pass  # _read_conf says what is wrong
        conf = _read_conf(data, command)
        if command == "VERSION":
            return 0, _version(conf)
        env = _check_env(environ, command)
        try:
            return 0, _VERBS[command](conf, env)
        except (KeyError, TypeError, ValueError) as e:  # an answer we cannot read
            raise CNIError(ERR_SERVICE, "unexpected answer from the node service", repr(e))
    except CNIError as e:
        return 1, _error(version, e)
    except Exception as e:  # noqa: BLE001 - the runtime reads an error, not a traceback
        return 1, _error(version, CNIError(ERR_INTERNAL, "the plugin failed", repr(e)))


def _error(version: str, e: CNIError) -> dict:
    err = {"cniVersion": version, "code": e.code, "msg": e.msg}
    if e.details:
        err["details"] = e.details
    return err


#: the directory, next to the plugin, that holds its code (``dataplane_cni``)
LIB_SUFFIX = ".d"


def install(bin_dir: str, python: str = "/usr/bin/python3") -> str:
    """Install the plugin as ``bin_dir/dataplane-cni``: a five-line
    launcher run by ``python`` with ``-IS`` (no site-packages, no
    environment: nothing is imported that the plugin does not use), and
    this file, which needs only the standard library, as module
    ``dataplane_cni`` in ``bin_dir/dataplane-cni.d``, compiled there: an
    interpreter loads the cached bytecode instead of compiling the plugin
    on every run, as it would a script (10 ms here). One of another
    version than this installer's compiles and caches it on its first run.
    Each file is written to a temporary name and renamed, the launcher
    last, so a runtime never execs half a plugin. The launcher's path."""
    import py_compile

    path = os.path.join(bin_dir, "dataplane-cni")
    lib = path + LIB_SUFFIX
    os.makedirs(lib, exist_ok=True)
    with open(__file__, "rb") as f:
        body = f.read()
    module = os.path.join(lib, "dataplane_cni.py")
    _replace(module, body, 0o644)
    try:
        py_compile.compile(module, doraise=True)
    except (py_compile.PyCompileError, OSError):
        pass  # compiled by the interpreter's first run instead
    # the directory found from the launcher's own path as the runtime runs
    # it: an installer in a container writes /host/opt/cni/bin for the
    # host's /opt/cni/bin
    launcher = (
        f"#!{python} -IS\n"
        "import os, sys\n"
        f"sys.path.insert(0, os.path.realpath(__file__) + {LIB_SUFFIX!r})\n"
        "from dataplane_cni import main\n"
        "sys.exit(main())\n"
    )
    _replace(path, launcher.encode(), 0o755)
    return path


def _replace(path: str, data: bytes, mode: int):
    """``path`` with ``data`` and ``mode``, written aside and renamed."""
    tmp = f"{path}.new"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def main(argv=None) -> int:
    """Console entry point: the CNI environment and stdin in, JSON out.
    ``dataplane-cni install BIN_DIR [PYTHON]`` installs the plugin (see
    :func:`install`); runtimes exec it without arguments."""
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        if argv[0] != "install" or len(argv) not in (2, 3):
            sys.stderr.write("usage: dataplane-cni install BIN_DIR [PYTHON]\n")
            return 2
        sys.stdout.write(install(*argv[1:]) + "\n")
        return 0
    data = b"" if sys.stdin is None else sys.stdin.buffer.read()
    code, out = run(os.environ, data)
    if out is not None:
        sys.stdout.write(json_dumps(out))
        sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
