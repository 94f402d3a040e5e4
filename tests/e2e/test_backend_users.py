"""Backends run as other users (`user`, `group`), end to end: a real daemon, real children, checked in
/proc; unknown users refused where the file is validated (`swarmd check`, the API's parse-before-write).

The tests that switch ids need root (they are skipped otherwise); those of validation run as anyone."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import Daemon, backend_yaml, eventually, public_dir, wait_until

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="running a backend as another user needs root")
NOBODY = 65534
UNKNOWN = "no-such-user-swarmd"
SLEEP = "sleep 600"


def _has_nobody() -> bool:
    try:
        return pwd.getpwuid(NOBODY).pw_name == "nobody"
    except KeyError:
        return False


needs_nobody = pytest.mark.skipif(not _has_nobody(), reason="no user 'nobody' with uid 65534 here")


def proc_status(pid: int) -> dict[str, list[str]]:
    with open(f"/proc/{pid}/status") as handle:
        return {key: value.split() for key, _, value in (line.partition(":") for line in handle)}


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if item)


def running_pid(daemon: Daemon, backend_id: int) -> int:
    def pid() -> int | None:
        backend = daemon.backend(backend_id)
        return backend["pid"] if backend and backend["status"] == "running" else None

    return wait_until(pid, what=f"backend {backend_id} running")


def settled(daemon: Daemon, backend_id: int, status: str) -> dict:
    return wait_until(lambda: (b := daemon.backend(backend_id)) and b["status"] == status and b,
                      what=f"backend {backend_id} {status}")


def other_group() -> grp.struct_group:
    """A group that is not nobody's primary one (for `group:`)."""
    for candidate in ("daemon", "users", "bin", "sys"):
        try:
            found = grp.getgrnam(candidate)
        except KeyError:
            continue
        if found.gr_gid != NOBODY:
            return found
    pytest.skip("no group other than nogroup to test with")


# -- running as another user -------------------------------------------------------------------------------


@needs_root
@needs_nobody
def test_user_nobody_runs_the_backend_as_uid_65534_with_its_environment():
    group = other_group()
    text = backend_yaml({
        0: {"settings": {"command": SLEEP, "user": "nobody"}},
        1: {"settings": {"command": SLEEP, "user": str(NOBODY), "group": group.gr_name,
                         "env": "HOME=/tmp/elsewhere\nMARK=1"}},
        2: {"settings": {"command": SLEEP}},
    })
    daemon = Daemon(None, text)
    try:
        pid = running_pid(daemon, 0)
        status = proc_status(pid)
        login_groups = sorted(str(g) for g in os.getgrouplist("nobody", NOBODY))
        assert status["Uid"] == [str(NOBODY)] * 4
        assert status["Gid"] == [str(pwd.getpwuid(NOBODY).pw_gid)] * 4
        assert sorted(status["Groups"]) == login_groups  # the user's, none of the daemon's
        env = proc_environ(pid)
        assert (env["HOME"], env["USER"], env["LOGNAME"]) == (pwd.getpwuid(NOBODY).pw_dir, "nobody", "nobody")

        pid = running_pid(daemon, 1)  # by uid, with another primary group; its own HOME kept
        status = proc_status(pid)
        assert status["Uid"] == [str(NOBODY)] * 4
        assert status["Gid"] == [str(group.gr_gid)] * 4
        assert sorted(status["Groups"]) == login_groups
        env = proc_environ(pid)
        assert (env["HOME"], env["USER"], env["MARK"]) == ("/tmp/elsewhere", "nobody", "1")

        pid = running_pid(daemon, 2)  # no user: the daemon's own
        assert proc_status(pid)["Uid"] == [str(os.getuid())] * 4
        assert proc_environ(pid).get("HOME") == os.environ.get("HOME")
    finally:
        daemon.finish()


@needs_root
@needs_nobody
def test_an_api_edit_switches_a_running_backend_to_another_user():
    daemon = Daemon(None, backend_yaml({0: {"settings": {"command": SLEEP}}}))
    try:
        first = running_pid(daemon, 0)
        assert proc_status(first)["Uid"][0] == str(os.getuid())
        daemon.ok("EditBackend", {"backend_id": 0, "title": "", "settings": {"user": "nobody"}})
        pid = wait_until(lambda: (p := running_pid(daemon, 0)) != first and p, what="a new process")
        assert proc_status(pid)["Uid"] == [str(NOBODY)] * 4
        assert "      user: nobody\n" in daemon.file_bytes().decode()
    finally:
        daemon.finish()


@needs_root
@needs_nobody
def test_a_working_directory_the_user_cannot_enter_fails_the_start_as_usual():
    closed = Path(tempfile.mkdtemp(prefix="swarmd-closed-"))  # 0700, root's
    try:
        script = closed / "run.sh"
        script.write_text("#!/bin/sh\nexec sleep 600\n")
        script.chmod(0o755)
        daemon = Daemon(None, backend_yaml({0: {"settings": {"command": "./run.sh", "cwd": str(closed),
                                                             "user": "nobody"}}}))
        try:
            backend = settled(daemon, 0, "errored")
            assert backend["status_message"] == "cannot start './run.sh': permission denied (./run.sh)"
        finally:
            daemon.finish()
    finally:
        shutil.rmtree(closed)


def _nobody_can_run_swarmd() -> bool:
    """Whether a process that became uid 65534 can exec this interpreter and import swarmd (the daemon also
    execs it for its guardian): not when the interpreter lies under a directory closed to other users."""
    if not ROOT or not _has_nobody():
        return False
    try:
        done = subprocess.run([sys.executable, "-c", "import swarmd.api.server"], cwd="/", capture_output=True,
                              user=NOBODY, group=NOBODY, extra_groups=[NOBODY], timeout=60)
    except OSError:
        return False
    return done.returncode == 0


@pytest.mark.skipif(not _nobody_can_run_swarmd(), reason="needs root, and uid 65534 able to run this interpreter "
                    "and import swarmd (the in-process test below covers the refusal everywhere)")
def test_a_daemon_that_is_not_root_fails_only_that_backends_start():
    directory = public_dir()
    try:
        backends = directory / "backends.yaml"
        backends.write_text(backend_yaml({0: {"settings": {"command": SLEEP, "user": "nobody"}},
                                          1: {"settings": {"command": SLEEP}}}))
        os.chown(directory, NOBODY, NOBODY)
        os.chown(backends, NOBODY, NOBODY)

        def as_nobody() -> None:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)

        daemon = Daemon(directory, preexec_fn=as_nobody)
        try:
            backend = settled(daemon, 0, "errored")
            assert backend["status_message"] == NOT_ROOT.format(uid=NOBODY)
            assert proc_status(running_pid(daemon, 1))["Uid"][0] == str(NOBODY)
            assert daemon.file_is_valid()  # the file is fine: it may be shared with a root daemon
        finally:
            daemon.finish()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


NOT_ROOT = ("cannot start 'sleep': it is set to run as user 'nobody', which needs swarmd to run as root (it runs "
            "as uid {uid}); leave 'user' and 'group' empty to run it as swarmd's own user")


@needs_nobody
async def test_a_fleet_that_is_not_root_fails_only_that_backends_start(make_fleet, monkeypatch):
    if ROOT:
        monkeypatch.setattr(os, "geteuid", lambda: 1000)  # (as anyone else, it is not root already)
    fleet = await make_fleet({0: {"settings": {"command": SLEEP, "user": "nobody"}},
                              1: {"settings": {"command": SLEEP}}})
    await eventually(lambda: fleet.get(0).status == "errored" and fleet.get(1).status == "running")
    assert fleet.get(0).status_message == NOT_ROOT.format(uid=os.geteuid())


# -- unknown users are refused where the file is validated ----------------------------------------------------


def test_swarmd_check_locates_an_unknown_user_and_group(tmp_path):
    path = tmp_path / "backends.yaml"
    path.write_text(backend_yaml({0: {"settings": {"command": SLEEP, "user": UNKNOWN, "group": "no-such-group-x"}},
                                  1: {"settings": {"command": SLEEP, "user": "root", "group": "0"}}}))
    done = subprocess.run([sys.executable, "-m", "swarmd", "check", "--backends", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1, done
    assert done.stdout.splitlines() == [
        f"{path}:8:7: settings.user: no user '{UNKNOWN}' on this machine",
        f"{path}:9:7: settings.group: no group 'no-such-group-x' on this machine",
    ]


def test_the_api_refuses_an_unknown_user_through_the_files_validation():
    daemon = Daemon(None, backend_yaml({0: {"settings": {"command": SLEEP}}}))
    try:
        before = daemon.file_bytes()
        answer = daemon.api("EditBackend", {"backend_id": 0, "title": "", "settings": {"user": UNKNOWN}})
        assert answer["error"].startswith("Refused: the change would make the backends file invalid: ")
        assert answer["error"].endswith(f":8:7: settings.user: no user '{UNKNOWN}' on this machine")
        answer = daemon.api("AddNewBackend", {"type_id": "process", "settings": {"group": "no-such-group-x"}})
        assert answer["error"].endswith("settings.group: no group 'no-such-group-x' on this machine")
        assert daemon.file_bytes() == before
        # a user that exists is accepted whoever runs the daemon (a non-root daemon fails its start instead)
        daemon.ok("EditBackend", {"backend_id": 0, "title": "", "settings": {"user": "root"}})
        assert "user: root" in daemon.file_bytes().decode()
    finally:
        daemon.finish()
