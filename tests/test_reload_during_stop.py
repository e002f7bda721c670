"""A reload asked through the API while the service stops: the API's
request threads are not waited for by a stop, so a reload that waited for
the pod lock while the stop held it goes on after the engine and the store
are closed. It is refused as one to a service that is not running - not
failed with an internal error on the closed store.

The order is made, not waited for: the service runs under this module's
harness (``python -m tests.test_reload_during_stop run -c node.yaml``),
whose reload asks the service to stop once it has read the file, and goes
on only after the stop has closed the engine; the stop ends only after the
reload has, and the harness logs how the reload ended."""

import os
import sys
import uuid

import pytest

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

#: the network the reload adds: the store is read for it
NET3 = "  - {name: net3, vni: 103, plane: std, subnet: 192.168.53.0/24}"

#: what the harness logs once the reload has ended
ENDED = "harness: reload ended: "


def install():
    import signal
    import threading

    from dataplane import engine, service

    closed = threading.Event()  # the stop has closed the engine
    ended = threading.Event()  # the reload has ended
    real_close = engine.Engine.close
    real_changes = service.reload_changes
    real_reload = service.NodeService.reload
    real_stop = service.NodeService.stop

    def close(self, *a, **kw):
        try:
            return real_close(self, *a, **kw)
        finally:
            closed.set()

    def reload_changes(old, new):
        out = real_changes(old, new)
        os.kill(os.getpid(), signal.SIGTERM)  # the stop, while this reload runs
        closed.wait(60)
        return out

    def reload(self, *a, **kw):
        try:
            real_reload(self, *a, **kw)
        except Exception as e:
            service.log.error("%s%s: %s", ENDED, type(e).__name__, e)
            raise
        else:
            service.log.error("%sapplied", ENDED)
        finally:
            ended.set()

    def stop(self):
        real_stop(self)
        ended.wait(60)  # the reload's outcome logged before the process ends

    engine.Engine.close = close
    service.reload_changes = reload_changes
    service.NodeService.reload = reload
    service.NodeService.stop = stop


def test_a_reload_the_stop_overtook_is_refused_as_not_running(tmp_path):
    # imported here: the harness's process runs this module without them
    from test_service import NETWORKS, Node

    class StopDuringReloadNode(Node):
        def command(self):
            return [sys.executable, "-m", "tests.test_reload_during_stop", "run", "-c",
                    str(self.cfg)]  # fmt: skip

    n = StopDuringReloadNode(tmp_path, uuid.uuid4().hex[:5], networks=NETWORKS)
    try:
        n.start()
        n.cfg.write_text(n.cfg.read_text().replace(NETWORKS, NETWORKS + "\n" + NET3))
        r = n.cli("reload", check=False)
        assert r.returncode != 0
        assert n.proc.wait(60) == 0
        log = (n.tmp / "service.log").read_text()
        said = [ln for ln in log.splitlines() if ENDED in ln]
        assert len(said) == 1 and "ConfigError: reload: the service is not running" in said[0], said
        assert "api POST /v1/reload failed" not in log, log
    finally:
        n.cleanup()


if __name__ == "__main__":
    install()
    from dataplane.cli import main

    sys.exit(main(sys.argv[1:]))
