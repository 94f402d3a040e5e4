"""The shell around one backend's lifecycle: it carries out the machine's effects and feeds events back.

Theory of operation
-------------------
`BackendShell.feed(event)` hands an event to the backend's `Lifecycle` (the pure state machine, the only
writer of its status) and carries out the effects it returns, synchronously: spawning is a task, a timer
is a deadline, a signal is a syscall. Events raised while effects run (a spawn that fails at once, a
process without a readiness check that is ready at once) are queued and handled in order, never
re-entrantly.

Tasks run in the nursery the shell is given, and only while there is something to wait for. A live process
has none: the daemon's one reader (supervise/pipes.py) reads its output and watches its pidfd, and once it
has exited one task reaps it, lets its pipes drain and reports the exit (`_run_process`). Then: one for the
readiness check while loading, one for the health probes while running (when it has a health_check), one
for a remote backend's health checks. Its timers are entries in the daemon's one `Timers` heap, fired by one
task for every backend (supervise/timers.py). A backend at rest has no task at all.

Fault boundary: every task of the shell runs inside `_guarded`, and every effect inside `feed`'s. Whatever
raises there -- a backend type's launch, a probe, a free-memory hook, a bug of ours -- is logged with its
traceback and fed to the machine as `Faulted`: that one backend settles `errored` with the exception in
its status message (its process group is killed), and the daemon and every other backend carry on.
Cancellation and KeyboardInterrupt still stop everything (a cancelled shell kills its process group).

Time comes from trio's clock and processes from an injected `Spawner`, so the shell's timing (backoff,
start limit, stable reset, ready timeout, stop ladder) is tested on the autojump clock with a fake
spawner, and end to end with real children.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from subprocess import SubprocessError
from typing import Any, Protocol

import trio

from swarmd import gpu, logs
from swarmd.gpu import Pin
from swarmd.httpclient import HttpError, request
from swarmd.supervise import ports
from swarmd.supervise.lifecycle import (
    TIMER_EVENTS,
    ArmTimer,
    CancelReady,
    CancelTimer,
    CheckNow,
    Effect,
    Event,
    Exited,
    Faulted,
    HealthFailed,
    HealthOk,
    Lifecycle,
    LifecycleConfig,
    Log,
    Monitor,
    Ready,
    RemoteDown,
    RemoteUp,
    SignalGroup,
    Spawn,
    Spawned,
    SpawnFailed,
    StartFailed,
    StartRefused,
    State,
    Timer,
    WatchHealth,
    WatchReady,
    shared_config,
)
from swarmd.supervise.output import LogLine, OutputRing
from swarmd.supervise.pipes import ExitWatcher
from swarmd.supervise.probes import backend_owns, probe_once, wait_ready
from swarmd.supervise.process import ExitInfo, describe_spawn_error
from swarmd.supervise.stats import BackendStats
from swarmd.supervise.timers import Entry, Timers
from swarmd.types import BackendType, LaunchFailed, LaunchRefused, LaunchSpec

log = logging.getLogger("swarmd.supervisor")

TAIL_LINES = 20  # lines of output logged with an unexpected exit
TELLING_LINES = 200  # the newest lines of a process's output searched for its telling line
DRAIN_SECONDS = 0.5  # after the leader exits, how long its output pipes may still deliver
CLEANUP_SECONDS = 2.0  # a cancelled shell waits this long for its SIGKILLed process
#: Where each timer's entry is in a shell's `_armed` (a list of four: a dict per shell costs twice that).
_TIMER_SLOTS: dict[Timer, int] = {timer: slot for slot, timer in enumerate(Timer)}
_NO_PIN = gpu.UNPINNED  # every shell's pin until its first pinned start


class Output(Protocol):
    """A process's output being read (see `supervise.pipes.PipeGroup`)."""

    @property
    def closed(self) -> trio.Event:
        """Set once every pipe reached end of file (or reading it failed)."""

    def release(self) -> None:
        """Stop reading (the last partial line is delivered) and close the pipes. Idempotent."""


class Process(Protocol):
    """One running process of a backend, as the shell sees it (see `supervise.process.ChildProcess`)."""

    pid: int

    async def wait(self) -> ExitInfo:
        """Wait for it to exit (and its process group to be killed); may be called again."""

    async def contained(self) -> None:
        """After `wait`: return once every other process of this start (what left its group) is gone."""

    def signal_group(self, signum: int) -> None:
        """Send `signum` to its whole process group (nothing when it is gone)."""

    def on_exit(self, watcher: ExitWatcher) -> None:
        """Call `watcher.exited()` once it has exited (from the event loop, by no task of the caller), or
        `watcher.cancelled()` if the daemon stops at once first. Raises OSError when its exit cannot be
        watched."""

    def read_output(self, on_output: Callable[[str, str], None]) -> Output:
        """Start delivering its output, `on_output(stream, text)` once per chunk read (`text`: the chunk's
        complete lines, joined by "\\n") -- read by the daemon's one reader, no task of the caller. Raises
        OSError when the pipes cannot be watched."""


#: Starts a process from a LaunchSpec. Raises OSError, ValueError or SubprocessError when it cannot.
Spawner = Callable[[LaunchSpec], Process]


def pick_free_port() -> int:
    """A port free on loopback right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _ExitWatch:
    """What the daemon's reader calls when a running process of `shell` exits (`ExitWatcher`): one small
    object per start."""

    __slots__ = ("_shell", "_process", "_output")

    def __init__(self, shell: BackendShell, process: Process, output: Output) -> None:
        self._shell, self._process, self._output = shell, process, output

    def exited(self) -> None:
        self._shell._start_run(self._process, self._output, None)

    def cancelled(self) -> None:  # the reader was cancelled (the daemon stops at once): never an orphan
        self._output.release()
        self._process.signal_group(signal.SIGKILL)


class BackendShell:
    """Carries out one backend's lifecycle. Owns its current process, readiness check, health probes,
    timers and remote monitor; the `Lifecycle` owns its state. The Fleet sets `type`/`settings` and feeds
    events."""

    __slots__ = ("label", "type", "settings", "ring", "machine", "stats", "spec", "pin", "_nursery",
                 "_spawner", "_place_gpus", "_port_owner", "_on_change", "_timers", "_process", "_spawn_id",
                 "_first_seq", "_containing", "_queue", "_feeding", "_changed", "_armed", "_ready_scope",
                 "_matcher", "_health_scope", "_monitor_scope", "_check_now", "__weakref__")

    def __init__(self, *, label: str, backend_type: BackendType, settings: Mapping[str, Any],
                 ring: OutputRing, nursery: trio.Nursery, spawner: Spawner,
                 place_gpus: Callable[[str, BackendShell], Pin] = lambda gpu_id, shell: gpu.place(gpu_id, {}),
                 on_change: Callable[[], None] = lambda: None,
                 port_owner: Callable[[int], Awaitable[str | None]] = ports.find_owner,
                 timers: Timers | None = None) -> None:
        """`label` names the backend in the log (`backend-<id>`; the Fleet updates it when the id changes).
        `place_gpus(gpu_id, shell)` resolves a pin at each start; `port_owner(port)` says who else listens
        on a fixed port (None: nobody); `timers` fires its timers (the Fleet's, shared by every backend; by
        default one of its own, in `nursery`). The callables must not hold the shell
        (or its Backend): a cycle would outlive a deleted backend once the heap is frozen."""
        self.label = label
        self.type = backend_type
        self.settings = settings
        self.ring = ring
        self.machine = Lifecycle(config=shared_config(backend_type.lifecycle_config(settings)))
        self.stats = BackendStats()  # what the metrics count for this backend (supervise/stats.py)
        self.spec: LaunchSpec | None = None  # of the current (or last) process
        self.pin = _NO_PIN  # the GPUs of the current (or last) process
        self._nursery = nursery
        self._spawner = spawner
        self._place_gpus = place_gpus
        self._port_owner = port_owner
        self._on_change = on_change
        self._timers = timers if timers is not None else Timers(nursery)
        self._process: Process | None = None
        self._spawn_id = 0  # the latest Spawn effect's: an older spawn task that awaited gives way
        self._first_seq = 0  # the ring's last line before the current process started
        self._containing = 0  # processes that exited whose escaped descendants are still being killed
        self._queue: list[Event] = []  # (a list: an empty deque costs ten times as much, per backend)
        self._feeding = False
        # Events are made when someone waits: a thousand backends at rest hold none.
        self._changed: trio.Event | None = None  # wait_for's
        self._armed: list[Entry | None] = [None] * len(_TIMER_SLOTS)  # each armed timer's entry in `_timers`
        self._ready_scope: trio.CancelScope | None = None
        self._matcher: re.Pattern[str] | None = None  # a log: readiness check, while loading
        self._health_scope: trio.CancelScope | None = None  # the running health probes' (`_watch_health`)
        self._monitor_scope: trio.CancelScope | None = None
        self._check_now: trio.Event | None = None  # the remote monitor's, while it waits

    # -- the machine's door ---------------------------------------------------------------------------------

    def feed(self, event: Event) -> None:
        """Hand `event` to the machine and carry out its effects (and those of the events they raise)."""
        self._queue.append(event)
        if self._feeding:
            return  # an effect raised this event: the loop below takes it next
        self._feeding = True
        try:
            while self._queue:
                self._handle(self._queue.pop(0))
        finally:
            self._feeding = False
        self._notify()

    def _notify(self) -> None:
        """Wake whoever waits for a change (`wait_for`) and tell the Fleet."""
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()
        self._on_change()

    def _handle(self, event: Event) -> None:
        """One event through the machine, then its effects: the fault boundary of everything synchronous."""
        before, now = self.machine.state, trio.current_time()
        try:
            effects = self.machine.handle(event, now)
        except Exception as err:
            log.exception("%s: the lifecycle could not take %s", self.label, type(event).__name__)
            if not isinstance(event, Faulted):
                self._fault(err)
            return
        self.stats.observe(event, before, self.machine, now)  # ready since, start-to-ready (metrics)
        for effect in effects:
            try:
                self._do(effect)
            except Exception as err:
                log.exception("%s: carrying out %s failed", self.label, type(effect).__name__)
                if not isinstance(event, Faulted):  # while faulting: best effort, the rest still runs
                    self._fault(err)
                    return

    def _fault(self, err: Exception) -> None:
        self._queue.clear()
        self._handle(Faulted(_describe(err)))

    def configure(self, backend_type: BackendType, settings: Mapping[str, Any]) -> LifecycleConfig:
        """Use `backend_type` and `settings` from the next start on; returns the new lifecycle config
        (feed it as `Reconfigured`)."""
        self.type, self.settings = backend_type, settings
        return shared_config(backend_type.lifecycle_config(settings))

    async def wait_for(self, predicate: Callable[[Lifecycle], bool]) -> None:
        """Return once `predicate(lifecycle)` holds (checked after every change)."""
        while not predicate(self.machine):
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()

    async def wait_at_rest(self) -> None:
        """Return once no process is left -- also none that escaped its group -- and nothing is starting
        (after a stop, say)."""
        await self.wait_for(lambda machine: machine.at_rest and not self._containing)

    @property
    def pid(self) -> int | None:
        return self.machine.pid

    # -- effects ---------------------------------------------------------------------------------------------

    def _do(self, effect: Effect) -> None:
        match effect:
            case Spawn():
                self._spawn_id += 1
                self._nursery.start_soon(self._guarded, "start", self._spawn, self._spawn_id)
            case WatchReady():
                self._watch_ready()
            case CancelReady():
                self._cancel_ready()
            case SignalGroup(signum=signum):
                if self._process is not None:
                    self._process.signal_group(signum)
            case ArmTimer(timer=timer, seconds=seconds):
                self._arm(timer, seconds)
            case CancelTimer(timer=timer):
                self._disarm(timer)
            case WatchHealth(on=on):
                self._watch_health(on)
            case Monitor(on=on):
                self._monitor(on)
            case CheckNow():
                if self._check_now is not None:
                    self._check_now.set()
            case Log(level=level, message=message, tail=tail):
                self._log(level, message, tail)
            case _:  # pragma: no cover - the Effect union is closed
                raise AssertionError(effect)

    async def _spawn(self, spawn_id: int) -> None:
        """Start one process from the current settings and report how it went."""
        if self.machine.state is not State.STARTING:
            return  # stopped (or faulted) before this task ran
        settings, backend_type = self.settings, self.type
        fixed = backend_type.requested_port(settings)
        port = fixed or pick_free_port()
        try:
            spec = backend_type.launch_spec(settings, port)
        except LaunchRefused as err:
            self.feed(StartRefused(str(err)))
            return
        except LaunchFailed as err:
            self.feed(SpawnFailed(str(err)))
            return
        if fixed:
            # A fixed port that another process listens on: this start fails at once, saying who holds
            # it (never a child that dies with "address already in use" while the other answers the probe).
            busy = await self._port_owner(fixed)
            if self.machine.state is not State.STARTING or spawn_id != self._spawn_id:
                return  # stopped (or stopped and started again) while the walk ran
            if busy:
                self.feed(StartFailed(busy))
                return
        pin_setting = backend_type.gpu_setting
        if pin_setting in settings:
            try:
                pin = self._place_gpus(str(settings[pin_setting]), self)
            except gpu.PinError as err:
                self.feed(SpawnFailed(f"cannot pin GPUs: {err}"))
                return
            self.pin = pin
            pinned_env = pin.env(bool(settings.get(backend_type.rocr_setting)))
            if pinned_env:  # (a start without GPUs keeps the spec it has: nothing more to hold per backend)
                spec = dataclasses.replace(spec, env={**spec.env, **pinned_env})
        try:
            process = self._spawner(spec)
        except (OSError, ValueError, SubprocessError) as err:
            # Whatever a setting holds, a failed start is this backend's problem, never the daemon's.
            self.feed(SpawnFailed(describe_spawn_error(err, spec)))
            return
        self._process, self.spec = process, spec
        self._first_seq = self.ring.last_seq  # its output starts after this line
        self._matcher = None
        self._watch_process(process)
        self.feed(Spawned(process.pid, port))

    def _watch_process(self, process: Process) -> None:
        """Have the output of `process` read and its exit awaited by the daemon's reader -- no task of this
        shell while it runs -- and `_run_process` started once it has exited. If either cannot be watched,
        that task starts at once with the error: it kills the group, and the error faults this backend."""
        try:
            output = process.read_output(self._on_output)
        except Exception as err:
            self._start_run(process, None, err)
            return
        try:
            process.on_exit(_ExitWatch(self, process, output))
        except Exception as err:
            self._start_run(process, output, err)

    def _start_run(self, process: Process, output: Output | None, failure: Exception | None) -> None:
        """Start `_run_process` for `process`: it has exited, or could not be watched (`failure`)."""
        self._nursery.start_soon(self._guarded, "process", self._run_process, process, output, failure)

    async def _run_process(self, process: Process, output: Output | None, failure: Exception | None) -> None:
        """Reap `process`, which has exited (or could not be watched: `failure`), let its pipes deliver their
        last lines, and report the exit. A cancelled or failed run kills the group."""
        exit_info: ExitInfo | None = None
        try:
            if failure is not None:
                raise failure
            assert output is not None
            exit_info = await process.wait()  # at once: it has exited
            # Give the pipes a moment to deliver the last lines, then stop reading (a grandchild that
            # escaped the group could hold them open forever).
            with trio.move_on_after(DRAIN_SECONDS):
                await output.closed.wait()
        finally:
            if output is not None:
                output.release()
            if exit_info is None:  # cancelled (the daemon stops at once), or no output: never an orphan
                process.signal_group(signal.SIGKILL)
                with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_SECONDS):
                    await process.wait()
        if self._process is process:
            self._process = None
        self._containing += 1  # the exit is news now; its escaped processes are killed meanwhile
        try:
            output = self.ring.since(self._first_seq, newest=TELLING_LINES)
            self.feed(Exited(process.pid, exit_info, telling_line(output)))
            await process.contained()
        finally:
            self._containing -= 1
            self._notify()

    def _on_output(self, stream: str, text: str) -> None:
        """One chunk of the process's output (see `supervise.pipes`): into the ring and the daemon's log as
        one piece; a `log:` readiness pattern is matched line by line, only while loading. Called by the
        daemon's pipe reader, which serves every backend: whatever fails here is this backend's fault."""
        try:
            self.ring.append_lines(stream, text)
            logs.forward_output(self.label, stream, text)
            matcher = self._matcher
            if matcher is not None and any(matcher.search(line) for line in text.split("\n")):
                self._matcher = None
                self.feed(Ready(self.machine.pid))
        except Exception as err:
            log.exception("%s: reading its output failed", self.label)
            self.feed(Faulted(f"output: {_describe(err)}"))

    def _watch_ready(self) -> None:
        spec, pid = self.spec, self.machine.pid
        if spec is None or pid is None:
            return
        check = spec.ready_check
        if check in ("", "none"):
            self.feed(Ready(pid))
        elif check.startswith("log:"):
            self._matcher = re.compile(check[4:])
        else:
            self._ready_scope = trio.CancelScope()
            self._nursery.start_soon(self._guarded, "readiness check", self._probe_ready, check, spec.port, pid,
                                     self._ready_scope)

    async def _probe_ready(self, check: str, port: int, pid: int, scope: trio.CancelScope) -> None:
        with scope:
            # pid is the child's process group (each start runs in its own session)
            await wait_ready(check, port, backend_owns(check, port, pid))
            self.feed(Ready(pid))

    def _cancel_ready(self) -> None:
        self._matcher = None
        if self._ready_scope is not None:
            self._ready_scope.cancel()
            self._ready_scope = None

    # -- timers --------------------------------------------------------------------------------------------

    def _arm(self, timer: Timer, seconds: float) -> None:
        """Have `timer` fire in `seconds` (armed again: the earlier deadline is forgotten)."""
        self._disarm(timer)
        self._armed[_TIMER_SLOTS[timer]] = self._timers.arm(self, timer, trio.current_time() + seconds)

    def _disarm(self, timer: Timer) -> None:
        slot = _TIMER_SLOTS[timer]
        entry = self._armed[slot]
        if entry is not None:
            self._armed[slot] = None
            self._timers.cancel(entry)

    def timer_due(self, timer: Timer, entry: Entry) -> None:
        """Called by `_timers` when `entry` is due: fire `timer`, if that entry is still the one armed (not
        cancelled nor armed again meanwhile). Whatever raises faults this backend: this is the timers'
        fault boundary, as `_guarded` is a task's."""
        slot = _TIMER_SLOTS[timer]
        if self._armed[slot] is not entry:
            return
        self._armed[slot] = None
        try:
            self.feed(TIMER_EVENTS[timer]())
        except Exception as err:
            log.exception("%s: timer failed", self.label)
            self.feed(Faulted(f"timer: {_describe(err)}"))

    # -- health checks (liveness) ----------------------------------------------------------------------------

    def _watch_health(self, on: bool) -> None:
        """Stop the health probes that run, if any; with `on`, start probing the current process with its
        spec's health_check, every health_interval of the current config (none: nothing to probe)."""
        if self._health_scope is not None:
            self._health_scope.cancel()
            self._health_scope = None
        spec, pid = self.spec, self.machine.pid
        if not on or spec is None or pid is None or spec.health_check in ("", "none"):
            return
        config = self.machine.config
        self._health_scope = scope = trio.CancelScope()
        self._nursery.start_soon(self._guarded, "health check", self._probe_health, spec.health_check, spec.port,
                                 pid, config.health_interval, config.health_timeout, scope)

    async def _probe_health(self, check: str, port: int, pid: int, interval: float, timeout: float,
                            scope: trio.CancelScope) -> None:
        """Probe `check` every `interval` seconds (start to start; the first one an interval after ready,
        which was itself a probe) and report each result for `pid`, until cancelled. One probe at a time:
        a slow one delays the next, never overlaps it. The deadline is kept here, whatever the probe does."""
        with scope:
            due = trio.current_time() + interval
            while True:
                await trio.sleep_until(due)
                began = trio.current_time()
                problem: str | None = f"no answer within {timeout:g} s"
                with trio.move_on_after(timeout):
                    problem = await probe_once(check, port, timeout)
                # time.time(), not trio's clock: health.last_ok is shown to people as a date
                self.feed(HealthOk(pid, time.time()) if problem is None else HealthFailed(problem, pid))
                due = max(began + interval, trio.current_time())

    # -- remote backends --------------------------------------------------------------------------------------

    def _monitor(self, on: bool) -> None:
        if self._monitor_scope is not None:
            self._monitor_scope.cancel()
            self._monitor_scope = None
        if not on:
            return
        url = self.type.health_url(self.settings)
        if not url:
            self._queue.append(StartRefused("No Address set: edit the backend's 'Address' setting."))
            return
        self._monitor_scope = trio.CancelScope()
        config = self.machine.config  # already the new one when a Reconfigured turns it on again
        self._nursery.start_soon(self._guarded, "health check", self._poll_remote, url, config.health_interval,
                                 config.health_timeout, self._monitor_scope)

    async def _poll_remote(self, url: str, interval: float, timeout: float, scope: trio.CancelScope) -> None:
        """Check `url` every `interval` seconds, start to start (or at once when asked), each check given
        `timeout` seconds, until cancelled. The lifecycle counts the failures (health_failures in a row:
        unreachable)."""
        with scope:
            while True:
                began = trio.current_time()
                problem: str | None = f"no answer within {timeout:g} s"
                with trio.move_on_after(timeout):
                    problem = await probe_once(url, 0, timeout)
                self.feed(RemoteDown(problem) if problem is not None else RemoteUp(time.time()))
                self._check_now = trio.Event()
                with trio.move_on_at(began + interval):
                    await self._check_now.wait()

    # -- hooks -----------------------------------------------------------------------------------------------

    async def free_memory(self, system_ram: bool) -> bool:
        """Ask the backend to free memory through its hook. True when it answered success; False when it
        has no hook, is not running, or failed. An exception of ours faults the backend (not the caller)."""
        try:
            freed = await self._free_memory(system_ram)
        except Exception as err:
            log.exception("%s: free memory failed", self.label)
            self.feed(Faulted(f"free memory: {_describe(err)}"))
            freed = False
        self.stats.freed(freed)
        return freed

    async def _free_memory(self, system_ram: bool) -> bool:
        if self.machine.state is not State.RUNNING:
            return False
        if self.machine.config.remote:
            url = self.type.free_url(self.settings)
        else:
            spec, process = self.spec, self._process
            if spec is None or process is None or not spec.free_memory:
                return False
            url = spec.free_memory
            if url.startswith("signal:"):
                return _signal_leader(process.pid, url[7:])
        if not url:
            return False
        try:
            response = await request("POST", url, json_body=self.type.free_body(system_ram), timeout=30.0)
        except HttpError as err:
            log.warning("%s: free memory: %s", self.label, err)
            return False
        return 200 <= response.status < 300

    # -- the fault boundary ------------------------------------------------------------------------------------

    async def _guarded(self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run one of this backend's tasks; an exception settles the backend `errored`, never the daemon."""
        try:
            await fn(*args)
        except Exception as err:
            log.exception("%s: %s failed", self.label, what)
            self.feed(Faulted(f"{what}: {_describe(err)}"))

    def _log(self, level: int, message: str, tail: bool) -> None:
        if not tail:
            log.log(level, "%s: %s", self.label, message)
        else:
            lines = "\n".join(f"  {line.stream}: {line.text}" for line in self.ring.tail(TAIL_LINES))
            log.log(level, "%s: %s%s", self.label, message,
                    f"; last output:\n{lines}" if lines else " (no output)")
        if level >= logging.WARNING:  # a failure goes to the backend's own log too, where people look
            self.ring.append("swarmd", message)


_TRACEBACK = "Traceback (most recent call last):"
#: The most telling line is shown in a status message, not a page of it.
TELLING_LINE_MAX = 300


def telling_line(lines: Sequence[LogLine]) -> str:
    """The most telling line of a process's last output: the exception line of its last Python traceback,
    else its last stderr line, else its last line (stripped, bounded; "" without output). The daemon's own
    notes ("swarmd" lines) are not the process's output."""
    output = [line for line in lines if line.stream != "swarmd" and line.text.strip()]
    for index in range(len(output) - 1, -1, -1):
        if output[index].text.startswith(_TRACEBACK):
            for line in output[index + 1:]:
                if not line.text[:1].isspace():  # the frames are indented; the exception line is not
                    return _bounded(line.text)
            break
    stderr = [line for line in output if line.stream == "stderr"]
    chosen = stderr[-1] if stderr else (output[-1] if output else None)
    return _bounded(chosen.text) if chosen is not None else ""


def _bounded(text: str) -> str:
    text = text.strip()
    return text if len(text) <= TELLING_LINE_MAX else text[:TELLING_LINE_MAX - 3] + "..."


def _describe(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _signal_leader(pid: int, name: str) -> bool:
    """Send the free-memory signal to the backend's main process (not its whole group)."""
    try:
        os.kill(pid, signal.Signals[name])
        return True
    except (ProcessLookupError, PermissionError, KeyError):
        return False
