"""The round-trip YAML: a document loaded with its comments, quoting and positions (`_load_doc`), and
rendered back the way it was written -- ruamel, minus two drifts (`_Representer`, `_Emitter`)."""

from __future__ import annotations

import math
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.emitter import Emitter
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.representer import RoundTripRepresenter
from ruamel.yaml.scalarfloat import ScalarFloat
from ruamel.yaml.util import load_yaml_guess_indent

from swarmd.backends_file.model import FileInvalid, Problem


class _Representer(RoundTripRepresenter):
    """ruamel's round-trip representer, minus a drift: it rebuilds a float read as `6.14309166946023e-16`
    from the width and precision it noted and writes `6.14309166946022e-16` (about one float in five
    written with an exponent). Such a float is written the shortest exact way instead; any other keeps
    its look."""

    def represent_scalar_float(self, data: Any) -> Any:
        node = super().represent_scalar_float(data)
        if math.isfinite(data):
            try:
                exact = float(node.value.replace("_", "")) == float(data)
            except ValueError:
                exact = False
            if not exact:
                node.value = repr(float(data))
        return node


_Representer.add_representer(ScalarFloat, _Representer.represent_scalar_float)


class _Emitter(Emitter):
    """ruamel's emitter, minus a drift: a block scalar whose text starts with a space or a line break needs
    an indentation indicator, and ruamel always writes `|2` while it indents the text by the document's
    mapping indentation -- so under 4-space indentation `|2-` + "  x" reads back as "    x"."""

    def determine_block_hints(self, text: Any) -> Any:
        hints, indent, indicator = super().determine_block_hints(text)
        if hints[:1].isdigit() and not self.root_context and 1 <= self.best_map_indent <= 9:
            indent = self.best_map_indent
            hints = f"{indent}{indicator}"
        return hints, indent, indicator


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.Representer = _Representer
    yaml.Emitter = _Emitter
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long command line
    yaml.allow_duplicate_keys = False
    return yaml


def _load_doc(path: str, text: str, indent: int | None = None) -> tuple[Any, YAML]:
    """Parse `text` round-trip with a YAML configured to render it back the way it was indented (`indent`
    when given, else guessed from the text).

    Raises FileInvalid for a syntax error (with its location).
    """
    yaml = _yaml()
    try:
        if indent is not None:
            yaml.indent(mapping=indent, sequence=indent, offset=0)
        elif text.strip():
            _, guessed, block_seq_indent = load_yaml_guess_indent(text)
            guessed = guessed or 2
            yaml.indent(mapping=guessed, sequence=guessed + (block_seq_indent or 0), offset=block_seq_indent or 0)
        doc = yaml.load(text)
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = err.problem or err.context or "invalid YAML"
        raise FileInvalid([Problem(path, line, col, f"YAML syntax: {what}")]) from None
    except Exception as err:  # ruamel raises a few unmarked errors (e.g. bad unicode)
        raise FileInvalid([Problem(path, 1, 1, f"YAML syntax: {err}")]) from None
    if text.lstrip().startswith("---"):
        yaml.explicit_start = True
    return doc, yaml
