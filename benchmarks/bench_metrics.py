"""What the per-iteration metrics cost: the engine's step with and without them.

The method §5 step on the default network (225-50-50-50-50-50, batch 1000, FA driving): with
``metrics: true`` it also computes BP's update on the same batch and state (for
∠(ΔW^FA, ΔW^BP)) and every angle and norm; with ``metrics: false`` only the FA step and the loss.
The two variants take turns block by block (so that a burst of load falls on both alike) and each
row is the median ms per iteration over the blocks.

    python benchmarks/bench_metrics.py                 # 2 threads
    python benchmarks/bench_metrics.py --threads 1 --blocks 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import Problem, make_engine  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=20, help="timed blocks per variant")
    parser.add_argument("--block", type=int, default=30, help="steps per block")
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--wn", action="store_true", help="the fa_wn condition (gamma 1, IBN)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    problem = Problem(wn=args.wn, gamma=1.0 if args.wn else None, ibn=args.wn)
    problem.make_data()
    steps = {"metrics on": make_engine(problem, metrics=True), "metrics off": make_engine(problem, metrics=False)}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.blocks):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.block):
                step()
            times[name].append((time.perf_counter() - start) / args.block * 1e3)

    on, off = (statistics.median(times[name]) for name in steps)
    load = os.getloadavg()[0]
    print(f"net {'-'.join(map(str, problem.sizes))}, batch {problem.batch_size}, "
          f"{'fa_wn' if args.wn else 'fa'}, {args.threads} threads, load average {load:.2f}")
    for name in steps:
        print(f"  {name:<12} {statistics.median(times[name]):7.3f} ms/it "
              f"(min {min(times[name]):.3f}, max {max(times[name]):.3f}, {args.blocks} blocks)")
    print(f"  metrics cost {100 * (on / off - 1):.0f} % of the step without them")


if __name__ == "__main__":
    main()
