"""Atomic, self-describing outputs (docs/design.md, "Run artifact").

A file is written to a temporary name in its own directory and renamed into place; a run
directory is filled as a temporary sibling and renamed into place when complete, so a killed
job never leaves a file or directory that Snakemake could take for a finished output.
``code_version`` names the package version and a hash of the package's sources, so every
artifact says which code made it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import fa_analysis

PACKAGE_DIR = Path(fa_analysis.__file__).resolve().parent


def _hash_files(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _module_paths(module: str | ModuleType) -> list[Path]:
    """The source files of a package module: ``figures.style`` -> ``figures/style.py``; a
    subpackage (``figures``) -> every ``.py`` file in it."""
    if isinstance(module, ModuleType):
        path = Path(module.__file__).resolve()
        return sorted(path.parent.rglob("*.py")) if hasattr(module, "__path__") else [path]
    base = PACKAGE_DIR.joinpath(*module.removeprefix("fa_analysis.").split("."))
    path = base.with_name(f"{base.name}.py")
    if path.is_file():
        return [path]
    if (base / "__init__.py").is_file():
        return sorted(base.rglob("*.py"))
    raise ValueError(f"source_hash: no module {module!r} in {PACKAGE_DIR} (expected {path} or a package {base})")


def source_hash(modules: Iterable[str | ModuleType] | None = None) -> str:
    """SHA-256 (hex) of the sources of the named package modules (e.g. ``["network", "train"]``,
    ``["figures.style"]``; a subpackage's name, ``figures``, covers every module in it).

    ``None`` hashes every ``.py`` file of the package. The names enter the hash, so moving code
    between modules changes it.
    """
    if modules is None:
        paths = sorted(PACKAGE_DIR.rglob("*.py"))
    else:
        paths = sorted({path for module in modules for path in _module_paths(module)})
    return _hash_files(paths)


def code_version() -> str:
    """``"<package version>+<first 12 hex digits of the hash of all package sources>"``."""
    return f"{fa_analysis.__version__}+{source_hash()[:12]}"


# --------------------------------------------------------------------------------------------
# Atomic files
# --------------------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; results are shared with other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """JSON (indented, keys in insertion order) written atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=True) + "\n").encode())


def atomic_write_parquet(path: str | os.PathLike, frame) -> Path:
    """A pandas DataFrame as Parquet (pyarrow), written atomically."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Arrays as an uncompressed ``.npz``, written atomically (``path`` should end in ``.npz``)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


# --------------------------------------------------------------------------------------------
# Atomic directories
# --------------------------------------------------------------------------------------------


@contextmanager
def staged_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir``; on success move it into place as ``out_dir``.

    An existing ``out_dir`` (a directory, or a file) is replaced only once the new one is complete;
    callers that must not replace anything check first (``fa-analysis train`` without ``--force``).
    On an exception the temporary directory is removed and ``out_dir`` is left as it was.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{tag}"
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        os.replace(tmp, out_dir)


def json_plain(value: Any) -> Any:
    """Config values as JSON builtins for an artifact's description: tuples to lists, mappings to
    dicts with string keys, non-finite floats to their names."""
    if isinstance(value, Mapping):
        return {str(k): json_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
