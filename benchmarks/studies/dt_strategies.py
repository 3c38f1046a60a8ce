"""Which way of running NoProp-DT's T independent blocks is fastest here, and what do XLA flags
change?

Rows: the training step with each `NoPropDT.strategy` ("loop": unrolled Python loop, "vmap":
`filter_vmap` over the stacked parameters, i.e. a grouped convolution, "scan": `lax.scan`), the
per-block-gradient steps (`make_dt_step(memory="blockwise")`, unrolled, and `memory="low"`, a
rolled scan) and the backprop baseline on the same blocks, each under every XLA flag setting in
`FLAG_SETS` (the children compile with `--compiler-options none`, so XLA_FLAGS alone decide;
the library's "auto" CPU options equal the "ynn-off" set).
XLA reads its flags once per process, so each flag setting runs `train_throughput.py` in a
child process (same checks: finite losses, parameters change, no recompilation, compile time
apart, median and spread of the timed steps, FLOP/s against a same-process matmul). The summary
names the fastest (strategy, flags) pair and compares it with the naive one ("vmap", default
flags) and with backprop under the same flags.

    python benchmarks/studies/dt_strategies.py                         # SimpleCNN, batch 128
    python benchmarks/studies/dt_strategies.py --networks mnist --repeats 3
    python benchmarks/studies/dt_strategies.py --quick
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
STUDY_RESULTS = Path(__file__).resolve().parent / "results"

import json
import os
import subprocess
import tempfile

import _common

HERE = Path(__file__).resolve().parent
FLAG_SETS = {
    "default": "",
    # Turns off XLA:CPU's YNNPACK fusions (jax 0.10): measured ~2x faster conv backward here.
    "ynn-off": "--xla_cpu_experimental_ynn_fusion_type=",
    # ... and schedules for low memory instead of for concurrency between independent ops (the
    # T DT blocks are independent, so the concurrency scheduler may interleave them).
    "ynn-off+mem-sched": "--xla_cpu_experimental_ynn_fusion_type= "
    "--xla_cpu_enable_concurrency_optimized_scheduler=false",
}
VARIANTS = ["DT-loop", "DT-vmap", "DT-scan", "DT-blockwise", "DT-low", "backprop"]
COLUMNS = [
    ("flags", "XLA flags"),
    ("variant", "variant"),
    ("network", "network"),
    ("batch", "batch"),
    ("images_per_s", "images/s"),
    ("ms_per_step", "ms/step (median)"),
    ("ms_spread", "ms min–max"),
    ("compile_s", "compile s"),
    ("temp_mb", "temp MB"),
    ("flops_fraction_of_matmul", "FLOP/s ÷ matmul"),
    ("time_over_backprop", "time ÷ backprop"),
]


def run_child(flag_name: str, args, out_dir: Path) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), FLAG_SETS[flag_name]]).strip()
    command = [
        sys.executable,
        str(HERE.parent / "train_throughput.py"),
        "--variants",
        *args.variants,
        "--networks",
        *args.networks,
        "--batch-sizes",
        *map(str, args.batch_sizes),
        "--num-blocks",
        str(args.num_blocks),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--out-dir",
        str(out_dir),
        "--tag",
        flag_name,
        "--seed",
        str(args.seed),
        "--threefry-partitionable",
        args.threefry_partitionable,
        # The flags come from XLA_FLAGS alone: no per-step compiler options from the library.
        "--compiler-options",
        "none",
    ]
    if args.quick:
        command.append("--quick")
    print(f"[{flag_name}] XLA_FLAGS={env['XLA_FLAGS']!r}", flush=True)
    subprocess.run(command, env=env, check=True)
    return json.loads((out_dir / f"train_throughput-{flag_name}.json").read_text())


def main(argv=None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0], STUDY_RESULTS)
    parser.add_argument("--networks", nargs="+", default=["simple"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128])
    parser.add_argument("--num-blocks", type=int, default=10)
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--flag-sets", nargs="+", choices=list(FLAG_SETS), default=list(FLAG_SETS))
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)
    if args.quick and args.variants == VARIANTS:
        args.variants = ["DT-loop", "DT-low"]

    rows, children = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for flag_name in args.flag_sets:
            result = run_child(flag_name, args, Path(tmp))
            children[flag_name] = {"environment": result["environment"], "matmul": result["matmul"]}
            by_key = {(r["network"], r["batch"], r["variant"]): r for r in result["rows"]}
            for row in result["rows"]:
                bp = by_key.get((row["network"], row["batch"], "backprop"))
                row["flags"] = flag_name
                row["time_over_backprop"] = row["ms_per_step"] / bp["ms_per_step"] if bp else None
                rows.append(row)

    summary = []
    for network in {r["network"] for r in rows}:
        for batch in {r["batch"] for r in rows}:
            dt_rows = [
                r
                for r in rows
                if r["network"] == network and r["batch"] == batch and r["variant"] != "backprop"
            ]
            if not dt_rows:
                continue
            best = min(dt_rows, key=lambda r: r["ms_per_step"])
            naive = next(
                (r for r in dt_rows if r["variant"] == "DT-vmap" and r["flags"] == "default"),
                None,
            )
            entry = {
                "network": network,
                "batch": batch,
                "best": f"{best['variant']} / {best['flags']}",
                "best_ms_per_step": best["ms_per_step"],
                "best_time_over_backprop_same_flags": best["time_over_backprop"],
                "best_flops_fraction_of_matmul": best["flops_fraction_of_matmul"],
            }
            if naive is not None:
                entry["naive"] = "DT-vmap / default"
                entry["naive_ms_per_step"] = naive["ms_per_step"]
                entry["speedup_best_over_naive"] = naive["ms_per_step"] / best["ms_per_step"]
            default_rows = [r for r in dt_rows if r["flags"] == "default"]
            if default_rows:
                fastest = min(default_rows, key=lambda r: r["ms_per_step"])
                entry["fastest_strategy_default_flags"] = fastest["variant"]
            summary.append(entry)
            print(entry)
    _common.write_results(
        "dt_strategies", args, rows, COLUMNS, extra={"summary": summary, "children": children}
    )
    return {"rows": rows, "summary": summary}


if __name__ == "__main__":
    main()
