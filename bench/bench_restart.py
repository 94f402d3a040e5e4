"""Restart latency: SIGKILL of a child -> its replacement exec'd (the child's own clock at exec)."""

from __future__ import annotations

import os
import random
import signal
import time

from bench.report import Goal, Result
from bench.session import Settings, budgeted, guarded, log, running

NAME = "restart"
TIMEOUT_S = 15.0  # circus respawns on its 5 s check_delay; supervisord on its ~1 s loop


def run(settings: Settings) -> Result:
    """Restart latency at 10 and 1000 children (quick: 10)."""
    result = Result(NAME, "Restart latency: SIGKILL of a child -> replacement exec'd")
    result.goals += [
        Goal("restart", "n=10", 3.0, "restart under 3 ms (10 children)"),
        Goal("restart", "n=1000", 5.0, "restart under 5 ms (1000 children)"),
    ]
    result.notes.append("swarmd restart_delay 0; supervisord autorestart, startsecs=0; circus respawn, "
                        "default check_delay (5 s); one kill at a time, a different child each time, each kill at a random "
                        "moment of the peer's poll period (supervisord 1 s, circus 5 s)")
    for count in settings.sizes([10, 1000], [10]):
        for cls in settings.systems:
            with guarded(result.notes, f"restart {cls.name} n={count}"), running(cls, count, settings) as (
                system, _spawn,
            ):
                time.sleep(1.0)
                reps = budgeted(*((10, 5, 15.0) if settings.quick else (60, 12, 35.0)))
                for index in reps:
                    label = f"c{(index * 7919) % count}"
                    before = system.stamps.latest(label)
                    assert before is not None
                    time.sleep(random.uniform(0, cls.poll_period))
                    mark = system.stamps.mark()
                    start = time.time()
                    os.kill(before.pid, signal.SIGKILL)
                    after = system.stamps.wait_label(label, mark, TIMEOUT_S)
                    value = (after.t - start) * 1000 if after else None
                    result.add("restart", f"n={count}", "ms", cls.name, value)
                    time.sleep(0.05)
                fig = result.get("restart", f"n={count}", cls.name)
                if fig is not None:
                    log(f"restart {cls.name} n={count}: median {fig.median:.2f} ms over {len(fig.samples)}")
    return result
