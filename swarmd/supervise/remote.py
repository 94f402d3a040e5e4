"""The monitor of a backend that swarmd does not start (e.g. `comfyui_api`): health checks only.

It polls the backend's health URL on its `check_interval` -- a remote process gives us no exit to wait
for -- and moves the backend between `running` and `errored` (or `idle` with allow_idle) as the remote
comes and goes. It offers the same control surface as `Supervisor`, so the Fleet treats both alike.
"""

from __future__ import annotations

import logging
import time

import trio

from swarmd.httpclient import HttpError, request
from swarmd.supervise.supervisor import BackendTask

log = logging.getLogger("swarmd.remote")


class RemoteMonitor(BackendTask):
    """Health-checks one remote backend until stopped (restart = check again at once)."""

    async def free_memory(self, system_ram: bool) -> bool:
        url = self.type.free_url(self.settings)
        if not url:
            return False
        try:
            response = await request("POST", url, json_body=self.type.free_body(system_ram), timeout=30.0)
        except HttpError as err:
            log.warning("%s: free memory: %s", self._label(), err)
            return False
        return 200 <= response.status < 300

    def _set(self, status: str, message: str) -> None:
        if (self.runtime.status, self.runtime.status_message) != (status, message):
            self.runtime.status, self.runtime.status_message = status, message
            self.ring.append("swarmd", f"{status}: {message}" if message else status)
            log.info("%s: %s%s", self._label(), status, f" ({message})" if message else "")
            self._on_change()

    async def _loop(self) -> None:
        url = self.type.health_url(self.settings)
        if not url:
            self._set("disabled", "No address set: edit the backend's 'address' setting.")
            await trio.sleep_forever()
        interval = float(self.settings.get("check_interval", 5.0))
        while True:
            try:
                response = await request("GET", url, timeout=max(interval, 2.0))
                healthy = 200 <= response.status < 300
                problem = "" if healthy else f"{url} answered HTTP {response.status}"
            except HttpError as err:
                healthy, problem = False, str(err)
            if healthy:
                if self.runtime.status != "running":
                    self.runtime.ready_at = time.time()
                self._set("running", "")
            else:
                idle = bool(self.settings.get("allow_idle"))
                self._set("idle" if idle else "errored", f"unreachable: {problem}")
            self._kick = trio.Event()
            with trio.move_on_after(interval):
                await self._kick.wait()
