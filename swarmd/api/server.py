"""Serving the API on a unix socket, with the caller's peer credentials in every request.

Theory of operation
-------------------
* The socket is bound by us, not by hypercorn, so its permissions are right before anyone can connect: it
  is bound inside a fresh 0700 directory next to its final path, chmod/chown'ed there, set listening, and
  only then renamed into place. There is no moment at which the final path exists with a wider mode, and
  no process-wide umask change (the daemon has other threads creating files).
* An existing file at the path is probed first: a socket nobody listens on (connect refused: a dead
  daemon's) is replaced; a live one makes us raise `SocketInUse` rather than steal it; anything that is not
  a socket is left alone (also `SocketInUse`).
* Hypercorn serves the listening socket inside the caller's nursery. Its trio `TCPServer` is subclassed to
  read `SO_PEERCRED` (and `SO_PEERGROUPS`) once per connection and put a `PeerCred` -- or None when the
  kernel will not say -- into the connection state, which hypercorn copies into each request's ASGI scope
  (`scope["state"]`). That constructor and `worker_serve`'s shape are hypercorn internals (0.17/0.18):
  `tests/api/test_api_server.py` checks them, and the app denies every flagged route when the credentials are
  missing, so a hypercorn change fails closed.
* On exit the socket file is unlinked -- only if it is still ours (same inode), so a successor's socket
  survives. An inherited (systemd) socket is served as it is and never unlinked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import struct
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import ShutdownError, raise_shutdown, wrap_app

from swarmd.api import SocketInUse
from swarmd.api.access import DEFAULT_SOCKET_MODE, Access, AccessRule, PeerCred
from swarmd.api.app import PEER_STATE_KEY, create_app
from swarmd.api.routes import DaemonStatusHook, GpuInfoHook

if TYPE_CHECKING:
    from swarmd.fleet import Fleet
    from swarmd.metrics import Metrics

log = logging.getLogger("swarmd.api")

# Linux values; Python's socket module has SO_PEERCRED but not always SO_PEERGROUPS.
SO_PEERCRED = getattr(socket, "SO_PEERCRED", 17)
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_UCRED = struct.Struct("3i")
#: The most supplementary groups we ask the kernel for (NGROUPS_MAX is 65536; real users have a few).
_MAX_PEER_GROUPS = 1024
#: Seconds given to requests in flight when the API shuts down.
GRACEFUL_TIMEOUT = 2.0
#: listen()'s backlog: the kernel caps it at net.core.somaxconn (4096 on current kernels), so this asks for
#: the system's maximum -- a burst of clients connecting at once waits in the queue instead of getting
#: EAGAIN (128 refused about half of 500 clients at once).
LISTEN_BACKLOG = 65535


# -- peer credentials ---------------------------------------------------------------------------------


def read_peer_cred(sock: Any) -> PeerCred | None:
    """The kernel's credentials of the peer of a connected AF_UNIX socket, or None when unavailable."""
    try:
        if sock.family != socket.AF_UNIX:
            return None
        pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, _UCRED.size))
    except (OSError, struct.error, AttributeError):
        return None
    groups: tuple[int, ...] | None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * _MAX_PEER_GROUPS)
        groups = tuple(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    except (OSError, struct.error):
        groups = None  # old kernel: access.py looks the user's groups up instead
    return PeerCred(pid=pid, uid=uid, gid=gid, groups=groups)


class PeerCredTCPServer(TCPServer):
    """Hypercorn's per-connection server, with the peer's credentials added to the connection state."""

    def __init__(self, app: Any, config: Config, context: WorkerContext, state: ConnectionState, stream: Any) -> None:
        peer = read_peer_cred(getattr(stream, "socket", None))
        connection_state = ConnectionState({**state, PEER_STATE_KEY: peer})
        super().__init__(app, config, context, connection_state, stream)


# -- the socket ------------------------------------------------------------------------------------------


def _probe_existing(path: str) -> None:
    """Remove a stale socket at `path`; raise SocketInUse when it is live or not a socket."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket: refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        # Nobody listens: the socket of a daemon that died. It is replaced by the rename below.
        log.info("replacing stale socket %s", path)
        return
    except OSError as err:
        raise SocketInUse(f"{path} exists and cannot be probed ({err.strerror}): refusing to replace it") from None
    finally:
        probe.close()
    raise SocketInUse(f"another daemon is listening on {path}: stop it first (or use another --socket)")


def bind_unix_socket(path: str, mode: int = DEFAULT_SOCKET_MODE, gid: int | None = None) -> socket.socket:
    """A listening AF_UNIX socket at `path` with `mode` (and group `gid`, already resolved: no look-up
    here) set before it is reachable.

    Raises SocketInUse (path taken) or OSError (cannot create it, or cannot give it to `gid`).
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    _probe_existing(path)
    staging = tempfile.mkdtemp(prefix=".swarmd-sock-", dir=directory)  # mode 0700: only we can reach it
    staged = os.path.join(staging, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(staged)
        os.chmod(staged, mode)
        if gid is not None:
            try:
                os.chown(staged, -1, gid)
            except PermissionError:
                raise PermissionError(f"cannot give the socket {path} to group {gid}: the daemon's user "
                                      "must be root or a member of that group") from None
        sock.listen(LISTEN_BACKLOG)
        os.rename(staged, path)  # atomic; replaces a stale socket
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(staged)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(staging)
    sock.setblocking(False)
    return sock


def _unlink_if_ours(path: str, ino: tuple[int, int] | None) -> None:
    if ino is None:
        return
    with contextlib.suppress(OSError):
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == ino:
            os.unlink(path)


# -- serving ---------------------------------------------------------------------------------------------


async def serve_api(
    fleet: Fleet,
    socket_path: str,
    *,
    mode: int = DEFAULT_SOCKET_MODE,
    gid: int | None = None,
    access: Access | Iterable[AccessRule] | None = None,
    daemon_status: DaemonStatusHook | None = None,
    gpu_info: GpuInfoHook | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    shutdown_event: trio.Event | None = None,
    inherited_fd: int | None = None,
    metrics: Metrics | None = None,
) -> None:
    """Serve the API for `fleet` on `socket_path` until cancelled or `shutdown_event` is set.

    Calls `task_status.started(socket_path)` once the socket listens. Owns the socket file: creates it
    (replacing a stale one) and unlinks it on exit. With `inherited_fd` (systemd socket activation) it
    serves that socket and leaves the file to systemd. `gid` is the socket's group (resolved when the
    config was loaded); `access` the config's resolved rules (or an `Access` over them); `metrics` the
    daemon's (GET /metrics, request counts). Raises
    SocketInUse or OSError before `started` when the socket cannot be set up.
    """
    if inherited_fd is not None:
        sock = socket.socket(fileno=inherited_fd)
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.listen(LISTEN_BACKLOG)  # systemd already listens; harmless either way
        if sock.family != socket.AF_UNIX:
            log.warning("the inherited socket is not a unix socket: callers' credentials cannot be read, "
                        "so every route that needs a permission will be refused")
        owned: tuple[int, int] | None = None
    else:
        sock = bind_unix_socket(socket_path, mode, gid)
        info = os.stat(socket_path)
        owned = (info.st_dev, info.st_ino)
    try:
        app = create_app(fleet, access_rules=access, daemon_status=daemon_status, gpu_info=gpu_info,
                         metrics=metrics)
        config = Config()
        config.graceful_timeout = GRACEFUL_TIMEOUT
        config.accesslog = None
        config.errorlog = logging.getLogger("swarmd.api.http")
        trigger = shutdown_event.wait if shutdown_event is not None else None
        await serve_socket(app, config, sock, shutdown_trigger=trigger, task_status=task_status,
                           started_value=socket_path)
    finally:
        sock.close()
        _unlink_if_ours(socket_path, owned)


async def serve_socket(
    app: Any,
    config: Config,
    sock: socket.socket,
    *,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    started_value: Any = None,
) -> None:
    """Hypercorn's `trio.run.worker_serve`, cut down to one already-listening socket and with
    `PeerCredTCPServer` for the connections. Returns after a graceful shutdown when `shutdown_trigger`
    returns; cancellation stops it at once."""
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            task_status.started(started_value)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    if shutdown_trigger is not None:
                        nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    handler = partial(PeerCredTCPServer, wrapped, config, context,
                                      ConnectionState(lifespan_state.copy()))
                    nursery.start_soon(
                        partial(trio.serve_listeners, handler, [listener], handler_nursery=server_nursery)
                    )
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, others = error.split((ShutdownError, KeyboardInterrupt))
                if others is not None:
                    raise others from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
