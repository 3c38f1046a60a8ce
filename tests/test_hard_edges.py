"""Bad inputs to `noprop-eqx train` and `noprop_eqx.train`: each is a clear message (what was
expected, what was got, what to do), given before any training, and loses nothing.

The cases that need a trained run folder (damaged checkpoint, metrics, divergence, Ctrl-C) are
in `test_resume.py`, next to the run they damage."""

import dataclasses
import gzip
import json

import numpy as np
import pytest

import noprop_eqx as npx
from noprop_eqx.__main__ import main

DIGITS = ["train", "--dataset", "digits", "--variants", "FM", "--model", "simple"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("NOPROP_DATA_DIR", raising=False)


def _usage_error(capfd, argv) -> str:
    """Runs the CLI, expects a usage error (exit 2), returns what it printed."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capfd.readouterr().err


def _run_error(argv) -> str:
    """Runs the CLI, expects a run error (exit 1 with a message), returns the message."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert isinstance(e.value.code, str) and e.value.code.startswith("noprop-eqx train: error:")
    return e.value.code


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--stop-after", "5", "--epochs", "3"], "expected --stop-after <= epochs (3), got 5"),
        (["--width", "32"], "--width: only the ResNet backbones have a width"),
        (["--cifar100-labels", "coarse"], "--cifar100-labels applies to dataset 'cifar100' only"),
        (["--inference-runs", "1"], "expected --inference-runs to be 0 (skip) or >= 2"),
        (["--limit-train", "5"], "expected --limit-train of at least 10 (one example of each"),
        (["--embed-dim", "7"], "--embed-dim 7 does not fit the one-hot"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path, capfd, extra, message):
    err = _usage_error(capfd, [*DIGITS, *extra, "--out", str(tmp_path / "runs")])
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs" / "FM").exists()  # nothing was trained or written


def test_out_naming_a_file_is_refused_and_the_file_kept(tmp_path, capfd):
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    err = _usage_error(capfd, [*DIGITS, "--out", str(path)])
    assert f"expected --out to be a folder, got the file {path}" in err
    assert path.read_text() == "keep me"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("results.txt", None, "expected a results file named *.json"),
        ("results.json", '{"not": "a list"}', "to hold a JSON list of run records, got a dict"),
        ("results.json", '[{"cut short', "is damaged"),
    ],
)
def test_results_file_is_checked_before_training(tmp_path, name, content, message):
    results = tmp_path / name
    if content is not None:
        results.write_text(content)
    msg = _run_error([*DIGITS, "--out", str(tmp_path / "runs"), "--results", str(results)])
    assert message in msg and str(results) in msg
    assert not (tmp_path / "runs" / "FM").exists()
    if content is not None:
        assert results.read_text() == content  # untouched


def test_missing_data_dir_fails_at_once_offline(tmp_path, capfd):
    """No hub retries when offline: the error lists the places tried."""
    argv = ["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere")]
    err = _usage_error(capfd, [*argv, "--out", str(tmp_path / "runs")])
    assert "not found" in err and str(tmp_path / "nowhere") in err and "offline" in err


def _write_idx_gz(path, magic_dims, payload: bytes):
    magic, dims = magic_dims
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + payload)


def _tiny_mnist(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        images = rng.integers(0, 256, n * 28 * 28, dtype=np.uint8).tobytes()
        _write_idx_gz(folder / f"{split}-images-idx3-ubyte.gz", (0x803, (n, 28, 28)), images)
        labels = (np.arange(n) % 10).astype(np.uint8).tobytes()
        _write_idx_gz(folder / f"{split}-labels-idx1-ubyte.gz", (0x801, (n,)), labels)


def test_corrupt_mnist_files_name_the_file(tmp_path, capfd):
    folder = tmp_path / "mnist"
    _tiny_mnist(folder)
    argv = ["train", "--dataset", "mnist", "--data-dir", str(folder), "--variants", "FM"]
    argv += ["--out", str(tmp_path / "runs")]
    # Not the official files: an md5 mismatch naming the file and the way to skip the check.
    err = _usage_error(capfd, argv)
    assert "md5" in err and "train-images-idx3-ubyte.gz" in err and "--no-verify-md5" in err
    # A truncated gzip file.
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:12])
    err = _usage_error(capfd, [*argv, "--no-verify-md5"])
    assert f"{labels}: cannot read the file" in err and "Traceback" not in err
    # Not gzip at all.
    labels.write_bytes(b"hello, world")
    err = _usage_error(capfd, [*argv, "--no-verify-md5"])
    assert f"{labels}: cannot read the file" in err


def test_config_errors_from_python():
    with pytest.raises(npx.ConfigError, match="expected variants among .*got 'XX'"):
        npx.RunConfig(variants=("DT", "XX"))
    with pytest.raises(npx.ConfigError, match="expected batch_size to be a positive integer"):
        npx.RunConfig(batch_size=0)
    with pytest.raises(npx.ConfigError, match="expected lr to be a finite number >= 0, got nan"):
        npx.RunConfig(lr=float("nan"))
    with pytest.raises(npx.ConfigError, match="expected steps_per_call .* or 'auto', got 'many'"):
        npx.RunConfig(steps_per_call="many")
    config = npx.RunConfig(variants=["fm", "dt", "FM"], dataset="digits", model="simple")
    assert config.variants == ("FM", "DT")  # upper case, unique, in order
    assert config.replace(epochs=3).epochs == 3
    with pytest.raises(npx.ConfigError, match="expected epochs to be a positive integer"):
        config.replace(epochs=-1)


def test_nan_images_are_refused(monkeypatch, tmp_path):
    digits = npx.data.load_dataset("digits")
    x_train = digits.x_train.copy()
    x_train[3, 0, 0, 0] = np.nan
    broken = dataclasses.replace(digits, x_train=x_train)
    monkeypatch.setattr(npx.data, "load_dataset", lambda *a, **k: broken)
    config = npx.RunConfig(variants=("FM",), dataset="digits", model="simple", out=str(tmp_path))
    with pytest.raises(npx.RunFileError, match="1 train images hold NaN or inf values"):
        npx.train(config)


def test_train_from_python_returns_the_records(tmp_path):
    """`noprop_eqx.train(config)` is the CLI's run, from Python: records returned and written."""
    config = npx.RunConfig(
        variants=("FM",), dataset="digits", model="simple", epochs=1, batch_size=64,
        limit_train=128, limit_test=50, eval_steps=2, inference_runs=0, progress=False,
        out=str(tmp_path / "runs"), results=str(tmp_path / "results.json"),
    )  # fmt: skip
    (record,) = npx.train(config)
    assert record["variant"] == "FM" and record["epochs"] == 1 and record["test_size"] == 50
    assert json.loads((tmp_path / "results.json").read_text()) == [record]
    assert record["command"].startswith("noprop_eqx.train(RunConfig(")
    saved = json.loads((tmp_path / "runs" / "FM" / "config.json").read_text())
    assert {k: saved[k] for k in ("batch_size", "limit_train", "subset_seed")} == {
        "batch_size": 64,
        "limit_train": 128,
        "subset_seed": 0,
    }
