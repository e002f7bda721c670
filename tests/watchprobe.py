"""A watch of the cluster store's endpoints, run inside a test's network
namespace (tests/test_etcd_blackhole.py)::

    python -m tests.watchprobe URL PREFIX HEARTBEAT SECONDS

Prints ``port N`` (the local TCP port of the watch's stream) once the
watch is established, then waits until the test writes a line on stdin
(its traffic is cut by then), and prints ``ended S: REASON`` when the
watch ends with an error S seconds after that, or ``running`` after
SECONDS without one."""

import sys
import time


def main(argv):
    url, prefix, heartbeat, seconds = argv[0], argv[1], float(argv[2]), float(argv[3])
    from dataplane.store.etcd import EtcdStore

    store = EtcdStore([url], prefix=prefix, timeout=2)
    errors = []
    w = store.watch_endpoints(
        None, lambda kind, obj: errors.append(obj) if kind == "error" else None, heartbeat
    )
    print("port", w._sock.getsockname()[1], flush=True)
    sys.stdin.readline()
    t = time.monotonic()
    ended = w.wait(seconds)
    if ended:
        print(f"ended {time.monotonic() - t:.1f}: {errors[0] if errors else w.error}", flush=True)
    else:
        print("running", flush=True)
    w.cancel()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
