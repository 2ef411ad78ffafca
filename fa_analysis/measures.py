"""Angles between matrices (method §1 and §5).

``angle(A, C) = arccos(<A, C>_F / (||A||_F ||C||_F))`` in degrees, on flattened matrices.
Orientation is always explicit: the FA measure is ``angle_deg(W_l, B_l.T)``; matrices of
different shapes are an error, never transposed on a guess (hidden layers are square).
The cosine is clamped to [-1, 1] and the arccos taken in float64; a zero matrix has no
direction, so its angle is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def angle_from_products(inner: Tensor, norm_sq_A: Tensor, norm_sq_C: Tensor) -> Tensor:
    """Angles in degrees from ``<A, C>_F``, ``||A||_F^2`` and ``||C||_F^2`` (elementwise, any shape).

    The batched form: the training loop records these Frobenius products for every layer
    and iteration and converts them all at once.
    """
    inner, norm_sq_A, norm_sq_C = (t.to(torch.float64) for t in (inner, norm_sq_A, norm_sq_C))
    cos = inner / torch.sqrt(norm_sq_A * norm_sq_C)
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def _check_same_shape(A: Tensor, C: Tensor, where: str) -> None:
    if A.shape != C.shape:
        raise ValueError(
            f"{where} needs matrices of the same shape, got {tuple(A.shape)} and {tuple(C.shape)}; "
            "pass the orientation explicitly, e.g. angle_deg(W_l, B_l.T)"
        )


def angle_deg(A: Tensor, C: Tensor) -> Tensor:
    """``arccos(<A, C>_F / (||A||_F ||C||_F))`` in degrees (a 0-dim float64 tensor)."""
    _check_same_shape(A, C, "angle_deg")
    a, c = A.reshape(-1), C.reshape(-1)
    return angle_from_products(torch.dot(a, c), torch.dot(a, a), torch.dot(c, c))


def angle_deg_batched(A: Tensor, C: Tensor) -> Tensor:
    """Angles between ``A[i]`` and ``C[i]`` for stacks of shape ``(m, ...)``: a ``(m,)`` tensor."""
    _check_same_shape(A, C, "angle_deg_batched")
    a, c = A.reshape(A.shape[0], -1), C.reshape(C.shape[0], -1)
    return angle_from_products((a * c).sum(1), (a * a).sum(1), (c * c).sum(1))


def angle_deg_concat(As: Sequence[Tensor], Cs: Sequence[Tensor]) -> Tensor:
    """The angle between all layers concatenated: ``A = [A_1, ..., A_m]`` flattened, likewise ``C``."""
    if len(As) != len(Cs) or not As:
        raise ValueError(f"angle_deg_concat needs two equally long non-empty lists, got {len(As)} and {len(Cs)}")
    for A, C in zip(As, Cs):
        _check_same_shape(A, C, "angle_deg_concat")
    a = torch.cat([A.reshape(-1) for A in As])
    c = torch.cat([C.reshape(-1) for C in Cs])
    return angle_from_products(torch.dot(a, c), torch.dot(a, a), torch.dot(c, c))

