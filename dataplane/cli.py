"""dataplane command line.

    dataplane run -c node.yaml [--log-level debug|info|warning|error]
                                          the node service, in the foreground
    dataplane check -c node.yaml          validate a config file, start nothing
    dataplane status                      what the running service has attached
    dataplane top [-d S] [-n N] [--lines N]   what it forwards now: rates per port,
                                          network, plane and drop reason; workers' load
    dataplane reload [--dry-run]          what a running service takes from its changed
                                          config (rates, marking, learning, storm control,
                                          anti-spoofing, networks, remotes), live
    dataplane pod add NAME --netns PATH --spec JSON|@FILE
    dataplane pod del NAME
    dataplane pod list
    dataplane net list                    this node's networks and flood lists
    dataplane net records                 the store's network records: who carries each
    dataplane net forget NAME             a network no node carries forgotten, its VNI free
    dataplane fdb [show] [--network NAME] [--mac MAC]   which port or VTEP each MAC goes to
    dataplane fdb summary [--network NAME]     entries by network and origin
    dataplane fdb clear [--network NAME] [--mac MAC]   learned MACs forgotten
    dataplane host add NAME --network NET --mac MAC --ip IP --vtep VTEP   (etcd store)
    dataplane host del NAME | dataplane host list
    dataplane capture PORT|uplink|any|POD[:PLANE] [-w FILE] [--max-size BYTES] [-c N]
                      [-s SNAPLEN] [--duration S] [--direction rx|tx|both|drop|all] [FILTER]
    dataplane node list                   the cluster's nodes, running or not
    dataplane node remove NAME            forget a node gone for good (its pods' records),
                                          or a renamed node's old name (SQLite store)
    dataplane attachment list             CNI attachments (container, ifname, pod)
    dataplane attachment del CONTAINER_ID IFNAME
    dataplane bench NAME [...]            a benchmark from the checkout (--help: which)

Client commands talk to the service's control API (HTTP+JSON on a unix
socket): --socket, or the api_socket of -c FILE (capture: --config FILE, its
-c being the frame count, as for tcpdump), or /run/dataplane/api.sock. Each
also takes --json (its answer as JSON) but capture, which writes frames.
"""

import argparse
import json
import logging
import os
import sys
import time

from .checks import is_af_xdp_port
from .config import DEFAULT_API_SOCKET, load_config
from .errors import ConfigError, DataplaneError


def _socket(args):
    if getattr(args, "socket", None):
        return args.socket
    if getattr(args, "top_socket", None):  # dataplane --socket S status
        return args.top_socket
    if getattr(args, "config", None):
        return load_config(args.config).api_socket
    return DEFAULT_API_SOCKET


def _call(args, method, endpoint, body=None, query=None):
    from .api import BUSY_RETRY_S, APIError, call

    try:
        return call(_socket(args), method, endpoint, body, query=query, busy_wait=BUSY_RETRY_S)
    except APIError as e:
        raise SystemExit(f"dataplane: {e}")
    except (FileNotFoundError, ConnectionRefusedError):
        hint = "is 'dataplane run' running?"
        named = getattr(args, "socket", None) or getattr(args, "top_socket", None)
        if endpoint == "/v1/reload" and getattr(args, "config", None) and not named:
            # the file's api_socket, which may be a new one: a restart takes that
            hint += (
                f" {args.config} names api_socket {_socket(args)}; api_socket changes only "
                "with a restart: give the running service's socket with --socket"
            )
        raise SystemExit(f"dataplane: no service answers on {_socket(args)} ({hint})")
    except OSError as e:  # e.g. a path longer than a unix socket's 107 bytes
        raise SystemExit(f"dataplane: --socket {_socket(args)}: {e.strerror or e}")


def _print(obj, as_json):
    if as_json:
        print(json.dumps(obj, indent=2))
        return
    if isinstance(obj, list):
        for o in obj:
            _print(o, False)
        return
    if isinstance(obj, dict) and "deleted" in obj and set(obj) <= {"deleted", "records_left"}:
        # DELETE's answer; records_left: the store failed after the pod was detached
        print(f"deleted {obj['deleted']}" if obj["deleted"] else "nothing to delete")
        if obj.get("records_left"):
            print(f"note: {obj['records_left']}")
        return
    if isinstance(obj, dict) and "planes" in obj:  # a pod
        print(f"{obj['name']}  netns={obj['netns']}  state={obj['state']}")
        if obj.get("not_attached"):
            print(f"  NOT ATTACHED (no forwarding; tried again every round): {obj['not_attached']}")
        for p in obj["planes"]:
            print(
                f"  {p['plane']:8s} {p['ifname'] or '-':10s} {p['ip']:15s} {p['mac']}  "
                f"net={p['network']}"
                + (f" host={p['host_ifname']}" if p.get("host_ifname") else "")
                + f" port={p['port']}"
                + (f" ip6={p['ip6']}" if p.get("ip6") else "")
            )
            _print_plane_kind(p)
        return
    print(json.dumps(obj, indent=2))


def _store_state(note: str) -> str:
    """The heading for a store that cannot serve this node (``note``: a
    view's store_error, or status's)."""
    from .store.reach import refuses

    return "STORE REFUSES THIS NODE" if refuses(note) else "STORE DOES NOT ANSWER"


def _store_note(rows) -> None:
    """A view answered without the store: say so first, once (every row
    carries the same ``store_error``)."""
    note = next((r["store_error"] for r in rows if r.get("store_error")), None)
    if note:
        print(f"{_store_state(note)}: {note}")


def _print_plane_kind(p):
    """What a memif, vhost-user or vf plane's application needs, on a line."""
    kind = p.get("kind", "veth")
    if kind == "veth":
        return
    need = [f"kind={kind}"]
    for key in ("socket", "pci", "device", "prefixlen", "gateway", "prefixlen6", "gateway6", "mtu"):
        if p.get(key) is not None:
            need.append(f"{key}={p[key]}")
    print("  " + " " * 8 + " " + " ".join(need))


def cmd_run(args):
    from .service import NodeService, setup_logging

    setup_logging(getattr(logging, args.log_level.upper()))
    cfg = load_config(args.config)
    # absolute: reload's answers name it, to clients in other directories
    NodeService(cfg, config_path=os.path.abspath(args.config)).run_forever()
    return 0


def cmd_check(args):
    from .startchecks import check_store, metrics_problem, uplink_in_use, uplink_notes

    cfg = load_config(args.config)
    # what 'run' would refuse because of the state store's records, read
    # only (a running service is not disturbed), and an uplink another
    # running service has (its lock looked at, not taken)
    store = check_store(cfg)
    errors = [e for e in [uplink_in_use(cfg), metrics_problem(cfg)] if e] + store.errors
    from .engine import EngineConfig

    try:  # what 'run' refuses on this machine: lcores it has not, or may not use
        EngineConfig(**cfg.engine_kwargs()).eal_args()
    except ConfigError as e:
        errors.append(str(e))
    if cfg.cpu_latency_us is not None:
        from .cpulatency import hold_problem

        errors += [e for e in [hold_problem()] if e]  # run refuses to start without it
    # why the kernel would not take the lane's programs, as run loads them
    # (under express_lane: false, as the host ends' guard)
    from .engine import HOST_ENDS_OPEN, express_probe

    lane_off, lane_remote = express_probe()
    if lane_off and cfg.express_lane:
        errors.append(f"express_lane: true, but {lane_off}")
    if errors:
        print(f"dataplane: {chr(10).join(errors)}", file=sys.stderr)
        return 2
    n = len(cfg.networks)
    print(f"{args.config}: ok (node {cfg.node}, {n} network{'s' * (n != 1)}, mode {cfg.mode})")
    for a in cfg.advice() + store.warnings + uplink_notes(cfg):
        print(f"warning: {a}")
    if lane_off and cfg.express_lane is None:  # auto: the node runs without the lane
        print(f"warning: express lane off (auto): {lane_off}")
    if lane_off and cfg.express_lane is False and cfg.kernel_driver == "afpacket":
        print(
            "warning: express_lane: false, and the kernel would not take the lane's programs as "
            f"the pods' host ends' guard: {HOST_ENDS_OPEN}: {lane_off}"
        )
    if store.read:
        # (a store with nothing recorded yet says so itself)
        tail = "" if "no pod recorded" in store.read else ": checked against it"
        print(f"store: {store.read}{tail}")
    if cfg.express_lane is not False and not lane_off:
        print(
            "express lane: on (the kernel took its programs; pod to pod of one network, "
            + (
                "and TCP to remote VTEPs out of a kernel uplink)"
                if lane_remote
                else "not to remote VTEPs: this kernel cannot let its programs check a frame's "
                "checksum offsets, bpf_cast_to_kern_ctx, Linux 6.2)"
            )
        )
    elif not lane_off:
        print(
            "express lane: off (every frame through the core); its programs guard the pods' "
            "host ends"
        )
    if cfg.cpu_latency_us is not None:
        from .cpulatency import no_effect

        why = no_effect(cfg.cpu_latency_us)
        if why:
            print(f"warning: cpu_latency_us: {why}; the request would change nothing here")
    return 0


def cmd_reload(args):
    # the file meant, if named: the service reads only its own, and says so
    body = {"config": os.path.abspath(args.config)} if args.config else {}
    if args.dry_run:
        body["dry_run"] = True
    r = _call(args, "POST", "/v1/reload", body or None)
    if args.json:
        _print(r, True)
        return 0
    if r.get("dry_run"):  # checked as a reload would be, nothing applied
        print(f"{r['config']}: a reload would change" if r["changed"] else f"{r['config']}: "
              "a reload would change nothing")  # fmt: skip
        for c in r["changed"]:
            print("  " + _change(c))
        for w in r.get("warnings", []):
            print(f"warning: {w}")
        return 0
    if not r["changed"]:
        print(f"{r['config']}: reloaded, nothing to change")
    for c in r["changed"]:
        print(_change(c))
    for why in r.get("refused", []):  # taken, but the core would not hold it
        print(f"refused by the core, the rest applied: {why}")
    for w in r.get("warnings", []):  # as dataplane check says them
        print(f"warning: {w}")
    return 0


def _change(c) -> str:
    """A field a reload changes: 'FIELD: OLD -> NEW'."""
    sep = "; " if c["field"] == "remotes" else ", "  # entries 'VTEP: net1, net2'
    return f"{c['field']}: {_said(c['old'], sep)} -> {_said(c['new'], sep)}"


def _said(v, sep: str = ", ") -> str:
    """A reloaded field's value: a list as its entries joined by ``sep``,
    an empty one and an unset value as '(none)'; true and false as the
    file writes them."""
    if v is None:
        return "(none)"
    if isinstance(v, bool):
        return "true" if v else "false"
    if not isinstance(v, list):
        return str(v)
    return sep.join(str(x) for x in v) if v else "(none)"


def _bits(bps: int) -> str:
    """A rate for people: 100Mbit/s, 1.5Gbit/s, 64kbit/s."""
    for unit, div in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if bps >= div:
            return f"{bps / div:g}{unit}bit/s"
    return f"{bps}bit/s"


def _table(header, rows, indent="  ") -> list:
    """The lines of a table: every column as wide as its widest cell, the
    header's included, and two spaces between columns, so each column
    starts at the same offset in every row however long its names are;
    nothing is cut. The last column is free text, not padded."""
    rows = [[str(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return [
        (indent + "  ".join([c.ljust(w) for c, w in zip(r, widths)] + [r[-1]])).rstrip()
        for r in rows
    ]


def cmd_top(args):
    """The node's rates, every ``--delay`` seconds: ``--count`` reports, or
    until Ctrl-C. On a terminal each report replaces the last, as top does;
    otherwise they follow each other (``--json``: one object a line)."""
    from .top import rates, render

    tty = sys.stdout.isatty() and not args.json
    done = 0
    try:
        prev, t_prev = _call(args, "GET", "/v1/status"), time.monotonic()
        while args.count is None or done < args.count:
            time.sleep(args.delay)
            cur, t_cur = _call(args, "GET", "/v1/status"), time.monotonic()
            r = rates(prev, cur, t_cur - t_prev)
            prev, t_prev = cur, t_cur
            done += 1
            if args.json:
                print(json.dumps(r), flush=True)
                continue
            lines = render(r, _table, lines=args.lines)
            if tty:
                sys.stdout.write("\033[H\033[J")  # home, clear: the last report replaced
            elif done > 1:
                print()
            print("\n".join(lines), flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def _positive_float(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a number of seconds") from None
    if not 0.05 <= f <= 3600:
        raise argparse.ArgumentTypeError(f"{v} s: give 0.05 to 3600 seconds")
    return f


def _positive_int(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{v}: give 1 or more")
    return n


def _port_notes(p) -> str:
    """What else a port's status row says, when there is something."""
    notes = [
        f"{k} {p[key]}"
        for k, key in (
            ("shm_faults", "shm_faults"),
            ("guard_drops", "guard_drops"),
            ("tunnel_gso", "tunnel_gso_frames"),
        )
        if p.get(key)
    ]
    x = p.get("express")
    if x and (x["rx_packets"] or x["tx_packets"]):  # of RX and TX, what the lane carried
        notes.append(f"express rx {x['rx_packets']} tx {x['tx_packets']}")
    if x and x.get("to_core_packets"):  # taken by the lane, handed back to the core
        notes.append(f"express to core {x['to_core_packets']}")
    if p.get("set_aside"):
        notes.append("SET ASIDE (its pod's shared memory faulted)")
    if p.get("link") is False and is_af_xdp_port(p.get("name", "")):
        notes.append("LINK DOWN (its kernel interface is down or has no carrier)")
    elif p.get("link") is False:
        notes.append(
            "LINK DOWN ("
            + ("no pod application connected: " if p["role"] == "pod" else "")
            + "frames to it are dropped as tx_full)"
        )
    return " ".join(notes)


def cmd_status(args):
    st = _call(args, "GET", "/v1/status")
    if args.json:
        _print(st, True)
        return 0
    rate = st.get("uplink_rate_bps")
    print(
        f"node {st['node']}  mode {st['mode']}  vtep {st['vtep']}  uplink {st['uplink']}"
        + (f" (shaped to {_bits(rate)})" if rate else "")
        + f"  forwarding {'yes' if st['forwarding'] else 'NO'}  up {st['uptime_s']}s"
        + (
            (
                "  express lane paused (a capture runs)"
                if st.get("capture")
                else "  express lane on"
                + ("" if st.get("express_remote", True) else " (not to remote VTEPs)")
                + (
                    f" ({st['express_remote_refused']} remote MAC updates past its table: the core's)"
                    if st.get("express_remote_refused")
                    else ""
                )
            )
            if st.get("express_lane")
            else "  express lane off (its programs guard the pods' host ends)"
            if st.get("express_guard")
            else ""
        )
        + (
            f"  cpu latency {st['cpu_latency_us']} us (kernel limit {st['cpu_latency_limit_us']} us)"
            if st.get("cpu_latency_us") is not None
            else ""
        )
    )
    if st.get("cpu_latency_no_effect"):
        print(f"  cpu latency request changes nothing here: {st['cpu_latency_no_effect']}")
    if st.get("uplink_problem"):
        print(f"  UPLINK CANNOT CARRY FRAMES: {st['uplink_problem']}")
    cap = st.get("capture")
    if cap:
        flt = f" '{cap['filter']}'" if cap["filter"] else ""
        print(
            f"  capture {cap['id']} running for {cap['running_s']}s: {cap['direction']} on "
            f"{cap['target']} ({', '.join(cap['ports'])}){flt}"
            + ("; the express lane waits for it to end" if st.get("express_lane") else "")
        )
    for pod, why in sorted((st.get("pods_not_attached") or {}).items()):
        print(f"  POD NOT ATTACHED (no forwarding; tried again every round): {pod}: {why}")
    if st.get("express_lane_off"):  # auto, and the kernel would not take it
        print(
            f"  express lane off (pods reach each other through the core): {st['express_lane_off']}"
        )
    if st.get("express_guard_off"):  # false, and the kernel would not take its guard
        print(
            "  PODS' HOST ENDS WITHOUT THE LANE'S GUARD (a pod's limited broadcast reaches the "
            f"node's sockets; docs/security.md): {st['express_guard_off']}"
        )
    store = st.get("store") or {}
    if st.get("store_error"):
        last = store.get("last_answer")
        print(
            f"  {_store_state(st['store_error'])} ({store.get('where') or 'store'}): "
            f"{st['store_error']}"
            + (
                f"; last answered {max(0.0, time.time() - last):.0f} s ago"
                if last and not store.get("refuses")
                else ""
            )
        )
        print(
            "    "
            + store.get(
                "consequence", "pod counts are unknown; forwarding goes on with what the core has"
            )
        )
    nets = [
        [
            n["name"],
            n["vni"],
            n["plane"],
            "-" if n["pods"] is None else n["pods"],
            *(n[f"{k}_packets"] for k in ("encap", "decap", "flood", "local")),
        ]
        for n in st["networks"]
    ]
    for line in _table(
        ["NETWORK", "VNI", "PLANE", "PODS", "ENCAP", "DECAP", "FLOOD", "LOCAL"], nets
    ):
        print(line)
    ports = [
        [
            p["port"],
            p["name"],
            p.get("pod") or "-",
            p.get("plane") or "-",
            p["role"],
            p["network"] or "-",
            p["rx_packets"],
            p["tx_packets"],
            _port_notes(p),
        ]
        for p in st["ports"]
    ]
    for line in _table(["PORT", "NAME", "POD", "PLANE", "ROLE", "NETWORK", "RX", "TX", ""], ports):
        print(line)
    if st.get("fdb_entries") is not None:
        learned = st.get("learning")
        print(
            f"  fdb {st['fdb_entries']} entries"
            + (
                f" ({learned['entries']} learned; learned {learned['learned']} moved "
                f"{learned['moved']} aged {learned['aged']} duplicate "
                f"{learned['duplicate']} refused "
                f"{learned['refused_static'] + learned['refused_limit'] + learned['refused_frozen']}"
                + (
                    f"; {learned['reports_limited']} reports held back: a learning storm"
                    if learned.get("reports_limited")
                    else ""
                )
                + ")"
                if learned
                else ""
            )
            + "  (dataplane fdb lists them)"
        )
    # a plane no frame crossed is left out on an unshaped node; the names
    # padded to the longest shown, so the figures after them line up
    shown = [pl for pl in st.get("planes") or [] if pl.get("frames") or "queue_depth" in pl]
    width = max([8] + [len(pl["name"]) for pl in shown])
    for pl in shown:

        def lat(v):
            """A quantile as its histogram bucket's bound: 20us, 1ms, >100ms."""
            if not pl.get("frames"):
                return "-"
            if v is None:
                return ">100ms"
            return f"{v / 1000:g}ms" if v >= 1000 else f"{v:g}us"

        line = (
            f"  plane {pl['name']:{width}s} frames {pl.get('frames', 0)} "
            f"latency p50 {lat(pl['p50_us'])} p99 {lat(pl['p99_us'])}"
        )
        if "queue_depth" in pl:  # a shaped uplink's plane queue
            line += " queue " + " ".join(
                f"{k} {pl[k]}" for k in ("enqueued", "sent", "dropped", "queue_depth") if k in pl
            )
            rates = [
                f"{k} {_bits(pl[f'{k}_rate_bps'])}"
                for k in ("min", "max")
                if pl.get(f"{k}_rate_bps")
            ]
            if rates:
                line += " rate " + " ".join(rates)
        print(line)
    for w in st.get("workers") or []:  # since the start; `dataplane top` gives them now
        polls, lookups = w.get("polls", 0), w.get("fdb_lookups", 0)
        print(
            f"  worker {w['worker']} polls {polls} found frames in "
            + (f"{100 * w.get('busy_polls', 0) / polls:.1f}%" if polls else "-")
            + " fdb cache misses "
            + (f"{100 * w.get('fdb_cache_misses', 0) / lookups:.1f}%" if lookups else "-")
        )
    if st["drops"]:
        print("  drops " + " ".join(f"{k}={v}" for k, v in st["drops"].items()))
    if st.get("neigh_held"):
        print(f"  held for a next hop's ARP answer: {st['neigh_held']} frames")
    if st.get("slowpath_lost"):
        print(
            f"  reports the control thread's full ring refused: {st['slowpath_lost']} "
            "(learned MACs, heard ARP answers; reported again by their next frames)"
        )
    return 0


def cmd_pod(args):
    if args.pod_cmd == "add":
        spec = args.spec
        if spec.startswith("@"):
            try:
                with open(spec[1:], encoding="utf-8") as f:
                    spec = f.read()
            except OSError as e:
                raise SystemExit(f"dataplane: --spec {spec}: {e.strerror or e}")
            except UnicodeDecodeError as e:
                raise SystemExit(
                    f"dataplane: --spec {spec}: not UTF-8 text (byte {e.start})"
                ) from None
        info = _call(
            args, "POST", "/v1/pods", {"name": args.name, "netns": args.netns, "spec": spec}
        )
        if info.get("unchanged") and not args.json:
            print(f"pod {info['name']} exists already with this spec: unchanged")
        _print(info, args.json)
    elif args.pod_cmd == "del":
        _print(_call(args, "DELETE", "/v1/pods", query={"name": args.name}), args.json)
    else:
        pods = _call(args, "GET", "/v1/pods")
        if args.json:
            _print(pods, True)
        elif not pods:
            print("no pods on this node")
        else:
            _store_note(pods)
            _print(pods, False)
    return 0


def cmd_net(args):
    if (args.net_cmd == "forget") != (args.name is not None):
        raise SystemExit(
            "dataplane: net forget takes the network's name"
            if args.net_cmd == "forget"
            else f"dataplane: net {args.net_cmd} takes no name"
        )
    if args.net_cmd == "forget":
        r = _call(args, "DELETE", "/v1/networks", query={"name": args.name})
        if args.json:
            _print(r, True)
        else:
            print(f"network {r['network']} forgotten: VNI {r['vni']} is free for another network")
        return 0
    if args.net_cmd == "records":
        recs = _call(args, "GET", "/v1/networks/records")
        if args.json:
            _print(recs, True)
            return 0
        print(f"{'NETWORK':10s} {'VNI':>8s}  {'PLANE':8s} {'SUBNET':18s} ENDPOINTS  CARRIED BY")
        for r in recs:
            free = "" if r["endpoints"] else " (dataplane net forget frees its VNI)"
            print(
                f"{r['name']:10s} {r['vni']:>8d}  {r['plane']:8s} {r['subnet']:18s} "
                f"{r['endpoints']:>9d}  {', '.join(r['carried_by']) or '-' + free}"
            )
        return 0
    nets = _call(args, "GET", "/v1/networks")
    if args.json:
        _print(nets, True)
        return 0
    for n in nets:
        flood = " ".join(
            f["vtep"] + ("" if f["resolved"] else " (unresolved)") for f in n.get("flood", [])
        )
        print(
            f"{n['name']:10s} vni {n['vni']:<8d} plane {n['plane']:8s} subnet {n['subnet']} "
            f"gateway {n['gateway'] or '-'} "
            + (
                f"subnet6 {n['subnet6']} gateway6 {n['gateway6'] or '-'} "
                if n.get("subnet6")
                else ""
            )
            + f"mtu {n['mtu']}  flood {flood or '-'}"
        )
    return 0


def cmd_fdb(args):
    query = {k: v for k, v in (("network", args.network), ("mac", args.mac)) if v is not None}
    if args.action == "summary":
        if args.mac is not None:
            raise SystemExit("dataplane: fdb summary counts whole networks: leave --mac out")
        rows = _call(args, "GET", "/v1/fdb/summary", query=query or None)
        if args.json:
            _print(rows, True)
        else:
            _store_note(rows)
            for line in fdb_summary_lines(rows):
                print(line)
        return 0
    if args.action == "clear":
        r = _call(args, "DELETE", "/v1/fdb", query=query or None)
        if args.json:
            _print(r, True)
        else:
            print(f"cleared {r['cleared']} learned MAC{'s' if r['cleared'] != 1 else ''}")
        return 0
    rows = _call(args, "GET", "/v1/fdb", query=query or None)
    if args.json:
        _print(rows, True)
        return 0
    if not rows:
        print(
            "no FDB entry"
            + (" for " + " ".join(f"{k} {v}" for k, v in query.items()) if query else "")
        )
        return 0
    _store_note(rows)
    for line in fdb_lines(rows):
        print(line)
    return 0


def fdb_summary_lines(rows) -> list:
    """The FDB summary's rows (``GET /v1/fdb/summary``) as ``dataplane fdb
    summary`` prints them, under a header line."""
    cols = ("pod", "port", "cluster", "host", "learned", "frozen", "api", "total")
    out = [f"{'NETWORK':10s} " + " ".join(f"{c.upper():>8s}" for c in cols)]
    for r in rows:
        out.append(f"{r['network']:10s} " + " ".join(f"{r[c]:8d}" for c in cols))
    return out


def fdb_lines(rows) -> list:
    """The FDB report's rows (``GET /v1/fdb``) as ``dataplane fdb`` prints
    them, under a header line."""
    out = [f"{'NETWORK':10s} {'MAC':17s} {'TYPE':6s} {'TO':18s} {'ORIGIN':8s} WHOSE"]
    for r in rows:
        to = r["port"] if r["type"] == "local" else r["vtep"]
        if r["origin"] in ("pod", "cluster"):
            whose = f"pod {r['pod']} plane {r['plane']}" + (
                f" on node {r['node']}" if r.get("node") else ""
            )
        elif r["origin"] == "host":
            whose = f"host {r['host']}"
        elif r["origin"] == "learned":
            whose = f"age {r['age_s']:.1f} s" + (
                f", DUPLICATE: frozen here for {r['frozen_s']:.0f} s more"
                if r.get("frozen_s")
                else ""
            )
        else:
            whose = "-"
        if r.get("stale"):  # the store does not answer: as the cluster view last had it
            whose += " (may be stale)"
        out.append(
            f"{r['network']:10s} {r['mac']:17s} {r['type']:6s} {to:18s} {r['origin']:8s} {whose}"
        )
    return out


def cmd_host(args):
    if args.host_cmd == "add":
        body = {k: getattr(args, k) for k in ("name", "network", "mac", "ip", "vtep")}
        h = _call(args, "POST", "/v1/hosts", body)
        if args.json:
            _print(h, True)
        else:
            print(
                f"host {h['name']}: {h['ip']} {h['mac']} on {h['network']} behind VTEP {h['vtep']}"
                " (every node of the cluster forwards to it and floods to its VTEP)"
            )
        return 0
    if args.host_cmd == "del":
        _print(_call(args, "DELETE", "/v1/hosts", query={"name": args.name}), args.json)
        return 0
    hosts = _call(args, "GET", "/v1/hosts")
    if args.json:
        _print(hosts, True)
        return 0
    if not hosts:
        print("no static hosts ('dataplane host add' describes one to the cluster)")
    for h in hosts:
        print(f"{h['name']:20s} {h['network']:10s} {h['ip']:15s} {h['mac']}  vtep {h['vtep']}")
    return 0


def cmd_node(args):
    if args.node_cmd == "remove":
        r = _call(args, "DELETE", "/v1/nodes", query={"name": args.name})
        if args.json:
            _print(r, True)
        else:
            print(
                f"node {r['node']} removed: {r['pods']} pod(s) and {r['attachments']} CNI "
                "attachment(s) forgotten; "
                + (
                    f"{r['veths']} veth(s) of its pods deleted (an old name of this node)"
                    if "veths" in r  # a node's own store: the node was renamed
                    else "the other nodes stop sending to it"
                )
            )
        return 0
    nodes = _call(args, "GET", "/v1/nodes")
    if args.json:
        _print(nodes, True)
        return 0
    for n in nodes:
        state = "running" if n["running"] else "NOT RUNNING"
        where = f"vtep {n['vtep']}" if n["vtep"] else ""
        if n["host"]:
            where += f" host {n['host']} pid {n['pid']}"
        mark = " (this node)" if n["this"] else ""
        print(f"{n['node']:20s} {state:12s} {n['pods']:4d} pods  {where}{mark}".rstrip())
    return 0


def cmd_attachment(args):
    if args.att_cmd == "del":
        # the list shows the first 12 characters of an ID, as container
        # runtimes do: a unique prefix names the container
        if not args.container_id.strip():
            raise SystemExit("dataplane: attachment del: container_id is empty")
        atts = _call(args, "GET", "/v1/attachments")
        ids = {a["container_id"] for a in atts if a["ifname"] == args.ifname}
        match = sorted(i for i in ids if i.startswith(args.container_id))
        if args.container_id in ids:
            match = [args.container_id]
        if not match:
            raise SystemExit(
                f"dataplane: no attachment of container {args.container_id} interface "
                f"{args.ifname} on this node ('dataplane attachment list' shows them)"
            )
        if len(match) > 1:
            raise SystemExit(
                f"dataplane: container ID {args.container_id} is ambiguous: "
                f"{', '.join(match)}; give more of it"
            )
        body = {"container_id": match[0], "ifname": args.ifname}
        _print(_call(args, "DELETE", "/v1/attachments", body), args.json)
        return 0
    atts = _call(args, "GET", "/v1/attachments")
    if args.json:
        _print(atts, True)
        return 0
    if not atts:
        print("no CNI attachments on this node")
    for a in atts:
        pod = "/".join(x for x in (a.get("k8s_namespace"), a.get("k8s_pod")) if x) or "-"
        if a.get("state") == "gone":
            print(
                f"{a['container_id'][:12]:12s} {a['ifname']:10s} "
                f"{a.get('cni_network') or '-':12s} gone: its pod is not there (DEL or GC "
                f"forgets it)  {pod}"
            )
            continue
        print(
            f"{a['container_id'][:12]:12s} {a['ifname']:10s} {a['cni_network'] or '-':12s} "
            f"{a['network']:8s} {a['plane']:8s} {a['ip'] or '-':15s} {a['mac']} {a['kind']:6s} "
            f"port {'-' if a['port'] is None else a['port']}  {pod}"
        )
    return 0


def cmd_bench(args):
    """``python -m bench ARGS`` from the checkout this package is installed
    from (bench/ is beside dataplane/ there, not installed), from any
    directory."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isfile(os.path.join(root, "bench", "__main__.py")):
        print(
            f"dataplane bench: the benchmarks run from a source checkout (bench/ beside "
            f"dataplane/); there is none in {root}: install the package from a checkout "
            f"(pip install -e .) or run python -m bench there",
            file=sys.stderr,
        )
        return 2
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    os.execve(sys.executable, [sys.executable, "-m", "bench", *args.rest], env)


def build_parser():
    ap = argparse.ArgumentParser(
        prog="dataplane", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--socket", dest="top_socket", metavar="SOCKET", help="control API socket (client commands)"
    )
    sub = ap.add_subparsers(dest="cmd", required=True)

    def client(p, config_help="node config (for its api_socket)"):
        p.add_argument("--socket", help="control API socket")
        p.add_argument("-c", "--config", help=config_help)
        p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("run", help="run the node service in the foreground")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("check", help="validate a node config file")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(fn=cmd_check)
    p = sub.add_parser(
        "reload",
        help="the running service reads its config file again and takes from it, while "
        "forwarding: the uplink's rate and burst; the planes' rates, DSCP marking and "
        "classification; the VTEP's learning; the networks' storm control and "
        "anti-spoofing; networks added or removed; the static remotes (anything else "
        "changed: refused, a restart applies it)",
    )
    client(
        p,
        "the service's config file: where its api_socket is, and the file it reads again "
        "(a file other than the one it was started from is refused)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the file as a reload would (the store and the core included) and say what "
        "it would change; change nothing",
    )
    p.set_defaults(fn=cmd_reload)
    p = sub.add_parser("status", help="show the service's state and counters")
    client(p)
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser(
        "top",
        help="what the node forwards now: rates per port, network, plane and drop reason, "
        "and how busy each worker is, refreshed every few seconds (Ctrl-C ends)",
    )
    client(p)
    p.add_argument(
        "-d", "--delay", type=_positive_float, default=2.0, help="seconds between reports (2)"
    )
    p.add_argument(
        "-n", "--count", type=_positive_int, default=None, help="reports to give, then exit"
    )
    p.add_argument(
        "--lines", type=_positive_int, default=None, help="at most this many ports (the busiest)"
    )
    p.set_defaults(fn=cmd_top)
    p = sub.add_parser("pod", help="attach, detach and list pods")
    psub = p.add_subparsers(dest="pod_cmd", required=True)
    pa = psub.add_parser("add")
    pa.add_argument("name")
    pa.add_argument("--netns", required=True, help="/var/run/netns/NAME or /proc/PID/ns/net")
    pa.add_argument("--spec", required=True, help="plane spec as JSON, or @FILE")
    client(pa)
    pd = psub.add_parser("del")
    pd.add_argument("name")
    client(pd)
    pl = psub.add_parser("list")
    client(pl)
    p.set_defaults(fn=cmd_pod)
    p = sub.add_parser(
        "net",
        help="list this node's networks; list the store's network records; forget one no node "
        "carries",
    )
    p.add_argument(
        "net_cmd",
        choices=["list", "records", "forget"],
        help="list: this node's networks and flood lists; records: the store's (with etcd, the "
        "cluster's) network records, who carries each and its endpoints; forget NAME: delete "
        "the record of a network no running node carries and nothing is on, freeing its VNI",
    )
    p.add_argument("name", nargs="?", help="the network to forget")
    client(p)
    p.set_defaults(fn=cmd_net)
    p = sub.add_parser(
        "fdb",
        help="show the forwarding database: which port or VTEP each MAC goes to, and why",
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["show", "summary", "clear"],
        default="show",
        help="show (default) the entries; summary: count them by network and origin; "
        "clear: remove the MACs learned from the underlay (learned again from their next "
        "frame; lifts a duplicate's freeze)",
    )
    p.add_argument("--network", help="only this network's entries")
    p.add_argument("--mac", help="only this MAC's entries")
    client(p)
    p.set_defaults(fn=cmd_fdb)
    p = sub.add_parser(
        "host", help="describe to the cluster a host behind a VTEP that is not a node's"
    )
    hsub = p.add_subparsers(dest="host_cmd", required=True)
    ha = hsub.add_parser("add")
    ha.add_argument("name")
    ha.add_argument("--network", required=True, help="the network it is on")
    ha.add_argument("--mac", required=True, help="its MAC on that network")
    ha.add_argument("--ip", required=True, help="its address on that network")
    ha.add_argument("--vtep", required=True, help="the address of the VTEP it is behind")
    client(ha)
    hd = hsub.add_parser("del")
    hd.add_argument("name")
    client(hd)
    client(hsub.add_parser("list"))
    p.set_defaults(fn=cmd_host)
    from . import capture_cli

    capture_cli.add_parser(sub)
    p = sub.add_parser("node", help="list the cluster's nodes; forget one gone for good")
    nsub = p.add_subparsers(dest="node_cmd", required=True)
    client(nsub.add_parser("list"))
    nr = nsub.add_parser(
        "remove",
        help="forget a node whose service will not come back: its pods' records, addresses, "
        "MACs and CNI attachments (refused while it runs); with the SQLite store, an old name "
        "of this node (renamed), its pods' veths deleted too",
    )
    nr.add_argument("name")
    client(nr)
    p.set_defaults(fn=cmd_node)
    p = sub.add_parser("attachment", help="list and remove CNI attachments")
    asub = p.add_subparsers(dest="att_cmd", required=True)
    client(asub.add_parser("list"))
    ad = asub.add_parser("del")
    ad.add_argument("container_id")
    ad.add_argument("ifname")
    client(ad)
    p.set_defaults(fn=cmd_attachment)
    p = sub.add_parser(
        "bench", help="run a benchmark (python -m bench ...; --help lists them)", add_help=False
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_bench)
    return ap


def main(argv=None):
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra and args.cmd == "capture" and not any(x.startswith("-") for x in extra):
        args.filter += extra  # a filter after the options, as tcpdump takes it
    elif extra and args.cmd == "bench":
        args.rest = extra + args.rest  # options before the benchmark's name: its own
    elif extra:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.fn(args)
    except DataplaneError as e:
        print(f"dataplane: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (| head): what it did not read is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # what the system refused, said without a traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"dataplane: {where}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
