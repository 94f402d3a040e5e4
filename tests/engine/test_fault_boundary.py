"""A fault boundary per backend: whatever one backend's code raises settles that backend `errored` with
the exception named; the daemon answers and every other backend keeps its process. A real Fleet with real
children and the API on a real socket, plus a backend type whose launch raises."""

from __future__ import annotations

import json
import os
import sys
from functools import partial
from typing import Any

import trio

from swarmd.api.server import serve_api
from swarmd.ctl import Client
from swarmd.fleet import Fleet
from swarmd.supervise.process import Guardian
from swarmd.types import TYPES, LaunchSpec
from swarmd.types.process import ProcessType
from tests.helpers import backend_yaml, eventually, running, status

SLEEPER = f"{sys.executable} -c 'import time; time.sleep(600)'"


class ExplodingType(ProcessType):
    """A type whose launch raises what no type should (a bug of ours, or a third-party type's)."""

    id = "exploding"
    name = "Exploding"

    def launch(self, settings: dict[str, Any], port: int) -> LaunchSpec:
        raise ValueError("Port out of range 0-65535")


async def call(sock: str, route: str, body: Any = None) -> Any:
    def blocking() -> Any:
        client = Client(sock, timeout=20)
        try:
            return client.call_raw(route, json.dumps(body or {}).encode())
        finally:
            client.close()

    return await trio.to_thread.run_sync(blocking)


async def test_a_launch_that_raises_errors_only_its_backend_and_the_daemon_answers(nursery, tmp_path):
    path = tmp_path / "backends.yaml"
    path.write_text(backend_yaml({0: {"settings": {"command": SLEEPER}},
                                  1: {"type": "exploding", "settings": {"command": SLEEPER}},
                                  2: {"settings": {"command": SLEEPER}}}))
    guardian = Guardian()
    guardian.start()
    try:
        fleet = Fleet(str(path), nursery, guardian, types={**TYPES, "exploding": ExplodingType()})
        await fleet.start()
        sock = str(tmp_path / "swarmd.sock")
        await nursery.start(partial(serve_api, fleet, sock))
        pids = {0: await running(fleet, 0), 2: await running(fleet, 2)}
        await eventually(lambda: status(fleet, 1) == "errored", what="the exploding backend errored")
        answer = await call(sock, "ListBackends", {"full_data": True})
        assert answer["1"]["status"] == "errored"
        assert answer["1"]["status_message"].startswith(
            "internal error: start: ValueError: Port out of range 0-65535")
        assert {k: answer[str(k)]["pid"] for k in pids} == pids
        # A restart tries again and fails the same way; the others are untouched, the daemon answers.
        assert (await call(sock, "RestartBackends", {"backend": "1"}))["count"] == 1
        await eventually(lambda: status(fleet, 1) == "errored" and fleet.get(1).lifecycle.starts == 0)
        assert {k: fleet.get(k).pid for k in pids} == pids
        assert all(os.path.exists(f"/proc/{pid}") for pid in pids.values())
        # (an edit restarts the backend it names, as SwarmUI's Save; the others keep their processes)
        assert (await call(sock, "EditBackend", {"backend_id": 2, "title": "still here", "settings": {}}))[
            "title"] == "still here"
        assert fleet.get(0).pid == pids[0]
        # Editing it into a type that works brings it up: the backend was never lost.
        await fleet.edit(1, title="fixed", settings={})
        with open(path) as handle:
            text = handle.read().replace("type: exploding", "type: process")
        with open(path, "w") as handle:
            handle.write(text)
        await fleet.reload()
        await running(fleet, 1)
        await fleet.shutdown()
    finally:
        guardian.close()
