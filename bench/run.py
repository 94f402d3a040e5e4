"""`python -m bench.run [--quick] [BENCHMARK ...]`: run the benchmarks, print tables, write bench/results/.

Benchmarks: restart, status, scale, config, edit, chatty (all by default). `--quick` is the ~2-minute mode: fewer
repetitions, smaller fleets. `--swarmd-src DIR` runs the swarmd of another checkout (before/after figures;
`--results` keeps them apart). Everything started is killed on exit, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType, ModuleType

from bench import bench_chatty, bench_config, bench_edit, bench_restart, bench_scale, bench_status, report
from bench.session import Settings, log
from bench.systems import SYSTEMS, swarmd_source

BENCHMARKS: dict[str, ModuleType] = {
    module.NAME: module for module in (bench_restart, bench_status, bench_scale, bench_config, bench_edit,
                                       bench_chatty)
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("benchmarks", nargs="*", metavar="BENCHMARK",
                        help=f"which to run, of {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="~2 minutes: fewer repetitions, small fleets")
    parser.add_argument("--systems", default=",".join(cls.name for cls in SYSTEMS),
                        help="comma-separated subset of: swarmd,supervisord,circus")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (configs, daemon logs)")
    parser.add_argument("--swarmd-src", type=Path, metavar="DIR",
                        help="run the swarmd of this checkout (its root goes first on the daemon's PYTHONPATH), "
                             "e.g. `git worktree add /tmp/swarmd-before HEAD` for a before/after figure")
    parser.add_argument("--results", type=Path, default=report.RESULTS, metavar="DIR",
                        help=f"where the JSON and PNG files go (default: {report.RESULTS})")
    return parser


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _summary(results: list[report.Result], mode: str, directory: Path) -> str:
    lines = ["== swarmd goals =="]
    checks = [check for result in results for check in result.goal_checks()]
    for check in checks:
        value = float(check["swarmd_value"])  # type: ignore[arg-type]
        shown = "-" if math.isnan(value) else f"{value:.3g}"
        lines.append(f"{check['verdict']:<12}  {check['goal']:<45} swarmd {check['stat']} {shown}")
    directory.mkdir(parents=True, exist_ok=True)
    safe = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in c.items()} for c in checks]
    (directory / "summary.json").write_text(json.dumps({"mode": mode, "goals": safe}, indent=2) + "\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    unknown = [name for name in args.benchmarks if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    wanted = set(args.systems.split(","))
    systems = [cls for cls in SYSTEMS if cls.name in wanted]
    names = args.benchmarks or list(BENCHMARKS)
    mode = "quick" if args.quick else "full"
    src = args.swarmd_src.resolve() if args.swarmd_src else None
    if src is not None and not (src / "swarmd" / "__init__.py").is_file():
        parser.error(f"--swarmd-src {src}: no swarmd/__init__.py there (give a checkout's root)")
    source = swarmd_source(src) if "swarmd" in wanted else ""
    if source:
        log(source)
    _raise_fd_limit()
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Started in the background by a shell, SIGINT is inherited ignored: make Ctrl-C/kill -INT work anyway.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    root = Path(tempfile.mkdtemp(prefix="swarmd-bench-", dir="/tmp"))
    settings = Settings(quick=args.quick, root=root, systems=systems, swarmd_src=src)
    results: list[report.Result] = []
    began = time.monotonic()
    try:
        for name in names:
            load_before = os.getloadavg()[0]
            log(f"benchmark {name} ({mode}), load average {load_before:.2f}")
            if load_before > 0.5:
                log("warning: the machine is busy; other load inflates every figure")
            result = BENCHMARKS[name].run(settings)
            result.notes.append(f"1-minute load average before/after: {load_before:.2f} / "
                                f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
            if source:
                result.notes.append(source)
            results.append(result)
            print(report.format_table(result), flush=True)
            print(f"-> {report.write_json(result, mode, args.results)}, "
                  f"{report.write_chart(result, args.results)}\n", flush=True)
        print(_summary(results, mode, args.results))
    except KeyboardInterrupt:
        log("interrupted: everything started has been killed")
        return 130
    finally:
        if args.keep:
            log(f"run directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    log(f"done in {time.monotonic() - began:.0f} s")
    failed = [note for result in results for note in result.notes if note.startswith("FAILED ")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
