"""The benchmark child and the log of its start stamps.

Every supervised child is the same tiny bash script: its first line reads `$EPOCHREALTIME` (bash 5, about
1 ms after exec), writes `LABEL PID TIME` as one line (atomic: under PIPE_BUF) into a FIFO that the benchmark
reads, then execs `sleep` in the same pid. So "the replacement was exec'd" is the child's own clock reading,
taken the same way for every supervisor, and waiting for it costs the benchmark no polling.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CHILD_SCRIPT = """#!/bin/bash
t=$EPOCHREALTIME
printf '%s %s %s\\n' "$1" "$$" "$t" 1<>"$2"
exec -a "$0" {sleep} 1000000
"""


def write_child(directory: Path) -> Path:
    """Write the child script into `directory` (its path marks every child as this run's)."""
    path = directory / "child.sh"
    sleep = shutil.which("sleep") or "/bin/sleep"
    path.write_text(CHILD_SCRIPT.format(sleep=sleep))
    path.chmod(0o755)
    return path


_CLOSE = b"--close--"


@dataclass(frozen=True)
class Stamp:
    """One child start: its label (argv[1]), its pid and its own reading of the clock at exec."""

    label: str
    pid: int
    t: float


class StampLog:
    """Reads the FIFO in a thread; lets the benchmark wait for stamps without polling."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        # O_RDWR: the FIFO always has a writer, so reads block instead of seeing EOF, and children's
        # writes never block on a missing reader.
        self._fd = os.open(path, os.O_RDWR)
        self._stamps: list[Stamp] = []
        self._latest: dict[str, Stamp] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="stamps", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            with self._cond:
                for line in lines:
                    if line == _CLOSE:
                        return
                    parts = line.decode(errors="replace").split()
                    if len(parts) != 3:
                        continue
                    stamp = Stamp(parts[0], int(parts[1]), float(parts[2]))
                    self._stamps.append(stamp)
                    self._latest[stamp.label] = stamp
                self._cond.notify_all()

    def mark(self) -> int:
        """A position: later waits look only at stamps after it."""
        with self._cond:
            return len(self._stamps)

    def latest(self, label: str) -> Stamp | None:
        with self._cond:
            return self._latest.get(label)

    def pids(self, labels: list[str]) -> list[int]:
        """The pid of the latest start of each label (labels never started are skipped)."""
        with self._cond:
            return [self._latest[label].pid for label in labels if label in self._latest]

    def wait_label(self, label: str, since: int, timeout: float) -> Stamp | None:
        """The first stamp of `label` after position `since`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for stamp in self._stamps[since:]:
                    if stamp.label == label:
                        return stamp
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def wait_all(self, labels: set[str], since: int, timeout: float) -> float | None:
        """Wait until every label has a stamp after `since`; the time of the last one, or None."""
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        position = since
        last = 0.0
        with self._cond:
            while True:
                for stamp in self._stamps[position:]:
                    if stamp.label in labels and stamp.label not in seen:
                        seen.add(stamp.label)
                        last = max(last, stamp.t)
                position = len(self._stamps)
                if seen >= labels:
                    return last
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def close(self) -> None:
        """Stop the reader thread and close the FIFO."""
        if not self._closed:
            self._closed = True
            os.write(self._fd, _CLOSE + b"\n")
            self._thread.join(timeout=2)
            os.close(self._fd)
