"""What does pooling before the bias and ReLU buy in a paper-network training step?

`PaperConvStack` computes conv → ReLU → 2×2 max-pool as `relu(max_pool(conv without bias) +
bias)` with the pool taken as the maximum of four strided views (`conv_pool_relu_hwc`). It is the
same function as the textbook order, `max_pool(relu(conv + bias))`, but the bias, the ReLU and
their gradients run on the pooled map. This script times the training steps with the stack in
each order, interleaved in one process (every repeat times each order once, so drifts in the
machine's speed hit all of them alike):

- "pool-first": the library's `PaperConvStack`;
- "relu-first": bias, ReLU, then the pool as a reshape-and-max (the previous formulation).

Before timing, it checks that both orders give the same loss and gradients for the same key
(relative tolerance 1e-4) and that a step changes the parameters; after warm-up it fails if a
timed step recompiles.

    python benchmarks/studies/pool_order.py    # DT-blockwise and backprop, batch 128
    python benchmarks/studies/pool_order.py --quick
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
STUDY_RESULTS = Path(__file__).resolve().parent / "results"

import contextlib
import time
from collections.abc import Iterator

import _common
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import noprop_eqx as npx
from noprop_eqx.models import PaperConvStack
from noprop_eqx.models._layers import conv_hwc, dropout
from noprop_eqx.models._paper import _split

ORDERS = ("pool-first", "relu-first")
VARIANTS = ("DT-blockwise", "backprop")
COLUMNS = [
    ("variant", "variant"),
    ("order", "conv → pool order"),
    ("batch", "batch"),
    ("images_per_s", "images/s"),
    ("ms_per_step", "ms/step (median)"),
    ("ms_spread", "ms min–max"),
    ("time_over_pool_first", "time ÷ pool-first"),
]


def _relu_first_call(self, x, *, key):
    """`PaperConvStack.__call__` in the textbook order: conv + bias → ReLU → pool, the pool as a
    reshape-and-max."""

    def pool(h):
        hh, ww, c = h.shape
        return h[: hh // 2 * 2, : ww // 2 * 2].reshape(hh // 2, 2, ww // 2, 2, c).max((1, 3))

    k1, k2, k3 = _split(key, 3)
    p = self.dropout
    h = jnp.transpose(x, (1, 2, 0))
    h = dropout(pool(jax.nn.relu(conv_hwc(self.convs[0], h))), p, k1)
    h = dropout(jax.nn.relu(conv_hwc(self.convs[1], h)), p, k2)
    h = dropout(pool(jax.nn.relu(conv_hwc(self.convs[2], h))), p, k3)
    return jnp.transpose(h, (2, 0, 1)).reshape(-1)


@contextlib.contextmanager
def stack_order(order: str) -> Iterator[None]:
    """Inside: `PaperConvStack` runs in `order`. Steps traced inside keep that order."""
    if order == "pool-first":
        yield
        return
    original = PaperConvStack.__call__
    PaperConvStack.__call__ = _relu_first_call
    try:
        yield
    finally:
        PaperConvStack.__call__ = original


def build(variant: str, shape, classes: int, num_blocks: int, key):
    """(model, loss_fn, optimizer, step) for `variant` on the paper network."""
    if variant == "DT-blockwise":
        model = npx.NoPropDT(classes, shape, num_blocks=num_blocks, backbone="paper", key=key)
        optimizer = npx.paper_optimizer(model)
        step = npx.make_dt_step(optimizer, memory="blockwise")
        return model, npx.NoPropDT.loss_fn, optimizer, step
    if variant == "backprop":
        model = npx.BackpropBaseline(
            classes, shape, num_blocks=num_blocks, backbone="paper", key=key
        )
        optimizer = npx.paper_optimizer(model)
        return (
            model,
            npx.BackpropBaseline.loss_fn,
            optimizer,
            npx.make_step(npx.BackpropBaseline.loss_fn, optimizer),
        )
    raise ValueError(f"expected a variant in {VARIANTS}, got {variant!r}")


def check_same_function(variant, shape, classes, num_blocks, batch, key) -> float:
    """Largest relative difference between the two orders' loss and gradients."""
    model, loss_fn, _, _ = build(variant, shape, classes, num_blocks, key)
    results = []
    for order in ORDERS:
        with stack_order(order):
            (loss, _), grads = eqx.filter_jit(eqx.filter_value_and_grad(loss_fn, has_aux=True))(
                model, batch, key
            )
        results.append((loss, grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    worst = abs(float(loss_a - loss_b)) / abs(float(loss_a))
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b), strict=True):
        scale = float(jnp.max(jnp.abs(a))) or 1.0
        worst = max(worst, float(jnp.max(jnp.abs(a - b))) / scale)
    if not worst <= 1e-4:
        raise RuntimeError(f"{variant}: the two orders disagree (relative difference {worst:.3g})")
    return worst


def main(argv=None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0], STUDY_RESULTS)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128])
    parser.add_argument("--num-blocks", type=int, default=10)
    parser.add_argument("--steps-per-repeat", type=int, default=3)
    args = parser.parse_args(argv)
    _common.apply_jax_options(args)
    args.repeats = args.repeats or (2 if args.quick else 7)
    shape, classes = (1, 16, 16) if args.quick else (1, 28, 28), 10
    if args.quick:
        args.batch_sizes, args.num_blocks, args.steps_per_repeat = [8], 2, 1

    rows = []
    for batch_size in args.batch_sizes:
        key = jr.key(args.seed)
        kx, ky, k_model = jr.split(key, 3)
        batch = (jr.normal(kx, (batch_size, *shape)), jr.randint(ky, (batch_size,), 0, classes))
        runners = {}
        for variant in args.variants:
            difference = check_same_function(
                variant, shape, classes, args.num_blocks, batch, k_model
            )
            print(f"{variant}: orders agree to {difference:.2g} (relative)", flush=True)
            for order in ORDERS:
                with stack_order(order):
                    model, _, optimizer, step = build(
                        variant, shape, classes, args.num_blocks, k_model
                    )
                    opt_state = npx.init_optimizer_state(model, optimizer)
                    # The step donates the model: keep a copy to check that the parameters changed.
                    before = jax.tree.map(jnp.copy, eqx.filter(model, eqx.is_array))
                    model, opt_state, aux = step(model, opt_state, batch, jr.key(1))
                    _common.check_finite(f"{variant}/{order}", aux)
                    if not _common.params_changed(before, model):
                        raise RuntimeError(f"{variant}/{order}: a step left the parameters alone")
                runners[(variant, order)] = [step, model, opt_state, []]

        total = (args.warmup + args.repeats) * args.steps_per_repeat
        keys = list(jr.split(jr.key(2), total))  # drawn before timing: no compilation inside
        with _common.no_recompile("pool_order"):
            for repeat in range(args.warmup + args.repeats):
                for runner in runners.values():
                    step, model, opt_state, times = runner
                    seconds, (model, opt_state) = _time_steps(
                        step, model, opt_state, batch, keys, repeat, args.steps_per_repeat
                    )
                    runner[1:3] = [model, opt_state]
                    if repeat >= args.warmup:
                        times.append(seconds)

        for variant in args.variants:
            base = None
            for order in ORDERS:
                stats = _common.summarize(runners[(variant, order)][3])
                row = {
                    "variant": variant,
                    "order": order,
                    "network": "mnist" if not args.quick else "mnist-quick",
                    "batch": batch_size,
                    "num_blocks": args.num_blocks,
                    "seconds": stats,
                    "ms_per_step": 1e3 * stats["median"],
                    "ms_spread": f"{1e3 * stats['min']:.0f}–{1e3 * stats['max']:.0f}",
                    "images_per_s": batch_size / stats["median"],
                }
                base = base or row["ms_per_step"]
                row["time_over_pool_first"] = row["ms_per_step"] / base
                rows.append(row)
                print(row, flush=True)
            _common.write_results("pool_order", args, rows, COLUMNS, quiet=True)
    _common.write_results("pool_order", args, rows, COLUMNS)
    return {"rows": rows}


def _time_steps(step, model, opt_state, batch, keys, repeat, n):
    """Seconds per step over `n` steps (keys[repeat * n:][:n]), and the state after them."""
    start = time.perf_counter()
    for i in range(n):
        model, opt_state, aux = step(model, opt_state, batch, keys[repeat * n + i])
    jax.block_until_ready(aux)
    return (time.perf_counter() - start) / n, (model, opt_state)


if __name__ == "__main__":
    main()
