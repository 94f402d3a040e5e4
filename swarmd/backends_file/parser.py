"""Reading and validating: `read()` and `parse()` turn bytes into a `BackendsFile` or raise `FileInvalid`
with every problem located at FILE:LINE:COL (`key_position`, `value_position`, `node_position`).

Settings are checked by their specs (syntax, ranges: pure, as the API checks them), then by
`MACHINE_CHECKS`, which need this machine's user database: the parse runs in worker threads (the daemon's
load, reloads, the parse-before-write of every API change) or in `swarmd check`, never on the event loop.

A valid file is read with the C-accelerated safe loader (YAML 1.2); only a file with a problem is read
again round-trip (`roundtrip._load_doc`), for the positions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.resolver import VersionedResolver

from swarmd import accounts
from swarmd.backends_file.model import BACKEND_KEYS, BackendDef, BackendsFile, FileInvalid, Problem
from swarmd.backends_file.roundtrip import _load_doc
from swarmd.settings import SettingError, check_title, describe
from swarmd.types import TYPES, BackendType

#: Checks of a setting against this machine, by setting name, for a non-empty value that passed its spec:
#: each raises SettingError ("no user 'x' on this machine"), which becomes the located problem
#: `settings.NAME: message`. They may block (NSS: LDAP, SSSD), which is why they live here, where the file
#: is validated off the event loop, and not in the specs' `check` (the API runs those on the event loop).
#: `accounts.check_user`/`check_group` also fill the cache the spawn reads (`accounts.run_as`).
MACHINE_CHECKS: dict[str, Callable[[Any], object]] = {
    "user": accounts.check_user,
    "group": accounts.check_group,
}

#: One parse's answers of `MACHINE_CHECKS`, by (setting, value): None when it passed, else the message. A
#: file with a problem is validated twice (fast, then round-trip for the positions), each name is asked once.
_Answers = dict[tuple[str, Any], str | None]


def read(path: str, types: Mapping[str, BackendType] = TYPES) -> BackendsFile:
    """Read and validate the file at `path`. A missing file is an empty fleet (it is created on the first
    write). Raises FileInvalid, or OSError when the file exists but cannot be read."""
    data = _read_bytes(path)
    return parse(path, b"" if data is None else data, types)


def _read_bytes(path: str) -> bytes | None:
    """The file's bytes; None when it does not exist. Raises OSError."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def parse(path: str, data: bytes | str, types: Mapping[str, BackendType] = TYPES) -> BackendsFile:
    """Validate `data` as a backends file. Raises FileInvalid with every problem found.

    A valid file -- the common case, at start and on every reload -- is read with the C-accelerated safe
    loader (YAML 1.2 too, about 5x faster). Only when that finds a problem is the file read again
    round-trip, for the line and column of each problem.
    """
    return _parse(path, data, types)[0]


def _parse(path: str, data: bytes | str, types: Mapping[str, BackendType]) -> tuple[BackendsFile, list[int]]:
    """`parse`, also returning the backend ids in file order."""
    try:
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FileInvalid([Problem(path, 1, 1, f"not UTF-8 text ({err.reason} at byte {err.start})")]) from None
    except UnicodeEncodeError as err:
        line, col = _line_col(data, err.start)
        raise FileInvalid([Problem(path, line, col, f"not valid Unicode text ({err.reason})")]) from None
    try:
        plain = _fast_yaml().load(text)
    except Exception:
        plain = _INVALID
    answers: _Answers = {}
    if plain is not _INVALID:
        backends, order, problems = _validate(path, plain, types, answers)
        if not problems:
            return BackendsFile(path, text, MappingProxyType(backends)), order
    doc, _ = _load_doc(path, text)
    backends, order, problems = _validate(path, doc, types, answers)
    if problems:
        raise FileInvalid(problems)
    return BackendsFile(path, text, MappingProxyType(backends)), order


def _line_col(text: str, offset: int) -> tuple[int, int]:
    """The 1-based (line, col) of `offset` in `text`."""
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


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


def _validate(path: str, doc: Any, types: Mapping[str, BackendType], answers: _Answers | None = None
              ) -> tuple[dict[int, BackendDef], list[int], list[Problem]]:
    """Check a loaded document (round-trip or plain): (backends sorted by id, ids in file order, problems).
    Positions are exact for round-trip documents. `answers` keeps the machine checks' answers across calls."""
    answers = {} if answers is None else answers
    problems: list[Problem] = []
    backends: dict[int, BackendDef] = {}
    order: list[int] = []
    if doc is None:
        return backends, order, problems
    if not isinstance(doc, Mapping):
        return backends, order, [Problem(path, 1, 1, "expected a mapping with a 'backends:' key at the top")]
    for key in doc:
        if not (isinstance(key, str) and key == "backends"):
            line, col = key_position(doc, key)
            problems.append(Problem(path, line, col, f"unknown top-level key {describe(key)} (expected 'backends')"))
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
                                    f"backend id {_shown_id(key)}: expected a non-negative integer"))
            continue
        order.append(key)
        backend, found = _parse_backend(path, key, entry, lambda e=entries, k=key: key_position(e, k), types,
                                        answers)
        problems.extend(found)
        if backend is not None:
            backends[key] = backend
    return dict(sorted(backends.items())), order, problems


def _shown_id(key: Any) -> str:
    """A backend id as a message shows it: the number itself (bounded), else what it is."""
    shown = describe(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return shown.removeprefix("number ")
    return shown


def _shown_name(name: str) -> str:
    """A setting name as a message shows it in a dotted path: as written when short and printable."""
    return name if len(name) <= 80 and name.isprintable() and name.strip() == name and name else describe(name)


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float)  # bool is an int


def _parse_backend(path: str, backend_id: int, entry: Any, at: Callable[[], tuple[int, int]],
                   types: Mapping[str, BackendType], answers: _Answers | None = None
                   ) -> tuple[BackendDef | None, list[Problem]]:
    where = f"backends.{_shown_id(backend_id)}"
    if not isinstance(entry, Mapping):
        return None, [Problem(path, *at(), f"{where}: expected a mapping with type, title, enabled, settings")]
    problems: list[Problem] = []

    def problem(key: Any, message: str, *, value: bool = False) -> None:
        line, col = value_position(entry, key) if value else key_position(entry, key)
        problems.append(Problem(path, line, col, message))

    for key in entry:
        if not (isinstance(key, str) and key in BACKEND_KEYS):
            problem(key, f"{where}: unknown key {describe(key)} (expected one of {', '.join(BACKEND_KEYS)})")
    type_id = entry.get("type")
    backend_type = types.get(type_id) if isinstance(type_id, str) else None
    if "type" not in entry:
        problems.append(Problem(path, *at(), f"{where}: missing 'type' (one of {', '.join(sorted(types))})"))
    elif backend_type is None:
        problem("type", f"{where}.type: unknown backend type {describe(type_id)} "
                f"(known: {', '.join(sorted(types))})", value=True)
    try:
        title = check_title(entry.get("title"))
    except SettingError as err:
        problem("title", f"{where}.title: {err}", value=True)
        title = ""
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        hint = " (YAML 1.2 reads it as a string: write true or false)" if isinstance(enabled, str) else ""
        problem("enabled", f"{where}.enabled: expected true or false, got {describe(enabled)}{hint}", value=True)
        enabled = True
    raw_settings = entry.get("settings")
    settings: dict[str, Any] = {}
    if raw_settings is not None and not isinstance(raw_settings, Mapping):
        problem("settings", f"{where}.settings: expected a mapping of setting name to value", value=True)
        raw_settings = None
    if backend_type is not None:
        settings = backend_type.defaults()
        for name, value in (raw_settings or {}).items():
            if not isinstance(name, str):
                problems.append(Problem(path, *key_position(raw_settings, name),
                                        f"{where}.settings: a setting name must be text, got {describe(name)}"))
                continue
            spec = backend_type.spec(name)
            if spec is None:
                problems.append(Problem(path, *key_position(raw_settings, name),
                                        f"{where}.settings: {backend_type.unknown_setting_message(name)}"))
                continue
            if isinstance(value, Mapping) and not all(_is_plain(k) and _is_plain(v) for k, v in value.items()):
                # (checked before anything turns the mapping into text: an aliased structure may be huge)
                problems.append(Problem(path, *key_position(raw_settings, name),
                                        f"settings.{name}: expected KEY: VALUE pairs of plain values"))
                continue
            try:
                settings[name] = spec.from_file(value)
            except SettingError as err:
                problems.append(Problem(path, *key_position(raw_settings, name), f"settings.{name}: {err}"))
                continue
            message = _machine_check(name, settings[name], {} if answers is None else answers)
            if message is not None:
                problems.append(Problem(path, *key_position(raw_settings, name), f"settings.{name}: {message}"))
    if problems or backend_type is None:
        return None, problems
    return BackendDef(backend_id, backend_type.id, title, enabled, settings), []


def _machine_check(name: str, value: Any, answers: _Answers) -> str | None:
    """The problem `MACHINE_CHECKS` find with setting `name` = `value` (None: none, or no check). Blocks."""
    check = MACHINE_CHECKS.get(name)
    if check is None or not isinstance(value, str) or not value:
        return None
    key = (name, value)
    if key not in answers:
        try:
            check(value)
            answers[key] = None
        except SettingError as err:
            answers[key] = str(err)
    return answers[key]


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
