"""The `process` type: any long-running program, supervised."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from swarmd.httpclient import BadUrl, parse_url
from swarmd.settings import SettingError, SettingSpec, describe
from swarmd.types.base import (
    BackendType,
    LaunchFailed,
    LaunchRefused,
    LaunchSpec,
    account_settings,
    check_command,
    check_env,
    check_free_memory,
    check_log_regex,
    check_ready_check,
    gpu_settings,
    health_settings,
    parse_env,
    restart_settings,
)


def fill_port(text: str, port: int) -> str:
    """Replace `{port}` (and only that placeholder) so other braces in a command stay as they are."""
    return text.replace("{port}", str(port))


class ProcessType(BackendType):
    id = "process"
    name = "Process"
    description = "Any long-running program, started and supervised by swarmd."
    is_standard = False
    can_load_models = False
    settings = (
        SettingSpec("command", "text", "", "Command line, split like a shell would (never run through a "
                    "shell). {port} is replaced by the backend's port.",
                    placeholder="python3 -m http.server --bind 127.0.0.1 {port}", check=check_command),
        SettingSpec("cwd", "text", "", "Working directory (empty: the daemon's).", placeholder="/srv/app"),
        SettingSpec("env", "text", "", "Extra environment, KEY=VALUE per line (or a mapping in the file).",
                    placeholder="KEY=VALUE", mapping_ok=True, check=check_env),
        *gpu_settings(default=""),
        SettingSpec("port", "integer", 0, "TCP port (0: a free port is picked at each start). Exported as "
                    "PORT.", minimum=0, maximum=65535),
        SettingSpec("ready_check", "text", "none", "How to know it is ready: none, tcp (connect to the "
                    "port), http://... (answers 2xx/3xx; {port} replaced) or log:REGEX (an output line "
                    "matches).", placeholder="http://127.0.0.1:{port}/", check=check_ready_check),
        *health_settings(default="none"),
        *restart_settings(ready_timeout=60.0),
        *account_settings(),
        SettingSpec("free_memory", "text", "", "How to ask it to free memory: empty (not supported), "
                    "http://... (POST with {\"system_ram\": bool}; {port} replaced) or signal:SIGUSR1.",
                    check=check_free_memory),
        SettingSpec("max_usages", "integer", 1, "How many generations may use it at once (<= 0: never "
                    "picked).", minimum=-(2**31)),
    )

    def launch(self, settings: Mapping[str, Any], port: int) -> LaunchSpec:
        command = settings["command"]
        if not command.strip():
            raise LaunchRefused("No command set: edit the backend's 'command' setting to start it.")
        # Split as validated (check_command): stripped first, a valid "x \\ " would be an invalid "x \\".
        argv = tuple(fill_port(part, port) for part in shlex.split(command))
        env = parse_env(settings["env"])
        if port:
            env.setdefault("PORT", str(port))
        ready_check = fill_port(settings["ready_check"], port)
        health_check = fill_port(settings["health_check"], port)
        free_memory = fill_port(settings["free_memory"], port)
        # Validated with the shortest and the longest port; checked again with this one, so that a surprise
        # fails this start (the backend's problem), never the probe, the hook or the supervisor.
        for name, text in (("ready_check", ready_check), ("health_check", health_check),
                           ("free_memory", free_memory)):
            if text.startswith("http://"):
                try:
                    parse_url(text)
                except BadUrl as err:
                    raise LaunchFailed(f"{name} {describe(text)} is not usable: {err}") from None
        if ready_check.startswith("log:"):
            try:
                check_log_regex(ready_check[4:])
            except SettingError as err:
                raise LaunchFailed(f"ready_check: {err}") from None
        return LaunchSpec(
            argv=argv,
            cwd=settings["cwd"] or None,
            env={k: fill_port(v, port) for k, v in env.items()},
            port=port,
            ready_check=ready_check,
            health_check=health_check,
            free_memory=free_memory,
        )
