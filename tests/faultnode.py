"""A node service whose etcd store stops the test's etcd right before a
chosen call, so a pod add or delete meets a store that stopped answering at
a known step (a real etcd, stopped by its PID, is what fails)::

    python -m tests.faultnode PLAN run -c node.yaml

PLAN is a file the test writes (and may write again to arm another stop)::

    {"etcd_pid": PID, "etcd_url": "http://127.0.0.1:PORT",
     "method": "set_pod_state", "pod": "rba", "nth": 1}

While it exists, the ``nth`` call of ``EtcdStore.<method>`` that has
``pod`` among its positional arguments first stops etcd (SIGTERM to
``etcd_pid``, then waits until it has exited and its client port refuses
connections), then goes on to the real call. With ``"when": "after"`` the
real call is made first and etcd stopped after it: the call then fails as
one whose answer etcd never sent (``EtcdUnavailable``), though etcd applied
it; with ``"when": "answered"`` the call succeeds and etcd stops right after
it, before the next; with ``"when": "delay"`` etcd is not stopped: the call
waits ``"seconds"`` first (a request held at that step while others come).
The plan fires once: the file is renamed to ``PLAN.fired``. The test starts
etcd again itself (it is etcd's parent).
"""

import functools
import json
import os
import signal
import socket
import sys
import time
import urllib.parse

METHODS = (
    "put_pod",
    "set_pod_state",
    "delete_pod",
    "allocate_ip",
    "allocate_mac",
    "reserve_mac",
    "add_endpoint",
    "set_endpoint_state",
)


def _ended(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie until the test, its
    parent, reaps it): its sockets are closed then."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _refuses(url: str) -> bool:
    u = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((u.hostname, u.port), timeout=0.5):
            return False
    except OSError:
        return True


def _stop_etcd(plan):
    os.kill(plan["etcd_pid"], signal.SIGTERM)
    deadline = time.monotonic() + 20
    while not (_ended(plan["etcd_pid"]) and _refuses(plan["etcd_url"])):
        if time.monotonic() > deadline:
            raise RuntimeError("faultnode: etcd did not stop")
        time.sleep(0.02)


def install(path: str):
    from dataplane.store.etcd import EtcdStore

    seen = {"plan": None, "calls": 0}

    def armed(method, args):
        """The plan if this call is the one it names, else None."""
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            return None
        if text != seen["plan"]:  # armed again: count afresh
            seen["plan"], seen["calls"] = text, 0
        plan = json.loads(text)
        if plan["method"] != method or plan["pod"] not in args:
            return None
        seen["calls"] += 1
        if seen["calls"] < plan.get("nth", 1):
            return None
        os.rename(path, path + ".fired")
        return plan

    for name in METHODS:
        real = getattr(EtcdStore, name)

        def wrapper(self, *args, __real=real, __name=name, **kw):
            from dataplane.store.etcdgw import EtcdUnavailable

            plan = armed(__name, args)
            when = plan.get("when", "before") if plan else None
            if when == "delay":
                time.sleep(plan["seconds"])
            elif when == "before":
                _stop_etcd(plan)
            out = __real(self, *args, **kw)
            if when in ("after", "answered"):
                _stop_etcd(plan)
            if when == "after":  # applied; its answer is lost
                raise EtcdUnavailable(f"etcd {plan['etcd_url']} does not answer (timed out)")
            return out

        setattr(EtcdStore, name, functools.wraps(real)(wrapper))


def main(argv):
    install(argv[0])
    from dataplane.cli import main as cli_main

    return cli_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
