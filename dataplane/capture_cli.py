"""``dataplane capture``: the client side of a packet capture.

Starts a capture through the control API, fetches the captured frames every
50 ms, writes them as pcapng (``-w FILE``) or prints one line per frame like
tcpdump, and stops the capture when ``-c`` frames came, ``--duration`` ran
out, the file reached ``--max-size``, on Ctrl-C or when the file cannot be
written (a full disk); the file is always closed whole, and the counts of
frames the capture could not keep (dropped from the capture, never from
forwarding) are printed at the end. The capture's id is chosen here and sent
with the start, so that a Ctrl-C or SIGTERM that comes before the start's
answer was read stops the capture too.
"""

import argparse
import base64
import contextlib
import os
import re
import secrets
import signal
import stat
import sys
import time

from .pcapng import PcapngWriter, clock, summary

POLL_S = 0.05
#: how long an interrupted client waits for the service to take its stop
CANCEL_WAIT_S = 2.0
STOPS = (signal.SIGINT, signal.SIGTERM)
INTERRUPTED = "dataplane capture: interrupted before the capture started"
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
        description="Capture frames of a port (name or index, or 'uplink'), every port "
        "('any': those there at the start and those added while it runs), a pod (all its planes) or POD:PLANE inside "
        "the dataplane. FILTER is a pcap-filter expression, as for tcpdump.",
    )
    p.add_argument("target", help="PORT | uplink | any | POD | POD:PLANE")
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
    p.add_argument(
        "--direction",
        choices=["rx", "tx", "both", "drop", "all"],  # checks.CAPTURE_DIRECTIONS
        default="both",
        help="rx, tx, both (default), drop: the frames the core drops there, each with "
        "its reason (by the port they came in by, or, dropped at a port's transmit, "
        "the port they were to leave by), or all",
    )
    p.add_argument("-s", "--snaplen", type=int, default=9216, help="bytes kept per frame")
    # -c is the frame count here, as for tcpdump: the config is --config only
    p.add_argument("--socket", help="control API socket")
    p.add_argument("--config", help="node config (for its api_socket)")
    p.set_defaults(fn=run)
    return p


def _open(path, new):
    """``path`` opened raw for writing, not yet emptied (a capture that does
    not start leaves a file that was there as it was): made here if ``new``
    (None if it exists), else as it is (a pipe's open waits for its reader)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if new else 0)
    try:
        return open(os.open(path, flags, 0o666), "wb", buffering=0)
    except FileExistsError:
        return None
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
    except KeyboardInterrupt:  # before the start was sent, or a second one while stopping
        raise SystemExit(INTERRUPTED) from None
    finally:
        signal.signal(signal.SIGTERM, old_term)


@contextlib.contextmanager
def _ignoring_stops():
    """Ctrl-C and SIGTERM ignored: what runs here is short and must finish."""
    old = [signal.signal(s, signal.SIG_IGN) for s in STOPS]
    try:
        yield
    finally:
        for s, h in zip(STOPS, old):
            signal.signal(s, h)


def _cancel(args, cid):
    """Stop capture ``cid`` without waiting long for the service, whether it
    runs or its start is still on the way (the service then refuses that
    start). Once the request is sent the service acts on it, answered or not."""
    from .api import call
    from .cli import _socket

    with _ignoring_stops():
        try:  # the socket's path was found for the start: it is found again
            call(
                _socket(args),
                "DELETE",
                "/v1/capture",
                query={"id": cid},
                timeout=CANCEL_WAIT_S,
                busy_wait=CANCEL_WAIT_S,
            )
        except Exception:  # noqa: BLE001 - not running (404), or the service is gone or slow
            pass


def _capture(args):
    from .cli import _call

    # The capture's id is chosen here and sent with the start: an interrupt
    # at any point after the start was sent stops the capture by its id,
    # whether or not the answer was read (a stop the service gets first
    # makes it refuse the start).
    cid = secrets.token_hex(8)
    body = {
        "target": args.target,
        "direction": args.direction,
        "filter": " ".join(args.filter),
        "snaplen": args.snaplen,
        "id": cid,
    }
    out, created = None, False
    cap = None  # the service's answer to the start
    posting = interrupted = False
    index, names = {}, {}
    n, stats, writer = 0, None, None
    reasons = {}  # dropped frames taken, by reason
    failed = None  # the error that stopped writing the file
    full = False  # the next frame would have passed --max-size
    ended = None  # why the capture ended before its client stopped it

    def joined(answer):
        """Ports an `any` capture took after its start (pods attached
        since), as the service's answer lists them: told, and in the file."""
        nonlocal full
        for i in answer.get("interfaces", ()):
            fid = i.get("id", i["port"])
            if fid in index:
                continue
            index[fid], names[fid] = len(index), i["name"]
            if writer is not None and not full and not failed:
                full = not writer.add_interface(i["name"], cap["snaplen"])
            print(
                f"dataplane: capturing {i['name']} (port {i['port']}) too",
                file=sys.stderr,
                flush=True,
            )

    def take(frames):
        nonlocal n, full, failed
        if out and writer is None:
            return  # the file was not begun (interrupted before, or it failed)
        try:
            for ts, port, d, orig, b64, *why in frames:  # a service before drops: 5
                why = why[0] if why else None
                if (args.count and n >= args.count) or full or failed:
                    return
                data = base64.b64decode(b64)
                if out:
                    if not writer.write(index[port], ts, d, orig, data, why):
                        full = True
                        return
                else:
                    arrow = {"rx": "In ", "tx": "Out"}.get(d) or f"Drop {why}:"
                    print(f"{clock(ts)} {names[port]} {arrow} {summary(data)}", flush=True)
                n += 1
                if d == "drop":
                    reasons[why] = reasons.get(why, 0) + 1
        finally:
            if writer and not failed:
                try:
                    writer.flush()
                except OSError as e:
                    failed = e

    try:
        # the file first: one that cannot be written starts no capture
        if args.write:
            # an interrupt while it is made waits until `created` says whose it is
            held = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
            try:
                out = _open(args.write, new=True)
                created = out is not None
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            if out is None:
                out = _open(args.write, new=False)
        posting = True
        cap = _call(args, "POST", "/v1/capture", body)
        ifaces = cap["interfaces"]
        # frames are told by an interface's id (a service before ids: its port)
        index = {i.get("id", i["port"]): n for n, i in enumerate(ifaces)}
        names = {i.get("id", i["port"]): i["name"] for i in ifaces}
        where = ", ".join(f"{i['name']} (port {i['port']})" for i in ifaces)
        end = time.monotonic() + args.duration if args.duration else None
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
            joined(r)
            take(r["frames"])
            stats = r["stats"]
            if r.get("ended"):
                ended = r["ended"]
                break
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if cap is None:  # refused, or interrupted before the answer was read
            with _ignoring_stops():
                if out:  # a file this made goes; one that was there stays untouched
                    out.close()
                    if created:
                        try:
                            os.unlink(args.write)
                        except OSError:
                            pass
            if interrupted and posting:  # the service may have started it
                _cancel(args, cid)
        elif ended is None:
            try:
                r = _call(args, "DELETE", "/v1/capture", query={"id": cid})
                joined(r)
                take(r["frames"])
                stats = r["stats"]
                ended = r.get("ended")
            except SystemExit:
                pass  # the service is gone or the capture expired: keep what came
            except KeyboardInterrupt:
                _cancel(args, cid)  # its last frames are not waited for
        if cap is not None and out:  # the capture is stopped: finishing the file takes no time
            with _ignoring_stops():
                take([])  # what an interrupt kept from being written
                try:
                    out.close()
                except OSError as e:
                    failed = failed or e
    if cap is None:
        raise SystemExit(INTERRUPTED)
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
    if reasons:  # a capture of drops: what it saw, most frequent first
        by = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        print(
            "dataplane: dropped frames taken, by reason: "
            + ", ".join(f"{why} {k}" for why, k in by),
            file=sys.stderr,
        )
    return 1 if failed or (ended and ended.startswith("the service stopped")) else 0
