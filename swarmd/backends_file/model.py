"""What a read gives: a valid file (`BackendsFile`) of backends (`BackendDef`), or located problems
(`Problem`, raised together as `FileInvalid`); and `digest_of`, the version of a file's bytes."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from swarmd.backends_file.index import _Index

#: Keys a backend entry may have, in the order new entries are written.
BACKEND_KEYS = ("type", "title", "enabled", "settings")


@dataclass(frozen=True, order=True)
class Problem:
    """One located problem of the file. `str()` gives `FILE:LINE:COL: message` (1-based)."""

    path: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"


class FileInvalid(Exception):
    """The file cannot be used. `problems` holds every located problem, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line, p.col))
        super().__init__("\n".join(str(p) for p in self.problems))


class FrozenSettings(Mapping[str, Any]):
    """A backend's settings, read-only, in the order given: a tuple of values and a name -> position index
    shared by every backend whose settings have the same names in the same order (all of a type's, in the
    common case). A thousand backends hold a thousand small tuples instead of a thousand dicts (~0.7 MB).

    Equal to any mapping with the same items, as a dict is (order does not count); unhashable, as a dict is.
    """

    __slots__ = ("_index", "_values")

    _index: dict[str, int]
    _values: tuple[Any, ...]

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        items = {} if items is None else items
        names = tuple(items)
        index = _SHAPES.get(names)
        if index is None:
            index = {name: position for position, name in enumerate(names)}
            if len(_SHAPES) < _MAX_SHAPES:  # bounded: odd orders beyond it keep an index of their own
                _SHAPES[names] = index
        self._index = index
        self._values = tuple(items[name] for name in names)

    def __getitem__(self, name: str) -> Any:
        return self._values[self._index[name]]

    def get(self, name: str, default: Any = None) -> Any:
        position = self._index.get(name)
        return default if position is None else self._values[position]

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenSettings) and other._index is self._index:
            return self._values == other._values  # the same names in the same order: the values decide
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FrozenSettings({dict(self.items())!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return FrozenSettings, (dict(self.items()),)


#: The shared indexes of FrozenSettings, by names in order (a handful: one per type and order in use).
_SHAPES: dict[tuple[str, ...], dict[str, int]] = {}
_MAX_SHAPES = 256


@dataclass(frozen=True, slots=True)
class BackendDef:
    """One backend as declared: every setting present (defaults filled in) and typed."""

    id: int
    type_id: str
    title: str
    enabled: bool
    settings: Mapping[str, Any] = field(default_factory=FrozenSettings)

    def __post_init__(self) -> None:
        if not isinstance(self.settings, FrozenSettings):
            object.__setattr__(self, "settings", FrozenSettings(self.settings))

    def same_process(self, other: BackendDef) -> bool:
        """True when a running process of `self` is also a correct process of `other` (only the title or
        the id differ)."""
        return (self.type_id, self.settings, self.enabled) == (other.type_id, other.settings, other.enabled)


@dataclass(frozen=True)
class BackendsFile:
    """A valid backends file as read or written: its text (the base of the next edit), its bytes (`data`,
    the text as UTF-8: what the file on disk must still hold for a write to go ahead), backends (id ->
    BackendDef, sorted by id)."""

    path: str
    text: str
    backends: Mapping[int, BackendDef]
    #: Where the entries are in `text`, when the fast path may edit it (None: edit the slow way). A
    #: reload also reuses, through it, the definitions of the entries whose text did not change.
    _index: _Index | None = field(default=None, compare=False, repr=False)

    @property
    def data(self) -> bytes:
        """The file's bytes: `text` as UTF-8 (every reader decodes the bytes whole, so this is exactly what
        was read or written). Encoded when asked -- at a reload's compare and a write's check -- instead of
        keeping the file twice for as long as the daemon runs."""
        return self.text.encode("utf-8")

    @functools.cached_property
    def digest(self) -> str:
        """The version of the file (`digest_of` its bytes). Computed when asked: the store itself compares
        bytes, which costs nothing next to hashing megabytes at every write and reload."""
        return digest_of(self.data)


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
