"""``dataplane capture``: the client side of a packet capture.

Starts a capture through the control API, fetches the captured frames every
50 ms, writes them as pcapng (``-w FILE``) or prints one line per frame like
tcpdump, and stops the capture when ``-c`` frames came, ``--duration`` ran
out, the file reached ``--max-size``, on Ctrl-C or when the file cannot be
written (a full disk); the file is always closed whole, and the counts of
frames the capture could not keep (dropped from the capture, never from
forwarding) are printed at the end. The capture's id is chosen here and sent
with the start, so that a Ctrl-C or SIGTERM that comes before the start's
answer was read stops the capture too. A Ctrl-C or SIGTERM while frames
the service handed out are on their way (its answer awaited, the frames
being written) stops the capture once they are written; a second one gives
up waiting, and the frames it leaves unwritten are counted at the end.
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

from .pcapng import PcapngWriter, clock, headers_size, summary

POLL_S = 0.05
#: how long an interrupted client waits for the service to take its stop
CANCEL_WAIT_S = 2.0
#: what stops a capture as Ctrl-C does: SIGHUP too (its terminal gone: the
#: capture must not go on in the core until the service's timeout)
STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
INTERRUPTED = "dataplane capture: interrupted before the capture started"
#: -s: every frame whole (a jumbo frame's 9216 bytes) but a GSO super-frame
SNAPLEN_DEFAULT = 9216
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
    p.add_argument(
        "-w", "--write", metavar="FILE", help="write pcapng to FILE ('-': standard output)"
    )
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
    p.add_argument(
        "-s",
        "--snaplen",
        type=int,
        default=SNAPLEN_DEFAULT,
        help=f"bytes kept per frame (0: {SNAPLEN_DEFAULT}, as large as a jumbo frame)",
    )
    # -c is the frame count here, as for tcpdump: the config is --config only
    p.add_argument("--socket", help="control API socket")
    p.add_argument("--config", help="node config (for its api_socket)")
    p.set_defaults(fn=run)
    return p


def _unlinked(path) -> bool:
    """``path`` removed (False if it could not be)."""
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


def _open(path, new):
    """``path`` opened raw for writing, not yet emptied (a capture that does
    not start leaves a file that was there as it was): made here if ``new``
    (None if it exists), else as it is (a pipe's open waits for its reader).
    ``-`` is standard output, as for tcpdump (never made here)."""
    if path == "-":
        if new:
            return None
        return open(os.dup(sys.stdout.fileno()), "wb", buffering=0)
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
    if args.snaplen == 0:  # tcpdump's "whole frames"
        args.snaplen = SNAPLEN_DEFAULT

    stops = _Stops()  # timeout(1), kill, a hangup: stop as on Ctrl-C
    # (a Ctrl-C ignored, as by a shell for a command it runs in the
    # background, stays so; a hangup ignored, as under nohup, too)
    old = [
        signal.getsignal(s)
        if signal.getsignal(s) == signal.SIG_IGN and s in (signal.SIGINT, signal.SIGHUP)
        else signal.signal(s, stops)
        for s in STOPS
    ]
    try:
        return _capture(args, stops)
    except KeyboardInterrupt:  # before the start was sent, or a second one while stopping
        raise SystemExit(INTERRUPTED) from None
    finally:
        for s, h in zip(STOPS, old):
            signal.signal(s, h)


class _Stops:
    """The handler of Ctrl-C and SIGTERM: KeyboardInterrupt, but not while
    frames the service hands out are on their way to the file or the
    screen (``held``: its answer awaited, then the frames written). There
    the first one only asks for the stop (``deferred``), which the capture
    acts on once they are written; a second one raises, giving up on a
    service slow to answer or an output that does not take its frames,
    but not while frames are being put in the file's buffer (``gathering``,
    which takes no time): it raises right after that. After a second
    stop (``gave_up``) nothing waits for the output any more: a pipe whose
    reader stalled gets what it takes at once, the rest counted unwritten."""

    def __init__(self):
        self.asked = False  # a stop came: a next one raises
        self.gave_up = False  # a second one came: no waiting for the output
        self.deferred = False  # ... while frames were on their way
        self.forced = False  # a second one came while gathering
        self.level = 0  # 0: raise; 1: held; 2: gathering

    def __call__(self, signum, frame):
        if self.level and not self.asked:
            self.asked = self.deferred = True
            return
        self.gave_up = self.asked
        self.asked = True
        if self.level == 2:
            self.forced = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def _at(self, level):
        was, self.level = self.level, max(self.level, level)
        try:
            yield
        finally:
            self.level = was
        if self.forced and self.level < 2:
            self.forced = False
            raise KeyboardInterrupt

    def held(self):
        return self._at(1)

    def gathering(self):
        return self._at(2)


class _NoCapture(Exception):
    """The service answered that it does not have the capture (404)."""


def _ask(args, method, cid):
    """GET or DELETE of capture ``cid``: the service's answer. A service
    that answers that it has no such capture raises _NoCapture (its
    words), one that does not answer SystemExit, as for any command."""
    from .api import APIError
    from .cli import _call

    try:
        return _call(args, method, "/v1/capture", query={"id": cid})
    except SystemExit as e:
        why = e.__context__  # what _call turned into the exit, if the service answered
        if isinstance(why, APIError) and why.status == 404:
            raise _NoCapture(str(why)) from None
        raise


def _too_small(args, answer):
    """Why --max-size is refused where the file's headers for the
    interfaces of ``answer`` (a start's, or a dry run's) pass it; None
    where they fit."""
    least = headers_size([(i["name"], answer["snaplen"]) for i in answer["interfaces"]])
    if args.max_size and least > args.max_size:
        return (
            f"dataplane capture: --max-size {args.max_size}: the file's headers alone take "
            f"{least} bytes; --max-size is at least {least}"
        )
    return None


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


def _capture(args, stops):
    from .api import APIError
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
    lost = False  # ... and the service had the frames since the last read no longer
    final = False  # stats are the capture's last: every frame it took was handed out
    got = 0  # frames the service's answers held
    cut = 0  # frames of those a second stop left neither written nor shown
    refused = None  # --max-size below the headers of the interfaces the start took

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
        """The frames of an answer into the file (gathered, then written)
        or onto the screen, those past -c, --max-size or a failed write
        left out. A second stop while a screen line waits to be shown
        raises, the frames not shown counted in ``cut``."""
        nonlocal n, full, failed, got, cut
        got += len(frames)
        if out and writer is None:
            return  # the file was not begun (interrupted before, or it failed)
        done = 0
        try:
            with stops.gathering() if out else contextlib.nullcontext():
                for ts, port, d, orig, b64, *why in frames:  # a service before drops: 5
                    why = why[0] if why else None
                    if (args.count and n >= args.count) or full or failed:
                        done = len(frames)
                        break
                    data = base64.b64decode(b64)
                    if out:
                        if not writer.add(index[port], ts, d, orig, data, why):
                            full = True
                            done = len(frames)
                            break
                    else:
                        arrow = {"rx": "In ", "tx": "Out"}.get(d) or f"Drop {why}:"
                        print(f"{clock(ts)} {names[port]} {arrow} {summary(data)}", flush=True)
                    n += 1
                    done += 1
                    if d == "drop":
                        reasons[why] = reasons.get(why, 0) + 1
        except KeyboardInterrupt:
            cut += len(frames) - done
            raise
        finally:
            if writer and not failed:
                try:
                    writer.flush(wait=not stops.gave_up)
                except BlockingIOError:
                    pass  # a pipe with no room, given up on: its frames stay unwritten
                except OSError as e:
                    failed = e

    try:
        if args.max_size:  # a size the file's headers do not fit in starts nothing
            try:
                dry = _call(args, "POST", "/v1/capture", dict(body, id=None, dry_run=True))
            except SystemExit as e:
                # a service from before dry runs (not restarted since an
                # upgrade) refuses the field by name: the start's own answer
                # is checked against --max-size instead, as it is anyway
                why = e.__context__
                if not (
                    isinstance(why, APIError)
                    and why.status == 400
                    and str(why).startswith("dry_run: unknown field")
                ):
                    raise
                dry = None
            refused = dry and _too_small(args, dry)
            if refused:
                raise SystemExit(refused)
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
        # the interfaces it took (`any`: ports added since the dry run) may not fit
        refused = _too_small(args, cap)
        if refused:
            raise KeyboardInterrupt  # stopped as an interrupted capture is
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
            # a stop now waits until what the service hands out is written
            with stops.held():
                try:
                    r = _ask(args, "GET", cid)
                except _NoCapture as e:
                    ended, lost = f"the service no longer has it ({e})", True
                    break
                except SystemExit as e:
                    why = str(e.code).removeprefix("dataplane: ")
                    ended, lost = f"the service stopped answering ({why})", True
                    break
                joined(r)
                take(r["frames"])
                stats = r["stats"]
            if r.get("ended"):
                ended, final = r["ended"], True
                break
            if stops.deferred:
                raise KeyboardInterrupt
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if cap is None:  # refused, or interrupted before the answer was read
            with _ignoring_stops():
                if out:  # a file this made goes; one that was there stays untouched
                    out.close()
                    if created:
                        _unlinked(args.write)
            if interrupted and posting:  # the service may have started it
                _cancel(args, cid)
        elif ended is None:
            try:
                # its last frames: a first stop now waits for them, a next one does not
                with stops.held():
                    r = _ask(args, "DELETE", cid)
                    joined(r)
                    take(r["frames"])
                    stats, final = r["stats"], True
                    ended = r.get("ended")
            except _NoCapture as e:
                ended, lost = f"the service no longer has it ({e})", True
            except SystemExit:
                pass  # the service is gone: keep what came
            except KeyboardInterrupt:
                _cancel(args, cid)  # its last frames are not waited for
        if cap is not None and out:  # the capture is stopped: what an interrupt kept from the file
            if writer is None or writer.seekable:
                with _ignoring_stops():  # a file: takes no time
                    take([])
            else:  # a pipe waits for its reader, but a stop gives up on it
                with contextlib.suppress(KeyboardInterrupt):
                    take([])
            with _ignoring_stops():
                try:
                    out.close()
                except OSError as e:
                    failed = failed or e
    if cap is None:
        raise SystemExit(INTERRUPTED)
    if refused:  # stopped before its file was begun: one made here goes
        if created:
            _unlinked(args.write)
        raise SystemExit(refused)
    s = stats or {}
    if failed and writer is None:  # not even its headers: no capture file at all
        stays = created and not _unlinked(args.write)
        print(
            f"dataplane capture: -w {args.write}: {failed.strerror or failed}; "
            "the capture stopped, nothing was written"
            + (" (the file is removed)" if created and not stays else ""),
            file=sys.stderr,
        )
    elif failed:
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
    # frames the capture took that a second stop left unwritten: those of
    # an answer given up on (known from the last counters: those the
    # capture took but did not drop were all handed out) and those cut
    unwritten = cut + (max(s.get("matched", 0) - s.get("dropped", 0) - got, 0) if final else 0)
    pending = writer.pending if writer else 0  # taken, but never taken by the pipe's reader
    if pending and not failed:
        print(
            f"dataplane: {pending} frames the capture took were not written: "
            f"{args.write}'s reader did not take them before the stop",
            file=sys.stderr,
        )
    if unwritten:
        print(
            f"dataplane: {unwritten} frames the capture took were not "
            f"{'written' if out else 'shown'}: stopped a second time while they were on "
            "their way",
            file=sys.stderr,
        )
    if reasons:  # a capture of drops: what it saw, most frequent first
        by = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        print(
            "dataplane: dropped frames taken, by reason: "
            + ", ".join(f"{why} {k}" for why, k in by),
            file=sys.stderr,
        )
    return 1 if failed or lost else 0
