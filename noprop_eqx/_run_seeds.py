"""`noprop-eqx train --seeds 0 1 2`: the seeds' runs of one variant trained together, one
compiled step for all of them (`make_seeds_step`), each seed in its own run folder."""

from typing import TextIO

import numpy as np

from . import data as data_lib
from ._config import RunConfig
from ._loop import solver_kwargs, train_epoch_seeds
from ._machine import git_commit
from ._records import RunFileError, write_json
from ._run import (
    _Run,
    end_epoch,
    end_share,
    epoch_fits,
    final_record,
    run_augmentation,
    start_run,
)
from ._seeds import make_seeds_step, stack_trees, unstack_tree


def train_variant_seeds(
    variant: str,
    config: RunConfig,
    ds: data_lib.ImageDataset,
    *,
    command: str,
    log: TextIO,
    deadline: float | None = None,
) -> list[dict]:
    """Trains (or resumes) `variant` for every seed of `config.seeds` in one compiled step per
    batch; returns one results record per seed, each with the protocol statistic over all the
    seeds (`protocol_statistic`), also written to `OUT/<run name>-protocol.json`; no record
    when `deadline` (a `time.monotonic()` time) left no time for an epoch."""
    commit = git_commit()
    configs = [config.for_seed(seed) for seed in config.seeds]
    runs = [start_run(variant, c, ds, log) for c in configs]
    epochs = sorted({run.epoch for run in runs})
    if len(epochs) > 1:
        where = ", ".join(f"seed {c.seed}: {r.epoch}" for c, r in zip(configs, runs, strict=True))
        raise RunFileError(
            f"the seeds' runs of {variant} stopped after different epochs ({where})"
            ": resume the ones behind alone (--seed S --out OUT/seedS --resume --stop-after "
            f"{epochs[-1]}) first"
        )
    start = runs[0].epoch
    finished = _train_epochs(runs, configs, config, ds, log, deadline)
    who = f"{variant} x {len(runs)} seeds"
    if not end_share(who, start, runs[0].epoch, _joint_history(runs), finished, config, log):
        return []
    records = [
        final_record(run, c, ds, command=command, commit=commit, log=log)
        for run, c in zip(runs, configs, strict=True)
    ]
    protocol = protocol_statistic(records)
    for record, run in zip(records, runs, strict=True):
        record.update(protocol)
        write_json(run.run_dir / "summary.json", record)
    name = config.run_dir(variant).name
    write_json(config.out_dir / f"{name}-protocol.json", protocol)
    if protocol["protocol_stochastic_mean"] is not None:
        print(
            f"[{variant}] seeds {list(config.seeds)}: stochastic "
            f"{protocol['protocol_stochastic_mean']:.2%} ± {protocol['protocol_stochastic_se']:.2%}"
            f" (s.e. over {protocol['protocol_n']} runs), deterministic "
            f"{protocol['protocol_deterministic_mean']:.2%}",
            file=log,
            flush=True,
        )
    return records


def protocol_statistic(records: list[dict]) -> dict:
    """The paper's Table 1 statistic over the seeds' records: mean and standard error (std /
    √n, ddof=1) of every stochastic inference run of every seed (3 seeds x 5 runs = 15 values),
    and the same over the seeds' deterministic accuracies."""
    stochastic = [a for r in records for a in r.get("accuracy_stochastic_runs") or []]
    deterministic = [r["final_accuracy"] for r in records]

    def mean_se(values):
        if len(values) < 2:
            return (float(values[0]) if values else None), None
        return float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(len(values)))

    mean, se = mean_se(stochastic)
    det_mean, det_se = mean_se(deterministic)
    return dict(
        protocol_seeds=[r["seed"] for r in records],
        protocol_n=len(stochastic),
        protocol_stochastic_mean=mean,
        protocol_stochastic_se=se,
        protocol_deterministic_mean=det_mean,
        protocol_deterministic_se=det_se,
    )


def _train_epochs(
    runs: list[_Run], configs: list[RunConfig], config: RunConfig, ds, log, deadline=None
) -> bool:
    """`train_epochs` for the seeds' runs together: one `SeedsStep` call per batch. Returns
    False when the next epoch would end past `deadline`."""
    first = runs[0]
    if getattr(first.step, "fn", None) is None:
        raise RunFileError(f"[{first.variant}] this step cannot train several seeds in one call")
    step = make_seeds_step(first.step)
    predict_kwargs = solver_kwargs(first.variant, config.eval_solver, config.eval_steps)
    augment = run_augmentation(config, ds)
    count = len(runs)
    for epoch in range(first.epoch + 1, config.last_epoch + 1):
        if not epoch_fits(_joint_history(runs), deadline):
            return False
        models, states, stats = train_epoch_seeds(
            step,
            stack_trees([r.model for r in runs]),
            stack_trees([r.opt_state for r in runs]),
            ds.x_train,
            ds.y_train,
            batch_size=config.batch_size,
            keys=[r.key for r in runs],
            epoch=epoch,
            desc=f"[{first.variant} x {count} seeds] epoch {epoch}/{config.epochs}",
            stream=log,
            progress=config.progress,
            augment=augment,
        )
        for run, c, model, state, stat in zip(
            runs, configs, unstack_tree(models, count), unstack_tree(states, count), stats,
            strict=True,
        ):  # fmt: skip
            label = f"{run.variant}, seed {c.seed}"
            line = end_epoch(run, epoch, model, state, stat, ds, predict_kwargs, c, label)
            print(f"{line} | seed {c.seed} ({count} in one step)", file=log, flush=True)
    return True


def _joint_history(runs: list[_Run]) -> list[dict]:
    """The seeds' epochs as one run's: the shared training time and every seed's evaluation."""
    return [
        dict(epoch_time_s=rows[0]["epoch_time_s"], eval_time_s=sum(r["eval_time_s"] for r in rows))
        for rows in zip(*(run.history for run in runs), strict=True)
    ]
