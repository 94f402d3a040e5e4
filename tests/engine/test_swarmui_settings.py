"""SwarmUI's ComfyUI setting names (issue #12): what a SwarmUI client or script sends is what the backend
starts with, a misspelled or old snake_case key is an error naming the nearest known one, and
ListBackendTypes publishes SwarmUI's schema in SwarmUI's order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

from swarmd import backends_file, gpu
from swarmd.api.shape import backend_object
from swarmd.fleet import FleetError
from swarmd.gpu import GPU, StaticInventory
from tests.helpers import SLEEPER, Daemon, eventually, running, status, wait_until

PY = sys.executable
FAKE_COMFY = Path(__file__).resolve().parents[1] / "fake_comfyui" / "main.py"
GPU_0 = "GPU-11111111-0000-4000-8000-000000000000"
GPU_1 = "GPU-22222222-1111-4000-8000-111111111111"

#: SwarmUI's settings, in its order, then swarmd's own (src/BuiltinExtensions/ComfyUIBackend/).
SELFSTART_SWARMUI = ["StartScript", "ExtraArgs", "DisableInternalArgs", "AutoUpdate", "UpdateManagedNodes",
                     "FrontendVersion", "EnablePreviews", "GPU_ID", "OverQueue", "AutoRestart"]
SELFSTART_SWARMD = ["python", "port", "rocr_visible_devices", "restart", "restart_delay",
                    "restart_delay_max", "start_limit_burst", "start_limit_interval", "stable_after",
                    "ready_timeout", "stop_signal", "stop_timeout", "health_check", "health_interval",
                    "health_timeout", "health_failures", "user", "group", "memory_max", "cpu_weight"]
API_SWARMUI = ["Address", "AllowIdle", "OverQueue", "EnableFrontendDev"]
API_SWARMD = ["health_interval", "health_timeout", "health_failures", "check_interval"]


@pytest.fixture
def two_gpus():
    """A machine with two GPUs at swarmd.gpu's module boundary, whatever this machine has (0, 1 or more)."""
    gpu.set_inventory(StaticInventory(gpu_list=[GPU(0, GPU_0, "H200", "00000000:17:00.0"),
                                                GPU(1, GPU_1, "H200", "00000000:65:00.0")]))
    yield
    gpu.set_inventory(None)  # the real inventory (NVML) again on next use


async def system_stats(port: int) -> dict[str, Any]:
    """What the fake ComfyUI reports: its argv, the parsed arguments and the GPU environment."""
    url = f"http://127.0.0.1:{port}/system_stats"
    body = await trio.to_thread.run_sync(lambda: urllib.request.urlopen(url, timeout=5).read())
    return json.loads(body)["system"]


async def restarted(fleet, backend_id: int, old_pid: int) -> int:
    """The pid of the backend's next process, once it is running."""
    await eventually(lambda: status(fleet, backend_id) == "running" and fleet.get(backend_id).pid not in
                     (None, old_pid), what=f"backend {backend_id} running again")
    return fleet.get(backend_id).pid


# -- what SwarmUI sends is what ComfyUI starts with -------------------------------------------------------


async def test_swarmui_names_through_add_and_edit_start_comfyui_with_them(two_gpus, make_fleet, tmp_path):
    fleet = await make_fleet("backends: {}\n")
    # AddNewBackend's settings as SwarmUI's web UI sends them: text for text and numbers
    backend = await fleet.add("comfyui_selfstart", title="comfy", settings={
        "StartScript": str(FAKE_COMFY), "python": PY,
        "ExtraArgs": "--lowvram --output-directory '/tmp/out dir'",
        "GPU_ID": "1", "OverQueue": "2", "EnablePreviews": "taesd", "AutoUpdate": "aggressive",
        "FrontendVersion": "Legacy"})
    backend_id = backend.id
    pid = await running(fleet, backend_id)
    port = fleet.get(backend_id).lifecycle.port
    stats = await system_stats(port)
    assert stats["argv"][1:] == ["--lowvram", "--output-directory", "/tmp/out dir", "--listen", "127.0.0.1",
                                 "--preview-method", "taesd", "--port", str(port)]
    assert (stats["listen"], stats["port"], stats["preview_method"]) == ("127.0.0.1", port, "taesd")
    assert stats["cuda_visible_devices"] == GPU_1 and stats["rocr_visible_devices"] is None
    shown = backend_object(fleet.get(backend_id), full_data=True)
    assert shown["max_usages"] == 3 and shown["gpus"] == [{"id": 1, "uuid": GPU_1, "name": "H200"}]
    assert list(shown["settings"]) == SELFSTART_SWARMUI + SELFSTART_SWARMD
    # the settings that cannot apply under swarmd are kept (in the file too), never dropped
    assert (shown["settings"]["AutoUpdate"], shown["settings"]["FrontendVersion"]) == ("aggressive", "Legacy")
    text = (tmp_path / "backends.yaml").read_text()
    for line in ("StartScript: ", "ExtraArgs: ", "GPU_ID: ", "OverQueue: 2", "EnablePreviews: taesd",
                 "AutoUpdate: aggressive", "FrontendVersion: Legacy"):
        assert line in text, text

    # EditBackend: DisableInternalArgs leaves only --port; ExtraArgs' own --preview-method is ComfyUI's
    await fleet.edit(backend_id, title="comfy", settings={
        "DisableInternalArgs": "true", "ExtraArgs": "--preview-method latent2rgb", "GPU_ID": "0"})
    pid = await restarted(fleet, backend_id, pid)
    port = fleet.get(backend_id).lifecycle.port
    stats = await system_stats(port)
    assert stats["argv"][1:] == ["--preview-method", "latent2rgb", "--port", str(port)]
    assert (stats["listen"], stats["preview_method"]) == ("127.0.0.1", "latent2rgb")  # ComfyUI's defaults
    assert stats["cuda_visible_devices"] == GPU_0 and stats["device_order"] == "PCI_BUS_ID"

    # internal arguments again, previews off (a JSON boolean, as older SwarmUI clients send it), ROCm too
    await fleet.edit(backend_id, title="comfy", settings={
        "DisableInternalArgs": False, "ExtraArgs": "", "EnablePreviews": False, "rocr_visible_devices": True})
    pid = await restarted(fleet, backend_id, pid)
    port = fleet.get(backend_id).lifecycle.port
    stats = await system_stats(port)
    assert stats["argv"][1:] == ["--listen", "127.0.0.1", "--preview-method", "none", "--port", str(port)]
    assert stats["cuda_visible_devices"] == stats["rocr_visible_devices"] == GPU_0

    # --preview-method=... in ExtraArgs counts as ExtraArgs' own too
    await fleet.edit(backend_id, title="comfy", settings={"ExtraArgs": "--preview-method=auto"})
    pid = await restarted(fleet, backend_id, pid)
    port = fleet.get(backend_id).lifecycle.port
    stats = await system_stats(port)
    assert stats["argv"][1:] == ["--preview-method=auto", "--listen", "127.0.0.1", "--port", str(port)]
    assert stats["preview_method"] == "auto"


async def test_auto_restart_false_leaves_a_crashed_comfyui_errored(make_fleet):
    fleet = await make_fleet({0: {"type": "comfyui_selfstart", "settings": {
        "StartScript": str(FAKE_COMFY), "python": PY, "GPU_ID": "", "AutoRestart": False}}})
    pid = await running(fleet, 0)
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: status(fleet, 0) == "errored")
    await trio.sleep(0.3)
    assert fleet.get(0).lifecycle.starts == 1 and "(restart: never;" in fleet.get(0).status_message


async def test_comfyui_api_with_swarmui_names(make_fleet):
    from swarmd.supervise.shell import pick_free_port

    port = pick_free_port()
    fleet = await make_fleet(f"""\
backends:
  0:
    type: comfyui_api
    settings: {{Address: "http://127.0.0.1:{port}/", AllowIdle: true, OverQueue: 0, EnableFrontendDev: true,
                check_interval: 0.1}}
""")
    await eventually(lambda: status(fleet, 0) == "idle")  # nothing answers yet, and AllowIdle
    remote = subprocess.Popen([PY, str(FAKE_COMFY), "--port", str(port)], stdout=subprocess.DEVNULL)
    try:
        await eventually(lambda: status(fleet, 0) == "running")
        shown = backend_object(fleet.get(0))
        assert shown["max_usages"] == 1
        assert list(shown["settings"]) == API_SWARMUI + API_SWARMD
        assert shown["settings"]["Address"] == f"http://127.0.0.1:{port}"
    finally:
        remote.kill()
        remote.wait()


# SwarmUI's own Backends.fds entries, written as YAML: every value as SwarmUI saves it
SWARMUI_FILE = """\
backends:
  0:
    type: comfyui_selfstart
    title: main comfy
    enabled: true
    settings:
      StartScript: dlbackend/comfy/ComfyUI/main.py
      ExtraArgs: --preview-method auto
      DisableInternalArgs: false
      AutoUpdate: false
      UpdateManagedNodes: false
      FrontendVersion: LatestSwarmValidated
      EnablePreviews: true
      GPU_ID: 0
      OverQueue: 1
      AutoRestart: true
  1:
    type: comfyui_api
    title:
    enabled: false
    settings:
      Address: http://192.0.2.10:8188
      AllowIdle: true
      OverQueue: 1
      EnableFrontendDev: false
"""


def test_a_swarmui_backends_file_loads_as_it_is(two_gpus):
    loaded = backends_file.parse("b.yaml", SWARMUI_FILE)
    selfstart, remote = loaded.backends[0].settings, loaded.backends[1].settings
    assert {name: selfstart[name] for name in SELFSTART_SWARMUI} == {
        "StartScript": "dlbackend/comfy/ComfyUI/main.py", "ExtraArgs": "--preview-method auto",
        "DisableInternalArgs": False, "AutoUpdate": "false", "UpdateManagedNodes": "false",
        "FrontendVersion": "LatestSwarmValidated", "EnablePreviews": "true", "GPU_ID": "0", "OverQueue": 1,
        "AutoRestart": True}
    assert remote == {"Address": "http://192.0.2.10:8188", "AllowIdle": True, "OverQueue": 1,
                      "EnableFrontendDev": False, "health_interval": 5.0, "health_timeout": 5.0,
                      "health_failures": 3, "check_interval": 0.0}


# -- a key that no setting has is an error naming the nearest one -----------------------------------------

MISSPELLED = """\
backends:
  0:
    type: comfyui_selfstart
    settings:
      StartScrpt: /srv/ComfyUI/main.py
      GPU_ID: "0"
  1:
    type: comfyui_selfstart
    settings:
      start_script: /srv/ComfyUI/main.py
      extra_args: --lowvram
      gpu_id: "0"
      over_queue: 2
      auto_restart: false
      gpuid: "1"
  2:
    type: comfyui_api
    settings:
      address: http://127.0.0.1:8188
      allow_idle: true
      Adress: http://127.0.0.1:8188
      colour: blue
"""


def test_a_misspelled_or_old_key_in_the_file_is_located_with_the_nearest_name(tmp_path):
    with pytest.raises(backends_file.FileInvalid) as info:
        backends_file.parse("b.yaml", MISSPELLED)
    expected = [(5, 0, "StartScrpt", "StartScript"), (10, 1, "start_script", "StartScript"),
                (11, 1, "extra_args", "ExtraArgs"), (12, 1, "gpu_id", "GPU_ID"),
                (13, 1, "over_queue", "OverQueue"), (14, 1, "auto_restart", "AutoRestart"),
                (15, 1, "gpuid", "GPU_ID"), (19, 2, "address", "Address"), (20, 2, "allow_idle", "AllowIdle"),
                (21, 2, "Adress", "Address")]
    type_of = {0: "comfyui_selfstart", 1: "comfyui_selfstart", 2: "comfyui_api"}
    assert [str(problem) for problem in info.value.problems] == [
        f"b.yaml:{line}:7: backends.{i}.settings: unknown setting '{key}' for type '{type_of[i]}' "
        f"(did you mean '{near}'?)" for line, i, key, near in expected
    ] + ["b.yaml:22:7: backends.2.settings: unknown setting 'colour' for type 'comfyui_api' "
         "(known: Address, AllowIdle, OverQueue, EnableFrontendDev, health_interval, health_timeout, "
         "health_failures, check_interval)"]
    # `swarmd check` says the same, located in the file it was given
    path = tmp_path / "backends.yaml"
    path.write_text(MISSPELLED)
    check = subprocess.run([PY, "-m", "swarmd", "check", "--backends", str(path)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 1
    assert (f"{path}:5:7: backends.0.settings: unknown setting 'StartScrpt' for type 'comfyui_selfstart' "
            "(did you mean 'StartScript'?)") in check.stdout.splitlines()


async def test_a_misspelled_key_through_the_fleet_is_refused_and_nothing_changes(make_fleet, tmp_path):
    """The API side: AddNewBackend and EditBackend refuse a key no setting has, with the same message
    (SwarmUI would ignore it and answer success: issue #12)."""
    fleet = await make_fleet({0: {"type": "comfyui_selfstart", "settings": {"GPU_ID": ""}}})
    before = (tmp_path / "backends.yaml").read_bytes()
    with pytest.raises(FleetError, match=r"unknown setting 'StartScrpt' for type 'comfyui_selfstart' "
                                         r"\(did you mean 'StartScript'\?\)"):
        await fleet.edit(0, title="x", settings={"StartScrpt": str(FAKE_COMFY)})
    with pytest.raises(FleetError, match=r"unknown setting 'extra_args' .*did you mean 'ExtraArgs'"):
        await fleet.add("comfyui_selfstart", settings={"StartScript": str(FAKE_COMFY), "extra_args": "-x"})
    assert (tmp_path / "backends.yaml").read_bytes() == before
    assert fleet.get(0).modcount == 0 and fleet.get(1) is None


# -- the published schema ------------------------------------------------------------------------------


def schema(answer: dict, type_id: str) -> dict[str, dict]:
    entry = next(e for e in answer["list"] if e["id"] == type_id)
    return {setting["name"]: setting for setting in entry["settings"]}


def test_list_backend_types_publishes_swarmui_settings_in_swarmui_order(start_daemon):
    daemon: Daemon = start_daemon({0: {"settings": {"command": SLEEPER}}})
    answer = daemon.ok("ListBackendTypes")
    selfstart = schema(answer, "comfyui_selfstart")
    assert list(selfstart) == SELFSTART_SWARMUI + SELFSTART_SWARMD
    kinds = {name: (s["type"], s["default"]) for name, s in selfstart.items() if name in SELFSTART_SWARMUI}
    assert kinds == {
        "StartScript": ("text", ""), "ExtraArgs": ("text", ""), "DisableInternalArgs": ("boolean", False),
        "AutoUpdate": ("dropdown", "false"), "UpdateManagedNodes": ("dropdown", "false"),
        "FrontendVersion": ("dropdown", "LatestSwarmValidated"), "EnablePreviews": ("dropdown", "true"),
        "GPU_ID": ("text", "0"), "OverQueue": ("integer", 1), "AutoRestart": ("boolean", True)}
    for name in ("AutoUpdate", "UpdateManagedNodes"):
        assert selfstart[name]["values"] == ["true", "aggressive", "false"]
        assert selfstart[name]["value_names"] == [
            "Always Update", "Always Aggressively Update (Force-Update)", "Don't Update"]
    assert selfstart["FrontendVersion"]["values"] == ["Latest", "None", "LatestSwarmValidated", "Legacy"]
    assert selfstart["FrontendVersion"]["value_names"] == ["Latest", "None", "Latest Swarm Validated",
                                                           "Legacy (Pre Sept 2024)"]
    assert selfstart["EnablePreviews"]["values"] == ["false", "true", "taesd"]
    assert len(selfstart["EnablePreviews"]["value_names"]) == 3
    for name in ("AutoUpdate", "UpdateManagedNodes", "FrontendVersion"):
        assert "No effect under swarmd" in selfstart[name]["description"]
    for name, setting in selfstart.items():
        if setting["type"] != "dropdown":
            assert setting["values"] is None and setting["value_names"] is None, name
    remote = schema(answer, "comfyui_api")
    assert list(remote) == API_SWARMUI + API_SWARMD
    assert {name: (s["type"], s["default"]) for name, s in remote.items()} == {
        "Address": ("text", ""), "AllowIdle": ("boolean", False), "OverQueue": ("integer", 1),
        "EnableFrontendDev": ("boolean", False), "health_interval": ("decimal", 5.0),
        "health_timeout": ("decimal", 5.0), "health_failures": ("integer", 3), "check_interval": ("decimal", 0.0)}
    assert "No effect under swarmd" in remote["EnableFrontendDev"]["description"]


def test_edit_backend_with_swarmui_names_over_the_api(start_daemon):
    """Issue #12's script: EditBackend with StartScript, GPU_ID, ExtraArgs changes the backend; a misspelled
    key is refused with the nearest name and changes nothing."""
    daemon: Daemon = start_daemon({0: {"type": "comfyui_selfstart", "title": "comfy", "settings": {}}})
    wait_until(lambda: daemon.backend(0)["status"] == "disabled", what="no StartScript: disabled")
    answer = daemon.ok("EditBackend", {"backend_id": 0, "title": "comfy", "settings": {
        "StartScript": str(FAKE_COMFY), "GPU_ID": "0", "ExtraArgs": "--lowvram", "python": PY,
        "OverQueue": "3"}})
    assert answer["settings"]["StartScript"] == str(FAKE_COMFY) and answer["max_usages"] == 4
    listing = wait_until(lambda: (b := daemon.backend(0))["status"] == "running" and b, timeout=60,
                         what="comfy running")
    stats = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{listing['port']}/system_stats",
                                              timeout=5).read())["system"]
    assert stats["argv"][1:] == ["--lowvram", "--listen", "127.0.0.1", "--preview-method", "auto", "--port",
                                 str(listing["port"])]
    assert stats["cuda_visible_devices"]  # pinned (GPU 0's UUID where NVML sees GPUs, else "0")
    before = daemon.file_bytes()
    refused = daemon.api("EditBackend", {"backend_id": 0, "title": "comfy",
                                         "settings": {"StartScrpt": "/srv/ComfyUI/main.py"}})
    assert "did you mean 'StartScript'?" in refused["error"]
    assert daemon.file_bytes() == before and daemon.backend(0)["pid"] == listing["pid"]
