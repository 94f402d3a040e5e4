"""Shared fixtures: `make_fleet` runs a Fleet in the test's trio run, with the real guardian and real children;
`start_daemon` runs real `swarmd serve` daemons (tests/helpers.py's Daemon) and stops them after the test."""

from __future__ import annotations

import pytest
import trio

from swarmd.fleet import Fleet
from swarmd.supervise.process import Guardian
from tests.helpers import Daemon, backend_yaml


@pytest.fixture
async def make_fleet(nursery, tmp_path):
    guardian = Guardian()
    guardian.start()
    fleets: list[Fleet] = []

    async def make(backends: dict[int, dict] | str) -> Fleet:
        path = tmp_path / "backends.yaml"
        path.write_text(backends if isinstance(backends, str) else backend_yaml(backends))
        fleet = Fleet(str(path), nursery, guardian)
        await fleet.start()
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        with trio.fail_after(20):
            await fleet.shutdown()
    guardian.close()


@pytest.fixture
def start_daemon(tmp_path):
    """`start_daemon(backends, **kwargs)`: a Daemon in this test's tmp_path (or `directory=`), listening
    when it returns. `backends` is a {id: spec} dict for backend_yaml, the text of the file, or None (the
    file is there already). Whatever still runs at the end of the test is stopped (SIGTERM, then SIGKILL)."""
    started: list[Daemon] = []

    def start(backends: dict[int, dict] | str | None = None, *, directory=None, **kwargs) -> Daemon:
        text = backend_yaml(backends) if isinstance(backends, dict) else backends
        daemon = Daemon(tmp_path if directory is None else directory, text, **kwargs)
        started.append(daemon)
        return daemon

    yield start
    hung = []
    for daemon in started:
        try:
            daemon.stop()
        except AssertionError as err:  # SIGTERM did not end it: it was SIGKILLed, and that is a bug
            hung.append(str(err))
    assert not hung, hung


@pytest.fixture
def made_cgroup():
    """A fresh cgroup under the cgroup v2 mount (root only), standing for the one systemd delegates to a
    unit: its leaves are killed and removed afterwards."""
    import os
    import secrets
    from pathlib import Path

    from swarmd import cgroups
    from swarmd.supervise import guardian as core

    mounts = cgroups.cgroup2_mounts(Path("/proc/self/mountinfo").read_text())
    mount = next((mountpoint for root, mountpoint in mounts if root == "/"), None)
    if os.geteuid() != 0 or mount is None or not os.access(mount, os.W_OK):
        pytest.skip("needs root and a writable cgroup v2 mount to make a cgroup")
    directory = Path(mount) / f"swarmd-test-{secrets.token_hex(4)}"
    directory.mkdir()
    try:
        yield directory
    finally:
        for leaf in [path for path in directory.iterdir() if path.is_dir()]:
            core.kill_cgroup(str(leaf))
            assert core.remove_cgroup(str(leaf), patience=5.0), leaf
        core.kill_cgroup(str(directory))
        assert core.remove_cgroup(str(directory), patience=5.0)
