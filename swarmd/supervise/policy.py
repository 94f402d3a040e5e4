"""The restart policy of one backend: pure logic, no I/O, no clock of its own.

Theory of operation
-------------------
The supervisor tells the policy what happened -- a start, readiness held long enough to count as stable,
an exit -- each with the time it happened (trio's clock, so tests can use the autojump clock), and asks it
what to do after an exit. The answer is a `Decision`: start again after `delay` seconds, or settle in a
status (`errored`, or `disabled` for a clean exit that the policy does not restart) with a message a person
can act on.

* Which exits restart: `always` every exit; `on-failure` a non-zero status or death by a signal (a clean
  exit 0 does not); `never` none. Stops the daemon asked for never reach the policy.
* Backoff: the n-th consecutive restart waits `restart_delay * 2**(n-1)`, capped at `restart_delay_max`.
* Start limit: at most `start_limit_burst` starts inside any `start_limit_interval` window. A restart that
  would be one too many settles `errored` instead -- never a silent crash loop.
* `stable()` (the backend stayed ready for `stable_after`) forgets the consecutive exits, so the next crash
  restarts after the first delay again. `reset()` (restart, toggle, edit by a person) forgets everything.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from swarmd.types import RestartConfig


@dataclass(frozen=True)
class Exit:
    """What the policy needs to know of an exit."""

    failed: bool  # non-zero status, killed by a signal, or a failed start (e.g. not ready in time)
    text: str  # "exited with status 1", "not ready within 5 s", ...


@dataclass(frozen=True)
class Decision:
    restart: bool
    delay: float = 0.0
    status: str = "waiting"  # waiting (restart), errored or disabled (settled)
    message: str = ""


class RestartPolicy:
    """Counts starts and consecutive exits of one backend and decides what follows an exit."""

    def __init__(self, config: RestartConfig) -> None:
        self.config = config
        self._starts: deque[float] = deque()
        self.consecutive_exits = 0

    def reset(self) -> None:
        """A person restarted, toggled or edited the backend: start afresh."""
        self._starts.clear()
        self.consecutive_exits = 0

    def record_start(self, now: float) -> None:
        self._starts.append(now)
        self._forget_before(now - self.config.start_limit_interval)

    def stable(self) -> None:
        """The backend stayed ready for `stable_after`: the next crash is a first crash again."""
        self.consecutive_exits = 0

    def starts_in_window(self, at: float) -> int:
        """How many recorded starts lie inside the limit window ending at `at`."""
        since = at - self.config.start_limit_interval
        return sum(1 for t in self._starts if t > since)

    def next_delay(self) -> float:
        """The delay before the next restart, given the exits counted so far (at least one)."""
        exponent = max(self.consecutive_exits - 1, 0)
        # Cap the exponent too: 2**2000 overflows a float long before the cap applies.
        delay = self.config.restart_delay * (2 ** min(exponent, 60))
        return min(delay, self.config.restart_delay_max)

    def after_exit(self, now: float, exit: Exit) -> Decision:
        """Decide what follows an exit the daemon did not ask for."""
        policy = self.config.restart
        wants = policy == "always" or (policy == "on-failure" and exit.failed)
        if not wants:
            if exit.failed:
                return Decision(False, status="errored", message=f"{exit.text} (restart: {policy}); start it "
                                "again with a restart once fixed")
            return Decision(False, status="disabled", message=f"{exit.text} (restart: {policy})")
        self.consecutive_exits += 1
        delay = self.next_delay()
        burst = self.config.start_limit_burst
        if self.starts_in_window(now + delay) >= burst:
            interval = _seconds(self.config.start_limit_interval)
            return Decision(False, status="errored", message=(
                f"{exit.text}; gave up after {burst} starts within {interval} (start_limit_burst). "
                "Fix the cause, then restart it (swarmctl restart ID, or RestartBackends)."))
        return Decision(True, delay=delay, status="waiting",
                        message=f"{exit.text}; restart {self.consecutive_exits} in {_seconds(delay)}")

    def _forget_before(self, cutoff: float) -> None:
        while self._starts and self._starts[0] <= cutoff:
            self._starts.popleft()


def _seconds(value: float) -> str:
    if value >= 1 and float(value).is_integer():
        return f"{int(value)} s"
    return f"{value:.3g} s"
