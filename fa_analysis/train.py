"""The training loop, its per-iteration metrics, evaluation, snapshots and divergence (method §5).

``train_run(spec, dataset, out_dir)`` trains one network with plain SGD under the rule of
``spec`` (``bp``, ``fa`` or ``dfa``), optionally with WN, and writes the run directory of
docs/design.md. Every draw comes from the run seed ``s``: the initialisation from ``s``, the
code map of phase ``p`` from ``s + 10_000 (p + 1)``, the minibatch order from ``s + 1_000_003``.

Per-iteration metrics are measured on the state *before* step ``k``. Every step also computes
the other rule's deltas on the same batch and state (for a BP run, FA's; for an FA run, BP's --
the "BP shadow update"; a DFA run computes both), so ``angle(dW^FA_l, dW^BP_l)`` exists for every
run. The loop records only Frobenius products -- one small Gram matrix per layer of the rows
``[W, B^T, dW, dW^other...]`` -- and turns them into angles and norms once, at the end.

Speed (``Engine``; benchmarks/README.md): ``W`` and ``b`` are views into one flat row
``theta = [W_0 .. W_{d-1} | b_1 .. b_d]`` (the snapshot layout), the updates likewise, so the
step is one ``theta += eta dtheta``. ``Z``, ``L``, ``f'`` and the deltas of all layers are
blocks of one layer-major buffer each, so ``f'`` is one call for all layers; BP's and FA's
deltas are one batched product per layer; the epoch's examples are gathered once in minibatch
order. Nothing syncs with the device inside an epoch.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from fa_analysis import artifacts, data
from fa_analysis.measures import angle_deg, angle_from_products
from fa_analysis.network import (
    ACTIVATIONS,
    RULES,
    Network,
    backward_deltas,
    forward,
    init_network,
    output_error,
)
from fa_analysis.normalization import normalize_columns_, unit_columns_
from fa_analysis.spec import RunSpec

DTYPES = {"float32": torch.float32, "float64": torch.float64}
ORDER_SEED_OFFSET = 1_000_003


# --------------------------------------------------------------------------------------------
# Observers
# --------------------------------------------------------------------------------------------


@dataclass
class StepState:
    """What one step computed, handed to observers before the update is applied.

    Tensors are views into buffers the loop reuses at the next step (clone what you keep), not
    always contiguous (use ``reshape``, not ``view``).
    ``X = L[0]`` is the batch input, ``Y`` its targets, ``labels`` its (possibly noisy) class
    labels, ``batch_index`` its dataset indices; ``Z``, ``L``, ``fprime`` (``f'(Z_l)``),
    ``delta`` (of the driving rule) are lists of length ``d+1``; ``dW``, ``db`` are the updates
    without ``eta`` (the step is ``W += eta dW``).
    """

    X: Tensor
    Y: Tensor
    labels: Tensor
    batch_index: Tensor
    Z: list[Tensor | None]
    L: list[Tensor]
    delta: list[Tensor | None]
    dW: list[Tensor]
    db: list[Tensor]
    eta: float
    fprime: list[Tensor | None]


@runtime_checkable
class Observer(Protocol):
    """An extra per-iteration analysis (e.g. alignment terms, shadow weights).

    ``start`` is called once after initialisation (WN and IBN applied), ``step(k, net, state)``
    at every iteration after the updates are computed and before they are applied (``net``
    holds the state at ``k``), ``finish`` once at the end (also after divergence); each
    DataFrame it returns is written as ``{name}.parquet`` into the run directory.
    """

    def start(self, net: Network, spec: RunSpec, num_iterations: int, device: torch.device) -> None: ...

    def step(self, k: int, net: Network, state: StepState) -> None: ...

    def finish(self) -> dict[str, pd.DataFrame]: ...


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What ``train_run`` returns: status, final test accuracy and loss (None if diverged), paths."""

    status: str
    final_test_accuracy: float | None
    final_test_loss: float | None
    run_dir: Path
    files: dict[str, Path]
    divergence: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------------
# The engine: one step on preallocated memory
# --------------------------------------------------------------------------------------------

THETA, BT, DRIVE = 0, 1, 2  # rows of the bank; rows 3 (and 4 for DFA) hold the shadow updates
PAIR = ("bp", "fa")  # rules whose hidden deltas share one batched product per layer (bank rows THETA, BT)


def _runs(keys: Sequence, start: int, end: int) -> list[tuple[int, int]]:
    """``[(a, e), ...]``: the maximal runs of equal consecutive ``keys[a:e]`` within ``[start, end)``."""
    runs: list[list[int]] = []
    for l in range(start, end):
        if runs and keys[runs[-1][0]] == keys[l]:
            runs[-1][1] = l + 1
        else:
            runs.append([l, l + 1])
    return [(a, e) for a, e in runs]


class Engine:
    """One training step on preallocated memory, and the per-iteration records (method §1, §3, §5).

    ``compute(k, X, Y)`` runs step ``k`` up to its updates, ``apply()`` makes the step. Memory:

    - ``bank`` is ``(R, P)``: row ``THETA`` = ``[W_0 .. W_{d-1} | b_1 .. b_d]`` flattened (the
      live network is views into it), row ``BT`` = ``[B_1^T .. ]`` in the layout of W (zeros for
      layer 0 and the biases), row ``DRIVE`` = the driving rule's ``[dW | db]``, the rows after
      it the other rules' ``dW``. The step is one ``theta += eta dtheta``.
    - ``Z``, ``L``, ``f'`` and ``E`` are stored layer-major, ``(n_1 + .. + n_d, n_b)``, layer ``l``
      in rows ``rows[l]``; the loop sees the ``(n_b, n_l)`` view ``buffer[rows[l]].T``. Every
      elementwise operation runs on contiguous memory and ``f'`` of all layers is one call.
    - The deltas of BP and FA (those of the two computed) are one ``(2, n_1 + .. + n_d, n_b)``
      buffer, BP first: in the transposed form ``delta_l^T = M_l^T delta_{l+1}^T`` the matrices
      ``M_l^T`` are ``W_l`` (BP) and ``B_l^T`` (FA), the bank rows THETA and BT, so both rules'
      hidden deltas are one batched product per layer and one multiplication by ``f'(Z_l)``.
    - ``dW_l = L_l^T delta_{l+1}`` of consecutive layers of one shape is one batched product per
      rule, written straight into the bank.
    """

    def __init__(self, spec: RunSpec, net: Network, num_iterations: int, device, dtype):
        sizes, d = net.sizes, net.d
        self.spec, self.d = spec, d
        nb = spec.batch_size
        # the other rules, computed on the same batch and state for the metrics: BP for an FA
        # run, FA for a BP run, both for a DFA run
        self.shadow_rules = shadow_rules = [r for r in ("fa", "bp") if r != spec.rule] if spec.metrics else []
        self.row_of = {spec.rule: DRIVE, **{r: DRIVE + 1 + i for i, r in enumerate(shadow_rules)}}
        self.f = ACTIVATIONS[spec.activation].f
        self.fprime_fn = ACTIVATIONS[spec.activation].fprime
        shapes = [(sizes[l], sizes[l + 1]) for l in range(d)]
        w_numel = [n * m for n, m in shapes]
        self.w_bounds = w_bounds = np.concatenate([[0], np.cumsum(w_numel)]).tolist()
        P_W, N = w_bounds[-1], sum(sizes[1:])
        R = DRIVE + 1 + len(shadow_rules)
        self.bank = torch.zeros(R, P_W + N, device=device, dtype=dtype)
        unit_bounds = np.concatenate([[0], np.cumsum(sizes[1:])]).tolist()
        self.rows = rows = [None] + [slice(unit_bounds[l - 1], unit_bounds[l]) for l in range(1, d + 1)]

        def w_views(row: int | slice) -> list[Tensor]:
            return [self.bank[row, w_bounds[l] : w_bounds[l + 1]].unflatten(-1, (sizes[l], sizes[l + 1])) for l in range(d)]

        def b_views(row: int) -> list[Tensor]:
            return [self.bank[row, P_W + unit_bounds[l] : P_W + unit_bounds[l + 1]] for l in range(d)]

        self.theta = self.bank[THETA]
        self.W, self.b = w_views(THETA), b_views(THETA)
        for l in range(d):
            self.W[l].copy_(net.W[l])
            self.b[l].copy_(net.b[l])
        for l in range(1, d):
            w_views(BT)[l].copy_(net.B[l].T)
        self.net = Network(W=self.W, b=self.b, B=net.B, D=net.D, activation=net.activation, bias=net.bias)
        self.dtheta = self.bank[DRIVE]
        self.dW, self.db = w_views(DRIVE), b_views(DRIVE)
        self.db_all = self.bank[DRIVE, P_W:]  # [db_1 .. db_d]: unit-major like the deltas

        def layer_major(*lead: int) -> Tensor:
            return torch.empty(*lead, N, nb, device=device, dtype=dtype)

        def layer_views(buffer: Tensor) -> list[Tensor | None]:
            return [None] + [buffer[rows[l]].T for l in range(1, d + 1)]

        self.Z_all, self.L_all, self.fprime_all = layer_major(), layer_major(), layer_major()
        self.Z, self.L, self.fprime = layer_views(self.Z_all), layer_views(self.L_all), layer_views(self.fprime_all)
        self.E_all = torch.empty(sizes[-1], nb, device=device, dtype=dtype)
        self.E = self.E_all.T
        self.e = self.E_all.view(-1)

        # BP and FA deltas side by side (see the class docstring); DFA's on their own
        self.pair = [r for r in PAIR if r in self.row_of]
        first = THETA if self.pair[:1] == ["bp"] else BT
        self.pair_deltas = layer_major(len(self.pair)) if self.pair else None
        self.pair_Mt = w_views(slice(first, first + len(self.pair))) if self.pair else None
        # per layer, both rules' deltas (P, n_l, n_b) and f'(Z_l) (n_l, n_b), made once here
        self.pair_delta_blocks = [None] + [self.pair_deltas[:, rows[l]] for l in range(1, d + 1)] if self.pair else None
        self.fprime_blocks = [None] + [self.fprime_all[rows[l]] for l in range(1, d + 1)]
        # delta_d = E * f'(Z_d) for every rule of the pair at once: E seen once per rule
        self.E_pair = self.E_all.expand(len(self.pair), -1, -1)
        self.delta_of = {r: layer_views(self.pair_deltas[i]) for i, r in enumerate(self.pair)}
        self.delta_all_of = {r: self.pair_deltas[i] for i, r in enumerate(self.pair)}
        if "dfa" in self.row_of:
            self.delta_all_of["dfa"] = buffer = layer_major()
            self.delta_of["dfa"] = layer_views(buffer)
        self.delta_all, self.delta = self.delta_all_of[spec.rule], self.delta_of[spec.rule]

        # dW_l = L_l^T delta_{l+1}: layer 0 from X; hidden layers l = 1.. in groups of one shape.
        # A shadow rule skips the output layer: its dW_{d-1} = L_{d-1}^T delta_d is the same
        # under every rule and is copied from the driving rule's.
        self.dW_plan = []
        for rule, row in self.row_of.items():
            last = d if rule == spec.rule else d - 1
            groups = _runs(shapes, 1, last)
            delta_all = self.delta_all_of[rule]
            batched = [
                (
                    self.L_all[rows[a].start : rows[e - 1].stop].view(e - a, sizes[a], nb),
                    delta_all[rows[a + 1].start : rows[e].stop].view(e - a, sizes[a + 1], nb).transpose(1, 2),
                    self.bank[row, w_bounds[a] : w_bounds[e]].view(e - a, sizes[a], sizes[a + 1]),
                )
                for a, e in groups
            ]
            self.dW_plan.append((self.delta_of[rule][1], w_views(row)[0], batched, w_views(row)[d - 1] if last < d else None))

        self.unit_norm = torch.empty(N, device=device, dtype=dtype)
        # (d, N) 0/1 matrix summing each layer's units: ||delta_l||^2 from per-unit sums of squares
        self.layer_of_unit = torch.zeros(d, N, device=device, dtype=dtype)
        for l in range(1, d + 1):
            self.layer_of_unit[l - 1, rows[l]] = 1

        # WN works on the same groups of equal-shaped layers, (g, n_l, n_{l+1}) at a time
        self.W_groups = [
            self.theta[w_bounds[a] : w_bounds[e]].view(e - a, sizes[a], sizes[a + 1]) for a, e in _runs(shapes, 0, d)
        ]

        # Layer l's rows W, B^T, dW, shadow dW flattened, (R, n_l n_{l+1}): their Gram matrix
        # holds every Frobenius product the metrics need. Consecutive layers of one size share
        # a batched product: gram_groups holds (first layer, last layer + 1, (g, R, n) view, its transpose).
        self.gram_groups = []
        for a, e in _runs(w_numel, 0, d):
            bank_rows = self.bank[:, w_bounds[a] : w_bounds[e]].view(R, e - a, w_numel[a]).transpose(0, 1)
            self.gram_groups.append((a, e, bank_rows, bank_rows.transpose(1, 2)))

        # per-iteration records: 2*loss, per-layer Gram matrices, per-layer ||delta_l||^2
        K = num_iterations
        self.loss_x2 = torch.full((K,), float("nan"), device=device, dtype=dtype)
        self.gram = torch.full((K, d, R, R), float("nan"), device=device, dtype=dtype) if spec.metrics else None
        self.delta_sq = torch.full((K, d), float("nan"), device=device, dtype=dtype) if spec.metrics else None

    def compute(self, k: int, X: Tensor, Y: Tensor) -> tuple[list, list, Tensor, list, list, list]:
        """Step ``k`` up to its updates, on the state before it: returns ``Z, L, E, delta, dW, db``.

        ``X`` is the batch ``(n_b, n_0)``, ``Y`` its targets ``(n_b, n_d)``, best as the transposed
        view of a unit-major block (``epoch_targets``). Records the loss and, with metrics on, the
        other rules' updates (the shadow), the Gram matrices and the delta norms. Nothing is
        applied (``apply``). The returned lists are views into buffers reused at the next step.
        """
        d, W, b, Z, L = self.d, self.W, self.b, self.Z, self.L
        # forward (method §1): Z_{l+1} = L_l W_l + 1 b_{l+1}, L_{l+1} = f(Z_{l+1}), L_0 = X
        L[0] = X
        for l in range(d):
            torch.addmm(b[l], L[l], W[l], out=Z[l + 1])
            self.f(Z[l + 1], L[l + 1])
        # E = Y* - L_d, loss = 1/2 sum E^2, f'(Z_l) of all layers in one call
        torch.sub(Y, L[d], out=self.E)
        torch.dot(self.e, self.e, out=self.loss_x2[k])
        self.fprime_fn(self.Z_all, self.L_all, self.fprime_all)

        # deltas: delta_d = E * f'(Z_d); delta_l^T = M_l^T delta_{l+1}^T * f'(Z_l)^T for BP and FA at once
        fprime = self.fprime_blocks
        if self.pair:
            deltas, Mt = self.pair_delta_blocks, self.pair_Mt
            torch.mul(self.E_pair, fprime[d], out=deltas[d])
            for l in range(d - 1, 0, -1):
                torch.bmm(Mt[l], deltas[l + 1], out=deltas[l]).mul_(fprime[l])
        if "dfa" in self.row_of:
            backward_deltas(self.net, Z, L, self.E, "dfa", fprime=self.fprime, out=self.delta_of["dfa"])

        # updates: dW_l = L_l^T delta_{l+1} of every computed rule, db_l = 1^T delta_l (driving rule)
        Xt = X.T
        for delta_1, dW_0, batched, dW_out in self.dW_plan:
            torch.mm(Xt, delta_1, out=dW_0)
            for L_group, delta_group, dW_group in batched:
                torch.bmm(L_group, delta_group, out=dW_group)
            if dW_out is not None:
                dW_out.copy_(self.dW[d - 1])
        if self.spec.bias:  # db_l = 1^T delta_l for every layer at once: row sums of the delta buffer
            torch.sum(self.delta_all, 1, out=self.db_all)

        if self.spec.metrics:
            gram_k = self.gram[k]
            for first, end, bank_rows, bank_rows_T in self.gram_groups:
                torch.bmm(bank_rows, bank_rows_T, out=gram_k[first:end])
            torch.linalg.vector_norm(self.delta_all, dim=1, out=self.unit_norm)
            torch.mv(self.layer_of_unit, self.unit_norm.square_(), out=self.delta_sq[k])
        return Z, L, self.E, self.delta, self.dW, self.db  # db: views of db_all, zeros that stay zero with bias off

    def apply(self) -> None:
        """The step ``W += eta dW``, ``b += eta db`` as one flat update (method §1), then WN (method §3)."""
        self.theta.add_(self.dtheta, alpha=self.spec.eta)
        if self.spec.wn:
            normalize_columns_(self.W_groups, self.spec.gamma)


# --------------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------------


def initial_network(spec: RunSpec, device, dtype) -> Network:
    """The state at ``k = 0`` (method §2-§3): seeded ``W``, ``b``, ``B``, ``D``, then WN and IBN if asked."""
    net = init_network(
        spec.sizes, spec.init_std, bias=spec.bias, activation=spec.activation, seed=spec.seed,
        device=device, dtype=dtype,
    )
    if spec.wn:
        normalize_columns_(net.W, spec.gamma)
    if spec.ibn:
        unit_columns_(net.B)
    return net


def epoch_targets(codes: Tensor, labels: Tensor) -> Tensor:
    """Targets ``Y*`` of the examples ``labels`` (in minibatch order), ``(n, n_d)``, stored unit-major
    (the transposed view of an ``(n_d, n)`` tensor) like ``L_d``, so ``E = Y* - L_d`` runs on
    matching layouts; a minibatch is a slice of rows."""
    return codes.T.index_select(1, labels).T


def train_run(
    spec: RunSpec | Mapping[str, Any],
    dataset: data.PreparedData,
    out_dir: str | Path,
    observers: Sequence[Observer] = (),
    log: Callable[[str], Any] = print,
    labels: Tensor | np.ndarray | None = None,
    labels_source: Mapping[str, Any] | None = None,
) -> RunResult:
    """Train one network (method §5) and write its run directory ``out_dir`` (docs/design.md).

    ``dataset`` has ``X_train``, ``y_train``, ``X_test``, ``y_test`` (``data.load_prepared``);
    ``labels`` replaces ``y_train`` (the noisy labels of ``spec.label_noise``, which must then be
    > 0), and ``labels_source`` says where they come from (``file``, ``label_noise``, ``seed``;
    ``cli.read_labels``), recorded in run.json as ``labels``. Divergence
    (a non-finite loss or weight) stops the run with status ``"diverged"``, not an exception;
    every artifact is still written. ``log`` receives one progress line per epoch.
    """
    t_start = time.perf_counter()
    if not isinstance(spec, RunSpec):
        spec = RunSpec.from_dict(spec)
    observers = list(observers)
    device, dtype = torch.device(spec.device), DTYPES[spec.dtype]
    X_train, y_train, X_test, y_test = _check_dataset(spec, dataset, labels, observers)
    torch.set_num_threads(spec.threads)

    # --- state at k = 0: seeded init, WN, IBN (method §2-§3)
    net0 = initial_network(spec, device, dtype)
    n_batches = X_train.shape[0] // spec.batch_size
    K = spec.epochs * n_batches
    engine = Engine(spec, net0, K, device, dtype)
    net = engine.net
    init_weights = _weights_dict(net, "init")

    X_train, y_train = X_train.to(device, dtype), y_train.to(device)
    X_test, y_test = X_test.to(device, dtype), y_test.to(device)
    s = spec.snapshot_every
    snap_iters = list(range(0, K, s)) + [K] if s > 0 else []
    snapshots = torch.empty(len(snap_iters), engine.theta.shape[0], device=device, dtype=torch.float32)
    for observer in observers:
        observer.start(net, spec, K, device)

    evaluations: list[dict[str, Any]] = []
    divergence: dict[str, Any] | None = None
    phase_ends = np.cumsum(spec.phases).tolist()
    phase_of_epoch = [sum(e >= end for end in phase_ends) for e in range(spec.epochs)]
    codes = _codes(spec, 0, device, dtype)
    t_init = time.perf_counter() - t_start
    t_train = t_eval = 0.0

    def evaluate(epoch: int, phase: int, codes: Tensor) -> None:
        nonlocal t_eval
        t0 = time.perf_counter()
        accuracy, test_loss = _evaluate(net, X_test, y_test, codes)
        evaluations.append(
            {"epoch": epoch, "iteration": epoch * n_batches, "phase": phase,
             "test_accuracy": accuracy, "test_loss": test_loss}
        )
        t_eval += time.perf_counter() - t0

    k, epoch_rate = 0, float("nan")
    order_cpu = order_dev = X_epoch = labels_epoch = Y_epoch = Y_codes = None
    for epoch in range(spec.epochs):
        phase = phase_of_epoch[epoch]
        if epoch > 0 and phase != phase_of_epoch[epoch - 1]:
            evaluate(epoch, phase - 1, codes)  # end of the old phase, old code map
            codes = _codes(spec, phase, device, dtype)
        evaluate(epoch, phase, codes)
        _log_epoch(log, spec, epoch, engine.loss_x2, n_batches, evaluations[-1], net, epoch_rate)
        t0 = time.perf_counter()
        order = data.batch_order(X_train.shape[0], spec.batch_size, epoch, spec.reshuffle, spec.seed + ORDER_SEED_OFFSET)
        if order_cpu is None or not torch.equal(order, order_cpu):
            # the epoch's examples in minibatch order: each batch is then a contiguous slice
            order_cpu, order_dev = order, order.to(device)
            X_epoch = X_train.index_select(0, order_dev)
            labels_epoch = y_train.index_select(0, order_dev)
            Y_epoch = None
        if Y_epoch is None or Y_codes is not codes:
            Y_epoch, Y_codes = epoch_targets(codes, labels_epoch), codes
        for i in range(n_batches):
            if s > 0 and k % s == 0:
                snapshots[k // s].copy_(engine.theta)
            batch = slice(i * spec.batch_size, (i + 1) * spec.batch_size)
            X, Y, batch_labels = X_epoch[batch], Y_epoch[batch], labels_epoch[batch]

            Z, L, E, delta, dW, db = engine.compute(k, X, Y)
            if observers:
                state = StepState(
                    X=X, Y=Y, labels=batch_labels, batch_index=order_dev[batch], Z=Z, L=L,
                    delta=delta, dW=dW, db=db, eta=spec.eta, fprime=engine.fprime,
                )
                for observer in observers:
                    observer.step(k, net, state)

            engine.apply()
            k += 1
        divergence = _find_divergence(engine, k - n_batches, k)  # waits for the device
        elapsed = time.perf_counter() - t0
        t_train += elapsed
        epoch_rate = n_batches / elapsed if elapsed > 0 else float("inf")
        if divergence is not None:
            log(f"[{spec.name}] diverged at iteration {divergence['iteration']}: {divergence['reason']}")
            break
    if divergence is None:
        evaluate(spec.epochs, phase_of_epoch[-1], codes)
        _log_epoch(log, spec, spec.epochs, engine.loss_x2, n_batches, evaluations[-1], net, epoch_rate)
        if s > 0:
            snapshots[-1].copy_(engine.theta)
        rows_done, snaps_done = K, len(snap_iters)
    else:
        rows_done = min(divergence["iteration"] + 1, k)
        snaps_done = sum(1 for it in snap_iters if it < rows_done)

    # --- artifacts
    t0 = time.perf_counter()
    metrics = _metrics_frame(engine, rows_done, n_batches)
    observer_frames = {}
    for observer in observers:
        observer_frames.update(observer.finish())
    status = "completed" if divergence is None else "diverged"
    final = evaluations[-1] if divergence is None else None
    out_dir = Path(out_dir)
    with artifacts.staged_dir(out_dir) as tmp:
        artifacts.atomic_write_parquet(tmp / "metrics.parquet", metrics)
        artifacts.atomic_write_parquet(tmp / "evaluation.parquet", pd.DataFrame(evaluations, columns=_EVAL_COLUMNS))
        artifacts.atomic_write_npz(
            tmp / "snapshots.npz",
            iterations=np.asarray(snap_iters[:snaps_done], dtype=np.int64),
            theta=snapshots[:snaps_done].cpu().numpy(),
            shapes=np.asarray(json.dumps({"W": [list(w.shape) for w in net.W], "b": [list(b.shape) for b in net.b]})),
        )
        artifacts.atomic_write_npz(tmp / "weights.npz", **init_weights, **_weights_dict(net, "final"))
        for name, frame in observer_frames.items():
            artifacts.atomic_write_parquet(tmp / f"{name}.parquet", frame)
        t_write = time.perf_counter() - t0
        run_info = {
            "spec": spec.to_dict(),
            "seed": spec.seed,
            "code_version": artifacts.code_version(),
            "status": status,
            "divergence": divergence,
            "iterations": {"planned": K, "done": k, "per_epoch": n_batches},
            "final": None if final is None else {k_: final[k_] for k_ in ("test_accuracy", "test_loss")},
            "timings": {
                "init_s": t_init, "train_s": t_train, "evaluation_s": t_eval, "write_s": t_write,
                "total_s": time.perf_counter() - t_start,
                "iterations_per_s": k / t_train if t_train > 0 else None,
            },
            "device": _device_name(device),
            "threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "dataset": dict(getattr(dataset, "metadata", {}) or {}),
            "labels": dict(labels_source) if labels_source is not None else
                      {"file": None, "label_noise": spec.label_noise if labels is not None else 0.0},
            "observers": sorted(observer_frames),
        }
        artifacts.atomic_write_json(tmp / "run.json", run_info)
    files = {"metrics": out_dir / "metrics.parquet", "evaluation": out_dir / "evaluation.parquet",
             "snapshots": out_dir / "snapshots.npz", "weights": out_dir / "weights.npz", "run": out_dir / "run.json"}
    files.update({name: out_dir / f"{name}.parquet" for name in observer_frames})
    return RunResult(
        status=status,
        final_test_accuracy=None if final is None else final["test_accuracy"],
        final_test_loss=None if final is None else final["test_loss"],
        run_dir=out_dir,
        files=files,
        divergence=divergence,
    )


_EVAL_COLUMNS = ["epoch", "iteration", "phase", "test_accuracy", "test_loss"]


def _check_dataset(spec: RunSpec, dataset, labels, observers) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The dataset's tensors, after checking them against the spec (before any compute)."""
    for key in ("X_train", "y_train", "X_test", "y_test"):
        if not hasattr(dataset, key):
            raise ValueError(f"dataset has no {key!r}: pass data.load_prepared(path)")
    X_train, X_test = torch.as_tensor(dataset.X_train), torch.as_tensor(dataset.X_test)
    y_train = torch.as_tensor(dataset.y_train if labels is None else labels).to(torch.int64)
    y_test = torch.as_tensor(dataset.y_test).to(torch.int64)
    for key, X, y in (("train", X_train, y_train), ("test", X_test, y_test)):
        if X.ndim != 2 or X.shape[1] != spec.sizes[0]:
            raise ValueError(
                f"X_{key} has shape {tuple(X.shape)} but sizes[0] = {spec.sizes[0]}: the input layer "
                "must match the flattened image size (image_size**2)"
            )
        if y.shape != (X.shape[0],):
            raise ValueError(f"{'labels' if key == 'train' and labels is not None else 'y_' + key} has shape "
                             f"{tuple(y.shape)}, expected ({X.shape[0]},)")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= data.N_CLASSES):
            raise ValueError(f"{key} labels must be classes 0..{data.N_CLASSES - 1}")
    if spec.batch_size > X_train.shape[0]:
        raise ValueError(
            f"batch_size {spec.batch_size} exceeds the {X_train.shape[0]} training examples: "
            "lower batch_size or use more training data"
        )
    if spec.label_noise > 0 and labels is None:
        raise ValueError(
            f"label_noise is {spec.label_noise} % but no labels were passed: pass the noisy labels "
            "(data.load_labels) as labels="
        )
    if spec.label_noise == 0 and labels is not None:
        raise ValueError("labels were passed but label_noise is 0 (the data set's true labels): pass no labels, "
                         "or the run's label_noise")
    for observer in observers:
        if not isinstance(observer, Observer):
            raise ValueError(f"observer {observer!r} lacks start/step/finish (see train.Observer)")
    return X_train, y_train, X_test, y_test


def _codes(spec: RunSpec, phase: int, device, dtype) -> Tensor:
    return data.phase_codes(spec.targets, spec.seed, phase).to(device=device, dtype=dtype)


def _evaluate(net: Network, X: Tensor, y: Tensor, codes: Tensor, chunk: int = 10_000) -> tuple[float, float]:
    """Test accuracy (``decode`` of the outputs) and test loss (summed loss / number of images)."""
    correct = torch.zeros((), device=X.device, dtype=torch.int64)
    total = torch.zeros((), device=X.device, dtype=torch.float64)
    for start in range(0, X.shape[0], chunk):
        _, L = forward(net, X[start : start + chunk])
        y_chunk = y[start : start + chunk]
        correct += (data.decode(L[-1], codes) == y_chunk).sum()
        E = output_error(codes[y_chunk], L[-1])
        total += 0.5 * (E.to(torch.float64) ** 2).sum()
    n = max(X.shape[0], 1)
    return correct.item() / n, total.item() / n


def _find_divergence(engine: Engine, k0: int, k1: int) -> dict | None:
    """The first iteration in ``[k0, k1)`` with a non-finite loss or weight, or the state at ``k1``."""
    bad = ~torch.isfinite(engine.loss_x2[k0:k1])
    if engine.gram is not None:
        bad |= ~torch.isfinite(engine.gram[k0:k1, :, THETA, THETA]).all(dim=1)
    if bad.any():
        k = k0 + int(torch.nonzero(bad)[0])
        reason = "non-finite loss" if not torch.isfinite(engine.loss_x2[k]) else "non-finite weights"
        return {"iteration": k, "reason": reason}
    if not bool(torch.isfinite(engine.theta).all()):
        return {"iteration": k1, "reason": "non-finite weights"}
    return None


def _metrics_frame(engine: Engine, rows: int, n_batches: int) -> pd.DataFrame:
    """The per-iteration table of docs/design.md from the recorded Frobenius products."""
    iteration = np.arange(rows)
    columns: dict[str, Any] = {
        "iteration": iteration,
        "epoch": iteration // n_batches,
        "loss": (0.5 * engine.loss_x2[:rows].to(torch.float64)).cpu().numpy(),
    }
    if engine.gram is None:
        return pd.DataFrame(columns)
    G = engine.gram[:rows].to(torch.float64).cpu()
    d = G.shape[1]
    fa, bp = engine.row_of["fa"], engine.row_of["bp"]

    def g(l: int | slice, i: int, j: int) -> Tensor:
        return G[:, l, i, j]

    hidden = slice(1, d)
    columns["angle_W_Bt_all"] = angle_from_products(
        g(hidden, THETA, BT).sum(1), g(hidden, THETA, THETA).sum(1), g(hidden, BT, BT).sum(1)
    ).numpy()
    for l in range(1, d):
        columns[f"angle_W_Bt_{l}"] = angle_from_products(g(l, THETA, BT), g(l, THETA, THETA), g(l, BT, BT)).numpy()
    for l in range(d):
        columns[f"angle_dWfa_dWbp_{l}"] = angle_from_products(g(l, fa, bp), g(l, fa, fa), g(l, bp, bp)).numpy()
    for l in range(1, d):
        columns[f"angle_dW_Bt_{l}"] = angle_from_products(g(l, DRIVE, BT), g(l, DRIVE, DRIVE), g(l, BT, BT)).numpy()
    for l in range(d):
        columns[f"angle_dW_W_{l}"] = angle_from_products(g(l, DRIVE, THETA), g(l, DRIVE, DRIVE), g(l, THETA, THETA)).numpy()
    norm_W = torch.sqrt(G[:, :, THETA, THETA])
    norm_dW = torch.sqrt(G[:, :, DRIVE, DRIVE])
    for l in range(d):
        columns[f"norm_W_{l}"] = norm_W[:, l].numpy()
    for l in range(d):
        columns[f"norm_W_rel_{l}"] = (norm_W[:, l] / norm_W[0, l]).numpy()
    for l in range(d):
        columns[f"ratio_dW_W_{l}"] = (engine.spec.eta * norm_dW[:, l] / norm_W[:, l]).numpy()
    norm_delta = torch.sqrt(engine.delta_sq[:rows].to(torch.float64).cpu())
    for l in range(1, d + 1):
        columns[f"norm_delta_{l}"] = norm_delta[:, l - 1].numpy()
    return pd.DataFrame(columns)


def _weights_dict(net: Network, when: str) -> dict[str, np.ndarray]:
    """``W{l}_{when}`` (l = 0..d-1), ``b{l}_{when}`` (l = 1..d), and ``B{l}``, ``D{l}`` (l = 1..d-1)."""
    out = {f"W{l}_{when}": W.detach().cpu().numpy().copy() for l, W in enumerate(net.W)}
    out.update({f"b{l + 1}_{when}": b.detach().cpu().numpy().copy() for l, b in enumerate(net.b)})
    if when == "init":
        out.update({f"B{l}": net.B[l].cpu().numpy().copy() for l in range(1, net.d)})
        out.update({f"D{l}": net.D[l].cpu().numpy().copy() for l in range(1, net.d)})
    return out


def _log_epoch(log, spec: RunSpec, epoch: int, loss_x2: Tensor, n_batches: int, evaluation: dict, net: Network, rate: float) -> None:
    train_loss, rate_text = "-", "-"  # before the first step there is neither a training loss nor a rate
    if epoch:
        train_loss = f"{0.5 * loss_x2[(epoch - 1) * n_batches : epoch * n_batches].mean().item():.2f}"
        rate_text = f"{rate:.1f}"
    angles = " ".join(f"{angle_deg(net.W[l], net.B[l].T).item():.1f}" for l in range(1, net.d))
    log(
        f"[{spec.name}] epoch {epoch}/{spec.epochs} train_loss {train_loss} "
        f"test_acc {evaluation['test_accuracy']:.4f} test_loss {evaluation['test_loss']:.3f} "
        f"angle(W_l,B_l^T) {angles} | {rate_text} it/s"
    )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()})"
