"""`noprop-eqx evaluate`: trained runs' read-outs measured again from their checkpoints."""

import json
import shutil

import diffrax
import pytest

import noprop_eqx as npx
from noprop_eqx import data as data_lib
from noprop_eqx.__main__ import main
from noprop_eqx._evaluate import evaluate_runs, find_run_dirs
from noprop_eqx._loop import inference_key

from .conftest import as_a_user

LIMITS = ["--limit-train", "128", "--limit-test", "100"]


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory):
    """DT and FM, seeds 0 and 1 trained together for one epoch on a slice of the digits."""
    out = tmp_path_factory.mktemp("evaluate") / "runs"
    argv = [
        "train", "--dataset", "digits", "--model", "simple", "--variants", "DT", "FM",
        "--epochs", "1", "--batch-size", "64", "--num-blocks", "2", "--eval-steps", "4",
        "--seeds", "0", "1", "--inference-runs", "2", "--no-progress", "--out", str(out),
        *LIMITS,
    ]  # fmt: skip
    assert main(argv) == 0
    return out


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_evaluate_reproduces_the_training_records(seeds_run, tmp_path, capsys):
    """With each run's own solver and key, every figure training recorded comes back exactly:
    the deterministic read-out, DT's block average, each stochastic run, and the seeds'
    protocol statistic; the JSON holds no machine path."""
    report = tmp_path / "evaluated.json"
    assert main(["evaluate", str(seeds_run), "--inference-runs", "2", "--out", str(report)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(report.read_text())
    assert str(tmp_path) not in report.read_text()
    assert result["command"].startswith("noprop-eqx evaluate")
    assert [(r["variant"], r["seed"]) for r in result["runs"]] == [
        ("DT", 0), ("FM", 0), ("DT", 1), ("FM", 1),
    ]  # fmt: skip
    for r in result["runs"]:
        run_dir = seeds_run / f"seed{r['seed']}" / r["variant"]
        summary = _summary(run_dir)
        assert r["epoch"] == 1 and r["test_size"] == 100
        assert r["final_accuracy"] == summary["final_accuracy"] == r["recorded_accuracy"]
        assert r["accuracy_stochastic_runs"] == summary["accuracy_stochastic_runs"]
        assert r["accuracy_stochastic_mean"] == pytest.approx(summary["accuracy_stochastic_mean"])
        if r["variant"] == "DT":
            assert r["accuracy_blocks"] == summary["accuracy_blocks"]
        else:
            assert (r["inference_solver"], r["eval_steps"], r["nfe"]) == ("heun", 4, 8)
        assert f"deterministic {r['final_accuracy']:.2%}" in printed
    assert [p["variant"] for p in result["protocol"]] == ["DT", "FM"]
    for p in result["protocol"]:
        summary = _summary(seeds_run / "seed0" / p["variant"])
        assert p["protocol_seeds"] == [0, 1] and p["protocol_n"] == 4
        for stat in ("stochastic_mean", "stochastic_se", "deterministic_mean"):
            assert p[f"protocol_{stat}"] == pytest.approx(summary[f"protocol_{stat}"])
        assert f"seeds 0, 1: stochastic {p['protocol_stochastic_mean']:.2%}" in printed


def test_evaluate_with_another_solver_and_key(seeds_run):
    """`eval_solver`, `eval_steps` and `inference_seed` replace the run's own: the figures are
    those of the restored model read out directly with them. One run pools into nothing."""
    run_dir = seeds_run / "seed0" / "FM"
    result = evaluate_runs(
        [run_dir], eval_solver="euler", eval_steps=3, inference_seed=7, inference_runs=2
    )
    assert result["protocol"] == []
    (r,) = result["runs"]
    ds = data_lib.load_dataset("digits").subset(128, 100)
    model = npx.load_run(run_dir, ds)[0]
    kwargs = dict(solver=diffrax.Euler(), num_steps=3)
    assert r["final_accuracy"] == npx.evaluate_accuracy(model, ds.x_test, ds.y_test, **kwargs)
    expected = npx.stochastic_accuracy(
        model, ds.x_test, ds.y_test, key=inference_key(7), runs=2, **kwargs
    )
    assert r["accuracy_stochastic_runs"] == expected["runs"]
    assert (r["inference_solver"], r["eval_steps"], r["nfe"], r["inference_seed"]) == (
        "euler", 3, 3, 7,
    )  # fmt: skip


def test_evaluate_finds_run_folders(seeds_run):
    assert find_run_dirs([seeds_run / "seed1"]) == [seeds_run / "seed1" / n for n in ("DT", "FM")]
    # A folder named twice, once itself and once below another, is evaluated once.
    both = find_run_dirs([seeds_run / "seed0" / "FM", seeds_run / "seed0"])
    assert both == [seeds_run / "seed0" / "FM", seeds_run / "seed0" / "DT"]


def test_evaluate_errors(seeds_run, tmp_path, capsys):
    """Each bad input is one line naming what was wrong and what to do, no traceback."""

    def error(*argv) -> str:
        with as_a_user(), pytest.raises(SystemExit) as e:
            main(["evaluate", *map(str, argv)])
        return str(e.value.code) + capsys.readouterr().err

    assert "does not exist: expected a run folder" in error(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert "holds no run folder" in error(tmp_path / "empty")
    message = error(seeds_run, "--inference-runs", "1")
    assert "expected --inference-runs 0" in message and "got 1" in message
    message = error(seeds_run, "--inference-seed", str(2**64))
    assert "--inference-seed to be an integer from -2^63" in message
    # A checkpoint cut short: the run folder is named and the file's fault said.
    broken = tmp_path / "broken" / "FM"
    shutil.copytree(seeds_run / "seed0" / "FM", broken)
    data = (broken / "checkpoint.eqx").read_bytes()
    (broken / "checkpoint.eqx").write_bytes(data[: len(data) // 2])
    assert f"cannot restore the run in {broken}" in error(broken)
    # Settings that do not fit the data read now (here: a config edited to 11 classes).
    edited = tmp_path / "edited" / "FM"
    shutil.copytree(seeds_run / "seed0" / "FM", edited)
    config = json.loads((edited / "config.json").read_text())
    config["num_classes"] = 11
    (edited / "config.json").write_text(json.dumps(config))
    message = error(edited)
    assert "trained on 11 classes" in message and "point --data-dir" in message
    assert "Traceback" not in message
    # The recurrence read-out is CT's: asked of FM runs, it refuses before reading any out.
    message = error(seeds_run, "--eval-solver", "recurrence")
    assert "needs a noise schedule" in message and "FM run" in message
    assert "reading out" not in message


def test_ct_recurrence_read_out_trains_and_evaluates(tmp_path):
    """CT trained with `--eval-solver recurrence`: training records the read-out of Eq. 3 on
    a 6-step grid (6 network evaluations), and `evaluate` reproduces every figure; the same
    model read out by the ODE gives the figures of `predict` with Heun."""
    out = tmp_path / "runs"
    argv = [
        "train", "--dataset", "digits", "--model", "simple", "--variants", "CT",
        "--epochs", "1", "--batch-size", "64", "--eval-solver", "recurrence", "--eval-steps", "6",
        "--inference-runs", "2", "--no-progress", "--out", str(out), *LIMITS,
    ]  # fmt: skip
    assert main(argv) == 0
    summary = _summary(out / "CT")
    assert (summary["inference_solver"], summary["eval_steps"], summary["nfe"]) == (
        "recurrence", 6, 6,
    )  # fmt: skip
    (r,) = evaluate_runs([out], inference_runs=2)["runs"]
    assert r["final_accuracy"] == summary["final_accuracy"]
    assert r["accuracy_stochastic_runs"] == summary["accuracy_stochastic_runs"]
    ds = data_lib.load_dataset("digits").subset(128, 100)
    model = npx.load_run(out / "CT", ds)[0]
    by_hand = npx.evaluate_accuracy(model, ds.x_test, ds.y_test, sampler="recurrence", num_steps=6)
    assert r["final_accuracy"] == by_hand
    (ode,) = evaluate_runs([out], inference_runs=0, eval_solver="heun", eval_steps=5)["runs"]
    kwargs = dict(solver=diffrax.Heun(), num_steps=5)
    assert ode["final_accuracy"] == npx.evaluate_accuracy(model, ds.x_test, ds.y_test, **kwargs)
    assert (ode["inference_solver"], ode["nfe"]) == ("heun", 10)
