"""Tests of the data module (method §4) on the real MNIST files (``mnist_root`` from conftest)."""

import hashlib
import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fa_analysis import data

REAL_TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
RAW_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture(scope="module")
def prepared_path(mnist_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "mnist15.npz"
    return data.prepare_dataset(mnist_root, download=False, out_path=out)


@pytest.fixture(scope="module")
def prepared(prepared_path) -> data.PreparedData:
    return data.load_prepared(prepared_path)


def _root_with(tmp_path: Path, mnist_root: Path, name: str, content: bytes) -> Path:
    """A copy of the MNIST root (links to the real files) whose file ``name`` holds ``content``."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for other in RAW_NAMES:
        if other != name:
            (raw / other).symlink_to(mnist_root / "MNIST" / "raw" / other)
    (raw / name).write_bytes(content)
    return tmp_path


def _real_bytes(mnist_root: Path, name: str) -> bytes:
    return (mnist_root / "MNIST" / "raw" / name).read_bytes()


# ---- real data: shapes, values, labels, resize -------------------------------------------


def test_prepared_shapes_dtypes_and_range(prepared):
    assert prepared.X_train.shape == (60000, 225)
    assert prepared.X_test.shape == (10000, 225)
    assert prepared.y_train.shape == (60000,) and prepared.y_test.shape == (10000,)
    assert prepared.X_train.dtype == torch.float32 and prepared.X_test.dtype == torch.float32
    assert prepared.y_train.dtype == torch.int64 and prepared.y_test.dtype == torch.int64
    for X in (prepared.X_train, prepared.X_test):
        assert float(X.min()) == 0.0 and float(X.max()) <= 1.0
        assert float(X.max()) > 0.9  # scaled by 255, not left in 0..255 nor crushed
    assert set(prepared.y_test.unique().tolist()) == set(range(10))


def test_real_train_label_counts(prepared):
    assert torch.bincount(prepared.y_train, minlength=10).tolist() == REAL_TRAIN_LABEL_COUNTS


def test_metadata_records_method_checksums_and_shapes(prepared, mnist_root):
    meta = prepared.metadata
    assert meta["resize"] == data.RESIZE_METHOD
    assert "INTER_LINEAR" in meta["resize"] and "no antialiasing" in meta["resize"]
    assert meta["shapes"]["X_train"] == [60000, 225]
    assert meta["train_subset"] is None and meta["test_subset"] is None
    assert meta["versions"]["fa_analysis"]
    labels_file = mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    assert meta["source_md5"][labels_file.name] == hashlib.md5(labels_file.read_bytes()).hexdigest()


def test_resize_equals_opencv_inter_linear_on_real_images(mnist_root, prepared):
    images, labels = data.load_mnist_raw(mnist_root, download=False, train=True)
    assert images.dtype == torch.uint8 and images.shape == (60000, 28, 28)
    assert torch.equal(labels, prepared.y_train)
    sample = images[:2000].numpy().astype(np.float32) / 255.0
    expected = np.stack([cv2.resize(im, (15, 15), interpolation=cv2.INTER_LINEAR) for im in sample])
    ours = prepared.X_train[:2000].numpy().reshape(-1, 15, 15)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)
    # The comparison discriminates: area averaging (antialiased downsampling) is far off.
    area = np.stack([cv2.resize(im, (15, 15), interpolation=cv2.INTER_AREA) for im in sample])
    assert np.abs(ours - area).max() > 0.05


def test_resize_other_sizes_match_opencv(mnist_root):
    images, _ = data.load_mnist_raw(mnist_root, download=False, train=False)
    sample = images[:200]
    for size in (7, 20):
        ours = data.resize_images(sample, size).numpy().reshape(-1, size, size)
        scaled = sample.numpy().astype(np.float32) / 255.0
        expected = np.stack([cv2.resize(im, (size, size)) for im in scaled])
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def test_subsets_take_the_first_images(mnist_root, prepared, tmp_path):
    path = data.prepare_dataset(
        mnist_root, False, tmp_path / "small.npz", train_subset=300, test_subset=100
    )
    small = data.load_prepared(path)
    assert torch.equal(small.X_train, prepared.X_train[:300])
    assert torch.equal(small.y_test, prepared.y_test[:100])
    assert small.metadata["train_subset"] == 300 and small.metadata["shapes"]["X_test"] == [100, 225]
    assert [p.name for p in tmp_path.iterdir()] == ["small.npz"]  # no temporary file left


# ---- codes and decoding -------------------------------------------------------------------


def test_five_hot_codes_are_disjoint_and_decodable():
    codes = data.make_codes("five_hot", torch.Generator().manual_seed(0))
    assert codes.shape == (10, 50) and codes.dtype == torch.float32
    assert codes.sum(dim=1).tolist() == [5.0] * 10
    assert codes.sum(dim=0).tolist() == [1.0] * 50  # every unit belongs to exactly one class
    assert torch.equal(codes @ codes.T, 5 * torch.eye(10))
    assert torch.equal(data.decode(codes, codes), torch.arange(10))


def test_five_hot_decoding_survives_noise():
    generator = torch.Generator().manual_seed(1)
    codes = data.make_codes("five_hot", generator)
    y = torch.randint(0, 10, (2000,), generator=generator)
    outputs = codes[y] + 0.2 * torch.randn(2000, 50, generator=generator)
    assert torch.equal(data.decode(outputs, codes), y)


def test_five_hot_assignment_is_random_and_seeded():
    first = data.make_codes("five_hot", torch.Generator().manual_seed(3))
    again = data.make_codes("five_hot", torch.Generator().manual_seed(3))
    other = data.make_codes("five_hot", torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(data.phase_codes("five_hot", 0, 0), data.phase_codes("five_hot", 0, 1))


def test_one_hot_codes_are_identity():
    codes = data.make_codes("one_hot", torch.Generator().manual_seed(0))
    assert torch.equal(codes, torch.eye(10))
    outputs = torch.tensor([[0.1, 0.9] + [0.0] * 8, [0.0] * 9 + [0.3]])
    assert data.decode(outputs, codes).tolist() == [1, 9]


def test_unknown_code_kind_names_accepted_values():
    with pytest.raises(ValueError, match=r"unknown targets 'three_hot'.*five_hot, one_hot"):
        data.make_codes("three_hot", torch.Generator())


# ---- label noise -------------------------------------------------------------------------


@pytest.mark.parametrize("percent", [0, 20, 40, 100])
def test_label_noise_replaces_requested_fraction(prepared, percent):
    y = prepared.y_train
    replaced = data.label_noise_indices(len(y), percent, seed=5)
    assert len(replaced) == round(percent * len(y) / 100)
    assert len(replaced.unique()) == len(replaced)
    noisy = data.apply_label_noise(y, percent, seed=5)
    assert noisy.dtype == torch.int64 and int(noisy.min()) >= 0 and int(noisy.max()) <= 9
    changed = noisy != y
    untouched = torch.ones(len(y), dtype=torch.bool)
    untouched[replaced] = False
    assert not changed[untouched].any()
    # Uniform replacement keeps the true class with probability 1/10.
    assert abs(float(changed.double().mean()) - 0.9 * percent / 100) < 0.01


def test_label_noise_at_100_percent_is_uniform(prepared):
    noisy = data.apply_label_noise(prepared.y_train, 100, seed=0)
    counts = torch.bincount(noisy, minlength=10).double() / len(noisy)
    assert torch.allclose(counts, torch.full((10,), 0.1, dtype=torch.float64), atol=0.01)


def test_label_noise_is_reproducible_per_seed_and_nested(prepared):
    y = prepared.y_train
    a = data.apply_label_noise(y, 40, seed=7)
    assert torch.equal(a, data.apply_label_noise(y, 40, seed=7))
    assert not torch.equal(a, data.apply_label_noise(y, 40, seed=8))
    lower = data.apply_label_noise(y, 20, seed=7)
    changed_lower = lower != y
    assert torch.equal(a[changed_lower], lower[changed_lower])


def test_prepare_label_noise_artifact(prepared_path, tmp_path):
    out = data.prepare_label_noise(prepared_path, 60, seed=2021, out_path=tmp_path / "noisy.npz")
    labels, meta = data.load_labels(out)
    y = data.load_prepared(prepared_path).y_train
    assert torch.equal(labels, data.apply_label_noise(y, 60, seed=2021))
    assert meta["percent"] == 60 and meta["seed"] == 2021 and meta["n_replaced"] == 36000
    assert meta["fraction_changed"] == pytest.approx(float((labels != y).double().mean()))


@pytest.mark.parametrize("percent", [-1, 100.5, "20"])
def test_bad_noise_percent_is_an_error(percent):
    with pytest.raises(ValueError, match="percent"):
        data.apply_label_noise(torch.zeros(10, dtype=torch.int64), percent, seed=0)


# ---- minibatch order ---------------------------------------------------------------------


def test_fixed_order_repeats_every_epoch():
    orders = [data.batch_order(60000, 1000, epoch, reshuffle=False, seed=3) for epoch in range(3)]
    assert torch.equal(orders[0], orders[1]) and torch.equal(orders[0], orders[2])
    assert torch.equal(orders[0].sort().values, torch.arange(60000))
    assert not torch.equal(orders[0], torch.arange(60000))
    assert not torch.equal(orders[0], data.batch_order(60000, 1000, 0, reshuffle=False, seed=4))


def test_reshuffle_draws_a_new_order_each_epoch():
    orders = [data.batch_order(600, 100, epoch, reshuffle=True, seed=3) for epoch in range(3)]
    for order in orders:
        assert torch.equal(order.sort().values, torch.arange(600))
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    assert torch.equal(orders[1], data.batch_order(600, 100, 1, reshuffle=True, seed=3))
    assert not torch.equal(orders[1], data.batch_order(600, 100, 1, reshuffle=True, seed=4))


def test_partial_last_batch_is_dropped():
    order = data.batch_order(10, 3, 0, reshuffle=False, seed=0)
    assert len(order) == 9 and len(order.unique()) == 9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 11}, "batch_size 11 exceeds"),
        ({"reshuffle": "yes"}, "reshuffle"),
    ],
)
def test_bad_batch_order_arguments(kwargs, match):
    args = {"n": 10, "batch_size": 2, "epoch": 0, "reshuffle": False, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        data.batch_order(**args)


# ---- bad inputs --------------------------------------------------------------------------


def test_missing_mnist_without_download_names_path_and_config_keys(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        data.load_mnist_raw(tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "data.root" in message and "data.download: true" in message
    assert not (tmp_path / "MNIST").exists()  # nothing was created or downloaded


def test_truncated_images_file_is_an_error_naming_it(tmp_path, mnist_root):
    name = "t10k-images-idx3-ubyte"
    root = _root_with(tmp_path, mnist_root, name, _real_bytes(mnist_root, name)[:500_000])
    with pytest.raises(data.MNISTFormatError, match=rf"{name} is 500000 bytes .* implies 7840016"):
        data.load_mnist_raw(root, download=False, train=False)


def test_padded_file_is_an_error_naming_it(tmp_path, mnist_root):
    name = "t10k-labels-idx1-ubyte"
    root = _root_with(tmp_path, mnist_root, name, _real_bytes(mnist_root, name) + b"\x00")
    with pytest.raises(data.MNISTFormatError, match=rf"{name} is 10009 bytes .* implies 10008"):
        data.load_mnist_raw(root, download=False, train=False)


def test_file_shorter_than_header_is_an_error(tmp_path, mnist_root):
    name = "t10k-labels-idx1-ubyte"
    root = _root_with(tmp_path, mnist_root, name, _real_bytes(mnist_root, name)[:5])
    with pytest.raises(data.MNISTFormatError, match=rf"{name} is truncated"):
        data.load_mnist_raw(root, download=False, train=False)


def test_corrupt_magic_number_is_an_error_naming_the_file(tmp_path, mnist_root):
    name = "t10k-labels-idx1-ubyte"
    content = bytearray(_real_bytes(mnist_root, name))
    content[3] = 0x03  # claims to be an image file
    root = _root_with(tmp_path, mnist_root, name, bytes(content))
    with pytest.raises(data.MNISTFormatError, match=rf"{name} has magic number 0x00000803"):
        data.load_mnist_raw(root, download=False, train=False)


def test_wrong_header_dimensions_are_an_error(tmp_path, mnist_root):
    name = "t10k-images-idx3-ubyte"
    content = bytearray(_real_bytes(mnist_root, name))
    content[8:16] = struct.pack(">II", 32, 24500)  # same byte count, different shape
    root = _root_with(tmp_path, mnist_root, name, bytes(content))
    with pytest.raises(data.MNISTFormatError, match=rf"{name} header says items of shape \(32, 24500\)"):
        data.load_mnist_raw(root, download=False, train=False)


def test_label_out_of_range_is_an_error(tmp_path, mnist_root):
    name = "t10k-labels-idx1-ubyte"
    content = bytearray(_real_bytes(mnist_root, name))
    content[8 + 17] = 12
    root = _root_with(tmp_path, mnist_root, name, bytes(content))
    with pytest.raises(data.MNISTFormatError, match=rf"{name}: 1 label values outside 0..9 .*index 17: 12"):
        data.load_mnist_raw(root, download=False, train=False)


def test_image_and_label_counts_must_agree(tmp_path, mnist_root):
    name = "t10k-labels-idx1-ubyte"
    content = _real_bytes(mnist_root, name)
    shorter = struct.pack(">II", 0x801, 9999) + content[8:-1]
    root = _root_with(tmp_path, mnist_root, name, shorter)
    with pytest.raises(data.MNISTFormatError, match="10000 images but .* 9999 labels"):
        data.load_mnist_raw(root, download=False, train=False)


def test_resize_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        data.resize_images(torch.zeros(2, 28, 28))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 0}, "data.image_size"),
        ({"train_subset": -5}, "data.train_subset"),
        ({"test_subset": 10**6}, "data.test_subset = 1000000 exceeds"),
    ],
)
def test_bad_prepare_options(mnist_root, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.prepare_dataset(mnist_root, False, tmp_path / "x.npz", **kwargs)
    assert not (tmp_path / "x.npz").exists()


def test_load_prepared_missing_or_foreign_files(tmp_path, prepared_path):
    with pytest.raises(FileNotFoundError, match="prepare_dataset"):
        data.load_prepared(tmp_path / "absent.npz")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, X_train=np.zeros(3))
    with pytest.raises(ValueError, match="missing entries"):
        data.load_prepared(foreign)
    text = tmp_path / "text.npz"
    text.write_text("not an archive")
    with pytest.raises(ValueError, match="unreadable"):
        data.load_prepared(text)
    # A label-noise artifact is not a prepared dataset, and vice versa.
    with pytest.raises(ValueError, match="missing entries"):
        data.load_labels(prepared_path)
    wrong_format = tmp_path / "wrong.npz"
    np.savez(wrong_format, y_train_noisy=np.zeros(3), metadata=np.array(json.dumps({"format": "x"})))
    with pytest.raises(ValueError, match="metadata format is 'x'"):
        data.load_labels(wrong_format)
