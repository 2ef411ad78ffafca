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
  H past steps (and the step's own slot) holds, per layer, the past factor ``G_l[j] =
  (f'(Z_l[j])^T * B_l^T delta_{l+1}[j]^T) L_{l-1}[j]`` (``n_l x n_{l-1}``, which equals
  ``dW_{l-1}[j]^T``), ``W_{l-1}[j]``, ``P_l[j]`` and the per-class sums of ``L_{l-1}[j]`` -- never
  a whole minibatch -- so memory does not grow with k and no step stores more than a few
  weight-sized matrices. The products over the minibatch are taken layer-major, like the
  engine's buffers (one row per unit, one column per example), so that ``zeta^1`` comes from the
  engine's ``Z_l[k]`` and ``f'`` in passes in memory order; each step records Frobenius products
  and class-sum products, and ``finish`` turns them into angles and means.
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

from fa_analysis.history import fprime_times_at
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
    """Ring buffer of one layer's last steps: only what the lagged terms need.

    ``slots = horizon + 1``: the step being computed writes its own entries straight into its
    slot, which never holds a past step a lag of this step reads. Per slot ``j``:

    - ``past[j] = [W_{l-1}[j]^T | G_l[j]]``, ``(2, n_l, n_{l-1})`` (``G_l[j] = dW_{l-1}[j]^T``): the
      lags of a step are gathered from it with one copy, so that every ``zeta^o`` and ``C^o`` of
      the step is one product with ``L_{l-1}[k]^T``, laid out like the engine's buffers
      (layer-major: one row per unit, one column per example);
    - ``P[j] = P_l[j]``, ``sums[j]`` the class sums of ``L_{l-1}[j]`` under the true and the
      permuted labels ``(2, C, n_{l-1})`` and ``total[j]`` the sum of its rows.
    """

    def __init__(self, slots: int, n_prev: int, n_l: int, n_next: int, num_classes: int, like: Tensor):
        def buf(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=like.dtype, device=like.device)

        self.slots = slots
        self.past = buf(slots, 2, n_l, n_prev)
        self.P = buf(slots, n_prev, n_next)
        self.sums = buf(slots, 2, num_classes, n_prev)
        self.total = buf(slots, n_prev)

    def slot(self, j: int) -> int:
        return j % self.slots


def lagged_nonlinear_terms(
    history: _History,
    gather: Tensor,
    m: int,
    lag_one: bool,
    L_prev_now: Tensor,
    Z_now: Tensor,
    delta_next_now: Tensor,
    b: Tensor,
    eta: float,
    activation: str,
    work: Tensor,
    out: Tensor,
) -> Tensor:
    """``T^o_l[k] / eta^2`` into ``out`` ``(m, n_l, n_{l+1})`` for m lags: the numbers of
    :func:`nonlinear_term_from_past_factor` lag by lag, to rounding.

    ``gather`` indexes ``history.past`` viewed as ``(2 slots, n_l, n_{l-1})``: ``G_l[k-o]`` of the
    m lags, then ``W_{l-1}[k-o]^T`` of the lags that need ``zeta^o`` from a product. ``C^o`` and
    ``zeta^o - b`` of every lag are then one product with ``L_{l-1}[k]^T``, layer-major
    ``(n_l, n_b)`` per lag. When ``lag_one`` (the first lag is 1), ``zeta^1`` needs no product:
    ``W_{l-1}[k] = W_{l-1}[k-1] + eta dW_{l-1}[k-1]`` (FA without WN) and ``G_l[k-1] =
    dW_{l-1}[k-1]^T``, so ``zeta^1 = Z_l[k] - eta C^1`` with the engine's pre-activation, which
    the engine keeps layer-major too: every elementwise pass below runs in memory order.
    ``f'(zeta) * C`` for every lag is a few passes over one buffer (``history.fprime_times_at``)
    and ``(f'(zeta) * C)^T delta_{l+1}[k]`` one product for all lags. ``work`` holds at least
    :func:`work_size` numbers.
    """
    n_b = L_prev_now.shape[0]
    _, _, n_l, n_prev = history.past.shape
    first = 1 if lag_one else 0  # lags from here on need zeta from a product
    rows = gather.numel()  # 2 m - first
    past = torch.index_select(history.past.view(-1, n_l, n_prev), 0, gather, out=work[: rows * n_l * n_prev].view(rows, n_l, n_prev))
    used = rows * n_l * n_prev
    products = torch.mm(past.view(rows * n_l, n_prev), L_prev_now.T, out=work[used : used + rows * n_l * n_b].view(rows * n_l, n_b))
    used += rows * n_l * n_b
    C = products[: m * n_l].view(m, n_l, n_b)
    zeta = products[m * n_l :].view(m - first, n_l, n_b)  # zeta^o - b, lags from `first` on
    x = work[used : used + m * n_l * n_b].view(m, n_l, n_b)
    weighted = work[used + m * n_l * n_b : used + 2 * m * n_l * n_b].view(m, n_l, n_b)
    if lag_one:
        torch.add(Z_now.T, C[0], alpha=-eta, out=x[0])
    if first < m:
        torch.add(zeta, b.view(n_l, 1), out=x[first:])
    fprime_times_at(x, C, weighted, activation)
    return torch.mm(weighted.view(m * n_l, n_b), delta_next_now, out=out.view(m * n_l, -1)).view(m, n_l, -1)


def work_size(m: int, n_b: int, n_prev: int, n_l: int) -> int:
    """Numbers :func:`lagged_nonlinear_terms` needs for m lags of one layer (at most)."""
    return 2 * m * n_l * n_prev + 2 * m * n_l * n_b + 2 * m * n_l * n_b


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

    Each step records, per layer and lag, the Frobenius products the tables are made of
    (``<T, B^T>``, ``||T||``; the class sums' inner products and counts); ``finish`` turns them
    into angles and means at once, as the engine does with its metrics.
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
        self.capacity = max(1, min(horizon, num_iterations))  # the longest lag held
        slots = self.capacity + 1  # and the step's own slot
        sizes = net.sizes
        W = net.W[0]
        self.history = {l: _History(slots, sizes[l - 1], sizes[l], sizes[l + 1], s.num_classes, W) for l in self.layers}
        self.counts = torch.zeros((slots, 2, s.num_classes), dtype=W.dtype, device=W.device)  # class counts, both label sets
        self.B_t = {l: net.B[l].T.contiguous().reshape(-1) for l in self.layers}  # B is fixed in an FA run
        if self._true_labels is not None:
            self._true_labels = self._true_labels.to(net.W[0].device)
        self.permutation_generator = torch.Generator().manual_seed(int(spec.seed) + s.permutation_seed_offset)
        self.keys: dict[str, list] = {"terms": [], "similarity": []}
        self.values: dict[str, list[Tensor]] = {"terms": [], "similarity": []}
        self._labels_checked = False
        self._members: Tensor | None = None
        self._work: dict[int, tuple[Tensor, dict[int, Tensor]]] = {}

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
        n_b = labels.shape[0]
        if self._members is None or self._members.shape[1] != n_b:
            self._members = torch.empty((2 * s.num_classes, n_b), dtype=state.L[0].dtype, device=labels.device)
        members = self._members.zero_()
        members.view(2, s.num_classes, n_b).scatter_(1, torch.stack([labels, labels[permutation]]).unsqueeze(1), 1.0)
        now = k % (self.capacity + 1)
        counts = torch.sum(members, 1, out=self.counts[now].view(-1)).view(2, s.num_classes)
        reach = min(k, self.capacity)  # lags whose past step is in the buffer
        over_time = k % s.every == 0
        time_lags = {o for o in s.lags_over_time if o <= reach} if over_time else set()
        lag_lags = set(range(1, min(s.max_lag, reach) + 1)) if k in self.lag_iterations else set()
        lags = sorted(time_lags | lag_lags)
        eta = float(state.eta)
        if lags:
            m, lag_one = len(lags), lags[0] == 1
            slots = [(k - o) % (self.capacity + 1) for o in lags]
            index = torch.tensor(slots, device=counts.device)
            gather = torch.tensor([2 * j + 1 for j in slots] + [2 * j for j in slots[1 if lag_one else 0 :]], device=counts.device)
            # the similarity's counts, the same for every layer: within-class pairs and all pairs, (m, 2)
            counts_past = torch.index_select(self.counts, 0, index)
            within_count = (counts_past * counts).sum(-1)
            all_count = (counts_past.sum(-1) * counts.sum(-1)).expand_as(within_count)
            in_time, in_lag = [o in time_lags for o in lags], [o in lag_lags for o in lags]
        for l in self.layers:
            h = self.history[l]
            L_prev, delta_next = state.L[l - 1], state.delta[l + 1]
            n_prev = L_prev.shape[1]
            P = torch.mm(L_prev.T, delta_next, out=h.P[now])
            sums = torch.mm(members, L_prev, out=h.sums[now].view(-1, n_prev)).view(2, s.num_classes, n_prev)
            total = torch.sum(sums[0], 0, out=h.total[now])  # every row of L_{l-1}[k] is in one true class

            if lags:
                work, T = self._buffers(m, L_prev.shape[0], h)
                lagged_nonlinear_terms(h, gather, m, lag_one, L_prev, state.Z[l], delta_next, net.b[l - 1], eta,
                                       self.activation, work, T[0])
                # linear terms T_lin = eta^2 B^T P[k-o]^T P[k] = eta^2 (P[k-o] B)^T P[k], every lag at once
                torch.matmul(torch.matmul(torch.index_select(h.P, 0, index), net.B[l]).mT, P, out=T[1])
                T.mul_(eta**2)
                flat = T.view(2 * m, -1)
                self._record("terms", [(k, l, o, kind, t, g) for kind in TERM_KINDS for o, t, g in zip(lags, in_time, in_lag)],
                             torch.stack([flat @ self.B_t[l], torch.linalg.vector_norm(flat, dim=1)], 1))
                # the similarity: sum_c <s_c[k-o], s_c[k]> under both label sets, and <sum of rows, sum of rows>
                within_sum = (torch.index_select(h.sums, 0, index) * sums).sum((-2, -1))
                all_sum = (torch.index_select(h.total, 0, index) @ total).unsqueeze(1).expand_as(within_sum)
                self._record("similarity", [(k, l, o, name) for o in lags for name in ("true", "permuted")],
                             torch.stack([within_sum, within_count, all_sum, all_count], -1).view(2 * m, 4))

            h.past[now, 0].copy_(net.W[l - 1].T)
            h.past[now, 1].copy_(state.dW[l - 1].T)  # G_l[k]^T = dW_{l-1}[k], the engine's FA update (past_factor)

    def _buffers(self, m: int, n_b: int, h: _History) -> tuple[Tensor, Tensor]:
        """Work memory for m lags of one layer and the terms' buffer ``(2 kinds, m, n_l, n_{l+1})``;
        kept for the ordinary steps' lag count, made afresh at a lag-analysis k."""
        _, _, n_l, n_prev = h.past.shape
        n_next = h.P.shape[-1]
        work_need = work_size(m, n_b, n_prev, n_l)
        cached = self._work.get(m)
        if cached is None or cached[0].numel() < work_need:
            work = torch.empty(work_need, dtype=h.past.dtype, device=h.past.device)
            cached = (work, {})
            if m <= len(self.settings.lags_over_time):
                self._work[m] = cached  # the ordinary steps' lag count: kept
        work, terms = cached
        shape = (2, m, n_l, n_next)
        if shape not in terms:
            terms[shape] = torch.empty(shape, dtype=h.past.dtype, device=h.past.device)
        return work, terms[shape]

    def _record(self, table: str, keys: list[tuple], values: Tensor) -> None:
        """Rows of a table: one key tuple per row of ``values`` (kept on the device until ``finish``)."""
        self.keys[table].extend(keys)
        self.values[table].append(values)

    def finish(self) -> dict[str, pd.DataFrame]:
        products = _stacked(self.values["terms"], 2)  # <T, B^T>, ||T||
        B_sq = torch.zeros(max(self.layers, default=0) + 1, dtype=torch.float64)
        for l in self.layers:
            B_sq[l] = self.B_t[l].cpu().double().square().sum()
        layer = torch.tensor([key[1] for key in self.keys["terms"]], dtype=torch.long)
        angle = angle_from_products(products[:, 0], products[:, 1].square(), B_sq[layer])
        terms = _frame(self.keys["terms"], [torch.stack([angle, products[:, 1]], 1)],
                       ["iteration", "layer", "lag", "kind", "in_time", "in_lag"], ["angle", "norm"])
        columns = ["iteration", "layer", "lag", "kind", "angle", "norm"]
        tables = {
            "terms_lag": terms.loc[terms["in_lag"], columns].sort_values(["iteration", "layer", "lag"], kind="stable"),
            "terms_time": terms.loc[terms["in_time"], columns].sort_values(["iteration", "layer", "lag"], kind="stable"),
        }
        sim = _frame(self.keys["similarity"], self.values["similarity"], ["iteration", "layer", "lag", "labels"],
                     ["within_sum", "within_count", "all_sum", "all_count"])
        sim["within"] = sim["within_sum"] / sim["within_count"]
        sim["between"] = (sim["all_sum"] - sim["within_sum"]) / (sim["all_count"] - sim["within_count"])
        tables["terms_similarity"] = sim[["iteration", "layer", "lag", "labels", "within", "between"]]
        return {name: table.reset_index(drop=True) for name, table in tables.items()}


def _stacked(values: list[Tensor], width: int) -> Tensor:
    """Blocks of value rows as one float64 CPU tensor ``(rows, width)``, moved off the device in one go."""
    if not values:
        return torch.empty((0, width), dtype=torch.float64)
    return torch.cat(values).detach().to(torch.float64).cpu()


def _frame(keys: list[tuple], values: list[Tensor], key_columns: list[str], value_columns: list[str]) -> pd.DataFrame:
    """A table from row keys and blocks of value rows (float64)."""
    frame = pd.DataFrame(keys, columns=key_columns)
    array = _stacked(values, len(value_columns)).numpy()
    for i, column in enumerate(value_columns):
        frame[column] = array[:, i]
    for column in key_columns:
        if column in ("iteration", "layer", "lag"):
            frame[column] = frame[column].astype("int64")
    return frame
