"""A small functional train-state API: `create_train_state`, `train_step`, `eval_step`."""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Int, PRNGKeyArray, PyTree

from ._train import LossFn, init_optimizer_state, make_step, paper_optimizer


class TrainState(eqx.Module):
    """Everything a training loop carries, as one PyTree: the model, the optimiser state, the
    step count, and (static) the optimiser and the loss function."""

    model: eqx.Module
    opt_state: PyTree
    step: Int[Array, ""]
    optimizer: optax.GradientTransformation = eqx.field(static=True)
    loss_fn: LossFn = eqx.field(static=True)


def create_train_state(
    model: eqx.Module,
    optimizer: optax.GradientTransformation | None = None,
    loss_fn: LossFn | None = None,
) -> TrainState:
    """A fresh `TrainState`. Defaults: the paper's optimiser and the model class's `loss_fn`."""
    optimizer = paper_optimizer(model) if optimizer is None else optimizer
    loss_fn = type(model).loss_fn if loss_fn is None else loss_fn
    return TrainState(
        model=model,
        opt_state=init_optimizer_state(model, optimizer),
        step=jnp.asarray(0),
        optimizer=optimizer,
        loss_fn=loss_fn,
    )


_steps: dict[tuple[Any, Any], Any] = {}


def train_step(
    state: TrainState, batch: tuple[ArrayLike, ArrayLike], key: PRNGKeyArray
) -> tuple[TrainState, dict[str, Array]]:
    """One compiled optimisation step: returns the new state and the loss metrics."""
    cache_key = (state.loss_fn, state.optimizer)
    if cache_key not in _steps:
        _steps[cache_key] = make_step(state.loss_fn, state.optimizer)
    model, opt_state, aux = _steps[cache_key](state.model, state.opt_state, batch, key)
    return eqx.tree_at(
        lambda s: (s.model, s.opt_state, s.step), state, (model, opt_state, state.step + 1)
    ), aux


@eqx.filter_jit
def eval_step(
    model: eqx.Module, batch: tuple[ArrayLike, ArrayLike], key: PRNGKeyArray | None = None
) -> dict[str, Array]:
    """Accuracy and correct count on one batch (dropout off; `key` makes inference stochastic)."""
    if isinstance(model, TrainState):
        model = model.model
    x, y = batch
    correct = jnp.sum(model.predict(x, key=key) == y)
    return dict(correct=correct, accuracy=correct / y.shape[0])
