"""The capture's one-line text (``dataplane capture`` without ``-w``):
lengths as the headers give them, not as many bytes as were captured (a
snap length cuts them, Ethernet padding adds to them); and the pcapng
writer's interfaces added after frames."""

import subprocess

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from dataplane.pcapng import PcapngWriter, summary

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


def test_a_routers_fragmentation_needed_names_the_mtu_and_the_datagram():
    """What `dataplane capture uplink --direction drop icmp` shows of a
    frag_needed drop: the MTU the router names and which datagram of ours
    it could not send on; other ICMP as before."""
    quoted = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=54321, dport=4789))[:28]
    f = bytes(
        Ether(src=A, dst=B)
        / IP(src="10.9.0.1", dst="10.0.0.1")
        / ICMP(type=3, code=4, nexthopmtu=1400)
        / Raw(quoted)
    )
    assert summary(f).endswith(
        "10.9.0.1 > 10.0.0.1: ICMP unreachable - need to frag (mtu 1400), "
        "about 10.0.0.1.54321 > 10.0.0.2.4789: UDP"
    ), summary(f)
    assert summary(f[: 14 + 20 + 8]).endswith("ICMP unreachable - need to frag (mtu 1400)")
    old = bytes(Ether(src=A, dst=B) / IP(src="10.9.0.1", dst="10.0.0.1") / ICMP(type=3, code=4))
    assert summary(old).endswith("ICMP unreachable - need to frag"), summary(old)  # no MTU
    for n in range(len(f) + 1):  # cut anywhere: a line, never an exception
        assert isinstance(summary(f[:n]), str)
    port = bytes(Ether(src=A, dst=B) / IP(src="10.9.0.1", dst="10.0.0.1") / ICMP(type=3, code=3))
    assert summary(port).endswith("10.9.0.1 > 10.0.0.1: ICMP unreachable"), summary(port)


def test_an_interface_added_later_is_read_back_and_kept_within_max_size(tmp_path):
    """An interface added after frames (a pod that joined an `any`
    capture) is numbered next and read back by tshark with its frames; one
    whose block would pass max_size is refused."""
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP() / UDP())
    path = tmp_path / "later.pcapng"
    with open(path, "wb", buffering=0) as f:
        w = PcapngWriter(f, [("a:std", 128)])
        assert w.write(0, 1_700_000_000 * 10**9, "rx", len(frame), frame)
        assert w.add_interface("b:std", 128)
        assert w.write(1, 1_700_000_001 * 10**9, "tx", len(frame), frame)
        w.flush()
        w.max_size = w.size + 8  # no room for one more interface block
        assert not w.add_interface("c:std", 128)
        w.flush()
    r = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.interface_name"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["a:std", "b:std"]
    assert path.stat().st_size == w.size


def test_a_write_to_a_pipe_cut_by_a_signal_goes_on_where_it_stopped(tmp_path):
    """``dataplane capture -w -`` into a pipe whose reader is slow, and a
    signal (Ctrl-C) while a flush waits for it: the pipe has taken part of
    a block, which cannot be taken back. The writer keeps the rest of that
    block for the next flush instead of writing it again from its start:
    the reader gets one whole pcapng stream, every frame once."""
    import os
    import signal
    import threading

    from scapy.utils import rdpcap

    class Interrupted(Exception):
        pass

    fired = threading.Event()

    def interrupt(signum, frame):
        fired.set()
        raise Interrupted

    r, w = os.pipe()
    got = bytearray()

    def reader():
        fired.wait(60)  # the writer fills the pipe and waits meanwhile
        while chunk := os.read(r, 1 << 16):
            got.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    frames = [
        bytes(
            Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / Raw(bytes([i]) * 997)
        )
        for i in range(200)
    ]
    old = signal.signal(signal.SIGALRM, interrupt)
    cut = False
    try:
        with open(w, "wb", buffering=0) as f:
            wr = PcapngWriter(f, [("eth0", 65535)])
            for i, fr in enumerate(frames):
                assert wr.write(0, 1_000_000 * i, "rx", len(fr), fr)
            signal.setitimer(signal.ITIMER_REAL, 0.1)  # while the pipe is full
            try:
                wr.flush()
            except Interrupted:
                cut = True
            signal.setitimer(signal.ITIMER_REAL, 0)
            wr.flush()  # what the capture's end does
            assert wr.frames == len(frames)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        t.join(30)
        os.close(r)
    assert cut, "the flush was not interrupted: the test did not test it"
    (tmp_path / "got.pcapng").write_bytes(bytes(got))
    assert [bytes(p) for p in rdpcap(str(tmp_path / "got.pcapng"))] == frames
