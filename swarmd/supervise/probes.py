"""Readiness probes: is a freshly started backend ready to serve?

Each probe retries with a gentle backoff (10 ms doubling to 1 s, never a busy loop) until it succeeds;
the caller bounds it with the backend's ready_timeout and cancels it when the child dies.
"""

from __future__ import annotations

import re

import trio

from swarmd.httpclient import HttpError, request

FIRST_DELAY = 0.01
MAX_DELAY = 1.0


async def _backoff(attempt: int) -> None:
    await trio.sleep(min(FIRST_DELAY * (2**attempt), MAX_DELAY))


async def wait_tcp(port: int, host: str = "127.0.0.1") -> None:
    attempt = 0
    while True:
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            await _backoff(attempt)
            attempt += 1
            continue
        await stream.aclose()
        return


async def wait_http(url: str) -> None:
    """Ready once `url` answers GET with a 2xx or 3xx status."""
    attempt = 0
    while True:
        try:
            response = await request("GET", url, timeout=5.0)
            if 200 <= response.status < 400:
                return
        except HttpError:
            pass
        await _backoff(attempt)
        attempt += 1


class LogMatcher:
    """Ready once a line of the child's output matches `pattern` (fed by the supervisor)."""

    def __init__(self, pattern: str) -> None:
        self.regex = re.compile(pattern)
        self.matched = trio.Event()

    def feed(self, line: str) -> None:
        if not self.matched.is_set() and self.regex.search(line):
            self.matched.set()


async def wait_ready(check: str, port: int, log_matcher: LogMatcher | None) -> None:
    """Return when the check named by `check` (none | tcp | http://... | log:REGEX) passes."""
    if check in ("", "none"):
        return
    if check == "tcp":
        await wait_tcp(port)
    elif check.startswith("http://"):
        await wait_http(check)
    elif check.startswith("log:"):
        assert log_matcher is not None
        await log_matcher.matched.wait()
    else:  # validated at load time; a programming error if reached
        raise ValueError(f"unknown ready_check {check!r}")
