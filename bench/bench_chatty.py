"""Chatty children: how much a supervisor slows a child that prints as fast as it can, how much CPU the
daemon spends per line, and how much memory long lines without newlines cost it.

Every system captures the output for the operator, which is the job being compared: swarmd keeps it in
the backend's ring and forwards it to its own stderr (a file here, the journal under systemd);
supervisord and circus write it to a log file per program. The baselines are the same child writing to
/dev/null and into a pipe read by `cat`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from bench import procs
from bench.report import Goal, Result
from bench.session import Settings, guarded, log
from bench.systems import Circus, Supervisord, Swarmd, System

NAME = "chatty"

#: The child: prints one ~60-byte line after another through a 64 KiB buffer (the same under every system,
#: whatever PYTHONUNBUFFERED says) for SECONDS, then writes its line count to RESULT and sleeps (it must
#: not exit: a restart would add a second writer). It starts once the file `go` exists next to RESULT.
#: With MODE "long" it writes MEGABYTES of text without a
#: newline instead, then its byte count.
CHILD = r'''
import io, os, sys, time
label, result, mode, amount = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
out = open(1, "wb", buffering=65536, closefd=False)
go = os.path.join(os.path.dirname(result), "go")
while not os.path.exists(go):  # the benchmark measures the daemon at rest first
    time.sleep(0.01)
count = 0
if mode == "lines":
    # print() per line, as a chatty server logs: the line is formatted and buffered, and the buffer is
    # written out whenever it fills
    text = io.TextIOWrapper(out, write_through=False)
    end = time.monotonic() + amount
    while time.monotonic() < end:
        for _ in range(1000):
            print("chatty: the quick brown fox jumps over the lazy dog", count, file=text)
            count += 1
    text.flush()
else:
    block = b"x" * 65536
    for _ in range(int(amount * 16)):
        out.write(block)
        count += len(block)
out.flush()
tmp = result + ".tmp"
with open(tmp, "w") as handle:
    handle.write(str(count))
os.rename(tmp, result)
time.sleep(3600)
'''


def _write_child(directory: Path) -> Path:
    path = directory / "chatty.py"
    path.write_text(CHILD)
    return path


def _chatty(cls: type[System], mode: str, amount: float) -> type[System]:
    """`cls` running the chatty child (`mode`, `amount`) as each program, with its output captured."""

    def argv_for(self: System, label: str) -> list[str]:
        return [sys.executable, str(self.dir / "chatty.py"), label, str(self.dir / f"{label}.count"), mode,
                str(amount)]

    def config_text(self: System) -> str:
        text = cls.config_text(self)
        if cls is Supervisord:  # a log file per program instead of NONE
            text = re.sub(r"\[program:(\w+)\]", r"[program:\1]\nstdout_logfile=%(here)s/\1.out", text)
            text = text.replace("stdout_logfile=NONE\n", "")
        elif cls is Circus:  # circus discards output unless a stream is configured
            text = text.replace(f"cmd = {self.child}\n", f"cmd = {sys.executable}\n")
            text = re.sub(r"\[watcher:(\w+)\]", lambda m: (
                f"[watcher:{m[1]}]\nstdout_stream.class = FileStream\n"
                f"stdout_stream.filename = {self.dir}/{m[1]}.out"), text)
        return text

    def helper_pids(self: System) -> list[int]:
        """The daemon and its helpers, not the chatty children (whose argv[0] is the interpreter)."""
        assert self.proc is not None
        return procs.helpers(self.proc.pid, str(self.dir / "chatty.py"))

    return type(f"Chatty{cls.__name__}", (cls,), {"argv_for": argv_for, "config_text": config_text,
                                                  "helper_pids": helper_pids})


def run(settings: Settings) -> Result:
    result = Result(NAME, "Chatty children: child's write rate, daemon CPU per line, long-line memory")
    result.goals += [
        Goal("slowdown vs cat", "1 child", 1.5, "a chatty child no slower than 1.5x into a pipe read by cat"),
        Goal("daemon intake", "1 child", 1.0, "daemon takes in >= 1 M lines per CPU second", higher=True),
        Goal("RSS growth", "16 x 80 MB", 40.0, "16 children x 80 MB without newlines: RSS grows < 40 MB"),
    ]
    seconds = 3.0 if settings.quick else 10.0
    reps = 1 if settings.quick else 3
    result.notes.append(
        f"lines: one child writes 60-byte lines through a 64 KiB buffer for {seconds:g} s; its line count / "
        f"{seconds:g} s is its rate; slowdown = rate into a pipe read by cat / rate under the system; daemon "
        "intake = lines / CPU seconds of the daemon and "
        "its helpers during the run. RSS growth: 16 children write 80 MB each without a newline; daemon and "
        "helpers' RSS after - before. swarmd rings + its stderr to a file; peers: a log file per program")
    for rep in range(reps):
        baseline = _bare(settings.root, seconds, "cat")
        devnull = _bare(settings.root, seconds, "null")
        result.add("child rate", "into /dev/null", "M lines/s", "swarmd", devnull / 1e6)
        result.add("child rate", "into cat", "M lines/s", "swarmd", baseline / 1e6)
        log(f"chatty baseline rep {rep}: /dev/null {devnull / 1e6:.2f} M lines/s, cat {baseline / 1e6:.2f}")
        for cls in settings.systems:
            with guarded(result.notes, f"chatty {cls.name} rep {rep}"):
                rate, intake = _lines(settings, cls, seconds)
                result.add("child rate", "1 child", "M lines/s", cls.name, rate / 1e6)
                result.add("slowdown vs cat", "1 child", "x", cls.name, baseline / rate)
                result.add("daemon intake", "1 child", "M lines/CPU s", cls.name, intake / 1e6)
                log(f"chatty {cls.name}: {rate / 1e6:.2f} M lines/s ({baseline / rate:.2f}x slower than cat), "
                    f"daemon {intake / 1e6:.2f} M lines per CPU second")
    for cls in settings.systems:
        with guarded(result.notes, f"long lines {cls.name}"):
            grown = _long_lines(settings, cls, 16, 80)
            result.add("RSS growth", "16 x 80 MB", "MB", cls.name, grown / 1e6)
            log(f"long lines {cls.name}: RSS +{grown / 1e6:.1f} MB")
    return result


def _bare(root: Path, seconds: float, sink: str) -> float:
    """The child's rate (lines/s) writing to /dev/null or into a pipe read by `cat`."""
    directory = root / f"bare-{sink}-{time.monotonic_ns()}"
    directory.mkdir()
    child = _write_child(directory)
    count = directory / "count"
    (directory / "go").touch()
    argv = [sys.executable, str(child), "bare", str(count), "lines", str(seconds)]
    with open("/dev/null", "wb") as null:
        if sink == "null":
            proc = subprocess.Popen(argv, stdout=null)
            reader = None
        else:
            reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=null)
            proc = subprocess.Popen(argv, stdout=reader.stdin)
            assert reader.stdin is not None
            reader.stdin.close()
    try:
        lines = _wait_count(count, seconds + 30)
    finally:
        proc.kill()
        proc.wait()
        if reader is not None:
            reader.kill()
            reader.wait()
    return lines / seconds


def _wait_count(path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not written in {timeout:g} s")
        time.sleep(0.02)
    return int(path.read_text())


def _start(settings: Settings, cls: type[System], mode: str, amount: float, count: int) -> System:
    chatty = _chatty(cls, mode, amount)
    system = chatty(settings.root, settings.swarmd_src) if cls is Swarmd else chatty(settings.root)  # type: ignore[call-arg]
    _write_child(system.dir)
    return system


def _lines(settings: Settings, cls: type[System], seconds: float) -> tuple[float, float]:
    """(the child's rate in lines/s, the daemon's lines per CPU second) under `cls`."""
    system = _start(settings, cls, "lines", seconds, 1)
    try:
        system.start({0: "c0"})
        system.wait_api()
        assert system.proc is not None
        helpers = system.helper_pids()
        before = procs.cpu_ns(helpers)
        (system.dir / "go").touch()
        lines = _wait_count(system.dir / "c0.count", seconds + 60)
        # The daemon may still be draining the pipe's last 64 KiB: a moment for it.
        time.sleep(0.2)
        used = (procs.cpu_ns(helpers) - before) / 1e9
        return lines / seconds, lines / used if used else float("inf")
    finally:
        system.close()


def _long_lines(settings: Settings, cls: type[System], children: int, megabytes: int) -> int:
    """RSS growth (bytes) of the daemon and its helpers while `children` each write `megabytes` MB
    without a newline."""
    system = _start(settings, cls, "long", megabytes, children)
    try:
        system.start({i: f"c{i}" for i in range(children)})
        system.wait_api()
        helpers = system.helper_pids()
        time.sleep(0.5)  # every child started and waiting for the go
        before = procs.rss_bytes(helpers)
        (system.dir / "go").touch()
        for i in range(children):
            _wait_count(system.dir / f"c{i}.count", 300)
        time.sleep(0.5)
        return procs.rss_bytes(system.helper_pids()) - before
    finally:
        system.close()
