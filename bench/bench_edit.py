"""EditBackend at 1000 backends (and 10,000 in full mode) while a second client sends GetDaemonStatus every
10 ms (swarmd only).

The main client sends EditBackend calls one after another over its keep-alive connection, alternating a
title-only change and a settings change (`max_usages` 1 -> 2, which restarts that backend), each on a
different backend. A second client, in its own thread with its own keep-alive connection, sends
GetDaemonStatus every 10 ms (at once when an answer came late) from before the first edit until a while
after the last, and times each answer: the slowest is the longest the daemon's event loop stood still.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.bench_config import PartlyEnabledSwarmd, running_at_most
from bench.report import Goal, Result
from bench.session import Settings, budgeted, guarded, log
from bench.systems import Swarmd

NAME = "edit"
COUNT = 1000  # the fleet of the quick mode, and the first of the full mode's
COUNTS = (1000, 10_000)
#: EditBackend's goal (median, ms) by fleet size: 30 ms at 1000, 100 ms at 10,000 (issue 14).
EDIT_GOAL_MS = {1000: 30.0, 10_000: 100.0}
PERIOD_S = 0.010  # GetDaemonStatus every 10 ms
IDLE_S = 2.0  # polling before the first edit: the baseline
TAIL_S = 1.0  # polling after the last edit: what the edits left for later (restarts, the file watcher)
GAP_S = 0.05  # between one edit's answer (and, for a restart, the new child's exec) and the next edit
RESTART_TIMEOUT_S = 15.0
EDITS_LIMIT = "20 calls / 30 s (quick), 50 calls / 90 s (full), at least 5 / 10; at 10,000: 20 calls / 60 s"


class Poller:
    """GetDaemonStatus every PERIOD_S in a thread, over its own connection; (sent, latency ms or None)."""

    def __init__(self, system: Swarmd) -> None:
        self.system = system
        self.samples: list[tuple[float, float | None]] = []
        self.errors: list[str] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="GetDaemonStatus", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        conn = self.system.connect()
        due = time.perf_counter()
        try:
            while not self._halt.is_set():
                sent = time.perf_counter()
                try:
                    self.system.call("GetDaemonStatus", {}, conn)
                    self.samples.append((sent, (time.perf_counter() - sent) * 1000))
                except Exception as err:  # noqa: BLE001 - counted as a failure, then a new connection
                    self.samples.append((sent, None))
                    self.errors.append(f"{type(err).__name__}: {err}")
                    conn.close()
                    conn = self.system.connect()
                    if len(self.errors) > 20:
                        return
                due = max(due + PERIOD_S, time.perf_counter())  # late: the next one at once, never a burst
                self._halt.wait(due - time.perf_counter())
        finally:
            conn.close()


def run(settings: Settings) -> Result:
    """EditBackend latency and the slowest GetDaemonStatus answer meanwhile, at 1000 backends (full mode:
    and at 10,000)."""
    counts = (COUNT,) if settings.quick else COUNTS
    shown = " and ".join(f"{count:,}" for count in counts)
    result = Result(NAME, f"EditBackend at {shown} backends, GetDaemonStatus every 10 ms meanwhile",
                    systems=["swarmd"], stats=("median", "p95", "max"))
    for count in counts:
        goal = EDIT_GOAL_MS[count]
        result.goals.append(Goal("EditBackend", f"n={count}", goal,
                                 f"EditBackend at {count} backends under {goal:g} ms (median)"))
    result.goals.append(Goal("GetDaemonStatus", "edits", 50.0, f"no GetDaemonStatus answer over 50 ms during "
                             f"edits at {COUNT} backends", stat="max"))
    result.notes.append(
        "swarmd only: neither peer has an API call that edits one program's definition and saves it "
        "(supervisord: edit the file and `update`, what the `config` benchmark times; circus's `set` changes "
        "a watcher in memory only). EditBackend over the kept-alive client, one after another, alternating "
        "a title-only change and `max_usages` 1 -> 2 (restarts that backend; 'edit -> restarted': until "
        "its new child's exec stamp), each on another backend; GetDaemonStatus from a second client in its "
        f"own thread and connection every 10 ms: 'idle' answered in the {IDLE_S:.0f} s before the first "
        f"edit, 'edits' answered from the first edit until {TAIL_S:.0f} s after the last; max = the slowest "
        f"answer (at 10,000: 'idle n=10000', 'edits n=10000'). 'title'/'settings' at 10,000: "
        f"'title n=10000'/'settings n=10000'. Calls: at most {EDITS_LIMIT}")
    if Swarmd not in settings.systems:
        result.notes.append("swarmd not among --systems: nothing measured")
        return result
    for count in counts:
        _run_at(settings, result, count)
    return result


def _run_at(settings: Settings, result: Result, count: int) -> None:
    """One fleet of `count` backends: its edits, the poller's answers, the checks."""
    case = f"n={count}"
    suffix = "" if count == COUNT else f" {case}"  # the cases at 1000 keep their names of before
    with guarded(result.notes, f"edit swarmd n={count}"), running_at_most(Swarmd, count, settings,
                                                                          result.notes) as (system, _spawn):
        assert isinstance(system, Swarmd)
        time.sleep(1.0)
        system.call("GetDaemonStatus", {})
        poller = Poller(system)
        poller.start()
        try:
            time.sleep(IDLE_S)
            began = time.perf_counter()
            edited = _edits(system, result, count, settings.quick)
            time.sleep(TAIL_S)
        finally:
            poller.stop()
        # An answer that came after the first edit began is an 'edits' one, even when its call went out
        # before: a call sent just before a stall waits out the whole stall.
        during: list[float] = []
        for sent, latency in poller.samples:
            idle = sent + (latency or 0.0) / 1000 < began
            result.add("GetDaemonStatus", ("idle" if idle else "edits") + suffix, "ms", "swarmd", latency)
            if not idle and latency is not None:
                during.append(latency)
        result.notes.append(f"GetDaemonStatus answers over 50 ms during edits at {count}: "
                            f"{sum(latency > 50 for latency in during)} of {len(during)}")
        if poller.errors:
            result.notes.append(f"GetDaemonStatus failed {len(poller.errors)} times, "
                                f"e.g. {poller.errors[:3]}")
        result.notes += _check(system, edited, count)
        edit = result.get("EditBackend", case, "swarmd")
        status = result.get("GetDaemonStatus", "edits" + suffix, "swarmd")
        if edit is not None and status is not None:
            log(f"edit swarmd n={count}: EditBackend median {edit.median:.1f} ms over {len(edit.samples)}; "
                f"GetDaemonStatus max {status.max:.1f} ms, median {status.median:.2f} ms over "
                f"{len(status.samples)}")


def _edits(system: Swarmd, result: Result, count: int, quick: bool) -> dict[int, dict[str, Any]]:
    """The EditBackend calls, one after another; returns what each edited backend should now be."""
    case = f"n={count}"
    suffix = "" if count == COUNT else f" {case}"
    edited: dict[int, dict[str, Any]] = {}
    limits = (20, 5, 60.0) if count > COUNT else (20, 5, 30.0) if quick else (50, 10, 90.0)
    # Among the running ones (all of them, unless the limit on open files left some disabled).
    running = system.enabled if isinstance(system, PartlyEnabledSwarmd) else count
    for rep in budgeted(*limits):
        ident = (rep * 7919 + 17) % running  # a different backend each time, spread over the ids
        restart = rep % 2 == 1
        title, changes = (f"p{ident}", {"max_usages": 2}) if restart else (f"p{ident} edited {rep}", {})
        label = system.programs[ident]
        mark = system.stamps.mark()
        wall, start = time.time(), time.perf_counter()
        try:
            system.call("EditBackend", {"backend_id": ident, "title": title, "settings": changes})
        except Exception as err:  # noqa: BLE001 - a failed call is a failure sample and a note
            result.add("EditBackend", case, "ms", "swarmd", None)
            result.notes.append(f"EditBackend {ident} failed: {type(err).__name__}: {err}")
            system.close_client()
            continue
        elapsed = (time.perf_counter() - start) * 1000
        kind = "settings" if restart else "title"
        result.add("EditBackend", case, "ms", "swarmd", elapsed)
        result.add("EditBackend", kind + suffix, "ms", "swarmd", elapsed)
        edited[ident] = {"title": title, "max_usages": 2 if restart else 1}
        if restart:
            stamp = system.stamps.wait_label(label, mark, RESTART_TIMEOUT_S)
            result.add("edit -> restarted", "settings" + suffix, "ms", "swarmd",
                       (stamp.t - wall) * 1000 if stamp else None)
        if elapsed > 500:
            log(f"edit swarmd: EditBackend {ident} ({kind}) took {elapsed:.0f} ms")
        time.sleep(GAP_S)
    return edited


def _check(system: Swarmd, edited: dict[int, dict[str, Any]], count: int) -> list[str]:
    """The daemon's view (ListBackends full_data) and the file must both have every edit, each edited
    backend must run the child that stamped last, and the daemon's log must be free of errors."""
    from ruamel.yaml import YAML

    notes = []
    answer = system.status()
    on_disk = YAML(typ="safe").load(system.config_path.read_text())["backends"]
    wrong = []
    for ident, want in edited.items():
        entry, saved = answer.get(str(ident), {}), on_disk.get(ident) or {}
        stamp = system.stamps.latest(system.programs[ident])
        saved_usages = (saved.get("settings") or {}).get("max_usages", 1)
        if (entry.get("title"), entry.get("max_usages"), saved.get("title"), saved_usages) != (
                want["title"], want["max_usages"], want["title"], want["max_usages"]):
            wrong.append(f"{ident}: API {entry.get('title')!r}/{entry.get('max_usages')}, file "
                         f"{saved.get('title')!r}/{saved_usages}, want {want['title']!r}/{want['max_usages']}")
        elif entry.get("status") != "running" or stamp is None or entry.get("pid") != stamp.pid:
            wrong.append(f"{ident}: {entry.get('status')} pid {entry.get('pid')} (child pid "
                         f"{stamp.pid if stamp else None})")
    if len(answer) != count or len(on_disk) != count:
        wrong.append(f"{len(answer)} backends in ListBackends, {len(on_disk)} in the file (want {count})")
    if wrong:
        notes.append(f"CHECK: {len(wrong)} edited backends wrong, e.g. {wrong[:3]}")
    log_text = (system.dir / "daemon.log").read_text(errors="replace")
    # swarmd's lines: `DATE TIME LEVEL message`; anything else (a traceback) is worth a look too.
    bad = [line for line in log_text.splitlines()
           if line.split()[2:3] in (["warning"], ["error"], ["critical"]) or "Traceback" in line]
    if bad:
        notes.append(f"daemon log: {len(bad)} warning/error lines, e.g. {bad[:3]}")
    return notes
