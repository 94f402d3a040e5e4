"""The lifecycle machine is pure: every row of its transition table (read from its docstring) is driven
here, and the restart policy it absorbed is checked with plain numbers for time."""

from __future__ import annotations

import logging
import re
import signal
import typing
from dataclasses import dataclass

import pytest

from swarmd.supervise import lifecycle as lc
from swarmd.supervise.lifecycle import (
    ArmTimer,
    CancelTimer,
    DelayElapsed,
    Exited,
    Faulted,
    GpuFailed,
    HealthFailed,
    HealthOk,
    KillRequested,
    Lifecycle,
    LifecycleConfig,
    Log,
    Monitor,
    Ready,
    ReadyTimedOut,
    Reconfigured,
    RemoteDown,
    RemoteUp,
    RestartRequested,
    SignalGroup,
    Spawn,
    Spawned,
    SpawnFailed,
    Stable,
    StartFailed,
    StartRefused,
    StartRequested,
    State,
    StopRequested,
    StopTimedOut,
    Timer,
    WatchHealth,
)
from swarmd.supervise.process import ExitInfo

PID = 41
CRASH = ExitInfo(1)
CLEAN = ExitInfo(0)
KILLED = ExitInfo(None, signal.SIGKILL)
REMOTE = LifecycleConfig(remote=True)


# -- the table, as the docstring states it ---------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    remote: bool
    states: tuple[str, ...]
    event: str
    guard: str
    next: str
    effects: str

    @property
    def key(self) -> str:
        return f"{'remote' if self.remote else 'process'}: {', '.join(self.states)} | {self.event} | {self.guard}"


def table_rows() -> list[Row]:
    """The rows of the two transition tables in the module docstring, cut at the header's columns."""
    rows: list[Row] = []
    remote = False
    header: list[int] | None = None
    for line in (lc.__doc__ or "").splitlines():
        if line.startswith("Transitions of a remote"):
            remote, header = True, None
        if line.startswith("    state "):
            header = [line.index(name) for name in ("event", "guard", "next", "effects")]
            continue
        if header is None or not line.startswith("    ") or not line.strip():
            if header is not None and not line.strip() and rows and rows[-1].remote == remote:
                header = None  # a blank line ends the table
            continue
        cut = [0, *header, len(line)]
        cells = [line[a:b].strip() for a, b in zip(cut, cut[1:], strict=False)]
        states = tuple(part.strip() for part in cells[0].split(","))
        rows.append(Row(remote, states, cells[1], cells[2], cells[3], cells[4] if len(cells) > 4 else ""))
    return rows


ROWS = table_rows()


def test_the_table_is_read_whole():
    assert len([r for r in ROWS if not r.remote]) == 42 and len([r for r in ROWS if r.remote]) == 10
    assert {row.event for row in ROWS} == {cls.__name__ for cls in typing.get_args(lc.Event)}


# -- reaching each state ---------------------------------------------------------------------------------------

#: How to reach a state from a fresh machine (name -> events). Names add what the guard needs.
PATHS: dict[str, list[lc.Event]] = {
    "DISABLED": [],
    "DISABLED wanted": [StartRequested(), StartRefused("No command set")],
    "DISABLED dying": [StartRequested(), Spawned(PID), Faulted("boom"), StopRequested()],
    "ERRORED": [StartRequested(), SpawnFailed("cannot start: program 'x' not found")],
    "ERRORED dying": [StartRequested(), Spawned(PID), Faulted("boom")],
    "STARTING": [StartRequested()],
    "LOADING": [StartRequested(), Spawned(PID)],
    "RUNNING": [StartRequested(), Spawned(PID), Ready(PID)],
    "RUNNING failing": [StartRequested(), Spawned(PID), Ready(PID), HealthFailed("refused", PID),
                        HealthFailed("refused", PID)],
    "BACKOFF": [StartRequested(), Spawned(PID), Ready(PID), Exited(PID, CRASH)],
    "STOPPING settle": [StartRequested(), Spawned(PID), Ready(PID), StopRequested("Deleted")],
    "STOPPING start": [StartRequested(), Spawned(PID), Ready(PID), RestartRequested()],
    "STOPPING not ready": [StartRequested(), Spawned(PID), ReadyTimedOut()],
    "remote DISABLED": [],
    "remote ERRORED": [StartRequested(), Faulted("boom")],
    "remote CHECKING": [StartRequested()],
    "remote RUNNING": [StartRequested(), RemoteUp()],
    "remote RUNNING failing": [StartRequested(), RemoteUp(), RemoteDown("refused"), RemoteDown("refused")],
    "remote UNREACHABLE": [StartRequested(), RemoteDown("connection refused")],
}


def reach(path: str, **config) -> Lifecycle:
    remote = path.startswith("remote ")
    machine = Lifecycle(config=LifecycleConfig(remote=remote, **config))
    for event in PATHS[path]:
        machine.handle(event, 0.0)
    expected = path.removeprefix("remote ").split()[0]
    assert machine.state is State[expected], (path, machine.state)
    return machine


# -- one case per row: (paths to start from, event, next state, expected effects, config) -----------------------

SAME = None  # the state does not change


@dataclass
class Case:
    paths: tuple[str, ...]
    event: lc.Event
    next: State | None
    effects: tuple[object, ...] = ()
    config: dict | None = None


CASES: dict[str, Case] = {
    "process: DISABLED, ERRORED | StartRequested | no process left": Case(
        ("DISABLED", "ERRORED"), StartRequested(), State.STARTING, (Spawn(),)),
    "process: DISABLED, ERRORED | StartRequested | a faulted process dying": Case(
        ("DISABLED dying", "ERRORED dying"), StartRequested(), State.STOPPING, (SignalGroup(signal.SIGKILL),)),
    "process: BACKOFF | StartRequested | ": Case(
        ("BACKOFF",), StartRequested(), State.STARTING, (CancelTimer(Timer.DELAY), Spawn())),
    "process: STOPPING | StartRequested | ": Case(("STOPPING settle",), StartRequested(), SAME),
    "process: STARTING | Spawned | ": Case(
        ("STARTING",), Spawned(PID), State.LOADING, (ArmTimer(Timer.READY, 60.0), lc.WatchReady())),
    "process: STARTING | SpawnFailed | ": Case(("STARTING",), SpawnFailed("no such program"), State.ERRORED,
                                               (Log(logging.ERROR, "no such program"),)),
    "process: STARTING | StartRefused | ": Case(("STARTING",), StartRefused("No command"), State.DISABLED,
                                                (Log(logging.INFO, "No command"),)),
    "process: STARTING | StartFailed | policy restarts": Case(
        ("STARTING",), StartFailed("port 8188 is in use by pid 7 (python3)"), State.BACKOFF,
        (ArmTimer(Timer.DELAY, 0.1),)),
    "process: STARTING | StartFailed | policy settles": Case(
        ("STARTING",), StartFailed("port 8188 is in use by pid 7 (python3)"), State.ERRORED, (),
        {"restart": "never"}),
    "process: STARTING | StopRequested | the spawn is not done yet": Case(
        ("STARTING",), StopRequested("Deleted"), State.DISABLED),
    "process: DISABLED, ERRORED | Spawned | a spawn that lost the race": Case(
        ("DISABLED", "ERRORED"), Spawned(PID), SAME, (SignalGroup(signal.SIGKILL),)),
    "process: LOADING | Ready | ": Case(
        ("LOADING",), Ready(PID), State.RUNNING, (CancelTimer(Timer.READY), ArmTimer(Timer.STABLE, 10.0))),
    "process: LOADING | ReadyTimedOut | ": Case(
        ("LOADING",), ReadyTimedOut(), State.STOPPING,
        (lc.CancelReady(), SignalGroup(signal.SIGTERM), ArmTimer(Timer.STOP, 10.0))),
    "process: RUNNING | Stable | ": Case(("RUNNING",), Stable(), SAME),
    "process: RUNNING | HealthOk | ": Case(("RUNNING", "RUNNING failing"), HealthOk(PID, 1700000000.0), SAME),
    "process: RUNNING | HealthFailed | below health_failures": Case(
        ("RUNNING",), HealthFailed("no answer within 5 s", PID), SAME),
    "process: RUNNING | HealthFailed | health_failures reached": Case(
        ("RUNNING failing",), HealthFailed("no answer within 5 s", PID), State.STOPPING,
        (WatchHealth(False), SignalGroup(signal.SIGTERM), ArmTimer(Timer.STOP, 10.0),
         Log(logging.WARNING, "pid 41 not answering health checks for 1 s (last: no answer within 5 s): stopping it"))),
    "process: STOPPING | HealthFailed | ": Case(
        ("STOPPING settle", "STOPPING start", "STOPPING not ready"), HealthFailed("refused", PID), SAME),
    "process: LOADING, RUNNING | GpuFailed | ": Case(
        ("LOADING", "RUNNING"), GpuFailed("1 (NVIDIA H200, GPU-2222)", "Xid 79 (GPU has fallen off the bus)"),
        State.STOPPING, (lc.CancelReady(), WatchHealth(False), SignalGroup(signal.SIGTERM), ArmTimer(Timer.STOP, 10.0))),
    "process: LOADING, RUNNING | Exited | policy restarts": Case(
        ("LOADING", "RUNNING"), Exited(PID, CRASH), State.BACKOFF, (lc.CancelReady(), ArmTimer(Timer.DELAY, 0.1))),
    "process: LOADING, RUNNING | Exited | restarts, restart_delay 0": Case(
        ("LOADING", "RUNNING"), Exited(PID, CRASH), State.STARTING, (lc.CancelReady(), Spawn()),
        {"restart_delay": 0}),
    "process: LOADING, RUNNING | Exited | policy settles": Case(
        ("LOADING", "RUNNING"), Exited(PID, CRASH), State.ERRORED, (lc.CancelReady(),), {"restart": "never"}),
    "process: LOADING, RUNNING | StopRequested | ": Case(
        ("LOADING", "RUNNING"), StopRequested(), State.STOPPING,
        (lc.CancelReady(), SignalGroup(signal.SIGTERM), ArmTimer(Timer.STOP, 10.0))),
    "process: LOADING, RUNNING | RestartRequested | wanted": Case(
        ("LOADING", "RUNNING"), RestartRequested(), State.STOPPING,
        (SignalGroup(signal.SIGTERM), ArmTimer(Timer.STOP, 10.0))),
    "process: LOADING, RUNNING | Reconfigured | wanted": Case(
        ("LOADING", "RUNNING"), Reconfigured(LifecycleConfig(stop_signal=signal.SIGINT, stop_timeout=3)),
        State.STOPPING, (SignalGroup(signal.SIGTERM), ArmTimer(Timer.STOP, 10.0))),  # the old ladder
    "process: STOPPING | StopRequested | ": Case(("STOPPING start",), StopRequested(), SAME),
    "process: STOPPING | RestartRequested | wanted": Case(("STOPPING not ready",), RestartRequested(), SAME),
    "process: STOPPING | Reconfigured | wanted": Case(("STOPPING not ready",), Reconfigured(LifecycleConfig()),
                                                      SAME),
    "process: STOPPING | StopTimedOut | ": Case(("STOPPING settle",), StopTimedOut(), SAME,
                                                (SignalGroup(signal.SIGKILL),)),
    "process: STOPPING | Exited | then: settle": Case(("STOPPING settle",), Exited(PID, KILLED), State.DISABLED,
                                                      (CancelTimer(Timer.STOP),)),
    "process: STOPPING | Exited | then: start": Case(("STOPPING start",), Exited(PID, KILLED), State.STARTING,
                                                     (CancelTimer(Timer.STOP), Spawn())),
    "process: STOPPING | Exited | then: not ready": Case(
        ("STOPPING not ready",), Exited(PID, KILLED), State.BACKOFF, (CancelTimer(Timer.STOP),
                                                                      ArmTimer(Timer.DELAY, 0.1))),
    "process: BACKOFF | DelayElapsed | ": Case(("BACKOFF",), DelayElapsed(), State.STARTING, (Spawn(),)),
    "process: BACKOFF | StopRequested | ": Case(("BACKOFF",), StopRequested(), State.DISABLED,
                                                (CancelTimer(Timer.DELAY),)),
    "process: BACKOFF | RestartRequested | wanted": Case(("BACKOFF",), RestartRequested(), State.STARTING,
                                                         (CancelTimer(Timer.DELAY), Spawn())),
    "process: BACKOFF | Reconfigured | wanted": Case(("BACKOFF",), Reconfigured(LifecycleConfig()), State.STARTING,
                                                     (CancelTimer(Timer.DELAY), Spawn())),
    "process: DISABLED, ERRORED | RestartRequested | wanted, no process": Case(
        ("DISABLED wanted", "ERRORED"), RestartRequested(), State.STARTING, (Spawn(),)),
    "process: DISABLED, ERRORED | Reconfigured | wanted, no process": Case(
        ("DISABLED wanted", "ERRORED"), Reconfigured(LifecycleConfig()), State.STARTING, (Spawn(),)),
    "process: DISABLED, ERRORED | StopRequested | ": Case(("DISABLED wanted", "ERRORED"), StopRequested(),
                                                          State.DISABLED),
    "process: DISABLED, ERRORED | Exited | a faulted process ended": Case(
        ("DISABLED dying", "ERRORED dying"), Exited(PID, KILLED), SAME),
    "process: * | KillRequested | a process is alive": Case(
        ("LOADING", "RUNNING", "STOPPING settle", "ERRORED dying"), KillRequested(), SAME,
        (SignalGroup(signal.SIGKILL),)),
    "process: * | Faulted | ": Case(
        ("STARTING", "LOADING", "RUNNING", "BACKOFF", "STOPPING start", "remote RUNNING"), Faulted("boom"),
        State.ERRORED, (CancelTimer(Timer.STOP), CancelTimer(Timer.DELAY), Monitor(False))),
    "remote: DISABLED, ERRORED | StartRequested | ": Case(
        ("remote DISABLED", "remote ERRORED"), StartRequested(), State.CHECKING, (Monitor(True),)),
    "remote: DISABLED, ERRORED | RestartRequested | wanted": Case(
        ("remote ERRORED",), RestartRequested(), State.CHECKING, (Monitor(True),)),
    "remote: CHECKING, RUNNING, UNREACHABLE | RemoteUp | ": Case(
        ("remote CHECKING", "remote RUNNING", "remote UNREACHABLE"), RemoteUp(), State.RUNNING),
    "remote: CHECKING, UNREACHABLE | RemoteDown | ": Case(
        ("remote CHECKING", "remote UNREACHABLE"), RemoteDown("timeout"), State.UNREACHABLE),
    "remote: RUNNING | RemoteDown | below health_failures": Case(("remote RUNNING",), RemoteDown("timeout"), SAME),
    "remote: RUNNING | RemoteDown | health_failures reached": Case(
        ("remote RUNNING failing",), RemoteDown("timeout"), State.UNREACHABLE),
    "remote: CHECKING, RUNNING, UNREACHABLE | StartRefused | no address": Case(
        ("remote CHECKING", "remote RUNNING", "remote UNREACHABLE"), StartRefused("No address"), State.DISABLED,
        (Monitor(False),)),
    "remote: CHECKING, RUNNING, UNREACHABLE | StopRequested | ": Case(
        ("remote CHECKING", "remote RUNNING", "remote UNREACHABLE"), StopRequested(), State.DISABLED,
        (Monitor(False),)),
    "remote: CHECKING, RUNNING, UNREACHABLE | RestartRequested | wanted": Case(
        ("remote CHECKING", "remote RUNNING", "remote UNREACHABLE"), RestartRequested(), SAME, (lc.CheckNow(),)),
    "remote: CHECKING, RUNNING, UNREACHABLE | Reconfigured | wanted": Case(
        ("remote RUNNING", "remote UNREACHABLE"), Reconfigured(REMOTE), State.CHECKING,
        (Monitor(False), Monitor(True))),
}


def test_every_row_of_the_table_has_a_case():
    assert sorted(row.key for row in ROWS) == sorted(CASES)


@pytest.mark.parametrize("key", sorted(CASES))
def test_each_transition(key: str):
    row = next(r for r in ROWS if r.key == key)
    case = CASES[key]
    for path in case.paths:
        machine = reach(path, **(case.config or {}))
        before = machine.state
        effects = machine.handle(case.event, 1.0)
        assert machine.state is (before if case.next is SAME else case.next), (path, machine.state)
        for effect in case.effects:
            if isinstance(effect, Log):
                assert any(isinstance(e, Log) and e.message == effect.message for e in effects), (path, effects)
            else:
                assert effect in effects, (path, effect, effects)
        # The row's effects column names the kinds of effect; each named kind is among the effects.
        unconditional = re.sub(r"\w+(?: \w+)? if \w+", "", row.effects)  # "SignalGroup SIGKILL if alive"
        named = set(re.findall(r"\b(Spawn|WatchReady|CancelReady|WatchHealth|SignalGroup|ArmTimer|CancelTimer|"
                               r"Monitor|CheckNow)\b", unconditional))
        if "on change" not in row.effects and before is not State.UNREACHABLE:
            assert named <= {type(e).__name__ for e in effects}, (path, named, effects)


# -- what the rows do not show: statuses, guards, messages ------------------------------------------------------


def test_api_statuses():
    assert reach("STARTING").status == "waiting"
    assert reach("LOADING").status == "loading"
    assert reach("BACKOFF").status == "waiting"
    assert reach("STOPPING settle").status == "disabled"
    assert reach("STOPPING start").status == "waiting"
    assert reach("remote UNREACHABLE").status == "errored"
    assert reach("remote UNREACHABLE", allow_idle=True).status == "idle"
    assert reach("remote CHECKING").status == "waiting"


def test_a_stale_ready_or_exit_is_ignored():
    machine = reach("LOADING")
    assert machine.handle(Ready(PID + 1), 1.0) == [] and machine.state is State.LOADING
    assert machine.handle(Exited(PID + 1, CRASH), 1.0) == [] and machine.pid == PID


def test_restart_of_a_backend_not_wanted_does_nothing():
    machine = reach("DISABLED")
    assert machine.handle(RestartRequested(), 1.0) == []
    assert machine.state is State.DISABLED


def test_reconfigured_when_not_wanted_only_replaces_the_config():
    machine = reach("DISABLED")
    new = LifecycleConfig(restart="always")
    assert machine.handle(Reconfigured(new), 1.0) == []
    assert machine.config is new and machine.state is State.DISABLED


def test_a_change_of_kind_stops_the_old_and_starts_the_new():
    machine = reach("RUNNING")
    machine.handle(Reconfigured(REMOTE), 1.0)
    assert machine.state is State.STOPPING
    effects = machine.handle(Exited(PID, ExitInfo(None, signal.SIGTERM)), 2.0)
    assert machine.state is State.CHECKING and Monitor(True) in effects
    effects = machine.handle(Reconfigured(LifecycleConfig()), 3.0)
    assert machine.state is State.STARTING and effects[:2] == [Monitor(False), Spawn()]


def test_stop_then_start_while_a_faulted_process_dies():
    machine = reach("ERRORED dying")
    machine.handle(StartRequested(), 1.0)
    assert machine.state is State.STOPPING
    assert machine.handle(Exited(PID, KILLED), 2.0) == [CancelTimer(Timer.STOP), Spawn()]


def test_not_ready_in_time_is_a_failure_with_both_reasons():
    machine = reach("STOPPING not ready", ready_timeout=5)
    machine.handle(Exited(PID, ExitInfo(None, signal.SIGTERM)), 6.0)
    assert machine.message.startswith("not ready within 5 s, then killed by SIGTERM (restart 1 in")


def test_an_exit_names_its_cause_and_a_start_that_cannot_run_counts_as_a_failure():
    machine = reach("RUNNING", restart="never")
    machine.handle(Exited(PID, CRASH, cause="ModuleNotFoundError: No module named 'PIL'"), 1.0)
    assert machine.message == ("exited with status 1 (restart: never; restart it once fixed): "
                               "ModuleNotFoundError: No module named 'PIL'")
    machine = Lifecycle(config=LifecycleConfig(start_limit_burst=2))
    machine.handle(StartRequested(), 0.0)
    machine.handle(StartFailed("port 8188 is in use by pid 7 (python3 main.py)"), 0.0)
    assert machine.state is State.BACKOFF and machine.starts == 0
    assert machine.message == "port 8188 is in use by pid 7 (python3 main.py) (restart 1 in 0.1 s)"
    machine.handle(DelayElapsed(), 0.1)
    machine.handle(StartFailed("port 8188 is in use by pid 7 (python3 main.py)"), 0.1)
    assert machine.state is State.ERRORED and "gave up after 2 starts" in machine.message


def test_faulted_says_so_and_how_to_retry():
    machine = reach("RUNNING")
    machine.handle(Faulted("launch: ValueError: Port out of range 0-65535"), 1.0)
    assert machine.message.startswith("internal error: launch: ValueError: Port out of range 0-65535")
    assert "restart" in machine.message
    assert machine.pid == PID  # until its exit is reported
    assert not machine.at_rest


# -- the restart policy ---------------------------------------------------------------------------------------


def crash_loop(machine: Lifecycle, exit: ExitInfo = CRASH) -> list[str]:
    """Start, crash at once, wait out the decided delay, again -- until the machine settles. Returns the
    message of each decision."""
    messages = []
    now = 0.0
    machine.handle(StartRequested(), now)
    for pid in range(1000):
        machine.handle(Spawned(pid), now)
        effects = machine.handle(Exited(pid, exit), now)
        messages.append(machine.message)
        if machine.state is not State.BACKOFF:
            break
        now += next(e.seconds for e in effects if isinstance(e, ArmTimer) and e.timer is Timer.DELAY)
        machine.handle(DelayElapsed(), now)
    return messages


def test_delays_double_up_to_the_cap():
    machine = Lifecycle(config=LifecycleConfig(restart_delay=1, restart_delay_max=5, start_limit_burst=100,
                                               start_limit_interval=1))
    delays = []
    now = 0.0
    machine.handle(StartRequested(), now)
    for pid in range(6):
        machine.handle(Spawned(pid), now)
        effects = machine.handle(Exited(pid, CRASH), now)
        delay = next(e.seconds for e in effects if isinstance(e, ArmTimer) and e.timer is Timer.DELAY)
        delays.append(delay)
        now += delay
        machine.handle(DelayElapsed(), now)
    assert delays == [1, 2, 4, 5, 5, 5]


def test_always_failing_child_gets_exactly_burst_starts_then_errored():
    machine = Lifecycle(config=LifecycleConfig(restart_delay=0.1, start_limit_burst=5, start_limit_interval=60))
    messages = crash_loop(machine)
    assert machine.starts == 5 and machine.restarts == 4
    assert machine.state is State.ERRORED
    assert "gave up after 5 starts within 60 s" in messages[-1] and "restart" in messages[-1]


def test_slow_crashes_outside_the_window_restart_forever():
    machine = Lifecycle(config=LifecycleConfig(restart_delay=0, start_limit_burst=3, start_limit_interval=10,
                                               stable_after=5))
    now = 0.0
    machine.handle(StartRequested(), now)
    for pid in range(20):
        machine.handle(Spawned(pid), now)
        machine.handle(Ready(pid), now)
        now += 11  # ran for 11 s (stable after 5), then crashed
        machine.handle(Stable(), now - 6)
        machine.handle(Exited(pid, CRASH), now)
        assert machine.state is State.STARTING  # restart_delay 0: started again at once, never given up


def test_stable_forgets_consecutive_exits_and_a_person_forgets_everything():
    machine = Lifecycle(config=LifecycleConfig(restart_delay=1, start_limit_burst=100))
    now = 0.0
    machine.handle(StartRequested(), now)
    for pid in range(3):
        machine.handle(Spawned(pid), now)
        machine.handle(Exited(pid, CRASH), now)
        now += 10
        machine.handle(DelayElapsed(), now)
    assert machine.next_delay() == 4
    machine.handle(Spawned(9), now)
    machine.handle(Ready(9), now)
    machine.handle(Stable(), now)
    effects = machine.handle(Exited(9, CRASH), now)
    assert ArmTimer(Timer.DELAY, 1) in effects
    machine.handle(RestartRequested(), now)  # a person's restart forgets everything
    assert machine.consecutive_exits == 0 and machine.starts_in_window(now) == 0


@pytest.mark.parametrize("policy, restarts", [("always", (True, True, True)), ("on-failure", (False, True, True)),
                                              ("never", (False, False, False))])
def test_each_policy_for_each_kind_of_exit(policy: str, restarts: tuple[bool, bool, bool]):
    for exit, restart in zip((CLEAN, CRASH, KILLED), restarts, strict=True):
        machine = reach("RUNNING", restart=policy)
        machine.handle(Exited(PID, exit), 1.0)
        assert (machine.state is State.BACKOFF) is restart, (policy, exit)
        if not restart:
            assert machine.state is (State.ERRORED if exit != CLEAN else State.DISABLED)
            assert f"restart: {policy}" in machine.message


def test_huge_exponent_does_not_overflow():
    machine = Lifecycle(config=LifecycleConfig(restart_delay=0.1, restart_delay_max=30))
    machine.consecutive_exits = 5000
    assert machine.next_delay() == 30


def test_exit_info_names_every_signal():
    assert ExitInfo.from_returncode(-9).describe() == "killed by SIGKILL"
    assert ExitInfo.from_returncode(-40).to_api() == {"code": None, "signal": "signal 40",
                                                      "text": "killed by signal 40"}
    assert ExitInfo.from_returncode(3).to_api()["text"] == "exited with status 3"


# -- liveness: health probes and failed GPUs ---------------------------------------------------------------------

CHECKED = {"health_checks": True, "health_failures": 3}


def test_failures_below_the_count_keep_it_running_and_are_shown():
    machine = reach("RUNNING", **CHECKED)
    assert machine.health_view() == {"failures": 0, "last_error": None, "last_ok": None}
    assert machine.handle(HealthOk(PID, 1700000000.0), 10.0) == []
    for at in (20.0, 30.0):
        assert machine.handle(HealthFailed("no answer within 5 s", PID), at) == []
    assert (machine.state, machine.status, machine.message) == (State.RUNNING, "running", "")
    assert machine.health_view() == {"failures": 2, "last_error": "no answer within 5 s", "last_ok": 1700000000.0}
    machine.handle(HealthOk(PID, 1700000040.0), 40.0)  # an answer forgets the failures, not the last error
    assert machine.health_view() == {"failures": 0, "last_error": "no answer within 5 s", "last_ok": 1700000040.0}
    assert reach("RUNNING").health_view() is None  # no health_check: nothing to show


def test_the_count_stops_it_by_its_ladder_and_the_policy_restarts_it():
    machine = reach("RUNNING", **CHECKED)
    machine.handle(HealthOk(PID, 1700000000.0), 10.0)
    machine.handle(HealthFailed("refused", PID), 20.0)
    machine.handle(HealthFailed("refused", PID), 30.0)
    effects = machine.handle(HealthFailed("no answer within 5 s", PID), 40.0)
    assert machine.state is State.STOPPING and machine.status == "waiting"
    assert machine.message == "not answering health checks for 30 s (last: no answer within 5 s)"
    warning = next(e for e in effects if isinstance(e, Log))
    assert warning.level == logging.WARNING and warning.tail
    assert effects.index(WatchHealth(False)) < effects.index(SignalGroup(signal.SIGTERM))
    machine.handle(Exited(PID, ExitInfo(None, signal.SIGTERM)), 40.5)
    assert machine.state is State.BACKOFF and machine.restarts == 1
    assert machine.message == ("not answering health checks for 30 s (last: no answer within 5 s), then killed by "
                               "SIGTERM (restart 1 in 0.1 s)")
    machine.handle(DelayElapsed(), 40.6)
    machine.handle(Spawned(PID + 1), 40.6)
    assert machine.health_failures == 0  # the new process has its own count
    assert WatchHealth(True) in machine.handle(Ready(PID + 1), 41.0)


def test_the_count_settles_it_errored_without_restarts():
    machine = reach("RUNNING failing", restart="never", **CHECKED)
    machine.handle(HealthFailed("refused", PID), 5.0)
    machine.handle(Exited(PID, ExitInfo(None, signal.SIGTERM)), 5.1)
    assert machine.state is State.ERRORED
    assert machine.message.startswith("not answering health checks for 5 s (last: refused), then killed by SIGTERM "
                                      "(restart: never")


def test_a_probe_failure_during_a_stop_is_ignored():
    machine = reach("RUNNING failing", **CHECKED)
    machine.handle(StopRequested("Disabled"), 1.0)
    before = (machine.state, machine.message, machine.health_view())
    for _ in range(5):  # the probe that was in flight, and more: the stop goes on as it was
        assert machine.handle(HealthFailed("refused", PID), 2.0) == []
    assert (machine.state, machine.message, machine.health_view()) == before
    machine.handle(Exited(PID, ExitInfo(None, signal.SIGTERM)), 3.0)
    assert (machine.state, machine.message, machine.restarts) == (State.DISABLED, "Disabled", 0)


def test_a_stale_or_early_probe_is_ignored():
    machine = reach("RUNNING failing", **CHECKED)
    assert machine.handle(HealthFailed("refused", PID + 1), 1.0) == []  # another process's
    assert machine.state is State.RUNNING and machine.health_failures == 2
    loading = reach("LOADING", **CHECKED)
    assert loading.handle(HealthFailed("refused", PID), 1.0) == [] and loading.health_failures == 0


def test_a_restart_request_while_probes_fail_works_normally():
    machine = reach("RUNNING failing", **CHECKED)
    effects = machine.handle(RestartRequested(), 1.0)
    assert machine.state is State.STOPPING and machine.message == "Restarting"
    assert WatchHealth(False) in effects and SignalGroup(signal.SIGTERM) in effects
    assert machine.handle(Exited(PID, ExitInfo(None, signal.SIGTERM)), 1.5) == [CancelTimer(Timer.STOP), Spawn()]
    machine.handle(Spawned(PID + 1), 1.5)
    machine.handle(Ready(PID + 1), 2.0)
    assert machine.state is State.RUNNING and machine.health_failures == 0 and machine.restarts == 0
    machine.handle(HealthFailed("refused", PID), 2.5)  # the old process's last probe: no news
    assert machine.health_failures == 0


def test_a_failed_gpu_stops_its_backends_and_names_the_gpu():
    gpu_name, reason = "1 (NVIDIA H200, GPU-2222)", "Xid 79 (GPU has fallen off the bus)"
    machine = reach("RUNNING", restart="never")
    effects = machine.handle(GpuFailed(gpu_name, reason), 1.0)
    assert machine.message == "GPU 1 (NVIDIA H200, GPU-2222) failed: Xid 79 (GPU has fallen off the bus)"
    assert any(isinstance(e, Log) and e.level == logging.ERROR for e in effects)
    machine.handle(Exited(PID, ExitInfo(None, signal.SIGTERM)), 1.5)
    assert machine.state is State.ERRORED and machine.message.startswith(
        "GPU 1 (NVIDIA H200, GPU-2222) failed: Xid 79 (GPU has fallen off the bus), then killed by SIGTERM")
    for path in ("BACKOFF", "STOPPING settle", "ERRORED", "remote RUNNING"):  # no process of its own on it now
        other = reach(path)
        before = (other.state, other.message)
        assert other.handle(GpuFailed(gpu_name, reason), 1.0) == [] and (other.state, other.message) == before


def test_a_remote_is_unreachable_only_after_the_count():
    machine = reach("remote RUNNING", health_checks=True, health_failures=3)
    machine.handle(RemoteUp(1700000000.0), 5.0)
    machine.handle(RemoteDown("cannot connect to 10.0.0.2:8188: Connection refused"), 10.0)
    machine.handle(RemoteDown("cannot connect to 10.0.0.2:8188: Connection refused"), 15.0)
    assert machine.status == "running" and machine.health_view()["failures"] == 2
    effects = machine.handle(RemoteDown("cannot connect to 10.0.0.2:8188: Connection refused"), 20.0)
    assert machine.status == "errored"
    assert machine.message == ("unreachable: not answering health checks for 15 s (last: cannot connect to "
                               "10.0.0.2:8188: Connection refused)")
    assert [e.level for e in effects if isinstance(e, Log)] == [logging.WARNING]
    # the same problem again: no news, the message stays; another problem: said once
    assert machine.handle(RemoteDown("cannot connect to 10.0.0.2:8188: Connection refused"), 25.0) == []
    machine.handle(RemoteDown("no answer within 5 s"), 30.0)
    assert machine.message == "unreachable: no answer within 5 s"
    machine.handle(RemoteUp(1700000035.0), 35.0)
    assert machine.status == "running"
    assert machine.health_view() == {"failures": 0, "last_error": "no answer within 5 s", "last_ok": 1700000035.0}
