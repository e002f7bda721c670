"""Helpers for the multi-node test (tests/test_cluster.py): an etcd server
inside a network namespace, and calls to the cluster store made from inside
that namespace (the test process itself stays in the root namespace, where
the namespaced etcd address is not reachable).

    srv = NetnsEtcd("ns-underlay", "10.99.1.100"); srv.start()
    srv.url                                  # http://10.99.1.100:2379
    store_call("ns-underlay", srv.url, "/prefix", "put_static_endpoint",
               "vm", "net1", "02:..", "192.168.60.200", "10.99.0.50")

``python -m tests.clusterhost URL PREFIX METHOD JSON-ARGS`` is what
store_call runs (inside the namespace); it prints the result as JSON.
"""

import collections
import json
import os
import subprocess
import sys
import time

from tests.etcdhost import EtcdServer, thread_states

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class NetnsEtcd(EtcdServer):
    """etcd run with ``ip netns exec NETNS`` (the PID is etcd's own: ip
    execs it), listening on ``address`` in that namespace. The ports are
    fixed (the namespace is the test's own, nothing else listens there)."""

    def __init__(self, netns, address, client_port=2379, peer_port=2380, name="dpcluster"):
        super().__init__(name)
        self.netns = netns
        self.address = address
        self.client_port, self.peer_port = client_port, peer_port

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.client_port}"

    def _cmd(self):
        # client URL: self.url; peers stay on the namespace's own loopback
        return ["ip", "netns", "exec", self.netns] + super()._cmd()

    def start(self, timeout=30.0):
        assert self.proc is None, "already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self._cmd(), stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env
            )
        if not self._wait_healthy(timeout):
            self._kill()
            raise RuntimeError(f"etcd did not start; its log:\n{self.log_tail()}")
        return self

    def _wait_healthy(self, timeout) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            # asked from inside the namespace (the address is not reachable here)
            r = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.netns,
                    sys.executable,
                    "-c",
                    _HEALTH,
                    self.url + "/health",
                ],
                capture_output=True,
                text=True,
            )
            if r.returncode == 0:
                return True
            time.sleep(0.05)
        return False

    def report(self) -> str:
        """What etcd is doing now, for a failure message: its process and
        threads' states (a stopped or starved etcd shows here), how long a
        health probe from inside its namespace takes, and its log's tail."""
        p = self.proc
        if p is None:
            state = "not running"
        elif p.poll() is not None:
            state = f"exited ({p.returncode})"
        else:
            try:
                states = dict(collections.Counter(thread_states(p.pid)))
            except OSError:
                states = {}
            state = f"pid {p.pid}, threads by state {states}"
        t0 = time.monotonic()
        try:
            r = subprocess.run(
                ["ip", "netns", "exec", self.netns, sys.executable, "-c", _HEALTH,
                 self.url + "/health"],
                capture_output=True, timeout=10,
            )  # fmt: skip
            health = "healthy" if r.returncode == 0 else "not healthy"
        except subprocess.TimeoutExpired:
            health = "no answer"
        took = time.monotonic() - t0
        return (
            f"etcd now: {state}; health probe: {health} after {took:.1f}s; "
            f"load {os.getloadavg()}; its log:\n{self.log_tail(12)}"
        )


# exit 0 once etcd says it is healthy (polls for up to 2 s)
_HEALTH = """
import sys, time, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for _ in range(20):
    try:
        if b'"true"' in opener.open(sys.argv[1], timeout=1).read():
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
"""


def store_call(netns, url, prefix, method, *args, timeout=60):
    """EtcdStore(url, prefix).METHOD(*args), run inside ``netns``; the JSON
    result (AssertionError with the message if it raised)."""
    r = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            sys.executable,
            "-m",
            "tests.clusterhost",
            url,
            prefix,
            method,
            json.dumps(args),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )
    if r.returncode != 0:
        raise AssertionError(f"store.{method}{args}: {r.stderr.strip()}")
    return json.loads(r.stdout)


def _main(argv):
    url, prefix, method, args = argv
    from dataplane.store.etcd import EtcdStore

    with EtcdStore([url], prefix=prefix) as store:
        print(json.dumps(getattr(store, method)(*json.loads(args))))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
