"""SwarmUI's backend object (BackendToNet), shaped from a backend's definition and lifecycle.

ListBackends of a thousand backends is polled by the web UI, so the part that follows from the definition
alone is built and JSON-encoded once per definition (a new definition is a new object: the cache compares
identity) and only the few changing fields are encoded at each call.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from swarmd.settings import SECRET_MASK

if TYPE_CHECKING:
    from swarmd.backends_file import BackendDef
    from swarmd.fleet import Backend

#: One encoder for every backend object: json.dumps() with options builds a new encoder per call.
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def _static_part(backend: Backend) -> tuple[dict[str, Any], str]:
    """The fields that follow from the definition, and their JSON without the closing brace. Kept in
    `backend.api_cache` as (definition, fields, json)."""
    cached: tuple[BackendDef, dict[str, Any], str] | None = backend.api_cache
    if cached is not None and cached[0] is backend.definition:
        return cached[1], cached[2]
    definition, backend_type, settings = backend.definition, backend.type, {}
    for spec in backend_type.settings:
        value = definition.settings.get(spec.name, spec.default)
        settings[spec.name] = (SECRET_MASK if value else "") if spec.secret else value
    fields = {
        "type": definition.type_id,
        "id": definition.id,
        "settings": settings,
        "features": list(backend_type.features),
        "enabled": definition.enabled,
        "title": definition.title,
        "max_usages": backend_type.max_usages(dict(definition.settings)),
        "seconds_since_used": 0,
        "time_since_used": "Never",
        "can_load_models": backend_type.can_load_models,
    }
    encoded = _encode(fields)[:-1]
    backend.api_cache = (definition, fields, encoded)
    return fields, encoded


def _dynamic(backend: Backend, full_data: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"status": backend.status, "modcount": backend.modcount}
    if full_data:
        machine, shell = backend.lifecycle, backend.shell
        data.update({
            "current_model": None,
            "pid": machine.pid,
            "port": machine.port,
            "restarts": machine.restarts,
            "last_exit": machine.last_exit.to_api() if machine.last_exit else None,
            "status_message": machine.message,
            "gpus": shell.pin.describe() if machine.pid is not None else [],
            "gpu_memory": backend.gpu_memory(),
            "last_free": backend.last_free,
        })
    return data


def backend_object(backend: Backend, full_data: bool = False) -> dict[str, Any]:
    """The backend object as a dict; `full_data` adds the current model and swarmd's runtime facts."""
    fields, _ = _static_part(backend)
    return {**fields, **_dynamic(backend, full_data)}


def backend_json(backend: Backend, full_data: bool = False) -> str:
    """`backend_object()` encoded as JSON text (the same object, the static part encoded once)."""
    _, encoded = _static_part(backend)
    return f"{encoded},{_encode(_dynamic(backend, full_data))[1:]}"

