"""`python -m bench.profile SCENARIO [--count N]`: where swarmd spends its time, with py-spy.

Scenarios: restart (kill children one after another), idle (nothing happens), reload (add/remove a backend
by editing the file), status (ListBackends in a loop), spawn (daemon start until all children exec'd),
shutdown (SIGTERM until every child is gone). py-spy attaches to the running daemon (non-blocking, so the
daemon is not paused) for just that phase -- except spawn, which runs the daemon under py-spy from the start.
Prints the hottest lines (self time) and functions (inclusive time), and for idle the CPU time of each
thread; writes the raw stacks to bench/results/profile-<scenario>.txt.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench import procs
from bench.report import RESULTS
from bench.session import Settings, running
from bench.systems import BIN, Swarmd

PY_SPY = str(BIN / "py-spy")


def _record(pid: int, out: Path, seconds: float, rate: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([PY_SPY, "record", "--pid", str(pid), "--nonblocking", "--rate", str(rate),
                             "--format", "raw", "--output", str(out), "--duration", str(int(seconds))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # attached
    return proc


def summarize(raw: Path, top: int = 25) -> str:
    """Self time by line and inclusive time by function, from py-spy's raw (collapsed) stacks."""
    by_line: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        by_line[frames[-1]] += count
        seen = set()
        for frame in frames:
            name = frame.rsplit(":", 1)[0] if frame.endswith(")") else frame
            if name not in seen:
                seen.add(name)
                by_function[name] += count
    lines = [f"{total} samples", "", "self time by line:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in by_line.most_common(top)]
    lines += ["", "inclusive time by function:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame})" for frame, n in by_function.most_common(top)]
    return "\n".join(lines) if total else "no samples"


def thread_cpu(pid: int, seconds: float) -> str:
    """CPU time of each thread of `pid` over `seconds` (schedstat, ns), with its name and wakeups."""
    def sample() -> dict[str, tuple[str, int, int]]:
        out = {}
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as handle:
                    ns, _wait, slices = (int(x) for x in handle.read().split())
                with open(f"/proc/{pid}/task/{task}/comm") as handle:
                    name = handle.read().strip()
            except FileNotFoundError:
                continue
            out[task] = (name, ns, slices)
        return out

    before = sample()
    time.sleep(seconds)
    after = sample()
    rows = [f"per-thread CPU over {seconds:g} s (daemon pid {pid}):"]
    for task, (name, ns, slices) in sorted(after.items()):
        old = before.get(task, (name, 0, 0))
        rows.append(f"  tid {task:>7} {name:<16} {100 * (ns - old[1]) / 1e9 / seconds:7.3f}% "
                    f"{(slices - old[2]) / seconds:7.1f} wakeups/s")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["restart", "idle", "reload", "status", "spawn", "shutdown"])
    parser.add_argument("--count", type=int, default=100, help="children (default 100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the profiled phase")
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds to wait after all children started (swarmd's stable_after is 10 s)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = RESULTS / f"profile-{args.scenario}.txt"
    root = Path(tempfile.mkdtemp(prefix="swarmd-profile-", dir="/tmp"))
    settings = Settings(quick=True, root=root, systems=[Swarmd])
    try:
        report = _scenario(args, settings, raw)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(report)
    (RESULTS / f"profile-{args.scenario}.summary.txt").write_text(report + "\n")
    return 0


class _SpawnUnderPySpy(Swarmd):
    """swarmd started by py-spy, for profiling the start itself."""

    raw: Path = Path("/dev/null")
    rate: int = 1000

    def daemon_argv(self) -> list[str]:
        return [PY_SPY, "record", "--nonblocking", "--rate", str(self.rate), "--format", "raw", "--output",
                str(self.raw), "--", *super().daemon_argv()]


def _scenario(args: argparse.Namespace, settings: Settings, raw: Path) -> str:
    if args.scenario == "spawn":
        _SpawnUnderPySpy.raw, _SpawnUnderPySpy.rate = raw, args.rate
        with running(_SpawnUnderPySpy, args.count, settings) as (system, spawn):
            assert system.proc is not None
            daemon = psutil.Process(system.proc.pid).children()[0]
            daemon.send_signal(signal.SIGTERM)
            system.proc.wait(timeout=120)
        return f"spawn of {args.count}: {spawn:.2f} s (under py-spy)\n" + summarize(raw)
    with running(Swarmd, args.count, settings) as (system, spawn):
        assert system.proc is not None
        pid = system.proc.pid
        time.sleep(args.settle)
        header = f"{args.scenario}, {args.count} children (spawn {spawn:.2f} s)"
        if args.scenario == "idle":
            cpu = thread_cpu(pid, args.seconds)
            spy = _record(pid, raw, args.seconds, args.rate)
            spy.wait()
            return f"{header}\n{cpu}\n\n{summarize(raw)}"
        spy = _record(pid, raw, args.seconds, args.rate)
        detail = _act(args, system)
        spy.wait()
        return f"{header}\n{detail}\n\n{summarize(raw)}"


def _act(args: argparse.Namespace, system: Swarmd) -> str:
    """The profiled phase: what the daemon is made to do while py-spy records."""
    end = time.monotonic() + args.seconds - 1.5
    latencies: list[float] = []
    if args.scenario == "restart":
        index = 0
        while time.monotonic() < end:
            label = f"c{index % args.count}"
            before = system.stamps.latest(label)
            assert before is not None
            mark = system.stamps.mark()
            start = time.time()
            os.kill(before.pid, signal.SIGKILL)
            after = system.stamps.wait_label(label, mark, 10)
            if after:
                latencies.append((after.t - start) * 1000)
            index += 1
            time.sleep(0.02)
    elif args.scenario == "status":
        while time.monotonic() < end:
            start = time.perf_counter()
            system.status()
            latencies.append((time.perf_counter() - start) * 1000)
    elif args.scenario == "reload":
        rep = 0
        while time.monotonic() < end:
            label = f"x{rep}"
            system.programs[999_999] = label
            mark = system.stamps.mark()
            start = time.time()
            system.write_config()
            stamp = system.stamps.wait_label(label, mark, 10)
            if stamp:
                latencies.append((stamp.t - start) * 1000)
            time.sleep(0.3)
            del system.programs[999_999]
            system.write_config()
            time.sleep(0.4)
            rep += 1
    elif args.scenario == "shutdown":
        children = system.child_pids()
        start = time.time()
        system.terminate()
        gone = procs.wait_gone(children, 60)
        if gone:
            latencies.append((gone - start) * 1000)
    if not latencies:
        return "no latencies measured"
    latencies.sort()
    return (f"{len(latencies)} samples: median {latencies[len(latencies) // 2]:.2f} ms, "
            f"max {latencies[-1]:.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
