"""Every route against a real daemon: the documented shape for valid input, and SwarmUI's conventions."""

from __future__ import annotations

import os
import pwd
import re
import socket

import pytest

import swarmd
from tests.helpers import SLEEPER, Daemon, machine_gpus, wait_until

BACKEND_FIELDS = {
    "type", "status", "id", "settings", "modcount", "features", "enabled", "title", "max_usages",
    "seconds_since_used", "time_since_used", "can_load_models",
}
FULL_DATA_FIELDS = {"current_model", "pid", "port", "restarts", "last_exit", "status_message", "gpus"}
STATUSES = {"disabled", "errored", "waiting", "loading", "idle", "running"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$")


def check_backend(obj: dict, *, full: bool = False) -> None:
    assert BACKEND_FIELDS <= obj.keys(), obj
    if full:
        assert FULL_DATA_FIELDS <= obj.keys(), obj
    else:
        assert not (FULL_DATA_FIELDS & obj.keys()), obj
    assert isinstance(obj["id"], int)
    assert obj["status"] in STATUSES
    assert isinstance(obj["settings"], dict)
    assert isinstance(obj["modcount"], int)
    assert isinstance(obj["features"], list)
    assert isinstance(obj["enabled"], bool)
    assert isinstance(obj["title"], str)
    assert isinstance(obj["max_usages"], int)
    assert isinstance(obj["can_load_models"], bool)


def add_sleeper(daemon: Daemon, title: str = "extra") -> dict:
    return daemon.ok("AddNewBackend", {"type_id": "process", "title": title, "settings": {"command": SLEEPER}})


# -- one test per route ----------------------------------------------------------------------------------


def test_list_backend_types(daemon: Daemon) -> None:
    answer = daemon.ok("ListBackendTypes")
    assert set(answer) == {"list"}
    entry = next(e for e in answer["list"] if e["id"] == "process")
    assert {"id", "name", "description", "settings", "is_standard"} <= entry.keys()
    for setting in entry["settings"]:
        assert {"name", "type", "description", "placeholder", "values", "value_names", "is_secret"} <= setting.keys()
        assert setting["type"] in {"text", "integer", "decimal", "boolean", "dropdown", "group"}
        if setting["type"] != "dropdown":
            assert setting["values"] is None and setting["value_names"] is None


def test_list_backends(daemon: Daemon) -> None:
    answer = daemon.ok("ListBackends")
    assert list(answer) == sorted(answer, key=int)
    assert {"0", "1"} <= answer.keys()
    for key, obj in answer.items():
        check_backend(obj)
        assert str(obj["id"]) == key
    full = daemon.ok("ListBackends", {"full_data": "true", "nonreal": True})
    for obj in full.values():
        check_backend(obj, full=True)
    running = wait_until(lambda: daemon.backend(0)["status"] == "running" and daemon.backend(0),
                         what="backend 0 running")
    assert isinstance(running["pid"], int) and running["pid"] > 0


def test_add_new_backend(daemon: Daemon) -> None:
    before = set(daemon.ok("ListBackends"))
    answer = daemon.ok("AddNewBackend", {"type_id": "process"})
    check_backend(answer)
    assert str(answer["id"]) not in before
    assert answer["type"] == "process" and answer["enabled"] is True and answer["modcount"] == 0
    assert answer["id"] in daemon.file_is_valid().backends  # on disk before the answer
    # swarmd's extension: title and settings in the same atomic change.
    extra = add_sleeper(daemon, "with settings")
    assert extra["title"] == "with settings" and extra["settings"]["command"] == SLEEPER
    assert extra["id"] > answer["id"]
    assert daemon.file_bytes().startswith(b"# The API tests' fleet.")


def test_edit_backend(daemon: Daemon) -> None:
    added = add_sleeper(daemon, "to edit")
    backend_id = added["id"]
    refused = daemon.api("EditBackend", {"backend_id": backend_id, "title": "edited",
                                         "settings": {"restart": "always", "prot": "0"}})
    assert refused == {"error": "unknown setting 'prot' for type 'process' (did you mean 'port'?)"}
    answer = daemon.ok("EditBackend", {"backend_id": backend_id, "title": "edited",
                                        "settings": {"restart": "always", "port": "0"}})
    check_backend(answer)
    assert answer["title"] == "edited" and answer["modcount"] == 1
    assert answer["settings"]["restart"] == "always"
    definition = daemon.file_is_valid().backends[backend_id]
    assert definition.title == "edited" and definition.settings["restart"] == "always"
    # The contract's name for the object, raw_inp, is accepted too; new_id re-keys it.
    new_id = max(int(k) for k in daemon.ok("ListBackends")) + 10
    moved = daemon.ok("EditBackend", {"backend_id": str(backend_id), "title": "", "raw_inp": {},
                                       "new_id": new_id})
    assert moved["id"] == new_id and moved["title"] == "" and moved["modcount"] == 2
    listed = daemon.ok("ListBackends")
    assert str(new_id) in listed and str(backend_id) not in listed
    # new_id equal to backend_id means "keep the id".
    same = daemon.ok("EditBackend", {"backend_id": new_id, "title": "t", "settings": {}, "new_id": new_id})
    assert same["id"] == new_id
    # The next add never collides with a moved id.
    assert add_sleeper(daemon)["id"] > new_id


def test_delete_backend(daemon: Daemon) -> None:
    added = add_sleeper(daemon, "to delete")
    pid = wait_until(lambda: (daemon.backend(added["id"]) or {}).get("pid"), what="a pid")
    assert daemon.ok("DeleteBackend", {"backend_id": added["id"]}) == {"result": "Deleted."}
    assert added["id"] not in daemon.file_is_valid().backends
    with pytest.raises(ProcessLookupError):  # stopped before the answer
        _signal0(pid)
    assert daemon.ok("DeleteBackend", {"backend_id": added["id"]}) == {"result": "Already didn't exist."}


def test_toggle_backend(daemon: Daemon) -> None:
    added = add_sleeper(daemon, "to toggle")
    backend_id = added["id"]
    assert daemon.ok("ToggleBackend", {"backend_id": backend_id, "enabled": "False"}) == {"result": "Success."}
    assert daemon.backend(backend_id)["status"] == "disabled"
    assert daemon.file_is_valid().backends[backend_id].enabled is False
    assert daemon.ok("ToggleBackend", {"backend_id": backend_id, "enabled": False}) == {"result": "No change."}
    assert daemon.ok("ToggleBackend", {"backend_id": backend_id, "enabled": True}) == {"result": "Success."}
    assert daemon.file_is_valid().backends[backend_id].enabled is True


def test_restart_backends(daemon: Daemon) -> None:
    pid = wait_until(lambda: daemon.backend(0)["status"] == "running" and daemon.backend(0)["pid"],
                     what="backend 0 running")
    answer = daemon.ok("RestartBackends", {"backend": 0})
    assert answer == {"result": "Success.", "count": 1}
    # the restart is the only thing that can give backend 0 another pid
    wait_until(lambda: daemon.backend(0)["pid"] not in (None, pid), what="backend 0 under a new pid")
    assert daemon.ok("RestartBackends", {"backend": "12345"}) == {"result": "Success.", "count": 0}


def test_free_backend_memory(daemon: Daemon) -> None:
    wait_until(lambda: daemon.backend(0)["status"] == "running", what="backend 0 running")
    answer = daemon.ok("FreeBackendMemory", {"system_ram": True, "backend": "all"})
    assert answer == {"result": True, "count": 0}  # running backends were asked; none has a free_memory hook
    assert daemon.ok("FreeBackendMemory", {"backend": "12345"}) == {"result": False, "count": 0}


def test_get_new_session(daemon: Daemon) -> None:
    answer = daemon.ok("GetNewSession", {"session_id": "whatever"})
    assert re.fullmatch(r"[0-9A-F]{40}", answer["session_id"])
    assert answer["user_id"] == user_name(os.getuid())
    assert answer["version"] == swarmd.__version__
    assert answer["permissions"] == ["*"]  # the tests run as root: owner
    assert {"output_append_user", "server_id"} <= answer.keys()
    assert daemon.ok("GetNewSession")["server_id"] == answer["server_id"]


def test_list_log_types(daemon: Daemon) -> None:
    # SwarmUI's six level logs, then one per backend (tests/api/test_api_logs.py has the details).
    answer = daemon.ok("ListLogTypes")
    assert set(answer) == {"types_available"}
    names = [t["name"] for t in answer["types_available"]]
    assert names[:6] == ["Verbose", "Debug", "Info", "Init", "Warning", "Error"]
    types = {t["identifier"]: t for t in answer["types_available"]}
    assert types["backend-1"] == {"name": "Process-1", "color": "#707070", "identifier": "backend-1"}
    for entry in answer["types_available"]:
        assert re.fullmatch(r"#[0-9a-fA-F]{6}", entry["color"])


def test_list_recent_log_messages(daemon: Daemon) -> None:
    def lines() -> list[dict]:
        answer = daemon.ok("ListRecentLogMessages", {"types": ["Process-1"], "last_sequence_ids": {}})
        return answer["data"]["Process-1"]

    first = wait_until(lambda: len(lines()) >= 2 and lines(), what="ticker output")
    for line in first:
        assert TIMESTAMP.match(line["time"]) and isinstance(line["sequence_id"], int)
    assert [m["sequence_id"] for m in first] == sorted(m["sequence_id"] for m in first)
    assert any(m["message"].startswith("tick ") for m in first)
    last = first[-1]["sequence_id"]
    answer = daemon.ok("ListRecentLogMessages", {"types": ["Process-1", "Process-999", "other"],
                                                  "last_sequence_ids": {"Process-1": last}, "wait_seconds": 5})
    assert set(answer) == {"types_available", "last_sequence_id", "data"}
    assert set(answer["data"]) == {"Process-1"}  # unknown types are left out
    assert answer["data"]["Process-1"] and all(m["sequence_id"] > last for m in answer["data"]["Process-1"])
    assert answer["last_sequence_id"] >= answer["data"]["Process-1"][-1]["sequence_id"]
    # A mark the counter never reached (a client of an earlier daemon): the log starts over, no waiting.
    again = daemon.ok("ListRecentLogMessages", {"types": ["Process-1"], "last_sequence_ids": {"Process-1": 10**9},
                                                "wait_seconds": 20})
    assert again["data"]["Process-1"][0]["sequence_id"] <= first[0]["sequence_id"]


def test_get_server_resource_info(daemon: Daemon) -> None:
    answer = daemon.ok("GetServerResourceInfo")
    assert 0.0 <= answer["cpu"]["usage"] <= 1.0 and answer["cpu"]["cores"] >= 1
    ram = answer["system_ram"]
    assert ram["total"] > 0 and ram["used"] + ram["free"] == ram["total"]
    # The daemon's GPU hook reports this machine's GPUs over NVML; SwarmUI leaves "gpus" out without any.
    gpus = machine_gpus()
    if gpus:
        assert sorted(answer["gpus"], key=int) == [str(g.index) for g in gpus]
        assert {entry["uuid"] for entry in answer["gpus"].values()} == {g.uuid for g in gpus}
    else:
        assert "gpus" not in answer


def test_get_daemon_status(daemon: Daemon) -> None:
    answer = daemon.ok("GetDaemonStatus")
    assert answer["backends_file"] == str(daemon.backends)
    assert answer["file_problem"] is None
    assert answer["version"] == swarmd.__version__
    assert sum(answer["counts"].values()) == len(daemon.ok("ListBackends"))


# -- conventions -----------------------------------------------------------------------------------------


def test_route_names_are_case_insensitive(daemon: Daemon) -> None:
    # (the ids: a status may change between the two calls)
    assert daemon.ok("listbackends").keys() == daemon.ok("LISTBACKENDS").keys() == daemon.ok("ListBackends").keys()


def test_answers_are_not_cached(daemon: Daemon) -> None:
    assert daemon.call("ListBackends").headers["cache-control"] == "no-store"
    assert daemon.call("NoSuchRoute").headers["cache-control"] == "no-store"


def test_session_id_is_accepted_never_required(daemon: Daemon) -> None:
    assert daemon.call("ListBackends", {"session_id": "nonsense"}).status_code == 200
    assert daemon.call("ListBackends", headers={"X-Session-ID": "nonsense"}).status_code == 200


def test_json_content_types_as_swarmui_takes_them(daemon: Daemon) -> None:
    for content_type in ("application/json", "application/json; charset=utf-8", "application/vnd.swarm+json"):
        with daemon.client() as client:
            response = client.post("/API/ListBackends", content=b"{}", headers={"content-type": content_type})
        assert response.status_code == 200 and "0" in response.json(), content_type


def test_unknown_parameters_are_ignored(daemon: Daemon) -> None:
    assert "0" in daemon.ok("ListBackends", {"whatever": [1, 2], "full_data": False})


@pytest.mark.parametrize(
    ("method", "path", "headers", "content", "status", "error_id", "error"),
    [
        # SwarmUI redirects any other method to its error page (the JSON body says why, for scripts)
        ("GET", "/API/ListBackends", {}, b"", 302, "basic_api", None),
        ("PUT", "/API/ListBackends", {"content-type": "application/json"}, b"{}", 302, "basic_api", None),
        ("POST", "/API/ListBackends", {"content-type": "text/plain"}, b"{}", 400, "basic_api", "Wrong content type"),
        ("POST", "/API/ListBackends", {}, b"{}", 400, "basic_api", "Wrong content type"),
        ("POST", "/API/ListBackends", {"content-type": "application/json"}, b"{nope", 400, "internal_error",
         "An internal error occurred"),
        ("POST", "/API/ListBackends", {"content-type": "application/json"}, b"", 400, "internal_error", None),
        ("POST", "/API/ListBackends", {"content-type": "application/json"}, b"[1, 2]", 400, "internal_error", None),
        ("POST", "/API/ListBackends", {"content-type": "application/json"}, b"\xff\xfe", 400, "internal_error", None),
        ("POST", "/API/ListBackends", {"content-type": "application/json"}, b"[" * 100000, 400, "internal_error", None),
        ("POST", "/API/NoSuchRoute", {"content-type": "application/json"}, b"{}", 400, "bad_route",
         "Unknown API route"),
        ("POST", "/API/ListBackends/x", {"content-type": "application/json"}, b"{}", 400, "bad_route", None),
        ("POST", "/elsewhere", {"content-type": "application/json"}, b"{}", 404, "not_found", None),
        ("POST", "/API/ListBackends", {"content-type": "application/json"}, b" " * (2 * 1024 * 1024), 413,
         "basic_api", None),
    ],
)
def test_transport_errors(daemon: Daemon, method: str, path: str, headers: dict, content: bytes, status: int,
                          error_id: str, error: str | None) -> None:
    before = daemon.file_bytes()
    with daemon.client() as client:
        response = client.request(method, path, headers=headers, content=content)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        if status == 302:
            assert response.headers["location"] == "/Error/NoGetAPI"
        answer = response.json()
        assert answer["error_id"] == error_id
        if error is not None:
            assert answer["error"] == error
        if status != 413:
            # The connection stays usable (the body was read before answering: no keep-alive hang).
            assert client.post("/API/ListBackends", json={}, timeout=5).status_code == 200
    assert daemon.file_bytes() == before


def test_streamed_oversized_body_is_refused_with_json(daemon: Daemon) -> None:
    # No Content-Length: the cap applies while the body streams in.
    def chunks():
        for _ in range(40):
            yield b" " * 65536

    with daemon.client() as client:
        response = client.post("/API/ListBackends", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error_id"] == "basic_api"


def test_garbage_on_the_socket_does_not_hurt(daemon: Daemon) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.connect(str(daemon.socket))
        raw.sendall(b"\x00\x01garbage\r\n\r\n")
        raw.settimeout(5)
        try:
            raw.recv(4096)
        except OSError:
            pass
    assert {"0", "1"} <= daemon.ok("ListBackends").keys()


def _signal0(pid: int) -> None:
    os.kill(pid, 0)


def user_name(uid: int) -> str:
    """What GetNewSession calls the caller: its user name, else uid-N."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid-{uid}"
