"""The changes a write makes (`SetBackend`, `RenameBackend`, `DeleteBackend`: a `Change`), and
`_changes_nothing`, which tells a change that would leave a backend as it is."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from swarmd.backends_file.model import BackendDef


@dataclass(frozen=True)
class SetBackend:
    """Create backend `id`, or change the named fields of it (None: unchanged). `settings` are merged key
    by key; they are typed values (str/int/float/bool) as the daemon keeps them."""

    id: int
    type_id: str | None = None
    title: str | None = None
    enabled: bool | None = None
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class RenameBackend:
    """Move entry `old_id` to key `new_id`, keeping its place in the file and its comments."""

    old_id: int
    new_id: int


@dataclass(frozen=True)
class DeleteBackend:
    id: int


Change = SetBackend | RenameBackend | DeleteBackend


def _same_value(old: Any, new: Any) -> bool:
    if isinstance(old, bool) or isinstance(new, bool):
        return type(old) is type(new) and old == new
    if isinstance(old, str) or isinstance(new, str):
        return isinstance(old, str) and isinstance(new, str) and old == new
    return old == new


def _changes_nothing(definition: BackendDef | None, change: Change) -> bool:
    """True when `change` is a SetBackend that gives `definition` what it has already."""
    if definition is None or not isinstance(change, SetBackend):
        return False
    return ((change.type_id is None or change.type_id == definition.type_id)
            and (change.title is None or change.title == definition.title)
            and (change.enabled is None or change.enabled is definition.enabled)
            and all(name in definition.settings and _same_value(definition.settings[name], value)
                    for name, value in change.settings.items()))
