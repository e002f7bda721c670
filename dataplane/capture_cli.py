"""``dataplane capture``: the client side of a packet capture.

Starts a capture through the control API, fetches the captured frames every
50 ms, writes them as pcapng (``-w FILE``) or prints one line per frame like
tcpdump, and stops the capture when ``-c`` frames came, ``--duration`` ran
out or on Ctrl-C; the file is always closed whole, and the counts of frames
the capture could not keep (dropped from the capture, never from
forwarding) are printed at the end.
"""

import base64
import os
import signal
import sys
import time

from .pcapng import PcapngWriter, clock, summary

POLL_S = 0.05


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
    p.add_argument("--direction", choices=["rx", "tx", "both"], default="both")
    p.add_argument("-s", "--snaplen", type=int, default=9216, help="bytes kept per frame")
    # -c is the frame count here, as for tcpdump: the config is --config only
    p.add_argument("--socket", help="control API socket")
    p.add_argument("--config", help="node config (for its api_socket)")
    p.set_defaults(fn=run)
    return p


def run(args):
    from .cli import _call

    if args.count < 0 or not 0 <= args.duration < float("inf"):
        raise SystemExit("dataplane capture: --count and --duration are >= 0 (0: no limit)")
    body = {
        "target": args.target,
        "direction": args.direction,
        "filter": " ".join(args.filter),
        "snaplen": args.snaplen,
    }
    # the file first: one that cannot be written starts no capture
    try:
        out = open(args.write, "wb") if args.write else None
    except OSError as e:
        raise SystemExit(f"dataplane capture: -w {args.write}: {e.strerror or e}")
    try:
        cap = _call(args, "POST", "/v1/capture", body)
    except SystemExit:
        if out:
            out.close()
            os.unlink(args.write)
        raise
    cid, ifaces = cap["id"], cap["interfaces"]
    index = {i["port"]: n for n, i in enumerate(ifaces)}
    names = {i["port"]: i["name"] for i in ifaces}
    writer = PcapngWriter(out, [(i["name"], cap["snaplen"]) for i in ifaces]) if out else None
    where = ", ".join(f"{i['name']} (port {i['port']})" for i in ifaces)
    print(
        f"dataplane: capturing {args.direction} on {where}"
        + (f", filter '{body['filter']}'" if body["filter"] else "")
        + "; Ctrl-C to stop",
        file=sys.stderr,
        flush=True,
    )
    n, stats = 0, None
    end = time.monotonic() + args.duration if args.duration else None

    def take(frames):
        nonlocal n
        for ts, port, d, orig, b64 in frames:
            if args.count and n >= args.count:
                return
            data = base64.b64decode(b64)
            if writer:
                writer.write(index[port], ts, d, orig, data)
            else:
                arrow = "In " if d == "rx" else "Out"
                print(f"{clock(ts)} {names[port]} {arrow} {summary(data)}", flush=True)
            n += 1

    def term(signum, frame):  # timeout(1), kill: stop as on Ctrl-C
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, term)
    ended = None  # why the capture ended before its client stopped it
    try:
        while not (args.count and n >= args.count) and not (end and time.monotonic() >= end):
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
        if out:
            out.close()
        signal.signal(signal.SIGTERM, old_term)
    s = stats or {}
    if ended:
        print(f"dataplane: the capture ended: {ended}", file=sys.stderr)
    print(
        f"dataplane: {n} frames {'written to ' + args.write if out else 'shown'}; "
        f"{s.get('matched', 0)} matched the filter, "
        f"{s.get('dropped', 0)} dropped by the capture (never by forwarding)",
        file=sys.stderr,
    )
    return 1 if ended and ended.startswith("the service stopped") else 0
