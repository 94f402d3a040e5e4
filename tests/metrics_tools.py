"""What the metrics and status-page tests share: scraping `/metrics` (on the socket or the HTTP listener),
reading one sample out of prometheus_client's own parser, and a daemon with the HTTP listener on."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT, Api, Daemon, backend_yaml

Families = dict[str, Any]


def parse(text: str) -> Families:
    """The exposition parsed by prometheus_client's text parser: family name -> Metric."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def scrape(api: Api) -> tuple[str, Families]:
    """GET /metrics on the daemon's unix socket (as this test's user): the text and its families."""
    with api.client() as client:
        answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4"), answer.headers
    return answer.text, parse(answer.text)


def samples(families: Families, name: str, /, **labels: str) -> list[Any]:
    """The samples called `name` (a family's or one of its series', e.g. `..._total`, `..._bucket`) whose
    labels include `labels`."""
    found = []
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found.append(sample)
    return found


def value(families: Families, name: str, /, **labels: str) -> float:
    """The one sample's value; fails when there is none or more than one."""
    found = samples(families, name, **labels)
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples: {found}"
    return found[0].value


def maybe(families: Families, name: str, /, **labels: str) -> float:
    """The one sample's value, or NaN when there is none."""
    found = samples(families, name, **labels)
    assert len(found) <= 1, found
    return found[0].value if found else math.nan


def start_with_listener(start_daemon: Callable[..., Daemon], tmp_path: Path, backends: Any,
                        listen: str = "127.0.0.1:0", extra_config: str = "") -> tuple[Daemon, str]:
    """A daemon (the conftest fixture) with `http_listen: listen` in its config; (daemon, base URL of the
    listener), the port read from GetDaemonStatus."""
    config = tmp_path / "swarmd.yaml"
    config.write_text(f"http_listen: {listen!r}\n{extra_config}")
    daemon = start_daemon(backends, extra_args=("--config", str(config)))
    where = daemon.ok("GetDaemonStatus")["http_listen"]
    assert where, daemon.log()
    return daemon, f"http://{where}"


def web_get(base: str, path: str, **kwargs: Any) -> httpx.Response:
    with httpx.Client(base_url=base, timeout=30) as client:
        return client.get(path, **kwargs)


class FakeGpuDaemon(Daemon):
    """The real daemon on two fake GPUs (tests/fake_gpu_swarmd.py)."""

    module = "tests.fake_gpu_swarmd"


@contextlib.contextmanager
def fake_gpu_daemon(tmp_path: Path, backends: dict[int, dict]) -> Iterator[tuple[Daemon, str]]:
    """A FakeGpuDaemon in `tmp_path` with the HTTP listener on a free loopback port: (daemon, base URL).
    Stopped, and checked to stop cleanly, on exit."""
    config = tmp_path / "swarmd.yaml"
    config.write_text("http_listen: 127.0.0.1:0\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    daemon = FakeGpuDaemon(tmp_path, backend_yaml(backends), extra_args=("--config", str(config)), env=env)
    try:
        yield daemon, f"http://{daemon.ok('GetDaemonStatus')['http_listen']}"
        daemon.finish()
    finally:
        daemon.kill()
