"""SwarmUI's backend object (BackendToNet), shaped from a backend's definition and lifecycle.

ListBackends of a thousand backends is polled by the web UI, so the part that follows from the definition
alone is built and JSON-encoded once per definition and view (a new definition is a new object: the cache
compares identity) and only the few changing fields are encoded at each call.

Secrets stay with admins. A caller without the admin role gets the masked view (`masked=True`): every value
of `env`'s KEY=VALUE lines, and in any text setting a credential -- the rest of a line `...TOKEN=`,
`...KEY=`, `...SECRET=`, `...PASSWORD=` (any case, also `--api-key=V` and `--hf-token V` inside a command
line) and the password of a URL's `user:password@` -- shown as SwarmUI's secret mask `\\t<secret>`
(`HF_TOKEN=\\t<secret>`). Settings the type declares secret are masked for everyone, as SwarmUI does. A value
sent back as it was shown keeps what is stored (`swarmd.secrets` has both sides).
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

from swarmd import gpu
from swarmd.secrets import mask_setting
from swarmd.settings import SECRET_MASK

if TYPE_CHECKING:
    from swarmd.backends_file import BackendDef
    from swarmd.fleet import Backend

#: One encoder for every backend object: json.dumps() with options builds a new encoder per call.
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
#: A status (one of a handful of names) as a JSON string.
_quoted = functools.lru_cache(maxsize=64)(_encode)


# -- the backend object ----------------------------------------------------------------------------------


def _static_json(backend: Backend, masked: bool) -> str:
    """The JSON of the fields that follow from the definition, without the closing brace, in the plain or
    the masked view. Kept in `backend.api_cache` as (definition, plain json, masked json), each None until
    asked: each view is encoded once per definition, and one text serves both views when there is nothing
    to mask. Only the text is kept, in one tuple (the fields are rebuilt for the rare single-backend
    answer): at 1000 backends the fields' dicts would hold 1.4 MB more for as long as the daemon runs."""
    cached: tuple[BackendDef, str | None, str | None] | None = backend.api_cache
    if cached is None or cached[0] is not backend.definition:
        cached = (backend.definition, None, None)
    definition, plain, shown = cached
    text = shown if masked else plain
    if text is None:
        fields, unmasked = _static_fields(backend, masked)
        text = _encode(fields)[:-1]
        if unmasked or masked:
            shown = text
        if unmasked or not masked:
            plain = text
        backend.api_cache = (definition, plain, shown)
    return text


def _static_fields(backend: Backend, masked: bool) -> tuple[dict[str, Any], bool]:
    """(the fields that follow from the definition in the plain or the masked view; whether the two views
    are the same)."""
    definition, backend_type = backend.definition, backend.type
    plain: dict[str, Any] = {}
    shown: dict[str, Any] = {}
    for spec in backend_type.settings:
        value = definition.settings.get(spec.name, spec.default)
        plain[spec.name] = (SECRET_MASK if value else "") if spec.secret else value
        shown[spec.name] = mask_setting(spec, value)
    fields = {
        "type": definition.type_id,
        "id": definition.id,
        "settings": shown if masked else plain,
        "features": list(backend_type.features),
        "enabled": definition.enabled,
        "title": definition.title,
        "max_usages": backend_type.max_usages(definition.settings),
        "seconds_since_used": 0,
        "time_since_used": "Never",
        "can_load_models": backend_type.can_load_models,
    }
    return fields, plain == shown


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
            # read live, never cached: probes change it while the definition stays the same
            "health": machine.health_view(),
        })
    return data


def backend_object(backend: Backend, full_data: bool = False, *, masked: bool = False) -> dict[str, Any]:
    """The backend object as a dict; `full_data` adds the current model and swarmd's runtime facts; `masked`
    hides secrets (the view of a caller without the admin role)."""
    fields, _ = _static_fields(backend, masked)
    return {**fields, **_dynamic(backend, full_data)}


def backend_json(backend: Backend, full_data: bool = False, *, masked: bool = False) -> str:
    """`backend_object()` encoded as JSON text (the same object, the static part encoded once per view)."""
    return "".join(backend_json_pieces(backend, full_data, masked=masked))


def backend_json_pieces(backend: Backend, full_data: bool = False, *, masked: bool = False) -> tuple[str, str, str]:
    """`backend_json()` in pieces, to be joined with others: the cached static part, a comma, the rest."""
    return _static_json(backend, masked), ",", _dynamic_json(backend, full_data)


def _dynamic_json(backend: Backend, full_data: bool) -> str:
    """`_dynamic`'s JSON without its opening brace. The full_data one is kept in `backend.api_runtime`
    with the key it was made from -- the lifecycle's version (every field of the machine changes through
    `handle`, which bumps it), the backend's modcount, its last free-memory answer, its pin and the GPU
    figures (each replaced, never changed in place) -- and encoded again only when one of them changed: a
    fleet at rest is encoded once, not at every poll (at 1000 backends that was half of a ListBackends)."""
    if not full_data:  # {"status", "modcount"}: put together without the encoder
        return f'"status":{_quoted(backend.status)},"modcount":{backend.modcount:d}}}'
    machine = backend.lifecycle
    version, modcount, last_free, pin, figures = (machine.version, backend.modcount, backend.last_free,
                                                  backend.shell.pin, gpu.figures_key())
    cached = backend.api_runtime  # (machine, version, modcount, last_free, pin, figures, text)
    if (cached is not None and cached[0] is machine and cached[1] is version and cached[2] is modcount
            and cached[3] is last_free and cached[4] is pin and cached[5] is figures):
        return cached[6]
    text = _encode(_dynamic(backend, True))[1:]
    backend.api_runtime = (machine, version, modcount, last_free, pin, figures, text)
    return text
