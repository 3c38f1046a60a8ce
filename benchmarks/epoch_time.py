"""Wall time of one training epoch, end to end (MNIST-sized: 60,000 images, batch 128 = 469
steps), and how much of it is the input pipeline and per-step dispatch.

Modes:

- `host`: the library's training loop, `noprop_eqx.train_epoch`, as `noprop-eqx train
  --steps-per-call 1` runs it (the CPU default): a shuffled order, each batch sliced from host
  NumPy arrays, one compiled call per step, the loss terms summed on the device.
- `host-scan`: the same loop with `steps_per_call=K` (`--steps-per-call`, default a tenth of
  the epoch, what `--steps-per-call auto` picks off CPU): K batches stacked on the host, K
  steps per compiled call through `CompiledStep.scan`.
- `device`: the compiled step with every batch already on the device: one call per step, no
  host pipeline.
- `scan`: the whole epoch as one `CompiledStep.scan` call over the epoch's batches stacked on
  the device.

Variants: `DT` (`make_dt_step()`, memory and strategy "auto": the CLI's DT step on this
backend), `DT-blockwise` and `DT-low` (`make_dt_step(memory=...)`), `DT-vmap` and `DT-loop`
(`make_step` with that `NoPropDT.strategy`), `BP` (the backprop baseline), `CT`, `FM`; the
paper's MNIST networks, T = 10; `--compute-dtypes bfloat16` adds mixed-precision rows.

Images are standard normal and labels uniform: the content does not change the time. Each
(variant, dtype, mode) compiles and runs one warm-up epoch, then times `--repeats` epochs and
reports the median; a second compilation during the timed epochs is an error. With fewer than
60,000 `--num-images` (CPU), `epoch_s_60k` scales the measured time to 469 steps.

    python benchmarks/epoch_time.py --variants DT BP                            # GPU
    python benchmarks/epoch_time.py --num-images 1280 --repeats 2               # CPU
    python benchmarks/epoch_time.py --quick
"""

import math
import time

import _common
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import train_throughput

import noprop_eqx as npx
from noprop_eqx._loop import train_epoch

VARIANTS = ("DT", "DT-blockwise", "DT-vmap", "DT-loop", "DT-low", "BP", "CT", "FM")
MODES = ("host", "host-scan", "device", "scan")
COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}
PAPER_STEPS = math.ceil(60_000 / 128)

COLUMNS = [
    ("variant", "variant"),
    ("compute_dtype", "compute"),
    ("mode", "mode"),
    ("steps", "steps"),
    ("steps_per_call", "steps/call"),
    ("epoch_s", "epoch s (median)"),
    ("epoch_spread", "s min–max"),
    ("epoch_s_60k", "s per 469 steps"),
    ("ms_per_step", "ms/step"),
    ("images_per_s", "images/s"),
    ("compile_s", "first call s"),
]


def build(variant: str, num_blocks: int, dtype, key):
    """(model, optimizer, compiled step) for one row: `train_throughput.build` on the paper
    MNIST network, under this script's variant names."""
    name = {"DT": "DT-auto", "BP": "backprop"}.get(variant, variant)
    model, optimizer, step, _ = train_throughput.build(
        name, "mnist", num_blocks, None, key, compute_dtype=dtype
    )
    return model, optimizer, step


def epoch_batches(x, y, batch_size, key):
    """The epoch's batches in the training loop's order, stacked: (steps, batch, ...)."""
    batches = list(npx.data.train_batches(x, y, batch_size, key=key))
    return np.stack([b[0] for b in batches]), np.stack([b[1] for b in batches])


def run_row(variant, dtype_name, mode, x, y, args) -> dict:
    key = jr.key(args.seed)
    k_model, k_train = jr.split(key)
    model, optimizer, step = build(variant, args.num_blocks, COMPUTE_DTYPES[dtype_name], k_model)
    model, _ = _common.strengthen_weak_types(model)
    opt_state = npx.init_optimizer_state(model, optimizer)
    steps = npx.data.num_train_batches(len(x), args.batch_size)
    state = {"model": model, "opt_state": opt_state}

    per_call = {"host": 1, "device": 1, "scan": steps}.get(mode)
    if mode == "host-scan":
        per_call = args.steps_per_call or math.ceil(steps / 10)
    if mode in ("host", "host-scan"):

        def epoch(e):
            state["model"], state["opt_state"], stats = train_epoch(
                step, state["model"], state["opt_state"], x, y,
                batch_size=args.batch_size, key=k_train, epoch=e, progress=False,
                steps_per_call=per_call,
            )  # fmt: skip
            return stats["loss_terms"]["loss"]

    elif mode == "device":
        xs, ys = epoch_batches(x, y, args.batch_size, jr.fold_in(k_train, 0))
        batches = [(jnp.asarray(a), jnp.asarray(b)) for a, b in zip(xs, ys, strict=True)]
        keys = list(jr.split(k_train, steps))

        def epoch(e):
            losses = []
            for batch, k in zip(batches, keys, strict=True):
                state["model"], state["opt_state"], aux = step(
                    state["model"], state["opt_state"], batch, k
                )
                losses.append(aux["loss"])
            return float(jnp.mean(jnp.stack(losses)))

    else:
        xs, ys = epoch_batches(x, y, args.batch_size, jr.fold_in(k_train, 0))
        batches, keys = (jnp.asarray(xs), jnp.asarray(ys)), jr.split(k_train, steps)

        def epoch(e):
            state["model"], state["opt_state"], aux = step.scan(
                state["model"], state["opt_state"], batches, keys
            )
            return float(jnp.mean(aux["loss"]))

    start = time.perf_counter()
    loss = epoch(1)  # compiles
    first = time.perf_counter() - start
    if not np.isfinite(loss):
        raise RuntimeError(f"{variant}/{dtype_name}/{mode}: non-finite loss {loss}")
    times = []
    with _common.no_recompile(f"{variant}/{dtype_name}/{mode}"):
        for r in range(args.repeats):
            start = time.perf_counter()
            loss = epoch(2 + r)
            times.append(time.perf_counter() - start)
    stats = _common.summarize(times)
    median = stats["median"]
    row = {
        "variant": variant,
        "compute_dtype": dtype_name,
        "mode": mode,
        "batch": args.batch_size,
        "num_images": len(x),
        "steps": steps,
        "steps_per_call": per_call,
        "epoch_s": median,
        "epoch_spread": f"{stats['min']:.3g}–{stats['max']:.3g}",
        "epoch_s_60k": median * PAPER_STEPS / steps,
        "ms_per_step": median / steps * 1e3,
        "images_per_s": steps * args.batch_size / median,
        "compile_s": first,
        "seconds": stats,
        "final_loss": loss,
    }
    print(
        f"{variant:8s} {dtype_name:8s} {mode:6s}: epoch {median:8.3f} s "
        f"[{row['epoch_spread']}] ({row['ms_per_step']:.2f} ms/step, "
        f"{row['images_per_s']:.0f} images/s; first call {first:.1f} s)",
        flush=True,
    )
    return row


def main(argv=None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["DT", "BP"])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--compute-dtypes", nargs="+", choices=list(COMPUTE_DTYPES), default=["float32"]
    )
    parser.add_argument("--num-images", type=int, default=60_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-blocks", type=int, default=10)
    parser.add_argument(
        "--steps-per-call", type=int, default=None, help="host-scan's K (default: steps / 10)"
    )
    args = parser.parse_args(argv)
    _common.apply_jax_options(args)
    if args.quick:
        args.num_images, args.batch_size, args.num_blocks = 64, 16, 2
        args.repeats = args.repeats or 1
    args.repeats = args.repeats or 3
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.num_images, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, args.num_images).astype(np.int32)
    rows = []
    for variant in args.variants:
        for dtype_name in args.compute_dtypes:
            for mode in args.modes:
                rows.append(run_row(variant, dtype_name, mode, x, y, args))
                _common.write_results("epoch_time", args, rows, COLUMNS, quiet=True)
    _common.write_results("epoch_time", args, rows, COLUMNS)
    return {"rows": rows}


if __name__ == "__main__":
    main()
