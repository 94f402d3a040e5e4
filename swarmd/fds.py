"""A reader of FreneticDataSyntax (FDS), the format of SwarmUI's `Data/Backends.fds`.

The format, as FreneticUtilities reads it (FDSParser/FDSUtility) and swarmui-logs.md describes it:

* UTF-8 text (a leading byte-order mark is ignored), any line ending (`\\r\\n`, `\\n`, a lone `\\r`). Every
  tab counts as 4 spaces, wherever it is (FDS replaces them before it parses).
* `key: value` sets a text value; `key= BASE64` a binary one; `key:` with nothing after it opens a section
  whose lines follow, indented deeper than the key (by any number of spaces, the same for all of them). A
  `key:` followed by nothing deeper is an empty section: SwarmUI writes an empty text that way (older FDS)
  or as `key: \\x` (newer).
* A list is `key:` followed by lines `- value` (text) or `= BASE64` (binary) at the key's own indentation.
  FDS's complex list entries (`> ...`) are not supported: no SwarmUI backend file has them.
* A line whose first non-blank character is `#` is a comment; blank lines are ignored.
* The key ends at the first `:` or `=` (spaces before it are part of the key, as in FDS); the spaces after
  the separator are not part of the value. Escapes, in keys and values alike: `\\n` newline, `\\r`, `\\t` tab, `\\\\` and `\\s` backslash
  (`\\s` is what FDS itself writes), `\\d` dot, `\\c` colon, `\\e` equals, `\\x` nothing (it guards
  leading and trailing spaces); any other backslash is kept as it is. Quotes mean nothing.
* Values are text. FDS reads a text as a number or a boolean only where that reading gives the very same
  text back (`read_int`, `read_number`, `read_bool`, `interpret`): `3.5` is a number, `3.50`, `007`,
  `+1` and `1e5` stay text, `true`/`false` are booleans and `True` is text.

Stricter than FDS in one way, because a reader that guesses loses data without a word: a key given twice in
one section is an error (FDS keeps the last one). Every error is an `FdsError` whose text is
`FILE:LINE: message` (1-based lines, counted after line endings are unified).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

#: The text FDS's escapes stand for, by the letter after the backslash.
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "s": "\\", "d": ".", "c": ":", "e": "=", "x": ""}
_INT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)")
_NUMBER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:E[+-][0-9]+)?")
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


class FdsError(ValueError):
    """An FDS file that cannot be read. `str(err)` is `FILE:LINE: message`."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path, self.line, self.message = path, line, message
        super().__init__(f"{path}:{line}: {message}")


@dataclass(frozen=True)
class Text:
    """A text value (escapes already undone), and the line it is on."""

    text: str
    line: int

    def interpret(self) -> int | float | bool | str:
        return interpret(self.text)


@dataclass(frozen=True)
class Binary:
    """A binary value (`key= BASE64`, `= BASE64` in a list)."""

    data: bytes
    line: int


@dataclass(frozen=True)
class FdsList:
    """A list: its entries in order, and the line of its key."""

    items: tuple[Text | Binary, ...]
    line: int


@dataclass
class Section:
    """A section: its entries by key, in file order, and the line of its key (1 for the file itself).

    Reads like a read-only mapping: `section["type"]`, `.get()`, `in`, iteration over the keys, `.items()`.
    """

    line: int
    entries: dict[str, Node] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Node:
        return self.entries[key]

    def get(self, key: str, default: Node | None = None) -> Node | None:
        return self.entries.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def items(self) -> Iterator[tuple[str, Node]]:
        return iter(self.entries.items())

    def to_plain(self) -> dict[str, object]:
        """The section as plain Python (texts as str, binaries as bytes, lists as lists), for tests and
        debugging."""
        return {key: _plain(value) for key, value in self.entries.items()}


#: What a key holds.
Node = Text | Binary | FdsList | Section


def _plain(node: Node) -> object:
    if isinstance(node, Text):
        return node.text
    if isinstance(node, Binary):
        return node.data
    if isinstance(node, FdsList):
        return [_plain(item) for item in node.items]
    return node.to_plain()


# -- reading values the way FDS does --------------------------------------------------------------------


def unescape(text: str) -> str:
    """FDS's escapes undone (see the module docstring); a backslash before anything else is kept."""
    if "\\" not in text:
        return text
    out = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPES:
            out.append(_ESCAPES[text[i + 1]])
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def read_int(text: str) -> int | None:
    """The integer `text` is, when FDS reads it as one (a 64-bit integer written exactly as .NET writes it:
    `12`, `-3`; not `012`, `+3`, ` 3` or `1.0`); else None."""
    if _INT_RE.fullmatch(text) is None or len(text) > 20 or text == "-0":
        return None
    value = int(text)
    return value if _LONG_MIN <= value <= _LONG_MAX else None


def read_number(text: str) -> int | float | None:
    """The number `text` is, when FDS reads it as one: an integer as `read_int`, or a double whose .NET
    text is exactly `text` (`3.5`, `0.25`, `1E+20`; not `3.50`, `.5`, `1e5` or `100.0`); else None."""
    integer = read_int(text)
    if integer is not None:
        return integer
    if _NUMBER_RE.fullmatch(text) is None or len(text) > 40:
        return None
    value = float(text)
    return value if math.isfinite(value) and _dotnet_double_text(value) == text else None


def read_bool(text: str) -> bool | None:
    """True for `true`, False for `false` (exactly: FDS writes booleans so); else None."""
    return {"true": True, "false": False}.get(text)


def interpret(text: str) -> int | float | bool | str:
    """The value FDS reads `text` as: an integer, a number, a boolean, or the text itself."""
    number = read_number(text)
    if number is not None:
        return number
    boolean = read_bool(text)
    return text if boolean is None else boolean


def _dotnet_double_text(value: float) -> str:
    """`value.ToString()` in .NET (Core 3.0 and later, invariant culture): the shortest digits that read back
    as `value`, in fixed notation when the decimal exponent is above -5 and below 15, else as `1.5E+20`."""
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits)).rstrip("0") or "0"
    exponent += len(digits) - len(text)  # the zeros stripped
    point = len(text) + exponent  # the decimal exponent of the first digit, plus one
    if -5 < point - 1 < 15:
        if point <= 0:
            shown = "0." + "0" * -point + text
        elif point >= len(text):
            shown = text + "0" * (point - len(text))
        else:
            shown = text[:point] + "." + text[point:]
    else:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        shown = f"{mantissa}E{'+' if point - 1 >= 0 else '-'}{abs(point - 1):02d}"
    return ("-" if sign else "") + shown


# -- reading a file ---------------------------------------------------------------------------------------


def load(path: str) -> Section:
    """Read and parse the FDS file at `path`. Raises FdsError (a missing or unreadable file too: line 1)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise FdsError(path, 1, f"cannot read: {err.strerror or err}") from None
    return loads(data, path)


def loads(data: bytes | str, path: str = "<fds>") -> Section:
    """Parse FDS text (bytes are decoded as UTF-8). Raises FdsError."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = len(_split_lines(data[:err.start].decode("utf-8")))
            raise FdsError(path, line, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    else:
        text = data
    text = text.removeprefix("\ufeff")
    return _Parser(path, _split_lines(text)).parse()


def _split_lines(text: str) -> list[str]:
    """The lines of `text`, whatever its line endings, each tab already 4 spaces."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ").split("\n")


class _Parser:
    def __init__(self, path: str, lines: list[str]) -> None:
        self.path = path
        self.lines = lines
        self.pos = 0  # the index of the next line to read

    def error(self, index: int, message: str) -> FdsError:
        return FdsError(self.path, index + 1, message)

    def parse(self) -> Section:
        root = Section(1)
        self.section(root, 0, [0])
        if self.pos < len(self.lines):  # (section() stops only at a shallower line: none is shallower than 0)
            raise self.error(self.pos, "unexpected line")
        return root

    def peek(self) -> tuple[int, str] | None:
        """The next line that is neither blank nor a comment, from `pos` (which moves past those): its
        indentation and its content without the indentation or trailing spaces; None at the end."""
        while self.pos < len(self.lines):
            line = self.lines[self.pos]
            content = line.strip(" ")
            if content and not content.startswith("#"):
                return len(line) - len(line.lstrip(" ")), content
            self.pos += 1
        return None

    def section(self, section: Section, indent: int, open_indents: list[int]) -> None:
        """Read the entries of `section`, each at `indent` spaces, until a line indented less."""
        while (next_line := self.peek()) is not None:
            spaces, content = next_line
            index = self.pos
            if spaces < indent:
                if spaces not in open_indents:
                    raise self.error(index, f"indented {spaces} spaces, which matches no enclosing section "
                                     f"(those are indented {_indents(open_indents)}): spaces and tabs mixed?")
                return
            if spaces > indent:
                raise self.error(index, f"indented {spaces} spaces where {indent} were expected (deeper than "
                                 "the lines before it, under no 'key:'): a key missing, or spaces and tabs "
                                 "mixed?")
            if content[0] in "-=>":
                raise self.error(index, f"a list entry ({content[0]!r}) without a 'key:' line just above it, "
                                 "at the same indentation")
            match = re.search("[:=]", content)
            if match is None:
                raise self.error(index, f"expected 'key: value', 'key:' or a '# comment', got {_shown(content)}")
            raw_key, separator = content[:match.start()], match.group()
            if not raw_key:
                raise self.error(index, "empty key (write '\\x' for a key that is empty on purpose)")
            key = unescape(raw_key)
            if key in section.entries:
                raise self.error(index, f"key {_shown(key)} given twice in one section (first at line "
                                 f"{_line_of(section.entries[key])})")
            rest = content[match.end():].lstrip(" ")
            self.pos += 1
            if rest:
                node: Node = self.value(separator, rest, index)
            elif separator == "=":
                raise self.error(index, "nothing after '=' (binary data, as base64, goes on the same line)")
            else:
                node = self.child(index, indent, open_indents)
            section.entries[key] = node

    def child(self, key_index: int, indent: int, open_indents: list[int]) -> Section | FdsList:
        """What a `key:` line at `indent` opens: a deeper section, a list at its own indentation, or an
        empty section when neither follows."""
        next_line = self.peek()
        if next_line is not None:
            spaces, content = next_line
            if spaces > indent and content[0] in "-=>":
                raise self.error(self.pos, f"a list entry indented {spaces} spaces under a key indented "
                                 f"{indent}: list entries go at their key's own indentation")
            if spaces > indent:
                sub = Section(key_index + 1)
                self.section(sub, spaces, [*open_indents, spaces])
                return sub
            if spaces == indent and content[0] in "-=>":
                return self.list(key_index, indent, open_indents)
        return Section(key_index + 1)

    def list(self, key_index: int, indent: int, open_indents: list[int]) -> FdsList:
        items: list[Text | Binary] = []
        while (next_line := self.peek()) is not None:
            spaces, content = next_line
            index = self.pos
            if spaces < indent or (spaces == indent and content[0] not in "-=>"):
                break
            if spaces > indent:
                raise self.error(index, f"indented {spaces} spaces inside a list whose entries are indented "
                                 f"{indent}: a key missing, or spaces and tabs mixed?")
            if content[0] == ">":
                raise self.error(index, "complex list entries ('>') are not supported")
            self.pos += 1
            items.append(self.value("=" if content[0] == "=" else ":", content[1:].lstrip(" "), index))
        return FdsList(tuple(items), key_index + 1)

    def value(self, separator: str, raw: str, index: int) -> Text | Binary:
        text = unescape(raw)
        if separator == ":":
            return Text(text, index + 1)
        try:
            return Binary(base64.b64decode(text.strip(), validate=True), index + 1)
        except (binascii.Error, ValueError) as err:
            raise self.error(index, f"invalid base64 after '=' ({err})") from None


def _line_of(node: Node) -> int:
    return node.line


def _indents(indents: list[int]) -> str:
    shown = [str(i) for i in indents]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:57] + "...")
