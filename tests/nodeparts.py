"""Parts the node-service tests share beyond test_service.Node: the uplink's
peer moved into an underlay namespace (and a node started that way), and a
real Prometheus server."""

import contextlib
import socket
import subprocess
import time
import urllib.request
import uuid


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uplink_peer_in(node, ns, ip="10.99.0.2/24"):
    """Move the node's uplink peer (dpu<tag>b) into a new namespace ``ns``
    as the underlay host ``ip``; the caller deletes ``ns``."""
    peer = f"dpu{node.tag}b"
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "set", peer, "netns", ns)
    sh("ip", "-n", ns, "addr", "add", ip, "dev", peer)
    sh("ip", "-n", ns, "link", "set", peer, "up")


def start_prometheus(tmp_path, metrics_port, rules=None):
    """A Prometheus server scraping 127.0.0.1:metrics_port every second as
    job ``dataplane`` (evaluating ``rules`` if given), ready: (process, its
    port). The caller terminates it. Its port is picked free and then bound
    by Prometheus: a server that lost it to another process meanwhile
    exits, and a new one is started on another port (up to 3 times)."""
    (tmp_path / "prom.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        + (f"rule_files: [{rules}]\n" if rules else "")
        + "scrape_configs:\n  - job_name: dataplane\n"
        + f'    static_configs: [{{targets: ["127.0.0.1:{metrics_port}"]}}]\n'
    )
    for _ in range(3):
        port = free_port()
        with open(tmp_path / "prom.log", "wb") as log:
            prom = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={tmp_path}/prom.yml",
                    f"--storage.tsdb.path={tmp_path}/tsdb",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        if _prometheus_ready(prom, port):
            return prom, port
        prom.kill()
        prom.wait()
    raise AssertionError(f"prometheus did not start: {(tmp_path / 'prom.log').read_text()[-2000:]}")


def _prometheus_ready(prom, port, wait_s=60.0):
    """Whether Prometheus ``prom`` answers as ready on ``port`` (False: it
    exited, or never answered as Prometheus does)."""
    end = time.monotonic() + wait_s
    while time.monotonic() < end and prom.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
                if b"Prometheus" in r.read() and prom.poll() is None:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


#: a third network, on the media plane, after test_service.NETWORKS
MEDIA_NETWORK = "\n  - {name: net3, vni: 103, plane: media, subnet: 192.168.52.0/24}"


@contextlib.contextmanager
def underlay_node(tmp_path, networks, remote_networks, uplink_rate=None, extra="", vtep=""):
    """A started test_service.Node whose uplink's peer is the remote VTEP
    10.99.0.2 of ``remote_networks`` in an underlay namespace, the uplink
    shaped to ``uplink_rate`` if given, ``vtep`` (", key: value" ...)
    added to its vtep settings: (node, the namespace's name). Both are
    removed afterwards."""
    from test_service import Node

    tag = uuid.uuid4().hex[:5]
    remotes = f"remotes:\n  - {{vtep: 10.99.0.2, networks: [{', '.join(remote_networks)}]}}"
    n = Node(tmp_path, tag, networks=networks, extra=remotes + "\n" + extra)
    ul = f"dpul{tag}"
    try:
        uplink_peer_in(n, ul)
        if uplink_rate:
            vtep += f", uplink_rate: {uplink_rate}"
        n.cfg.write_text(
            n.cfg.read_text().replace(f"uplink: {n.uplink}}}", f"uplink: {n.uplink}{vtep}}}")
        )
        n.start()
        yield n, ul
    finally:
        n.cleanup()
        sh("ip", "netns", "del", ul, check=False)
