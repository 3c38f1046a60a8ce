import re
from collections.abc import Callable

import equinox as eqx
import jax
import jax.random as jr
from jaxtyping import PRNGKeyArray

from ._base import AbstractBackbone
from ._paper import PaperCTNet, PaperDTBlock
from ._resnet import NORMS, ResNetWrapper
from ._simple import SimpleCNN

BackboneSpec = str | Callable[[PRNGKeyArray], AbstractBackbone]
BACKBONES = ("paper", "simple", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# A ResNet name, optionally with its first-stage width and BatchNorm: "resnet18" (width 64,
# GroupNorm), "resnet18-w32", "resnet18-bn", "resnet18-w32-bn".
_RESNET_NAME = re.compile(r"(resnet\d+)(?:-w([1-9]\d*))?(-bn)?")


def backbone_name(model: str, width: int = 64, norm: str = "group") -> str:
    """The backbone name of `model` (one of `BACKBONES`) with first-stage `width` and
    normalisation `norm`: `model` itself at the standard width 64 with GroupNorm,
    `"resnet18-w32"` for a ResNet-18 of width 32, `"resnet18-w32-bn"` for one with BatchNorm.
    Only the ResNets have a width and a choice of norm."""
    if model not in BACKBONES:
        raise ValueError(f"expected model to be one of {BACKBONES}, got {model!r}")
    if isinstance(width, bool) or not (isinstance(width, int) and width >= 1):
        raise ValueError(f"expected width to be a positive int, got {width!r}")
    if norm not in NORMS:
        raise ValueError(f"expected norm to be one of {NORMS}, got {norm!r}")
    if not model.startswith("resnet"):
        if width != 64:
            raise ValueError(
                f"only the ResNet backbones have a width, got width={width} for {model!r}"
            )
        if norm != "group":
            raise ValueError(
                f"only the ResNet backbones have a choice of norm, got norm={norm!r} for {model!r}"
            )
        return model
    return model + ("" if width == 64 else f"-w{width}") + ("-bn" if norm == "batch" else "")


def make_backbone(
    spec: BackboneSpec,
    *,
    num_classes: int,
    embed_dim: int,
    image_shape: tuple[int, int, int],
    time_conditioned: bool,
    key: PRNGKeyArray,
) -> AbstractBackbone:
    """Builds a backbone from a name (see `BACKBONES`; a ResNet's may carry a width and
    BatchNorm, as `backbone_name` writes them: "resnet18-w32", "resnet18-w32-bn") or a
    `key -> AbstractBackbone` factory, and checks that it fits the variant (classes, embedding
    size, image shape, time input)."""
    if spec == "paper":
        if time_conditioned:
            net = PaperCTNet(num_classes, embed_dim, image_shape, key=key)
        else:
            net = PaperDTBlock(num_classes, embed_dim, image_shape, key=key)
    elif spec == "simple":
        net = SimpleCNN(
            num_classes,
            64 if time_conditioned else 0,
            embed_dim=embed_dim,
            image_shape=image_shape,
            key=key,
        )
    elif (
        isinstance(spec, str) and (match := _RESNET_NAME.fullmatch(spec)) and match[1] in BACKBONES
    ):
        net = ResNetWrapper(
            num_classes,
            int(match[1].removeprefix("resnet")),
            int(match[2] or 64),
            64 if time_conditioned else 0,
            embed_dim=embed_dim,
            image_shape=image_shape,
            norm="batch" if match[3] else "group",
            key=key,
        )
    elif callable(spec):
        net = spec(key)
    else:
        raise ValueError(
            f"expected backbone to be one of {BACKBONES} (a ResNet optionally with a width and "
            f"BatchNorm, e.g. 'resnet18-w32', 'resnet18-w32-bn') or a callable key -> "
            f"AbstractBackbone, got {spec!r}"
        )
    if not isinstance(net, AbstractBackbone):
        raise TypeError(
            f"expected the backbone to be an AbstractBackbone, got {type(net).__name__}"
        )
    expected = (num_classes, embed_dim, tuple(image_shape), time_conditioned)
    got = (net.num_classes, net.embed_dim, tuple(net.image_shape), net.time_conditioned)
    if expected != got:
        raise ValueError(
            "backbone does not fit the model: expected (num_classes, embed_dim, image_shape, "
            f"time_conditioned) = {expected}, got {got}"
        )
    return net


def make_stacked_backbones(
    spec: BackboneSpec,
    num_blocks: int,
    *,
    num_classes: int,
    embed_dim: int,
    image_shape: tuple[int, int, int],
    key: PRNGKeyArray,
) -> AbstractBackbone:
    """`num_blocks` independent DT blocks as ONE backbone whose array leaves carry a leading
    axis of size `num_blocks` (slice block t out with `index_stacked`)."""
    if not (isinstance(num_blocks, int) and num_blocks >= 1):
        raise ValueError(f"expected num_blocks to be a positive int, got {num_blocks!r}")
    return eqx.filter_vmap(
        lambda k: make_backbone(
            spec,
            num_classes=num_classes,
            embed_dim=embed_dim,
            image_shape=image_shape,
            time_conditioned=False,
            key=k,
        )
    )(jr.split(key, num_blocks))


def index_stacked(blocks: AbstractBackbone, t: int) -> AbstractBackbone:
    """Block t (0-based) of stacked backbones."""
    params, static = eqx.partition(blocks, eqx.is_array)
    return eqx.combine(jax.tree.map(lambda a: a[t], params), static)
