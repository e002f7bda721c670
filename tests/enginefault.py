"""A node service whose core cannot create a shaper's plane queues, as a
core out of memory answers (``port N: cannot create the plane queues``,
ENOMEM)::

    python -m tests.enginefault run -c node.yaml

The configuration refuses plane queues long enough to take a real core's
memory (their queue_len add up to half its mbuf pool at most), so a test
of what a reload does when the core fails part way makes the core's
refusal here: ``Engine.set_shaper`` raises it for any rate but 0, before
the core is asked. Everything else is the real service."""

import errno
import sys


def install():
    from dataplane import engine
    from dataplane.errors import DataplaneError

    real = engine.Engine.set_shaper

    def set_shaper(self, port, rate_bps, burst_bytes=16384):
        if rate_bps:
            raise DataplaneError(
                f"shaping port {port}: port {port}: cannot create the plane queues",
                -errno.ENOMEM,
            )
        return real(self, port, rate_bps, burst_bytes)

    engine.Engine.set_shaper = set_shaper


def main(argv):
    install()
    from dataplane.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
