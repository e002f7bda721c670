"""What a pod can do to the node through its socket directory, which the
service hands to the pod's user (memif and vhost-user planes, see
dataplane/fastif.py): nothing outside it.

* the core's memif socket replaced by a symbolic link between its creation
  and the change of its owner: the link is not followed (real net_memif port
  of an engine in a child process, the swap made right after the port);
* a vhost-user socket that is a symbolic link, or another user's socket:
  the core, which runs as root, does not connect to it (real net_vhost port;
  a listener of the test's stands for another pod's or the host's socket),
  also when the link is put there after the port was made: the core
  connects through its own link to the pod's socket;
* a re-attach that fails for one plane leaves the running pod's directory
  and its vhost-user socket alone, and the pod reconnects once the cause is
  gone (node service, dpdk-testpmd as the pod's virtio_user server);
* socket planes of one pod with different owners are refused in the spec.
"""

import os
import shutil
import socket
import stat
import tempfile
import time

import pytest

from tests import test_dpdk_pods as dpk
from tests import test_kernel_pods

fabric = test_kernel_pods.fabric
sockdir = dpk.sockdir

NOBODY = 65534
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (DPDK EAL, chown)")


@pytest.fixture
def base():
    """A short base directory for pod sockets (sun_path has 108 bytes)."""
    d = tempfile.mkdtemp(prefix="dpf", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def secret(tmp_path):
    """A file of root's, mode 0600: what a pod would like to own."""
    p = tmp_path / "shadow"
    p.write_text("root:x:0:0\n")
    os.chmod(p, 0o600)
    os.chown(p, 0, 0)
    return p


class SwapAfterAdd:
    """The engine, but right after each port is made the plane's socket is
    replaced by a symbolic link to ``target`` with a rename, as the pod's
    user can do in its directory while the service has not yet set the
    socket's owner."""

    def __init__(self, eng, path, target):
        self.eng, self.path, self.target = eng, path, target
        self.ports = []

    def add_port(self, devargs, network):
        port = self.eng.add_port(devargs, network=network)
        self.ports.append(port)
        tmp = self.path + ".new"
        os.symlink(self.target, tmp)
        os.rename(tmp, self.path)
        return port

    def del_port(self, port):
        self.eng.del_port(port)
        self.ports.remove(port)


def _ports(eng):
    return {p.index for p in eng.ports()}


# ------------------------------------------------------------------ memif
@ROOT_ONLY
def test_memif_socket_swapped_for_a_link_is_not_followed(eng, base, secret):
    from dataplane import fastif
    from dataplane.errors import DataplaneError

    eng.add_network(0, vni=100)
    before = _ports(eng)
    path = fastif.socket_path(base, "p1", "media")
    e = SwapAfterAdd(eng, path, str(secret))
    opts = {"uid": NOBODY, "gid": NOBODY}
    with pytest.raises(DataplaneError, match="a symbolic link, not the core's memif socket"):
        fastif.attach(e, 0, "p1", "media", fastif.MEMIF, base, opts)
    st = os.stat(secret)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600)
    assert not os.path.lexists(path)  # the link removed, not its target
    assert secret.read_text() == "root:x:0:0\n"
    assert e.ports == [] and _ports(eng) == before  # the port undone

    # the same without the swap: the socket is the pod user's, 0660
    port, got = fastif.attach(eng, 0, "p1", "media", fastif.MEMIF, base, opts)
    try:
        st = os.lstat(got)
        assert stat.S_ISSOCK(st.st_mode)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o660)
    finally:
        fastif.detach(eng, port, base, "p1", "media", fastif.MEMIF)
    assert not os.path.lexists(got) and os.path.isdir(os.path.dirname(got))


# -------------------------------------------------------------- vhost-user
def _listener(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(4)
    s.settimeout(0.2)
    return s


def _connected(s, within):
    """Whether anything connected to listener ``s`` within ``within`` s."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            c, _ = s.accept()
        except socket.timeout:
            continue
        c.close()
        return True
    return False


@ROOT_ONLY
def test_vhost_user_socket_that_is_a_link_or_not_the_pods_is_refused(eng, base, tmp_path):
    """The pod's directory holds a link to another socket (another pod's,
    the host's): no port, no connection; a socket of the wrong user: the
    same; the pod's own socket: connected."""
    from dataplane import fastif
    from dataplane.errors import Busy

    eng.add_network(0, vni=100)
    before = _ports(eng)
    other = _listener(tmp_path / "host.sock")  # root's, as a host daemon's
    opts = {"uid": NOBODY, "gid": NOBODY}
    path = fastif.socket_path(base, "p2", "std")
    os.makedirs(os.path.dirname(path))
    os.symlink(tmp_path / "host.sock", path)
    try:
        with pytest.raises(Busy, match="is a symbolic link, not the pod's socket"):
            fastif.attach(eng, 0, "p2", "std", fastif.VHOST_USER, base, opts)
        assert not _connected(other, 3.0), "the core connected through the pod's link"
        assert os.path.islink(path) and _ports(eng) == before
        assert os.path.isdir(os.path.dirname(path))  # not made by the attach: stays

        os.unlink(path)
        mine = _listener(path)  # root's, the plane's uid is nobody's
        with pytest.raises(Busy, match="belongs to uid 0, not to the plane's uid 65534"):
            fastif.attach(eng, 0, "p2", "std", fastif.VHOST_USER, base, opts)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)  # the pod's socket is left
        assert not _connected(mine, 3.0) and _ports(eng) == before

        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        port, _ = fastif.attach(eng, 0, "p2", "std", fastif.VHOST_USER, base, opts)
        try:
            assert _connected(mine, 5.0)
        finally:
            fastif.detach(eng, port, base, "p2", "std", fastif.VHOST_USER)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)  # the pod's: not removed
        mine.close()
    finally:
        other.close()


@ROOT_ONLY
def test_vhost_user_core_connects_only_through_its_own_link(eng, base, tmp_path):
    """The port is made before the pod listens; the pod then puts a link
    to another socket (the host's, another pod's) at its path: DPDK's
    reconnection, which goes on by path every second, reaches only the
    core's own hard link in root's directory, which the service points at
    the pod's socket as it is (fastif.pin, once a second): never the
    other socket. The pod's own socket is connected, also after its
    application restarted on a new one; the port's removal removes the
    core's link."""
    from dataplane import fastif

    eng.add_network(0, vni=100)
    opts = {"uid": NOBODY, "gid": NOBODY}
    path = fastif.socket_path(base, "p3", "std")
    link = fastif.pin_path(base, "p3", "std")
    other = _listener(tmp_path / "host.sock")  # root's, as a host daemon's
    port, got = fastif.attach(eng, 0, "p3", "std", fastif.VHOST_USER, base, opts)
    try:
        assert got == path and not os.path.lexists(link)  # nothing to connect to yet
        d = os.lstat(os.path.dirname(link))
        assert (d.st_uid, stat.S_IMODE(d.st_mode)) == (0, 0o700)
        os.symlink(tmp_path / "host.sock", path)
        assert "is a symbolic link, not the pod's socket" in fastif.pin(base, "p3", "std", opts)
        assert not _connected(other, 3.0), "the core connected through the pod's link"
        assert not os.path.lexists(link)

        os.unlink(path)
        mine = _listener(path)
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        assert fastif.pin(base, "p3", "std", opts) is None
        assert os.lstat(link).st_ino == os.lstat(path).st_ino
        assert _connected(mine, 5.0)  # the pod's socket, through the core's link
        assert not _connected(other, 0.5)

        mine.close()  # the pod's application restarts: a new socket there
        os.unlink(path)
        again = _listener(path)
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        assert fastif.pin(base, "p3", "std", opts) is None
        assert _connected(again, 5.0)
        again.close()
    finally:
        fastif.detach(eng, port, base, "p3", "std", fastif.VHOST_USER)
        other.close()
    assert not os.path.lexists(link) and os.path.lexists(path)  # the pod's stays


@ROOT_ONLY
def test_a_vhost_user_plane_without_a_port_leaves_no_link_of_the_core(base):
    """A plane whose pod is removed with no port (its add never finished, or
    the replay drops a pod whose namespace died while the service was
    away): the core's link to its socket goes all the same, not left in
    the core's directory once the pod's is gone."""
    from dataplane import fastif

    opts = {"uid": NOBODY, "gid": NOBODY}
    path = fastif.socket_path(base, "p4", "std")
    os.makedirs(os.path.dirname(path))
    pod = _listener(path)
    os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    try:
        assert fastif.pin(base, "p4", "std", opts) is None
        link = fastif.pin_path(base, "p4", "std")
        assert os.path.lexists(link)
        fastif.detach(None, None, base, "p4", "std", fastif.VHOST_USER)
        fastif.remove_pod_dir(base, "p4")
        assert not os.path.lexists(link)
        assert os.listdir(os.path.dirname(link)) == []
    finally:
        pod.close()


# --------------------------------------------------- a re-attach that fails
@pytest.mark.netns
@ROOT_ONLY
def test_failed_reattach_keeps_the_pods_directory_and_vhost_socket(fabric, sockdir):
    """A pod with a vhost-user plane (std, its testpmd listens) and a memif
    plane (media). The service is killed; meanwhile the memif socket path
    became a directory, so the pod cannot be attached again: the vhost-user
    port that was made is undone, but the pod's socket and its directory
    (the container's mount) stay, through every housekeeping round. Once
    the path is free the pod is attached again and its testpmd, never
    restarted, forwards through the same socket."""
    fab = fabric()
    node = dpk.node_with_sockets(fab, sockdir)
    vpod = dpk.add_pod(fab, node, "v")
    spec = {
        "pod_type": "ct",
        "network_plane": ["std", "media"],
        "networks": {"std": "net1", "media": "net3"},
        "interfaces": {"std": {"kind": "vhost-user"}, "media": {"kind": "memif"}},
    }
    info = dpk.add_pod(fab, node, "d", spec=spec)
    name, ns = info["name"], info["ns"]
    planes = {p["plane"]: p for p in info["planes"]}
    dp, mp, vp = planes["std"], planes["media"], vpod["planes"][0]
    pdir = os.path.dirname(dp["socket"])
    tp = dpk.PodTestpmd(ns, [dpk.client_vdev("vhost-user", dp)], fab.tmp, fwd="macswap")
    try:
        tp.link_up(0)
        tp.start()
        ok, got = dpk.wait_echo(vpod, vp, dp, "a")
        assert ok, f"no echo before the restart: {got}"
        dir_ino, sock_ino = os.stat(pdir).st_ino, os.lstat(dp["socket"]).st_ino

        node.proc.kill()  # no clean-up of ports or sockets
        node.proc.wait()
        node.proc = None
        if os.path.lexists(mp["socket"]):
            os.unlink(mp["socket"])
        os.mkdir(mp["socket"])  # the memif server cannot listen there
        node.start()

        def kept():
            assert os.stat(pdir).st_ino == dir_ino, "the pod's directory was made anew"
            st = os.lstat(dp["socket"])
            assert stat.S_ISSOCK(st.st_mode) and st.st_ino == sock_ino, "vhost socket removed"

        pods = {p["name"]: p for p in node.api("GET", "/v1/pods")}
        assert "Is a directory" in pods[name].get("not_attached", ""), pods[name]
        kept()
        assert not [p for p in node.status()["ports"] if p.get("pod") == name]
        time.sleep(6)  # a housekeeping round (5 s) tries, and fails, again
        assert name in node.status()["pods_not_attached"]
        kept()

        os.rmdir(mp["socket"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            d = [p for p in node.api("GET", "/v1/pods") if p["name"] == name][0]
            if "not_attached" not in d:
                break
            time.sleep(0.5)
        assert "not_attached" not in d, d
        kept()
        ok, got = dpk.wait_echo(vpod, vp, dp, "b")
        assert ok, f"no echo after the re-attach: {got}\n{tp.text()[-2000:]}"
        assert tp.p.poll() is None
    finally:
        tp.quit()
    node.api("DELETE", f"/v1/pods?name={name}")
    assert not os.path.exists(pdir)


# ------------------------------------------------------------------- spec
def test_socket_planes_of_one_pod_with_different_owners_refused():
    from dataplane.config import parse_config
    from dataplane.errors import ConfigError
    from dataplane.podspec import parse_pod_spec

    cfg = parse_config(dpk.CONFIG)

    def spec(std, media):
        return {
            "pod_type": "ct",
            "network_plane": ["std", "media"],
            "networks": {"std": "net1", "media": "net3"},
            "interfaces": {"std": std, "media": media},
        }

    memif, vhost = {"kind": "memif"}, {"kind": "vhost-user"}
    with pytest.raises(ConfigError) as e:
        parse_pod_spec(spec({**memif, "uid": 1000}, {**vhost, "uid": 2000}), cfg)
    assert str(e.value) == (
        "interfaces.media.uid: 2000 differs from uid 1000 of plane std: a pod's memif and "
        "vhost-user planes share one socket directory, owned by one user"
    )
    with pytest.raises(
        ConfigError, match="interfaces.media.gid: 7 differs from gid 8 of plane std"
    ):
        parse_pod_spec(spec({**memif, "uid": 1, "gid": 8}, {**memif, "uid": 1, "gid": 7}), cfg)
    # the same owner, or one plane giving none, or a veth beside: taken
    for s in (
        spec({**memif, "uid": 1000, "gid": 5}, {**vhost, "uid": 1000, "gid": 5}),
        spec({**memif, "uid": 1000}, vhost),
        spec({**memif, "uid": 1000}, {**vhost, "gid": 5}),
        spec({**memif, "uid": 1000}, "rtp0"),
    ):
        ps = parse_pod_spec(s, cfg)
        assert parse_pod_spec(ps.to_dict(), cfg) == ps
    # a socket plane that gives none has the pod's owner: every socket in
    # the pod's directory is its user's (a veth plane has none)
    ps = parse_pod_spec(spec({**memif, "uid": 1000}, {**vhost, "gid": 5}), cfg)
    assert [(p.options.get("uid"), p.options.get("gid")) for p in ps.planes] == [
        (1000, 5),
        (1000, 5),
    ]
    ps = parse_pod_spec(spec({**memif, "uid": 1000}, "rtp0"), cfg)
    assert [p.options.get("uid") for p in ps.planes] == [1000, None]
