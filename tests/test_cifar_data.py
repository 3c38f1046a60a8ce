"""Tests for the official CIFAR python releases (`load_cifar10`, `load_cifar100`) and their place
in `load_dataset`, on small fixtures written in exactly the official format."""

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from noprop_eqx.data import (
    DataIntegrityError,
    DatasetNotFoundError,
    ImageDataset,
    _cifar,
    _registry,
    load_cifar10,
    load_cifar100,
    load_dataset,
)

N_TRAIN, N_TEST = 20, 10
CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
CIFAR10_NAMES += [b"dog", b"frog", b"horse", b"ship", b"truck"]
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test here may reach the network, nor see the caller's data folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("NOPROP_DATA_DIR", raising=False)


def _pickle(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def _hand_made_row() -> np.ndarray:
    """One image as an official row: red 255 at (0, 1), green 200 at (2, 3), blue 100 at
    (31, 0), everything else 0. Offsets are plane * 1024 + row * 32 + col."""
    row = np.zeros(3072, np.uint8)
    row[0 * 1024 + 0 * 32 + 1] = 255
    row[1 * 1024 + 2 * 32 + 3] = 200
    row[2 * 1024 + 31 * 32 + 0] = 100
    return row


def _hand_made_image() -> np.ndarray:
    """The same image, written down directly as (channel, row, col)."""
    image = np.zeros((3, 32, 32), np.int64)
    image[0, 0, 1], image[1, 2, 3], image[2, 31, 0] = 255, 200, 100
    return image


def _raw(seed: int) -> dict[str, np.ndarray]:
    """Rows and labels of a tiny release; the first train image is the hand-made one."""
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (N_TRAIN, 3072), dtype=np.uint8)
    train[0] = _hand_made_row()
    fine_train = rng.permutation(np.arange(N_TRAIN) * 5)  # in [0, 100), all distinct
    fine_test = rng.integers(0, 100, N_TEST)
    return {
        "x_train": train,
        "x_test": rng.integers(0, 256, (N_TEST, 3072), dtype=np.uint8),
        "fine_train": fine_train,
        "fine_test": fine_test,
        # Not a function of the fine labels, so the two columns cannot be confused.
        "coarse_train": (fine_train * 7 + 3) % 20,
        "coarse_test": (fine_test * 7 + 3) % 20,
        "labels_train": fine_train % 10,
        "labels_test": fine_test % 10,
    }


def _cifar10_files(raw: dict[str, np.ndarray]) -> dict[str, bytes]:
    """The members of `cifar-10-batches-py/`, in the official format (5 train batches)."""
    files = {}
    per_batch = N_TRAIN // 5
    for i in range(5):
        rows = slice(i * per_batch, (i + 1) * per_batch)
        files[f"data_batch_{i + 1}"] = _pickle(
            {
                b"batch_label": f"training batch {i + 1} of 5".encode(),
                b"labels": raw["labels_train"][rows].tolist(),
                b"data": raw["x_train"][rows],
                b"filenames": [f"img_{j}.png".encode() for j in range(per_batch)],
            }
        )
    files["test_batch"] = _pickle(
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": raw["labels_test"].tolist(),
            b"data": raw["x_test"],
            b"filenames": [f"test_{j}.png".encode() for j in range(N_TEST)],
        }
    )
    files["batches.meta"] = _pickle(
        {b"num_cases_per_batch": per_batch, b"label_names": CIFAR10_NAMES, b"num_vis": 3072}
    )
    return files


def _cifar100_files(raw: dict[str, np.ndarray]) -> dict[str, bytes]:
    """The members of `cifar-100-python/`, in the official format."""

    def split(name: str, x: np.ndarray) -> bytes:
        return _pickle(
            {
                b"filenames": [f"{name}_{j}.png".encode() for j in range(len(x))],
                b"batch_label": f"{name}ing batch 1 of 1".encode(),
                b"fine_labels": raw[f"fine_{name}"].tolist(),
                b"coarse_labels": raw[f"coarse_{name}"].tolist(),
                b"data": x,
            }
        )

    return {
        "train": split("train", raw["x_train"]),
        "test": split("test", raw["x_test"]),
        "meta": _pickle(
            {
                b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
            }
        ),
    }


RELEASES = {
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py", _cifar10_files),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python", _cifar100_files),
}


def _write_folder(data_dir: Path, release: str, files: dict[str, bytes]) -> Path:
    folder = data_dir / RELEASES[release][1]
    folder.mkdir(parents=True)
    for member, data in files.items():
        (folder / member).write_bytes(data)
    return folder


def _write_tarball(data_dir: Path, release: str, files: dict[str, bytes]) -> Path:
    tarball, folder = data_dir / RELEASES[release][0], RELEASES[release][1]
    data_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "w:gz") as tar:
        directory = tarfile.TarInfo(folder)
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        extras = {"readme.html": b"<html></html>"} if release == "cifar10" else {}
        for member, data in (files | extras).items():
            info = tarfile.TarInfo(f"{folder}/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tarball


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _unnormalise(dataset: ImageDataset, x: np.ndarray) -> np.ndarray:
    """Recover raw integer pixels, (N, C, H, W), from normalised images."""
    mean = np.asarray(dataset.mean)[:, None, None]
    std = np.asarray(dataset.std)[:, None, None]
    return np.rint((x * std + mean) * 255).astype(np.int64)


def _load(release: str, path: Path, **options) -> ImageDataset:
    if release == "cifar10":
        return load_cifar10(path, **options)
    return load_cifar100(path, **options)


# ---------------------------------------------------------------------------------------------
# contents


def test_pixel_order_labels_and_normalisation(tmp_path):
    raw = _raw(0)
    tarball = _write_tarball(tmp_path, "cifar10", _cifar10_files(raw))
    ds = load_cifar10(tarball, verify_md5=False)
    assert ds.name == "cifar10" and ds.num_classes == 10
    assert ds.class_names == tuple(n.decode() for n in CIFAR10_NAMES)
    assert ds.x_train.shape == (N_TRAIN, 3, 32, 32) and ds.x_test.shape == (N_TEST, 3, 32, 32)
    assert ds.x_train.dtype == np.float32

    # Statistics straight from the rows: plane c is columns [1024 c, 1024 (c + 1)).
    planes = raw["x_train"].reshape(N_TRAIN, 3, 1024) / 255.0
    np.testing.assert_allclose(ds.mean, planes.mean(axis=(0, 2)), rtol=1e-6)
    np.testing.assert_allclose(ds.std, planes.std(axis=(0, 2)), rtol=1e-5)

    recovered = _unnormalise(ds, ds.x_train)
    np.testing.assert_array_equal(recovered[0], _hand_made_image())
    assert recovered[0, 0, 0, 1] == 255 and recovered[0, 0, 1, 0] == 0  # row 0 col 1, not (1, 0)
    np.testing.assert_array_equal(recovered, raw["x_train"].reshape(N_TRAIN, 3, 32, 32))
    np.testing.assert_array_equal(
        _unnormalise(ds, ds.x_test), raw["x_test"].reshape(N_TEST, 3, 32, 32)
    )
    np.testing.assert_array_equal(ds.y_train, raw["labels_train"])
    np.testing.assert_array_equal(ds.y_test, raw["labels_test"])


@pytest.mark.parametrize("form", ["tarball", "folder"])
def test_cifar100_fine_and_coarse_labels(tmp_path, form):
    raw = _raw(1)
    write = _write_tarball if form == "tarball" else _write_folder
    path = write(tmp_path, "cifar100", _cifar100_files(raw))

    fine = load_cifar100(path, verify_md5=False)
    assert fine.name == "cifar100" and fine.num_classes == 100
    assert fine.class_names[:2] == ("fine0", "fine1") and len(fine.class_names) == 100
    np.testing.assert_array_equal(fine.y_train, raw["fine_train"])
    np.testing.assert_array_equal(fine.y_test, raw["fine_test"])

    coarse = load_cifar100(path, labels="coarse", verify_md5=False)
    assert coarse.name == "cifar100-coarse" and coarse.num_classes == 20
    assert coarse.class_names == tuple(f"coarse{i}" for i in range(20))
    np.testing.assert_array_equal(coarse.y_train, raw["coarse_train"])
    np.testing.assert_array_equal(coarse.y_test, raw["coarse_test"])
    np.testing.assert_array_equal(coarse.x_train, fine.x_train)
    np.testing.assert_array_equal(_unnormalise(fine, fine.x_train)[0], _hand_made_image())

    via_registry = load_dataset("cifar100", tmp_path, labels="coarse", verify_md5=False)
    np.testing.assert_array_equal(via_registry.y_train, raw["coarse_train"])
    with pytest.raises(ValueError, match="expected labels 'fine' or 'coarse', got 'medium'"):
        load_cifar100(path, labels="medium")
    with pytest.raises(ValueError, match="coarse labels exist only for 'cifar100'"):
        load_dataset("cifar10", tmp_path, labels="coarse")


@pytest.mark.parametrize("release", ["cifar10", "cifar100"])
def test_tarball_and_folder_identical(tmp_path, release):
    files = RELEASES[release][2](_raw(2))
    from_tar = _load(release, _write_tarball(tmp_path / "a", release, files), verify_md5=False)
    from_dir = _load(release, _write_folder(tmp_path / "b", release, files), verify_md5=False)
    # Given the folder that holds them, the same data is found.
    from_parent = _load(release, tmp_path / "b", verify_md5=False)
    for ds in (from_dir, from_parent):
        for field in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(ds, field), getattr(from_tar, field))
        assert ds.mean == from_tar.mean and ds.std == from_tar.std
        assert ds.class_names == from_tar.class_names


def test_same_arrays_as_the_hf_loader(tmp_path):
    """The official release and a HuggingFace copy of the same images give identical arrays:
    one normalisation path for both."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    raw = _raw(3)
    official = load_cifar10(
        _write_tarball(tmp_path, "cifar10", _cifar10_files(raw)), verify_md5=False
    )

    def png(row: np.ndarray) -> dict:
        buffer = io.BytesIO()
        Image.fromarray(row.reshape(3, 32, 32).transpose(1, 2, 0)).save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    names = [n.decode() for n in CIFAR10_NAMES]
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=names)}
    )
    splits = {
        split: datasets.Dataset.from_dict(
            {
                "img": [png(r) for r in raw[f"x_{split}"]],
                "label": raw[f"labels_{split}"].tolist(),
            },
            features=features,
        )
        for split in ("train", "test")
    }
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "hf" / "cifar10"))
    hf = load_dataset("cifar10", tmp_path / "hf")
    assert hf.name == "cifar10"
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(hf, field), getattr(official, field))
    assert hf.mean == official.mean and hf.class_names == official.class_names


# ---------------------------------------------------------------------------------------------
# md5


def test_tarball_md5_pass_fail_and_skip(tmp_path, monkeypatch):
    tarball = _write_tarball(tmp_path, "cifar10", _cifar10_files(_raw(4)))
    got = _md5(tarball)
    expected = "c58f30108f718f92721af3b95e74349a"
    with pytest.raises(DataIntegrityError) as info:
        load_cifar10(tarball)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(tarball) in message and expected in message and got in message
    assert "verify_md5=False" in message
    # Through load_dataset too: found but broken is an error, never a fallback to the hub.
    with pytest.raises(DataIntegrityError, match=got):
        load_dataset("cifar10", tmp_path)

    assert load_cifar10(tarball, verify_md5=False).num_classes == 10
    monkeypatch.setitem(_cifar._MD5, "cifar-10-python.tar.gz", got)
    assert load_cifar10(tarball).num_classes == 10
    assert load_dataset("cifar10", tmp_path).name == "cifar10"


def test_folder_md5_checks_each_file(tmp_path, monkeypatch):
    folder = _write_folder(tmp_path, "cifar100", _cifar100_files(_raw(5)))
    expected = "16019d7e3df5f24257cddd939b257f8d"
    with pytest.raises(DataIntegrityError) as info:
        load_cifar100(folder)
    message = str(info.value)
    assert str(folder / "train") in message and expected in message
    assert _md5(folder / "train") in message

    for member in ("train", "test", "meta"):
        monkeypatch.setitem(_cifar._MD5, f"cifar-100-python/{member}", _md5(folder / member))
    assert load_cifar100(folder).num_classes == 100
    # Change one byte of the pickled label list's filenames: same length, different md5.
    test = folder / "test"
    test.write_bytes(test.read_bytes().replace(b"test_0.png", b"test_X.png"))
    with pytest.raises(DataIntegrityError, match=f"{test}: md5 mismatch"):
        load_cifar100(folder)
    assert load_cifar100(folder, verify_md5=False).num_classes == 100


def test_cifar10_folder_checks_the_torchvision_md5s(tmp_path):
    folder = _write_folder(tmp_path, "cifar10", _cifar10_files(_raw(6)))
    with pytest.raises(DataIntegrityError, match="c99cafc152244af753f735de768cd75f"):
        load_cifar10(folder)
    assert load_cifar10(folder, verify_md5=False).num_classes == 10


# ---------------------------------------------------------------------------------------------
# broken data


def test_truncated_tarball_names_the_file(tmp_path):
    tarball = _write_tarball(tmp_path, "cifar10", _cifar10_files(_raw(7)))
    data = tarball.read_bytes()
    tarball.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataIntegrityError, match="truncated") as info:
        load_cifar10(tarball, verify_md5=False)
    assert str(tarball) in str(info.value) and "download it again" in str(info.value)
    with pytest.raises(DataIntegrityError, match="md5 mismatch"):
        load_cifar10(tarball)
    tarball.write_bytes(b"not a gzip file at all")
    with pytest.raises(DataIntegrityError, match=f"{tarball}: truncated or corrupt tarball"):
        load_cifar10(tarball, verify_md5=False)


def test_corrupt_pickle_names_the_file(tmp_path):
    folder = _write_folder(tmp_path, "cifar10", _cifar10_files(_raw(8)))
    test = folder / "test_batch"
    test.write_bytes(test.read_bytes()[:100])
    with pytest.raises(DataIntegrityError, match=f"{test}: not a readable CIFAR pickle"):
        load_cifar10(folder, verify_md5=False)


def test_pickle_with_foreign_globals_is_refused(tmp_path, capsys):
    class Call:
        def __reduce__(self):
            return (print, ("executed",))

    files = _cifar10_files(_raw(9))
    files["batches.meta"] = _pickle({b"label_names": Call()})
    folder = _write_folder(tmp_path, "cifar10", files)
    # Protocol 2 names Python 3's builtins module by its Python 2 name.
    with pytest.raises(DataIntegrityError, match=r"refusing to load the global __builtin__\.print"):
        load_cifar10(folder, verify_md5=False)
    assert "executed" not in capsys.readouterr().out


def test_missing_member(tmp_path):
    files = _cifar10_files(_raw(10))
    del files["test_batch"]
    tarball = _write_tarball(tmp_path / "tar", "cifar10", files)
    with pytest.raises(DataIntegrityError, match=r"missing \['cifar-10-batches-py/test_batch'\]"):
        load_cifar10(tarball, verify_md5=False)
    folder = _write_folder(tmp_path / "dir", "cifar10", files)
    with pytest.raises(DataIntegrityError, match=rf"{folder}: .*missing \['test_batch'\]"):
        load_cifar10(folder, verify_md5=False)
    # A found but incomplete folder is an error in load_dataset too, not a reason to move on.
    with pytest.raises(DataIntegrityError, match="test_batch"):
        load_dataset("cifar10", tmp_path / "dir", verify_md5=False)


def test_wrong_shape(tmp_path):
    raw = _raw(11)
    raw["x_test"] = raw["x_test"][:, :3000]
    folder = _write_folder(tmp_path, "cifar10", _cifar10_files(raw))
    with pytest.raises(
        DataIntegrityError, match=r"test_batch: expected .*\(N, 3072\).*\(10, 3000\)"
    ):
        load_cifar10(folder, verify_md5=False)


def test_wrong_class_count(tmp_path):
    raw = _raw(12)
    raw["labels_train"] = raw["fine_train"]  # CIFAR-100 labels, up to 95, in CIFAR-10 batches
    folder = _write_folder(tmp_path / "a", "cifar10", _cifar10_files(raw))
    first = raw["fine_train"][: N_TRAIN // 5]  # the first batch is the first checked
    low, high = first.min(), first.max()
    with pytest.raises(
        DataIntegrityError,
        match=rf"data_batch_1: expected CIFAR-10 labels in \[0, 10\), got values in "
        rf"\[{low}, {high}\]",
    ):
        load_cifar10(folder, verify_md5=False)

    # CIFAR-100 files in a CIFAR-10 folder: no b"labels", and the error says what they look like.
    files100 = _cifar100_files(_raw(12))
    files = _cifar10_files(_raw(12))
    files["data_batch_1"] = files100["train"]
    folder = _write_folder(tmp_path / "b", "cifar10", files)
    with pytest.raises(DataIntegrityError, match="looks like CIFAR-100 data: load it as cifar100"):
        load_cifar10(folder, verify_md5=False)

    # A CIFAR-100 meta file for CIFAR-10: the class names are the wrong count.
    files = _cifar10_files(_raw(12))
    files["batches.meta"] = _pickle({b"label_names": [b"x"] * 100})
    folder = _write_folder(tmp_path / "c", "cifar10", files)
    with pytest.raises(DataIntegrityError, match="expected 10 class names.*got 100 names"):
        load_cifar10(folder, verify_md5=False)


# ---------------------------------------------------------------------------------------------
# finding the data


def test_tarball_comes_first(tmp_path):
    raw_tar, raw_dir = _raw(13), _raw(14)
    _write_tarball(tmp_path, "cifar10", _cifar10_files(raw_tar))
    _write_folder(tmp_path, "cifar10", _cifar10_files(raw_dir))
    for ds in (
        load_cifar10(tmp_path, verify_md5=False),
        load_dataset("cifar10", tmp_path, verify_md5=False),
    ):
        np.testing.assert_array_equal(ds.y_train, raw_tar["labels_train"])
    (tmp_path / "cifar-10-python.tar.gz").unlink()
    ds = load_dataset("cifar10", tmp_path, verify_md5=False)
    np.testing.assert_array_equal(ds.y_train, raw_dir["labels_train"])


@pytest.mark.parametrize(
    "name, tarball, folder, hf_folders, hub",
    [
        (
            "cifar10",
            "cifar-10-python.tar.gz",
            "cifar-10-batches-py",
            ("cifar10-jpeg", "cifar10"),
            "uoft-cs/cifar10",
        ),
        (
            "cifar100",
            "cifar-100-python.tar.gz",
            "cifar-100-python",
            ("cifar100",),
            "uoft-cs/cifar100",
        ),
    ],
)
def test_missing_data_lists_every_place_and_form(tmp_path, name, tarball, folder, hf_folders, hub):
    pytest.importorskip("datasets")
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, tmp_path)
    message = str(info.value)
    tried = message.split("Tried:")[1]
    for path in (tmp_path / tarball, tmp_path / folder, *(tmp_path / f for f in hf_folders)):
        assert str(path) in tried, path
    assert f"HuggingFace hub {hub!r}: skipped" in tried
    # The three forms, each with what to put where.
    assert f"the official tarball: put {tarball}" in message
    assert f"at {tmp_path / tarball}" in message
    assert (
        f"its extracted folder: put {folder}/" in message and f"at {tmp_path / folder}" in message
    )
    assert "a HuggingFace dataset: a DatasetDict.save_to_disk folder at " in message
    assert str(tmp_path / hf_folders[0]) in message.split("save_to_disk")[1] and hub in message

    with pytest.raises(DatasetNotFoundError) as info:
        _load(name, tmp_path)
    for path in (tmp_path / tarball, tmp_path / folder):
        assert str(path) in str(info.value)


@pytest.mark.parametrize("switch", OFFLINE_VARS)
def test_offline_skips_the_hub(tmp_path, monkeypatch, switch):
    calls = []

    def fake_hf(name_or_path, **kwargs):
        calls.append(str(name_or_path))
        raise DatasetNotFoundError(f"fake: nothing at {name_or_path}")

    monkeypatch.setattr(_registry, "load_hf_dataset", fake_hf)
    for var in OFFLINE_VARS:
        monkeypatch.delenv(var)
    monkeypatch.setenv(switch, "1")
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar100", tmp_path)
    assert "uoft-cs/cifar100" not in calls
    assert calls == [str(tmp_path / "cifar100")]  # the local folder is still looked in
    assert f"'uoft-cs/cifar100': skipped, not tried: offline ({switch}=1 is set)" in str(info.value)

    # Online, the hub is tried, with the label column asked for.
    monkeypatch.delenv(switch)
    calls.clear()
    with pytest.raises(DatasetNotFoundError, match="fake: nothing at uoft-cs/cifar100"):
        load_dataset("cifar100", tmp_path)
    assert calls == [str(tmp_path / "cifar100"), "uoft-cs/cifar100"]
