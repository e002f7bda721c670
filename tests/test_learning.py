"""Learning from the underlay (``vtep.learning: true``) as an operator sees
it: a node service learns the MAC of a host behind the kernel's VXLAN VTEP
from its frames, keeps it while the host talks, and shows it in ``dataplane
fdb`` (``GET /v1/fdb``), ``dataplane status`` and the metrics. The fabric is
the one of test_kernel_pods.py; the core-level cases (confirmation, moves,
API-set entries) are in test_core.py.
"""

import os
import re
import subprocess
import sys
import time

import pytest
import test_kernel_pods as kp
from test_kernel_idle import metrics_text, node_with

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, DPDK EAL)"),
]

fabric = kp.fabric


def metric(text, name, labels=""):
    found = re.findall(rf"^{name}{re.escape(labels)} (\S+)$", text, re.M)
    assert len(found) == 1, f"{name}{labels}: {found}"
    return float(found[0])


def test_a_learned_host_is_kept_while_it_talks(fabric):
    """The kernel-VTEP host's MAC is learned from its frames and confirmed
    by them: the seconds since it was last heard stay low while it answers
    pings (before, a learned entry aged from the moment it was learned,
    however much it talked, and was flooded to again after the age)."""
    fab = fabric()
    node = node_with(fab, 1, [kp.HOST_VTEP], "", vtep_extra="learning: true")
    fab.kernel_host(["10.99.0.1"])
    a = fab.pod(1, "a", kp.SUBNET + "11")
    kp.reach(a["ns"], kp.VM_IP, "pod a -> kernel-VTEP host")

    def vm_entry():
        rows = node.api("GET", f"/v1/fdb?network=net1&mac={kp.VM_MAC}")
        assert len(rows) <= 1, rows
        return rows[0] if rows else None

    # learned by the control thread's housekeeping, shortly after the frame
    for _ in range(200):
        e = vm_entry()
        if e is not None:
            break
        time.sleep(0.05)
    assert e is not None and (e["type"], e["vtep"], e["origin"]) == (
        "remote",
        kp.HOST_VTEP,
        "learned",
    )
    # 4 s of pings, 0.2 s apart: heard all along, its age stays under the
    # 1 s between reports (and well under the 4 s it would otherwise reach)
    r = kp.ping(a["ns"], kp.VM_IP, count=20, interval="0.2")
    assert r.returncode == 0, r.stdout
    e = vm_entry()
    assert e["origin"] == "learned" and e["age_s"] < 3.0, e
    st = node.status()
    assert st["learning"]["aged"] == 0 and st["learning"]["entries"] >= 1, st["learning"]
    # the pod's own MAC is a local entry, never a learned one
    [own] = node.api("GET", f"/v1/fdb?mac={a['planes'][0]['mac']}")
    assert (own["type"], own["origin"], own["plane"]) == ("local", "pod", "std"), own
    # the metrics say the same as the status and the FDB view (read one
    # after the other: taken again if a frame changed the table in between)
    events = ("learned", "moved", "refused_static", "refused_limit", "aged")
    for _ in range(20):
        text, st, rows = metrics_text(node), node.status(), node.api("GET", "/v1/fdb")
        got = [metric(text, "dataplane_fdb_entries"), metric(text, "dataplane_learned_macs")]
        got += [metric(text, "dataplane_learning_events_total", f'{{event="{e}"}}') for e in events]
        want = [st["fdb_entries"], st["learning"]["entries"]] + [st["learning"][e] for e in events]
        if got == want and st["fdb_entries"] == len(rows):
            break
        time.sleep(0.1)
    assert got == want and st["fdb_entries"] == len(rows), (got, want, rows)
    assert st["learning"]["learned"] >= 1
    assert sum(r["origin"] == "learned" for r in rows) == st["learning"]["entries"]
    out = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "status", "--socket", node.sock],
        capture_output=True,
        text=True,
        cwd=kp.ROOT,
    ).stdout
    assert re.search(
        r"^  fdb \d+ entries \(\d+ learned; learned [1-9]\d* moved 0 aged 0", out, re.M
    ), out
