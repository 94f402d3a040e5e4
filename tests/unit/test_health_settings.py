"""The liveness settings (issue #16): health_check, health_interval, health_timeout, health_failures on every
self-starting type, the three numbers on comfyui_api; one validation for the file and the API, with errors
that name the setting; what a start probes."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmd import backends_file
from swarmd.fleet import FleetError
from swarmd.types import TYPES
from swarmd.types.comfyui import COMFY_HEALTH_CHECK

FAKE_COMFY = Path(__file__).resolve().parents[1] / "fake_comfyui" / "main.py"


def one_backend(type_id: str, **settings: object) -> str:
    lines = ["backends:", "  0:", f"    type: {type_id}", "    settings:"]
    lines += [f"      {key}: {value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def test_defaults():
    process, selfstart, remote = TYPES["process"], TYPES["comfyui_selfstart"], TYPES["comfyui_api"]
    assert {k: process.defaults()[k] for k in ("health_check", "health_interval", "health_timeout",
                                                "health_failures")} == {
        "health_check": "none", "health_interval": 10.0, "health_timeout": 5.0, "health_failures": 3}
    assert selfstart.defaults()["health_check"] == "http://127.0.0.1:{port}/system_stats" == COMFY_HEALTH_CHECK
    assert "health_check" not in remote.defaults()  # its check is its Address's /system_stats
    assert {k: remote.defaults()[k] for k in ("health_interval", "health_timeout", "health_failures")} == {
        "health_interval": 5.0, "health_timeout": 5.0, "health_failures": 3}
    config = process.lifecycle_config(process.defaults())
    assert not config.health_checks and (config.health_interval, config.health_timeout,
                                         config.health_failures) == (10.0, 5.0, 3)
    assert selfstart.lifecycle_config(selfstart.defaults()).health_checks
    assert remote.lifecycle_config(remote.defaults()).health_checks


@pytest.mark.parametrize("key, value, message", [
    ("health_check", "log:READY", "settings.health_check: expected none, tcp or http://... ({port} allowed), got "
                                  "'log:READY' (log:REGEX is a readiness check only)"),
    ("health_check", "https://127.0.0.1:{port}/", "settings.health_check: expected an http:// URL with a host and a "
                                                  "port 1-65535, got 'https://127.0.0.1:{port}/' (https is not "
                                                  "supported: use http://)"),
    ("health_check", "http://127.0.0.1:99999/", "settings.health_check: expected an http:// URL with a host and a "
                                                "port 1-65535"),
    ("health_interval", "0", "settings.health_interval: must be at least 0.05, got 0"),
    ("health_timeout", "0", "settings.health_timeout: must be at least 0.01, got 0"),
    ("health_timeout", "soon", "settings.health_timeout: expected a number, got 'soon'"),
    ("health_failures", "0", "settings.health_failures: must be at least 1, got 0"),
    ("health_failures", "2.5", "settings.health_failures: expected an integer, got number 2.5"),
])
def test_the_file_says_which_setting_is_wrong(key, value, message):
    with pytest.raises(backends_file.FileInvalid) as info:
        backends_file.parse("b.yaml", one_backend("process", command="sleep 1", **{key: value}))
    assert str(info.value).startswith(f"b.yaml:6:7: {message}")  # line 5 holds the command


def test_the_remotes_old_check_interval_still_loads_and_is_its_interval():
    remote = TYPES["comfyui_api"]
    loaded = backends_file.parse("b.yaml", one_backend("comfyui_api", Address="http://10.0.0.2:8188",
                                                       check_interval=2))
    assert remote.lifecycle_config(dict(loaded.backends[0].settings)).health_interval == 2.0
    loaded = backends_file.parse("b.yaml", one_backend("comfyui_api", Address="http://10.0.0.2:8188",
                                                       health_interval=7, health_failures=5))
    config = remote.lifecycle_config(dict(loaded.backends[0].settings))
    assert (config.health_interval, config.health_failures) == (7.0, 5)
    with pytest.raises(backends_file.FileInvalid, match="settings.check_interval: must be 0 .use health_interval. "
                                                         "or at least 0.05, got 0.01"):
        backends_file.parse("b.yaml", one_backend("comfyui_api", check_interval=0.01))


async def test_the_api_says_which_setting_is_wrong(make_fleet):
    fleet = await make_fleet("backends: {}\n")
    with pytest.raises(FleetError, match=r"^Invalid value for setting 'health_interval': must be at least 0.05, "
                                         r"got 0$"):
        await fleet.add("process", settings={"command": "sleep 1", "health_interval": "0"})
    with pytest.raises(FleetError, match=r"^Invalid value for setting 'health_check': expected none, tcp or "
                                         r"http://"):
        await fleet.add("process", settings={"health_check": "log:x"})
    added = await fleet.add("process", settings={"health_check": "tcp", "health_failures": "2"})
    assert added.lifecycle.config.health_checks and added.lifecycle.config.health_failures == 2
    assert fleet.backends() == [added]  # the refused ones changed nothing


def test_what_a_start_probes():
    process, selfstart = TYPES["process"], TYPES["comfyui_selfstart"]
    spec = process.launch_spec({**process.defaults(), "command": "srv {port}",
                                "health_check": "http://127.0.0.1:{port}/health"}, 8123)
    assert spec.health_check == "http://127.0.0.1:8123/health"
    assert process.launch_spec({**process.defaults(), "command": "srv"}, 8123).health_check == "none"
    settings = {**selfstart.defaults(), "StartScript": str(FAKE_COMFY)}
    assert selfstart.launch_spec(settings, 8188).health_check == "http://127.0.0.1:8188/system_stats"
    # the default follows ComfyUI's --listen, as readiness does; a health_check of one's own is kept
    listening = {**settings, "ExtraArgs": "--listen ::"}
    assert selfstart.launch_spec(listening, 8188).health_check == "http://[::1]:8188/system_stats"
    own = {**listening, "health_check": "tcp"}
    assert selfstart.launch_spec(own, 8188).health_check == "tcp"
