"""Packet capture in the core: frames of chosen ports and directions that
match a pcap filter are copied out, and the frames the core drops there
with their reasons, nothing is taken from forwarding, a
capture that cannot keep up counts what it missed, and bad requests change
nothing."""

import re
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from dataplane import errors
from tests.test_core import (
    R1,
    R1_VTEP,
    A,
    B,
    Topo,
    _fresh_remote,
    udp_frame,
    vxlan_frame,
    wait_drop,
)


def test_rx_capture_takes_what_the_filter_matches(eng):
    t = Topo(eng)
    frames = [udp_frame(src=A, dst=B, dport=5000 + (i % 2), size=80 + i) for i in range(40)]
    eng.capture_start([t.a], "rx", "udp dst port 5000")
    try:
        t.send(t.a, *frames)
        got = t.recv(t.b, n=40)
        assert len(got) == 40  # forwarding is untouched
        recs = _records(eng, 20)
        st = eng.capture_stats()
    finally:
        eng.capture_stop()
    want = [bytes(f) for f in frames if f[UDP].dport == 5000]
    assert [r[4] for r in recs] == want
    assert all(r[1] == t.a and r[2] == "rx" and r[3] == len(r[4]) for r in recs)
    ts = [r[0] for r in recs]
    assert ts == sorted(ts) and ts[0] > 1_600_000_000 * 10**9  # wall clock, ns
    assert st["matched"] == 20 and st["captured"] == 20 and st["dropped"] == 0


def test_tx_capture_of_the_uplink_shows_the_outer_headers(eng):
    t = Topo(eng)
    eng.capture_start([t.up], "tx", "", snaplen=64)
    try:
        t.send(t.a, udp_frame(src=A, dst=R1, size=200))
        out = t.recv(t.up, n=1)
        assert len(out) == 1
        recs = []
        for _ in range(100):
            recs += eng.capture_read()
            if recs:
                break
    finally:
        eng.capture_stop()
    assert len(recs) == 1
    ts, port, d, orig, data, why = recs[0]
    assert (port, d, orig, len(data), why) == (t.up, "tx", len(out[0]), 64, None)  # cut at snaplen
    assert data == bytes(out[0])[:64]
    cap = Ether(data)
    assert cap[IP].dst == R1_VTEP and cap[VXLAN].vni == 100


def test_a_full_capture_drops_copies_never_frames(eng):
    t = Topo(eng)
    frames = [udp_frame(src=A, dst=B, sport=100 + i) for i in range(32)]
    eng.capture_start([t.a, t.b], "both", "", slots=4)
    try:
        t.send(t.a, *frames)
        assert len(t.recv(t.b, n=32)) == 32
        st = eng.capture_stats()
        recs = eng.capture_read()
    finally:
        eng.capture_stop()
    # 32 frames seen at a's rx and at b's tx; 4 records: the rest counted
    assert st["matched"] == 64
    assert st["captured"] == len(recs) == 4
    assert st["dropped"] == 60


def test_bad_requests_name_the_problem_and_start_nothing(eng):
    t = Topo(eng)
    with pytest.raises(errors.DataplaneError, match="capture filter 'udp prot 5': "):
        eng.capture_start([t.a], "rx", "udp prot 5")
    with pytest.raises(ValueError, match="direction 'in'"):
        eng.capture_start([t.a], "in")
    with pytest.raises(errors.DataplaneError, match="slots 3: a power of two"):
        eng.capture_start([t.a], "rx", "", slots=3)
    with pytest.raises(errors.DataplaneError, match="snaplen 10"):
        eng.capture_start([t.a], "rx", "", snaplen=10)
    with pytest.raises(errors.DataplaneError, match="no capture is running"):
        eng.capture_read()
    # nothing was left running: a good request starts, a second one is refused
    eng.capture_start([t.a], "rx", "arp")
    try:
        with pytest.raises(errors.DataplaneError, match="already running"):
            eng.capture_start([t.b], "rx")
    finally:
        eng.capture_stop()


def test_records_too_large_for_the_memory_name_the_largest_snap_length_that_fits(eng):
    """4096 records (what the node service asks for) of 65535 bytes do not
    fit in the test core's memory: the refusal says the largest snap length
    whose records fit - which starts, where one byte more does not."""
    t = Topo(eng)
    with pytest.raises(errors.DataplaneError) as e:
        eng.capture_start([t.a], "rx", "", snaplen=65535, slots=4096)
    m = re.search(
        r"capture snaplen 65535: 4096 records of \d+ bytes do not fit in the memory free "
        r"now; the largest snap length that fits is (\d+)$",
        str(e.value),
    )
    assert m, str(e.value)
    fits = int(m.group(1))
    assert 64 <= fits < 65535
    eng.capture_start([t.a], "rx", "", snaplen=fits, slots=4096)
    eng.capture_stop()
    with pytest.raises(
        errors.DataplaneError, match=f"the largest snap length that fits is {fits}$"
    ):
        eng.capture_start([t.a], "rx", "", snaplen=fits + 1, slots=4096)
    eng.capture_start([t.a], "rx", "", snaplen=fits, slots=4096)  # nothing left taken
    eng.capture_stop()


def test_stop_hands_over_every_record_the_capture_took(eng):
    """Frames captured and not read yet when the capture stops are handed
    over by the stop, with final counters that agree: none is freed
    unseen."""
    t = Topo(eng)
    frames = [udp_frame(src=A, dst=B, size=80 + i) for i in range(40)]
    eng.capture_start([t.a], "rx", "")
    t.send(t.a, *frames)
    assert len(t.recv(t.b, n=40)) == 40  # forwarded, so captured: at rx
    got, st = eng.capture_stop()
    assert [r[4] for r in got] == [bytes(f) for f in frames]
    assert st == {"matched": 40, "captured": 40, "dropped": 0, "queued": 0}


def _to_a_full_port(eng, directions):
    """200 frames from pod a to a port whose driver refuses frames (its
    ring of 64 full, nobody reading it: tx_full), captured there in
    ``directions`` until each is counted sent or refused (it is captured
    before that): (port, frames, records, capture counters, how many left)."""
    t = Topo(eng)
    small = eng.add_ring_port("s", size=64)
    eng.set_port_network(small, 0)
    mac = "02:00:00:00:00:5a"
    eng.fdb_add_local(0, mac, small)
    frames = [udp_frame(src=A, dst=mac, sport=100 + i) for i in range(200)]
    c0 = eng.counters()
    eng.capture_start([small], directions, "")
    try:
        t.send(t.a, *frames)
        for _ in range(200):
            c = eng.counters().since(c0)
            if c.port_dict(small)["tx_packets"] + c.drops()["tx_full"] == 200:
                break
            time.sleep(0.01)
    finally:
        got, st = eng.capture_stop()
    c = eng.counters().since(c0)
    left = c.port_dict(small)["tx_packets"]
    assert 0 < left < 200 and c.drops()["tx_full"] == 200 - left, (left, c.drops())
    return small, frames, got, st, left


def test_tx_capture_shows_only_the_frames_the_driver_took(eng):
    """A port whose driver refuses frames: the tx capture has the frames
    that left, in order, and not the ones dropped - a capture shows what
    went out."""
    small, frames, got, st, left = _to_a_full_port(eng, "tx")
    assert [r[4] for r in got] == [bytes(f) for f in frames[:left]]
    assert st == {"matched": left, "captured": left, "dropped": 0, "queued": 0}
    assert [bytes(f) for f in eng.collect(small, wait=0.5, expect=left)] == [r[4] for r in got]


def _records(eng, n, tries=200):
    """What the capture has, read until it holds n records (10 ms apart)."""
    recs = []
    for _ in range(tries):
        recs += eng.capture_read()
        if len(recs) >= n:
            break
        time.sleep(0.01)
    return recs


def _records_and_any_late(eng, n):
    """As _records, then what more came within 0.1 s: a test that wants
    exactly these records sees any extra one."""
    recs = _records(eng, n)
    time.sleep(0.1)
    return recs + eng.capture_read()


def test_a_drop_capture_has_each_dropped_frame_with_its_reason(eng):
    """Frames the core drops on the captured ports are copied with their
    reason, by the port they came in by; frames it forwards, and drops on
    ports not captured, are not."""
    t = Topo(eng)
    hairpin = udp_frame(src=B, dst=A, sport=7)  # A is behind port a itself
    oversize = udp_frame(src=A, dst=R1, size=1465)  # underlay MTU 1500: 1464 fits
    good = udp_frame(src=A, dst=B, sport=9)
    bad_vni = vxlan_frame(udp_frame(src=R1, dst=A), vni=4242)
    not_captured = udp_frame(src=A, dst=B, sport=11)  # a hairpin on port b
    eng.capture_start([t.a, t.up], "drop", "")
    try:
        t.send(t.a, hairpin, good, oversize)
        assert len(t.recv(t.b, n=1)) == 1
        t.send(t.up, bad_vni)
        t.send(t.b, not_captured)
        assert wait_drop(eng, t.base, "hairpin", 2) == 2
        recs = _records_and_any_late(eng, 3)
    finally:
        eng.capture_stop()
    got = sorted((port, d, why, data) for _ts, port, d, _orig, data, why in recs)
    want = sorted(
        [
            (t.a, "drop", "hairpin", bytes(hairpin)),
            (t.a, "drop", "oversize", bytes(oversize)),
            (t.up, "drop", "unknown_vni", bytes(bad_vni)),
        ]
    )
    assert got == want
    assert all(orig == len(data) for _ts, _p, _d, orig, data, _w in recs)


def test_drops_at_a_transmit_are_told_of_the_port_they_were_to_leave_by(eng):
    """A port whose driver refuses frames (tx_full): with ``all``, the
    frames that left are its tx records and the ones refused its drop
    records, together every frame sent to it, once."""
    small, frames, got, st, left = _to_a_full_port(eng, "all")
    sent = [r[4] for r in got if r[2] == "tx"]
    refused = [r[4] for r in got if r[2] == "drop"]
    assert all(r[1] == small for r in got)
    assert {r[5] for r in got if r[2] == "drop"} == {"tx_full"}
    assert all(r[5] is None for r in got if r[2] == "tx")
    assert sent == [bytes(f) for f in frames[:left]]
    assert sorted(sent + refused) == sorted(bytes(f) for f in frames)
    assert st["matched"] == st["captured"] == 200


def test_a_drop_capture_keeps_to_its_filter(eng):
    t = Topo(eng)
    frames = [udp_frame(src=B, dst=A, dport=5000 + (i % 2), sport=100 + i) for i in range(10)]
    eng.capture_start([t.a], "drop", "udp dst port 5001")
    try:
        t.send(t.a, *frames)
        assert wait_drop(eng, t.base, "hairpin", 10) == 10
        recs = _records(eng, 5)
    finally:
        got, st = eng.capture_stop()
    recs += got
    assert [r[4] for r in recs] == [bytes(f) for f in frames if f[UDP].dport == 5001]
    assert st["matched"] == 5


def test_an_underlay_too_small_for_our_datagrams_is_one_capture_away(eng):
    """A router's "fragmentation needed" about one of our datagrams is a
    frag_needed drop on the uplink; `capture uplink --direction drop icmp`
    has it, with the MTU the router names, and not the uplink's other
    drops."""
    from scapy.layers.inet import ICMP
    from scapy.packet import Raw

    from dataplane.pcapng import summary
    from tests.test_core import NH_MAC, VTEP_IP, VTEP_MAC

    t = Topo(eng)
    quoted = bytes(IP(src=VTEP_IP, dst=R1_VTEP) / UDP(sport=54000, dport=4789))[:28]
    icmp = (
        Ether(src=NH_MAC, dst=VTEP_MAC)
        / IP(src="10.99.0.1", dst=VTEP_IP)
        / ICMP(type=3, code=4, nexthopmtu=1400)
        / Raw(quoted)
    )
    eng.capture_start([t.up], "drop", "icmp")
    try:
        t.send(t.up, vxlan_frame(udp_frame(src=R1, dst=A), vni=4242), icmp)
        assert wait_drop(eng, t.base, "frag_needed", 1) == 1
        assert wait_drop(eng, t.base, "unknown_vni", 1) == 1
        recs = _records_and_any_late(eng, 1)
    finally:
        eng.capture_stop()
    assert [(r[1], r[2], r[5], r[4]) for r in recs] == [(t.up, "drop", "frag_needed", bytes(icmp))]
    assert "ICMP unreachable - need to frag (mtu 1400), about 10.0.0.1.54000 > 10.0.0.2.4789" in (
        summary(recs[0][4])
    )


def test_frames_that_waited_for_a_next_hop_in_vain_are_told_of_their_pods_port(eng):
    """Frames held for a remote VTEP's next hop that never answers are
    dropped later, outside the burst that brought them (neigh_unresolved):
    told of the port they came in by, whatever port the worker received
    from since."""
    t = Topo(eng, static_nh=False)
    mac, _vtep = _fresh_remote(eng, 7)
    waiting = [udp_frame(src=B, dst=mac, sport=200 + i) for i in range(3)]
    eng.capture_start([t.a, t.b, t.up], "drop", "")
    try:
        t.send(t.b, *waiting)
        t.send(t.a, udp_frame(src=A, dst=B))  # the worker's last burst: port a's
        assert len(t.recv(t.b, n=1)) == 1
        recs = _records(eng, 3, tries=1000)  # they wait DP_HOLD_MS, 2 s
    finally:
        got, _st = eng.capture_stop()
    recs += got
    assert [(r[1], r[5], r[4]) for r in recs] == [
        (t.b, "neigh_unresolved", bytes(f)) for f in waiting
    ]


def test_frames_held_from_a_port_removed_since_are_told_of_no_port(eng):
    """Frames from port x wait for a next hop that never answers; x is
    removed meanwhile and its index given to port y. When they are dropped
    (neigh_unresolved, counted), a capture of y's drops does not show them
    as y's: they came from another port, gone."""
    from dataplane.engine import WORKER_COUNTERS
    from tests.test_core import drops_since

    def held():
        return int(eng.counters().worker[:, WORKER_COUNTERS.index("neigh_held")].sum())

    t = Topo(eng, static_nh=False)
    mac, _vtep = _fresh_remote(eng, 8)
    x = eng.add_ring_port("x", network=0)
    base, h0 = eng.counters().drops(), held()
    t.send(x, *[udp_frame(src=A, dst=mac, sport=300 + i) for i in range(3)])
    for _ in range(200):  # held by the worker
        if held() - h0 >= 3:
            break
        time.sleep(0.01)
    assert held() - h0 == 3
    eng.del_port(x)
    y = eng.add_ring_port("y", network=0)
    assert y == x, "the test needs the index given again"
    eng.capture_start([y, t.a, t.b, t.up], "drop", "")
    try:
        for _ in range(400):  # they wait DP_HOLD_MS, 2 s
            if drops_since(eng, base)["neigh_unresolved"] >= 3:
                break
            time.sleep(0.01)
        assert drops_since(eng, base)["neigh_unresolved"] == 3
        recs = _records(eng, 1, tries=20)
    finally:
        got, _st = eng.capture_stop()
    assert recs + got == []
    eng.del_port(y)


def _send_from_the_index_again(eng, t, x):
    """A new ring port given removed port x's index sends one frame (UDP
    source port 2), and port a one (source port 3); both reach b."""
    y = eng.add_ring_port("y", network=0)
    assert y == x, "the test needs the index given again"
    t.send(y, udp_frame(src=A, dst=B, sport=2))
    t.send(t.a, udp_frame(src=A, dst=B, sport=3))
    assert len(t.recv(t.b, n=2)) == 2


def test_a_port_removed_under_a_capture_leaves_it_and_its_index_uncaptured(eng):
    """A port removed while a capture takes it: what it captured before
    stays, and the next port given its index is not recorded under it."""
    t = Topo(eng)
    x = eng.add_ring_port("x", network=0)
    first = udp_frame(src=A, dst=B, sport=1)
    eng.capture_start([t.a, x], "rx", "")
    try:
        t.send(x, first)
        assert len(t.recv(t.b, n=1)) == 1
        eng.del_port(x)
        _send_from_the_index_again(eng, t, x)
        recs = _records(eng, 2)
    finally:
        got, _st = eng.capture_stop()
    recs += got
    assert [(r[1], Ether(r[4])[UDP].sport) for r in recs] == [(x, 1), (t.a, 3)]


def test_a_port_removed_before_its_capture_starts_is_not_taken(eng):
    """A port chosen for a capture but removed before the capture starts
    (a pod's failed plane, between the service's choice and the start): the
    next port given its index is not captured under it."""
    t = Topo(eng)
    x = eng.add_ring_port("x", network=0)
    eng.del_port(x)
    eng.capture_start([x, t.a], "rx", "")
    try:
        _send_from_the_index_again(eng, t, x)
        recs = _records(eng, 1)
        time.sleep(0.1)
    finally:
        got, _st = eng.capture_stop()
    recs += got
    assert [(r[1], Ether(r[4])[UDP].sport) for r in recs] == [(t.a, 3)]


def test_a_port_added_to_a_running_capture_is_taken_from_its_next_frame(eng):
    """capture_add_port: a port added after the start (the service's `any`
    capture, a pod attached meanwhile) is captured from then on; adding a
    port that is not there, or to no capture, is refused by name."""
    t = Topo(eng)
    x = eng.add_ring_port("x", network=0)
    with pytest.raises(errors.DataplaneError, match="no capture is running"):
        eng.capture_add_port(x)
    eng.capture_start([t.a], "rx", "")
    try:
        t.send(x, udp_frame(src=A, dst=B, sport=1))  # not taken yet
        assert len(t.recv(t.b, n=1)) == 1
        eng.capture_add_port(x)
        t.send(x, udp_frame(src=A, dst=B, sport=2))
        t.send(t.a, udp_frame(src=A, dst=B, sport=3))
        assert len(t.recv(t.b, n=2)) == 2
        with pytest.raises(errors.DataplaneError, match="capture: no port 200"):
            eng.capture_add_port(200)
        recs = _records(eng, 2)
    finally:
        got, _st = eng.capture_stop()
    recs += got
    assert sorted((r[1], Ether(r[4])[UDP].sport) for r in recs) == sorted([(x, 2), (t.a, 3)])
