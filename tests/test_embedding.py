"""Weight-trajectory embeddings (method §8) on small synthetic trajectories (no MNIST)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fa_analysis import data, embedding, figures

SIZES = [6, 4, 4, 10]  # one_hot targets: 10 outputs
N_IMAGES = 40


def _forward_loss_numpy(theta, X, Y_star):
    """½ Σ (Y* − L_d)² with f = tanh(relu(·)), written out independently of the package."""
    W, b, start = [], [], 0
    for n_in, n_out in zip(SIZES[:-1], SIZES[1:]):
        W.append(theta[start:start + n_in * n_out].reshape(n_in, n_out))
        start += n_in * n_out
    for n in SIZES[1:]:
        b.append(theta[start:start + n])
        start += n
    L = X
    for W_l, b_l in zip(W, b):
        L = np.tanh(np.maximum(L @ W_l + b_l, 0.0))
    return 0.5 * np.sum((Y_star - L) ** 2)


def _write_dataset(path, rng):
    X = rng.uniform(0, 1, (N_IMAGES, SIZES[0])).astype(np.float32)
    y = rng.integers(0, 10, N_IMAGES)
    meta = json.dumps({"format": data.PREPARED_FORMAT})
    np.savez(path, X_train=X, y_train=y, X_test=X[:5], y_test=y[:5], metadata=np.array(meta))
    return X.astype(np.float64), y


def _write_trajectory(root, method, rule, theta0, u, v, rng, seed=0, snapshots=30, status="completed",
                      test_accuracy=(0.1, 0.6, 0.8, 0.85)):
    """Snapshots theta0 + a(t) u + c(t) v: every method moves inside one 2-D affine plane; the
    evaluation table has the accuracies ``test_accuracy``, one per epoch."""
    run_dir = root / method
    run_dir.mkdir(parents=True)
    t = np.linspace(0, 1, snapshots)
    a, c = rng.uniform(0.5, 2) * t, rng.uniform(-1, 1) * t ** 2
    theta = (theta0 + a[:, None] * u + c[:, None] * v).astype(np.float32)
    np.savez(run_dir / "snapshots.npz", iterations=np.arange(snapshots) * 3, theta=theta,
             shapes=np.array(json.dumps({"W": [[a, b] for a, b in zip(SIZES[:-1], SIZES[1:])],
                                         "b": [[n] for n in SIZES[1:]]})))
    B = {f"B{l}": rng.normal(0, 0.1, (SIZES[l + 1], SIZES[l])) for l in range(1, len(SIZES) - 1)}
    np.savez(run_dir / "weights.npz", **B)
    epochs = np.arange(len(test_accuracy))
    pd.DataFrame({"epoch": epochs, "iteration": 30 * epochs, "phase": 0, "test_accuracy": test_accuracy,
                  "test_loss": 1.0}).to_parquet(run_dir / "evaluation.parquet")
    spec = {"experiment": "trajectory", "condition": method, "seed": seed, "sizes": SIZES, "rule": rule,
            "activation": "tanh_relu", "targets": "one_hot", "dtype": "float64"}
    (run_dir / "run.json").write_text(json.dumps({"spec": spec, "seed": seed, "status": status}))
    return run_dir


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory):
    root = tmp_path_factory.mktemp("trajectory")
    rng = np.random.default_rng(3)
    P = sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:])) + sum(SIZES[1:])
    theta0 = rng.normal(0, 0.3, P)
    u, v = rng.normal(0, 0.3, P), rng.normal(0, 0.3, P)
    runs = {method: _write_trajectory(root, method, rule, theta0, u, v, rng)
            for method, rule in (("bp", "bp"), ("fa", "fa"), ("fa_wn", "fa"))}
    X, y = _write_dataset(root / "mnist15.npz", rng)
    settings = {"pca_grid": 5, "pca_margin": 0.2, "landscape_train_subset": 30}
    meta = embedding.pca_landscape(runs, root / "mnist15.npz", root / "pca.npz", root / "pca.json", settings)
    with np.load(root / "pca.npz") as npz:
        result = {name: npz[name] for name in npz.files}
    return {"root": root, "runs": runs, "X": X, "y": y, "meta": meta, "pca": result}


def test_joint_pca_of_planar_trajectories_keeps_their_geometry(trajectories):
    pca = trajectories["pca"]
    assert pca["explained_variance_ratio"].sum() == pytest.approx(1.0, abs=1e-6)
    snapshots = np.concatenate([np.load(r / "snapshots.npz")["theta"] for r in trajectories["runs"].values()])
    points = pca["points"]
    assert len(points) == len(snapshots) == 90
    # the snapshots lie in a plane: the projection preserves every distance
    for i, j in [(0, 29), (5, 60), (31, 89)]:
        assert np.linalg.norm(points[i] - points[j]) == pytest.approx(
            np.linalg.norm(snapshots[i].astype(np.float64) - snapshots[j]), rel=1e-4)
    assert list(pca["methods"]) == ["bp", "fa", "fa_wn"]
    assert np.bincount(pca["point_method"]).tolist() == [30, 30, 30]


def test_landscape_is_the_summed_training_loss_at_the_mapped_back_weights(trajectories):
    pca, X, y = trajectories["pca"], trajectories["X"], trajectories["y"]
    Y_star = np.eye(10)[y[:30]]  # one_hot code map, training subset of 30 images
    for i, j in [(0, 0), (2, 3), (4, 4)]:
        theta = (pca["mean"].astype(np.float64) + pca["grid_pc1"][j] * pca["components"][0]
                 + pca["grid_pc2"][i] * pca["components"][1])
        assert pca["loss"][i, j] == pytest.approx(_forward_loss_numpy(theta, X[:30], Y_star), rel=1e-4)


def test_grid_spans_trajectories_and_references_with_margin(trajectories):
    pca = trajectories["pca"]
    extent = np.concatenate([pca["points"], pca["reference_points"]])
    for axis, grid in enumerate((pca["grid_pc1"], pca["grid_pc2"])):
        low, high = extent[:, axis].min(), extent[:, axis].max()
        assert grid[0] == pytest.approx(low - 0.2 * (high - low))
        assert grid[-1] == pytest.approx(high + 0.2 * (high - low))
        assert len(grid) == 5


def test_feedback_reference_replaces_W_l_by_B_l_transposed(trajectories):
    pca, runs = trajectories["pca"], trajectories["runs"]
    assert list(pca["reference_labels"]) == ["B (fa)", "B (fa_wn)"]  # BP uses no B
    theta = np.load(runs["fa"] / "snapshots.npz")["theta"][0].astype(np.float64)
    with np.load(runs["fa"] / "weights.npz") as w:
        reference = theta.copy()
        start = SIZES[0] * SIZES[1]  # W_0 stays
        for l in (1, 2):
            size = SIZES[l] * SIZES[l + 1]
            reference[start:start + size] = w[f"B{l}"].T.ravel()
            start += size
    expected = (reference - pca["mean"]) @ pca["components"].astype(np.float64).T
    np.testing.assert_allclose(pca["reference_points"][0], expected, rtol=1e-4, atol=1e-4)


def test_pca_json_records_settings_seed_and_variance(trajectories):
    meta = json.loads((trajectories["root"] / "pca.json").read_text())
    assert meta["settings"] == {"pca_grid": 5, "pca_margin": 0.2, "landscape_train_subset": 30}
    assert meta["seed"] == 0 and meta["landscape_images"] == 30
    assert meta["explained_variance_ratio"] == pytest.approx(list(trajectories["pca"]["explained_variance_ratio"]))
    assert meta["code_version"]


def test_summed_loss_matches_an_independent_forward_pass():
    rng = np.random.default_rng(5)
    P = sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:])) + sum(SIZES[1:])
    theta, X = rng.normal(0, 0.5, P), rng.uniform(0, 1, (7, SIZES[0]))
    Y_star = np.eye(10)[rng.integers(0, 10, 7)]
    got = embedding.summed_loss(torch.from_numpy(theta), SIZES, "tanh_relu", torch.from_numpy(X),
                                torch.from_numpy(Y_star))
    assert got == pytest.approx(_forward_loss_numpy(theta, X, Y_star), rel=1e-12)


def test_trajectories_with_different_seeds_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    P = sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:])) + sum(SIZES[1:])
    zeros = np.zeros(P)
    runs = {"bp": _write_trajectory(tmp_path, "bp", "bp", zeros, zeros + 1, zeros, rng, seed=0),
            "fa": _write_trajectory(tmp_path, "fa", "fa", zeros, zeros + 1, zeros, rng, seed=1)}
    with pytest.raises(ValueError, match="share one seed"):
        embedding.read_trajectories(runs)


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="embedding.pca_grid"):
        embedding.PCASettings.from_dict({"pca_grid": 1})
    with pytest.raises(ValueError, match="embedding.umap has unknown keys"):
        embedding.UMAPSettings.from_dict({"n_neighbours": 5})


def test_subsample_keeps_first_and_last_evenly():
    idx = embedding.subsample_indices(1000, 11)
    assert idx[0] == 0 and idx[-1] == 999 and len(idx) == 11
    assert np.ptp(np.diff(idx)) <= 1  # evenly spaced up to rounding
    assert list(embedding.subsample_indices(5, 10)) == [0, 1, 2, 3, 4]


def test_umap_is_seeded_and_subsampled(trajectories):
    root, runs = trajectories["root"], trajectories["runs"]
    settings = {"n_neighbors": 10, "min_dist": 0.3, "seed": 0, "max_points": 60}
    table = embedding.umap_embedding(runs, root / "umap.parquet", root / "umap.json", settings)
    again = embedding.umap_embedding(runs, root / "umap2.parquet", root / "umap2.json", settings)
    assert list(table.columns) == ["method", "status", "iteration", "umap_1", "umap_2"]
    assert table.groupby("method").size().to_dict() == {"bp": 20, "fa": 20, "fa_wn": 20}
    assert table.groupby("method")["iteration"].agg(["min", "max"]).values.tolist() == [[0, 87]] * 3
    np.testing.assert_array_equal(table[["umap_1", "umap_2"]].to_numpy(), again[["umap_1", "umap_2"]].to_numpy())
    assert np.isfinite(table[["umap_1", "umap_2"]].to_numpy()).all()
    meta = json.loads((root / "umap.json").read_text())
    assert meta["settings"]["seed"] == 0 and meta["points_per_method"] == {"bp": 20, "fa": 20, "fa_wn": 20}


def test_trajectory_figures_write_png_and_pdf(trajectories, tmp_path):
    root = trajectories["root"]
    if not (root / "umap.parquet").exists():
        pd.DataFrame({"method": ["bp", "bp", "fa", "fa"], "status": "completed", "iteration": [0, 3, 0, 3],
                      "umap_1": [0.0, 1, 0, -1], "umap_2": [0.0, 1, 1, 2]}).to_parquet(root / "umap.parquet")
    for paths in (figures.plot_trajectory_pca(root / "pca.npz", tmp_path / "trajectory_pca"),
                  figures.plot_trajectory_umap(root / "umap.parquet", tmp_path / "trajectory_umap")):
        png, pdf = paths
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000


def test_a_diverged_trajectory_is_named_in_the_legends(tmp_path, monkeypatch):
    """Its snapshots stop where it diverged; the legends say why its trajectory is short."""
    rng = np.random.default_rng(4)
    P = sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:])) + sum(SIZES[1:])
    theta0, u, v = (rng.normal(0, 0.3, P) for _ in range(3))
    runs = {"bp": _write_trajectory(tmp_path, "bp", "bp", theta0, u, v, rng),
            "fa": _write_trajectory(tmp_path, "fa", "fa", theta0, u, v, rng, snapshots=2, status="diverged")}
    _write_dataset(tmp_path / "mnist15.npz", rng)
    embedding.pca_landscape(runs, tmp_path / "mnist15.npz", tmp_path / "pca.npz", tmp_path / "pca.json",
                            {"pca_grid": 3, "pca_margin": 0.2, "landscape_train_subset": 30})
    embedding.umap_embedding(runs, tmp_path / "umap.parquet", tmp_path / "umap.json",
                             {"n_neighbors": 5, "min_dist": 0.3, "seed": 0, "max_points": 40})
    drawn = []
    monkeypatch.setattr(figures.style, "save_figure", lambda fig, stem, formats: drawn.append(fig))
    figures.plot_trajectory_pca(tmp_path / "pca.npz", tmp_path / "pca")
    figures.plot_trajectory_umap(tmp_path / "umap.parquet", tmp_path / "umap")
    for fig in drawn:
        legend = fig.legends[0] if fig.legends else fig.axes[0].get_legend()
        labels = [text.get_text() for text in legend.get_texts()]
        assert "FA (its run diverged)" in labels and "BP" in labels


def test_a_collapsed_trajectory_is_labelled_so_in_both_embeddings_and_their_legends(tmp_path, monkeypatch):
    """A run that finished far below its own best carries ``collapsed`` with the configured margin."""
    rng = np.random.default_rng(5)
    P = sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:])) + sum(SIZES[1:])
    theta0, u, v = (rng.normal(0, 0.3, P) for _ in range(3))
    runs = {"bp": _write_trajectory(tmp_path, "bp", "bp", theta0, u, v, rng),
            "bp_wn": _write_trajectory(tmp_path, "bp_wn", "bp", theta0, u, v, rng,
                                       test_accuracy=(0.1, 0.959, 0.6, 0.097))}
    _write_dataset(tmp_path / "mnist15.npz", rng)
    for margin, expected in ((0.1, ["completed", "collapsed"]), (0.9, ["completed", "completed"])):
        embedding.pca_landscape(runs, tmp_path / "mnist15.npz", tmp_path / "pca.npz", tmp_path / "pca.json",
                                {"pca_grid": 3, "pca_margin": 0.2, "landscape_train_subset": 30}, margin)
        table = embedding.umap_embedding(runs, tmp_path / "umap.parquet", tmp_path / "umap.json",
                                         {"n_neighbors": 5, "min_dist": 0.3, "seed": 0, "max_points": 40}, margin)
        with np.load(tmp_path / "pca.npz") as npz:
            assert list(npz["methods"]) == ["bp", "bp_wn"] and list(npz["method_status"]) == expected
        assert table.groupby("method")["status"].first().tolist() == expected
        assert json.loads((tmp_path / "umap.json").read_text())["collapse_margin"] == margin
    embedding.pca_landscape(runs, tmp_path / "mnist15.npz", tmp_path / "pca.npz", tmp_path / "pca.json",
                            {"pca_grid": 3, "pca_margin": 0.2, "landscape_train_subset": 30}, 0.1)
    embedding.umap_embedding(runs, tmp_path / "umap.parquet", tmp_path / "umap.json",
                             {"n_neighbors": 5, "min_dist": 0.3, "seed": 0, "max_points": 40}, 0.1)
    drawn = []
    monkeypatch.setattr(figures.style, "save_figure", lambda fig, stem, formats: drawn.append(fig))
    figures.plot_trajectory_pca(tmp_path / "pca.npz", tmp_path / "pca")
    figures.plot_trajectory_umap(tmp_path / "umap.parquet", tmp_path / "umap")
    collapsed = f"{figures.style.condition_label('bp_wn')} (its run collapsed)"
    for fig in drawn:
        legend = fig.legends[0] if fig.legends else fig.axes[0].get_legend()
        labels = [text.get_text() for text in legend.get_texts()]
        assert collapsed in labels and figures.style.condition_label("bp") in labels


def test_the_landscape_loss_takes_the_runs_smoothed_targets(tmp_path):
    """A run trained on y (1 - s) + s (method §2.3): its landscape is the loss against those targets."""
    rng = np.random.default_rng(6)
    P = sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:])) + sum(SIZES[1:])
    run_dir = _write_trajectory(tmp_path, "fa", "fa", *(rng.normal(0, 0.3, P) for _ in range(3)), rng)
    info = json.loads((run_dir / "run.json").read_text())
    info["spec"]["label_smoothing"] = 0.2
    (run_dir / "run.json").write_text(json.dumps(info))
    _, y = _write_dataset(tmp_path / "mnist15.npz", rng)
    X, Y_star = embedding.landscape_data(embedding.read_trajectory("fa", run_dir), tmp_path / "mnist15.npz", 30,
                                         torch.float64)
    np.testing.assert_array_equal(Y_star.numpy(), 0.8 * np.eye(10)[y[:30]] + 0.2)
