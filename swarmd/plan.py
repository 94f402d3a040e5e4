"""The difference between two fleets, as actions: a pure function of two sets of definitions.

`plan(old, new)` compares the backends a fleet has with the ones it should have, id by id, and lists what
must happen -- for a reload of the file and for every API mutation alike (a mutation is a change of the
file, and memory follows the file):

* unchanged -> nothing (the process keeps its pid);
* only the title -> `Retitle` (no restart);
* type or settings -> `Reconfigure` (that backend restarts; modcount+1);
* enabled flipped -> `Enable` / `Disable` (with its `Reconfigure` before an enable, after a disable, when
  the settings changed too);
* added -> `Add`; removed -> `Remove`;
* an id that changed and nothing else (same type, settings, enabled state) -> `Rename`: the same process
  goes on under the new id. `moves` names renames the caller knows of (EditBackend's new_id): those are
  renames whatever else changed, and the rest is compared as for any backend.

Actions come in the order they must be applied: renames, removals, then additions and changes by id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from swarmd.backends_file import BackendDef


@dataclass(frozen=True)
class Rename:
    old_id: int
    new_id: int


@dataclass(frozen=True)
class Remove:
    id: int


@dataclass(frozen=True)
class Add:
    id: int


@dataclass(frozen=True)
class Retitle:
    id: int


@dataclass(frozen=True)
class Reconfigure:
    id: int


@dataclass(frozen=True)
class Enable:
    id: int


@dataclass(frozen=True)
class Disable:
    id: int


Action = Rename | Remove | Add | Retitle | Reconfigure | Enable | Disable


def plan(old: Mapping[int, BackendDef], new: Mapping[int, BackendDef],
         moves: Mapping[int, int] | None = None) -> list[Action]:
    """What turns a fleet of `old` definitions into one of `new` ones (both keyed by id)."""
    renames = {old_id: new_id for old_id, new_id in (moves or {}).items() if old_id != new_id}
    gone = [i for i in old if i not in new and i not in renames]
    fresh = [i for i in new if i not in old and i not in renames.values()]
    for old_id in gone:  # an entry whose id alone changed keeps its process
        match = next((new_id for new_id in fresh if old[old_id].same_process(new[new_id])), None)
        if match is not None:
            renames[old_id] = match
            fresh.remove(match)
    actions: list[Action] = [Rename(old_id, new_id) for old_id, new_id in renames.items()]
    actions += [Remove(i) for i in old if i not in new and i not in renames]
    before = {new_id: old[old_id] for old_id, new_id in renames.items()}
    for backend_id, definition in new.items():
        previous = before.get(backend_id, old.get(backend_id))
        if previous is None:
            actions.append(Add(backend_id))
        elif previous is not definition and (previous.title != definition.title
                                             or not previous.same_process(definition)):
            actions += _changes(backend_id, previous, definition)
    return actions


def _changes(backend_id: int, old: BackendDef, new: BackendDef) -> list[Action]:
    if old.same_process(new):
        return [Retitle(backend_id)]
    reconfigured = (old.type_id, dict(old.settings)) != (new.type_id, dict(new.settings))
    changes: list[Action] = []
    if old.enabled and not new.enabled:
        changes.append(Disable(backend_id))
    if reconfigured:
        changes.append(Reconfigure(backend_id))
    if new.enabled and not old.enabled:
        changes.append(Enable(backend_id))
    return changes
