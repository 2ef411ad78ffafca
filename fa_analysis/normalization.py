"""Weight normalisation (WN) and initial backward normalisation (IBN), method §3.

A column of ``W_l`` (shape ``(n_l, n_{l+1})``) holds the input weights of one post-synaptic
neuron. WN rescales every column to norm gamma after initialisation and after every update;
IBN rescales the columns of every ``B_l`` to norm 1 once, at initialisation. Biases are never
normalised. Both work in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def normalize_columns_(W: Tensor | Sequence[Tensor], gamma: float) -> None:
    """WN in place (method §3): ``W_l[:, j] <- gamma W_l[:, j] / ||W_l[:, j]||`` for every column j.

    ``W`` is one matrix, a stack of matrices ``(..., n_l, n_{l+1})`` (layers of one shape), or a
    list of either. A zero column has no direction and becomes NaN, which the training loop
    reports as divergence.
    """
    if not gamma > 0:
        raise ValueError(f"gamma (the WN column norm) must be positive, got {gamma}")
    for W_l in [W] if isinstance(W, Tensor) else W:
        W_l.mul_(torch.linalg.vector_norm(W_l, dim=-2, keepdim=True).reciprocal_().mul_(gamma))


def unit_columns_(B: Tensor | Sequence[Tensor | None]) -> None:
    """IBN in place (method §3): every column of every ``B_l`` to norm 1; ``None`` entries (``B_0``) skipped."""
    for B_l in [B] if isinstance(B, Tensor) else B:
        if B_l is not None:
            normalize_columns_(B_l, 1.0)
