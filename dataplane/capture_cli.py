"""``dataplane capture``: the client side of a packet capture.

Starts a capture through the control API, fetches the captured frames every
50 ms, writes them as pcapng (``-w FILE``) or prints one line per frame like
tcpdump, and stops the capture when ``-c`` frames came, ``--duration`` ran
out, the file reached ``--max-size``, on Ctrl-C or when the file cannot be
written (a full disk); the file is always closed whole, and the counts of
frames the capture could not keep (dropped from the capture, never from
forwarding) are printed at the end.
"""

import argparse
import base64
import os
import re
import signal
import stat
import sys
import time

from .pcapng import PcapngWriter, clock, summary

POLL_S = 0.05
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _size(text: str) -> int:
    """Bytes of ``--max-size``: a number with k, M or G (KiB, MiB, GiB)."""
    m = re.fullmatch(r"(\d+)([kmg]?)", text.strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: bytes, or a number with k, M or G")
    return int(m.group(1)) * _UNITS[m.group(2)]


def add_parser(sub):
    p = sub.add_parser(
        "capture",
        help="capture frames of a port or pod, like tcpdump",
        description="Capture frames of a port (name or index, or 'uplink'), a pod (all "
        "its planes) or POD:PLANE inside the dataplane. FILTER is a pcap-filter "
        "expression, as for tcpdump.",
    )
    p.add_argument("target", help="PORT | uplink | POD | POD:PLANE")
    p.add_argument(
        "filter", nargs="*", default=[], help="pcap-filter expression (default: every frame)"
    )
    p.add_argument("-w", "--write", metavar="FILE", help="write pcapng to FILE")
    p.add_argument(
        "-c", "--count", type=int, default=0, help="stop after COUNT frames (0: no limit)"
    )
    p.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0: no limit)")
    p.add_argument(
        "--max-size",
        type=_size,
        default=0,
        metavar="SIZE",
        help="with -w: stop before the file passes SIZE bytes, k/M/G for KiB/MiB/GiB (0: no limit)",
    )
    p.add_argument("--direction", choices=["rx", "tx", "both"], default="both")
    p.add_argument("-s", "--snaplen", type=int, default=9216, help="bytes kept per frame")
    # -c is the frame count here, as for tcpdump: the config is --config only
    p.add_argument("--socket", help="control API socket")
    p.add_argument("--config", help="node config (for its api_socket)")
    p.set_defaults(fn=run)
    return p


def _open(path):
    """``path`` opened raw for writing, not yet emptied (a capture that does
    not start leaves a file that was there as it was), and whether this
    created it."""
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            return open(fd, "wb", buffering=0), True
        except FileExistsError:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
            return open(fd, "wb", buffering=0), False
    except OSError as e:
        raise SystemExit(f"dataplane capture: -w {path}: {e.strerror or e}")


def run(args):
    if args.count < 0 or not 0 <= args.duration < float("inf"):
        raise SystemExit("dataplane capture: --count and --duration are >= 0 (0: no limit)")
    if args.max_size and not args.write:
        raise SystemExit("dataplane capture: --max-size needs -w FILE")

    def term(signum, frame):  # timeout(1), kill: stop as on Ctrl-C
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, term)
    try:
        return _capture(args)
    finally:
        signal.signal(signal.SIGTERM, old_term)


def _capture(args):
    from .cli import _call

    body = {
        "target": args.target,
        "direction": args.direction,
        "filter": " ".join(args.filter),
        "snaplen": args.snaplen,
    }
    # the file first: one that cannot be written starts no capture
    out, created = _open(args.write) if args.write else (None, False)
    try:
        cap = _call(args, "POST", "/v1/capture", body)
    except (SystemExit, KeyboardInterrupt) as e:
        if out:  # a file this made goes; one that was there stays untouched
            out.close()
            if created:
                try:
                    os.unlink(args.write)
                except OSError:
                    pass
        if isinstance(e, KeyboardInterrupt):
            raise SystemExit("dataplane capture: interrupted before the capture started")
        raise
    cid, ifaces = cap["id"], cap["interfaces"]
    index = {i["port"]: n for n, i in enumerate(ifaces)}
    names = {i["port"]: i["name"] for i in ifaces}
    where = ", ".join(f"{i['name']} (port {i['port']})" for i in ifaces)
    n, stats, writer = 0, None, None
    failed = None  # the error that stopped writing the file
    full = False  # the next frame would have passed --max-size
    end = time.monotonic() + args.duration if args.duration else None

    def take(frames):
        nonlocal n, full, failed
        try:
            for ts, port, d, orig, b64 in frames:
                if (args.count and n >= args.count) or full or failed:
                    return
                data = base64.b64decode(b64)
                if out:
                    if not writer.write(index[port], ts, d, orig, data):
                        full = True
                        return
                else:
                    arrow = "In " if d == "rx" else "Out"
                    print(f"{clock(ts)} {names[port]} {arrow} {summary(data)}", flush=True)
                n += 1
        finally:
            if writer and not failed:
                try:
                    writer.flush()
                except OSError as e:
                    failed = e

    ended = None  # why the capture ended before its client stopped it
    try:
        if out:
            try:
                if stat.S_ISREG(os.fstat(out.fileno()).st_mode):
                    out.truncate(0)  # it started: the file is the capture's (not a pipe's)
                writer = PcapngWriter(
                    out, [(i["name"], cap["snaplen"]) for i in ifaces], max_size=args.max_size
                )
            except OSError as e:
                failed = e
        print(
            f"dataplane: capturing {args.direction} on {where}"
            + (f", filter '{body['filter']}'" if body["filter"] else "")
            + "; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        while not (
            (args.count and n >= args.count) or (end and time.monotonic() >= end) or full or failed
        ):
            try:
                r = _call(args, "GET", "/v1/capture", query={"id": cid})
            except SystemExit as e:
                ended = f"the service stopped answering ({str(e.code).removeprefix('dataplane: ')})"
                break
            take(r["frames"])
            stats = r["stats"]
            if r.get("ended"):
                ended = r["ended"]
                break
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        pass
    finally:
        if ended is None:
            try:
                r = _call(args, "DELETE", "/v1/capture", query={"id": cid})
                take(r["frames"])
                stats = r["stats"]
                ended = r.get("ended")
            except (SystemExit, KeyboardInterrupt):
                pass  # the service is gone or the capture expired: keep what came
        if out:  # the capture is stopped: finishing the file takes no time
            old = [signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)]
            try:
                take([])  # what an interrupt kept from being written
                try:
                    out.close()
                except OSError as e:
                    failed = failed or e
            finally:
                signal.signal(signal.SIGINT, old[0])
                signal.signal(signal.SIGTERM, old[1])
    s = stats or {}
    if failed:
        print(
            f"dataplane capture: -w {args.write}: {failed.strerror or failed}; "
            "the capture stopped, the file ends with its last whole frame",
            file=sys.stderr,
        )
    elif full:
        print(
            f"dataplane: the capture ended: {args.write} reached --max-size "
            f"({args.max_size} bytes)",
            file=sys.stderr,
        )
    elif ended:
        print(f"dataplane: the capture ended: {ended}", file=sys.stderr)
    kept = writer.frames if writer else 0 if out else n
    print(
        f"dataplane: {kept} frames {'written to ' + args.write if out else 'shown'}; "
        f"{s.get('matched', 0)} matched the filter, "
        f"{s.get('dropped', 0)} dropped by the capture (never by forwarding)",
        file=sys.stderr,
    )
    return 1 if failed or (ended and ended.startswith("the service stopped")) else 0
