"""Several seeds in one compiled step: each seed's trajectory is a separate run's."""

import json
import re

import equinox as eqx
import jax
import jax.random as jr
import numpy as np
import optax
import pytest

import noprop_eqx as npx
from noprop_eqx.__main__ import main
from noprop_eqx._loop import train_epoch_seeds
from noprop_eqx.data import load_digits

from .conftest import as_a_user

SHAPE = (1, 8, 8)


def _copy(tree):
    return jax.tree.map(lambda a: a.copy() if eqx.is_array(a) else a, tree)


def _params(model):
    return [np.asarray(a) for a in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))]


@pytest.mark.parametrize(
    ("cls", "form"),
    [
        (npx.NoPropDT, "loop"),
        (npx.NoPropFM, "loop"),
        (npx.NoPropFM, "vmap"),
        # vmap over DT's convolutions is slow to compile and run on XLA:CPU (not its form here).
        pytest.param(npx.NoPropDT, "vmap", marks=pytest.mark.slow),
    ],
)
def test_seeds_step_equals_separate_steps(cls, form):
    """Three models (own keys, own batches, own step keys), three AdamW steps: one seeds step
    per batch gives each model the parameters of its own three single steps."""
    data = load_digits()
    optimizer = optax.adamw(1e-3)
    extra = dict(num_blocks=2) if cls is npx.NoPropDT else {}
    models = [
        cls(10, SHAPE, backbone="simple", embedding="learned", embed_dim=6, key=k, **extra)
        for k in jr.split(jr.key(0), 3)
    ]
    single = (
        npx.make_dt_step(optimizer, memory="blockwise")
        if cls is npx.NoPropDT
        else npx.make_step(cls.loss_fn, optimizer)
    )

    def batch(seed, j):
        start = 32 * j + 7 * seed
        return data.x_train[start : start + 32], data.y_train[start : start + 32]

    separate = []
    for seed, model in enumerate(models):
        model, state = _copy(model), npx.init_optimizer_state(model, optimizer)
        for j in range(3):
            model, state, _ = single(model, state, batch(seed, j), jr.fold_in(jr.key(seed), j))
        separate.append(model)
    step = npx.make_seeds_step(single, form=form)
    stacked = npx.stack_trees([_copy(m) for m in models])
    states = npx.stack_trees([npx.init_optimizer_state(m, optimizer) for m in models])
    for j in range(3):
        batches = npx.stack_trees([batch(seed, j) for seed in range(3)])
        keys = jax.numpy.stack([jr.fold_in(jr.key(seed), j) for seed in range(3)])
        stacked, states, aux = step(stacked, states, batches, keys)
    assert aux["loss"].shape == (3,)
    for mine, theirs in zip(npx.unstack_tree(stacked, 3), separate, strict=True):
        for a, b in zip(_params(mine), _params(theirs), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The three seeds really differ (not one model copied three times).
    first, second = (_params(m)[-1] for m in separate[:2])
    assert not np.allclose(first, second)


def _run(tmp_path, *extra):
    argv = [
        "train", "--dataset", "digits", "--model", "simple", "--variants", "FM",
        "--epochs", "2", "--batch-size", "64", "--limit-train", "640", "--no-progress",
        "--inference-runs", "2", *extra,
    ]  # fmt: skip
    assert main(argv) == 0


def _metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_cli_seeds_equal_separate_runs_and_resume(tmp_path):
    """`--seeds 3 5`, stopped after epoch 1 and resumed, ends as two separate runs with
    `--seed 3` and `--seed 5` do: the same per-epoch losses and accuracies, the same
    stochastic runs; the protocol statistic is the mean ± s.e. of all four runs."""
    results = tmp_path / "seeds.json"
    _run(tmp_path, "--out", str(tmp_path / "together"), "--seeds", "3", "5", "--stop-after", "1")
    _run(
        tmp_path, "--out", str(tmp_path / "together"), "--seeds", "3", "5", "--resume",
        "--results", str(results),
    )  # fmt: skip
    records = json.loads(results.read_text())
    assert [r["seed"] for r in records] == [3, 5]
    runs = []
    for seed in (3, 5):
        _run(tmp_path, "--out", str(tmp_path / f"alone{seed}"), "--seed", str(seed))
        alone = _metrics(tmp_path / f"alone{seed}" / "FM" / "metrics.jsonl")
        together = _metrics(tmp_path / "together" / f"seed{seed}" / "FM" / "metrics.jsonl")
        assert [m["epoch"] for m in together] == [1, 2]
        for a, b in zip(alone, together, strict=True):
            assert a["test_accuracy"] == b["test_accuracy"]
            assert a["train_loss"]["loss"] == pytest.approx(b["train_loss"]["loss"], rel=1e-5)
        summary = json.loads((tmp_path / f"alone{seed}" / "FM" / "summary.json").read_text())
        record = next(r for r in records if r["seed"] == seed)
        assert record["accuracy_stochastic_runs"] == summary["accuracy_stochastic_runs"]
        runs += summary["accuracy_stochastic_runs"]
    protocol = json.loads((tmp_path / "together" / "FM-protocol.json").read_text())
    assert protocol["protocol_n"] == 4 and protocol["protocol_seeds"] == [3, 5]
    assert protocol["protocol_stochastic_mean"] == pytest.approx(np.mean(runs))
    assert protocol["protocol_stochastic_se"] == pytest.approx(np.std(runs, ddof=1) / 2)
    assert records[0]["protocol_stochastic_mean"] == protocol["protocol_stochastic_mean"]


def test_seed_options_errors():
    with as_a_user():
        for seeds, says in (
            ((), "non-empty list"),
            ((1, 1), "without repeats"),
            (("a",), "integers"),
        ):
            with pytest.raises(npx.ConfigError, match=says):
                npx.RunConfig(seeds=seeds)
        with pytest.raises(npx.ConfigError, match="expected no --mesh"):
            npx.RunConfig(seeds=(0, 1), mesh="data=2")
        with pytest.raises(ValueError, match="expected form"):
            npx.make_seeds_step(lambda m, s, b, k: (m, s, {}), form="pmap")
        low = npx.make_dt_step(optax.adam(1e-3), memory="low-calls")
        with pytest.raises(TypeError, match="cannot run for several seeds"):
            npx.make_seeds_step(low)


def test_seeds_progress_bar_names_both_rates(tmp_path):
    """The progress bar of a seeds epoch, written to a log file, shows the step's images per
    second over all seeds and one seed's share of it, the figure the epoch lines and records
    give."""
    data = load_digits()
    optimizer = optax.adam(1e-3)
    models = [npx.NoPropFM(10, SHAPE, backbone="simple", key=k) for k in jr.split(jr.key(0), 2)]
    step = npx.make_seeds_step(npx.make_step(npx.NoPropFM.loss_fn, optimizer), form="loop")
    log = tmp_path / "train.log"
    with log.open("w") as stream:
        _, _, stats = train_epoch_seeds(
            step,
            npx.stack_trees(models),
            npx.stack_trees([npx.init_optimizer_state(m, optimizer) for m in models]),
            data.x_train[:128],
            data.y_train[:128],
            batch_size=32,
            keys=[jr.key(0), jr.key(1)],
            epoch=1,
            stream=stream,
        )
    last = log.read_text().splitlines()[-1]
    found = re.search(r"img/s (\d+) \((\d+) a seed\)", last)
    assert found, last
    total, share = int(found[1]), int(found[2])
    assert total > 0 and abs(total - 2 * share) <= 1
    assert [s["seeds_in_step"] for s in stats] == [2, 2]
