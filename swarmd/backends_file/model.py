"""What a read gives: a valid file (`BackendsFile`) of backends (`BackendDef`), or located problems
(`Problem`, raised together as `FileInvalid`); and `digest_of`, the version of a file's bytes."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
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


@dataclass(frozen=True, slots=True)
class BackendDef:
    """One backend as declared: every setting present (defaults filled in) and typed."""

    id: int
    type_id: str
    title: str
    enabled: bool
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not isinstance(self.settings, MappingProxyType):
            object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))

    def same_process(self, other: BackendDef) -> bool:
        """True when a running process of `self` is also a correct process of `other` (only the title or
        the id differ)."""
        return (self.type_id, dict(self.settings), self.enabled) == (
            other.type_id, dict(other.settings), other.enabled)


@dataclass(frozen=True)
class BackendsFile:
    """A valid backends file as read or written: its text (the base of the next edit), its bytes (`data`,
    the text as UTF-8: what the file on disk must still hold for a write to go ahead), backends (id ->
    BackendDef, sorted by id)."""

    path: str
    text: str
    data: bytes = field(repr=False)
    backends: Mapping[int, BackendDef]
    #: Where the entries are in `text`, when the fast path may edit it (None: edit the slow way). A
    #: reload also reuses, through it, the definitions of the entries whose text did not change.
    _index: _Index | None = field(default=None, compare=False, repr=False)

    @functools.cached_property
    def digest(self) -> str:
        """The version of the file (`digest_of` its bytes). Computed when asked: the store itself compares
        bytes, which costs nothing next to hashing megabytes at every write and reload."""
        return digest_of(self.data)


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
