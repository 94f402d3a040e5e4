"""Readiness probes: is a freshly started backend ready to serve?

Each probe retries with a gentle backoff (10 ms doubling to 1 s, never a busy loop) until it succeeds;
the caller bounds it with the backend's ready_timeout and cancels it when the child dies.
"""

from __future__ import annotations

import trio

from swarmd.httpclient import HttpError, request
from swarmd.settings import describe

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


async def wait_ready(check: str, port: int) -> None:
    """Return when the check named by `check` (none | tcp | http://...) passes. (`log:REGEX` is matched by
    the shell against the output it reads.)"""
    if check in ("", "none"):
        return
    if check == "tcp":
        await wait_tcp(port)
    elif check.startswith("http://"):
        await wait_http(check)
    else:  # validated at load time; a programming error if reached
        raise ValueError(f"unknown ready_check {describe(check)}")
