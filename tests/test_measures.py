"""Angles between matrices (method §1 and §5)."""

import math

import numpy as np
import pytest
import torch

from fa_analysis.measures import angle_deg, angle_deg_arrays, angle_deg_batched, angle_deg_concat, angle_from_products


def _rand(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_angle_with_itself_is_0_and_with_its_negative_180():
    A = _rand(5, 3)
    assert angle_deg(A, A).item() == pytest.approx(0.0, abs=1e-5)
    assert angle_deg(A, -A).item() == pytest.approx(180.0, abs=1e-5)
    assert angle_deg(A, 3.7 * A).item() == pytest.approx(0.0, abs=1e-5)


def test_orthogonal_matrices_are_at_90():
    A = torch.tensor([[1.0, 2.0], [0.0, -1.0]], dtype=torch.float64)
    C = torch.tensor([[2.0, -1.0], [5.0, 0.0]], dtype=torch.float64)  # <A, C>_F = 2 - 2 + 0 + 0 = 0
    assert angle_deg(A, C).item() == pytest.approx(90.0, abs=1e-9)


def test_known_angle_of_45_degrees():
    A = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    C = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    assert angle_deg(A, C).item() == pytest.approx(45.0, abs=1e-9)


def test_transpose_is_explicit_for_a_nonsymmetric_square_matrix():
    W = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    # <W, W^T>_F = 1*1 + 2*0 + 0*2 + 1*1 = 2 and ||W||_F^2 = 6, so the angle is arccos(1/3)
    assert angle_deg(W, W.T).item() == pytest.approx(math.degrees(math.acos(1.0 / 3.0)), abs=1e-9)
    assert angle_deg(W, W).item() == pytest.approx(0.0, abs=1e-5)


def test_shapes_must_agree_no_transpose_is_guessed():
    with pytest.raises(ValueError, match="B_l.T"):
        angle_deg(_rand(3, 2), _rand(2, 3))


def test_batched_and_concat_forms_agree_with_the_plain_one():
    A, C = _rand(4, 6, 5, seed=1), _rand(4, 6, 5, seed=2)
    batched = angle_deg_batched(A, C)
    assert batched.shape == (4,)
    for i in range(4):
        assert batched[i].item() == pytest.approx(angle_deg(A[i], C[i]).item(), abs=1e-9)
    As, Cs = [_rand(3, 4, seed=3), _rand(2, 2, seed=4)], [_rand(3, 4, seed=5), _rand(2, 2, seed=6)]
    flat_a = torch.cat([x.reshape(-1) for x in As])
    flat_c = torch.cat([x.reshape(-1) for x in Cs])
    assert angle_deg_concat(As, Cs).item() == pytest.approx(angle_deg(flat_a, flat_c).item(), abs=1e-9)


def test_angle_from_products_clamps_round_off_and_flags_zero_matrices():
    # a cosine a hair above 1 (round-off) must give 0, not NaN
    assert angle_from_products(torch.tensor(1.0 + 1e-12), torch.tensor(1.0), torch.tensor(1.0)).item() == 0.0
    zero = angle_deg(torch.zeros(2, 2), torch.ones(2, 2))
    assert math.isnan(zero.item())


def test_numpy_form_equals_the_torch_form():
    """``angle_deg_arrays`` (readers of stored weights, no torch) gives the torch functions' angle."""
    As = [_rand(50, 50, seed=s) for s in range(3)] + [_rand(225, 50, seed=9)]
    Cs = [(0.3 * A + _rand(*A.shape, seed=20 + i)).T.contiguous().T for i, A in enumerate(As)]
    for A, C in zip(As, Cs):
        assert angle_deg_arrays([A.numpy()], [C.numpy()]) == pytest.approx(angle_deg(A, C).item(), abs=1e-12)
    assert angle_deg_arrays([A.numpy() for A in As], [C.numpy() for C in Cs]) == pytest.approx(
        angle_deg_concat(As, Cs).item(), abs=1e-12)
    # float32 input is taken in float64, as the aggregation reads the weights a float32 run wrote
    A32, C32 = As[0].float(), Cs[0].float()
    assert angle_deg_arrays([A32.numpy()], [C32.numpy()]) == pytest.approx(angle_deg(A32.double(), C32.double()).item(), abs=1e-12)
    assert math.isnan(angle_deg_arrays([np.zeros((3, 2))], [np.ones((3, 2))]))
    with pytest.raises(ValueError, match="same shape"):
        angle_deg_arrays([np.ones((3, 2))], [np.ones((2, 3))])
