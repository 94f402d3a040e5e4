"""Route parameters, coerced the way SwarmUI coerces them.

Theory of operation
-------------------
SwarmUI reads an API call's JSON body as a JObject and, for each parameter a route declares, in declaration
order: a missing key is an error unless the parameter has a default; a present value is turned into text
(`JToken.ToString()`, so `null` is "") and parsed with C#'s `int.TryParse` / `bool.TryParse`. So `"5"` is a
valid Int32 and `5.0` is not; `"True"` is a valid Boolean and `1` is not. Unknown keys are ignored. Errors
are HTTP 200 answers `{"error": "..."}` with fixed wording, which clients show as they are.

This module is pure: no I/O, no Quart. `coerce_params` is the whole algorithm; `ApiError` is how a route
says "answer this error" (HTTP 200 with `{"error": message}` unless an `error_id` and status are given).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from swarmd.settings import SettingError, api_text, check_text, parse_bool, parse_int

ParamType = Literal["Int32", "Boolean", "String", "JObject", "JArray"]


class _Required:
    """Marks a parameter without a default."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


class ApiError(Exception):
    """An error answer. Without `error_id` it is SwarmUI's handler error: HTTP 200 `{"error": message}`.

    With `error_id` it is a transport-level error: HTTP `status` with `{"error_id": ..., "error": ...}`.
    """

    def __init__(self, message: str, *, error_id: str | None = None, status: int = 200) -> None:
        super().__init__(message)
        self.message = message
        self.error_id = error_id
        self.status = status

    def body(self) -> dict[str, str]:
        if self.error_id is None:
            return {"error": self.message}
        return {"error_id": self.error_id, "error": self.message}


@dataclass(frozen=True)
class Param:
    """One declared parameter of a route: its JSON key, its SwarmUI type and its default."""

    name: str
    type: ParamType
    default: Any = REQUIRED
    description: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def missing(name: str) -> ApiError:
    return ApiError(f"Missing required parameter '{name}'")


def invalid(text: str, name: str, type_name: str) -> ApiError:
    # Text that cannot be encoded (a lone surrogate) is shown escaped: the answer must stay valid UTF-8.
    shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return ApiError(f"Invalid value '{shown}' for parameter '{name}', must be type '{type_name}'")


def coerce_value(param: Param, raw: Any) -> Any:
    """One present JSON value -> the typed value of `param`. Raises ApiError (HTTP 200) when it fails."""
    if param.type == "JObject":
        # Not SwarmUI scalars: object and list parameters (AddNewBackend's settings, the log routes' types)
        # must already be of that JSON type.
        if isinstance(raw, Mapping):
            return dict(raw)
        raise invalid(api_text(raw), param.name, "JObject")
    if param.type == "JArray":
        if isinstance(raw, list):
            return list(raw)
        raise invalid(api_text(raw), param.name, "JArray")
    text = api_text(raw)
    if param.type == "String":
        try:
            return check_text(text)
        except SettingError:
            raise invalid(text, param.name, "String") from None
    if param.type == "Int32":
        value = parse_int(text)
        if value is None:
            raise invalid(text, param.name, "Int32")
        return value
    if param.type == "Boolean":
        flag = parse_bool(text)
        if flag is None:
            raise invalid(text, param.name, "Boolean")
        return flag
    raise AssertionError(param.type)  # pragma: no cover - the Literal is closed


def coerce_params(params: tuple[Param, ...], body: Mapping[str, Any]) -> dict[str, Any]:
    """Every declared parameter, typed, in declaration order; the first problem raises ApiError.

    Keys of `body` that no parameter declares are ignored (SwarmUI clients send `session_id` and more).
    """
    values: dict[str, Any] = {}
    for param in params:
        if param.name not in body:
            if param.required:
                raise missing(param.name)
            values[param.name] = param.default
            continue
        values[param.name] = coerce_value(param, body[param.name])
    return values
