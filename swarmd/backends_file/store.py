"""`BackendsStore`, the one owner of the file on disk: it loads it, and writes changes into it -- on the
fast path where the file allows it, else the slow way -- validated before they are written, and written
only over the version they were made on."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from swarmd.backends_file.changes import Change, DeleteBackend, RenameBackend, SetBackend, _changes_nothing
from swarmd.backends_file.edit import Editor
from swarmd.backends_file.incremental import reparse
from swarmd.backends_file.index import _build_index
from swarmd.backends_file.lock import _prepare_lock
from swarmd.backends_file.model import BackendsFile, FileInvalid, Problem
from swarmd.backends_file.parser import _line_col, _parse, _read_bytes, _shown_id, _shown_name
from swarmd.backends_file.splice import _Splice, _Unavailable
from swarmd.backends_file.write import _remove_stale_temps, _write_bytes
from swarmd.settings import describe
from swarmd.types import TYPES, BackendType


class BackendsStore:
    """The one owner of the backends file on disk: reads it, and writes changes into it.

    Synchronous: the daemon calls it in a worker thread, one call at a time. `current` is the version last
    read or written (None before `load()`); every write is made on top of it and only if the file on disk
    is still that version.
    """

    def __init__(self, path: str, types: Mapping[str, BackendType] = TYPES, lock_timeout: float = 5.0) -> None:
        self.path = path
        self.types = types
        self.lock_timeout = lock_timeout
        self.current: BackendsFile | None = None

    def load(self) -> BackendsFile:
        """Read and validate the file (a missing one is an empty fleet) and make it `current`. Also removes
        the temp files an interrupted write left next to it. Raises FileInvalid, OSError."""
        _remove_stale_temps(os.path.realpath(self.path))
        data = _read_bytes(self.path)
        self.current = self._adopt(b"" if data is None else data)
        _prepare_lock(self.path)
        return self.current

    def read_if_changed(self) -> BackendsFile | None:
        """Read the file again: None when it holds `current` (or is missing: keep running, the next write
        recreates it), else its new version, which becomes `current`. Raises FileInvalid (`current` is
        kept), OSError.

        The new version is parsed incrementally where its layout allows (`incremental.reparse`: only the
        entries whose text changed are parsed again), else whole; the result is the same either way."""
        data = _read_bytes(self.path)
        if data is None or (self.current is not None and data == self.current.data):
            return None
        self.current = self._adopt(data, self.current)
        return self.current

    def write(self, changes: Sequence[Change]) -> BackendsFile:
        """Apply `changes` (in order) to `current` and write the result; return it (it becomes `current`).

        The new text is validated before it is written, and the backends returned are what it parses to.
        Raises FileInvalid (the new text does not validate: nothing written), ValueError (a change that
        cannot apply: an id that is not a non-negative integer, renaming or deleting an id that is not
        there, renaming onto one that is), Conflict
        (the file changed on disk since `current` was read: theirs is kept), LockTimeout or another
        OSError. On any failure the file and `current` are as they were, and no temp file is left.
        """
        base = self.current
        if base is None:
            raise RuntimeError("BackendsStore.write() before load()")
        new, data = self._apply(base, list(changes))
        if new is not base:
            _write_bytes(self.path, data, base.data, self.lock_timeout)
            self.current = new
        return new

    def _adopt(self, data: bytes, previous: BackendsFile | None = None) -> BackendsFile:
        """`data` parsed and validated, with its index: incrementally on top of `previous` where that is
        sound, else by a whole-file parse (which also gives the located problems). Raises FileInvalid."""
        loaded = reparse(self.path, data, previous, self.types)
        if loaded is not None:
            return loaded
        loaded, order = _parse(self.path, data, self.types)
        return dataclasses.replace(loaded, _index=_build_index(loaded.text, order))

    def _apply(self, base: BackendsFile, changes: list[Change]) -> tuple[BackendsFile, bytes]:
        """The version `changes` make of `base`, and its bytes (`base` itself when nothing changes)."""
        for change in changes:
            _check_change(self.path, base, change)
        if all(_changes_nothing(base.backends.get(getattr(c, "id", -1)), c) for c in changes):
            return base, b""
        if base._index is not None:
            try:
                text, backends, index = _Splice(self.path, base, base._index, self.types).run(changes)
            except _Unavailable:
                pass
            else:
                if text == base.text:
                    return base, b""
                data = _encode(self.path, text)
                return BackendsFile(self.path, text, MappingProxyType(backends), index), data
        return self._apply_slow(base, changes)

    def _apply_slow(self, base: BackendsFile, changes: list[Change]) -> tuple[BackendsFile, bytes]:
        """The whole document, round-trip: any file, slowly."""
        editor = Editor(self.path, base.text)
        for change in changes:
            editor.apply(change)
        text = editor.render()
        if text == base.text:
            return base, b""
        data = _encode(self.path, text)
        return self._adopt(data, base), data


def _check_change(path: str, base: BackendsFile, change: Change) -> None:
    """Refuse a change that names no valid id (ValueError), or whose text cannot be stored at all: a lone
    surrogate (which JSON's \\ud800 escape can carry) cannot be encoded as UTF-8 (FileInvalid, located at
    the entry)."""
    if not isinstance(change, SetBackend | RenameBackend | DeleteBackend):
        raise TypeError(f"not a change: {type(change).__name__}")
    ids = (change.old_id, change.new_id) if isinstance(change, RenameBackend) else (change.id,)
    for backend_id in ids:
        if isinstance(backend_id, bool) or not isinstance(backend_id, int) or backend_id < 0:
            raise ValueError(f"backend id {_shown_id(backend_id)}: expected a non-negative integer")
    if not isinstance(change, SetBackend):
        return
    texts = [("type", change.type_id), ("title", change.title)]
    for name, value in change.settings.items():
        shown = f"settings.{_shown_name(name) if isinstance(name, str) else describe(name)}"
        texts += [(shown, name), (shown, value)]
    for what, text in texts:
        if not isinstance(text, str):
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            line = base.text.count("\n") + 1
            if base._index is not None:
                line = next((base.text.count("\n", 0, start) + 1 for backend_id, start, _ in base._index.entries
                             if backend_id == change.id), line)
            raise FileInvalid([Problem(path, line, 1, f"backends.{change.id}.{what}: cannot be written: not "
                                       f"valid Unicode text (a lone surrogate at character {err.start})")]) from None


def _encode(path: str, text: str) -> bytes:
    """`text` as UTF-8. Raises FileInvalid, located, when it cannot be encoded."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        line, col = _line_col(text, err.start)
        raise FileInvalid([Problem(path, line, col, f"cannot be written as UTF-8 ({err.reason})")]) from None
