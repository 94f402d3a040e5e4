"""The fast path's edits (`_Splice`): a change touches only its entry's block -- rendered anew by `Editor`,
cut out, or its key's digits rewritten -- spliced into the text; only the new blocks are validated again,
each on its own. `_Unavailable` sends a write the slow way."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from swarmd.backends_file.changes import Change, DeleteBackend, RenameBackend, SetBackend, _changes_nothing
from swarmd.backends_file.edit import Editor
from swarmd.backends_file.index import _content_end, _entry_step, _Index, _key_re, _shallow_re, _suspicious
from swarmd.backends_file.model import BackendDef, BackendsFile, FileInvalid
from swarmd.backends_file.parser import _parse
from swarmd.types import BackendType

_WRAPPER = "backends:\n"


class _Unavailable(Exception):
    """The fast path cannot make this change safely: make it the slow way."""


def _reindent(lines: list[str], shift: int) -> list[str]:
    """`lines` moved right by `shift` columns (left when negative). Raises _Unavailable when a line that is
    not blank or a comment has too few spaces to move left."""
    if shift == 0:
        return lines
    if shift > 0:
        pad = " " * shift
        return [pad + line if line else line for line in lines]
    moved = []
    for line in lines:
        spaces = len(line) - len(line.lstrip(" "))
        if spaces >= -shift:
            moved.append(line[-shift:])
        elif not line.strip() or line.lstrip(" ").startswith("#"):
            moved.append(line.lstrip(" "))
        else:
            raise _Unavailable("a line too far left to move")
    return moved


def _render_block(path: str, text: str, indent: int, step: int, change: SetBackend) -> str:
    """Apply `change` to the one-entry block `text` (its key at `indent`, its content `step` deeper; "" for
    a new entry) with `Editor`, and give the new block, indented the same way."""
    lines = text[:-1].split("\n") if text else []
    # Parsed as the value of `backends:` with a uniform indentation `step` (ruamel has one per document),
    # then moved back where it was.
    wrapped = _WRAPPER + "".join(line + "\n" for line in _reindent(lines, step - indent))
    editor = Editor(path, wrapped, indent=step)
    editor.apply(change)
    rendered = editor.render()
    if not rendered.startswith(_WRAPPER) or not rendered.endswith("\n"):
        raise _Unavailable("unexpected rendering")
    new_lines = rendered[len(_WRAPPER):-1].split("\n")
    block = "".join(line + "\n" for line in _reindent(new_lines, indent - step))
    _check_block(block, indent, change.id)
    return block


def _check_block(block: str, indent: int, backend_id: int) -> None:
    """Raise _Unavailable unless `block` keeps the index's rules: one entry, key `backend_id` at `indent`,
    every other line deeper (or blank, or a comment), no gap lines at its end."""
    if _suspicious(block) or not block.endswith("\n"):
        raise _Unavailable("the block needs the slow path")
    match = _key_re(indent).match(block)
    if match is None or int(match.group(1)) != backend_id:
        raise _Unavailable("unexpected key line")
    if len(_shallow_re(indent).findall(block)) != 1 or _content_end(block, 0, len(block), indent) != len(block):
        raise _Unavailable("unexpected block layout")


class _Splice:
    """One write on the fast path: the text being edited, where its entries are, their definitions.

    Linear in the number of entries only through list copies and one shift of the offsets after the
    changed entry, no YAML outside it: at 10,000 backends (3 MB) a write costs 10-15 ms on a 2-core
    machine -- the one entry's round trip and parse (~5 ms), the shift (~2 ms), the write and its
    fsyncs."""

    def __init__(self, path: str, base: BackendsFile, index: _Index, types: Mapping[str, BackendType]) -> None:
        self.path, self.types = path, types
        self.text = base.text
        self.indent, self.step, self.body_start = index.indent, index.step, index.body_start
        self.entries: list[tuple[int, int, int]] = list(index.entries)  # (id, start, end), in file order
        self.ids = [entry[0] for entry in self.entries]  # the same order: positions found by list.index
        self.defs = dict(base.backends)
        self.resort = False  # whether `defs` may no longer be in id order (a rename, an id added below)
        self.dirty: set[int] = set()  # ids whose block was written anew: parsed again at the end

    def run(self, changes: Sequence[Change]) -> tuple[str, dict[int, BackendDef], _Index | None]:
        for change in changes:
            if isinstance(change, SetBackend):
                self._set(change)
            elif isinstance(change, RenameBackend):
                self._rename(change.old_id, change.new_id)
            elif isinstance(change, DeleteBackend):
                self._delete(change.id)
            else:
                raise TypeError(f"not a change: {type(change).__name__}")
        for backend_id in sorted(self.dirty):
            if backend_id not in self.defs and self.defs and backend_id < next(reversed(self.defs)):
                self.resort = True
            self.defs[backend_id] = self._parse_entry(backend_id)
        index = None
        if self.entries:
            index = _Index(self.indent, self.step, self.body_start, tuple(self.entries))
        defs = dict(sorted(self.defs.items())) if self.resort else self.defs
        return self.text, defs, index

    def _position(self, backend_id: int) -> int:
        try:
            return self.ids.index(backend_id)
        except ValueError:
            return -1

    def _splice(self, start: int, end: int, new: str, after: int) -> None:
        """Replace text[start:end] by `new`, moving the entries from position `after` on."""
        self.text = self.text[:start] + new + self.text[end:]
        delta = len(new) - (end - start)
        if delta and after < len(self.entries):
            self.entries[after:] = [(i, s + delta, e + delta) for i, s, e in self.entries[after:]]

    def _set_end(self, position: int, end: int) -> None:
        backend_id, start, _ = self.entries[position]
        self.entries[position] = (backend_id, start, end)

    def _set(self, change: SetBackend) -> None:
        position = self._position(change.id)
        if position >= 0:
            if change.id not in self.dirty and _changes_nothing(self.defs.get(change.id), change):
                return
            _, start, end = self.entries[position]
            block = self.text[start:end]
            if not block.endswith("\n"):
                block += "\n"
            new = _render_block(self.path, block, self.indent, self._block_step(block), change)
            self._splice(start, end, new, position + 1)
            self._set_end(position, start + len(new))
        else:
            new = _render_block(self.path, "", self.indent, self.step, change)
            at = self.entries[-1][2] if self.entries else self.body_start
            if at and self.text[at - 1] != "\n":  # the file ends without a newline: end its last line
                self._splice(at, at, "\n", len(self.entries))
                at += 1
                if self.entries:
                    self._set_end(len(self.entries) - 1, at)
                    # That newline may change what its last value means (`env: |` then "A=1" at the end
                    # of the file is "A=1"; followed by a newline, "A=1\n"): read it again.
                    self.dirty.add(self.entries[-1][0])
                else:
                    self.body_start = at
            self._splice(at, at, new, len(self.entries))
            self.entries.append((change.id, at, at + len(new)))
            self.ids.append(change.id)
        self.dirty.add(change.id)

    def _block_step(self, block: str) -> int:
        """The indentation step inside this entry (its first content line under the key)."""
        return _entry_step(block, [(0, 0, len(block))], self.indent) or self.step

    def _rename(self, old_id: int, new_id: int) -> None:
        position = self._position(old_id)
        if position < 0:
            raise ValueError(f"no backend {old_id} to rename")
        if new_id == old_id:
            return
        if self._position(new_id) >= 0:
            raise ValueError(f"cannot rename backend {old_id} to {new_id}: {new_id} exists")
        match = _key_re(self.indent).match(self.text, self.entries[position][1])
        if match is None:  # pragma: no cover - the index says a key line starts there
            raise _Unavailable("no key line")
        start, end = match.span(1)
        digits = str(new_id)
        self._splice(start, end, digits, position + 1)
        _, key_start, entry_end = self.entries[position]
        self.entries[position] = (new_id, key_start, entry_end + len(digits) - (end - start))
        self.ids[position] = new_id
        self.resort = True
        definition = self.defs.pop(old_id, None)
        if definition is not None:
            self.defs[new_id] = dataclasses.replace(definition, id=new_id)
        if old_id in self.dirty:
            self.dirty.discard(old_id)
            self.dirty.add(new_id)

    def _delete(self, backend_id: int) -> None:
        position = self._position(backend_id)
        if position < 0:
            raise ValueError(f"no backend {backend_id} to delete")
        _, start, end = self.entries[position]
        # Its heading goes with it: the comment lines right above its key, at the key's indentation.
        floor = self.entries[position - 1][2] if position else self.body_start
        heading = " " * self.indent + "#"
        while start > floor:
            line_start = max(self.text.rfind("\n", floor, start - 1) + 1, floor)
            if not self.text.startswith(heading, line_start):
                break
            start = line_start
        self._splice(start, end, "", position + 1)
        del self.entries[position]
        del self.ids[position]
        self.defs.pop(backend_id, None)
        self.dirty.discard(backend_id)

    def _parse_entry(self, backend_id: int) -> BackendDef:
        """Validate the (new) block of `backend_id` on its own, exactly as the whole file would be."""
        _, start, end = self.entries[self._position(backend_id)]
        block = self.text[start:end]
        if not block.endswith("\n"):
            block += "\n"
        try:
            parsed, order = _parse(self.path, _WRAPPER + block, self.types)
        except FileInvalid as err:
            # Lines of the wrapped block -> lines of the file (line 2 of the block is its key line).
            shift = self.text.count("\n", 0, start) - 1
            raise FileInvalid([dataclasses.replace(p, line=max(1, p.line + shift)) for p in err.problems]) from None
        if order != [backend_id]:
            raise _Unavailable("the block did not parse as one entry")
        return parsed.backends[backend_id]
