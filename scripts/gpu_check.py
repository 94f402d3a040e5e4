"""The body of scripts/gpu-check.sh: a real daemon, a real socket, a real GPU where there is one."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
try:
    from tests.helpers import Daemon, wait_until  # the tests' harness (its API client is httpx)
except ImportError as err:
    sys.exit(f"gpu-check: {sys.executable} lacks the test dependencies ({err}): run 'make test' first or set PYTHON")

GIB = 1 << 30
# A backend that holds ~2 GiB of GPU memory and frees it on POST /free.
ALLOCATOR = r'''
import json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import torch
block = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
block.fill_(1); torch.cuda.synchronize()
print("allocated", torch.cuda.memory_allocated(), "on", torch.cuda.get_device_name(0), flush=True)
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def do_POST(self):
        global block
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        block = None; torch.cuda.empty_cache(); torch.cuda.synchronize()
        print("freed", torch.cuda.memory_allocated(), flush=True)
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


def say(text: str) -> None:
    print(text, flush=True)


def main() -> int:
    from swarmd import gpu

    inv = gpu.inventory()
    work = Path(tempfile.mkdtemp(prefix="swarmd-gpu-check-"))
    (work / "alloc.py").write_text(ALLOCATOR)
    backends = work / "backends.yaml"
    if not inv.available or not inv.gpus():
        say("no NVIDIA GPU here: skipping the GPU checks")
        backends.write_text("backends:\n  0:\n    type: process\n    settings:\n"
                            "      command: sleep 600\n      gpu_id: '1'\n")
        return run_daemon(work, backends, gpu_checks=False)
    gpus = inv.gpus()
    say(f"GPUs: {[(g.index, g.uuid, g.name, g.memory_free // GIB) for g in gpus]}")
    backends.write_text(
        "backends:\n"
        "  0:\n    type: process\n    title: torch-alloc\n    settings:\n"
        f"      command: {sys.executable} {work / 'alloc.py'} {{port}}\n"
        "      ready_check: http://127.0.0.1:{port}/\n"
        "      ready_timeout: 120\n"
        "      free_memory: http://127.0.0.1:{port}/free\n"
        "      gpu_id: auto\n")
    bad = work / "bad.yaml"
    bad.write_text(f"backends:\n  0:\n    type: process\n    settings:\n      command: sleep 1\n"
                   f"      gpu_id: '{len(gpus) + 7}'\n")
    check = subprocess.run([sys.executable, "-m", "swarmd", "check", "--backends", str(bad)],
                           capture_output=True, text=True)
    say(f"bad pin: swarmd check exit {check.returncode}: {check.stdout.strip()}")
    assert check.returncode == 1 and "no GPU" in check.stdout
    return run_daemon(work, backends, gpu_checks=True)


def run_daemon(work: Path, backends: Path, *, gpu_checks: bool) -> int:
    daemon = Daemon(work, backends_path=backends)
    try:
        listing = wait_until(lambda: (b := daemon.backend(0))["status"] == "running" and b, timeout=180,
                             what="backend running")
        say(f"backend running: pid {listing['pid']}, gpus {listing['gpus']}")
        environ = Path(f"/proc/{listing['pid']}/environ").read_bytes().split(b"\0")
        pinned = [e.decode() for e in environ if e.startswith((b"CUDA_VISIBLE_DEVICES=", b"CUDA_DEVICE_ORDER="))]
        say(f"child environment: {pinned}")
        assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in pinned
        if not gpu_checks:
            assert "CUDA_VISIBLE_DEVICES=1" in pinned
            say("no-GPU checks passed: the daemon runs and pins still set the environment")
            return 0
        assert listing["gpus"] and listing["gpus"][0]["uuid"], "auto picked no GPU"
        say(f"auto picked GPU {listing['gpus'][0]['id']} ({listing['gpus'][0]['uuid']})")
        used = wait_until(lambda: (m := daemon.backend(0)["gpu_memory"]) and m > GIB and m, timeout=30,
                          what="NVML memory attributed")
        say(f"NVML attributes {used / GIB:.2f} GiB to the backend's process group")
        freed = daemon.api("FreeBackendMemory", {"backend": "0"})
        say(f"FreeBackendMemory: {freed}")
        assert freed == {"result": True, "count": 1}
        last = daemon.backend(0)["last_free"]
        say(f"recorded: before {last['gpu_memory_before'] / GIB:.2f} GiB, after "
            f"{last['gpu_memory_after'] / GIB:.2f} GiB")
        assert last["gpu_memory_after"] < last["gpu_memory_before"] - GIB
        edit = daemon.api("EditBackend", {"backend_id": 0, "title": "x", "settings": {"gpu_id": "99"}})
        say(f"EditBackend with gpu_id 99: {edit}")
        assert "no GPU '99'" in edit.get("error", "")
        say("GPU checks passed")
        return 0
    finally:
        status = daemon.stop(timeout=30)
        say(f"daemon exit {status}; log tail:\n" + "\n".join(daemon.log().splitlines()[-15:]))


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"gpu-check finished in {time.monotonic() - started:.1f} s", flush=True)
    sys.exit(code)
