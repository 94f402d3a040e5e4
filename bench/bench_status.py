"""Status latency: one full status call over each system's in-process keep-alive client."""

from __future__ import annotations

import time

from bench.report import Goal, Result
from bench.session import Settings, budgeted, guarded, log, running
from bench.systems import Swarmd

NAME = "status"


def run(settings: Settings) -> Result:
    """Status latency at 10, 100 and 1000 children (quick: 10 and 100)."""
    result = Result(NAME, "Status latency: one status call, in-process keep-alive client")
    result.goals.append(Goal("status", "n=1000", 10.0, "status at 1000 under 10 ms"))
    result.notes.append("swarmd: POST /API/ListBackends {\"full_data\": true} over http.client on the unix "
                        "socket; supervisord: supervisor.getAllProcessInfo over XML-RPC on its unix socket; "
                        "circus: the `status` command through CircusClient (ZeroMQ ipc); replies parsed. "
                        "'status {}': swarmd's ListBackends without full_data (no peer equivalent)")
    for count in settings.sizes([10, 100, 1000], [10, 100]):
        for cls in settings.systems:
            with guarded(result.notes, f"status {cls.name} n={count}"), running(cls, count, settings) as (
                system, _spawn,
            ):
                time.sleep(1.0)
                for _ in range(3):
                    system.status()
                if isinstance(system, Swarmd):
                    result.notes += _check_swarmd(system, count)
                reps = budgeted(*((50, 5, 5.0) if settings.quick else (300, 15, 20.0)))
                for _index in reps:
                    start = time.perf_counter()
                    system.status()
                    result.add("status", f"n={count}", "ms", cls.name, (time.perf_counter() - start) * 1000)
                if isinstance(system, Swarmd):  # the short form too: {} instead of full_data
                    for _index in budgeted(*((50, 5, 3.0) if settings.quick else (300, 15, 10.0))):
                        start = time.perf_counter()
                        system.status(full_data=False)
                        result.add("status {}", f"n={count}", "ms", cls.name,
                                   (time.perf_counter() - start) * 1000)
                fig = result.get("status", f"n={count}", cls.name)
                if fig is not None:
                    log(f"status {cls.name} n={count}: median {fig.median:.2f} ms over {len(fig.samples)}")
    return result


def _check_swarmd(system: Swarmd, count: int) -> list[str]:
    """ListBackends must say `running` with the pid each child stamped; returns the mismatches as notes."""
    answer = system.status()
    wrong = []
    for ident, label in system.programs.items():
        entry = answer.get(str(ident), {})
        stamp = system.stamps.latest(label)
        if entry.get("status") != "running" or stamp is None or entry.get("pid") != stamp.pid:
            wrong.append(f"{ident}: {entry.get('status')} pid {entry.get('pid')} (child pid "
                         f"{stamp.pid if stamp else None})")
    if wrong:
        return [f"swarmd n={count}: ListBackends wrong for {len(wrong)} backends, e.g. {wrong[:3]}"]
    return []
