"""The benchmark's traffic: frames packed without scapy are the bytes scapy
builds, and the output check (fixed offsets, no scapy) catches what it must."""

import socket

import pytest

from bench import topology as topo
from bench import traffic
from dataplane.checks import parse_mac


@pytest.mark.parametrize("n_macs", [64, 16384, 1 << 20])
@pytest.mark.parametrize("reverse", [False, True])
def test_packed_frames_are_scapys(n_macs, reverse):
    frames = list(range(0, 400)) + list(range(n_macs, n_macs + 400))
    for i in frames:
        assert traffic._inner(i, n_macs, reverse) == traffic._inner_scapy(i, n_macs, reverse), i


def _encap(inner: bytes, vtep: str) -> bytes:
    """inner as the core should tunnel it to vtep (bench.topology's VTEP)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import Raw

    return bytes(
        Ether(src=topo.VTEP_MAC, dst=topo.NEXT_HOP_MAC)
        / IP(src=topo.LOCAL_VTEP, dst=vtep, flags="DF", tos=inner[15] & 0xFC)
        / UDP(sport=0xC123, dport=topo.VXLAN_PORT, chksum=0)
        / VXLAN(flags=0x08, vni=topo.VNI)
        / Raw(inner)
    )


def test_encap_check_passes_right_frames_and_names_wrong_ones():
    n_macs, n_vteps = 64, 8
    inp = traffic.frames("encap", 256, n_macs, n_vteps)
    k_of = {parse_mac(topo.remote_mac(k)): k for k in range(n_macs)}
    out = [_encap(f, topo.vtep_of(k_of[f[:6]], n_vteps)) for f in inp]
    assert traffic.check_encap_output(inp, out, n_macs, n_vteps) == []

    wrong_vtep = bytearray(out[0])
    wrong_vtep[30:34] = socket.inet_aton(topo.vtep_of(k_of[inp[0][:6]] + 1, n_vteps))
    errs = traffic.check_encap_output(inp, [bytes(wrong_vtep)] + out[1:], n_macs, n_vteps)
    assert len(errs) == 1 and "outer dst" in errs[0]

    bad_csum = bytearray(out[1])
    bad_csum[24] ^= 0xFF
    errs = traffic.check_encap_output(
        inp, [bytes(bad_csum)] + out[2:], n_macs, n_vteps, sample=True
    )
    assert len(errs) == 1 and "checksum" in errs[0]

    errs = traffic.check_encap_output(inp, out[:-1], n_macs, n_vteps)
    assert errs == [f"{len(out) - 1} frames out for {len(inp)} in", "1 input frames never came out"]


def test_one_pod_mac_pcap_keeps_every_frame_distinct(tmp_path):
    """``write_pcap(..., pod_mac=)`` (the AF_PACKET benchmark: one pod sends
    it all): every frame from that MAC, otherwise the encap profile's
    frames, each still distinct (the output check counts them by their
    bytes); the decap profile refuses it."""
    mac = topo.local_mac(0)
    path = str(tmp_path / "encap.pcap")
    traffic.write_pcap(path, "encap", 4096, 64, 8, pod_mac=mac)
    got = traffic.read_pcap(path)
    want = traffic.frames("encap", 4096, 64, 8)
    assert len(got) == len(want) == len(set(got)) == 4096
    assert {g[6:12] for g in got} == {parse_mac(mac)}
    assert [g[:6] + g[12:] for g in got] == [w[:6] + w[12:] for w in want]
    assert {w[6:12] for w in want} != {parse_mac(mac)}  # the plain profile has many
    with pytest.raises(ValueError, match="pod_mac: only for the encap profile"):
        traffic.write_pcap(path, "decap", 64, 64, 8, pod_mac=mac)
