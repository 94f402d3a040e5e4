"""What every backend type is: a settings schema plus how to launch, probe and free one backend.

A type is a stateless object. The supervisor asks it, at each start, to turn the backend's settings into a
`LaunchSpec` (argv, environment, readiness check, stop ladder); the Fleet asks it for the published schema
and for defaults. Types never touch processes themselves.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import shlex
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from swarmd import gpu
from swarmd.httpclient import BadUrl, parse_url
from swarmd.settings import SettingError, SettingSpec, describe, is_env_name
from swarmd.supervise.lifecycle import LifecycleConfig


class LaunchRefused(Exception):
    """The settings cannot start a process (e.g. empty command): the backend settles `disabled`.

    `str(err)` is the status message shown to the user.
    """


class LaunchFailed(Exception):
    """The settings name something that is not there (e.g. a missing script): the backend is `errored`
    at once, never retried in a loop. `str(err)` is the status message."""


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """Everything needed to start one process of a backend, placeholders already filled in."""

    argv: tuple[str, ...]
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # added to (and overriding) the daemon's env
    unset_env: tuple[str, ...] = ()
    port: int = 0
    ready_check: str = "none"  # none | tcp | http://... | log:REGEX
    health_check: str = "none"  # none | tcp | http://...: probed every health_interval once running
    free_memory: str = ""  # "" | http://... | signal:NAME
    user: str = ""  # run as this user (name or uid; "" = the daemon's user)
    group: str = ""  # with this primary group ("" = the user's)
    memory_max: str = ""  # cgroup v2 memory.max ("" = no limit)
    cpu_weight: int = 0  # cgroup v2 cpu.weight (0 = the default)


class BackendType:
    """Base class of backend types. Subclasses set the class attributes and override `launch`."""

    id: str = ""
    name: str = ""
    description: str = ""
    is_standard: bool = False
    self_starting: bool = True
    can_load_models: bool = True
    features: tuple[str, ...] = ()
    settings: tuple[SettingSpec, ...] = ()
    #: The name of the setting that pins the backend to GPUs: the supervisor passes its value to
    #: `gpu.place` at each start. `process` calls it `gpu_id` (the default), `comfyui_selfstart` SwarmUI's
    #: `GPU_ID`. "" on an instance whose type has no such setting (`comfyui_api`).
    gpu_setting: str = "gpu_id"
    #: The name of the boolean setting that also exports the pin as ROCR_VISIBLE_DEVICES; "" when none.
    rocr_setting: str = "rocr_visible_devices"

    def __init__(self) -> None:
        self._by_name = {spec.name: spec for spec in self.settings}
        if self.gpu_setting not in self._by_name:
            self.gpu_setting = ""
        if self.rocr_setting not in self._by_name:
            self.rocr_setting = ""

    def spec(self, name: str) -> SettingSpec | None:
        return self._by_name.get(name)

    def nearest_setting(self, name: str) -> str | None:
        """The known setting name closest to `name`, or None when none is close.

        Case, `_` and `-` are ignored first (`start_script`, `startscript` -> `StartScript`; `GPU_ID` ->
        `gpu_id` on a process), then the closest by difflib's ratio (at least 0.6): `StartScrpt` ->
        `StartScript`. A name longer than 100 characters gets no suggestion (difflib is quadratic).
        """
        if not isinstance(name, str) or len(name) > 100:
            return None
        folded = {_fold(spec.name): spec.name for spec in self.settings}
        key = _fold(name)
        if key in folded:
            return folded[key]
        close = difflib.get_close_matches(key, list(folded), n=1, cutoff=0.6)
        return folded[close[0]] if close else None

    def unknown_setting_message(self, name: Any) -> str:
        """The message for a settings key that no setting of this type has, without a location:

            unknown setting 'StartScrpt' for type 'comfyui_selfstart' (did you mean 'StartScript'?)
            unknown setting 'colour' for type 'process' (known: command, cwd, env, ...)

        It names the key as given (bounded by `describe`: a 1 MB key gives a short message) and the
        nearest known name (`nearest_setting`), else every known name in declaration order. Setting names
        are case-sensitive, as in SwarmUI, so `startscript` and the old snake_case `start_script` are
        unknown too (and get "did you mean 'StartScript'?").

        Used for the backends file (`backends_file.parser`, which adds FILE:LINE:COL) and meant for the API
        (AddNewBackend/EditBackend's `settings`: refuse the whole request with this message rather than
        ignore the key, as SwarmUI would -- a misspelled key must never read as "saved"). Never raises.
        """
        near = self.nearest_setting(name)
        known = ", ".join(spec.name for spec in self.settings)
        hint = f"did you mean {near!r}?" if near else f"known: {known}"
        return f"unknown setting {describe(name)} for type {self.id!r} ({hint})"

    def defaults(self) -> dict[str, Any]:
        """Every setting at its default value, in declaration order."""
        return {spec.name: spec.default for spec in self.settings}

    def to_api(self) -> dict[str, Any]:
        """The ListBackendTypes entry."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "settings": [spec.to_api() for spec in self.settings],
            "is_standard": self.is_standard,
        }

    def max_usages(self, settings: Mapping[str, Any]) -> int:
        """SwarmUI's max_usages: 1 + OverQueue for the ComfyUI types, the `max_usages` setting otherwise."""
        if "OverQueue" in settings:
            return 1 + int(settings["OverQueue"])
        return int(settings.get("max_usages", 1))

    # -- remote (not self-starting) types ----------------------------------------------------------

    def health_url(self, settings: Mapping[str, Any]) -> str:
        """For a remote type: the URL whose 2xx answer means the backend is up."""
        raise NotImplementedError

    def free_url(self, settings: Mapping[str, Any]) -> str:
        """For a remote type: where FreeBackendMemory POSTs (empty: not supported)."""
        return ""

    def requested_port(self, settings: Mapping[str, Any]) -> int:
        """The fixed port to use, or 0 to pick a free one at each start."""
        return int(settings.get("port", 0))

    def lifecycle_config(self, settings: Mapping[str, Any]) -> LifecycleConfig:
        """What the backend's lifecycle needs of its settings: the restart policy and the timeouts (a
        remote type overrides this)."""
        return LifecycleConfig(
            **health_config(settings, checked=settings["health_check"] != "none"),
            restart=settings["restart"],
            restart_delay=settings["restart_delay"],
            restart_delay_max=settings["restart_delay_max"],
            start_limit_burst=settings["start_limit_burst"],
            start_limit_interval=settings["start_limit_interval"],
            stable_after=settings["stable_after"],
            ready_timeout=settings["ready_timeout"],
            stop_signal=signal.Signals[settings["stop_signal"]],
            stop_timeout=settings["stop_timeout"],
        )

    def free_body(self, system_ram: bool) -> dict[str, Any]:
        """The JSON body POSTed to an http:// free-memory hook."""
        return {"system_ram": system_ram}

    def launch(self, settings: Mapping[str, Any], port: int) -> LaunchSpec:
        """Build the LaunchSpec for one start. Raises LaunchRefused when nothing can be started."""
        raise NotImplementedError

    def launch_spec(self, settings: Mapping[str, Any], port: int) -> LaunchSpec:
        """`launch`, plus who it runs as and its limits (`account_settings`), common to every type."""
        spec = self.launch(settings, port)
        return dataclasses.replace(spec, user=settings.get("user", ""), group=settings.get("group", ""),
                                   memory_max=settings.get("memory_max", ""),
                                   cpu_weight=int(settings.get("cpu_weight", 0)))


def _fold(name: str) -> str:
    """A setting name as `nearest_setting` compares it: lower case, without `_` and `-`."""
    return name.lower().replace("_", "").replace("-", "")


# -- validators shared by the types ----------------------------------------------------------------------
#
# Each check receives an already-typed value (text already passed `check_text`) and raises SettingError
# (or ValueError) -- never anything else, whatever the value: the fuzz test in
# tests/unit/test_validation_fuzz.py holds every setting of every type to that, and to "what validation
# accepts, `launch` can use".

#: The ports a `{port}` placeholder is tried with: the shortest and the longest a start can fill in.
PLACEHOLDER_PORTS = (1, 65535)


@functools.lru_cache(maxsize=4096)
def check_command(value: str) -> str:
    """A command line split like a shell would; never run through a shell. Memoized: every reload checks
    every backend's command, and shlex is slow (an eighth of a reload of 1000 backends)."""
    try:
        shlex.split(value)
    except ValueError as err:
        raise SettingError(f"cannot split command line: {err}") from None
    return value


def check_http_url(value: str, *, port_placeholder: bool = False) -> str:
    """An http:// URL that `httpclient.request` can use: a host (a name, IPv4, or IPv6 in brackets as in
    `http://[::1]:8188`), a port 1-65535 when given, no user:password@, no #fragment, printable ASCII.

    With `port_placeholder`, `{port}` may stand for the backend's port: the URL must be valid with any
    port filled in. Returns the URL stripped, its scheme lower-cased. Raises SettingError naming the
    problem: "expected an http:// URL with a host and a port 1-65535, got 'http://h:99999/' (port 99999
    out of range)".
    """
    text = value.strip()
    if text[:7].lower() == "http://":
        text = "http://" + text[7:]
    filled = [text.replace("{port}", str(port)) for port in PLACEHOLDER_PORTS] if port_placeholder else [text]
    for url in filled:
        try:
            parse_url(url)
        except BadUrl as err:
            raise SettingError(f"expected an http:// URL with a host and a port 1-65535, "
                               f"got {describe(value)} ({err})") from None
    return text


def check_log_regex(pattern: str) -> re.Pattern[str]:
    """The REGEX of a `log:REGEX` readiness check, compiled. Raises SettingError, whatever the pattern:
    `re.compile` also raises RecursionError (deep nesting), OverflowError (huge repeat counts) and
    MemoryError on pathological patterns."""
    try:
        return re.compile(pattern)
    except re.error as err:
        raise SettingError(f"invalid regular expression after 'log:': {err}") from None
    except (RecursionError, OverflowError, MemoryError, ValueError) as err:
        raise SettingError(f"invalid regular expression after 'log:': {type(err).__name__}") from None


def _probe_check(text: str) -> str | None:
    """`text` (stripped) as a probe both checks accept -- none, tcp or http://... ({port} allowed) --
    normalized; None when it is none of them. Raises SettingError for a bad URL."""
    if text in ("", "none"):
        return "none"
    if text == "tcp":
        return text
    if text.lower().startswith(("http://", "https://")):
        return check_http_url(text, port_placeholder=True)
    return None


def check_ready_check(value: str) -> str:
    """none | tcp | http://... ({port} allowed) | log:REGEX ({port} filled in too, as at start)."""
    text = value.strip()
    if text.startswith("log:"):
        for port in PLACEHOLDER_PORTS:
            check_log_regex(text[4:].replace("{port}", str(port)))
        return text
    probe = _probe_check(text)
    if probe is None:
        raise SettingError(f"expected none, tcp, http://... or log:REGEX, got {describe(value)}")
    return probe


def check_health_check(value: str) -> str:
    """none | tcp | http://... ({port} allowed): a probe that can be repeated while the backend runs (not
    log:REGEX: output says nothing about whether it still answers)."""
    text = value.strip()
    probe = _probe_check(text)
    if probe is not None:
        return probe
    hint = " (log:REGEX is a readiness check only)" if text.startswith("log:") else ""
    raise SettingError(f"expected none, tcp or http://... ({{port}} allowed), got {describe(value)}{hint}")


def check_signal(value: str) -> str:
    return signal_name(value)


def signal_name(value: str) -> str:
    """Normalize 'term', 'SIGTERM', '15' to 'SIGTERM'. Raises SettingError for anything else."""
    text = str(value).strip().upper()
    if text.isascii() and text.isdigit():
        number = int(text) if len(text) <= 3 else -1
        try:
            return signal.Signals(number).name
        except ValueError:
            shown = text if len(text) <= 12 else text[:12] + "..."
            raise SettingError(f"no signal number {shown}") from None
    if not text.startswith("SIG"):
        text = "SIG" + text
    if text not in signal.Signals.__members__:
        raise SettingError(f"unknown signal {describe(value)} (e.g. SIGTERM, SIGINT, SIGUSR1)")
    return text


def check_env(value: str) -> str:
    parse_env(value)
    return value


def parse_env(value: str) -> dict[str, str]:
    """KEY=VALUE lines (blank lines and #comments skipped) -> dict. Raises SettingError naming the line.

    KEY is an environment name (ASCII letters, digits, _; not starting with a digit)."""
    env: dict[str, str] = {}
    for number, line in enumerate(value.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, val = stripped.partition("=")
        key = key.strip()
        if not sep or not is_env_name(key):
            raise SettingError(f"line {number}: expected KEY=VALUE, got {describe(stripped)}")
        env[key] = val
    return env


def check_free_memory(value: str) -> str:
    """empty | http://... ({port} allowed) | signal:NAME."""
    text = value.strip()
    if not text:
        return ""
    if text.lower().startswith(("http://", "https://")):
        return check_http_url(text, port_placeholder=True)
    if text.startswith("signal:"):
        return "signal:" + signal_name(text[7:])
    raise SettingError(f"expected empty, http://... or signal:NAME, got {describe(value)}")


def check_gpu_id(value: str) -> str:
    """A GPU pin setting (`gpu_id`, `GPU_ID`): syntax always; that the GPUs exist when NVML can see the
    machine (against the inventory taken at start: no NVML call)."""
    try:
        return gpu.validate(value)
    except gpu.PinError as err:
        raise SettingError(str(err)) from None


#: What a GPU pin setting takes, for its description.
GPU_PIN_HELP = ("GPUs to pin it to, as nvidia-smi numbers them: an index (0), a list (0,1), a GPU UUID or "
                "unique prefix, a MIG UUID, or auto (the least used GPU at each start). Empty: not pinned. "
                "The child gets CUDA_DEVICE_ORDER=PCI_BUS_ID and CUDA_VISIBLE_DEVICES with the GPUs' UUIDs.")


def gpu_setting_spec(name: str, default: str, description: str = GPU_PIN_HELP) -> SettingSpec:
    """A GPU pin setting (the type names it in `BackendType.gpu_setting`)."""
    return SettingSpec(name, "text", default, description, placeholder="0", check=check_gpu_id)


def rocr_setting_spec() -> SettingSpec:
    """The boolean that also exports the pin as ROCR_VISIBLE_DEVICES (`BackendType.rocr_setting`)."""
    return SettingSpec("rocr_visible_devices", "boolean", False, "Also set ROCR_VISIBLE_DEVICES to the pin "
                       "(AMD ROCm).")


def gpu_settings(default: str) -> tuple[SettingSpec, ...]:
    """The GPU pin settings of the `process` type: `gpu_id` and `rocr_visible_devices`."""
    return gpu_setting_spec("gpu_id", default), rocr_setting_spec()


_ACCOUNT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]{1,10}")
_MEMORY_RE = re.compile(r"max|[0-9]{1,15}[KMGT]?")


def check_account_name(value: str) -> str:
    """A user or group as written: a name or a numeric id (whether it exists is checked where the file
    is validated, off the event loop). Raises SettingError."""
    text = value.strip()
    if text and not _ACCOUNT_RE.fullmatch(text):
        raise SettingError(f"expected a user or group name or a numeric id, got {describe(value)}")
    return text


def check_memory_max(value: str) -> str:
    """cgroup v2's memory.max: `max`, or bytes with an optional K/M/G/T suffix. Raises SettingError."""
    text = value.strip()
    if text and not _MEMORY_RE.fullmatch(text):
        raise SettingError(f"expected bytes with an optional K, M, G or T suffix (8G, 512M) or max, got "
                           f"{describe(value)}")
    return text


def account_settings() -> tuple[SettingSpec, ...]:
    """Who a self-starting backend runs as and what it may use."""
    return (
        SettingSpec("user", "text", "", "Run it as this user (a name or uid); the daemon must run as root. "
                    "Empty: the daemon's own user.", placeholder="comfy", check=check_account_name),
        SettingSpec("group", "text", "", "Its primary group (a name or gid). Empty: the user's own.",
                    check=check_account_name),
        SettingSpec("memory_max", "text", "", "Memory limit of all its processes (cgroup v2 memory.max: "
                    "8G, 512M, max), where swarmd has a delegated cgroup. Empty: no limit.",
                    placeholder="8G", check=check_memory_max),
        SettingSpec("cpu_weight", "integer", 0, "CPU share of all its processes (cgroup v2 cpu.weight, "
                    "1-10000; 100 is the default share), where swarmd has a delegated cgroup. 0: not set.",
                    minimum=0, maximum=10000),
    )


#: The shortest health_interval: probes are sequential, so this bounds a backend's probes per second.
HEALTH_INTERVAL_MIN = 0.05


def health_timing_settings(*, interval: float = 10.0) -> tuple[SettingSpec, ...]:
    """health_interval, health_timeout and health_failures: how often a backend that runs is probed and
    how many failures in a row mean it no longer answers (every self-starting type, and `comfyui_api`)."""
    return (
        SettingSpec("health_interval", "decimal", interval, "Seconds between health checks once it runs "
                    "(checks never overlap).", minimum=HEALTH_INTERVAL_MIN),
        SettingSpec("health_timeout", "decimal", 5.0, "Seconds a health check may take; no answer in time "
                    "is a failed check.", minimum=0.01),
        SettingSpec("health_failures", "integer", 3, "Failed health checks in a row after which it counts "
                    "as not answering: a process is stopped and restarted by the restart policy.", minimum=1),
    )


def health_settings(*, default: str = "none") -> tuple[SettingSpec, ...]:
    """The liveness settings of a self-starting type: `health_check` and its timing."""
    return (
        SettingSpec("health_check", "text", default, "How to know it still answers once running: none, tcp "
                    "(connect to the port) or http://... (answers 2xx/3xx; {port} replaced), every "
                    "health_interval seconds. After health_failures failures in a row it is stopped and "
                    "restarted by the restart policy.", placeholder="http://127.0.0.1:{port}/",
                    check=check_health_check),
        *health_timing_settings(),
    )


def health_config(settings: Mapping[str, Any], *, checked: bool, interval: float | None = None) -> dict[str, Any]:
    """The LifecycleConfig fields of the health settings (`checked`: whether probes apply at all)."""
    return {"health_checks": checked,
            "health_interval": settings["health_interval"] if interval is None else interval,
            "health_timeout": settings["health_timeout"], "health_failures": settings["health_failures"]}


def restart_settings(*, ready_timeout: float, restart_default: str = "on-failure") -> tuple[SettingSpec, ...]:
    """The restart/stop settings every self-starting type shares."""
    return (
        SettingSpec("restart", "dropdown", restart_default, "When to start the process again after it exits: "
                    "always, on-failure (non-zero exit or killed by a signal), or never.",
                    values=("always", "on-failure", "never")),
        SettingSpec("restart_delay", "decimal", 0.1, "Seconds to wait before the first restart; each "
                    "further failure doubles it.", minimum=0),
        SettingSpec("restart_delay_max", "decimal", 30.0, "The longest wait between restarts, in seconds.",
                    minimum=0),
        SettingSpec("start_limit_burst", "integer", 5, "At most this many starts inside start_limit_interval;"
                    " a failure that would need one more marks the backend errored.", minimum=1),
        SettingSpec("start_limit_interval", "decimal", 60.0, "The window, in seconds, of start_limit_burst.",
                    minimum=0),
        SettingSpec("stable_after", "decimal", 10.0, "Seconds of being ready after which the restart delay "
                    "and failure count are reset.", minimum=0),
        SettingSpec("ready_timeout", "decimal", ready_timeout, "Seconds a start may take to become ready "
                    "before it counts as failed (0 = no limit).", minimum=0),
        SettingSpec("stop_signal", "text", "SIGTERM", "Signal sent to the process group to stop it.",
                    check=check_signal),
        SettingSpec("stop_timeout", "decimal", 10.0, "Seconds to wait after stop_signal before SIGKILL.",
                    minimum=0),
    )
