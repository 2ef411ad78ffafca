"""The training loop (method §5): one run, from its spec and data to its run directory.

``train_run(spec, dataset, out_dir)`` trains one network with plain SGD under the rule of
``spec`` (``bp``, ``fa``, ``dfa`` or one of the rules of method §1.6), optionally with WN, and writes the run directory of
docs/design.md (``run_dir.write_run``). The step and its records are the engine's
(``engine.Engine``); the loop feeds it the minibatches epoch by epoch, evaluates on the test set at
the start of every epoch, at every phase boundary and after the last epoch, takes the snapshots,
shows each step to the observers and stops at divergence. Every draw comes from the run seed
``s``: the initialisation from ``s``, the code map of phase ``p`` from ``s + 10_000 (p + 1)``, the
minibatch order from ``s + 1_000_003``; the epoch's examples are gathered once in minibatch order.
The run trains on, and its losses are taken against, the code map's targets after label smoothing
(``data.smooth_targets``); its accuracy is read with the code map itself (method §2.3).

``read_labels`` reads the training labels a spec asks for: the training job's input, covered by
its code hash.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fa_analysis import data, run_dir
from fa_analysis.artifacts import code_version
from fa_analysis.engine import (
    DTYPES,
    Engine,
    Observer,
    StepState,
    epoch_targets,
    find_divergence,
    initial_network,
    metrics_table,
)
from fa_analysis.learning_rules import CHANGING_FEEDBACK
from fa_analysis.measures import angle_deg
from fa_analysis.network import Network, forward, output_error
from fa_analysis.spec import RunSpec

ORDER_SEED_OFFSET = 1_000_003


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
# The training run
# --------------------------------------------------------------------------------------------


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
    ``read_labels``), recorded in run.json as ``labels``. Divergence
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

    # --- the state at k = 0: seeded init, WN, IBN (method §2-§3), in the engine's memory
    n_batches = X_train.shape[0] // spec.batch_size
    K = spec.epochs * n_batches
    engine = Engine(spec, initial_network(spec, device, dtype), K, device, dtype)
    net = engine.net
    init_weights = run_dir.weight_arrays(net, "init")
    epochs = EpochData(spec, X_train.to(device, dtype), y_train.to(device), device)
    snapshots = Snapshots(spec.snapshot_every, K, engine.theta)
    for observer in observers:
        observer.start(net, spec, K, device)
    phase_of_epoch = _phase_of_epoch(spec)
    codes, targets = _code_map(spec, 0, device, dtype)
    evaluations = Evaluations(net, X_test.to(device, dtype), y_test.to(device), n_batches)
    timings = {"init_s": time.perf_counter() - t_start, "train_s": 0.0}

    # --- the epochs: evaluate, then one step per minibatch; divergence is checked once an epoch
    k, epoch_rate, divergence = 0, math.nan, None
    for epoch in range(spec.epochs):
        phase = phase_of_epoch[epoch]
        if epoch > 0 and phase != phase_of_epoch[epoch - 1]:
            evaluations.add(epoch, phase - 1, codes, targets)  # end of the old phase, old code map
            codes, targets = _code_map(spec, phase, device, dtype)
        evaluations.add(epoch, phase, codes, targets)
        _log_epoch(log, spec, epoch, engine.loss_x2, n_batches, evaluations.rows[-1], net, epoch_rate)
        t0 = time.perf_counter()
        X_epoch, Y_epoch, labels_epoch, order = epochs.in_minibatch_order(epoch, targets)
        for i in range(n_batches):
            snapshots.take(k)
            batch = slice(i * spec.batch_size, (i + 1) * spec.batch_size)
            X, Y = X_epoch[batch], Y_epoch[batch]
            Z, L, E, delta, dW, db = engine.compute(k, X, Y)
            if observers:
                state = StepState(
                    X=X, Y=Y, labels=labels_epoch[batch], batch_index=order[batch], Z=Z, L=L,
                    delta=delta, dW=dW, db=db, eta=spec.eta, fprime=engine.fprime,
                )
                for observer in observers:
                    observer.step(k, net, state)
            engine.apply()
            k += 1
        divergence = find_divergence(engine, k - n_batches, k)  # waits for the device
        elapsed = time.perf_counter() - t0
        timings["train_s"] += elapsed
        epoch_rate = n_batches / elapsed if elapsed > 0 else float("inf")
        if divergence is not None:
            log(f"[{spec.name}] diverged at iteration {divergence['iteration']}: {divergence['reason']}")
            break

    # --- the end: the last evaluation and snapshot, or what a diverged run recorded before it blew up
    if divergence is None:
        evaluations.add(spec.epochs, phase_of_epoch[-1], codes, targets)
        _log_epoch(log, spec, spec.epochs, engine.loss_x2, n_batches, evaluations.rows[-1], net, epoch_rate)
        snapshots.take_last()
        rows_done = K
    else:
        rows_done = min(divergence["iteration"] + 1, k)

    # --- the run directory
    t0 = time.perf_counter()
    metrics = metrics_table(engine, rows_done, n_batches)
    observer_tables = {}
    for observer in observers:
        observer_tables.update(observer.finish())
    status = "completed" if divergence is None else "diverged"
    final = evaluations.rows[-1] if divergence is None else None
    snapshot_iterations, snapshot_thetas = snapshots.taken(divergence is None, rows_done)

    def run_info() -> dict[str, Any]:
        timings["write_s"] = time.perf_counter() - t0
        return {
            "spec": spec.to_dict(),
            "seed": spec.seed,
            "code_version": code_version(),
            "status": status,
            "divergence": divergence,
            "iterations": {"planned": K, "done": k, "per_epoch": n_batches},
            "final": None if final is None else {key: final[key] for key in ("test_accuracy", "test_loss")},
            "timings": {
                "init_s": timings["init_s"], "train_s": timings["train_s"], "evaluation_s": evaluations.seconds,
                "write_s": timings["write_s"], "total_s": time.perf_counter() - t_start,
                "iterations_per_s": k / timings["train_s"] if timings["train_s"] > 0 else None,
            },
            "device": _device_name(device),
            "threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "dataset": dict(getattr(dataset, "metadata", {}) or {}),
            "labels": dict(labels_source) if labels_source is not None else
                      {"file": None, "label_noise": spec.label_noise if labels is not None else 0.0},
            "observers": sorted(observer_tables),
        }

    files = run_dir.write_run(
        out_dir, metrics=metrics, evaluations=evaluations.rows, snapshot_iterations=snapshot_iterations,
        snapshots=snapshot_thetas, sizes=spec.sizes, weights={**init_weights, **run_dir.weight_arrays(net, "final", spec.rule in CHANGING_FEEDBACK)},
        observer_tables=observer_tables, info=run_info,
    )
    return RunResult(
        status=status,
        final_test_accuracy=None if final is None else final["test_accuracy"],
        final_test_loss=None if final is None else final["test_loss"],
        run_dir=Path(out_dir),
        files=files,
        divergence=divergence,
    )


# --------------------------------------------------------------------------------------------
# What the loop keeps between steps
# --------------------------------------------------------------------------------------------


class EpochData:
    """The training examples of an epoch in minibatch order (each batch a contiguous slice), and
    their targets under the current code map (its rows ``Y*`` of every class, smoothed); gathered
    again only when the order or the code map changes (``data.batch_order`` with the seed
    ``s + ORDER_SEED_OFFSET``)."""

    def __init__(self, spec: RunSpec, X_train: Tensor, y_train: Tensor, device: torch.device):
        self.spec, self.X_train, self.y_train, self.device = spec, X_train, y_train, device
        self.order_cpu = self.order = self.X = self.labels = self.Y = self.Y_targets = None

    def in_minibatch_order(self, epoch: int, targets: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(X, Y*, labels, dataset indices)`` of the epoch's examples in minibatch order; row ``c``
        of ``targets`` is the target of class ``c``."""
        spec = self.spec
        order = data.batch_order(self.X_train.shape[0], spec.batch_size, epoch, spec.reshuffle,
                                 spec.seed + ORDER_SEED_OFFSET)
        if self.order_cpu is None or not torch.equal(order, self.order_cpu):
            self.order_cpu, self.order = order, order.to(self.device)
            self.X = self.X_train.index_select(0, self.order)
            self.labels = self.y_train.index_select(0, self.order)
            self.Y = None
        if self.Y is None or self.Y_targets is not targets:
            self.Y, self.Y_targets = epoch_targets(targets, self.labels), targets
        return self.X, self.Y, self.labels, self.order


class Snapshots:
    """theta at iterations ``0, s, 2s, ..`` and after the last step (``snapshot_every`` = s; none for 0)."""

    def __init__(self, every: int, num_iterations: int, theta: Tensor):
        self.every, self.theta = every, theta
        self.iterations = list(range(0, num_iterations, every)) + [num_iterations] if every > 0 else []
        self.thetas = torch.empty(len(self.iterations), theta.shape[0], device=theta.device, dtype=torch.float32)

    def take(self, k: int) -> None:
        """The state before step ``k``, when ``k`` is a snapshot iteration."""
        if self.every > 0 and k % self.every == 0:
            self.thetas[k // self.every].copy_(self.theta)

    def take_last(self) -> None:
        """The state after the last step."""
        if self.every > 0:
            self.thetas[-1].copy_(self.theta)

    def taken(self, completed: bool, rows_done: int) -> tuple[list[int], np.ndarray]:
        """The snapshots taken: all of a completed run, those before ``rows_done`` of a diverged one."""
        n = len(self.iterations) if completed else sum(1 for it in self.iterations if it < rows_done)
        return self.iterations[:n], self.thetas[:n].cpu().numpy()


class Evaluations:
    """The evaluation table, row by row: test accuracy and loss of ``net`` under a code map and its targets."""

    def __init__(self, net: Network, X_test: Tensor, y_test: Tensor, n_batches: int):
        self.net, self.X_test, self.y_test, self.n_batches = net, X_test, y_test, n_batches
        self.rows: list[dict[str, Any]] = []
        self.seconds = 0.0

    def add(self, epoch: int, phase: int, codes: Tensor, targets: Tensor) -> None:
        """The row of the state at the start of ``epoch`` (``phase``'s code map ``codes``, its
        smoothed ``targets``)."""
        t0 = time.perf_counter()
        accuracy, test_loss = _evaluate(self.net, self.X_test, self.y_test, codes, targets)
        self.seconds += time.perf_counter() - t0
        self.rows.append({"epoch": epoch, "iteration": epoch * self.n_batches, "phase": phase,
                          "test_accuracy": accuracy, "test_loss": test_loss})


# --------------------------------------------------------------------------------------------
# The run's inputs, the test set and the log
# --------------------------------------------------------------------------------------------


def read_labels(spec: Mapping, labels_path: str | None):
    """The training labels of a run: ``(noisy labels or None, their source for run.json)``.

    A run with ``label_noise`` p > 0 needs the noisy-label file of level p (the data stage's
    ``labels_noise{p}.npz``); a run with ``label_noise`` 0 trains on the data set's labels and takes
    no file. Raises ``ValueError`` naming the file and the run's level on any mismatch.
    """
    run = f"{spec['experiment']}/{spec['condition']}/{spec['seed']}"
    level = float(spec["label_noise"])
    if labels_path is None:
        if level > 0:
            raise ValueError(f"run {run} trains on {level:g} % noisy labels but no labels file was given: "
                             f"give the file of that level (the workflow's data/labels_noise{level:g}.npz)")
        return None, {"file": None, "label_noise": 0.0}
    if level == 0:
        raise ValueError(f"run {run} trains on the data set's true labels (label_noise 0): "
                         f"give no labels file (got {labels_path})")
    labels, metadata = data.load_labels(labels_path)
    if float(metadata["percent"]) != level:
        raise ValueError(f"labels file {labels_path} holds {metadata['percent']:g} % noisy labels but run {run} "
                         f"has label_noise {level:g}: give the file of level {level:g}")
    return labels, {"file": str(labels_path), "label_noise": level, "seed": metadata["seed"]}


def _phase_of_epoch(spec: RunSpec) -> list[int]:
    """The phase (code map) of every epoch."""
    phase_ends = np.cumsum(spec.phases).tolist()
    return [sum(e >= end for end in phase_ends) for e in range(spec.epochs)]


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


def _code_map(spec: RunSpec, phase: int, device, dtype) -> tuple[Tensor, Tensor]:
    """The code map of ``phase`` (method §2.3, §4.4) and the targets the run trains on: the map
    after label smoothing (the map itself when ``label_smoothing`` is 0)."""
    codes = data.phase_codes(spec.targets, spec.seed, phase).to(device=device, dtype=dtype)
    return codes, data.smooth_targets(codes, spec.label_smoothing)


def _evaluate(net: Network, X: Tensor, y: Tensor, codes: Tensor, targets: Tensor,
              chunk: int = 10_000) -> tuple[float, float]:
    """Test accuracy (``decode`` of the outputs with the code map) and test loss (summed loss against
    the smoothed targets / number of images)."""
    correct = torch.zeros((), device=X.device, dtype=torch.int64)
    total = torch.zeros((), device=X.device, dtype=torch.float64)
    for start in range(0, X.shape[0], chunk):
        _, L = forward(net, X[start : start + chunk])
        y_chunk = y[start : start + chunk]
        correct += (data.decode(L[-1], codes) == y_chunk).sum()
        E = output_error(targets[y_chunk], L[-1])
        total += 0.5 * (E.to(torch.float64) ** 2).sum()
    n = max(X.shape[0], 1)
    return correct.item() / n, total.item() / n


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
