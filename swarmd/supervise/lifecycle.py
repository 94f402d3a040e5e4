"""The lifecycle of one backend, as data: a pure state machine, the only writer of a backend's status.

Theory of operation
-------------------
A `Lifecycle` knows what is happening to one backend and decides what happens next; it does no I/O and
reads no clock. Its shell (`swarmd.supervise.shell`) starts processes, sends signals, runs probes and
timers, and tells the machine what happened as *events*, each with the time it happened (trio's clock, so
tests drive it with the autojump clock). `handle(event, now)` moves the machine to its next state and
returns the *effects* the shell must carry out: spawn a process, start or cancel its readiness check,
start or stop its health probes, signal its process group, arm or cancel a timer, switch a remote monitor
on or off, write a log line.

The machine absorbs the restart policy:

* Which exits restart: `always` every exit; `on-failure` a non-zero status, death by a signal, or a start
  that did not become ready in time; `never` none. Exits the daemon asked for never reach the policy.
* Backoff: the n-th consecutive restart waits `restart_delay * 2**(n-1)`, capped at `restart_delay_max`.
* Start limit: at most `start_limit_burst` starts inside any `start_limit_interval` window; a restart
  that would be one too many settles `errored` with a message that says how to retry -- never a silent
  crash loop.
* Ready for `stable_after` seconds (the STABLE timer) forgets the consecutive exits; a person's start,
  restart or a change of its settings forgets everything (SwarmUI never resets its attempts; swarmd does).

Liveness: readiness is checked once per start; after it, a backend with a health check (`health_checks`)
is probed every `health_interval` seconds by the shell, which reports `HealthOk` or `HealthFailed`. The
machine counts consecutive failures of the current process: below `health_failures` the backend stays
`running` (the count, the last error and the last answer are in `health_view`); at the count it is stopped
by its ladder and the restart policy applies as for a failure, its message saying
`not answering health checks for N s (last: <error>)`. Probes run only while RUNNING: every way out of
LOADING/RUNNING also carries `WatchHealth off`, and a probe result for another pid, or while stopping, is
ignored. A remote backend counts its failed checks the same way (RUNNING stays RUNNING until the count).
A GPU that fails (`GpuFailed`, fed by the Fleet to the backends whose process runs on it) stops the backend
by its ladder as a failure, its message naming the GPU; where the policy restarts it, the shell's placement
never puts it back on that GPU.

A start that fails before exec (missing program, a GPU pin that names no GPU) settles `errored` at once:
retrying it would be a spin, not a recovery. Settings that cannot start anything (no command) settle
`disabled`; the backend is still wanted, so the edit that sets a command starts it.

States are finer than SwarmUI's; `status` gives the name the API shows (waiting, loading, running,
errored, disabled, idle). A STOPPING backend shows as `waiting` when a start follows the stop, else as
`disabled` (SwarmUI marks a backend disabled as its shutdown begins).

Transitions of a process backend (`*` is any state; "then" is what follows the stop in progress)::

    state              event             guard                       next      effects
    DISABLED, ERRORED  StartRequested    no process left             STARTING  Spawn
    DISABLED, ERRORED  StartRequested    a faulted process dying     STOPPING  SignalGroup SIGKILL (then: start)
    BACKOFF            StartRequested                                STARTING  CancelTimer DELAY, Spawn
    STOPPING           StartRequested                                STOPPING  (then: start)
    STARTING           Spawned                                       LOADING   ArmTimer READY, WatchReady
    STARTING           SpawnFailed                                   ERRORED   Log
    STARTING           StartRefused                                  DISABLED  Log
    STARTING           StartFailed       policy restarts             BACKOFF   ArmTimer DELAY, Log
    STARTING           StartFailed       policy settles              ERRORED   Log
    STARTING           StopRequested     the spawn is not done yet   DISABLED  (the shell spawns only in STARTING)
    DISABLED, ERRORED  Spawned           a spawn that lost the race  (same)    SignalGroup SIGKILL
    LOADING            Ready                                         RUNNING   CancelTimer READY, ArmTimer STABLE, Log, WatchHealth on if checked
    LOADING            ReadyTimedOut                                 STOPPING  CancelReady, SignalGroup, ArmTimer STOP, Log
    RUNNING            Stable                                        RUNNING   (failures forgotten)
    RUNNING            HealthOk                                      RUNNING   (health failures forgotten)
    RUNNING            HealthFailed      below health_failures       RUNNING   (health failure counted)
    RUNNING            HealthFailed      health_failures reached     STOPPING  WatchHealth off, SignalGroup, ArmTimer STOP, Log
    STOPPING           HealthFailed                                  STOPPING  (ignored: the stop goes on)
    LOADING, RUNNING   GpuFailed                                     STOPPING  CancelReady, WatchHealth off, SignalGroup, ArmTimer STOP, Log
    LOADING, RUNNING   Exited            policy restarts             BACKOFF   CancelReady, ArmTimer DELAY, Log
    LOADING, RUNNING   Exited            restarts, restart_delay 0   STARTING  CancelReady, Spawn, Log
    LOADING, RUNNING   Exited            policy settles              ERRORED   CancelReady, Log (DISABLED for a clean exit)
    LOADING, RUNNING   StopRequested                                 STOPPING  CancelReady, SignalGroup, ArmTimer STOP
    LOADING, RUNNING   RestartRequested  wanted                      STOPPING  CancelReady, SignalGroup, ArmTimer STOP
    LOADING, RUNNING   Reconfigured      wanted                      STOPPING  CancelReady, SignalGroup (old config), ArmTimer STOP
    STOPPING           StopRequested                                 STOPPING  (then: settle disabled)
    STOPPING           RestartRequested  wanted                      STOPPING  (then: start)
    STOPPING           Reconfigured      wanted                      STOPPING  (then: start)
    STOPPING           StopTimedOut                                  STOPPING  SignalGroup SIGKILL, Log
    STOPPING           Exited            then: settle                DISABLED  CancelTimer STOP
    STOPPING           Exited            then: start                 STARTING  CancelTimer STOP, Spawn
    STOPPING           Exited            then: not ready             BACKOFF   CancelTimer STOP, ArmTimer DELAY, Log (or ERRORED)
    BACKOFF            DelayElapsed                                  STARTING  Spawn
    BACKOFF            StopRequested                                 DISABLED  CancelTimer DELAY
    BACKOFF            RestartRequested  wanted                      STARTING  CancelTimer DELAY, Spawn
    BACKOFF            Reconfigured      wanted                      STARTING  CancelTimer DELAY, Spawn
    DISABLED, ERRORED  RestartRequested  wanted, no process          STARTING  Spawn
    DISABLED, ERRORED  Reconfigured      wanted, no process          STARTING  Spawn
    DISABLED, ERRORED  StopRequested                                 DISABLED
    DISABLED, ERRORED  Exited            a faulted process ended     (same)    (the exit is recorded)
    *                  KillRequested     a process is alive          (same)    SignalGroup SIGKILL
    *                  Faulted                                       ERRORED   cancel everything, SignalGroup SIGKILL if alive, Log

Transitions of a remote backend (a `comfyui_api` address: nothing to spawn, only health checks; the
`*` rows above apply too)::

    state                           event             guard                    next         effects
    DISABLED, ERRORED               StartRequested                             CHECKING     Monitor on
    DISABLED, ERRORED               RestartRequested  wanted                   CHECKING     Monitor on
    CHECKING, RUNNING, UNREACHABLE  RemoteUp                                   RUNNING      Log (on change)
    CHECKING, UNREACHABLE           RemoteDown                                 UNREACHABLE  Log (on change)
    RUNNING                         RemoteDown        below health_failures    RUNNING      (health failure counted)
    RUNNING                         RemoteDown        health_failures reached  UNREACHABLE  Log
    CHECKING, RUNNING, UNREACHABLE  StartRefused      no address               DISABLED     Monitor off, Log
    CHECKING, RUNNING, UNREACHABLE  StopRequested                              DISABLED     Monitor off
    CHECKING, RUNNING, UNREACHABLE  RestartRequested  wanted                   (same)       CheckNow
    CHECKING, RUNNING, UNREACHABLE  Reconfigured      wanted                   CHECKING     Monitor off, Monitor on

`Reconfigured` on a backend that is not wanted only replaces the configuration. A change of kind (a
process type edited into a remote one, or back) goes through the same rows: the old kind is stopped, the
new one starts from the new configuration. Every other (state, event) pair changes nothing.
"""

from __future__ import annotations

import enum
import logging
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from swarmd.supervise.process import ExitInfo


class State(enum.Enum):
    DISABLED = "disabled"  # not wanted, or settled after a clean exit; no process
    ERRORED = "errored"  # settled after a failure (a person must act); no process once it has exited
    STARTING = "starting"  # a spawn is on its way
    LOADING = "loading"  # the process runs, not ready yet
    RUNNING = "running"  # ready
    BACKOFF = "backoff"  # waiting out the delay before an automatic restart
    STOPPING = "stopping"  # the stop ladder runs
    CHECKING = "checking"  # remote: monitored, no answer yet
    UNREACHABLE = "unreachable"  # remote: its health check fails


class Timer(enum.Enum):
    DELAY = "delay"  # backoff before an automatic restart
    READY = "ready"  # ready_timeout of a start
    STABLE = "stable"  # stable_after once ready
    STOP = "stop"  # stop_timeout of the stop ladder


# -- configuration -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    """What the machine needs of a backend's settings (the backend type builds it)."""

    remote: bool = False
    restart: str = "on-failure"  # always | on-failure | never
    restart_delay: float = 0.1
    restart_delay_max: float = 30.0
    start_limit_burst: int = 5
    start_limit_interval: float = 60.0
    stable_after: float = 10.0
    ready_timeout: float = 60.0  # 0: no limit
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 10.0
    allow_idle: bool = False  # remote: show "idle" rather than "errored" while unreachable
    #: Liveness: whether the backend is probed once running (a process with a health_check; every remote).
    health_checks: bool = False
    health_interval: float = 10.0  # seconds between the starts of two probes (they never overlap)
    health_timeout: float = 5.0  # a probe without an answer within this many seconds failed
    health_failures: int = 3  # consecutive failed probes that stop a process (a remote: unreachable)


_SHARED_CONFIGS: dict[LifecycleConfig, LifecycleConfig] = {}
_MAX_SHARED_CONFIGS = 1024


def shared_config(config: LifecycleConfig) -> LifecycleConfig:
    """`config`, or an equal one already in use: backends mostly share a policy, so they share one frozen
    object (bounded: past 1024 distinct configs, each new one is kept by its backend alone)."""
    known = _SHARED_CONFIGS.get(config)
    if known is not None:
        return known
    if len(_SHARED_CONFIGS) < _MAX_SHARED_CONFIGS:
        _SHARED_CONFIGS[config] = config
    return config


# -- events (what happened) -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartRequested:
    """The backend should run: enabled at load, toggled on, added."""


@dataclass(frozen=True)
class StopRequested:
    """The backend should not run: disabled, deleted, the daemon stopping. `message` is its status then."""

    message: str = "Disabled"


@dataclass(frozen=True)
class RestartRequested:
    """A person asked for a restart (RestartBackends)."""


@dataclass(frozen=True)
class KillRequested:
    """SIGKILL now (a second SIGTERM to the daemon while it stops)."""


@dataclass(frozen=True)
class Reconfigured:
    """The backend's type or settings changed; `config` is the new configuration."""

    config: LifecycleConfig


@dataclass(frozen=True)
class Spawned:
    pid: int
    port: int | None = None


@dataclass(frozen=True)
class SpawnFailed:
    """The start failed before the program ran (missing program or directory, a bad GPU pin)."""

    message: str


@dataclass(frozen=True)
class StartFailed:
    """This start cannot run now but may later (its fixed port is held by another process): a failed
    start for the restart policy, backoff and start limit included."""

    message: str


@dataclass(frozen=True)
class StartRefused:
    """The settings cannot start anything (no command, no address)."""

    message: str


@dataclass(frozen=True)
class Ready:
    pid: int | None = None  # of the process that became ready (None: the current one)


@dataclass(frozen=True)
class Exited:
    pid: int
    exit: ExitInfo
    cause: str = ""  # the most telling line of its last output (see shell.telling_line), if any


@dataclass(frozen=True)
class ReadyTimedOut:
    pass


@dataclass(frozen=True)
class Stable:
    pass


@dataclass(frozen=True)
class DelayElapsed:
    pass


@dataclass(frozen=True)
class StopTimedOut:
    pass


@dataclass(frozen=True)
class RemoteUp:
    at: float | None = None  # wall-clock time (time.time()) of the answer, shown as health.last_ok


@dataclass(frozen=True)
class RemoteDown:
    problem: str


@dataclass(frozen=True)
class HealthOk:
    """A health probe of process `pid` (None: the current one) answered; `at` is the wall-clock time
    (time.time()) of the answer, shown as health.last_ok (the machine reads no clock)."""

    pid: int | None = None
    at: float | None = None


@dataclass(frozen=True)
class HealthFailed:
    """A health probe of process `pid` (None: the current one) failed; `error` says how (no answer within
    5 s, connection refused, HTTP 500)."""

    error: str
    pid: int | None = None


@dataclass(frozen=True)
class GpuFailed:
    """A GPU the backend's process runs on failed (a critical Xid, or NVML lost it). `gpu` names it as a
    person reads it (`1 (NVIDIA H200, GPU-2222...)`), `reason` says what happened (`Xid 79 (GPU has fallen
    off the bus)`)."""

    gpu: str
    reason: str


@dataclass(frozen=True)
class Faulted:
    """Something raised inside the backend's task: a type's launch, a probe, a hook, a bug of ours."""

    message: str


Event = (StartRequested | StopRequested | RestartRequested | KillRequested | Reconfigured | Spawned
         | SpawnFailed | StartFailed | StartRefused | Ready | Exited | ReadyTimedOut | Stable | DelayElapsed | StopTimedOut
         | RemoteUp | RemoteDown | HealthOk | HealthFailed | GpuFailed | Faulted)

#: The event each timer delivers when it fires.
TIMER_EVENTS: dict[Timer, type] = {Timer.DELAY: DelayElapsed, Timer.READY: ReadyTimedOut, Timer.STABLE: Stable,
                                   Timer.STOP: StopTimedOut}


# -- effects (what the shell must do) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Spawn:
    """Start a process from the current settings; report Spawned, SpawnFailed or StartRefused."""


@dataclass(frozen=True)
class WatchReady:
    """Start the readiness check of the new process; report Ready."""


@dataclass(frozen=True)
class CancelReady:
    """Stop the readiness check, if one runs."""


@dataclass(frozen=True)
class WatchHealth:
    """Start (on) or stop (off) the health probes of the current process, every `health_interval` s with
    the current settings; report HealthOk/HealthFailed. Off when none runs is nothing."""

    on: bool


@dataclass(frozen=True)
class SignalGroup:
    signum: int


@dataclass(frozen=True)
class ArmTimer:
    timer: Timer
    seconds: float


@dataclass(frozen=True)
class CancelTimer:
    timer: Timer


@dataclass(frozen=True)
class Monitor:
    """Remote: health checks on (anew, with the current settings) or off; report RemoteUp/RemoteDown."""

    on: bool


@dataclass(frozen=True)
class CheckNow:
    """Remote: check at once."""


@dataclass(frozen=True)
class Log:
    level: int
    message: str
    tail: bool = False  # add the process's last output lines


Effect = (Spawn | WatchReady | CancelReady | WatchHealth | SignalGroup | ArmTimer | CancelTimer | Monitor | CheckNow
          | Log)


# -- what follows a stop ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settle:
    state: State
    message: str


@dataclass(frozen=True)
class _StartAgain:
    pass


@dataclass(frozen=True)
class _Failed:
    text: str  # "not ready within 5 s"


_Then = _Settle | _StartAgain | _Failed

_ALIVE = (State.LOADING, State.RUNNING)
_REMOTE = (State.CHECKING, State.RUNNING, State.UNREACHABLE)


@dataclass(slots=True)
class Lifecycle:
    """The lifecycle of one backend. Read anything; change it only through `handle`."""

    config: LifecycleConfig = field(default_factory=LifecycleConfig)
    state: State = State.DISABLED
    message: str = "Disabled"
    wanted: bool = False  # a start was requested and no stop since
    pid: int | None = None  # the live process, if any
    port: int | None = None  # of the current (or last) process
    starts: int = 0  # processes spawned, ever
    restarts: int = 0  # automatic restarts, ever
    last_exit: ExitInfo | None = None
    consecutive_exits: int = 0
    #: Liveness, where health checks apply (see `health_view`): consecutive failed probes of the current
    #: process (or remote), the last probe error seen (kept across restarts: it says why the last one
    #: was stopped), the wall-clock time of the last probe that answered.
    health_failures: int = 0
    health_error: str = ""
    health_ok_at: float | None = None
    #: The status the API shows (SwarmUI's names), kept current by `handle`: ListBackends of a thousand
    #: backends reads it a thousand times.
    status: str = "disabled"
    #: Bumped by every `handle`: what is made of this machine's fields is good while it stays the same
    #: (ListBackends keeps each backend's runtime part encoded, keyed on it).
    version: int = 0
    _start_times: list[float] = field(default_factory=list)  # oldest first (a deque: 600 B per backend)
    _then: _Then | None = None
    _health_since: float = 0.0  # the machine's time of the last answer (or of becoming running)

    # -- reading ----------------------------------------------------------------------------------------

    def _api_status(self) -> str:
        state = self.state
        if state in (State.STARTING, State.BACKOFF, State.CHECKING):
            return "waiting"
        if state is State.STOPPING:
            return "disabled" if isinstance(self._then, _Settle) else "waiting"
        if state is State.UNREACHABLE:
            return "idle" if self.config.allow_idle else "errored"
        return state.value

    def health_view(self) -> dict[str, object] | None:
        """`full_data`'s `health` where health checks apply (None elsewhere): the consecutive failures of
        the current process, the last error (None when none was seen), the wall-clock time of the last
        probe that answered (None before any)."""
        if not self.config.health_checks:
            return None
        return {"failures": self.health_failures, "last_error": self.health_error or None,
                "last_ok": self.health_ok_at}

    @property
    def at_rest(self) -> bool:
        """No process, nothing starting: the backend stays as it is until asked."""
        return self.pid is None and self.state in (State.DISABLED, State.ERRORED)

    # -- the transitions ------------------------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Effect]:
        """Apply `event` (which happened at `now`); return the effects to carry out, in order."""
        handler = getattr(self, f"_on_{type(event).__name__}")
        effects: list[Effect] = []
        handler(event, now, effects)
        self.status = self._api_status()
        self.version += 1
        return effects

    def _on_StartRequested(self, event: StartRequested, now: float, out: list[Effect]) -> None:
        self.wanted = True
        self._forget_failures()
        self._start(now, out)

    def _start(self, now: float, out: list[Effect]) -> None:
        """Start from wherever the backend is (a person or the Fleet asked; not the policy)."""
        state = self.state
        if state is State.STOPPING:
            self._then = _StartAgain()
        elif self.config.remote:
            if state in (State.DISABLED, State.ERRORED) and self.pid is None:
                self._set(State.CHECKING, "Waiting to load...")
                out.append(Monitor(True))
        elif state in (State.DISABLED, State.ERRORED, State.BACKOFF):
            if self.pid is not None:  # a faulted process still dying: start once it is gone
                self._set(State.STOPPING, "Restarting")
                self._then = _StartAgain()
                out.append(SignalGroup(signal.SIGKILL))
                return
            if state is State.BACKOFF:
                out.append(CancelTimer(Timer.DELAY))
            self._spawn(out)

    def _on_StopRequested(self, event: StopRequested, now: float, out: list[Effect]) -> None:
        self.wanted = False
        state = self.state
        if self.config.remote and state in _REMOTE:
            out.append(Monitor(False))
            self._set(State.DISABLED, event.message)
        elif state in _ALIVE:
            self._stop(_Settle(State.DISABLED, event.message), out)
        elif state is State.STOPPING:
            self._then = _Settle(State.DISABLED, event.message)
        else:
            if state is State.BACKOFF:
                out.append(CancelTimer(Timer.DELAY))
            self._set(State.DISABLED, event.message)

    def _on_RestartRequested(self, event: RestartRequested, now: float, out: list[Effect]) -> None:
        if not self.wanted:
            return
        self._forget_failures()
        state = self.state
        if self.config.remote and state in _REMOTE:
            out.append(CheckNow())
        elif state in _ALIVE:
            self._stop(_StartAgain(), out, message="Restarting")
        elif state is not State.STARTING:
            self._start(now, out)

    def _on_Reconfigured(self, event: Reconfigured, now: float, out: list[Effect]) -> None:
        old, self.config = self.config, event.config
        if not self.wanted:
            return
        self._forget_failures()
        state = self.state
        if old.remote and state in _REMOTE:
            out.append(Monitor(False))
            if self.config.remote:
                self._set(State.CHECKING, "Waiting to load...")
                out.append(Monitor(True))
            else:
                self._set(State.DISABLED, "Restarting with new settings")
                self._spawn(out)
        elif state in _ALIVE:
            # The old process is stopped by the old configuration's ladder.
            self._stop(_StartAgain(), out, message="Restarting with new settings", config=old)
        elif state is State.STOPPING:
            self._then = _StartAgain()
        elif state is not State.STARTING:
            self._start(now, out)

    def _on_KillRequested(self, event: KillRequested, now: float, out: list[Effect]) -> None:
        if self.pid is not None:
            out.append(SignalGroup(signal.SIGKILL))

    def _on_Spawned(self, event: Spawned, now: float, out: list[Effect]) -> None:
        self.pid, self.port = event.pid, event.port
        self.starts += 1
        self.health_failures = 0  # a new process: its own count
        self._start_times.append(now)
        self._forget_starts_before(now - self.config.start_limit_interval)
        if self.state is not State.STARTING:  # not wanted any more (the shell checks before it spawns)
            out.append(SignalGroup(signal.SIGKILL))
            return
        self._set(State.LOADING, f"Starting (pid {event.pid})")
        if self.config.ready_timeout > 0:
            out.append(ArmTimer(Timer.READY, self.config.ready_timeout))
        out.append(WatchReady())

    def _on_SpawnFailed(self, event: SpawnFailed, now: float, out: list[Effect]) -> None:
        self._not_started(State.ERRORED, event.message, logging.ERROR, out)

    def _on_StartFailed(self, event: StartFailed, now: float, out: list[Effect]) -> None:
        if self.state is not State.STARTING:
            return
        self._start_times.append(now)  # an attempt: the start limit counts it
        self._forget_starts_before(now - self.config.start_limit_interval)
        self._after_exit(now, event.message, True, out, pid=None)

    def _on_StartRefused(self, event: StartRefused, now: float, out: list[Effect]) -> None:
        if self.config.remote and self.state in _REMOTE:
            out.append(Monitor(False))
            self._set(State.DISABLED, event.message)
            out.append(Log(logging.INFO, event.message))
            return
        self._not_started(State.DISABLED, event.message, logging.INFO, out)

    def _not_started(self, state: State, message: str, level: int, out: list[Effect]) -> None:
        if self.state is State.STARTING:
            self._set(state, message)
            out.append(Log(level, message))

    def _on_Ready(self, event: Ready, now: float, out: list[Effect]) -> None:
        if self.state is not State.LOADING or (event.pid is not None and event.pid != self.pid):
            return
        self._set(State.RUNNING, "")
        self._health_since = now
        out += [CancelTimer(Timer.READY), ArmTimer(Timer.STABLE, self.config.stable_after),
                Log(logging.INFO, f"ready (pid {self.pid}, port {self.port})")]
        if self.config.health_checks:
            out.append(WatchHealth(True))

    def _on_ReadyTimedOut(self, event: ReadyTimedOut, now: float, out: list[Effect]) -> None:
        if self.state is not State.LOADING:
            return
        text = f"not ready within {self.config.ready_timeout:g} s"
        out.append(Log(logging.WARNING, f"{text}: stopping it"))
        self._stop(_Failed(text), out, message=text)

    def _on_Stable(self, event: Stable, now: float, out: list[Effect]) -> None:
        if self.state is State.RUNNING:
            self.consecutive_exits = 0

    def _on_StopTimedOut(self, event: StopTimedOut, now: float, out: list[Effect]) -> None:
        if self.state is State.STOPPING and self.pid is not None:
            out += [SignalGroup(signal.SIGKILL),
                    Log(logging.WARNING, f"pid {self.pid} did not stop within {self.config.stop_timeout:g} s of "
                        f"{_signal_name(self.config.stop_signal)}: sending SIGKILL to its group")]

    def _on_Exited(self, event: Exited, now: float, out: list[Effect]) -> None:
        if event.pid != self.pid:
            return
        self.pid = None
        self.last_exit = event.exit
        state = self.state
        if state is State.STOPPING:
            out.append(CancelTimer(Timer.STOP))
            then, self._then = self._then, None
            self._settle(then, now, out, pid=event.pid, cause=event.cause)
        elif state in _ALIVE:
            out += [CancelReady(), WatchHealth(False), CancelTimer(Timer.READY), CancelTimer(Timer.STABLE)]
            self._after_exit(now, event.exit.describe(), not event.exit.success, out, pid=event.pid,
                             cause=event.cause)
        # Any other state: a faulted process that has now ended; the exit is recorded above.

    def _on_DelayElapsed(self, event: DelayElapsed, now: float, out: list[Effect]) -> None:
        if self.state is State.BACKOFF:
            self._spawn(out)

    def _on_RemoteUp(self, event: RemoteUp, now: float, out: list[Effect]) -> None:
        if self.state not in _REMOTE:
            return
        self._answered(event.at, now)
        if self.state is not State.RUNNING:
            self._set(State.RUNNING, "")
            out.append(Log(logging.INFO, "reachable: running"))

    def _on_RemoteDown(self, event: RemoteDown, now: float, out: list[Effect]) -> None:
        if self.state not in _REMOTE:
            return
        previous, self.health_error = self.health_error, event.problem
        self.health_failures += 1
        if self.state is State.RUNNING:
            # Running: a check that fails now and then (a busy remote) is not an outage.
            if self.health_failures < self.config.health_failures:
                return
            self._set(State.UNREACHABLE, f"unreachable: {self._not_answering(event.problem, now)}")
            out.append(Log(logging.WARNING, self.message))
        elif self.state is State.CHECKING or event.problem != previous:  # news: say it (once)
            self._set(State.UNREACHABLE, f"unreachable: {event.problem}")
            out.append(Log(logging.INFO, self.message))

    def _on_HealthOk(self, event: HealthOk, now: float, out: list[Effect]) -> None:
        if self.state is State.RUNNING and self._current(event.pid):
            self._answered(event.at, now)

    def _on_HealthFailed(self, event: HealthFailed, now: float, out: list[Effect]) -> None:
        # Only a running process is judged: while it stops (or after), a probe that fails is no news.
        if self.state is not State.RUNNING or not self._current(event.pid):
            return
        self.health_failures += 1
        self.health_error = event.error
        if self.health_failures < self.config.health_failures:
            return
        text = self._not_answering(event.error, now)
        out.append(Log(logging.WARNING, f"pid {self.pid} {text}: stopping it", tail=True))
        self._stop(_Failed(text), out, message=text)

    def _on_GpuFailed(self, event: GpuFailed, now: float, out: list[Effect]) -> None:
        if self.state not in _ALIVE or self.config.remote:
            return  # no process of its own on that GPU now; its next start is placed afresh
        text = f"GPU {event.gpu} failed: {event.reason}"
        out.append(Log(logging.ERROR, f"pid {self.pid}: {text}: stopping it", tail=True))
        self._stop(_Failed(text), out, message=text)

    def _current(self, pid: int | None) -> bool:
        """Whether a probe's report is about the current process (None: it is)."""
        return pid is None or pid == self.pid

    def _answered(self, at: float | None, now: float) -> None:
        """A probe answered: the failures are forgotten."""
        self.health_failures = 0
        self._health_since = now
        if at is not None:
            self.health_ok_at = at

    def _not_answering(self, error: str, now: float) -> str:
        """`not answering health checks for 30 s (last: no answer within 5 s)`: the time since the last
        answer (or since it became running), and the last probe's error."""
        return f"not answering health checks for {_seconds(max(now - self._health_since, 0.0))} (last: {error})"

    def _on_Faulted(self, event: Faulted, now: float, out: list[Effect]) -> None:
        out += [CancelReady(), WatchHealth(False), Monitor(False)] + [CancelTimer(timer) for timer in Timer]
        if self.pid is not None:
            out.append(SignalGroup(signal.SIGKILL))
        self._then = None
        message = f"internal error: {event.message}; restart it once fixed (swarmctl restart ID)"
        self._set(State.ERRORED, message)
        out.append(Log(logging.ERROR, message))

    # -- helpers ------------------------------------------------------------------------------------------

    def _set(self, state: State, message: str) -> None:
        self.state, self.message = state, message

    def _spawn(self, out: list[Effect], message: str = "Waiting to load...") -> None:
        self._set(State.STARTING, message)
        out.append(Spawn())

    def _stop(self, then: _Then, out: list[Effect], *, message: str | None = None,
              config: LifecycleConfig | None = None) -> None:
        """Run the stop ladder on the live process; `then` says what follows its exit."""
        config = config or self.config
        self._then = then
        self._set(State.STOPPING, message if message is not None else f"Stopping (pid {self.pid})")
        out += [CancelReady(), WatchHealth(False), CancelTimer(Timer.READY), CancelTimer(Timer.STABLE),
                SignalGroup(config.stop_signal), ArmTimer(Timer.STOP, config.stop_timeout)]

    def _settle(self, then: _Then | None, now: float | None, out: list[Effect], pid: int | None = None,
                cause: str = "") -> None:
        """The stop in progress is over: do what was planned."""
        if isinstance(then, _StartAgain) and self.wanted:
            self._start_from_rest(out)
        elif isinstance(then, _Failed) and now is not None:
            exit_text = self.last_exit.describe() if self.last_exit else "stopped"
            self._after_exit(now, f"{then.text}, then {exit_text}", True, out, pid=pid, cause=cause)
        elif isinstance(then, _Settle):
            self._set(then.state, then.message)
        else:
            self._set(State.DISABLED, "Disabled" if not self.wanted else "Stopped")

    def _start_from_rest(self, out: list[Effect]) -> None:
        if self.config.remote:
            self._set(State.CHECKING, "Waiting to load...")
            out.append(Monitor(True))
        else:
            self._spawn(out)

    def _after_exit(self, now: float, text: str, failed: bool, out: list[Effect], *, pid: int | None,
                    cause: str = "") -> None:
        """The policy's decision after an exit nobody asked for; logged with the process's last output.

        The status message reads `<what happened> (<what the policy does>): <cause>` -- the cause, the most
        telling line of the process's output, last, where a person's eye ends:
        `exited with status 2 (restart 1 in 0.2 s): main.py: error: unrecognized arguments: --x`.
        """
        policy = self.config.restart
        who = f"pid {pid} " if pid is not None else ""
        tail = f": {cause}" if cause else ""
        if not (policy == "always" or (policy == "on-failure" and failed)):
            if failed:
                self._set(State.ERRORED, f"{text} (restart: {policy}; restart it once fixed){tail}")
                out.append(Log(logging.ERROR, who + self.message, tail=True))
            else:
                self._set(State.DISABLED, f"{text} (restart: {policy}){tail}")
                out.append(Log(logging.INFO, who + self.message, tail=True))
            return
        self.consecutive_exits += 1
        delay = self.next_delay()
        burst = self.config.start_limit_burst
        if self.starts_in_window(now + delay) >= burst:
            self._set(State.ERRORED, (
                f"{text} (gave up after {burst} starts within {_seconds(self.config.start_limit_interval)}, "
                "start_limit_burst: fix the cause, then restart it with swarmctl restart ID or "
                f"RestartBackends){tail}"))
            out.append(Log(logging.ERROR, who + self.message, tail=True))
            return
        self.restarts += 1
        if delay <= 0:  # no backoff to wait out (restart_delay 0): start again now
            self._spawn(out, f"{text} (restart {self.consecutive_exits} now){tail}")
            out.append(Log(logging.WARNING, who + self.message, tail=True))
            return
        self._set(State.BACKOFF, f"{text} (restart {self.consecutive_exits} in {_seconds(delay)}){tail}")
        out += [ArmTimer(Timer.DELAY, delay), Log(logging.WARNING, who + self.message, tail=True)]

    def next_delay(self) -> float:
        """The delay before the next automatic restart, given the exits counted so far."""
        exponent = max(self.consecutive_exits - 1, 0)
        # Cap the exponent too: 2**2000 overflows a float long before the cap applies.
        delay = self.config.restart_delay * (2 ** min(exponent, 60))
        return min(delay, self.config.restart_delay_max)

    def starts_in_window(self, at: float) -> int:
        """How many recorded starts lie inside the start-limit window ending at `at`."""
        since = at - self.config.start_limit_interval
        return sum(1 for t in self._start_times if t > since)

    def _forget_failures(self) -> None:
        self._start_times.clear()
        self.consecutive_exits = 0

    def _forget_starts_before(self, cutoff: float) -> None:
        times = self._start_times
        old = 0
        while old < len(times) and times[old] <= cutoff:
            old += 1
        if old:
            del times[:old]


def _seconds(value: float) -> str:
    if value >= 1 and float(value).is_integer():
        return f"{int(value)} s"
    return f"{value:.3g} s"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
