"""The incremental reload: a new version of the file parsed entry by entry, reusing the definitions of the
entries whose text did not change (`reparse`).

Theory of operation
-------------------
A reload at 10,000 backends must not parse 3 MB of YAML to find the one entry a person changed. When the
new text keeps the usual layout (`index`: `backends:`, then one block per id at a fixed indentation, no
anchor, alias, tag, `|+`, odd line break or BOM anywhere), the line scan (`_scan`) cuts it into entries
without a YAML parser, and each entry is a document of its own: what it means depends on its own lines
only. So

* an entry whose lines are, byte for byte, those of the same id in the previous version (itself read or
  written through the same rules) keeps its previous definition -- the very same object, which `plan`
  also passes over at once;
* the other entries are parsed, `BATCH` at a time as files of just those entries, by the same C loader
  and the same validation as a whole-file parse; the machine checks (users, groups) are asked again for
  the reused ones too, as a whole-file parse would.

The first load has no previous version: every entry is "changed", and the file is read batch by batch
the same way -- for memory, not speed (see `BATCH`).

Anything else takes the whole-file parse (`parser._parse`), which stays the reference: a text the scan
cannot index, a repeated id, a changed entry that does not parse
or validate, or parses as anything but the one entry its key line says. The errors a person sees always
come from that whole-file parse, so they are the same and located the same way (FILE:LINE:COL of the
real file) whichever way a reload went.

Why the result equals a whole-file parse (what tests/unit/test_incremental_reload.py checks on random
files): under the layout rules every line indented as deep as the entries' keys or less is blank, a
comment or a key line, and no scalar or collection in block context goes on past such a key line; a
quoted scalar or a flow collection that did would leave the entry before it unterminated, and that
entry would then fail to parse on its own (fall back). Blank and comment lines between entries mean
nothing to YAML, except after a `|+` block scalar, which the rules exclude. With no anchor, alias, tag
or directive, nothing in one entry refers to another, so the meaning of an entry is a function of its
own text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from swarmd.backends_file.index import _has_tag, _scan
from swarmd.backends_file.model import BackendDef, BackendsFile
from swarmd.backends_file.parser import MACHINE_CHECKS, _Answers, _fast_yaml, _machine_check, _validate
from swarmd.types import BackendType

_WRAPPER = "backends:\n"
#: Changed entries are parsed this many at a time. A first load parses every entry, and a parse builds
#: the loader's whole node graph before the definitions are made (~10 MB for 1000 entries): the
#: definitions kept are allocated in among that garbage, so its memory was never handed back and stayed
#: in the daemon's RSS for good. Batch by batch, the next batch reuses the last one's garbage: +3 MB in
#: all, and no slower (measured at 1000 entries: 0.13 s, the whole-file parse 0.15 s).
BATCH = 32


def reparse(path: str, data: bytes, previous: BackendsFile | None,
            types: Mapping[str, BackendType]) -> BackendsFile | None:
    """`data` read as a backends file on top of `previous` (the version last read or written), reusing the
    definitions of the entries whose text did not change (without `previous`, or one without an index:
    none); None when it must be read by a whole-file parse instead (see the module docstring). What it returns equals what that parse gives -- the definitions,
    and the index `_build_index` would make. Blocks (the machine checks); raises nothing.
    """
    if previous is not None and previous._index is None:
        previous = None  # nothing to reuse: every entry is parsed
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    index = _scan(text)
    if index is None or _has_tag(text):
        return None
    entries = index.entries
    if len({entry[0] for entry in entries}) != len(entries):
        return None  # a repeated id: the whole-file parse says where
    reused, changed = _split(text, entries, previous)
    answers: _Answers = {}
    parsed: dict[int, BackendDef] = {}
    if changed:
        parsed_or_none = _parse_changed(path, changed, types, answers)
        if parsed_or_none is None:
            return None
        parsed = parsed_or_none
    if not _still_valid_here(reused.values(), answers):
        return None
    backends = {backend_id: reused[backend_id] if backend_id in reused else parsed[backend_id]
                for backend_id, _, _ in entries}
    if any(a[0] > b[0] for a, b in zip(entries, entries[1:], strict=False)):  # file order is not id order
        backends = dict(sorted(backends.items()))
    return BackendsFile(path, text, MappingProxyType(backends), index)


def _split(text: str, entries: tuple[tuple[int, int, int], ...], previous: BackendsFile | None
           ) -> tuple[dict[int, BackendDef], list[tuple[int, str]]]:
    """(definitions of the entries of `text` that are unchanged since `previous`, by id in file order;
    [(id, text) of each other entry], in file order). Without `previous` every entry is new."""
    if previous is None:
        return {}, [(backend_id, text[start:end]) for backend_id, start, end in entries]
    assert previous._index is not None
    before_text, before = previous.text, previous._index.entries
    before_defs = previous.backends
    spans: dict[int, tuple[int, int]] | None = None
    reused: dict[int, BackendDef] = {}
    changed: list[tuple[int, str]] = []
    for position, (backend_id, start, end) in enumerate(entries):
        # The entry at the same place in the previous version, else (entries added or removed before it)
        # the one with its id.
        if position < len(before) and before[position][0] == backend_id:
            _, old_start, old_end = before[position]
        else:
            if spans is None:
                spans = {old_id: (old_start, old_end) for old_id, old_start, old_end in before}
            old_start, old_end = spans.get(backend_id, (0, -1))
        block = text[start:end]
        definition = before_defs.get(backend_id)
        if (definition is not None and old_end - old_start == end - start
                and before_text[old_start:old_end] == block):
            reused[backend_id] = definition
        else:
            changed.append((backend_id, block))
    return reused, changed


def _parse_changed(path: str, changed: list[tuple[int, str]], types: Mapping[str, BackendType],
                   answers: _Answers) -> dict[int, BackendDef] | None:
    """The definitions of the `changed` entries, parsed together as a file of just those entries and
    validated as a whole-file parse validates them; None when they do not parse, do not validate, or do
    not come out as exactly those ids."""
    # Joined as they are: only the file's last entry can lack a final newline, and it comes last here
    # too. Adding one would change its meaning (`env: |` then "A=1" at the end of the file is "A=1"
    # without a newline; followed by one, "A=1\n").
    parsed: dict[int, BackendDef] = {}
    for first in range(0, len(changed), BATCH):
        batch = changed[first:first + BATCH]
        document = _WRAPPER + "".join(block for _, block in batch)
        try:
            plain = _fast_yaml().load(document)
        except Exception:
            return None
        backends, order, problems = _validate(path, plain, types, answers)
        if problems or order != [backend_id for backend_id, _ in batch]:
            return None
        parsed.update(backends)
    return parsed


def _still_valid_here(definitions: Iterable[BackendDef], answers: _Answers) -> bool:
    """Whether the machine checks (`parser.MACHINE_CHECKS`: users, groups) still pass for the settings of
    the reused `definitions`, as a whole-file parse would ask them again. Each (setting, value) is asked
    once (`answers`)."""
    for definition in definitions:
        settings = definition.settings
        for name in MACHINE_CHECKS:
            value = settings.get(name)
            if value and _machine_check(name, value, answers) is not None:
                return False
    return True

