"""systemd's side of the daemon, without libsystemd: sd_notify, the watchdog, socket activation.

Theory of operation
-------------------
* **sd_notify** is one datagram of `KEY=VALUE` lines sent to the AF_UNIX socket named by `$NOTIFY_SOCKET`
  (a leading '@' means Linux's abstract namespace). systemd learns the sender from the kernel's
  credentials, so with `NotifyAccess=main` every message must come from the daemon's own process -- which
  is why nothing here runs in a thread or a helper process. Outside systemd `$NOTIFY_SOCKET` is unset and
  every send is a no-op. A send never raises: a daemon that cannot tell systemd something must keep
  supervising its backends (systemd acts on the silence: start timeout, watchdog).
* **The watchdog** (`WatchdogSec=`) is fed from a task of the trio event loop at half of `$WATCHDOG_USEC`,
  as sd_watchdog_enabled(3) recommends: if the loop wedges, the pings stop and systemd restarts the unit.
  `$WATCHDOG_PID`, when set, must be our pid (otherwise the watchdog is someone else's).
* **STATUS=** is a line a person reads in `systemctl status`. Backends change state in bursts (a reload,
  fifty starts); `StatusReporter` sends the first change at once, then at most one update every
  `STATUS_INTERVAL` seconds, and only when the text differs from the last one sent.
* **Socket activation**: systemd passes listening sockets from fd 3 (`SD_LISTEN_FDS_START`) on, with
  `$LISTEN_FDS` = their count and `$LISTEN_PID` = the pid they are meant for. The LISTEN_*, NOTIFY_SOCKET
  and WATCHDOG_* variables are kept out of the backends' environment by `supervise.process.PRIVATE_ENV`
  (a backend that saw them would think systemd talks to it).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping

import trio

log = logging.getLogger("swarmd.systemd")

SD_LISTEN_FDS_START = 3
#: The least time between two STATUS= updates, in seconds.
STATUS_INTERVAL = 0.1
#: How long one notification may block when systemd's queue is full (it normally never is).
SEND_TIMEOUT = 1.0
#: Backend statuses in the order a STATUS= line lists them; others follow alphabetically.
STATUS_ORDER = ("running", "loading", "waiting", "errored", "disabled")


def notify_address(environ: Mapping[str, str]) -> str | None:
    """The socket address `$NOTIFY_SOCKET` names, in the form `socket.sendto` wants; None when unset or
    not an AF_UNIX path (systemd's vsock addresses are not supported: swarmd never runs in a VM's guest
    manager)."""
    value = environ.get("NOTIFY_SOCKET", "")
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Owns the datagram socket to systemd's notification socket (or nothing, outside systemd).

    Every method returns True when the message was handed to the kernel, False otherwise; none raises.
    """

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._warned = False
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.settimeout(SEND_TIMEOUT)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        return cls(notify_address(os.environ if environ is None else environ))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """Send `fields` ("READY=1", "STATUS=...") as one notification."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as err:
            # Not fatal: systemd is gone (shutdown) or the socket is wrong; say it once, keep running.
            if not self._warned:
                log.warning("cannot notify systemd at %r: %s", os.environ.get("NOTIFY_SOCKET"), err)
                self._warned = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *status_fields(status))

    def reloading(self, status: str | None = None) -> bool:
        # MONOTONIC_USEC lets systemd tie this reload to the `systemctl reload` that asked for it
        # (Type=notify-reload, systemd >= 253; older versions ignore the field).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *status_fields(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *status_fields(status))

    def status(self, text: str) -> bool:
        return self.send(*status_fields(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def status_fields(text: str | None) -> list[str]:
    """`["STATUS=<text>"]` with the text on one line (a newline would start a new field), or []."""
    if text is None:
        return []
    return ["STATUS=" + " ".join(text.split())]


def status_line(counts: Mapping[str, int], *, phase: str | None = None, file_problem: str | None = None) -> str:
    """A readable summary such as "3 running, 1 loading, 1 errored" (zero counts left out).

    `phase` ("reloading", "stopping") is put in front; a `file_problem` is mentioned without its text (the
    journal has it, and a STATUS= line is one line).
    """
    known = [name for name in STATUS_ORDER if counts.get(name)]
    others = sorted(name for name, n in counts.items() if n and name not in STATUS_ORDER)
    text = ", ".join(f"{counts[name]} {name}" for name in known + others) or "no backends"
    if file_problem:
        text += "; the backends file on disk is invalid (running the last good version, see the journal)"
    if phase:
        text = f"{phase}: {text}"
    return text


class StatusReporter:
    """Sends STATUS= whenever `describe()` changes, at most every `interval` seconds.

    `changed()` is synchronous and cheap, so it can be the Fleet's `on_change` hook; `run` is the task that
    sends. Owns nothing but its last text.
    """

    def __init__(self, notifier: Notifier, describe: Callable[[], str], interval: float = STATUS_INTERVAL) -> None:
        self.notifier = notifier
        self.describe = describe
        self.interval = interval
        self.last: str | None = None
        self._dirty = trio.Event()

    def changed(self) -> None:
        self._dirty.set()

    def flush(self) -> str:
        """Send the current text now if it differs from the last one sent; returns the current text."""
        text = self.describe()
        if text != self.last:
            self.notifier.status(text)
            self.last = text
        return text

    def sent(self, text: str) -> None:
        """Record a text sent along with another message (READY=1, STOPPING=1)."""
        self.last = text

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send updates until cancelled. Without systemd to tell (no NOTIFY_SOCKET) it returns at once:
        `describe()` walks every backend, which is no work to do ten times a second for nobody."""
        task_status.started()
        if not self.notifier.enabled:
            return
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            self.flush()
            # The rate limit: changes during this sleep are coalesced into the next flush.
            await trio.sleep(self.interval)


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between two WATCHDOG=1 pings (half of `$WATCHDOG_USEC`), or None when systemd runs no
    watchdog for us (unset, not a positive number, or `$WATCHDOG_PID` names another process)."""
    environ = os.environ if environ is None else environ
    pid = os.getpid() if pid is None else pid
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner is not None:
        try:
            if int(owner) != pid:
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


async def feed_watchdog(notifier: Notifier, interval: float, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Send WATCHDOG=1 now and then every `interval` seconds until cancelled.

    Runs on the event loop on purpose: a loop that stops scheduling tasks stops the pings too.
    """
    task_status.started()
    while True:
        notifier.watchdog()
        await trio.sleep(interval)


class ActivationError(RuntimeError):
    """systemd passed something swarmd cannot serve (not a socket, not a stream socket)."""


def listen_fds(environ: Mapping[str, str] | None = None, pid: int | None = None) -> list[int]:
    """The file descriptors systemd passed to us (sd_listen_fds), each made close-on-exec so that no
    backend inherits it; [] when the process was not socket-activated or the variables are meant for
    another process (`$LISTEN_PID` differs)."""
    environ = os.environ if environ is None else environ
    pid = os.getpid() if pid is None else pid
    try:
        if int(environ.get("LISTEN_PID", "")) != pid:
            return []
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(count, 0)))
    for fd in fds:
        with contextlib.suppress(OSError):
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
    return fds


def activated_socket(fds: Iterable[int]) -> tuple[int, str] | None:
    """Choose the API's socket among the inherited fds: the first one. Returns (fd, its address for the
    logs) or None when there is none. Raises ActivationError when the fd is not a listening stream
    socket."""
    fds = list(fds)
    if not fds:
        return None
    fd = fds[0]
    if len(fds) > 1:
        log.warning("systemd passed %d sockets; serving the API on fd %d only", len(fds), fd)
    try:
        # dup: the probe object owns (and closes) a copy, the original fd goes to the API server.
        probe = socket.socket(fileno=os.dup(fd))
    except OSError as err:
        raise ActivationError(f"fd {fd} from systemd is not a socket: {err.strerror}") from None
    with probe:
        if probe.type != socket.SOCK_STREAM:
            raise ActivationError(f"fd {fd} from systemd is not a stream socket (use ListenStream=)")
        address = probe.getsockname()
    if isinstance(address, bytes):
        shown = "@" + address[1:].decode(errors="replace") if address[:1] == b"\0" else address.decode()
    else:
        shown = str(address)
    return fd, shown or f"fd {fd}"
