"""`python -m bench.table [DIR]`: the last run's results (bench/results/*.json) as one Markdown table --
every figure's median per system, swarmd's ratio to each peer, and the machine's load -- for
bench/README.md's "Last full run" section."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.report import ORDER, RESULTS
from bench.report import _fmt as report_fmt

#: The order the benchmarks appear in (the rest after, by name).
BENCHMARKS = ["restart", "status", "scale", "config", "edit", "chatty"]


def _fmt(value: float | None) -> str:
    return "-" if value is None else report_fmt(value)


def table(directory: Path = RESULTS) -> str:
    """The Markdown text for every result file in `directory`."""
    files = {path.stem: path for path in directory.glob("*.json") if path.stem != "summary"}
    names = [name for name in BENCHMARKS if name in files] + sorted(set(files) - set(BENCHMARKS))
    lines = ["| benchmark | figure | case | unit | swarmd | supervisord | circus | swarmd / supervisord | "
             "swarmd / circus | load (1 min) |", "|" + " --- |" * 10]
    for name in names:
        data = json.loads(files[name].read_text())
        figures = {(f["metric"], f["case"], f["system"]): f for f in data["figures"]}
        ratios = {(r["metric"], r["case"], r["peer"]): r["swarmd_over_peer"] for r in data["ratios"]}
        load = _fmt(data["machine"]["loadavg_at_end"][0])
        seen: list[tuple[str, str, str]] = []
        for f in data["figures"]:
            if (f["metric"], f["case"], f["unit"]) not in seen:
                seen.append((f["metric"], f["case"], f["unit"]))
        for metric, case, unit in seen:
            cells = []
            for system in ORDER:
                f = figures.get((metric, case, system))
                cells.append("-" if f is None else _fmt(f["median"]) + (f" ({f['failures']} failed)"
                                                                         if f["failures"] else ""))
            ratio = [_fmt(ratios.get((metric, case, peer))) for peer in ORDER[1:]]
            lines.append(f"| {name} | {metric} | {case} | {unit} | {' | '.join(cells)} | {' | '.join(ratio)} "
                         f"| {load} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print(table(Path(args[0]) if args else RESULTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
