"""Alignment terms of feedback alignment (method §6, the paper's core object).

For an FA run without WN, ``W_{l-1}[k] = W_{l-1}[0] + sum_{o=1..k} eta dW_{l-1}[k-o]`` with
``dW_{l-1}[j] = L_{l-1}[j]^T delta_l[j]`` and ``delta_l[j] = (delta_{l+1}[j] B_l) * f'(Z_l[j])``.
Writing ``L_l[k] = f(L_{l-1}[k] W_{l-1}[k] + b_l)`` as a telescoping sum over the past updates and
expanding each step to first order gives, for ``l = 1..d-1``,

    Delta W_l[k] = eta L_l[k]^T delta_{l+1}[k]
                 ~ sum_{o=1..k} T^o_l[k]  +  eta f(L_{l-1}[k] W_{l-1}[0] + b_l)^T delta_{l+1}[k]  +  R_l[k]

with the **nonlinear term**

    T^o_l[k] = eta^2 [ f'(zeta^o)^T * ( (f'(Z_l[k-o])^T * B_l^T delta_{l+1}[k-o]^T) L_{l-1}[k-o] L_{l-1}[k]^T ) ] delta_{l+1}[k],
    zeta^o   = L_{l-1}[k] W_{l-1}[k-o] + b_l,

the **linear term** (f' set to 1)

    T^o_l[k] = eta^2 B_l^T M^o_l[k],   M^o_l[k] = P_l[k-o]^T P_l[k],   P_l[j] = L_{l-1}[j]^T delta_{l+1}[j],

whose sum over all lags is a running sum, ``sum_o M^o_l[k] = (sum_{j<k} P_l[j])^T P_l[k]``, the
**zero-degree term** ``eta f(L_{l-1}[k] W_{l-1}[0] + b_l)^T delta_{l+1}[k]`` and the remainder ``R_l``.
``T^o`` points along ``B_l^T`` when ``M`` is near symmetric positive semi-definite (for a skew ``M``,
``<B_l^T, B_l^T M> = tr(B_l B_l^T M) = 0``): auto-correlation of ``L``/``delta`` (the same
minibatch again at lag o) or their cross-correlation gives that.

Choices made here (documented in the tables' docstrings too):

- ``b_l`` is the bias at step k, ``b_l[k]``, in ``zeta^o`` and in the zero-degree term. The
  telescoping sum then runs over the weight updates only and is exact up to the first-order
  expansion; the bias updates need no terms of their own.
- The remainder ``R_l`` is measured with the nonlinear terms summed over the whole history, in
  its own experiment (``remainder.py``); this observer needs only the lags below.
- ``T^o`` is needed only at lags up to ``H = max(max_lag, max(lags_over_time))``: a ring buffer of
  H past steps holds, per layer, the past factor ``G_l[j] = (f'(Z_l[j])^T * B_l^T delta_{l+1}[j]^T)
  L_{l-1}[j]`` (``n_l x n_{l-1}``, which equals ``dW_{l-1}[j]^T``), ``W_{l-1}[j]``, ``P_l[j]`` and the
  per-class sums of ``L_{l-1}[j]`` -- never a whole minibatch -- so memory does not grow with k
  and no step stores more than a few weight-sized matrices.
- The similarity ``S = L_{l-1}[k-o] L_{l-1}[k]^T`` (``n_b x n_b``) enters ``M^o = delta_{l+1}[k-o]^T
  S delta_{l+1}[k]``. Its within-class and between-class means are computed from per-class sums,
  ``sum_{i,j: y_i = y'_j} S_ij = sum_c <s_c[k-o], s_c[k]>``, without forming S. The control uses
  permuted labels: each minibatch's labels shuffled by a fresh seeded permutation (seed
  ``spec.seed + permutation_seed_offset``), so the control has no class structure at any lag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd
import torch
from torch import Tensor

from fa_analysis.history import fprime_input_scale, fprime_times_at
from fa_analysis.measures import angle_from_products
from fa_analysis.network import get_activation
from fa_analysis.settings import is_int, with_defaults

NUM_CLASSES = 10  # MNIST digits: the labels the similarity is split by
PERMUTATION_SEED_OFFSET = 2_000_003
TERM_KINDS = ("nonlinear", "linear")


# --------------------------------------------------------------------------------------------
# The terms as pure functions of tensors (paper names; layer l, past step j = k - o, now = k)


def P_matrix(L_prev: Tensor, delta_next: Tensor) -> Tensor:
    """``P_l[j] = L_{l-1}[j]^T delta_{l+1}[j]``, shape ``(n_{l-1}, n_{l+1})``."""
    return L_prev.T @ delta_next


def M_matrix(P_past: Tensor, P_now: Tensor) -> Tensor:
    """``M^o_l[k] = P_l[k-o]^T P_l[k]``; with ``P_past = sum_{j<k} P_l[j]`` it is ``sum_o M^o_l[k]``.

    ``P_past`` may carry a leading lag axis ``(m, n_{l-1}, n_{l+1})``: then one M per lag.
    """
    return P_past.mT @ P_now


def linear_term(B: Tensor, M: Tensor, eta: float) -> Tensor:
    """Linear alignment term ``eta^2 B_l^T M^o_l[k]``, shape ``(n_l, n_{l+1})`` like ``W_l`` (per lag if M has a lag axis)."""
    return eta**2 * (B.T @ M)


def past_factor(L_prev_past: Tensor, fprime_Z_past: Tensor, delta_next_past: Tensor, B: Tensor) -> Tensor:
    """``G_l[j] = (f'(Z_l[j])^T * B_l^T delta_{l+1}[j]^T) L_{l-1}[j]``, shape ``(n_l, n_{l-1})``.

    The part of ``T^o_l[k]`` fixed at the past step ``j = k - o``; it equals ``delta_l[j]^T
    L_{l-1}[j] = dW_{l-1}[j]^T``, the transposed FA update of the layer below (without eta).
    """
    return (fprime_Z_past.T * (B.T @ delta_next_past.T)) @ L_prev_past


def nonlinear_term_from_past_factor(
    G_past: Tensor,
    W_prev_past: Tensor,
    L_prev_now: Tensor,
    delta_next_now: Tensor,
    b: Tensor,
    eta: float,
    activation: str,
) -> Tensor:
    """``T^o_l[k] = eta^2 [f'(zeta^o)^T * (G_l[k-o] L_{l-1}[k]^T)] delta_{l+1}[k]``, ``zeta^o = L_{l-1}[k] W_{l-1}[k-o] + b_l``.

    ``G_past`` and ``W_prev_past`` may carry a leading lag axis (m lags at once, one T per lag).
    """
    act = get_activation(activation)
    zeta = L_prev_now @ W_prev_past + b
    fprime_zeta = act.fprime(zeta, act.f(zeta, None), None)
    return eta**2 * ((fprime_zeta.mT * (G_past @ L_prev_now.T)) @ delta_next_now)


def nonlinear_term(
    L_prev_past: Tensor,
    Z_past: Tensor,
    delta_next_past: Tensor,
    W_prev_past: Tensor,
    L_prev_now: Tensor,
    delta_next_now: Tensor,
    b: Tensor,
    B: Tensor,
    eta: float,
    activation: str,
) -> Tensor:
    """Nonlinear alignment term ``T^o_l[k]`` (method §6) from the states at steps ``k - o`` and ``k``.

    ``L_prev_* = L_{l-1}``, ``Z_past = Z_l[k-o]``, ``delta_next_* = delta_{l+1}``,
    ``W_prev_past = W_{l-1}[k-o]``, ``b = b_l`` (at step k), ``B = B_l``.
    """
    act = get_activation(activation)
    fprime_Z_past = act.fprime(Z_past, act.f(Z_past, None), None)
    G_past = past_factor(L_prev_past, fprime_Z_past, delta_next_past, B)
    return nonlinear_term_from_past_factor(G_past, W_prev_past, L_prev_now, delta_next_now, b, eta, activation)


def zero_degree_term(L_prev_now: Tensor, W_prev_init: Tensor, b: Tensor, delta_next_now: Tensor, eta: float, activation: str) -> Tensor:
    """``eta f(L_{l-1}[k] W_{l-1}[0] + b_l)^T delta_{l+1}[k]``: the update had W_{l-1} never learned."""
    act = get_activation(activation)
    return eta * (act.f(L_prev_now @ W_prev_init + b, None).T @ delta_next_now)


def class_sums(L: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class sums of the rows of ``L`` ``(num_classes, n)`` and the class counts ``(num_classes,)``."""
    sums = torch.zeros((num_classes, L.shape[1]), dtype=L.dtype, device=L.device).index_add_(0, labels, L)
    counts = torch.bincount(labels, minlength=num_classes).to(L.dtype)
    return sums, counts


def class_similarity_means(sums_past: Tensor, counts_past: Tensor, sums_now: Tensor, counts_now: Tensor) -> Tensor:
    """Within- and between-class means of ``S = L[k-o] L[k]^T`` from class sums: ``[..., (within, between)]``.

    A pair ``(i, j)`` (row i of batch ``k-o``, row j of batch ``k``) is within-class when the
    labels agree. ``sum_within = sum_c <s_c[k-o], s_c[k]>``, ``n_within = sum_c n_c[k-o] n_c[k]``;
    the between-class mean is the rest of ``sum_ij S_ij = <sum_c s_c[k-o], sum_c s_c[k]>``.
    Sums ``(..., C, n)`` and counts ``(..., C)`` may carry leading axes (lags, label kinds).
    """
    within_sum = (sums_past * sums_now).sum((-2, -1))
    within_count = (counts_past * counts_now).sum(-1)
    total_sum = (sums_past.sum(-2) * sums_now.sum(-2)).sum(-1)
    total_count = counts_past.sum(-1) * counts_now.sum(-1)
    return torch.stack([within_sum / within_count, (total_sum - within_sum) / (total_count - within_count)], dim=-1)


def class_similarity(L_past: Tensor, labels_past: Tensor, L_now: Tensor, labels_now: Tensor, num_classes: int = NUM_CLASSES) -> Tensor:
    """``[within, between]`` class means of ``S = L_{l-1}[k-o] L_{l-1}[k]^T`` (method §6)."""
    return class_similarity_means(*class_sums(L_past, labels_past, num_classes), *class_sums(L_now, labels_now, num_classes))


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class AlignmentTermsSettings:
    """The ``alignment_terms`` observer settings (``spec.observers["alignment_terms"]``).

    The config keys (``iterations``, ``max_lag``, ``lags_over_time``, ``every``) take the schema's
    defaults when left out (``settings.schema_defaults``); ``num_classes`` and
    ``permutation_seed_offset`` are no config keys and default to the constants above.
    """

    iterations: tuple[int, ...]
    max_lag: int
    lags_over_time: tuple[int, ...]
    every: int
    num_classes: int = NUM_CLASSES
    permutation_seed_offset: int = PERMUTATION_SEED_OFFSET

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "AlignmentTermsSettings":
        values = with_defaults(("alignment_terms",), settings, set(cls.__dataclass_fields__))
        values = {"num_classes": NUM_CLASSES, "permutation_seed_offset": PERMUTATION_SEED_OFFSET, **values}
        for key in ("iterations", "lags_over_time"):
            seq = values[key]
            if not isinstance(seq, (list, tuple)) or not all(is_int(x) and x >= 0 for x in seq):
                raise ValueError(f"alignment_terms.{key} must be a list of non-negative ints, got {seq!r}")
            values[key] = tuple(int(x) for x in seq)
        if any(o < 1 for o in values["lags_over_time"]):
            raise ValueError(f"alignment_terms.lags_over_time must be lags >= 1, got {list(values['lags_over_time'])}")
        for key in ("max_lag", "every", "num_classes"):
            if not is_int(values[key]) or values[key] < 1:
                raise ValueError(f"alignment_terms.{key} must be a positive int, got {values[key]!r}")
        if not is_int(values["permutation_seed_offset"]):
            raise ValueError(f"alignment_terms.permutation_seed_offset must be an int, got {values['permutation_seed_offset']!r}")
        return cls(**values)


def check_fa_without_wn(spec: Any, observer: str) -> None:
    """The expansion needs ``W_{l-1}[k] = W_{l-1}[0] + sum eta dW`` and ``delta = (delta B) * f'``: FA, no WN."""
    if spec.rule != "fa":
        raise ValueError(f"the {observer} observer needs an FA run (spec.rule = 'fa'), got rule {spec.rule!r}")
    if spec.wn:
        raise ValueError(f"the {observer} observer needs a run without WN (spec.wn = false): WN breaks the expansion of method §6")


def observer_settings(spec: Any, name: str) -> Mapping[str, Any]:
    """``spec.observers[name]``, with an error naming the key when it is missing."""
    observers = getattr(spec, "observers", None) or {}
    if name not in observers:
        raise KeyError(f"spec.observers has no {name!r} entry: the run spec must carry the {name} settings (config section {name})")
    return observers[name] or {}


# --------------------------------------------------------------------------------------------
# The observer


class _History:
    """Ring buffer of the last ``capacity`` steps of one layer: only what the lagged terms need.

    ``past[:, slot]`` holds ``W_{l-1}[j]`` and ``F_l[j] = G_l[j]^T`` side by side, ``(n_{l-1}, 2,
    n_l)``; the lags of a step are gathered from it into one matrix with a single copy, so that
    every ``zeta^o`` and ``C^o`` of the step is one product with ``L_{l-1}[k]``.
    """

    def __init__(self, capacity: int, n_prev: int, n_l: int, n_next: int, num_classes: int, like: Tensor):
        def buf(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=like.dtype, device=like.device)

        self.capacity = capacity
        self.past = buf(n_prev, capacity, 2, n_l)  # [W_{l-1}[j] | F_l[j]], F = G_l[j]^T = dW_{l-1}[j]
        self.P = buf(capacity, n_prev, n_next)  # P_l[j]
        self.sums = buf(capacity, 2, num_classes, n_prev)  # class sums of L_{l-1}[j]: true, permuted labels
        self.counts = buf(capacity, 2, num_classes)

    @property
    def W_prev(self) -> Tensor:
        """``W_{l-1}[j]`` of every slot, ``(capacity, n_{l-1}, n_l)`` (a view)."""
        return self.past[:, :, 0].transpose(0, 1)

    @property
    def F(self) -> Tensor:
        """``F_l[j] = G_l[j]^T`` of every slot, ``(capacity, n_{l-1}, n_l)`` (a view)."""
        return self.past[:, :, 1].transpose(0, 1)

    def slot(self, j: int) -> int:
        return j % self.capacity

    def push(self, j: int, F: Tensor, W_prev: Tensor, P: Tensor, sums: Tensor, counts: Tensor) -> None:
        s = self.slot(j)
        self.past[:, s, 0].copy_(W_prev)
        self.past[:, s, 1].copy_(F)
        self.P[s].copy_(P)
        self.sums[s].copy_(sums)
        self.counts[s].copy_(counts)

    def gather(self, slots: list[int], need_zeta: list[int], out: Tensor) -> Tensor:
        """``[F[slots[0]], ..., F[slots[-1]], W_prev[need_zeta[0]], ...]`` side by side, ``(n_{l-1}, (m + m') n_l)``, in ``out``."""
        n_prev, capacity, _, n_l = self.past.shape
        index = torch.tensor([2 * s + 1 for s in slots] + [2 * s for s in need_zeta], device=self.past.device)
        picked = out[: n_prev * len(index) * n_l].view(n_prev, len(index), n_l)
        torch.index_select(self.past.view(n_prev, 2 * capacity, n_l), 1, index, out=picked)
        return picked.view(n_prev, len(index) * n_l)


def lagged_nonlinear_terms(
    history: _History,
    slots: list[int],
    lag_one: bool,
    L_prev_now: Tensor,
    Z_now: Tensor,
    delta_next_now: Tensor,
    b: Tensor,
    eta: float,
    activation: str,
    scratch: Tensor,
) -> Tensor:
    """``T^o_l[k]^T`` ``(m, n_{l+1}, n_l)`` for the lags whose past steps sit in ``slots``: the
    numbers of :func:`nonlinear_term_from_past_factor` lag by lag, to rounding.

    ``C^o = L_{l-1}[k] F_l[k-o]`` for every lag and ``zeta^o - b = L_{l-1}[k] W_{l-1}[k-o]`` are one
    product of ``L_{l-1}[k]`` with the gathered past. When ``lag_one`` (``slots[0]`` is the step
    just before k), ``zeta^1`` needs no product: ``W_{l-1}[k] = W_{l-1}[k-1] + eta dW_{l-1}[k-1]``
    (FA without WN) and ``F_l[k-1] = dW_{l-1}[k-1]``, so ``zeta^1 = Z_l[k] - eta C^1`` with the
    engine's pre-activation ``Z_l[k]``. ``f'(zeta) * C`` for every lag is then a few passes over
    one buffer (``history.fprime_times_at``), and ``delta_{l+1}[k]^T (f'(zeta) * C)`` one product
    for all lags.
    ``scratch`` holds at least :func:`scratch_size` numbers.
    """
    m, n_b = len(slots), L_prev_now.shape[0]
    n_prev, n_l = history.past.shape[0], history.past.shape[-1]
    first = 1 if lag_one else 0  # lags from here on need zeta from a product
    cols = (2 * m - first) * n_l
    past = history.gather(slots, slots[first:], scratch)
    used = n_prev * cols
    products = torch.mm(L_prev_now, past, out=scratch[used : used + n_b * cols].view(n_b, cols))
    used += n_b * cols
    C = products[:, : m * n_l].view(n_b, m, n_l)
    zeta = products[:, m * n_l :].view(n_b, m - first, n_l)  # zeta^o - b, lags from `first` on
    x = scratch[used : used + n_b * m * n_l].view(n_b, m, n_l)
    weighted = scratch[used + n_b * m * n_l : used + 2 * n_b * m * n_l].view(n_b, m, n_l)
    a = fprime_input_scale(activation)  # x = a (zeta + b): f' is computed from a scaled input
    if lag_one:
        torch.add(Z_now, C[:, 0], alpha=-eta, out=x[:, 0])
        if a != 1:
            x[:, 0].mul_(a)
    if first < m:
        torch.add(b if a == 1 else a * b, zeta, alpha=a, out=x[:, first:])
    scale = fprime_times_at(x, C, weighted, activation) * eta**2
    # T^T = eta^2 delta_{l+1}[k]^T (f'(zeta) * C): every lag in one product
    T_t = (delta_next_now.T @ weighted.view(n_b, m * n_l)).mul_(scale)
    return T_t.view(-1, m, n_l).transpose(0, 1)


def angles_and_norms(T_t: Tensor, B: Tensor) -> Tensor:
    """``[angle(T_t[i], B), ||T_t[i]||_F]`` for a stack of matrices ``T_t``, ``(m, 2)`` in float64.

    ``measures.angle_deg_batched(T_t, B.expand_as(T_t))`` and the norms, from one product of the
    flattened stack with the flattened ``B`` and one sum of squares (the norm's square is the
    angle's ``||T||^2``).
    """
    flat, b = T_t.reshape(T_t.shape[0], -1), B.reshape(-1)
    squares = (flat * flat).sum(1)
    angles = angle_from_products(flat @ b, squares, b.dot(b).expand_as(squares))
    return torch.stack([angles, squares.double().sqrt()], 1)


def scratch_size(m: int, n_b: int, n_prev: int, n_l: int) -> int:
    """Numbers :func:`lagged_nonlinear_terms` needs for m lags of one layer (at most)."""
    return n_prev * 2 * m * n_l + n_b * 2 * m * n_l + 2 * n_b * m * n_l


class AlignmentTermsObserver:
    """Alignment terms of an FA run without WN, measured beside training (method §6).

    Settings from ``spec.observers["alignment_terms"]`` (or given here): ``iterations`` (the k of
    the lag analysis), ``max_lag``, ``lags_over_time``, ``every``. ``finish()`` returns three tables
    (``layer`` is l = 1..d-1 of ``W_l``; ``iteration`` is k, the state before step k):

    - ``terms_lag``: ``iteration, layer, lag, kind, angle, norm`` -- ``angle(T^o_l[k], B_l^T)`` in
      degrees and ``||T^o_l[k]||_F`` for ``k`` in ``iterations`` and ``o = 1..min(max_lag, k)``,
      ``kind`` ``nonlinear`` or ``linear``;
    - ``terms_time``: the same columns for ``o`` in ``lags_over_time`` (``o <= k``) at every
      ``every``-th iteration;
    - ``terms_similarity``: ``iteration, layer, lag, labels, within, between`` -- class means of
      ``S = L_{l-1}[k-o] L_{l-1}[k]^T`` with the class labels (``labels = "true"``: the clean
      labels when ``true_labels`` is given, else the labels the run trains on, which are noisy in
      a label-noise run) and with permuted labels (``"permuted"``), at the lags and iterations of
      both analyses.
    """

    name = "alignment_terms"

    def __init__(self, settings: Mapping[str, Any] | None = None, true_labels: Tensor | None = None):
        """``true_labels``: the clean labels of the whole training set (``dataset.y_train``); given,
        the similarity's ``"true"`` rows use ``true_labels[batch_index]`` instead of the batch's
        training labels, which differ in a label-noise run."""
        self._given = settings
        self._true_labels = None if true_labels is None else torch.as_tensor(true_labels, dtype=torch.long)

    def start(self, net: Any, spec: Any, num_iterations: int, device: Any = None) -> None:
        check_fa_without_wn(spec, self.name)
        raw = self._given if self._given is not None else observer_settings(spec, self.name)
        self.settings = s = AlignmentTermsSettings.from_dict(raw)
        self.activation = net.activation
        self.layers = range(1, net.d)
        self.lag_iterations = {k for k in s.iterations if k < num_iterations}
        horizon = max([s.max_lag if self.lag_iterations else 0, *s.lags_over_time, 1])
        self.capacity = max(1, min(horizon, num_iterations))
        sizes = net.sizes
        W = net.W[0]
        self.history = {
            l: _History(self.capacity, sizes[l - 1], sizes[l], sizes[l + 1], s.num_classes, W) for l in self.layers
        }
        if self._true_labels is not None:
            self._true_labels = self._true_labels.to(net.W[0].device)
        self.permutation_generator = torch.Generator().manual_seed(int(spec.seed) + s.permutation_seed_offset)
        self.rows: dict[str, list] = {"lag": [], "time": [], "similarity": []}
        self.values: dict[str, list[Tensor]] = {"lag": [], "time": [], "similarity": []}
        self._labels_checked = False
        self._work: Tensor | None = None

    def step(self, k: int, net: Any, state: Any) -> None:
        s = self.settings
        if self._true_labels is not None:
            labels = self._true_labels[state.batch_index]
        else:
            labels = state.labels.to(torch.long)
        if not self._labels_checked:
            if labels.min() < 0 or labels.max() >= s.num_classes:
                raise ValueError(f"batch labels must lie in 0..{s.num_classes - 1} (alignment_terms.num_classes)")
            self._labels_checked = True
        permutation = torch.randperm(labels.shape[0], generator=self.permutation_generator).to(labels.device)
        # class membership of the batch's rows under the true and the permuted labels, (2 C, n_b):
        # the class sums of every layer's input under both label sets are then one product each
        members = torch.nn.functional.one_hot(torch.stack([labels, labels[permutation]]), s.num_classes)
        members = members.transpose(1, 2).reshape(2 * s.num_classes, -1).to(state.L[0].dtype)
        counts = members.sum(1).view(2, s.num_classes)
        reach = min(k, self.capacity)  # lags whose past step is in the buffer
        over_time = k % s.every == 0
        time_lags = {o for o in s.lags_over_time if o <= reach} if over_time else set()
        lag_lags = set(range(1, min(s.max_lag, reach) + 1)) if k in self.lag_iterations else set()
        lags = sorted(time_lags | lag_lags)
        eta = float(state.eta)
        for l in self.layers:
            h = self.history[l]
            L_prev, delta_next, B, b = state.L[l - 1], state.delta[l + 1], net.B[l], net.b[l - 1]
            # G_l[k] = past_factor(L_{l-1}, f'(Z_l), delta_{l+1}, B_l) is the engine's dW_{l-1}^T (FA rule).
            F = state.dW[l - 1]
            P = P_matrix(L_prev, delta_next)
            sums = (members @ L_prev).view(2, s.num_classes, -1)  # (2, C, n_{l-1}): class_sums under both label sets

            if lags:
                # every lag of this step at once, from the buffered past
                slots = [h.slot(k - o) for o in lags]
                lag_one = lags[0] == 1
                nonlinear = lagged_nonlinear_terms(h, slots, lag_one, L_prev, state.Z[l], delta_next, b, eta,
                                                   self.activation, self._scratch(len(lags), L_prev.shape[0], h))
                linear = eta**2 * (P.T @ h.P[slots] @ B)  # T_lin^T = eta^2 M^T B = eta^2 P[k]^T P[k-o] B
                T_t = torch.stack([nonlinear, linear], 1).flatten(0, 1)  # (lag, kind) pairs, each T^T
                values = angles_and_norms(T_t, B).view(len(lags), len(TERM_KINDS), 2)
                for table, wanted in (("time", time_lags), ("lag", lag_lags)):
                    chosen = [i for i, o in enumerate(lags) if o in wanted]
                    if chosen:
                        keys = [(k, l, lags[i], kind) for i in chosen for kind in TERM_KINDS]
                        self._record(table, keys, values[chosen].flatten(0, 1))
                similarity = class_similarity_means(h.sums[slots], h.counts[slots], sums, counts)  # (lag, labels, 2)
                keys = [(k, l, o, name) for o in lags for name in ("true", "permuted")]
                self._record("similarity", keys, similarity.flatten(0, 1).to(torch.float64))

            h.push(k, F, net.W[l - 1], P, sums, counts)

    def _scratch(self, m: int, n_b: int, h: _History) -> Tensor:
        """Work memory for the lagged terms of m lags, kept for the ordinary steps' lag count."""
        need = scratch_size(m, n_b, h.past.shape[0], h.past.shape[-1])
        if self._work is None or self._work.numel() < need:
            work = torch.empty(need, dtype=h.past.dtype, device=h.past.device)
            if m > len(self.settings.lags_over_time):
                return work  # a lag-analysis k: used once, not kept
            self._work = work
        return self._work

    def _record(self, table: str, keys: list[tuple], values: Tensor) -> None:
        """Rows of a table: one key tuple per row of ``values`` (kept on the device until ``finish``)."""
        self.rows[table].extend(keys)
        self.values[table].append(values)

    def finish(self) -> dict[str, pd.DataFrame]:
        return {
            "terms_lag": _frame(self.rows["lag"], self.values["lag"], ["iteration", "layer", "lag", "kind"], ["angle", "norm"]),
            "terms_time": _frame(self.rows["time"], self.values["time"], ["iteration", "layer", "lag", "kind"], ["angle", "norm"]),
            "terms_similarity": _frame(
                self.rows["similarity"], self.values["similarity"], ["iteration", "layer", "lag", "labels"], ["within", "between"]
            ),
        }


def _frame(keys: list[tuple], values: list[Tensor], key_columns: list[str], value_columns: list[str]) -> pd.DataFrame:
    """A table from row keys and blocks of value rows, moved off the device in one go."""
    frame = pd.DataFrame(keys, columns=key_columns)
    if values:
        array = torch.cat(values).detach().cpu().numpy()
    else:
        array = torch.empty((0, len(value_columns)), dtype=torch.float64).numpy()
    for i, column in enumerate(value_columns):
        frame[column] = array[:, i]
    for column in key_columns:
        if column in ("iteration", "layer", "lag"):
            frame[column] = frame[column].astype("int64")
    return frame
