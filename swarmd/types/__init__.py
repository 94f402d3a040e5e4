"""The registry of backend types, keyed by type id."""

from __future__ import annotations

from swarmd.types.base import BackendType, LaunchFailed, LaunchRefused, LaunchSpec
from swarmd.types.comfyui import ComfyUIAPI, ComfyUISelfStart
from swarmd.types.process import ProcessType

TYPES: dict[str, BackendType] = {t.id: t for t in (ProcessType(), ComfyUISelfStart(), ComfyUIAPI())}

__all__ = ["TYPES", "BackendType", "LaunchFailed", "LaunchRefused", "LaunchSpec"]
