"""The run directory of one training job: its one writer and its one reader (docs/design.md, "Run artifact").

``write_run`` stages every file of a run and moves the directory into place at once, ``run.json``
last (``artifacts.staged_dir``): a killed job leaves no file Snakemake could take for complete.
``read_run`` gives a :class:`Run` that reads each file on first use, so the aggregation, the
embedding and the Python API read runs the same way. ``theta_layout`` is the one definition of
the flat parameter row ``theta = [W_0 .. W_{d-1} | b_1 .. b_d]`` the engine steps on and the
snapshots store.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fa_analysis import artifacts

PathLike = str | Path

#: The files every run directory has, by name.
FILES = {
    "metrics": "metrics.parquet",
    "evaluation": "evaluation.parquet",
    "snapshots": "snapshots.npz",
    "weights": "weights.npz",
    "run": "run.json",
}
#: Tables every run has; any other ``*.parquet`` in a run directory comes from an observer.
ENGINE_TABLES = ("metrics", "evaluation")
EVALUATION_COLUMNS = ["epoch", "iteration", "phase", "test_accuracy", "test_loss"]


# ---------------------------------------------------------------------------------------------
# The flat parameter layout
# ---------------------------------------------------------------------------------------------


def theta_layout(sizes: Sequence[int]) -> list[tuple[str, int, tuple[int, ...]]]:
    """``(name, start, shape)`` of every block of theta: ``W_0..W_{d-1}`` then ``b_1..b_d``."""
    layout, start = [], 0
    for l in range(len(sizes) - 1):
        shape = (sizes[l], sizes[l + 1])
        layout.append((f"W{l}", start, shape))
        start += shape[0] * shape[1]
    for l in range(1, len(sizes)):
        layout.append((f"b{l}", start, (sizes[l],)))
        start += sizes[l]
    return layout


def theta_size(sizes: Sequence[int]) -> int:
    """The number of entries of theta."""
    _, start, shape = theta_layout(sizes)[-1]
    return start + shape[0]


def snapshot_shapes(sizes: Sequence[int]) -> dict[str, list[list[int]]]:
    """``{"W": [shape of W_l], "b": [shape of b_l]}``: what ``snapshots.npz`` records of the layout."""
    layout = {name: list(shape) for name, _, shape in theta_layout(sizes)}
    return {"W": [layout[f"W{l}"] for l in range(len(sizes) - 1)], "b": [layout[f"b{l}"] for l in range(1, len(sizes))]}


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def weight_arrays(net, when: str, feedback_changes: bool = False) -> dict[str, np.ndarray]:
    """The arrays of ``weights.npz`` for the network ``net`` (``network.Network``) at ``when``
    (``init`` or ``final``): ``W{l}_{when}`` (l = 0..d-1), ``b{l}_{when}`` (l = 1..d), and with
    ``init`` the ``B{l}`` (the feedback at k = 0), ``D{l}`` (l = 1..d-1). A rule whose feedback
    changes (``feedback_changes``: sign symmetry, Kolen-Pollack) also has ``B{l}_final``, the feedback
    in use at the final state (method §1.6)."""
    out = {f"W{l}_{when}": W.detach().cpu().numpy().copy() for l, W in enumerate(net.W)}
    out.update({f"b{l + 1}_{when}": b.detach().cpu().numpy().copy() for l, b in enumerate(net.b)})
    if when == "init":
        out.update({f"B{l}": net.B[l].cpu().numpy().copy() for l in range(1, net.d)})
        out.update({f"D{l}": net.D[l].cpu().numpy().copy() for l in range(1, net.d)})
    elif feedback_changes:
        out.update({f"B{l}_final": net.B[l].cpu().numpy().copy() for l in range(1, net.d)})
    return out


def write_run(
    out_dir: PathLike,
    *,
    metrics: pd.DataFrame,
    evaluations: Sequence[Mapping[str, Any]],
    snapshot_iterations: Sequence[int],
    snapshots: np.ndarray,
    sizes: Sequence[int],
    weights: Mapping[str, np.ndarray],
    observer_tables: Mapping[str, pd.DataFrame],
    info: Callable[[], dict],
) -> dict[str, Path]:
    """Write the run directory ``out_dir`` at once; returns ``{name: path}`` of its files.

    ``evaluations`` are the rows of the evaluation table, ``snapshots`` the ``(S, P)`` float32
    thetas at ``snapshot_iterations``, ``weights`` the arrays of ``weights.npz`` (``W{l}_init``,
    ``W{l}_final``, ``b{l}_...``, ``B{l}``, ``D{l}``). ``info`` is called once every other file is
    written (so that it can time the writing) and gives ``run.json``.
    """
    out_dir = Path(out_dir)
    with artifacts.staged_dir(out_dir) as tmp:
        artifacts.atomic_write_parquet(tmp / FILES["metrics"], metrics)
        artifacts.atomic_write_parquet(tmp / FILES["evaluation"], pd.DataFrame(list(evaluations), columns=EVALUATION_COLUMNS))
        artifacts.atomic_write_npz(
            tmp / FILES["snapshots"],
            iterations=np.asarray(snapshot_iterations, dtype=np.int64),
            theta=snapshots,
            shapes=np.asarray(json.dumps(snapshot_shapes(sizes))),
        )
        artifacts.atomic_write_npz(tmp / FILES["weights"], **weights)
        for name, frame in observer_tables.items():
            artifacts.atomic_write_parquet(tmp / f"{name}.parquet", frame)
        artifacts.atomic_write_json(tmp / FILES["run"], info())
    files = {name: out_dir / file for name, file in FILES.items()}
    files.update({name: out_dir / f"{name}.parquet" for name in observer_tables})
    return files


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One training job's run directory, read back; each file is read on first use."""

    path: Path
    info: dict  # run.json

    @property
    def spec(self) -> dict:
        return self.info["spec"]

    @property
    def seed(self) -> int:
        return int(self.info["seed"])

    @property
    def status(self) -> str:
        """``completed`` or ``diverged``."""
        return str(self.info.get("status", "unknown"))

    @property
    def sizes(self) -> list[int]:
        return list(self.spec["sizes"])

    @property
    def depth(self) -> int:
        """``d``, the number of weight matrices ``W_0..W_{d-1}``."""
        return len(self.sizes) - 1

    @functools.cached_property
    def metrics(self) -> pd.DataFrame:
        return pd.read_parquet(self._file("metrics"))

    @functools.cached_property
    def evaluation(self) -> pd.DataFrame:
        return pd.read_parquet(self._file("evaluation"))

    def observer_tables(self) -> list[str]:
        """The names of the observers' tables in the directory (``terms_lag``, ``shadow``, ...)."""
        return sorted({p.stem for p in self.path.glob("*.parquet")} - set(ENGINE_TABLES))

    def table(self, name: str) -> pd.DataFrame | None:
        """An observer's table ``{name}.parquet`` of this run, or None when the run has none."""
        path = self.path / f"{name}.parquet"
        return pd.read_parquet(path) if path.exists() else None

    def weights(self) -> dict[str, np.ndarray]:
        """Every array of ``weights.npz``; ``{}`` when the run has none."""
        path = self.path / FILES["weights"]
        if not path.is_file():
            return {}
        with np.load(path) as archive:
            return {name: archive[name] for name in archive.files}

    def feedback_weights(self) -> dict[int, np.ndarray]:
        """``{l: B_l}`` for l = 1..d-1 (float64, ``B_l`` of shape (n_{l+1}, n_l)) from ``weights.npz``."""
        path = self._file("weights", "the run did not store its weights")
        with np.load(path) as weights:
            missing = [f"B{l}" for l in range(1, self.depth) if f"B{l}" not in weights.files]
            if missing:
                raise KeyError(f"{path} has no {', '.join(missing)} (has {weights.files})")
            return {l: np.asarray(weights[f"B{l}"], dtype=np.float64) for l in range(1, self.depth)}

    def snapshots(self) -> tuple[np.ndarray, np.ndarray]:
        """``(iterations (S,), theta (S, P) float32)`` of ``snapshots.npz``, checked against the layout."""
        path = self._file("snapshots", "training.snapshot_every must be > 0 for the runs that need snapshots")
        with np.load(path) as snapshots:
            iterations, theta = snapshots["iterations"], snapshots["theta"]
            shapes = json.loads(str(snapshots["shapes"])) if "shapes" in snapshots.files else None
        if theta.ndim != 2 or len(theta) != len(iterations) or len(theta) < 1:
            raise ValueError(f"{path}: theta has shape {theta.shape} for {len(iterations)} iterations")
        if isinstance(shapes, dict) and shapes != snapshot_shapes(self.sizes):
            raise ValueError(f"{path}: snapshot shapes {shapes} differ from the layout of sizes {self.sizes} "
                             "(all W then all b); the snapshots were not written by train_run")
        return iterations, theta

    def _file(self, name: str, why: str = "") -> Path:
        path = self.path / FILES[name]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from the run directory {self.path}"
                                    + (f": {why}" if why else ""))
        return path


def read_run(run_dir: PathLike, require: Sequence[str] = ENGINE_TABLES) -> Run:
    """The run directory ``run_dir``, after checking that ``run.json`` and the files ``require``
    (names of ``FILES``) are there.

    Raises FileNotFoundError naming the missing file when the directory is not a finished run.
    """
    path = Path(run_dir)
    info_path = path / FILES["run"]
    if not info_path.is_file():
        raise FileNotFoundError(
            f"{info_path} is missing: {path} is not a finished run directory "
            "(run.json is written last; rerun the training job that makes it)"
        )
    info = json.loads(info_path.read_text())
    if "sizes" not in info.get("spec", {}):
        raise ValueError(f"{info_path}: 'spec.sizes' is missing; the run was not written by train_run")
    run = Run(path=path, info=info)
    for name in require:
        run._file(name)
    return run
