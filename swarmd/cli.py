"""`swarmd serve`, `swarmd check` and `swarmd import`.

Both read the daemon config file (`--config`, default /etc/swarmd/swarmd.yaml when it exists; see
swarmd.config); flags given on the command line win over it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import trio

from swarmd import __version__, backends_file, config, logs
from swarmd.backends_file import FileInvalid


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swarmd", description="Supervisor daemon for GPU inference backends.")
    parser.add_argument("--version", action="version", version=f"swarmd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = (f"the daemon config file (default: {config.DEFAULT_CONFIG} when it exists; "
                   "a file named here must exist)")
    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--config", help=config_help)
    serve.add_argument("--backends", help=f"the backends YAML file (default: the config's backends:, "
                                          f"else {config.DEFAULT_BACKENDS})")
    serve.add_argument("--socket", help="path of the API's unix socket (default: the config's socket.path, "
                                        f"else $RUNTIME_DIRECTORY/{config.SOCKET_NAME} under systemd, "
                                        f"else {config.DEFAULT_SOCKET})")
    serve.add_argument("--log-level", choices=config.LOG_LEVELS, help="default: the config's log_level, else info")
    check = sub.add_parser("check", help="validate the config file and a backends file; print one line per problem")
    check.add_argument("--config", help=config_help)
    check.add_argument("--backends", help="the backends YAML file (default: the config's backends:)")
    imp = sub.add_parser("import", help="import SwarmUI's saved backends (Data/Backends.fds) into a backends file",
                         description="Import SwarmUI's saved backends into a swarmd backends file. Exit status: "
                                     "0 everything imported as it is; 3 written, but something was skipped, "
                                     "refused (imported disabled) or dropped; 1 nothing written; 2 usage.")
    imp.add_argument("--from", dest="source", required=True, metavar="FDS",
                     help="SwarmUI's backends file, PATH/Data/Backends.fds")
    imp.add_argument("--backends", help="the backends YAML file to write into (created when missing; default: the "
                                        "config's backends:)")
    imp.add_argument("--config", help=config_help)
    imp.add_argument("--dry-run", action="store_true", help="print the resulting backends file; write nothing")
    imp.add_argument("--replace", action="store_true",
                     help="replace the target's entries whose id a SwarmUI backend has (default: keep them)")
    imp.add_argument("--swarmui-dir", metavar="DIR",
                     help="the SwarmUI folder that a relative StartScript is relative to (default: the parent "
                          "of the .fds file's folder)")
    return parser


def check(path: str) -> int:
    """Print `FILE:LINE:COL: message` for each problem. 0 valid, 1 invalid or unreadable."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        print(f"{path}:1:1: cannot read: {err.strerror}", file=sys.stderr)
        return 1
    try:
        loaded = backends_file.parse(path, data)
    except FileInvalid as err:
        for problem in err.problems:
            print(problem)
        return 1
    print(f"{path}: ok, {len(loaded.backends)} backends")
    return 0


def _resolve(args: argparse.Namespace) -> config.DaemonConfig | None:
    """The daemon's configuration from flags, config file and defaults (user and group names resolved:
    before the event loop runs); None (problems printed) when the config is bad."""
    try:
        return config.resolve(config=args.config, backends=args.backends,
                              socket=getattr(args, "socket", None), log_level=getattr(args, "log_level", None))
    except config.ConfigInvalid as err:
        logs.flush()  # the loader's warnings first
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return None


def serve(args: argparse.Namespace) -> int:
    """Run the daemon. 0 after a clean stop; 1 when the config, the backends file or the socket is unusable."""
    from swarmd.daemon import run_daemon

    # The log is set up first, so that the config loader's warnings (an access rule naming an unknown user)
    # are formatted like the rest; the config's log_level applies from then on.
    logs.setup(args.log_level or "info")
    settings = _resolve(args)
    if settings is None:
        print(f"swarmd: {args.config or config.DEFAULT_CONFIG} is invalid; nothing was started", file=sys.stderr)
        return 1
    logs.setup(settings.log_level)
    startup_errors = _startup_errors()
    try:
        return trio.run(run_daemon, settings)
    except BaseExceptionGroup as group:
        # trio's nurseries wrap a startup error in an ExceptionGroup; report it like a bare one.
        leaves = list(_leaves(group))
        if not all(isinstance(leaf, startup_errors) for leaf in leaves):
            raise
        for leaf in leaves:
            _report_startup_error(leaf, settings.backends)
        return 1
    except startup_errors as err:
        _report_startup_error(err, settings.backends)
        return 1


def _startup_errors() -> tuple[type[BaseException], ...]:
    """What the daemon raises when it cannot start (imported late: `swarmd check` needs no web server, and
    the daemon imports it only once its backends are starting)."""
    from swarmd.api import SocketInUse
    from swarmd.systemd import ActivationError

    return (FileInvalid, OSError, SocketInUse, ValueError, ActivationError)


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def _report_startup_error(err: BaseException, backends: str) -> None:
    """Print why the daemon could not start: every located problem of a bad backends file, or one line."""
    logs.flush()  # what the daemon logged comes first
    if isinstance(err, FileInvalid):
        for problem in err.problems:
            print(problem, file=sys.stderr)
        print(f"swarmd: {backends} is invalid; nothing was started", file=sys.stderr)
    else:
        print(f"swarmd: {err}", file=sys.stderr)


def import_backends(args: argparse.Namespace) -> int:
    """`swarmd import` (swarmd.importer): 0 all imported, 3 partly, 1 nothing written."""
    from swarmd import importer

    settings = _resolve(args)
    if settings is None:
        return 1
    return importer.run(args.source, settings.backends, dry_run=args.dry_run, replace_existing=args.replace,
                        swarmui_dir=args.swarmui_dir)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "import":
        return import_backends(args)
    if args.command == "check":
        settings = _resolve(args)
        if settings is None:
            return 1
        if settings.config_path is not None:
            print(f"{settings.config_path}: ok")
        return check(settings.backends)
    return serve(args)
