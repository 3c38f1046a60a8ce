"""Why NoProp-CT learns slowly in its first epochs, and which change that keeps the paper's
method speeds it up (issue 18, finding 5).

Eq. 9's denoising term weights each example by SNR'(t). Started (as the library did before
this study) with γ from 5 (t = 0) to -5 (t = 1), nearly linear in t, the learned schedule has
SNR'(t) ≈ 10·exp(10t - 5), from 0.07 to 1,500: more than half of the term's weight sits at
t > 0.93, where z_t already shows the label and û can copy it without looking at the image.
The script trains CT on MNIST under a few settings, each from the same initial model and batch
order, and reports after every epoch:

- the test accuracy of the deterministic read-out (Heun 20 from z_0 = 0);
- the *per-t accuracy*: for t in ten bins, z_t ~ q(z_t | y) on test images and whether
  argmax û_θ(z_t, x, t) is the label: where along t the network has learned to use x;
- the learned schedule's end points γ0 = γ(1) and γ1 = γ(0).

Settings (name: what differs from `paper`):

- `paper`: Adam + L2 weight decay 1e-3, t ~ U[0, 1] per example, γ from 5 to -5 (the
  library's default before this study; it now starts from 2 to -2, `gamma2`);
- `no-wd`: plain Adam (the library before the weight-decay fix);
- `stratified`: the batch's t spread evenly over [0, 1] (same expectation, lower variance);
- `gamma3`: the learned schedule initialised from γ = 3 to -3 (SNR' spans 400x, not 22,000x);
- `gamma3-stratified`: both;
- `gamma2`, `gamma1`: from 2 to -2, from 1 to -1; `gamma-3to5`: from 5 to -3;
- `gamma2-fixed`: from 2 to -2 and held there (`LearnedNoiseSchedule(fixed=True)`, the
  library's `--ct-fixed-schedule`): what the schedule's drift does, a departure from the paper;
- `wide-fixed`: held from 5 to -4 (wide ends, as the learned schedule drifts to);
- `wide-fixed-logsnr`: the same with the denoising term weighted by SNR'(t) / SNR(t)
  (`NoPropCT(weighting="log-snr")`, `--ct-weighting log-snr`), a departure from Eq. 9;
- `wide-logsnr`: that weighting with the schedule learned from 5 to -4.

Each epoch also reports the paper's stochastic read-out (one run: Heun 20 from z_0 ~ N(0, I)).

    python benchmarks/studies/ct_early.py --data-dir DATA --epochs 1 --settings paper gamma3
"""

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
from noprop_eqx._losses import sample_q  # noqa: E402
from noprop_eqx.noise_schedules import LearnedNoiseSchedule  # noqa: E402

SETTINGS = {
    "paper": dict(),
    "no-wd": dict(weight_decay=0.0),
    "stratified": dict(t_sampling="stratified"),
    "gamma3": dict(gamma=(-3.0, 3.0)),
    "gamma3-stratified": dict(gamma=(-3.0, 3.0), t_sampling="stratified"),
    "gamma2": dict(gamma=(-2.0, 2.0)),
    "gamma1": dict(gamma=(-1.0, 1.0)),
    "gamma-3to5": dict(gamma=(-3.0, 5.0)),
    "gamma2-fixed": dict(gamma=(-2.0, 2.0), fixed=True),
    "wide-fixed": dict(gamma=(-4.0, 5.0), fixed=True),
    "wide-fixed-logsnr": dict(gamma=(-4.0, 5.0), fixed=True, weighting="log-snr"),
    "wide-logsnr": dict(gamma=(-4.0, 5.0), weighting="log-snr"),
}
T_BINS = np.linspace(0.05, 0.95, 10)


def build(setting: dict, data, backbone: str, key):
    k_model, k_schedule = jr.split(key)
    gamma = setting.get("gamma", (-5.0, 5.0))
    model = npx.NoPropCT(
        data.num_classes,
        data.image_shape,
        backbone=backbone,
        t_sampling=setting.get("t_sampling", "uniform"),
        weighting=setting.get("weighting", "snr-prime"),
        schedule=LearnedNoiseSchedule(
            gamma[0], gamma[1], fixed=setting.get("fixed", False), key=k_schedule
        ),
        key=k_model,
    )
    optimizer = npx.paper_optimizer(model, weight_decay=setting.get("weight_decay", 1e-3))
    return model, optimizer


@jax.jit
def _per_t_correct(model, x, y, key):
    """For every t in T_BINS: how many of (x, y) have argmax û(z_t, x, t) = y, z_t ~ q
    (dropout off: no keys)."""
    u = model.embedding.matrix()[y]

    def one_t(t, k):
        ab = model.schedule.alpha_bar(t)
        z = jax.vmap(lambda ui, ki: sample_q(ui, ab, key=ki))(u, jr.split(k, len(y)))
        logits = npx.models.apply_batched(model.net, z, x, jnp.full((len(y),), t))
        return jnp.sum(jnp.argmax(logits, -1) == y)

    return jax.vmap(one_t)(jnp.asarray(T_BINS), jr.split(key, len(T_BINS)))


def per_t_accuracy(model, x, y, key, batch=1000):
    total = np.zeros(len(T_BINS))
    for i in range(0, len(x), batch):
        total += np.asarray(
            _per_t_correct(
                model,
                jnp.asarray(x[i : i + batch]),
                jnp.asarray(y[i : i + batch]),
                jr.fold_in(key, i),
            )
        )
    return (total / len(x)).round(4).tolist()


def main() -> None:
    parser = _common.base_parser(__doc__.splitlines()[0], Path(__file__).parent / "results")
    parser.add_argument("--dataset", default="mnist", help="mnist (the study) or digits (tests)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default="paper", help="backbone: paper (the study), simple")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--limit-test", type=int, default=None)
    parser.add_argument("--per-t-images", type=int, default=2000)
    args = parser.parse_args()
    _common.apply_jax_options(args)

    data = npx.data.load_dataset(args.dataset, args.data_dir)
    x_train, y_train = data.x_train[: args.limit_train], data.y_train[: args.limit_train]
    x_test, y_test = data.x_test[: args.limit_test], data.y_test[: args.limit_test]
    rows = []
    for name in args.settings:
        model, optimizer = build(SETTINGS[name], data, args.model, jr.key(args.seed))
        opt_state = npx.init_optimizer_state(model, optimizer)
        step = npx.make_step(npx.NoPropCT.loss_fn, optimizer)
        k_run = jr.key(1000 + args.seed)
        elapsed = 0.0
        for epoch in range(1, args.epochs + 1):
            k_data = jr.fold_in(k_run, epoch)
            sums, count = {}, 0
            start = time.perf_counter()
            for i, batch in enumerate(npx.data.train_batches(x_train, y_train, 128, key=k_data)):
                model, opt_state, aux = step(model, opt_state, batch, jr.fold_in(k_data, 10**6 + i))
                for k, v in aux.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
            jax.block_until_ready(model)
            elapsed += time.perf_counter() - start
            acc = npx.evaluate_accuracy(model, x_test, y_test, **solver_kwargs("CT"))
            acc_stochastic = npx.evaluate_accuracy(
                model, x_test, y_test, key=jr.key(100 + epoch), **solver_kwargs("CT")
            )
            per_t = per_t_accuracy(
                model, x_test[: args.per_t_images], y_test[: args.per_t_images], jr.key(7)
            )
            row = dict(
                setting=name,
                epoch=epoch,
                accuracy=round(100 * acc, 2),
                accuracy_stochastic=round(100 * acc_stochastic, 2),
                train_s=round(elapsed, 1),
                gamma_0=round(float(model.schedule.gamma_0), 3),
                gamma_1=round(float(model.schedule.gamma_1), 3),
                **{k: round(float(v) / count, 4) for k, v in sums.items()},
                per_t=per_t,
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
            _common.write_results(
                "ct_early",
                args,
                rows,
                [
                    ("setting", "setting"),
                    ("epoch", "epoch"),
                    ("accuracy", "test %"),
                    ("accuracy_stochastic", "stochastic %"),
                    ("gamma_0", "γ0"),
                    ("gamma_1", "γ1"),
                    ("denoise", "denoise"),
                    ("train_s", "train s"),
                ],
                extra=dict(t_bins=T_BINS.round(2).tolist()),
                quiet=True,
            )
    print(open(Path(args.out_dir) / f"ct_early{'-' + args.tag if args.tag else ''}.md").read())


if __name__ == "__main__":
    main()
