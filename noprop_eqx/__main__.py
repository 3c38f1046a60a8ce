"""The `noprop-eqx` command line: `noprop-eqx train --variants DT CT FM BP --epochs 100`.

With no flags beyond `--variants` and `--epochs` a run uses the paper's Table 3 settings
(batch 128, learning rate 1e-3, weight decay 1e-3, AdamW for DT/BP, Adam with L2 weight decay
for CT/FM, the paper's networks, one-hot embeddings) on MNIST. Each variant writes to
`--out/<variant>`: `config.json`, `metrics.jsonl` (one line per epoch), `checkpoint.eqx` (model,
optimizer state, epoch, RNG key; rewritten after every epoch) and `summary.json`;
`--out/curves.png` plots test accuracy against epoch and training time for every variant found
under `--out`. `--resume` continues from the checkpoint and reproduces the uninterrupted run
exactly; `--stop-after N` stops after epoch N of a longer run, to be resumed later, and
`--time-budget 2h` stops before the first epoch that would end past two hours.

The options are the fields of `noprop_eqx.RunConfig`; from Python, `noprop_eqx.train(config)`
runs the same training.
"""

import argparse
import math
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from . import _evaluate, data as data_lib
from ._config import (
    CIFAR100_LABELS,
    COMPUTE_DTYPES,
    DATASETS,
    LR_SCHEDULES,
    ConfigError,
    RunConfig,
)
from ._embeddings import PROTOTYPE_SCALES
from ._loop import EMBEDDINGS, EVAL_SOLVERS, VARIANTS
from ._losses import CT_WEIGHTINGS, FM_Z_INPUTS
from ._machine import cpu_model as cpu_model, git_commit as git_commit
from ._records import RunFileError, scrub_paths, write_json
from ._run import TrainingDiverged, train
from .models._factory import BACKBONES

DEFAULTS = RunConfig()


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


_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s)?")


def _duration(text: str) -> float:
    """An argparse type: a time as seconds ("5400") or with units ("90m", "2h", "1h30m")."""
    try:
        seconds = float(text)
    except ValueError:
        match = _DURATION.fullmatch(text.strip().lower())
        if match is None or not any(match.groups()):
            raise argparse.ArgumentTypeError(
                f"expected a time such as 90m, 2h, 1h30m or 5400 (seconds), got {text!r}"
            ) from None
        h, m, s = (float(g) if g else 0.0 for g in match.groups())
        seconds = 3600 * h + 60 * m + s
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"expected a time > 0, got {text!r}")
    return seconds


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
    evaluate = commands.add_parser(
        "evaluate",
        help="measure trained runs' read-outs again from their checkpoints (the paper's "
        "protocol over seeds)",
        description=_evaluate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(subparser=evaluate)
    return parser


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `noprop-eqx evaluate`."""
    p.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUN",
        help="a run folder (holding config.json and checkpoint.eqx) or a folder above run "
        "folders, e.g. the --out of a --seeds run",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="local data folder, as for training; default $NOPROP_DATA_DIR, then the "
        "HuggingFace hub",
    )
    p.add_argument(
        "--no-verify-md5",
        action="store_true",
        help="skip the md5 check of the official MNIST/CIFAR files",
    )
    p.add_argument(
        "--inference-runs",
        type=_non_negative_int,
        default=DEFAULTS.inference_runs,
        help="stochastic inference runs per run folder (default 5, the paper's; 0 skips)",
    )
    p.add_argument(
        "--inference-seed",
        type=int,
        default=None,
        help="seed of the stochastic read-out's key (default: each run's own seed, the key "
        "its training's final read-out used)",
    )
    p.add_argument(
        "--eval-solver",
        choices=EVAL_SOLVERS,
        default=None,
        help="CT/FM inference solver (default: each run's own; tsit5 is adaptive; recurrence, "
        "CT only: Eq. 3 on a grid of --eval-steps steps)",
    )
    p.add_argument(
        "--eval-steps",
        type=_positive_int,
        default=None,
        help="CT/FM fixed-step solver (or recurrence) steps (default: each run's own)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="write the read-outs to this JSON file as well"
    )


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `noprop-eqx train`, one per `RunConfig` field, in four groups."""
    _add_training_options(p.add_argument_group("training"))
    _add_model_options(p.add_argument_group("model and embedding"))
    _add_data_options(p.add_argument_group("data"))
    _add_output_options(p.add_argument_group("evaluation and output"))
    _add_device_options(p.add_argument_group("devices and hosts"))


def _add_device_options(p) -> None:
    p.add_argument(
        "--mesh",
        default=None,
        metavar="AXES",
        help="train on a device mesh, e.g. data=4 (the batch split over 4 devices, any "
        "variant) or data=2,blocks=4 (DT's blocks split over 4 more); recorded in config.json",
    )
    p.add_argument(
        "--cpu-devices",
        type=_positive_int,
        default=None,
        metavar="N",
        help="on CPU, split the machine into N JAX devices (to use or try a --mesh)",
    )
    p.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="several processes (hosts): the address of process 0; with --num-processes and "
        "--process-id, or JAX's environment variables (JAX_COORDINATOR_ADDRESS, ...) or "
        "cluster detection when left out",
    )
    p.add_argument(
        "--num-processes",
        type=_positive_int,
        default=None,
        metavar="N",
        help="several processes: how many in all (with --coordinator)",
    )
    p.add_argument(
        "--process-id",
        type=int,
        default=None,
        metavar="I",
        help="several processes: this one's index, 0 to N - 1 (with --coordinator)",
    )


def _add_training_options(p) -> None:
    p.add_argument(
        "--variants",
        nargs="+",
        type=_variant,
        default=list(DEFAULTS.variants),
        metavar="VARIANT",
        help="any of DT CT FM BP (BP = backprop baseline); default DT",
    )
    p.add_argument(
        "--epochs", type=_positive_int, default=DEFAULTS.epochs, help="default 100 (paper)"
    )
    p.add_argument(
        "--stop-after",
        type=_positive_int,
        default=None,
        metavar="EPOCH",
        help="stop after this epoch of the --epochs run (checkpointed); continue later with "
        "the same command, --resume and without --stop-after: a time-boxed share of a long "
        "run, the learning-rate schedule still spanning --epochs",
    )
    p.add_argument(
        "--time-budget",
        type=_duration,
        default=None,
        metavar="TIME",
        help="stop, checkpointed, before an epoch that would end past TIME after the start "
        "(e.g. 90m, 2h, 1h30m, or seconds), judging by the last three epochs; continue later "
        "with the same command and --resume; variants not started by then are left for it",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=DEFAULTS.batch_size, help="default 128 (paper)"
    )
    p.add_argument(
        "--lr", type=_non_negative_float, default=DEFAULTS.lr, help="default 1e-3 (paper)"
    )
    p.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=DEFAULTS.lr_schedule,
        help="constant (paper) or cosine decay to 0 over --epochs (for runs shorter than the "
        "paper's; a cosine run cannot be extended with more --epochs on resume)",
    )
    p.add_argument(
        "--weight-decay",
        type=_non_negative_float,
        default=DEFAULTS.weight_decay,
        help="weight decay, default 1e-3 (paper): decoupled (AdamW) for DT/BP, an L2 gradient "
        "term before Adam for CT/FM (as PyTorch's Adam(weight_decay=...)); 0 = none",
    )


def _add_model_options(p) -> None:
    p.add_argument(
        "--embedding",
        choices=EMBEDDINGS,
        default=DEFAULTS.embedding,
        help="the class embedding: one-hot (default), learned (--embed-dim) or prototype (each "
        "class's medoid training image, trained)",
    )
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
        "--ct-gamma-init",
        nargs=2,
        type=float,
        metavar=("G0", "G1"),
        default=list(DEFAULTS.ct_gamma_init),
        help="CT only: the learned noise schedule's starting γ = -log SNR at t = 1 (clean) and "
        "t = 0 (noise); default -2 2; -5 5 was the default before, and learns more slowly",
    )
    p.add_argument(
        "--ct-fixed-schedule",
        action="store_true",
        help="CT only: hold the noise schedule at its start (--ct-gamma-init) instead of "
        "learning it (no gradient, no weight decay); a departure from the paper",
    )
    p.add_argument(
        "--ct-weighting",
        choices=CT_WEIGHTINGS,
        default=DEFAULTS.ct_weighting,
        help="CT only: the weight of Eq. 9's denoising term at time t: snr-prime, SNR'(t) (the "
        "paper, default), or log-snr, SNR'(t) / SNR(t), the same weight for every noise level "
        "on a log scale; log-snr is a departure from the paper, meant with --ct-fixed-schedule",
    )
    p.add_argument(
        "--fm-z-input",
        choices=FM_Z_INPUTS,
        default=DEFAULTS.fm_z_input,
        help="FM only: what the network sees of z: full (the paper, default), or span, its "
        "projection onto the span of the class embeddings, which drops the noise outside it; "
        "the same as full when the embedding has d <= m dimensions (one-hot), a departure from "
        "the paper when d > m (prototypes, learned with --embed-dim above the class count)",
    )
    p.add_argument(
        "--dt-alpha-bar-max",
        type=float,
        metavar="A",
        default=DEFAULTS.dt_alpha_bar_max,
        help="DT only: the ceiling on ᾱ of the cosine noise schedule, reached at the last "
        "block (default 0.9999, which keeps the last SNR finite and gives the last block "
        "99.6%% of Eq. 8's weights); 0.99 kept trained prototypes at one-hot scale from "
        "collapsing (docs/results.md), a setting for small trained embeddings",
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
        default=DEFAULTS.model,
        help="backbone: the paper's networks, a small CNN, or a ResNet (GroupNorm)",
    )
    p.add_argument(
        "--num-blocks",
        type=_positive_int,
        default=DEFAULTS.num_blocks,
        help="T, the number of DT/BP blocks (default 10, paper)",
    )
    p.add_argument(
        "--compute-dtype",
        choices=COMPUTE_DTYPES,
        default=DEFAULTS.compute_dtype,
        help="training compute dtype; bfloat16 = mixed precision (float32 master weights and "
        "optimiser state, bf16 convolutions and dense layers); evaluation runs in float32",
    )
    p.add_argument(
        "--steps-per-call",
        type=_steps_per_call,
        default=DEFAULTS.steps_per_call,
        help="training steps per compiled call (a lax.scan over that many batches): removes "
        "the per-step dispatch cost on a GPU; 'auto' (default) = 1 on CPU, about a tenth of "
        "an epoch elsewhere",
    )
    p.add_argument(
        "--augment-shift",
        type=_non_negative_int,
        default=DEFAULTS.augment_shift,
        metavar="PIXELS",
        help="translate each training image by a random integer offset of up to PIXELS in each "
        "direction, the border filled with black (default 0: no augmentation, the paper)",
    )
    p.add_argument(
        "--width",
        type=_positive_int,
        default=DEFAULTS.width,
        help="ResNet backbones only: channels of the first stage, doubling each stage "
        "(default 64, the standard ResNet)",
    )
    p.add_argument(
        "--norm",
        choices=("group", "batch"),
        default=DEFAULTS.norm,
        help="ResNet backbones only: the image branch's normalisation, 'group' (GroupNorm, 32 "
        "groups; default) or 'batch' (BatchNorm: batch statistics in training, population "
        "statistics recalibrated on 5,000 training images after every epoch for evaluation)",
    )


def _add_data_options(p) -> None:
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        help="the run's seed: initial weights, data order, noise, dropout and the stochastic "
        "read-out's keys (default 0)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="train these seeds together, in one compiled step (the paper's protocol: 0 1 2); "
        "seed S runs in OUT/seedS/, and each record holds the mean ± s.e. over all seeds' "
        "stochastic runs",
    )
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default=DEFAULTS.dataset,
        help="default mnist; digits ships with scikit-learn; the others are read from "
        "--data-dir, else from the HuggingFace hub unless HF_HUB_OFFLINE=1",
    )
    p.add_argument(
        "--cifar100-labels",
        choices=CIFAR100_LABELS,
        default=DEFAULTS.cifar100_labels,
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


def _add_output_options(p) -> None:
    p.add_argument(
        "--out", type=Path, default=Path(DEFAULTS.out), help="output folder (default runs)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue each variant from its checkpoint in --out"
    )
    p.add_argument(
        "--eval-solver",
        choices=EVAL_SOLVERS,
        default=DEFAULTS.eval_solver,
        help="CT/FM inference solver (tsit5 is adaptive, rtol=atol=1e-3; recurrence, CT only: "
        "Eq. 3 on a grid of --eval-steps steps)",
    )
    p.add_argument(
        "--eval-steps",
        type=_positive_int,
        default=DEFAULTS.eval_steps,
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
        default=DEFAULTS.subset_seed,
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
        default=DEFAULTS.inference_runs,
        help="stochastic inference runs at the end for mean ± s.e., the paper's read-out (DT: "
        "Eq. 3 with noise; CT/FM: the ODE from z_0 ~ N(0, I)); default 5; 0 skips",
    )
    p.add_argument("--no-progress", action="store_true", help="no per-batch progress bar")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The `RunConfig` of parsed `noprop-eqx train` arguments (validated there): each field is
    the option of the same name, except the negated flags and the paths."""
    special = dict(
        variants=tuple(args.variants),
        seeds=None if args.seeds is None else tuple(args.seeds),
        verify_md5=not args.no_verify_md5,
        progress=not args.no_progress,
        out=str(args.out),
        results=None if args.results is None else str(args.results),
    )
    fields = {f: getattr(args, f) for f in RunConfig.__dataclass_fields__ if f not in special}
    return RunConfig(**fields, **special)


_FIELDS = sorted((f for f in RunConfig.__dataclass_fields__), key=len, reverse=True)


def as_flags(message: str) -> str:
    """A `ConfigError` message in the command line's words: the option it is about (the first
    field it names) as a flag, `batch_size` → `--batch-size`; a message that already names
    its flag is left as it is."""
    if "--" in message:
        return message
    pattern = r"(?<![-\w'])(" + "|".join(map(re.escape, _FIELDS)) + r")\b(?![-/.])"
    return re.sub(pattern, lambda m: "--" + m.group(1).replace("_", "-"), message, count=1)


def command_line(words: Sequence[str]) -> str:
    """The command a results record keeps: `sys.argv` as a reader would type it, the console
    script by its name (not the path of the environment it was installed in)."""
    words = list(words)
    if words and words[0].endswith("__main__.py"):
        words[:1] = ["python", "-m", "noprop_eqx"]
    elif words and Path(words[0]).name == "noprop-eqx":
        words[0] = "noprop-eqx"
    return shlex.join(words)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    command = command_line(sys.argv) if argv is None else shlex.join(["noprop-eqx", *argv])
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        return evaluate_main(args, command)
    if args.command != "train":
        parser.error(f"unknown command {args.command!r}")
    try:
        config = config_from_args(args)
        train(config, command=command)
    except (ConfigError, data_lib.DatasetNotFoundError, data_lib.DataIntegrityError) as e:
        args.subparser.error(as_flags(str(e)) if isinstance(e, ConfigError) else str(e))
    except (RunFileError, TrainingDiverged) as e:
        raise SystemExit(f"noprop-eqx train: error: {e}") from None
    except KeyboardInterrupt:
        print(
            f"\nnoprop-eqx train: interrupted. Every completed epoch is checkpointed in its run "
            f"folder under {args.out}: run the same command with --resume to continue.",
            file=sys.stderr,
        )
        return 130
    return 0


def evaluate_main(args: argparse.Namespace, command: str) -> int:
    """`noprop-eqx evaluate`: every run's read-outs printed as measured, the pooled protocol
    lines after them, and with `--out` the whole as JSON."""
    try:
        result = _evaluate.evaluate_runs(
            args.runs,
            data_dir=args.data_dir,
            verify_md5=not args.no_verify_md5,
            inference_runs=args.inference_runs,
            eval_solver=args.eval_solver,
            eval_steps=args.eval_steps,
            inference_seed=args.inference_seed,
        )
    except (ConfigError, data_lib.DatasetNotFoundError, data_lib.DataIntegrityError) as e:
        args.subparser.error(str(e))
    except RunFileError as e:
        raise SystemExit(f"noprop-eqx evaluate: error: {e}") from None
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, scrub_paths(_evaluate.evaluation_report(result, command=command)))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
