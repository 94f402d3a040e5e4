"""Which commands `swarmd` runs again under -OO (swarmd/entry.py; the re-execution itself: e2e/test_serve_reexec.py)."""

from __future__ import annotations

import pytest

from swarmd import entry


@pytest.mark.parametrize(("argv", "optimized"), [
    (["serve"], True),
    (["serve", "--backends", "b.yaml", "--socket", "s.sock"], True),
    (["check", "--backends", "serve"], False),  # the command is the first word, not any word
    (["import", "--from", "Backends.fds"], False),
    (["--version"], False),
    ([], False),
])
def test_only_serve_is_run_again(monkeypatch, argv, optimized):
    monkeypatch.delenv("SWARMD_OPTIMIZE", raising=False)
    monkeypatch.setattr(entry, "_optimized_bytecode_installed", lambda: True)
    assert entry._wants_optimized(argv) is optimized
    monkeypatch.setenv("SWARMD_OPTIMIZE", "0")
    assert entry._wants_optimized(argv) is False
