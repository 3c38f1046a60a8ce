"""Epochs and seconds of training a run took to first reach given test accuracies.

Reads `metrics.jsonl` files (one line an epoch, as `noprop-eqx train` writes them) and prints a
Markdown table: for each run and each threshold, the first epoch whose test accuracy (the
deterministic read-out evaluated after every epoch) is at or above it, and the cumulative
training time at the end of that epoch (evaluation excluded), with the run's median epoch time
and its best epoch:

    python benchmarks/time_to_accuracy.py --thresholds 70,73 \
        "FM one-hot, seed 0=benchmarks/results/cifar10-cpu-metrics/FM.jsonl" \
        "FM learned, seed 0=benchmarks/results/cifar10-cpu-metrics/FM-learned.jsonl"

The times are those of the machine the run was trained on, shared or not; say which.
"""

import argparse
import statistics
from pathlib import Path

from plot_metrics import _label_path

from noprop_eqx._records import read_metrics


def read_epochs(path: Path) -> list[dict]:
    """The epochs of one metrics file (read as `noprop-eqx train` reads it on `--resume`),
    checked for the fields this script reads."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such metrics file")
    lines = read_metrics(path)
    if not lines:
        raise ValueError(f"{path} holds no epochs")
    for m in lines:
        missing = {"epoch", "test_accuracy", "train_time_s", "epoch_time_s"} - set(m)
        if missing:
            raise ValueError(
                f"{path} is not a noprop-eqx metrics.jsonl: epoch line {m.get('epoch', '?')} "
                f"has no {sorted(missing)}"
            )
    return lines


def first_reaching(epochs: list[dict], threshold: float) -> dict | None:
    """The first epoch at or above `threshold` (%), or None when none is."""
    for m in epochs:
        if 100 * m["test_accuracy"] >= threshold - 1e-9:  # 0.57 * 100 is 56.99999999999999
            return m
    return None


def summarise(epochs: list[dict], thresholds: list[float]) -> dict:
    best = max(epochs, key=lambda m: m["test_accuracy"])
    return dict(
        reached={t: first_reaching(epochs, t) for t in thresholds},
        median_epoch_s=statistics.median(m["epoch_time_s"] for m in epochs),
        epochs=epochs[-1]["epoch"],
        best=(100 * best["test_accuracy"], best["epoch"]),
        final=100 * epochs[-1]["test_accuracy"],
    )


def _cell(m: dict | None) -> str:
    if m is None:
        return "not reached"
    return f"epoch {m['epoch']}, {m['train_time_s']:,.0f} s"


def table(runs: list[tuple[str, dict]], thresholds: list[float]) -> str:
    head = ["run", *(f"{t:g}%" for t in thresholds), "s / epoch (median)", "epochs"]
    head += ["final %", "best % (epoch)"]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for label, s in runs:
        cells = [label, *(_cell(s["reached"][t]) for t in thresholds)]
        cells += [f"{s['median_epoch_s']:.1f}", str(s["epochs"]), f"{s['final']:.2f}"]
        cells.append(f"{s['best'][0]:.2f} ({s['best'][1]})")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=_label_path, help="LABEL=PATH to a metrics.jsonl")
    p.add_argument(
        "--thresholds",
        default="70,73",
        help="comma-separated test accuracies in %% (default: 70,73, the paper's Fig. 4 marks "
        "on CIFAR-10)",
    )
    args = p.parse_args(argv)
    try:
        thresholds = sorted({float(t) for t in args.thresholds.split(",")})
    except ValueError:
        p.error(
            f"--thresholds takes comma-separated numbers such as 70,73; got {args.thresholds!r}"
        )
    bad = [t for t in thresholds if not 0 < t <= 100]
    if bad:
        p.error(f"--thresholds are percentages in (0, 100]; got {bad}")
    runs = [(label, summarise(read_epochs(path), thresholds)) for label, path in args.runs]
    text = table(runs, thresholds)
    print(text)
    return text


if __name__ == "__main__":
    main()
