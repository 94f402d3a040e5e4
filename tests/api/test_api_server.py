"""server.py in-process, with the real Fleet and real children: the socket's life cycle, peer credentials,
and access by uid (clients run as uid 65534 through `setpriv`).

The clients are blocking (the tests' Api client, or swarmctl in a subprocess), so they run in a thread or a
child process while the server runs on this test's trio loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import stat
import sys
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import trio

from swarmd.api.access import AccessRule
from swarmd.api.app import create_app
from swarmd.api.server import SocketInUse, read_peer_cred, serve_api
from swarmd.fleet import Fleet
from tests.helpers import (
    DEFAULT_BACKENDS,
    Api,
    eventually,
    nobody_can_import_swarmd,
    nobody_ctl_argv,
    public_dir,
)

NOBODY = 65534
SETPRIV = shutil.which("setpriv")


@pytest.fixture
def directory() -> Any:
    path = str(public_dir())
    with open(os.path.join(path, "backends.yaml"), "w", encoding="utf-8") as handle:
        handle.write(DEFAULT_BACKENDS)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def serving(directory: str, **kwargs: Any) -> AsyncIterator[tuple[Fleet, str]]:
    """A real Fleet and the API on `directory`/swarmd.sock, both stopped on exit."""
    sock = os.path.join(directory, "swarmd.sock")
    async with trio.open_nursery() as nursery:
        fleet = Fleet(os.path.join(directory, "backends.yaml"), nursery, None)
        await fleet.start()
        try:
            await nursery.start(partial(serve_api, fleet, sock, **kwargs))
            yield fleet, sock
        finally:
            await fleet.shutdown()
            nursery.cancel_scope.cancel()


async def setup_error(directory: str, **kwargs: Any) -> BaseException:
    """The exception serve_api raises while setting up (awaited directly, so it is not wrapped in a
    nursery's exception group)."""
    async with trio.open_nursery() as nursery:
        fleet = Fleet(os.path.join(directory, "backends.yaml"), nursery, None)
        await fleet.start()
        try:
            with trio.fail_after(5):
                await serve_api(fleet, os.path.join(directory, "swarmd.sock"), **kwargs)
        except Exception as err:  # returned for the test to inspect
            return err
        finally:
            await fleet.shutdown()
            nursery.cancel_scope.cancel()
    raise AssertionError("serve_api did not fail")


async def call(sock: str, route: str, body: Any = None) -> Any:
    """One API call from a thread (the server runs on this loop); the decoded answer, errors included."""
    return await trio.to_thread.run_sync(lambda: Api(sock).api(route, body, timeout=20))


async def as_nobody(sock: str, *args: str) -> tuple[int, Any, str]:
    """Run `swarmctl --socket SOCK --json ARGS` as uid/gid 65534 with no groups: (exit status, JSON, stderr)."""
    argv = [*nobody_ctl_argv(), "--socket", sock, "--json", *args]
    done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False, cwd="/")
    out = done.stdout.decode()
    return done.returncode, json.loads(out) if out.strip() else None, done.stderr.decode()


# -- the socket ---------------------------------------------------------------------------------------------


async def test_socket_mode_is_set_before_it_is_reachable(directory: str) -> None:
    async with serving(directory) as (_, sock):
        info = os.lstat(sock)
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
        assert not [name for name in os.listdir(directory) if name.startswith(".swarmd-sock-")]  # staging gone
        answer = await call(sock, "GetNewSession")
        assert answer["permissions"] == ["*"]  # our own uid: owner
        assert answer["user_id"] == pwd.getpwuid(os.getuid()).pw_name
    assert not os.path.exists(sock)  # unlinked on exit


async def test_mode_and_group_are_configurable(directory: str) -> None:
    async with serving(directory, mode=0o666, gid=NOBODY) as (_, sock):
        info = os.lstat(sock)
        assert stat.S_IMODE(info.st_mode) == 0o666 and info.st_gid == NOBODY


async def test_stale_socket_is_replaced(directory: str) -> None:
    path = os.path.join(directory, "swarmd.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # a socket file nobody listens on: a dead daemon's
    async with serving(directory) as (_, sock):
        assert (await call(sock, "ListBackends")).keys() == {"0", "1"}


async def test_live_socket_is_not_stolen(directory: str) -> None:
    path = os.path.join(directory, "swarmd.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(path)
        live.listen()
        inode = os.lstat(path).st_ino
        err = await setup_error(directory)
        assert isinstance(err, SocketInUse) and "another daemon is listening" in str(err)
        assert os.lstat(path).st_ino == inode


async def test_a_file_that_is_not_a_socket_is_left_alone(directory: str) -> None:
    path = os.path.join(directory, "swarmd.sock")
    with open(path, "w") as handle:
        handle.write("precious")
    err = await setup_error(directory)
    assert isinstance(err, SocketInUse) and "not a socket" in str(err)
    with open(path) as handle:
        assert handle.read() == "precious"


async def test_a_successors_socket_survives_our_exit(directory: str) -> None:
    async with serving(directory) as (_, sock):
        os.unlink(sock)
        successor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        successor.bind(sock)
    try:
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    finally:
        successor.close()


async def test_shutdown_event_stops_serving(directory: str) -> None:
    sock = os.path.join(directory, "swarmd.sock")
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        fleet = Fleet(os.path.join(directory, "backends.yaml"), nursery, None)
        await fleet.start()
        await nursery.start(partial(serve_api, fleet, sock, shutdown_event=stop))
        assert (await call(sock, "ListBackends")).keys() == {"0", "1"}
        stop.set()
        await eventually(lambda: not os.path.exists(sock), timeout=10, what="the socket removed")
        await fleet.shutdown()
        nursery.cancel_scope.cancel()


async def test_inherited_socket_is_served_and_left_in_place(directory: str) -> None:
    path = os.path.join(directory, "activated.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    fd = listener.detach()  # systemd would pass it as fd 3
    async with serving(directory, inherited_fd=fd):
        assert (await call(path, "ListBackends")).keys() == {"0", "1"}
    assert stat.S_ISSOCK(os.lstat(path).st_mode)  # systemd's to remove


# -- peer credentials -------------------------------------------------------------------------------------


def test_read_peer_cred() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        peer = read_peer_cred(left)
        assert peer is not None
        assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        assert read_peer_cred(tcp) is None
    assert read_peer_cred(None) is None


async def test_no_credentials_means_no_permissions(directory: str) -> None:
    # A request that did not come through PeerCredTCPServer (here: Quart's test client) carries no
    # credentials: every flagged route is refused, GetNewSession lists no permissions.
    async with trio.open_nursery() as nursery:
        fleet = Fleet(os.path.join(directory, "backends.yaml"), nursery, None)
        await fleet.start()
        app = create_app(fleet)
        client = app.test_client()
        response = await client.post("/API/ListBackends", json={})
        assert response.status_code == 400
        assert await response.get_json() == {"error_id": "bad_permissions",
                                             "error": "You lack permissions for this route."}
        response = await client.post("/API/GetNewSession", json={})
        assert (await response.get_json())["permissions"] == []
        await fleet.shutdown()
        nursery.cancel_scope.cancel()


# -- access by uid ------------------------------------------------------------------------------------------

needs_setpriv = pytest.mark.skipif(SETPRIV is None or os.getuid() != 0, reason="needs root and setpriv")


@needs_setpriv
async def test_default_mode_keeps_other_users_out(directory: str) -> None:
    async with serving(directory) as (_, sock):
        status, _, err = await as_nobody(sock, "list")
    assert status == 3 and "permission denied" in err and sock in err


@needs_setpriv
async def test_uid_without_rule_is_refused(directory: str) -> None:
    backends = os.path.join(directory, "backends.yaml")
    async with serving(directory, mode=0o666) as (_, sock):
        before = open(backends, "rb").read()
        for args in (["list"], ["types"], ["restart"], ["edit", "0", "--title", "x"], ["rm", "0"],
                     ["disable", "0"], ["add", "process"], ["logs", "1"], ["free"], ["status"],
                     ["call", "GetServerResourceInfo"]):
            status, answer, err = await as_nobody(sock, *args)
            assert status == 1, (args, answer, err)
            assert answer == {"error_id": "bad_permissions", "error": "You lack permissions for this route."}, args
        status, answer, _ = await as_nobody(sock, "call", "GetNewSession")
        assert status == 0 and answer["permissions"] == [] and answer["user_id"] == "nobody"
        assert open(backends, "rb").read() == before


@needs_setpriv
async def test_poweruser_can_list_and_restart_but_not_edit(directory: str) -> None:
    backends = os.path.join(directory, "backends.yaml")
    rules = [AccessRule(uid=NOBODY, role="poweruser")]
    async with serving(directory, mode=0o666, access=rules) as (fleet, sock):
        status, answer, _ = await as_nobody(sock, "list")
        assert status == 0 and set(answer) == {"0", "1"}
        await eventually(lambda: fleet.get(0).status == "running", timeout=10, what="backend 0 running")
        status, answer, _ = await as_nobody(sock, "restart", "0")
        assert status == 0 and answer == {"result": "Success.", "count": 1,
                                          "restarted": [{"id": 0, "was": "running"}]}
        before = open(backends, "rb").read()
        for args in (["edit", "0", "--title", "x", "restart=never"], ["add", "process"], ["rm", "1"],
                     ["disable", "1"], ["logs", "1"],
                     ["call", "GetServerResourceInfo"]):  # SwarmUI: read_server_info_panels is admin-only
            status, answer, _ = await as_nobody(sock, *args)
            assert status == 1 and answer["error_id"] == "bad_permissions", args
        assert open(backends, "rb").read() == before
        assert fleet.get(0).title == "sleeper" and fleet.get(0).modcount == 0
        status, answer, _ = await as_nobody(sock, "call", "GetNewSession")
        assert "view_backends_list" in answer["permissions"] and "edit_backends" not in answer["permissions"]


@needs_setpriv
async def test_group_rule_uses_the_callers_groups(directory: str) -> None:
    # --clear-groups leaves uid 65534 with gid 65534 only: a rule for group "nogroup" matches it, a rule
    # for root's group does not.
    rules = [AccessRule(gid=0, role="admin"), AccessRule(gid=NOBODY, role="poweruser")]
    async with serving(directory, mode=0o666, access=rules) as (_, sock):
        status, answer, _ = await as_nobody(sock, "list")
        assert status == 0 and set(answer) == {"0", "1"}
        status, answer, _ = await as_nobody(sock, "disable", "0")
        assert status == 1 and answer["error_id"] == "bad_permissions"


async def test_gpu_and_daemon_status_hooks(directory: str) -> None:
    async def gpus() -> dict[str, Any]:
        return {"0": {"id": 0, "name": "Fake GPU", "temperature": 40, "utilization_gpu": 0, "utilization_memory": 0,
                      "total_memory": 1 << 30, "free_memory": 1 << 29, "used_memory": 1 << 29}}

    async with serving(directory, gpu_info=gpus, daemon_status=lambda: {"reload": "idle"}) as (_, sock):
        info = await call(sock, "GetServerResourceInfo")
        assert info["gpus"]["0"]["name"] == "Fake GPU" and "cpu" in info and "system_ram" in info
        status = await call(sock, "GetDaemonStatus")
        assert status["reload"] == "idle" and status["file_problem"] is None


@needs_setpriv
async def test_a_group_the_daemon_cannot_use_is_a_clear_error(directory: str) -> None:
    if not nobody_can_import_swarmd():
        pytest.skip("uid 65534 cannot import swarmd from this checkout (its path is closed to others)")
    os.chmod(directory, 0o777)  # let uid 65534 create the socket here
    script = ("from swarmd.api.server import bind_unix_socket\n"
              f"bind_unix_socket({os.path.join(directory, 's.sock')!r}, 0o660, 0)\n")
    argv = [SETPRIV or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
            sys.executable, "-c", script]
    done = await trio.run_process(argv, capture_stderr=True, check=False, cwd="/")
    assert done.returncode == 1
    assert "cannot give the socket" in done.stderr.decode() and "group 0" in done.stderr.decode()
    assert sorted(os.listdir(directory)) == ["backends.yaml"]  # no socket, no staging directory left
