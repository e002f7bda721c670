"""Fast pod interfaces: memif and vhost-user planes served by the core.

A plane of kind ``memif`` or ``vhost-user`` has no kernel interface: the
pod's DPDK application talks to the core through shared memory, set up over
a unix socket in a directory of the pod's own::

    <pod_socket_dir>/<pod>/<plane>.sock      (default /run/dataplane/pods)

memif        the core is the memif server (``net_memif``, role=server, a
             socket file, not an abstract socket). The core creates the
             socket; the pod's application connects as the client.
vhost-user   the core is the vhost-user backend (``net_vhost``) in client
             mode with reconnection; the pod's application (``virtio_user``
             with ``server=1``) creates the socket. Either side may restart:
             the core reconnects to the pod's socket by itself, and a pod
             that restarts listens on the same path again. The core connects
             through a hard link of the pod's socket in a directory of root's
             (:func:`pin`), never through the pod's directory, whose entries
             the pod may swap for links to other sockets at any time.

The port joins the plane's network like a veth pod's port: FDB entry for
the pod's MAC, VXLAN to other nodes, plane queues, histograms, metrics. The
pod's MAC and IP come from the network's IPAM and are returned to the
caller; the core does not configure the pod's stack.

:func:`parse_interface` (pure) checks a plane's ``interfaces`` entry; the
rest acts on the node (directories, sockets, the engine's ports).
"""

import contextlib
import hashlib
import os
import shutil
import stat
from typing import Any, Dict, Optional, Tuple

from .checks import IFNAMSIZ, check_ifname, check_int, check_pow2, fail
from .errors import Busy, ConfigError, DataplaneError, ResourceError
from .vf import PCI_RE

VETH = "veth"
MEMIF = "memif"
VHOST_USER = "vhost-user"
VF = "vf"
KINDS = (VETH, MEMIF, VHOST_USER, VF)
#: kinds whose port the core serves over a unix socket
SOCKET_KINDS = (MEMIF, VHOST_USER)
#: the options each kind takes besides ``kind``
OPTIONS = {
    VETH: ("ifname",),
    MEMIF: ("uid", "gid", "ring_size"),
    VHOST_USER: ("uid", "gid"),
    VF: ("device", "ifname", "vlan", "spoofchk", "trust"),
}
#: sun_path of struct sockaddr_un, with its NUL
SUN_PATH_MAX = 108
#: the directory under pod_socket_dir (root's, mode 0700; no pod name starts
#: with a dot) of the core's hard links to the pods' vhost-user sockets
PIN_DIR = ".core"
POD_DIR_MARK = ".dataplane-pod"  # in each pod directory the service made
MEMIF_MAX_RING = 1 << 14


# ================================================================ the spec
def parse_interface(value, plane: str) -> Tuple[str, Optional[str], Dict[str, Any]]:
    """A plane's ``interfaces`` entry given as a mapping: (kind, ifname or
    None, options). ConfigError names the kind or option that is wrong."""
    path = f"interfaces.{plane}"
    kind = value.get("kind", VETH)
    if kind not in KINDS:
        raise fail(f"{path}.kind", f"{kind!r} is not an interface kind ({', '.join(KINDS)})")
    opts = {}
    for key, v in value.items():
        if key == "kind":
            continue
        if key not in OPTIONS[kind]:
            takes = ", ".join(OPTIONS[kind])
            raise fail(
                f"{path}.{key}",
                f"option {key!r} does not fit kind {kind} (it takes: kind, {takes})",
            )
        opts[key] = v
    ifname = opts.pop("ifname", None)
    if ifname is not None and (not isinstance(ifname, str) or not ifname):
        raise fail(f"{path}.ifname", f"{ifname!r} is not an interface name")
    for key in ("uid", "gid"):
        if key in opts:
            check_int(opts[key], f"{path}.{key}", 0, (1 << 32) - 2)
    if "ring_size" in opts:
        check_pow2(opts["ring_size"], f"{path}.ring_size", 2, MEMIF_MAX_RING)
    if kind == VF:
        dev = opts.get("device")
        if not isinstance(dev, str) or not dev:
            raise fail(
                f"{path}.device",
                "is required for kind vf (the VF's host interface name or PCI address)",
            )
        if not PCI_RE.fullmatch(dev):
            try:
                check_ifname(dev, f"{path}.device")
            except ConfigError:
                raise fail(
                    f"{path}.device",
                    f"{dev!r} is neither an interface name nor a PCI address (0000:03:00.2)",
                ) from None
        if "vlan" in opts:
            check_int(opts["vlan"], f"{path}.vlan", 0, 4094)
        for key in ("spoofchk", "trust"):
            if key in opts and not isinstance(opts[key], bool):
                raise fail(f"{path}.{key}", f"{opts[key]!r} is not true or false")
    return kind, ifname, opts


# ============================================================ node support
#: the kernel's pools of hugepages, one directory per page size
SYS_HUGEPAGES = "/sys/kernel/mm/hugepages"


def hugepages_total(meminfo: str = "/proc/meminfo", sysfs: str = SYS_HUGEPAGES) -> int:
    """Hugepages reserved on this node, of every page size (HugePages_Total
    in /proc/meminfo counts the default size's only: a node that reserves
    1 GiB pages alone has none there)."""
    total = 0
    try:
        for d in os.listdir(sysfs):
            with open(os.path.join(sysfs, d, "nr_hugepages")) as f:
                total += int(f.read().strip() or 0)
    except (OSError, ValueError):
        total = 0
    if total:
        return total
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("HugePages_Total:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def check_node_can(
    kind: str, plane: str, meminfo: str = "/proc/meminfo", sysfs: str = SYS_HUGEPAGES
):
    """ResourceError unless this node can give a pod a ``kind`` plane: a
    memif or vhost-user pod runs DPDK on hugepages of the node's pool."""
    if kind in SOCKET_KINDS and hugepages_total(meminfo, sysfs) == 0:
        raise ResourceError(
            f"interfaces.{plane}: kind {kind} needs hugepages on this node for the pod's "
            "DPDK application, and none are reserved (of any page size)"
        )


# ================================================================= sockets
def pod_dir(base: str, pod: str) -> str:
    if pod in (".", ".."):
        raise ConfigError(f"name: {pod!r} is not a pod name")
    return os.path.join(base, pod)


def socket_path(base: str, pod: str, plane: str) -> str:
    """The plane's socket; ConfigError if it is too long for a unix socket."""
    path = os.path.join(pod_dir(base, pod), f"{plane}.sock")
    if len(path.encode()) >= SUN_PATH_MAX:
        raise ConfigError(
            f"pod {pod} plane {plane}: socket path {path} is longer than a unix socket "
            f"allows ({SUN_PATH_MAX - 1} bytes): use a shorter pod name or pod_socket_dir"
        )
    return path


def vdev_name(kind: str, pod: str, plane: str) -> str:
    """The DPDK device name of the plane's port, the same for every add."""
    h = hashlib.sha256(f"{pod}\0{plane}".encode()).hexdigest()[:10]
    drv = "net_memif" if kind == MEMIF else "net_vhost"
    return f"{drv}_{h}{plane[: IFNAMSIZ - 1]}"


def devargs(kind: str, pod: str, plane: str, path: str, opts: Dict[str, Any]) -> str:
    name = vdev_name(kind, pod, plane)
    if kind == MEMIF:
        d = f"{name},role=server,id=0,socket={path},socket-abstract=no"
        if "ring_size" in opts:
            d += f",rsize={int(opts['ring_size']).bit_length() - 1}"
        return d
    # client=1: the pod's virtio_user (server=1) owns the socket; the
    # backend connects and reconnects to it after either side restarts,
    # through the core's link to it (path: pin_path), which no pod can swap
    return f"{name},iface={path},client=1,queues=1"


def _marked(d: str) -> bool:
    """Is ``d`` a pod directory the service made (its mark, a file of this
    process's user, inside)?"""
    try:
        st = os.lstat(os.path.join(d, POD_DIR_MARK))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()


def _only_sockets(d: str) -> bool:
    """A real directory holding nothing but sockets and symbolic links (a
    pod directory of a version that did not mark them, or one whose mark
    the pod removed; a link is the pod's, checked where a plane's socket
    is taken, and removed as a link, never followed)."""
    try:
        if not stat.S_ISDIR(os.lstat(d).st_mode):
            return False
        with os.scandir(d) as it:
            return all(
                stat.S_ISSOCK(m) or stat.S_ISLNK(m)
                for m in (e.stat(follow_symlinks=False).st_mode for e in it)
            )
    except OSError:
        return False


def _mark(d: str):
    # a mark the pod replaced (it owns the directory) is not followed; the
    # directory is then removed with the pod only while it holds only sockets
    with contextlib.suppress(OSError):
        os.close(
            os.open(
                os.path.join(d, POD_DIR_MARK),
                # non-blocking: a FIFO the pod put there is not waited on
                os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                0o644,
            )
        )


def _prepare_dir(base: str, pod: str, opts: Dict[str, Any], ours: bool = False) -> str:
    # the base and the pod's directory are entries of root's directories:
    # the pod cannot rename them, only what is inside its own directory
    os.makedirs(base, mode=0o755, exist_ok=True)
    d = pod_dir(base, pod)
    try:
        os.mkdir(d, 0o755)
    except FileExistsError:
        # a directory the service did not make is not taken over: it is
        # handed to the pod's user and removed with the pod (``ours``: the
        # pod's own, of a pod the service has: replayed after a restart,
        # whatever the pod did to its mark)
        if not ours and not _marked(d) and not _only_sockets(d):
            raise Busy(
                f"pod {pod}: {d} exists and was not made by the service for this pod "
                "(it holds more than sockets): the pod's sockets need a directory of "
                "their own; remove it or choose another pod_socket_dir"
            ) from None
    _mark(d)
    uid, gid = opts.get("uid", -1), opts.get("gid", -1)
    if uid != -1 or gid != -1:
        # the pod's user may create (vhost-user) and connect to its sockets
        os.chown(d, uid, gid)
        os.chmod(d, 0o770)
    return d


def _what(st) -> str:
    m = st.st_mode
    if stat.S_ISLNK(m):
        return "a symbolic link"
    if stat.S_ISDIR(m):
        return "a directory"
    if stat.S_ISREG(m):
        return "a regular file"
    return "not a socket"


def _give_socket(path: str, pod: str, plane: str, uid: int, gid: int):
    """Hand the core's memif socket at ``path`` to the pod's user, mode 0660.

    The pod may rename entries of its directory at any time, so nothing
    there is followed: the entry is opened without following a symbolic
    link (O_PATH | O_NOFOLLOW), must be a socket the service itself created
    (owned by this process's user), and its owner and mode are changed
    through that descriptor: on the very inode checked, whatever the name
    points to by then. Busy if the entry is something else."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Busy(
            f"pod {pod} plane {plane}: memif socket {path} was removed before its owner was set"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
            what = _what(st) if not stat.S_ISSOCK(st.st_mode) else f"a socket of uid {st.st_uid}"
            raise Busy(
                f"pod {pod} plane {plane}: {path} is {what}, not the core's memif socket "
                "(replaced in the pod's directory): its owner and mode are left alone"
            )
        inode = f"/proc/self/fd/{fd}"  # the inode opened, not the name
        if uid != -1 or gid != -1:
            os.chown(inode, uid, gid)
        os.chmod(inode, 0o660)
    finally:
        os.close(fd)


def pin_path(base: str, pod: str, plane: str) -> str:
    """The core's link to the plane's vhost-user socket: the path it
    connects to. ConfigError if it is too long for a unix socket."""
    h = hashlib.sha256(f"{pod}\0{plane}".encode()).hexdigest()[:12]
    path = os.path.join(base, PIN_DIR, f"{h}.sock")
    if len(path.encode()) >= SUN_PATH_MAX:
        raise ConfigError(
            f"pod {pod} plane {plane}: kind vhost-user: the core's link to the pod's socket, "
            f"{path}, is longer than a unix socket allows ({SUN_PATH_MAX - 1} bytes): use a "
            "shorter pod_socket_dir"
        )
    return path


def _pin_dir(base: str) -> str:
    """The directory of the core's links, root's and 0700, made if missing;
    DataplaneError if the name is taken by something else."""
    d = os.path.join(base, PIN_DIR)
    with contextlib.suppress(FileExistsError):
        os.mkdir(d, 0o700)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise DataplaneError(
            f"{d} is {_what(st) if not stat.S_ISDIR(st.st_mode) else 'a directory of another'} "
            "user: the core keeps its links to the pods' vhost-user sockets there; remove it"
        )
    os.chmod(d, 0o700)
    return d


def unpin(base: str, pod: str, plane: str):
    """The core's link to the plane's socket gone (the core cannot connect
    until pin makes it again; a connection made stays)."""
    with contextlib.suppress(OSError, ConfigError):
        _unlink(pin_path(base, pod, plane))


def _pod_socket_problem(st, path: str, pod: str, plane: str, opts: Dict[str, Any]):
    """Why the entry ``st`` (lstat) at the plane's ``path`` is not the pod's
    vhost-user socket, or None."""
    if not stat.S_ISSOCK(st.st_mode):
        return (
            f"pod {pod} plane {plane}: kind vhost-user: {path} is {_what(st)}, not the pod's "
            "socket: not connected (the pod removes it and listens there itself)"
        )
    uid = opts.get("uid")
    if uid is not None and st.st_uid != uid:
        return (
            f"pod {pod} plane {plane}: kind vhost-user: socket {path} belongs to uid "
            f"{st.st_uid}, not to the plane's uid {uid}: not connected"
        )
    return None


def pin(base: str, pod: str, plane: str, opts: Dict[str, Any]) -> Optional[str]:
    """Point the core's link for a vhost-user plane (:func:`pin_path`) at
    the pod's socket as it is now. The core, as root, connects to whatever
    its path names, and the pod may swap the entries of its directory for
    symbolic links to other pods' or the host's sockets at any moment; so
    the core connects through a hard link, in root's directory, to the
    socket inode checked here: made without following a link
    (``link(2)``), then checked itself - a socket, owned by the plane's
    ``uid`` if it has one. Returns None when the link is the pod's socket,
    or nothing is there yet (the pod does not listen: no link, the core
    waits); else why not (a link, another user's socket, ...), and the
    core's link is removed: it connects to nothing until the pod's socket
    is back. Made again whenever the pod listens on a new socket (its
    application restarted): the service looks once a second."""
    path = socket_path(base, pod, plane)
    link = pin_path(base, pod, plane)
    d = _pin_dir(base)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        _unlink(link)
        return None
    problem = _pod_socket_problem(st, path, pod, plane, opts)
    if problem is not None:
        _unlink(link)
        return problem
    with contextlib.suppress(FileNotFoundError):
        have = os.lstat(link)
        if (have.st_dev, have.st_ino) == (st.st_dev, st.st_ino):
            return None  # the socket it is already
    tmp = os.path.join(d, f".{os.path.basename(link)}.{os.getpid()}")
    _unlink(tmp)
    try:
        os.link(path, tmp, follow_symlinks=False)  # the entry itself, whatever it is now
    except FileNotFoundError:
        _unlink(link)
        return None  # gone meanwhile: the pod stopped listening
    except OSError as e:
        _unlink(link)
        return (
            f"pod {pod} plane {plane}: kind vhost-user: the core cannot link {path} into "
            f"{d} ({e.strerror}): not connected (pod_socket_dir must be one file system)"
        )
    problem = _pod_socket_problem(os.lstat(tmp), path, pod, plane, opts)
    if problem is not None:  # swapped between the two looks
        _unlink(tmp)
        _unlink(link)
        return problem
    os.replace(tmp, link)
    return None


def attach(
    engine, net: Optional[int], pod: str, plane: str, kind: str, base: str, opts, ours: bool = False
) -> Tuple[int, str]:
    """The plane's port in ``engine`` (network ``net``; None: in none yet,
    for the caller to guard before its first frame goes anywhere) and its
    socket path.
    A stale memif socket of an earlier run is removed first. On failure the
    port is removed, a memif socket (the core's) too, and the pod's
    directory if this call made it; a vhost-user socket (the pod's) stays."""
    path = socket_path(base, pod, plane)
    made = not os.path.isdir(pod_dir(base, pod))
    _prepare_dir(base, pod, opts, ours)
    try:
        if kind == MEMIF:
            _unlink(path)  # the server cannot listen on an existing file
            core_path = path
        else:
            core_path = pin_path(base, pod, plane)
            problem = pin(base, pod, plane, opts)
            if problem is not None:
                raise Busy(problem)
        try:
            port = engine.add_port(devargs(kind, pod, plane, core_path, opts), network=net)
        except DataplaneError as e:
            raise type(e)(f"pod {pod} plane {plane}: kind {kind}: {e}", e.errno) from e
        if kind == MEMIF:
            try:
                _give_socket(path, pod, plane, opts.get("uid", -1), opts.get("gid", -1))
            except (OSError, DataplaneError):
                engine.del_port(port)
                raise
    except BaseException:
        if kind == MEMIF:
            with contextlib.suppress(OSError):  # the error that got here is the one to tell
                _unlink(path)  # unlink does not follow a link: only the entry goes
        else:
            unpin(base, pod, plane)
        if made:
            shutil.rmtree(pod_dir(base, pod), ignore_errors=True)
        raise
    return port, path


def detach(
    engine, port: Optional[int], base: str, pod: str, plane: str, kind: Optional[str] = None
):
    """Remove the plane's port; with it, for a memif plane (``kind``), the
    core's socket, for a vhost-user plane the core's link to the pod's
    socket. A vhost-user socket is the pod's and stays, and so does
    the pod's directory, which the pod's container has mounted: it goes
    with the pod (:func:`remove_pod_dir`)."""
    if port is None:  # no port (a pod whose add did not finish): no link either
        if kind != MEMIF:
            unpin(base, pod, plane)
        return
    engine.del_port(port)
    if kind == MEMIF:
        with contextlib.suppress(OSError):  # the port is gone: what is left is the pod's
            _unlink(socket_path(base, pod, plane))
    else:  # a vhost-user plane's, if it has one
        unpin(base, pod, plane)


def remove_pod_dir(base: str, pod: str):
    """The pod's socket directory, whatever is left in it (pod delete); one
    the service did not make (no mark, more than sockets) is left alone."""
    d = pod_dir(base, pod)
    if os.path.isdir(d) and not os.path.islink(d) and (_marked(d) or _only_sockets(d)):
        shutil.rmtree(d, ignore_errors=True)


def _unlink(path: str):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
