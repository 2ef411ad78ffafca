"""Milliseconds per training iteration of the engine (SPEC 5 default network, batch 1000).

Rows:
- ``train_run, metrics on``  : FA step + BP shadow update + every per-iteration metric;
- ``train_run, metrics off`` : FA step and the loss only;
- ``matrix products alone``  : only the step's matrix products (forward, FA and BP deltas, FA's
  dW and BP's hidden dW), preallocated -- the floor the loop is measured against;
- ``naive torch``            : the same computation written plainly (fresh tensors, per-layer
  metric calls, a ``.item()`` per number), the reference for "how much the design buys".

``train_run`` is timed from inside, with an observer that reads the clock at every step, so
evaluation and file writing are excluded. Each row is the median over timed blocks of
``--block`` iterations (after ``--warmup`` iterations), pooled over ``--rounds`` rounds that
alternate the four measurements. Usage::

    python benchmarks/bench_engine.py --threads 2 [--device cuda] [--rounds 3 --blocks 15 --block 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from fa_analysis import data
from fa_analysis.measures import angle_deg, angle_deg_concat
from fa_analysis.network import init_network
from fa_analysis.normalization import normalize_columns_
from fa_analysis.train import RunSpec, train_run

SIZES = (225, 50, 50, 50, 50, 50)
BATCH = 1000


class StepClock:
    """Observer reading the clock at every step (the time between two calls is one iteration)."""

    def __init__(self, device):
        self.device, self.times, self.epochs = device, [], []

    def start(self, net, spec, num_iterations, device):
        self.per_epoch = num_iterations // spec.epochs

    def step(self, k, net, state):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def finish(self):
        return {}


def _blocks_from_steps(times: list[float], per_epoch: int, warmup: int, block: int) -> list[float]:
    """Per-iteration ms of consecutive ``block``-iteration windows that stay inside one epoch."""
    out = []
    k = warmup
    while k + block < len(times):
        if k // per_epoch == (k + block) // per_epoch:  # no evaluation inside the window
            out.append((times[k + block] - times[k]) / block * 1e3)
            k += block
        else:
            k = (k // per_epoch + 1) * per_epoch
    return out


def synthetic_dataset() -> SimpleNamespace:
    """60 minibatches of random inputs and labels (the speed does not depend on the values)."""
    n_train = BATCH * 60
    g = torch.Generator().manual_seed(0)
    return SimpleNamespace(
        X_train=torch.rand(n_train, SIZES[0], generator=g),
        y_train=torch.randint(0, 10, (n_train,), generator=g),
        X_test=torch.rand(1000, SIZES[0], generator=g),
        y_test=torch.randint(0, 10, (1000,), generator=g),
        metadata={},
    )


def bench_train_run(metrics: bool, device, dtype, args, dataset) -> list[float]:
    iterations = args.warmup + args.blocks * args.block
    epochs = -(-iterations // 60) + 1
    spec = RunSpec(rule="fa", eta=5e-4, epochs=epochs, metrics=metrics, snapshot_every=3,
                   threads=args.threads, device=str(device), dtype=args.dtype)
    clock = StepClock(device)
    with tempfile.TemporaryDirectory() as tmp:
        train_run(spec, dataset, Path(tmp) / "run", observers=[clock], log=lambda line: None)
    return _blocks_from_steps(clock.times, clock.per_epoch, args.warmup, args.block)[: args.blocks]


def _timed_blocks(step, device, args) -> list[float]:
    for _ in range(args.warmup):
        step()
    out = []
    for _ in range(args.blocks):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.block):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) / args.block * 1e3)
    return out


def _setup(device, dtype):
    net = init_network(SIZES, 0.1, seed=0, device=device, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    X = torch.rand(BATCH, SIZES[0], generator=g).to(device, dtype)
    codes = data.phase_codes("five_hot", 0, 0).to(device, dtype)
    labels = torch.randint(0, 10, (BATCH,), generator=g).to(device)
    return net, X, codes[labels]


def bench_matmuls(device, dtype, args) -> list[float]:
    net, X, _ = _setup(device, dtype)
    d = net.d
    L = [X] + [torch.rand(BATCH, n, device=device, dtype=dtype) for n in SIZES[1:]]
    Z = [None] + [torch.empty_like(x) for x in L[1:]]
    deltas = [[None] + [torch.rand_like(x) for x in L[1:]] for _ in range(2)]
    dW = [[torch.empty_like(w) for w in net.W] for _ in range(2)]

    def step():
        for l in range(d):
            torch.addmm(net.b[l], L[l], net.W[l], out=Z[l + 1])
        for rule, delta in enumerate(deltas):
            for l in range(d - 1, 0, -1):
                M = net.B[l] if rule == 0 else net.W[l].T
                torch.mm(delta[l + 1], M, out=delta[l])
            for l in range(d if rule == 0 else d - 1):  # the output layer's dW is shared
                torch.mm(L[l].T, delta[l + 1], out=dW[rule][l])

    return _timed_blocks(step, device, args)


def bench_naive(device, dtype, args) -> list[float]:
    """The FA step, BP shadow and metrics written plainly: what one would write first."""
    net, X, Y = _setup(device, dtype)
    d, eta = net.d, 5e-4
    W0_norms = [w.norm().item() for w in net.W]
    history = []

    def step():
        Zs, Ls = [None], [X]
        for l in range(d):
            Zs.append(Ls[l] @ net.W[l] + net.b[l])
            Ls.append(torch.tanh(torch.relu(Zs[-1])))
        fp = [None] + [(z > 0).to(z.dtype) / torch.cosh(z) ** 2 for z in Zs[1:]]
        E = Y - Ls[d]
        row = {"loss": 0.5 * (E**2).sum().item()}
        updates = {}
        for rule in ("fa", "bp"):
            delta = [None] * (d + 1)
            delta[d] = E * fp[d]
            for l in range(d - 1, 0, -1):
                M = net.B[l] if rule == "fa" else net.W[l].T
                delta[l] = (delta[l + 1] @ M) * fp[l]
            updates[rule] = ([Ls[l].T @ delta[l + 1] for l in range(d)], [delta[l].sum(0) for l in range(1, d + 1)], delta)
        dW, db, delta = updates["fa"]
        row["angle_W_Bt_all"] = angle_deg_concat(net.W[1:], [net.B[l].T for l in range(1, d)]).item()
        for l in range(d):
            if l >= 1:
                row[f"angle_W_Bt_{l}"] = angle_deg(net.W[l], net.B[l].T).item()
                row[f"angle_dW_Bt_{l}"] = angle_deg(dW[l], net.B[l].T).item()
            row[f"angle_dWfa_dWbp_{l}"] = angle_deg(dW[l], updates["bp"][0][l]).item()
            row[f"angle_dW_W_{l}"] = angle_deg(dW[l], net.W[l]).item()
            norm_W = net.W[l].norm().item()
            row[f"norm_W_{l}"] = norm_W
            row[f"norm_W_rel_{l}"] = norm_W / W0_norms[l]
            row[f"ratio_dW_W_{l}"] = eta * dW[l].norm().item() / norm_W
            row[f"norm_delta_{l + 1}"] = delta[l + 1].norm().item()
        history.append(row)
        for l in range(d):
            net.W[l] += eta * dW[l]
            net.b[l] += eta * db[l]

    return _timed_blocks(step, device, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=15)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    # Rounds alternate the four measurements, so that a drift in the machine's speed (shared
    # hosts) touches all of them alike; each row pools its blocks over the rounds.
    dataset = synthetic_dataset()
    benches = {
        "train_run, metrics on": lambda: bench_train_run(True, device, dtype, args, dataset),
        "train_run, metrics off": lambda: bench_train_run(False, device, dtype, args, dataset),
        "matrix products alone": lambda: bench_matmuls(device, dtype, args),
        "naive torch": lambda: bench_naive(device, dtype, args),
    }
    pooled = {name: [] for name in benches}
    for _ in range(args.rounds):
        for name, bench in benches.items():
            pooled[name] += bench()
    rows = list(pooled.items())
    medians = {name: statistics.median(blocks) for name, blocks in rows}
    floor, naive = medians["matrix products alone"], medians["naive torch"]
    print(f"net {'-'.join(map(str, SIZES))}, batch {BATCH}, {args.dtype}, device {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'':24s} {'ms/it (median)':>14s} {'min':>7s} {'max':>7s} {'blocks':>6s} {'x products':>10s} {'x naive':>8s}")
    for name, blocks in rows:
        m = medians[name]
        print(f"{name:24s} {m:14.3f} {min(blocks):7.3f} {max(blocks):7.3f} {len(blocks):6d} {m / floor:10.2f} {m / naive:8.2f}")


if __name__ == "__main__":
    main()
