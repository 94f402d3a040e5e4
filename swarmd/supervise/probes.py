"""Readiness probes: is a freshly started backend ready to serve? And health probes: does a running one
still answer?

Each probe retries with a gentle backoff (10 ms doubling to 1 s, never a busy loop) until it succeeds;
the caller bounds it with the backend's ready_timeout and cancels it when the child dies.

A probe that succeeds proves that *something* serves the port, not that the backend does (issue #13): with
a port another process already serves, a tcp or http probe reaches that process while the backend's own
child dies with "address already in use". So a probe may be given `owned`, asked after each probe that
succeeds: the probe counts only when `owned()` says the listening socket may be the backend's
(`backend_owns` builds it from the backend's process group with `swarmd.supervise.ports`); otherwise the
probe backs off and tries again, and the ready timeout or the child's exit ends the start as before.

Health probes (`probe_once`) are single shots of the same tcp and http checks, bounded by a timeout, that
say what went wrong instead of retrying: the shell repeats them every health_interval once the backend runs
and the lifecycle counts the failures. They do not ask `owned` again: readiness proved the port the
backend's, and the backend keeps it while it runs (a walk of /proc at every probe would cost more than it
could tell).

A limit of that rule: a backend whose port is served by a process outside its process group (`docker run
-p` serves it through docker-proxy, a command that hands the work to a system service) is never ready by a
tcp or http check; give it `ready_check: log:REGEX` (or `none`), which does not look at the port.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable

import trio

from swarmd.httpclient import BadUrl, HttpError, parse_url, request
from swarmd.settings import describe
from swarmd.supervise import ports

FIRST_DELAY = 0.01
MAX_DELAY = 1.0

#: Asked after a probe that succeeded: may what answered be the backend? (see `backend_owns`)
Owned = Callable[[], Awaitable[bool]]


async def _backoff(attempt: int) -> None:
    await trio.sleep(min(FIRST_DELAY * (2**attempt), MAX_DELAY))


async def _counts(owned: Owned | None) -> bool:
    return owned is None or await owned()


async def wait_tcp(port: int, host: str = "127.0.0.1", owned: Owned | None = None) -> None:
    """Ready once `host:port` accepts a connection (and `owned()`, when given, says it is the backend's)."""
    attempt = 0
    while True:
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            pass
        else:
            await stream.aclose()
            if await _counts(owned):
                return
        await _backoff(attempt)
        attempt += 1


async def wait_http(url: str, owned: Owned | None = None) -> None:
    """Ready once `url` answers GET with a 2xx or 3xx status (and `owned()`, when given, says the
    listening socket is the backend's)."""
    attempt = 0
    while True:
        try:
            response = await request("GET", url, timeout=5.0)
            if 200 <= response.status < 400 and await _counts(owned):
                return
        except HttpError:
            pass
        await _backoff(attempt)
        attempt += 1


async def wait_ready(check: str, port: int, owned: Owned | None = None) -> None:
    """Return when the check named by `check` (none | tcp | http://...) passes. (`log:REGEX` is matched by
    the shell against the output it reads.)

    With `owned`, a tcp or http probe that succeeds counts only when `await owned()` is true as well: a
    port answered by another process is not readiness. Without it (None), any answer counts."""
    if check in ("", "none"):
        return
    if check == "tcp":
        await wait_tcp(port, owned=owned)
    elif check.startswith("http://"):
        await wait_http(check, owned)
    else:  # validated at load time; a programming error if reached
        raise ValueError(f"unknown ready_check {describe(check)}")


def probed_port(check: str, port: int) -> int:
    """The port of this machine a readiness check reaches: `port` for tcp (127.0.0.1), the URL's port for
    http:// (a ready_check may name another port than the backend's) when its host is this machine's;
    0 -- nothing to look up in /proc -- for none, log:REGEX, a URL that cannot be used, and a host that is
    not visibly this machine's (another machine, or a name other than localhost: no lookup is made)."""
    if check == "tcp":
        return port
    if check.startswith("http://"):
        try:
            target = parse_url(check)
        except BadUrl:
            return 0
        return target.port if is_this_machine(target.host) else 0
    return 0


def is_this_machine(host: str) -> bool:
    """Whether `host` (as a URL names it, an IPv6 address without brackets) is an address of this machine:
    localhost, a loopback or wildcard address, or one a socket can be bound to here (a NIC's). A name other
    than localhost is not looked up (False)."""
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if ip.is_loopback or ip.is_unspecified:
        return True
    try:
        with socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


def backend_owns(check: str, port: int, pgid: int) -> Owned | None:
    """The `owned` of `wait_ready` for a backend whose processes are process group `pgid` (the child's pid:
    each start runs in its own session): after a probe succeeds, it asks `ports.owned_by_group` (in a
    worker thread) whether the socket listening on the port the check reaches may be the group's. None for
    a check that probes no port of this machine (none, log:REGEX, another host's URL): any answer counts,
    as before."""
    target = probed_port(check, port)
    if not target:
        return None

    async def owned() -> bool:
        return await ports.owned_by_group(target, pgid)

    return owned


async def probe_once(check: str, port: int, timeout: float) -> str | None:
    """One health probe of `check` (tcp: connect to 127.0.0.1:`port`; http://...: GET answered 2xx or 3xx),
    given `timeout` seconds. Returns None when it answered, else what went wrong, for a status message:
    `no answer within 5 s`, `cannot connect to 127.0.0.1:8188: Connection refused`, `answered HTTP 500`.
    Raises nothing of its own (a check other than tcp or http:// is a programming error: ValueError)."""
    with trio.move_on_after(timeout):
        if check == "tcp":
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError as err:
                return f"cannot connect to 127.0.0.1:{port}: {err.strerror or err}"
            await stream.aclose()
            return None
        if not check.startswith("http://"):
            raise ValueError(f"unknown health_check {describe(check)}")
        try:
            response = await request("GET", check, timeout=timeout)
        except HttpError as err:
            return str(err)
        return None if 200 <= response.status < 400 else f"{check} answered HTTP {response.status}"
    return f"no answer within {timeout:g} s"
