"""Shared helpers for the benchmark scripts: environment record, timing, compile counting,
compiled-memory and cost analysis, JSON + markdown output.

Each script in this folder answers one question; this module only holds what they all need, so
the scripts stay readable top to bottom.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from noprop_eqx._records import scrub_paths

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_VERSION = 1


def set_cpu_threads(threads: int | None) -> None:
    """Asks XLA's CPU backend for `threads` intra-op threads. Must run before JAX starts a
    backend (i.e. before the first array is created)."""
    if not threads:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [
        "--xla_cpu_multi_thread_eigen=true",
        f"intra_op_parallelism_threads={threads}",
    ]
    os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


def base_parser(description: str, results_dir: Path = RESULTS_DIR) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes and repeats (seconds; for tests)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per row")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument(
        "--out-dir", type=Path, default=results_dir, help="where the JSON and markdown go"
    )
    parser.add_argument("--tag", default=None, help="suffix for the output file names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threefry-partitionable",
        choices=["default", "on", "off"],
        default="default",
        help="jax_threefry_partitionable; --quick turns it off, which compiles the dropout "
        "masks' random bits ~5x faster on XLA:CPU (other bits, same distribution)",
    )
    return parser


def apply_jax_options(args: argparse.Namespace) -> None:
    """JAX configuration chosen on the command line (call before building any model)."""
    import jax

    if args.quick and args.threefry_partitionable == "default":
        args.threefry_partitionable = "off"
    if args.threefry_partitionable != "default":
        jax.config.update("jax_threefry_partitionable", args.threefry_partitionable == "on")


def cpu_model() -> str | None:
    from noprop_eqx._machine import cpu_model as model_name

    return model_name()


def git_commit() -> str | None:
    from noprop_eqx._machine import git_commit as commit_at

    return commit_at(REPO_ROOT, short=False)


def environment() -> dict[str, Any]:
    """What the numbers were measured on: device, versions, commit, flags, load."""
    import jax
    import jaxlib

    versions = {"python": platform.python_version(), "jax": jax.__version__}
    versions["jaxlib"] = jaxlib.__version__
    for name in ("equinox", "optax", "diffrax", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    device = jax.devices()[0]
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "schema_version": SCHEMA_VERSION,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backend": jax.default_backend(),
        "device": str(device.device_kind),
        "device_count": jax.device_count(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "versions": versions,
        "git_commit": git_commit(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "argv": sys.argv,
    }


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median and spread (min, max, interquartile range) of repeated timings, in seconds."""
    values = sorted(seconds)
    if len(values) >= 4:
        q = statistics.quantiles(values, n=4)
        iqr = q[2] - q[0]
    else:
        iqr = values[-1] - values[0]
    return {
        "median": statistics.median(values),
        "min": values[0],
        "max": values[-1],
        "iqr": iqr,
        "repeats": len(values),
    }


def time_calls(fn: Callable[[int], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Calls `fn(i)` `warmup` times untimed, then `repeats` times timed; `fn` must return
    arrays, which are waited on with `jax.block_until_ready`."""
    import jax

    for i in range(warmup):
        jax.block_until_ready(fn(-1 - i))
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(i))
        times.append(time.perf_counter() - start)
    return times


class CompileCounter:
    """Counts XLA backend compilations while active (via `jax.monitoring`)."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0
        self.seconds = 0.0

    def _listener(self, event: str, duration: float, **kwargs) -> None:
        if event == self.EVENT:
            self.count += 1
            self.seconds += duration

    def __enter__(self) -> "CompileCounter":
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc) -> None:
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self._listener)


@contextlib.contextmanager
def no_recompile(what: str) -> Iterator[CompileCounter]:
    """Fails loudly if anything inside compiles: used around the timed calls, after warm-up."""
    with CompileCounter() as counter:
        yield counter
    if counter.count:
        raise RuntimeError(
            f"{what}: {counter.count} recompilation(s) after warm-up; the timed calls must reuse "
            "one compiled executable (check for Python scalars, changing shapes or dtypes)"
        )


def memory_stats(compiled) -> dict[str, int | None]:
    """Argument / output / alias / temp bytes of a compiled executable (`jax.stages.Compiled` or
    an Equinox `Compiled` wrapper), or Nones when the backend does not report them."""
    compiled = getattr(compiled, "compiled", compiled)
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        stats = None
    keys = ("argument", "output", "alias", "temp", "generated_code")
    if stats is None:
        return {f"{k}_bytes": None for k in keys}
    return {f"{k}_bytes": int(getattr(stats, f"{k}_size_in_bytes")) for k in keys}


def flops_of(compiled) -> float | None:
    """FLOPs of one call from XLA's cost analysis (None when unavailable)."""
    compiled = getattr(compiled, "compiled", compiled)
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MiB (Linux reports KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def matmul_flops_per_second(size: int, repeats: int, dtype: str = "float32") -> dict[str, Any]:
    """The practical ceiling: a dense `jnp.dot` of two size×size matrices of `dtype` (float32
    by default, at JAX's default precision)."""
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    a = jr.normal(jr.key(0), (size, size), dtype)
    b = jr.normal(jr.key(1), (size, size), dtype)
    dot = jax.jit(jnp.dot)
    times = time_calls(lambda i: dot(a, b), repeats, warmup=1)
    flops = 2.0 * size**3
    stats = summarize(times)
    return {
        "size": size,
        "dtype": dtype,
        "flops": flops,
        "seconds": stats,
        "flops_per_second": flops / stats["median"],
    }


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """`columns` are (key, header) pairs; floats are printed with 3 significant digits."""

    def fmt(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            if value == 0 or 1e-3 <= abs(value) < 1e6:
                return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
            return f"{value:.3e}"
        return str(value)

    lines = [
        "| " + " | ".join(h for _, h in columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)


def write_results(
    name: str,
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    columns: Sequence[tuple[str, str]],
    extra: dict[str, Any] | None = None,
    *,
    quiet: bool = False,
) -> Path:
    """Writes `<out_dir>/<name>[-<tag>].json` (environment, flags, rows, extra) and the
    markdown table beside it; prints the table unless `quiet`; returns the JSON path.
    Scripts call it `quiet`ly after every row too, so a run cut short keeps its rows."""
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name if not args.tag else f"{name}-{args.tag}"
    flags = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {
        "benchmark": name,
        "environment": environment(),
        "flags": flags,
        "peak_rss_mb": peak_rss_mb(),
        "rows": rows,
        **(extra or {}),
    }
    payload = scrub_paths(json.loads(json.dumps(payload, default=str)))  # no machine paths
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    env = payload["environment"]
    table = markdown_table(rows, columns)
    header = (
        f"# {name}\n\n`{scrub_paths(' '.join(['python', *sys.argv]))}`\n\n"
        f"Device: {env['device']} ({env['cpu_model']}, {env['cpu_affinity']} cores), "
        f"jax {env['versions']['jax']}, commit {env['git_commit']}, "
        f"1-min load average at the end {env['load_average_1m']}.\n\n"
    )
    (out_dir / f"{stem}.md").write_text(header + table + "\n")
    if not quiet:
        print(table)
        print(f"\nwrote {json_path}")
    return json_path


def check_finite(what: str, values: dict[str, Any]) -> None:
    """Raises if any value of a metrics dict is not finite."""
    import numpy as np

    for key, value in values.items():
        if not np.all(np.isfinite(np.asarray(value))):
            raise RuntimeError(f"{what}: {key} is not finite ({value})")


def params_changed(before, after) -> bool:
    """True when at least one inexact array leaf differs between two models."""
    import equinox as eqx
    import jax
    import numpy as np

    a = jax.tree.leaves(eqx.filter(before, eqx.is_inexact_array))
    b = jax.tree.leaves(eqx.filter(after, eqx.is_inexact_array))
    return any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


def with_strategy(model, strategy: str):
    """A copy of a NoPropDT model with another `strategy` (a static field, so not `tree_at`-able):
    the same blocks, embedding, readout, schedule and eta."""
    import equinox as eqx
    import jax.random as jr

    import noprop_eqx as npx

    copy = npx.NoPropDT(
        model.num_classes,
        model.image_shape,
        num_blocks=model.num_blocks,
        embedding=model.embedding,
        schedule=model.schedule,
        eta=model.eta,
        strategy=strategy,
        blocks=model.blocks,
        key=jr.key(0),
    )
    return eqx.tree_at(lambda m: m.readout, copy, model.readout)


def strengthen_weak_types(model):
    """(model, paths): the model with every weakly typed array leaf made strongly typed, and the
    paths of those leaves. A weakly typed parameter comes back strongly typed from an optax
    update, so the second step would recompile; the benchmarks record such leaves (a library
    bug to fix where the parameter is created) and time the strongly typed model."""
    import jax
    import jax.numpy as jnp

    paths = []

    def fix(path, leaf):
        if isinstance(leaf, jax.Array) and getattr(leaf, "weak_type", False):
            paths.append(jax.tree_util.keystr(path))
            return jnp.array(leaf, dtype=leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(fix, model), paths


def library_jit(fun):
    """`eqx.filter_jit` with the library's per-backend compiler options (as `make_step` and
    `evaluate_accuracy` compile), so benchmarked code is compiled the way users get it."""
    import equinox as eqx

    from noprop_eqx._xla import jit_options

    return eqx.filter_jit(fun, **jit_options("auto"))
