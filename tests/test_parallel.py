"""noprop_eqx.parallel: steps on a device mesh equal the single-device steps.

The mesh tests run in subprocesses with several CPU devices (`jax_num_cpu_devices`), so the rest
of the suite keeps one device."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.random as jr
import numpy as np
import pytest

import noprop_eqx as npx
from noprop_eqx import parallel

from .conftest import as_a_user

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).parent / "workers" / "parallel_equivalence.py"

# Float tolerances, relative to each parameter array's largest entry. The mesh steps sum the
# same terms in another order; CT's SNR'(t) weights span five orders of magnitude, so its
# gradients carry the largest rounding (3-4e-4 measured), the others 1e-5 or less.
TOLERANCE = {"DT": 1e-4, "DT-low-calls": 1e-4, "FM": 1e-4, "BP": 1e-4, "CT": 2e-3}


def _env(**extra) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    env.pop("XLA_FLAGS", None)
    return env


def _run_worker(*cases: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(WORKER), *cases],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _check(results: dict) -> None:
    assert results, "the worker ran no case"
    for case, r in results.items():
        tol = TOLERANCE[case.split()[0]]
        # Parameters after 4 SGD steps, the gradients at step 5, the loss of step 5.
        assert r["params_4"] < tol, (case, r)
        assert r["gradients"] < tol, (case, r)
        assert r["loss_5"] < tol, (case, r)
        # Evaluation on the mesh: the same accuracy; labels = the single-device predictions
        # score exactly 1 (and those predictions are not all one class).
        assert r["accuracy"][0] == r["accuracy"][1], (case, r)
        assert r["agreement"] == 1.0 and r["classes_predicted"] >= 2, (case, r)
        if "blocks=1" not in case:
            assert r["block_sharding"] == "P('blocks',)", (case, r)


@pytest.mark.slow
def test_mesh_steps_equal_the_single_device_step():
    """DT on a 2-D mesh (data=4 x blocks=2): loss, gradients, a 5-step trajectory and the
    evaluation equal the single-device step's (`-m slow` runs every variant and mesh)."""
    _check(_run_worker("DT data=4,blocks=2"))


@pytest.mark.slow
def test_every_mesh_and_variant_equals_the_single_device_step():
    """DT: data=8, data=4 x blocks=2, blocks=5, blocks=10, data=2 x blocks=5; DT with one call
    per block ("low-calls"): data=4 x blocks=2, blocks=10; CT, FM and the backprop baseline:
    data=8 and data=5."""
    results = _run_worker("all")
    assert len(results) == 13
    _check(results)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _params(path: Path, like):
    model, _, epoch, _ = npx.load_checkpoint(path, like, None, key=jr.key(0))
    return epoch, [np.asarray(a) for a in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    """Two processes on this machine (a localhost coordinator, gloo collectives), two CPU
    devices each, mesh data=2 x blocks=2: the checkpoint process 0 writes equals the one a
    single-device run writes, and the epoch's loss and accuracy are the same."""
    common = [
        sys.executable, "-m", "noprop_eqx", "train", "--dataset", "digits", "--model", "simple",
        "--variants", "DT", "--epochs", "1", "--batch-size", "64", "--no-progress",
        "--inference-runs", "0",
    ]  # fmt: skip
    port = _free_port()
    hosts = [
        "--out", str(tmp_path / "mesh"), "--mesh", "data=2,blocks=2", "--cpu-devices", "2",
        "--coordinator", f"localhost:{port}", "--num-processes", "2",
    ]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*common, *hosts, "--process-id", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
            cwd=ROOT,
        )
        for i in range(2)
    ]
    single = subprocess.run(
        [*common, "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=600,
    )
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert single.returncode == 0, single.stderr[-2000:]
    assert "mesh data=2, blocks=2, 2 processes" in logs[0]
    like = npx.build_model(
        "DT", num_classes=10, image_shape=(1, 8, 8), backbone="simple", key=jr.key(0)
    )
    epoch_mesh, mesh_params = _params(tmp_path / "mesh" / "DT" / "checkpoint.eqx", like)
    epoch_one, one_params = _params(tmp_path / "one" / "DT" / "checkpoint.eqx", like)
    assert epoch_mesh == epoch_one == 1
    for a, b in zip(mesh_params, one_params, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * max(np.max(np.abs(b)), 1e-6))
    rows = [
        json.loads((tmp_path / run / "DT" / "metrics.jsonl").read_text().splitlines()[-1])
        for run in ("mesh", "one")
    ]
    assert rows[0]["test_accuracy"] == rows[1]["test_accuracy"]
    np.testing.assert_allclose(
        rows[0]["train_loss"]["loss"], rows[1]["train_loss"]["loss"], rtol=1e-5
    )
    config = json.loads((tmp_path / "mesh" / "DT" / "config.json").read_text())
    assert config["mesh"] == {"data": 2, "blocks": 2} and config["processes"] == 2


def test_parse_mesh_and_its_errors():
    assert parallel.parse_mesh("data=4,blocks=2") == {"data": 4, "blocks": 2}
    assert parallel.parse_mesh(" blocks=5 ") == {"data": 1, "blocks": 5}
    for bad, says in (
        ("data=4;blocks=2", "the form is 'data=4,blocks=2'"),
        ("rows=4", "axes data, blocks"),
        ("data=0", "positive size"),
        ("data=x", "positive size"),
        ("", "like 'data=4,blocks=2'"),
    ):
        with pytest.raises(parallel.MeshError, match=says):
            parallel.parse_mesh(bad)


def test_mesh_errors_say_what_fits():
    with as_a_user():
        with pytest.raises(parallel.MeshError, match=r"needs 64 devices, got 1 .*jax_num_cpu"):
            parallel.make_mesh(data=8, blocks=8)
        mesh = parallel.make_mesh()  # 1 x 1: every model, every step
        model = npx.NoPropDT(10, (1, 8, 8), num_blocks=3, backbone="simple", key=jr.key(0))
        shardings = parallel.model_shardings(model, mesh)
        assert all(s.spec == jax.sharding.PartitionSpec() for s in jax.tree.leaves(shardings))
        with pytest.raises(parallel.MeshError, match="blocks=1"):
            parallel.make_step(npx.NoPropFM.loss_fn, npx.paper_optimizer(model), _FakeMesh(1, 2))
        with pytest.raises(parallel.MeshError, match=r"T=3 blocks evenly; sizes that do: \[1, 3\]"):
            parallel.model_shardings(model, _FakeMesh(1, 2))
        fm = npx.NoPropFM(10, (1, 8, 8), backbone="simple", key=jr.key(0))
        with pytest.raises(parallel.MeshError, match="splits NoProp-DT's blocks, got a NoPropFM"):
            parallel.model_shardings(fm, _FakeMesh(1, 2))
        with pytest.raises(parallel.MeshError, match="divisible by the mesh's data=2, got 5"):
            parallel.shard_batch(np.zeros((5, 3)), _FakeMesh(2, 1))


class _FakeMesh:
    """Just the shape of a mesh: enough for the checks that run before any device is used."""

    def __init__(self, data, blocks):
        self.axis_names = parallel.AXES
        self.shape = {"data": data, "blocks": blocks}


@pytest.mark.slow
def test_one_device_mesh_step_is_the_plain_step():
    """On a 1 x 1 mesh (this process's one device) the DT step is the single-device one."""
    model = npx.NoPropDT(10, (1, 8, 8), num_blocks=2, backbone="simple", key=jr.key(0))
    optimizer = npx.paper_optimizer(model)
    x = np.asarray(jr.normal(jr.key(1), (8, 1, 8, 8)), np.float32)
    y = np.arange(8) % 10
    state = npx.init_optimizer_state(model, optimizer)
    copy = jax.tree.map(lambda a: a.copy() if eqx.is_array(a) else a, (model, state))
    plain, _, aux_plain = npx.make_dt_step(optimizer, memory="blockwise")(
        model, state, (x, y), jr.key(2)
    )
    mesh = parallel.make_mesh()
    m, s = parallel.place(*copy, mesh)
    meshed, _, aux_mesh = parallel.make_dt_step(optimizer, mesh)(m, s, (x, y), jr.key(2))
    np.testing.assert_allclose(aux_plain["loss"], aux_mesh["loss"], rtol=1e-6)
    for a, b in zip(
        jax.tree.leaves(eqx.filter(plain, eqx.is_inexact_array)),
        jax.tree.leaves(eqx.filter(meshed, eqx.is_inexact_array)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_a_run_resumes_on_another_mesh(tmp_path):
    """A run trained on data=2 x blocks=2, resumed on one device, then on blocks=5, ends where
    a run on one device throughout ends (constant learning rate: epochs may be added)."""
    common = [
        sys.executable, "-m", "noprop_eqx", "train", "--dataset", "digits", "--model", "simple",
        "--variants", "DT", "--batch-size", "64", "--no-progress", "--inference-runs", "0",
        "--resume",
    ]  # fmt: skip
    legs = [
        ["--epochs", "1", "--mesh", "data=2,blocks=2", "--cpu-devices", "4"],
        ["--epochs", "2"],
        ["--epochs", "3", "--mesh", "blocks=5", "--cpu-devices", "5"],
    ]
    for leg in legs:
        out = subprocess.run(
            [*common, "--out", str(tmp_path / "moved"), *leg],
            capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
    out = subprocess.run(
        [*common, "--out", str(tmp_path / "one"), "--epochs", "3"],
        capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    like = npx.build_model(
        "DT", num_classes=10, image_shape=(1, 8, 8), backbone="simple", key=jr.key(0)
    )
    epoch_moved, moved = _params(tmp_path / "moved" / "DT" / "checkpoint.eqx", like)
    epoch_one, one = _params(tmp_path / "one" / "DT" / "checkpoint.eqx", like)
    assert epoch_moved == epoch_one == 3
    for a, b in zip(moved, one, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * max(np.max(np.abs(b)), 1e-6))
