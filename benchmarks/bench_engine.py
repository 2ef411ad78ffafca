"""Speed and memory of the training engine, measured side by side with its baselines.

Sections (``--sections``, benchmarks/README.md):

- ``step``: milliseconds per iteration of the method §5 default step (225-50-50-50-50-50, batch
  1000, FA step + BP shadow update + every metric, + WN for ``fa_wn``) for the engine, a naive
  torch version, an autograd version with a custom FA function, and the step's matrix products
  alone (the compute bound: its FLOP count over this machine's GEMM throughput at the same
  shapes), at every ``--threads`` setting. Each of ``--rounds`` rounds takes the thread
  settings in turn and, within one, times ``--blocks`` blocks of ``--block`` iterations of
  every variant in turn, block by block (after ``--warmup`` iterations each), so that a drift
  or a burst in the machine's load touches all variants alike; each row is the median of the
  per-iteration times of its blocks, pooled over the rounds.
- ``rules``: milliseconds per iteration of the engine's step under each learning rule (method §1.3,
  §1.6; metrics and the comparison with BP on, as the main and rules experiments run them), beside the
  matrix products of the step (``x_bound``): every rule's step has the products of FA's (the sign
  rules and KP send the deltas through a ``B`` of FA's shape, DRTP's ``Y* D_l`` has the shape of
  ``delta_d D_l``), so one bound serves all; at every ``--threads``, blocks interleaved as in ``step``.
- ``full``: wall time of a full 6,000-iteration ``train_run`` (100 epochs of 60 minibatches,
  metrics on), with its evaluations and artifact writing.
- ``scaling``: the engine and its products at hidden widths 50..400 and batch 100 / 1000.
- ``memory`` (minutes; only with ``--memory``): peak RSS of one training job and of the whole
  smoke workflow (``snakemake --configfile tests/smoke/config.yaml``), each in a subprocess.

Prints one table and writes it to ``--out`` (default ``benchmarks/out/bench_engine.csv``)::

    python benchmarks/bench_engine.py                        # step, full, scaling; 1 and 2 threads
    python benchmarks/bench_engine.py --sections step --rounds 5
    python benchmarks/bench_engine.py --memory               # adds the memory section
    python benchmarks/bench_engine.py --device cuda --threads 1
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import Problem, make_autograd, make_engine, make_naive, make_products, step_flops  # noqa: E402

from fa_analysis import data, train  # noqa: E402
from fa_analysis.engine import Engine, initial_network  # noqa: E402
from fa_analysis.learning_rules import RULES  # noqa: E402
from fa_analysis.spec import RunSpec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONDITIONS = {"fa": {}, "fa_wn": {"wn": True, "gamma": 1.0, "ibn": True}}  # method §5 conditions
VARIANTS = {"engine": make_engine, "naive torch": make_naive, "autograd FA": make_autograd}
COLUMNS = ["section", "measurement", "condition", "threads", "value", "unit", "min", "max", "n",
           "x_naive", "x_bound", "note"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_block(step, n: int, device: torch.device) -> float:
    """Milliseconds per iteration of ``n`` consecutive steps."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / n * 1e3


def interleaved_blocks(steps: dict, args, device: torch.device) -> dict[object, list[float]]:
    """``args.warmup`` untimed steps of each, then ``args.blocks`` timed blocks of ``args.block``
    steps, taking the variants in turn block by block: a burst of load from another process
    falls on all of them alike instead of on the one that happens to be running."""
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    out = {key: [] for key in steps}
    for _ in range(args.blocks):
        for key, step in steps.items():
            out[key].append(timed_block(step, args.block, device))
    return out


def _row(section, measurement, condition="", threads="", value=None, unit="", blocks=None, note="", **extra):
    row = dict.fromkeys(COLUMNS, "")
    row.update(section=section, measurement=measurement, condition=condition, threads=threads, unit=unit, note=note)
    if blocks:
        row.update(value=statistics.median(blocks), min=min(blocks), max=max(blocks), n=len(blocks))
    elif value is not None:
        row["value"] = value
    row.update(extra)
    return row


# --------------------------------------------------------------------------------------------
# Section "step": the engine against its baselines
# --------------------------------------------------------------------------------------------


def section_step(args, device) -> list[dict]:
    problems = {}
    for name, changes in CONDITIONS.items():
        problems[name] = Problem(device=args.device, dtype=args.dtype, **changes)
        problems[name].make_data()
    pooled: dict[tuple, list[float]] = {}
    for _ in range(args.rounds):
        for threads in args.threads:
            torch.set_num_threads(threads)
            steps = {(variant, condition, threads): make(problem)
                     for condition, problem in problems.items() for variant, make in VARIANTS.items()}
            steps["matrix products (bound)", "", threads] = make_products(problems["fa"])
            for key, blocks in interleaved_blocks(steps, args, device).items():
                pooled.setdefault(key, []).extend(blocks)
    flops = step_flops(Problem().sizes, Problem().batch_size)
    rows = []
    for threads in args.threads:
        bound = statistics.median(pooled[("matrix products (bound)", "", threads)])
        rows.append(_row("step", "matrix products (bound)", "", threads, unit="ms/it",
                         blocks=pooled[("matrix products (bound)", "", threads)], x_bound=1.0,
                         note=f"{flops / 1e6:.1f} MFLOP/it, {flops / bound / 1e6:.1f} GFLOP/s"))
        for condition in problems:
            naive = statistics.median(pooled[("naive torch", condition, threads)])
            for variant in VARIANTS:
                blocks = pooled[(variant, condition, threads)]
                m = statistics.median(blocks)
                rows.append(_row("step", variant, condition, threads, unit="ms/it", blocks=blocks,
                                 x_naive=m / naive, x_bound=m / bound))
    return rows


# --------------------------------------------------------------------------------------------
# Section "rules": the engine's step under every learning rule
# --------------------------------------------------------------------------------------------


def make_rule_engine(problem: Problem, rule: str, capacity: int = 4096):
    """``Engine``'s ``compute`` + ``apply`` under ``rule`` (its settings the schema's), as ``make_engine``."""
    device, dtype = torch.device(problem.device), getattr(torch, problem.dtype)
    spec = problem.spec(rule=rule)
    engine = Engine(spec, initial_network(spec, device, dtype), capacity, device, dtype)
    counter, batches = iter(range(10**9)), itertools.cycle(problem.batches)

    def step() -> None:
        batch = next(batches)
        engine.compute(next(counter) % capacity, problem.X_epoch[batch], problem.Y_epoch[batch])
        engine.apply()

    return step


def section_rules(args, device) -> list[dict]:
    problem = Problem(device=args.device, dtype=args.dtype)
    problem.make_data()
    pooled: dict[tuple, list[float]] = {}
    for _ in range(args.rounds):
        for threads in args.threads:
            torch.set_num_threads(threads)
            steps = {(rule, threads): make_rule_engine(problem, rule) for rule in RULES}
            steps["matrix products (bound)", threads] = make_products(problem)
            for key, blocks in interleaved_blocks(steps, args, device).items():
                pooled.setdefault(key, []).extend(blocks)
    rows = []
    for threads in args.threads:
        bound = statistics.median(pooled[("matrix products (bound)", threads)])
        rows.append(_row("rules", "matrix products (bound)", "", threads, unit="ms/it",
                         blocks=pooled[("matrix products (bound)", threads)], x_bound=1.0))
        fa = statistics.median(pooled[("fa", threads)])
        for rule in RULES:
            m = statistics.median(pooled[(rule, threads)])
            rows.append(_row("rules", "engine", rule, threads, unit="ms/it", blocks=pooled[(rule, threads)],
                             x_bound=m / bound, note=f"{m / fa:.2f} x FA's step"))
    return rows


# --------------------------------------------------------------------------------------------
# Section "full": one whole training run
# --------------------------------------------------------------------------------------------


def _dataset(args):
    """The prepared real MNIST (from FA_MNIST_ROOT or ../shared/data) or, without it, random data."""
    root = Path(os.environ.get("FA_MNIST_ROOT", REPO.parent / "shared" / "data"))
    if (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        path = Path(args.workdir) / "mnist15.npz"
        if not path.exists():
            data.prepare_dataset(root, False, path)
        return data.load_prepared(path), "real MNIST"
    g = torch.Generator().manual_seed(0)
    return SimpleNamespace(
        X_train=torch.rand(60_000, 225, generator=g), y_train=torch.randint(0, 10, (60_000,), generator=g),
        X_test=torch.rand(10_000, 225, generator=g), y_test=torch.randint(0, 10, (10_000,), generator=g), metadata={},
    ), "random data (no MNIST found)"


def section_full(args, device) -> list[dict]:
    dataset, what = _dataset(args)
    rows = []
    for threads in args.threads:
        spec = RunSpec(rule="fa", eta=5e-4, epochs=args.full_epochs, snapshot_every=0, metrics=True,
                             threads=threads, device=args.device, dtype=args.dtype)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            result = train.train_run(spec, dataset, Path(tmp) / "run", log=lambda line: None)
            timings = json.loads((result.run_dir / "run.json").read_text())["timings"]
        wall = time.perf_counter() - t0
        K = args.full_epochs * 60
        rows.append(_row("full", f"train_run, {K} iterations", "fa", threads, value=wall, unit="s",
                         note=f"{what}; training {timings['train_s']:.1f} s = {timings['train_s'] / K * 1e3:.2f} ms/it, "
                              f"evaluation {timings['evaluation_s']:.1f} s, writing {timings['write_s']:.1f} s, "
                              f"final accuracy {result.final_test_accuracy}"))
    return rows


# --------------------------------------------------------------------------------------------
# Section "scaling": width and batch size
# --------------------------------------------------------------------------------------------


def section_scaling(args, device) -> list[dict]:
    threads = max(args.threads)
    torch.set_num_threads(threads)
    rows = []
    for batch in (100, 1000):
        for width in (50, 100, 200, 400):
            problem = Problem(sizes=(225, width, width, width, width, 50), batch_size=batch,
                              n_batches=60_000 // batch, device=args.device, dtype=args.dtype)
            problem.make_data()
            times = interleaved_blocks({"engine": make_engine(problem), "bound": make_products(problem)}, args, device)
            engine, bound = times["engine"], times["bound"]
            flops = step_flops(problem.sizes, batch)
            m, mb = statistics.median(engine), statistics.median(bound)
            rows.append(_row("scaling", f"engine, width {width}, batch {batch}", "fa", threads, unit="ms/it",
                             blocks=engine, x_bound=m / mb,
                             note=f"bound {mb:.3f} ms/it ({flops / mb / 1e6:.1f} GFLOP/s); "
                                  f"{m / batch * 1e3:.2f} us per example"))
    return rows


# --------------------------------------------------------------------------------------------
# Section "memory": peak RSS of a training job and of the smoke workflow
# --------------------------------------------------------------------------------------------

# Runs a command and prints the largest RSS (KiB) of any process of its tree (ru_maxrss of the
# waited-for children) as JSON: a fresh process, so no earlier child counts.
_MAXRSS = (
    "import json, resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print(json.dumps({'returncode': code, 'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
)

_TRAIN_JOB = (
    "import sys, torch\n"
    "from fa_analysis import data, train\n"
    "from fa_analysis.spec import RunSpec\n"
    "spec = RunSpec(rule='fa', eta=5e-4, epochs=int(sys.argv[3]), snapshot_every=3, metrics=True, threads=int(sys.argv[4]))\n"
    "torch.set_num_threads(spec.threads)\n"
    "train.train_run(spec, data.load_prepared(sys.argv[1]), sys.argv[2], log=lambda line: None)\n"
)


class TreeRSS:
    """Samples the summed RSS of a process and all its descendants (from /proc) until stopped."""

    def __init__(self, pid: int, every: float = 0.2):
        self.pid, self.every, self.peak = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            parents, rss = {}, {}
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    try:
                        with open(f"/proc/{entry.name}/stat") as handle:
                            fields = handle.read().rsplit(")", 1)[1].split()
                    except OSError:
                        continue
                    parents[int(entry.name)], rss[int(entry.name)] = int(fields[1]), int(fields[21]) * page
            tree, frontier = {self.pid}, [self.pid]
            while frontier:
                children = [p for p, parent in parents.items() if parent in frontier and p not in tree]
                tree.update(children)
                frontier = children
            self.peak = max(self.peak, sum(rss.get(p, 0) for p in tree))
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _measured(command: list[str], env: dict, log_path: Path) -> tuple[dict, int, float]:
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-c", _MAXRSS, *command], stdout=subprocess.PIPE, stderr=log, env=env, text=True)
        sampler = TreeRSS(process.pid)
        out, _ = process.communicate()
        peak_tree = sampler.stop()
    result = json.loads(out.strip().splitlines()[-1])
    if result["returncode"] != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({result['returncode']}); see {log_path}")
    return result, peak_tree, time.perf_counter() - t0


def section_memory(args, device) -> list[dict]:
    root = Path(os.environ.get("FA_MNIST_ROOT", REPO.parent / "shared" / "data"))
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        raise SystemExit(f"--memory needs the real MNIST under {root}/MNIST/raw (set FA_MNIST_ROOT)")
    threads = max(args.threads)
    env = {**os.environ, **{k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}}
    workdir = Path(args.workdir)
    _dataset(args)  # prepares mnist15.npz
    rows = []
    result, _, _ = _measured([sys.executable, "-c", "import torch, fa_analysis.train"], env, workdir / "memory_import.log")
    rows.append(_row("memory", "import torch + fa_analysis.train", "", "", value=result["maxrss_kib"] / 1024,
                     unit="MiB peak RSS", note="the floor of every job that uses torch"))
    job = [sys.executable, "-c", _TRAIN_JOB, str(workdir / "mnist15.npz"), str(workdir / "memory_run"),
           str(args.memory_epochs), str(threads)]
    result, tree, wall = _measured(job, env, workdir / "memory_train.log")
    snapshots_mib = (100 * 60 // 3 + 1) * sum(n * m + m for n, m in zip(Problem().sizes, Problem().sizes[1:])) * 4 / 2**20
    rows.append(_row("memory", f"training job, {args.memory_epochs} epochs", "fa", threads,
                     value=result["maxrss_kib"] / 1024, unit="MiB peak RSS",
                     note=f"{wall:.0f} s wall; real MNIST, snapshots every 3 iterations "
                          f"(a 100-epoch run's snapshots add {snapshots_mib:.0f} MiB)"))
    smoke = workdir / "smoke"
    smoke.mkdir()
    (smoke / "config.yaml").symlink_to(REPO / "config.yaml")
    command = [str(Path(sys.executable).with_name("snakemake")), "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(smoke), "--cores", str(args.cores), "--configfile", str(REPO / "tests/smoke/config.yaml"),
               "--config", f"data={{root: {root}, download: false}}"]
    result, tree, wall = _measured(command, env, workdir / "memory_smoke.log")
    rows.append(_row("memory", "smoke workflow, largest process", "", threads, value=result["maxrss_kib"] / 1024,
                     unit="MiB peak RSS", note=f"--cores {args.cores}, {wall:.0f} s wall"))
    rows.append(_row("memory", "smoke workflow, all processes", "", threads, value=tree / 2**20,
                     unit="MiB peak RSS (sum)", note="sampled every 0.2 s"))
    return rows


# --------------------------------------------------------------------------------------------


SECTIONS = {"step": section_step, "rules": section_rules, "full": section_full, "scaling": section_scaling,
            "memory": section_memory}


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default="step,full,scaling", help=f"comma-separated, of {list(SECTIONS)}")
    parser.add_argument("--memory", action="store_true", help="add the memory section (minutes)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--full-epochs", type=int, default=100)
    parser.add_argument("--memory-epochs", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores of the memory section")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "bench_engine.csv"))
    args = parser.parse_args()
    sections = [s for s in args.sections.split(",") if s] + (["memory"] if args.memory else [])
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {list(SECTIONS)}")
    device = torch.device(args.device)
    RunSpec(device=args.device)  # a clear error if the device is not there

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        args.workdir = workdir
        for name in sections:
            rows += SECTIONS[name](args, device)
    load_after = os.getloadavg()

    header = (f"net 225-50-50-50-50-50, batch 1000, {args.dtype}, device {device}, torch {torch.__version__}, "
              f"{platform.machine()} {os.cpu_count()} CPUs; load average {load_before[0]:.2f} at start, "
              f"{load_after[0]:.2f} at end; {time.perf_counter() - t0:.0f} s")
    print(header)
    widths = {c: max(len(c), *(len(_format(r[c])) for r in rows)) for c in COLUMNS if c != "note"}
    print("  ".join(c.ljust(widths[c]) for c in widths) + "  note")
    for r in rows:
        print("  ".join(_format(r[c]).ljust(widths[c]) for c in widths) + "  " + r["note"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    out.with_suffix(".json").write_text(json.dumps({"header": header, "argv": sys.argv, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
