"""Arbitrary JSON bodies against every route of a real daemon (hypothesis).

For each body: the answer is JSON; an object body never gets an internal error (that would be a crash in a
handler or the Fleet); the backends file is valid after every call; the daemon is alive at the end and its
log holds no traceback (checked when the module's daemon stops).

Values are biased towards the ones that reach deep (real ids, "all", the type id, setting names), and
settings never carry a command line or anything that would make the test slow or unsafe: a random command
would run random programs.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmd.api.routes import ROUTES
from tests.helpers import Daemon

# DeleteBackend last, so the other routes meet the fleet's backends (ids 0 and 1) before it deletes them.
ROUTE_NAMES = sorted((route.name for route in ROUTES.values()), key=lambda name: (name == "DeleteBackend", name))
ROUTE_NAMES.append("NoSuchRoute")
#: Settings a random edit may touch: harmless values, quick to apply.
SAFE_SETTINGS = ["port", "restart", "restart_delay", "restart_delay_max", "start_limit_burst", "max_usages",
                 "stable_after", "start_limit_interval"]
#: Settings the test never sends (random programs, paths, probes, signals, hosts).
UNSAFE_SETTINGS = {"command", "cwd", "env", "ready_check", "free_memory", "stop_signal", "stop_timeout",
                   "ready_timeout"}

scalars = (st.none() | st.booleans() | st.integers(-(2**40), 2**40)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
ids = st.sampled_from([0, 1, 2, 3, "0", "1", " 2 ", -1, "-1", 99, 2**31, -(2**31) - 1, 0.0, "1.5", True])
flags = st.sampled_from([True, False, "true", "False", " TRUE ", "1", 1, 0, None, "yes"])
setting_values = st.sampled_from(["0", "1", "70000", "-5", "always", "never", "on-failure", "nope", True, None,
                                  0.5, "0.5", 3, "\t<secret>"]) | scalars
settings_objects = st.dictionaries(
    st.sampled_from(SAFE_SETTINGS) | st.text(max_size=8).filter(lambda k: k not in UNSAFE_SETTINGS),
    setting_values,
    max_size=4,
)
log_types = st.sampled_from(["backend-0", "backend-1", "backend-2", "backend-01", "x", ""])
def mostly(good: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` about three times in four, else `other` (plain `|` spreads evenly, and the odd values would
    stop most calls at the parameter checks)."""
    return st.integers(0, 3).flatmap(lambda n: other if n == 3 else good)


#: One strategy per parameter name; a route's bodies draw any subset of its parameters plus random keys.
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "backend_id": mostly(ids, scalars),
    "new_id": mostly(ids, scalars),
    "type_id": mostly(st.just("process"), st.sampled_from(["Process", "nope", "", None]) | scalars),
    "title": mostly(st.text(max_size=20), json_values),
    "enabled": mostly(st.sampled_from([True, False, "true", "False", " TRUE "]), flags | scalars),
    "system_ram": mostly(st.booleans(), flags),
    "force": mostly(st.booleans(), flags),
    "nonreal": mostly(st.booleans(), flags),
    "full_data": mostly(st.booleans(), flags),
    "backend": mostly(st.sampled_from(["all", "0", "1", " 1", 0, 1]), st.sampled_from(["ALL", "x", "", None]) | scalars),
    "settings": mostly(settings_objects, json_values),
    "raw_inp": mostly(settings_objects, json_values),
    "types": mostly(st.lists(mostly(log_types, scalars), max_size=3), json_values),
    "last_sequence_ids": mostly(st.dictionaries(log_types, mostly(ids, scalars), max_size=2), json_values),
    # Kept small: a long poll on a quiet log would wait this long.
    "wait_seconds": st.sampled_from([0, 0.01, "0.02", -1, "x", None, [], "NaN"]),
    "session_id": scalars,
}
EXTRA_PARAMS = {
    "addnewbackend": ("title", "settings"),
    "editbackend": ("settings", "raw_inp"),
    "listrecentlogmessages": ("types", "last_sequence_ids", "wait_seconds"),
}


def route_bodies(route_name: str) -> st.SearchStrategy[dict[str, Any]]:
    route = ROUTES.get(route_name.lower())
    names = [p.name for p in route.params] if route else []
    names += [n for n in EXTRA_PARAMS.get(route_name.lower(), ()) if n not in names]
    names.append("session_id")
    required = [p.name for p in route.params if p.required] if route else []
    if route_name.lower() == "editbackend":
        required.append("settings")
    declared = st.fixed_dictionaries({name: VALUES[name] for name in required},
                                     optional={name: VALUES[name] for name in names if name not in required})
    extra = st.dictionaries(st.text(max_size=8).filter(lambda k: k not in VALUES), json_values, max_size=2)
    # Now and then drop one required parameter; most bodies reach the handler.
    drop = st.integers(0, 7)

    def combine(parts: tuple[dict[str, Any], dict[str, Any], int]) -> dict[str, Any]:
        body, more, index = parts
        # Hypothesis favours small numbers, so the high ones drop (7 -> the first required, 6 -> ...).
        if 7 - index < len(required):
            body = {k: v for k, v in body.items() if k != required[7 - index]}
        return {**more, **body}

    return st.tuples(declared, extra, drop).map(combine)


_checked: set[bytes] = set()


def assert_file_valid(daemon: Daemon) -> None:
    """The backends file parses and validates (parsing is slow: each distinct content is checked once)."""
    data = daemon.file_bytes()
    if data not in _checked:
        daemon.file_is_valid()
        _checked.add(data)


def _no_unsafe_settings(body: dict[str, Any]) -> bool:
    for key in ("settings", "raw_inp"):
        value = body.get(key)
        if isinstance(value, dict) and UNSAFE_SETTINGS & value.keys():
            return False
    return True


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Any:
    with daemon.client(timeout=60) as http:
        yield http


@pytest.mark.parametrize("route", ROUTE_NAMES)
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_arbitrary_object_bodies(daemon: Daemon, client: httpx.Client, route: str, data: st.DataObject) -> None:
    body = data.draw(route_bodies(route).filter(_no_unsafe_settings), label="body")
    response = client.post(f"/API/{route}", json=body)
    answer = response.json()  # never anything but JSON
    assert isinstance(answer, dict)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert answer.get("error_id") in ("bad_route", "bad_permissions"), answer
    assert answer.get("error_id") != "internal_error", (route, body, answer)
    assert_file_valid(daemon)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(route=st.sampled_from(ROUTE_NAMES), payload=json_values | st.binary(max_size=64))
def test_arbitrary_payloads(daemon: Daemon, client: httpx.Client, route: str, payload: Any) -> None:
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = client.post(f"/API/{route}", content=content, headers={"content-type": "application/json"})
    answer = response.json()
    assert response.status_code in (200, 400)
    try:
        decoded = json.loads(content)
    except ValueError:
        decoded = None
    if not isinstance(decoded, dict):  # not a JSON object (random bytes rarely are one): always refused
        assert answer["error_id"] in ("internal_error", "bad_route"), (route, content, answer)
    assert_file_valid(daemon)


def test_daemon_survived(daemon: Daemon) -> None:
    assert daemon.proc.poll() is None
    listed = daemon.ok("ListBackends")  # HTTP 200, no error (the fuzz may have deleted every backend)
    assert all(str(backend["id"]) == key for key, backend in listed.items())
