"""A small synthetic FA run that drives observers exactly as the training loop does.

Class-structured inputs (class means plus noise), one-hot targets, a fixed cycle of minibatches
(the same order every epoch, as in method §4). Built from the engine's pure functions so that the
tests can also keep the whole history and compute sums over all lags by brute force.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fa_analysis import alignment_terms as at
from fa_analysis.engine import StepState
from fa_analysis.network import backward_deltas, derivatives, forward, init_network, output_error, sgd_step_, weight_updates
from fa_analysis.spec import RunSpec


@dataclass
class Step:
    """A clone of what one step saw: the network before the step and the step's signals."""

    W: list
    b: list
    Z: list
    L: list
    delta: list
    fprime: list
    dW: list
    labels: torch.Tensor


@dataclass
class SyntheticRun:
    spec: RunSpec
    net: object
    labels: torch.Tensor  # (n_batches, batch_size): the class of every training example
    steps: list[Step] = field(default_factory=list)
    frames: dict = field(default_factory=dict)


def synthetic_fa_run(
    observers=(),
    *,
    sizes=(24, 16, 12, 10),
    activation="tanh_relu",
    eta=0.01,
    iterations=40,
    batch_size=20,
    n_batches=5,
    seed=0,
    bias=True,
    init_std=0.3,
    keep_history=False,
    observer_settings=None,
    dtype=torch.float64,
    device="cpu",
) -> SyntheticRun:
    """Train an FA network for ``iterations`` steps on synthetic data, calling ``observers``."""
    spec = RunSpec(
        experiment="terms", condition="fa_synthetic", seed=seed, sizes=tuple(sizes), activation=activation,
        init_std=init_std, bias=bias, targets="one_hot", rule="fa", eta=eta, batch_size=batch_size,
        epochs=1, dtype="float64" if dtype == torch.float64 else "float32", observers=observer_settings or {},
        device=device,
    )
    net = init_network(sizes, init_std, bias=bias, activation=activation, seed=seed, dtype=dtype, device=device)
    generator = torch.Generator().manual_seed(seed + 1)
    n_classes, n_in = sizes[-1], sizes[0]
    labels = torch.randint(0, n_classes, (n_batches, batch_size), generator=generator)
    class_means = torch.randn(n_classes, n_in, generator=generator, dtype=dtype)
    X = class_means[labels] + 0.5 * torch.randn(n_batches, batch_size, n_in, generator=generator, dtype=dtype)
    Y = torch.eye(n_classes, dtype=dtype)[labels]
    labels, X, Y = labels.to(device), X.to(device), Y.to(device)
    run = SyntheticRun(spec=spec, net=net, labels=labels)
    for observer in observers:
        observer.start(net, spec, iterations, torch.device(device))
    for k in range(iterations):
        i = k % n_batches
        Z, L = forward(net, X[i])
        E = output_error(Y[i], L[-1])
        fprime = derivatives(net, Z, L)
        delta = backward_deltas(net, Z, L, E, "fa", fprime=fprime)
        dW, db = weight_updates(net, L, delta)
        state = StepState(X=X[i], Y=Y[i], labels=labels[i], batch_index=torch.arange(batch_size, device=device) + i * batch_size,
                          Z=Z, L=L, delta=delta, dW=dW, db=db, eta=eta, fprime=fprime)
        for observer in observers:
            observer.step(k, net, state)
        if keep_history:
            clone = lambda xs: [None if x is None else x.clone() for x in xs]
            run.steps.append(Step(W=clone(net.W), b=clone(net.b), Z=clone(Z), L=clone(L), delta=clone(delta),
                                  fprime=clone(fprime), dW=clone(dW), labels=labels[i].clone()))
        sgd_step_(net, dW, db, eta)
    for observer in observers:
        run.frames.update(observer.finish())
    return run


def brute_force_sums(run: SyntheticRun, k: int, l: int, B=None):
    """``Delta W_l[k]``, the zero-degree term and the sums over o = 1..k of both kinds of ``T^o_l[k]``.

    A plain loop over every past step of a run kept with ``keep_history=True``, each term from its
    formula (``alignment_terms.nonlinear_term``, ``linear_term``); ``B`` replaces ``B_l`` inside
    the terms when given (the random-B' shadow).
    """
    steps, now, eta, act = run.steps, run.steps[k], run.spec.eta, run.spec.activation
    B = run.net.B[l] if B is None else B
    dW = eta * now.dW[l]
    zero = at.zero_degree_term(now.L[l - 1], steps[0].W[l - 1], now.b[l - 1], now.delta[l + 1], eta, act)
    nonlinear = torch.zeros_like(dW)
    linear = torch.zeros_like(dW)
    P_now = at.P_matrix(now.L[l - 1], now.delta[l + 1])
    for o in range(1, k + 1):
        past = steps[k - o]
        nonlinear += at.nonlinear_term(past.L[l - 1], past.Z[l], past.delta[l + 1], past.W[l - 1],
                                       now.L[l - 1], now.delta[l + 1], now.b[l - 1], B, eta, act)
        linear += at.linear_term(B, at.M_matrix(at.P_matrix(past.L[l - 1], past.delta[l + 1]), P_now), eta)
    return dW, zero, nonlinear, linear
