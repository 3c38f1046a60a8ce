"""`examples/train_cifar.py` end to end on small official-format CIFAR releases written here:
the CIFAR-100 command works the moment it is pointed at a `cifar-100-python.tar.gz`."""

import importlib.util
import json
from pathlib import Path

import pytest

from noprop_eqx.__main__ import main

from .test_cifar_data import _cifar10_files, _cifar100_files, _raw, _write_tarball

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_cifar.py"


def _example():
    spec = importlib.util.spec_from_file_location("train_cifar", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("NOPROP_DATA_DIR", raising=False)


def test_translate_keeps_the_original_spellings():
    translate = _example().translate
    assert translate(["--dataset", "cifar100", "--epochs", "100", "--resnet_depth", "50"]) == [
        "train", "--dataset", "cifar100", "--model", "resnet50", "--epochs", "100"
    ]  # fmt: skip
    assert translate(["--resnet-depth", "152", "--width", "16"]) == [
        "train", "--dataset", "cifar10", "--model", "resnet152", "--width", "16"
    ]  # fmt: skip


def test_train_cifar100_resnet_from_the_tarball(tmp_path, capfd):
    """A ResNet-18 (width 8) NoProp-FM on a 20-image CIFAR-100 tarball: one epoch, recorded."""
    _write_tarball(tmp_path / "data", "cifar100", _cifar100_files(_raw(0)))
    argv = ["--dataset", "cifar100", "--resnet_depth", "18", "--width", "8", "--variants", "FM"]
    argv += ["--epochs", "1", "--batch-size", "10", "--eval-steps", "2", "--no-progress"]
    argv += ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "runs")]
    # The tarball written here is not the official one: its md5 differs, and the error says so.
    with pytest.raises(SystemExit):
        main(_example().translate(argv))
    err = capfd.readouterr().err
    assert "md5 mismatch" in err and "cifar-100-python.tar.gz" in err
    assert main(_example().translate([*argv, "--no-verify-md5"])) == 0
    config = json.loads((tmp_path / "runs" / "FM" / "config.json").read_text())
    assert config["dataset"] == "cifar100" and config["model"] == "resnet18-w8"
    assert config["num_classes"] == 100 and config["cifar100_labels"] == "fine"
    summary = json.loads((tmp_path / "runs" / "FM" / "summary.json").read_text())
    assert summary["test_size"] == 10 and summary["epochs"] == 1
    assert summary["data_name"] == "cifar100"  # the copy read: here the official tarball


def test_train_cifar10_limit_train_is_stratified(tmp_path, capfd):
    """`--limit-train` on a release sorted by class keeps every class of the split."""
    _write_tarball(tmp_path / "data", "cifar10", _cifar10_files(_raw(1)))
    argv = ["--dataset", "cifar10", "--model", "simple", "--variants", "DT", "--num-blocks", "2"]
    argv += ["--epochs", "1", "--batch-size", "4", "--limit-train", "8"]
    argv += ["--inference-runs", "0", "--no-progress", "--no-verify-md5"]
    argv += ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "runs")]
    assert main(_example().translate(argv)) == 0
    config = json.loads((tmp_path / "runs" / "DT" / "config.json").read_text())
    assert config["limit_train"] == 8 and config["subset_seed"] == 0
    # The 20 train images hold 2 classes; fewer test images than classes in the split is an
    # error, not a silently one-class test set.
    with pytest.raises(SystemExit):
        main(_example().translate([*argv, "--limit-test", "1", "--resume"]))
    assert "expected --limit-test of at least" in capfd.readouterr().err


def test_train_cifar10_resnet_with_batch_norm(tmp_path):
    """`--norm batch`: the run records the BatchNorm backbone, and its checkpoint holds
    population statistics recalibrated on training images after the epoch (not the 0 and 1 a
    BatchNorm starts from)."""
    import jax.numpy as jnp

    import noprop_eqx as npx

    _write_tarball(tmp_path / "data", "cifar10", _cifar10_files(_raw(2)))
    argv = ["--dataset", "cifar10", "--resnet_depth", "18", "--width", "4", "--norm", "batch"]
    argv += ["--variants", "CT", "--epochs", "1", "--batch-size", "10", "--eval-steps", "2"]
    argv += ["--inference-runs", "0", "--no-progress", "--no-verify-md5"]
    argv += ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "runs")]
    assert main(_example().translate(argv)) == 0
    config = json.loads((tmp_path / "runs" / "CT" / "config.json").read_text())
    assert config["model"] == "resnet18-w4-bn"
    data = npx.data.load_dataset("cifar10", tmp_path / "data", verify_md5=False)
    model = npx.load_run(tmp_path / "runs" / "CT", data)[0]
    stem = model.net.stem_norm
    assert isinstance(stem, npx.models.BatchNorm)
    assert float(jnp.max(jnp.abs(stem.mean))) > 0 and float(jnp.max(jnp.abs(stem.var - 1))) > 0
