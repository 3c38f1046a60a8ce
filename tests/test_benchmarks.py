"""Every benchmark script runs end to end with --quick and writes JSON of the documented schema.

Each script runs in its own process (as a user runs it; XLA flags are per process), writing to
a temporary folder. No timing is asserted: --quick uses tiny shapes on a shared CPU.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(BENCHMARKS / name), "--quick", "--out-dir", str(tmp_path)]
    result = subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=600, cwd=BENCHMARKS.parent
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def load(tmp_path: Path, stem: str) -> dict:
    payload = json.loads((tmp_path / f"{stem}.json").read_text())
    assert (tmp_path / f"{stem}.md").read_text().count("|") > 10
    env = payload["environment"]
    for key in ("schema_version", "backend", "device", "cpu_model", "git_commit", "xla_flags"):
        assert key in env
    assert env["versions"]["jax"] and env["versions"]["jaxlib"]
    assert payload["flags"]["quick"] is True
    assert payload["peak_rss_mb"] > 0
    assert payload["rows"], "no rows"
    return payload


def check_timing(stats: dict) -> None:
    assert 0 < stats["min"] <= stats["median"] <= stats["max"]
    assert stats["repeats"] >= 1


def test_train_throughput(tmp_path):
    run_script("train_throughput.py", tmp_path, "--variants", "DT", "DT-low", "backprop")
    payload = load(tmp_path, "train_throughput")
    rows = {row["variant"]: row for row in payload["rows"]}
    assert set(rows) == {"DT", "DT-low", "backprop"}
    for row in rows.values():
        check_timing(row["seconds"])
        assert row["images_per_s"] > 0 and row["compile_s"] > 0
        assert row["memory_bytes"]["temp_bytes"] > 0
        assert row["memory_bytes"]["argument_bytes"] > 0
        assert row["flops_per_step"] > 0 and row["flops_fraction_of_matmul"] > 0
        assert row["peak_rss_mb"] > 0
    # DT and DT-low do the same arithmetic: the same FLOPs (from the unrolled formulation).
    assert rows["DT"]["flops_per_step"] == rows["DT-low"]["flops_per_step"]
    assert payload["matmul"]["before"]["flops_per_second"] > 0
    (ratio,) = payload["ratios"]
    assert ratio["DT_time_over_backprop"] > 0 and ratio["DT-low_temp_over_backprop"] > 0


def test_dt_strategies(tmp_path):
    # One child process (the non-default flags) keeps the test short.
    run_script("dt_strategies.py", tmp_path, "--variants", "DT-loop", "--flag-sets", "ynn-off")
    payload = load(tmp_path, "dt_strategies")
    assert {row["flags"] for row in payload["rows"]} == {"ynn-off"}
    assert set(payload["children"]) == {"ynn-off"}
    assert "ynn" in payload["children"]["ynn-off"]["environment"]["xla_flags"]
    (summary,) = payload["summary"]
    assert summary["best"].startswith("DT-loop")


def test_inference(tmp_path):
    run_script("inference.py", tmp_path, "--variants", "DT", "FM")
    payload = load(tmp_path, "inference")
    rows = payload["rows"]
    assert {row["variant"] for row in rows} == {"DT", "FM"}
    for row in rows:
        check_timing(row["seconds"])
        assert row["predictions_per_s"] > 0 and row["nfe"] >= 1
    dt_nfe = {row["nfe"] for row in rows if row["variant"] == "DT"}
    assert dt_nfe == {2}  # T = 2 blocks in --quick
    euler = [row for row in rows if row["sampler"].startswith("Euler")]
    assert euler and all(row["nfe"] == int(row["sampler"].split()[1]) for row in euler)


def test_torch_reference(tmp_path):
    if importlib.util.find_spec("torch") is None:
        result = run_script("torch_reference.py", tmp_path)
        assert "not installed" in result.stdout
        pytest.skip("torch is not installed (optional extra)")
    run_script("torch_reference.py", tmp_path)
    payload = load(tmp_path, "torch_reference")
    frameworks = {row["framework"].split()[0] for row in payload["rows"]}
    assert frameworks == {"PyTorch", "JAX"}
    for row in payload["rows"]:
        check_timing(row["seconds"])
    ratios = [
        row["jax_over_torch_throughput"] for row in payload["rows"] if "JAX" in row["framework"]
    ]
    assert len(ratios) == 2 and all(r > 0 for r in ratios)
    assert payload["threads"] >= 1
