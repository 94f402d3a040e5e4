"""GPU pins and placement on a fake inventory at the module boundary; the no-driver path for real."""

from __future__ import annotations

import logging
import os
import sys

import pytest

from swarmd import backends_file, gpu
from swarmd.gpu import GPU, MigDevice, PinError, ProcessUse, StaticInventory

A = "GPU-76a8c3e1-0000-4000-8000-000000000000"
B = "GPU-76a9d4f2-1111-4000-8000-111111111111"
C = "GPU-0c2e0000-2222-4000-8000-222222222222"
MIG = "MIG-5f1e2d3c-3333-4000-8000-333333333333"


def machine() -> StaticInventory:
    return StaticInventory(gpu_list=[
        GPU(0, A, "H200", "00000000:17:00.0", memory_total=140 << 30, memory_free=100 << 30),
        GPU(1, B, "H200", "00000000:65:00.0", memory_total=140 << 30, memory_free=120 << 30),
        GPU(2, C, "H200", "00000000:CA:00.0", mig_mode=True,
            mig_devices=(MigDevice(MIG, 0, 2, memory_total=20 << 30),)),
    ], process_list=[ProcessUse(os.getpid(), A, 5 << 30), ProcessUse(os.getpid(), B, 1 << 30)])


@pytest.fixture
def fake():
    inv = machine()
    gpu.set_inventory(inv)
    gpu.forget_cache()
    yield inv
    gpu.set_inventory(None)
    gpu.forget_cache()


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
])
def test_rejections_say_what_is_wrong(fake, pin, message):
    with pytest.raises(PinError) as info:
        gpu.resolve(pin)
    assert message in str(info.value)


def test_a_bad_pin_is_a_located_error_in_the_file(fake):
    text = "backends:\n  0:\n    type: process\n    settings:\n      command: sleep 1\n      gpu_id: 7\n"
    with pytest.raises(backends_file.FileInvalid) as info:
        backends_file.parse("b.yaml", text)
    assert str(info.value) == "b.yaml:6:7: settings.gpu_id: no GPU '7' (this machine has 0, 1, 2)"


def test_auto_prefers_fewest_pinned_then_most_free(fake):
    assert gpu.place_auto({}).visible == B  # most free memory, MIG-mode GPU not used whole
    assert gpu.place_auto({B: 1}).visible == A
    assert gpu.place_auto({A: 1, B: 1}).visible == B


async def test_auto_spreads_four_backends_over_two_gpus(fake, make_fleet):
    fleet = await make_fleet({i: {"settings": {"command": "sleep 600", "gpu_id": "auto"}} for i in range(4)})
    from tests.helpers import running

    for i in range(4):
        await running(fleet, i)
    placed = [fleet.get(i).runtime.pin.visible for i in range(4)]
    assert sorted(placed) == sorted([A, A, B, B])
    listing = fleet.get(0).to_api(full_data=True)
    assert listing["gpus"][0]["uuid"] in (A, B)
    with open(f"/proc/{fleet.get(0).runtime.pid}/environ", "rb") as handle:
        environ = dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item)
    assert environ[b"CUDA_VISIBLE_DEVICES"].decode() == placed[0]
    assert environ[b"CUDA_DEVICE_ORDER"] == b"PCI_BUS_ID"


def test_memory_is_attributed_to_process_groups(fake):
    assert gpu.memory_by_pid() == {os.getpid(): 6 << 30}
    assert gpu.memory_by_group() == {os.getpgid(os.getpid()): 6 << 30}


def test_without_a_driver_everything_degrades_and_says_so_once(caplog):
    caplog.set_level(logging.INFO, logger="swarmd.gpu")
    gpu.set_inventory(None)
    try:
        inv = gpu.inventory()
        if inv.available:
            pytest.skip("this machine has an NVIDIA driver")
        for _ in range(20):
            assert gpu.inventory().gpus() == []
            assert gpu.memory_by_group() == {}
            assert gpu.resolve("1").env() == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1"}
            assert gpu.validate("GPU-1234") == "GPU-1234"
        with pytest.raises(PinError, match="no GPU that NVML can see"):
            gpu.place_auto({})
        notes = [r for r in caplog.records if r.name == "swarmd.gpu"]
        assert len(notes) == 1 and "no NVIDIA driver found" in notes[0].getMessage()
    finally:
        gpu.set_inventory(None)


def test_gpu_check_script_runs_without_a_gpu():
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "gpu-check.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no NVIDIA GPU here: skipping the GPU checks" in result.stdout
