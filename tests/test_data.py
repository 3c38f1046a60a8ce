"""Tests for `noprop_eqx.data`: loaders (digits, IDX MNIST, HuggingFace) and batching."""

import gzip
import hashlib
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from noprop_eqx.data import (
    DatasetNotFoundError,
    ImageDataset,
    eval_batches,
    load_dataset,
    load_digits,
    load_hf_dataset,
    load_mnist,
    normalise,
    num_train_batches,
    train_batches,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MNIST_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _unnormalise(dataset: ImageDataset, x: np.ndarray, scale: float = 255.0) -> np.ndarray:
    """Recover raw integer pixels, (N, C, H, W), from normalised images."""
    mean = np.asarray(dataset.mean)[:, None, None]
    std = np.asarray(dataset.std)[:, None, None]
    return np.rint((x * std + mean) * scale).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# ImageDataset and normalise


def test_normalise_matches_formula_and_layout():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(5, 4, 3, 2), dtype=np.uint8)  # N, H, W, C
    mean, std = (0.2, 0.7), (0.5, 0.25)
    x = normalise(raw, mean, std)
    assert x.dtype == np.float32 and x.shape == (5, 2, 4, 3)
    for c in range(2):
        expected = (raw[..., c].astype(np.float64) / 255 - mean[c]) / std[c]
        np.testing.assert_allclose(x[:, c], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, H, W\).*got \(5, 4\)"):
        normalise(np.zeros((5, 4), np.uint8), (0.0,), (1.0,))
    with pytest.raises(ValueError, match="2 entries"):
        normalise(raw, (0.0,), (1.0,))


def _tiny_dataset(**overrides) -> ImageDataset:
    fields = dict(
        x_train=np.zeros((4, 1, 2, 2), np.float32),
        y_train=np.array([0, 1, 2, 1], np.int32),
        x_test=np.zeros((3, 1, 2, 2), np.float32),
        y_test=np.array([2, 0, 1], np.int32),
        num_classes=3,
        name="tiny",
        mean=(0.5,),
        std=(0.2,),
    )
    return ImageDataset(**(fields | overrides))


def test_image_dataset_validation_and_subset():
    ds = _tiny_dataset()
    assert ds.image_shape == (1, 2, 2)
    small = ds.subset(limit_train=2, limit_test=1, seed=None)  # the first rows
    assert small.x_train.shape == (2, 1, 2, 2) and small.y_test.tolist() == [2]
    assert small.subset().y_train.tolist() == [0, 1]
    with pytest.raises(ValueError, match="expected limit_train of at least 3 .* got 2"):
        ds.subset(limit_train=2)  # seeded subsets keep every class
    with pytest.raises(ValueError, match="float32.*float64"):
        _tiny_dataset(x_train=np.zeros((4, 1, 2, 2)))
    with pytest.raises(ValueError, match=r"labels in \[0, 3\), got values in \[0, 3\]"):
        _tiny_dataset(y_test=np.array([0, 1, 3], np.int32))
    with pytest.raises(ValueError, match="as many train labels as images"):
        _tiny_dataset(y_train=np.array([0, 1], np.int32))
    with pytest.raises(ValueError, match="1 entries"):
        _tiny_dataset(mean=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="limit_train"):
        ds.subset(limit_train=0)


def test_seeded_subset_is_stratified_random_and_reproducible():
    """A dataset sorted by class (as the CIFAR-10 JPEG copy is): the first 20 rows hold class 0
    only, a seeded subset of 20 holds every class in its share."""
    counts = np.array([30, 30, 20, 10, 10])  # shares 0.3, 0.3, 0.2, 0.1, 0.1
    y = np.repeat(np.arange(5), counts).astype(np.int32)
    x = np.arange(len(y), dtype=np.float32).reshape(-1, 1, 1, 1)
    ds = _tiny_dataset(x_train=x, y_train=y, x_test=x, y_test=y, num_classes=5)
    assert set(ds.subset(20, 20, seed=None).y_train.tolist()) == {0}
    sub = ds.subset(20, 15, seed=3)
    # Train: 1 per class + 15 by share (4.5, 4.5, 3, 1.5, 1.5: floors 4, 4, 3, 1, 1, and the
    # two left go to the first largest remainders, classes 0 and 1): 6, 6, 4, 2, 2.
    assert np.bincount(sub.y_train, minlength=5).tolist() == [6, 6, 4, 2, 2]
    # Test: 1 per class + 10 by share (3, 3, 2, 1, 1 exactly).
    assert np.bincount(sub.y_test, minlength=5).tolist() == [4, 4, 3, 2, 2]
    # Rows travel with their labels, in their original order, and differ by seed and split.
    np.testing.assert_array_equal(y[sub.x_train[:, 0, 0, 0].astype(int)], sub.y_train)
    assert np.all(np.diff(sub.x_train[:, 0, 0, 0]) > 0)
    assert np.array_equal(sub.x_train, ds.subset(20, 15, seed=3).x_train)
    assert not np.array_equal(sub.x_train, ds.subset(20, 15, seed=4).x_train)
    assert not np.array_equal(sub.x_train[:15], sub.x_test)
    with pytest.raises(ValueError, match="expected limit_test of at least 5"):
        ds.subset(None, 4, seed=0)


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_and_normalisation():
    ds = load_digits()
    assert ds.name == "digits" and ds.num_classes == 10
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.x_train.shape[1:] == ds.x_test.shape[1:] == (1, 8, 8)
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert len(ds.y_test) == round(1797 * 0.25)
    np.testing.assert_allclose(ds.x_train.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    assert set(np.unique(ds.y_train)) == set(range(10))


def test_digits_split_deterministic_and_a_partition():
    from sklearn.datasets import load_digits as sklearn_digits

    a, b = load_digits(), load_digits()
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)

    # Train and test together are exactly the original examples, each once.
    def rows(images, labels):
        return [bytes(i.astype(np.uint8)) + bytes([t]) for i, t in zip(images, labels, strict=True)]

    raw = sklearn_digits()
    recovered = rows(_unnormalise(a, a.x_train, 16.0), a.y_train)
    recovered += rows(_unnormalise(a, a.x_test, 16.0), a.y_test)
    assert sorted(recovered) == sorted(rows(raw.images, raw.target))
    assert not np.array_equal(load_digits(seed=1).y_train, a.y_train)


# ---------------------------------------------------------------------------------------------
# MNIST from IDX files


def _idx(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _fake_mnist(directory: Path, *, gz: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (7, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, (7,), dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, (3,), dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        data = _idx(array, 0x803 if array.ndim == 3 else 0x801)
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("subdir", ["", "mnist"])
def test_idx_round_trip(tmp_path, gz, subdir):
    arrays = _fake_mnist(tmp_path / subdir, gz=gz)
    ds = load_mnist(tmp_path, verify=False)
    assert ds.name == "mnist" and ds.num_classes == 10
    assert ds.x_train.shape == (7, 1, 28, 28) and ds.x_test.shape == (3, 1, 28, 28)
    train_images = arrays["train-images-idx3-ubyte"]
    np.testing.assert_allclose(ds.mean, [train_images.mean() / 255], rtol=1e-6)
    np.testing.assert_allclose(ds.std, [train_images.std() / 255], rtol=1e-5)
    np.testing.assert_array_equal(_unnormalise(ds, ds.x_train)[:, 0], train_images)
    np.testing.assert_array_equal(
        _unnormalise(ds, ds.x_test)[:, 0], arrays["t10k-images-idx3-ubyte"]
    )
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])


def test_idx_md5_mismatch_names_file(tmp_path):
    _fake_mnist(tmp_path, gz=True)
    data = gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())
    got = hashlib.md5(data).hexdigest()
    expected = "6bbc9ace898e44ae57da46a324031adb"
    with pytest.raises(ValueError, match=f"train-images-idx3-ubyte.gz.*{expected}.*{got}"):
        load_mnist(tmp_path)


def test_idx_bad_magic_and_truncated(tmp_path):
    _fake_mnist(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(_idx(np.zeros((7, 28, 28), np.uint8), 0x801)[:4] + good[4:])
    with pytest.raises(ValueError, match="magic number, expected 0x00000803, got 0x00000801"):
        load_mnist(tmp_path, verify=False)
    images.write_bytes(good[:-5])
    with pytest.raises(ValueError, match=f"expected {len(good)} bytes.*got {len(good) - 5}"):
        load_mnist(tmp_path, verify=False)


def test_mnist_missing_lists_paths(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for directory in (tmp_path, tmp_path / "mnist"):
        assert str(directory / "train-images-idx3-ubyte.gz") in message
    assert "NOPROP_DATA_DIR" in message and "ylecun/mnist" in message

    env_dir = tmp_path / "from_env"
    env_dir.mkdir()
    monkeypatch.setenv("NOPROP_DATA_DIR", str(env_dir))
    with pytest.raises(DatasetNotFoundError, match=str(env_dir / "t10k-labels-idx1-ubyte")):
        load_mnist()
    monkeypatch.delenv("NOPROP_DATA_DIR")
    with pytest.raises(DatasetNotFoundError, match="NOPROP_DATA_DIR is not set"):
        load_mnist()


def test_load_dataset_dispatch(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"\['cifar10', 'cifar100', 'digits', 'mnist'\]"):
        load_dataset("imagenet")
    assert load_dataset("digits").name == "digits"
    _fake_mnist(tmp_path / "mnist", gz=True)
    monkeypatch.setenv("NOPROP_DATA_DIR", str(tmp_path))
    # Fake files fail the md5 check, which is an error, never a silent fallback to the hub.
    with pytest.raises(ValueError, match="md5"):
        load_dataset("mnist")


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="no offline MNIST copy")
def test_real_mnist():
    ds = load_mnist(SHARED_DATA / "mnist", verify=True)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(ds.y_train, minlength=10).tolist() == counts
    assert ds.mean[0] == pytest.approx(0.1307, abs=5e-5)
    assert ds.std[0] == pytest.approx(0.3081, abs=5e-5)
    assert float(ds.x_train.mean()) == pytest.approx(0.0, abs=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg").is_dir(), reason="no CIFAR-10 copy")
def test_real_cifar10_jpeg():
    ds = load_dataset("cifar10", SHARED_DATA)
    assert ds.name == "cifar10-jpeg" and ds.class_names[0] == "airplane"
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_test.shape == (10000, 3, 32, 32)
    assert np.bincount(ds.y_train).tolist() == [5000] * 10
    np.testing.assert_allclose(ds.mean, [0.4913, 0.4821, 0.4465], atol=1e-4)
    np.testing.assert_allclose(ds.std, [0.2452, 0.2428, 0.2606], atol=1e-4)


# ---------------------------------------------------------------------------------------------
# HuggingFace datasets, offline


@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    cache = tmp_path / "hf_home"
    for var, value in [
        ("HF_HOME", cache),
        ("HF_DATASETS_CACHE", cache / "datasets"),
        ("HF_DATASETS_OFFLINE", "1"),
        ("HF_HUB_OFFLINE", "1"),
    ]:
        monkeypatch.setenv(var, str(value))
    # `datasets` reads its cache folder at import time, so redirect the live setting too.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache / "datasets")
    return datasets


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _hf_split(datasets, images, labels, features, image_column="image", label_column="label"):
    records = [{"bytes": _png(img), "path": None} for img in images]
    return datasets.Dataset.from_dict(
        {image_column: records, label_column: labels.tolist()}, features=features
    )


def test_hf_parquet_round_trip(tmp_path, hf_offline):
    datasets = hf_offline
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=[str(i) for i in range(10)]),
        }
    )
    rng = np.random.default_rng(0)
    raw = {
        "train": (rng.integers(0, 256, (6, 28, 28), np.uint8), np.array([0, 1, 2, 3, 4, 9])),
        "test": (rng.integers(0, 256, (4, 28, 28), np.uint8), np.array([5, 6, 7, 8])),
    }
    repo = tmp_path / "mnist_repo"
    (repo / "mnist").mkdir(parents=True)
    for split, (images, labels) in raw.items():
        ds = _hf_split(datasets, images, labels, features)
        ds.to_parquet(str(repo / "mnist" / f"{split}-00000-of-00001.parquet"))

    # The default name is the folder's (for a glob, the folder above the wildcard).
    for source, name in [(repo, "mnist_repo"), (str(repo / "mnist" / "*.parquet"), "mnist")]:
        ds = load_hf_dataset(source)
        assert ds.name == name and ds.num_classes == 10
        assert ds.class_names == tuple(str(i) for i in range(10))
        assert ds.x_train.shape == (6, 1, 28, 28) and ds.x_test.shape == (4, 1, 28, 28)
        for split, (images, labels) in raw.items():
            np.testing.assert_array_equal(getattr(ds, f"y_{split}"), labels)
            recovered = _unnormalise(ds, getattr(ds, f"x_{split}"))[:, 0]
            np.testing.assert_array_equal(recovered, images)

    with pytest.raises(ValueError, match=r"column 'pixels'.*\['image', 'label'\]"):
        load_hf_dataset(repo, image_column="pixels")


def test_hf_save_to_disk_rgb_round_trip(tmp_path, hf_offline):
    datasets = hf_offline
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "emu"])}
    )
    rng = np.random.default_rng(1)
    raw = {
        "train": (rng.integers(0, 256, (5, 6, 4, 3), np.uint8), np.array([0, 1, 2, 0, 1])),
        "test": (rng.integers(0, 256, (2, 6, 4, 3), np.uint8), np.array([2, 2])),
    }
    dataset_dict = datasets.DatasetDict(
        {
            split: _hf_split(datasets, images, labels, features, image_column="img")
            for split, (images, labels) in raw.items()
        }
    )
    dataset_dict.save_to_disk(str(tmp_path / "animals"))
    ds = load_hf_dataset(tmp_path / "animals", name="zoo")
    assert ds.name == "zoo" and ds.class_names == ("cat", "dog", "emu") and ds.num_classes == 3
    assert ds.image_shape == (3, 6, 4) and len(ds.mean) == 3
    for split, (images, labels) in raw.items():
        np.testing.assert_array_equal(getattr(ds, f"y_{split}"), labels)
        recovered = _unnormalise(ds, getattr(ds, f"x_{split}")).transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(recovered, images)
    with pytest.raises(ValueError, match=r"splits \['train', 'validation'\].*\['train', 'test'\]"):
        load_hf_dataset(tmp_path / "animals", test_split="validation")


def test_hf_missing_local_folder(tmp_path):
    pytest.importorskip("datasets")
    with pytest.raises(DatasetNotFoundError, match="neither a dataset_dict.json.*nor parquet"):
        load_hf_dataset(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="not a directory"):
        load_hf_dataset(tmp_path / "absent")


def test_hub_offline_raises_not_found(tmp_path):
    """Offline, hub names fail fast with DatasetNotFoundError (in a fresh interpreter, since
    the hub libraries read the offline switches at import time)."""
    pytest.importorskip("datasets")
    empty = tmp_path / "empty"
    empty.mkdir()
    script = textwrap.dedent(
        f"""
        from noprop_eqx.data import DatasetNotFoundError, load_dataset, load_hf_dataset
        try:
            load_hf_dataset("ylecun/mnist")
        except DatasetNotFoundError as e:
            assert "ylecun/mnist" in str(e) and e.__cause__ is not None, str(e)
        else:
            raise AssertionError("no error")
        try:
            load_dataset("mnist", {str(empty)!r})
        except DatasetNotFoundError as e:
            assert {str(empty)!r} in str(e) and "ylecun/mnist" in str(e), str(e)
        else:
            raise AssertionError("no error")
        print("ok")
        """
    )
    env = os.environ | {
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("NOPROP_DATA_DIR", None)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# batching


def _collect_train(n: int, batch_size: int, seed: int):
    x = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    y = np.arange(n, dtype=np.int32)
    batches = list(train_batches(x, y, batch_size, key=jax.random.key(seed)))
    for xb, yb in batches:
        assert xb.shape == (batch_size, 3) and yb.shape == (batch_size,)
        np.testing.assert_array_equal(xb[:, 0], yb)  # rows stay paired
    return np.concatenate([yb for _, yb in batches]), len(batches)


@pytest.mark.parametrize("n, batch_size", [(10, 4), (12, 4), (3, 8), (1, 5)])
def test_train_batches_cover_epoch_with_fixed_shape(n, batch_size):
    order, count = _collect_train(n, batch_size, seed=0)
    assert count == num_train_batches(n, batch_size) == -(-n // batch_size)
    assert len(order) == count * batch_size
    assert sorted(order[:n].tolist()) == list(range(n))  # one full permutation first
    np.testing.assert_array_equal(order[n:], np.resize(order[:n], len(order) - n))


def test_num_train_batches_values():
    assert [num_train_batches(n, 4) for n in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]


def test_train_batches_key_controls_order():
    same_a, _ = _collect_train(100, 32, seed=0)
    same_b, _ = _collect_train(100, 32, seed=0)
    other, _ = _collect_train(100, 32, seed=1)
    np.testing.assert_array_equal(same_a, same_b)
    assert not np.array_equal(same_a, other)
    assert not np.array_equal(same_a[:100], np.arange(100))


def test_eval_batches_pad_in_order():
    x = np.arange(10, dtype=np.float32)[:, None]
    y = np.arange(10, dtype=np.int32)
    batches = list(eval_batches(x, y, 4))
    assert [b[2] for b in batches] == [4, 4, 2]
    assert all(xb.shape == (4, 1) and yb.shape == (4,) for xb, yb, _ in batches)
    assert batches[-1][1].tolist() == [8, 9, 9, 9]
    valid = np.concatenate([yb[:k] for _, yb, k in batches])
    np.testing.assert_array_equal(valid, y)


@pytest.mark.parametrize("fn", ["train", "eval"])
def test_batching_rejects_bad_input(fn):
    x, y = np.zeros((6, 2), np.float32), np.zeros(6, np.int32)

    def call(x, y, batch_size):
        if fn == "train":
            return train_batches(x, y, batch_size, key=jax.random.key(0))
        return eval_batches(x, y, batch_size)

    for bad in (0, -3):
        with pytest.raises(ValueError, match=f"batch_size a positive int, got {bad}"):
            call(x, y, bad)
    with pytest.raises(TypeError, match="batch_size"):  # ours, or the test-time typechecker
        call(x, y, 2.5)
    with pytest.raises(ValueError, match=r"same number of rows, got shapes \(6, 2\) and \(5,\)"):
        call(x, y[:5], 2)
