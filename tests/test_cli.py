"""The `noprop-eqx train` command line: smoke runs, output schemas and clear errors."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import diffrax
import jax
import jax.random as jr
import numpy as np
import pytest

import noprop_eqx as npx
from noprop_eqx import data as data_lib
from noprop_eqx.__main__ import main

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
REPO = Path(__file__).resolve().parents[1]
# Small and quick: 2 blocks for DT/BP keep compilation short on a CPU.
QUICK = ["--model", "simple", "--epochs", "1", "--batch-size", "64", "--num-blocks", "2"]
LOSS_TERMS = {
    "DT": {"loss", "ce", "kl", "denoise", "denoise_per_block"},
    "CT": {"loss", "ce", "kl", "denoise"},
    "FM": {"loss", "flow"},
    "BP": {"loss", "ce"},
}
METRIC_KEYS = {
    "epoch",
    "train_loss",
    "test_accuracy",
    "epoch_time_s",
    "first_step_s",
    "eval_time_s",
    "train_time_s",
    "wall_time_s",
    "images_per_s",
}
RECORD_KEYS = {
    "variant",
    "embedding",
    "model",
    "dataset",
    "epochs",
    "train_size",
    "test_size",
    "seed",
    "device",
    "train_time_s",
    "wall_time_s",
    "final_accuracy",
    "best_accuracy",
    "inference_solver",
    "nfe",
    "command",
    "commit",
}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """All four variants, one epoch each, on a slice of scikit-learn's digits."""
    out = tmp_path_factory.mktemp("digits")
    results = out / "results.json"
    argv = ["train", "--dataset", "digits", "--variants", "DT", "CT", "FM", "BP", *QUICK]
    argv += ["--limit-train", "256", "--limit-test", "100", "--eval-steps", "4"]
    argv += ["--out", str(out / "runs"), "--results", str(results)]
    assert main(argv) == 0
    return out / "runs", results


def test_smoke_digits_all_variants(digits_run):
    runs, _ = digits_run
    for variant in ("DT", "CT", "FM", "BP"):
        for name in ("config.json", "metrics.jsonl", "checkpoint.eqx", "summary.json"):
            assert (runs / variant / name).is_file(), f"{variant}/{name} missing"
    assert (runs / "curves.png").stat().st_size > 1000


def test_metrics_schema(digits_run):
    runs, _ = digits_run
    for variant, terms in LOSS_TERMS.items():
        lines = (runs / variant / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 1
        row = json.loads(lines[0])
        assert set(row) == METRIC_KEYS
        assert row["epoch"] == 1
        assert set(row["train_loss"]) == terms
        assert 0.0 <= row["test_accuracy"] <= 1.0
        assert row["train_time_s"] == pytest.approx(row["epoch_time_s"])
        assert row["images_per_s"] > 0
    per_block = json.loads((runs / "DT" / "metrics.jsonl").read_text())["train_loss"]
    assert len(per_block["denoise_per_block"]) == 2


def test_results_schema(digits_run):
    runs, results = digits_run
    records = json.loads(results.read_text())
    assert [r["variant"] for r in records] == ["DT", "CT", "FM", "BP"]
    from noprop_eqx._checkpoint import load_run

    ds = data_lib.load_dataset("digits").subset(256, 100)
    for r in records:
        assert RECORD_KEYS <= set(r)
        assert r["dataset"] == "digits" and r["model"] == "simple" and r["epochs"] == 1
        assert r["command"].startswith("noprop-eqx train")
        # The run folder is an absolute temporary path: the record keeps no machine path.
        assert runs.is_absolute() and str(runs.parent) not in r["command"] + r["run_dir"]
        assert r["run_dir"] == f"…/runs/{r['variant']}"
        assert f"--out …/{runs.parent.name}/runs" in r["command"]
        assert r["device"]
        if jax.default_backend() == "cpu":  # names the processor, e.g. "cpu (AMD EPYC, 2 cores)"
            assert r["device"].startswith("cpu (") and r["device"].endswith(" cores)")
        # The record agrees with the run's own per-epoch file ...
        lines = [
            json.loads(x) for x in (runs / r["variant"] / "metrics.jsonl").read_text().splitlines()
        ]
        assert r["final_accuracy"] == lines[-1]["test_accuracy"]
        assert r["best_accuracy"] == max(m["test_accuracy"] for m in lines)
        # ... and with the saved model, evaluated again here (deterministic read-outs).
        model = load_run(runs / r["variant"], ds)[0]
        kwargs = {} if r["nfe"] is None else {"solver": diffrax.Heun(), "num_steps": 4}
        assert npx.evaluate_accuracy(model, ds.x_test, ds.y_test, **kwargs) == r["final_accuracy"]
    by_variant = {r["variant"]: r for r in records}
    dt = by_variant["DT"]
    dt_model = load_run(runs / "DT", ds)[0]
    assert dt["accuracy_deterministic"] == npx.evaluate_accuracy(dt_model, ds.x_test, ds.y_test)
    # The 5 stochastic runs, redone from the documented key, and their statistics.
    k_infer = jr.fold_in(jr.key(0), 1_000_003)
    redone = [
        npx.evaluate_accuracy(dt_model, ds.x_test, ds.y_test, key=k) for k in jr.split(k_infer, 5)
    ]
    assert dt["accuracy_stochastic_runs"] == pytest.approx(redone, abs=1e-12)
    assert dt["accuracy_stochastic_mean"] == pytest.approx(sum(redone) / 5)
    mean = sum(redone) / 5
    se = (sum((a - mean) ** 2 for a in redone) / 4) ** 0.5 / 5**0.5
    assert dt["accuracy_stochastic_se"] == pytest.approx(se, abs=1e-12)
    # The block-average read-out of the saved model, recomputed here.
    blocks = npx.evaluate_accuracy(dt_model, ds.x_test, ds.y_test, readout="blocks")
    assert dt["accuracy_blocks"] == blocks
    for v in ("CT", "FM"):  # Heun, 4 steps, 2 evaluations each
        assert by_variant[v]["inference_solver"] == "heun"
        assert by_variant[v]["nfe"] == 8
    assert by_variant["BP"]["nfe"] is None
    # The learned schedule's start is a CT setting, recorded for CT only.
    assert by_variant["CT"]["ct_gamma_init"] == [-2.0, 2.0]
    assert all(by_variant[v]["ct_gamma_init"] is None for v in ("DT", "FM", "BP"))


def _load_script(name):
    """A script of benchmarks/ (or of its studies/) as a module (with benchmarks/ importable
    while it loads, for the scripts that share `_common`)."""
    benchmarks = str(REPO / "benchmarks")
    path = REPO / "benchmarks" / f"{name}.py"
    if not path.is_file():
        path = REPO / "benchmarks" / "studies" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, benchmarks)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(benchmarks)
    return module


def test_results_table(digits_run, tmp_path):
    _, results = digits_run
    out = tmp_path / "table.md"
    text = _load_script("mnist_results").main(["--results", str(results), "--write", str(out)])
    assert out.read_text() == text
    lines = text.strip().splitlines()
    assert len(lines) == 2 + 4 and lines[0].startswith("| variant")
    dt = json.loads(results.read_text())[0]
    mean, se = 100 * dt["accuracy_stochastic_mean"], 100 * dt["accuracy_stochastic_se"]
    assert f"{mean:.2f} ± {se:.2f} (n=5)" in lines[2]
    assert f"| {100 * dt['accuracy_blocks']:.2f} |" in lines[2]


def test_results_table_training_set_size(digits_run):
    """The table's training-set size: the record's own `train_size`, else `--limit-train`, else
    the full dataset's (records made before `train_size` existed): 50,000 for CIFAR."""
    _, results = digits_run
    record = json.loads(results.read_text())[0]
    module = _load_script("mnist_results")
    assert record["train_size"] == 256  # --limit-train 256
    assert module.train_size(record) == str(record["train_size"])
    old = {k: v for k, v in record.items() if k != "train_size"}
    assert module.train_size(dict(old, dataset="cifar10", limit_train=None)) == "50000"
    assert module.train_size(dict(old, dataset="mnist", limit_train=None)) == "60000"
    assert module.train_size(dict(old, dataset="cifar10", limit_train=512)) == "512"
    line = module.table([dict(old, dataset="cifar100", limit_train=None)]).splitlines()[2]
    assert "| cifar100 50000 / " in line


def test_results_table_paper_figures():
    """Table 1's figure for every dataset, variant and embedding it reports (spot checks against
    the paper: CIFAR-10 FM d = 20, CIFAR-100 DT one-hot and FM one-hot); none for digits."""
    module = _load_script("mnist_results")
    for dataset, table in (("mnist", 99.29), ("cifar10", 73.5), ("cifar100", 31.14)):
        assert module.paper_value(dict(dataset=dataset, variant="FM", embedding="learned")) == table
    assert module.paper_value(dict(dataset="cifar100", variant="DT", embedding="one-hot")) == 45.93
    assert module.paper_value(dict(dataset="cifar100", variant="FM", embedding="one-hot")) == 6.38
    assert module.paper_value(dict(dataset="digits", variant="FM", embedding="one-hot")) is None
    for t in (module.PAPER, module.PAPER_CIFAR10, module.PAPER_CIFAR100):
        assert {
            (v, e) for v in ("DT", "CT", "FM") for e in ("one-hot", "learned", "prototype")
        } <= set(t)


def test_solver_study_quick(digits_run, tmp_path):
    runs, _ = digits_run
    out = tmp_path / "solvers.json"
    argv = ["--run-dir", str(runs), "--variants", "FM", "--quick", "--out", str(out)]
    results = _load_script("solver_study").main(argv)
    assert json.loads(out.read_text())["models"].keys() == {"FM"}
    assert (tmp_path / "solvers.png").stat().st_size > 1000
    rows = {r["label"]: r for r in results["models"]["FM"]["rows"]}
    assert rows["euler 8"]["nfe"] == 8 and rows["heun 2"]["nfe"] == 4
    assert results["models"]["FM"]["summary"]["reference"] == "euler 8"
    # Each row's accuracy and agreement, redone here from the saved model on the same 64 images.
    from noprop_eqx._checkpoint import load_run

    ds = data_lib.load_dataset("digits").subset(256, 64)
    model = load_run(runs / "FM", ds)[0]
    preds = {
        label: np.asarray(model.predict(ds.x_test, solver=solver, num_steps=n))
        for label, solver, n in (("euler 8", diffrax.Euler(), 8), ("heun 2", diffrax.Heun(), 2))
    }
    for label, p in preds.items():
        assert rows[label]["accuracy"] == pytest.approx(float(np.mean(p == ds.y_test)))
    agreement = float(np.mean(preds["heun 2"] == preds["euler 8"]))
    assert rows["heun 2"]["agreement"] == pytest.approx(agreement)
    assert rows["heun 2"]["delta_points"] == pytest.approx(
        100 * (rows["heun 2"]["accuracy"] - rows["euler 8"]["accuracy"])
    )


def test_dt_readouts_quick(digits_run, tmp_path):
    runs, _ = digits_run
    argv = ["--run-dir", str(runs / "DT"), "--quick", "--out-dir", str(tmp_path)]
    (row,) = _load_script("dt_readouts").main(argv)
    # The benchmark checks its deterministic chain against evaluate_accuracy itself.
    assert row["chains"] == 2 and row["test_size"] == 200
    for name in ("deterministic", "last_block", "blocks", "nearest", "ensemble"):
        assert 0 <= row[name] <= 100
    # Each block's own argmax and the nearest-embedding read-out, redone here from the saved
    # model's deterministic chain (z_0 = 0, no noise) on the same 200 test images.
    from noprop_eqx._checkpoint import load_run

    ds = data_lib.load_dataset("digits").subset(256, 200)
    model = load_run(runs / "DT", ds)[0]
    z, block_logits = model.denoise_chain(ds.x_test, key=None)
    per_block = [
        round(100 * float(np.mean(np.argmax(b, -1) == ds.y_test)), 2) for b in block_logits
    ]
    assert row["per_block"] == per_block
    assert row["last_block"] == per_block[-1]
    w = np.asarray(model.embedding.matrix())
    nearest = np.argmin(((np.asarray(z)[:, None] - w[None]) ** 2).sum(-1), -1)
    assert row["nearest"] == round(100 * float(np.mean(nearest == ds.y_test)), 2)
    assert "moved" not in row  # one-hot embeddings never train
    assert (tmp_path / "dt_readouts.md").read_text().count("\n|") >= 2
    assert (tmp_path / "dt_readouts.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="is a FM run; this benchmark reads DT runs"):
        _load_script("dt_readouts").main(["--run-dir", str(runs / "FM"), "--quick"])


def test_existing_run_needs_resume(digits_run, capsys):
    runs, _ = digits_run
    argv = ["train", "--dataset", "digits", "--variants", "FM", *QUICK, "--limit-train", "256"]
    with pytest.raises(SystemExit, match="pass --resume"):
        main([*argv, "--out", str(runs)])


def test_resume_with_other_settings_is_an_error(digits_run):
    runs, _ = digits_run
    argv = ["train", "--dataset", "digits", "--variants", "FM", *QUICK, "--limit-train", "128"]
    with pytest.raises(SystemExit, match="limit_train 256 vs 128"):
        main([*argv, "--out", str(runs), "--resume"])


def test_unknown_variant_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--dataset", "digits", "--variants", "DT", "XX", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown variant 'XX'" in err and "DT CT FM BP" in err


def test_prototype_with_wrong_embed_dim_is_a_clear_error(tmp_path, capsys):
    argv = ["train", "--dataset", "digits", "--model", "simple", "--embedding", "prototype"]
    argv += ["--embed-dim", "20"]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--embed-dim 20" in err and "1*8*8 = 64" in err
    assert not list(tmp_path.iterdir()), "nothing should be trained or written"


@pytest.mark.slow
def test_prototype_embedding_runs(tmp_path):
    argv = ["train", "--dataset", "digits", "--variants", "FM", *QUICK, "--embedding", "prototype"]
    argv += ["--embed-dim", "64", "--limit-train", "128", "--limit-test", "50", "--eval-steps", "2"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    config = json.loads((tmp_path / "FM-prototype" / "config.json").read_text())
    assert config["embed_dim"] == 64 and config["embedding"] == "prototype"


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"real MNIST not found at {MNIST_DIR}")
def test_smoke_mnist_subset(tmp_path):
    argv = ["train", "--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--variants", "FM"]
    argv += [*QUICK, "--limit-train", "1000", "--limit-test", "500", "--eval-steps", "4"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "FM" / "metrics.jsonl").read_text())
    assert row["epoch"] == 1 and 0.0 <= row["test_accuracy"] <= 1.0
    summary = json.loads((tmp_path / "FM" / "summary.json").read_text())
    assert summary["dataset"] == "mnist" and summary["test_size"] == 500


def test_example_and_module_entry_points_show_help():
    for cmd in (
        [sys.executable, "-m", "noprop_eqx", "train", "--help"],
        [sys.executable, str(REPO / "examples" / "train_mnist.py"), "--help"],
    ):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "--variants" in out.stdout and "--resume" in out.stdout


@pytest.mark.slow
def test_smoke_digits_paper_settings_all_variants(tmp_path):
    """The four variants with the default T = 10 blocks (slow: compiling 10 blocks)."""
    argv = ["train", "--dataset", "digits", "--variants", "DT", "CT", "FM", "BP"]
    argv += ["--model", "simple", "--epochs", "1", "--out", str(tmp_path)]
    assert main(argv) == 0
    for variant in ("DT", "CT", "FM", "BP"):
        assert (tmp_path / variant / "summary.json").is_file()


def test_bad_steps_per_call_is_a_clear_error(tmp_path, capsys):
    argv = ["train", "--dataset", "digits", "--variants", "FM", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--steps-per-call", "0"])
    assert e.value.code == 2
    assert "expected a positive integer or 'auto', got '0'" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--prototype-scale", "one-hot"], ["--fixed-embedding"]])
def test_prototype_options_need_the_prototype_embedding(flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--dataset", "digits", *flag, "--out", "x"])
    assert e.value.code == 2
    assert f"{flag[0]} applies to embedding 'prototype' only, got embedding 'one-hot'" in (
        capsys.readouterr().err
    )


def test_fixed_embedding_is_recorded_kept_and_pinned_on_resume(tmp_path):
    argv = ["train", "--dataset", "digits", "--variants", "DT", *QUICK, "--limit-train", "128"]
    argv += ["--limit-test", "64", "--embedding", "prototype", "--inference-runs", "0"]
    argv += ["--out", str(tmp_path)]
    assert main([*argv, "--fixed-embedding"]) == 0
    run = tmp_path / "DT-prototype"
    config = json.loads((run / "config.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert config["fixed_embedding"] is summary["fixed_embedding"] is True
    from noprop_eqx._checkpoint import load_run
    from noprop_eqx._loop import build_model

    ds = data_lib.load_dataset("digits").subset(128, 64)
    model, _, epoch, _, _ = load_run(run, ds)
    built = build_model(
        "DT",
        num_classes=10,
        image_shape=ds.image_shape,
        backbone="simple",
        embedding="prototype",
        x_train=ds.x_train,
        y_train=ds.y_train,
        key=jr.key(0),
    )
    assert epoch == 1 and model.embedding.fixed
    np.testing.assert_array_equal(model.embedding.weight, built.embedding.weight)
    # The read-out benchmark rebuilds the starting embedding and finds it unmoved.
    out_dir = tmp_path / "bench"
    (row,) = _load_script("dt_readouts").main(
        ["--run-dir", str(run), "--quick", "--out-dir", str(out_dir)]
    )
    assert row["fixed_embedding"] and row["moved"] == 0.0
    assert row["min_distance_start"] == row["min_distance_trained"] > 0
    assert json.loads((out_dir / "dt_readouts.json").read_text())["rows"] == [row]
    with pytest.raises(SystemExit, match="fixed_embedding True vs False"):
        main([*argv, "--epochs", "2", "--resume"])


def test_results_table_names_the_prototype_scale():
    module = _load_script("mnist_results")
    record = {"embedding": "prototype", "prototype_scale": "one-hot"}
    assert module.embedding_cell(record) == "prototype (one-hot scale)"
    # Records written before the option existed, and raw prototypes, keep the plain name.
    assert module.embedding_cell({"embedding": "prototype"}) == "prototype"
    assert module.embedding_cell({"embedding": "prototype", "prototype_scale": "raw"}) == (
        "prototype"
    )
    assert module.embedding_cell({"embedding": "one-hot", "prototype_scale": None}) == "one-hot"
    record = {"embedding": "prototype", "prototype_scale": "one-hot", "fixed_embedding": True}
    assert module.embedding_cell(record) == "prototype (one-hot scale, fixed)"
    record = {"embedding": "prototype", "prototype_scale": "raw", "fixed_embedding": True}
    assert module.embedding_cell(record) == "prototype (fixed)"
    # DT's schedule ceiling, named when it is not the default; records made before the option
    # existed used the default, and pool with records that say so.
    record = {"variant": "DT", "embedding": "learned", "dt_alpha_bar_max": 0.99}
    assert module.embedding_cell(record) == "learned (ᾱ_max 0.99)"
    record = {"variant": "DT", "embedding": "prototype", "dt_alpha_bar_max": 0.999}
    assert module.embedding_cell(dict(record, fixed_embedding=True)) == (
        "prototype (ᾱ_max 0.999, fixed)"
    )
    assert module.embedding_cell({"variant": "DT", "embedding": "one-hot"}) == "one-hot"
    new = {"variant": "DT", "embedding": "one-hot", "dt_alpha_bar_max": 0.9999}
    assert module.embedding_cell(new) == "one-hot"
    old = {"variant": "DT", "embedding": "one-hot"}
    assert module.setting(old, "dt_alpha_bar_max") == module.setting(new, "dt_alpha_bar_max")
    assert module.setting({"variant": "FM"}, "dt_alpha_bar_max") is None
    # CT's departures are named, and a CT record made before the options existed pools with
    # one that states the defaults.
    record = {"variant": "CT", "embedding": "one-hot", "ct_fixed_schedule": True}
    assert module.embedding_cell(dict(record, ct_weighting="log-snr")) == (
        "one-hot (held schedule, log-snr weighting)"
    )
    new = {"variant": "CT", "embedding": "one-hot", "ct_fixed_schedule": False}
    new["ct_weighting"] = "snr-prime"
    old = {"variant": "CT", "embedding": "one-hot"}
    assert module.embedding_cell(new) == module.embedding_cell(old) == "one-hot"
    for name in ("ct_fixed_schedule", "ct_weighting"):
        assert module.setting(old, name) == module.setting(new, name)
        assert module.setting({"variant": "FM"}, name) is None
    # FM's span input is named; an FM record made before the option existed used "full".
    fm = {"variant": "FM", "embedding": "learned"}
    assert module.embedding_cell(dict(fm, fm_z_input="span")) == "learned (span input)"
    assert module.embedding_cell(dict(fm, fm_z_input="full")) == module.embedding_cell(fm)
    assert module.setting(fm, "fm_z_input") == "full"
    assert module.setting({"variant": "CT"}, "fm_z_input") is None


def test_protocol_table_one_row_per_seed_set(tmp_path):
    """The --protocol table: one row per multi-seed run, with the 15-value statistic and the
    mean over seeds, recomputed here from the records' own runs; single-seed records are left
    out."""
    module = _load_script("mnist_results")
    from noprop_eqx._run_seeds import protocol_statistic

    base = dict(
        variant="DT",
        embedding="one-hot",
        epochs=2,
        lr_schedule="cosine",
        dataset="mnist",
        device="cpu",
        command="noprop-eqx train --seeds 0 1 2",
        commit="abc1234",
    )
    runs = {
        0: [0.990, 0.991, 0.989, 0.990, 0.992],
        1: [0.985, 0.986, 0.987, 0.986, 0.985],
        2: [0.991, 0.990, 0.990, 0.989, 0.991],
    }
    records = [
        dict(base, seed=s, final_accuracy=0.993 - 0.001 * s, accuracy_stochastic_runs=r)
        for s, r in runs.items()
    ]
    statistic = protocol_statistic(records)
    records = [dict(r, **statistic) for r in records]
    records.append(dict(base, seed=0, final_accuracy=0.99, command="single", commit="x"))
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    lines = module.main(["--results", str(path), "--protocol"]).strip().splitlines()
    assert len(lines) == 3
    values = [a for r in runs.values() for a in r]
    mean = 100 * np.mean(values)
    se = 100 * np.std(values, ddof=1) / np.sqrt(15)
    assert f"| {mean:.2f} ± {se:.2f} (n=15) |" in lines[2]
    assert "| 99.20 ± 0.06 |" in lines[2]  # deterministic 99.3, 99.2, 99.1: mean, s.e. 0.0577
    assert "| 0 1 2 |" in lines[2] and "| 99.47 |" in lines[2]


def test_results_table_names_the_recipe():
    module = _load_script("mnist_results")
    assert module.epochs_cell({"epochs": 8}) == "8"
    assert module.epochs_cell({"epochs": 8, "lr_schedule": "cosine"}) == "8 (cosine lr)"
    record = {"epochs": 8, "lr_schedule": "cosine", "augment_shift": 2}
    assert module.epochs_cell(record) == "8 (cosine lr, shift aug. ±2 px)"
    assert module.epochs_cell({"epochs": 3, "augment_shift": 0}) == "3"
    # A run stopped before its schedule's end says so: its cosine spanned the planned epochs.
    stopped = {"epochs": 16, "planned_epochs": 30, "lr_schedule": "cosine"}
    assert module.epochs_cell(stopped) == "16 of 30 (cosine lr)"
    assert module.epochs_cell({"epochs": 30, "planned_epochs": 30}) == "30"


def test_plot_metrics(tmp_path):
    module = _load_script("plot_metrics")
    paths = []
    for name, accs in (("a", [0.9, 0.95]), ("b", [0.92, 0.96, 0.97])):
        path = tmp_path / f"{name}.jsonl"
        lines = [
            dict(epoch=i + 1, test_accuracy=a, train_time_s=60.0 * (i + 1))
            for i, a in enumerate(accs)
        ]
        path.write_text("".join(json.dumps(m) + "\n" for m in lines))
        paths.append(f"{name}={path}")
    assert module.read_series(tmp_path / "b.jsonl") == dict(
        epoch=[1, 2, 3], accuracy=[92.0, 96.0, 97.0], minutes=[1.0, 2.0, 3.0]
    )
    out = module.main([*paths, "--out", str(tmp_path / "p.png"), "--target", "96"])
    assert out.stat().st_size > 1000
    styles = [tuple(sorted(module._style(i).items())) for i in range(30)]
    assert len(set(styles)) == 30  # no two series look alike
    (tmp_path / "bad.jsonl").write_text('{"epoch": 1}\n')
    with pytest.raises(ValueError, match=r"not a noprop-eqx metrics.jsonl: no \['test_accuracy'"):
        module.read_series(tmp_path / "bad.jsonl")
    with pytest.raises(SystemExit):
        module.main(["no-equals-sign", "--out", str(tmp_path / "x.png")])
    assert module._label_path("learned d=20, seed 0=runs/m.jsonl") == (
        "learned d=20, seed 0",
        Path("runs/m.jsonl"),
    )


def test_time_to_accuracy(tmp_path, capsys):
    module = _load_script("time_to_accuracy")
    path = tmp_path / "m.jsonl"
    accs, times = [0.55, 0.57, 0.56, 0.731, 0.72], [40.0, 50.0, 45.0, 60.0, 55.0]
    lines = [
        dict(epoch=i + 1, test_accuracy=a, epoch_time_s=s, train_time_s=sum(times[: i + 1]))
        for i, (a, s) in enumerate(zip(accs, times, strict=True))
    ]
    path.write_text("".join(json.dumps(m) + "\n" for m in lines))
    epochs = module.read_epochs(path)
    # 57% is reached at epoch 2 exactly (0.57 * 100 is 56.99999999999999 in floating point:
    # the comparison must not miss it); the dip at epoch 3 does not move it.
    assert 0.57 * 100 < 57
    assert module.first_reaching(epochs, 57)["epoch"] == 2
    assert module.first_reaching(epochs, 73)["epoch"] == 4
    assert module.first_reaching(epochs, 73.2) is None
    text = module.main(["--thresholds", "73,57,80", f"run a=d=1={path}"])
    assert capsys.readouterr().out.strip() == text
    head, rule, row = text.splitlines()
    assert head == (
        "| run | 57% | 73% | 80% | s / epoch (median) | epochs | final % | best % (epoch) |"
    )
    assert rule.count("---") == 8
    # Cumulative training time: 40 + 50 at epoch 2, + 45 + 60 at epoch 4; median of 5 times.
    assert row == (
        "| run a=d=1 | epoch 2, 90 s | epoch 4, 195 s | not reached | 50.0 | 5 | 72.00 "
        "| 73.10 (4) |"
    )
    (tmp_path / "old.jsonl").write_text('{"epoch": 1, "test_accuracy": 0.5, "train_time_s": 1}\n')
    with pytest.raises(ValueError, match=r"epoch line 1 has no \['epoch_time_s'\]"):
        module.read_epochs(tmp_path / "old.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no epochs"):
        module.read_epochs(tmp_path / "empty.jsonl")
    with pytest.raises(SystemExit):
        module.main([f"a={path}", "--thresholds", "0"])
    with pytest.raises(SystemExit):
        module.main([f"a={path}", "--thresholds", "70 73"])


def test_protocol_table_pools_separate_runs_of_one_setting(tmp_path):
    """--pool: seed 0 run alone and seeds 1, 2 run together pool into one row when their
    settings agree; a different weight decay, a run stopped early and a lone seed do not."""
    module = _load_script("mnist_results")
    base = dict(
        variant="FM",
        embedding="one-hot",
        epochs=100,
        planned_epochs=100,
        lr_schedule="cosine",
        weight_decay=0.001,
        dataset="cifar10",
        device="cpu",
    )
    runs = {0: [0.72, 0.73, 0.725], 1: [0.74, 0.735, 0.73], 2: [0.71, 0.715, 0.72]}
    records = [
        dict(
            base,
            seed=s,
            final_accuracy=0.78 + 0.01 * s,
            accuracy_stochastic_runs=r,
            command=f"run {s}",
            commit=f"c{min(s, 1)}",
        )
        for s, r in runs.items()
    ]
    # An older record of seed 1 (replaced by the later one), a stopped run, another setting.
    records.insert(0, dict(records[1], accuracy_stochastic_runs=[0.1, 0.1, 0.1]))
    records.append(dict(records[1], seed=3, epochs=40, accuracy_stochastic_runs=[0.1] * 3))
    records.append(dict(records[1], weight_decay=0, seed=4))
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    assert len(module.main(["--results", str(path), "--protocol"]).splitlines()) == 2
    lines = module.main(["--results", str(path), "--protocol", "--pool"]).splitlines()
    assert len(lines) == 3, lines
    values = [a for r in runs.values() for a in r]
    mean, se = 100 * np.mean(values), 100 * np.std(values, ddof=1) / np.sqrt(9)
    assert f"| {mean:.2f} ± {se:.2f} (n=9) |" in lines[2]
    assert "| 79.00 ± 0.58 |" in lines[2]  # deterministic 78, 79, 80
    assert "| 0 1 2 |" in lines[2] and "| 73.14 |" in lines[2] and "| c0 c1 |" in lines[2]
    with pytest.raises(SystemExit):
        module.main(["--results", str(path), "--pool"])


def test_every_train_option_says_what_it_does():
    """`noprop-eqx train --help` explains every option (and train_cifar.py shares them)."""
    import argparse

    from noprop_eqx.__main__ import add_train_arguments

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    silent = [
        a.option_strings[0]
        for a in parser._actions
        if a.option_strings and a.option_strings[0] != "-h" and not a.help
    ]
    assert silent == []


def test_epoch_line_says_the_time_left():
    """The time left is the remaining epochs times the mean of the last three epochs' wall
    times (training plus evaluation), and is left out after the last epoch."""
    from noprop_eqx._run import _epoch_line, format_duration

    def row(epoch, train, evaluate):
        return dict(epoch=epoch, test_accuracy=0.5, epoch_time_s=train, eval_time_s=evaluate,
                    images_per_s=100.0)  # fmt: skip

    history = [row(1, 500.0, 100.0), row(2, 290.0, 10.0), row(3, 380.0, 20.0), row(4, 170.0, 30.0)]
    stats = dict(loss_terms=dict(loss=0.25))
    # epochs 2-4 took 300, 400 and 200 s: 300 s an epoch, 6 epochs left to epoch 10
    line = _epoch_line("DT", 10, history, stats, last=10)
    assert line.startswith("[DT] epoch   4/10 | loss 0.2500 | test acc 50.00%")
    assert line.endswith("| ~30m00s left")
    assert _epoch_line("DT", 10, history, stats, last=5).endswith("| ~5m00s left")
    assert "left" not in _epoch_line("DT", 4, history, stats, last=4)
    assert [format_duration(s) for s in (0.4, 59.4, 61.0, 3599.0, 3600.0, 12_345.0)] == [
        "0s", "59s", "1m01s", "59m59s", "1h00m", "3h25m",
    ]  # fmt: skip


def test_record_command_names_the_console_script_not_its_environment():
    from noprop_eqx.__main__ import command_line

    assert command_line([".venv/bin/noprop-eqx", "train", "--epochs", "2"]) == (
        "noprop-eqx train --epochs 2"
    )
    assert command_line(["/opt/env/bin/noprop-eqx", "train"]) == "noprop-eqx train"
    assert command_line(["/x/noprop_eqx/__main__.py", "train"]) == "python -m noprop_eqx train"
    assert command_line(["script.py", "train"]) == "script.py train"
