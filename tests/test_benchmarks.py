"""Every benchmark script runs end to end with --quick and writes JSON of the documented schema
(the one-off studies under `-m slow`).

Each script runs in its own process (as a user runs it; XLA flags are per process), writing to
a temporary folder; they run concurrently. No timing is asserted: --quick uses tiny shapes
on a shared CPU.
"""

import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


# The tools a user runs: in the default suite.
TOOLS = {
    "train_throughput.py": ["--variants", "DT", "DT-low", "backprop"],
    "inference.py": ["--variants", "DT", "FM"],
    "torch_reference.py": [],
}
# The one-off studies (benchmarks/studies/) and the epoch-time tool: their tests are marked
# slow (`pytest -m slow`).
STUDIES = {
    # One child process (the non-default flags) keeps the test short.
    "dt_strategies.py": ["--variants", "DT-loop", "--flag-sets", "ynn-off"],
    "epoch_time.py": ["--variants", "DT", "--steps-per-call", "2", "--modes", "host", "host-scan"],
    "conv_kernels.py": [],
    "pool_order.py": ["--variants", "DT-blockwise"],
    "seeds.py": ["--variants", "FM"],
    # The issue-18 studies, on the digits with the small CNN (the studies proper use MNIST).
    "ct_early.py": ["--dataset", "digits", "--model", "simple", "--settings", "paper", "gamma1"],
    "dt_loss_weights.py": [
        "--dataset",
        "digits",
        "--model",
        "simple",
        "--epochs",
        "2",
        "--settings",
        "paper",
        "abar-0.99",
        "--runs",
        "2",
    ],
    # Issue 17's norm study, on the digits with a width-8 ResNet-18 (the study uses CIFAR-10).
    "resnet_norm.py": [
        "--dataset",
        "digits",
        "--width",
        "8",
        "--epochs",
        "2",
        "--limit-train",
        "512",
        "--limit-test",
        "200",
        "--inference-runs",
        "2",
    ],
}


def _start(scripts: dict, tmp_path_factory, folder=BENCHMARKS):
    """Starts every script at once (each mostly compiles, single-threaded, so on 2 cores the
    processes finish in about half the time they take one after the other)."""
    processes = {}
    for name, args in scripts.items():
        out_dir = tmp_path_factory.mktemp(name.removesuffix(".py"))
        script = folder / name if (folder / name).is_file() else BENCHMARKS / name
        command = [sys.executable, str(script), "--quick", "--out-dir", str(out_dir)]
        process = subprocess.Popen(
            [*command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=BENCHMARKS.parent,
        )
        processes[name] = (process, out_dir)
    return processes


def _stop(processes: dict) -> None:
    for process, _ in processes.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    processes = _start(TOOLS, tmp_path_factory)
    yield processes
    _stop(processes)


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory):
    processes = _start(STUDIES, tmp_path_factory, BENCHMARKS / "studies")
    yield processes
    _stop(processes)


def finish(runs, name: str) -> tuple[str, Path]:
    """Waits for a script; returns its stdout and output folder; fails on a non-zero exit."""
    process, out_dir = runs[name]
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return stdout, out_dir


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


def test_train_throughput(runs):
    _, tmp_path = finish(runs, "train_throughput.py")
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
    matmul = payload["matmul"]["before"]["flops_per_second"]
    assert matmul > 0
    for row in rows.values():  # the derived columns follow from the measured ones
        median = row["seconds"]["median"]
        assert row["images_per_s"] == pytest.approx(row["batch"] / median)
        assert row["flops_per_second"] == pytest.approx(row["flops_per_step"] / median)
        assert row["flops_fraction_of_matmul"] == pytest.approx(
            row["flops_per_step"] / median / matmul
        )
    # DT and backprop run the same T blocks forward and backward once per step (DT on its own
    # sampled inputs, backprop chained): their FLOPs agree to within a factor of two.
    assert 0.5 < rows["DT"]["flops_per_step"] / rows["backprop"]["flops_per_step"] < 2.0
    (ratio,) = payload["ratios"]
    bp = rows["backprop"]
    assert ratio["DT_time_over_backprop"] == pytest.approx(
        rows["DT"]["ms_per_step"] / bp["ms_per_step"]
    )
    assert ratio["DT-low_temp_over_backprop"] == pytest.approx(
        rows["DT-low"]["memory_bytes"]["temp_bytes"] / bp["memory_bytes"]["temp_bytes"]
    )
    # The low-memory step holds one block's activations at a time: less temporary memory.
    assert rows["DT-low"]["memory_bytes"]["temp_bytes"] < rows["DT"]["memory_bytes"]["temp_bytes"]


def test_train_throughput_embeddings(getkey):
    """--embeddings builds each variant with the embedding it names (prototype: d = C*H*W), and
    ratios() sets each such row beside the same row with one-hot."""
    tt = _import_study("train_throughput")
    for variant in ("DT", "CT", "FM", "backprop"):
        for embedding, dim in (("one-hot", 10), ("learned", 7), ("prototype", 144)):
            model, *_ = tt.build(
                variant, "tiny", 2, None, getkey(), embedding=embedding, embed_dim=7
            )
            assert model.embedding.dim == dim, (variant, embedding)
    rows = [
        {"variant": "CT", "embedding": e, "embed_dim": d, "network": "tiny", "batch": 8,
         "compiler_options": "auto", "compute_dtype": "float32", "ms_per_step": ms}
        for e, d, ms in (("one-hot", 10, 2.0), ("prototype", 144, 3.0))
    ]  # fmt: skip
    (entry,) = tt.ratios(rows)
    assert entry["embedding"] == "prototype" and entry["embed_dim"] == 144
    assert entry["CT_time_over_one_hot"] == pytest.approx(1.5)


@pytest.mark.slow
def test_seeds(study_runs):
    _, tmp_path = finish(study_runs, "seeds.py")
    payload = load(tmp_path, "seeds")
    rows = {row["seeds"]: row for row in payload["rows"]}
    assert set(rows) == {1, 2}
    for row in rows.values():
        check_timing(row["seconds"])
        median = row["seconds"]["median"]
        assert row["ms_per_step"] == pytest.approx(median * 1e3)
        assert row["images_per_s"] == pytest.approx(row["seeds"] * row["batch"] / median)
        assert row["epoch_s"] == pytest.approx(469 * median)
    assert rows[2]["time_over_one_seed"] == pytest.approx(
        rows[2]["ms_per_step"] / rows[1]["ms_per_step"]
    )
    # Two seeds' step does twice one seed's work.
    assert rows[2]["flops_per_step"] == pytest.approx(2 * rows[1]["flops_per_step"], rel=0.05)


@pytest.mark.slow
def test_dt_strategies(study_runs):
    _, tmp_path = finish(study_runs, "dt_strategies.py")
    payload = load(tmp_path, "dt_strategies")
    assert {row["flags"] for row in payload["rows"]} == {"ynn-off"}
    assert set(payload["children"]) == {"ynn-off"}
    assert "ynn" in payload["children"]["ynn-off"]["environment"]["xla_flags"]
    (summary,) = payload["summary"]
    assert summary["best"].startswith("DT-loop")


def test_inference(runs):
    _, tmp_path = finish(runs, "inference.py")
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


def test_torch_reference(runs):
    stdout, tmp_path = finish(runs, "torch_reference.py")
    if importlib.util.find_spec("torch") is None:
        assert "not installed" in stdout
        pytest.skip("torch is not installed (optional extra)")
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


@pytest.mark.slow
def test_epoch_time(study_runs):
    _, tmp_path = finish(study_runs, "epoch_time.py")
    payload = load(tmp_path, "epoch_time")
    rows = {row["mode"]: row for row in payload["rows"]}
    # (The "device" and "scan" modes use the same step calls; left out to keep the test short.)
    assert set(rows) == {"host", "host-scan"}
    assert rows["host-scan"]["steps_per_call"] == 2 and rows["host"]["steps_per_call"] == 1
    assert rows["host"]["steps"] == 4  # 64 images, batch 16
    for row in rows.values():
        check_timing(row["seconds"])
        assert row["epoch_s"] > 0 and row["images_per_s"] > 0
    # The same epochs from the same start, two steps per call or one: the same final loss.
    assert abs(rows["host-scan"]["final_loss"] - rows["host"]["final_loss"]) <= 1e-4 * abs(
        rows["host"]["final_loss"]
    )


@pytest.mark.slow
def test_conv_kernels(study_runs):
    _, tmp_path = finish(study_runs, "conv_kernels.py")
    payload = load(tmp_path, "conv_kernels")
    rows = payload["rows"]
    assert len(rows) == 2 * 4  # the two --quick layers x four kernels
    for row in rows:
        check_timing(row["seconds"])
        assert row["fraction_of_matmul"] > 0
    # FLOPs of a 3x3 valid convolution: 2 * batch * output pixels * C_out * C_in * 9.
    assert {row["flops"] for row in rows if row["layer_index"] == 0} == {2.0 * 4 * 8 * 8 * 4 * 9}
    (summary,) = payload["block_summaries"]
    used = [r for r in rows if not (r["kernel"] == "GEMM of the same shape")]
    used = [r for r in used if not (r["kernel"] == "input gradient" and r["layer_index"] == 0)]
    assert summary["block_conv_gflop"] == pytest.approx(sum(r["gflop"] for r in used))


def test_conv_kernels_compute_the_gradients_they_name():
    """The benchmarked input- and weight-gradient kernels against explicit sums."""
    sys.path[:0] = [str(BENCHMARKS / "studies"), str(BENCHMARKS)]
    try:
        import conv_kernels
    finally:
        sys.path.remove(str(BENCHMARKS / "studies"))
        sys.path.remove(str(BENCHMARKS))
    import jax.random as jr

    fns = conv_kernels.kernels(2, 5, 3, 4, jr.key(0))
    x, w, g = (np.asarray(a, dtype=np.float64) for a in fns["input gradient"][1])
    # y[b, i, j, o] = sum_{di, dj, c} x[b, i + di, j + dj, c] w[di, dj, c, o]
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for di in range(3):
        for dj in range(3):
            patch = x[:, di : di + 3, dj : dj + 3, :]
            dw[di, dj] = np.einsum("bijc,bijo->co", patch, g)
            dx[:, di : di + 3, dj : dj + 3, :] += np.einsum("bijo,co->bijc", g, w[di, dj])
    y = sum(
        np.einsum("bijc,co->bijo", x[:, di : di + 3, dj : dj + 3, :], w[di, dj])
        for di in range(3)
        for dj in range(3)
    )
    for name, expected in (("forward", y), ("input gradient", dx), ("weight gradient", dw)):
        fn, args = fns[name]
        np.testing.assert_allclose(np.asarray(fn(*args)), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_pool_order(study_runs):
    stdout, tmp_path = finish(study_runs, "pool_order.py")
    assert "orders agree" in stdout
    rows = load(tmp_path, "pool_order")["rows"]
    assert [(r["variant"], r["order"]) for r in rows] == [
        ("DT-blockwise", "pool-first"),
        ("DT-blockwise", "relu-first"),
    ]
    for row in rows:
        check_timing(row["seconds"])
        assert row["images_per_s"] == pytest.approx(row["batch"] / row["seconds"]["median"])
    assert rows[1]["time_over_pool_first"] == pytest.approx(
        rows[1]["ms_per_step"] / rows[0]["ms_per_step"]
    )


def test_pool_order_reference_is_the_textbook_order(getkey):
    """The benchmark's "relu-first" stack is conv + bias → ReLU → pool, as written out here."""
    sys.path[:0] = [str(BENCHMARKS / "studies"), str(BENCHMARKS)]
    try:
        import pool_order
    finally:
        sys.path.remove(str(BENCHMARKS / "studies"))
        sys.path.remove(str(BENCHMARKS))
    import jax
    import jax.random as jr

    from noprop_eqx.models import PaperConvStack

    stack = PaperConvStack((1, 16, 16), dropout=0.2, key=getkey())
    x = jr.normal(getkey(), (1, 16, 16))
    h = jax.nn.relu(stack.convs[0](x))[:, :14, :14].reshape(32, 7, 2, 7, 2).max((2, 4))
    h = jax.nn.relu(stack.convs[1](h))
    h = jax.nn.relu(stack.convs[2](h))[:, :2, :2].reshape(128, 1, 2, 1, 2).max((2, 4))
    with pool_order.stack_order("relu-first"):
        assert PaperConvStack.__call__ is pool_order._relu_first_call
        got = stack(x, key=None)
    np.testing.assert_allclose(got, h.reshape(-1), rtol=1e-5, atol=1e-5)
    assert PaperConvStack.__call__ is not pool_order._relu_first_call  # restored on exit


@pytest.mark.slow
def test_ct_early(study_runs):
    _, tmp_path = finish(study_runs, "ct_early.py")
    payload = load(tmp_path, "ct_early")
    rows = {row["setting"]: row for row in payload["rows"]}
    assert set(rows) == {"paper", "gamma1"}
    assert len(payload["t_bins"]) == 10
    for row in rows.values():
        assert 0 <= row["accuracy"] <= 100
        assert len(row["per_t"]) == 10 and all(0 <= a <= 1 for a in row["per_t"])
        assert row["gamma_0"] < row["gamma_1"]
    # The settings reach the model: each starts its schedule where it says.
    assert rows["paper"]["gamma_0"] < -4 and rows["gamma1"]["gamma_0"] > -2


@pytest.mark.slow
def test_dt_loss_weights(study_runs):
    _, tmp_path = finish(study_runs, "dt_loss_weights.py")
    payload = load(tmp_path, "dt_loss_weights")
    rows = [(row["setting"], row["epoch"]) for row in payload["rows"]]
    assert rows == [("paper", 1), ("paper", 2), ("abar-0.99", 1), ("abar-0.99", 2)]
    share = {row["setting"]: row["last_weight_share"] for row in payload["rows"]}
    # Block T's share of Eq. 8's weights, from the clipped cosine schedule (see the docstring).
    assert share["paper"] == pytest.approx(0.9965, abs=1e-4)
    assert share["abar-0.99"] < 0.7
    for row in payload["rows"]:
        assert row["embedding_change"] > 0  # the prototypes train
        assert 0 < row["min_distance_ratio"]


@pytest.mark.slow
def test_dt_noise_gap(tmp_path):
    """The per-block decomposition on a one-epoch digits run: the deterministic chain is one
    of the decomposition's cases, so with all noise masked off it must reproduce
    `evaluate_accuracy` (to the study's rounding)."""
    run = [
        sys.executable,
        "-m",
        "noprop_eqx",
        "train",
        "--variants",
        "DT",
        "--dataset",
        "digits",
        "--model",
        "simple",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
        "--inference-runs",
        "0",
        "--num-blocks",
        "4",
    ]
    subprocess.run(run, check=True, capture_output=True, cwd=BENCHMARKS.parent)
    out = tmp_path / "gap.json"
    study = [
        sys.executable,
        str(BENCHMARKS / "studies" / "dt_noise_gap.py"),
        "--run-dir",
        str(tmp_path / "run" / "DT"),
        "--dataset",
        "digits",
        "--runs",
        "2",
        "--out",
        str(out),
    ]
    done = subprocess.run(study, capture_output=True, text=True, cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    # Progress on stderr, one line a stage: deterministic, the paper's, z_0 only, 4 blocks.
    stages = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert len(stages) == 7, done.stderr[-3000:]
    assert stages[-1].startswith("[7/7] noise after block 4 only done"), stages
    # One-hot rows sit exactly sqrt(2) apart, and the noise after block 1 has sqrt(c_1) < 1.
    geometry = json.loads(out.read_text())["embedding_geometry"]
    assert geometry["dim"] == 10
    assert geometry["distance_min"] == pytest.approx(2**0.5, abs=1e-4)
    assert geometry["distance_max"] == pytest.approx(2**0.5, abs=1e-4)
    assert geometry["distance_min_over_sqrt_c_max"] > geometry["distance_min"]
    # One-hot embeddings are fixed: the run ends where it started.
    assert geometry["drift_relative"] == 0
    assert geometry["initial"] == {k: v for k, v in geometry.items() if k in geometry["initial"]}
    result = json.loads(out.read_text())
    summary = json.loads((tmp_path / "run" / "DT" / "summary.json").read_text())
    # The study rounds its percentages to 3 decimals.
    assert result["deterministic"]["accuracy"] == pytest.approx(
        100 * summary["final_accuracy"], abs=5e-4
    )
    assert len(result["one_block_noise_only"]) == 4
    assert len(result["paper_stochastic"]["readout_of_z_t"]) == 4
    deterministic = result["deterministic"]  # per-step lists are rounded to 2 decimals
    assert deterministic["readout_of_z_t"][-1] == pytest.approx(deterministic["accuracy"], abs=5e-3)

    # The per-block stage starts each case from the cached deterministic chain; it must give
    # what the whole chain gives with the noise masked to that block (the same draws).
    import jax.random as jr

    import noprop_eqx as npx

    gap = _import_study("dt_noise_gap")
    data = npx.data.load_digits()
    model, *_ = npx.load_run(tmp_path / "run" / "DT", data)
    x, y = data.x_test, data.y_test
    det = gap.correct(model, x, y, jr.key(0), False, np.zeros(4), batch=128, keep_z=True)
    assert len(det[2]) == 4  # 449 images in batches of 128
    for k in range(4):
        key = jr.key(10 + k)
        whole = gap.correct(model, x, y, key, False, np.eye(4)[k], batch=128)
        cached = gap.correct_one_block(model, x, y, key, k, det, batch=128)
        np.testing.assert_array_equal(cached[0], whole[0])
        np.testing.assert_array_equal(cached[1], whole[1])
    # Not vacuous: the noise after block 1 changes some image's readout along the chain.
    noised = gap.correct_one_block(model, x, y, jr.key(3), 0, det, batch=128)
    assert not np.array_equal(noised[1], det[1])


def test_dt_noise_gap_embedding_drift(tmp_path):
    """`--geometry-only --out` on a run with a learned embedding: the initial embedding is the
    one a model built with the run's key has, and the drift is training's move away from it."""
    import noprop_eqx as npx
    from noprop_eqx._loop import run_keys

    run = [sys.executable, "-m", "noprop_eqx", "train", "--variants", "DT", "--dataset"]
    run += ["digits", "--model", "simple", "--num-blocks", "2", "--embedding", "learned"]
    run += ["--limit-train", "256", "--epochs", "1", "--inference-runs", "0", "--no-progress"]
    run += ["--out", str(tmp_path / "run")]
    subprocess.run(run, check=True, capture_output=True, cwd=BENCHMARKS.parent)
    out = tmp_path / "geometry.json"
    study = [sys.executable, str(BENCHMARKS / "studies" / "dt_noise_gap.py"), "--run-dir"]
    study += [str(tmp_path / "run" / "DT-learned"), "--dataset", "digits", "--geometry-only"]
    done = subprocess.run(
        [*study, "--out", str(out)], capture_output=True, text=True, cwd=BENCHMARKS.parent
    )
    assert done.returncode == 0, done.stderr[-3000:]
    geometry = json.loads(out.read_text())["embedding_geometry"]
    gap = _import_study("dt_noise_gap")
    data = npx.data.load_digits()
    start = npx.build_model(
        "DT",
        num_classes=10,
        image_shape=(1, 8, 8),
        backbone="simple",
        embedding="learned",
        num_blocks=2,
        key=run_keys(0, "DT")[0],
    )
    trained = npx.load_run(tmp_path / "run" / "DT-learned", data.subset(256, None))[0]
    w0, w = np.asarray(start.embedding.matrix()), np.asarray(trained.embedding.matrix())
    assert w.shape == (10, 20)
    c = np.asarray(gap.posterior_coefficients(gap.alpha_bar_grid(trained.schedule, 2))[2])
    assert geometry["initial"] == gap.embedding_geometry(w0, c)
    assert geometry == dict(
        gap.embedding_geometry(w, c),
        initial=geometry["initial"],
        drift_relative=pytest.approx(np.linalg.norm(w - w0) / np.linalg.norm(w0), abs=1e-4),
    )
    assert geometry["drift_relative"] > 0  # a learned embedding trains


def _import_study(name: str):
    sys.path[:0] = [str(BENCHMARKS / "studies"), str(BENCHMARKS)]
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS / "studies"))
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.slow
def test_resnet_norm(study_runs):
    _, tmp_path = finish(study_runs, "resnet_norm.py")
    payload = load(tmp_path, "resnet_norm")
    assert [(r["norm"], r["epoch"]) for r in payload["rows"]] == [
        ("group", 1),
        ("group", 2),
        ("batch", 1),
        ("batch", 2),
    ]
    assert payload["variant"] == "CT" and payload["width"] == 8
    for row in payload["rows"]:
        assert 0 <= row["deterministic"] <= 100 and 0 <= row["stochastic_mean"] <= 100
        assert row["train_s"] > 0 and np.isfinite(row["loss"])


def test_resnet_norm_group_branch_is_resnet_wrappers(getkey):
    """With GroupNorm, the study's image branch is `ResNetWrapper(depth=18)`'s: given the same
    weights, the same features."""
    import equinox as eqx
    import jax
    import jax.random as jr

    from noprop_eqx.models import ResNetWrapper

    study = _import_study("resnet_norm")
    net = ResNetWrapper(10, 18, 8, 0, image_shape=(3, 16, 16), key=getkey())
    branch, state = eqx.nn.make_with_state(study.Branch)("group", 3, 8, key=getkey())
    theirs = jax.tree.leaves((net.stem, net.stem_norm, net.stages))
    assert [a.shape for a in jax.tree.leaves(branch)] == [a.shape for a in theirs]
    branch = jax.tree.unflatten(jax.tree.structure(branch), theirs)
    x = jr.normal(getkey(), (3, 16, 16))
    feats, _ = branch(x, state)
    np.testing.assert_allclose(net.image_fc(feats), net.encode(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # compiles a ResNet training step: about 20 s
def test_resnet_norm_batch_norm_state(getkey):
    """With BatchNorm: a training step normalises with the batch's statistics and moves the
    running statistics; evaluation uses the running statistics, so an image's features do not
    depend on the rest of its batch (in training they do)."""
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr

    study = _import_study("resnet_norm")
    branch, state, model = study.build("batch", "CT", 10, 3, 8, getkey())
    x = jr.normal(getkey(), (16, 3, 16, 16)) * 2.0 + 1.0
    y = jnp.arange(16) % 10
    bn = branch.stem_norm
    mean0, var0 = state.get(bn.batch_state_index)
    # Batch mode: the stem's normalised output has zero mean and unit variance per channel.
    pre = eqx.filter_vmap(branch.stem)(x)
    normed, _ = eqx.filter_vmap(bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
        pre, state
    )
    np.testing.assert_allclose(normed.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(normed.var(axis=(0, 2, 3)), 1.0, rtol=1e-2)
    # One training step threads the state: the running statistics move towards the batch's.
    optimizer = study.npx.paper_optimizer(model)
    params = (branch, model)
    opt_state = optimizer.init(eqx.filter(params, eqx.is_array))
    step = study.make_train_step(optimizer)
    params, state, opt_state, aux = step(params, state, opt_state, x, y, getkey())
    mean1, var1 = state.get(bn.batch_state_index)
    batch_mean = pre.mean(axis=(0, 2, 3))
    np.testing.assert_allclose(
        mean1,
        study._BN_MOMENTUM * mean0 + (1 - study._BN_MOMENTUM) * batch_mean,
        rtol=1e-4,
        atol=1e-5,
    )
    assert not np.allclose(var1, var0) and np.isfinite(float(aux["loss"]))
    # Evaluation: one image's features alone equal its features within a batch.
    branch = params[0]
    whole = study.eval_features(branch, state, np.asarray(x))
    alone = study.eval_features(branch, state, np.asarray(x[:1]))
    np.testing.assert_allclose(alone[0], whole[0], rtol=1e-4, atol=1e-5)
    # Training mode does depend on the batch.
    train_whole, _ = study.batch_features(branch, state, x)
    train_half, _ = study.batch_features(branch, state, x[:8])
    assert not np.allclose(train_whole[0], train_half[0], atol=1e-3)
