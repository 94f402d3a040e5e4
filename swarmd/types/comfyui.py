"""The ComfyUI types: a self-started ComfyUI (SwarmUI's `comfyui_selfstart`) and one reached by URL
(`comfyui_api`)."""

from __future__ import annotations

import dataclasses
import os
import shlex
from typing import Any

from swarmd.settings import SettingError, SettingSpec, describe
from swarmd.supervise.lifecycle import LifecycleConfig
from swarmd.types.base import (
    BackendType,
    LaunchFailed,
    LaunchRefused,
    LaunchSpec,
    check_command,
    check_http_url,
    gpu_settings,
    restart_settings,
)

#: ComfyUI loads models at start: minutes, not seconds.
COMFY_READY_TIMEOUT = 600.0


def check_start_script(value: str) -> str:
    text = value.strip()
    if text and os.path.basename(text) != "main.py":
        raise SettingError(f"expected the path of ComfyUI's main.py, got {describe(value)}")
    return text


def check_address(value: str) -> str:
    """An http:// address (as `check_http_url`) without a trailing slash or a ?query: the health and free
    URLs are made by appending /system_stats and /free to it."""
    text = value.strip().rstrip("/")
    if not text:
        return ""
    text = check_http_url(text)
    if "?" in text:
        raise SettingError(f"expected an http:// address without a ?query, got {describe(value)}")
    return text


class ComfyUISelfStart(BackendType):
    id = "comfyui_selfstart"
    name = "ComfyUI Self-Starting"
    description = "Runs a local ComfyUI (its main.py) as a supervised process pinned to its GPUs."
    is_standard = True
    can_load_models = True
    features = ("comfyui",)
    settings = (
        SettingSpec("start_script", "text", "", "Path to ComfyUI's main.py. Empty: the backend stays "
                    "disabled.", placeholder="/srv/ComfyUI/main.py", check=check_start_script),
        SettingSpec("python", "text", "", "Python interpreter. Empty: <script dir>/venv/bin/python3 if it "
                    "exists, else python3.", placeholder="/srv/ComfyUI/venv/bin/python3"),
        SettingSpec("extra_args", "text", "", "Extra arguments for main.py (split like a shell would).",
                    placeholder="--preview-method auto", check=check_command),
        *gpu_settings(default="0"),
        SettingSpec("port", "integer", 0, "Port (0: a free port at each start).", minimum=0,
                    maximum=65535),
        SettingSpec("over_queue", "integer", 1, "Extra generations queued on it at once "
                    "(max_usages = 1 + over_queue).", minimum=0),
        SettingSpec("auto_restart", "boolean", True, "Restart it when it exits unexpectedly (by the restart "
                    "setting's policy); false: never."),
        *restart_settings(ready_timeout=COMFY_READY_TIMEOUT),
    )

    def lifecycle_config(self, settings: dict[str, Any]) -> LifecycleConfig:
        config = super().lifecycle_config(settings)
        return config if settings["auto_restart"] else dataclasses.replace(config, restart="never")

    def free_body(self, system_ram: bool) -> dict[str, Any]:
        return {"unload_models": True, "free_memory": system_ram}

    def launch(self, settings: dict[str, Any], port: int) -> LaunchSpec:
        script = settings["start_script"].strip()
        if not script:
            raise LaunchRefused("No start_script set: point it at ComfyUI's main.py to start it.")
        script = os.path.abspath(os.path.expanduser(script))
        if not os.path.isfile(script):
            raise LaunchFailed(f"start_script {script!r} does not exist")
        directory = os.path.dirname(script)
        python = settings["python"].strip()
        if not python:
            venv = os.path.join(directory, "venv", "bin", "python3")
            python = venv if os.access(venv, os.X_OK) else "python3"
        argv = (python, "-s", os.path.basename(script), *shlex.split(settings["extra_args"]),
                "--listen", "127.0.0.1", "--port", str(port))
        env = {"PYTHONUNBUFFERED": "1", "PYTHONUTF8": "1"}
        return LaunchSpec(
            argv=argv, cwd=directory, env=env, unset_env=("PYTHONHOME", "PYTHONPATH"), port=port,
            ready_check=f"http://127.0.0.1:{port}/system_stats",
            free_memory=f"http://127.0.0.1:{port}/free",
        )


class ComfyUIAPI(BackendType):
    id = "comfyui_api"
    name = "ComfyUI API By URL"
    description = "A ComfyUI that runs elsewhere, reached by its address and health-checked."
    is_standard = False
    self_starting = False
    can_load_models = True
    features = ("comfyui",)
    settings = (
        SettingSpec("address", "text", "", "Its address, e.g. http://127.0.0.1:8188. Empty: disabled.",
                    placeholder="http://127.0.0.1:8188", check=check_address),
        SettingSpec("allow_idle", "boolean", False, "Show it as idle rather than errored while it is "
                    "unreachable."),
        SettingSpec("over_queue", "integer", 1, "Extra generations queued on it at once.", minimum=0),
        SettingSpec("check_interval", "decimal", 5.0, "Seconds between health checks.", minimum=0.05),
    )

    def lifecycle_config(self, settings: dict[str, Any]) -> LifecycleConfig:
        return LifecycleConfig(remote=True, allow_idle=settings["allow_idle"])

    def health_url(self, settings: dict[str, Any]) -> str:
        address = settings["address"]
        return f"{address}/system_stats" if address else ""

    def free_url(self, settings: dict[str, Any]) -> str:
        address = settings["address"]
        return f"{address}/free" if address else ""

    def free_body(self, system_ram: bool) -> dict[str, Any]:
        return {"unload_models": True, "free_memory": system_ram}
