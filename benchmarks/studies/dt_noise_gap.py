"""Where the paper's stochastic NoProp-DT read-out loses accuracy against the deterministic
chain, block by block (issue 18, finding 4).

Eq. 3 has T + 1 sources of randomness: the start z_0 ~ N(0, I) and the noise √c_t ε_t added
after each block t. On a trained DT run folder the script measures the accuracy of:

- the deterministic chain (z_0 = 0, every ε_t = 0) and the paper's chain (all noise on);
- the chain with only z_0 random, and, for each block k, with only ε_k on: where the noise
  hurts;
- the read-out of each intermediate z_t along the deterministic and the paper's chain, and the
  argmax of each block's own class logits: where along the chain the class is decided.

First, in seconds, it gives the class embeddings' geometry: their norms and pairwise distances,
and the smallest distance in units of the noise's standard deviation √c_t along any direction
(the noise is N(0, c_t I) whatever the embedding); the same for the embedding the run started
from (rebuilt from its config.json and seed), and how far training moved it, ‖W - W_0‖ / ‖W_0‖.
`--geometry-only` stops there (and with `--out` writes that much).

Stochastic figures are means over `--runs` runs on the same test images.

    python benchmarks/studies/dt_noise_gap.py --run-dir runs/protocol/seed0/DT \\
        --dataset mnist --data-dir DATA --runs 5
"""

import argparse
import json
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common  # noqa: E402

import noprop_eqx as npx  # noqa: E402
from noprop_eqx._checkpoint import model_from_config  # noqa: E402
from noprop_eqx._loop import run_keys  # noqa: E402
from noprop_eqx._losses import expected_embedding  # noqa: E402
from noprop_eqx.models import apply_batched  # noqa: E402
from noprop_eqx.noise_schedules import alpha_bar_grid, posterior_coefficients  # noqa: E402


def embedding_geometry(w_embed, c) -> dict:
    """Norms and pairwise distances of the class embeddings (rows of `w_embed`), and the
    smallest distance over the largest noise standard deviation after a block, max_t √c_t
    (the first block's, near 1): how many standard deviations apart the two closest classes
    sit along the line between them."""
    w = np.asarray(w_embed, dtype=np.float64)
    d = np.sqrt(((w[:, None] - w[None]) ** 2).sum(-1))[np.triu_indices(len(w), 1)]
    return dict(
        dim=int(w.shape[1]),
        norm_mean=round(float(np.linalg.norm(w, axis=1).mean()), 4),
        distance_min=round(float(d.min()), 4),
        distance_median=round(float(np.median(d)), 4),
        distance_max=round(float(d.max()), 4),
        distance_min_over_sqrt_c_max=round(float(d.min() / np.sqrt(np.max(c))), 4),
    )


def initial_embedding(config: dict, ds) -> np.ndarray:
    """The class embedding a run started from: its model rebuilt from `config.json` with the
    run's model key (a prototype embedding from the run's training images)."""
    if config.get("limit_train"):
        ds = ds.subset(config["limit_train"], None, seed=config.get("subset_seed"))
    model = model_from_config(config, ds, key=run_keys(config["seed"], config["variant"])[0])
    return np.asarray(model.embedding.matrix())


def embedding_report(w_embed, w_initial, c) -> dict:
    """`embedding_geometry` of the trained and the initial embedding, and the drift between
    them, ‖W - W_0‖ / ‖W_0‖ (Frobenius norms; 0 for a fixed embedding)."""
    w, w0 = np.asarray(w_embed, dtype=np.float64), np.asarray(w_initial, dtype=np.float64)
    drift = np.linalg.norm(w - w0) / np.linalg.norm(w0)
    return dict(
        embedding_geometry(w, c),
        initial=embedding_geometry(w0, c),
        drift_relative=round(float(drift), 4),
    )


@eqx.filter_jit
def chain(model, x, z, noise, start=0):
    """Eq. 3 from block `start` (0-based; a Python int, so static) on, entered with z and given
    the noise of blocks start..T-1, (T - start, batch, dim); returns each of those blocks' class
    logits, the readout's logits of the z it makes, and that z."""
    a, b, c = posterior_coefficients(alpha_bar_grid(model.schedule, model.num_blocks))
    w_embed = model.embedding.matrix()
    block_logits, readout_logits, zs = [], [], []
    for t in range(start, model.num_blocks):
        logits = apply_batched(model.block(t), z, x)
        u_hat = jax.vmap(expected_embedding, (0, None))(logits, w_embed)
        z = a[t] * u_hat + b[t] * z + jnp.sqrt(c[t]) * noise[t - start]
        block_logits.append(logits)
        readout_logits.append(jax.vmap(model.readout)(z))
        zs.append(z)
    return jnp.stack(block_logits), jnp.stack(readout_logits), jnp.stack(zs)


def _draw(key, i, n, T, dim):
    """The start and the per-block noise of the batch at offset i: the same for every case."""
    k0, k_eps = jr.split(jr.fold_in(key, i))
    return jr.normal(k0, (n, dim)), jr.normal(k_eps, (T, n, dim))


def correct(model, x, y, key, mask_start: bool, mask_blocks, batch=1000, keep_z=False):
    """Per-step correctness (T,) of the block argmax and of the readout of z_t, summed over
    images: start and noise drawn from `key`, then kept only where the masks say. With
    `keep_z`, also every batch's z_1..z_T (for `correct_one_block`)."""
    T, dim = model.num_blocks, model.embedding.dim
    mask_blocks = jnp.asarray(mask_blocks, dtype=float)[:, None, None]
    blocks, readouts, kept = np.zeros(T), np.zeros(T), []
    for i in range(0, len(x), batch):
        xb, yb = jnp.asarray(x[i : i + batch]), np.asarray(y[i : i + batch])
        z0, noise = _draw(key, i, len(yb), T, dim)
        bl, rl, zs = chain(model, xb, z0 * float(mask_start), noise * mask_blocks)
        blocks += (np.asarray(jnp.argmax(bl, -1)) == yb).sum(axis=1)
        readouts += (np.asarray(jnp.argmax(rl, -1)) == yb).sum(axis=1)
        if keep_z:
            kept.append(zs)
    out = blocks / len(x), readouts / len(x)
    return (*out, kept) if keep_z else out


def correct_one_block(model, x, y, key, k: int, deterministic, batch=1000):
    """`correct` with the noise after block k (0-based) only and z_0 = 0, from the cached
    deterministic chain: blocks 0..k-1 see no noise, so their results and z are the
    deterministic ones (`deterministic` = `correct(..., keep_z=True)` without noise) and only
    blocks k..T-1 run. The noise is drawn as in `correct`, so the figures match it."""
    T, dim = model.num_blocks, model.embedding.dim
    det_blocks, det_readouts, det_z = deterministic
    blocks, readouts = np.zeros(T), np.zeros(T)
    blocks[:k], readouts[:k] = det_blocks[:k] * len(x), det_readouts[:k] * len(x)
    for j, i in enumerate(range(0, len(x), batch)):
        xb, yb = jnp.asarray(x[i : i + batch]), np.asarray(y[i : i + batch])
        _, noise = _draw(key, i, len(yb), T, dim)
        noise = noise[k:] * (jnp.arange(T - k) == 0)[:, None, None]
        z = det_z[j][k - 1] if k > 0 else jnp.zeros((len(yb), dim))
        bl, rl, _ = chain(model, xb, z, noise, k)
        blocks[k:] += (np.asarray(jnp.argmax(bl, -1)) == yb).sum(axis=1)
        readouts[k:] += (np.asarray(jnp.argmax(rl, -1)) == yb).sum(axis=1)
    return blocks / len(x), readouts / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--limit-test", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON path (default: print only)")
    parser.add_argument(
        "--geometry-only",
        action="store_true",
        help="print the class embeddings' norms and distances, then stop",
    )
    args = parser.parse_args()

    ds = npx.data.load_dataset(args.dataset, args.data_dir)
    model, _, epoch, _, config = npx.load_run(args.run_dir, ds)
    if config["variant"] != "DT":
        raise SystemExit(f"expected a NoProp-DT run folder, got variant {config['variant']}")
    x, y = ds.x_test[: args.limit_test], ds.y_test[: args.limit_test]
    T = model.num_blocks
    _, _, c = posterior_coefficients(alpha_bar_grid(model.schedule, T))
    geometry = embedding_report(model.embedding.matrix(), initial_embedding(config, ds), c)
    for name, g in (("initial", geometry["initial"]), ("trained", geometry)):
        print(
            f"{config['embedding']} embedding, {name}, dim {g['dim']}: mean norm "
            f"{g['norm_mean']:.2f}, pairwise distance min / median / max "
            f"{g['distance_min']:.2f} / {g['distance_median']:.2f} / "
            f"{g['distance_max']:.2f}, min over max sqrt(c) "
            f"{g['distance_min_over_sqrt_c_max']:.2f}",
            flush=True,
        )
    print(f"drift ||W - W_0|| / ||W_0||: {geometry['drift_relative']:.4f}", flush=True)
    if args.geometry_only:
        if args.out:
            header = dict(
                run_dir=npx._records.portable_path(Path(args.run_dir)),
                epoch=epoch,
                embedding=config["embedding"],
                dataset=ds.name,
                embedding_geometry=geometry,
                environment=_common.environment(),
            )
            write_json(Path(args.out), header)
        return
    tic = time.perf_counter()
    keys = jr.split(jr.key(args.seed), args.runs)
    stages = T + 3  # deterministic, the paper's, z_0 only, one per block
    done = 0

    def progress(what: str) -> None:
        # Each stage is one or `--runs` passes over the test images: a long study on CPU
        # says how far it has come, on stderr, so that stdout stays the result.
        nonlocal done
        done += 1
        print(
            f"[{done}/{stages}] {what} done, {time.perf_counter() - tic:.0f}s",
            file=sys.stderr,
            flush=True,
        )

    def mean_over_runs(mask_start, mask_blocks, block=None):
        if block is None:
            out = [correct(model, x, y, k, mask_start, mask_blocks) for k in keys]
        else:
            out = [correct_one_block(model, x, y, k, block, det) for k in keys]
        blocks = np.mean([o[0] for o in out], axis=0)
        readouts = np.array([o[1] for o in out])
        final = readouts[:, -1]
        return dict(
            accuracy=round(100 * float(final.mean()), 3),
            se=round(100 * float(final.std(ddof=1) / np.sqrt(len(final))), 3),
            block_argmax=(100 * blocks).round(2).tolist(),
            readout_of_z_t=(100 * readouts.mean(axis=0)).round(2).tolist(),
        )

    det = correct(model, x, y, keys[0], False, np.zeros(T), keep_z=True)
    det_blocks, det_readouts, _ = det
    deterministic = dict(
        accuracy=round(100 * float(det_readouts[-1]), 3),
        block_argmax=(100 * det_blocks).round(2).tolist(),
        readout_of_z_t=(100 * det_readouts).round(2).tolist(),
    )
    progress("deterministic chain")
    paper = mean_over_runs(True, np.ones(T))
    progress("the paper's stochastic chain")
    start_only = mean_over_runs(True, np.zeros(T))
    progress("z_0 noise only")
    per_block = []
    for k in range(T):
        r = mean_over_runs(False, np.eye(T)[k], block=k)
        progress(f"noise after block {k + 1} only")
        per_block.append(
            dict(
                block=k + 1,
                sqrt_c=round(float(jnp.sqrt(c[k])), 4),
                accuracy=r["accuracy"],
                se=r["se"],
                drop=round(deterministic["accuracy"] - r["accuracy"], 3),
            )
        )
    result = dict(
        run_dir=npx._records.portable_path(Path(args.run_dir)),
        epoch=epoch,
        embedding=config["embedding"],
        dataset=ds.name,
        test_images=len(y),
        runs=args.runs,
        embedding_geometry=geometry,
        deterministic=deterministic,
        paper_stochastic=paper,
        start_noise_only=start_only,
        one_block_noise_only=per_block,
        seconds=round(time.perf_counter() - tic, 1),
        environment=_common.environment(),
    )
    print(f"epoch {epoch}, {len(y)} test images, {args.runs} runs")
    print(
        f"deterministic {deterministic['accuracy']:.2f}  paper's stochastic "
        f"{paper['accuracy']:.2f} ± {paper['se']:.2f}  z_0 only {start_only['accuracy']:.2f}"
    )
    print("block  sqrt(c)  acc with only eps_k   drop")
    for r in per_block:
        print(
            f"{r['block']:5d}  {r['sqrt_c']:.4f}  {r['accuracy']:.2f} ± {r['se']:.2f}  "
            f"{r['drop']:+.2f}"
        )
    print("readout of z_t, deterministic:", deterministic["readout_of_z_t"])
    print("readout of z_t, paper's:      ", paper["readout_of_z_t"])
    print("block argmax, deterministic:  ", deterministic["block_argmax"])
    print("block argmax, paper's:        ", paper["block_argmax"])
    if args.out:
        write_json(Path(args.out), result)


def write_json(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(npx._records.scrub_paths(result), indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
