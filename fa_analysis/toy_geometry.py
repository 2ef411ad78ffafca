"""The toy Monte Carlo analyses (method §11.1, §11.2, §11.5): why one term aligns, and why depth fades it.

Three questions, each answered by drawing many small random matrices, no training:

- term geometry (§11.1): how the shapes of ``X`` and ``E`` make the linear alignment term at a lag
  with identical data, ``B^T M`` with ``M = E^T X X^T E`` (method §6.3, ``M = P^T P``,
  ``P = X^T E``), point along ``B^T``; and the spectrum of ``M / (n_b n_i)``, linear and with ``X``
  through a ReLU;
- distributions (§11.2): the same angle at a lag between two minibatches, ``M = P_1^T P_2``, when
  the two share their error, their input or neither, and when the entries have a mean, are uniform,
  or are all ones;
- depth (§11.5): the angle of two products, ``angle(AB, CD)``, against the angles of their
  factors, ``angle(A, C)`` and ``angle(B, D)``, linear and with a ReLU-like mask between the
  factors: alignment of every layer does not make the products through several layers aligned.

Every experiment draws batches of samples at once (a leading sample axis, ``chunk`` samples per
batch) from its own ``torch.Generator``; a mode or case is seeded by the experiment's ``seed`` plus
the CRC-32 of its name, so adding or removing one leaves the others' samples unchanged.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from fa_analysis import artifacts
from fa_analysis.measures import angle_deg_batched
from fa_analysis.settings import is_int

ARTIFACT_FORMAT = "fa_analysis.toy/1"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
SIGNALS = ("normal", "uniform", "ones")
SHARED = ("none", "error", "both")
INPUTS = ("linear", "relu")


# --------------------------------------------------------------------------------------------
# Settings


def _positive_int(section: str, settings: Mapping[str, Any], key: str) -> int:
    value = settings.get(key)
    if not is_int(value) or value < 1:
        raise ValueError(f"{section}.{key} must be a positive int, got {value!r}")
    return int(value)


def _seed_and_dtype(section: str, settings: Mapping[str, Any]) -> tuple[int, str]:
    seed = settings.get("seed")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"{section}.seed must be a non-negative int, got {seed!r}")
    dtype = settings.get("dtype", "float32")
    if dtype not in _DTYPES:
        raise ValueError(f"{section}.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return int(seed), dtype


def _sizes(section: str, key: str, value: Any, n: int) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(is_int(v) and v > 0 for v in value):
        raise ValueError(f"{section}.{key} must be {n} positive ints, got {value!r}")
    return tuple(int(v) for v in value)


def _require(section: str, settings: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    if not isinstance(settings, Mapping):
        raise TypeError(f"{section} must be a mapping, got {type(settings).__name__}")
    missing = [key for key in keys if key not in settings]
    if missing:
        raise KeyError(f"{section} lacks {missing}: add them (see config.yaml, section toy)")


@dataclass(frozen=True)
class TermGeometrySettings:
    """``toy.term_geometry``: shape modes ``name -> (n_i, n_h, n_o, n_b)`` and the sampling."""

    modes: dict[str, tuple[int, int, int, int]]
    samples: int
    chunk: int
    bins: int
    seed: int
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "TermGeometrySettings":
        section = "toy.term_geometry"
        _require(section, settings, ("modes", "samples", "chunk", "bins", "seed"))
        modes = settings["modes"]
        if not isinstance(modes, Mapping) or not modes:
            raise ValueError(f"{section}.modes must map names to [n_i, n_h, n_o, n_b], got {modes!r}")
        seed, dtype = _seed_and_dtype(section, settings)
        return cls(
            modes={str(name): _sizes(section, f"modes.{name}", sizes, 4) for name, sizes in modes.items()},
            samples=_positive_int(section, settings, "samples"),
            chunk=_positive_int(section, settings, "chunk"),
            bins=_positive_int(section, settings, "bins"),
            seed=seed,
            dtype=dtype,
        )


@dataclass(frozen=True)
class SignalCase:
    """How one case of §11.2 draws its signals: entries of E and X, their mean, what is shared, B's mean."""

    signals: str = "normal"
    mean: float = 0.0
    same: str = "none"
    b_mean: float = 0.0


@dataclass(frozen=True)
class DistributionSettings:
    """``toy.distributions``: sizes ``(n_i, n_h, n_o, n_b)``, the cases, and the sampling."""

    sizes: tuple[int, int, int, int]
    cases: dict[str, SignalCase]
    samples: int
    chunk: int
    seed: int
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "DistributionSettings":
        section = "toy.distributions"
        _require(section, settings, ("sizes", "cases", "samples", "chunk", "seed"))
        cases = settings["cases"]
        if not isinstance(cases, Mapping) or not cases:
            raise ValueError(f"{section}.cases must map names to {{signals, mean, same, b_mean}}, got {cases!r}")
        parsed = {}
        for name, case in cases.items():
            where = f"{section}.cases.{name}"
            if not isinstance(case, Mapping) or set(case) - {"signals", "mean", "same", "b_mean"}:
                raise ValueError(f"{where} must be a mapping of signals, mean, same, b_mean; got {case!r}")
            parsed[str(name)] = signal_case = SignalCase(**case)
            if signal_case.signals not in SIGNALS:
                raise ValueError(f"{where}.signals must be one of {SIGNALS}, got {signal_case.signals!r}")
            if signal_case.same not in SHARED:
                raise ValueError(f"{where}.same must be one of {SHARED}, got {signal_case.same!r}")
            for key in ("mean", "b_mean"):
                value = getattr(signal_case, key)
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                    raise ValueError(f"{where}.{key} must be a finite number, got {value!r}")
            if signal_case.signals == "ones" and signal_case.mean != 0:
                raise ValueError(f"{where}: signals 'ones' are all ones; remove its mean ({signal_case.mean})")
        seed, dtype = _seed_and_dtype(section, settings)
        return cls(
            sizes=_sizes(section, "sizes", settings["sizes"], 4),
            cases=parsed,
            samples=_positive_int(section, settings, "samples"),
            chunk=_positive_int(section, settings, "chunk"),
            seed=seed,
            dtype=dtype,
        )


@dataclass(frozen=True)
class DepthSettings:
    """``toy.depth``: shapes ``(n_1, n_2, n_3)``, the angle grid (degrees) and the sampling."""

    shapes: tuple[int, int, int]
    angles: tuple[float, ...]
    samples_per_cell: int
    mask_probability: float
    chunk: int
    seed: int
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "DepthSettings":
        section = "toy.depth"
        _require(section, settings, ("shapes", "angles", "samples_per_cell", "mask_probability", "chunk", "seed"))
        angles = settings["angles"]
        if (not isinstance(angles, (list, tuple)) or not angles
                or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and 0 <= a <= 90 for a in angles)):
            raise ValueError(f"{section}.angles must be a non-empty list of degrees in [0, 90], got {angles!r}")
        p = settings["mask_probability"]
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 < p <= 1:
            raise ValueError(f"{section}.mask_probability must lie in (0, 1], got {p!r}")
        seed, dtype = _seed_and_dtype(section, settings)
        return cls(
            shapes=_sizes(section, "shapes", settings["shapes"], 3),
            angles=tuple(float(a) for a in angles),
            samples_per_cell=_positive_int(section, settings, "samples_per_cell"),
            mask_probability=float(p),
            chunk=_positive_int(section, settings, "chunk"),
            seed=seed,
            dtype=dtype,
        )


def generator_for(seed: int, name: str) -> torch.Generator:
    """The generator of one mode, case or experiment: ``seed`` plus the CRC-32 of ``name``."""
    return torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))


def _chunks(total: int, chunk: int):
    for start in range(0, total, chunk):
        yield min(chunk, total - start)


# --------------------------------------------------------------------------------------------
# The term and its angle (method §6.3)


def linear_term_M(X1: torch.Tensor, E1: torch.Tensor, X2: torch.Tensor, E2: torch.Tensor) -> torch.Tensor:
    """``M = P_1^T P_2`` with ``P = X^T E`` (stacks ``(S, n_b, n_i)``, ``(S, n_b, n_o)``): ``(S, n_o, n_o)``.

    With ``X1 = X2`` and ``E1 = E2`` this is ``E^T X X^T E``, symmetric positive semi-definite.
    The same product is ``E_1^T S E_2`` with the similarity ``S = X_1 X_2^T`` (``n_b x n_b``) of §6.3;
    whichever order takes fewer multiplications is used.
    """
    n_b, n_i = X1.shape[-2:]
    n_o = E1.shape[-1]
    through_P = 2 * n_b * n_i * n_o + n_i * n_o * n_o
    through_S = n_b * n_b * n_i + n_b * n_b * n_o + n_b * n_o * n_o
    if through_S < through_P:
        return (E1.mT @ (X1 @ X2.mT)) @ E2
    return (X1.mT @ E1).mT @ (X2.mT @ E2)


def term_angles(B: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``angle(B^T M, B^T)`` per sample, degrees, for ``B`` of shape ``(S, n_o, n_h)``: the angle of §6.3.

    ``<B^T, B^T M>_F = tr(B B^T M)`` is positive when ``M`` is positive semi-definite, so that angle
    is below 90°; a skew ``M`` gives exactly 90°.
    """
    Bt = B.mT
    return angle_deg_batched(Bt @ M, Bt)


# --------------------------------------------------------------------------------------------
# §11.1 Term geometry


def run_term_geometry(settings: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Angles per mode and input, and the eigenvalue histograms of ``M / (n_b n_i)``.

    Returns ``angles`` (columns ``mode, n_i, n_h, n_o, n_b, input, sample, angle``) and ``spectrum``
    (``mode, input, lower, upper, count, density, rank, n_above, largest``): per mode one set of
    ``bins`` linear bins over ``[0, q]``, ``q`` the 99.5th percentile of both inputs' eigenvalues;
    ``rank = min(n_o, n_b, n_i)`` is the rank of ``M`` (``n_o - rank`` of every sample's eigenvalues
    are zero), ``n_above`` counts the eigenvalues beyond ``q`` and ``largest`` is the largest.
    """
    s = TermGeometrySettings.from_dict(settings)
    dtype = _DTYPES[s.dtype]
    angle_frames, spectrum_frames = [], []
    for name, (n_i, n_h, n_o, n_b) in s.modes.items():
        generator = generator_for(s.seed, name)
        angles = {x: [] for x in INPUTS}
        eigenvalues = {x: [] for x in INPUTS}
        for size in _chunks(s.samples, s.chunk):
            X = torch.randn((size, n_b, n_i), generator=generator, dtype=dtype)
            E = torch.randn((size, n_b, n_o), generator=generator, dtype=dtype)
            B = torch.randn((size, n_o, n_h), generator=generator, dtype=dtype)
            for x, X_in in (("linear", X), ("relu", X.clamp_min(0.0))):
                M = linear_term_M(X_in, E, X_in, E)
                angles[x].append(term_angles(B, M))
                eigenvalues[x].append(torch.linalg.eigvalsh(M / (n_b * n_i)).reshape(-1))
        for x in INPUTS:
            values = torch.cat(angles[x]).numpy()
            angle_frames.append(pd.DataFrame({
                "mode": name, "n_i": n_i, "n_h": n_h, "n_o": n_o, "n_b": n_b, "input": x,
                "sample": np.arange(values.size), "angle": values,
            }))
        spectrum = _spectrum(name, {x: torch.cat(eigenvalues[x]).numpy() for x in INPUTS}, s.bins)
        spectrum.insert(6, "rank", min(n_o, n_b, n_i))
        spectrum_frames.append(spectrum)
    return pd.concat(angle_frames, ignore_index=True), pd.concat(spectrum_frames, ignore_index=True)


def _spectrum(mode: str, eigenvalues: Mapping[str, np.ndarray], bins: int) -> pd.DataFrame:
    # M is positive semi-definite: an eigenvalue below 0 is a zero one, rounded
    eigenvalues = {x: np.clip(values, 0.0, None) for x, values in eigenvalues.items()}
    upper = float(np.quantile(np.concatenate(list(eigenvalues.values())), 0.995))
    edges = np.linspace(0.0, upper if upper > 0 else 1.0, bins + 1)
    frames = []
    for x, values in eigenvalues.items():
        largest = float(values.max())
        count, _ = np.histogram(values, bins=edges)
        width = np.diff(edges)
        frames.append(pd.DataFrame({
            "mode": mode, "input": x, "lower": edges[:-1], "upper": edges[1:], "count": count,
            "density": count / (values.size * width),
            "n_above": int((values > edges[-1]).sum()),
            "largest": largest,
        }))
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------
# §11.2 Distribution changes


def draw_case(case: SignalCase, sizes: tuple[int, int, int, int], samples: int, generator: torch.Generator,
              dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """``X1, E1, X2, E2, B`` for ``samples`` draws of one case (method §11.2).

    ``same`` decides what the second minibatch shares with the first: nothing, the error
    (``E2 = E1``) or both (``E2 = E1, X2 = X1``, the identical data of §11.1). Entries of ``E`` and
    ``X``: ``N(mean, 1)``, ``U(0, 1) + mean`` or all ones; ``B``: ``N(b_mean, 1)``.
    """
    n_i, n_h, n_o, n_b = sizes

    def signal(shape):
        if case.signals == "ones":
            return torch.ones(shape, dtype=dtype)
        if case.signals == "uniform":
            return torch.rand(shape, generator=generator, dtype=dtype) + case.mean
        return torch.randn(shape, generator=generator, dtype=dtype) + case.mean

    X1, E1 = signal((samples, n_b, n_i)), signal((samples, n_b, n_o))
    X2 = X1 if case.same == "both" else signal((samples, n_b, n_i))
    E2 = E1 if case.same in ("error", "both") else signal((samples, n_b, n_o))
    B = torch.randn((samples, n_o, n_h), generator=generator, dtype=dtype) + case.b_mean
    return X1, E1, X2, E2, B


def run_distributions(settings: Mapping[str, Any]) -> pd.DataFrame:
    """``angle(B^T M, B^T)``, ``M = P_1^T P_2``, per case: columns ``case, sample, angle``."""
    s = DistributionSettings.from_dict(settings)
    frames = []
    for name, case in s.cases.items():
        generator = generator_for(s.seed, name)
        angles = []
        for size in _chunks(s.samples, s.chunk):
            X1, E1, X2, E2, B = draw_case(case, s.sizes, size, generator, _DTYPES[s.dtype])
            angles.append(term_angles(B, linear_term_M(X1, E1, X2, E2)))
        values = torch.cat(angles).numpy()
        frames.append(pd.DataFrame({"case": name, "sample": np.arange(values.size), "angle": values}))
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------
# §11.5 Depth: products of matrices at prescribed angles


def at_angle(A: torch.Tensor, angle_deg: torch.Tensor | float, generator: torch.Generator) -> torch.Tensor:
    """A matrix at exactly ``angle_deg`` to each ``A[s]`` (stack ``(S, ...)``), random otherwise.

    ``C = ||A|| (cos θ Â + sin θ Ĝ⊥)`` with ``Â = A / ||A||`` and ``Ĝ⊥`` the normalised part of a
    Gaussian draw ``G`` orthogonal to ``A``: by the rotational symmetry of ``G``, ``C`` is uniform on
    the cone of angle θ around ``A``, and the angle holds to rounding (no rejection).
    """
    S = A.shape[0]
    a = A.reshape(S, -1)
    norm = a.norm(dim=1, keepdim=True)
    a_hat = a / norm
    g = torch.randn(a.shape, generator=generator, dtype=A.dtype)
    g_perp = g - (g * a_hat).sum(1, keepdim=True) * a_hat
    g_hat = g_perp / g_perp.norm(dim=1, keepdim=True)
    theta = torch.as_tensor(angle_deg, dtype=A.dtype).deg2rad().reshape(-1, 1).expand(S, 1)
    return (norm * (theta.cos() * a_hat + theta.sin() * g_hat)).reshape(A.shape)


def product_angles(A, B, C, D, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``angle(A diag(m) B, C diag(m) D)`` per sample (``m`` of shape ``(S, n_2)``; none: all ones).

    The mask is the same for both products: the derivative ``f'`` of the shared inner layer, which
    multiplies the forward and the feedback path alike (method §1.3).
    """
    if mask is not None:
        A, C = A * mask[:, None, :], C * mask[:, None, :]
    return angle_deg_batched(A @ B, C @ D)


def _quantile_stats(values: np.ndarray) -> dict[str, float]:
    q05, q25, q50, q75, q95 = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
    sd = float(values.std(ddof=1)) if values.size > 1 else float("nan")
    return {"mean": float(values.mean()), "sd": sd, "sem": sd / math.sqrt(values.size), "q05": q05,
            "q25": q25, "median": q50, "q75": q75, "q95": q95, "n": int(values.size)}


def run_depth(settings: Mapping[str, Any]) -> pd.DataFrame:
    """Per cell of the grid and product (``linear``, ``masked``) the statistics of ``angle(AB, CD)``.

    Columns ``product, angle_A_C, angle_B_D, mean, sd, sem, q05, q25, median, q75, q95, n``.
    ``A, B`` are Gaussian, ``C`` and ``D`` drawn at the cell's angles to them; the masked product
    draws a Bernoulli(``mask_probability``) mask of the inner layer per sample.
    """
    s = DepthSettings.from_dict(settings)
    dtype = _DTYPES[s.dtype]
    n_1, n_2, n_3 = s.shapes
    rows = []
    for theta_AC in s.angles:
        for theta_BD in s.angles:
            generator = generator_for(s.seed, f"{theta_AC:g}_{theta_BD:g}")
            values = {"linear": [], "masked": []}
            for size in _chunks(s.samples_per_cell, s.chunk):
                A = torch.randn((size, n_1, n_2), generator=generator, dtype=dtype)
                B = torch.randn((size, n_2, n_3), generator=generator, dtype=dtype)
                C = at_angle(A, theta_AC, generator)
                D = at_angle(B, theta_BD, generator)
                mask = (torch.rand((size, n_2), generator=generator, dtype=dtype) < s.mask_probability).to(dtype)
                values["linear"].append(product_angles(A, B, C, D))
                values["masked"].append(product_angles(A, B, C, D, mask))
            for product, chunks in values.items():
                angles = torch.cat(chunks).numpy()
                angles = angles[np.isfinite(angles)]  # an all-off mask leaves a zero product: no direction
                rows.append({"product": product, "angle_A_C": theta_AC, "angle_B_D": theta_BD,
                             **_quantile_stats(angles)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Jobs and artifacts

EXPERIMENTS = {"term_geometry": TermGeometrySettings, "distributions": DistributionSettings, "depth": DepthSettings}


def write_toy_table(frame: pd.DataFrame, out_path: str | Path, experiment: str, settings: Mapping[str, Any],
                    extra: Mapping[str, Any] | None = None) -> Path:
    """``frame`` as ``out_path`` (``.parquet``) and its description as the sibling ``.json``, atomically.

    The JSON holds the experiment, its settings slice, the code version, the columns and ``extra``.
    The parquet is written first, so a killed job never leaves a pair that looks complete.
    """
    out_path = Path(out_path)
    if out_path.suffix != ".parquet":
        raise ValueError(f"toy table path must end in .parquet, got {out_path}")
    meta = {"format": ARTIFACT_FORMAT, "experiment": experiment, "settings": artifacts.json_plain(settings),
            "code_version": artifacts.code_version(), "torch": torch.__version__,
            "columns": list(frame.columns), **artifacts.json_plain(extra or {})}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    artifacts.atomic_write_parquet(out_path, frame)
    artifacts.atomic_write_json(out_path.with_suffix(".json"), meta)
    return out_path


def term_geometry_job(settings: Mapping[str, Any], angles_path: str | Path, spectrum_path: str | Path) -> None:
    """§11.1: ``toy/term_geometry.parquet`` and ``toy/term_spectrum.parquet`` (+ ``.json``)."""
    start = time.perf_counter()
    angles, spectrum = run_term_geometry(settings)
    timings = {"timings": {"run_s": time.perf_counter() - start}}
    write_toy_table(angles, angles_path, "term_geometry", settings, timings)
    write_toy_table(spectrum, spectrum_path, "term_spectrum", settings, timings)


def distributions_job(settings: Mapping[str, Any], out_path: str | Path) -> None:
    """§11.2: ``toy/distributions.parquet`` (+ ``.json``)."""
    start = time.perf_counter()
    frame = run_distributions(settings)
    write_toy_table(frame, out_path, "distributions", settings, {"timings": {"run_s": time.perf_counter() - start}})


def depth_job(settings: Mapping[str, Any], out_path: str | Path) -> None:
    """§11.5: ``toy/depth.parquet`` (+ ``.json``)."""
    start = time.perf_counter()
    frame = run_depth(settings)
    write_toy_table(frame, out_path, "depth", settings, {"timings": {"run_s": time.perf_counter() - start}})

