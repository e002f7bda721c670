"""Network planes under overload: media first on a shaped uplink, against
one shared FIFO, in one run.

    python -m bench planes [--rate BPS] [--seconds S] [--runs N] [--plot PNG] ...
    ->  RESULT name=planes media_loss=<fraction> media_p99_us=<n>
        fifo_media_loss=<fraction> fifo_media_p99_us=<n>

Method:

1. scapy builds three traffic profiles and writes each to a pcap:
   - std: best-effort TCP and UDP, mixed sizes (60 / 594 / 1464-byte
     frames, 7:4:1, a simple IMIX), DSCP 0, 8 flows to 4 remote MACs;
   - control: signalling, DSCP CS3: SIGTRAN M3UA (SCTP DATA, PPID 3,
     port 2905), Diameter over SCTP (PPID 46, port 3868) and SIP over UDP
     5060 (INVITE with SDP, 100 Trying, 180 Ringing, 200 OK, ACK, BYE);
   - media: RTP (version 2, PT 0) over UDP, DSCP EF, 200-byte frames,
     8 streams (own SSRC and ports, sequence and timestamp advancing).
   Frame lengths are without FCS, as in a pcap and an mbuf.
2. A child process (bench.planes_ours; EAL -l 0,1: lcore 0 is the control
   thread, lcore 1 the one worker; hugepages when enough are free, else the
   --no-huge fallback) sets up three pod ring ports, one per profile, each in
   its own network and plane - std plane 0 priority 0, control plane 2
   priority 2 marked CS3, media plane 3 priority 3 marked EF - all
   encapsulated to one remote VTEP through an uplink ring port shaped to
   ``--rate`` (Engine.set_shaper). The std queue holds ``--std-qlen`` frames,
   control and media ``--qlen`` each.
3. The child feeds the pod ports itself at exact rates: std at 2x the
   shaped rate, control at 0.2x, media at 0.1x, in the shaper's units
   (outer frame + 24 bytes of Ethernet overhead). net_pcap's infinite_rx
   would replay as fast as it can; this gives an offered rate, not a
   maximum. See bench.planes_ours for the pacing.
4. Phases in one child, alternating ``--runs`` times: ``priority``
   (per-plane queues, strict priority) then ``fifo``
   (Engine.set_qos_mode(priority=False): every plane in one shared FIFO, the
   std queue, the baseline). Each offers for ``--warmup`` + ``--seconds`` s
   and then drains.
5. Printed per plane: offered / sent / dropped / left queued (whole phase,
   from the core's queue counters: offered = sent + dropped + queued is
   checked), the sent rate, and p50 / p99 / p99.9 / max latency from the
   core's per-plane histograms (rx TSC -> tx) over the window. The
   histogram's buckets have 1-2-5 upper bounds (1, 2, 5, 10, 20, 50, 100 us,
   ...): a quantile is printed as the upper bound of its bucket ("<=50" means
   in (20, 50] us) and max as the upper bound of the highest bucket hit; the
   mean is exact (sum of latencies / count). The frames out of the uplink
   are checked too: per VNI the count equals the plane's sent counter and
   the outer DSCP is the plane's mark.

``--media-min-x X`` gives media a guaranteed rate (``min_rate``) of X times
the shaped rate; ``--shared-cpu N`` runs N busy loops pinned to the
worker's CPU for the whole run (a node whose shaped worker shares its CPU:
media then reaches the scheduler in bunches), keeps every phase whatever
its worker waited, and says ``shared_cpu=N`` in the RESULT line.

The RESULT line sums every run of a kind: loss = dropped / offered of the
media plane, p99 from the merged histogram (a bucket upper bound in us).
Target: media_loss=0 and media_p99_us <= 50 with std at 2x the shaped rate.
Progress and the tables go to stderr (``--quiet``: none); stdout has the
RESULT line.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

from .common import BenchError, add_run_options, parse_args, run_json_child, run_main, say, show
from .planes_ours import CONTROL, MEDIA, PLANE_NAMES, PLANE_SETUP, STD

SEED = 20240611
PLANES = (MEDIA, CONTROL, STD)  # print order: highest priority first
CS3_TOS, EF_TOS = 24 << 2, 46 << 2


# ------------------------------------------------------------------ profiles


def _pad(pkt, size: int) -> bytes:
    """pkt with a zero payload so that the frame is ``size`` bytes."""
    from scapy.packet import Raw

    n = size - len(pkt)
    if n < 0:
        raise ValueError(f"frame of {len(pkt)} bytes does not fit {size}")
    return bytes(pkt / Raw(b"\x00" * n)) if n else bytes(pkt)


def std_frames(n: int = 256):
    """Best-effort TCP and UDP, IMIX 7:4:1 of 60, 594 and 1464-byte frames."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether

    rnd = random.Random(SEED)
    sizes = ([60] * 7 + [594] * 4 + [1464]) * (n // 12 + 1)
    sizes = sizes[:n]
    rnd.shuffle(sizes)
    out, seq = [], {}
    for i, size in enumerate(sizes):
        flow = i % 8
        eth = Ether(src="02:00:00:a0:00:01", dst=f"02:00:00:b0:00:{flow % 4:02x}")
        ip = IP(src="10.10.0.1", dst=f"10.10.1.{1 + flow % 4}", tos=0, id=i & 0xFFFF)
        if flow % 2 == 0:  # TCP: a bulk transfer, ACK with data
            s = seq.get(flow, 1000)
            l4 = TCP(sport=40000 + flow, dport=443, flags="PA", seq=s, ack=1, window=65535)
            seq[flow] = s + size
        else:  # UDP: QUIC-like
            l4 = UDP(sport=50000 + flow, dport=443)
        out.append(_pad(eth / ip / l4, size))
    return out


_SIP = {
    "INVITE": (
        "INVITE sip:+4930{n:06d}@ims.example.net SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.12.0.1:5060;branch=z9hG4bK{n:08x}\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:+4940{n:06d}@ims.example.net>;tag={n:x}\r\n"
        "To: <sip:+4930{n:06d}@ims.example.net>\r\nCall-ID: {n:08x}@10.12.0.1\r\n"
        "CSeq: 1 INVITE\r\nContact: <sip:10.12.0.1:5060>\r\n"
        "Content-Type: application/sdp\r\nContent-Length: 160\r\n\r\n"
        "v=0\r\no=- {n} 1 IN IP4 10.13.0.1\r\ns=-\r\nc=IN IP4 10.13.0.1\r\nt=0 0\r\n"
        "m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n"
    ),
    "100": (
        "SIP/2.0 100 Trying\r\nVia: SIP/2.0/UDP 10.12.0.1:5060;branch=z9hG4bK{n:08x}\r\n"
        "Call-ID: {n:08x}@10.12.0.1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ),
    "180": (
        "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 10.12.0.1:5060;branch=z9hG4bK{n:08x}\r\n"
        "From: <sip:+4940{n:06d}@ims.example.net>;tag={n:x}\r\n"
        "To: <sip:+4930{n:06d}@ims.example.net>;tag=r{n:x}\r\n"
        "Call-ID: {n:08x}@10.12.0.1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ),
    "ACK": (
        "ACK sip:+4930{n:06d}@ims.example.net SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.12.0.1:5060;branch=z9hG4bK{n:08x}a\r\n"
        "Call-ID: {n:08x}@10.12.0.1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    ),
    "BYE": (
        "BYE sip:+4930{n:06d}@ims.example.net SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.12.0.1:5060;branch=z9hG4bK{n:08x}b\r\n"
        "Call-ID: {n:08x}@10.12.0.1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    ),
}


def control_frames(n: int = 128):
    """Signalling, DSCP CS3: M3UA and Diameter over SCTP, SIP over UDP."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.sctp import SCTP, SCTPChunkData
    from scapy.packet import Raw

    rnd = random.Random(SEED + 1)
    kinds = ["m3ua", "m3ua", "diameter", "INVITE", "100", "180", "ACK", "BYE"]
    out = []
    for i in range(n):
        k = kinds[i % len(kinds)]
        r = i % 2
        eth = Ether(src="02:00:00:a2:00:01", dst=f"02:00:00:b2:00:{r:02x}")
        ip = IP(src="10.12.0.1", dst=f"10.12.1.{1 + r}", tos=CS3_TOS, id=i)
        if k == "m3ua":  # M3UA DATA carrying an SCCP/TCAP message
            body = bytes([1, 0, 1, 1]) + (rnd.randrange(120, 260)).to_bytes(4, "big")
            body += bytes(rnd.randrange(256) for _ in range(int.from_bytes(body[4:], "big") - 8))
            l4 = SCTP(sport=2905, dport=2905, tag=0x1000 + r) / SCTPChunkData(
                tsn=1000 + i,
                stream_id=1,
                stream_seq=i & 0xFFFF,
                proto_id=3,
                beginning=1,
                ending=1,
                data=body,
            )
        elif k == "diameter":  # Diameter request (Gx/Rx-like), AVPs as filler
            ln = rnd.randrange(300, 600)
            body = (
                bytes([1])
                + ln.to_bytes(3, "big")
                + bytes([0x80, 0, 1, 0x10])
                + bytes(rnd.randrange(256) for _ in range(ln - 8))
            )
            l4 = SCTP(sport=3868, dport=3868, tag=0x2000 + r) / SCTPChunkData(
                tsn=5000 + i,
                stream_id=0,
                stream_seq=i & 0xFFFF,
                proto_id=46,
                beginning=1,
                ending=1,
                data=body,
            )
        else:  # SIP over UDP
            text = _SIP[k].format(n=1000 + i // len(kinds), port=20000 + 2 * (i % 8))
            l4 = UDP(sport=5060, dport=5060) / Raw(text.encode())
        out.append(bytes(eth / ip / l4))
    return out


def media_frames(n_streams: int = 8, per_stream: int = 8, size: int = 200):
    """RTP over UDP, DSCP EF, ``size``-byte frames, streams interleaved.
    scapy's RTP has no UDP port binding: built as UDP(...)/RTP(...)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.rtp import RTP

    out = []
    for j in range(per_stream):
        for s in range(n_streams):
            eth = Ether(src="02:00:00:a3:00:01", dst=f"02:00:00:b3:00:{s % 4:02x}")
            ip = IP(src="10.13.0.1", dst=f"10.13.1.{1 + s % 4}", tos=EF_TOS, id=j * 64 + s)
            rtp = RTP(
                version=2,
                payload_type=0,
                sequence=100 + j,
                timestamp=160 * j,
                sourcesync=0x5A5A0000 + s,
                marker=int(j == 0),
            )
            out.append(_pad(eth / ip / UDP(sport=20000 + 2 * s, dport=30000 + 2 * s) / rtp, size))
    return out


def write_profiles(workdir: str) -> dict:
    """The three pcaps; {plane: (path, frames)}."""
    from scapy.data import DLT_EN10MB
    from scapy.utils import RawPcapWriter

    out = {}
    for plane, fn in ((STD, std_frames), (CONTROL, control_frames), (MEDIA, media_frames)):
        frames = fn()
        path = os.path.join(workdir, f"planes-{PLANE_NAMES[plane]}.pcap")
        with RawPcapWriter(path, linktype=DLT_EN10MB) as w:
            for f in frames:
                w.write(f)
        out[plane] = (path, frames)
    return out


def describe(plane: int, frames) -> str:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.sctp import SCTP

    kinds = {}
    for f in frames:
        p = Ether(f)
        k = (
            "RTP/UDP"
            if plane == MEDIA and UDP in p
            else "SIP/UDP"
            if UDP in p and p[UDP].dport == 5060
            else "UDP"
            if UDP in p
            else "TCP"
            if TCP in p
            else ("M3UA/SCTP" if p[SCTP].dport == 2905 else "Diameter/SCTP")
            if SCTP in p
            else "other"
        )
        kinds[k] = kinds.get(k, 0) + 1
    lens = [len(f) for f in frames]
    tos = sorted({Ether(f)[IP].tos >> 2 for f in frames})
    mix = ", ".join(f"{k} {v * 100 // len(frames)}%" for k, v in sorted(kinds.items()))
    return (
        f"{PLANE_NAMES[plane]:8s} {len(frames)} frames ({mix}), {min(lens)}..{max(lens)} B, "
        f"mean {sum(lens) / len(lens):.0f} B, inner DSCP {tos}"
    )


# ------------------------------------------------------------------- the run


def hugepages_free_mb() -> int:
    free = size_kb = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("HugePages_Free:"):
                    free = int(line.split()[1])
                elif line.startswith("Hugepagesize:"):
                    size_kb = int(line.split()[1])
    except OSError:
        pass
    return free * size_kb // 1024


def run_child(args, pcaps: dict, mode: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "bench.planes_ours",
        "--std",
        pcaps[STD][0],
        "--control",
        pcaps[CONTROL][0],
        "--media",
        pcaps[MEDIA][0],
        "--rate",
        str(args.rate),
        "--burst",
        str(args.burst),
        "--std-x",
        str(args.std_x),
        "--control-x",
        str(args.control_x),
        "--media-x",
        str(args.media_x),
        "--std-qlen",
        str(args.std_qlen),
        "--qlen",
        str(args.qlen),
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--runs",
        str(args.runs),
        "--mode",
        mode,
        "--retries",
        str(args.retries),
        "--max-preempted",
        # sharing its CPU is the point of --shared-cpu: every phase kept
        str(1.0 if args.shared_cpu else args.max_preempted),
        "--wait-others",
        str(args.wait_others),
        "--media-min-bps",
        str(int(args.media_min_x * args.rate)),
    ]
    timeout = (
        2 * args.runs * (args.retries + 1) * (args.warmup + args.seconds + 14 + args.wait_others)
        + 60
    )
    return run_json_child(cmd, "the child", timeout)


# --------------------------------------------------------------- statistics


def quantile(buckets, bounds, q):
    """Upper bound (s) of the bucket holding quantile q; None: no data."""
    total = sum(buckets)
    if total == 0:
        return None
    acc = 0
    for i, c in enumerate(buckets):
        acc += c
        if acc >= q * total:
            return bounds[i] if i < len(bounds) else float("inf")
    return float("inf")


def max_bound(buckets, bounds):
    hit = [i for i, c in enumerate(buckets) if c]
    if not hit:
        return None
    return bounds[hit[-1]] if hit[-1] < len(bounds) else float("inf")


def us(v) -> str:
    if v is None:
        return "-"
    if v == float("inf"):
        return ">100ms"
    x = v * 1e6
    return f"{x:.0f}" if x < 1000 else f"{x / 1000:.0f}ms" if x >= 10000 else f"{x / 1000:.1f}ms"


def lat_text(v) -> str:
    """A latency bound for prose: '50 us', '2 ms', 'more than 100 ms'."""
    if v is None:
        return "no data"
    if v == float("inf"):
        return "more than 100 ms"
    return f"{v * 1e6:.0f} us" if v < 1e-3 else f"{v * 1e3:g} ms"


def merge(phases, kind: str) -> dict:
    """Sum the runs of one kind: per plane counters and histograms."""
    out = {}
    for ph in phases:
        if ph["phase"] != kind or not ph.get("kept", True):
            continue
        for p in PLANES:
            s = ph["planes"][str(p)]
            lat = ph["latency"][str(p)]
            m = out.setdefault(
                p,
                {
                    "offered": 0,
                    "sent": 0,
                    "dropped": 0,
                    "depth": 0,
                    "win_wire_bits": 0,
                    "window_s": 0.0,
                    "sum_s": 0.0,
                    "buckets": [0] * len(lat["buckets"]),
                },
            )
            for k in ("offered", "sent", "dropped", "depth", "win_wire_bits"):
                m[k] += s[k]
            m["window_s"] += ph["window_s"]
            m["sum_s"] += lat["sum_s"]
            m["buckets"] = [a + b for a, b in zip(m["buckets"], lat["buckets"])]
    return out


def summary(m: dict, bounds) -> dict:
    """Per plane figures of a merged kind."""
    res = {}
    for p, s in m.items():
        b, n = s["buckets"], sum(s["buckets"])
        res[p] = {
            "offered": s["offered"],
            "sent": s["sent"],
            "dropped": s["dropped"],
            "depth": s["depth"],
            "loss": s["dropped"] / s["offered"] if s["offered"] else 0.0,
            "mbps": s["win_wire_bits"] / s["window_s"] / 1e6 if s["window_s"] else 0.0,
            "p50": quantile(b, bounds, 0.50),
            "p99": quantile(b, bounds, 0.99),
            "p999": quantile(b, bounds, 0.999),
            "max": max_bound(b, bounds),
            "mean": s["sum_s"] / n if n else None,
            "count": n,
        }
    return res


def check_phase(ph, cfg) -> tuple:
    """Accounting and on-the-wire problems of one phase, and notes of what
    only says the offered load fell short (the generator's injection ring
    refused frames: they were never offered): two lists of str."""
    errs, notes = [], []
    pl = ph["planes"]
    if ph["phase"] == "priority":
        for p in PLANES:
            s = pl[str(p)]
            if s["offered"] != s["sent"] + s["dropped"] + s["depth"]:
                errs.append(
                    f"{PLANE_NAMES[p]}: offered {s['offered']} != sent {s['sent']} + "
                    f"dropped {s['dropped']} + queued {s['depth']}"
                )
    else:
        off = sum(pl[str(p)]["offered"] for p in PLANES)
        done = sum(pl[str(p)]["sent"] + pl[str(p)]["dropped"] for p in PLANES)
        if off != done + ph["depth_plane0"]:
            errs.append(f"offered {off} != sent + dropped {done} + queued {ph['depth_plane0']}")
    for p in PLANES:
        s = pl[str(p)]
        if s["offered"] != s["enqueued"]:
            errs.append(f"{PLANE_NAMES[p]}: offered {s['offered']}, enqueued {s['enqueued']}")
        if s["refused"]:
            notes.append(f"{PLANE_NAMES[p]}: the pod port's rx ring refused {s['refused']} frames")
        vni, dscp = PLANE_SETUP[p][1], PLANE_SETUP[p][3]
        seen = {k: v for k, v in ph["uplink_out"].items() if int(k.split("/")[0]) == vni}
        if sum(seen.values()) != s["sent"]:
            errs.append(
                f"{PLANE_NAMES[p]}: {sum(seen.values())} frames of VNI {vni} out of the "
                f"uplink, {s['sent']} sent"
            )
        want_tos = (dscp << 2) if dscp is not None else 0  # std: copied from inner DSCP 0
        bad = {k: v for k, v in seen.items() if int(k.split("/")[1]) != want_tos}
        if bad:
            errs.append(f"{PLANE_NAMES[p]}: outer TOS not {want_tos:#x}: {bad}")
    if ph["uplink_other"]:
        errs.append(f"{ph['uplink_other']} frames out of the uplink were not VXLAN")
    other = {k: v for k, v in ph["drops"].items() if k != "queue_full"}
    if other:
        errs.append(f"drops other than queue_full: {other}")
    return errs, notes


def print_phase(ph, cfg, bounds):
    sch = ph.get("worker_sched") or {}
    fsch = ph.get("feeder_sched") or {}
    lp = ph["loop"]
    if ph.get("waited_for_others_s", 0) >= 1:
        say(f"waited {ph['waited_for_others_s']:.0f} s for other DPDK processes to end")
    say(
        f"phase {ph['phase']} (run {ph['run']}, attempt {ph['attempt']}): window {ph['window_s']:.2f} s; worker thread "
        f"cpu {sch.get('cpu_ms', 0):.0f} ms, waited on a run queue "
        f"{sch.get('runqueue_wait_ms', 0):.1f} ms, {sch.get('involuntary_switches', 0)} "
        f"involuntary switches; feeder (control thread) waited {fsch.get('runqueue_wait_ms', 0):.1f} "
        f"ms, loop gaps > 100 us: {lp['over_100us']}, > 1 ms: {lp['over_1ms']}, max "
        f"{lp['max_us']:.0f} us; media injected in groups of 1/2/3-4/5-8/9+ frames: "
        + "/".join(map(str, ph["planes"][str(MEDIA)].get("inject_groups", [])))
    )
    s = summary(
        {
            p: {
                **ph["planes"][str(p)],
                "window_s": ph["window_s"],
                "sum_s": ph["latency"][str(p)]["sum_s"],
                "buckets": ph["latency"][str(p)]["buckets"],
            }
            for p in PLANES
        },
        bounds,
    )
    print_table(s)
    wait = sch.get("runqueue_wait_ms", 0)
    if wait > 0.01 * ph["window_s"] * 1e3 or ph.get("cpu1_steal", 0) > 0.01:
        say(
            f"WARNING: the worker was runnable but off its CPU for {wait:.0f} ms of the "
            f"{ph['window_s'] * 1e3:.0f} ms window (CPU 1 steal {ph.get('cpu1_steal', 0):.1%}): "
            "another thread or the hypervisor had the CPU, the shaper lost that time and every "
            "plane's latency includes it"
        )
    if ph.get("other_dpdk"):
        say(
            "WARNING: other DPDK processes were running at the end of the window: "
            + "; ".join(f"pid {k}: {v}" for k, v in ph["other_dpdk"].items())
        )


HEADER = (
    f"  {'plane':8s} {'prio':>4s} {'offered':>8s} {'sent':>8s} {'dropped':>8s} "
    f"{'queued':>6s} {'loss':>7s} {'Mbit/s':>7s} {'p50':>6s} {'p99':>6s} {'p99.9':>6s} "
    f"{'max':>6s} {'mean':>8s}"
)


def print_table(s: dict):
    show(
        HEADER + "   (Mbit/s: sent on the wire in the window; latency in us: bucket "
        "upper bounds, mean exact)"
    )
    for p in PLANES:
        r = s[p]
        mean = "-" if r["mean"] is None else f"{r['mean'] * 1e6:.1f}"
        show(
            f"  {PLANE_NAMES[p]:8s} {PLANE_SETUP[p][2]:4d} {r['offered']:8d} {r['sent']:8d} "
            f"{r['dropped']:8d} {r['depth']:6d} {r['loss']:7.4f} {r['mbps']:7.1f} "
            f"{us(r['p50']):>6s} {us(r['p99']):>6s} {us(r['p999']):>6s} {us(r['max']):>6s} "
            f"{mean:>8s}"
        )


def p99_us(v) -> str:
    if v is None:
        return "nan"
    if v == float("inf"):
        return "inf"
    return f"{v * 1e6:.0f}"


# --------------------------------------------------------------------- plot


def plot(path: str, res: dict):
    """Latency CDFs per plane (priority solid, FIFO dashed), p99 and loss bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bounds = res["bounds_s"]
    prio, fifo = res["summary"]["priority"], res["summary"]["fifo"]
    merged = res["merged"]
    colors = {MEDIA: "tab:green", CONTROL: "tab:blue", STD: "tab:red"}
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1.6, 1, 1]})
    xb = [b * 1e6 for b in bounds] + [bounds[-1] * 5e6]  # last: the +Inf bucket
    for kind, ls in (("priority", "-"), ("fifo", "--")):
        for p in PLANES:
            b = merged[kind][str(p)]["buckets"]
            n = sum(b)
            if not n:
                continue
            acc, ys = 0, []
            for c in b:
                acc += c
                ys.append(acc / n)
            ax[0].step(
                xb,
                ys,
                where="post",
                ls=ls,
                color=colors[p],
                marker="o",
                ms=3,
                lw=2 if kind == "priority" else 1.4,
                label=f"{PLANE_NAMES[p]}, {'strict priority' if kind == 'priority' else 'one FIFO'}",
            )
    ax[0].axvline(50, color="gray", lw=0.8, ls=":")
    ax[0].text(55, 0.45, "50 us target", color="gray", fontsize=8, rotation=90)
    ax[0].set_xscale("log")
    ax[0].set_xlim(0.8, 8e5)
    ticks = [1, 10, 100, 1e3, 1e4, 1e5, 5e5]
    ax[0].set_xticks(
        ticks, ["1 us", "10 us", "100 us", "1 ms", "10 ms", "100 ms", ">100 ms"], fontsize=8
    )
    ax[0].minorticks_off()
    ax[0].set_ylim(0, 1.02)
    ax[0].set_xlabel("in-dataplane latency rx -> tx (histogram bucket upper bounds: 1-2-5 steps)")
    ax[0].set_ylabel("fraction of frames")
    ax[0].set_title("latency CDF per plane (solid: strict priority, dashed: one FIFO)", fontsize=10)
    ax[0].grid(True, alpha=0.3)
    ax[0].legend(fontsize=7.5, loc="center", bbox_to_anchor=(0.47, 0.42))
    f_p99 = [merged["fifo"][str(p)]["buckets"] for p in PLANES]
    if all(sum(b) for b in f_p99):
        ax[0].annotate(
            "one FIFO: the three planes'\ncurves lie on one another",
            xy=(xb[13] * 0.97, 0.8),
            xytext=(xb[8], 0.88),
            fontsize=7.5,
            arrowprops={"arrowstyle": "->", "color": "gray"},
            color="dimgray",
        )
    names = [PLANE_NAMES[p] for p in PLANES]
    x = range(len(PLANES))
    w = 0.38
    for j, (kind, s, hatch) in enumerate((("strict priority", prio, ""), ("one FIFO", fifo, "//"))):
        vals = [min(s[str(p)]["p99"] or 0, 0.2) * 1e6 for p in PLANES]  # inf: > 100 ms
        bars = ax[1].bar(
            [i + (j - 0.5) * w for i in x],
            vals,
            w,
            label=kind,
            hatch=hatch,
            color=[colors[p] for p in PLANES],
            edgecolor="black",
            alpha=0.85,
        )
        for b_, v in zip(bars, vals):
            label = f"{v:.0f}" if v < 1000 else f"{v / 1000:g} ms" if v <= 1e5 else ">100 ms"
            ax[1].text(
                b_.get_x() + b_.get_width() / 2, max(v, 1) * 1.15, label, ha="center", fontsize=8
            )
        loss = [s[str(p)]["loss"] * 100 for p in PLANES]
        bars = ax[2].bar(
            [i + (j - 0.5) * w for i in x],
            loss,
            w,
            label=kind,
            hatch=hatch,
            color=[colors[p] for p in PLANES],
            edgecolor="black",
            alpha=0.85,
        )
        for b_, v in zip(bars, loss):
            ax[2].text(
                b_.get_x() + b_.get_width() / 2, v + 1.5, f"{v:.1f}", ha="center", fontsize=8
            )
    ax[1].axhline(50, color="gray", lw=0.8, ls=":")
    ax[1].set_yscale("log")
    ax[1].set_ylim(1, 1e6)
    ax[1].set_xticks(list(x), names)
    ax[1].set_ylabel("p99 latency (us, bucket upper bound)")
    ax[1].set_title("p99 latency: plain = priority, hatched = FIFO", fontsize=10)
    ax[2].set_xticks(list(x), names)
    ax[2].set_ylim(0, 108)
    ax[2].set_ylabel("loss (% of offered)")
    ax[2].set_title("loss: plain = priority, hatched = FIFO", fontsize=10)
    cfg = res["config"]
    fig.suptitle(
        f"uplink shaped to {cfg['rate'] / 1e6:g} Mbit/s; offered std {cfg['planes'][str(STD)]['x']:g}x, "
        f"control {cfg['planes'][str(CONTROL)]['x']:g}x, media {cfg['planes'][str(MEDIA)]['x']:g}x "
        f"of it; {cfg['seconds']:g} s per phase x {res['runs']} run(s)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------- main


def _hog(cpu: int):
    """A busy loop pinned to ``cpu``: another thread on the worker's CPU."""
    code = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def run(args) -> dict:
    mode = args.mode
    if mode == "auto":
        mode = "hugepages" if hugepages_free_mb() >= 512 else "fallback"
    la = os.getloadavg()[0]
    say(
        f"{os.cpu_count()} CPUs, load average {la:.2f}; EAL mode {mode}, lcores 0 (control "
        f"thread, feeds the pod ports) and 1 (the worker)"
    )
    tmp = tempfile.TemporaryDirectory(prefix="bench-planes-")
    try:
        workdir = args.pcap_dir or tmp.name
        os.makedirs(workdir, exist_ok=True)
        pcaps = write_profiles(workdir)
        for p in PLANES:
            say("profile " + describe(p, pcaps[p][1]))
        say(
            f"uplink shaped to {args.rate / 1e6:g} Mbit/s (bucket {args.burst} B; wire bits = "
            f"outer frame + 24 B); offered std {args.std_x:g}x, control "
            f"{args.control_x:g}x, media {args.media_x:g}x of it; queues std {args.std_qlen}, "
            f"control/media {args.qlen} frames; {args.warmup:g} + {args.seconds:g} s per phase, "
            f"{args.runs} run(s), priority then FIFO"
        )
        hogs = [_hog(1) for _ in range(args.shared_cpu)]
        try:
            res = run_child(args, pcaps, mode)
        finally:
            for h in hogs:  # ours: by PID
                h.kill()
                h.wait()
    finally:
        tmp.cleanup()
    cfg, bounds = res["config"], res["bounds_s"]
    for p in PLANES:
        c = cfg["planes"][str(p)]
        say(
            f"  {c['name']:8s} {c['pps']:9.0f} frames/s = {c['x'] * args.rate / 1e6:6.1f} Mbit/s "
            f"on the wire (mean {c['mean_wire_bits'] / 8:.0f} B), VNI {c['vni']}, priority "
            f"{c['priority']}, outer DSCP {c['dscp'] if c['dscp'] is not None else 'copied'}"
        )
    problems = []
    for ph in res["phases"]:
        print_phase(ph, cfg, bounds)
        if not ph.get("kept", True):
            say(
                f"  -> attempt {ph['attempt']} not kept: the worker was off its CPU "
                f"{ph['preempted']:.1%} of the window (limit {args.max_preempted:.1%}); repeated"
            )
        elif ph["preempted"] > args.max_preempted:
            say(
                f"  -> kept although the worker was off its CPU {ph['preempted']:.1%} of the "
                f"window: out of retries"
            )
        where = f"{ph['phase']} run {ph['run']} attempt {ph['attempt']}"
        errs, short = check_phase(ph, cfg)
        for e in errs:
            problems.append(f"{where}: {e}")
        for e in short:
            say(f"WARNING: {where}: {e} (offered less than planned)")
    if problems:  # accounting or marking wrong: no RESULT line
        raise BenchError(
            f"{len(problems)} check(s) of the phases failed: " + "; ".join(problems[:5])
        )
    say(
        "checked: offered = sent + dropped + queued per plane (FIFO: over the shared queue); "
        "per VNI the frames out of the uplink = sent, outer DSCP = the plane's mark"
    )
    merged = {k: merge(res["phases"], k) for k in ("priority", "fifo")}
    summ = {k: summary(merged[k], bounds) for k in merged}
    res["discarded"] = sum(1 for ph in res["phases"] if not ph.get("kept", True))
    if res["discarded"]:
        say(
            f"{res['discarded']} attempt(s) not kept (worker preempted); the summary below is "
            "of the kept phases"
        )
    say("all kept phases, strict priority vs one FIFO:")
    for kind in ("priority", "fifo"):
        show(f"  [{kind}]")
        print_table(summ[kind])
    res["merged"] = {k: {str(p): v for p, v in m.items()} for k, m in merged.items()}
    res["summary"] = {k: {str(p): v for p, v in s.items()} for k, s in summ.items()}
    res["runs"] = args.runs
    res["problems"] = problems
    res["media_min_x"] = args.media_min_x
    res["shared_cpu"] = args.shared_cpu
    m, f = summ["priority"][MEDIA], summ["fifo"][MEDIA]
    verdict = "met" if m["loss"] == 0 and m["p99"] is not None and m["p99"] <= 50e-6 else "NOT met"
    say(
        f"target (zero media loss, media p99 <= 50 us, std at {args.std_x:g}x): {verdict}; "
        f"media p99 <= {lat_text(m['p99'])} with priority vs <= {lat_text(f['p99'])} with one FIFO, "
        f"mean {m['mean'] * 1e6 if m['mean'] else float('nan'):.1f} us vs "
        f"{f['mean'] * 1e6 if f['mean'] else float('nan'):.1f} us"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
        say(f"wrote {args.json}")
    if args.plot:
        plot(args.plot, res)
        say(f"wrote {args.plot}")
    return res


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench planes",
        description="Media first under overload: per-plane queues with strict priority on a "
        "shaped uplink, against one shared FIFO, in one run.",
    )
    ap.add_argument(
        "--rate",
        type=_rate,
        default=200_000_000,
        help="uplink shaper, bit/s on the wire, as the node config writes it: 200M, 1G, "
        "200000000 (default 200M)",
    )
    ap.add_argument("--burst", type=int, default=4096, help="shaper bucket, bytes (default 4096)")
    ap.add_argument("--std-x", type=float, default=2.0, help="std offered, x rate (default 2)")
    ap.add_argument("--control-x", type=float, default=0.2, help="control, x rate (default 0.2)")
    ap.add_argument("--media-x", type=float, default=0.1, help="media, x rate (default 0.1)")
    ap.add_argument("--std-qlen", type=int, default=1024, help="std queue, frames (default 1024)")
    ap.add_argument(
        "--qlen", type=int, default=256, help="control and media queues, frames (default 256)"
    )
    add_run_options(
        ap,
        seconds=5.0,
        seconds_help="window per phase",
        warmup=0.5,
        warmup_help="before the window",
        runs=1,
        runs_help="priority/FIFO pairs, alternating",
    )
    ap.add_argument(
        "--mode",
        choices=("auto", "hugepages", "fallback"),
        default="auto",
        help="EAL memory: auto = hugepages if >= 512 MB are free, else --no-huge",
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=4,
        help="repeat a phase whose worker thread was preempted, up to N times "
        "(default 4; 0: keep every phase)",
    )
    ap.add_argument(
        "--max-preempted",
        type=float,
        default=0.01,
        help="share of the window the worker may wait for its CPU before the "
        "phase is repeated (default 0.01)",
    )
    ap.add_argument(
        "--wait-others",
        type=float,
        default=120.0,
        help="before each phase, wait up to S s while other processes run DPDK "
        "workers (default 120)",
    )
    ap.add_argument(
        "--media-min-x",
        type=float,
        default=0.0,
        help="media's guaranteed rate (min_rate), x the shaped rate (default 0: none, "
        "strict priority only)",
    )
    ap.add_argument(
        "--shared-cpu",
        type=int,
        default=0,
        metavar="N",
        help="N busy loops on the worker's CPU (CPU 1) for the whole run, as a node whose "
        "shaped worker shares its CPU; a phase is then kept whatever its worker waited "
        "(default 0)",
    )
    ap.add_argument("--pcap-dir", help="keep the pcaps here (default: a temporary directory)")
    ap.add_argument("--json", help="write every figure of the run to this file")
    ap.add_argument("--plot", help="write a PNG plot (needs matplotlib) to this file")
    return ap


def _rate(text: str) -> int:
    """A rate as the node config takes it (dataplane.checks.check_rate)."""
    from dataplane.checks import check_rate
    from dataplane.errors import ConfigError

    try:
        return check_rate(text, "--rate")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--rate: ")) from None


def main(argv=None) -> int:
    ap = parser()
    args = parse_args(ap, argv)
    if (
        args.rate < 1_000_000
        or args.retries < 0
        or args.wait_others < 0
        or not 0 <= args.max_preempted <= 1
    ):
        ap.error("--rate >= 1000000, --retries >= 0, --wait-others >= 0, 0 <= --max-preempted <= 1")
    if args.shared_cpu < 0 or not 0 <= args.media_min_x <= 1:
        ap.error("--shared-cpu must be >= 0 and --media-min-x in 0..1")
    sizes = ("burst", "qlen", "std_qlen", "std_x", "control_x", "media_x")
    bad = ["--" + k.replace("_", "-") for k in sizes if getattr(args, k) <= 0]
    if bad:
        ap.error(f"{', '.join(bad)}: must be > 0")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            ap.error("--plot needs matplotlib (pip install matplotlib)")
    return run_main(run, args, _result)


def _result(res):
    m, f = res["summary"]["priority"][str(MEDIA)], res["summary"]["fifo"][str(MEDIA)]
    out = {
        "media_loss": f"{m['loss']:.6f}",
        "media_p99_us": p99_us(m["p99"]),
        "fifo_media_loss": f"{f['loss']:.6f}",
        "fifo_media_p99_us": p99_us(f["p99"]),
    }
    if res.get("media_min_x"):
        out["media_min_x"] = f"{res['media_min_x']:g}"  # media's guaranteed rate
    if res.get("shared_cpu"):
        out["shared_cpu"] = str(res["shared_cpu"])  # busy loops on the worker's CPU
    return "planes", out


if __name__ == "__main__":
    sys.exit(main())
