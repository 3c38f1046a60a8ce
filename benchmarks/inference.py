"""Inference throughput (predictions/s) and network evaluations (NFE) per prediction.

Rows: NoProp-DT's Eq. 3 sampler (deterministic, ε = 0, and stochastic), and NoProp-CT / -FM
integrating their ODE with each solver setting: Euler and Heun with fixed steps, Tsit5 with a
PID controller. NFE is T for DT and Diffrax's count for CT/FM (`ODESolution.nfe`). The models
are freshly initialised (no dataset needed), so an adaptive solver's NFE reflects an untrained
vector field; the fixed-step rows' NFE and every row's cost per evaluation do not depend on
training.

For each row: compile (timed apart), check that the predictions are valid class indices and the
final state is finite, then time `--repeats` calls with `jax.block_until_ready`, failing if any
of them recompiles.

    python benchmarks/inference.py
    python benchmarks/inference.py --networks mnist --batch-sizes 128 1024
    python benchmarks/inference.py --quick
"""

import time

import _common
import diffrax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import noprop_eqx as npx

NETWORKS = {
    "mnist": ("paper", (1, 28, 28), 10),
    "cifar": ("paper", (3, 32, 32), 10),
    "simple": ("simple", (1, 28, 28), 10),
    "tiny": ("simple", (1, 12, 12), 10),  # --quick only
}


def solver_settings(quick: bool) -> dict[str, dict]:
    steps = 4 if quick else 20
    if quick:  # two settings suffice to exercise the fixed-step and adaptive paths
        return {
            f"Euler {steps}": dict(solver=diffrax.Euler(), num_steps=steps),
            "Tsit5 PID 1e-3": dict(
                solver=diffrax.Tsit5(),
                stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-3),
            ),
        }
    return {
        f"Euler {steps}": dict(solver=diffrax.Euler(), num_steps=steps),
        f"Heun {steps}": dict(solver=diffrax.Heun(), num_steps=steps),
        "Tsit5 PID 1e-3": dict(
            solver=diffrax.Tsit5(),
            stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-3),
        ),
    }


COLUMNS = [
    ("variant", "variant"),
    ("sampler", "sampler"),
    ("network", "network"),
    ("batch", "batch"),
    ("predictions_per_s", "predictions/s"),
    ("ms_per_batch", "ms/batch (median)"),
    ("ms_spread", "ms min–max"),
    ("nfe", "NFE"),
    ("compile_s", "compile s"),
    ("temp_mb", "temp MB"),
]


def time_row(variant, sampler, network, batch_size, predict, final_state, nfe, args) -> dict:
    """`predict(x, key) -> labels`, `final_state(x, key) -> z` (for the finiteness check)."""
    _, shape, classes = NETWORKS[network]
    key = jr.key(args.seed)
    x = jr.normal(key, (batch_size, *shape))
    keys = list(jr.split(jr.fold_in(key, 1), args.warmup + args.repeats + 1))
    start = time.perf_counter()
    compiled = predict.lower(x, keys[0]).compile()
    compile_s = time.perf_counter() - start
    memory = _common.memory_stats(compiled)

    labels = np.asarray(predict(x, keys[0]))
    if labels.shape != (batch_size,) or labels.min() < 0 or labels.max() >= classes:
        raise RuntimeError(f"{variant}/{sampler}: invalid predictions {labels[:8]}...")
    z = np.asarray(final_state(x, keys[0]))
    if not np.all(np.isfinite(z)):
        raise RuntimeError(f"{variant}/{sampler}: the final state is not finite")
    nfe = int(nfe(x, keys[0]))

    with _common.no_recompile(f"{variant}/{sampler}/{network}/{batch_size}"):
        times = _common.time_calls(lambda i: predict(x, keys[i]), args.repeats, args.warmup)
    stats = _common.summarize(times)
    row = {
        "variant": variant,
        "sampler": sampler,
        "network": network,
        "batch": batch_size,
        "predictions_per_s": batch_size / stats["median"],
        "ms_per_batch": stats["median"] * 1e3,
        "ms_spread": f"{stats['min'] * 1e3:.0f}–{stats['max'] * 1e3:.0f}",
        "seconds": stats,
        "nfe": nfe,
        "compile_s": compile_s,
        "memory_bytes": memory,
        "temp_mb": None if memory["temp_bytes"] is None else memory["temp_bytes"] / 2**20,
    }
    print(
        f"{variant:3s} {sampler:18s} {network:7s} batch {batch_size:5d}: "
        f"{row['predictions_per_s']:10.1f} predictions/s, NFE {nfe:4d}, compile {compile_s:.1f} s",
        flush=True,
    )
    return row


def dt_rows(network, batch_size, args) -> list[dict]:
    backbone, shape, classes = NETWORKS[network]
    model = npx.NoPropDT(
        classes, shape, num_blocks=args.num_blocks, backbone=backbone, key=jr.key(args.seed)
    )
    rows = []
    for sampler, stochastic in (("Eq. 3, ε = 0", False), ("Eq. 3, stochastic", True)):

        @_common.library_jit
        def predict(x, key, stochastic=stochastic):
            return model.predict(x, key=key if stochastic else None)

        @_common.library_jit
        def final_state(x, key, stochastic=stochastic):
            return model.logits(x, key=key if stochastic else None)

        rows.append(
            time_row(
                "DT",
                sampler,
                network,
                batch_size,
                predict,
                final_state,
                lambda x, key: model.num_blocks,
                args,
            )
        )
    return rows


def ode_rows(variant, network, batch_size, args) -> list[dict]:
    backbone, shape, classes = NETWORKS[network]
    cls = {"CT": npx.NoPropCT, "FM": npx.NoPropFM}[variant]
    model = cls(classes, shape, backbone=backbone, key=jr.key(args.seed))
    rows = []
    for sampler, kwargs in solver_settings(args.quick).items():

        @_common.library_jit
        def predict(x, key, kwargs=kwargs):
            return model.predict(x, key=key, **kwargs)

        @_common.library_jit
        def solve(x, key, kwargs=kwargs):
            return model.solve(x, key=key, **kwargs)

        rows.append(
            time_row(
                variant,
                sampler,
                network,
                batch_size,
                predict,
                lambda x, key, solve=solve: solve(x, key).z1,
                lambda x, key, solve=solve: solve(x, key).nfe,
                args,
            )
        )
    return rows


def main(argv=None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=["simple"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[256])
    parser.add_argument(
        "--variants", nargs="+", choices=["DT", "CT", "FM"], default=["DT", "CT", "FM"]
    )
    parser.add_argument("--num-blocks", type=int, default=10)
    args = parser.parse_args(argv)
    _common.apply_jax_options(args)
    if args.quick:
        args.networks, args.batch_sizes, args.num_blocks = ["tiny"], [8], 2
        args.repeats = args.repeats or 2
    args.repeats = args.repeats or 5

    rows = []
    for network in args.networks:
        for batch_size in args.batch_sizes:
            if "DT" in args.variants:
                rows += dt_rows(network, batch_size, args)
            for variant in ("CT", "FM"):
                if variant in args.variants:
                    rows += ode_rows(variant, network, batch_size, args)
    _common.write_results("inference", args, rows, COLUMNS)
    return {"rows": rows}


if __name__ == "__main__":
    jnp.zeros(())  # start the backend before the first timing
    main()
