"""Training-step throughput, compile time, memory and FLOP/s of every variant.

Question: how fast does one training step run (images/s), how long does it take to compile,
how much memory does the compiled step need, and how close does it come to the machine's
practical FLOP/s ceiling (a dense float32 matmul measured in the same run)?

Rows: NoProp-DT with one value-and-grad of the whole loss (`make_step`, the model's default
strategy), the library's default DT step (`DT-auto`: `make_dt_step()`, what the training CLI
uses: blockwise on CPU, vmap with one gradient on GPU), with unrolled per-block gradients
(`make_dt_step(memory="blockwise")`) and with the low-memory step
(`make_dt_step(memory="low")`); NoProp-CT,
NoProp-FM and the backprop baseline on the same blocks; for each network (the paper's MNIST and
CIFAR networks, SimpleCNN), batch size and `--compiler-options` setting.

For each row the script: builds the step; lowers it and reads the FLOPs from XLA's cost analysis
of the unoptimised HLO (for DT with the unrolled "loop" formulation, because XLA counts a
`lax.scan` body once); compiles it ahead of time (compile time, `memory_analysis()`); runs one
step and checks that the losses are finite and the parameters changed; warms up; then times
`--repeats` steps with `jax.block_until_ready`, failing loudly if any of them recompiles.

    python benchmarks/train_throughput.py                      # CPU default subset
    python benchmarks/train_throughput.py --networks mnist cifar simple --batch-sizes 128 1024
    python benchmarks/train_throughput.py --quick              # seconds; used by the tests
    python benchmarks/train_throughput.py --networks cifar --variants CT FM \
        --embeddings one-hot learned prototype                 # what a wider embedding costs

`--embeddings` sets the class embedding of every row: one-hot (d = classes, the default),
learned (d = `--embed-dim`, default 20) or prototype (d = C·H·W, built from random images:
the shapes and FLOPs of a real prototype embedding, not its values).
"""

import itertools
import time

import _common
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import noprop_eqx as npx

NETWORKS = {
    # name: (backbone, image shape, classes)
    "mnist": ("paper", (1, 28, 28), 10),
    "cifar": ("paper", (3, 32, 32), 10),
    "simple": ("simple", (1, 28, 28), 10),
    # ResNets (CIFAR stem, GroupNorm) as DT blocks and CT/FM networks on CIFAR-10-shaped input.
    "resnet18": ("resnet18", (3, 32, 32), 10),
    "resnet50": ("resnet50", (3, 32, 32), 10),
    "tiny": ("simple", (1, 12, 12), 10),  # --quick only
}
VARIANTS = (
    "DT", "DT-auto", "DT-blockwise", "DT-low", "DT-low-calls", "DT-low-scan", "CT", "FM",
    "backprop",
)  # fmt: skip
DT_MEMORY_VARIANTS = ("DT-auto", "DT-blockwise", "DT-low", "DT-low-calls", "DT-low-scan")
# DT with a fixed strategy (benchmarks/studies/dt_strategies.py compares them).
DT_STRATEGY_VARIANTS = ("DT-loop", "DT-vmap", "DT-scan")

# --compiler-options: the library's per-backend choice, or XLA's defaults.
COMPILER_OPTIONS = {"auto": "auto", "none": None}
# --compute-dtypes: float32, or mixed precision (float32 master weights, bf16 compute).
COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}

EMBEDDINGS = ("one-hot", "learned", "prototype")

COLUMNS = [
    ("variant", "variant"),
    ("embedding", "embedding"),
    ("compiler_options", "compiler options"),
    ("compute_dtype", "compute"),
    ("network", "network"),
    ("batch", "batch"),
    ("images_per_s", "images/s"),
    ("ms_per_step", "ms/step (median)"),
    ("ms_spread", "ms min–max"),
    ("compile_s", "compile s"),
    ("temp_mb", "temp MB"),
    ("argument_mb", "arg MB"),
    ("output_mb", "out MB"),
    ("gflop_per_step", "GFLOP/step"),
    ("flops_fraction_of_matmul", "FLOP/s ÷ matmul"),
    ("peak_rss_mb", "peak RSS MB"),
]


def build(
    variant: str,
    network: str,
    num_blocks: int,
    strategy: str | None,
    key,
    compiler_options="auto",
    compute_dtype=None,
    embedding="one-hot",
    embed_dim=20,
):
    """(model, loss_fn or None, step, flops_model): the model, its step, and the model whose
    lowered step gives the FLOPs (DT: the unrolled "loop" strategy)."""
    backbone, shape, classes = NETWORKS[network]
    spec = embedding_spec(embedding, shape, classes, jr.fold_in(key, 1))
    embed = {"embedding": spec, "embed_dim": embed_dim}
    if variant in ("DT", *DT_MEMORY_VARIANTS, *DT_STRATEGY_VARIANTS):
        if variant in DT_STRATEGY_VARIANTS:
            strategy = variant.removeprefix("DT-")
        kwargs = {} if strategy is None else {"strategy": strategy}
        model = npx.NoPropDT(
            classes, shape, num_blocks=num_blocks, backbone=backbone, key=key, **embed, **kwargs
        )
        optimizer = npx.paper_optimizer(model)
        if variant in DT_MEMORY_VARIANTS:
            memory = variant.removeprefix("DT-")
            step = npx.make_dt_step(
                optimizer,
                memory=memory,
                compute_dtype=compute_dtype,
                compiler_options=compiler_options,
            )
        else:
            step = npx.make_step(
                npx.NoPropDT.loss_fn,
                optimizer,
                compute_dtype=compute_dtype,
                compiler_options=compiler_options,
            )
        flops_model = _common.with_strategy(model, "loop")
        flops_step = npx.make_step(npx.NoPropDT.loss_fn, optimizer)
    elif variant == "backprop":
        model = npx.BackpropBaseline(
            classes, shape, num_blocks=num_blocks, backbone=backbone, key=key, **embed
        )
        optimizer = npx.paper_optimizer(model)
        step = flops_step = npx.make_step(
            npx.BackpropBaseline.loss_fn,
            optimizer,
            compute_dtype=compute_dtype,
            compiler_options=compiler_options,
        )
        flops_model = model
    else:
        cls = {"CT": npx.NoPropCT, "FM": npx.NoPropFM}[variant]
        model = cls(classes, shape, backbone=backbone, key=key, **embed)
        optimizer = npx.paper_optimizer(model)
        step = flops_step = npx.make_step(
            cls.loss_fn, optimizer, compute_dtype=compute_dtype, compiler_options=compiler_options
        )
        flops_model = model
    return model, optimizer, step, (flops_model, flops_step)


def embedding_spec(name: str, shape, classes: int, key):
    """The embedding spec a model takes: a name, or a `PrototypeEmbedding` built from random
    images (two a class), which has the shapes of a real one."""
    if name != "prototype":
        return name
    images = np.asarray(jr.normal(key, (2 * classes, *shape)))
    labels = np.arange(2 * classes) % classes
    return npx.PrototypeEmbedding(images, labels, classes)


def lowered_flops(flops_model, flops_step, optimizer, batch, key) -> float | None:
    """FLOPs of one step from XLA's cost analysis of the lowered (unoptimised) HLO."""
    opt_state = npx.init_optimizer_state(flops_model, optimizer)
    try:
        cost = flops_step.lower(flops_model, opt_state, batch, key).lowered.cost_analysis()
    except Exception:  # noqa: BLE001 - cost analysis is best effort
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def run_row(
    variant,
    network,
    batch_size,
    args,
    matmul_flops_per_s,
    copts="auto",
    dtype="float32",
    embedding="one-hot",
) -> dict:
    key = jr.key(args.seed)
    k_model, k_data, k_steps = jr.split(key, 3)
    model, optimizer, step, (flops_model, flops_step) = build(
        variant,
        network,
        args.num_blocks,
        args.strategy,
        k_model,
        compiler_options=COMPILER_OPTIONS[copts],
        compute_dtype=COMPUTE_DTYPES[dtype],
        embedding=embedding,
        embed_dim=args.embed_dim,
    )
    model, weak_leaves = _common.strengthen_weak_types(model)
    _, shape, classes = NETWORKS[network]
    kx, ky = jr.split(k_data)
    batch = (jr.normal(kx, (batch_size, *shape)), jr.randint(ky, (batch_size,), 0, classes))
    opt_state = npx.init_optimizer_state(model, optimizer)
    step_keys = list(jr.split(k_steps, args.warmup + args.repeats + 1))
    batches = [jax.tree.map(jnp.copy, batch) for _ in step_keys]

    flops = lowered_flops(flops_model, flops_step, optimizer, batch, step_keys[0])
    del flops_model

    start = time.perf_counter()
    flops_source = "lowered HLO"
    if hasattr(step, "temp_bytes"):  # several compiled calls a step (make_dt_step "low-calls")
        memory = dict(_common.memory_stats(None))
        memory["temp_bytes"] = step.temp_bytes(model, opt_state, batch, step_keys[0])
        arrays = jax.tree.leaves(eqx.filter((model, opt_state, batch), eqx.is_array))
        memory["argument_bytes"] = sum(a.nbytes for a in arrays)
        compile_s = time.perf_counter() - start
    else:
        compiled = step.lower(model, opt_state, batch, step_keys[0]).compile()
        compile_s = time.perf_counter() - start
        if flops is None:  # e.g. a JAX whose Lowered has no cost analysis: ask the executable
            flops, flops_source = _common.flops_of(compiled), "compiled executable"
        memory = _common.memory_stats(compiled)

    # Correctness first: one step through the jitted function (it reuses the executable just
    # compiled), finite losses, parameters changed.
    # The step donates the model: keep a copy to check that the parameters changed.
    before = jax.tree.map(jnp.copy, eqx.filter(model, eqx.is_array))
    with _common.CompileCounter() as first_call:
        new_model, opt_state, aux = step(model, opt_state, batches[0], step_keys[0])
        jax.block_until_ready(aux)
    _common.check_finite(f"{variant}/{network}/{batch_size}", aux)
    if not _common.params_changed(before, new_model):
        raise RuntimeError(
            f"{variant}/{network}/{batch_size}: a step left the parameters unchanged"
        )
    model = new_model
    state = {"model": model, "opt_state": opt_state}

    def one_step(i):
        j = 1 + i % (len(step_keys) - 1)  # warm-up calls pass i < 0
        state["model"], state["opt_state"], out = step(
            state["model"], state["opt_state"], batches[j], step_keys[j]
        )
        return out

    with _common.no_recompile(f"{variant}/{network}/batch {batch_size}"):
        times = _common.time_calls(one_step, args.repeats, args.warmup)
    stats = _common.summarize(times)
    median = stats["median"]
    mb = 1 / 2**20
    row = {
        "variant": variant,
        "embedding": embedding,
        "embed_dim": model.embedding.dim,
        "network": network,
        "batch": batch_size,
        "num_blocks": args.num_blocks
        if variant.startswith("DT") or variant == "backprop"
        else None,
        "strategy": model.strategy if variant.startswith("DT") and variant == "DT" else None,
        "images_per_s": batch_size / median,
        "ms_per_step": median * 1e3,
        "ms_spread": f"{stats['min'] * 1e3:.0f}–{stats['max'] * 1e3:.0f}",
        "seconds": stats,
        "compile_s": compile_s,
        "compiles_on_first_call": first_call.count,
        "weak_typed_leaves_made_strong": weak_leaves,
        "compiler_options": copts,
        "compute_dtype": dtype,
        "compiler_options_resolved": npx.default_compiler_options() if copts == "auto" else {},
        "memory_bytes": memory,
        "temp_mb": None if memory["temp_bytes"] is None else memory["temp_bytes"] * mb,
        "argument_mb": None if memory["argument_bytes"] is None else memory["argument_bytes"] * mb,
        "output_mb": None if memory["output_bytes"] is None else memory["output_bytes"] * mb,
        "flops_per_step": flops,
        "flops_source": None if flops is None else flops_source,
        "gflop_per_step": None if flops is None else flops / 1e9,
        "flops_per_second": None if flops is None else flops / median,
        "flops_fraction_of_matmul": None if flops is None else flops / median / matmul_flops_per_s,
        "loss": float(aux["loss"]),
        "peak_rss_mb": _common.peak_rss_mb(),
    }
    print(
        f"{variant:9s} {embedding:9s} {network:7s} batch {batch_size:5d} options {copts} {dtype}: "
        f"{row['images_per_s']:9.1f} images/s, "
        f"{row['ms_per_step']:9.1f} ms/step [{row['ms_spread']}], compile {compile_s:6.1f} s, "
        f"temp {row['temp_mb'] or 0:8.1f} MB",
        flush=True,
    )
    return row


def ratios(rows: list[dict]) -> list[dict]:
    """DT / backprop step time and DT-low / backprop temp memory, per embedding, network, batch
    and compiler options; each row's speed-up from the library's compiler options and from
    bfloat16; and each non-one-hot row's step time over the same row with one-hot."""
    out = []
    by = {
        (
            r["variant"],
            r["embedding"],
            r["network"],
            r["batch"],
            r["compiler_options"],
            r["compute_dtype"],
        ): r
        for r in rows
    }
    for (variant, emb, network, batch, copts, dtype), bp in by.items():
        if variant != "backprop":
            continue
        entry = {
            "embedding": emb,
            "network": network,
            "batch": batch,
            "compiler_options": copts,
            "compute_dtype": dtype,
        }
        for dt in ("DT", *DT_MEMORY_VARIANTS, *DT_STRATEGY_VARIANTS):
            r = by.get((dt, emb, network, batch, copts, dtype))
            if r is None:
                continue
            entry[f"{dt}_time_over_backprop"] = r["ms_per_step"] / bp["ms_per_step"]
            blockwise = by.get(("DT-blockwise", emb, network, batch, copts, dtype))
            if dt.startswith("DT-low") and blockwise is not None:
                entry[f"{dt}_time_over_blockwise"] = r["ms_per_step"] / blockwise["ms_per_step"]
            t_dt, t_bp = r["memory_bytes"]["temp_bytes"], bp["memory_bytes"]["temp_bytes"]
            if t_dt is not None and t_bp:
                entry[f"{dt}_temp_over_backprop"] = t_dt / t_bp
        out.append(entry)
    for (variant, emb, network, batch, copts, dtype), r in by.items():
        where = {"embedding": emb, "network": network, "batch": batch}
        default = by.get((variant, emb, network, batch, "none", dtype))
        if copts == "auto" and default is not None:
            out.append(
                {
                    **where,
                    "compute_dtype": dtype,
                    f"{variant}_speedup_from_compiler_options": default["ms_per_step"]
                    / r["ms_per_step"],
                }
            )
        full = by.get((variant, emb, network, batch, copts, "float32"))
        if dtype != "float32" and full is not None:
            out.append(
                {
                    **where,
                    "compiler_options": copts,
                    f"{variant}_speedup_from_{dtype}": full["ms_per_step"] / r["ms_per_step"],
                }
            )
        one_hot = by.get((variant, "one-hot", network, batch, copts, dtype))
        if emb != "one-hot" and one_hot is not None:
            out.append(
                {
                    **where,
                    "embed_dim": r["embed_dim"],
                    "compiler_options": copts,
                    "compute_dtype": dtype,
                    f"{variant}_time_over_one_hot": r["ms_per_step"] / one_hot["ms_per_step"],
                }
            )
    return out


def main(argv=None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS + DT_STRATEGY_VARIANTS, default=list(VARIANTS)
    )
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=["mnist"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128])
    parser.add_argument("--num-blocks", type=int, default=10, help="T for DT and backprop")
    parser.add_argument(
        "--strategy", default=None, help="NoPropDT strategy for the DT row (default: the model's)"
    )
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument(
        "--compiler-options",
        nargs="+",
        choices=list(COMPILER_OPTIONS),
        default=["auto"],
        help="auto: the library's per-backend options (make_step's default); none: XLA's "
        "defaults. Give both to measure the difference in one run.",
    )
    parser.add_argument(
        "--compute-dtypes",
        nargs="+",
        choices=list(COMPUTE_DTYPES),
        default=["float32"],
        help="bfloat16: mixed precision (make_step(compute_dtype=jnp.bfloat16))",
    )
    parser.add_argument(
        "--embeddings",
        nargs="+",
        choices=EMBEDDINGS,
        default=["one-hot"],
        help="the class embedding of every row (prototype: built from random images)",
    )
    parser.add_argument(
        "--embed-dim", type=int, default=20, help="d of the learned embedding (default 20)"
    )
    args = parser.parse_args(argv)
    _common.apply_jax_options(args)
    if args.quick:
        args.networks, args.batch_sizes, args.num_blocks = ["tiny"], [8], 2
        args.repeats, args.warmup, args.matmul_size = args.repeats or 2, 1, 256
    args.repeats = args.repeats or 5

    matmul_before = _common.matmul_flops_per_second(args.matmul_size, max(3, args.repeats))
    # Each row's FLOP/s is compared with a matmul of its own compute dtype.
    ceilings = {"float32": matmul_before["flops_per_second"]}
    matmul_extra = {}
    for dtype in args.compute_dtypes:
        if dtype not in ceilings:
            matmul_extra[dtype] = _common.matmul_flops_per_second(
                args.matmul_size, max(3, args.repeats), dtype
            )
            ceilings[dtype] = matmul_extra[dtype]["flops_per_second"]
    rows = []
    grid = itertools.product(
        args.networks,
        args.batch_sizes,
        args.compiler_options,
        args.compute_dtypes,
        args.embeddings,
        args.variants,
    )
    for network, batch_size, copts, dtype, embedding, variant in grid:
        rows.append(
            run_row(variant, network, batch_size, args, ceilings[dtype], copts, dtype, embedding)
        )
        _common.write_results(  # kept if a later row is cut short
            "train_throughput",
            args,
            rows,
            COLUMNS,
            extra={
                "matmul": {"before": matmul_before, **matmul_extra},
                "ratios": ratios(rows),
            },
            quiet=True,
        )
    matmul_after = _common.matmul_flops_per_second(args.matmul_size, max(3, args.repeats))
    summary = ratios(rows)
    for entry in summary:
        print(entry)
    _common.write_results(
        "train_throughput",
        args,
        rows,
        COLUMNS,
        extra={
            "matmul": {"before": matmul_before, "after": matmul_after, **matmul_extra},
            "ratios": summary,
        },
    )
    return {"rows": rows, "ratios": summary}


if __name__ == "__main__":
    main()
