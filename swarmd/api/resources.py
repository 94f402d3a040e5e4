"""CPU and system RAM figures for GetServerResourceInfo, read from /proc.

CPU usage is the busy share of all CPU time between two samples of /proc/stat. The sampler keeps the
previous sample, so a client polling every few seconds gets the usage over its own polling interval; the
first call (or one after a long pause) measures over a short window instead of answering "since boot".
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import trio

#: A previous sample older than this is not a useful baseline: measure a fresh window instead.
SAMPLE_MAX_AGE = 30.0
#: The window measured when there is no usable previous sample.
FRESH_WINDOW = 0.1
#: Samples closer together than this are not measured again.
MIN_INTERVAL = 0.5


@dataclass(frozen=True)
class CpuTimes:
    busy: int
    total: int


def read_cpu_times(path: str = "/proc/stat") -> CpuTimes | None:
    """The machine-wide CPU jiffies from the `cpu` line of /proc/stat, or None where it cannot be read."""
    try:
        with open(path, encoding="ascii") as handle:
            first = handle.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal (guest time is already counted in user/nice).
    fields = [int(value) for value in first[1:9]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields)
    return CpuTimes(busy=total - idle, total=total)


def read_meminfo(path: str = "/proc/meminfo") -> dict[str, int] | None:
    """System RAM in bytes: {"total", "used", "free"} where free is what is available to new programs."""
    values: dict[str, int] = {}
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    values[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    except (OSError, ValueError):
        return None
    total = values.get("MemTotal")
    if total is None:
        return None
    free = values.get("MemAvailable", values.get("MemFree", 0))
    return {"total": total, "used": total - free, "free": free}


class CpuSampler:
    """Owns the previous /proc/stat sample; `usage()` is the busy share (0.0 to 1.0) since then.

    Calls closer together than MIN_INTERVAL get the last figure again: a few jiffies are too coarse to
    measure, and measuring a fresh window each time would make every quick caller wait.
    """

    def __init__(self) -> None:
        self._last: CpuTimes | None = None
        self._last_at = 0.0
        self._usage = 0.0

    async def usage(self) -> float:
        now = time.monotonic()
        previous = self._last
        if previous is not None and now - self._last_at < MIN_INTERVAL:
            return self._usage
        current = read_cpu_times()
        if current is None:
            return 0.0
        if previous is None or now - self._last_at > SAMPLE_MAX_AGE or current.total <= previous.total:
            previous = current
            await trio.sleep(FRESH_WINDOW)
            current = read_cpu_times() or previous
            now = time.monotonic()
        elapsed = current.total - previous.total
        if elapsed > 0:
            self._usage = max(0.0, min(1.0, (current.busy - previous.busy) / elapsed))
        self._last, self._last_at = current, now
        return self._usage


def cpu_cores() -> int:
    return os.cpu_count() or 1
