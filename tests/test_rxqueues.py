"""A plane with rx queues of its own: on a multi-queue uplink, the queue the
device steers the plane's traffic into is polled by the plane's worker, not
by the shared one.

The uplink is a net_ring port with two rx queues; the test is the device's
flow steering (as a NIC's flow rule on the outer DSCP would be): frames
marked EF go into queue 1, the rest into queue 0. The engine runs two
workers (the second shares CPU 0 with the control thread: these tests are
about which worker polls what, not about speed)."""

import uuid

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from tests.conftest import ROOT

STD, MEDIA = 0, 3
VTEP_IP, PEER_IP, NH_MAC = "10.77.0.1", "10.77.0.2", "02:00:0a:4d:00:fe"
POD = {STD: "02:00:00:77:00:01", MEDIA: "02:00:00:77:03:01"}
REMOTE = {STD: "02:00:00:77:00:02", MEDIA: "02:00:00:77:03:02"}


@pytest.fixture(scope="module")
def rig():
    if not ROOT:
        pytest.skip("needs root (DPDK EAL)")
    from tests.enginehost import start_host

    host = start_host()
    eng = host.Engine(
        mode="fallback",
        lcores=[0, 1, 2],
        cpus=[0, 1, 0],
        memory_mb=256,
        n_mbufs=8191,
        file_prefix=f"dprxq-{uuid.uuid4().hex[:8]}",
    )
    try:
        up = eng.add_ring_port("rxqup", role="uplink", rx_queues=2)
        mac = eng.port_info(up).mac
        eng.set_vtep(f"{VTEP_IP}/24", mac, up, next_hop_mac=NH_MAC)
        eng.set_plane(STD, priority=0)
        eng.set_plane(MEDIA, priority=3, dscp=46, worker=1, rx_queue=1)
        pods = {}
        for i, plane in enumerate((STD, MEDIA)):
            eng.add_network(i, vni=7700 + plane, plane=plane)
            pods[plane] = eng.add_ring_port(f"rxq{plane}", network=i)
            eng.fdb_add_local(i, POD[plane], pods[plane])
            eng.fdb_add_remote(i, REMOTE[plane], PEER_IP)
        eng.start()
        yield eng, up, pods, mac
    finally:
        try:
            eng.close()
        finally:
            host.shutdown()


def vxlan_to(mac, plane, n):
    """n VXLAN frames from the peer for the plane's pod, outer DSCP as the
    sending node marks it (EF for media)."""
    tos = 46 << 2 if plane == MEDIA else 0
    inner = Ether(src=REMOTE[plane], dst=POD[plane]) / IP() / UDP(sport=5000 + plane)
    f = (
        Ether(src=NH_MAC, dst=mac)
        / IP(src=PEER_IP, dst=VTEP_IP, tos=tos, flags="DF")
        / UDP(sport=50000, dport=4789, chksum=0)
        / VXLAN(vni=7700 + plane)
        / inner
        / Raw(b"m" * 40)
    )
    return [f] * n


def send(eng, up, frames):
    """The device's steering: outer DSCP EF to rx queue 1, the rest to 0."""
    for f in frames:
        q = 1 if f[IP].tos >> 2 == 46 else 0
        assert eng.inject(up, [bytes(f)], queue=q) == 1


def test_plane_rx_queue_polled_by_its_worker(rig):
    eng, up, pods, mac = rig
    assert eng.port_info(up).rx_workers == [0, 1]
    before = eng.port_by_worker(up)
    send(eng, up, vxlan_to(mac, MEDIA, 30) + vxlan_to(mac, STD, 20))
    assert len(eng.collect(pods[MEDIA], wait=5, expect=30)) == 30
    assert len(eng.collect(pods[STD], wait=5, expect=20)) == 20
    rx = (eng.port_by_worker(up) - before)[:, 0]  # rx_packets per worker
    # the media plane's worker took exactly the media frames from queue 1;
    # the shared worker the std ones from queue 0
    assert rx[1] == 30, rx
    assert rx[0] == 20, rx


def test_plane_rx_queue_moves_back_without_loss(rig):
    eng, up, pods, mac = rig
    eng.set_plane(MEDIA, priority=3, dscp=46)  # no worker, no queue of its own
    try:
        assert eng.port_info(up).rx_workers == [0, 0]
        before = eng.port_by_worker(up)
        send(eng, up, vxlan_to(mac, MEDIA, 25))
        assert len(eng.collect(pods[MEDIA], wait=5, expect=25)) == 25  # queue 1 still polled
        rx = (eng.port_by_worker(up) - before)[:, 0]
        assert rx[0] == 25 and rx[1] == 0, rx
    finally:
        eng.set_plane(MEDIA, priority=3, dscp=46, worker=1, rx_queue=1)
    assert eng.port_info(up).rx_workers == [0, 1]


def test_rx_queue_settings_refused(rig, tmp_path):
    from scapy.utils import wrpcap

    from dataplane.errors import DataplaneError

    eng = rig[0]
    with pytest.raises(DataplaneError, match="needs a worker of its own"):
        eng.set_plane(5, priority=5, rx_queue=2)
    with pytest.raises(DataplaneError, match="already plane 3's"):
        eng.set_plane(5, priority=5, worker=1, rx_queue=1)
    with pytest.raises(DataplaneError, match="out of range"):
        eng.set_plane(5, priority=5, worker=1, rx_queue=0)
    with pytest.raises(DataplaneError, match="rx_queues"):
        eng.add_port("net_null_rxq0", role="pod", rx_queues=0)
    # a pcap port has as many rx queues as rx files: the device says no, and
    # nothing is left behind
    wrpcap(str(tmp_path / "in.pcap"), [Ether()])
    n = len(eng.ports())
    with pytest.raises(DataplaneError, match="at most 1"):
        eng.add_port(
            f"net_pcap_rxq1,rx_pcap={tmp_path}/in.pcap,tx_pcap={tmp_path}/out.pcap",
            role="pod",
            rx_queues=2,
        )
    assert len(eng.ports()) == n
    with pytest.raises(DataplaneError, match="has no rx queue 2"):
        eng.inject(rig[1], [b"x" * 60], queue=2)
