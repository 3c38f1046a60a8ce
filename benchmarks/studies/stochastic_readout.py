"""Why the ODE from z_0 ~ N(0, I) scores below the ODE from z_0 = 0 (NoProp-CT/FM).

A well-learned flow carries N(0, I) to the class embeddings distributed as the model's
p(y | x): from a random start it *samples* a class, so its accuracy is the mean over test
images of p(correct | x), while the start z_0 = 0 (the noise's mean) follows the
posterior's centre. If that is the whole story:

- the majority vote of many stochastic solves recovers (about) the deterministic accuracy;
- each stochastic run's accuracy equals the mean, over images, of the fraction of runs that
  land on the true class (true by definition), and the gap to the deterministic accuracy is
  concentrated on images where the runs disagree.

The script measures these on a trained run folder: K stochastic solves of every test image,
their mean accuracy, the vote's accuracy, the deterministic accuracy, and the share of images
whose K solves do not all agree.

    python benchmarks/studies/stochastic_readout.py --run-dir runs/cifar10/e100/FM \\
        --dataset cifar10 --data-dir DATA --runs 20
"""

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common  # noqa: E402

import noprop_eqx as npx  # noqa: E402
from noprop_eqx._loop import solver_kwargs  # noqa: E402


def predictions(model, x, key, kwargs, batch_size=1000):
    """Class predictions for every image: deterministic with key None, else one N(0, I) start
    per image (batch i uses fold_in(key, i), as `evaluate_accuracy` does)."""
    predict = jax.jit(lambda m, xb, k: m.predict(xb, key=k, **kwargs), static_argnums=())
    out = []
    for i, start in enumerate(range(0, len(x), batch_size)):
        xb = jnp.asarray(x[start : start + batch_size])
        k = None if key is None else jr.fold_in(key, i)
        out.append(np.asarray(predict(model, xb, k)))
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--limit-test", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/studies/results/stochastic_readout.json")
    args = parser.parse_args()
    ds = npx.data.load_dataset(args.dataset, args.data_dir)
    model, _, epoch, _, config = npx.load_run(args.run_dir, ds)
    variant = config["variant"]
    kwargs = solver_kwargs(variant, config.get("eval_solver", "heun"), config.get("eval_steps", 20))
    x, y = ds.x_test, ds.y_test
    if args.limit_test:
        x, y = x[: args.limit_test], y[: args.limit_test]
    tic = time.perf_counter()
    deterministic = predictions(model, x, None, kwargs)
    runs = np.stack(
        [
            predictions(model, x, k, kwargs)
            for k in jr.split(jr.fold_in(jr.key(args.seed), 1_000_003), args.runs)
        ]
    )
    seconds = time.perf_counter() - tic
    num_classes = ds.num_classes
    counts = np.stack([(runs == c).sum(axis=0) for c in range(num_classes)], axis=1)
    vote = counts.argmax(axis=1)
    agree_all = (runs == runs[0]).all(axis=0)
    frac_true = (runs == y).mean(axis=0)
    per_run = (runs == y).mean(axis=1)
    result = dict(
        run_dir=npx._records.portable_path(Path(args.run_dir)),
        variant=variant,
        epoch=epoch,
        dataset=ds.name,
        test_images=len(y),
        runs=args.runs,
        deterministic_accuracy=float((deterministic == y).mean()),
        stochastic_accuracy_mean=float(per_run.mean()),
        stochastic_accuracy_se=float(per_run.std(ddof=1) / np.sqrt(args.runs)),
        mean_fraction_of_runs_on_true_class=float(frac_true.mean()),
        vote_accuracy=float((vote == y).mean()),
        vote_equals_deterministic=float((vote == deterministic).mean()),
        images_where_runs_disagree=float(1 - agree_all.mean()),
        deterministic_accuracy_where_runs_agree=float((deterministic == y)[agree_all].mean()),
        stochastic_accuracy_where_runs_agree=float(frac_true[agree_all].mean()),
        deterministic_accuracy_where_runs_disagree=float((deterministic == y)[~agree_all].mean()),
        stochastic_accuracy_where_runs_disagree=float(frac_true[~agree_all].mean()),
        seconds=seconds,
        environment=_common.environment(),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(npx._records.scrub_paths(result), indent=1) + "\n")
    for k, v in result.items():
        if k != "environment":
            print(f"{k}: {v}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
