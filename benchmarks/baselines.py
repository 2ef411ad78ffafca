"""What the engine is timed against: the same training step written three other ways.

One step of method §5 is: the forward pass on a minibatch, FA's deltas and updates, the BP shadow
update (BP's ``dW`` on the same batch and state), every per-iteration metric, the SGD step, and
WN where the condition has it (method §1, §3, §5). Each ``make_*`` below returns a ``step()`` closure
over its own network, drawn from the same seed as the engine's, cycling through ``problem.batches``:

- ``make_naive``: the step written plainly in torch -- fresh tensors, one call per layer and
  per metric, one ``.item()`` per recorded number (what one writes first);
- ``make_autograd``: FA through a custom ``torch.autograd.Function`` whose backward sends the
  error through ``B`` instead of ``W^T`` (the design of common FA libraries), the BP shadow as
  a second forward and backward through standard torch ops, the metrics as in ``make_naive``;
- ``make_products``: only the step's matrix products, preallocated -- the compute bound.

``step_flops`` counts those products' floating-point operations.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fa_analysis import data
from fa_analysis.engine import Engine, epoch_targets, initial_network
from fa_analysis.measures import angle_deg, angle_deg_concat
from fa_analysis.spec import RunSpec


@dataclass
class Problem:
    """One benchmark setting: network, batch, condition (method §5 defaults), data on the device."""

    sizes: tuple[int, ...] = (225, 50, 50, 50, 50, 50)
    batch_size: int = 1000
    n_batches: int = 60  # one epoch of the default protocol: X does not sit in cache
    eta: float = 5e-4
    wn: bool = False
    gamma: float | None = None
    ibn: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0

    def spec(self, **changes) -> RunSpec:
        """The engine's run spec of this setting (FA driving, metrics on, no snapshots)."""
        return RunSpec(**{
            "rule": "fa", "eta": self.eta, "wn": self.wn, "gamma": self.gamma, "ibn": self.ibn,
            "sizes": self.sizes, "batch_size": self.batch_size, "epochs": 1, "snapshot_every": 0,
            "metrics": True, "device": self.device, "dtype": self.dtype, "seed": self.seed, **changes,
        })

    def make_data(self) -> None:
        """Random inputs and labels of one epoch (the speed does not depend on the values)."""
        g = torch.Generator().manual_seed(self.seed + 1)
        n = self.batch_size * self.n_batches
        dtype = getattr(torch, self.dtype)
        self.X_epoch = torch.rand(n, self.sizes[0], generator=g).to(self.device, dtype)
        labels = torch.randint(0, data.N_CLASSES, (n,), generator=g).to(self.device)
        codes = data.phase_codes("five_hot", self.seed, 0).to(self.device, dtype)
        self.Y_epoch = epoch_targets(codes, labels)  # the engine's layout
        self.Y_rows = codes[labels]  # the plain layout, for the baselines
        nb = self.batch_size
        self.batches = [slice(i * nb, (i + 1) * nb) for i in range(self.n_batches)]

    def network(self):
        return initial_network(self.spec(), torch.device(self.device), getattr(torch, self.dtype))


def step_flops(sizes, batch_size: int, compare_rules: bool = True) -> int:
    """Floating-point operations of one step's matrix products (2 per multiply-add).

    Forward ``L_l W_l`` (every layer), FA's hidden deltas ``delta_{l+1} M_l`` (l = 1..d-1) and
    ``dW_l = L_l^T delta_{l+1}`` (every layer); with ``compare_rules`` also BP's deltas and updates
    (every layer but the output layer, whose update is the same under both rules).
    """
    d = len(sizes) - 1
    macs = [sizes[l] * sizes[l + 1] for l in range(d)]
    fa = sum(macs) + sum(macs[1:]) + sum(macs)
    bp = sum(macs[1:]) + sum(macs[:-1]) if compare_rules else 0
    return 2 * batch_size * (fa + bp)


# --------------------------------------------------------------------------------------------
# The engine, as train_run drives it
# --------------------------------------------------------------------------------------------


def make_engine(problem: Problem, metrics: bool = True, capacity: int = 4096) -> Callable[[], None]:
    """``Engine``'s ``compute`` + ``apply`` on consecutive minibatches of the epoch."""
    device, dtype = torch.device(problem.device), getattr(torch, problem.dtype)
    spec = problem.spec(metrics=metrics)
    engine = Engine(spec, initial_network(spec, device, dtype), capacity, device, dtype)
    X_epoch, Y_epoch = problem.X_epoch, problem.Y_epoch
    counter = itertools.count()
    batches = itertools.cycle(problem.batches)

    def step() -> None:
        batch = next(batches)
        engine.compute(next(counter) % capacity, X_epoch[batch], Y_epoch[batch])
        engine.apply()

    return step


# --------------------------------------------------------------------------------------------
# Naive torch
# --------------------------------------------------------------------------------------------


def _plain_metrics(W, B, dW_fa, dW_bp, delta, W0_norms, eta) -> dict[str, float]:
    """Every per-iteration measure of method §5 (but the loss), one call and one ``.item()`` each."""
    d = len(W)
    row = {"angle_W_Bt_all": angle_deg_concat(W[1:], [B[l].T for l in range(1, d)]).item()}
    for l in range(d):
        if l >= 1:
            row[f"angle_W_Bt_{l}"] = angle_deg(W[l], B[l].T).item()
            row[f"angle_dW_Bt_{l}"] = angle_deg(dW_fa[l], B[l].T).item()
        row[f"angle_dWfa_dWbp_{l}"] = angle_deg(dW_fa[l], dW_bp[l]).item()
        row[f"angle_dW_W_{l}"] = angle_deg(dW_fa[l], W[l]).item()
        norm_W = W[l].norm().item()
        row[f"norm_W_{l}"] = norm_W
        row[f"norm_W_rel_{l}"] = norm_W / W0_norms[l]
        row[f"ratio_dW_W_{l}"] = eta * dW_fa[l].norm().item() / norm_W
        row[f"norm_delta_{l + 1}"] = delta[l + 1].norm().item()
    return row


def _plain_wn(W: list[Tensor], gamma: float) -> None:
    for W_l in W:
        W_l.mul_(gamma / W_l.norm(dim=0))


def make_naive(problem: Problem) -> Callable[[], None]:
    """The step written plainly: fresh tensors, per-layer calls, ``f'`` from ``Z``, ``.item()`` per number."""
    net = problem.network()
    W, b, B, d, eta = net.W, net.b, net.B, net.d, problem.eta
    W0_norms = [w.norm().item() for w in W]
    history = []
    batches = itertools.cycle(problem.batches)

    def step() -> None:
        batch = next(batches)
        X, Y = problem.X_epoch[batch], problem.Y_rows[batch]
        Z, L = [None], [X]
        for l in range(d):
            Z.append(L[l] @ W[l] + b[l])
            L.append(torch.tanh(torch.relu(Z[-1])))
        fprime = [None] + [(z > 0).to(z.dtype) / torch.cosh(z) ** 2 for z in Z[1:]]
        E = Y - L[d]
        row = {"loss": 0.5 * (E**2).sum().item()}
        updates = {}
        for rule in ("fa", "bp"):
            delta = [None] * (d + 1)
            delta[d] = E * fprime[d]
            for l in range(d - 1, 0, -1):
                M = B[l] if rule == "fa" else W[l].T
                delta[l] = (delta[l + 1] @ M) * fprime[l]
            dW = [L[l].T @ delta[l + 1] for l in range(d)]
            db = [delta[l].sum(0) for l in range(1, d + 1)]
            updates[rule] = (dW, db, delta)
        dW, db, delta = updates["fa"]
        row.update(_plain_metrics(W, B, dW, updates["bp"][0], delta, W0_norms, eta))
        history.append(row)
        for l in range(d):
            W[l] += eta * dW[l]
            b[l] += eta * db[l]
        if problem.wn:
            _plain_wn(W, problem.gamma)

    return step


# --------------------------------------------------------------------------------------------
# Autograd with a custom FA function
# --------------------------------------------------------------------------------------------


class FALinear(torch.autograd.Function):
    """``Z = L W + 1 b`` whose backward passes ``grad_Z B`` to ``L`` (FA) instead of ``grad_Z W^T``."""

    @staticmethod
    def forward(ctx, L: Tensor, W: Tensor, b: Tensor, B: Tensor | None) -> Tensor:
        ctx.save_for_backward(L)
        ctx.B = B
        return torch.addmm(b, L, W)

    @staticmethod
    def backward(ctx, grad_Z: Tensor):
        (L,) = ctx.saved_tensors
        grad_L = grad_Z @ ctx.B if ctx.needs_input_grad[0] else None
        return grad_L, L.T @ grad_Z, grad_Z.sum(0), None


def make_autograd(problem: Problem) -> Callable[[], None]:
    """FA by autograd through ``FALinear``; the BP shadow by autograd through standard ops.

    The gradients of the summed loss are ``-dW`` and ``-db``; those with respect to ``Z_l`` are
    ``-delta_l`` (for the delta norms). The update is ``W -= eta grad``.
    """
    net = problem.network()
    W = [w.requires_grad_() for w in net.W]
    b = [x.requires_grad_() for x in net.b]
    B, d, eta = net.B, net.d, problem.eta
    W0_norms = [w.norm().item() for w in W]
    history = []
    batches = itertools.cycle(problem.batches)

    def forward(X: Tensor, layer) -> tuple[list[Tensor], Tensor]:
        Z, h = [], X
        for l in range(d):
            Z.append(layer(h, l))
            h = torch.tanh(torch.relu(Z[-1]))
        return Z, h

    def step() -> None:
        batch = next(batches)
        X, Y = problem.X_epoch[batch], problem.Y_rows[batch]
        Z, out = forward(X, lambda h, l: FALinear.apply(h, W[l], b[l], B[l]))
        loss = 0.5 * ((Y - out) ** 2).sum()
        grads = torch.autograd.grad(loss, Z + W + b)
        _, out_bp = forward(X, lambda h, l: torch.addmm(b[l], h, W[l]))
        grads_bp = torch.autograd.grad(0.5 * ((Y - out_bp) ** 2).sum(), W)
        with torch.no_grad():
            delta = [None] + [-g for g in grads[:d]]
            dW_fa = [-g for g in grads[d : 2 * d]]
            dW_bp = [-g for g in grads_bp]
            row = {"loss": loss.item()}
            row.update(_plain_metrics(W, B, dW_fa, dW_bp, delta, W0_norms, eta))
            history.append(row)
            for l in range(d):
                W[l] -= eta * grads[d + l]
                b[l] -= eta * grads[2 * d + l]
            if problem.wn:
                _plain_wn(W, problem.gamma)

    return step


# --------------------------------------------------------------------------------------------
# The matrix products alone
# --------------------------------------------------------------------------------------------


def make_products(problem: Problem, compare_rules: bool = True) -> Callable[[], None]:
    """The products ``step_flops`` counts, into preallocated row-major outputs, nothing else."""
    net = problem.network()
    W, b, B, d, nb = net.W, net.b, net.B, net.d, problem.batch_size
    device, dtype = torch.device(problem.device), getattr(torch, problem.dtype)
    g = torch.Generator().manual_seed(problem.seed + 2)
    L = [None] + [torch.rand(nb, n, generator=g).to(device, dtype) for n in problem.sizes[1:]]
    Z = [None] + [torch.empty_like(x) for x in L[1:]]
    rules = ("fa", "bp") if compare_rules else ("fa",)
    deltas = {rule: [None] + [torch.rand_like(x) for x in L[1:]] for rule in rules}
    dW = {rule: [torch.empty_like(w) for w in W] for rule in rules}
    batches = itertools.cycle(problem.batches)

    def step() -> None:
        L[0] = problem.X_epoch[next(batches)]
        for l in range(d):
            torch.addmm(b[l], L[l], W[l], out=Z[l + 1])
        for rule, delta in deltas.items():
            for l in range(d - 1, 0, -1):
                torch.mm(delta[l + 1], B[l] if rule == "fa" else W[l].T, out=delta[l])
            for l in range(d if rule == "fa" else d - 1):
                torch.mm(L[l].T, delta[l + 1], out=dW[rule][l])

    return step
