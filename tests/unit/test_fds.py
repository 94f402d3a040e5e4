"""swarmd.fds, the reader of FreneticDataSyntax (SwarmUI's Data/Backends.fds): sections by indentation (tabs
are 4 spaces), lists, binary values, comments, escapes, any line ending, values read as FDS reads them, and
errors located FILE:LINE."""

from __future__ import annotations

import pytest

from swarmd import fds

REALISTIC = (
    "0:\n"
    "\ttype: comfyui_selfstart\n"
    "\ttitle: main comfy\n"
    "\tenabled: true\n"
    "\tsettings:\n"
    "\t\tStartScript: dlbackend/comfy/ComfyUI/main.py\n"
    "\t\tExtraArgs: --preview-method auto\n"
    "\t\tGPU_ID: 0\n"
    "\t\tOverQueue: 1\n"
    "1:\n"
    "\ttype: comfyui_api\n"
    "\ttitle:\n"
    "\tenabled: false\n"
    "\tsettings:\n"
    "\t\tAddress: http://192.0.2.10:8188\n"
)

EXPECTED = {
    "0": {"type": "comfyui_selfstart", "title": "main comfy", "enabled": "true",
          "settings": {"StartScript": "dlbackend/comfy/ComfyUI/main.py", "ExtraArgs": "--preview-method auto",
                       "GPU_ID": "0", "OverQueue": "1"}},
    "1": {"type": "comfyui_api", "title": {}, "enabled": "false",
          "settings": {"Address": "http://192.0.2.10:8188"}},
}


def error_of(text: str | bytes) -> str:
    with pytest.raises(fds.FdsError) as caught:
        fds.loads(text, "Data/Backends.fds")
    return str(caught.value)


def test_a_realistic_file_with_tabs():
    root = fds.loads(REALISTIC, "Backends.fds")
    assert root.to_plain() == EXPECTED
    assert list(root) == ["0", "1"]
    assert root["0"].line == 1 and root["1"].line == 10
    assert root["0"]["settings"]["GPU_ID"] == fds.Text("0", 8)
    # `title:` with nothing deeper after it: an empty section (how older FDS wrote an empty text)
    assert isinstance(root["1"]["title"], fds.Section) and len(root["1"]["title"]) == 0


@pytest.mark.parametrize("indent", ["    ", "  ", " ", "        "])
def test_spaces_read_like_tabs(indent):
    text = REALISTIC.replace("\t", indent)
    assert fds.loads(text).to_plain() == EXPECTED


def test_a_tab_is_four_spaces_so_tabs_and_spaces_can_mix_when_they_add_up():
    text = "a:\n\tb:\n    \tc: 1\n\t    d: 2\n"
    assert fds.loads(text).to_plain() == {"a": {"b": {"c": "1", "d": "2"}}}


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_any_line_ending(ending):
    text = REALISTIC.replace("\n", ending)
    root = fds.loads(text.encode())
    assert root.to_plain() == EXPECTED
    assert root["1"].line == 10  # lines are counted the same way whatever the ending


def test_crlf_errors_are_located_by_line():
    assert error_of(b"a:\r\n    b: 1\r\n  c: 2\r\n").startswith("Data/Backends.fds:3: ")


def test_comments_and_blank_lines_anywhere():
    text = ("# top\n"
            "a:\n"
            "    # inside, at the section's indentation\n"
            "\n"
            "# at column 0, inside the section all the same\n"
            "    b: 1\n"
            "        # deeper than anything: still a comment\n"
            "    list:\n"
            "    # between a list's key and its entries\n"
            "    - x\n"
            "  # less indented than the list\n"
            "    - y\n"
            "    c: not # a comment: part of the value\n"
            "   \n"
            "# trailing\n")
    assert fds.loads(text).to_plain() == {"a": {"b": "1", "list": ["x", "y"], "c": "not # a comment: part of the value"}}


def test_a_byte_order_mark_is_ignored():
    assert fds.loads("\ufeffa: 1\n".encode()).to_plain() == {"a": "1"}


@pytest.mark.parametrize(("written", "text"), [
    ("a\\nb", "a\nb"),
    ("a\\rb", "a\rb"),
    ("a\\tb", "a\tb"),
    ("C\\c\\\\data\\\\x", "C:\\data\\x"),  # \\ is a backslash, so \\x is a backslash and an x
    ("C\\c\\sdata", "C:\\data"),  # \s: the backslash escape FDS itself writes
    ("v1\\d5", "v1.5"),
    ("a\\cb\\ec", "a:b=c"),
    ("\\x  padded  \\x", "  padded  "),  # \x: nothing, it guards the spaces
    ("\\x", ""),  # how newer FDS writes an empty text
    ("keep \\q and a lone \\", "keep \\q and a lone \\"),  # unknown escapes stay as written
    ("\"quoted\"", "\"quoted\""),  # quotes mean nothing
    ("x: y = z", "x: y = z"),  # only the first separator splits key and value
    ("ünïcødé ✓", "ünïcødé ✓"),
])
def test_escapes_in_values(written, text):
    assert fds.loads(f"key: {written}\n".encode()).to_plain() == {"key": text}


def test_escapes_in_keys():
    root = fds.loads("a\\db\\cc\\ed: 1\n\\x: empty key\nsp\\x : spaced\n")
    assert root.to_plain() == {"a.b:c=d": "1", "": "empty key", "sp ": "spaced"}


def test_trailing_spaces_are_not_part_of_a_value():
    assert fds.loads("a:   x  \nb: y\\x  \n").to_plain() == {"a": "x", "b": "y"}


def test_lists_of_text_and_binary():
    text = "a:\n    list:\n    - one\n    -two\n    - \\x spaced\\x\n    = aGk=\n    after: 1\n"
    root = fds.loads(text)
    assert root.to_plain() == {"a": {"list": ["one", "two", " spaced", b"hi"], "after": "1"}}
    assert root["a"]["list"].line == 2
    assert [item.line for item in root["a"]["list"].items] == [3, 4, 5, 6]


def test_a_list_at_the_root_and_at_the_end():
    assert fds.loads("list:\n- a\n- b").to_plain() == {"list": ["a", "b"]}


def test_binary_values():
    root = fds.loads("data= aGVsbG8=\nempty= \\x\n")
    assert root["data"] == fds.Binary(b"hello", 1)
    assert root["empty"] == fds.Binary(b"", 2)


def test_an_empty_section_at_the_end_of_the_file():
    assert fds.loads("a: 1\nb:\n").to_plain() == {"a": "1", "b": {}}


@pytest.mark.parametrize(("text", "line", "message"), [
    ("a:\n    b: 1\n  c: 2\n", 3, "indented 2 spaces, which matches no enclosing section (those are indented 0 or 4)"),
    ("a:\n    b: 1\n        c: 2\n", 3, "indented 8 spaces where 4 were expected"),
    ("  a: 1\n", 1, "indented 2 spaces where 0 were expected"),
    ("a:\n\tb:\n\t\t\tc: 1\n\t  d: 2\n", 4, "indented 6 spaces, which matches no enclosing section"),
    ("a: 1\njust text\n", 2, "expected 'key: value', 'key:' or a '# comment', got 'just text'"),
    (": value\n", 1, "empty key"),
    ("a: 1\nb: 2\na: 3\n", 3, "key 'a' given twice in one section (first at line 1)"),
    ("- orphan\n", 1, "a list entry ('-') without a 'key:' line"),
    ("a:\n    - deeper\n", 2, "list entries go at their key's own indentation"),
    ("a:\n- x\n    - y\n", 3, "indented 4 spaces inside a list whose entries are indented 0"),
    ("a:\n> b: 1\n", 2, "complex list entries ('>') are not supported"),
    ("a= not base64!\n", 1, "invalid base64 after '='"),
    ("a=\n", 1, "nothing after '='"),
])
def test_bad_files_are_located(text, line, message):
    error = error_of(text)
    assert error.startswith(f"Data/Backends.fds:{line}: "), error
    assert message in error


def test_invalid_utf8_names_the_line():
    error = error_of(b"a: 1\r\nb: 2\nc: caf\xe9\n")
    assert error.startswith("Data/Backends.fds:3: not UTF-8 text")


def test_a_missing_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "Data" / "Backends.fds"
    with pytest.raises(fds.FdsError) as caught:
        fds.load(str(path))
    assert str(caught.value) == f"{path}:1: cannot read: No such file or directory"


def test_load_reads_a_file(tmp_path):
    path = tmp_path / "Backends.fds"
    path.write_bytes(REALISTIC.replace("\n", "\r\n").encode())
    assert fds.load(str(path)).to_plain() == EXPECTED


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("1", 1), ("-3", -3), ("9223372036854775807", 9223372036854775807),
    ("3.5", 3.5), ("0.25", 0.25), ("-0.5", -0.5), ("0.0001", 0.0001), ("1E+20", 1e20), ("1E-05", 1e-05),
    ("123456789012345", 123456789012345), ("1.2345678901234568E+15", 1.2345678901234568e15),
    ("true", True), ("false", False),
])
def test_values_fds_reads_as_numbers_or_booleans(text, value):
    result = fds.interpret(text)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize("text", [
    "3.50", "007", "+1", " 1", "1 ", "1.0", "100.0", ".5", "5.", "1e5", "1E20", "0.00001", "1e+20",
    "9223372036854775808", "True", "FALSE", "yes", "", "0x10", "1_000", "١٢", "NaN", "Infinity",
])
def test_values_that_stay_text(text):
    assert fds.interpret(text) == text


def test_the_exact_readers():
    assert fds.read_int("12") == 12 and fds.read_int("12.0") is None and fds.read_int("1.5") is None
    assert fds.read_number("12") == 12 and fds.read_number("1.5") == 1.5 and fds.read_number("1.50") is None
    assert fds.read_bool("true") is True and fds.read_bool("false") is False and fds.read_bool("True") is None
    assert fds.Text("3.5", 1).interpret() == 3.5
