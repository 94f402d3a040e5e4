"""The shell's timing on trio's autojump clock, with a fake spawner: backoff doubling and cap, the start
limit, the stable reset, the ready timeout, the stop ladder, and the fault boundary -- in milliseconds."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from swarmd.gpu import Pin
from swarmd.supervise.lifecycle import (
    Reconfigured,
    RestartRequested,
    StartRequested,
    State,
    StopRequested,
)
from swarmd.supervise.output import OutputRing
from swarmd.supervise.process import ExitInfo
from swarmd.supervise.shell import BackendShell
from swarmd.types import TYPES, LaunchSpec
from swarmd.types.process import ProcessType


@dataclass
class Behaviour:
    """What a fake process does: exit after `runs_for` seconds with `code` (None: run until signalled),
    print `output` lines (delay, text), ignore SIGTERM or not."""

    runs_for: float | None = None
    code: int = 1
    ignore_term: bool = False
    output: list[tuple[float, str]] = field(default_factory=list)


class FakeProcess:
    def __init__(self, pid: int, behaviour: Behaviour, nursery: trio.Nursery) -> None:
        self.pid = pid
        self.behaviour = behaviour
        self.nursery = nursery
        self.signals: list[tuple[float, int]] = []
        self.exit: ExitInfo | None = None
        self._exited = trio.Event()

    def _end(self, info: ExitInfo) -> None:
        if self.exit is None:
            self.exit = info
            self._exited.set()

    async def wait(self) -> ExitInfo:
        if self.behaviour.runs_for is not None:
            with trio.move_on_after(self.behaviour.runs_for):
                await self._exited.wait()
            self._end(ExitInfo(self.behaviour.code))
        await self._exited.wait()
        assert self.exit is not None
        return self.exit

    def signal_group(self, signum: int) -> None:
        if self.exit is not None:
            return
        self.signals.append((trio.current_time(), signum))
        if signum == signal.SIGKILL or not self.behaviour.ignore_term:
            self._end(ExitInfo(None, signum))

    async def contained(self) -> None:
        pass

    def on_exit(self, watcher: Any) -> None:
        """As the daemon's reader: `watcher.exited()` once it has exited, `watcher.cancelled()` if cancelled
        first (here a task of the test's nursery waits, on its clock)."""
        self.nursery.start_soon(self._watch_exit, watcher)

    async def _watch_exit(self, watcher: Any) -> None:
        try:
            await self.wait()
        except trio.Cancelled:
            watcher.cancelled()
            raise
        watcher.exited()

    def read_output(self, on_output: Any) -> FakeOutput:
        """Its `output` lines are delivered on time by a task of the test's nursery (as the daemon's pipe
        reader would), until it exits; its "pipes" close when it exits."""
        self.nursery.start_soon(self._print, on_output)
        return FakeOutput(self._exited)

    async def _print(self, on_output: Any) -> None:
        for delay, line in self.behaviour.output:
            with trio.move_on_after(delay):
                await self._exited.wait()
            if self.exit is not None:
                return
            on_output("stdout", line)


@dataclass
class FakeOutput:
    closed: trio.Event

    def release(self) -> None:
        pass


class FakeSpawner:
    """Spawns FakeProcesses, by default all alike; records when."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.processes: list[FakeProcess] = []
        self.times: list[float] = []
        self.specs: list[LaunchSpec] = []
        self.nursery: trio.Nursery | None = None  # where its processes' output is "read"

    def __call__(self, spec: LaunchSpec) -> FakeProcess:
        assert self.nursery is not None, "make_shell gives the spawner the test's nursery"
        process = FakeProcess(1000 + len(self.processes), self.behaviour, self.nursery)
        self.processes.append(process)
        self.times.append(trio.current_time())
        self.specs.append(spec)
        return process


def make_shell(nursery: trio.Nursery, spawner: FakeSpawner, backend_type: Any = None, **settings: Any
               ) -> BackendShell:
    backend_type = backend_type or TYPES["process"]
    if isinstance(spawner, FakeSpawner):
        spawner.nursery = nursery
    values = {**backend_type.defaults(), "command": "fake-server --port {port}", "port": 5000, **settings}
    async def port_owner(port: int) -> str | None:
        return busy_ports.get(port)

    return BackendShell(label="backend-0", backend_type=backend_type, settings=values, ring=OutputRing(),
                        nursery=nursery, spawner=spawner, place_gpus=lambda gpu_id, shell: Pin(),
                        port_owner=port_owner)


#: Ports a test says another process listens on: port -> the owner's description.
busy_ports: dict[int, str] = {}


async def settled(shell: BackendShell, *states: State) -> None:
    await shell.wait_for(lambda machine: machine.state in states)


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in zip(times, times[1:], strict=False)]


async def test_backoff_doubles_up_to_the_cap(autojump_clock, nursery):
    spawner = FakeSpawner(Behaviour(runs_for=0, code=1))
    shell = make_shell(nursery, spawner, restart_delay=1, restart_delay_max=4, start_limit_burst=6,
                       start_limit_interval=1000)
    shell.feed(StartRequested())
    await settled(shell, State.ERRORED)
    assert gaps(spawner.times) == [1, 2, 4, 4, 4]
    assert shell.machine.starts == 6 and shell.machine.restarts == 5
    assert "gave up after 6 starts within 1000 s" in shell.machine.message
    await trio.sleep(3600)  # and then nothing: no more starts
    assert len(spawner.processes) == 6


async def test_the_start_limit_counts_starts_in_any_window(autojump_clock, nursery):
    # Crashes 30 s after each start: at most 3 starts in any 100 s -> the 4th crash settles it.
    spawner = FakeSpawner(Behaviour(runs_for=30, code=1))
    shell = make_shell(nursery, spawner, restart_delay=0, start_limit_burst=3, start_limit_interval=100,
                       stable_after=1000)
    shell.feed(StartRequested())
    await settled(shell, State.ERRORED)
    assert gaps(spawner.times) == [30, 30]
    assert "gave up after 3 starts within 100 s" in shell.machine.message


async def test_stable_resets_the_delay(autojump_clock, nursery):
    # Each run lasts 20 s, longer than stable_after: every crash is a first crash again (delay 1 s).
    spawner = FakeSpawner(Behaviour(runs_for=20, code=1))
    shell = make_shell(nursery, spawner, restart_delay=1, start_limit_burst=100, stable_after=10)
    shell.feed(StartRequested())
    await shell.wait_for(lambda machine: machine.starts == 6)
    assert gaps(spawner.times) == [21, 21, 21, 21, 21]


async def test_ready_timeout_stops_it_then_the_policy_applies(autojump_clock, nursery):
    spawner = FakeSpawner(Behaviour(output=[(1, "loading..."), (1, "still loading")]))
    shell = make_shell(nursery, spawner, ready_check="log:^READY$", ready_timeout=5, restart_delay=2,
                       start_limit_burst=2)
    start = trio.current_time()
    shell.feed(StartRequested())
    await settled(shell, State.ERRORED)
    first = spawner.processes[0]
    assert first.signals == [(start + 5, signal.SIGTERM)]
    assert gaps(spawner.times) == [7]  # 5 s not ready, then 2 s backoff
    assert shell.machine.message.startswith("not ready within 5 s, then killed by SIGTERM (gave up after 2")
    assert shell.machine.message.endswith("): still loading")
    output = [line.text for line in shell.ring.tail(10) if line.stream == "stdout"]
    assert output[-2:] == ["loading...", "still loading"]


async def test_log_readiness(autojump_clock, nursery):
    spawner = FakeSpawner(Behaviour(output=[(3, "booting"), (2, "READY")]))
    shell = make_shell(nursery, spawner, ready_check="log:^READY$", ready_timeout=60)
    start = trio.current_time()
    shell.feed(StartRequested())
    await settled(shell, State.RUNNING)
    assert trio.current_time() - start == pytest.approx(5)


async def test_the_stop_ladder(autojump_clock, nursery):
    spawner = FakeSpawner(Behaviour(ignore_term=True))
    shell = make_shell(nursery, spawner, stop_timeout=30)
    shell.feed(StartRequested())
    await settled(shell, State.RUNNING)
    began = trio.current_time()
    shell.feed(StopRequested("Disabled"))
    assert shell.machine.status == "disabled" and shell.machine.state is State.STOPPING
    await shell.wait_at_rest()
    process = spawner.processes[0]
    assert process.signals == [(began, signal.SIGTERM), (began + 30, signal.SIGKILL)]
    assert (shell.machine.state, shell.machine.message) == (State.DISABLED, "Disabled")
    assert shell.machine.last_exit == ExitInfo(None, signal.SIGKILL)


async def test_restart_while_stopping_and_a_stop_while_a_spawn_is_pending(autojump_clock, nursery):
    spawner = FakeSpawner(Behaviour(ignore_term=True))
    shell = make_shell(nursery, spawner, stop_timeout=10)
    shell.feed(StartRequested())
    shell.feed(StopRequested())  # before the spawn task ran: nothing is spawned
    await trio.sleep(1)
    assert spawner.processes == [] and shell.machine.state is State.DISABLED
    shell.feed(StartRequested())
    await settled(shell, State.RUNNING)
    shell.feed(RestartRequested())
    shell.feed(RestartRequested())  # a second request while the ladder runs: still one restart
    await settled(shell, State.RUNNING)
    assert len(spawner.processes) == 2
    assert spawner.processes[0].signals[-1][1] == signal.SIGKILL


async def test_new_settings_apply_at_the_next_start(autojump_clock, nursery):
    spawner = FakeSpawner()
    shell = make_shell(nursery, spawner)
    shell.feed(StartRequested())
    await settled(shell, State.RUNNING)
    settings = {**shell.settings, "command": "fake-server --other {port}"}
    shell.feed(Reconfigured(shell.configure(shell.type, settings)))
    await settled(shell, State.RUNNING)
    assert [spec.argv for spec in spawner.specs] == [("fake-server", "--port", "5000"),
                                                     ("fake-server", "--other", "5000")]


class ExplodingType(ProcessType):
    """A type whose launch raises something no type should (a bug of ours, or a plugin's)."""

    id = "exploding"

    def launch(self, settings: dict[str, Any], port: int) -> LaunchSpec:
        raise ValueError("Port out of range 0-65535")


async def test_a_launch_that_raises_settles_only_that_backend_errored(autojump_clock, nursery):
    spawner = FakeSpawner()
    broken = make_shell(nursery, spawner, backend_type=ExplodingType())
    healthy = make_shell(nursery, spawner)
    broken.feed(StartRequested())
    healthy.feed(StartRequested())
    await settled(broken, State.ERRORED)
    await settled(healthy, State.RUNNING)
    assert broken.machine.message.startswith("internal error: start: ValueError: Port out of range 0-65535")
    assert len(spawner.processes) == 1  # the healthy one
    # and a restart tries again (and fails the same way), without ending anything
    broken.feed(RestartRequested())
    await trio.sleep(1)
    assert broken.machine.state is State.ERRORED and healthy.machine.state is State.RUNNING


async def test_a_probe_that_raises_faults_the_backend_and_kills_its_process(autojump_clock, nursery,
                                                                           monkeypatch):
    from swarmd.supervise import shell as shell_module

    async def broken_probe(check: str, port: int, owned: Any = None) -> None:
        await trio.sleep(1)
        raise RuntimeError("probe bug")

    monkeypatch.setattr(shell_module, "wait_ready", broken_probe)
    spawner = FakeSpawner()
    shell = make_shell(nursery, spawner, ready_check="tcp")
    shell.feed(StartRequested())
    await settled(shell, State.ERRORED)
    assert "internal error: readiness check: RuntimeError: probe bug" in shell.machine.message
    await shell.wait_at_rest()
    assert spawner.processes[0].signals[-1][1] == signal.SIGKILL


class BrokenSignals(FakeProcess):
    """A process whose group cannot be signalled with SIGTERM (a bug of ours in the effect)."""

    def signal_group(self, signum: int) -> None:
        if signum == signal.SIGTERM:
            raise RuntimeError("cannot signal")
        super().signal_group(signum)


async def test_an_effect_that_raises_faults_the_backend(autojump_clock, nursery):
    spawner = FakeSpawner()
    spawner.nursery = nursery
    spawner_call = spawner.__call__

    def spawn(spec: LaunchSpec) -> FakeProcess:
        process = spawner_call(spec)
        process.__class__ = BrokenSignals
        return process

    shell = make_shell(nursery, spawn)
    shell.feed(StartRequested())
    await settled(shell, State.RUNNING)
    shell.feed(StopRequested())
    assert shell.machine.state is State.ERRORED
    assert "internal error: RuntimeError: cannot signal" in shell.machine.message
    await shell.wait_at_rest()  # its process was SIGKILLed as the fault settled it
    assert spawner.processes[0].signals == [(trio.current_time(), signal.SIGKILL)]


def test_the_telling_line_of_some_output():
    from swarmd.supervise.output import LogLine
    from swarmd.supervise.shell import telling_line

    def lines(*pairs: tuple[str, str]) -> list[LogLine]:
        return [LogLine(n, 0.0, stream, text) for n, (stream, text) in enumerate(pairs)]

    traceback = lines(("stdout", "starting"), ("stderr", "Traceback (most recent call last):"),
                      ("stderr", '  File "main.py", line 3, in <module>'), ("stderr", "    import PIL"),
                      ("stderr", "ModuleNotFoundError: No module named 'PIL'"), ("stdout", "bye"))
    assert telling_line(traceback) == "ModuleNotFoundError: No module named 'PIL'"
    assert telling_line(lines(("stderr", "main.py: error: unrecognized arguments: --x"), ("stdout", "done"),
                              ("swarmd", "a note of ours"))) == "main.py: error: unrecognized arguments: --x"
    assert telling_line(lines(("stdout", "last words "), ("stdout", "  "))) == "last words"
    assert telling_line([]) == ""
    assert len(telling_line(lines(("stderr", "x" * 5000)))) == 300


async def test_a_fixed_port_held_by_another_process_fails_each_start_by_the_policy(autojump_clock, nursery):
    spawner = FakeSpawner()
    busy_ports[5000] = "port 5000 is in use by pid 7 (python3 -m http.server 5000)"
    try:
        shell = make_shell(nursery, spawner, restart_delay=1, start_limit_burst=3)
        shell.feed(StartRequested())
        await settled(shell, State.ERRORED)
        assert spawner.processes == []  # never a child that would die with "address already in use"
        assert shell.machine.message.startswith("port 5000 is in use by pid 7 (python3 -m http.server 5000) "
                                                "(gave up after 3 starts")
        del busy_ports[5000]
        shell.feed(RestartRequested())
        await settled(shell, State.RUNNING)
    finally:
        busy_ports.pop(5000, None)


# -- liveness: health probes on the autojump clock --------------------------------------------------------------


class FakeProbe:
    """Stands in for `probes.probe_once` at the shell's import: answers as `mode` says -- "ok", "slow"
    (after `delay` seconds), "hang" (never), or an error text -- and records when each probe began and
    how many ran at once."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.delay = 0.0
        self.times: list[float] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, check: str, port: int, timeout: float) -> str | None:
        self.times.append(trio.current_time())
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.mode == "hang":
                await trio.sleep_forever()
            if self.mode == "slow":
                await trio.sleep(self.delay)
            return None if self.mode in ("ok", "slow") else self.mode
        finally:
            self.in_flight -= 1


@pytest.fixture
def probe(monkeypatch) -> FakeProbe:
    from swarmd.supervise import shell as shell_module

    fake = FakeProbe()
    monkeypatch.setattr(shell_module, "probe_once", fake)
    return fake


HEALTH = {"health_check": "tcp", "health_interval": 10, "health_timeout": 5, "health_failures": 3}
REFUSED = "cannot connect to 127.0.0.1:5000: Connection refused"


async def test_a_backend_that_stops_answering_is_stopped_by_its_ladder_and_restarted(autojump_clock, nursery,
                                                                                     probe):
    spawner = FakeSpawner(Behaviour(output=[(3, "READY")]))
    shell = make_shell(nursery, spawner, ready_check="log:^READY$", restart_delay=1, **HEALTH)
    began = trio.current_time()
    shell.feed(StartRequested())
    await settled(shell, State.RUNNING)
    assert trio.current_time() - began == pytest.approx(3)
    await trio.sleep(23)  # answers at +13 and +23 (the first an interval after ready: probes start once running)
    probe.mode = "hang"  # at +26: the process lives on, nothing answers
    hung_at = trio.current_time()
    await shell.wait_for(lambda machine: machine.state is State.STOPPING)
    stopped_at = trio.current_time()
    assert stopped_at - hung_at <= 10 * 3 + 10  # interval x failures + one interval
    assert shell.machine.message == "not answering health checks for 35 s (last: no answer within 5 s)"
    assert shell.machine.health_view()["failures"] == 3
    await shell.wait_for(lambda machine: machine.starts == 2)
    assert [round(t - began, 3) for t in probe.times] == [13, 23, 33, 43, 53]
    assert probe.most_in_flight == 1  # never two at once
    assert spawner.processes[0].signals == [(stopped_at, signal.SIGTERM)]
    assert gaps(spawner.times) == [round(stopped_at - began + 1, 3)]  # then the restart policy's delay
    assert shell.machine.restarts == 1 and shell.machine.health_failures == 0
    warnings = [line.text for line in shell.ring.tail(10) if line.stream == "swarmd"]
    assert warnings[0] == (f"pid {spawner.processes[0].pid} not answering health checks for 35 s (last: no answer "
                           "within 5 s): stopping it")


@pytest.mark.parametrize("delay, restarted", [(4.9, False), (5.1, True)])
async def test_a_slow_answer_counts_only_past_the_timeout(autojump_clock, nursery, probe, delay, restarted):
    probe.mode, probe.delay = "slow", delay
    spawner = FakeSpawner()
    shell = make_shell(nursery, spawner, **HEALTH)
    shell.feed(StartRequested())
    await settled(shell, State.RUNNING)
    with trio.move_on_after(305):
        await shell.wait_for(lambda machine: machine.starts > 1)
    assert (len(spawner.processes) > 1) is restarted
    if not restarted:  # 30 probes in 305 s, each answered: never a failure
        assert len(probe.times) == 30 and shell.machine.health_view()["failures"] == 0
        assert shell.machine.health_view()["last_ok"] is not None and shell.machine.restarts == 0
        assert gaps(probe.times) == [10.0] * 29  # start to start: a slow answer does not push them apart


async def test_a_probe_failure_during_a_stop_is_ignored(autojump_clock, nursery, probe):
    spawner = FakeSpawner(Behaviour(ignore_term=True))
    shell = make_shell(nursery, spawner, stop_timeout=30, **HEALTH)
    shell.feed(StartRequested())
    await settled(shell, State.RUNNING)
    probe.mode = "refused"
    await shell.wait_for(lambda machine: machine.health_failures == 2)
    await trio.sleep(7)
    probe.mode = "hang"  # a probe is in flight when the stop begins
    await trio.sleep(5)
    assert probe.in_flight == 1
    shell.feed(StopRequested("Disabled"))
    probes_before = len(probe.times)
    await shell.wait_at_rest()  # the whole ladder: SIGTERM ignored, SIGKILL 30 s later
    assert probe.in_flight == 0 and len(probe.times) == probes_before  # cancelled, and no new one
    assert (shell.machine.state, shell.machine.message, shell.machine.restarts) == (State.DISABLED, "Disabled", 0)
    assert [signum for _, signum in spawner.processes[0].signals] == [signal.SIGTERM, signal.SIGKILL]


async def test_a_restart_request_while_probes_fail_works_normally(autojump_clock, nursery, probe):
    spawner = FakeSpawner()
    shell = make_shell(nursery, spawner, **HEALTH)
    shell.feed(StartRequested())
    await settled(shell, State.RUNNING)
    probe.mode = REFUSED
    await shell.wait_for(lambda machine: machine.health_failures == 2)
    assert shell.machine.status == "running"
    probe.mode = "ok"
    shell.feed(RestartRequested())
    await shell.wait_for(lambda machine: machine.state is State.RUNNING and machine.starts == 2)
    assert shell.machine.health_failures == 0 and shell.machine.restarts == 0  # a person's restart
    ready = trio.current_time()
    await trio.sleep(25)
    assert [round(t - ready, 3) for t in probe.times[-2:]] == [10, 20]  # the new process is probed anew
    assert shell.machine.health_view() == {"failures": 0, "last_error": REFUSED, "last_ok": shell.machine.health_ok_at}
    assert len(spawner.processes) == 2


async def test_no_health_check_means_no_probe(autojump_clock, nursery, probe):
    shell = make_shell(nursery, FakeSpawner())
    shell.feed(StartRequested())
    await settled(shell, State.RUNNING)
    await trio.sleep(100)
    assert probe.times == [] and shell.machine.health_view() is None


async def test_a_remote_counts_its_failed_checks(autojump_clock, nursery, probe):
    shell = make_shell(nursery, FakeSpawner(), backend_type=TYPES["comfyui_api"], Address="http://10.0.0.2:8188",
                       health_interval=2, health_timeout=1, health_failures=3)
    shell.feed(StartRequested())
    await settled(shell, State.RUNNING)
    probe.mode = "hang"
    hung_at = trio.current_time()
    await trio.sleep(5.5)  # the checks at +2 and +4 failed (each after its 1 s): still running
    assert shell.machine.status == "running" and shell.machine.health_failures == 2
    await settled(shell, State.UNREACHABLE)
    assert trio.current_time() - hung_at == pytest.approx(3 * 2 + 1)  # the third, at +6, timed out
    assert shell.machine.message.startswith("unreachable: not answering health checks for ")
    assert shell.machine.message.endswith("(last: no answer within 1 s)")
