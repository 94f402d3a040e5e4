"""Setting schemas: what a backend type declares, and how raw values become typed ones.

Theory of operation
-------------------
Every backend type declares its settings as a tuple of frozen `SettingSpec`. The same spec serves three
readers:

* the backends file (`from_file`): values come from YAML 1.2 as parsed by ruamel, so they already have a
  type. We are strict: an integer setting wants an int, a boolean wants `true`/`false` (not `yes`, which
  YAML 1.2 reads as a string -- the error says so), a dropdown wants one of its values.
* the API (`from_api`): values come from JSON the way SwarmUI reads them -- everything is turned into
  text, then parsed (`"5"` is an int, `5.0` is not; `"True"` is a bool, `1` is not).
* `ListBackendTypes` (`SettingSpec.to_api`): the published schema.

Both parsers raise `SettingError` with a message that names what was expected and what was given; the
caller adds the location (file:line:col or the parameter name).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["text", "integer", "decimal", "boolean", "dropdown"]

#: The text SwarmUI sends back in place of a secret value; an edit carrying it keeps the old value.
SECRET_MASK = "\t<secret>"


class SettingError(ValueError):
    """A value that does not fit its setting. `str(err)` is the message without a location."""


@dataclass(frozen=True)
class SettingSpec:
    """One setting of a backend type.

    `check`, when given, receives the already-typed value and raises `SettingError` (or ValueError) when
    it is not acceptable; it may return a normalized value.
    """

    name: str
    kind: Kind
    default: Any
    description: str = ""
    placeholder: str = ""
    values: tuple[str, ...] | None = None
    value_names: tuple[str, ...] | None = None
    secret: bool = False
    minimum: float | None = None
    maximum: float | None = None
    #: A text setting that the file may also give as a mapping (e.g. `env`); it becomes KEY=VALUE lines.
    mapping_ok: bool = False
    check: Callable[[Any], Any] | None = None

    def to_api(self) -> dict[str, Any]:
        """The schema entry ListBackendTypes publishes (SwarmUI's field names)."""
        return {
            "name": self.name,
            "type": self.kind,
            "description": self.description,
            "placeholder": self.placeholder,
            "default": self.default,
            "is_secret": self.secret,
            "values": list(self.values) if self.values is not None else None,
            "value_names": list(self.value_names or self.values) if self.values is not None else None,
        }

    # -- parsing -------------------------------------------------------------------------------------

    def from_file(self, raw: Any) -> Any:
        """Parse a value read from the YAML file (already typed by YAML 1.2). Raises SettingError."""
        if self.kind == "text":
            if raw is None:
                value: Any = ""
            elif isinstance(raw, bool):
                raise SettingError(f"expected text, got boolean {str(raw).lower()}")
            elif isinstance(raw, str):
                value = str(raw)
            elif isinstance(raw, int | float):
                value = str(raw)
            elif isinstance(raw, Mapping) and self.mapping_ok:
                value = mapping_to_lines(raw)
            else:
                raise SettingError(f"expected text, got {_describe(raw)}")
        elif self.kind == "integer":
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise SettingError(f"expected an integer, got {_describe(raw)}")
            value = int(raw)
        elif self.kind == "decimal":
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise SettingError(f"expected a number, got {_describe(raw)}")
            value = float(raw)
            if not math.isfinite(value):
                raise SettingError(f"expected a finite number, got {raw!r}")
        elif self.kind == "boolean":
            if not isinstance(raw, bool):
                hint = ""
                if isinstance(raw, str) and raw.lower() in _YAML11_BOOLS:
                    hint = f" (YAML 1.2 reads {raw!r} as a string: write true or false)"
                raise SettingError(f"expected true or false, got {_describe(raw)}{hint}")
            value = raw
        elif self.kind == "dropdown":
            text = str(raw).lower() if isinstance(raw, bool) else raw
            if isinstance(text, int | float) and not isinstance(text, bool):
                text = str(text)
            if not isinstance(text, str) or text not in (self.values or ()):
                raise SettingError(f"expected one of {_choices(self.values)}, got {_describe(raw)}")
            value = text
        else:  # pragma: no cover - the Kind literal is closed
            raise AssertionError(self.kind)
        return self._finish(value)

    def from_api(self, raw: Any) -> Any:
        """Parse a value sent through the API, the way SwarmUI does (text first, then parse).

        Raises SettingError with a message naming the expected kind.
        """
        text = api_text(raw)
        if self.kind == "text":
            if isinstance(raw, Mapping) and self.mapping_ok:
                text = mapping_to_lines(raw)
            value: Any = text
        elif self.kind == "integer":
            parsed = parse_int(text)
            if parsed is None:
                raise SettingError(f"expected an integer, got {text!r}")
            value = parsed
        elif self.kind == "decimal":
            number = parse_decimal(text)
            if number is None:
                raise SettingError(f"expected a number, got {text!r}")
            value = number
        elif self.kind == "boolean":
            # SwarmUI's EditBackend: only "true" (any case) is true; anything else is false.
            value = text.strip().lower() == "true"
        elif self.kind == "dropdown":
            if text not in (self.values or ()):
                raise SettingError(f"expected one of {_choices(self.values)}, got {text!r}")
            value = text
        else:  # pragma: no cover
            raise AssertionError(self.kind)
        return self._finish(value)

    def _finish(self, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            # No program argument, path or environment value can hold a NUL byte (exec would refuse).
            raise SettingError("must not contain a NUL character")
        if self.kind in ("integer", "decimal"):
            if self.minimum is not None and value < self.minimum:
                raise SettingError(f"must be at least {_num(self.minimum)}, got {_num(value)}")
            if self.maximum is not None and value > self.maximum:
                raise SettingError(f"must be at most {_num(self.maximum)}, got {_num(value)}")
        if self.check is not None:
            try:
                checked = self.check(value)
            except SettingError:
                raise
            except ValueError as err:
                raise SettingError(str(err)) from None
            if checked is not None:
                value = checked
        return value


# -- helpers shared with the API's parameter coercion ----------------------------------------------------

_YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n"}
_INT_RE = re.compile(r"^\s*[+-]?\d+\s*$")
_DECIMAL_RE = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


def api_text(raw: Any) -> str:
    """A JSON value as text, the way SwarmUI's JToken.ToString() would give it."""
    if raw is None:
        return ""
    if isinstance(raw, bool):
        return "True" if raw else "False"
    if isinstance(raw, str):
        return raw
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, float):
        return repr(raw)
    import json

    return json.dumps(raw)


def parse_int(text: str) -> int | None:
    """C#'s int.TryParse for Int32: optional sign, digits, surrounding whitespace; None when it fails."""
    if not _INT_RE.match(text):
        return None
    value = int(text)
    if not -(2**31) <= value < 2**31:
        return None
    return value


def parse_decimal(text: str) -> float | None:
    """A finite decimal number, or None."""
    if not _DECIMAL_RE.match(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def parse_bool(text: str) -> bool | None:
    """C#'s bool.TryParse: "true"/"false" in any case, surrounding whitespace allowed; None otherwise."""
    lowered = text.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    return None


def mapping_to_lines(mapping: Mapping[Any, Any]) -> str:
    """{"A": 1, "B": "x"} -> "A=1\\nB=x" (the text form of an env-like setting)."""
    lines = []
    for key, value in mapping.items():
        shown = "" if value is None else (str(value).lower() if isinstance(value, bool) else str(value))
        lines.append(f"{key}={shown}")
    return "\n".join(lines)


def _describe(raw: Any) -> str:
    if raw is None:
        return "nothing"
    if isinstance(raw, bool):
        return f"boolean {str(raw).lower()}"
    if isinstance(raw, str):
        return repr(raw)
    if isinstance(raw, int | float):
        return f"number {raw}"
    if isinstance(raw, Mapping):
        return "a mapping"
    if isinstance(raw, list | tuple):
        return "a list"
    return type(raw).__name__


def _choices(values: tuple[str, ...] | None) -> str:
    return ", ".join(repr(v) for v in values or ())


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
