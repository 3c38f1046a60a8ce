"""Run in a subprocess by tests/test_parallel.py with 10 CPU devices: every mesh's training step
against the single-device step. Prints one JSON object: the largest differences found."""

import functools
import json
import sys

import jax

jax.config.update("jax_num_cpu_devices", 10)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import noprop_eqx as npx  # noqa: E402
from noprop_eqx import parallel  # noqa: E402
from noprop_eqx.data import eval_batches  # noqa: E402

STEPS = 5
KEY = jr.key(0)
X = np.asarray(jr.normal(jr.key(1), (40, 1, 8, 8)), np.float32)
Y = np.asarray(jr.randint(jr.key(2), (40,), 0, 10))


def build(variant, num_blocks=10):
    kwargs = dict(backbone="simple", embedding="learned", embed_dim=6, key=KEY)
    if variant in ("DT", "BP"):
        kwargs["num_blocks"] = num_blocks
    return npx.build_model(variant, num_classes=10, image_shape=(1, 8, 8), **kwargs)


def copy(tree):
    return jax.tree.map(lambda a: jnp.array(a, copy=True) if eqx.is_array(a) else a, tree)


def params(model):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))]


def largest(a, b):
    """The largest |a - b| over leaves, relative to the largest |a| of that leaf."""
    return max(
        float(np.max(np.abs(u - v)) / max(np.max(np.abs(u)), 1e-12))
        for u, v in zip(a, b, strict=True)
    )


def trajectory(model, optimizer, step, mesh=None):
    """Parameters after STEPS - 1 and STEPS steps, the losses, and the trained model."""
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    model = copy(model)
    if mesh is not None:
        model, opt_state = parallel.place(model, opt_state, mesh)
    out, losses = [], []
    for i in range(STEPS):
        model, opt_state, aux = step(model, opt_state, (X, Y), jr.fold_in(KEY, i))
        losses.append(float(aux["loss"]))
        assert np.isfinite(losses[-1]), (i, losses)
        if i >= STEPS - 2:
            out.append(params(model))
    return out, losses, model


def main(cases):
    results = {}
    # Steps 1-4 at learning rate 1e-3 make a trajectory; step 5, at learning rate 1, moves
    # every parameter by exactly its gradient there. One compiled step per mesh.
    sgd = optax.sgd(lambda count: jnp.where(count == STEPS - 1, 1.0, 1e-3))
    meshes = [(8, 1), (4, 2), (1, 5), (1, 10), (2, 5)]
    for variant in ("DT", "DT-low-calls", "CT", "FM", "BP"):
        if not any(c.startswith(variant + " ") for c in cases) and cases != ["all"]:
            continue
        # Four blocks are enough for data=4 x blocks=2 (the default suite's mesh, compiled
        # faster); the other meshes need T = 10.
        small = all(c.endswith("data=4,blocks=2") for c in cases if c.startswith(variant + " "))
        model = build(variant.split("-")[0], 4 if small and cases != ["all"] else 10)
        if variant.startswith("DT"):
            reference = functools.partial(npx.make_dt_step, memory="blockwise")
            meshes_here = meshes if variant == "DT" else [(4, 2), (1, 10)]
        else:
            loss = type(model).loss_fn
            reference = lambda opt, loss=loss: npx.make_step(loss, opt)  # noqa: E731
            meshes_here = [(8, 1), (5, 1)]
        (p4_ref, p5_ref), loss_ref, model_ref = trajectory(model, sgd, reference(sgd))
        acc_ref = npx.evaluate_accuracy(model_ref, X, Y, batch_size=16)
        # Labels = the single-device predictions, stochastic where the variant has a sampler
        # (DT's Eq. 3 with noise, CT/FM from z_0 ~ N(0, I)), batch by batch as
        # evaluate_accuracy draws them: a mesh evaluation with the same key must score 1.
        key = None if variant == "BP" else jr.key(7)
        # A model whose predictions vary from image to image: the initial parameters, each
        # moved by noise of its own size.
        leaves, treedef = jax.tree.flatten(model)
        noise = iter(jr.split(jr.key(8), len(leaves)))
        varied = jax.tree.unflatten(
            treedef,
            [
                leaf + jr.normal(next(noise), leaf.shape) * (jnp.std(leaf) + 0.1)
                if eqx.is_inexact_array(leaf)
                else leaf
                for leaf in leaves
            ],
        )
        predicted = np.concatenate(
            [
                np.asarray(
                    varied.predict(xb, **({} if key is None else dict(key=jr.fold_in(key, i))))
                )[:n]
                for i, (xb, _, n) in enumerate(eval_batches(X, Y, 16))
            ]
        )
        for data, blocks in meshes_here:
            if f"{variant} data={data},blocks={blocks}" not in cases and cases != ["all"]:
                continue
            mesh = parallel.make_mesh(data, blocks)
            if variant.startswith("DT"):
                memory = "blockwise" if variant == "DT" else "low-calls"
                make = functools.partial(parallel.make_dt_step, mesh=mesh, memory=memory)
            else:
                make = lambda opt, mesh=mesh, loss=loss: parallel.make_step(loss, opt, mesh)  # noqa: E731
            (p4, p5), losses, trained = trajectory(model, sgd, make(sgd), mesh)
            acc = parallel.evaluate_accuracy(trained, X, Y, mesh, batch_size=16)
            agree = parallel.evaluate_accuracy(varied, X, predicted, mesh, batch_size=16, key=key)
            results[f"{variant} data={data},blocks={blocks}"] = dict(
                gradients=largest(
                    [a - b for a, b in zip(p4_ref, p5_ref, strict=True)],
                    [a - b for a, b in zip(p4, p5, strict=True)],
                ),
                params_4=largest(p4_ref, p4),
                loss_5=abs(losses[-1] - loss_ref[-1]) / abs(loss_ref[-1]),
                accuracy=[acc_ref, acc],
                agreement=agree,
                classes_predicted=len(set(predicted.tolist())),
                block_sharding=str(jax.tree.leaves(trained.blocks)[0].sharding.spec)
                if variant != "CT" and variant != "FM"
                else None,
            )
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:] or ["all"])
