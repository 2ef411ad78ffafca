"""The closed two-layer net with an imposed error (method §11.3, §11.4; the study's Figs 3, 4 and S1).

A net ``n_0 - n_1 - n_2`` (``100-100-10``), ReLU hidden layer *and* ReLU output, no bias, learns
by feedback alignment from an input ``X = L_0`` and an output error ``E`` that are imposed (no
targets, no loss). Unlike the open loop (method §7) the error passes through the output's
derivative, so the output layer is closed on itself:

    Z_1 = X W_0,   L_1 = relu(Z_1),   Z_2 = L_1 W_1
    delta_2 = E * relu'(Z_2),   delta_1 = (delta_2 B_1) * relu'(Z_1)          (FA)
    dW_1 = L_1^T delta_2,   dW_0 = X^T delta_1,   W_l <- W_l + eta dW_l

Measured: ``angle(W_1, B_1^T)`` after k updates, from k = 0 (the initial weights) to the end; in
the auto-correlation sweeps also ``angle(dW_0^FA, dW_0^BP)`` of the update at k, with BP's
``delta_1 = (delta_2 W_1^T) * relu'(Z_1)`` computed on the same state and signals and never applied.
Beside them, the number of live output units (Z_2 > 0 on some row): with a ReLU output a unit whose
Z_2 is negative on every row gets no error and its column of W_1 stops moving; once every unit is
dead the net has stopped learning (dW_0 = 0, its angle NaN).

The experiments (one table each):

    regimes (Fig 3)   E drawn from N(mean, 1) and redrawn every ``every`` iterations (0: drawn
                      once and held); X drawn once, or redrawn with E where ``redraw_input``
    wn (S1)           some regimes again, without WN and with WN at each gamma (method §3, on the
                      layers ``wn_layers``, after initialisation and after every update)
    error (Fig 4)     E_k = beta E_{k-1} + (1 - beta) xi_k, E_0 = xi_0, xi ~ N(0, 1), X held
    input (Fig 4)     X_k = beta X_{k-1} + (1 - beta) xi_k likewise, E with its own ``beta_error``

All repetitions (and in the sweeps all betas) run at once along a leading axis of batched matrix
products. Seeds as in the open loop: the weights (W_0, W_1, B_1 for all repetitions) from ``seed``,
the signals from ``seed + open_loop.SIGNAL_SEED_OFFSET``. Every regime and every beta therefore
starts from the same weights, and every beta of a sweep sees the same noise xi (common random
numbers). The B_1 entries are N(0, init_std^2) like the W's and never rescaled.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import pandas as pd
import torch

from fa_analysis.measures import angle_deg_batched
from fa_analysis.normalization import normalize_columns_
from fa_analysis.open_loop import SIGNAL_SEED_OFFSET, dtype_and_device, init_weights, long_frame
from fa_analysis.settings import is_int
from fa_analysis.toy_geometry import write_toy_table

GROUPS = ("regimes", "wn")
SWEEPS = ("error", "input")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_NETWORK_KEYS = ("sizes", "batch_size", "init_std", "repetitions", "seed", "wn_layers")
_OPTIONAL_KEYS = ("dtype", "device")

Signals = Iterator[tuple[torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------------------------
# Settings


def _require(section: str, settings: Any, keys: Sequence[str], optional: Sequence[str] = ()) -> None:
    if not isinstance(settings, Mapping):
        raise TypeError(f"{section} must be a mapping, got {type(settings).__name__}")
    missing = [key for key in keys if key not in settings]
    if missing:
        raise KeyError(f"{section} lacks {missing}: add them (see config.yaml, section toy)")
    unknown = sorted(set(settings) - set(keys) - set(optional))
    if unknown:
        raise KeyError(f"{section} has unknown keys {unknown}; accepted: {sorted([*keys, *optional])}")


def _positive_int(where: str, value: Any) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f"{where} must be a positive int, got {value!r}")
    return int(value)


def _number(where: str, value: Any, low: float = -math.inf, high: float = math.inf, positive: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    if not ok or not math.isfinite(value) or (positive and not value > 0):
        kind = "a positive number" if positive else "a number" if low == -math.inf else f"a number in [{low}, {high}]"
        raise ValueError(f"{where} must be {kind}, got {value!r}")
    return float(value)


def _network(section: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The fields both slices share: the net, its initialisation, repetitions, seed, WN layers, dtype."""
    sizes = settings["sizes"]
    if not isinstance(sizes, (list, tuple)) or len(sizes) != 3 or not all(is_int(n) and n > 0 for n in sizes):
        raise ValueError(f"{section}.sizes must be three positive ints [n_0, n_1, n_2], got {sizes!r}")
    if not is_int(settings["seed"]) or settings["seed"] < 0:
        raise ValueError(f"{section}.seed must be a non-negative int, got {settings['seed']!r}")
    layers = settings["wn_layers"]
    if not isinstance(layers, (list, tuple)) or not layers or len(set(layers)) != len(layers) or any(
        layer not in (0, 1) or isinstance(layer, bool) for layer in layers
    ):
        raise ValueError(f"{section}.wn_layers must list the normalised W_l, some of [0, 1], got {layers!r}")
    dtype, device = dtype_and_device(section, settings)
    return {
        "sizes": tuple(int(n) for n in sizes),
        "batch_size": _positive_int(f"{section}.batch_size", settings["batch_size"]),
        "init_std": _number(f"{section}.init_std", settings["init_std"], positive=True),
        "repetitions": _positive_int(f"{section}.repetitions", settings["repetitions"]),
        "seed": int(settings["seed"]),
        "wn_layers": tuple(int(layer) for layer in layers),
        "dtype": dtype,
        "device": device,
    }


@dataclass(frozen=True)
class Regime:
    """How one regime of Fig 3 / S1 draws its signals (method §11.3)."""

    every: int  # E redrawn at every k with k % every == 0; 0: drawn once and held
    mean: float = 0.0  # every draw of the regime, X included, is N(mean, 1)
    redraw_input: bool = False  # X redrawn together with E (else drawn once and held)

    @classmethod
    def from_dict(cls, where: str, regime: Any) -> "Regime":
        if not isinstance(regime, Mapping) or "every" not in regime or set(regime) - {"every", "mean", "redraw_input"}:
            raise ValueError(f"{where} must be a mapping {{every, mean, redraw_input}} giving every, got {regime!r}")
        every = regime["every"]
        if not is_int(every) or every < 0:
            raise ValueError(f"{where}.every must be a non-negative int (0: drawn once and held), got {every!r}")
        redraw_input = regime.get("redraw_input", False)
        if not isinstance(redraw_input, bool):
            raise ValueError(f"{where}.redraw_input must be true or false, got {redraw_input!r}")
        return cls(int(every), _number(f"{where}.mean", regime.get("mean", 0.0)), redraw_input)


def _regimes(where: str, regimes: Any) -> dict[str, Regime]:
    if not isinstance(regimes, Mapping) or not regimes:
        raise ValueError(f"{where} must map regime names to {{every, mean, redraw_input}}, got {regimes!r}")
    return {str(name): Regime.from_dict(f"{where}.{name}", regime) for name, regime in regimes.items()}


@dataclass(frozen=True)
class ClosedNetSettings:
    """The ``toy.closed_net`` slice: the net, Fig 3's regimes, and S1's regimes with and without WN."""

    sizes: tuple[int, int, int]
    batch_size: int
    init_std: float
    repetitions: int
    seed: int
    wn_layers: tuple[int, ...]
    eta: float
    regimes: dict[str, Regime]
    iterations: int
    wn_regimes: dict[str, Regime]
    wn_gammas: tuple[float, ...]
    wn_iterations: int
    dtype: str = "float32"
    device: str = "cpu"

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "ClosedNetSettings":
        section = "toy.closed_net"
        _require(section, settings, (*_NETWORK_KEYS, "eta", "regimes", "iterations", "wn"), _OPTIONAL_KEYS)
        network = _network(section, settings)
        wn = settings["wn"]
        _require(f"{section}.wn", wn, ("regimes", "gammas", "iterations"))
        gammas = wn["gammas"]
        if not isinstance(gammas, (list, tuple)) or not gammas:
            raise ValueError(f"{section}.wn.gammas must be a non-empty list of positive numbers, got {gammas!r}")
        return cls(
            **network,
            eta=_number(f"{section}.eta", settings["eta"], positive=True),
            regimes=_regimes(f"{section}.regimes", settings["regimes"]),
            iterations=_positive_int(f"{section}.iterations", settings["iterations"]),
            wn_regimes=_regimes(f"{section}.wn.regimes", wn["regimes"]),
            wn_gammas=tuple(_number(f"{section}.wn.gammas", g, positive=True) for g in gammas),
            wn_iterations=_positive_int(f"{section}.wn.iterations", wn["iterations"]),
        )


@dataclass(frozen=True)
class Sweep:
    """One sweep of Fig 4: its learning rate, length and (input sweep) the error's own beta."""

    eta: float
    iterations: int
    beta_error: float | None = None  # None in the error sweep, where beta grades E itself


@dataclass(frozen=True)
class AutocorrelationSettings:
    """The ``toy.autocorrelation`` slice: the net, the betas, WN, and the error and input sweeps."""

    sizes: tuple[int, int, int]
    batch_size: int
    init_std: float
    repetitions: int
    seed: int
    wn_layers: tuple[int, ...]
    betas: tuple[float, ...]
    wn: tuple[bool, ...]
    gamma: float
    record_every: int
    error: Sweep
    input: Sweep
    dtype: str = "float32"
    device: str = "cpu"

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "AutocorrelationSettings":
        section = "toy.autocorrelation"
        keys = (*_NETWORK_KEYS, "betas", "wn", "gamma", "record_every", "error", "input")
        _require(section, settings, keys, _OPTIONAL_KEYS)
        network = _network(section, settings)
        betas = settings["betas"]
        if not isinstance(betas, (list, tuple)) or not betas:
            raise ValueError(f"{section}.betas must be a non-empty list of numbers in [0, 1], got {betas!r}")
        wn = settings["wn"]
        if not isinstance(wn, (list, tuple)) or not wn or not all(isinstance(w, bool) for w in wn):
            raise ValueError(f"{section}.wn must be a non-empty list of true/false, got {wn!r}")
        _require(f"{section}.error", settings["error"], ("eta", "iterations"))
        _require(f"{section}.input", settings["input"], ("eta", "iterations", "beta_error"))
        sweeps = {}
        for name in SWEEPS:
            where, given = f"{section}.{name}", settings[name]
            beta_error = given.get("beta_error")
            sweeps[name] = Sweep(
                eta=_number(f"{where}.eta", given["eta"], positive=True),
                iterations=_positive_int(f"{where}.iterations", given["iterations"]),
                beta_error=None if beta_error is None else _number(f"{where}.beta_error", beta_error, 0.0, 1.0),
            )
        return cls(
            **network,
            betas=tuple(_number(f"{section}.betas", b, 0.0, 1.0) for b in betas),
            wn=tuple(wn),
            gamma=_number(f"{section}.gamma", settings["gamma"], positive=True),
            record_every=_positive_int(f"{section}.record_every", settings["record_every"]),
            **sweeps,
        )


# --------------------------------------------------------------------------------------------
# The learning loop, batched over repetitions (and betas)


@dataclass
class ClosedNetRecord:
    """What :func:`train_closed_net` measured: rows are ``iterations``, columns the leading axis G."""

    iterations: list[int]
    angle_W1_B1t: torch.Tensor  # (len(iterations), G) float64, degrees
    live_outputs: torch.Tensor  # (len(iterations), G): output units with Z_2 > 0 on some row
    angle_dW0fa_dW0bp: torch.Tensor | None  # (len(iterations), G), or None without compare_bp
    W_0: torch.Tensor  # the final weights
    W_1: torch.Tensor


def recorded_iterations(iterations: int, record_every: int) -> list[int]:
    """``0, r, 2r, ...`` and always the last iteration."""
    return sorted({*range(0, iterations + 1, record_every), iterations})


def train_closed_net(
    W_0: torch.Tensor,
    W_1: torch.Tensor,
    B_1: torch.Tensor,
    signals: Signals,
    iterations: int,
    eta: float,
    *,
    gamma: float | None = None,
    wn_layers: Sequence[int] = (0, 1),
    record_every: int = 1,
    compare_bp: bool = False,
) -> ClosedNetRecord:
    """FA on an imposed error through the ReLU output (module docstring); stacks ``(G, n_l, n_{l+1})``.

    ``signals`` yields one ``(X, E)`` of shape ``(G, n_b, n_0)``, ``(G, n_b, n_2)`` per iteration.
    At each recorded k (:func:`recorded_iterations`): ``angle(W_1[k], B_1^T)`` after k updates;
    the number of live output units (Z_2 > 0 for at least one row of step k: a unit that is not
    live gets no error, and one that is never live again has stopped learning); with
    ``compare_bp`` the angle between FA's and BP's ``dW_0`` of step k (NaN where ``dW_0 = 0``).
    Measures at k are on the state before step k (method §5.4); at the last k one more signal is
    drawn and its step computed, not applied. With ``gamma`` set, WN (method §3) rescales the W_l
    of ``wn_layers`` after initialisation and after every update. The inputs are not modified.
    """
    W_0, W_1 = W_0.clone(), W_1.clone()
    normalized = [(W_0, W_1)[layer] for layer in wn_layers] if gamma is not None else []
    if normalized:
        normalize_columns_(normalized, gamma)
    recorded = recorded_iterations(iterations, record_every)
    row_of = {k: row for row, k in enumerate(recorded)}
    angle_W = torch.full((len(recorded), W_1.shape[0]), math.nan, dtype=torch.float64, device=W_1.device)
    live = angle_W.clone()
    angle_dW = angle_W.clone() if compare_bp else None
    B_1t = B_1.mT
    buffers = None
    for k in range(iterations + 1):
        X, E = next(signals)
        if buffers is None:  # Z_1, L_1, delta_1, Z_2, delta_2: one allocation, reused by every step
            G, n_b, n_1, n_2 = W_1.shape[0], X.shape[1], W_1.shape[1], W_1.shape[2]
            buffers = [W_1.new_empty((G, n_b, n)) for n in (n_1, n_1, n_1, n_2, n_2)]
        Z_1, L_1, delta_1, Z_2, delta_2 = buffers
        # relu'(Z) = 1[Z > 0] as 0/1 in Z's own dtype (Z.gt_(0) in place): a bool mask would be
        # converted in every product, the loop's largest cost after the matrix products.
        torch.bmm(X, W_0, out=Z_1)
        torch.clamp_min(Z_1, 0.0, out=L_1)  # relu(Z_1)
        relu_prime_1 = Z_1.gt_(0.0)  # Z_1 itself is not needed again
        relu_prime_2 = torch.bmm(L_1, W_1, out=Z_2).gt_(0.0)
        torch.mul(E, relu_prime_2, out=delta_2)
        torch.bmm(delta_2, B_1, out=delta_1).mul_(relu_prime_1)
        row = row_of.get(k)
        if row is not None:
            angle_W[row] = angle_deg_batched(W_1, B_1t)
            live[row] = relu_prime_2.amax(dim=1).sum(dim=1)
        measured = compare_bp and row is not None
        if measured:
            dW_0 = X.mT @ delta_1
            dW_0_bp = X.mT @ (delta_2 @ W_1.mT).mul_(relu_prime_1)
            angle_dW[row] = angle_deg_batched(dW_0, dW_0_bp)
        if k == iterations:
            break
        W_1.baddbmm_(L_1.mT, delta_2, alpha=eta)  # W_1 + eta L_1^T delta_2
        if measured:
            W_0.add_(dW_0, alpha=eta)
        else:
            W_0.baddbmm_(X.mT, delta_1, alpha=eta)  # W_0 + eta X^T delta_1
        if normalized:
            normalize_columns_(normalized, gamma)
    return ClosedNetRecord(recorded, angle_W, live, angle_dW, W_0, W_1)


# --------------------------------------------------------------------------------------------
# Imposed signals


def _normal_draw(s: ClosedNetSettings | AutocorrelationSettings) -> Callable[[tuple[int, ...]], torch.Tensor]:
    generator = torch.Generator().manual_seed(s.seed + SIGNAL_SEED_OFFSET)

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=_DTYPES[s.dtype]).to(s.device)

    return draw


def regime_signals(regime: Regime, s: ClosedNetSettings) -> Signals:
    """The ``(X, E)`` stream of one regime: ``(R, n_b, n_0)``, ``(R, n_b, n_2)``, every draw N(mean, 1).

    X is drawn first, then E; at every k > 0 with ``k % every == 0`` E is redrawn (X first, where
    ``redraw_input``). Every regime starts from the same X and E (the same generator and order).
    """
    n_0, _, n_2 = s.sizes
    draw = _normal_draw(s)
    X_shape, E_shape = (s.repetitions, s.batch_size, n_0), (s.repetitions, s.batch_size, n_2)
    X = regime.mean + draw(X_shape)
    E = regime.mean + draw(E_shape)
    k = 0
    while True:
        yield X, E
        k += 1
        if regime.every and k % regime.every == 0:
            if regime.redraw_input:
                X = regime.mean + draw(X_shape)
            E = regime.mean + draw(E_shape)


def sweep_signals(sweep: str, s: AutocorrelationSettings) -> Signals:
    """The ``(X, E)`` stream of the error or input sweep, every beta at once: ``(len(betas) R, n_b, n)``.

    Row ``b R + r`` holds beta ``betas[b]`` and repetition r. Error sweep: X drawn once and held,
    ``E_k = beta E_{k-1} + (1 - beta) xi_k``, ``E_0 = xi_0``. Input sweep: ``X_k`` follows the same
    recursion with beta, E with ``input.beta_error`` (the same E for every beta); each step draws
    X's noise first, then xi. The noise is the same for every beta (common random numbers).
    """
    if sweep not in SWEEPS:
        raise ValueError(f"unknown auto-correlation sweep {sweep!r}; accepted: {SWEEPS}")
    return _sweep_stream(sweep, s)


def _sweep_stream(sweep: str, s: AutocorrelationSettings) -> Signals:
    n_0, _, n_2 = s.sizes
    n, R = len(s.betas), s.repetitions
    draw = _normal_draw(s)
    X_shape, E_shape = (R, s.batch_size, n_0), (R, s.batch_size, n_2)
    beta = torch.tensor(s.betas, dtype=_DTYPES[s.dtype], device=s.device).view(n, 1, 1, 1)

    def every_beta(A: torch.Tensor) -> torch.Tensor:  # (R, ...) or (n, R, ...) -> (n R, ...)
        return A.expand(n, *A.shape[-3:]).reshape(n * R, *A.shape[-2:])

    X, E = draw(X_shape), draw(E_shape)
    if sweep == "error":
        X = every_beta(X)  # copied once, held
        while True:
            yield X, every_beta(E)
            xi = draw(E_shape)
            E = beta * E + (1.0 - beta) * xi  # (n, R, n_b, n_2) from the first step on
    beta_error = s.input.beta_error
    while True:
        yield every_beta(X), every_beta(E)
        X_noise, xi = draw(X_shape), draw(E_shape)
        X = torch.lerp(X, X_noise, 1.0 - beta)  # beta X + (1 - beta) X_noise in one pass, (n, R, n_b, n_0)
        E = beta_error * E + (1.0 - beta_error) * xi  # the same for every beta


# --------------------------------------------------------------------------------------------
# Experiments: DataFrames


def run_closed_net(settings: Mapping[str, Any], group: str) -> pd.DataFrame:
    """Fig 3 (``group="regimes"``) or S1 (``"wn"``): ``regime, wn, gamma, repetition, iteration,
    angle_W1_B1t, live_outputs``.

    One row per regime, WN condition, repetition and iteration ``0..iterations``; ``gamma`` is NaN
    for the runs without WN (``wn`` false), so select on ``wn`` rather than group on ``gamma``.
    """
    s = ClosedNetSettings.from_dict(settings)
    if group not in GROUPS:
        raise ValueError(f"unknown closed-net group {group!r}; accepted: {GROUPS}")
    if group == "regimes":
        runs, iterations = [(name, regime, None) for name, regime in s.regimes.items()], s.iterations
    else:
        runs = [(name, regime, gamma) for name, regime in s.wn_regimes.items() for gamma in (None, *s.wn_gammas)]
        iterations = s.wn_iterations
    W_0, W_1, B_1 = init_weights(s)
    frames = []
    for name, regime, gamma in runs:
        record = train_closed_net(
            W_0, W_1, B_1, regime_signals(regime, s), iterations, s.eta, gamma=gamma, wn_layers=s.wn_layers
        )
        columns = {"angle_W1_B1t": record.angle_W1_B1t, "live_outputs": record.live_outputs}
        frame = long_frame(columns, record.iterations)
        frame.insert(0, "regime", name)
        frame.insert(1, "wn", gamma is not None)
        frame.insert(2, "gamma", math.nan if gamma is None else gamma)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def run_autocorrelation(settings: Mapping[str, Any], sweep: str, wn: bool) -> pd.DataFrame:
    """Fig 4, one sweep without or with WN: ``sweep, beta, wn, repetition, iteration, angle_W1_B1t,
    angle_dW0fa_dW0bp, live_outputs``.

    Rows at iterations ``0, record_every, ...`` and the last; every beta starts from the same weights.
    """
    s = AutocorrelationSettings.from_dict(settings)
    signals = sweep_signals(sweep, s)  # validates the sweep before any compute
    if not isinstance(wn, bool):
        raise TypeError(f"wn must be a bool, got {wn!r}")
    n, R = len(s.betas), s.repetitions
    W_0, W_1, B_1 = (W.repeat(n, 1, 1) for W in init_weights(s))
    run = getattr(s, sweep)
    record = train_closed_net(
        W_0, W_1, B_1, signals, run.iterations, run.eta, gamma=s.gamma if wn else None,
        wn_layers=s.wn_layers, record_every=s.record_every, compare_bp=True,
    )
    frames = []
    for b, beta in enumerate(s.betas):
        columns = {
            "angle_W1_B1t": record.angle_W1_B1t,
            "angle_dW0fa_dW0bp": record.angle_dW0fa_dW0bp,
            "live_outputs": record.live_outputs,
        }
        block = {name: values[:, b * R : (b + 1) * R] for name, values in columns.items()}  # rows b R + r
        frame = long_frame(block, record.iterations)
        frame.insert(0, "sweep", sweep)
        frame.insert(1, "beta", beta)
        frame.insert(2, "wn", wn)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------
# Jobs


def _seeds(seed: int) -> dict[str, Any]:
    return {"seed": seed, "seeds": {"weights": seed, "signals": seed + SIGNAL_SEED_OFFSET}}


def closed_net_job(settings: Mapping[str, Any], group: str, out_path: str | Path) -> pd.DataFrame:
    """Fig 3 or S1 as ``toy/closed_net_{group}.parquet`` (+ ``.json``)."""
    start = time.perf_counter()
    frame = run_closed_net(settings, group)
    extra = {"group": group, **_seeds(settings["seed"]), "timings": {"run_s": time.perf_counter() - start}}
    write_toy_table(frame, out_path, f"closed_net_{group}", settings, extra)
    return frame


def autocorrelation_job(settings: Mapping[str, Any], sweep: str, wn: bool, out_path: str | Path) -> pd.DataFrame:
    """One Fig 4 sweep as ``toy/autocorrelation_{sweep}_wn{0,1}.parquet`` (+ ``.json``)."""
    start = time.perf_counter()
    frame = run_autocorrelation(settings, sweep, wn)
    extra = {"sweep": sweep, "wn": wn, **_seeds(settings["seed"]), "timings": {"run_s": time.perf_counter() - start}}
    write_toy_table(frame, out_path, f"autocorrelation_{sweep}", settings, extra)
    return frame
