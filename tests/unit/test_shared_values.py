"""Values that a thousand backends share instead of each holding a copy: settings (`FrozenSettings`), lifecycle
configs (`shared_config`), and a backends file's bytes (derived from its text, not kept twice)."""

from __future__ import annotations

import copy
import pickle
import signal

import pytest

from swarmd import backends_file
from swarmd.backends_file import BackendDef
from swarmd.backends_file.model import _MAX_SHAPES, FrozenSettings
from swarmd.supervise import lifecycle
from swarmd.supervise.lifecycle import LifecycleConfig, shared_config
from tests.helpers import SLEEPER, backend_yaml


def test_frozen_settings_read_and_compare_as_a_dict_does():
    items = {"command": "x", "port": 0, "env": "", "gpus": None}
    frozen = FrozenSettings(items)
    assert frozen == items and items == frozen and dict(frozen) == items
    assert list(frozen) == list(items) and list(frozen.items()) == list(items.items()) and len(frozen) == 4
    assert frozen["port"] == 0 and frozen.get("gpus", "default") is None and frozen.get("nope", 7) == 7
    assert "env" in frozen and "nope" not in frozen
    with pytest.raises(KeyError):
        frozen["nope"]
    # order does not count for equality (as for a dict), values do
    assert FrozenSettings(dict(reversed(list(items.items())))) == frozen
    assert FrozenSettings({**items, "port": 1}) != frozen and frozen != {**items, "extra": 1}
    assert frozen != ["command"]
    with pytest.raises(TypeError):
        hash(frozen)
    for again in (copy.copy(frozen), copy.deepcopy(frozen), pickle.loads(pickle.dumps(frozen))):
        assert again == frozen and list(again) == list(frozen)
    assert repr(frozen) == f"FrozenSettings({items!r})"
    assert FrozenSettings() == {} and len(FrozenSettings()) == 0


def test_settings_with_the_same_names_share_one_index_and_odd_orders_stay_bounded(monkeypatch):
    a, b = FrozenSettings({"x": 1, "y": 2}), FrozenSettings({"x": 3, "y": 4})
    assert a._index is b._index
    monkeypatch.setattr(backends_file.model, "_SHAPES", {})
    for count in range(_MAX_SHAPES + 50):
        odd = FrozenSettings({f"name{count}": count})
        assert odd[f"name{count}"] == count
    assert len(backends_file.model._SHAPES) == _MAX_SHAPES


def test_every_backend_of_a_file_shares_its_settings_index_and_bytes_are_the_text_as_read():
    text = backend_yaml({i: {"settings": {"command": SLEEPER}} for i in range(3)})
    # a byte order mark and CRLF line ends: what the bytes were is what `data` gives back
    data = ("\ufeff" + text.replace("\n", "\r\n")).encode()
    loaded = backends_file.parse("b.yaml", data)
    assert loaded.data == data and loaded.text == data.decode()
    indexes = {id(definition.settings._index) for definition in loaded.backends.values()}
    assert len(indexes) == 1
    assert isinstance(BackendDef(9, "process", "t", True, {"command": "x"}).settings, FrozenSettings)


def test_equal_lifecycle_configs_are_one_object_and_the_cache_is_bounded(monkeypatch):
    first = shared_config(LifecycleConfig(restart="always", stop_signal=signal.SIGINT))
    assert shared_config(LifecycleConfig(restart="always", stop_signal=signal.SIGINT)) is first
    assert shared_config(LifecycleConfig(restart="never")) is not first
    monkeypatch.setattr(lifecycle, "_SHARED_CONFIGS", {})
    for count in range(lifecycle._MAX_SHARED_CONFIGS + 10):
        config = LifecycleConfig(stop_timeout=float(count))
        assert shared_config(config) == config
    assert len(lifecycle._SHARED_CONFIGS) == lifecycle._MAX_SHARED_CONFIGS
