"""Supervision with real children: policies, start limits, readiness timeouts, output, ComfyUI types."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import trio

from swarmd import gpu
from swarmd.api.shape import backend_object
from swarmd.gpu import GPU, StaticInventory
from swarmd.supervise.output import RING_LINES
from tests.helpers import eventually, running, status

PY = sys.executable
FAKE_COMFY = Path(__file__).resolve().parents[1] / "fake_comfyui" / "main.py"
GPU_0 = "GPU-11111111-0000-4000-8000-000000000000"
GPU_1 = "GPU-22222222-1111-4000-8000-111111111111"


@pytest.fixture
def two_gpus():
    """A machine with two GPUs at swarmd.gpu's module boundary, whatever this machine has (0, 1 or more)."""
    gpu.set_inventory(StaticInventory(gpu_list=[GPU(0, GPU_0, "H200", "00000000:17:00.0"),
                                                GPU(1, GPU_1, "H200", "00000000:65:00.0")]))
    yield
    gpu.set_inventory(None)  # the real inventory (NVML) again on next use


def child(code: str) -> str:
    return f"{PY} -c \"{code}\""


async def test_always_failing_child_starts_exactly_burst_times_then_errored(make_fleet):
    fleet = await make_fleet({0: {"settings": {"command": child("import sys; sys.exit(1)"),
                                               "restart_delay": 0.02, "start_limit_burst": 4}}})
    cpu_before = time.process_time()
    await eventually(lambda: status(fleet, 0) == "errored", timeout=20)
    runtime = fleet.get(0).lifecycle
    assert runtime.starts == 4
    assert runtime.restarts == 3
    assert "gave up after 4 starts within 60 s" in runtime.message
    assert "swarmctl restart" in runtime.message
    # and then nothing: no more starts, and the daemon sits idle (no polling loop spins)
    await trio.sleep(0.5)
    assert fleet.get(0).lifecycle.starts == 4
    assert time.process_time() - cpu_before < 1.0
    # a restart by a person starts afresh (the counters were reset)
    assert len(await fleet.restart("0")) == 1
    await eventually(lambda: fleet.get(0).lifecycle.starts == 8 and status(fleet, 0) == "errored", timeout=20)


EXIT_0 = child("import sys; sys.exit(0)")
EXIT_1 = child("import sys; sys.exit(1)")
SLEEPER = child("import time; time.sleep(600)")


@pytest.mark.parametrize("policy, command, kill, restarts", [
    ("never", EXIT_0, False, False), ("never", EXIT_1, False, False), ("never", SLEEPER, True, False),
    ("on-failure", EXIT_0, False, False), ("on-failure", EXIT_1, False, True),
    ("on-failure", SLEEPER, True, True),
    ("always", EXIT_0, False, True), ("always", EXIT_1, False, True), ("always", SLEEPER, True, True),
])
async def test_each_policy_for_each_kind_of_exit(make_fleet, policy, command, kill, restarts):
    fleet = await make_fleet({0: {"settings": {"command": command, "restart": policy, "restart_delay": 0,
                                               "start_limit_burst": 2}}})
    if kill:
        pid = await running(fleet, 0)
        os.kill(pid, signal.SIGKILL)
    await eventually(lambda: fleet.get(0).lifecycle.last_exit is not None)
    if restarts:
        await eventually(lambda: fleet.get(0).lifecycle.starts >= 2)
    else:
        await eventually(lambda: status(fleet, 0) in ("errored", "disabled"))
        await trio.sleep(0.2)
        assert fleet.get(0).lifecycle.starts == 1
        clean = command == EXIT_0
        assert status(fleet, 0) == ("disabled" if clean else "errored")
        assert f"(restart: {policy}" in fleet.get(0).status_message


async def test_a_child_that_never_becomes_ready_is_restarted_then_errored(make_fleet):
    fleet = await make_fleet({0: {"settings": {
        "command": SLEEPER, "ready_check": "log:^never printed$", "ready_timeout": 0.3,
        "restart_delay": 0, "start_limit_burst": 2, "stop_timeout": 2}}})
    await eventually(lambda: status(fleet, 0) == "errored", timeout=15)
    runtime = fleet.get(0).lifecycle
    assert runtime.starts == 2
    assert "not ready within 0.3 s" in runtime.message
    assert runtime.last_exit.describe() == "killed by SIGTERM"


async def test_log_readiness_and_the_ring_keeps_the_last_lines(make_fleet):
    code = ("import time\nfor i in range(1500): print('line', i)\nprint('READY now', flush=True)\n"
            "time.sleep(600)")
    fleet = await make_fleet({0: {"settings": {"command": f"{PY} -c \"{code}\"", "ready_check": "log:^READY"}}})
    await running(fleet, 0)
    ring = fleet.get(0).ring
    assert len(ring) == RING_LINES
    tail = ring.tail(2)
    assert [line.text for line in tail] == ["line 1499", "READY now"]
    assert tail[-1].seq == tail[-2].seq + 1  # numbered by one counter shared with every other log
    assert ring.since(tail[-2].seq - 1)[0].text == "line 1499"
    assert ring.since(0)[0].seq == tail[-1].seq - RING_LINES + 1


async def test_an_unexpected_exit_logs_the_tail(make_fleet, caplog):
    caplog.set_level(logging.INFO)
    code = "import sys\nprint('loading model', flush=True)\nprint('CUDA out of memory', file=sys.stderr)\nsys.exit(3)"
    fleet = await make_fleet({0: {"settings": {"command": f"{PY} -c \"{code}\"", "restart": "never"}}})
    await eventually(lambda: status(fleet, 0) == "errored")
    message = next(r.getMessage() for r in caplog.records if "exited with status 3" in r.getMessage()
                   and "last output" in r.getMessage())
    assert "stdout: loading model" in message and "stderr: CUDA out of memory" in message
    forwarded = [r.getMessage() for r in caplog.records if r.name == "swarmd.backend"]
    assert "backend-0: loading model" in forwarded


async def test_fake_comfyui_runs_and_receives_free(two_gpus, make_fleet):
    fleet = await make_fleet(f"""\
backends:
  0:
    type: comfyui_selfstart
    title: comfy
    settings:
      StartScript: {FAKE_COMFY}
      python: {PY}
      ExtraArgs: --preview-method auto
      GPU_ID: "1"
      OverQueue: 2
""")
    await running(fleet, 0)
    backend = fleet.get(0)
    port = backend.lifecycle.port
    assert backend_object(backend)["max_usages"] == 3
    assert backend_object(backend, full_data=True)["gpus"] == [{"id": 1, "uuid": GPU_1, "name": "H200"}]
    # the process runs in the script's directory, unbuffered, pinned by UUID in nvidia-smi's order
    first = backend.ring.tail(5)[0].text
    assert f"cwd={FAKE_COMFY.parent}" in first and "unbuffered=1" in first
    url = f"http://127.0.0.1:{port}/system_stats"
    stats = json.loads(await trio.to_thread.run_sync(lambda: urllib.request.urlopen(url, timeout=5).read()))
    assert stats["system"]["cuda_visible_devices"] == GPU_1
    assert stats["system"]["device_order"] == "PCI_BUS_ID"
    assert stats["system"]["argv"][1:] == ["--preview-method", "auto", "--listen", "127.0.0.1", "--port",
                                           str(port)]
    assert await fleet.free_memory("all", system_ram=True) == (True, 1)
    await eventually(lambda: any(line.text.startswith("free ") for line in backend.ring.tail(5)))
    line = next(line.text for line in backend.ring.tail(5) if line.text.startswith("free "))
    assert json.loads(line[5:]) == {"unload_models": True, "free_memory": True}


async def test_comfyui_selfstart_without_script_is_disabled_and_missing_script_errored(make_fleet):
    fleet = await make_fleet("""\
backends:
  0: {type: comfyui_selfstart, title: empty}
  1:
    type: comfyui_selfstart
    settings: {StartScript: /nonexistent/ComfyUI/main.py}
""")
    await eventually(lambda: status(fleet, 0) == "disabled" and status(fleet, 1) == "errored")
    assert "No StartScript set" in fleet.get(0).status_message
    assert "does not exist" in fleet.get(1).status_message
    assert fleet.get(0).enabled is True


async def test_comfyui_api_follows_the_remote(make_fleet):
    from swarmd.supervise.shell import pick_free_port

    port = pick_free_port()
    remote = subprocess.Popen([PY, str(FAKE_COMFY), "--port", str(port)], stdout=subprocess.DEVNULL)
    try:
        fleet = await make_fleet(f"""\
backends:
  0:
    type: comfyui_api
    settings: {{Address: "http://127.0.0.1:{port}", check_interval: 0.1}}
""")
        await eventually(lambda: status(fleet, 0) == "running")
        assert await fleet.free_memory("0") == (True, 1)
        remote.kill()
        remote.wait()
        await eventually(lambda: status(fleet, 0) == "errored")
        assert "unreachable" in fleet.get(0).status_message
        remote = subprocess.Popen([PY, str(FAKE_COMFY), "--port", str(port)], stdout=subprocess.DEVNULL)
        await eventually(lambda: status(fleet, 0) == "running")
    finally:
        remote.kill()
        remote.wait()


async def test_the_status_names_the_cause_and_a_failed_start_is_in_the_backends_own_log(make_fleet):
    crash = ("import sys\nprint('loading', flush=True)\nprint('a warning', file=sys.stderr, flush=True)\n"
             "import no_such_module_here")
    fleet = await make_fleet({0: {"settings": {"command": child(crash), "restart": "never"}},
                              1: {"settings": {"command": "/nonexistent/program --flag"}}})
    await eventually(lambda: status(fleet, 0) == "errored" and status(fleet, 1) == "errored")
    assert fleet.get(0).status_message.startswith(
        "exited with status 1 (restart: never; restart it once fixed): ")
    assert fleet.get(0).status_message.endswith("ModuleNotFoundError: No module named 'no_such_module_here'")
    notes = [line.text for line in fleet.get(1).ring.tail(5) if line.stream == "swarmd"]
    assert notes == ["cannot start: program '/nonexistent/program' not found"]
