"""The daemon: wires the guardian, the Fleet, the API and the signals into one nursery.

Lifecycle: load the backends file (an invalid one stops the daemon at once with every problem listed),
start every enabled backend, serve the API, then wait for signals: SIGHUP reloads the file; SIGTERM or
SIGINT stops every backend in parallel by its stop ladder and exits 0; a second SIGTERM/SIGINT while
stopping SIGKILLs every backend's group.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field
from typing import Any

import trio

from swarmd.fleet import Fleet
from swarmd.reload import watch_file
from swarmd.supervise.process import Guardian, normalize_signals, raise_fd_limit

log = logging.getLogger("swarmd")


@dataclass
class DaemonOptions:
    backends: str
    socket: str
    socket_mode: int = 0o660
    socket_group: str | None = None
    access: Any = None  # swarmd.api.access.AccessConfig, when configured
    extra: dict[str, Any] = field(default_factory=dict)


async def run_daemon(options: DaemonOptions) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit status. Raises FileInvalid for a bad backends file."""
    normalize_signals()
    raise_fd_limit()
    guardian = Guardian()
    guardian.start()
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                fleet = Fleet(options.backends, nursery, guardian)
                await fleet.start()
                stop_watching = trio.Event()
                await nursery.start(watch_file, options.backends, fleet.reload, stop_watching)
                await _start_api(nursery, fleet, options)
                log.info("swarmd ready: %d backends, socket %s", len(fleet.backends()), options.socket)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        log.info("SIGHUP: reloading %s", options.backends)
                        await fleet.reload()
                        continue
                    log.info("%s: stopping every backend", signal.Signals(signum).name)
                    break
                stop_watching.set()
                async with trio.open_nursery() as stopping:
                    stopping.start_soon(_escalate_on_second_signal, signals, fleet, stopping.cancel_scope)
                    await fleet.shutdown()
                    stopping.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
    finally:
        guardian.close()
    log.info("swarmd stopped")
    return 0


async def _escalate_on_second_signal(signals: Any, fleet: Fleet, scope: trio.CancelScope) -> None:
    async for signum in signals:
        if signum in (signal.SIGTERM, signal.SIGINT):
            log.warning("%s again: killing every backend now", signal.Signals(signum).name)
            fleet.kill_all()


async def _start_api(nursery: trio.Nursery, fleet: Fleet, options: DaemonOptions) -> None:
    """Serve the API on the socket (the API module lands with its own issue)."""
    try:
        from swarmd.api.server import serve_api
    except ImportError:
        log.info("API not available in this build: the socket %s is not served", options.socket)
        return
    await nursery.start(
        lambda task_status=trio.TASK_STATUS_IGNORED: serve_api(
            fleet, options.socket, mode=options.socket_mode, group=options.socket_group,
            access=options.access, task_status=task_status))
