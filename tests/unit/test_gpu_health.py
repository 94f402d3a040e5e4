"""GPU health (issue #16): critical Xid events and GPUs that NVML no longer reaches are watched in a worker
thread, never on the event loop; a failed GPU is named in the log and in GetServerResourceInfo, the backends
running on it are told (their status says which GPU), and `auto` never places a start on it.

No GPU is at hand, so failures are injected at the two boundaries swarmd has: the inventory's
(`StaticInventory.inject`, for the Fleet) and NVML's (a fake `pynvml` module, for the real watch code)."""

from __future__ import annotations

import logging
import sys
import threading
from types import SimpleNamespace

import pytest
import trio

from swarmd import gpu
from swarmd.gpu import GPU, GpuFailure, HealthEvent, PinError, StaticInventory
from tests.helpers import eventually, running, status
from tests.unit.test_gpu import FakeNvml, nvml_module

A = "GPU-11111111-0000-4000-8000-000000000000"
B = "GPU-22222222-1111-4000-8000-111111111111"


@pytest.fixture
def two_gpus():
    """GPU 0 and GPU 1 (the one with more free memory: `auto` prefers it, all else equal)."""
    inv = StaticInventory(gpu_list=[GPU(0, A, "H200", "00000000:17:00.0", memory_total=140 << 30,
                                        memory_free=100 << 30),
                                    GPU(1, B, "H200", "00000000:65:00.0", memory_total=140 << 30,
                                        memory_free=120 << 30)])
    gpu.set_inventory(inv)
    yield inv
    gpu.set_inventory(None)


# -- what an event means ----------------------------------------------------------------------------------------


def test_which_events_mean_a_failed_gpu():
    assert gpu.failure_reason(HealthEvent(B, xid=79)) == "Xid 79 (GPU has fallen off the bus)"
    assert gpu.failure_reason(HealthEvent(B, xid=48)) == "Xid 48 (double-bit ECC error)"
    assert gpu.failure_reason(HealthEvent(B, xid=154)) == "Xid 154"  # critical, by its number
    for application_xid in (13, 31, 43, 45, 68, 109):  # a program's own error: the GPU is fine
        assert gpu.failure_reason(HealthEvent(B, xid=application_xid)) is None
    assert gpu.failure_reason(HealthEvent(B, lost="NVMLError_GpuIsLost: GPU is lost")) == (
        "stopped answering NVML (NVMLError_GpuIsLost: GPU is lost)")


def test_placement_skips_a_failed_gpu_and_an_explicit_pin_to_it_fails(two_gpus, caplog):
    caplog.set_level(logging.INFO, logger="swarmd.gpu")
    assert gpu.place("auto", {}).visible == B
    assert gpu.record_failure(HealthEvent(B, xid=13)) is None and gpu.place("auto", {}).visible == B
    failure = gpu.record_failure(HealthEvent(B, xid=79))
    assert isinstance(failure, GpuFailure) and failure.label() == f"1 (H200, {B})"
    assert gpu.record_failure(HealthEvent(B, xid=79)) is None  # known already: said once
    assert gpu.place("auto", {A: 7}).visible == A  # however busy GPU 0 is
    with pytest.raises(PinError, match=rf"GPU 1 \(H200, {B}\) failed: Xid 79 \(GPU has fallen off the bus\); "
                                       "not starting on it"):
        gpu.place("1", {})
    assert gpu.validate("1") == "1"  # the file stays valid: a pin is a wish, the failure a fact of now
    gpu.record_failure(HealthEvent(A, lost="NVMLError_GpuIsLost: GPU is lost"))
    with pytest.raises(PinError, match="every GPU has failed"):
        gpu.place("auto", {})
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"GPU 1 (H200, {B}) failed: Xid 79 (GPU has fallen off the bus); no backend is started on "
                      "it until swarmd restarts",
                      f"GPU 0 (H200, {A}) failed: stopped answering NVML (NVMLError_GpuIsLost: GPU is lost); no "
                      "backend is started on it until swarmd restarts"]


# -- the Fleet: backends on a failed GPU ---------------------------------------------------------------------------


async def test_xid_79_on_gpu_1_marks_its_backends_and_auto_places_on_gpu_0(two_gpus, make_fleet, caplog):
    caplog.set_level(logging.INFO)
    fleet = await make_fleet({
        0: {"settings": {"command": "sleep 600", "gpu_id": "1"}},  # pinned to GPU 1 by hand
        1: {"settings": {"command": "sleep 600", "gpu_id": "0"}},
    })
    pids = {i: await running(fleet, i) for i in range(2)}
    # Added once those two run (started together, trio's random order could place it before either):
    # GPU 1, as many backends as GPU 0 and more free memory.
    auto = await fleet.add("process", settings={"command": "sleep 600", "gpu_id": "auto"})
    assert auto.id == 2
    pids[2] = await running(fleet, 2)
    assert [fleet.get(i).shell.pin.visible for i in range(3)] == [B, A, B]

    two_gpus.inject(HealthEvent(A, xid=13))  # an application's error on GPU 0: nothing changes
    two_gpus.inject(HealthEvent(B, xid=79))
    await eventually(lambda: status(fleet, 0) == "errored", what="backend 0 settled: its GPU failed")
    message = fleet.get(0).status_message
    assert message.startswith(f"cannot pin GPUs: GPU 1 (H200, {B}) failed: Xid 79 (GPU has fallen off the bus)")
    notes = [line.text for line in fleet.get(0).ring.tail(10) if line.stream == "swarmd"]
    assert notes[0] == f"pid {pids[0]}: GPU 1 (H200, {B}) failed: Xid 79 (GPU has fallen off the bus): stopping it"

    # the `auto` backend on it starts again, on GPU 0; the one on GPU 0 was never touched
    await eventually(lambda: status(fleet, 2) == "running" and fleet.get(2).pid != pids[2], what="backend 2 moved")
    assert fleet.get(2).shell.pin.visible == A and fleet.get(2).lifecycle.restarts == 1
    assert fleet.get(1).pid == pids[1] and fleet.get(1).lifecycle.restarts == 0

    # a new `auto` backend goes to GPU 0 too, though GPU 1 has no backend left and more free memory
    added = await fleet.add("process", settings={"command": "sleep 600", "gpu_id": "auto"})
    await running(fleet, added.id)
    assert added.shell.pin.visible == A

    info = await gpu.resource_info()  # GetServerResourceInfo's "gpus"
    assert info["1"]["failed"]["reason"] == "Xid 79 (GPU has fallen off the bus)" and info["0"]["failed"] is None
    assert (f"GPU 1 (H200, {B}) failed (Xid 79 (GPU has fallen off the bus)): backends on it: backend-0, "
            "backend-2") in caplog.text
    assert "GPU 0: Xid 13, an application's error: the GPU stays in use" in caplog.text


# -- NVML's boundary: the real watch code in a worker thread ------------------------------------------------------


class FakeNVMLError(Exception):
    def __init__(self, value: int, text: str) -> None:
        super().__init__(text)
        self.value = value


class EventNvml(FakeNvml):
    """test_gpu's stand-in for `pynvml` (two GPUs; records which thread made each call), without MIG, with
    an event set fed by `xid()` and GPUs that can be `lose()`n; its texts come as bytes, as older pynvml
    versions return them."""

    NVML_ERROR_TIMEOUT = 10
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_ERROR_RESET_REQUIRED = 16
    nvmlEventTypeXidCriticalError = 0x8

    def __init__(self, events: bool = True) -> None:
        super().__init__()
        self.events_supported = events
        self.pending: list[tuple[int, int]] = []
        self.arrived = threading.Condition()
        self.lost: set[int] = set()
        self.registered: list[int] = []

    # -- what the test does --
    def xid(self, index: int, xid: int) -> None:
        with self.arrived:
            self.pending.append((index, xid))
            self.arrived.notify_all()

    def lose(self, index: int) -> None:
        self.lost.add(index)

    # -- NVML (what differs from FakeNvml) --
    def _nvmlDeviceGetUUID(self, handle):
        return (A, B)[handle[1]].encode()

    def _nvmlDeviceGetName(self, handle):
        return b"NVIDIA H200"

    def _nvmlDeviceGetPciInfo(self, handle):
        return SimpleNamespace(busId=f"00000000:{17 + handle[1]:02X}:00.0".encode())

    def _nvmlDeviceGetMemoryInfo(self, handle):
        if handle[1] in self.lost:
            raise FakeNVMLError(self.NVML_ERROR_GPU_IS_LOST, "GPU is lost")
        return SimpleNamespace(total=140 << 30, used=1 << 30, free=139 << 30)

    def _nvmlDeviceGetMigMode(self, handle):
        return (0, 0)

    def _nvmlDeviceGetComputeProcesses(self, handle):
        return []

    def _nvmlEventSetCreate(self):
        if not self.events_supported:
            raise FakeNVMLError(3, "Not Supported")
        return "event set"

    def _nvmlDeviceGetSupportedEventTypes(self, handle):
        return self.nvmlEventTypeXidCriticalError | 0x1

    def _nvmlDeviceRegisterEvents(self, handle, types, event_set):
        assert types == self.nvmlEventTypeXidCriticalError and event_set == "event set"
        self.registered.append(handle[1])

    def _nvmlEventSetWait_v2(self, event_set, timeout_ms):
        with self.arrived:
            if not self.pending:
                self.arrived.wait(timeout_ms / 1000)
            if not self.pending:
                raise FakeNVMLError(self.NVML_ERROR_TIMEOUT, "Timeout")
            index, xid = self.pending.pop(0)
        return SimpleNamespace(device=("gpu", index), eventType=self.nvmlEventTypeXidCriticalError,
                               eventData=xid, gpuInstanceId=0, computeInstanceId=0)

    def _nvmlEventSetFree(self, event_set):
        pass


@pytest.fixture
def nvml(monkeypatch):
    with nvml_module(monkeypatch, EventNvml()) as fake:
        yield fake


async def watched(nursery: trio.Nursery) -> list[GpuFailure]:
    """Start `gpu.watch_health` (with short waits) and return the list its failures are appended to."""
    seen: list[GpuFailure] = []
    nursery.start_soon(gpu.watch_health, seen.append, 0.05)
    return seen


async def test_nvml_xid_events_are_waited_for_in_a_thread_and_name_the_gpu(nvml, nursery):
    seen = await watched(nursery)
    await eventually(lambda: sorted(nvml.registered) == [0, 1], what="both GPUs registered for Xid events")
    nvml.xid(1, 43)  # GPU stopped processing: an application's error
    nvml.xid(1, 79)
    await eventually(lambda: seen, what="the failure of GPU 1")
    assert [(f.index, f.uuid, f.name, f.reason) for f in seen] == [
        (1, B, "NVIDIA H200", "Xid 79 (GPU has fallen off the bus)")]
    nvml.xid(1, 79)  # again: known already
    await trio.sleep(0.2)
    assert len(seen) == 1 and set(gpu.failures()) == {B}
    event_loop = threading.current_thread().name
    assert all(thread != event_loop for _, thread in nvml.calls)  # every NVML call in a worker thread


async def test_a_gpu_that_nvml_loses_is_failed_also_without_events(monkeypatch, nursery):
    # no event set on this driver: the GPUs are only polled
    with nvml_module(monkeypatch, EventNvml(events=False)) as fake:
        seen = await watched(nursery)
        await trio.sleep(0.2)
        assert seen == []
        fake.lose(0)
        await eventually(lambda: seen, what="GPU 0 found lost")
        assert seen[0].index == 0 and seen[0].reason == "stopped answering NVML (FakeNVMLError: GPU is lost)"
        assert (await gpu.resource_info())["0"]["failed"]["reason"] == seen[0].reason
        event_loop = threading.current_thread().name
        assert all(thread != event_loop for _, thread in fake.calls)


async def test_without_nvml_there_is_nothing_to_watch(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` fails: no driver
    gpu.set_inventory(None)
    try:
        with trio.fail_after(5):
            await gpu.watch_health(lambda failure: pytest.fail("no GPU, no failure"), 0.01)  # returns at once
        assert gpu.failures() == {} and await gpu.resource_info() == {}
    finally:
        gpu.set_inventory(None)
