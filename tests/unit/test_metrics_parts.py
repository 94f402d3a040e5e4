"""The metrics' parts on their own: the counters of supervise/stats.py fed by a real Lifecycle, the
collector over an in-process Fleet on a fake GPU inventory (gpu.py's test boundary), the labels, and the
`http_listen` key of the daemon config."""

from __future__ import annotations

import sys

import pytest

from swarmd import config, gpu
from swarmd.api.routes import ROUTES
from swarmd.backends_file import Problem
from swarmd.gpu import GPU, ProcessUse, StaticInventory
from swarmd.metrics import Metrics, result_label, route_label, take_snapshot
from swarmd.supervise.lifecycle import Exited, Lifecycle, LifecycleConfig, Ready, Spawned, StartRequested
from swarmd.supervise.process import ExitInfo
from swarmd.supervise.stats import READY_BUCKETS, BackendStats, Histogram
from tests.helpers import running
from tests.metrics_tools import parse, samples, value

A = "GPU-aaaa0000-0000-4000-8000-000000000000"
B = "GPU-bbbb1111-1111-4000-8000-111111111111"


def feed(machine: Lifecycle, stats: BackendStats, event, now: float) -> None:
    before = machine.state
    machine.handle(event, now)
    stats.observe(event, before, machine, now)


def test_ready_time_histogram_and_last_exit_follow_the_lifecycle():
    machine, stats = Lifecycle(config=LifecycleConfig(restart_delay=0)), BackendStats()
    feed(machine, stats, StartRequested(), 100.0)
    feed(machine, stats, Spawned(41, 8000), 100.5)
    assert stats.ready_since is None and stats.start_to_ready.count == 0
    feed(machine, stats, Ready(41), 103.0)  # 2.5 s from spawn to ready
    assert machine.status == "running" and stats.ready_since is not None
    assert stats.start_to_ready.count == 1 and stats.start_to_ready.total == 2.5
    cumulative = dict(stats.start_to_ready.cumulative())
    assert cumulative["1.0"] == 0 and cumulative["2.5"] == 1 and cumulative["+Inf"] == 1
    feed(machine, stats, Exited(41, ExitInfo(None, 9), "RuntimeError: CUDA out of memory"), 200.0)
    assert stats.ready_since is None
    assert stats.exit_cause == "RuntimeError: CUDA out of memory" and stats.exit_time is not None
    # restart_delay 0: spawned again at once; an exit before ready observes nothing
    feed(machine, stats, Spawned(42, 8000), 200.1)
    feed(machine, stats, Exited(42, ExitInfo(1), ""), 201.0)
    feed(machine, stats, Ready(42), 202.0)  # a stale Ready: ignored by the machine, and here
    assert stats.start_to_ready.count == 1
    # an exit of another pid is not this backend's news
    feed(machine, stats, Exited(7, ExitInfo(3), "not mine"), 203.0)
    assert stats.exit_cause == ""


def test_histogram_buckets_are_cumulative_and_end_with_inf():
    histogram = Histogram()
    for seconds in (0.05, 0.3, 0.3, 700.0):
        histogram.observe(seconds)
    pairs = histogram.cumulative()
    assert [bound for bound, _ in pairs] == [repr(float(b)) for b in READY_BUCKETS] + ["+Inf"]
    assert pairs[0] == ("0.1", 1) and dict(pairs)["0.5"] == 3 and pairs[-1] == ("+Inf", 4)
    assert histogram.count == 4 and histogram.total == pytest.approx(700.65)


def test_labels_are_bounded():
    assert route_label("/API/listbackends", ROUTES) == "ListBackends"
    assert route_label("/API/NoSuchRoute", ROUTES) == "unknown"
    assert route_label("/API/ListBackends/x", ROUTES) == "unknown"
    assert route_label("/anything/else", ROUTES) == "unknown"
    assert result_label("ok", 200) == "ok" and result_label("error", 200) == "error"
    assert result_label("bad_route", 400) == "bad_route"
    assert result_label("a message someone wrote", 400) == "http_400"
    assert result_label(None, 413) == "http_413"


@pytest.fixture
def two_gpus():
    inventory = StaticInventory(gpu_list=[
        GPU(0, A, "H200", "00000000:17:00.0", memory_total=140 << 30, memory_used=40 << 30, utilization_gpu=75,
            temperature=66),
        GPU(1, B, "H200", "00000000:65:00.0", memory_total=140 << 30, memory_used=1 << 30, temperature=35),
    ])
    gpu.set_inventory(inventory)
    yield inventory
    gpu.set_inventory(None)


async def test_gpu_series_per_gpu_and_per_backend_by_uuid(make_fleet, two_gpus):
    sleeper = f"{sys.executable} -c \"import time; time.sleep(600)\""
    fleet = await make_fleet({0: {"title": "on A", "settings": {"command": sleeper, "gpu_id": "0"}},
                              1: {"title": "on both", "settings": {"command": sleeper, "gpu_id": "1,0"}},
                              2: {"title": "off", "enabled": False, "settings": {"command": sleeper}}})
    pid0, pid1 = await running(fleet, 0), await running(fleet, 1)
    two_gpus.process_list = [ProcessUse(pid0, A, 5 << 30), ProcessUse(pid1, A, 2 << 30),
                             ProcessUse(pid1, B, 7 << 30)]
    gpu.forget_cache()
    metrics = Metrics(fleet)
    families = parse((await metrics.render()).decode())
    labels = {"gpu": "0", "uuid": A, "name": "H200"}
    assert value(families, "swarmd_gpu_memory_used_bytes", **labels) == 40 << 30
    assert value(families, "swarmd_gpu_memory_total_bytes", **labels) == 140 << 30
    assert value(families, "swarmd_gpu_utilization_ratio", **labels) == 0.75
    assert value(families, "swarmd_gpu_temperature_celsius", **labels) == 66
    assert value(families, "swarmd_gpu_nvml_available") == 1
    assert value(families, "swarmd_backend_gpu_memory_bytes", id="0", gpu_uuid=A) == 5 << 30
    assert value(families, "swarmd_backend_gpu_memory_bytes", id="1", gpu_uuid=A) == 2 << 30
    assert value(families, "swarmd_backend_gpu_memory_bytes", id="1", gpu_uuid=B) == 7 << 30
    assert samples(families, "swarmd_backend_gpu_memory_bytes", id="2") == []
    # The status page's view of the same moment.
    snapshot = take_snapshot(fleet)
    view = {v.id: v for v in snapshot.backends}
    assert [(u.index, u.uuid, u.memory_used) for u in view[1].gpus] == [(1, B, 7 << 30), (0, A, 2 << 30)]
    assert view[1].gpu_memory == 9 << 30 and view[2].gpus == ()
    # Deleted backends' series vanish; the rest stay.
    assert await fleet.delete(1)
    families = parse((await metrics.render()).decode())
    assert samples(families, "swarmd_backend_gpu_memory_bytes", id="1") == []
    assert samples(families, "swarmd_backend_up", id="1") == []
    assert {s.labels["id"] for s in samples(families, "swarmd_backend_up")} == {"0", "2"}


@pytest.mark.parametrize(("text", "expected"), [
    ("http_listen: 127.0.0.1:9470\n", ("127.0.0.1", 9470)),
    ("http_listen: 9470\n", ("127.0.0.1", 9470)),
    ("http_listen: '[::1]:9470'\n", ("::1", 9470)),
    ("http_listen: localhost:0\n", ("127.0.0.1", 0)),
    ("http_listen: 0.0.0.0:9470\n", ("0.0.0.0", 9470)),
])
def test_http_listen_is_parsed(text, expected):
    assert config.parse("/etc/swarmd/swarmd.yaml", text)["http_listen"] == expected


@pytest.mark.parametrize(("text", "message"), [
    ("http_listen: gpu-01:9470\n", "http_listen: 'gpu-01' is not an IP address"),
    ("http_listen: 127.0.0.1:70000\n", "http_listen: port '70000' is not a port number"),
    ("http_listen: ::1:9470\n", "http_listen: expected HOST:PORT"),
    ("http_listen: 127.0.0.1\n", "http_listen: expected HOST:PORT"),
    ("http_listen: true\n", "http_listen: expected HOST:PORT such as 127.0.0.1:9470 or [::1]:9470, or a port, "
                            "got boolean true"),
    ("http_listen: [1, 2]\n", "http_listen: expected HOST:PORT"),
])
def test_a_bad_http_listen_is_a_located_problem(text, message):
    with pytest.raises(config.ConfigInvalid) as caught:
        config.parse("/etc/swarmd/swarmd.yaml", "log_level: info\n" + text)
    (problem,) = caught.value.problems
    assert isinstance(problem, Problem) and (problem.line, problem.col) == (2, 14)
    assert str(problem).startswith(f"/etc/swarmd/swarmd.yaml:2:14: {message}"), str(problem)


def test_http_listen_is_off_unless_set(tmp_path):
    path = tmp_path / "swarmd.yaml"
    path.write_text("log_level: info\n")
    assert config.load(str(path)).http_listen is None
    assert config.format_listen(("::1", 9470)) == "[::1]:9470"
    assert config.format_listen(("127.0.0.1", 9470)) == "127.0.0.1:9470"
