"""One supervisor task per self-starting backend: start, probe, watch, restart by policy, stop.

Theory of operation
-------------------
`Supervisor.run()` loops over *generations*: pick a port, ask the backend type for a LaunchSpec, spawn the
child, then -- in one nursery -- pump its output, probe readiness (bounded by ready_timeout) and wait for
its exit through pidfd. When the child exits, the pure `RestartPolicy` decides: start again after a delay,
or settle (`errored`/`disabled`) until a person asks for a restart. A start that fails before exec settles
`errored` at once with the OS error: retrying a missing program is a spin, not a recovery.

The supervisor owns its backend's `Runtime` (status, pid, port, restarts, last exit) and writes nothing
else; the Fleet owns the backend's definition and reads the runtime. Stops the daemon asks for (`stop`,
`restart`, ready timeout) go through the stop ladder and never count as crashes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from subprocess import SubprocessError
from typing import Any

import trio

from swarmd import gpu
from swarmd.gpu import Pin
from swarmd.httpclient import HttpError, request
from swarmd.supervise.output import OutputRing
from swarmd.supervise.policy import Decision, Exit, RestartPolicy
from swarmd.supervise.probes import LogMatcher, wait_ready
from swarmd.supervise.process import (
    Child,
    ExitInfo,
    Guardian,
    describe_spawn_error,
    pump_lines,
    spawn,
)
from swarmd.types import BackendType, LaunchFailed, LaunchRefused, LaunchSpec

log = logging.getLogger("swarmd.supervisor")
backend_log = logging.getLogger("swarmd.backend")

TAIL_LINES = 20  # lines of output logged with an unexpected exit
DRAIN_SECONDS = 0.5  # after the leader exits, how long its output pipes may still deliver


@dataclass
class Runtime:
    """What is happening to one backend right now. Written only by its supervisor (or the Fleet while
    no supervisor exists)."""

    status: str = "waiting"
    status_message: str = "Waiting to load..."
    pid: int | None = None
    port: int | None = None
    restarts: int = 0
    starts: int = 0
    last_exit: ExitInfo | None = None
    pin: Pin = field(default_factory=Pin)  # the GPUs of the current (or last) start
    started_at: float | None = None  # wall clock
    ready_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def pick_free_port() -> int:
    """A port free on loopback right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BackendTask:
    """What the Fleet drives for one backend: `run()` as its task, then `stop()`, `kill_now()`,
    `restart()`, `reset_counters()` and `free_memory()`. Subclasses implement `_loop()`.

    `label` is a callable so that a change of id (EditBackend new_id) shows in the logs at once.
    """

    def __init__(self, *, label: Callable[[], str], backend_type: BackendType, settings: dict[str, Any],
                 runtime: Runtime, ring: OutputRing, on_change: Callable[[], None] = lambda: None) -> None:
        self._label = label
        self.type = backend_type
        self.settings = settings
        self.runtime = runtime
        self.ring = ring
        self._on_change = on_change
        self._scope = trio.CancelScope()
        self._done = trio.Event()
        self._kick = trio.Event()  # a restart request while settled or waiting out a delay

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The backend's task; returns after `stop()` (or when cancelled, after `_cleanup()`)."""
        try:
            with self._scope:
                task_status.started()
                await self._loop()
        finally:
            await self._cleanup()
            self._done.set()

    async def _loop(self) -> None:
        raise NotImplementedError

    async def _cleanup(self) -> None:
        """Runs as the task ends, also on cancellation."""

    async def stop(self) -> None:
        self._scope.cancel()
        await self._done.wait()

    def kill_now(self) -> None:
        self._scope.cancel()

    def reset_counters(self) -> None:
        """A person edited the backend without a restart."""

    async def restart(self) -> None:
        self._kick.set()

    async def free_memory(self, system_ram: bool) -> bool:
        return False


class Supervisor(BackendTask):
    """Keeps one backend's process alive according to its settings."""

    def __init__(self, *, label: Callable[[], str], backend_type: BackendType, settings: dict[str, Any],
                 runtime: Runtime, ring: OutputRing, guardian: Guardian | None,
                 on_change: Callable[[], None] = lambda: None,
                 place_gpus: Callable[[str], Pin] = gpu.resolve) -> None:
        super().__init__(label=label, backend_type=backend_type, settings=settings, runtime=runtime,
                         ring=ring, on_change=on_change)
        self._guardian = guardian
        self._place_gpus = place_gpus
        self.policy = RestartPolicy(backend_type.restart_config(settings))
        self.child: Child | None = None
        self.spec: LaunchSpec | None = None
        self._stopping = False
        self._restart_requested = False
        self._ready_failure: str | None = None

    # -- control (called by the Fleet) -----------------------------------------------------------------

    async def _cleanup(self) -> None:
        # Cancelled (not stopped): the group goes at once, never an orphan.
        if self.child is not None and self.child.running:
            self.child.kill_now()
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self.child.wait()

    async def stop(self) -> None:
        """Stop the child by its ladder and end the supervisor. Returns when both are done."""
        self._stopping = True
        child = self.child
        if child is not None and child.running and self.spec is not None:
            with trio.CancelScope(shield=True):
                await child.stop(self.spec.stop_signal, self.spec.stop_timeout)
        await super().stop()

    def kill_now(self) -> None:
        """SIGKILL the group at once (the daemon got a second SIGTERM)."""
        self._stopping = True
        if self.child is not None:
            self.child.kill_now()

    def reset_counters(self) -> None:
        """A person edited the backend without a restart: forget its failures and starts."""
        self.policy.reset()

    async def restart(self) -> None:
        """A person asked for a restart: forget failures, stop the current child, start again at once."""
        self.policy.reset()
        child = self.child
        if child is not None and child.running and self.spec is not None:
            self._restart_requested = True
            await child.stop(self.spec.stop_signal, self.spec.stop_timeout)
        else:
            self._kick.set()

    async def free_memory(self, system_ram: bool) -> bool:
        """Call the backend's free-memory hook. True when it answered success."""
        spec, child = self.spec, self.child
        if spec is None or child is None or not child.running or not spec.free_memory:
            return False
        hook = spec.free_memory
        if hook.startswith("signal:"):
            return _signal_leader(child, hook[7:])
        body = self.type.free_body(system_ram)
        try:
            response = await request("POST", hook, json_body=body, timeout=30.0)
        except HttpError as err:
            log.warning("%s: free memory: %s", self._label(), err)
            return False
        return 200 <= response.status < 300

    # -- the loop ----------------------------------------------------------------------------------------

    def _set(self, status: str, message: str = "") -> None:
        self.runtime.status = status
        self.runtime.status_message = message
        self._on_change()

    async def _loop(self) -> None:
        while True:
            decision = await self._generation()
            if self._stopping:
                await trio.sleep_forever()
            if decision is None:  # a restart a person asked for
                continue
            if decision.restart:
                self.runtime.restarts += 1
                self._set("waiting", decision.message)
                self._kick = trio.Event()
                with trio.move_on_after(decision.delay):
                    await self._kick.wait()
                continue
            self._set(decision.status, decision.message)
            level = logging.ERROR if decision.status == "errored" else logging.INFO
            log.log(level, "%s: %s", self._label(), decision.message)
            self._kick = trio.Event()
            await self._kick.wait()
            self.policy.reset()

    async def _generation(self) -> Decision | None:
        """Start one child and see it through to its exit. Returns what the policy decided, or None when a
        person asked for a restart."""
        port = self.type.requested_port(self.settings) or pick_free_port()
        try:
            spec = self.type.launch(self.settings, port)
        except LaunchRefused as err:
            return Decision(False, status="disabled", message=str(err))
        except LaunchFailed as err:
            return Decision(False, status="errored", message=str(err))
        if "gpu_id" in self.settings:
            try:
                pin = self._place_gpus(self.settings["gpu_id"])
            except gpu.PinError as err:
                return Decision(False, status="errored", message=f"cannot pin GPUs: {err}")
            self.runtime.pin = pin
            rocr = bool(self.settings.get("rocr_visible_devices"))
            spec = dataclasses.replace(spec, env={**spec.env, **pin.env(rocr)})
        self.spec = spec
        self._ready_failure = None
        self._restart_requested = False
        now = trio.current_time()
        self.policy.record_start(now)
        try:
            child, out_fd, err_fd = spawn(spec, self._guardian)
        except (OSError, ValueError, SubprocessError) as err:
            # Whatever a setting holds, a failed start is this backend's problem, never the daemon's.
            message = describe_spawn_error(err, spec)
            self.runtime.pid = None
            return Decision(False, status="errored", message=message)
        self.child = child
        self.runtime.starts += 1
        self.runtime.pid = child.pid
        self.runtime.port = port
        self.runtime.started_at = time.time()
        self.runtime.ready_at = None
        self._set("loading", f"Starting (pid {child.pid})")
        matcher = LogMatcher(spec.ready_check[4:]) if spec.ready_check.startswith("log:") else None
        label = self._label

        def on_line(stream: str, line: str) -> None:
            self.ring.append(stream, line)
            backend_log.info("%s: %s", label(), line)
            if matcher is not None:
                matcher.feed(line)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump_lines, out_fd, "stdout", on_line)
            nursery.start_soon(pump_lines, err_fd, "stderr", on_line)
            probe_scope = trio.CancelScope()
            nursery.start_soon(self._watch_readiness, spec, child, matcher, probe_scope)
            exit_info = await child.wait()
            probe_scope.cancel()
            # Give the pipes a moment to deliver the last lines, then stop reading (a grandchild that
            # escaped the group could hold them open forever).
            nursery.cancel_scope.deadline = trio.current_time() + DRAIN_SECONDS
        self.runtime.last_exit = exit_info
        self.runtime.pid = None
        if self._stopping:
            return None
        if self._restart_requested:
            log.info("%s: restarting on request (%s)", self._label(), exit_info.describe())
            return None
        if self._ready_failure is not None:
            text = f"{self._ready_failure} (then {exit_info.describe()})"
            failed = True
        else:
            text = exit_info.describe()
            failed = not exit_info.success
        self._log_exit(text, child)
        return self.policy.after_exit(trio.current_time(), Exit(failed=failed, text=text))

    async def _watch_readiness(self, spec: LaunchSpec, child: Child, matcher: LogMatcher | None,
                               scope: trio.CancelScope) -> None:
        with scope:
            timeout = spec.ready_timeout if spec.ready_timeout > 0 else float("inf")
            with trio.move_on_after(timeout) as probe:
                await wait_ready(spec.ready_check, spec.port, matcher)
            if probe.cancelled_caught:
                self._ready_failure = f"not ready within {timeout:g} s"
                log.warning("%s: %s: stopping it", self._label(), self._ready_failure)
                await child.stop(spec.stop_signal, spec.stop_timeout)
                return
            self.runtime.ready_at = time.time()
            self._set("running", "")
            log.info("%s: ready (pid %d, port %d)", self._label(), child.pid, spec.port)
            await trio.sleep(self.policy.config.stable_after)
            self.policy.stable()

    def _log_exit(self, text: str, child: Child) -> None:
        tail = self.ring.tail(TAIL_LINES)
        lines = "\n".join(f"  {line.stream}: {line.text}" for line in tail)
        log.warning("%s: pid %d %s%s", self._label(), child.pid, text,
                    f"; last output:\n{lines}" if lines else " (no output)")


def _signal_leader(child: Child, name: str) -> bool:
    """Send the free-memory signal to the backend's main process (not its whole group)."""
    try:
        os.kill(child.pid, signal.Signals[name])
        return True
    except (ProcessLookupError, PermissionError):
        return False
