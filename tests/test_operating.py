"""What an operator deploys next to the service: the Prometheus alerting
rules (checked and unit-tested with promtool) and the Grafana dashboard,
whose every query is run against a real Prometheus scraping a real node
service with pods on three planes and a shaped uplink."""

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml
from nodeparts import MEDIA_NETWORK, start_prometheus, underlay_node
from test_service import NETWORKS, ip_of, ping

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = os.path.join(ROOT, "deploy", "prometheus", "dataplane-alerts.yml")
RULE_TESTS = os.path.join(ROOT, "tests", "alerts", "dataplane-alerts.test.yml")
with open(RULES) as _f:
    N_RULES = sum(len(g["rules"]) for g in yaml.safe_load(_f)["groups"])
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "dataplane.json")


def promtool(*args):
    return subprocess.run(["promtool", *args], capture_output=True, text=True)


def test_alert_rules_are_valid():
    r = promtool("check", "rules", RULES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {N_RULES} rules found" in r.stdout


def test_alert_rules_fire_on_their_series_and_only_there():
    r = promtool("test", "rules", RULE_TESTS)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_drop_reason_has_its_row_in_the_operators_guide():
    """What the DataplaneDropsRising alert sends its reader to: a row for
    each reason the core counts (a reason added to csrc/dp_counters.h
    without one fails here), and no row for a reason it does not count."""
    import re

    from dataplane.engine import DROP_REASONS

    text = open(os.path.join(ROOT, "docs", "operating.md")).read()
    section = text.split("### Drop reasons", 1)[1].split("\n## ", 1)[0]
    rows = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            rows |= set(re.findall(r"`([a-z0-9_]+)`", line.split("|")[1]))
    assert rows == set(DROP_REASONS), (
        f"without a row: {sorted(set(DROP_REASONS) - rows)}; "
        f"rows for no reason: {sorted(rows - set(DROP_REASONS))}"
    )


def dashboard_queries():
    dash = json.load(open(DASHBOARD))
    out = []
    for panel in dash["panels"]:
        for t in panel["targets"]:
            # what Grafana substitutes: all nodes, the scrape job, a rate window
            expr = (
                t["expr"]
                .replace("$__rate_interval", "10s")
                .replace("$instance", ".*")
                .replace("$job", "dataplane")
            )
            out.append((panel["title"], expr))
    return out


def test_dashboard_is_well_formed():
    dash = json.load(open(DASHBOARD))
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for what in ("plane", "latency", "queue depth", "drops by reason", "busy", "pods"):
        assert what in titles, what
    assert all(p["targets"] for p in dash["panels"])


def query(prom_port, expr):
    url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.load(urllib.request.urlopen(url, timeout=5))
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture
def shaped_node(tmp_path):
    """A node with pods on std, control and media and a shaped uplink whose
    peer sits in an underlay namespace, so every plane has queues."""
    nets = NETWORKS + MEDIA_NETWORK
    planes = "planes:\n  std: {max_rate: 80M}\n  control: {}\n  media: {min_rate: 10M}"
    with underlay_node(
        tmp_path, nets, ["net1", "net2", "net3"], uplink_rate="100M", extra=planes
    ) as (n, _):
        yield n


def test_every_dashboard_query_and_rule_works_on_a_real_service(shaped_node, tmp_path):
    node = shaped_node
    spec = {
        "pod_type": "ct",
        "network_plane": ["std", "control", "media"],
        "networks": {"std": "net1", "control": "net2", "media": "net3"},
    }
    a = node.pod("a", spec)
    b = node.pod("b", spec)
    prom, prom_port = start_prometheus(tmp_path, node.metrics_port, rules=RULES)
    try:
        # traffic on every plane once Prometheus has its first sample
        for _ in range(150):
            try:
                if query(prom_port, 'up{job="dataplane"}'):
                    break
            except OSError:
                pass
            time.sleep(0.2)
        for plane in ("std", "control", "media"):
            r = ping(a["ns"], ip_of(b, plane), count=10, interval="0.1")
            assert r.returncode == 0, r.stdout + r.stderr
        # dataplane status names each plane: its frames, latency and queue
        out = node.cli("status").stdout
        assert f"uplink {node.uplink} (shaped to 100Mbit/s)" in out.splitlines()[0], out
        st = node.api("GET", "/v1/status")
        assert st["uplink_rate_bps"] == 100_000_000
        rates = {pl["name"]: (pl["min_rate_bps"], pl["max_rate_bps"]) for pl in st["planes"]}
        assert rates["std"] == (None, 80_000_000) and rates["media"] == (10_000_000, None), rates
        std_line = next(x for x in out.splitlines() if x.startswith("  plane std "))
        assert std_line.endswith(" rate max 80Mbit/s"), std_line
        for plane in ("std", "control", "media"):
            (ln,) = [x for x in out.splitlines() if x.startswith(f"  plane {plane} ")]
            assert "latency p50 " in ln and " queue enqueued " in ln and "queue_depth" in ln, out
        missing = dashboard_queries()
        for _ in range(150):  # until each query has data (two scrapes for rate())
            try:
                missing = [(t, e) for t, e in missing if not query(prom_port, e)]
            except OSError:
                pass
            if not missing:
                break
            time.sleep(0.2)
        assert not missing, f"dashboard queries without data: {missing}"

        # the frames-per-plane panel sees the pings on each plane
        frames = dashboard_queries()[0][1].replace("[10s]", "[1m]")
        for _ in range(100):  # until a scrape after the last pings is in
            planes = {r["metric"]["plane"]: float(r["value"][1]) for r in query(prom_port, frames)}
            if all(planes.get(p, 0) > 0 for p in ("std", "control", "media")):
                break
            time.sleep(0.2)
        assert all(planes.get(p, 0) > 0 for p in ("std", "control", "media")), planes

        # the rules loaded, evaluate without error, and none fires on a healthy node
        url = f"http://127.0.0.1:{prom_port}/api/v1/rules"
        for _ in range(100):
            groups = json.load(urllib.request.urlopen(url, timeout=5))["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules):
                break
            time.sleep(0.2)
        assert len(rules) == N_RULES
        assert all(r["health"] == "ok" for r in rules), rules
        assert not [r for r in rules if r["state"] == "firing"], rules
    finally:
        prom.terminate()
        prom.wait(30)
