"""Editing a document node by node (`Editor`, the slow path, also used on one entry by the fast path):
only the nodes a change names change, each written in a style that holds its value exactly (`yaml_value`,
`_styled`), new keys appended without stealing the comments that follow (`_append`)."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import Any

from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import CommentMark
from ruamel.yaml.scalarstring import (
    DoubleQuotedScalarString,
    LiteralScalarString,
    PlainScalarString,
    SingleQuotedScalarString,
)
from ruamel.yaml.tokens import CommentToken

from swarmd.backends_file.changes import Change, DeleteBackend, RenameBackend, SetBackend
from swarmd.backends_file.roundtrip import _load_doc

#: Characters that must be written as escapes inside double quotes: a literal or plain scalar would carry
#: them raw, and YAML reads some of them as line breaks (or drops them: \r\n becomes \n).
_NEEDS_ESCAPES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff]")


def yaml_value(value: Any) -> Any:
    """A typed setting value as it should appear in the file (multi-line text as a literal block).

    The text is kept exactly: "A=1\\nB=2" is written `|-` (no final newline added). A value a literal
    block cannot hold exactly, or only with keep-chomping (`|+`, which ruamel follows with a document end
    marker), is written in double quotes (`_styled`).
    """
    if isinstance(value, str) and "\n" in value and _literal_ok(value):
        return LiteralScalarString(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # `stop_timeout: 7`, as a person writes it (decimals accept integers)
    return value


def _literal_ok(value: str) -> bool:
    return not _NEEDS_ESCAPES.search(value) and not value.endswith("\n\n") and value != "\n"


class Editor:
    """Edits the text of a valid backends file node by node; `render()` gives the new text.

    Only the nodes a change names change; everything else (comments, order, quoting) is rendered back as it
    was. The caller validates the result with `parse()` before writing it. Raises ValueError for a change
    that cannot apply (renaming or deleting an id that is not there, renaming onto one that is).
    """

    def __init__(self, path: str, text: str = "", *, indent: int | None = None) -> None:
        """Parse `text` round-trip (its indentation guessed, or `indent`). Raises FileInvalid."""
        self.path = path
        self._doc, self._yaml = _load_doc(path, text, indent)
        if self._doc is None:
            self._doc = CommentedMap()
        if self._doc.get("backends") is None:
            self._doc["backends"] = CommentedMap()

    @property
    def _backends(self) -> CommentedMap:
        return self._doc["backends"]

    def apply(self, change: Change) -> None:
        if isinstance(change, SetBackend):
            self.set_backend(change.id, type_id=change.type_id, title=change.title, enabled=change.enabled,
                             settings=change.settings)
        elif isinstance(change, RenameBackend):
            self.rename_backend(change.old_id, change.new_id)
        elif isinstance(change, DeleteBackend):
            self.delete_backend(change.id)
        else:
            raise TypeError(f"not a change: {type(change).__name__}")

    def set_backend(self, backend_id: int, *, type_id: str | None = None, title: str | None = None,
                    enabled: bool | None = None, settings: Mapping[str, Any] | None = None) -> None:
        """Create backend `backend_id` or change the named fields of it (settings merged key by key)."""
        entry = self._backends.get(backend_id)
        if entry is None:
            if not self._backends:
                self._backends.fa.set_block_style()  # `backends: {}` grows as blocks, not as one long line
            entry = CommentedMap()
            if self._backends.fa.flow_style():
                entry.fa.set_flow_style()  # it is written in flow style anyway: say so (see _styled)
            _append(self._backends, backend_id, entry)
        if type_id is not None:
            self._set(entry, "type", type_id)
        if title is not None:
            self._set(entry, "title", title)
        if enabled is not None:
            self._set(entry, "enabled", enabled)
        if settings:
            block = entry.get("settings")
            if not isinstance(block, CommentedMap):
                block = CommentedMap()
                if entry.fa.flow_style():
                    block.fa.set_flow_style()  # (as above)
                self._set(entry, "settings", block)
            for name, value in settings.items():
                self._set(block, name, yaml_value(value))

    def rename_backend(self, old_id: int, new_id: int) -> None:
        """Move backend `old_id` to key `new_id`, keeping its place in the file and its comments."""
        backends = self._backends
        if old_id not in backends:
            raise ValueError(f"no backend {old_id} to rename")
        if new_id == old_id:
            return
        if new_id in backends:
            raise ValueError(f"cannot rename backend {old_id} to {new_id}: {new_id} exists")
        position = list(backends).index(old_id)
        entry = backends[old_id]
        comment = backends.ca.items.pop(old_id, None)
        del backends[old_id]
        backends.insert(position, new_id, entry)
        if comment is not None:
            backends.ca.items[new_id] = comment

    def delete_backend(self, backend_id: int) -> None:
        if backend_id not in self._backends:
            raise ValueError(f"no backend {backend_id} to delete")
        del self._backends[backend_id]
        if not self._backends:
            self._backends.fa.set_flow_style()  # `backends: {}`: an empty block mapping renders invalid

    @staticmethod
    def _set(mapping: CommentedMap, key: str, value: Any) -> None:
        old = mapping.get(key, _MISSING)
        # Keep the node (and so its quoting style) when the value is the same.
        if old is not _MISSING and old == value and type(old) is type(value):
            return
        if isinstance(value, str):
            value = _styled(value, old, bool(mapping.fa.flow_style()))
        if old is _MISSING:
            _append(mapping, key, value)
        else:
            mapping[key] = value

    def render(self) -> str:
        stream = io.StringIO()
        self._yaml.dump(self._doc, stream)
        return stream.getvalue()


_MISSING = object()


def _styled(value: str, old: Any, in_flow: bool) -> str:
    """The node a new or changed text is written as: the style of the node it replaces where that style
    can hold it exactly, never one that cannot.

    Always an explicit type: ruamel gives a plain `str` the style of the node it replaces, which writes
    "" as an empty `|` block (that then swallows the comment after it) or "x\\n\\n" as `>+`.
    """
    if _NEEDS_ESCAPES.search(value) or isinstance(old, DoubleQuotedScalarString):
        return DoubleQuotedScalarString(value)  # the only style that escapes
    if "\n" in value:
        if in_flow or not _literal_ok(value):
            return DoubleQuotedScalarString(value)
        return LiteralScalarString(value)
    if isinstance(old, SingleQuotedScalarString):
        return SingleQuotedScalarString(value)
    if in_flow and value[:1] in ("?", ":"):
        return SingleQuotedScalarString(value)  # ruamel would write `{cwd: ? x}`: not YAML
    return PlainScalarString(value)  # plain where it can be, quoted by ruamel where it cannot


def _append(mapping: CommentedMap, key: Any, value: Any) -> None:
    """Add `key` at the end of `mapping`, keeping the comment lines that followed the old last entry
    after the new one.

    ruamel attaches a comment block to the node *before* it (DESIGN.md: "a comment above a key belongs to
    the previous node"), so a plain append would slide the new entry under the comment that introduced
    whatever comes after this mapping (the next backend's heading, say).
    """
    moved = None
    holder = _last_holder(mapping)
    if holder is not None:
        node, last = holder
        token = node.ca.items.get(last, [None] * 4)
        comment = token[2] if len(token) > 2 else None
        if comment is not None and "\n" in comment.value.rstrip("\n"):
            eol, _, rest = comment.value.partition("\n")
            comment.value = eol + "\n"
            moved = "\n" + rest
    mapping[key] = value
    if moved is not None:
        target = _last_holder(mapping)
        if target is not None:
            node, last = target
            items = node.ca.items.setdefault(last, [None, None, None, None])
            items[2] = CommentToken(moved, CommentMark(0), None)


def _last_holder(mapping: CommentedMap) -> tuple[CommentedMap, Any] | None:
    """The (mapping, key) of the deepest last entry of a block mapping: where ruamel keeps the comment
    lines that follow the mapping."""
    node: Any = mapping
    while isinstance(node, CommentedMap) and len(node):
        key = list(node)[-1]
        value = node[key]
        if isinstance(value, CommentedMap) and len(value) and not value.fa.flow_style():
            node = value
            continue
        return node, key
    return None
