"""A learnable toy classification problem for tests that train small nets on synthetic data."""

from types import SimpleNamespace

import torch


def projection_problem(n_examples: int, seed: int, n_in: int = 16, metadata: dict | None = None) -> SimpleNamespace:
    """``n_in`` uniform inputs per example, class = argmax of a fixed random projection to 10 classes;
    the first 80 % are the training set, the rest the test set (the fields of a prepared dataset)."""
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(n_in, 10, generator=g)
    X = torch.rand(n_examples, n_in, generator=g)
    y = torch.argmax(X @ proj, dim=1)
    n_train = n_examples * 4 // 5
    return SimpleNamespace(X_train=X[:n_train], y_train=y[:n_train], X_test=X[n_train:], y_test=y[n_train:],
                           metadata=metadata if metadata is not None else {})
