"""The remainder of the expansion of an FA update over the whole history (method §6).

For ``l = 1..d-1`` the update of an FA run without WN expands as (``alignment_terms``)

    Delta W_l[k] = eta L_l[k]^T delta_{l+1}[k]
                 = zero-degree term + sum_{o=1..k} T^o_l[k] + R_l[k],

    zero-degree term = eta f(L_{l-1}[k] W_{l-1}[0] + b_l)^T delta_{l+1}[k].

**The remainder ``R_l[k]``** is what is left with the **nonlinear** terms ``T^o_l[k]`` summed over
every lag ``o = 1..k``: the Taylor remainder of the first-order expansion of
``f(L_{l-1}[k] W_{l-1}[k-o+1] + b_l)`` around ``W_{l-1}[k-o]``, one step at a time. It is second
order in ``eta`` while ``Delta W`` is first order, so ``||R_l|| / ||Delta W_l||`` is small (about
1 % at the protocol's eta) and halves with eta. The sum over the whole history comes from
:class:`fa_analysis.history.TermHistory`, which stores ``W_{l-1}[j]`` and the past factor
``G_l[j]^T = dW_{l-1}[j]`` of every past step (its module docstring gives the bytes per step).

**The linear-sum remainder ``R^lin_l[k]``** is the same difference taken with the linear terms
``eta^2 B_l^T M^o_l[k]`` (``f'`` set to 1), whose sum over all lags is a running sum. It holds the
``f'`` factors of the terms as well as the higher orders, so it is of the size of ``Delta W``
itself; it is reported in its own columns (suffix ``lin``) to show how much of the terms the
nonlinearity carries, never as the remainder.

Choices: ``b_l`` is the bias at step k, ``b_l[k]``, in the zero-degree term and in ``zeta``
(``alignment_terms``); at ``k = 0`` both sums are empty and ``R = Delta W - zero-degree = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
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
from fa_analysis.settings import is_int, with_defaults

#: The columns of the ``remainder`` table after ``iteration, layer``, and what each holds.
REMAINDER_COLUMNS = {
    "ratio_R_dW": "||R_l|| / ||Delta W_l||, R with the nonlinear terms summed over all lags (the remainder)",
    "angle_R_Bt": "angle(R_l, B_l^T), degrees",
    "angle_zero_Bt": "angle(zero-degree term, B_l^T), degrees",
    "angle_terms_Bt": "angle(sum over all lags of the nonlinear terms, B_l^T), degrees (NaN at k = 0)",
    "angle_dW_Bt": "angle(Delta W_l, B_l^T), degrees",
    "ratio_zero_dW": "||zero-degree term|| / ||Delta W_l||",
    "ratio_terms_dW": "||sum of the nonlinear terms|| / ||Delta W_l||",
    "ratio_Rlin_dW": "||R^lin_l|| / ||Delta W_l||, R^lin with the linear terms instead (not the remainder)",
    "angle_Rlin_Bt": "angle(R^lin_l, B_l^T), degrees",
    "angle_linear_sum_Bt": "angle(sum over all lags of the linear terms, B_l^T), degrees (NaN at k = 0)",
    "ratio_linear_sum_dW": "||sum of the linear terms|| / ||Delta W_l||",
}


@dataclass(frozen=True)
class RemainderSettings:
    """The ``remainder`` observer settings (``spec.observers["remainder"]``, config section ``remainder``).

    The remainder is measured at every k in ``iterations`` and, with ``every > 0``, at every
    ``every``-th iteration (k = 0, every, 2 every, ...).
    """

    iterations: tuple[int, ...]
    every: int

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "RemainderSettings":
        """From the observer's settings; a key left out takes the schema's default (section ``remainder``)."""
        values = with_defaults(("remainder",), settings, set(cls.__dataclass_fields__))
        iterations = values["iterations"]
        if not isinstance(iterations, (list, tuple)) or not all(is_int(k) and k >= 0 for k in iterations):
            raise ValueError(f"remainder.iterations must be a list of non-negative ints, got {iterations!r}")
        if not is_int(values["every"]) or values["every"] < 0:
            raise ValueError(f"remainder.every must be an int >= 0 (0: only at remainder.iterations), got {values['every']!r}")
        return cls(iterations=tuple(int(k) for k in iterations), every=int(values["every"]))

    def measured(self, num_iterations: int) -> list[int]:
        """The iterations k < ``num_iterations`` at which the remainder is measured, ascending."""
        chosen = {k for k in self.iterations if k < num_iterations}
        if self.every:
            chosen.update(range(0, num_iterations, self.every))
        return sorted(chosen)


def history_bytes(sizes, itemsize: int, settings: RemainderSettings, num_iterations: int) -> int:
    """Bytes of the history a run keeps: every step before the last measured iteration."""
    measured = settings.measured(num_iterations)
    return bytes_per_step(sizes, itemsize) * (measured[-1] if measured else 0)


class RemainderObserver:
    """``R_l[k]`` and ``R^lin_l[k]`` of an FA run without WN, over the whole history (method §6).

    ``finish()`` returns ``{"remainder": table}``: one row per measured iteration k (the state
    before step k) and layer l = 1..d-1, columns ``iteration, layer`` and
    :data:`REMAINDER_COLUMNS`.
    """

    name = "remainder"

    def __init__(self, settings: Mapping[str, Any] | None = None):
        self._given = settings

    def start(self, net: Any, spec: Any, num_iterations: int, device: Any = None) -> None:
        check_fa_without_wn(spec, self.name)
        raw = self._given if self._given is not None else observer_settings(spec, self.name)
        self.settings = RemainderSettings.from_dict(raw)
        self.measured = set(self.settings.measured(num_iterations))
        self.last = max(self.measured, default=-1)
        like = net.W[0]
        nbytes = history_bytes(net.sizes, like.element_size(), self.settings, num_iterations)
        check_fits(nbytes, like.device, f"the remainder's history of {self.last} steps",
                   "measure it at fewer or earlier iterations (config remainder.iterations, remainder.every) "
                   "or train fewer epochs (remainder.epochs)")
        self.activation = net.activation
        self.layers = range(1, net.d)
        sizes = net.sizes
        self.history = {l: TermHistory(sizes[l - 1], sizes[l], self.last, like) for l in self.layers}
        self.W_prev_init = {l: net.W[l - 1].detach().clone() for l in self.layers}
        self.P_sum = {l: torch.zeros((sizes[l - 1], sizes[l + 1]), dtype=like.dtype, device=like.device) for l in self.layers}
        self.keys: list[tuple[int, int]] = []
        self.values: list[Tensor] = []

    def step(self, k: int, net: Any, state: Any) -> None:
        if k > self.last:
            return
        eta = float(state.eta)
        for l in self.layers:
            L_prev, delta_next, b = state.L[l - 1], state.delta[l + 1], net.b[l - 1]
            P = P_matrix(L_prev, delta_next)
            if k in self.measured:
                self._measure(k, l, eta, net, state, P)
            if k < self.last:
                # F_l[k] = G_l[k]^T is the FA update of the layer below, dW_{l-1}[k] (alignment_terms.past_factor)
                self.history[l].push(net.W[l - 1], state.dW[l - 1])
                self.P_sum[l].add_(P)

    def _measure(self, k: int, l: int, eta: float, net: Any, state: Any, P: Tensor) -> None:
        L_prev, delta_next, b, B = state.L[l - 1], state.delta[l + 1], net.b[l - 1], net.B[l]
        dW = eta * state.dW[l]
        zero = zero_degree_term(L_prev, self.W_prev_init[l], b, delta_next, eta, self.activation)
        terms = self.history[l].terms_sum(L_prev, delta_next, b, eta, self.activation)
        linear_sum = linear_term(B, M_matrix(self.P_sum[l], P), eta)
        R, R_lin = dW - zero - terms, dW - zero - linear_sum
        Bt = B.T
        angles = angle_deg_batched(torch.stack([R, zero, terms, dW, R_lin, linear_sum]), Bt.expand(6, *Bt.shape))
        norms = torch.stack([R.norm(), zero.norm(), terms.norm(), R_lin.norm(), linear_sum.norm()]).to(torch.float64)
        ratios = norms / dW.norm().to(torch.float64)
        angle_R, angle_zero, angle_terms, angle_dW, angle_Rlin, angle_linear = angles
        ratio_R, ratio_zero, ratio_terms, ratio_Rlin, ratio_linear = ratios
        self.keys.append((k, l))
        self.values.append(torch.stack([
            ratio_R, angle_R, angle_zero, angle_terms, angle_dW, ratio_zero, ratio_terms,
            ratio_Rlin, angle_Rlin, angle_linear, ratio_linear,
        ]))

    def finish(self) -> dict[str, pd.DataFrame]:
        frame = pd.DataFrame(self.keys, columns=["iteration", "layer"]).astype("int64")
        columns = list(REMAINDER_COLUMNS)
        array = torch.stack(self.values).cpu().numpy() if self.values else torch.empty((0, len(columns)), dtype=torch.float64).numpy()
        for i, column in enumerate(columns):
            frame[column] = array[:, i]
        return {"remainder": frame}
