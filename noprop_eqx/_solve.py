"""Integrating the CT/FM ODE from t = 0 (noise) to t = 1 (clean) with any Diffrax solver."""

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
from jaxtyping import Array, Float, PyTree


class ODESolution(eqx.Module):
    """z(1), and what it cost: the number of solver steps (accepted + rejected) and of
    vector-field evaluations."""

    z1: Float[Array, "batch dim"]
    num_steps: Array
    nfe: Array


def evaluations_per_step(solver: diffrax.AbstractSolver) -> tuple[int, int]:
    """(vector-field evaluations per step, one-off evaluations) for an explicit solver.

    An explicit Runge-Kutta method with s stages costs s evaluations a step, or s - 1 when its
    last stage is reused as the next step's first (FSAL), plus one at the start.
    """
    if isinstance(solver, diffrax.Euler):
        return 1, 0
    if isinstance(solver, diffrax.AbstractERK):
        stages = len(solver.tableau.c) + 1
        return (stages - 1, 1) if solver.tableau.fsal else (stages, 0)
    raise TypeError(
        "expected an explicit Diffrax solver (Euler, Heun, Midpoint, Ralston, Bosh3, Tsit5, "
        f"Dopri5, Dopri8, ...), got {type(solver).__name__}"
    )


def integrate(
    vector_field: Callable[[Any, Any, Any], Any],
    z0: Float[Array, "batch dim"],
    args: PyTree = None,
    *,
    solver: diffrax.AbstractSolver | None = None,
    num_steps: int | None = None,
    dt0: float | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    max_steps: int = 4096,
) -> ODESolution:
    """Solves dz/dt = vector_field(t, z, args) from t = 0 to t = 1.

    Fixed step: give `num_steps` (or `dt0`) and leave `stepsize_controller` as None.
    Adaptive: give a controller such as `diffrax.PIDController(rtol=1e-3, atol=1e-3)` and a
    solver with an error estimate (Heun, Tsit5, Dopri5, ...); `dt0=None` lets Diffrax pick the
    first step. The whole batch is one ODE state, so an adaptive solve takes one step sequence.
    Defaults: Heun with 20 steps.
    """
    solver = diffrax.Heun() if solver is None else solver
    if not isinstance(solver, diffrax.AbstractSolver):
        raise TypeError(f"expected a Diffrax solver, got {type(solver).__name__}")
    per_step, initial = evaluations_per_step(solver)
    if num_steps is not None and dt0 is not None:
        raise ValueError(f"give num_steps or dt0, not both (got num_steps={num_steps}, dt0={dt0})")
    if num_steps is not None:
        if not (isinstance(num_steps, int) and num_steps >= 1):
            raise ValueError(f"expected num_steps to be a positive int, got {num_steps!r}")
        dt0 = 1.0 / num_steps
    adaptive = stepsize_controller is not None and not isinstance(
        stepsize_controller, diffrax.ConstantStepSize
    )
    if not adaptive:
        stepsize_controller = diffrax.ConstantStepSize()
        if dt0 is None:
            dt0 = 1.0 / 20
        if not 0.0 < dt0 <= 1.0:
            raise ValueError(f"expected 0 < dt0 <= 1, got dt0={dt0}")
    elif isinstance(solver, diffrax.Euler) or not solver.tableau.b_error.any():
        raise ValueError(
            f"an adaptive step-size controller needs a solver with an error estimate; "
            f"{type(solver).__name__} has none (use Heun, Tsit5 or Dopri5)"
        )
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        solver,
        t0=0.0,
        t1=1.0,
        dt0=dt0,
        y0=z0,
        args=args,
        stepsize_controller=stepsize_controller,
        max_steps=max_steps,
        saveat=diffrax.SaveAt(t1=True),
    )
    steps = sol.stats["num_steps"]
    return ODESolution(z1=sol.ys[-1], num_steps=steps, nfe=steps * per_step + initial)
