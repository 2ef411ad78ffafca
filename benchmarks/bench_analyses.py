"""Cost of the mechanism analyses next to the training step, at the protocol's settings.

The step is the engine's FA step with every per-iteration metric (225-50-50-50-50-50, batch 1000,
float32, random data of one epoch: the speed does not depend on the values), without the other
rules' updates, as the analyses' runs take it (config ``compare_rules: false``); the main
experiment's step with them is printed for reference. Beside it:

- ``terms per step``: the alignment-terms observer at an ordinary iteration (lags 1, 60, 120
  over time and the class similarity; config ``alignment_terms``), added to the step; beside
  it the matrix products of the step and of the observer alone, their floor (FLOP counts in
  ``baselines.step_flops`` and ``terms_flops`` here);
- ``terms at a lag-analysis k``: the same observer at an iteration of the lag analysis (all 64 lags);
- ``linearised shadow per step``: the shadow observer's step without its random-B' parts (the
  history sum and the B' past factor made no-ops): the zero-degree term, ``P_l[k]``, the linear
  terms of both linear shadows and the angles' Gram matrices, less the step;
- ``random-B' shadow: past factor per step``: what the B' past factor adds to that (its history
  sum is timed below);
- ``history sum at k``: the sum of the nonlinear terms over every past step, all four layers
  (``history.TermHistory.terms_sum``), at k = 64, 600 (the shadow runs' last) and 1,740 (the
  remainder runs' last measured k): milliseconds, per past step, and the history's memory;
- ``shadow run`` / ``remainder run``: those analyses summed over a whole run of the protocol
  (the random-B' shadow sums at every one of its 600 steps, the remainder at its measured k),
  from the per-past-step cost, beside the run's training steps.

After the per-step rows it says, for the alignment terms and the linearised shadow, whether each
stays within 1.2 times the step, with the alignment terms' product floor beside the verdict.

Each timing is the median of ``--repeats`` blocks, the variants taking turns block by block.
Run with one thread, as the training jobs do::

    python benchmarks/bench_analyses.py                 # prints the table, writes benchmarks/out/bench_analyses.csv
"""

from __future__ import annotations

import argparse
import csv
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import Problem, make_products, step_flops  # noqa: E402

from fa_analysis.alignment_terms import AlignmentTermsObserver  # noqa: E402
from fa_analysis.engine import Engine, StepState, initial_network  # noqa: E402
from fa_analysis.history import TermHistory, bytes_per_step  # noqa: E402
from fa_analysis.remainder import RemainderSettings  # noqa: E402
from fa_analysis.shadow import SHADOW_ROWS, ShadowObserver  # noqa: E402

TERMS = {"iterations": [66, 1260], "max_lag": 64, "lags_over_time": [1, 60, 120], "every": 1}
SHADOW = {"random_b_seed_offset": 7919}
SHADOW_STEPS = 600  # 10 epochs of 60 minibatches
REMAINDER = RemainderSettings.from_dict({"iterations": [66, 1260], "every": 60})
REMAINDER_STEPS = 1800  # 30 epochs


class Driver:
    """The engine's step on consecutive minibatches, handing each step's state to ``observers``."""

    def __init__(self, problem: Problem, observers=(), capacity: int = 2000, compare_rules: bool = False):
        self.problem = problem
        # the analyses' runs leave out the other rules' updates (config: compare_rules false)
        spec = problem.spec(observers={"alignment_terms": TERMS, "shadow": SHADOW}, compare_rules=compare_rules)
        device, dtype = torch.device(problem.device), getattr(torch, problem.dtype)
        self.engine = Engine(spec, initial_network(spec, device, dtype), capacity, device, dtype)
        self.observers = list(observers)
        for observer in self.observers:
            observer.start(self.engine.net, spec, capacity, device)
        self.batches = itertools.cycle(range(len(problem.batches)))
        self.labels = torch.randint(0, 10, (problem.X_epoch.shape[0],), generator=torch.Generator().manual_seed(3))
        self.k = 0

    def step(self) -> None:
        i = next(self.batches)
        batch = self.problem.batches[i]
        engine, X, Y = self.engine, self.problem.X_epoch[batch], self.problem.Y_epoch[batch]
        Z, L, E, delta, dW, db = engine.compute(self.k, X, Y)
        if self.observers:
            state = StepState(X=X, Y=Y, labels=self.labels[batch], batch_index=torch.arange(batch.start, batch.stop),
                                    Z=Z, L=L, delta=delta, dW=dW, db=db, eta=self.problem.eta, fprime=engine.fprime)
            for observer in self.observers:
                observer.step(self.k, engine.net, state)
        engine.apply()
        self.k += 1


def terms_flops(sizes, batch_size: int, lags) -> int:
    """Floating-point operations of the alignment-terms observer's products at one step (2 per multiply-add).

    Per layer l = 1..d-1: ``L_{l-1}[k]`` times the gathered past (``C^o`` for every lag, ``zeta^o``
    for every lag but 1: ``2 m - 1`` blocks of ``n_l`` columns), ``delta_{l+1}[k]^T`` times
    ``f'(zeta) * C`` (all lags), ``P_l[k] = L_{l-1}[k]^T delta_{l+1}[k]`` and the class sums of
    ``L_{l-1}[k]`` under two label sets. The small products (``M``, the linear terms) are left out.
    """
    m = len(lags)
    blocks = 2 * m - (1 if 1 in lags else 0)
    macs = 0
    for l in range(1, len(sizes) - 1):
        n_prev, n_l, n_next = sizes[l - 1], sizes[l], sizes[l + 1]
        macs += batch_size * (n_prev * blocks * n_l + n_next * m * n_l + n_prev * n_next + 2 * 10 * n_prev)
    return 2 * macs


def make_terms_products(problem: Problem, lags) -> Callable[[], None]:
    """The products ``terms_flops`` counts, into preallocated row-major outputs, nothing else."""
    sizes, nb, m = problem.sizes, problem.batch_size, len(lags)
    blocks = 2 * m - (1 if 1 in lags else 0)
    g = torch.Generator().manual_seed(problem.seed + 3)
    L = [torch.rand(nb, n, generator=g) for n in sizes]
    delta = [torch.rand(nb, n, generator=g) for n in sizes]
    members = torch.rand(2, 10, nb, generator=g)
    layers = []
    for l in range(1, len(sizes) - 1):
        n_prev, n_l, n_next = sizes[l - 1], sizes[l], sizes[l + 1]
        layers.append((L[l - 1], delta[l + 1], torch.rand(n_prev, blocks * n_l, generator=g),
                       torch.empty(nb, blocks * n_l), torch.rand(nb, m * n_l, generator=g),
                       torch.empty(n_next, m * n_l), torch.empty(n_prev, n_next), torch.empty(2, 10, n_prev)))

    def products() -> None:
        for L_prev, delta_next, past, both, weighted, T, P, sums in layers:
            torch.mm(L_prev, past, out=both)
            torch.mm(delta_next.T, weighted, out=T)
            torch.mm(L_prev.T, delta_next, out=P)
            torch.matmul(members, L_prev, out=sums)

    return products


def without_random_B(observer: ShadowObserver, past_factor: bool = False) -> ShadowObserver:
    """``observer`` with its history sums returning zeros, and its B' past factor a no-op unless
    ``past_factor``: what is left of its step is the linearised shadow's work (and the past factor's)."""
    for l, history in observer.history.items():
        zeros = torch.zeros_like(observer.W_Bprime[l])
        history.terms_sum = lambda *args, _zeros=zeros, **kwargs: _zeros
    if not past_factor:
        observer.random_B_past_factor = lambda *args, **kwargs: None
    return observer


def linearised_shadow_flops(sizes, batch_size: int) -> int:
    """Floating-point operations of the linearised shadow's products at one step (2 per multiply-add).

    Per layer l = 1..d-1: ``L_{l-1}[k] W_{l-1}[0]`` and ``f(.)^T delta_{l+1}[k]`` (the zero-degree
    term), ``P_l[k] = L_{l-1}[k]^T delta_{l+1}[k]``, ``M = (sum_j P_l[j])^T P_l[k]``, the two linear
    terms ``B^T M`` and ``B'^T M`` and the Gram matrix of the layer's rows (``shadow.SHADOW_ROWS``).
    """
    rows = len(SHADOW_ROWS)
    macs = 0
    for l in range(1, len(sizes) - 1):
        n_prev, n_l, n_next = sizes[l - 1], sizes[l], sizes[l + 1]
        macs += batch_size * (n_prev * n_l + n_l * n_next + n_prev * n_next)
        macs += n_next * n_prev * n_next + 2 * n_l * n_next * n_next + rows * rows * n_l * n_next
    return 2 * macs


def ms_per_call(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--block", type=int, default=20, help="steps per timed block")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "bench_analyses.csv"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    problem = Problem()
    problem.make_data()
    sizes = problem.sizes
    rows = []

    def row(measurement, ms, step_ms=None, note=""):
        rows.append({"measurement": measurement, "ms": round(ms, 3),
                     "x_step": "" if step_ms is None else round(ms / step_ms, 2), "note": note})
        value = f"{ms:10.2f} ms" if ms < 1e4 else f"{ms / 1e3:10.0f} s "
        print(f"{measurement:42s} {value}  {'' if step_ms is None else f'{ms / step_ms:8.2f} x step'}  {note}")

    # --- per-step costs, interleaved: the step alone, with the terms observer, with the shadow's parts
    plain, terms = Driver(problem), Driver(problem, [AlignmentTermsObserver(TERMS)])
    main_step = Driver(problem, compare_rules=True)  # the main experiment's step, for reference
    linearised = Driver(problem, [ShadowObserver(SHADOW)])
    with_past_factor = Driver(problem, [ShadowObserver(SHADOW)])
    step_products = make_products(problem, compare_rules=False)
    terms_products = make_terms_products(problem, TERMS["lags_over_time"])
    for _ in range(130):  # past the largest over-time lag, and past k = 66 (a lag-analysis k)
        plain.step()
        terms.step()
        main_step.step()
    for _ in range(3):  # the shadows' buffers made, a few steps in the history
        linearised.step()
        with_past_factor.step()
    without_random_B(linearised.observers[0])
    without_random_B(with_past_factor.observers[0], past_factor=True)
    times = {"step": [], "main step": [], "terms": [], "linearised": [], "past factor": [],
             "step products": [], "terms products": []}
    for _ in range(args.repeats):
        times["step"].append(ms_per_call(plain.step, args.block))
        times["main step"].append(ms_per_call(main_step.step, args.block))
        times["terms"].append(ms_per_call(terms.step, args.block))
        times["linearised"].append(ms_per_call(linearised.step, args.block))
        times["past factor"].append(ms_per_call(with_past_factor.step, args.block))
        times["step products"].append(ms_per_call(step_products, args.block))
        times["terms products"].append(ms_per_call(terms_products, args.block))
    step_ms = statistics.median(times["step"])
    row("step (FA, every metric)", step_ms, step_ms, "as the analyses' runs take it: compare_rules off")
    row("  main experiment's step", statistics.median(times["main step"]), step_ms,
        "with the other rules' updates (compare_rules on), for reference")
    row("step + alignment terms, ordinary k", statistics.median(times["terms"]), step_ms)
    terms_ms = statistics.median(times["terms"]) - step_ms
    row("  alignment terms alone", terms_ms, step_ms)
    # the floor: each one's matrix products alone, nothing else
    sizes, nb = problem.sizes, problem.batch_size
    step_flop, terms_flop = step_flops(sizes, nb, compare_rules=False), terms_flops(sizes, nb, TERMS["lags_over_time"])
    step_bound, terms_bound = statistics.median(times["step products"]), statistics.median(times["terms products"])
    row("  step: matrix products alone", step_bound, step_ms,
        f"{step_flop / 1e6:.1f} MFLOP, {step_flop / step_bound / 1e6:.1f} GFLOP/s")
    row("  alignment terms: matrix products alone", terms_bound, step_ms,
        f"{terms_flop / 1e6:.1f} MFLOP ({terms_flop / step_flop:.2f} x the step's), {terms_flop / terms_bound / 1e6:.1f} GFLOP/s")
    linearised_ms = statistics.median(times["linearised"]) - step_ms
    shadow_flop = linearised_shadow_flops(sizes, nb)
    row("linearised shadow per step", linearised_ms, step_ms,
        f"zero-degree term, P, linear terms, angles: {shadow_flop / 1e6:.1f} MFLOP ({shadow_flop / step_flop:.2f} x the step's)")
    row("random-B' shadow: past factor per step", statistics.median(times["past factor"]) - step_ms - linearised_ms,
        step_ms, "G'^T = L^T ((delta B') * f'), into the history; its history sum below")
    for name, ms, floor in (("alignment terms", terms_ms, terms_bound), ("linearised shadow", linearised_ms, None)):
        verdict = "within" if ms <= 1.2 * step_ms else "above"
        why = "" if floor is None else f"; its matrix products alone take {floor / step_ms:.2f} x step"
        print(f"  per-step aim, at most 1.2 x step: {name} {ms / step_ms:.2f} x step, {verdict}{why}")
    lag_k = Driver(problem, [AlignmentTermsObserver({**TERMS, "iterations": [200]})])
    for _ in range(200):
        lag_k.step()
    t_lag = ms_per_call(lag_k.step, 1) - step_ms  # k = 200: every lag 1..64 at once
    row("alignment terms at a lag-analysis k", t_lag, step_ms, "64 lags")

    # --- the history sum over every past step, all four layers
    like = plain.engine.net.W[0]
    state_L = [torch.rand(problem.batch_size, n, dtype=like.dtype) for n in sizes]
    delta = [torch.randn(problem.batch_size, n, dtype=like.dtype) * 0.01 for n in sizes]
    per_past_step = {}
    for k in (64, SHADOW_STEPS, max(REMAINDER.measured(REMAINDER_STEPS))):
        histories = {}
        for l in range(1, len(sizes) - 1):
            history = TermHistory(sizes[l - 1], sizes[l], k, like)
            W, F = torch.randn(sizes[l - 1], sizes[l]) * 0.1, torch.randn(sizes[l - 1], sizes[l]) * 0.01
            for _ in range(k):
                history.push(W, F)
            histories[l] = history

        def summed():
            for l, history in histories.items():
                history.terms_sum(state_L[l - 1], delta[l + 1], plain.engine.net.b[l - 1], problem.eta, "tanh_relu")

        t = statistics.median(ms_per_call(summed, 1) for _ in range(max(2, args.repeats // 2)))
        per_past_step[k] = t / k
        mb = bytes_per_step(sizes, like.element_size()) * k / 2**20
        row(f"history sum at k = {k}", t, step_ms, f"{t / k:.3f} ms per past step; history {mb:.0f} MiB")
        del histories

    cost = per_past_step[SHADOW_STEPS]
    shadow_run = cost * SHADOW_STEPS * (SHADOW_STEPS - 1) / 2 / 1e3
    row("shadow run: history sums", shadow_run * 1e3, None,
        f"its {SHADOW_STEPS} steps, beside {SHADOW_STEPS * step_ms / 1e3:.1f} s of training steps")
    measured = REMAINDER.measured(REMAINDER_STEPS)
    remainder_run = per_past_step[max(measured)] * sum(measured) / 1e3
    row("remainder run: history sums", remainder_run * 1e3, None,
        f"at its {len(measured)} measured k, beside {REMAINDER_STEPS * step_ms / 1e3:.1f} s of training steps")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["measurement", "ms", "x_step", "note"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
