"""Shadow weight sequences beside a real FA run (method §6; the paper's Figs 9 and 10).

Each shadow starts from the real ``W_l[0]`` and accumulates, at every step k, the zero-degree term
plus alignment terms summed over all lags (``alignment_terms``), built from the real run's
``L``, ``delta`` and ``f'``:

    W^lin_l[k+1]  = W^lin_l[k]  + eta f(L_{l-1}[k] W_{l-1}[0] + b_l)^T delta_{l+1}[k]
                                + eta^2 B_l^T (sum_{j<k} P_l[j])^T P_l[k]
    W^B'_l[k+1]   = W^B'_l[k]   + (the same zero-degree term) + sum_{o=1..k} T'^o_l[k]

with ``P_l[j] = L_{l-1}[j]^T delta_{l+1}[j]``.

- **Linearised shadow** ``W^lin``: the linear terms (``f'`` set to 1); a running sum of P keeps
  each step O(1). It drops the nonlinearity of the terms and the higher orders (the remainder).
- **Random-B' shadow** ``W^B'``: the **nonlinear** terms summed over the whole history, with an
  unrelated fixed ``B'_l`` (same distribution as ``B_l``) in place of ``B_l`` inside them,

      T'^o_l[k] = eta^2 [f'(zeta^o)^T * ((f'(Z_l[k-o])^T * B'_l^T delta_{l+1}[k-o]^T) L_{l-1}[k-o] L_{l-1}[k]^T)] delta_{l+1}[k],

  ``zeta^o = L_{l-1}[k] W_{l-1}[k-o] + b_l`` with the real weights. Its past factor
  ``G'_l[j]^T = L_{l-1}[j]^T ((delta_{l+1}[j] B'_l) * f'(Z_l[j]))`` is the update the layer below
  would get with ``B'_l`` as its feedback; the sum over the history is
  :class:`fa_analysis.history.TermHistory` (cost grows with k, memory with the run length: see
  there). If alignment comes from the statistics of ``L`` and ``delta`` (``M`` near symmetric
  PSD) and not from ``B`` itself, ``W^B'`` aligns with ``B'^T`` about as much as ``W`` with ``B^T``.
- **Random-B' shadow with the linear terms** ``W^B'lin``: kept for comparison only. Then
  ``W^B'lin - W^lin = (B' - B)^T sum M`` exactly: it is the linearised shadow with ``B``
  relabelled and says nothing the linearised shadow does not.

``B'`` is drawn from its own seed, ``spec.seed + random_b_seed_offset``, as ``init_network``
draws ``B``: N(0, init_std^2) entries, layer by layer, in float64 on the CPU, then cast; with
``spec.ibn`` its columns are set to norm 1 like ``B``'s.
"""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd
import torch
from torch import Tensor

from fa_analysis.alignment_terms import check_fa_without_wn, observer_settings
from fa_analysis.history import TermHistory, bytes_per_step, check_fits
from fa_analysis.measures import angle_from_products
from fa_analysis.network import get_activation
from fa_analysis.normalization import unit_columns_

SHADOW_COLUMNS = (
    "angle_W_Bt",  # the real run: angle(W_l, B_l^T)
    "angle_Wlin_Bt",  # linearised shadow: angle(W^lin_l, B_l^T)
    "angle_WBprime_Bprimet",  # random-B' shadow (nonlinear terms) with its own B': angle(W^B'_l, B'_l^T)
    "angle_WBprime_Bt",  # the same shadow against the real B: angle(W^B'_l, B_l^T)
    "angle_WBprimelin_Bprimet",  # random-B' shadow with the linear terms: angle(W^B'lin_l, B'_l^T)
)


def draw_random_B(sizes: list[int], init_std: float, seed: int, ibn: bool, like: Tensor) -> list[Tensor | None]:
    """``B'_l`` for ``l = 1..d-1``, shape ``(n_{l+1}, n_l)``, entries N(0, init_std^2), from ``seed``.

    Returned as a list of length d with ``B'[0] = None``, like ``Network.B``.
    """
    generator = torch.Generator().manual_seed(int(seed))
    B_prime: list[Tensor | None] = [None]
    for l in range(1, len(sizes) - 1):
        draw = torch.randn(sizes[l + 1], sizes[l], generator=generator, dtype=torch.float64) * init_std
        B_prime.append(draw.to(dtype=like.dtype, device=like.device))
    if ibn:
        unit_columns_(B_prime)
    return B_prime


#: The rows of each layer's block in ``ShadowObserver``, flattened matrices of ``W_l``'s shape. The
#: order matters: the three shadows first (the two linear ones first of them), then ``W_l``, then
#: ``B_l^T`` and ``B'_l^T`` side by side.
SHADOW_ROWS = ("W_lin", "W_Bprime_lin", "W_Bprime", "W", "B_t", "Bprime_t", "W_lin_minus_W")
_ROW = {name: i for i, name in enumerate(SHADOW_ROWS)}
#: The (row, row) pair of each angle column of ``SHADOW_COLUMNS``, in order.
ANGLE_PAIRS = tuple((_ROW[a], _ROW[c]) for a, c in (
    ("W", "B_t"), ("W_lin", "B_t"), ("W_Bprime", "Bprime_t"), ("W_Bprime", "B_t"), ("W_Bprime_lin", "Bprime_t")))


class ShadowObserver:
    """Linearised and random-B' shadow weights beside an FA run without WN (method §6).

    Settings from ``spec.observers["shadow"]`` (or given here): ``random_b_seed_offset``.
    ``finish()`` returns ``{"shadow": table}`` with one row per iteration k (the state before
    step k) and layer l = 1..d-1: ``iteration, layer`` then the angles of ``SHADOW_COLUMNS``
    (degrees) and ``rel_diff_Wlin_W = ||W^lin_l - W_l|| / ||W_l||``.

    The random-B' shadow sums the nonlinear terms over the whole history at every step: the
    cost of step k grows with k and the run keeps ``history.bytes_per_step`` bytes per step.

    Per step and layer, besides that sum and the random-B' past factor
    (:meth:`random_B_past_factor`), the work is three products over the minibatch, as many as
    the training step has per layer: ``L_{l-1}[k] W_{l-1}[0]`` and ``f(.)^T delta_{l+1}[k]`` (the
    zero-degree term) and ``P_l[k]``; the rest is small. Each layer's matrices are the rows of one
    block (``SHADOW_ROWS``): the block times its transpose gives every angle's Frobenius products,
    recorded per step and turned into angles once, in ``finish``. The zero-degree term is added
    to the three shadows in one pass and the linear terms of both linear shadows in one batched
    product.
    """

    name = "shadow"

    def __init__(self, settings: Mapping[str, Any] | None = None):
        self._given = settings

    def start(self, net: Any, spec: Any, num_iterations: int, device: Any = None) -> None:
        check_fa_without_wn(spec, self.name)
        settings = dict(self._given if self._given is not None else observer_settings(spec, self.name))
        unknown = set(settings) - {"random_b_seed_offset"}
        if unknown:
            raise KeyError(f"unknown shadow observer keys {sorted(unknown)}; accepted: ['random_b_seed_offset']")
        if "random_b_seed_offset" not in settings:
            raise KeyError("shadow observer settings lack 'random_b_seed_offset' (config section shadow)")
        offset = settings["random_b_seed_offset"]
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise ValueError(f"shadow.random_b_seed_offset must be an int, got {offset!r}")
        like = net.W[0]
        capacity = max(num_iterations - 1, 0)  # the last step's terms need the steps before it
        check_fits(bytes_per_step(net.sizes, like.element_size()) * capacity, like.device,
                   f"the random-B' shadow's history of {capacity} steps",
                   "shorten the shadow runs (config shadow.epochs)")
        self.activation = get_activation(net.activation)
        self.layers = range(1, net.d)
        sizes = net.sizes
        self.B_prime = draw_random_B(sizes, spec.init_std, int(spec.seed) + offset, bool(spec.ibn), like)
        zeros = dict(dtype=like.dtype, device=like.device)
        self.block, self.work = {}, {}
        for l in self.layers:
            n_prev, n_l, n_next = sizes[l - 1], sizes[l], sizes[l + 1]
            block = torch.zeros((len(SHADOW_ROWS), n_l * n_next), **zeros)
            block[0:3] = net.W[l].detach().reshape(-1)  # the shadows start at the real W_l[0]
            block[4] = net.B[l].T.reshape(-1)
            block[5] = self.B_prime[l].T.reshape(-1)
            self.block[l] = block
            self.work[l] = _work_memory(spec.batch_size, n_prev, n_l, n_next, like)
        shape = lambda l: (sizes[l], sizes[l + 1])  # noqa: E731
        self.W_lin = {l: self.block[l][0].view(shape(l)) for l in self.layers}
        self.W_Bprime_lin = {l: self.block[l][1].view(shape(l)) for l in self.layers}
        self.W_Bprime = {l: self.block[l][2].view(shape(l)) for l in self.layers}
        self.W_prev_init = {l: net.W[l - 1].detach().clone() for l in self.layers}
        self.P_sum = {l: torch.zeros((sizes[l - 1], sizes[l + 1]), **zeros) for l in self.layers}
        self.history = {l: TermHistory(sizes[l - 1], sizes[l], capacity, like) for l in self.layers}
        self.last = num_iterations - 1
        self.iterations: list[int] = []
        rows = len(SHADOW_ROWS)
        self.grams = torch.zeros((max(num_iterations, 1), len(self.layers), rows, rows), **zeros)

    def step(self, k: int, net: Any, state: Any) -> None:
        eta = float(state.eta)
        i = len(self.iterations)
        if i == len(self.grams):  # more steps than announced: room for as many again
            self.grams = torch.cat([self.grams, torch.zeros_like(self.grams)])
        self.iterations.append(k)
        for j, l in enumerate(self.layers):
            block, work = self.block[l], self.work[l]
            L_prev, delta_next = state.L[l - 1], state.delta[l + 1]
            if work["zeta"].shape[0] != L_prev.shape[0]:  # a minibatch of another size
                n_l, n_next = self.W_lin[l].shape
                work = self.work[l] = _work_memory(L_prev.shape[0], L_prev.shape[1], n_l, n_next, block)
            # the angles' Frobenius products, of the state before step k
            block[3].copy_(net.W[l].reshape(-1))
            torch.sub(block[0], block[3], out=block[6])
            torch.mm(block, block.T, out=self.grams[i, j])

            zeta = torch.addmm(net.b[l - 1], L_prev, self.W_prev_init[l], out=work["zeta"])
            zero = torch.mm(self.activation.f(zeta, zeta).T, delta_next, out=work["zero"])  # the zero-degree term / eta
            P = torch.mm(L_prev.T, delta_next, out=work["P"])
            M_sum = torch.mm(self.P_sum[l].T, P, out=work["M"])  # sum_o M^o_l[k] = (sum_{j<k} P_l[j])^T P_l[k]
            # eta scales the tensors, not an alpha: a diverging run's eta^2 may exceed the dtype's range
            block[0:3].add_(zero.mul_(eta).reshape(1, -1))
            shape = (2, *self.W_lin[l].shape)
            # W^lin += eta^2 B^T M, W^B'lin += eta^2 B'^T M: one batched product
            block[0:2].view(shape).baddbmm_(block[4:6].view(shape), M_sum.mul_(eta**2).expand(2, -1, -1))
            self.W_Bprime[l].add_(self.history[l].terms_sum(L_prev, delta_next, net.b[l - 1], eta, self.activation.name))
            self.P_sum[l].add_(P)
            if k < self.last:
                self.random_B_past_factor(l, L_prev, delta_next, state.fprime[l], net.W[l - 1])

    def random_B_past_factor(self, l: int, L_prev: Tensor, delta_next: Tensor, fprime: Tensor, W_prev: Tensor) -> None:
        """Store ``W_{l-1}[k]`` and ``G'_l[k]^T = L_{l-1}[k]^T ((delta_{l+1}[k] B'_l) * f'(Z_l[k]))`` in layer l's history.

        ``G'_l[k]^T`` is the update ``W_{l-1}`` would get with ``B'_l`` as layer l's feedback.
        """
        work = self.work[l]
        # (delta_{l+1} B'_l)^T = B'_l^T delta_{l+1}^T: the engine keeps f' (and delta) layer-major, so
        # f'(Z_l)^T is contiguous and the product with it one pass in memory order
        delta_prime_t = torch.mm(self.B_prime[l].T, delta_next.T, out=work["delta_prime_t"]).mul_(fprime.T)
        self.history[l].push(W_prev, torch.mm(L_prev.T, delta_prime_t.T, out=work["F_prime"]))

    def finish(self) -> dict[str, pd.DataFrame]:
        n, layers = len(self.iterations), list(self.layers)
        frame = pd.DataFrame(
            [(k, l) for k in self.iterations for l in layers], columns=["iteration", "layer"]
        ).astype("int64")
        gram = self.grams[:n].reshape(n * len(layers), len(SHADOW_ROWS), len(SHADOW_ROWS))
        for column, (a, c) in zip(SHADOW_COLUMNS, ANGLE_PAIRS):
            frame[column] = angle_from_products(gram[:, a, c], gram[:, a, a], gram[:, c, c]).cpu().numpy()
        diff, W = _ROW["W_lin_minus_W"], _ROW["W"]
        frame["rel_diff_Wlin_W"] = (gram[:, diff, diff].double() / gram[:, W, W].double()).sqrt().cpu().numpy()
        return {"shadow": frame}


def _work_memory(n_b: int, n_prev: int, n_l: int, n_next: int, like: Tensor) -> dict[str, Tensor]:
    """The products of one layer's step, made once and reused (``ShadowObserver.step``)."""
    shapes = {"zeta": (n_b, n_l), "zero": (n_l, n_next), "P": (n_prev, n_next), "M": (n_next, n_next),
              "delta_prime_t": (n_l, n_b), "F_prime": (n_prev, n_l)}
    return {name: torch.empty(shape, dtype=like.dtype, device=like.device) for name, shape in shapes.items()}
