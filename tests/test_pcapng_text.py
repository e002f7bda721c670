"""The capture's one-line text (``dataplane capture`` without ``-w``):
lengths as the headers give them, not as many bytes as were captured (a
snap length cuts them, Ethernet padding adds to them)."""

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from dataplane.pcapng import summary

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def test_a_padded_pure_ack_has_no_payload():
    f = bytes(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="A"))
    f += b"\0" * (60 - len(f))  # as it is on the wire
    assert summary(f).endswith("TCP [.] seq 0 ack 0, length 0"), summary(f)


def test_a_segment_cut_by_the_snap_length_says_its_own_length():
    f = bytes(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP() / Raw(b"x" * 1460))
    assert summary(f[:128]).endswith(", length 1460"), summary(f[:128])
    f6 = bytes(Ether(src=A, dst=B) / IPv6(src="fd00::1", dst="fd00::2") / TCP() / Raw(b"x" * 1000))
    assert summary(f6[:100]).endswith(", length 1000"), summary(f6[:100])
    u = bytes(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / Raw(b"y" * 300))
    assert summary(u[:64]).endswith("UDP, length 300"), summary(u[:64])


def test_an_ipv4_header_length_below_five_words_is_not_read_as_one():
    f = bytearray(bytes(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP()))
    f[14] = 0x42  # version 4, header length 2 words
    assert "ethertype 0x0800" in summary(bytes(f)), summary(bytes(f))
