"""Fixtures of the API tests (the harness is tests/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import DEFAULT_BACKENDS, Daemon


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """One daemon shared by a module's tests (starting one costs ~0.5 s), in a fresh 0755 directory under
    /tmp; tests that mutate create their own backends. It must stop cleanly at the end of the module."""
    running = Daemon(backends_text=DEFAULT_BACKENDS)
    yield running
    running.finish()
