"""Ports of every kind added and removed at run time, tables changed while
traffic flows, and errors that name the problem and change nothing."""

import json
import os
import re
import subprocess
import sys
import time
import uuid

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw
from scapy.utils import rdpcap, wrpcap

from dataplane import errors
from tests.test_core import (
    NH_MAC,
    R1,
    R1_VTEP,
    VTEP_MAC,
    Topo,
    ip_checksum_ok,
    udp_frame,
)


def test_vdev_kinds_added_and_removed(eng, tmp_path):
    added = [
        eng.add_port("net_null_t0"),
        eng.add_port(f"net_pcap_t0,rx_pcap={tmp_path}/none.pcap,tx_pcap={tmp_path}/o.pcap")
        if (wrpcap(str(tmp_path / "none.pcap"), [Ether()]) or True)
        else None,
        eng.add_port(f"net_memif_t0,role=server,socket={tmp_path}/memif.sock,socket-abstract=no"),
    ]
    names = {p.name for p in eng.ports()}
    assert {"net_null_t0", "net_pcap_t0", "net_memif_t0"} <= names
    for p in added:
        eng.del_port(p)
    assert eng.ports() == []
    # the same device can be added again once removed
    p = eng.add_port("net_null_t0")
    eng.del_port(p)


def test_pcap_port_golden_encap(eng, tmp_path):
    frames = [udp_frame(dst=R1, sport=7000 + i, tos=0xB8 if i % 10 == 0 else 0) for i in range(50)]
    wrpcap(str(tmp_path / "in.pcap"), frames)
    t = Topo(eng)
    up_out = eng.add_port(f"net_pcap_up,tx_pcap={tmp_path}/out.pcap", role="uplink")
    eng.set_vtep("10.0.0.1/24", VTEP_MAC, up_out, next_hop_mac=NH_MAC)
    eng.add_port(f"net_pcap_in,rx_pcap={tmp_path}/in.pcap", network=0)
    for _ in range(300):
        if eng.counters().port_dict(up_out)["tx_packets"] >= 50:
            break
        time.sleep(0.01)
    eng.set_vtep("10.0.0.1/24", VTEP_MAC, t.up, next_hop_mac=NH_MAC)
    eng.del_port(up_out)  # closes and flushes the file
    out = rdpcap(str(tmp_path / "out.pcap"))
    assert len(out) == 50
    for f, o in zip(frames, out):
        assert o[IP].dst == R1_VTEP and o[VXLAN].vni == 100 and o[VXLAN].flags == 0x08
        assert bytes(o[VXLAN].payload) == bytes(f)
        assert o[IP].tos == f[IP].tos
        assert ip_checksum_ok(o)


def test_tables_and_ports_change_while_traffic_flows(eng, tmp_path):
    """A pcap port replays 16 frames forever; meanwhile the test rewrites the
    FDB (local here / local there / remote / deleted) and adds and removes
    ports. Every frame that comes out must be one that went in, whole."""
    macs = [f"02:00:00:00:0c:{i:02x}" for i in range(16)]
    frames = [
        bytes(
            Ether(src="02:00:00:00:00:0a", dst=m)
            / IP(src="10.9.0.1", dst="10.9.0.2")
            / UDP(sport=1000 + i, dport=2000)
            / Raw(bytes([i]) * 40)
        )
        for i, m in enumerate(macs)
    ]
    wrpcap(str(tmp_path / "src.pcap"), [Ether(f) for f in frames])
    t = Topo(eng)
    src = eng.add_port(f"net_pcap_src,rx_pcap={tmp_path}/src.pcap,infinite_rx=1", network=0)
    remotes = ["10.0.0.2", "10.0.0.3"]
    seen = {t.a: [], t.b: [], t.up: []}
    rx_samples = []
    updates = 0
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 2.0:
        mac = macs[i % 16]
        op = (i // 16) % 4
        if op == 0:
            eng.fdb_add_local(0, mac, t.a)
        elif op == 1:
            eng.fdb_add_local(0, mac, t.b)
        elif op == 2:
            eng.fdb_add_remote(0, mac, remotes[i % 2])
        elif eng.fdb_get(0, mac):
            eng.fdb_del(0, mac)
        updates += 1
        if i % 64 == 0:
            extra = eng.add_port(f"net_null_churn{i % 3},no-rx=1")
            eng.set_port_network(extra, 0)
            eng.fdb_add_local(0, "02:00:00:00:0e:01", extra)
            eng.del_port(extra)
            for p in seen:
                seen[p] += eng.collect(p, max_frames=512)
            rx_samples.append(eng.counters().port_dict(src)["rx_packets"])
        i += 1
    elapsed = time.monotonic() - t0
    eng.del_port(src)
    for p in seen:
        seen[p] += eng.collect(p, max_frames=4096)
    valid = set(frames)
    for p in (t.a, t.b):
        assert seen[p], f"port {p} received nothing"
        bad = [f for f in seen[p] if f not in valid]
        assert not bad, f"{len(bad)} of {len(seen[p])} frames altered, e.g. {bad[0].hex()}"
    assert seen[t.up]
    # every distinct encapsulated frame checked once: a few hundred thousand
    # frames are copies of a few dozen (parsing each took over a minute)
    for f in set(seen[t.up]):
        o = Ether(f)
        if not o.haslayer(VXLAN):
            continue
        assert (
            o[IP].dst in remotes
            or o[IP].dst == "10.0.0.4"
            or o[IP].dst == R1_VTEP
            or o[IP].dst == "10.0.0.3"
        )
        assert ip_checksum_ok(o) and o[VXLAN].vni == 100
        assert bytes(o[VXLAN].payload) in valid
    # forwarding never stopped: the source kept being read between every sample
    assert all(b > a for a, b in zip(rx_samples, rx_samples[1:])), rx_samples
    print(f"{updates} FDB updates in {elapsed:.2f}s ({updates / elapsed:.0f}/s) while forwarding")


def test_errors_name_the_problem_and_change_nothing(eng):
    t = Topo(eng)
    before = (eng.ports(), eng.networks(), eng.fdb_count())
    with pytest.raises(errors.DataplaneError, match="no_such_driver0"):
        eng.add_port("no_such_driver0,foo=1")
    with pytest.raises(errors.ConfigError, match="vni"):
        eng.add_network(7, vni=1 << 24)
    with pytest.raises(errors.AlreadyExists, match="VNI 100"):
        eng.add_network(7, vni=100)
    with pytest.raises(errors.NotFound, match="network 9"):
        eng.fdb_add_remote(9, R1, R1_VTEP)
    with pytest.raises(errors.Busy, match="local ports"):
        eng.del_network(0)
    with pytest.raises(errors.ConfigError, match="multicast"):
        eng.fdb_add_local(0, "01:00:5e:00:00:01", t.a)
    with pytest.raises(errors.ConfigError, match="own VTEP"):
        eng.set_flood(0, ["10.0.0.1"])
    with pytest.raises(errors.Busy, match="uplink"):
        eng.del_port(t.up)
    with pytest.raises(errors.ConfigError, match="not in network"):
        eng.fdb_add_local(1, "02:00:00:00:00:99", t.a)
    with pytest.raises(errors.ConfigError, match="mac"):
        eng.fdb_add_local(0, "zz:00", t.a)
    with pytest.raises(errors.ConfigError, match="role"):
        eng.add_ring_port("x", role="spine")
    assert (eng.ports(), eng.networks(), eng.fdb_count()) == before


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the core in a namespace of its own, for a tap that is not the host's
_MTU_SCRIPT = """
import json, sys
from dataplane import errors
from dataplane.engine import Engine, EngineConfig

eng = Engine(EngineConfig(mode="fallback", lcores=[0, 1], memory_mb=128, n_mbufs=8191,
                          file_prefix=sys.argv[1]))
out = {}
try:
    for key, dev in (("tap", "net_tap_mt,iface=dpmt0"), ("null", "net_null_mt")):
        try:
            p = eng.add_port(dev, role="uplink", mtu=9000)
            # (DPDK 23.11's tap takes jumbo frames: its kernel end has the MTU)
            with open("/sys/class/net/dpmt0/mtu") as f:
                out[key] = f"added, kernel MTU {int(f.read())}"
            eng.del_port(p)
        except errors.ConfigError as e:
            out[key] = str(e)
    try:
        eng.add_port("net_null_mt", mtu=-1)
    except errors.ConfigError as e:
        out["bad"] = str(e)
    try:  # a driver DPDK does not have (a misspelt name, a PMD not installed)
        eng.add_port("net_nosuchpmd0,x=1")
    except errors.DataplaneError as e:
        out["nodriver"] = str(e)
    out["ports"] = len(eng.ports())
    up = eng.add_port("net_tap_mt,iface=dpmt0", role="uplink", mtu=1504)
    with open("/sys/class/net/dpmt0/mtu") as f:
        out["tap_mtu"] = int(f.read())
    eng.del_port(up)
finally:
    eng.close()
print(json.dumps(out))
"""


def test_a_dpdk_uplink_takes_the_underlay_mtu_or_is_refused_saying_why(tmp_path):
    """A DPDK port added with an MTU (a DPDK uplink: vtep.underlay_mtu) is
    set to it, or refused, naming the device's limit, before it is a port:
    DPDK 22.11's tap takes frames of at most 1522 bytes (23.11's takes jumbo
    ones, and its kernel end gets the MTU), null chains no buffers
    for frames past an mbuf. Jumbo frames would otherwise be dropped by the
    device (dev_rx_errors), not refused at start."""
    ns = f"dpmt{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        r = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _MTU_SCRIPT, f"dpmt-{ns}"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # DPDK 22.11's tap takes frames of at most 1522 bytes; 23.11's jumbo ones
    assert out["tap"] == "added, kernel MTU 9000" or re.search(
        r"port net_tap_mt: an MTU of 9000 asked, the device takes MTUs of \d+\.\.1504 "
        r"\(frames of at most 1522 bytes\)",
        out["tap"],
    ), out
    assert (
        "port net_null_mt: an MTU of 9000 needs frames of 9026 bytes in chains of "
        "2048-byte buffers, which the device cannot receive or send"
    ) in out["null"], out
    assert out["bad"].startswith("mtu: -1 is not 0"), out
    assert out["nodriver"] == (
        "adding port 'net_nosuchpmd0,x=1': cannot probe device 'net_nosuchpmd0,x=1': no DPDK "
        "driver for net_nosuchpmd0 (a PMD not installed, or a misspelt name)"
    ), out
    assert out["ports"] == 0  # nothing of the refused ones is a port
    # an MTU past Ethernet's the device takes: set on it (the tap's kernel end)
    assert out["tap_mtu"] == 1504, out


def test_eal_cannot_start_twice(core):
    # a second Engine in the same (child) process is refused with a reason
    from multiprocessing.managers import RemoteError

    with pytest.raises(RemoteError, match="EALError: DPDK's EAL was already started"):
        core._manager.Engine(mode="fallback")
