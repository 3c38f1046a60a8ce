"""Several seeds in one step: what does training S seeds together cost against one seed?

For the paper MNIST network at batch 128 (T = 10 for DT), times one training step of 1, 3 and 5
seeds (`make_seeds_step`, each form asked for), reports the step time, the ratio to one seed's
step, the epoch time it implies (469 steps) and the FLOP/s against a dense matmul timed in the
same run.

    python benchmarks/seeds.py                              # CPU: DT and FM, loop form
    python benchmarks/seeds.py --forms loop vmap --seeds 1 3 5 --variants DT
"""

import time

import _common
import jax
import jax.numpy as jnp
import jax.random as jr

import noprop_eqx as npx

NETWORKS = {"mnist": ("paper", (1, 28, 28), 10), "simple": ("simple", (1, 8, 8), 10)}
STEPS_PER_EPOCH = 469  # MNIST, batch 128


def build(variant: str, network: str, key):
    backbone, shape, classes = NETWORKS[network]
    model = npx.build_model(
        variant, num_classes=classes, image_shape=shape, backbone=backbone, key=key
    )
    optimizer = npx.paper_optimizer(model)
    if variant == "DT":
        step = npx.make_dt_step(optimizer, memory="auto")
        if getattr(step, "fn", None) is None:
            step = npx.make_dt_step(optimizer, memory="blockwise")
    else:
        step = npx.make_step(type(model).loss_fn, optimizer)
    return model, optimizer, step


def run_row(variant, network, seeds, form, batch_size, args, matmul) -> dict:
    keys = jr.split(jr.key(args.seed), seeds)
    built = [build(variant, network, k) for k in keys]
    optimizer, single = built[0][1], built[0][2]
    models = npx.stack_trees([m for m, _, _ in built])
    states = npx.stack_trees([npx.init_optimizer_state(m, optimizer) for m, _, _ in built])
    _, shape, classes = NETWORKS[network]
    kx, ky = jr.split(jr.key(args.seed + 1))
    batches = (
        jr.normal(kx, (seeds, batch_size, *shape)),
        jr.randint(ky, (seeds, batch_size), 0, classes),
    )
    step = npx.make_seeds_step(single, form=form)
    step_keys = jnp.stack(list(jr.split(jr.key(args.seed + 2), seeds)))
    start = time.perf_counter()
    compiled = step.lower(models, states, batches, step_keys).lowered.compile()
    compile_s = time.perf_counter() - start
    flops = _common.flops_of(compiled)
    state = {"models": models, "states": states}

    def one_step(i):
        state["models"], state["states"], aux = step(
            state["models"], state["states"], batches, step_keys
        )
        return aux

    _common.check_finite(f"{variant} x{seeds}", jax.tree.map(jnp.sum, one_step(-1)))
    times = _common.time_calls(one_step, args.repeats, args.warmup)
    stats = _common.summarize(times)
    median = stats["median"]
    row = dict(
        variant=variant,
        network=network,
        seeds=seeds,
        form=step.form,
        batch=batch_size,
        ms_per_step=median * 1e3,
        ms_spread=f"{stats['min'] * 1e3:.0f}–{stats['max'] * 1e3:.0f}",
        seconds=stats,
        epoch_s=median * STEPS_PER_EPOCH,
        images_per_s=seeds * batch_size / median,
        compile_s=compile_s,
        flops_per_step=flops,
        flops_fraction_of_matmul=None if flops is None else flops / median / matmul,
    )

    print(
        f"{variant} {network} x{seeds} {step.form}: {row['ms_per_step']:.1f} ms/step "
        f"[{row['ms_spread']}], epoch {row['epoch_s']:.0f} s, compile {compile_s:.1f} s",
        flush=True,
    )
    return row


def main() -> None:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["DT", "FM"])
    parser.add_argument("--networks", nargs="+", default=["mnist"], choices=sorted(NETWORKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 3, 5], dest="seed_counts")
    parser.add_argument("--forms", nargs="+", default=["auto"], choices=["auto", "loop", "vmap"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--matmul-size", type=int, default=2048)
    args = parser.parse_args()
    if args.quick:
        args.networks, args.seed_counts, args.batch_size = ["simple"], [1, 2], 16
        args.repeats, args.matmul_size = args.repeats or 2, 256
    args.repeats = args.repeats or 5
    _common.apply_jax_options(args)
    matmul = _common.matmul_flops_per_second(args.matmul_size, 3)
    rows = []
    for network in args.networks:
        for variant in args.variants:
            for form in args.forms:
                for seeds in args.seed_counts:
                    rows.append(
                        run_row(
                            variant, network, seeds, form, args.batch_size, args,
                            matmul["flops_per_second"],
                        )
                    )  # fmt: skip
                    one = next(
                        (
                            r["ms_per_step"]
                            for r in rows
                            if r["seeds"] == 1
                            and (r["variant"], r["network"]) == (variant, network)
                            and r["form"] == rows[-1]["form"]
                        ),
                        None,
                    )
                    rows[-1]["time_over_one_seed"] = (
                        None if one is None else rows[-1]["ms_per_step"] / one
                    )
                    _common.write_results(
                        "seeds", args, rows, COLUMNS, dict(matmul=matmul), quiet=True
                    )
    _common.write_results("seeds", args, rows, COLUMNS, dict(matmul=matmul))


COLUMNS = [
    ("variant", "variant"),
    ("network", "network"),
    ("seeds", "seeds"),
    ("form", "form"),
    ("batch", "batch"),
    ("ms_per_step", "ms/step (median)"),
    ("ms_spread", "ms min–max"),
    ("time_over_one_seed", "step time ÷ one seed's"),
    ("epoch_s", "epoch s (469 steps)"),
    ("images_per_s", "images/s, all seeds"),
    ("flops_fraction_of_matmul", "FLOP/s ÷ matmul"),
    ("compile_s", "compile s"),
]

if __name__ == "__main__":
    main()
