"""A markdown table of the runs recorded in benchmarks/results/mnist.json.

`noprop-eqx train ... --results benchmarks/results/mnist.json` appends one record per trained
variant; this script turns the records into the results table (printed; `--write FILE` also
writes it). NoProp-DT inference is stochastic, so its accuracy is the mean ± standard error over
the recorded inference runs, with the deterministic (ε = 0, z_0 = 0) accuracy beside it.

    python benchmarks/mnist_results.py
    python benchmarks/mnist_results.py --write benchmarks/results/mnist.md
    python benchmarks/mnist_results.py --full-data   # all 60k training / 10k test images only
    python benchmarks/mnist_results.py --protocol    # the paper's protocol: one row per seed set
    python benchmarks/mnist_results.py --protocol --pool --results benchmarks/results/cifar10.json

`--pool` also pools runs made separately (`--seed 0`, then `--seeds 1 2`, ...) whose settings
agree in everything but the seed: one row per set of settings, over the latest record of each
seed.
"""

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "mnist.json"
NAMES = {"DT": "NoProp-DT", "CT": "NoProp-CT", "FM": "NoProp-FM", "BP": "Backprop"}
# The paper's Table 1 (MNIST, test accuracy %), for comparison.
PAPER = {
    ("BP", "one-hot"): 99.46,
    ("BP", "prototype"): 99.44,
    ("DT", "one-hot"): 99.47,
    ("DT", "learned"): 99.49,
    ("DT", "prototype"): 99.54,
    ("CT", "one-hot"): 97.84,
    ("CT", "learned"): 97.7,
    ("CT", "prototype"): 97.17,
    ("FM", "one-hot"): 99.21,
    ("FM", "learned"): 99.29,
    ("FM", "prototype"): 98.52,
}
# Table 1, CIFAR-10 and CIFAR-100 ("learned" is the paper's d = 20).
PAPER_CIFAR10 = {
    ("BP", "one-hot"): 79.92,
    ("BP", "prototype"): 79.58,
    ("DT", "one-hot"): 79.25,
    ("DT", "learned"): 79.12,
    ("DT", "prototype"): 80.54,
    ("CT", "one-hot"): 73.35,
    ("CT", "learned"): 71.77,
    ("CT", "prototype"): 66.54,
    ("FM", "one-hot"): 73.14,
    ("FM", "learned"): 73.5,
    ("FM", "prototype"): 75.18,
}
PAPER_CIFAR100 = {
    ("BP", "one-hot"): 45.85,
    ("BP", "prototype"): 47.8,
    ("DT", "one-hot"): 45.93,
    ("DT", "learned"): 45.19,
    ("DT", "prototype"): 46.06,
    ("CT", "one-hot"): 33.66,
    ("CT", "learned"): 33.99,
    ("CT", "prototype"): 21.31,
    ("FM", "one-hot"): 6.38,
    ("FM", "learned"): 31.14,
    ("FM", "prototype"): 37.57,
}
PAPER_BY_DATASET = {"mnist": PAPER, "cifar10": PAPER_CIFAR10, "cifar100": PAPER_CIFAR100}
# What must agree for records of different seeds to be pooled into one protocol row.
SETTINGS = (
    "dataset",
    "data_name",
    "variant",
    "embedding",
    "embed_dim",
    "prototype_scale",
    "fixed_embedding",
    "augment_shift",
    "num_blocks",
    "model",  # a ResNet's name carries its width and norm, e.g. "resnet18-w16-bn"
    "epochs",
    "batch_size",
    "lr",
    "lr_schedule",
    "weight_decay",
    "optimizer",
    "ct_gamma_init",
    "ct_fixed_schedule",
    "ct_weighting",
    "fm_z_input",
    "dt_alpha_bar_max",
    "compute_dtype",
    "limit_train",
    "limit_test",
    "subset_seed",
    "test_size",
    "inference_solver",
    "eval_steps",
)


DT_ALPHA_BAR_MAX = 0.9999  # NoProp-DT's default ceiling, which records made before 2026-12 used
# NoProp-CT's defaults, which its records made before these options existed used.
CT_DEFAULTS = {"ct_fixed_schedule": False, "ct_weighting": "snr-prime"}
FM_Z_INPUT = "full"  # NoProp-FM's default network input, which records made before 2026-12 used


def setting(r: dict, name: str):
    """A record's value of one of `SETTINGS`, with the default a record made before the
    setting existed used."""
    if name == "dt_alpha_bar_max" and r.get("variant") == "DT":
        return r.get(name) or DT_ALPHA_BAR_MAX
    if r.get("variant") == "CT" and name in CT_DEFAULTS:
        return r.get(name) or CT_DEFAULTS[name]
    if name == "fm_z_input" and r.get("variant") == "FM":
        return r.get(name) or FM_Z_INPUT
    return r.get(name)


def paper_value(r: dict) -> float | None:
    """Table 1's figure for the record's dataset, variant and embedding, if it has one."""
    return PAPER_BY_DATASET.get(r.get("dataset"), {}).get((r["variant"], r["embedding"]))


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def accuracy_cell(r: dict) -> str:
    if r.get("accuracy_stochastic_mean") is not None:
        n = len(r.get("accuracy_stochastic_runs", []))
        return (
            f"{100 * r['accuracy_stochastic_mean']:.2f} ± {100 * r['accuracy_stochastic_se']:.2f}"
            f" (n={n})"
        )
    return _pct(r["final_accuracy"])


def embedding_cell(r: dict) -> str:
    """The embedding, with the prototype scale when it is not the raw images, "fixed" when
    the prototypes were not trained, DT's schedule ceiling ᾱ_max when it is not 0.9999, and
    the departures: CT's held schedule and log-SNR weighting, FM's span input."""
    notes = []
    ceiling = setting(r, "dt_alpha_bar_max")
    if ceiling not in (None, DT_ALPHA_BAR_MAX):
        notes.append(f"ᾱ_max {ceiling:g}")
    if setting(r, "ct_fixed_schedule"):
        notes.append("held schedule")
    if setting(r, "ct_weighting") not in (None, CT_DEFAULTS["ct_weighting"]):
        notes.append(f"{setting(r, 'ct_weighting')} weighting")
    if setting(r, "fm_z_input") not in (None, FM_Z_INPUT):
        notes.append(f"{setting(r, 'fm_z_input')} input")
    if r["embedding"] != "prototype":
        return f"{r['embedding']} ({', '.join(notes)})" if notes else r["embedding"]
    scale = r.get("prototype_scale")
    if scale not in (None, "raw"):
        notes.append(f"{scale} scale")
    if r.get("fixed_embedding"):
        notes.append("fixed")
    return f"prototype ({', '.join(notes)})" if notes else "prototype"


def stopped_early(r: dict) -> bool:
    """Whether the run stopped before the end of its schedule (`--stop-after`, `--time-budget`)."""
    return r.get("planned_epochs", r["epochs"]) > r["epochs"]


def epochs_cell(r: dict) -> str:
    """The epochs (as "16 of 30" for a run stopped before its schedule's end), with the recipe's
    departures from the paper's constant rate and unaugmented data: a cosine-decayed learning
    rate, random shifts of the training images."""
    notes = []
    if r.get("lr_schedule") == "cosine":
        notes.append("cosine lr")
    if r.get("augment_shift"):
        notes.append(f"shift aug. ±{r['augment_shift']} px")
    if r.get("weight_decay") == 0:
        notes.append("no weight decay")
    epochs = str(r["epochs"])
    if stopped_early(r):
        epochs += f" of {r['planned_epochs']}"
    return epochs + (f" ({', '.join(notes)})" if notes else "")


# Training-set sizes of the full datasets, for records made before they held `train_size`.
FULL_TRAIN_SIZE = {"mnist": 60000, "cifar10": 50000, "cifar100": 50000}


def train_size(record: dict) -> str:
    """The number of training images a record's run used, as text ("?" where unknown)."""
    if record.get("train_size") is not None:
        return str(record["train_size"])
    if record.get("limit_train") is not None:
        return str(record["limit_train"])
    return str(FULL_TRAIN_SIZE.get(record["dataset"], "?"))


def table(records: list[dict]) -> str:
    head = (
        "| variant | embedding | model | train / test images | epochs | test acc. % "
        "| deterministic % | block average % | best % (epoch) | inference (NFE) | train time "
        "| wall time | paper % | device | compute | commit |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        train = train_size(r)
        if r["dataset"] != "mnist":
            train = f"{r['dataset']} {train}"
        test = str(r.get("test_size", "?"))
        infer = "–"
        if r.get("inference_solver"):
            steps = r.get("eval_steps")
            infer = f"{r['inference_solver']}{'' if steps is None else f' {steps}'} ({r['nfe']})"
        paper = paper_value(r)
        lines.append(
            "| "
            + " | ".join(
                [
                    NAMES.get(r["variant"], r["variant"]),
                    embedding_cell(r),
                    r["model"],
                    f"{train} / {test}",
                    epochs_cell(r),
                    accuracy_cell(r),
                    _pct(r.get("accuracy_deterministic")),
                    _pct(r.get("accuracy_blocks")),
                    f"{_pct(r['best_accuracy'])} ({r.get('best_epoch', '?')})",
                    infer,
                    f"{r['train_time_s'] / 60:.1f} min",
                    f"{r['wall_time_s'] / 60:.1f} min",
                    "–" if paper is None else f"{paper:.2f}",
                    r["device"],
                    r.get("compute_dtype", "float32"),
                    str(r.get("commit")),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def _protocol_rows(records: list[dict]) -> list[dict]:
    """The first record of each multi-seed run; its records share `protocol_seeds`, variant,
    embedding, epochs, command and commit, and each carries the run's statistic."""
    rows: dict[tuple, dict] = {}
    for r in records:
        if not r.get("protocol_seeds"):
            continue
        key = (r["variant"], r["embedding"], r["epochs"], r["command"], r.get("commit"))
        rows.setdefault(key, r)
    return list(rows.values())


def _pooled_rows(records: list[dict]) -> list[dict]:
    """One row per set of `SETTINGS` that at least two seeds share, single-seed and multi-seed
    runs alike; the latest finished record of each seed counts (a run stopped early by
    `--stop-after` does not). The statistic is recomputed over the pooled records."""
    from noprop_eqx import protocol_statistic

    groups: dict[tuple, dict[int, dict]] = {}
    for r in records:
        if stopped_early(r):
            continue
        key = tuple(json.dumps(setting(r, name), sort_keys=True) for name in SETTINGS)
        groups.setdefault(key, {})[r["seed"]] = r
    rows = []
    for by_seed in groups.values():
        if len(by_seed) < 2:
            continue
        seeds = sorted(by_seed)
        pooled = [by_seed[seed] for seed in seeds]
        commits = sorted({str(r.get("commit")) for r in pooled})
        rows.append(dict(pooled[0], **protocol_statistic(pooled), commit=" ".join(commits)))
    return rows


def protocol_table(records: list[dict], *, pool: bool = False) -> str:
    """One row per multi-seed run (`noprop-eqx train --seeds ...`), or with `pool` per set of
    settings several seeds share: the paper's statistic, mean ± s.e. over every seed's
    stochastic runs, beside the deterministic read-out's mean ± s.e. over the seeds."""
    head = (
        "| variant | embedding | epochs | seeds | stochastic % (paper's read-out, n) "
        "| deterministic % (mean over seeds) | paper % | device | commit |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in _pooled_rows(records) if pool else _protocol_rows(records):
        paper = paper_value(r)
        stochastic = "–"
        if r.get("protocol_stochastic_mean") is not None:
            stochastic = (
                f"{100 * r['protocol_stochastic_mean']:.2f} ± "
                f"{100 * r['protocol_stochastic_se']:.2f} (n={r['protocol_n']})"
            )
        deterministic = f"{100 * r['protocol_deterministic_mean']:.2f}"
        if r.get("protocol_deterministic_se") is not None:
            deterministic += f" ± {100 * r['protocol_deterministic_se']:.2f}"
        cells = [
            NAMES.get(r["variant"], r["variant"]),
            embedding_cell(r),
            epochs_cell(r),
            " ".join(str(s) for s in r["protocol_seeds"]),
            stochastic,
            deterministic,
            "–" if paper is None else f"{paper:.2f}",
            r["device"],
            str(r.get("commit")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS, help=f"default {RESULTS}")
    p.add_argument("--write", type=Path, default=None, help="also write the table here")
    p.add_argument(
        "--full-data",
        action="store_true",
        help="only runs on the full training and test sets (no --limit-train/--limit-test)",
    )
    p.add_argument(
        "--protocol",
        action="store_true",
        help="one row per multi-seed run: the paper's 3 seeds x 5 stochastic runs statistic",
    )
    p.add_argument(
        "--pool",
        action="store_true",
        help="with --protocol: also pool separate runs whose settings differ only in the seed",
    )
    args = p.parse_args(argv)
    if args.pool and not args.protocol:
        p.error("--pool goes with --protocol")
    if not args.results.is_file():
        raise SystemExit(f"no results file at {args.results}; run noprop-eqx train --results ...")
    records = json.loads(args.results.read_text())
    if not isinstance(records, list):
        raise SystemExit(f"expected {args.results} to hold a JSON list of run records")
    if args.full_data:
        records = [
            r for r in records if r.get("limit_train") is None and r.get("limit_test") is None
        ]
    text = protocol_table(records, pool=args.pool) if args.protocol else table(records)
    print(text, end="")
    if args.write is not None:
        args.write.write_text(text)
    return text


if __name__ == "__main__":
    main()
