"""Communication of NoProp on a device mesh, read from the compiled HLO, and a scaling model.

For the paper's MNIST and CIFAR networks (T = 10, global batch 128), compiles on N CPU devices

- block-parallel NoProp-DT (`parallel.make_dt_step`, mesh blocks=N, and 2-D data x blocks),
- data-parallel NoProp-DT and data-parallel backprop on the same blocks (`parallel.make_step`),

and lists every collective in the compiled program (kind, count, bytes). The per-device
bytes a ring algorithm moves per step follow from them. With single-device step times measured
elsewhere (`train_throughput` JSON, given with --step-times), the script then tabulates a
scaling model: step time and efficiency from 1 to 1,024 devices and T from 10 to 1,000 blocks.

    python benchmarks/scaling.py                      # writes benchmarks/results/scaling.json
    python benchmarks/scaling.py --quick --out /tmp/s.json
"""

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

DEVICES = 10
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", DEVICES)

import equinox as eqx  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment  # noqa: E402

import noprop_eqx as npx  # noqa: E402
from noprop_eqx import parallel  # noqa: E402
from noprop_eqx._records import scrub_paths  # noqa: E402

NETWORKS = {"mnist": (1, 28, 28), "cifar": (3, 32, 32)}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
DTYPE_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "pred": 1, "f64": 8, "s8": 1}
_OP = re.compile(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_SHAPE = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
_GROUPS = re.compile(r"replica_groups=\{\{([\d,]+)\}")
_GROUPS_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]")
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}")


def collectives(hlo: str) -> list[dict]:
    """Every collective of a compiled HLO module: kind, result bytes, group size."""
    found = []
    for line in hlo.splitlines():
        match = _OP.search(line)
        if not match or "-done" in line.split("=")[0]:
            continue
        result_type, kind = match.groups()
        size = 0
        for dtype, dims in _SHAPE.findall(result_type):
            size += DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
        group = _GROUPS.search(line)
        iota = _GROUPS_IOTA.search(line)
        named = _GROUPS_MESH.search(line)
        if named:  # replica_groups=mesh['axis_0'=5,'axis_1'=2] ... {'axis_0'}: over axis_0
            sizes = dict(re.findall(r"'(\w+)'=(\d+)", named.group(1)))
            group_size = int(
                np.prod([int(sizes[a]) for a in re.findall(r"'(\w+)'", named.group(2))])
            )
        elif group:
            group_size = len(group.group(1).split(","))
        elif iota:
            group_size = int(iota.group(2))
        else:
            group_size = None
        found.append(dict(kind=kind, bytes=size, group_size=group_size))
    return found


def ring_bytes(ops: list[dict]) -> float:
    """Bytes each device sends per step under ring algorithms: all-reduce 2(n-1)/n of the
    buffer, all-gather / reduce-scatter (n-1)/n of the full buffer, a permute all of it."""
    total = 0.0
    for op in ops:
        n = op["group_size"] or 1
        if n <= 1:
            continue
        if op["kind"] == "all-reduce":
            total += 2 * (n - 1) / n * op["bytes"]
        elif op["kind"] == "all-gather":
            total += (n - 1) / n * op["bytes"]
        elif op["kind"] == "reduce-scatter":
            total += (n - 1) * op["bytes"]
        else:
            total += op["bytes"]
    return total


def compiled_step(variant: str, network: str, data: int, blocks: int, batch: int) -> dict:
    shape = NETWORKS[network]
    model = npx.build_model(variant, num_classes=10, image_shape=shape, key=jr.key(0))
    optimizer = optax.adamw(1e-3, weight_decay=1e-3)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    mesh = parallel.make_mesh(data, blocks)
    model, opt_state = parallel.place(model, opt_state, mesh)
    if variant == "DT" and (blocks > 1 or data == 1):
        step = parallel.make_dt_step(optimizer, mesh)
        form = "block-parallel" if data == 1 else "2-D" if blocks > 1 else "data-parallel"
    else:
        step = parallel.make_step(type(model).loss_fn, optimizer, mesh)
        form = "data-parallel"
    if variant == "DT" and blocks == 1 and data > 1:
        step = parallel.make_dt_step(optimizer, mesh)
    x = np.zeros((batch, *shape), np.float32)
    y = np.zeros((batch,), np.int32)
    hlo = step.lower(model, opt_state, (x, y), jr.key(0)).lowered.compile().as_text()
    ops = collectives(hlo)
    params = sum(a.size for a in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))
    block_params = sum(a.size for a in jax.tree.leaves(eqx.filter(model.blocks, eqx.is_array)))
    kinds = {}
    for op in ops:
        entry = kinds.setdefault(op["kind"], dict(count=0, bytes=0))
        entry["count"] += 1
        entry["bytes"] += op["bytes"]
    return dict(
        variant="backprop" if variant == "BP" else "DT",
        network=network,
        form=form,
        data=data,
        blocks=blocks,
        devices=data * blocks,
        global_batch=batch,
        parameters=int(params),
        block_parameters=int(block_params),
        shared_parameters=int(params - block_params),
        collectives=kinds,
        collective_bytes=int(sum(op["bytes"] for op in ops)),
        ring_bytes_per_device=ring_bytes(ops),
    )


# --- the scaling model ----------------------------------------------------------------------


def allreduce_time(size_bytes: float, n: int, bandwidth: float, latency: float) -> float:
    """All-reduce of `size_bytes` over n devices: the bandwidth term of a ring, 2(n-1)/n of the
    buffer per device, plus a latency of 2 log2(n) hops (tree or hierarchical algorithms)."""
    if n <= 1:
        return 0.0
    return 2 * math.ceil(math.log2(n)) * latency + 2 * (n - 1) / n * size_bytes / bandwidth


def divisor_at_most(t: int, n: int) -> int:
    return max(d for d in range(1, min(t, n) + 1) if t % d == 0)


def model_rows(measured: dict, *, bandwidth: float, latency: float, microbatches: int) -> list:
    """Step time, images/s and efficiency per strategy for N devices and T blocks.

    Every device keeps a batch of 128 per step (weak scaling over `data`: N data-parallel
    devices train on 128 N images a step); the blocks axis splits the T blocks of one batch
    (strong scaling). A DT block costs a tenth of the measured T = 10 step; its parameters
    and the shared parameters are those measured for T = 10."""
    rows = []
    for network, m in measured.items():
        block_bytes = 4 * m["block_parameters"] / 10  # one block's parameters, float32
        shared_bytes = 4 * m["shared_parameters"]
        for t in (10, 100, 1000):
            dt_one = m["dt_step_s"] / 10 * t
            bp_one = m["bp_step_s"] / 10 * t
            all_bytes = block_bytes * t + shared_bytes
            for n in [2**k for k in range(11)]:
                b = divisor_at_most(t, n)  # blocks axis: the largest divisor of T <= N
                d = n // b  # data axis: the rest (devices left over stay idle)
                # DT, blocks x data: T/b blocks per device; the shared gradients over all
                # devices, each device's block gradients over its data row.
                dt_2d = dt_one / b + max(
                    allreduce_time(shared_bytes, b * d, bandwidth, latency),
                    allreduce_time(block_bytes * t / b, d, bandwidth, latency),
                )
                dt_data = dt_one + allreduce_time(all_bytes, n, bandwidth, latency)
                bp_data = bp_one + allreduce_time(all_bytes, n, bandwidth, latency)
                # GPipe: b stages of T/b blocks, `microbatches` microbatches of the batch, the
                # rest data parallel. Activations between stages are z (batch x embedding
                # dim): negligible bytes. Optimistic: a microbatch costs its share of a batch.
                bp_pipe = bp_one / b * (microbatches + b - 1) / microbatches + allreduce_time(
                    block_bytes * t / b, d, bandwidth, latency
                )
                for strategy, step_s, images, one in (
                    ("DT blocks x data", dt_2d, 128 * d, dt_one),
                    ("DT data parallel", dt_data, 128 * n, dt_one),
                    ("backprop data parallel", bp_data, 128 * n, bp_one),
                    ("backprop pipeline x data", bp_pipe, 128 * d, bp_one),
                ):
                    rows.append(
                        dict(
                            network=network,
                            blocks_T=t,
                            devices=n,
                            strategy=strategy,
                            step_s=step_s,
                            images_per_s=images / step_s,
                            efficiency=images / step_s / (n * 128 / one),
                        )
                    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/scaling.json")
    parser.add_argument("--quick", action="store_true", help="the MNIST network, 2 meshes")
    parser.add_argument("--batch", type=int, default=120, help="global batch (divisible by 10)")
    parser.add_argument(
        "--step-times",
        default="benchmarks/results/train_throughput-h200.json",
        help="single-device step times (train_throughput JSON) for the scaling model",
    )
    parser.add_argument("--bandwidth-gbs", type=float, default=50.0)
    parser.add_argument("--latency-us", type=float, default=10.0)
    parser.add_argument("--microbatches", type=int, default=8)
    args = parser.parse_args()
    networks = ["mnist"] if args.quick else list(NETWORKS)
    meshes = [("DT", 1, 2), ("BP", 2, 1)] if args.quick else [
        ("DT", 1, 2), ("DT", 1, 5), ("DT", 1, 10), ("DT", 2, 5), ("DT", 10, 1),
        ("BP", 2, 1), ("BP", 5, 1), ("BP", 10, 1),
    ]  # fmt: skip
    rows = []
    for network in networks:
        for variant, data, blocks in meshes:
            row = compiled_step(variant, network, data, blocks, args.batch)
            rows.append(row)
            print(
                f"{row['network']:5s} {row['variant']:8s} {row['form']:14s} data={data:<2d} "
                f"blocks={blocks:<2d} collectives {row['collective_bytes'] / 1e6:9.3f} MB, "
                f"ring {row['ring_bytes_per_device'] / 1e6:9.3f} MB/device",
                flush=True,
            )
    times = json.loads(Path(args.step_times).read_text())
    step_s = {
        r["variant"]: r["ms_per_step"] / 1e3 for r in times["rows"] if r["network"] == "mnist"
    }
    dt_key = "DT-vmap" if "DT-vmap" in step_s else "DT-blockwise"
    measured = {}
    for network in networks:
        first = next(r for r in rows if r["network"] == network)
        measured[network] = dict(
            block_parameters=first["block_parameters"],
            shared_parameters=first["shared_parameters"],
            dt_step_s=step_s[dt_key],
            bp_step_s=step_s["backprop"],
        )
    model = model_rows(
        {"mnist": measured["mnist"]},
        bandwidth=args.bandwidth_gbs * 1e9,
        latency=args.latency_us * 1e-6,
        microbatches=args.microbatches,
    )
    payload = scrub_paths(
        dict(
            benchmark="scaling",
            environment=environment(),
            global_batch=args.batch,
            communication=rows,
            model_assumptions=dict(
                bandwidth_gb_per_s=args.bandwidth_gbs,
                latency_us_per_ring_step=args.latency_us,
                pipeline_microbatches=args.microbatches,
                step_times_from=Path(args.step_times).name,
                dt_step_ms=step_s[dt_key] * 1e3,
                dt_form=dt_key,
                backprop_step_ms=step_s["backprop"] * 1e3,
            ),
            model=model,
        )
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
