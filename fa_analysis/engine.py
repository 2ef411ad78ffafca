"""The engine: one training step on preallocated memory, and what it records (method §1, §3, §5).

``Engine.compute(k, X, Y)`` runs step ``k`` on the state before it -- forward pass, error, the
deltas of the driving rule and of the other rules, the updates -- and ``apply()`` makes the step.
The step also computes the other rules' updates on the same batch and state (for a BP run FA's,
for an FA run BP's, for a DFA run both, for a run of a rule of method §1.6 BP's), so
``angle(dW^FA_l, dW^BP_l)`` exists for every BP, FA and DFA run and ``angle(dW^rule_l, dW^BP_l)`` for
every run. Bank row ``BT`` holds the feedback in use (``_make_feedback``): the sign rules remake it
from ``W`` after every step, Kolen-Pollack learns it, so every rule whose deltas go through a ``B``
shares FA's batched products.
It records only Frobenius products -- one small Gram matrix per layer of the rows
``[W, B^T, dW, dW of the other rules]`` -- which ``metrics_table`` turns into angles and norms
once, at the end; ``find_divergence`` reads the same records.

Speed (benchmarks/README.md): ``W`` and ``b`` are views into one flat row
``theta = [W_0 .. W_{d-1} | b_1 .. b_d]`` (the snapshot layout, ``run_dir.theta_layout``), the
updates likewise, so the step is one ``theta += eta dtheta``. ``Z``, ``L``, ``f'`` and the deltas
of all layers are blocks of one layer-major buffer each, so ``f'`` is one call for all layers;
BP's and FA's deltas are one batched product per layer. The buffers and the plans of batched
products are made once, by ``Engine.__init__``; nothing syncs with the device inside an epoch.

Observers (``Observer``) see each step's ``StepState`` before it is applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from fa_analysis.learning_rules import CHANGING_FEEDBACK, DIRECT_RULES, FEEDBACK_RULES, SIGN_RULES
from fa_analysis.measures import angle_from_products
from fa_analysis.network import (
    ACTIVATIONS, Network, backward_deltas, draw_magnitudes, fixed_magnitudes, init_network, magnitude_generator,
)
from fa_analysis.normalization import normalize_columns_, unit_columns_
from fa_analysis.run_dir import theta_layout
from fa_analysis.spec import RunSpec

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# --------------------------------------------------------------------------------------------
# Observers
# --------------------------------------------------------------------------------------------


@dataclass
class StepState:
    """What one step computed, handed to observers before the update is applied.

    Tensors are views into buffers the loop reuses at the next step (clone what you keep), not
    always contiguous (use ``reshape``, not ``view``).
    ``X = L[0]`` is the batch input, ``Y`` its targets, ``labels`` its (possibly noisy) class
    labels, ``batch_index`` its dataset indices; ``Z``, ``L``, ``fprime`` (``f'(Z_l)``),
    ``delta`` (of the driving rule) are lists of length ``d+1``; ``dW``, ``db`` are the updates
    without ``eta`` (the step is ``W += eta dW``).
    """

    X: Tensor
    Y: Tensor
    labels: Tensor
    batch_index: Tensor
    Z: list[Tensor | None]
    L: list[Tensor]
    delta: list[Tensor | None]
    dW: list[Tensor]
    db: list[Tensor]
    eta: float
    fprime: list[Tensor | None]


@runtime_checkable
class Observer(Protocol):
    """An extra per-iteration analysis (e.g. alignment terms, shadow weights).

    ``start`` is called once after initialisation (WN and IBN applied), ``step(k, net, state)``
    at every iteration after the updates are computed and before they are applied (``net``
    holds the state at ``k``), ``finish`` once at the end (also after divergence); each
    DataFrame it returns is written as ``{name}.parquet`` into the run directory.
    """

    def start(self, net: Network, spec: RunSpec, num_iterations: int, device: torch.device) -> None: ...

    def step(self, k: int, net: Network, state: StepState) -> None: ...

    def finish(self) -> dict[str, pd.DataFrame]: ...


# --------------------------------------------------------------------------------------------
# The engine: one step on preallocated memory
# --------------------------------------------------------------------------------------------

THETA, BT, DRIVE = 0, 1, 2  # rows of the bank; rows 3 (and 4 for DFA) hold the other rules' updates
PAIR = ("bp", *FEEDBACK_RULES)  # BP and the (one) feedback rule computed share one batched product per layer


def _runs(keys: Sequence, start: int, end: int) -> list[tuple[int, int]]:
    """``[(a, e), ...]``: the maximal runs of equal consecutive ``keys[a:e]`` within ``[start, end)``."""
    runs: list[list[int]] = []
    for l in range(start, end):
        if runs and keys[runs[-1][0]] == keys[l]:
            runs[-1][1] = l + 1
        else:
            runs.append([l, l + 1])
    return [(a, e) for a, e in runs]


class Engine:
    """One training step on preallocated memory, and the per-iteration records (method §1, §3, §5).

    ``compute(k, X, Y)`` runs step ``k`` up to its updates, ``apply()`` makes the step. Memory:

    - ``bank`` is ``(R, P)``: row ``THETA`` = ``[W_0 .. W_{d-1} | b_1 .. b_d]`` flattened (the
      live network is views into it), row ``BT`` = ``[B_1^T .. ]`` in the layout of W (zeros for
      layer 0 and the biases), row ``DRIVE`` = the driving rule's ``[dW | db]``, the rows after
      it the other rules' ``dW``. The step is one ``theta += eta dtheta``.
    - ``Z``, ``L``, ``f'`` and ``E`` are stored layer-major, ``(n_1 + .. + n_d, n_b)``, layer ``l``
      in rows ``rows[l]``; the loop sees the ``(n_b, n_l)`` view ``buffer[rows[l]].T``. Every
      elementwise operation runs on contiguous memory and ``f'`` of all layers is one call.
    - The deltas of BP and FA (those of the two computed) are one ``(2, n_1 + .. + n_d, n_b)``
      buffer, BP first: in the transposed form ``delta_l^T = M_l^T delta_{l+1}^T`` the matrices
      ``M_l^T`` are ``W_l`` (BP) and ``B_l^T`` (FA), the bank rows THETA and BT, so both rules'
      hidden deltas are one batched product per layer and one multiplication by ``f'(Z_l)``.
    - ``dW_l = L_l^T delta_{l+1}`` of consecutive layers of one shape is one batched product per
      rule, written straight into the bank.
    """

    def __init__(self, spec: RunSpec, net: Network, num_iterations: int, device, dtype):
        self.spec, self.d, self.sizes = spec, net.d, net.sizes
        self.nb, self.device, self.dtype = spec.batch_size, device, dtype
        # the other rules, computed on the same batch and state for the metrics' update angles:
        # BP for an FA run, FA for a BP run, both for a DFA run, BP for a run of any other rule;
        # none without compare_rules
        compare = spec.metrics and spec.compare_rules
        others = [r for r in ("fa", "bp") if r != spec.rule] if spec.rule in ("bp", "fa", "dfa") else ["bp"]
        self.other_rules = others if compare else []
        self.row_of = {spec.rule: DRIVE, **{r: DRIVE + 1 + i for i, r in enumerate(self.other_rules)}}
        self.f = ACTIVATIONS[spec.activation].f
        self.fprime_fn = ACTIVATIONS[spec.activation].fprime
        self._make_bank(net)
        self._make_feedback(net)
        self._make_layer_buffers()
        self._plan_deltas()
        self._plan_updates()
        self._plan_records(num_iterations)

    # --- set-up: the buffers and the plans of batched products, made once

    def _make_bank(self, net: Network) -> None:
        """The bank (class docstring) and the live network as views into it, copied from ``net``."""
        sizes, d = self.sizes, self.d
        self.shapes = [(sizes[l], sizes[l + 1]) for l in range(d)]
        self.w_numel = [n * m for n, m in self.shapes]
        # theta's layout (run_dir.theta_layout): W_l in [w_bounds[l], w_bounds[l + 1]), then the
        # biases from P_W on, b_l's units in [unit_bounds[l - 1], unit_bounds[l]) of them
        starts = [start for _, start, _ in theta_layout(sizes)]
        self.w_bounds, self.P_W, self.N = starts[: d + 1], starts[d], sum(sizes[1:])
        self.unit_bounds = [start - self.P_W for start in starts[d:]] + [self.N]
        self.R = DRIVE + 1 + len(self.other_rules)
        self.bank = torch.zeros(self.R, self.P_W + self.N, device=self.device, dtype=self.dtype)
        self.rows = [None] + [slice(self.unit_bounds[l - 1], self.unit_bounds[l]) for l in range(1, d + 1)]

        self.theta = self.bank[THETA]
        self.W, self.b = self._w_views(THETA), self._b_views(THETA)
        for l in range(d):
            self.W[l].copy_(net.W[l])
            self.b[l].copy_(net.b[l])
        for l in range(1, d):
            self._w_views(BT)[l].copy_(net.B[l].T)
        self.net = Network(W=self.W, b=self.b, B=net.B, D=net.D, activation=net.activation, bias=net.bias)
        self.dtheta = self.bank[DRIVE]
        self.dW, self.db = self._w_views(DRIVE), self._b_views(DRIVE)
        self.db_all = self.bank[DRIVE, self.P_W:]  # [db_1 .. db_d]: unit-major like the deltas

    def _make_feedback(self, net: Network) -> None:
        """The feedback of the rules whose feedback changes, in bank row BT (method §1.6).

        Row BT always holds ``B_l^T`` of the feedback in use at the current state, so every record
        (``angle(W_l, B_l^T)``, ``angle(dW_l, B_l^T)``, ``||B_l||``) is to the feedback the next
        step uses. For these rules ``net.B`` are views of that row (``B_l = (B_l^T)^T``). Sign rules:
        ``Mt``, the magnitudes ``M_l^T`` in the layout of ``W_1 .. W_{d-1}``, and after every step
        ``B^T = Mt * sign(W)`` over those layers at once (brSF draws ``M`` first). Kolen-Pollack
        learns row BT in ``apply``.
        """
        rule, w_bounds, d = self.spec.rule, self.w_bounds, self.d
        self.hidden_W = slice(w_bounds[1], w_bounds[d])  # W_1 .. W_{d-1} in a row of the bank
        self.Bt_hidden = self.bank[BT, self.hidden_W]
        if rule not in CHANGING_FEEDBACK:
            return
        self.net.B = [None] + [self._w_views(BT)[l].T for l in range(1, d)]
        if rule not in SIGN_RULES:
            return
        self.Mt = torch.empty_like(self.Bt_hidden)
        self.Mt_layers = [None] + [self.Mt[w_bounds[l] - w_bounds[1] : w_bounds[l + 1] - w_bounds[1]]
                                   .view(self.sizes[l], self.sizes[l + 1]) for l in range(1, d)]
        spec = self.spec
        if rule == "brsf":
            self.magnitudes = magnitude_generator(spec.seed)
        else:
            self._set_magnitudes(fixed_magnitudes(rule, spec.rule_settings, net, spec.init_std, spec.seed, spec.ibn))
        self._refresh_feedback()

    def _set_magnitudes(self, M: list[Tensor | None]) -> None:
        for l in range(1, self.d):
            self.Mt_layers[l].copy_(M[l].T)

    def _refresh_feedback(self) -> None:
        """Sign rules: ``B_l^T = M_l^T * sign(W_l)`` of the current ``W``, brSF with magnitudes drawn anew."""
        spec = self.spec
        if spec.rule == "brsf":
            self._set_magnitudes(draw_magnitudes(self.sizes, spec.rule_settings["magnitude"], spec.init_std,
                                                 self.magnitudes, spec.ibn, device=self.device, dtype=self.dtype))
        torch.sign(self.theta[self.hidden_W], out=self.Bt_hidden).mul_(self.Mt)

    def _w_views(self, row: int | slice) -> list[Tensor]:
        """``W_0 .. W_{d-1}`` (or updates of them) as views into bank row(s) ``row``."""
        sizes, w_bounds = self.sizes, self.w_bounds
        return [self.bank[row, w_bounds[l] : w_bounds[l + 1]].unflatten(-1, (sizes[l], sizes[l + 1]))
                for l in range(self.d)]

    def _b_views(self, row: int) -> list[Tensor]:
        """``b_1 .. b_d`` (or updates of them) as views into bank row ``row``."""
        P_W, unit_bounds = self.P_W, self.unit_bounds
        return [self.bank[row, P_W + unit_bounds[l] : P_W + unit_bounds[l + 1]] for l in range(self.d)]

    def _layer_major(self, *lead: int) -> Tensor:
        """A buffer of every layer's units, ``(*lead, n_1 + .. + n_d, n_b)``."""
        return torch.empty(*lead, self.N, self.nb, device=self.device, dtype=self.dtype)

    def _layer_views(self, buffer: Tensor) -> list[Tensor | None]:
        """``[None, (n_b, n_1), .., (n_b, n_d)]``: the layers of a layer-major buffer as the loop sees them."""
        return [None] + [buffer[self.rows[l]].T for l in range(1, self.d + 1)]

    def _make_layer_buffers(self) -> None:
        """``Z``, ``L``, ``f'`` (layer-major) and the output error ``E``."""
        self.Z_all, self.L_all, self.fprime_all = self._layer_major(), self._layer_major(), self._layer_major()
        self.Z, self.L = self._layer_views(self.Z_all), self._layer_views(self.L_all)
        self.fprime = self._layer_views(self.fprime_all)
        self.E_all = torch.empty(self.sizes[-1], self.nb, device=self.device, dtype=self.dtype)
        self.E = self.E_all.T
        self.e = self.E_all.view(-1)

    def _plan_deltas(self) -> None:
        """BP and FA deltas side by side (see the class docstring); DFA's on their own."""
        d, rows = self.d, self.rows
        self.pair = [r for r in PAIR if r in self.row_of]
        first = THETA if self.pair[:1] == ["bp"] else BT
        self.pair_deltas = self._layer_major(len(self.pair)) if self.pair else None
        self.pair_Mt = self._w_views(slice(first, first + len(self.pair))) if self.pair else None
        # per layer, both rules' deltas (P, n_l, n_b) and f'(Z_l) (n_l, n_b), made once here
        self.pair_delta_blocks = [None] + [self.pair_deltas[:, rows[l]] for l in range(1, d + 1)] if self.pair else None
        self.fprime_blocks = [None] + [self.fprime_all[rows[l]] for l in range(1, d + 1)]
        # delta_d = E * f'(Z_d) for every rule of the pair at once: E seen once per rule
        self.E_pair = self.E_all.expand(len(self.pair), -1, -1)
        self.delta_of = {r: self._layer_views(self.pair_deltas[i]) for i, r in enumerate(self.pair)}
        self.delta_all_of = {r: self.pair_deltas[i] for i, r in enumerate(self.pair)}
        for rule in DIRECT_RULES:
            if rule in self.row_of:
                self.delta_all_of[rule] = buffer = self._layer_major()
                self.delta_of[rule] = self._layer_views(buffer)
        if "drtp" in self.row_of:  # c Y*, DRTP's signal, in the layout of E
            self.target_scale = self.spec.rule_settings["target_scale"]
            self.projected = self.E_all.clone().T if self.target_scale != 1.0 else None
        self.delta_all, self.delta = self.delta_all_of[self.spec.rule], self.delta_of[self.spec.rule]

    def _plan_updates(self) -> None:
        """``dW_l = L_l^T delta_{l+1}``: layer 0 from X; hidden layers l = 1.. in groups of one shape.

        Another rule skips the output layer: its ``dW_{d-1} = L_{d-1}^T delta_d`` is the same under
        every rule and is copied from the driving rule's. WN works on the same groups of
        equal-shaped layers, ``(g, n_l, n_{l+1})`` at a time.
        """
        d, sizes, rows, nb, w_bounds = self.d, self.sizes, self.rows, self.nb, self.w_bounds
        self.dW_plan = []
        for rule, row in self.row_of.items():
            last = d if rule == self.spec.rule else d - 1
            groups = _runs(self.shapes, 1, last)
            delta_all = self.delta_all_of[rule]
            batched = [
                (
                    self.L_all[rows[a].start : rows[e - 1].stop].view(e - a, sizes[a], nb),
                    delta_all[rows[a + 1].start : rows[e].stop].view(e - a, sizes[a + 1], nb).transpose(1, 2),
                    self.bank[row, w_bounds[a] : w_bounds[e]].view(e - a, sizes[a], sizes[a + 1]),
                )
                for a, e in groups
            ]
            dW_row = self._w_views(row)
            self.dW_plan.append((self.delta_of[rule][1], dW_row[0], batched, dW_row[d - 1] if last < d else None))
        self.W_groups = [
            self.theta[w_bounds[a] : w_bounds[e]].view(e - a, sizes[a], sizes[a + 1]) for a, e in _runs(self.shapes, 0, d)
        ]

    def _plan_records(self, K: int) -> None:
        """The per-iteration records (2 loss, per-layer Gram matrices, per-layer ``||delta_l||^2``)
        and the products that fill them."""
        d, R, rows, w_bounds, w_numel = self.d, self.R, self.rows, self.w_bounds, self.w_numel
        self.unit_norm = torch.empty(self.N, device=self.device, dtype=self.dtype)
        # (d, N) 0/1 matrix summing each layer's units: ||delta_l||^2 from per-unit sums of squares
        self.layer_of_unit = torch.zeros(d, self.N, device=self.device, dtype=self.dtype)
        for l in range(1, d + 1):
            self.layer_of_unit[l - 1, rows[l]] = 1
        # Layer l's rows W, B^T, dW, the other rules' dW flattened, (R, n_l n_{l+1}): their Gram
        # matrix holds every Frobenius product the metrics need. Consecutive layers of one size
        # share a batched product: gram_groups holds (first layer, last layer + 1, (g, R, n) view,
        # its transpose).
        self.gram_groups = []
        for a, e in _runs(w_numel, 0, d):
            bank_rows = self.bank[:, w_bounds[a] : w_bounds[e]].view(R, e - a, w_numel[a]).transpose(0, 1)
            self.gram_groups.append((a, e, bank_rows, bank_rows.transpose(1, 2)))
        self.loss_x2 = torch.full((K,), float("nan"), device=self.device, dtype=self.dtype)
        metrics = self.spec.metrics
        self.gram = torch.full((K, d, R, R), float("nan"), device=self.device, dtype=self.dtype) if metrics else None
        self.delta_sq = torch.full((K, d), float("nan"), device=self.device, dtype=self.dtype) if metrics else None

    # --- the step (method §1, §3)

    def compute(self, k: int, X: Tensor, Y: Tensor) -> tuple[list, list, Tensor, list, list, list]:
        """Step ``k`` up to its updates, on the state before it: returns ``Z, L, E, delta, dW, db``.

        ``X`` is the batch ``(n_b, n_0)``, ``Y`` its targets ``(n_b, n_d)``, best as the transposed
        view of a unit-major block (``epoch_targets``). Records the loss and, with metrics on, the
        other rules' updates, the Gram matrices and the delta norms. Nothing is
        applied (``apply``). The returned lists are views into buffers reused at the next step.
        """
        d, W, b, Z, L = self.d, self.W, self.b, self.Z, self.L
        # forward (method §1): Z_{l+1} = L_l W_l + 1 b_{l+1}, L_{l+1} = f(Z_{l+1}), L_0 = X
        L[0] = X
        for l in range(d):
            torch.addmm(b[l], L[l], W[l], out=Z[l + 1])
            self.f(Z[l + 1], L[l + 1])
        # E = Y* - L_d, loss = 1/2 sum E^2, f'(Z_l) of all layers in one call
        torch.sub(Y, L[d], out=self.E)
        torch.dot(self.e, self.e, out=self.loss_x2[k])
        self.fprime_fn(self.Z_all, self.L_all, self.fprime_all)

        # deltas: delta_d = E * f'(Z_d); delta_l^T = M_l^T delta_{l+1}^T * f'(Z_l)^T for BP and FA at once
        fprime = self.fprime_blocks
        if self.pair:
            deltas, Mt = self.pair_delta_blocks, self.pair_Mt
            torch.mul(self.E_pair, fprime[d], out=deltas[d])
            for l in range(d - 1, 0, -1):
                torch.bmm(Mt[l], deltas[l + 1], out=deltas[l]).mul_(fprime[l])
        if "dfa" in self.row_of:
            backward_deltas(self.net, Z, L, self.E, "dfa", fprime=self.fprime, out=self.delta_of["dfa"])
        if "drtp" in self.row_of:  # delta_l = (c Y* D_l) * f'(Z_l)
            target = Y if self.projected is None else torch.mul(Y, self.target_scale, out=self.projected)
            backward_deltas(self.net, Z, L, self.E, "drtp", fprime=self.fprime, out=self.delta_of["drtp"],
                            target=target)

        # updates: dW_l = L_l^T delta_{l+1} of every computed rule, db_l = 1^T delta_l (driving rule)
        Xt = X.T
        for delta_1, dW_0, batched, dW_out in self.dW_plan:
            torch.mm(Xt, delta_1, out=dW_0)
            for L_group, delta_group, dW_group in batched:
                torch.bmm(L_group, delta_group, out=dW_group)
            if dW_out is not None:
                dW_out.copy_(self.dW[d - 1])
        if self.spec.bias:  # db_l = 1^T delta_l for every layer at once: row sums of the delta buffer
            torch.sum(self.delta_all, 1, out=self.db_all)

        if self.spec.metrics:
            gram_k = self.gram[k]
            for first, end, bank_rows, bank_rows_T in self.gram_groups:
                torch.bmm(bank_rows, bank_rows_T, out=gram_k[first:end])
            torch.linalg.vector_norm(self.delta_all, dim=1, out=self.unit_norm)
            torch.mv(self.layer_of_unit, self.unit_norm.square_(), out=self.delta_sq[k])
        return Z, L, self.E, self.delta, self.dW, self.db  # db: views of db_all, zeros that stay zero with bias off

    def apply(self) -> None:
        """The step ``W += eta dW``, ``b += eta db`` as one flat update (method §1), then WN (method §3).

        Kolen-Pollack (method §1.6): ``W <- (1 - lambda) W + eta dW`` and ``B^T <- (1 - lambda) B^T +
        eta_B dW`` over layers 1..d-1 of the bank at once. The sign rules then make the next step's
        feedback from the new ``W``.
        """
        spec = self.spec
        if spec.rule == "kp":
            decay, eta_B = spec.rule_settings["decay"], spec.rule_settings["eta_feedback"]
            self.theta[: self.P_W].mul_(1 - decay)
            self.Bt_hidden.mul_(1 - decay).add_(self.bank[DRIVE, self.hidden_W], alpha=spec.eta if eta_B is None else eta_B)
        self.theta.add_(self.dtheta, alpha=spec.eta)
        if spec.wn:
            normalize_columns_(self.W_groups, spec.gamma)
        if spec.rule in SIGN_RULES:
            self._refresh_feedback()


# --------------------------------------------------------------------------------------------
# The state at k = 0, the targets, and what the records say
# --------------------------------------------------------------------------------------------


def initial_network(spec: RunSpec, device, dtype) -> Network:
    """The state at ``k = 0`` (method §2-§3): seeded ``W``, ``b``, ``B``, ``D``, then WN and IBN if asked."""
    net = init_network(
        spec.sizes, spec.init_std, bias=spec.bias, activation=spec.activation, seed=spec.seed,
        device=device, dtype=dtype,
    )
    if spec.wn:
        normalize_columns_(net.W, spec.gamma)
    if spec.ibn:
        unit_columns_(net.B)
    return net


def epoch_targets(codes: Tensor, labels: Tensor) -> Tensor:
    """Targets ``Y*`` of the examples ``labels`` (in minibatch order), ``(n, n_d)``, stored unit-major
    (the transposed view of an ``(n_d, n)`` tensor) like ``L_d``, so ``E = Y* - L_d`` runs on
    matching layouts; a minibatch is a slice of rows."""
    return codes.T.index_select(1, labels).T


def find_divergence(engine: Engine, k0: int, k1: int) -> dict | None:
    """The first iteration in ``[k0, k1)`` with a non-finite loss or weight, or the state at ``k1``."""
    bad = ~torch.isfinite(engine.loss_x2[k0:k1])
    if engine.gram is not None:
        bad |= ~torch.isfinite(engine.gram[k0:k1, :, THETA, THETA]).all(dim=1)
    if bad.any():
        k = k0 + int(torch.nonzero(bad)[0])
        reason = "non-finite loss" if not torch.isfinite(engine.loss_x2[k]) else "non-finite weights"
        return {"iteration": k, "reason": reason}
    if not bool(torch.isfinite(engine.theta).all()):
        return {"iteration": k1, "reason": "non-finite weights"}
    return None


def metrics_table(engine: Engine, rows: int, n_batches: int) -> pd.DataFrame:
    """The per-iteration table of docs/design.md from the recorded Frobenius products."""
    iteration = np.arange(rows)
    columns: dict[str, Any] = {
        "iteration": iteration,
        "epoch": iteration // n_batches,
        "loss": (0.5 * engine.loss_x2[:rows].to(torch.float64)).cpu().numpy(),
    }
    if engine.gram is None:
        return pd.DataFrame(columns)
    G = engine.gram[:rows].to(torch.float64).cpu()
    d = G.shape[1]
    fa, bp = engine.row_of.get("fa"), engine.row_of.get("bp")

    def g(l: int | slice, i: int, j: int) -> Tensor:
        return G[:, l, i, j]

    hidden = slice(1, d)
    columns["angle_W_Bt_all"] = angle_from_products(
        g(hidden, THETA, BT).sum(1), g(hidden, THETA, THETA).sum(1), g(hidden, BT, BT).sum(1)
    ).numpy()
    for l in range(1, d):
        columns[f"angle_W_Bt_{l}"] = angle_from_products(g(l, THETA, BT), g(l, THETA, THETA), g(l, BT, BT)).numpy()
    if fa is not None and bp is not None:  # the update angle needs both rules (compare_rules)
        for l in range(d):
            columns[f"angle_dWfa_dWbp_{l}"] = angle_from_products(g(l, fa, bp), g(l, fa, fa), g(l, bp, bp)).numpy()
    if bp is not None and engine.other_rules:  # the driving rule's update against BP's (0 for a BP run), compare_rules
        for l in range(d):
            columns[f"angle_dWrule_dWbp_{l}"] = angle_from_products(
                g(l, DRIVE, bp), g(l, DRIVE, DRIVE), g(l, bp, bp)).numpy()
    for l in range(1, d):
        columns[f"angle_dW_Bt_{l}"] = angle_from_products(g(l, DRIVE, BT), g(l, DRIVE, DRIVE), g(l, BT, BT)).numpy()
    for l in range(d):
        columns[f"angle_dW_W_{l}"] = angle_from_products(g(l, DRIVE, THETA), g(l, DRIVE, DRIVE), g(l, THETA, THETA)).numpy()
    norm_W = torch.sqrt(G[:, :, THETA, THETA])
    norm_dW = torch.sqrt(G[:, :, DRIVE, DRIVE])
    for l in range(d):
        columns[f"norm_W_{l}"] = norm_W[:, l].numpy()
    for l in range(d):
        columns[f"norm_W_rel_{l}"] = (norm_W[:, l] / norm_W[0, l]).numpy()
    for l in range(1, d):  # the feedback in use (method §1.6: it changes under the sign rules and KP)
        columns[f"norm_B_{l}"] = torch.sqrt(G[:, l, BT, BT]).numpy()
    for l in range(d):
        columns[f"ratio_dW_W_{l}"] = (engine.spec.eta * norm_dW[:, l] / norm_W[:, l]).numpy()
    norm_delta = torch.sqrt(engine.delta_sq[:rows].to(torch.float64).cpu())
    for l in range(1, d + 1):
        columns[f"norm_delta_{l}"] = norm_delta[:, l - 1].numpy()
    return pd.DataFrame(columns)
