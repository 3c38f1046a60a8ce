"""Every option of `noprop-eqx train` with a broken value: the command stops before any
training with a one-line error that names the option (usage errors exit 2, run errors exit 1
with the message), never a traceback, and writes no run folder."""

import pytest

from noprop_eqx.__main__ import main

BASE = ["train", "--dataset", "digits", "--model", "simple", "--variants", "FM"]

# (case, extra arguments, a phrase the message must hold); "{tmp}" is the test's folder.
CASES = [
    ("unknown variant", ["--variants", "XX"], "unknown variant 'XX'"),
    ("zero epochs", ["--epochs", "0"], "--epochs: expected a positive integer, got 0"),
    ("negative epochs", ["--epochs", "-3"], "--epochs: expected a positive integer, got -3"),
    ("epochs not a number", ["--epochs", "abc"], "got 'abc'"),
    ("zero batch", ["--batch-size", "0"], "--batch-size: expected a positive integer"),
    ("negative lr", ["--lr", "-1"], "--lr: expected a finite number >= 0"),
    ("nan lr", ["--lr", "nan"], "got nan"),
    ("inf lr", ["--lr", "inf"], "got inf"),
    ("negative weight decay", ["--weight-decay", "-1"], "--weight-decay: expected a finite"),
    ("unknown schedule", ["--lr-schedule", "step"], "invalid choice: 'step'"),
    ("unknown embedding", ["--embedding", "foo"], "invalid choice: 'foo'"),
    ("unknown prototype scale", ["--prototype-scale", "x"], "invalid choice: 'x'"),
    ("prototype scale, one-hot", ["--prototype-scale", "raw"], "applies to embedding 'prototype'"),
    ("fixed embedding, one-hot", ["--fixed-embedding"], "applies to embedding 'prototype'"),
    ("zero embed dim", ["--embed-dim", "0"], "--embed-dim: expected a positive integer"),
    ("embed dim of one-hot", ["--embed-dim", "7"], "--embed-dim 7 does not fit"),
    ("unknown model", ["--model", "vgg"], "invalid choice: 'vgg'"),
    ("zero blocks", ["--num-blocks", "0"], "--num-blocks: expected a positive integer"),
    ("gamma init reversed", ["--variants", "CT", "--ct-gamma-init", "2", "-2"], "G0 < G1"),
    ("gamma init nan", ["--variants", "CT", "--ct-gamma-init", "nan", "2"], "G0 < G1"),
    (
        "gamma init, one number",
        ["--variants", "CT", "--ct-gamma-init", "1"],
        "expected 2 arguments",
    ),
    ("gamma init, not CT", ["--ct-gamma-init", "-5", "5"], "applies to variant 'CT' only"),
    ("fixed schedule, not CT", ["--ct-fixed-schedule"], "applies to variant 'CT' only"),
    ("weighting, not CT", ["--ct-weighting", "log-snr"], "applies to variant 'CT' only"),
    ("unknown weighting", ["--variants", "CT", "--ct-weighting", "snr"], "invalid choice: 'snr'"),
    (
        "z input, not FM",
        ["--variants", "CT", "--fm-z-input", "span"],
        "applies to variant 'FM' only",
    ),
    ("unknown z input", ["--fm-z-input", "x"], "invalid choice: 'x'"),
    ("ceiling of 1", ["--variants", "DT", "--dt-alpha-bar-max", "1"], "number in (0.0001, 1)"),
    ("ceiling nan", ["--variants", "DT", "--dt-alpha-bar-max", "nan"], "got nan"),
    ("ceiling, not DT", ["--dt-alpha-bar-max", "0.99"], "applies to variant 'DT' only"),
    ("paper network, digits", ["--model", "paper"], "the digits are 8×8"),
    ("seed past 64 bits", ["--seed", str(2**64)], "integer from -2^63 to 2^63 - 1, got 1844"),
    ("a seed past 64 bits", ["--seeds", "0", str(2**63)], "got (0, 9223372036854775808)"),
    ("negative subset seed", ["--subset-seed", "-1"], "non-negative integer, got -1"),
    ("unknown dtype", ["--compute-dtype", "float16"], "invalid choice: 'float16'"),
    ("zero steps per call", ["--steps-per-call", "0"], "positive integer or 'auto', got '0'"),
    ("negative shift", ["--augment-shift", "-1"], "expected a non-negative integer, got -1"),
    ("zero width", ["--width", "0"], "--width: expected a positive integer"),
    ("width, not a ResNet", ["--width", "32"], "only the ResNet backbones have a width"),
    ("seed not a number", ["--seed", "x"], "invalid int value: 'x'"),
    ("unknown dataset", ["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    ("coarse labels, digits", ["--cifar100-labels", "coarse"], "applies to dataset 'cifar100'"),
    ("missing data dir", ["--dataset", "mnist", "--data-dir", "{tmp}/none"], "not found"),
    ("data dir is a file", ["--dataset", "mnist", "--data-dir", "{tmp}/file.txt"], "not found"),
    ("empty data dir", ["--dataset", "cifar10", "--data-dir", "{tmp}"], "cifar-10-python.tar.gz"),
    ("out is a file", ["--out", "{tmp}/file.txt"], "expected --out to be a folder"),
    ("unknown solver", ["--eval-solver", "rk4"], "invalid choice: 'rk4'"),
    ("recurrence for FM", ["--eval-solver", "recurrence"], "needs a noise schedule"),
    ("zero solver steps", ["--eval-steps", "0"], "--eval-steps: expected a positive integer"),
    ("zero limit", ["--limit-train", "0"], "--limit-train: expected a positive integer"),
    ("limit below classes", ["--limit-train", "5"], "expected --limit-train of at least 10"),
    ("test limit below classes", ["--limit-test", "3"], "expected --limit-test of at least 10"),
    ("results not .json", ["--results", "{tmp}/x.txt"], "expected a results file named *.json"),
    ("results damaged", ["--results", "{tmp}/bad.json"], "is damaged"),
    ("results a dict", ["--results", "{tmp}/dict.json"], "to hold a JSON list of run records"),
    ("results a folder", ["--results", "{tmp}"], "expected a results file named *.json"),
    ("one inference run", ["--inference-runs", "1"], "--inference-runs to be 0 (skip) or >= 2"),
    ("negative inference runs", ["--inference-runs", "-1"], "--inference-runs to be 0"),
    ("zero stop-after", ["--stop-after", "0"], "--stop-after: expected a positive integer"),
    ("stop-after past epochs", ["--stop-after", "5", "--epochs", "2"], "--stop-after <= epochs"),
    ("unknown option", ["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ("mesh, bad form", ["--mesh", "data:4"], "--mesh: expected a mesh like 'data=4,blocks=2'"),
    ("mesh, unknown axis", ["--mesh", "rows=2"], "axes data, blocks"),
    ("mesh, zero size", ["--mesh", "data=0"], "positive size for the mesh axis 'data'"),
    ("mesh, batch not divisible", ["--mesh", "data=3"], "--batch-size divisible by the mesh's"),
    ("mesh, blocks for FM", ["--mesh", "blocks=2"], "splits NoProp-DT's blocks"),
    (
        "mesh, blocks do not divide T",
        ["--variants", "DT", "--mesh", "blocks=3"],
        "sizes that do: [1, 2, 5, 10]",
    ),
    ("mesh, too many devices", ["--mesh", "data=64"], "needs 64 devices, got 1"),
    ("mesh, steps per call", ["--mesh", "data=2", "--steps-per-call", "4"], "one step per call"),
    ("coordinator without mesh", ["--coordinator", "localhost:1"], "give --mesh too"),
    (
        "process id past count",
        ["--mesh", "data=2", "--num-processes", "2", "--process-id", "2"],
        "--process-id below num_processes (2)",
    ),
    ("zero cpu devices", ["--cpu-devices", "0"], "--cpu-devices: expected a positive integer"),
]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("NOPROP_DATA_DIR", raising=False)


@pytest.mark.parametrize("case, extra, phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(tmp_path, capfd, case, extra, phrase):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "dict.json").write_text("{}")
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as e:
        main([*BASE, "--out", str(out), *extra])
    code = e.value.code
    message = code if isinstance(code, str) else capfd.readouterr().err
    assert code == 2 or (isinstance(code, str) and code.startswith("noprop-eqx train: error:"))
    assert phrase in message, message
    assert "Traceback" not in message
    assert not (out / "FM").exists()  # nothing trained, nothing written
