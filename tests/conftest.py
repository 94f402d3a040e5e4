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
