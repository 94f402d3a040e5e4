"""BackendsStore: the one owner of the backends file. Edits splice only the entries they change (the fast
path) and must come out exactly as a whole-file parse reads them; unusual files take the slow path; a write
never lands over a file that changed meanwhile, never lands invalid, never leaves a temp file. Real files."""

from __future__ import annotations

import os
import stat
import statistics
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmd import backends_file as bf
from swarmd.backends_file.index import _build_index
from swarmd.backends_file.parser import _parse
from tests.helpers import backend_yaml

COMMENTED = """\
# swarmd backends -- a person wrote this
backends:
  0:                      # the first one
    type: process
    title: "web"          # quoted on purpose
    enabled: true
    settings:
      # how to start it
      command: python3 -m http.server --bind 127.0.0.1 {port}
      ready_check: 'http://127.0.0.1:{port}/'
      port: 8000
# a column-0 comment between entries
  # a disabled one
  1:
    type: process
    title: spare
    enabled: false
    settings: {command: sleep 100, stop_timeout: 3}

  2:
    type: process
    title: >-
      folded
    settings:
      env: |
        A=1
        B=2

      cwd: /srv   # deep comment
  # trailing comment at the entries' indentation
# the end
"""

#: Indented by 4, 2 more inside; a `---`; no final newline.
ODD = """\
---
# head
backends:   # the fleet
    3:
      type: process
      title: 'three'
      settings:
        command: sleep 3
# column-0 comment
    # heading of 7
    7:
      type: process
      enabled: false
      settings:
        env: |-
          A=1
          B=2
        cwd: "/srv/x"   # deep comment
    # a last comment"""

#: One-line flow entries.
FLOW = """\
backends:
  0: {type: process, title: zero}
  1: {type: process, settings: {port: 1}}
"""


class FastOnly(bf.BackendsStore):
    """A store that fails the test if a write takes the slow path."""

    def _apply_slow(self, base, changes):
        raise AssertionError(f"slow path taken for {changes}")


class Counting(bf.BackendsStore):
    """A store that counts the writes that took the slow path."""

    slow = 0

    def _apply_slow(self, base, changes):
        self.slow += 1
        return super()._apply_slow(base, changes)


def store_at(tmp_path, text: str, cls=bf.BackendsStore, **kwargs) -> bf.BackendsStore:
    path = tmp_path / "backends.yaml"
    path.write_text(text)
    store = cls(str(path), **kwargs)
    store.load()
    return store


def names(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


# -- the fast path: byte-exact splices ----------------------------------------------------------------------


def test_the_usual_layouts_are_indexed_and_odd_ones_are_not():
    for text, ids in ((COMMENTED, [0, 1, 2]), (ODD, [3, 7]), (FLOW, [0, 1])):
        index = _build_index(text, ids)
        assert index is not None and [e[0] for e in index.entries] == ids
    assert _build_index(COMMENTED, [0, 2, 1]) is None  # not the parser's order
    # shell-ish text is no anchor or alias; leading zeros are still the id
    text = "backends:\n  007:\n    type: process\n    settings: {command: sh -c 'cd /srv && ls *.txt'}\n"
    assert _build_index(text, list(bf.parse("b.yaml", text).backends)) is not None
    index = _build_index(COMMENTED, [0, 1, 2])
    # an entry ends at its last content line: headings and blank lines between entries belong to none
    assert [COMMENTED[start:end].splitlines()[-1] for _, start, end in index.entries] == [
        "      port: 8000", "    settings: {command: sleep 100, stop_timeout: 3}", "      cwd: /srv   # deep comment"]
    for odd in ("backends: {0: {type: process}}\n",  # flow
                "backends:\n",  # empty
                "backends:\n  0:\n    type: process\n    settings: &s {port: 1}\n  1:\n    type: process\n"
                "    settings: *s\n",  # anchors
                "%YAML 1.2\n---\nbackends:\n  0: {type: process}\n",  # directive
                "backends:\n  0: {type: process}\n...\n",  # document end
                "backends:\r\n  0: {type: process}\r\n",  # \r
                "backends:\n  0:\n    type: process\n    settings:\n      env: |+\n        A=1\n\n",  # keep
                'backends:\n  0:\n    type: process\n    title: "a\n  1: b"\n'):  # a key line inside a string
        ids = list(bf.parse("b.yaml", odd).backends)
        assert _build_index(odd, ids) is None, odd


def test_setting_a_title_changes_that_line_only(tmp_path):
    store = store_at(tmp_path, COMMENTED, FastOnly)
    store.write([bf.SetBackend(1, title="spare two")])
    assert (tmp_path / "backends.yaml").read_text() == COMMENTED.replace("title: spare", "title: spare two")
    store.write([bf.SetBackend(0, title="web two", settings={"port": 8001})])
    expected = (COMMENTED.replace("title: spare", "title: spare two")
                .replace('title: "web"          #', 'title: "web two"      #').replace("port: 8000", "port: 8001"))
    assert (tmp_path / "backends.yaml").read_text() == expected


def test_a_new_setting_goes_at_the_end_of_its_entry(tmp_path):
    store = store_at(tmp_path, COMMENTED, FastOnly)
    store.write([bf.SetBackend(0, settings={"stop_timeout": 2.5}), bf.SetBackend(2, settings={"port": 7})])
    assert (tmp_path / "backends.yaml").read_text() == (
        COMMENTED.replace("      port: 8000\n", "      port: 8000\n      stop_timeout: 2.5\n")
        .replace("      cwd: /srv   # deep comment\n", "      cwd: /srv   # deep comment\n      port: 7\n"))


def test_rename_rewrites_the_key_only(tmp_path):
    store = store_at(tmp_path, COMMENTED, FastOnly)
    written = store.write([bf.RenameBackend(0, 170)])
    assert (tmp_path / "backends.yaml").read_text() == COMMENTED.replace("  0:                      #",
                                                                          "  170:                      #")
    assert list(written.backends) == [1, 2, 170]
    assert written.backends[170].title == "web" and written.backends[170].id == 170


def test_delete_takes_the_heading_along_and_leaves_the_rest(tmp_path):
    store = store_at(tmp_path, COMMENTED, FastOnly)
    store.write([bf.DeleteBackend(1)])
    start = COMMENTED.index("  # a disabled one\n")
    end = COMMENTED.index("    settings: {command: sleep 100, stop_timeout: 3}\n") + len(
        "    settings: {command: sleep 100, stop_timeout: 3}\n")
    assert (tmp_path / "backends.yaml").read_text() == COMMENTED[:start] + COMMENTED[end:]
    assert "# a column-0 comment between entries\n" in COMMENTED[:start]  # column-0 comments stay


def test_add_goes_after_the_last_entry_before_the_closing_comments(tmp_path):
    store = store_at(tmp_path, COMMENTED, FastOnly)
    written = store.write([bf.SetBackend(9, type_id="process", title="new one",
                                         settings={"command": "sleep 1", "env": "A=1\nB=2", "port": 9})])
    block = ("  9:\n    type: process\n    title: new one\n    settings:\n      command: sleep 1\n"
             "      env: |-\n        A=1\n        B=2\n      port: 9\n")
    anchor = "      cwd: /srv   # deep comment\n"
    assert (tmp_path / "backends.yaml").read_text() == COMMENTED.replace(anchor, anchor + block)
    assert written.backends[9].settings["env"] == "A=1\nB=2"  # exactly what was asked: no newline added


def test_the_odd_layout_keeps_its_indentation_and_missing_final_newline(tmp_path):
    store = store_at(tmp_path, ODD, FastOnly)
    store.write([bf.SetBackend(3, title="three!", settings={"port": 3})])
    assert (tmp_path / "backends.yaml").read_text() == ODD.replace("'three'", "'three!'").replace(
        "        command: sleep 3\n", "        command: sleep 3\n        port: 3\n")
    store.write([bf.SetBackend(7, settings={"cwd": "/srv/y"})])
    text = (tmp_path / "backends.yaml").read_text()
    assert text.endswith('        cwd: "/srv/y"   # deep comment\n    # a last comment')
    store.write([bf.SetBackend(8, type_id="process")])
    text = (tmp_path / "backends.yaml").read_text()
    assert text.endswith('        cwd: "/srv/y"   # deep comment\n    8:\n      type: process\n    # a last comment')
    assert list(bf.parse("b.yaml", text).backends) == [3, 7, 8]


def test_an_entry_at_the_very_end_without_a_newline(tmp_path):
    text = "backends:\n  0:\n    type: process\n    title: a"
    store = store_at(tmp_path, text, FastOnly)
    store.write([bf.SetBackend(1, type_id="process", title="b")])
    assert (tmp_path / "backends.yaml").read_text() == text + "\n  1:\n    type: process\n    title: b\n"
    store.write([bf.SetBackend(0, title="c")])
    assert (tmp_path / "backends.yaml").read_text() == (
        "backends:\n  0:\n    type: process\n    title: c\n  1:\n    type: process\n    title: b\n")


def test_deleting_every_entry_then_adding_again(tmp_path):
    store = store_at(tmp_path, FLOW, FastOnly)
    written = store.write([bf.DeleteBackend(0), bf.DeleteBackend(1)])
    assert written.backends == {} and written.text == "backends:\n"
    store = store_at(tmp_path, written.text)  # an empty mapping: the slow path (a tiny file)
    written = store.write([bf.SetBackend(4, type_id="process")])
    assert written.text == "backends:\n  4:\n    type: process\n"
    assert written._index is not None  # and from now on the fast path again


def test_flow_style_backends_take_the_slow_path_and_grow_as_blocks(tmp_path):
    store = store_at(tmp_path, "# hand written\nbackends: {}\n")
    assert store.current._index is None
    written = store.write([bf.SetBackend(0, type_id="process", title="a")])
    assert written.text == "# hand written\nbackends:\n  0:\n    type: process\n    title: a\n"
    store = store_at(tmp_path, "backends: {0: {type: process}, 1: {type: process, title: b}}\n")
    written = store.write([bf.SetBackend(1, title="c"), bf.RenameBackend(0, 5)])
    assert written.text == "backends: {5: {type: process}, 1: {type: process, title: c}}\n"
    assert written.backends == bf.parse("b.yaml", (tmp_path / "backends.yaml").read_bytes()).backends


def test_anchors_take_the_slow_path_and_memory_is_what_the_file_says(tmp_path):
    text = ("backends:\n  0:\n    type: process\n    settings: &shared\n      command: sleep 1\n"
            "  1:\n    type: process\n    settings: *shared\n")
    store = store_at(tmp_path, text)
    assert store.current._index is None
    written = store.write([bf.SetBackend(0, settings={"port": 5})])
    on_disk = bf.parse("b.yaml", (tmp_path / "backends.yaml").read_bytes())
    assert written.backends == on_disk.backends
    assert written.backends[1].settings["port"] == 5  # one shared node: both changed, and memory says so


# -- the fast path reads exactly what a whole-file parse reads ----------------------------------------------

TRICKY = ["", " ", "a\nb", "A=1\nB=2\n", "x\n\n", "\n", "\n\nx", "1e3", "0x10", "007", "0o7", "1_000", "+1",
          ".inf", "true", "True", "yes", "null", "~", "#", "a #b", "a: b", ": ", " lead", "trail ", "'", '"',
          "\\", "é ü 😀", "\t", "a\r\nb", "a\u2028b", "a\x85b", "\ufeff", "\x7f", "- x", "? x", "&a", "*a",
          "!tag", "%x", "@", "`", "|", ">", "{a: 1}", "[1]", "---", "...", "a\n---\nb", "a\n...\n",
          "  \n  ", " a\nb", "a\n b\n", "2001-12-14", "<<", "x" * 300, "l1\n  # not a comment\nl3"]
TEXT = st.sampled_from(TRICKY) | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                         max_size=20)
SETTINGS = st.fixed_dictionaries({}, optional={
    "cwd": TEXT,
    "port": st.integers(0, 65535),
    "stop_timeout": st.floats(0, 1e9, allow_nan=False, allow_infinity=False),
    "rocr_visible_devices": st.booleans(),
    "restart": st.sampled_from(["always", "on-failure", "never"]),
    "env": st.sampled_from(["", "A=1", "A=1\nB=2", "A=1\nB=2\n", "# c\nA=x y", "\nA=1"]),
})
#: Indented by 4 throughout; block scalars whose last lines are (or look) blank.
WIDE = """\
backends:

    # heading of 10
    10:
        type: process
        settings:
            cwd: |2-
                  two spaces first
                  \n\
    11:
        type: process
        title: |
            first

            third
        settings:
            env: |-
                A=1
                # a line of the text, not a comment

"""
BASES = {"commented": COMMENTED, "odd": ODD, "flow": FLOW, "wide": WIDE}


@st.composite
def edits(draw):
    base = draw(st.sampled_from(sorted(BASES)))
    ids = list(bf.parse("b.yaml", BASES[base]).backends)
    changes: list[bf.Change] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "set", "add", "rename", "delete"] if ids else ["add"]))
        fresh = st.integers(0, 99).filter(lambda i: i not in ids)
        if kind == "set":
            changes.append(bf.SetBackend(draw(st.sampled_from(ids)), title=draw(st.none() | TEXT),
                                         enabled=draw(st.none() | st.booleans()), settings=draw(SETTINGS)))
        elif kind == "add":
            new = draw(fresh)
            changes.append(bf.SetBackend(new, type_id="process", title=draw(TEXT), settings=draw(SETTINGS)))
            ids.append(new)
        elif kind == "rename":
            old, new = draw(st.sampled_from(ids)), draw(fresh)
            changes.append(bf.RenameBackend(old, new))
            ids[ids.index(old)] = new
        else:
            gone = draw(st.sampled_from(ids))
            changes.append(bf.DeleteBackend(gone))
            ids.remove(gone)
    return base, changes


def expected_after(base: bf.BackendsFile, changes) -> dict[int, dict]:
    """What each backend must hold after `changes`: the model the API has in mind."""
    model = {i: {"title": d.title, "enabled": d.enabled, **d.settings} for i, d in base.backends.items()}
    for change in changes:
        if isinstance(change, bf.SetBackend):
            entry = model.setdefault(change.id, {"title": "", "enabled": True})
            if change.title is not None:
                entry["title"] = change.title
            if change.enabled is not None:
                entry["enabled"] = change.enabled
            entry.update(change.settings)
        elif isinstance(change, bf.RenameBackend):
            model[change.new_id] = model.pop(change.old_id)
        else:
            del model[change.id]
    return model


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits())
def test_the_fast_path_reads_what_a_whole_file_parse_reads(case):
    name, changes = case
    store = Counting(f"{name}.yaml")
    base = store._adopt(BASES[name].encode())
    written, data = store._apply(base, changes)
    if store.slow:
        # The fast path steps aside only on the way to a text it could not index anyway (say a folded
        # title whose text starts with `&`: the scan cannot tell it from an anchor).
        steps = [bf.BackendsStore._apply_slow(store, base, changes[:n])[0] for n in range(1, len(changes) + 1)]
        assert any(step._index is None for step in steps), changes
    if written is base:  # nothing to change: nothing to write
        data = base.text.encode()
    assert data == written.text.encode()
    whole, order = _parse("b.yaml", data, bf.TYPES)
    assert written.backends == whole.backends  # memory == file
    assert list(written.backends) == sorted(written.backends)
    assert written._index == _build_index(written.text, order)  # the moved offsets are the scan's
    for backend_id, fields in expected_after(base, changes).items():  # == what was asked
        definition = written.backends[backend_id]
        got = {"title": definition.title, "enabled": definition.enabled, **definition.settings}
        assert {k: got[k] for k in fields} == fields
    slow, _ = bf.BackendsStore._apply_slow(store, base, changes)
    assert slow.backends == written.backends  # and the whole-document path agrees


# -- the store: reading, conflicts, refusals ----------------------------------------------------------------


def test_a_missing_file_is_an_empty_fleet_and_the_first_write_creates_it(tmp_path):
    store = bf.BackendsStore(str(tmp_path / "backends.yaml"))
    assert store.current is None
    assert store.load().backends == {}
    written = store.write([bf.SetBackend(0, type_id="process", title="first")])
    assert (tmp_path / "backends.yaml").read_text() == "backends:\n  0:\n    type: process\n    title: first\n"
    assert store.current is written and store.read_if_changed() is None


def test_read_if_changed(tmp_path):
    store = store_at(tmp_path, COMMENTED)
    first = store.current
    assert store.read_if_changed() is None
    written = store.write([bf.SetBackend(1, enabled=True)])
    assert store.read_if_changed() is None  # our own write is no change
    path = tmp_path / "backends.yaml"
    path.write_text(written.text.replace("title: spare", "title: by hand"))
    changed = store.read_if_changed()
    assert changed is store.current and changed.backends[1].title == "by hand"
    assert changed._index is not None
    path.write_text("backends:\n  0: [\n")
    with pytest.raises(bf.FileInvalid):
        store.read_if_changed()
    assert store.current is changed
    path.unlink()
    assert store.read_if_changed() is None and store.current is changed  # keep running; a write recreates it
    store.write([bf.SetBackend(1, title="again")])
    assert bf.parse("b", path.read_bytes()).backends[1].title == "again"
    assert first is not changed


def test_a_conflict_keeps_their_save_and_changes_nothing(tmp_path):
    store = store_at(tmp_path, COMMENTED)
    before = store.current
    theirs = COMMENTED + "# a person saved this meanwhile\n"
    (tmp_path / "backends.yaml").write_text(theirs)
    with pytest.raises(bf.Conflict):
        store.write([bf.SetBackend(0, title="mine")])
    assert (tmp_path / "backends.yaml").read_text() == theirs
    assert store.current is before
    assert names(tmp_path) == ["backends.yaml", "backends.yaml.lock"]
    assert store.read_if_changed().text == theirs
    store.write([bf.SetBackend(0, title="mine")])  # on top of theirs now
    assert (tmp_path / "backends.yaml").read_text().endswith("# a person saved this meanwhile\n")


def test_an_invalid_result_is_never_written(tmp_path):
    store = store_at(tmp_path, COMMENTED)
    before = store.current
    with pytest.raises(bf.FileInvalid) as info:
        store.write([bf.SetBackend(0, title="fine"), bf.SetBackend(1, settings={"port": 99999})])
    assert [str(p) for p in info.value.problems] == [
        f"{store.path}:18:53: settings.port: must be at most 65535, got 99999"]  # where it would have been
    with pytest.raises(bf.FileInvalid, match="missing 'type'"):
        store.write([bf.SetBackend(5, title="no type")])
    with pytest.raises(bf.FileInvalid, match="unknown setting"):
        store.write([bf.SetBackend(5, type_id="process", settings={"colour": "blue"})])
    with pytest.raises(bf.FileInvalid, match="backends.0.title: cannot be written: not valid Unicode"):
        store.write([bf.SetBackend(0, title="\ud800")])
    with pytest.raises(ValueError, match="exists"):
        store.write([bf.RenameBackend(0, 1)])
    with pytest.raises(ValueError, match="no backend 9"):
        store.write([bf.DeleteBackend(9)])
    with pytest.raises(ValueError, match="backend id -1: expected a non-negative integer"):
        store.write([bf.RenameBackend(0, -1)])
    slow = store_at(tmp_path, "backends: {0: {type: process}}\n")  # the slow path refuses the same way
    with pytest.raises(bf.FileInvalid, match="settings.port: must be at most 65535"):
        slow.write([bf.SetBackend(0, settings={"port": 99999})])
    assert (tmp_path / "backends.yaml").read_text() == "backends: {0: {type: process}}\n"
    assert names(tmp_path) == ["backends.yaml", "backends.yaml.lock"]  # no temp file (the lock is made at load)
    assert store.current is before


def test_a_change_that_changes_nothing_writes_nothing(tmp_path):
    store = store_at(tmp_path, COMMENTED)
    before = store.current
    assert store.write([bf.SetBackend(0, title="web", settings={"port": 8000, "restart": "on-failure"})]) is before
    assert names(tmp_path) == ["backends.yaml", "backends.yaml.lock"]


def test_the_lock_is_made_at_load_with_the_files_write_bits(tmp_path):
    path = tmp_path / "backends.yaml"
    path.write_text(COMMENTED)
    os.chmod(path, 0o664)
    lock = tmp_path / "backends.yaml.lock"
    lock.write_text("")  # made by a config tool's flock(1) first, with its own mode
    os.chmod(lock, 0o666)
    bf.BackendsStore(str(path)).load()
    assert stat.S_IMODE(os.stat(lock).st_mode) == 0o660


def test_stale_temp_files_are_removed_on_load(tmp_path, caplog):
    path = tmp_path / "backends.yaml"
    path.write_text(COMMENTED)
    dead = tmp_path / ".backends.yaml.999999999-abcd1234.swarmd-tmp"  # no such pid
    mine = tmp_path / f".backends.yaml.{os.getpid()}-abcd1234.swarmd-tmp"  # a live writer, fresh
    old_style = tmp_path / ".backends.yaml.abcd1234.swarmd-tmp"  # no pid: by age only
    other = tmp_path / ".other.yaml.999999999-abcd1234.swarmd-tmp"  # another file's
    link = tmp_path / ".backends.yaml.999999999-link.swarmd-tmp"  # never followed nor removed
    victim = tmp_path / "victim"
    for temp in (dead, mine, old_style, other, victim):
        temp.write_text("x")
    link.symlink_to(victim)
    (tmp_path / ".backends.yaml.999999999-dir.swarmd-tmp").mkdir()
    with caplog.at_level("WARNING", logger="swarmd.backends_file"):
        bf.BackendsStore(str(path)).load()
    assert not dead.exists() and mine.exists() and old_style.exists() and other.exists()
    assert link.is_symlink() and victim.read_text() == "x"
    assert [r.getMessage() for r in caplog.records] == [
        f"removed {dead}, a temp file left by an interrupted write"]
    long_ago = time.time() - 3600
    for temp in (mine, old_style):
        os.utime(temp, (long_ago, long_ago))
    bf.BackendsStore(str(path)).load()
    assert not mine.exists() and not old_style.exists() and other.exists()


def test_a_write_waits_for_the_lock_no_longer_than_told(tmp_path):
    import fcntl

    store = store_at(tmp_path, COMMENTED, lock_timeout=0.2)
    before = store.current
    holder = os.open(str(tmp_path / "backends.yaml.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(bf.LockTimeout, match=r"within 0.2 s: another program is changing"):
            store.write([bf.SetBackend(0, title="x")])
    finally:
        os.close(holder)
    assert store.current is before and (tmp_path / "backends.yaml").read_text() == COMMENTED
    assert names(tmp_path) == ["backends.yaml", "backends.yaml.lock"]


# -- speed at 1000 backends (printed, not asserted) ---------------------------------------------------------


def test_a_write_to_a_1000_backend_file_is_fast(tmp_path, capsys):
    text = backend_yaml({i: {"title": f"backend {i}", "settings": {
        "command": "python3 -m http.server {port}", "port": 9000 + i, "ready_check": "tcp", "stop_timeout": 5}}
        for i in range(1000)})
    store = store_at(tmp_path, text, FastOnly)
    started = time.perf_counter()
    store.load()
    figures = [f"load {1000 * (time.perf_counter() - started):.0f} ms ({len(text) // 1024} KB)"]
    kinds = {
        "title": lambda n: [bf.SetBackend(500, title=f"x{n}")],
        "setting": lambda n: [bf.SetBackend(500, settings={"port": 20000 + n})],
        "add": lambda n: [bf.SetBackend(5000 + n, type_id="process", settings={"command": "sleep 1"})],
        "rename": lambda n: [bf.RenameBackend(sorted(store.current.backends)[400], 7000 + n)],
        "delete": lambda n: [bf.DeleteBackend(sorted(store.current.backends)[300])],
    }
    for kind, make in kinds.items():
        edit, write = [], []
        for n in range(5):
            started = time.perf_counter()
            store._apply(store.current, make(n))  # the edit alone, no I/O
            edit.append(time.perf_counter() - started)
            started = time.perf_counter()
            store.write(make(n))
            write.append(time.perf_counter() - started)
        figures.append(f"{kind} {1000 * statistics.median(edit):.1f} ms (+ I/O: {1000 * statistics.median(write):.1f})")
    assert store.current.backends == bf.parse("b", (tmp_path / "backends.yaml").read_bytes()).backends
    with capsys.disabled():
        print("\n1000 backends: " + ", ".join(figures))
