"""The daemon keeps the garbage collector off its long-lived heap: it freezes what start-up built, and what
survives any full collection that took long (`daemon._freeze_after_slow_full_collections`)."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import pytest

from swarmd import daemon


@pytest.fixture
def gc_state() -> Iterator[None]:
    """Leave the collector of the test process as it was found."""
    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    gc.callbacks[:] = callbacks


def test_a_slow_full_collection_freezes_what_survived_it(gc_state: None) -> None:
    gc.unfreeze()
    kept = [[i] for i in range(20_000)]  # long-lived containers, made after "start-up"
    daemon._freeze_after_slow_full_collections("start", {"generation": 2})
    time.sleep(2 * daemon._SLOW_FULL_COLLECTION_S)
    daemon._freeze_after_slow_full_collections("stop", {"generation": 2, "collected": 0})
    assert gc.get_freeze_count() >= len(kept)
    assert not any(item is kept for item in gc.get_objects())  # no full collection walks them again


def test_quick_or_young_collections_freeze_nothing(gc_state: None) -> None:
    gc.unfreeze()
    daemon._freeze_after_slow_full_collections("start", {"generation": 2})
    daemon._freeze_after_slow_full_collections("stop", {"generation": 2, "collected": 0})
    daemon._freeze_after_slow_full_collections("start", {"generation": 0})
    time.sleep(2 * daemon._SLOW_FULL_COLLECTION_S)
    daemon._freeze_after_slow_full_collections("stop", {"generation": 0, "collected": 0})
    assert gc.get_freeze_count() == 0


def test_the_loaded_heap_is_frozen_and_the_hook_installed_once(gc_state: None) -> None:
    daemon._freeze_the_loaded_heap()
    daemon._freeze_the_loaded_heap()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == 10_000
    assert gc.callbacks.count(daemon._freeze_after_slow_full_collections) == 1
