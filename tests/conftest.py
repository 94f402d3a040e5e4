"""Shared fixtures: `make_fleet` runs a Fleet in the test's trio run, with the real guardian and real children."""

from __future__ import annotations

import pytest
import trio

from swarmd.fleet import Fleet
from swarmd.supervise.process import Guardian
from tests.helpers import backend_yaml


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


