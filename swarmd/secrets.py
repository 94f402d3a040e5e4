"""Secrets stay with admins: the masked view of a backend's settings, and what a value sent back masked
stands for.

A caller without the admin role sees every value of `env`'s KEY=VALUE lines, and in any text setting a
credential -- the rest of a line `...TOKEN=`, `...KEY=`, `...SECRET=`, `...PASSWORD=` (any case, also
`--api-key=V` and `--hf-token V` inside a command line) and the password of a URL's `user:password@` -- as
SwarmUI's secret mask `\\t<secret>` (`HF_TOKEN=\\t<secret>`); settings a type declares secret are masked for
everyone, as SwarmUI does (`swarmd.api.shape` builds the views). A value sent back as it was shown keeps what
is stored (`unmask_text`, used by the Fleet for EditBackend). Pure functions, no I/O.
"""

from __future__ import annotations

import re
from typing import Any

from swarmd.settings import SECRET_MASK, SettingSpec

_WORDS = r"(?:token|key|secret|password|passwd)"
#: A quick look for anything the patterns below could mask (most settings have none).
_HINT = re.compile(rf"{_WORDS}|://", re.IGNORECASE)
#: A whole line `KEY=VALUE` (or `export KEY = VALUE`) whose key names a credential: the rest is masked.
_CREDENTIAL_LINE = re.compile(rf"^(\s*(?:export\s+)?(?:[A-Za-z_][A-Za-z0-9_.-]*)?{_WORDS}[ \t]*=)(.+)$",
                              re.IGNORECASE)
#: Inside a line: `NAME=VALUE` or a flag `--name VALUE` whose name ends with a credential word.
_CREDENTIAL_ARG = re.compile(
    rf"""(?<![A-Za-z0-9_.-])([A-Za-z0-9_.-]*{_WORDS}=|-{{1,2}}[A-Za-z0-9_.-]*{_WORDS}[ \t]+(?!-))"""
    r"""("[^"\n]*"?|'[^'\n]*'?|[^\s]+)""", re.IGNORECASE)
#: A URL's password: `scheme://user:PASSWORD@` (up to the last @ before the path).
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*:)([^\s/]*)(?=@)")
#: An `env` line KEY=VALUE: the value is masked whatever the key.
_ENV_LINE = re.compile(r"^(\s*[A-Za-z_][A-Za-z0-9_]*[ \t]*=)(.+)$")


def _mask_part(match: re.Match[str]) -> str:
    return match.group(1) + SECRET_MASK if match.group(2) != SECRET_MASK else match.group(0)


def _mask_line(line: str, env: bool) -> str:
    if env and not line.lstrip().startswith("#"):
        masked, count = _ENV_LINE.subn(_mask_part, line)
        if count:
            return masked
    if not _HINT.search(line):
        return line
    line = _URL_PASSWORD.sub(_mask_part, line)
    masked, count = _CREDENTIAL_LINE.subn(_mask_part, line)
    return masked if count else _CREDENTIAL_ARG.sub(_mask_part, line)


def mask_text(text: str, env: bool = False) -> str:
    """`text` as a caller without the admin role sees it: credentials replaced by SECRET_MASK, line by line
    (lines are split at "\\n" only, so nothing can hide a credential behind another line break); with
    `env`, the value of every KEY=VALUE line."""
    if not text or (not env and not _HINT.search(text)):
        return text
    return "\n".join(_mask_line(line, env) for line in text.split("\n"))


def mask_setting(spec: SettingSpec, value: Any) -> Any:
    """A setting's value in the masked view (anything but text is shown as it is)."""
    if spec.secret:
        return SECRET_MASK if value else ""
    if spec.kind != "text" or not isinstance(value, str):
        return value
    return mask_text(value, env=spec.mapping_ok)


def unmask_text(sent: str, stored: str | None, env: bool = False) -> str | None:
    """What an edit that sends text setting `sent` means, given the `stored` value (None when there is
    none, e.g. a new backend): `sent` itself when it holds no mask; `stored` when `sent` is the mask alone
    or the masked view of `stored` (sent back unchanged); else each line holding the mask replaced by the
    stored line it stands for (the line whose masked view it is; in `env`, also the stored line of the same
    KEY). None when a mask stands for nothing stored: the edit must be refused, never saved as a mask."""
    if SECRET_MASK not in sent:
        return sent
    if stored is None:
        return None
    if sent == SECRET_MASK or sent == mask_text(stored, env):
        return stored
    originals: dict[str, list[str]] = {}  # masked line -> the stored lines it may stand for, in order
    by_key: dict[str, str] = {}
    for line in stored.split("\n"):
        originals.setdefault(_mask_line(line, env), []).append(line)
        if env:
            key, sep, _ = line.strip().partition("=")
            if sep and not line.lstrip().startswith("#"):
                by_key[key.strip()] = line  # the last one wins, as in the environment
    lines = []
    for line in sent.split("\n"):
        if SECRET_MASK in line:
            key, _, value = line.strip().partition("=")
            candidates = originals.get(line)
            if candidates:  # the first stored line not yet used (`A=1`, `A=2` both show as `A=<mask>`)
                line = candidates.pop(0) if len(candidates) > 1 else candidates[0]
            elif env and value == SECRET_MASK and key.strip() in by_key:
                line = by_key[key.strip()]
            else:
                return None
        lines.append(line)
    return "\n".join(lines)


