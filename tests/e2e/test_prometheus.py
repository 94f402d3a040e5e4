"""A real Prometheus (Debian's `prometheus` package) scraping a real swarmd's HTTP listener: the restarts
counter of a killed backend through PromQL, every query of the Grafana dashboard, the alert rules and the
N-host scrape config of etc/prometheus."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ROOT, SLEEPER, TICKER, wait_until
from tests.metrics_tools import fake_gpu_daemon

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="Prometheus is not installed: Debian's `prometheus` package (apt-get install "
    "prometheus; .ci/run installs it) provides the server these tests scrape with")
DASHBOARD = ROOT / "etc" / "grafana" / "swarmd.json"
ALERTS = ROOT / "etc" / "prometheus" / "swarmd-alerts.yml"
#: What Grafana puts in place of the dashboard's variables ($instance: "All").
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def prometheus(tmp_path: Path, target: str) -> Iterator[str]:
    """A Prometheus scraping `target` (host:port) every second, with swarmd's alert rules; its base URL."""
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: [{json.dumps(str(ALERTS))}]\n"
        f"scrape_configs:\n  - job_name: swarmd\n    static_configs:\n      - targets: [{json.dumps(target)}]\n")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{base}/-/ready", timeout=5).status_code == 200
        return False

    try:
        wait_until(ready, timeout=60, what="prometheus ready")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def query(base: str, expr: str) -> list[dict[str, Any]]:
    """An instant PromQL query through Prometheus's HTTP API: its result vector (it must parse)."""
    answer = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=30).json()
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the Grafana dashboard, panels and variables."""
    board = json.loads(DASHBOARD.read_text())
    found = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    found += [var["definition"] for var in board["templating"]["list"] if var.get("type") == "query"]
    return found


def test_prometheus_reads_the_restarts_of_a_killed_backend_and_every_dashboard_query(tmp_path):
    crasher = 'python3 -c "import sys; print(\'no model\', file=sys.stderr); sys.exit(3)"'
    backends = {
        0: {"title": "killed", "settings": {"command": SLEEPER, "gpu_id": "0"}},
        1: {"title": "ticker", "settings": {"command": TICKER, "gpu_id": "1"}},
        2: {"title": "crasher", "settings": {"command": crasher, "restart_delay": 0.1, "start_limit_burst": 2}},
    }
    with fake_gpu_daemon(tmp_path, backends) as (daemon, base):
        target = base.removeprefix("http://")
        first = wait_until(lambda: (b := daemon.backend(0)) and b["status"] == "running" and b, what="running")
        wait_until(lambda: daemon.backend(2)["status"] == "errored", what="the crasher given up")
        with prometheus(tmp_path, target) as prom:
            before = wait_until(lambda: query(prom, 'swarmd_backend_restarts_total{id="0"}'), what="a scrape")
            assert before[0]["value"][1] == "0"
            os.kill(first["pid"], signal.SIGKILL)
            wait_until(lambda: (b := daemon.backend(0)) and b["status"] == "running" and b["pid"] != first["pid"],
                       what="the killed backend back")
            # After two scrapes that saw it restarted, PromQL has the counter (and its increase).
            # (the counter is 0 or 1 here: the sum of its samples counts the scrapes that saw 1)
            wait_until(lambda: query(prom, 'sum_over_time(swarmd_backend_restarts_total{id="0"}[1m]) >= 2'),
                       what="two scrapes after the restart")
            (series,) = query(prom, 'swarmd_backend_restarts_total{id="0"}')
            assert series["value"][1] == "1"
            assert series["metric"] | {} == {"__name__": "swarmd_backend_restarts_total", "id": "0", "title": "killed",
                                             "type": "process", "instance": target, "job": "swarmd"}
            assert float(query(prom, 'increase(swarmd_backend_restarts_total{id="0"}[1m])')[0]["value"][1]) > 0
            daemon.ok("ListBackends")  # API requests for the dashboard's API panel
            wait_until(lambda: query(prom, 'count_over_time(swarmd_api_requests_total{route="ListBackends"}[1m]) >= 2'),
                       what="two scrapes of the API counter")
            empty = []
            for expr in dashboard_queries():
                if expr.startswith("label_values("):  # Grafana's variable query: the label's values
                    metric, label = (part.strip() for part in expr[len("label_values("):-1].split(","))
                    answer = httpx.get(f"{prom}/api/v1/label/{label}/values", params={"match[]": metric}).json()
                    assert answer["status"] == "success" and answer["data"] == [target], (expr, answer)
                    continue
                for name, replacement in GRAFANA_VARIABLES.items():
                    expr = expr.replace(name, replacement)
                if not query(prom, expr):
                    empty.append(expr)
            assert not empty, f"dashboard queries without data: {empty}"
            rules = httpx.get(f"{prom}/api/v1/rules").json()["data"]["groups"][0]["rules"]
            assert {rule["name"] for rule in rules} >= {"SwarmdDown", "SwarmdBackendErrored"}
            assert all(rule["health"] == "ok" for rule in rules), rules
            wait_until(lambda: any(a["labels"].get("alertname") == "SwarmdBackendErrored" and a["labels"]["id"] == "2"
                                   for a in httpx.get(f"{prom}/api/v1/alerts").json()["data"]["alerts"]),
                       what="the errored backend's alert pending")


def test_dashboard_queries_use_only_swarmd_metrics():
    """Every metric name in the dashboard is one swarmd exports (its own, or its process collector's)."""
    import re

    from swarmd import metrics

    exported_source = Path(metrics.__file__).read_text()
    names = set()
    for expr in dashboard_queries():
        names |= set(re.findall(r"\b((?:swarmd|process)_[a-z_]+)", expr))
    assert names
    for name in names:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert f'"{base}"' in exported_source or name.startswith("process_"), name


@pytest.mark.skipif(PROMTOOL is None, reason="promtool comes with Debian's prometheus package")
def test_the_scrape_config_for_many_hosts_and_the_alerts_are_valid():
    for command in (["check", "config", "swarmd.yml"], ["check", "rules", "swarmd-alerts.yml"]):
        done = subprocess.run([PROMTOOL, *command], cwd=ROOT / "etc" / "prometheus", capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
