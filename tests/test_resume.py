"""`noprop-eqx train --resume`: a run stopped and resumed is the run made in one go, bit for
bit, in the richest configuration the published runs used; and every setting that shapes the
trajectory is pinned, so a resume with another value is refused with a clear message.

One fixture trains the same two-epoch run twice on a slice of scikit-learn's digits: straight
through, and split (`--stop-after 1`, then `--resume`). DT and FM, prototype embeddings at
one-hot scale (trained), cosine learning rate, random-shift augmentation, two steps per
compiled call and bfloat16 compute.
"""

import json
import shutil

import equinox as eqx
import jax
import numpy as np
import pytest

from noprop_eqx import data as data_lib
from noprop_eqx.__main__ import main
from noprop_eqx._checkpoint import load_run, model_from_config
from noprop_eqx._loop import run_keys

BASE = ["train", "--dataset", "digits", "--variants", "DT", "FM", "--model", "simple"]
BASE += ["--num-blocks", "2", "--batch-size", "64", "--limit-train", "192", "--limit-test", "100"]
BASE += ["--embedding", "prototype", "--prototype-scale", "one-hot", "--lr-schedule", "cosine"]
BASE += ["--augment-shift", "1", "--steps-per-call", "2", "--compute-dtype", "bfloat16"]
BASE += ["--inference-runs", "0", "--eval-steps", "2", "--epochs", "2", "--no-progress"]
RUNS = ("DT-prototype", "FM-prototype")


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    straight, split = root / "straight", root / "split"
    assert main([*BASE, "--out", str(straight)]) == 0
    assert main([*BASE, "--stop-after", "1", "--out", str(split)]) == 0
    after_stop = {name: _metrics(split / name) for name in RUNS}
    shutil.copytree(split, root / "after_stop")  # for the tests that damage a run folder
    assert main([*BASE, "--resume", "--out", str(split)]) == 0
    return straight, split, after_stop


def test_stop_after_stops_and_resume_finishes(runs):
    _, split, after_stop = runs
    for name in RUNS:
        assert [m["epoch"] for m in after_stop[name]] == [1]
        assert [m["epoch"] for m in _metrics(split / name)] == [1, 2]
        summary = json.loads((split / name / "summary.json").read_text())
        assert summary["epochs"] == summary["planned_epochs"] == 2


@pytest.mark.parametrize("name", RUNS)
def test_resumed_run_equals_the_straight_run_bit_for_bit(runs, name):
    straight, split, _ = runs
    a, b = _metrics(straight / name), _metrics(split / name)
    for x, y in zip(a, b, strict=True):
        assert x["train_loss"] == y["train_loss"]
        assert x["test_accuracy"] == y["test_accuracy"]
    assert a[0]["train_loss"] != a[1]["train_loss"]  # the epochs differ: equality means something
    # The saved parameters and optimiser states, leaf by leaf.
    ds = data_lib.load_dataset("digits").subset(192, 100)
    model_a, opt_a, epoch_a, _, _ = load_run(straight / name, ds)
    model_b, opt_b, epoch_b, _, _ = load_run(split / name, ds)
    assert epoch_a == epoch_b == 2
    leaves_a = jax.tree.leaves(eqx.filter((model_a, opt_a), eqx.is_array))
    leaves_b = jax.tree.leaves(eqx.filter((model_b, opt_b), eqx.is_array))
    assert len(leaves_a) == len(leaves_b) > 10
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # Training moved the prototypes (they are trained here), so the check covers them.
    config = json.loads((split / name / "config.json").read_text())
    start = model_from_config(config, ds, key=run_keys(0, name.split("-")[0])[0])
    assert not np.array_equal(start.embedding.weight, model_b.embedding.weight)


def test_settings_are_recorded(runs):
    _, split, _ = runs
    config = json.loads((split / "DT-prototype" / "config.json").read_text())
    expected = dict(
        lr_schedule="cosine",
        lr_decay_steps=2 * 3,  # 2 epochs of 192 / 64 steps
        compute_dtype="bfloat16",
        steps_per_call=2,
        augment_shift=1,
        prototype_scale="one-hot",
        subset_seed=0,
        weight_decay_mode="decoupled",
    )
    assert {k: config[k] for k in expected} == expected
    fm = json.loads((split / "FM-prototype" / "config.json").read_text())
    assert fm["weight_decay_mode"] == "l2" and fm["optimizer"] == "adam + l2 weight decay"


@pytest.mark.parametrize(
    "change, message",
    [
        (["--compute-dtype", "float32"], "compute_dtype 'bfloat16' vs 'float32'"),
        (["--prototype-scale", "raw"], "prototype_scale 'one-hot' vs 'raw'"),
        (["--augment-shift", "0"], "augment_shift 1 vs 0"),
        (["--steps-per-call", "1"], "steps_per_call 2 vs 1"),
        (["--epochs", "3"], "epochs 2 vs 3"),  # the cosine schedule's length
        (["--subset-seed", "1"], "subset_seed 0 vs 1"),
        (["--weight-decay", "0"], "weight_decay 0.001 vs 0.0"),
        (["--fixed-embedding"], "fixed_embedding False vs True"),
    ],
)
def test_resume_with_another_setting_is_refused(runs, change, message):
    _, split, _ = runs
    with pytest.raises(SystemExit, match=message):
        main([*BASE, *change, "--resume", "--out", str(split)])


# ---------------------------------------------------------------------------------------------
# Damaged run folders, divergence and interruption: clear messages, nothing lost.


def _stopped_copy(runs, tmp_path):
    """A copy of the run stopped after epoch 1 (DT and FM), to damage."""
    straight, split, _ = runs
    out = tmp_path / "runs"
    shutil.copytree(split.parent / "after_stop", out)
    return out


def _resume_error(out) -> str:
    with pytest.raises(SystemExit) as e:
        main([*BASE, "--resume", "--out", str(out)])
    assert isinstance(e.value.code, str), e.value.code
    return e.value.code


def test_damaged_checkpoint_is_named_and_kept(runs, tmp_path):
    out = _stopped_copy(runs, tmp_path)
    path = out / "DT-prototype" / "checkpoint.eqx"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    msg = _resume_error(out)
    assert f"cannot read the checkpoint {path}" in msg and "damaged" in msg
    assert "Traceback" not in msg and len(msg.splitlines()) == 1
    assert path.read_bytes() == data[: len(data) // 2]  # left as it was, for the user to restore


@pytest.mark.parametrize("damage", ["missing", "garbled"])
def test_damaged_settings_file_is_named(runs, tmp_path, damage):
    out = _stopped_copy(runs, tmp_path)
    path = out / "DT-prototype" / "config.json"
    if damage == "missing":
        path.unlink()
    else:
        path.write_text(path.read_text()[:40])
    msg = _resume_error(out)
    assert (
        f"the run's settings file {path} is {'missing' if damage == 'missing' else 'damaged'}"
        in msg
    )


def test_half_written_metrics_line_is_dropped_and_the_run_continues(runs, tmp_path):
    """What a kill during an append leaves: the last line cut short. The resume trains epoch 2
    again and ends with the straight run's records."""
    straight, _, _ = runs
    out = _stopped_copy(runs, tmp_path)
    for name in RUNS:
        with (out / name / "metrics.jsonl").open("a") as f:
            f.write('{"epoch": 2, "train_loss": {"loss": 0.')
    assert main([*BASE, "--resume", "--out", str(out)]) == 0
    for name in RUNS:
        got, want = _metrics(out / name), _metrics(straight / name)
        assert [m["train_loss"] for m in got] == [m["train_loss"] for m in want]


def test_damaged_metrics_line_is_named(runs, tmp_path):
    out = _stopped_copy(runs, tmp_path)
    path = out / "DT-prototype" / "metrics.jsonl"
    path.write_text("not json\n" + path.read_text())
    msg = _resume_error(out)
    assert f"{path}, line 1, is damaged" in msg


def test_divergence_stops_and_keeps_the_last_good_checkpoint(runs, tmp_path, monkeypatch):
    import noprop_eqx._run as run_module

    out = _stopped_copy(runs, tmp_path)
    before = (out / "DT-prototype" / "checkpoint.eqx").read_bytes()
    real = run_module.train_epoch

    def diverging(*args, **kwargs):
        model, opt_state, stats = real(*args, **kwargs)
        stats["loss_terms"]["loss"] = float("nan")
        return model, opt_state, stats

    monkeypatch.setattr(run_module, "train_epoch", diverging)
    msg = _resume_error(out)
    assert "epoch 2: the training loss is nan" in msg
    assert "The checkpoint of epoch 1 is kept" in msg
    assert (out / "DT-prototype" / "checkpoint.eqx").read_bytes() == before
    assert [m["epoch"] for m in _metrics(out / "DT-prototype")] == [1]


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(runs, tmp_path, monkeypatch, capfd):
    import noprop_eqx._run as run_module

    out = _stopped_copy(runs, tmp_path)
    before = (out / "DT-prototype" / "checkpoint.eqx").read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "train_epoch", interrupted)
    assert main([*BASE, "--resume", "--out", str(out)]) == 130
    err = capfd.readouterr().err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    assert (out / "DT-prototype" / "checkpoint.eqx").read_bytes() == before


def _ct_digits_args(out) -> list[str]:
    """`noprop-eqx train` of a tiny CT run on the digits (2 epochs of 2 steps) into `out`."""
    args = ["train", "--dataset", "digits", "--variants", "CT", "--model", "simple"]
    args += ["--limit-train", "128", "--limit-test", "64", "--batch-size", "64", "--epochs", "2"]
    return args + ["--inference-runs", "0", "--eval-steps", "2", "--no-progress", "--out", str(out)]


def test_ct_schedule_start_is_pinned_and_old_runs_resume_as_they_were(tmp_path):
    """`--ct-gamma-init` shapes CT's trajectory: the saved value is pinned on resume. A run
    saved before the option existed started from γ = -5 and 5, and is read as such."""
    base = _ct_digits_args(tmp_path)
    assert main([*base, "--ct-gamma-init", "-3", "3", "--stop-after", "1"]) == 0
    config_path = tmp_path / "CT" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["ct_gamma_init"] == [-3.0, 3.0]
    ds = data_lib.load_dataset("digits").subset(128, 64)
    model = load_run(tmp_path / "CT", ds)[0]
    assert -3.1 < float(model.schedule.gamma_0) < -2.9  # one epoch of 2 steps from -3
    with pytest.raises(SystemExit, match=r"ct_gamma_init \[-3.0, 3.0\] vs \[-2.0, 2.0\]"):
        main([*base, "--resume"])
    del config["ct_gamma_init"]  # as written before the option existed
    config_path.write_text(json.dumps(config))
    with pytest.raises(SystemExit, match=r"ct_gamma_init \[-5.0, 5.0\] vs \[-2.0, 2.0\]"):
        main([*base, "--resume"])
    assert main([*base, "--resume", "--ct-gamma-init", "-5", "5"]) == 0


def test_ct_fixed_schedule_is_built_recorded_and_pinned(tmp_path):
    """`--ct-fixed-schedule`: the checkpoint's schedule is exactly the one it started from
    after training, config.json holds the flag, and resuming without it is refused; a run
    saved before the option existed learned its schedule, and is read as such."""
    base = _ct_digits_args(tmp_path)
    assert main([*base, "--ct-fixed-schedule", "--stop-after", "1"]) == 0
    config_path = tmp_path / "CT" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["ct_fixed_schedule"] is True
    ds = data_lib.load_dataset("digits").subset(128, 64)
    model = load_run(tmp_path / "CT", ds)[0]
    assert model.schedule.fixed
    assert float(model.schedule.gamma_0) == -2.0
    assert float(model.schedule.gamma_1) == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(SystemExit, match=r"ct_fixed_schedule True vs False"):
        main([*base, "--resume"])
    del config["ct_fixed_schedule"]  # as written before the option existed
    config_path.write_text(json.dumps(config))
    assert not load_run(tmp_path / "CT", ds)[0].schedule.fixed


def test_ct_weighting_is_built_recorded_and_pinned(tmp_path):
    """`--ct-weighting log-snr`: the model restored from the checkpoint has it, config.json
    and the results record hold it, and resuming with the paper's weighting is refused; a run
    saved before the option existed used SNR'(t), and is read so."""
    base = _ct_digits_args(tmp_path)
    results = tmp_path / "results.json"
    first = [*base, "--ct-weighting", "log-snr", "--stop-after", "1", "--results", str(results)]
    assert main(first) == 0
    config_path = tmp_path / "CT" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["ct_weighting"] == "log-snr"
    assert json.loads(results.read_text())[-1]["ct_weighting"] == "log-snr"
    ds = data_lib.load_dataset("digits").subset(128, 64)
    assert load_run(tmp_path / "CT", ds)[0].weighting == "log-snr"
    with pytest.raises(SystemExit, match=r"ct_weighting 'log-snr' vs 'snr-prime'"):
        main([*base, "--resume"])
    del config["ct_weighting"]  # as written before the option existed
    config_path.write_text(json.dumps(config))
    assert load_run(tmp_path / "CT", ds)[0].weighting == "snr-prime"


def test_fm_z_input_is_built_recorded_and_pinned(tmp_path):
    """`--fm-z-input span`: the model restored from the checkpoint has it, config.json and the
    results record hold it, and resuming with the paper's input is refused; a run saved
    before the option existed gave the network z as it is, and is read so."""
    base = _ct_digits_args(tmp_path)
    base[base.index("CT")] = "FM"
    base += ["--embedding", "learned", "--embed-dim", "16"]
    results = tmp_path / "results.json"
    first = [*base, "--fm-z-input", "span", "--stop-after", "1", "--results", str(results)]
    assert main(first) == 0
    config_path = tmp_path / "FM-learned" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["fm_z_input"] == "span"
    assert json.loads(results.read_text())[-1]["fm_z_input"] == "span"
    ds = data_lib.load_dataset("digits").subset(128, 64)
    assert load_run(tmp_path / "FM-learned", ds)[0].z_input == "span"
    with pytest.raises(SystemExit, match=r"fm_z_input 'span' vs 'full'"):
        main([*base, "--resume"])
    del config["fm_z_input"]  # as written before the option existed
    config_path.write_text(json.dumps(config))
    assert load_run(tmp_path / "FM-learned", ds)[0].z_input == "full"


def test_dt_schedule_ceiling_is_built_recorded_and_pinned(tmp_path):
    """`--dt-alpha-bar-max` shapes DT's trajectory: the model is built with that ceiling (and
    so is the model restored from its checkpoint), config.json and the results record hold it,
    and a resume with another value is refused. A run saved before the option existed used
    the default ceiling, 0.9999, and resumes with it."""
    base = ["train", "--dataset", "digits", "--variants", "DT", "--model", "simple"]
    base += ["--num-blocks", "2", "--limit-train", "128", "--limit-test", "64", "--epochs", "2"]
    base += ["--batch-size", "64", "--inference-runs", "0", "--no-progress", "--out", str(tmp_path)]
    results = tmp_path / "results.json"
    first = [*base, "--dt-alpha-bar-max", "0.99", "--stop-after", "1", "--results", str(results)]
    assert main(first) == 0
    config_path = tmp_path / "DT" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["dt_alpha_bar_max"] == 0.99
    assert json.loads(results.read_text())[-1]["dt_alpha_bar_max"] == 0.99
    ds = data_lib.load_dataset("digits").subset(128, 64)
    model = load_run(tmp_path / "DT", ds)[0]
    assert model.schedule.alpha_bar_max == 0.99
    # block T's ᾱ is the ceiling: 0.99 in place of 0.9999
    assert float(model.schedule.alpha_bar(1.0)) == pytest.approx(0.99)
    with pytest.raises(SystemExit, match=r"dt_alpha_bar_max 0.99 vs 0.9999"):
        main([*base, "--resume"])
    del config["dt_alpha_bar_max"]  # as written before the option existed
    config_path.write_text(json.dumps(config))
    with pytest.raises(SystemExit, match=r"dt_alpha_bar_max 0.9999 vs 0.99"):
        main([*base, "--resume", "--dt-alpha-bar-max", "0.99"])
    assert main([*base, "--resume"]) == 0


QUICK_BUDGET = ["train", "--dataset", "digits", "--variants", "DT", "FM", "--model", "simple"]
QUICK_BUDGET += ["--num-blocks", "2", "--batch-size", "64", "--limit-train", "128"]
QUICK_BUDGET += ["--limit-test", "64", "--inference-runs", "0", "--eval-steps", "2"]
QUICK_BUDGET += ["--epochs", "3", "--no-progress"]


def test_time_budget_stops_between_epochs_and_resume_finishes(tmp_path, capfd):
    """A budget shorter than one epoch (the first epoch compiles: seconds) lets DT train its
    first epoch, which always starts, then stops it before the second; FM is not started, the
    budget being spent. Resuming DT with a budget that no epoch fits in trains nothing and
    records nothing; with a larger one, both runs finish."""
    out, results = tmp_path / "runs", tmp_path / "results.json"
    argv = [*QUICK_BUDGET, "--out", str(out), "--results", str(results)]
    assert main([*argv, "--time-budget", "0.5s"]) == 0
    err = capfd.readouterr().err
    assert [m["epoch"] for m in _metrics(out / "DT")] == [1]
    assert "[DT] stopped after epoch 1 of 3 (--time-budget): run the same command with " \
        "--resume to continue" in err  # fmt: skip
    assert "[FM] not started: the --time-budget is spent" in err
    assert not (out / "FM").exists()
    records = json.loads(results.read_text())
    assert [(r["variant"], r["epochs"], r["planned_epochs"]) for r in records] == [("DT", 1, 3)]

    # DT alone: whether FM's first epoch starts would depend on how fast DT is restored
    assert main([*argv, "--variants", "DT", "--resume", "--time-budget", "0.5"]) == 0
    err = capfd.readouterr().err
    assert "[DT] no epoch trained: the next (~" in err
    assert [m["epoch"] for m in _metrics(out / "DT")] == [1]
    assert len(json.loads(results.read_text())) == 1  # nothing recorded for a share with no epoch

    assert main([*argv, "--resume", "--time-budget", "1h"]) == 0
    assert [m["epoch"] for m in _metrics(out / "DT")] == [1, 2, 3]
    assert [m["epoch"] for m in _metrics(out / "FM")] == [1, 2, 3]
    records = json.loads(results.read_text())
    assert [(r["variant"], r["epochs"]) for r in records] == [("DT", 1), ("DT", 3), ("FM", 3)]


@pytest.mark.parametrize(
    "text, seconds",
    [("5400", 5400.0), ("90m", 5400.0), ("1h30m", 5400.0), ("1.5h", 5400.0), ("45s", 45.0)],
)
def test_time_budget_reads_units(text, seconds):
    from noprop_eqx.__main__ import config_from_args, make_parser

    args = make_parser().parse_args(["train", "--time-budget", text])
    assert config_from_args(args).time_budget == seconds


@pytest.mark.parametrize("text", ["soon", "2d", "0", "0m", "h", "inf"])
def test_time_budget_refuses_what_is_not_a_time(text, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--time-budget", text])
    err = capsys.readouterr().err
    assert "--time-budget" in err and repr(text) in err


def test_time_budget_stops_seeds_trained_together(tmp_path, capfd):
    out = tmp_path / "runs"
    argv = [*QUICK_BUDGET, "--variants", "DT", "--seeds", "0", "1", "--out", str(out)]
    assert main([*argv, "--time-budget", "0.5s"]) == 0
    assert "[DT x 2 seeds] stopped after epoch 1 of 3 (--time-budget)" in capfd.readouterr().err
    for seed in (0, 1):
        assert [m["epoch"] for m in _metrics(out / f"seed{seed}" / "DT")] == [1]
    assert main([*argv, "--resume", "--time-budget", "1h"]) == 0
    for seed in (0, 1):
        assert [m["epoch"] for m in _metrics(out / f"seed{seed}" / "DT")] == [1, 2, 3]
