"""Checkpoints of a training run: model, optimizer state, epoch and RNG key in one file.

The file holds the leaves of `{"model", "opt_state", "epoch", "key"}` written by
`eqx.tree_serialise_leaves`. To read it back you build a skeleton of the same structure (the
model and optimizer state a fresh run would start from) and `load_checkpoint` fills it in.
"""

import json
import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import PRNGKeyArray, PyTree


def _payload(model: PyTree, opt_state: PyTree, epoch, key_data) -> dict:
    return dict(model=model, opt_state=opt_state, epoch=epoch, key=key_data)


def save_checkpoint(
    path: str | os.PathLike,
    model: PyTree,
    opt_state: PyTree,
    *,
    epoch: int,
    key: PRNGKeyArray,
) -> Path:
    """Writes `model`, `opt_state`, the number of completed `epoch`s and the run's base `key`
    to `path` with `eqx.tree_serialise_leaves`. The write is atomic (a temporary file renamed
    over `path`), so an interrupted save never leaves a half-written checkpoint."""
    if not (isinstance(epoch, int) and epoch >= 0):
        raise ValueError(f"expected epoch to be a non-negative int, got {epoch!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    payload = _payload(model, opt_state, jnp.asarray(epoch, jnp.int32), jr.key_data(key))
    eqx.tree_serialise_leaves(tmp, payload)
    os.replace(tmp, path)
    return path


def load_checkpoint(
    path: str | os.PathLike, model: PyTree, opt_state: PyTree, *, key: PRNGKeyArray
) -> tuple[PyTree, PyTree, int, PRNGKeyArray]:
    """Reads a checkpoint written by `save_checkpoint` into skeletons of the same structure.

    **Arguments:** `model`, `opt_state` and `key` are skeletons (e.g. a freshly built model, its
    `init_optimizer_state` and `jax.random.key(seed)`); only their structure, shapes and dtypes
    matter.

    **Returns:** `(model, opt_state, epoch, key)`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    like = _payload(model, opt_state, jnp.asarray(0, jnp.int32), jr.key_data(key))
    try:
        loaded = eqx.tree_deserialise_leaves(path, like)
    except Exception as e:  # shape/dtype/structure mismatch: say what was expected
        raise ValueError(
            f"checkpoint {path} does not match the model and optimizer built from the run's "
            f"configuration ({type(e).__name__}: {e})"
        ) from e
    new_key = jax.random.wrap_key_data(loaded["key"], impl=jax.random.key_impl(key))
    return loaded["model"], loaded["opt_state"], int(loaded["epoch"]), new_key


def model_from_config(config: dict, dataset, *, key: PRNGKeyArray) -> eqx.Module:
    """The model a run's `config.json` describes, freshly initialised with `key` (`dataset`:
    the run's training data, for a prototype embedding)."""
    from ._loop import build_model

    return build_model(
        config["variant"],
        num_classes=config["num_classes"],
        image_shape=tuple(config["image_shape"]),
        backbone=config["model"],
        embedding=config["embedding"],
        embed_dim=config["embed_dim"],
        num_blocks=config.get("num_blocks", 10),
        x_train=dataset.x_train,
        y_train=dataset.y_train,
        prototype_scale=config.get("prototype_scale"),
        fixed_embedding=bool(config.get("fixed_embedding", False)),
        ct_gamma_init=config.get(
            "ct_gamma_init", [-5.0, 5.0] if config["variant"] == "CT" else None
        ),
        ct_fixed_schedule=bool(config.get("ct_fixed_schedule") or False),
        ct_weighting=config.get("ct_weighting"),
        fm_z_input=config.get("fm_z_input"),
        dt_alpha_bar_max=config.get("dt_alpha_bar_max"),
        key=key,
    )


def load_run(
    run_dir: str | os.PathLike, dataset
) -> tuple[eqx.Module, PyTree, int, PRNGKeyArray, dict]:
    """Restores the latest checkpoint of a `noprop-eqx train` run folder (`run_dir` holds
    `config.json` and `checkpoint.eqx`).

    **Arguments:** `dataset` is the `ImageDataset` the run was trained on (after any
    `limit_train`); a prototype embedding's skeleton is built from its training images.

    **Returns:** `(model, opt_state, epoch, key, config)`.
    """
    from ._train import init_optimizer_state, paper_optimizer

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in {run_dir}: not a noprop-eqx run folder")
    config = json.loads(config_path.read_text())
    model = model_from_config(config, dataset, key=jr.key(0))
    # CT/FM runs saved before CT/FM had weight decay trained with plain Adam (no
    # "weight_decay_mode" in their config): rebuild that optimiser's state.
    plain_adam = config.get("weight_decay_mode", "none") == "none"
    weight_decay = (
        0.0 if config["variant"] in ("CT", "FM") and plain_adam else config["weight_decay"]
    )
    optimizer = paper_optimizer(model, learning_rate=config["lr"], weight_decay=weight_decay)
    opt_state = init_optimizer_state(model, optimizer)
    model, opt_state, epoch, key = load_checkpoint(
        run_dir / "checkpoint.eqx", model, opt_state, key=jr.key(0)
    )
    return model, opt_state, epoch, key, config
