"""Weight normalisation and IBN (method §3)."""

import pytest
import torch

from fa_analysis.network import init_network
from fa_analysis.normalization import normalize_columns_, unit_columns_


def _net():
    return init_network([9, 7, 5, 3], 0.3, seed=4, dtype=torch.float64)


def test_wn_sets_every_column_norm_to_gamma_in_every_layer():
    net = _net()
    normalize_columns_(net.W, 0.6)
    for W in net.W:
        torch.testing.assert_close(torch.linalg.vector_norm(W, dim=0), torch.full((W.shape[1],), 0.6, dtype=W.dtype))


def test_wn_keeps_column_directions_and_works_in_place():
    W = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    before = W.clone()
    same_storage = W.data_ptr()
    normalize_columns_(W, 2.0)
    assert W.data_ptr() == same_storage
    torch.testing.assert_close(W, 2.0 * before / before.norm(dim=0, keepdim=True))


def test_wn_leaves_rows_alone_a_transposed_normalisation_would_fail():
    W = torch.tensor([[3.0, 0.0], [4.0, 1.0]], dtype=torch.float64)
    normalize_columns_(W, 1.0)
    torch.testing.assert_close(W, torch.tensor([[0.6, 0.0], [0.8, 1.0]], dtype=torch.float64))


def test_wn_of_a_stack_normalises_each_matrix_of_it_like_one_matrix():
    g = torch.Generator().manual_seed(3)
    stack = torch.randn(4, 6, 5, dtype=torch.float64, generator=g)
    one_by_one = [W.clone() for W in stack]
    normalize_columns_(stack, 0.7)
    normalize_columns_(one_by_one, 0.7)
    torch.testing.assert_close(stack, torch.stack(one_by_one), rtol=0, atol=0)
    torch.testing.assert_close(stack.norm(dim=1), torch.full((4, 5), 0.7, dtype=torch.float64))


def test_ibn_gives_unit_B_columns_and_skips_B0():
    net = _net()
    unit_columns_(net.B)
    assert net.B[0] is None
    for B in net.B[1:]:
        torch.testing.assert_close(torch.linalg.vector_norm(B, dim=0), torch.ones(B.shape[1], dtype=B.dtype))


def test_wn_does_not_touch_biases_or_B():
    net = _net()
    b_before = [b.clone() for b in net.b]
    B_before = [B.clone() for B in net.B[1:]]
    normalize_columns_(net.W, 1.0)
    assert all(torch.equal(x, y) for x, y in zip(net.b, b_before))
    assert all(torch.equal(x, y) for x, y in zip(net.B[1:], B_before))


def test_gamma_must_be_positive():
    with pytest.raises(ValueError, match="gamma"):
        normalize_columns_(torch.ones(2, 2), 0.0)
