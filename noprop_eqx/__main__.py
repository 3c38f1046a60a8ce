"""The `noprop-eqx` command line: `noprop-eqx train --variants DT CT FM BP --epochs 100`.

With no flags beyond `--variants` and `--epochs` a run uses the paper's Table 3 settings
(batch 128, learning rate 1e-3, weight decay 1e-3, AdamW for DT/BP, Adam for CT/FM, the paper's
networks, one-hot embeddings) on MNIST. Each variant writes to `--out/<variant>`:
`config.json`, `metrics.jsonl` (one line per epoch), `checkpoint.eqx` (model, optimizer state,
epoch, RNG key; rewritten after every epoch) and `summary.json`; `--out/curves.png` plots test
accuracy against epoch and training time for every variant found under `--out`. `--resume`
continues from the checkpoint and reproduces the uninterrupted run exactly.
"""

import argparse
import functools
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import optax

from . import data as data_lib
from ._checkpoint import load_checkpoint, save_checkpoint
from ._dt import NoPropDT
from ._dt_step import make_dt_step
from ._embeddings import PROTOTYPE_SCALES, is_fixed_embedding
from ._loop import (
    EMBEDDINGS,
    SOLVERS,
    VARIANTS,
    build_model,
    resolve_embed_dim,
    run_keys,
    solver_kwargs,
    stochastic_accuracy,
    train_epoch,
)
from ._records import portable_path, scrub_paths
from ._solve import evaluations_per_step
from ._train import (
    evaluate_accuracy,
    init_optimizer_state,
    make_step,
    paper_optimizer,
    weight_decay_mode,
)
from .models._factory import BACKBONES, backbone_name

DATASETS = ("digits", "mnist", "cifar10", "cifar100")
CHECKPOINT = "checkpoint.eqx"
# Settings that determine the training trajectory: a resumed run must match them exactly.
TRAJECTORY_KEYS = (
    "variant",
    "dataset",
    "model",
    "embedding",
    "embed_dim",
    "num_blocks",
    "batch_size",
    "lr",
    "lr_schedule",
    "weight_decay",
    "seed",
    "limit_train",
)


def _variant(text: str) -> str:
    name = text.upper()
    if name not in VARIANTS:
        raise argparse.ArgumentTypeError(
            f"unknown variant {text!r}; expected one of {' '.join(VARIANTS)} "
            "(DT/CT/FM = NoProp-DT/CT/FM, BP = the backprop baseline)"
        )
    return name


def _steps_per_call(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'auto', got {text!r}"
        ) from None


def _int_at_least(low: int, what: str):
    """An argparse type: an integer >= `low`, else an error "expected a `what` integer"."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "positive")
_non_negative_int = _int_at_least(0, "non-negative")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value}")
    return value


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="noprop-eqx", description="NoProp (Li, Teh, Pascanu 2025) in JAX + Equinox."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train NoProp-DT/CT/FM and the backprop baseline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(train)
    train.set_defaults(subparser=train)  # reports option errors with the subcommand's usage
    return parser


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--variants",
        nargs="+",
        type=_variant,
        default=["DT"],
        metavar="VARIANT",
        help="any of DT CT FM BP (BP = backprop baseline); default DT",
    )
    p.add_argument("--epochs", type=_positive_int, default=100, help="default 100 (paper)")
    p.add_argument(
        "--stop-after",
        type=_positive_int,
        default=None,
        metavar="EPOCH",
        help="stop after this epoch of the --epochs run (checkpointed); continue later with "
        "the same command, --resume and without --stop-after: a time-boxed share of a long "
        "run, the learning-rate schedule still spanning --epochs",
    )
    p.add_argument("--batch-size", type=_positive_int, default=128, help="default 128 (paper)")
    p.add_argument("--lr", type=_non_negative_float, default=1e-3, help="default 1e-3 (paper)")
    p.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="constant (paper) or cosine decay to 0 over --epochs (for runs shorter than the "
        "paper's; a cosine run cannot be extended with more --epochs on resume)",
    )
    p.add_argument(
        "--weight-decay",
        type=_non_negative_float,
        default=1e-3,
        help="weight decay, default 1e-3 (paper): decoupled (AdamW) for DT/BP, an L2 gradient "
        "term before Adam for CT/FM (as PyTorch's Adam(weight_decay=...)); 0 = none",
    )
    p.add_argument("--embedding", choices=EMBEDDINGS, default="one-hot")
    p.add_argument(
        "--prototype-scale",
        choices=PROTOTYPE_SCALES,
        default=None,
        help="prototype embedding only: raw = the medoid images as they are (norms ~20-30 on "
        "MNIST); one-hot = one factor making the mean squared distance between prototypes 2, "
        "as for one-hot vectors (default: raw)",
    )
    p.add_argument(
        "--fixed-embedding",
        action="store_true",
        help="prototype embedding only: keep the prototypes as built (no gradient, no weight "
        "decay) instead of training them with the readout's cross-entropy and the KL term",
    )
    p.add_argument(
        "--embed-dim",
        type=_positive_int,
        default=None,
        help="learned: default 20; one-hot and prototype have fixed dimensions",
    )
    p.add_argument(
        "--model",
        choices=BACKBONES,
        default="paper",
        help="backbone: the paper's networks, a small CNN, or a ResNet (GroupNorm)",
    )
    p.add_argument(
        "--num-blocks",
        type=_positive_int,
        default=10,
        help="T, the number of DT/BP blocks (default 10, paper)",
    )
    p.add_argument(
        "--compute-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="training compute dtype; bfloat16 = mixed precision (float32 master weights and "
        "optimiser state, bf16 convolutions and dense layers); evaluation runs in float32",
    )
    p.add_argument(
        "--steps-per-call",
        type=_steps_per_call,
        default="auto",
        help="training steps per compiled call (a lax.scan over that many batches): removes "
        "the per-step dispatch cost on a GPU; 'auto' (default) = 1 on CPU, about a tenth of "
        "an epoch elsewhere",
    )
    p.add_argument(
        "--augment-shift",
        type=_non_negative_int,
        default=0,
        metavar="PIXELS",
        help="translate each training image by a random integer offset of up to PIXELS in each "
        "direction, the border filled with black (default 0: no augmentation, the paper)",
    )
    p.add_argument(
        "--width",
        type=_positive_int,
        default=64,
        help="ResNet backbones only: channels of the first stage, doubling each stage "
        "(default 64, the standard ResNet)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument(
        "--cifar100-labels",
        choices=("fine", "coarse"),
        default="fine",
        help="cifar100 only: the 100 fine classes (default, the paper) or the 20 coarse ones",
    )
    p.add_argument(
        "--no-verify-md5",
        action="store_true",
        help="skip the md5 check of the official MNIST/CIFAR files (for copies you trust that "
        "differ from the published release)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="local data folder; default $NOPROP_DATA_DIR, then the HuggingFace hub",
    )
    p.add_argument("--out", type=Path, default=Path("runs"), help="output folder (default runs)")
    p.add_argument(
        "--resume", action="store_true", help="continue each variant from its checkpoint in --out"
    )
    p.add_argument(
        "--eval-solver",
        choices=sorted(SOLVERS),
        default="heun",
        help="CT/FM inference solver (tsit5 is adaptive, rtol=atol=1e-3)",
    )
    p.add_argument(
        "--eval-steps",
        type=_positive_int,
        default=20,
        help="CT/FM fixed-step solver steps (default 20)",
    )
    p.add_argument(
        "--limit-train",
        type=_positive_int,
        default=None,
        help="train on N images: a seeded random sample with every class in its share "
        "(--subset-seed; quick runs)",
    )
    p.add_argument(
        "--limit-test",
        type=_positive_int,
        default=None,
        help="evaluate on N test images, sampled as --limit-train's (quick runs)",
    )
    p.add_argument(
        "--subset-seed",
        type=int,
        default=0,
        help="seed of the --limit-train/--limit-test samples (default 0; recorded in the run)",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="append one record per variant to this JSON list (e.g. benchmarks/results/mnist.json)",
    )
    p.add_argument(
        "--inference-runs",
        type=int,
        default=5,
        help="stochastic inference runs at the end for mean ± s.e., the paper's read-out (DT: "
        "Eq. 3 with noise; CT/FM: the ODE from z_0 ~ N(0, I)); default 5; 0 skips",
    )
    p.add_argument("--no-progress", action="store_true", help="no per-batch progress bar")


def _prototype_scale(embedding: str, scale: str | None) -> str | None:
    """The prototype scale a run uses: None unless the embedding is "prototype", whose
    default is raw."""
    return None if embedding != "prototype" else scale or "raw"


def run_dir_name(variant: str, embedding: str) -> str:
    return variant if embedding == "one-hot" else f"{variant}-{embedding}"


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (else `platform.processor()`, else None). Also
    used by the benchmark scripts."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _device() -> str:
    """The device a run trains on, e.g. "NVIDIA H200 (gpu)" or "cpu (AMD EPYC, 2 cores)"."""
    d = jax.devices()[0]
    if d.platform != "cpu":
        return f"{d.device_kind} ({d.platform})"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"cpu ({cpu_model() or 'unknown CPU'}, {cores} cores)"


def git_commit(cwd: Path | None = None, *, short: bool = True) -> str | None:
    """The commit checked out at `cwd` (default: this package's folder), or None outside git.
    Also used by the benchmark scripts."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", *(["--short"] if short else []), "HEAD"],
            cwd=Path(__file__).resolve().parent if cwd is None else cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_result(path: Path, record: dict) -> None:
    """Appends `record` to the JSON list in `path` (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(path.read_text()) if path.is_file() else []
    if not isinstance(records, list):
        raise ValueError(f"expected {path} to hold a JSON list of run records")
    records.append(record)
    _write_json(path, records)


def _format_terms(terms: dict) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in terms.items() if isinstance(v, float))


_STEPS: dict = {}


def _optimizer_and_step(
    model, lr: float, weight_decay: float, decay_steps: int | None, compute_dtype: str = "float32"
):
    """The paper optimiser and its compiled step, made once per (model class, fixed embedding or
    not, lr, weight decay, cosine decay steps or None for a constant rate, compute dtype) in this
    process, so that repeated runs in one process (tests, resumes) reuse compilations. Both are
    pure functions of those values."""
    fixed = is_fixed_embedding(getattr(model, "embedding", None))
    cache_key = (type(model), fixed, lr, weight_decay, decay_steps, compute_dtype)
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


def train_variant(
    variant: str, args: argparse.Namespace, ds: data_lib.ImageDataset, command: str
) -> dict:
    """Trains (or resumes) one variant; returns its results record."""
    log = sys.stderr
    commit = git_commit()  # the code that trains: read now, not after a long run
    run_dir = args.out / run_dir_name(variant, args.embedding)
    ckpt_path = run_dir / CHECKPOINT
    metrics_path = run_dir / "metrics.jsonl"
    embed_dim = resolve_embed_dim(args.embedding, args.embed_dim, ds.num_classes, ds.image_shape)
    prototype_scale = _prototype_scale(args.embedding, args.prototype_scale)
    config = dict(
        variant=variant,
        dataset=args.dataset,
        model=args.model,
        embedding=args.embedding,
        embed_dim=embed_dim,
        prototype_scale=prototype_scale,
        fixed_embedding=args.fixed_embedding,
        augment_shift=args.augment_shift,
        num_blocks=args.num_blocks,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        weight_decay=args.weight_decay,
        compute_dtype=args.compute_dtype,
        steps_per_call=args.steps_per_call,
        seed=args.seed,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        subset_seed=None
        if args.limit_train is None and args.limit_test is None
        else args.subset_seed,
        cifar100_labels=args.cifar100_labels if args.dataset == "cifar100" else None,
        weight_decay_mode=weight_decay_mode(variant, args.weight_decay),
        eval_solver=args.eval_solver,
        eval_steps=args.eval_steps,
        num_classes=ds.num_classes,
        image_shape=list(ds.image_shape),
    )
    k_model, k_train = run_keys(args.seed, variant)
    model = build_model(
        variant,
        num_classes=ds.num_classes,
        image_shape=ds.image_shape,
        backbone=args.model,
        embedding=args.embedding,
        embed_dim=embed_dim,
        num_blocks=args.num_blocks,
        x_train=ds.x_train,
        y_train=ds.y_train,
        prototype_scale=prototype_scale,
        fixed_embedding=args.fixed_embedding,
        key=k_model,
    )
    decay_steps = None
    if args.lr_schedule == "cosine":
        config["lr_decay_steps"] = decay_steps = args.epochs * data_lib.num_train_batches(
            len(ds.y_train), args.batch_size
        )
    optimizer, step = _optimizer_and_step(
        model, args.lr, args.weight_decay, decay_steps, args.compute_dtype
    )
    config["optimizer"] = "adamw" if variant in ("DT", "BP") else "adam"
    if config["weight_decay_mode"] == "l2":
        config["optimizer"] = "adam + l2 weight decay"
    opt_state = init_optimizer_state(model, optimizer)

    start_epoch, history = 0, []
    if args.resume and ckpt_path.is_file():
        saved = json.loads((run_dir / "config.json").read_text())
        # runs saved before these options existed
        saved.setdefault("compute_dtype", "float32")
        saved.setdefault("prototype_scale", _prototype_scale(saved["embedding"], None))
        saved.setdefault("fixed_embedding", False)
        saved.setdefault("augment_shift", 0)
        saved.setdefault("steps_per_call", "auto")
        saved.setdefault("subset_seed", None)  # first-N subsets
        saved.setdefault("cifar100_labels", "fine" if saved["dataset"] == "cifar100" else None)
        saved.setdefault("weight_decay_mode", weight_decay_mode(saved["variant"], None))
        keys = (
            *TRAJECTORY_KEYS,
            "lr_decay_steps",
            "compute_dtype",
            "prototype_scale",
            "fixed_embedding",
            "augment_shift",
            "steps_per_call",
            "subset_seed",
            "cifar100_labels",
            "weight_decay_mode",
        )
        diff = {k: (saved.get(k), config.get(k)) for k in keys if saved.get(k) != config.get(k)}
        if diff:
            raise SystemExit(
                f"noprop-eqx train: error: cannot resume {run_dir}: settings differ from the "
                "saved run (saved, now): "
                + ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in diff.items())
            )
        model, opt_state, start_epoch, saved_key = load_checkpoint(
            ckpt_path, model, opt_state, key=k_train
        )
        if not bool(jnp.all(jr.key_data(saved_key) == jr.key_data(k_train))):
            raise SystemExit(f"noprop-eqx train: error: checkpoint key in {ckpt_path} differs")
        # Lines after the checkpointed epoch belong to an epoch that will be re-run.
        history = [m for m in read_metrics(metrics_path) if m["epoch"] <= start_epoch]
        print(f"[{variant}] resuming {run_dir} after epoch {start_epoch}", file=log, flush=True)
    elif ckpt_path.is_file():
        raise SystemExit(
            f"noprop-eqx train: error: {ckpt_path} exists; pass --resume to continue it or "
            "choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / "config.json", config)
    metrics_path.write_text("".join(json.dumps(m) + "\n" for m in history))

    predict_kwargs = solver_kwargs(variant, args.eval_solver, args.eval_steps)
    train_time = history[-1]["train_time_s"] if history else 0.0
    wall_time = history[-1]["wall_time_s"] if history else 0.0
    x_test, y_test = ds.x_test, ds.y_test
    augment = None
    if args.augment_shift > 0:
        augment = functools.partial(
            data_lib.random_shift, max_shift=args.augment_shift, fill=ds.background
        )
    last_epoch = args.epochs if args.stop_after is None else min(args.stop_after, args.epochs)
    for epoch in range(start_epoch + 1, last_epoch + 1):
        model, opt_state, stats = train_epoch(
            step,
            model,
            opt_state,
            ds.x_train,
            ds.y_train,
            batch_size=args.batch_size,
            key=k_train,
            epoch=epoch,
            desc=f"[{variant}] epoch {epoch}/{args.epochs}",
            stream=log,
            progress=not args.no_progress,
            steps_per_call=args.steps_per_call,
            augment=augment,
        )
        tic = time.perf_counter()
        accuracy = evaluate_accuracy(model, x_test, y_test, **predict_kwargs)
        eval_time = time.perf_counter() - tic
        train_time += stats["time"]
        wall_time += stats["time"] + eval_time
        save_checkpoint(ckpt_path, model, opt_state, epoch=epoch, key=k_train)
        line = dict(
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
        with metrics_path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        history.append(line)
        print(
            f"[{variant}] epoch {epoch:3d}/{args.epochs} | {_format_terms(stats['loss_terms'])} "
            f"| test acc {accuracy:.2%} | {stats['time']:.1f}s train + {eval_time:.1f}s eval "
            f"| {stats['images_per_s']:.0f} img/s",
            file=log,
            flush=True,
        )
    if not history:
        raise SystemExit(f"noprop-eqx train: error: {run_dir} has no completed epoch")
    if history[-1]["epoch"] < args.epochs:
        print(
            f"[{variant}] stopped after epoch {history[-1]['epoch']} of {args.epochs} "
            "(--stop-after): run the same command with --resume and without --stop-after to "
            "continue",
            file=log,
            flush=True,
        )

    record = dict(
        variant=variant,
        embedding=args.embedding,
        embed_dim=embed_dim,
        prototype_scale=prototype_scale,
        fixed_embedding=args.fixed_embedding,
        augment_shift=args.augment_shift,
        num_blocks=args.num_blocks if variant in ("DT", "BP") else None,
        model=args.model,
        dataset=args.dataset,
        epochs=history[-1]["epoch"],
        planned_epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        weight_decay=args.weight_decay,
        compute_dtype=args.compute_dtype,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        test_size=len(y_test),
        device=_device(),
        train_time_s=train_time,
        wall_time_s=wall_time,
        final_accuracy=history[-1]["test_accuracy"],
        best_accuracy=max(m["test_accuracy"] for m in history),
        best_epoch=max(history, key=lambda m: m["test_accuracy"])["epoch"],
        inference_solver=None,
        nfe=None,
        run_dir=portable_path(run_dir),
        command=scrub_paths(command),
        commit=commit,
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    if variant in ("DT", "CT", "FM"):
        record["accuracy_deterministic"] = record["final_accuracy"]
    if variant == "DT":
        # The same deterministic chain, read out from the T blocks' averaged class probabilities.
        record["accuracy_blocks"] = evaluate_accuracy(model, x_test, y_test, readout="blocks")
        print(
            f"[{variant}] final: block average {record['accuracy_blocks']:.2%} (the readout of "
            f"z_T is test acc above)",
            file=log,
            flush=True,
        )
    if variant in ("DT", "CT", "FM") and args.inference_runs > 0:
        # The paper's read-out: DT's Eq. 3 with noise from z_0 ~ N(0, I); CT/FM's ODE from
        # z_0 ~ N(0, I) (the deterministic read-outs above start from z_0 = 0).
        tic = time.perf_counter()
        k_infer = jr.fold_in(jr.key(args.seed), 1_000_003)
        runs = args.inference_runs
        stoch = stochastic_accuracy(model, x_test, y_test, key=k_infer, runs=runs, **predict_kwargs)
        record.update(
            accuracy_stochastic_mean=stoch["mean"],
            accuracy_stochastic_se=stoch["se"],
            accuracy_stochastic_runs=stoch["runs"],
        )
        print(
            f"[{variant}] final: deterministic {record['final_accuracy']:.2%}, stochastic "
            f"{stoch['mean']:.2%} ± {stoch['se']:.2%} (s.e., {runs} runs, "
            f"{time.perf_counter() - tic:.1f}s)",
            file=log,
            flush=True,
        )
    if variant in ("CT", "FM"):
        if args.eval_solver == "tsit5":  # adaptive: the NFE of a full evaluation batch
            nfe = model.solve(x_test[: min(len(x_test), 1000)], **predict_kwargs).nfe
        else:  # fixed step: the same for any batch, no need to solve again
            per_step, initial = evaluations_per_step(predict_kwargs["solver"])
            nfe = args.eval_steps * per_step + initial
        record["inference_solver"] = args.eval_solver
        record["eval_steps"] = None if args.eval_solver == "tsit5" else args.eval_steps
        record["nfe"] = int(nfe)
    _write_json(run_dir / "summary.json", record)
    return record


def plot_curves(out: Path) -> Path | None:
    """`out/curves.png`: test accuracy against epoch and against cumulative training time, one
    line per run folder under `out` (the paper's Fig. 3 layout)."""
    runs = {p.parent.name: read_metrics(p) for p in sorted(out.glob("*/metrics.jsonl"))}
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_e, ax_t) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for name, rows in runs.items():
        acc = [100 * r["test_accuracy"] for r in rows]
        ax_e.plot([r["epoch"] for r in rows], acc, marker="o", ms=3, label=name)
        ax_t.plot([r["train_time_s"] / 60 for r in rows], acc, marker="o", ms=3, label=name)
    ax_e.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy vs epoch")
    ax_t.set(xlabel="training time (min, excluding evaluation)", title="accuracy vs time")
    for ax in (ax_e, ax_t):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_train(args: argparse.Namespace, parser: argparse.ArgumentParser, command: str) -> int:
    if args.cifar100_labels != "fine" and args.dataset != "cifar100":
        parser.error(f"--cifar100-labels applies to --dataset cifar100, got {args.dataset}")
    try:
        args.model = backbone_name(args.model, args.width)
    except ValueError as e:
        parser.error(f"--width: {e}")
    extra = dict(labels=args.cifar100_labels) if args.dataset == "cifar100" else {}
    try:
        ds = data_lib.load_dataset(
            args.dataset, args.data_dir, verify_md5=not args.no_verify_md5, **extra
        )
    except (data_lib.DatasetNotFoundError, data_lib.DataIntegrityError) as e:
        parser.error(str(e))
    if args.limit_train is not None or args.limit_test is not None:
        try:
            ds = ds.subset(args.limit_train, args.limit_test, seed=args.subset_seed)
        except ValueError as e:
            parser.error(str(e))
    if args.inference_runs == 1 or args.inference_runs < 0:
        parser.error(
            f"--inference-runs must be 0 (skip) or >= 2 for a standard error, got "
            f"{args.inference_runs}"
        )
    for flag, given in (
        ("--prototype-scale", args.prototype_scale is not None),
        ("--fixed-embedding", args.fixed_embedding),
    ):
        if given and args.embedding != "prototype":
            parser.error(
                f"{flag} applies to --embedding prototype only, got --embedding {args.embedding}"
            )
    try:  # check option combinations before any training starts
        resolve_embed_dim(args.embedding, args.embed_dim, ds.num_classes, ds.image_shape)
    except ValueError as e:
        parser.error(str(e))
    print(f"{ds} on {_device()}", file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for variant in dict.fromkeys(args.variants):  # unique, in the given order
        record = train_variant(variant, args, ds, command)
        if args.results is not None:
            append_result(args.results, record)
        plot_curves(args.out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    if argv is None:
        words = list(sys.argv)
        if words and words[0].endswith("__main__.py"):
            words[:1] = ["python", "-m", "noprop_eqx"]
        command = shlex.join(words)
    else:
        command = shlex.join(["noprop-eqx", *argv])
    args = parser.parse_args(argv)
    if args.command == "train":
        return run_train(args, args.subparser, command)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
