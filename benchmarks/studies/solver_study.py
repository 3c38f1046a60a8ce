"""Test accuracy of trained NoProp-CT/FM models against the number of function evaluations.

Loads the CT and FM checkpoints of a `noprop-eqx train` output folder and, for each, integrates
the inference ODE with fixed-step Euler and Heun at several step counts and with adaptive Tsit5
(`diffrax.PIDController`, rtol = atol = tol) at several tolerances. For every setting it reports
test accuracy, agreement with the reference (the most accurate-in-principle setting: Euler with
the most steps), the number of vector-field evaluations (NFE, from `model.solve(x).nfe`; for an
adaptive solver the mean over test batches, since the whole batch is one ODE state) and the time
per test image (compiled separately, median of repeats). Correctness first: a fixed-step NFE must
equal steps × evaluations per step, and the reference must reproduce `evaluate_accuracy`.

    python benchmarks/studies/solver_study.py --run-dir runs/mnist \
        --data-dir DATA/mnist --out benchmarks/studies/results/solvers.json
    python benchmarks/studies/solver_study.py --run-dir RUN --quick   # tiny settings, for tests

Question asked: is there an adaptive or low-step setting within 0.1 accuracy points of 1000-step
Euler at <= 50 NFE?
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
STUDY_RESULTS = Path(__file__).resolve().parent / "results"

import argparse
import json
import platform
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import noprop_eqx as npx
from noprop_eqx._machine import git_commit
from noprop_eqx._records import portable_path, scrub_paths

REPO = Path(__file__).resolve().parents[2]


def _commit() -> str | None:
    return git_commit(REPO)


def settings(euler: list[int], heun: list[int], tolerances: list[float]) -> list[dict]:
    out = [dict(solver="euler", steps=n) for n in euler]
    out += [dict(solver="heun", steps=n) for n in heun]
    out += [dict(solver="tsit5", tol=tol) for tol in tolerances]
    return out


def solve_kwargs(setting: dict) -> dict:
    if setting["solver"] == "tsit5":
        tol = setting["tol"]
        return dict(
            solver=diffrax.Tsit5(),
            stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
            max_steps=16384,
        )
    solver = {"euler": diffrax.Euler, "heun": diffrax.Heun}[setting["solver"]]()
    return dict(solver=solver, num_steps=setting["steps"])


def label(setting: dict) -> str:
    if setting["solver"] == "tsit5":
        return f"tsit5 tol={setting['tol']:g}"
    return f"{setting['solver']} {setting['steps']}"


@eqx.filter_jit
def _predict_and_nfe(model, x, kwargs):
    """Predictions from one ODE solve, and its NFE. The class is read off z_1 as the model's
    own `logits` does: CT through its readout, FM as the nearest class embedding."""
    sol = model.solve(x, **kwargs)
    if isinstance(model, npx.NoPropCT):
        logits = jax.vmap(model.readout)(sol.z1)
    else:
        w = model.embedding.matrix()
        logits = -jnp.sum((sol.z1[:, None, :] - w[None]) ** 2, axis=-1)
    return jnp.argmax(logits, axis=-1), sol.nfe


def predict_all(model, x, y, kwargs, batch_size: int) -> tuple[np.ndarray, float]:
    preds, nfes = [], []
    for xb, _, n in npx.data.eval_batches(x, y, batch_size):
        p, nfe = _predict_and_nfe(model, xb, kwargs)
        preds.append(np.asarray(p)[:n])
        nfes.append(int(nfe))
    return np.concatenate(preds), float(np.mean(nfes))


def study_model(model, ds, setting_list, *, batch_size: int, repeats: int, log) -> list[dict]:
    x, y = ds.x_test, ds.y_test
    rows = []
    for s in setting_list:
        kwargs = solve_kwargs(s)
        tic = time.perf_counter()
        jax.block_until_ready(_predict_and_nfe(model, x[:batch_size], kwargs))
        compile_s = time.perf_counter() - tic
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            preds, nfe = predict_all(model, x, y, kwargs, batch_size)
            times.append(time.perf_counter() - tic)
        if s["solver"] != "tsit5":
            per_step = 1 if s["solver"] == "euler" else 2
            if nfe != per_step * s["steps"]:
                raise AssertionError(f"{label(s)}: NFE {nfe} != {per_step} x {s['steps']} steps")
        row = dict(
            **s,
            label=label(s),
            nfe=nfe,
            accuracy=float(np.mean(preds == y)),
            compile_s=compile_s,
            time_per_image_ms=1e3 * float(np.median(times)) / len(y),
            time_spread_ms=1e3 * float(np.ptp(times)) / len(y),
            predictions=preds,
        )
        rows.append(row)
        print(
            f"  {row['label']:<18} NFE {nfe:7.1f}  acc {row['accuracy']:.2%}  "
            f"{row['time_per_image_ms']:.2f} ms/image (compile {compile_s:.1f}s)",
            file=log,
            flush=True,
        )
    return rows


def summarise(rows: list[dict], y: np.ndarray, max_nfe: float, tolerance_points: float) -> dict:
    """Agreement with the reference (Euler with the most steps) and the question's answer."""
    euler = [r for r in rows if r["solver"] == "euler"]
    ref = max(euler, key=lambda r: r["steps"]) if euler else max(rows, key=lambda r: r["nfe"])
    for r in rows:
        r["agreement"] = float(np.mean(r["predictions"] == ref["predictions"]))
        r["delta_points"] = 100 * (r["accuracy"] - ref["accuracy"])
    candidates = [
        r
        for r in rows
        if r is not ref and r["nfe"] <= max_nfe and abs(r["delta_points"]) <= tolerance_points
    ]
    best = min(candidates, key=lambda r: r["nfe"]) if candidates else None
    se_points = 100 * float(np.sqrt(ref["accuracy"] * (1 - ref["accuracy"]) / len(y)))
    return dict(
        reference=ref["label"],
        reference_accuracy=ref["accuracy"],
        reference_standard_error_points=se_points,
        criterion=f"|accuracy - reference| <= {tolerance_points} points at NFE <= {max_nfe:g}",
        holds=best is not None,
        cheapest_passing=None if best is None else best["label"],
        cheapest_passing_nfe=None if best is None else best["nfe"],
    )


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(results["models"])
    fig, axes = plt.subplots(1, len(variants), figsize=(5.5 * len(variants), 4), squeeze=False)
    for ax, variant in zip(axes[0], variants, strict=True):
        rows = results["models"][variant]["rows"]
        for solver, marker in (("euler", "o"), ("heun", "s"), ("tsit5", "^")):
            sel = sorted((r for r in rows if r["solver"] == solver), key=lambda r: r["nfe"])
            if sel:
                ax.plot(
                    [r["nfe"] for r in sel],
                    [100 * r["accuracy"] for r in sel],
                    marker=marker,
                    label=solver if solver != "tsit5" else "tsit5 (adaptive)",
                )
        ref = results["models"][variant]["summary"]["reference_accuracy"]
        ax.axhline(100 * ref, color="gray", lw=0.8, ls="--", label="reference")
        ax.axhspan(100 * ref - 0.1, 100 * ref + 0.1, color="gray", alpha=0.15)
        ax.axvline(50, color="red", lw=0.8, ls=":", label="NFE = 50")
        ax.set_xscale("log")
        ax.set(xlabel="NFE (log)", ylabel="test accuracy (%)", title=f"NoProp-{variant}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, required=True, help="a `noprop-eqx train --out` folder")
    p.add_argument("--variants", nargs="+", choices=("CT", "FM"), default=["CT", "FM"])
    p.add_argument("--data-dir", default=None, help="default: $NOPROP_DATA_DIR, then the hub")
    p.add_argument("--euler-steps", type=int, nargs="*", default=[10, 20, 40, 100, 1000])
    p.add_argument("--heun-steps", type=int, nargs="*", default=[10, 20, 40, 100, 1000])
    p.add_argument("--tolerances", type=float, nargs="*", default=[1e-2, 1e-4])
    p.add_argument("--limit-test", type=int, default=None, help="first N test images only")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=1, help="timed repeats per setting")
    p.add_argument("--max-nfe", type=float, default=50)
    p.add_argument("--tolerance-points", type=float, default=0.1)
    p.add_argument("--quick", action="store_true", help="tiny settings (tests)")
    p.add_argument("--out", type=Path, default=STUDY_RESULTS / "solvers.json")
    p.add_argument("--plot", type=Path, default=None, help="default: --out with .png")
    args = p.parse_args(argv)
    if args.quick:
        args.euler_steps, args.heun_steps, args.tolerances = [2, 8], [2], [1e-2]
        args.limit_test = min(args.limit_test or 64, 64)
        args.batch_size = min(args.batch_size, 32)
    return args


def main(argv=None) -> dict:
    import sys

    args = parse_args(argv)
    log = sys.stderr
    setting_list = settings(args.euler_steps, args.heun_steps, args.tolerances)
    results: dict = dict(
        question=(
            f"is there an adaptive or low-step setting within {args.tolerance_points} accuracy "
            f"points of the reference at <= {args.max_nfe:g} NFE?"
        ),
        run_dir=portable_path(args.run_dir),
        device=f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform})",
        versions=dict(
            python=platform.python_version(),
            jax=jax.__version__,
            equinox=eqx.__version__,
            diffrax=diffrax.__version__,
        ),
        commit=_commit(),
        command=" ".join(["python", "benchmarks/studies/solver_study.py", *(argv or sys.argv[1:])]),
        models={},
    )
    datasets: dict = {}
    for variant in args.variants:
        run = args.run_dir / variant
        config = json.loads((run / "config.json").read_text())
        name = (config["dataset"], config["limit_train"])
        if name not in datasets:
            ds = npx.data.load_dataset(config["dataset"], args.data_dir)
            datasets[name] = ds.subset(
                config["limit_train"], args.limit_test, seed=config.get("subset_seed")
            )
        ds = datasets[name]
        model, _, epoch, _, config = npx.load_run(run, ds)
        print(f"{variant}: {run} (epoch {epoch}), {len(ds.y_test)} test images", file=log)
        bs = min(args.batch_size, len(ds.y_test))
        rows = study_model(model, ds, setting_list, batch_size=bs, repeats=args.repeats, log=log)
        summary = summarise(rows, ds.y_test, args.max_nfe, args.tolerance_points)
        # correctness: the reference agrees with the library's evaluate_accuracy
        ref = next(r for r in rows if r["label"] == summary["reference"])
        check = npx.evaluate_accuracy(
            model, ds.x_test, ds.y_test, batch_size=bs, **solve_kwargs(ref)
        )
        if abs(check - ref["accuracy"]) > 1e-9:
            raise AssertionError(f"{variant}: study {ref['accuracy']} != evaluate_accuracy {check}")
        for r in rows:
            del r["predictions"]
        results["models"][variant] = dict(
            epochs=epoch,
            train_size=len(ds.y_train),
            test_size=len(ds.y_test),
            config=config,
            rows=rows,
            summary=summary,
        )
        verdict = (
            f"holds: {summary['cheapest_passing']} ({summary['cheapest_passing_nfe']:g} NFE)"
            if summary["holds"]
            else "does not hold"
        )
        print(f"{variant}: reference {summary['reference']}; criterion {verdict}", file=log)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(scrub_paths(results), indent=2) + "\n")
    plot_path = args.plot or args.out.with_suffix(".png")
    plot(results, plot_path)
    print(f"wrote {args.out} and {plot_path}", file=log)
    return results


if __name__ == "__main__":
    main()
