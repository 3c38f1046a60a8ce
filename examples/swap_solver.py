"""Swap the Diffrax solver used for NoProp-CT / NoProp-FM inference after training.

Inference integrates an ODE from noise (t = 0) to the class embedding (t = 1). The solver, the
number of steps and the step-size controller are plain arguments of `model.solve` /
`model.predict` / `evaluate_accuracy`, so one trained model can be read out with fixed-step
Euler or Heun, or adaptively with Tsit5 / Dopri5 and a PID controller. This script trains a
small NoProp-CT (and NoProp-FM) on scikit-learn's 8x8 digits and prints, for each solver, the
steps taken, the vector-field evaluations (NFE), the test accuracy and the time to solve the
whole test set.

    python examples/swap_solver.py --variants CT FM
"""

import argparse
import time

import diffrax
import equinox as eqx
import jax
import jax.random as jr
import optax

import noprop_eqx as npx

# class, training epochs, peak learning rate: brief training, enough for >90% test accuracy
VARIANTS = {"CT": (npx.NoPropCT, 30, 2e-3), "FM": (npx.NoPropFM, 12, 3e-3)}


def pid(tol: float) -> diffrax.PIDController:
    return diffrax.PIDController(rtol=tol, atol=tol)


SOLVERS = [
    ("Euler", dict(solver=diffrax.Euler(), num_steps=10)),
    ("Euler", dict(solver=diffrax.Euler(), num_steps=100)),
    ("Heun", dict(solver=diffrax.Heun(), num_steps=10)),
    ("Heun", dict(solver=diffrax.Heun(), num_steps=20)),
    ("Tsit5 + PID 1e-3", dict(solver=diffrax.Tsit5(), stepsize_controller=pid(1e-3))),
    ("Dopri5 + PID 1e-3", dict(solver=diffrax.Dopri5(), stepsize_controller=pid(1e-3))),
    ("Dopri5 + PID 1e-6", dict(solver=diffrax.Dopri5(), stepsize_controller=pid(1e-6))),
]


@eqx.filter_jit
def solve(model, x, solve_kwargs):
    """`model.solve`, compiled once per solver configuration (solvers are static)."""
    return model.solve(x, **solve_kwargs)


def train(cls, epochs, learning_rate, data, args, key):
    """A short training run, as in quick_start.py."""
    k_model, key = jr.split(key)
    model = cls(data.num_classes, data.image_shape, backbone="simple", key=k_model)
    steps = epochs * npx.data.num_train_batches(len(data.x_train), args.batch_size)
    schedule = optax.cosine_decay_schedule(learning_rate, steps)
    optimizer = npx.paper_optimizer(model, learning_rate=schedule)
    opt_state = npx.init_optimizer_state(model, optimizer)
    step = npx.make_step(cls.loss_fn, optimizer)
    for _ in range(epochs):
        key, k_perm = jr.split(key)
        batches = npx.data.train_batches(data.x_train, data.y_train, args.batch_size, key=k_perm)
        for i, batch in enumerate(batches):
            model, opt_state, _ = step(model, opt_state, batch, jr.fold_in(k_perm, i))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = npx.data.load_digits()
    for name in args.variants:
        cls, epochs, learning_rate = VARIANTS[name]
        tic = time.perf_counter()
        model = train(cls, epochs, learning_rate, data, args, jr.key(args.seed))
        print(
            f"\nNoProp-{name}: trained {epochs} epochs in {time.perf_counter() - tic:.1f}s; "
            f"inference on the {len(data.y_test)} test images:"
        )
        print(f"{'solver':<18} | {'steps':>5} | {'NFE':>4} | {'test acc':>8} | {'solve (ms)':>10}")
        print(f"{'-' * 18}-+-{'-' * 5}-+-{'-' * 4}-+-{'-' * 8}-+-{'-' * 10}")
        for label, kwargs in SOLVERS:
            jax.block_until_ready(solve(model, data.x_test, kwargs))  # compile
            times = []
            for _ in range(3):
                tic = time.perf_counter()
                sol = jax.block_until_ready(solve(model, data.x_test, kwargs))
                times.append(time.perf_counter() - tic)
            ms = 1e3 * sorted(times)[1]  # median of 3
            acc = npx.evaluate_accuracy(model, data.x_test, data.y_test, **kwargs)
            print(
                f"{label:<18} | {int(sol.num_steps):>5} | {int(sol.nfe):>4} | {acc:>8.2%} | "
                f"{ms:>10.1f}"
            )


if __name__ == "__main__":
    main()
