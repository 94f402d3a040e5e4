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

Both parsers raise `SettingError` -- and nothing else, whatever the value -- with a message that names what
was expected and what was given; the caller adds the location (file:line:col or the parameter name). One
validation serves the file, `swarmd check`, start, reload and the API, so what any of them accepts can be
started. Every text value is checked by `check_text` (no lone surrogate, no NUL); values are shown in
messages only through `describe` (bounded); an integer is a C# Int32 from either side; a mapping setting
(`env`) holds only scalar values, so a YAML alias bomb is refused at its first list, never expanded.
"""

from __future__ import annotations

import math
import re
import reprlib
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
                value = _number_text(raw)
            elif isinstance(raw, Mapping) and self.mapping_ok:
                value = mapping_to_lines(raw, self.name)
            else:
                raise SettingError(f"expected text, got {describe(raw)}")
        elif self.kind == "integer":
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise SettingError(f"expected an integer, got {describe(raw)}")
            if not INT32_MIN <= raw <= INT32_MAX:
                raise SettingError(f"expected an integer from {INT32_MIN} to {INT32_MAX}, "
                                   f"got {describe(raw)}")
            value = int(raw)
        elif self.kind == "decimal":
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise SettingError(f"expected a number, got {describe(raw)}")
            try:
                value = float(raw)
            except OverflowError:
                value = math.inf
            if not math.isfinite(value):
                raise SettingError(f"expected a finite number, got {describe(raw)}")
        elif self.kind == "boolean":
            if not isinstance(raw, bool):
                hint = ""
                if isinstance(raw, str) and raw.lower() in _YAML11_BOOLS:
                    hint = f" (YAML 1.2 reads {describe(raw)} as a string: write true or false)"
                raise SettingError(f"expected true or false, got {describe(raw)}{hint}")
            value = raw
        elif self.kind == "dropdown":
            text = str(raw).lower() if isinstance(raw, bool) else raw
            if isinstance(text, int | float) and not isinstance(text, bool):
                text = None if _huge(text) else _number_text(text)
            if not isinstance(text, str) or text not in (self.values or ()):
                raise SettingError(f"expected one of {_choices(self.values)}, got {describe(raw)}")
            value = text
        else:  # pragma: no cover - the Kind literal is closed
            raise AssertionError(self.kind)
        return self._finish(value)

    def from_api(self, raw: Any) -> Any:
        """Parse a value sent through the API, the way SwarmUI does (text first, then parse).

        Raises SettingError with a message naming the expected kind.
        """
        if self.kind == "text" and isinstance(raw, Mapping) and self.mapping_ok:
            text = mapping_to_lines(raw, self.name)
        elif self.kind == "dropdown" and isinstance(raw, bool):
            # JSON true/false for a dropdown of "true"/"false" (SwarmUI's EnablePreviews was a checkbox
            # before it became a dropdown: older clients send a boolean), as the file's YAML booleans.
            text = "true" if raw else "false"
        else:
            text = _api_text(raw)
        # Every kind: a lone surrogate (JSON's "\ud800") or a NUL is refused, not parsed into something.
        check_text(text)
        if self.kind == "text":
            value: Any = text
        elif self.kind == "integer":
            parsed = parse_int(text)
            if parsed is None:
                raise SettingError(f"expected an integer, got {describe(text)}")
            value = parsed
        elif self.kind == "decimal":
            number = parse_decimal(text)
            if number is None:
                raise SettingError(f"expected a number, got {describe(text)}")
            value = number
        elif self.kind == "boolean":
            # SwarmUI's EditBackend: only "true" (any case) is true; anything else is false.
            value = text.strip().lower() == "true"
        elif self.kind == "dropdown":
            if text not in (self.values or ()):
                raise SettingError(f"expected one of {_choices(self.values)}, got {describe(text)}")
            value = text
        else:  # pragma: no cover
            raise AssertionError(self.kind)
        return self._finish(value)

    def _finish(self, value: Any) -> Any:
        if isinstance(value, str):
            # No program argument, path or environment value can hold a NUL byte (exec would refuse), and
            # nothing that cannot be encoded as UTF-8 can be written to the file, a log or a JSON answer.
            check_text(value)
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
#: Integers are C# Int32 from both sides (SwarmUI's int.TryParse); the file cannot hold more than the API.
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: A valid environment variable name (POSIX's portable set).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: What str.splitlines() breaks a line at: a mapping value holding one would become several KEY=VALUE lines.
_LINE_BREAK = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
# ASCII digits and .NET's white space (\t\n\v\f\r and space) only: \d and \s take more than int() and
# float() do ("0\x1f" matched \s but int() refused it, a ValueError out of the parser).
_INT_RE = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]{1,20})[ \t\n\v\f\r]*")
_DECIMAL_RE = re.compile(r"[ \t\n\v\f\r]*([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
                         r"[ \t\n\v\f\r]*")


def api_text(raw: Any) -> str:
    """A JSON value as text, the way SwarmUI's JToken.ToString() would give it. Never raises: a value that
    has no text (an int too long to show, a list nested too deep) gives its bounded description."""
    try:
        return _api_text(raw)
    except SettingError:
        return describe(raw)


def _api_text(raw: Any) -> str:
    """`api_text`, raising SettingError for a value that has no text."""
    if raw is None:
        return ""
    if isinstance(raw, bool):
        return "True" if raw else "False"
    if isinstance(raw, str):
        return raw
    if isinstance(raw, float):
        return _dotnet_double(raw)
    if isinstance(raw, int):
        return _number_text(raw)
    import json

    try:
        return json.dumps(raw)
    except (ValueError, TypeError, RecursionError) as err:
        raise SettingError(f"expected text, got {describe(raw)} that cannot be shown as text") from err


def parse_int(text: str) -> int | None:
    """C#'s int.TryParse for Int32: optional sign, digits, surrounding whitespace; None when it fails."""
    match = _INT_RE.fullmatch(text)  # at most 20 digits: int() refuses more than 4300
    if match is None:
        return None
    value = int(match.group(1))
    if not -(2**31) <= value < 2**31:
        return None
    return value


def parse_decimal(text: str) -> float | None:
    """A finite decimal number, or None."""
    match = _DECIMAL_RE.fullmatch(text)
    if match is None:
        return None
    value = float(match.group(1))
    return value if math.isfinite(value) else None


def parse_bool(text: str) -> bool | None:
    """C#'s bool.TryParse: "true"/"false" in any case, surrounding whitespace allowed; None otherwise."""
    lowered = text.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    return None


def is_env_name(key: Any) -> bool:
    """A valid environment variable name: ASCII letters, digits and _, not starting with a digit."""
    return isinstance(key, str) and _ENV_NAME.fullmatch(key) is not None


def mapping_to_lines(mapping: Mapping[Any, Any], name: str = "") -> str:
    """{"A": 1, "B": "x"} -> "A=1\\nB=x" (the text form of an env-like setting). Raises SettingError.

    Keys are environment names; values are scalars (text, number, boolean, nothing) on one line. A list or
    mapping value is refused by name and never turned into text: through YAML aliases a few lines of the
    file can be a structure whose text would not fit in memory. `name` (the setting) prefixes the key in
    messages: "env.KEY: expected a scalar value, got a list".
    """
    prefix = f"{name}." if name else ""
    lines = []
    for key, value in mapping.items():
        if not is_env_name(key):
            what = describe(key) if isinstance(key, str) else f"{describe(key)} as a key"
            raise SettingError(f"{name or 'mapping'}: expected environment variable names (letters, "
                               f"digits, _) as keys, got {what}")
        if value is None:
            shown = ""
        elif isinstance(value, bool):
            shown = str(value).lower()
        elif isinstance(value, int | float):
            shown = _number_text(value)
        elif isinstance(value, str):
            check_text(value)
            if _LINE_BREAK.search(value):
                raise SettingError(f"{prefix}{key}: a value must be one line, got {describe(value)}")
            shown = value
        else:
            raise SettingError(f"{prefix}{key}: expected a scalar value, got {describe(value)}")
        lines.append(f"{key}={shown}")
    return "\n".join(lines)


def describe(raw: Any) -> str:
    """A value as an error message may show it: bounded, whatever it is.

    Never `repr()` a value read from the file or sent through the API in full: YAML aliases make a small
    file a huge shared structure (an "alias bomb"), and a 1 MB title is no better in a log line.
    """
    if raw is None:
        return "nothing"
    if isinstance(raw, bool):
        return f"boolean {str(raw).lower()}"
    if isinstance(raw, str):
        return _SHORT.repr(raw)
    if _huge(raw):
        return f"a number of about {int(raw.bit_length() * 0.30103) + 1} digits"
    if isinstance(raw, int | float):
        return f"number {_number_text(raw)}"
    if isinstance(raw, Mapping):
        return "a mapping"
    if isinstance(raw, list | tuple):
        return "a list"
    return type(raw).__name__


_SHORT = reprlib.Repr()
_SHORT.maxstring = 80
_SHORT.maxother = 80
_SHORT.maxlong = 40


def check_text(value: str) -> str:
    """Text that can be stored and shown: valid Unicode (no lone surrogate, which JSON's \\ud800 escape can
    carry but UTF-8 cannot encode) and no NUL. Raises SettingError saying where the bad character is."""
    if "\x00" in value:
        raise SettingError(f"must not contain a NUL character (at character {value.index(chr(0))})")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise SettingError(f"not valid Unicode text: a lone surrogate U+{ord(value[err.start]):04X} at "
                               f"character {err.start}") from None
    return value


def check_title(raw: Any) -> str:
    """A backend's title, from the file or the API: text (numbers become text), valid as `check_text`.
    Raises SettingError."""
    if raw is None:
        return ""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise SettingError(f"expected text, got {describe(raw)}")
    return check_text(raw if isinstance(raw, str) else _number_text(raw))


def _number_text(value: float) -> str:
    """str() of a number, without the way it can fail: Python refuses to show an int of more than 4300
    digits (ValueError). An int of more than 128 bits is refused (SettingError)."""
    if _huge(value):
        raise SettingError(f"expected a number of at most 38 digits, got {describe(value)}")
    return repr(value) if isinstance(value, float) else str(value)


def _dotnet_double(value: float) -> str:
    """A JSON number with a fraction or exponent as .NET's double.ToString() shows it, which SwarmUI's
    JToken.ToString() uses before it parses a parameter: 5.0 is "5" (so an Int32 parameter takes it, as
    SwarmUI's does), 0.5 is "0.5", 1e20 is "1E+20", 1e-05 is "1E-05"."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = repr(value)
    if "e" not in text:
        if not value.is_integer():
            return text
        text = f"{value:.16e}"  # 1e15 and up: .NET switches to an exponent at 15 digits
        mantissa, exponent = text.split("e")
        mantissa = mantissa.rstrip("0").removesuffix(".")
        return f"{mantissa}E{exponent[0]}{exponent[1:].lstrip('0').rjust(2, '0')}"
    mantissa, exponent = text.split("e")
    sign = "-" if exponent.startswith("-") else "+"
    return f"{mantissa.removesuffix('.0')}E{sign}{exponent.lstrip('+-').rjust(2, '0')}"


def _huge(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128


def _choices(values: tuple[str, ...] | None) -> str:
    return ", ".join(repr(v) for v in values or ())


def _num(value: float) -> str:
    if isinstance(value, int):
        return describe(value).removeprefix("number ")
    return str(int(value)) if value.is_integer() else str(value)
