"""The daemon: wires the guardian, the Fleet, the API, systemd and the signals into one nursery.

Lifecycle: load the backends file (an invalid one stops the daemon at once with every problem listed),
start every enabled backend, serve the API (on the socket systemd passed, or on our own), then tell
systemd READY=1 and wait for signals: SIGHUP reloads the file (RELOADING=1 ... READY=1); SIGTERM or SIGINT
sends STOPPING=1, stops every backend in parallel by its stop ladder and exits 0; a second SIGTERM/SIGINT
while stopping SIGKILLs every backend's group. Meanwhile STATUS= follows the backends' states and, under
`WatchdogSec=`, WATCHDOG=1 is sent from the event loop.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field
from typing import Any

import trio

from swarmd import gpu, systemd
from swarmd.fleet import Fleet
from swarmd.reload import watch_file
from swarmd.supervise.process import Guardian, normalize_signals, raise_fd_limit

log = logging.getLogger("swarmd")


@dataclass
class DaemonOptions:
    """What `run_daemon` needs; `swarmd.config.resolve` builds it from flags, the config file and defaults."""

    backends: str
    socket: str
    socket_mode: int = 0o660
    socket_group: str | None = None
    access: Any = None  # swarmd.api.access.AccessConfig, when configured
    config_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _Phase:
    """What the daemon is doing besides running: None, "reloading" or "stopping" (shown in STATUS=)."""

    def __init__(self) -> None:
        self.name: str | None = None


async def run_daemon(options: DaemonOptions) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit status.

    Raises FileInvalid for a bad backends file, and OSError, SocketInUse, ValueError or
    systemd.ActivationError when the API's socket cannot be set up -- all before READY=1.
    """
    normalize_signals()
    raise_fd_limit()
    notifier = systemd.Notifier.from_environ()
    # The fds systemd passed (3, 4, ...) come without close-on-exec: mark them before the guardian or any
    # backend is spawned, so that none of them holds the API's socket open.
    activated = systemd.activated_socket(systemd.listen_fds())
    guardian = Guardian()
    guardian.start()
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                interval = systemd.watchdog_interval()
                if interval is not None and notifier.enabled:
                    # Fed from the start: a fleet of slow starts must not look like a hang.
                    await nursery.start(systemd.feed_watchdog, notifier, interval)
                fleet = Fleet(options.backends, nursery, guardian)
                phase = _Phase()

                def describe() -> str:
                    return systemd.status_line(fleet.status_counts(), phase=phase.name,
                                               file_problem=fleet.file_problem)

                reporter = systemd.StatusReporter(notifier, describe)
                _chain_on_change(fleet, reporter.changed)  # before start(): supervisors capture the hook
                await fleet.start()
                stop_watching = trio.Event()
                await nursery.start(watch_file, options.backends, fleet.reload, stop_watching)
                where = await _start_api(nursery, fleet, options, activated)
                reporter.sent(text := describe())
                notifier.ready(text)
                # Started after READY=1 so that READY=1 is the first message after the watchdog's.
                await nursery.start(reporter.run)
                log.info("swarmd ready: %d backends, socket %s", len(fleet.backends()), where)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        log.info("SIGHUP: reloading %s", options.backends)
                        phase.name = "reloading"
                        reporter.sent(text := describe())
                        notifier.reloading(text)
                        try:
                            await fleet.reload()
                        finally:
                            phase.name = None
                        reporter.sent(text := describe())
                        notifier.ready(text)
                        continue
                    log.info("%s: stopping every backend", signal.Signals(signum).name)
                    break
                phase.name = "stopping"
                reporter.sent(text := describe())
                notifier.stopping(text)
                stop_watching.set()
                async with trio.open_nursery() as stopping:
                    stopping.start_soon(_escalate_on_second_signal, signals, fleet)
                    await fleet.shutdown()
                    stopping.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
    finally:
        guardian.close()
        notifier.close()
    log.info("swarmd stopped")
    return 0


def _chain_on_change(fleet: Fleet, hook: Any) -> None:
    """Add `hook` to the Fleet's change callback, keeping whatever was there (the API may use it too)."""
    previous = fleet.on_change

    def on_change() -> None:
        previous()
        hook()

    fleet.on_change = on_change


async def _escalate_on_second_signal(signals: Any, fleet: Fleet) -> None:
    """While the fleet stops: a second SIGTERM/SIGINT SIGKILLs every backend's group at once."""
    async for signum in signals:
        if signum in (signal.SIGTERM, signal.SIGINT):
            log.warning("%s again: killing every backend now", signal.Signals(signum).name)
            fleet.kill_all()


async def _start_api(nursery: trio.Nursery, fleet: Fleet, options: DaemonOptions,
                     activated: tuple[int, str] | None) -> str:
    """Serve the API on the socket systemd passed (`activated`: fd and address) or on `options.socket`.

    Returns once the socket listens, with where it listens (for the log). Raises what `serve_api` raises
    before it listens.
    """
    from swarmd.api.server import serve_api

    inherited_fd, where = activated if activated is not None else (None, options.socket)
    if activated is not None:
        # systemd owns that socket (ListenStream=, SocketMode=, SocketGroup=): the config's socket
        # path/mode/group do not apply to it.
        log.info("serving the socket systemd passed (%s)", where)

    def daemon_status() -> dict[str, Any]:
        # GetDaemonStatus: where this daemon's settings and socket came from.
        return {"config_file": options.config_path, "socket": where, "socket_activated": activated is not None}

    await nursery.start(
        lambda task_status=trio.TASK_STATUS_IGNORED: serve_api(
            fleet, options.socket, mode=options.socket_mode, group=options.socket_group,
            access=options.access, daemon_status=daemon_status, gpu_info=gpu.resource_info,
            task_status=task_status,
            inherited_fd=inherited_fd))
    return where
