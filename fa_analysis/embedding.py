"""Weight-trajectory embeddings: joint PCA with the loss landscape, and UMAP (method §8).

The trajectory runs (``bp``, ``fa``, ``bp_wn``, ``fa_wn``) start from the same initial ``W, B, b``
(one seed) and store a snapshot ``theta`` (all ``W`` then all ``b``, flattened) every few
iterations. Here

- :func:`pca_landscape` fits **one** PCA (2 components) over every method's snapshots, projects
  each trajectory onto the PC1–PC2 plane, maps a grid of that plane back to weights with
  ``inverse_transform`` and evaluates the summed training loss ``½ Σ ‖Y* − L_d‖²`` there on a
  training subset (forward pass of :mod:`fa_analysis.network`, the run's own code map). The
  feedback weights enter as reference points: for every FA-rule run, the run's initial state
  with each ``W_l`` (l = 1..d-1) replaced by ``B_lᵀ`` (``W_0`` and the biases stay at their initial
  values: ``B_0`` does not exist and ``B`` has no bias). That is the point the FA angles
  ``∠(W_l, B_lᵀ)`` measure the distance to.
- :func:`umap_embedding` embeds the same snapshots with UMAP (seeded, subsampled evenly in time).

Each writes its table plus a JSON of the settings, the seeds, the runs used and the code version,
and labels every run with its outcome (``completed``, ``diverged`` or ``collapsed``; method §5.6),
which the trajectory figures name in their legends.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from fa_analysis import artifacts, data, network, outcome
from fa_analysis.run_dir import Run, read_run, theta_layout, theta_size
from fa_analysis.settings import is_int, with_defaults

PathLike = str | Path

#: Seed of the randomized SVD of the joint PCA.
PCA_SEED = 0


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PCASettings:
    """Config ``embedding`` (PCA part): grid points per axis, margin, training subset size.

    A key left out takes the schema's default (``settings.schema_defaults("embedding")``).
    """

    pca_grid: int
    pca_margin: float
    landscape_train_subset: int | None

    @classmethod
    def from_dict(cls, settings: Mapping) -> "PCASettings":
        known = set(cls.__dataclass_fields__)
        out = cls(**with_defaults(("embedding",), {key: settings[key] for key in known if key in settings}, known))
        if not is_int(out.pca_grid) or out.pca_grid < 2:
            raise ValueError(f"embedding.pca_grid must be an integer >= 2, got {out.pca_grid!r}")
        if not out.pca_margin >= 0:
            raise ValueError(f"embedding.pca_margin must be >= 0, got {out.pca_margin!r}")
        subset = out.landscape_train_subset
        if subset is not None and (not is_int(subset) or subset < 1):
            raise ValueError(f"embedding.landscape_train_subset must be a positive integer or null, got {subset!r}")
        return out


@dataclass(frozen=True)
class UMAPSettings:
    """Config ``embedding.umap``: neighbours, minimum distance, seed, maximum number of points.

    A key left out takes the schema's default (``settings.schema_defaults("embedding", "umap")``).
    """

    n_neighbors: int
    min_dist: float
    seed: int
    max_points: int

    @classmethod
    def from_dict(cls, settings: Mapping) -> "UMAPSettings":
        try:
            out = cls(**with_defaults(("embedding", "umap"), settings, set(cls.__dataclass_fields__)))
        except KeyError as error:
            raise ValueError(error.args[0]) from None
        if not is_int(out.n_neighbors) or out.n_neighbors < 2:
            raise ValueError(f"embedding.umap.n_neighbors must be an integer >= 2, got {out.n_neighbors!r}")
        if not 0 <= out.min_dist:
            raise ValueError(f"embedding.umap.min_dist must be >= 0, got {out.min_dist!r}")
        if not is_int(out.max_points) or out.max_points < 2:
            raise ValueError(f"embedding.umap.max_points must be an integer >= 2, got {out.max_points!r}")
        return out


# ---------------------------------------------------------------------------------------------
# Trajectories
# ---------------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    """The snapshots of one trajectory run."""

    method: str  # the condition name, e.g. "fa_wn"
    run: Run
    iterations: np.ndarray  # (S,)
    theta: np.ndarray  # (S, P) float32: all W then all b, flattened (run_dir.theta_layout)
    collapse_margin: float  # config analysis.collapse_margin

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def spec(self) -> dict:
        return self.run.spec

    @property
    def status(self) -> str:
        """``completed``, ``diverged`` (run.json) or ``collapsed`` (``outcome.run_status``)."""
        return outcome.run_status(self.run.status, self.run.evaluation, self.collapse_margin)


def read_trajectory(method: str, path: PathLike, collapse_margin: float | None = None) -> Trajectory:
    """The snapshots of one trajectory run (``run_dir.read_run``); errors name the missing file.
    ``collapse_margin`` is config ``analysis.collapse_margin`` (None: the schema's)."""
    run = read_run(path, require=("snapshots",))
    iterations, theta = run.snapshots()
    margin = outcome.check_margin(outcome.default_margin() if collapse_margin is None else collapse_margin)
    return Trajectory(method=method, run=run, iterations=iterations, theta=theta, collapse_margin=margin)


def read_trajectories(run_dirs: Mapping[str, PathLike], collapse_margin: float | None = None) -> list[Trajectory]:
    """Read every method's run and check that they share the seed and the parameter layout."""
    if not run_dirs:
        raise ValueError("no trajectory runs given (config experiments.trajectory.conditions is empty)")
    trajectories = [read_trajectory(method, path, collapse_margin) for method, path in run_dirs.items()]
    seeds = {t.method: t.run.seed for t in trajectories}
    if len(set(seeds.values())) != 1:
        raise ValueError(f"trajectory runs must share one seed (same initial W, B, b), got {seeds}")
    sizes = {t.method: tuple(t.spec["sizes"]) for t in trajectories}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"trajectory runs must share the network sizes, got {sizes}")
    widths = {t.method: t.theta.shape[1] for t in trajectories}
    if len(set(widths.values())) != 1:
        raise ValueError(f"snapshots have different parameter counts {widths}")
    return trajectories


def trajectory_runs(run_dirs: Sequence[PathLike]) -> dict[str, str]:
    """``{condition: run directory}`` of the trajectory runs (``runs/trajectory/{condition}/seed{s}``)."""
    return {Path(path).parent.name: str(path) for path in run_dirs}


def unpack_theta(theta: np.ndarray | torch.Tensor, sizes: Sequence[int]) -> tuple[list, list]:
    """Split a flat theta into ``W`` (list of d, ``W[l]`` of shape (n_l, n_{l+1})) and ``b`` (``b[l-1]`` = b_l)."""
    theta = torch.as_tensor(theta)
    expected = theta_size(sizes)
    if theta.shape[-1] != expected:
        raise ValueError(f"theta has {theta.shape[-1]} entries, sizes {list(sizes)} need {expected}")
    blocks = {name: theta[start:start + int(np.prod(shape))].reshape(shape) for name, start, shape in theta_layout(sizes)}
    d = len(sizes) - 1
    return [blocks[f"W{l}"] for l in range(d)], [blocks[f"b{l}"] for l in range(1, d + 1)]


def feedback_reference(trajectory: Trajectory) -> np.ndarray | None:
    """Theta of B's reference point: the run's first snapshot with ``W_l`` := ``B_lᵀ`` for l = 1..d-1.

    None for runs whose rule does not use B (BP). ``B`` comes from the run's ``weights.npz``.
    """
    if trajectory.spec.get("rule") != "fa":
        return None
    B = trajectory.run.feedback_weights()
    reference = trajectory.theta[0].astype(np.float64).copy()
    for name, start, shape in theta_layout(trajectory.spec["sizes"]):
        if name.startswith("W") and int(name[1:]) >= 1:
            l = int(name[1:])
            reference[start:start + shape[0] * shape[1]] = B[l].T.reshape(-1)
    return reference


# ---------------------------------------------------------------------------------------------
# Loss landscape
# ---------------------------------------------------------------------------------------------


def summed_loss(theta: torch.Tensor, sizes: Sequence[int], activation: str, X: torch.Tensor,
                Y_star: torch.Tensor) -> float:
    """``loss = ½ Σ_ij (Y* − L_d)²_ij`` of the network whose weights are ``theta`` (method §1)."""
    W, b = unpack_theta(theta.to(X.dtype), sizes)
    d = len(W)
    net = network.Network(W=W, b=b, B=[None] * d, D=[None] * d, activation=activation)
    _, L = network.forward(net, X)
    return float(network.loss(network.output_error(Y_star, L[d])))


def landscape_data(trajectory: Trajectory, dataset_path: PathLike, subset: int | None,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Training inputs ``X`` (first ``subset`` images) and targets ``Y*`` from the run's code map.

    The code map is the one the run trained with in its first phase (``data.phase_codes`` with the
    run's seed and targets), after the run's label smoothing (method §2.3), the labels the true
    training labels.
    """
    prepared = data.load_prepared(dataset_path)
    n = len(prepared.y_train) if subset is None else min(int(subset), len(prepared.y_train))
    codes = data.phase_codes(trajectory.spec["targets"], trajectory.run.seed, 0).to(dtype)
    targets = data.smooth_targets(codes, float(trajectory.spec.get("label_smoothing", 0.0)))
    X = prepared.X_train[:n].to(dtype)
    Y_star = targets[prepared.y_train[:n]]
    return X, Y_star


def pca_landscape(run_dirs: Mapping[str, PathLike], dataset_path: PathLike, out_npz: PathLike,
                  out_json: PathLike, settings: Mapping | None = None, collapse_margin: float | None = None) -> dict:
    """Joint PCA of the trajectories with the loss landscape of the PC1–PC2 plane (method §8).

    ``run_dirs`` maps method (condition) -> trajectory run directory; ``dataset_path`` is the
    prepared dataset (``data/mnist15.npz``); ``settings`` is config ``embedding`` (pca_grid,
    pca_margin, landscape_train_subset). The grid spans the projected trajectories and reference
    points plus ``pca_margin`` of that range on every side. ``collapse_margin`` is config
    ``analysis.collapse_margin`` (None: the schema's).

    Writes ``out_npz`` with ``methods``, ``method_status`` (each run's outcome, ``completed``,
    ``diverged`` -- its snapshots stop where it did -- or ``collapsed``), ``point_method`` (index into
    methods), ``point_iteration``,
    ``points`` (N, 2), ``reference_labels``, ``reference_points`` (R, 2), ``grid_pc1`` (G,),
    ``grid_pc2`` (G,), ``loss`` (G, G; row i is ``grid_pc2[i]``), ``landscape_images`` (the number
    of training images the loss sums over), ``explained_variance_ratio`` (2,),
    ``components`` (2, P), ``mean`` (P,), and ``out_json`` with the settings, runs, seed,
    explained variance and code version. Returns the JSON dict.
    """
    from sklearn.decomposition import PCA

    s = PCASettings.from_dict(settings or {})
    started = time.perf_counter()
    trajectories = read_trajectories(run_dirs, collapse_margin)
    # Randomized SVD (seeded): the full protocol has ~8,000 snapshots of ~21,500 weights, where a
    # full SVD takes minutes; for the top 2 components both agree to float precision.
    theta = np.concatenate([t.theta for t in trajectories]).astype(np.float32)
    pca = PCA(n_components=2, svd_solver="randomized", random_state=PCA_SEED).fit(theta)
    points = pca.transform(theta).astype(np.float64)
    del theta
    point_method = np.concatenate([np.full(len(t.theta), i) for i, t in enumerate(trajectories)])
    point_iteration = np.concatenate([t.iterations for t in trajectories])

    references = [(f"B ({t.method})", ref) for t in trajectories if (ref := feedback_reference(t)) is not None]
    reference_points = (pca.transform(np.stack([r for _, r in references]).astype(np.float32)).astype(np.float64)
                        if references else np.zeros((0, 2)))

    extent = np.concatenate([points, reference_points])
    low, high = extent.min(axis=0), extent.max(axis=0)
    span = np.maximum(high - low, 1e-12)
    grid = [np.linspace(low[i] - s.pca_margin * span[i], high[i] + s.pca_margin * span[i], s.pca_grid)
            for i in range(2)]

    first = trajectories[0]
    smoothing = {t.method: t.spec.get("label_smoothing", 0.0) for t in trajectories}
    if len(set(smoothing.values())) != 1:
        raise ValueError(f"the loss landscape is one surface: the trajectory runs must share label_smoothing, "
                         f"got {smoothing}")
    sizes, activation = first.spec["sizes"], first.spec.get("activation", "tanh_relu")
    dtype = getattr(torch, first.spec.get("dtype", "float32"))
    X, Y_star = landscape_data(first, dataset_path, s.landscape_train_subset, dtype)
    loss = np.empty((s.pca_grid, s.pca_grid))
    for i, pc2 in enumerate(grid[1]):
        plane = np.stack([grid[0], np.full(s.pca_grid, pc2)], axis=1)
        thetas = torch.from_numpy(pca.inverse_transform(plane.astype(np.float32)))
        for j in range(s.pca_grid):
            loss[i, j] = summed_loss(thetas[j], sizes, activation, X, Y_star)

    out_npz, out_json = Path(out_npz), Path(out_json)
    artifacts.atomic_write_npz(
        out_npz,
        methods=np.array([t.method for t in trajectories]),
        method_status=np.array([t.status for t in trajectories]),
        point_method=point_method,
        point_iteration=point_iteration,
        points=points,
        reference_labels=np.array([label for label, _ in references], dtype=str),
        reference_points=reference_points,
        grid_pc1=grid[0],
        grid_pc2=grid[1],
        loss=loss,
        landscape_images=np.array(len(X)),
        explained_variance_ratio=pca.explained_variance_ratio_,
        components=pca.components_.astype(np.float32),
        mean=pca.mean_.astype(np.float32),
    )
    meta = {
        "what": "joint PCA (2 components) of the trajectory snapshots with the summed training loss "
                "on the PC1-PC2 plane (grid mapped back with inverse_transform)",
        "settings": asdict(s),
        "landscape_images": int(len(X)),
        "loss": "0.5 * sum over the subset of ||Y* - L_d||^2 (summed, not averaged)",
        "code_map": "data.phase_codes(targets, seed, phase=0) of the trajectory seed, after the runs' "
                    "label smoothing (data.smooth_targets)",
        "reference_points": "for each FA run: its first snapshot with W_l := B_l^T for l >= 1 "
                            "(W_0 and the biases stay at their initial values)",
        "methods": [t.method for t in trajectories],
        "runs": {t.method: str(t.path) for t in trajectories},
        "status": {t.method: t.status for t in trajectories},
        "collapse_margin": first.collapse_margin,
        "seed": first.run.seed,
        "snapshots": {t.method: int(len(t.theta)) for t in trajectories},
        "explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio_],
        "pca": {"svd_solver": "randomized", "random_state": PCA_SEED, "dtype": "float32"},
        "dataset": str(dataset_path),
        "seconds": time.perf_counter() - started,
        "code_version": artifacts.code_version(),
    }
    artifacts.atomic_write_json(out_json, meta)
    return meta


# ---------------------------------------------------------------------------------------------
# UMAP
# ---------------------------------------------------------------------------------------------


def subsample_indices(n: int, k: int) -> np.ndarray:
    """At most ``k`` indices of ``0..n-1`` evenly spaced in time, always the first and the last."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(int))


def umap_embedding(run_dirs: Mapping[str, PathLike], out_parquet: PathLike, out_json: PathLike,
                   settings: Mapping | None = None, collapse_margin: float | None = None) -> pd.DataFrame:
    """UMAP (2-D) of the trajectory snapshots of every method together (method §8).

    ``settings`` is config ``embedding.umap`` (n_neighbors, min_dist, seed, max_points). Each method
    keeps at most ``max_points / (number of methods)`` snapshots, evenly spaced in time (first and
    last always in). UMAP runs with ``random_state = seed`` (deterministic, single-threaded).
    Writes ``out_parquet`` (columns method, status -- the run's outcome, ``completed``, ``diverged``
    or ``collapsed``, with ``collapse_margin`` as in :func:`pca_landscape` --, iteration, umap_1,
    umap_2) and ``out_json``.
    """
    import umap

    s = UMAPSettings.from_dict(settings or {})
    started = time.perf_counter()
    trajectories = read_trajectories(run_dirs, collapse_margin)
    per_method = max(2, s.max_points // len(trajectories))
    kept = [subsample_indices(len(t.theta), per_method) for t in trajectories]
    theta = np.concatenate([t.theta[idx] for t, idx in zip(trajectories, kept)]).astype(np.float32)
    n_neighbors = min(s.n_neighbors, len(theta) - 1)
    reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=s.min_dist, random_state=s.seed,
                        n_jobs=1)
    embedded = reducer.fit_transform(theta)
    table = pd.DataFrame({
        "method": np.concatenate([[t.method] * len(idx) for t, idx in zip(trajectories, kept)]),
        "status": np.concatenate([[t.status] * len(idx) for t, idx in zip(trajectories, kept)]),
        "iteration": np.concatenate([t.iterations[idx] for t, idx in zip(trajectories, kept)]).astype("int64"),
        "umap_1": embedded[:, 0].astype(np.float64),
        "umap_2": embedded[:, 1].astype(np.float64),
    })
    artifacts.atomic_write_parquet(Path(out_parquet), table)
    meta = {
        "what": "UMAP (2-D) of the trajectory snapshots of all methods together",
        "settings": asdict(s),
        "n_neighbors_used": int(n_neighbors),
        "points_per_method": {t.method: int(len(idx)) for t, idx in zip(trajectories, kept)},
        "methods": [t.method for t in trajectories],
        "runs": {t.method: str(t.path) for t in trajectories},
        "status": {t.method: t.status for t in trajectories},
        "collapse_margin": trajectories[0].collapse_margin,
        "seed": s.seed,
        "run_seed": trajectories[0].run.seed,
        "seconds": time.perf_counter() - started,
        "code_version": artifacts.code_version(),
    }
    artifacts.atomic_write_json(Path(out_json), meta)
    return table
