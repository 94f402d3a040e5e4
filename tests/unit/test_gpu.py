"""GPU pins and placement on a fake inventory at the module boundary; the no-driver path for real.

The rules: identity (indices, UUIDs, MIG devices) comes from the snapshot taken once at load, so pins are
resolved, validated and placed without touching the inventory; the changing figures are read in a worker
thread by `refresh`, at most every max_age seconds, one read shared by concurrent callers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import trio

from swarmd import backends_file, gpu
from swarmd.gpu import GPU, MigDevice, PinError, ProcessUse, StaticInventory

A = "GPU-76a8c3e1-0000-4000-8000-000000000000"
B = "GPU-76a9d4f2-1111-4000-8000-111111111111"
C = "GPU-0c2e0000-2222-4000-8000-222222222222"
MIG = "MIG-5f1e2d3c-3333-4000-8000-333333333333"


@dataclasses.dataclass
class CountingInventory(StaticInventory):
    """A fake machine that counts its reads (each one would be an NVML walk) and where they ran."""

    gpu_calls: int = 0
    process_calls: int = 0
    read_threads: list[str] = dataclasses.field(default_factory=list)
    read_delay: float = 0.0

    def gpus(self) -> list[GPU]:
        self.gpu_calls += 1
        self.read_threads.append(threading.current_thread().name)
        return super().gpus()

    def processes(self) -> list[ProcessUse]:
        self.process_calls += 1
        time.sleep(self.read_delay)  # a slow driver: concurrent refreshes overlap
        return super().processes()


def machine() -> CountingInventory:
    return CountingInventory(gpu_list=[
        GPU(0, A, "H200", "00000000:17:00.0", memory_total=140 << 30, memory_free=100 << 30),
        GPU(1, B, "H200", "00000000:65:00.0", memory_total=140 << 30, memory_free=120 << 30),
        GPU(2, C, "H200", "00000000:CA:00.0", mig_mode=True,
            mig_devices=(MigDevice(MIG, 0, 2, memory_total=20 << 30),)),
    ], process_list=[ProcessUse(os.getpid(), A, 5 << 30), ProcessUse(os.getpid(), B, 1 << 30)])


@pytest.fixture
def fake():
    inv = machine()
    gpu.set_inventory(inv)
    yield inv
    gpu.set_inventory(None)


def test_index_list_uuid_prefix_and_mig(fake):
    assert gpu.resolve("0").visible == A
    assert gpu.resolve("1,0").visible == f"{B},{A}"
    assert gpu.resolve(B).visible == B
    assert gpu.resolve("GPU-0c2e").visible == C
    pin = gpu.resolve("MIG-5f1e")
    assert pin.visible == MIG and pin.describe() == [{"id": "2:0", "uuid": MIG, "name": "MIG"}]
    assert gpu.resolve("").env() == {}
    assert gpu.resolve("0").env() == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": A}
    assert gpu.resolve("0").env(rocr=True)["ROCR_VISIBLE_DEVICES"] == A
    assert gpu.resolve(" 0 , 1 ").describe() == [{"id": 0, "uuid": A, "name": "H200"},
                                                   {"id": 1, "uuid": B, "name": "H200"}]


@pytest.mark.parametrize("pin, message", [
    ("3", "no GPU '3' (this machine has 0, 1, 2)"),
    ("0,0", "GPU '0' is listed twice"),
    (f"0,{A}", f"'{A}' names a GPU already listed"),
    ("GPU-76a", "UUID prefix 'GPU-76a' is not unique"),
    ("GPU-ffff", "no GPU with UUID 'GPU-ffff' on this machine"),
    ("MIG-ffff", "no MIG device 'MIG-ffff'"),
    ("cuda:0", "'cuda:0' is not a GPU index or UUID"),
    ("0,,1", "expected a GPU index"),
    ("\u0661", "is not a GPU index or UUID"),  # an Arabic-Indic one: isdigit(), but int() of it is not 1
    ("\u00b2", "is not a GPU index or UUID"),  # superscript two: isdigit(), and int() raises
    ("9" * 5000, "is not a GPU index or UUID"),  # int() of it raises; the message stays short
    ("GPU-", "is not a GPU index or UUID"),
])
def test_rejections_say_what_is_wrong(fake, pin, message):
    with pytest.raises(PinError) as info:
        gpu.resolve(pin)
    assert message in str(info.value)
    assert len(str(info.value)) < 300


def test_a_bad_pin_is_a_located_error_in_the_file(fake):
    text = "backends:\n  0:\n    type: process\n    settings:\n      command: sleep 1\n      gpu_id: 7\n"
    with pytest.raises(backends_file.FileInvalid) as info:
        backends_file.parse("b.yaml", text)
    assert str(info.value) == "b.yaml:6:7: settings.gpu_id: no GPU '7' (this machine has 0, 1, 2)"


def test_comfyui_pins_by_swarmui_gpu_id_with_the_same_checks(fake):
    text = ("backends:\n  0:\n    type: comfyui_selfstart\n    settings:\n      StartScript: /srv/c/main.py\n"
            "      GPU_ID: '1,1'\n")
    with pytest.raises(backends_file.FileInvalid) as info:
        backends_file.parse("b.yaml", text)
    assert str(info.value) == "b.yaml:6:7: settings.GPU_ID: GPU '1' is listed twice"
    loaded = backends_file.parse("b.yaml", text.replace("'1,1'", f"'{A[:8]}'"))
    assert loaded.backends[0].settings["GPU_ID"] == A[:8]


def test_auto_prefers_fewest_pinned_then_most_free(fake):
    assert gpu.place_auto({}).visible == B  # most free memory, MIG-mode GPU not used whole
    assert gpu.place_auto({B: 1}).visible == A
    assert gpu.place_auto({A: 1, B: 1}).visible == B
    assert gpu.place("auto", {B: 1}).visible == A
    assert gpu.place(" auto ", {}).visible == B
    assert gpu.place("0", {A: 5}).visible == A  # an explicit pin is resolved, whatever the counts
    assert gpu.place("", {}) == gpu.Pin()
    with pytest.raises(PinError, match="no GPU '9'"):
        gpu.place("9", {})


async def test_auto_spreads_four_backends_over_two_gpus(fake, make_fleet):
    fleet = await make_fleet({i: {"settings": {"command": "sleep 600", "gpu_id": "auto"}} for i in range(4)})
    from tests.helpers import running

    for i in range(4):
        await running(fleet, i)
    placed = [fleet.get(i).shell.pin.visible for i in range(4)]
    assert sorted(placed) == sorted([A, A, B, B])
    from swarmd.api.shape import backend_object

    listing = backend_object(fleet.get(0), full_data=True)
    assert listing["gpus"][0]["uuid"] in (A, B)
    pid = fleet.get(0).pid

    def environ() -> dict[bytes, bytes]:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item)

    with open(f"/proc/{pid}/stat") as handle:
        state = handle.read().rsplit(")", 1)[1].split()[0]
    seen = environ()
    assert b"CUDA_VISIBLE_DEVICES" in seen, (pid, state, fleet.get(0).pid, sorted(seen)[:20])
    assert seen[b"CUDA_VISIBLE_DEVICES"].decode() == placed[0]
    assert seen[b"CUDA_DEVICE_ORDER"] == b"PCI_BUS_ID"


def test_resolve_validate_and_place_use_only_the_snapshot(fake):
    from swarmd.types import TYPES

    gpu.load_inventory()
    gpu.load_inventory()  # once is enough: a second call reads nothing
    assert (fake.gpu_calls, fake.process_calls) == (1, 0)
    spec = TYPES["process"].spec("gpu_id")
    for _ in range(50):
        gpu.resolve("0,1")
        gpu.resolve("MIG-5f1e")
        assert gpu.validate(" 1 ") == "1"
        assert gpu.validate("auto") == "auto"
        gpu.place("auto", {A: 1})
        gpu.place_auto({})
        assert spec.from_file(0) == "0" and spec.from_api("GPU-76a9") == "GPU-76a9"
        assert [g.uuid for g in gpu.gpus()] == [A, B, C]
        assert gpu.group_memory() == {}  # loaded, never refreshed: known to be nothing yet
    assert (fake.gpu_calls, fake.process_calls) == (1, 0)


def test_the_identity_snapshot_outlives_changes_of_the_fake(fake):
    gpu.load_inventory()
    fake.gpu_list = fake.gpu_list[1:]  # GPU 0 "falls off the bus" after the start
    assert gpu.resolve("0").visible == A  # identity is the snapshot's until the daemon restarts


async def test_memory_figures_refresh_in_a_thread_at_most_every_max_age(fake):
    gpu.load_inventory()
    assert gpu.group_memory() == {}
    await gpu.refresh()
    assert gpu.group_memory() == {os.getpgid(os.getpid()): 6 << 30}
    assert fake.process_calls == 1 and fake.read_threads[-1] != threading.current_thread().name
    for _ in range(20):
        await gpu.refresh(max_age=60)
    assert fake.process_calls == 1
    await gpu.refresh(max_age=0)
    assert fake.process_calls == 2
    gpu.forget_cache()
    await gpu.refresh(max_age=60)  # forgotten: the next refresh reads, whatever its max_age
    assert fake.process_calls == 3
    await gpu.refresh(max_age=60)
    assert fake.process_calls == 3

    fake.read_delay = 0.05
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(gpu.refresh, 0)
    assert fake.process_calls == 4  # one read shared by ten concurrent callers

    fake.read_delay = 0.0
    fake.process_list = [ProcessUse(os.getpid(), A, 1 << 30)]
    assert gpu.group_memory() == {os.getpgid(os.getpid()): 6 << 30}  # the last read, until the next
    key = gpu.figures_key()
    assert key is gpu.figures_key()  # the same while nothing is read
    await gpu.refresh(max_age=0)
    assert gpu.group_memory() == {os.getpgid(os.getpid()): 1 << 30}
    # What ListBackends reads per backend, without a copy of the table; a refresh gives a new key.
    assert gpu.memory_of(os.getpgid(os.getpid())) == 1 << 30 and gpu.memory_of(1) == 0
    assert key is not gpu.figures_key()


async def test_auto_breaks_ties_by_the_refreshed_free_memory(fake):
    gpu.load_inventory()
    assert gpu.place_auto({}).visible == B  # the snapshot's figures: B has more free
    fake.gpu_list = [dataclasses.replace(fake.gpu_list[0], memory_free=130 << 30, temperature=71),
                     dataclasses.replace(fake.gpu_list[1], memory_free=10 << 30, name="renamed"),
                     fake.gpu_list[2]]
    assert gpu.place_auto({}).visible == B  # not refreshed yet
    await gpu.refresh(max_age=0)
    assert gpu.place_auto({}).visible == A
    info = await gpu.resource_info()
    assert info["0"]["free_memory"] == 130 << 30 and info["0"]["temperature"] == 71
    assert info["1"]["name"] == "H200"  # identity from the snapshot, figures from the refresh
    assert sorted(info) == ["0", "1", "2"] and info["2"]["mig_devices"][0]["uuid"] == MIG


async def test_refresh_loads_the_inventory_in_a_thread_when_nobody_did(fake):
    await gpu.refresh()
    assert fake.gpu_calls == 2  # the snapshot, then the figures
    assert all(name != threading.current_thread().name for name in fake.read_threads)


async def test_without_a_driver_everything_degrades_and_says_so_once(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="swarmd.gpu")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` fails: no driver, on any machine
    gpu.set_inventory(None)
    try:
        gpu.load_inventory()
        assert not gpu.inventory().available
        for _ in range(20):
            assert gpu.inventory().gpus() == [] and gpu.gpus() == []
            assert gpu.group_memory() is None
            assert gpu.resolve("1").env() == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1"}
            assert gpu.place("1", {}).visible == "1"
            assert gpu.validate("GPU-1234") == "GPU-1234"
            await gpu.refresh(max_age=0)
            assert await gpu.resource_info() == {}
        with pytest.raises(PinError, match="no GPU that NVML can see"):
            gpu.place_auto({})
        with pytest.raises(PinError, match="no GPU that NVML can see"):
            gpu.place("auto", {})
        notes = [r for r in caplog.records if r.name == "swarmd.gpu"]
        assert len(notes) == 1 and "no NVIDIA driver found" in notes[0].getMessage()
    finally:
        gpu.set_inventory(None)


class FakeNvml:
    """A stand-in for the `pynvml` module: two GPUs, the second in MIG mode; counts calls and their threads."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.used = 5 << 30

    def __getattr__(self, name: str):
        if not name.startswith("nvml"):
            raise AttributeError(name)
        real = getattr(self, "_" + name)

        def call(*args):
            self.calls.append((name, threading.current_thread().name))
            return real(*args)
        return call

    def _nvmlInit(self):
        pass

    def _nvmlSystemGetDriverVersion(self):
        return b"550.54"

    def _nvmlDeviceGetCount(self):
        return 2

    def _nvmlDeviceGetHandleByIndex(self, index):
        return ("gpu", index)

    def _nvmlDeviceGetUUID(self, handle):
        return {("gpu", 0): A, ("gpu", 1): B, ("mig", 0): MIG}[handle]

    def _nvmlDeviceGetName(self, handle):
        return "NVIDIA H200"

    def _nvmlDeviceGetPciInfo(self, handle):
        return SimpleNamespace(busId=f"00000000:{17 + handle[1]:02X}:00.0")

    def _nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=140 << 30, used=self.used, free=(140 << 30) - self.used)

    def _nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=50, memory=20)

    def _nvmlDeviceGetTemperature(self, handle, sensor):
        return 40

    def _nvmlDeviceGetMigMode(self, handle):
        return (1, 1) if handle == ("gpu", 1) else (0, 0)

    def _nvmlDeviceGetMaxMigDeviceCount(self, handle):
        return 1

    def _nvmlDeviceGetMigDeviceHandleByIndex(self, handle, index):
        return ("mig", index)

    def _nvmlDeviceGetComputeProcesses(self, handle):
        if handle == ("gpu", 0):
            return [SimpleNamespace(pid=os.getpid(), usedGpuMemory=self.used)]
        return [SimpleNamespace(pid=2**22 + 7, usedGpuMemory=1)]  # a pid that does not exist here


@contextlib.contextmanager
def nvml_module(monkeypatch, fake):
    """`fake` stands in for the `pynvml` module, with no inventory loaded yet (and none left after)."""
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpu.set_inventory(None)
    try:
        yield fake
    finally:
        gpu.set_inventory(None)


@pytest.fixture
def nvml(monkeypatch):
    with nvml_module(monkeypatch, FakeNvml()) as fake:
        yield fake


async def test_nvml_is_called_only_at_load_and_in_refresh_threads(nvml, caplog):
    caplog.set_level(logging.INFO, logger="swarmd.gpu")
    await trio.to_thread.run_sync(gpu.load_inventory)  # as the daemon does at start
    assert "NVML: 2 GPUs (driver 550.54)" in caplog.text
    loaded = len(nvml.calls)
    assert [(g.index, g.uuid, g.pci_bus_id, g.mig_mode) for g in gpu.gpus()] == [
        (0, A, "00000000:11:00.0", False), (1, B, "00000000:12:00.0", True)]
    assert gpu.resolve("MIG-5f1e").visible == MIG and gpu.validate("0,1") == "0,1"
    assert gpu.place("auto", {}).visible == A  # GPU 1 is in MIG mode: not placed whole
    assert gpu.group_memory() == {}
    assert len(nvml.calls) == loaded  # no NVML call on the event loop after the load
    await gpu.refresh()
    assert gpu.group_memory() == {os.getpgid(os.getpid()): 5 << 30}
    nvml.used = 7 << 30
    info = await gpu.resource_info()  # within max_age of the last refresh: the same figures
    assert info["0"]["used_memory"] == 5 << 30
    await gpu.refresh(max_age=0)
    assert (await gpu.resource_info())["0"]["used_memory"] == 7 << 30
    event_loop = threading.current_thread().name
    assert all(thread != event_loop for _, thread in nvml.calls)


def test_gpu_check_script_runs_without_a_gpu(tmp_path):
    import subprocess
    from pathlib import Path

    # A pynvml that cannot be imported, first on the path of the script and of the daemon it starts: no
    # driver as far as swarmd can tell, on a machine with GPUs too.
    (tmp_path / "pynvml.py").write_text("raise ImportError('hidden by the test: no NVIDIA driver')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    script = Path(__file__).resolve().parents[2] / "scripts" / "gpu-check.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHON": sys.executable, "PYTHONPATH": path})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no NVIDIA GPU here: skipping the GPU checks" in result.stdout
