"""The backends file: load and validate it with located errors, edit it in place, write it atomically.

Theory of operation
-------------------
People edit this file by hand and the daemon writes every API change back into it, so both directions must
be trustworthy -- and a change must stay cheap at 10,000 backends (a 3 MB file), where ruamel's round trip
of the whole file takes tens of seconds and a whole-file parse 3 s, but a reload or an API edit must take
milliseconds.

* Reading. `parse()` validates a text. A valid file -- the common case -- is read with the C-accelerated
  safe loader (YAML 1.2); only a file with a problem is read again round-trip, to place *every* problem at
  FILE:LINE:COL (`Problem`, raised together as `FileInvalid`). A valid file becomes a `BackendsFile`: its
  text, its bytes and one frozen `BackendDef` per id. Messages never show a raw value in full
  (`settings.describe`): YAML aliases can make a small file a gigantic shared structure.
* Reloading, the fast path. A new version of a file laid out the usual way is cut into entries by the same
  line scan as editing uses (`_scan`), and only the entries whose text changed are parsed and validated
  (`incremental.reparse`); the others keep their definitions, the very same objects. Anything unusual
  (anchors, aliases, tags, CRLF, a BOM, a flow-style `backends:`, a changed entry that does not parse)
  takes the whole-file parse, which also gives every error: the result is the same either way.
* One owner. `BackendsStore` is the only code that reads or writes the file for the daemon. It keeps the
  version it last read or wrote (`current`); `write()` applies changes to that text, validates the new
  text *before* writing it, and swaps it in only if the file on disk still holds that version's bytes
  (compared as bytes: hashing megabytes at every write and reload would cost more than the edit). What
  `write()` returns is what the written text parses to, so the daemon's memory always equals the file.
* Editing, the fast path. A file laid out the usual way (`backends:`, then one block per id at a fixed
  indentation) is indexed by a line scan: where each entry's lines begin and end (`_build_index`). A
  change touches only its entry: that block alone is parsed round-trip, edited and rendered by `Editor`,
  and spliced back; an added entry goes after the last one, a deleted one is cut out with its heading
  comments, a rename rewrites the key's digits. Every other byte stays as it was, and only the changed
  blocks are validated again, each on its own. The index is used only where it provably describes the file
  the way a YAML parser sees it; any other file takes the slow path.
* Editing, the slow path. `Editor` parses the whole text round-trip, changes the nodes that must change and
  renders the document again with the file's own indentation, so comments, key order and quoting of
  untouched lines come back byte-for-byte. Correct for any file; slow for a big one.
* Writing. `atomic_write()` writes a temp file next to the target (old mode and owner kept, fsynced) and
  swaps it in with renameat2(RENAME_EXCHANGE) under the write lock; if what it displaced is not the version
  the edit started from, it swaps theirs straight back (`Conflict`). The write lock is the file
  `<real path of the backends file>.lock`, which only those who may write the backends file can open, so
  no other local user can stall the daemon's writes, and the daemon waits for it `lock_timeout` seconds at
  most (`LockTimeout`). A config tool that edits the file while the daemon runs takes the same lock, e.g.
  `flock /etc/swarmd/backends.yaml.lock CMD`: its read-modify-write and the daemon's never interleave.

Layout
------
* `model`: what a read gives -- `BackendsFile`, `BackendDef`, `Problem`, `FileInvalid`, `digest_of`.
* `parser`: reading and validating -- `read()`, `parse()`, the positions of problems.
* `roundtrip`: the round-trip YAML, loaded with comments and positions and rendered back as it was.
* `changes`: `SetBackend`, `RenameBackend`, `DeleteBackend` (a `Change`).
* `edit`: `Editor`, the node-by-node edit of a document (the slow path), and `yaml_value`.
* `index`: the fast paths' line scan of where each entry is (`_scan`, `_build_index`).
* `incremental`: the reload that parses only the entries whose text changed (`reparse`).
* `splice`: the fast path's edits, spliced into the text (`_Splice`).
* `store`: `BackendsStore`, the one owner of the file.
* `write`: `atomic_write()`, the compare-and-swap (`Conflict`), stale temp files.
* `lock`: the write lock (`lock_path_of`, `LockTimeout`).

Every public name is importable from the package itself, which is how the rest of swarmd uses it.
"""

from __future__ import annotations

from swarmd.backends_file.changes import Change, DeleteBackend, RenameBackend, SetBackend
from swarmd.backends_file.edit import Editor, yaml_value
from swarmd.backends_file.lock import LockTimeout, lock_path_of
from swarmd.backends_file.model import BACKEND_KEYS, BackendDef, BackendsFile, FileInvalid, Problem, digest_of
from swarmd.backends_file.parser import key_position, node_position, parse, read, value_position
from swarmd.backends_file.store import BackendsStore
from swarmd.backends_file.write import Conflict, atomic_write
from swarmd.types import TYPES  # the default `types` of read(), parse() and BackendsStore

__all__ = [
    "BACKEND_KEYS",
    "TYPES",
    "BackendDef",
    "BackendsFile",
    "BackendsStore",
    "Change",
    "Conflict",
    "DeleteBackend",
    "Editor",
    "FileInvalid",
    "LockTimeout",
    "Problem",
    "RenameBackend",
    "SetBackend",
    "atomic_write",
    "digest_of",
    "key_position",
    "lock_path_of",
    "node_position",
    "parse",
    "read",
    "value_position",
    "yaml_value",
]
