"""The network and its learning rules: forward pass, deltas of every rule, updates (method §1-§2).

Row-vector convention as in the paper. Layers ``l = 0..d``; a minibatch ``L_0 = X`` is
``(n_b, n_0)``. Indexing follows docs/design.md:

- ``W[l]``, ``l = 0..d-1``, shape ``(n_l, n_{l+1})``;
- ``b[l-1]`` is ``b_l``, ``l = 1..d``, shape ``(n_l,)``;
- ``B[l]``, ``l = 1..d-1``, shape ``(n_{l+1}, n_l)`` (the shape of ``W_l^T``); ``B[0] = None``;
- ``D[l]``, ``l = 1..d-1``, shape ``(n_d, n_l)`` (DFA: output error straight to layer l; DRTP: the
  target straight to layer l); ``D[0] = None``;
- for the rules whose feedback changes (sign symmetry, Kolen-Pollack), ``B[l]`` is the feedback in
  use at the step (method §1.6): ``sign_feedback`` makes it from ``W`` and the magnitudes ``M``,
  ``kp_step_`` learns it;
- ``Z[l]``, ``L[l]``, ``delta[l]`` are lists of length ``d+1`` with ``Z[0] = delta[0] = None``.

Every function is a pure function of tensors. The activations and ``backward_deltas``, which the
engine calls on its own memory, take optional ``out`` buffers; the numbers are the same either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fa_analysis.learning_rules import FEEDBACK_RULES, MAGNITUDE_SEED_OFFSET, RULES, uniform_bound
from fa_analysis.normalization import unit_columns_


# --------------------------------------------------------------------------------------------
# Activations: pairs (f, f')
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activation:
    """An activation ``L = f(Z)`` and its derivative ``f'(Z)``.

    ``f(Z, out)`` writes ``f(Z)``; ``fprime(Z, L, out)`` writes ``f'(Z)`` given ``L = f(Z)``,
    using ``L`` wherever that is exact and cheaper than recomputing from ``Z``.
    """

    name: str
    f: Callable[[Tensor, Tensor | None], Tensor]
    fprime: Callable[[Tensor, Tensor, Tensor | None], Tensor]


def _tanh_relu(Z: Tensor, out: Tensor | None = None) -> Tensor:
    """``f(x) = tanh(relu(x))``."""
    out = torch.clamp(Z, min=0, out=out) if out is not None else torch.clamp(Z, min=0)
    return _tanh_(out)


def _tanh_relu_prime(Z: Tensor, L: Tensor, out: Tensor | None = None) -> Tensor:
    """``f'(x) = 1[x>0] sech^2(x) = sign(L) - L^2``, exact: ``L = tanh(relu(x))`` is 0 where ``x <= 0``
    and positive where ``x > 0``, so ``sign(L)`` is the step ``1[x>0]`` (one pass, no comparison)."""
    return _sign(L, out).addcmul_(L, L, value=-1)


def _sign(L: Tensor, out: Tensor | None) -> Tensor:
    return torch.sign(L, out=out) if out is not None else torch.sign(L)


_NUMPY_FLOATS = (torch.float32, torch.float64)


def _tanh_(x: Tensor, out: Tensor | None = None) -> Tensor:
    """``tanh(x)`` into ``out`` (default: in place). A CPU tensor goes through NumPy's vectorised
    tanh on the same memory: measured within 1.4 ulp of the exact value (torch's: 0.5 ulp) and 7
    times faster than torch's CPU tanh (torch 2.14, AVX-512). Tensors autograd must see, and
    other devices, stay in torch."""
    out = x if out is None else out
    if all(t.device.type == "cpu" and t.dtype in _NUMPY_FLOATS and not t.requires_grad for t in (x, out)):
        np.tanh(x.numpy(), out=out.numpy())
        return out
    return x.tanh_() if out is x else torch.tanh(x, out=out)


def _relu(Z: Tensor, out: Tensor | None = None) -> Tensor:
    return torch.clamp(Z, min=0, out=out) if out is not None else torch.clamp(Z, min=0)


def _relu_prime(Z: Tensor, L: Tensor, out: Tensor | None = None) -> Tensor:
    """``f'(x) = 1[x>0] = sign(L)``: ``L = relu(x)`` is 0 where ``x <= 0`` and positive where ``x > 0``."""
    return _sign(L, out)


def _tanh(Z: Tensor, out: Tensor | None = None) -> Tensor:
    if Z.requires_grad:
        return torch.tanh(Z)
    return _tanh_(Z, out if out is not None else torch.empty_like(Z))


def _tanh_prime(Z: Tensor, L: Tensor, out: Tensor | None = None) -> Tensor:
    """``f'(x) = sech^2(x) = 1 - L^2``."""
    out = torch.mul(L, L, out=out) if out is not None else L * L
    return torch.sub(1, out, out=out)


def _sigmoid(Z: Tensor, out: Tensor | None = None) -> Tensor:
    return torch.sigmoid(Z, out=out) if out is not None else torch.sigmoid(Z)


def _sigmoid_prime(Z: Tensor, L: Tensor, out: Tensor | None = None) -> Tensor:
    """``f'(x) = L (1 - L)``."""
    out = torch.sub(1, L, out=out) if out is not None else 1 - L
    return out.mul_(L)


def _linear(Z: Tensor, out: Tensor | None = None) -> Tensor:
    return out.copy_(Z) if out is not None else Z.clone()


def _linear_prime(Z: Tensor, L: Tensor, out: Tensor | None = None) -> Tensor:
    """``f'(x) = 1``."""
    return out.fill_(1) if out is not None else torch.ones_like(Z)


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("tanh_relu", _tanh_relu, _tanh_relu_prime),
        Activation("relu", _relu, _relu_prime),
        Activation("tanh", _tanh, _tanh_prime),
        Activation("sigmoid", _sigmoid, _sigmoid_prime),
        Activation("linear", _linear, _linear_prime),
    )
}


def get_activation(name: str) -> Activation:
    """The activation called ``name``; a ValueError lists the accepted names."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


# --------------------------------------------------------------------------------------------
# The network and its seeded initialisation
# --------------------------------------------------------------------------------------------


@dataclass
class Network:
    """Forward weights ``W``, biases ``b``, fixed feedback weights ``B`` (FA) and ``D`` (DFA).

    Shapes and indexing in the module docstring. ``bias`` False: ``b`` holds zeros that stay zero.
    """

    W: list[Tensor]
    b: list[Tensor]
    B: list[Tensor | None]
    D: list[Tensor | None]
    activation: str = "tanh_relu"
    bias: bool = True

    @property
    def d(self) -> int:
        """Depth: the number of weight matrices."""
        return len(self.W)

    @property
    def sizes(self) -> list[int]:
        """``[n_0, ..., n_d]``."""
        return [self.W[0].shape[0]] + [w.shape[1] for w in self.W]


def init_network(
    sizes: Sequence[int],
    init_std: float,
    *,
    bias: bool = True,
    activation: str = "tanh_relu",
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Network:
    """Initial ``W``, ``b``, ``B``, ``D``, every entry ~ N(0, init_std^2) (method §2).

    Drawn in a fixed order -- ``W`` layer by layer, then ``b``, then ``B``, then ``D`` -- from one
    CPU generator in float64 (then cast and moved), so the same seed gives the same initial W, B, b
    under every rule, with or without bias, on every device. Pass ``seed`` or ``generator``.
    """
    sizes = [int(n) for n in sizes]
    if len(sizes) < 2 or any(n < 1 for n in sizes):
        raise ValueError(f"sizes must list at least two positive layer sizes, got {sizes}")
    if not init_std > 0:
        raise ValueError(f"init_std must be positive, got {init_std}")
    get_activation(activation)
    if (seed is None) == (generator is None):
        raise ValueError("init_network needs exactly one of seed= or generator=")
    if generator is None:
        generator = torch.Generator().manual_seed(int(seed))
    d = len(sizes) - 1

    def draw(*shape: int) -> Tensor:
        x = torch.randn(*shape, generator=generator, dtype=torch.float64) * init_std
        return x.to(device=device, dtype=dtype)

    W = [draw(sizes[l], sizes[l + 1]) for l in range(d)]
    b = [draw(sizes[l]) for l in range(1, d + 1)]
    B = [None] + [draw(sizes[l + 1], sizes[l]) for l in range(1, d)]
    D = [None] + [draw(sizes[d], sizes[l]) for l in range(1, d)]
    if not bias:
        b = [torch.zeros_like(b_l) for b_l in b]
    return Network(W=W, b=b, B=B, D=D, activation=activation, bias=bias)


# --------------------------------------------------------------------------------------------
# Forward pass, deltas, updates
# --------------------------------------------------------------------------------------------


def forward(
    net: Network,
    X: Tensor,
) -> tuple[list[Tensor | None], list[Tensor]]:
    """Forward pass (method §1): ``Z_{l+1} = L_l W_l + 1 b_{l+1}``, ``L_{l+1} = f(Z_{l+1})``, ``L_0 = X``.

    Returns ``(Z, L)``, lists of length ``d+1`` with ``Z[0] = None`` and ``L[0] = X``.
    """
    f = get_activation(net.activation).f
    Z: list[Tensor | None] = [None]
    L: list[Tensor] = [X]
    for l in range(net.d):
        Z.append(torch.addmm(net.b[l], L[l], net.W[l]))
        L.append(f(Z[l + 1]))
    return Z, L


def derivatives(net: Network, Z: Sequence[Tensor | None], L: Sequence[Tensor]) -> list[Tensor | None]:
    """``f'(Z_l)`` for ``l = 1..d`` (list of length ``d+1``, entry 0 None), derived from ``L_l`` where exact."""
    fprime = get_activation(net.activation).fprime
    return [None] + [fprime(Z[l], L[l]) for l in range(1, net.d + 1)]


def output_error(Y_star: Tensor, L_d: Tensor) -> Tensor:
    """``E = Y* - L_d`` (method §1); the loss is ``0.5 * sum(E^2)``."""
    return Y_star - L_d


def loss(E: Tensor) -> Tensor:
    """``loss = 1/2 sum_ij E_ij^2``: a sum over the batch, not a mean (method §1)."""
    e = E.reshape(-1)
    return 0.5 * torch.dot(e, e)


def backward_deltas(
    net: Network,
    Z: Sequence[Tensor | None],
    L: Sequence[Tensor],
    E: Tensor,
    rule: str,
    *,
    fprime: Sequence[Tensor | None] | None = None,
    out: Sequence[Tensor | None] | None = None,
    delta_d: Tensor | None = None,
    target: Tensor | None = None,
    target_scale: float = 1.0,
) -> list[Tensor | None]:
    """Deltas of ``rule`` (method §1.3, §1.6), a list of length ``d+1`` with ``delta[0] = None``.

    - output: ``delta_d = E * f'(Z_d)``;
    - ``bp``:  ``delta_l = (delta_{l+1} W_l^T) * f'(Z_l)``;
    - ``fa``, ``usf``, ``frsf``, ``brsf``, ``kp``: ``delta_l = (delta_{l+1} B_l) * f'(Z_l)``, with
      ``B_l = net.B[l]`` the rule's feedback at this step (FA: fixed; the sign rules:
      ``sign_feedback``; Kolen-Pollack: learned by ``kp_step_``);
    - ``dfa``: ``delta_l = (delta_d D_l) * f'(Z_l)``;
    - ``drtp``: ``delta_l = (c Y* D_l) * f'(Z_l)``, the target ``Y*`` (``target``) scaled by
      ``c = target_scale`` in place of the error;

    for ``l = d-1..1``. ``fprime`` (from ``derivatives``) saves recomputing ``f'``; ``out``
    buffers are written in place. ``delta_d`` is the same under every rule: pass one already
    computed (for another rule) to reuse it.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")
    d = net.d
    if fprime is None:
        fprime = derivatives(net, Z, L)
    delta: list[Tensor | None] = [None] * (d + 1)
    delta[d] = delta_d if delta_d is not None else _mul(E, fprime[d], out[d] if out is not None else None)
    if rule == "drtp":
        if target is None:
            raise ValueError("rule 'drtp' needs the target: pass target=Y*")
        projected = target if target_scale == 1.0 else target_scale * target
    for l in range(d - 1, 0, -1):
        if rule == "bp":
            upstream, M = delta[l + 1], net.W[l].T
        elif rule in FEEDBACK_RULES:
            upstream, M = delta[l + 1], net.B[l]
        elif rule == "dfa":
            upstream, M = delta[d], net.D[l]
        else:  # drtp
            upstream, M = projected, net.D[l]
        buf = out[l] if out is not None else None
        delta[l] = (torch.mm(upstream, M, out=buf) if buf is not None else upstream @ M).mul_(fprime[l])
    return delta


def _mul(a: Tensor, b: Tensor, out: Tensor | None) -> Tensor:
    return torch.mul(a, b, out=out) if out is not None else a * b


def weight_updates(
    net: Network, L: Sequence[Tensor], delta: Sequence[Tensor | None]
) -> tuple[list[Tensor], list[Tensor]]:
    """Updates without the learning rate (method §1): ``dW_l = L_l^T delta_{l+1}``, ``db_{l+1} = 1^T delta_{l+1}``.

    The step is ``W_l += eta * dW_l``, ``b += eta * db`` (``sgd_step_``). With bias off ``db``
    is zero.
    """
    return dW_updates(L, delta), db_updates(net, delta)


def dW_updates(L: Sequence[Tensor], delta: Sequence[Tensor | None]) -> list[Tensor]:
    """``dW_l = L_l^T delta_{l+1}`` for ``l = 0..d-1``."""
    return [L[l].T @ delta[l + 1] for l in range(len(L) - 1)]


def db_updates(net: Network, delta: Sequence[Tensor | None]) -> list[Tensor]:
    """``db_l = 1^T delta_l`` for ``l = 1..d`` (``db[l-1]`` is ``db_l``); zeros with bias off."""
    if not net.bias:
        return [torch.zeros_like(b) for b in net.b]
    return [delta[l].sum(0) for l in range(1, net.d + 1)]


def sgd_step_(net: Network, dW: Sequence[Tensor], db: Sequence[Tensor], eta: float) -> None:
    """Plain SGD in place (method §1): ``W_l <- W_l + eta dW_l``, ``b <- b + eta db`` (bias on only)."""
    for l in range(net.d):
        net.W[l].add_(dW[l], alpha=eta)
        if net.bias:
            net.b[l].add_(db[l], alpha=eta)


# --------------------------------------------------------------------------------------------
# The feedback of the rules whose feedback changes (method §1.6)
# --------------------------------------------------------------------------------------------


def sign_feedback(W: Sequence[Tensor], M: Sequence[Tensor | None]) -> list[Tensor | None]:
    """Sign-symmetric feedback ``B_l = M_l * sign(W_l)^T`` for ``l = 1..d-1`` (method §1.6; sign(0) = 0)."""
    return [None] + [M[l] * torch.sign(W[l]).T for l in range(1, len(W))]


def draw_magnitudes(
    sizes: Sequence[int], distribution: str, init_std: float, generator: torch.Generator, ibn: bool,
    *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
) -> list[Tensor | None]:
    """Random magnitudes ``M_l`` of the shape of ``B_l``, ``(n_{l+1}, n_l)``, layer by layer (method §1.6).

    ``half_normal``: ``|x|``, ``x ~ N(0, sigma^2)``; ``uniform``: ``U(0, sqrt(3) sigma)``; both have
    the second moment ``sigma^2`` of FA's entries. Drawn from ``generator`` in float64 on the CPU,
    then cast and moved (method §2.2); with ``ibn`` every column to norm 1, as IBN does to ``B``.
    """
    d = len(sizes) - 1
    M: list[Tensor | None] = [None]
    for l in range(1, d):
        shape = (sizes[l + 1], sizes[l])
        if distribution == "half_normal":
            M_l = torch.randn(*shape, generator=generator, dtype=torch.float64).abs_().mul_(init_std)
        elif distribution == "uniform":
            M_l = torch.rand(*shape, generator=generator, dtype=torch.float64).mul_(uniform_bound(init_std))
        else:
            raise ValueError(f"magnitude distribution must be half_normal or uniform, got {distribution!r}")
        M.append(M_l)
    if ibn:
        unit_columns_(M)
    return [None] + [M_l.to(device=device, dtype=dtype) for M_l in M[1:]]


def magnitude_generator(seed: int) -> torch.Generator:
    """The generator of the drawn magnitudes (frSF's uniform ones, brSF's every minibatch): seed ``s + 3 000 017``."""
    return torch.Generator().manual_seed(int(seed) + MAGNITUDE_SEED_OFFSET)


def fixed_magnitudes(
    rule: str, settings: dict, net: Network, init_std: float, seed: int, ibn: bool,
) -> list[Tensor | None]:
    """The magnitudes ``M_l`` of uSF and frSF, fixed for the run (method §1.6).

    uSF: every entry ``c`` (``settings['scale']``, ``sigma`` when None); with IBN ``1 / sqrt(n_{l+1})``,
    so every column of ``B_l`` has norm 1. frSF ``half_normal``: ``|B_l|``, the magnitudes of the
    run's own FA draw (after IBN, if any); ``uniform``: drawn from ``magnitude_generator(seed)``.
    """
    like = net.W[0]
    sizes = net.sizes
    if rule == "usf":
        c = settings["scale"] if settings["scale"] is not None else init_std
        return [None] + [torch.full((sizes[l + 1], sizes[l]), 1 / sizes[l + 1] ** 0.5 if ibn else c,
                                    dtype=like.dtype, device=like.device) for l in range(1, net.d)]
    if rule == "frsf" and settings["magnitude"] == "half_normal":
        return [None] + [B_l.abs() for B_l in net.B[1:]]
    if rule == "frsf":
        return draw_magnitudes(sizes, "uniform", init_std, magnitude_generator(seed), ibn,
                               device=like.device, dtype=like.dtype)
    raise ValueError(f"rule {rule!r} has no fixed magnitudes (usf and frsf have)")


def kp_step_(net: Network, dW: Sequence[Tensor], db: Sequence[Tensor], eta: float, decay: float,
             eta_feedback: float | None) -> None:
    """Kolen-Pollack's step in place (method §1.6): ``W_l <- (1 - lambda) W_l + eta dW_l`` (every layer),
    ``b <- b + eta db``, ``B_l <- (1 - lambda) B_l + eta_B dW_l^T`` (``l = 1..d-1``; ``eta_B = eta`` when None)."""
    eta_B = eta if eta_feedback is None else eta_feedback
    for l in range(net.d):
        net.W[l].mul_(1 - decay).add_(dW[l], alpha=eta)
        if net.bias:
            net.b[l].add_(db[l], alpha=eta)
    for l in range(1, net.d):
        net.B[l].mul_(1 - decay).add_(dW[l].T, alpha=eta_B)
