"""`swarmd import`: SwarmUI's saved backends (`Data/Backends.fds`) become entries of a swarmd backends file.

Theory of operation
-------------------
SwarmUI saves one root section per backend id (`type`, `title`, `enabled`, `settings`; swarmui-logs.md).
swarmd's ComfyUI types carry SwarmUI's own setting names, so the import is a copy by name, judged by
swarmd's own validation -- nothing here knows a setting list:

* `convert` reads each backend (`swarmd.fds` has read the file). Its id, title, enabled and type are kept;
  a type that `types` lacks (`swarmswarmbackend`, `autoscalingbackend`, ...) skips the backend. Each setting
  is looked up by name in the type's schema: one the type does not have is dropped (with the type's
  "did you mean" message); one it has is turned from FDS's text into the setting's kind the way FDS reads
  values (`fds.read_int`, `read_number`, `read_bool`: `1` is an integer, `1.0` is not; text settings keep
  the text exactly, so GPU_ID `0` stays the text "0") and handed to the setting's `SettingSpec.from_file`,
  the very check `swarmd check` and the daemon make. A relative `StartScript` is made absolute against the
  SwarmUI folder (the parent of `Data/`), as SwarmUI, which runs from that folder, reads it.
* A value swarmd refuses (a negative OverQueue, a GPU_ID naming no GPU of this machine, an Address that is
  no http:// URL, `enabled: yes`) is left out -- the setting takes swarmd's default -- and the backend is
  imported *disabled*. Why not skip it: everything else about it (its id, title, type and other settings)
  arrives, and a disabled backend never starts, so nothing runs that the user did not ask for; the report
  names the setting, and `swarmctl edit ID KEY=VALUE` then `swarmctl enable ID` finish the job. A skipped
  backend would have to be written by hand from the .fds.
* `run` applies the result to the target file through `BackendsStore` (validated, atomic, comments and
  every untouched byte kept). An id the target already has is never overwritten unless `replace`: then
  the entry becomes exactly the imported backend (settings SwarmUI does not give are set back to their
  defaults; a different type rewrites the entry, at the end of the file). `dry_run` makes the same write
  into a copy in a temp directory and prints the copy.

Exit statuses: 0 everything imported as it is (or would be, with --dry-run); 3 written, but something
was not imported as it is (a backend skipped -- unknown type, bad entry, id already in the target -- a
value refused, so the backend came in disabled, or a setting dropped); 1 nothing written (the .fds or the
target file is missing, unreadable or invalid, or the write failed); 2 usage (argparse).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from swarmd import fds
from swarmd.backends_file import (
    BackendsFile,
    BackendsStore,
    Change,
    Conflict,
    DeleteBackend,
    FileInvalid,
    SetBackend,
    read,
)
from swarmd.settings import INT32_MAX, SettingError, SettingSpec, check_title, describe
from swarmd.types import TYPES, BackendType

EXIT_OK, EXIT_ERROR, EXIT_PARTIAL = 0, 1, 3

#: The keys of a backend's section in Backends.fds.
_ENTRY_KEYS = ("type", "title", "enabled", "settings")
#: The setting SwarmUI resolves against its own folder when relative.
_START_SCRIPT = "StartScript"
#: How many times a write is made again when the target changed on disk meanwhile.
_ATTEMPTS = 3


#: What a report line says happened. Every kind but NOTE means something was not imported as it is.
SKIPPED, REFUSED, DROPPED, NOTE = "skipped", "refused", "dropped", "note"


@dataclass(frozen=True)
class Report:
    """One line of the report: `FDS:LINE: backend ID: message`, and its kind: SKIPPED (the backend is not
    imported), REFUSED (a value swarmd refuses: the backend is imported disabled), DROPPED (a setting left
    out) or NOTE (nothing lost)."""

    line: int
    backend: str
    message: str
    kind: str = SKIPPED

    @property
    def problem(self) -> bool:
        return self.kind != NOTE

    def format(self, path: str) -> str:
        return f"{path}:{self.line}: backend {self.backend}: {self.message}"


@dataclass(frozen=True)
class Candidate:
    """A backend of the .fds as it will be written: settings typed as the backends file holds them."""

    id: int
    type_id: str
    title: str
    enabled: bool
    settings: dict[str, Any] = field(default_factory=dict)
    line: int = 1
    refused: bool = False  # a value was refused: imported disabled


@dataclass
class Outcome:
    """What an import did (or would do)."""

    imported: list[int] = field(default_factory=list)
    disabled: list[int] = field(default_factory=list)  # imported disabled because a value was refused
    replaced: list[int] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)
    text: str = ""  # the target's text after the import

    @property
    def status(self) -> int:
        return EXIT_PARTIAL if any(r.problem for r in self.reports) else EXIT_OK


class ImportFailed(Exception):
    """Nothing could be written: the lines say why (each `FILE:LINE: message` where there is a place)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


# -- the .fds -> candidates ---------------------------------------------------------------------------------


def swarmui_dir_of(fds_path: str) -> str:
    """The SwarmUI folder of `PATH/Data/Backends.fds`: the parent of the file's folder."""
    return os.path.dirname(os.path.dirname(os.path.abspath(fds_path)))


def convert(root: fds.Section, swarmui_dir: str,
            types: Mapping[str, BackendType] = TYPES) -> tuple[list[Candidate], list[Report]]:
    """The backends of a parsed Backends.fds, in file order, and the report of what was not taken as is."""
    candidates: list[Candidate] = []
    reports: list[Report] = []
    for key, node in root.items():
        candidate = _convert_entry(key, node, swarmui_dir, types, reports)
        if candidate is not None:
            candidates.append(candidate)
    return candidates, reports


def _convert_entry(key: str, node: fds.Node, swarmui_dir: str, types: Mapping[str, BackendType],
                   reports: list[Report]) -> Candidate | None:
    shown = key if key.isprintable() and len(key) <= 40 else describe(key)
    backend_id = fds.read_int(key)
    if backend_id is None or not 0 <= backend_id <= INT32_MAX:
        reports.append(Report(node.line, shown, "not a backend id (a non-negative integer, as SwarmUI writes "
                              "it): skipped"))
        return None
    if not isinstance(node, fds.Section):
        reports.append(Report(node.line, shown, f"expected a section ({', '.join(_ENTRY_KEYS)}), got "
                              f"{_what(node)}: skipped"))
        return None

    def report(line: int, message: str, kind: str = SKIPPED) -> None:
        reports.append(Report(line, shown, message, kind))

    for name, value in node.items():
        if name not in _ENTRY_KEYS:
            report(value.line, f"unknown key {describe(name)} ignored, as SwarmUI ignores it (a backend has "
                   f"{', '.join(_ENTRY_KEYS)})", NOTE)
    type_node = node.get("type")
    if not isinstance(type_node, fds.Text) or not type_node.text:
        report(node.line, "no type: skipped")
        return None
    backend_type = types.get(type_node.text)
    if backend_type is None:
        report(type_node.line, f"type {describe(type_node.text)} has no swarmd equivalent (swarmd has "
               f"{', '.join(sorted(types))}): skipped")
        return None

    refused = False
    title = ""
    title_node = node.get("title")
    if title_node is not None and not _empty(title_node):
        try:
            if not isinstance(title_node, fds.Text):
                raise SettingError(f"expected text, got {_what(title_node)}")
            title = check_title(title_node.text)
        except SettingError as err:
            report(title_node.line, f"title refused: {err}: left empty; the backend is imported disabled",
                   REFUSED)
            refused = True
    enabled = True
    enabled_node = node.get("enabled")
    if enabled_node is not None and not _empty(enabled_node):
        value = fds.read_bool(enabled_node.text) if isinstance(enabled_node, fds.Text) else None
        if value is None:
            got = describe(enabled_node.text) if isinstance(enabled_node, fds.Text) else _what(enabled_node)
            report(enabled_node.line, f"enabled: expected true or false, got {got}: the backend is imported "
                   "disabled", REFUSED)
            refused = True
        else:
            enabled = value

    settings: dict[str, Any] = {}
    settings_node = node.get("settings")
    if settings_node is not None and not isinstance(settings_node, fds.Section):
        report(settings_node.line, f"settings: expected a section, got {_what(settings_node)}: every setting "
               "left at swarmd's default; the backend is imported disabled", REFUSED)
        refused = True
    elif settings_node is not None:
        for name, value_node in settings_node.items():
            outcome = _convert_setting(backend_type, name, value_node, swarmui_dir, report)
            if outcome is _REFUSED:
                refused = True
            elif outcome is not _LEFT_OUT:
                settings[name] = outcome
    return Candidate(backend_id, backend_type.id, title, enabled and not refused, settings, node.line, refused)


_REFUSED = object()  # a value swarmd refuses: left out, and the backend imported disabled
_LEFT_OUT = object()  # dropped or empty: left out


def _convert_setting(backend_type: BackendType, name: str, node: fds.Node, swarmui_dir: str,
                     report: Any) -> Any:
    """The value to write for one SwarmUI setting, or _REFUSED / _LEFT_OUT (reported)."""
    spec = backend_type.spec(name)
    if spec is None:
        message = getattr(backend_type, "unknown_setting_message", None)
        why = message(name) if message is not None else (
            f"unknown setting {describe(name)} for type {backend_type.id!r}")
        report(node.line, f"settings: {why}: dropped", DROPPED)
        return _LEFT_OUT
    if _empty(node) and spec.kind not in ("text", "dropdown"):
        report(node.line, f"settings.{name}: empty: left at swarmd's default ({_shown_default(spec)})", NOTE)
        return _LEFT_OUT
    text = "" if _empty(node) else node.text if isinstance(node, fds.Text) else None
    try:
        if text is None:
            raise SettingError(f"expected one value, got {_what(node)}")
        notes: list[str] = []
        if name == _START_SCRIPT and spec.kind == "text":
            text = _resolve_start_script(text, swarmui_dir, notes)
        value = _typed(spec, text)
        spec.from_file(value)
        if notes:
            report(node.line, f"settings.{name}: " + "; ".join(notes), NOTE)
    except SettingError as err:
        why = f"refused ({spec.kind} expected; the value is secret)" if spec.secret else f"refused: {err}"
        report(node.line, f"settings.{name}: {why}: left at swarmd's default ({_shown_default(spec)}); the "
               "backend is imported disabled", REFUSED)
        return _REFUSED
    return value


def _typed(spec: SettingSpec, text: str) -> Any:
    """FDS's text as the value of `spec`'s kind, read the way FDS reads values. Raises SettingError."""
    if spec.kind in ("text", "dropdown"):
        return text
    if spec.kind == "integer":
        value: Any = fds.read_int(text)
        expected = "an integer"
    elif spec.kind == "decimal":
        value = fds.read_number(text)
        expected = "a number"
    elif spec.kind == "boolean":
        value = fds.read_bool(text)
        expected = "true or false"
    else:  # a kind this module does not know: what FDS reads the text as
        return fds.interpret(text)
    if value is None:
        raise SettingError(f"expected {expected}, got {describe(text)}")
    return value


def _resolve_start_script(text: str, swarmui_dir: str, notes: list[str]) -> str:
    """A relative StartScript made absolute against the SwarmUI folder, and what to note about it: that, and
    that the script is not there (the backend would be errored at its start)."""
    path = text.strip()
    if not path:
        return text
    if not os.path.isabs(path) and not path.startswith("~"):
        resolved = os.path.normpath(os.path.join(swarmui_dir, path))
        notes.append(f"{describe(path)} is relative to the SwarmUI folder: written as {describe(resolved)}")
        path = text = resolved
    if not os.path.isfile(os.path.expanduser(path)):
        notes.append(f"{describe(path)} does not exist (yet): the backend will be errored when it starts")
    return text


def _empty(node: fds.Node) -> bool:
    """`key:` with nothing under it: how FDS wrote an empty text (newer FDS writes `key: \\x`)."""
    return isinstance(node, fds.Section) and not len(node)


def _what(node: fds.Node) -> str:
    if isinstance(node, fds.FdsList):
        return "a list"
    if isinstance(node, fds.Binary):
        return "binary data"
    if isinstance(node, fds.Section):
        return "a section"
    return describe(node.text)


def _shown_default(spec: SettingSpec) -> str:
    default = spec.default
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, str):
        return repr(default)
    return describe(default).removeprefix("number ")


# -- candidates -> the target file ----------------------------------------------------------------------------


def changes_for(current: BackendsFile, candidates: list[Candidate], replace_existing: bool,
                types: Mapping[str, BackendType], outcome: Outcome) -> list[Change]:
    """The changes that import `candidates` into `current`; what they do is recorded in `outcome`."""
    changes: list[Change] = []
    for candidate in candidates:
        shown = str(candidate.id)
        existing = current.backends.get(candidate.id)
        new = SetBackend(candidate.id, candidate.type_id, candidate.title, candidate.enabled, candidate.settings)
        if existing is not None and not replace_existing:
            outcome.reports.append(Report(candidate.line, shown, f"the target already has a backend {candidate.id} "
                                          f"({existing.type_id} {existing.title!r}): it is kept and this one is "
                                          "not imported (--replace replaces it)"))
            continue
        if existing is None:
            changes.append(new)
        elif existing.type_id == candidate.type_id:
            backend_type = types[candidate.type_id]
            reset = {spec.name: spec.default for spec in backend_type.settings
                     if spec.name not in candidate.settings and existing.settings.get(spec.name) != spec.default}
            changes.append(replace(new, settings={**candidate.settings, **reset}))
            outcome.replaced.append(candidate.id)
            outcome.reports.append(Report(candidate.line, shown, "replaces the target's backend of that id "
                                          "(--replace)", NOTE))
        else:
            changes += [DeleteBackend(candidate.id), new]
            outcome.replaced.append(candidate.id)
            outcome.reports.append(Report(candidate.line, shown, "replaces the target's backend of that id "
                                          f"(--replace), a {existing.type_id}: its entry is written anew, at the "
                                          "end of the file", NOTE))
        outcome.imported.append(candidate.id)
        if candidate.refused:
            outcome.disabled.append(candidate.id)
    return changes


def import_into(backends_path: str, candidates: list[Candidate], reports: list[Report], *,
                replace_existing: bool = False, dry_run: bool = False,
                types: Mapping[str, BackendType] = TYPES) -> Outcome:
    """Import `candidates` into the backends file at `backends_path` (created when missing); with
    `dry_run`, into a temp copy of it. Raises ImportFailed when nothing can be written."""
    for attempt in range(_ATTEMPTS):
        outcome = Outcome(reports=list(reports))
        try:
            if dry_run:
                current = read(backends_path, types)
                changes = changes_for(current, candidates, replace_existing, types, outcome)
                outcome.text = _write_copy(backends_path, current, changes, types)
            else:
                store = BackendsStore(backends_path, types)
                current = store.load()
                changes = changes_for(current, candidates, replace_existing, types, outcome)
                outcome.text = store.write(changes).text
        except FileInvalid as err:
            raise ImportFailed([*map(str, err.problems), f"{backends_path}: invalid: nothing imported"]) from None
        except Conflict:
            if attempt + 1 < _ATTEMPTS:
                continue
            raise ImportFailed([f"{backends_path}: kept changing on disk while the import wrote it: nothing "
                                "imported; try again"]) from None
        except OSError as err:
            raise ImportFailed([f"{backends_path}: cannot {'read' if dry_run else 'write'}: "
                                f"{err.strerror or err}: nothing imported"]) from None
        except ValueError as err:  # a change that cannot apply (cannot happen: ids are checked above)
            raise ImportFailed([f"{backends_path}: {err}: nothing imported"]) from None
        return outcome
    raise AssertionError("unreachable")  # pragma: no cover


def _write_copy(backends_path: str, current: BackendsFile, changes: list[Change],
                types: Mapping[str, BackendType]) -> str:
    """The text `changes` make of `current`, written by BackendsStore into a copy in a temp directory
    (the real file is never touched). FileInvalid's problems name the real file."""
    directory = tempfile.mkdtemp(prefix="swarmd-import-")
    try:
        copy = os.path.join(directory, os.path.basename(backends_path) or "backends.yaml")
        if current.text:
            with open(copy, "w", encoding="utf-8") as handle:
                handle.write(current.text)
        store = BackendsStore(copy, types)
        store.load()
        try:
            return store.write(changes).text
        except FileInvalid as err:
            raise FileInvalid([replace(p, path=backends_path) for p in err.problems]) from None
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- the command ----------------------------------------------------------------------------------------------


def run(fds_path: str, backends_path: str, *, dry_run: bool = False, replace_existing: bool = False,
        swarmui_dir: str | None = None, types: Mapping[str, BackendType] = TYPES,
        out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`swarmd import`: report lines on `err`, the summary on `out` (on `err` with `dry_run`, whose `out`
    is the resulting YAML). Returns the exit status (module docstring)."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        root = fds.load(fds_path)
    except fds.FdsError as error:
        print(str(error), file=err)
        print(f"swarmd import: {fds_path} cannot be read: nothing imported", file=err)
        return EXIT_ERROR
    folder = swarmui_dir if swarmui_dir is not None else swarmui_dir_of(fds_path)
    candidates, reports = convert(root, folder, types)
    try:
        outcome = import_into(backends_path, candidates, reports, replace_existing=replace_existing,
                              dry_run=dry_run, types=types)
    except ImportFailed as error:
        for line in sorted(reports, key=lambda r: r.line):
            print(line.format(fds_path), file=err)
        for line in error.lines:
            print(line, file=err)
        return EXIT_ERROR
    for report in sorted(outcome.reports, key=lambda r: r.line):
        print(report.format(fds_path), file=err)
    if dry_run:
        out.write(outcome.text)
        out.flush()
    print(_summary(backends_path, outcome, dry_run, len(root)), file=err if dry_run else out)
    return outcome.status


def _summary(backends_path: str, outcome: Outcome, dry_run: bool, found: int) -> str:
    ids = ", ".join(map(str, outcome.imported))
    done = (f"would import {len(outcome.imported)} of {found} backends" if dry_run
            else f"imported {len(outcome.imported)} of {found} backends")
    parts = [f"{backends_path}: {done}" + (f" ({ids})" if ids else "")]
    if outcome.replaced:
        parts.append(f"{len(outcome.replaced)} replaced ({', '.join(map(str, outcome.replaced))})")
    if outcome.disabled:
        parts.append(f"{len(outcome.disabled)} disabled for a refused value "
                     f"({', '.join(map(str, outcome.disabled))})")
    skipped = [r.backend for r in sorted(outcome.reports, key=lambda r: r.line) if r.kind == SKIPPED]
    if skipped:
        parts.append(f"{len(skipped)} skipped ({', '.join(skipped)})")
    dropped = sum(1 for r in outcome.reports if r.kind == DROPPED)
    if dropped:
        parts.append(f"{dropped} setting{'s' if dropped > 1 else ''} dropped")
    summary = "; ".join(parts)
    return summary + ("; dry run: nothing written" if dry_run else "")
