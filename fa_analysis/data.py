"""MNIST data, target codes, label shuffling and minibatch order (method §4).

The raw IDX files are checked before torchvision reads them (a truncated or corrupt file is an
error naming the file, never a silently wrong tensor); images are scaled to [0, 1] and resized
28x28 -> 15x15 with bilinear interpolation without antialiasing, which is OpenCV's default
``INTER_LINEAR``. ``prepare_dataset`` writes the self-describing ``.npz`` artifact that training
jobs read back with ``load_prepared``; ``prepare_label_noise`` writes the fixed draw of noisy
training labels that ``load_labels`` reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fa_analysis.artifacts import atomic_write_npz, code_version

N_CLASSES = 10
IMAGE_SIDE = 28
CODE_KINDS = ("five_hot", "one_hot")
UNITS_PER_CLASS = 5  # five_hot: each class owns 5 of the 50 output units
RESIZE_METHOD = "bilinear, no antialiasing, half-pixel centres = OpenCV INTER_LINEAR"

PREPARED_FORMAT = "fa_analysis.prepared_mnist/1"
LABEL_NOISE_FORMAT = "fa_analysis.label_noise/1"

# IDX ("SN3 Pascal Vincent") magic numbers: 0x08 = unsigned byte, then the number of dimensions.
_IDX_LABELS_MAGIC = 0x00000801
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class MNISTFormatError(ValueError):
    """A raw MNIST IDX file is truncated, corrupt or inconsistent with its partner file."""


@dataclass(frozen=True)
class PreparedData:
    """The prepared dataset (method §4): flattened resized images in [0, 1] and class labels."""

    X_train: torch.Tensor  # (N_train, image_size**2) float32
    y_train: torch.Tensor  # (N_train,) int64
    X_test: torch.Tensor  # (N_test, image_size**2) float32
    y_test: torch.Tensor  # (N_test,) int64
    metadata: dict[str, Any]


# --------------------------------------------------------------------------------------------
# Raw MNIST: validation and loading
# --------------------------------------------------------------------------------------------


def mnist_raw_dir(root: str | os.PathLike) -> Path:
    """Where torchvision keeps the raw IDX files for ``root``: ``{root}/MNIST/raw``."""
    return Path(root) / "MNIST" / "raw"


def _check_idx_pair(images_path: Path, labels_path: Path) -> tuple[int, np.ndarray]:
    """Validate one images/labels IDX pair; return the image count and the labels (uint8).

    Checks the magic numbers, the header dimensions (N x 28 x 28), that each file's size is
    exactly what its header implies, that both files hold the same N, and that labels are 0..9.
    """
    n_images = _check_idx_header(images_path, _IDX_IMAGES_MAGIC, (IMAGE_SIDE, IMAGE_SIDE))
    n_labels = _check_idx_header(labels_path, _IDX_LABELS_MAGIC, ())
    if n_images != n_labels:
        raise MNISTFormatError(
            f"{images_path} holds {n_images} images but {labels_path} holds {n_labels} labels; "
            "replace both files with an intact copy of MNIST"
        )
    labels = np.fromfile(labels_path, dtype=np.uint8, offset=8)
    bad = np.flatnonzero(labels >= N_CLASSES)
    if bad.size:
        raise MNISTFormatError(
            f"{labels_path}: {bad.size} label values outside 0..{N_CLASSES - 1} "
            f"(first at index {bad[0]}: {labels[bad[0]]}); replace the file with an intact copy"
        )
    return n_images, labels


def _check_idx_header(path: Path, magic: int, trailing_dims: tuple[int, ...]) -> int:
    """Check one IDX file's magic number, trailing dimensions and size; return its item count."""
    header_size = 4 * (2 + len(trailing_dims))
    file_size = path.stat().st_size
    fix = "replace the file with an intact copy of MNIST (or delete it and set data.download: true)"
    if file_size < header_size:
        raise MNISTFormatError(
            f"{path} is truncated: {file_size} bytes, shorter than its {header_size}-byte header; {fix}"
        )
    with open(path, "rb") as f:
        header = struct.unpack(f">{header_size // 4}I", f.read(header_size))
    if header[0] != magic:
        raise MNISTFormatError(
            f"{path} has magic number 0x{header[0]:08x}, expected 0x{magic:08x}: "
            f"not an uncompressed MNIST IDX file of this kind; {fix}"
        )
    n, dims = header[1], tuple(header[2:])
    if dims != trailing_dims:
        raise MNISTFormatError(
            f"{path} header says items of shape {dims}, expected {trailing_dims}; {fix}"
        )
    expected = header_size + n * int(np.prod(trailing_dims, dtype=np.int64))
    if file_size != expected:
        raise MNISTFormatError(
            f"{path} is {file_size} bytes but its header ({n} items of shape {dims}) implies "
            f"{expected} bytes (truncated or padded); {fix}"
        )
    return n


def _missing_raw_files(raw: Path) -> list[str]:
    names = _IDX_FILES[True] + _IDX_FILES[False]
    return [name for name in names if not (raw / name).is_file()]


def load_mnist_raw(
    root: str | os.PathLike, download: bool = False, train: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST through ``torchvision.datasets.MNIST``: images uint8 (N, 28, 28), labels int64 (N,).

    The IDX files under ``{root}/MNIST/raw`` are validated first; with ``download`` off a missing
    file is a ``FileNotFoundError`` naming that directory and the config keys to change. With
    ``download`` on, torchvision fetches missing files (checking the archives' md5) and the result
    is validated before it is returned.
    """
    from torchvision.datasets import MNIST

    raw = mnist_raw_dir(root)
    missing = _missing_raw_files(raw)
    if missing and not download:
        raise FileNotFoundError(
            f"MNIST not found: looked in {raw} for {', '.join(missing)}. Set `data.root` to a "
            "directory holding MNIST/raw/*-ubyte (torchvision's layout), or set "
            "`data.download: true` to download it there."
        )
    images_path, labels_path = (raw / name for name in _IDX_FILES[bool(train)])
    if missing:
        try:
            dataset = MNIST(str(root), train=train, download=True)
        except Exception as err:
            raise RuntimeError(
                f"could not download MNIST into {raw} ({err}); on an offline machine set "
                "`data.download: false` and `data.root` to a copy of MNIST"
            ) from err
        n, labels = _check_idx_pair(images_path, labels_path)
    else:
        n, labels = _check_idx_pair(images_path, labels_path)
        dataset = MNIST(str(root), train=train, download=False)
    images, targets = dataset.data, dataset.targets
    # torchvision prefers a legacy {root}/MNIST/processed cache if one exists: make sure what it
    # returned is what the validated raw files hold.
    if tuple(images.shape) != (n, IMAGE_SIDE, IMAGE_SIDE) or not np.array_equal(
        targets.numpy(), labels
    ):
        raise MNISTFormatError(
            f"torchvision returned data that differs from the validated files in {raw} "
            f"(images {tuple(images.shape)}); remove the stale cache {raw.parent / 'processed'}"
        )
    return images, targets.to(torch.int64)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Resize, codes, decoding
# --------------------------------------------------------------------------------------------


def resize_images(images: torch.Tensor | np.ndarray, size: int = 15) -> torch.Tensor:
    """Scale uint8 images (N, H, W) to [0, 1] and resize to (N, size*size) float32 (method §4).

    Bilinear, half-pixel centres, no antialiasing: equal to ``cv2.resize(img / 255, (size, size),
    interpolation=cv2.INTER_LINEAR)`` on float32 images.
    """
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 3:
        raise ValueError(
            f"resize_images expects uint8 images of shape (N, H, W), got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    _check_positive_int("image_size", size)
    out = torch.empty((images.shape[0], size * size), dtype=torch.float32)
    chunk = 10_000  # bounds the float32 copy of the input to ~30 MB
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk].to(torch.float32).div_(255.0).unsqueeze(1)
        resized = F.interpolate(
            block, size=(size, size), mode="bilinear", align_corners=False, antialias=False
        )
        out[start : start + chunk] = resized.reshape(-1, size * size)
    return out


def make_codes(
    kind: str, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Target code map (method §2): row c is the target output ``Y*`` of class c.

    ``five_hot``: 50 outputs, class c owns 5 units disjoint from every other class's, the
    assignment a random permutation drawn from ``generator``. ``one_hot``: the 10x10 identity
    (the generator is not used).
    """
    _check_choice("targets", kind, CODE_KINDS)
    if kind == "one_hot":
        return torch.eye(N_CLASSES, dtype=dtype)
    n_out = N_CLASSES * UNITS_PER_CLASS
    units = torch.randperm(n_out, generator=generator).view(N_CLASSES, UNITS_PER_CLASS)
    codes = torch.zeros(N_CLASSES, n_out, dtype=dtype)
    codes.scatter_(1, units, 1.0)
    return codes


def phase_codes(kind: str, seed: int, phase: int) -> torch.Tensor:
    """The code map of training phase ``phase`` of the run with seed ``seed`` (method §4, label change).

    Its generator is seeded with ``seed + 10_000 * (phase + 1)`` (docs/design.md), so every phase
    boundary draws a new random code map, reproducibly.
    """
    generator = torch.Generator().manual_seed(int(seed) + 10_000 * (int(phase) + 1))
    return make_codes(kind, generator)


def smooth_targets(codes: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label smoothing (method §2.3): the targets ``y (1 - s) + s`` of the code map ``codes``.

    Every 0 of a code becomes ``s``, every 1 stays 1 (the study's ``y 0.95 + 0.05`` is
    ``s = 0.05``); ``s = 0`` returns ``codes`` itself. The prediction is still read with the
    unsmoothed codes (``decode``): the offset ``s`` is the same for every class, so it cannot
    change which class maximises ``<output, code_c>``.
    """
    if not 0 <= smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {smoothing!r}")
    return codes if smoothing == 0 else codes * (1 - smoothing) + smoothing


def decode(outputs: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Predicted classes ``argmax_c <output, code_c>`` (method §2) for outputs (N, n_out)."""
    return torch.argmax(outputs @ codes.T.to(outputs.dtype), dim=1)


# --------------------------------------------------------------------------------------------
# Label noise and minibatch order
# --------------------------------------------------------------------------------------------


def _label_noise_draw(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One seeded draw for every noise level: an order of the N labels and a random class for each."""
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=generator)
    random_classes = torch.randint(0, N_CLASSES, (n,), generator=generator)
    return order, random_classes


def label_noise_indices(n: int, percent: float, seed: int) -> torch.Tensor:
    """Indices of the ``round(percent/100 * n)`` training labels that noise level ``percent`` replaces.

    The first entries of one seeded permutation, so for a fixed seed the replaced set of a lower
    level is contained in that of a higher level.
    """
    _check_percent(percent)
    order, _ = _label_noise_draw(n, seed)
    return order[: round(percent * n / 100)]


def apply_label_noise(labels: torch.Tensor, percent: float, seed: int) -> torch.Tensor:
    """Label noise p (method §4): replace ``round(p*N)`` random labels by uniformly random classes.

    Drawn once from ``seed`` (the same seed gives the same noisy labels; levels are nested). A
    replacement class may equal the true one, so about 90 % of the replaced labels change.
    """
    _check_percent(percent)
    labels = torch.as_tensor(labels)
    order, random_classes = _label_noise_draw(labels.shape[0], seed)
    replaced = order[: round(percent * labels.shape[0] / 100)]
    noisy = labels.to(torch.int64).clone()
    noisy[replaced] = random_classes[replaced]
    return noisy


def batch_order(
    n: int, batch_size: int, epoch: int, reshuffle: bool, seed: int
) -> torch.Tensor:
    """Order of the training examples in epoch ``epoch`` (method §4); minibatch i is ``order[i*bs:(i+1)*bs]``.

    ``reshuffle`` False: one permutation drawn from ``seed``, the same every epoch (what makes
    lag-60 alignment terms autocorrelated). True: a different permutation per epoch, drawn from
    ``(seed, epoch)``. If ``batch_size`` does not divide ``n`` the last partial batch is dropped:
    the result has ``(n // batch_size) * batch_size`` entries.
    """
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("n", n)
    if not isinstance(reshuffle, bool):
        raise ValueError(f"reshuffle must be true or false, got {reshuffle!r}")
    if batch_size > n:
        raise ValueError(
            f"batch_size {batch_size} exceeds the {n} training examples: lower "
            "`training.batch_size` or raise `data.train_subset`"
        )
    if reshuffle:
        # SeedSequence mixes (seed, epoch) so no two (seed, epoch) pairs share a stream.
        state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, np.uint32)
        generator_seed = int(state[0]) << 32 | int(state[1])
    else:
        generator_seed = int(seed)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(generator_seed))
    return order[: (n // batch_size) * batch_size]


# --------------------------------------------------------------------------------------------
# Artifacts: prepared dataset and noisy labels
# --------------------------------------------------------------------------------------------


def prepare_dataset(
    root: str | os.PathLike,
    download: bool,
    out_path: str | os.PathLike,
    image_size: int = 15,
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> Path:
    """Write the prepared MNIST ``.npz`` (method §4) atomically; return its path.

    Entries ``X_train``, ``y_train``, ``X_test``, ``y_test`` and a JSON ``metadata`` string
    (resize method, md5 of the source files, shapes, subsets, package version). A subset takes
    the first N images of its split.
    """
    _check_positive_int("data.image_size", image_size)
    for key, value in (("data.train_subset", train_subset), ("data.test_subset", test_subset)):
        if value is not None:
            _check_positive_int(key, value)
    splits = {}
    for split, train, subset, subset_key in (
        ("train", True, train_subset, "data.train_subset"),
        ("test", False, test_subset, "data.test_subset"),
    ):
        images, labels = load_mnist_raw(root, download=download, train=train)
        if subset is not None and subset > images.shape[0]:
            raise ValueError(
                f"{subset_key} = {subset} exceeds the {images.shape[0]} {split} images; "
                "use null for all of them"
            )
        splits[split] = (images[:subset], labels[:subset])
    arrays = {}
    for split, (images, labels) in splits.items():
        arrays[f"X_{split}"] = resize_images(images, image_size).numpy()
        arrays[f"y_{split}"] = labels.numpy()
    raw = mnist_raw_dir(root)
    metadata = {
        "format": PREPARED_FORMAT,
        "resize": RESIZE_METHOD,
        "image_size": image_size,
        "pixel_scale": "pixels / 255",
        "train_subset": train_subset,
        "test_subset": test_subset,
        "shapes": {name: list(array.shape) for name, array in arrays.items()},
        "source_md5": {name: _md5(raw / name) for name in _IDX_FILES[True] + _IDX_FILES[False]},
        "versions": _versions(),
    }
    return atomic_write_npz(out_path, metadata=np.array(json.dumps(metadata)), **arrays)


def prepare_label_noise(
    prepared_path: str | os.PathLike, percent: float, seed: int, out_path: str | os.PathLike
) -> Path:
    """Write the noisy training labels of level ``percent`` (method §4, §8) as ``y_train_noisy`` + metadata."""
    _check_percent(percent)
    data = load_prepared(prepared_path)
    noisy = apply_label_noise(data.y_train, percent, seed)
    n = data.y_train.shape[0]
    metadata = {
        "format": LABEL_NOISE_FORMAT,
        "percent": float(percent),
        "seed": int(seed),
        "n_train": n,
        "n_replaced": round(percent * n / 100),
        "fraction_changed": float((noisy != data.y_train).double().mean()),
        "prepared_source_md5": data.metadata["source_md5"],
        "train_subset": data.metadata["train_subset"],
        "versions": _versions(),
    }
    return atomic_write_npz(
        out_path, y_train_noisy=noisy.numpy(), metadata=np.array(json.dumps(metadata))
    )


def load_prepared(path: str | os.PathLike) -> PreparedData:
    """Read a ``prepare_dataset`` artifact as torch tensors."""
    arrays, metadata = _load_artifact(
        path, PREPARED_FORMAT, ("X_train", "y_train", "X_test", "y_test"), "prepare_dataset"
    )
    return PreparedData(
        X_train=torch.from_numpy(arrays["X_train"]),
        y_train=torch.from_numpy(arrays["y_train"]),
        X_test=torch.from_numpy(arrays["X_test"]),
        y_test=torch.from_numpy(arrays["y_test"]),
        metadata=metadata,
    )


def load_labels(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a ``prepare_label_noise`` artifact: noisy training labels (int64 tensor) and metadata."""
    arrays, metadata = _load_artifact(
        path, LABEL_NOISE_FORMAT, ("y_train_noisy",), "prepare_label_noise"
    )
    return torch.from_numpy(arrays["y_train_noisy"]), metadata


def _load_artifact(
    path: str | os.PathLike, expected_format: str, keys: tuple[str, ...], producer: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: create it with fa_analysis.data.{producer} (the workflow's "
            "data stage)"
        )
    not_ours = f"{path} is not a {expected_format} artifact written by fa_analysis.data.{producer}"
    try:
        with np.load(path, allow_pickle=False) as npz:
            contents = {name: npz[name] for name in npz.files}
        metadata = json.loads(str(contents["metadata"])) if "metadata" in contents else None
    except Exception as err:  # not an npz, a corrupt zip, a pickle, bad JSON...
        raise ValueError(f"{not_ours} (unreadable: {err}); regenerate it") from err
    missing = sorted(({"metadata"} | set(keys)) - set(contents))
    if missing:
        raise ValueError(f"{not_ours}: missing entries {missing}; regenerate it")
    if not isinstance(metadata, dict) or metadata.get("format") != expected_format:
        found = metadata.get("format") if isinstance(metadata, dict) else None
        raise ValueError(f"{not_ours}: its metadata format is {found!r}; regenerate it")
    return {key: contents[key] for key in keys}, metadata


def _versions() -> dict[str, str]:
    import torchvision

    return {
        "fa_analysis": code_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
    }


# --------------------------------------------------------------------------------------------
# Parameter checks
# --------------------------------------------------------------------------------------------


def _check_choice(name: str, value: Any, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ValueError(f"unknown {name} {value!r}; accepted values: {', '.join(accepted)}")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_percent(percent: Any) -> None:
    number = (int, float, np.integer, np.floating)
    if isinstance(percent, bool) or not isinstance(percent, number) or not 0 <= percent <= 100:
        raise ValueError(f"label_noise percent must be a number in 0..100, got {percent!r}")
