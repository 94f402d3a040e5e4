"""Results: samples per (metric, case, system), the printed table, the JSON file and the PNG chart."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PEERS = ["supervisord", "circus"]
ORDER = ["swarmd", *PEERS]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Figure:
    """The samples of one metric in one case for one system; `failures` counts samples that timed out."""

    metric: str
    case: str
    unit: str
    system: str
    samples: list[float] = field(default_factory=list)
    failures: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    @property
    def p95(self) -> float:
        return percentile(self.samples, 95)

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else math.nan


#: The statistics a goal may be on (Figure properties) and a table may show.
STATS = ("median", "p95", "max")


@dataclass
class Goal:
    """swarmd's goal for one metric/case: its `stat` (median by default, or p95, max) must be under
    `limit` (over it, for a throughput: `higher`)."""

    metric: str
    case: str
    limit: float
    text: str
    stat: str = "median"
    #: A throughput: the figure must be OVER `limit`.
    higher: bool = False

    def __post_init__(self) -> None:
        if self.stat not in STATS:
            raise ValueError(f"goal on {self.stat!r}: one of {STATS}")


@dataclass
class Result:
    """Everything one benchmark measured."""

    name: str
    title: str
    figures: dict[tuple[str, str, str], Figure] = field(default_factory=dict)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: The systems the table and chart show (a swarmd-only benchmark: ["swarmd"]) and the statistics the
    #: table gives for each (always with the sample count).
    systems: list[str] = field(default_factory=lambda: list(ORDER))
    stats: tuple[str, ...] = ("median", "p95")

    def figure(self, metric: str, case: str, unit: str, system: str) -> Figure:
        key = (metric, case, system)
        if key not in self.figures:
            self.figures[key] = Figure(metric, case, unit, system)
        return self.figures[key]

    def add(self, metric: str, case: str, unit: str, system: str, value: float | None) -> None:
        """One sample; None is a failure (timeout)."""
        fig = self.figure(metric, case, unit, system)
        if value is None:
            fig.failures += 1
        else:
            fig.samples.append(value)

    def rows(self) -> list[tuple[str, str, str]]:
        """(metric, case, unit) in the order they were first measured."""
        seen: dict[tuple[str, str, str], None] = {}
        for fig in self.figures.values():
            seen.setdefault((fig.metric, fig.case, fig.unit), None)
        return list(seen)

    def get(self, metric: str, case: str, system: str) -> Figure | None:
        return self.figures.get((metric, case, system))

    def goal_checks(self) -> list[dict[str, object]]:
        checks = []
        for goal in self.goals:
            fig = self.get(goal.metric, goal.case, "swarmd")
            value = getattr(fig, goal.stat) if fig else math.nan
            if fig is None:
                verdict = "not measured"
            elif fig.samples and not fig.failures and (value > goal.limit if goal.higher else value < goal.limit):
                verdict = "met"
            else:
                verdict = "MISS"
            checks.append({"goal": goal.text, "metric": goal.metric, "case": goal.case, "limit": goal.limit,
                           "stat": goal.stat, "swarmd_value": value,
                           "swarmd_median": fig.median if fig else math.nan,
                           "swarmd_p95": fig.p95 if fig else math.nan,
                           "swarmd_max": fig.max if fig else math.nan, "verdict": verdict})
        return checks


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _stat_header(system: str, stat: str) -> str:
    return f"{system + ' med':>15}" if stat == "median" else f"{stat:>8}"


def _stat_cell(value: str, stat: str) -> str:
    return f"{value:>15}" if stat == "median" else f"{value:>8}"


def format_table(result: Result) -> str:
    """The table printed for a person: median/p95 (+ max where the result asks)/n per system, then
    swarmd/peer ratios of medians."""
    peers = [peer for peer in PEERS if peer in result.systems]
    header = f"{'metric':<22} {'case':<10} {'unit':<5}"
    for system in result.systems:
        header += " | " + " ".join(_stat_header(system, stat) for stat in result.stats) + f" {'n':>4}"
    if peers:
        header += " | " + "  ".join(f"{'/' + peer:>12}" for peer in peers)
    lines = [f"== {result.title} ==", header, "-" * len(header)]
    for metric, case, unit in result.rows():
        line = f"{metric:<22} {case:<10} {unit:<5}"
        for system in result.systems:
            fig = result.get(metric, case, system)
            if fig is None:
                line += " | " + " ".join(_stat_cell("-", stat) for stat in result.stats) + f" {'-':>4}"
                continue
            count = f"{len(fig.samples)}" + (f"!{fig.failures}" if fig.failures else "")
            cells = " ".join(_stat_cell(_fmt(getattr(fig, stat)), stat) for stat in result.stats)
            line += f" | {cells} {count:>4}"
        if not peers:
            lines.append(line)
            continue
        ours = result.get(metric, case, "swarmd")
        ratios = []
        for peer in peers:
            theirs = result.get(metric, case, peer)
            if ours and theirs and ours.samples and theirs.samples and theirs.median:
                ratios.append(f"{ours.median / theirs.median:>12.4f}")
            else:
                ratios.append(f"{'-':>12}")
        line += " | " + "  ".join(ratios)
        lines.append(line)
    lines.append("(n!k: k samples timed out" + ("; ratios are swarmd median / peer median)" if peers else ")"))
    for check in result.goal_checks():
        stat = str(check["stat"])
        # A median goal shows the p95 beside it; a goal on p95 or max shows the median and p95.
        others = ["p95"] if stat == "median" else [name for name in ("median", "p95") if name != stat]
        beside = ", ".join(f"{other} {_fmt(float(check[f'swarmd_{other}']))}"  # type: ignore[arg-type]
                           for other in others)
        lines.append(f"goal {check['verdict']:<4} {check['goal']}: swarmd {stat} "
                     f"{_fmt(float(check['swarmd_value']))} ({beside})")  # type: ignore[arg-type]
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)


def _json_safe(value: float) -> float | None:
    return None if math.isnan(value) else value


def write_json(result: Result, mode: str, directory: Path = RESULTS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = {
        "name": result.name, "title": result.title, "mode": mode,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": _cpus(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_at_end": list(os.getloadavg())},
        "figures": [
            {"metric": f.metric, "case": f.case, "unit": f.unit, "system": f.system,
             "median": _json_safe(f.median), "p95": _json_safe(f.p95), "max": _json_safe(f.max),
             "n": len(f.samples),
             "failures": f.failures, "samples": f.samples}
            for f in result.figures.values()
        ],
        "ratios": [
            {"metric": m, "case": c, "peer": peer, "swarmd_over_peer": _json_safe(_ratio(result, m, c, peer))}
            for m, c, _u in result.rows() for peer in PEERS if peer in result.systems
        ],
        "goals": [{k: (_json_safe(v) if isinstance(v, float) else v) for k, v in check.items()}
                  for check in result.goal_checks()],
        "notes": result.notes,
    }
    path = directory / f"{result.name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def _ratio(result: Result, metric: str, case: str, peer: str) -> float:
    ours, theirs = result.get(metric, case, "swarmd"), result.get(metric, case, peer)
    if ours and theirs and ours.samples and theirs.samples and theirs.median:
        return ours.median / theirs.median
    return math.nan


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def write_chart(result: Result, directory: Path = RESULTS) -> Path:
    """One bar group per (metric, case), a bar per system at the median, a whisker to p95; log scale. A
    metric with a goal on its max shows the max too (a marker)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.rows()
    metrics = list(dict.fromkeys(m for m, _c, _u in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(6, 4.5 * len(metrics)), 4.5), squeeze=False)
    colors = {"swarmd": "#2a9d8f", "supervisord": "#e76f51", "circus": "#8d99ae"}
    for ax, metric in zip(axes[0], metrics, strict=True):
        cases = [(c, u) for m, c, u in rows if m == metric]
        width = 0.8 / len(result.systems)
        show_max = any(goal.metric == metric and goal.stat == "max" for goal in result.goals)
        for index, system in enumerate(result.systems):
            xs, medians, errors, maxima = [], [], [], []
            for position, (case, _unit) in enumerate(cases):
                f = result.get(metric, case, system)
                if f is None or not f.samples:
                    continue
                xs.append(position + (index - (len(result.systems) - 1) / 2) * width)
                medians.append(f.median)
                errors.append(max(0.0, f.p95 - f.median))
                maxima.append(f.max)
            ax.bar(xs, medians, width, yerr=[[0] * len(errors), errors], label=system,
                   color=colors[system], capsize=3)
            if show_max:
                ax.plot(xs, maxima, linestyle="none", marker="v", color=colors[system],
                        label=f"{system} max")
        ax.set_xticks(range(len(cases)), [c for c, _u in cases])
        ax.set_yscale("log")
        ax.set_title(metric)
        ax.set_ylabel(cases[0][1] if cases else "")
        for goal in result.goals:
            if goal.metric == metric:
                ax.axhline(goal.limit, color="#2a9d8f", linestyle=":", linewidth=1)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0][0].legend()
    marks = "; triangle: max" if any(goal.stat == "max" for goal in result.goals) else ""
    fig.suptitle(f"{result.title} (median, whisker to p95{marks}, log scale; dotted: swarmd goal)")
    fig.tight_layout()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{result.name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
