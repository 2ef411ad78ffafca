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

from fa_analysis.alignment_terms import (
    M_matrix,
    P_matrix,
    check_fa_without_wn,
    linear_term,
    observer_settings,
    zero_degree_term,
)
from fa_analysis.history import TermHistory, bytes_per_step, check_fits
from fa_analysis.measures import angle_deg_batched
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


class ShadowObserver:
    """Linearised and random-B' shadow weights beside an FA run without WN (method §6).

    Settings from ``spec.observers["shadow"]`` (or given here): ``random_b_seed_offset``.
    ``finish()`` returns ``{"shadow": table}`` with one row per iteration k (the state before
    step k) and layer l = 1..d-1: ``iteration, layer`` then the angles of ``SHADOW_COLUMNS``
    (degrees) and ``rel_diff_Wlin_W = ||W^lin_l - W_l|| / ||W_l||``.

    The random-B' shadow sums the nonlinear terms over the whole history at every step: the
    cost of step k grows with k and the run keeps ``history.bytes_per_step`` bytes per step.
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
        self.activation = net.activation
        self.layers = range(1, net.d)
        sizes = net.sizes
        self.B_prime = draw_random_B(sizes, spec.init_std, int(spec.seed) + offset, bool(spec.ibn), like)
        self.W_lin = {l: net.W[l].detach().clone() for l in self.layers}
        self.W_Bprime = {l: net.W[l].detach().clone() for l in self.layers}
        self.W_Bprime_lin = {l: net.W[l].detach().clone() for l in self.layers}
        self.W_prev_init = {l: net.W[l - 1].detach().clone() for l in self.layers}
        self.P_sum = {l: torch.zeros((sizes[l - 1], sizes[l + 1]), dtype=like.dtype, device=like.device) for l in self.layers}
        self.history = {l: TermHistory(sizes[l - 1], sizes[l], capacity, like) for l in self.layers}
        self.last = num_iterations - 1
        self.keys: list[tuple[int, int]] = []
        self.values: list[Tensor] = []

    def step(self, k: int, net: Any, state: Any) -> None:
        eta = float(state.eta)
        for l in self.layers:
            W, Bt, Bpt = net.W[l], net.B[l].T, self.B_prime[l].T
            angles = angle_deg_batched(
                torch.stack([W, self.W_lin[l], self.W_Bprime[l], self.W_Bprime[l], self.W_Bprime_lin[l]]),
                torch.stack([Bt, Bt, Bpt, Bt, Bpt]),
            )
            rel_diff = ((self.W_lin[l] - W).norm() / W.norm()).to(torch.float64).reshape(1)
            self.keys.append((k, l))
            self.values.append(torch.cat([angles, rel_diff]))

            L_prev, delta_next, b = state.L[l - 1], state.delta[l + 1], net.b[l - 1]
            zero = zero_degree_term(L_prev, self.W_prev_init[l], b, delta_next, eta, self.activation)
            P = P_matrix(L_prev, delta_next)
            M_sum = M_matrix(self.P_sum[l], P)
            self.W_lin[l].add_(zero + linear_term(net.B[l], M_sum, eta))
            self.W_Bprime_lin[l].add_(zero + linear_term(self.B_prime[l], M_sum, eta))
            history = self.history[l]
            self.W_Bprime[l].add_(zero + history.terms_sum(L_prev, delta_next, b, eta, self.activation))
            self.P_sum[l].add_(P)
            if k < self.last:
                # G'_l[k]^T: the update of W_{l-1} with B'_l as the feedback of layer l
                delta_prime = (delta_next @ self.B_prime[l]).mul_(state.fprime[l])
                history.push(net.W[l - 1], L_prev.T @ delta_prime)

    def finish(self) -> dict[str, pd.DataFrame]:
        frame = pd.DataFrame(self.keys, columns=["iteration", "layer"]).astype("int64")
        columns = [*SHADOW_COLUMNS, "rel_diff_Wlin_W"]
        array = torch.stack(self.values).cpu().numpy() if self.values else torch.empty((0, len(columns))).numpy()
        for i, column in enumerate(columns):
            frame[column] = array[:, i]
        return {"shadow": frame}
