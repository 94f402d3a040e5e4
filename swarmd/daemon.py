"""The daemon: wires the guardian, the Fleet, the API, systemd and the signals into one nursery.

Lifecycle: load the backends file (an invalid one stops the daemon at once with every problem listed),
start every enabled backend, serve the API (on the socket systemd passed, or on our own), then tell
systemd READY=1 and wait for signals: SIGHUP reloads the file (RELOADING=1 ... READY=1); SIGTERM or SIGINT
sends STOPPING=1, stops every backend in parallel by its stop ladder and exits 0; a second SIGTERM/SIGINT
while stopping SIGKILLs every backend's group. Meanwhile STATUS= follows the backends' states and, under
`WatchdogSec=`, WATCHDOG=1 is sent from the event loop.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

import trio

from swarmd import gpu, systemd
from swarmd.config import DaemonConfig, format_listen
from swarmd.fleet import Fleet
from swarmd.reload import watch_file
from swarmd.supervise.process import Containment, Guardian, normalize_signals, raise_fd_limit

if TYPE_CHECKING:
    from swarmd.metrics import Metrics

log = logging.getLogger("swarmd")


class _Phase:
    """What the daemon is doing besides running: None, "reloading" or "stopping" (shown in STATUS=)."""

    def __init__(self) -> None:
        self.name: str | None = None


class _Requests:
    """Reload requests (SIGHUP): any number made while one reload runs become one more reload."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def request(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


async def run_daemon(options: DaemonConfig) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit status.

    `options` comes from `swarmd.config.resolve` (flags, config file, defaults; names already resolved).
    Raises FileInvalid for a bad backends file, and OSError, SocketInUse, ValueError or
    systemd.ActivationError when the API's socket cannot be set up -- all before READY=1.
    """
    normalize_signals()
    raise_fd_limit()
    _fix_malloc_thresholds()
    notifier = systemd.Notifier.from_environ()
    # The fds systemd passed (3, 4, ...) come without close-on-exec: mark them before the guardian or any
    # backend is spawned, so that none of them holds the API's socket open.
    activated = systemd.activated_socket(systemd.listen_fds())
    # Child subreaper, and the backends' own cgroups where swarmd has a delegated subtree (swarmd moves into
    # its supervisor/ leaf first, so the guardian is forked there too).
    containment = await Containment.for_daemon()
    guardian = Guardian(containment)
    guardian.start()
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                if containment.subreaper:
                    nursery.start_soon(containment.reap_orphans)  # the orphans it adopts are its to reap
                interval = systemd.watchdog_interval()
                if interval is not None and notifier.enabled:
                    # Fed from the start: a fleet of slow starts must not look like a hang.
                    await nursery.start(systemd.feed_watchdog, notifier, interval)
                fleet = Fleet(options.backends, nursery, guardian, ring_lines=options.output_ring_lines,
                              ring_bytes=options.output_ring_bytes)
                phase = _Phase()

                def describe() -> str:
                    return systemd.status_line(fleet.status_counts(), phase=phase.name,
                                               file_problem=fleet.file_problem)

                reporter = systemd.StatusReporter(notifier, describe)
                _chain_on_change(fleet, reporter.changed)
                stop, reloads, startup = trio.Event(), _Requests(), trio.CancelScope()
                # Signals have their own task from the start: SIGTERM acts at once, whatever a start-up,
                # reload or mutation is doing.
                nursery.start_soon(_handle_signals, signals, fleet, stop, reloads, startup)
                stop_watching = trio.Event()
                with startup:
                    # GPU identity once, in a thread: every pin is resolved against it from now on.
                    await trio.to_thread.run_sync(gpu.load_inventory, abandon_on_cancel=True)
                    await fleet.start()
                    await nursery.start(watch_file, options.backends, fleet.reload, stop_watching)
                    # The web stack (quart, hypercorn, prometheus_client: ~0.15 s of imports) is imported
                    # only now that every backend's start has run: the backends do not wait for it.
                    from swarmd.api.web import serve_web
                    from swarmd.metrics import Metrics

                    metrics = Metrics(fleet)  # one per daemon: the socket's /metrics and the listener's
                    http_address = None
                    if options.http_listen is not None:  # the read-only listener, bound before READY=1
                        http_address = format_listen(await nursery.start(serve_web, fleet, metrics,
                                                                         options.http_listen))
                        log.info("read-only HTTP listener on http://%s/ (/metrics, /healthz, status page)",
                                 http_address)
                    where = await _start_api(nursery, fleet, options, activated, metrics, http_address)
                    reporter.sent(text := describe())
                    notifier.ready(text)
                    # Started after READY=1 so that READY=1 is the first message after the watchdog's.
                    await nursery.start(reporter.run)
                    nursery.start_soon(_reload_on_request, fleet, reloads, notifier, reporter, phase, describe)
                    log.info("swarmd ready: %d backends, socket %s", len(fleet.backends()), where)
                    _freeze_the_loaded_heap()
                await stop.wait()
                phase.name = "stopping"
                reporter.sent(text := describe())
                notifier.stopping(text)
                stop_watching.set()
                await fleet.shutdown()
                nursery.cancel_scope.cancel()
    finally:
        guardian.close()
        notifier.close()
    log.info("swarmd stopped")
    return 0


#: glibc's mallopt() parameters (malloc.h) and the size from which a block gets its own mapping.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_OWN_MAPPING_FROM = 256 * 1024


def _fix_malloc_thresholds() -> None:
    """Give every block of 256 KiB or more its own mapping, unmapped when freed, and trim the heap's free top
    from that size on. glibc's defaults move both thresholds up to the largest block freed so far: after the
    first ListBackends answer at 1000 backends (~0.9 MB, built and copied a few times on its way out), such
    answers came from the heap, and each poll left the daemon a little bigger (+4 MB over ten polls; +2 MB
    with fixed thresholds). A no-op where the C library is not glibc (or the values come from the
    environment: MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ win)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, _OWN_MAPPING_FROM)
    mallopt(_M_TRIM_THRESHOLD, _OWN_MAPPING_FROM)


def _freeze_the_loaded_heap() -> None:
    """Keep the garbage collector off what start-up built. A full collection walks every object the
    daemon holds -- at 1000 backends some 200,000 of them (definitions, imported modules, the app), 30 to
    70 ms during which the event loop answers nothing; almost all of it lives as long as the daemon. Frozen
    objects are never collected: this is done after loading, and from then on after every full collection
    that took long (`_freeze_after_slow_full_collections`).

    The youngest generation is collected every 10,000 net allocations instead of 700: a reload or an edit
    at 10,000 backends holds some 10,000 small tuples (the entries' offsets) for a moment, and at 700 that
    is 10-15 young collections each time (2-3 ms); at 10,000, about one."""
    gc.set_threshold(10_000, 10, 10)
    gc.collect()
    gc.freeze()
    if _freeze_after_slow_full_collections not in gc.callbacks:
        gc.callbacks.append(_freeze_after_slow_full_collections)


#: A full collection that took longer than this freezes what it found alive.
_SLOW_FULL_COLLECTION_S = 0.005
_full_collection_began = [0.0]


def _freeze_after_slow_full_collections(phase: str, info: dict[str, Any]) -> None:
    """A `gc.callbacks` hook: when a full collection took long, freeze what survived it, so that no later
    one walks it again.

    What start-up froze is not all that lives long: each backend's process, pipes and tasks are made after
    it, when the backends start (measured: 330,000 objects at 6,500 running backends, whose first full
    collection took 130 ms; every later one 0 ms, once this froze them), and a reload or an API call may
    add backends. Counting the heap to find out would cost as much as collecting it; the collector's own
    pauses say it for free. Just after a full collection only live objects are left, so freezing then
    keeps no garbage; and what is frozen and later dropped is still freed by reference counts (a removed
    backend leaves no cyclic garbage: none found after removing 1000 disabled and 200 running ones)."""
    if info.get("generation") != 2:
        return
    if phase == "start":
        _full_collection_began[0] = time.perf_counter()
    elif time.perf_counter() - _full_collection_began[0] > _SLOW_FULL_COLLECTION_S:
        gc.freeze()  # (the collection is over: this only moves its survivors to the permanent generation)


async def _handle_signals(signals: Any, fleet: Fleet, stop: trio.Event, reloads: _Requests,
                          startup: trio.CancelScope) -> None:
    """SIGHUP asks for a reload; the first SIGTERM/SIGINT stops the daemon (also mid-start-up); a second
    one while it stops SIGKILLs every backend's group at once."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            log.info("SIGHUP: reloading %s", fleet.path)
            reloads.request()
        elif not stop.is_set():
            log.info("%s: stopping every backend", name)
            stop.set()
            startup.cancel()
        else:
            log.warning("%s again: killing every backend now", name)
            fleet.kill_all()


async def _reload_on_request(fleet: Fleet, reloads: _Requests, notifier: systemd.Notifier,
                             reporter: systemd.StatusReporter, phase: _Phase, describe: Any) -> None:
    """Reload the file each time SIGHUP asks (RELOADING=1 ... READY=1), one reload at a time."""
    while True:
        await reloads.wait()
        phase.name = "reloading"
        reporter.sent(text := describe())
        notifier.reloading(text)
        try:
            await fleet.reload()
        finally:
            phase.name = None
        reporter.sent(text := describe())
        notifier.ready(text)


def _chain_on_change(fleet: Fleet, hook: Any) -> None:
    """Add `hook` to the Fleet's change callback, keeping whatever was there (the API may use it too)."""
    previous = fleet.on_change

    def on_change() -> None:
        previous()
        hook()

    fleet.on_change = on_change


async def _start_api(nursery: trio.Nursery, fleet: Fleet, options: DaemonConfig,
                     activated: tuple[int, str] | None, metrics: Metrics | None = None,
                     http_address: str | None = None) -> str:
    """Serve the API on the socket systemd passed (`activated`: fd and address) or on `options.socket`;
    `metrics` serves its /metrics, `http_address` (the HTTP listener's, if any) is shown by GetDaemonStatus.

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
        answer = {"config_file": options.config_path, "socket": where, "socket_activated": activated is not None}
        if http_address is not None:  # the read-only listener's address (a port 0 resolved), when it is on
            answer["http_listen"] = http_address
        return answer

    await nursery.start(
        lambda task_status=trio.TASK_STATUS_IGNORED: serve_api(
            fleet, options.socket, mode=options.socket_mode, gid=options.socket_gid,
            access=options.access, daemon_status=daemon_status, gpu_info=gpu.resource_info, metrics=metrics,
            task_status=task_status,
            inherited_fd=inherited_fd))
    return where
