"""Each error path of each route: the documented error, HTTP 200, and the backends file byte-identical.

The daemon runs the default fleet (backends 0 and 1). No test in this module changes anything, so the file
must stay exactly as written.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import DEFAULT_BACKENDS, Daemon


def invalid(value: str, name: str, type_name: str) -> str:
    return f"Invalid value '{value}' for parameter '{name}', must be type '{type_name}'"


def missing(name: str) -> str:
    return f"Missing required parameter '{name}'"


ERRORS: list[tuple[str, dict[str, Any], str]] = [
    # ListBackends
    ("ListBackends", {"nonreal": "maybe"}, invalid("maybe", "nonreal", "Boolean")),
    ("ListBackends", {"full_data": 1}, invalid("1", "full_data", "Boolean")),
    ("ListBackends", {"nonreal": "x", "full_data": "y"}, invalid("x", "nonreal", "Boolean")),  # declaration order
    # AddNewBackend
    ("AddNewBackend", {}, missing("type_id")),
    ("AddNewBackend", {"type_id": "nope"}, "Invalid backend type: nope"),
    ("AddNewBackend", {"type_id": None}, "Invalid backend type: "),
    ("AddNewBackend", {"type_id": "Process"}, "Invalid backend type: Process"),
    ("AddNewBackend", {"type_id": "process", "settings": {"port": "abc"}},
     "Invalid value for setting 'port': expected an integer, got 'abc'"),
    ("AddNewBackend", {"type_id": "process", "settings": "x"}, invalid("x", "settings", "JObject")),
    # EditBackend
    ("EditBackend", {}, missing("backend_id")),
    ("EditBackend", {"title": "t", "settings": {}}, missing("backend_id")),
    ("EditBackend", {"backend_id": "zero"}, invalid("zero", "backend_id", "Int32")),
    ("EditBackend", {"backend_id": 0.5, "title": "t", "settings": {}}, invalid("0.5", "backend_id", "Int32")),
    ("EditBackend", {"backend_id": 2**31, "title": "t", "settings": {}}, invalid(str(2**31), "backend_id", "Int32")),
    ("EditBackend", {"backend_id": 0}, missing("title")),
    ("EditBackend", {"backend_id": 0, "title": "t", "new_id": "z"}, invalid("z", "new_id", "Int32")),
    ("EditBackend", {"backend_id": 0, "title": "t"}, "Missing settings."),
    ("EditBackend", {"backend_id": 0, "title": "t", "settings": "x"}, "Missing settings."),
    ("EditBackend", {"backend_id": 0, "title": "t", "settings": None, "raw_inp": {}}, "Missing settings."),
    ("EditBackend", {"backend_id": 0, "title": "t", "settings": [1]}, "Missing settings."),
    ("EditBackend", {"backend_id": 99, "title": "t", "settings": {}}, "Invalid backend ID 99"),
    ("EditBackend", {"backend_id": 0, "title": "t", "settings": {}, "new_id": 1}, "Backend ID 1 is already in use."),
    ("EditBackend", {"backend_id": 99, "title": "t", "settings": {}, "new_id": "1"}, "Backend ID 1 is already in use."),
    ("EditBackend", {"backend_id": 0, "title": "t", "settings": {"port": "abc"}},
     "Invalid value for setting 'port': expected an integer, got 'abc'"),
    ("EditBackend", {"backend_id": 0, "title": "t", "settings": {"port": 5.5}},
     "Invalid value for setting 'port': expected an integer, got '5.5'"),
    ("EditBackend", {"backend_id": 0, "title": "t", "settings": {"restart": "sometimes"}},
     "Invalid value for setting 'restart': "),
    ("EditBackend", {"backend_id": 0, "title": "t", "settings": {"command": "python3 'unclosed"}},
     "Invalid value for setting 'command': "),
    # DeleteBackend
    ("DeleteBackend", {}, missing("backend_id")),
    ("DeleteBackend", {"backend_id": "1e3"}, invalid("1e3", "backend_id", "Int32")),
    ("DeleteBackend", {"backend_id": True}, invalid("True", "backend_id", "Int32")),
    # ToggleBackend
    ("ToggleBackend", {}, missing("backend_id")),
    ("ToggleBackend", {"backend_id": 0}, missing("enabled")),
    ("ToggleBackend", {"backend_id": 0, "enabled": 1}, invalid("1", "enabled", "Boolean")),
    ("ToggleBackend", {"backend_id": 0, "enabled": "yes"}, invalid("yes", "enabled", "Boolean")),
    ("ToggleBackend", {"backend_id": 99, "enabled": True}, "Invalid backend ID 99"),
    ("ToggleBackend", {"backend_id": "x", "enabled": "y"}, invalid("x", "backend_id", "Int32")),
    # FreeBackendMemory (RestartBackends takes any text: unknown ids restart nothing, no error)
    ("FreeBackendMemory", {"system_ram": "maybe"}, invalid("maybe", "system_ram", "Boolean")),
    # Logs
    ("ListRecentLogMessages", {}, missing("types")),
    ("ListRecentLogMessages", {"types": "backend-0"}, invalid("backend-0", "types", "JArray")),
    ("ListRecentLogMessages", {"types": ["backend-0"], "last_sequence_ids": []},
     invalid("[]", "last_sequence_ids", "JObject")),
    ("ListRecentLogMessages", {"types": ["backend-0"], "last_sequence_ids": {"backend-0": "x"}},
     invalid("x", "last_sequence_ids.backend-0", "Int64")),
    ("ListRecentLogMessages", {"types": ["backend-0"], "wait_seconds": "soon"}, invalid("soon", "wait_seconds", "Double")),
]


@pytest.mark.parametrize(("route", "body", "error"), ERRORS, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(ERRORS)])
def test_error_path(daemon: Daemon, route: str, body: dict[str, Any], error: str) -> None:
    before = daemon.file_bytes()
    response = daemon.call(route, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"error"}, answer
    if error.endswith(": ") or error.endswith("type: "):
        assert answer["error"].startswith(error), answer
    else:
        assert answer["error"] == error
    assert daemon.file_bytes() == before


def test_file_untouched_after_all_errors(daemon: Daemon) -> None:
    # Runs last in this module: nothing above changed the file, the running fleet, or its ids.
    assert daemon.file_bytes() == DEFAULT_BACKENDS.encode()
    listed = daemon.ok("ListBackends")
    assert set(listed) == {"0", "1"}
    assert listed["0"]["title"] == "sleeper" and listed["0"]["modcount"] == 0
