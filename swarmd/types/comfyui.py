"""The ComfyUI types: a self-started ComfyUI (SwarmUI's `comfyui_selfstart`) and one reached by URL
(`comfyui_api`).

Their settings are SwarmUI's, by name, kind, default and dropdown values, in the order of SwarmUI's
settings classes (ComfyUISelfStartSettings, ComfyUIAPISettings), so that a SwarmUI client or script sends
them unchanged; swarmd's own additions follow, in snake_case, so a reader sees at a glance which are
SwarmUI's. The SwarmUI settings that cannot apply under swarmd (updating ComfyUI, its nodes and its
frontend) are accepted and kept in the file, and say in their description that they have no effect.
"""

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
    gpu_setting_spec,
    restart_settings,
    rocr_setting_spec,
)

#: ComfyUI loads models at start: minutes, not seconds.
COMFY_READY_TIMEOUT = 600.0

#: EnablePreviews -> ComfyUI's --preview-method.
PREVIEW_METHODS = {"false": "none", "true": "auto", "taesd": "taesd"}

#: Said by every SwarmUI setting that swarmd accepts but cannot apply.
NO_EFFECT = ("No effect under swarmd, which never updates or installs anything (update ComfyUI yourself, "
             "then restart the backend); kept so SwarmUI clients and files work unchanged.")
UPDATE_VALUES = ("true", "aggressive", "false")
UPDATE_NAMES = ("Always Update", "Always Aggressively Update (Force-Update)", "Don't Update")


def check_start_script(value: str) -> str:
    """StartScript: empty, or a path whose last part is main.py."""
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
    gpu_setting = "GPU_ID"
    settings = (
        # -- SwarmUI's ComfyUISelfStartSettings, in its order -----------------------------------------------
        SettingSpec("StartScript", "text", "", "Path to ComfyUI's main.py, which runs in its directory (a "
                    "relative path is relative to swarmd's working directory: prefer an absolute one). "
                    "Empty: the backend stays disabled.",
                    placeholder="/srv/ComfyUI/main.py", check=check_start_script),
        SettingSpec("ExtraArgs", "text", "", "Extra arguments for main.py, split like a shell would (never "
                    "run through a shell). swarmd's own --port comes last and wins.",
                    placeholder="--lowvram", check=check_command),
        SettingSpec("DisableInternalArgs", "boolean", False, "Unchecked: swarmd adds its internal arguments "
                    "(--listen 127.0.0.1, and --preview-method from EnablePreviews). Checked: only --port, "
                    "which it needs to supervise ComfyUI (readiness is checked at 127.0.0.1:<port>, "
                    "ComfyUI's default address)."),
        SettingSpec("AutoUpdate", "dropdown", "false", "SwarmUI: update ComfyUI (git pull) at each launch. "
                    + NO_EFFECT, values=UPDATE_VALUES, value_names=UPDATE_NAMES),
        SettingSpec("UpdateManagedNodes", "dropdown", "false", "SwarmUI: update the custom nodes it manages "
                    "at each launch. " + NO_EFFECT, values=UPDATE_VALUES, value_names=UPDATE_NAMES),
        SettingSpec("FrontendVersion", "dropdown", "LatestSwarmValidated", "SwarmUI: which ComfyUI frontend "
                    "to install and use. " + NO_EFFECT + " ComfyUI uses the frontend it has (pass "
                    "--front-end-version in ExtraArgs to choose).",
                    values=("Latest", "None", "LatestSwarmValidated", "Legacy"),
                    value_names=("Latest", "None", "Latest Swarm Validated", "Legacy (Pre Sept 2024)")),
        SettingSpec("EnablePreviews", "dropdown", "true", "Image previews while generating: passed as "
                    "--preview-method none (false), auto (true) or taesd, unless DisableInternalArgs is "
                    "checked or ExtraArgs has its own --preview-method.",
                    values=tuple(PREVIEW_METHODS), value_names=("No Previews", "Default Previews",
                                                               "TAESD Previews")),
        gpu_setting_spec("GPU_ID", "0", "GPUs to pin it to, as nvidia-smi numbers them (CUDA's own order "
                         "may differ: swarmd sets CUDA_DEVICE_ORDER=PCI_BUS_ID and CUDA_VISIBLE_DEVICES "
                         "with the GPUs' UUIDs): an index (0), a list (0,1), a GPU UUID or unique prefix, a "
                         "MIG UUID, or auto (the least used GPU at each start). Empty: not pinned."),
        SettingSpec("OverQueue", "integer", 1, "How many extra requests may queue up on it while one is "
                    "processing (max_usages = 1 + OverQueue).", minimum=0),
        SettingSpec("AutoRestart", "boolean", True, "Restart it when it exits (by the restart setting's "
                    "policy, with backoff and a start limit); unchecked: it stays errored until restarted."),
        # -- swarmd's own ----------------------------------------------------------------------------------
        SettingSpec("python", "text", "", "Python interpreter. Empty: <script dir>/venv/bin/python3 if it "
                    "exists, else python3.", placeholder="/srv/ComfyUI/venv/bin/python3"),
        SettingSpec("port", "integer", 0, "Port (0: a free port at each start).", minimum=0,
                    maximum=65535),
        rocr_setting_spec(),
        *restart_settings(ready_timeout=COMFY_READY_TIMEOUT),
    )

    def lifecycle_config(self, settings: dict[str, Any]) -> LifecycleConfig:
        config = super().lifecycle_config(settings)
        return config if settings["AutoRestart"] else dataclasses.replace(config, restart="never")

    def free_body(self, system_ram: bool) -> dict[str, Any]:
        return {"unload_models": True, "free_memory": system_ram}

    def arguments(self, settings: dict[str, Any], port: int) -> list[str]:
        """main.py's arguments: ExtraArgs, then (unless DisableInternalArgs) swarmd's internal ones
        (`--listen 127.0.0.1`, and `--preview-method` from EnablePreviews unless ExtraArgs gives one), then
        `--port N` (last, so that it wins over a --port in ExtraArgs: swarmd must know the port)."""
        args = shlex.split(settings["ExtraArgs"])
        if not settings["DisableInternalArgs"]:
            args += ["--listen", "127.0.0.1"]
            if not any(arg == "--preview-method" or arg.startswith("--preview-method=") for arg in args):
                args += ["--preview-method", PREVIEW_METHODS[settings["EnablePreviews"]]]
        return [*args, "--port", str(port)]

    def launch(self, settings: dict[str, Any], port: int) -> LaunchSpec:
        script = settings["StartScript"].strip()
        if not script:
            raise LaunchRefused("No StartScript set: point it at ComfyUI's main.py to start it.")
        script = os.path.abspath(os.path.expanduser(script))
        if not os.path.isfile(script):
            raise LaunchFailed(f"StartScript {script!r} does not exist")
        directory = os.path.dirname(script)
        python = settings["python"].strip()
        if not python:
            venv = os.path.join(directory, "venv", "bin", "python3")
            python = venv if os.access(venv, os.X_OK) else "python3"
        argv = (python, "-s", os.path.basename(script), *self.arguments(settings, port))
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
        # -- SwarmUI's ComfyUIAPISettings, in its order -----------------------------------------------------
        SettingSpec("Address", "text", "", "The address of the ComfyUI instance, e.g. http://127.0.0.1:8188. "
                    "Empty: disabled.", placeholder="http://127.0.0.1:8188", check=check_address),
        SettingSpec("AllowIdle", "boolean", False, "Show it as idle rather than errored while it is "
                    "unreachable; it is running again as soon as it answers."),
        SettingSpec("OverQueue", "integer", 1, "How many extra requests may queue up on it while one is "
                    "processing (max_usages = 1 + OverQueue).", minimum=0),
        SettingSpec("EnableFrontendDev", "boolean", False, "SwarmUI: ComfyUI frontend development through "
                    "SwarmUI. No effect under swarmd, which serves no frontend; kept so SwarmUI clients and "
                    "files work unchanged."),
        # -- swarmd's own ----------------------------------------------------------------------------------
        SettingSpec("check_interval", "decimal", 5.0, "Seconds between health checks.", minimum=0.05),
    )

    def lifecycle_config(self, settings: dict[str, Any]) -> LifecycleConfig:
        return LifecycleConfig(remote=True, allow_idle=settings["AllowIdle"])

    def health_url(self, settings: dict[str, Any]) -> str:
        address = settings["Address"]
        return f"{address}/system_stats" if address else ""

    def free_url(self, settings: dict[str, Any]) -> str:
        address = settings["Address"]
        return f"{address}/free" if address else ""

    def free_body(self, system_ram: bool) -> dict[str, Any]:
        return {"unload_models": True, "free_memory": system_ram}
