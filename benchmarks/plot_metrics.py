"""Test accuracy against epoch and against training time, for any set of `metrics.jsonl` files.

`noprop-eqx train` writes `curves.png` for the variants of one output folder; this script puts
runs from different folders (embeddings, seeds, devices) on one figure:

    python benchmarks/plot_metrics.py --out benchmarks/results/mnist_prototype_cpu.png \
        --title "NoProp-DT on MNIST, 2-core CPU" \
        "one-hot, seed 0=benchmarks/results/mnist-cpu-metrics/DT.jsonl" \
        "prototype raw, seed 1=benchmarks/results/mnist-cpu-metrics/DT-prototype-seed1.jsonl"

Each positional argument is `LABEL=PATH`, split at its last `=` (a label may hold one). A
horizontal line can mark a target (`--target 99.5`).
"""

import argparse
import json
from pathlib import Path


def read_series(path: Path) -> dict[str, list[float]]:
    """Epochs, test accuracy (%) and cumulative training time (min) of one metrics file."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no epochs")
    missing = {"epoch", "test_accuracy", "train_time_s"} - set(lines[0])
    if missing:
        raise ValueError(f"{path} is not a noprop-eqx metrics.jsonl: no {sorted(missing)}")
    return dict(
        epoch=[m["epoch"] for m in lines],
        accuracy=[100 * m["test_accuracy"] for m in lines],
        minutes=[m["train_time_s"] / 60 for m in lines],
    )


def _label_path(text: str) -> tuple[str, Path]:
    label, sep, path = text.rpartition("=")  # the last "=": a label may hold one ("d=20")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {text!r}")
    return label, Path(path)


# Ten colours, then the same ten dashed with square markers, then dotted with triangles:
# up to 30 series each keep a style of their own.
_COLOURS = [f"C{i}" for i in range(10)]
_LINES = [("-", "o"), ("--", "s"), (":", "^")]


def _style(i: int) -> dict:
    linestyle, marker = _LINES[(i // len(_COLOURS)) % len(_LINES)]
    return dict(color=_COLOURS[i % len(_COLOURS)], linestyle=linestyle, marker=marker)


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=_label_path, help="LABEL=PATH to a metrics.jsonl")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--title", default="test accuracy")
    p.add_argument("--target", type=float, default=None, help="draw a target line at this %%")
    p.add_argument("--ymin", type=float, default=None, help="lower limit of the accuracy axis")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(label, read_series(path)) for label, path in args.runs]
    legend_height = 0.22 * ((len(series) + 1) // 2)  # inches: two legend columns
    fig_height = 4.5 + legend_height
    fig, axes = plt.subplots(1, 2, figsize=(12, fig_height), sharey=True)
    for i, (label, s) in enumerate(series):
        final = f"{label} ({s['accuracy'][-1]:.2f}%)"
        style = _style(i)
        axes[0].plot(s["epoch"], s["accuracy"], label=final, **style)
        axes[1].plot(s["minutes"], s["accuracy"], **style)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("training time (min)")
    axes[0].set_ylabel("test accuracy (%)")
    for ax in axes:
        if args.target is not None:
            ax.axhline(args.target, color="grey", linestyle="--", linewidth=1)
        if args.ymin is not None:
            ax.set_ylim(bottom=args.ymin)
        ax.grid(alpha=0.3)
    fig.suptitle(args.title)
    # The legend goes below both panels, so that it hides no point.
    fig.legend(fontsize=8, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, legend_height / fig_height, 1, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
