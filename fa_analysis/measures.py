"""Angles between matrices (method §1 and §5).

``angle(A, C) = arccos(<A, C>_F / (||A||_F ||C||_F))`` in degrees, on flattened matrices.
Orientation is always explicit: the FA measure is ``angle_deg(W_l, B_l.T)``; matrices of
different shapes are an error, never transposed on a guess (hidden layers are square).
The cosine is clamped to [-1, 1] and the arccos taken in float64; a zero matrix has no
direction, so its angle is NaN.

The functions take torch tensors (training and the observers) and call tensor methods, so this
module does not import torch itself; ``angle_deg_arrays`` is the same angle for NumPy arrays,
for readers of stored weights (aggregation, figures) that need no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor


def angle_from_products(inner: Tensor, norm_sq_A: Tensor, norm_sq_C: Tensor) -> Tensor:
    """Angles in degrees from ``<A, C>_F``, ``||A||_F^2`` and ``||C||_F^2`` (elementwise, any shape).

    The batched form: the training loop records these Frobenius products for every layer
    and iteration and converts them all at once.
    """
    inner, norm_sq_A, norm_sq_C = (t.double() for t in (inner, norm_sq_A, norm_sq_C))
    cos = inner / (norm_sq_A * norm_sq_C).sqrt()
    return cos.clamp(-1.0, 1.0).arccos().rad2deg()


def _check_same_shape(A: Tensor | np.ndarray, C: Tensor | np.ndarray, where: str) -> None:
    if A.shape != C.shape:
        raise ValueError(
            f"{where} needs matrices of the same shape, got {tuple(A.shape)} and {tuple(C.shape)}; "
            "pass the orientation explicitly, e.g. angle_deg(W_l, B_l.T)"
        )


def angle_deg(A: Tensor, C: Tensor) -> Tensor:
    """``arccos(<A, C>_F / (||A||_F ||C||_F))`` in degrees (a 0-dim float64 tensor)."""
    _check_same_shape(A, C, "angle_deg")
    a, c = A.reshape(-1), C.reshape(-1)
    return angle_from_products(a.dot(c), a.dot(a), c.dot(c))


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
    import torch

    a = torch.cat([A.reshape(-1) for A in As])
    c = torch.cat([C.reshape(-1) for C in Cs])
    return angle_from_products(a.dot(c), a.dot(a), c.dot(c))


def angle_deg_arrays(As: Sequence[np.ndarray], Cs: Sequence[np.ndarray]) -> float:
    """:func:`angle_deg_concat` for NumPy arrays, in float64: ``angle_deg`` when given one pair."""
    if len(As) != len(Cs) or not As:
        raise ValueError(f"angle_deg_arrays needs two equally long non-empty lists, got {len(As)} and {len(Cs)}")
    for A, C in zip(As, Cs):
        _check_same_shape(A, C, "angle_deg_arrays")
    a = np.concatenate([np.asarray(A, dtype=np.float64).reshape(-1) for A in As])
    c = np.concatenate([np.asarray(C, dtype=np.float64).reshape(-1) for C in Cs])
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = a.dot(c) / np.sqrt(a.dot(a) * c.dot(c))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))

