"""The backends file: load and validate it with located errors, edit it round-trip, write it atomically.

Theory of operation
-------------------
People edit this file by hand and the daemon writes it back after every API mutation, so both directions
must be trustworthy:

* `parse()` reads YAML 1.2 round-trip (ruamel), validates every backend against its type's schema and
  collects *all* problems as `Problem(path, line, col, message)` (1-based), raising `FileInvalid` when there
  is any. A valid file becomes a `BackendsFile`: the text, its digest, and one frozen `BackendDef` per id.
* Edits never patch the live document: `Editor` re-parses the last known text, changes only the nodes that
  must change, and renders the whole document again with the file's own indentation, so comments, key
  order and quoting of untouched lines come back byte-for-byte.
* `atomic_write()` writes a temp file in the same directory, keeps the old mode and owner, fsyncs, renames
  over the target, and fsyncs the directory. A failure leaves the old file intact; the temp file is removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import CommentMark, MarkedYAMLError
from ruamel.yaml.resolver import VersionedResolver
from ruamel.yaml.scalarstring import LiteralScalarString
from ruamel.yaml.tokens import CommentToken
from ruamel.yaml.util import load_yaml_guess_indent

from swarmd.settings import SettingError
from swarmd.types import TYPES, BackendType

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


@dataclass(frozen=True)
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
    """A valid backends file as read: its text (the base for the next edit), digest and backends."""

    path: str
    text: str
    digest: str
    backends: Mapping[int, BackendDef]


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- reading ---------------------------------------------------------------------------------------------


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long command line
    yaml.allow_duplicate_keys = False
    return yaml


def _load_doc(path: str, text: str) -> tuple[Any, YAML]:
    """Parse `text` round-trip with a YAML configured to render it back the way it was indented.

    Raises FileInvalid for a syntax error (with its location).
    """
    yaml = _yaml()
    try:
        if text.strip():
            _, indent, block_seq_indent = load_yaml_guess_indent(text)
            indent = indent or 2
            yaml.indent(mapping=indent, sequence=indent + (block_seq_indent or 0), offset=block_seq_indent or 0)
        doc = yaml.load(text)
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = err.problem or err.context or "invalid YAML"
        raise FileInvalid([Problem(path, line, col, f"YAML syntax: {what}")]) from None
    except Exception as err:  # ruamel raises a few unmarked errors (e.g. bad unicode)
        raise FileInvalid([Problem(path, 1, 1, f"YAML syntax: {err}")]) from None
    if text.lstrip().startswith("---"):
        yaml.explicit_start = True
    return doc, yaml


def read(path: str) -> BackendsFile:
    """Read and validate the file at `path`. A missing file is an empty fleet (it is created on the first
    mutation). Raises FileInvalid, or OSError when the file exists but cannot be read."""
    return read_document(path)[0]


def read_document(path: str) -> tuple[BackendsFile, Document]:
    """`read`, also returning the round-trip document. Raises FileInvalid or OSError."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        data = b""
    return parse_document(path, data)


def parse(path: str, data: bytes | str, types: Mapping[str, BackendType] = TYPES) -> BackendsFile:
    """Validate `data` as a backends file. Raises FileInvalid with every problem found."""
    return parse_document(path, data, types)[0]


@dataclass
class Document:
    """A parsed round-trip document and the YAML instance that renders it back the way it was written.

    Parsing round-trip YAML is the slow part of a mutation (ruamel: ~5,000 lines a second), so the Fleet
    keeps the document of the text it last read or wrote and edits that, instead of parsing again.
    """

    doc: Any
    yaml: YAML


def parse_document(path: str, data: bytes | str,
                   types: Mapping[str, BackendType] = TYPES) -> tuple[BackendsFile, Document | None]:
    """`parse`, also returning the round-trip document when it was made (None: an Editor parses the
    text when it needs it). Raises FileInvalid.

    A valid file -- the common case, at start and on every reload -- is read with the C-accelerated safe
    loader (YAML 1.2 too, about 5x faster). Only when that finds a problem is the file read again
    round-trip, for the line and column of each problem.
    """
    raw = data.encode() if isinstance(data, str) else data
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FileInvalid([Problem(path, 1, 1, f"not UTF-8 text ({err.reason} at byte {err.start})")]) from None
    try:
        plain = _fast_yaml().load(text)
    except Exception:
        plain = _INVALID
    if plain is not _INVALID:
        backends, problems = _validate(path, plain, types)
        if not problems:
            return BackendsFile(path, text, digest_of(raw), MappingProxyType(backends)), None
    doc, yaml = _load_doc(path, text)
    backends, problems = _validate(path, doc, types)
    if problems:
        raise FileInvalid(problems)
    return BackendsFile(path, text, digest_of(raw), MappingProxyType(backends)), Document(doc, yaml)


_INVALID = object()


class _Yaml12Resolver(VersionedResolver):
    """ruamel's resolver, fixed to YAML 1.2. Under the C loader, the stock one looks the version up
    through a missing scanner attribute for every scalar -- an exception each time, a third of a
    reload's time at 1000 backends (py-spy). Backends files are YAML 1.2 whatever they declare."""

    processing_version = (1, 2)


def _fast_yaml() -> YAML:
    yaml = YAML(typ="safe", pure=False)
    yaml.Resolver = _Yaml12Resolver
    yaml.allow_duplicate_keys = False
    return yaml


def _validate(path: str, doc: Any, types: Mapping[str, BackendType]) -> tuple[dict[int, BackendDef],
                                                                               list[Problem]]:
    """Check a loaded document (round-trip or plain). Positions are exact for round-trip documents."""
    problems: list[Problem] = []
    backends: dict[int, BackendDef] = {}
    if doc is None:
        return backends, problems
    if not isinstance(doc, Mapping):
        return backends, [Problem(path, 1, 1, "expected a mapping with a 'backends:' key at the top")]
    for key in doc:
        if key != "backends":
            line, col = key_position(doc, key)
            problems.append(Problem(path, line, col, f"unknown top-level key {key!r} (expected 'backends')"))
    entries = doc.get("backends")
    if entries is None:
        entries = {}
    elif not isinstance(entries, Mapping):
        line, col = value_position(doc, "backends")
        problems.append(Problem(path, line, col, "backends: expected a mapping of backend id to backend"))
        entries = {}
    for key, entry in entries.items():
        # Positions are looked up only for problems: on the fast path (no positions) each look-up fails
        # slowly, and a valid file has no problem to place.
        if isinstance(key, bool) or not isinstance(key, int) or key < 0:
            problems.append(Problem(path, *key_position(entries, key),
                                    f"backend id {key!r}: expected a non-negative integer"))
            continue
        backend, found = _parse_backend(path, key, entry, lambda e=entries, k=key: key_position(e, k), types)
        problems.extend(found)
        if backend is not None:
            backends[key] = backend
    return dict(sorted(backends.items())), problems


def _parse_backend(path: str, backend_id: int, entry: Any, at: Callable[[], tuple[int, int]],
                   types: Mapping[str, BackendType]) -> tuple[BackendDef | None, list[Problem]]:
    where = f"backends.{backend_id}"
    if not isinstance(entry, Mapping):
        return None, [Problem(path, *at(), f"{where}: expected a mapping with type, title, enabled, settings")]
    problems: list[Problem] = []

    def problem(key: Any, message: str, *, value: bool = False) -> None:
        line, col = value_position(entry, key) if value else key_position(entry, key)
        problems.append(Problem(path, line, col, message))

    for key in entry:
        if key not in BACKEND_KEYS:
            problem(key, f"{where}: unknown key {key!r} (expected one of {', '.join(BACKEND_KEYS)})")
    type_id = entry.get("type")
    backend_type = types.get(type_id) if isinstance(type_id, str) else None
    if "type" not in entry:
        problems.append(Problem(path, *at(), f"{where}: missing 'type' (one of {', '.join(sorted(types))})"))
    elif backend_type is None:
        problem("type", f"{where}.type: unknown backend type {type_id!r} (known: {', '.join(sorted(types))})",
                value=True)
    title = entry.get("title", "")
    if title is None:
        title = ""
    if isinstance(title, bool) or not isinstance(title, str | int | float):
        problem("title", f"{where}.title: expected text", value=True)
        title = ""
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        hint = " (YAML 1.2 reads it as a string: write true or false)" if isinstance(enabled, str) else ""
        problem("enabled", f"{where}.enabled: expected true or false, got {enabled!r}{hint}", value=True)
        enabled = True
    raw_settings = entry.get("settings")
    settings: dict[str, Any] = {}
    if raw_settings is not None and not isinstance(raw_settings, Mapping):
        problem("settings", f"{where}.settings: expected a mapping of setting name to value", value=True)
        raw_settings = None
    if backend_type is not None:
        settings = backend_type.defaults()
        for name, value in (raw_settings or {}).items():
            spec = backend_type.spec(name) if isinstance(name, str) else None
            if spec is None:
                known = ", ".join(s.name for s in backend_type.settings)
                problems.append(Problem(path, *key_position(raw_settings, name), f"settings.{name}: unknown "
                                        f"setting for type "
                                        f"{backend_type.id!r} (known: {known})"))
                continue
            try:
                settings[name] = spec.from_file(value)
            except SettingError as err:
                problems.append(Problem(path, *key_position(raw_settings, name), f"settings.{name}: {err}"))
    if problems or backend_type is None:
        return None, problems
    return BackendDef(backend_id, backend_type.id, str(title), enabled, settings), []


def key_position(node: Any, key: Any) -> tuple[int, int]:
    """The 1-based (line, col) of `key` in a round-trip mapping (of the mapping itself if unknown)."""
    try:
        line, col = node.lc.key(key)
        return line + 1, col + 1
    except Exception:
        return node_position(node)


def value_position(node: Any, key: Any) -> tuple[int, int]:
    """The 1-based (line, col) of the value of `key` (of the key if unknown)."""
    try:
        line, col = node.lc.value(key)
        return line + 1, col + 1
    except Exception:
        return key_position(node, key)


def node_position(node: Any) -> tuple[int, int]:
    try:
        return node.lc.line + 1, node.lc.col + 1
    except Exception:
        return 1, 1


# -- editing ---------------------------------------------------------------------------------------------


def yaml_value(value: Any) -> Any:
    """A typed setting value as it should appear in the file (multi-line text as a literal block)."""
    if isinstance(value, str) and "\n" in value:
        return LiteralScalarString(value if value.endswith("\n") else value + "\n")
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # `stop_timeout: 7`, as a person writes it (decimals accept integers)
    return value


class Editor:
    """Edits the text of a valid backends file node by node; `render()` gives the new text.

    Only the nodes a mutation names change; everything else (comments, order, quoting) is rendered back
    as it was. The caller validates the result with `parse()` before writing it.
    """

    def __init__(self, path: str, text: str = "", document: Document | None = None) -> None:
        """Edit `document` in place when given (it must be the parse of `text`), else parse `text`."""
        self.path = path
        if document is not None:
            self._doc, self._yaml = document.doc, document.yaml
        else:
            self._doc, self._yaml = _load_doc(path, text)
        if self._doc is None:
            self._doc = CommentedMap()
        if self._doc.get("backends") is None:
            self._doc["backends"] = CommentedMap()

    @property
    def _backends(self) -> CommentedMap:
        return self._doc["backends"]

    def set_backend(self, backend_id: int, *, type_id: str | None = None, title: str | None = None,
                    enabled: bool | None = None, settings: Mapping[str, Any] | None = None) -> None:
        """Create backend `backend_id` or change the named fields of it (settings merged key by key)."""
        entry = self._backends.get(backend_id)
        if entry is None:
            entry = CommentedMap()
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
                self._set(entry, "settings", block)
            for name, value in settings.items():
                self._set(block, name, yaml_value(value))

    def rename_backend(self, old_id: int, new_id: int) -> None:
        """Move backend `old_id` to key `new_id`, keeping its place in the file and its comments."""
        backends = self._backends
        position = list(backends).index(old_id)
        entry = backends[old_id]
        comment = backends.ca.items.pop(old_id, None)
        del backends[old_id]
        backends.insert(position, new_id, entry)
        if comment is not None:
            backends.ca.items[new_id] = comment

    def delete_backend(self, backend_id: int) -> None:
        if backend_id in self._backends:
            del self._backends[backend_id]

    @staticmethod
    def _set(mapping: CommentedMap, key: str, value: Any) -> None:
        old = mapping.get(key, _MISSING)
        # Keep the node (and so its quoting style) when the value is the same.
        if old is not _MISSING and old == value and type(old) is type(value):
            return
        if old is not _MISSING and isinstance(old, str) and isinstance(value, str) and not isinstance(
                value, LiteralScalarString) and type(old) is not str and "\n" not in value:
            # Same quoting style as before for a changed string (ruamel keeps the style on the type).
            value = type(old)(value)
        if old is _MISSING:
            _append(mapping, key, value)
        else:
            mapping[key] = value

    def render(self) -> str:
        stream = io.StringIO()
        self._yaml.dump(self._doc, stream)
        return stream.getvalue()

    @property
    def document(self) -> Document:
        """The edited document (matches `render()`)."""
        return Document(self._doc, self._yaml)


_MISSING = object()


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


# -- writing ---------------------------------------------------------------------------------------------


class Conflict(Exception):
    """The file changed on disk after it was last read: the write was not made (theirs is kept)."""


def atomic_write(path: str, text: str, expect_digest: str | None = None) -> None:
    """Replace the file at `path` with `text`, atomically and durably.

    A symlink at `path` is kept: its target is replaced. The old mode and owner are kept (new files get
    0644 under the umask). With `expect_digest`, the write is a compare-and-swap: when the file no longer
    has that content (a person saved it meanwhile), it is left as they saved it and `Conflict` is raised.
    Raises OSError; on failure the old file is untouched and no temp file is left.
    """
    target = os.path.realpath(path)
    directory = os.path.dirname(target) or "."
    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    if old is not None and (not os.access(target, os.W_OK) or not old.st_mode & 0o222):
        # os.replace would succeed in a writable directory even though the file itself is read-only (and
        # root may write anything): a person who made the file read-only meant "do not change it".
        raise PermissionError(13, "Permission denied (the file is read-only)", path)
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".swarmd-tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            if old is not None:
                os.fchmod(handle.fileno(), old.st_mode & 0o7777)
                if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                    try:
                        os.fchown(handle.fileno(), old.st_uid, old.st_gid)
                    except PermissionError:
                        pass  # not root: the file becomes ours, as any editor's save would
            else:
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(handle.fileno(), 0o644 & ~umask)
            os.fsync(handle.fileno())
        if expect_digest is not None and old is not None:
            with directory_lock(directory):
                _swap_in(temp, target, expect_digest)
        else:
            os.replace(temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def directory_lock(directory: str) -> Iterator[None]:
    """An exclusive flock on the file's directory, held while the daemon swaps its write in.

    Editors take no locks, and the compare-and-swap below catches their saves. A config tool that edits
    the file while the API may write it can take the same lock (`flock /etc/swarmd CMD`): its
    read-modify-write and ours then never interleave at all.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def _swap_in(temp: str, target: str, expect_digest: str) -> None:
    """Put `temp` in place of `target` only if `target` still holds `expect_digest`.

    renameat2(RENAME_EXCHANGE) swaps the two names atomically, so what we displaced is at hand: if it is
    not what we expected, a person saved the file a moment ago and we swap their version straight back.
    (A check followed by a plain rename would leave a window where their save is silently replaced.)
    Filesystems without RENAME_EXCHANGE get the check-then-rename fallback.
    """
    try:
        _rename_exchange(temp, target)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        with open(target, "rb") as handle:
            if digest_of(handle.read()) != expect_digest:
                raise Conflict(target) from None
        os.replace(temp, target)
        return
    with open(temp, "rb") as handle:
        displaced = handle.read()
    if digest_of(displaced) != expect_digest:
        _rename_exchange(temp, target)  # theirs back in place; ours is removed by the caller
        raise Conflict(target)
    os.unlink(temp)


_libc = None


def _rename_exchange(a: str, b: str) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(_libc, "renameat2"):
        raise OSError(errno.ENOSYS, "renameat2 not available")
    at_fdcwd, rename_exchange = -100, 2
    if _libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), b)
