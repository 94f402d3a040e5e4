"""The incremental reload (`backends_file.incremental`) and the fast paths at scale: a reload parses only the
entries whose text changed, and gives exactly what a whole-file parse gives -- the same definitions, the same
index, and for an invalid file the same problems at the same FILE:LINE:COL -- while anything unusual (CRLF, a
BOM, anchors and aliases, tags, a flow-style `backends:`, directives, odd indentation) takes the whole-file
parse. Hypothesis: random edits of random files."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmd import backends_file as bf
from swarmd.backends_file import incremental, parser
from swarmd.backends_file.index import _build_index
from swarmd.backends_file.parser import _parse
from swarmd.settings import SettingError

PATH = "backends.yaml"

# -- random files, as a person writes them ------------------------------------------------------------------

#: Title values as written in the file; `{i}` is the indentation of a continuation line (deeper than the key).
TITLES = ["web", "web 1", "'single'", '"double"', '"esc \\t \\u00e9"', "007", "1e3", "null", "~", "''",
          '"a # b"', "a # a comment", "'it''s'", "é ü 中", '"two\n{i}lines"', "plain\n{i}continued",
          "|-\n{i}first\n\n{i}third", ">-\n{i}folded\n{i}text", "|\n{i}kept\n", '"  1: not a key"',
          "x" * 90]
BAD_TITLES = ["true", "[1, 2]", "{{a: 1}}", '"unterminated', "'also unterminated"]
ENABLED = ["true", "false"]
BAD_ENABLED = ["yes", "1", '"true"']
#: (setting, value as written).
SETTINGS = [("command", "sleep 100"), ("command", "sh -c 'cd /srv && ls *.txt'"), ("command", '"echo hi !x"'),
            ("cwd", "/srv"), ("cwd", "'/srv/a b'"), ("port", "8000"), ("stop_timeout", "2.5"),
            ("restart", "always"), ("env", "|-\n{i}A=1\n{i}B=2"), ("env", "|\n{i}A=1\n"),
            ("env", "{{A: 1, B: x}}"), ("env", "\n{i}A: 1\n{i}B: two"), ("ready_check", "tcp"),
            ("ready_check", "'http://127.0.0.1:{{port}}/'"), ("rocr_visible_devices", "true"), ("max_usages", "3")]
#: Settings a whole-file parse refuses: out of range, not in the dropdown, unknown, of the wrong kind.
BAD_SETTINGS = [("port", "99999"), ("port", "0x10"), ("stop_timeout", "-1"), ("restart", "sometimes"),
                ("colour", "blue"), ("max_usages", "[1]")]
#: Lines between entries (`{n}`: the entries' indentation): none of them belongs to an entry.
GAPS = ["", "# a column-0 comment", "{n}# a heading", "   ", "#"]
TYPES = ["process"]
BAD_TYPES = ["nosuchtype", "comfyui_api"]  # (the second: a type none of the settings above belong to)


def sometimes_bad(good: list[Any], bad: list[Any], bad_one_in: int) -> st.SearchStrategy[Any]:
    """A good value, or one time in `bad_one_in` a bad one (0: never)."""
    if not bad_one_in:
        return st.sampled_from(good)
    return st.integers(1, bad_one_in).flatmap(lambda k: st.sampled_from(bad if k == 1 else good))


#: How often a value is bad: never in most files (a reload of a valid file is the case that matters most),
#: often in the others (the errors must be the same whichever way the reload went).
bad_rates = st.sampled_from([0, 0, 0, 8])


@st.composite
def entries(draw: Any, bad: int) -> list[dict[str, Any]]:
    """A fleet as a model: one dict per entry, in file order."""
    ids = draw(st.lists(st.integers(0, 40), min_size=1, max_size=8, unique=True))
    return [draw(entry(backend_id, bad)) for backend_id in ids]


@st.composite
def entry(draw: Any, backend_id: int, bad: int) -> dict[str, Any]:
    """One entry as a model (`bad`: see `sometimes_bad`)."""
    return {
        "id": backend_id,
        "key": draw(st.sampled_from([str(backend_id), str(backend_id), f"0{backend_id}"])),
        "type": draw(sometimes_bad(TYPES, BAD_TYPES, bad)),
        "title": draw(st.none() | sometimes_bad(TITLES, BAD_TITLES, bad)),
        "enabled": draw(st.none() | sometimes_bad(ENABLED, BAD_ENABLED, bad)),
        "settings": draw(settings_lists(bad)),
        "comment": draw(st.sampled_from(["", "", "   # eol comment"])),
        "flow": draw(st.integers(0, 9)) == 0,  # an entry on one line: `  3: {type: process, ...}`
        "gap": draw(st.lists(st.sampled_from(GAPS), max_size=2)),
        "inner": draw(st.sampled_from(["", "", "# inner comment", "# col-0 inside"])),
    }


def settings_lists(bad: int) -> st.SearchStrategy[list[tuple[str, str]]]:
    return st.lists(sometimes_bad(SETTINGS, BAD_SETTINGS, bad), max_size=4, unique_by=lambda kv: kv[0])


@dataclasses.dataclass
class Layout:
    indent: int = 2
    step: int = 2
    head: str = ""
    tail: str = ""
    final_newline: bool = True


layouts = st.builds(
    Layout, indent=st.integers(1, 4), step=st.integers(1, 3),
    head=st.sampled_from(["", "# swarmd backends\n", "---\n", "--- # doc\n# c\n\n"]),
    tail=st.sampled_from(["", "# the end\n", "  # trailing\n\n"]),
    final_newline=st.booleans())


def render(model: list[dict[str, Any]], layout: Layout) -> str:
    """The text of a model (no unusual construct, unless a value brings one)."""
    n, step = layout.indent, layout.step
    pad, inner, deep = " " * n, " " * (n + step), " " * (n + 2 * step)
    lines = [layout.head + "backends:"]
    for spec in model:
        lines += [gap.format(n=pad) for gap in spec["gap"]]
        if spec["flow"]:
            parts = [f"type: {spec['type']}"] + ([f"enabled: {spec['enabled']}"] if spec["enabled"] else [])
            lines.append(f"{pad}{spec['key']}: {{{', '.join(parts)}}}{spec['comment']}")
            continue
        lines.append(f"{pad}{spec['key']}:{spec['comment']}")
        lines.append(f"{inner}type: {spec['type']}")
        if spec["inner"] == "# inner comment":
            lines.append(f"{inner}# inner comment")
        elif spec["inner"]:
            lines.append("# col-0 inside")  # a comment at column 0 inside an entry: still the entry's
        if spec["title"] is not None:
            lines.append(f"{inner}title: " + spec["title"].format(i=deep))
        if spec["enabled"] is not None:
            lines.append(f"{inner}enabled: {spec['enabled']}")
        if spec["settings"]:
            lines.append(f"{inner}settings:")
            for name, value in spec["settings"]:
                lines.append(f"{deep}{name}: " + value.format(i=deep + " " * step))
    text = "\n".join(lines) + "\n" + layout.tail
    return text if layout.final_newline else text.rstrip("\n")


#: Whole-file constructs the incremental reload must leave to the whole-file parse.
UNUSUAL = {
    "crlf": lambda text: text.replace("\n", "\r\n"),
    "bom": lambda text: "\ufeff" + text,
    "anchor": lambda text: text.replace("type: process", "type: &t process", 1),
    "alias": lambda text: text.replace("type: process", "type: &t process", 1).replace(
        "type: process", "type: *t", 1),
    "tag": lambda text: text.replace("type: process", "type: !!str process", 1),
    "flow": lambda text: "backends: {0: {type: process}, 1: {type: process, title: b}}\n",
    "directive": lambda text: "%YAML 1.2\n---\n" + text.lstrip("-\n"),
    "end marker": lambda text: text + ("" if text.endswith("\n") else "\n") + "...\n",
    "odd indentation": lambda text: text.replace("\n" + " " * 1, "\n" + " " * 5, 1),
    "tab": lambda text: text.replace("\n ", "\n\t", 1),
    "keep chomping": lambda text: text.replace("|-\n", "|+\n", 1),
}
#: Those of UNUSUAL that always take the whole-file parse (the others may leave a file the scan still
#: reads -- a tab or odd indentation on a comment line -- and must then read the same).
FALL_BACK = {"crlf", "bom", "anchor", "alias", "tag", "flow", "directive", "end marker", "keep chomping"}
#: Raw lines a person's edit may leave anywhere: key lines at odd places, half-written values, comments.
RAW_LINES = ["  5:", "  5: {type: process}", "    title: stray", "# comment", "", "  # heading", "backends:",
             "  6:\n    type: process", '    title: "open', "  - list item", "other: 1", "   7:", "  8: x",
             "      port: 1", "  9:\n    type: process\n    settings:\n      port: 70000"]


@st.composite
def edited(draw: Any) -> tuple[str, str, str | None]:
    """(a base text, an edited text, the unusual construct the edit brought in, if any)."""
    layout = draw(layouts)
    bad = draw(bad_rates)
    model = draw(entries(bad))
    base = render(model, layout)
    new_model = [dict(spec) for spec in model]
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["title", "setting", "add", "remove", "rename", "gap", "duplicate",
                                     "unchanged"]))
        ids = [spec["id"] for spec in new_model]
        if kind == "add" or not new_model:
            fresh = draw(st.integers(0, 60).filter(lambda i, taken=ids: i not in taken))
            new_model.insert(draw(st.integers(0, len(new_model))), draw(entry(fresh, bad)))
            continue
        spec = draw(st.sampled_from(new_model))
        if kind == "title":
            spec["title"] = draw(sometimes_bad(TITLES, BAD_TITLES, bad))
        elif kind == "setting":
            spec["settings"] = draw(settings_lists(bad))
        elif kind == "remove":
            new_model.remove(spec)
        elif kind == "rename":
            spec["id"] = draw(st.integers(0, 60).filter(lambda i, taken=ids: i not in taken))
            spec["key"] = str(spec["id"])
        elif kind == "gap":
            spec["gap"] = draw(st.lists(st.sampled_from(GAPS), max_size=3))
        elif kind == "duplicate":
            copy = dict(spec)
            new_model.append(copy)
    if draw(st.booleans()):
        layout = dataclasses.replace(layout, tail=draw(st.sampled_from(["", "# new tail\n", "\n\n"])))
    text = render(new_model, layout)
    if draw(st.integers(0, 5)) == 0:  # a raw edit: a line inserted or removed anywhere
        lines = text.split("\n")
        at = draw(st.integers(0, len(lines)))
        if draw(st.booleans()) and at < len(lines):
            del lines[at]
        else:
            lines.insert(at, draw(st.sampled_from(RAW_LINES)))
        text = "\n".join(lines)
    unusual = draw(st.integers(0, 4).flatmap(lambda k: st.sampled_from(sorted(UNUSUAL)) if k == 0 else st.none()))
    if unusual is not None:
        changed = UNUSUAL[unusual](text)
        if changed == text:
            unusual = None
        text = changed
    return base, text, unusual


# -- what must hold -----------------------------------------------------------------------------------------


def whole_parse(data: bytes) -> tuple[bf.BackendsFile | None, list[str]]:
    """The reference: (the file as a whole-file parse reads it, with its index, or None; its problems)."""
    try:
        loaded, order = _parse(PATH, data, bf.TYPES)
    except bf.FileInvalid as err:
        return None, [str(p) for p in err.problems]
    return dataclasses.replace(loaded, _index=_build_index(loaded.text, order)), []


def adopt(store: bf.BackendsStore, data: bytes, previous: bf.BackendsFile | None
          ) -> tuple[bf.BackendsFile | None, list[str]]:
    try:
        return store._adopt(data, previous), []
    except bf.FileInvalid as err:
        return None, [str(p) for p in err.problems]


def check_reload(previous: bf.BackendsFile | None, data: bytes) -> bf.BackendsFile | None:
    """Reload `data` on top of `previous` both ways and compare everything; returns the new version."""
    expected, expected_problems = whole_parse(data)
    quick = incremental.reparse(PATH, data, previous, bf.TYPES)
    if quick is not None:  # the incremental path answered: the file must be valid, and read the same
        assert expected is not None, (data, expected_problems)
        assert dict(quick.backends) == dict(expected.backends)
        assert list(quick.backends) == list(expected.backends)  # sorted by id, like a parse
        assert quick._index == expected._index
        assert (quick.text, quick.data) == (expected.text, expected.data)
        reusable = previous._index.entries if previous is not None and previous._index is not None else ()
        before = {backend_id: previous.text[start:end] for backend_id, start, end in reusable}
        for backend_id, start, end in quick._index.entries:  # unchanged entries: the very same definitions
            if before.get(backend_id) == quick.text[start:end]:
                assert quick.backends[backend_id] is previous.backends[backend_id]
    store = bf.BackendsStore(PATH)
    got, problems = adopt(store, data, previous)
    assert problems == expected_problems  # the same messages at the same FILE:LINE:COL
    assert (got is None) == (expected is None)
    if got is not None and expected is not None:
        assert dict(got.backends) == dict(expected.backends) and list(got.backends) == list(expected.backends)
        assert got._index == expected._index
    return got


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(edited())
def test_an_incremental_reload_reads_what_a_whole_file_parse_reads(case: tuple[str, str, str | None]) -> None:
    base, text, unusual = case
    previous, _ = whole_parse(base.encode())
    if unusual in FALL_BACK and previous is not None:
        assert incremental.reparse(PATH, text.encode(), previous, bf.TYPES) is None, unusual  # the fallback
    new = check_reload(previous, text.encode())
    # and once more on top of the new version (a reload after a reload), back to the base
    if new is not None:
        check_reload(new, base.encode())


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(edited(), st.integers(min_value=1, max_value=4))
def test_a_first_load_entry_by_entry_reads_what_a_whole_file_parse_reads(
        case: tuple[str, str, str | None], batch: int) -> None:
    """The first load (no previous version) parses the entries in batches, for memory: whatever the
    batch size, it reads what the whole-file parse reads, or leaves the file to it."""
    _, text, unusual = case
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(incremental, "BATCH", batch)
        if unusual in FALL_BACK:
            assert incremental.reparse(PATH, text.encode(), None, bf.TYPES) is None, unusual
        check_reload(None, text.encode())


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.lists(edited(), min_size=2, max_size=4))
def test_a_chain_of_reloads_stays_equal_to_whole_file_parses(cases: list[tuple[str, str, str | None]]) -> None:
    """Each reload on top of whatever the previous one left (a good version, or the last good one kept
    after an invalid file), as the daemon runs them."""
    current, _ = whole_parse(cases[0][0].encode())
    for _base, text, _unusual in cases:
        new = check_reload(current, text.encode())
        current = new if new is not None else current


# -- the fast paths, by example -----------------------------------------------------------------------------

BASE = """\
# head
backends:
  0:
    type: process
    title: zero
    settings:
      command: sleep 100
  # a heading
  1:
    type: process
    title: one

  2: {type: process, title: two}
# the end
"""


class FastOnly(bf.BackendsStore):
    """A store that fails the test if a write takes the slow path."""

    def _apply_slow(self, base: bf.BackendsFile, changes: list[bf.Change]) -> Any:
        raise AssertionError(f"slow path taken for {changes}")


def adopted(text: str) -> bf.BackendsFile:
    return bf.BackendsStore(PATH)._adopt(text.encode())


def test_only_the_changed_entry_is_parsed_and_the_others_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    previous = adopted(BASE)
    parsed: list[str] = []
    real = incremental._parse_changed

    def spy(path: str, changed: list[tuple[int, str]], *args: Any) -> Any:
        parsed.extend(block for _, block in changed)
        return real(path, changed, *args)

    monkeypatch.setattr(incremental, "_parse_changed", spy)
    new = incremental.reparse(PATH, BASE.replace("title: one", "title: uno").encode(), previous, bf.TYPES)
    assert new is not None and parsed == ["  1:\n    type: process\n    title: uno\n"]
    assert new.backends[1].title == "uno"
    assert new.backends[0] is previous.backends[0] and new.backends[2] is previous.backends[2]
    parsed.clear()
    comments = BASE.replace("# the end", "# the very end").replace("  # a heading", "\n# moved\n")
    new = incremental.reparse(PATH, comments.encode(), previous, bf.TYPES)
    assert new is not None and parsed == []  # comments between entries change no entry
    assert all(new.backends[i] is previous.backends[i] for i in previous.backends)


def test_added_removed_and_renamed_entries() -> None:
    previous = adopted(BASE)
    text = BASE.replace("  2: {type: process, title: two}\n", "  7: {type: process, title: two}\n"
                        "  5:\n    type: process\n")
    text = text.replace("  0:\n    type: process\n    title: zero\n    settings:\n      command: sleep 100\n", "")
    new = incremental.reparse(PATH, text.encode(), previous, bf.TYPES)
    assert new is not None and list(new.backends) == [1, 5, 7]  # sorted by id, as a parse gives them
    assert new.backends[1] is previous.backends[1]
    assert new == whole_parse(text.encode())[0]


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_the_unusual_take_the_whole_file_parse(name: str) -> None:
    previous = adopted(BASE.replace("title: one", "title: one\n    settings:\n      env: |-\n        A=1"))
    text = UNUSUAL[name](previous.text)
    assert text != previous.text
    assert incremental.reparse(PATH, text.encode(), previous, bf.TYPES) is None
    check_reload(previous, text.encode())


def test_errors_come_from_the_whole_file_parse_at_the_real_lines() -> None:
    previous = adopted(BASE)
    store = bf.BackendsStore(PATH)
    store.current = previous
    with pytest.raises(bf.FileInvalid) as info:
        store._adopt(BASE.replace("title: one", "title: one\n    settings: {port: 99999}").encode(), previous)
    assert [str(p) for p in info.value.problems] == [f"{PATH}:12:16: settings.port: must be at most 65535, got 99999"]
    duplicate = BASE.replace("  2: {type", "  1: {type")
    assert incremental.reparse(PATH, duplicate.encode(), previous, bf.TYPES) is None
    assert whole_parse(duplicate.encode())[1] == adopt(store, duplicate.encode(), previous)[1] != []
    # a key line inside a quoted title: the scan sees an entry the parser does not
    inside = BASE.replace("title: one", 'title: "one\n  3: still the title"')
    assert incremental.reparse(PATH, inside.encode(), previous, bf.TYPES) is None
    assert adopt(store, inside.encode(), previous)[0] == whole_parse(inside.encode())[0]


def test_a_reused_entry_is_asked_the_machine_checks_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user that disappeared from the machine fails the file, even in an entry nobody changed."""
    users = {"alice"}

    def check_user(name: str) -> None:
        if name not in users:
            raise SettingError(f"no user {name!r} on this machine")

    monkeypatch.setitem(parser.MACHINE_CHECKS, "user", check_user)
    text = BASE.replace("      command: sleep 100\n", "      command: sleep 100\n      user: alice\n")
    previous = adopted(text)
    users.clear()
    changed = text.replace("title: one", "title: uno")
    assert incremental.reparse(PATH, changed.encode(), previous, bf.TYPES) is None
    with pytest.raises(bf.FileInvalid, match=r"backends.yaml:8:7: settings.user: no user 'alice'"):
        bf.BackendsStore(PATH)._adopt(changed.encode(), previous)


def test_read_if_changed_goes_incremental_and_a_write_keeps_it_possible(tmp_path: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "backends.yaml"
    path.write_text(BASE)
    store = bf.BackendsStore(str(path))
    store.load()
    written = store.write([bf.SetBackend(1, title="by the api")])
    whole: list[int] = []
    real = parser._parse
    monkeypatch.setattr("swarmd.backends_file.store._parse", lambda *a: whole.append(1) or real(*a))
    path.write_text(written.text.replace("title: zero", "title: by hand"))
    new = store.read_if_changed()
    assert new is not None and whole == [] and new.backends[0].title == "by hand"
    assert new.backends[1] is written.backends[1]
    assert store.read_if_changed() is None  # the same bytes: nothing to do


# -- at scale: the fast paths hold at 1000 and 10,000 entries (their speed is `make bench`'s: config, edit) ----


def big_text(count: int) -> str:
    lines = ["backends:"]
    for i in range(count):
        lines += [f"  {i}:", "    type: process", f"    title: p{i}", "    enabled: true", "    settings:",
                  f"      command: /srv/bench/child.sh c{i} /srv/bench/fifo", "      restart: always",
                  "      restart_delay: 0", "      ready_check: none", "      start_limit_burst: 1000000",
                  "      start_limit_interval: 1", "      stop_timeout: 10"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("count", [1000, 10_000])
def test_reload_and_edit_at_scale(tmp_path: Any, count: int) -> None:
    path = tmp_path / "backends.yaml"
    text = big_text(count)
    path.write_text(text)
    store = FastOnly(str(path))  # every reload and edit below must take the fast path
    store.load()
    for n in range(3):
        text = text.replace(f"title: p{n * 7}\n", f"title: p{n * 7} edited\n")
        path.write_text(text)
        new = store.read_if_changed()
        assert new is not None and new.backends[n * 7].title == f"p{n * 7} edited"
    for change in ([bf.SetBackend(count // 2, title="t")],
                   [bf.SetBackend(count // 3, settings={"stop_timeout": 3})],
                   [bf.SetBackend(count + 5, type_id="process", settings={"command": "sleep 1"})],
                   [bf.DeleteBackend(count // 4)]):
        store.write(change)
    assert store.current.backends == bf.parse(PATH, path.read_bytes()).backends


def test_an_entry_added_after_a_last_line_without_newline_keeps_memory_equal_to_the_file(tmp_path: Any) -> None:
    """The newline that ends the old last line changes what `env: |` there means: memory follows the file."""
    path = tmp_path / "backends.yaml"
    path.write_text("backends:\n  0:\n    type: process\n    settings:\n      env: |\n        A=1")
    store = FastOnly(str(path))
    assert store.load().backends[0].settings["env"] == "A=1"
    written = store.write([bf.SetBackend(1, type_id="process")])
    assert written.text.endswith("        A=1\n  1:\n    type: process\n")
    assert written.backends == bf.parse(PATH, path.read_bytes()).backends
    assert written.backends[0].settings["env"] == "A=1\n"
