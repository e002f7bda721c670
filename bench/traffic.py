"""scapy traffic profiles for the throughput benchmark, written as pcaps.

Both profiles carry the same traffic mix (see bench.topology for addresses):

- ``n_frames`` inner frames of exactly INNER_FRAME_LEN (60) bytes, i.e. 64 B
  on the wire with the FCS; one per flow. Frame i belongs to MAC pair
  k = i % n_macs and flow f = i // n_macs: the flows of a pair differ in
  their inner IP addresses (4 per host) and L4 ports; one in four is TCP,
  the rest UDP. One flow in ten of every pair is marked DSCP EF (TOS 0xb8).
- the frames are then shuffled with a fixed seed, so a burst of 32 holds
  ~32 different destination MACs behind all the remote VTEPs, in no
  regular stride: no one-entry (or last-hit) cache can stand in for the
  FDB lookup.

``encap``: the inner frames as a pod sends them (dst = remote MAC k).
``decap``: the reverse direction (dst = local pod MAC k) wrapped in VXLAN
as remote VTEP k % n_vteps sends it to us: outer dst MAC/IP = our VTEP, UDP
dport 4789, DF, outer TOS copied from the inner one, UDP checksum 0, and
``VXLAN(flags=0x08, vni=...)`` (plain ``VXLAN(vni=)`` would make scapy emit
VXLAN-GPE flags). The outer headers are built by scapy once per (VTEP, TOS)
and only their UDP source port is patched per frame.

Inner frames are built by scapy one by one (~1-2 ms each): 4096 frames take
a few seconds, paid once per benchmark invocation, outside any measurement.
"""

import random
import socket
import struct
import zlib

from scapy.data import DLT_EN10MB
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw
from scapy.utils import RawPcapReader, RawPcapWriter

from dataplane.checks import parse_mac

from . import topology as topo

SHUFFLE_SEED = 20240607
KINDS = ("encap", "decap")


def _flow(i: int, n_macs: int, reverse: bool):
    """Frame i's fields: (dst MAC, src MAC, src IP, dst IP, TOS, TCP?, sport,
    dport)."""
    k, f = i % n_macs, i // n_macs
    # a tenth EF, spread over all MAC pairs (i % 10 would pick even k only)
    tos = topo.EF_TOS if (k + f) % 10 == 0 else 0
    sport, dport = 1024 + (f * 7919) % 60000, 5000 + f % 64
    pod = (topo.local_mac(k), topo.local_ip(k, f), sport)
    remote = (topo.remote_mac(k), topo.remote_ip(k, f), dport)
    # encap: local pod k -> remote endpoint k (what encap tunnels); decap:
    # remote endpoint k -> local pod k (what decap delivers)
    (smac, sip, sp), (dmac, dip, dp) = (remote, pod) if reverse else (pod, remote)
    return dmac, smac, sip, dip, tos, f % 4 == 3, sp, dp


def _inner_scapy(i: int, n_macs: int, reverse: bool) -> bytes:
    """Inner frame i as scapy builds it (the reference _inner must equal)."""
    dst, src, sip, dip, tos, tcp, sport, dport = _flow(i, n_macs, reverse)
    eth = Ether(src=src, dst=dst)
    ip = IP(src=sip, dst=dip, tos=tos)
    if tcp:
        l4, hdr_len = TCP(sport=sport, dport=dport, flags="A"), 14 + 20 + 20
    else:
        l4, hdr_len = UDP(sport=sport, dport=dport), 14 + 20 + 8
    # payload (not Ethernet padding): the IP total length covers the frame
    return bytes(eth / ip / l4 / Raw(b"\x00" * (topo.INNER_FRAME_LEN - hdr_len)))


def _csum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _inner(i: int, n_macs: int, reverse: bool) -> bytes:
    """Inner frame i as bytes, INNER_FRAME_LEN long (no FCS): the bytes
    scapy builds (_inner_scapy; the tests hold them equal), packed directly,
    some hundred times faster, for pcaps of a million frames."""
    dst, src, sip, dip, tos, tcp, sport, dport = _flow(i, n_macs, reverse)
    l4_len = 20 if tcp else 8
    pay = b"\x00" * (topo.INNER_FRAME_LEN - 14 - 20 - l4_len)
    proto = 6 if tcp else 17
    s_ip, d_ip = socket.inet_aton(sip), socket.inet_aton(dip)
    # IPv4 as scapy makes it: id 1, no flags, TTL 64
    ip = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s", 0x45, tos, 20 + l4_len + len(pay), 1, 0, 64, proto, 0, s_ip, d_ip
        )
    )
    ip[10:12] = _csum(bytes(ip)).to_bytes(2, "big")
    if tcp:  # seq 0, ack 0, 5 words, ACK, window 8192
        l4 = bytearray(struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x10, 8192, 0, 0))
        at = 16
    else:
        l4 = bytearray(struct.pack("!HHHH", sport, dport, l4_len + len(pay), 0))
        at = 6
    pseudo = s_ip + d_ip + struct.pack("!BBH", 0, proto, l4_len + len(pay))
    c = _csum(pseudo + bytes(l4) + pay)
    if not tcp and c == 0:
        c = 0xFFFF
    l4[at : at + 2] = c.to_bytes(2, "big")
    eth = parse_mac(dst) + parse_mac(src) + b"\x08\x00"
    data = eth + bytes(ip) + bytes(l4) + pay
    assert len(data) == topo.INNER_FRAME_LEN
    return data


def _outer_templates(n_vteps: int):
    """Outer Ether/IPv4/UDP/VXLAN headers built by scapy once per (remote
    VTEP, TOS), for a 60-byte inner frame: {(vtep index, tos): bytes}.
    Per frame only the UDP source port is patched (the UDP checksum is 0,
    so nothing else depends on it) - the same template recipe a VTEP uses,
    and 16 scapy builds instead of one per frame."""
    out = {}
    for j in range(n_vteps):
        for tos in (0, topo.EF_TOS):
            pkt = (
                Ether(src=topo.NEXT_HOP_MAC, dst=topo.VTEP_MAC)
                / IP(
                    src=topo.remote_vtep(j), dst=topo.LOCAL_VTEP, tos=tos, flags="DF", id=0, ttl=64
                )
                / UDP(sport=0xC000, dport=topo.VXLAN_PORT, chksum=0)
                / VXLAN(flags=0x08, vni=topo.VNI)
                / Raw(b"\x00" * topo.INNER_FRAME_LEN)
            )
            hdr = bytes(pkt)[: topo.VXLAN_OVERHEAD]
            assert len(bytes(pkt)) == topo.INNER_FRAME_LEN + topo.VXLAN_OVERHEAD
            out[j, tos] = hdr
    return out


_UDP_SPORT_OFF = 14 + 20  # outer UDP source port: bytes 34..35


def _vxlan(inner: bytes, i: int, n_macs: int, n_vteps: int, templates) -> bytes:
    """Inner frame i as remote VTEP k % n_vteps tunnels it to us."""
    hdr = bytearray(templates[(i % n_macs) % n_vteps, inner[15] & 0xFC])
    # outer source port: entropy from the inner flow, as a VTEP does (RFC 7348 §5)
    sport = 0xC000 | (zlib.crc32(inner[26:38]) & 0x3FFF)
    hdr[_UDP_SPORT_OFF : _UDP_SPORT_OFF + 2] = sport.to_bytes(2, "big")
    return bytes(hdr) + inner


def _with_udp_csum(frame: bytes) -> bytes:
    """VXLAN frame ``frame`` with its outer UDP checksum computed, as a
    Linux VTEP sends by default (udpcsum), instead of 0."""
    ip = frame[14:34]
    udp = frame[34:]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    c = _csum(pseudo + udp[:6] + b"\0\0" + udp[8:]) or 0xFFFF
    return frame[:40] + c.to_bytes(2, "big") + frame[42:]


def frames(kind: str, n_frames: int, n_macs: int, n_vteps: int, udp_csum: bool = False):
    """The frames (bytes) of profile ``kind`` in replay order; ``udp_csum``
    (decap): with outer UDP checksums."""
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    topo.check_sizes(n_macs, n_vteps)
    if n_frames < n_macs:
        raise ValueError(f"--frames: {n_frames} frames cannot cover {n_macs} MACs")
    templates = _outer_templates(n_vteps) if kind == "decap" else None
    out = []
    for i in range(n_frames):
        inner = _inner(i, n_macs, reverse=(kind == "decap"))
        out.append(_vxlan(inner, i, n_macs, n_vteps, templates) if templates else inner)
    if udp_csum:
        if kind != "decap":
            raise ValueError(f"udp_csum: only for the decap profile, not {kind!r}")
        out = [_with_udp_csum(f) for f in out]
    random.Random(SHUFFLE_SEED).shuffle(out)
    return out


def write_pcap(
    path: str, kind: str, n_frames: int, n_macs: int, n_vteps: int, pod_mac=None, udp_csum=False
) -> int:
    """Write profile ``kind`` to ``path``; returns the frame length in the pcap.
    ``pod_mac`` (encap): every frame from that one source MAC, as from one
    pod, instead of one local MAC per remote one; ``udp_csum`` (decap):
    outer UDP checksums, as a Linux VTEP sends them."""
    data = frames(kind, n_frames, n_macs, n_vteps, udp_csum=udp_csum)
    if pod_mac is not None:
        if kind != "encap":
            raise ValueError(f"pod_mac: only for the encap profile, not {kind!r}")
        src = parse_mac(pod_mac)
        data = [d[:6] + src + d[12:] for d in data]
    with RawPcapWriter(path, linktype=DLT_EN10MB) as w:
        for d in data:
            w.write(d)
    return len(data[0])


def read_pcap(path: str):
    """Every frame of a pcap, as bytes."""
    with RawPcapReader(path) as r:
        return [data for data, _meta in r]


# ------------------------------------------------------------------ checks


def check_encap_output(
    inp, out, n_macs: int, n_vteps: int, sample: bool = False, sport_min: int = 0xC000
):
    """Problems (list of str) with ``out``, what the core sent to the uplink
    for ``inp``, the encap pcap's frames. Empty when every frame came out
    tunnelled to the right VTEP with the headers docs/architecture.md describes.
    ``sample``: ``out`` is a sample of the output (any number, repeats
    allowed): each must be right, none is missing. ``sport_min``: the lowest
    outer UDP source port accepted (ours: 49152 and up, RFC 7348's range)."""
    # read at fixed offsets (the headers' layout is fixed; a frame that is not
    # Ether/IPv4/UDP/VXLAN fails the first checks): a million frames are
    # checked in seconds, where parsing each with scapy takes many minutes
    vtep = {
        parse_mac(topo.remote_mac(k)): socket.inet_aton(topo.vtep_of(k, n_vteps))
        for k in range(n_macs)
    }
    want = {f: vtep.get(f[:6]) for f in inp}
    nh, our_mac = parse_mac(topo.NEXT_HOP_MAC), parse_mac(topo.VTEP_MAC)
    our_ip = socket.inet_aton(topo.LOCAL_VTEP)
    errs = []
    if len(out) != len(inp) and not sample:
        errs.append(f"{len(out)} frames out for {len(inp)} in")
    seen = set()
    for n, raw in enumerate(out):
        inner = raw[topo.VXLAN_OVERHEAD :]
        problems = []
        if len(raw) < topo.VXLAN_OVERHEAD or raw[12:14] != b"\x08\x00" or raw[14] != 0x45:
            problems.append("not Ether/IPv4 (no options)")
        elif raw[23] != 17 or raw[36:38] != topo.VXLAN_PORT.to_bytes(2, "big"):
            problems.append("not UDP to the VXLAN port")
        else:
            tos = raw[15]
            ip_len, _id, frag, _ttl, _proto, csum = struct.unpack("!HHHBBH", raw[16:26])
            sport, udp_len, udp_csum = struct.unpack("!H2xHH", raw[34:42])
            exp_vtep = want.get(inner)
            if exp_vtep is None:
                problems.append("inner frame not one of the input frames")
            elif raw[30:34] != exp_vtep:
                problems.append(
                    f"outer dst {socket.inet_ntoa(raw[30:34])}, expected "
                    f"{socket.inet_ntoa(exp_vtep)}"
                )
            if raw[:6] != nh or raw[6:12] != our_mac:
                problems.append(f"outer MACs {raw[6:12].hex(':')} -> {raw[:6].hex(':')}")
            if raw[26:30] != our_ip or frag != 0x4000 or tos != inner[15] & 0xFC:
                problems.append(
                    f"outer IP src {socket.inet_ntoa(raw[26:30])} flags/frag {frag:#06x} "
                    f"tos {tos:#x}"
                )
            if ip_len != len(raw) - 14:
                problems.append(f"outer IP length {ip_len}")
            hdr = bytearray(raw[14:34])
            hdr[10:12] = b"\x00\x00"
            if csum != _ip_checksum(bytes(hdr)):
                problems.append(f"outer IP checksum {csum:#06x}")
            if udp_csum != 0 or sport < sport_min:
                problems.append(f"UDP {sport}->{topo.VXLAN_PORT} csum {udp_csum:#x}")
            if udp_len != len(raw) - 34:
                problems.append(f"UDP length {udp_len}")
            if raw[42] != 0x08 or int.from_bytes(raw[46:49], "big") != topo.VNI:
                problems.append(f"VXLAN flags {raw[42]:#x} vni {int.from_bytes(raw[46:49], 'big')}")
        if problems:
            errs.append(f"frame {n}: " + "; ".join(problems))
        seen.add(inner)
        if len(errs) > 10:
            errs.append("...")
            break
    missing = len(set(inp) - seen)
    if missing and len(errs) <= 10 and not sample:
        errs.append(f"{missing} input frames never came out")
    return errs


def check_decap_output(inp, out, sample: bool = False):
    """Problems with ``out``, what the core delivered to the pod port for
    ``inp``, the decap pcap's VXLAN frames: it must be exactly the inner
    frames (order aside). ``sample``: each frame of ``out`` must be one of
    them."""
    if sample:
        inner_set = {f[topo.VXLAN_OVERHEAD :] for f in inp}
        bad = [f for f in out if f not in inner_set]
        return (
            [f"{len(bad)} of {len(out)} sampled frames are no input's inner frame"] if bad else []
        )
    inner = sorted(f[topo.VXLAN_OVERHEAD :] for f in inp)
    got = sorted(out)
    if got == inner:
        return []
    errs = [f"{len(out)} frames out for {len(inp)} in"] if len(out) != len(inp) else []
    extra = set(got) - set(inner)
    if extra:
        errs.append(
            f"{len(extra)} output frames are no input's inner frame, e.g. {next(iter(extra)).hex()}"
        )
    missing = set(inner) - set(got)
    if missing:
        errs.append(f"{len(missing)} inner frames never came out")
    return errs or ["output differs from the inner frames (duplicates?)"]


def _ip_checksum(hdr: bytes) -> int:
    s = sum(int.from_bytes(hdr[i : i + 2], "big") for i in range(0, len(hdr), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
