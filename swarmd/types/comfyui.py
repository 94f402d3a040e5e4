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
import functools
import ipaddress
import os
import shlex
from collections.abc import Mapping
from typing import Any

from swarmd.httpclient import BadUrl, parse_url
from swarmd.settings import SettingError, SettingSpec, describe
from swarmd.supervise.lifecycle import LifecycleConfig
from swarmd.types.base import (
    HEALTH_INTERVAL_MIN,
    BackendType,
    LaunchFailed,
    LaunchRefused,
    LaunchSpec,
    account_settings,
    check_command,
    check_http_url,
    gpu_setting_spec,
    health_config,
    health_settings,
    health_timing_settings,
    restart_settings,
    rocr_setting_spec,
)

#: ComfyUI loads models at start: minutes, not seconds.
COMFY_READY_TIMEOUT = 600.0

#: comfyui_selfstart's health_check: ComfyUI's own status route. Left at this default, it follows
#: ExtraArgs' --listen as readiness does (`probe_host`).
COMFY_HEALTH_CHECK = "http://127.0.0.1:{port}/system_stats"

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


def check_old_interval(value: float) -> float:
    """check_interval: 0 (not set: health_interval applies) or, as health_interval, at least 0.05 s."""
    if value and value < HEALTH_INTERVAL_MIN:
        raise SettingError(f"must be 0 (use health_interval) or at least {HEALTH_INTERVAL_MIN:g}, got {value:g}")
    return value


#: ComfyUI's --listen without a value: every IPv4 and IPv6 address (its argparse `const`).
LISTEN_ALL = "0.0.0.0,::"
#: ComfyUI's argparse takes an unambiguous abbreviation of an option (--lis for --listen): swarmd counts
#: those of at least this many characters (--lis, --por); shorter ones are ambiguous in ComfyUI (--l, --p).
_OPTION_MIN = 5


def _option(arg: str, name: str) -> bool:
    """Whether `arg` (`--name`, `--name=value`, or an unambiguous abbreviation as argparse takes it) is the
    long option `name`."""
    given = arg.partition("=")[0]
    return given.startswith("--") and len(given) >= min(_OPTION_MIN, len(name)) and name.startswith(given)


def listen_value(args: list[str]) -> str | None:
    """What ComfyUI listens on as `args` (ExtraArgs, split) say: the value of the last --listen (its
    `0.0.0.0,::` when it has none, as ComfyUI's parser gives), or None when there is no --listen."""
    value = None
    for index, arg in enumerate(args):
        if arg == "--":
            break
        if _option(arg, "--listen"):
            if "=" in arg:
                value = arg.partition("=")[2]
            elif index + 1 < len(args) and not args[index + 1].startswith("-"):
                value = args[index + 1]
            else:
                value = LISTEN_ALL
    return value


def probe_host(listen: str | None) -> str:
    """The address readiness is checked at (and /free is posted to), for ComfyUI listening on `listen`
    (a comma-separated list, as ComfyUI's --listen takes; None: its default, 127.0.0.1).

    The first address of the list that loopback reaches: a wildcard is probed on loopback (0.0.0.0 at
    127.0.0.1, :: at ::1: ComfyUI's aiohttp listens on :: for IPv6 only), `localhost` at 127.0.0.1, a
    loopback address (127.0.0.1, 127.2.2.2, ::1) at itself. When none of them is, the first address itself
    (`--listen 192.168.1.5`: probed at 192.168.1.5, where ComfyUI answers). Returned as a URL host: an
    IPv6 address in brackets."""
    if listen is None:
        return "127.0.0.1"
    addresses = [address.strip() for address in listen.split(",") if address.strip()] or ["0.0.0.0"]
    hosts = [_loopback_for(address) for address in addresses]
    host = next((host for host in hosts if host is not None), addresses[0])
    return f"[{host}]" if ":" in host else host


def _loopback_for(address: str) -> str | None:
    """The loopback address that reaches a server listening on `address`, or None when none does."""
    if address.lower() == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.is_unspecified:
        return "127.0.0.1" if ip.version == 4 else "::1"
    return address if ip.is_loopback else None


@functools.lru_cache(maxsize=4096)
def check_extra_args(value: str) -> str:
    """ExtraArgs: a command line (as `check_command`) that leaves swarmd its --port, and whose --listen,
    if any, names addresses a URL can hold (readiness is checked there). Memoized, as `check_command`."""
    check_command(value)
    args = shlex.split(value)
    for arg in args:
        if arg == "--":
            raise SettingError("a bare -- would turn swarmd's own --port into a stray argument")
        if _option(arg, "--port"):
            raise SettingError("--port is set by swarmd (the port setting sets the port)")
    listen = listen_value(args)
    for address in (listen or "").split(","):
        address = address.strip()
        if address and _loopback_for(address) is None:
            try:
                parse_url(f"http://{f'[{address}]' if ':' in address else address}:1/")
            except BadUrl:
                raise SettingError(f"--listen: {describe(address)} is not an IP address or host name") from None
    return value


def venv_bin(python: str, script_dir: str) -> str:
    """The `bin` directory of the virtual environment `python` runs from, to put first on the child's PATH
    (as activating it would, and as SwarmUI does for ComfyUI's venv: tools its nodes run -- pip, ninja,
    git hooks -- are then the venv's); "" when it is not one. `python` is a venv's when it is the script's
    `venv/bin/python3`, or a path whose directory's parent holds a `pyvenv.cfg`."""
    if os.sep not in python:
        return ""  # found through PATH: not a venv of ours
    path = os.path.normpath(os.path.join(script_dir, python))  # a relative one runs from the script's directory
    directory = os.path.dirname(path)
    if path == os.path.join(script_dir, "venv", "bin", "python3"):
        return directory
    return directory if os.path.isfile(os.path.join(os.path.dirname(directory), "pyvenv.cfg")) else ""


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
                    "run through a shell). Not --port: swarmd sets it (from the port setting). A --listen here "
                    "is ComfyUI's address (swarmd then adds no --listen of its own) and readiness is checked "
                    "there: at 127.0.0.1 for 0.0.0.0 or a bare --listen, at the address given otherwise.",
                    placeholder="--lowvram", check=check_extra_args),
        SettingSpec("DisableInternalArgs", "boolean", False, "Unchecked: swarmd adds its internal arguments "
                    "(--listen 127.0.0.1 unless ExtraArgs has a --listen, and --preview-method from "
                    "EnablePreviews unless ExtraArgs has one). Checked: only --port, which it needs to "
                    "supervise ComfyUI (readiness is checked at 127.0.0.1:<port>, ComfyUI's default "
                    "address, or where ExtraArgs' --listen says)."),
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
        *health_settings(default=COMFY_HEALTH_CHECK),
        *account_settings(),
    )

    def lifecycle_config(self, settings: Mapping[str, Any]) -> LifecycleConfig:
        config = super().lifecycle_config(settings)
        return config if settings["AutoRestart"] else dataclasses.replace(config, restart="never")

    def free_body(self, system_ram: bool) -> dict[str, Any]:
        return {"unload_models": True, "free_memory": system_ram}

    def arguments(self, settings: Mapping[str, Any], port: int) -> list[str]:
        """main.py's arguments: ExtraArgs, then (unless DisableInternalArgs) swarmd's internal ones
        (`--listen 127.0.0.1` unless ExtraArgs gives a --listen, and `--preview-method` from EnablePreviews
        unless ExtraArgs gives one), then `--port N`. (Validation refuses a --port in ExtraArgs; were one
        there, swarmd's, last, would win: ComfyUI's parser keeps the last.)"""
        args = shlex.split(settings["ExtraArgs"])
        if not settings["DisableInternalArgs"]:
            if listen_value(args) is None:
                args += ["--listen", "127.0.0.1"]
            if not any(arg == "--preview-method" or arg.startswith("--preview-method=") for arg in args):
                args += ["--preview-method", PREVIEW_METHODS[settings["EnablePreviews"]]]
        return [*args, "--port", str(port)]

    def launch(self, settings: Mapping[str, Any], port: int) -> LaunchSpec:
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
        bin_dir = venv_bin(python, directory)
        if bin_dir:
            env["PATH"] = f"{bin_dir}:{os.environ.get('PATH', os.defpath)}"
        host = probe_host(listen_value(shlex.split(settings["ExtraArgs"])))
        health_check = settings["health_check"]
        if health_check == COMFY_HEALTH_CHECK:  # the default: where ComfyUI listens, as readiness
            health_check = f"http://{host}:{port}/system_stats"
        else:
            health_check = health_check.replace("{port}", str(port))
        if health_check.startswith("http://"):
            try:
                parse_url(health_check)
            except BadUrl as err:
                raise LaunchFailed(f"health_check {describe(health_check)} is not usable: {err}") from None
        return LaunchSpec(
            argv=argv, cwd=directory, env=env, unset_env=("PYTHONHOME", "PYTHONPATH"), port=port,
            ready_check=f"http://{host}:{port}/system_stats",
            health_check=health_check,
            free_memory=f"http://{host}:{port}/free",
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
        *health_timing_settings(interval=5.0),
        SettingSpec("check_interval", "decimal", 0.0, "The old name of health_interval, kept so that files "
                    "written before it load unchanged: when not 0, it is used as health_interval.",
                    minimum=0, check=check_old_interval),
    )

    def lifecycle_config(self, settings: Mapping[str, Any]) -> LifecycleConfig:
        # Every check counts: a remote that stops answering health_failures times in a row is unreachable.
        return LifecycleConfig(remote=True, allow_idle=settings["AllowIdle"],
                               **health_config(settings, checked=True,
                                               interval=settings["check_interval"] or None))

    def health_url(self, settings: Mapping[str, Any]) -> str:
        address = settings["Address"]
        return f"{address}/system_stats" if address else ""

    def free_url(self, settings: Mapping[str, Any]) -> str:
        address = settings["Address"]
        return f"{address}/free" if address else ""

    def free_body(self, system_ram: bool) -> dict[str, Any]:
        return {"unload_models": True, "free_memory": system_ram}
