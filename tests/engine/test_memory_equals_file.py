"""Memory always equals the file: whatever an API edit writes, the file parses back to exactly what the
daemon keeps, and a reload right after changes nothing (hypothesis, over every setting of every type)."""

from __future__ import annotations

from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmd import backends_file
from swarmd.fleet import Fleet, FleetError
from swarmd.plan import plan
from swarmd.types import TYPES
from tests.helpers import backend_yaml

#: One disabled backend of each type: edits never start a process (random commands must not run).
FLEET = {i: {"type": type_id, "enabled": False, "title": type_id} for i, type_id in enumerate(sorted(TYPES))}

TRICKY = ["A=1\nB=2", "A=1\nB=2\n", " lead", "trail ", "#x", "a # b", "a: b", "'q'", '"dq"', "1e3", "0x10", "007",
          "true", "False", "null", "~", "- x", "{a}", "[x]", "@x", "`x", "|", ">", "%x", "a\tb", "\\", "é ü 中",
          "line\n\nline", "trailing\n", "\n", " ", "", "\r", "x\r\ny", "a  b", "---", "...", "*x", "&x", "!x",
          "0", "-1", "3.5", "1_000", ".5", "+7", "  multi\n  indented\n", "tabs\t\n", "\u2028", "\x85", "\ufeff"]

texts = st.one_of(
    st.sampled_from(TRICKY),
    st.text(max_size=40),
    st.lists(st.sampled_from(TRICKY) | st.text(max_size=8), max_size=4).map("".join),
    st.lists(st.tuples(st.from_regex(r"[A-Z_][A-Z0-9_]{0,6}", fullmatch=True), st.text(max_size=10)),
             max_size=3).map(lambda pairs: "\n".join(f"{k}={v}" for k, v in pairs)),
)
values = st.one_of(texts, st.integers(-5, 70000).map(str), st.integers(-5, 70000), st.booleans(),
                   st.floats(allow_nan=False, allow_infinity=False, width=32), st.none())


@st.composite
def edits(draw: Any) -> tuple[int, str, dict[str, Any]]:
    backend_id = draw(st.sampled_from(sorted(FLEET)))
    backend_type = TYPES[FLEET[backend_id]["type"]]
    names = draw(st.lists(st.sampled_from([spec.name for spec in backend_type.settings]), max_size=3,
                          unique=True))
    return backend_id, draw(texts), {name: draw(values) for name in names}


async def _edit_then_compare(path: str, edit: tuple[int, str, dict[str, Any]]) -> None:
    backend_id, title, changes = edit
    async with trio.open_nursery() as nursery:
        fleet = Fleet(path, nursery)
        await fleet.start()
        try:
            await fleet.edit(backend_id, title=title, settings=changes)
        except FleetError:
            pass  # refused by validation: then nothing changed, which the comparison below checks too
        with open(path, "rb") as handle:
            on_disk = backends_file.parse(path, handle.read())
        memory = {backend.id: backend.definition for backend in fleet.backends()}
        assert dict(on_disk.backends) == memory
        assert plan(memory, on_disk.backends) == []
        # A hand edit that changes nothing (a comment) is read and applied: nothing restarts or changes.
        modcounts = {backend.id: backend.modcount for backend in fleet.backends()}
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("# a comment\n")
        assert await fleet.reload() is True
        assert {backend.id: backend.definition for backend in fleet.backends()} == memory
        assert {backend.id: backend.modcount for backend in fleet.backends()} == modcounts
        await fleet.shutdown()
        nursery.cancel_scope.cancel()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(edit=edits())
def test_api_write_then_parse_equals_memory(tmp_path_factory: Any, edit: tuple[int, str, dict[str, Any]]) -> None:
    path = tmp_path_factory.mktemp("fleet") / "backends.yaml"
    path.write_text(backend_yaml(FLEET))
    trio.run(_edit_then_compare, str(path), edit)
