"""`noprop-eqx evaluate`: the read-outs of trained runs, measured again from their checkpoints.

Each RUN is a run folder of `noprop-eqx train` (it holds `config.json` and `checkpoint.eqx`) or
any folder above run folders, such as the `--out` of a `--seeds 0 1 2` run. For each run the
latest checkpoint is restored and its test set read (`--data-dir`, as for training), and the
read-outs are measured: the deterministic one (DT: Eq. 3 with z_0 = 0 and no noise; CT/FM: the
ODE from z_0 = 0), DT's block average, and the paper's stochastic one (DT: Eq. 3 with noise;
CT/FM: the ODE from z_0 ~ N(0, I)) over `--inference-runs` runs. Runs whose settings differ only
in the seed, at the same epoch, are pooled into the paper's Table 1 statistic: the mean ± s.e.
of every stochastic run of every seed.

By default each run is read out with its own solver and the stochastic key its training's final
read-out used, so a finished run's figures are the ones its training recorded; `--eval-solver`,
`--eval-steps` and `--inference-seed` change them. A run still training can be evaluated: the
checkpoint is replaced whole after each epoch, never half-written.
"""

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from . import data as data_lib
from ._checkpoint import load_run
from ._config import SEED_RANGE, ConfigError, is_seed, saved_defaults
from ._loop import inference_key, solver_kwargs, stochastic_accuracy
from ._machine import device_name, git_commit
from ._records import RunFileError, portable_path, read_json, read_metrics
from ._run import read_dataset, solver_record
from ._run_seeds import protocol_statistic
from ._train import evaluate_accuracy

NOPROP_VARIANTS = ("DT", "CT", "FM")


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """The run folders named by `paths`: each path itself when it holds a `config.json`,
    else every folder below it that does (sorted); a path that names none is a
    `RunFileError`."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / "config.json").is_file():
            below = [path]
        elif path.is_dir():
            below = sorted(c.parent for c in path.rglob("config.json"))
            if not below:
                raise RunFileError(
                    f"{path} holds no run folder (a folder with config.json and checkpoint.eqx, "
                    "as `noprop-eqx train --out` writes one per variant), nor does any folder "
                    "below it"
                )
        else:
            raise RunFileError(f"{path} does not exist: expected a run folder of noprop-eqx train")
        found += [p for p in below if p not in found]
    return found


def _data_key(config: dict) -> tuple:
    return tuple(
        config.get(k)
        for k in ("dataset", "limit_train", "limit_test", "subset_seed", "cifar100_labels")
    )


def _run_dataset(
    config: dict, run_dir: Path, data_dir: str | None, verify_md5: bool, cache: dict
) -> data_lib.ImageDataset:
    """The dataset `config` (a run's `config.json`) trained on, its subsets included; read once
    for every run that shares it."""
    key = _data_key(config)
    if key not in cache:
        dataset, limit_train, limit_test, subset_seed, labels = key
        cache[key] = read_dataset(
            dataset,
            data_dir,
            verify_md5=verify_md5,
            cifar100_labels=labels,
            limit_train=limit_train,
            limit_test=limit_test,
            subset_seed=subset_seed,
        )
    ds = cache[key]
    shape = list(ds.image_shape)
    if (ds.num_classes, shape) != (config["num_classes"], list(config["image_shape"])):
        raise RunFileError(
            f"{run_dir} trained on {config['num_classes']} classes of "
            f"{tuple(config['image_shape'])} images, but the {config['dataset']} data read now "
            f"has {ds.num_classes} classes of {tuple(shape)} images: point --data-dir at the "
            "data the run trained on"
        )
    return ds


def evaluate_run(
    run_dir: str | Path,
    dataset: data_lib.ImageDataset,
    *,
    inference_runs: int = 5,
    eval_solver: str | None = None,
    eval_steps: int | None = None,
    inference_seed: int | None = None,
) -> dict:
    """The read-outs of one run folder's latest checkpoint on `dataset`'s test set.

    **Arguments:** `dataset` is the data the run trained on (after any `limit_train`);
    `eval_solver`/`eval_steps` default to the run's own (CT/FM); the stochastic read-out's key
    is `inference_key(inference_seed)`, by default with the run's seed, as its training used.

    **Returns:** a record: `variant`, `seed`, `epoch` (of the checkpoint), `final_accuracy`
    (the deterministic read-out), `recorded_accuracy` (what training logged for that epoch,
    None if no line), DT's `accuracy_blocks`, the stochastic `accuracy_stochastic_mean`, `_se`
    and `_runs` (NoProp variants, `inference_runs` > 0) and, for CT/FM, the solver and NFE.
    """
    run_dir = Path(run_dir)
    tic = time.perf_counter()
    try:
        model, _, epoch, _, config = load_run(run_dir, dataset)
    except (FileNotFoundError, ValueError) as e:
        raise RunFileError(f"cannot restore the run in {run_dir}: {e}") from None
    variant = config["variant"]
    solver = eval_solver or config.get("eval_solver", "heun")
    steps = eval_steps or config.get("eval_steps", 20)
    kwargs = solver_kwargs(variant, solver, steps)
    x, y = dataset.x_test, dataset.y_test
    logged = [m for m in read_metrics(run_dir / "metrics.jsonl") if m["epoch"] == epoch]
    record = dict(
        run_dir=portable_path(run_dir),
        variant=variant,
        embedding=config["embedding"],
        model=config["model"],
        dataset=config["dataset"],
        data_name=dataset.name,
        seed=config["seed"],
        epoch=epoch,
        planned_epochs=config["epochs"],
        test_size=len(y),
        final_accuracy=evaluate_accuracy(model, x, y, **kwargs),
        recorded_accuracy=logged[-1]["test_accuracy"] if logged else None,
    )
    if variant == "DT":
        record["accuracy_blocks"] = evaluate_accuracy(model, x, y, readout="blocks")
    if variant in NOPROP_VARIANTS and inference_runs > 0:
        seed = config["seed"] if inference_seed is None else inference_seed
        stoch = stochastic_accuracy(
            model, x, y, key=inference_key(seed), runs=inference_runs, **kwargs
        )
        record.update(
            accuracy_stochastic_mean=stoch["mean"],
            accuracy_stochastic_se=stoch["se"],
            accuracy_stochastic_runs=stoch["runs"],
            inference_seed=seed,
        )
    if variant in ("CT", "FM"):
        record.update(solver_record(model, variant, solver, steps, x))
    record["eval_time_s"] = time.perf_counter() - tic
    return record


def _setting(config: dict, epoch: int) -> str:
    """What must match for runs to pool: every setting but the seed, and the epoch."""
    return json.dumps([{k: v for k, v in config.items() if k != "seed"}, epoch], sort_keys=True)


def evaluate_runs(
    paths: Sequence[str | Path],
    *,
    data_dir: str | None = None,
    verify_md5: bool = True,
    inference_runs: int = 5,
    eval_solver: str | None = None,
    eval_steps: int | None = None,
    inference_seed: int | None = None,
    log: TextIO | None = None,
    progress: TextIO | None = None,
) -> dict:
    """`evaluate_run` for every run folder in or below `paths` (`find_run_dirs`), each on the
    data it trained on, read from `data_dir` (as `noprop-eqx train --data-dir`).

    **Returns:** `{"runs": [record, ...], "protocol": [...]}`, one protocol entry (the seeds,
    `protocol_statistic`, the runs' variant, embedding and epoch) for every group of two or
    more seeds whose settings differ only in the seed, at the same epoch. Each run's line is
    printed to `log` (default standard output) as it is done, the pooled lines at the end;
    `progress` (default standard error) says which run is being read out.
    """
    log = sys.stdout if log is None else log
    progress = sys.stderr if progress is None else progress
    if inference_runs == 1 or inference_runs < 0:
        raise ConfigError(
            f"expected --inference-runs 0 (no stochastic read-out) or at least 2 (for a "
            f"standard error), got {inference_runs}"
        )
    if inference_seed is not None and not is_seed(inference_seed):
        raise ConfigError(f"expected --inference-seed to be {SEED_RANGE}, got {inference_seed}")
    run_dirs = find_run_dirs(paths)
    if eval_solver == "recurrence":  # CT's alone: refuse before any run is read out
        for run_dir in run_dirs:
            config = read_json(run_dir / "config.json", "the run's settings file")
            if config.get("variant") == "FM":
                raise ConfigError(
                    f"--eval-solver recurrence (Eq. 3 on a time grid) needs a noise schedule, "
                    f"which NoProp-CT has and FM has not: {portable_path(run_dir)} is an FM "
                    f"run; evaluate it with euler, heun or tsit5, or leave it out"
                )
    cache: dict = {}
    records, groups = [], {}
    for i, run_dir in enumerate(run_dirs, 1):
        config = saved_defaults(read_json(run_dir / "config.json", "the run's settings file"))
        print(
            f"[{i}/{len(run_dirs)}] reading out {portable_path(run_dir)} ...",
            file=progress,
            flush=True,
        )
        ds = _run_dataset(config, run_dir, data_dir, verify_md5, cache)
        record = evaluate_run(
            run_dir,
            ds,
            inference_runs=inference_runs,
            eval_solver=eval_solver,
            eval_steps=eval_steps,
            inference_seed=inference_seed,
        )
        records.append(record)
        groups.setdefault(_setting(config, record["epoch"]), []).append(record)
        print(format_record(record), file=log, flush=True)
    protocol = []
    for members in groups.values():
        if len({r["seed"] for r in members}) < 2:
            continue
        first = members[0]
        entry = dict(
            variant=first["variant"],
            embedding=first["embedding"],
            epoch=first["epoch"],
            run_dirs=[r["run_dir"] for r in members],
            **protocol_statistic(members),
        )
        protocol.append(entry)
        print(format_protocol(entry), file=log, flush=True)
    return dict(runs=records, protocol=protocol)


def format_record(r: dict) -> str:
    """One run's read-outs as a line: where, what, when, deterministic, stochastic."""
    line = (
        f"{r['run_dir']}: {r['variant']} {r['embedding']}, seed {r['seed']}, epoch "
        f"{r['epoch']}/{r['planned_epochs']}, {r['test_size']:,} test images | "
        f"deterministic {r['final_accuracy']:.2%}"
    )
    if r.get("accuracy_blocks") is not None:
        line += f", block average {r['accuracy_blocks']:.2%}"
    if r.get("accuracy_stochastic_mean") is not None:
        runs = len(r["accuracy_stochastic_runs"])
        line += (
            f" | stochastic {r['accuracy_stochastic_mean']:.2%} ± "
            f"{r['accuracy_stochastic_se']:.2%} (s.e., {runs} runs)"
        )
    if r.get("nfe") is not None:
        steps = "adaptive" if r["eval_steps"] is None else f"{r['eval_steps']} steps"
        line += f" | {r['inference_solver']} {steps}, NFE {r['nfe']}"
    return line + f" | {r['eval_time_s']:.1f}s"


def format_protocol(p: dict) -> str:
    """A pooled group as a line, the paper's Table 1 statistic first."""
    seeds = ", ".join(map(str, p["protocol_seeds"]))
    det = f"deterministic {p['protocol_deterministic_mean']:.2%}"
    if p["protocol_deterministic_se"] is not None:
        det += f" ± {p['protocol_deterministic_se']:.2%}"
    head = f"{p['variant']} {p['embedding']}, epoch {p['epoch']}, seeds {seeds}: "
    if p["protocol_stochastic_mean"] is None:
        return head + det + " (no stochastic runs)"
    return (
        head + f"stochastic {p['protocol_stochastic_mean']:.2%} ± "
        f"{p['protocol_stochastic_se']:.2%} (s.e. over {p['protocol_n']} runs), {det} (s.e. "
        "over the seeds)"
    )


def evaluation_report(result: dict, *, command: str) -> dict:
    """`evaluate_runs`' result as the JSON `noprop-eqx evaluate --out` writes: with the
    command, the commit, the device and the time."""
    return dict(
        command=command,
        commit=git_commit(),
        device=device_name(),
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **result,
    )
