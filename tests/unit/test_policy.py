"""The restart policy is pure: these tests drive it with trio's autojump clock, no processes."""

import trio

from swarmd.supervise.policy import Exit, RestartPolicy
from swarmd.types import RestartConfig

CRASH = Exit(failed=True, text="exited with status 1")
CLEAN = Exit(failed=False, text="exited with status 0")
KILLED = Exit(failed=True, text="killed by SIGKILL")


def policy(**changes) -> RestartPolicy:
    return RestartPolicy(RestartConfig(**changes))


async def crash_loop(p: RestartPolicy, exit: Exit = CRASH) -> list:
    """Start, crash at once, sleep the decided delay, again -- until the policy gives up."""
    decisions = []
    while True:
        p.record_start(trio.current_time())
        decision = p.after_exit(trio.current_time(), exit)
        decisions.append(decision)
        if not decision.restart:
            return decisions
        await trio.sleep(decision.delay)


async def test_delays_double_up_to_the_cap(autojump_clock):
    p = policy(restart_delay=1, restart_delay_max=5, start_limit_burst=100, start_limit_interval=1)
    delays = []
    for _ in range(6):
        p.record_start(trio.current_time())
        decision = p.after_exit(trio.current_time(), CRASH)
        delays.append(decision.delay)
        await trio.sleep(decision.delay)
    assert delays == [1, 2, 4, 5, 5, 5]


async def test_always_failing_child_gets_exactly_burst_starts_then_errored(autojump_clock):
    p = policy(restart_delay=0.1, start_limit_burst=5, start_limit_interval=60)
    decisions = await crash_loop(p)
    assert len(decisions) == 5  # five starts, the fifth exit would need a sixth start
    last = decisions[-1]
    assert (last.restart, last.status) == (False, "errored")
    assert "gave up after 5 starts within 60 s" in last.message
    assert "restart" in last.message  # says how to retry


async def test_slow_crashes_outside_the_window_restart_forever(autojump_clock):
    p = policy(restart_delay=0, start_limit_burst=3, start_limit_interval=10)
    for _ in range(20):
        p.record_start(trio.current_time())
        await trio.sleep(11)  # ran for 11 s, then crashed
        decision = p.after_exit(trio.current_time(), CRASH)
        assert decision.restart
        p.stable()


async def test_stable_resets_the_delay(autojump_clock):
    p = policy(restart_delay=1, start_limit_burst=100)
    await crash_loop_n(p, 3)
    assert p.next_delay() == 4
    p.stable()
    p.record_start(trio.current_time())
    assert p.after_exit(trio.current_time(), CRASH).delay == 1


async def crash_loop_n(p: RestartPolicy, n: int) -> None:
    for _ in range(n):
        p.record_start(trio.current_time())
        decision = p.after_exit(trio.current_time(), CRASH)
        await trio.sleep(decision.delay)


async def test_reset_forgets_starts(autojump_clock):
    p = policy(start_limit_burst=2)
    decisions = await crash_loop(p)
    assert decisions[-1].status == "errored"
    p.reset()
    assert p.consecutive_exits == 0
    assert p.starts_in_window(trio.current_time()) == 0


def test_each_policy_for_each_kind_of_exit():
    expected = {
        # policy:      exit 0,            exit 1,            SIGKILL
        "always": [True, True, True],
        "on-failure": [False, True, True],
        "never": [False, False, False],
    }
    for name, restarts in expected.items():
        for exit, restart in zip((CLEAN, CRASH, KILLED), restarts, strict=True):
            p = policy(restart=name)
            p.record_start(0.0)
            decision = p.after_exit(1.0, exit)
            assert decision.restart is restart, (name, exit)
            if not restart:
                assert decision.status == ("errored" if exit.failed else "disabled")
                assert f"restart: {name}" in decision.message


def test_zero_delay_restarts_at_once():
    p = policy(restart_delay=0)
    p.record_start(0.0)
    assert p.after_exit(0.001, KILLED).delay == 0


def test_huge_exponent_does_not_overflow():
    p = policy(restart_delay=0.1, restart_delay_max=30, start_limit_burst=10**6)
    p.consecutive_exits = 5000
    assert p.next_delay() == 30


async def test_autojump_fixture_is_real(autojump_clock):
    before = trio.current_time()
    await trio.sleep(3600)
    assert trio.current_time() - before >= 3600


def test_exit_info_names_every_signal():
    from swarmd.supervise.process import ExitInfo

    assert ExitInfo.from_returncode(-9).describe() == "killed by SIGKILL"
    assert ExitInfo.from_returncode(-40).to_api() == {"code": None, "signal": "signal 40",
                                                      "text": "killed by signal 40"}
    assert ExitInfo.from_returncode(3).to_api()["text"] == "exited with status 3"
