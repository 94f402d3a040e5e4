"""The fast paths' map of a file: where each entry's lines begin and end (`_scan`, `_build_index`), for files
laid out the usual way -- and only where a line scan provably agrees with a YAML parser. Text only: no YAML.

Everything here is linear in the file's size and runs at C speed where it can (a 10,000-backend file is
about 3 MB): one regular expression finds every line indented as deep as the entries' keys or less, and the
checks for what the scan cannot follow (anchors, `|+`, odd line breaks) look for their trigger character
first and run their expression only when it is there."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class _Index:
    """Where each entry of a conventionally laid out file is (offsets into its text; see `_build_index`)."""

    indent: int  # the column of the entries' keys (> 0)
    step: int  # the indentation step inside an entry (for new entries)
    body_start: int  # just after the `backends:` line
    #: (id, start of its key line, end of its last content line), in file order.
    entries: tuple[tuple[int, int, int], ...]


# A YAML parser and a line scan agree on where an entry begins and ends only for files laid out the usual
# way. `_build_index` accepts a file only when nothing can make them disagree:
#
# * the head is comments, blank lines and at most a leading `---`, then `backends:` at column 0 (nothing
#   after it but a comment);
# * every line indented n columns or less (n > 0, the first key's indentation) is blank, a comment, or an
#   entry key `^ {n}DIGITS:` -- so no other top-level content, document marker or directive follows, and
#   every line of an entry's value is indented deeper than n (or is blank or a comment);
# * the keys found are exactly the ids the parser found, each once, in file order (a key-like line inside
#   a multi-line quoted scalar would show up as an extra id);
# * no anchor or alias (an edit of one entry could change another), no keep-chomping block scalar (`|+`
#   takes in the blank lines after it, which belong to the gap), no \r, NEL, U+2028/2029 (line breaks for
#   the parser, not for the scan) and no BOM.
#
# An entry then spans from its key line to its last line that is not a blank line or a comment indented n
# columns or less; such lines between entries (a heading like "  # a disabled one") belong to no entry.
#
# `_scan` applies these rules to a text alone (a reload has no parse to compare with: see `incremental`);
# `_build_index` also requires the ids it finds to be the ones a parse of the text found.

_UNSAFE_TEXT = re.compile("[\r\x85\u2028\u2029\ufeff]")
_ANCHOR_OR_ALIAS_MARK = re.compile(r"[&*](?=\S)")
_TAG_MARK = re.compile(r"!(?=\S)")
_KEEP_CHOMPING = re.compile(r"[|>](?:[0-9]?\+|\+[0-9]?)[ \t]*(?:#.*)?$", re.M)
_BACKENDS_LINE = re.compile(r"backends[ \t]*:[ \t]*(?:#.*)?")
_MARKER_LINE = re.compile(r"---[ \t]*(?:#.*)?")
_FIRST_KEY = re.compile(r"( +)[0-9]+[ \t]*:(?:[ \t]|$)")


@functools.lru_cache(maxsize=16)
def _key_re(indent: int) -> re.Pattern[str]:
    """An entry's key line at `indent`; group 1 is the id's digits."""
    return re.compile(rf"^ {{{indent}}}([0-9]+)[ \t]*:(?=[ \t]|$)", re.M)


@functools.lru_cache(maxsize=16)
def _shallow_re(indent: int) -> re.Pattern[str]:
    """A line indented `indent` columns or less that is neither blank nor a comment."""
    return re.compile(rf"^ {{0,{indent}}}[^ \n#]", re.M)


def _suspicious(text: str) -> bool:
    """Whether `text` holds something a line scan cannot follow: a line break other than \\n (or a BOM), a
    keep-chomping block scalar, an anchor or an alias. Each expression runs only when its trigger
    character is there at all (a plain 3 MB file is checked in about a millisecond)."""
    if text.isascii():
        if "\r" in text:
            return True
    elif _UNSAFE_TEXT.search(text):
        return True
    if "+" in text and _KEEP_CHOMPING.search(text):
        return True
    return ("&" in text or "*" in text) and _has_anchor_or_alias(text)


def _has_anchor_or_alias(text: str) -> bool:
    """Whether `text` may hold an anchor (`&name`) or an alias (`*name`): such a mark where a node can
    start -- at a line's start, after an indicator (`:` `?` `-` `,` `[` `{`) or after a tag, spaces between
    allowed. Not after any space: `cd x && y` in a command is no anchor. Errs on the safe side (a false
    positive only costs speed)."""
    return _has_node_mark(text, _ANCHOR_OR_ALIAS_MARK, after_tag=True)


def _has_tag(text: str) -> bool:
    """Whether `text` may hold a tag (`!!str`, `!local`) where a node can start (as for anchors: a `!` in
    the middle of a command's words is no tag). Errs on the safe side."""
    return "!" in text and _has_node_mark(text, _TAG_MARK, after_tag=False)


def _has_node_mark(text: str, mark: re.Pattern[str], *, after_tag: bool) -> bool:
    """Whether a match of `mark` stands where a node can start: at a line's start or after an indicator,
    spaces between allowed -- or, with `after_tag`, right after a tag."""
    for match in mark.finditer(text):
        before = match.start()
        while before and text[before - 1] in " \t":
            before -= 1
        if not before or text[before - 1] in "\n:?,[{-":
            return True
        if not after_tag:
            continue
        word_start = before
        while word_start and not text[word_start - 1].isspace():
            word_start -= 1
        if "!" in text[word_start:before]:
            return True
    return False


def _lines(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each line of text[start:end], without its newline."""
    while start < end:
        stop = text.find("\n", start, end)
        stop = end if stop < 0 else stop
        yield start, stop
        start = stop + 1


def _is_gap_line(line: str, indent: int) -> bool:
    """Blank or a comment, indented `indent` columns or less: a line between entries. (A line of more
    spaces may be a line of a block scalar: "  " at its end is part of `|-` text.)"""
    line = line.removesuffix("\n")
    body = line.lstrip(" ")
    return len(line) - len(body) <= indent and (not body or body.startswith("#"))


def _content_end(text: str, start: int, end: int, indent: int) -> int:
    """The end of the entry whose key line starts at `start` and whose region ends at `end`: just after its
    last line that is not a gap line."""
    deeper = " " * (indent + 1)
    while end > start:
        line_start = max(text.rfind("\n", start, end - 1) + 1, start)
        if text.startswith(deeper, line_start):
            break  # indented deeper than a gap line can be: content (the common case, decided without a copy)
        if not _is_gap_line(text[line_start:end], indent):
            break
        end = line_start
    return end


@functools.lru_cache(maxsize=16)
def _shallow_line_re(indent: int) -> re.Pattern[str]:
    """After a newline, a line indented `indent` columns or less that is neither blank nor a comment: group
    1 holds the id's digits when it is an entry's key line at exactly `indent`, else group 1 is None (a
    line the scan cannot place). Anchored on the newline, which the regex engine finds at C speed."""
    return re.compile(rf"\n(?: {{{indent}}}([0-9]+)[ \t]*:(?=[ \t\n]|\Z)| {{0,{indent}}}[^ \n#])")


def _scan(text: str) -> _Index | None:
    """Index the entries of `text` by the rules above, from the text alone, or None when the rules do not
    hold (or there is no entry). The ids found may repeat: the caller decides what a repeated id means."""
    if _suspicious(text):
        return None
    body_start = -1
    seen_content = False
    for start, stop in _lines(text, 0, len(text)):
        line = text[start:stop]
        body = line.strip()
        if not body or body.startswith("#"):
            continue
        if not seen_content and _MARKER_LINE.fullmatch(line):
            seen_content = True
            continue
        if not _BACKENDS_LINE.fullmatch(line):
            return None
        body_start = min(stop + 1, len(text))
        break
    if body_start < 0 or body_start >= len(text):
        return None
    indent = 0
    for start, stop in _lines(text, body_start, len(text)):
        line = text[start:stop]
        body = line.strip()
        if not body or body.startswith("#"):
            continue
        match = _FIRST_KEY.match(line)
        if match is None:
            return None
        indent = len(match.group(1))
        break
    if not indent:
        return None
    key_starts: list[int] = []
    ids: list[int] = []
    # body_start follows a newline: searching from that newline also sees the body's first line.
    for match in _shallow_line_re(indent).finditer(text, body_start - 1):
        digits = match.group(1)
        if digits is None or len(digits) > 30:
            return None
        key_starts.append(match.start() + 1)
        ids.append(int(digits))
    if not ids:
        return None
    bounds = key_starts[1:] + [len(text)]
    entries = tuple((backend_id, start, _content_end(text, start, bound, indent))
                    for backend_id, start, bound in zip(ids, key_starts, bounds, strict=True))
    return _Index(indent, _entry_step(text, entries, indent) or indent, body_start, entries)


def _build_index(text: str, order: Sequence[int]) -> _Index | None:
    """Index the entries of `text` (whose parse found the ids `order`, in file order), or None when the
    fast path must not edit it (see the rules above)."""
    if not order:
        return None
    index = _scan(text)
    if index is None:
        return None
    ids = [entry[0] for entry in index.entries]
    if ids != list(order) or len(set(ids)) != len(ids):
        return None
    return index


def _entry_step(text: str, entries: Sequence[tuple[int, int, int]], indent: int) -> int:
    """The indentation step inside entries: that of the first content line under a key (0: none seen)."""
    for _, start, end in entries:
        first_break = text.find("\n", start, end)
        if first_break < 0:
            continue
        for line_start, line_stop in _lines(text, first_break + 1, end):
            line = text[line_start:line_stop]
            body = line.lstrip(" ")
            if body.strip() and not body.startswith("#"):
                return len(line) - len(body) - indent
    return 0
