"""``dataplane top`` against a real node service (fallback mode, pods as
network namespaces, a host behind the kernel's own VXLAN VTEP): the rates
it prints are the core's counters over the interval - a known number of
pings shows as that many frames on the pod's port, the uplink and the
network - an idle pod's port shows none, and the text report has every
table; a restart of the service within top's interval shows no rate and
says why. Then what it does with counters that went down between two reads
(a port's index given to another, a row half reset), a restart, and a small
rate."""

import json
import os
import subprocess
import sys
import time

import pytest
from nodeparts import sh, underlay_node
from test_service import HOST_IP, IT_SPEC, NETWORKS, ROOT, kernel_vtep, wait_ping

from dataplane.top import rates, render

PINGS = 100


def top(n, *args):
    r = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "top", "--socket", n.sock, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def top_started(n, *args):
    """``dataplane top`` running, returned once it has made its first read
    (asleep for its interval: however long its start took on a busy VM)."""
    p = subprocess.Popen(
        [sys.executable, "-m", "dataplane.cli", "top", "--socket", n.sock, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    end = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < end:
        with open(f"/proc/{p.pid}/wchan") as f:
            if "nanosleep" in f.read():
                return p
        time.sleep(0.02)
    p.kill()
    out, err = p.communicate()
    raise AssertionError(f"top made no first read: {out}{err}")


def top_ended(p):
    """The stdout of ``top_started``'s process, once it has ended well."""
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    return out


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_top_shows_the_frames_of_the_interval(tmp_path):
    with underlay_node(tmp_path, NETWORKS, ["net1"]) as (n, ul):
        kernel_vtep(ul)
        a = n.pod("a", IT_SPEC)
        b = n.pod("b", IT_SPEC)
        n.pods_ns = {"a": a["ns"], "b": b["ns"]}
        # counted frames only: no IPv6 chatter of new interfaces (router
        # solicitations, MLD reports) flooded meanwhile
        for ns in (a["ns"], b["ns"]):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        wait_ping(a["ns"], HOST_IP)  # the host's MAC and the next hop known
        port_a = next(p["port"] for p in a["planes"])
        port_b = next(p["port"] for p in b["planes"])

        def pings(count):
            r = subprocess.run(
                ["ip", "netns", "exec", a["ns"], "ping", "-q", "-c", str(count), "-i", "0.01",
                 HOST_IP],
                capture_output=True,
                text=True,
            )  # fmt: skip
            assert f"{count} received" in r.stdout, r.stdout

        # the rates of two reads of the status around PINGS pings, as top
        # makes them: that many frames each way, no more
        t0, before = time.monotonic(), n.api("GET", "/v1/status")
        pings(PINGS)
        t1, after = time.monotonic(), n.api("GET", "/v1/status")
        r = rates(before, after, t1 - t0)
        # over the service's own times of the two reads, not the client's
        assert r["interval_s"] == round(after["counters_at"] - before["counters_at"], 3)

        def frames(rate):  # over the service's own interval between the reads
            return round(rate * (after["counters_at"] - before["counters_at"]))

        ports = {p["port"]: p for p in r["ports"]}
        up = next(p for p in r["ports"] if p["role"] == "uplink")
        # the pings (and perhaps a neighbour solicitation or two) in, the
        # replies out; through the uplink both ways
        assert PINGS <= frames(ports[port_a]["rx_pps"]) <= PINGS + 10, ports[port_a]
        assert PINGS <= frames(ports[port_a]["tx_pps"]) <= PINGS + 10, ports[port_a]
        assert PINGS <= frames(up["tx_pps"]) <= PINGS + 10, up
        assert PINGS <= frames(up["rx_pps"]) <= PINGS + 10, up
        assert frames(ports[port_a]["rx_bps"]) >= PINGS * 98 * 8, ports[port_a]  # echo frames
        # the host's MAC is in no table here (no cluster store, no learning):
        # each request is flooded, to the remote VTEP and to pod b, which
        # sends nothing itself
        assert frames(ports[port_b]["rx_pps"]) < 10, ports[port_b]
        assert PINGS <= frames(ports[port_b]["tx_pps"]) <= PINGS + 10, ports[port_b]
        net1 = next(x for x in r["networks"] if x["name"] == "net1")
        assert PINGS <= frames(net1["flood_pps"]) <= PINGS + 10, net1
        assert PINGS <= frames(net1["encap_pps"]) <= PINGS + 10, net1
        assert PINGS <= frames(net1["decap_pps"]) <= PINGS + 10, net1
        std = next(p for p in r["planes"] if p["name"] == "std")
        assert frames(std["frames_ps"]) >= 2 * PINGS, std  # timed both ways
        assert std["avg_us"] > 0 and (std["p99_us"] or std["p99_beyond"]), std
        assert r["workers"] and 0 < r["workers"][0]["busy"] <= 1, r["workers"]

        # the command: one report over a window the pings fall in (some of
        # them at least: its first read is made when its process is up)
        t = top_started(n, "-n", "1", "-d", "6", "--json")
        pings(PINGS)
        (line,) = top_ended(t).splitlines()
        r = json.loads(line)
        assert r["interval_s"] >= 5.9 and r["node"] == after["node"], r
        ports = {p["port"]: p for p in r["ports"]}
        assert ports[port_a]["rx_pps"] > 2 * ports[port_b]["rx_pps"], ports
        assert r["ports"][-1]["port"] not in (port_a, up["port"]), r["ports"]  # busiest first

        # the text report: every table, the busiest port first
        text = top(n, "-n", "2", "-d", "0.3")
        for head in ("RX pps", "ENCAP pps", "FRAMES/s", "drops/s:"):
            assert text.count(head) == 2, text
        assert "rates over 0.3 s" in text and "worker 0 busy" in text, text
        assert top(n, "-n", "1", "-d", "0.2", "--lines", "1").count("quieter ports not shown") == 1

        # the service restarted within top's interval: whatever its new
        # counters, no rate for that interval, and the report says why
        t = top_started(n, "-n", "1", "-d", "15")
        n.stop()
        n.start()
        while n.api("GET", "/v1/status")["started_at"] is None:  # its API opens first
            time.sleep(0.05)
        # top's second read is still to come: the restart fell in its interval
        assert t.poll() is None, "top's interval ended before the restart did"
        restarted = n.api("GET", "/v1/status")  # a read of the restarted service
        pings(PINGS)
        text = top_ended(t)
        assert "the service restarted in the interval: no rates for it (shown as -)" in text
        assert "drops/s: -" in text, text
        # what says it: the service's start time, the same in the two reads
        # of one run, another in a read after the restart
        assert before["started_at"] == after["started_at"] and not r["restarted"]
        assert restarted["started_at"] > after["started_at"], (after, restarted)
        gap = rates(after, restarted, restarted["counters_at"] - after["counters_at"])
        assert gap["restarted"] is True, gap


def test_a_counter_that_went_down_has_no_rate():
    """A port whose index another port took between the reads (its counters
    start again), a new network, a worker counter that went back: no rate,
    never a negative one."""
    port = {"port": 3, "name": "pa", "pod": "a", "plane": "std", "role": "pod",
            "network": "net1", "rx_packets": 1000, "tx_packets": 10, "rx_bytes": 64000,
            "tx_bytes": 640, "guard_drops": 0}  # fmt: skip
    prev = {
        "node": "n1",
        "ports": [port],
        "networks": [],
        "planes": [{"name": "std", "frames": 50}],
        "drops": {"tx_full": 7},
        "workers": [{"worker": 0, "polls": 1000, "busy_polls": 100}],
    }
    cur = {
        "node": "n1",
        "ports": [
            port | {"rx_packets": 1200, "rx_bytes": 76800},  # the same port: 100/s
            {**port, "port": 4, "name": "pb"},  # a new one: no rate yet
        ],
        "networks": [
            {
                "name": "net2",
                "vni": 102,
                "plane": "std",
                "encap_packets": 5,
                "decap_packets": 0,
                "flood_packets": 0,
                "local_packets": 0,
            }
        ],  # fmt: skip
        "planes": [{"name": "std", "frames": 40}],  # went down: reset
        "drops": {"tx_full": 9, "storm": 4},
        "workers": [{"worker": 0, "polls": 3000, "busy_polls": 600}],
    }
    r = rates(prev, cur, 2.0)
    assert [(p["port"], p["rx_pps"], p["rx_bps"]) for p in r["ports"]] == [
        (3, 100.0, 100.0 * 64 * 8),
        (4, None, None),
    ]
    assert r["networks"][0]["encap_pps"] is None
    assert r["planes"] == [
        {"name": "std", "frames_ps": None, "avg_us": None, "p99_us": None, "p99_beyond": False}
    ]
    assert r["drops"] == {"storm": 2.0, "tx_full": 1.0}
    assert r["workers"] == [{"worker": 0, "busy": 0.25, "stalled": False, "polls_ps": 1000.0}]
    # a worker that did not poll at all in the interval is said to be stalled
    stuck = {**cur, "workers": prev["workers"]}
    assert rates(prev, stuck, 2.0)["workers"][0] == {
        "worker": 0, "busy": None, "stalled": True, "polls_ps": 0.0
    }  # fmt: skip
    # the service's own times of the reads, where both reports have them
    timed = rates({**prev, "counters_at": 100.0}, {**cur, "counters_at": 104.0}, 2.0)
    assert timed["interval_s"] == 4.0 and timed["ports"][0]["rx_pps"] == 50.0
    # the same port name under its old index, its counters restarted
    again = {**cur, "ports": [port | {"rx_packets": 5, "rx_bytes": 320}]}
    assert rates(prev, again, 1.0)["ports"][0]["rx_pps"] is None
    with pytest.raises(ValueError):
        rates(prev, cur, 0)


def test_a_planes_latency_over_the_interval():
    """The mean and 99th percentile of the frames timed in the interval
    only, from the histogram's growth (bounds 10, 20, 50 us and beyond)."""
    bounds = [10.0, 20.0, 50.0]

    def st(buckets, total_us):
        plane = {"name": "media", "frames": sum(buckets), "latency_buckets": buckets,
                 "latency_sum_us": total_us}  # fmt: skip
        return {"ports": [], "planes": [plane], "latency_bounds_us": bounds}

    # before: 1000 frames, most slow; in the interval 100 more, 99 under 10 us
    # and one under 20: p99 <= 10 us, mean 5.5 us, whatever came before
    r = rates(st([10, 0, 0, 990], 990_000.0), st([109, 1, 0, 990], 990_550.0), 1.0)
    (p,) = r["planes"]
    assert (p["frames_ps"], p["avg_us"], p["p99_us"], p["p99_beyond"]) == (100, 5.5, 10.0, False)
    # frames beyond the last bound in the interval: said so, no number made up
    r = rates(st([0, 0, 0, 0], 0.0), st([0, 0, 0, 10], 900.0), 1.0)
    (p,) = r["planes"]
    assert (p["p99_us"], p["p99_beyond"], p["avg_us"]) == (None, True, 90.0)
    assert r["latency_last_bound_us"] == 50.0
    # none timed in the interval
    (p,) = rates(st([1, 0, 0, 0], 3.0), st([1, 0, 0, 0], 3.0), 1.0)["planes"]
    assert (p["avg_us"], p["p99_us"]) == (None, None)


def test_a_running_capture_is_said_with_the_rates():
    """While a capture runs the express lane is paused and every frame
    crosses the core: the rates say so, naming the capture."""
    base = {"node": "n1", "ports": [], "networks": [], "planes": [], "drops": {}, "workers": []}
    cap = {"id": "0123456789abcdef", "target": "any", "direction": "drop", "filter": ""}
    r = rates(base, {**base, "capture": cap}, 1.0)
    text = render(r, lambda header, rows: [])
    assert (
        "  capture 0123456789abcdef running (drop on any): the express lane is paused, "
        "every frame crosses the core"
    ) in text
    assert not any("capture" in line for line in render(rates(base, base, 1.0), lambda h, r: []))


def _status(started_at, uptime_s, rx, tx, encap, decap, frames, dropped, drops, polls):
    """A status report of one pod port, one network and one shaped plane."""
    return {
        "node": "n1",
        "started_at": started_at,
        "uptime_s": uptime_s,
        "ports": [
            {"port": 3, "name": "pa", "pod": "a", "plane": "std", "role": "pod",
             "network": "net1", "rx_packets": rx, "tx_packets": tx, "rx_bytes": 64 * rx,
             "tx_bytes": 64 * tx, "guard_drops": 0}
        ],
        "networks": [
            {"name": "net1", "vni": 101, "plane": "std", "encap_packets": encap,
             "decap_packets": decap, "flood_packets": 0, "local_packets": 0}
        ],
        "planes": [
            {"name": "std", "frames": frames, "sent": frames, "dropped": dropped,
             "latency_buckets": [frames, 0], "latency_sum_us": 2.0 * frames}
        ],
        "latency_bounds_us": [10.0],
        "drops": drops,
        "workers": [{"worker": 0, "polls": polls, "busy_polls": polls // 2}],
    }  # fmt: skip


def _no_rate_at_all(r):
    for row in r["ports"] + r["networks"] + r["planes"]:
        assert all(v is None for k, v in row.items() if k.endswith(("_pps", "_ps", "_bps"))), row
    for p in r["planes"]:
        assert (p["avg_us"], p["p99_us"], p["p99_beyond"]) == (None, None, False), p
    assert r["drops"] is None
    assert r["workers"] == [{"worker": 0, "busy": None, "stalled": False, "polls_ps": None}]


def test_a_restart_in_the_interval_has_no_rate():
    """The service restarted between the two reads and its new process
    counted more than the old one had: every counter is higher, yet none
    has a rate for that interval, and the report says why."""
    prev = _status(1000.0, 50.0, 100, 100, 10, 10, 100, 1, {"tx_full": 1}, 1000)
    same = _status(1000.0, 52.0, 300, 300, 30, 30, 300, 3, {"tx_full": 3}, 3000)
    r = rates(prev, same, 2.0)  # the same process: rates as ever
    assert (r["ports"][0]["rx_pps"], r["networks"][0]["decap_pps"]) == (100.0, 10.0)
    assert (r["planes"][0]["frames_ps"], r["drops"]) == (100.0, {"tx_full": 1.0})
    assert "restarted" not in "\n".join(render(r, lambda h, rows: []))

    # another process: it started 1.5 s before the second read, and counted
    # more in that time than the old one had in 50 s
    new = _status(1058.5, 1.5, 500, 400, 50, 40, 500, 4, {"tx_full": 5}, 5000)
    r = rates(prev, new, 2.0)
    _no_rate_at_all(r)
    assert r["restarted"] is True
    text = render(r, lambda h, rows: [])
    assert "  the service restarted in the interval: no rates for it (shown as -)" in text
    assert "  drops/s: -" in text and "  drops/s: none" not in text
    json.dumps(r)  # --json: the field with the rest
    assert rates(prev, same, 2.0)["restarted"] is False

    # a service that does not give its start time: its uptime, shorter than
    # the interval (or gone down), says it restarted
    old = {k: v for k, v in prev.items() if k != "started_at"}
    assert (
        rates(old, {k: v for k, v in same.items() if k != "started_at"}, 2.0)["restarted"] is False
    )
    _no_rate_at_all(rates(old, {k: v for k, v in new.items() if k != "started_at"}, 2.0))
    young = {**old, "uptime_s": 0.2}  # the first read just after a start
    later = {k: v for k, v in new.items() if k != "started_at"} | {"uptime_s": 3.0}
    assert rates(young, later, 5.0)["restarted"] is True  # grew 2.8 s in 5 s
    assert rates(young, later | {"uptime_s": 5.2}, 5.0)["restarted"] is False
    # one report with a start time, the other without: another program answered
    assert rates(old, same, 2.0)["restarted"] is True


def test_a_row_half_reset_has_no_rate():
    """A pod deleted and added again within the interval under the same port
    index and name: its rx grew past the old count while its tx went down.
    The row is not the same one wholly: none of its rates, not half of
    them; so for a network or plane row one counter of which went down."""
    prev = _status(1000.0, 50.0, 100, 100, 10, 10, 100, 5, {}, 1000)
    cur = _status(1000.0, 52.0, 150, 20, 30, 2, 300, 1, {}, 3000)
    r = rates(prev, cur, 2.0)
    (p,) = r["ports"]
    assert (p["rx_pps"], p["tx_pps"], p["rx_bps"], p["tx_bps"], p["guard_drops_ps"]) == (
        None, None, None, None, None
    )  # fmt: skip
    (n,) = r["networks"]
    assert (n["encap_pps"], n["decap_pps"], n["flood_pps"], n["local_pps"]) == (None,) * 4
    (pl,) = r["planes"]  # frames and sent grew, dropped went down
    assert (pl["frames_ps"], pl["sent_pps"], pl["dropped_ps"], pl["avg_us"]) == (None,) * 4
    # the workers are no row of the pod's: their rates stand
    assert r["workers"][0]["polls_ps"] == 1000.0
    # every counter up: the rates of each
    ok = rates(prev, _status(1000.0, 52.0, 150, 120, 30, 12, 300, 7, {}, 3000), 2.0)
    assert (ok["ports"][0]["rx_pps"], ok["ports"][0]["tx_pps"]) == (25.0, 10.0)
    assert (ok["networks"][0]["encap_pps"], ok["networks"][0]["decap_pps"]) == (10.0, 1.0)
    assert (ok["planes"][0]["frames_ps"], ok["planes"][0]["dropped_ps"]) == (100.0, 1.0)
    assert ok["planes"][0]["avg_us"] == 2.0
    assert not r["restarted"] and not ok["restarted"]  # no restart: rows one by one


def test_a_small_rate_is_not_shown_as_zero():
    """A rate under 0.1/s (a frame now and then over a long interval) shows
    with 2 significant digits, not as 0.0; none is 0, no rate -."""
    from dataplane.top import _num

    assert [_num(v) for v in (0.012, 0.04, 0.00028, 0.0, 0, None)] == [
        "0.012", "0.040", "0.00028", "0", "0", "-"
    ]  # fmt: skip
    assert [_num(v) for v in (0.5, 3.25, 12.4, 950, 12_300, 4_560_000)] == [
        "0.5", "3.2", "12", "950", "12.3k", "4.56M"
    ]  # fmt: skip
