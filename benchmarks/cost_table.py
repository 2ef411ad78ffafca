"""Where a finished workflow run spent its time and memory, from the jobs' benchmark files.

Every compute rule writes Snakemake's benchmark file, ``{results}/benchmarks/{rule}/...tsv``
(wall seconds ``s``, ``cpu_time``, peak ``max_rss`` in MB, ...). This script reads them all and
prints, per rule and per experiment (the training jobs' ``{experiment}`` path part): the number
of jobs, CPU seconds, wall seconds, the largest peak RSS and the share of the total CPU time; then
the run's wall time (from the Snakemake log given with ``--log``, else the span of the benchmark
files' modification times), and the per-rule resources a cluster profile could ask for: the
largest peak RSS and the longest job, each times ``--margin``. The rules without a benchmark file
(aggregation, figures, the summary) are counted from the log: with ``--log``, a second table gives
every rule's jobs and wall seconds from the log's start and finish stamps (1 s resolution), and
how busy the cores were: the jobs' wall seconds over ``--cores`` times the run's wall time.

    python benchmarks/cost_table.py results                       # a finished `make run`
    python benchmarks/cost_table.py results --log .snakemake/log/<run>.snakemake.log --markdown out.md
"""

from __future__ import annotations

import argparse
import csv
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path


@dataclass
class Cost:
    jobs: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    max_rss_mb: float = 0.0
    longest_s: float = 0.0
    files: list[Path] = field(default_factory=list)

    def add(self, row: dict, path: Path) -> None:
        wall = float(row["s"])
        self.jobs += 1
        self.cpu_s += _number(row.get("cpu_time"))
        self.wall_s += wall
        self.max_rss_mb = max(self.max_rss_mb, _number(row.get("max_rss")))
        self.longest_s = max(self.longest_s, wall)
        self.files.append(path)


def _number(value) -> float:
    """A benchmark value; Snakemake writes ``NA`` where it could not measure (a job too short)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def read_costs(results: Path) -> tuple[dict[str, Cost], dict[tuple[str, str], Cost]]:
    """Costs per rule and per (rule, experiment) from ``{results}/benchmarks/**/*.tsv``."""
    root = results / "benchmarks"
    files = sorted(root.rglob("*.tsv"))
    if not files:
        raise SystemExit(f"no benchmark files under {root}: is {results} the results folder of a finished run?")
    per_rule: dict[str, Cost] = {}
    per_experiment: dict[tuple[str, str], Cost] = {}
    for path in files:
        parts = path.relative_to(root).parts
        rule = parts[0]
        experiment = parts[1] if rule == "train" and len(parts) > 2 else "-"
        with path.open() as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if not rows:
            continue
        row = rows[-1]  # a rerun appends nothing: Snakemake rewrites the file; the last row is the job
        per_rule.setdefault(rule, Cost()).add(row, path)
        per_experiment.setdefault((rule, experiment), Cost()).add(row, path)
    return per_rule, per_experiment


def run_wall_seconds(log: Path | None, costs: dict[str, Cost]) -> tuple[float, str]:
    """The run's wall time: first to last timestamp of a Snakemake log, else the benchmark files' span."""
    if log is not None:
        stamps = re.findall(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]", log.read_text(), flags=re.MULTILINE)
        if len(stamps) >= 2:
            times = [datetime.strptime(" ".join(s.split()), "%a %b %d %H:%M:%S %Y") for s in stamps]
            return (max(times) - min(times)).total_seconds(), f"from {log}"
    ends = [(p.stat().st_mtime, c) for c in costs.values() for p in c.files]
    starts = [mtime - cost.longest_s for mtime, cost in ends]
    return max(m for m, _ in ends) - min(starts), "span of the benchmark files (approximate)"


_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_STARTED = re.compile(r"^Job (\d+):")
_FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: ([\w-]+)\)")


def log_costs(log: Path) -> dict[str, Cost]:
    """Jobs and wall seconds per rule from a Snakemake log: each job from its ``Job N:`` line to its
    ``Finished jobid: N (Rule: ...)`` line, timed by the stamp above each (``cpu_s`` and RSS stay 0)."""
    costs: dict[str, Cost] = {}
    started: dict[str, datetime] = {}
    stamp = None
    for line in log.read_text().splitlines():
        if match := _STAMP.match(line):
            stamp = datetime.strptime(" ".join(match.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif (match := _STARTED.match(line)) and stamp is not None:
            started[match.group(1)] = stamp
        elif (match := _FINISHED.match(line)) and stamp is not None and match.group(1) in started:
            wall = (stamp - started.pop(match.group(1))).total_seconds()
            costs.setdefault(match.group(2), Cost()).add({"s": wall}, log)
    return costs


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="results", type=Path, help="the results folder (config key results)")
    parser.add_argument("--log", type=Path, help="the run's Snakemake log (.snakemake/log/*.snakemake.log)")
    parser.add_argument("--margin", type=float, default=1.5, help="factor on measured memory and time for the profile")
    parser.add_argument("--cores", type=int, default=2, help="the run's --cores, for how busy the cores were")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args()

    per_rule, per_experiment = read_costs(args.results)
    total_cpu = sum(c.cpu_s for c in per_rule.values()) or 1.0
    header = ["rule", "experiment", "jobs", "CPU s", "wall s", "max RSS MB", "CPU share"]
    rows = []
    for rule, cost in sorted(per_rule.items(), key=lambda item: -item[1].cpu_s):
        rows.append([rule, "(all)", cost.jobs, f"{cost.cpu_s:,.0f}", f"{cost.wall_s:,.0f}", f"{cost.max_rss_mb:,.0f}",
                     f"{100 * cost.cpu_s / total_cpu:.1f} %"])
        if rule == "train":
            for (r, experiment), part in sorted(per_experiment.items(), key=lambda item: -item[1].cpu_s):
                if r == rule:
                    rows.append(["", experiment, part.jobs, f"{part.cpu_s:,.0f}", f"{part.wall_s:,.0f}",
                                 f"{part.max_rss_mb:,.0f}", f"{100 * part.cpu_s / total_cpu:.1f} %"])
    wall, source = run_wall_seconds(args.log, per_rule)
    jobs = sum(c.jobs for c in per_rule.values())
    summary = (f"{jobs} benchmarked jobs, {total_cpu:,.0f} CPU s in all; run wall time {wall / 60:.1f} min ({source})")
    resources = [[rule, f"{math.ceil(args.margin * c.max_rss_mb / 100) * 100}",
                  f"{math.ceil(args.margin * c.longest_s / 60)}"] for rule, c in sorted(per_rule.items())]
    parts = [table(rows, header), summary]
    if args.log is not None:
        logged = log_costs(args.log)
        total_wall = sum(c.wall_s for c in logged.values()) or 1.0
        log_rows = [[rule, c.jobs, f"{c.wall_s:,.0f}", f"{c.longest_s:,.0f}", f"{100 * c.wall_s / total_wall:.1f} %"]
                    for rule, c in sorted(logged.items(), key=lambda item: -item[1].wall_s)]
        parts += [f"Every job from the log ({sum(c.jobs for c in logged.values())} jobs, {total_wall:,.0f} job-wall s; "
                  f"the {args.cores} cores were busy {100 * total_wall / (args.cores * wall):.0f} % of the run):",
                  table(log_rows, ["rule", "jobs", "wall s", "longest s", "wall share"])]
    parts += [f"Per-rule resources, measured peak x {args.margin:g} (mem_mb) and longest job x {args.margin:g} (runtime, min):",
              table(resources, ["rule", "mem_mb", "runtime"])]
    text = "\n\n".join(parts)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
