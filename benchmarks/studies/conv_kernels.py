"""The convolutions of a paper-network block on their own: forward, input-gradient and
weight-gradient kernels, as FLOP/s and as a fraction of a same-run float32 matmul.

It explains the training step's FLOP/s ratio (`train_throughput.py`): a NoProp-DT or backprop
step is mostly these convolutions, so the step cannot run nearer the matmul ceiling than they
do. Each row also times a plain matrix product of the convolution's GEMM shape (M = batch ·
output pixels, K = 9 · input channels, N = output channels), the same FLOPs without the
convolution's data movement.

The summary adds up one block's convolution work as a training step does it (forward and weight
gradient of every layer, input gradient of every layer but the first, whose input is the image)
and gives the FLOP/s ratio a step would reach if nothing but these kernels took time.

    python benchmarks/studies/conv_kernels.py
    python benchmarks/studies/conv_kernels.py --networks mnist cifar --batch-sizes 128 1024
    python benchmarks/studies/conv_kernels.py --quick
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
STUDY_RESULTS = Path(__file__).resolve().parent / "results"

import _common
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

# (input size, channels) of each 3x3 valid convolution of the paper's DT block (the CT/FM
# network has the same stack): conv(32) on the image, max-pool, conv(64), conv(128).
NETWORKS = {
    "mnist": [(28, 1, 32), (13, 32, 64), (11, 64, 128)],
    "cifar": [(32, 3, 32), (15, 32, 64), (13, 64, 128)],
    "tiny": [(10, 1, 4), (4, 4, 8)],  # --quick only
}

COLUMNS = [
    ("network", "network"),
    ("batch", "batch"),
    ("layer", "layer"),
    ("kernel", "kernel"),
    ("ms", "ms (median)"),
    ("gflop", "GFLOP"),
    ("gflop_per_s", "GFLOP/s"),
    ("fraction_of_matmul", "÷ matmul"),
]


def _conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def kernels(batch: int, size: int, cin: int, cout: int, key):
    """{kernel: (function, arguments)} for one layer; each function is jitted with the library's
    compiler options, as the training steps are."""
    out = size - 2
    kx, kw, kg, kp, kq = jr.split(key, 5)
    x = jr.normal(kx, (batch, size, size, cin))
    w = jr.normal(kw, (3, 3, cin, cout)) / np.sqrt(9 * cin)
    g = jr.normal(kg, (batch, out, out, cout))
    p = jr.normal(kp, (batch * out * out, 9 * cin))
    q = jr.normal(kq, (9 * cin, cout))
    return {
        "forward": (_conv, (x, w)),
        "input gradient": (lambda x, w, g: jax.vjp(lambda x: _conv(x, w), x)[1](g)[0], (x, w, g)),
        "weight gradient": (lambda x, w, g: jax.vjp(lambda w: _conv(x, w), w)[1](g)[0], (x, w, g)),
        "GEMM of the same shape": (jnp.dot, (p, q)),
    }


def layer_rows(network: str, batch: int, layer: int, args, matmul: float) -> list[dict]:
    size, cin, cout = NETWORKS[network][layer]
    out = size - 2
    flops = 2.0 * batch * out * out * cout * cin * 9
    rows = []
    key = jr.fold_in(jr.key(args.seed), layer)
    for kernel, (fn, fn_args) in kernels(batch, size, cin, cout, key).items():
        compiled = _common.library_jit(fn)
        result = compiled(*fn_args)
        if not bool(jnp.all(jnp.isfinite(result))):
            raise RuntimeError(f"{network} layer {layer} {kernel}: non-finite result")
        with _common.no_recompile(f"{network}/{batch}/layer {layer}/{kernel}"):
            stats = _common.summarize(
                _common.time_calls(
                    lambda i, f=compiled, a=fn_args: f(*a), args.repeats, args.warmup
                )
            )
        rows.append(
            {
                "network": network,
                "batch": batch,
                "layer": f"{size}²×{cin} → {out}²×{cout}",
                "layer_index": layer,
                "kernel": kernel,
                "seconds": stats,
                "ms": stats["median"] * 1e3,
                "flops": flops,
                "gflop": flops / 1e9,
                "gflop_per_s": flops / stats["median"] / 1e9,
                "fraction_of_matmul": flops / stats["median"] / matmul,
            }
        )
        print(
            f"{network} batch {batch} layer {layer} {kernel:22s}: {stats['median'] * 1e3:8.2f} ms,"
            f" {rows[-1]['fraction_of_matmul']:.2f} of matmul",
            flush=True,
        )
    return rows


def block_summary(rows: list[dict], matmul: float) -> dict:
    """One block's convolution work in a training step, and the FLOP/s ratio it bounds."""
    used = [
        r
        for r in rows
        if r["kernel"] in ("forward", "weight gradient")
        or (r["kernel"] == "input gradient" and r["layer_index"] > 0)
    ]
    seconds = sum(r["seconds"]["median"] for r in used)
    flops = sum(r["flops"] for r in used)
    return {
        "network": rows[0]["network"],
        "batch": rows[0]["batch"],
        "block_conv_ms": seconds * 1e3,
        "block_conv_gflop": flops / 1e9,
        "fraction_of_matmul_if_only_convolutions": flops / seconds / matmul,
    }


def main(argv=None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0], STUDY_RESULTS)
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=["mnist"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128])
    parser.add_argument("--matmul-size", type=int, default=2048)
    args = parser.parse_args(argv)
    _common.apply_jax_options(args)
    if args.quick:
        args.networks, args.batch_sizes, args.matmul_size = ["tiny"], [4], 128
        args.repeats = args.repeats or 2
    args.repeats = args.repeats or 20
    matmul = _common.matmul_flops_per_second(args.matmul_size, args.repeats)
    print(f"matmul {args.matmul_size}²: {matmul['flops_per_second'] / 1e9:.0f} GFLOP/s")
    rows, summaries = [], []
    for network in args.networks:
        for batch in args.batch_sizes:
            layer_block = []
            for layer in range(len(NETWORKS[network])):
                layer_block += layer_rows(network, batch, layer, args, matmul["flops_per_second"])
            rows += layer_block
            summaries.append(block_summary(layer_block, matmul["flops_per_second"]))
            print(summaries[-1], flush=True)
    _common.write_results(
        "conv_kernels", args, rows, COLUMNS, {"matmul": matmul, "block_summaries": summaries}
    )
    return {"rows": rows, "block_summaries": summaries, "matmul": matmul}


if __name__ == "__main__":
    main()
