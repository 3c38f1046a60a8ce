"""`train(config)`: a whole training run (every variant of a `RunConfig`), with its run folders,
checkpoints, `--resume`, per-epoch records, final read-outs and curves. The `noprop-eqx train`
command line is a thin layer over it.

Each variant writes to `out/<variant>[-<embedding>]`: `config.json` (the settings; what a resume
must match), `metrics.jsonl` (one line per epoch), `checkpoint.eqx` (model, optimiser state,
epoch, key; rewritten after every epoch) and `summary.json` (the results record). All of them
are written atomically. A resumed run reproduces the uninterrupted one bit for bit.
"""

import dataclasses
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from . import data as data_lib
from ._batch_norm import has_batch_norm, recalibrate_batch_norm
from ._checkpoint import load_checkpoint, model_from_config, save_checkpoint
from ._config import ConfigError, RunConfig, settings_differ
from ._dt import NoPropDT
from ._dt_step import make_dt_step
from ._embeddings import is_fixed_embedding
from ._loop import (
    inference_key,
    resolve_embed_dim,
    run_keys,
    solver_kwargs,
    stochastic_accuracy,
    train_epoch,
)
from ._machine import device_name, git_commit
from ._plots import plot_curves
from ._records import (
    RunFileError,
    append_result,
    check_results_file,
    portable_path,
    read_json,
    read_metrics,
    scrub_paths,
    write_json,
    write_metrics,
)
from ._solve import evaluations_per_step
from ._train import (
    evaluate_accuracy,
    has_fixed_schedule,
    init_optimizer_state,
    make_step,
    paper_optimizer,
)

CHECKPOINT = "checkpoint.eqx"


class TrainingDiverged(RuntimeError):
    """A training epoch gave a non-finite loss or parameters; the last good checkpoint is kept."""


def train(
    config: RunConfig, *, command: str | None = None, log: TextIO | None = None
) -> list[dict]:
    """Trains (or, with `config.resume`, continues) every variant of `config`; returns one
    results record per variant (also written to each run folder's `summary.json`, and appended
    to `config.results` when set).

    Everything that can be checked before training is checked first: the output folder, the
    results file, and on resume the saved settings, before any data is read or model built.

    **Raises:** `ConfigError`, `RunFileError`, `DatasetNotFoundError`, `DataIntegrityError`
    with a message naming what to change; `TrainingDiverged` when a loss or parameter becomes
    non-finite (the last good checkpoint is kept).
    """
    log = sys.stderr if log is None else log
    command = command if command is not None else f"noprop_eqx.train({config!r})"
    check_outputs(config)
    mesh = start_devices(config)
    ds = load_data(config)
    where = device_name() if mesh is None else f"{device_name()}, {_mesh_text(mesh)}"
    print(f"{ds} on {where}", file=log, flush=True)
    records = []
    deadline = None if config.time_budget is None else time.monotonic() + config.time_budget
    for variant in config.variants:
        if deadline is not None and time.monotonic() >= deadline:
            print(
                f"[{variant}] not started: the --time-budget is spent; run the same command "
                "with --resume to train it",
                file=log,
                flush=True,
            )
            continue
        if config.seeds is None:
            done = train_variant(
                variant, config, ds, command=command, log=log, mesh=mesh, deadline=deadline
            )
        else:
            from ._run_seeds import train_variant_seeds

            done = train_variant_seeds(
                variant, config, ds, command=command, log=log, deadline=deadline
            )
        for record in done:
            if config.results is not None and _writes():
                append_result(config.results, record)
        if _writes():
            for seed in [None] if config.seeds is None else config.seeds:
                plot_curves(config.out_dir if seed is None else config.for_seed(seed).out_dir)
        records.extend(done)
    return records


def _writes() -> bool:
    """Whether this process writes the run's files: the only one, or process 0 of several."""
    return jax.process_index() == 0


def _mesh_text(mesh) -> str:
    text = f"mesh data={mesh.shape['data']}, blocks={mesh.shape['blocks']}"
    if jax.process_count() > 1:
        text += f", {jax.process_count()} processes"
    return text


def start_devices(config: RunConfig):
    """The run's device mesh (None without `config.mesh`): splits the CPU into
    `config.cpu_devices` devices and joins the other processes first when asked."""
    if config.mesh is None:
        if config.cpu_devices is not None:
            _set_cpu_devices(config.cpu_devices)
        return None
    from . import parallel

    if config.cpu_devices is not None:
        _set_cpu_devices(config.cpu_devices)
    several = (config.coordinator, config.num_processes, config.process_id) != (None,) * 3
    if (several or os.environ.get("JAX_COORDINATOR_ADDRESS")) and not _distributed_started():
        parallel.initialize(config.coordinator, config.num_processes, config.process_id)
    try:
        return parallel.make_mesh(**config.mesh_sizes)
    except parallel.MeshError as e:
        raise ConfigError(f"mesh: {e}") from None


def _distributed_started() -> bool:
    from jax._src import distributed

    return distributed.global_state.client is not None


def _set_cpu_devices(count: int) -> None:
    if jax.config.jax_num_cpu_devices == count:
        return
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError as e:
        raise ConfigError(
            f"cpu_devices: JAX's devices are already set up in this process ({e}); set "
            "cpu_devices in a fresh process, before any JAX computation"
        ) from None


def check_outputs(config: RunConfig) -> None:
    """The output folder can be written, the results file appended to, and each variant's run
    folder is new, or (with `resume`) holds a run with the same settings."""
    out = config.out_dir
    if out.exists() and not out.is_dir():
        raise ConfigError(f"expected out to be a folder, got the file {out}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".noprop-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to the output folder {out} ({e.strerror})") from None
    if config.results is not None:
        check_results_file(config.results)
    for variant in config.variants:
        for each in [config] if config.seeds is None else map(config.for_seed, config.seeds):
            check_run_folder(variant, each)


def check_run_folder(variant: str, config: RunConfig) -> None:
    run_dir = config.run_dir(variant)
    if not (run_dir / CHECKPOINT).is_file():
        return
    if not config.resume:
        raise RunFileError(
            f"{run_dir / CHECKPOINT} exists; pass --resume to continue it or choose another --out"
        )
    saved = read_json(run_dir / "config.json", "the run's settings file")
    if not isinstance(saved, dict):
        raise RunFileError(f"expected {run_dir / 'config.json'} to hold a JSON object")
    now = config.trajectory(variant)
    keys = ("epochs",) if config.lr_schedule == "cosine" else ()  # its length is the schedule's
    _refuse_changes(run_dir, settings_differ(saved, now) | settings_differ(saved, now, keys))


def _refuse_changes(run_dir: Path, diff: dict) -> None:
    if diff:
        raise RunFileError(
            f"cannot resume {run_dir}: settings differ from the saved run (saved, now): "
            + ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in diff.items())
        )


def read_dataset(
    dataset: str,
    data_dir: str | None,
    *,
    verify_md5: bool = True,
    cifar100_labels: str | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    subset_seed: int | None = None,
) -> data_lib.ImageDataset:
    """A dataset as a run reads it (with its seeded, stratified subsets when limited; a
    `subset_seed` of None keeps the first rows, as runs made before seeded subsets did),
    checked finite."""
    extra = dict(labels=cifar100_labels or "fine") if dataset == "cifar100" else {}
    ds = data_lib.load_dataset(dataset, data_dir, verify_md5=verify_md5, **extra)
    if limit_train is not None or limit_test is not None:
        try:
            ds = ds.subset(limit_train, limit_test, seed=subset_seed)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    for split, x in (("train", ds.x_train), ("test", ds.x_test)):
        if not np.isfinite(x).all():
            bad = int(np.sum(~np.isfinite(x).reshape(len(x), -1).all(axis=1)))
            raise RunFileError(f"{ds.name}: {bad} {split} images hold NaN or inf values")
    return ds


def load_data(config: RunConfig) -> data_lib.ImageDataset:
    """The run's dataset (`read_dataset` with the run's settings), checked against them."""
    ds = read_dataset(
        config.dataset,
        config.data_dir,
        verify_md5=config.verify_md5,
        cifar100_labels=config.cifar100_labels,
        limit_train=config.limit_train,
        limit_test=config.limit_test,
        subset_seed=config.subset_seed,
    )
    try:  # option combinations that depend on the data
        resolve_embed_dim(config.embedding, config.embed_dim, ds.num_classes, ds.image_shape)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return ds


@dataclasses.dataclass
class _Run:
    """One variant's run in progress: where it lives, its settings and its training state."""

    variant: str
    run_dir: Path
    settings: dict
    model: Any
    opt_state: Any
    step: Any
    key: Any
    history: list
    epoch: int = 0  # the last completed (checkpointed) epoch
    mesh: Any = None  # a `parallel.make_mesh` mesh, or None for one device


def train_variant(
    variant: str,
    config: RunConfig,
    ds: data_lib.ImageDataset,
    *,
    command: str,
    log: TextIO,
    mesh: Any = None,
    deadline: float | None = None,
) -> list[dict]:
    """Trains (or resumes) one variant; returns its results record, or no record when
    `deadline` (a `time.monotonic()` time) left no time for an epoch."""
    commit = git_commit()  # the code that trains: read now, not after a long run
    run = start_run(variant, config, ds, log, mesh=mesh)
    start = run.epoch
    finished = train_epochs(run, config, ds, log, deadline)
    if not end_share(variant, start, run.epoch, run.history, finished, config, log):
        return []
    record = final_record(run, config, ds, command=command, commit=commit, log=log)
    if _writes():
        write_json(run.run_dir / "summary.json", record)
    return [record]


def end_share(
    who: str, start: int, epoch: int, history: list, finished: bool, config: RunConfig, log
) -> bool:
    """Says why a share that trained from epoch `start` to `epoch` ended before the run's last
    epoch, and how to continue; False when the time budget left room for no epoch (then the
    share records nothing). `finished`: whether `train_epochs` reached the share's end."""
    if not finished and epoch == start:
        print(
            f"[{who}] no epoch trained: the next (~{format_duration(epoch_estimate(history))}) "
            "would end past the --time-budget; run the same command with --resume to continue",
            file=log,
            flush=True,
        )
        return False
    if epoch < config.epochs:
        if finished:
            why, how = "--stop-after", "with --resume and without --stop-after"
        else:
            why, how = "--time-budget", "with --resume"
        print(
            f"[{who}] stopped after epoch {epoch} of {config.epochs} ({why}): run the same "
            f"command {how} to continue",
            file=log,
            flush=True,
        )
    return True


def epoch_estimate(history: list) -> float:
    """An epoch's wall time (training and evaluation), the mean of the last three epochs."""
    recent = [r["epoch_time_s"] + r["eval_time_s"] for r in history[-3:]]
    return sum(recent) / len(recent)


def epoch_fits(history: list, deadline: float | None) -> bool:
    """Whether another epoch ends before `deadline` (a `time.monotonic()` time), judging by
    the last three epochs; a run's first epoch always starts."""
    if deadline is None or not history:
        return True
    return time.monotonic() + epoch_estimate(history) <= deadline


def start_run(
    variant: str, config: RunConfig, ds: data_lib.ImageDataset, log: TextIO, *, mesh: Any = None
) -> _Run:
    """Builds the model, its optimiser and compiled step, and restores the checkpoint on resume;
    on a mesh, places the model and optimiser state on it."""
    run_dir = config.run_dir(variant)
    embed_dim = resolve_embed_dim(
        config.embedding, config.embed_dim, ds.num_classes, ds.image_shape
    )
    settings = config.trajectory(variant) | dict(
        embed_dim=embed_dim,
        eval_solver=config.eval_solver,
        eval_steps=config.eval_steps,
        num_classes=ds.num_classes,
        image_shape=list(ds.image_shape),
    )
    k_model, k_train = run_keys(config.seed, variant)
    model = model_from_config(settings, ds, key=k_model)
    decay_steps = None
    if config.lr_schedule == "cosine":
        batches = data_lib.num_train_batches(len(ds.y_train), config.batch_size)
        settings["lr_decay_steps"] = decay_steps = config.epochs * batches
    optimizer, step = optimizer_and_step(
        model, config.lr, config.weight_decay, decay_steps, config.compute_dtype
    )
    settings["optimizer"] = {
        "decoupled": "adamw",
        "l2": "adam + l2 weight decay",
        "none": "adam",
    }[settings["weight_decay_mode"]]
    run = _Run(
        variant, run_dir, settings, model, init_optimizer_state(model, optimizer), step, k_train, []
    )
    if config.resume and (run_dir / CHECKPOINT).is_file():
        _restore(run, log)
    if mesh is not None:
        _place_on_mesh(run, optimizer, mesh, config.compute_dtype)
    if _writes():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", settings)
        write_metrics(run_dir / "metrics.jsonl", run.history)
    return run


def _place_on_mesh(run: _Run, optimizer, mesh, compute_dtype: str) -> None:
    """The run's model and optimiser state on `mesh`, its step the mesh's (`parallel`), and the
    mesh in its settings (not pinned: a run may resume on another mesh)."""
    from . import parallel

    dtype = None if compute_dtype == "float32" else jnp.dtype(compute_dtype)
    run.model, run.opt_state = parallel.place(run.model, run.opt_state, mesh)
    if isinstance(run.model, NoPropDT):
        run.step = parallel.make_dt_step(optimizer, mesh, compute_dtype=dtype)
    else:
        run.step = parallel.make_step(type(run.model).loss_fn, optimizer, mesh, compute_dtype=dtype)
    run.mesh = mesh
    run.settings["mesh"] = dict(mesh.shape)
    run.settings["processes"] = jax.process_count()


def _evaluate(run: _Run, x, y, **kwargs) -> float:
    """`evaluate_accuracy`, on the run's mesh if it has one."""
    if run.mesh is None:
        return evaluate_accuracy(run.model, x, y, **kwargs)
    from . import parallel

    return parallel.evaluate_accuracy(run.model, x, y, run.mesh, **kwargs)


def _restore(run: _Run, log: TextIO) -> None:
    """Fills `run` from its checkpoint (the settings were compared before the data was read;
    the ones that depend on the data are compared here)."""
    saved = read_json(run.run_dir / "config.json", "the run's settings file")
    _refuse_changes(run.run_dir, settings_differ(saved, run.settings))
    path = run.run_dir / CHECKPOINT
    try:
        model, opt_state, epoch, saved_key = load_checkpoint(
            path, run.model, run.opt_state, key=run.key
        )
    except (ValueError, OSError, EOFError) as e:
        cause = e.__cause__ or e
        raise RunFileError(
            f"cannot read the checkpoint {path} ({type(cause).__name__}: {str(cause)[:200]}). "
            "The run's settings match this command, so the file itself is damaged (cut short "
            "or overwritten): restore it from a copy, or move the run folder away to start again"
        ) from None
    if not bool(jnp.all(jr.key_data(saved_key) == jr.key_data(run.key))):
        raise RunFileError(
            f"the key saved in {path} is not this run's (seed {run.settings['seed']})"
        )
    # Lines after the checkpointed epoch belong to an epoch that will be re-run.
    history = read_metrics(run.run_dir / "metrics.jsonl")
    run.model, run.opt_state, run.epoch = model, opt_state, epoch
    run.history = [m for m in history if m["epoch"] <= epoch]
    print(f"[{run.variant}] resuming {run.run_dir} after epoch {epoch}", file=log, flush=True)


_STEPS: dict = {}


def optimizer_and_step(
    model, lr: float, weight_decay: float, decay_steps: int | None, compute_dtype: str = "float32"
):
    """The paper optimiser and its compiled step, made once per (model class, fixed embedding or
    not, fixed CT schedule or not, BatchNorm or not, lr, weight decay, cosine decay steps or
    None for a constant rate, compute dtype) in this process, so that repeated runs in one
    process (tests, resumes) reuse compilations. Both are pure functions of those values."""
    fixed = is_fixed_embedding(getattr(model, "embedding", None))
    cache_key = (
        type(model),
        fixed,
        has_fixed_schedule(model),
        has_batch_norm(model),
        lr,
        weight_decay,
        decay_steps,
        compute_dtype,
    )
    if cache_key not in _STEPS:
        learning_rate = lr if decay_steps is None else optax.cosine_decay_schedule(lr, decay_steps)
        optimizer = paper_optimizer(model, learning_rate=learning_rate, weight_decay=weight_decay)
        dtype = None if compute_dtype == "float32" else jnp.dtype(compute_dtype)
        if isinstance(model, NoPropDT):  # the fastest DT step measured on this backend
            step = make_dt_step(optimizer, memory="auto", compute_dtype=dtype)
        else:
            step = make_step(type(model).loss_fn, optimizer, compute_dtype=dtype)
        _STEPS[cache_key] = (optimizer, step)
    return _STEPS[cache_key]


def _all_finite(tree) -> bool:
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    return bool(jnp.all(jnp.asarray([jnp.all(jnp.isfinite(a)) for a in leaves])))


def train_epochs(
    run: _Run,
    config: RunConfig,
    ds: data_lib.ImageDataset,
    log: TextIO,
    deadline: float | None = None,
) -> bool:
    """The epochs from the checkpoint's to `stop_after` (or `epochs`): train, evaluate, check
    for divergence, checkpoint, record. Returns False when it stopped before them because the
    next epoch would end past `deadline` (a `time.monotonic()` time)."""
    predict_kwargs = solver_kwargs(run.variant, config.eval_solver, config.eval_steps)
    augment = run_augmentation(config, ds)
    for epoch in range(run.epoch + 1, config.last_epoch + 1):
        if not epoch_fits(run.history, deadline):
            return False
        model, opt_state, stats = train_epoch(
            run.step, run.model, run.opt_state, ds.x_train, ds.y_train,
            batch_size=config.batch_size, key=run.key, epoch=epoch,
            desc=f"[{run.variant}] epoch {epoch}/{config.epochs}", stream=log,
            progress=config.progress, steps_per_call=config.steps_per_call, augment=augment,
        )  # fmt: skip
        line = end_epoch(run, epoch, model, opt_state, stats, ds, predict_kwargs, config)
        print(line, file=log, flush=True)
    if not run.history:
        raise RunFileError(f"{run.run_dir} has no completed epoch")
    return True


def run_augmentation(config: RunConfig, ds: data_lib.ImageDataset):
    """The run's `augment(images, *, key)`, or None without `augment_shift`."""
    if config.augment_shift == 0:
        return None
    return functools.partial(
        data_lib.random_shift, max_shift=config.augment_shift, fill=ds.background
    )


_RECALIBRATION_STREAM = 0x424E  # keys the BatchNorm recalibration images apart from the rest


def end_epoch(
    run: _Run,
    epoch: int,
    model,
    opt_state,
    stats: dict,
    ds,
    predict_kwargs: dict,
    config,
    label: str | None = None,
) -> str:
    """After a training epoch: refuse a diverged model (the last checkpoint stays), evaluate,
    checkpoint, record the metrics; returns the epoch's log line. `label` names the run in the
    divergence message (default: the variant)."""
    loss = stats["loss_terms"]["loss"]
    if not (np.isfinite(loss) and _all_finite(model)):
        who = run.variant if label is None else label
        raise TrainingDiverged(
            f"[{who}] epoch {epoch}: the training loss is {loss} or a parameter is not finite; "
            f"stopped without saving it. The checkpoint of epoch {epoch - 1} is kept in "
            f"{run.run_dir}: lower --lr, check the data, or resume from it"
        )
    tic = time.perf_counter()
    if has_batch_norm(model):  # population statistics for evaluation and the checkpoint
        key = jr.fold_in(jr.fold_in(run.key, _RECALIBRATION_STREAM), epoch)
        model = recalibrate_batch_norm(model, ds.x_train, batch_size=config.batch_size, key=key)
    run.model, run.opt_state = model, opt_state
    accuracy = _evaluate(run, ds.x_test, ds.y_test, **predict_kwargs)
    eval_time = time.perf_counter() - tic
    run.epoch = epoch
    _save(run)
    run.history.append(_epoch_row(run.history, epoch, stats, accuracy, eval_time))
    if _writes():
        write_metrics(run.run_dir / "metrics.jsonl", run.history)
    return _epoch_line(run.variant, config.epochs, run.history, stats, last=config.last_epoch)


def _save(run: _Run) -> None:
    """The checkpoint of `run`, written by one process (gathered from every device first)."""
    model, opt_state = run.model, run.opt_state
    if run.mesh is not None:
        from . import parallel

        model, opt_state = parallel.gather((model, opt_state))
    if _writes():
        save_checkpoint(run.run_dir / CHECKPOINT, model, opt_state, epoch=run.epoch, key=run.key)


def _epoch_row(history: list, epoch: int, stats: dict, accuracy: float, eval_time: float) -> dict:
    train_time = (history[-1]["train_time_s"] if history else 0.0) + stats["time"]
    wall_time = (history[-1]["wall_time_s"] if history else 0.0) + stats["time"] + eval_time
    return dict(
        epoch=epoch,
        train_loss=stats["loss_terms"],
        test_accuracy=accuracy,
        epoch_time_s=stats["time"],
        first_step_s=stats["first_step_time"],
        eval_time_s=eval_time,
        train_time_s=train_time,
        wall_time_s=wall_time,
        images_per_s=stats["images_per_s"],
    )


def _epoch_line(variant: str, epochs: int, history: list, stats: dict, *, last: int) -> str:
    """The log line of `history[-1]`, with the time left until epoch `last` estimated from the
    mean wall time (training and evaluation) of the last three epochs."""
    row = history[-1]
    terms = " ".join(f"{k} {v:.4f}" for k, v in stats["loss_terms"].items() if isinstance(v, float))
    line = (
        f"[{variant}] epoch {row['epoch']:3d}/{epochs} | {terms} "
        f"| test acc {row['test_accuracy']:.2%} | {row['epoch_time_s']:.1f}s train + "
        f"{row['eval_time_s']:.1f}s eval | {row['images_per_s']:.0f} img/s"
    )
    remaining = last - row["epoch"]
    if remaining > 0:
        line += f" | ~{format_duration(remaining * epoch_estimate(history))} left"
    return line


def format_duration(seconds: float) -> str:
    """`seconds` as "42s", "7m05s" or "3h20m"."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def final_record(
    run: _Run, config: RunConfig, ds: data_lib.ImageDataset, *, command: str, commit, log: TextIO
) -> dict:
    """The results record: settings, times, accuracies (deterministic and, for the NoProp
    variants, the paper's stochastic read-out over `inference_runs` runs), device, command."""
    history, variant = run.history, run.variant
    s = run.settings
    record = dict(
        variant=variant,
        embedding=config.embedding,
        embed_dim=s["embed_dim"],
        prototype_scale=s["prototype_scale"],
        fixed_embedding=config.fixed_embedding,
        augment_shift=config.augment_shift,
        num_blocks=config.num_blocks if variant in ("DT", "BP") else None,
        model=s["model"],
        dataset=config.dataset,
        data_name=ds.name,
        epochs=history[-1]["epoch"],
        planned_epochs=config.epochs,
        seed=config.seed,
        batch_size=config.batch_size,
        lr=config.lr,
        lr_schedule=config.lr_schedule,
        weight_decay=config.weight_decay,
        optimizer=s["optimizer"],
        ct_gamma_init=s.get("ct_gamma_init"),
        ct_fixed_schedule=s.get("ct_fixed_schedule"),
        ct_weighting=s.get("ct_weighting"),
        fm_z_input=s.get("fm_z_input"),
        dt_alpha_bar_max=s.get("dt_alpha_bar_max"),
        compute_dtype=config.compute_dtype,
        limit_train=config.limit_train,
        limit_test=config.limit_test,
        subset_seed=s["subset_seed"],
        train_size=len(ds.y_train),
        test_size=len(ds.y_test),
        device=device_name(),
        train_time_s=history[-1]["train_time_s"],
        wall_time_s=history[-1]["wall_time_s"],
        final_accuracy=history[-1]["test_accuracy"],
        best_accuracy=max(m["test_accuracy"] for m in history),
        best_epoch=max(history, key=lambda m: m["test_accuracy"])["epoch"],
        inference_solver=None,
        nfe=None,
        run_dir=portable_path(run.run_dir),
        command=scrub_paths(command),
        commit=commit,
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    record.update(_read_outs(run, config, ds, log))
    return record


def _read_outs(run: _Run, config: RunConfig, ds: data_lib.ImageDataset, log: TextIO) -> dict:
    variant, model = run.variant, run.model
    x_test, y_test = ds.x_test, ds.y_test
    predict_kwargs = solver_kwargs(variant, config.eval_solver, config.eval_steps)
    out: dict = {}
    if variant in ("DT", "CT", "FM"):
        out["accuracy_deterministic"] = run.history[-1]["test_accuracy"]
    if variant == "DT":
        # The same deterministic chain, read out from the T blocks' averaged class probabilities.
        out["accuracy_blocks"] = _evaluate(run, x_test, y_test, readout="blocks")
        print(
            f"[{variant}] final: block average {out['accuracy_blocks']:.2%} (the readout of "
            f"z_T is test acc above)",
            file=log,
            flush=True,
        )
    if variant in ("DT", "CT", "FM") and config.inference_runs > 0:
        # The paper's read-out: DT's Eq. 3 with noise from z_0 ~ N(0, I); CT/FM's ODE from
        # z_0 ~ N(0, I) (the deterministic read-outs above start from z_0 = 0).
        tic = time.perf_counter()
        k_infer = inference_key(config.seed)
        runs = config.inference_runs
        stoch = stochastic_accuracy(
            model,
            x_test,
            y_test,
            key=k_infer,
            runs=runs,
            evaluate=functools.partial(_evaluate, run),
            **predict_kwargs,
        )
        out.update(
            accuracy_stochastic_mean=stoch["mean"],
            accuracy_stochastic_se=stoch["se"],
            accuracy_stochastic_runs=stoch["runs"],
        )
        print(
            f"[{variant}] final: deterministic {out['accuracy_deterministic']:.2%}, stochastic "
            f"{stoch['mean']:.2%} ± {stoch['se']:.2%} (s.e., {runs} runs, "
            f"{time.perf_counter() - tic:.1f}s)",
            file=log,
            flush=True,
        )
    if variant in ("CT", "FM"):
        out.update(solver_record(model, variant, config.eval_solver, config.eval_steps, x_test))
    return out


def solver_record(model, variant: str, solver: str, steps: int, x: np.ndarray) -> dict:
    """A CT/FM record's inference solver, its steps and the network evaluations (NFE) of one
    solve: for an adaptive solver, those of a batch of up to 1,000 of the images `x`."""
    predict_kwargs = solver_kwargs(variant, solver, steps)
    if solver == "tsit5":  # adaptive: the NFE of a full evaluation batch
        nfe = model.solve(x[: min(len(x), 1000)], **predict_kwargs).nfe
    elif solver == "recurrence":  # one network evaluation a step
        nfe = steps
    else:  # fixed step: the same for any batch, no need to solve again
        per_step, initial = evaluations_per_step(predict_kwargs["solver"])
        nfe = steps * per_step + initial
    return dict(
        inference_solver=solver,
        eval_steps=None if solver == "tsit5" else steps,
        nfe=int(nfe),
    )
