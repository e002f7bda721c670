"""An etcd server for tests: Debian's etcd-server (/usr/bin/etcd) on 127.0.0.1,
free ports, a temporary data directory; started and stopped (by its PID) by
the test. The system's etcd service, if any, is never used or touched.

    srv = EtcdServer(); srv.start()
    srv.url            # http://127.0.0.1:PORT
    srv.stop(); srv.start()      # a restart: same data directory and ports
    srv.pause(); srv.resume()    # SIGSTOP/SIGCONT: a silent, hung etcd
    srv.close()                  # stop and remove the data directory

``shared_server(config)`` gives one server for the whole test session.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

ETCD = os.environ.get("DATAPLANE_TEST_ETCD", "/usr/bin/etcd")


def have_etcd() -> bool:
    return os.access(ETCD, os.X_OK)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def thread_states(pid: int) -> list:
    """The scheduler state letter (R, S, T, ...) of each thread of ``pid``;
    OSError if it is gone."""
    states = []
    for t in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{t}/stat") as f:
            states.append(f.read().rsplit(")", 1)[1].split()[0])
    return states


class EtcdServer:
    def __init__(self, name="dptest"):
        self.name = name
        base = (
            "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        )  # tmpfs: no fsync cost
        self.dir = tempfile.mkdtemp(prefix="dptest-etcd-", dir=base)
        self.data_dir = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "etcd.log")
        self.client_port = self.peer_port = None
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def _cmd(self):
        client = self.url
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            ETCD,
            "--name",
            self.name,
            "--data-dir",
            self.data_dir,
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"{self.name}={peer}",
            "--initial-cluster-token",
            f"dptest-{os.getpid()}-{id(self)}",
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]

    def start(self, timeout=30.0):
        """Start (or start again on the same data directory and ports)."""
        assert self.proc is None, "already running"
        attempts = 3 if self.client_port is None else 1
        for attempt in range(attempts):
            if self.client_port is None or attempt:
                self.client_port, self.peer_port = _free_port(), _free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
            log = open(self.log_path, "ab")
            try:
                self.proc = subprocess.Popen(
                    self._cmd(), stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env
                )
            finally:
                log.close()
            if self._wait_healthy(timeout):
                return self
            self._kill()
        raise RuntimeError(f"etcd did not start; its log:\n{self.log_tail()}")

    def _ssl_context(self):
        """The TLS context its health check uses: none (plain http)."""
        return None

    def _wait_healthy(self, timeout) -> bool:
        ctx = self._ssl_context()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1, context=ctx) as r:
                    if b'"true"' in r.read():
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def log_tail(self, n=30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"

    def _kill(self):
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGCONT)  # in case it was paused
            except ProcessLookupError:
                pass
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)

    def stop(self):
        """Stop the server (its PID only); the data directory stays."""
        self._kill()

    def pause(self):
        """SIGSTOP, and wait until every thread of it has stopped: the
        signal is delivered asynchronously, and a thread still running on
        another CPU could answer one more request."""
        pid = self.proc.pid
        os.kill(pid, signal.SIGSTOP)
        for _ in range(500):
            try:
                states = thread_states(pid)
            except OSError:
                return  # gone
            if all(st in "Tt" for st in states):
                return
            time.sleep(0.01)
        raise RuntimeError(f"etcd {pid} did not stop on SIGSTOP")

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self):
        self._kill()
        shutil.rmtree(self.dir, ignore_errors=True)


_shared = None


def shared_server(config=None) -> EtcdServer:
    """One etcd for the test session (started on first use, stopped when
    pytest ends)."""
    global _shared
    if _shared is None:
        srv = EtcdServer()
        try:
            srv.start()
        except Exception:
            srv.close()
            raise
        _shared = srv
        if config is not None:
            config.add_cleanup(_close_shared)
        else:  # pragma: no cover
            import atexit

            atexit.register(_close_shared)
    return _shared


def _close_shared():
    global _shared
    if _shared is not None:
        _shared.close()
        _shared = None


def watch_a_put(store, between=lambda: None):
    """A watch of ``store``'s endpoints opened, ``between()`` run, static
    host h1 put on network net1 (which must be recorded): the events the
    watch delivered within a few seconds, as (kind, pod)."""
    got = []
    w = store.watch_endpoints(None, lambda kind, obj: got.append((kind, obj)))
    between()
    store.put_static_endpoint("h1", "net1", "02:00:00:00:00:11", "192.168.10.11", "10.0.0.9")
    for _ in range(200):
        if got:
            break
        time.sleep(0.02)
    w.cancel()
    return [(k, o["pod"]) for k, o in got]
