"""Sums of the nonlinear alignment terms over the whole history of a run (method §6).

The remainder of the expansion (``remainder.py``) and the random-B' shadow (``shadow.py``) need,
at step k and for each layer l = 1..d-1, the sum of the nonlinear terms over every lag,

    sum_{o=1..k} T^o_l[k] = eta^2 sum_{j<k} [f'(zeta_j)^T * (G_l[j] L_{l-1}[k]^T)] delta_{l+1}[k],
    zeta_j = L_{l-1}[k] W_{l-1}[j] + b_l,

with the past factor ``G_l[j] = (f'(Z_l[j])^T * B_l^T delta_{l+1}[j]^T) L_{l-1}[j]`` (``n_l x
n_{l-1}``; see ``alignment_terms.past_factor``). Writing ``F_l[j] = G_l[j]^T`` (``n_{l-1} x n_l``,
the shape of ``W_{l-1}``) and ``C_j = L_{l-1}[k] F_l[j]`` (``n_b x n_l``), the bracket is
``(f'(zeta_j) * C_j)^T``, so

    sum_{o=1..k} T^o_l[k] = eta^2 ( sum_{j<k} f'(zeta_j) * C_j )^T delta_{l+1}[k].

Both ``zeta_j`` and ``C_j`` are ``L_{l-1}[k]`` times a past matrix of shape ``(n_{l-1}, n_l)``.
:class:`TermHistory` keeps those two matrices of every past step side by side, in blocks of
``chunk`` steps laid out ``(n_{l-1}, 2, chunk, n_l)``: one block's ``zeta`` and ``C`` for every
step in it are **one** matrix product ``L_{l-1}[k] @ block`` with ``2 chunk n_l`` columns, then
``f'`` and the weighted sum over the block's steps are elementwise passes over that product. The
sum over the past is thus a loop over blocks of steps (k / chunk of them), never over steps, and
each term is computed exactly as the plain formula writes it (``zeta_j`` from the stored
``W_{l-1}[j]``, not from a running sum), so the result equals a loop over every past step to
rounding.

Cost at step k: ``2 n_b n_{l-1} n_l k`` multiply-adds per layer for the products and a few
passes over ``n_b n_l k`` numbers for ``f'``; over a run of K steps with a sum at every step,
``O(K^2)``. Memory: ``2 n_{l-1} n_l`` numbers per layer per stored step, i.e.
:func:`bytes_per_step` = ``2 * sum_{l=1..d-1} n_{l-1} n_l * itemsize`` bytes; for the protocol's
``225-50-50-50-50-50`` network in float32 that is 150,000 bytes per step (270 MB at 1,800
steps), in float64 twice that. :func:`check_fits` refuses a run whose history would not fit in
the memory available, before the run starts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fa_analysis.network import get_activation

#: Past steps per block of the history: one matrix product covers a block. Large enough for an
#: efficient product, small enough that a block's product (``n_b x 2 chunk n_l``) stays in cache.
DEFAULT_CHUNK = 16


def bytes_per_step(sizes: Sequence[int], itemsize: int) -> int:
    """Bytes one stored step of the history takes over the layers ``l = 1..d-1`` (see the module doc)."""
    return 2 * sum(sizes[l - 1] * sizes[l] for l in range(1, len(sizes) - 1)) * itemsize


def available_bytes(device: torch.device | str) -> int:
    """Memory free for new tensors on ``device``: the host's available memory, or the GPU's free memory."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def check_fits(nbytes: int, device: torch.device | str, what: str, fix: str) -> None:
    """Raise ``MemoryError`` naming ``what`` and the ``fix`` when ``nbytes`` exceed the free memory."""
    free = available_bytes(device)
    if nbytes > free:
        raise MemoryError(
            f"{what} needs {nbytes / 2**20:,.0f} MiB but only {free / 2**20:,.0f} MiB are free on "
            f"{torch.device(device)}: {fix}"
        )


class TermHistory:
    """The past ``W_{l-1}[j]`` and ``F_l[j]`` of one layer for ``j = 0, 1, ...``, and the sum of the terms.

    ``push(W_prev, F)`` stores step ``j = len(self)``; ``terms_sum(...)`` returns the sum of the
    nonlinear terms over every stored step. Storage for ``capacity`` steps is allocated at once.
    """

    def __init__(self, n_prev: int, n_l: int, capacity: int, like: Tensor, chunk: int = DEFAULT_CHUNK):
        if capacity < 0 or chunk < 1:
            raise ValueError(f"capacity must be >= 0 and chunk >= 1, got {capacity} and {chunk}")
        self.n_prev, self.n_l, self.chunk, self.capacity = n_prev, n_l, chunk, capacity
        n_blocks = -(-capacity // chunk)
        self.blocks = torch.zeros((n_blocks, n_prev, 2, chunk, n_l), dtype=like.dtype, device=like.device)
        self.length = 0

    def __len__(self) -> int:
        return self.length

    def push(self, W_prev: Tensor, F: Tensor) -> None:
        """Store ``W_{l-1}[j]`` and ``F_l[j] = G_l[j]^T`` (both ``n_{l-1} x n_l``) as step ``j = len(self)``."""
        if self.length >= self.capacity:
            raise IndexError(f"the history holds {self.capacity} steps; step {self.length} does not fit")
        block, slot = divmod(self.length, self.chunk)
        self.blocks[block, :, 0, slot].copy_(W_prev)
        self.blocks[block, :, 1, slot].copy_(F)
        self.length += 1

    def terms_sum(self, L_prev_now: Tensor, delta_next_now: Tensor, b: Tensor, eta: float, activation: str) -> Tensor:
        """``sum_{j < len(self)} eta^2 [f'(zeta_j)^T * (F_l[j]^T L_{l-1}[k]^T)] delta_{l+1}[k]``, shape ``(n_l, n_{l+1})``.

        ``zeta_j = L_{l-1}[k] W_{l-1}[j] + b``. With the real run's ``F = dW_{l-1}^T``-factors this is
        ``sum_{o=1..k} T^o_l[k]``; with another feedback matrix in ``F`` it is the sum of the terms
        with that matrix in place of ``B_l``. Zero for an empty history.
        """
        n_b = L_prev_now.shape[0]
        products, work = self._buffers(n_b)
        weighted = torch.zeros((n_b, self.n_l), dtype=L_prev_now.dtype, device=L_prev_now.device)  # sum_j f'(zeta_j) C_j
        for block in range(-(-self.length // self.chunk)):
            m = min(self.chunk, self.length - block * self.chunk)  # steps stored in this block
            past = self.blocks[block, :, :, :m].reshape(self.n_prev, 2 * m * self.n_l)  # a view unless m < chunk
            both = torch.matmul(L_prev_now, past, out=products[: n_b * 2 * m * self.n_l].view(n_b, -1))
            both = both.view(n_b, 2, m, self.n_l)
            weighted.add_(fprime_times(both[:, 0], both[:, 1], b, work[:, :, :m], activation).sum(1))
        return eta**2 * (weighted.T @ delta_next_now)

    def _buffers(self, n_b: int) -> tuple[Tensor, Tensor]:
        """Memory for one block's products and ``f'`` passes, made once per batch size and reused."""
        if getattr(self, "_work", None) is None or self._work.shape[1] != n_b:
            like = dict(dtype=self.blocks.dtype, device=self.blocks.device)
            self._products = torch.empty(n_b * 2 * self.chunk * self.n_l, **like)
            self._work = torch.empty((2, n_b, self.chunk, self.n_l), **like)
        return self._products, self._work


def fprime_times_at(x: Tensor, C: Tensor, out: Tensor, activation: str) -> Tensor:
    """``f'(x) * C`` into ``out`` (tensors of one shape); ``x`` is overwritten with ``f(x)``.

    The engine's own ``f`` and ``f'`` (``network.ACTIVATIONS``), in place: ``f'`` is computed from
    ``f(x)`` by the formula training uses (for ``tanh_relu``, ``sign(f) - f^2``: ``sign(f)`` is the
    step ``1[x > 0]`` exactly, and ``f = tanh(relu(x))`` goes through NumPy's vectorised tanh on
    the CPU). Five passes over memory for ``tanh_relu``.
    """
    act = get_activation(activation)
    return act.fprime(x, act.f(x, x), out).mul_(C)


def fprime_times(zeta: Tensor, C: Tensor, b: Tensor, work: Tensor, activation: str) -> Tensor:
    """``f'(zeta + b) * C`` for ``zeta``, ``C`` of one shape ``(n_b, m, n_l)``, into ``work[1]``
    (``work``: ``(2, n_b, m, n_l)``)."""
    torch.add(zeta, b, out=work[0])
    return fprime_times_at(work[0], C, work[1], activation)
