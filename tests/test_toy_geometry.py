"""The toy Monte Carlo analyses (method §11.1, §11.2, §11.5) against independent computations."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from fa_analysis import toy_geometry as tg

TINY_MODES = {"a": [6, 5, 4, 8], "b": [3, 5, 4, 8]}
TERMS = {"modes": TINY_MODES, "samples": 300, "chunk": 128, "bins": 10, "seed": 1, "dtype": "float64"}
CASES = {
    "independent": {"signals": "normal", "same": "none"},
    "same_both": {"signals": "normal", "same": "both"},
}
DISTRIBUTIONS = {"sizes": [8, 7, 4, 6], "cases": CASES, "samples": 400, "chunk": 150, "seed": 2, "dtype": "float64"}
DEPTH = {"shapes": [5, 4, 6], "angles": [0, 30, 90], "samples_per_cell": 200, "mask_probability": 0.5,
         "chunk": 64, "seed": 3, "dtype": "float64"}


def _numpy_angle(A, C):
    """The angle in float64 as 2 atan2(|a - c|, |a + c|) of the unit vectors: exact near 0 and 180 too."""
    a, c = np.asarray(A, dtype=np.float64).ravel(), np.asarray(C, dtype=np.float64).ravel()
    a, c = a / np.linalg.norm(a), c / np.linalg.norm(c)
    return math.degrees(2 * math.atan2(np.linalg.norm(a - c), np.linalg.norm(a + c)))


@pytest.mark.parametrize("angle", [0.0, 1e-3, 17.5, 45.0, 89.0, 90.0])
def test_a_matrix_drawn_at_a_prescribed_angle_has_that_angle(angle):
    generator = torch.Generator().manual_seed(0)
    A = torch.randn((50, 7, 9), generator=generator, dtype=torch.float64)
    C = tg.at_angle(A, angle, generator)
    for a, c in zip(A, C):
        assert _numpy_angle(a, c) == pytest.approx(angle, abs=1e-6)
    assert torch.allclose(C.reshape(50, -1).norm(dim=1), A.reshape(50, -1).norm(dim=1))
    if 0 < angle < 90:  # random on the cone, not one fixed matrix per A
        assert _numpy_angle(C[0] - A[0], tg.at_angle(A, angle, generator)[0] - A[0]) > 1.0


def test_linear_term_M_equals_the_sum_over_examples_in_either_order():
    generator = torch.Generator().manual_seed(4)
    for n_b, n_i, n_o in [(3, 9, 5), (9, 3, 5), (20, 30, 2)]:
        X1, X2 = (torch.randn((2, n_b, n_i), generator=generator, dtype=torch.float64) for _ in range(2))
        E1, E2 = (torch.randn((2, n_b, n_o), generator=generator, dtype=torch.float64) for _ in range(2))
        M = tg.linear_term_M(X1, E1, X2, E2).numpy()
        x1, x2, e1, e2 = (t.numpy() for t in (X1, X2, E1, E2))
        for s in range(2):  # M_pq = sum_{a,b,i} E1[a,p] X1[a,i] X2[b,i] E2[b,q], written out
            brute = np.zeros((n_o, n_o))
            for a in range(n_b):
                for b in range(n_b):
                    brute += np.outer(e1[s, a], e2[s, b]) * (x1[s, a] @ x2[s, b])
            np.testing.assert_allclose(M[s], brute, rtol=1e-12, atol=1e-12)


def test_term_angle_is_the_angle_of_Bt_M_and_Bt():
    generator = torch.Generator().manual_seed(5)
    B = torch.randn((4, 3, 6), generator=generator, dtype=torch.float64)
    M = torch.randn((4, 3, 3), generator=generator, dtype=torch.float64)
    angles = tg.term_angles(B, M)
    for s in range(4):
        Bt = B[s].numpy().T
        assert angles[s].item() == pytest.approx(_numpy_angle(Bt @ M[s].numpy(), Bt), abs=1e-10)
    skew = M - M.mT  # <B^T, B^T K> = tr(B B^T K) = 0 for a skew K
    np.testing.assert_allclose(tg.term_angles(B, skew).numpy(), 90.0, atol=1e-9)


def test_identical_data_gives_a_psd_M_so_every_angle_is_below_90():
    frame = tg.run_distributions(DISTRIBUTIONS)
    same = frame[frame["case"] == "same_both"]["angle"]
    assert len(same) == 400 and (same < 90.0).all()
    angles, spectrum = tg.run_term_geometry(TERMS)
    assert (angles["angle"] < 90.0).all()
    # every eigenvalue counted once: samples * n_o of them per mode and input
    counts = spectrum.groupby(["mode", "input"]).apply(lambda g: g["count"].sum() + g["n_above"].iloc[0])
    assert (counts == 300 * 4).all()
    assert dict(spectrum.groupby("mode")["rank"].first()) == {"a": 4, "b": 3}


def test_independent_signals_give_a_mean_angle_of_90_within_its_standard_error():
    frame = tg.run_distributions({**DISTRIBUTIONS, "samples": 4000, "chunk": 1000})
    angles = frame[frame["case"] == "independent"]["angle"].to_numpy()
    sem = angles.std(ddof=1) / math.sqrt(angles.size)
    assert abs(angles.mean() - 90.0) < 3.5 * sem
    assert angles.min() < 90.0 < angles.max()


def test_monte_carlo_standard_error_falls_as_one_over_root_n():
    """The spread of the mean angle over independent seeds, at n and at 16 n samples: a ratio near 4."""
    def spread(samples):
        means = [
            tg.run_distributions({**DISTRIBUTIONS, "cases": {"independent": CASES["independent"]},
                                  "samples": samples, "chunk": samples, "seed": seed})["angle"].mean()
            for seed in range(30)
        ]
        return np.std(means, ddof=1)

    ratio = spread(25) / spread(400)
    assert 2.5 < ratio < 6.4  # 4 for 1/sqrt(n); the bounds hold the sampling error of 30 means


def test_cases_draw_what_they_say():
    generator = torch.Generator().manual_seed(6)
    sizes = (5, 4, 3, 200)
    X1, E1, X2, E2, B = tg.draw_case(tg.SignalCase(same="error", mean=0.5, b_mean=0.5), sizes, 50, generator,
                                     torch.float64)
    assert torch.equal(E1, E2) and not torch.equal(X1, X2)
    assert abs(X1.mean().item() - 0.5) < 0.02 and abs(B.mean().item() - 0.5) < 0.1
    X1, E1, X2, E2, _ = tg.draw_case(tg.SignalCase(signals="uniform", same="both"), sizes, 50, generator,
                                     torch.float64)
    assert X1 is X2 and E1 is E2 and 0 <= X1.min() and X1.max() <= 1
    X1, E1, *_ = tg.draw_case(tg.SignalCase(signals="ones"), sizes, 2, generator, torch.float64)
    assert (X1 == 1).all() and (E1 == 1).all()


def test_depth_products_match_a_plain_masked_product_and_their_limits():
    frame = tg.run_depth(DEPTH)
    cell = frame.set_index(["product", "angle_A_C", "angle_B_D"])
    assert cell.loc[("linear", 0.0, 0.0), "mean"] == pytest.approx(0.0, abs=1e-5)
    assert cell.loc[("linear", 90.0, 90.0), "mean"] == pytest.approx(90.0, abs=4 * cell.loc[("linear", 90.0, 90.0), "sem"])
    # a product is never better aligned than its factors: here angle(AB, CD) >= 30 where both are 30
    assert cell.loc[("linear", 30.0, 30.0), "q05"] > 30.0
    linear = frame["product"] == "linear"
    assert (frame.loc[linear, "n"] == 200).all()
    # a mask with every unit off (1/16 here) leaves a zero product, which has no angle and is left out
    assert frame.loc[~linear, "n"].between(160, 200).all() and (frame.loc[~linear, "n"] < 200).any()
    generator = torch.Generator().manual_seed(7)
    A, C = (torch.randn((3, 5, 4), generator=generator, dtype=torch.float64) for _ in range(2))
    B, D = (torch.randn((3, 4, 6), generator=generator, dtype=torch.float64) for _ in range(2))
    mask = torch.tensor([[1.0, 0, 1, 1], [0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float64)
    angles = tg.product_angles(A, B, C, D, mask)
    for s in range(3):
        m = np.diag(mask[s].numpy())
        expected = _numpy_angle(A[s].numpy() @ m @ B[s].numpy(), C[s].numpy() @ m @ D[s].numpy())
        assert angles[s].item() == pytest.approx(expected, abs=1e-10)


def test_the_same_seed_gives_the_same_tables_and_a_new_mode_leaves_the_others_alone():
    first, _ = tg.run_term_geometry(TERMS)
    again, _ = tg.run_term_geometry(TERMS)
    pd.testing.assert_frame_equal(first, again)
    more, _ = tg.run_term_geometry({**TERMS, "modes": {"c": [4, 4, 4, 4], **TINY_MODES}})
    pd.testing.assert_frame_equal(first, more[more["mode"] != "c"].reset_index(drop=True))
    other, _ = tg.run_term_geometry({**TERMS, "seed": 2})
    assert not np.allclose(first["angle"], other["angle"])
    pd.testing.assert_frame_equal(tg.run_depth(DEPTH), tg.run_depth(DEPTH))


@pytest.mark.parametrize(
    "make, change, key",
    [
        (tg.TermGeometrySettings, {"samples": 0}, "toy.term_geometry.samples"),
        (tg.TermGeometrySettings, {"modes": {"a": [1, 2, 3]}}, "toy.term_geometry.modes.a"),
        (tg.TermGeometrySettings, {"dtype": "float16"}, "toy.term_geometry.dtype"),
        (tg.DistributionSettings, {"cases": {"x": {"signals": "cauchy"}}}, "toy.distributions.cases.x.signals"),
        (tg.DistributionSettings, {"cases": {"x": {"signals": "ones", "mean": 1.0}}}, "toy.distributions.cases.x"),
        (tg.DistributionSettings, {"cases": {"x": {"same": "input"}}}, "toy.distributions.cases.x.same"),
        (tg.DepthSettings, {"angles": [0, 120]}, "toy.depth.angles"),
        (tg.DepthSettings, {"mask_probability": 0.0}, "toy.depth.mask_probability"),
    ],
)
def test_bad_settings_name_the_key(make, change, key):
    base = {tg.TermGeometrySettings: TERMS, tg.DistributionSettings: DISTRIBUTIONS, tg.DepthSettings: DEPTH}[make]
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        make.from_dict({**base, **change})


def test_jobs_write_a_table_and_its_description(tmp_path):
    import json

    tg.depth_job(DEPTH, tmp_path / "toy" / "depth.parquet")
    table = pd.read_parquet(tmp_path / "toy" / "depth.parquet")
    meta = json.loads((tmp_path / "toy" / "depth.json").read_text())
    assert meta["experiment"] == "depth" and meta["settings"]["angles"] == [0, 30, 90]
    assert meta["columns"] == list(table.columns) and len(table) == 2 * 9


def test_toy_figures_draw_from_the_jobs_tables(tmp_path):
    from fa_analysis import figures

    toy = tmp_path / "toy"
    tg.term_geometry_job(TERMS, toy / "term_geometry.parquet", toy / "term_spectrum.parquet")
    tg.distributions_job(DISTRIBUTIONS, toy / "distributions.parquet")
    tg.depth_job(DEPTH, toy / "depth.parquet")
    drawn = [
        figures.plot_toy_term_geometry({"angles": toy / "term_geometry.parquet"}, tmp_path / "f" / "a"),
        figures.plot_toy_term_spectrum({"spectrum": toy / "term_spectrum.parquet"}, tmp_path / "f" / "b"),
        figures.plot_toy_distributions({"distributions": toy / "distributions.parquet"}, tmp_path / "f" / "c"),
        figures.plot_toy_depth({"depth": toy / "depth.parquet"}, tmp_path / "f" / "d"),
    ]
    for paths in drawn:
        assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in paths)


def test_load_results_reads_the_toy_tables(tmp_path):
    import fa_analysis

    tg.depth_job(DEPTH, tmp_path / "toy" / "depth.parquet")
    results = fa_analysis.load_results(tmp_path)
    assert results.toy() == ["depth"]
    pd.testing.assert_frame_equal(results.toy("depth"), pd.read_parquet(tmp_path / "toy" / "depth.parquet"))
    with pytest.raises(LookupError, match="toy rules"):
        results.toy("distributions")
