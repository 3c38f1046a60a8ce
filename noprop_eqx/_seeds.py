"""Several seeds' models trained in one compiled step (the paper's protocol trains 3 seeds).

The models and optimiser states carry a leading seed axis (`stack_trees`); each seed has its own
batch and key, so each seed's trajectory is the one a separate run with that seed follows."""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from ._xla import CompilerOptions, jit_options

FORMS = ("loop", "vmap")


def default_seeds_form(backend: str | None = None) -> str:
    """What `make_seeds_step(form="auto")` builds on `backend` (default: JAX's default
    backend): "loop" on CPU, where a `vmap` over the seeds' convolutions lowers to grouped
    convolutions (as for NoProp-DT's blocks; `benchmarks/seeds.py` measures it), "vmap"
    elsewhere."""
    backend = jax.default_backend() if backend is None else backend
    return "loop" if backend == "cpu" else "vmap"


def stack_trees(trees: Sequence[PyTree]) -> PyTree:
    """One pytree whose arrays stack those of `trees` along a new leading axis; every other
    leaf must be the same in all of them (the models of one configuration, say)."""
    if not trees:
        raise ValueError("expected at least one tree to stack, got none")

    def stack(*leaves):
        if eqx.is_array(leaves[0]):
            return jnp.stack(leaves)
        return leaves[0]

    return jax.tree.map(stack, *trees)


def unstack_tree(tree: PyTree, count: int) -> list[PyTree]:
    """The `count` pytrees `stack_trees` stacked into `tree`."""
    return [jax.tree.map(lambda a, i=i: a[i] if eqx.is_array(a) else a, tree) for i in range(count)]


class SeedsStep:
    """`step(models, opt_states, batches, keys) -> (models, opt_states, aux)`: one training
    step of every seed, compiled as one call. Every argument has a leading seed axis
    (`stack_trees`; the batches `(images, labels)` and keys stacked likewise); so has every
    result. Seed i's results are those of `single_step(models[i], opt_states[i], batches[i],
    keys[i])` up to float rounding. The models and optimiser states are donated."""

    def __init__(
        self, step_fn: Callable, form: str = "auto", compiler_options: CompilerOptions = "auto"
    ):
        form = default_seeds_form() if form == "auto" else form
        if form not in FORMS:
            raise ValueError(f"expected form to be one of {(*FORMS, 'auto')}, got {form!r}")
        self.form = form

        if form == "vmap":
            batched = eqx.filter_vmap(step_fn)

            def run(batches_and_keys, models, opt_states):
                batches, keys = batches_and_keys
                return batched(models, opt_states, batches, keys)

        else:

            def run(batches_and_keys, models, opt_states):
                batches, keys = batches_and_keys
                count = len(keys)
                outs = [
                    step_fn(m, s, b, k)
                    for m, s, b, k in zip(
                        unstack_tree(models, count),
                        unstack_tree(opt_states, count),
                        unstack_tree(batches, count),
                        unstack_tree(keys, count),
                        strict=True,
                    )
                ]
                return stack_trees(outs)

        self._jitted = eqx.filter_jit(
            run, donate="all-except-first", **jit_options(compiler_options)
        )

    def __call__(self, models, opt_states, batches, keys):
        return self._jitted((batches, keys), models, opt_states)

    def lower(self, models, opt_states, batches, keys):
        return self._jitted.lower((batches, keys), models, opt_states)


def make_seeds_step(
    step: Any, *, form: str = "auto", compiler_options: CompilerOptions = "auto"
) -> SeedsStep:
    """The seeds version of a training step: `step` is a `CompiledStep` (from `make_step`,
    `make_dt_step`) or an uncompiled `step(model, opt_state, batch, key)` function. `form`:
    "vmap" (`eqx.filter_vmap` over the seed axis), "loop" (the seeds one after the other in
    one compiled call) or "auto" (`default_seeds_form`).

        step = npx.make_seeds_step(npx.make_dt_step(optimizer))
        models = npx.stack_trees([npx.NoPropDT(..., key=k) for k in jr.split(key, 3)])
        opt_states = npx.stack_trees([npx.init_optimizer_state(m, optimizer) for m in ...])
        models, opt_states, aux = step(models, opt_states, stacked_batches, keys)
    """
    fn = getattr(step, "fn", step)
    if fn is None or not callable(fn):
        raise TypeError(
            f"expected a CompiledStep or a step function, got {type(step).__name__}: a step of "
            "several compiled calls (make_dt_step(memory='low-calls')) cannot run for several "
            "seeds in one call; use memory='blockwise' or 'default'"
        )
    return SeedsStep(fn, form, compiler_options)
