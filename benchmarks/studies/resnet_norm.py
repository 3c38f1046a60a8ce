"""GroupNorm or BatchNorm in a ResNet-18 backbone for NoProp-CT/FM (issue 17).

`ResNetWrapper` normalises with GroupNorm: a backbone stays a pure function of one example, so
every loss stays `loss_fn(model, batch, key)`. BatchNorm needs the whole batch and carries
running statistics from step to step. Every normalisation of `ResNetWrapper` sits in its image
branch, which sees only the clean image x (never z_t or t): BatchNorm there would normalise the
clean images' features, as in supervised training, and its running statistics are well defined
at evaluation. This study measures what it would change.

It trains the same ResNet-18 image branch with either norm, under the library's NoProp-CT or
NoProp-FM loss, from the same initial weights (the norms' own parameters aside) and batches:

- the branch maps a batch of images to pooled features under
  `jax.vmap(..., axis_name="batch")`. With BatchNorm (`eqx.nn.BatchNorm(mode="batch")`,
  momentum 0.9 as PyTorch's default 0.1) training normalises with the batch's statistics and
  threads `eqx.nn.State` (the running statistics) from step to step;
- a head equal to `ResNetWrapper`'s (image FC, label FC, time FC, hidden layer, logits) takes the
  features as its "image", so the loss is the library's own `NoPropCT.loss_fn` /
  `NoPropFM.loss_fn`, differentiated through the branch;
- at evaluation the branch runs in `eqx.nn.inference_mode`: BatchNorm uses its running
  statistics, so an image's features do not depend on the rest of its batch.

Reported after every epoch: the deterministic read-out (Heun 20 from z_0 = 0), the paper's
stochastic one (5 runs from z_0 ~ N(0, I)) and the training time.

    python benchmarks/studies/resnet_norm.py --dataset cifar10 --data-dir DATA --variant CT \\
        --width 16 --epochs 3 --limit-train 20000 --tag cifar10-w16
"""

import json
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common  # noqa: E402

import noprop_eqx as npx  # noqa: E402
from noprop_eqx._loop import solver_kwargs  # noqa: E402
from noprop_eqx.models import AbstractBackbone, SinusoidalTimeEmbedding  # noqa: E402
from noprop_eqx.models._layers import dropout  # noqa: E402

NORMS = ("group", "batch", "group16")
_BN_MOMENTUM = 0.9


def _make_norm(kind: str, channels: int):
    if kind == "group":  # as ResNetWrapper: 32 groups, or one per channel below 32 channels
        return eqx.nn.GroupNorm(min(32, channels), channels)
    if kind == "group16":  # groups of 16 channels (one group below 32 channels)
        return eqx.nn.GroupNorm(max(1, channels // 16), channels)
    return eqx.nn.BatchNorm(channels, axis_name="batch", momentum=_BN_MOMENTUM, mode="batch")


def _normalise(norm, x, state):
    if isinstance(norm, eqx.nn.BatchNorm):
        return norm(x, state)
    return norm(x), state


class _Basic(eqx.Module):
    """ResNet basic block (two 3×3 convolutions), as `ResNetWrapper`'s for depths 18 and 34."""

    convs: tuple[eqx.nn.Conv2d, eqx.nn.Conv2d]
    norms: tuple
    shortcut: eqx.nn.Conv2d | None
    shortcut_norm: object

    def __init__(self, norm: str, c_in: int, c_out: int, stride: int, *, key):
        k1, k2, k3 = jr.split(key, 3)
        self.convs = (
            eqx.nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, use_bias=False, key=k1),
            eqx.nn.Conv2d(c_out, c_out, 3, padding=1, use_bias=False, key=k2),
        )
        self.norms = (_make_norm(norm, c_out), _make_norm(norm, c_out))
        if stride != 1 or c_in != c_out:
            self.shortcut = eqx.nn.Conv2d(c_in, c_out, 1, stride=stride, use_bias=False, key=k3)
            self.shortcut_norm = _make_norm(norm, c_out)
        else:
            self.shortcut = self.shortcut_norm = None

    def __call__(self, x, state):
        out, state = _normalise(self.norms[0], self.convs[0](x), state)
        out, state = _normalise(self.norms[1], self.convs[1](jax.nn.relu(out)), state)
        skip = x
        if self.shortcut is not None:
            skip, state = _normalise(self.shortcut_norm, self.shortcut(x), state)
        return jax.nn.relu(out + skip), state


class Branch(eqx.Module):
    """ResNet-18's image branch (3×3 stem, four stages of two basic blocks, global average
    pool), with GroupNorm or BatchNorm: image -> (8·width features, state)."""

    stem: eqx.nn.Conv2d
    stem_norm: object
    blocks: tuple[_Basic, ...]

    def __init__(self, norm: str, channels: int, width: int, *, key):
        keys = jr.split(key, 9)
        self.stem = eqx.nn.Conv2d(channels, width, 3, padding=1, use_bias=False, key=keys[0])
        self.stem_norm = _make_norm(norm, width)
        blocks, c_in = [], width
        for stage in range(4):
            c_out = width * 2**stage
            for i in range(2):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(_Basic(norm, c_in, c_out, stride, key=keys[1 + 2 * stage + i]))
                c_in = c_out
        self.blocks = tuple(blocks)

    def __call__(self, x, state):
        x, state = _normalise(self.stem_norm, self.stem(x), state)
        x = jax.nn.relu(x)
        for block in self.blocks:
            x, state = block(x, state)
        return jnp.mean(x, axis=(1, 2)), state


class FeatureHead(AbstractBackbone):
    """`ResNetWrapper`'s head on precomputed features, which arrive as the "image" of shape
    (features, 1, 1): image FC + label FC + time FC -> ReLU -> dropout -> FC -> ReLU -> logits."""

    image_fc: eqx.nn.Linear
    label_fc: eqx.nn.Linear
    time_embedding: SinusoidalTimeEmbedding
    time_fc: eqx.nn.Linear
    hidden: eqx.nn.Linear
    out: eqx.nn.Linear
    dropout: float = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)
    embed_dim: int = eqx.field(static=True)
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    time_conditioned: bool = eqx.field(static=True)

    def __init__(self, num_classes: int, embed_dim: int, features: int, *, key):
        keys = jr.split(key, 5)
        self.image_fc = eqx.nn.Linear(features, 256, key=keys[0])
        self.label_fc = eqx.nn.Linear(embed_dim, 256, key=keys[1])
        self.time_embedding = SinusoidalTimeEmbedding(64)
        self.time_fc = eqx.nn.Linear(64, 256, key=keys[2])
        self.hidden = eqx.nn.Linear(256, 256, key=keys[3])
        self.out = eqx.nn.Linear(256, num_classes, key=keys[4])
        self.dropout = 0.2
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.image_shape = (features, 1, 1)
        self.time_conditioned = True

    def __call__(self, z, x, t=None, *, key=None):
        h = self.image_fc(x.reshape(-1)) + self.label_fc(z)
        h = h + self.time_fc(self.time_embedding(jnp.asarray(t)))
        h = dropout(jax.nn.relu(h), self.dropout, key)
        return self.out(jax.nn.relu(self.hidden(h)))


def build(norm: str, variant: str, num_classes: int, channels: int, width: int, key):
    """(branch, its state, NoProp model whose backbone is a `FeatureHead`). The key is split
    the same way for either norm, so the convolutions and the head start equal."""
    k_branch, k_model = jr.split(key)
    branch, state = eqx.nn.make_with_state(Branch)(norm, channels, width, key=k_branch)
    features = 8 * width
    cls = {"CT": npx.NoPropCT, "FM": npx.NoPropFM}[variant]
    model = cls(
        num_classes,
        (features, 1, 1),
        backbone=lambda k: FeatureHead(num_classes, num_classes, features, key=k),
        key=k_model,
    )
    return branch, state, model


def batch_features(branch, state, x):
    """The branch over a batch: features (batch, features, 1, 1) and the new state."""
    feats, state = jax.vmap(branch, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
        x, state
    )
    return feats[:, :, None, None], state


@eqx.filter_jit
def _eval_features(branch, state, x):
    return batch_features(eqx.nn.inference_mode(branch), state, x)[0]


def eval_features(branch, state, x, batch: int = 500) -> np.ndarray:
    """Features of `x` with the branch in inference mode (BatchNorm: running statistics)."""
    return np.concatenate(
        [
            np.asarray(_eval_features(branch, state, jnp.asarray(x[i : i + batch])))
            for i in range(0, len(x), batch)
        ]
    )


def make_train_step(optimizer):
    @eqx.filter_jit
    def step(params, state, opt_state, x, y, key):
        def loss(params):
            branch, model = params
            feats, new_state = batch_features(branch, state, x)
            value, aux = type(model).loss_fn(model, (feats, y), key)
            return value, (aux, new_state)

        (_, (aux, new_state)), grads = eqx.filter_value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(params, eqx.is_array))
        return eqx.apply_updates(params, updates), new_state, opt_state, aux

    return step


def main() -> None:
    parser = _common.base_parser(__doc__.splitlines()[0], Path(__file__).parent / "results")
    parser.add_argument("--dataset", default="cifar10", help="cifar10 (the study) or digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--variant", choices=["CT", "FM"], default="CT")
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 first-stage width")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--norms", nargs="+", choices=NORMS, default=["group", "batch"])
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--limit-test", type=int, default=None)
    parser.add_argument("--inference-runs", type=int, default=5)
    args = parser.parse_args()
    _common.apply_jax_options(args)

    data = npx.data.load_dataset(args.dataset, args.data_dir)
    x_train, y_train = data.x_train[: args.limit_train], data.y_train[: args.limit_train]
    x_test, y_test = data.x_test[: args.limit_test], data.y_test[: args.limit_test]
    steps = args.epochs * (len(x_train) // 128)
    predict = solver_kwargs(args.variant)
    rows = []
    for norm in args.norms:
        branch, state, model = build(
            norm,
            args.variant,
            data.num_classes,
            data.image_shape[0],
            args.width,
            jr.key(args.seed),
        )
        params = (branch, model)
        # The CLI's optimiser for CT/FM: Adam + L2 weight decay 1e-3, lr cosine over the run.
        optimizer = npx.paper_optimizer(
            model, learning_rate=optax.cosine_decay_schedule(1e-3, steps)
        )
        opt_state = optimizer.init(eqx.filter(params, eqx.is_array))
        step = make_train_step(optimizer)
        k_run = jr.key(1000 + args.seed)
        elapsed = 0.0
        for epoch in range(1, args.epochs + 1):
            k_data = jr.fold_in(k_run, epoch)
            start = time.perf_counter()
            sums, count = {}, 0
            batches = npx.data.train_batches(x_train, y_train, 128, key=k_data)
            for i, (xb, yb) in enumerate(batches):
                params, state, opt_state, aux = step(
                    params, state, opt_state, xb, yb, jr.fold_in(k_data, 10**6 + i)
                )
                for k, v in aux.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
            jax.block_until_ready(params)
            elapsed += time.perf_counter() - start
            branch, model = params
            feats = eval_features(branch, state, x_test)
            det = npx.evaluate_accuracy(model, feats, y_test, **predict)
            k_infer = jr.fold_in(jr.key(args.seed), 1_000_003)
            stoch = [
                npx.evaluate_accuracy(model, feats, y_test, key=k, **predict)
                for k in jr.split(k_infer, args.inference_runs)
            ]
            row = dict(
                norm=norm,
                epoch=epoch,
                deterministic=round(100 * det, 2),
                stochastic_mean=round(100 * float(np.mean(stoch)), 2) if stoch else None,
                stochastic_se=(
                    round(100 * float(np.std(stoch, ddof=1) / len(stoch) ** 0.5), 2)
                    if len(stoch) > 1
                    else None
                ),
                train_s=round(elapsed, 1),
                **{k: round(float(v) / count, 4) for k, v in sums.items()},
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
            _common.write_results(
                "resnet_norm",
                args,
                rows,
                [
                    ("norm", "norm"),
                    ("epoch", "epoch"),
                    ("deterministic", "deterministic %"),
                    ("stochastic_mean", "stochastic % (mean)"),
                    ("stochastic_se", "± s.e."),
                    ("train_s", "train s"),
                ],
                extra=dict(
                    variant=args.variant,
                    depth=18,
                    width=args.width,
                    train_images=len(x_train),
                    test_images=len(x_test),
                    bn_momentum=_BN_MOMENTUM,
                ),
                quiet=True,
            )
    print(open(Path(args.out_dir) / f"resnet_norm{'-' + args.tag if args.tag else ''}.md").read())


if __name__ == "__main__":
    main()
