"""Fixtures of the API tests (the harness itself is api_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from api_harness import Daemon, finish_daemon, start_daemon


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """One daemon shared by a module's tests; tests that mutate create their own backends."""
    running = start_daemon()
    yield running
    finish_daemon(running)
