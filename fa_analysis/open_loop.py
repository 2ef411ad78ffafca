"""The open-loop experiment (method §7; the paper's Figs 2-3) and its graded beta sweep.

A two-layer network ``n_0 - n_1 - n_2`` (ReLU hidden layer, no bias) learns by feedback alignment
from an input ``L_0`` and an output error ``delta_2`` that are *imposed*, not produced by targets:

    Z_1 = L_0 W_0,   L_1 = relu(Z_1)
    delta_1 = (delta_2 B_1) * relu'(Z_1)
    dW_1 = L_1^T delta_2,   dW_0 = L_0^T delta_1
    W_l <- W_l + eta dW_l                                   (method §1 sign convention)

and we track ``angle(W_1, B_1^T)``. Whether W_1 aligns with B_1^T depends only on the correlations
of the imposed signals (method §6: ``M = P[k-o]^T P[k]``, ``P = L_0^T delta_2``):

    auto   L_0 and delta_2 drawn once, independently, held fixed   (auto-correlation)
    cross  drawn fresh each iteration with L_0 = delta_2              (cross-correlation)
    both   drawn once with L_0 = delta_2, held fixed                  (both)
    none   drawn fresh and independently each iteration             (neither: stays near 90 deg)

All repetitions run at once: every tensor carries a leading repetition axis and the updates are
batched matrix products, so each repetition has its own fresh W_0, W_1, B_1 and its own signals.

Seeds. From ``seed`` two ``torch.Generator`` streams are made: ``seed`` draws the weights (W_0,
W_1, B_1, in that order, for all repetitions), ``seed + SIGNAL_SEED_OFFSET`` draws the imposed
signals. The same seed therefore gives the same initial weights in every scenario and every beta,
so the scenarios differ only in their signals.

Beta sweep (method §7, extension). ``delta_2[k] = beta delta_2[k-1] + (1 - beta) xi[k]``
with ``delta_2[0] = xi[0]`` and ``xi ~ N(0, 1)``, for each beta, with and without WN (gamma).
What ``L_0`` does is the setting ``beta_sweep.input``:

    fixed (default)   L_0 drawn once and held fixed, as in the study: only the error's
                      auto-correlation is graded (beta = 1 is then the "auto" scenario);
    autoregressive    L_0 follows its own, independent recursion with the same beta, so
                      beta = 0 is the "none" scenario and beta = 1 is "auto": the sweep grades
                      the auto-correlation of both signals between the two;
    fresh             L_0 drawn fresh each iteration (then E[L_0[j] L_0[k]^T] = 0 for j != k,
                      so M has zero mean whatever beta: a control).

The recursion is method §7.3's as written: its stationary standard deviation is
``sqrt((1 - beta) / (1 + beta))`` (smaller signals for larger beta < 1); it is not renormalised.
The B_1 entries are N(0, init_std^2) and never normalised (no IBN in the open loop); WN rescales the
columns of W_0 and W_1 to norm gamma after initialisation and after every update (method §3).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import pandas as pd
import torch

from fa_analysis import artifacts
from fa_analysis.measures import angle_deg_batched
from fa_analysis.normalization import normalize_columns_
from fa_analysis.settings import is_int, schema_defaults

SCENARIOS = ("auto", "cross", "both", "none")
BETA_SWEEP_INPUTS = ("autoregressive", "fresh", "fixed")
SIGNAL_SEED_OFFSET = 1_000_003
ARTIFACT_FORMAT = "fa_analysis.open_loop/1"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}

Signals = Iterator[tuple[torch.Tensor, torch.Tensor]]


def dtype_and_device(section: str, settings: Mapping[str, Any]) -> tuple[str, str]:
    """The optional ``dtype`` (float32) and ``device`` (cpu) of a config section, checked.

    ``cuda`` without a CUDA device is an error naming the key, before any compute.
    """
    dtype = settings.get("dtype", "float32")
    if dtype not in _DTYPES:
        raise ValueError(f"{section}.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    device = settings.get("device", "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"{section}.device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{section}.device is 'cuda' but no CUDA device is available: set it to 'cpu'")
    return dtype, device


@dataclass(frozen=True)
class OpenLoopSettings:
    """The ``open_loop`` config slice (method §7), validated before any compute."""

    sizes: tuple[int, int, int]
    batch_size: int
    eta: float
    iterations: int
    repetitions: int
    init_std: float
    seed: int
    dtype: str = "float32"
    device: str = "cpu"

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "OpenLoopSettings":
        """Build from the config slice; unknown sweep keys are ignored here (see BetaSweepSettings)."""
        if not isinstance(settings, Mapping):
            raise TypeError(f"open_loop settings must be a mapping, got {type(settings).__name__}")
        required = ("sizes", "batch_size", "eta", "iterations", "repetitions", "init_std", "seed")
        missing = [key for key in required if key not in settings]
        if missing:
            raise KeyError(f"open_loop settings lack {missing}: add them (see config.yaml, section open_loop)")
        sizes = tuple(settings["sizes"])
        if len(sizes) != 3 or not all(is_int(n) and n > 0 for n in sizes):
            raise ValueError(f"open_loop.sizes must be three positive ints [n_0, n_1, n_2], got {list(sizes)}")
        for key in ("batch_size", "iterations", "repetitions"):
            if not is_int(settings[key]) or settings[key] < 1:
                raise ValueError(f"open_loop.{key} must be a positive int, got {settings[key]!r}")
        for key in ("eta", "init_std"):
            if not isinstance(settings[key], (int, float)) or not settings[key] > 0:
                raise ValueError(f"open_loop.{key} must be a positive number, got {settings[key]!r}")
        if not is_int(settings["seed"]):
            raise ValueError(f"open_loop.seed must be an int, got {settings['seed']!r}")
        dtype, device = dtype_and_device("open_loop", settings)
        return cls(
            sizes=tuple(int(n) for n in sizes),
            batch_size=int(settings["batch_size"]),
            eta=float(settings["eta"]),
            iterations=int(settings["iterations"]),
            repetitions=int(settings["repetitions"]),
            init_std=float(settings["init_std"]),
            seed=int(settings["seed"]),
            dtype=dtype,
            device=device,
        )


@dataclass(frozen=True)
class BetaSweepSettings:
    """The ``open_loop.beta_sweep`` config slice: betas, gamma for WN, and what L_0 does."""

    betas: tuple[float, ...]
    gamma: float
    input: str  # left out of the config: the schema's default

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "BetaSweepSettings":
        sweep = settings.get("beta_sweep")
        if not isinstance(sweep, Mapping):
            raise KeyError("open_loop.beta_sweep is missing: add {betas: [...], gamma: 1.0} (see config.yaml)")
        for key in ("betas", "gamma"):
            if key not in sweep:
                raise KeyError(f"open_loop.beta_sweep.{key} is missing (see config.yaml, section open_loop)")
        betas = tuple(sweep["betas"])
        if not betas or not all(isinstance(b, (int, float)) and 0.0 <= b <= 1.0 for b in betas):
            raise ValueError(f"open_loop.beta_sweep.betas must be numbers in [0, 1], got {list(betas)}")
        if not isinstance(sweep["gamma"], (int, float)) or not sweep["gamma"] > 0:
            raise ValueError(f"open_loop.beta_sweep.gamma must be a positive number, got {sweep['gamma']!r}")
        mode = sweep.get("input", schema_defaults("open_loop", "beta_sweep")["input"])
        if mode not in BETA_SWEEP_INPUTS:
            raise ValueError(f"open_loop.beta_sweep.input must be one of {BETA_SWEEP_INPUTS}, got {mode!r}")
        return cls(betas=tuple(float(b) for b in betas), gamma=float(sweep["gamma"]), input=mode)


# --------------------------------------------------------------------------------------------
# The learning loop, batched over repetitions


def init_weights(s: OpenLoopSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh ``W_0 (R, n_0, n_1)``, ``W_1 (R, n_1, n_2)``, ``B_1 (R, n_2, n_1)`` ~ N(0, init_std^2).

    ``s`` is any settings with ``sizes, repetitions, init_std, seed, dtype, device`` (the closed
    net of ``toy_closed_net`` draws its weights here too).
    """
    n_0, n_1, n_2 = s.sizes
    R = s.repetitions
    generator = torch.Generator().manual_seed(s.seed)
    W_0 = s.init_std * torch.randn((R, n_0, n_1), generator=generator, dtype=_DTYPES[s.dtype])
    W_1 = s.init_std * torch.randn((R, n_1, n_2), generator=generator, dtype=_DTYPES[s.dtype])
    B_1 = s.init_std * torch.randn((R, n_2, n_1), generator=generator, dtype=_DTYPES[s.dtype])
    return W_0.to(s.device), W_1.to(s.device), B_1.to(s.device)


def train_open_loop(
    W_0: torch.Tensor,
    W_1: torch.Tensor,
    B_1: torch.Tensor,
    signals: Signals,
    iterations: int,
    eta: float,
    gamma: float | None = None,
) -> torch.Tensor:
    """FA on imposed signals; returns ``angle(W_1[k], B_1^T)`` for k = 0..iterations, shape (K+1, R).

    Row k is the angle after k updates (row 0: the initial weights). ``signals`` yields one
    ``(L_0, delta_2)`` pair of shape ``(R, n_b, n_0)``, ``(R, n_b, n_2)`` per iteration. With
    ``gamma`` set, WN is applied to W_0 and W_1 after initialisation and after every update.
    The inputs are not modified.
    """
    W_0, W_1 = W_0.clone(), W_1.clone()
    if gamma is not None:
        _normalize_columns_per_repetition_(W_0, W_1, gamma=gamma)
    B_1t = B_1.mT
    angles = torch.empty((iterations + 1, W_1.shape[0]), dtype=W_1.dtype, device=W_1.device)
    angles[0] = angle_deg_batched(W_1, B_1t)
    for k in range(iterations):
        L_0, delta_2 = next(signals)
        Z_1 = L_0 @ W_0
        L_1 = Z_1.clamp_min(0.0)
        delta_1 = (delta_2 @ B_1) * (Z_1 > 0)
        dW_1 = L_1.mT @ delta_2
        dW_0 = L_0.mT @ delta_1
        W_1.add_(dW_1, alpha=eta)
        W_0.add_(dW_0, alpha=eta)
        if gamma is not None:
            _normalize_columns_per_repetition_(W_0, W_1, gamma=gamma)
        angles[k + 1] = angle_deg_batched(W_1, B_1t)
    return angles


def _normalize_columns_per_repetition_(*stacks: torch.Tensor, gamma: float) -> None:
    """WN (method §3) in place on stacks ``(R, n_l, n_{l+1})``: each repetition's matrix on its own."""
    normalize_columns_([W for stack in stacks for W in stack.unbind(0)], gamma)


# --------------------------------------------------------------------------------------------
# Imposed signals


def scenario_signals(scenario: str, s: OpenLoopSettings) -> Signals:
    """The ``(L_0, delta_2)`` stream of one scenario (table in method §7), every draw N(0, 1)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown open-loop scenario {scenario!r}; accepted: {SCENARIOS}")
    n_0, _, n_2 = s.sizes
    if scenario in ("cross", "both") and n_0 != n_2:
        raise ValueError(
            f"scenario {scenario!r} imposes L_0 = delta_2, which needs open_loop.sizes[0] == sizes[2]; "
            f"got {list(s.sizes)}"
        )
    return _scenario_stream(scenario, s)


def _scenario_stream(scenario: str, s: OpenLoopSettings) -> Signals:
    n_0, _, n_2 = s.sizes
    draw = _normal_draw(s)
    L_shape = (s.repetitions, s.batch_size, n_0)
    delta_shape = (s.repetitions, s.batch_size, n_2)
    if scenario == "auto":
        L_0 = draw(L_shape)
        delta_2 = draw(delta_shape)
        while True:
            yield L_0, delta_2
    elif scenario == "both":
        X = draw(L_shape)
        while True:
            yield X, X
    elif scenario == "cross":
        while True:
            X = draw(L_shape)
            yield X, X
    else:  # none
        while True:
            yield draw(L_shape), draw(delta_shape)


def beta_signals(beta: float, input_mode: str, s: OpenLoopSettings) -> Signals:
    """``delta_2[k] = beta delta_2[k-1] + (1 - beta) xi[k]``, ``delta_2[0] = xi[0]``; L_0 per ``input_mode``.

    Each iteration draws the L_0 noise first, then xi, so the same seed gives the same noise
    sequences for every beta (common random numbers across the sweep).
    """
    if input_mode not in BETA_SWEEP_INPUTS:
        raise ValueError(f"unknown beta-sweep input {input_mode!r}; accepted: {BETA_SWEEP_INPUTS}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta!r}")
    return _beta_stream(beta, input_mode, s)


def _beta_stream(beta: float, input_mode: str, s: OpenLoopSettings) -> Signals:
    n_0, _, n_2 = s.sizes
    draw = _normal_draw(s)
    L_shape = (s.repetitions, s.batch_size, n_0)
    delta_shape = (s.repetitions, s.batch_size, n_2)
    L_0 = draw(L_shape)
    delta_2 = draw(delta_shape)
    while True:
        yield L_0, delta_2
        L_noise = draw(L_shape)
        xi = draw(delta_shape)
        delta_2 = beta * delta_2 + (1.0 - beta) * xi
        if input_mode == "autoregressive":
            L_0 = beta * L_0 + (1.0 - beta) * L_noise
        elif input_mode == "fresh":
            L_0 = L_noise


def _normal_draw(s: OpenLoopSettings) -> Callable[[tuple[int, ...]], torch.Tensor]:
    generator = torch.Generator().manual_seed(s.seed + SIGNAL_SEED_OFFSET)

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=_DTYPES[s.dtype]).to(s.device)

    return draw


# --------------------------------------------------------------------------------------------
# Experiments: DataFrames


def run_open_loop(settings: Mapping[str, Any], scenario: str) -> pd.DataFrame:
    """One scenario at the config's settings: columns ``repetition, iteration, angle`` (degrees).

    ``iteration`` runs 0..iterations (0 = initial weights); ``angle`` is ``angle(W_1, B_1^T)``.
    """
    s = OpenLoopSettings.from_dict(settings)
    signals = scenario_signals(scenario, s)  # validates the scenario before any compute
    W_0, W_1, B_1 = init_weights(s)
    angles = train_open_loop(W_0, W_1, B_1, signals, s.iterations, s.eta)
    return _long_frame(angles)


def run_beta_sweep(settings: Mapping[str, Any], wn: bool) -> pd.DataFrame:
    """The beta sweep without (``wn=False``) or with WN (gamma from ``beta_sweep.gamma``).

    Columns ``beta, repetition, iteration, angle``; the final angle vs beta is the row at
    ``iteration == settings['iterations']``.
    """
    s = OpenLoopSettings.from_dict(settings)
    sweep = BetaSweepSettings.from_dict(settings)
    if not isinstance(wn, bool):
        raise TypeError(f"wn must be a bool, got {wn!r}")
    frames = []
    for beta in sweep.betas:
        W_0, W_1, B_1 = init_weights(s)
        signals = beta_signals(beta, sweep.input, s)
        angles = train_open_loop(W_0, W_1, B_1, signals, s.iterations, s.eta, sweep.gamma if wn else None)
        frame = _long_frame(angles)
        frame.insert(0, "beta", beta)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def final_angles(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the last iteration (per beta, when the frame has one)."""
    return frame[frame["iteration"] == frame["iteration"].max()].reset_index(drop=True)


def _long_frame(angles: torch.Tensor) -> pd.DataFrame:
    return long_frame({"angle": angles})


def long_frame(columns: Mapping[str, torch.Tensor], iterations: Sequence[int] | None = None) -> pd.DataFrame:
    """Per-iteration stacks ``(K1, R)`` as a long table ``repetition, iteration, <one column per name>``.

    Row ``i`` of every stack is the iteration ``iterations[i]`` (default ``i``); float64 values.
    """
    K1, R = next(iter(columns.values())).shape
    steps = torch.arange(K1) if iterations is None else torch.as_tensor(list(iterations), dtype=torch.int64)
    if steps.shape != (K1,):
        raise ValueError(f"long_frame: {K1} rows per stack but {steps.shape[0]} iterations")
    frame = {"repetition": torch.arange(R).repeat(K1).numpy(), "iteration": steps.repeat_interleave(R).numpy()}
    for name, values in columns.items():
        frame[name] = values.detach().cpu().double().numpy().reshape(-1)
    return pd.DataFrame(frame)


# --------------------------------------------------------------------------------------------
# Artifacts


def write_open_loop_artifact(
    frame: pd.DataFrame, out_path: str | Path, settings: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``frame`` to ``out_path`` (``.parquet``) and its description to the sibling ``.json``.

    The JSON holds the settings slice, the seed, the derived seeds, the code version and ``extra``
    (scenario or beta-sweep details, timings). Both files are written atomically (the parquet
    first, then the JSON), so a killed job never leaves a pair that looks complete.
    """
    out_path = Path(out_path)
    if out_path.suffix != ".parquet":
        raise ValueError(f"open-loop artifact path must end in .parquet, got {out_path}")
    s = OpenLoopSettings.from_dict(settings)
    meta = {
        "format": ARTIFACT_FORMAT,
        "settings": artifacts.json_plain(settings),
        "seed": s.seed,
        "seeds": {"weights": s.seed, "signals": s.seed + SIGNAL_SEED_OFFSET},
        "code_version": artifacts.code_version(),
        "torch": torch.__version__,
        "columns": list(frame.columns),
        **artifacts.json_plain(extra or {}),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    artifacts.atomic_write_parquet(out_path, frame)
    json_path = out_path.with_suffix(".json")
    artifacts.atomic_write_json(json_path, meta)
    return out_path, json_path


def open_loop_job(settings: Mapping[str, Any], scenario: str, out_path: str | Path) -> pd.DataFrame:
    """Run one scenario and write it as ``open_loop/{scenario}.parquet`` (+ ``.json``)."""
    start = time.perf_counter()
    frame = run_open_loop(settings, scenario)
    seconds = time.perf_counter() - start
    write_open_loop_artifact(
        frame, out_path, settings, {"experiment": "scenario", "scenario": scenario, "timings": {"run_s": seconds}}
    )
    return frame


def beta_sweep_job(settings: Mapping[str, Any], wn: bool, out_path: str | Path) -> pd.DataFrame:
    """Run the beta sweep and write it as ``open_loop/beta_wn{0,1}.parquet`` (+ ``.json``)."""
    start = time.perf_counter()
    frame = run_beta_sweep(settings, wn)
    seconds = time.perf_counter() - start
    sweep = BetaSweepSettings.from_dict(settings)
    extra = {"experiment": "beta_sweep", "wn": wn, "beta_sweep": asdict(sweep), "timings": {"run_s": seconds}}
    write_open_loop_artifact(frame, out_path, settings, extra)
    return frame

