"""The registry of backend types, keyed by type id."""

from __future__ import annotations

from swarmd.types.base import BackendType, LaunchRefused, LaunchSpec, RestartConfig
from swarmd.types.process import ProcessType

TYPES: dict[str, BackendType] = {t.id: t for t in (ProcessType(),)}


def get_type(type_id: str) -> BackendType | None:
    return TYPES.get(type_id)


__all__ = ["TYPES", "BackendType", "LaunchRefused", "LaunchSpec", "RestartConfig", "get_type"]
