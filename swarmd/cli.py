"""`swarmd serve` and `swarmd check`."""

from __future__ import annotations

import argparse
import sys

import trio

from swarmd import __version__, backends_file, logs
from swarmd.backends_file import FileInvalid


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swarmd", description="Supervisor daemon for GPU inference backends.")
    parser.add_argument("--version", action="version", version=f"swarmd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--backends", required=True, help="the backends YAML file")
    serve.add_argument("--socket", required=True, help="path of the API's unix socket")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    check = sub.add_parser("check", help="validate a backends file; print one line per problem")
    check.add_argument("--backends", required=True, help="the backends YAML file")
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


def serve(args: argparse.Namespace) -> int:
    from swarmd.daemon import DaemonOptions, run_daemon

    logs.setup(args.log_level)
    options = DaemonOptions(backends=args.backends, socket=args.socket)
    try:
        return trio.run(run_daemon, options)
    except FileInvalid as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        print(f"swarmd: {args.backends} is invalid; nothing was started", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"swarmd: {err}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return check(args.backends)
    return serve(args)
