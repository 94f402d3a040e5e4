"""plan(old, new): the difference of two fleets as actions, a pure function."""

from __future__ import annotations

from swarmd.backends_file import BackendDef
from swarmd.plan import Add, Disable, Enable, Reconfigure, Remove, Rename, Retitle, plan


def d(backend_id: int, title: str = "t", enabled: bool = True, command: str = "sleep 600",
      type_id: str = "process") -> BackendDef:
    return BackendDef(backend_id, type_id, title, enabled, {"command": command})


def test_unchanged_is_nothing_even_as_new_objects():
    old = {0: d(0), 1: d(1)}
    assert plan(old, dict(old)) == []
    assert plan(old, {0: d(0), 1: d(1)}) == []


def test_title_only_is_a_retitle():
    assert plan({0: d(0)}, {0: d(0, title="new")}) == [Retitle(0)]


def test_settings_or_type_is_a_reconfigure():
    assert plan({0: d(0)}, {0: d(0, command="sleep 1")}) == [Reconfigure(0)]
    assert plan({0: d(0)}, {0: d(0, type_id="comfyui_api")}) == [Reconfigure(0)]


def test_enabled_flips_with_their_reconfigure_in_the_right_order():
    assert plan({0: d(0)}, {0: d(0, enabled=False)}) == [Disable(0)]
    assert plan({0: d(0, enabled=False)}, {0: d(0)}) == [Enable(0)]
    assert plan({0: d(0)}, {0: d(0, enabled=False, command="x")}) == [Disable(0), Reconfigure(0)]
    assert plan({0: d(0, enabled=False)}, {0: d(0, command="x")}) == [Reconfigure(0), Enable(0)]


def test_added_and_removed():
    assert plan({0: d(0)}, {0: d(0), 1: d(1, command="other")}) == [Add(1)]
    assert plan({0: d(0), 1: d(1, command="other")}, {0: d(0)}) == [Remove(1)]


def test_an_id_that_alone_changed_is_a_rename():
    assert plan({0: d(0)}, {5: d(5, title="moved too")}) == [Rename(0, 5), Retitle(5)]
    assert plan({0: d(0)}, {5: d(5)}) == [Rename(0, 5)]
    # a different process is not a rename
    assert plan({0: d(0)}, {5: d(5, command="other")}) == [Remove(0), Add(5)]


def test_two_identical_backends_renamed_are_paired_once_each():
    old = {0: d(0), 1: d(1)}
    new = {7: d(7), 8: d(8)}
    actions = plan(old, new)
    assert sorted(a.old_id for a in actions if isinstance(a, Rename)) == [0, 1]
    assert sorted(a.new_id for a in actions if isinstance(a, Rename)) == [7, 8]
    assert len(actions) == 2


def test_a_known_move_is_a_rename_whatever_else_changed():
    assert plan({3: d(3)}, {10: d(10, command="new")}, moves={3: 10}) == [Rename(3, 10), Reconfigure(10)]
    assert plan({3: d(3)}, {10: d(10)}, moves={3: 10}) == [Rename(3, 10)]
    assert plan({3: d(3)}, {3: d(3, title="x")}, moves={3: 3}) == [Retitle(3)]  # not a move at all


def test_order_renames_then_removals_then_the_rest():
    old = {0: d(0), 1: d(1, command="a"), 2: d(2, command="b")}
    new = {0: d(0, title="x"), 9: d(9, command="a"), 3: d(3, command="c")}
    assert plan(old, new) == [Rename(1, 9), Remove(2), Retitle(0), Add(3)]
