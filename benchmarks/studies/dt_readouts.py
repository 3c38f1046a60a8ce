"""How trained NoProp-DT models read out a class, and how far training moved their embedding.

For each DT run folder of `noprop-eqx train`, on the test set:

- `deterministic`: the library's `predict` (z_0 = 0, no noise in Eq. 3; the trained readout);
- `last_block`: the argmax of block T's class logits in that deterministic chain;
- `blocks`: `predict(x, readout="blocks")`, the argmax of the T blocks' class probabilities
  averaged along that chain (checked against `evaluate_accuracy(..., readout="blocks")`);
- `per_block`: each block's own argmax along that chain, block 1 to T (how many blocks
  classify the image, and how many copy the label already in z);
- `nearest`: the class whose embedding u_y is closest to the final z_T (the readout's start);
- `ensemble_K`: the argmax of the readout's softmax averaged over K stochastic chains (Eq. 3
  with z_0 ~ N(0, I) and its noise), i.e. K times the inference work.

The deterministic chain is computed once and must reproduce `evaluate_accuracy`, which is checked.
For embeddings that train (learned, prototype), it also compares the trained W_embed with the one
the run started from (rebuilt from the run's configuration): row norms, the smallest distance
between two classes, and how far each row moved.

    python benchmarks/studies/dt_readouts.py --run-dir runs/proto-seed1/DT-prototype \
        --data-dir DATA/mnist
    python benchmarks/studies/dt_readouts.py --run-dir RUN --quick   # 2 chains, 200 test images

Question asked: is the read-out, rather than the blocks, what holds a DT model back? A PNG
beside the JSON plots each block's accuracy along the chain, with both read-outs.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
STUDY_RESULTS = Path(__file__).resolve().parent / "results"

import argparse
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from _common import base_parser, write_results

import noprop_eqx as npx
from noprop_eqx._checkpoint import model_from_config
from noprop_eqx._loop import run_keys
from noprop_eqx._records import portable_path

COLUMNS = [
    ("label", "run"),
    ("epochs", "epochs"),
    ("deterministic_pct", "deterministic %"),
    ("last_block_pct", "last block %"),
    ("blocks_pct", "block average %"),
    ("nearest_pct", "nearest embedding %"),
    ("ensemble_pct", "stochastic ensemble %"),
    ("per_block_text", "each block's own argmax %, block 1 → T"),
    ("min_distance", "min class distance (start → trained)"),
    ("moved", "max row moved"),
]
READOUTS = ("deterministic", "last_block", "blocks", "nearest", "ensemble")


def with_display(row: dict) -> dict:
    """`row` plus the table's text cells: a run label and accuracies to 0.01 points."""
    label = row["embedding"]
    if label == "prototype":
        scale = row.get("prototype_scale") or "raw"
        label += " (raw" if scale == "raw" else f" ({scale} scale"
        label += ", fixed)" if row.get("fixed_embedding") else ", trained)"
    cells = {f"{k}_pct": "–" if row[k] is None else f"{row[k]:.2f}" for k in READOUTS}
    per_block = ", ".join(f"{a:.2f}" for a in row["per_block"])
    return dict(row, label=f"{label}, seed {row['seed']}", per_block_text=per_block, **cells)


@eqx.filter_jit
def _chain(model: npx.NoPropDT, x, key):
    """Eq. 3 (`NoPropDT.denoise_chain`): readout logits, every block's logits and z_T."""
    z, block_logits = model.denoise_chain(x, key=key)
    return jax.vmap(model.readout)(z), block_logits, z


def _min_distance(w: np.ndarray) -> float:
    d = np.sqrt(((w[:, None] - w[None]) ** 2).sum(-1))
    return float(d[np.triu_indices(len(w), 1)].min())


def evaluate_run(run: Path, ds, *, chains: int, batch_size: int, seed: int) -> dict:
    model, _, epoch, _, config = npx.load_run(run, ds)
    if not isinstance(model, npx.NoPropDT):
        raise ValueError(f"{run} is a {config['variant']} run; this benchmark reads DT runs")
    x, y = ds.x_test, np.asarray(ds.y_test)
    correct = dict.fromkeys(READOUTS, 0)
    per_block = np.zeros(model.num_blocks, dtype=np.int64)
    w = np.asarray(model.embedding.matrix())
    for i in range(0, len(x), batch_size):
        xb, yb = jnp.asarray(x[i : i + batch_size]), y[i : i + batch_size]
        readout, block_logits, z = _chain(model, xb, None)
        nearest = -((np.asarray(z)[:, None, :] - w[None]) ** 2).sum(-1)
        correct["deterministic"] += int((np.argmax(readout, -1) == yb).sum())
        block_pred = np.argmax(block_logits, -1)
        per_block += (block_pred == yb[None]).sum(axis=1)
        correct["last_block"] += int((block_pred[-1] == yb).sum())
        mean_probs = np.mean(jax.nn.softmax(block_logits, axis=-1), axis=0)
        correct["blocks"] += int((np.argmax(mean_probs, -1) == yb).sum())
        correct["nearest"] += int((np.argmax(nearest, -1) == yb).sum())
        probs = 0.0
        for k in range(chains):
            key = jr.fold_in(jr.fold_in(jr.key(seed), i), k)
            probs = probs + jax.nn.softmax(_chain(model, xb, key)[0])
        if chains:
            correct["ensemble"] += int((np.argmax(probs, -1) == yb).sum())
    accuracy = {k: v / len(y) for k, v in correct.items()}
    if not chains:
        accuracy["ensemble"] = None
    for name, readout in (("deterministic", "final"), ("blocks", "blocks")):
        reference = npx.evaluate_accuracy(model, x, y, readout=readout)
        if abs(reference - accuracy[name]) > 0.5 / len(y):
            raise AssertionError(
                f"{run}: the re-implemented chain gives {name} {accuracy[name]:.4f}, "
                f"evaluate_accuracy(readout={readout!r}) {reference:.4f}"
            )
    row = dict(
        run=portable_path(run),
        embedding=config["embedding"],
        prototype_scale=config.get("prototype_scale"),
        fixed_embedding=bool(config.get("fixed_embedding", False)),
        seed=config["seed"],
        epochs=epoch,
        chains=chains,
        test_size=len(y),
        **{k: None if v is None else round(100 * v, 2) for k, v in accuracy.items()},
        per_block=[round(100 * c / len(y), 2) for c in per_block.tolist()],
    )
    if config["embedding"] != "one-hot":
        start = model_from_config(config, ds, key=run_keys(config["seed"], "DT")[0])
        w0 = np.asarray(start.embedding.matrix())
        row.update(
            norms_start=np.linalg.norm(w0, axis=1).round(3).tolist(),
            norms_trained=np.linalg.norm(w, axis=1).round(3).tolist(),
            min_distance_start=round(_min_distance(w0), 3),
            min_distance_trained=round(_min_distance(w), 3),
            min_distance=f"{_min_distance(w0):.2f} → {_min_distance(w):.2f}",
            moved=round(float(np.linalg.norm(w - w0, axis=1).max()), 3),
        )
    return row


def plot_per_block(rows: list[dict], path: Path) -> Path:
    """Each block's own test accuracy along the deterministic chain, one line per run, with the
    two read-outs of the whole chain (readout of z_T, block average) as markers at the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row in rows:
        per_block = row["per_block"]
        blocks = list(range(1, len(per_block) + 1))
        label = f"{row['label']}, epoch {row['epochs']}"
        (line,) = ax.plot(blocks, per_block, marker="o", label=label)
        right = len(per_block) + 0.6
        ax.plot([right], [row["deterministic"]], marker="s", color=line.get_color())
        ax.plot([right + 0.4], [row["blocks"]], marker="*", ms=11, color=line.get_color())
    ax.set_xlabel("block t (its argmax on z_{t-1} of the deterministic chain)")
    ax.set_ylabel("test accuracy %")
    ax.set_title("DT blocks along the chain; ■ readout of z_T, ★ block average")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def parse_args(argv=None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0], STUDY_RESULTS)
    p.add_argument("--run-dir", type=Path, nargs="+", required=True, help="DT run folders")
    p.add_argument("--data-dir", default=None, help="as for `noprop-eqx train --data-dir`")
    p.add_argument(
        "--chains", type=int, default=16, help="stochastic chains in the ensemble (0 skips it)"
    )
    p.add_argument("--limit-test", type=int, default=None, help="first N test images only")
    p.add_argument("--batch-size", type=int, default=1000)
    args = p.parse_args(argv)
    if args.quick:
        args.chains, args.limit_test = 2, args.limit_test or 200
    if args.chains < 0:
        p.error(f"--chains must be 0 or more, got {args.chains}")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    rows, datasets = [], {}
    for run in args.run_dir:
        config_path = run / "config.json"
        if not config_path.is_file():
            raise SystemExit(f"dt_readouts: error: no config.json in {run}")
        config = json.loads(config_path.read_text())
        name = (config["dataset"], config["limit_train"])
        if name not in datasets:
            ds = npx.data.load_dataset(config["dataset"], args.data_dir)
            datasets[name] = ds.subset(
                config["limit_train"], args.limit_test, seed=config.get("subset_seed")
            )
        row = evaluate_run(
            run, datasets[name], chains=args.chains, batch_size=args.batch_size, seed=args.seed
        )
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(with_display(row))
        write_results("dt_readouts", args, rows, COLUMNS, quiet=True)
    json_path = write_results("dt_readouts", args, rows, COLUMNS)
    print(f"wrote {plot_per_block(rows, json_path.with_suffix('.png'))}")
    return rows


if __name__ == "__main__":
    main()
