"""The protocol cost table (benchmarks/cost_table.py) from synthetic benchmark files."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write(path: Path, wall: float, rss: float, cpu: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{wall}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t90\t{cpu}\n")


def test_costs_per_rule_and_experiment_with_shares_and_profile_resources(tmp_path):
    bench = tmp_path / "results" / "benchmarks"
    write(bench / "train" / "main" / "fa" / "seed0.tsv", 100, 900, "90")
    write(bench / "train" / "main" / "fa" / "seed1.tsv", 120, 1000, "110")
    write(bench / "train" / "shadow" / "fa" / "seed0.tsv", 600, 1200, "600")
    write(bench / "open_loop" / "auto.tsv", 10, 500, "NA")  # too short to measure: counted as 0
    log = tmp_path / "run.log"
    log.write_text(
        "[Mon Nov 30 10:00:00 2026]\nJob 1: Training main/fa, seed 0\n"
        "[Mon Nov 30 10:00:00 2026]\nJob 2: Training shadow/fa, seed 0\n"
        "[Mon Nov 30 10:01:40 2026]\nFinished jobid: 1 (Rule: train)\n"
        "[Mon Nov 30 10:10:00 2026]\nFinished jobid: 2 (Rule: train)\n"
        "[Mon Nov 30 10:10:00 2026]\nJob 3: Aggregating main/fa over its seeds\n"
        "[Mon Nov 30 10:10:25 2026]\nFinished jobid: 3 (Rule: aggregate)\n"
        "[Mon Nov 30 10:42:30 2026]\nJob 4: never finished\n"
    )
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cost_table.py"), str(tmp_path / "results"),
                             "--log", str(log), "--markdown", str(tmp_path / "cost.md")],
                            capture_output=True, text=True, check=True)
    lines = {tuple(c.strip() for c in line.strip("|").split("|")): line for line in result.stdout.splitlines()
             if line.startswith("|")}
    rows = {key[:2]: key for key in lines}
    assert rows[("train", "(all)")][2:] == ("3", "800", "820", "1,200", "100.0 %")
    assert rows[("", "shadow")][2:] == ("1", "600", "600", "1,200", "75.0 %")
    assert rows[("", "main")][2:] == ("2", "200", "220", "1,000", "25.0 %")
    assert rows[("open_loop", "(all)")][2] == "1"
    assert "run wall time 42.5 min" in result.stdout
    # every job of the log, local rules included: train 100 + 600 s, aggregate 25 s; the unfinished job is left out
    assert ("train", "2", "700", "600", "96.6 %") in lines
    assert ("aggregate", "1", "25", "25", "3.4 %") in lines
    assert "3 jobs, 725 job-wall s; the 2 cores were busy 14 % of the run" in result.stdout  # 725 / (2 x 2550 s)
    assert ("train", "1800", "15") in lines  # 1,200 MB x 1.5; the longest job 600 s x 1.5 = 15 min
    assert (tmp_path / "cost.md").read_text().strip() == result.stdout.strip()
