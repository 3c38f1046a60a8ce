"""The accuracy curves a training run draws beside its records."""

from pathlib import Path

from ._records import read_metrics


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
