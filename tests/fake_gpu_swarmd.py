"""`python -m tests.fake_gpu_swarmd serve ...`: the real `swarmd` command on a machine with two fake GPUs.

The inventory is replaced at gpu.py's test boundary (`gpu.set_inventory`) before the daemon starts, as the
unit tests do in-process: pins resolve against the fake GPUs, and each of the daemon's children pinned to
them (its `CUDA_VISIBLE_DEVICES` names a fake UUID) holds PROCESS_MEMORY there. Everything else is the real
daemon. The Prometheus and status-page tests use it so that the GPU series, the dashboard's GPU panels and
the page's GPU summary have data on a machine without a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from swarmd import gpu
from swarmd.gpu import GPU, ProcessUse

GPU_A = "GPU-5e1f0a00-aaaa-4000-8000-000000000000"
GPU_B = "GPU-5e1f0b00-bbbb-4000-8000-111111111111"
PROCESS_MEMORY = 3 << 30
FAKE_GPUS = [
    GPU(0, GPU_A, "NVIDIA H200", "00000000:17:00.0", memory_total=140 << 30, memory_used=31 << 30,
        memory_free=109 << 30, utilization_gpu=57, utilization_memory=20, temperature=61),
    GPU(1, GPU_B, "NVIDIA H200", "00000000:65:00.0", memory_total=140 << 30, memory_used=9 << 30,
        memory_free=131 << 30, utilization_gpu=3, utilization_memory=1, temperature=38),
]


@dataclass
class ChildrenOnFakeGpus:
    """Two fake GPUs; every child of this process pinned to one of them holds PROCESS_MEMORY there."""

    gpu_list: list[GPU] = field(default_factory=lambda: list(FAKE_GPUS))
    available: bool = True

    def gpus(self) -> list[GPU]:
        return list(self.gpu_list)

    def processes(self) -> list[ProcessUse]:
        me, known = os.getpid(), {device.uuid for device in self.gpu_list}
        uses = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
                if ppid != me:
                    continue
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    environ = handle.read().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            for item in environ:
                if item.startswith(b"CUDA_VISIBLE_DEVICES="):
                    for uuid in item.split(b"=", 1)[1].decode().split(","):
                        if uuid in known:
                            uses.append(ProcessUse(int(entry), uuid, PROCESS_MEMORY))
        return uses


def main() -> int:
    from swarmd.cli import main as swarmd_main

    gpu.set_inventory(ChildrenOnFakeGpus())
    return swarmd_main()


if __name__ == "__main__":
    raise SystemExit(main())
